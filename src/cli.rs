//! Command-line syntax only: clap derive structs. Validation and merging with the environment and
//! the config file happen in `config.rs`, before any I/O.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "clicklake",
    version,
    about = "Turns raw e-commerce clickstream into a trustworthy Delta Lake for checkout personalization",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone, Default)]
pub struct GlobalArgs {
    /// Lake location: a local path, file:///path or s3://bucket/prefix [default: ./lake]
    #[arg(long, global = true, env = "CLICKLAKE_LAKE", value_name = "URL")]
    pub lake: Option<String>,

    /// Config file [default: ./clicklake.toml when present]
    #[arg(long, global = true, env = "CLICKLAKE_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Memory budget for one run, e.g. 512MiB or 4GiB [default: half of RAM]
    #[arg(
        long,
        global = true,
        env = "CLICKLAKE_MEMORY_LIMIT",
        value_name = "SIZE"
    )]
    pub memory_limit: Option<String>,

    /// When another command holds the lake's lock (run, erase, clean, build, compact, vacuum,
    /// consent), wait up to this long for it (e.g. 10m) instead of exiting 75 at once
    #[arg(long, global = true, value_name = "DURATION")]
    pub wait: Option<String>,

    /// Log format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Print nothing but results and errors (no progress, no info logs)
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// More logging (-v info, -vv debug, -vvv trace); RUST_LOG overrides
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the lake (idempotent) and write a commented clicklake.toml if none exists
    Init(InitArgs),
    /// Validate raw events and land them in raw_events; rejected rows go to quarantine
    Ingest(IngestArgs),
    /// Build `events` from `raw_events`: normalise, deduplicate by event_id, sessionize and
    /// stitch identities, incrementally (only visitors the new raw rows touch) in one commit.
    Clean(CleanArgs),
    /// Build the star schema (dimensions, facts, user features, segments) from `events` with the
    /// SQL models of `sql/star/`, incrementally from what clean changed.
    Build(BuildArgs),
    /// Run data tests (keys unique and not null, references, accepted values, reconciliations
    /// and your own SQL checks); exit 1 when any fails.
    Check(CheckArgs),
    /// List the lake's tables with rows, files, size, partitions and version
    Tables(TablesArgs),
    /// A table's commits, newest first (Delta's DESCRIBE HISTORY): version, time, operation,
    /// the clicklake command behind it, files and rows added and removed
    History(HistoryArgs),
    /// Rewrite small files into files of about the target size (Delta OPTIMIZE); no rows change
    Compact(CompactArgs),
    /// Delete data files no version within the retention period references
    Vacuum(VacuumArgs),
    /// GDPR erasure: remove every row of one person (through their stitched identities) from
    /// every table and the files that held them; record it so later ingests refuse their rows
    Erase(EraseArgs),
    /// Import consent decisions (CSV or NDJSON: user_id/anonymous_id, purpose, status,
    /// decided_at, version) into the consents table; the next build applies them
    Consent(ConsentArgs),
    /// Freshness of every table for alerting: latest commit and event time, lag, small files;
    /// exits 1 naming the tables staler than `--max-lag` and any erasure that was cut off
    Status(StatusArgs),
    /// Run SQL over the lake's tables: `-c`, `-f`, or a REPL (statements on stdin when piped)
    Sql(SqlArgs),
    /// The cron entry point: under the lake's lock, ingest new files from the inbox, then clean,
    /// build and check incrementally, vacuum once a day and compact where small files piled up;
    /// record the run in `_runs`. Exit 75 when another run holds the lock.
    Run(RunArgs),
    /// Write realistic sample clickstream in the canonical format
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write the config template when `--config` names none (a `--config` file that
    /// does not exist yet is written there instead)
    #[arg(long, default_value = "clicklake.toml")]
    pub config_out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// Decide from the file name (.ndjson/.jsonl/.json or .csv, before .gz/.zst); NDJSON otherwise
    Auto,
    Ndjson,
    Csv,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Files, directories, globs, s3:// URLs or prefixes; `-` reads stdin
    #[arg(required = true, value_name = "PATH_OR_URL")]
    pub inputs: Vec<String>,

    /// The events' source: native (the canonical format), ga4, snowplow, segment, rees46,
    /// diginetica, or a mapping of your own in [ingest] sources_dir (NAME.sql)
    #[arg(long, default_value = "native", value_name = "NAME")]
    pub source: String,

    /// How the input files are encoded
    #[arg(long, value_enum, default_value_t = InputFormat::Auto)]
    pub format: InputFormat,

    /// Store personal e-mail and ip values as NULL instead of pseudonymising them (no key needed)
    #[arg(long)]
    pub drop_pii: bool,

    /// Re-ingest files that were ingested before
    #[arg(long)]
    pub force: bool,

    /// Exit 1 (after landing the valid rows) when more rows than this are quarantined as
    /// invalid: a count (0) or a share of the rows read (0.5%) (config: ingest.max_quarantined)
    #[arg(long, value_name = "N|P%", value_parser = crate::config::QuarantineLimit::parse)]
    pub max_quarantined: Option<crate::config::QuarantineLimit>,

    /// Leave files found in a directory, prefix or glob for a later run until they have not
    /// been written for this long, e.g. 1m (config: ingest.min_file_age)
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub min_file_age: Option<std::time::Duration>,

    /// Leave out files found in a directory, prefix or glob whose name matches this pattern,
    /// e.g. '*.gz'; repeatable, added to the config's (config: ingest.ignore)
    #[arg(long, value_name = "PATTERN")]
    pub ignore: Vec<String>,

    /// Validate every line and report what would land and what would be quarantined, listing
    /// the first rejected rows by file and line; read no lake, write nothing. Exits 1 when any
    /// row is invalid (or more than --max-quarantined)
    #[arg(long, conflicts_with = "force")]
    pub dry_run: bool,

    /// With --dry-run, also write the result as JUnit XML to this file, for CI systems that show
    /// test results: one test case per input file, failed when it has rejected rows and the run
    /// fails
    #[arg(long, value_name = "PATH", requires = "dry_run")]
    pub junit: Option<PathBuf>,

    /// Print the summary as one JSON object
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Rebuild `events` from all of `raw_events` instead of only what changed.
    #[arg(long)]
    pub full_refresh: bool,

    /// Directory with SQL model overrides: `<DIR>/clean/NN_name.sql` replaces the embedded model
    /// of the same file name (config: clean.sql_dir).
    #[arg(long, value_name = "DIR")]
    pub sql_dir: Option<PathBuf>,

    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Rebuild every star table from all of `events` instead of only what changed.
    #[arg(long)]
    pub full_refresh: bool,

    /// The time features and dynamic segments are computed at: an RFC 3339 timestamp, a date,
    /// or `now` [default: the latest event_time in the lake]
    #[arg(long, value_name = "TIME")]
    pub as_of: Option<String>,

    /// Directory with SQL model overrides: `<DIR>/star/NN_table.sql` replaces the embedded model
    /// of the same file name; new files add tables (config: build.sql_dir).
    #[arg(long, value_name = "DIR")]
    pub sql_dir: Option<PathBuf>,

    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A directory of your own checks: each `.sql` file is a query returning offending rows
    /// (config: check.dir).
    #[arg(long, value_name = "DIR")]
    pub checks_dir: Option<PathBuf>,

    /// Only run checks whose name contains this text; repeat it for several (exit 2 when one
    /// matches nothing)
    #[arg(long, value_name = "TEXT")]
    pub select: Vec<String>,

    /// Leave out checks whose name contains this text; repeat it for several (exit 2 when one
    /// matches nothing)
    #[arg(long, value_name = "TEXT")]
    pub exclude: Vec<String>,

    /// Print the report as one JSON object (with --list: an array of the checks).
    #[arg(long)]
    pub json: bool,

    /// Also write the report as JUnit XML to this file, for CI systems that show test results
    /// (GitLab, Jenkins, Azure Pipelines, CircleCI): one test case per check
    #[arg(long, value_name = "PATH")]
    pub junit: Option<PathBuf>,

    /// List the checks --select and --exclude pick, with where each comes from, its severity and
    /// the tables it reads, without running them (as `dbt ls`); reads no table
    #[arg(long, conflicts_with = "junit")]
    pub list: bool,

    /// Run every check, even one that passed before and whose query and tables have not changed
    /// since (by default its pass is reused and reported as unchanged)
    #[arg(long)]
    pub no_reuse: bool,
}

