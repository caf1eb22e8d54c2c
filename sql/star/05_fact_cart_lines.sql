-- fact_cart_lines: one row per product put in (or bought from) a session's cart.
--
-- Quantities default to 1 when an add or remove carries none. value_added = price × quantity of
-- the adds, in `currency`. purchased: the product was in a purchase event of the session.
--
-- Incremental: `events` holds every event of the sessions that changed since the last build.
-- materialized: incremental
-- unique_key: session_key
-- grain: session_key, product_key
-- not_null: session_key, product_key
-- references: product_key -> dim_product.product_key, session_key -> fact_sessions.session_key
SELECT
    session_key,
    md5(product_id)                                                               AS product_key,
    product_id,
    coalesce(sum(coalesce(quantity, 1)) FILTER (WHERE event_type = 'add_to_cart'), 0)      AS qty_added,
    coalesce(sum(coalesce(quantity, 1)) FILTER (WHERE event_type = 'remove_from_cart'), 0) AS qty_removed,
    coalesce(sum(coalesce(quantity, 1)) FILTER (WHERE event_type = 'add_to_cart'), 0)
      - coalesce(sum(coalesce(quantity, 1)) FILTER (WHERE event_type = 'remove_from_cart'), 0) AS net_qty,
    sum(price * coalesce(quantity, 1)) FILTER (WHERE event_type = 'add_to_cart')           AS value_added,
    first_value(currency ORDER BY event_time, event_id)                                    AS currency,
    min(event_time) FILTER (WHERE event_type = 'add_to_cart')                              AS first_added_at,
    max(event_time) FILTER (WHERE event_type IN ('add_to_cart', 'remove_from_cart'))      AS last_changed_at,
    bool_or(event_type = 'purchase')                                                       AS purchased
FROM events
WHERE event_type IN ('add_to_cart', 'remove_from_cart', 'purchase') AND product_id IS NOT NULL
GROUP BY session_key, product_id
