-- agg_funnel_daily: sessions per start date, landing segment and device, and how many reached
-- each funnel stage. Sessions of customers whose latest analytics consent is a withdrawal are
-- left out (see user_consent).
--
-- grain: date_key, segment, device
-- not_null: date_key, sessions
-- references: date_key -> dim_date.date_key
-- The analytics decisions (one row per customer) are the small side of the join, where the hash
-- join builds; a NOT EXISTS would build on every session.
WITH analytics AS (
    SELECT user_key, granted FROM user_consent WHERE purpose = 'analytics'
)
SELECT
    date_key,
    session_date,
    segment,
    device,
    count(*)                                        AS sessions,
    count(*) FILTER (WHERE adds > 0)                AS sessions_with_cart,
    count(*) FILTER (WHERE checkout_started)        AS sessions_checkout,
    count(*) FILTER (WHERE max_checkout_step >= 1)  AS sessions_step_1,
    count(*) FILTER (WHERE max_checkout_step >= 2)  AS sessions_step_2,
    count(*) FILTER (WHERE max_checkout_step >= 3)  AS sessions_step_3,
    count(*) FILTER (WHERE payment_info)            AS sessions_payment,
    count(*) FILTER (WHERE purchased)               AS sessions_purchased
FROM analytics c
RIGHT JOIN fact_sessions f ON c.user_key = f.user_key
WHERE c.granted IS NOT FALSE
GROUP BY date_key, session_date, segment, device
