//! What changed since a table was built: the keys of the `events` rows that clean commits
//! changed (recorded in `events_changes`), and those rows, read once for every incremental
//! model keyed by the same column.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;

use super::incremental::key_join;
use super::{incremental_key, CHANGES_PRUNED_APP_ID};
use crate::catalog;
use crate::delta;
use crate::error::Result;
use crate::models::{self, Model};
use crate::storage::Lake;

/// The changed values of each change key, and the keys some commit did not record (with that
/// commit's version).
#[derive(Default)]
pub(super) struct ChangeSet {
    pub(super) keys: HashMap<String, Vec<String>>,
    /// The keys of rows that changed in more than [`catalog::IDENTITY_COLUMNS`]: all a model
    /// needs that reads none of those columns.
    pub(super) beyond_identity: HashMap<String, Vec<String>>,
    pub(super) unrecorded: HashMap<String, i64>,
}

/// The change keys a clean commit recorded before it listed them (`change_keys` in its commit
/// info): a build by this version may need keys an earlier clean did not record.
pub(super) const CHANGE_KEYS_BEFORE_LISTED: &[&str] =
    &["session_key", "order_id", "product_id", "event_date"];

/// The keys of the events rows changed by commits `from+1..=to`, from the change records clean
/// leaves in `events_changes`; or why they cannot be known (a full clean, an unknown writer, a
/// commit no longer in the log), which calls for a full build.
pub(super) async fn changed_keys(
    lake: &Lake,
    events: &DeltaTable,
    from: i64,
    to: i64,
) -> Result<std::result::Result<ChangeSet, String>> {
    let mut change_ids: Vec<String> = Vec::new();
    let mut out = ChangeSet::default();
    for v in (from + 1)..=to {
        let Some(actions) = delta::commit_actions(events, v).await? else {
            return Ok(Err(format!("events commit {v} is no longer in the log")));
        };
        if !actions.iter().any(delta::is_data_change) {
            continue;
        }
        let info = actions.iter().find_map(|a| {
            a.get("commitInfo")
                .and_then(|ci| ci.get("clicklake"))
                .cloned()
        });
        let Some(info) = info else {
            return Ok(Err(format!("events commit {v} was not written by clean")));
        };
        match info["changes"].as_str() {
            Some(id) => {
                change_ids.push(id.to_string());
                let listed: Vec<&str> = match info["change_keys"].as_array() {
                    Some(keys) => keys.iter().filter_map(|k| k.as_str()).collect(),
                    None => CHANGE_KEYS_BEFORE_LISTED.to_vec(),
                };
                for key in catalog::CHANGE_KEYS {
                    if !listed.contains(key) {
                        out.unrecorded.entry(key.to_string()).or_insert(v);
                    }
                }
            }
            None => {
                return Ok(Err(format!(
                    "events commit {v} was a full clean ({})",
                    info["mode"].as_str().unwrap_or("?")
                )))
            }
        }
    }
    if change_ids.is_empty() {
        return Ok(Ok(out));
    }
    let Some(table) = lake.open_table(catalog::EVENTS_CHANGES.name).await? else {
        return Ok(Err("events_changes is missing".into()));
    };
    if let Some(pruned) = delta::txn_version(&table, CHANGES_PRUNED_APP_ID).await? {
        if from < pruned {
            return Ok(Err(format!(
                "the change records through events version {pruned} were removed after a \
                 build, and it reflects version {from}"
            )));
        }
    }
    let ctx = catalog::session(256 << 20)?;
    catalog::register(&ctx, "events_changes", &table).await?;
    let ids = MemTable::try_new(
        Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, true)])),
        vec![vec![RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, true)])),
            vec![Arc::new(arrow::array::StringArray::from(change_ids))],
        )?]],
    )?;
    ctx.register_table("ids", Arc::new(ids))?;
    let batches = ctx
        .sql(
            "SELECT DISTINCT c.change_id, c.key_column, c.key FROM ids i \
             JOIN events_changes c ON c.change_id = i.id",
        )
        .await?
        .collect()
        .await?;
    let mut listed: Vec<(String, String, String)> = Vec::new();
    for b in batches {
        let ids = catalog::strings(b.column(0))?;
        let cols = catalog::strings(b.column(1))?;
        let keys = catalog::strings(b.column(2))?;
        for ((id, c), k) in ids.into_iter().zip(cols).zip(keys) {
            if let (Some(id), Some(c), Some(k)) = (id, c, k) {
                listed.push((id, c, k));
            }
        }
    }
    // A key changed beyond the identity columns when some change lists it and does not list
    // it as identity-only (changes recorded before that list existed never do).
    let identity_only: HashSet<(&str, String, &str)> = catalog::CHANGE_KEYS
        .iter()
        .flat_map(|key| {
            let column = catalog::identity_only_key(key);
            listed
                .iter()
                .filter(move |(_, c, _)| *c == column)
                .map(move |(id, _, k)| (id.as_str(), key.to_string(), k.as_str()))
        })
        .collect();
    let mut keys: HashMap<String, HashSet<&str>> = HashMap::new();
    let mut beyond: HashMap<String, HashSet<&str>> = HashMap::new();
    for (id, c, k) in &listed {
        if !catalog::CHANGE_KEYS.contains(&c.as_str()) {
            continue;
        }
        keys.entry(c.clone()).or_default().insert(k);
        if !identity_only.contains(&(id.as_str(), c.clone(), k.as_str())) {
            beyond.entry(c.clone()).or_default().insert(k);
        }
    }
    let owned = |m: HashMap<String, HashSet<&str>>| -> HashMap<String, Vec<String>> {
        m.into_iter()
            .map(|(c, ks)| (c, ks.into_iter().map(str::to_string).collect()))
            .collect()
    };
    out.keys = owned(keys);
    out.beyond_identity = owned(beyond);
    Ok(Ok(out))
}

