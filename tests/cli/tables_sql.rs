//! `init`, `tables` and `sql -c` on a fresh and on a populated lake.

use crate::both_backends;
use crate::context::{one_line_failure, stderr_of, Backend, TestContext};

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
            "_runs",
            "erasures",
            "consents",
            "_audit",
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
    // The rows and the time from planning to the last row, on stderr (as datafusion-cli's
    // "Elapsed"), apart from the result.
    let run = ctx.run(&["sql", "-c", q]);
    let said = String::from_utf8_lossy(&run.stderr).trim().to_string();
    let secs = said
        .strip_prefix("3 row(s) in ")
        .and_then(|s| s.strip_suffix(" s"))
        .and_then(|s| s.parse::<f64>().ok());
    assert!(secs.is_some_and(|s| s < 60.0), "{said}");
    // An empty result still names its columns (it printed `++`, and CSV nothing at all).
    let none = "SELECT event_id, price FROM raw_events WHERE false";
    assert_eq!(
        ctx.ok(&["sql", "-c", none]),
        "+----------+-------+\n| event_id | price |\n+----------+-------+\n+----------+-------+\n"
    );
    assert_eq!(
        ctx.ok(&["sql", "--format", "csv", "-c", none]),
        "event_id,price\n"
    );
    assert_eq!(ctx.ok(&["sql", "--format", "json", "-c", none]), "[]\n");
    // Wide rows as `column = value` lines, names aligned, a blank line between rows.
    assert_eq!(
        ctx.ok(&["sql", "--format", "line", "-c", &format!("{q} LIMIT 2")]),
        "event_id = e1\n   price = 59.90\n\nevent_id = e18\n   price = 19.99\n"
    );
    // The display formats show 40 rows unless told otherwise and count the rest; the machine
    // formats write every row.
    let hundred = "SELECT value FROM range(100)";
    let shown = |args: &[&str]| {
        let out = ctx.ok(&[&["sql", "-c", hundred][..], args].concat());
        let rows = out.lines().filter(|l| l.starts_with("| ")).count() - 1;
        (rows, out.lines().last().unwrap_or_default().to_string())
    };
    assert_eq!(shown(&[]), (40, "(40 of 100 rows shown)".into()));
    assert_eq!(
        shown(&["--max-rows", "7"]),
        (7, "(7 of 100 rows shown)".into())
    );
    assert_eq!(shown(&["--max-rows", "0"]).0, 100);
    assert_eq!(shown(&["--max-rows", "0"]).1, "+-------+");
    let lines = ctx.ok(&["sql", "--format", "line", "--max-rows", "2", "-c", hundred]);
    assert_eq!(lines, "value = 0\n\nvalue = 1\n\n(2 of 100 rows shown)\n");
    let csv = ctx.ok(&["sql", "--format", "csv", "--max-rows", "2", "-c", hundred]);
    assert_eq!(csv.lines().count(), 101);
    // Markdown, to paste: every row, numbers aligned right, NULL empty, a `|` escaped and a
    // line break as <br> so that a cell stays on its line.
    assert_eq!(
        ctx.ok(&["sql", "--format", "markdown", "-c", q]),
        "| event_id | price |\n| --- | ---: |\n| e1 | 59.90 |\n| e18 | 19.99 |\n| e20 |  |\n"
    );
    assert_eq!(
        ctx.ok(&[
            "sql",
            "--format",
            "markdown",
            "-c",
            "SELECT 'a|b' AS \"x|y\", concat('l1', chr(10), 'l2') AS z"
        ]),
        "| x\\|y | z |\n| --- | --- |\n| a\\|b | l1<br>l2 |\n"
    );
    let md = ctx.ok(&[
        "sql",
        "--format",
        "markdown",
        "--max-rows",
        "2",
        "-c",
        hundred,
    ]);
    assert_eq!(md.lines().count(), 102);

    // SHOW TABLES: the lake's tables first, by name, the same on every run.
    let shown = ctx.ok(&["sql", "--format", "csv", "-c", "SHOW TABLES"]);
    let schemas_and_names: Vec<(String, String)> = shown
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[1].to_string(), f[2].to_string())
        })
        .collect();
    let mut sorted = schemas_and_names.clone();
    sorted.sort_by_key(|(schema, name)| {
        (schema == "information_schema", schema.clone(), name.clone())
    });
    assert_eq!(schemas_and_names, sorted, "{shown}");
    assert!(schemas_and_names.contains(&("public".into(), "raw_events".into())));

    // SUMMARIZE profiles every column in one pass, as DuckDB's does.
    let summary = ctx.ok(&["sql", "--format", "csv", "-c", "SUMMARIZE raw_events"]);
    let row = |column: &str| {
        summary
            .lines()
            .find(|l| l.starts_with(&format!("{column},")))
            .unwrap_or_else(|| panic!("{column} not summarized: {summary}"))
            .to_string()
    };
    assert!(
        summary.starts_with(
            "column_name,column_type,min,max,approx_unique,avg,std,q25,q50,q75,count,null_percentage\n"
        ),
        "{summary}"
    );
    assert!(
        row("price").starts_with("price,\"DECIMAL(18, 2)\",19.99,59.90,2,39.945,"),
        "{}",
        row("price")
    );
    assert!(row("price").ends_with(",2,33.33"), "{}", row("price"));
    assert_eq!(row("event_id"), "event_id,VARCHAR,e1,e20,3,,,,,,3,0.0");
    // Of a query, in a file, in the REPL; a table that is not there is exit 2 naming the tables.
    let query = "SUMMARIZE SELECT price * 2 AS doubled FROM raw_events;";
    let expected = "doubled,\"DECIMAL(38, 2)\",39.98,119.80,2,79.89,";
    assert!(
        ctx.ok(&["sql", "--format", "csv", "-c", query])
            .contains(expected),
        "{}",
        ctx.ok(&["sql", "--format", "csv", "-c", query])
    );
    // Among other statements, cut at the `;`s SQL's tokenizer finds (not the one in a string).
    let script = format!("SELECT 'a;b' AS seven;\n-- the profile\n{query}\nSELECT 8 AS eight");
    std::fs::write(ctx.path("profile.sql"), &script).unwrap();
    let file = ctx.path("profile.sql");
    let from_file = ctx.ok(&["sql", "--format", "csv", "-f", file.to_str().unwrap()]);
    assert!(
        from_file.starts_with("seven\na;b\ncolumn_name,") && from_file.ends_with("eight\n8\n"),
        "{from_file}"
    );
    assert!(from_file.contains(expected), "{from_file}");
    // A file's meta-commands run where a statement may start, as in psql.
    std::fs::write(
        ctx.path("meta.sql"),
        "\\format csv\nSELECT 5 AS five;\n\\d raw_events\nSELECT '\n\\x' AS s;\n",
    )
    .unwrap();
    let meta = ctx.path("meta.sql");
    let out = ctx.ok(&["sql", "-f", meta.to_str().unwrap()]);
    assert!(out.starts_with("five\n5\nraw_events\n  event_id "), "{out}");
    assert!(out.ends_with("s\n\"\n\\x\"\n"), "{out}");
    std::fs::write(&meta, "SELECT 1;\n\\bogus\n").unwrap();
    let out = ctx.run(&["sql", "-f", meta.to_str().unwrap()]);
    one_line_failure(&out, 2, &["meta.sql:2: unknown command `\\bogus`"]);
    assert!(
        out.stdout.is_empty(),
        "nothing runs before the file is checked"
    );
    // One that fails as it runs names its line too.
    std::fs::write(&meta, "SELECT 1;\n\\d nothing_here\n").unwrap();
    let out = ctx.run(&["sql", "-f", meta.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("meta.sql:2: no table \"nothing_here\""),
        "{}",
        stderr_of(&out)
    );
    let repl = ctx
        .cmd()
        .args(["sql", "--format", "csv"])
        .write_stdin(format!("{query}\n"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&repl.stdout).contains(expected));
    let out = ctx.run(&["sql", "-c", "SUMMARIZE raw_evnts"]);
    one_line_failure(&out, 2, &["raw_evnts", "the lake's tables: "]);

    // DESCRIBE names types as SQL does, in every format, as `\d` does.
    let described = ctx.ok(&["sql", "--format", "csv", "-c", "DESCRIBE raw_events"]);
    assert!(
        described.starts_with("column_name,data_type,is_nullable\nevent_id,VARCHAR,"),
        "{described}"
    );
    assert!(
        described.contains("\nprice,\"DECIMAL(18, 2)\","),
        "{described}"
    );
    assert!(!described.contains("Utf8"), "{described}");
    // So does SHOW COLUMNS, whose rows come from the information schema.
    let shown = ctx.ok(&[
        "sql",
        "--format",
        "csv",
        "-c",
        "SHOW COLUMNS FROM raw_events",
    ]);
    assert!(
        shown.contains("raw_events,event_time,TIMESTAMP WITH TIME ZONE (UTC),YES"),
        "{shown}"
    );
    assert!(shown.contains("raw_events,segment,VARCHAR,"), "{shown}");
    assert!(
        !shown.contains("Utf8") && !shown.contains("Dictionary"),
        "{shown}"
    );
    // A -c may be a meta-command, as in psql; `\format` holds for the statements after it.
    let meta = ctx.ok(&["sql", "-c", "\\d raw_events", "-c", "\\format csv", "-c", q]);
    assert!(meta.starts_with("raw_events\n  event_id "), "{meta}");
    assert!(
        meta.contains("partitioned by event_date, segment"),
        "{meta}"
    );
    assert!(
        meta.ends_with("event_id,price\ne1,59.90\ne18,19.99\ne20,\n"),
        "{meta}"
    );
    let out = ctx.run(&["sql", "-c", "\\d nothing_here"]);
    one_line_failure(
        &out,
        2,
        &["SQL `\\d nothing_here`: no table \"nothing_here\""],
    );
    let out = ctx.run(&["sql", "-c", "\\bogus", "-c", q]);
    one_line_failure(&out, 2, &["-c #1", "unknown command `\\bogus`"]);
    assert!(
        out.stdout.is_empty(),
        "nothing runs before the arguments are checked"
    );
}

