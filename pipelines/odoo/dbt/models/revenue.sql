-- gold_revenue of specs/odoo_medallion.yaml as a dbt model: the same query, its inputs
-- as sources of the silver tables (the dbt kind loads them), as_of a var
-- per invoice first (so that counting invoices needs no distinct), then per
-- month, customer and product; names joined last, to the aggregated rows
with lines as (select * from {{ source('silver', 'account_move_line') }}),
partners as (select * from {{ source('silver', 'partner') }}),
products as (select * from {{ source('silver', 'product') }}),
companies as (select * from {{ source('silver', 'company') }}),
invoice_lines as (
  select cast(date_trunc('month', invoice_date) as date) as month,
         move_company_id as company_id, move_partner_id as customer_id, product_id,
         move_id,
         sum(case when move_type = 'out_refund' then -quantity else quantity end)
           as quantity,
         sum(-balance) as revenue, count(*) as lines
  from lines
  where not is_deleted and not is_orphan and move_state = 'posted'
    and move_type in ('out_invoice', 'out_refund') and display_type = 'product'
  group by all
), by_product as (
  select month, company_id, customer_id, product_id, sum(quantity) as quantity,
         sum(revenue) as revenue, count(*) as invoices,
         cast(sum(lines) as bigint) as lines
  from invoice_lines
  group by all
)
select b.month, b.company_id, c.name as company, c.currency,
       b.customer_id, p.name as customer,
       b.product_id, pr.name as product, pr.default_code, pr.category,
       b.quantity, b.revenue, b.invoices, b.lines
from by_product b
left join partners p on p.id = b.customer_id
left join products pr on pr.id = b.product_id
left join companies c on c.id = b.company_id
