//! One typed, validated [`Config`] merged from flags, environment and `clicklake.toml`.
//!
//! Precedence: flag > environment > config file > default. Every value is checked here, before
//! any I/O, and a bad one is reported naming the flag, variable or key. Unknown keys in the file
//! are errors. Secrets are wrapped in [`Secret`] so they never reach a log line or a Debug print.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::{GlobalArgs, LogFormat};
use crate::error::{Error, Result};

/// A credential: printed as `***`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The config file as written by users. Every section rejects unknown keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub lake: Option<String>,
    pub memory_limit: Option<String>,
    #[serde(default)]
    pub storage: FileStorage,
    #[serde(default)]
    pub ingest: FileIngest,
    #[serde(default)]
    pub clean: FileClean,
    #[serde(default)]
    pub build: FileBuild,
    #[serde(default)]
    pub check: FileCheck,
    /// `[[segments]]`: customer segments as SQL rules over agg_user_features.
    pub segments: Option<Vec<FileSegment>>,
    #[serde(default)]
    pub run: FileRun,
    #[serde(default)]
    pub status: FileStatus,
    /// `[sources.<name>]`: parameters of a source mapping (e.g. `app_ids` of snowplow).
    #[serde(default)]
    pub sources: BTreeMap<String, BTreeMap<String, toml::Value>>,
    #[serde(default)]
    pub privacy: FilePrivacy,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePrivacy {
    /// Personal columns, never stored in clear: any of email, ip, user_id.
    pub pii_columns: Option<Vec<String>>,
    /// What happens to `ip`: pseudonymize (truncate, then HMAC), truncate, drop.
    pub ip: Option<String>,
    /// A file holding the pseudonymisation key (CLICKLAKE_PII_KEY wins).
    pub key_file: Option<PathBuf>,
    /// If set, only these columns (and properties keys) land; the required ones always do.
    pub allowed_columns: Option<Vec<String>>,
    /// Personalise only customers whose latest `personalization` consent is a grant (default:
    /// everyone but those who withdrew it).
    pub require_consent: Option<bool>,
}

