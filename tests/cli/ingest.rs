//! `clicklake ingest`: validation, quarantine, the line-count invariant, exactly-once landing.

use crate::both_backends;
use crate::context::{stderr_of, Backend, TestContext};

/// (line, reason, words the detail must contain) for fixtures/native/every_reason.ndjson.
const EXPECTED_QUARANTINE: &[(u64, &str, &[&str])] = &[
    (2, "broken_json", &["not valid JSON"]),
    (3, "broken_json", &["not a JSON object"]),
    (4, "missing_event_id", &["event_id"]),
    (5, "missing_event_time", &["event_time"]),
    (6, "bad_timestamp", &["event_time", "2026-01-05 25:00"]),
    (
        7,
        "bad_timestamp",
        &[
            "event_time",
            "1767607200000",
            "bare number",
            "epoch digits are read from CSV only",
        ],
    ),
    (8, "bad_timestamp", &["received_at", "yesterday"]),
    (9, "unknown_event_type", &["event_type", "hover"]),
    (10, "price_not_number", &["price", "12,50"]),
    (11, "price_not_number", &["price", "12.50"]),
    (12, "negative_price", &["price", "-1.5"]),
    (13, "purchase_without_order_id", &["order_id"]),
    (
        14,
        "future_event_time",
        &["event_time", "2026-01-09T10:00:00Z", "received_at"],
    ),
    (15, "missing_anonymous_id", &["anonymous_id"]),
    (16, "invalid_field", &["quantity", "two"]),
];

both_backends!(every_quarantine_reason_with_detail, |backend: Backend| {
    let ctx = TestContext::new(backend);
    let file = ctx.fixture("native/every_reason.ndjson");
    let s = ctx.ingest_json(&[file.to_str().unwrap()]);
    assert_eq!(s["lines"], 20);
    assert_eq!(s["landed"], 3);
    assert_eq!(s["blank_lines"], 2);
    assert_eq!(s["quarantined"], 15);
    assert_eq!(s["balanced"], true);

    let rows = ctx.query(
        "SELECT line_number, reason, detail, raw, source_file FROM quarantine ORDER BY line_number",
    );
    assert_eq!(rows.len(), EXPECTED_QUARANTINE.len(), "{rows:#?}");
    let raw_lines: Vec<&str> = std::fs::read_to_string(&file)
        .unwrap()
        .leak()
        .lines()
        .collect();
    for (row, (line, reason, words)) in rows.iter().zip(EXPECTED_QUARANTINE) {
        assert!(
            row.starts_with(&format!("{line},{reason},")),
            "line {line}: {row}"
        );
        for w in *words {
            assert!(
                row.contains(w),
                "line {line}: detail should mention {w}: {row}"
            );
        }
        let original = raw_lines[*line as usize - 1].replace('"', "\"\"");
        assert!(
            row.contains(&original),
            "line {line}: raw must be the untouched line: {row}"
        );
        assert!(row.contains("every_reason.ndjson"), "{row}");
    }

    // Valid rows: normalised event_type, UTC time from an offset, extras kept in properties.
    let e18 = ctx.query(
        "SELECT event_type, CAST(event_time AS VARCHAR), CAST(event_date AS VARCHAR), segment, price, properties \
         FROM raw_events WHERE event_id = 'e18'",
    );
    assert_eq!(
        e18,
        vec![
            r#"add_to_cart,2026-01-05T10:00:00Z,2026-01-05,unsegmented,19.99,"{""utm_source"":""mail"",""nested"":{""a"":[1,2]}}""#
        ]
    );
    let e20 = ctx.query(
        "SELECT CAST(event_date AS VARCHAR), segment, received_at = ingested_at FROM raw_events WHERE event_id = 'e20'",
    );
    assert_eq!(
        e20,
        vec!["2026-01-04,anonymous,true"],
        "no received_at → ingest time"
    );
});

