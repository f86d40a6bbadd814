-- gold_order_invoice_lag of specs/odoo_medallion.yaml as a dbt model: the same query, its inputs
-- as sources of the silver tables (the dbt kind loads them), as_of a var
with orders as (select * from {{ source('silver', 'sale_order') }}),
order_lines as (select * from {{ source('silver', 'sale_order_line') }}),
links as (select * from {{ source('silver', 'order_invoice_link') }}),
invoice_lines as (select * from {{ source('silver', 'account_move_line') }}),
partners as (select * from {{ source('silver', 'partner') }}),
invoiced as (
  select ol.order_id, min(il.invoice_date) as first_invoice_date,
         max(il.invoice_date) as last_invoice_date,
         count(distinct il.move_id) as invoices
  from links k
  join order_lines ol on ol.id = k.order_line_id and not ol.is_deleted
  join invoice_lines il on il.id = k.invoice_line_id and not il.is_deleted
  where il.move_state = 'posted' and il.move_type = 'out_invoice'
  group by ol.order_id
)
select o.id as order_id, o.name as order_name, o.company_id,
       o.partner_id as customer_id, p.name as customer,
       cast(o.date_order as date) as order_date, o.invoice_status,
       o.amount_untaxed_company,
       i.first_invoice_date, i.last_invoice_date, coalesce(i.invoices, 0) as invoices,
       date_diff('day', cast(o.date_order as date), i.first_invoice_date) as lag_days
from orders o
left join invoiced i on i.order_id = o.id
left join partners p on p.id = o.partner_id
where not o.is_deleted and o.state in ('sale', 'done')