both_backends!(
    files_and_urls_are_tables_in_ad_hoc_sql,
    |backend: Backend| {
        let ctx = TestContext::new(backend);
        let f = ctx.fixture("native/every_reason.ndjson");
        ctx.ok(&["ingest", f.to_str().unwrap()]);
        // A campaign list next to the lake, joined by path as in DuckDB or datafusion-cli; on S3 it
        // is read from a bucket with the lake's store settings.
        let campaigns = ctx.path("campaigns.csv");
        std::fs::write(&campaigns, "event_id,campaign\ne1,autumn\ne20,winter\n").unwrap();
        let campaigns = match &ctx.s3 {
            None => campaigns.display().to_string(),
            Some(_) => ctx.upload_to_inbox(&campaigns, "lists/campaigns.csv"),
        };
        let joined = ctx.ok(&[
            "sql",
            "--format",
            "csv",
            "-c",
            &format!(
                "SELECT r.event_id, c.campaign FROM raw_events r JOIN '{campaigns}' c \
             USING (event_id) ORDER BY 1"
            ),
        ]);
        assert_eq!(joined, "event_id,campaign\ne1,autumn\ne20,winter\n");
        // COPY TO the same kind of location, and read back by its URL.
        let export = match &ctx.s3 {
            None => ctx.path("exports/ids.parquet").display().to_string(),
            Some(_) => "s3://inbox/exports/ids.parquet".to_string(),
        };
        ctx.ok(&[
            "sql",
            "-c",
            &format!("COPY (SELECT event_id FROM raw_events) TO '{export}'"),
        ]);
        let back = ctx.ok(&[
            "sql",
            "--format",
            "csv",
            "-c",
            &format!("SELECT count(*) AS n FROM '{export}'"),
        ]);
        assert_eq!(back, "n\n3\n");
        // A path with nothing readable, and a store clicklake has no client for: one line, exit 2.
        let missing = campaigns.replace("campaigns.csv", "nothing-here.csv");
        let out = ctx.run(&["sql", "-c", &format!("SELECT * FROM '{missing}'")]);
        one_line_failure(&out, 2, &["nothing readable at", "nothing-here.csv"]);
        let out = ctx.run(&["sql", "-c", "COPY (SELECT 1 AS a) TO 'gs://bucket/a.csv'"]);
        one_line_failure(&out, 2, &["gs:// is not a store clicklake reads or writes"]);
    }
);

