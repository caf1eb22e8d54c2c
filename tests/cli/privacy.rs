//! Privacy: pseudonymised PII at landing, masking in quarantine, minimisation, `erase`.

use std::path::Path;

use crate::both_backends;
use crate::context::{stderr_of, Backend, TestContext};
use crate::tables_sql::python_with_pyarrow;

/// Clear personal values planted in fixtures/privacy/people.ndjson.
const PLANTED: &[&str] = &[
    "planted.person@example.org",
    "Planted.Person",
    "198.51.100.77",
    "2001:db8:abcd:12::77",
];

/// Every file of the lake searched for `needles` (Parquet decoded): the matches.
fn scan(dir: &Path, needles: &[&str]) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/scan_lake.py");
    let out = std::process::Command::new(python_with_pyarrow())
        .arg(script)
        .arg(dir)
        .args(needles)
        .output()
        .expect("run scan_lake.py");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(1),
        "scan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

/// The directory holding the whole lake (local dir or the s3s-fs bucket prefix).
fn lake_dir(ctx: &TestContext) -> std::path::PathBuf {
    ctx.table_dir("raw_events").parent().unwrap().to_path_buf()
}

both_backends!(
    clear_pii_never_reaches_a_file_of_the_lake,
    |backend: Backend| {
        let ctx = TestContext::new(backend);
        let file = ctx.fixture("privacy/people.ndjson");
        let s = ctx.ingest_json(&[file.to_str().unwrap()]);
        assert_eq!(s["landed"], 7, "{s}");
        assert_eq!(s["quarantined"], 1, "{s}");
        ctx.ok(&["clean"]);
        ctx.ok(&["build"]);
        // The e-mail is an HMAC pseudonym (the same for both spellings); IPs are truncated and
        // pseudonymised; the quarantined line is masked.
        assert_eq!(
            ctx.count(
                "SELECT count(DISTINCT email) FROM raw_events WHERE user_id = 'user-erase-me'"
            ),
            1
        );
        assert_eq!(
            ctx.count(
                "SELECT count(*) FROM raw_events WHERE length(email) = 64 AND length(ip) = 64"
            ),
            4
        );
        let raw = ctx.query("SELECT raw FROM quarantine");
        assert!(
            raw[0].contains("pii:") && raw[0].contains("198.51.100.0"),
            "{raw:?}"
        );
        let leaks = scan(&lake_dir(&ctx), PLANTED);
        assert!(leaks.is_empty(), "clear PII in the lake: {leaks:?}");

        // The scan does find clear values when they are stored (pii_columns = []).
        let ctx2 = TestContext::new(Backend::Local);
        std::fs::write(ctx2.path("clicklake.toml"), "[privacy]\npii_columns = []\n").unwrap();
        let file2 = ctx2.fixture("privacy/people.ndjson");
        ctx2.ingest_json(&[file2.to_str().unwrap()]);
        assert!(!scan(&lake_dir(&ctx2), &["198.51.100.77"]).is_empty());
    }
);

