//! Compaction (Delta OPTIMIZE): each partition's small files are merged into files of about the
//! target size. The commits add and remove files with `dataChange = false`, so incremental clean
//! and build see no new rows.
//!
//! `clicklake compact` runs it on demand. `clicklake run` runs it after its build, on the tables
//! where at least `[run] compact_min_files` files can be merged away: every tick adds files to
//! every table it touches, and a lake nobody compacts gets slower with each tick, as each scan
//! opens every file.
//!
//! `raw_events` is compacted only when every file in it has been cleaned: files landed since the
//! last clean are read by name by the next one, and folded into others they would make that
//! clean a full refresh. (Compacting the snapshot the clean read instead is not safe: deltalake
//! does not refuse an OPTIMIZE whose files a later commit already replaced, and the rows would be
//! written twice.) A file that lands while a compaction runs is not in its plan.

use std::collections::HashMap;
use std::num::NonZeroU64;

use deltalake::DeltaTable;
use futures::StreamExt;
use serde::Serialize;

use crate::clean::CONSUMED_APP_ID;
use crate::config::Config;
use crate::delta;
use crate::error::{Error, Result};
use crate::storage::Lake;

/// What compaction did to one table.
#[derive(Debug, Clone, Serialize)]
pub struct Compacted {
    pub table: String,
    pub files_removed: u64,
    pub files_added: u64,
    pub partitions: u64,
    /// The table's version after it (its current one when nothing was merged).
    pub version: Option<i64>,
    /// Files it could have merged away before it ran ([`mergeable_files`]).
    pub mergeable: u64,
    /// Why it was left alone, when it was: `below min_files`, or another writer's commit.
    pub skipped: Option<String>,
}

/// How much to compact.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The file size to aim for; files larger than it are left alone.
    pub target: NonZeroU64,
    /// Compact a table only when at least this many of its files can be merged away.
    pub min_files: u64,
}

/// The files a compaction would merge away: in each partition, its files no larger than
/// `target` beyond the first (a lone small file has nothing to merge with).
pub fn mergeable_files(table: &DeltaTable, target: u64) -> Result<u64> {
    let mut small: HashMap<Vec<(String, Option<String>)>, u64> = HashMap::new();
    for f in table.snapshot()?.log_data().iter() {
        if f.size() as u64 <= target {
            let mut partition: Vec<_> = f.partition_values_map().into_iter().collect();
            partition.sort();
            *small.entry(partition).or_default() += 1;
        }
    }
    Ok(small.values().map(|n| n - 1).sum())
}

/// Compacts the named tables (every existing one when `names` is empty) whose mergeable files
/// reach `settings.min_files`. The caller holds the lake's lease.
pub async fn compact(
    lake: &Lake,
    cfg: &Config,
    names: &[String],
    settings: Settings,
) -> Result<Vec<Compacted>> {
    let props = delta::writer_properties(cfg.ingest.zstd_level, cfg.ingest.row_group_rows)?;
    // Each table is opened and its files counted four at a time (on a store, opening a table is
    // a few round trips); the compactions themselves run one after the other.
    let surveyed: Vec<Result<(DeltaTable, Compacted)>> =
        futures::stream::iter(crate::catalog::existing_tables(lake, names).await?)
            .map(|name| survey(lake, name, settings))
            .buffered(4)
            .collect()
            .await;
    let mut results = Vec::new();
    for surveyed in surveyed {
        let (table, mut result) = surveyed?;
        if result.skipped.is_some() || result.mergeable == 0 {
            results.push(result);
            continue;
        }
        let name = result.table.clone();
        let optimized = table
            .optimize()
            .with_target_size(settings.target)
            .with_writer_properties(props.clone())
            .await;
        match optimized {
            Ok((table, metrics)) => {
                result.files_removed = metrics.num_files_removed;
                result.files_added = metrics.num_files_added;
                result.partitions = metrics.partitions_optimized;
                result.version = table.version().map(|v| v as i64);
            }
            // Another writer (an ingest next to this run) committed files this compaction
            // meant to replace: nothing of it was made, and the next one merges them.
            Err(deltalake::DeltaTableError::Transaction {
                source: deltalake::kernel::transaction::TransactionError::CommitConflict(e),
            }) => {
                tracing::warn!("{name} was not compacted: another writer's commit conflicts: {e}");
                result.skipped = Some(format!("another writer's commit conflicts: {e}"));
            }
            Err(e) => return Err(Error::runtime(format!("compacting {name}: {e}"))),
        }
        results.push(result);
    }
    Ok(results)
}

