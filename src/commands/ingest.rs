//! `clicklake ingest`: validate raw events and land them in `raw_events`, rejected rows in
//! `quarantine`, exactly once per source file. Prints a summary on stdout.

use std::process::ExitCode;

use crate::cli::IngestArgs;
use crate::config::{format_bytes, Config, QuarantineLimit};
use crate::error::Error;
use crate::ingest::{self, IngestRequest, IngestSummary};
use crate::printer::Printer;
use crate::storage::Lake;

pub async fn run(cfg: &Config, lake: &Lake, args: IngestArgs) -> anyhow::Result<ExitCode> {
    crate::junit::check_path(args.junit.as_deref())?;
    let printer = Printer::new(cfg);
    let req = IngestRequest {
        inputs: args.inputs,
        source: args.source,
        format: args.format,
        force: args.force,
        inbox: false,
        drop_pii: args.drop_pii,
        lease_held: false,
        min_file_age: args.min_file_age.unwrap_or(cfg.ingest.min_file_age),
        ignore: super::run::ignore_patterns(cfg, &args.ignore)?,
    };
    if args.dry_run {
        // Validation is the point: any invalid row fails it unless a limit says otherwise.
        let mut report = ingest::dry_run::run(lake, cfg, req, &printer).await?;
        let limit = args.max_quarantined.or(cfg.ingest.max_quarantined);
        let over = report
            .summary
            .apply_gate(limit.or(Some(QuarantineLimit::Rows(0))));
        if let Some(path) = &args.junit {
            let xml = ingest::dry_run::junit(&report, over.is_some());
            crate::junit::write(path, &xml)?;
        }
        if args.json {
            outln!("{}", serde_json::to_string(&report)?)?;
        } else if !cfg.quiet || over.is_some() {
            out!("{}", ingest::dry_run::render(&report))?;
        }
        return match over {
            Some(message) => Err(Error::ChecksFailed(message).into()),
            None => Ok(ExitCode::SUCCESS),
        };
    }
    let mut summary = ingest::run(lake, cfg, req, &printer).await?;
    let over = summary.apply_gate(args.max_quarantined.or(cfg.ingest.max_quarantined));
    if args.json {
        outln!("{}", serde_json::to_string(&summary)?)?;
    } else if !cfg.quiet {
        out!("{}", render(&summary))?;
    }
    match over {
        Some(message) => Err(Error::ChecksFailed(message).into()),
        None => Ok(ExitCode::SUCCESS),
    }
}

pub fn render(s: &IngestSummary) -> String {
    let mut out = String::new();
    let mut waiting = match s.files_waiting {
        0 => String::new(),
        n => format!(", {n} waiting (written less than min_file_age ago)"),
    };
    if s.files_ignored > 0 {
        waiting.push_str(&format!(", {} ignored", s.files_ignored));
    }
    if s.files_read == 0 {
        out.push_str(&format!(
            "nothing new to ingest: {} file(s) already ingested{waiting}\n",
            s.files_skipped
        ));
        return out;
    }
    out.push_str(&format!(
        "ingest batch {} (source {})\n",
        s.batch_id, s.source
    ));
    let mut appended = match s.files_appended {
        0 => String::new(),
        n => format!(" ({n} grown since their last ingest: only the appended lines)"),
    };
    if s.files_compressed_copies > 0 {
        appended.push_str(&format!(
            " ({} compressed copies of logs read before: only the lines after those)",
            s.files_compressed_copies
        ));
    }
    out.push_str(&format!(
        "  files        {} read{appended}, {} skipped (already ingested){waiting}\n",
        s.files_read, s.files_skipped
    ));
    if s.extra_rows > 0 {
        out.push_str(&format!(
            "  lines        {} + {} extra rows (lines mapped to one row per product) = {} landed + {} quarantined + {} blank{}\n",
            s.lines,
            s.extra_rows,
            s.landed,
            s.quarantined,
            s.blank_lines,
            if s.balanced { "" } else { "  (UNBALANCED)" }
        ));
    } else {
        out.push_str(&format!(
            "  lines        {} = {} landed + {} quarantined + {} blank{}{}\n",
            s.lines,
            s.landed,
            s.quarantined,
            s.blank_lines,
            if s.erased > 0 {
                format!(" + {} erased", s.erased)
            } else {
                String::new()
            },
            if s.balanced { "" } else { "  (UNBALANCED)" }
        ));
    }
    for (reason, n) in &s.quarantined_by_reason {
        out.push_str(&format!("    {reason:<28} {n}\n"));
    }
    if let Some(limit) = &s.max_quarantined {
        out.push_str(&format!(
            "  invalid      {} (max_quarantined {limit}: {})\n",
            s.invalid,
            if s.over_max_quarantined { "OVER" } else { "ok" }
        ));
    }
    if s.erased > 0 {
        out.push_str(&format!(
            "  erased       {} rows of erased people were not stored\n",
            s.erased
        ));
    }
    if s.dropped_values > 0 {
        out.push_str(&format!(
            "  minimised    {} values outside [privacy] allowed_columns dropped\n",
            s.dropped_values
        ));
    }
    out.push_str(&format!(
        "  written      {} partitions, {} files, {}\n",
        s.partitions_written,
        s.data_files_written,
        format_bytes(s.bytes_written)
    ));
    out.push_str(&format!(
        "  read         {} in {:.2}s: {:.0} rows/s, {:.1} MB/s\n",
        format_bytes(s.bytes_read),
        s.seconds,
        s.rows_per_sec,
        s.mb_per_sec
    ));
    if let Some(v) = s.raw_events_version {
        out.push_str(&format!("  raw_events   version {v}\n"));
    }
    if let Some(v) = s.quarantine_version {
        out.push_str(&format!("  quarantine   version {v}\n"));
    }
    out
}
