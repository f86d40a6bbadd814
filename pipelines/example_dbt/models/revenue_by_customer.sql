select customer, count(*) as orders, sum(amount)::bigint as revenue
from {{ ref('paid_orders') }}
group by customer