/// `[privacy]`, validated. The key is read here (from the environment or the key file).
#[derive(Debug, Clone)]
pub struct PrivacyConfig {
    pub email: bool,
    pub ip: bool,
    pub user_id: bool,
    pub ip_mode: crate::privacy::IpMode,
    pub key: Option<crate::privacy::PiiKey>,
    pub allowed_columns: Option<Vec<String>>,
    pub require_consent: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRun {
    /// Where new raw files arrive: a local directory or an s3:// prefix.
    pub inbox: Option<String>,
    /// The source format of the inbox's files.
    pub source: Option<String>,
    /// How long a run's lease lasts without renewal.
    pub lease_ttl: Option<String>,
    /// Run the data checks after the build (default true).
    pub check: Option<bool>,
    /// A run taking longer is stopped, recorded as failed and its lease released (default 2h).
    pub max_duration: Option<String>,
    /// Compact a table after the build once this many of its files can be merged away
    /// (default 20; 0 never).
    pub compact_min_files: Option<u64>,
    /// Vacuum every table (7 days' retention) once this long has passed since the last vacuum
    /// (default 1d; "0s" never).
    pub vacuum_every: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStatus {
    /// Default for `status --max-lag`.
    pub max_lag: Option<String>,
    /// Per-table limits, overriding `max_lag` / `--max-lag` for those tables.
    #[serde(default)]
    pub max_lag_tables: BTreeMap<String, String>,
}

/// `[run]`: what `clicklake run` does on each tick.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub inbox: Option<String>,
    pub source: String,
    pub lease_ttl: Duration,
    pub check: bool,
    pub max_duration: Duration,
    /// Compact a table after the build once this many of its files can be merged away; 0 never.
    pub compact_min_files: u64,
    /// Vacuum every table once this long has passed since the last vacuum; `None` never.
    pub vacuum_every: Option<Duration>,
}

/// `[status]`: freshness limits.
#[derive(Debug, Clone, Default)]
pub struct StatusConfig {
    pub max_lag: Option<Duration>,
    pub max_lag_tables: BTreeMap<String, Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBuild {
    pub sql_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCheck {
    /// A directory of `.sql` checks, each returning offending rows.
    pub dir: Option<PathBuf>,
    /// Checks (by name) whose offending rows only warn.
    pub warn: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSegment {
    pub name: String,
    pub kind: Option<String>,
    pub rule: String,
    pub priority: Option<i64>,
    pub refresh: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClean {
    pub session_gap: Option<String>,
    pub sql_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStorage {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub allow_http: Option<bool>,
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    pub virtual_hosted_style: Option<bool>,
    /// Server-side encryption of every object written: AES256 (SSE-S3) or aws:kms (SSE-KMS).
    pub server_side_encryption: Option<String>,
    /// The KMS key for aws:kms.
    pub sse_kms_key_id: Option<String>,
    /// Keep connections open between requests (the default).
    pub reuse_connections: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIngest {
    pub max_future_skew: Option<String>,
    pub max_past_skew: Option<String>,
    pub target_file_size: Option<String>,
    pub row_group_rows: Option<u64>,
    pub zstd_level: Option<i32>,
    pub commit_every: Option<String>,
    pub chunk_size: Option<String>,
    pub max_line_size: Option<String>,
    pub min_file_age: Option<String>,
    /// Name patterns (globs) of files to leave out of directory, prefix and glob listings.
    pub ignore: Option<Vec<String>>,
    pub threads: Option<u64>,
    /// A directory of the user's source mappings (`<name>.sql`), read at run time.
    pub sources_dir: Option<PathBuf>,
    /// A row count (`5` or `"5"`) or a share (`"0.5%"`).
    pub max_quarantined: Option<toml::Value>,
}

/// Settings for S3 and S3-compatible stores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StorageConfig {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub allow_http: bool,
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    pub virtual_hosted_style: bool,
    pub server_side_encryption: Option<String>,
    pub sse_kms_key_id: Option<String>,
    /// Open a connection for every request instead of reusing idle ones (`reuse_connections =
    /// false`): for a server that does not set TCP_NODELAY, where each request on a reused
    /// connection waits about 40 ms for a delayed ACK (s3s-fs).
    pub no_connection_reuse: bool,
}

#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// `future_event_time`: event_time later than received_at by more than this.
    pub max_future_skew: Duration,
    /// `stale_event_time`: event_time earlier than a given received_at by more than this.
    pub max_past_skew: Duration,
    /// Data files roll over at about this size.
    pub target_file_size: u64,
    pub row_group_rows: usize,
    pub zstd_level: i32,
    /// Commit after about this many input bytes (at a file boundary), so a huge backlog makes
    /// progress even if a run is killed.
    pub commit_every: u64,
    /// Bytes of input per parsed chunk (one record batch each).
    pub chunk_bytes: usize,
    /// A line (a CSV record) longer than this is quarantined with only its beginning kept, and
    /// is never held in memory whole.
    pub max_line_bytes: usize,
    /// Files found by listing (a directory, prefix or glob) written more recently than this are
    /// left for a later run: a producer may still be writing them.
    pub min_file_age: Duration,
    /// Files found by listing whose name matches one of these are left out (`*.gz`, `*.tmp`).
    pub ignore: Vec<glob::Pattern>,
    /// Parser threads.
    pub threads: usize,
    /// The user's source mappings: `<sources_dir>/<name>.sql`.
    pub sources_dir: Option<PathBuf>,
    /// `[sources.<name>]` parameters, checked against the mapping when it is loaded.
    pub sources: BTreeMap<String, BTreeMap<String, toml::Value>>,
    /// The data-quality gate: an ingest with more invalid rows than this exits 1.
    pub max_quarantined: Option<QuarantineLimit>,
}

/// How many invalid rows an ingest tolerates (`ingest --max-quarantined`, `[ingest]
/// max_quarantined`): a count (`0`, `100`) or a share of the rows read (`0.5%`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QuarantineLimit {
    Rows(u64),
    Percent(f64),
}

impl QuarantineLimit {
    pub fn parse(text: &str) -> std::result::Result<QuarantineLimit, String> {
        let t = text.trim();
        let bad = || format!("{text:?} is not a row count (0, 100) or a percentage (0.5%)");
        match t.strip_suffix('%') {
            Some(p) => {
                let p: f64 = p.trim().parse().map_err(|_| bad())?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(format!("{text:?}: a percentage is within 0%..=100%"));
                }
                Ok(QuarantineLimit::Percent(p))
            }
            None => t.parse().map(QuarantineLimit::Rows).map_err(|_| bad()),
        }
    }

    /// Whether `invalid` rows out of `rows` are more than the limit allows.
    pub fn exceeded(&self, invalid: u64, rows: u64) -> bool {
        match *self {
            QuarantineLimit::Rows(n) => invalid > n,
            QuarantineLimit::Percent(p) => invalid as f64 > p / 100.0 * rows as f64,
        }
    }
}

impl std::fmt::Display for QuarantineLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuarantineLimit::Rows(n) => write!(f, "{n}"),
            QuarantineLimit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CleanConfig {
    /// A session-less event more than this after the previous one starts a new derived session.
    pub session_gap: Duration,
    /// Model overrides: `<sql_dir>/clean/*.sql` replace the embedded models of the same name.
    pub sql_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct BuildConfig {
    /// Model overrides: `<sql_dir>/star/*.sql` replace the embedded models of the same name.
    pub sql_dir: Option<PathBuf>,
    /// User checks: every `.sql` file here is a check returning offending rows.
    pub checks_dir: Option<PathBuf>,
    /// `[check] warn`: checks (by name) whose offending rows only warn.
    pub warn_checks: Vec<String>,
    /// The segments, in priority order (best first).
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    /// Re-evaluated on every build.
    Dynamic,
    /// Re-evaluated when its last evaluation is older than `refresh`.
    Static,
}

impl SegmentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SegmentKind::Dynamic => "dynamic",
            SegmentKind::Static => "static",
        }
    }
}

/// A customer segment: a SQL boolean expression over `agg_user_features`.
#[derive(Debug, Clone)]
pub struct Segment {
    pub name: String,
    pub kind: SegmentKind,
    pub rule: String,
    /// Lower is more important: a customer's primary segment is their lowest-priority one.
    pub priority: i64,
    pub refresh: Option<Duration>,
}

/// The segments a lake gets when clicklake.toml defines none.
pub fn default_segments() -> Vec<FileSegment> {
    let seg =
        |name: &str, kind: &str, rule: &str, priority: i64, refresh: Option<&str>| FileSegment {
            name: name.into(),
            kind: Some(kind.into()),
            rule: rule.into(),
            priority: Some(priority),
            refresh: refresh.map(str::to_string),
        };
    vec![
        seg(
            "cart_abandoner_24h",
            "dynamic",
            "last_cart_abandoned_at >= as_of - INTERVAL '24 hours' \
             AND (last_purchase_at IS NULL OR last_purchase_at < last_cart_abandoned_at)",
            10,
            None,
        ),
        seg(
            "big_spender",
            "static",
            "revenue_365d >= 1000",
            20,
            Some("7d"),
        ),
        seg(
            "loyal",
            "static",
            "orders_lifetime >= 2 AND days_since_last_purchase <= 30",
            30,
            Some("7d"),
        ),
        seg(
            "at_risk",
            "dynamic",
            "orders_lifetime >= 1 AND days_since_last_purchase > 30",
            40,
            None,
        ),
        seg(
            "new_visitor",
            "dynamic",
            "orders_lifetime = 0 AND sessions_lifetime = 1",
            50,
            None,
        ),
    ]
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The lake URL exactly as given (validated by the storage module).
    pub lake: String,
    pub storage: StorageConfig,
    pub memory_limit: u64,
    pub ingest: IngestConfig,
    pub clean: CleanConfig,
    pub build: BuildConfig,
    pub run: RunConfig,
    pub status: StatusConfig,
    pub privacy: PrivacyConfig,
    pub log_format: LogFormat,
    pub quiet: bool,
    pub verbose: u8,
    /// `--wait`: how long a command waits for the lake's lock before exiting 75.
    pub wait: Option<Duration>,
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
}

impl Config {
    /// Merge flags, environment and file into a validated config. Reads only the config file.
    /// `init` may name a config file that does not exist yet (`for_init`): it writes it.
    pub fn load(args: &GlobalArgs, for_init: bool) -> Result<Config> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let (file, path) = match &args.config {
            Some(p) if for_init && !p.exists() => (FileConfig::default(), Some(p.clone())),
            Some(p) => (read_file_config(p)?, Some(p.clone())),
            None => {
                let default = PathBuf::from("clicklake.toml");
                if default.is_file() {
                    (read_file_config(&default)?, Some(default))
                } else {
                    (FileConfig::default(), None)
                }
            }
        };
        Self::merge(args, &env, file, path)
    }

