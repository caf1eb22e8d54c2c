//! Ingest: validate raw events and land them exactly once per source file.
//!
//! For each group of input files (about `commit_every` bytes), the pipeline parses and validates
//! every line; valid rows stream into `raw_events` data files, rejected rows into `quarantine`
//! data files. Then, in this order:
//!
//! ```text
//!  1. commit quarantine   adds + txn "clicklake/file/<key>" = v   (per file)
//!  2. commit raw_events   adds + txn "clicklake/file/<key>" = v   (per file)
//!                         + txn "clicklake/tail/<inode>/…"        (how far a local file was read)
//!  3. commit ingested_files  one row per file (the load history; a cache of 1+2)
//! ```
//!
//! A file is done when raw_events holds its marker at a version ≥ quarantine's. A run killed
//! between 1 and 2 re-lands only the valid rows on the next run; one killed between 2 and 3 only
//! re-records the history row (marked `recovered`). Data files of a killed run are never
//! referenced by a commit. `--force` lands a file again with the next marker version.

pub mod dry_run;
pub mod input;
pub mod json_array;
pub mod parse;
pub mod pipeline;
pub mod reason;
pub mod source;
mod values;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    Array, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::prelude::SessionContext;
use deltalake::kernel::{Add, Transaction};
use deltalake::DeltaTable;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::catalog::{self, INGESTED_FILES, QUARANTINE, RAW_EVENTS};
use crate::cli::InputFormat;
use crate::config::{Config, QuarantineLimit};
use crate::delta;
use crate::error::{Error, Result};
use crate::fault;
use crate::printer::Printer;
use crate::storage::Lake;
use input::InputFile;
use parse::{LineStats, ParseSettings, SegmentResolver};
use reason::Reason;

/// What a user asked `ingest` to do, validated.
pub struct IngestRequest {
    pub inputs: Vec<String>,
    pub source: String,
    pub format: InputFormat,
    pub force: bool,
    /// The inputs are an inbox polled by `run`: finding no file there is normal, not an error.
    pub inbox: bool,
    /// Store personal e-mail and ip values as NULL instead of pseudonymising them.
    pub drop_pii: bool,
    /// The caller holds the lake's lease (`run`); otherwise each group's commits take it.
    pub lease_held: bool,
    /// Listed files written more recently than this are left for a later run.
    pub min_file_age: std::time::Duration,
    /// Listed files whose name matches one of these are left out.
    pub ignore: Vec<glob::Pattern>,
}

/// Keeps an ingest's commits apart from erasures. `run` and `erase` hold the lake's lease from
/// start to end; a lone ingest takes it only around each group's commits, so concurrent ingests
/// still read and parse side by side. Under it the ingest checks that no erasure was recorded
/// since it read the erased identities: rows it parsed before that would land a person who was
/// just erased everywhere else.
struct CommitGuard {
    lease_held: bool,
    /// The `erasures` version landing read the erased identities from.
    erasures_version: Option<u64>,
}

impl CommitGuard {
    async fn enter(&self, lake: &Lake, cfg: &Config) -> Result<Option<crate::lease::Lease>> {
        if self.lease_held {
            return Ok(None);
        }
        let id = format!("ingest-{}", uuid::Uuid::new_v4().simple());
        // Other ingests hold it for a moment; a `run` or an erasure for longer.
        let lease =
            crate::lease::Lease::acquire(lake, &id, cfg.run.lease_ttl, Some(cfg.run.lease_ttl))
                .await?;
        let now = match lake.open_table(catalog::ERASURES.name).await? {
            Some(t) => t.version(),
            None => None,
        };
        if now != self.erasures_version {
            let _ = lease.release().await;
            return Err(Error::Conflict(
                "an erasure was recorded while this ingest ran, so rows it parsed may belong to \
                 the erased person: this group was not committed; run the ingest again (it \
                 refuses their rows)"
                    .into(),
            ));
        }
        Ok(Some(lease))
    }
}

#[derive(Debug, Serialize, Default)]
pub struct FileSummary {
    pub source_file: String,
    pub status: &'static str,
    pub lines: u64,
    pub blank_lines: u64,
    pub landed: u64,
    pub quarantined: u64,
    /// Rows beyond one per line (a source mapping's one row per product).
    pub extra_rows: u64,
    pub bytes: u64,
    /// A file read before that has grown: the line its appended part starts at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_line: Option<u64>,
}

impl FileSummary {
    /// A file this ingest did not read, and why (`status`).
    fn unread(file: &InputFile, status: &'static str) -> FileSummary {
        FileSummary {
            source_file: file.display.clone(),
            status,
            bytes: file.size.unwrap_or(0),
            ..Default::default()
        }
    }
}

#[derive(Debug, Serialize, Default)]
pub struct IngestSummary {
    pub batch_id: String,
    /// The source mapping the files were read with (`native` for the canonical format).
    pub source: String,
    pub files_read: u64,
    pub files_skipped: u64,
    /// Files left for a later run: written less than `min_file_age` ago.
    pub files_waiting: u64,
    /// Files read before that have grown, of which only the appended lines were read.
    pub files_appended: u64,
    /// Files found by listing that `[ingest] ignore` / `--ignore` left out.
    pub files_ignored: u64,
    /// Compressed copies of logs read before (logrotate's `compress`), of which only the lines
    /// after those read from the log were read.
    pub files_compressed_copies: u64,
    pub lines: u64,
    pub blank_lines: u64,
    pub landed: u64,
    pub quarantined: u64,
    pub quarantined_by_reason: BTreeMap<String, u64>,
    /// Rows beyond one per line (a source mapping's one row per product).
    pub extra_rows: u64,
    /// Rows of people erased earlier: counted, never stored.
    pub erased: u64,
    /// Values removed by `[privacy] allowed_columns`.
    pub dropped_values: u64,
    /// lines + extra_rows == landed + quarantined + blank_lines + erased
    pub balanced: bool,
    pub partitions_written: u64,
    pub data_files_written: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub seconds: f64,
    pub rows_per_sec: f64,
    pub mb_per_sec: f64,
    pub raw_events_version: Option<i64>,
    pub quarantine_version: Option<i64>,
    /// Rows quarantined as invalid: every reason but those a source mapping chooses on purpose
    /// (`rejected_by_source`, `unmapped_line`). The quarantine gate counts these.
    pub invalid: u64,
    /// The quarantine gate applied to this batch (`0`, `1%`), if any.
    pub max_quarantined: Option<String>,
    /// The batch had more invalid rows than `max_quarantined` allows (exit 1).
    pub over_max_quarantined: bool,
    pub files: Vec<FileSummary>,
}

