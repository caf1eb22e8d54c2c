//! `clicklake clean`: counts against the generator's own bookkeeping, incremental == full refresh,
//! crash recovery, model overrides.

use crate::both_backends;
use crate::context::{
    manifest_lines, ndjson_files, one_line_failure, stderr_of, Backend, TestContext,
};

fn clean_json(ctx: &TestContext, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["clean", "--json"];
    all.extend_from_slice(args);
    let out = ctx.ok(&all);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("clean json: {e}: {out}"))
}

/// A `04_deduplicated.sql` override that keeps no page view (and counts no resend).
const NO_PAGE_VIEWS: &str = "SELECT *, 0 AS _exact_resends, 0 AS _conflicting_resends \
    FROM candidates WHERE event_type <> 'page_view'";

/// Every column of `events`, in a stable order, as CSV lines.
fn dump_events(ctx: &TestContext) -> Vec<String> {
    ctx.query("SELECT * FROM events ORDER BY event_id")
}

#[test]
fn counts_match_the_generators_bookkeeping() {
    let ctx = TestContext::new(Backend::Local);
    let m = ctx.generate(
        "gen",
        &[
            "--events", "20000", "--files", "4", "--dirty", "--seed", "7",
        ],
    );
    ctx.ingest_json(&[ctx.path("gen").to_str().unwrap()]);
    let s = clean_json(&ctx, &[]);
    assert_eq!(s["mode"], "full");
    assert_eq!(s["raw_rows_consumed"], m["valid_lines"]);
    assert_eq!(s["events_written"], m["unique_events"]);
    assert_eq!(s["exact_duplicates"], m["exact_duplicates"]);
    assert_eq!(s["conflicting_duplicates"], m["conflicting_duplicates"]);
    assert_eq!(s["sessions_touched"], m["sessions"]);

    let n = |sql: &str| ctx.count(sql);
    assert_eq!(n("SELECT count(*) FROM events"), m["unique_events"]);
    assert_eq!(
        n("SELECT count(DISTINCT event_id) FROM events"),
        m["unique_events"]
    );
    assert_eq!(
        n("SELECT count(DISTINCT session_key) FROM events"),
        m["sessions"]
    );
    assert_eq!(
        n("SELECT count(DISTINCT session_key) FROM events WHERE session_source = 'client'"),
        m["sessions_with_client_id"]
    );
    assert_eq!(
        n("SELECT count(DISTINCT session_key) FROM events WHERE session_source = 'derived'"),
        m["sessions_without_client_id"]
    );
    assert_eq!(
        n("SELECT count(DISTINCT user_id) FROM events"),
        m["registered_users"]
    );
    assert_eq!(
        n("SELECT count(DISTINCT anonymous_id) FROM events"),
        m["anonymous_ids"]
    );
    // Every event of a visitor who ever logged in carries the stitched id.
    assert_eq!(
        n("SELECT count(*) FROM events WHERE user_id IS NOT NULL AND stitched_user_id IS NULL"),
        0
    );
    assert_eq!(
        n(
            "SELECT count(DISTINCT anonymous_id) FROM events WHERE stitched_user_id IS NOT NULL \
           AND anonymous_id IN (SELECT anonymous_id FROM events WHERE user_id IS NULL)"
        ),
        n(
            "SELECT count(DISTINCT anonymous_id) FROM events WHERE user_id IS NOT NULL \
           AND anonymous_id IN (SELECT anonymous_id FROM events WHERE user_id IS NULL)"
        )
    );
    // Orders: one purchase event per generated order.
    assert_eq!(
        n("SELECT count(DISTINCT order_id) FROM events WHERE event_type = 'purchase'"),
        m["orders"]
    );

    let per_day =
        ctx.query("SELECT CAST(event_date AS VARCHAR), count(*) FROM events GROUP BY 1 ORDER BY 1");
    assert_eq!(per_day, manifest_lines(&m, "events_per_day"));
    // The generator spreads its sessions over all 7 default days (the last spills past midnight):
    // each day holds about a seventh of the events, so the newest file is the newest events.
    let days = m["events_per_day"].as_object().expect("events_per_day");
    let full: Vec<u64> = days.values().map(|v| v.as_u64().unwrap()).take(7).collect();
    assert!(days.len() <= 8 && full.len() == 7, "{days:?}");
    assert!(
        full.iter()
            .all(|&d| d > 20000 / 7 * 8 / 10 && d < 20000 / 7 * 12 / 10),
        "{days:?}"
    );

    // Normalisation rules.
    assert_eq!(
        n("SELECT count(*) FROM events WHERE event_type <> lower(trim(event_type)) \
           OR currency <> upper(currency) OR brand = '' OR category_l1 IS NULL AND category IS NOT NULL"),
        0
    );
    assert_eq!(
        ctx.query(
            "SELECT DISTINCT category, category_l1, category_l2, category_l3 FROM events \
             WHERE category = 'electronics/audio/headphones'"
        ),
        ["electronics/audio/headphones,electronics,audio,headphones"]
    );

    // Nothing new: no rewrite, and it says so.
    let again = ctx.ok(&["clean"]);
    assert!(again.contains("nothing new to clean"), "{again}");
    let s2 = clean_json(&ctx, &[]);
    assert_eq!(s2["mode"], "up_to_date");
    assert_eq!(s2["events_version"], s["events_version"]);
}

