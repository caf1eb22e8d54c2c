//! Finds the input files a user named and opens them as plain byte streams.
//!
//! Inputs are local files, directories (recursively; names starting with `_` or `.` are skipped,
//! as in Hive/Spark), globs, `s3://` objects, prefixes or globs, and `-` for stdin. gzip and zstd
//! are recognised by their magic bytes, whatever the file is called. Every file gets an identity
//! (path + size + mtime, or URL + size + ETag) that makes ingest exactly-once per file. A plain
//! local file read before that has grown is read from where that read stopped (`Resume`).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use url::Url;

use super::parse::Format;
use crate::cli::InputFormat;
use crate::error::{Error, Result};
use crate::storage::Lake;

/// Where an input's bytes come from.
#[derive(Clone)]
pub enum Location {
    Local(PathBuf),
    Object {
        store: Arc<dyn ObjectStore>,
        path: ObjectPath,
    },
    Stdin,
}

/// One input file, identified.
#[derive(Clone)]
pub struct InputFile {
    /// As recorded in `source_file`: the absolute path or the URL; `-` for stdin.
    pub display: String,
    pub location: Location,
    pub size: Option<u64>,
    /// mtime in nanoseconds for local files, the ETag (or last-modified) for objects.
    pub version_tag: String,
    /// Identity of this version of the file; for stdin it is known only after reading.
    pub key: Option<String>,
    pub format: Format,
    pub delimiter: u8,
    /// When the file was last written (local mtime, object last-modified).
    pub modified: Option<std::time::SystemTime>,
    /// Found by listing a directory, prefix or glob, rather than named: `min_file_age` applies.
    pub listed: bool,
    /// A local file that grew since an earlier ingest read it: read only what was appended.
    pub resume: Option<Resume>,
}

/// Where reading a grown file starts: the end of what an earlier ingest consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// Bytes of the file consumed before (read from here).
    pub offset: u64,
    /// The line number of the first line read (lines consumed before + 1).
    pub next_line: u64,
    /// The earlier read ended with a whole line that had no line end: a line end appended
    /// right after it ends that line, and is not an empty line of its own.
    pub after_unterminated: bool,
    /// The file (device and inode) the offset belongs to: one renamed in its place between
    /// planning and reading (a log rotated) is not read from that offset.
    pub identity: FileIdentity,
    /// The file is a compressed copy of a log read before (logrotate's `compress`): `offset`
    /// counts decompressed bytes, skipped as the file is decompressed.
    pub compressed: bool,
}

/// A local file's device and inode: what a file is, whatever it is called. A log renamed by
/// rotation (`app.log` → `app.log.1`) is the same file, and a file written in place of it is a
/// new one. Inodes are reused after a deletion: the fingerprint tells those apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
}

impl FileIdentity {
    pub fn of(meta: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    pub fn of_path(path: &Path) -> Option<FileIdentity> {
        std::fs::metadata(path).ok().map(|m| FileIdentity::of(&m))
    }

    /// The key its tail markers are recorded under.
    pub fn key(&self) -> String {
        file_key(&["inode", &self.dev.to_string(), &self.ino.to_string()])
    }
}

/// How far an ingest read a plain local file, recorded with its commits so that the next
/// ingest of the grown file reads only the appended bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailEnd {
    /// The file that was read.
    pub identity: FileIdentity,
    /// `fingerprint` of its first `end` bytes, taken from the handle it was read through.
    pub fingerprint: i64,
    /// Where the next read of the grown file starts: the end of the bytes read, or the start of
    /// a last line cut short without a line end (a producer's buffer flushed mid-line), which
    /// is read again whole once the file has grown.
    pub consumed: u64,
    /// The bytes read (the file's length when it was read).
    pub end: u64,
    /// Physical lines before `consumed`, a CSV header included.
    pub lines: u64,
}

/// A local file opened again to see how it relates to an earlier read of it: read only at
/// offsets, so nothing here moves a handle.
pub struct Reopened(std::fs::File);

impl Reopened {
    /// The file at `path`, if it is still `identity` (not one renamed in its place).
    pub fn open(path: &Path, identity: FileIdentity) -> Option<Reopened> {
        let f = std::fs::File::open(path).ok()?;
        (FileIdentity::of(&f.metadata().ok()?) == identity).then_some(Reopened(f))
    }

