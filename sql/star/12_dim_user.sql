-- dim_user: one row per customer — the stitched user_id when known, else the anonymous_id.
--
-- first_country / last_device: of the first and the latest session. primary_segment: the
-- segment with the best (lowest) priority number the customer is in now; it is the `segment`
-- partition their new rows land in.
--
-- grain: user_key
-- unique_key: user_key
-- not_null: user_key, first_seen_at, last_seen_at
-- references: primary_segment -> dim_segment.name
WITH customers AS (
    SELECT
        user_key,
        max(user_id)                                                      AS user_id,
        CASE WHEN max(user_id) IS NULL THEN max(anonymous_id) END         AS anonymous_id,
        min(started_at)                                                   AS first_seen_at,
        max(ended_at)                                                     AS last_seen_at,
        first_value(country ORDER BY started_at, session_key)             AS first_country,
        first_value(device ORDER BY started_at DESC, session_key DESC)    AS last_device
    FROM fact_sessions
    GROUP BY user_key
),
primary_segment AS (
    SELECT user_key, first_value(segment ORDER BY priority, segment) AS segment
    FROM user_segments
    GROUP BY user_key
)
SELECT
    c.user_key,
    c.user_id,
    c.anonymous_id,
    c.first_seen_at,
    c.last_seen_at,
    c.first_country,
    c.last_device,
    c.user_id IS NOT NULL       AS is_registered,
    p.segment                   AS primary_segment
FROM primary_segment p
RIGHT JOIN customers c ON p.user_key = c.user_key