/// Reasons a source mapping gives on purpose (an app outside the allow-list, a GA4 event it
/// ignores): filtering, not bad data.
const CHOSEN_BY_SOURCE: [Reason; 2] = [Reason::RejectedBySource, Reason::UnmappedLine];

impl IngestSummary {
    /// The data-quality gate: with a limit, records it, and when the batch's invalid rows are
    /// over it returns the one line to fail with (the rows have landed; exit 1, like a check).
    pub fn apply_gate(&mut self, limit: Option<QuarantineLimit>) -> Option<String> {
        let limit = limit?;
        self.max_quarantined = Some(limit.to_string());
        let rows = self.landed + self.quarantined;
        if !limit.exceeded(self.invalid, rows) {
            return None;
        }
        self.over_max_quarantined = true;
        let chosen = CHOSEN_BY_SOURCE.map(|r| r.code());
        let mut reasons: Vec<(&String, &u64)> = self
            .quarantined_by_reason
            .iter()
            .filter(|(r, _)| !chosen.contains(&r.as_str()))
            .collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let reasons = reasons
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let outcome = if self.batch_id == dry_run::BATCH_ID {
            "a dry run: nothing was written".to_string()
        } else {
            format!(
                "the valid rows landed, the rest are in quarantine (batch_id = '{}')",
                self.batch_id
            )
        };
        Some(format!(
            "{} of {} rows quarantined as invalid ({:.2}%), more than max_quarantined {limit} \
             allows: {reasons}; {outcome}",
            self.invalid,
            rows,
            100.0 * self.invalid as f64 / rows.max(1) as f64,
        ))
    }
}

/// How much of a file still has to land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Rows to both tables.
    Full,
    /// Quarantine already committed (a run died between the two commits): valid rows only.
    RawOnly,
}

struct Planned {
    file: InputFile,
    mode: Mode,
    version: i64,
}

pub fn app_id(key: &str) -> String {
    format!("clicklake/file/{key}")
}

/// The primary segment of every registered customer, from `dim_user` as last built: the
/// `segment` partition their new rows land in (`unsegmented` before any build, or for a user in
/// no segment; `anonymous` for rows without a user_id).
async fn load_segments(lake: &Lake) -> Result<SegmentResolver> {
    let Some(dim_user) = lake.open_table("dim_user").await? else {
        return Ok(SegmentResolver::default());
    };
    let ctx = catalog::session(256 << 20)?;
    catalog::register(&ctx, "dim_user", &dim_user).await?;
    let batches = ctx
        .sql(
            "SELECT user_id, primary_segment FROM dim_user \
             WHERE user_id IS NOT NULL AND primary_segment IS NOT NULL",
        )
        .await?
        .collect()
        .await?;
    let mut by_user = HashMap::new();
    for b in batches {
        let users = catalog::utf8(b.column(0))?;
        let segments = catalog::utf8(b.column(1))?;
        for (u, s) in users.iter().zip(segments.iter()) {
            if let (Some(u), Some(s)) = (u, s) {
                by_user.insert(u.to_string(), s.to_string());
            }
        }
    }
    Ok(SegmentResolver::new(by_user))
}

/// The load history: file key → (batch id) for every recorded file, and the local paths read
/// before (a grown one may be read from where the last ingest stopped).
async fn load_registry(
    ctx: &SessionContext,
    table: &DeltaTable,
) -> Result<(HashMap<String, String>, HashSet<String>)> {
    catalog::register(ctx, INGESTED_FILES.name, table).await?;
    let batches = ctx
        .sql("SELECT file_key, batch_id, source_file FROM ingested_files")
        .await?
        .collect()
        .await?;
    let mut out = HashMap::new();
    let mut paths = HashSet::new();
    for b in batches {
        let keys = crate::catalog::strings(b.column(0))?;
        let ids = crate::catalog::strings(b.column(1))?;
        let files = crate::catalog::strings(b.column(2))?;
        for ((k, id), f) in keys.into_iter().zip(ids).zip(files) {
            if let Some(k) = k {
                out.insert(k, id.unwrap_or_default());
            }
            if let Some(f) = f.filter(|f| f.starts_with('/')) {
                paths.insert(f.to_string());
            }
        }
    }
    Ok((out, paths))
}

/// What an earlier ingest recorded, with its `raw_events` commit, about how far it read a plain
/// local file: two Delta application transactions keyed by the file's device and inode,
/// committed atomically with the rows they account for (`tail_txns`). Two, not four: every
/// marker stays in the table's checkpoints for good.
#[derive(Clone, Copy, Debug)]
struct TailMarks {
    /// The bytes read.
    end: u64,
    /// Lines before the resume point.
    lines: u64,
    /// The last line had no line end and was not whole: read again from its start.
    held_back: bool,
    /// The low `FINGERPRINT_BITS` of `input::fingerprint` at `end`.
    fingerprint: i64,
}

const FINGERPRINT_BITS: u32 = 23;
const FINGERPRINT_MASK: i64 = (1 << FINGERPRINT_BITS) - 1;

impl TailMarks {
    /// `end`, and the lines, the held-back flag and the fingerprint packed in one version:
    /// lines (up to 2^39) << 24 | held << 23 | 23 bits of fingerprint.
    fn pack(&self) -> (i64, i64) {
        let packed = ((self.lines as i64) << (FINGERPRINT_BITS + 1))
            | (i64::from(self.held_back) << FINGERPRINT_BITS)
            | (self.fingerprint & FINGERPRINT_MASK);
        (self.end as i64, packed)
    }

    fn unpack(end: i64, packed: i64) -> Option<TailMarks> {
        if end < 0 || packed < 0 {
            return None;
        }
        Some(TailMarks {
            end: end as u64,
            lines: (packed >> (FINGERPRINT_BITS + 1)) as u64,
            held_back: (packed >> FINGERPRINT_BITS) & 1 == 1,
            fingerprint: packed & FINGERPRINT_MASK,
        })
    }
}

const TAIL_APP_PREFIX: &str = "clicklake/tail/";

/// The status of a file found to be a compressed copy of a log read before.
const COMPRESSED_COPY: &str =
    "ingested: the lines after those read from the log it is a compressed copy of";

fn tail_app_ids(identity: input::FileIdentity) -> [String; 2] {
    let base = format!("{TAIL_APP_PREFIX}{}", identity.key());
    [format!("{base}/end"), format!("{base}/lines")]
}

