-- events_unique_event_id: one events row per event_id.
SELECT event_id, count(*) AS copies
FROM events
GROUP BY event_id
HAVING count(*) > 1 OR event_id IS NULL
