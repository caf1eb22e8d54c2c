//! The interactive side of `clicklake sql`: a read-eval-print loop over the lake's tables, in the
//! manner of datafusion-cli and the DuckDB shell.
//!
//! On a terminal it reads with line editing, Tab completion (keywords, tables, columns) and a
//! history file; with stdin piped it reads the same input without prompts, so
//! `echo '\d events' | clicklake sql` works in scripts. Statements may span lines and end with
//! `;`. Meta-commands start a line:
//!
//! | command | does |
//! |---|---|
//! | `\d`, `.tables` | list the tables |
//! | `\d TABLE`, `.schema TABLE` | describe a table: columns, types, nullability, partitions |
//! | `\format FORMAT` | switch the output format (table, csv, tsv, json, ndjson, line, markdown) |
//! | `\x [on\|off]` | rows as `column = value` lines, for wide rows (psql's expanded display) |
//! | `\maxrows N` | rows shown by the table and line formats (the rest are counted); 0 for all |
//! | `\?`, `.help` | this list |
//! | `\q`, `.quit`, `exit` | leave (Ctrl-D too) |
//!
//! A failing statement prints its error and the loop goes on. Ctrl-C clears the statement being
//! typed, or cancels the one running. Piped input exits 2 when any statement failed.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;
use datafusion::prelude::SessionContext;
use rustyline::error::ReadlineError;

use crate::cli::OutputFormat;
use crate::commands::sql::{piece_name, run_piece, sql_type, Output};
use crate::config::Config;
use crate::error::exit;
use crate::storage::Lake;

const PROMPT: &str = "clicklake> ";
const CONTINUE: &str = "        -> ";

const HELP: &str = "\
  \\d, .tables            list the tables
  \\d TABLE, .schema T    describe a table
  \\format FORMAT         table, csv, tsv, json, ndjson, line or markdown
  \\x [on|off]            rows as `column = value` lines (for wide rows)
  \\maxrows N             rows the table and line formats show (0: all)
  \\q, .quit, exit        leave (or Ctrl-D)
  SUMMARIZE TABLE;       profile every column (or SUMMARIZE SELECT …;)
  SQL ending with ;      run it (statements may span lines)";

/// Words Tab completes besides the lake's tables and columns: the SQL an analyst types most.
const KEYWORDS: &[&str] = &[
    "select",
    "from",
    "where",
    "group",
    "by",
    "order",
    "having",
    "limit",
    "join",
    "left",
    "right",
    "full",
    "inner",
    "outer",
    "on",
    "using",
    "as",
    "and",
    "or",
    "not",
    "in",
    "is",
    "null",
    "like",
    "ilike",
    "between",
    "case",
    "when",
    "then",
    "else",
    "end",
    "distinct",
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "with",
    "union",
    "all",
    "desc",
    "asc",
    "cast",
    "date",
    "timestamp",
    "interval",
    "describe",
    "explain",
    "analyze",
    "copy",
    "to",
    "date_trunc",
    "approx_distinct",
    "coalesce",
    "current_date",
    "now",
    "over",
    "partition",
    "row_number",
    "first_value",
];

/// Tab completion in the REPL: SQL keywords and the lake's table and column names, in the case
/// the word was begun in (`sel` → `select`, `SEL` → `SELECT`).
struct Completion {
    /// Lower-case, sorted, each once.
    words: Vec<String>,
}

impl Completion {
    fn new(names: impl IntoIterator<Item = String>) -> Completion {
        let mut words: Vec<String> = names
            .into_iter()
            .chain(KEYWORDS.iter().map(|k| k.to_string()))
            .map(|w| w.to_lowercase())
            .collect();
        words.sort();
        words.dedup();
        Completion { words }
    }

