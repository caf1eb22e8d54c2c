-- events_reconcile_raw: raw rows = events + duplicates removed. Every distinct event_id that
-- clean consumed from raw_events is exactly one events row. `raw_events_cleaned` is raw_events
-- at the version events reflects, so rows landed since the last clean do not count.
WITH raw AS (
    SELECT count(*) AS raw_rows, count(DISTINCT trim(event_id)) AS distinct_ids
    FROM raw_events_cleaned
),
ev AS (
    SELECT count(*) AS events_rows FROM events
)
SELECT raw.raw_rows, ev.events_rows, raw.raw_rows - raw.distinct_ids AS duplicates_removed
FROM raw CROSS JOIN ev
WHERE raw.raw_rows <> ev.events_rows + (raw.raw_rows - raw.distinct_ids)
