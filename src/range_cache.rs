//! A read cache of byte ranges of Parquet data files, in front of a remote object store.
//!
//! One command scans the same files several times: an incremental clean reads `events` twice and
//! then rewrites the files it supersedes; a build runs a dozen models over `events`. Each scan of
//! a file costs several requests (page index, filter columns, the rest), and on S3 every request
//! is a round trip of tens of milliseconds whatever its size. Delta data files never change once
//! written (every write is a new, uniquely named file), so a range read once can be served again
//! from memory for the rest of the process. A data file of at most 8 MiB is read whole on its
//! first read (a scan starts at the footer, at the end): one request instead of one each for the
//! footer, the page index and the column chunks, and every later scan of it is served from here.
//!
//! Only plain reads of data files (byte ranges) and of the log's commit files (whole: a command
//! opens a table, and reads its new commits, several times) are cached; everything else
//! (`_last_checkpoint`, writes, listings, conditional requests) goes straight to the store. The cache holds
//! at most `capacity` bytes and forgets the oldest ranges first. It is used for remote lakes only:
//! a local file system is served from the page cache already.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    Attributes, CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult,
    MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, RenameOptions, Result,
};

/// Data files up to this size are read whole on their first read (see `get_opts`).
const WHOLE_FILE_MAX: u64 = 8 << 20;

pub struct RangeCache {
    inner: Arc<dyn ObjectStore>,
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    ranges: HashMap<Path, Vec<(Range<u64>, Bytes)>>,
    /// What a ranged GET of the file answers besides its bytes.
    meta: HashMap<Path, (ObjectMeta, Attributes)>,
    /// Insertion order, for eviction.
    order: VecDeque<(Path, Range<u64>)>,
    bytes: usize,
    hits: u64,
    misses: u64,
}

impl RangeCache {
    pub fn new(inner: Arc<dyn ObjectStore>, capacity: usize) -> Self {
        RangeCache {
            inner,
            capacity,
            state: Mutex::new(State::default()),
        }
    }

    /// (requests answered from memory, requests sent), for `-vv`.
    pub fn stats(&self) -> (u64, u64) {
        let s = self.state.lock().expect("range cache lock");
        (s.hits, s.misses)
    }

    /// Data files and the log's commit files (`_delta_log/<20 digits>.json`, written once with a
    /// conditional put) never change; `_last_checkpoint` and the rest of the log may.
    fn cacheable(location: &Path) -> bool {
        let p = location.as_ref();
        match p.rsplit_once('/') {
            Some((dir, name)) if dir.ends_with("_delta_log") => {
                name.len() == 25
                    && name.ends_with(".json")
                    && name[..20].bytes().all(|b| b.is_ascii_digit())
            }
            _ => p.ends_with(".parquet") && !p.contains("_delta_log"),
        }
    }

    /// The bytes of `range` when a cached range holds all of it.
    fn lookup(&self, location: &Path, range: &Range<u64>) -> Option<Bytes> {
        let mut s = self.state.lock().expect("range cache lock");
        let found = s.ranges.get(location).and_then(|held| {
            held.iter()
                .find(|(r, _)| r.start <= range.start && range.end <= r.end)
                .map(|(r, b)| {
                    b.slice((range.start - r.start) as usize..(range.end - r.start) as usize)
                })
        });
        match found {
            Some(_) => s.hits += 1,
            None => s.misses += 1,
        }
        found
    }

    fn insert(&self, location: &Path, range: Range<u64>, bytes: Bytes) {
        if bytes.len() > self.capacity || bytes.len() as u64 != range.end - range.start {
            return;
        }
        let mut s = self.state.lock().expect("range cache lock");
        s.bytes += bytes.len();
        s.order.push_back((location.clone(), range.clone()));
        s.ranges
            .entry(location.clone())
            .or_default()
            .push((range, bytes));
        while s.bytes > self.capacity {
            let Some((path, range)) = s.order.pop_front() else {
                break;
            };
            let mut freed = 0;
            if let Some(held) = s.ranges.get_mut(&path) {
                if let Some(i) = held.iter().position(|(r, _)| *r == range) {
                    freed = held.swap_remove(i).1.len();
                }
                if held.is_empty() {
                    s.ranges.remove(&path);
                    s.meta.remove(&path);
                }
            }
            s.bytes -= freed;
        }
    }
}

impl fmt::Display for RangeCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RangeCache({})", self.inner)
    }
}

impl fmt::Debug for RangeCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RangeCache({:?})", self.inner)
    }
}

fn one_chunk(bytes: Bytes) -> GetResultPayload {
    GetResultPayload::Stream(futures::stream::once(async move { Ok(bytes) }).boxed())
}

