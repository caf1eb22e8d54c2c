//! `clicklake clean`: build `events` from `raw_events` with the SQL models of `sql/clean/`.
//! Prints a summary on stdout (`--json`: one object).

use std::process::ExitCode;

use crate::clean::{self, CleanRequest, CleanSummary};
use crate::cli::CleanArgs;
use crate::config::{format_bytes, Config};
use crate::printer::Printer;
use crate::storage::Lake;

pub async fn run(cfg: &Config, lake: &Lake, args: CleanArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = cfg.clone();
    if args.sql_dir.is_some() {
        cfg.clean.sql_dir = args.sql_dir;
    }
    let printer = Printer::new(&cfg);
    let req = CleanRequest {
        full_refresh: args.full_refresh,
    };
    // A mistyped --lake is a usage error, not "nothing to do" on every tick.
    crate::catalog::require_lake(lake).await?;
    let summary =
        crate::lease::exclusive(lake, &cfg, "clean", clean::run(lake, &cfg, req, &printer)).await?;
    if args.json {
        outln!("{}", serde_json::to_string(&summary)?)?;
    } else if !cfg.quiet {
        out!("{}", render(&summary))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn render(s: &CleanSummary) -> String {
    let mut out = String::new();
    if s.mode == "up_to_date" {
        match s.raw_version_to {
            None => out.push_str("nothing to clean: raw_events does not exist yet\n"),
            Some(v) => out.push_str(&format!(
                "nothing new to clean: events already reflects raw_events version {v}\n"
            )),
        }
        return out;
    }
    let from = s
        .raw_version_from
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into());
    let to = s.raw_version_to.unwrap_or_default();
    out.push_str(&format!(
        "clean ({}) raw_events versions {from} → {to}\n",
        s.mode
    ));
    if let Some(reason) = &s.full_refresh_reason {
        out.push_str(&format!("  full refresh  {reason}\n"));
    }
    out.push_str(&format!(
        "  raw rows      {} consumed\n",
        s.raw_rows_consumed
    ));
    if s.mode == "incremental" {
        out.push_str(&format!(
            "  visitors      {} touched (their whole history recomputed)\n",
            s.visitors_touched
        ));
    }
    out.push_str(&format!(
        "  events        {} recomputed, {} written ({} new or changed, {} copied unchanged){}\n",
        s.events_recomputed,
        s.events_written,
        s.events_changed,
        s.events_copied,
        s.events_total
            .map(|t| format!("; {t} in the table"))
            .unwrap_or_default()
    ));
    out.push_str(&format!(
        "  duplicates    {} exact, {} conflicting\n",
        s.exact_duplicates, s.conflicting_duplicates
    ));
    out.push_str(&format!("  sessions      {} touched\n", s.sessions_touched));
    out.push_str(&format!(
        "  written       {} partitions rewritten, {} files added ({} patched), {} removed, {}\n",
        s.partitions_rewritten,
        s.files_added,
        s.files_patched,
        s.files_removed,
        format_bytes(s.bytes_written)
    ));
    out.push_str(&format!(
        "  time          {:.2}s, {:.0} raw rows/s\n",
        s.seconds, s.rows_per_sec
    ));
    if let Some(v) = s.events_version {
        out.push_str(&format!("  events        version {v}\n"));
    }
    out
}
