//! `clicklake build` and `clicklake check`: star counts against the generator's bookkeeping,
//! incremental == full rebuild, segment history, golden fact rows, configuration errors.

use std::path::Path;

use crate::both_backends;
use crate::context::{
    manifest_lines, ndjson_files, one_line_failure, stderr_of, Backend, TestContext,
};

fn build_json(ctx: &TestContext, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["build", "--json"];
    all.extend_from_slice(args);
    let out = ctx.ok(&all);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("build json: {e}: {out}"))
}

/// One table's entry in a `build --json` summary.
fn table_of<'a>(summary: &'a serde_json::Value, table: &str) -> &'a serde_json::Value {
    summary["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == table)
        .unwrap_or_else(|| panic!("{table} not in {summary}"))
}

fn table_mode<'a>(summary: &'a serde_json::Value, table: &str) -> &'a str {
    table_of(summary, table)["mode"].as_str().unwrap()
}

/// A build with an edited star model (`from` replaced by `to` in `file`) that must be refused
/// before anything is written: exit 2 and one line. Returns that line.
fn refused_edit(ctx: &TestContext, file: &str, from: &str, to: &str) -> String {
    let sql_dir = ctx.override_edited_model("star", file, from, to);
    let out = ctx.run(&["build", "--sql-dir", &sql_dir]);
    one_line_failure(&out, 2, &[file])
}

fn pipeline(ctx: &TestContext, input: &str) {
    ctx.ingest_json(&[input]);
    ctx.ok(&["clean", "-q"]);
}

#[test]
fn star_counts_match_the_generators_bookkeeping() {
    let ctx = TestContext::new(Backend::Local);
    let m = ctx.generate(
        "gen",
        &[
            "--events", "20000", "--files", "4", "--dirty", "--seed", "7",
        ],
    );
    pipeline(&ctx, ctx.path("gen").to_str().unwrap());
    let s = build_json(&ctx, &[]);
    assert_eq!(s["mode"], "built");
    assert_eq!(table_mode(&s, "fact_sessions"), "full");

    let n = |sql: &str| ctx.count(sql);
    assert_eq!(n("SELECT count(*) FROM fact_sessions"), m["sessions"]);
    assert_eq!(
        n("SELECT count(*) FROM fact_sessions WHERE adds > 0"),
        m["sessions_with_add_to_cart"]
    );
    assert_eq!(
        n("SELECT count(*) FROM fact_checkout_funnel"),
        m["sessions_with_add_to_cart"]
    );
    assert_eq!(
        n("SELECT count(*) FROM fact_sessions WHERE cart_abandoned"),
        m["sessions_with_add_to_cart"].as_u64().unwrap()
            - m["sessions_with_purchase"].as_u64().unwrap()
    );
    assert_eq!(
        n("SELECT count(*) FROM fact_sessions WHERE checkout_started"),
        m["sessions_reaching_checkout"]
    );
    assert_eq!(
        n("SELECT count(*) FROM fact_sessions WHERE payment_info"),
        m["sessions_with_payment_info"]
    );
    assert_eq!(
        n("SELECT count(*) FROM fact_sessions WHERE purchased"),
        m["sessions_with_purchase"]
    );
    assert_eq!(
        n("SELECT count(*) FROM fact_checkout_funnel WHERE furthest_stage = 'purchase'"),
        m["sessions_with_purchase"]
    );
    assert_eq!(n("SELECT count(*) FROM fact_orders"), m["orders"]);
    assert_eq!(
        n("SELECT coalesce(sum(orders), 0) FROM fact_sessions"),
        m["orders"]
    );
    assert_eq!(
        n("SELECT sum(sessions) FROM agg_funnel_daily"),
        m["sessions"]
    );
    let revenue = ctx.query(
        "SELECT currency, CAST(sum(revenue) * 100 AS BIGINT) FROM fact_orders \
         GROUP BY currency ORDER BY currency",
    );
    assert_eq!(revenue, manifest_lines(&m, "revenue_cents_by_currency"));
    assert_eq!(
        n("SELECT count(*) FROM agg_user_features WHERE orders_lifetime >= 2"),
        m["repeat_buyers"]
    );
    assert_eq!(
        n("SELECT count(*) FROM dim_user WHERE is_registered"),
        m["registered_users"]
    );
    // Every customer with features is in dim_user and has a primary segment only if in one.
    assert_eq!(
        n(
            "SELECT count(*) FROM dim_user d LEFT JOIN user_segments s ON s.user_key = d.user_key \
           WHERE d.primary_segment IS NOT NULL AND s.user_key IS NULL"
        ),
        0
    );

    let out = ctx.run(&["check"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr_of(&out)
    );
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        report.contains("PASS  fact_orders_revenue_matches_events"),
        "{report}"
    );
    assert!(report.contains(" 0 failed, 0 skipped"), "{report}");

    // Nothing changed: nothing to do.
    let again = build_json(&ctx, &[]);
    assert_eq!(again["mode"], "up_to_date", "{again}");

    // A cron tick of resends only: clean commits, but no events row changes, so the star
    // tables are still current.
    let first = std::fs::read_to_string(ctx.path("gen/events-0001.ndjson")).unwrap();
    let resend = ctx.path("resend.ndjson");
    std::fs::write(
        &resend,
        first.lines().take(20).collect::<Vec<_>>().join("\n"),
    )
    .unwrap();
    ctx.ingest_json(&[resend.to_str().unwrap()]);
    ctx.ok(&["clean", "-q"]);
    let after_resends = build_json(&ctx, &[]);
    assert_eq!(after_resends["mode"], "up_to_date", "{after_resends}");

    // The segments of the build decide where a registered user's next rows land.
    let segmented = n(
        "SELECT count(*) FROM dim_user WHERE user_id IS NOT NULL AND primary_segment IS NOT NULL",
    );
    assert!(segmented > 0);
    let late = ctx.path("late.ndjson");
    let user: String = ctx.query(
        "SELECT user_id || '|' || primary_segment FROM dim_user \
         WHERE user_id IS NOT NULL AND primary_segment IS NOT NULL ORDER BY user_id LIMIT 1",
    )[0]
    .clone();
    let (user_id, segment) = user.split_once('|').unwrap();
    std::fs::write(
        &late,
        format!(
            "{{\"event_id\":\"late-1\",\"event_time\":\"2026-01-05T10:00:00Z\",\"event_type\":\"page_view\",\
             \"anonymous_id\":\"a-late\",\"user_id\":\"{user_id}\"}}\n"
        ),
    )
    .unwrap();
    ctx.ingest_json(&[late.to_str().unwrap()]);
    assert_eq!(
        ctx.query("SELECT segment FROM raw_events WHERE event_id = 'late-1'"),
        [segment.to_string()]
    );
}

