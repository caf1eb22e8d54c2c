//! `clicklake vacuum`: delete data files that no version within the retention period references
//! (and files a crashed run wrote but never committed; see [`crate::vacuum`]).

use std::process::ExitCode;

use crate::catalog;
use crate::cli::VacuumArgs;
use crate::config::{parse_duration, Config};
use crate::error::Error;
use crate::storage::Lake;

pub async fn run(cfg: &Config, lake: &Lake, args: VacuumArgs) -> anyhow::Result<ExitCode> {
    let retain =
        parse_duration(&args.retain).map_err(|e| Error::usage(format!("--retain: {e}")))?;
    let minimum = std::time::Duration::from_secs(crate::vacuum::RETENTION_DAYS as u64 * 86_400);
    if retain < minimum && !args.allow_short_retention {
        return Err(Error::usage(format!(
            "--retain {}: under 7 days a running query or clean may still read the files; \
             add --allow-short-retention if no run can be in flight",
            args.retain
        ))
        .into());
    }
    let retention = chrono::Duration::from_std(retain)
        .map_err(|_| Error::usage(format!("--retain {}: too long", args.retain)))?;
    // Before the lease is taken: a misspelt table or lake writes nothing.
    catalog::check_maintenance(lake, &args.tables).await?;
    let work = crate::vacuum::vacuum(lake, &args.tables, retention, args.dry_run);
    let results = crate::lease::exclusive(lake, cfg, "vacuum", work).await?;
    let deleted: u64 = results.iter().map(|r| r.files_deleted).sum();
    crate::audit::record(
        lake,
        cfg,
        "vacuum",
        if args.dry_run { "dry_run" } else { "success" },
        &format!(
            "retain {}: {deleted} files in {} tables",
            args.retain,
            results.len()
        ),
    )
    .await?;
    if args.json {
        outln!("{}", serde_json::to_string(&results)?)?;
    } else if !cfg.quiet {
        let verb = if args.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        for r in &results {
            outln!("{:<22} {verb} {} files", r.table, r.files_deleted)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