    /// The candidates for the word that ends at `pos` in `line`, and where that word starts. A
    /// word is letters, digits and `_`, so after `e.` only the column part is completed.
    fn candidates(&self, line: &str, pos: usize) -> (usize, Vec<String>) {
        let head = &line[..pos];
        let start = head
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_alphanumeric() || *c == '_')
            .last()
            .map_or(pos, |(i, _)| i);
        let word = &head[start..];
        if word.is_empty() {
            return (pos, Vec::new());
        }
        let lower = word.to_lowercase();
        let upper = word.chars().any(char::is_uppercase) && !word.chars().any(char::is_lowercase);
        let found = self
            .words
            .iter()
            .filter(|w| w.starts_with(&lower))
            .map(|w| if upper { w.to_uppercase() } else { w.clone() })
            .collect();
        (start, found)
    }
}

impl rustyline::completion::Completer for Completion {
    type Candidate = String;
    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(self.candidates(line, pos))
    }
}

impl rustyline::hint::Hinter for Completion {
    type Hint = String;
}
impl rustyline::highlight::Highlighter for Completion {}
impl rustyline::validate::Validator for Completion {}
impl rustyline::Helper for Completion {}

type Editor = rustyline::Editor<Completion, rustyline::history::DefaultHistory>;

/// Where lines come from.
enum Lines {
    /// A terminal: line editing, Tab completion, history kept in a file.
    Editor {
        editor: Box<Editor>,
        history: Option<PathBuf>,
    },
    /// Piped stdin: no prompts, no history.
    Piped(std::io::StdinLock<'static>),
}

enum Line {
    Text(String),
    /// Ctrl-C at the prompt.
    Interrupted,
    End,
}

impl Lines {
    /// `names`: the tables and columns Tab completes.
    fn open(names: Vec<String>) -> anyhow::Result<Lines> {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return Ok(Lines::Piped(std::io::stdin().lock()));
        }
        let mut editor = Editor::new()?;
        editor.set_helper(Some(Completion::new(names)));
        let history = history_path();
        if let Some(path) = &history {
            // A missing history file is the first session, not an error.
            let _ = editor.load_history(path);
        }
        Ok(Lines::Editor {
            editor: Box::new(editor),
            history,
        })
    }

    fn interactive(&self) -> bool {
        matches!(self, Lines::Editor { .. })
    }

    fn read(&mut self, prompt: &str) -> anyhow::Result<Line> {
        match self {
            Lines::Editor { editor, .. } => {
                match tokio::task::block_in_place(|| editor.readline(prompt)) {
                    Ok(line) => Ok(Line::Text(line)),
                    Err(ReadlineError::Interrupted) => Ok(Line::Interrupted),
                    Err(ReadlineError::Eof) => Ok(Line::End),
                    Err(e) => Err(e.into()),
                }
            }
            Lines::Piped(stdin) => {
                let mut line = String::new();
                if stdin.read_line(&mut line)? == 0 {
                    return Ok(Line::End);
                }
                Ok(Line::Text(line.trim_end_matches(['\n', '\r']).to_string()))
            }
        }
    }

    fn remember(&mut self, entry: &str) {
        if let Lines::Editor { editor, .. } = self {
            let _ = editor.add_history_entry(entry.trim());
        }
    }

    fn save(&mut self) {
        if let Lines::Editor {
            editor,
            history: Some(path),
        } = self
        {
            if let Err(e) = editor.save_history(path) {
                tracing::warn!("cannot save history to {}: {e}", path.display());
            }
        }
    }
}

/// `$CLICKLAKE_HISTORY`, else `~/.clicklake_history`.
fn history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CLICKLAKE_HISTORY").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".clicklake_history"))
}

/// What a meta-command asks for.
#[derive(Debug, PartialEq)]
pub(crate) enum Meta {
    Quit,
    Help,
    ListTables,
    Describe(String),
    Format(OutputFormat),
    /// `\x`: rows as `column = value` lines (on), as a table (off), or the other of the two.
    Expanded(Option<bool>),
    MaxRows(Option<usize>),
}

