//! clicklake: turns raw e-commerce clickstream into a trustworthy Delta Lake.
//!
//! The binary is a thin shell over [`run`]; integration tests drive the same code.

/// `println!` that hands back the write's error instead of panicking, so `clicklake tables |
/// head` ends quietly with success when `head` closes stdout ([`error::is_broken_pipe`]):
/// `outln!(...)?`.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)
    }};
}

/// `print!` that hands back the write's error (see [`outln!`]).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout(), $($arg)*)
    }};
}

pub mod audit;
pub mod build;
pub mod catalog;
pub mod check;
pub mod clean;
pub mod cli;
pub mod commands;
pub mod compaction;
pub mod config;
pub mod delta;
pub mod erase;
pub mod error;
pub mod fingerprint;
pub mod generate;
pub mod ingest;
pub mod junit;
pub mod lease;
pub mod memory;
pub mod models;
pub mod patch;
pub mod printer;
pub mod privacy;
mod range_cache;
pub mod repl;
pub mod request_file;
pub mod runner;
pub mod sqlfn;
pub mod storage;
pub mod summarize;
pub mod vacuum;
pub mod whole_files;

use std::process::ExitCode;

use cli::{Cli, Command, LogFormat};
use config::Config;
use storage::Lake;

/// Runs one command line to completion and returns its exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(&cli.global, matches!(cli.command, Command::Init(_)))?;
    init_logging(&cfg);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Generate(args) => commands::generate::run(&args),
            command => {
                let lake = Lake::from_config(&cfg)?;
                tracing::debug!(lake = %lake.root(), "lake");
                match command {
                    Command::Init(args) => commands::init::run(&cfg, &lake, &args).await,
                    Command::Ingest(args) => commands::ingest::run(&cfg, &lake, args).await,
                    Command::Clean(args) => commands::clean::run(&cfg, &lake, args).await,
                    Command::Build(args) => commands::build::run(&cfg, &lake, args).await,
                    Command::Check(args) => commands::check::run(&cfg, &lake, args).await,
                    Command::Tables(args) => commands::tables::run(&lake, &args).await,
                    Command::History(args) => commands::history::run(&lake, &args).await,
                    Command::Status(args) => commands::status::run(&cfg, &lake, args).await,
                    Command::Compact(args) => commands::compact::run(&cfg, &lake, args).await,
                    Command::Vacuum(args) => commands::vacuum::run(&cfg, &lake, args).await,
                    Command::Erase(args) => commands::erase::run(&cfg, &lake, args).await,
                    Command::Consent(args) => commands::consent::run(&cfg, &lake, args).await,
                    Command::Sql(args) => commands::sql::run(&cfg, &lake, &args).await,
                    Command::Run(args) => commands::run::run(&cfg, &lake, args).await,
                    Command::Generate(_) => unreachable!("handled above"),
                }
            }
        }
    });
    // Every command awaits its own work, so nothing should be left running here. If a blocking
    // thread is stuck anyway (a run stopped by `[run] max_duration`), dropping the runtime would
    // wait for it for ever and the cron job would never end: give it a few seconds, then exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let default = match (cfg.quiet, cfg.verbose) {
        // deltalake logs a commit conflict it returns to us (and every retry of a commit that
        // then succeeds), and its kernel a version that is not in the log (time travel to
        // before an erasure, which deletes those entries); the command reports either once.
        (true, _) => "error,deltalake_core::kernel::transaction=off,buoyant_kernel=off",
        (false, 0) => "warn,deltalake_core::kernel::transaction=off,buoyant_kernel=off",
        (false, 1) => "clicklake=info,warn",
        (false, 2) => "clicklake=debug,info",
        _ => "trace",
    };
    // A data file whose upload fails at its last step makes deltalake warn that the upload's
    // parts are left for the store's lifecycle cleanup: true on S3, but a local lake has no
    // parts, and the error that follows says what failed.
    let local = !cfg.lake.contains("://") || cfg.lake.starts_with("file://");
    let default = match (local, cfg.verbose) {
        (true, 0) => format!("{default},deltalake_core::datafile::writer=error"),
        _ => default.to_string(),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

/// Test hook: `CLICKLAKE_PAUSE=<point>:<seconds>` sleeps that long at that point, so a test can
/// hold a run in the middle (to see its lease renewed, for example). `<point>-blocking` sleeps
/// on a blocking thread instead, as a stuck thread would. With `CLICKLAKE_PAUSE_MARK=<file>`,
/// that file is created when the pause starts, so the test knows the point was reached.
pub async fn pause(point: &str) {
    if let Ok(v) = std::env::var("CLICKLAKE_PAUSE") {
        if let Some((p, secs)) = v.split_once(':') {
            let secs = std::time::Duration::from_secs_f64(secs.parse().unwrap_or(0.0));
            if p == point || p.strip_suffix("-blocking") == Some(point) {
                if let Ok(mark) = std::env::var("CLICKLAKE_PAUSE_MARK") {
                    let _ = std::fs::write(mark, point);
                }
            }
            if p == point {
                tokio::time::sleep(secs).await;
            } else if p.strip_suffix("-blocking") == Some(point) {
                let _ = tokio::task::spawn_blocking(move || std::thread::sleep(secs)).await;
            }
        }
    }
}

/// Test hook: `CLICKLAKE_FAULT=<point>` aborts the process at that point, as a crash would.
pub fn fault(point: &str) {
    if std::env::var("CLICKLAKE_FAULT").is_ok_and(|p| p == point) {
        eprintln!("CLICKLAKE_FAULT: aborting at {point}");
        std::process::abort();
    }
}
