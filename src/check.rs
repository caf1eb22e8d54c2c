//! Data tests, dbt-style: every check is a query returning offending rows; a check passes when it
//! returns none.
//!
//! Three sources: tests declared in each star model's header (`-- grain:` / `-- unique_key:`
//! unique, `-- not_null:`, `-- references: col -> table.col`, `-- accepted_values: col in (…)`),
//! the embedded reconciliations of `sql/checks/`, and the user's own `.sql` files
//! (`--checks-dir` / `check.dir`). A check over a table the lake does not have yet is skipped.
//!
//! As in dbt, a check's offending rows are judged by its severity and thresholds: header lines
//! `-- severity: warn`, `-- warn_if: > 10`, `-- error_if: >= 100` in a check file, and
//! `[check] warn = [names]` for any check. A warning is reported but does not fail the run.

mod passes;

use std::collections::HashMap;
use std::path::Path;

use datafusion::prelude::SessionContext;
use futures::StreamExt;
use serde::Serialize;

use crate::catalog;
use crate::clean::CONSUMED_APP_ID;
use crate::config::Config;
use crate::delta;
use crate::error::{query_mistake, root_message, Error, Result};
use crate::junit;
use crate::models::{self, Model};
use crate::storage::Lake;
use std::fmt;

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
    pub severity: Severity,
    pub warn_if: Threshold,
    pub error_if: Threshold,
}

/// Whether offending rows fail the check or only warn (dbt's `severity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warn,
}

/// A condition on the number of offending rows, `> 10` or `!= 0` (dbt's `warn_if` / `error_if`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold {
    op: &'static str,
    count: u64,
}

impl Default for Threshold {
    /// Any offending row.
    fn default() -> Self {
        Threshold { op: "!=", count: 0 }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op, self.count)
    }
}

impl Threshold {
    /// `> 10`, `>=1`, `!= 0`, `= 0`… (an operator, then a whole number).
    fn parse(text: &str) -> Option<Threshold> {
        let text = text.trim();
        let op = ["!=", "<>", ">=", "<=", "==", ">", "<", "="]
            .into_iter()
            .find(|op| text.starts_with(op))?;
        let count = text[op.len()..].trim().parse().ok()?;
        let op = match op {
            "<>" => "!=",
            "==" => "=",
            op => op,
        };
        Some(Threshold { op, count })
    }

    fn met(&self, rows: u64) -> bool {
        match self.op {
            ">" => rows > self.count,
            ">=" => rows >= self.count,
            "<" => rows < self.count,
            "<=" => rows <= self.count,
            "=" => rows == self.count,
            _ => rows != self.count,
        }
    }
}

impl Check {
    fn new(name: String, origin: String, sql: String, tables: Vec<String>) -> Check {
        Check {
            name,
            origin,
            sql,
            tables,
            severity: Severity::Error,
            warn_if: Threshold::default(),
            error_if: Threshold::default(),
        }
    }

    /// A check file's `-- severity:`, `-- warn_if:` and `-- error_if:` header lines.
    fn with_header(mut self) -> Result<Check> {
        let bad = |key: &str, value: &str, expected: &str| {
            Error::config(format!(
                "check {} ({}): `-- {key}: {value}` must be {expected}",
                self.name, self.origin
            ))
        };
        if let Some(value) = models::directive(&self.sql, "severity") {
            self.severity = match value.to_ascii_lowercase().as_str() {
                "error" => Severity::Error,
                "warn" => Severity::Warn,
                _ => return Err(bad("severity", &value, "`error` or `warn`")),
            };
        }
        for key in ["warn_if", "error_if"] {
            if let Some(value) = models::directive(&self.sql, key) {
                let threshold = Threshold::parse(&value).ok_or_else(|| {
                    bad(key, &value, "a comparison with a whole number, e.g. `> 10`")
                })?;
                if key == "warn_if" {
                    self.warn_if = threshold;
                } else {
                    self.error_if = threshold;
                }
            }
        }
        Ok(self)
    }