    /// The byte at `offset`, if the file has one.
    pub fn byte_at(&self, offset: u64) -> Option<u8> {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 1];
        self.0.read_exact_at(&mut b, offset).ok()?;
        Some(b[0])
    }

    /// Where the line that ends at `end` (without a line end) starts: after the last line end
    /// before it, or 0. Reads backwards from `end` in blocks.
    pub fn line_start(&self, end: u64) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        const BLOCK: u64 = 64 << 10;
        let mut hi = end;
        let mut buf = vec![0u8; BLOCK as usize];
        while hi > 0 {
            let lo = hi.saturating_sub(BLOCK);
            let block = &mut buf[..(hi - lo) as usize];
            self.0.read_exact_at(block, lo).ok()?;
            if let Some(i) = memchr::memrchr(b'\n', block) {
                return Some(lo + i as u64 + 1);
            }
            hi = lo;
        }
        Some(0)
    }

    /// [`fingerprint_file`] of this file.
    pub fn fingerprint(&self, consumed: u64) -> Option<i64> {
        fingerprint_file(&self.0, consumed)
    }
}

/// A sample of a file's first `consumed` bytes: its first, middle and last 4 KiB (with the
/// length), as Filebeat fingerprints files. A grown file whose sample at the recorded length is
/// unchanged was appended to; any other change means a new file (rewritten, truncated, or an
/// inode reused). `None` when the file cannot be read or is shorter than `consumed`. Reads at
/// offsets, so a handle being read from is not moved.
pub fn fingerprint_file(f: &std::fs::File, consumed: u64) -> Option<i64> {
    use std::os::unix::fs::FileExt;
    if f.metadata().ok()?.len() < consumed {
        return None;
    }
    let mut samples = Vec::with_capacity(3);
    for start in sample_starts(consumed) {
        let mut buf = vec![0u8; (SAMPLE.min(consumed - start)) as usize];
        f.read_exact_at(&mut buf, start).ok()?;
        samples.push(buf);
    }
    fingerprint_of(consumed, samples.iter().map(Vec::as_slice))
}

/// The length of each sample of [`fingerprint_file`] (cut at the end of what it samples).
const SAMPLE: u64 = 4096;

/// Where the samples of [`fingerprint_file`] of a file's first `consumed` bytes start.
fn sample_starts(consumed: u64) -> [u64; 3] {
    let mid = (consumed / 2).saturating_sub(SAMPLE / 2);
    [0, mid, consumed.saturating_sub(SAMPLE)]
}

/// The fingerprint of the samples taken at [`sample_starts`]`(consumed)`.
fn fingerprint_of<'a>(consumed: u64, samples: impl IntoIterator<Item = &'a [u8]>) -> Option<i64> {
    let mut h = Sha256::new();
    h.update(consumed.to_le_bytes());
    for sample in samples {
        h.update(sample);
    }
    let d = h.finalize();
    // Positive, so that no Delta reader stumbles on a negative transaction version.
    Some(i64::from_le_bytes(d[..8].try_into().ok()?) & i64::MAX)
}

/// What an earlier ingest read of a plain log, as [`fingerprint_file`] and the line count saw
/// it: the candidates [`read_before_in`] looks for at the start of a compressed file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadBefore {
    /// The bytes read.
    pub end: u64,
    /// Lines before where the next read starts.
    pub lines: u64,
    /// The last line had no line end and was not whole: the next read starts at its start.
    pub held_back: bool,
    /// The low bits (`mask`) of `fingerprint_file` at `end`.
    pub fingerprint: i64,
}

