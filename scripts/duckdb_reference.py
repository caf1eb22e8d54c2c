#!/usr/bin/env python3
"""The DuckDB reference for scripts/bench.sh: the same semantics as clicklake, on the same files,
with DuckDB (`threads=2` unless told otherwise), so the benchmark compares equal work.

    duckdb_reference.py ingest OUT_DIR FILE...   read NDJSON, classify invalid lines with clicklake's
                                                 12 quarantine rules (first failing rule wins),
                                                 normalise, dedup by event_id (earliest received_at,
                                                 then file, line), write date x segment
                                                 partitioned zstd Parquet to OUT_DIR/events and
                                                 the rejected lines to OUT_DIR/quarantine
    duckdb_reference.py simple OUT_DIR FILE...   the issue's quick reference path, for speed only:
                                                 read_ndjson with a fixed schema (unparseable lines
                                                 skipped), drop invalid rows with a few filters,
                                                 normalise, dedup, write the same partitioned
                                                 Parquet; no per-rule classification, no
                                                 quarantine, so its counts are not compared
    duckdb_reference.py build OUT_DIR            from OUT_DIR/events: sessions (client session_id,
                                                 else a new one after a 30 min gap), orders (first
                                                 purchase per order_id), user features, product
                                                 daily metrics per date x product x currency

Options (environment): DUCKDB_THREADS (2), DUCKDB_MEMORY_LIMIT (e.g. 1GB), MAX_FUTURE_SKEW_S (86400).
Prints one JSON object of counts on the last line, for the benchmark to check against clicklake.
"""
import json
import os
import sys

import duckdb

EVENT_TYPES = [
    "page_view", "product_view", "add_to_cart", "remove_from_cart", "cart_view",
    "checkout_started", "checkout_step", "payment_info", "purchase", "search",
    "identify", "list_view", "list_click", "promo_view", "promo_click", "refund",
    "consent_granted", "consent_withdrawn",
]


def connect():
    con = duckdb.connect()
    con.execute(f"SET threads={int(os.environ.get('DUCKDB_THREADS', '2'))}")
    if os.environ.get("DUCKDB_MEMORY_LIMIT"):
        con.execute(f"SET memory_limit='{os.environ['DUCKDB_MEMORY_LIMIT']}'")
    con.execute("SET preserve_insertion_order=true")
    return con


def q(s):
    return "'" + s.replace("'", "''") + "'"


