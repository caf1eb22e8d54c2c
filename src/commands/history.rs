//! `clicklake history TABLE`: the table's commits, newest first, read from its Delta log (Delta's
//! `DESCRIBE HISTORY`): when, which operation, which clicklake command and run, what it added and
//! removed. The versions are those `sql --as-of-version` travels to.

use std::process::ExitCode;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::catalog;
use crate::cli::HistoryArgs;
use crate::config::format_bytes;
use crate::delta;
use crate::error::Error;
use crate::storage::Lake;

/// One commit of a table.
#[derive(Debug, Serialize)]
pub struct Commit {
    pub version: i64,
    /// When it was committed, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    /// Delta's operation: WRITE, DELETE, OPTIMIZE, VACUUM START…
    pub operation: Option<String>,
    pub operation_parameters: Option<Value>,
    /// What clicklake recorded with the commit (command, mode, batch or run id, counts).
    pub clicklake: Map<String, Value>,
    /// False when every file it adds or removes is a rewrite of the same rows (a compaction).
    pub data_change: bool,
    pub files_added: u64,
    pub files_removed: u64,
    /// Rows in the files it adds (from their statistics).
    pub rows_added: u64,
    pub bytes_added: u64,
    pub bytes_removed: u64,
    /// Application transactions it records (`clicklake.clean` → the raw_events version cleaned).
    pub txns: Vec<Value>,
}

/// How many commit files are read at once.
const CONCURRENT_READS: usize = 16;

