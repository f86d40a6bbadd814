select order_id, customer, amount from {{ source('lake', 'orders') }} where status = 'paid'
