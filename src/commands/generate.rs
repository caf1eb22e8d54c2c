//! `clicklake generate`: write realistic, deterministic sample clickstream plus a manifest of
//! what it contains (`_manifest.json`, skipped by ingest like every `_`-prefixed file).

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::GenerateArgs;
use crate::error::Error;
use crate::generate::{generate, Options};

pub fn run(args: &GenerateArgs) -> anyhow::Result<ExitCode> {
    let start = chrono::NaiveDate::parse_from_str(&args.start, "%Y-%m-%d").map_err(|_| {
        Error::usage(format!(
            "--start {:?}: expected a date like 2026-01-05",
            args.start
        ))
    })?;
    let m = generate(Options {
        events: args.events,
        seed: args.seed,
        out: args.out.clone(),
        files: args.files,
        dirty: args.dirty,
        start,
        days: args.days,
        format: args.format,
        compress: args.compress,
    })
    .with_context(|| format!("generating into {}", args.out.display()))?;
    outln!(
        "wrote {} lines ({} events, {} quarantine-bound, {} blank, {} resent) in {} file(s) to {}",
        m.lines_total,
        m.unique_events,
        m.quarantined,
        m.blank_lines,
        m.exact_duplicates + m.conflicting_duplicates,
        m.files.len(),
        args.out.display()
    )?;
    Ok(ExitCode::SUCCESS)
}