    /// The non-default threshold behind a `warn` or `fail`, for the report.
    fn threshold_met(&self, status: &str) -> Option<String> {
        let (key, threshold) = match status {
            "warn" => ("warn_if", self.warn_if),
            "fail" => ("error_if", self.error_if),
            _ => return None,
        };
        (threshold != Threshold::default()).then(|| format!("{key} {threshold}"))
    }

    /// `pass`, `warn` or `fail` for this many offending rows: an error-severity check fails when
    /// `error_if` holds, and any check warns when `warn_if` holds.
    fn judge(&self, rows: u64) -> &'static str {
        if self.severity == Severity::Error && self.error_if.met(rows) {
            "fail"
        } else if self.warn_if.met(rows) {
            "warn"
        } else {
            "pass"
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub origin: String,
    /// `pass`, `warn`, `fail` or `skip`.
    pub status: &'static str,
    pub severity: Severity,
    /// The `warn_if` / `error_if` that held, when the check sets one (e.g. `error_if > 100`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<String>,
    pub offending_rows: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Up to five offending rows, rendered as a text table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,
    pub sql: String,
    /// Wall seconds the check's query took (checks run a few at a time, so these overlap); 0 for
    /// a pass reused.
    pub seconds: f64,
    /// When the check last ran, for a pass reused because neither its query nor any table it
    /// reads changed since (see [`passes`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unchanged_since: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub passed: u64,
    /// Checks whose offending rows only warn: reported, not failed.
    pub warned: u64,
    pub failed: u64,
    pub skipped: u64,
    /// Checks whose earlier pass was reused: nothing they read changed since it (see [`passes`]).
    pub unchanged: u64,
    /// Wall seconds of the whole run, tables opened included.
    pub seconds: f64,
    pub checks: Vec<CheckResult>,
}

/// Every check: from the star models' headers, the embedded reconciliations and `user_dir`,
/// with `[check] warn` applied.
pub fn all_checks(cfg: &Config, user_dir: Option<&Path>) -> Result<Vec<Check>> {
    let mut out = Vec::new();
    for model in models::load("star", cfg.build.sql_dir.as_deref())? {
        out.extend(model_checks(&model)?);
    }
    for (name, sql) in EMBEDDED {
        out.push(
            Check::new(
                name.to_string(),
                format!("embedded:sql/checks/{name}.sql"),
                sql.to_string(),
                tables_named_in(sql),
            )
            .with_header()?,
        );
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
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("check")
                .to_string();
            let tables = tables_named_in(&sql);
            out.push(Check::new(name, path.display().to_string(), sql, tables).with_header()?);
        }
    }
    for name in &cfg.build.warn_checks {
        let check = out.iter_mut().find(|c| &c.name == name).ok_or_else(|| {
            Error::config(format!(
                "[check] warn: no check is named {name:?} (`clicklake check` lists them)"
            ))
        })?;
        check.severity = Severity::Warn;
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
        out.push(Check::new(
            format!("{kind}({t}.{what})"),
            model.origin.clone(),
            sql,
            tables,
        ));
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

/// Which checks to run, by parts of their names (dbt's `--select` / `--exclude`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Selection<'a> {
    /// Run only the checks whose name contains one of these (all when empty).
    pub select: &'a [String],
    /// Leave out the checks whose name contains one of these.
    pub exclude: &'a [String],
}

/// The checks `selection` picks. A text that matches no check is a usage error: in CI a misspelt
/// `--select` would otherwise pass every build without checking anything, and a misspelt
/// `--exclude` would leave in the check it meant to take out.
fn selected(checks: Vec<Check>, selection: Selection) -> Result<Vec<Check>> {
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    for (flag, texts) in [
        ("--select", selection.select),
        ("--exclude", selection.exclude),
    ] {
        if let Some(text) = texts.iter().find(|t| !names.iter().any(|n| n.contains(*t))) {
            let hint = match closest_word(text, &names) {
                Some(word) => format!("; did you mean {word:?}?"),
                None => String::new(),
            };
            return Err(Error::usage(format!(
                "{flag} {text:?}: no check's name contains it{hint} (`clicklake check --list` \
                 names the {} checks)",
                names.len()
            )));
        }
    }
    let hit = |c: &Check, texts: &[String]| texts.iter().any(|t| c.name.contains(t.as_str()));
    let chosen: Vec<Check> = checks
        .into_iter()
        .filter(|c| selection.select.is_empty() || hit(c, selection.select))
        .filter(|c| !hit(c, selection.exclude))
        .collect();
    if chosen.is_empty() {
        return Err(Error::usage(
            "--exclude leaves no check to run (a gate that checks nothing must not pass)",
        ));
    }
    Ok(chosen)
}

/// The word of the checks' names closest to a misspelt `text`, when one is close. Names are made
/// of tables, columns and kinds (`unique(dim_user.user_key)`) and a selection is a part of one,
/// so a word scores by its closest stretch of about the text's length; the shortest word wins a
/// tie (`dim_user` rather than `dim_user.user_key`).
fn closest_word<'a>(text: &str, names: &[&'a str]) -> Option<&'a str> {
    let n = text.chars().count();
    let score = |word: &str| -> f64 {
        let chars: Vec<char> = word.chars().collect();
        let mut best = strsim::normalized_levenshtein(text, word);
        for len in n.saturating_sub(1).max(1)..=n + 1 {
            for window in chars.windows(len) {
                let window: String = window.iter().collect();
                best = best.max(strsim::normalized_levenshtein(text, &window));
            }
        }
        best
    };
    let words = names
        .iter()
        .flat_map(|n| n.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.')))
        .flat_map(|w| std::iter::once(w).chain(w.split('.')))
        .filter(|w| !w.is_empty());
    let mut best: Option<(f64, &str)> = None;
    for word in words {
        let s = score(word);
        let better = match best {
            None => true,
            Some((b, w)) => s > b || (s == b && word.len() < w.len()),
        };
        if better {
            best = Some((s, word));
        }
    }
    best.filter(|(s, _)| *s >= 0.8).map(|(_, w)| w)
}