#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Tables to compact [default: all]
    pub tables: Vec<String>,

    /// File size to aim for [default: ingest.target_file_size]
    #[arg(long, value_name = "SIZE")]
    pub target_size: Option<String>,

    /// Compact a table only when at least this many of its files can be merged away (small
    /// files beyond the first of each partition)
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub min_files: u64,

    /// Print one JSON array
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConsentArgs {
    /// Consent files (.csv with a header, otherwise NDJSON)
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<String>,
}

#[derive(Debug, Args)]
pub struct EraseArgs {
    /// The person's user_id
    #[arg(long, value_name = "ID")]
    pub user_id: Option<String>,

    /// The person's anonymous_id (their user_id and its other anonymous ids go too)
    #[arg(long, value_name = "ID")]
    pub anonymous_id: Option<String>,

    /// The person's e-mail address (pseudonymised the same way as at landing before matching)
    #[arg(long, value_name = "ADDRESS")]
    pub email: Option<String>,

    /// Erase everyone a file names, one person per row, in one pass: CSV with a header (`,` `;`
    /// tab `|`) or NDJSON, with a user_id, anonymous_id or email on each row (other columns,
    /// such as a ticket number, are ignored). Repeatable.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["user_id", "anonymous_id", "email"])]
    pub from: Vec<String>,

