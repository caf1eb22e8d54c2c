-- user_segment_history: type-2 history of segment membership. A customer entering a segment
-- opens a row (valid_from = the build's as-of time, valid_to NULL); leaving closes it
-- (valid_to = that build's as-of time). Who was in segment X at time T:
--   WHERE segment = 'X' AND valid_from <= T AND (valid_to IS NULL OR valid_to > T)
--
-- Input  `this`: the history as of the previous build (empty on the first).
-- materialized: table
-- grain: user_key, segment, valid_from
-- not_null: user_key, segment, valid_from
WITH open AS (
    SELECT * FROM this WHERE valid_to IS NULL
),
current AS (
    SELECT user_key, segment FROM user_segments
)
SELECT user_key, segment, valid_from, valid_to
FROM this
WHERE valid_to IS NOT NULL
UNION ALL
SELECT o.user_key, o.segment, o.valid_from,
       CASE WHEN c.user_key IS NULL THEN $as_of END AS valid_to
FROM open o
LEFT JOIN current c ON c.user_key = o.user_key AND c.segment = o.segment
UNION ALL
SELECT c.user_key, c.segment, $as_of AS valid_from, arrow_cast(NULL, 'Timestamp(Microsecond, Some("UTC"))') AS valid_to
FROM current c
LEFT JOIN open o ON o.user_key = c.user_key AND o.segment = c.segment
WHERE o.user_key IS NULL
