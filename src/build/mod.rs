//! Build: the star schema for checkout personalization, one Delta table per SQL model of
//! `sql/star/`, rebuilt from what `clean` changed.
//!
//! ```text
//!  events vN ──▶ for each model, once the tables it reads are committed (one per core at once):
//!    materialized: incremental (unique_key K)      materialized: table
//!      keys = K of the rows clean changed since      the whole model, over `events` and the
//!             the version the table reflects           tables built before it
//!             (events_changes, see clean)
//!      events := events rows with K in keys
//!      rows   = model; files holding a key are
//!               rewritten without those rows
//!    commit: removes + adds + txn markers (events version, inputs and logic fingerprints)
//!            — one per table
//! ```
//!
//! Models read the tables of the models before them in file order; a model starts as soon as
//! those are committed, so independent tables (the facts, `dim_product`) build side by side, each
//! with its own catalog over the run's one memory pool.
//!
//! Every model and every segment rule is planned before anything is written, so a broken model or
//! rule is a configuration error (exit 2) that changes nothing. Each table's commit records the
//! events version it reflects and a fingerprint of its inputs (events version, as-of time when the
//! model uses it, model text, segment rules): a re-run after a crash skips the tables already
//! built and finishes the rest. A third marker fingerprints the table's logic alone (model text,
//! segment rules, and the logic of the tables it reads): when that changed, an incremental model
//! is rebuilt in full, since the rows it would keep were computed the old way. Features and
//! dynamic segments are relative to the as-of time
//! (`--as-of`, default: the latest event_time in `events`), so a re-run on the same data gives
//! the same tables.

mod changes;
mod incremental;
mod segments;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::prelude::{DataFrame, SessionContext};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::{Action, StructType, Transaction};
use deltalake::protocol::SaveMode;
use deltalake::DeltaTable;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::catalog::{self, EVENTS, FILE_COLUMN};
use crate::config::Config;
use crate::delta;
use crate::error::{Error, Result};
use crate::fault;
use crate::fingerprint::Fingerprint;
use crate::models::{self, Model};
use crate::printer::Printer;
use crate::storage::Lake;
use changes::{changed_keys, shared_bytes_max, ChangeSet, SharedRows};
use incremental::{files_holding, plan_patches, rows_by_keys, rows_of_keys, PATCH_ROWS_MAX};

/// The Delta application id under which a star table records the events version it reflects.
pub const EVENTS_APP_ID: &str = "clicklake/build/events";
/// The application id of the fingerprint of everything a table was built from.
pub const INPUTS_APP_ID: &str = "clicklake/build/inputs";
/// The application id of the fingerprint of how a table was computed (model text, settings, the
/// logic of the tables it reads), whatever the data.
pub const LOGIC_APP_ID: &str = "clicklake/build/logic";
/// The application id of the version of `consents` (decisions imported with `clicklake consent`)
/// a table reflects.
pub const CONSENTS_APP_ID: &str = "clicklake/build/consents";

#[derive(Debug, Clone, Copy)]
pub enum AsOf {
    Now,
    /// Microseconds since the epoch, UTC.
    At(i64),
}

#[derive(Debug, Clone, Copy, Default)]
pub struct BuildRequest {
    pub full_refresh: bool,
    pub as_of: Option<AsOf>,
}

#[derive(Debug, Serialize, Default)]
pub struct BuildSummary {
    /// `built` or `up_to_date`.
    pub mode: &'static str,
    pub events_version: Option<i64>,
    /// RFC 3339, UTC.
    pub as_of: Option<String>,
    pub tables: Vec<TableBuild>,
    /// Rows of `events_changes` removed once every table had read them.
    pub changes_pruned: u64,
    pub seconds: f64,
}

#[derive(Debug, Serialize, Default, Clone)]
pub struct TableBuild {
    pub table: String,
    /// `full`, `incremental` or `up_to_date`.
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Incremental: the changed keys recomputed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys_changed: Option<u64>,
    /// Rows the model produced (all of them on a full build).
    pub rows_computed: u64,
    /// Unchanged rows copied out of rewritten files.
    pub rows_copied: u64,
    /// Incremental: rows whose new version was patched into their file (only the columns that
    /// changed re-encoded), and those files.
    #[serde(skip_serializing_if = "is_zero")]
    pub rows_patched: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub files_patched: u64,
    /// Incremental: rows the model produced for keys that did not change, dropped.
    #[serde(skip_serializing_if = "is_zero")]
    pub rows_outside_changed_keys: u64,
    pub files_added: u64,
    pub files_removed: u64,
    pub version: Option<i64>,
    pub seconds: f64,
}

/// One model's incremental plan: which `events` key column it recomputes by, and which values.
enum Work {
    UpToDate,
    Full(String),
    Incremental { column: String, keys: Vec<String> },
}

pub async fn run(
    lake: &Lake,
    cfg: &Config,
    req: BuildRequest,
    printer: &Printer,
) -> Result<BuildSummary> {
    let started = Instant::now();
    let models = models::load("star", cfg.build.sql_dir.as_deref())?;
    for m in &models {
        validate_directives(m)?;
    }
    let mut summary = BuildSummary {
        mode: "up_to_date",
        ..Default::default()
    };
    let Some(events) = lake.open_table(EVENTS.name).await? else {
        summary.seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    };
    let events_version = events.version().unwrap_or(0) as i64;
    summary.events_version = Some(events_version);
    // Commits that changed no rows (a clean of resends only) leave every table current.
    let data_version = last_data_version(&events, events_version).await?;

    let ctx = catalog::star_session(cfg.memory_limit)?;
    let events_provider = catalog::provider(&ctx, &events).await?;
    ctx.register_table("events_all", events_provider.clone())?;
    ctx.register_table("events", events_provider)?;
    let as_of = match req.as_of {
        Some(AsOf::At(us)) => us,
        Some(AsOf::Now) => chrono::Utc::now().timestamp_micros(),
        None => latest_event_time(&ctx)
            .await?
            .unwrap_or_else(|| chrono::Utc::now().timestamp_micros()),
    };
    let explicit_as_of = req.as_of.map(|_| as_of);
    summary.as_of = chrono::DateTime::from_timestamp_micros(as_of)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    let params = ParamValues::from(vec![
        (
            "as_of",
            ScalarValue::TimestampMicrosecond(Some(as_of), Some("UTC".into())),
        ),
        (
            "require_consent",
            ScalarValue::Boolean(Some(cfg.privacy.require_consent)),
        ),
    ]);
    ctx.register_table("segment_rules", Arc::new(segments::rules_table(cfg)?))?;
    // Consent decisions from `clicklake consent` (an empty table until the first import).
    let consents = catalog::ensure_table(lake, &catalog::CONSENTS).await?;
    let consents_version = consents.version().unwrap_or(0) as i64;
    catalog::register(&ctx, catalog::CONSENTS.name, &consents).await?;

    // Every star table's current state, opened concurrently (a few requests each on an object
    // store). Each table is written only by its own model, so these stay valid during the build.
    // Four at a time: each load replays a log, and all at once raised the peak memory.
    let opened: HashMap<String, DeltaTable> = futures::stream::iter(models.iter())
        .map(|m| async move { Ok::<_, Error>((m.name.clone(), lake.open_table(&m.name).await?)) })
        .buffered(4)
        .try_collect::<Vec<_>>()
        .await?
        .into_iter()
        .filter_map(|(name, t)| t.map(|t| (name, t)))
        .collect();

    // Nothing is written until every model and every segment rule plans.
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        "build: tables opened"
    );
    // A tick that brought nothing new leaves every table current: then nothing is planned (the
    // models are the ones planned when the tables were built: their text is in the markers).
    let versions = Versions {
        events: events_version,
        data: data_version,
        consents: consents_version,
    };
    let events_columns =
        match !req.full_refresh && all_current(&models, &opened, versions, as_of, cfg).await? {
            true => HashMap::new(),
            false => {
                let columns = validate_plans(cfg, &ctx, &models, &params, &opened).await?;
                tracing::debug!(
                    ms = started.elapsed().as_millis() as u64,
                    "build: every model planned"
                );
                columns
            }
        };

    // Plan every table first (its markers and the change records: no data read), then build
    // those with work to do.
    let run = Run {
        lake,
        cfg,
        models: &models,
        upstream: upstream_of(&models),
        as_of,
    };
    let mut planned = run
        .plan_tables(
            &events,
            &events_columns,
            opened,
            versions,
            req,
            explicit_as_of,
        )
        .await?;
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        "build: work planned for every table"
    );
    let any_built = !planned.pending.is_empty();
    run.build_tables(&ctx, &params, &events_columns, &mut planned, printer)
        .await?;
    summary.tables = planned.results.into_iter().flatten().collect();
    if let Some((hits, sent)) = lake.read_cache_stats() {
        tracing::debug!(
            hits,
            sent,
            "build: reads of data and commit files answered from memory, sent to the store"
        );
    }
    if any_built {
        summary.mode = "built";
    }
    summary.changes_pruned = prune_changes(lake, data_version).await?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Marks the events version through which `events_changes` was emptied (a `txn` marker on it).
