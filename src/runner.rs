//! `clicklake run`, the cron entry point: under the lake's lease, ingest what is new in the inbox,
//! then clean, build and check, each doing only incremental work, compact the tables whose small
//! files piled up, and append a record of the run to the `_runs` table.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::build::{self, BuildRequest, BuildSummary};
use crate::catalog::{self, RUNS};
use crate::check::{self, CheckReport};
use crate::clean::{self, CleanRequest, CleanSummary};
use crate::cli::InputFormat;
use crate::config::Config;
use crate::delta;
use crate::error::{Error, Result};
use crate::ingest::{self, IngestRequest, IngestSummary};
use crate::lease::Lease;
use crate::printer::Printer;
use crate::storage::Lake;

/// What one tick does.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// New raw files arrive here; without one, the run starts at clean.
    pub inbox: Option<String>,
    pub source: String,
    /// Wait this long for another run's lease instead of exiting 75 at once.
    pub wait: Option<Duration>,
    pub check: bool,
    /// The quarantine gate on the run's ingest (`--max-quarantined`, `[ingest] max_quarantined`).
    pub max_quarantined: Option<crate::config::QuarantineLimit>,
    /// Inbox files written more recently than this wait for a later run.
    pub min_file_age: Duration,
    /// Inbox files whose name matches one of these are left out.
    pub ignore: Vec<glob::Pattern>,
    /// Compact a table after the build once this many of its files can be merged away; 0 never.
    pub compact_min_files: u64,
}

/// The summary `run --json` prints and `_runs.summary` keeps.
#[derive(Debug, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub holder: String,
    pub lake: String,
    pub started_at: String,
    pub finished_at: String,
    pub seconds: f64,
    /// `success`, `checks_failed` or `failed`.
    pub outcome: &'static str,
    pub error: Option<String>,
    pub inbox: Option<String>,
    pub ingest: Option<IngestSummary>,
    pub clean: Option<CleanSummary>,
    pub build: Option<BuildSummary>,
    pub check: Option<CheckReport>,
    /// The tables compaction looked at (`None` when it was off, or the run stopped before it).
    pub compact: Option<Vec<crate::compaction::Compacted>>,
    pub compact_min_files: u64,
    /// The tables vacuumed, on the runs where one was due (`[run] vacuum_every`).
    pub vacuum: Option<Vec<crate::vacuum::Vacuumed>>,
    /// Wall seconds per stage that ran, in order.
    pub stage_seconds: Vec<(&'static str, f64)>,
    /// Ids of erasures that were cut off before they were recorded (`status` lists them); the
    /// run warns of each until the same erase request is run again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unfinished_erasures: Vec<String>,
}

/// Validates the request before touching the lake.
pub fn validate(req: &RunRequest, cfg: &Config) -> Result<()> {
    let available = ingest::source::available(cfg.ingest.sources_dir.as_deref());
    if !available.contains(&req.source) {
        return Err(Error::config(format!(
            "run source {:?} is unknown (available: {})",
            req.source,
            available.join(", ")
        )));
    }
    if let Some(inbox) = &req.inbox {
        if inbox == "-" {
            return Err(Error::config("the inbox cannot be stdin"));
        }
    }
    Ok(())
}

