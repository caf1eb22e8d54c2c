-- dim_product: one row per product_id, its latest description and price.
--
-- Incremental: `events` holds every event of the products that changed since the last build.
-- materialized: incremental
-- unique_key: product_id
-- not_null: product_key, product_id
WITH product_events AS (
    SELECT
        product_id, category, category_l1, category_l2, category_l3, brand, price, currency,
        event_time, event_id
    FROM events
    WHERE product_id IS NOT NULL
),
seen AS (
    SELECT
        product_id,
        min(event_time)                                   AS first_seen_at,
        max(event_time) FILTER (WHERE price IS NOT NULL)  AS priced_at
    FROM product_events
    GROUP BY product_id
),
-- The latest priced event (latest event_time, then largest event_id): a join on (product, time)
-- instead of sorting every product event.
latest AS (
    SELECT
        p.product_id,
        first_value(p.category ORDER BY p.event_id DESC)     AS category,
        first_value(p.category_l1 ORDER BY p.event_id DESC)  AS category_l1,
        first_value(p.category_l2 ORDER BY p.event_id DESC)  AS category_l2,
        first_value(p.category_l3 ORDER BY p.event_id DESC)  AS category_l3,
        first_value(p.brand ORDER BY p.event_id DESC)        AS brand,
        first_value(p.price ORDER BY p.event_id DESC)        AS price,
        first_value(p.currency ORDER BY p.event_id DESC)     AS currency
    FROM seen s
    JOIN product_events p
      ON p.product_id = s.product_id AND p.event_time = s.priced_at AND p.price IS NOT NULL
    GROUP BY p.product_id
)
SELECT
    md5(s.product_id)   AS product_key,
    s.product_id,
    l.category,
    l.category_l1,
    l.category_l2,
    l.category_l3,
    l.brand,
    s.first_seen_at,
    l.price             AS last_price,
    l.currency          AS last_currency
FROM latest l
RIGHT JOIN seen s ON l.product_id = s.product_id
