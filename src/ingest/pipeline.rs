//! The streaming pipeline of one ingest group:
//!
//! ```text
//!  reader thread ──chunks──▶ N parser threads ──batches──▶ async writer (caller)
//!  (open, decompress,        (parse + validate,            (Delta writers,
//!   cut at line ends)         Arrow builders)               bounded buffers)
//! ```
//!
//! Both queues are bounded, so memory is roughly `(queue depth) × chunk size` plus what the
//! Delta writers buffer, whatever the input size.

use std::io::{BufRead, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::input::{self, InputFile, TailEnd};
use super::json_array;
use super::parse::{parse_chunk, Chunk, ChunkOutput, CsvHeader, Format, ParseSettings};
use super::source::Header;
use crate::error::{Error, Result};

/// What the writer side receives.
pub enum Event {
    Output(ChunkOutput),
    /// All chunks of a file have been sent: `chunks` of them.
    FileDone {
        file_idx: usize,
        chunks: u64,
        raw_bytes: u64,
        content_hash: Option<String>,
        /// How far a plain local file was read, to read only what is appended next time.
        tail: Option<TailEnd>,
    },
    /// The file was deleted between being found and being read: nothing of it lands, and it
    /// is not recorded as ingested.
    FileGone {
        file_idx: usize,
    },
    Failed(Error),
}

pub struct Pipeline {
    pub events: tokio::sync::mpsc::Receiver<Event>,
    threads: Vec<JoinHandle<()>>,
}

impl Pipeline {
    /// Closes the channel, which stops the threads at their next send, then waits for them.
    /// (Joining with the receiver still open would deadlock once a thread blocks on a full
    /// queue: the writer stops draining it when a write fails.)
    pub fn join(self) {
        let Pipeline { events, threads } = self;
        drop(events);
        for t in threads {
            let _ = t.join();
        }
    }
}

pub struct PipelineOptions {
    pub threads: usize,
    pub chunk_bytes: usize,
    /// A line (CSV record) longer than this is quarantined with its beginning only.
    pub max_line_bytes: usize,
    /// Called with the number of raw bytes read, for progress.
    pub on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
}

pub fn start(
    files: Vec<(usize, InputFile)>,
    settings: Arc<ParseSettings>,
    opts: PipelineOptions,
    rt: tokio::runtime::Handle,
) -> Pipeline {
    let (chunk_tx, chunk_rx) = crossbeam_channel::bounded::<Chunk>(opts.threads * 2);
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Event>(opts.threads * 2);
    let mut threads = Vec::new();

    for _ in 0..opts.threads {
        let rx = chunk_rx.clone();
        let tx = out_tx.clone();
        let settings = settings.clone();
        threads.push(std::thread::spawn(move || {
            for chunk in rx {
                // A bug that panics on some input must fail the run, not lose the chunk's lines
                // while the other threads carry on.
                let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    // Test hook: a parser bug on every chunk but a file's first.
                    if chunk.first_line > 1
                        && std::env::var("CLICKLAKE_FAULT").is_ok_and(|p| p == "parse-panic")
                    {
                        panic!("CLICKLAKE_FAULT: a parser thread panics");
                    }
                    parse_chunk(&chunk, &settings)
                }));
                let event = match parsed {
                    Ok(Ok(out)) => Event::Output(out),
                    Ok(Err(e)) => Event::Failed(e),
                    Err(_) => Event::Failed(Error::runtime(format!(
                        "internal error: parsing {} from line {} panicked; nothing of this \
                         group was committed (please report it)",
                        chunk.source_file, chunk.first_line
                    ))),
                };
                if tx.blocking_send(event).is_err() {
                    return;
                }
            }
        }));
    }
    drop(chunk_rx);

    let reader_tx = out_tx;
    let settings_r = settings;
    threads.push(std::thread::spawn(move || {
        for (idx, file) in files {
            let done = match read_file(idx, &file, &chunk_tx, &opts, &rt, &settings_r) {
                Ok(Some(read)) => Event::FileDone {
                    file_idx: idx,
                    chunks: read.chunks,
                    raw_bytes: read.raw_bytes,
                    content_hash: read.content_hash,
                    tail: read.tail,
                },
                Ok(None) => {
                    tracing::warn!(
                        "{}: deleted or renamed away before it was read; skipped",
                        file.display
                    );
                    Event::FileGone { file_idx: idx }
                }
                Err(e) => {
                    let _ = reader_tx.blocking_send(Event::Failed(e));
                    return;
                }
            };
            if reader_tx.blocking_send(done).is_err() {
                return;
            }
        }
    }));

    Pipeline {
        events: out_rx,
        threads,
    }
}