pub const CHANGES_PRUNED_APP_ID: &str = "clicklake/build/changes_pruned";

/// Every star table now reflects `data_version`, the latest events commit that changed rows (a
/// table current since then keeps its older marker, but no change was recorded after it), so the
/// change records of the cleans up to it are read by no later build. They are removed (one
/// commit, no file rewritten), or every tick's build would read all the change records since the
/// lake began. The version is recorded with them: a table that reflects an older one (a model
/// added back) is built in full. Returns the rows removed.
async fn prune_changes(lake: &Lake, data_version: i64) -> Result<u64> {
    let Some(mut table) = lake.open_table(catalog::EVENTS_CHANGES.name).await? else {
        return Ok(0);
    };
    let files: Vec<_> = table.snapshot()?.log_data().iter().collect();
    if files.is_empty() {
        return Ok(0);
    }
    let rows = delta::table_rows(&table)?;
    let removes: Vec<deltalake::kernel::Action> = files
        .iter()
        .map(|f| deltalake::kernel::Action::Remove(f.remove_action(true)))
        .collect();
    let info = HashMap::from([(
        "clicklake".to_string(),
        serde_json::json!({"command": "build", "mode": "prune", "events_version": data_version}),
    )]);
    delta::commit(
        &mut table,
        removes,
        vec![deltalake::kernel::Transaction::new(
            CHANGES_PRUNED_APP_ID,
            data_version,
        )],
        info,
        deltalake::protocol::SaveMode::Overwrite,
    )
    .await?;
    Ok(rows)
}

/// The versions a build reads: of `events` (the latest, and the latest that changed rows) and
/// of `consents`.
#[derive(Clone, Copy)]
struct Versions {
    events: i64,
    data: i64,
    consents: i64,
}

/// What planning and building every table share: the models in file order and, for each, the
/// earlier models whose tables it reads.
struct Run<'a> {
    lake: &'a Lake,
    cfg: &'a Config,
    models: &'a [Model],
    upstream: Vec<Vec<usize>>,
    as_of: i64,
}

/// The tables already current (in `results` and `done`) and the jobs of the others.
struct Planned {
    results: Vec<Option<TableBuild>>,
    /// The committed tables, by name, which the models after them read.
    done: HashMap<String, DeltaTable>,
    pending: Vec<Job>,
}

