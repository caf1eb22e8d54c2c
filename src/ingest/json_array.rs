//! JSON array files (`[{…}, {…}]`, on one line or pretty-printed) read as NDJSON: one line per
//! element, as DuckDB's `read_json` does with `format = 'auto'`.
//!
//! A streaming rewrite of the bytes, so an array of any size is never held whole: between the
//! top-level elements, commas become line ends and whitespace goes; inside an element, line ends
//! outside strings become spaces. The element is then validated like any NDJSON line, and its
//! "line number" is its position in the array (1-based). A line end inside a string is not valid
//! JSON: it becomes a vertical tab, another control character, so the element is still
//! quarantined as broken JSON rather than split in two or quietly repaired. Bytes after the
//! array's closing bracket (another array, stray text) continue the same way: another array's
//! elements are lines too, anything else is a line of its own, quarantined.

use std::io::{BufRead, Read};

/// Whether a decompressed NDJSON input (its byte order mark skipped), of which `head` is the
/// start, is a JSON array: its first non-blank byte is `[`, unless that array closes on its first
/// line and the next line starts an object. That file is NDJSON whose first line is an array (a
/// line to quarantine as not an object), and read as an array it would count the array's
/// elements as lines and number the lines after it wrongly. A first line that is longer than
/// `head` is taken as an array's.
pub fn starts_array(head: &[u8]) -> bool {
    let Some(start) = head.iter().position(|b| !b.is_ascii_whitespace()) else {
        return false;
    };
    if head[start] != b'[' {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0u32, false, false);
    let mut closed = None;
    for (i, &b) in head.iter().enumerate().skip(start) {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                b'\n' => return true,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => depth += 1,
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    closed = Some(i);
                    break;
                }
            }
            // The array goes on past its first line: an array file, pretty-printed.
            b'\n' => return true,
            _ => {}
        }
    }
    let Some(end) = closed else {
        return true;
    };
    let rest = &head[end + 1..];
    let line_end = rest.iter().position(|b| !matches!(b, b' ' | b'\t' | b'\r'));
    match line_end {
        Some(i) if rest[i] == b'\n' => {
            let next = rest[i..].iter().find(|b| !b.is_ascii_whitespace());
            next != Some(&b'{')
        }
        // More on the first line after the array (`, …`, another array), or nothing after it.
        _ => true,
    }
}

pub struct ArrayLines<R> {
    inner: R,
    state: State,
}

#[derive(Default)]
struct State {
    /// Nesting depth: 0 outside any array, 1 between the top-level elements.
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// An element (or a stray line at depth 0) has bytes out and no line end yet.
    open: bool,
}

impl<R: BufRead> ArrayLines<R> {
    pub fn new(inner: R) -> Self {
        ArrayLines {
            inner,
            state: State::default(),
        }
    }
}

impl State {
    /// The byte to write for `b`, if any, updating the state.
    fn step(&mut self, b: u8) -> Option<u8> {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
            } else if b == b'\n' {
                return Some(0x0b);
            }
            return Some(b);
        }
        match (self.depth, b) {
            // Outside any array: another array starts, or a stray line.
            (0, b'[') if !self.open => {
                self.depth = 1;
                None
            }
            (0, b'\n') if self.open => {
                self.open = false;
                Some(b'\n')
            }
            (0, _) if b.is_ascii_whitespace() && !self.open => None,
            (0, _) => {
                self.open = true;
                Some(b)
            }
            // Between the top-level elements.
            (1, b',') | (1, b']') => {
                if b == b']' {
                    self.depth = 0;
                }
                let end = self.open;
                self.open = false;
                end.then_some(b'\n')
            }
            (1, _) if b.is_ascii_whitespace() => None,
            // Inside an element.
            (d, _) => {
                self.open = true;
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' if d > 1 => self.depth -= 1,
                    b'\n' | b'\r' => return Some(b' '),
                    _ => {}
                }
                Some(b)
            }
        }
    }
}

impl<R: BufRead> Read for ArrayLines<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        while n < out.len() {
            let input = self.inner.fill_buf()?;
            if input.is_empty() {
                break;
            }
            let mut used = 0;
            for &b in input {
                if n == out.len() {
                    break;
                }
                used += 1;
                if let Some(o) = self.state.step(b) {
                    out[n] = o;
                    n += 1;
                }
            }
            self.inner.consume(used);
            if n > 0 {
                break;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &str) -> String {
        let mut out = String::new();
        ArrayLines::new(input.as_bytes())
            .read_to_string(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn a_json_array_becomes_one_line_per_element() {
        assert_eq!(
            lines(r#"[{"a":1},{"b":[1,2]}]"#),
            "{\"a\":1}\n{\"b\":[1,2]}\n"
        );
        assert_eq!(
            lines(
                "[\n  {\n    \"a\": \"x, ]}\",\n    \"b\": {\"c\": [1]}\n  },\n  {\"d\": 2}\n]\n"
            ),
            "{     \"a\": \"x, ]}\",     \"b\": {\"c\": [1]}   }\n{\"d\": 2}\n"
        );
        assert_eq!(lines("[]"), "");
        assert_eq!(lines("[1, \"s\", null]"), "1\n\"s\"\nnull\n");
        // A string with an escaped quote, a raw line end in a string, then stray text.
        assert_eq!(
            lines("[{\"a\":\"q\\\"]\"},{\"b\":\"x\ny\"}] tail\n[{\"c\":3}]"),
            "{\"a\":\"q\\\"]\"}\n{\"b\":\"x\u{b}y\"}\ntail\n{\"c\":3}\n"
        );
        assert!(starts_array(b" \n ["));
        assert!(!starts_array(b"{\"a\":[1]}"));
        // An array on one line alone, or followed by arrays: an array file.
        assert!(starts_array(b"[{\"a\":\"]\\\"\"}]\n"));
        assert!(starts_array(b"[{\"a\":1}]\n[{\"a\":2}]\n"));
        assert!(starts_array(b"[{\"a\":1}] [{\"a\":2}]\n{\"b\":1}\n"));
        // Pretty-printed, or a first line longer than what was read: an array file.
        assert!(starts_array(b"[\n  {\"a\": 1}\n]\n{\"b\":1}\n"));
        assert!(starts_array(b"[{\"a\":\"a long"));
        // NDJSON whose first line is an array (a producer's mistake): not an array file.
        assert!(!starts_array(b"[1,2]\r\n\n{\"a\":1}\n"));
        assert!(!starts_array(b"[{\"a\":\"]\"}]\n{\"b\":1}\n"));
    }
}
