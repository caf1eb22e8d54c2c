-- materialized: memory
--
-- duplicates: every copy of an event_id that arrived more than once, and which copy wins.
--
-- The copy with the earliest received_at wins; ties go to the smaller source_file, then
-- line_number, then batch_id, so the winner never depends on arrival order. Every losing copy is
-- classified against the winner: an exact resend carries the same payload (every event field
-- except received_at and the lineage columns), a conflicting resend differs.
--
-- Only duplicated event_ids are ranked, on narrow rows, so the wide event stream is never sorted.
-- The result is small (one row per extra copy and its winner) and is kept in memory.
WITH repeated AS (
    SELECT event_id
    FROM candidates
    GROUP BY event_id
    HAVING count(*) > 1
),

copies AS (
    SELECT
        c.event_id,
        c.received_at,
        c.source_file,
        c.line_number,
        c.batch_id,
        md5(concat_ws(chr(31),
            coalesce(CAST(event_time AS VARCHAR), chr(0)),
            coalesce(event_type, chr(0)),
            coalesce(user_id, chr(0)),
            coalesce(anonymous_id, chr(0)),
            coalesce(session_id, chr(0)),
            coalesce(product_id, chr(0)),
            coalesce(category, chr(0)),
            coalesce(brand, chr(0)),
            coalesce(CAST(price AS VARCHAR), chr(0)),
            coalesce(CAST(quantity AS VARCHAR), chr(0)),
            coalesce(currency, chr(0)),
            coalesce(order_id, chr(0)),
            coalesce(CAST(revenue AS VARCHAR), chr(0)),
            coalesce(CAST(checkout_step AS VARCHAR), chr(0)),
            coalesce(page_url, chr(0)),
            coalesce(referrer, chr(0)),
            coalesce(device, chr(0)),
            coalesce(country, chr(0)),
            coalesce(email, chr(0)),
            coalesce(ip, chr(0)),
            coalesce(properties, chr(0))
        )) AS payload_sig
    -- The small side first: hash joins build on their left input and stream the right one.
    FROM repeated r
    JOIN candidates c USING (event_id)
),

ranked AS (
    SELECT
        *,
        row_number() OVER arrival AS copy_rank,
        first_value(payload_sig) OVER arrival AS kept_sig
    FROM copies
    WINDOW arrival AS (
        PARTITION BY event_id ORDER BY received_at, source_file, line_number, batch_id
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
    )
),

classified AS (
    SELECT
        *,
        CASE WHEN copy_rank > 1 AND payload_sig = kept_sig THEN 1 ELSE 0 END AS is_exact,
        CASE WHEN copy_rank > 1 AND payload_sig <> kept_sig THEN 1 ELSE 0 END AS is_conflicting
    FROM ranked
)

SELECT
    event_id,
    source_file,
    line_number,
    batch_id,
    copy_rank = 1 AS is_winner,
    sum(is_exact) OVER (PARTITION BY event_id) AS exact_resends,
    sum(is_conflicting) OVER (PARTITION BY event_id) AS conflicting_resends
FROM classified
