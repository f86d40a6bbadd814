-- The quality checks of the Odoo pipeline (pipelines/odoo/quality.py), by name: DuckDB over
-- the run's silver and gold tables, registered by entity name (sale_order, account_move_line,
-- gold_revenue...). A check query returns the rows that FAIL it (none: it passed), each with
-- a `rule` saying which part of the check it breaks. Every check ignores rows deleted in Odoo.

-- name: live_relation_pairs
-- The pairs live in the bronze of sale_order_line_invoice_rel (the one relation extracted):
-- their newest row is not a tombstone.
select count(*) from (
  select order_line_id, invoice_line_id
  from bronze
  group by order_line_id, invoice_line_id
  having arg_max(_op, _extracted_at) = 'upsert'
);

-- name: row_counts_reconcile
-- `row_counts` (made by quality.py): per extracted table, its rows in the source at
-- extraction, live in bronze and live in silver. Then gold recomputed from silver,
-- independently of the gold queries' own SQL. A row fails when its layers disagree.
with measured as (
  select dataset, measure, cast(source as decimal(38, 2)) as source,
         cast(bronze as decimal(38, 2)) as bronze, cast(silver as decimal(38, 2)) as silver,
         cast(null as decimal(38, 2)) as gold
  from row_counts
  union all
  select 'gold.odoo.revenue', 'revenue', null, null,
         coalesce((select sum(-balance) from account_move_line
                   where not is_deleted and not is_orphan and move_state = 'posted'
                     and move_type in ('out_invoice', 'out_refund')
                     and display_type = 'product'), 0),
         coalesce((select sum(revenue) from gold_revenue), 0)
  union all
  select 'gold.odoo.revenue', 'invoice lines', null, null,
         (select count(*) from account_move_line
          where not is_deleted and not is_orphan and move_state = 'posted'
            and move_type in ('out_invoice', 'out_refund') and display_type = 'product'),
         coalesce((select sum(lines) from gold_revenue), 0)
  union all
  select 'gold.odoo.order_invoice_lag', 'confirmed orders', null, null,
         (select count(*) from sale_order where not is_deleted and state in ('sale', 'done')),
         (select count(*) from gold_order_invoice_lag)
  union all
  select 'gold.odoo.receivables_ageing', 'open invoices', null, null,
         (select count(*) from account_move
          where not is_deleted and state = 'posted'
            and move_type in ('out_invoice', 'out_refund')
            and payment_state not in ('paid', 'in_payment', 'reversed')
            and amount_residual_signed <> 0 and invoice_date <= $as_of),
         coalesce((select sum(invoices) from gold_receivables_ageing), 0)
)
select 'every layer holds the same ' || measure || ' of ' || dataset as rule, *
from measured
where least(source, bronze, silver, gold) is distinct from greatest(source, bronze, silver, gold)
order by dataset, measure;

-- name: line_sums_match_headers
-- Odoo stores header totals that are sums of their lines (each line already rounded).
with order_lines as (
  select order_id, sum(price_subtotal) as lines_amount, count(*) as lines
  from sale_order_line where not is_deleted group by order_id
), move_lines as (
  select move_id,
         sum(-balance) filter (where display_type = 'product') as product_amount,
         sum(balance) filter (where display_type = 'payment_term') as payment_term_amount,
         count(*) as lines
  from account_move_line where not is_deleted group by move_id
), invoices as (
  select m.id, m.name, m.amount_untaxed_signed, m.amount_total_signed,
         l.product_amount, l.payment_term_amount, l.lines
  from account_move m left join move_lines l on l.move_id = m.id
  where not m.is_deleted and m.move_type in ('out_invoice', 'out_refund')
)
select 'sale_order.amount_untaxed = sum(sale_order_line.price_subtotal)' as rule,
       'sale_order' as header_table, o.id as header_id, o.name as header_name,
       o.amount_untaxed as header_amount, coalesce(l.lines_amount, 0) as lines_amount,
       coalesce(l.lines, 0) as lines
