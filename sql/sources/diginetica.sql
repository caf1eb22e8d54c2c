-- DIGINETICA (CIKM Cup 2016) item views: session_id;user_id;item_id;timeframe;eventdate.
--
-- Mapping: every row is a product_view of item_id. The export has no timestamp: `timeframe` is
-- milliseconds since the start of the session and `eventdate` the session's date, so
-- event_time = eventdate 00:00:00 UTC + timeframe ms (the order inside a session is right, the
-- time of day is not). user_id `NA` means anonymous (NULL); the anonymous_id is the session
-- (`diginetica:<session_id>`), the session_id is session_id. event_id is
-- `diginetica:<session>:<item>:<timeframe>`, so a repeated identical row collapses in `clean`.
--
-- format: csv
-- delimiter: ;
-- header: auto
-- columns: session_id, user_id, item_id, timeframe, eventdate
SELECT
    _line,
    concat('diginetica:', session_id, ':', item_id, ':', timeframe)             AS event_id,
    to_timestamp_millis(CAST(date_part('epoch', TRY_CAST(eventdate AS DATE)) AS BIGINT) * 1000
                        + TRY_CAST(timeframe AS BIGINT))                         AS event_time,
    'product_view'                                                               AS event_type,
    nullif(user_id, 'NA')                                                        AS user_id,
    CASE WHEN session_id IS NOT NULL THEN concat('diginetica:', session_id) END  AS anonymous_id,
    session_id,
    item_id                                                                      AS product_id,
    timeframe                                                                    AS session_offset_ms
FROM source
