//! `init`, `tables` and `sql -c` on a fresh and on a populated lake.

use crate::both_backends;
use crate::context::{Backend, TestContext};

both_backends!(
    init_is_idempotent_and_tables_lists_everything,
    |backend: Backend| {
        let ctx = TestContext::new(backend);
        let first = ctx.ok(&["init"]);
        assert!(
            first.contains("raw_events") && first.contains("quarantine"),
            "{first}"
        );
        assert!(
            ctx.path("clicklake.toml").is_file(),
            "init writes a config template"
        );
        ctx.ok(&["init"]);
        let t: serde_json::Value = serde_json::from_str(&ctx.ok(&["tables", "--json"])).unwrap();
        let names: Vec<&str> = t
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].as_str().unwrap())
            .collect();
        let core = [
            "raw_events",
            "quarantine",
            "ingested_files",
            "events",
            "events_changes",
        ];
        assert_eq!(names[..core.len()], core);
        assert!(names.contains(&"fact_sessions") && names.contains(&"user_segment_history"));
        for x in t.as_array().unwrap() {
            if core.contains(&x["name"].as_str().unwrap()) {
                assert!(
                    x["exists"] == true && x["version"] == 0 && x["rows"] == 0,
                    "{x}"
                );
            } else {
                // Star tables appear with the first build.
                assert_eq!(x["exists"], false, "{x}");
            }
        }

        let m = ctx.generate(
            "gen",
            &["--events", "3000", "--files", "2", "--dirty", "--days", "3"],
        );
        ctx.ok(&["ingest", ctx.path("gen").to_str().unwrap()]);
        let t: serde_json::Value = serde_json::from_str(&ctx.ok(&["tables", "--json"])).unwrap();
        let raw = &t[0];
        assert_eq!(raw["rows"], m["valid_lines"]);
        assert_eq!(raw["version"], 1);
        // 3 days (plus late/future spill at most a day either side) × {anonymous, unsegmented}.
        let parts = raw["partitions"].as_u64().unwrap();
        assert!((6..=10).contains(&parts), "{raw}");
        let text = ctx.ok(&["tables"]);
        assert!(
            text.lines()
                .any(|l| l.starts_with("raw_events") && l.contains("event_date, segment")),
            "{text}"
        );
    }
);

#[test]
fn sql_output_formats() {
    let ctx = TestContext::new(Backend::Local);
    let f = ctx.fixture("native/every_reason.ndjson");
    ctx.ok(&["ingest", f.to_str().unwrap()]);
    let q = "SELECT event_id, price FROM raw_events ORDER BY event_id";
    assert_eq!(
        ctx.ok(&["sql", "--format", "csv", "-c", q]),
        "event_id,price\ne1,59.90\ne18,19.99\ne20,\n"
    );
    assert_eq!(
        ctx.ok(&["sql", "--format", "tsv", "-c", q]),
        "event_id\tprice\ne1\t59.90\ne18\t19.99\ne20\t\n"
    );
    let nd = ctx.ok(&["sql", "--format", "ndjson", "-c", q]);
    assert_eq!(nd.lines().count(), 3);
    let first: serde_json::Value = serde_json::from_str(nd.lines().next().unwrap()).unwrap();
    assert_eq!(first["event_id"], "e1");
    let js: serde_json::Value =
        serde_json::from_str(&ctx.ok(&["sql", "--format", "json", "-c", q])).unwrap();
    assert_eq!(js.as_array().unwrap().len(), 3);
    let table = ctx.ok(&["sql", "-c", q]);
    assert!(table.contains("| e18      | 19.99 |"), "{table}");
}