#[test]
fn personal_data_without_a_key_is_refused_unless_dropped() {
    let ctx = TestContext::new(Backend::Local);
    let file = ctx.fixture("privacy/people.ndjson");
    let out = ctx
        .cmd()
        .env_remove("CLICKLAKE_PII_KEY")
        .args(["ingest", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert!(
        err.contains("people.ndjson:1:")
            && err.contains("CLICKLAKE_PII_KEY")
            && err.contains("--drop-pii"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!ctx
        .table_dir("raw_events")
        .join("_delta_log/00000000000000000001.json")
        .exists());

    let out = ctx
        .cmd()
        .env_remove("CLICKLAKE_PII_KEY")
        .args(["ingest", "--drop-pii", "--json", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        ctx.count("SELECT count(*) FROM raw_events WHERE email IS NOT NULL OR ip IS NOT NULL"),
        0
    );
}

#[test]
fn an_allow_list_drops_other_columns_and_counts_them() {
    let ctx = TestContext::new(Backend::Local);
    ctx.write_config("[privacy]\nallowed_columns = [\"product_id\", \"price\", \"currency\", \"order_id\", \"revenue\", \"quantity\"]\n");
    let file = ctx.fixture("privacy/people.ndjson");
    let s = ctx.ingest_json(&[file.to_str().unwrap()]);
    // Per landed row: email, ip, page_url, category, brand and the `nickname` property go (15
    // values in all).
    assert_eq!(s["dropped_values"], 15, "{s}");
    assert_eq!(
        ctx.count(
            "SELECT count(*) FROM raw_events WHERE email IS NOT NULL OR ip IS NOT NULL \
             OR page_url IS NOT NULL OR properties IS NOT NULL"
        ),
        0
    );
    assert_eq!(
        ctx.count("SELECT count(*) FROM raw_events WHERE price IS NOT NULL"),
        5
    );
}

/// A lake with fixtures/privacy/people.ndjson ingested, cleaned and built; and the file.
fn people_lake(backend: Backend) -> (TestContext, std::path::PathBuf) {
    let ctx = TestContext::new(backend);
    let file = ctx.fixture("privacy/people.ndjson");
    ctx.ingest_json(&[file.to_str().unwrap()]);
    ctx.ok(&["clean"]);
    ctx.ok(&["build"]);
    (ctx, file)
}

/// Rows anywhere in the lake that belong to the erased person.
fn person_rows(ctx: &TestContext) -> u64 {
    let q = |sql: &str| ctx.count(sql);
    q("SELECT count(*) FROM raw_events WHERE user_id = 'user-erase-me' OR anonymous_id IN ('anon-erase-me', 'anon-erase-phone')")
        + q("SELECT count(*) FROM events WHERE user_id = 'user-erase-me' OR stitched_user_id = 'user-erase-me' OR anonymous_id IN ('anon-erase-me', 'anon-erase-phone')")
        + q("SELECT count(*) FROM quarantine WHERE strpos(raw, 'anon-erase-me') > 0")
        + q("SELECT count(*) FROM fact_orders WHERE order_id = 'o-erase'")
        + q("SELECT count(*) FROM dim_user WHERE user_id = 'user-erase-me'")
        + q("SELECT count(*) FROM fact_sessions WHERE user_id = 'user-erase-me' OR anonymous_id = 'anon-erase-me'")
        + q(&format!("SELECT count(*) FROM agg_user_interest WHERE user_key = {ERASE_KEY}"))
        + q(&format!("SELECT count(*) FROM agg_user_features WHERE user_key = {ERASE_KEY}"))
}

/// The person's customer key in the star schema.
const ERASE_KEY: &str = "md5(concat('user', chr(31), 'user-erase-me'))";

both_backends!(
    erase_removes_a_person_everywhere_for_good,
    |backend: Backend| {
        let (ctx, file) = people_lake(backend);
        let before = person_rows(&ctx);
        assert!(before > 10, "{before}");
        // Including their customer rows, which erase finds by user_key.
        for table in ["agg_user_interest", "agg_user_features"] {
            let sql = format!("SELECT count(*) FROM {table} WHERE user_key = {ERASE_KEY}");
            assert_eq!(ctx.count(&sql), 1, "{table}");
        }
        let keep_before = ctx.count("SELECT count(*) FROM events WHERE user_id = 'user-keep'");

        // A dry run reports and changes nothing.
        let dry = ctx.ok(&[
            "erase",
            "--email",
            "PLANTED.person@example.org ",
            "--dry-run",
            "--json",
        ]);
        let dry: serde_json::Value = serde_json::from_str(dry.trim()).unwrap();
        assert_eq!(dry["dry_run"], true);
        assert!(dry["rows_removed"].as_u64().unwrap() >= before, "{dry}");
        assert_eq!(person_rows(&ctx), before);

        // Erase by e-mail: through the stitched identity, both devices' anonymous histories go.
        let r = ctx.ok(&["erase", "--email", "planted.person@example.org", "--json"]);
        let r: serde_json::Value = serde_json::from_str(r.trim()).unwrap();
        assert_eq!(r["identities"]["user_ids"], 1, "{r}");
        assert_eq!(r["identities"]["anonymous_ids"], 2, "{r}");
        assert_eq!(r["rows_removed"], dry["rows_removed"], "{r}");
        assert_eq!(person_rows(&ctx), 0);
        assert_eq!(
            ctx.count("SELECT count(*) FROM events WHERE user_id = 'user-keep'"),
            keep_before
        );
        // No file any retained version references holds them: every file of the lake, decoded.
        let leaks = scan(
            &lake_dir(&ctx),
            &["anon-erase-me", "anon-erase-phone", "user-erase-me"],
        );
        assert!(leaks.is_empty(), "{leaks:?}");
        assert_eq!(ctx.count("SELECT count(*) FROM erasures"), 1);
        assert_eq!(
            ctx.query("SELECT command, outcome FROM _audit ORDER BY at"),
            vec!["erase,dry_run", "erase,success"]
        );
        // Time travel cannot reach them either: the log before the erasure is gone, and the
        // query says so in one line of its own (the delta kernel's log line is not shown).
        crate::context::assert_raw_events_absent_at(&ctx, "--as-of-version", "1");
        // Nor by time: before the erasure, the table is unknown (not its oldest version left).
        crate::context::assert_raw_events_absent_at(&ctx, "--as-of-time", "2000-01-01T00:00:00Z");
        // Every table still knows when it was last committed (the erasure's checkpoint is the
        // newest version of some, and a checkpoint lists no commit file).
        let tables: serde_json::Value =
            serde_json::from_str(&ctx.ok(&["tables", "--json"])).unwrap();
        for t in tables
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["exists"] == true)
        {
            assert!(t["last_commit_ms"].as_i64().is_some(), "{t}");
        }
        // The history starts after the erasure and says why.
        let history = ctx.ok(&["history", "raw_events"]);
        assert!(
            history.contains("are no longer in the log: log retention removed them"),
            "{history}"
        );
        assert!(!history.contains("ingest"), "{history}");

        // The next clean and build rebuild in full and stay clean; re-landing the original file
        // does not bring the person back.
        ctx.ok(&["clean"]);
        ctx.ok(&["build"]);
        let again = ctx.ingest_json(&["--force", file.to_str().unwrap()]);
        assert_eq!(again["erased"], 6, "{again}");
        assert_eq!(again["landed"], 2, "{again}");
        assert_eq!(again["balanced"], true);
        ctx.ok(&["clean"]);
        ctx.ok(&["build"]);
        assert_eq!(person_rows(&ctx), 0);
        ctx.ok(&["check"]);
    }
);

/// The `--dry-run --json` figures of erasing one person alone: (rows, user ids, anonymous ids).
fn erased_alone(ctx: &TestContext, flag: &str, id: &str) -> (u64, u64, u64) {
    let r: serde_json::Value =
        serde_json::from_str(ctx.ok(&["erase", flag, id, "--dry-run", "--json"]).trim()).unwrap();
    (
        r["rows_removed"].as_u64().unwrap(),
        r["identities"]["user_ids"].as_u64().unwrap(),
        r["identities"]["anonymous_ids"].as_u64().unwrap(),
    )
}

fn raw_events_version(ctx: &TestContext) -> i64 {
    let tables: serde_json::Value = serde_json::from_str(&ctx.ok(&["tables", "--json"])).unwrap();
    tables
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "raw_events")
        .and_then(|t| t["version"].as_i64())
        .unwrap()
}

/// A queue of erasure requests (a DSAR export) is one pass: each person found as an erasure of
/// them alone finds them, everyone's rows gone in one commit per table, one `erasures` row each.
#[test]
fn erase_from_a_file_removes_everyone_it_names_in_one_pass() {
    let (ctx, file) = people_lake(Backend::Local);
    let alone_planted = erased_alone(&ctx, "--email", "planted.person@example.org");
    let alone_keep = erased_alone(&ctx, "--user-id", "user-keep");
    assert!(
        alone_planted.0 > 10 && alone_keep.0 > 2,
        "{alone_planted:?} {alone_keep:?}"
    );

    // Bad rows are refused before anything is read or written, naming file, line and field.
    let bad = |name: &str, text: &str, words: &[&str]| {
        let path = ctx.path(name);
        std::fs::write(&path, text).unwrap();
        crate::context::one_line_failure(
            &ctx.run(&["erase", "--from", path.to_str().unwrap()]),
            2,
            words,
        );
    };
    bad(
        "two.csv",
        "email,user_id\nplanted.person@example.org,\njane@example.org,user-keep\n",
        &["two.csv:3: field email", "one id"],
    );
    bad(
        "header.csv",
        "id,ticket\nu1,T-1\n",
        &["header.csv:1:", "user_id, anonymous_id, email"],
    );
    bad(
        "mail.ndjson",
        "{\"email\":\"user-keep\"}\n",
        &["mail.ndjson:1: field email", "NAME@DOMAIN"],
    );
    bad(
        "none.ndjson",
        "{\"ticket\":\"T-9\"}\n",
        &["none.ndjson:1: field user_id", "one person"],
    );
    let out = ctx.run(&["erase", "--from", "x.csv", "--user-id", "u"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    // A header and no rows: nothing to do, and nothing recorded.
    let empty = ctx.path("empty.csv");
    std::fs::write(&empty, "ticket,email\n").unwrap();
    let said = ctx.ok(&["erase", "--from", empty.to_str().unwrap()]);
    assert!(said.contains("nothing to erase"), "{said}");
    assert_eq!(
        ctx.count("SELECT count(*) FROM _audit WHERE outcome <> 'dry_run'"),
        0
    );

    // `;`-delimited, with a ticket column and the same person twice.
    let requests = ctx.path("requests.csv");
    std::fs::write(
        &requests,
        "ticket;email;user_id\nT-1; Planted.Person@example.org ;\nT-2;;user-keep\nT-3;;user-keep\n",
    )
    .unwrap();
    let from = requests.to_str().unwrap();
    let dry: serde_json::Value = serde_json::from_str(
        ctx.ok(&["erase", "--from", from, "--dry-run", "--json"])
            .trim(),
    )
    .unwrap();
    let people = dry["people"].as_array().unwrap();
    assert_eq!(people.len(), 2, "{dry}");
    let found = |kind: &str| {
        let p = people.iter().find(|p| p["subject_kind"] == kind).unwrap();
        (
            p["rows_removed"].as_u64().unwrap(),
            p["identities"]["user_ids"].as_u64().unwrap(),
            p["identities"]["anonymous_ids"].as_u64().unwrap(),
        )
    };
    assert_eq!(found("email"), alone_planted, "{dry}");
    assert_eq!(found("user_id"), alone_keep, "{dry}");
    assert_eq!(dry["rows_removed"], alone_planted.0 + alone_keep.0, "{dry}");
    assert!(ctx.count("SELECT count(*) FROM events WHERE user_id = 'user-keep'") > 0);
    // A backlog of thousands of people (here 5,000 with no rows besides the two) is one pass
    // too, each of the two found as alone: the predicates are sets, not chains of thousands of
    // `OR`s (which overflowed the stack from about a thousand people).
    let backlog = ctx.path("backlog.csv");
    let mut text = String::from("user_id,email\n,planted.person@example.org\nuser-keep,\n");
    for i in 0..5_000 {
        text.push_str(&format!("absent-{i:05},\n"));
    }
    std::fs::write(&backlog, text).unwrap();
    let many: serde_json::Value = serde_json::from_str(
        ctx.ok(&[
            "erase",
            "--from",
            backlog.to_str().unwrap(),
            "--dry-run",
            "--json",
        ])
        .trim(),
    )
    .unwrap();
    let many_people = many["people"].as_array().unwrap();
    assert_eq!(many_people.len(), 5_002);
    let rows_of = |p: &serde_json::Value| p["rows_removed"].as_u64().unwrap();
    assert_eq!(rows_of(&many_people[0]), alone_planted.0);
    assert_eq!(rows_of(&many_people[1]), alone_keep.0);
    assert!(many_people[2..].iter().all(|p| rows_of(p) == 0));
    assert_eq!(
        many["rows_removed"], dry["rows_removed"],
        "{}",
        many["tables"]
    );

    let raw_before = raw_events_version(&ctx);
    let done = ctx.ok(&["erase", "--from", from]);
    assert!(done.contains("erasure of 2 people"), "{done}");
    assert_eq!(person_rows(&ctx), 0);
    assert_eq!(
        ctx.count("SELECT count(*) FROM raw_events WHERE anonymous_id = 'anon-keep'"),
        0
    );
    assert_eq!(ctx.count("SELECT count(*) FROM events"), 0);
    let leaks = scan(
        &lake_dir(&ctx),
        &[
            "anon-erase-me",
            "anon-erase-phone",
            "user-erase-me",
            "user-keep",
            "anon-keep",
        ],
    );
    assert!(leaks.is_empty(), "{leaks:?}");
    // One row per person, each with its own rows; one commit per table for both.
    assert_eq!(
        ctx.query("SELECT subject_kind, CAST(rows_removed_total AS VARCHAR) FROM erasures ORDER BY subject_kind"),
        vec![
            format!("email,{}", alone_planted.0),
            format!("user_id,{}", alone_keep.0)
        ]
    );
    // raw_events took one erase commit and its vacuum (start, end): erasing the two one by one
    // would have taken six versions.
    assert_eq!(raw_events_version(&ctx), raw_before + 3);
    // Both stay erased: landing the file again stores none of their rows.
    let again = ctx.ingest_json(&["--force", file.to_str().unwrap()]);
    assert_eq!(again["erased"], 8, "{again}");
    assert_eq!(again["landed"], 0, "{again}");
}

/// An erasure killed right after a table's commit leaves that table's superseded files, which
/// still hold the person, and may leave tables it never reached. Until the same request runs
/// again, `status` exits 1 naming it and `run` warns of it. An erasure of someone else, however
/// many commits later, deletes those superseded files but cannot complete it; running the
/// request again removes what is left and completes it.
#[test]
fn an_erasure_cut_off_is_reported_until_its_request_runs_again() {
    let (ctx, _) = people_lake(Backend::Local);
    let ids = ["anon-erase-me", "anon-erase-phone", "user-erase-me"];
    let request = ["erase", "--email", "planted.person@example.org"];
    let out = ctx
        .cmd()
        .env("CLICKLAKE_FAULT", "erase-after-commit:raw_events")
        .args(request)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", stderr_of(&out));
    assert!(!scan(&lake_dir(&ctx), &ids).is_empty());

    let status = ctx.run(&["status", "--json"]);
    assert_eq!(status.status.code(), Some(1), "{}", stderr_of(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let unfinished = &status["unfinished_erasures"][0];
    assert_eq!(
        unfinished["subjects"].as_array().unwrap().len(),
        1,
        "{status}"
    );
    assert!(
        unfinished["tables"]
            .as_array()
            .unwrap()
            .contains(&"raw_events".into()),
        "{status}"
    );
    let out = ctx.run(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("run the same erase request again"),
        "{}",
        stderr_of(&out)
    );

    // More commits on raw_events than any look back over its log would cover.
    for i in 0..12 {
        let f = ctx.path(&format!("more-{i}.ndjson"));
        std::fs::write(&f, crate::context::event_line(&format!("more-{i}"))).unwrap();
        ctx.ok(&["ingest", f.to_str().unwrap()]);
    }
    let run = ctx.run(&["run", "--json"]);
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        summary["unfinished_erasures"], unfinished["erasure_ids"],
        "{summary}"
    );
    assert!(
        stderr_of(&run).contains("unfinished erasure"),
        "{}",
        stderr_of(&run)
    );

    // Someone else's erasure finishes the tables, not the request.
    let r = ctx.ok(&["erase", "--user-id", "nobody", "--json"]);
    let r: serde_json::Value = serde_json::from_str(r.trim()).unwrap();
    let finished = r["interrupted_finished"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(finished.contains(&"raw_events".into()), "{r}");
    assert!(r.get("interrupted_completed").is_none(), "{r}");
    assert_eq!(ctx.run(&["status"]).status.code(), Some(1));

    // A dry run of the request again says what it would finish and complete, and does neither.
    let dry = ctx.ok(&[request[0], request[1], request[2], "--dry-run"]);
    assert!(dry.contains("would complete"), "{dry}");
    assert_eq!(ctx.run(&["status"]).status.code(), Some(1));

    // The request again: nothing of the person is left, and nothing is pending.
    let r = ctx.ok(&[request[0], request[1], request[2], "--json"]);
    let r: serde_json::Value = serde_json::from_str(r.trim()).unwrap();
    assert_eq!(r["interrupted_completed"], unfinished["erasure_ids"], "{r}");
    assert_eq!(person_rows(&ctx), 0);
    let leaks = scan(&lake_dir(&ctx), &ids);
    assert!(leaks.is_empty(), "{leaks:?}");
    let status = ctx.run(&["status", "--json"]);
    assert_eq!(status.status.code(), Some(0), "{}", stderr_of(&status));
    // Once finished, a table is not finished again.
    let r = ctx.ok(&["erase", "--user-id", "nobody", "--json"]);
    assert!(!r.contains("interrupted_finished"), "{r}");
    // Something else where the records go is named, not read as one.
    let stray = lake_dir(&ctx).join("_clicklake/erasures/pending/notes.json");
    std::fs::write(&stray, "not json").unwrap();
    crate::context::one_line_failure(
        &ctx.run(&["status"]),
        3,
        &[
            "_clicklake/erasures/pending/notes.json",
            "not a pending erasure",
        ],
    );
}

#[test]
fn erase_needs_one_subject_and_the_key() {
    let ctx = TestContext::new(Backend::Local);
    let out = ctx.run(&["erase", "--user-id", "a", "--email", "b@c.de"]);
    assert_eq!(out.status.code(), Some(2));
    let out = ctx
        .cmd()
        .env_remove("CLICKLAKE_PII_KEY")
        .args(["erase", "--user-id", "a"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("CLICKLAKE_PII_KEY"),
        "{}",
        stderr_of(&out)
    );
    // An id given as the e-mail would record an erasure of nobody.
    for bad in ["u0000004", "@example.com", "jane@"] {
        crate::context::one_line_failure(
            &ctx.run(&["erase", "--email", bad]),
            2,
            &["is not an e-mail address", "--user-id"],
        );
    }
    // A run holding the lake's lease: erase waits its turn.
    let f = ctx.fixture("native/every_reason.ndjson");
    ctx.ok(&["ingest", f.to_str().unwrap()]);
    let holder = ctx.spawn_paused("run-after-lease:4", &["run"]);
    crate::context::wait_for_a_lease(&ctx);
    let out = ctx.run(&["erase", "--user-id", "a"]);
    assert_eq!(out.status.code(), Some(75), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("--wait"), "{}", stderr_of(&out));
    // With --wait it takes its turn once the run is done.
    let out = ctx.run(&["erase", "--user-id", "a", "--wait", "60s", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let holder = holder.wait_with_output().unwrap();
    assert!(holder.status.success(), "{}", stderr_of(&holder));
    assert_eq!(ctx.count("SELECT count(*) FROM erasures"), 1);
}

/// A decision imported with `clicklake consent` changes no event: the build after it recomputes
/// the favourites table in full, though other customers' events arrived too and it is otherwise
/// incremental, so the withdrawal takes effect at once.
#[test]
fn an_imported_withdrawal_takes_effect_in_the_next_build() {
    let (ctx, _) = people_lake(Backend::Local);
    let interest = |ctx: &TestContext, key: &str| {
        ctx.count(&format!(
            "SELECT count(*) FROM agg_user_interest WHERE user_key = {key}"
        ))
    };
    assert_eq!(interest(&ctx, ERASE_KEY), 1);
    let view = |id: &str, anonymous_id: &str| {
        let file = ctx.path(&format!("{id}.ndjson"));
        std::fs::write(
            &file,
            format!(
                r#"{{"event_id":"{id}","event_time":"2026-02-03T09:00:00Z","event_type":"product_view","anonymous_id":"{anonymous_id}","product_id":"P1","category":"shoes","brand":"Acme","price":20,"currency":"EUR"}}"#
            ),
        )
        .unwrap();
        ctx.ingest_json(&[file.to_str().unwrap()]);
        ctx.ok(&["clean", "-q"]);
    };
    let mode = |summary: &serde_json::Value| -> (String, String) {
        let t = summary["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == "agg_user_interest")
            .unwrap();
        (t["mode"].to_string(), t["reason"].to_string())
    };
    let build = || -> serde_json::Value {
        serde_json::from_str(ctx.ok(&["build", "--json"]).trim()).unwrap()
    };

    view("o1", "anon-other");
    let decisions = ctx.path("consents.csv");
    std::fs::write(
        &decisions,
        "user_id,purpose,status,decided_at
         user-erase-me,personalization,withdrawn,2026-02-03T00:00:00Z
",
    )
    .unwrap();
    ctx.ok(&["consent", decisions.to_str().unwrap()]);
    let (how, why) = mode(&build());
    assert_eq!(how, "\"full\"");
    assert!(why.contains("consent decisions were imported"), "{why}");
    assert_eq!(interest(&ctx, ERASE_KEY), 0);
    let other = "md5(concat('anonymous', chr(31), 'anon-other'))";
    assert_eq!(interest(&ctx, other), 1);

    // The next customer's event: incremental again, the withdrawal still honoured.
    view("o2", "anon-third");
    let (how, why) = mode(&build());
    assert_eq!(how, "\"incremental\"", "{why}");
    assert_eq!(interest(&ctx, ERASE_KEY), 0);
    assert_eq!(interest(&ctx, other), 1);
    assert_eq!(
        interest(&ctx, "md5(concat('anonymous', chr(31), 'anon-third'))"),
        1
    );
    let report = ctx.ok(&["check", "--select", "personalization_respects_consent"]);
    assert!(report.contains("PASS"), "{report}");
}

/// A decision imported by anonymous_id alone applies to the customer that visitor is stitched
/// to (here: the visitor logged in as user-erase-me later in the visit); a visitor never stitched
/// keeps their anonymous key.
#[test]
fn an_anonymous_imported_decision_applies_to_the_stitched_customer() {
    let (ctx, _) = people_lake(Backend::Local);
    let decisions = ctx.path("consents.csv");
    std::fs::write(
        &decisions,
        "anonymous_id,purpose,status,decided_at\n\
         anon-erase-me,personalization,withdrawn,2026-02-03T00:00:00Z\n\
         anon-nobody,marketing,granted,2026-02-03T00:00:00Z\n",
    )
    .unwrap();
    ctx.ok(&["consent", decisions.to_str().unwrap()]);
    ctx.ok(&["build", "-q"]);
    let decided = |key: &str, purpose: &str, granted: bool| {
        ctx.count(&format!(
            "SELECT count(*) FROM user_consent \
             WHERE user_key = {key} AND purpose = '{purpose}' AND granted = {granted}"
        ))
    };
    assert_eq!(decided(ERASE_KEY, "personalization", false), 1);
    let nobody = "md5(concat('anonymous', chr(31), 'anon-nobody'))";
    assert_eq!(decided(nobody, "marketing", true), 1);
    assert_eq!(ctx.count("SELECT count(*) FROM user_consent"), 2);
    assert_eq!(
        ctx.count(&format!(
            "SELECT count(*) FROM agg_user_interest WHERE user_key = {ERASE_KEY}"
        )),
        0,
        "the withdrawal takes the customer out of personalization"
    );
    // Importing the export again adds nothing (a daily import of a full export would otherwise
    // grow the table by its whole size each day); a new decision beside old ones is added alone.
    let again = ctx.ok(&["consent", decisions.to_str().unwrap()]);
    assert!(again.starts_with("nothing new: all 2"), "{again}");
    assert_eq!(ctx.count("SELECT count(*) FROM consents"), 2);
    std::fs::write(
        &decisions,
        "anonymous_id,purpose,status,decided_at\n\
         anon-erase-me,personalization,withdrawn,2026-02-03T00:00:00Z\n\
         anon-nobody,marketing,withdrawn,2026-02-04T00:00:00Z\n\
         anon-nobody,marketing,withdrawn,2026-02-04T00:00:00Z\n",
    )
    .unwrap();
    let more = ctx.ok(&["consent", decisions.to_str().unwrap()]);
    assert!(
        more.starts_with("imported 1 consent decisions (0 grants, 1 withdrawals)")
            && more.contains("2 already imported"),
        "{more}"
    );
    assert_eq!(ctx.count("SELECT count(*) FROM consents"), 3);
    // The same export from a European spreadsheet (`;`, a byte order mark) reads the same.
    let excel = ctx.path("consents-excel.csv");
    std::fs::write(
        &excel,
        "\u{feff}anonymous_id;purpose;status;decided_at\r\n\
         anon-erase-me;personalization;withdrawn;2026-02-03T00:00:00Z\r\n\
         anon-nobody;marketing;withdrawn;2026-02-04T00:00:00Z\r\n",
    )
    .unwrap();
    let same = ctx.ok(&["consent", excel.to_str().unwrap()]);
    assert!(same.starts_with("nothing new: all 2"), "{same}");
}

const KEEP_KEY: &str = "md5(concat('user', chr(31), 'user-keep'))";

both_backends!(
    consent_decides_who_is_personalised_and_counted,
    |backend: Backend| {
        let (ctx, _) = people_lake(backend);
        let in_features = |ctx: &TestContext| {
            ctx.count(&format!(
                "SELECT count(*) FROM agg_user_features WHERE user_key = {KEEP_KEY}"
            ))
        };
        assert_eq!(in_features(&ctx), 1);
        let funnel_sessions =
            |ctx: &TestContext| ctx.count("SELECT sum(sessions) FROM agg_funnel_daily");
        let sessions_before = funnel_sessions(&ctx);

        // A consent_withdrawn event for personalization: gone from features and segments.
        let withdraw = ctx.path("withdraw.ndjson");
        std::fs::write(
        &withdraw,
        r#"{"event_id":"c1","event_time":"2026-02-01T12:00:00Z","received_at":"2026-02-01T12:00:01Z","event_type":"consent_withdrawn","user_id":"user-keep","anonymous_id":"anon-keep","purposes":["personalization"]}"#,
    )
    .unwrap();
        ctx.ingest_json(&[withdraw.to_str().unwrap()]);
        ctx.ok(&["clean"]);
        ctx.ok(&["build"]);
        assert_eq!(in_features(&ctx), 0);
        assert_eq!(
            ctx.count(&format!(
                "SELECT count(*) FROM user_segments WHERE user_key = {KEEP_KEY}"
            )),
            0
        );
        assert_eq!(
            ctx.query(&format!(
                "SELECT purpose, granted, source FROM user_consent WHERE user_key = {KEEP_KEY}"
            )),
            vec!["personalization,false,event:c1"]
        );
        let report = ctx.ok(&["check", "--select", "personalization_respects_consent"]);
        assert!(report.contains("PASS"), "{report}");

        // A later grant from a consent file brings them back; an analytics withdrawal takes their
        // sessions out of the funnel aggregate.
        let grants = ctx.path("consents.csv");
        std::fs::write(
            &grants,
            "user_id,purpose,status,decided_at,version\n\
         user-keep,personalization,granted,2026-02-03T00:00:00Z,v2\n\
         user-keep,analytics,withdrawn,2026-02-03T00:00:00Z,v2\n",
        )
        .unwrap();
        let out = ctx.ok(&["consent", grants.to_str().unwrap()]);
        assert!(out.contains("imported 2 consent decisions"), "{out}");
        ctx.ok(&["build"]);
        assert_eq!(in_features(&ctx), 1);
        assert_eq!(funnel_sessions(&ctx), sessions_before - 1);

        // require_consent: only customers with a personalization grant are personalised.
        ctx.write_config("[privacy]\nrequire_consent = true\n");
        ctx.ok(&["build"]);
        assert_eq!(ctx.count("SELECT count(*) FROM agg_user_features"), 1);
        assert_eq!(in_features(&ctx), 1);
        ctx.ok(&["check"]);

        // A bad consent row: exit 2 naming file, line and field; nothing imported.
        std::fs::write(
            &grants,
            "user_id,purpose,status,decided_at\nu1,marketing,maybe,2026-02-03T00:00:00Z\n",
        )
        .unwrap();
        let out = ctx.run(&["consent", grants.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2));
        let err = stderr_of(&out);
        assert!(err.contains("consents.csv:2: field status"), "{err}");
        assert_eq!(ctx.count("SELECT count(*) FROM consents"), 2);
    }
);

/// An ingest that parsed a person's rows before their erasure must not land them after it (it
/// did: the erasure reported them gone while the ingest's commit put them back). Its commit
/// waits for the lake's lease, finds the erasure recorded, and commits nothing (exit 75); run
/// again, it refuses the person's rows.
#[test]
fn an_ingest_running_during_an_erasure_does_not_land_the_erased_person() {
    let ctx = TestContext::new(Backend::Local);
    ctx.generate("gen", &["--events", "4000", "--files", "2", "--seed", "5"]);
    let users = |file: &str| -> std::collections::BTreeSet<String> {
        std::fs::read_to_string(ctx.path(file))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["user_id"].as_str().map(str::to_string))
            .collect()
    };
    let (first, second) = ("gen/events-0001.ndjson", "gen/events-0002.ndjson");
    let person = users(first)
        .intersection(&users(second))
        .next()
        .cloned()
        .expect("a customer seen in both files");
    ctx.ok(&["ingest", ctx.path(first).to_str().unwrap()]);

    let raw_dir = ctx.table_dir("raw_events");
    let before = crate::context::parquet_files_under(&raw_dir);
    let ingest = ctx.spawn_paused(
        "ingest-after-data-files:5",
        &["ingest", ctx.path(second).to_str().unwrap()],
    );
    // It has parsed the file and written its data files; it commits after the pause.
    crate::context::wait_for_new_files(&raw_dir, before);
    ctx.ok(&["erase", "--user-id", &person]);

    let out = ingest.wait_with_output().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(
        err.contains("an erasure was recorded while this ingest ran"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    let rows_of = |table: &str| {
        ctx.count(&format!(
            "SELECT count(*) FROM {table} WHERE user_id = '{person}'"
        ))
    };
    assert_eq!(rows_of("raw_events"), 0);

    let s = ctx.ingest_json(&[ctx.path(second).to_str().unwrap()]);
    assert!(
        s["erased"].as_u64().unwrap() > 0,
        "the person's rows are refused: {s}"
    );
    assert_eq!(rows_of("raw_events"), 0);
    assert_eq!(s["balanced"], true, "{s}");
}

#[test]
fn consent_decisions_follow_their_customer_across_ticks_as_a_full_build_has_them() {
    let (ctx, _) = people_lake(Backend::Local);
    let decisions = ctx.path("consents.csv");
    std::fs::write(
        &decisions,
        "anonymous_id,user_id,purpose,status,decided_at\n\
         anon-later,,personalization,withdrawn,2026-02-03T00:00:00Z\n\
         ,user-keep,marketing,granted,2026-02-03T00:00:00Z\n",
    )
    .unwrap();
    ctx.ok(&["consent", decisions.to_str().unwrap()]);
    let tick = |name: &str, lines: &[&str]| {
        let file = ctx.path(name);
        std::fs::write(&file, lines.join("\n")).unwrap();
        ctx.ingest_json(&[file.to_str().unwrap()]);
        ctx.ok(&["clean", "-q"]);
        ctx.ok(&["build", "-q"]);
    };
    let consent = || {
        ctx.query(
            "SELECT user_key, purpose, granted, decided_at, source FROM user_consent \
             ORDER BY user_key, purpose",
        )
    };
    let later_anon = "md5(concat('anonymous', chr(31), 'anon-later'))";
    let later_user = "md5(concat('user', chr(31), 'user-later'))";
    let rows_of = |key: &str| {
        ctx.query(&format!(
            "SELECT purpose, granted FROM user_consent WHERE user_key = {key} ORDER BY purpose"
        ))
    };

    // Decisions from the import and from events, per customer; the latest wins.
    tick(
        "a.ndjson",
        &[
            r#"{"event_id":"k1","event_time":"2026-02-02T09:00:00Z","event_type":"page_view","anonymous_id":"anon-later","session_id":"s-later-1"}"#,
            r#"{"event_id":"k2","event_time":"2026-02-02T09:30:00Z","event_type":"consent_granted","user_id":"user-keep","anonymous_id":"anon-keep","purposes":["analytics"]}"#,
            r#"{"event_id":"k3","event_time":"2026-02-02T10:00:00Z","event_type":"consent_withdrawn","anonymous_id":"anon-cookie","purpose":"marketing"}"#,
        ],
    );
    assert_eq!(rows_of(later_anon), ["personalization,false"]);
    tick(
        "b.ndjson",
        &[
            r#"{"event_id":"k4","event_time":"2026-02-02T11:00:00Z","event_type":"consent_withdrawn","user_id":"user-keep","anonymous_id":"anon-keep","purposes":["analytics"]}"#,
        ],
    );
    assert_eq!(
        rows_of(KEEP_KEY),
        ["analytics,false", "marketing,true"],
        "the later withdrawal wins"
    );
    // A login stitches anon-later to user-later: its imported anonymous decision moves to the
    // user's key.
    tick(
        "c.ndjson",
        &[
            r#"{"event_id":"k5","event_time":"2026-02-02T12:00:00Z","event_type":"identify","user_id":"user-later","anonymous_id":"anon-later","session_id":"s-later-1"}"#,
        ],
    );
    assert_eq!(rows_of(later_anon), Vec::<String>::new());
    assert_eq!(rows_of(later_user), ["personalization,false"]);
    assert_eq!(
        ctx.count(&format!(
            "SELECT count(*) FROM agg_user_interest WHERE user_key = {later_user}"
        )),
        0
    );
    let incremental = consent();
    assert_eq!(incremental.len(), 4, "{incremental:#?}");
    ctx.ok(&["build", "-q", "--full-refresh"]);
    assert_eq!(consent(), incremental);
}