/// Runs every stage under the lease. Fails with [`Error::Locked`] (exit 75) when another run holds
/// it; a stage's failure is recorded in `_runs` and then returned.
pub async fn run(
    lake: &Lake,
    cfg: &Config,
    req: RunRequest,
    printer: &Printer,
) -> Result<RunSummary> {
    validate(&req, cfg)?;
    lake.ensure_root()?;
    let run_id = format!(
        "{}-{}",
        Utc::now().format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let lease = Lease::acquire(lake, &run_id, cfg.run.lease_ttl, req.wait).await?;
    tracing::info!(run_id, "lease taken");
    crate::fault("run-after-lease");
    crate::pause("run-after-lease").await;

    let started_at = lease.info().started_at;
    let started = Instant::now();
    let mut summary = RunSummary {
        run_id,
        holder: lease.info().holder.clone(),
        lake: crate::storage::redact(lake.root()),
        started_at: rfc3339(started_at),
        finished_at: String::new(),
        seconds: 0.0,
        outcome: "success",
        error: None,
        inbox: req.inbox.clone(),
        ingest: None,
        clean: None,
        build: None,
        check: None,
        compact: None,
        compact_min_files: req.compact_min_files,
        vacuum: None,
        stage_seconds: Vec::new(),
        unfinished_erasures: Vec::new(),
    };
    // A GDPR erasure that was cut off leaves some tables with its people's rows; only running the
    // request again (which the run cannot: it holds no clear id) finishes it.
    match crate::erase::pending(lake).await {
        Ok(pending) => {
            for (_, p) in pending {
                tracing::warn!("{}", p.warning());
                summary.unfinished_erasures.extend(p.erasure_ids);
            }
        }
        Err(e) => tracing::warn!("cannot tell whether an erasure was cut off: {e}"),
    }
    // A run that stops making progress (a stuck store request, an engine hang) must not hold the
    // lease for ever: the lease is renewed while the process lives, so every later tick would
    // exit 75. Past max_duration the stages are dropped and the run ends as failed.
    let limit = cfg.run.max_duration;
    let mut gate = None;
    let result = match tokio::time::timeout(
        limit,
        stages(lake, cfg, &req, printer, &lease, &mut summary, &mut gate),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(Error::runtime(format!(
            "the run took longer than [run] max_duration ({}s) and was stopped; \
             what it had not committed is discarded and the next run starts from the last commit",
            limit.as_secs()
        ))),
    };
    let finished_at = Utc::now();
    summary.finished_at = rfc3339(finished_at);
    summary.seconds = started.elapsed().as_secs_f64();
    match &result {
        Ok(()) => {
            if summary.check.as_ref().is_some_and(|c| c.failed > 0) {
                summary.outcome = "checks_failed";
            }
            if let Some(over) = &gate {
                summary.outcome = "checks_failed";
                summary.error = Some(over.clone());
            }
        }
        Err(e) => {
            summary.outcome = "failed";
            summary.error = Some(e.to_string());
        }
    }
    // The record is written while the lease is still held; its failure must not hide the
    // stage's own error.
    if let Err(e) = append_record(lake, cfg, &summary, started_at, finished_at).await {
        if result.is_ok() {
            let _ = lease.release().await;
            return Err(e);
        }
        tracing::error!("cannot record the run in _runs: {e}");
    }
    let detail = match &summary.error {
        Some(e) => format!("run {}: {e}", summary.run_id),
        None => format!("run {}", summary.run_id),
    };
    if let Err(e) = crate::audit::record(lake, cfg, "run", summary.outcome, &detail).await {
        tracing::error!("cannot write the audit record: {e}");
    }
    if let Err(e) = lease.release().await {
        tracing::warn!("cannot release the lease (it lapses on its own): {e}");
    }
    result.map(|()| summary)
}

async fn stages(
    lake: &Lake,
    cfg: &Config,
    req: &RunRequest,
    printer: &Printer,
    lease: &Lease,
    summary: &mut RunSummary,
    gate: &mut Option<String>,
) -> Result<()> {
    crate::pause("run-stages").await;
    if let Some(inbox) = &req.inbox {
        lease.ensure_held()?;
        let t = Instant::now();
        let ingested = ingest::run(
            lake,
            cfg,
            IngestRequest {
                inputs: vec![inbox.clone()],
                source: req.source.clone(),
                format: InputFormat::Auto,
                force: false,
                inbox: true,
                drop_pii: false,
                lease_held: true,
                min_file_age: req.min_file_age,
                ignore: req.ignore.clone(),
            },
            printer,
        )
        .await?;
        // Over the gate, the valid rows still go on through clean and build; the run fails
        // (exit 1) at the end, as for a failing check.
        let mut ingested = ingested;
        *gate = ingested.apply_gate(req.max_quarantined);
        summary.ingest = Some(ingested);
        summary
            .stage_seconds
            .push(("ingest", t.elapsed().as_secs_f64()));
    }

    lease.ensure_held()?;
    let t = Instant::now();
    summary.clean = Some(
        clean::run(
            lake,
            cfg,
            CleanRequest {
                full_refresh: false,
            },
            printer,
        )
        .await?,
    );
    summary
        .stage_seconds
        .push(("clean", t.elapsed().as_secs_f64()));

    lease.ensure_held()?;
    let t = Instant::now();
    summary.build = Some(
        build::run(
            lake,
            cfg,
            BuildRequest {
                full_refresh: false,
                as_of: None,
            },
            printer,
        )
        .await?,
    );
    summary
        .stage_seconds
        .push(("build", t.elapsed().as_secs_f64()));

    if req.check {
        let t = Instant::now();
        summary.check = Some(
            check::run(
                lake,
                cfg,
                cfg.build.checks_dir.as_deref(),
                check::Selection::default(),
                true,
            )
            .await?,
        );
        summary
            .stage_seconds
            .push(("check", t.elapsed().as_secs_f64()));
    }

    // Once a day (by default), the files compaction and rewrites replaced are deleted once no
    // version of the last 7 days references them, as `vacuum` does.
    if let Some(every) = cfg.run.vacuum_every {
        let t = Instant::now();
        let due = match crate::vacuum::last_vacuum(lake).await? {
            Some(last) => (Utc::now() - last).to_std().unwrap_or_default() >= every,
            None => true,
        };
        if due {
            lease.ensure_held()?;
            let retention = chrono::Duration::days(crate::vacuum::RETENTION_DAYS);
            let vacuumed = crate::vacuum::vacuum(lake, &[], retention, false).await?;
            let deleted: u64 = vacuumed.iter().map(|v| v.files_deleted).sum();
            crate::audit::record(
                lake,
                cfg,
                "vacuum",
                "success",
                &format!(
                    "by run {}: retain {}d: {deleted} files in {} tables",
                    summary.run_id,
                    crate::vacuum::RETENTION_DAYS,
                    vacuumed.len()
                ),
            )
            .await?;
            summary.vacuum = Some(vacuumed);
            summary
                .stage_seconds
                .push(("vacuum", t.elapsed().as_secs_f64()));
        }
    }

    // Last, so a slow compaction never delays the data, and after the vacuum, whose audit row is
    // one more small file: every tick adds small files to the tables it touches, and a lake
    // nobody compacts gets slower with every tick.
    if req.compact_min_files > 0 {
        lease.ensure_held()?;
        let t = Instant::now();
        let settings = crate::compaction::Settings {
            // Validated with the config.
            target: std::num::NonZeroU64::new(cfg.ingest.target_file_size)
                .unwrap_or(std::num::NonZeroU64::MIN),
            min_files: req.compact_min_files,
        };
        summary.compact = Some(crate::compaction::compact(lake, cfg, &[], settings).await?);
        summary
            .stage_seconds
            .push(("compact", t.elapsed().as_secs_f64()));
    }
    Ok(())
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One row of `_runs`, in the table's column order.
#[derive(Serialize)]
struct RunRecord<'a> {
    run_id: &'a str,
    started_at: String,
    finished_at: String,
    seconds: f64,
    outcome: &'a str,
    error: Option<&'a str>,
    holder: &'a str,
    inbox: Option<&'a str>,
    files_ingested: Option<u64>,
    lines_read: Option<u64>,
    rows_landed: Option<u64>,
    rows_quarantined: Option<u64>,
    ingest_seconds: Option<f64>,
    clean_mode: Option<&'a str>,
    raw_rows_consumed: Option<u64>,
    events_written: Option<u64>,
    clean_seconds: Option<f64>,
    build_mode: Option<&'a str>,
    tables_built: Option<u64>,
    build_seconds: Option<f64>,
    checks_passed: Option<u64>,
    checks_failed: Option<u64>,
    check_seconds: Option<f64>,
    summary: String,
}

async fn append_record(
    lake: &Lake,
    cfg: &Config,
    s: &RunSummary,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
) -> Result<()> {
    let stage = |name: &str| {
        s.stage_seconds
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, secs)| *secs)
    };
    let record = RunRecord {
        run_id: &s.run_id,
        started_at: started_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        finished_at: finished_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        seconds: s.seconds,
        outcome: s.outcome,
        error: s.error.as_deref(),
        holder: &s.holder,
        inbox: s.inbox.as_deref(),
        files_ingested: s.ingest.as_ref().map(|i| i.files_read),
        lines_read: s.ingest.as_ref().map(|i| i.lines),
        rows_landed: s.ingest.as_ref().map(|i| i.landed),
        rows_quarantined: s.ingest.as_ref().map(|i| i.quarantined),
        ingest_seconds: stage("ingest"),
        clean_mode: s.clean.as_ref().map(|c| c.mode),
        raw_rows_consumed: s.clean.as_ref().map(|c| c.raw_rows_consumed),
        events_written: s.clean.as_ref().map(|c| c.events_written),
        clean_seconds: stage("clean"),
        build_mode: s.build.as_ref().map(|b| b.mode),
        tables_built: s
            .build
            .as_ref()
            .map(|b| b.tables.iter().filter(|t| t.mode != "up_to_date").count() as u64),
        build_seconds: stage("build"),
        checks_passed: s.check.as_ref().map(|c| c.passed),
        checks_failed: s.check.as_ref().map(|c| c.failed),
        check_seconds: stage("check"),
        summary: serde_json::to_string(s).map_err(|e| Error::runtime(format!("_runs: {e}")))?,
    };
    let schema = (RUNS.schema)();
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone()).build_decoder()?;
    decoder.serialize(&[record])?;
    let batch = decoder
        .flush()?
        .ok_or_else(|| Error::runtime("_runs: no row was produced"))?;
    let mut table = catalog::ensure_table(lake, &RUNS).await?;
    let metadata = HashMap::from([(
        "clicklake.run_id".to_string(),
        serde_json::Value::String(s.run_id.clone()),
    )]);
    delta::append_batch(&mut table, batch, cfg, metadata).await?;
    Ok(())
}