impl Run<'_> {
    /// Each table's work (up to date, full or incremental) from its markers and the change
    /// records, in file order, so the inputs and logic fingerprints of a table's upstream are
    /// known when its own are computed. No data is read.
    async fn plan_tables(
        &self,
        events: &DeltaTable,
        events_columns: &HashMap<String, Vec<String>>,
        mut opened: HashMap<String, DeltaTable>,
        versions: Versions,
        req: BuildRequest,
        explicit_as_of: Option<i64>,
    ) -> Result<Planned> {
        let (models, upstream, cfg) = (self.models, &self.upstream, self.cfg);
        let mut changes_cache: HashMap<i64, Result<ChangeSet, String>> = HashMap::new();
        let mut fingerprints: Vec<i64> = Vec::new();
        let mut logic: Vec<i64> = Vec::new();
        let mut planned = Planned {
            results: vec![None; models.len()],
            done: HashMap::new(),
            pending: Vec::new(),
        };
        // Which models read `consents`, directly or through the tables they read: decisions it
        // gains change rows of customers whose events did not change.
        let mut via_consents: Vec<bool> = Vec::new();
        // Which models read the identity columns of `events`, directly or through the tables
        // they read: the others skip keys whose rows changed in those columns alone.
        let mut via_identity: Vec<bool> = Vec::new();
        for (index, model) in models.iter().enumerate() {
            let reads_consents = reads(model, catalog::CONSENTS.name);
            via_consents.push(reads_consents || upstream[index].iter().any(|&i| via_consents[i]));
            let reads_identity = events_columns.get(&model.name).is_none_or(|cs| {
                cs.iter()
                    .any(|c| catalog::IDENTITY_COLUMNS.contains(&c.as_str()))
            });
            via_identity.push(reads_identity || upstream[index].iter().any(|&i| via_identity[i]));
            let t0 = Instant::now();
            let existing = opened.remove(&model.name);
            let fingerprint = table_inputs(
                model,
                &upstream[index],
                &fingerprints,
                versions,
                self.as_of,
                cfg,
            );
            fingerprints.push(fingerprint);
            let upstream_logic: Vec<i64> = upstream[index].iter().map(|&i| logic[i]).collect();
            let model_logic = logic_fingerprint(model, cfg, &upstream_logic, explicit_as_of);
            logic.push(model_logic);
            let work = plan_work(
                self.lake,
                events,
                existing.as_ref(),
                model,
                req.full_refresh,
                versions.events,
                fingerprint,
                model_logic,
                via_consents[index].then_some(versions.consents),
                via_identity[index],
                &mut changes_cache,
            )
            .await?;
            match work {
                Work::UpToDate => {
                    let built = TableBuild {
                        table: model.name.clone(),
                        mode: "up_to_date",
                        version: existing
                            .as_ref()
                            .and_then(|t| t.version())
                            .map(|v| v as i64),
                        seconds: t0.elapsed().as_secs_f64(),
                        ..Default::default()
                    };
                    log_built(&built);
                    planned.results[index] = Some(built);
                    // Still readable by the models after it, as committed.
                    if let Some(t) = existing {
                        planned.done.insert(model.name.clone(), t);
                    }
                }
                work => planned.pending.push(Job {
                    index,
                    existing,
                    work,
                    markers: vec![
                        Transaction::new(EVENTS_APP_ID, versions.events),
                        Transaction::new(INPUTS_APP_ID, fingerprint),
                        Transaction::new(LOGIC_APP_ID, model_logic),
                        Transaction::new(CONSENTS_APP_ID, versions.consents),
                    ],
                }),
            }
        }
        Ok(planned)
    }

    /// Builds the pending tables: a table starts once every table it reads is committed, up to
    /// `build_parallelism` at a time, each on its own task with its own catalog (what `events`,
    /// `this` and the upstream tables mean for it) over the run's shared memory pool. One
    /// model's query seldom keeps both cores busy (its aggregation's final phase, the Parquet
    /// encoding and the commit run on one), so two tables side by side fill the gaps. After a
    /// failure the tables being written finish and commit, no other starts, and the first
    /// error is returned.
    async fn build_tables(
        &self,
        ctx: &SessionContext,
        params: &ParamValues,
        events_columns: &HashMap<String, Vec<String>>,
        planned: &mut Planned,
        printer: &Printer,
    ) -> Result<()> {
        let (models, upstream) = (self.models, &self.upstream);
        let Planned {
            results,
            done,
            pending,
        } = planned;
        let progress = printer.spinner("build");
        let parallel = build_parallelism(self.cfg.memory_limit);
        let fixed: Vec<(&str, Arc<dyn datafusion::catalog::TableProvider>)> = vec![
            ("events_all", ctx.table_provider("events_all").await?),
            ("segment_rules", ctx.table_provider("segment_rules").await?),
            (
                catalog::CONSENTS.name,
                ctx.table_provider(catalog::CONSENTS.name).await?,
            ),
        ];
        let shared = Arc::new(SharedRows::new(
            models,
            events_columns,
            shared_bytes_max(self.cfg.memory_limit),
        ));
        let cfg_shared = Arc::new(self.cfg.clone());
        let mut running: tokio::task::JoinSet<(usize, Result<(TableBuild, DeltaTable)>)> =
            tokio::task::JoinSet::new();
        let mut in_flight: Vec<usize> = Vec::new();
        let waited_on_by = readers_count(upstream);
        // A table's rows as last built, to start the longer of two jobs first (see
        // `first_to_start`).
        let mut last_rows: Vec<u64> = vec![0; models.len()];
        for job in pending.iter() {
            if let Some(t) = &job.existing {
                last_rows[job.index] = delta::table_rows(t).unwrap_or(0);
            }
        }
        let mut failed: Option<Error> = None;
        loop {
            while failed.is_none() && running.len() < parallel {
                let waiting_on = |job: &Job| {
                    upstream[job.index]
                        .iter()
                        .any(|i| in_flight.contains(i) || pending.iter().any(|j| j.index == *i))
                };
                let ready: Vec<usize> = pending
                    .iter()
                    .filter(|j| !waiting_on(j))
                    .map(|j| j.index)
                    .collect();
                let Some(next) = first_to_start(&ready, &waited_on_by, &last_rows) else {
                    break;
                };
                let at = pending
                    .iter()
                    .position(|j| j.index == next)
                    .expect("a pending job");
                let job = pending.remove(at);
                let model = models[job.index].clone();
                let reads_from: Vec<String> = upstream[job.index]
                    .iter()
                    .map(|&i| models[i].name.clone())
                    .collect();
                let model_ctx = match model_context(ctx, &fixed, done, &model, &reads_from).await {
                    Ok(c) => c,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
                in_flight.push(job.index);
                progress.set_message(names_of(models, &in_flight));
                let (lake, cfg, params, shared, as_of) = (
                    self.lake.clone(),
                    cfg_shared.clone(),
                    params.clone(),
                    shared.clone(),
                    self.as_of,
                );
                running.spawn(async move {
                    let t0 = Instant::now();
                    let built = build_table(
                        &lake,
                        &cfg,
                        &model_ctx,
                        &model,
                        job.existing,
                        job.work,
                        &params,
                        as_of,
                        job.markers,
                        &shared,
                    )
                    .await
                    .map(|(mut built, table)| {
                        built.seconds = t0.elapsed().as_secs_f64();
                        (built, table)
                    });
                    (job.index, built)
                });
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let (index, built) =
                joined.map_err(|e| Error::runtime(format!("building a table: {e}")))?;
            let name = &models[index].name;
            in_flight.retain(|&i| i != index);
            progress.set_message(names_of(models, &in_flight));
            match built {
                Ok((built, table)) => {
                    log_built(&built);
                    results[index] = Some(built);
                    done.insert(name.clone(), table);
                }
                // The tables already being written finish and commit; no other starts.
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        progress.finish_and_clear();
        if let Some(e) = failed {
            return Err(e);
        }
        // Unreachable while models read only the models before them: the first waiting table
        // always has its inputs committed once nothing runs.
        if !pending.is_empty() {
            return Err(Error::runtime(format!(
                "build: tables left waiting on each other: {}",
                names_of(models, &pending.iter().map(|j| j.index).collect::<Vec<_>>())
            )));
        }
        Ok(())
    }
}

/// A table with work to do, waiting for its turn.
struct Job {
    /// Its model's place in `models`.
    index: usize,
    existing: Option<DeltaTable>,
    work: Work,
    markers: Vec<Transaction>,
}

/// The memory limit a table needs to itself before a second one runs beside it: the models'
/// aggregates and joins that cannot spill share the run's pool.
const MEMORY_PER_TABLE: u64 = 512 << 20;

/// How many tables are built at once: one per core (at most four), as far as the memory limit
/// leaves each `MEMORY_PER_TABLE`; under a small limit one at a time, as that limit was meant for.
fn build_parallelism(memory_limit: u64) -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 4);
    cores.min((memory_limit / MEMORY_PER_TABLE).max(1) as usize)
}

/// For each model, the models before it whose tables it reads (a model reads only those, as
/// `validate_plans` checked).
fn upstream_of(models: &[Model]) -> Vec<Vec<usize>> {
    models
        .iter()
        .enumerate()
        .map(|(j, m)| (0..j).filter(|&i| reads(m, &models[i].name)).collect())
        .collect()
}

/// For each model, how many later models read its table, directly or through others.
fn readers_count(upstream: &[Vec<usize>]) -> Vec<usize> {
    let mut readers: Vec<HashSet<usize>> = vec![HashSet::new(); upstream.len()];
    for j in (0..upstream.len()).rev() {
        for &i in &upstream[j] {
            let transitive = readers[j].clone();
            readers[i].insert(j);
            readers[i].extend(transitive);
        }
    }
    readers.iter().map(HashSet::len).collect()
}

/// Of the tables ready to build (model indexes), the one to start first: the one most other
/// tables wait on, then the larger as last built, then the first in file order. It starts the
/// longest chain; of tables as many wait on, the longer job goes first (it would hold up the end
/// if it started last), and the tables nothing reads fill the other core meanwhile.
fn first_to_start(ready: &[usize], waited_on_by: &[usize], last_rows: &[u64]) -> Option<usize> {
    ready
        .iter()
        .copied()
        .max_by_key(|&i| (waited_on_by[i], last_rows[i], std::cmp::Reverse(i)))
}

fn names_of(models: &[Model], indexes: &[usize]) -> String {
    indexes
        .iter()
        .map(|&i| models[i].name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn log_built(built: &TableBuild) {
    tracing::info!(
        table = %built.table,
        mode = built.mode,
        rows = built.rows_computed,
        seconds = built.seconds,
        "built"
    );
}

/// A session for one model: the run's settings, functions and memory pool, with a catalog of
/// its own holding the run's fixed inputs and the committed tables of the models it reads
/// (`upstream`), so
/// models built side by side never see each other's `events`, `this` or `changed_keys`.
async fn model_context(
    base: &SessionContext,
    fixed: &[(&str, Arc<dyn datafusion::catalog::TableProvider>)],
    done: &HashMap<String, DeltaTable>,
    model: &Model,
    upstream: &[String],
) -> Result<SessionContext> {
    let state = datafusion::execution::SessionStateBuilder::new_from_existing(base.state())
        .with_config(
            base.copied_config()
                .with_create_default_catalog_and_schema(true),
        )
        .with_catalog_list(Arc::new(
            datafusion::catalog::MemoryCatalogProviderList::new(),
        ))
        .build();
    let ctx = SessionContext::new_with_state(state);
    for (name, provider) in fixed {
        ctx.register_table(*name, provider.clone())?;
    }
    for name in upstream {
        let table = done.get(name).ok_or_else(|| {
            Error::runtime(format!("build: {} started before {name}", model.name))
        })?;
        catalog::register(&ctx, name, table).await?;
    }
    Ok(ctx)
}

/// The latest events version whose commit added or removed rows (reading the log backwards from
/// `current`, usually one or two commits).
async fn last_data_version(events: &DeltaTable, current: i64) -> Result<i64> {
    for v in (0..=current).rev() {
        match delta::commit_actions(events, v).await? {
            // Cleaned up by log retention: assume it changed data.
            None => return Ok(v),
            Some(actions) if actions.iter().any(delta::is_data_change) => return Ok(v),
            Some(_) => {}
        }
    }
    Ok(0)
}

/// The latest event_time in `events`, in microseconds (answered from file statistics where
/// possible).
async fn latest_event_time(ctx: &SessionContext) -> Result<Option<i64>> {
    catalog::query_i64(
        ctx,
        "SELECT CAST(max(event_time) AS BIGINT) FROM events_all",
    )
    .await
}

fn validate_directives(model: &Model) -> Result<()> {
    let materialized = model
        .directive("materialized")
        .unwrap_or_else(|| "table".into());
    match materialized.as_str() {
        "incremental" => {
            match model.directive("unique_key") {
                Some(k) if catalog::CHANGE_KEYS.contains(&k.as_str()) => {}
                other => {
                    return Err(Error::config(format!(
                        "SQL model {}: an incremental model needs `-- unique_key:` one of {} \
                         (the events key it is recomputed by), got {:?}",
                        model.origin,
                        catalog::CHANGE_KEYS.join(", "),
                        other.unwrap_or_default()
                    )))
                }
            }
            if !as_of_only_bounds_event_time(&model.sql) {
                return Err(Error::config(format!(
                    "SQL model {}: an incremental model may use $as_of only as \
                     `event_time <= $as_of` (rows of keys that did not change would go stale \
                     as the as-of time moves); make it `materialized: table`",
                    model.origin
                )));
            }
            Ok(())
        }
        "table" => Ok(()),
        other => Err(Error::config(format!(
            "SQL model {}: materialized must be table or incremental, got {other:?}",
            model.origin
        ))),
    }
}

/// The change key an incremental model is recomputed by; None for a table model.
fn incremental_key(model: &Model) -> Option<String> {
    model
        .directive("materialized")
        .filter(|m| m == "incremental")
        .and(model.directive("unique_key"))
}

/// True when every `$as_of` in `sql` bounds event_time from above (`event_time <= $as_of`):
/// with the default as-of (the latest event_time) such a bound only ever admits events that are
/// new or changed, so the rows an incremental build keeps stay exact. Any other use (a window
/// such as `$as_of - INTERVAL '30 days'`) changes rows of every key as the as-of time moves.
fn as_of_only_bounds_event_time(sql: &str) -> bool {
    let text: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .flat_map(|l| l.chars().chain(std::iter::once(' ')))
        .filter(|c| !c.is_whitespace())
        .collect();
    text.match_indices("$as_of")
        .all(|(at, _)| text[..at].ends_with("event_time<="))
}

/// Plans every model in order (each registered as a view for the ones after it) and every
/// segment rule, in a scratch session: a mistake is reported before anything is written.
/// Returns the columns of `events` each model reads (from its optimized plan).
async fn validate_plans(
    cfg: &Config,
    ctx: &SessionContext,
    models: &[Model],
    params: &ParamValues,
    opened: &HashMap<String, DeltaTable>,
) -> Result<HashMap<String, Vec<String>>> {
    let mut events_columns = HashMap::new();
    let started = Instant::now();
    let mut physical = Vec::with_capacity(models.len());
    let scratch = catalog::star_session(cfg.memory_limit)?;
    for name in ["events_all", "events", "segment_rules", "consents"] {
        scratch.register_table(name, ctx.table_provider(name).await?)?;
    }
    for model in models {
        let _ = scratch.deregister_table("this");
        let existing = match model.sql.contains("this") {
            true => opened.get(&model.name),
            false => None,
        };
        scratch.register_table("this", this_provider(existing, model).await?)?;
        if model.name == "user_segments" {
            segments::validate_rules(&scratch, cfg).await?;
            segments::register_members(&scratch, cfg, None, params, 0).await?;
        }
        let df = scratch
            .sql_with_options(&model.sql, models::query_only())
            .await
            .and_then(|df| df.with_param_values(params.clone()))
            .map_err(|e| models::model_error(model, e))?;
        // Physical planning catches type errors the logical plan lets through. It runs on a
        // task of its own, beside the logical planning of the models after it (half the time
        // of planning them all, most of it planning the scans of `events`).
        let state = scratch.state();
        let optimized = state
            .optimize(df.logical_plan())
            .map_err(|e| models::model_error(model, e))?;
        let (plan, origin) = (optimized.clone(), model.clone());
        physical.push(tokio::spawn(async move {
            state
                .query_planner()
                .create_physical_plan(&plan, &state)
                .await
                .map(|_| ())
                .map_err(|e| models::model_error(&origin, e))
        }));
        events_columns.insert(model.name.clone(), scanned_columns(&optimized, "events")?);
        if let Some(key) = incremental_key(model) {
            if df.schema().inner().field_with_name(&key).is_err() {
                return Err(Error::config(format!(
                    "SQL model {}: unique_key {key} is not in its output",
                    model.origin
                )));
            }
        }
        delta_schema(df.schema().inner(), model)?;
        // The models after it see an empty table of the planned schema: the same names and types
        // as a view of this plan, without re-planning the whole chain of views under every model
        // and segment rule (that took most of a second at 1M).
        let planned = Arc::new(Schema::new(df.schema().inner().fields().clone()));
        let _ = scratch.deregister_table(model.name.as_str());
        scratch
            .register_table(
                model.name.as_str(),
                Arc::new(MemTable::try_new(planned, vec![vec![]])?),
            )
            .map_err(|e| models::model_error(model, e))?;
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            "build: {} planned",
            model.name
        );
    }
    // The first model (in file order) whose physical plan fails is the error.
    for task in physical {
        task.await
            .map_err(|e| Error::runtime(format!("planning a model: {e}")))??;
    }
    Ok(events_columns)
}

/// The columns of `table` that an optimized plan scans, subqueries included.
fn scanned_columns(
    plan: &datafusion::logical_expr::LogicalPlan,
    table: &str,
) -> Result<Vec<String>> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::logical_expr::LogicalPlan;
    let mut columns: Vec<String> = Vec::new();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            if scan.table_name.table() == table {
                // A filter the scan applies on its own need not be among its output columns.
                let filtered = scan.filters.iter().flat_map(|f| f.column_refs());
                let names = scan
                    .projected_schema
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .chain(filtered.map(|c| c.name.clone()))
                    .collect::<Vec<_>>();
                for name in names {
                    if !columns.contains(&name) {
                        columns.push(name);
                    }
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(columns)
}

/// `this` for a model: its table as last committed, or an empty table of its fixed schema.
async fn this_provider(
    existing: Option<&DeltaTable>,
    model: &Model,
) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
    if let Some(t) = existing {
        return Ok(crate::whole_files::for_table(t, t.table_provider().await?));
    }
    let schema = catalog::find(&model.name)
        .map(|d| (d.schema)())
        .unwrap_or_else(|| Arc::new(Schema::empty()));
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![]])?))
}

