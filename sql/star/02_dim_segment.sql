-- dim_segment: the customer segments of clicklake.toml ([[segments]]), plus the two landing
-- partitions every lake has: `anonymous` (rows without a user_id) and `unsegmented` (a known
-- user in no segment yet).
--
-- Input  `segment_rules`: name, kind, rule, priority, refresh — as configured.
-- grain: segment_key
-- unique_key: segment_key
-- not_null: segment_key, name, kind
-- accepted_values: kind in ('static', 'dynamic', 'system')
SELECT
    md5(name)  AS segment_key,
    name,
    kind,
    rule,
    priority,
    refresh
FROM segment_rules
UNION ALL
SELECT md5('anonymous'), 'anonymous', 'system', 'user_id IS NULL at landing', CAST(NULL AS BIGINT), CAST(NULL AS VARCHAR)
UNION ALL
SELECT md5('unsegmented'), 'unsegmented', 'system', 'a known user in no segment', CAST(NULL AS BIGINT), CAST(NULL AS VARCHAR)