/// Parses a line that starts with `\` or `.` (or is `exit`/`quit`); `Err` is a message for the
/// user; `Ok(None)` means the line is SQL.
pub(crate) fn parse_meta(line: &str) -> Result<Option<Meta>, String> {
    let line = line.trim().trim_end_matches(';').trim();
    let mut words = line.split_whitespace();
    let Some(cmd) = words.next() else {
        return Ok(None);
    };
    let is_meta = cmd.starts_with('\\')
        || (cmd.starts_with('.') && cmd.len() > 1)
        || (matches!(cmd, "exit" | "quit") && line == cmd);
    if !is_meta {
        return Ok(None);
    }
    let arg = words.next();
    if words.next().is_some() {
        return Err(format!(
            "{cmd}: too many arguments (\\? lists the commands)"
        ));
    }
    let meta = match (cmd, arg) {
        ("\\q" | ".quit" | ".exit" | "exit" | "quit", None) => Meta::Quit,
        ("\\?" | "\\h" | ".help", None) => Meta::Help,
        ("\\d" | "\\dt" | ".tables", None) => Meta::ListTables,
        ("\\d" | ".schema" | ".describe", Some(t)) => Meta::Describe(t.to_string()),
        ("\\x", None) => Meta::Expanded(None),
        ("\\x", Some("on")) => Meta::Expanded(Some(true)),
        ("\\x", Some("off")) => Meta::Expanded(Some(false)),
        ("\\format" | ".mode", Some(f)) => match OutputFormat::from_str(f, true) {
            Ok(OutputFormat::Parquet) | Err(_) => {
                return Err(format!(
                    "{cmd}: {f:?} is not one of table, csv, tsv, json, ndjson, line, markdown"
                ))
            }
            Ok(f) => Meta::Format(f),
        },
        ("\\maxrows" | ".maxrows", Some(n)) => match n.parse::<usize>() {
            Ok(n) => Meta::MaxRows(crate::commands::sql::shown_rows(n)),
            Err(_) => return Err(format!("{cmd}: {n:?} is not a number of rows")),
        },
        _ => return Err(format!("unknown command `{line}` (\\? lists the commands)")),
    };
    Ok(Some(meta))
}

/// True when the buffered text ends a statement: its last non-blank character, outside a
/// `--` comment, is `;`.
fn statement_complete(buffer: &str) -> bool {
    buffer
        .lines()
        .rev()
        .map(|l| match l.find("--") {
            Some(i) => &l[..i],
            None => l,
        })
        .map(str::trim)
        .find(|l| !l.is_empty())
        .is_some_and(|l| l.ends_with(';'))
}