    /// Report what would be removed; change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Print the receipt as one JSON object
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VacuumArgs {
    /// Tables to vacuum [default: all]
    pub tables: Vec<String>,

    /// Keep files any version of the last DURATION references (time travel reaches that far)
    #[arg(long, value_name = "DURATION", default_value = "7d")]
    pub retain: String,

    /// Allow a retention under 7 days (only when no run or query can be in flight)
    #[arg(long)]
    pub allow_short_retention: bool,

    /// List what would be deleted, delete nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Print one JSON array
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Exit 1 when a table's lag (to its latest event_time, or its latest commit for tables
    /// without one) exceeds this, e.g. 15m or 2h
    #[arg(long, value_name = "DURATION")]
    pub max_lag: Option<String>,

    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where new raw files arrive: a local directory or an s3:// prefix (config: run.inbox).
    /// Without one, the run starts at clean.
    #[arg(long, value_name = "DIR_OR_URL")]
    pub inbox: Option<String>,

    /// Source format of the inbox's files (config: run.source) [default: native]
    #[arg(long)]
    pub source: Option<String>,

    /// Skip the data checks (config: run.check = false)
    #[arg(long)]
    pub no_check: bool,

    /// Skip the compaction after the build (config: run.compact_min_files = 0)
    #[arg(long)]
    pub no_compact: bool,

    /// Fail the run (exit 1, after every stage ran) when its ingest quarantines more rows than
    /// this as invalid: a count or a share (0.5%) (config: ingest.max_quarantined)
    #[arg(long, value_name = "N|P%", value_parser = crate::config::QuarantineLimit::parse)]
    pub max_quarantined: Option<crate::config::QuarantineLimit>,

    /// Leave inbox files for a later run until they have not been written for this long, e.g.
    /// 1m, in case a producer is still writing them (config: ingest.min_file_age)
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub min_file_age: Option<std::time::Duration>,

    /// Leave out inbox files whose name matches this pattern, e.g. '*.gz'; repeatable, added to
    /// the config's (config: ingest.ignore)
    #[arg(long, value_name = "PATTERN")]
    pub ignore: Vec<String>,

    /// Print one JSON summary object
    #[arg(long)]
    pub json: bool,

    /// Also write the checks' report as JUnit XML to this file (as `check --junit`), for CI
    /// systems that show test results
    #[arg(long, value_name = "PATH")]
    pub junit: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The table, e.g. events or fact_sessions
    pub table: String,

    /// Show at most this many of the newest commits
    #[arg(long, value_name = "N", default_value_t = 20, conflicts_with = "all",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: u64,

    /// Show every commit the log still holds
    #[arg(long)]
    pub all: bool,

    /// Print one JSON array, newest commit first
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TablesArgs {
    /// Print as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Csv,
    Tsv,
    Json,
    Ndjson,
    /// One `column = value` line a column and a blank line between rows, for rows too wide for
    /// a table (DuckDB's `.mode line`, psql's `\x`)
    Line,
    /// A GitHub-flavoured Markdown table, every row, streamed (DuckDB's `.mode markdown`), to
    /// paste into an issue, a pull request or a wiki
    Markdown,
    /// zstd-compressed Parquet (with --output, or to a pipe)
    Parquet,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// SQL to run: one statement, or several separated by `;`, or one meta-command (`\d events`);
    /// repeatable, run in order (as with psql and datafusion-cli)
    #[arg(
        short = 'c',
        long = "command",
        value_name = "SQL",
        conflicts_with = "file"
    )]
    pub command: Vec<String>,