/// True when `model` reads the table built by the model `name` (`user_segments` reads
/// agg_user_features through the segment rules).
fn reads(model: &Model, name: &str) -> bool {
    let mentioned = model
        .sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .any(|w| w == name);
    mentioned || (name == "agg_user_features" && model.sql.contains("segment_members"))
}

/// Feeds the settings a model's result depends on besides its text and its data.
fn feed_settings(h: &mut Fingerprint, model: &Model, cfg: &Config) {
    if model.sql.contains("$require_consent") {
        h.feed(&[cfg.privacy.require_consent as u8]);
    }
    if model.name == "dim_segment"
        || model.name == "user_segments"
        || model.sql.contains("segment_rules")
    {
        for s in &cfg.build.segments {
            h.feed(s.name.as_bytes());
            h.feed(s.kind.as_str().as_bytes());
            h.feed(s.rule.as_bytes());
            h.feed(&s.priority.to_le_bytes());
            h.feed(&s.refresh.map(|d| d.as_secs()).unwrap_or(0).to_le_bytes());
        }
    }
}

/// The inputs fingerprint of a model's table: its model and settings, the events data version,
/// the fingerprints of the tables it reads (`fingerprints`, by model index) and, if it reads
/// them, the consents version.
fn table_inputs(
    model: &Model,
    upstream: &[usize],
    fingerprints: &[i64],
    versions: Versions,
    as_of: i64,
    cfg: &Config,
) -> i64 {
    let mut inputs: Vec<i64> = upstream.iter().map(|&i| fingerprints[i]).collect();
    if reads(model, catalog::CONSENTS.name) {
        inputs.push(versions.consents);
    }
    inputs_fingerprint(model, versions.data, as_of, cfg, &inputs)
}