    /// The pure merge step, testable without touching the environment.
    pub fn merge(
        args: &GlobalArgs,
        env: &BTreeMap<String, String>,
        file: FileConfig,
        config_file: Option<PathBuf>,
    ) -> Result<Config> {
        // The default lake is `lake/` beside the config file, like the file's own paths.
        let default_lake = || match config_file.as_deref().and_then(Path::parent) {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join("lake").display().to_string(),
            _ => "./lake".to_string(),
        };
        let lake = args
            .lake
            .clone()
            .or(file.lake.clone())
            .unwrap_or_else(default_lake);
        if lake.trim().is_empty() {
            return Err(Error::config("--lake / CLICKLAKE_LAKE / lake is empty"));
        }

        let wait = args
            .wait
            .as_deref()
            .map(|w| parse_duration(w).map_err(|e| Error::usage(format!("--wait: {e}"))))
            .transpose()?;
        let memory_limit = match (&args.memory_limit, &file.memory_limit) {
            (Some(v), _) => {
                // The flag or, through clap, the environment variable: name both.
                parse_size(v).map_err(|e| {
                    Error::config(format!("--memory-limit / CLICKLAKE_MEMORY_LIMIT: {e}"))
                })?
            }
            (None, Some(v)) => {
                parse_size(v).map_err(|e| Error::config(format!("memory_limit: {e}")))?
            }
            (None, None) => default_memory_limit(),
        };
        if memory_limit < 64 * 1024 * 1024 {
            return Err(Error::config(format!(
                "--memory-limit / CLICKLAKE_MEMORY_LIMIT / memory_limit: {} is below the minimum \
                 of 64MiB",
                format_bytes(memory_limit)
            )));
        }

        let storage = merge_storage(env, file.storage)?;
        let mut ingest = merge_ingest(file.ingest, memory_limit)?;
        ingest.sources = file.sources;
        let clean = merge_clean(file.clean)?;
        let build = merge_build(file.build, file.check, file.segments)?;
        // Before `[status]`, which may name the tables of these models.
        crate::catalog::use_star_dir(build.sql_dir.as_deref());
        let run = merge_run(file.run)?;
        let status = merge_status(file.status)?;
        let privacy = merge_privacy(env, file.privacy)?;

        Ok(Config {
            lake,
            storage,
            memory_limit,
            ingest,
            clean,
            build,
            run,
            status,
            privacy,
            log_format: args.log_format,
            quiet: args.quiet,
            wait,
            verbose: args.verbose,
            config_file,
        })
    }
}

fn merge_privacy(env: &BTreeMap<String, String>, file: FilePrivacy) -> Result<PrivacyConfig> {
    use crate::privacy::{IpMode, PiiKey};
    let columns = file
        .pii_columns
        .unwrap_or_else(|| vec!["email".into(), "ip".into()]);
    for c in &columns {
        if !["email", "ip", "user_id"].contains(&c.as_str()) {
            return Err(Error::config(format!(
                "privacy.pii_columns: {c:?} is not one of email, ip, user_id"
            )));
        }
    }
    let ip_mode = match file.ip.as_deref() {
        None | Some("pseudonymize") | Some("pseudonymise") => IpMode::Pseudonymize,
        Some("truncate") => IpMode::Truncate,
        Some("drop") => IpMode::Drop,
        Some(other) => {
            return Err(Error::config(format!(
                "privacy.ip: {other:?} is not one of pseudonymize, truncate, drop"
            )))
        }
    };
    let key = match env.get("CLICKLAKE_PII_KEY").filter(|k| !k.is_empty()) {
        Some(k) => Some(k.clone()),
        None => match &file.key_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::config(format!("privacy.key_file {}: {e}", path.display()))
                })?;
                Some(text.trim().to_string())
            }
            None => None,
        },
    };
    if let Some(k) = &key {
        if k.len() < 16 {
            return Err(Error::config(
                "the PII key (CLICKLAKE_PII_KEY or privacy.key_file) must be at least 16 characters",
            ));
        }
    }
    let allowed_columns = match file.allowed_columns {
        Some(cols) => {
            for c in &cols {
                if c.trim().is_empty() {
                    return Err(Error::config("privacy.allowed_columns: an empty name"));
                }
            }
            Some(cols)
        }
        None => None,
    };
    Ok(PrivacyConfig {
        email: columns.iter().any(|c| c == "email"),
        ip: columns.iter().any(|c| c == "ip"),
        user_id: columns.iter().any(|c| c == "user_id"),
        ip_mode,
        key: key.map(|k| PiiKey::new(Secret(k))),
        allowed_columns,
        require_consent: file.require_consent.unwrap_or(false),
    })
}

