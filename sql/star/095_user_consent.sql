-- user_consent: each customer's latest consent decision per purpose (analytics,
-- personalization, marketing, or any other purpose named), from consent events
-- (`consent_granted` / `consent_withdrawn` with `properties.purposes` as a JSON array or
-- `properties.purpose`) and from the `consents` table (`clicklake consent FILE`). The latest
-- decision wins; at the same instant a withdrawal wins. An anonymous decision applies to the
-- customer the anonymous_id is stitched to.
--
-- Personalization tables (agg_user_interest, agg_user_features, user_segments, dim_user.primary_segment) leave out
-- customers whose latest `personalization` decision is a withdrawal (with `[privacy]
-- require_consent = true`: everyone without a grant); agg_funnel_daily leaves out the sessions
-- of customers who withdrew `analytics`.
--
-- materialized: table
-- grain: user_key, purpose
-- not_null: user_key, purpose, granted, decided_at, source
-- Consent events already carry their customer (every row of a visitor has the same
-- stitched_user_id); only an anonymous decision from the `consents` table looks its visitor up,
-- so `stitched` reads just those visitors' events, not every visitor's.
WITH stitched AS (
    SELECT anonymous_id, max(stitched_user_id) AS user_id
    FROM events
    WHERE stitched_user_id IS NOT NULL
      AND anonymous_id IN (SELECT anonymous_id FROM consents WHERE user_id IS NULL)
    GROUP BY anonymous_id
),
from_events AS (
    SELECT
        coalesce(stitched_user_id, user_id)                                   AS user_id,
        anonymous_id,
        event_type = 'consent_granted'                                        AS granted,
        event_time                                                            AS decided_at,
        coalesce(json_get(properties, 'purposes'), json_get(properties, 'purpose')) AS purposes,
        concat('event:', event_id)                                            AS source
    FROM events
    WHERE event_type IN ('consent_granted', 'consent_withdrawn')
),
decisions AS (
    SELECT user_id, anonymous_id, granted, decided_at, source,
           unnest(string_to_array(regexp_replace(purposes, '[\[\]" ]', '', 'g'), ',')) AS purpose
    FROM from_events
    WHERE purposes IS NOT NULL
    UNION ALL
    SELECT c.user_id, c.anonymous_id, c.granted, c.decided_at, c.source, c.purpose
    FROM consents c
),
keyed AS (
    SELECT
        CASE WHEN coalesce(d.user_id, s.user_id) IS NOT NULL
             THEN md5(concat('user', chr(31), coalesce(d.user_id, s.user_id)))
             ELSE md5(concat('anonymous', chr(31), d.anonymous_id)) END       AS user_key,
        lower(trim(d.purpose))                                                AS purpose,
        d.granted,
        d.decided_at,
        d.source
    FROM decisions d
    LEFT JOIN stitched s ON s.anonymous_id = d.anonymous_id
    WHERE (d.user_id IS NOT NULL OR d.anonymous_id IS NOT NULL) AND trim(d.purpose) <> ''
)
SELECT user_key, purpose, granted, decided_at, source
FROM (
    SELECT *, row_number() OVER (PARTITION BY user_key, purpose
                                 ORDER BY decided_at DESC, granted, source) AS pos
    FROM keyed
)
WHERE pos = 1
