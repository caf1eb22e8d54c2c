//! Clean: build `events` from `raw_events` with the SQL models of `sql/clean/`, incrementally and
//! in one atomic commit per run.
//!
//! ```text
//!  raw_events v0 ──(consumed, recorded as txn "clicklake/clean/raw_events" on events)
//!  raw_events v1 ──▶ new files = adds of commits v0+1..=v1
//!
//!  normalized   = model 1 over the new raw rows, less the resends that lose to a current row
//!  found        = one scan of events: rows sharing an event_id or a visitor with the new rows
//!  touched      = the new rows' visitors ∪ visitors of the current copies of their event ids
//!  carried      = every current row of a touched visitor (from `found`, plus one more scan for
//!                 visitors only a superseded copy names)
//!  recomputed   = models 2.. over normalized ∪ carried (dedup, sessions, stitching)
//!  compared     = recomputed ⟗ carried by event_id: only new or changed rows are written
//!  files        = rows whose identity or session columns alone changed are patched into their
//!                 files; other files holding a superseded row are rewritten without it
//!  commit       = removes + adds + txn markers = v1   (one commit; the change keys first)
//! ```
//!
//! A full refresh runs the models over every raw row and replaces every file.
//!
//! Dedup, sessions and identity stitching are all functions of one visitor's history (plus the
//! current winner of each event_id), so recomputing every touched visitor from their full history
//! gives exactly the rows a full refresh would. A crash before the commit leaves unreferenced
//! files only; the next run starts again from the recorded version.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, BooleanArray, Int64Array, RecordBatch};
use datafusion::catalog::TableProvider;
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use deltalake::kernel::{Action, Transaction};
use deltalake::protocol::SaveMode;
use deltalake::DeltaTable;
use futures::StreamExt;
use serde::Serialize;

use crate::catalog::{self, EVENTS, FILE_COLUMN, RAW_EVENTS};
use crate::config::Config;
use crate::delta;
use crate::error::{Error, Result};
use crate::fault;
use crate::models::{self, Model};
use crate::printer::Printer;
use crate::storage::Lake;

mod patch;

/// The Delta application id under which `events` records the raw_events version it reflects.
pub const CONSUMED_APP_ID: &str = "clicklake/clean/raw_events";
/// The application id of the fingerprint of the clean logic `events` was computed with (the
/// models' text and the session gap).
pub const LOGIC_APP_ID: &str = "clicklake/clean/logic";
/// An incremental run reads its new rows into memory once when it consumes at most this many
/// raw rows; a larger backlog is streamed from its files by each query that needs it.
const IN_MEMORY_NEW_ROWS: u64 = 200_000;
/// At most this many changed rows are held in memory to patch their files; further ones (a large
/// backfill) have their files rewritten.
const PATCH_ROWS_MAX: usize = 200_000;

#[derive(Debug, Clone, Copy, Default)]
pub struct CleanRequest {
    pub full_refresh: bool,
}

#[derive(Debug, Serialize, Default)]
pub struct CleanSummary {
    /// `full`, `incremental` or `up_to_date`.
    pub mode: &'static str,
    /// Why a full refresh ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_refresh_reason: Option<String>,
    pub raw_version_from: Option<i64>,
    pub raw_version_to: Option<i64>,
    pub raw_rows_consumed: u64,
    pub visitors_touched: u64,
    /// Rows the models produced: every event of a touched visitor.
    pub events_recomputed: u64,
    /// Recomputed rows that are new or differ from their current version (all on a full refresh).
    pub events_changed: u64,
    /// Unchanged rows copied because they shared a file with a superseded row.
    pub events_copied: u64,
    /// Changed rows written by patching their file's identity and session columns in place
    /// (part of `events_changed`).
    pub events_patched: u64,
    /// Files rewritten that way: those columns re-encoded, every other column copied as it was.
    pub files_patched: u64,
    /// changed + copied.
    pub events_written: u64,
    pub events_total: Option<u64>,
    pub exact_duplicates: u64,
    pub conflicting_duplicates: u64,
    pub sessions_touched: u64,
    pub partitions_rewritten: u64,
    pub files_removed: u64,
    pub files_added: u64,
    pub bytes_written: u64,
    pub events_version: Option<i64>,
    /// Where the keys of the changed rows are recorded in `events_changes` (incremental runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_id: Option<String>,
    pub seconds: f64,
    pub rows_per_sec: f64,
}

enum Plan {
    Full(String),
    /// The raw_events data files added since the consumed version.
    Incremental(Vec<String>),
}

