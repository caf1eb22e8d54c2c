-- deduplicated: one row per event_id, the winning copy (see duplicates).
--
-- `_exact_resends` / `_conflicting_resends` are run bookkeeping on the winning row: summed into the
-- run summary, never stored.
SELECT
    c.*,
    coalesce(d.exact_resends, 0) AS _exact_resends,
    coalesce(d.conflicting_resends, 0) AS _conflicting_resends
-- The small side first: hash joins build on their left input and stream the right one.
FROM duplicates d
RIGHT JOIN candidates c
    ON c.event_id = d.event_id
    AND c.source_file = d.source_file
    AND c.line_number = d.line_number
    AND c.batch_id = d.batch_id
WHERE d.event_id IS NULL OR d.is_winner