#[test]
fn sql_files_run_statement_by_statement_and_stop_at_the_first_error() {
    let ctx = TestContext::new(Backend::Local);
    let f = ctx.fixture("native/every_reason.ndjson");
    ctx.ok(&["ingest", f.to_str().unwrap()]);
    std::fs::write(
        ctx.path("ok.sql"),
        "-- two statements\nSELECT count(*) AS n FROM raw_events;\n\nSELECT 'second' AS s;\n",
    )
    .unwrap();
    assert_eq!(
        ctx.ok(&["sql", "--format", "csv", "-f", "ok.sql"]),
        "n\n3\ns\nsecond\n"
    );
    std::fs::write(
        ctx.path("bad.sql"),
        "SELECT 1 AS a;\nSELECT nope FROM raw_events;\nSELECT 3 AS c;\n",
    )
    .unwrap();
    let out = ctx.run(&["sql", "--format", "csv", "-f", "bad.sql"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "a\n1\n",
        "stops at the error"
    );
    let err = crate::context::stderr_of(&out);
    assert!(
        err.contains("statement 2 `SELECT nope FROM raw_events`"),
        "{err}"
    );
    let out = ctx.run(&["sql", "-f", "missing.sql"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(crate::context::stderr_of(&out).contains("missing.sql"));
    // Several -c, as psql and datafusion-cli take them: run in order, the file's output again; a
    // `--` comment ends with its -c. A -c that does not parse is named, and nothing runs.
    assert_eq!(
        ctx.ok(&[
            "sql",
            "--format",
            "csv",
            "-c",
            "SELECT count(*) AS n FROM raw_events -- the landed rows",
            "-c",
            "SELECT 'second' AS s;",
        ]),
        "n\n3\ns\nsecond\n"
    );
    let out = ctx.run(&["sql", "-c", "SELECT 1 AS a", "-c", "SELEC 2"]);
    crate::context::one_line_failure(&out, 2, &["-c #2 `SELEC 2`"]);
    assert!(out.stdout.is_empty());

    // A report file with parameters, as cron runs it for each day.
    std::fs::write(
        ctx.path("day.sql"),
        "SELECT count(*) AS n FROM raw_events WHERE event_date = DATE '${day}' AND event_type = '${type}';\n",
    )
    .unwrap();
    let day = |d: &str, t: &str| {
        let day = format!("day={d}");
        let ty = format!("type={t}");
        let args = [
            "sql", "--format", "csv", "-f", "day.sql", "--param", &day, "--param", &ty,
        ];
        ctx.ok(&args)
    };
    let literal = |d: &str, t: &str| {
        let sql = format!(
            "SELECT count(*) AS n FROM raw_events WHERE event_date = DATE '{d}' AND event_type = '{t}'"
        );
        ctx.ok(&["sql", "--format", "csv", "-c", &sql])
    };
    assert_eq!(day("2026-01-05", "purchase"), "n\n1\n");
    assert_eq!(
        day("2026-01-05", "purchase"),
        literal("2026-01-05", "purchase")
    );
    assert_eq!(
        day("2026-01-04", "page_view"),
        literal("2026-01-04", "page_view")
    );
    assert_eq!(day("2026-01-06", "purchase"), "n\n0\n");
    crate::context::one_line_failure(
        &ctx.run(&["sql", "-f", "day.sql", "--param", "day=2026-01-05"]),
        2,
        &["day.sql", "${type} has no value", "--param type=VALUE"],
    );
    crate::context::one_line_failure(
        &ctx.run(&["sql", "-c", "SELECT 1", "--param", "day"]),
        2,
        &["--param \"day\"", "NAME=VALUE"],
    );
    crate::context::one_line_failure(
        &ctx.run(&["sql", "--param", "a=1"]),
        2,
        &["-c SQL or -f PATH"],
    );
}

// A lookup by visitor reads only the row groups whose bloom filter on `anonymous_id` admits the
// visitor (min/max statistics of random ids skip nothing); the count stays exact.
both_backends!(
    a_visitors_events_are_read_from_the_row_groups_their_bloom_filters_admit,
    |backend: Backend| {
        let ctx = TestContext::new(backend);
        ctx.generate(
            "gen",
            &["--events", "3000", "--files", "2", "--dirty", "--days", "3"],
        );
        ctx.ok(&["ingest", ctx.path("gen").to_str().unwrap()]);
        ctx.ok(&["clean"]);
        let csv = |sql: &str| ctx.ok(&["sql", "--format", "csv", "-c", sql]);
        // The busiest visitor of the first day: seen on fewer days than the lake holds.
        let top = csv("SELECT anonymous_id, count(*) FROM events \
             WHERE event_date = (SELECT min(event_date) FROM events) \
             GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1");
        let visitor = top
            .lines()
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .to_string();
        let expected = csv(&format!(
            "SELECT count(*) FROM (SELECT anonymous_id || '' AS v FROM events) WHERE v = '{visitor}'"
        ));
        let expected: u64 = expected.lines().nth(1).unwrap().parse().unwrap();
        assert!(expected > 0);
        let (total, matched) = ctx.bloom_filter_row_groups(&format!(
            "SELECT count(*) FROM events WHERE anonymous_id = '{visitor}'"
        ));
        assert!(
            matched >= 1 && matched < total,
            "{matched} of {total} row groups read for one visitor"
        );
        let got = csv(&format!(
            "SELECT count(*) FROM events WHERE anonymous_id = '{visitor}'"
        ));
        assert_eq!(
            got.lines().nth(1).unwrap().parse::<u64>().unwrap(),
            expected
        );
    }
);

both_backends!(time_travel_by_version_and_time, |backend: Backend| {
    let ctx = TestContext::new(backend);
    let f = ctx.fixture("native/every_reason.ndjson");
    ctx.ok(&["init"]);
    ctx.ok(&["ingest", f.to_str().unwrap()]);
    let between = chrono::Utc::now();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ctx.ok(&["ingest", "--force", f.to_str().unwrap()]);
    let count = |extra: &[&str]| {
        let mut args = vec![
            "sql",
            "--format",
            "csv",
            "-c",
            "SELECT count(*) FROM raw_events",
        ];
        args.extend_from_slice(extra);
        ctx.ok(&args).lines().nth(1).unwrap().to_string()
    };
    assert_eq!(count(&[]), "6");
    assert_eq!(count(&["--as-of-version", "1"]), "3");
    assert_eq!(count(&["--as-of-version", "0"]), "0");
    let at = between.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert_eq!(count(&["--as-of-time", &at]), "3");
    // A version a table does not have yet: the table is left out, and the note says so.
    crate::context::assert_raw_events_absent_at(&ctx, "--as-of-version", "7");
    // A time before the first commit: the table did not exist (deltalake alone would load
    // its oldest version).
    crate::context::assert_raw_events_absent_at(&ctx, "--as-of-time", "2000-01-01T00:00:00Z");
    let out = ctx.run(&["sql", "--as-of-time", "yesterday", "-c", "SELECT 1"]);
    assert_eq!(out.status.code(), Some(2));
});

both_backends!(results_stream_to_a_file_or_an_object, |backend: Backend| {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let ctx = TestContext::new(backend);
    ctx.generate("gen", &["--events", "3000", "--files", "1", "--seed", "4"]);
    ctx.ingest_json(&[ctx.path("gen").to_str().unwrap()]);
    let q = "SELECT event_id, event_time, price FROM raw_events";
    let (target, on_disk) = match &ctx.s3 {
        None => (
            ctx.path("out.parquet").display().to_string(),
            ctx.path("out.parquet"),
        ),
        Some(s3) => (
            "s3://inbox/exports/out.parquet".to_string(),
            s3.root.join("inbox/exports/out.parquet"),
        ),
    };
    let out = ctx.run(&["sql", "--format", "parquet", "-o", &target, "-c", q]);
    assert!(out.status.success(), "{}", crate::context::stderr_of(&out));
    assert!(
        out.stdout.is_empty(),
        "results went to the file, not stdout"
    );
    let reader = SerializedFileReader::new(std::fs::File::open(&on_disk).unwrap()).unwrap();
    assert_eq!(reader.metadata().file_metadata().num_rows(), 3000);
    assert_eq!(
        reader
            .metadata()
            .file_metadata()
            .schema_descr()
            .num_columns(),
        3
    );
    // Text formats too.
    let csv = ctx.path("out.csv");
    ctx.ok(&[
        "sql",
        "--format",
        "csv",
        "-o",
        csv.to_str().unwrap(),
        "-c",
        q,
    ]);
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 3001);
    // One result per output.
    let out = ctx.run(&[
        "sql",
        "-o",
        csv.to_str().unwrap(),
        "-c",
        "SELECT 1; SELECT 2",
    ]);
    assert_eq!(out.status.code(), Some(2));
});

both_backends!(
    the_repl_reads_piped_statements_and_meta_commands,
    |backend: Backend| {
        let ctx = TestContext::new(backend);
        ctx.generate("gen", &["--events", "500", "--files", "1", "--seed", "4"]);
        ctx.ingest_json(&[ctx.path("gen").to_str().unwrap()]);
        ctx.ok(&["clean", "-q"]);
        let script =
            "\\d\n\\d events\nSELECT count(*) AS n\n  FROM events -- a comment; not the end\n  ;\n\
                  \\x\nSELECT 6 * 7 AS answer, 'wide' AS row_kind;\n\\x\n\
                  \\format csv\nSELECT 41 + 1 AS answer;\n\\q\nSELECT 'after quit' AS late;\n";
        let out = ctx.cmd().arg("sql").write_stdin(script).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
        assert!(
            stderr_of(&out).contains("expanded display is on"),
            "{}",
            stderr_of(&out)
        );
        // `-q` keeps the status messages out of stderr, as it does for every command.
        let quiet = ctx
            .cmd()
            .args(["sql", "-q"])
            .write_stdin(script)
            .output()
            .unwrap();
        assert_eq!(quiet.status.code(), Some(0), "{}", stderr_of(&quiet));
        assert!(
            !stderr_of(&quiet).contains("expanded display"),
            "{}",
            stderr_of(&quiet)
        );
        assert_eq!(quiet.stdout, out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert!(
            lines.contains(&"raw_events") && lines.contains(&"events"),
            "{stdout}"
        );
        assert!(
            stdout.contains("  event_id ") && stdout.contains("partitioned by event_date, segment"),
            "{stdout}"
        );
        // Types as SQL names them (what CAST takes), not the engine's layouts.
        let described = |column: &str| {
            lines
                .iter()
                .find(|l| l.split_whitespace().next() == Some(column))
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|| panic!("{column} not described: {stdout}"))
        };
        assert_eq!(described("event_id"), "VARCHAR");
        assert_eq!(described("event_time"), "TIMESTAMP WITH TIME ZONE (UTC)");
        assert_eq!(described("price"), "DECIMAL(18, 2)");
        assert_eq!(described("quantity"), "BIGINT");
        let events = ctx.count("SELECT count(*) FROM events");
        assert!(stdout.contains(&format!("| {events} ")), "{stdout}");
        assert!(stdout.contains("answer\n42\n"), "{stdout}");
        // `\x` switches to `column = value` lines, and back.
        assert!(
            stdout.contains("  answer = 42\nrow_kind = wide\n"),
            "{stdout}"
        );
        assert!(!stdout.contains("after quit"), "{stdout}");

        // A failing statement is reported and the rest still runs; piped input then exits 2.
        let out = ctx
            .cmd()
            .args(["sql", "--format", "csv"])
            .write_stdin("SELECT nope FROM events;\n\\bogus\nSELECT 7 AS seven")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = stderr_of(&out);
        assert!(
            err.contains("nope") && err.contains("unknown command `\\bogus`"),
            "{err}"
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("seven\n7\n"));
    }
);

both_backends!(
    a_query_on_one_day_reads_only_that_days_files,
    |backend: Backend| {
        let ctx = TestContext::new(backend);
        ctx.generate(
            "gen",
            &[
                "--events", "3000", "--files", "3", "--days", "6", "--seed", "8",
            ],
        );
        ctx.ingest_json(&[ctx.path("gen").to_str().unwrap()]);
        ctx.ok(&["clean", "-q"]);
        let day = ctx.query("SELECT min(event_date) + INTERVAL '2 days' FROM events")[0].clone();
        let files_scanned = |sql: &str| -> (u64, String) {
            let out = ctx.ok(&[
                "sql",
                "--format",
                "csv",
                "-c",
                &format!("EXPLAIN ANALYZE {sql}"),
            ]);
            let n = out
                .split("count_files_scanned=")
                .nth(1)
                .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no count_files_scanned in {out}"));
            (n, out)
        };
        let (all, _) = files_scanned("SELECT count(*), sum(price) FROM events");
        let (one_day, plan) = files_scanned(&format!(
            "SELECT count(*), sum(price) FROM events WHERE event_date = DATE '{day}'"
        ));
        let on_disk = std::fs::read_dir(ctx.table_dir("events").join(format!("event_date={day}")))
            .unwrap()
            .flat_map(|seg| std::fs::read_dir(seg.unwrap().path()).unwrap())
            .filter(|f| {
                f.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|e| e == "parquet")
            })
            .count() as u64;
        assert_eq!(one_day, on_disk, "{plan}");
        assert!(
            all > one_day * 3,
            "{all} files in all vs {one_day} for one day"
        );
        let listed: Vec<&str> = plan.split(".parquet").collect();
        assert!(listed.len() > 1, "{plan}");
        for part in &listed[..listed.len() - 1] {
            assert!(
                part.contains(&format!("event_date={day}/")),
                "a file of another day in {plan}"
            );
        }
    }
);

/// The Python with pyarrow that scripts/test.sh prepares (or `CLICKLAKE_PYTHON`).
pub fn python_with_pyarrow() -> std::path::PathBuf {
    let python = std::env::var_os("CLICKLAKE_PYTHON")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| std::path::PathBuf::from(h).join(".cache/clicklake-py/bin/python"))
        })
        .filter(|p| p.exists())
        .expect(
            "no Python with pyarrow for the external-reader test: run scripts/test.sh, or \
             `python3 -m venv ~/.cache/clicklake-py && ~/.cache/clicklake-py/bin/pip install pyarrow`",
        );
    let ok = std::process::Command::new(&python)
        .args(["-c", "import pyarrow.parquet"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import pyarrow: pip install pyarrow",
        python.display()
    );
    python
}

