-- fact_orders: one row per order_id. The first purchase event of the order (by event_time, then
-- event_id) gives its time, session, customer, revenue and currency, however many times the
-- purchase was sent; lines and items count each product of the order once (its first line).
--
-- Incremental: `events` holds every event of the orders that changed since the last build.
-- materialized: incremental
-- unique_key: order_id
-- not_null: order_id, user_key, session_key, date_key, ordered_at
-- references: user_key -> dim_user.user_key, session_key -> fact_sessions.session_key, date_key -> dim_date.date_key
WITH purchases AS (
    SELECT
        order_id, product_id, quantity, revenue, currency, event_time, event_id, session_key,
        anonymous_id, coalesce(stitched_user_id, user_id) AS user_id
    FROM events
    WHERE event_type = 'purchase' AND order_id IS NOT NULL
),
-- Each product of an order once, with its first purchase event (by event_time, then event_id):
-- the quantity it counts, and the attributes the order takes if that event is the order's first.
-- Ordered aggregates keep the first row per group instead of sorting every purchase event, and
-- the orders come from these lines, so `events` is scanned once.
product_lines AS (
    SELECT
        order_id,
        min(event_time)                                                   AS first_time,
        first_value(event_id ORDER BY event_time, event_id)               AS first_event_id,
        first_value(coalesce(quantity, 1) ORDER BY event_time, event_id)  AS quantity,
        first_value(user_id ORDER BY event_time, event_id)                AS user_id,
        first_value(anonymous_id ORDER BY event_time, event_id)           AS anonymous_id,
        first_value(session_key ORDER BY event_time, event_id)            AS session_key,
        first_value(revenue ORDER BY event_time, event_id)                AS revenue,
        first_value(currency ORDER BY event_time, event_id)               AS currency
    FROM purchases
    GROUP BY order_id, product_id
),
orders AS (
    SELECT
        order_id,
        count(*)                                                          AS lines,
        sum(quantity)                                                     AS items,
        min(first_time)                                                   AS ordered_at,
        first_value(user_id ORDER BY first_time, first_event_id)          AS user_id,
        first_value(anonymous_id ORDER BY first_time, first_event_id)     AS anonymous_id,
        first_value(session_key ORDER BY first_time, first_event_id)      AS session_key,
        first_value(revenue ORDER BY first_time, first_event_id)          AS revenue,
        first_value(currency ORDER BY first_time, first_event_id)         AS currency
    FROM product_lines
    GROUP BY order_id
)
SELECT
    order_id,
    CASE WHEN user_id IS NOT NULL THEN md5(concat('user', chr(31), user_id))
         ELSE md5(concat('anonymous', chr(31), anonymous_id)) END     AS user_key,
    session_key,
    CAST(date_part('year', ordered_at) * 10000 + date_part('month', ordered_at) * 100
         + date_part('day', ordered_at) AS INT)                     AS date_key,
    ordered_at,
    revenue,
    currency,
    lines,
    items
FROM orders
