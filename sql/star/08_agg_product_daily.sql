-- agg_product_daily: per event date, product and currency (money is never summed across
-- currencies): views, adds, removes, purchased quantity, revenue (price × quantity of purchase
-- lines) and conversion rates.
--
-- Incremental: `events` holds every event of the dates that changed since the last build.
-- materialized: incremental
-- unique_key: event_date
-- partition_by: event_date
-- grain: event_date, product_key, currency
-- not_null: event_date, date_key, product_key
-- references: product_key -> dim_product.product_key, date_key -> dim_date.date_key
WITH daily AS (
    SELECT
        event_date,
        product_id,
        currency,
        count(*) FILTER (WHERE event_type = 'product_view')                                AS views,
        coalesce(sum(coalesce(quantity, 1)) FILTER (WHERE event_type = 'add_to_cart'), 0)  AS adds,
        coalesce(sum(coalesce(quantity, 1)) FILTER (WHERE event_type = 'remove_from_cart'), 0) AS removes,
        coalesce(sum(coalesce(quantity, 1)) FILTER (WHERE event_type = 'purchase'), 0)     AS purchased_qty,
        sum(price * coalesce(quantity, 1)) FILTER (WHERE event_type = 'purchase')          AS revenue
    FROM events
    WHERE product_id IS NOT NULL
    GROUP BY event_date, product_id, currency
)
SELECT
    CAST(date_part('year', event_date) * 10000 + date_part('month', event_date) * 100
         + date_part('day', event_date) AS INT)                     AS date_key,
    md5(product_id)                                                AS product_key,
    product_id,
    currency,
    views,
    adds,
    removes,
    purchased_qty,
    revenue,
    CASE WHEN views > 0 THEN CAST(adds AS DOUBLE) / views END      AS view_to_cart_rate,
    CASE WHEN adds > 0 THEN CAST(purchased_qty AS DOUBLE) / adds END AS cart_to_purchase_rate,
    event_date
FROM daily
