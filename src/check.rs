//! Data tests, dbt-style: every check is a query returning offending rows; a check passes when it
//! returns none.
//!
//! Three sources: tests declared in each star model's header (`-- grain:` / `-- unique_key:`
//! unique, `-- not_null:`, `-- references: col -> table.col`, `-- accepted_values: col in (…)`),
//! the embedded reconciliations of `sql/checks/`, and the user's own `.sql` files
//! (`--checks-dir` / `check.dir`). A check over a table the lake does not have yet is skipped.

use std::path::Path;

use datafusion::prelude::SessionContext;
use futures::StreamExt;
use serde::Serialize;

use crate::catalog;
use crate::clean::CONSUMED_APP_ID;
use crate::config::Config;
use crate::delta;
use crate::error::{query_mistake, root_message, Error, Result};
use crate::models::{self, Model};
use crate::storage::Lake;

const EMBEDDED: &[(&str, &str)] = &[
    (
        "events_unique_event_id",
        include_str!("../sql/checks/events_unique_event_id.sql"),
    ),
    (
        "events_reconcile_raw",
        include_str!("../sql/checks/events_reconcile_raw.sql"),
    ),
    (
        "events_sessions_in_fact_sessions",
        include_str!("../sql/checks/events_sessions_in_fact_sessions.sql"),
    ),
    (
        "fact_orders_revenue_matches_events",
        include_str!("../sql/checks/fact_orders_revenue_matches_events.sql"),
    ),
    (
        "personalization_respects_consent",
        include_str!("../sql/checks/personalization_respects_consent.sql"),
    ),
];

const SAMPLE_ROWS: usize = 5;

#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    /// `model`, `builtin` or the user's file.
    pub origin: String,
    pub sql: String,
    /// Tables it reads; it is skipped when one is missing.
    pub tables: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub origin: String,
    /// `pass`, `fail` or `skip`.
    pub status: &'static str,
    pub offending_rows: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Up to five offending rows, rendered as a text table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,
    pub sql: String,
}

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub checks: Vec<CheckResult>,
}