/// Runs the loop until `\q` or end of input.
pub(crate) async fn run(
    cfg: &Config,
    lake: &Lake,
    ctx: &SessionContext,
    mut settings: Settings,
    time_travel: bool,
) -> anyhow::Result<ExitCode> {
    let mut lines = Lines::open(completion_names(ctx).await)?;
    let interactive = lines.interactive();
    if interactive && !cfg.quiet {
        eprintln!(
            "clicklake {} on {}: SQL ending with ; runs, \\? for help, \\q to quit",
            env!("CARGO_PKG_VERSION"),
            lake.root()
        );
    }
    let mut buffer = String::new();
    let mut failures = 0usize;
    let output = |settings: &Settings| Output {
        format: settings.format,
        path: None,
        max_rows: settings.max_rows,
        time_travel,
    };
    loop {
        let prompt = if buffer.is_empty() { PROMPT } else { CONTINUE };
        let line = match lines.read(prompt)? {
            Line::Text(l) => l,
            Line::Interrupted => {
                buffer.clear();
                continue;
            }
            Line::End => break,
        };
        if buffer.is_empty() {
            match parse_meta(&line) {
                Ok(None) => {}
                Ok(Some(meta)) => {
                    lines.remember(&line);
                    match run_meta(meta, lake, ctx, &mut settings).await {
                        Ok(Flow::Quit) => break,
                        Ok(Flow::Continue) => {}
                        Err(e) if crate::error::is_broken_pipe(&e) => return Err(e),
                        Err(e) => {
                            failures += 1;
                            eprintln!("error: {}", crate::error::one_line(&e));
                        }
                    }
                    continue;
                }
                Err(msg) => {
                    failures += 1;
                    eprintln!("error: {msg}");
                    continue;
                }
            }
            if line.trim().is_empty() {
                continue;
            }
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if statement_complete(&buffer) {
            lines.remember(&buffer);
            let text = std::mem::take(&mut buffer);
            let out = output(&settings);
            failures += execute(cfg, lake, ctx, &text, &out, interactive).await;
        }
    }
    // Piped input may end without a final `;`.
    if !buffer.trim().is_empty() {
        let out = output(&settings);
        failures += execute(cfg, lake, ctx, &buffer, &out, interactive).await;
    }
    lines.save();
    if failures > 0 && !interactive {
        return Ok(ExitCode::from(exit::USAGE));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the statements of one input; prints errors and returns how many failed. On a terminal,
/// Ctrl-C cancels the statement running.
async fn execute(
    cfg: &Config,
    lake: &Lake,
    ctx: &SessionContext,
    text: &str,
    out: &Output<'_>,
    interactive: bool,
) -> usize {
    let pieces = match crate::summarize::statements(text) {
        Ok(pieces) => pieces,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let many = pieces.len() > 1;
    for (i, piece) in pieces.into_iter().enumerate() {
        let name = piece_name(&piece, i, many);
        let started = std::time::Instant::now();
        let work = run_piece(cfg, lake, ctx, piece, &name, out);
        let result = if interactive {
            tokio::select! {
                r = work => r,
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("cancelled");
                    return 1;
                }
            }
        } else {
            work.await
        };
        match result {
            Ok(()) => {
                if interactive && !cfg.quiet {
                    eprintln!("({:.3}s)", started.elapsed().as_secs_f64());
                }
            }
            Err(e) => {
                eprintln!("error: {}", crate::error::one_line(&e));
                return 1;
            }
        }
    }
    0
}

/// How results are shown; meta-commands change it for the statements after them.
pub(crate) struct Settings {
    pub format: OutputFormat,
    /// Table format only: rows shown (the rest are counted); `None` for all.
    pub max_rows: Option<usize>,
    /// `-q`: no status messages (`\x`'s "expanded display is on").
    pub quiet: bool,
}

/// What the caller does after a meta-command.
pub(crate) enum Flow {
    Continue,
    Quit,
}

/// Runs one meta-command, in the REPL or from `sql -c '\d events'` as psql runs them: listings on
/// stdout, `\format` and `\maxrows` into `settings` for the statements that follow.
pub(crate) async fn run_meta(
    meta: Meta,
    lake: &Lake,
    ctx: &SessionContext,
    settings: &mut Settings,
) -> anyhow::Result<Flow> {
    match meta {
        Meta::Quit => return Ok(Flow::Quit),
        Meta::Help => outln!("{HELP}")?,
        Meta::ListTables => list_tables(ctx)?,
        Meta::Describe(t) => describe(lake, ctx, &t).await?,
        Meta::Format(f) => settings.format = f,
        Meta::Expanded(on) => {
            let on = on.unwrap_or(settings.format != OutputFormat::Line);
            settings.format = if on {
                OutputFormat::Line
            } else {
                OutputFormat::Table
            };
            if !settings.quiet {
                eprintln!("expanded display is {}", if on { "on" } else { "off" });
            }
        }
        Meta::MaxRows(n) => settings.max_rows = n,
    }
    Ok(Flow::Continue)
}

/// The registered tables' names and their columns'.
async fn completion_names(ctx: &SessionContext) -> Vec<String> {
    let mut names = Vec::new();
    for table in crate::catalog::registered_tables(ctx) {
        if let Ok(provider) = ctx.table_provider(table.as_str()).await {
            names.extend(provider.schema().fields().iter().map(|f| f.name().clone()));
        }
        names.push(table);
    }
    names
}

fn list_tables(ctx: &SessionContext) -> std::io::Result<()> {
    let names = crate::catalog::registered_tables(ctx);
    if names.is_empty() {
        outln!("(no tables yet: run ingest)")?;
    }
    for n in names {
        outln!("{n}")?;
    }
    Ok(())
}

/// Columns, types and nullability of one table, and its partition columns.
async fn describe(lake: &Lake, ctx: &SessionContext, table: &str) -> anyhow::Result<()> {
    let provider = ctx.table_provider(table).await.map_err(|_| {
        crate::error::Error::usage(format!("no table {table:?} (\\d lists the tables)"))
    })?;
    let schema = provider.schema();
    let width = schema
        .fields()
        .iter()
        .map(|f| f.name().len())
        .max()
        .unwrap_or(0);
    outln!("{table}")?;
    for f in schema.fields() {
        outln!(
            "  {:<width$}  {}{}",
            f.name(),
            sql_type(f.data_type()),
            if f.is_nullable() { "" } else { " NOT NULL" }
        )?;
    }
    if let Some(t) = lake.open_table(table).await? {
        let parts = t.snapshot()?.metadata().partition_columns().to_vec();
        if !parts.is_empty() {
            outln!("  partitioned by {}", parts.join(", "))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tab_completes_keywords_tables_and_columns_in_the_case_begun() {
        let c = Completion::new(["events".into(), "event_id".into(), "event_time".into()]);
        assert_eq!(
            c.candidates("select eve", 10),
            (
                7,
                vec!["event_id".into(), "event_time".into(), "events".into()]
            )
        );
        assert_eq!(c.candidates("SEL", 3), (0, vec!["SELECT".to_string()]));
        assert_eq!(c.candidates("sel", 3).1, ["select"]);
        // After a qualifier only the column part is completed; nothing begun, nothing offered.
        assert_eq!(
            c.candidates("SELECT e.event_t FROM events e", 16),
            (9, vec!["event_time".to_string()])
        );
        assert_eq!(c.candidates("SELECT ", 7), (7, Vec::new()));
    }

    #[test]
    fn meta_commands_parse() {
        assert_eq!(parse_meta("\\q").unwrap(), Some(Meta::Quit));
        assert_eq!(parse_meta("  .tables ").unwrap(), Some(Meta::ListTables));
        assert_eq!(
            parse_meta("\\d events;").unwrap(),
            Some(Meta::Describe("events".into()))
        );
        assert_eq!(
            parse_meta("\\format CSV").unwrap(),
            Some(Meta::Format(OutputFormat::Csv))
        );
        assert_eq!(
            parse_meta("\\maxrows 0").unwrap(),
            Some(Meta::MaxRows(None))
        );
        assert_eq!(parse_meta("\\x").unwrap(), Some(Meta::Expanded(None)));
        assert_eq!(
            parse_meta("\\x off").unwrap(),
            Some(Meta::Expanded(Some(false)))
        );
        assert!(parse_meta("\\x maybe").is_err());
        assert_eq!(parse_meta("select 1;").unwrap(), None);
        assert_eq!(parse_meta("exit_rows > 1").unwrap(), None);
        assert!(parse_meta("\\format parquet").is_err());
        assert!(parse_meta("\\bogus").is_err());
    }

    #[test]
    fn statements_end_with_a_semicolon_outside_comments() {
        assert!(statement_complete("select 1;\n"));
        assert!(statement_complete("select\n1; -- done\n"));
        assert!(!statement_complete("select 1 -- ;\n"));
        assert!(!statement_complete("select\n"));
    }
}
