-- materialized: memory
--
-- derived_sessions: for every event without a client session_id, the first event of its derived
-- session.
--
-- Per anonymous_id, session-less events are ordered by event_time (then event_id); the first one
-- starts a derived session, and so does every event more than $session_gap_us microseconds after
-- the previous session-less event of that anonymous_id. Narrow rows only.
WITH sessionless AS (
    SELECT anonymous_id, event_id, arrow_cast(event_time, 'Int64') AS t_us
    FROM deduplicated
    WHERE session_id IS NULL
),

gaps AS (
    SELECT
        *,
        CASE
            WHEN lag(t_us) OVER visitor IS NULL THEN 1
            WHEN t_us - lag(t_us) OVER visitor > $session_gap_us THEN 1
            ELSE 0
        END AS starts_session
    FROM sessionless
    WINDOW visitor AS (PARTITION BY anonymous_id ORDER BY t_us, event_id)
),

numbered AS (
    SELECT
        *,
        sum(starts_session) OVER (
            PARTITION BY anonymous_id ORDER BY t_us, event_id
            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) AS session_no
    FROM gaps
)

SELECT
    event_id,
    first_value(event_id) OVER (
        PARTITION BY anonymous_id, session_no ORDER BY t_us, event_id
    ) AS first_event_id
FROM numbered
