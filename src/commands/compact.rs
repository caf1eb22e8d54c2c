//! `clicklake compact`: rewrite each partition's small files into files of about the target size
//! (Delta OPTIMIZE). The commit adds and removes files with `dataChange = false`, so incremental
//! clean and build see no new rows (a clean whose new raw files were folded into others falls back
//! to a full refresh and says so).

use std::num::NonZeroU64;
use std::process::ExitCode;

use serde::Serialize;

use crate::catalog;
use crate::cli::CompactArgs;
use crate::config::{format_bytes, parse_size, Config};
use crate::error::Error;
use crate::storage::Lake;

#[derive(Debug, Serialize)]
struct Compacted {
    table: String,
    files_removed: u64,
    files_added: u64,
    partitions: u64,
    version: Option<i64>,
}

pub async fn run(cfg: &Config, lake: &Lake, args: CompactArgs) -> anyhow::Result<ExitCode> {
    let target = match &args.target_size {
        Some(v) => parse_size(v).map_err(|e| Error::usage(format!("--target-size: {e}")))?,
        None => cfg.ingest.target_file_size,
    };
    let target = NonZeroU64::new(target)
        .ok_or_else(|| Error::usage("--target-size must be greater than zero"))?;
    // Before the lease is taken: a misspelt table or lake writes nothing.
    catalog::check_maintenance(lake, &args.tables).await?;
    let work = async {
        let mut results = Vec::new();
        for (name, table) in catalog::open_existing(lake, &args.tables).await? {
            let (table, metrics) = table
                .optimize()
                .with_target_size(target)
                .with_writer_properties(crate::delta::writer_properties(
                    cfg.ingest.zstd_level,
                    cfg.ingest.row_group_rows,
                )?)
                .await
                .map_err(|e| Error::runtime(format!("compacting {name}: {e}")))?;
            results.push(Compacted {
                table: name,
                files_removed: metrics.num_files_removed,
                files_added: metrics.num_files_added,
                partitions: metrics.partitions_optimized,
                version: table.version().map(|v| v as i64),
            });
        }
        Ok::<_, Error>(results)
    };
    let results = crate::lease::exclusive(lake, cfg, "compact", work).await?;
    if args.json {
        outln!("{}", serde_json::to_string(&results)?)?;
    } else if !cfg.quiet {
        for r in &results {
            outln!(
                "{:<22} {} small files → {} (in {} partitions){}",
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