#[async_trait]
impl ObjectStore for RangeCache {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let plain = options.if_match.is_none()
            && options.if_none_match.is_none()
            && options.if_modified_since.is_none()
            && options.if_unmodified_since.is_none()
            && options.version.is_none()
            && !options.head;
        if !plain || !Self::cacheable(location) {
            return self.inner.get_opts(location, options).await;
        }
        let known = self
            .state
            .lock()
            .expect("range cache lock")
            .meta
            .get(location)
            .cloned();
        // A ranged read, or a whole object (a commit file) whose size a first read told.
        let wanted = match (&options.range, &known) {
            (Some(GetRange::Bounded(r)), _) => Some(r.clone()),
            (None, Some((meta, _))) => Some(0..meta.size),
            (None, None) => None,
            (Some(_), _) => return self.inner.get_opts(location, options).await,
        };
        let first_read = known.is_none();
        match (known, wanted.clone()) {
            (Some((meta, attributes)), Some(range)) => {
                if let Some(bytes) = self.lookup(location, &range) {
                    return Ok(GetResult {
                        payload: one_chunk(bytes),
                        meta,
                        range,
                        attributes,
                    });
                }
            }
            // The first read of the file.
            _ => self.state.lock().expect("range cache lock").misses += 1,
        }
        let mut options = options;
        if let (true, Some(range)) = (first_read, &wanted) {
            // A scan's first read of a Parquet file is its footer, at the very end: when that end
            // is near, the whole file comes in this one request instead of the three to five that
            // footer, page index and column chunks would each cost.
            if range.end <= WHOLE_FILE_MAX && location.as_ref().ends_with(".parquet") {
                options.range = Some(GetRange::Bounded(0..range.end));
            }
        }
        let got = self.inner.get_opts(location, options).await?;
        let (meta, attributes, range) =
            (got.meta.clone(), got.attributes.clone(), got.range.clone());
        let bytes = got.bytes().await?;
        self.state
            .lock()
            .expect("range cache lock")
            .meta
            .insert(location.clone(), (meta.clone(), attributes.clone()));
        self.insert(location, range.clone(), bytes.clone());
        // What was asked for, when more was read.
        let (bytes, range) = match wanted {
            Some(w) if w != range && range.start <= w.start && w.end <= range.end => (
                bytes.slice((w.start - range.start) as usize..(w.end - range.start) as usize),
                w,
            ),
            _ => (bytes, range),
        };
        Ok(GetResult {
            payload: one_chunk(bytes),
            meta,
            range,
            attributes,
        })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        if !Self::cacheable(location) {
            return self.inner.get_ranges(location, ranges).await;
        }
        let mut out: Vec<Option<Bytes>> = ranges.iter().map(|r| self.lookup(location, r)).collect();
        let missing: Vec<Range<u64>> = ranges
            .iter()
            .zip(&out)
            .filter(|(_, b)| b.is_none())
            .map(|(r, _)| r.clone())
            .collect();
        if !missing.is_empty() {
            let fetched = self.inner.get_ranges(location, &missing).await?;
            let mut fetched = missing.into_iter().zip(fetched);
            for slot in out.iter_mut().filter(|b| b.is_none()) {
                if let Some((r, b)) = fetched.next() {
                    self.insert(location, r, b.clone());
                    *slot = Some(b);
                }
            }
        }
        Ok(out.into_iter().map(|b| b.unwrap_or_default()).collect())
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn serves_data_file_ranges_again_and_passes_the_log_through() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let data = Path::from("t/part-0.parquet");
        let log = Path::from("t/_delta_log/_last_checkpoint");
        let commit = Path::from("t/_delta_log/00000000000000000000.json");
        inner
            .put(&commit, Bytes::from_static(b"{\"add\"}").into())
            .await
            .unwrap();
        inner
            .put(&data, Bytes::from_static(b"0123456789").into())
            .await
            .unwrap();
        inner
            .put(&log, Bytes::from_static(b"{}").into())
            .await
            .unwrap();
        let cache = RangeCache::new(inner.clone(), 8);

        // The first read of a small Parquet file reads it from its start: what comes before the
        // range (the column chunks before a footer) is then answered from memory too.
        assert_eq!(cache.get_range(&data, 4..6).await.unwrap(), "45");
        assert_eq!(cache.stats(), (0, 1));
        assert_eq!(cache.get_range(&data, 0..2).await.unwrap(), "01");
        // A range inside one already read is answered from memory, by either read path.
        assert_eq!(cache.get_range(&data, 3..5).await.unwrap(), "34");
        assert_eq!(
            cache.get_ranges(&data, &[2..3, 7..9]).await.unwrap(),
            vec![Bytes::from("2"), Bytes::from("78")]
        );
        assert_eq!(cache.stats(), (3, 2));
        // Over capacity (6 + 2 + 3 bytes > 8): the oldest range goes first.
        assert_eq!(cache.get_range(&data, 6..9).await.unwrap(), "678");
        assert_eq!(cache.get_range(&data, 3..5).await.unwrap(), "34");
        assert_eq!(cache.stats(), (3, 4));

        // The rest of the log is never cached: a rewritten object is read anew.
        assert_eq!(cache.get_range(&log, 0..2).await.unwrap(), "{}");
        inner
            .put(&log, Bytes::from_static(b"[]").into())
            .await
            .unwrap();
        assert_eq!(cache.get_range(&log, 0..2).await.unwrap(), "[]");
        assert_eq!(cache.stats(), (3, 4));

        // A commit file is read whole once, then from memory.
        let first = cache.get(&commit).await.unwrap();
        assert_eq!(first.range, 0..7);
        assert_eq!(first.bytes().await.unwrap(), "{\"add\"}");
        let again = cache.get(&commit).await.unwrap();
        assert_eq!(again.meta.size, 7);
        assert_eq!(again.bytes().await.unwrap(), "{\"add\"}");
        assert_eq!(cache.stats(), (4, 5));
    }
}