/// What reading one file did.
struct ReadDone {
    chunks: u64,
    raw_bytes: u64,
    /// stdin's content hash.
    content_hash: Option<String>,
    tail: Option<TailEnd>,
}

/// Reads one file and sends its chunks, or returns `None` when the file no longer exists.
fn read_file(
    idx: usize,
    file: &InputFile,
    tx: &crossbeam_channel::Sender<Chunk>,
    opts: &PipelineOptions,
    rt: &tokio::runtime::Handle,
    settings: &ParseSettings,
) -> Result<Option<ReadDone>> {
    let Some(opened) = input::open(file, rt)? else {
        return Ok(None);
    };
    // Only plain local text files can grow by appends and be read from where this read stops
    // (not JSON array files: their lines are elements, not byte ranges).
    let mut tailable = matches!(file.location, input::Location::Local(_))
        && opened.compression.is_none()
        && opened.unsupported.is_none();
    let mut reader = opened.reader;
    let untailed = |chunks| ReadDone {
        chunks,
        raw_bytes: opened.raw_bytes.load(Ordering::Relaxed),
        content_hash: hash_of(&opened.hash),
        tail: None,
    };
    let source: Arc<str> = Arc::from(file.display.as_str());
    let io_err = |e: std::io::Error| Error::runtime(format!("cannot read {}: {e}", file.display));

    if let Some(what) = opened.unsupported {
        let why = format!(
            "the file is {what}, not NDJSON or CSV (plain, gzip or zstd): nothing in it was read"
        );
        if matches!(file.location, input::Location::Stdin) {
            // Stdin's identity is the hash of all of it: it cannot be recorded as done unread.
            return Err(Error::usage(format!("stdin: {why}")));
        }
        let _ = tx.send(Chunk::unreadable(
            idx,
            &source,
            1,
            file.format,
            Vec::new(),
            why,
        ));
        return Ok(Some(untailed(1)));
    }
    let stream_broke = |e| broken_stream(e, opened.compression, &opened.read_failed, file);
    // A UTF-8 byte order mark (Excel's "CSV UTF-8", PowerShell) is not part of the first line.
    // (A stream that breaks at once is handled with the reads below.)
    let resume = file.resume;
    if resume.is_none()
        && matches!(reader.fill_buf(), Ok(head) if head.starts_with(b"\xEF\xBB\xBF"))
    {
        reader.consume(3);
    }
    if resume.is_some_and(|r| r.after_unterminated) {
        // The line end of the line read last time, not an empty line.
        match reader.fill_buf() {
            Ok(head) if head.starts_with(b"\r\n") => reader.consume(2),
            Ok(head) if head.starts_with(b"\n") => reader.consume(1),
            _ => {}
        }
    }
    let mut next_line: u64 = resume.map_or(1, |r| r.next_line);
    let mut csv_header = None;
    let mut format = file.format;
    if let Some(source) = &settings.source {
        format = source.format;
    } else if matches!(file.location, input::Location::Stdin) && format == Format::Ndjson {
        // stdin has no name: a first byte other than `{` means CSV (unless --format says).
        let head = reader.fill_buf().map_err(io_err)?;
        if head
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b != b'{' && *b != b'[')
        {
            format = Format::Csv;
        }
    }
    if format == Format::Ndjson
        && resume.is_none()
        && matches!(reader.fill_buf(), Ok(head) if json_array::starts_array(head))
    {
        tailable = false;
        reader = Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            json_array::ArrayLines::new(reader),
        ));
    }
    // A first line that cannot be the header goes back to the data, to be quarantined with
    // every other line of the file (see `CsvHeader::unusable`).
    let mut carry: Vec<u8> = Vec::new();
    if format == Format::Csv && resume.is_some() {
        // Appended rows: the header is the file's first line, read as when the file was new.
        csv_header = Some(Arc::new(resumed_csv_header(file, rt, settings, opts)?));
    } else if format == Format::Csv {
        match csv_header_of(&mut reader, file, settings, opts.max_line_bytes) {
            Ok(None) => {
                return Ok(Some(untailed(0)));
            }
            Ok(Some((header, unused, first))) => {
                csv_header = Some(Arc::new(header));
                carry = unused;
                next_line = first;
            }
            Err(e) => {
                let why = stream_broke(e)?;
                let _ = tx.send(Chunk::unreadable(idx, &source, 1, format, Vec::new(), why));
                return Ok(Some(untailed(1)));
            }
        }
    }

    let mut chunks = 0u64;
    let mut last_bytes = 0u64;
    // The length of an unterminated last line that is not whole JSON or a whole CSV record (see
    // `cut_last_line` and `cut_last_csv_record`).
    let mut held_back: Option<u64> = None;
    // A compressed stream that breaks is bad data, not a failed run (see `broken_stream`): what
    // decoded lands or is quarantined as usual, and one row quarantines the rest. Stopping
    // instead would stop every later run at the same file (an s3:// object never changes).
    let mut corrupt: Option<String> = None;
    let mut eof = false;
    loop {
        let mut buf = std::mem::take(&mut carry);
        if !eof {
            buf.reserve(opts.chunk_bytes);
            match (&mut reader)
                .take(opts.chunk_bytes as u64)
                .read_to_end(&mut buf)
            {
                Ok(n) => eof = n == 0,
                Err(e) => {
                    corrupt = Some(stream_broke(e)?);
                    eof = true;
                }
            }
            let now = opened.raw_bytes.load(Ordering::Relaxed);
            (opts.on_bytes)(now - last_bytes);
            last_bytes = now;
        }
        if eof && buf.is_empty() {
            break;
        }
        // Cut at the last record end; the tail waits for the next read (or is the last line).
        let cut = match (eof, format) {
            (true, Format::Csv) => open_quote_cut(&buf).unwrap_or(buf.len()),
            (true, Format::Ndjson) => buf.len(),
            (false, Format::Ndjson) => memchr::memrchr(b'\n', &buf).map_or(0, |i| i + 1),
            (false, Format::Csv) => last_csv_record_end(&buf).map_or(0, |i| i + 1),
        };
        if cut == 0 && buf.len() < opts.max_line_bytes {
            // One record longer than a chunk: keep reading into the same buffer.
            carry = buf;
            continue;
        }
        if cut == 0 {
            // A record over the limit. In CSV with a line end in it, a quote opened and never
            // closed: that line is quarantined (an open quote) and reading resumes after it.
            if let (Format::Csv, Some(nl)) = (format, memchr::memchr(b'\n', &buf)) {
                carry = buf.split_off(nl + 1);
                let chunk = data_chunk(idx, &source, next_line, buf, format, &csv_header);
                chunks += 1;
                next_line += 1;
                if tx.send(chunk).is_err() {
                    break;
                }
                continue;
            }
            // One line over the limit: keep its beginning, skip the rest of it unread.
            let (rest, ended, broke) = match skip_line(&mut reader) {
                Ok((rest, ended)) => (rest, ended, false),
                Err(e) => {
                    corrupt = Some(stream_broke(e)?);
                    (0, false, true)
                }
            };
            let len = buf.len() as u64 + rest;
            buf.truncate(LONG_LINE_KEPT);
            let why = format!(
                "the line is {len} bytes{}, over max_line_size ({}): raw keeps its first {} \
                 bytes",
                if broke { " or more" } else { "" },
                crate::config::format_bytes(opts.max_line_bytes as u64),
                buf.len()
            );
            chunks += 1;
            let chunk = Chunk::unreadable(idx, &source, next_line, format, buf, why);
            next_line += 1;
            if tx.send(chunk).is_err() {
                break;
            }
            eof |= !ended;
            continue;
        }
        carry = buf.split_off(cut);
        if eof && carry.is_empty() {
            held_back = match (format, &csv_header) {
                (Format::Ndjson, _) => cut_last_line(&buf),
                (Format::Csv, Some(header)) => cut_last_csv_record(&buf, header),
                (Format::Csv, None) => None,
            };
        }
        let physical =
            memchr::memchr_iter(b'\n', &buf).count() as u64 + u64::from(buf.last() != Some(&b'\n'));
        let chunk = data_chunk(idx, &source, next_line, buf, format, &csv_header);
        next_line += physical;
        chunks += 1;
        if tx.send(chunk).is_err() {
            break;
        }
    }
    if let Some(why) = corrupt {
        tailable = false;
        chunks += 1;
        let _ = tx.send(Chunk::unreadable(
            idx,
            &source,
            next_line,
            format,
            Vec::new(),
            why,
        ));
    } else {
        // Drain to EOF so the content hash (stdin) is complete.
        let mut sink = [0u8; 1];
        let _ = reader.read(&mut sink).map_err(io_err)?;
    }
    let raw_bytes = opened.raw_bytes.load(Ordering::Relaxed);
    Ok(Some(ReadDone {
        chunks,
        raw_bytes,
        content_hash: hash_of(&opened.hash),
        tail: tailable
            .then(|| {
                let end = resume.map_or(0, |r| r.offset) + raw_bytes;
                let handle = opened.local.as_ref()?;
                Some(TailEnd {
                    identity: input::FileIdentity::of(&handle.metadata().ok()?),
                    fingerprint: input::fingerprint_file(handle, end)?,
                    consumed: end - held_back.unwrap_or(0),
                    end,
                    lines: next_line - 1 - u64::from(held_back.is_some()),
                })
            })
            .flatten(),
    }))
}

