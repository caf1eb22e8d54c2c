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
latest AS (
    SELECT
        *,
        row_number() OVER (PARTITION BY product_id ORDER BY event_time DESC, event_id DESC) AS rn
    FROM product_events
    WHERE price IS NOT NULL
),
seen AS (
    SELECT product_id, min(event_time) AS first_seen_at
    FROM product_events
    GROUP BY product_id
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
FROM seen s
LEFT JOIN latest l ON l.product_id = s.product_id AND l.rn = 1
