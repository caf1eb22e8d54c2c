//! `clicklake status`: freshness of every table, for alerting. Per table: version, rows, files,
//! small files, latest commit time, latest event_time (tables that have one) and the lag to now.
//! `--max-lag` exits 1 naming every table staler than allowed; so does an erasure that was cut
//! off (a pending record, see [`crate::erase::Pending`]) until its request runs again. `--json`
//! for monitoring systems.

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::catalog;
use crate::cli::StatusArgs;
use crate::commands::tables;
use crate::config::{format_duration, parse_duration, Config};
use crate::error::{exit, Error};
use crate::storage::Lake;

/// Tables whose freshness is their own latest `event_time`. A star table's is the latest
/// event_time of the `events` version it reflects (it is not recommitted while nothing changes);
/// the load bookkeeping's is its latest commit.
const EVENT_TIME_TABLES: &[&str] = &["raw_events", "events"];

#[derive(Debug, Serialize)]
pub struct TableStatus {
    pub table: String,
    pub version: Option<i64>,
    pub rows: u64,
    pub files: u64,
    pub small_files: u64,
    /// RFC 3339, UTC.
    pub last_commit_at: Option<String>,
    pub latest_event_time: Option<String>,
    /// Seconds from the latest event_time (or, without one, the latest commit) to now.
    pub lag_seconds: Option<i64>,
    /// The limit that applies to this table (`status.max_lag_tables`, else `--max-lag`).
    pub max_lag_seconds: Option<u64>,
    /// True when a limit applies and the lag exceeds it.
    pub stale: bool,
}

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub now: String,
    pub max_lag_seconds: Option<u64>,
    pub stale: Vec<String>,
    pub tables: Vec<TableStatus>,
    /// The latest `clicklake run` recorded in `_runs`.
    pub last_run: Option<crate::runner::LastRun>,
    /// Erasures cut off before they were recorded (see [`crate::erase::Pending`]): each is a
    /// problem, like a stale table, until the same request is run again.
    pub unfinished_erasures: Vec<crate::erase::Pending>,
}