pub async fn run(
    lake: &Lake,
    cfg: &Config,
    req: CleanRequest,
    printer: &Printer,
) -> Result<CleanSummary> {
    let laps = Laps(Instant::now());
    let models = models::load("clean", cfg.clean.sql_dir.as_deref())?;
    if models.len() < 3 {
        return Err(Error::config(
            "the clean layer needs at least three models: normalized, candidates, and the final one",
        ));
    }
    check_chain(&models, cfg).await?;
    let mut summary = CleanSummary {
        mode: "up_to_date",
        ..Default::default()
    };
    let Some(raw) = lake.open_table(RAW_EVENTS.name).await? else {
        summary.seconds = laps.seconds();
        return Ok(summary);
    };
    let raw_version = raw.version().unwrap_or(0) as i64;
    summary.raw_version_to = Some(raw_version);
    let mut events = catalog::ensure_table(lake, &EVENTS).await?;
    let consumed = delta::txn_version(&events, CONSUMED_APP_ID).await?;
    summary.raw_version_from = consumed;
    // Rows an incremental run keeps were computed with the logic recorded here; under other
    // logic only a full refresh gives what a full refresh gives. (Lakes cleaned before the
    // marker existed have none: their logic is taken as unchanged.)
    let logic = logic_fingerprint(&models, cfg);
    let logic_changed = matches!(
        delta::txn_version(&events, LOGIC_APP_ID).await?,
        Some(recorded) if recorded != logic
    );
    if !req.full_refresh && consumed == Some(raw_version) && !logic_changed {
        summary.events_version = events.version().map(|v| v as i64);
        summary.seconds = laps.seconds();
        return Ok(summary);
    }
    let plan = choose_plan(&raw, req, consumed, raw_version, logic_changed).await?;
    laps.lap("tables opened, plan made");

    let progress = printer.spinner("clean");
    let ctx = model_context(cfg, &raw, &events)?;
    let params = chain_params(cfg);
    let markers = || {
        vec![
            Transaction::new(CONSUMED_APP_ID, raw_version),
            Transaction::new(LOGIC_APP_ID, logic),
        ]
    };
    let mut removes: Vec<Action> = Vec::new();
    // An incremental run compares what it recomputed with the current rows and writes only
    // the differences; a full refresh replaces every file.
    let compare = match &plan {
        Plan::Full(reason) => {
            summary.mode = "full";
            summary.full_refresh_reason = Some(reason.clone());
            ctx.register_table("raw_input", raw.table_provider().await?)?;
            summary.raw_rows_consumed = raw_input_rows(&ctx).await?;
            register_first(&ctx, &models[0], &params).await?;
            ctx.register_table("events_carried", empty_events()?)?;
            removes.extend(
                events
                    .snapshot()?
                    .log_data()
                    .iter()
                    .map(|f| Action::Remove(f.remove_action(true))),
            );
            false
        }
        Plan::Incremental(paths) if paths.is_empty() => {
            // No new rows: commits of markers only (files whose every line was quarantined) or
            // of compactions. Nothing to clean; the version is recorded.
            summary.mode = "up_to_date";
            let version = delta::commit(
                &mut events,
                Vec::new(),
                markers(),
                commit_info(&summary),
                SaveMode::Append,
            )
            .await?;
            summary.events_version = Some(version);
            summary.seconds = laps.seconds();
            return Ok(summary);
        }
        Plan::Incremental(paths) => {
            summary.mode = "incremental";
            let first = (&models[0], &params);
            register_incremental_inputs(&ctx, &raw, &events, paths, first, &mut summary, &laps)
                .await?;
            // Compared with the current rows even when there are none (only new visitors), so
            // the keys of every row written are recorded for an incremental build.
            true
        }
    };

    let mut output = models::plan_chain(&ctx, &models[1..], &params).await?;
    if compare {
        output = compared_with_current(&ctx, output).await?;
    }
    let props = delta::writer_properties(cfg.ingest.zstd_level, cfg.ingest.row_group_rows)?;
    let flush_at = (cfg.memory_limit / 6).max(8 << 20) as usize;
    let mut write = delta::TableSink::new(
        &events,
        props.clone(),
        cfg.ingest.target_file_size,
        flush_at,
        "the final clean model",
    )?;
    let routed = write_output(&ctx, output, &mut write, &mut summary, &progress).await?;
    laps.lap("models run, changed rows written");
    log_repartition_peak(&ctx);
    let Routed {
        to_patch,
        superseded,
        mut changed_ids,
        changes,
        sessions,
        ..
    } = routed;

    // Rows to patch into a file that is rewritten anyway go with the rewrite.
    let patches = patch::plan(to_patch, &superseded, &mut changed_ids, &mut write).await?;
    // Every row of the superseded files but the superseded versions is copied.
    let rewrite: Vec<String> = superseded.into_iter().collect();
    let changed: HashSet<String> = changed_ids.into_iter().collect();
    let target = crate::patch::Target {
        table: EVENTS.name,
        key: "event_id",
    };
    let done = crate::patch::replace(
        &ctx,
        &events,
        target,
        crate::patch::Replacement {
            patches,
            rewrite: &rewrite,
            drop: &changed,
        },
        &mut write,
        (&props, cfg.memory_limit),
    )
    .await?;
    summary.events_patched = done.rows_patched;
    summary.files_patched = done.files_patched;
    summary.events_copied += done.rows_copied;
    removes.extend(done.removes);
    let patched_adds = done.adds;
    let mut adds = write.finish().await?;
    adds.extend(patched_adds);
    laps.lap("superseded files rewritten");
    fault("clean-after-data-files");
    crate::pause("clean-after-data-files").await;

    summary.files_removed = removes.len() as u64;
    summary.events_written = summary.events_changed + summary.events_copied;
    summary.sessions_touched = sessions.len() as u64;
    summary.files_added = adds.len() as u64;
    summary.bytes_written = adds.iter().map(|a| a.size as u64).sum();
    summary.partitions_rewritten = partitions_written(&adds, &removes);
    if compare {
        // The changed keys are committed before the rows they describe: a build never sees an
        // events version whose changes it cannot find (a crash in between leaves a superset).
        summary.change_id = Some(changes.commit(lake, cfg).await?);
        laps.lap("changes recorded");
    }
    let mut actions = removes;
    actions.extend(adds.into_iter().map(Action::Add));
    let version = delta::commit(
        &mut events,
        actions,
        markers(),
        commit_info(&summary),
        SaveMode::Overwrite,
    )
    .await?;
    laps.lap("committed");
    if let Some((hits, sent)) = lake.read_cache_stats() {
        tracing::debug!(
            hits,
            sent,
            "clean: reads of data and commit files answered from memory, sent to the store"
        );
    }
    fault("clean-after-commit");
    summary.events_version = Some(version);
    summary.events_total = Some(delta::table_rows(&events)?);
    progress.finish_and_clear();
    summary.seconds = laps.seconds();
    summary.rows_per_sec = summary.raw_rows_consumed as f64 / summary.seconds.max(1e-9);
    Ok(summary)
}