/// Every star table whose rows do not depend on the history of builds, rendered sorted.
fn dump_star(ctx: &TestContext) -> Vec<(String, Vec<String>)> {
    [
        ("dim_date", "date_key"),
        ("dim_product", "product_id"),
        ("fact_sessions", "session_key"),
        ("fact_cart_lines", "session_key, product_key"),
        ("fact_checkout_funnel", "session_key"),
        ("fact_orders", "order_id"),
        ("agg_product_daily", "event_date, product_key, currency"),
        ("agg_funnel_daily", "date_key, segment, device"),
        ("agg_user_interest", "user_key"),
        ("agg_user_features", "user_key"),
    ]
    .iter()
    .map(|(t, order)| {
        (
            t.to_string(),
            ctx.query(&format!("SELECT * FROM {t} ORDER BY {order}")),
        )
    })
    .collect()
}

both_backends!(incremental_build_equals_full_rebuild, |backend: Backend| {
    let ctx = TestContext::new(backend);
    ctx.generate(
        "gen",
        &[
            "--events", "3000", "--files", "8", "--dirty", "--seed", "11", "--days", "3",
        ],
    );
    let mut files: Vec<String> = std::fs::read_dir(ctx.path("gen"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    // Late files first, so resends and late events arrive before and after what they repeat.
    let order = [5usize, 1, 7, 0, 3, 6, 2, 4];
    let mut incremental_runs = 0;
    let (mut files_patched, mut rows_copied) = (0, 0);
    for pair in order.chunks(3) {
        let batch: Vec<&str> = pair.iter().map(|i| files[*i].as_str()).collect();
        ctx.ingest_json(&batch);
        ctx.ok(&["clean", "-q"]);
        let s = build_json(&ctx, &[]);
        for t in s["tables"].as_array().unwrap() {
            files_patched += t["files_patched"].as_u64().unwrap_or(0);
            rows_copied += t["rows_copied"].as_u64().unwrap_or(0);
        }
        if table_mode(&s, "fact_sessions") == "incremental" {
            incremental_runs += 1;
            // Customers' favourites too, keyed by the customers whose events changed.
            assert_eq!(table_mode(&s, "agg_user_interest"), "incremental", "{s}");
        }
    }
    assert_eq!(
        incremental_runs, 2,
        "every build after the first is incremental"
    );
    // Both ways of replacing changed rows ran: files patched and files rewritten.
    assert!(
        files_patched > 0 && rows_copied > 0,
        "{files_patched} {rows_copied}"
    );
    let incremental = dump_star(&ctx);
    let s = build_json(&ctx, &["--full-refresh"]);
    assert_eq!(table_mode(&s, "fact_sessions"), "full");
    let full = dump_star(&ctx);
    for ((table, a), (_, b)) in incremental.iter().zip(&full) {
        assert!(!b.is_empty(), "{table} is empty");
        assert_eq!(a.len(), b.len(), "{table}: row counts differ");
        assert!(
            a == b,
            "{table}: incremental rows differ from a full rebuild"
        );
    }
    assert_eq!(ctx.run(&["check", "-q"]).status.code(), Some(0));
});

#[test]
fn a_segment_change_closes_a_history_row_and_opens_another() {
    let ctx = TestContext::new(Backend::Local);
    ctx.write_config(
        r#"
[[segments]]
name = "active"
kind = "dynamic"
rule = "sessions_30d >= 1"
priority = 1
[[segments]]
name = "lapsed"
kind = "dynamic"
rule = "sessions_30d = 0"
priority = 2
"#,
    );
    let fixture = ctx.fixture("star/sessions.ndjson");
    pipeline(&ctx, fixture.to_str().unwrap());
    build_json(&ctx, &["--as-of", "2026-03-05T00:00:00Z"]);
    let history = "SELECT user_key IS NOT NULL, segment, valid_from, valid_to \
                   FROM user_segment_history ORDER BY segment, valid_from, user_key";
    assert_eq!(
        ctx.query(history),
        [
            "true,active,2026-03-05T00:00:00Z,",
            "true,active,2026-03-05T00:00:00Z,",
            "true,active,2026-03-05T00:00:00Z,",
        ]
    );
    // Sixty days on, nobody has a session in the last 30 days: all three lapse.
    build_json(&ctx, &["--as-of", "2026-05-04T00:00:00Z"]);
    assert_eq!(
        ctx.query(history),
        [
            "true,active,2026-03-05T00:00:00Z,2026-05-04T00:00:00Z",
            "true,active,2026-03-05T00:00:00Z,2026-05-04T00:00:00Z",
            "true,active,2026-03-05T00:00:00Z,2026-05-04T00:00:00Z",
            "true,lapsed,2026-05-04T00:00:00Z,",
            "true,lapsed,2026-05-04T00:00:00Z,",
            "true,lapsed,2026-05-04T00:00:00Z,",
        ]
    );
    // Who was active on 1 April: one query.
    assert_eq!(
        ctx.count(
            "SELECT count(*) FROM user_segment_history WHERE segment = 'active' \
             AND valid_from <= TIMESTAMP '2026-04-01T00:00:00Z' \
             AND (valid_to IS NULL OR valid_to > TIMESTAMP '2026-04-01T00:00:00Z')"
        ),
        3
    );
    assert_eq!(
        ctx.query("SELECT DISTINCT primary_segment FROM dim_user"),
        ["lapsed"]
    );
}

/// The golden rows of every fact table for the hand-made sessions of `fixtures/star/`.
/// `CLICKLAKE_BLESS=1` rewrites the golden files (review the diff before committing).
#[test]
fn golden_fact_rows_for_hand_made_sessions() {
    let ctx = TestContext::new(Backend::Local);
    let fixture = ctx.fixture("star/sessions.ndjson");
    pipeline(&ctx, fixture.to_str().unwrap());
    build_json(&ctx, &[]);
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/star");
    let tables = [
        (
            "fact_sessions",
            "SELECT anonymous_id, user_id, date_key, started_at, ended_at, duration_s, events, \
             page_views, product_views, searches, adds, removes, checkout_started, \
             max_checkout_step, payment_info, purchased, orders, revenue, currency, \
             cart_abandoned, device, country, landing_page, referrer, segment \
             FROM fact_sessions ORDER BY started_at",
        ),
        (
            "fact_cart_lines",
            "SELECT s.anonymous_id, c.product_id, qty_added, qty_removed, net_qty, value_added, \
             c.currency, first_added_at, last_changed_at, c.purchased \
             FROM fact_cart_lines c JOIN fact_sessions s ON s.session_key = c.session_key \
             ORDER BY s.started_at, c.product_id",
        ),
        (
            "fact_checkout_funnel",
            "SELECT s.anonymous_id, reached_cart_at, checkout_started_at, step_1_at, step_2_at, \
             step_3_at, payment_info_at, purchased_at, furthest_stage, abandoned_stage \
             FROM fact_checkout_funnel f JOIN fact_sessions s ON s.session_key = f.session_key \
             ORDER BY s.started_at",
        ),
        (
            "fact_orders",
            "SELECT order_id, o.date_key, ordered_at, o.revenue, o.currency, lines, items, \
             s.anonymous_id, o.user_key = s.user_key AS same_customer \
             FROM fact_orders o JOIN fact_sessions s ON s.session_key = o.session_key \
             ORDER BY order_id",
        ),
        (
            "dim_product",
            "SELECT product_id, category, category_l1, category_l2, category_l3, brand, \
             first_seen_at, last_price, last_currency FROM dim_product ORDER BY product_id",
        ),
        (
            "dim_user",
            "SELECT user_id, anonymous_id, first_seen_at, last_seen_at, first_country, \
             last_device, is_registered, primary_segment FROM dim_user \
             ORDER BY first_seen_at",
        ),
        (
            "agg_user_features",
            "SELECT d.anonymous_id, d.user_id, orders_lifetime, currency, revenue_lifetime, \
             average_order_value, last_purchase_at, days_since_last_purchase, \
             sessions_lifetime, sessions_30d, product_views_30d, carts_abandoned_30d, \
             last_cart_abandoned_at, cart_abandonment_rate, favourite_category, \
             favourite_brand, preferred_device \
             FROM agg_user_features f JOIN dim_user d ON d.user_key = f.user_key \
             ORDER BY d.first_seen_at",
        ),
    ];
    let bless = std::env::var("CLICKLAKE_BLESS").is_ok();
    for (table, sql) in tables {
        let out = ctx.ok(&["sql", "--format", "csv", "-c", sql]);
        let path = golden.join(format!("{table}.csv"));
        if bless {
            std::fs::create_dir_all(&golden).unwrap();
            std::fs::write(&path, &out).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (CLICKLAKE_BLESS=1 writes it)", path.display()));
        assert_eq!(out, expected, "{table} differs from {}", path.display());
    }
}

#[test]
fn a_bad_segment_rule_is_a_config_error_before_anything_is_written() {
    let ctx = TestContext::new(Backend::Local);
    let fixture = ctx.fixture("star/sessions.ndjson");
    pipeline(&ctx, fixture.to_str().unwrap());
    for (rule, expect) in [
        ("no_such_feature > 1", "no_such_feature"),
        ("orders_lifetime >= 1) OR (1 = 1", "unexpected"),
    ] {
        ctx.write_config(format!(
            "[[segments]]\nname = \"broken\"\nrule = \"{rule}\"\n"
        ));
        let out = ctx.run(&["build"]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
        let err = stderr_of(&out);
        assert!(
            err.contains("segment broken") && err.contains(expect),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let tables: serde_json::Value = serde_json::from_str(&ctx.ok(&["tables", "--json"])).unwrap();
    for t in tables.as_array().unwrap() {
        if t["name"] == "dim_date" || t["name"] == "fact_sessions" {
            assert_eq!(t["exists"], false, "{t}");
        }
    }
}

#[test]
fn a_failing_user_check_exits_1_with_its_rows() {
    let ctx = TestContext::new(Backend::Local);
    let fixture = ctx.fixture("star/sessions.ndjson");
    pipeline(&ctx, fixture.to_str().unwrap());
    // Before build: the star checks are skipped, the events checks pass.
    let out = ctx.run(&["check", "--junit", "before.xml"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SKIP  unique(fact_sessions.session_key)")
    );
    let cases = crate::context::junit_cases(&ctx.path("before.xml"));
    assert!(cases
        .iter()
        .any(|c| c.0 == "unique(fact_sessions.session_key)" && c.1 == "skipped"));
    assert!(cases
        .iter()
        .any(|c| c.0 == "events_unique_event_id" && c.1 == "pass"));
    ctx.ok(&["build", "-q"]);
    ctx.write_check(
        "no_gbp_orders.sql",
        "SELECT session_key FROM fact_sessions WHERE currency = 'GBP' OR cart_abandoned",
    );
    ctx.write_check(
        "orders_have_items.sql",
        "SELECT order_id FROM fact_orders WHERE items < 1",
    );
    let out = ctx.run(&["check", "--checks-dir", "checks"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("FAIL  no_gbp_orders: 1 offending row(s)"),
        "{report}"
    );
    assert!(report.contains("PASS  orders_have_items"), "{report}");
    let with_junit = [
        "check",
        "--checks-dir",
        "checks",
        "--json",
        "--junit",
        "reports/checks.xml",
    ];
    let out = ctx.run(&with_junit);
    assert_eq!(out.status.code(), Some(2), "the directory does not exist");
    assert!(stderr_of(&out).contains("--junit"), "{}", stderr_of(&out));
    std::fs::create_dir_all(ctx.path("reports")).unwrap();
    let out = ctx.run(&with_junit);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["failed"], 1);
    // The JUnit report has every check as a test case and the failure with its rows and query.
    let cases = crate::context::junit_cases(&ctx.path("reports/checks.xml"));
    assert_eq!(cases.len(), json["checks"].as_array().unwrap().len());
    let failed: Vec<_> = cases.iter().filter(|c| c.1 == "failure").collect();
    assert_eq!(failed.len(), 1, "{cases:?}");
    assert_eq!(failed[0].0, "no_gbp_orders");
    assert!(
        failed[0].2.contains("1 offending row(s)")
            && failed[0].2.contains("currency = 'GBP' OR cart_abandoned"),
        "{:?}",
        failed[0]
    );
    assert!(cases
        .iter()
        .any(|c| c.0 == "orders_have_items" && c.1 == "pass"));
    // A check that does not plan is a configuration error naming its file.
    ctx.write_check("typo.sql", "SELEC 1");
    let out = ctx.run(&["check", "--checks-dir", "checks"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("typo.sql"), "{}", stderr_of(&out));
}

#[test]
fn a_pass_is_reused_until_its_query_or_a_table_it_reads_changes() {
    let ctx = TestContext::new(Backend::Local);
    let fixture = ctx.fixture("star/sessions.ndjson");
    pipeline(&ctx, fixture.to_str().unwrap());
    ctx.ok(&["build", "-q"]);
    // Passes, but asks the clock: never reused.
    ctx.write_check(
        "not_in_the_future.sql",
        "SELECT session_key FROM fact_sessions WHERE started_at > now()",
    );
    // Warns on every session: a result with offending rows is never reused.
    ctx.write_check(
        "every_session.sql",
        "-- severity: warn\nSELECT session_key FROM fact_sessions",
    );
    let report = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["check", "--json", "--checks-dir", "checks"];
        all.extend_from_slice(args);
        serde_json::from_str(&ctx.ok(&all)).unwrap()
    };
    let reused = |json: &serde_json::Value| -> Vec<String> {
        let checks = json["checks"].as_array().unwrap().iter();
        checks
            .filter(|c| c.get("unchanged_since").is_some())
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    let first = report(&[]);
    assert_eq!(first["unchanged"], 0, "{first}");
    assert!(reused(&first).is_empty(), "{first}");
    let passed = first["passed"].as_u64().unwrap();
    assert_eq!(first["warned"], 1, "{first}");

    // Nothing changed: every pass but the clock's is reused, with no time spent on it.
    let second = report(&[]);
    assert_eq!(
        (&second["passed"], &second["warned"]),
        (&passed.into(), &1.into())
    );
    let again = reused(&second);
    assert_eq!(again.len() as u64, passed - 1, "{second}");
    assert_eq!(second["unchanged"], passed - 1);
    assert!(!again
        .iter()
        .any(|n| n == "not_in_the_future" || n == "every_session"));
    for c in second["checks"].as_array().unwrap() {
        if c.get("unchanged_since").is_some() {
            assert_eq!(
                (&c["status"], &c["seconds"]),
                (&"pass".into(), &0.0.into()),
                "{c}"
            );
        }
    }
    let text = ctx.ok(&["check", "--checks-dir", "checks"]);
    assert!(
        text.contains("PASS  events_unique_event_id (unchanged since "),
        "{text}"
    );

    // A rebuilt star schema: the checks over its tables run again, those over events only do not.
    ctx.ok(&["build", "--full-refresh", "-q"]);
    let rebuilt = reused(&report(&[]));
    assert!(
        rebuilt.iter().any(|n| n == "events_unique_event_id"),
        "{rebuilt:?}"
    );
    assert!(
        rebuilt.iter().all(|n| !n.contains("fact_sessions")),
        "{rebuilt:?}"
    );
    // An edited query runs again.
    let revenue_check_reused = |bound: &str| {
        ctx.write_check(
            "no_negative_revenue.sql",
            &format!("SELECT order_id FROM fact_orders WHERE revenue < {bound}"),
        );
        reused(&report(&[]))
            .iter()
            .any(|n| n == "no_negative_revenue")
    };
    assert!(!revenue_check_reused("0"));
    assert!(revenue_check_reused("0"));
    assert!(!revenue_check_reused("-1"));
    // --no-reuse runs everything, and the record survives it.
    let forced = report(&["--no-reuse"]);
    assert_eq!(forced["unchanged"], 0, "{forced}");
    assert!(!reused(&report(&[])).is_empty());
    // A cron tick with nothing new says how many of its checks were reused.
    let tick = ctx.ok(&["run"]);
    assert!(
        tick.lines()
            .any(|l| l.trim_start().starts_with("check") && l.contains(" unchanged)")),
        "{tick}"
    );
}

#[test]
fn a_check_that_only_warns_is_reported_and_does_not_fail_check_or_run() {
    let ctx = TestContext::new(Backend::Local);
    let inbox = ctx.path("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::copy(
        ctx.fixture("star/sessions.ndjson"),
        inbox.join("sessions.ndjson"),
    )
    .unwrap();
    let write = |name: &str, sql: &str| ctx.write_check(name, sql);
    // dbt's thresholds on the number of offending rows: two rows warn, three would fail.
    write(
        "rows.sql",
        "-- warn_if: > 1\n-- error_if: > 2\nSELECT x FROM (VALUES (1), (2)) t(x)",
    );
    write(
        "abandoned.sql",
        "-- severity: warn\nSELECT session_key FROM fact_sessions WHERE cart_abandoned",
    );
    // Fails on its own; `[check] warn` makes it a warning.
    write(
        "gbp.sql",
        "SELECT session_key FROM fact_sessions WHERE currency = 'GBP' OR cart_abandoned",
    );
    // Under both thresholds, offending rows pass (error_if alone defaults to `!= 0`).
    write(
        "quiet.sql",
        "-- warn_if: > 5\n-- error_if: > 10\nSELECT 1 AS x",
    );
    ctx.write_config("[check]\ndir = \"checks\"\nwarn = [\"gbp\"]\n");
    let out = ctx.run(&["run", "--inbox", inbox.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains(" 3 warned, 0 failed, 0 skipped"),
        "{summary}"
    );
    assert!(
        summary.contains("WARN  abandoned: 1 offending row(s)"),
        "{summary}"
    );
    assert!(
        !summary.contains("PASS  "),
        "run lists only what is flagged: {summary}"
    );
    assert_eq!(
        ctx.query("SELECT outcome FROM _runs"),
        ["success"],
        "warnings are not a failed run"
    );

    let out = ctx.run(&["check", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&json["warned"], &json["failed"]), (&3.into(), &0.into()));
    // Every check that ran says how long it took; none took longer than the whole run.
    let total = json["seconds"].as_f64().unwrap();
    for c in json["checks"].as_array().unwrap() {
        let secs = c["seconds"].as_f64().unwrap_or_else(|| panic!("{c}"));
        assert!((0.0..=total).contains(&secs), "{c}");
    }
    assert!(
        json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["seconds"].as_f64().unwrap() > 0.0),
        "{json}"
    );
    let status_of = |name: &str| {
        let c = json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {json}"));
        (c["status"].clone(), c["severity"].clone())
    };
    assert_eq!(status_of("rows"), ("warn".into(), "error".into()));
    let rows = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "rows");
    assert_eq!(rows.unwrap()["threshold"], "warn_if > 1");
    assert_eq!(status_of("abandoned"), ("warn".into(), "warn".into()));
    assert_eq!(status_of("gbp"), ("warn".into(), "warn".into()));
    assert_eq!(status_of("quiet"), ("pass".into(), "error".into()));

    // Past error_if, the same check fails.
    write(
        "rows.sql",
        "-- warn_if: > 1\n-- error_if: > 2\nSELECT x FROM (VALUES (1), (2), (3)) t(x)",
    );
    let out = ctx.run(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("FAIL  rows: 3 offending row(s) (error_if > 2)"),
        "{report}"
    );
    assert!(report.contains(" 2 warned, 1 failed, "), "{report}");

    // Bad severities, thresholds and names are configuration errors naming what is wrong.
    write("rows.sql", "-- severity: fatal\nSELECT 1");
    one_line_failure(&ctx.run(&["check"]), 2, &["rows.sql", "severity: fatal"]);
    write("rows.sql", "-- error_if: more than 3\nSELECT 1");
    one_line_failure(&ctx.run(&["check"]), 2, &["rows.sql", "error_if"]);
    write("rows.sql", "SELECT 1 WHERE false");
    ctx.write_config("[check]\ndir = \"checks\"\nwarn = [\"gpb\"]\n");
    one_line_failure(&ctx.run(&["check"]), 2, &["[check] warn", "\"gpb\""]);
}

#[test]
fn a_build_killed_between_tables_finishes_on_the_next_run() {
    let ctx = TestContext::new(Backend::Local);
    ctx.generate(
        "gen",
        &[
            "--events", "3000", "--files", "2", "--dirty", "--seed", "21", "--days", "2",
        ],
    );
    pipeline(&ctx, ctx.path("gen/events-0001.ndjson").to_str().unwrap());
    build_json(&ctx, &[]);
    pipeline(&ctx, ctx.path("gen/events-0002.ndjson").to_str().unwrap());
    let before = dump_star(&ctx);

    // Killed after agg_user_features committed: the tables it reads were committed before it
    // started (fact_sessions among them); the ones reading it had not started.
    for point in [
        "build-after-data-files",
        "build-after-commit-agg_user_features",
    ] {
        let out = ctx
            .cmd()
            .env("CLICKLAKE_FAULT", point)
            .args(["build"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{point} must abort");
    }
    assert_ne!(dump_star(&ctx), before, "the first tables were committed");
    let s = build_json(&ctx, &[]);
    assert_eq!(table_mode(&s, "fact_sessions"), "up_to_date", "{s}");
    assert_eq!(table_mode(&s, "agg_user_features"), "up_to_date", "{s}");
    assert_ne!(table_mode(&s, "user_segments"), "up_to_date", "{s}");
    assert_ne!(table_mode(&s, "dim_user"), "up_to_date", "{s}");
    let resumed = dump_star(&ctx);
    build_json(&ctx, &["--full-refresh"]);
    assert!(
        resumed == dump_star(&ctx),
        "a resumed build equals a full rebuild"
    );
    assert_eq!(ctx.run(&["check", "-q"]).status.code(), Some(0));
}

#[test]
fn a_model_failing_as_it_runs_stops_the_build_and_the_fixed_model_finishes_it() {
    // fact_orders fails on its data (a cast no plan can foresee). Tables build side by side:
    // the ones already running finish and commit, none reading fact_orders starts, the exit is
    // a runtime failure naming the model file, and the fixed model's build completes the rest.
    let ctx = TestContext::new(Backend::Local);
    ctx.generate("gen", &["--events", "3000", "--files", "1", "--seed", "21"]);
    pipeline(&ctx, &ndjson_files(&ctx.path("gen"))[0]);
    let sql_dir = ctx.override_edited_model(
        "star",
        "07_fact_orders.sql",
        "    lines,\n",
        "    CAST(order_id AS INT) AS lines,\n",
    );
    let out = ctx.run(&["build", "--sql-dir", &sql_dir]);
    one_line_failure(&out, 3, &["07_fact_orders.sql"]);
    // fact_sessions started before fact_orders (more tables wait on it) and was committed.
    assert!(ctx.count("SELECT count(*) FROM fact_sessions") > 0);
    for reader in ["agg_user_features", "user_segments", "dim_user"] {
        let out = ctx.run(&["sql", "-c", &format!("SELECT count(*) FROM {reader}")]);
        assert_eq!(out.status.code(), Some(2), "{reader} was built");
    }

    let s = build_json(&ctx, &[]);
    assert_eq!(table_mode(&s, "fact_sessions"), "up_to_date", "{s}");
    assert_eq!(table_mode(&s, "dim_user"), "full", "{s}");
    assert!(ctx.count("SELECT count(*) FROM fact_orders") > 0);
    assert_eq!(ctx.run(&["check", "-q"]).status.code(), Some(0));
}

#[test]
fn a_changed_model_rebuilds_its_incremental_table_in_full() {
    // fact_orders is incremental by order_id: a build after new data recomputes only the changed
    // orders. When its model changed, the orders it would keep were computed the old way, so it
    // is rebuilt in full; so is a table whose logic did not change, when nothing new arrived.
    let ctx = TestContext::new(Backend::Local);
    ctx.generate("gen", &["--events", "4000", "--files", "3", "--seed", "21"]);
    let files = ndjson_files(&ctx.path("gen"));
    pipeline(&ctx, &files[0]);
    pipeline(&ctx, &files[1]);
    build_json(&ctx, &[]);
    let zero_items = "SELECT count(*) FROM fact_orders WHERE items = 0";
    assert_eq!(ctx.count(zero_items), 0);
    let orders = ctx.count("SELECT count(*) FROM fact_orders");
    assert!(orders > 0);

    let sql_dir = ctx.override_edited_model(
        "star",
        "07_fact_orders.sql",
        "    items\n",
        "    0 * items AS items\n",
    );

    pipeline(&ctx, &files[2]);
    let s = build_json(&ctx, &["--sql-dir", &sql_dir]);
    assert_eq!(table_mode(&s, "fact_sessions"), "incremental", "{s}");
    assert_eq!(table_mode(&s, "fact_orders"), "full", "{s}");
    let total = ctx.count("SELECT count(*) FROM fact_orders");
    assert!(total > orders);
    assert_eq!(
        ctx.count(zero_items),
        total,
        "old orders kept the old logic"
    );

    // Back to the embedded model with no new data.
    let s = build_json(&ctx, &[]);
    assert_eq!(table_mode(&s, "fact_orders"), "full", "{s}");
    assert_eq!(table_mode(&s, "fact_sessions"), "up_to_date", "{s}");
    assert_eq!(ctx.count(zero_items), 0);
}

/// A local lake with `events` generated events (one file, `seed`) cleaned and built, and its
/// number of orders.
fn built_lake_with_orders(events: &str, seed: &str) -> (TestContext, u64) {
    let ctx = TestContext::new(Backend::Local);
    ctx.generate("gen", &["--events", events, "--files", "1", "--seed", seed]);
    pipeline(&ctx, ctx.path("gen").to_str().unwrap());
    build_json(&ctx, &[]);
    let orders = ctx.count("SELECT count(*) FROM fact_orders");
    (ctx, orders)
}

#[test]
fn a_new_partition_column_re_lays_out_the_table() {
    // The writer lays files out by the table's own partition columns: a model that now asks for
    // another layout gets its table re-created, not its files written the old way.
    let (ctx, orders) = built_lake_with_orders("3000", "23");
    let partitioned = |ctx: &TestContext| {
        std::fs::read_dir(ctx.table_dir("fact_orders"))
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with("currency=")
            })
            .count()
    };
    assert_eq!(partitioned(&ctx), 0);

    let sql_dir = ctx.override_edited_model(
        "star",
        "07_fact_orders.sql",
        "-- materialized: incremental\n",
        "-- materialized: incremental\n-- partition_by: currency\n",
    );
    let s = build_json(&ctx, &["--sql-dir", &sql_dir]);
    assert_eq!(table_mode(&s, "fact_orders"), "full", "{s}");
    assert!(partitioned(&ctx) > 0, "fact_orders was not re-partitioned");
    assert_eq!(ctx.count("SELECT count(*) FROM fact_orders"), orders);
    // One directory per value, NULL included.
    let currencies = ctx.count("SELECT count(*) FROM (SELECT DISTINCT currency FROM fact_orders)");
    assert_eq!(partitioned(&ctx) as u64, currencies);
}

#[test]
fn a_bad_partition_by_is_a_config_error_that_leaves_the_table_readable() {
    // Checked before anything is written: Delta would commit a table whose partition columns
    // repeat, and every later build and query of it would fail.
    let (ctx, orders) = built_lake_with_orders("2000", "3");
    for (partition_by, expect) in [
        ("currency, currency", "names column currency twice"),
        ("no_such_column", "column no_such_column is not in its output"),
        (
            "order_id, user_key, session_key, date_key, ordered_at, revenue, currency, lines, items",
            "names every column",
        ),
    ] {
        let err = refused_edit(
            &ctx,
            "07_fact_orders.sql",
            "-- materialized: incremental\n",
            &format!("-- materialized: incremental\n-- partition_by: {partition_by}\n"),
        );
        assert!(err.contains(expect), "{err}");
    }
    assert_eq!(ctx.count("SELECT count(*) FROM fact_orders"), orders);
    let s = build_json(&ctx, &[]);
    assert_eq!(s["mode"], "up_to_date", "{s}");
}

/// Ingests, cleans and builds one file of events, as a cron tick would: the build's summary.
fn tick(ctx: &TestContext, name: &str, lines: &[String]) -> serde_json::Value {
    let file = ctx.path(name);
    std::fs::write(&file, lines.join("\n")).unwrap();
    ctx.ingest_json(&[file.to_str().unwrap()]);
    ctx.ok(&["clean", "-q"]);
    build_json(ctx, &[])
}

/// A view of product `P-<brand>` on 2026-03-0`day` by a visitor, logged in as `user` or not.
fn product_view(id: &str, day: &str, anonymous: &str, user: Option<&str>, brand: &str) -> String {
    let user = user.map_or(String::new(), |u| format!(r#","user_id":"{u}""#));
    format!(
        r#"{{"event_id":"{id}","event_time":"2026-03-0{day}T10:00:00Z","event_type":"product_view","anonymous_id":"{anonymous}"{user},"product_id":"P-{brand}","category":"shoes/running","brand":"{brand}","price":20,"currency":"EUR"}}"#
    )
}

/// A visitor's favourites are theirs under the anonymous key until they log in; the login,
/// arriving in a later tick, moves every event of the visitor to the user's key. The
/// incremental build recomputes both customers: the anonymous row goes, the user's row holds
/// the visitor's earlier interest, and an explicit `--as-of` rebuilds the table in full.
#[test]
fn a_login_moves_a_visitors_interest_to_the_user_in_an_incremental_build() {
    let ctx = TestContext::new(Backend::Local);
    let tick = |name: &str, lines: &[String]| tick(&ctx, name, lines);
    let anonymous = "md5(concat('anonymous', chr(31), 'anon-1'))";
    let user = "md5(concat('user', chr(31), 'user-1'))";
    let favourite = |key: &str| {
        ctx.query(&format!(
            "SELECT favourite_brand FROM agg_user_interest WHERE user_key = {key}"
        ))
    };

    let s = tick(
        "t1.ndjson",
        &[
            product_view("e1", "1", "anon-1", None, "Acme"),
            product_view("e2", "1", "anon-1", None, "Acme"),
            product_view("e3", "1", "anon-2", None, "Bolt"),
        ],
    );
    assert_eq!(table_mode(&s, "agg_user_interest"), "full");
    assert_eq!(favourite(anonymous), ["Acme"]);

    // The login: one view as user-1 from the same browser.
    let s = tick(
        "t2.ndjson",
        &[product_view("e4", "2", "anon-1", Some("user-1"), "Bolt")],
    );
    assert_eq!(table_mode(&s, "agg_user_interest"), "incremental", "{s}");
    assert!(favourite(anonymous).is_empty());
    assert_eq!(favourite(user), ["Acme"], "two Acme views against one Bolt");
    assert_eq!(
        ctx.count("SELECT count(*) FROM agg_user_interest"),
        2,
        "user-1 and anon-2"
    );

    // An explicit as-of before the login: the table is rebuilt at it, in full.
    let s = build_json(&ctx, &["--as-of", "2026-03-01T12:00:00Z"]);
    assert_eq!(table_mode(&s, "agg_user_interest"), "full", "{s}");
    let reason = table_of(&s, "agg_user_interest")["reason"].to_string();
    assert!(reason.contains("changed"), "{reason}");
    assert_eq!(favourite(user), ["Acme"]);

    // A window relative to the as-of time would leave the rows of customers whose events did not
    // change stale as it moves: refused with the plans, before anything is written.
    let err = refused_edit(
        &ctx,
        "098_agg_user_interest.sql",
        "AND event_time <= $as_of",
        "AND event_time > $as_of - INTERVAL '30 days'",
    );
    assert!(err.contains("event_time <= $as_of"), "{err}");
    // So is one keyed by a column it does not output.
    let err = refused_edit(
        &ctx,
        "098_agg_user_interest.sql",
        "-- unique_key: user_key",
        "-- unique_key: session_key",
    );
    assert!(
        err.contains("098_agg_user_interest.sql: unique_key session_key is not in its output"),
        "{err}"
    );
}

/// A login stitches the visitor's earlier events to the user: those rows change in their
/// identity columns alone. The tables that read none of them (daily product metrics, products)
/// recompute only what the new event touched, not the earlier day; the tables that do
/// (sessions) recompute the visitor's earlier session too, patched into its file. All equal a
/// full rebuild.
#[test]
fn a_login_recomputes_earlier_days_only_in_the_tables_that_read_identities() {
    let ctx = TestContext::new(Backend::Local);
    tick(
        &ctx,
        "t1.ndjson",
        &[
            product_view("e1", "1", "anon-1", None, "Acme"),
            product_view("e2", "1", "anon-1", None, "Acme"),
            product_view("e3", "1", "anon-2", None, "Bolt"),
        ],
    );
    // The login, a day later, viewing another product.
    let s = tick(
        &ctx,
        "t2.ndjson",
        &[product_view("e4", "2", "anon-1", Some("user-1"), "Bolt")],
    );
    let stitched = ctx.count("SELECT count(*) FROM events WHERE stitched_user_id = 'user-1'");
    assert_eq!(
        stitched, 3,
        "the login stitches the visitor's earlier events"
    );
    let keys = |table: &str| {
        let t = table_of(&s, table);
        assert_eq!(t["mode"], "incremental", "{t}");
        t["keys_changed"].as_u64().unwrap()
    };
    assert_eq!(keys("agg_product_daily"), 1, "only the login's day");
    assert_eq!(keys("dim_product"), 1, "only the product the login viewed");
    assert_eq!(
        keys("fact_sessions"),
        2,
        "the earlier session has a user now"
    );
    assert_eq!(keys("agg_user_interest"), 2, "the visitor and the user");
    // The earlier session changed customer only (user_key, user_id): its file is patched, and
    // the file's statistics hold the new values, so a query pruned by them still finds it.
    let sessions = table_of(&s, "fact_sessions");
    assert_eq!(sessions["files_patched"], 1, "{sessions}");
    assert_eq!(sessions["rows_patched"], 1, "{sessions}");
    // (The file's user_id was all NULL before: stale statistics would prune it.)
    assert_eq!(
        ctx.count("SELECT count(*) FROM fact_sessions WHERE user_id = 'user-1'"),
        2
    );

    let tables = [
        "agg_product_daily",
        "dim_product",
        "fact_sessions",
        "agg_user_interest",
    ];
    let dump = || -> Vec<Vec<String>> {
        tables
            .iter()
            .map(|t| {
                let mut rows = ctx.query(&format!("SELECT * FROM {t}"));
                rows.sort();
                rows
            })
            .collect()
    };
    let incremental = dump();
    build_json(&ctx, &["--full-refresh"]);
    assert_eq!(dump(), incremental);
}

/// A local lake and two files of generated events for it, neither ingested yet.
fn lake_with_two_batches() -> (TestContext, Vec<String>) {
    let ctx = TestContext::new(Backend::Local);
    // The first batch is seven days' backlog, the second a later tick: the newest of 8 files
    // (its products are some of the catalogue, not all of it).
    ctx.generate("gen", &["--events", "3000", "--files", "8", "--seed", "5"]);
    let mut files = ndjson_files(&ctx.path("gen"));
    let last = files.pop().expect("8 files");
    let backlog = ctx.path("gen/backlog");
    std::fs::create_dir_all(&backlog).expect("backlog dir");
    for f in &files {
        let name = std::path::Path::new(f).file_name().expect("file name");
        std::fs::rename(f, backlog.join(name)).expect("move into the backlog");
    }
    (ctx, vec![backlog.display().to_string(), last])
}

/// An incremental model sees only the changed keys' events; rows it produces for other keys
/// were computed from that partial view, and the files holding those keys' rows are not
/// rewritten. They are dropped (and counted), so the table still equals a full rebuild instead
/// of holding two rows for each. Here an edited `dim_product` also re-emits its previous rows
/// of the products no new event mentions.
#[test]
fn rows_of_unchanged_keys_from_an_incremental_model_are_dropped() {
    let (ctx, files) = lake_with_two_batches();
    let sql_dir = ctx.override_edited_model(
        "star",
        "03_dim_product.sql",
        "RIGHT JOIN seen s ON l.product_id = s.product_id",
        "RIGHT JOIN seen s ON l.product_id = s.product_id\n\
         UNION ALL SELECT * FROM this WHERE product_id NOT IN (SELECT product_id FROM seen)",
    );
    pipeline(&ctx, &files[0]);
    build_json(&ctx, &[]);
    // A full build with the edited model (its table now exists for `this`), then new data.
    build_json(&ctx, &["--sql-dir", &sql_dir]);
    pipeline(&ctx, &files[1]);
    let s = build_json(&ctx, &["--sql-dir", &sql_dir]);
    let product = table_of(&s, "dim_product");
    assert_eq!(product["mode"], "incremental", "{product}");
    let dropped = product["rows_outside_changed_keys"].as_u64().unwrap_or(0);
    let products = ctx.count("SELECT count(DISTINCT product_id) FROM dim_product");
    let changed = product["keys_changed"].as_u64().unwrap();
    assert!(changed < products, "some products unchanged: {product}");
    assert_eq!(dropped, products - changed, "{product}");
    assert_eq!(ctx.count("SELECT count(*) FROM dim_product"), products);
    let incremental = ctx.query("SELECT * FROM dim_product ORDER BY product_id");
    build_json(&ctx, &["--full-refresh", "--sql-dir", &sql_dir]);
    assert_eq!(
        ctx.query("SELECT * FROM dim_product ORDER BY product_id"),
        incremental
    );
}

/// A clean by an earlier clicklake listed no change keys and recorded no customers: after it,
/// the tables recomputed by customer are rebuilt in full, the others stay incremental.
#[test]
fn a_clean_by_an_earlier_version_rebuilds_the_tables_keyed_by_what_it_did_not_record() {
    let (ctx, files) = lake_with_two_batches();
    pipeline(&ctx, &files[0]);
    build_json(&ctx, &[]);
    pipeline(&ctx, &files[1]);
    // The last events commit as an earlier clicklake wrote it: no `change_keys` in its info.
    let log = ctx.table_dir("events").join("_delta_log");
    let last = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .max()
        .unwrap();
    let mut listed = 0;
    let lines: Vec<String> = std::fs::read_to_string(&last)
        .unwrap()
        .lines()
        .map(|line| {
            let mut action: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(info) = action.pointer_mut("/commitInfo/clicklake") {
                listed += info
                    .as_object_mut()
                    .unwrap()
                    .remove("change_keys")
                    .is_some() as usize;
            }
            action.to_string()
        })
        .collect();
    assert_eq!(listed, 1, "the clean lists its change keys");
    std::fs::write(&last, lines.join("\n") + "\n").unwrap();

    let s = build_json(&ctx, &[]);
    assert_eq!(table_mode(&s, "fact_sessions"), "incremental", "{s}");
    assert_eq!(table_mode(&s, "agg_user_interest"), "full", "{s}");
    let reason = table_of(&s, "agg_user_interest")["reason"].to_string();
    assert!(reason.contains("recorded no user_key changes"), "{reason}");
}

/// Once every star table has read the change records of a clean, the build removes them: each
/// tick's build read every change record since the lake began. A table that comes back after
/// builds that removed records it needed (a model dropped, then added back) is built in full.
#[test]
fn change_records_are_removed_once_read_and_a_table_that_missed_them_is_rebuilt() {
    let ctx = TestContext::new(Backend::Local);
    ctx.generate(
        "gen",
        &[
            "--events", "2400", "--files", "4", "--dirty", "--seed", "31", "--days", "2",
        ],
    );
    let tick = |i: u32, args: &[&str]| -> serde_json::Value {
        let file = ctx.path(&format!("gen/events-000{i}.ndjson"));
        ctx.ok(&["ingest", "-q", file.to_str().unwrap()]);
        ctx.ok(&["clean", "-q"]);
        build_json(&ctx, args)
    };
    let changes = || ctx.count("SELECT count(*) FROM events_changes");
    // A model of the user's own, incremental by order, added with the config. Its table is one
    // of the lake's: `sql` queries it, `tables` lists it.
    let sql_dir = ctx.override_model(
        "star",
        "20_order_events.sql",
        "-- materialized: incremental\n-- unique_key: order_id\n\
         SELECT order_id, count(*) AS purchase_events FROM events \
         WHERE event_type = 'purchase' AND order_id IS NOT NULL GROUP BY order_id\n",
    );
    let with_model = format!("[build]\nsql_dir = {sql_dir:?}\n");
    ctx.write_config(&with_model);
    tick(1, &[]);
    assert!(ctx.ok(&["tables"]).contains("order_events"));
    // A freshness limit may name it.
    ctx.write_config(format!(
        "{with_model}[status.max_lag_tables]\norder_events = \"2d\"\n"
    ));
    let status = ctx.run(&["status", "--json"]);
    assert_eq!(status.status.code(), Some(1), "{}", stderr_of(&status));
    assert!(String::from_utf8_lossy(&status.stdout).contains("order_events"));
    ctx.write_config(&with_model);
    let s = tick(2, &[]);
    assert_eq!(table_mode(&s, "order_events"), "incremental", "{s}");
    assert!(s["changes_pruned"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(changes(), 0, "read by every table, removed");
    // Built without it: the records of this clean are removed although it never read them.
    ctx.write_config("");
    let s = tick(3, &[]);
    assert!(s["changes_pruned"].as_u64().unwrap() > 0, "{s}");
    // Back: built in full, and it holds what its query over all events gives.
    ctx.write_config(&with_model);
    let s = tick(4, &[]);
    assert_eq!(table_mode(&s, "order_events"), "full", "{s}");
    let reason = table_of(&s, "order_events")["reason"].as_str().unwrap();
    assert!(reason.contains("change records"), "{reason}");
    assert_eq!(
        ctx.query("SELECT order_id, purchase_events FROM order_events ORDER BY order_id"),
        ctx.query(
            "SELECT order_id, count(*) FROM events WHERE event_type = 'purchase' \
             AND order_id IS NOT NULL GROUP BY order_id ORDER BY order_id"
        )
    );
    // A build with nothing new removes nothing and commits nothing.
    let version = |t: &str| -> i64 {
        let tables: serde_json::Value =
            serde_json::from_str(&ctx.ok(&["tables", "--json"])).unwrap();
        let t = tables.as_array().unwrap().iter().find(|x| x["name"] == t);
        t.unwrap()["version"].as_i64().unwrap()
    };
    let before = version("events_changes");
    let s = build_json(&ctx, &[]);
    assert_eq!(s["changes_pruned"], 0, "{s}");
    assert_eq!(version("events_changes"), before);
}
