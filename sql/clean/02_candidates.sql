-- candidates: every row that competes for a place in `events` in this run.
--
-- Inputs `normalized`: the raw rows this run consumes, normalised.
--        `events_carried`: on an incremental run, the current `events` rows of every anonymous_id
--        the new rows touch (so dedup, sessions and identity stitching see that visitor's whole
--        history); empty on --full-refresh.
SELECT * FROM normalized

UNION ALL

SELECT
    event_id,
    event_time,
    received_at,
    event_type,
    user_id,
    anonymous_id,
    session_id,
    product_id,
    category,
    category_l1,
    category_l2,
    category_l3,
    brand,
    price,
    quantity,
    currency,
    order_id,
    revenue,
    checkout_step,
    page_url,
    referrer,
    device,
    country,
    email,
    ip,
    properties,
    source_file,
    line_number,
    batch_id,
    ingested_at,
    event_date,
    segment
FROM events_carried