/// The length of the last line of a file's last NDJSON chunk when it has no line end and is not
/// a whole JSON value: a line a producer was still writing. It is read (and quarantined as
/// broken JSON) now, and read again whole from its start once the file has grown.
fn cut_last_line(buf: &[u8]) -> Option<u64> {
    if buf.last() == Some(&b'\n') {
        return None;
    }
    let start = memchr::memrchr(b'\n', buf).map_or(0, |i| i + 1);
    let line = trimmed(&buf[start..]);
    if line.is_empty() || serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok() {
        return None;
    }
    Some((buf.len() - start) as u64)
}

/// As [`cut_last_line`] for CSV: the length of the last record of a file's last chunk when it
/// has no line end and is not a whole record (a quote left open, or fewer or more fields than
/// the header names). A record on several lines (a quoted line end in it) is not held back: a
/// grown file is read on from the start of a line. Nor is one cut in its last field with the
/// field count intact: it cannot be told from a whole row (see the README).
fn cut_last_csv_record(buf: &[u8], header: &CsvHeader) -> Option<u64> {
    if buf.last() == Some(&b'\n') || header.unusable.is_some() {
        return None;
    }
    let line_start = memchr::memrchr(b'\n', buf);
    if last_csv_record_end(buf) != line_start {
        return None;
    }
    let start = line_start.map_or(0, |i| i + 1);
    let record = trimmed(&buf[start..]);
    let whole = std::str::from_utf8(record)
        .ok()
        .and_then(|text| super::parse::split_csv_record(text, header.delimiter))
        .is_some_and(|fields| fields.len() == header.columns.len());
    (!record.is_empty() && !whole).then_some((buf.len() - start) as u64)
}