/// Where, in a compressed local file, what an earlier ingest read of a plain log ends, when the
/// file starts with exactly those bytes: a log rotated and then compressed (logrotate's
/// `compress`) holds the lines read from it before, then those appended after that read.
/// Returns the candidate that matches the most bytes, as a resume point counting decompressed
/// bytes. A candidate matches when the fingerprint of the file's first `end` bytes (its
/// first, middle and last 4 KiB, as `fingerprint_file` samples them) and the number of lines
/// in them are the recorded ones. Reads no further than the longest candidate.
pub fn read_before_in(
    path: &Path,
    candidates: &[ReadBefore],
    mask: i64,
) -> Option<(ReadBefore, Resume)> {
    let f = std::fs::File::open(path).ok()?;
    let identity = FileIdentity::of(&f.metadata().ok()?);
    let mut raw = BufReader::new(f);
    let magic = raw.fill_buf().ok()?;
    let mut reader: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(raw))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(raw).ok()?)
    } else {
        return None;
    };
    struct Probe {
        of: ReadBefore,
        /// (start, bytes) of the three samples.
        samples: [(u64, Vec<u8>); 3],
        /// Line ends before `end`, and where the last of them is.
        newlines: Option<(u64, Option<u64>)>,
    }
    let mut probes: Vec<Probe> = candidates
        .iter()
        .filter(|c| c.end > 0)
        .map(|c| Probe {
            of: *c,
            samples: sample_starts(c.end).map(|s| (s, Vec::new())),
            newlines: None,
        })
        .collect();
    let last = probes.iter().map(|p| p.of.end).max()?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut pos, mut newlines, mut last_newline) = (0u64, 0u64, None);
    while pos < last {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        };
        let chunk = &buf[..n];
        let chunk_end = pos + n as u64;
        for p in probes.iter_mut().filter(|p| p.of.end > pos) {
            let end = p.of.end;
            for (start, bytes) in p.samples.iter_mut() {
                let want_end = (*start + SAMPLE).min(end);
                let (from, to) = ((*start).max(pos), want_end.min(chunk_end));
                if from < to {
                    bytes.extend_from_slice(&chunk[(from - pos) as usize..(to - pos) as usize]);
                }
            }
            if end <= chunk_end {
                let within = &chunk[..(end - pos) as usize];
                let at = memchr::memrchr(b'\n', within).map(|i| pos + i as u64);
                let count = memchr::memchr_iter(b'\n', within).count() as u64;
                p.newlines = Some((newlines + count, at.or(last_newline)));
            }
        }
        newlines += memchr::memchr_iter(b'\n', chunk).count() as u64;
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            last_newline = Some(pos + i as u64);
        }
        pos = chunk_end;
    }
    probes
        .into_iter()
        .filter_map(|p| {
            let (count, last_newline) = p.newlines?;
            let end = p.of.end;
            if p.samples
                .iter()
                .any(|(start, bytes)| bytes.len() as u64 != SAMPLE.min(end - start))
            {
                return None;
            }
            let samples = p.samples.iter().map(|(_, b)| b.as_slice());
            if fingerprint_of(end, samples)? & mask != p.of.fingerprint {
                return None;
            }
            let last_byte = *p.samples[2].1.last()?;
            let (offset, lines, after_unterminated) = match p.of.held_back {
                // Read again from the start of the cut line.
                true => (last_newline? + 1, count, false),
                false => (
                    end,
                    count + u64::from(last_byte != b'\n'),
                    last_byte != b'\n',
                ),
            };
            (lines == p.of.lines).then_some((
                p.of,
                Resume {
                    offset,
                    next_line: lines + 1,
                    after_unterminated,
                    identity,
                    compressed: true,
                },
            ))
        })
        .max_by_key(|(c, _)| c.end)
}

impl InputFile {
    /// The file's name: the last part of its path or URL.
    pub fn name(&self) -> &str {
        self.display.rsplit('/').next().unwrap_or(&self.display)
    }

    /// The bytes this ingest will read of it, as far as known.
    pub fn to_read(&self) -> u64 {
        let from = self
            .resume
            .filter(|r| !r.compressed)
            .map_or(0, |r| r.offset);
        self.size.unwrap_or(0).saturating_sub(from)
    }
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

pub fn file_key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    crate::privacy::hex(&h.finalize()[..16])
}

/// The name a format is guessed from: without `.gz`/`.zst`.
fn format_of(name: &str, forced: InputFormat) -> (Format, u8) {
    let lower = name.to_ascii_lowercase();
    let base = ["gz", "gzip", "zst", "zstd"]
        .iter()
        .find_map(|ext| lower.strip_suffix(&format!(".{ext}")))
        .unwrap_or(&lower);
    let delimiter = if base.ends_with(".tsv") { b'\t' } else { b',' };
    let format = match forced {
        InputFormat::Ndjson => Format::Ndjson,
        InputFormat::Csv => Format::Csv,
        InputFormat::Auto if base.ends_with(".csv") || base.ends_with(".tsv") => Format::Csv,
        InputFormat::Auto => Format::Ndjson,
    };
    (format, delimiter)
}

fn skipped_name(name: &str) -> bool {
    name.starts_with('_') || name.starts_with('.')
}