/// Where a run's time goes, with `-vv` (or RUST_LOG=clicklake=debug).
struct Laps(Instant);

impl Laps {
    fn lap(&self, what: &str) {
        tracing::debug!(ms = self.0.elapsed().as_millis() as u64, "clean: {what}");
    }

    fn seconds(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

/// A full refresh (and why) or the raw_events files added since the consumed version.
async fn choose_plan(
    raw: &DeltaTable,
    req: CleanRequest,
    consumed: Option<i64>,
    raw_version: i64,
    logic_changed: bool,
) -> Result<Plan> {
    Ok(match (req.full_refresh, consumed) {
        (true, _) => Plan::Full("--full-refresh".into()),
        (false, None) => Plan::Full("first clean of this lake".into()),
        (false, Some(_)) if logic_changed => {
            Plan::Full("the clean models or the session gap changed since the last clean".into())
        }
        (false, Some(v)) if v > raw_version => Plan::Full(format!(
            "events reflects raw_events version {v}, newer than its current version {raw_version}"
        )),
        (false, Some(v)) => match added_files(raw, v, raw_version).await? {
            Ok(paths) => {
                // A compaction since may have folded new files into others.
                let live: HashSet<String> = raw
                    .snapshot()?
                    .log_data()
                    .iter()
                    .map(|f| f.path().to_string())
                    .collect();
                if paths.iter().all(|p| live.contains(p)) {
                    Plan::Incremental(paths)
                } else {
                    Plan::Full("raw_events was compacted since the last clean".into())
                }
            }
            Err(reason) => Plan::Full(reason),
        },
    })
}

/// The session the models run in, with both tables' stores registered.
fn model_context(cfg: &Config, raw: &DeltaTable, events: &DeltaTable) -> Result<SessionContext> {
    let ctx = catalog::model_session(cfg.memory_limit)?;
    // Joins build on their (small) left side and every partition probes it: a partitioned join
    // would hash-repartition the wide event stream, and those buffers grow without bound while
    // the single writer is the slower end (apache/datafusion#22090).
    ctx.state_ref()
        .write()
        .config_mut()
        .options_mut()
        .optimizer
        .repartition_joins = false;
    raw.update_datafusion_session(&ctx.state())?;
    events.update_datafusion_session(&ctx.state())?;
    Ok(ctx)
}

/// Registers what an incremental run's models read: `raw_input` (the new raw files),
/// `normalized` (the first model over them, less the resends that lose to a current row) and
/// `current_touched` / `events_carried` (every current row of the visitors to recompute).
async fn register_incremental_inputs(
    ctx: &SessionContext,
    raw: &DeltaTable,
    events: &DeltaTable,
    paths: &[String],
    (first, params): (&Model, &datafusion::common::ParamValues),
    summary: &mut CleanSummary,
    laps: &Laps,
) -> Result<()> {
    ctx.register_table(
        "raw_input",
        raw.table_provider().with_file_paths(paths.to_vec()).await?,
    )?;
    summary.raw_rows_consumed = raw_input_rows(ctx).await?;
    register_first(ctx, first, params).await?;
    if summary.raw_rows_consumed <= IN_MEMORY_NEW_ROWS {
        // A cron tick's few rows: read and decoded once here, not by every query and
        // model that reads them (each read is a round of requests on an object store).
        let rows = models::memory_table(ctx.table("normalized").await?, usize::MAX, usize::MAX)
            .await?
            .expect("no row limit");
        ctx.deregister_table("normalized")?;
        ctx.register_table("normalized", Arc::new(rows))?;
    }
    laps.lap("new raw rows registered");
    let current = catalog::provider_with_file_column(events).await?;
    // One scan of events finds the current copies of the new event ids (to settle
    // resends) and every current row of the new rows' visitors.
    let new_ids = collect_strings(
        ctx,
        "SELECT DISTINCT event_id FROM normalized WHERE event_id IS NOT NULL",
    )
    .await?;
    let new_visitors: HashSet<String> = collect_strings(
        ctx,
        "SELECT DISTINCT anonymous_id FROM normalized WHERE anonymous_id IS NOT NULL",
    )
    .await?
    .into_iter()
    .collect();
    let (schema, found) = rows_matching_any(
        ctx,
        current.clone(),
        vec![
            ("event_id", new_ids.into_iter().collect()),
            ("anonymous_id", new_visitors.clone()),
        ],
    )
    .await?;
    // The batches are shared, not copied, by the tables registered over them.
    ctx.register_table(
        "current_found",
        Arc::new(MemTable::try_new(schema.clone(), vec![found.clone()])?),
    )?;
    let copies = ctx
        .sql(
            "SELECT * FROM current_found \
             WHERE event_id IN (SELECT event_id FROM normalized)",
        )
        .await?;
    let copies = models::memory_table(copies, usize::MAX, usize::MAX)
        .await?
        .expect("no row limit");
    ctx.register_table("current_copies", Arc::new(copies))?;
    ctx.deregister_table("current_found")?;
    laps.lap("current copies of the new event ids and rows of their visitors read");
    let (exact, conflicting) = settle_losing_resends(ctx).await?;
    laps.lap("losing resends settled");
    summary.exact_duplicates += exact;
    summary.conflicting_duplicates += conflicting;
    // The visitors of the new rows that are not losing resends, and of the current
    // copies of their event ids: a copy may belong to another visitor (a resend under a
    // new anonymous id), whose rows one more scan reads.
    let touched = collect_strings(
        ctx,
        "SELECT DISTINCT anonymous_id FROM normalized \
         UNION SELECT c.anonymous_id \
         FROM current_copies c JOIN (SELECT DISTINCT event_id FROM normalized) n \
         ON c.event_id = n.event_id",
    )
    .await?;
    summary.visitors_touched = touched.len() as u64;
    let (read, others): (HashSet<String>, HashSet<String>) =
        touched.into_iter().partition(|v| new_visitors.contains(v));
    // Rows of visitors whose only new rows lost to their current copies are let go.
    let mut rows = rows_with_value_in(found, "anonymous_id", &read)?;
    if !others.is_empty() {
        let (_, theirs) = rows_matching_any(ctx, current, vec![("anonymous_id", others)]).await?;
        rows.extend(theirs);
    }
    let n: usize = rows.iter().map(|b| b.num_rows()).sum();
    ctx.register_table(
        "current_touched",
        Arc::new(MemTable::try_new(schema, vec![rows])?),
    )?;
    laps.lap("their current rows read");
    if n > 0 {
        let carried = ctx
            .sql(&format!(
                "SELECT * EXCEPT ({FILE_COLUMN}) FROM current_touched"
            ))
            .await?;
        ctx.register_table("events_carried", carried.into_view())?;
    } else {
        ctx.register_table("events_carried", empty_events()?)?;
    }
    Ok(())
}

/// The recomputed rows next to their current versions (`current_touched`), each flagged: new or
/// different (`__changed`), different only in columns a patch can rewrite (`__patchable`, with a
/// `__differs_<column>` per such column), the file holding the current version, and the change
/// keys of both versions. Only rows that are new or differ from their current version are
/// written; the files holding a superseded version are rewritten without it.
async fn compared_with_current(
    ctx: &SessionContext,
    recomputed: datafusion::dataframe::DataFrame,
) -> Result<datafusion::dataframe::DataFrame> {
    ctx.register_table("recomputed", recomputed.into_view())?;
    let same: Vec<String> = (EVENTS.schema)()
        .fields()
        .iter()
        .map(|f| format!("(r.{0} IS NOT DISTINCT FROM c.{0})", f.name()))
        .collect();
    // A changed row that keeps its partition and every value but its identity and session
    // columns can be patched into its file instead of rewriting the file.
    let same_but_patchable: Vec<String> = (EVENTS.schema)()
        .fields()
        .iter()
        .filter(|f| !patch::PATCHABLE.contains(&f.name().as_str()))
        .map(|f| format!("(r.{0} IS NOT DISTINCT FROM c.{0})", f.name()))
        .collect();
    let differs = patch::PATCHABLE
        .iter()
        .map(|c| format!("(r.{c} IS DISTINCT FROM c.{c}) AS __differs_{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    // The old keys of every row, and the new ones of keys computed from a row.
    let keys = catalog::CHANGE_KEYS
        .iter()
        .map(|k| {
            format!(
                "CAST({} AS VARCHAR) AS __old_{k}",
                catalog::change_key_sql("c", k)
            )
        })
        .chain(
            catalog::CHANGE_KEYS
                .iter()
                .filter(|k| !catalog::is_events_column(k))
                .map(|k| format!("{} AS {k}", catalog::change_key_sql("r", k))),
        )
        .collect::<Vec<_>>()
        .join(", ");
    Ok(ctx
        .sql(&format!(
            "SELECT r.*, c.{FILE_COLUMN} AS {FILE_COLUMN}, {keys}, \
             (c.event_id IS NULL OR r.event_id IS NULL OR NOT ({same})) AS __changed, \
             (c.event_id IS NOT NULL AND r.event_id IS NOT NULL AND {patchable}) \
             AS __patchable, {differs} \
             FROM recomputed r FULL OUTER JOIN current_touched c ON r.event_id = c.event_id",
            same = same.join(" AND "),
            patchable = same_but_patchable.join(" AND "),
        ))
        .await?)
}

/// Runs the models and writes their output: every row on a full refresh; on an incremental
/// run, the changed rows, except those kept aside to patch into their files. Counts what it
/// saw in `summary`.
async fn write_output(
    ctx: &SessionContext,
    output: datafusion::dataframe::DataFrame,
    write: &mut delta::TableSink,
    summary: &mut CleanSummary,
    progress: &indicatif::ProgressBar,
) -> Result<Routed> {
    let mut routed = Routed::default();
    let plan = output.create_physical_plan().await?;
    tracing::debug!(
        "clean plan:\n{}",
        datafusion::physical_plan::displayable(plan.as_ref()).indent(true)
    );
    let mut stream = datafusion::physical_plan::execute_stream(plan.clone(), ctx.task_ctx())?;
    let mut spread = delta::SpreadSink::new(write)?;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        summary.exact_duplicates += sum_column(&batch, "_exact_resends")?;
        summary.conflicting_duplicates += sum_column(&batch, "_conflicting_resends")?;
        let ids = batch.column_by_name("event_id").expect("event_id");
        summary.events_recomputed += (ids.len() - ids.null_count()) as u64;
        routed.count_sessions(&batch)?;
        let batch = if batch.column_by_name("__changed").is_some() {
            let (to_write, patched) = routed.split(&batch)?;
            summary.events_changed += patched;
            to_write
        } else {
            batch
        };
        summary.events_changed += batch.num_rows() as u64;
        spread.write(&batch).await?;
        progress.set_message(format!("{} events recomputed", summary.events_recomputed));
    }
    spread.finish().await?;
    tracing::trace!(
        "clean plan ran:\n{}",
        datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(plan.as_ref())
            .indent(true)
    );
    Ok(routed)
}

/// What `write_output` learned about the rows it wrote or kept aside.
#[derive(Default)]
struct Routed {
    /// Changed rows to patch into their current files (see `patch`).
    to_patch: Vec<RecordBatch>,
    to_patch_rows: usize,
    /// Files holding a superseded row that is not patched: rewritten without it.
    superseded: HashSet<String>,
    /// The event ids of those superseded rows.
    changed_ids: Vec<String>,
    changes: ChangeKeys,
    /// Sessions touched, counted by a 64-bit hash of their key (computed a batch at a time).
    sessions: HashSet<u64, std::hash::BuildHasherDefault<crate::fingerprint::Prehashed>>,
    session_hashes: Vec<u64>,
}

impl Routed {
    fn count_sessions(&mut self, batch: &RecordBatch) -> Result<()> {
        let Some(keys) = batch.column_by_name("session_key") else {
            return Ok(());
        };
        self.session_hashes.clear();
        self.session_hashes.resize(keys.len(), 0);
        datafusion::common::hash_utils::create_hashes(
            [keys],
            &datafusion::common::hash_utils::HLL_RANDOM_STATE,
            &mut self.session_hashes,
        )?;
        let hashes = &self.session_hashes;
        let valid = (0..keys.len()).filter(|&i| keys.is_valid(i));
        self.sessions.extend(valid.map(|i| hashes[i]));
        Ok(())
    }

    /// Splits a compared batch (see `compared_with_current`): returns its changed rows to
    /// write, and how many it kept aside to patch; records the change keys and the files whose
    /// rows it supersedes.
    fn split(&mut self, batch: &RecordBatch) -> Result<(RecordBatch, u64)> {
        let flag = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
                .unwrap_or_else(|| panic!("{name} is boolean"))
                .clone()
        };
        let changed = flag("__changed");
        let patchable = flag("__patchable");
        let ids = catalog::utf8(batch.column_by_name("event_id").expect("event_id"))?;
        let old_files = catalog::utf8(batch.column_by_name(FILE_COLUMN).expect("file column"))?;
        self.changes.record(batch, &changed, &patchable)?;
        let mut write_mask = Vec::with_capacity(batch.num_rows());
        let mut patch_mask = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let is_changed = changed.is_valid(i) && changed.value(i);
            let patch = is_changed
                && old_files.is_valid(i)
                && patchable.is_valid(i)
                && patchable.value(i)
                && self.to_patch_rows < PATCH_ROWS_MAX;
            if patch {
                self.to_patch_rows += 1;
            } else if is_changed && old_files.is_valid(i) {
                if !self.superseded.contains(old_files.value(i)) {
                    self.superseded.insert(old_files.value(i).to_string());
                }
                if ids.is_valid(i) {
                    self.changed_ids.push(ids.value(i).to_string());
                }
            }
            patch_mask.push(patch);
            write_mask.push(is_changed && ids.is_valid(i) && !patch);
        }
        let patch_mask = BooleanArray::from(patch_mask);
        let patched = patch_mask.true_count() as u64;
        if patched > 0 {
            self.to_patch
                .push(arrow::compute::filter_record_batch(batch, &patch_mask)?);
        }
        let to_write = arrow::compute::filter_record_batch(batch, &BooleanArray::from(write_mask))?;
        Ok((to_write, patched))
    }
}

/// With `-vv`: the peak of the repartition buffers, which the memory limit does not cover.
fn log_repartition_peak(ctx: &SessionContext) {
    if let Some(pool) = ctx
        .runtime_env()
        .memory_pool
        .as_ref()
        .downcast_ref::<crate::memory::RunPool>()
    {
        tracing::debug!(
            "clean: repartition buffers peaked at {} MB (outside the memory limit), pool holds {} MB",
            pool.repartition_peak() >> 20,
            datafusion::execution::memory_pool::MemoryPool::reserved(pool) >> 20
        );
    }
}

/// The partitions a commit adds files to or removes files from.
fn partitions_written(adds: &[deltalake::kernel::Add], removes: &[Action]) -> u64 {
    let mut partitions: BTreeSet<Vec<(String, Option<String>)>> = BTreeSet::new();
    for a in adds {
        partitions.insert(sorted_partition(&a.partition_values));
    }
    for r in removes {
        if let Action::Remove(r) = r {
            if let Some(pv) = &r.partition_values {
                partitions.insert(sorted_partition(pv));
            }
        }
    }
    partitions.len() as u64
}

/// The fingerprint of the clean logic: every model's name and text, and the
/// session gap.
fn logic_fingerprint(models: &[Model], cfg: &Config) -> i64 {
    let mut h = crate::fingerprint::Fingerprint::new();
    for m in models {
        h.feed(m.name.as_bytes());
        h.feed(m.sql.as_bytes());
    }
    h.feed(&(cfg.clean.session_gap.as_micros() as i64).to_le_bytes());
    h.finish()
}

/// The data files added to raw_events by commits `from+1..=to`, or why they cannot be known
/// (a commit file was cleaned up, or rows were removed), which calls for a full refresh.
async fn added_files(
    raw: &DeltaTable,
    from: i64,
    to: i64,
) -> Result<std::result::Result<Vec<String>, String>> {
    let mut paths = Vec::new();
    for v in (from + 1)..=to {
        let Some(actions) = delta::commit_actions(raw, v).await? else {
            return Ok(Err(format!(
                "raw_events commit {v} is no longer in the log (log retention)"
            )));
        };
        for action in actions.iter().filter(|a| delta::is_data_change(a)) {
            if let Some(add) = action.get("add") {
                paths.push(add["path"].as_str().unwrap_or_default().to_string());
            } else {
                return Ok(Err(format!(
                    "raw_events commit {v} removed rows (erasure or a rewrite)"
                )));
            }
        }
    }
    Ok(Ok(paths))
}

/// Event fields that make up an event's payload (every canonical field but event_id,
/// received_at and lineage, plus `properties`): two copies with equal payloads are an exact
/// resend, otherwise a conflicting one.
fn payload_columns() -> impl Iterator<Item = &'static str> {
    crate::ingest::parse::FIELDS
        .iter()
        .copied()
        .filter(|f| *f != "event_id" && *f != "received_at")
        .chain(["properties"])
}