/// Whether every table exists and was built from the inputs this build would give it (see
/// [`plan_work`]: such a table is up to date). Reads only the tables' markers.
async fn all_current(
    models: &[Model],
    opened: &HashMap<String, DeltaTable>,
    versions: Versions,
    as_of: i64,
    cfg: &Config,
) -> Result<bool> {
    let upstream = upstream_of(models);
    let mut fingerprints: Vec<i64> = Vec::new();
    for (index, model) in models.iter().enumerate() {
        let fingerprint =
            table_inputs(model, &upstream[index], &fingerprints, versions, as_of, cfg);
        fingerprints.push(fingerprint);
        let Some(table) = opened.get(&model.name) else {
            return Ok(false);
        };
        if delta::txn_version(table, INPUTS_APP_ID).await? != Some(fingerprint) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The fingerprint of what a table is computed from, including the fingerprints of the tables
/// it reads: equal means the table is up to date.
fn inputs_fingerprint(
    model: &Model,
    data_version: i64,
    as_of: i64,
    cfg: &Config,
    upstream: &[i64],
) -> i64 {
    let mut h = Fingerprint::new();
    h.feed(model.sql.as_bytes());
    h.feed(&data_version.to_le_bytes());
    for f in upstream {
        h.feed(&f.to_le_bytes());
    }
    if model.sql.contains("$as_of") {
        h.feed(&as_of.to_le_bytes());
    }
    feed_settings(&mut h, model, cfg);
    h.finish()
}

/// The fingerprint of how a table is computed, whatever the data: its model text, its settings
/// and the logic fingerprints of the tables it reads. When it differs from the one the table
/// was built with, rows kept by an incremental build would be stale, so it is rebuilt in full.
fn logic_fingerprint(
    model: &Model,
    cfg: &Config,
    upstream: &[i64],
    explicit_as_of: Option<i64>,
) -> i64 {
    let mut h = Fingerprint::new();
    h.feed(b"logic");
    h.feed(model.sql.as_bytes());
    for f in upstream {
        h.feed(&f.to_le_bytes());
    }
    // An incremental model bounds event_time by the as-of time: the default (the latest event)
    // moves only past changed rows, an explicit one changes which rows every key counts.
    if model.sql.contains("$as_of") {
        match explicit_as_of {
            None => h.feed(b"as_of: latest event"),
            Some(at) => h.feed(&at.to_le_bytes()),
        }
    }
    feed_settings(&mut h, model, cfg);
    h.finish()
}

#[allow(clippy::too_many_arguments)]
async fn plan_work(
    lake: &Lake,
    events: &DeltaTable,
    existing: Option<&DeltaTable>,
    model: &Model,
    full_refresh: bool,
    events_version: i64,
    fingerprint: i64,
    logic: i64,
    consents_version: Option<i64>,
    reads_identity: bool,
    cache: &mut HashMap<i64, Result<ChangeSet, String>>,
) -> Result<Work> {
    if full_refresh {
        return Ok(Work::Full("--full-refresh".into()));
    }
    let Some(table) = existing else {
        return Ok(Work::Full("first build".into()));
    };
    if delta::txn_version(table, INPUTS_APP_ID).await? == Some(fingerprint) {
        return Ok(Work::UpToDate);
    }
    let Some(column) = incremental_key(model) else {
        return Ok(Work::Full("materialized as a table".into()));
    };
    // Tables built before this marker existed have none: their logic is taken as unchanged.
    if matches!(delta::txn_version(table, LOGIC_APP_ID).await?, Some(built) if built != logic) {
        return Ok(Work::Full(
            "its model, its settings or a model it reads changed".into(),
        ));
    }
    if let Some(current) = consents_version {
        if delta::txn_version(table, CONSENTS_APP_ID).await? != Some(current) {
            return Ok(Work::Full(
                "consent decisions were imported since it was built".into(),
            ));
        }
    }
    let Some(reflected) = delta::txn_version(table, EVENTS_APP_ID).await? else {
        return Ok(Work::Full(
            "no record of the events version it reflects".into(),
        ));
    };
    if reflected > events_version {
        return Ok(Work::Full(format!(
            "reflects events version {reflected}, newer than {events_version}"
        )));
    }
    if reflected == events_version {
        // Only an input other than events changed (the model text): recompute it all.
        return Ok(Work::Full("the model changed".into()));
    }
    if let std::collections::hash_map::Entry::Vacant(slot) = cache.entry(reflected) {
        slot.insert(changed_keys(lake, events, reflected, events_version).await?);
    }
    match &cache[&reflected] {
        Err(reason) => Ok(Work::Full(reason.clone())),
        Ok(set) => match set.unrecorded.get(&column) {
            Some(v) => Ok(Work::Full(format!(
                "events commit {v} recorded no {column} changes (an earlier clicklake cleaned it)"
            ))),
            None => Ok(Work::Incremental {
                keys: match reads_identity {
                    true => &set.keys,
                    false => &set.beyond_identity,
                }
                .get(&column)
                .cloned()
                .unwrap_or_default(),
                column,
            }),
        },
    }
}

#[allow(clippy::too_many_arguments)]
async fn build_table(
    lake: &Lake,
    cfg: &Config,
    ctx: &SessionContext,
    model: &Model,
    existing: Option<DeltaTable>,
    work: Work,
    params: &ParamValues,
    as_of: i64,
    markers: Vec<Transaction>,
    shared: &SharedRows,
) -> Result<(TableBuild, DeltaTable)> {
    let mut out = TableBuild {
        table: model.name.clone(),
        ..Default::default()
    };
    // Where a table's time goes, with `-vv`.
    let t0 = Instant::now();
    let lap = |what: &str| {
        tracing::debug!(
            ms = t0.elapsed().as_millis() as u64,
            "build: {}: {what}",
            model.name
        )
    };
    // What `events` means for this model.
    let incremental = register_events(ctx, &work, existing.as_ref(), shared, &mut out).await?;
    lap("its events rows registered");
    let _ = ctx.deregister_table("this");
    ctx.register_table("this", this_provider(existing.as_ref(), model).await?)?;
    if model.name == "user_segments" {
        segments::register_members(ctx, cfg, existing.as_ref(), params, as_of).await?;
    }
    let df: DataFrame = ctx
        .sql_with_options(&model.sql, models::query_only())
        .await
        .and_then(|df| df.with_param_values(params.clone()))
        .map_err(|e| models::model_error(model, e))?;
    let schema = delta_schema(df.schema().inner(), model)?;
    let partitions = model.directive_list("partition_by");

    // The table, created or re-created when the model's columns or partition columns changed
    // (the writer lays files out by the table's own partition columns).
    let same_layout = existing.as_ref().and_then(|t| t.snapshot().ok()).map(|s| {
        same_columns(&s.snapshot().arrow_schema(), &schema)
            && s.metadata().partition_columns() == partitions
    });
    let mut table = match (existing, same_layout) {
        (Some(t), Some(true)) => t,
        (Some(_), _) if incremental.is_some() => {
            return Err(Error::config(format!(
                "SQL model {}: its columns or partition columns differ from table {}; run \
                 `clicklake build --full-refresh`",
                model.origin, model.name
            )))
        }
        (existing, _) => {
            create_table(lake, model, &schema, &partitions, existing.is_some()).await?
        }
    };

    let props = delta::writer_properties(cfg.ingest.zstd_level, cfg.ingest.row_group_rows)?;
    let flush_at = (cfg.memory_limit / 6).max(8 << 20) as usize;
    let mut sink = delta::TableSink::new(
        &table,
        props.clone(),
        cfg.ingest.target_file_size,
        flush_at,
        format!("SQL model {}", model.origin),
    )?;
    let plan = df
        .create_physical_plan()
        .await
        .map_err(|e| models::model_error(model, e))?;
    let mut stream = datafusion::physical_plan::execute_stream(plan.clone(), ctx.task_ctx())
        .map_err(|e| models::model_error(model, e))?;
    // An incremental model's rows are held (up to PATCH_ROWS_MAX) to patch the files holding
    // their keys' current rows where only string columns changed; beyond that they stream.
    let mut held: Option<Vec<RecordBatch>> = incremental.as_ref().map(|_| Vec::new());
    let (mut held_rows, mut computed) = (0usize, 0u64);
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| models::model_error(model, e))?;
        let batch = match &incremental {
            // Rows of other keys were computed from a partial view of `events` (only the changed
            // keys' rows), and the files holding their current rows are not rewritten: they are
            // dropped rather than added beside those.
            Some((column, keys)) => {
                let (kept, dropped) = rows_of_keys(&batch, column, keys)?;
                out.rows_outside_changed_keys += dropped;
                kept
            }
            None => batch,
        };
        computed += batch.num_rows() as u64;
        match held.as_mut() {
            Some(rows) if held_rows + batch.num_rows() <= PATCH_ROWS_MAX => {
                held_rows += batch.num_rows();
                rows.push(batch);
            }
            Some(_) => {
                for b in held.take().unwrap_or_default() {
                    sink.write(&b).await?;
                }
                sink.write(&batch).await?;
            }
            None => sink.write(&batch).await?,
        }
    }
    // `-vv` shows where a model spent its time.
    tracing::debug!(
        "{} plan with metrics:\n{}",
        model.name,
        datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(plan.as_ref())
            .indent(true)
    );
    out.rows_computed = computed;
    lap("model run");
    let (patched_adds, removes) = match &incremental {
        None => {
            let removes: Vec<Action> = table
                .snapshot()?
                .log_data()
                .iter()
                .map(|f| Action::Remove(f.remove_action(true)))
                .collect();
            (Vec::new(), removes)
        }
        Some((column, keys)) => {
            let changed = Changed {
                column,
                keys,
                held: held.take(),
            };
            replace_keys(
                ctx,
                (&props, cfg.memory_limit),
                model,
                &table,
                changed,
                &mut sink,
                &mut out,
            )
            .await?
        }
    };
    let mut adds = sink.finish().await?;
    adds.extend(patched_adds);
    lap("files holding changed keys rewritten, data files closed");
    fault("build-after-data-files");
    out.files_added = adds.len() as u64;
    out.files_removed = removes.len() as u64;
    let mode = if removes.is_empty() {
        SaveMode::Append
    } else {
        SaveMode::Overwrite
    };
    let mut actions = removes;
    actions.extend(adds.into_iter().map(Action::Add));
    let mut meta = HashMap::new();
    meta.insert(
        "clicklake".to_string(),
        serde_json::json!({
            "command": "build",
            "model": model.origin,
            "mode": out.mode,
            "keys_changed": out.keys_changed,
            "as_of": as_of,
        }),
    );
    let version = delta::commit(&mut table, actions, markers, meta, mode).await?;
    lap("committed");
    fault(&format!("build-after-commit-{}", model.name));
    out.version = Some(version);
    Ok((out, table))
}