def ingest(out, files):
    con = connect()
    skew = int(os.environ.get("MAX_FUTURE_SKEW_S", "86400"))
    past_skew = int(os.environ.get("MAX_PAST_SKEW_S", str(365 * 86400)))
    types = ", ".join(q(t) for t in EVENT_TYPES)
    file_list = "[" + ", ".join(q(f) for f in files) + "]"
    # One VARCHAR column per physical line (no delimiter or quote can occur: \x1f never does).
    con.execute(f"""
        CREATE TEMP TABLE lines AS
        SELECT filename AS source_file,
               -- Files are read in order, so one running ordinal orders by (file, line) too.
               row_number() OVER () AS ordinal,
               line
        FROM read_csv({file_list}, columns={{'line': 'VARCHAR'}}, header=false, delim='\\x1f',
                      quote='', escape='', filename=true, strict_mode=false,
                      null_padding=false, all_varchar=true)
    """)
    # Absent or null fields, typed JSON values as clicklake sees them.
    fields = ["event_id", "event_time", "received_at", "event_type", "user_id", "anonymous_id",
              "session_id", "product_id", "category", "brand", "price", "quantity", "currency",
              "order_id", "revenue", "checkout_step", "page_url", "referrer", "device", "country",
              "email", "ip"]
    # Each line is parsed once: every field's JSON value comes out of one multi-path extract, then
    # its type and text are read from that small value.
    paths = "[" + ", ".join(q(f"$.{f}") for f in fields) + "]"
    extract = ",\n".join(
        f"v[{i + 1}]->>'$' AS {f}, json_type(v[{i + 1}]) AS t_{f}" for i, f in enumerate(fields))
    con.execute(f"""
        CREATE TEMP VIEW parsed AS
        SELECT source_file, ordinal, line, blank, is_object,
               {extract}
        FROM (
          SELECT source_file, ordinal, line, blank,
                 coalesce(json_type(j) = 'OBJECT', false) AS is_object,
                 CASE WHEN json_type(j) = 'OBJECT' THEN json_extract(j, {paths}) END AS v
          FROM (SELECT *, coalesce(trim(line), '') = '' AS blank,
                       CASE WHEN coalesce(trim(line), '') <> '' AND json_valid(line)
                            THEN line::JSON END AS j FROM lines)
        )
    """)
    num = "('UBIGINT','BIGINT','DOUBLE','HUGEINT')"
    con.execute(f"""
        CREATE TEMP TABLE classified AS
        SELECT *,
          CASE
            WHEN NOT is_object THEN 'broken_json'
            WHEN NOT coalesce((t_event_id = 'VARCHAR' AND trim(event_id) <> '') OR t_event_id IN {num}, false)
              THEN 'missing_event_id'
            WHEN t_event_time IS NULL OR t_event_time = 'NULL'
                 OR (t_event_time = 'VARCHAR' AND trim(event_time) = '') THEN 'missing_event_time'
            WHEN t_event_time <> 'VARCHAR' OR et IS NULL THEN 'bad_timestamp'
            WHEN t_received_at = 'VARCHAR' AND trim(received_at) <> '' AND ra_given IS NULL
              THEN 'bad_timestamp'
            WHEN t_received_at IS NOT NULL AND t_received_at NOT IN ('VARCHAR', 'NULL')
              THEN 'bad_timestamp'
            WHEN NOT coalesce(t_event_type = 'VARCHAR'
                              AND lower(trim(event_type, E' \\t')) IN ({types}), false) THEN 'unknown_event_type'
            WHEN t_price IS NOT NULL AND t_price <> 'NULL' AND t_price NOT IN {num}
              THEN 'price_not_number'
            WHEN t_price IN {num} AND TRY_CAST(price AS DECIMAL(18,2)) < 0 THEN 'negative_price'
            WHEN lower(trim(event_type, E' \\t')) = 'purchase'
                 AND coalesce(trim(order_id), '') = '' THEN 'purchase_without_order_id'
            WHEN et > coalesce(ra_given, now()) + INTERVAL ({skew}) SECOND THEN 'future_event_time'
            WHEN et < ra_given - INTERVAL ({past_skew}) SECOND THEN 'stale_event_time'
            WHEN coalesce(trim(user_id), '') = '' AND coalesce(trim(anonymous_id), '') = ''
              THEN 'missing_anonymous_id'
            WHEN (t_currency = 'VARCHAR' AND trim(currency) <> ''
                  AND NOT regexp_full_match(trim(currency), '[A-Za-z]{{3}}'))
                 OR (t_currency IS NOT NULL AND t_currency NOT IN ('VARCHAR', 'NULL'))
                 OR (t_quantity IS NOT NULL AND t_quantity NOT IN ('UBIGINT', 'BIGINT', 'NULL'))
                 OR (t_checkout_step IS NOT NULL AND t_checkout_step NOT IN ('UBIGINT', 'BIGINT', 'NULL'))
                 OR (t_revenue IS NOT NULL AND t_revenue <> 'NULL' AND t_revenue NOT IN {num})
              THEN 'invalid_field'
          END AS reason
        FROM (
          SELECT *,
                 TRY_CAST(CASE WHEN t_event_time = 'VARCHAR' THEN trim(event_time) END AS TIMESTAMPTZ) AS et,
                 TRY_CAST(CASE WHEN t_received_at = 'VARCHAR' AND trim(received_at) <> ''
                               THEN trim(received_at) END AS TIMESTAMPTZ) AS ra_given
          FROM parsed WHERE NOT blank
        )
    """)
    os.makedirs(out, exist_ok=True)
    con.execute(f"""
        COPY (SELECT reason, source_file,
                     ordinal - (SELECT min(ordinal) FROM lines l WHERE l.source_file = c.source_file) + 1
                       AS line_number,
                     line AS raw, current_date AS ingest_date
              FROM classified c WHERE reason IS NOT NULL)
        TO {q(os.path.join(out, 'quarantine'))}
        (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (ingest_date), OVERWRITE_OR_IGNORE)
    """)
    nul = lambda c: f"nullif(trim({c}), '')"
    con.execute(f"""
        COPY (
          SELECT {nul('event_id')} AS event_id,
                 et AS event_time,
                 coalesce(ra_given, now()) AS received_at,
                 lower(trim(event_type, E' \\t')) AS event_type,
                 {nul('user_id')} AS user_id, {nul('anonymous_id')} AS anonymous_id,
                 {nul('session_id')} AS session_id, {nul('product_id')} AS product_id,
                 {nul('category')} AS category,
                 split_part({nul('category')}, '.', 1) AS category_l1,
                 {nul('brand')} AS brand,
                 TRY_CAST(price AS DECIMAL(18,2)) AS price, TRY_CAST(quantity AS BIGINT) AS quantity,
                 upper({nul('currency')}) AS currency, {nul('order_id')} AS order_id,
                 TRY_CAST(revenue AS DECIMAL(18,2)) AS revenue,
                 TRY_CAST(checkout_step AS BIGINT) AS checkout_step,
                 {nul('page_url')} AS page_url, {nul('referrer')} AS referrer,
                 {nul('device')} AS device, {nul('country')} AS country,
                 source_file, ordinal,
                 CAST(et AT TIME ZONE 'UTC' AS DATE) AS event_date,
                 CASE WHEN {nul('user_id')} IS NULL THEN 'anonymous' ELSE 'unsegmented' END AS segment
          FROM classified WHERE reason IS NULL
          QUALIFY row_number() OVER (PARTITION BY trim(event_id)
                                     ORDER BY coalesce(ra_given, now()), ordinal) = 1
        ) TO {q(os.path.join(out, 'events'))}
        (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (event_date, segment), OVERWRITE_OR_IGNORE)
    """)
    counts = con.execute("""
        SELECT (SELECT count(*) FROM classified), (SELECT count(*) FROM lines) - (SELECT count(*) FROM classified),
               (SELECT count(*) FROM classified WHERE reason IS NULL),
               (SELECT count(*) FROM classified WHERE reason IS NOT NULL)
    """).fetchone()
    by_reason = dict(con.execute(
        "SELECT reason, count(*) FROM classified WHERE reason IS NOT NULL GROUP BY 1 ORDER BY 1"
    ).fetchall())
    events = con.execute(
        f"SELECT count(*) FROM read_parquet({q(os.path.join(out, 'events', '**', '*.parquet'))})"
    ).fetchone()[0]
    print(json.dumps({
        "lines": counts[0] + counts[1], "blank_lines": counts[1], "landed": counts[2],
        "quarantined": counts[3], "quarantined_by_reason": by_reason, "events_rows": events,
    }))