/// Most new rows of a cron tick that repeat a known event_id are resends that lose to the row
/// already in `events` (`current_copies`: it arrived earlier). They change nothing but the duplicate counts, so
/// they are counted here (exact or conflicting, against that row) and removed from `normalized`,
/// and their visitors are not recomputed. An event_id is settled only when every new copy loses.
async fn settle_losing_resends(ctx: &SessionContext) -> Result<(u64, u64)> {
    let earlier = "(c.received_at < n.received_at OR (c.received_at = n.received_at AND \
        (c.source_file < n.source_file OR (c.source_file = n.source_file AND \
        (c.line_number < n.line_number OR (c.line_number = n.line_number AND \
        c.batch_id < n.batch_id))))))";
    let same: Vec<String> = payload_columns()
        .map(|c| format!("(n.{c} IS NOT DISTINCT FROM c.{c})"))
        .collect();
    let sql = format!(
        "WITH judged AS ( \
             SELECT n.event_id, {earlier} AS loses, {same} AS exact \
             FROM current_copies c JOIN normalized n ON n.event_id = c.event_id), \
         settled AS (SELECT event_id FROM judged GROUP BY event_id HAVING bool_and(loses)) \
         SELECT j.event_id, j.exact FROM settled s JOIN judged j ON j.event_id = s.event_id",
        same = same.join(" AND ")
    );
    let batches = ctx.sql(&sql).await?.collect().await?;
    let (mut exact, mut conflicting) = (0u64, 0u64);
    let mut ids: HashSet<String> = HashSet::new();
    for b in &batches {
        let flags = b
            .column(1)
            .as_any()
            .downcast_ref::<BooleanArray>()
            .expect("boolean")
            .clone();
        for (i, id) in catalog::strings(b.column(0))?.into_iter().enumerate() {
            if flags.is_valid(i) && flags.value(i) {
                exact += 1;
            } else {
                conflicting += 1;
            }
            ids.extend(id);
        }
    }
    if !ids.is_empty() {
        ctx.register_table(
            "settled_events",
            Arc::new(string_table("event_id", ids.into_iter().collect())?),
        )?;
        let rest = ctx
            .sql("SELECT * FROM normalized WHERE event_id NOT IN (SELECT event_id FROM settled_events)")
            .await?;
        ctx.deregister_table("normalized")?;
        ctx.register_table("normalized", rest.into_view())?;
    }
    Ok((exact, conflicting))
}