/// The last run recorded in `_runs`, for `status`.
#[derive(Debug, Serialize, Clone)]
pub struct LastRun {
    pub run_id: String,
    pub started_at: String,
    pub finished_at: String,
    pub seconds: f64,
    pub outcome: String,
    pub error: Option<String>,
    /// When the latest run that succeeded finished.
    pub last_success_at: Option<String>,
}

pub async fn last_run(lake: &Lake, memory_limit: u64) -> Result<Option<LastRun>> {
    let Some(table) = lake.open_table(RUNS.name).await? else {
        return Ok(None);
    };
    let ctx = catalog::session(memory_limit)?;
    catalog::register(&ctx, "runs", &table).await?;
    let sql = "SELECT run_id, \
                      to_char(started_at, '%Y-%m-%dT%H:%M:%S%.3fZ') AS started, \
                      to_char(finished_at, '%Y-%m-%dT%H:%M:%S%.3fZ') AS finished, \
                      seconds, outcome, error, \
                      (SELECT to_char(max(finished_at), '%Y-%m-%dT%H:%M:%S%.3fZ') FROM runs \
                       WHERE outcome = 'success') AS last_success \
               FROM runs ORDER BY finished_at DESC LIMIT 1";
    let batches = ctx.sql(sql).await?.collect().await?;
    let Some(b) = batches.into_iter().find(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    let text = |i: usize| -> Result<Option<String>> {
        Ok(catalog::strings(b.column(i))?.into_iter().next().flatten())
    };
    let seconds = arrow::compute::cast(b.column(3), &arrow::datatypes::DataType::Float64)?;
    let seconds = seconds
        .as_any()
        .downcast_ref::<arrow::array::Float64Array>()
        .map(|a| a.value(0))
        .unwrap_or_default();
    Ok(Some(LastRun {
        run_id: text(0)?.unwrap_or_default(),
        started_at: text(1)?.unwrap_or_default(),
        finished_at: text(2)?.unwrap_or_default(),
        seconds,
        outcome: text(4)?.unwrap_or_default(),
        error: text(5)?,
        last_success_at: text(6)?,
    }))
}
