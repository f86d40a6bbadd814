-- gold_receivables_ageing of specs/odoo_medallion.yaml as a dbt model: the same query, its inputs
-- as sources of the silver tables (the dbt kind loads them), as_of a var
with moves as (select * from {{ source('silver', 'account_move') }}),
partners as (select * from {{ source('silver', 'partner') }}),
companies as (select * from {{ source('silver', 'company') }}),
open_invoices as (
  select m.company_id, m.commercial_partner_id as customer_id, m.amount_residual_signed,
         date_diff('day', coalesce(m.invoice_date_due, m.invoice_date),
                   cast(cast('{{ var("as_of") }}' as timestamp) as date)) as days_overdue
  from moves m
  where not m.is_deleted and m.state = 'posted'
    and m.move_type in ('out_invoice', 'out_refund')
    and m.payment_state not in ('paid', 'in_payment', 'reversed')
    and m.amount_residual_signed <> 0
    and m.invoice_date <= cast(cast('{{ var("as_of") }}' as timestamp) as date)
), bucketed as (
  select *,
         case when days_overdue <= 0 then 0 when days_overdue <= 30 then 1
              when days_overdue <= 60 then 2 when days_overdue <= 90 then 3
              else 4 end as bucket_order
  from open_invoices
)
select cast(cast('{{ var("as_of") }}' as timestamp) as date) as as_of,
       b.company_id, c.name as company, c.currency,
       b.customer_id, p.name as customer, b.bucket_order,
       ['not due', '1-30', '31-60', '61-90', '90+'][b.bucket_order + 1] as bucket,
       count(*) as invoices, sum(b.amount_residual_signed) as amount_residual,
       max(b.days_overdue) as max_days_overdue
from bucketed b
left join partners p on p.id = b.customer_id
left join companies c on c.id = b.company_id
group by all
