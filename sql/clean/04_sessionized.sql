-- sessionized: the rows written to `events`.
--
-- Sessions, per anonymous_id: an event with a client session_id belongs to session
-- (anonymous_id, session_id). Events without one are ordered by event_time; the first one starts a
-- derived session, and so does every event more than $session_gap_us microseconds after the
-- previous session-less event of that anonymous_id. session_key = md5 of anonymous_id and the
-- client session_id, or of anonymous_id and the event_id of the derived session's first event.
--
-- Identity: stitched_user_id is the latest (by event_time) non-null user_id the anonymous_id was
-- ever seen with, so a browse-then-login journey is one customer.
WITH timed AS (
    SELECT *, arrow_cast(event_time, 'Int64') AS t_us
    FROM deduplicated
),

gaps AS (
    SELECT
        *,
        CASE
            WHEN session_id IS NOT NULL THEN 0
            WHEN lag(t_us) OVER visitor_sessionless IS NULL THEN 1
            WHEN t_us - lag(t_us) OVER visitor_sessionless > $session_gap_us THEN 1
            ELSE 0
        END AS starts_session
    FROM timed
    WINDOW visitor_sessionless AS (
        PARTITION BY anonymous_id, session_id IS NULL ORDER BY t_us, event_id
    )
),

numbered AS (
    SELECT
        *,
        sum(starts_session) OVER (
            PARTITION BY anonymous_id, session_id IS NULL ORDER BY t_us, event_id
            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) AS derived_no
    FROM gaps
),

firsts AS (
    SELECT
        *,
        first_value(event_id) OVER (
            PARTITION BY anonymous_id, session_id IS NULL, derived_no ORDER BY t_us, event_id
        ) AS derived_first_event,
        first_value(user_id) OVER (
            PARTITION BY anonymous_id ORDER BY user_id IS NULL, t_us DESC, event_id DESC
        ) AS latest_user_id
    FROM numbered
)

SELECT
    event_id,
    event_time,
    received_at,
    event_type,
    user_id,
    latest_user_id AS stitched_user_id,
    anonymous_id,
    session_id,
    CASE
        WHEN session_id IS NOT NULL THEN md5(concat(anonymous_id, chr(31), 'client', chr(31), session_id))
        ELSE md5(concat(anonymous_id, chr(31), 'derived', chr(31), derived_first_event))
    END AS session_key,
    CASE WHEN session_id IS NOT NULL THEN 'client' ELSE 'derived' END AS session_source,
    product_id,
    category,
    category_l1,
    category_l2,
    category_l3,
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
    segment,
    _exact_resends,
    _conflicting_resends
FROM firsts