pub async fn run(lake: &Lake, args: &HistoryArgs) -> anyhow::Result<ExitCode> {
    catalog::check_table_names(std::slice::from_ref(&args.table))?;
    catalog::require_lake(lake).await?;
    let Some(table) = lake.open_table(&args.table).await? else {
        return Err(Error::usage(format!(
            "{} has no commits yet at {} (clean and build create their tables)",
            args.table,
            crate::storage::redact(lake.root())
        ))
        .into());
    };
    let newest = table.version().unwrap_or(0) as i64;
    let oldest = if args.all {
        0
    } else {
        let limit = i64::try_from(args.limit).unwrap_or(i64::MAX);
        (newest + 1).saturating_sub(limit).max(0)
    };
    let commits: Vec<Option<Commit>> = futures::stream::iter((oldest..=newest).rev())
        .map(|version| {
            let table = &table;
            async move {
                let actions = delta::commit_actions(table, version).await?;
                Ok::<_, Error>(actions.map(|a| summarize(version, &a)))
            }
        })
        .buffered(CONCURRENT_READS)
        .try_collect()
        .await?;
    // Log retention removes the oldest commit files: the history ends at the first one missing.
    let gone = commits.iter().position(Option::is_none);
    let commits: Vec<Commit> = commits.into_iter().map_while(|c| c).collect();
    if args.json {
        outln!("{}", serde_json::to_string(&commits)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    out!("{}", render(&commits))?;
    if let Some(i) = gone {
        outln!(
            "(versions {} and older are no longer in the log: log retention removed them)",
            newest - i as i64
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A commit from its actions.
fn summarize(version: i64, actions: &[Value]) -> Commit {
    let mut c = Commit {
        version,
        timestamp_ms: None,
        operation: None,
        operation_parameters: None,
        clicklake: Map::new(),
        data_change: false,
        files_added: 0,
        files_removed: 0,
        rows_added: 0,
        bytes_added: 0,
        bytes_removed: 0,
        txns: Vec::new(),
    };
    for action in actions {
        if let Some(info) = action.get("commitInfo") {
            c.timestamp_ms = info["timestamp"].as_i64();
            c.operation = info["operation"].as_str().map(str::to_string);
            c.operation_parameters = info.get("operationParameters").cloned();
            if let Some(Value::Object(m)) = info.get("clicklake") {
                c.clicklake = m.clone();
            }
            // `_runs` commits carry their run id as a top-level key.
            if let Value::Object(info) = info {
                for (k, v) in info {
                    if let Some(key) = k.strip_prefix("clicklake.") {
                        c.clicklake.insert(key.to_string(), v.clone());
                    }
                }
            }
        } else if let Some(add) = action.get("add") {
            c.files_added += 1;
            c.bytes_added += add["size"].as_u64().unwrap_or(0);
            c.rows_added += add["stats"]
                .as_str()
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
                .and_then(|s| s["numRecords"].as_u64())
                .unwrap_or(0);
        } else if let Some(remove) = action.get("remove") {
            c.files_removed += 1;
            c.bytes_removed += remove["size"].as_u64().unwrap_or(0);
        } else if let Some(txn) = action.get("txn") {
            c.txns.push(txn.clone());
        }
        c.data_change |= delta::is_data_change(action);
    }
    c
}

/// `ingest`, `clean incremental`, `build full`, or the Delta operation for commits clicklake
/// made through deltalake's own operations (`compact`, `vacuum`).
fn command_of(c: &Commit) -> String {
    let word = |key: &str| c.clicklake.get(key).and_then(Value::as_str);
    let mut words: Vec<String> = word("command").into_iter().map(str::to_string).collect();
    if let Some(mode) = word("mode").filter(|m| Some(*m) != word("command")) {
        words.push(mode.to_string());
    }
    if words.is_empty() && c.clicklake.contains_key("run_id") {
        words.push("run".to_string());
    }
    if words.is_empty() {
        words.push(match c.operation.as_deref() {
            Some("OPTIMIZE") => "compact".to_string(),
            Some(op) if op.starts_with("VACUUM") => "vacuum".to_string(),
            Some("CREATE TABLE") => "create".to_string(),
            Some(op) => op.to_ascii_lowercase(),
            None => "-".to_string(),
        });
    }
    words.join(" ")
}

/// The rest of clicklake's record as `key=value` words: ids and counts; a list as its length.
fn detail_of(c: &Commit) -> String {
    let mut words = Vec::new();
    for (k, v) in &c.clicklake {
        if matches!(k.as_str(), "command" | "mode" | "table" | "change_keys") {
            continue;
        }
        let text = match v {
            Value::Null => continue,
            // Build's as-of time, in microseconds.
            Value::Number(n) if k == "as_of" => n
                .as_i64()
                .and_then(chrono::DateTime::from_timestamp_micros)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| n.to_string()),
            Value::String(s) => s.clone(),
            // An ingest's files, with how many of them were read on from where an earlier ingest
            // stopped (grown logs).
            Value::Array(a) if k == "files" => {
                let appended = a
                    .iter()
                    .filter(|f| f["from_line"].as_u64().is_some_and(|l| l > 1))
                    .count();
                match appended {
                    0 => a.len().to_string(),
                    n => format!("{} ({n} appended)", a.len()),
                }
            }
            Value::Array(a) => a.len().to_string(),
            Value::Object(_) => continue,
            other => other.to_string(),
        };
        words.push(format!("{k}={text}"));
    }
    // The input versions it reflects (`clicklake/clean/raw_events` → `raw_events@3`); file
    // markers and logic fingerprints are left to --json.
    for txn in &c.txns {
        let (Some(app), Some(v)) = (txn["appId"].as_str(), txn["version"].as_i64()) else {
            continue;
        };
        let input = app.rsplit('/').next().unwrap_or(app);
        if app.starts_with("clicklake/") && catalog::is_lake_table(input) {
            words.push(format!("{input}@{v}"));
        }
    }
    words.join(" ")
}

fn timestamp_text(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".to_string())
}

/// The text table, one line per commit.
fn render(commits: &[Commit]) -> String {
    let mut out = format!(
        "{:>7}  {:<20}  {:<13}  {:<17}  {:>7}  {:>7}  {:>10}  {:>10}  detail\n",
        "version", "committed", "operation", "by", "+files", "-files", "+rows", "+size"
    );
    for c in commits {
        let operation = match c.operation.as_deref() {
            Some(op) if !c.data_change && (c.files_added + c.files_removed) > 0 => {
                format!("{op}*")
            }
            Some(op) => op.to_string(),
            None => "-".to_string(),
        };
        out.push_str(&format!(
            "{:>7}  {:<20}  {:<13}  {:<17}  {:>7}  {:>7}  {:>10}  {:>10}  {}\n",
            c.version,
            timestamp_text(c.timestamp_ms),
            operation,
            command_of(c),
            c.files_added,
            c.files_removed,
            c.rows_added,
            format_bytes(c.bytes_added),
            detail_of(c)
        ));
    }
    if commits
        .iter()
        .any(|c| !c.data_change && (c.files_added + c.files_removed) > 0)
    {
        out.push_str("* rewrites files without changing rows (dataChange = false)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_is_summarized_from_its_actions() {
        let actions: Vec<Value> = [
            r#"{"commitInfo":{"timestamp":1795766685618,"operation":"WRITE","operationParameters":{"mode":"Overwrite"},"clicklake":{"command":"clean","mode":"incremental","raw_version_to":3,"events_written":120,"changes":null}}}"#,
            r#"{"add":{"path":"a","size":1000,"dataChange":true,"stats":"{\"numRecords\":70}"}}"#,
            r#"{"add":{"path":"b","size":500,"dataChange":true,"stats":"{\"numRecords\":50}"}}"#,
            r#"{"remove":{"path":"c","size":800,"dataChange":true}}"#,
            r#"{"txn":{"appId":"clicklake/clean/raw_events","version":3}}"#,
            r#"{"txn":{"appId":"clicklake/clean/logic","version":99}}"#,
        ]
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
        let c = summarize(7, &actions);
        assert_eq!(
            (
                c.files_added,
                c.files_removed,
                c.rows_added,
                c.bytes_added,
                c.bytes_removed
            ),
            (2, 1, 120, 1500, 800)
        );
        assert!(c.data_change);
        assert_eq!(command_of(&c), "clean incremental");
        assert_eq!(
            detail_of(&c),
            "raw_version_to=3 events_written=120 raw_events@3"
        );
        let optimize: Vec<Value> = [
            r#"{"commitInfo":{"timestamp":1,"operation":"OPTIMIZE"}}"#,
            r#"{"remove":{"path":"c","size":800,"dataChange":false}}"#,
        ]
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
        let c = summarize(8, &optimize);
        assert!(!c.data_change);
        assert_eq!(command_of(&c), "compact");
        assert!(render(&[c]).contains("OPTIMIZE*"));
        // An ingest that read one grown log on from line 175, and a new file whole; the tail
        // markers are not input versions.
        let ingest: Vec<Value> = [
            r#"{"commitInfo":{"timestamp":1,"operation":"WRITE","clicklake":{"command":"ingest","batch_id":"b1","files":[{"source_file":"/l/app.log","from_line":175},{"source_file":"/l/new.log","from_line":1}]}}}"#,
            r#"{"txn":{"appId":"clicklake/tail/abc/consumed","version":4096}}"#,
        ]
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
        assert_eq!(
            detail_of(&summarize(9, &ingest)),
            "batch_id=b1 files=2 (1 appended)"
        );
    }
}
