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
SELECT
    m.user_key,
    m.segment,
    r.kind,
    r.priority,
    m.evaluated_at,
    $as_of AS as_of
FROM segment_members m
JOIN segment_rules r ON r.name = m.segment
WHERE NOT EXISTS (SELECT 1 FROM user_consent u
                  WHERE u.user_key = m.user_key AND u.purpose = 'personalization' AND NOT u.granted)
  AND (NOT $require_consent
       OR EXISTS (SELECT 1 FROM user_consent u
                  WHERE u.user_key = m.user_key AND u.purpose = 'personalization' AND u.granted))
