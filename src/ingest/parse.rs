//! Turns one chunk of input lines into a `raw_events` batch and a `quarantine` batch.
//!
//! Each line is parsed once (NDJSON with borrowed raw values, CSV with a small RFC 4180 splitter),
//! checked against the rules in [`Reason`] order, and appended straight into Arrow builders; no
//! intermediate row structs are allocated. The chunk is the unit of parallelism.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Date32Builder, Decimal128Builder, Int64Array, Int64Builder,
    RecordBatch, StringArray, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::SchemaRef;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::reason::{Reason, ReasonCounts};
use super::source::{Source, SourceRows};
use super::values::{epoch_us, parse_instant, parse_int, rfc3339_hint, EPOCH_HINT};
pub use super::values::{parse_decimal_2, parse_rfc3339_us};
use crate::error::Result as CResult;
use crate::privacy::Protected;

/// The canonical input fields, in schema order.
pub const FIELDS: [&str; 22] = [
    "event_id",
    "event_time",
    "received_at",
    "event_type",
    "user_id",
    "anonymous_id",
    "session_id",
    "product_id",
    "category",
    "brand",
    "price",
    "quantity",
    "currency",
    "order_id",
    "revenue",
    "checkout_step",
    "page_url",
    "referrer",
    "device",
    "country",
    "email",
    "ip",
];

const F_EVENT_ID: usize = 0;
const F_EVENT_TIME: usize = 1;
const F_RECEIVED_AT: usize = 2;
const F_EVENT_TYPE: usize = 3;
const F_USER_ID: usize = 4;
const F_ANONYMOUS_ID: usize = 5;
const F_SESSION_ID: usize = 6;
const F_EMAIL: usize = 20;
const F_IP: usize = 21;
const F_PRICE: usize = 10;
const F_QUANTITY: usize = 11;
const F_CURRENCY: usize = 12;
const F_ORDER_ID: usize = 13;
const F_REVENUE: usize = 14;
const F_CHECKOUT_STEP: usize = 15;
/// Plain optional string columns besides the ids handled explicitly.
const STRING_FIELDS: [usize; 13] = [6, 7, 8, 9, 12, 13, 16, 17, 18, 19, 20, 21, 4];

/// The canonical event types: the commerce funnel first, then engagement types that trackers such
/// as Snowplow and Segment send (kept with their own names, never counted as commerce).
pub const EVENT_TYPES: [&str; 18] = [
    "page_view",
    "product_view",
    "add_to_cart",
    "remove_from_cart",
    "cart_view",
    "checkout_started",
    "checkout_step",
    "payment_info",
    "purchase",
    "search",
    "identify",
    "list_view",
    "list_click",
    "promo_view",
    "promo_click",
    "refund",
    "consent_granted",
    "consent_withdrawn",
];

fn field_index(name: &str) -> Option<usize> {
    Some(match name {
        "event_id" => 0,
        "event_time" => 1,
        "received_at" => 2,
        "event_type" => 3,
        "user_id" => 4,
        "anonymous_id" => 5,
        "session_id" => 6,
        "product_id" => 7,
        "category" => 8,
        "brand" => 9,
        "price" => 10,
        "quantity" => 11,
        "currency" => 12,
        "order_id" => 13,
        "revenue" => 14,
        "checkout_step" => 15,
        "page_url" => 16,
        "referrer" => 17,
        "device" => 18,
        "country" => 19,
        "email" => 20,
        "ip" => 21,
        _ => return None,
    })
}

/// The input encoding of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
}

/// A CSV file's header: which column feeds which canonical field.
#[derive(Debug, Clone)]
pub struct CsvHeader {
    pub columns: Vec<String>,
    /// Canonical field index per column, `None` for extra columns (kept in `properties`).
    pub mapping: Vec<Option<usize>>,
    pub delimiter: u8,
    /// For a source mapping: the record field feeding each declared column.
    pub positions: Vec<usize>,
    /// Why the file's first line cannot serve as its header (no `event_id` column, a column
    /// named twice, an open quote…). Then every record of the file, that line included, is
    /// quarantined with this detail: a file with a bad header must neither stop the other files
    /// of an ingest (one such file in a cron inbox would stop every tick) nor vanish.
    pub unusable: Option<String>,
}

