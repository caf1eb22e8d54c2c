//! `clicklake sql -c "..."`: run one statement over the lake's registered tables and stream the
//! result to stdout as a table, CSV, TSV, JSON or NDJSON.

use std::io::Write;
use std::process::ExitCode;

use datafusion::error::DataFusionError;
use futures::StreamExt;

use crate::catalog;
use crate::cli::{OutputFormat, SqlArgs};
use crate::config::Config;
use crate::error::{is_sql_mistake, root_message, Error};
use crate::storage::Lake;

pub async fn run(cfg: &Config, lake: &Lake, args: &SqlArgs) -> anyhow::Result<ExitCode> {
    let ctx = catalog::session(cfg.memory_limit)?;
    catalog::register_all(&ctx, lake, None).await?;
    let df = ctx
        .sql(&args.command)
        .await
        .map_err(|e| user_error(&args.command, e))?;
    let mut stream = df
        .execute_stream()
        .await
        .map_err(|e| user_error(&args.command, e))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match args.format {
        OutputFormat::Table => {
            let mut batches = Vec::new();
            while let Some(b) = stream.next().await {
                batches.push(b.map_err(Error::from)?);
            }
            let shown = arrow::util::pretty::pretty_format_batches(&batches)?;
            writeln!(out, "{shown}")?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            if !cfg.quiet {
                eprintln!("{rows} row(s)");
            }
        }
        OutputFormat::Csv | OutputFormat::Tsv => {
            let delim = if args.format == OutputFormat::Csv {
                b','
            } else {
                b'\t'
            };
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .with_delimiter(delim)
                .build(&mut out);
            while let Some(b) = stream.next().await {
                w.write(&b.map_err(Error::from)?)?;
            }
        }
        OutputFormat::Json => {
            let mut w = arrow::json::ArrayWriter::new(&mut out);
            while let Some(b) = stream.next().await {
                w.write(&b.map_err(Error::from)?)?;
            }
            w.finish()?;
            drop(w);
            writeln!(out)?;
        }
        OutputFormat::Ndjson => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
            while let Some(b) = stream.next().await {
                w.write(&b.map_err(Error::from)?)?;
            }
            w.finish()?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Planning errors are the user's (exit 2); the statement is named in the one-line message.
fn user_error(sql: &str, e: DataFusionError) -> anyhow::Error {
    let short: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    let short = match short.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &short[..i]),
        None => short,
    };
    if is_sql_mistake(&e) {
        Error::usage(format!("in statement `{short}`: {}", root_message(&e))).into()
    } else {
        Error::from(e).into()
    }
}