from sale_order o left join order_lines l on l.order_id = o.id
where not o.is_deleted and o.amount_untaxed is distinct from coalesce(l.lines_amount, 0)
union all
select 'account_move.amount_untaxed_signed = -sum(balance) of its product lines',
       'account_move', id, name, amount_untaxed_signed, coalesce(product_amount, 0),
       coalesce(lines, 0)
from invoices where amount_untaxed_signed is distinct from coalesce(product_amount, 0)
union all
select 'account_move.amount_total_signed = sum(balance) of its payment term lines',
       'account_move', id, name, amount_total_signed, coalesce(payment_term_amount, 0),
       coalesce(lines, 0)
from invoices where amount_total_signed is distinct from coalesce(payment_term_amount, 0)
order by rule, header_id;

-- name: no_orphan_lines
-- A live line whose header is missing or deleted; a live link to a missing or deleted line.
-- `missing_table` is the table `missing_id` should be in.
select 'sale_order_line.order_id references a live sale_order' as rule,
       'sale_order_line' as line_table, l.id as line_id, 'sale_order' as missing_table,
       l.order_id as missing_id
from sale_order_line l left join sale_order o on o.id = l.order_id
where not l.is_deleted and (o.id is null or o.is_deleted)
union all
select 'account_move_line.move_id references a live account_move',
       'account_move_line', l.id, 'account_move', l.move_id
from account_move_line l left join account_move m on m.id = l.move_id
where not l.is_deleted and (m.id is null or m.is_deleted)
union all
select 'sale_order_line_invoice_rel.order_line_id references a live sale_order_line',
       'sale_order_line_invoice_rel', k.invoice_line_id, 'sale_order_line', k.order_line_id
from order_invoice_link k left join sale_order_line l on l.id = k.order_line_id
where l.id is null or l.is_deleted
union all
select 'sale_order_line_invoice_rel.invoice_line_id references a live account_move_line',
       'sale_order_line_invoice_rel', k.order_line_id, 'account_move_line', k.invoice_line_id
from order_invoice_link k left join account_move_line l on l.id = k.invoice_line_id
where l.id is null or l.is_deleted
order by rule, line_id, missing_id;

-- name: no_negative_quantities
-- Odoo expresses a return as a credit note, never as a negative quantity: ordered, delivered
-- and invoiced quantities of product lines are >= 0 (section and note lines carry none).
select 'sale_order_line.product_uom_qty >= 0' as rule, 'sale_order_line' as line_table,
       id as line_id, order_id as header_id, product_id, product_uom_qty as quantity
from sale_order_line
where not is_deleted and display_type is null and product_uom_qty < 0
union all
select 'sale_order_line.qty_delivered >= 0', 'sale_order_line', id, order_id, product_id,
       qty_delivered
from sale_order_line
where not is_deleted and display_type is null and qty_delivered < 0
union all
select 'account_move_line.quantity >= 0 on customer invoice and credit note product lines',
       'account_move_line', id, move_id, product_id, quantity
from account_move_line
where not is_deleted and display_type = 'product'
  and move_type in ('out_invoice', 'out_refund') and quantity < 0
order by rule, line_id;