impl CsvHeader {
    pub fn parse(line: &[u8], delimiter: u8) -> Result<CsvHeader, String> {
        let columns = Self::names(line, delimiter)?;
        let mapping: Vec<Option<usize>> = columns.iter().map(|c| field_index(c)).collect();
        for required in ["event_id", "event_time", "event_type"] {
            if !columns.iter().any(|c| c == required) {
                return Err(format!(
                    "header has no {required} column (columns: {})",
                    columns.join(",")
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for c in &columns {
            if !seen.insert(c) {
                return Err(format!("header names column {c} twice"));
            }
        }
        Ok(CsvHeader {
            columns,
            mapping,
            delimiter,
            positions: Vec::new(),
            unusable: None,
        })
    }

    /// The header of a file whose first line cannot be one: see [`CsvHeader::unusable`].
    pub fn unusable(delimiter: u8, why: String) -> CsvHeader {
        CsvHeader {
            columns: Vec::new(),
            mapping: Vec::new(),
            delimiter,
            positions: Vec::new(),
            unusable: Some(format!(
                "the file's first line is not a usable CSV header: {why}; every line of the \
                 file is quarantined (fix the header and ingest the file again)"
            )),
        }
    }

    /// Splits a header line into trimmed column names.
    pub fn names(line: &[u8], delimiter: u8) -> Result<Vec<String>, String> {
        let text = std::str::from_utf8(line).map_err(|_| "header is not UTF-8".to_string())?;
        Ok(split_csv_record(text, delimiter)
            .ok_or_else(|| "header has an unterminated quote".to_string())?
            .into_iter()
            .map(|c| c.trim().trim_start_matches('\u{feff}').to_string())
            .collect())
    }

    /// The header of a source-mapped CSV file: every column is read through the mapping.
    pub fn for_source(
        source: &Source,
        columns: Vec<String>,
        delimiter: u8,
    ) -> Result<CsvHeader, String> {
        let positions = super::source::column_positions(source, &columns)?;
        Ok(CsvHeader {
            mapping: vec![None; columns.len()],
            columns,
            delimiter,
            positions,
            unusable: None,
        })
    }
}

/// Maps a known user to the customer segment their rows land in.
#[derive(Debug, Default)]
pub struct SegmentResolver {
    by_user: HashMap<String, String>,
}

impl SegmentResolver {
    pub const ANONYMOUS: &'static str = "anonymous";
    pub const UNSEGMENTED: &'static str = "unsegmented";

    pub fn new(by_user: HashMap<String, String>) -> Self {
        SegmentResolver { by_user }
    }

    pub fn segment<'a>(&'a self, user_id: Option<&str>) -> &'a str {
        match user_id {
            None => Self::ANONYMOUS,
            Some(u) => self
                .by_user
                .get(u)
                .map(String::as_str)
                .unwrap_or(Self::UNSEGMENTED),
        }
    }
}

/// Run-wide, read-only settings every parser thread shares.
#[derive(Debug)]
pub struct ParseSettings {
    pub batch_id: Arc<str>,
    /// Ingest time, used as `received_at` when a row has none and as `ingested_at`.
    pub ingested_at_us: i64,
    pub max_future_skew_us: i64,
    /// `stale_event_time`: event_time earlier than a given received_at by more than this.
    pub max_past_skew_us: i64,
    pub segments: Arc<SegmentResolver>,
    pub raw_schema: SchemaRef,
    pub quarantine_schema: SchemaRef,
    /// The source mapping every chunk goes through (`None`: the native format).
    pub source: Option<Arc<Source>>,
    /// Pseudonyms, truncation, minimisation and the erasure list.
    pub privacy: Arc<crate::privacy::Landing>,
}

/// A run of whole lines from one file.
pub struct Chunk {
    pub file_idx: usize,
    pub source_file: Arc<str>,
    /// 1-based line number of the first line in `data`.
    pub first_line: u64,
    pub data: Vec<u8>,
    pub format: Format,
    pub csv_header: Option<Arc<CsvHeader>>,
    /// One quarantine row at `first_line` with this detail and `data` as its raw text: the rest
    /// of the file cannot be read (a compressed stream that broke, a format clicklake does not
    /// read; `data` is empty), or the line is over `max_line_size` (`data` is its beginning).
    pub corrupt: Option<String>,
}

impl Chunk {
    /// What cannot be read from `first_line` on (the rest of the file, or the rest of a line over
    /// `max_line_size`): one quarantine row saying `why` with `kept` as its raw text (see
    /// [`Chunk::corrupt`]), and a warning in the log.
    pub fn unreadable(
        file_idx: usize,
        source_file: &Arc<str>,
        first_line: u64,
        format: Format,
        kept: Vec<u8>,
        why: String,
    ) -> Chunk {
        tracing::warn!("{source_file}:{first_line}: {why}");
        Chunk {
            file_idx,
            source_file: source_file.clone(),
            first_line,
            data: kept,
            format,
            csv_header: None,
            corrupt: Some(why),
        }
    }
}

/// Counts from one chunk.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LineStats {
    /// Every line (or CSV record) read, blank ones included.
    pub lines: u64,
    pub blank: u64,
    pub landed: u64,
    pub quarantined: ReasonCounts,
    /// Rows beyond one per line: a source mapping that turns a line into one row per product.
    pub extra_rows: u64,
    /// Rows of erased people: counted, never stored.
    pub erased: u64,
    /// Values removed by the column allow-list (data minimisation).
    pub dropped_values: u64,
}

impl LineStats {
    pub fn merge(&mut self, o: &LineStats) {
        self.lines += o.lines;
        self.blank += o.blank;
        self.landed += o.landed;
        self.quarantined.merge(&o.quarantined);
        self.extra_rows += o.extra_rows;
        self.erased += o.erased;
        self.dropped_values += o.dropped_values;
    }
    /// The invariant: every line is landed, quarantined or blank (a line mapped to several rows
    /// counts each of them).
    pub fn balanced(&self) -> bool {
        self.lines + self.extra_rows
            == self.landed + self.quarantined.total() + self.blank + self.erased
    }
}

pub struct ChunkOutput {
    pub file_idx: usize,
    /// The landed rows, one batch per raw_events partition (event_date, segment), each in line
    /// order: the writer needs no split.
    pub raw: Vec<RecordBatch>,
    pub quarantine: RecordBatch,
    pub stats: LineStats,
}

/// A field value as found in the input.
#[derive(Debug, Clone)]
enum Val<'a> {
    Missing,
    Null,
    Str(Cow<'a, str>),
    /// A JSON number, as its source text.
    Num(&'a str),
    Bool(bool),
    /// A JSON object or array, as its source text.
    Composite(&'a str),
}

impl Val<'_> {
    fn is_absent(&self) -> bool {
        match self {
            Val::Missing | Val::Null => true,
            Val::Str(s) => s.trim().is_empty(),
            _ => false,
        }
    }
}

impl fmt::Display for Val<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Missing => f.write_str("(missing)"),
            Val::Null => f.write_str("null"),
            Val::Str(s) => write!(f, "{:?}", truncate(s, 120)),
            Val::Num(n) => f.write_str(truncate(n, 120)),
            Val::Bool(b) => write!(f, "{b}"),
            Val::Composite(c) => f.write_str(truncate(c, 120)),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Extra (non-canonical) fields: key plus either raw JSON text or a CSV string.
enum Extra<'a> {
    Json(&'a str),
    Text(Cow<'a, str>),
    /// JSON text produced while parsing (a source mapping's `properties`).
    OwnedJson(String),
}

struct Fields<'a> {
    v: [Val<'a>; 22],
    extras: Vec<(Cow<'a, str>, Extra<'a>)>,
}

impl<'a> Fields<'a> {
    fn new() -> Self {
        Fields {
            v: std::array::from_fn(|_| Val::Missing),
            extras: Vec::new(),
        }
    }
}

// ---------- NDJSON ----------

struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

struct ObjectVisitor<'a, 'b>(&'b mut Fields<'a>);

impl<'de> Visitor<'de> for ObjectVisitor<'de, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let raw: &'de RawValue = map.next_value()?;
            match field_index(&key) {
                Some(i) => self.0.v[i] = classify(raw.get()).map_err(de::Error::custom)?,
                None => self.0.extras.push((key, Extra::Json(raw.get()))),
            }
        }
        Ok(())
    }
}

fn classify(raw: &str) -> Result<Val<'_>, serde_json::Error> {
    Ok(match raw.as_bytes()[0] {
        b'n' => Val::Null,
        b't' => Val::Bool(true),
        b'f' => Val::Bool(false),
        b'"' => {
            let inner = &raw[1..raw.len() - 1];
            if inner.contains('\\') {
                Val::Str(Cow::Owned(serde_json::from_str::<String>(raw)?))
            } else {
                Val::Str(Cow::Borrowed(inner))
            }
        }
        b'{' | b'[' => Val::Composite(raw),
        _ => Val::Num(raw),
    })
}

/// The offset of the first `"`, `\\` or control character: eight bytes per step (the bit trick
/// serde_json uses), then byte by byte within the word that has one.
fn string_end(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_byte = |w: u64, b: u8| {
        let x = w ^ (ONES * u64::from(b));
        x.wrapping_sub(ONES) & !x & HIGH
    };
    let mut at = 0;
    for word in bytes.chunks_exact(8) {
        let w = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
        if control | has_byte(w, b'"') | has_byte(w, b'\\') != 0 {
            break;
        }
        at += 8;
    }
    bytes[at..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| at + i)
}

/// A cursor over one line for [`flat_json_line`].
struct Scan<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// At a `"`: the string's contents, if it has no escape and no control character.
    fn plain_string(&mut self) -> Option<&'a str> {
        let bytes = self.text.as_bytes();
        let start = self.at + 1;
        let len = string_end(&bytes[start..])?;
        if bytes[start + len] != b'"' {
            return None;
        }
        self.at = start + len + 1;
        Some(&self.text[start..start + len])
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        self.at - start
    }

    /// A number in JSON's grammar: `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<&'a str> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(&self.text[start..self.at])
    }

    fn literal(&mut self, word: &str) -> bool {
        let found = self.text[self.at..].starts_with(word);
        if found {
            self.at += word.len();
        }
        found
    }

    fn value(&mut self) -> Option<Val<'a>> {
        Some(match self.peek()? {
            b'"' => Val::Str(Cow::Borrowed(self.plain_string()?)),
            b'-' | b'0'..=b'9' => Val::Num(self.number()?),
            b'n' if self.literal("null") => Val::Null,
            b't' if self.literal("true") => Val::Bool(true),
            b'f' if self.literal("false") => Val::Bool(false),
            _ => return None,
        })
    }
}