def simple(out, files):
    con = connect()
    types = ", ".join(q(t) for t in EVENT_TYPES)
    file_list = "[" + ", ".join(q(f) for f in files) + "]"
    text = ["event_id", "event_time", "received_at", "event_type", "user_id", "anonymous_id",
            "session_id", "product_id", "category", "brand", "currency", "order_id", "page_url",
            "referrer", "device", "country", "email", "ip"]
    columns = {c: "VARCHAR" for c in text}
    columns.update(price="DOUBLE", quantity="BIGINT", revenue="DOUBLE", checkout_step="BIGINT")
    spec = "{" + ", ".join(f"{q(k)}: {q(v)}" for k, v in columns.items()) + "}"
    nul = lambda c: f"nullif(trim({c}), '')"
    os.makedirs(out, exist_ok=True)
    con.execute(f"""
        COPY (
          SELECT {nul('event_id')} AS event_id, et AS event_time,
                 coalesce(TRY_CAST(received_at AS TIMESTAMPTZ), now()) AS received_at,
                 lower(trim(event_type)) AS event_type,
                 {nul('user_id')} AS user_id, {nul('anonymous_id')} AS anonymous_id,
                 {nul('session_id')} AS session_id, {nul('product_id')} AS product_id,
                 {nul('category')} AS category, {nul('brand')} AS brand,
                 CAST(price AS DECIMAL(18,2)) AS price, quantity,
                 upper({nul('currency')}) AS currency, {nul('order_id')} AS order_id,
                 CAST(revenue AS DECIMAL(18,2)) AS revenue, checkout_step,
                 {nul('page_url')} AS page_url, {nul('referrer')} AS referrer,
                 {nul('device')} AS device, {nul('country')} AS country,
                 CAST(et AT TIME ZONE 'UTC' AS DATE) AS event_date,
                 CASE WHEN {nul('user_id')} IS NULL THEN 'anonymous' ELSE 'unsegmented' END AS segment
          FROM (SELECT *, TRY_CAST(event_time AS TIMESTAMPTZ) AS et
                FROM read_ndjson({file_list}, columns={spec}, ignore_errors=true))
          WHERE {nul('event_id')} IS NOT NULL AND et IS NOT NULL
            AND lower(trim(event_type)) IN ({types})
            AND coalesce(price, 0) >= 0
            AND coalesce({nul('user_id')}, {nul('anonymous_id')}) IS NOT NULL
            AND (lower(trim(event_type)) <> 'purchase' OR {nul('order_id')} IS NOT NULL)
          QUALIFY row_number() OVER (PARTITION BY trim(event_id)
                                     ORDER BY TRY_CAST(received_at AS TIMESTAMPTZ)) = 1
        ) TO {q(os.path.join(out, 'events'))}
        (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (event_date, segment), OVERWRITE_OR_IGNORE)
    """)
    events = con.execute(
        f"SELECT count(*) FROM read_parquet({q(os.path.join(out, 'events', '**', '*.parquet'))})"
    ).fetchone()[0]
    print(json.dumps({"simple_events_rows": events}))


