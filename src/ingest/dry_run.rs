//! `ingest --dry-run`: every line validated exactly as an ingest would, nothing written and no
//! lake read. For CI jobs that check an event producer's output before it reaches the lake (as
//! `dbt build --dry-run` or `terraform plan` report without applying): the summary counts what
//! would land and what would be quarantined, and the first rejected rows are listed by file and
//! line with their reason and detail.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::parse::{LineStats, SegmentResolver};
use super::{
    landing_of, parse_settings, pipeline, source_and_files, FileSummary, IngestRequest,
    IngestSummary,
};
use crate::catalog;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::printer::Printer;
use crate::storage::Lake;

/// The batch id of a dry run's summary (no batch is written).
pub const BATCH_ID: &str = "dry-run";

/// How many rejected rows a dry run lists (the first, by file and line).
pub const REJECTED_SHOWN: usize = 50;

/// One rejected row of a dry run.
#[derive(Debug, Serialize, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rejected {
    #[serde(skip)]
    file_idx: usize,
    pub line: i64,
    pub source_file: String,
    pub reason: String,
    pub detail: String,
}

/// What a dry run found: the summary an ingest would print (nothing landed: `landed` counts
/// the rows that would), and the first rejected rows.
#[derive(Debug, Serialize)]
pub struct DryRun {
    pub dry_run: bool,
    #[serde(flatten)]
    pub summary: IngestSummary,
    /// The first [`REJECTED_SHOWN`] quarantined rows, by file (in the order given) and line.
    pub rejected: Vec<Rejected>,
    /// Per entry of `summary.files`, its rejected rows per reason (for the JUnit report).
    #[serde(skip)]
    pub reasons_by_file: Vec<Vec<(&'static str, u64)>>,
}

/// Validates every line of `req`'s files. `lake` only lends its store settings to `s3://`
/// inputs; nothing of it is read or written.
pub async fn run(
    lake: &Lake,
    cfg: &Config,
    req: IngestRequest,
    printer: &Printer,
) -> Result<DryRun> {
    let started = Instant::now();
    let (source, files, ignored) = source_and_files(lake, cfg, &req).await?;
    if files.is_empty() {
        return Err(Error::usage("no input files found"));
    }
    let mut summary = IngestSummary {
        batch_id: BATCH_ID.into(),
        source: req.source.clone(),
        files_ignored: ignored,
        ..Default::default()
    };
    // Personal values are checked as they would land; without a key they are validated, not
    // pseudonymised (nothing is stored), and quarantined text is masked all the same. No lake
    // is read: no erasures, and every row in the `unsegmented` or `anonymous` segment.
    let mut privacy = landing_of(cfg, req.drop_pii, Default::default());
    if privacy.key.is_none() {
        privacy.drop_pii = true;
        privacy.user_id = false;
    }
    let settings = parse_settings(
        cfg,
        BATCH_ID,
        chrono::Utc::now().timestamp_micros(),
        SegmentResolver::default(),
        source,
        privacy,
    );

    let total_bytes: u64 = files.iter().map(|f| f.to_read()).sum();
    let progress = printer.bytes_progress(total_bytes, "validate");
    let pb = progress.clone();
    let opts = pipeline::PipelineOptions {
        threads: cfg.ingest.threads,
        chunk_bytes: cfg.ingest.chunk_bytes,
        max_line_bytes: cfg.ingest.max_line_bytes,
        on_bytes: Arc::new(move |n| pb.inc(n)),
    };
    let mut per_file: Vec<(LineStats, u64, bool)> =
        files.iter().map(|_| Default::default()).collect();
    let mut pipe = pipeline::start(
        files.iter().cloned().enumerate().collect(),
        settings,
        opts,
        tokio::runtime::Handle::current(),
    );
    let mut rejected = FirstRejected::default();
    let mut failure = None;
    while let Some(ev) = pipe.events.recv().await {
        match ev {
            pipeline::Event::Output(out) => {
                per_file[out.file_idx].0.merge(&out.stats);
                if let Err(e) = rejected.add(out.file_idx, &out.quarantine) {
                    failure = Some(e);
                    break;
                }
            }
            pipeline::Event::FileDone {
                file_idx,
                raw_bytes,
                ..
            } => per_file[file_idx].1 = raw_bytes,
            pipeline::Event::FileGone { file_idx } => per_file[file_idx].2 = true,
            pipeline::Event::Failed(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let joined = tokio::task::spawn_blocking(move || pipe.join());
    if let Some(e) = failure {
        let _ = joined.await;
        return Err(e);
    }
    joined
        .await
        .map_err(|e| Error::runtime(format!("parser threads: {e}")))?;
    progress.finish_and_clear();

    let mut total = LineStats::default();
    let mut reasons_by_file = Vec::with_capacity(files.len());
    for (file, (stats, bytes, gone)) in files.iter().zip(&per_file) {
        reasons_by_file.push(
            stats
                .quarantined
                .nonzero()
                .map(|(r, n)| (r.code(), n))
                .collect(),
        );
        if *gone {
            summary.files.push(FileSummary {
                source_file: file.display.clone(),
                status: "vanished: deleted or renamed away before it was read",
                ..Default::default()
            });
            continue;
        }
        total.merge(stats);
        summary.files_read += 1;
        summary.bytes_read += bytes;
        summary.files.push(FileSummary {
            source_file: file.display.clone(),
            status: "validated",
            lines: stats.lines,
            blank_lines: stats.blank,
            landed: stats.landed,
            quarantined: stats.quarantined.total(),
            extra_rows: stats.extra_rows,
            bytes: *bytes,
            from_line: None,
        });
    }
    summary.add_totals(&total, started)?;
    Ok(DryRun {
        dry_run: true,
        summary,
        rejected: rejected.into_rows(),
        reasons_by_file,
    })
}

/// The dry run as JUnit XML: one test case per input file, with the source as its class name.
/// A file with rejected rows fails when the run fails its gate (`failing`), else it passes with
/// them as output (as a check's warning); either way the text gives the counts per reason and
/// the file's rows among the first listed. A file that vanished before it was read is skipped.
pub fn junit(d: &DryRun, failing: bool) -> String {
    use crate::junit::{Case, Outcome};
    let s = &d.summary;
    let classname = format!("ingest --dry-run --source {}", s.source);
    let cases: Vec<Case> = s
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let outcome = if f.status != "validated" {
                Outcome::Skipped(f.status.to_string())
            } else if f.quarantined == 0 {
                Outcome::Pass
            } else {
                let message = format!("{} of {} lines rejected", f.quarantined, f.lines);
                let text = rejected_text(d, i, &message, f.quarantined);
                match failing {
                    true => Outcome::Failure {
                        message,
                        kind: "rejected",
                        text,
                    },
                    false => Outcome::PassWithOutput(text),
                }
            };
            Case {
                classname: classname.clone(),
                name: f.source_file.clone(),
                seconds: None,
                outcome,
            }
        })
        .collect();
    crate::junit::report("clicklake ingest --dry-run", s.seconds, &cases)
}

/// The rejected rows of file `i` of a dry run: `message`, its counts per reason, then its rows
/// among the first listed as `line N: reason: detail`.
fn rejected_text(d: &DryRun, i: usize, message: &str, quarantined: u64) -> String {
    let mut text = format!("{message}\n");
    for (reason, n) in d.reasons_by_file.get(i).into_iter().flatten() {
        text.push_str(&format!("  {reason:<28} {n}\n"));
    }
    let listed: Vec<&Rejected> = d.rejected.iter().filter(|r| r.file_idx == i).collect();
    if !listed.is_empty() {
        text.push('\n');
    }
    for r in &listed {
        let detail = match r.detail.as_str() {
            "" => String::new(),
            d => format!(": {d}"),
        };
        text.push_str(&format!("line {}: {}{detail}\n", r.line, r.reason));
    }
    if (listed.len() as u64) < quarantined {
        text.push_str(&format!(
            "({} more: a dry run lists the first {REJECTED_SHOWN} rejected rows of all its files)\n",
            quarantined - listed.len() as u64
        ));
    }
    text
}

/// The first [`REJECTED_SHOWN`] rejected rows by file and line, gathered from chunks that arrive
/// in any order. Once it holds that many, a row after the last of them is passed over without
/// its strings being copied: a file of a million bad lines costs no more than one of fifty.
#[derive(Default)]
struct FirstRejected {
    rows: Vec<Rejected>,
    /// (file, line) of the last row kept, once `REJECTED_SHOWN` are kept.
    cutoff: Option<(usize, i64)>,
}

impl FirstRejected {
    /// Adds a chunk's quarantined rows that may be among the first.
    fn add(&mut self, file_idx: usize, batch: &arrow::record_batch::RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 || self.cutoff.is_some_and(|(f, _)| file_idx > f) {
            return Ok(());
        }
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| Error::runtime(format!("internal error: quarantine has no {name}")))
        };
        let reasons = catalog::utf8(column("reason")?)?;
        let details = catalog::utf8(column("detail")?)?;
        let files = catalog::utf8(column("source_file")?)?;
        let lines = column("line_number")?
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .ok_or_else(|| Error::runtime("internal error: quarantine line_number is not Int64"))?;
        let text =
            |a: &arrow::array::StringArray, i: usize| match arrow::array::Array::is_null(a, i) {
                true => String::new(),
                false => a.value(i).to_string(),
            };
        for i in 0..batch.num_rows() {
            let line = lines.value(i);
            if self.cutoff.is_some_and(|cut| (file_idx, line) > cut) {
                continue;
            }
            self.rows.push(Rejected {
                file_idx,
                line,
                source_file: text(&files, i),
                reason: text(&reasons, i),
                detail: text(&details, i),
            });
        }
        if self.rows.len() > 4 * REJECTED_SHOWN {
            self.settle();
        }
        Ok(())
    }