both_backends!(incremental_equals_full_refresh, |backend: Backend| {
    let ctx = TestContext::new(backend);
    let m = ctx.generate(
        "gen",
        &[
            "--events", "6000", "--files", "10", "--dirty", "--seed", "11", "--days", "3",
        ],
    );
    let files = ndjson_files(&ctx.path("gen"));
    // Shuffled delivery in small batches: late files first, so resends and late events arrive
    // before (and after) the rows they duplicate.
    let order = [7usize, 2, 9, 0, 5, 3, 8, 1, 6, 4];
    let mut exact = 0u64;
    let mut conflicting = 0u64;
    // Both ways of changing rows in existing files are taken: patching a file's identity and
    // session columns (first logins, sessions joined by late events) and rewriting a file whose
    // rows change otherwise (an earlier copy of an event arriving late wins over the current one).
    let (mut patched, mut copied) = (0u64, 0u64);
    for pair in order.chunks(2) {
        let batch: Vec<&str> = pair.iter().map(|i| files[*i].as_str()).collect();
        ctx.ingest_json(&batch);
        let s = clean_json(&ctx, &[]);
        let expected_mode = if pair[0] == order[0] {
            "full"
        } else {
            "incremental"
        };
        assert_eq!(s["mode"], expected_mode, "{s}");
        exact += s["exact_duplicates"].as_u64().unwrap();
        conflicting += s["conflicting_duplicates"].as_u64().unwrap();
        if s["mode"] == "incremental" {
            patched += s["files_patched"].as_u64().unwrap();
            copied += s["events_copied"].as_u64().unwrap();
        }
    }
    assert!(
        patched > 0 && copied > 0,
        "patched {patched} files, copied {copied} rows"
    );
    assert_eq!(exact, m["exact_duplicates"].as_u64().unwrap());
    assert_eq!(conflicting, m["conflicting_duplicates"].as_u64().unwrap());
    let incremental = dump_events(&ctx);
    assert_eq!(
        incremental.len() as u64,
        m["unique_events"].as_u64().unwrap()
    );
    // Queries that prune files by their statistics see the patched columns' new values.
    let pruned = || {
        [
            "SELECT max(stitched_user_id), min(stitched_user_id), count(stitched_user_id),              min(session_key), max(session_key), count(DISTINCT session_source) FROM events",
            "SELECT count(*) FROM events WHERE stitched_user_id =              (SELECT max(user_id) FROM events)",
            "SELECT count(*) FROM events WHERE stitched_user_id IS NULL",
            "SELECT count(*) FROM events WHERE session_key > 'f' OR session_key < '1'",
        ]
        .map(|sql| ctx.query(sql))
    };
    let incremental_pruned = pruned();
    // Patched and rewritten files keep their bloom filters on anonymous_id: a visitor seen
    // nowhere (within every file's min/max, so only the bloom filters can rule it out) is ruled
    // out of every row group.
    let (total, matched) = ctx.bloom_filter_row_groups(
        "SELECT count(*) FROM events WHERE anonymous_id = 'a-8-seen-nowhere'",
    );
    assert!(
        total > 0 && matched == 0,
        "{matched} of {total} row groups read"
    );

    let full = clean_json(&ctx, &["--full-refresh"]);
    assert_eq!(full["mode"], "full");
    assert_eq!(full["exact_duplicates"], m["exact_duplicates"]);
    let refreshed = dump_events(&ctx);
    assert_eq!(incremental.len(), refreshed.len());
    for (a, b) in incremental.iter().zip(&refreshed) {
        assert_eq!(a, b, "incremental and full refresh differ");
    }
    assert_eq!(incremental_pruned, pruned());
});

