//! `clicklake status`: freshness per table and `--max-lag` exit codes for alerting.

use crate::both_backends;
use crate::context::{stderr_of, Backend, TestContext};

both_backends!(
    max_lag_names_stale_tables_and_exits_1,
    |backend: Backend| {
        let ctx = TestContext::new(backend);
        let start = (chrono::Utc::now() - chrono::Duration::days(3))
            .format("%Y-%m-%d")
            .to_string();
        ctx.generate(
            "gen",
            &[
                "--events", "2000", "--files", "2", "--start", &start, "--days", "1",
            ],
        );
        ctx.ingest_json(&[ctx.path("gen").to_str().unwrap()]);
        ctx.ok(&["clean", "-q"]);
        ctx.ok(&["build", "-q"]);

        // Events lie on the day that started three days ago (midnight UTC), and a session may
        // run some minutes past its midnight, so the latest one is a little under two to four
        // days old, depending on the time of day: within 5 days, not an hour.
        let out = ctx.run(&["status", "--max-lag", "5d", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let table = |name: &str| {
            report["tables"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["table"] == name)
                .unwrap_or_else(|| panic!("{name} missing from {report}"))
                .clone()
        };
        let events = table("events");
        let lag = events["lag_seconds"].as_i64().unwrap();
        assert!((86_400..4 * 86_400).contains(&lag), "{events}");
        // A star table is as fresh as the events it reflects.
        assert_eq!(
            table("fact_sessions")["latest_event_time"],
            events["latest_event_time"]
        );
        assert_eq!(table("raw_events")["rows"], 2000);

        let out = ctx.run(&["status", "--max-lag", "1h"]);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr_of(&out);
        assert!(
            err.contains("stale: raw_events (lag ") && err.contains("fact_sessions (lag"),
            "{err}"
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("STALE"));
        // Consent imports, erasures, runs and the audit trail happen when people and commands
        // act, not as data flows: the lake-wide limit leaves them out (a lake without a consent
        // import for an hour is not stale), and a limit by name applies.
        let out = ctx.run(&["status", "--max-lag", "1s", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let records = ["consents", "erasures", "_runs", "_audit"];
        let listed: Vec<&serde_json::Value> = report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| records.contains(&t["table"].as_str().unwrap()))
            .collect();
        assert!(!listed.is_empty(), "{report}");
        for t in listed {
            assert_eq!(t["max_lag_seconds"], serde_json::Value::Null, "{t}");
            assert_eq!(t["stale"], false, "{t}");
        }
        assert!(
            report["stale"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| !records.contains(&t.as_str().unwrap())),
            "{report}"
        );
        let named = &listed_name(&report, &records);
        ctx.write_config(format!("[status.max_lag_tables]\n{named} = \"1s\"\n"));
        // Lags are whole seconds and stale means over the limit: 2 s is the first lag over 1s.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let out = ctx.run(&["status", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["stale"], serde_json::json!([named]), "{report}");
        std::fs::remove_file(ctx.path("clicklake.toml")).unwrap();

        // Quiet when all is well: nothing on stdout or stderr.
        let out = ctx.run(&["--quiet", "status", "--max-lag", "5d"]);
        assert_eq!(out.status.code(), Some(0));
        assert!(out.stdout.is_empty() && out.stderr.is_empty());

        // Per-table limits in the config override --max-lag for those tables.
        ctx.write_config("[status]\nmax_lag = \"5d\"\n[status.max_lag_tables]\nevents = \"1h\"\n");
        let out = ctx.run(&["status", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["stale"], serde_json::json!(["events"]), "{report}");
        let out = ctx.run(&["status", "--max-lag", "1h"]);
        let err = stderr_of(&out);
        assert!(
            err.contains("raw_events (lag") && err.contains("events (lag"),
            "{err}"
        );
        ctx.write_config("[status.max_lag_tables]\nevents = \"soon\"\n");
        let out = ctx.run(&["status"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr_of(&out).contains("status.max_lag_tables.events"),
            "{}",
            stderr_of(&out)
        );
        std::fs::remove_file(ctx.path("clicklake.toml")).unwrap();

        let out = ctx.run(&["status", "--max-lag", "5 parsecs"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr_of(&out).contains("--max-lag"), "{}", stderr_of(&out));
    }
);

/// The first of `names` the status report lists.
fn listed_name(report: &serde_json::Value, names: &[&str]) -> String {
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["table"].as_str())
        .find(|t| names.contains(t))
        .unwrap_or_else(|| panic!("none of {names:?} in {report}"))
        .to_string()
}

/// Monitoring pointed at a lake that has nothing (a mistyped URL, a wiped prefix, nothing ever
/// ingested) must alert, and a CI gate that could run no check must not pass.
#[test]
fn a_lake_without_its_tables_is_stale_and_has_nothing_to_check() {
    let ctx = TestContext::new(Backend::Local);
    let out = ctx.run(&["status", "--max-lag", "1h"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("stale: raw_events (missing at file://"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("missing"));
    let out = ctx.run(&["status", "--max-lag", "1h", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["stale"],
        serde_json::json!(["raw_events"]),
        "{report}"
    );
    // Without a limit it is a report, not an alert.
    assert_eq!(ctx.run(&["status"]).status.code(), Some(0));

    let out = ctx.run(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("no check ran") && err.contains("--lake"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");

    let f = ctx.fixture("native/every_reason.ndjson");
    ctx.ok(&["ingest", f.to_str().unwrap()]);
    ctx.ok(&["clean"]);
    ctx.ok(&["check"]);
    ctx.ok(&["status", "--max-lag", "36500d"]);
    // A table given its own limit is expected to exist.
    ctx.write_config("[status.max_lag_tables]\nfact_orders = \"1d\"\n");
    let out = ctx.run(&["status", "--max-lag", "36500d"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("stale: fact_orders (missing at"),
        "{}",
        stderr_of(&out)
    );
    // A misspelt one is a configuration error, not a table that never turns up.
    ctx.write_config("[status.max_lag_tables]\nfact_ordrs = \"1d\"\n");
    let out = ctx.run(&["status"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("status.max_lag_tables.fact_ordrs: not one of the lake's tables"),
        "{}",
        stderr_of(&out)
    );
}