/// The common line, read without serde: one flat JSON object whose keys and strings have no
/// escapes. It fills `fields` exactly as the serde reader would. `false` for anything else
/// (nested values, escapes, anything not valid JSON), with `fields` possibly half-filled: the
/// caller then starts again with serde_json, which decides, error text included. About a fifth
/// of ingest's instructions went to serde_json's general reader.
fn flat_json_line<'a>(text: &'a str, fields: &mut Fields<'a>) -> bool {
    let mut p = Scan { text, at: 0 };
    p.skip_ws();
    if p.peek() != Some(b'{') {
        return false;
    }
    p.at += 1;
    p.skip_ws();
    if p.peek() == Some(b'}') {
        p.at += 1;
    } else {
        loop {
            p.skip_ws();
            if p.peek() != Some(b'"') {
                return false;
            }
            let Some(key) = p.plain_string() else {
                return false;
            };
            p.skip_ws();
            if p.peek() != Some(b':') {
                return false;
            }
            p.at += 1;
            p.skip_ws();
            let start = p.at;
            let Some(val) = p.value() else {
                return false;
            };
            match field_index(key) {
                Some(i) => fields.v[i] = val,
                None => fields
                    .extras
                    .push((Cow::Borrowed(key), Extra::Json(&text[start..p.at]))),
            }
            p.skip_ws();
            match p.peek() {
                Some(b',') => p.at += 1,
                Some(b'}') => {
                    p.at += 1;
                    break;
                }
                _ => return false,
            }
        }
    }
    p.skip_ws();
    p.at == text.len()
}

fn parse_json_line<'a>(line: &'a [u8], fields: &mut Fields<'a>) -> Result<(), String> {
    // One UTF-8 check of the whole line (std's ASCII fast path), then readers that trust it:
    // serde_json's slice reader validates every key, string and raw value again on its own
    // (4-5 % of ingest's CPU).
    let text = std::str::from_utf8(line).map_err(|_| "line is not valid UTF-8".to_string())?;
    if flat_json_line(text, fields) {
        return Ok(());
    }
    *fields = Fields::new();
    serde_json_line(text, fields)
}

fn serde_json_line<'a>(text: &'a str, fields: &mut Fields<'a>) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(ObjectVisitor(fields))
        .and_then(|_| de.end())
        .map_err(|e| {
            let msg = e.to_string();
            // serde says "invalid type: ..., expected a JSON object" for arrays and scalars.
            if msg.contains("expected a JSON object") {
                "line is not a JSON object".to_string()
            } else {
                format!("line is not valid JSON: {msg}")
            }
        })
}

// ---------- CSV ----------

/// Splits one CSV record (RFC 4180: quotes, doubled quotes, delimiters and newlines inside quotes).
/// `None` when a quote is left open.
pub fn split_csv_record(rec: &str, delim: u8) -> Option<Vec<Cow<'_, str>>> {
    let b = rec.as_bytes();
    let mut out = Vec::with_capacity(24);
    let mut i = 0;
    loop {
        if i < b.len() && b[i] == b'"' {
            // Quoted field.
            let mut j = i + 1;
            let mut owned: Option<String> = None;
            let mut seg_start = j;
            loop {
                let q = memchr::memchr(b'"', &b[j..])? + j;
                if q + 1 < b.len() && b[q + 1] == b'"' {
                    let s = owned.get_or_insert_with(String::new);
                    s.push_str(&rec[seg_start..=q]);
                    j = q + 2;
                    seg_start = j;
                    continue;
                }
                let field = match owned {
                    Some(mut s) => {
                        s.push_str(&rec[seg_start..q]);
                        Cow::Owned(s)
                    }
                    None => Cow::Borrowed(&rec[seg_start..q]),
                };
                out.push(field);
                // Skip to the delimiter (anything between the quote and it is dropped).
                match memchr::memchr(delim, &b[q + 1..]) {
                    Some(d) => i = q + 1 + d + 1,
                    None => return Some(out),
                }
                break;
            }
        } else {
            match memchr::memchr(delim, &b[i..]) {
                Some(d) => {
                    out.push(Cow::Borrowed(&rec[i..i + d]));
                    i += d + 1;
                }
                None => {
                    out.push(Cow::Borrowed(&rec[i..]));
                    return Some(out);
                }
            }
        }
        if i == b.len() {
            out.push(Cow::Borrowed(""));
            return Some(out);
        }
    }
}

fn parse_csv_record<'a>(
    rec: &'a str,
    header: &'a CsvHeader,
    fields: &mut Fields<'a>,
) -> Result<(), String> {
    let values = split_csv_record(rec, header.delimiter)
        .ok_or_else(|| "CSV row has an unterminated quote".to_string())?;
    if values.len() != header.columns.len() {
        return Err(format!(
            "CSV row has {} fields, the header has {}",
            values.len(),
            header.columns.len()
        ));
    }
    for (i, value) in values.into_iter().enumerate() {
        if value.is_empty() {
            if let Some(f) = header.mapping[i] {
                fields.v[f] = Val::Null;
            }
            continue;
        }
        match header.mapping[i] {
            Some(f) => fields.v[f] = Val::Str(value),
            None => fields.extras.push((
                Cow::Borrowed(header.columns[i].as_str()),
                Extra::Text(value),
            )),
        }
    }
    Ok(())
}

// ---------- values ----------

enum TsError {
    Missing,
    Bad(String),
}

fn timestamp(
    v: &Val,
    name: &str,
    format: Format,
    formats: Option<&[String]>,
) -> Result<i64, TsError> {
    match v {
        Val::Missing | Val::Null => Err(TsError::Missing),
        Val::Str(s) if s.trim().is_empty() => Err(TsError::Missing),
        Val::Str(s) => {
            let t = s.trim();
            if format == Format::Csv && !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()) {
                return epoch_us(t).ok_or_else(|| {
                    TsError::Bad(format!(
                        "{name} {v} is an epoch number of {} digits: not seconds (10), \
                         milliseconds (13), microseconds (16) or nanoseconds (19) of a time \
                         after 2001-09-09",
                        t.len()
                    ))
                });
            }
            parse_instant(t, formats).ok_or_else(|| {
                TsError::Bad(match formats {
                    None => format!("{name} {v} is not an RFC 3339 instant{}", rfc3339_hint(t)),
                    Some(_) => format!("{name} {v} matches no timestamp format of the source"),
                })
            })
        }
        Val::Num(_) => Err(TsError::Bad(format!(
            "{name} {v} is a bare number, not an RFC 3339 instant{}",
            match formats {
                None => EPOCH_HINT,
                Some(_) => "",
            }
        ))),
        other => Err(TsError::Bad(format!(
            "{name} {other} is not an RFC 3339 instant"
        ))),
    }
}

/// A string column's value: strings as given, numbers and booleans as text.
fn text<'a>(v: &'a Val<'a>, name: &str) -> Result<Option<Cow<'a, str>>, String> {
    match v {
        Val::Missing | Val::Null => Ok(None),
        Val::Str(s) => Ok(Some(Cow::Borrowed(s.as_ref()))),
        Val::Num(n) => Ok(Some(Cow::Borrowed(n))),
        Val::Bool(b) => Ok(Some(Cow::Borrowed(if *b { "true" } else { "false" }))),
        Val::Composite(_) => Err(format!("field {name}: {v} is not a string")),
    }
}

fn non_blank<'a>(v: &'a Val<'a>) -> Option<&'a str> {
    match v {
        Val::Str(s) if !s.trim().is_empty() => Some(s.as_ref()),
        Val::Num(n) => Some(n),
        _ => None,
    }
}

// ---------- builders ----------

