//! `clicklake sql`: run SQL over the lake's registered tables (`-c` for statements on the command
//! line, `-f` for a file), optionally as of an earlier version or time, and stream each result to
//! stdout as a table, CSV, TSV, JSON or NDJSON. Statements run in order; the first that fails
//! stops the run and is named in the error.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use futures::StreamExt;

use crate::catalog;
use crate::cli::{OutputFormat, SqlArgs};
use crate::config::Config;
use crate::error::{query_mistake, root_message, Error};
use crate::repl::{Flow, Meta, Settings};
use crate::storage::{Lake, TableAsOf};
use crate::summarize::Piece;

pub async fn run(cfg: &Config, lake: &Lake, args: &SqlArgs) -> anyhow::Result<ExitCode> {
    // Arguments first, before any I/O on the lake: each -c (or the -f file) with its origin.
    let sources: Vec<(String, String)> = match (args.command.as_slice(), &args.file) {
        ([one], _) => vec![(one.clone(), format!("SQL `{}`", shorten(one)))],
        (many, _) if !many.is_empty() => many
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), format!("-c #{} `{}`", i + 1, shorten(c))))
            .collect(),
        (_, Some(path)) => vec![(
            std::fs::read_to_string(path)
                .map_err(|e| Error::usage(format!("-f {}: {e}", path.display())))?,
            path.display().to_string(),
        )],
        (_, None) => Vec::new(),
    };
    if sources.is_empty() && !args.params.is_empty() {
        return Err(Error::usage("--param needs -c SQL or -f PATH").into());
    }
    let params = parse_params(&args.params)?;
    let sources = sources
        .into_iter()
        .map(|(text, origin)| Ok((substitute_params(&text, &params, &origin)?, origin)))
        .collect::<Result<Vec<_>, Error>>()?;
    let as_of = match (args.as_of_version, &args.as_of_time) {
        (Some(v), _) if v < 0 => {
            return Err(Error::usage("--as-of-version: a version is 0 or more").into())
        }
        (Some(v), _) => Some(TableAsOf::Version(v)),
        (None, Some(t)) => Some(TableAsOf::Time(
            chrono::DateTime::parse_from_rfc3339(t.trim())
                .map_err(|e| Error::usage(format!("--as-of-time {t:?}: {e} (use RFC 3339)")))?
                .with_timezone(&chrono::Utc),
        )),
        (None, None) => None,
    };
    if sources.is_empty() {
        // No -c and no -f: the REPL (a terminal) or statements piped on stdin.
        if args.output.is_some() {
            return Err(Error::usage("--output needs -c SQL or -f PATH").into());
        }
        let ctx = catalog::adhoc_session(cfg.memory_limit, lake)?;
        catalog::register_all(&ctx, lake, as_of).await?;
        let settings = Settings {
            format: args.format,
            max_rows: shown_rows(args.max_rows),
            quiet: cfg.quiet,
        };
        return crate::repl::run(cfg, lake, &ctx, settings, as_of.is_some()).await;
    }
    let mut items = Vec::new();
    for (text, origin) in &sources {
        // A `-c` may be one meta-command (`\d events`), as in psql.
        let parts = match args.file {
            None => vec![(1, text.clone())],
            Some(_) => script_parts(text),
        };
        let before = items.len();
        for (line, part) in parts {
            let at = match args.file {
                Some(_) => format!("{origin}:{line}"),
                None => origin.clone(),
            };
            match crate::repl::parse_meta(&part) {
                Ok(Some(meta)) => {
                    items.push(Item::Meta(meta, at));
                    continue;
                }
                Ok(None) => {}
                Err(msg) => return Err(Error::usage(format!("{at}: {msg}")).into()),
            }
            let parsed = crate::summarize::statements(&part)
                .map_err(|e| Error::usage(format!("{origin}: {e}")))?;
            items.extend(parsed.into_iter().map(Item::Piece));
        }
        if items.len() == before {
            return Err(Error::usage(format!("{origin}: no statement")).into());
        }
    }
    if args.output.is_some() && (items.len() > 1 || matches!(items[..], [Item::Meta(..)])) {
        return Err(Error::usage("--output takes the result of one SQL statement").into());
    }
    let ctx = catalog::adhoc_session(cfg.memory_limit, lake)?;
    let registered = catalog::register_all(&ctx, lake, as_of).await?;
    if as_of.is_some() && !cfg.quiet {
        let now = catalog::existing_tables(lake, &[]).await?;
        let missing: Vec<&String> = now.iter().filter(|t| !registered.contains(t)).collect();
        if !missing.is_empty() {
            eprintln!(
                "note: not registered (no such version, or not created yet then): {}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let many = items.len() > 1;
    let mut settings = Settings {
        format: args.format,
        max_rows: shown_rows(args.max_rows),
        quiet: cfg.quiet,
    };
    let out = |settings: &Settings| Output {
        format: settings.format,
        path: args.output.as_deref(),
        max_rows: settings.max_rows,
        time_travel: as_of.is_some(),
    };
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Item::Meta(meta, at) => {
                // A failing one (`\d` of a table that is not there) names where it was written.
                let flow = crate::repl::run_meta(meta, lake, &ctx, &mut settings)
                    .await
                    .with_context(|| at)?;
                if let Flow::Quit = flow {
                    break;
                }
            }
            Item::Piece(piece) => {
                let name = piece_name(&piece, i, many);
                run_piece(cfg, lake, &ctx, piece, &name, &out(&settings)).await?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A `-f` file's text as its SQL and its meta-commands, in order, each with the line it starts
/// on: a line starting with `\` where a statement may start (not inside one, a string or a
/// comment) is a meta-command, as in psql (`\format csv`, `\d events`). A file without one is
/// one part, parsed whole as before.
fn script_parts(text: &str) -> Vec<(usize, String)> {
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let at_statement_start = |sql: &str| match Tokenizer::new(&GenericDialect {}, sql).tokenize() {
        Ok(tokens) => tokens
            .iter()
            .rev()
            .find(|t| !matches!(t, Token::Whitespace(_)))
            .is_none_or(|t| *t == Token::SemiColon),
        Err(_) => false,
    };
    let mut parts = Vec::new();
    let (mut sql, mut sql_line) = (String::new(), 1);
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('\\') && at_statement_start(&sql) {
            if !sql.trim().is_empty() {
                parts.push((sql_line, std::mem::take(&mut sql)));
            }
            parts.push((i + 1, line.trim().to_string()));
            sql.clear();
            sql_line = i + 2;
            continue;
        }
        if sql.trim().is_empty() {
            sql_line = i + 1;
        }
        sql.push_str(line);
    }
    if !sql.trim().is_empty() {
        parts.push((sql_line, sql));
    }
    parts
}

/// One thing to run from `-c` or `-f`, in order.
enum Item {
    Piece(Piece),
    /// The meta-command, and where it was written (`-c #2 …`, `FILE:LINE`).
    Meta(Meta, String),
}

/// `--param NAME=VALUE` arguments as (name, value) pairs: each name once, an identifier.
fn parse_params(params: &[String]) -> Result<Vec<(String, String)>, Error> {
    let mut out: Vec<(String, String)> = Vec::new();
    for p in params {
        let (name, value) = p.split_once('=').ok_or_else(|| {
            Error::usage(format!(
                "--param {p:?}: write NAME=VALUE, e.g. day=2026-11-26"
            ))
        })?;
        if !is_param_name(name) {
            return Err(Error::usage(format!(
                "--param {p:?}: {name:?} is not a name (letters, digits and _, not first a digit)"
            )));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(Error::usage(format!("--param {name} is given twice")));
        }
        out.push((name.to_string(), value.to_string()));
    }
    Ok(out)
}

fn is_param_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `text` with every `${NAME}` replaced by its `--param` value. A reference to a name without a
/// value is a usage error naming it; `${` not followed by a name and `}` is left as it is.
fn substitute_params(
    text: &str,
    params: &[(String, String)],
    origin: &str,
) -> Result<String, Error> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        match after.find('}').map(|end| (&after[..end], end)) {
            Some((name, end)) if is_param_name(name) => {
                let value = params.iter().find(|(n, _)| n == name).ok_or_else(|| {
                    Error::usage(format!(
                        "{origin}: ${{{name}}} has no value (pass --param {name}=VALUE)"
                    ))
                })?;
                out.push_str(&value.1);
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The text on one line, cut at 80 characters.
fn shorten(text: &str) -> String {
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

/// `statement 3 (SELECT …)` when there are several, else the statement's text, shortened.
pub(crate) fn piece_name(piece: &Piece, index: usize, many: bool) -> String {
    let short = shorten(&match piece {
        Piece::Sql(statement) => statement.to_string(),
        Piece::Summarize(_, text) => text.clone(),
    });
    if many {
        format!("statement {} `{short}`", index + 1)
    } else {
        format!("statement `{short}`")
    }
}

/// Where results go: stdout, a local file or an object (multipart upload), written as they
/// stream.
type Sink = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

async fn open_sink(lake: &Lake, output: Option<&str>) -> anyhow::Result<Sink> {
    let Some(target) = output else {
        return Ok(Box::new(tokio::io::stdout()));
    };
    let url = crate::storage::parse_location(target, false)
        .map_err(|e| Error::usage(format!("--output {target:?}: {e}")))?;
    if url.scheme() == "file" {
        let path = url
            .to_file_path()
            .map_err(|_| Error::usage(format!("--output {target:?}: not a local path")))?;
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| Error::usage(format!("--output {}: {e}", path.display())))?;
        return Ok(Box::new(tokio::io::BufWriter::new(file)));
    }
    let (store, path) = lake.store_for(&url)?;
    Ok(Box::new(object_store::buffered::BufWriter::new(
        store, path,
    )))
}

/// A `Write` whose bytes are taken out after each batch and sent to the async sink.
#[derive(Clone, Default)]
struct Chunk(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Chunk {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Chunk {
    async fn drain_to(&self, sink: &mut Sink) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let bytes = std::mem::take(&mut *self.0.lock().expect("not poisoned"));
        if !bytes.is_empty() {
            sink.write_all(&bytes).await?;
        }
        Ok(())
    }
}

/// `--max-rows N` / `\maxrows N` as a limit: `None` (all) for 0.
pub(crate) fn shown_rows(n: usize) -> Option<usize> {
    (n > 0).then_some(n)
}

/// Where and how one statement's result is written.
pub(crate) struct Output<'a> {
    pub format: OutputFormat,
    /// A local path or object URL; stdout when `None`.
    pub path: Option<&'a str>,
    /// Table format only: show at most this many rows (the rest are counted, not held).
    pub max_rows: Option<usize>,
    /// The tables are registered as of a version or time (`--as-of-…`).
    pub time_travel: bool,
}

/// Plans and runs one statement, streaming its result to the output.
async fn run_statement(
    cfg: &Config,
    lake: &Lake,
    ctx: &datafusion::prelude::SessionContext,
    statement: Statement,
    (name, started): (&str, std::time::Instant),
    out: &Output<'_>,
) -> anyhow::Result<()> {
    let state = ctx.state();
    let show_columns = matches!(&statement, Statement::Statement(s)
        if matches!(s.as_ref(), datafusion::sql::sqlparser::ast::Statement::ShowColumns { .. }));
    let plan = state
        .statement_to_plan(sorted_show_tables(statement))
        .await
        .map_err(|e| planning_error(ctx, name, e, out.time_travel))?;
    if let Some(refusal) = lake_write(&plan) {
        return Err(Error::usage(format!("in {name}: {refusal}")).into());
    }
    let df = match plan {
        // DESCRIBE names types as SQL does (`VARCHAR`), as `\d TABLE` and DuckDB do, rather than
        // as the engine lays them out (`Utf8View`).
        LogicalPlan::DescribeTable(d) => ctx.read_batch(describe_batch(&d.schema)?)?,
        plan => ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| user_error(name, e))?,
    };
    let df = match show_columns {
        true => sql_typed_columns(ctx, df).await?,
        false => df,
    };
    write_result(cfg, lake, df, (name, started), out).await
}

/// `SHOW COLUMNS`' rows with their `data_type` named as SQL names it, like `DESCRIBE`: the
/// information schema names the engine's layout (`Utf8View`, `Timestamp(µs, "UTC")`).
async fn sql_typed_columns(
    ctx: &datafusion::prelude::SessionContext,
    df: datafusion::prelude::DataFrame,
) -> anyhow::Result<datafusion::prelude::DataFrame> {
    use arrow::array::{AsArray, StringArray};
    use std::str::FromStr;
    let mut batches = df.collect().await?;
    for batch in &mut batches {
        let Ok(i) = batch.schema().index_of("data_type") else {
            continue;
        };
        let column = arrow::compute::cast(batch.column(i), &arrow::datatypes::DataType::Utf8)?;
        let named: StringArray = column
            .as_string::<i32>()
            .iter()
            .map(|t| {
                t.map(|t| {
                    arrow::datatypes::DataType::from_str(t)
                        .map(|t| sql_type(&t))
                        .unwrap_or_else(|_| t.to_string())
                })
            })
            .collect();
        let mut columns = batch.columns().to_vec();
        columns[i] = std::sync::Arc::new(named);
        let mut fields: Vec<_> = batch.schema().fields().iter().cloned().collect();
        fields[i] = std::sync::Arc::new(
            fields[i]
                .as_ref()
                .clone()
                .with_data_type(arrow::datatypes::DataType::Utf8),
        );
        *batch = arrow::array::RecordBatch::try_new(
            std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
            columns,
        )?;
    }
    Ok(ctx.read_batches(batches)?)
}

/// A plain `SHOW TABLES` as the same rows in order, the lake's tables first by name; DataFusion
/// lists them in the order of its hash map, different from one run to the next.
fn sorted_show_tables(statement: Statement) -> Statement {
    use datafusion::sql::sqlparser::ast::{ShowStatementOptions, Statement as Sql};
    let plain = ShowStatementOptions {
        show_in: None,
        starts_with: None,
        limit: None,
        limit_from: None,
        filter_position: None,
    };
    match &statement {
        Statement::Statement(s) if matches!(s.as_ref(), Sql::ShowTables { show_options, .. } if *show_options == plain) =>
        {
            let sorted = "SELECT table_catalog, table_schema, table_name, table_type \
                          FROM information_schema.tables \
                          ORDER BY table_schema = 'information_schema', table_schema, table_name";
            DFParser::parse_sql_with_dialect(sorted, &GenericDialect {})
                .ok()
                .and_then(|mut s| s.pop_front())
                .unwrap_or(statement)
        }
        _ => statement,
    }
}

/// Runs one statement, SQL or `SUMMARIZE` (see [`crate::summarize`]), and writes its result.
pub(crate) async fn run_piece(
    cfg: &Config,
    lake: &Lake,
    ctx: &datafusion::prelude::SessionContext,
    piece: Piece,
    name: &str,
    out: &Output<'_>,
) -> anyhow::Result<()> {
    // From planning to the last row written, as datafusion-cli's "Elapsed".
    let started = std::time::Instant::now();
    match piece {
        Piece::Sql(statement) => {
            run_statement(cfg, lake, ctx, statement, (name, started), out).await
        }
        Piece::Summarize(from, _) => {
            let df = crate::summarize::run(ctx, &from)
                .await
                .map_err(|e| planning_error(ctx, name, e, out.time_travel))?;
            write_result(cfg, lake, df, (name, started), out).await
        }
    }
}

/// A statement that cannot be planned: a missing table named with the lake's tables, a user's
/// mistake as exit 2.
fn planning_error(
    ctx: &datafusion::prelude::SessionContext,
    name: &str,
    e: DataFusionError,
    time_travel: bool,
) -> anyhow::Error {
    match missing_table_hint(ctx, &e, time_travel) {
        Some(hint) => Error::usage(format!("in {name}: {}; {hint}", root_message(&e))).into(),
        None => user_error(name, e),
    }
}

/// Streams `df`'s result to the output in its format; `started` is when the statement's planning
/// began.
async fn write_result(
    cfg: &Config,
    lake: &Lake,
    df: datafusion::prelude::DataFrame,
    (name, started): (&str, std::time::Instant),
    out: &Output<'_>,
) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let (format, output) = (out.format, out.path);
    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
    let mut stream = df.execute_stream().await.map_err(|e| user_error(name, e))?;
    let mut sink = open_sink(lake, output).await?;
    let chunk = Chunk::default();
    let mut rows = 0usize;
    match format {
        OutputFormat::Table => {
            let limit = out.max_rows.unwrap_or(usize::MAX);
            let mut batches = Vec::new();
            let mut kept = 0usize;
            while let Some(b) = stream.next().await {
                let b = b.map_err(|e| user_error(name, e))?;
                rows += b.num_rows();
                if kept < limit {
                    let take = b.num_rows().min(limit - kept);
                    kept += take;
                    batches.push(b.slice(0, take));
                }
            }
            // A statement without columns (CREATE VIEW, DROP TABLE…) shows no empty frame.
            if !schema.fields().is_empty() {
                // With the schema, an empty result still shows its column names.
                let shown = arrow::util::pretty::pretty_format_batches_with_schema(
                    schema.clone(),
                    &batches,
                )?;
                sink.write_all(format!("{shown}\n").as_bytes()).await?;
            }
            if rows > kept {
                sink.write_all(format!("({kept} of {rows} rows shown)\n").as_bytes())
                    .await?;
            }
        }
        OutputFormat::Line => {
            let limit = out.max_rows.unwrap_or(usize::MAX);
            let width = schema.fields().iter().map(|f| f.name().chars().count());
            let width = width.max().unwrap_or(0);
            let options = arrow::util::display::FormatOptions::default();
            while let Some(b) = stream.next().await {
                let b = b.map_err(|e| user_error(name, e))?;
                let shown = b.num_rows().min(limit.saturating_sub(rows));
                rows += b.num_rows();
                if shown == 0 {
                    continue;
                }
                let columns = formatters(&b, &options)?;
                let mut text = String::new();
                for row in 0..shown {
                    if rows - b.num_rows() + row > 0 {
                        text.push('\n');
                    }
                    for (field, column) in schema.fields().iter().zip(&columns) {
                        use std::fmt::Write as _;
                        writeln!(text, "{:>width$} = {}", field.name(), column.value(row))?;
                    }
                }
                sink.write_all(text.as_bytes()).await?;
            }
            if rows > limit {
                sink.write_all(format!("\n({limit} of {rows} rows shown)\n").as_bytes())
                    .await?;
            }
        }
        OutputFormat::Markdown => {
            sink.write_all(markdown_header(&schema).as_bytes()).await?;
            let options = arrow::util::display::FormatOptions::default();
            while let Some(b) = stream.next().await {
                let b = b.map_err(|e| user_error(name, e))?;
                rows += b.num_rows();
                let columns = formatters(&b, &options)?;
                // One text per batch; a cell is formatted into `cell`, reused, and escaped only
                // when it holds a `|` or a line break.
                let (mut text, mut cell) = (String::new(), String::new());
                for row in 0..b.num_rows() {
                    text.push('|');
                    for c in &columns {
                        use std::fmt::Write as _;
                        cell.clear();
                        write!(cell, "{}", c.value(row))?;
                        text.push(' ');
                        push_markdown_cell(&mut text, &cell);
                        text.push_str(" |");
                    }
                    text.push('\n');
                }
                sink.write_all(text.as_bytes()).await?;
            }
        }
        OutputFormat::Csv | OutputFormat::Tsv => {
            let delim = if format == OutputFormat::Csv {
                b','
            } else {
                b'\t'
            };
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .with_delimiter(delim)
                .build(chunk.clone());
            while let Some(b) = stream.next().await {
                let b = b.map_err(|e| user_error(name, e))?;
                rows += b.num_rows();
                w.write(&b)?;
                chunk.drain_to(&mut sink).await?;
            }
            if rows == 0 {
                // The header alone, as for any other result.
                w.write(&arrow::record_batch::RecordBatch::new_empty(schema.clone()))?;
                chunk.drain_to(&mut sink).await?;
            }
        }
        OutputFormat::Json => {
            let mut w = arrow::json::ArrayWriter::new(chunk.clone());
            while let Some(b) = stream.next().await {
                let b = b.map_err(|e| user_error(name, e))?;
                rows += b.num_rows();
                w.write(&b)?;
                chunk.drain_to(&mut sink).await?;
            }
            w.finish()?;
            drop(w);
            let mut tail = chunk.clone();
            tail.write_all(b"\n")?;
            chunk.drain_to(&mut sink).await?;
        }
        OutputFormat::Ndjson => {
            let mut w = arrow::json::LineDelimitedWriter::new(chunk.clone());
            while let Some(b) = stream.next().await {
                let b = b.map_err(|e| user_error(name, e))?;
                rows += b.num_rows();
                w.write(&b)?;
                chunk.drain_to(&mut sink).await?;
            }
            w.finish()?;
            chunk.drain_to(&mut sink).await?;
        }
        OutputFormat::Parquet => {
            let props =
                crate::delta::writer_properties(cfg.ingest.zstd_level, cfg.ingest.row_group_rows)?;
            let mut w = parquet::arrow::AsyncArrowWriter::try_new(&mut sink, schema, Some(props))?;
            while let Some(b) = stream.next().await {
                let b = b.map_err(|e| user_error(name, e))?;
                rows += b.num_rows();
                w.write(&b).await?;
            }
            // Closing the writer completes the sink (the upload, for an object).
            w.close().await?;
        }
    }
    if format != OutputFormat::Parquet {
        sink.flush().await?;
        sink.shutdown().await?;
    }
    if !cfg.quiet
        && (matches!(format, OutputFormat::Table | OutputFormat::Line) || output.is_some())
    {
        let secs = started.elapsed().as_secs_f64();
        match output {
            Some(o) => eprintln!("{rows} row(s) written to {o} in {secs:.3} s"),
            None => eprintln!("{rows} row(s) in {secs:.3} s"),
        }
    }
    Ok(())
}

/// A formatter of each column of `b`, for its values as text.
fn formatters<'a>(
    b: &'a arrow::record_batch::RecordBatch,
    options: &'a arrow::util::display::FormatOptions<'a>,
) -> Result<Vec<arrow::util::display::ArrayFormatter<'a>>, arrow::error::ArrowError> {
    b.columns()
        .iter()
        .map(|c| arrow::util::display::ArrayFormatter::try_new(c, options))
        .collect()
}

/// A Markdown table's header: the column names, then a rule that aligns numbers right.
fn markdown_header(schema: &arrow::datatypes::Schema) -> String {
    let (mut names, mut rule) = (String::from("|"), String::from("|"));
    for f in schema.fields() {
        names.push(' ');
        push_markdown_cell(&mut names, f.name());
        names.push_str(" |");
        rule.push_str(match f.data_type().is_numeric() {
            true => " ---: |",
            false => " --- |",
        });
    }
    format!("{names}\n{rule}\n")
}

/// Appends a value as a Markdown table cell: a `|` escaped, line breaks as `<br>` (a cell is one
/// line); most values need neither and are copied as they are.
fn push_markdown_cell(out: &mut String, value: &str) {
    if !value.contains(['|', '\n', '\r']) {
        out.push_str(value);
        return;
    }
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '|' => out.push_str("\\|"),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\r' | '\n' => out.push_str("<br>"),
            c => out.push(c),
        }
    }
}

