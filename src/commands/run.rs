//! `clicklake run`: the cron entry point. Prints a few lines per run (nothing with `--quiet`
//! unless something failed), or one JSON object with `--json`. Exit 0, 1 when checks failed,
//! 2 for configuration, 3 for a failed stage, 75 when another run holds the lake's lock.

use std::process::ExitCode;

use crate::check;
use crate::cli::RunArgs;
use crate::config::{format_bytes, Config};
use crate::error::{exit, Error};
use crate::printer::Printer;
use crate::runner::{self, RunRequest, RunSummary};
use crate::storage::Lake;

/// The config's `[ingest] ignore` patterns and the `--ignore` ones, validated before any I/O.
pub fn ignore_patterns(cfg: &Config, flags: &[String]) -> Result<Vec<glob::Pattern>, Error> {
    let mut patterns = cfg.ingest.ignore.clone();
    patterns.extend(
        crate::config::parse_ignore(flags).map_err(|e| Error::usage(format!("--ignore {e}")))?,
    );
    Ok(patterns)
}

pub async fn run(cfg: &Config, lake: &Lake, args: RunArgs) -> anyhow::Result<ExitCode> {
    let req = RunRequest {
        inbox: args.inbox.or_else(|| cfg.run.inbox.clone()),
        source: args.source.unwrap_or_else(|| cfg.run.source.clone()),
        wait: cfg.wait,
        check: cfg.run.check && !args.no_check,
        compact_min_files: if args.no_compact {
            0
        } else {
            cfg.run.compact_min_files
        },
        max_quarantined: args.max_quarantined.or(cfg.ingest.max_quarantined),
        min_file_age: args.min_file_age.unwrap_or(cfg.ingest.min_file_age),
        ignore: ignore_patterns(cfg, &args.ignore)?,
    };
    runner::validate(&req, cfg)?;
    crate::junit::check_path(args.junit.as_deref())?;
    let printer = Printer::new(cfg);
    let summary = match runner::run(lake, cfg, req, &printer).await {
        Ok(s) => s,
        // An overlapping tick is expected under cron: with --quiet, only the exit code says it.
        Err(Error::Locked(_)) if cfg.quiet => return Ok(ExitCode::from(exit::LOCKED)),
        Err(e) => return Err(e.into()),
    };
    let over_gate = summary
        .ingest
        .as_ref()
        .is_some_and(|i| i.over_max_quarantined);
    let failed_checks = summary.check.as_ref().is_some_and(|c| c.failed > 0) || over_gate;
    if let (Some(path), Some(report)) = (&args.junit, &summary.check) {
        check::write_junit(path, report)?;
    }
    if args.json {
        outln!("{}", serde_json::to_string(&summary)?)?;
    } else if !cfg.quiet {
        out!("{}", render(&summary))?;
    } else if failed_checks {
        // Quiet is for when all is well: failures still speak.
        if let Some(report) = summary.check.as_ref().filter(|c| c.failed > 0) {
            out!("{}", check::render(report))?;
        }
    }
    if let Some(over) = summary.error.as_ref().filter(|_| over_gate && !args.json) {
        eprintln!("error: {over}");
    }
    Ok(if failed_checks {
        ExitCode::from(exit::CHECKS_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn render(s: &RunSummary) -> String {
    let secs = |name: &str| {
        s.stage_seconds
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| format!("{t:.2}s"))
            .unwrap_or_default()
    };
    let mut out = format!(
        "run {} {} in {:.2}s ({})\n",
        s.run_id, s.outcome, s.seconds, s.lake
    );
    if let Some(i) = &s.ingest {
        let mut waiting = match i.files_waiting {
            0 => String::new(),
            n => format!(", {n} waiting (written < min_file_age ago)"),
        };
        if i.files_ignored > 0 {
            waiting.push_str(&format!(", {} ignored", i.files_ignored));
        }
        let line = if i.files_read == 0 {
            format!(
                "no new files ({} already ingested{waiting})",
                i.files_skipped
            )
        } else {
            // Every line is accounted for on this line, as in `ingest`'s summary.
            let mut rest = String::new();
            for (n, what) in [(i.blank_lines, "blank"), (i.erased, "erased")] {
                if n > 0 {
                    rest.push_str(&format!(", {n} {what}"));
                }
            }
            let lines = match i.extra_rows {
                0 => format!("{} lines", i.lines),
                extra => format!("{} lines + {extra} extra rows", i.lines),
            };
            format!(
                "{} file(s){waiting}, {lines}: {} landed, {} quarantined{}{rest}, {}",
                i.files_read,
                i.landed,
                i.quarantined,
                match (&i.max_quarantined, i.over_max_quarantined) {
                    (Some(limit), true) => format!(" (OVER max_quarantined {limit})"),
                    _ => String::new(),
                },
                format_bytes(i.bytes_read)
            )
        };
        out.push_str(&format!("  ingest  {line:<64} {}\n", secs("ingest")));
    } else if s.inbox.is_none() && s.clean.is_some() {
        // Not an error (ingest may run on its own schedule), but a cron user who forgot the
        // inbox should not read "nothing new" as "no new files arrived".
        out.push_str("  ingest  skipped: no inbox (set [run] inbox or pass --inbox)\n");
    }
    if let Some(c) = &s.clean {
        let line = match c.mode {
            "up_to_date" => "nothing new".to_string(),
            mode => format!(
                "{mode}: {} raw rows, {} events written",
                c.raw_rows_consumed, c.events_written
            ),
        };
        out.push_str(&format!("  clean   {line:<64} {}\n", secs("clean")));
    }
    if let Some(b) = &s.build {
        let rebuilt = b.tables.iter().filter(|t| t.mode != "up_to_date").count();
        let line = match b.mode {
            "up_to_date" => "nothing new".to_string(),
            _ => format!("{rebuilt} of {} tables updated", b.tables.len()),
        };
        out.push_str(&format!("  build   {line:<64} {}\n", secs("build")));
    }
    if let Some(c) = &s.check {
        let line = match c.unchanged {
            0 => check::summary_line(c),
            n => format!("{} ({n} unchanged)", check::summary_line(c)),
        };
        out.push_str(&format!("  check   {line:<64} {}\n", secs("check")));
        out.push_str(&check::render_flagged(c, true));
    }
    if let Some(v) = &s.vacuum {
        let deleted: u64 = v.iter().map(|t| t.files_deleted).sum();
        let line = format!(
            "{deleted} unreferenced files deleted in {} tables (retain {}d)",
            v.len(),
            crate::vacuum::RETENTION_DAYS
        );
        out.push_str(&format!("  vacuum  {line:<64} {}\n", secs("vacuum")));
    }
    if let Some(c) = &s.compact {
        let line = crate::compaction::summary_line(c, s.compact_min_files);
        out.push_str(&format!("  compact {line:<64} {}\n", secs("compact")));
    }
    out
}