struct RawBuilders {
    strings: Vec<StringBuilder>, // one per FIELDS entry that is a string column
    event_time: TimestampMicrosecondBuilder,
    received_at: TimestampMicrosecondBuilder,
    price: Decimal128Builder,
    quantity: Int64Builder,
    revenue: Decimal128Builder,
    checkout_step: Int64Builder,
    event_type: StringBuilder,
    properties: StringBuilder,
    source_file: StringBuilder,
    line_number: Int64Builder,
    batch_id: StringBuilder,
    ingested_at: TimestampMicrosecondBuilder,
    event_date: Date32Builder,
    segment: StringBuilder,
}

/// Columns of the string fields in `strings`, by FIELDS index.
fn string_slot(field: usize) -> Option<usize> {
    match field {
        0 => Some(0),
        4..=9 => Some(field - 3),
        12 | 13 => Some(field - 5),
        16..=21 => Some(field - 7),
        _ => None,
    }
}
const N_STRING_SLOTS: usize = 15;

impl RawBuilders {
    /// `cap` rows; `constant_bytes` per row for the columns that repeat one value per chunk (the
    /// file and the batch), so those builders never grow by copying.
    fn new(cap: usize, constant_bytes: (usize, usize)) -> Self {
        let ts = || TimestampMicrosecondBuilder::with_capacity(cap).with_timezone("UTC");
        let money = || {
            Decimal128Builder::with_capacity(cap)
                .with_precision_and_scale(18, 2)
                .expect("valid decimal type")
        };
        RawBuilders {
            strings: (0..N_STRING_SLOTS)
                .map(|_| StringBuilder::with_capacity(cap, cap * 16))
                .collect(),
            event_time: ts(),
            received_at: ts(),
            price: money(),
            quantity: Int64Builder::with_capacity(cap),
            revenue: money(),
            checkout_step: Int64Builder::with_capacity(cap),
            event_type: StringBuilder::with_capacity(cap, cap * 12),
            properties: StringBuilder::with_capacity(cap, cap * 64),
            source_file: StringBuilder::with_capacity(cap, cap * constant_bytes.0),
            line_number: Int64Builder::with_capacity(cap),
            batch_id: StringBuilder::with_capacity(cap, cap * constant_bytes.1),
            ingested_at: ts(),
            event_date: Date32Builder::with_capacity(cap),
            segment: StringBuilder::with_capacity(cap, cap * 12),
        }
    }

    fn finish(&mut self, schema: &SchemaRef) -> RecordBatch {
        let mut s: Vec<ArrayRef> = self
            .strings
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        let mut take = |slot: usize| {
            std::mem::replace(&mut s[slot], Arc::new(arrow::array::NullArray::new(0)))
        };
        let cols: Vec<ArrayRef> = vec![
            take(0),
            Arc::new(self.event_time.finish()),
            Arc::new(self.received_at.finish()),
            Arc::new(self.event_type.finish()),
            take(1),
            take(2),
            take(3),
            take(4),
            take(5),
            take(6),
            Arc::new(self.price.finish()),
            Arc::new(self.quantity.finish()),
            take(7),
            take(8),
            Arc::new(self.revenue.finish()),
            Arc::new(self.checkout_step.finish()),
            take(9),
            take(10),
            take(11),
            take(12),
            take(13),
            take(14),
            Arc::new(self.properties.finish()),
            Arc::new(self.source_file.finish()),
            Arc::new(self.line_number.finish()),
            Arc::new(self.batch_id.finish()),
            Arc::new(self.ingested_at.finish()),
            Arc::new(self.event_date.finish()),
            Arc::new(self.segment.finish()),
        ];
        RecordBatch::try_new(schema.clone(), cols).expect("raw_events columns match the schema")
    }
}

struct QuarantineBuilders {
    reason: StringBuilder,
    detail: StringBuilder,
    source_file: StringBuilder,
    line_number: Int64Builder,
    raw: StringBuilder,
    batch_id: StringBuilder,
    ingested_at: TimestampMicrosecondBuilder,
    ingest_date: Date32Builder,
}

impl QuarantineBuilders {
    fn new() -> Self {
        QuarantineBuilders {
            reason: StringBuilder::new(),
            detail: StringBuilder::new(),
            source_file: StringBuilder::new(),
            line_number: Int64Builder::new(),
            raw: StringBuilder::new(),
            batch_id: StringBuilder::new(),
            ingested_at: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            ingest_date: Date32Builder::new(),
        }
    }

    fn finish(&mut self, schema: &SchemaRef) -> RecordBatch {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(self.reason.finish()),
                Arc::new(self.detail.finish()),
                Arc::new(self.source_file.finish()),
                Arc::new(self.line_number.finish()),
                Arc::new(self.raw.finish()),
                Arc::new(self.batch_id.finish()),
                Arc::new(self.ingested_at.finish()),
                Arc::new(self.ingest_date.finish()),
            ],
        )
        .expect("quarantine columns match the schema")
    }
}

const US_PER_DAY: i64 = 86_400_000_000;

fn date_of(us: i64) -> i32 {
    us.div_euclid(US_PER_DAY) as i32
}

/// A row that passed every rule, ready to append.
struct Valid<'a> {
    event_id: &'a str,
    event_time: i64,
    received_at: i64,
    event_type: &'static str,
    price: Option<i128>,
    quantity: Option<i64>,
    revenue: Option<i128>,
    checkout_step: Option<i64>,
    user_id: Option<&'a str>,
}

