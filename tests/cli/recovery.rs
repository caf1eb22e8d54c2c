//! Crashes at every point of an ingest, then a re-run: no row lost, none duplicated.

use std::time::Duration;

use crate::both_backends;
use crate::context::{parquet_files_under, wait_for_new_files, Backend, TestContext};

fn check_exact(ctx: &TestContext, m: &serde_json::Value, files: u64) {
    assert_eq!(
        ctx.count("SELECT count(*) FROM raw_events"),
        m["valid_lines"].as_u64().unwrap()
    );
    assert_eq!(
        ctx.count(
            "SELECT count(*) FROM (SELECT DISTINCT source_file, line_number FROM raw_events)"
        ),
        m["valid_lines"].as_u64().unwrap(),
        "each input line lands once"
    );
    assert_eq!(
        ctx.count("SELECT count(*) FROM quarantine"),
        m["quarantined"].as_u64().unwrap()
    );
    assert_eq!(
        ctx.count("SELECT count(DISTINCT file_key) FROM ingested_files"),
        files
    );
}

both_backends!(
    crash_at_each_commit_boundary_then_rerun,
    |backend: Backend| {
        for point in [
            "after-data-files",
            "after-quarantine-commit",
            "after-raw-commit",
        ] {
            let ctx = TestContext::new(backend);
            let m = ctx.generate("gen", &["--events", "6000", "--files", "3", "--dirty"]);
            let dir = ctx.path("gen");
            let crashed = ctx
                .cmd()
                .env("CLICKLAKE_FAULT", point)
                .args(["ingest", dir.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(
                !crashed.status.success(),
                "{point}: the fault must stop the run"
            );
            let s = ctx.ingest_json(&[dir.to_str().unwrap()]);
            match point {
                "after-raw-commit" => {
                    assert_eq!(s["files_read"], 0, "{point}: data was complete: {s}");
                    let recovered =
                        ctx.count("SELECT count(*) FROM ingested_files WHERE recovered");
                    assert_eq!(recovered, 3, "{point}: history rows are recovered");
                }
                "after-quarantine-commit" => {
                    assert_eq!(s["files_read"], 3, "{point}: {s}");
                    assert_eq!(
                        s["quarantine_version"],
                        serde_json::Value::Null,
                        "{point}: quarantine is not written twice: {s}"
                    );
                }
                _ => assert_eq!(s["files_read"], 3, "{point}: {s}"),
            }
            check_exact(&ctx, &m, 3);
        }
    }
);

both_backends!(kill_9_at_random_moments_then_rerun, |backend: Backend| {
    let ctx = TestContext::new(backend);
    // Enough input that six interrupted runs cannot finish it between them.
    let m = ctx.generate("gen", &["--events", "1000000", "--files", "12", "--dirty"]);
    let dir = ctx.path("gen");
    // Small commit groups so kills land before, between and after commits; a single parser
    // thread so a run lasts long enough to be interrupted.
    ctx.write_config("[ingest]\ncommit_every = \"8MiB\"\nthreads = 1\nchunk_size = \"256KiB\"\n");
    let mut interrupted = 0;
    for delay_ms in [30u64, 90, 180, 300, 450, 600] {
        let mut child = ctx
            .std_cmd()
            .args(["ingest", dir.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            interrupted += 1;
        }
        // SAFETY: sending SIGKILL to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
    }
    assert!(
        interrupted >= 4,
        "only {interrupted} kills hit a running ingest"
    );
    let rows_before_final = ctx.count("SELECT count(*) FROM raw_events");
    assert!(
        rows_before_final < m["valid_lines"].as_u64().unwrap(),
        "the kills left work undone"
    );
    ctx.ok(&["ingest", dir.to_str().unwrap()]);
    check_exact(&ctx, &m, 12);
});

/// Several writers race for the same Delta log versions. Commits are put-if-absent, so each
/// version has exactly one winner and the losers retry on top of it: every row lands once.
///
/// Local disk only: that guarantee is the store's, and s3s-fs 0.14.1 checks `If-None-Match: *`
/// before it writes the object (`put_object` in its s3.rs), so two commits racing for one version
/// can both be accepted there and one is overwritten — a race in the test server, not an atomic
/// store such as S3, MinIO or local disk. CI saw it once under load.
/// A data file that cannot be written (a full disk; here a file-size limit, which fails the
/// same write calls) stops the ingest with one error line, exit 3 and nothing committed, and
/// without a panic's text; the next run lands every line once.
#[test]
fn a_write_failing_like_a_full_disk_is_one_line_and_commits_nothing() {
    use std::os::unix::process::CommandExt;
    let ctx = TestContext::new(Backend::Local);
    let m = ctx.generate("gen", &["--events", "6000", "--files", "3", "--dirty"]);
    let dir = ctx.path("gen");
    ctx.ok(&["init"]);
    let mut cmd = ctx.std_cmd();
    cmd.args(["ingest", dir.to_str().unwrap()])
        .env("RUST_BACKTRACE", "1");
    // SAFETY: between fork and exec this calls only async-signal-safe functions (signal and
    // setrlimit) on values of its own.
    unsafe {
        cmd.pre_exec(|| {
            // Writes past the limit fail with EFBIG instead of killing the process.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: 16 << 10,
                rlim_max: 16 << 10,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    // One line: no warning about multipart parts either (a local lake has none).
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: writing a data file of ") && err.contains("File too large"),
        "{err}"
    );
    assert_eq!(ctx.count("SELECT count(*) FROM raw_events"), 0);
    assert_eq!(ctx.count("SELECT count(*) FROM ingested_files"), 0);
    let s = ctx.ingest_json(&[dir.to_str().unwrap()]);
    assert_eq!(s["files_read"], 3, "{s}");
    check_exact(&ctx, &m, 3);
}

#[test]
fn concurrent_ingests_lose_nothing() {
    let ctx = TestContext::new(Backend::Local);
    ctx.ok(&["init"]);
    let mut expected = 0;
    let mut children = Vec::new();
    for i in 0..4 {
        let m = ctx.generate(
            &format!("gen{i}"),
            &[
                "--events",
                "3000",
                "--files",
                "2",
                "--dirty",
                "--seed",
                &i.to_string(),
            ],
        );
        expected += m["valid_lines"].as_u64().unwrap();
    }
    for i in 0..4 {
        children.push(
            ctx.std_cmd()
                .args(["ingest", ctx.path(&format!("gen{i}")).to_str().unwrap()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(ctx.count("SELECT count(*) FROM raw_events"), expected);
    assert_eq!(ctx.count("SELECT count(*) FROM ingested_files"), 8);
    let t: serde_json::Value = serde_json::from_str(&ctx.ok(&["tables", "--json"])).unwrap();
    assert_eq!(t[0]["version"], 4, "one raw_events commit per writer: {t}");
}

/// `clean` holds the lake's lease, so a second clean started meanwhile exits 75 naming it. A
/// writer outside clicklake (or one whose lease lapsed) that commits to `events` while a clean
/// runs makes the clean's commit impossible (the Delta log's conflict check on the consumed-version
/// marker): the clean says so in one line, exits 75 and keeps nothing; the next clean redoes it.
#[test]
fn a_clean_meeting_another_writer_says_so_and_changes_nothing() {
    let ctx = TestContext::new(Backend::Local);
    for (dir, seed) in [("gen1", "1"), ("gen2", "2")] {
        ctx.generate(dir, &["--events", "3000", "--dirty", "--seed", seed]);
    }
    ctx.ok(&["ingest", ctx.path("gen1").to_str().unwrap()]);
    ctx.ok(&["clean"]);
    ctx.ok(&["ingest", ctx.path("gen2").to_str().unwrap()]);

    let before = parquet_files_under(&ctx.table_dir("events"));
    let slow = ctx.spawn_paused("clean-after-data-files:8", &["clean"]);
    // It has read raw_events and written its files; it commits after the pause.
    wait_for_new_files(&ctx.table_dir("events"), before);
    let out = ctx.run(&["clean"]);
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("locked by run clean-"));

    // Another writer commits to events meanwhile (it records the raw version already consumed).
    let log = ctx.table_dir("events").join("_delta_log");
    let next = std::fs::read_dir(&log)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".json")?.parse::<u64>().ok()
        })
        .max()
        .unwrap()
        + 1;
    let commit = [
        serde_json::json!({"commitInfo": {"timestamp": chrono::Utc::now().timestamp_millis(), "operation": "WRITE", "operationParameters": {"mode": "Append"}}}),
        serde_json::json!({"txn": {"appId": "clicklake/clean/raw_events", "version": 1}}),
    ]
    .map(|a| a.to_string())
    .join("\n");
    std::fs::write(log.join(format!("{next:020}.json")), commit + "\n").unwrap();

    let lost = slow.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&lost.stderr);
    assert_eq!(lost.status.code(), Some(75), "{err}");
    assert!(
        err.contains("another writer committed to events") && err.contains("run it again"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");

    let again: serde_json::Value =
        serde_json::from_str(ctx.ok(&["clean", "--json"]).trim()).unwrap();
    assert_eq!(
        again["mode"], "incremental",
        "the lost clean's work is redone: {again}"
    );
    let shape = "SELECT count(*) || ' ' || count(DISTINCT event_id) || ' ' || count(DISTINCT session_key) FROM events";
    let incremental = ctx.query(shape);
    ctx.ok(&["clean", "--full-refresh"]);
    assert_eq!(ctx.query(shape), incremental, "rows, event ids, sessions");
}

// Ingest reads every file marker of raw_events and quarantine once (the last checkpoint and the
// commits after it) instead of replaying the log for each new file. A file whose run crashed
// long ago has its markers in a checkpoint now: after-raw-commit, it is recognised as landed
// (its history row recovered); after-quarantine-commit, its valid rows land and its quarantine
// rows are not written again.
both_backends!(markers_in_a_checkpoint_are_found, |backend: Backend| {
    let ctx = TestContext::new(backend);
    // A valid line and a broken one: each file has rows for both tables.
    let line = |id: &str| crate::context::event_line(id) + "not json\n";
    for (name, point) in [
        ("landed", "after-raw-commit"),
        ("half", "after-quarantine-commit"),
    ] {
        let path = ctx.path(&format!("{name}.ndjson"));
        std::fs::write(&path, line(name)).unwrap();
        let crashed = ctx
            .cmd()
            .env("CLICKLAKE_FAULT", point)
            .args(["ingest", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!crashed.status.success(), "{point}");
    }
    // 60 more commits to each table (one per file): the log is checkpointed every 10.
    std::fs::create_dir_all(ctx.path("more")).unwrap();
    for i in 0..60 {
        std::fs::write(
            ctx.path(&format!("more/f{i:02}.ndjson")),
            line(&format!("m{i}")),
        )
        .unwrap();
    }
    ctx.write_config("[ingest]\ncommit_every = \"1\"\n");
    let s = ctx.ingest_json(&[ctx.path("more").to_str().unwrap()]);
    assert_eq!(s["files_read"], 60, "{s}");
    let log = ctx.table_dir("raw_events").join("_delta_log");
    let checkpoints = std::fs::read_dir(&log)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains(".checkpoint."))
                .count()
        })
        .unwrap_or(0);
    assert!(checkpoints > 0, "no checkpoint in {}", log.display());

    let out = ctx.run(&[
        "-vv",
        "ingest",
        "--json",
        ctx.path("landed.ndjson").to_str().unwrap(),
        ctx.path("half.ndjson").to_str().unwrap(),
    ]);
    let err = crate::context::stderr_of(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    // Read in one pass, not one look-up per marker.
    assert!(err.contains("txn markers read indexed=true"), "{err}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let status = |i: usize| s["files"][i]["status"].as_str().unwrap().to_string();
    assert!(status(0).contains("history row recovered"), "{s}");
    assert!(status(1).contains("completed an interrupted run"), "{s}");
    assert_eq!(s["landed"], 1, "{s}");
    assert_eq!(s["quarantine_version"], serde_json::Value::Null, "{s}");
    for id in ["landed", "half"] {
        assert_eq!(
            ctx.count(&format!(
                "SELECT count(*) FROM raw_events WHERE event_id = '{id}'"
            )),
            1,
            "{id}"
        );
    }
    assert_eq!(ctx.count("SELECT count(*) FROM quarantine"), 62);
});