pub async fn run(cfg: &Config, lake: &Lake, args: StatusArgs) -> anyhow::Result<ExitCode> {
    // Validated before any I/O.
    let max_lag: Option<Duration> = args
        .max_lag
        .as_deref()
        .map(|v| parse_duration(v).map_err(|e| Error::usage(format!("--max-lag: {e}"))))
        .transpose()?
        .or(cfg.status.max_lag);
    // Records of what people and commands did (consent imports, erasures, runs, the audit
    // trail) change when those happen, not as data flows: the lake-wide limit would call them
    // stale an hour after the last consent import. They get a limit only by name.
    let records = [
        catalog::CONSENTS.name,
        catalog::ERASURES.name,
        catalog::RUNS.name,
        catalog::AUDIT.name,
    ];
    let limit_of = |table: &str| {
        let lake_wide = max_lag.filter(|_| !records.contains(&table));
        cfg.status.max_lag_tables.get(table).copied().or(lake_wide)
    };
    let now = chrono::Utc::now();
    let infos = tables::collect(lake).await?;
    let ctx = catalog::session(cfg.memory_limit)?;
    let mut report = StatusReport {
        now: rfc3339(now.timestamp_millis()),
        max_lag_seconds: max_lag.map(|d| d.as_secs()),
        stale: Vec::new(),
        tables: Vec::new(),
        last_run: crate::runner::last_run(lake, cfg.memory_limit).await?,
        unfinished_erasures: crate::erase::pending(lake)
            .await?
            .into_iter()
            .map(|(_, p)| p)
            .collect(),
    };
    let star = catalog::star_tables();
    let mut reflected: std::collections::HashMap<i64, Option<i64>> = Default::default();
    for info in infos {
        if !info.exists {
            // A table a limit expects but the lake does not have is as stale as can be: the
            // root table under `--max-lag` (a mistyped lake URL, a wiped prefix, nothing ever
            // ingested), or one named in `[status.max_lag_tables]`.
            let expected = match cfg.status.max_lag_tables.get(&info.name) {
                Some(limit) => Some(*limit),
                None => max_lag.filter(|_| info.name == catalog::RAW_EVENTS.name),
            };
            if let Some(limit) = expected {
                report.stale.push(info.name.clone());
                report.tables.push(TableStatus {
                    table: info.name,
                    version: None,
                    rows: 0,
                    files: 0,
                    small_files: 0,
                    last_commit_at: None,
                    latest_event_time: None,
                    lag_seconds: None,
                    max_lag_seconds: Some(limit.as_secs()),
                    stale: true,
                });
            }
            continue;
        }
        let latest_event_ms = if EVENT_TIME_TABLES.contains(&info.name.as_str()) {
            latest_event_time_ms(&ctx, lake, &info.name, None).await?
        } else if star.contains(&info.name) {
            let version = match lake.open_table(&info.name).await? {
                Some(t) => crate::delta::txn_version(&t, crate::build::EVENTS_APP_ID).await?,
                None => None,
            };
            match version {
                Some(v) => match reflected.get(&v) {
                    Some(ms) => *ms,
                    None => {
                        let ms = latest_event_time_ms(&ctx, lake, "events", Some(v)).await?;
                        reflected.insert(v, ms);
                        ms
                    }
                },
                None => None,
            }
        } else {
            None
        };
        let freshest = latest_event_ms.or(info.last_commit_ms);
        let lag_seconds = freshest.map(|ms| (now.timestamp_millis() - ms).max(0) / 1000);
        let limit = limit_of(&info.name);
        let stale = match (limit, lag_seconds) {
            (Some(max), Some(lag)) => lag as u64 > max.as_secs(),
            _ => false,
        };
        if stale {
            report.stale.push(info.name.clone());
        }
        report.tables.push(TableStatus {
            table: info.name,
            version: info.version,
            rows: info.rows,
            files: info.files,
            small_files: info.small_files,
            last_commit_at: info.last_commit_ms.map(rfc3339),
            latest_event_time: latest_event_ms.map(rfc3339),
            lag_seconds,
            max_lag_seconds: limit.map(|d| d.as_secs()),
            stale,
        });
    }
    if args.json {
        outln!("{}", serde_json::to_string(&report)?)?;
    } else if !(cfg.quiet && report.stale.is_empty() && report.unfinished_erasures.is_empty()) {
        out!("{}", render(&report))?;
    }
    if !args.json {
        for p in &report.unfinished_erasures {
            eprintln!("{}", p.warning());
        }
    }
    if report.stale.is_empty() && report.unfinished_erasures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        if !args.json && !report.stale.is_empty() {
            let named: Vec<String> = report
                .tables
                .iter()
                .filter(|t| t.stale)
                .map(|t| match (t.version, t.lag_seconds) {
                    (None, _) => format!("{} (missing at {})", t.table, lake.root()),
                    (_, lag) => format!(
                        "{} (lag {} over {})",
                        t.table,
                        format_duration(Duration::from_secs(lag.unwrap_or(0) as u64)),
                        format_duration(Duration::from_secs(t.max_lag_seconds.unwrap_or(0)))
                    ),
                })
                .collect();
            eprintln!("stale: {}", named.join(", "));
        }
        Ok(ExitCode::from(exit::CHECKS_FAILED))
    }
}

/// The latest event_time of a table (at `version`, or its current one).
async fn latest_event_time_ms(
    ctx: &datafusion::prelude::SessionContext,
    lake: &Lake,
    name: &str,
    version: Option<i64>,
) -> anyhow::Result<Option<i64>> {
    let table = match version {
        Some(v) => lake.open_table_at(name, v).await?,
        None => lake.open_table(name).await?,
    };
    let Some(table) = table else {
        return Ok(None);
    };
    let _ = ctx.deregister_table("freshness");
    catalog::register(ctx, "freshness", &table).await?;
    let us =
        catalog::query_i64(ctx, "SELECT CAST(max(event_time) AS BIGINT) FROM freshness").await?;
    Ok(us.map(|us| us / 1000))
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn render(r: &StatusReport) -> String {
    let mut out = format!(
        "{:<22} {:>7} {:>11} {:>6} {:>6} {:<21} {:<21} {:>10}\n",
        "table", "version", "rows", "files", "small", "last commit", "latest event", "lag"
    );
    for t in &r.tables {
        out.push_str(&format!(
            "{:<22} {:>7} {:>11} {:>6} {:>6} {:<21} {:<21} {:>10}{}\n",
            t.table,
            t.version
                .map(|v| v.to_string())
                .unwrap_or_else(|| "missing".into()),
            t.rows,
            t.files,
            t.small_files,
            t.last_commit_at.as_deref().unwrap_or("-"),
            t.latest_event_time.as_deref().unwrap_or("-"),
            t.lag_seconds
                .map(|s| format_duration(Duration::from_secs(s as u64)))
                .unwrap_or_else(|| "-".into()),
            if t.stale { "  STALE" } else { "" }
        ));
    }
    if let Some(run) = &r.last_run {
        out.push_str(&format!(
            "last run {} {} at {} ({:.1}s){}; last success {}\n",
            run.run_id,
            run.outcome,
            run.finished_at,
            run.seconds,
            run.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default(),
            run.last_success_at.as_deref().unwrap_or("never")
        ));
    }
    out
}
