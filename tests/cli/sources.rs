//! `ingest --source`: trackers' exports mapped by SQL files, on real public samples
//! (fixtures/sources, see its SOURCE.md). Expected numbers were computed from the raw files with
//! Python's csv/json modules, independently of clicklake (see each test).

use crate::both_backends;
use crate::context::{one_line_failure, stderr_of, Backend, TestContext};

const SNOWPLOW_CONFIG: &str = "[sources.snowplow]\napp_ids = [\"ecom-accel\", \"DemoID\"]\n";

both_backends!(
    snowplow_sample_through_the_whole_pipeline,
    |backend: Backend| {
        let ctx = TestContext::new(backend);
        ctx.write_config(SNOWPLOW_CONFIG);
        let file = ctx.fixture("sources/snowplow-ecommerce-events.csv");
        let s = ctx.ingest_json(&["--source", "snowplow", file.to_str().unwrap()]);
        // 834 events; actions carrying several products become one row per product: 848 rows, of
        // which the one app_id `skip-me` row is rejected by the allow-list.
        assert_eq!(s["lines"], 834, "{s}");
        assert_eq!(s["extra_rows"], 14, "{s}");
        assert_eq!(s["landed"], 847, "{s}");
        assert_eq!(s["quarantined"], 1, "{s}");
        assert_eq!(s["quarantined_by_reason"]["rejected_by_source"], 1, "{s}");
        assert_eq!(s["balanced"], true);
        let q = ctx.query("SELECT reason, detail FROM quarantine");
        assert_eq!(
            q,
            vec!["rejected_by_source,app_id skip-me is not in [sources.snowplow] app_ids"]
        );

        let types = ctx.query(
            "SELECT event_type, count(*) FROM raw_events GROUP BY event_type ORDER BY event_type",
        );
        assert_eq!(
            types,
            vec![
                "add_to_cart,49",
                "checkout_step,38",
                "list_click,35",
                "list_view,100",
                "page_view,410",
                "product_view,179",
                "promo_click,1",
                "promo_view,1",
                "purchase,18",
                "refund,1",
                "remove_from_cart,15",
            ]
        );
        // Both timestamp styles parse (with and without a zone; a zone-less one is UTC).
        let days = ctx.query(
            "SELECT CAST(event_date AS VARCHAR), count(*) FROM raw_events GROUP BY 1 ORDER BY 1",
        );
        assert_eq!(
            days,
            vec![
                "2022-10-25,324",
                "2022-11-17,50",
                "2022-11-20,10",
                "2022-11-28,160",
                "2022-11-29,250",
                "2022-12-22,53",
            ]
        );
        // One exact row: the first product of a two-product add_to_cart.
        let row = ctx.query(
        "SELECT event_id, CAST(event_time AS VARCHAR) AS t, CAST(received_at AS VARCHAR) AS r, \
         product_id, category, brand, price, currency, session_id, \
         json_get(properties, 'cart_value') AS cart \
         FROM raw_events WHERE event_id LIKE '%:1' AND event_type = 'add_to_cart' \
         ORDER BY event_time LIMIT 1",
    );
        // derived_tstamp → event_time, collector_tstamp → received_at, the cart context's value kept.
        assert_eq!(
        row,
        vec!["3aa2815a-a9a9-46e5-b0cb-91c77cd4efc4:1,2022-10-25T07:49:55.526Z,2022-10-25T07:49:55.529Z,\
              1235,Shoes,Snowplow,15.00,EUR,\
              bbcf9fb2fcb583dec133a6ee760201e1f9e584b9bb099492e497ca3d5872d662,15.0"]
    );

        ctx.ok(&["clean"]);
        // 14 transactions (one sent twice): every order once, first transaction wins.
        assert_eq!(
            ctx.count("SELECT count(DISTINCT event_id) FROM events"),
            847
        );
        assert_eq!(
            ctx.count("SELECT count(DISTINCT session_id) FROM events"),
            63
        );
        ctx.ok(&["build"]);
        assert_eq!(ctx.count("SELECT count(*) FROM fact_orders"), 14);
        assert_eq!(
        ctx.query("SELECT currency, CAST(sum(revenue) AS VARCHAR) FROM fact_orders GROUP BY 1 ORDER BY 1"),
        // 13 EUR orders (TtlZ3b's 13.00 once, not twice) and one USD order.
        vec!["EUR,1234863.89", "USD,231231.00"]
    );
        assert_eq!(
            ctx.query("SELECT lines, items FROM fact_orders WHERE order_id = 'TtlZ3b'"),
            vec!["1,1"]
        );
        // Sessions are keyed by domain_sessionid (mobile: the client_session id).
        assert_eq!(ctx.count("SELECT count(*) FROM fact_sessions"), 63);
        // A session with a transaction has purchase as its furthest checkout stage.
        let purchased = ctx
            .count("SELECT count(*) FROM fact_checkout_funnel WHERE furthest_stage = 'purchase'");
        let with_tx = ctx
            .count("SELECT count(DISTINCT session_key) FROM events WHERE event_type = 'purchase'");
        assert_eq!(purchased, with_tx);
        assert!(purchased > 0);
        assert!(ctx.count("SELECT count(*) FROM fact_cart_lines") > 0);
        ctx.ok(&["check"]);
    }
);