/// The header of a CSV file read from an offset: its first line, read as `csv_header_of` reads
/// it when the file is new (a first line that cannot be the header quarantines every line).
fn resumed_csv_header(
    file: &InputFile,
    rt: &tokio::runtime::Handle,
    settings: &ParseSettings,
    opts: &PipelineOptions,
) -> Result<CsvHeader> {
    let whole = InputFile {
        resume: None,
        ..file.clone()
    };
    let unreadable = || Error::runtime(format!("cannot read the header of {}", file.display));
    let mut opened = input::open(&whole, rt)?.ok_or_else(unreadable)?;
    if matches!(opened.reader.fill_buf(), Ok(head) if head.starts_with(b"\xEF\xBB\xBF")) {
        opened.reader.consume(3);
    }
    match csv_header_of(&mut opened.reader, &whole, settings, opts.max_line_bytes) {
        Ok(Some((header, _, _))) => Ok(header),
        _ => Err(unreadable()),
    }
}

/// How much of a line over `max_line_size` its quarantine row keeps in `raw`.
const LONG_LINE_KEPT: usize = 8 << 10;

fn data_chunk(
    file_idx: usize,
    source: &Arc<str>,
    first_line: u64,
    data: Vec<u8>,
    format: Format,
    csv_header: &Option<Arc<CsvHeader>>,
) -> Chunk {
    Chunk {
        file_idx,
        source_file: source.clone(),
        first_line,
        data,
        format,
        csv_header: csv_header.clone(),
        corrupt: None,
    }
}