def build(out):
    con = connect()
    src = q(os.path.join(out, "events", "**", "*.parquet"))
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet({src}, hive_partitioning=true)")
    # Sessions: the client's session_id, else a new derived session after a 30 minute gap.
    con.execute("""
        CREATE TEMP TABLE sessions AS
        WITH keyed AS (
          SELECT *, CASE WHEN session_id IS NOT NULL THEN 'c:' || session_id
                         ELSE 'd:' || sum(new_session) OVER (PARTITION BY anonymous_id ORDER BY event_time, event_id
                                                             ROWS UNBOUNDED PRECEDING) END AS sess
          FROM (
            SELECT *, CASE WHEN session_id IS NULL AND (prev IS NULL OR event_time - prev > INTERVAL 30 MINUTE)
                           THEN 1 ELSE 0 END AS new_session
            FROM (
              SELECT *, lag(event_time) OVER (PARTITION BY anonymous_id, session_id IS NULL
                                              ORDER BY event_time, event_id) AS prev
              FROM events
            )
          )
        )
        SELECT anonymous_id, sess, min(event_time) AS started_at, max(event_time) AS ended_at,
               count(*) AS events, max(user_id) AS user_id,
               bool_or(event_type = 'add_to_cart') AS with_cart,
               bool_or(event_type IN ('checkout_started', 'checkout_step', 'payment_info', 'purchase')) AS checkout,
               bool_or(event_type = 'purchase') AS purchased
        FROM keyed GROUP BY 1, 2
    """)
    # A customer: the latest user_id an anonymous_id is seen with, else the anonymous_id.
    con.execute("""
        CREATE TEMP TABLE customer AS
        SELECT anonymous_id,
               coalesce(arg_max(user_id, event_time) FILTER (WHERE user_id IS NOT NULL), anonymous_id) AS user_key
        FROM events GROUP BY 1
    """)
    con.execute("""
        CREATE TEMP TABLE orders AS
        SELECT e.order_id, c.user_key, e.event_time AS ordered_at, e.revenue, e.currency
        FROM events e JOIN customer c USING (anonymous_id)
        WHERE e.event_type = 'purchase'
        QUALIFY row_number() OVER (PARTITION BY e.order_id ORDER BY e.event_time, e.event_id) = 1
    """)
    con.execute("""
        CREATE TEMP TABLE user_features AS
        WITH s AS (
          SELECT c.user_key, count(*) AS sessions_lifetime, sum(s.events) AS events_lifetime,
                 count(*) FILTER (WHERE s.with_cart AND NOT s.purchased) AS carts_abandoned,
                 max(s.ended_at) AS last_seen_at
          FROM sessions s JOIN customer c USING (anonymous_id) GROUP BY 1
        ), o AS (
          SELECT user_key, count(*) AS orders_lifetime, max(ordered_at) AS last_purchase_at
          FROM orders GROUP BY 1
        )
        SELECT s.*, coalesce(o.orders_lifetime, 0) AS orders_lifetime, o.last_purchase_at
        FROM s LEFT JOIN o USING (user_key)
    """)
    con.execute("""
        CREATE TEMP TABLE product_daily AS
        SELECT event_date, product_id, currency,
               count(*) FILTER (WHERE event_type = 'product_view') AS views,
               count(*) FILTER (WHERE event_type = 'add_to_cart') AS adds,
               count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
               sum(price) FILTER (WHERE event_type = 'purchase') AS purchase_value
        FROM events WHERE product_id IS NOT NULL GROUP BY 1, 2, 3
    """)
    for t in ["sessions", "orders", "user_features", "product_daily"]:
        con.execute(f"COPY {t} TO {q(os.path.join(out, t + '.parquet'))} (FORMAT parquet, COMPRESSION zstd)")
    counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ["sessions", "orders", "user_features", "product_daily"]}
    counts["revenue_by_currency"] = {
        c: str(r) for c, r in con.execute(
            "SELECT currency, sum(revenue) FROM orders GROUP BY 1 ORDER BY 1").fetchall()}
    print(json.dumps(counts))


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("ingest", "simple", "build"):
        sys.exit(__doc__)
    if sys.argv[1] == "ingest":
        ingest(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "simple":
        simple(sys.argv[2], sys.argv[3:])
    else:
        build(sys.argv[2])
