-- normalized: raw rows made uniform.
--
-- Input  `raw_input`: rows of raw_events this run consumes (all of them on --full-refresh).
-- Rules  timestamps stay UTC (ingest converted every offset); strings are trimmed and an empty
--        string becomes NULL; event_type is lower-cased; currency is upper-cased; category is kept
--        as given and split into up to three levels on '/' or '.'.
WITH trimmed AS (
    SELECT
        nullif(trim(event_id), '')            AS event_id,
        event_time,
        received_at,
        lower(trim(event_type))               AS event_type,
        nullif(trim(user_id), '')             AS user_id,
        nullif(trim(anonymous_id), '')        AS anonymous_id,
        nullif(trim(session_id), '')          AS session_id,
        nullif(trim(product_id), '')          AS product_id,
        nullif(trim(category), '')            AS category,
        nullif(trim(brand), '')               AS brand,
        price,
        quantity,
        upper(nullif(trim(currency), ''))     AS currency,
        nullif(trim(order_id), '')            AS order_id,
        revenue,
        checkout_step,
        nullif(trim(page_url), '')            AS page_url,
        nullif(trim(referrer), '')            AS referrer,
        nullif(trim(device), '')              AS device,
        nullif(trim(country), '')             AS country,
        nullif(trim(email), '')               AS email,
        nullif(trim(ip), '')                  AS ip,
        properties,
        source_file,
        line_number,
        batch_id,
        ingested_at,
        event_date,
        segment
    FROM raw_input
),

with_path AS (
    SELECT *, replace(category, '.', '/') AS category_path
    FROM trimmed
)

SELECT
    event_id,
    event_time,
    received_at,
    event_type,
    user_id,
    anonymous_id,
    session_id,
    product_id,
    category,
    nullif(split_part(category_path, '/', 1), '') AS category_l1,
    nullif(split_part(category_path, '/', 2), '') AS category_l2,
    nullif(split_part(category_path, '/', 3), '') AS category_l3,
    brand,
    price,
    quantity,
    currency,
    order_id,
    revenue,
    checkout_step,
    page_url,
    referrer,
    device,
    country,
    email,
    ip,
    properties,
    source_file,
    line_number,
    batch_id,
    ingested_at,
    event_date,
    segment
FROM with_path
