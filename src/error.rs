//! The library's error type and the stable exit codes that cron and CI read.
//!
//! Every failure is classified once, here: a user mistake (bad flag, bad config, unreadable input)
//! is a usage error; anything the environment did to us (storage, I/O) is a runtime error.

use std::process::ExitCode;

/// Exit codes, documented in the README. Never renumber them.
pub mod exit {
    /// Everything worked.
    pub const SUCCESS: u8 = 0;
    /// Data checks failed (the run itself worked).
    pub const CHECKS_FAILED: u8 = 1;
    /// Usage or configuration error: nothing was changed.
    pub const USAGE: u8 = 2;
    /// Runtime failure: storage, I/O, a corrupt input stream.
    pub const RUNTIME: u8 = 3;
    /// Another run holds the lake's lock, or another writer committed to a table first: try again.
    pub const LOCKED: u8 = 75;
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag, argument or input path the user gave is wrong.
    #[error("{0}")]
    Usage(String),
    /// The configuration (file, environment, flags) is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// Data checks failed; the message is the report's one-line summary.
    #[error("{0}")]
    ChecksFailed(String),
    /// Another run holds the lake's lock.
    #[error("{0}")]
    Locked(String),
    /// Another writer committed to the table first; nothing of this commit was made.
    #[error("{0}")]
    Conflict(String),
    /// Something failed while running: storage, I/O, a corrupt compressed stream.
    #[error("{0}")]
    Runtime(String),
    #[error("storage: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("delta: {0}")]
    Delta(#[from] deltalake::DeltaTableError),
    #[error("query: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }
    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }
    pub fn runtime(msg: impl Into<String>) -> Self {
        Error::Runtime(msg.into())
    }

    /// The process exit code this error maps to.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Config(_) => exit::USAGE,
            Error::ChecksFailed(_) => exit::CHECKS_FAILED,
            Error::Locked(_) | Error::Conflict(_) => exit::LOCKED,
            _ => exit::RUNTIME,
        }
    }
}

/// Installs a panic hook that keeps one known, already handled panic off stderr and passes every
/// other panic to the default hook.
///
/// When a data file's upload fails at its last step (a full disk, a file-size limit, a store that
/// refuses the completion), deltalake aborts the upload under `catch_unwind`, and object_store's
/// `BufWriter::abort` panics "Already shut down" by design in that state. deltalake recovers and
/// returns the write error, which clicklake reports in one line (exit 3), but the default hook
/// would first print the panic, with a backtrace under `RUST_BACKTRACE`, once per open file.
pub fn quiet_handled_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str));
        let in_buffered_abort = info.location().is_some_and(|l| {
            l.file().contains("object_store") && l.file().ends_with("buffered.rs")
        });
        if in_buffered_abort && message == Some("Already shut down") {
            return;
        }
        default(info)
    }));
}

/// One line for a DataFusion error: its root cause, without backtrace or line breaks.
pub fn root_message(e: &datafusion::error::DataFusionError) -> String {
    e.find_root().strip_backtrace().replace('\n', " ")
}

/// True when the root cause is the SQL itself (syntax, unknown name, type mismatch): the user's
/// mistake, exit 2, as opposed to a failure while running it.
pub fn is_sql_mistake(e: &datafusion::error::DataFusionError) -> bool {
    use datafusion::error::DataFusionError as E;
    matches!(
        e.find_root(),
        E::SQL(..) | E::Plan(_) | E::SchemaError(..) | E::NotImplemented(_)
    )
}