/// Checks one row's fields against the rules, in order. `Err` is the first failing rule.
fn validate<'a>(
    f: &'a Fields<'a>,
    format: Format,
    s: &ParseSettings,
    ts_formats: Option<&[String]>,
) -> Result<Valid<'a>, (Reason, String)> {
    use Reason::*;
    let event_id = match non_blank(&f.v[F_EVENT_ID]) {
        Some(id) => id,
        None => {
            return Err(match &f.v[F_EVENT_ID] {
                Val::Composite(_) | Val::Bool(_) => (
                    MissingEventId,
                    format!("field event_id: {} is not a string", f.v[F_EVENT_ID]),
                ),
                v => (MissingEventId, format!("field event_id is {v}")),
            })
        }
    };
    let event_time = match timestamp(&f.v[F_EVENT_TIME], "event_time", format, ts_formats) {
        Ok(t) => t,
        Err(TsError::Missing) => {
            return Err((
                MissingEventTime,
                format!("field event_time is {}", f.v[F_EVENT_TIME]),
            ))
        }
        Err(TsError::Bad(m)) => return Err((BadTimestamp, format!("field {m}"))),
    };
    let (received_at, received_given) =
        match timestamp(&f.v[F_RECEIVED_AT], "received_at", format, ts_formats) {
            Ok(t) => (t, true),
            Err(TsError::Missing) => (s.ingested_at_us, false),
            Err(TsError::Bad(m)) => return Err((BadTimestamp, format!("field {m}"))),
        };
    let event_type = match &f.v[F_EVENT_TYPE] {
        Val::Str(t) => {
            let norm = t.trim_matches([' ', '\t']).to_ascii_lowercase();
            match EVENT_TYPES.iter().find(|e| **e == norm) {
                Some(e) => *e,
                None => {
                    return Err((
                        UnknownEventType,
                        format!(
                            "field event_type: {} is not a known event type",
                            f.v[F_EVENT_TYPE]
                        ),
                    ))
                }
            }
        }
        v => return Err((UnknownEventType, format!("field event_type is {v}"))),
    };
    let price = match &f.v[F_PRICE] {
        Val::Missing | Val::Null => None,
        Val::Num(n) => Some(parse_decimal_2(n).ok_or_else(|| {
            (
                InvalidField,
                format!("field price: {n} does not fit decimal(18,2)"),
            )
        })?),
        Val::Str(t) if format == Format::Csv => Some(parse_decimal_2(t).ok_or_else(|| {
            (
                PriceNotNumber,
                format!("field price: {:?} is not a number", t.as_ref()),
            )
        })?),
        v => {
            return Err((
                PriceNotNumber,
                format!("field price: {v} is not a JSON number"),
            ))
        }
    };
    if let Some(p) = price {
        if p < 0 {
            return Err((
                NegativePrice,
                format!("field price: {} is negative", f.v[F_PRICE]),
            ));
        }
    }
    if event_type == "purchase" && f.v[F_ORDER_ID].is_absent() {
        return Err((
            PurchaseWithoutOrderId,
            format!("field order_id is {} on a purchase", f.v[F_ORDER_ID]),
        ));
    }
    let fmt = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            .unwrap_or_default()
    };
    if event_time > received_at.saturating_add(s.max_future_skew_us) {
        return Err((
            FutureEventTime,
            format!(
                "field event_time: {} is more than {}s after received_at {}",
                fmt(event_time),
                s.max_future_skew_us / 1_000_000,
                fmt(received_at)
            ),
        ));
    }
    // A device clock reset (1970, 2000-01-01) or a replayed year-old buffer: only against a
    // received_at the row gives (a backfill without one is as old as it says).
    if received_given && event_time < received_at.saturating_sub(s.max_past_skew_us) {
        return Err((
            StaleEventTime,
            format!(
                "field event_time: {} is more than {}s before received_at {}",
                fmt(event_time),
                s.max_past_skew_us / 1_000_000,
                fmt(received_at)
            ),
        ));
    }
    let user_id = non_blank(&f.v[F_USER_ID]);
    if user_id.is_none() && f.v[F_ANONYMOUS_ID].is_absent() {
        return Err((
            MissingAnonymousId,
            "fields user_id and anonymous_id are both missing: one is required".to_string(),
        ));
    }
    let int_field = |i: usize| -> Result<Option<i64>, (Reason, String)> {
        let bad = |v: &Val| {
            (
                InvalidField,
                format!("field {}: {v} is not an integer", FIELDS[i]),
            )
        };
        match &f.v[i] {
            Val::Missing | Val::Null => Ok(None),
            Val::Num(n) => parse_int(n).map(Some).ok_or_else(|| bad(&f.v[i])),
            Val::Str(t) if format == Format::Csv => {
                parse_int(t).map(Some).ok_or_else(|| bad(&f.v[i]))
            }
            v => Err(bad(v)),
        }
    };
    let quantity = int_field(F_QUANTITY)?;
    let checkout_step = int_field(F_CHECKOUT_STEP)?;
    let revenue = match &f.v[F_REVENUE] {
        Val::Missing | Val::Null => None,
        Val::Num(n) => Some(parse_decimal_2(n)),
        Val::Str(t) if format == Format::Csv => Some(parse_decimal_2(t)),
        _ => Some(None),
    };
    let revenue = match revenue {
        Some(None) => {
            return Err((
                InvalidField,
                format!("field revenue: {} is not a number", f.v[F_REVENUE]),
            ))
        }
        Some(Some(r)) => Some(r),
        None => None,
    };
    if let Val::Str(c) = &f.v[F_CURRENCY] {
        let c = c.trim();
        let three_letters = c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic());
        if !c.is_empty() && !three_letters {
            return Err((
                InvalidField,
                format!("field currency: {} is not a 3-letter code", f.v[F_CURRENCY]),
            ));
        }
    } else if !f.v[F_CURRENCY].is_absent() {
        return Err((
            InvalidField,
            format!("field currency: {} is not a 3-letter code", f.v[F_CURRENCY]),
        ));
    }
    for &i in STRING_FIELDS.iter() {
        if let Err(m) = text(&f.v[i], FIELDS[i]) {
            return Err((InvalidField, m));
        }
    }
    Ok(Valid {
        event_id,
        event_time,
        received_at,
        event_type,
        price,
        quantity,
        revenue,
        checkout_step,
        user_id,
    })
}

/// The optional canonical fields an allow-list may drop; the identity and time fields always land.
fn kept(field: usize, allowed: &std::collections::HashSet<String>) -> bool {
    matches!(
        field,
        F_EVENT_ID
            | F_EVENT_TIME
            | F_RECEIVED_AT
            | F_EVENT_TYPE
            | F_USER_ID
            | F_ANONYMOUS_ID
            | F_SESSION_ID
    ) || allowed.contains(FIELDS[field])
}

/// Writes the extra fields as one JSON object into `out` (cleared first); false when there are none.
/// `out` is reused from row to row: no allocation per row once it has grown.
fn write_properties<'x, 'a: 'x>(
    out: &mut String,
    extras: impl Iterator<Item = &'x (Cow<'a, str>, Extra<'a>)>,
) -> bool {
    out.clear();
    for (k, v) in extras {
        out.push(if out.is_empty() { '{' } else { ',' });
        push_json_string(out, k);
        out.push(':');
        match v {
            Extra::Json(raw) => out.push_str(raw),
            Extra::OwnedJson(raw) => out.push_str(raw),
            Extra::Text(t) => push_json_string(out, t),
        }
    }
    if out.is_empty() {
        return false;
    }
    out.push('}');
    true
}

/// Appends `s` as a JSON string literal.
fn push_json_string(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).expect("string serializes"));
    }
}

/// Iterates the records of a chunk: `(line_number, bytes)`, without the line terminator.
/// For CSV a record may span several physical lines inside quotes.
fn records<'d>(data: &'d [u8], format: Format, first_line: u64, mut f: impl FnMut(u64, &'d [u8])) {
    let mut line = first_line;
    let mut start = 0;
    let n = data.len();
    while start < n {
        let end = match format {
            Format::Ndjson => memchr::memchr(b'\n', &data[start..]).map(|i| start + i),
            Format::Csv => csv_record_end(&data[start..]).map(|i| start + i),
        };
        let (rec_end, next) = match end {
            Some(e) => (e, e + 1),
            // The last record; in CSV one whose quote never closes can end with a line end.
            None => (n - usize::from(data[n - 1] == b'\n'), n),
        };
        let mut rec = &data[start..rec_end];
        if rec.last() == Some(&b'\r') {
            rec = &rec[..rec.len() - 1];
        }
        let physical = if format == Format::Csv {
            1 + memchr::memchr_iter(b'\n', rec).count() as u64
        } else {
            1
        };
        f(line, rec);
        line += physical;
        start = next;
    }
}