/// A duration setting of at least one second, or its default (in seconds).
fn at_least_a_second(name: &str, value: &Option<String>, default_secs: u64) -> Result<Duration> {
    let d = match value {
        Some(v) => parse_duration(v).map_err(|e| Error::config(format!("{name}: {e}")))?,
        None => Duration::from_secs(default_secs),
    };
    if d < Duration::from_secs(1) {
        return Err(Error::config(format!("{name} must be at least 1s")));
    }
    Ok(d)
}

fn merge_run(file: FileRun) -> Result<RunConfig> {
    if let Some(inbox) = &file.inbox {
        if inbox.trim().is_empty() {
            return Err(Error::config("run.inbox is empty"));
        }
    }
    let lease_ttl = at_least_a_second("run.lease_ttl", &file.lease_ttl, 600)?;
    let max_duration = at_least_a_second("run.max_duration", &file.max_duration, 2 * 3600)?;
    Ok(RunConfig {
        inbox: file.inbox,
        source: file.source.unwrap_or_else(|| "native".into()),
        lease_ttl,
        check: file.check.unwrap_or(true),
        max_duration,
        compact_min_files: file.compact_min_files.unwrap_or(20),
        vacuum_every: match &file.vacuum_every {
            Some(v) => Some(
                parse_duration(v).map_err(|e| Error::config(format!("run.vacuum_every: {e}")))?,
            )
            .filter(|d| !d.is_zero()),
            None => Some(Duration::from_secs(86_400)),
        },
    })
}

fn merge_status(file: FileStatus) -> Result<StatusConfig> {
    let max_lag = file
        .max_lag
        .as_deref()
        .map(|v| parse_duration(v).map_err(|e| Error::config(format!("status.max_lag: {e}"))))
        .transpose()?;
    let mut max_lag_tables = BTreeMap::new();
    for (table, v) in file.max_lag_tables {
        let d = parse_duration(&v)
            .map_err(|e| Error::config(format!("status.max_lag_tables.{table}: {e}")))?;
        // A misspelt table would never be checked (and, expected to exist, never be found).
        if !crate::catalog::is_lake_table(&table) {
            return Err(Error::config(format!(
                "status.max_lag_tables.{table}: not one of the lake's tables (see `clicklake tables`)"
            )));
        }
        max_lag_tables.insert(table, d);
    }
    Ok(StatusConfig {
        max_lag,
        max_lag_tables,
    })
}

fn merge_clean(file: FileClean) -> Result<CleanConfig> {
    let session_gap = match &file.session_gap {
        Some(v) => {
            parse_duration(v).map_err(|e| Error::config(format!("clean.session_gap: {e}")))?
        }
        None => Duration::from_secs(30 * 60),
    };
    if session_gap.is_zero() || session_gap > Duration::from_secs(365 * 86_400) {
        return Err(Error::config(
            "clean.session_gap must be greater than zero and at most 365d",
        ));
    }
    Ok(CleanConfig {
        session_gap,
        sql_dir: file.sql_dir,
    })
}

fn merge_build(
    file: FileBuild,
    check: FileCheck,
    segments: Option<Vec<FileSegment>>,
) -> Result<BuildConfig> {
    let mut out: Vec<Segment> = Vec::new();
    for (i, s) in segments
        .unwrap_or_else(default_segments)
        .into_iter()
        .enumerate()
    {
        let at = format!("segments[{i}] ({})", s.name);
        let valid_name = s
            .name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase())
            && s.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_name {
            return Err(Error::config(format!(
                "{at}: name must be lower-case letters, digits and _ (starting with a letter)"
            )));
        }
        if s.name == "anonymous" || s.name == "unsegmented" {
            return Err(Error::config(format!(
                "{at}: {} is reserved for landing rows without a segment",
                s.name
            )));
        }
        if out.iter().any(|o| o.name == s.name) {
            return Err(Error::config(format!("{at}: duplicate segment name")));
        }
        if s.rule.trim().is_empty() {
            return Err(Error::config(format!("{at}: rule is empty")));
        }
        let kind = match s.kind.as_deref().unwrap_or("dynamic") {
            "dynamic" => SegmentKind::Dynamic,
            "static" => SegmentKind::Static,
            other => {
                return Err(Error::config(format!(
                    "{at}: kind must be static or dynamic, got {other:?}"
                )))
            }
        };
        let refresh = match (kind, &s.refresh) {
            (SegmentKind::Dynamic, Some(_)) => {
                return Err(Error::config(format!(
                    "{at}: refresh applies to static segments only (dynamic ones are evaluated every build)"
                )))
            }
            (SegmentKind::Dynamic, None) => None,
            (SegmentKind::Static, None) => Some(Duration::from_secs(7 * 86_400)),
            (SegmentKind::Static, Some(r)) => Some(
                parse_duration(r).map_err(|e| Error::config(format!("{at}: refresh: {e}")))?,
            ),
        };
        out.push(Segment {
            priority: s.priority.unwrap_or((i as i64 + 1) * 10),
            name: s.name,
            kind,
            rule: s.rule,
            refresh,
        });
    }
    out.sort_by(|a, b| a.priority.cmp(&b.priority).then(a.name.cmp(&b.name)));
    Ok(BuildConfig {
        sql_dir: file.sql_dir,
        checks_dir: check.dir,
        warn_checks: check.warn.unwrap_or_default(),
        segments: out,
    })
}

fn read_file_config(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::config(format!("cannot read config file {}: {e}", path.display())))?;
    let mut file: FileConfig = toml::from_str(&text).map_err(|e| {
        let msg = e.message().to_string();
        let location = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!(" (line {line})")
            })
            .unwrap_or_default();
        Error::config(format!("{}{location}: {msg}", path.display()))
    })?;
    file.resolve_paths(path.parent().unwrap_or(Path::new("")));
    Ok(file)
}

