//! `clicklake build`: the star schema from `events`, with the SQL models of `sql/star/`.
//! Prints a summary on stdout (`--json`: one object).

use std::process::ExitCode;

use crate::build::{self, AsOf, BuildRequest, BuildSummary};
use crate::cli::BuildArgs;
use crate::config::Config;
use crate::error::Error;
use crate::printer::Printer;
use crate::storage::Lake;

pub async fn run(cfg: &Config, lake: &Lake, args: BuildArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = cfg.clone();
    if args.sql_dir.is_some() {
        cfg.build.sql_dir = args.sql_dir;
    }
    let as_of = args.as_of.as_deref().map(parse_as_of).transpose()?;
    let printer = Printer::new(&cfg);
    let req = BuildRequest {
        full_refresh: args.full_refresh,
        as_of,
    };
    // A mistyped --lake is a usage error, not "nothing to do" on every tick.
    crate::catalog::require_lake(lake).await?;
    let summary =
        crate::lease::exclusive(lake, &cfg, "build", build::run(lake, &cfg, req, &printer)).await?;
    if args.json {
        outln!("{}", serde_json::to_string(&summary)?)?;
    } else if !cfg.quiet {
        out!("{}", render(&summary))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `now`, an RFC 3339 timestamp, `YYYY-MM-DD HH:MM:SS` (UTC) or a date (its midnight, UTC).
pub fn parse_as_of(text: &str) -> Result<AsOf, Error> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("now") {
        return Ok(AsOf::Now);
    }
    if let Ok(ts) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(AsOf::At(ts.timestamp_micros()));
    }
    if let Ok(ts) = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S") {
        return Ok(AsOf::At(ts.and_utc().timestamp_micros()));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        let midnight = d.and_hms_opt(0, 0, 0).expect("midnight");
        return Ok(AsOf::At(midnight.and_utc().timestamp_micros()));
    }
    Err(Error::usage(format!(
        "--as-of: {t:?} is not `now`, an RFC 3339 timestamp (2026-03-01T12:00:00Z) or a date"
    )))
}

pub fn render(s: &BuildSummary) -> String {
    let mut out = String::new();
    let Some(version) = s.events_version else {
        out.push_str("nothing to build: events does not exist yet (run clean first)\n");
        return out;
    };
    if s.mode == "up_to_date" {
        out.push_str(&format!(
            "nothing to build: every star table reflects events version {version} as of {}\n",
            s.as_of.as_deref().unwrap_or("-")
        ));
        return out;
    }
    out.push_str(&format!(
        "build from events version {version}, as of {}\n",
        s.as_of.as_deref().unwrap_or("-")
    ));
    for t in &s.tables {
        let detail = match t.mode {
            "up_to_date" => "up to date".to_string(),
            "incremental" => format!(
                "incremental: {} keys, {} rows computed, {} copied{}",
                t.keys_changed.unwrap_or(0),
                t.rows_computed,
                t.rows_copied,
                match t.files_patched {
                    0 => String::new(),
                    n => format!(", {} patched into {n} files", t.rows_patched),
                }
            ),
            _ => format!(
                "full ({}): {} rows",
                t.reason.as_deref().unwrap_or("-"),
                t.rows_computed
            ),
        };
        let version = t.version.map(|v| format!(" v{v}")).unwrap_or_default();
        out.push_str(&format!(
            "  {:<24} {detail}; +{} -{} files{version} {:.2}s\n",
            t.table, t.files_added, t.files_removed, t.seconds
        ));
    }
    out.push_str(&format!("  time {:.2}s\n", s.seconds));
    out
}
