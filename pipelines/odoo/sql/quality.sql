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
select 'sale_order_line.order_id references a live sale_order' as rule,
       'sale_order_line' as line_table, l.id as line_id, l.order_id as missing_id
from sale_order_line l left join sale_order o on o.id = l.order_id
where not l.is_deleted and (o.id is null or o.is_deleted)
union all
select 'account_move_line.move_id references a live account_move',
       'account_move_line', l.id, l.move_id
from account_move_line l left join account_move m on m.id = l.move_id
where not l.is_deleted and (m.id is null or m.is_deleted)
union all
select 'sale_order_line_invoice_rel.order_line_id references a live sale_order_line',
       'sale_order_line_invoice_rel', k.invoice_line_id, k.order_line_id
from order_invoice_link k left join sale_order_line l on l.id = k.order_line_id
where l.id is null or l.is_deleted
union all
select 'sale_order_line_invoice_rel.invoice_line_id references a live account_move_line',
       'sale_order_line_invoice_rel', k.order_line_id, k.invoice_line_id
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