impl FileConfig {
    /// Relative paths in a config file are relative to the file's directory, as in Cargo.toml
    /// or a dbt project, so `clicklake --config /srv/shop/clicklake.toml run` from cron (whose
    /// working directory is the home directory) finds `lake = "./lake"` and `sql_dir = "sql"`
    /// beside the file. Flags and environment variables stay relative to the working directory.
    /// Object store URLs (`s3://…`, `file://…`) are left as written.
    fn resolve_paths(&mut self, base: &Path) {
        if base.as_os_str().is_empty() {
            return;
        }
        let path = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let location = |l: &mut String| {
            if !l.contains("://") && Path::new(l.as_str()).is_relative() && !l.trim().is_empty() {
                *l = base.join(l.as_str()).display().to_string();
            }
        };
        if let Some(l) = self.lake.as_mut() {
            location(l);
        }
        if let Some(i) = self.run.inbox.as_mut() {
            location(i);
        }
        for p in [
            self.privacy.key_file.as_mut(),
            self.clean.sql_dir.as_mut(),
            self.build.sql_dir.as_mut(),
            self.check.dir.as_mut(),
            self.ingest.sources_dir.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            path(p);
        }
    }
}

fn env_nonempty<'a>(env: &'a BTreeMap<String, String>, key: &str) -> Option<&'a String> {
    env.get(key).filter(|v| !v.trim().is_empty())
}

fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(Error::config(format!(
            "{key}: expected true or false, got {other:?}"
        ))),
    }
}

fn merge_storage(env: &BTreeMap<String, String>, file: FileStorage) -> Result<StorageConfig> {
    let endpoint = env_nonempty(env, "AWS_ENDPOINT_URL")
        .or(env_nonempty(env, "AWS_ENDPOINT"))
        .cloned()
        .or(file.endpoint);
    if let Some(ep) = &endpoint {
        let url = url::Url::parse(ep)
            .map_err(|e| Error::config(format!("storage endpoint {ep:?} is not a URL: {e}")))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(Error::config(format!(
                "storage endpoint {ep:?} must start with http:// or https://"
            )));
        }
    }
    let allow_http = match env_nonempty(env, "AWS_ALLOW_HTTP") {
        Some(v) => parse_bool("AWS_ALLOW_HTTP", v)?,
        None => file.allow_http.unwrap_or(false),
    };
    if let Some(ep) = &endpoint {
        if ep.starts_with("http://") && !allow_http {
            return Err(Error::config(format!(
                "storage endpoint {ep} is plain http: set AWS_ALLOW_HTTP=true or storage.allow_http = true"
            )));
        }
    }
    let secret = |var: &str, from_file: Option<Secret>| {
        env_nonempty(env, var)
            .map(|v| Secret(v.clone()))
            .or(from_file)
    };
    let access_key_id = secret("AWS_ACCESS_KEY_ID", file.access_key_id);
    let secret_access_key = secret("AWS_SECRET_ACCESS_KEY", file.secret_access_key);
    if access_key_id.is_some() != secret_access_key.is_some() {
        return Err(Error::config(
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together",
        ));
    }
    let server_side_encryption = env_nonempty(env, "AWS_SERVER_SIDE_ENCRYPTION")
        .cloned()
        .or(file.server_side_encryption);
    if let Some(sse) = &server_side_encryption {
        if !["AES256", "aws:kms", "aws:kms:dsse"].contains(&sse.as_str()) {
            return Err(Error::config(format!(
                "storage.server_side_encryption {sse:?}: expected AES256, aws:kms or aws:kms:dsse"
            )));
        }
    }
    let sse_kms_key_id = env_nonempty(env, "AWS_SSE_KMS_KEY_ID")
        .cloned()
        .or(file.sse_kms_key_id);
    if sse_kms_key_id.is_some()
        && !server_side_encryption
            .as_deref()
            .is_some_and(|s| s.starts_with("aws:kms"))
    {
        return Err(Error::config(
            "storage.sse_kms_key_id needs server_side_encryption = \"aws:kms\"",
        ));
    }
    Ok(StorageConfig {
        server_side_encryption,
        sse_kms_key_id,
        endpoint,
        region: env_nonempty(env, "AWS_REGION")
            .or(env_nonempty(env, "AWS_DEFAULT_REGION"))
            .cloned()
            .or(file.region),
        allow_http,
        access_key_id,
        secret_access_key,
        session_token: secret("AWS_SESSION_TOKEN", file.session_token),
        virtual_hosted_style: match env_nonempty(env, "AWS_VIRTUAL_HOSTED_STYLE_REQUEST") {
            Some(v) => parse_bool("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", v)?,
            None => file.virtual_hosted_style.unwrap_or(false),
        },
        no_connection_reuse: !match env_nonempty(env, "CLICKLAKE_S3_REUSE_CONNECTIONS") {
            Some(v) => parse_bool("CLICKLAKE_S3_REUSE_CONNECTIONS", v)?,
            None => file.reuse_connections.unwrap_or(true),
        },
    })
}