#[test]
fn a_crash_before_the_commit_changes_nothing_and_the_rerun_completes() {
    let ctx = TestContext::new(Backend::Local);
    let m = ctx.generate(
        "gen",
        &["--events", "4000", "--files", "4", "--dirty", "--seed", "3"],
    );
    let files = ndjson_files(&ctx.path("gen"));
    ctx.ingest_json(&[files[0].as_str(), files[1].as_str()]);
    clean_json(&ctx, &[]);
    let before = dump_events(&ctx);
    ctx.ingest_json(&[files[2].as_str(), files[3].as_str()]);

    let out = ctx
        .cmd()
        .env("CLICKLAKE_FAULT", "clean-after-data-files")
        .args(["clean"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the fault point must abort");
    assert_eq!(
        dump_events(&ctx),
        before,
        "a crashed clean must not be visible"
    );
    let s = clean_json(&ctx, &[]);
    assert_eq!(s["mode"], "incremental");
    assert_eq!(ctx.count("SELECT count(*) FROM events"), m["unique_events"]);
    let incremental = dump_events(&ctx);
    clean_json(&ctx, &["--full-refresh"]);
    assert_eq!(dump_events(&ctx), incremental);
}

#[test]
fn a_crash_after_the_commit_is_a_finished_run() {
    let ctx = TestContext::new(Backend::Local);
    ctx.generate("gen", &["--events", "2000", "--files", "2", "--seed", "5"]);
    ctx.ingest_json(&[ctx.path("gen").to_str().unwrap()]);
    let out = ctx
        .cmd()
        .env("CLICKLAKE_FAULT", "clean-after-commit")
        .args(["clean"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let s = clean_json(&ctx, &[]);
    assert_eq!(s["mode"], "up_to_date", "{s}");
}

#[test]
fn a_broken_model_override_is_a_config_error_naming_the_file() {
    let ctx = TestContext::new(Backend::Local);
    ctx.generate("gen", &["--events", "200", "--files", "1"]);
    ctx.ingest_json(&[ctx.path("gen").to_str().unwrap()]);
    let dir = ctx.path("models/clean");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("04_deduplicated.sql"),
        "SELECT * FROM candidates WHERE no_such_column = 1",
    )
    .unwrap();
    let out = ctx.run(&["clean", "--sql-dir", ctx.path("models").to_str().unwrap()]);
    one_line_failure(&out, 2, &["04_deduplicated.sql", "no_such_column"]);

    // A function given a constant it refuses fails when the model is planned, not part way.
    let sql_dir = ctx.override_edited_model(
        "clean",
        "01_normalized.sql",
        "category_level(category, 2)",
        "category_level(category, 0)",
    );
    let out = ctx.run(&["clean", "--sql-dir", &sql_dir]);
    one_line_failure(
        &out,
        2,
        &["01_normalized.sql", "level must be 1 or more, not 0"],
    );
    std::fs::remove_file(dir.join("01_normalized.sql")).unwrap();

    // A working override changes the result: a user-defined rule without recompiling.
    std::fs::write(dir.join("04_deduplicated.sql"), NO_PAGE_VIEWS).unwrap();
    ctx.ok(&["clean", "--sql-dir", ctx.path("models").to_str().unwrap()]);
    assert_eq!(
        ctx.count("SELECT count(*) FROM events WHERE event_type = 'page_view'"),
        0
    );

    // The last model must return every column of `events`, with its type: checked before the
    // lake is read, so also on a run with nothing to clean. (A missing event_id used to panic
    // once rows flowed; a timestamp returned as text was parsed value by value as rows were
    // written.)
    let events_version = || {
        std::fs::read_dir(ctx.table_dir("events").join("_delta_log"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("json".as_ref()))
            .count()
    };
    let version = events_version();
    let sql_dir = ctx.override_edited_model(
        "clean",
        "07_sessionized.sql",
        "\n    d.event_id,\n",
        "\n    d.event_id AS id,\n",
    );
    let out = ctx.run(&["clean", "--full-refresh", "--sql-dir", &sql_dir]);
    one_line_failure(
        &out,
        2,
        &[
            "07_sessionized.sql",
            "must return every column of `events`",
            "returns no column event_id (it returns id, event_time,",
        ],
    );
    let sql_dir = ctx.override_edited_model(
        "clean",
        "07_sessionized.sql",
        "\n    d.event_time,\n",
        "\n    CAST(d.event_time AS VARCHAR) AS event_time,\n",
    );
    let out = ctx.run(&["clean", "--sql-dir", &sql_dir]);
    one_line_failure(
        &out,
        2,
        &[
            "07_sessionized.sql",
            "returns event_time as Utf8",
            "stores it as Timestamp(µs, \"UTC\"): CAST it",
        ],
    );
    assert_eq!(events_version(), version, "nothing was written");
}

#[test]
fn clean_and_build_before_any_ingest_succeed_with_nothing_in_them() {
    // A lake made by `init` that nothing has landed in yet (the first cron ticks): exit 0.
    // Where there is no lake at all, it is exit 2 (see errors.rs, a mistyped lake).
    let ctx = TestContext::new(Backend::Local);
    ctx.ok(&["init"]);
    let out = ctx.ok(&["clean"]);
    assert!(out.contains("raw rows      0 consumed"), "{out}");
    ctx.ok(&["build"]);
    assert_eq!(ctx.count("SELECT count(*) FROM events"), 0);
    assert_eq!(ctx.count("SELECT count(*) FROM fact_sessions"), 0);
}

#[test]
fn clean_and_build_complete_under_a_small_memory_limit() {
    // Sorts and aggregates spill to disk instead of failing; the result is the same.
    let ctx = TestContext::new(Backend::Local);
    let m = ctx.generate(
        "gen",
        &[
            "--events", "60000", "--files", "3", "--dirty", "--seed", "9",
        ],
    );
    ctx.ingest_json(&[ctx.path("gen").to_str().unwrap()]);
    let s = clean_json(&ctx, &["--memory-limit", "64MiB"]);
    assert_eq!(s["events_written"], m["unique_events"]);
    assert_eq!(s["exact_duplicates"], m["exact_duplicates"]);
    assert_eq!(
        ctx.count("SELECT count(DISTINCT session_key) FROM events"),
        m["sessions"]
    );
    // The star schema too (one table at a time under such a limit).
    let out = ctx.run(&["--memory-limit", "64MiB", "build", "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        ctx.count("SELECT count(*) FROM fact_sessions"),
        m["sessions"]
    );
}

#[test]
fn a_changed_model_is_applied_to_every_row_not_only_the_new_ones() {
    // An incremental clean keeps the rows of untouched visitors as they were computed. After the
    // models change, that would mix two logics; clean notices and refreshes in full, both when
    // the override appears and when it goes away.
    let ctx = TestContext::new(Backend::Local);
    ctx.generate("gen", &["--events", "3000", "--files", "3", "--seed", "12"]);
    let files = ndjson_files(&ctx.path("gen"));
    ctx.ingest_json(&[files[0].as_str(), files[1].as_str()]);
    clean_json(&ctx, &[]);
    let page_views = "SELECT count(*) FROM events WHERE event_type = 'page_view'";
    assert!(ctx.count(page_views) > 0);

    let sql_dir = ctx.override_model("clean", "04_deduplicated.sql", NO_PAGE_VIEWS);
    let sql_dir = sql_dir.as_str();
    ctx.ingest_json(&[files[2].as_str()]);
    let s = clean_json(&ctx, &["--sql-dir", sql_dir]);
    assert_eq!(s["mode"], "full", "{s}");
    let reason = s["full_refresh_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("models"), "{s}");
    assert_eq!(ctx.count(page_views), 0, "old rows kept the old logic");
    // Same models, nothing new: nothing to do.
    assert_eq!(
        clean_json(&ctx, &["--sql-dir", sql_dir])["mode"],
        "up_to_date"
    );

    // Back to the embedded models, with no new data: a full refresh again, equal to a fresh one.
    let s = clean_json(&ctx, &[]);
    assert_eq!(s["mode"], "full", "{s}");
    let incremental_then_back = dump_events(&ctx);
    assert!(ctx.count(page_views) > 0);
    clean_json(&ctx, &["--full-refresh"]);
    assert_eq!(incremental_then_back, dump_events(&ctx));
}

#[test]
fn a_winning_resend_under_another_visitor_recomputes_both_visitors() {
    let ctx = TestContext::new(Backend::Local);
    let line = |id: &str, minute: u32, received: &str, visitor: &str| {
        format!(
            r#"{{"event_id":"{id}","event_time":"2026-03-02T10:{minute:02}:00Z","received_at":"2026-03-02T10:{received}Z","event_type":"page_view","anonymous_id":"{visitor}","page_url":"https://shop.example/{id}"}}"#
        )
    };
    let first = ctx.path("first.ndjson");
    std::fs::write(
        &first,
        [
            line("e1", 0, "00:05", "visitor-a"),
            line("e2", 25, "25:05", "visitor-a"),
            line("e3", 50, "50:05", "visitor-a"),
        ]
        .join("\n"),
    )
    .unwrap();
    ctx.ingest_json(&[first.to_str().unwrap()]);
    clean_json(&ctx, &[]);
    let sessions_of_a = || {
        ctx.count("SELECT count(DISTINCT session_key) FROM events WHERE anonymous_id = 'visitor-a'")
    };
    assert_eq!(sessions_of_a(), 1);
    // e2 again, received earlier and under another visitor: this copy wins. visitor-a sends
    // nothing new but loses the event that held their session together (the 50 minutes
    // between e1 and e3 are more than the 30-minute gap), so their rows are read and
    // recomputed too.
    let second = ctx.path("second.ndjson");
    std::fs::write(&second, line("e2", 25, "25:01", "visitor-b")).unwrap();
    ctx.ingest_json(&[second.to_str().unwrap()]);
    let s = clean_json(&ctx, &[]);
    assert_eq!(s["mode"], "incremental", "{s}");
    assert_eq!(s["visitors_touched"], 2, "{s}");
    assert_eq!(s["conflicting_duplicates"], 1, "{s}");
    assert_eq!(
        ctx.query("SELECT event_id, anonymous_id FROM events ORDER BY event_id"),
        ctx.query(
            "SELECT * FROM (VALUES ('e1', 'visitor-a'), ('e2', 'visitor-b'), ('e3', 'visitor-a')) \
             ORDER BY 1"
        )
    );
    assert_eq!(sessions_of_a(), 2);
    let incremental = dump_events(&ctx);
    clean_json(&ctx, &["--full-refresh"]);
    assert_eq!(incremental, dump_events(&ctx));
}