#[test]
fn another_engine_reads_the_lake_from_the_delta_log_and_parquet_alone() {
    let python = python_with_pyarrow();
    let ctx = TestContext::new(Backend::Local);
    ctx.generate(
        "gen",
        &[
            "--events", "3000", "--files", "3", "--dirty", "--days", "4", "--seed", "9",
        ],
    );
    // Two ingests and two incremental cleans, so the log holds removes as well as adds.
    let gen = ctx.path("gen");
    ctx.ingest_json(&[gen.join("events-0001.ndjson").to_str().unwrap()]);
    ctx.ok(&["clean", "-q"]);
    ctx.ok(&["build", "-q"]);
    ctx.ingest_json(&[gen.to_str().unwrap()]);
    ctx.ok(&["clean", "-q"]);
    ctx.ok(&["build", "-q"]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/read_delta.py");
    let read = |table: &str, partition: Option<&str>| -> serde_json::Value {
        let mut cmd = std::process::Command::new(&python);
        cmd.arg(&script).arg(ctx.path(&format!("lake/{table}")));
        if let Some(p) = partition {
            cmd.arg(p);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };

    let events = read("events", Some("event_date"));
    let ours = ctx.query("SELECT event_date, count(*) FROM events GROUP BY 1 ORDER BY 1");
    let theirs: Vec<String> = events["by_partition"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k},{v}"))
        .collect();
    assert_eq!(theirs, ours);
    assert_eq!(events["rows"], ctx.count("SELECT count(*) FROM events"));
    for table in [
        "raw_events",
        "quarantine",
        "fact_sessions",
        "fact_orders",
        "agg_user_features",
    ] {
        assert_eq!(
            read(table, None)["rows"],
            ctx.count(&format!("SELECT count(*) FROM {table}")),
            "{table}"
        );
    }
}