fn merge_ingest(file: FileIngest, memory_limit: u64) -> Result<IngestConfig> {
    let max_future_skew = match &file.max_future_skew {
        Some(v) => {
            parse_duration(v).map_err(|e| Error::config(format!("ingest.max_future_skew: {e}")))?
        }
        None => Duration::from_secs(24 * 3600),
    };
    let max_past_skew = match &file.max_past_skew {
        Some(v) => {
            parse_duration(v).map_err(|e| Error::config(format!("ingest.max_past_skew: {e}")))?
        }
        None => Duration::from_secs(365 * 24 * 3600),
    };
    let target_file_size = match &file.target_file_size {
        Some(v) => {
            parse_size(v).map_err(|e| Error::config(format!("ingest.target_file_size: {e}")))?
        }
        None => 256 * 1024 * 1024,
    };
    if target_file_size == 0 {
        return Err(Error::config(
            "ingest.target_file_size must be greater than zero",
        ));
    }
    let commit_every = match &file.commit_every {
        Some(v) => parse_size(v).map_err(|e| Error::config(format!("ingest.commit_every: {e}")))?,
        None => 4 * 1024 * 1024 * 1024,
    };
    let zstd_level = file.zstd_level.unwrap_or(1);
    if !(1..=22).contains(&zstd_level) {
        return Err(Error::config(format!(
            "ingest.zstd_level: {zstd_level} is outside 1..=22"
        )));
    }
    let row_group_rows = file.row_group_rows.unwrap_or(1 << 20);
    if row_group_rows < 1024 {
        return Err(Error::config(
            "ingest.row_group_rows: must be at least 1024",
        ));
    }
    let chunk_bytes = match &file.chunk_size {
        Some(v) => parse_size(v).map_err(|e| Error::config(format!("ingest.chunk_size: {e}")))?,
        None => 4 << 20,
    };
    if !(64 << 10..=256 << 20).contains(&chunk_bytes) {
        return Err(Error::config(
            "ingest.chunk_size: must be within 64KiB..=256MiB",
        ));
    }
    let max_line_bytes = match &file.max_line_size {
        Some(v) => {
            parse_size(v).map_err(|e| Error::config(format!("ingest.max_line_size: {e}")))?
        }
        None => 16 << 20,
    };
    if !(1 << 10..=1 << 30).contains(&max_line_bytes) {
        return Err(Error::config(
            "ingest.max_line_size: must be within 1KiB..=1GiB",
        ));
    }
    let min_file_age = match &file.min_file_age {
        Some(v) => {
            parse_duration(v).map_err(|e| Error::config(format!("ingest.min_file_age: {e}")))?
        }
        None => Duration::ZERO,
    };
    let ignore = parse_ignore(file.ignore.as_deref().unwrap_or_default())
        .map_err(|e| Error::config(format!("ingest.ignore: {e}")))?;
    let threads = match file.threads {
        Some(0) => return Err(Error::config("ingest.threads: must be at least 1")),
        Some(n) => n as usize,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
    };
    let max_quarantined = match &file.max_quarantined {
        None => None,
        Some(toml::Value::String(text)) => Some(QuarantineLimit::parse(text)),
        Some(toml::Value::Integer(n)) => Some(QuarantineLimit::parse(&n.to_string())),
        Some(other) => Some(Err(format!(
            "{other} is not a row count (0, 100) or a percentage (\"0.5%\")"
        ))),
    }
    .transpose()
    .map_err(|e| Error::config(format!("ingest.max_quarantined: {e}")))?;
    // Queues hold a few chunks per thread: keep them a small share of the budget.
    let chunk_bytes = chunk_bytes
        .min(memory_limit / (16 * threads as u64))
        .max(64 << 10);
    Ok(IngestConfig {
        max_future_skew,
        max_past_skew,
        target_file_size,
        row_group_rows: row_group_rows as usize,
        zstd_level,
        commit_every,
        chunk_bytes: chunk_bytes as usize,
        max_line_bytes: max_line_bytes as usize,
        min_file_age,
        ignore,
        threads,
        sources_dir: file.sources_dir,
        sources: BTreeMap::new(),
        max_quarantined,
    })
}

/// Half of physical memory, or 2 GiB when it cannot be read.
pub fn default_memory_limit() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024 / 2)
        .unwrap_or(2 * 1024 * 1024 * 1024)
}

/// Parses `512MiB`, `4GiB`, `1GB`, `100MB`, `64k`, or a plain byte count.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size (try 512MiB or 4GiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        "t" | "tb" => 1000 * 1000 * 1000 * 1000,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "{text:?} has an unknown unit {other:?} (try MiB or GiB)"
            ))
        }
    };
    Ok((num * mult as f64) as u64)
}

/// The longest duration any setting takes: a century. Longer ones mean "forever", and would
/// overflow the clock arithmetic they feed (now + wait, now − retention).
const MAX_DURATION_SECS: u64 = 36_500 * 86_400;

/// Parses `90s`, `30m`, `24h`, `7d`, `1w`, combinations like `1h30m`, or plain seconds, up to
/// 36500d.
/// File-name patterns (`*.gz`): globs matched against a file's name alone. A pattern with a `/`
/// would never match a name, so it is refused.
pub fn parse_ignore(patterns: &[String]) -> std::result::Result<Vec<glob::Pattern>, String> {
    patterns
        .iter()
        .map(|p| {
            if p.is_empty() || p.contains('/') {
                return Err(format!(
                    "{p:?}: a pattern matches a file's name (e.g. \"*.gz\"), not a path"
                ));
            }
            glob::Pattern::new(p).map_err(|e| format!("{p:?}: {e}"))
        })
        .collect()
}

pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let secs = duration_secs(text)?;
    if secs > MAX_DURATION_SECS {
        return Err(format!("{text:?} is longer than 36500d"));
    }
    Ok(Duration::from_secs(secs))
}

fn duration_secs(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(secs);
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{text:?} is not a duration (try 30m, 24h or 7d)"))?;
        num.clear();
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 7 * 86400,
            _ => return Err(format!("{text:?} is not a duration (try 30m, 24h or 7d)")),
        };
        total = n
            .checked_mul(unit)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(|| format!("{text:?} is longer than 36500d"))?;
    }
    if !num.is_empty() {
        return Err(format!(
            "{text:?} is not a duration: a number needs a unit (s, m, h, d, w)"
        ));
    }
    Ok(total)
}

