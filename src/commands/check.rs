//! `clicklake check`: data tests over the lake. Prints a report (`--json`: one object) and exits
//! 1 when any check fails, so CI can gate on it.

use std::process::ExitCode;

use crate::check;
use crate::cli::CheckArgs;
use crate::config::Config;
use crate::error::{exit, Error};
use crate::storage::Lake;

pub async fn run(cfg: &Config, lake: &Lake, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let dir = args
        .checks_dir
        .as_deref()
        .or(cfg.build.checks_dir.as_deref());
    let selection = check::Selection {
        select: &args.select,
        exclude: &args.exclude,
    };
    if args.list {
        let checks = check::list(cfg, dir, selection)?;
        if args.json {
            let listed: Vec<serde_json::Value> = checks
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "name": c.name,
                        "origin": c.origin,
                        "severity": c.severity,
                        "tables": c.tables,
                        "warn_if": c.warn_if.to_string(),
                        "error_if": c.error_if.to_string(),
                    })
                })
                .collect();
            outln!("{}", serde_json::to_string(&listed)?)?;
        } else {
            out!("{}", check::render_list(&checks))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    // A report nobody can write is a usage error before any check runs.
    crate::junit::check_path(args.junit.as_deref())?;
    let report = check::run(lake, cfg, dir, selection, !args.no_reuse).await?;
    if let Some(path) = &args.junit {
        check::write_junit(path, &report)?;
    }
    if args.json {
        outln!("{}", serde_json::to_string(&report)?)?;
    } else if !(cfg.quiet && report.failed == 0) {
        out!("{}", check::render(&report))?;
    }
    if report.passed == 0 && report.warned == 0 && report.failed == 0 && report.skipped > 0 {
        // A CI gate that checked nothing must not pass: a mistyped lake URL, or checks run
        // before anything was ingested.
        return Err(Error::usage(format!(
            "no check ran: the tables they read do not exist at {} (ingest, clean and build \
             create them; is --lake right?)",
            lake.root()
        ))
        .into());
    }
    Ok(if report.failed > 0 {
        ExitCode::from(exit::CHECKS_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}