/// The events rows of a key column's changed keys, per (column, keys): incremental models keyed
/// by the same column (fact_sessions, fact_cart_lines and fact_checkout_funnel by session_key)
/// read them once, and only the columns those models read.
#[derive(Default)]
pub(super) struct SharedRows {
    /// The columns of `events` read by the incremental models keyed by each column.
    columns: HashMap<String, Vec<String>>,
    /// Per key column, the rows read so far for a set of keys. A column's lock is held while its
    /// rows are read, so a model keyed like one being read waits for them instead of reading
    /// them again; models keyed by other columns go on.
    rows: HashMap<String, tokio::sync::Mutex<RowsByKeys>>,
    /// See [`shared_bytes_max`].
    max_bytes: usize,
}

pub(super) type SharedProvider = Arc<dyn datafusion::catalog::TableProvider>;
/// The rows read for each set of keys of one key column.
pub(super) type RowsByKeys = Vec<(Vec<String>, SharedProvider)>;

impl SharedRows {
    pub(super) fn new(
        models: &[Model],
        events_columns: &HashMap<String, Vec<String>>,
        max_bytes: usize,
    ) -> Self {
        let mut columns: HashMap<String, Vec<String>> = HashMap::new();
        for m in models {
            if let Some(column) = incremental_key(m) {
                let set = columns.entry(column).or_default();
                for c in events_columns.get(&m.name).into_iter().flatten() {
                    if !set.contains(c) {
                        set.push(c.clone());
                    }
                }
            }
        }
        let rows = columns
            .keys()
            .map(|c| (c.clone(), tokio::sync::Mutex::new(Vec::new())))
            .collect();
        SharedRows {
            columns,
            rows,
            max_bytes,
        }
    }

    /// The events rows whose `column` is one of `keys`, read once per run. `most_keys` (a tick
    /// that changed most of the table's keys, as the products a 1 % top-up touches) skips the
    /// attempt to hold them in memory: they are most of `events`.
    pub(super) async fn get(
        &self,
        ctx: &SessionContext,
        column: &str,
        keys: &[String],
        most_keys: bool,
    ) -> Result<SharedProvider> {
        let columns = self.columns.get(column).cloned().unwrap_or_default();
        let hold_up_to = (!most_keys).then_some(self.max_bytes);
        let Some(slot) = self.rows.get(column) else {
            return changed_rows(ctx, column, &columns, hold_up_to).await;
        };
        let mut read = slot.lock().await;
        if let Some((_, rows)) = read.iter().find(|(k, _)| k == keys) {
            return Ok(rows.clone());
        }
        let rows = changed_rows(ctx, column, &columns, hold_up_to).await?;
        read.push((keys.to_vec(), rows.clone()));
        Ok(rows)
    }
}

/// The memory the changed rows shared by a key column's models may take: an eighth of the memory
/// limit, at most 256 MiB. More (a large backfill) are read by each model as it runs, and the
/// rows read until a limit was passed are read again, so the limits are sized to hold a cron
/// tick's: at 10M events a 1 % top-up touches 13,815 customers, whose 564K events rows a
/// 200,000-row cap read twice, on the build's critical path (`agg_user_interest` 2.7 → 1.9 s).
pub(super) fn shared_bytes_max(memory_limit: u64) -> usize {
    (memory_limit / 8).min(256 << 20) as usize
}

/// And at most this many rows. A tick's days hold most of the lake's rows: they pass the cap
/// and are scanned where they are, after up to this many were read in vain (0.27 s for
/// `agg_product_daily` at 10M). Keys that are most of a table's (the products a tick touches,
/// 4,951 of 5,000) are not collected at all (see [`SharedRows::get`]).
pub(super) const SHARED_ROWS_MAX: usize = 1_000_000;

/// The events rows whose `column` is one of `changed_keys`, with the `columns` its models read:
/// in memory when they fit in `hold_up_to` bytes (a cron tick's; each model then scans them
/// several times at no cost), else (or with `None`) a view each model scans.
pub(super) async fn changed_rows(
    ctx: &SessionContext,
    column: &str,
    columns: &[String],
    hold_up_to: Option<usize>,
) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
    let select = match columns {
        // Read nothing (a model that only counts): still one column to carry the rows.
        [] => "e.event_id".to_string(),
        _ => columns
            .iter()
            .map(|c| format!("e.\"{c}\""))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let from = match catalog::is_events_column(column) {
        true => format!(
            "changed_keys k JOIN events_all e ON {}",
            key_join("e", column)
        ),
        // Customers by their identity columns: no hash computed per events row.
        false => format!(
            "changed_customers k JOIN events_all e ON {}",
            catalog::customer_join("k", "e")
        ),
    };
    let view = ctx.sql(&format!("SELECT {select} FROM {from}")).await?;
    let Some(max_bytes) = hold_up_to else {
        tracing::debug!("build: changed rows by {column}: most of the keys, scanned in place");
        return Ok(view.into_view());
    };
    Ok(
        match models::memory_table(view.clone(), SHARED_ROWS_MAX, max_bytes).await? {
            Some(rows) => {
                tracing::debug!("build: changed rows by {column}: held in memory");
                Arc::new(rows)
            }
            None => {
                tracing::debug!(
                    "build: changed rows by {column}: past the limits, scanned in place"
                );
                view.into_view()
            }
        },
    )
}