/// A duration the way [`parse_duration`] reads them, largest units first: `2d3h`, `5m`, `42s`.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// The commented template `clicklake init` writes.
pub const TEMPLATE: &str = r#"# clicklake configuration. Flags override environment variables, which override this file.
# Unknown keys are errors, so a typo never silently falls back to a default.
# Relative paths below are relative to this file's directory.

# Where the lake lives: a local path, file:///abs/path, or s3://bucket/prefix.
# (flag --lake, env CLICKLAKE_LAKE)
# lake = "./lake"

# Memory budget for one run (flag --memory-limit, env CLICKLAKE_MEMORY_LIMIT). Default: half of RAM.
# memory_limit = "4GiB"

[storage]
# For S3-compatible stores (MinIO, Ceph, R2, s3s-fs). The standard AWS_* variables win over these:
# AWS_ENDPOINT_URL, AWS_REGION, AWS_ALLOW_HTTP, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN.
# Prefer the environment for credentials; this file is often committed.
# endpoint = "http://127.0.0.1:9000"
# region = "us-east-1"
# allow_http = true
# virtual_hosted_style = false   # path-style requests by default, which S3-compatible stores expect
# Server-side encryption of every object clicklake writes (env AWS_SERVER_SIDE_ENCRYPTION,
# AWS_SSE_KMS_KEY_ID): "AES256" (SSE-S3) or "aws:kms" (SSE-KMS) with a key id.
# server_side_encryption = "aws:kms"
# sse_kms_key_id = "arn:aws:kms:eu-central-1:111122223333:key/…"
# Keep connections open between requests (env CLICKLAKE_S3_REUSE_CONNECTIONS). Set false for a
# server that does not set TCP_NODELAY (s3s-fs): there each request on a reused connection waits
# about 40 ms for a delayed ACK.
# reuse_connections = true

[ingest]
# A row whose event_time is later than its received_at by more than this is quarantined (future_event_time).
# max_future_skew = "1d"
# A row whose event_time is earlier than the received_at it gives by more than this is
# quarantined (stale_event_time): a device clock reset to 1970 or 2000. Rows without a
# received_at (a backfill of old exports) are not checked.
# max_past_skew = "365d"
# Data files roll over at about this size.
# target_file_size = "256MiB"
# row_group_rows = 1048576
# zstd_level = 1
# Commit after about this much input (at a file boundary), so a large backlog makes progress.
# commit_every = "4GiB"
# Input bytes per parsed batch, and parser threads (default: all cores).
# chunk_size = "4MiB"
# threads = 2
# A line (a CSV record) longer than this is quarantined (broken_json) with its first 8 KiB in raw,
# and never held in memory whole: a JSON dump on one line, a CSV quote that never closes.
# max_line_size = "16MiB"
# Files found in a directory, prefix or glob written less than this long ago are left for a later
# run, in case a producer is still writing them (files named on the command line are read at once).
# min_file_age = "1m"
# Names of files to leave out when listing a directory, prefix or glob (names starting with `_` or
# `.` always are); files named on the command line are read anyway. E.g. rotated logs compressed
# after they were read as plain files, or a producer's temporary files.
# ignore = ["*.gz", "*.tmp"]
# Your own source mappings (<sources_dir>/<name>.sql, used with `ingest --source <name>`); a file
# named like an embedded source (ga4, snowplow, segment, rees46, diginetica) replaces it.
# sources_dir = "./sources"
# The data-quality gate: an ingest (or run) with more rows quarantined as invalid than this exits 1
# after landing what is valid. A row count ("0") or a share of the rows read ("0.5%"); rows a source
# mapping rejects on purpose (rejected_by_source, unmapped_line) do not count. Default: no limit.
# max_quarantined = "1%"          # or a count: max_quarantined = 0

[clean]
# A session-less event more than this after the previous one of the same anonymous_id starts a new
# derived session.
# session_gap = "30m"
# Directory of SQL model overrides (<sql_dir>/clean/NN_name.sql replace the embedded models).
# sql_dir = "./sql"

[build]
# Star model overrides: <sql_dir>/star/NN_table.sql replace the embedded models, new files add
# tables (flag build --sql-dir).
# sql_dir = "./sql"

[check]
# Your own data tests: every .sql file here is a query returning offending rows (check --checks-dir).
# dir = "./checks"
# Checks (by name, as `clicklake check` prints them) whose offending rows only warn: reported as
# WARN, not failing the run. A check file can say so itself: `-- severity: warn`, or thresholds
# `-- warn_if: > 0` and `-- error_if: > 100` on the number of offending rows.
# warn = ["accepted_values(fact_sessions.device)"]

[run]
# `clicklake run` (the cron entry point) ingests new files from here: a local directory or an
# s3:// prefix (flag run --inbox). Files already ingested are skipped.
# inbox = "s3://my-bucket/incoming/"
# source = "native"
# The lake's lock lasts this long without renewal; a crashed run's lock is taken over after it.
# lease_ttl = "10m"
# max_duration = "2h"   # a longer run is stopped, recorded as failed, and its lease released
# Run the data checks after the build.
# check = true
# Then compact each table (Delta OPTIMIZE) once this many of its files can be merged away: every
# tick adds small files, and each scan opens every file (flag run --no-compact). 0: never.
# compact_min_files = 20
# And vacuum every table (files no version of the last 7 days references) once this long has
# passed since the last vacuum, so the files compaction replaced do not pile up. "0s": never.
# vacuum_every = "1d"

[privacy]
# Personal columns never stored in clear (any of email, ip, user_id). email and user_id become
# HMAC-SHA256 pseudonyms keyed by CLICKLAKE_PII_KEY (or key_file); ip is truncated (/24, /48)
# and then pseudonymised, kept truncated, or dropped.
# pii_columns = ["email", "ip"]
# ip = "pseudonymize"     # truncate | drop
# key_file = "/etc/clicklake/pii.key"
# Data minimisation: only these columns (and properties keys) land; event_id, event_time,
# received_at, event_type, user_id, anonymous_id and session_id always do.
# allowed_columns = ["product_id", "category", "price", "currency", "order_id", "revenue"]