/// The checks `selection` picks, without running them (`check --list`).
pub fn list(cfg: &Config, user_dir: Option<&Path>, selection: Selection<'_>) -> Result<Vec<Check>> {
    selected(all_checks(cfg, user_dir)?, selection)
}

/// `check --list`: a line a check, `name  origin  severity  tables`, aligned.
pub fn render_list(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let origin = checks.iter().map(|c| c.origin.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        let severity = match c.severity {
            Severity::Error => "error",
            Severity::Warn => "warn",
        };
        out.push_str(&format!(
            "{:<width$}  {:<origin$}  {severity:<5}  {}\n",
            c.name,
            c.origin,
            c.tables.join(", ")
        ));
    }
    out
}

/// Runs the checks `selection` picks.
pub async fn run(
    lake: &Lake,
    cfg: &Config,
    user_dir: Option<&Path>,
    selection: Selection<'_>,
    reuse: bool,
) -> Result<CheckReport> {
    let started = std::time::Instant::now();
    let checks = selected(all_checks(cfg, user_dir)?, selection)?;
    let ctx = catalog::session(cfg.memory_limit)?;
    let opened = catalog::register_all_opened(&ctx, lake, None).await?;
    let mut states: HashMap<String, String> = opened
        .iter()
        .filter_map(|(name, table)| Some((name.clone(), passes::state(table)?)))
        .collect();
    let mut present: Vec<String> = opened.into_iter().map(|(name, _)| name).collect();
    register_raw_cleaned(&ctx, lake, &mut present, &mut states).await?;
    // Loaded even when not reused: the passes of checks not run this time stay recorded.
    let mut record = passes::Passes::load(lake).await;
    let mut report = CheckReport {
        passed: 0,
        warned: 0,
        failed: 0,
        skipped: 0,
        unchanged: 0,
        seconds: 0.0,
        checks: Vec::new(),
    };
    // Checks run a few at a time: on an object store each spends most of its time waiting for
    // requests. `buffered` keeps the report in the checks' order.
    let outcomes: Vec<Result<Option<Ran>>> = futures::stream::iter(checks.iter().map(|check| {
        let runnable = check.tables.iter().all(|t| present.contains(t));
        let (ctx, states, record) = (&ctx, &states, &record);
        async move {
            if !runnable {
                return Ok(None);
            }
            let started = std::time::Instant::now();
            let df = plan(ctx, check).await?;
            let query = passes::query_digest(&check.sql);
            let inputs = passes::inputs(df.logical_plan(), states);
            if let Some(pass) = inputs
                .as_ref()
                .filter(|_| reuse)
                .and_then(|i| record.still_holds(&check.name, &query, i))
            {
                return Ok(Some(Ran {
                    outcome: (0, None),
                    seconds: 0.0,
                    unchanged_since: Some(pass.checked_at.clone()),
                    pass: Some(pass.clone()),
                }));
            }
            let checked_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let outcome = run_one(df, check).await?;
            Ok(Some(Ran {
                pass: inputs
                    .filter(|_| outcome.0 == 0)
                    .map(|inputs| passes::Pass {
                        query,
                        inputs,
                        checked_at,
                    }),
                outcome,
                seconds: started.elapsed().as_secs_f64(),
                unchanged_since: None,
            }))
        }
    }))
    .buffered(CONCURRENT_CHECKS)
    .collect()
    .await;
    for (check, ran) in checks.into_iter().zip(outcomes) {
        let Some(ran) = ran? else {
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
                severity: check.severity,
                threshold: None,
                offending_rows: 0,
                sample: None,
                sql: check.sql,
                seconds: 0.0,
                unchanged_since: None,
            });
            continue;
        };
        let (rows, sample) = ran.outcome;
        let status = check.judge(rows);
        let threshold = check.threshold_met(status);
        match status {
            "pass" => report.passed += 1,
            "warn" => report.warned += 1,
            _ => report.failed += 1,
        }
        report.unchanged += u64::from(ran.unchanged_since.is_some());
        record.record(&check.name, ran.pass);
        report.checks.push(CheckResult {
            name: check.name,
            origin: check.origin,
            status,
            severity: check.severity,
            threshold,
            offending_rows: rows,
            reason: None,
            sample,
            sql: check.sql,
            seconds: ran.seconds,
            unchanged_since: ran.unchanged_since,
        });
    }
    record.save(lake).await;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A check that ran, or whose earlier pass still holds.