/// Skips to the end of the current line without keeping it: (bytes skipped, whether a line end
/// was found before the end of the input).
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<(u64, bool)> {
    let mut skipped = 0u64;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok((skipped, false));
        }
        if let Some(i) = memchr::memchr(b'\n', buf) {
            reader.consume(i + 1);
            return Ok((skipped + i as u64, true));
        }
        let n = buf.len();
        reader.consume(n);
        skipped += n as u64;
    }
}

/// Where the last records of a CSV input must be cut when a quote opens in one of them and never
/// closes: read by the rules, that record would run to the end of the file and take every later
/// line with it. The records before it go as usual; the line the quote opened on is quarantined
/// alone (an open quote), and reading resumes at the next line. `None` when every quote closes,
/// or when the open record is a single line anyway.
fn open_quote_cut(buf: &[u8]) -> Option<usize> {
    let mut in_quotes = false;
    let mut record_start = 0;
    for i in memchr::memchr2_iter(b'"', b'\n', buf) {
        if buf[i] == b'"' {
            in_quotes = !in_quotes;
        } else if !in_quotes {
            record_start = i + 1;
        }
    }
    if !in_quotes {
        return None;
    }
    if record_start > 0 {
        return Some(record_start);
    }
    memchr::memchr(b'\n', buf)
        .map(|nl| nl + 1)
        .filter(|&end| end < buf.len())
}

/// A read error in a compressed file whose bytes read fine: the stream is broken (truncated,
/// corrupt), which is bad data: the detail of the quarantine row that marks it. A failed read of
/// the bytes themselves (disk, network), and any failure of stdin, whose identity needs the whole
/// stream, stop the ingest.
fn broken_stream(
    e: std::io::Error,
    compression: Option<&str>,
    read_failed: &AtomicBool,
    file: &InputFile,
) -> Result<String> {
    match compression {
        Some(kind)
            if !read_failed.load(Ordering::Relaxed)
                && !matches!(file.location, input::Location::Stdin) =>
        {
            Ok(format!(
                "the file's {kind} stream is truncated or corrupt here: {e}; nothing after this \
                 point could be read (send the file again)"
            ))
        }
        _ => Err(Error::runtime(format!("cannot read {}: {e}", file.display))),
    }
}

