//! `clicklake compact`: rewrite each partition's small files into files of about the target size
//! (Delta OPTIMIZE; see [`crate::compaction`]). No rows change, and incremental clean and build see
//! no new rows; raw_events waits while it holds files not yet cleaned.

use std::num::NonZeroU64;
use std::process::ExitCode;

use crate::catalog;
use crate::cli::CompactArgs;
use crate::compaction::{self, Settings};
use crate::config::{format_bytes, parse_size, Config};
use crate::error::Error;
use crate::storage::Lake;

pub async fn run(cfg: &Config, lake: &Lake, args: CompactArgs) -> anyhow::Result<ExitCode> {
    let target = match &args.target_size {
        Some(v) => parse_size(v).map_err(|e| Error::usage(format!("--target-size: {e}")))?,
        None => cfg.ingest.target_file_size,
    };
    let target = NonZeroU64::new(target)
        .ok_or_else(|| Error::usage("--target-size must be greater than zero"))?;
    let settings = Settings {
        target,
        min_files: args.min_files,
    };
    // Before the lease is taken: a misspelt table or lake writes nothing.
    catalog::check_maintenance(lake, &args.tables).await?;
    let work = compaction::compact(lake, cfg, &args.tables, settings);
    let results = crate::lease::exclusive(lake, cfg, "compact", work).await?;
    if args.json {
        outln!("{}", serde_json::to_string(&results)?)?;
    } else if !cfg.quiet {
        for r in &results {
            let skipped = match &r.skipped {
                Some(why) => format!(" (left alone: {why})"),
                None => String::new(),
            };
            outln!(
                "{:<22} {} small files → {} (in {} partitions){}{skipped}",
                r.table,
                r.files_removed,
                r.files_added,
                r.partitions,
                r.version
                    .map(|v| format!(", version {v}"))
                    .unwrap_or_default()
            )?;
        }
        outln!("target file size {}", format_bytes(target.get()))?;
    }
    Ok(ExitCode::SUCCESS)
}
