-- user_segments: current segment membership, one row per (customer, segment).
--
-- Input  `segment_members`: (user_key, segment, evaluated_at) for every configured segment:
--        dynamic segments evaluated at this build's as-of time, static ones re-evaluated when
--        their last evaluation is older than their `refresh`, otherwise carried over.
-- Customers whose latest personalization consent is a withdrawal (with `$require_consent`:
-- everyone without a grant) are in no segment, carried-over static ones included.
-- grain: user_key, segment
-- not_null: user_key, segment, evaluated_at
-- references: user_key -> dim_user.user_key
-- The consent filter joins the customers' personalization decisions (one row per customer, the
-- small side, where the hash join builds) to the rows: a NOT EXISTS builds its hash table on every
-- row instead (in agg_funnel_daily that took 1.2 s of a 10M-event build; now 0.1 s).
WITH personalization AS (
    SELECT user_key, granted FROM user_consent WHERE purpose = 'personalization'
)
SELECT
    m.user_key,
    m.segment,
    r.kind,
    r.priority,
    m.evaluated_at,
    $as_of AS as_of
FROM personalization c
RIGHT JOIN (
    segment_members m
    JOIN segment_rules r ON r.name = m.segment
) ON c.user_key = m.user_key
WHERE c.granted IS NOT FALSE AND (NOT $require_consent OR c.granted)