/// Every check: from the star models' headers, the embedded reconciliations and `user_dir`.
pub fn all_checks(cfg: &Config, user_dir: Option<&Path>) -> Result<Vec<Check>> {
    let mut out = Vec::new();
    for model in models::load("star", cfg.build.sql_dir.as_deref())? {
        out.extend(model_checks(&model)?);
    }
    for (name, sql) in EMBEDDED {
        out.push(Check {
            name: name.to_string(),
            origin: format!("embedded:sql/checks/{name}.sql"),
            sql: sql.to_string(),
            tables: tables_named_in(sql),
        });
    }
    if let Some(dir) = user_dir {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| Error::config(format!("checks dir {}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("sql"))
            .collect();
        files.sort();
        for path in files {
            let sql = std::fs::read_to_string(&path)
                .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
            out.push(Check {
                name: path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("check")
                    .to_string(),
                origin: path.display().to_string(),
                tables: tables_named_in(&sql),
                sql,
            });
        }
    }
    Ok(out)
}

/// The lake tables a query mentions (a word-level scan, enough to decide what to skip).
fn tables_named_in(sql: &str) -> Vec<String> {
    let mut known: Vec<String> = catalog::ALL.iter().map(|d| d.name.to_string()).collect();
    known.extend(catalog::star_tables());
    known.push("raw_events_cleaned".into());
    let words: std::collections::HashSet<&str> = sql
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    known
        .into_iter()
        .filter(|t| words.contains(t.as_str()))
        .collect()
}

/// The tests a model's header declares.
fn model_checks(model: &Model) -> Result<Vec<Check>> {
    let t = &model.name;
    let mut out = Vec::new();
    let mut push = |kind: &str, what: &str, sql: String, extra: Option<&str>| {
        let mut tables = vec![t.clone()];
        tables.extend(extra.map(str::to_string));
        out.push(Check {
            name: format!("{kind}({t}.{what})"),
            origin: model.origin.clone(),
            sql,
            tables,
        });
    };
    let grain = match model.directive_list("grain") {
        g if !g.is_empty() => g,
        _ => model
            .directive("materialized")
            .filter(|m| m == "incremental")
            .map(|_| Vec::new())
            .unwrap_or_else(|| model.directive_list("unique_key")),
    };
    if !grain.is_empty() {
        let cols = grain.join(", ");
        push(
            "unique",
            &grain.join("+"),
            format!(
                "SELECT {cols}, count(*) AS copies FROM {t} GROUP BY {cols} HAVING count(*) > 1"
            ),
            None,
        );
    } else if let Some(k) = model.directive("unique_key") {
        push(
            "unique",
            &k,
            format!("SELECT {k}, count(*) AS copies FROM {t} GROUP BY {k} HAVING count(*) > 1"),
            None,
        );
    }
    for col in model.directive_list("not_null") {
        push(
            "not_null",
            &col,
            format!("SELECT * FROM {t} WHERE {col} IS NULL"),
            None,
        );
    }
    for reference in model.directive_list("references") {
        let bad = || {
            Error::config(format!(
                "SQL model {}: references entry {reference:?} is not `column -> table.column`",
                model.origin
            ))
        };
        let (col, target) = reference.split_once("->").ok_or_else(bad)?;
        let (other, other_col) = target.trim().split_once('.').ok_or_else(bad)?;
        let col = col.trim();
        push(
            "references",
            &format!("{col}->{other}.{other_col}"),
            format!(
                "SELECT f.{col}, count(*) AS rows FROM {t} f \
                 LEFT JOIN (SELECT DISTINCT {other_col} AS k FROM {other}) d ON d.k = f.{col} \
                 WHERE f.{col} IS NOT NULL AND d.k IS NULL GROUP BY f.{col}"
            ),
            Some(other),
        );
    }
    if let Some(accepted) = model.directive("accepted_values") {
        let (col, values) = accepted.split_once(" in ").ok_or_else(|| {
            Error::config(format!(
                "SQL model {}: accepted_values must read `column in ('a', 'b')`",
                model.origin
            ))
        })?;
        let col = col.trim();
        push(
            "accepted_values",
            col,
            format!(
                "SELECT {col}, count(*) AS rows FROM {t} WHERE {col} IS NOT NULL AND {col} NOT IN {} GROUP BY {col}",
                values.trim()
            ),
            None,
        );
    }
    Ok(out)
}

/// The checks whose name contains `select` (all when None). Selecting none is a usage error: in
/// CI a misspelt `--select` would otherwise pass every build without checking anything.
fn selected(checks: Vec<Check>, select: Option<&str>) -> Result<Vec<Check>> {
    let Some(text) = select else {
        return Ok(checks);
    };
    let names: Vec<String> = checks.iter().map(|c| c.name.clone()).collect();
    let chosen: Vec<Check> = checks
        .into_iter()
        .filter(|c| c.name.contains(text))
        .collect();
    if chosen.is_empty() {
        return Err(Error::usage(format!(
            "--select {text:?}: no check's name contains it (checks: {})",
            names.join(", ")
        )));
    }
    Ok(chosen)
}

/// Runs the checks whose name contains `select` (all when None).
pub async fn run(
    lake: &Lake,
    cfg: &Config,
    user_dir: Option<&Path>,
    select: Option<&str>,
) -> Result<CheckReport> {
    let checks = selected(all_checks(cfg, user_dir)?, select)?;
    let ctx = catalog::session(cfg.memory_limit)?;
    let mut present = catalog::register_all(&ctx, lake, None).await?;
    register_raw_cleaned(&ctx, lake, &mut present).await?;
    let mut report = CheckReport {
        passed: 0,
        failed: 0,
        skipped: 0,
        checks: Vec::new(),
    };
    // Checks run a few at a time: on an object store each spends most of its time waiting for
    // requests. `buffered` keeps the report in the checks' order.
    let outcomes: Vec<Result<Option<Outcome>>> =
        futures::stream::iter(checks.iter().map(|check| {
            let runnable = check.tables.iter().all(|t| present.contains(t));
            let ctx = &ctx;
            async move {
                if runnable {
                    run_one(ctx, check).await.map(Some)
                } else {
                    Ok(None)
                }
            }
        }))
        .buffered(CONCURRENT_CHECKS)
        .collect()
        .await;
    for (check, outcome) in checks.into_iter().zip(outcomes) {
        let Some((rows, sample)) = outcome? else {
            let missing: Vec<&str> = check
                .tables
                .iter()
                .filter(|t| !present.contains(t))
                .map(String::as_str)
                .collect();
            report.skipped += 1;
            report.checks.push(CheckResult {
                reason: Some(format!("table {} does not exist yet", missing.join(", "))),
                name: check.name,
                origin: check.origin,
                status: "skip",
                offending_rows: 0,
                sample: None,
                sql: check.sql,
            });
            continue;
        };
        let status = if rows == 0 { "pass" } else { "fail" };
        if rows == 0 {
            report.passed += 1;
        } else {
            report.failed += 1;
        }
        report.checks.push(CheckResult {
            name: check.name,
            origin: check.origin,
            status,
            offending_rows: rows,
            reason: None,
            sample,
            sql: check.sql,
        });
    }
    Ok(report)
}

/// Offending rows and a sample of them.
type Outcome = (u64, Option<String>);

/// How many checks run at once.
const CONCURRENT_CHECKS: usize = 4;

/// `raw_events_cleaned`: raw_events at the version `events` reflects.
async fn register_raw_cleaned(
    ctx: &SessionContext,
    lake: &Lake,
    present: &mut Vec<String>,
) -> Result<()> {
    let Some(events) = lake.open_table(catalog::EVENTS.name).await? else {
        return Ok(());
    };
    let Some(version) = delta::txn_version(&events, CONSUMED_APP_ID).await? else {
        return Ok(());
    };
    if let Some(raw) = lake
        .open_table_at(catalog::RAW_EVENTS.name, version)
        .await?
    {
        catalog::register(ctx, "raw_events_cleaned", &raw).await?;
        present.push("raw_events_cleaned".into());
    }
    Ok(())
}

/// Counts the offending rows (streaming) and keeps the first few for the report.
async fn run_one(ctx: &SessionContext, check: &Check) -> Result<Outcome> {
    let fail = |e: datafusion::error::DataFusionError| {
        let prefix = format!("check {} ({})", check.name, check.origin);
        match query_mistake(&e) {
            Some(mistake) => Error::config(format!("{prefix}: {mistake}")),
            None => Error::runtime(format!("{prefix}: {}", root_message(&e))),
        }
    };
    let df = ctx
        .sql_with_options(&check.sql, models::query_only())
        .await
        .map_err(fail)?;
    let mut stream = df.execute_stream().await.map_err(fail)?;
    let mut rows = 0u64;
    let mut sample = Vec::new();
    let mut kept = 0usize;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(fail)?;
        rows += batch.num_rows() as u64;
        if kept < SAMPLE_ROWS && batch.num_rows() > 0 {
            let take = (SAMPLE_ROWS - kept).min(batch.num_rows());
            sample.push(batch.slice(0, take));
            kept += take;
        }
    }
    let sample = if sample.is_empty() {
        None
    } else {
        Some(arrow::util::pretty::pretty_format_batches(&sample)?.to_string())
    };
    Ok((rows, sample))
}

/// The human report: one line per check, offending samples under failures, a summary line.
pub fn render(report: &CheckReport) -> String {
    let mut out = String::new();
    for c in &report.checks {
        match c.status {
            "pass" => out.push_str(&format!("PASS  {}\n", c.name)),
            "skip" => out.push_str(&format!(
                "SKIP  {} ({})\n",
                c.name,
                c.reason.as_deref().unwrap_or("")
            )),
            _ => {
                out.push_str(&format!(
                    "FAIL  {}: {} offending row(s)  [{}]\n",
                    c.name, c.offending_rows, c.origin
                ));
                if let Some(s) = &c.sample {
                    for line in s.lines() {
                        out.push_str(&format!("      {line}\n"));
                    }
                }
            }
        }
    }
    out.push_str(&format!(
        "{} passed, {} failed, {} skipped\n",
        report.passed, report.failed, report.skipped
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_headers_become_checks() {
        let model = Model {
            name: "fact_x".into(),
            origin: "x.sql".into(),
            sql: "-- fact_x\n-- grain: a, b\n-- not_null: a\n-- references: a -> dim_a.a\n\
                  -- accepted_values: s in ('p', 'q')\nSELECT 1"
                .into(),
        };
        let names: Vec<String> = model_checks(&model)
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(
            names,
            [
                "unique(fact_x.a+b)",
                "not_null(fact_x.a)",
                "references(fact_x.a->dim_a.a)",
                "accepted_values(fact_x.s)"
            ]
        );
        assert_eq!(
            tables_named_in("SELECT * FROM fact_orders JOIN events e"),
            ["events", "fact_orders"]
        );
    }
}