/// Resolves every named input. Fails (usage error) on anything missing or unreadable, before any
/// data is written. An `inbox` (polled by `run`) may be an empty directory or prefix.
pub async fn discover(
    inputs: &[String],
    lake: &Lake,
    forced: InputFormat,
    inbox: bool,
) -> Result<Vec<InputFile>> {
    let mut out: Vec<InputFile> = Vec::new();
    for input in inputs {
        let input = if is_own_stdin(input)? {
            "-"
        } else {
            input.as_str()
        };
        if input == "-" {
            if out.iter().any(|f| matches!(f.location, Location::Stdin)) {
                return Err(Error::usage("stdin (-) is named twice"));
            }
            out.push(InputFile {
                display: "-".into(),
                location: Location::Stdin,
                size: None,
                version_tag: String::new(),
                key: None,
                format: match forced {
                    InputFormat::Csv => Format::Csv,
                    _ => Format::Ndjson,
                },
                delimiter: b',',
                modified: None,
                listed: false,
                resume: None,
            });
        } else if input.contains("://") {
            discover_object(input, lake, forced, inbox, &mut out).await?;
        } else {
            discover_local(input, forced, &mut out)?;
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|f| seen.insert(f.display.clone()));
    Ok(out)
}

/// Whether `input` names this process's stdin by a path (`/dev/stdin`, `/dev/fd/0`): then it is
/// read as `-`, identified by its content. A pipe has no size or time that tells one content from
/// another, so by its path every run would land it again. Any other path that is not a regular
/// file (a named pipe, a device) is a usage error saying so.
fn is_own_stdin(input: &str) -> Result<bool> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if input == "-" || input.contains("://") || has_glob(input) {
        return Ok(false);
    }
    let Ok(meta) = std::fs::metadata(input) else {
        return Ok(false);
    };
    let ty = meta.file_type();
    if !(ty.is_fifo() || ty.is_char_device() || ty.is_socket()) {
        return Ok(false);
    }
    use std::os::fd::AsFd;
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| std::fs::File::from(fd).metadata())
        .map(|m| (m.dev(), m.ino()))
        .ok();
    if stdin == Some((meta.dev(), meta.ino())) {
        return Ok(true);
    }
    Err(Error::usage(format!(
        "{input} is not a regular file (a pipe or a device): its content could not be told \
         from an earlier one's, so it would land again on every run; pipe it in as `-` \
         (`... | clicklake ingest -`), which is ingested once per content"
    )))
}

fn local_file(path: &Path, forced: InputFormat, listed: bool) -> Result<InputFile> {
    let abs = std::path::absolute(path)
        .map_err(|e| Error::usage(format!("cannot read {}: {e}", path.display())))?;
    let meta = std::fs::metadata(&abs)
        .map_err(|e| Error::usage(format!("cannot read {}: {e}", path.display())))?;
    // Opening proves readability now rather than halfway through a run.
    std::fs::File::open(&abs)
        .map_err(|e| Error::usage(format!("cannot read {}: {e}", path.display())))?;
    let modified = meta.modified().ok();
    let mtime = modified
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos().to_string())
        .unwrap_or_default();
    let display = abs.display().to_string();
    let size = meta.len();
    let (format, delimiter) = format_of(&display, forced);
    Ok(InputFile {
        key: Some(file_key(&["local", &display, &size.to_string(), &mtime])),
        display,
        location: Location::Local(abs),
        size: Some(size),
        version_tag: mtime,
        format,
        delimiter,
        modified,
        listed,
        resume: None,
    })
}

fn discover_local(input: &str, forced: InputFormat, out: &mut Vec<InputFile>) -> Result<()> {
    if has_glob(input) {
        let paths =
            glob::glob(input).map_err(|e| Error::usage(format!("bad glob {input:?}: {e}")))?;
        let mut found: Vec<PathBuf> = paths
            .filter_map(|p| p.ok())
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        if found.is_empty() {
            return Err(Error::usage(format!("{input}: no file matches")));
        }
        for p in found {
            out.push(local_file(&p, forced, true)?);
        }
        return Ok(());
    }
    let path = Path::new(input);
    let meta =
        std::fs::metadata(path).map_err(|e| Error::usage(format!("cannot read {input}: {e}")))?;
    if meta.is_dir() {
        let mut files = Vec::new();
        walk(path, &mut files).map_err(|e| Error::usage(format!("cannot read {input}: {e}")))?;
        files.sort();
        for p in files {
            out.push(local_file(&p, forced, true)?);
        }
    } else {
        out.push(local_file(path, forced, false)?);
    }
    Ok(())
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if skipped_name(&name.to_string_lossy()) {
            continue;
        }
        let ty = entry.file_type()?;
        if ty.is_dir() {
            walk(&entry.path(), out)?;
        } else if ty.is_file() || ty.is_symlink() {
            out.push(entry.path());
        }
    }
    Ok(())
}