/// Position of the newline ending the first CSV record (quote-aware).
pub fn csv_record_end(data: &[u8]) -> Option<usize> {
    let mut in_quotes = false;
    for i in memchr::memchr2_iter(b'"', b'\n', data) {
        match data[i] {
            b'"' => in_quotes = !in_quotes,
            _ if !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

/// The rows of one chunk that land in one raw_events partition.
struct RawPart<'s> {
    event_date: i32,
    segment: &'s str,
    rb: RawBuilders,
}

/// Appends rows to a chunk's output batches: landed rows by partition, and quarantined ones.
struct Out<'s> {
    /// Landed rows by partition, in order of first appearance.
    parts: Vec<RawPart<'s>>,
    /// About how many rows the chunk holds (at 400 bytes a line, about what a row's builders
    /// take): a chunk's rows usually spread over a handful of segments of one or two days, but a
    /// backfill's over dozens of days, so the n-th partition's builders are sized for
    /// `rows / (n + 1)` (the first for half), and grow from there if it gets more.
    rows: usize,
    qb: QuarantineBuilders,
    stats: LineStats,
    s: &'s ParseSettings,
    source: &'s str,
    ingest_date: i32,
    /// The first row that cannot land safely (personal data without a key).
    error: Option<crate::error::Error>,
    /// The row's `properties` JSON, reused from row to row.
    properties: String,
    /// Pseudonyms already computed for this chunk's personal values.
    pseudonyms: crate::privacy::PseudonymCache,
}

impl<'s> Out<'s> {
    fn new(chunk: &'s Chunk, s: &'s ParseSettings) -> Self {
        Out {
            parts: Vec::new(),
            rows: chunk.data.len() / 400,
            qb: QuarantineBuilders::new(),
            stats: LineStats::default(),
            s,
            source: &chunk.source_file,
            ingest_date: date_of(s.ingested_at_us),
            error: None,
            properties: String::new(),
            pseudonyms: Default::default(),
        }
    }

    fn quarantine(&mut self, line_no: u64, rec: &[u8], reason: Reason, detail: &str) {
        let (qb, s) = (&mut self.qb, self.s);
        let line = String::from_utf8_lossy(rec);
        if s.privacy.mentions_erased(&line) {
            // A rejected line of an erased person is not kept for debugging either.
            self.stats.erased += 1;
            return;
        }
        self.stats.quarantined.add(reason);
        qb.reason.append_value(reason.code());
        qb.detail.append_value(s.privacy.mask(detail));
        qb.source_file.append_value(self.source);
        qb.line_number.append_value(line_no as i64);
        qb.raw.append_value(s.privacy.mask(&line));
        qb.batch_id.append_value(&*s.batch_id);
        qb.ingested_at.append_value(s.ingested_at_us);
        qb.ingest_date.append_value(self.ingest_date);
    }

    fn land(&mut self, line_no: u64, fields: &Fields<'_>, v: &Valid<'_>, p: &Protected) {
        let s = self.s;
        let event_date = date_of(v.event_time);
        let user = match &p.user_id {
            Some(u) => u.as_deref(),
            None => v.user_id,
        };
        let segment = s.segments.segment(user);
        let part = match self
            .parts
            .iter()
            .rposition(|p| p.event_date == event_date && p.segment == segment)
        {
            Some(i) => i,
            None => {
                let cap = (self.rows / (self.parts.len() + 2)).max(16);
                self.parts.push(RawPart {
                    event_date,
                    segment,
                    rb: RawBuilders::new(cap, (self.source.len(), s.batch_id.len())),
                });
                self.parts.len() - 1
            }
        };
        let rb = &mut self.parts[part].rb;
        let allowed = s.privacy.allowed.as_ref();
        self.stats.landed += 1;
        for (field, val) in fields.v.iter().enumerate() {
            if let Some(slot) = string_slot(field) {
                let b = &mut rb.strings[slot];
                let replaced = match field {
                    F_USER_ID => p.user_id.as_ref(),
                    F_EMAIL => p.email.as_ref(),
                    F_IP => p.ip.as_ref(),
                    _ => None,
                };
                let value = match (field, text(val, FIELDS[field])) {
                    (F_EVENT_ID, _) => Some(Cow::Borrowed(v.event_id)),
                    (_, Ok(t)) => t,
                    _ => None,
                };
                let value = match replaced {
                    Some(r) => r.as_deref().map(Cow::Borrowed),
                    None => value,
                };
                match value {
                    Some(_) if allowed.is_some_and(|a| !kept(field, a)) => {
                        self.stats.dropped_values += 1;
                        b.append_null();
                    }
                    Some(t) => b.append_value(t),
                    None => b.append_null(),
                }
            }
        }
        let mut typed = |field: usize, present: bool| -> bool {
            let keep = !present || allowed.is_none_or(|a| kept(field, a));
            if !keep {
                self.stats.dropped_values += 1;
            }
            keep
        };
        let price = v.price.filter(|_| typed(F_PRICE, v.price.is_some()));
        let quantity = v
            .quantity
            .filter(|_| typed(F_QUANTITY, v.quantity.is_some()));
        let revenue = v.revenue.filter(|_| typed(F_REVENUE, v.revenue.is_some()));
        let step = v
            .checkout_step
            .filter(|_| typed(F_CHECKOUT_STEP, v.checkout_step.is_some()));
        rb.event_time.append_value(v.event_time);
        rb.received_at.append_value(v.received_at);
        rb.event_type.append_value(v.event_type);
        rb.price.append_option(price);
        rb.quantity.append_option(quantity);
        rb.revenue.append_option(revenue);
        rb.checkout_step.append_option(step);
        let buf = &mut self.properties;
        let any = match allowed {
            None => write_properties(buf, fields.extras.iter()),
            Some(a) => {
                let kept = |(k, _): &&(Cow<'_, str>, Extra<'_>)| a.contains(k.as_ref());
                let n = fields.extras.iter().filter(kept).count();
                self.stats.dropped_values += (fields.extras.len() - n) as u64;
                write_properties(buf, fields.extras.iter().filter(kept))
            }
        };
        if any {
            rb.properties.append_value(buf.as_str());
        } else {
            rb.properties.append_null();
        }
        rb.source_file.append_value(self.source);
        rb.line_number.append_value(line_no as i64);
        rb.batch_id.append_value(&*s.batch_id);
        rb.ingested_at.append_value(s.ingested_at_us);
        rb.event_date.append_value(event_date);
        rb.segment.append_value(segment);
    }

    /// Validates one row's fields and lands or quarantines it.
    fn row(
        &mut self,
        line_no: u64,
        rec: &[u8],
        fields: &Fields<'_>,
        format: Format,
        ts: Option<&[String]>,
    ) {
        match validate(fields, format, self.s, ts) {
            Ok(v) => {
                let privacy = &self.s.privacy;
                let p = if privacy.is_noop() {
                    Protected::default()
                } else {
                    let field = |i: usize| non_blank(&fields.v[i]);
                    match privacy.protect(
                        v.user_id,
                        field(F_ANONYMOUS_ID),
                        field(F_EMAIL),
                        field(F_IP),
                        &mut self.pseudonyms,
                    ) {
                        Ok(p) => p,
                        Err(msg) => {
                            if self.error.is_none() {
                                self.error = Some(crate::error::Error::usage(format!(
                                    "{}:{line_no}: {msg}",
                                    self.source
                                )));
                            }
                            return;
                        }
                    }
                };
                if p.erased {
                    self.stats.erased += 1;
                } else {
                    self.land(line_no, fields, &v, &p);
                }
            }
            Err((reason, detail)) => self.quarantine(line_no, rec, reason, &detail),
        }
    }

    fn finish(mut self, file_idx: usize) -> CResult<ChunkOutput> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        Ok(ChunkOutput {
            file_idx,
            raw: self
                .parts
                .iter_mut()
                .map(|p| p.rb.finish(&self.s.raw_schema))
                .collect(),
            quarantine: self.qb.finish(&self.s.quarantine_schema),
            stats: self.stats,
        })
    }
}

fn is_blank(rec: &[u8]) -> bool {
    rec.iter().all(|b| b.is_ascii_whitespace())
}

