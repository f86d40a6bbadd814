-- The demo's headline numbers, read back from the warehouse's `gold` schema (what Superset or
-- Metabase sees). `pipelines.odoo.kpis.kpi_queries()` returns them by name, in this order.

-- name: revenue_by_month
select to_char(month, 'YYYY-MM') as month, currency, round(sum(revenue), 2) as revenue,
       sum(invoices) as invoices
from gold.revenue
group by 1, 2
order by 1, 2

-- name: top_customers
select customer, currency, round(sum(revenue), 2) as revenue
from gold.revenue
group by 1, 2
order by 3 desc, 1
limit 5

-- name: receivables_ageing
select bucket, currency, sum(invoices) as invoices,
       round(sum(amount_residual), 2) as open_amount
from gold.receivables_ageing
group by bucket, bucket_order, currency
order by bucket_order, currency

-- name: order_to_invoice_lag
select count(*) as confirmed_orders, count(first_invoice_date) as invoiced,
       percentile_disc(0.5) within group (order by lag_days) as median_lag_days,
       percentile_disc(0.9) within group (order by lag_days) as p90_lag_days
from gold.order_invoice_lag

-- name: freshness
select newest_source_write_date, gold_available_at,
       round(freshness_seconds::numeric, 1) as freshness_seconds
from gold.freshness
order by gold_available_at desc
limit 1