async fn discover_object(
    input: &str,
    lake: &Lake,
    forced: InputFormat,
    inbox: bool,
    out: &mut Vec<InputFile>,
) -> Result<()> {
    let url =
        Url::parse(input).map_err(|e| Error::usage(format!("{input}: not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "s3" | "s3a" | "file") {
        return Err(Error::usage(format!(
            "{input}: unsupported scheme {}:// (use a path, file:// or s3://)",
            url.scheme()
        )));
    }
    if url.scheme() == "file" {
        let path = url
            .to_file_path()
            .map_err(|_| Error::usage(format!("{input}: not a local path")))?;
        return discover_local(&path.to_string_lossy(), forced, out);
    }
    let (store, path) = lake.store_for(&url)?;
    let bucket_url = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    let mut push = |meta: object_store::ObjectMeta, listed: bool| {
        let display = format!("{bucket_url}/{}", meta.location);
        let tag = meta
            .e_tag
            .clone()
            .unwrap_or_else(|| meta.last_modified.timestamp_micros().to_string());
        let (format, delimiter) = format_of(&display, forced);
        out.push(InputFile {
            key: Some(file_key(&[
                "object",
                &display,
                &meta.size.to_string(),
                &tag,
            ])),
            display,
            location: Location::Object {
                store: store.clone(),
                path: meta.location,
            },
            size: Some(meta.size),
            version_tag: tag,
            format,
            delimiter,
            modified: Some(meta.last_modified.into()),
            listed,
            resume: None,
        });
    };
    let key = path.as_ref();
    if has_glob(key) {
        let literal: String = key
            .chars()
            .take_while(|c| !matches!(c, '*' | '?' | '['))
            .collect();
        let prefix = literal.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        let pattern = glob::Pattern::new(key)
            .map_err(|e| Error::usage(format!("bad glob {input:?}: {e}")))?;
        let mut metas = list_all(&store, prefix, input).await?;
        metas.retain(|m| pattern.matches(m.location.as_ref()));
        if metas.is_empty() {
            return Err(Error::usage(format!("{input}: no object matches")));
        }
        with_etags(&store, &mut metas, input).await?;
        metas.into_iter().for_each(|m| push(m, true));
        return Ok(());
    }
    let as_prefix = |metas: Vec<object_store::ObjectMeta>| -> Vec<object_store::ObjectMeta> {
        metas
            .into_iter()
            .filter(|m| m.location.parts().all(|p| !skipped_name(p.as_ref())))
            .collect()
    };
    // A trailing slash names a prefix; otherwise try the object first, then the prefix.
    let head_error = if input.ends_with('/') || key.is_empty() {
        None
    } else {
        match store.head(&path).await {
            Ok(meta) => {
                push(meta, false);
                return Ok(());
            }
            Err(e) => Some(e),
        }
    };
    let mut metas = as_prefix(list_all(&store, key, input).await?);
    with_etags(&store, &mut metas, input).await?;
    if metas.is_empty() && inbox {
        return Ok(());
    }
    if metas.is_empty() {
        return Err(Error::usage(match head_error {
            Some(object_store::Error::NotFound { .. }) | None => {
                format!("cannot read {input}: no such object or prefix")
            }
            Some(e) => format!("cannot read {input}: {e}"),
        }));
    }
    metas.into_iter().for_each(|m| push(m, true));
    Ok(())
}

/// Fills in the ETag of listed objects whose listing had none (some S3-compatible stores omit
/// it), from a HEAD of each. A file's identity is its URL, size and ETag: without this, the same
/// object found by listing (identified by its last-modified time) and named on its own (by its
/// ETag) would be two files, and land twice. S3, MinIO and the other stores that list ETags cost
/// nothing here.
async fn with_etags(
    store: &Arc<dyn ObjectStore>,
    metas: &mut Vec<object_store::ObjectMeta>,
    input: &str,
) -> Result<()> {
    let missing: Vec<usize> = (0..metas.len())
        .filter(|&i| metas[i].e_tag.is_none())
        .collect();
    let heads: Vec<(usize, object_store::Result<object_store::ObjectMeta>)> =
        futures::stream::iter(missing)
            .map(|i| {
                let path = metas[i].location.clone();
                async move { (i, store.head(&path).await) }
            })
            .buffer_unordered(16)
            .collect()
            .await;
    let mut gone = Vec::new();
    for (i, head) in heads {
        match head {
            Ok(head) => metas[i].e_tag = head.e_tag,
            // Deleted since the listing: nothing to read.
            Err(object_store::Error::NotFound { .. }) => gone.push(metas[i].location.clone()),
            Err(e) => return Err(Error::runtime(format!("cannot read {input}: {e}"))),
        }
    }
    metas.retain(|m| !gone.contains(&m.location));
    Ok(())
}

async fn list_all(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    input: &str,
) -> Result<Vec<object_store::ObjectMeta>> {
    let prefix = ObjectPath::from(prefix);
    let mut metas: Vec<object_store::ObjectMeta> = Vec::new();
    let mut listing = store.list(Some(&prefix));
    while let Some(m) = listing.next().await {
        metas.push(m.map_err(|e| Error::usage(format!("cannot list {input}: {e}")))?);
    }
    metas.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(metas)
}

/// Counts the bytes read from the underlying source (before decompression).
pub struct Counting<R> {
    inner: R,
    pub count: Arc<AtomicU64>,
    hasher: Option<Sha256>,
    /// Set when reading the file's own bytes failed (a disk or network error), as opposed to
    /// a decompressor failing on bytes that were read.
    failed: Arc<std::sync::atomic::AtomicBool>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|_| {
            self.failed.store(true, Ordering::Relaxed);
        })?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Reads an object store stream from a plain (non-async) thread.
struct ObjectReader {
    rt: tokio::runtime::Handle,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    buf: Bytes,
}

impl Read for ObjectReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() {
            match self.rt.block_on(self.stream.next()) {
                Some(Ok(b)) => self.buf = b,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf = self.buf.slice(n..);
        Ok(n)
    }
}

/// An opened input: decompressed bytes, plus the shared counter of raw bytes read and, for
/// stdin, the content hash once fully read.
pub struct Opened {
    pub reader: Box<dyn BufRead + Send>,
    /// A local file's handle (shared with the reader; read only at offsets): the file that is
    /// read, whatever is renamed in its place meanwhile.
    pub local: Option<std::fs::File>,
    pub raw_bytes: Arc<AtomicU64>,
    pub hash: Option<Arc<std::sync::Mutex<Option<String>>>>,
    /// `gzip` or `zstd` when the file is compressed.
    pub compression: Option<&'static str>,
    /// Reading the file's bytes failed (see `Counting::failed`).
    pub read_failed: Arc<std::sync::atomic::AtomicBool>,
    /// The file is in a format clicklake does not read, known by its first bytes (Parquet,
    /// bzip2…): what it is.
    pub unsupported: Option<&'static str>,
}

/// Opens an input on the calling (non-async) thread; `None` when the file was deleted since it
/// was found (a producer's cleanup, another consumer): there is nothing left to read.
pub fn open(file: &InputFile, rt: &tokio::runtime::Handle) -> Result<Option<Opened>> {
    let count = Arc::new(AtomicU64::new(0));
    let failed =
        |e: &dyn std::fmt::Display| Error::runtime(format!("cannot read {}: {e}", file.display));
    let mut local = None;
    let source: Box<dyn Read + Send> = match &file.location {
        Location::Local(p) => match std::fs::File::open(p) {
            Ok(mut f) => {
                if let Some(r) = file.resume {
                    use std::io::{Seek, SeekFrom};
                    let meta = f.metadata().map_err(|e| failed(&e))?;
                    if FileIdentity::of(&meta) != r.identity {
                        // Renamed away (rotated) since the plan: as if gone; the next run
                        // reads both files as they are then.
                        return Ok(None);
                    }
                    if !r.compressed {
                        f.seek(SeekFrom::Start(r.offset)).map_err(|e| failed(&e))?;
                    }
                }
                local = f.try_clone().ok();
                Box::new(f)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(failed(&e)),
        },
        Location::Object { store, path } => {
            let get = match rt.block_on(store.get(path)) {
                Ok(get) => get,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(failed(&e)),
            };
            Box::new(ObjectReader {
                rt: rt.clone(),
                stream: get.into_stream(),
                buf: Bytes::new(),
            })
        }
        Location::Stdin => Box::new(std::io::stdin()),
    };
    let hashing = matches!(file.location, Location::Stdin);
    let read_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counting = Counting {
        inner: source,
        count: count.clone(),
        hasher: hashing.then(Sha256::new),
        failed: read_failed.clone(),
    };
    let hash_slot = hashing.then(|| Arc::new(std::sync::Mutex::new(None)));
    let counting: Box<dyn Read + Send> = match &hash_slot {
        Some(slot) => Box::new(HashOnEof {
            inner: counting,
            slot: slot.clone(),
        }),
        None => Box::new(counting),
    };
    let mut buffered = BufReader::with_capacity(256 * 1024, counting);
    let magic = buffered
        .fill_buf()
        .map_err(|e| Error::runtime(format!("cannot read {}: {e}", file.display)))?;
    // Appended bytes are plain text like the rest of the file, whatever they start with.
    let resumed = file.resume.is_some_and(|r| !r.compressed);
    let unsupported = unsupported_format(magic).filter(|_| !resumed);
    let (reader, compression): (Box<dyn BufRead + Send>, _) = if resumed {
        (Box::new(buffered), None)
    } else if magic.starts_with(&[0x1f, 0x8b]) {
        let dec = WholeGzHeader(flate2::bufread::MultiGzDecoder::new(buffered));
        (
            Box::new(BufReader::with_capacity(1 << 20, dec)),
            Some("gzip"),
        )
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let dec = zstd::stream::read::Decoder::with_buffer(buffered)
            .map_err(|e| Error::runtime(format!("cannot read {}: {e}", file.display)))?;
        // zstd's reader fills the buffer it is given in one call and, when the stream breaks
        // midway, returns the error without what it decoded before: one block (128 KiB) at a
        // time, a truncated file loses at most its last block.
        (
            Box::new(BufReader::with_capacity(128 << 10, dec)),
            Some("zstd"),
        )
    } else {
        (Box::new(buffered), None)
    };
    let mut reader = reader;
    if let Some(r) = file.resume.filter(|r| r.compressed) {
        // The lines read before, from the log this file is a compressed copy of.
        let skipped = std::io::copy(&mut (&mut reader).take(r.offset), &mut std::io::sink())
            .map_err(|e| failed(&e))?;
        if skipped != r.offset {
            return Err(failed(
                &"it holds less than when this ingest planned to read it",
            ));
        }
    }
    Ok(Some(Opened {
        local,
        unsupported,
        reader,
        raw_bytes: count,
        hash: hash_slot,
        compression,
        read_failed,
    }))
}

/// A gzip stream that must not end inside its header. flate2 reads a stream cut there (a file
/// caught after its first bytes) as empty: its lines were lost without a quarantine row. Such an
/// end is an error, which the reader quarantines as a broken stream like any other.
struct WholeGzHeader<R>(flate2::bufread::MultiGzDecoder<R>);

impl<R: BufRead> Read for WholeGzHeader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        if n == 0 && !buf.is_empty() && self.0.header().is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file ends inside its gzip header",
            ));
        }
        Ok(n)
    }
}

