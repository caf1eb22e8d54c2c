//! `clicklake tables`: every table of the lake with rows, files, size, partitions and version,
//! read from the Delta log alone (no data file is opened).

use std::collections::BTreeSet;
use std::process::ExitCode;

use serde::Serialize;

use crate::catalog;
use crate::cli::TablesArgs;
use crate::config::format_bytes;
use crate::storage::Lake;

#[derive(Debug, Serialize)]
pub struct TableInfo {
    pub name: String,
    pub exists: bool,
    pub version: Option<i64>,
    pub rows: u64,
    pub files: u64,
    pub bytes: u64,
    pub partitions: u64,
    pub partition_columns: Vec<String>,
    pub location: String,
    /// Data files under [`SMALL_FILE_BYTES`]: candidates for compaction.
    pub small_files: u64,
    /// When the latest commit was written, milliseconds since the epoch.
    pub last_commit_ms: Option<i64>,
}

/// A data file below this size counts as small.
pub const SMALL_FILE_BYTES: u64 = 16 << 20;

pub async fn collect(lake: &Lake) -> anyhow::Result<Vec<TableInfo>> {
    let mut out = Vec::new();
    let names = catalog::ALL
        .iter()
        .map(|d| d.name.to_string())
        .chain(catalog::star_tables());
    for name in names {
        let declared: Vec<String> = catalog::find(&name)
            .map(|d| d.partition_columns.iter().map(|c| c.to_string()).collect())
            .unwrap_or_default();
        let mut info = TableInfo {
            name: name.clone(),
            exists: false,
            version: None,
            rows: 0,
            files: 0,
            bytes: 0,
            partitions: 0,
            partition_columns: declared,
            location: lake.table_url(&name).to_string(),
            small_files: 0,
            last_commit_ms: None,
        };
        if let Some(table) = lake.open_table(&name).await? {
            info.exists = true;
            info.version = table.version().map(|v| v as i64);
            let state = table.snapshot()?;
            info.partition_columns = state.metadata().partition_columns().to_vec();
            let mut parts = BTreeSet::new();
            info.last_commit_ms = crate::storage::committed_ms(&table).await;
            for f in state.log_data().iter() {
                info.files += 1;
                info.small_files += ((f.size() as u64) < SMALL_FILE_BYTES) as u64;
                info.bytes += f.size() as u64;
                info.rows += f.num_records().unwrap_or(0) as u64;
                let mut pv: Vec<(String, Option<String>)> =
                    f.partition_values_map().into_iter().collect();
                pv.sort();
                parts.insert(pv);
            }
            info.partitions = if info.partition_columns.is_empty() {
                0
            } else {
                parts.len() as u64
            };
        }
        out.push(info);
    }
    Ok(out)
}

pub async fn run(lake: &Lake, args: &TablesArgs) -> anyhow::Result<ExitCode> {
    let infos = collect(lake).await?;
    if args.json {
        outln!("{}", serde_json::to_string(&infos)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<22} {:>8} {:>12} {:>7} {:>11} {:>10}  partitioned by",
        "table",
        "version",
        "rows",
        "files",
        "size",
        "partitions"
    )?;
    for t in &infos {
        if !t.exists {
            outln!("{:<22} {:>8}", t.name, "-")?;
            continue;
        }
        outln!(
            "{:<22} {:>8} {:>12} {:>7} {:>11} {:>10}  {}",
            t.name,
            t.version.map(|v| v.to_string()).unwrap_or_default(),
            t.rows,
            t.files,
            format_bytes(t.bytes),
            t.partitions,
            t.partition_columns.join(", ")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
