-- materialized: memory
--
-- identities: per anonymous_id that was ever seen with a user_id, the latest one (by event_time,
-- then event_id). Visitors who never logged in have no row.
SELECT
    anonymous_id,
    first_value(user_id ORDER BY arrow_cast(event_time, 'Int64') DESC, event_id DESC)
        AS stitched_user_id
FROM deduplicated
WHERE user_id IS NOT NULL
GROUP BY anonymous_id