/// Formats a file can be in that clicklake does not read, by their first bytes: read as lines,
/// each would be quarantined as broken JSON, thousands of rows saying nothing useful.
fn unsupported_format(magic: &[u8]) -> Option<&'static str> {
    // Only magics no text line starts with (binary bytes, or text too odd to be a header).
    const KNOWN: [(&[u8], &str); 5] = [
        (b"PAR1", "a Parquet file"),
        (b"Obj\x01", "an Avro file"),
        (b"ARROW1\x00", "an Arrow IPC file"),
        (b"PK\x03\x04", "a zip archive"),
        (b"\xfd7zXZ\x00", "xz-compressed"),
    ];
    // bzip2: "BZh", the block size digit, then the block magic (the digits of pi).
    if magic.len() >= 10 && magic.starts_with(b"BZh") && &magic[4..10] == b"1AY&SY" {
        return Some("bzip2-compressed");
    }
    KNOWN
        .iter()
        .find(|(m, _)| magic.starts_with(m))
        .map(|(_, what)| *what)
}

/// Publishes the content hash of a fully read stream.
struct HashOnEof<R: Read> {
    inner: Counting<R>,
    slot: Arc<std::sync::Mutex<Option<String>>>,
}

impl<R: Read> Read for HashOnEof<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if let Some(h) = self.inner.hasher.take() {
                *self.slot.lock().expect("hash slot") =
                    Some(crate::privacy::hex(&h.finalize()[..16]));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an ingest records after reading `bytes` of a plain file (held back: its last line
    /// is cut, and the next read starts at that line).
    fn read_of(bytes: &[u8], lines: u64, held_back: bool) -> ReadBefore {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        std::fs::write(&path, bytes).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        ReadBefore {
            end: bytes.len() as u64,
            lines,
            held_back,
            fingerprint: fingerprint_file(&f, bytes.len() as u64).unwrap() & 0xff_ffff,
        }
    }

    fn compressed(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        use std::io::Write;
        let path = dir.join(name);
        let f = std::fs::File::create(&path).unwrap();
        if name.ends_with(".zst") {
            let mut z = zstd::stream::write::Encoder::new(f, 3).unwrap();
            z.write_all(bytes).unwrap();
            z.finish().unwrap();
        } else {
            let mut z = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            z.write_all(bytes).unwrap();
            z.finish().unwrap();
        }
        path
    }

    #[test]
    fn a_compressed_copy_is_read_on_from_where_its_log_was_read() {
        let dir = tempfile::tempdir().unwrap();
        // Longer than the samples, so that first, middle and last differ.
        let head: String = (0..400).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        let whole = read_of(head.as_bytes(), 400, false);
        let copy = format!("{head}{{\"n\":400}}\n");
        for name in ["app.log.1.gz", "app.log.1.zst"] {
            let path = compressed(dir.path(), name, copy.as_bytes());
            let (of, r) = read_before_in(&path, &[whole], 0xff_ffff).unwrap();
            assert_eq!(of, whole);
            assert_eq!((r.offset, r.next_line), (head.len() as u64, 401), "{name}");
            assert!(r.compressed && !r.after_unterminated);
        }
        // The longest match wins; a read of other bytes, or of as many bytes with another
        // line count, is no match.
        let k = head.match_indices('\n').nth(19).unwrap().0 + 1;
        let shorter = read_of(&head.as_bytes()[..k], 20, false);
        let path = compressed(dir.path(), "b.gz", copy.as_bytes());
        let (_, r) = read_before_in(&path, &[shorter], 0xff_ffff).unwrap();
        assert_eq!((r.offset, r.next_line), (k as u64, 21));
        let other = read_of(&copy.as_bytes()[1..=head.len()], 400, false);
        let miscounted = ReadBefore {
            lines: 399,
            ..whole
        };
        let found = read_before_in(&path, &[shorter, other, miscounted, whole], 0xff_ffff);
        assert_eq!(found.map(|(of, _)| of), Some(whole));
        assert!(read_before_in(&path, &[other, miscounted], 0xff_ffff).is_none());
        // A read that held back a cut last line: read again from that line's start.
        let cut = format!("{head}{{\"n\":4");
        let held = read_of(cut.as_bytes(), 400, true);
        let path = compressed(dir.path(), "c.gz", format!("{cut}00}}\n").as_bytes());
        let (_, r) = read_before_in(&path, &[held], 0xff_ffff).unwrap();
        assert_eq!((r.offset, r.next_line), (head.len() as u64, 401));
        // A whole last line without a line end: the line end comes first in what follows.
        let open = format!("{head}{{\"n\":400}}");
        let unterminated = read_of(open.as_bytes(), 401, false);
        let path = compressed(
            dir.path(),
            "d.gz",
            format!("{open}\n{{\"n\":401}}\n").as_bytes(),
        );
        let (_, r) = read_before_in(&path, &[unterminated], 0xff_ffff).unwrap();
        assert_eq!((r.offset, r.next_line), (open.len() as u64, 402));
        assert!(r.after_unterminated);
        // A plain file is not a compressed copy.
        let plain = dir.path().join("plain.log");
        std::fs::write(&plain, &copy).unwrap();
        assert!(read_before_in(&plain, &[whole], 0xff_ffff).is_none());
    }
}
