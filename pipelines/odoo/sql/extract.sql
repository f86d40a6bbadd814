-- Queries of the bronze extraction (pipelines/odoo/extract.py), by name. Postgres queries run
-- on the Odoo database; DuckDB queries over the bronze Delta table (`bronze`).

-- name: primary_key
-- Postgres: the primary key's columns of a table (by oid), in key order.
select a.attname
from pg_index i
join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey::int2[])
where i.indrelid = %s and i.indisprimary
order by array_position(i.indkey::int2[], a.attnum);

-- name: live_ids
-- DuckDB: the ids live in a model table's bronze (their newest version is not a tombstone),
-- with the date of that version. A tombstone carries the date of the version it deletes.
select id, max(_source_write_date) as last_write
from bronze
group by id
having max(_source_write_date) filter (where _op = 'delete') is null
    or max(_source_write_date) filter (where _op = 'upsert')
       > max(_source_write_date) filter (where _op = 'delete');

-- name: new_versions
-- DuckDB: the rows read (`batch`) whose version bronze does not hold yet. Only bronze's
-- versions from the oldest one read on can match: the filter prunes files by statistics.
select b.* from batch b
anti join (select id, _source_write_date from bronze where _source_write_date >= $oldest) k
  using (id, _source_write_date);

-- name: vanished_ids
-- DuckDB: the ids live in bronze that the source (`source`: its ids now) no longer has.
select live.id, live.last_write from live anti join source using (id) order by live.id;

-- name: newest_watermark
-- DuckDB: a dataset's newest committed watermark.
select write_date, id from watermarks where dataset = ? order by write_date desc, id desc limit 1;

-- name: odoo_version
-- Postgres: the installed `base` module's version ("17.0.1.3", "18.0.1.3", "saas~17.4.1.3"):
-- the Odoo series is all but its last two parts (extract.source_version first checks that the
-- table exists).
select latest_version from ir_module_module where name = 'base' and state = 'installed';