# Parameters of source mappings, declared in the mapping's header (`-- param.app_ids: []`).
[sources.snowplow]
# Only events of these app_ids land; others are quarantined as rejected_by_source. Empty: all.
# app_ids = ["my-shop"]
[sources.ga4]
# GA4's automatically collected events that say nothing about shopping: quarantined as
# rejected_by_source (other unmapped events as unknown_event_type).
# ignored_events = ["session_start", "first_visit", "user_engagement", "scroll", "click", "file_download", "form_start", "form_submit", "video_start", "video_progress", "video_complete"]

[status]
# `status` exits 1 when a table's lag exceeds this (flag --max-lag).
# max_lag = "30m"
# Per-table limits override it.
[status.max_lag_tables]
# user_segment_history = "2d"

# Customer segments: SQL boolean expressions over agg_user_features (its columns and as_of).
# Lower priority wins: a customer's best segment is their primary_segment and the `segment`
# partition their next rows land in. Static segments are re-evaluated every `refresh`, dynamic
# ones every build. Without any [[segments]], five defaults apply (see the README).
#[[segments]]
#name = "cart_abandoner_24h"
#kind = "dynamic"
#rule = "last_cart_abandoned_at >= as_of - INTERVAL '24 hours'"
#priority = 10
#[[segments]]
#name = "loyal"
#kind = "static"
#refresh = "7d"
#rule = "days_since_last_purchase <= 30 AND revenue_lifetime > 500"
#priority = 30
"#;

#[cfg(test)]
impl Config {
    /// The configuration without flags, environment or file: what unit tests plan models under.
    pub fn defaults() -> Config {
        Config::merge(
            &Default::default(),
            &Default::default(),
            Default::default(),
            None,
        )
        .expect("the defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_in_a_config_file_are_beside_it_and_urls_are_left_alone() {
        let read = |text: &str| {
            let mut f: FileConfig = toml::from_str(text).unwrap();
            f.resolve_paths(Path::new("/srv/shop"));
            f
        };
        let f = read(
            "lake = \"lake\"\n[run]\ninbox = \"in/*.ndjson\"\n[privacy]\nkey_file = \"/etc/k\"\n\
             [ingest]\nsources_dir = \"./src\"\n",
        );
        assert_eq!(f.lake.as_deref(), Some("/srv/shop/lake"));
        assert_eq!(f.run.inbox.as_deref(), Some("/srv/shop/in/*.ndjson"));
        assert_eq!(f.privacy.key_file, Some(PathBuf::from("/etc/k")));
        assert_eq!(f.ingest.sources_dir, Some(PathBuf::from("/srv/shop/./src")));
        let f = read("lake = \"s3://b/p\"\n[run]\ninbox = \"file:///x\"\n");
        assert_eq!(f.lake.as_deref(), Some("s3://b/p"));
        assert_eq!(f.run.inbox.as_deref(), Some("file:///x"));
        // An empty value stays empty, for its own error.
        assert_eq!(read("lake = \"\"\n").lake.as_deref(), Some(""));
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert_eq!(parse_duration("1d").unwrap().as_secs(), 86400);
        assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5400);
        assert!(parse_duration("30").is_ok());
        assert!(parse_duration("3x").is_err());
        // Overflow is an error, not a panic (or a wrapped, tiny duration in release).
        assert!(parse_duration("9999999999999999d").is_err());
        assert!(parse_duration("18446744073709551615s1s").is_err());
        assert!(parse_duration("36500d").is_ok());
        assert!(parse_duration("36501d").is_err());
        assert!(parse_duration("3153600001").is_err());
        for text in ["7d", "1h30m", "42s", "2d3h4m5s"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(format_duration(d), text);
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err =
            toml::from_str::<FileConfig>("lake = \"x\"\n[ingest]\nzstd_levle = 3\n").unwrap_err();
        assert!(err.to_string().contains("zstd_levle"), "{err}");
    }

    #[test]
    fn template_parses() {
        let uncommented: String = TEMPLATE
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|s| s.contains(" = "))
                    .unwrap_or(l)
            })
            .map(|l| {
                if l.trim_start().starts_with('#') {
                    ""
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let parsed: FileConfig = toml::from_str(&uncommented).expect("template parses");
        assert_eq!(parsed.lake.as_deref(), Some("./lake"));
        assert_eq!(parsed.ingest.zstd_level, Some(1));
    }

    #[test]
    fn env_wins_and_secrets_are_hidden() {
        let mut env = BTreeMap::new();
        env.insert("AWS_ACCESS_KEY_ID".to_string(), "AKIAEXAMPLE".to_string());
        env.insert(
            "AWS_SECRET_ACCESS_KEY".to_string(),
            "supersecret".to_string(),
        );
        env.insert(
            "AWS_ENDPOINT_URL".to_string(),
            "http://127.0.0.1:9000".to_string(),
        );
        env.insert("AWS_ALLOW_HTTP".to_string(), "true".to_string());
        let cfg = Config::merge(&GlobalArgs::default(), &env, FileConfig::default(), None).unwrap();
        let dbg = format!("{cfg:?}");
        assert!(
            !dbg.contains("supersecret") && !dbg.contains("AKIAEXAMPLE"),
            "{dbg}"
        );
        assert_eq!(
            cfg.storage.endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        env.remove("AWS_ALLOW_HTTP");
        let err =
            Config::merge(&GlobalArgs::default(), &env, FileConfig::default(), None).unwrap_err();
        assert!(err.to_string().contains("AWS_ALLOW_HTTP"), "{err}");
    }
}
