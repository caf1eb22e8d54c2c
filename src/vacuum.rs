//! Vacuum: delete the data files no version within the retention period references, and files a
//! crashed run wrote but never committed. Time travel cannot reach further back than the
//! retention afterwards. `clicklake vacuum` runs it on demand; `clicklake run` once every `[run]
//! vacuum_every` (a day by default), as Delta Live Tables runs its maintenance: every compaction
//! leaves the files it replaced behind, and a lake nobody vacuums only grows.

use serde::Serialize;

use crate::catalog;
use crate::error::{Error, Result};
use crate::storage::Lake;

/// The retention `vacuum` defaults to, the shortest it allows without `--allow-short-retention`,
/// and the one `run` vacuums with: a running query or clean may still read younger files.
pub const RETENTION_DAYS: i64 = 7;

/// What vacuum did to one table.
#[derive(Debug, Serialize)]
pub struct Vacuumed {
    pub table: String,
    pub dry_run: bool,
    pub files_deleted: u64,
    /// Up to ten of them, for the record.
    pub examples: Vec<String>,
}

/// Vacuums the named tables (every existing one when `names` is empty). The caller holds the
/// lake's lease.
pub async fn vacuum(
    lake: &Lake,
    names: &[String],
    retention: chrono::Duration,
    dry_run: bool,
) -> Result<Vec<Vacuumed>> {
    let mut results = Vec::new();
    for (name, table) in catalog::open_existing(lake, names).await? {
        let (_, metrics) = table
            .vacuum()
            .with_retention_period(retention)
            // Full, not deltalake's default Lite (which deletes only files the log removed): a
            // crashed run's uncommitted files are in no log entry, and only a listing finds them.
            // They are deleted once older than the retention, like everything else.
            .with_mode(deltalake::operations::vacuum::VacuumMode::Full)
            .with_enforce_retention_duration(false)
            .with_dry_run(dry_run)
            .await
            .map_err(|e| Error::runtime(format!("vacuuming {name}: {e}")))?;
        results.push(Vacuumed {
            table: name,
            dry_run: metrics.dry_run,
            files_deleted: metrics.files_deleted.len() as u64,
            examples: metrics.files_deleted.into_iter().take(10).collect(),
        });
    }
    Ok(results)
}

/// When the last vacuum that deleted files (not a dry run) finished, from `_audit`.
pub async fn last_vacuum(lake: &Lake) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
    let Some(audit) = lake.open_table(catalog::AUDIT.name).await? else {
        return Ok(None);
    };
    let ctx = catalog::session(64 << 20)?;
    catalog::register(&ctx, catalog::AUDIT.name, &audit).await?;
    let at = catalog::query_i64(
        &ctx,
        "SELECT CAST(max(at) AS BIGINT) FROM _audit \
         WHERE command = 'vacuum' AND outcome = 'success'",
    )
    .await?;
    Ok(at.and_then(chrono::DateTime::from_timestamp_micros))
}
