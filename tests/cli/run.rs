//! `clicklake run`, the cron entry point: inbox → ingest → clean → build → check under the lake's
//! lease, the `_runs` record, exit codes 0 / 1 / 2 / 75, quiet when all is well.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::both_backends;
use crate::context::{stderr_of, wait_for_a_lease, Backend, TestContext};

fn data_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .collect();
    files.sort();
    files
}

/// Puts a file into the context's inbox (a local directory, or the s3s-fs `inbox` bucket) and
/// returns the inbox location.
fn deliver(ctx: &TestContext, file: &Path) -> String {
    let name = file.file_name().unwrap().to_str().unwrap();
    if ctx.s3.is_some() {
        ctx.upload_to_inbox(file, &format!("incoming/{name}"));
        "s3://inbox/incoming/".to_string()
    } else {
        let inbox = ctx.path("inbox");
        std::fs::create_dir_all(&inbox).unwrap();
        std::fs::copy(file, inbox.join(name)).unwrap();
        inbox.display().to_string()
    }
}

fn run_json(ctx: &TestContext, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["run", "--json"];
    all.extend_from_slice(args);
    let out = ctx.ok(&all);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("run json: {e}: {out}"))
}

both_backends!(
    run_takes_new_inbox_files_through_every_stage_and_records_each_run,
    |backend| {
        let ctx = TestContext::new(backend);
        let m = ctx.generate(
            "gen",
            &[
                "--events", "3000", "--files", "3", "--dirty", "--seed", "11",
            ],
        );
        let files = data_files(&ctx.path("gen"));
        // An empty inbox is a quiet, successful tick.
        let inbox = if ctx.s3.is_some() {
            "s3://inbox/incoming/".to_string()
        } else {
            std::fs::create_dir_all(ctx.path("inbox")).unwrap();
            ctx.path("inbox").display().to_string()
        };
        ctx.write_config(format!("[run]\ninbox = \"{inbox}\"\n"));
        let out = ctx.run(&["--quiet", "run"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
        assert!(out.stdout.is_empty() && out.stderr.is_empty());

        deliver(&ctx, &files[0]);
        deliver(&ctx, &files[1]);
        let first = run_json(&ctx, &[]);
        assert_eq!(first["outcome"], "success", "{first}");
        assert_eq!(first["ingest"]["files_read"], 2);
        assert_eq!(first["clean"]["mode"], "full");
        assert_eq!(first["check"]["failed"], 0);
        assert!(first["check"]["passed"].as_u64().unwrap() > 50, "{first}");

        deliver(&ctx, &files[2]);
        let second = run_json(&ctx, &[]);
        assert_eq!(second["ingest"]["files_read"], 1, "{second}");
        assert_eq!(second["ingest"]["files_skipped"], 2);
        assert_eq!(second["clean"]["mode"], "incremental");

        // Quiet and idle once everything is in.
        let out = ctx.run(&["--quiet", "run"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
        assert!(
            out.stdout.is_empty() && out.stderr.is_empty(),
            "{}",
            stderr_of(&out)
        );

        // Every line of every file is accounted for, and events are complete.
        let lines = first["ingest"]["lines"].as_u64().unwrap()
            + second["ingest"]["lines"].as_u64().unwrap();
        let landed_plus_quarantined = ctx.count("SELECT count(*) FROM raw_events")
            + ctx.count("SELECT count(*) FROM quarantine");
        let blank = first["ingest"]["blank_lines"].as_u64().unwrap()
            + second["ingest"]["blank_lines"].as_u64().unwrap();
        assert_eq!(lines, landed_plus_quarantined + blank);
        assert_eq!(
            ctx.count("SELECT count(*) FROM events"),
            m["unique_events"].as_u64().unwrap()
        );

        // One _runs row per run, in order, with its figures.
        let rows = ctx.query(
            "SELECT outcome, coalesce(files_ingested, -1), coalesce(clean_mode, '-'), \
                    checks_failed, finished_at >= started_at \
             FROM _runs ORDER BY started_at",
        );
        assert_eq!(
            rows,
            vec![
                "success,0,up_to_date,0,true",
                "success,2,full,0,true",
                "success,1,incremental,0,true",
                "success,0,up_to_date,0,true",
            ]
        );
        let status: serde_json::Value =
            serde_json::from_str(&ctx.ok(&["status", "--json"])).unwrap();
        assert_eq!(status["last_run"]["outcome"], "success", "{status}");
        assert!(status["last_run"]["last_success_at"].is_string());
    }
);

both_backends!(
    a_held_lease_exits_75_naming_its_holder_and_a_dead_holders_is_taken_over,
    |backend| {
        let ctx = TestContext::new(backend);
        ctx.write_config("[run]\nlease_ttl = \"3s\"\n");
        let f = ctx.fixture("native/every_reason.ndjson");
        ctx.ok(&["ingest", f.to_str().unwrap()]);
        // A live holder: a run paused right after taking the lease (it keeps renewing it).
        let holder = ctx.spawn_paused("run-after-lease:6", &["run"]);
        wait_for_a_lease(&ctx);
        let out = ctx.run(&["run"]);
        assert_eq!(out.status.code(), Some(75), "{}", stderr_of(&out));
        let err = stderr_of(&out);
        assert!(
            err.contains("the lake is locked by run ")
                && err.contains(" pid ")
                && err.contains(" since 20"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        // Quiet: an overlapping cron tick says nothing, the exit code says it.
        let out = ctx.run(&["--quiet", "run"]);
        assert_eq!(out.status.code(), Some(75));
        assert!(
            out.stdout.is_empty() && out.stderr.is_empty(),
            "{}",
            stderr_of(&out)
        );
        // The commands that change tables on their own wait their turn the same way.
        let consents = ctx.path("consents.csv");
        std::fs::write(
            &consents,
            "user_id,purpose,status,decided_at\nu1,personalization,granted,2026-01-01T00:00:00Z\n",
        )
        .unwrap();
        for args in [
            &["clean"][..],
            &["build"],
            &["compact"],
            &["vacuum"],
            &["consent", consents.to_str().unwrap()],
        ] {
            let out = ctx.run(args);
            assert_eq!(out.status.code(), Some(75), "{args:?}: {}", stderr_of(&out));
        }
        // With --wait the next run gets the lease once the holder releases it.
        let started = Instant::now();
        let out = ctx.run(&["run", "--wait", "30s"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
        assert!(started.elapsed() < Duration::from_secs(25));
        holder.wait_with_output().unwrap();

        // A run that dies holding the lease (killed, or a crash) on this host: the next command
        // sees its process is gone and takes the lease at once, without waiting for it to lapse.
        ctx.write_config("[run]\nlease_ttl = \"10m\"\n");
        let out = ctx
            .cmd()
            .env("CLICKLAKE_FAULT", "run-after-lease")
            .args(["run"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "the fault point must abort");
        let out = ctx.run(&["run"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
        assert!(
            stderr_of(&out).contains("its process on this host is gone"),
            "{}",
            stderr_of(&out)
        );
        // Released at the end: the next run need not wait. With no inbox it says ingest was
        // skipped, so "nothing new" is not read as "no files arrived".
        let out = ctx.run(&["run"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("ingest  skipped: no inbox (set [run] inbox or pass --inbox)"),
            "{stdout}"
        );
    }
);

/// A holder on another machine is alive until its lease lapses; then it is taken over.
#[test]
fn another_hosts_lease_holds_until_it_lapses() {
    let ctx = TestContext::new(Backend::Local);
    ctx.ok(&["init"]);
    let dir = ctx.path("lake/_clicklake/lease");
    std::fs::create_dir_all(&dir).unwrap();
    let lease = |expires: chrono::DateTime<chrono::Utc>| {
        serde_json::json!({
            "run_id": "run-elsewhere",
            "holder": "cron@other-host pid 4242",
            "started_at": (expires - chrono::Duration::minutes(10)).to_rfc3339(),
            "renewed_at": (expires - chrono::Duration::minutes(10)).to_rfc3339(),
            "expires_at": expires.to_rfc3339(),
            "process": "other-host|pid:[4026531836]|4242|1",
        })
        .to_string()
    };
    let now = chrono::Utc::now();
    for (expires, code, words) in [
        (
            now + chrono::Duration::minutes(5),
            75,
            &["cron@other-host pid 4242"][..],
        ),
        (
            now - chrono::Duration::minutes(1),
            0,
            &["taking over the lease of run run-elsewhere", "expired 20"][..],
        ),
    ] {
        std::fs::write(dir.join("00000000000000000001.json"), lease(expires)).unwrap();
        let out = ctx.run(&["run"]);
        assert_eq!(out.status.code(), Some(code), "{}", stderr_of(&out));
        for w in words {
            assert!(stderr_of(&out).contains(w), "{w}: {}", stderr_of(&out));
        }
    }
}

#[test]
fn a_running_run_renews_its_lease_past_its_time_to_live() {
    let ctx = TestContext::new(Backend::Local);
    ctx.write_config("[run]\nlease_ttl = \"1s\"\n");
    let mut holder = ctx.spawn_paused("run-after-lease:5", &["run"]);
    wait_for_a_lease(&ctx);
    // Well past the 1s time to live: only renewal keeps the lease.
    std::thread::sleep(Duration::from_millis(2500));
    let out = ctx.run(&["run"]);
    assert_eq!(out.status.code(), Some(75), "{}", stderr_of(&out));
    assert!(holder.wait().unwrap().success());
    let out = ctx.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
}

#[test]
fn failed_checks_exit_1_and_speak_even_when_quiet() {
    let ctx = TestContext::new(Backend::Local);
    let fixture = ctx.fixture("star/sessions.ndjson");
    std::fs::create_dir_all(ctx.path("checks")).unwrap();
    std::fs::write(
        ctx.path("checks/no_orders_over_30.sql"),
        "SELECT order_id, revenue FROM fact_orders WHERE revenue > 30",
    )
    .unwrap();
    std::fs::create_dir_all(ctx.path("inbox")).unwrap();
    std::fs::copy(&fixture, ctx.path("inbox/sessions.ndjson")).unwrap();
    ctx.write_config("[run]\ninbox = \"inbox\"\n[check]\ndir = \"checks\"\n");
    let out = ctx.run(&["run", "--junit", "no/such/dir/run.xml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(!ctx.path("lake").exists(), "refused before any I/O");
    let out = ctx.run(&["--quiet", "run", "--junit", "run.xml"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("FAIL") && shown.contains("no_orders_over_30"),
        "{shown}"
    );
    // The run's checks as JUnit, as `check --junit` writes them.
    let cases = crate::context::junit_cases(&ctx.path("run.xml"));
    assert!(cases.len() > 50, "{cases:?}");
    let failed: Vec<_> = cases.iter().filter(|c| c.1 == "failure").collect();
    assert_eq!(failed.len(), 1, "{cases:?}");
    assert_eq!(failed[0].0, "no_orders_over_30");
    assert_eq!(
        ctx.query("SELECT outcome, checks_failed FROM _runs"),
        vec!["checks_failed,1"]
    );
}

#[test]
fn a_failing_stage_is_recorded_and_releases_the_lease() {
    let ctx = TestContext::new(Backend::Local);
    let fixture = ctx.fixture("star/sessions.ndjson");
    std::fs::create_dir_all(ctx.path("inbox")).unwrap();
    std::fs::copy(&fixture, ctx.path("inbox/sessions.ndjson")).unwrap();
    std::fs::create_dir_all(ctx.path("models/star")).unwrap();
    std::fs::write(
        ctx.path("models/star/04_fact_sessions.sql"),
        "SELECT no_such_column FROM events",
    )
    .unwrap();
    ctx.write_config("[run]\ninbox = \"inbox\"\n[build]\nsql_dir = \"models\"\n");
    let out = ctx.run(&["--quiet", "run"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("fact_sessions"),
        "{}",
        stderr_of(&out)
    );
    let rows = ctx.query("SELECT outcome, rows_landed, clean_mode, error IS NOT NULL FROM _runs");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        rows[0].starts_with("failed,") && rows[0].ends_with(",full,true"),
        "{rows:?}"
    );
    // The audit trail names who ran it and how it ended.
    let audit = ctx.query("SELECT command, outcome, strpos(holder, 'pid ') > 0 FROM _audit");
    assert_eq!(audit, vec!["run,failed,true"]);

    // The lease was released: fixing the model lets the very next run through.
    std::fs::remove_file(ctx.path("models/star/04_fact_sessions.sql")).unwrap();
    let s = run_json(&ctx, &[]);
    assert_eq!(s["outcome"], "success", "{s}");
    assert_eq!(s["ingest"]["files_read"], 0);
}

#[test]
fn run_rejects_bad_arguments_before_any_io() {
    let ctx = TestContext::new(Backend::Local);
    let out = ctx.run(&["run", "--wait", "a while"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("--wait"), "{}", stderr_of(&out));
    let out = ctx.run(&["run", "--source", "klingon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("klingon"), "{}", stderr_of(&out));
    ctx.write_config("[run]\nlease_ttl = \"0s\"\n");
    let out = ctx.run(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("run.lease_ttl"),
        "{}",
        stderr_of(&out)
    );
    assert!(!ctx.path("lake").exists(), "nothing written");
}

both_backends!(
    two_runs_racing_for_the_lake_one_wins_the_other_exits_75_and_nothing_is_lost,
    |backend| {
        let ctx = TestContext::new(backend);
        let m = ctx.generate("gen", &["--events", "1500", "--files", "2", "--seed", "21"]);
        let files = data_files(&ctx.path("gen"));
        let mut inbox = String::new();
        for f in &files {
            inbox = deliver(&ctx, f);
        }
        ctx.write_config(format!("[run]\ninbox = \"{inbox}\"\ncheck = false\n"));
        // Both start together; whoever takes the lease holds it for 3 s before working.
        let spawn = || {
            ctx.std_cmd()
                .env("CLICKLAKE_PAUSE", "run-after-lease:3")
                .args(["run", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        let mut codes = vec![a.status.code(), b.status.code()];
        codes.sort();
        assert_eq!(
            codes,
            vec![Some(0), Some(75)],
            "a: {}\nb: {}",
            stderr_of(&a),
            stderr_of(&b)
        );
        let loser = if a.status.code() == Some(75) { &a } else { &b };
        assert!(
            stderr_of(loser).contains("locked by run"),
            "{}",
            stderr_of(loser)
        );

        // Nothing lost, nothing twice: the next tick has nothing to do.
        let next = run_json(&ctx, &[]);
        assert_eq!(next["ingest"]["files_read"], 0, "{next}");
        assert_eq!(next["clean"]["mode"], "up_to_date");
        assert_eq!(
            ctx.count("SELECT count(*) FROM events"),
            m["unique_events"].as_u64().unwrap()
        );
        assert_eq!(
            ctx.count("SELECT count(*) FROM raw_events")
                + ctx.count("SELECT count(*) FROM quarantine"),
            ctx.count("SELECT sum(lines - blank_lines) FROM ingested_files")
        );
        assert_eq!(ctx.count("SELECT count(*) FROM _runs"), 2);
    }
);

/// A run that stops making progress is stopped at `[run] max_duration`: exit 3 with one line,
/// recorded as failed, and the lease released, so the next tick runs instead of exiting 75.
#[test]
fn a_run_past_max_duration_is_stopped_and_releases_its_lease() {
    let ctx = TestContext::new(Backend::Local);
    ctx.write_config("[run]\nmax_duration = \"1s\"\n");
    // Stuck in an await, then on a blocking thread: the process must end either way (it used to
    // wait for a stuck blocking thread at exit, so the cron job never ended).
    for (i, pause) in ["run-stages:60", "run-stages-blocking:60"]
        .iter()
        .enumerate()
    {
        let started = Instant::now();
        let out = ctx
            .std_cmd()
            .env("CLICKLAKE_PAUSE", pause)
            .args(["run"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{pause}: {}", stderr_of(&out));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{pause}: not stopped"
        );
        let err = stderr_of(&out);
        assert!(err.contains("max_duration (1s)"), "{pause}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{pause}: {err}");
        let rows = ctx.query("SELECT outcome FROM _runs");
        assert_eq!(rows, vec!["failed".to_string(); i + 1], "{pause}");
    }
    let out = ctx.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    // A limit under a second is a configuration error, before any I/O.
    ctx.write_config("[run]\nmax_duration = \"0s\"\n");
    let out = ctx.run(&["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("run.max_duration"),
        "{}",
        stderr_of(&out)
    );
}

both_backends!(
    a_file_written_less_than_min_file_age_ago_waits_for_a_later_tick,
    |backend| {
        // A producer writing straight into the inbox: a tick that read the file halfway landed
        // its first half, then, once the file changed (a new identity), all of it again, and a
        // half-written last line stayed in quarantine.
        let ctx = TestContext::new(backend);
        let line = crate::context::event_line;
        std::fs::create_dir_all(ctx.path("inbox")).unwrap();
        std::fs::write(ctx.path("inbox/settled.ndjson"), line("s1") + &line("s2")).unwrap();
        std::fs::write(ctx.path("inbox/fresh.ndjson"), line("f1")).unwrap();
        let inbox = ctx.inbox_of(&["settled.ndjson", "fresh.ndjson"]);
        ctx.backdate_inbox_file("settled.ndjson", Duration::from_secs(7200));
        let tick = |args: &[&str]| {
            let mut all = vec!["run", "--inbox", &inbox, "--json", "--no-check"];
            all.extend_from_slice(args);
            let out = ctx.run(&all);
            assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
            let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let i = &s["ingest"];
            (
                i["files_read"].as_u64(),
                i["files_skipped"].as_u64(),
                i["files_waiting"].as_u64(),
            )
        };
        assert_eq!(tick(&["--min-file-age", "1h"]), (Some(1), Some(0), Some(1)));
        assert_eq!(
            ctx.query("SELECT event_id FROM events ORDER BY 1"),
            ["s1", "s2"]
        );
        // Still too young on the next tick; the settled file is done.
        ctx.write_config("[ingest]\nmin_file_age = \"1h\"\n");
        assert_eq!(tick(&[]), (Some(0), Some(1), Some(1)));
        // Once it has not changed for long enough, it lands, once.
        ctx.backdate_inbox_file("fresh.ndjson", Duration::from_secs(7200));
        assert_eq!(tick(&[]), (Some(1), Some(1), Some(0)));
        assert_eq!(
            ctx.query("SELECT event_id FROM events ORDER BY 1"),
            ["f1", "s1", "s2"]
        );
        // A file named on the command line is read at once, whatever its age.
        std::fs::write(ctx.path("named.ndjson"), line("n1")).unwrap();
        let s = ctx.ingest_json(&["--min-file-age", "1h", "named.ndjson"]);
        assert_eq!(
            (s["files_read"].as_u64(), s["landed"].as_u64()),
            (Some(1), Some(1))
        );
        // A duration that is not one: exit 2 naming the flag or the key.
        let out = ctx.run(&["run", "--inbox", &inbox, "--min-file-age", "soon"]);
        assert_eq!(out.status.code(), Some(2));
        let first = stderr_of(&out)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(
            first.contains("--min-file-age") && first.contains("soon"),
            "{first}"
        );
        ctx.write_config("[ingest]\nmin_file_age = \"soon\"\n");
        let out = ctx.run(&["run", "--inbox", &inbox]);
        crate::context::one_line_failure(&out, 2, &["ingest.min_file_age"]);
    }
);

/// An object found by listing an inbox and the same object named on its own are one file. The
/// listing of some S3-compatible stores (s3s-fs here) has no ETag, so a listed object was known
/// by its last-modified time and a named one by its ETag: `ingest s3://…/that-file`, after `run`
/// had landed it, landed it a second time.
#[test]
fn an_inbox_object_named_on_its_own_after_a_run_listed_it_is_the_same_file() {
    let ctx = TestContext::new(Backend::S3);
    std::fs::create_dir_all(ctx.path("inbox")).unwrap();
    let name = "my events ü.ndjson";
    std::fs::write(
        ctx.path(&format!("inbox/{name}")),
        "{\"event_id\":\"o1\",\"event_time\":\"2026-01-05T10:00:00Z\",\"event_type\":\"page_view\",\
         \"anonymous_id\":\"a1\"}\n",
    )
    .unwrap();
    let inbox = ctx.inbox_of(&[name]);
    let s = ctx.run_inbox_json(&inbox);
    assert_eq!(s["ingest"]["files_read"], 1, "{s}");
    for named in [format!("{inbox}{name}"), format!("{inbox}*.ndjson")] {
        let s = ctx.ingest_json(&[&named]);
        assert_eq!(
            (s["files_read"].as_u64(), s["files_skipped"].as_u64()),
            (Some(0), Some(1)),
            "{named}: {s}"
        );
    }
    assert_eq!(ctx.count("SELECT count(*) FROM raw_events"), 1);
    assert_eq!(
        ctx.query("SELECT source_file FROM ingested_files"),
        [format!("s3://inbox/in/{name}")]
    );
}

both_backends!(
    an_inbox_file_deleted_before_it_was_read_is_skipped_and_the_others_land,
    |backend: Backend| {
        // A cleanup job or another consumer deletes a file between the listing and the read:
        // that stopped the whole tick (exit 2 for a local file, 3 for an object) and nothing of
        // the other files landed.
        let ctx = TestContext::new(backend);
        std::fs::create_dir_all(ctx.path("inbox")).unwrap();
        let line = crate::context::event_line;
        for name in ["a", "b", "c"] {
            std::fs::write(ctx.path(&format!("inbox/{name}.ndjson")), line(name)).unwrap();
        }
        let inbox = ctx.inbox_of(&["a.ndjson", "b.ndjson", "c.ndjson"]);
        let mark = ctx.path("paused");
        let child = ctx
            .std_cmd()
            .env("CLICKLAKE_PAUSE", "ingest-after-discovery:3")
            .env("CLICKLAKE_PAUSE_MARK", &mark)
            .args(["run", "--inbox", &inbox, "--json", "--no-check"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let started = Instant::now();
        while !mark.exists() {
            assert!(started.elapsed() < Duration::from_secs(60), "never paused");
            std::thread::sleep(Duration::from_millis(50));
        }
        // The run has listed the inbox and waits before reading: b goes now.
        std::fs::remove_file(ctx.path("inbox/b.ndjson")).unwrap();
        if ctx.s3.is_some() {
            ctx.delete_from_inbox("in/b.ndjson");
        }
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(s["ingest"]["files_read"], 2, "{s}");
        let vanished: Vec<&serde_json::Value> = s["ingest"]["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["status"] == "vanished: deleted or renamed away before it was read")
            .collect();
        assert_eq!(vanished.len(), 1, "{s}");
        assert!(vanished[0]["source_file"]
            .as_str()
            .unwrap()
            .ends_with("b.ndjson"));
        assert_eq!(
            ctx.query("SELECT event_id FROM events ORDER BY 1"),
            ["a", "c"]
        );
        // It is not recorded as ingested: if it comes back, the next tick reads it.
        assert_eq!(ctx.count("SELECT count(*) FROM ingested_files"), 2);
        std::fs::write(ctx.path("inbox/b.ndjson"), line("b")).unwrap();
        let inbox = ctx.inbox_of(&["b.ndjson"]);
        let s = ctx.run_inbox_json(&inbox);
        assert_eq!(s["ingest"]["files_read"], 1, "{s}");
        assert_eq!(
            ctx.query("SELECT event_id FROM events ORDER BY 1"),
            ["a", "b", "c"]
        );
    }
);

both_backends!(
    run_compacts_the_tables_whose_small_files_pile_up,
    |backend| {
        // Every tick adds files to every table it touches. Without compaction each scan opens
        // all of them, and a lake run from cron got slower with every tick (a tick on a tiny
        // lake took 0.8 s at first and 10 s after 77 ticks).
        let ctx = TestContext::new(backend);
        ctx.generate(
            "gen",
            &[
                "--events", "1200", "--files", "6", "--dirty", "--seed", "21", "--days", "2",
            ],
        );
        ctx.write_config("[run]\ncompact_min_files = 3\n");
        let mut ticks: Vec<serde_json::Value> = Vec::new();
        let mut text = String::new();
        for (i, file) in data_files(&ctx.path("gen")).iter().enumerate() {
            let inbox = deliver(&ctx, file);
            if i == 2 {
                text = ctx.ok(&["run", "--inbox", &inbox, "--no-check"]);
            } else {
                ticks.push(run_json(&ctx, &["--inbox", &inbox, "--no-check"]));
            }
        }
        assert!(text.contains("\n  compact "), "{text}");
        // The first tick vacuumed (none had before), the next ones did not: once a day.
        assert!(ticks[0]["vacuum"].is_array(), "{}", ticks[0]);
        assert!(ticks[1..].iter().all(|s| s["vacuum"].is_null()));
        let vacuums = || {
            ctx.count(
                "SELECT count(*) FROM _audit WHERE command = 'vacuum' AND detail LIKE 'by run %'",
            )
        };
        assert_eq!(vacuums(), 1);
        // Merged, not copied: raw_events holds each landed row once.
        let landed: u64 = ticks
            .iter()
            .map(|s| s["ingest"]["landed"].as_u64().unwrap())
            .sum();
        let landed_in_text: u64 = text
            .lines()
            .find_map(|l| l.split(" lines: ").nth(1))
            .and_then(|l| l.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert_eq!(
            ctx.count("SELECT count(*) FROM raw_events"),
            landed + landed_in_text
        );
        // Compaction folded files the later cleans did not need by name: every clean after the
        // first stayed incremental.
        for (i, s) in ticks.iter().enumerate().skip(1) {
            assert_eq!(s["clean"]["mode"], "incremental", "tick {i}: {s}");
        }
        let merged = |table: &str| -> u64 {
            ticks
                .iter()
                .flat_map(|s| s["compact"].as_array().unwrap().clone())
                .filter(|c| c["table"] == table)
                .map(|c| c["files_removed"].as_u64().unwrap())
                .sum()
        };
        let compactions: Vec<_> = ticks.iter().map(|s| s["compact"].clone()).collect();
        for table in ["raw_events", "events", "fact_sessions", "_runs"] {
            assert!(
                merged(table) > 0,
                "{table} was never compacted: {compactions:?}"
            );
        }
        // What is left is below the threshold everywhere (plus one file in `_runs` and `_audit`,
        // where the run records itself after its compaction): a compaction that asks for one
        // more mergeable file finds no table to merge.
        let after: serde_json::Value =
            serde_json::from_str(&ctx.ok(&["compact", "--json", "--min-files", "4"])).unwrap();
        for c in after.as_array().unwrap() {
            let below = if c["table"] == "_runs" || c["table"] == "_audit" {
                4
            } else {
                3
            };
            assert!(c["mergeable"].as_u64().unwrap() < below, "{c}");
            assert_eq!(c["files_removed"], 0, "{c}");
        }
        assert_eq!(
            ctx.count("SELECT count(*) FROM raw_events"),
            landed + landed_in_text
        );

        // The same rows as a full rebuild.
        let events = ctx.query("SELECT * FROM events ORDER BY event_id");
        let sessions = ctx.query("SELECT * FROM fact_sessions ORDER BY session_key");
        ctx.ok(&["clean", "-q", "--full-refresh"]);
        ctx.ok(&["build", "-q", "--full-refresh"]);
        assert_eq!(events, ctx.query("SELECT * FROM events ORDER BY event_id"));
        assert_eq!(
            sessions,
            ctx.query("SELECT * FROM fact_sessions ORDER BY session_key")
        );

        // Off by flag or by config.
        assert!(run_json(&ctx, &["--no-compact"])["compact"].is_null());
        ctx.write_config("[run]\ncompact_min_files = 0\n");
        assert!(run_json(&ctx, &[])["compact"].is_null());
        // Vacuum when the last one is older than vacuum_every; never with 0s. (On local disk
        // only: the first tick vacuumed on both backends, and each run on s3s-fs takes seconds.)
        if ctx.s3.is_none() {
            ctx.write_config("[run]\nvacuum_every = \"1s\"\n");
            std::thread::sleep(Duration::from_millis(1100));
            assert!(run_json(&ctx, &[])["vacuum"].is_array());
            assert_eq!(vacuums(), 2);
            ctx.write_config("[run]\nvacuum_every = \"0s\"\n");
            std::thread::sleep(Duration::from_millis(1100));
            assert!(run_json(&ctx, &[])["vacuum"].is_null());
        }
        ctx.write_config("[run]\nvacuum_every = \"daily\"\n");
        let out = ctx.run(&["run"]);
        crate::context::one_line_failure(&out, 2, &["run.vacuum_every"]);
        ctx.write_config("[run]\ncompact_min_files = -1\n");
        let out = ctx.run(&["run"]);
        crate::context::one_line_failure(&out, 2, &["clicklake.toml (line 2)", "-1"]);
    }
);

#[test]
fn a_config_file_elsewhere_resolves_its_relative_paths_beside_itself() {
    // Cron runs in the home directory: `clicklake --config /srv/shop/clicklake.toml run`. The
    // file's relative paths (lake, inbox, models, checks) are the project's, beside the file.
    let ctx = TestContext::new(Backend::Local);
    let project = ctx.path("srv/shop");
    std::fs::create_dir_all(project.join("incoming")).unwrap();
    std::fs::create_dir_all(project.join("checks")).unwrap();
    std::fs::create_dir_all(project.join("models/star")).unwrap();
    std::fs::copy(
        ctx.fixture("star/sessions.ndjson"),
        project.join("incoming/sessions.ndjson"),
    )
    .unwrap();
    std::fs::write(
        project.join("checks/no_orders_over_30.sql"),
        "SELECT order_id, revenue FROM fact_orders WHERE revenue > 30",
    )
    .unwrap();
    std::fs::write(
        project.join("models/star/20_order_events.sql"),
        "SELECT order_id, count(*) AS purchase_events FROM events \
         WHERE event_type = 'purchase' AND order_id IS NOT NULL GROUP BY order_id\n",
    )
    .unwrap();
    let config = project.join("clicklake.toml");
    std::fs::write(
        &config,
        "lake = \"./lake\"\n[run]\ninbox = \"incoming\"\n[build]\nsql_dir = \"models\"\n\
         [check]\ndir = \"checks\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["--config", config];
        all.extend_from_slice(args);
        ctx.cmd()
            .env_remove("CLICKLAKE_LAKE")
            .args(&all)
            .output()
            .unwrap()
    };
    let out = run(&["run", "--json"]);
    // The project's check found the orders over 30: it was read from srv/shop/checks.
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["ingest"]["files_read"], 1, "{s}");
    assert!(
        project.join("lake/raw_events/_delta_log").is_dir(),
        "the lake is beside the config file"
    );
    assert!(!ctx.path("lake").exists(), "not in the working directory");
    let out = run(&[
        "sql",
        "-c",
        "SELECT count(*) > 0 FROM order_events",
        "--format",
        "csv",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().last(),
        Some("true")
    );
    let out = run(&["check", "--json"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("no_orders_over_30"));

    // A models directory that is not there names the setting and the path it resolved to.
    std::fs::write(
        project.join("clicklake.toml"),
        "lake = \"./lake\"\n[build]\nsql_dir = \"nope\"\n",
    )
    .unwrap();
    let out = run(&["build"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("[build] sql_dir") && err.contains("srv/shop/nope/star"),
        "{err}"
    );
    // A flag stays relative to the working directory.
    let out = run(&["--lake", "here", "tables"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(!project.join("here").exists());

    // `init` writes the template at a `--config` that does not exist yet; without a `lake` key
    // the lake is beside the file.
    let other = ctx.path("srv/other/clicklake.toml");
    let init = |args: &[&str]| {
        ctx.cmd()
            .env_remove("CLICKLAKE_LAKE")
            .args(["--config", other.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let out = init(&["init"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let template = std::fs::read_to_string(&other).unwrap();
    assert!(template.contains("# lake = \"./lake\""), "{template}");
    assert!(ctx.path("srv/other/lake/raw_events/_delta_log").is_dir());
    assert!(!ctx.path("clicklake.toml").exists() && !ctx.path("lake").exists());
    // Never over an existing file.
    std::fs::write(&other, "# mine\n").unwrap();
    assert!(init(&["init"]).status.success());
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "# mine\n");
    // Any other command still wants the file it names.
    let out = ctx
        .cmd()
        .args(["--config", "srv/none/clicklake.toml", "tables"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("srv/none/clicklake.toml"));
}

/// The run summary's ingest line accounts for every line, blank ones included, as `ingest` does:
/// `3 lines: 1 landed, 1 quarantined` left a reader one line short.
#[test]
fn the_run_summary_accounts_for_every_line() {
    let ctx = TestContext::new(Backend::Local);
    std::fs::create_dir_all(ctx.path("inbox")).unwrap();
    let file = crate::context::event_line("e1") + "\n{\"event_id\": \n";
    std::fs::write(ctx.path("inbox/a.ndjson"), file).unwrap();
    let inbox = ctx.path("inbox").display().to_string();
    let text = ctx.ok(&["run", "--inbox", &inbox, "--no-check"]);
    assert!(
        text.contains("1 file(s), 3 lines: 1 landed, 1 quarantined, 1 blank, "),
        "{text}"
    );
}