/// The rows of `table` (every column) whose value in any of `keys`' columns is one of that
/// column's values, collected in memory. The filter reaches the Parquet reader, which evaluates
/// it on the key columns first, so only matching rows leave the scan. One scan answers every key
/// column: with matches spread over every page, as event ids and visitors are, every page is
/// decoded, so a second scan would cost as much as the first. (A few values of one column are
/// looked up in the row groups' bloom filters first: see `sqlfn::in_key_sets`.)
async fn rows_matching_any(
    ctx: &SessionContext,
    table: Arc<dyn TableProvider>,
    keys: Vec<(&str, HashSet<String>)>,
) -> Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>)> {
    let df = ctx
        .read_table(table)?
        .filter(crate::sqlfn::in_key_sets(keys))?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let plan = df.create_physical_plan().await?;
    let stream = datafusion::physical_plan::execute_stream(plan.clone(), ctx.task_ctx())?;
    let collected = models::collect_compact(schema, stream).await?;
    tracing::debug!(
        "rows_matching_any plan:\n{}",
        datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(plan.as_ref())
            .indent(true)
    );
    Ok(collected)
}

/// The rows of `batches` whose `column` holds one of `values` (a NULL matches nothing). A batch
/// whose every row matches is kept as it is; the others are filtered (one copy of their rows).
fn rows_with_value_in(
    batches: Vec<RecordBatch>,
    column: &str,
    values: &HashSet<String>,
) -> Result<Vec<RecordBatch>> {
    let mut kept = Vec::with_capacity(batches.len());
    for batch in batches {
        let keys = catalog::utf8(batch.column_by_name(column).expect("key column"))?;
        let mask: BooleanArray = keys
            .iter()
            .map(|v| Some(v.is_some_and(|v| values.contains(v))))
            .collect();
        match mask.true_count() {
            0 => {}
            n if n == batch.num_rows() => kept.push(batch),
            _ => kept.push(arrow::compute::filter_record_batch(&batch, &mask)?),
        }
    }
    Ok(kept)
}

