//! JUnit XML reports, the format CI systems show as test results (GitLab, Jenkins, Azure
//! Pipelines, CircleCI): `check --junit`, `run --junit` and `ingest --dry-run --junit` each
//! turn their outcome into test cases, and this module writes them.

use std::path::Path;

use crate::error::{Error, Result};

/// How one test case ended.
pub enum Outcome {
    Pass,
    /// Passed, with text a CI system shows beside it (a check's warning, rows let through).
    PassWithOutput(String),
    Failure {
        message: String,
        kind: &'static str,
        text: String,
    },
    Skipped(String),
}

pub struct Case {
    pub classname: String,
    pub name: String,
    /// Seconds, when the case was timed on its own.
    pub seconds: Option<f64>,
    pub outcome: Outcome,
}

/// One `testsuites` of one `testsuite` named `suite`, holding `cases`; its counts follow from
/// them.
pub fn report(suite: &str, seconds: f64, cases: &[Case]) -> String {
    let failures = cases
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Failure { .. }))
        .count();
    let skipped = cases
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Skipped(_)))
        .count();
    let counts = format!(
        "tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{seconds:.3}\"",
        cases.len()
    );
    let suite = escape(suite);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!("<testsuites name=\"{suite}\" {counts}>\n"));
    out.push_str(&format!("  <testsuite name=\"{suite}\" {counts}>\n"));
    for c in cases {
        let time = c
            .seconds
            .map(|s| format!(" time=\"{s:.3}\""))
            .unwrap_or_default();
        let open = format!(
            "    <testcase classname=\"{}\" name=\"{}\"{time}",
            escape(&c.classname),
            escape(&c.name)
        );
        match &c.outcome {
            Outcome::Pass => out.push_str(&format!("{open}/>\n")),
            Outcome::PassWithOutput(text) => out.push_str(&format!(
                "{open}>\n      <system-out>{}</system-out>\n    </testcase>\n",
                escape(text)
            )),
            Outcome::Failure {
                message,
                kind,
                text,
            } => out.push_str(&format!(
                "{open}>\n      <failure message=\"{}\" type=\"{kind}\">{}</failure>\n    </testcase>\n",
                escape(message),
                escape(text)
            )),
            Outcome::Skipped(message) => out.push_str(&format!(
                "{open}>\n      <skipped message=\"{}\"/>\n    </testcase>\n",
                escape(message)
            )),
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// `--junit PATH`, before any I/O: a usage error when the file's directory does not exist.
pub fn check_path(path: Option<&Path>) -> Result<()> {
    match path.and_then(Path::parent) {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => Err(Error::usage(format!(
            "--junit: directory {} does not exist",
            dir.display()
        ))),
        _ => Ok(()),
    }
}

/// Writes a report (see [`report`]) to `path`.
pub fn write(path: &Path, xml: &str) -> Result<()> {
    std::fs::write(path, xml)
        .map_err(|e| Error::usage(format!("--junit: cannot write {}: {e}", path.display())))
}

/// Text as XML character data or an attribute value. Characters XML 1.0 does not allow (control
/// characters other than tab and line breaks) become U+FFFD.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(ch),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_text_is_escaped_and_holds_no_character_xml_forbids() {
        assert_eq!(
            escape("a < b && c > 'd' \"e\"\tf\n"),
            "a &lt; b &amp;&amp; c &gt; &apos;d&apos; &quot;e&quot;\tf\n"
        );
        assert_eq!(escape("bell\u{7} nul\u{0}"), "bell\u{FFFD} nul\u{FFFD}");
    }
}
