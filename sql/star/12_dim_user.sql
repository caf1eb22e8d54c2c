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
WITH sessions AS (
    SELECT
        user_key, user_id, anonymous_id, started_at, ended_at, country, device,
        row_number() OVER (PARTITION BY user_key ORDER BY started_at, session_key)           AS first_pos,
        row_number() OVER (PARTITION BY user_key ORDER BY started_at DESC, session_key DESC) AS last_pos
    FROM fact_sessions
),
customers AS (
    SELECT
        user_key,
        max(user_id)                                  AS user_id,
        CASE WHEN max(user_id) IS NULL THEN max(anonymous_id) END AS anonymous_id,
        min(started_at)                               AS first_seen_at,
        max(ended_at)                                 AS last_seen_at,
        max(country) FILTER (WHERE first_pos = 1)     AS first_country,
        max(device) FILTER (WHERE last_pos = 1)       AS last_device
    FROM sessions
    GROUP BY user_key
),
primary_segment AS (
    SELECT user_key, segment,
           row_number() OVER (PARTITION BY user_key ORDER BY priority, segment) AS rn
    FROM user_segments
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
FROM customers c
LEFT JOIN primary_segment p ON p.user_key = c.user_key AND p.rn = 1
