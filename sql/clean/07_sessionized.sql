-- sessionized: the rows written to `events`.
--
-- Sessions: an event with a client session_id belongs to session (anonymous_id, session_id);
-- any other event belongs to its derived session (see derived_sessions). session_key = md5 of
-- anonymous_id and the client session_id, or of anonymous_id and the event_id of the derived
-- session's first event.
--
-- Identity: stitched_user_id is the latest non-null user_id the anonymous_id was ever seen with
-- (see identities), so a browse-then-login journey is one customer.
SELECT
    d.event_id,
    d.event_time,
    d.received_at,
    d.event_type,
    d.user_id,
    i.stitched_user_id,
    d.anonymous_id,
    d.session_id,
    CASE
        WHEN d.session_id IS NOT NULL
            THEN md5(concat(d.anonymous_id, chr(31), 'client', chr(31), d.session_id))
        ELSE md5(concat(d.anonymous_id, chr(31), 'derived', chr(31), s.first_event_id))
    END AS session_key,
    CASE WHEN d.session_id IS NOT NULL THEN 'client' ELSE 'derived' END AS session_source,
    d.product_id,
    d.category,
    d.category_l1,
    d.category_l2,
    d.category_l3,
    d.brand,
    d.price,
    d.quantity,
    d.currency,
    d.order_id,
    d.revenue,
    d.checkout_step,
    d.page_url,
    d.referrer,
    d.device,
    d.country,
    d.email,
    d.ip,
    d.properties,
    d.source_file,
    d.line_number,
    d.batch_id,
    d.ingested_at,
    d.event_date,
    d.segment,
    d._exact_resends,
    d._conflicting_resends
-- The small sides first: hash joins build on their left input and stream the right one, so the
-- wide event stream is never held in memory.
FROM identities i
RIGHT JOIN (
    derived_sessions s
    RIGHT JOIN deduplicated d ON d.event_id = s.event_id
) ON d.anonymous_id = i.anonymous_id