/// Parses and validates one chunk.
pub fn parse_chunk(chunk: &Chunk, s: &ParseSettings) -> CResult<ChunkOutput> {
    if let Some(why) = &chunk.corrupt {
        let mut out = Out::new(chunk, s);
        out.stats.lines += 1;
        out.quarantine(chunk.first_line, &chunk.data, Reason::BrokenJson, why);
        return out.finish(chunk.file_idx);
    }
    if let Some(source) = &s.source {
        return parse_source_chunk(chunk, s, source);
    }
    let mut out = Out::new(chunk, s);
    records(
        &chunk.data,
        chunk.format,
        chunk.first_line,
        |line_no, rec| {
            out.stats.lines += 1;
            if is_blank(rec) {
                out.stats.blank += 1;
                return;
            }
            let mut fields = Fields::new();
            let parsed = match chunk.format {
                Format::Ndjson => parse_json_line(rec, &mut fields),
                Format::Csv => {
                    let header = chunk
                        .csv_header
                        .as_ref()
                        .expect("CSV chunks carry their header");
                    match (&header.unusable, std::str::from_utf8(rec)) {
                        (Some(why), _) => Err(why.clone()),
                        (None, Ok(text)) => parse_csv_record(text, header, &mut fields),
                        (None, Err(_)) => Err("CSV row is not valid UTF-8".to_string()),
                    }
                }
            };
            match parsed {
                Err(msg) => out.quarantine(line_no, rec, Reason::BrokenJson, &msg),
                Ok(()) => out.row(line_no, rec, &fields, chunk.format, None),
            }
        },
    );
    out.finish(chunk.file_idx)
}

/// A line as read, before the mapping: its text, or why it cannot be mapped at all.
struct SourceLine<'d> {
    line_no: u64,
    rec: &'d [u8],
    state: LineState,
}

enum LineState {
    Blank,
    Broken(String),
    Mapped,
}

/// Parses a chunk of a mapped source: split the records, run the mapping over them in one batch,
/// then validate each returned row like a native one.
fn parse_source_chunk(chunk: &Chunk, s: &ParseSettings, source: &Source) -> CResult<ChunkOutput> {
    let mut lines: Vec<SourceLine<'_>> = Vec::new();
    let mut rows = SourceRows::new(source);
    let header = chunk.csv_header.as_deref();
    records(
        &chunk.data,
        chunk.format,
        chunk.first_line,
        |line_no, rec| {
            let state = if is_blank(rec) {
                LineState::Blank
            } else {
                match std::str::from_utf8(rec) {
                    Err(_) => LineState::Broken("line is not valid UTF-8".to_string()),
                    Ok(text) => match chunk.format {
                        Format::Ndjson => match serde_json::from_str::<serde::de::IgnoredAny>(text)
                        {
                            Err(e) => LineState::Broken(format!("line is not valid JSON: {e}")),
                            Ok(_) if !text.trim_start().starts_with('{') => {
                                LineState::Broken("line is not a JSON object".to_string())
                            }
                            Ok(_) => {
                                rows.push(line_no, text, std::iter::empty());
                                LineState::Mapped
                            }
                        },
                        Format::Csv => {
                            let h = header.expect("CSV chunks carry their header");
                            // Without a usable header no record is split at all.
                            let fields = match &h.unusable {
                                Some(why) => Err(why.clone()),
                                None => Ok(split_csv_record(text, h.delimiter)),
                            };
                            match fields {
                                Err(why) => LineState::Broken(why),
                                Ok(None) => {
                                    LineState::Broken("CSV row has an unterminated quote".into())
                                }
                                Ok(Some(v)) if v.len() != h.columns.len() => {
                                    LineState::Broken(format!(
                                        "CSV row has {} fields, the header has {}",
                                        v.len(),
                                        h.columns.len()
                                    ))
                                }
                                Ok(Some(v)) => {
                                    rows.push(
                                        line_no,
                                        text,
                                        h.positions.iter().map(|&i| v[i].as_ref()),
                                    );
                                    LineState::Mapped
                                }
                            }
                        }
                    },
                }
            };
            lines.push(SourceLine {
                line_no,
                rec,
                state,
            });
        },
    );

    let input = rows.finish(source.source_schema())?;
    let mapped = if input.num_rows() > 0 {
        source.map(input)?
    } else {
        Vec::new()
    };
    let outputs: Vec<MappedBatch> = mapped
        .iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| MappedBatch::new(b, source))
        .collect::<CResult<_>>()?;

    // Output rows by line number, in their output order.
    let mut by_line: HashMap<u64, Vec<(usize, usize)>> = HashMap::new();
    for (bi, b) in outputs.iter().enumerate() {
        for r in 0..b.rows {
            if b.line.is_null(r) {
                return Err(source_error(
                    source,
                    chunk,
                    "returned a row whose _line is NULL",
                ));
            }
            by_line
                .entry(b.line.value(r) as u64)
                .or_default()
                .push((bi, r));
        }
    }
    let mut out = Out::new(chunk, s);
    let ts = Some(source.timestamp_formats.as_slice());
    for l in &lines {
        out.stats.lines += 1;
        match &l.state {
            LineState::Blank => out.stats.blank += 1,
            LineState::Broken(msg) => out.quarantine(l.line_no, l.rec, Reason::BrokenJson, msg),
            LineState::Mapped => {
                let Some(found) = by_line.remove(&l.line_no) else {
                    out.quarantine(
                        l.line_no,
                        l.rec,
                        Reason::UnmappedLine,
                        &format!(
                            "source mapping {} returned no row for this line",
                            source.name
                        ),
                    );
                    continue;
                };
                out.stats.extra_rows += found.len() as u64 - 1;
                for (bi, r) in found {
                    let b = &outputs[bi];
                    if let Some(reject) = b.reject.filter(|a| !a.is_null(r)) {
                        out.quarantine(l.line_no, l.rec, Reason::RejectedBySource, reject.value(r));
                        continue;
                    }
                    let fields = b.fields(r);
                    out.row(l.line_no, l.rec, &fields, Format::Csv, ts);
                }
            }
        }
    }
    if let Some(line) = by_line.keys().min() {
        return Err(source_error(
            source,
            chunk,
            &format!("returned _line {line}, which is not a line of this input"),
        ));
    }
    out.finish(chunk.file_idx)
}

fn source_error(source: &Source, chunk: &Chunk, msg: &str) -> crate::error::Error {
    crate::error::Error::runtime(format!(
        "source mapping {} {msg} ({} from line {})",
        source.origin, chunk.source_file, chunk.first_line
    ))
}

/// One output batch of a mapping, its columns cast to text and sorted by role.
struct MappedBatch<'b> {
    rows: usize,
    line: Int64Array,
    reject: Option<&'b StringArray>,
    /// Canonical field index → column.
    canonical: Vec<(usize, StringArray)>,
    properties: Option<StringArray>,
    /// Other output columns: kept in `properties`.
    extras: Vec<(&'b str, StringArray)>,
}

impl<'b> MappedBatch<'b> {
    fn new(batch: &'b RecordBatch, source: &Source) -> CResult<Self> {
        let schema = batch.schema_ref().clone();
        let text = |i: usize| -> CResult<StringArray> {
            let c = arrow::compute::cast(batch.column(i), &arrow::datatypes::DataType::Utf8)?;
            Ok(c.as_string::<i32>().clone())
        };
        let mut line = None;
        let mut reject = None;
        let mut canonical = Vec::new();
        let mut properties = None;
        let mut extras = Vec::new();
        for (i, f) in schema.fields().iter().enumerate() {
            let name = f.name().as_str();
            match name {
                "_line" => {
                    let c =
                        arrow::compute::cast(batch.column(i), &arrow::datatypes::DataType::Int64)?;
                    line = Some(c.as_primitive::<arrow::datatypes::Int64Type>().clone());
                }
                "_reject" => {
                    if batch.column(i).data_type() != &arrow::datatypes::DataType::Utf8 {
                        return Err(crate::error::Error::config(format!(
                            "source mapping {}: _reject must be text (NULL to keep the row), not {}",
                            source.origin,
                            batch.column(i).data_type()
                        )));
                    }
                    reject = Some(batch.column(i).as_string::<i32>());
                }
                "_raw" => {}
                "properties" => properties = Some(text(i)?),
                _ => match field_index(name) {
                    Some(fi) => canonical.push((fi, text(i)?)),
                    None => extras.push((name_of(batch, i), text(i)?)),
                },
            }
        }
        Ok(MappedBatch {
            rows: batch.num_rows(),
            line: line.expect("planned with a _line column"),
            reject,
            canonical,
            properties,
            extras,
        })
    }

