//! Bad input gets one clear line on stderr and a documented exit code; never a panic.

use crate::context::{stderr_of, Backend, TestContext};

fn assert_usage_error(out: &std::process::Output, words: &[&str]) {
    let err = stderr_of(out);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    for w in words {
        assert!(err.contains(w), "stderr should mention {w:?}: {err}");
    }
}

fn one_line(out: &std::process::Output) {
    let err = stderr_of(out);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

#[test]
fn bad_lake_url() {
    let ctx = TestContext::new(Backend::Local);
    let f = ctx.fixture("native/every_reason.ndjson");
    for (lake, word) in [
        ("gs://bucket/x", "unsupported scheme"),
        ("s3:///x", "bucket"),
        ("file://relative", "absolute"),
    ] {
        let out = ctx.run(&["--lake", lake, "ingest", f.to_str().unwrap()]);
        assert_usage_error(&out, &[word, "--lake"]);
        one_line(&out);
    }
}

#[test]
fn unreadable_input() {
    let ctx = TestContext::new(Backend::Local);
    let out = ctx.run(&["ingest", "/definitely/not/here.ndjson"]);
    assert_usage_error(&out, &["cannot read /definitely/not/here.ndjson"]);
    one_line(&out);
    let out = ctx.run(&["ingest", "nothing-*.ndjson"]);
    assert_usage_error(&out, &["no file matches"]);
    assert!(
        !ctx.path("lake").exists(),
        "nothing is written for a usage error"
    );
}

#[test]
fn corrupt_gzip_is_quarantined_from_a_file_and_a_failure_from_stdin() {
    let ctx = TestContext::new(Backend::Local);
    let mut bytes = vec![0x1f, 0x8b, 0x08, 0x00];
    bytes.extend_from_slice(b"this is not deflate data at all");
    std::fs::write(ctx.path("broken.ndjson.gz"), &bytes).unwrap();
    // A CSV file breaks while its header is read: that stopped every run with exit 3.
    std::fs::write(ctx.path("broken.csv.gz"), &bytes).unwrap();
    // Cut inside its header (a file caught after its first bytes; this one names its file, as
    // gzip does): it was read as empty, no row for it.
    let named_header = b"\x1f\x8b\x08\x08\x00\x00\x00\x00\x00\x03events.ndj";
    std::fs::write(ctx.path("cut-header.ndjson.gz"), named_header).unwrap();
    // A file: bad data, one quarantine row at line 1; the file is done.
    let s = ctx.ingest_json(&["broken.ndjson.gz", "broken.csv.gz", "cut-header.ndjson.gz"]);
    assert_eq!(
        (s["lines"].as_u64(), s["quarantined"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(
        ctx.query(
            "SELECT regexp_replace(source_file, '.*/', ''), line_number, reason, raw \
             FROM quarantine ORDER BY 1"
        ),
        [
            "broken.csv.gz,1,broken_json,",
            "broken.ndjson.gz,1,broken_json,",
            "cut-header.ndjson.gz,1,broken_json,"
        ]
    );
    assert_eq!(
        ctx.count(
            "SELECT count(*) FROM quarantine WHERE source_file LIKE '%cut-header.ndjson.gz' \
             AND detail LIKE '%gzip stream is truncated or corrupt here: the file ends inside \
             its gzip header%'"
        ),
        1
    );
    assert_eq!(ctx.count("SELECT count(*) FROM raw_events"), 0);
    // Stdin has no identity until it is read whole: exit 3, naming it, nothing landed.
    let out = ctx
        .cmd()
        .args(["ingest", "-"])
        .write_stdin(bytes)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("cannot read -: corrupt deflate stream"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(ctx.count("SELECT count(*) FROM quarantine"), 3);
}

#[test]
fn bad_flags_and_config() {
    let ctx = TestContext::new(Backend::Local);
    assert_usage_error(&ctx.run(&["ingest", "--bogus", "x"]), &["--bogus"]);
    assert_usage_error(
        &ctx.run(&["--memory-limit", "lots", "tables"]),
        &["--memory-limit", "lots"],
    );
    let f = ctx.fixture("native/every_reason.ndjson");
    assert_usage_error(
        &ctx.run(&["ingest", "--source", "nope", f.to_str().unwrap()]),
        &["--source nope", "native"],
    );
    ctx.write_config("lake = \"./l\"\n[ingest]\nzstd_levle = 3\n");
    let out = ctx.run(&["tables"]);
    assert_usage_error(&out, &["zstd_levle", "clicklake.toml", "line 3"]);
    one_line(&out);
    std::fs::remove_file(ctx.path("clicklake.toml")).unwrap();
    // The huge-pages switch takes 0 or 1, nothing else.
    for value in ["0", "1"] {
        let out = ctx
            .cmd()
            .env("CLICKLAKE_TRANSPARENT_HUGE_PAGES", value)
            .arg("tables")
            .output()
            .unwrap();
        assert!(out.status.success(), "{value}: {}", stderr_of(&out));
    }
    let out = ctx
        .cmd()
        .env("CLICKLAKE_TRANSPARENT_HUGE_PAGES", "yes")
        .arg("tables")
        .output()
        .unwrap();
    assert_usage_error(&out, &["CLICKLAKE_TRANSPARENT_HUGE_PAGES", "0 or 1", "yes"]);
    one_line(&out);
}

#[test]
fn bad_sql_names_the_statement() {
    let ctx = TestContext::new(Backend::Local);
    let f = ctx.fixture("native/every_reason.ndjson");
    ctx.ok(&["ingest", f.to_str().unwrap()]);
    let out = ctx.run(&["sql", "-c", "SELECT nope FROM raw_events"]);
    assert_usage_error(&out, &["SELECT nope FROM raw_events", "nope"]);
    let out = ctx.run(&["sql", "-c", "SELEKT 1"]);
    assert_usage_error(&out, &["SELEKT 1"]);
    // A table the lake does not have yet: which it has, and what creates the one asked for.
    let out = ctx.run(&["sql", "-c", "SELECT count(*) FROM events"]);
    assert_usage_error(
        &out,
        &[
            "table 'datafusion.public.events' not found",
            "the lake's tables: ingested_files, quarantine, raw_events",
            "`clicklake clean` creates events",
        ],
    );
    one_line(&out);
    let out = ctx.run(&["sql", "-c", "SELECT * FROM fact_orders"]);
    assert_usage_error(&out, &["`clicklake build` creates fact_orders"]);
    let out = ctx.run(&["sql", "-c", "SELECT * FROM fact_ordrs"]);
    assert_usage_error(&out, &["the lake's tables: "]);
    assert!(!stderr_of(&out).contains("creates"), "{}", stderr_of(&out));
}

/// A value the query cannot evaluate is the query's mistake, as a typo is: exit 2, one line,
/// arrow's own words. The first one fails inside the Parquet reader (the filter is pushed down
/// to it), the others in DataFusion's operators and in its constant folding.
#[test]
fn a_value_the_query_cannot_evaluate_is_a_usage_error() {
    let ctx = TestContext::new(Backend::Local);
    let f = ctx.fixture("native/every_reason.ndjson");
    ctx.ok(&["ingest", f.to_str().unwrap()]);
    for (sql, words) in [
        (
            "SELECT count(*) FROM raw_events WHERE anonymous_id = 5",
            &["Cast error: Cannot cast string", "to value of Int64 type"][..],
        ),
        (
            "SELECT CAST(event_type AS INT) FROM raw_events",
            &["Cast error: Cannot cast string"][..],
        ),
        ("SELECT CAST('x' AS INT)", &["Cannot cast string 'x'"][..]),
        (
            "SELECT count(*) / 0 FROM raw_events",
            &["Divide by zero"][..],
        ),
    ] {
        let out = ctx.run(&["sql", "-c", sql]);
        assert_usage_error(&out, words);
        assert!(stderr_of(&out).contains(sql), "names the statement");
        one_line(&out);
    }
}

/// A `--select` that matches no check would pass a CI gate without checking anything.
#[test]
fn a_check_selection_matching_nothing_is_a_usage_error() {
    let ctx = TestContext::new(Backend::Local);
    let out = ctx.run(&["check", "--select", "unique_evnt_id"]);
    assert_usage_error(
        &out,
        &[
            "--select \"unique_evnt_id\"",
            "did you mean \"events_unique_event_id\"?",
            "`clicklake check --list`",
        ],
    );
    one_line(&out);
    // --list names what a selection picks without reading the lake (there is none yet).
    let listed = ctx.ok(&["check", "--list", "--select", "unique(dim_user"]);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(
        listed.starts_with("unique(dim_user.user_key)  ")
            && listed.trim_end().ends_with("dim_user"),
        "{listed}"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&ctx.ok(&["check", "--list", "--json"])).unwrap();
    let listed = listed.as_array().unwrap();
    assert!(listed.iter().any(|c| c["name"] == "events_unique_event_id"
        && c["tables"] == serde_json::json!(["events"])
        && c["severity"] == "error"));
    assert!(!ctx.path("lake").exists(), "--list read or made the lake");
    let f = ctx.fixture("native/every_reason.ndjson");
    ctx.ok(&["ingest", f.to_str().unwrap()]);
    ctx.ok(&["clean"]);
    let report = ctx.ok(&["check", "--select", "unique_event_id"]);
    assert!(report.contains("events_unique_event_id"), "{report}");
    // Several selections add up; exclusions take away.
    let names = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["check", "--json"];
        all.extend_from_slice(args);
        let json: serde_json::Value = serde_json::from_str(&ctx.ok(&all)).unwrap();
        let checks = json["checks"].as_array().unwrap().iter();
        checks
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(&["--select", "unique_event_id", "--select", "reconcile"]),
        ["events_unique_event_id", "events_reconcile_raw"]
    );
    let all = names(&[]);
    let without = names(&["--exclude", "fact_", "--exclude", "reconcile"]);
    assert!(!without.is_empty() && without.len() < all.len());
    assert!(without
        .iter()
        .all(|n| !n.contains("fact_") && !n.contains("reconcile")));
    assert_eq!(
        without.len(),
        all.iter()
            .filter(|n| !n.contains("fact_") && !n.contains("reconcile"))
            .count()
    );
    // A misspelt exclusion would leave its check in; excluding everything checks nothing.
    let out = ctx.run(&["check", "--exclude", "facts_"]);
    assert_usage_error(&out, &["--exclude \"facts_\""]);
    one_line(&out);
    let out = ctx.run(&["check", "--select", "events_", "--exclude", "events_"]);
    assert_usage_error(&out, &["leaves no check"]);
    one_line(&out);
}

#[test]
fn credentials_never_printed() {
    let ctx = TestContext::new(Backend::S3);
    let f = ctx.fixture("native/every_reason.ndjson");
    let out = ctx
        .cmd()
        .args(["-vvv", "ingest", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr_of(&out)
    );
    assert!(
        !all.contains(crate::context::SECRET_KEY),
        "the secret key leaked into output"
    );
}

/// Ingests 20,000 generated events in 64 KiB chunks on two parser threads (about 150 chunks, so
/// the pipeline's queues fill), with `adjust` applied to the command; at most 60 s.
fn ingest_many_small_chunks(
    adjust: impl FnOnce(&mut assert_cmd::Command),
) -> (TestContext, std::process::Output) {
    let ctx = TestContext::new(Backend::Local);
    ctx.generate("gen", &["--events", "20000", "--files", "1"]);
    ctx.write_config("[ingest]\nthreads = 2\nchunk_size = \"64KiB\"\n");
    let mut cmd = ctx.cmd();
    adjust(&mut cmd);
    let out = cmd
        .args(["ingest", ctx.path("gen").to_str().unwrap()])
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap();
    (ctx, out)
}

/// A refusal found while the parser threads still have chunks in flight stops the run at once.
/// Before the pipeline closed its queue on the way out, any error raised once the queues were
/// full (here: personal data without a key, in the first of ~150 chunks) hung the run forever.
#[test]
fn an_error_mid_file_stops_the_run_instead_of_hanging() {
    let (_ctx, out) = ingest_many_small_chunks(|c| {
        c.env_remove("CLICKLAKE_PII_KEY");
    });
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("CLICKLAKE_PII_KEY"),
        "{}",
        stderr_of(&out)
    );
    one_line(&out);
}

/// A parser thread that panics (a bug) fails the run with exit 3 and commits nothing: its
/// chunk's lines are never silently missing from `raw_events` + `quarantine`.
#[test]
fn a_panicking_parser_fails_the_run_and_commits_nothing() {
    let (ctx, out) = ingest_many_small_chunks(|c| {
        c.env("CLICKLAKE_FAULT", "parse-panic");
    });
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("internal error: parsing"), "{err}");
    assert!(!ctx
        .table_dir("raw_events")
        .join("_delta_log/00000000000000000001.json")
        .exists());
    // The same input without the fault lands every line.
    let m = ctx.ingest_json(&[ctx.path("gen").to_str().unwrap()]);
    assert_eq!(m["files_read"], 1, "{m}");
}

/// `clicklake sql`, checks and models read the lake; none of them can write to it. DataFusion
/// would commit `INSERT INTO events` as a Delta append past validation, deduplication and the
/// lake's lock (it did, before this was refused).
#[test]
fn the_lake_is_read_only_to_ad_hoc_sql_checks_and_models() {
    let ctx = TestContext::new(Backend::Local);
    let f = ctx.fixture("native/every_reason.ndjson");
    ctx.ok(&["ingest", f.to_str().unwrap()]);
    ctx.ok(&["clean"]);
    let log_files = |table: &str| {
        std::fs::read_dir(ctx.table_dir(table).join("_delta_log"))
            .unwrap()
            .count()
    };
    let before = (
        ctx.count("SELECT count(*) FROM raw_events"),
        ctx.count("SELECT count(*) FROM events"),
        log_files("raw_events"),
        log_files("events"),
    );
    assert!(before.1 > 0, "the fixture lands events");
    for (sql, words) in [
        (
            "INSERT INTO events SELECT * FROM events",
            &["events is read-only", "clicklake ingest"][..],
        ),
        (
            "EXPLAIN ANALYZE INSERT INTO raw_events SELECT * FROM raw_events",
            &["raw_events is read-only"][..],
        ),
        ("DELETE FROM events", &["events is read-only"][..]),
        (
            "DROP TABLE events",
            &["events is one of the lake's tables"][..],
        ),
        (
            "CREATE OR REPLACE VIEW raw_events AS SELECT 1",
            &["raw_events is one of the lake's tables"][..],
        ),
    ] {
        let out = ctx.run(&["sql", "-c", sql]);
        assert_usage_error(&out, words);
        one_line(&out);
    }
    // The session's own tables stay writable.
    let own = ctx
        .query("CREATE TABLE t AS SELECT 1 AS a; INSERT INTO t VALUES (2); SELECT sum(a) FROM t");
    assert_eq!(own.last().map(String::as_str), Some("3"), "{own:?}");

    ctx.write_check("sneaky.sql", "INSERT INTO events SELECT * FROM events");
    let out = ctx.run(&[
        "check",
        "--checks-dir",
        ctx.path("checks").to_str().unwrap(),
    ]);
    assert_usage_error(&out, &["check sneaky", "sneaky.sql", "DML not supported"]);
    one_line(&out);

    let dir = ctx.override_model(
        "clean",
        "01_normalized.sql",
        "INSERT INTO raw_input SELECT * FROM raw_input",
    );
    let out = ctx.run(&["clean", "--full-refresh", "--sql-dir", &dir]);
    assert_usage_error(&out, &["01_normalized.sql", "DML not supported"]);
    one_line(&out);

    let after = (
        ctx.count("SELECT count(*) FROM raw_events"),
        ctx.count("SELECT count(*) FROM events"),
        log_files("raw_events"),
        log_files("events"),
    );
    assert_eq!(
        after, before,
        "(raw rows, events, raw commits, events commits)"
    );
}

/// `compact` and `vacuum` check the tables they are given before taking the lake's lock, so a
/// misspelt name writes nothing at all.
#[test]
fn an_unknown_table_to_compact_or_vacuum_is_a_usage_error_before_any_io() {
    let ctx = TestContext::new(Backend::Local);
    for command in ["compact", "vacuum"] {
        let out = ctx.run(&[command, "raw_event"]);
        assert_usage_error(&out, &["unknown table \"raw_event\"", "raw_events"]);
        one_line(&out);
    }
    assert!(!ctx.path("lake").exists(), "nothing written");
}

crate::both_backends!(
    maintenance_and_erasure_on_a_mistyped_lake_are_usage_errors_that_write_nothing,
    |backend: Backend| {
        // `erase` answered "recorded in erasures" for a lake URL that held nothing, creating
        // one; the person stayed in the real lake. `vacuum` created a lake with an `_audit` row.
        // `clean` and `build` said there was nothing to do, exit 0 on every cron tick, and left
        // a lock object behind.
        let ctx = TestContext::new(backend);
        let commands: [&[&str]; 7] = [
            &["clean"],
            &["build", "--json"],
            &["compact"],
            &["vacuum"],
            &["vacuum", "events"],
            &["erase", "--user-id", "u0001"],
            &["erase", "--email", "jane@example.com", "--dry-run"],
        ];
        for args in commands {
            let out = ctx.run(args);
            assert_usage_error(&out, &["no lake at", "raw_events"]);
            one_line(&out);
        }
        // The lake's directory (on s3s-fs, its prefix in the bucket) was never created.
        let root = ctx.table_dir("raw_events");
        let root = root.parent().unwrap();
        assert!(!root.exists(), "nothing written under {}", root.display());
    }
);

#[test]
fn a_stdout_closed_by_the_reader_ends_every_command_quietly_with_success() {
    // `clicklake tables | head -1`: `tables`, `status` and the others panicked with a backtrace
    // ("failed printing to stdout: Broken pipe") when the reader had gone.
    let ctx = TestContext::new(Backend::Local);
    let f = ctx.fixture("native/every_reason.ndjson");
    ctx.ok(&["ingest", f.to_str().unwrap()]);
    let f = f.to_str().unwrap();
    let commands: [&[&str]; 6] = [
        &["tables"],
        &["tables", "--json"],
        &["status"],
        &["ingest", "--json", f],
        &["sql", "-c", "SELECT * FROM raw_events"],
        &["generate", "--events", "3000", "--out", "-"],
    ];
    for args in commands {
        let mut child = ctx
            .std_cmd()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        // The reader goes before the command has opened the lake, let alone printed.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("error"),
            "{args:?}: {err}"
        );
    }
}
