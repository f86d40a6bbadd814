-- Queries of the publication (pipelines/odoo/publish.py), by name; they run on the warehouse.

-- name: lock_schema
-- One publisher of a schema at a time (released at the end of the transaction): two runs
-- publishing at once would each delete the rows they see and both insert theirs.
select pg_advisory_xact_lock(hashtext('control_room.publish:' || %s));

-- name: table_columns
-- A table's live columns in table order with their types as Postgres prints them; no row
-- when the table does not exist.
select a.attname, format_type(a.atttypid, a.atttypmod)
from pg_attribute a
where a.attrelid = to_regclass(%s) and a.attnum > 0 and not a.attisdropped
order by a.attnum;

-- name: dependent_columns
-- The views (and materialized views, rules) built on a table, with the columns of the table
-- each of them uses.
select distinct v.oid::regclass::text as view, a.attname as column_name
from pg_depend d
join pg_rewrite r on r.oid = d.objid
join pg_class v on v.oid = r.ev_class
join pg_attribute a on a.attrelid = d.refobjid and a.attnum = d.refobjsubid
where d.classid = 'pg_rewrite'::regclass and d.refclassid = 'pg_class'::regclass
  and d.refobjid = to_regclass(%s) and v.oid <> d.refobjid
order by 1, 2;

-- name: key_constraints
-- A table's primary key and unique constraints with their columns in key order.
select c.conname, c.contype,
       array(select a.attname from unnest(c.conkey) with ordinality k(attnum, n)
             join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.attnum
             order by k.n) as columns
from pg_constraint c
where c.conrelid = to_regclass(%s) and c.contype in ('p', 'u')
order by c.conname;
