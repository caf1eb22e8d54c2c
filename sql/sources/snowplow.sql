-- Snowplow atomic events with the e-commerce plugin's entities, as exported to CSV (or TSV with
-- `delimiter: tab`): one canonical row per event, or per (event, product) for actions that carry
-- several products (product_view, add_to_cart, remove_from_cart, transaction).
--
-- Mapping (see the README, "Sources"):
--   action type (unstruct ..._snowplow_ecommerce_action) → event_type: product_view,
--   add_to_cart, remove_from_cart, checkout_step as is; transaction → purchase; list_view,
--   list_click, promo_view, promo_click, refund keep their names; no action → page_view.
--   event_id: the Snowplow event_id, suffixed `:N` (1-based product position) when the action
--   carries several products. domain_userid (else the client_session userId) → anonymous_id,
--   domain_sessionid (else the client_session sessionId) → session_id, collector_tstamp →
--   received_at, derived_tstamp (else dvce_created_tstamp) → event_time, transaction_id →
--   order_id, transaction revenue → revenue. Rows whose app_id is outside `app_ids` (when set)
--   go to quarantine as rejected_by_source.
--
-- format: csv
-- delimiter: ,
-- header: true
-- columns: app_id, platform, collector_tstamp, dvce_created_tstamp, event_id, user_id, user_ipaddress, domain_userid, geo_country, page_url, page_referrer, domain_sessionid, derived_tstamp, event_fingerprint, contexts_com_snowplowanalytics_snowplow_ecommerce_user_1_0_0, contexts_com_snowplowanalytics_snowplow_ecommerce_page_1_0_0, unstruct_event_com_snowplowanalytics_snowplow_ecommerce_snowplow_ecommerce_action_1_0_0, contexts_com_snowplowanalytics_snowplow_ecommerce_cart_1_0_0, contexts_com_snowplowanalytics_snowplow_ecommerce_product_1_0_0, contexts_com_snowplowanalytics_snowplow_ecommerce_checkout_step_1_0_0, contexts_com_snowplowanalytics_snowplow_ecommerce_transaction_1_0_0, contexts_com_snowplowanalytics_snowplow_client_session_1_0_1
-- param.app_ids: []
WITH events AS (
    SELECT
        _line,
        app_id,
        platform,
        event_id                                                                  AS snowplow_event_id,
        coalesce(derived_tstamp, dvce_created_tstamp)                             AS event_time,
        collector_tstamp                                                          AS received_at,
        coalesce(user_id, json_get(contexts_com_snowplowanalytics_snowplow_ecommerce_user_1_0_0, 0, 'id')) AS user_id,
        coalesce(domain_userid, json_get(contexts_com_snowplowanalytics_snowplow_client_session_1_0_1, 0, 'userId')) AS anonymous_id,
        coalesce(domain_sessionid, json_get(contexts_com_snowplowanalytics_snowplow_client_session_1_0_1, 0, 'sessionId')) AS session_id,
        json_get(contexts_com_snowplowanalytics_snowplow_ecommerce_user_1_0_0, 0, 'email') AS email,
        user_ipaddress                                                            AS ip,
        geo_country                                                               AS country,
        page_url,
        page_referrer                                                             AS referrer,
        event_fingerprint,
        json_get(unstruct_event_com_snowplowanalytics_snowplow_ecommerce_snowplow_ecommerce_action_1_0_0, 'type') AS action,
        json_get(unstruct_event_com_snowplowanalytics_snowplow_ecommerce_snowplow_ecommerce_action_1_0_0, 'name') AS list_name,
        json_get(contexts_com_snowplowanalytics_snowplow_ecommerce_page_1_0_0, 0, 'type') AS page_type,
        json_get(contexts_com_snowplowanalytics_snowplow_ecommerce_cart_1_0_0, 0, 'total_value') AS cart_value,
        json_get(contexts_com_snowplowanalytics_snowplow_ecommerce_cart_1_0_0, 0, 'currency') AS cart_currency,
        json_get(contexts_com_snowplowanalytics_snowplow_ecommerce_checkout_step_1_0_0, 0, 'step') AS step,
        contexts_com_snowplowanalytics_snowplow_ecommerce_transaction_1_0_0       AS tx,
        contexts_com_snowplowanalytics_snowplow_ecommerce_product_1_0_0           AS products,
        coalesce(json_length(contexts_com_snowplowanalytics_snowplow_ecommerce_product_1_0_0), 0) AS n_products
    FROM source
),
per_product AS (
    SELECT
        *,
        action IN ('product_view', 'add_to_cart', 'remove_from_cart', 'transaction')
            AND n_products > 1                                                    AS exploded,
        unnest(range(0, CASE WHEN action IN ('product_view', 'add_to_cart', 'remove_from_cart', 'transaction')
                                  AND n_products > 1 THEN n_products ELSE 1 END)) AS product_idx
    FROM events
)
SELECT
    _line,
    CASE WHEN exploded THEN concat(snowplow_event_id, ':', CAST(product_idx + 1 AS VARCHAR))
         ELSE snowplow_event_id END                                               AS event_id,
    event_time,
    received_at,
    CASE WHEN action IS NULL THEN 'page_view'
         WHEN action = 'transaction' THEN 'purchase'
         ELSE action END                                                          AS event_type,
    user_id,
    anonymous_id,
    session_id,
    json_get(products, product_idx, 'id')                                         AS product_id,
    json_get(products, product_idx, 'category')                                   AS category,
    json_get(products, product_idx, 'brand')                                      AS brand,
    json_get(products, product_idx, 'price')                                      AS price,
    json_get(products, product_idx, 'quantity')                                   AS quantity,
    coalesce(json_get(tx, 0, 'currency'), json_get(products, product_idx, 'currency'), cart_currency) AS currency,
    CASE WHEN action = 'transaction' THEN json_get(tx, 0, 'transaction_id') END   AS order_id,
    CASE WHEN action = 'transaction' THEN json_get(tx, 0, 'revenue') END          AS revenue,
    CASE WHEN action = 'checkout_step' THEN step END                              AS checkout_step,
    page_url,
    referrer,
    platform                                                                      AS device,
    country,
    email,
    ip,
    CASE WHEN cardinality($app_ids) > 0 AND NOT coalesce(array_has($app_ids, app_id), false)
         THEN concat('app_id ', coalesce(app_id, '(empty)'), ' is not in [sources.snowplow] app_ids')
    END                                                                           AS _reject,
    app_id,
    snowplow_event_id,
    event_fingerprint,
    list_name,
    page_type,
    cart_value,
    CASE WHEN action = 'transaction' THEN json_get(tx, 0, 'shipping') END         AS shipping,
    CASE WHEN action = 'transaction' THEN json_get(tx, 0, 'payment_method') END   AS payment_method
FROM per_product