/// A column type as SQL names it (what `CAST(x AS …)` takes), as DuckDB's `DESCRIBE` shows it:
/// `VARCHAR` rather than the engine's `Utf8View`; anything without a SQL name as Arrow's.
pub(crate) fn sql_type(t: &arrow::datatypes::DataType) -> String {
    use arrow::datatypes::DataType as T;
    match t {
        T::Utf8 | T::LargeUtf8 | T::Utf8View => "VARCHAR".into(),
        T::Boolean => "BOOLEAN".into(),
        T::Int8 => "TINYINT".into(),
        T::Int16 => "SMALLINT".into(),
        T::Int32 => "INTEGER".into(),
        T::Int64 => "BIGINT".into(),
        T::UInt8 => "TINYINT UNSIGNED".into(),
        T::UInt16 => "SMALLINT UNSIGNED".into(),
        T::UInt32 => "INTEGER UNSIGNED".into(),
        T::UInt64 => "BIGINT UNSIGNED".into(),
        T::Float32 => "REAL".into(),
        T::Float64 => "DOUBLE".into(),
        T::Decimal128(p, s) | T::Decimal256(p, s) => format!("DECIMAL({p}, {s})"),
        T::Date32 | T::Date64 => "DATE".into(),
        T::Timestamp(_, Some(tz)) => format!("TIMESTAMP WITH TIME ZONE ({tz})"),
        T::Timestamp(_, None) => "TIMESTAMP".into(),
        T::Binary | T::LargeBinary | T::BinaryView => "BYTEA".into(),
        T::Dictionary(_, value) => sql_type(value),
        T::List(item) | T::LargeList(item) | T::ListView(item) => {
            format!("{}[]", sql_type(item.data_type()))
        }
        T::Struct(fields) => format!(
            "STRUCT({})",
            fields
                .iter()
                .map(|f| format!("{} {}", f.name(), sql_type(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

/// `DESCRIBE TABLE`'s result, with DataFusion's columns: `column_name`, `data_type` (as SQL names
/// it), `is_nullable` (`YES`/`NO`).
fn describe_batch(schema: &arrow::datatypes::Schema) -> anyhow::Result<arrow::array::RecordBatch> {
    use arrow::array::StringArray;
    let fields = schema.fields();
    let column = |values: Vec<String>| std::sync::Arc::new(StringArray::from(values)) as _;
    Ok(arrow::array::RecordBatch::try_from_iter([
        (
            "column_name",
            column(fields.iter().map(|f| f.name().clone()).collect()),
        ),
        (
            "data_type",
            column(fields.iter().map(|f| sql_type(f.data_type())).collect()),
        ),
        (
            "is_nullable",
            column(
                fields
                    .iter()
                    .map(|f| if f.is_nullable() { "YES" } else { "NO" }.to_string())
                    .collect(),
            ),
        ),
    ])?)
}

/// `clicklake sql` reads the lake; it does not change it. DataFusion would commit an `INSERT`
/// into a lake table as a Delta append behind the lake's lock, past validation, deduplication and
/// the erasure records, and a `DROP` or `CREATE OR REPLACE` of one would only hide it from this
/// session. Both are refused, wherever they sit in the plan (`EXPLAIN ANALYZE INSERT …` runs the
/// insert). Tables and views the session creates under other names stay writable.
fn lake_write(plan: &LogicalPlan) -> Option<String> {
    let mut refusal = None;
    let _ = plan.apply(|node| {
        let (table, writes) = match node {
            LogicalPlan::Dml(dml) => (&dml.table_name, true),
            LogicalPlan::Ddl(ddl) => match ddl {
                DdlStatement::DropTable(d) => (&d.name, false),
                DdlStatement::DropView(d) => (&d.name, false),
                DdlStatement::CreateMemoryTable(c) => (&c.name, false),
                DdlStatement::CreateView(c) => (&c.name, false),
                DdlStatement::CreateExternalTable(c) => (&c.name, false),
                _ => return Ok(TreeNodeRecursion::Continue),
            },
            _ => return Ok(TreeNodeRecursion::Continue),
        };
        let in_lake_schema = matches!(table.schema(), None | Some("public"));
        if !(in_lake_schema && catalog::is_lake_table(table.table())) {
            return Ok(TreeNodeRecursion::Continue);
        }
        let table = table.table();
        refusal = Some(match writes {
            true => format!(
                "{table} is read-only in `clicklake sql`: a write here would skip validation, \
                 deduplication, erasures and the lake's lock (rows land with `clicklake ingest` \
                 and leave with `clicklake erase`)"
            ),
            false => format!(
                "{table} is one of the lake's tables, read-only in `clicklake sql` (dropping or \
                 replacing it here would only hide it from this session); give your own table \
                 or view another name"
            ),
        });
        Ok(TreeNodeRecursion::Stop)
    });
    refusal
}

/// For "table 'x' not found": the lake's tables, and the command that creates `x` when it is
/// one of clicklake's own (`events` after `clean`, the star schema after `build`).
fn missing_table_hint(
    ctx: &datafusion::prelude::SessionContext,
    e: &DataFusionError,
    time_travel: bool,
) -> Option<String> {
    let DataFusionError::Plan(message) = e.find_root() else {
        return None;
    };
    let quoted = message
        .strip_prefix("table '")?
        .strip_suffix("' not found")?;
    // A lake table's name has neither `/` nor `.`: this one is a path or URL, and DataFusion
    // found no file there it knows how to read.
    if let Some(named) = quoted
        .strip_prefix("datafusion.public.")
        .filter(|n| n.contains(['/', '\\', '.']))
    {
        return Some(format!(
            "nothing readable at {named}: no such file or directory, or a format not known from \
             its extension (.parquet, .csv, .json, .avro, .arrow, optionally compressed: \
             .csv.gz); for other names, CREATE EXTERNAL TABLE t STORED AS JSON LOCATION '…'"
        ));
    }
    let missing = quoted.rsplit('.').next().unwrap_or(quoted);
    let names = catalog::registered_tables(ctx);
    if time_travel {
        return Some(match names.is_empty() {
            true => "no table existed at that version or time".to_string(),
            false => format!("the tables at that version or time: {}", names.join(", ")),
        });
    }
    let mut hint = match names.is_empty() {
        true => "the lake has no tables yet (run `clicklake ingest`)".to_string(),
        false => format!("the lake's tables: {}", names.join(", ")),
    };
    if missing == catalog::EVENTS.name || missing == catalog::EVENTS_CHANGES.name {
        hint.push_str(&format!("; `clicklake clean` creates {missing}"));
    } else if catalog::star_tables().iter().any(|t| t == missing) {
        hint.push_str(&format!("; `clicklake build` creates {missing}"));
    }
    Some(hint)
}

/// A query that does not plan, or one that meets a value it cannot evaluate, is the user's to fix
/// (exit 2); the statement is named in the one-line message.
fn user_error(name: &str, e: DataFusionError) -> anyhow::Error {
    match query_mistake(&e) {
        Some(message) => Error::usage(format!("in {name}: {message}")).into(),
        None => Error::from(e).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_s_meta_commands_are_the_lines_where_a_statement_may_start() {
        let parts = script_parts(
            "\\format csv\nSELECT 1;\n\n  \\d events\nSELECT 'a\n\\not a command' AS s;\nSELECT\n",
        );
        assert_eq!(
            parts,
            [
                (1, "\\format csv".to_string()),
                (2, "SELECT 1;\n\n".to_string()),
                (4, "\\d events".to_string()),
                (5, "SELECT 'a\n\\not a command' AS s;\nSELECT\n".to_string()),
            ]
        );
        assert_eq!(
            script_parts("SELECT 1; SELECT 2"),
            [(1, "SELECT 1; SELECT 2".to_string())]
        );
    }

    #[test]
    fn describe_names_types_as_sql_does() {
        use arrow::datatypes::{DataType as T, Field, TimeUnit};
        assert_eq!(sql_type(&T::Utf8View), "VARCHAR");
        assert_eq!(sql_type(&T::Decimal128(18, 2)), "DECIMAL(18, 2)");
        assert_eq!(
            sql_type(&T::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))),
            "TIMESTAMP WITH TIME ZONE (UTC)"
        );
        assert_eq!(
            sql_type(&T::List(std::sync::Arc::new(Field::new(
                "item",
                T::Int64,
                true
            )))),
            "BIGINT[]"
        );
        assert_eq!(sql_type(&T::Duration(TimeUnit::Second)), "Duration(s)");
    }

    #[test]
    fn params_fill_their_references_and_nothing_else() {
        let params = parse_params(&["day=2026-01-05".into(), "seg=vip's".into()]).unwrap();
        let sql = "SELECT '${x' AS a, ${ day} AS b FROM events \
                   WHERE event_date = DATE '${day}' AND segment = '${seg}' -- ${day}";
        assert_eq!(
            substitute_params(sql, &params, "q").unwrap(),
            "SELECT '${x' AS a, ${ day} AS b FROM events \
             WHERE event_date = DATE '2026-01-05' AND segment = 'vip's' -- 2026-01-05"
        );
        let err = substitute_params("SELECT ${other}", &params, "q.sql").unwrap_err();
        assert!(
            err.to_string().contains("q.sql: ${other} has no value"),
            "{err}"
        );
        for bad in ["day", "1day=x", "=x", "a-b=1"] {
            assert!(parse_params(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(parse_params(&["a=1".into(), "a=2".into()]).is_err());
        assert_eq!(
            parse_params(&["expr=a=b".into()]).unwrap(),
            [("expr".to_string(), "a=b".to_string())]
        );
    }
}
