-- materialized: memory
--
-- derived_sessions: for every event without a client session_id, the first event of its derived
-- session.
--
-- Per anonymous_id, session-less events are ordered by event_time (then event_id); the first one
-- starts a derived session, and so does every event more than $session_gap_us microseconds after
-- the previous session-less event of that anonymous_id. Each event's session is the latest start
-- at or before it, so one sort serves both windows. Narrow rows only.
WITH sessionless AS (
    SELECT anonymous_id, event_id, arrow_cast(event_time, 'Int64') AS t_us
    FROM deduplicated
    WHERE session_id IS NULL
),

starts AS (
    SELECT
        *,
        CASE
            WHEN lag(t_us) OVER visitor IS NULL THEN event_id
            WHEN t_us - lag(t_us) OVER visitor > $session_gap_us THEN event_id
        END AS session_start
    FROM sessionless
    WINDOW visitor AS (PARTITION BY anonymous_id ORDER BY t_us, event_id)
)

SELECT
    event_id,
    last_value(session_start) IGNORE NULLS OVER (
        PARTITION BY anonymous_id ORDER BY t_us, event_id
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
    ) AS first_event_id
FROM starts