#[test]
fn snowplow_without_allow_list_lands_every_app() {
    let ctx = TestContext::new(Backend::Local);
    let file = ctx.fixture("sources/snowplow-ecommerce-events.csv");
    let s = ctx.ingest_json(&["--source", "snowplow", file.to_str().unwrap()]);
    // The skip-me event carries one product: one row more, nothing quarantined.
    assert_eq!(s["landed"], 848, "{s}");
    assert_eq!(s["quarantined"], 0, "{s}");
}

both_backends!(rees46_with_and_without_header, |backend: Backend| {
    let ctx = TestContext::new(backend);
    let oct = ctx.fixture("sources/rees46-2019-Oct-slice.csv");
    let nov = ctx.fixture("sources/rees46-2019-Nov-noheader.csv");
    let s = ctx.ingest_json(&[
        "--source",
        "rees46",
        oct.to_str().unwrap(),
        nov.to_str().unwrap(),
    ]);
    // Oct slice: 2,435 data lines, the last one truncated (8 fields); Nov: 683 lines, no header.
    assert_eq!(s["lines"], 2435 + 683, "{s}");
    assert_eq!(s["landed"], 2434 + 683, "{s}");
    assert_eq!(s["quarantined_by_reason"]["broken_json"], 1, "{s}");
    let q = ctx.query("SELECT line_number, detail FROM quarantine");
    assert_eq!(q, vec!["2436,\"CSV row has 8 fields, the header has 9\""]);

    // 19-digit category ids stay exact; " UTC" timestamps parse.
    let row = ctx.query(
        "SELECT CAST(event_time AS VARCHAR), event_type, product_id, category, brand, price, \
         currency, user_id, session_id, json_get(properties, 'category_id') FROM raw_events \
         WHERE source_file LIKE '%Nov%' AND line_number = 683",
    );
    assert_eq!(
        row,
        vec!["2019-11-01T00:04:38Z,product_view,13100018,,skad,192.03,USD,553384439,ef01163b-d49a-43de-b3ba-c3adadacec59,2053013553526341921"]
    );

    ctx.ok(&["clean"]);
    // 5 exact duplicate lines in the Oct slice collapse (4 extra copies).
    assert_eq!(ctx.count("SELECT count(*) FROM events"), 2430 + 683);
    let types = ctx.query("SELECT event_type, count(*) FROM events GROUP BY 1 ORDER BY 1");
    assert_eq!(
        types,
        vec!["add_to_cart,19", "product_view,3055", "purchase,39"]
    );
    assert_eq!(
        ctx.count("SELECT count(DISTINCT session_id) FROM events"),
        1174 + 240
    );
    ctx.ok(&["build"]);
    assert_eq!(ctx.count("SELECT count(*) FROM fact_orders"), 39);
});

