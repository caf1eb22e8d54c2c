-- user_segments: current segment membership, one row per (customer, segment).
--
-- Input  `segment_members`: (user_key, segment, evaluated_at) for every configured segment:
--        dynamic segments evaluated at this build's as-of time, static ones re-evaluated when
--        their last evaluation is older than their `refresh`, otherwise carried over.
-- grain: user_key, segment
-- not_null: user_key, segment, evaluated_at
-- references: user_key -> dim_user.user_key
SELECT
    m.user_key,
    m.segment,
    r.kind,
    r.priority,
    m.evaluated_at,
    $as_of AS as_of
FROM segment_members m
JOIN segment_rules r ON r.name = m.segment
