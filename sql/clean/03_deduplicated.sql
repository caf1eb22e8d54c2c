-- deduplicated: one row per event_id.
--
-- The row with the earliest received_at wins; ties go to the smaller source_file, then line_number,
-- so the winner never depends on arrival order. Every losing copy is classified against the
-- winner: an exact resend carries the same payload (all event fields except received_at and the
-- lineage columns), a conflicting resend differs. `_exact_resends` / `_conflicting_resends` are run
-- bookkeeping: summed into the run summary, never stored.
WITH ranked AS (
    SELECT
        *,
        row_number() OVER (
            PARTITION BY event_id ORDER BY received_at, source_file, line_number
        ) AS dup_rank,
        count(*) OVER (PARTITION BY event_id) AS copies
    FROM candidates
),

signed AS (
    SELECT
        *,
        CASE WHEN copies > 1 THEN md5(concat_ws(chr(31),
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
        )) END AS payload_sig
    FROM ranked
),

judged AS (
    SELECT
        *,
        first_value(payload_sig) OVER (
            PARTITION BY event_id ORDER BY received_at, source_file, line_number
        ) AS kept_sig
    FROM signed
),

counted AS (
    SELECT
        *,
        sum(CASE WHEN dup_rank > 1 AND payload_sig = kept_sig THEN 1 ELSE 0 END)
            OVER (PARTITION BY event_id) AS _exact_resends,
        sum(CASE WHEN dup_rank > 1 AND payload_sig <> kept_sig THEN 1 ELSE 0 END)
            OVER (PARTITION BY event_id) AS _conflicting_resends
    FROM judged
)

SELECT * EXCEPT (dup_rank, copies, payload_sig, kept_sig)
FROM counted
WHERE dup_rank = 1
