//! `clicklake compact` and `clicklake vacuum`: fewer files, the same rows, and incremental runs
//! that stay right across a compaction.

use crate::both_backends;
use crate::context::{parquet_files_under, stderr_of, Backend, TestContext};

both_backends!(
    compaction_keeps_every_row_and_incremental_runs_stay_right,
    |backend: Backend| {
        let ctx = TestContext::new(backend);
        ctx.generate(
            "gen",
            &[
                "--events", "4000", "--files", "4", "--dirty", "--seed", "5", "--days", "2",
            ],
        );
        let file = |i: u32| {
            ctx.path(&format!("gen/events-000{i}.ndjson"))
                .display()
                .to_string()
        };
        for i in 1..=2 {
            ctx.ingest_json(&[&file(i)]);
        }
        ctx.ok(&["clean", "-q"]);
        ctx.ok(&["build", "-q"]);
        // A table's line of `tables --json`.
        let table_info = |t: &str| -> serde_json::Value {
            let tables: serde_json::Value =
                serde_json::from_str(&ctx.ok(&["tables", "--json"])).unwrap();
            let info = tables.as_array().unwrap().iter().find(|x| x["name"] == t);
            info.unwrap().clone()
        };
        let files = |t: &str| table_info(t)["files"].as_u64().unwrap();
        let raw_before =
            ctx.query("SELECT * FROM raw_events ORDER BY event_id, source_file, line_number");

        // A new file lands, then a compaction runs before clean sees it. raw_events waits:
        // folded into others, the new file could not be found by name by the next clean, which
        // would rebuild everything.
        let landed = ctx.ingest_json(&[&file(3)]);
        let files_before = files("raw_events");
        let out: serde_json::Value =
            serde_json::from_str(&ctx.ok(&["compact", "--json", "raw_events"])).unwrap();
        assert_eq!(out[0]["files_removed"], 0, "{out}");
        assert!(
            out[0]["skipped"]
                .as_str()
                .unwrap()
                .starts_with("rows landed since the last clean"),
            "{out}"
        );
        assert_eq!(files("raw_events"), files_before);
        let clean: serde_json::Value = serde_json::from_str(&ctx.ok(&["clean", "--json"])).unwrap();
        assert_eq!(clean["mode"], "incremental", "{clean}");
        assert_eq!(
            clean["raw_rows_consumed"], landed["landed"],
            "the new file's rows, and only those: {clean}"
        );
        // Once cleaned, it is merged; twice in a row, the second finds nothing to do (and does
        // not merge the first's files again from an old snapshot: each row is there once).
        let rows = ctx.count("SELECT count(*) FROM raw_events");
        for removed in [true, false] {
            let out: serde_json::Value =
                serde_json::from_str(&ctx.ok(&["compact", "--json", "raw_events"])).unwrap();
            assert_eq!(
                out[0]["files_removed"].as_u64().unwrap() > 0,
                removed,
                "{out}"
            );
        }
        assert!(
            files("raw_events") < files_before,
            "compaction merged files"
        );
        assert_eq!(ctx.count("SELECT count(*) FROM raw_events"), rows);
        let clean: serde_json::Value = serde_json::from_str(&ctx.ok(&["clean", "--json"])).unwrap();
        assert_eq!(clean["mode"], "up_to_date", "{clean}");
        // A file landed after the compaction is cleaned incrementally again.
        ctx.ingest_json(&[&file(4)]);
        let clean: serde_json::Value = serde_json::from_str(&ctx.ok(&["clean", "--json"])).unwrap();
        assert_eq!(clean["mode"], "incremental", "{clean}");
        ctx.ok(&["build", "-q"]);
        ctx.ok(&["compact", "-q"]);
        let out = ctx.run(&["check", "-q"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );

        // Compaction changed files, not rows.
        let rows_now =
            ctx.query("SELECT * FROM raw_events ORDER BY event_id, source_file, line_number");
        assert!(rows_now.len() > raw_before.len());
        assert!(raw_before.iter().all(|r| rows_now.contains(r)));
        let events = ctx.query("SELECT * FROM events ORDER BY event_id");
        ctx.ok(&["clean", "-q", "--full-refresh"]);
        assert_eq!(events, ctx.query("SELECT * FROM events ORDER BY event_id"));

        // The history names every commit, newest first, and its figures add up to the tables.
        let history = |table: &str, extra: &[&str]| -> Vec<serde_json::Value> {
            let mut args = vec!["history", table, "--json"];
            args.extend_from_slice(extra);
            serde_json::from_str(&ctx.ok(&args)).unwrap()
        };
        let raw = history("raw_events", &["--all"]);
        let version = |t: &str| table_info(t)["version"].as_i64().unwrap();
        let versions: Vec<i64> = raw.iter().map(|c| c["version"].as_i64().unwrap()).collect();
        assert_eq!(
            versions,
            (0..=version("raw_events")).rev().collect::<Vec<_>>()
        );
        let landed: u64 = raw
            .iter()
            .filter(|c| c["data_change"] == true)
            .map(|c| c["rows_added"].as_u64().unwrap())
            .sum();
        assert_eq!(landed, ctx.count("SELECT count(*) FROM raw_events"));
        let ingests = raw.iter().filter(|c| c["clicklake"]["command"] == "ingest");
        assert_eq!(ingests.count(), 4, "one commit per ingest: {raw:?}");
        let compactions: Vec<_> = raw
            .iter()
            .filter(|c| c["operation"] == "OPTIMIZE")
            .collect();
        assert!(!compactions.is_empty());
        assert!(compactions
            .iter()
            .all(|c| c["data_change"] == false && c["files_removed"].as_u64().unwrap() > 1));

        let events = history("events", &["--limit", "2"]);
        assert_eq!(events.len(), 2);
        let newest = &events[0];
        assert_eq!(newest["version"].as_i64().unwrap(), version("events"));
        assert_eq!(
            (
                &newest["clicklake"]["command"],
                &newest["clicklake"]["mode"]
            ),
            (&"clean".into(), &"full".into()),
            "{newest}"
        );
        // A full refresh replaces every file: it adds every row the table holds.
        assert_eq!(
            newest["rows_added"].as_u64().unwrap(),
            ctx.count("SELECT count(*) FROM events")
        );
        let text = ctx.ok(&["history", "events"]);
        assert!(
            text.lines().any(|l| l.contains("clean incremental")),
            "{text}"
        );
        assert!(text.lines().any(|l| l.contains("OPTIMIZE*")), "{text}");
        let out = ctx.run(&["history", "evnts"]);
        crate::context::one_line_failure(&out, 2, &["unknown table \"evnts\""]);
    }
);

both_backends!(
    vacuum_refuses_short_retention_and_deletes_only_unreferenced_files,
    |backend: Backend| {
        let ctx = TestContext::new(backend);
        ctx.generate("gen", &["--events", "2000", "--files", "2", "--seed", "8"]);
        for i in 1..=2 {
            ctx.ingest_json(&[ctx
                .path(&format!("gen/events-000{i}.ndjson"))
                .to_str()
                .unwrap()]);
        }
        ctx.ok(&["compact", "-q", "raw_events"]);
        let count = || ctx.count("SELECT count(*) FROM raw_events");
        let rows = count();

        let out = ctx.run(&["vacuum", "--retain", "1h"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr_of(&out).contains("--allow-short-retention"),
            "{}",
            stderr_of(&out)
        );

        let dry: serde_json::Value = serde_json::from_str(&ctx.ok(&[
            "vacuum",
            "--retain",
            "0s",
            "--allow-short-retention",
            "--dry-run",
            "--json",
            "raw_events",
        ]))
        .unwrap();
        let would = dry[0]["files_deleted"].as_u64().unwrap();
        assert!(
            would > 0,
            "the compacted-away files are unreferenced: {dry}"
        );
        assert_eq!(count(), rows);
        let done: serde_json::Value = serde_json::from_str(&ctx.ok(&[
            "vacuum",
            "--retain",
            "0s",
            "--allow-short-retention",
            "--json",
            "raw_events",
        ]))
        .unwrap();
        assert_eq!(done[0]["files_deleted"].as_u64().unwrap(), would);
        assert_eq!(
            ctx.query("SELECT command, outcome FROM _audit ORDER BY at"),
            vec!["vacuum,dry_run", "vacuum,success"]
        );
        assert_eq!(
            count(),
            rows,
            "the current version reads only files vacuum kept"
        );
        // The files it named are gone from disk; the table still reads whole.
        for f in done[0]["examples"].as_array().unwrap() {
            let f = f.as_str().unwrap();
            assert!(
                !ctx.table_dir("raw_events").join(f).exists(),
                "{f} still on disk"
            );
        }
        let parquet_files = parquet_files_under(&ctx.table_dir("raw_events"));
        assert_eq!(
            parquet_files,
            files_in_table(&ctx),
            "only referenced files remain"
        );
    }
);

/// A crashed ingest leaves data files no log entry names; `vacuum` finds them by listing the
/// table once they are older than the retention, and leaves every referenced file alone.
#[test]
fn vacuum_deletes_the_files_a_crashed_ingest_never_committed() {
    let ctx = TestContext::new(Backend::Local);
    ctx.generate("gen", &["--events", "2000", "--files", "2", "--seed", "9"]);
    let first = ctx.path("gen/events-0001.ndjson");
    ctx.ingest_json(&[first.to_str().unwrap()]);
    let crashed = ctx
        .cmd()
        .env("CLICKLAKE_FAULT", "after-data-files")
        .args([
            "ingest",
            ctx.path("gen/events-0002.ndjson").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!crashed.status.success(), "the fault must stop the ingest");
    let dir = ctx.table_dir("raw_events");
    let referenced = files_in_table(&ctx);
    let on_disk = parquet_files_under(&dir);
    assert!(
        on_disk > referenced,
        "the crash left files: {on_disk} on disk, {referenced} referenced"
    );
    // Everything, referenced or not, is older than the retention.
    let month_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 86_400);
    backdate(&dir, month_ago);
    let rows = ctx.count("SELECT count(*) FROM raw_events");

    let done: serde_json::Value =
        serde_json::from_str(&ctx.ok(&["vacuum", "--retain", "7d", "--json", "raw_events"]))
            .unwrap();
    assert_eq!(
        done[0]["files_deleted"].as_u64(),
        Some((on_disk - referenced) as u64),
        "{done}"
    );
    assert_eq!(parquet_files_under(&dir), referenced);
    assert_eq!(ctx.count("SELECT count(*) FROM raw_events"), rows);
    // The crashed file is ingested again, whole.
    let s = ctx.ingest_json(&[ctx.path("gen").to_str().unwrap()]);
    assert_eq!(s["files_read"], 1, "{s}");
    assert_eq!(parquet_files_under(&dir), files_in_table(&ctx));
}

fn backdate(dir: &std::path::Path, to: std::time::SystemTime) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            backdate(&p, to);
        } else {
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(to).unwrap();
        }
    }
}