/// Reads a CSV file's header, if it has one: (the header, bytes read that are data after all,
/// the line number of the first data line); `None` for an empty file. A first line that cannot
/// be the header is returned as data, with a header that quarantines every line.
fn csv_header_of(
    reader: &mut Box<dyn BufRead + Send>,
    file: &InputFile,
    settings: &ParseSettings,
    max_line_bytes: usize,
) -> std::io::Result<Option<(CsvHeader, Vec<u8>, u64)>> {
    let header = match &settings.source {
        None => {
            let Some(line) = first_line(reader, max_line_bytes)? else {
                return Ok(None);
            };
            // Like DuckDB's sniffer: a header that names the required columns when split at
            // `;` (spreadsheets in much of Europe), a tab or `|` gives the file's delimiter.
            let text = trimmed(&line);
            let header = CsvHeader::parse(text, file.delimiter).or_else(|why| {
                [b',', b';', b'\t', b'|']
                    .into_iter()
                    .filter(|d| *d != file.delimiter)
                    .find_map(|d| CsvHeader::parse(text, d).ok())
                    .ok_or(why)
            });
            header.map_err(|why| (line, file.delimiter, why))
        }
        Some(source) => {
            // A mapped source: its header setting decides whether line 1 names the columns;
            // a .tsv file is tab-separated whatever the mapping declares.
            let delimiter = if file.delimiter == b'\t' {
                b'\t'
            } else {
                source.delimiter
            };
            let has_header = match source.header {
                Header::Yes => true,
                Header::No => false,
                Header::Auto => {
                    let head = reader.fill_buf()?;
                    let end = memchr::memchr(b'\n', head).unwrap_or(head.len());
                    let line = head[..end].strip_suffix(b"\r").unwrap_or(&head[..end]);
                    CsvHeader::names(line, delimiter).is_ok_and(|n| n == source.columns)
                }
            };
            if !has_header {
                return Ok(Some(
                    match CsvHeader::for_source(source, source.columns.clone(), delimiter) {
                        Ok(header) => (header, Vec::new(), 1),
                        Err(why) => (CsvHeader::unusable(delimiter, why), Vec::new(), 1),
                    },
                ));
            }
            let Some(line) = first_line(reader, max_line_bytes)? else {
                return Ok(None);
            };
            CsvHeader::names(trimmed(&line), delimiter)
                .and_then(|columns| CsvHeader::for_source(source, columns, delimiter))
                .map_err(|why| (line, delimiter, why))
        }
    };
    Ok(Some(match header {
        Ok(header) => (header, Vec::new(), 2),
        Err((line, delimiter, why)) => (CsvHeader::unusable(delimiter, why), line, 1),
    }))
}

/// Reads the first line with its terminator, up to `max` bytes; `None` for an empty input.
fn first_line(reader: &mut impl BufRead, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    reader.take(max as u64).read_until(b'\n', &mut line)?;
    Ok((!line.is_empty()).then_some(line))
}

/// A line without its terminator.
fn trimmed(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r'] = line {
        line = rest;
    }
    line
}

fn hash_of(slot: &Option<Arc<std::sync::Mutex<Option<String>>>>) -> Option<String> {
    slot.as_ref()
        .and_then(|s| s.lock().expect("hash slot").clone())
}

/// The end of the last complete CSV record in `buf` (quote-aware), if any.
fn last_csv_record_end(buf: &[u8]) -> Option<usize> {
    let mut in_quotes = false;
    let mut last = None;
    for i in memchr::memchr2_iter(b'"', b'\n', buf) {
        if buf[i] == b'"' {
            in_quotes = !in_quotes;
        } else if !in_quotes {
            last = Some(i);
        }
    }
    last
}