#[test]
fn an_event_time_long_before_its_received_at_is_stale() {
    let ctx = TestContext::new(Backend::Local);
    let line = |id: &str, event_time: &str, received_at: Option<&str>| {
        let received = received_at
            .map(|r| format!(r#","received_at":"{r}""#))
            .unwrap_or_default();
        format!(
            r#"{{"event_id":"{id}","event_time":"{event_time}"{received},"event_type":"page_view","anonymous_id":"a1"}}"#
        )
    };
    let lines = [
        // A device clock reset to 1970, sent today.
        line(
            "reset",
            "1970-01-01T00:03:12Z",
            Some("2026-03-02T10:00:00Z"),
        ),
        // Sent from an offline buffer 200 days late: late, not stale.
        line(
            "offline",
            "2025-08-14T10:00:00Z",
            Some("2026-03-02T10:00:00Z"),
        ),
        // A backfill of old exports without received_at is as old as it says.
        line("backfill", "2019-11-01T10:00:00Z", None),
    ];
    std::fs::write(ctx.path("in.ndjson"), lines.join("\n") + "\n").unwrap();
    let s = ctx.ingest_json(&[ctx.path("in.ndjson").to_str().unwrap()]);
    assert_eq!(
        (s["landed"].as_u64(), s["quarantined"].as_u64()),
        (Some(2), Some(1)),
        "{s}"
    );
    let rows = ctx.query("SELECT line_number, reason, detail FROM quarantine");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        rows[0].starts_with("1,stale_event_time,")
            && rows[0].contains("1970-01-01T00:03:12Z is more than 31536000s before received_at"),
        "{rows:?}"
    );
    // A tighter window is a setting.
    ctx.write_config("[ingest]\nmax_past_skew = \"30d\"\n");
    let s = ctx.ingest_json(&["--force", ctx.path("in.ndjson").to_str().unwrap()]);
    assert_eq!(
        (s["landed"].as_u64(), s["quarantined"].as_u64()),
        (Some(1), Some(2)),
        "{s}"
    );
    assert_eq!(
        ctx.count(
            "SELECT count(*) FROM quarantine WHERE reason = 'stale_event_time' AND line_number = 2"
        ),
        1
    );
    ctx.write_config("[ingest]\nmax_past_skew = \"a year\"\n");
    let out = ctx.run(&["ingest", ctx.path("in.ndjson").to_str().unwrap()]);
    crate::context::one_line_failure(&out, 2, &["ingest.max_past_skew"]);
}

#[test]
fn native_csv_with_quotes_epoch_millis_and_multiline_fields() {
    let ctx = TestContext::new(Backend::Local);
    let file = ctx.fixture("native/events.csv");
    let s = ctx.ingest_json(&[file.to_str().unwrap()]);
    assert_eq!(
        (s["lines"].as_u64(), s["landed"].as_u64()),
        (Some(7), Some(4)),
        "{s}"
    );
    assert_eq!(s["blank_lines"], 1);
    assert_eq!(s["quarantined_by_reason"]["price_not_number"], 1);
    assert_eq!(s["quarantined_by_reason"]["broken_json"], 1);
    let q = ctx.query("SELECT line_number, reason FROM quarantine ORDER BY 1");
    assert_eq!(q, vec!["6,price_not_number", "7,broken_json"]);
    let rows = ctx.query(
        "SELECT event_id, line_number, CAST(event_time AS VARCHAR), properties FROM raw_events ORDER BY event_id",
    );
    assert_eq!(
        rows,
        vec![
            r#"c1,2,2026-01-05T10:00:00Z,"{""note"":""hello""}""#,
            r#"c2,3,2026-01-05T10:00:00Z,"{""note"":""quoted, with comma""}""#,
            r#"c3,4,2026-01-05T10:05:00Z,"{""note"":""multi\nline note""}""#,
            r#"c6,9,2026-01-05T10:08:00Z,"{""note"":""say \""hi\""""}""#,
        ]
    );
    // Epoch digits in the unit their count gives; a clock never set (0) or seconds cut short
    // are quarantined, not landed in 1970.
    let epochs = ctx.path("epochs.csv");
    std::fs::write(
        &epochs,
        "event_id,event_time,event_type,anonymous_id\n\
         s,1767607200,page_view,a\nus,1767607200000000,page_view,a\n\
         zero,0,page_view,a\ncut,176760720,page_view,a\n",
    )
    .unwrap();
    ctx.ingest_json(&[epochs.to_str().unwrap()]);
    assert_eq!(
        ctx.query(
            "SELECT event_id, CAST(event_time AS VARCHAR) FROM raw_events \
             WHERE source_file LIKE '%epochs.csv' ORDER BY 1"
        ),
        vec!["s,2026-01-05T10:00:00Z", "us,2026-01-05T10:00:00Z"]
    );
    assert_eq!(
        ctx.query(
            "SELECT line_number, reason FROM quarantine WHERE source_file LIKE '%epochs.csv' \
             ORDER BY 1"
        ),
        vec!["4,bad_timestamp", "5,bad_timestamp"]
    );
}

fn assert_matches_manifest(ctx: &TestContext, s: &serde_json::Value, m: &serde_json::Value) {
    assert_eq!(s["lines"], m["lines_total"], "lines");
    assert_eq!(s["blank_lines"], m["blank_lines"], "blank");
    assert_eq!(s["landed"], m["valid_lines"], "landed");
    assert_eq!(s["quarantined"], m["quarantined"], "quarantined");
    assert_eq!(
        s["quarantined_by_reason"], m["quarantine_by_reason"],
        "by reason"
    );
    assert_eq!(s["balanced"], true);
    assert_eq!(
        ctx.count("SELECT count(*) FROM raw_events"),
        m["valid_lines"].as_u64().unwrap()
    );
    assert_eq!(
        ctx.count("SELECT count(*) FROM quarantine"),
        m["quarantined"].as_u64().unwrap()
    );
}

both_backends!(
    line_count_invariant_and_idempotent_reingest,
    |backend: Backend| {
        let ctx = TestContext::new(backend);
        let m = ctx.generate(
            "gen",
            &[
                "--events", "20000", "--files", "5", "--dirty", "--seed", "7",
            ],
        );
        // Every quarantine kind is present in the generated dirt.
        assert_eq!(
            m["quarantine_by_reason"].as_object().unwrap().len(),
            12,
            "{m}"
        );
        assert!(
            m["exact_duplicates"].as_u64().unwrap() > 0 && m["late_events"].as_u64().unwrap() > 0
        );
        let s = ctx.ingest_json(&[ctx.path("gen").to_str().unwrap()]);
        assert_eq!(s["files_read"], 5);
        assert_matches_manifest(&ctx, &s, &m);
        assert!(s["partitions_written"].as_u64().unwrap() >= 7, "{s}");

        // Again: nothing new lands, and it says so.
        let again = ctx.ok(&["ingest", ctx.path("gen").to_str().unwrap()]);
        assert!(
            again.contains("nothing new to ingest: 5 file(s) already ingested"),
            "{again}"
        );
        assert_matches_manifest(&ctx, &s, &m);

        // --force lands a file deliberately again.
        let one = ctx.path("gen/events-0001.ndjson");
        let forced = ctx.ingest_json(&["--force", one.to_str().unwrap()]);
        assert_eq!(forced["files_read"], 1);
        let total = ctx.count("SELECT count(*) FROM raw_events");
        assert_eq!(
            total,
            m["valid_lines"].as_u64().unwrap() + forced["landed"].as_u64().unwrap()
        );
        assert_eq!(ctx.count("SELECT count(*) FROM ingested_files"), 6);
    }
);

both_backends!(gzip_and_zstd_inputs, |backend: Backend| {
    let ctx = TestContext::new(backend);
    let gz = ctx.generate(
        "gz",
        &[
            "--events",
            "3000",
            "--files",
            "2",
            "--dirty",
            "--compress",
            "gzip",
        ],
    );
    let zst = ctx.generate(
        "zst",
        &[
            "--events",
            "3000",
            "--files",
            "2",
            "--dirty",
            "--compress",
            "zstd",
            "--seed",
            "9",
        ],
    );
    assert!(gz["files"][0].as_str().unwrap().ends_with(".ndjson.gz"));
    let s = ctx.ingest_json(&[
        ctx.path("gz").to_str().unwrap(),
        ctx.path("zst").to_str().unwrap(),
    ]);
    let want = |k: &str| gz[k].as_u64().unwrap() + zst[k].as_u64().unwrap();
    assert_eq!(s["lines"].as_u64().unwrap(), want("lines_total"));
    assert_eq!(s["landed"].as_u64().unwrap(), want("valid_lines"));
    assert_eq!(s["quarantined"].as_u64().unwrap(), want("quarantined"));
    assert_eq!(
        ctx.count("SELECT count(*) FROM raw_events"),
        want("valid_lines")
    );
});

#[test]
fn csv_generated_data_lands_like_ndjson() {
    let ctx = TestContext::new(Backend::Local);
    let m = ctx.generate(
        "csv",
        &[
            "--events",
            "5000",
            "--files",
            "2",
            "--dirty",
            "--format",
            "csv",
            "--compress",
            "zstd",
        ],
    );
    let s = ctx.ingest_json(&[ctx.path("csv").to_str().unwrap()]);
    assert_matches_manifest(&ctx, &s, &m);
}

both_backends!(stdin_is_ingested_once_per_content, |backend: Backend| {
    let ctx = TestContext::new(backend);
    let m = ctx.generate("gen", &["--events", "2000", "--files", "1", "--dirty"]);
    let data = std::fs::read(ctx.path("gen/events-0001.ndjson")).unwrap();
    let out = ctx
        .cmd()
        .args(["ingest", "--json", "-"])
        .write_stdin(data.clone())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["landed"], m["valid_lines"]);
    assert_eq!(
        ctx.count("SELECT count(DISTINCT source_file) FROM raw_events"),
        1
    );
    assert_eq!(
        ctx.query("SELECT DISTINCT source_file FROM raw_events"),
        vec!["-"]
    );
    // The same bytes again: skipped.
    let out = ctx
        .cmd()
        .args(["ingest", "-"])
        .write_stdin(data.clone())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing new"),
        "{out:?}"
    );
    // Named by a path (`/dev/stdin`, as `producer | clicklake ingest /dev/stdin` does), the
    // pipe is stdin all the same: the same bytes are skipped, not landed a second time.
    for path in ["/dev/stdin", "/dev/fd/0"] {
        let out = ctx
            .cmd()
            .args(["ingest", path])
            .write_stdin(data.clone())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("nothing new"),
            "{path}: {out:?}"
        );
    }
    assert_eq!(
        ctx.count("SELECT count(*) FROM raw_events"),
        m["valid_lines"].as_u64().unwrap()
    );
    // Another pipe by its path could not be told from an earlier content: refused.
    let fifo = ctx.path("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo (coreutils) is needed");
    crate::context::one_line_failure(
        &ctx.run(&["ingest", fifo.to_str().unwrap()]),
        2,
        &["not a regular file", "ingest -"],
    );
});

#[test]
fn s3_inbox_prefix_and_glob() {
    let ctx = TestContext::new(Backend::S3);
    let m = ctx.generate(
        "gen",
        &[
            "--events",
            "4000",
            "--files",
            "3",
            "--dirty",
            "--compress",
            "gzip",
        ],
    );
    for f in m["files"].as_array().unwrap() {
        let name = f.as_str().unwrap();
        ctx.upload_to_inbox(
            &ctx.path(&format!("gen/{name}")),
            &format!("incoming/2026/{name}"),
        );
    }
    let s = ctx.ingest_json(&["s3://inbox/incoming/2026/events-0001*"]);
    assert_eq!(s["files_read"], 1);
    let s2 = ctx.ingest_json(&["s3://inbox/incoming/"]);
    assert_eq!(
        (s2["files_read"].as_u64(), s2["files_skipped"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        ctx.count("SELECT count(*) FROM raw_events"),
        m["valid_lines"].as_u64().unwrap()
    );
    let files = ctx.query("SELECT DISTINCT source_file FROM ingested_files ORDER BY 1");
    assert_eq!(files[0], "s3://inbox/incoming/2026/events-0001.ndjson.gz");
}

#[test]
fn a_million_rows_under_a_small_memory_limit() {
    let ctx = TestContext::new(Backend::Local);
    // 1M short valid lines (~150 MB), written here so the test does not depend on generate.
    let path = ctx.path("big.ndjson");
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for i in 0..1_000_000u64 {
            writeln!(
                w,
                r#"{{"event_id":"big-{i}","event_time":"2026-01-0{}T10:{:02}:00Z","event_type":"product_view","anonymous_id":"a{}","product_id":"p{}","price":{}.99}}"#,
                1 + i % 7,
                i % 60,
                i % 5000,
                i % 997,
                i % 300
            )
            .unwrap();
        }
    }
    let mut cmd = ctx.std_cmd();
    cmd.args([
        "--memory-limit",
        "128MiB",
        "ingest",
        "--json",
        path.to_str().unwrap(),
    ]);
    let (status, stdout, max_rss_kb) = crate::context::run_with_rusage(cmd);
    assert!(status.success(), "ingest failed");
    let s: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(s["landed"], 1_000_000);
    assert_eq!(ctx.count("SELECT count(*) FROM raw_events"), 1_000_000);
    assert_eq!(
        ctx.count("SELECT count(DISTINCT event_id) FROM raw_events"),
        1_000_000
    );
    // The input alone is ~150 MB; streaming keeps the process well under it plus the runtime.
    assert!(
        max_rss_kb < 400 * 1024,
        "peak RSS {} MiB",
        max_rss_kb / 1024
    );
}

/// A backfill spreads its rows over hundreds of day × segment partitions. Ingest and clean
/// write them one file each, without holding a file open per partition (1.3 MB each before it
/// holds a row: about 800 MB here, before partitions waited for their rows in memory).
#[test]
fn a_backfill_over_a_year_of_partitions_stays_within_the_memory_limit() {
    let ctx = TestContext::new(Backend::Local);
    ctx.generate(
        "year",
        &[
            "--events",
            "20000",
            "--files",
            "2",
            "--days",
            "365",
            "--start",
            "2025-11-01",
            "--dirty",
        ],
    );
    let year = ctx.path("year");
    let files_and_partitions = |table: &str| {
        let tables: serde_json::Value =
            serde_json::from_str(ctx.ok(&["tables", "--json"]).trim()).unwrap();
        let t = tables
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == table)
            .unwrap()
            .clone();
        (
            t["files"].as_u64().unwrap(),
            t["partitions"].as_u64().unwrap(),
        )
    };
    for (args, limit_mib) in [
        (vec!["ingest", "--json", year.to_str().unwrap()], 400),
        (vec!["clean", "--json"], 400),
    ] {
        let mut cmd = ctx.std_cmd();
        cmd.args(["--memory-limit", "256MiB"]).args(&args);
        let (status, _, max_rss_kb) = crate::context::run_with_rusage(cmd);
        assert!(status.success(), "{args:?} failed");
        assert!(
            max_rss_kb < limit_mib * 1024,
            "{args:?}: peak RSS {} MiB",
            max_rss_kb / 1024
        );
    }
    let (files, partitions) = files_and_partitions("raw_events");
    assert!(partitions > 600, "{partitions} partitions");
    assert_eq!(files, partitions);
    assert_eq!(
        ctx.count("SELECT count(*) FROM (SELECT DISTINCT event_date, segment FROM raw_events)"),
        partitions
    );
    assert_eq!(files_and_partitions("events"), (partitions, partitions));
    assert_eq!(ctx.count("SELECT count(*) FROM events"), 20_000);
}