-- In flight or defect? -----------------------------------------------------------------------
-- Each extract phase reads its table in its own snapshot, so a transaction that Odoo commits
-- between the reads of two tables (an invoice and its lines) is in one and not the other.
-- The queries below tell such "in flight" differences from real defects, from what the
-- extractions recorded in <lake>/_state/reads (quality.py registers it as `reads`). A row
-- version counts as written after a read R of another table when
--   1. it is newer than R's cursor (its write_date, else create_date, against the newest
--      write_date R's snapshot saw: both on the source's clock), and
--   2. the read that first stored it in bronze came after R (read_at, the worker's clock):
--      a version an earlier read already held was committed before R, so R saw its whole
--      transaction (this is what makes a difference that persists fail at the next run);
-- a deletion counts when the read that found it (its tombstone's) came after R.

-- name: read_cursors
-- The read each extracted table is judged by (one row per source table): this run's newest
-- read of its bronze dataset; else (a run that reuses an earlier extraction, as a repair
-- does) the read its extract phase's manifest names (`read_at`); else the dataset's newest
-- read. `cursor`: the newest write_date that read's snapshot saw (null for a relation);
-- `prev_read_at`, `prev_cursor`: the table's read before that one, by another run.
-- Inputs: `reads`, `extracted` (source_table, dataset, read_at: the upstream manifests), $run.
with chosen as (
  select e.source_table, e.dataset, r.run_id, r.read_at, r.source_max_write_date as cursor
  from extracted e join reads r on r.dataset = e.dataset
  qualify row_number() over (
    partition by e.source_table
    order by r.run_id = $run desc, r.read_at = e.read_at desc nulls last, r.read_at desc) = 1
), previous as (
  select c.source_table, max(r.read_at) as prev_read_at,
         arg_max(r.source_max_write_date, r.read_at) as prev_cursor
  from chosen c join reads r on r.dataset = c.dataset and r.read_at < c.read_at
                            and r.run_id <> c.run_id
  group by c.source_table
)
select c.source_table, c.run_id, c.read_at, c.cursor, p.prev_read_at, p.prev_cursor
from chosen c left join previous p using (source_table);

-- name: header_evidence
-- For each `keys` row (header_table: sale_order | account_move, header_id, line_id: null for
-- a header and all its lines, or the one line of a header that is missing), why the header
-- and its lines may differ only because they were read at different moments, if they may:
--   1. the header was written after its lines' table was read;
--   2. a line (live or deleted) was written after the header table was read;
--   3. a line was deleted, found by a read after the header table was read;
--   4. the header was deleted, found by a read after its lines' table was read;
--   5. (a sum) the header was written since its lines' table's previous read, and this read
--      of the lines came after the header's: a line added and removed in between was never
--      read (no version, no tombstone), so the lines may be newer than the header;
--   6. (an orphan) the line was written since the header table's previous read, and this
--      read of the headers came after the line's: its header may have been added and
--      removed in between, never read.
-- Inputs: the silver entities, `bronze_<table>` of the four tables, `reads`, `cursors`
-- (read_cursors), `keys`. One row per key with evidence: the first reason, how many more.
with stored_by as (
  select dataset, run_id, max(read_at) as read_at from reads group by dataset, run_id
), pairs(header_table, line_table) as (
  values ('sale_order', 'sale_order_line'), ('account_move', 'account_move_line')
), headers as (
  select k.*, coalesce(h.write_date, h.create_date) as changed
  from keys k join sale_order h on h.id = k.header_id
  where k.header_table = 'sale_order'
  union all
  select k.*, coalesce(h.write_date, h.create_date)
  from keys k join account_move h on h.id = k.header_id
  where k.header_table = 'account_move'
), lines as (
  -- a header's lines (line_id null) or the one line keyed
  select k.*, 'sale_order_line' as line_table, l.id,
         coalesce(l.write_date, l.create_date) as changed
  from keys k join sale_order_line l on l.order_id = k.header_id
  where k.header_table = 'sale_order' and k.line_id is null
  union all
  select k.*, 'sale_order_line', l.id, coalesce(l.write_date, l.create_date)
  from keys k join sale_order_line l on l.id = k.line_id
  where k.header_table = 'sale_order'
  union all
  select k.*, 'account_move_line', l.id, coalesce(l.write_date, l.create_date)
  from keys k join account_move_line l on l.move_id = k.header_id
  where k.header_table = 'account_move' and k.line_id is null
  union all
  select k.*, 'account_move_line', l.id, coalesce(l.write_date, l.create_date)
  from keys k join account_move_line l on l.id = k.line_id
  where k.header_table = 'account_move'
), stored as (
  -- every bronze row of those ids, with the read that stored it
  select 'sale_order' as source_table, b.id, b._op as op, b._source_write_date as version,
         s.read_at
  from bronze_sale_order b
  left join stored_by s on s.dataset = 'bronze.odoo.sale_order' and s.run_id = b._run_id
  where b.id in (select header_id from keys where header_table = 'sale_order')
  union all
  select 'account_move', b.id, b._op, b._source_write_date, s.read_at
  from bronze_account_move b
  left join stored_by s on s.dataset = 'bronze.odoo.account_move' and s.run_id = b._run_id
  where b.id in (select header_id from keys where header_table = 'account_move')
  union all
  select 'sale_order_line', b.id, b._op, b._source_write_date, s.read_at
  from bronze_sale_order_line b
  left join stored_by s on s.dataset = 'bronze.odoo.sale_order_line' and s.run_id = b._run_id
  where b.id in (select id from lines where line_table = 'sale_order_line')
  union all
  select 'account_move_line', b.id, b._op, b._source_write_date, s.read_at
  from bronze_account_move_line b
  left join stored_by s on s.dataset = 'bronze.odoo.account_move_line'
                       and s.run_id = b._run_id
  where b.id in (select id from lines where line_table = 'account_move_line')
), evidence as (
  select h.header_table, h.header_id, h.line_id, 1 as kind,
         h.header_table as changed_table, p.line_table as read_table,
         format('{} {} written at {} after {} was read (newest write_date {})',
                h.header_table, h.header_id, h.changed, p.line_table, c.cursor) as reason
  from headers h
  join pairs p using (header_table)
  join cursors c on c.source_table = p.line_table
  join stored s on s.source_table = h.header_table and s.id = h.header_id
               and s.op = 'upsert'
               and s.version = coalesce(h.changed, timestamp '1970-01-01')
  where h.changed > c.cursor and s.read_at > c.read_at
  union all
  select l.header_table, l.header_id, l.line_id, 2, l.line_table, l.header_table,
         format('{} {} written at {} after {} was read (newest write_date {})',
                l.line_table, l.id, l.changed, l.header_table, c.cursor)
  from lines l
  join cursors c on c.source_table = l.header_table
  join stored s on s.source_table = l.line_table and s.id = l.id and s.op = 'upsert'
               and s.version = coalesce(l.changed, timestamp '1970-01-01')
  where l.changed > c.cursor and s.read_at > c.read_at
  union all
  select l.header_table, l.header_id, l.line_id, 3, l.line_table, l.header_table,
         format('{} {} deleted after {} was read', l.line_table, l.id, l.header_table)
  from lines l
  join cursors c on c.source_table = l.header_table
  join stored s on s.source_table = l.line_table and s.id = l.id and s.op = 'delete'
  where s.read_at > c.read_at
  union all
  select k.header_table, k.header_id, k.line_id, 4, k.header_table, p.line_table,
         format('{} {} deleted after {} was read', k.header_table, k.header_id, p.line_table)
  from keys k
  join pairs p using (header_table)
  join cursors c on c.source_table = p.line_table
  join stored s on s.source_table = k.header_table and s.id = k.header_id and s.op = 'delete'
  where s.read_at > c.read_at
  union all
  select h.header_table, h.header_id, h.line_id, 5, h.header_table, p.line_table,
         format('{} {} written at {}, after the previous read of {} (newest write_date {}), '
                || 'and {} was read after {}: lines added and removed in between were never read',
                h.header_table, h.header_id, h.changed, p.line_table, lc.prev_cursor,
                p.line_table, h.header_table)
  from headers h
  join pairs p using (header_table)
  join cursors hc on hc.source_table = h.header_table
  join cursors lc on lc.source_table = p.line_table
  join stored s on s.source_table = h.header_table and s.id = h.header_id
               and s.op = 'upsert'
               and s.version = coalesce(h.changed, timestamp '1970-01-01')
  where h.line_id is null and lc.read_at > hc.read_at and h.changed > lc.prev_cursor
    and s.read_at > lc.prev_read_at
  union all
  select l.header_table, l.header_id, l.line_id, 6, l.line_table, l.header_table,
         format('{} {} written at {}, after the previous read of {} (newest write_date {}), '
                || 'and {} was read after {}: a header added and removed in between was never '
                || 'read', l.line_table, l.id, l.changed, l.header_table, hc.prev_cursor,
                l.header_table, l.line_table)
  from lines l
  join cursors hc on hc.source_table = l.header_table
  join cursors lc on lc.source_table = l.line_table
  join stored s on s.source_table = l.line_table and s.id = l.id and s.op = 'upsert'
               and s.version = coalesce(l.changed, timestamp '1970-01-01')
  where l.line_id is not null and hc.read_at > lc.read_at and l.changed > hc.prev_cursor
    and s.read_at > hc.prev_read_at
)
select header_table, header_id, line_id,
       arg_min(reason, (kind, reason)) || case when count(*) > 1
         then format(' (and {} more)', count(*) - 1) else '' end as in_flight,
       arg_min(changed_table, (kind, reason)) as changed_table,
       arg_min(read_table, (kind, reason)) as read_table
from evidence
group by header_table, header_id, line_id
order by header_table, header_id, line_id;

-- name: link_evidence
-- For each `link_keys` row (line_table: the table the link's missing or deleted line is in,
-- order_line_id, invoice_line_id), why the link and the line may differ only because they
-- were read at different moments, if they may:
--   7. the link was first stored by a read after the line's table was read;
--   8. the line was deleted, found by a read after sale_order_line_invoice_rel was read.
-- Inputs: `bronze_sale_order_line_invoice_rel`, `bronze_sale_order_line`,
-- `bronze_account_move_line`, `reads`, `cursors`, `link_keys`.
with stored_by as (
  select dataset, run_id, max(read_at) as read_at from reads group by dataset, run_id
), links as (
  -- the read that stored each link's newest upsert
  select b.order_line_id, b.invoice_line_id, max(s.read_at) as read_at
  from bronze_sale_order_line_invoice_rel b
  semi join link_keys k using (order_line_id, invoice_line_id)
  left join stored_by s on s.dataset = 'bronze.odoo.sale_order_line_invoice_rel'
                       and s.run_id = b._run_id
  where b._op = 'upsert'
  group by b.order_line_id, b.invoice_line_id
), keyed as (
  select *, case line_table when 'sale_order_line' then order_line_id
                            else invoice_line_id end as line_id
  from link_keys
), deleted as (
  select 'sale_order_line' as line_table, b.id, s.read_at
  from bronze_sale_order_line b
  left join stored_by s on s.dataset = 'bronze.odoo.sale_order_line' and s.run_id = b._run_id
  where b._op = 'delete'
    and b.id in (select line_id from keyed where line_table = 'sale_order_line')
  union all
  select 'account_move_line', b.id, s.read_at
  from bronze_account_move_line b
  left join stored_by s on s.dataset = 'bronze.odoo.account_move_line'
                       and s.run_id = b._run_id
  where b._op = 'delete'
    and b.id in (select line_id from keyed where line_table = 'account_move_line')
), evidence as (
  select k.line_table, k.order_line_id, k.invoice_line_id, 7 as kind,
         'sale_order_line_invoice_rel' as changed_table, k.line_table as read_table,
         format('link ({}, {}) stored after {} was read', k.order_line_id,
                k.invoice_line_id, k.line_table) as reason
  from keyed k
  join links l using (order_line_id, invoice_line_id)
  join cursors c on c.source_table = k.line_table
  where l.read_at > c.read_at
  union all
  select k.line_table, k.order_line_id, k.invoice_line_id, 8, k.line_table,
         'sale_order_line_invoice_rel',
         format('{} {} deleted after sale_order_line_invoice_rel was read', k.line_table,
                k.line_id)
  from keyed k
  join deleted d on d.line_table = k.line_table and d.id = k.line_id
  join cursors c on c.source_table = 'sale_order_line_invoice_rel'
  where d.read_at > c.read_at
)
select line_table, order_line_id, invoice_line_id,
       arg_min(reason, kind) as in_flight,
       arg_min(changed_table, kind) as changed_table,
       arg_min(read_table, kind) as read_table
from evidence
group by line_table, order_line_id, invoice_line_id
order by line_table, order_line_id, invoice_line_id;