/// Registers `events` as this model reads it: on an incremental build, the rows of the changed
/// keys (and `changed_keys`, plus `changed_customers` for a customer-keyed model); on a full one,
/// all of it. Returns the key column and the keys as the table holds them, when incremental.
async fn register_events(
    ctx: &SessionContext,
    work: &Work,
    existing: Option<&DeltaTable>,
    shared: &SharedRows,
    out: &mut TableBuild,
) -> Result<Option<(String, HashSet<String>)>> {
    let _ = ctx.deregister_table("events");
    Ok(match work {
        Work::Incremental { column, keys } => {
            out.mode = "incremental";
            out.keys_changed = Some(keys.len() as u64);
            // The keys as the table holds them; customers are recorded by identity (unhashed).
            let table_keys = match catalog::is_events_column(column) {
                true => keys.clone(),
                false => {
                    ctx.register_table("changed_customers", Arc::new(customers_table(keys)?))?;
                    user_keys(ctx, keys).await?
                }
            };
            ctx.register_table("changed_keys", Arc::new(key_table(&table_keys)?))?;
            let most_keys = match existing {
                Some(t) => keys.len() as u64 * 2 > delta::table_rows(t)?,
                None => true,
            };
            ctx.register_table("events", shared.get(ctx, column, keys, most_keys).await?)?;
            Some((
                column.clone(),
                table_keys.into_iter().collect::<HashSet<_>>(),
            ))
        }
        Work::Full(reason) => {
            out.mode = "full";
            out.reason = Some(reason.clone());
            ctx.register_table("events", ctx.table_provider("events_all").await?)?;
            None
        }
        Work::UpToDate => unreachable!("handled by the caller"),
    })
}