fn files_in_table(ctx: &TestContext) -> usize {
    let tables: serde_json::Value = serde_json::from_str(&ctx.ok(&["tables", "--json"])).unwrap();
    tables[0]["files"].as_u64().unwrap() as usize
}

/// A tick opens every table a few times, and each open replays the commits since the last
/// checkpoint: tables are checkpointed every 10 commits, and tables made by an earlier clicklake
/// (every 50) are changed to 10 by their next compaction.
#[test]
fn tables_are_checkpointed_every_ten_commits_old_ones_once_compacted() {
    let ctx = TestContext::new(Backend::Local);
    let line = crate::context::event_line;
    let config = |table: &str, version: u32| -> Option<String> {
        let log = ctx
            .table_dir(table)
            .join(format!("_delta_log/{version:020}.json"));
        let text = std::fs::read_to_string(&log).unwrap();
        text.lines().find_map(|l| {
            let action: serde_json::Value = serde_json::from_str(l).unwrap();
            action["metaData"]["configuration"]["delta.checkpointInterval"]
                .as_str()
                .map(str::to_string)
        })
    };
    std::fs::write(ctx.path("e0.ndjson"), line("e0")).unwrap();
    ctx.ok(&["ingest", "-q", "e0.ndjson"]);
    assert_eq!(config("raw_events", 0).as_deref(), Some("10"));
    // As an earlier clicklake made it.
    let first = ctx
        .table_dir("raw_events")
        .join("_delta_log/00000000000000000000.json");
    let text = std::fs::read_to_string(&first).unwrap();
    let old = text.replace(
        r#""delta.checkpointInterval":"10""#,
        r#""delta.checkpointInterval":"50""#,
    );
    assert_ne!(old, text);
    std::fs::write(&first, old).unwrap();
    let out: serde_json::Value =
        serde_json::from_str(&ctx.ok(&["compact", "--json", "raw_events"])).unwrap();
    assert_eq!(out[0]["version"], 2, "one commit sets the interval: {out}");
    assert_eq!(config("raw_events", 2).as_deref(), Some("10"));
    let history = ctx.ok(&["history", "raw_events"]);
    assert!(history.contains("SET TBLPROPERTIES"), "{history}");
    // Once is enough.
    let out: serde_json::Value =
        serde_json::from_str(&ctx.ok(&["compact", "--json", "raw_events"])).unwrap();
    assert_eq!(out[0]["version"], 2, "{out}");
    // Every tenth commit (deltalake writes it at version 9, 19, …) is a checkpoint.
    for i in 1..=8 {
        std::fs::write(ctx.path("e.ndjson"), line(&format!("e{i}"))).unwrap();
        ctx.ok(&["ingest", "-q", "e.ndjson"]);
    }
    let checkpoint = ctx
        .table_dir("raw_events")
        .join("_delta_log/00000000000000000009.checkpoint.parquet");
    assert!(checkpoint.exists(), "no checkpoint at version 9");
    assert_eq!(ctx.count("SELECT count(*) FROM raw_events"), 9);
}