#[test]
fn diginetica_sessions_and_relative_times() {
    let ctx = TestContext::new(Backend::Local);
    let file = ctx.fixture("sources/diginetica-train-item-views.csv");
    let s = ctx.ingest_json(&["--source", "diginetica", file.to_str().unwrap()]);
    assert_eq!(s["lines"], 12391, "{s}");
    assert_eq!(s["landed"], 12391, "{s}");
    assert_eq!(s["quarantined"], 0, "{s}");
    // Session 1's view of item 81766 at 526,309 ms on 2016-05-09.
    assert_eq!(
        ctx.query(
            "SELECT CAST(event_time AS VARCHAR), user_id IS NULL, anonymous_id, session_id, product_id \
             FROM raw_events WHERE event_id = 'diginetica:1:81766:526309'"
        ),
        vec!["2016-05-09T00:08:46.309Z,true,diginetica:1,1,81766"]
    );
    ctx.ok(&["clean"]);
    assert_eq!(
        ctx.count("SELECT count(DISTINCT session_id) FROM events"),
        2986
    );
    assert_eq!(
        ctx.count("SELECT count(*) FROM events"),
        DIGINETICA_DISTINCT_EVENTS
    );
    ctx.ok(&["build"]);
    assert_eq!(ctx.count("SELECT count(*) FROM fact_sessions"), 2986);
}

/// Distinct (session_id, item_id, timeframe) triples in the Diginetica sample (Python).
const DIGINETICA_DISTINCT_EVENTS: u64 = 12391;

both_backends!(segment_spec_events, |backend: Backend| {
    let ctx = TestContext::new(backend);
    let file = ctx.fixture("sources/segment-ecommerce.ndjson");
    let s = ctx.ingest_json(&["--source", "segment", file.to_str().unwrap()]);
    // 20 lines: one blank; Order Completed (sent twice) carries two products each time.
    assert_eq!(s["lines"], 20, "{s}");
    assert_eq!(s["blank_lines"], 1, "{s}");
    assert_eq!(s["extra_rows"], 2, "{s}");
    assert_eq!(s["landed"], 17, "{s}");
    assert_eq!(s["quarantined"], 4, "{s}");
    let q = ctx.query("SELECT line_number, reason FROM quarantine ORDER BY line_number");
    assert_eq!(
        q,
        vec![
            "14,unknown_event_type",
            "15,missing_event_id",
            "18,price_not_number",
            "19,broken_json"
        ]
    );
    ctx.ok(&["clean"]);
    assert_eq!(ctx.count("SELECT count(*) FROM events"), 15);
    // The anonymous browse-then-identify journey is one customer.
    assert_eq!(
        ctx.count("SELECT count(*) FROM events WHERE stitched_user_id = 'user-42'"),
        13
    );
    ctx.ok(&["build"]);
    assert_eq!(
        ctx.query("SELECT order_id, revenue, currency, lines, items FROM fact_orders"),
        vec!["ord-5001,39.98,EUR,2,2"]
    );
    // No session ids: 30-minute gaps derive them (anon-b001 comes back after 74 minutes).
    assert_eq!(ctx.count("SELECT count(*) FROM fact_sessions"), 3);
    assert_eq!(
        ctx.query("SELECT furthest_stage FROM fact_checkout_funnel ORDER BY 1"),
        vec!["purchase"]
    );
});