/// The one-line message of a mistake in a user's query: one that does not plan
/// ([`is_sql_mistake`]), or an expression of it that cannot be evaluated on the rows it meets (a
/// string cast to a number, a division by zero, an overflow). `sql` and `check` report either as
/// the user's to fix (exit 2); `None` for a failure of the run itself (storage, I/O).
pub fn query_mistake(e: &datafusion::error::DataFusionError) -> Option<String> {
    use datafusion::error::DataFusionError as E;
    if is_sql_mistake(e) {
        return Some(root_message(e));
    }
    match e.find_root() {
        E::ArrowError(a, _) if is_evaluation_error(a) => Some(a.to_string()),
        // A predicate pushed into the Parquet reader fails inside it, and reaches us as the
        // Debug text of DataFusion's error inside a ComputeError inside a ParquetError.
        E::ParquetError(p) => match p.as_ref() {
            parquet::errors::ParquetError::External(inner) => {
                match inner.downcast_ref::<arrow::error::ArrowError>()? {
                    arrow::error::ArrowError::ComputeError(text) => pushed_down_evaluation(text),
                    _ => None,
                }
            }
            _ => None,
        },
        _ => None,
    }
}

fn is_evaluation_error(a: &arrow::error::ArrowError) -> bool {
    use arrow::error::ArrowError as A;
    matches!(
        a,
        A::CastError(_) | A::ParseError(_) | A::DivideByZero | A::ArithmeticOverflow(_)
    )
}

/// Arrow's own message back from `Error evaluating filter predicate: ArrowError(CastError("…"), …)`.
fn pushed_down_evaluation(text: &str) -> Option<String> {
    let debug = text.strip_prefix("Error evaluating filter predicate: ")?;
    if debug.contains("DivideByZero") {
        return Some(arrow::error::ArrowError::DivideByZero.to_string());
    }
    [
        ("CastError(\"", "Cast error: "),
        ("ParseError(\"", "Parser error: "),
        ("ArithmeticOverflow(\"", "Arithmetic overflow: "),
    ]
    .into_iter()
    .find_map(|(open, label)| {
        let start = debug.find(open)? + open.len();
        let len = debug[start..].find("\")")?;
        Some(format!(
            "{label}{}",
            debug[start..start + len].replace("\\\"", "\"")
        ))
    })
}

/// Maps any error chain to an exit code: the first [`Error`] found in the chain decides.
pub fn exit_code_of(err: &anyhow::Error) -> ExitCode {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<Error>() {
            return ExitCode::from(e.exit_code());
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>() {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return ExitCode::from(exit::SUCCESS);
            }
        }
    }
    ExitCode::from(exit::RUNTIME)
}

/// The error and its causes on one line, each cause once: many library errors (object_store's,
/// deltalake's) already repeat their source's text in their own, so printing every link of the
/// chain would say the same thing several times.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        // DataFusion prints its context chains over several lines ("…\ncaused by\n…").
        let text = cause
            .to_string()
            .replace("\ncaused by\n", ": ")
            .replace('\n', " ");
        if out.contains(text.trim()) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// True when the chain ends in a broken pipe (stdout closed by `head`): that is success.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<Error>().is_some_and(|e| match e {
                Error::Io(io) => io.kind() == std::io::ErrorKind::BrokenPipe,
                _ => false,
            })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_says_each_cause_once() {
        // object_store's errors repeat their source's text in their own.
        let source = std::io::Error::other("connection refused");
        let store = object_store::Error::Generic {
            store: "S3",
            source: Box::new(source),
        };
        let err = anyhow::Error::new(super::Error::ObjectStore(store));
        assert_eq!(
            format!("{err:#}").matches("connection refused").count(),
            3,
            "the chain as anyhow prints it"
        );
        let line = super::one_line(&err);
        assert_eq!(line.matches("connection refused").count(), 1, "{line}");
        assert!(line.starts_with("storage: "), "{line}");
    }

    #[test]
    fn one_line_joins_datafusions_context_chain() {
        use datafusion::error::DataFusionError as E;
        let e = E::Context(
            "Optimizer rule 'simplify_expressions' failed".into(),
            Box::new(E::Execution("the cause".into())),
        );
        assert!(
            e.to_string().contains('\n'),
            "DataFusion prints it on several lines"
        );
        let line = super::one_line(&anyhow::Error::new(super::Error::DataFusion(e)));
        assert_eq!(
            line,
            "query: Optimizer rule 'simplify_expressions' failed: Execution error: the cause"
        );
    }
}