/// The rows of `raw_input` (answered from file statistics).
async fn raw_input_rows(ctx: &SessionContext) -> Result<u64> {
    Ok(catalog::query_i64(ctx, "SELECT count(*) FROM raw_input")
        .await?
        .unwrap_or(0) as u64)
}

/// Plans and registers the first model (normalisation of `raw_input`).
async fn register_first(
    ctx: &SessionContext,
    model: &Model,
    params: &datafusion::common::ParamValues,
) -> Result<()> {
    models::plan_chain(ctx, std::slice::from_ref(model), params)
        .await
        .and_then(|df| {
            ctx.register_table(model.name.as_str(), df.into_view())
                .map(|_| ())
                .map_err(|e| models::model_error(model, e))
        })
}

/// A one-column in-memory table of strings.
fn string_table(column: &str, values: Vec<String>) -> Result<MemTable> {
    use arrow::datatypes::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![Field::new(column, DataType::Utf8, true)]));
    let array = arrow::array::StringArray::from_iter_values(values);
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(array)])?;
    Ok(MemTable::try_new(schema, vec![vec![batch]])?)
}

/// Plans the chain over empty inputs before the lake is touched: a model that does not plan
/// (an override under `--sql-dir`), or a last model that does not return every column of
/// `events` with its type, is a configuration error naming the file, even on a run with
/// nothing to clean.
async fn check_chain(models: &[Model], cfg: &Config) -> Result<datafusion::dataframe::DataFrame> {
    let ctx = catalog::model_session(cfg.memory_limit)?;
    let raw = MemTable::try_new((RAW_EVENTS.schema)(), vec![vec![]])?;
    ctx.register_table("raw_input", Arc::new(raw))?;
    ctx.register_table("events_carried", empty_events()?)?;
    let last = models.last().expect("checked: at least three models");
    let output = models::plan_chain(&ctx, models, &chain_params(cfg)).await?;
    let returned = output.schema().as_arrow().clone();
    for field in (EVENTS.schema)().fields() {
        let problem = match returned.field_with_name(field.name()) {
            Err(_) => format!(
                "returns no column {} (it returns {})",
                field.name(),
                returned
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Ok(f) if !same_kind(f.data_type(), field.data_type()) => format!(
                "returns {} as {}, and `events` stores it as {}: CAST it",
                field.name(),
                f.data_type(),
                field.data_type()
            ),
            Ok(_) => continue,
        };
        return Err(Error::config(format!(
            "SQL model {}: the last clean model must return every column of `events` with its \
             type; it {problem}",
            last.origin
        )));
    }
    Ok(output)
}

/// The bound parameters of the clean models.
fn chain_params(cfg: &Config) -> datafusion::common::ParamValues {
    datafusion::common::ParamValues::from(vec![(
        "session_gap_us",
        ScalarValue::Int64(Some(cfg.clean.session_gap.as_micros() as i64)),
    )])
}

/// Whether a model's column of type `returned` can be written to a column of type `stored`
/// without changing its meaning: the same type, or another layout of it (string views,
/// dictionaries, an integer of another width, another timestamp unit with a time zone where the
/// stored one has one, a decimal of the same scale). Not a string where a timestamp is stored,
/// say: that would parse every value as the rows are written, and fail halfway on a bad one.
fn same_kind(returned: &arrow::datatypes::DataType, stored: &arrow::datatypes::DataType) -> bool {
    use arrow::datatypes::DataType as T;
    match (returned, stored) {
        (T::Dictionary(_, value), _) => same_kind(value, stored),
        (T::Null, _) => true,
        (T::Utf8 | T::LargeUtf8 | T::Utf8View, T::Utf8 | T::LargeUtf8 | T::Utf8View) => true,
        (a, b) if a.is_integer() && b.is_integer() => true,
        (T::Timestamp(_, a), T::Timestamp(_, b)) => a.is_some() == b.is_some(),
        (T::Decimal128(_, a), T::Decimal128(_, b)) => a == b,
        (a, b) => a.equals_datatype(b),
    }
}

fn empty_events() -> Result<Arc<MemTable>> {
    Ok(Arc::new(MemTable::try_new(
        (EVENTS.schema)(),
        vec![vec![]],
    )?))
}

async fn collect_strings(ctx: &SessionContext, sql: &str) -> Result<Vec<String>> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let mut out = Vec::new();
    for b in batches {
        out.extend(catalog::strings(b.column(0))?.into_iter().flatten());
    }
    Ok(out)
}

