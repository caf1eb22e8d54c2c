-- REES46 multi-category store export (Kaggle "eCommerce behavior data from multi category
-- store"): event_time,event_type,product_id,category_id,category_code,brand,price,user_id,
-- user_session, with or without the header line.
--
-- Mapping: view → product_view, cart → add_to_cart, remove_from_cart as is, purchase → purchase.
-- The export has no event id: event_id is the MD5 of the line, so exact duplicate lines collapse
-- into one event in `clean` (counted as exact resends). It has no order id either: each purchase
-- line is its own order (order_id `rees46:<event_id>`, revenue = price). user_id is both
-- user_id and anonymous_id; user_session is the session. Prices are USD. category_code (dotted,
-- often empty) is the category; the 19-digit category_id is kept exactly, as text, in
-- properties.category_id. event_time carries a literal " UTC" suffix.
--
-- format: csv
-- delimiter: ,
-- header: auto
-- columns: event_time, event_type, product_id, category_id, category_code, brand, price, user_id, user_session
-- timestamp_formats: %Y-%m-%d %H:%M:%S UTC
WITH lines AS (
    SELECT *, md5(_raw) AS line_hash
    FROM source
)
SELECT
    _line,
    line_hash                                                 AS event_id,
    event_time,
    CASE event_type
        WHEN 'view' THEN 'product_view'
        WHEN 'cart' THEN 'add_to_cart'
        ELSE event_type END                                   AS event_type,
    user_id,
    user_id                                                   AS anonymous_id,
    user_session                                              AS session_id,
    product_id,
    category_code                                             AS category,
    brand,
    price,
    'USD'                                                     AS currency,
    CASE WHEN event_type = 'purchase' THEN concat('rees46:', line_hash) END AS order_id,
    CASE WHEN event_type = 'purchase' THEN price END          AS revenue,
    category_id
FROM lines
