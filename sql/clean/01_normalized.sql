-- normalized: raw rows made uniform.
--
-- Input  `raw_input`: rows of raw_events this run consumes (all of them on --full-refresh).
-- Rules  timestamps stay UTC (ingest converted every offset); strings are trimmed and an empty
--        string becomes NULL (trim_to_null(s) = nullif(trim(s), ''), without copying a column
--        that needs neither); event_type is lower-cased; currency is upper-cased; category is kept
--        as given and split into up to three levels on '/' or '.' (category_level(c, n) =
--        nullif(split_part(replace(c, '.', '/'), '/', n), ''), without copying the strings).
WITH trimmed AS (
    SELECT
        trim_to_null(event_id)                AS event_id,
        event_time,
        received_at,
        lower(trim(event_type))               AS event_type,
        trim_to_null(user_id)                 AS user_id,
        trim_to_null(anonymous_id)            AS anonymous_id,
        trim_to_null(session_id)              AS session_id,
        trim_to_null(product_id)              AS product_id,
        trim_to_null(category)                AS category,
        trim_to_null(brand)                   AS brand,
        price,
        quantity,
        upper(trim_to_null(currency))         AS currency,
        trim_to_null(order_id)                AS order_id,
        revenue,
        checkout_step,
        trim_to_null(page_url)                AS page_url,
        trim_to_null(referrer)                AS referrer,
        trim_to_null(device)                  AS device,
        trim_to_null(country)                 AS country,
        trim_to_null(email)                   AS email,
        trim_to_null(ip)                      AS ip,
        properties,
        source_file,
        line_number,
        batch_id,
        ingested_at,
        event_date,
        segment
    FROM raw_input
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
    category_level(category, 1)                 AS category_l1,
    category_level(category, 2)                 AS category_l2,
    category_level(category, 3)                 AS category_l3,
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
FROM trimmed