fn sum_column(batch: &RecordBatch, name: &str) -> Result<u64> {
    let Some(col) = batch.column_by_name(name) else {
        return Ok(0);
    };
    let c = arrow::compute::cast(col, &arrow::datatypes::DataType::Int64)?;
    let c = c
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("cast to Int64");
    Ok(c.iter().flatten().sum::<i64>().max(0) as u64)
}

fn sorted_partition(pv: &HashMap<String, Option<String>>) -> Vec<(String, Option<String>)> {
    let mut v: Vec<_> = pv.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort();
    v
}

fn commit_info(s: &CleanSummary) -> HashMap<String, serde_json::Value> {
    let mut m = HashMap::new();
    m.insert(
        "clicklake".to_string(),
        serde_json::json!({
            "command": "clean",
            "mode": s.mode,
            "raw_version_from": s.raw_version_from,
            "raw_version_to": s.raw_version_to,
            "events_written": s.events_written,
            "visitors_touched": s.visitors_touched,
            "changes": s.change_id,
            "change_keys": s.change_id.as_ref().map(|_| catalog::CHANGE_KEYS),
        }),
    );
    m
}

/// The keys (session, order, product, date, customer) of every events row an incremental clean
/// adds, changes or removes, old and new values alike: what an incremental build recomputes.
#[derive(Default)]
struct ChangeKeys {
    /// Per change key, the keys of every changed row.
    keys: Vec<HashSet<String>>,
    /// Per change key, the keys of the rows that changed in more than the identity columns
    /// (new, removed, or changed in another column): the others changed by stitching or
    /// sessionization alone, which most aggregates (products, days) do not read.
    beyond_identity: Vec<HashSet<String>>,
}