    /// A file of statements separated by `;`, run in order; the first failing one stops the run
    /// (exit 2 naming it)
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<PathBuf>,

    /// Write the result to this local path or object store URL (s3://bucket/key) instead of
    /// stdout, streaming
    #[arg(long, short = 'o', value_name = "PATH")]
    pub output: Option<String>,

    /// Query every table as of this version of it (time travel)
    #[arg(long, value_name = "N", conflicts_with = "as_of_time")]
    pub as_of_version: Option<i64>,

    /// Query every table as it was at this time (RFC 3339, e.g. 2026-03-01T12:00:00Z)
    #[arg(long, value_name = "TIME")]
    pub as_of_time: Option<String>,

    /// Output format
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,

    /// Rows the table and line formats show; the rest are counted, not held (0: all, which the
    /// table format holds in memory to align them: use csv, ndjson or parquet for big results)
    #[arg(long = "max-rows", value_name = "N", default_value_t = 40)]
    pub max_rows: usize,

    /// A value for `${NAME}` in the -c / -f statements, inserted as text (quote it in the SQL:
    /// `DATE '${day}'`); repeatable. A `${NAME}` without a value is exit 2
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GenerateFormat {
    Ndjson,
    Csv,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of distinct events to generate (dirt and resends come on top)
    #[arg(long, default_value_t = 10_000)]
    pub events: u64,

    /// Random seed: the same seed gives byte-identical files
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Output directory
    #[arg(long)]
    pub out: PathBuf,

    /// Number of files to spread the events over
    #[arg(long, default_value_t = 4)]
    pub files: u32,

    /// Add dirt: every quarantine kind, blank lines, resent duplicates, late events
    #[arg(long)]
    pub dirty: bool,

    /// First day of the generated data (UTC)
    #[arg(long, default_value = "2026-01-05")]
    pub start: String,

    /// Number of days the events span
    #[arg(long, default_value_t = 7)]
    pub days: u32,

    /// File format
    #[arg(long, value_enum, default_value_t = GenerateFormat::Ndjson)]
    pub format: GenerateFormat,

    /// Compress the files
    #[arg(long, value_enum)]
    pub compress: Option<Compression>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    Gzip,
    Zstd,
}
