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
        anonymous_id, coalesce(stitched_user_id, user_id) AS user_id,
        row_number() OVER (PARTITION BY order_id ORDER BY event_time, event_id)             AS order_pos,
        row_number() OVER (PARTITION BY order_id, product_id ORDER BY event_time, event_id) AS line_pos
    FROM events
    WHERE event_type = 'purchase' AND order_id IS NOT NULL
),
lines AS (
    SELECT order_id, count(*) AS lines, sum(coalesce(quantity, 1)) AS items
    FROM purchases
    WHERE line_pos = 1
    GROUP BY order_id
)
SELECT
    p.order_id,
    CASE WHEN p.user_id IS NOT NULL THEN md5(concat('user', chr(31), p.user_id))
         ELSE md5(concat('anonymous', chr(31), p.anonymous_id)) END AS user_key,
    p.session_key,
    CAST(to_char(p.event_time, '%Y%m%d') AS INT)                    AS date_key,
    p.event_time                                                    AS ordered_at,
    p.revenue,
    p.currency,
    l.lines,
    l.items
FROM purchases p
JOIN lines l ON l.order_id = p.order_id
WHERE p.order_pos = 1
