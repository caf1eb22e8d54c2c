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
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::input::{self, InputFile};
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
            match read_file(idx, &file, &chunk_tx, &opts, &rt, &settings_r) {
                Ok((chunks, raw_bytes, content_hash)) => {
                    if reader_tx
                        .blocking_send(Event::FileDone {
                            file_idx: idx,
                            chunks,
                            raw_bytes,
                            content_hash,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = reader_tx.blocking_send(Event::Failed(e));
                    return;
                }
            }
        }
    }));

    Pipeline {
        events: out_rx,
        threads,
    }
}

/// Reads one file and sends its chunks. Returns (chunks sent, raw bytes, stdin content hash).
fn read_file(
    idx: usize,
    file: &InputFile,
    tx: &crossbeam_channel::Sender<Chunk>,
    opts: &PipelineOptions,
    rt: &tokio::runtime::Handle,
    settings: &ParseSettings,
) -> Result<(u64, u64, Option<String>)> {
    let opened = input::open(file, rt)?;
    let mut reader = opened.reader;
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
        let _ = tx.send(Chunk::unreadable(idx, &source, 1, file.format, why));
        return Ok((1, opened.raw_bytes.load(Ordering::Relaxed), None));
    }
    let mut next_line: u64 = 1;
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
    // A first line that cannot be the header goes back to the data, to be quarantined with
    // every other line of the file (see `CsvHeader::unusable`).
    let mut carry: Vec<u8> = Vec::new();
    if format == Format::Csv {
        let header = match &settings.source {
            None => {
                let Some(line) = first_line(&mut reader).map_err(io_err)? else {
                    return Ok((
                        0,
                        opened.raw_bytes.load(Ordering::Relaxed),
                        hash_of(&opened.hash),
                    ));
                };
                next_line = 2;
                CsvHeader::parse(trimmed(&line), file.delimiter)
                    .map_err(|why| (line, file.delimiter, why))
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
                        let head = reader.fill_buf().map_err(io_err)?;
                        let end = memchr::memchr(b'\n', head).unwrap_or(head.len());
                        let line = head[..end].strip_suffix(b"\r").unwrap_or(&head[..end]);
                        CsvHeader::names(line, delimiter).is_ok_and(|n| n == source.columns)
                    }
                };
                if has_header {
                    let Some(line) = first_line(&mut reader).map_err(io_err)? else {
                        return Ok((
                            0,
                            opened.raw_bytes.load(Ordering::Relaxed),
                            hash_of(&opened.hash),
                        ));
                    };
                    next_line = 2;
                    CsvHeader::names(trimmed(&line), delimiter)
                        .and_then(|columns| CsvHeader::for_source(source, columns, delimiter))
                        .map_err(|why| (line, delimiter, why))
                } else {
                    CsvHeader::for_source(source, source.columns.clone(), delimiter)
                        .map_err(|why| (Vec::new(), delimiter, why))
                }
            }
        };
        csv_header = Some(Arc::new(match header {
            Ok(h) => h,
            Err((line, delimiter, why)) => {
                carry = line;
                next_line = 1;
                CsvHeader::unusable(delimiter, why)
            }
        }));
    }

    let mut chunks = 0u64;
    let mut last_bytes = 0u64;
    // A compressed file whose stream breaks (truncated, corrupt) while its bytes read fine is
    // bad data, not a failed run: what decoded lands or is quarantined as usual, and one row
    // quarantines the rest. Stopping instead would stop every later run at the same file (an
    // object in an s3:// inbox never changes). A failed read of the bytes themselves (disk,
    // network), and stdin, whose identity needs the whole stream, still stop the ingest.
    let mut corrupt: Option<String> = None;
    loop {
        let mut buf = std::mem::take(&mut carry);
        buf.reserve(opts.chunk_bytes);
        let n = match (&mut reader)
            .take(opts.chunk_bytes as u64)
            .read_to_end(&mut buf)
        {
            Ok(n) => n,
            Err(e) => match opened.compression {
                Some(kind)
                    if !opened.read_failed.load(Ordering::Relaxed)
                        && !matches!(file.location, input::Location::Stdin) =>
                {
                    corrupt = Some(format!(
                        "the file's {kind} stream is truncated or corrupt here: {e}; nothing \
                         after this point could be read (send the file again)"
                    ));
                    0
                }
                _ => return Err(io_err(e)),
            },
        };
        let eof = n == 0;
        let now = opened.raw_bytes.load(Ordering::Relaxed);
        (opts.on_bytes)(now - last_bytes);
        last_bytes = now;
        if eof && buf.is_empty() {
            break;
        }
        // Cut at the last record end; the tail waits for the next read (or is the last line).
        let cut = if eof {
            buf.len()
        } else {
            match format {
                Format::Ndjson => memchr::memrchr(b'\n', &buf).map(|i| i + 1),
                Format::Csv => last_csv_record_end(&buf).map(|i| i + 1),
            }
            .unwrap_or(0)
        };
        if cut == 0 {
            // One record longer than a chunk: keep reading into the same buffer.
            carry = buf;
            continue;
        }
        carry = buf.split_off(cut);
        let physical =
            memchr::memchr_iter(b'\n', &buf).count() as u64 + u64::from(buf.last() != Some(&b'\n'));
        let chunk = Chunk {
            file_idx: idx,
            source_file: source.clone(),
            first_line: next_line,
            data: buf,
            format,
            csv_header: csv_header.clone(),
            corrupt: None,
        };
        next_line += physical;
        chunks += 1;
        if tx.send(chunk).is_err() {
            break;
        }
        if eof {
            break;
        }
    }
    if let Some(why) = corrupt {
        chunks += 1;
        let _ = tx.send(Chunk::unreadable(idx, &source, next_line, format, why));
    } else {
        // Drain to EOF so the content hash (stdin) is complete.
        let mut sink = [0u8; 1];
        let _ = reader.read(&mut sink).map_err(io_err)?;
    }
    Ok((
        chunks,
        opened.raw_bytes.load(Ordering::Relaxed),
        hash_of(&opened.hash),
    ))
}

/// Reads the first line with its terminator; `None` for an empty input.
fn first_line(reader: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
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
