-- Segment (Spec v2) track / page / screen / identify calls, one JSON object per line, as written
-- by Segment's S3 destination or a webhook sink.
--
-- Mapping: the e-commerce spec events → event_type: Product Viewed → product_view, Product Added
-- → add_to_cart, Product Removed → remove_from_cart, Cart Viewed → cart_view, Checkout Started →
-- checkout_started, Checkout Step Viewed / Checkout Step Completed → checkout_step (properties.step),
-- Payment Info Entered → payment_info, Order Completed → purchase (one row per
-- properties.products[] entry, event_id `<messageId>:N` when there are several), Products Searched
-- → search, Product List Viewed → list_view, Product Clicked → list_click, Promotion Viewed /
-- Clicked → promo_view / promo_click, Order Refunded → refund; page and screen calls → page_view;
-- identify → identify (links anonymousId to userId). Any other track event keeps its name and is
-- quarantined as unknown_event_type. messageId → event_id, timestamp → event_time, receivedAt →
-- received_at, userId / anonymousId as is. Segment has no session id: events get derived
-- sessions (30-minute gap) unless properties.session_id or context.session_id is set.
--
-- format: ndjson
WITH calls AS (
    SELECT
        _line,
        _raw,
        lower(json_get(_raw, 'type'))                                  AS call_type,
        json_get(_raw, 'event')                                        AS event_name,
        json_get(_raw, 'messageId')                                    AS message_id,
        coalesce(json_length(_raw, 'properties', 'products'), 0)       AS n_products
    FROM source
),
typed AS (
    SELECT
        *,
        CASE
            WHEN call_type IN ('page', 'screen') THEN 'page_view'
            WHEN call_type = 'identify' THEN 'identify'
            WHEN call_type = 'track' THEN
                CASE event_name
                    WHEN 'Product Viewed' THEN 'product_view'
                    WHEN 'Product Added' THEN 'add_to_cart'
                    WHEN 'Product Removed' THEN 'remove_from_cart'
                    WHEN 'Cart Viewed' THEN 'cart_view'
                    WHEN 'Checkout Started' THEN 'checkout_started'
                    WHEN 'Checkout Step Viewed' THEN 'checkout_step'
                    WHEN 'Checkout Step Completed' THEN 'checkout_step'
                    WHEN 'Payment Info Entered' THEN 'payment_info'
                    WHEN 'Order Completed' THEN 'purchase'
                    WHEN 'Products Searched' THEN 'search'
                    WHEN 'Product List Viewed' THEN 'list_view'
                    WHEN 'Product Clicked' THEN 'list_click'
                    WHEN 'Promotion Viewed' THEN 'promo_view'
                    WHEN 'Promotion Clicked' THEN 'promo_click'
                    WHEN 'Order Refunded' THEN 'refund'
                    ELSE event_name
                END
            ELSE call_type
        END                                                            AS event_type
    FROM calls
),
per_product AS (
    SELECT
        *,
        event_type = 'purchase' AND n_products > 1                     AS exploded,
        unnest(range(0, CASE WHEN event_type = 'purchase' AND n_products > 1
                             THEN n_products ELSE 1 END))              AS idx
    FROM typed
)
SELECT
    _line,
    CASE WHEN exploded THEN concat(message_id, ':', CAST(idx + 1 AS VARCHAR))
         ELSE message_id END                                           AS event_id,
    json_get(_raw, 'timestamp')                                        AS event_time,
    json_get(_raw, 'receivedAt')                                       AS received_at,
    event_type,
    json_get(_raw, 'userId')                                           AS user_id,
    json_get(_raw, 'anonymousId')                                      AS anonymous_id,
    coalesce(json_get(_raw, 'properties', 'session_id'),
             json_get(_raw, 'context', 'session_id'))                  AS session_id,
    CASE WHEN event_type = 'purchase' THEN json_get(_raw, 'properties', 'products', idx, 'product_id')
         ELSE json_get(_raw, 'properties', 'product_id') END           AS product_id,
    CASE WHEN event_type = 'purchase' THEN json_get(_raw, 'properties', 'products', idx, 'category')
         ELSE json_get(_raw, 'properties', 'category') END             AS category,
    CASE WHEN event_type = 'purchase' THEN json_get(_raw, 'properties', 'products', idx, 'brand')
         ELSE json_get(_raw, 'properties', 'brand') END                AS brand,
    CASE WHEN event_type = 'purchase' THEN json_get(_raw, 'properties', 'products', idx, 'price')
         ELSE json_get(_raw, 'properties', 'price') END                AS price,
    CASE WHEN event_type = 'purchase' THEN json_get(_raw, 'properties', 'products', idx, 'quantity')
         ELSE json_get(_raw, 'properties', 'quantity') END             AS quantity,
    json_get(_raw, 'properties', 'currency')                           AS currency,
    json_get(_raw, 'properties', 'order_id')                           AS order_id,
    CASE WHEN event_type = 'purchase'
         THEN coalesce(json_get(_raw, 'properties', 'revenue'), json_get(_raw, 'properties', 'total'))
    END                                                                AS revenue,
    CASE WHEN event_type = 'checkout_step' THEN json_get(_raw, 'properties', 'step') END AS checkout_step,
    coalesce(json_get(_raw, 'context', 'page', 'url'), json_get(_raw, 'properties', 'url')) AS page_url,
    coalesce(json_get(_raw, 'context', 'page', 'referrer'), json_get(_raw, 'properties', 'referrer')) AS referrer,
    json_get(_raw, 'context', 'device', 'type')                        AS device,
    json_get(_raw, 'context', 'location', 'country')                   AS country,
    coalesce(json_get(_raw, 'traits', 'email'), json_get(_raw, 'context', 'traits', 'email')) AS email,
    json_get(_raw, 'context', 'ip')                                    AS ip,
    call_type                                                          AS segment_type,
    event_name                                                         AS segment_event,
    json_get(_raw, 'properties', 'query')                              AS search_query
FROM per_product