struct Ran {
    outcome: Outcome,
    seconds: f64,
    unchanged_since: Option<String>,
    /// The pass to record: a run without offending rows over inputs that identify its result.
    pass: Option<passes::Pass>,
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
    states: &mut HashMap<String, String>,
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
        if let Some(state) = passes::state(&raw) {
            states.insert("raw_events_cleaned".into(), state);
        }
    }
    Ok(())
}

/// The check's error for a query failure: a mistake in the query is a config error.
fn failure(check: &Check, e: &datafusion::error::DataFusionError) -> Error {
    let prefix = format!("check {} ({})", check.name, check.origin);
    match query_mistake(e) {
        Some(mistake) => Error::config(format!("{prefix}: {mistake}")),
        None => Error::runtime(format!("{prefix}: {}", root_message(e))),
    }
}

/// The check's query, planned.
async fn plan(ctx: &SessionContext, check: &Check) -> Result<datafusion::prelude::DataFrame> {
    ctx.sql_with_options(&check.sql, models::query_only())
        .await
        .map_err(|e| failure(check, &e))
}

/// Counts the offending rows (streaming) and keeps the first few for the report.
async fn run_one(df: datafusion::prelude::DataFrame, check: &Check) -> Result<Outcome> {
    let fail = |e: datafusion::error::DataFusionError| failure(check, &e);
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
    let mut out = render_flagged(report, false);
    let unchanged = match report.unchanged {
        0 => String::new(),
        n => format!(" ({n} of the passes unchanged since they last ran: --no-reuse runs them)"),
    };
    out.push_str(&format!(
        "{} in {:.2}s{unchanged}\n",
        summary_line(report),
        report.seconds
    ));
    out
}

