-- fact_sessions: one row per session (events.session_key), partitioned by its start date.
--
-- A session's device, country, landing page, referrer and landing segment are those of its first
-- event. Checkout counts as started by checkout_started, any checkout step, payment info or a
-- purchase; a purchase also counts as payment info and as the last checkout step (3).
-- Revenue is the sum over the session's orders of each order's revenue as sent on its first
-- purchase event, in `currency` (the currency of the session's first order).
--
-- Incremental: `events` holds every event of the sessions that changed since the last build.
-- materialized: incremental
-- unique_key: session_key
-- partition_by: session_date
-- not_null: session_key, user_key, date_key, started_at
-- references: user_key -> dim_user.user_key, date_key -> dim_date.date_key
WITH e AS (
    SELECT
        session_key, event_id, event_time, event_type, checkout_step, order_id, revenue,
        currency, device, country, page_url, referrer, anonymous_id,
        -- A partition column scans as a dictionary; plain strings aggregate safely.
        CAST(segment AS VARCHAR) AS segment,
        coalesce(stitched_user_id, user_id) AS user_id
    FROM events
),
-- One row per (session, order): its first purchase event's revenue and currency.
orders AS (
    SELECT
        session_key,
        order_id,
        first_value(revenue ORDER BY event_time, event_id)   AS revenue,
        first_value(currency ORDER BY event_time, event_id)  AS currency,
        min(event_time)                                       AS ordered_at
    FROM e
    WHERE event_type = 'purchase' AND order_id IS NOT NULL
    GROUP BY session_key, order_id
),
session_orders AS (
    SELECT
        session_key,
        count(*)                                              AS orders,
        sum(revenue)                                          AS revenue,
        first_value(currency ORDER BY ordered_at, order_id)   AS currency
    FROM orders
    GROUP BY session_key
),
agg AS (
    SELECT
        session_key,
        min(event_time)                                                         AS started_at,
        max(event_time)                                                         AS ended_at,
        count(*)                                                                AS events,
        count(*) FILTER (WHERE event_type = 'page_view')                        AS page_views,
        count(*) FILTER (WHERE event_type = 'product_view')                     AS product_views,
        count(*) FILTER (WHERE event_type = 'search')                           AS searches,
        count(*) FILTER (WHERE event_type = 'add_to_cart')                      AS adds,
        count(*) FILTER (WHERE event_type = 'remove_from_cart')                 AS removes,
        bool_or(event_type IN ('checkout_started', 'checkout_step', 'payment_info', 'purchase'))
                                                                                AS checkout_started,
        max(checkout_step) FILTER (WHERE event_type = 'checkout_step')          AS max_step_seen,
        bool_or(event_type IN ('payment_info', 'purchase'))                     AS payment_info,
        bool_or(event_type = 'purchase')                                        AS purchased,
        max(user_id)                                                            AS user_id,
        -- The first event: earliest event_time, then smallest event_id (event_id is unique).
        first_value(event_id ORDER BY event_time, event_id)                     AS first_event_id
    FROM e
    GROUP BY session_key
),
-- The session with its first event's attributes, found with a hash join on the event id (one
-- more scan of `events`, narrowed by the join's filter) rather than by sorting every event.
-- event_id is unique in `events` (the clean deduplicates by it; the check events_unique_event_id
-- watches it), so it is the whole key: joining on the session key too read and hashed 10M more
-- strings at 10M events.
sessions AS (
    SELECT a.*, s.anonymous_id, s.device, s.country, s.page_url AS landing_page, s.referrer,
           s.segment
    FROM agg a
    JOIN e s ON s.event_id = a.first_event_id
)
SELECT
    a.session_key,
    CASE WHEN a.user_id IS NOT NULL THEN md5(concat('user', chr(31), a.user_id))
         ELSE md5(concat('anonymous', chr(31), a.anonymous_id)) END           AS user_key,
    a.user_id,
    a.anonymous_id,
    -- yyyymmdd from the date's parts: to_char formats each row as text (3x slower).
    CAST(date_part('year', a.started_at) * 10000 + date_part('month', a.started_at) * 100
         + date_part('day', a.started_at) AS INT)                             AS date_key,
    a.started_at,
    a.ended_at,
    CAST(date_part('epoch', a.ended_at) - date_part('epoch', a.started_at) AS DOUBLE)
                                                                              AS duration_s,
    a.events,
    a.page_views,
    a.product_views,
    a.searches,
    a.adds,
    a.removes,
    a.checkout_started,
    CASE WHEN a.purchased THEN greatest(coalesce(a.max_step_seen, 0), 3)
         ELSE a.max_step_seen END                                             AS max_checkout_step,
    a.payment_info,
    a.purchased,
    coalesce(o.orders, 0)                                                     AS orders,
    o.revenue,
    o.currency,
    a.adds > 0 AND NOT a.purchased                                            AS cart_abandoned,
    a.device,
    a.country,
    a.landing_page,
    a.referrer,
    a.segment,
    CAST(a.started_at AS DATE)                                                AS session_date
-- The small side first: hash joins build on their left input.
FROM session_orders o
RIGHT JOIN sessions a ON o.session_key = a.session_key