/// What earlier ingests read of every plain local file, from their tail markers (read in one
/// pass; none when the markers were looked up one by one).
fn every_read_before(raw: &delta::Markers<'_>) -> Vec<input::ReadBefore> {
    let mut by_file: HashMap<&str, (Option<i64>, Option<i64>)> = HashMap::new();
    for (id, v) in raw.with_prefix(TAIL_APP_PREFIX) {
        if let Some(base) = id.strip_suffix("/end") {
            by_file.entry(base).or_default().0 = Some(v);
        } else if let Some(base) = id.strip_suffix("/lines") {
            by_file.entry(base).or_default().1 = Some(v);
        }
    }
    by_file
        .into_values()
        .filter_map(|(end, packed)| TailMarks::unpack(end?, packed?))
        .map(|m| input::ReadBefore {
            end: m.end,
            lines: m.lines,
            held_back: m.held_back,
            fingerprint: m.fingerprint,
        })
        .collect()
}

/// Whether a compressed local file is named like a rotated copy of a plain file read before:
/// `app.log.1.gz`, `app.log-20261128.gz` or `app.log.gz` after an `app.log` in any directory
/// (logrotate's `olddir` moves the copies elsewhere). `names_read` holds the file names of the
/// paths read before; a name alike is only a candidate, compared by content.
fn named_like_a_rotation(path: &str, names_read: &HashSet<&str>) -> bool {
    let compressed = [".gz", ".zst"];
    if !compressed.iter().any(|ext| path.ends_with(ext)) {
        return false;
    }
    let name = file_name(path);
    // The plain file's name is the start of this one's, up to a `.`, `-` or `_`: a look-up per
    // such place, whatever the number of paths read before.
    name.match_indices(['.', '-', '_']).any(|(i, _)| {
        let plain = &name[..i];
        !plain.is_empty()
            && !compressed.iter().any(|ext| plain.ends_with(ext))
            && names_read.contains(plain)
    })
}

/// The last component of a path (the whole of it when it has none).
fn file_name(path: &str) -> &str {
    std::path::Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(path)
}

async fn tail_marks(
    raw: &delta::Markers<'_>,
    identity: input::FileIdentity,
) -> Result<Option<TailMarks>> {
    let [end, packed] = tail_app_ids(identity);
    let (end, packed) = futures::try_join!(raw.get(&end), raw.get(&packed))?;
    Ok(match (end, packed) {
        (Some(end), Some(packed)) => TailMarks::unpack(end, packed),
        _ => None,
    })
}

/// The markers that let the next ingest of a grown file read only what was appended.
fn tail_txns(st: &FileState) -> Vec<Transaction> {
    let Some(tail) = &st.tail else {
        return Vec::new();
    };
    let marks = TailMarks {
        end: tail.end,
        lines: tail.lines,
        held_back: tail.consumed < tail.end,
        fingerprint: tail.fingerprint,
    };
    let (end, packed) = marks.pack();
    let [end_id, packed_id] = tail_app_ids(tail.identity);
    vec![
        Transaction::new(end_id, end),
        Transaction::new(packed_id, packed),
    ]
}

/// How a local file read before relates to what was read of it.
#[derive(Debug, PartialEq, Eq)]
enum Growth {
    /// A new file (or one rewritten, truncated or rotated): read all of it.
    New,
    /// The same bytes as read before and nothing more (touched, or copied over itself).
    Unchanged,
    /// The bytes read before, then more: read from where the last ingest stopped.
    Appended(input::Resume),
}

/// A compressed copy of a log read before (see [`input::read_before_in`]): read on from where
/// that log was read to. Decompresses the file's start on a blocking thread.
async fn compressed_copy(file: &InputFile, read_before: &Arc<Vec<input::ReadBefore>>) -> Growth {
    let input::Location::Local(path) = &file.location else {
        return Growth::New;
    };
    let (path, read_before) = (path.clone(), read_before.clone());
    let found = tokio::task::spawn_blocking(move || {
        input::read_before_in(&path, &read_before, FINGERPRINT_MASK)
    })
    .await;
    match found {
        Ok(Some((_, resume))) => Growth::Appended(resume),
        _ => Growth::New,
    }
}

fn growth(file: &InputFile, marks: Option<(input::FileIdentity, TailMarks)>) -> Growth {
    let (Some((identity, m)), input::Location::Local(path), Some(size)) =
        (marks, &file.location, file.size)
    else {
        return Growth::New;
    };
    let end = m.end;
    let Some(file) = input::Reopened::open(path, identity) else {
        return Growth::New;
    };
    let same = file.fingerprint(end).map(|f| f & FINGERPRINT_MASK);
    if end == 0 || end > size || same != Some(m.fingerprint) {
        return Growth::New;
    }
    if end == size {
        return Growth::Unchanged;
    }
    // A last line held back is read again from its start.
    let consumed = match m.held_back {
        true => file.line_start(end).unwrap_or(0),
        false => end,
    };
    if consumed == 0 {
        // All that was read is one line cut mid-write: read it all again.
        return Growth::New;
    }
    Growth::Appended(input::Resume {
        offset: consumed,
        next_line: m.lines + 1,
        after_unterminated: file.byte_at(consumed - 1).is_some_and(|b| b != b'\n'),
        identity,
        compressed: false,
    })
}

/// The privacy treatment of this run: the configured personal columns, the key, the allow-list
/// and the pseudonyms of everyone erased so far; and the `erasures` version they were read from.
async fn landing(
    lake: &Lake,
    cfg: &Config,
    drop_pii: bool,
) -> Result<(crate::privacy::Landing, Option<u64>)> {
    let p = &cfg.privacy;
    let mut erased = std::collections::HashSet::new();
    let mut erasures_version = None;
    if let Some(table) = lake.open_table(catalog::ERASURES.name).await? {
        erasures_version = table.version();
        let ctx = catalog::session(256 << 20)?;
        catalog::register(&ctx, catalog::ERASURES.name, &table).await?;
        let batches = ctx
            .sql("SELECT identities FROM erasures")
            .await?
            .collect()
            .await?;
        for b in &batches {
            for ids in catalog::strings(b.column(0))?.into_iter().flatten() {
                let list: Vec<String> = serde_json::from_str(&ids).map_err(|e| {
                    Error::runtime(format!("erasures.identities is not a JSON list: {e}"))
                })?;
                erased.extend(list);
            }
        }
        if !erased.is_empty() && p.key.is_none() {
            return Err(Error::usage(
                "this lake has erasures, applied at landing with the pseudonymisation key: set \
                 CLICKLAKE_PII_KEY (or [privacy] key_file)",
            ));
        }
    }
    Ok((landing_of(cfg, drop_pii, erased), erasures_version))
}