#[test]
fn a_user_source_works_without_rebuilding_and_a_broken_one_is_exit_2() {
    let ctx = TestContext::new(Backend::Local);
    let dir = ctx.path("sources");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("pos.sql"),
        "-- Point-of-sale export: sku|when|basket|amount\n\
         -- format: csv\n\
         -- delimiter: |\n\
         -- header: true\n\
         -- columns: sku, when, basket, amount\n\
         -- timestamp_formats: %d/%m/%Y %H:%M\n\
         SELECT _line, concat('pos-', basket, '-', sku) AS event_id, \"when\" AS event_time,\n\
                'purchase' AS event_type, basket AS anonymous_id, basket AS order_id,\n\
                sku AS product_id, amount AS price, amount AS revenue, 'EUR' AS currency\n\
         FROM source WHERE sku <> 'VOID'\n",
    )
    .unwrap();
    ctx.write_config(format!("[ingest]\nsources_dir = \"{}\"\n", dir.display()));
    let data = ctx.path("till.txt");
    std::fs::write(
        &data,
        "sku|when|basket|amount\nA1|05/01/2026 10:15|b1|3.50\nVOID|05/01/2026 10:16|b1|0\nB2|31/02/2026 10:00|b2|1.00\n",
    )
    .unwrap();
    let s = ctx.ingest_json(&["--source", "pos", data.to_str().unwrap()]);
    assert_eq!(s["landed"], 1, "{s}");
    assert_eq!(
        ctx.query("SELECT line_number, reason FROM quarantine ORDER BY 1"),
        vec!["3,unmapped_line", "4,bad_timestamp"]
    );
    assert_eq!(
        ctx.query("SELECT CAST(event_time AS VARCHAR), price FROM raw_events"),
        vec!["2026-01-05T10:15:00Z,3.50"]
    );

    // An export whose header lacks a column the mapping reads: every line of it, header
    // included, is quarantined, naming the column; nothing lands and nothing stops.
    let renamed = ctx.path("till-renamed.txt");
    std::fs::write(
        &renamed,
        "sku|time|basket|amount\nA1|05/01/2026 10:15|b1|3.50\n",
    )
    .unwrap();
    let s = ctx.ingest_json(&["--source", "pos", renamed.to_str().unwrap()]);
    assert_eq!(
        (s["landed"].as_u64(), s["quarantined"].as_u64()),
        (Some(0), Some(2)),
        "{s}"
    );
    let rows = ctx.query(
        "SELECT line_number, reason, detail FROM quarantine \
         WHERE source_file LIKE '%till-renamed%' ORDER BY 1",
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows[0].starts_with("1,broken_json,") && rows[0].contains("when"),
        "{rows:?}"
    );

    // A mapping that does not plan: exit 2, naming the file and the SQL problem, nothing read.
    std::fs::write(
        dir.join("broken.sql"),
        "-- format: csv\n-- columns: a\nSELECT _line, a AS event_id, nope AS event_time, 'x' AS event_type FROM source\n",
    )
    .unwrap();
    let out = ctx.run(&["ingest", "--source", "broken", data.to_str().unwrap()]);
    one_line_failure(&out, 2, &["broken.sql", "nope"]);

    // A source that does not exist lists the available ones.
    let out = ctx.run(&["ingest", "--source", "klingon", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert!(err.contains("pos") && err.contains("snowplow"), "{err}");
}

// GA4's BigQuery export, written from Google's event reference (fixtures/sources/ga4-ecommerce.py).
// The expected numbers follow from how that script builds its 23 lines (see its comments).
both_backends!(ga4_export_through_the_whole_pipeline, |backend: Backend| {
    let ctx = TestContext::new(backend);
    let file = ctx.fixture("sources/ga4-ecommerce.ndjson");
    let s = ctx.ingest_json(&["--source", "ga4", file.to_str().unwrap()]);
    // add_to_cart and the purchase (exported twice) carry two items each: three extra rows.
    assert_eq!(s["lines"], 23, "{s}");
    assert_eq!(s["extra_rows"], 3, "{s}");
    assert_eq!(s["landed"], 20, "{s}");
    assert_eq!(s["quarantined"], 6, "{s}");
    assert_eq!(s["balanced"], true);
    assert_eq!(
        ctx.query("SELECT line_number, reason, detail FROM quarantine ORDER BY line_number"),
        vec![
            "1,rejected_by_source,GA4 event session_start is in [sources.ga4] ignored_events",
            "14,rejected_by_source,GA4 event scroll is in [sources.ga4] ignored_events",
            r#"19,unknown_event_type,"field event_type: ""newsletter_signup"" is not a known event type""#,
            "20,purchase_without_order_id,field order_id is null on a purchase",
            r#"21,bad_timestamp,"field event_time ""yesterday"" matches no timestamp format of the source""#,
            "22,broken_json,line is not valid JSON: EOF while parsing a string at line 1 column 52",
        ]
    );
    assert_eq!(
        ctx.query(
            "SELECT event_type, count(*) FROM raw_events GROUP BY event_type ORDER BY event_type"
        ),
        vec![
            "add_to_cart,3",
            "cart_view,1",
            "checkout_started,1",
            "checkout_step,1",
            "identify,1",
            "list_click,1",
            "list_view,1",
            "page_view,2",
            "payment_info,1",
            "product_view,2",
            "purchase,4",
            "remove_from_cart,1",
            "search,1",
        ]
    );
    // The second item of the two-item add_to_cart: microseconds kept, item fields, the
    // ga_session_id parameter as the session, INT64 strings as numbers.
    assert_eq!(
        ctx.query(
            "SELECT event_id, CAST(event_time AS VARCHAR), anonymous_id, session_id, product_id, \
             category, brand, price, quantity, currency, device, country, \
             json_get(properties, 'item_name'), json_get(properties, 'ga4_event') \
             FROM raw_events WHERE event_id LIKE '%:2' AND event_type = 'add_to_cart'"
        ),
        vec![
            "ga4:e9748fb43f015f380b6c973494c1c594:2,2023-11-14T22:14:20.000123Z,\
             1234567890.1700000000,1700000000,SKU_12346,Apparel/Men/Hoodies,Google,20.99,2,USD,\
             desktop,France,Google Grey Hoodie,add_to_cart"
        ]
    );

    ctx.ok(&["clean"]);
    // The purchase exported twice is one event per item.
    assert_eq!(ctx.count("SELECT count(*) FROM events"), 18);
    // The login stitches the visitor's whole journey, from before it too.
    assert_eq!(
        ctx.count("SELECT count(*) FROM events WHERE stitched_user_id = 'user-77'"),
        13
    );
    ctx.ok(&["build"]);
    assert_eq!(
        ctx.query("SELECT order_id, revenue, currency, lines, items FROM fact_orders"),
        vec!["T_12345,51.97,USD,2,3"]
    );
    // GA4's own sessions; add_shipping_info is the first checkout step.
    assert_eq!(ctx.count("SELECT count(*) FROM fact_sessions"), 2);
    assert_eq!(
        ctx.query(
            "SELECT furthest_stage, step_1_at IS NOT NULL FROM fact_checkout_funnel ORDER BY 1"
        ),
        vec!["cart,false", "purchase,true"]
    );
    ctx.ok(&["check"]);
});

/// Google's public GA4 sample (fixtures/sources/ga4-obfuscated-sample.ndjson). Expected numbers
/// computed with Python's json module from the file: 460 rows, 292 of GA4's automatically
/// collected events (user_engagement 96, session_start 86, first_visit 68, scroll 42), and 168
/// others in 108 (user_pseudo_id, ga_session_id) sessions of 99 visitors over 92 days.
#[test]
fn ga4_public_sample_lands_its_shopping_events() {
    let ctx = TestContext::new(Backend::Local);
    let file = ctx.fixture("sources/ga4-obfuscated-sample.ndjson");
    let s = ctx.ingest_json(&["--source", "ga4", file.to_str().unwrap()]);
    assert_eq!(s["lines"], 460, "{s}");
    assert_eq!(s["landed"], 168, "{s}");
    assert_eq!(s["quarantined"], 292, "{s}");
    assert_eq!(s["quarantined_by_reason"]["rejected_by_source"], 292, "{s}");
    assert_eq!(
        ctx.query(
            "SELECT event_type, count(*) FROM raw_events GROUP BY event_type ORDER BY event_type"
        ),
        vec![
            "page_view,151",
            "payment_info,1",
            "product_view,4",
            "promo_view,3",
            "search,9"
        ]
    );
    // The sample's first row: user_pseudo_id stays text, the session is the int_value of
    // ga_session_id, event_timestamp keeps its microseconds.
    assert_eq!(
        ctx.query(
            "SELECT CAST(event_time AS VARCHAR) AS t, anonymous_id, session_id, page_url, device, \
             country, json_get(properties, 'page_title') FROM raw_events \
             WHERE anonymous_id = '1005694.5834348403' ORDER BY event_time LIMIT 1"
        ),
        vec![
            "2020-11-01T00:54:33.036492Z,1005694.5834348403,4863244888,\
             https://shop.googlemerchandisestore.com/Google+Redesign/Lifestyle/Drinkware,desktop,\
             India,Drinkware | Lifestyle | Google Merchandise Store"
        ]
    );
    ctx.ok(&["clean"]);
    assert_eq!(ctx.count("SELECT count(*) FROM events"), 168);
    assert_eq!(
        ctx.count("SELECT count(DISTINCT anonymous_id) FROM events"),
        99
    );
    assert_eq!(
        ctx.count("SELECT count(DISTINCT event_date) FROM events"),
        92
    );
    ctx.ok(&["build"]);
    assert_eq!(ctx.count("SELECT count(*) FROM fact_sessions"), 108);
}