/// The rows an incremental model computed for its changed keys.
struct Changed<'a> {
    column: &'a str,
    keys: &'a HashSet<String>,
    /// The rows held back to patch files in place; `None` when there were too many to hold (they
    /// have streamed to the sink).
    held: Option<Vec<RecordBatch>>,
}

/// Replaces the changed keys' current rows: files where only string columns changed are
/// patched in place, the other files holding those keys are rewritten without them into `sink`.
/// Returns the patched files' adds and the removes of the files they replace.
async fn replace_keys(
    ctx: &SessionContext,
    (props, memory_limit): (&deltalake::parquet::file::properties::WriterProperties, u64),
    model: &Model,
    table: &DeltaTable,
    changed: Changed<'_>,
    sink: &mut delta::TableSink,
    out: &mut TableBuild,
) -> Result<(Vec<deltalake::kernel::Add>, Vec<Action>)> {
    let Changed { column, keys, held } = changed;
    if keys.is_empty() {
        for b in held.unwrap_or_default() {
            sink.write(&b).await?;
        }
        return Ok((Vec::new(), Vec::new()));
    }
    let (patches, rewrite) = match held {
        Some(rows) => {
            let rows = rows
                .iter()
                .map(|b| sink.conform(b))
                .collect::<Result<Vec<_>>>()?;
            let plan = plan_patches(ctx, table, column, &rows).await?;
            // The new rows but those the patches carry (or that equal the current ones).
            for b in &rows {
                let (kept, _) = rows_by_keys(b, column, &plan.carried, false)?;
                sink.write(&kept).await?;
            }
            (plan.patches, plan.rewrite)
        }
        None => (HashMap::new(), files_holding(ctx, table, column).await?),
    };
    let target = crate::patch::Target {
        table: &model.name,
        key: column,
    };
    let done = crate::patch::replace(
        ctx,
        table,
        target,
        crate::patch::Replacement {
            patches,
            rewrite: &rewrite,
            drop: keys,
        },
        sink,
        (props, memory_limit),
    )
    .await?;
    out.files_patched = done.files_patched;
    out.rows_patched = done.rows_patched;
    out.rows_copied += done.rows_copied;
    Ok((done.adds, done.removes))
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The changed customers (recorded `user_key` changes) by identity: `id`, and `registered` when
/// it is a user_id rather than an anonymous_id.
fn customers_table(recorded: &[String]) -> Result<MemTable> {
    let (registered, ids): (Vec<bool>, Vec<&str>) = recorded
        .iter()
        .map(|r| {
            // Dropping one would drop that customer's rows without recomputing them.
            catalog::customer_identity(r).ok_or_else(|| {
                Error::runtime(format!(
                    "events_changes holds a user_key change that names no customer ({r:?}); \
                     run `clicklake build --full-refresh`"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, true),
        Field::new("registered", DataType::Boolean, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(arrow::array::StringArray::from(ids)),
            Arc::new(arrow::array::BooleanArray::from(registered)),
        ],
    )?;
    Ok(MemTable::try_new(schema, vec![vec![batch]])?)
}

/// The star schema's user_key of each recorded customer: the md5 of the recorded text.
async fn user_keys(ctx: &SessionContext, recorded: &[String]) -> Result<Vec<String>> {
    let view = ctx.read_table(Arc::new(key_table(recorded)?))?;
    let hashed = view.select(vec![datafusion::functions::crypto::expr_fn::md5(
        datafusion::prelude::col("key"),
    )])?;
    let mut out = Vec::with_capacity(recorded.len());
    for b in hashed.collect().await? {
        out.extend(catalog::strings(b.column(0))?.into_iter().flatten());
    }
    Ok(out)
}

fn key_table(keys: &[String]) -> Result<MemTable> {
    let schema = Arc::new(Schema::new(vec![Field::new("key", DataType::Utf8, true)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(arrow::array::StringArray::from_iter_values(
            keys.iter(),
        ))],
    )?;
    Ok(MemTable::try_new(schema, vec![vec![batch]])?)
}

/// The model's output columns as Delta can store them: string views as strings, every
/// timestamp as UTC microseconds, unsigned integers widened.
fn delta_schema(schema: &SchemaRef, model: &Model) -> Result<SchemaRef> {
    let mut fields = Vec::new();
    for f in schema.fields() {
        // Partition columns scan as dictionaries: store their values.
        let t = match f.data_type() {
            DataType::Dictionary(_, value) => value.as_ref(),
            other => other,
        };
        let t = match t {
            DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
            DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
            DataType::Timestamp(_, _) => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
            DataType::UInt8 | DataType::UInt16 => DataType::Int32,
            DataType::UInt32 | DataType::UInt64 => DataType::Int64,
            DataType::Null => {
                return Err(Error::config(format!(
                    "SQL model {}: column {} has no type (a bare NULL); CAST it",
                    model.origin,
                    f.name()
                )))
            }
            other => other.clone(),
        };
        fields.push(Field::new(f.name(), t, true));
    }
    let schema = Arc::new(Schema::new(fields));
    let _: StructType = schema.as_ref().try_into_kernel().map_err(|e| {
        Error::config(format!(
            "SQL model {}: a column type Delta cannot store: {e}",
            model.origin
        ))
    })?;
    // Checked here, before anything is written: Delta commits a table whose partition columns
    // repeat, and every later read of it fails.
    let partitions = model.directive_list("partition_by");
    let bad = |why: String| {
        Err(Error::config(format!(
            "SQL model {}: partition_by {why}",
            model.origin
        )))
    };
    for (i, p) in partitions.iter().enumerate() {
        let Ok(field) = schema.field_with_name(p) else {
            return bad(format!("column {p} is not in its output"));
        };
        if partitions[..i].contains(p) {
            return bad(format!("names column {p} twice"));
        }
        if field.data_type().is_nested() {
            return bad(format!(
                "column {p} is a {}: only plain values can name a partition",
                field.data_type()
            ));
        }
    }
    if !partitions.is_empty() && partitions.len() == schema.fields().len() {
        return bad("names every column: a table needs at least one column outside them".into());
    }
    Ok(schema)
}

fn same_columns(a: &SchemaRef, b: &SchemaRef) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields().iter().all(|f| {
            b.field_with_name(f.name())
                .is_ok_and(|g| g.data_type() == f.data_type())
        })
}

async fn create_table(
    lake: &Lake,
    model: &Model,
    schema: &SchemaRef,
    partitions: &[String],
    replace: bool,
) -> Result<DeltaTable> {
    if let Some(def) = catalog::find(&model.name) {
        if !replace {
            return catalog::ensure_table(lake, def).await;
        }
    }
    let kernel: StructType = schema
        .as_ref()
        .try_into_kernel()
        .map_err(|e| Error::runtime(format!("schema of {}: {e}", model.name)))?;
    let description = model
        .sql
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("--"))
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    let created = deltalake::operations::create::CreateBuilder::new()
        .with_location(lake.table_url(&model.name).to_string())
        .with_storage_options(lake.storage_options())
        .with_table_name(model.name.as_str())
        .with_comment(description)
        .with_columns(kernel.fields().cloned())
        .with_partition_columns(partitions.iter().cloned())
        .with_save_mode(if replace {
            SaveMode::Overwrite
        } else {
            SaveMode::Ignore
        })
        .with_configuration_property(
            deltalake::TableProperty::CheckpointInterval,
            Some(crate::delta::CHECKPOINT_INTERVAL),
        )
        .await?;
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_most_wait_on_starts_first_then_the_larger_then_file_order() {
        // Models 0..4: 1 and 2 are each waited on by two tables, 1 had 136K rows last time and 2
        // had 575K (fact_orders and agg_user_interest at 10M); 3 and 4 by none.
        let waited_on_by = [0, 2, 2, 0, 0];
        let last_rows = [0, 136_000, 575_000, 772_000, 0];
        assert_eq!(
            first_to_start(&[1, 2, 3], &waited_on_by, &last_rows),
            Some(2)
        );
        assert_eq!(
            first_to_start(&[1, 3, 4], &waited_on_by, &last_rows),
            Some(1)
        );
        assert_eq!(first_to_start(&[3, 4], &waited_on_by, &last_rows), Some(3));
        // A first build knows no sizes: file order.
        assert_eq!(first_to_start(&[4, 1, 2], &waited_on_by, &[0; 5]), Some(1));
        assert_eq!(first_to_start(&[], &waited_on_by, &last_rows), None);
    }

    /// A 1M-event build under `--memory-limit 64MiB` ran out of memory with two tables sharing
    /// the pool and completes with one; a limit of 1 GiB still builds two at once.
    #[test]
    fn a_small_memory_limit_builds_one_table_at_a_time() {
        assert_eq!(build_parallelism(64 << 20), 1);
        assert_eq!(build_parallelism(1000 << 20), 1);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        assert_eq!(build_parallelism(1 << 30), cores.clamp(1, 2));
        assert_eq!(build_parallelism(64 << 30), cores.clamp(1, 4));
    }

    /// An incremental model may bound event_time by the as-of time and nothing else: a window
    /// relative to it changes rows of keys whose events did not change.
    #[test]
    fn an_incremental_model_uses_as_of_only_as_an_event_time_bound() {
        let model = |sql: &str| Model {
            name: "m".into(),
            origin: "m.sql".into(),
            sql: format!("-- materialized: incremental\n-- unique_key: user_key\n{sql}"),
        };
        let bounded = model("SELECT user_key FROM events\nWHERE e.event_time\n  <= $as_of");
        assert!(validate_directives(&bounded).is_ok());
        let window = model(
            "SELECT user_key FROM events WHERE event_time <= $as_of \
             AND event_time > $as_of - INTERVAL '30 days'",
        );
        let err = validate_directives(&window).unwrap_err().to_string();
        assert!(
            err.contains("m.sql") && err.contains("event_time <= $as_of"),
            "{err}"
        );
        // The same window in a table model is fine: it is recomputed whole.
        let table = Model {
            sql: window.sql.replace("incremental", "table"),
            ..window
        };
        assert!(validate_directives(&table).is_ok());
    }

    /// The default configuration and the embedded star models.
    fn default_config_and_models() -> (Config, Vec<Model>) {
        let cfg = Config::defaults();
        (cfg, models::load("star", None).unwrap())
    }

    /// The logic fingerprint of a model reading `$as_of` tells the default as-of (the latest
    /// event) from an explicit one, and explicit ones apart: moving between them rebuilds an
    /// incremental table in full. A model without `$as_of` does not care.
    #[test]
    fn an_explicit_as_of_changes_the_logic_of_models_reading_it() {
        let (cfg, models) = default_config_and_models();
        let find = |name: &str| models.iter().find(|m| m.name == name).unwrap();
        let interest = find("agg_user_interest");
        let logic = |m: &Model, at: Option<i64>| logic_fingerprint(m, &cfg, &[], at);
        assert_ne!(logic(interest, None), logic(interest, Some(5)));
        assert_ne!(logic(interest, Some(5)), logic(interest, Some(6)));
        assert_eq!(logic(interest, Some(5)), logic(interest, Some(5)));
        let sessions = find("fact_sessions");
        assert_eq!(logic(sessions, None), logic(sessions, Some(5)));
    }

    /// Every embedded star model plans against the real schemas (and every default segment
    /// rule against agg_user_features): a broken model fails here, not in a cron run.
    #[tokio::test]
    async fn embedded_star_models_plan_against_the_real_schemas() {
        let (cfg, models) = default_config_and_models();
        assert_eq!(models.len(), catalog::star_tables().len());
        for m in &models {
            validate_directives(m).unwrap();
        }
        let ctx = catalog::model_session(256 << 20).unwrap();
        let empty = Arc::new(MemTable::try_new((EVENTS.schema)(), vec![vec![]]).unwrap());
        ctx.register_table("events_all", empty.clone()).unwrap();
        ctx.register_table("events", empty).unwrap();
        ctx.register_table(
            "segment_rules",
            Arc::new(segments::rules_table(&cfg).unwrap()),
        )
        .unwrap();
        let consents =
            Arc::new(MemTable::try_new((catalog::CONSENTS.schema)(), vec![vec![]]).unwrap());
        ctx.register_table("consents", consents).unwrap();
        let params = ParamValues::from(vec![
            (
                "as_of",
                ScalarValue::TimestampMicrosecond(Some(0), Some("UTC".into())),
            ),
            ("require_consent", ScalarValue::Boolean(Some(false))),
        ]);
        let columns = validate_plans(&cfg, &ctx, &models, &params, &HashMap::new())
            .await
            .unwrap();
        // What an incremental build reads of the changed rows: the columns each model uses.
        let of = |model: &str| {
            columns[model]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        };
        let product = of("dim_product");
        assert!(product.contains(&"product_id") && product.contains(&"price"));
        assert!(!product.contains(&"page_url") && !product.contains(&"properties"));
        assert!(of("fact_sessions").contains(&"page_url"));
        assert!(of("user_consent").contains(&"properties"));
    }
}