/// The configured treatment of personal columns, with the pseudonyms of the people erased.
fn landing_of(cfg: &Config, drop_pii: bool, erased: HashSet<String>) -> crate::privacy::Landing {
    let p = &cfg.privacy;
    crate::privacy::Landing {
        key: p.key.clone(),
        drop_pii,
        email: p.email,
        ip: p.ip,
        user_id: p.user_id,
        ip_mode: Some(p.ip_mode),
        allowed: p
            .allowed_columns
            .as_ref()
            .map(|c| c.iter().cloned().collect()),
        erased,
    }
}

/// The request's source mapping, the files its inputs name (those `ignore` leaves out taken
/// away), and how many were left out.
async fn source_and_files(
    lake: &Lake,
    cfg: &Config,
    req: &IngestRequest,
) -> Result<(Option<Arc<source::Source>>, Vec<InputFile>, u64)> {
    let source = source::load(
        &req.source,
        cfg.ingest.sources_dir.as_deref(),
        &cfg.ingest.sources,
    )
    .await?;
    let mut files = input::discover(&req.inputs, lake, req.format, req.inbox).await?;
    let found = files.len();
    files.retain(|f| !f.listed || !req.ignore.iter().any(|p| p.matches(f.name())));
    let ignored = (found - files.len()) as u64;
    Ok((source, files, ignored))
}

/// How every chunk of one ingest is parsed and validated.
fn parse_settings(
    cfg: &Config,
    batch_id: &str,
    now_us: i64,
    segments: SegmentResolver,
    source: Option<Arc<source::Source>>,
    privacy: crate::privacy::Landing,
) -> Arc<ParseSettings> {
    Arc::new(ParseSettings {
        batch_id: Arc::from(batch_id),
        ingested_at_us: now_us,
        max_future_skew_us: cfg.ingest.max_future_skew.as_micros().min(i64::MAX as u128) as i64,
        max_past_skew_us: cfg.ingest.max_past_skew.as_micros().min(i64::MAX as u128) as i64,
        segments: Arc::new(segments),
        raw_schema: (RAW_EVENTS.schema)(),
        quarantine_schema: (QUARANTINE.schema)(),
        source,
        privacy: Arc::new(privacy),
    })
}

