-- Queries of the Odoo source generator (pipelines/odoo/generator.py), by name.
-- `advance` rebuilds the simulation's working set from these: the same rows, in the same order,
-- that `generate` keeps in memory between two simulated days.

-- name: database_exists
select 1 from pg_database where datname = %(name)s;

-- name: generator_marker
-- Odoo tables present, and whether the generator made them (schema.sql comments its
-- ir_config_parameter; a real Odoo's says "System Parameter").
select to_regclass('res_partner') is not null as has_odoo_tables,
       to_regclass('ir_config_parameter') is not null as has_config,
       coalesce(obj_description(to_regclass('ir_config_parameter'), 'pg_class')
                = 'control_room.generator', false) as made_by_generator;

-- name: config
select * from ir_config_parameter where key like 'control_room.generator.%%' order by id;

-- name: sequences
select sequencename, coalesce(last_value, 0) as last_value
from pg_sequences where schemaname = current_schema();

-- name: move_sequences
select sequence_prefix, max(sequence_number) as last_number
from account_move where sequence_prefix is not null group by sequence_prefix;

-- name: last_rates
select distinct on (currency_id) currency_id, rate
from res_currency_rate order by currency_id, name desc;

-- name: sales_users
select id from res_users where id > 2 and share = false order by id;

-- name: customers
select * from res_partner where customer_rank > 0 order by id;

-- name: templates
select * from product_template order by id;

-- name: products
select * from product_product order by id;

-- name: open_orders
-- Quotations, and confirmed orders with something left to deliver or invoice, or with an invoice
-- that may still be credited (not paid, dated within the refund window).
select * from sale_order o
where o.state in ('draft', 'sent')
   or (o.state = 'sale'
       and (o.invoice_status <> 'invoiced'
            or exists (select 1 from sale_order_line l
                       where l.order_id = o.id and l.qty_delivered < l.product_uom_qty)
            or o.name in (select m.invoice_origin from account_move m
                          where m.move_type = 'out_invoice' and m.state = 'posted'
                            and m.payment_state = 'not_paid'
                            and m.invoice_date >= %(refund_cutoff)s)))
order by o.id;

-- name: order_lines
select * from sale_order_line where order_id = any(%(ids)s) order by id;

-- name: open_invoices
select * from account_move
where move_type = 'out_invoice' and state = 'posted' and payment_state in ('not_paid', 'partial')
order by id;

-- name: invoice_lines
-- The receivable line of every open invoice; all lines of the ones that may still be credited.
select * from account_move_line
where move_id = any(%(ids)s)
  and (display_type = 'payment_term' or move_id = any(%(refundable)s))
order by id;

-- name: invoice_links
select invoice_line_id, order_line_id from sale_order_line_invoice_rel
where invoice_line_id = any(%(ids)s) order by invoice_line_id, order_line_id;

-- name: set_sequence
select setval(pg_get_serial_sequence(%(table)s, 'id'), greatest(%(last)s, 1), %(last)s > 0);

