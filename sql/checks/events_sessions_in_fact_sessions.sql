-- events_sessions_in_fact_sessions: every session of events has its fact_sessions row, and the
-- event counts agree.
WITH ev AS (
    SELECT session_key, count(*) AS events FROM events GROUP BY session_key
)
SELECT ev.session_key, ev.events, f.events AS fact_events
FROM ev
LEFT JOIN fact_sessions f ON f.session_key = ev.session_key
WHERE f.session_key IS NULL OR f.events <> ev.events
