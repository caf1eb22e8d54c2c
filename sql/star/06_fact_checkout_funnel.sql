-- fact_checkout_funnel: one row per session that reached the cart (an add to cart or a cart
-- view), with the first time it reached each stage.
--
-- Stages in order: cart, checkout, step_1, step_2, step_3, payment, purchase. A purchase
-- counts as the last checkout step (Snowplow's e-commerce model). abandoned_stage is the
-- furthest stage of a session that did not purchase.
--
-- Incremental: `events` holds every event of the sessions that changed since the last build.
-- materialized: incremental
-- unique_key: session_key
-- not_null: session_key, reached_cart_at, furthest_stage
-- references: session_key -> fact_sessions.session_key
-- accepted_values: furthest_stage in ('cart', 'checkout', 'step_1', 'step_2', 'step_3', 'payment', 'purchase')
WITH stages AS (
    SELECT
        session_key,
        min(event_time) FILTER (WHERE event_type IN ('add_to_cart', 'cart_view'))            AS reached_cart_at,
        min(event_time) FILTER (WHERE event_type = 'checkout_started')                       AS checkout_started_at,
        min(event_time) FILTER (WHERE event_type = 'checkout_step' AND checkout_step = 1)    AS step_1_at,
        min(event_time) FILTER (WHERE event_type = 'checkout_step' AND checkout_step = 2)    AS step_2_at,
        min(event_time) FILTER (WHERE event_type = 'checkout_step' AND checkout_step = 3)    AS step_3_at,
        min(event_time) FILTER (WHERE event_type = 'payment_info')                           AS payment_info_at,
        min(event_time) FILTER (WHERE event_type = 'purchase')                               AS purchased_at
    FROM events
    WHERE event_type IN ('add_to_cart', 'cart_view', 'checkout_started', 'checkout_step',
                         'payment_info', 'purchase')
    GROUP BY session_key
),
staged AS (
    SELECT
        *,
        CASE
            WHEN purchased_at IS NOT NULL THEN 'purchase'
            WHEN payment_info_at IS NOT NULL THEN 'payment'
            WHEN step_3_at IS NOT NULL THEN 'step_3'
            WHEN step_2_at IS NOT NULL THEN 'step_2'
            WHEN step_1_at IS NOT NULL THEN 'step_1'
            WHEN checkout_started_at IS NOT NULL THEN 'checkout'
            ELSE 'cart'
        END AS furthest_stage
    FROM stages
    WHERE reached_cart_at IS NOT NULL
)
SELECT
    session_key,
    reached_cart_at,
    checkout_started_at,
    step_1_at,
    step_2_at,
    step_3_at,
    payment_info_at,
    purchased_at,
    furthest_stage,
    CASE WHEN furthest_stage <> 'purchase' THEN furthest_stage END AS abandoned_stage
FROM staged
