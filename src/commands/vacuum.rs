//! `clicklake vacuum`: delete data files that no version within the retention period references
//! (and files a crashed run wrote but never committed). Time travel cannot reach further back
//! than the retention afterwards.

use std::process::ExitCode;

use serde::Serialize;

use crate::catalog;
use crate::cli::VacuumArgs;
use crate::config::{parse_duration, Config};
use crate::error::Error;
use crate::storage::Lake;

#[derive(Debug, Serialize)]
struct Vacuumed {
    table: String,
    dry_run: bool,
    files_deleted: u64,
    /// Up to ten of them, for the record.
    examples: Vec<String>,
}

pub async fn run(cfg: &Config, lake: &Lake, args: VacuumArgs) -> anyhow::Result<ExitCode> {
    let retain =
        parse_duration(&args.retain).map_err(|e| Error::usage(format!("--retain: {e}")))?;
    let minimum = std::time::Duration::from_secs(7 * 86_400);
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
    let work = async {
        let mut results = Vec::new();
        for (name, table) in catalog::open_existing(lake, &args.tables).await? {
            let (_, metrics) = table
                .vacuum()
                .with_retention_period(retention)
                // Full, not deltalake's default Lite (which deletes only files the log removed): a
                // crashed run's uncommitted files are in no log entry, and only a listing finds them.
                // They are deleted once older than the retention, like everything else.
                .with_mode(deltalake::operations::vacuum::VacuumMode::Full)
                .with_enforce_retention_duration(false)
                .with_dry_run(args.dry_run)
                .await
                .map_err(|e| Error::runtime(format!("vacuuming {name}: {e}")))?;
            results.push(Vacuumed {
                table: name,
                dry_run: metrics.dry_run,
                files_deleted: metrics.files_deleted.len() as u64,
                examples: metrics.files_deleted.into_iter().take(10).collect(),
            });
        }
        Ok::<_, anyhow::Error>(results)
    };
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