/// A table opened, with what compaction would do to it: merge its files, or leave it alone and
/// why.
async fn survey(lake: &Lake, name: String, settings: Settings) -> Result<(DeltaTable, Compacted)> {
    let table = lake
        .open_table(&name)
        .await?
        .ok_or_else(|| Error::runtime(format!("{name} disappeared while compacting")))?;
    let table = shorten_checkpoint_interval(&name, table).await?;
    let mergeable = mergeable_files(&table, settings.target.get())?;
    let waiting = match name.as_str() {
        "raw_events" if mergeable > 0 => not_yet_cleaned(lake, &table).await?,
        _ => None,
    };
    let skipped = if mergeable == 0 {
        None
    } else if waiting.is_some() {
        waiting
    } else if mergeable < settings.min_files {
        Some(format!(
            "{mergeable} mergeable file(s), below min_files {}",
            settings.min_files
        ))
    } else {
        None
    };
    let result = Compacted {
        table: name,
        files_removed: 0,
        files_added: 0,
        partitions: 0,
        version: table.version().map(|v| v as i64),
        mergeable,
        skipped,
    };
    Ok((table, result))
}

/// A table made by an earlier clicklake, which set `delta.checkpointInterval` to 50, gets
/// [`delta::CHECKPOINT_INTERVAL`] (one commit); an interval set otherwise is left as it is.
async fn shorten_checkpoint_interval(name: &str, table: DeltaTable) -> Result<DeltaTable> {
    const KEY: &str = "delta.checkpointInterval";
    let configured = table
        .snapshot()?
        .metadata()
        .configuration()
        .get(KEY)
        .cloned();
    if configured.as_deref() != Some("50") {
        return Ok(table);
    }
    table
        .set_tbl_properties()
        .with_properties(HashMap::from([(
            KEY.to_string(),
            delta::CHECKPOINT_INTERVAL.to_string(),
        )]))
        .await
        .map_err(|e| Error::runtime(format!("{name}: setting {KEY}: {e}")))
}

/// Why `raw_events` must wait: rows landed in it after the version the last clean consumed (see
/// the module documentation). `None` when every file has been cleaned, or clean never ran (its
/// first run reads everything).
async fn not_yet_cleaned(lake: &Lake, raw: &DeltaTable) -> Result<Option<String>> {
    let Some(events) = lake.open_table("events").await? else {
        return Ok(None);
    };
    let Some(consumed) = delta::txn_version(&events, CONSUMED_APP_ID).await? else {
        return Ok(None);
    };
    let current = raw.version().map_or(-1, |v| v as i64);
    for v in (consumed + 1)..=current {
        let landed = match delta::commit_actions(raw, v).await? {
            Some(actions) => actions
                .iter()
                .any(|a| a.get("add").is_some() && delta::is_data_change(a)),
            None => true,
        };
        if landed {
            return Ok(Some(format!(
                "rows landed since the last clean (raw_events version {v}); compacted after the \
                 next clean"
            )));
        }
    }
    Ok(None)
}

/// One line for a run's summary: what was merged, or why nothing was.
pub fn summary_line(results: &[Compacted], min_files: u64) -> String {
    let done: Vec<&Compacted> = results.iter().filter(|r| r.files_removed > 0).collect();
    if done.is_empty() {
        let most = results.iter().map(|r| r.mergeable).max().unwrap_or(0);
        return format!("no table has {min_files} mergeable files (most: {most})");
    }
    let removed: u64 = done.iter().map(|r| r.files_removed).sum();
    let added: u64 = done.iter().map(|r| r.files_added).sum();
    format!(
        "{} table(s): {removed} small files → {added} ({})",
        done.len(),
        done.iter()
            .map(|r| r.table.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compacted(table: &str, mergeable: u64, removed: u64, added: u64) -> Compacted {
        Compacted {
            table: table.into(),
            files_removed: removed,
            files_added: added,
            partitions: 1,
            version: Some(3),
            mergeable,
            skipped: None,
        }
    }

    #[test]
    fn the_run_line_names_what_was_merged_or_how_far_from_merging() {
        let idle = [compacted("events", 7, 0, 0), compacted("_runs", 12, 0, 0)];
        assert_eq!(
            summary_line(&idle, 20),
            "no table has 20 mergeable files (most: 12)"
        );
        let merged = [
            compacted("events", 25, 30, 5),
            compacted("_runs", 3, 0, 0),
            compacted("raw_events", 21, 22, 1),
        ];
        assert_eq!(
            summary_line(&merged, 20),
            "2 table(s): 52 small files → 6 (events, raw_events)"
        );
    }
}