    /// Row `r` as the fields the validator reads (every value as text, like a CSV cell).
    fn fields(&self, r: usize) -> Fields<'_> {
        let mut f = Fields::new();
        for (fi, col) in &self.canonical {
            f.v[*fi] = if col.is_null(r) {
                Val::Null
            } else {
                Val::Str(Cow::Borrowed(col.value(r)))
            };
        }
        if let Some(p) = self.properties.as_ref().filter(|p| !p.is_null(r)) {
            match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(p.value(r)) {
                Ok(map) => {
                    for (k, v) in map {
                        f.extras
                            .push((Cow::Owned(k), Extra::OwnedJson(v.to_string())));
                    }
                }
                Err(_) => f.extras.push((
                    Cow::Borrowed("properties"),
                    Extra::Text(Cow::Borrowed(p.value(r))),
                )),
            }
        }
        for (name, col) in &self.extras {
            if !col.is_null(r) {
                f.extras.push((
                    Cow::Borrowed(name),
                    Extra::Text(Cow::Borrowed(col.value(r))),
                ));
            }
        }
        f
    }
}

fn name_of(batch: &RecordBatch, i: usize) -> &str {
    batch.schema_ref().field(i).name().as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flat_reader_reads_what_serde_reads_and_leaves_the_rest_to_it() {
        let show = |f: &Fields<'_>| {
            let extras: Vec<String> = f
                .extras
                .iter()
                .map(|(k, v)| match v {
                    Extra::Json(raw) => format!("{k}={raw}"),
                    _ => format!("{k}=?"),
                })
                .collect();
            format!("{:?} {extras:?}", f.v)
        };
        let flat = [
            r#"{"event_id":"e1","price":-12.5e+3,"x":null,"y":true,"z":false,"w":"a b"}"#,
            " {\t\"event_id\" : \"e1\" ,\"quantity\":0 , \"price\":0.25E2}\r ",
            r#"{}"#,
            r#"{"event_id":"é—✓","event_id":"second wins","k":"v","k":1}"#,
            r#"{"price":1e400,"quantity":123456789012345678901234567890,"x":-0.0E-0}"#,
        ];
        for line in flat {
            let (mut fast, mut slow) = (Fields::new(), Fields::new());
            assert!(flat_json_line(line, &mut fast), "{line}");
            serde_json_line(line, &mut slow).unwrap();
            assert_eq!(show(&fast), show(&slow), "{line}");
        }
        // Escapes, nesting and everything invalid go to serde (which keeps or rejects them).
        let not_flat = [
            r#"{"event_id":"a\"b"}"#,
            r#"{"p":{"a":1}}"#,
            r#"{"p":[1]}"#,
            r#"{"a":1,}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":1e}"#,
            r#"{"a":-}"#,
            r#"{"a":nul}"#,
            r#"{"a":truex}"#,
            r#"{"a":1} x"#,
            r#"{"a":1}{"#,
            r#"{"a" 1}"#,
            r#"{"a":1"#,
            r#"{"a":"b"#,
            "{\"a\":\"tab\there\"}",
            r#"[1]"#,
            r#""#,
            r#"{a:1}"#,
        ];
        for line in not_flat {
            assert!(!flat_json_line(line, &mut Fields::new()), "{line}");
        }
        // Every one-byte edit and deletion of a line: whatever the flat reader accepts, serde
        // accepts with the same fields.
        let base = r#"{"event_id":"e-1","price":-1.5e3,"q":0,"n":null,"t":true,"c":"x/y","page_url":"https://shop.example.com/p/toys-games"}"#;
        let mut accepted = 0;
        for at in 0..base.len() {
            let edits = b"\"\\{}[],: 0-.eEn\t\x01a+"
                .iter()
                .map(|&c| format!("{}{}{}", &base[..at], c as char, &base[at + 1..]))
                .chain([format!("{}{}", &base[..at], &base[at + 1..])]);
            for line in edits {
                let mut fast = Fields::new();
                if flat_json_line(&line, &mut fast) {
                    accepted += 1;
                    let mut slow = Fields::new();
                    let read = serde_json_line(&line, &mut slow);
                    assert!(read.is_ok(), "{line}: {read:?}");
                    assert_eq!(show(&fast), show(&slow), "{line}");
                }
            }
        }
        assert!(accepted > 100, "{accepted}");
        // The word-at-a-time scan finds the first stop byte wherever it is.
        for stop in [b'"', b'\\', 0x00, 0x1f] {
            for at in 0..40 {
                let mut bytes = "é".repeat(25).into_bytes();
                bytes[at] = stop;
                assert_eq!(string_end(&bytes), Some(at), "{stop} at {at}");
            }
        }
        assert_eq!(string_end("no stop here, ✓ \x7f".as_bytes()), None);
        let mut f = Fields::new();
        serde_json_line(not_flat[0], &mut f).unwrap();
        assert_eq!(show(&f), {
            let mut g = Fields::new();
            g.v[field_index("event_id").unwrap()] = Val::Str(Cow::Borrowed("a\"b"));
            show(&g)
        });
    }

    #[test]
    fn csv_records_split_like_rfc4180() {
        let r = split_csv_record(r#"a,"b,c","d""e",,"#, b',').unwrap();
        assert_eq!(r, vec!["a", "b,c", "d\"e", "", ""]);
        assert!(split_csv_record(r#"a,"open"#, b',').is_none());
        assert_eq!(csv_record_end(b"a,\"x\ny\"\nb"), Some(7));
    }

    #[test]
    fn an_iso_time_that_is_not_rfc_3339_says_what_to_change() {
        let detail = |text: &str| match timestamp(
            &Val::Str(Cow::Borrowed(text)),
            "field event_time",
            Format::Ndjson,
            None,
        ) {
            Err(TsError::Bad(why)) => why,
            _ => panic!("{text} was accepted"),
        };
        for zoneless in ["2026-01-05T10:00:00", "2026-01-05 10:00:00.250"] {
            assert!(
                detail(zoneless).ends_with(
                    "is not an RFC 3339 instant: it has no time zone (add Z for UTC, or its \
                     offset, e.g. +01:00)"
                ),
                "{}",
                detail(zoneless)
            );
        }
        for colonless in ["2026-01-05T10:00:00+0100", "2026-01-05T10:00:00.5-05"] {
            assert!(
                detail(colonless).ends_with(": write its offset as ±HH:MM (e.g. +01:00)"),
                "{}",
                detail(colonless)
            );
        }
        assert!(detail("1767607200123").ends_with("(epoch digits are read from CSV only)"));
        assert!(detail("05/01/2026 10:00").ends_with("is not an RFC 3339 instant"));
        assert!(detail("2026-02-30T10:00:00").ends_with("is not an RFC 3339 instant"));
    }
}