impl ChangeKeys {
    /// Records the keys of the rows flagged `changed`; `identity_only` flags those that changed
    /// in the identity columns alone.
    fn record(
        &mut self,
        batch: &RecordBatch,
        changed: &BooleanArray,
        identity_only: &BooleanArray,
    ) -> Result<()> {
        if self.keys.is_empty() {
            self.keys = vec![HashSet::new(); catalog::CHANGE_KEYS.len()];
            self.beyond_identity = vec![HashSet::new(); catalog::CHANGE_KEYS.len()];
        }
        let sets = self.keys.iter_mut().zip(self.beyond_identity.iter_mut());
        for ((set, beyond), key) in sets.zip(catalog::CHANGE_KEYS) {
            for column in [key.to_string(), format!("__old_{key}")] {
                let Some(values) = batch.column_by_name(&column) else {
                    continue;
                };
                let values = catalog::utf8(values)?;
                for i in 0..batch.num_rows() {
                    if changed.is_valid(i) && changed.value(i) && values.is_valid(i) {
                        let v = values.value(i);
                        if !set.contains(v) {
                            set.insert(v.to_string());
                        }
                        let identity = identity_only.is_valid(i) && identity_only.value(i);
                        if !identity && !beyond.contains(v) {
                            beyond.insert(v.to_string());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Appends the keys to `events_changes` under a new change id, and returns the id.
    async fn commit(self, lake: &Lake, cfg: &Config) -> Result<String> {
        use arrow::array::StringArray;
        let change_id = uuid::Uuid::new_v4().to_string();
        let mut table = catalog::ensure_table(lake, &catalog::EVENTS_CHANGES).await?;
        let props = delta::writer_properties(cfg.ingest.zstd_level, cfg.ingest.row_group_rows)?;
        let mut sink = delta::TableSink::new(
            &table,
            props,
            cfg.ingest.target_file_size,
            64 << 20,
            "events_changes",
        )?;
        let schema = (catalog::EVENTS_CHANGES.schema)();
        let sets = self.keys.into_iter().zip(self.beyond_identity);
        for ((set, beyond), key) in sets.zip(catalog::CHANGE_KEYS) {
            let identity_only: Vec<&String> = set.difference(&beyond).collect();
            let listed = [
                (key.to_string(), set.iter().collect::<Vec<_>>()),
                (catalog::identity_only_key(key), identity_only),
            ];
            for (column, keys) in listed {
                let n = keys.len();
                let batch = RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(StringArray::from(vec![change_id.as_str(); n])),
                        Arc::new(StringArray::from(vec![column.as_str(); n])),
                        Arc::new(StringArray::from_iter_values(keys)),
                    ],
                )?;
                sink.write(&batch).await?;
            }
        }
        let adds = sink.finish().await?;
        delta::commit_append(&mut table, adds, Vec::new(), HashMap::new()).await?;
        Ok(change_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every embedded model plans against the real table schemas, and the chain produces every
    /// column of `events`: a broken model fails here, not in a cron run.
    #[tokio::test]
    async fn embedded_models_plan_against_the_real_schemas() {
        let models = models::load("clean", None).unwrap();
        let cfg = Config::defaults();
        let df = check_chain(&models, &cfg).await.unwrap();
        let plan = df.clone().create_physical_plan().await.unwrap();
        let schema = plan.schema();
        for field in (EVENTS.schema)().fields() {
            assert!(
                schema.column_with_name(field.name()).is_some(),
                "the clean chain does not produce {}",
                field.name()
            );
        }
        assert!(df
            .collect()
            .await
            .unwrap()
            .iter()
            .all(|b| b.num_rows() == 0));
    }

    #[test]
    fn file_ids_map_to_table_relative_paths() {
        assert_eq!(
            delta::table_relative_path(
                "s3://lake/prod/events/event_date=2026-01-05/segment=a%20b/part-1.parquet",
                "events"
            ),
            "event_date=2026-01-05/segment=a b/part-1.parquet"
        );
        assert_eq!(
            delta::table_relative_path(
                "file:///tmp/l/events/event_date=2026-01-05/x.parquet",
                "events"
            ),
            "event_date=2026-01-05/x.parquet"
        );
    }
}