/// Lines the flat reader takes and lines it hands to serde_json land alike; a line that is not
/// UTF-8 is quarantined as broken JSON with that said.
#[test]
fn escaped_nested_and_non_utf8_lines() {
    let ctx = TestContext::new(Backend::Local);
    let head =
        r#""event_time":"2026-01-05T10:00:00Z","event_type":"page_view","anonymous_id":"a1""#;
    let mut bytes = Vec::new();
    for line in [
        format!(r#"{{"event_id":"flat",{head},"page_url":"https://x.example/a b","n":-1.5e2}}"#),
        format!(r#"  {{ "event_id" : "spaced" , {head} , "ok" : true }}  "#),
        format!(r#"{{"event_id":"esc\"aped \u00e9",{head},"brand":"a\\b"}}"#),
        format!(r#"{{"event_id":"nested",{head},"ctx":{{"a":[1,{{"b":null}}]}}}}"#),
    ] {
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(b"{\"event_id\":\"bad \xff byte\",");
    bytes.extend_from_slice(head.as_bytes());
    bytes.extend_from_slice(b"}\n");
    let file = ctx.path("mixed.ndjson");
    std::fs::write(&file, bytes).unwrap();

    let s = ctx.ingest_json(&[file.to_str().unwrap()]);
    assert_eq!(
        (s["landed"].as_u64(), s["quarantined"].as_u64()),
        (Some(4), Some(1)),
        "{s}"
    );
    assert_eq!(
        ctx.query(
            "SELECT event_id, brand, page_url, properties FROM raw_events ORDER BY line_number"
        ),
        vec![
            r#"flat,,https://x.example/a b,"{""n"":-1.5e2}""#,
            r#"spaced,,,"{""ok"":true}""#,
            r#""esc""aped é",a\b,,"#,
            r#"nested,,,"{""ctx"":{""a"":[1,{""b"":null}]}}""#,
        ]
    );
    assert_eq!(
        ctx.query("SELECT line_number, reason, detail FROM quarantine"),
        vec!["5,broken_json,line is not valid UTF-8"]
    );
}

#[test]
fn the_quarantine_gate_fails_a_producer_with_too_many_invalid_rows() {
    let ctx = TestContext::new(Backend::Local);
    let m = ctx.generate("gen", &["--events", "2000", "--dirty", "--seed", "9"]);
    // The generator's own bookkeeping: every dirty line it wrote is invalid.
    let invalid: u64 = m["quarantine_by_reason"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    let valid = m["valid_lines"].as_u64().unwrap();
    assert!(invalid > 0);
    let gen = ctx.path("gen").display().to_string();
    let out = ctx.run(&["ingest", "--max-quarantined", "0", &gen]);
    let err = crate::context::one_line_failure(
        &out,
        1,
        &[
            &format!("{invalid} of {} rows", valid + invalid),
            "max_quarantined 0",
        ],
    );
    assert!(err.contains("the valid rows landed"), "{err}");
    // The gate judges; it does not hold back the valid rows or the evidence.
    assert_eq!(ctx.count("SELECT count(*) FROM raw_events"), valid);
    assert_eq!(ctx.count("SELECT count(*) FROM quarantine"), invalid);
    // Under a share it allows, the same batch passes, and --json says so.
    let share = 100.0 * invalid as f64 / (valid + invalid) as f64;
    let loose = format!("{:.1}%", share + 0.5);
    let s = ctx.ingest_json(&["--force", "--max-quarantined", &loose, &gen]);
    assert_eq!(s["invalid"], invalid);
    assert_eq!(s["over_max_quarantined"], false);
    let tight = format!("{:.1}%", share - 0.5);
    let out = ctx.run(&[
        "ingest",
        "--force",
        "--json",
        "--max-quarantined",
        &tight,
        &gen,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["over_max_quarantined"], true);
    // Rows a source mapping rejects on purpose (GA4's automatic events) are not invalid.
    let ga4 = ctx.fixture("sources/ga4-obfuscated-sample.ndjson");
    let s = ctx.ingest_json(&[
        "--source",
        "ga4",
        "--max-quarantined",
        "0",
        ga4.to_str().unwrap(),
    ]);
    assert!(
        s["quarantined_by_reason"]["rejected_by_source"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(s["invalid"], 0);
    // A limit that is not one: exit 2 before anything is read.
    let out = ctx.run(&["ingest", "--max-quarantined", "5x", &gen]);
    assert_eq!(out.status.code(), Some(2));
    // The config key takes a TOML integer as well as a string.
    ctx.write_config("[ingest]\nmax_quarantined = 0\n");
    let out = ctx.run(&["ingest", "--force", &gen]);
    crate::context::one_line_failure(&out, 1, &["max_quarantined 0"]);
}

#[test]
fn a_run_over_the_quarantine_gate_still_cleans_and_builds_and_exits_1() {
    let ctx = TestContext::new(Backend::Local);
    let m = ctx.generate("inbox", &["--events", "2000", "--dirty", "--seed", "9"]);
    std::fs::remove_file(ctx.path("inbox/_manifest.json")).ok();
    ctx.write_config("[ingest]\nmax_quarantined = \"0.1%\"\n");
    let out = ctx.run(&["run", "--inbox", "inbox", "--no-check"]);
    crate::context::one_line_failure(&out, 1, &["max_quarantined 0.1%"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("OVER max_quarantined 0.1%"), "{stdout}");
    // The valid rows went all the way through.
    assert_eq!(
        ctx.count("SELECT count(*) FROM raw_events"),
        m["valid_lines"].as_u64().unwrap()
    );
    assert!(ctx.count("SELECT count(*) FROM fact_sessions") > 0);
    assert_eq!(
        ctx.query("SELECT outcome FROM _runs"),
        vec!["checks_failed".to_string()]
    );
    // The next tick has nothing new: success.
    ctx.ok(&["run", "--inbox", "inbox", "--no-check"]);
    // A bad limit in the file is a configuration error naming the key.
    ctx.write_config("[ingest]\nmax_quarantined = \"lots\"\n");
    let out = ctx.run(&["run", "--inbox", "inbox"]);
    crate::context::one_line_failure(&out, 2, &["ingest.max_quarantined"]);
}

both_backends!(
    a_csv_file_with_an_unusable_header_is_quarantined_whole_and_stops_nothing,
    |backend: Backend| {
        // One such file in a cron inbox stopped every tick with exit 2, the good files with it.
        let ctx = TestContext::new(backend);
        let m = ctx.generate("inbox", &["--events", "300", "--files", "1", "--seed", "3"]);
        std::fs::remove_file(ctx.path("inbox/_manifest.json")).ok();
        let row = "2026-11-20T10:00:00Z,page_view,a1";
        // A column named twice; and a file without a header (its first row taken for one).
        std::fs::write(
            ctx.path("inbox/twice.csv"),
            format!("event_id,event_id,event_time,event_type,anonymous_id\nd1,d2,{row}\n"),
        )
        .unwrap();
        std::fs::write(
            ctx.path("inbox/headless.csv"),
            format!("h1,{row}\nh2,{row}\r\nh3,{row}"),
        )
        .unwrap();
        let inbox = ctx.inbox_of(&["events-0001.ndjson", "twice.csv", "headless.csv"]);
        let s = ctx.run_inbox_json(&inbox);
        let ingest = &s["ingest"];
        let valid = m["valid_lines"].as_u64().unwrap();
        // Every line of both files, each first line included, is accounted for in quarantine.
        assert_eq!(ingest["landed"].as_u64(), Some(valid), "{ingest}");
        assert_eq!(ingest["quarantined"].as_u64(), Some(5), "{ingest}");
        assert_eq!(ingest["lines"].as_u64(), Some(valid + 5), "{ingest}");
        assert_eq!(
            ctx.query(
                "SELECT regexp_replace(source_file, '.*/', ''), line_number, reason, \
                 position('not a usable CSV header' IN detail) > 0, raw FROM quarantine \
                 ORDER BY 1, 2"
            ),
            vec![
                format!("headless.csv,1,broken_json,true,\"h1,{row}\""),
                format!("headless.csv,2,broken_json,true,\"h2,{row}\""),
                format!("headless.csv,3,broken_json,true,\"h3,{row}\""),
                "twice.csv,1,broken_json,true,\"event_id,event_id,event_time,event_type,anonymous_id\""
                    .to_string(),
                format!("twice.csv,2,broken_json,true,\"d1,d2,{row}\""),
            ]
        );
        assert_eq!(ctx.count("SELECT count(*) FROM events"), valid);
        // The files are done: the next tick has nothing new.
        let s = ctx.run_inbox_json(&inbox);
        assert_eq!(s["ingest"]["files_read"], 0, "{s}");
    }
);

both_backends!(
    a_truncated_compressed_file_lands_what_decodes_and_quarantines_the_rest,
    |backend: Backend| {
        // A cut-off .gz in the inbox stopped every run at it (exit 3), the good files with it;
        // an object in an s3:// inbox never changes, so it would have stopped them for good.
        use std::io::Write as _;
        let ctx = TestContext::new(backend);
        ctx.generate("gen", &["--events", "6000", "--files", "3", "--seed", "5"]);
        let files = crate::context::ndjson_files(&ctx.path("gen"));
        std::fs::create_dir_all(ctx.path("inbox")).unwrap();
        std::fs::copy(&files[0], ctx.path("inbox/whole.ndjson")).unwrap();
        let text = std::fs::read(&files[1]).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&text).unwrap();
        let gz = gz.finish().unwrap();
        std::fs::write(ctx.path("inbox/cut.ndjson.gz"), &gz[..gz.len() / 2]).unwrap();
        let zst = zstd::encode_all(&std::fs::read(&files[2]).unwrap()[..], 3).unwrap();
        std::fs::write(ctx.path("inbox/cut.ndjson.zst"), &zst[..zst.len() / 2]).unwrap();
        let inbox = ctx.inbox_of(&["whole.ndjson", "cut.ndjson.gz", "cut.ndjson.zst"]);
        let s = ctx.run_inbox_json(&inbox);
        let ingest = &s["ingest"];
        assert_eq!(ingest["files_read"], 3, "{ingest}");
        assert_eq!(ingest["balanced"], true, "{ingest}");
        let whole_lines = std::fs::read_to_string(&files[0]).unwrap().lines().count() as u64;
        for (file, kind, all) in [
            ("cut.ndjson.gz", "gzip", &files[1]),
            ("cut.ndjson.zst", "zstd", &files[2]),
        ] {
            let all = std::fs::read_to_string(all).unwrap().lines().count() as u64;
            let landed = ctx.count(&format!(
                "SELECT count(*) FROM raw_events WHERE source_file LIKE '%/{file}'"
            ));
            // One row for the unreadable rest, after the last line that decoded (a cut line
            // before it is quarantined as broken JSON).
            let rows = ctx.query(&format!(
                "SELECT line_number, raw FROM quarantine WHERE source_file LIKE '%/{file}' \
                 AND detail LIKE '%{kind} stream is truncated or corrupt%'"
            ));
            assert_eq!(rows.len(), 1, "{file}: {rows:?}");
            let at: u64 = rows[0].trim_end_matches(',').parse().unwrap();
            let before = ctx.count(&format!(
                "SELECT count(*) FROM quarantine WHERE source_file LIKE '%/{file}'"
            )) - 1;
            assert_eq!(
                at,
                landed + before + 1,
                "{file}: the row after the last line read"
            );
            assert!(landed > 0 && landed < all, "{file}: {landed} of {all}");
        }
        assert_eq!(
            ctx.count("SELECT count(*) FROM raw_events WHERE source_file LIKE '%/whole.ndjson'"),
            whole_lines
        );
        // The files are done: the next run has nothing new.
        let s = ctx.run_inbox_json(&inbox);
        assert_eq!(s["ingest"]["files_read"], 0, "{s}");
    }
);

#[test]
fn a_file_in_a_format_clicklake_does_not_read_is_one_quarantine_row() {
    // A Parquet export or a bzip2 file in the inbox was read as lines: thousands of
    // `broken_json` rows of binary garbage that said nothing of what the file was.
    let ctx = TestContext::new(Backend::Local);
    let f = ctx.fixture("native/every_reason.ndjson");
    ctx.ok(&["ingest", f.to_str().unwrap()]);
    std::fs::create_dir_all(ctx.path("odd")).unwrap();
    let parquet = std::fs::read_dir(ctx.table_dir("raw_events"))
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "parquet"))
        .expect("a data file of raw_events");
    std::fs::copy(&parquet, ctx.path("odd/export.parquet")).unwrap();
    std::fs::write(
        ctx.path("odd/events.ndjson.bz2"),
        b"BZh91AY&SY\x00\x01\x02junk",
    )
    .unwrap();
    std::fs::write(
        ctx.path("odd/events.ndjson.xz"),
        b"\xfd7zXZ\x00\x00\x04junk",
    )
    .unwrap();
    let s = ctx.ingest_json(&[ctx.path("odd").to_str().unwrap()]);
    assert_eq!(
        (s["lines"].as_u64(), s["quarantined"].as_u64()),
        (Some(3), Some(3)),
        "{s}"
    );
    assert_eq!(
        ctx.query(
            "SELECT regexp_replace(source_file, '.*/', ''), line_number, reason, detail \
             FROM quarantine WHERE source_file LIKE '%/odd/%' ORDER BY 1"
        ),
        [
            ("events.ndjson.bz2", "bzip2-compressed"),
            ("events.ndjson.xz", "xz-compressed"),
            ("export.parquet", "a Parquet file"),
        ]
        .map(|(file, what)| format!(
            "{file},1,broken_json,\"the file is {what}, not NDJSON or CSV (plain, gzip or zstd): \
             nothing in it was read\""
        ))
        .to_vec()
    );
    // From stdin it cannot be recorded as done unread: exit 2, nothing landed.
    let out = ctx
        .cmd()
        .args(["ingest", "-"])
        .write_stdin(std::fs::read(&parquet).unwrap())
        .output()
        .unwrap();
    crate::context::one_line_failure(&out, 2, &["stdin", "a Parquet file"]);
}

/// A line over `max_line_size` is quarantined by its beginning and never held whole: a 256 MB
/// line took 1.5 GB of memory and five seconds before, and quarantined the whole of itself. In
/// CSV, a quote that never closes took every later line of the file into one quarantined record.
#[test]
fn an_overlong_line_or_an_open_csv_quote_costs_one_row_in_bounded_memory() {
    let ctx = TestContext::new(Backend::Local);
    let head =
        r#""event_time":"2026-01-05T10:00:00Z","event_type":"page_view","anonymous_id":"a1""#;
    let long = ctx.path("long.ndjson");
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(&long).unwrap());
        writeln!(w, r#"{{"event_id":"before",{head}}}"#).unwrap();
        write!(w, r#"{{"event_id":"huge",{head},"blob":""#).unwrap();
        let block = vec![b'x'; 1 << 20];
        for _ in 0..256 {
            w.write_all(&block).unwrap();
        }
        writeln!(w, r#""}}"#).unwrap();
        writeln!(w, r#"{{"event_id":"after",{head}}}"#).unwrap();
    }
    let long_len = format!(r#"{{"event_id":"huge",{head},"blob":""#).len() + (256 << 20) + 2;
    let mut cmd = ctx.std_cmd();
    cmd.args(["ingest", "--json", long.to_str().unwrap()]);
    let (status, stdout, max_rss_kb) = crate::context::run_with_rusage(cmd);
    assert!(status.success(), "ingest failed");
    let s: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(
        (s["landed"].as_u64(), s["quarantined"].as_u64()),
        (Some(2), Some(1)),
        "{s}"
    );
    assert!(
        max_rss_kb < 320 * 1024,
        "peak RSS {} MiB",
        max_rss_kb / 1024
    );
    assert_eq!(
        ctx.query(
            "SELECT line_number, reason, detail, length(raw), substr(raw, 1, 18) FROM quarantine"
        ),
        [format!(
            "2,broken_json,\"the line is {long_len} bytes, over max_line_size (16.0 MiB): raw keeps \
             its first 8192 bytes\",8192,\"{{\"\"event_id\"\":\"\"huge\"\"\""
        )]
    );
    assert_eq!(
        ctx.query("SELECT event_id FROM raw_events ORDER BY event_id"),
        ["after", "before"]
    );

    // CSV: a quote opened on line 3 never closes. In a file longer than max_line_size, and at
    // the end of a short one, only that line is quarantined and every line after it lands.
    ctx.write_config("[ingest]\nmax_line_size = \"64KiB\"\n");
    std::fs::create_dir_all(ctx.path("csv")).unwrap();
    let row = |id: &str, url: &str| format!("{id},2026-01-05T10:00:00Z,page_view,a1,{url}\n");
    let mut big = String::from("event_id,event_time,event_type,anonymous_id,page_url\n");
    big += &row("b1", "https://x.example/1");
    big += &row("b2", "\"https://x.example/oops");
    for i in 3..3000 {
        big += &row(
            &format!("b{i}"),
            "\"https://x.example/a, \"\"quoted\"\" one\"",
        );
    }
    assert!(big.len() > 128 << 10);
    std::fs::write(ctx.path("csv/big.csv"), &big).unwrap();
    let mut small = String::from("event_id,event_time,event_type,anonymous_id,page_url\n");
    for (id, url) in [("s1", "u1"), ("s2", "\"u2"), ("s3", "u3"), ("s4", "\"u4\"")] {
        small += &row(id, url);
    }
    std::fs::write(ctx.path("csv/small.csv"), &small).unwrap();
    let s = ctx.ingest_json(&[ctx.path("csv").to_str().unwrap()]);
    assert_eq!(crate::context::line_counts(&s), (3003, 3001, 2), "{s}");
    assert_eq!(
        ctx.query(
            "SELECT regexp_replace(source_file, '.*/', ''), line_number, detail, raw \
             FROM quarantine WHERE source_file LIKE '%.csv' ORDER BY 1"
        ),
        [
            "big.csv,3,CSV row has an unterminated quote,\
             \"b2,2026-01-05T10:00:00Z,page_view,a1,\"\"https://x.example/oops\"",
            "small.csv,3,CSV row has an unterminated quote,\
             \"s2,2026-01-05T10:00:00Z,page_view,a1,\"\"u2\"",
        ]
    );
    assert_eq!(
        ctx.query(
            "SELECT count(*), count(DISTINCT page_url) FROM raw_events WHERE regexp_like(event_id, '^b[0-9]+$')"
        ),
        ["2998,2"]
    );
    assert_eq!(
        ctx.query("SELECT event_id, page_url FROM raw_events WHERE event_id LIKE 's%' ORDER BY 1"),
        ["s1,u1", "s3,u3", "s4,u4"]
    );
    // A size that is not one, or outside the range, is a configuration error naming the key.
    ctx.write_config("[ingest]\nmax_line_size = \"10B\"\n");
    let out = ctx.run(&["ingest", "--force", long.to_str().unwrap()]);
    crate::context::one_line_failure(&out, 2, &["ingest.max_line_size"]);
}

/// A JSON array file (on one line or pretty-printed, plain or gzip) is one row per element, as
/// DuckDB reads it; before, the whole file was one `broken_json` row. A UTF-8 byte order mark
/// (Excel's "CSV UTF-8", PowerShell) no longer breaks an NDJSON file's first line.
#[test]
fn a_json_array_file_is_one_row_per_element() {
    let ctx = TestContext::new(Backend::Local);
    std::fs::create_dir_all(ctx.path("in")).unwrap();
    let ev = |id: &str| {
        format!(
            r#"{{"event_id":"{id}","event_time":"2026-01-05T10:00:00Z","event_type":"page_view","anonymous_id":"a1"}}"#
        )
    };
    let compact = format!("[{},{}, {}]", ev("c1"), ev("c2"), ev("c3"));
    std::fs::write(ctx.path("in/compact.json"), compact).unwrap();
    let pretty = "\u{feff}[\n  {\n    \"event_id\": \"p1\",\n    \"event_time\": \"2026-01-05T10:00:00Z\",\n    \
                  \"event_type\": \"page_view\",\n    \"anonymous_id\": \"a1\",\n    \"page_url\": \"https://x.example/[a],{b}\"\n  },\n  \
                  {\"event_id\": \"p2\", \"anonymous_id\": \"a1\"},\n  \
                  {\"event_id\": \"p3\", \"event_time\": \"2026-01-05T10:00:00Z\", \"event_type\": \"page_view\", \
                  \"anonymous_id\": \"a1\", \"page_url\": \"line\nbreak\"},\n  [1, 2],\n  \
                  {\"event_id\": \"p5\", \"event_time\": \"2026-01-05T10:00:00Z\", \"event_type\": \"page_view\", \
                  \"anonymous_id\": \"a1\", \"properties\": {\"nested\": [{\"k\": \"v\"}]}}\n]\n";
    {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(pretty.as_bytes()).unwrap();
        std::fs::write(ctx.path("in/pretty.json.gz"), gz.finish().unwrap()).unwrap();
    }
    std::fs::write(ctx.path("in/bom.ndjson"), format!("\u{feff}{}\n", ev("n1"))).unwrap();
    // NDJSON whose first line is an array is NDJSON: that line is quarantined, and the lines
    // after it keep their numbers (read as an array file it counted 1 and 2 as lines of their
    // own, and the file as 3 lines long).
    std::fs::write(
        ctx.path("in/mixed.ndjson"),
        format!("[1, 2]\n{}\n", ev("m1")),
    )
    .unwrap();
    let s = ctx.ingest_json(&[ctx.path("in").to_str().unwrap()]);
    assert_eq!(crate::context::line_counts(&s), (11, 7, 4), "{s}");
    assert_eq!(
        ctx.query("SELECT event_id, page_url FROM raw_events ORDER BY 1"),
        [
            "c1,",
            "c2,",
            "c3,",
            "m1,",
            "n1,",
            "p1,\"https://x.example/[a],{b}\"",
            "p5,"
        ]
    );
    // The line number of an element is its position in the array.
    assert_eq!(
        ctx.query(
            "SELECT regexp_replace(source_file, '.*/', ''), line_number, reason, \
             regexp_like(detail, 'control character') FROM quarantine ORDER BY 2"
        ),
        [
            "mixed.ndjson,1,broken_json,false",
            "pretty.json.gz,2,missing_event_time,false",
            "pretty.json.gz,3,broken_json,true",
            "pretty.json.gz,4,broken_json,false",
        ]
    );
}

/// A CSV file delimited by `;` (a European spreadsheet's export), a tab or `|` lands like one
/// delimited by commas: its header names the delimiter, as DuckDB's sniffer finds it. Before,
/// every line of it was quarantined for a header "without an event_id column".
#[test]
fn a_csv_header_delimited_by_semicolons_tabs_or_pipes_gives_the_delimiter() {
    let ctx = TestContext::new(Backend::Local);
    std::fs::create_dir_all(ctx.path("in")).unwrap();
    for (name, d) in [("semi.csv", ";"), ("tab.csv", "\t"), ("pipe.csv", "|")] {
        let cols = [
            "event_id",
            "event_time",
            "event_type",
            "anonymous_id",
            "page_url",
        ];
        let row = [
            name,
            "2026-01-05T10:00:00Z",
            "page_view",
            "a1",
            "https://x.example/a,b",
        ];
        std::fs::write(
            ctx.path(&format!("in/{name}")),
            format!("{}\n{}\n", cols.join(d), row.join(d)),
        )
        .unwrap();
    }
    // A header that is not one in any of them is still quarantined with the reason.
    std::fs::write(ctx.path("in/none.csv"), "id;time;type\n1;2;3\n").unwrap();
    let s = ctx.ingest_json(&[ctx.path("in").to_str().unwrap()]);
    assert_eq!(
        (s["landed"].as_u64(), s["quarantined"].as_u64()),
        (Some(3), Some(2)),
        "{s}"
    );
    assert_eq!(
        ctx.query("SELECT event_id, page_url FROM raw_events ORDER BY 1"),
        [
            "pipe.csv,\"https://x.example/a,b\"",
            "semi.csv,\"https://x.example/a,b\"",
            "tab.csv,\"https://x.example/a,b\""
        ]
    );
    assert_eq!(
        ctx.count(
            "SELECT count(*) FROM quarantine WHERE source_file LIKE '%none.csv' \
             AND detail LIKE '%header has no event_id column (columns: id;time;type)%'"
        ),
        2
    );
}

// A log a producer keeps appending to, ingested on every cron tick: each tick landed the whole
// file again (a new size, so a new identity), so a day-long log was landed hundreds of times.
// Now only the appended lines are read, with their line numbers, and a line the producer was
// still writing is read again whole once it is complete.
both_backends!(a_grown_file_lands_only_its_appended_lines, |backend| {
    let ctx = TestContext::new(backend);
    let line = crate::context::event_line;
    std::fs::create_dir_all(ctx.path("logs")).unwrap();
    let log = ctx.path("logs/app.ndjson");
    let dir = ctx.path("logs");
    let dir = dir.to_str().unwrap();
    let append = |text: &str| crate::context::append_to(&log, text.as_bytes());
    let e3 = line("e3");
    let (e3_head, e3_rest) = e3.split_at(30);
    std::fs::write(&log, line("e1") + &line("e2") + e3_head).unwrap();
    let lines = |s: &serde_json::Value| {
        (
            s["files_read"].as_u64().unwrap(),
            s["lines"].as_u64().unwrap(),
            s["landed"].as_u64().unwrap(),
            s["quarantined"].as_u64().unwrap(),
        )
    };
    // The buffer flushed mid-line: the cut line is quarantined for now.
    let s = ctx.ingest_json(&[dir]);
    assert_eq!(lines(&s), (1, 3, 2, 1), "{s}");
    assert_eq!(s["files_appended"], 0, "{s}");
    // Nothing changed: nothing is read.
    assert_eq!(lines(&ctx.ingest_json(&[dir])), (0, 0, 0, 0));

    append(&(e3_rest.to_string() + &line("e4") + "{\"event_time\":\"2026-01-05T10:00:00Z\"}\n"));
    let s = ctx.ingest_json(&[dir]);
    // From the cut line (3, now whole) on: e3, e4 and one without an event_id.
    assert_eq!(lines(&s), (1, 3, 2, 1), "{s}");
    assert_eq!(s["files_appended"], 1, "{s}");
    assert_eq!(s["files"][0]["from_line"], 3, "{s}");
    assert!(
        s["files"][0]["status"]
            .as_str()
            .unwrap()
            .contains("appended"),
        "{s}"
    );
    assert_eq!(
        ctx.query("SELECT event_id, line_number FROM raw_events ORDER BY 2"),
        ["e1,1", "e2,2", "e3,3", "e4,4"]
    );
    assert_eq!(
        ctx.query("SELECT line_number, reason FROM quarantine ORDER BY 1"),
        ["3,broken_json", "5,missing_event_id"]
    );

    // Touched, not changed: nothing appended, nothing read.
    std::fs::File::options()
        .write(true)
        .open(&log)
        .and_then(|f| {
            f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60))
        })
        .unwrap();
    let s = ctx.ingest_json(&[dir]);
    assert_eq!(lines(&s), (0, 0, 0, 0), "{s}");
    assert!(
        s["files"][0]["status"]
            .as_str()
            .unwrap()
            .contains("nothing appended"),
        "{s}"
    );

    // Rotated as logrotate does: renamed, and a new file created under the name. The renamed
    // file is the same file (inode): read on from where it was read; the new one whole.
    append(&line("e5"));
    std::fs::rename(&log, ctx.path("logs/app.ndjson.1")).unwrap();
    std::fs::write(&log, line("n1") + &line("n2")).unwrap();
    let s = ctx.ingest_json(&[dir]);
    assert_eq!(lines(&s), (2, 3, 3, 0), "{s}");
    assert_eq!(s["files_appended"], 1, "{s}");
    assert_eq!(
        ctx.query(
            "SELECT event_id, line_number, source_file LIKE '%app.ndjson.1' FROM raw_events \
             WHERE event_id IN ('e5', 'n1', 'n2') ORDER BY 1"
        ),
        ["e5,6,true", "n1,1,false", "n2,2,false"]
    );

    // logrotate's `compress` later turns app.ndjson.1 into app.ndjson.2.gz: a new file with
    // lines already landed, left out by name.
    {
        use std::io::Write;
        let rotated = ctx.path("logs/app.ndjson.1");
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(ctx.path("logs/app.ndjson.2.gz")).unwrap(),
            flate2::Compression::default(),
        );
        gz.write_all(&std::fs::read(&rotated).unwrap()).unwrap();
        gz.finish().unwrap();
        std::fs::remove_file(rotated).unwrap();
    }
    let s = ctx.ingest_json(&["--ignore", "*.gz", "--ignore", "*.tmp", dir]);
    assert_eq!(
        (lines(&s), s["files_ignored"].as_u64()),
        ((0, 0, 0, 0), Some(1)),
        "{s}"
    );
    ctx.write_config("[ingest]\nignore = [\"*.gz\"]\n");
    let s = ctx.ingest_json(&[dir]);
    assert_eq!(
        (lines(&s), s["files_ignored"].as_u64()),
        ((0, 0, 0, 0), Some(1)),
        "{s}"
    );
    // A file named on the command line is read whatever its name; this one is known by its
    // content as a compressed copy of the log read before, whose every line has landed.
    let named = ctx.path("logs/app.ndjson.2.gz");
    let s = ctx.ingest_json(&[named.to_str().unwrap()]);
    assert_eq!(lines(&s), (1, 0, 0, 0), "{s}");
    assert_eq!(
        (&s["files_compressed_copies"], &s["files_appended"]),
        (&1.into(), &0.into()),
        "{s}"
    );
    assert_eq!(s["files"][0]["from_line"], 7, "{s}");
    std::fs::remove_file(&named).unwrap();

    // A pattern is a file name's, checked before any I/O.
    crate::context::one_line_failure(
        &ctx.run(&["ingest", "--ignore", "logs/*.gz", dir]),
        2,
        &["--ignore", "logs/*.gz", "not a path"],
    );
    ctx.write_config("[ingest]\nignore = [\"[\"]\n");
    crate::context::one_line_failure(&ctx.run(&["ingest", dir]), 2, &["ingest.ignore"]);
    std::fs::remove_file(ctx.path("clicklake.toml")).unwrap();

    // `compress` without `delaycompress`: the log is renamed and compressed before the next
    // tick, with lines appended since the last one. Only those land, numbered on; a compressed
    // file named alike whose lines are not the log's is read whole.
    let gzip = |from: &std::path::Path, to: &str| {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(ctx.path(to)).unwrap(),
            flate2::Compression::default(),
        );
        gz.write_all(&std::fs::read(from).unwrap()).unwrap();
        gz.finish().unwrap();
        std::fs::remove_file(from).unwrap();
    };
    append(&line("n3"));
    let renamed = ctx.path("logs/app.ndjson.1");
    std::fs::rename(&log, &renamed).unwrap();
    gzip(&renamed, "logs/app.ndjson.1.gz");
    std::fs::write(&log, line("m1")).unwrap();
    let other = ctx.path("logs/other.ndjson");
    std::fs::write(&other, line("n1") + &line("x1")).unwrap();
    gzip(&other, "logs/app.ndjson-old.gz");
    let s = ctx.ingest_json(&[dir]);
    assert_eq!(lines(&s), (3, 4, 4, 0), "{s}");
    assert_eq!(s["files_compressed_copies"], 1, "{s}");
    assert_eq!(
        ctx.query(
            "SELECT event_id, line_number, regexp_replace(source_file, '.*/', '') FROM raw_events \
             WHERE event_id IN ('n3', 'm1', 'n1', 'x1') ORDER BY 1, 3"
        ),
        [
            "m1,1,app.ndjson",
            "n1,1,app.ndjson",
            "n1,1,app.ndjson-old.gz",
            "n3,3,app.ndjson.1.gz",
            "x1,2,app.ndjson-old.gz"
        ]
    );
    // Read once: the next tick finds both known.
    assert_eq!(lines(&ctx.ingest_json(&[dir])), (0, 0, 0, 0));
    for gz in ["logs/app.ndjson.1.gz", "logs/app.ndjson-old.gz"] {
        std::fs::remove_file(ctx.path(gz)).unwrap();
    }

    // logrotate's `olddir`: the copy is compressed into another directory of the inbox. It is
    // known by its name and content all the same: only the line appended since the last tick
    // lands.
    append(&line("m2"));
    std::fs::create_dir(ctx.path("logs/archive")).unwrap();
    let renamed = ctx.path("logs/archive/app.ndjson.1");
    std::fs::rename(&log, &renamed).unwrap();
    gzip(&renamed, "logs/archive/app.ndjson.1.gz");
    std::fs::write(&log, line("k1")).unwrap();
    let s = ctx.ingest_json(&[dir]);
    assert_eq!(lines(&s), (2, 2, 2, 0), "{s}");
    assert_eq!(s["files_compressed_copies"], 1, "{s}");
    assert_eq!(
        ctx.query(
            "SELECT event_id, line_number, regexp_replace(source_file, '.*/logs/', '') \
             FROM raw_events WHERE event_id IN ('m1', 'm2', 'k1') ORDER BY 1, 3"
        ),
        [
            "k1,1,app.ndjson",
            "m1,1,app.ndjson",
            "m2,2,archive/app.ndjson.1.gz"
        ]
    );
    std::fs::remove_dir_all(ctx.path("logs/archive")).unwrap();

    // Rewritten in place: a new file under the same name is read whole, from line 1.
    std::fs::write(
        &log,
        line("r1") + &line("r2") + &line("r3") + &line("r4") + &line("r5"),
    )
    .unwrap();
    let s = ctx.ingest_json(&[dir]);
    assert_eq!(lines(&s), (1, 5, 5, 0), "{s}");
    assert_eq!(s["files_appended"], 0, "{s}");
    assert_eq!(
        ctx.count("SELECT count(*) FROM raw_events WHERE event_id LIKE 'r%' AND line_number = 1"),
        1
    );
    // --force reads all of a grown file again, on purpose.
    append(&line("r6"));
    let s = ctx.ingest_json(&["--force", log.to_str().unwrap()]);
    assert_eq!(lines(&s), (1, 6, 6, 0), "{s}");

    // CSV: the appended rows are read with the header of the file's first line.
    let csv = ctx.path("logs/orders.csv");
    std::fs::write(
        &csv,
        "anonymous_id,event_type,event_time,event_id\n\
         a2,page_view,2026-01-05T11:00:00Z,c1\n",
    )
    .unwrap();
    assert_eq!(
        lines(&ctx.ingest_json(&[csv.to_str().unwrap()])),
        (1, 1, 1, 0)
    );
    crate::context::append_to(
        &csv,
        b"a2,add_to_cart,2026-01-05T11:01:00Z,c2\na3,page_view,2026-01-05T11:02:00Z,c3\n",
    );
    let s = ctx.ingest_json(&[csv.to_str().unwrap()]);
    assert_eq!(lines(&s), (1, 2, 2, 0), "{s}");
    assert_eq!(s["files"][0]["from_line"], 3, "{s}");
    assert_eq!(
        ctx.query(
            "SELECT event_id, event_type, anonymous_id, line_number FROM raw_events \
             WHERE event_id LIKE 'c%' ORDER BY 1"
        ),
        [
            "c1,page_view,a2,2",
            "c2,add_to_cart,a2,3",
            "c3,page_view,a3,4"
        ]
    );
});

/// A run killed between an appended part's quarantine and raw_events commits completes that part
/// on the next run: its valid rows land once, its quarantine rows are not written again.
#[test]
fn an_interrupted_append_is_completed_once() {
    let ctx = TestContext::new(Backend::Local);
    let log = ctx.path("app.ndjson");
    let line = crate::context::event_line;
    std::fs::write(&log, line("e1")).unwrap();
    let path = log.to_str().unwrap();
    ctx.ingest_json(&[path]);
    crate::context::append_to(&log, (line("e2") + "not json\n" + &line("e3")).as_bytes());
    let crashed = ctx
        .cmd()
        .env("CLICKLAKE_FAULT", "after-quarantine-commit")
        .args(["ingest", path])
        .output()
        .unwrap();
    assert!(!crashed.status.success());
    let s = ctx.ingest_json(&[path]);
    assert_eq!(s["files"][0]["from_line"], 2, "{s}");
    assert_eq!(s["landed"], 2, "{s}");
    assert_eq!(s["quarantine_version"], serde_json::Value::Null, "{s}");
    assert_eq!(
        ctx.query("SELECT event_id, line_number FROM raw_events ORDER BY 2"),
        ["e1,1", "e2,2", "e3,4"]
    );
    assert_eq!(
        ctx.query("SELECT line_number, reason FROM quarantine"),
        ["3,broken_json"]
    );
    // And the next append is read from after it.
    crate::context::append_to(&log, line("e4").as_bytes());
    let s = ctx.ingest_json(&[path]);
    assert_eq!(
        (s["lines"].as_u64(), s["landed"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(ctx.count("SELECT count(*) FROM raw_events"), 4);
}

/// A generated dirty file appended to a log in random pieces (cut mid-line, mid-character, right
/// before and right after a line end), ingested after every piece, lands exactly the rows one
/// read of the whole file lands, at the same line numbers; the quarantine holds the whole file's
/// rows plus, at most, one cut copy per piece. In NDJSON and in CSV, where a row cut short (a
/// field or a closing quote missing) used to stay in quarantine and its rest to be quarantined
/// as a row of its own.
#[test]
fn a_file_appended_in_random_pieces_lands_what_one_read_of_it_lands() {
    appended_in_random_pieces("ndjson");
}

#[test]
fn a_csv_file_appended_in_random_pieces_lands_what_one_read_of_it_lands() {
    appended_in_random_pieces("csv");
}

fn appended_in_random_pieces(ext: &str) {
    let ctx = TestContext::new(Backend::Local);
    ctx.generate(
        "gen",
        &[
            "--events", "1500", "--files", "1", "--dirty", "--format", ext,
        ],
    );
    let bytes = std::fs::read(ctx.path(&format!("gen/events-0001.{ext}"))).unwrap();
    let whole_file = format!("whole.{ext}");
    std::fs::write(ctx.path(&whole_file), &bytes).unwrap();
    ctx.ingest_json(&[ctx.path(&whole_file).to_str().unwrap()]);

    // Cut points: pseudo-random, plus one right before and one right after a line end.
    let mut cuts: Vec<usize> = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..10 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        cuts.push((x % bytes.len() as u64) as usize);
    }
    let nl = bytes.iter().position(|b| *b == b'\n').unwrap();
    let nl2 = nl + 1 + bytes[nl + 1..].iter().position(|b| *b == b'\n').unwrap();
    cuts.extend([nl, nl2 + 1, bytes.len()]);
    cuts.sort_unstable();
    cuts.dedup();
    std::fs::create_dir_all(ctx.path("logs")).unwrap();
    let log = ctx.path(&format!("logs/app.{ext}"));
    std::fs::write(&log, b"").unwrap();
    let dir = ctx.path("logs");
    let mut from = 0;
    let mut appended = 0;
    for cut in &cuts {
        crate::context::append_to(&log, &bytes[from..*cut]);
        from = *cut;
        let s = ctx.ingest_json(&[dir.to_str().unwrap()]);
        assert_eq!(s["balanced"], true, "{s}");
        appended += s["files_appended"].as_u64().unwrap();
    }
    assert!(appended >= cuts.len() as u64 - 2, "{appended} of {cuts:?}");

    let rows = |file: &str, table: &str, cols: &str| {
        ctx.query(&format!(
            "SELECT {cols} FROM {table} WHERE source_file LIKE '%{file}' ORDER BY 1, 2"
        ))
    };
    let raw_cols = "line_number, event_id, event_type, event_time, anonymous_id";
    let whole = rows(&format!("/{whole_file}"), "raw_events", raw_cols);
    assert!(whole.len() > 1400, "{}", whole.len());
    assert_eq!(
        rows(&format!("/logs/app.{ext}"), "raw_events", raw_cols),
        whole
    );

    let q_cols = "line_number, reason";
    let whole_q = rows(&format!("/{whole_file}"), "quarantine", q_cols);
    let mut extra = rows(&format!("/logs/app.{ext}"), "quarantine", q_cols);
    for row in &whole_q {
        let at = extra
            .iter()
            .position(|r| r == row)
            .unwrap_or_else(|| panic!("{row} of the whole file is not quarantined: {extra:?}"));
        extra.remove(at);
    }
    assert!(extra.len() < cuts.len(), "{extra:?}");
    assert!(
        extra.iter().all(|r| r.ends_with(",broken_json")),
        "{extra:?}"
    );
}

/// A log rotated between the ingest's plan (read app.ndjson on from byte N) and its reading: the
/// file now under the name is another one, which is not read from byte N. It is left for the
/// next run, which reads the rotated file on from where it was read and the new one whole.
#[test]
fn a_log_rotated_while_an_ingest_plans_it_is_not_read_from_the_old_offset() {
    let ctx = TestContext::new(Backend::Local);
    let line = crate::context::event_line;
    std::fs::create_dir_all(ctx.path("logs")).unwrap();
    let log = ctx.path("logs/app.ndjson");
    std::fs::write(&log, line("e1") + &line("e2")).unwrap();
    let dir = ctx.path("logs");
    let dir = dir.to_str().unwrap();
    ctx.ingest_json(&[dir]);
    crate::context::append_to(&log, line("e3").as_bytes());
    let mark = ctx.path("paused");
    let child = ctx
        .std_cmd()
        .env("CLICKLAKE_PAUSE", "ingest-after-plan:3")
        .env("CLICKLAKE_PAUSE_MARK", &mark)
        .args(["ingest", "--json", dir])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = std::time::Instant::now();
    while !mark.exists() {
        assert!(started.elapsed().as_secs() < 60, "never paused");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Planned: app.ndjson from line 3. Rotated now, with a longer new file under the name.
    std::fs::rename(&log, ctx.path("logs/app.ndjson.1")).unwrap();
    std::fs::write(&log, line("n1") + &line("n2") + &line("n3") + &line("n4")).unwrap();
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        s["files"][0]["status"], "vanished: deleted or renamed away before it was read",
        "{s}"
    );
    assert_eq!(s["landed"], 0, "{s}");

    let s = ctx.ingest_json(&[dir]);
    assert_eq!(
        (s["files_read"].as_u64(), s["landed"].as_u64()),
        (Some(2), Some(5)),
        "{s}"
    );
    assert_eq!(
        ctx.query("SELECT event_id, line_number FROM raw_events ORDER BY 1"),
        ["e1,1", "e2,2", "e3,3", "n1,1", "n2,2", "n3,3", "n4,4"]
    );
}

/// Files under `dir`, recursively (0 when it does not exist).
fn files_under(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { files_under(&p) } else { 1 })
        .sum()
}

both_backends!(
    a_dry_run_validates_every_line_lists_the_rejected_ones_and_writes_nothing,
    |backend: Backend| {
        let ctx = TestContext::new(backend);
        let m = ctx.generate(
            "gen",
            &["--events", "8000", "--files", "3", "--dirty", "--seed", "5"],
        );
        let fixture = ctx.fixture("native/every_reason.ndjson");
        let generated = if ctx.s3.is_some() {
            for f in crate::context::ndjson_files(&ctx.path("gen")) {
                let path = std::path::PathBuf::from(f);
                let name = path.file_name().unwrap().to_str().unwrap();
                ctx.upload_to_inbox(&path, &format!("incoming/{name}"));
            }
            "s3://inbox/incoming/".to_string()
        } else {
            ctx.path("gen").display().to_string()
        };
        let inputs = [fixture.to_str().unwrap(), generated.as_str()];
        let lake_files = || match &ctx.s3 {
            Some(s3) => files_under(&s3.root.join(crate::context::BUCKET)),
            None => files_under(&ctx.path("lake")),
        };

        // Text: every invalid row fails it (exit 1, one line on stderr); the first rejected rows
        // are listed by file and line. With --junit, a CI system sees one failed test case per
        // file with rejected rows.
        let junit = ctx.path("reports/dry-run.xml");
        std::fs::create_dir_all(junit.parent().unwrap()).unwrap();
        let mut args = vec!["ingest", "--dry-run", "--junit", junit.to_str().unwrap()];
        args.extend(inputs);
        let out = ctx.run(&args);
        assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
        let cases = crate::context::junit_cases(&junit);
        assert_eq!(
            cases.len(),
            4,
            "the fixture and 3 generated files: {cases:?}"
        );
        assert!(cases.iter().all(|c| c.1 == "failure"), "{cases:?}");
        let (name, _, text) = &cases[0];
        assert!(name.ends_with("every_reason.ndjson"), "{name}");
        assert!(
            text.starts_with(&format!("{} of ", EXPECTED_QUARANTINE.len())),
            "{text}"
        );
        for (line, reason, _) in EXPECTED_QUARANTINE {
            assert!(text.contains(&format!("\nline {line}: {reason}")), "{text}");
        }
        assert!(
            cases[3].2.contains("more: a dry run lists the first 50"),
            "{}",
            cases[3].2
        );
        let err = stderr_of(&out);
        assert!(err.contains("a dry run: nothing was written"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("nothing written"), "{text}");
        let listed: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("every_reason.ndjson:"))
            .collect();
        assert_eq!(listed.len(), EXPECTED_QUARANTINE.len(), "{text}");
        for (l, (line, reason, words)) in listed.iter().zip(EXPECTED_QUARANTINE) {
            assert!(
                l.contains(&format!("every_reason.ndjson:{line}: {reason}")),
                "{l}"
            );
            assert!(words.iter().all(|w| l.contains(w)), "{l}");
        }
        assert_eq!(lake_files(), 0, "a dry run writes nothing");

        // JSON, with a limit the rows stay under: exit 0, and the counts a real ingest of the
        // same files then has, line for line.
        let mut args = vec![
            "--max-quarantined",
            "100%",
            "--dry-run",
            "--junit",
            junit.to_str().unwrap(),
        ];
        args.extend(inputs);
        let dry = ctx.ingest_json(&args);
        let cases = crate::context::junit_cases(&junit);
        assert_eq!(cases.len(), 4, "{cases:?}");
        assert!(
            cases.iter().all(|c| c.1 == "pass"),
            "within the limit: {cases:?}"
        );
        assert_eq!(dry["dry_run"], true);
        let fixture_valid = 3;
        assert_eq!(
            dry["landed"].as_u64().unwrap(),
            m["valid_lines"].as_u64().unwrap() + fixture_valid
        );
        let rejected = dry["rejected"].as_array().unwrap();
        assert!(dry["quarantined"].as_u64().unwrap() > 50, "{dry}");
        assert_eq!(rejected.len(), 50, "the first 50");
        assert_eq!(rejected[0]["line"], 2);
        assert_eq!(rejected[0]["reason"], "broken_json");
        assert!(rejected[15]["source_file"]
            .as_str()
            .unwrap()
            .contains("events-0001"));
        assert_eq!(lake_files(), 0, "a dry run writes nothing");
        let real = ctx.ingest_json(&inputs);
        for key in [
            "lines",
            "blank_lines",
            "landed",
            "quarantined",
            "quarantined_by_reason",
            "files_read",
            "bytes_read",
        ] {
            assert_eq!(dry[key], real[key], "{key}");
        }
        // The rows listed are the rows the ingest quarantined.
        let quarantined = ctx.query(
            "SELECT line_number, reason FROM quarantine \
             WHERE source_file LIKE '%every_reason%' ORDER BY line_number",
        );
        let listed: Vec<String> = rejected[..EXPECTED_QUARANTINE.len()]
            .iter()
            .map(|r| format!("{},{}", r["line"], r["reason"].as_str().unwrap()))
            .collect();
        assert_eq!(quarantined, listed);

        // No pseudonymisation key is needed to validate, whatever the personal columns.
        ctx.write_config("[privacy]\npii_columns = [\"email\", \"ip\", \"user_id\"]\n");
        let out = ctx
            .cmd()
            .env_remove("CLICKLAKE_PII_KEY")
            .args([
                "ingest",
                "--dry-run",
                "--max-quarantined",
                "100%",
                &generated,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
        // --force lands again; a dry run lands nothing: the two do not go together.
        let out = ctx.run(&["ingest", "--dry-run", "--force", &generated]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
        // --junit reports a dry run only; into a missing directory it fails before any read.
        let out = ctx.run(&["ingest", "--junit", junit.to_str().unwrap(), &generated]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
        let out = ctx.run(&[
            "ingest",
            "--dry-run",
            "--junit",
            ctx.path("no/such/dir/r.xml").to_str().unwrap(),
            &generated,
        ]);
        crate::context::one_line_failure(&out, 2, &["--junit: directory", "does not exist"]);
    }
);
