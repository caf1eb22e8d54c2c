-- fact_orders_revenue_matches_events: per currency, the revenue in fact_orders equals the revenue
-- of the first purchase event of every order in events.
WITH firsts AS (
    SELECT currency, revenue,
           row_number() OVER (PARTITION BY order_id ORDER BY event_time, event_id) AS rn
    FROM events
    WHERE event_type = 'purchase' AND order_id IS NOT NULL
),
from_events AS (
    SELECT currency, sum(revenue) AS revenue, count(*) AS orders FROM firsts WHERE rn = 1 GROUP BY currency
),
from_facts AS (
    SELECT currency, sum(revenue) AS revenue, count(*) AS orders FROM fact_orders GROUP BY currency
)
SELECT coalesce(e.currency, f.currency) AS currency,
       e.revenue AS events_revenue, f.revenue AS fact_orders_revenue,
       e.orders AS events_orders, f.orders AS fact_orders_orders
FROM from_events e
FULL OUTER JOIN from_facts f ON e.currency IS NOT DISTINCT FROM f.currency
WHERE (e.revenue IS DISTINCT FROM f.revenue) OR (e.orders IS DISTINCT FROM f.orders)
