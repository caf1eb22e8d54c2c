//! Small files of requests that operators hand to clicklake (consent decisions, erasure
//! requests): CSV with a header or NDJSON, read whole and checked before anything is written.
//!
//! A CSV file is `.csv` or `.tsv`; its delimiter is `,`, or as DuckDB's sniffer finds it, `;`
//! (spreadsheets in much of Europe), a tab or `|`: the one whose split of the header names one of
//! the columns the caller knows. Values are trimmed; empty values and JSON nulls are left out, so
//! a field is either present with text or absent. Every record carries its line number for
//! `FILE:LINE: field NAME: ...` errors.

use std::collections::HashMap;

use crate::error::Error;

/// One record's fields: column name → trimmed, non-empty text (JSON numbers and booleans as
/// their JSON text).
pub type Fields = HashMap<String, String>;

/// The records of `path` with their line numbers. `known` names the columns the caller reads; a
/// CSV header that names none of them is exit 2 (`FILE:1`), since every row would be refused
/// for a reason that is really the header's (a wrong delimiter, a misspelt name).
pub fn read(path: &str, known: &[&str]) -> Result<Vec<(u64, Fields)>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::usage(format!("{path}: cannot read: {e}")))?;
    // Excel's "CSV UTF-8" and PowerShell start a file with a byte order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    if path.ends_with(".csv") || path.ends_with(".tsv") {
        csv_records(path, text, known)
    } else {
        json_records(path, text)
    }
}

/// The file name alone, for provenance columns (`file:NAME:LINE`).
pub fn file_name(path: &str) -> String {
    std::path::Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| path.to_string())
}

fn delimiter_of(path: &str, text: &str, known: &[&str]) -> u8 {
    let header = text.lines().next().unwrap_or_default();
    let names_one = |d: u8| {
        header
            .split(d as char)
            .any(|name| known.contains(&name.trim().trim_matches('"')))
    };
    let first = if path.ends_with(".tsv") { b'\t' } else { b',' };
    [first, b',', b';', b'\t', b'|']
        .into_iter()
        .find(|d| names_one(*d))
        .unwrap_or(first)
}

fn csv_records(path: &str, text: &str, known: &[&str]) -> Result<Vec<(u64, Fields)>, Error> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter_of(path, text, known))
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| Error::usage(format!("{path}:1: {e}")))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    if !text.trim().is_empty() && !headers.iter().any(|h| known.contains(&h.as_str())) {
        return Err(Error::usage(format!(
            "{path}:1: the header names none of the columns {} (found: {})",
            known.join(", "),
            headers.join(", ")
        )));
    }
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            Error::usage(format!("{path}:{line}: {e}"))
        })?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let fields = headers
            .iter()
            .cloned()
            .zip(record.iter().map(|v| v.trim().to_string()))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        out.push((line, fields));
    }
    Ok(out)
}

fn json_records(path: &str, text: &str) -> Result<Vec<(u64, Fields)>, Error> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
            .map_err(|e| Error::usage(format!("{path}:{n}: not a JSON object: {e}")))?;
        let fields = v
            .into_iter()
            .filter_map(|(k, v)| match v {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) if s.trim().is_empty() => None,
                serde_json::Value::String(s) => Some((k, s.trim().to_string())),
                other => Some((k, other.to_string())),
            })
            .collect();
        out.push((n, fields));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        (dir, path.to_string_lossy().to_string())
    }

    #[test]
    fn a_semicolon_header_is_found_and_values_are_trimmed() {
        let (_d, path) = write(
            "r.csv",
            "\u{feff}email;ticket\n Jane@Example.org ;T-1\n;T-2\n",
        );
        let records = read(&path, &["email", "user_id"]).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].0, 2);
        assert_eq!(records[0].1["email"], "Jane@Example.org");
        assert!(!records[1].1.contains_key("email"), "{:?}", records[1]);
    }

    #[test]
    fn a_header_without_a_known_column_names_the_file_and_line() {
        let (_d, path) = write("r.csv", "id,ticket\nu1,T-1\n");
        let e = read(&path, &["email", "user_id"]).unwrap_err().to_string();
        assert!(e.contains("r.csv:1:") && e.contains("user_id"), "{e}");
    }

    #[test]
    fn ndjson_lines_keep_their_numbers_and_drop_nulls() {
        let (_d, path) = write(
            "r.ndjson",
            "{\"user_id\":\"u1\"}\n\n{\"user_id\":null,\"n\":3}\n",
        );
        let records = read(&path, &["user_id"]).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].0, 3);
        assert!(!records[1].1.contains_key("user_id"));
        assert_eq!(records[1].1["n"], "3");
        let (_d, bad) = write("b.ndjson", "{\"user_id\":\"u1\"}\n[1]\n");
        let e = read(&bad, &["user_id"]).unwrap_err().to_string();
        assert!(e.contains("b.ndjson:2: not a JSON object"), "{e}");
    }
}