/// The report's lines, without the summary line; with `flagged_only`, only warnings and
/// failures (what `run` prints under its stage line).
pub fn render_flagged(report: &CheckReport, flagged_only: bool) -> String {
    let mut out = String::new();
    for c in &report.checks {
        match c.status {
            "pass" | "skip" if flagged_only => {}
            "pass" => match &c.unchanged_since {
                Some(at) => out.push_str(&format!("PASS  {} (unchanged since {at})\n", c.name)),
                None => out.push_str(&format!("PASS  {} ({:.2}s)\n", c.name, c.seconds)),
            },
            "skip" => out.push_str(&format!(
                "SKIP  {} ({})\n",
                c.name,
                c.reason.as_deref().unwrap_or("")
            )),
            status => {
                let label = if status == "warn" { "WARN" } else { "FAIL" };
                let threshold = c
                    .threshold
                    .as_ref()
                    .map(|t| format!(" ({t})"))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "{label}  {}: {} offending row(s){threshold}  [{}] ({:.2}s)\n",
                    c.name, c.offending_rows, c.origin, c.seconds
                ));
                if let Some(s) = &c.sample {
                    for line in s.lines() {
                        out.push_str(&format!("      {line}\n"));
                    }
                }
            }
        }
    }
    out
}

/// The report as JUnit XML: one test case per check (its origin as the class name, its seconds
/// as the time). A failure carries the offending rows, the sample and the query; a skipped check
/// its reason; a warning passes, with its offending rows as output, as CI systems show dbt's
/// warnings.
pub fn junit(report: &CheckReport) -> String {
    let cases: Vec<junit::Case> = report
        .checks
        .iter()
        .map(|c| {
            let detail = || {
                let mut text = format!("{} offending row(s)", c.offending_rows);
                if let Some(t) = &c.threshold {
                    text.push_str(&format!(" ({t})"));
                }
                if let Some(sample) = &c.sample {
                    text.push_str(&format!("\n{sample}"));
                }
                text.push_str(&format!("\n\n{}", c.sql));
                text
            };
            let outcome = match c.status {
                "pass" => junit::Outcome::Pass,
                "skip" => junit::Outcome::Skipped(c.reason.clone().unwrap_or_default()),
                "warn" => junit::Outcome::PassWithOutput(format!("WARN: {}", detail())),
                _ => junit::Outcome::Failure {
                    message: format!("{} offending row(s)", c.offending_rows),
                    kind: "check",
                    text: detail(),
                },
            };
            junit::Case {
                classname: c.origin.clone(),
                name: c.name.clone(),
                seconds: Some(c.seconds),
                outcome,
            }
        })
        .collect();
    junit::report("clicklake check", report.seconds, &cases)
}

/// Writes the report as JUnit XML (see [`junit`]) to `path`.
pub fn write_junit(path: &Path, report: &CheckReport) -> Result<()> {
    junit::write(path, &junit(report))
}

/// `80 passed, 1 warned, 0 failed, 2 skipped`.
pub fn summary_line(report: &CheckReport) -> String {
    format!(
        "{} passed, {} warned, {} failed, {} skipped",
        report.passed, report.warned, report.failed, report.skipped
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_selection_is_matched_to_the_closest_word_of_the_names() {
        let names = [
            "unique(dim_user.user_key)",
            "references(fact_orders.user_key->dim_user.user_key)",
            "events_unique_event_id",
            "fact_orders_revenue_matches_events",
        ];
        assert_eq!(closest_word("dim_usr", &names), Some("dim_user"));
        assert_eq!(
            closest_word("unique_evnt_id", &names),
            Some("events_unique_event_id")
        );
        assert_eq!(
            closest_word("fact_order_revenue", &names),
            Some("fact_orders_revenue_matches_events")
        );
        assert_eq!(closest_word("zzzz", &names), None);
    }

    #[test]
    fn thresholds_read_as_dbt_writes_them() {
        let met = |text: &str, rows: u64| Threshold::parse(text).unwrap().met(rows);
        assert!(met(">10", 11) && !met("> 10", 10));
        assert!(met(">= 1", 1) && !met(">=1", 0));
        assert!(met("<> 0", 2) && !met("!=0", 0));
        assert!(met("== 3", 3) && met("= 3", 3) && !met("=3", 4));
        assert!(met("< 2", 1) && !met("<= 2", 3));
        assert_eq!(Threshold::parse("<> 0").unwrap().to_string(), "!= 0");
        for bad in ["", "10", "> ten", ">", "~ 1", "> -1", "> 1.5"] {
            assert_eq!(Threshold::parse(bad), None, "{bad:?}");
        }
    }

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