    /// Keeps the first rows only, in order.
    fn settle(&mut self) {
        self.rows.sort();
        self.rows.truncate(REJECTED_SHOWN);
        if self.rows.len() == REJECTED_SHOWN {
            self.cutoff = self.rows.last().map(|r| (r.file_idx, r.line));
        }
    }

    fn into_rows(mut self) -> Vec<Rejected> {
        self.settle();
        self.rows
    }
}

/// The text report: what would land, per reason what would be quarantined, then the first
/// rejected rows as `file:line: reason: detail`.
pub fn render(d: &DryRun) -> String {
    let s = &d.summary;
    let mut out = format!(
        "dry run (source {}): nothing written, the lake not read\n",
        s.source
    );
    out.push_str(&format!(
        "  files        {} validated{}\n",
        s.files_read,
        match s.files_ignored {
            0 => String::new(),
            n => format!(", {n} ignored"),
        }
    ));
    let extra = match s.extra_rows {
        0 => String::new(),
        n => format!(" + {n} extra rows"),
    };
    out.push_str(&format!(
        "  lines        {}{extra} = {} valid + {} quarantined + {} blank\n",
        s.lines, s.landed, s.quarantined, s.blank_lines
    ));
    let mut reasons: Vec<_> = s.quarantined_by_reason.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (reason, n) in reasons {
        out.push_str(&format!("    {reason:<28} {n}\n"));
    }
    if !d.rejected.is_empty() {
        let of = if s.quarantined as usize > d.rejected.len() {
            format!(" (the first {} of {})", d.rejected.len(), s.quarantined)
        } else {
            String::new()
        };
        out.push_str(&format!("  rejected{of}:\n"));
        for r in &d.rejected {
            let detail = match r.detail.as_str() {
                "" => String::new(),
                d => format!(": {d}"),
            };
            out.push_str(&format!(
                "    {}:{}: {}{detail}\n",
                r.source_file, r.line, r.reason
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::record_batch::RecordBatch;

    use super::*;

    fn chunk(file: &str, lines: std::ops::Range<i64>) -> RecordBatch {
        let n = (lines.end - lines.start) as usize;
        let schema = catalog::quarantine_schema();
        let columns: Vec<arrow::array::ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> arrow::array::ArrayRef {
                match f.name().as_str() {
                    "line_number" => Arc::new(Int64Array::from_iter_values(lines.clone())),
                    "source_file" => Arc::new(StringArray::from(vec![file; n])),
                    "reason" => Arc::new(StringArray::from(vec!["broken_json"; n])),
                    _ => arrow::array::new_null_array(f.data_type(), n),
                }
            })
            .collect();
        RecordBatch::try_new(schema, columns).unwrap()
    }

    #[test]
    fn the_first_rejected_rows_by_file_and_line_whatever_order_the_chunks_come_in() {
        let mut first = FirstRejected::default();
        // File 1 first, then file 0's later chunk, then its earlier one: 3,000 rows in all.
        first.add(1, &chunk("b", 1..1001)).unwrap();
        first.add(0, &chunk("a", 1001..2001)).unwrap();
        assert!(first.cutoff.is_some(), "full after the first chunks");
        first.add(0, &chunk("a", 1..1001)).unwrap();
        assert!(first.rows.len() <= 4 * REJECTED_SHOWN + 1000);
        let rows = first.into_rows();
        let got: Vec<(String, i64)> = rows
            .iter()
            .map(|r| (r.source_file.clone(), r.line))
            .collect();
        let want: Vec<(String, i64)> = (1..=50).map(|l| ("a".to_string(), l)).collect();
        assert_eq!(got, want);
        assert_eq!(rows[0].reason, "broken_json");
        assert_eq!(rows[0].detail, "");
    }
}