#[tracing::instrument(name = "ingest", skip_all, fields(inputs = req.inputs.len(), force = req.force))]
pub async fn run(
    lake: &Lake,
    cfg: &Config,
    req: IngestRequest,
    printer: &Printer,
) -> Result<IngestSummary> {
    let started = Instant::now();
    let (source, files, ignored) = source_and_files(lake, cfg, &req).await?;
    if files.is_empty() && req.inbox {
        return Ok(IngestSummary::default());
    }
    if files.is_empty() {
        return Err(Error::usage("no input files found"));
    }
    tracing::info!(files = files.len(), "inputs discovered");
    crate::pause("ingest-after-discovery").await;

    lake.ensure_root()?;
    let mut raw = catalog::ensure_table(lake, &RAW_EVENTS).await?;
    let mut quarantine = catalog::ensure_table(lake, &QUARANTINE).await?;
    let mut registry = catalog::ensure_table(lake, &INGESTED_FILES).await?;
    let ctx = catalog::session(cfg.memory_limit)?;
    let (known, paths_read) = load_registry(&ctx, &registry).await?;

    let now = chrono::Utc::now();
    let batch_id = format!(
        "{}-{}",
        now.format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut summary = IngestSummary {
        batch_id: batch_id.clone(),
        source: req.source.clone(),
        files_ignored: ignored,
        ..Default::default()
    };

    let (plan, heal) = plan_reads(
        files,
        &req,
        &known,
        &paths_read,
        (&raw, &quarantine),
        &mut summary,
    )
    .await?;
    if !heal.is_empty() {
        let rows: Vec<RegistryRow> = heal
            .iter()
            .map(|(f, _)| RegistryRow::recovered(f, &batch_id, now.timestamp_micros()))
            .collect();
        append_registry(&mut registry, &rows, cfg).await?;
    }

    crate::pause("ingest-after-plan").await;
    let (privacy, erasures_version) = landing(lake, cfg, req.drop_pii).await?;
    let guard = CommitGuard {
        lease_held: req.lease_held,
        erasures_version,
    };
    let settings = parse_settings(
        cfg,
        &batch_id,
        now.timestamp_micros(),
        load_segments(lake).await?,
        source,
        privacy,
    );

    let groups = commit_groups(plan, cfg.ingest.commit_every);

    let total_bytes: u64 = groups.iter().flatten().map(|p| p.file.to_read()).sum();
    let progress = printer.bytes_progress(total_bytes, "ingest");
    let mut partitions: BTreeSet<Vec<(String, Option<String>)>> = BTreeSet::new();
    let mut stats_total = LineStats::default();

    for (n, group) in groups.into_iter().enumerate() {
        tracing::info!(group = n + 1, files = group.len(), "ingesting group");
        progress.set_prefix(format!("{} file(s)", group.len()));
        let result = run_group(
            group,
            &settings,
            lake,
            &guard,
            cfg,
            &mut raw,
            &mut quarantine,
            &mut registry,
            &progress,
            &known,
            req.force,
        )
        .await?;
        for f in result.files {
            summary.files.push(f);
        }
        stats_total.merge(&result.stats);
        summary.files_read += result.files_read;
        summary.files_skipped += result.files_skipped;
        summary.bytes_read += result.bytes_read;
        summary.bytes_written += result.bytes_written;
        summary.data_files_written += result.data_files;
        partitions.extend(result.partitions);
        if result.raw_version.is_some() {
            summary.raw_events_version = result.raw_version;
        }
        if result.quarantine_version.is_some() {
            summary.quarantine_version = result.quarantine_version;
        }
    }
    progress.finish_and_clear();

    summary.files_appended = summary
        .files
        .iter()
        .filter(|f| f.from_line.is_some() && f.status != COMPRESSED_COPY)
        .count() as u64;
    summary.files_compressed_copies = summary
        .files
        .iter()
        .filter(|f| f.status == COMPRESSED_COPY)
        .count() as u64;
    summary.partitions_written = partitions.len() as u64;
    summary.add_totals(&stats_total, started)?;
    Ok(summary)
}

/// A file to read whole or from where it was read, and a file already landed whose registry
/// row is missing (an ingest cut off after its commits), with the version that landed it.
type Reads = (Vec<Planned>, Vec<(InputFile, i64)>);

/// Decides, per file, what still has to land: files already ingested, still being written or
/// unchanged are counted in `summary` and left out; a grown log is read from where it was read, a
/// compressed copy of one from where that log was read.
async fn plan_reads(
    files: Vec<InputFile>,
    req: &IngestRequest,
    known: &HashMap<String, String>,
    paths_read: &HashSet<String>,
    (raw, quarantine): (&DeltaTable, &DeltaTable),
    summary: &mut IngestSummary,
) -> Result<Reads> {
    let settled = std::time::SystemTime::now() - req.min_file_age;
    let mut pending: Vec<InputFile> = Vec::new();
    for file in files {
        if let Some(key) = &file.key {
            if known.contains_key(key) && !req.force {
                summary.files_skipped += 1;
                summary
                    .files
                    .push(FileSummary::unread(&file, "skipped: already ingested"));
                continue;
            }
        }
        // A producer may still be writing a file it has just put in a directory: read now, its
        // first half would land, then all of it again once it changed (a new identity).
        if file.listed && !req.min_file_age.is_zero() && file.modified.is_some_and(|m| m > settled)
        {
            summary.files_waiting += 1;
            summary.files.push(FileSummary::unread(
                &file,
                "waiting: written less than min_file_age ago",
            ));
            continue;
        }
        pending.push(file);
    }
    // A new file's markers in raw_events and quarantine say whether an earlier ingest crashed
    // after committing some of it; a local file read before may have grown, and its tail
    // markers say how far it was read. All are read once per table (see `delta::Markers`).
    let (raw_markers, quarantine_markers) = match pending.is_empty() {
        // An idle tick: every file is known, nothing to look up.
        true => (delta::Markers::none(raw), delta::Markers::none(quarantine)),
        false => futures::try_join!(delta::Markers::load(raw), delta::Markers::load(quarantine))?,
    };
    tracing::debug!(
        indexed = raw_markers.indexed() && quarantine_markers.indexed(),
        "txn markers read"
    );
    let (raw_ref, quarantine_ref, paths_ref) = (&raw_markers, &quarantine_markers, paths_read);
    let force = req.force;
    type LookedUp = (
        InputFile,
        Option<i64>,
        Option<i64>,
        Option<(input::FileIdentity, TailMarks)>,
    );
    let looked_up: Vec<LookedUp> = futures::stream::iter(pending)
        .map(|file| async move {
            let Some(key) = file.key.as_deref().map(app_id) else {
                return Ok((file, None, None, None));
            };
            // By inode: a log renamed by rotation is read on from where it was read, under
            // its new name. Without the index, only for paths read before (look-ups cost).
            let identity = match &file.location {
                input::Location::Local(path) if !force => input::FileIdentity::of_path(path)
                    .filter(|_| raw_ref.indexed() || paths_ref.contains(&file.display)),
                _ => None,
            };
            let tail = async {
                match identity {
                    Some(id) => Ok(tail_marks(raw_ref, id).await?.map(|m| (id, m))),
                    None => Ok(None),
                }
            };
            let (r, q, tail) =
                futures::try_join!(raw_ref.get(&key), quarantine_ref.get(&key), tail)?;
            Ok::<_, Error>((file, r, q, tail))
        })
        .buffered(16)
        .try_collect()
        .await?;
    // Compressed files named like a rotation of a log read before may hold its lines: what was
    // read of every log is a candidate (tail markers are keyed by inode, not name).
    let names_read: HashSet<&str> = paths_read.iter().map(|p| file_name(p)).collect();
    let any_rotation = looked_up
        .iter()
        .any(|(file, ..)| named_like_a_rotation(&file.display, &names_read));
    let read_before = Arc::new(match !req.force && any_rotation {
        true => every_read_before(&raw_markers),
        false => Vec::new(),
    });
    let mut plan: Vec<Planned> = Vec::new();
    let mut heal: Vec<(InputFile, i64)> = Vec::new();
    for (mut file, r, q, tail) in looked_up {
        if file.key.is_none() {
            // stdin: its identity is known once it has been read.
            plan.push(Planned {
                file,
                mode: Mode::Full,
                version: 1,
            });
            continue;
        }
        match (r, q, req.force) {
            (Some(rv), q, false) if rv >= q.unwrap_or(0) => {
                heal.push((file.clone(), rv));
                summary.files_skipped += 1;
                summary.files.push(FileSummary::unread(
                    &file,
                    "skipped: already ingested (history row recovered)",
                ));
            }
            (r, q, force) => {
                let mode = match (r, q, force) {
                    (r, Some(qv), false) if qv > r.unwrap_or(0) => Mode::RawOnly,
                    _ => Mode::Full,
                };
                let grown = match growth(&file, tail) {
                    Growth::New
                        if !read_before.is_empty()
                            && named_like_a_rotation(&file.display, &names_read) =>
                    {
                        compressed_copy(&file, &read_before).await
                    }
                    grown => grown,
                };
                match grown {
                    Growth::New => {}
                    Growth::Unchanged => {
                        summary.files_skipped += 1;
                        summary.files.push(FileSummary::unread(
                            &file,
                            "skipped: nothing appended since its last ingest",
                        ));
                        continue;
                    }
                    Growth::Appended(resume) => file.resume = Some(resume),
                }
                let version = match mode {
                    Mode::RawOnly => q.unwrap_or(1),
                    Mode::Full => r.unwrap_or(0).max(q.unwrap_or(0)) + 1,
                };
                plan.push(Planned {
                    file,
                    mode,
                    version,
                });
            }
        }
    }
    Ok((plan, heal))
}

/// Groups of about `commit_every` input bytes, each landed in one commit per table; stdin
/// always alone (its identity is known once it has been read).
fn commit_groups(plan: Vec<Planned>, commit_every: u64) -> Vec<Vec<Planned>> {
    let mut groups: Vec<Vec<Planned>> = Vec::new();
    let mut group_bytes = 0u64;
    for p in plan {
        let stdin = p.file.key.is_none();
        let size = p.file.to_read();
        let start_new = groups.is_empty()
            || stdin
            || groups
                .last()
                .is_some_and(|g| g.iter().any(|x| x.file.key.is_none()))
            || group_bytes + size > commit_every && group_bytes > 0;
        if start_new {
            groups.push(Vec::new());
            group_bytes = 0;
        }
        group_bytes += size;
        groups.last_mut().expect("a group").push(p);
    }
    groups
}

impl IngestSummary {
    /// The line accounting of every file read, and the speed; an error when a line is
    /// unaccounted for.
    fn add_totals(&mut self, stats_total: &LineStats, started: Instant) -> Result<()> {
        let summary = self;
        summary.lines = stats_total.lines;
        summary.blank_lines = stats_total.blank;
        summary.landed = stats_total.landed;
        summary.quarantined = stats_total.quarantined.total();
        summary.quarantined_by_reason = stats_total
            .quarantined
            .nonzero()
            .map(|(r, n)| (r.code().to_string(), n))
            .collect();
        summary.invalid = stats_total
            .quarantined
            .nonzero()
            .filter(|(r, _)| !CHOSEN_BY_SOURCE.contains(r))
            .map(|(_, n)| n)
            .sum();
        summary.extra_rows = stats_total.extra_rows;
        summary.erased = stats_total.erased;
        summary.dropped_values = stats_total.dropped_values;
        summary.balanced = stats_total.balanced();
        summary.seconds = started.elapsed().as_secs_f64();
        summary.rows_per_sec = summary.lines as f64 / summary.seconds.max(1e-9);
        summary.mb_per_sec = summary.bytes_read as f64 / 1e6 / summary.seconds.max(1e-9);
        if !summary.balanced {
            return Err(Error::runtime(format!(
            "line accounting is off: {} lines + {} extra rows != {} landed + {} quarantined + {} blank + {} erased",
            summary.lines, summary.extra_rows, summary.landed, summary.quarantined, summary.blank_lines, summary.erased
        )));
        }
        Ok(())
    }
}

#[derive(Default)]
struct GroupResult {
    files: Vec<FileSummary>,
    stats: LineStats,
    files_read: u64,
    files_skipped: u64,
    bytes_read: u64,
    bytes_written: u64,
    data_files: u64,
    partitions: BTreeSet<Vec<(String, Option<String>)>>,
    raw_version: Option<i64>,
    quarantine_version: Option<i64>,
}

#[derive(Default)]
struct FileState {
    stats: LineStats,
    chunks_seen: u64,
    /// How many chunks the reader cut the file into (known once it has read it all).
    chunks_sent: Option<u64>,
    raw_bytes: u64,
    content_hash: Option<String>,
    /// How far a plain local file was read (see `tail_txns`).
    tail: Option<input::TailEnd>,
    /// Deleted between being found and being read: not landed, not recorded.
    gone: bool,
}

/// Lands one group of files: parses them, writes raw and quarantine files, then commits each
/// table once (quarantine first) with every file's marker, then records the files.
#[allow(clippy::too_many_arguments)]
async fn run_group(
    group: Vec<Planned>,
    settings: &Arc<ParseSettings>,
    lake: &Lake,
    guard: &CommitGuard,
    cfg: &Config,
    raw: &mut DeltaTable,
    quarantine: &mut DeltaTable,
    registry: &mut DeltaTable,
    progress: &indicatif::ProgressBar,
    known: &HashMap<String, String>,
    force: bool,
) -> Result<GroupResult> {
    let Landed {
        state,
        raw_adds,
        q_adds,
    } = land(&group, settings, cfg, raw, quarantine, progress).await?;
    fault("after-data-files");
    crate::pause("ingest-after-data-files").await;

    // A file deleted before it was read has nothing to commit and is not recorded as ingested:
    // if it comes back, it is read then.
    let (kept, gone): (Vec<_>, Vec<_>) = group.into_iter().zip(state).partition(|(_, st)| !st.gone);
    let vanished: Vec<FileSummary> = gone
        .iter()
        .map(|(p, _)| {
            FileSummary::unread(
                &p.file,
                "vanished: deleted or renamed away before it was read",
            )
        })
        .collect();
    let (mut planned, state): (Vec<Planned>, Vec<FileState>) = kept.into_iter().unzip();
    if planned.is_empty() {
        return Ok(GroupResult {
            files: vanished,
            ..Default::default()
        });
    }
    if let Some(skipped) =
        resolve_stdin(&mut planned, &state, raw, quarantine, known, force).await?
    {
        return Ok(skipped);
    }
    let lease = guard.enter(lake, cfg).await?;
    let committed = commit_group(
        planned, state, raw_adds, q_adds, settings, cfg, raw, quarantine, registry,
    )
    .await
    .map(|mut result| {
        result.files.extend(vanished);
        result
    });
    if let Some(lease) = lease {
        if let Err(e) = lease.release().await {
            tracing::warn!("cannot release the lease (it lapses on its own): {e}");
        }
    }
    committed
}

/// Commits one landed group: quarantine, then raw_events, then the load history.
#[allow(clippy::too_many_arguments)]
async fn commit_group(
    planned: Vec<Planned>,
    state: Vec<FileState>,
    raw_adds: Vec<Add>,
    q_adds: Vec<Add>,
    settings: &Arc<ParseSettings>,
    cfg: &Config,
    raw: &mut DeltaTable,
    quarantine: &mut DeltaTable,
    registry: &mut DeltaTable,
) -> Result<GroupResult> {
    let keys: Vec<String> = planned
        .iter()
        .map(|p| p.file.key.clone().expect("resolved"))
        .collect();
    let batch = settings.batch_id.to_string();
    let bytes_written: u64 = raw_adds.iter().chain(&q_adds).map(|a| a.size as u64).sum();
    let data_files = (raw_adds.len() + q_adds.len()) as u64;
    let partitions: BTreeSet<Vec<(String, Option<String>)>> = raw_adds
        .iter()
        .map(|a| {
            let mut v: Vec<(String, Option<String>)> = a
                .partition_values
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            v.sort();
            v
        })
        .collect();
    let meta = |table: &str| {
        let files: Vec<serde_json::Value> = planned
            .iter()
            .zip(&state)
            .take(1000)
            .map(|(p, st)| {
                serde_json::json!({
                    "source_file": p.file.display,
                    "from_line": p.file.resume.map_or(1, |r| r.next_line),
                    "lines": st.stats.lines,
                    "landed": st.stats.landed,
                    "quarantined": st.stats.quarantined.total(),
                    "extra_rows": st.stats.extra_rows,
                })
            })
            .collect();
        HashMap::from([(
            "clicklake".to_string(),
            serde_json::json!({ "command": "ingest", "table": table, "batch_id": batch, "files": files }),
        )])
    };

    // Quarantine first: a file's raw marker is what says it was ingested, so a crash between
    // the commits leaves a file to complete (`Mode::RawOnly`), never one half-recorded.
    let q_txns: Vec<Transaction> = planned
        .iter()
        .zip(&keys)
        .filter(|(p, _)| p.mode == Mode::Full)
        .map(|(p, k)| Transaction::new(app_id(k), p.version))
        .collect();
    let quarantine_version = if !q_txns.is_empty() || !q_adds.is_empty() {
        let files = q_adds.len();
        let v = delta::commit_append(quarantine, q_adds, q_txns, meta("quarantine")).await?;
        tracing::info!(table = "quarantine", version = v, files, "committed");
        Some(v)
    } else {
        None
    };
    fault("after-quarantine-commit");
    let r_txns: Vec<Transaction> = planned
        .iter()
        .zip(&keys)
        .map(|(p, k)| Transaction::new(app_id(k), p.version))
        .chain(state.iter().flat_map(tail_txns))
        .collect();
    let raw_files = raw_adds.len();
    let raw_version = Some(delta::commit_append(raw, raw_adds, r_txns, meta("raw_events")).await?);
    tracing::info!(
        table = "raw_events",
        version = raw_version,
        files = raw_files,
        "committed"
    );
    fault("after-raw-commit");

    let now_us = settings.ingested_at_us;
    let rows: Vec<RegistryRow> = planned
        .iter()
        .zip(&state)
        .zip(&keys)
        .map(|((p, st), k)| RegistryRow {
            file_key: k.clone(),
            source_file: p.file.display.clone(),
            size_bytes: p.file.size.map(|s| s as i64),
            version_tag: p.file.version_tag.clone(),
            lines: Some(st.stats.lines as i64),
            blank_lines: Some(st.stats.blank as i64),
            landed: Some(st.stats.landed as i64),
            quarantined: Some(st.stats.quarantined.total() as i64),
            batch_id: batch.clone(),
            ingested_at: now_us,
            forced: p.version > 1 && p.mode == Mode::Full,
            recovered: p.mode == Mode::RawOnly,
        })
        .collect();
    append_registry(registry, &rows, cfg).await?;

    let mut stats = LineStats::default();
    let mut files = Vec::new();
    let mut bytes_read = 0;
    for (p, st) in planned.iter().zip(&state) {
        stats.merge(&st.stats);
        bytes_read += st.raw_bytes;
        files.push(FileSummary {
            source_file: p.file.display.clone(),
            status: match (p.mode, p.file.resume) {
                (Mode::Full, None) => "ingested",
                (Mode::Full, Some(r)) if r.compressed => COMPRESSED_COPY,
                (Mode::Full, Some(_)) => "ingested: the lines appended since its last ingest",
                (Mode::RawOnly, _) => "ingested (completed an interrupted run)",
            },
            from_line: p.file.resume.map(|r| r.next_line),
            lines: st.stats.lines,
            blank_lines: st.stats.blank,
            landed: st.stats.landed,
            quarantined: st.stats.quarantined.total(),
            extra_rows: st.stats.extra_rows,
            bytes: st.raw_bytes,
        });
    }
    Ok(GroupResult {
        files_read: planned.len() as u64,
        files_skipped: 0,
        files,
        stats,
        bytes_read,
        bytes_written,
        data_files,
        partitions,
        raw_version,
        quarantine_version,
    })
}

/// A group's files parsed and written, not yet committed: what each file held, and the data
/// files of each table.
struct Landed {
    state: Vec<FileState>,
    raw_adds: Vec<Add>,
    q_adds: Vec<Add>,
}

/// Parses the group's files on the pipeline's threads and writes their valid rows to raw_events
/// files (by partition) and their rejected lines to quarantine files. Fails, writing nothing
/// visible, unless every chunk of every file came back parsed.
async fn land(
    group: &[Planned],
    settings: &Arc<ParseSettings>,
    cfg: &Config,
    raw: &DeltaTable,
    quarantine: &DeltaTable,
    progress: &indicatif::ProgressBar,
) -> Result<Landed> {
    let props = delta::writer_properties(cfg.ingest.zstd_level, cfg.ingest.row_group_rows)?;
    let flush_at = (cfg.memory_limit / 6).max(8 << 20) as usize;
    let mut raw_w = delta::TableSink::new(
        raw,
        props.clone(),
        cfg.ingest.target_file_size,
        flush_at,
        "ingest",
    )?;
    let mut q_w = delta::TableSink::new(
        quarantine,
        props,
        cfg.ingest.target_file_size,
        flush_at,
        "ingest",
    )?;

    let modes: Vec<Mode> = group.iter().map(|p| p.mode).collect();
    let mut state: Vec<FileState> = group.iter().map(|_| FileState::default()).collect();
    let pb = progress.clone();
    let opts = pipeline::PipelineOptions {
        threads: cfg.ingest.threads,
        chunk_bytes: cfg.ingest.chunk_bytes,
        max_line_bytes: cfg.ingest.max_line_bytes,
        on_bytes: Arc::new(move |n| pb.inc(n)),
    };
    let files: Vec<(usize, InputFile)> = group.iter().map(|p| p.file.clone()).enumerate().collect();
    let mut pipe = pipeline::start(
        files,
        settings.clone(),
        opts,
        tokio::runtime::Handle::current(),
    );

    let mut failure: Option<Error> = None;
    let mut rows_seen = 0u64;
    while let Some(ev) = pipe.events.recv().await {
        match ev {
            pipeline::Event::Output(out) => {
                let st = &mut state[out.file_idx];
                st.stats.merge(&out.stats);
                st.chunks_seen += 1;
                rows_seen += out.stats.lines;
                let step = async {
                    for part in out.raw {
                        raw_w.write_part(part).await?;
                    }
                    if modes[out.file_idx] == Mode::Full {
                        q_w.write(&out.quarantine).await?;
                    }
                    Ok::<(), Error>(())
                };
                if let Err(e) = step.await {
                    failure = Some(e);
                    break;
                }
                let secs = progress.elapsed().as_secs_f64().max(1e-3);
                progress.set_message(format!(
                    "{rows_seen} lines, {:.0} lines/s",
                    rows_seen as f64 / secs
                ));
            }
            pipeline::Event::FileDone {
                file_idx,
                chunks,
                raw_bytes,
                content_hash,
                tail,
            } => {
                state[file_idx].chunks_sent = Some(chunks);
                state[file_idx].raw_bytes = raw_bytes;
                state[file_idx].content_hash = content_hash;
                state[file_idx].tail = tail;
            }
            pipeline::Event::FileGone { file_idx } => {
                state[file_idx].chunks_sent = Some(0);
                state[file_idx].gone = true;
            }
            pipeline::Event::Failed(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    // Stop the threads (closing the channel unblocks them) without blocking the runtime.
    let pipe_handle = tokio::task::spawn_blocking(move || pipe.join());
    if let Some(e) = failure {
        drop((raw_w, q_w));
        let _ = pipe_handle.await;
        return Err(e);
    }
    pipe_handle
        .await
        .map_err(|e| Error::runtime(format!("parser threads: {e}")))?;
    // Every line is landed or quarantined: each chunk the reader cut must have come back parsed.
    if let Some((p, st)) = group
        .iter()
        .zip(&state)
        .find(|(_, st)| st.chunks_sent != Some(st.chunks_seen))
    {
        drop((raw_w, q_w));
        return Err(Error::runtime(format!(
            "internal error: {} of {} chunks of {} were parsed; nothing of this group was \
             committed (please report it)",
            st.chunks_seen,
            st.chunks_sent.map_or("?".into(), |n| n.to_string()),
            p.file.display
        )));
    }
    let raw_adds = raw_w.finish().await?;
    let q_adds = q_w.finish().await?;
    Ok(Landed {
        state,
        raw_adds,
        q_adds,
    })
}

/// Gives stdin, now that its content hash is known, its identity and version. Returns the
/// group's result when that content was ingested before (and `--force` is not given): then
/// nothing is committed.
async fn resolve_stdin(
    planned: &mut [Planned],
    state: &[FileState],
    raw: &DeltaTable,
    quarantine: &DeltaTable,
    known: &HashMap<String, String>,
    force: bool,
) -> Result<Option<GroupResult>> {
    for (p, st) in planned.iter_mut().zip(state) {
        if p.file.key.is_some() {
            continue;
        }
        let hash = st.content_hash.clone().unwrap_or_default();
        let key = input::file_key(&["stdin", &hash]);
        p.file.version_tag = hash;
        p.file.size = Some(st.raw_bytes);
        let r = delta::txn_version(raw, &app_id(&key)).await?;
        let q = delta::txn_version(quarantine, &app_id(&key)).await?;
        if (known.contains_key(&key) || r.is_some()) && !force {
            // Same bytes as an earlier stdin ingest: land nothing.
            return Ok(Some(GroupResult {
                // p.file.size is the bytes read now.
                files: vec![FileSummary::unread(&p.file, "skipped: already ingested")],
                files_skipped: 1,
                bytes_read: st.raw_bytes,
                ..Default::default()
            }));
        }
        p.version = r.unwrap_or(0).max(q.unwrap_or(0)) + 1;
        p.file.key = Some(key);
    }
    Ok(None)
}

/// One row of `ingested_files`.
struct RegistryRow {
    file_key: String,
    source_file: String,
    size_bytes: Option<i64>,
    version_tag: String,
    lines: Option<i64>,
    blank_lines: Option<i64>,
    landed: Option<i64>,
    quarantined: Option<i64>,
    batch_id: String,
    ingested_at: i64,
    forced: bool,
    recovered: bool,
}

impl RegistryRow {
    fn recovered(f: &InputFile, batch_id: &str, now_us: i64) -> Self {
        RegistryRow {
            file_key: f.key.clone().unwrap_or_default(),
            source_file: f.display.clone(),
            size_bytes: f.size.map(|s| s as i64),
            version_tag: f.version_tag.clone(),
            lines: None,
            blank_lines: None,
            landed: None,
            quarantined: None,
            batch_id: batch_id.to_string(),
            ingested_at: now_us,
            forced: false,
            recovered: true,
        }
    }
}

async fn append_registry(table: &mut DeltaTable, rows: &[RegistryRow], cfg: &Config) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let s = |f: fn(&RegistryRow) -> String| {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f))) as Arc<dyn Array>
    };
    let i = |f: fn(&RegistryRow) -> Option<i64>| {
        Arc::new(Int64Array::from_iter(rows.iter().map(f))) as Arc<dyn Array>
    };
    let batch = RecordBatch::try_new(
        (INGESTED_FILES.schema)(),
        vec![
            s(|r| r.file_key.clone()),
            s(|r| r.source_file.clone()),
            i(|r| r.size_bytes),
            s(|r| r.version_tag.clone()),
            i(|r| r.lines),
            i(|r| r.blank_lines),
            i(|r| r.landed),
            i(|r| r.quarantined),
            s(|r| r.batch_id.clone()),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.ingested_at))
                    .with_timezone("UTC"),
            ),
            Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.forced)))),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| Some(r.recovered)),
            )),
        ],
    )?;
    delta::append_batch(table, batch, cfg, HashMap::new()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_marks_survive_packing() {
        for m in [
            TailMarks {
                end: 0,
                lines: 0,
                held_back: false,
                fingerprint: 0,
            },
            TailMarks {
                end: (1 << 40) + 7,
                lines: (1 << 39) - 1,
                held_back: true,
                fingerprint: FINGERPRINT_MASK,
            },
            TailMarks {
                end: 118_343_636,
                lines: 205_230,
                held_back: false,
                fingerprint: 0x2a_5f3c,
            },
        ] {
            let (end, packed) = m.pack();
            assert!(packed >= 0, "{m:?}");
            let back = TailMarks::unpack(end, packed).unwrap();
            assert_eq!(
                (back.end, back.lines, back.held_back, back.fingerprint),
                (m.end, m.lines, m.held_back, m.fingerprint)
            );
        }
        assert!(TailMarks::unpack(-1, 0).is_none());
    }

    #[test]
    fn a_held_back_line_starts_after_the_last_line_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let reopen = || {
            let id = input::FileIdentity::of_path(&path).unwrap();
            input::Reopened::open(&path, id).unwrap()
        };
        let long = "x".repeat(200_000);
        std::fs::write(&path, format!("{{\"a\":1}}\n{long}")).unwrap();
        assert_eq!(reopen().line_start(8 + 200_000), Some(8));
        assert_eq!(reopen().line_start(5), Some(0));
        std::fs::write(&path, "one\ntwo\nthr").unwrap();
        assert_eq!(reopen().line_start(11), Some(8));
    }

    #[test]
    fn compressed_files_named_like_a_rotation_of_a_log_read_before() {
        let read: HashSet<&str> = ["app.log", "app.log.1", "web.ndjson"].into();
        let rotation = |p: &str| named_like_a_rotation(p, &read);
        for yes in [
            "/logs/app.log.1.gz",
            "/logs/app.log.2.gz",
            "/logs/app.log-20261128.gz",
            "/logs/app.log_old.zst",
            "/logs/app.log.gz",
            "/other/web.ndjson.1.gz",
            // logrotate's `olddir`: the copies go to another directory.
            "/logs/archive/app.log.1.gz",
            "app.log.3.gz",
        ] {
            assert!(rotation(yes), "{yes}");
        }
        for no in [
            // Not compressed, another name, or a name that only starts like the log's.
            "/logs/app.log.2",
            "/logs/web.json.1.gz",
            "/logs/app.logs.1.gz",
            "/logs/app.gz",
            "/logs/app.log/x.gz",
        ] {
            assert!(!rotation(no), "{no}");
        }
        assert_eq!(file_name("/logs/archive/app.log.1.gz"), "app.log.1.gz");
        assert_eq!(file_name("app.log"), "app.log");
    }
}
