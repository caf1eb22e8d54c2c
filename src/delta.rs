//! Writing to Delta tables: data files first, then one explicit commit that makes them visible.
//!
//! ```text
//!   write Parquet files ──▶ (invisible: no log entry names them)
//!   commit  _delta_log/000…N.json  (put-if-absent: exactly one writer wins version N)
//!           adds + txn markers + commitInfo  ──▶ visible, atomically
//! ```
//!
//! A process killed before the commit leaves only unreferenced files (removed by vacuum); one
//! killed after it has finished. `txn` markers (Delta "application transactions") recorded in
//! the same commit as the rows are how ingest knows, exactly, which source files a table holds.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, Transaction};
use deltalake::parquet::basic::{Compression, Encoding, ZstdLevel};
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::DeltaTable;
use futures::{StreamExt, TryStreamExt};

use crate::error::{Error, Result};

mod spread;
mod waiting;
pub use spread::SpreadSink;
use waiting::{PartitionKey, Waiting};

/// Columns whose values repeat too little for a dictionary to pay: unique per row, or shared by
/// a handful of rows (a session's, a visitor's) in a file of hundreds of thousands. Trying a
/// dictionary costs a hash per value until it overflows, and the plain pages come out smaller.
/// (`properties` and `page_url` keep theirs: a site has a few hundred pages and a tracker a few
/// payload shapes, so at 1M events a dictionary took their 190 MB of plain values to a few MB
/// before zstd, and where values are all different the dictionary overflows and falls back to
/// plain pages after its first megabyte.)
const NO_DICTIONARY: &[&str] = &[
    "event_id",
    "event_time",
    "received_at",
    "line_number",
    "raw",
    "detail",
    "session_key",
    "session_id",
    "anonymous_id",
    "user_id",
    "stitched_user_id",
    "email",
    "ip",
];

/// Timestamps and line numbers, which climb through a file: stored as bit-packed differences
/// (`DELTA_BINARY_PACKED`) instead of 8 bytes a value, so zstd has less to compress and a reader
/// less to decompress.
const DELTA_ENCODED: &[&str] = &["event_time", "received_at", "line_number"];

/// String columns whose minimum and maximum per file or page can never skip anything: random
/// identifiers, hashes and free text. Not computing them saves two comparisons per value.
const NO_STATISTICS: &[&str] = &[
    "event_id",
    "session_key",
    "session_id",
    "properties",
    "page_url",
    "referrer",
    "email",
    "ip",
    "raw",
    "detail",
];

/// Columns looked up by a few values (a visitor's events, by an analyst or by an incremental
/// clean), with a Parquet bloom filter per row group: a reader skips every row group whose
/// filter rules all of the values out, where min/max statistics of random identifiers can skip
/// nothing.
pub const BLOOM_FILTERED: &[&str] = &["anonymous_id"];
/// The bloom filters' false-positive rate.
const BLOOM_FPP: f64 = 0.01;

/// Parquet settings for every file clicklake writes: zstd, large row groups, statistics on
/// (except where they cannot prune).
/// Every this many commits a table's log gets a checkpoint (Delta's `checkpointInterval`; Spark's
/// default). Opening a table reads the last checkpoint and replays the commits after it, and a
/// cron tick opens every table a few times: replaying up to 49 commits made a tick on a small
/// lake twice as slow just before a checkpoint as just after one. With `run` compacting, a
/// checkpoint lists few files and is cheap to write.
pub const CHECKPOINT_INTERVAL: &str = "10";

pub fn writer_properties(zstd_level: i32, row_group_rows: usize) -> Result<WriterProperties> {
    let level = ZstdLevel::try_new(zstd_level)
        .map_err(|e| Error::config(format!("zstd level {zstd_level}: {e}")))?;
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(row_group_rows))
        .set_statistics_enabled(EnabledStatistics::Page);
    for column in NO_DICTIONARY {
        builder = builder.set_column_dictionary_enabled((*column).into(), false);
    }
    for column in DELTA_ENCODED {
        builder = builder.set_column_encoding((*column).into(), Encoding::DELTA_BINARY_PACKED);
    }
    for column in NO_STATISTICS {
        builder = builder.set_column_statistics_enabled((*column).into(), EnabledStatistics::None);
    }
    for column in BLOOM_FILTERED {
        // Sized for a visitor every 8 rows (they average 17 events), then folded down to what
        // it holds: each open partition file keeps one in memory until it closes.
        let ndv = (row_group_rows / 8).max(1024) as u64;
        builder = builder
            .set_column_bloom_filter_enabled((*column).into(), true)
            .set_column_bloom_filter_max_ndv((*column).into(), ndv)
            .set_column_bloom_filter_fpp((*column).into(), BLOOM_FPP);
    }
    Ok(builder.build())
}

/// A streaming writer for `table`, rolling files at `target_file_size`.
pub fn writer(
    table: &DeltaTable,
    props: WriterProperties,
    target_file_size: u64,
) -> Result<RecordBatchWriter> {
    Ok(RecordBatchWriter::for_table(table)?
        .with_writer_properties(props)
        .with_target_file_size(target_file_size))
}

/// Writes `batch` (not empty), whose rows the caller has found to be all of one partition of a
/// table partitioned by `partition_columns`, without the split by partition values that
/// [`DeltaWriter::write`] does (a hash per row, then a copy of every column).
async fn write_one_partition(
    writer: &mut RecordBatchWriter,
    table: &str,
    partition_columns: &[String],
    batch: arrow::array::RecordBatch,
) -> Result<()> {
    use deltalake::kernel::scalars::ScalarExt;
    let mut values = Vec::with_capacity(partition_columns.len());
    for name in partition_columns {
        let column = batch.column_by_name(name).ok_or_else(|| {
            Error::runtime(format!("a batch to write has no partition column {name}"))
        })?;
        let value = ScalarExt::from_array(column.as_ref(), 0).ok_or_else(|| {
            Error::runtime(format!("partition column {name}: unsupported value type"))
        })?;
        values.push((name.clone(), value));
    }
    let values = values.into_iter().collect();
    writer
        .write_partition(batch, &values, deltalake::writer::WriteMode::Default)
        .await
        .map_err(|e| write_failed(table, e))?;
    Ok(())
}

/// Whether every row of `batch` (not empty) has the first row's values of `partition_columns`
/// (nulls equal), compared a column at a time.
fn is_one_partition(
    batch: &arrow::array::RecordBatch,
    partition_columns: &[String],
) -> Result<bool> {
    for name in partition_columns {
        let column = batch.column_by_name(name).ok_or_else(|| {
            Error::runtime(format!("a batch to write has no partition column {name}"))
        })?;
        let first = arrow::array::Scalar::new(column.slice(0, 1));
        let same = arrow::compute::kernels::cmp::not_distinct(column, &first)?;
        if same.true_count() != batch.num_rows() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes each of `parts`, the rows of one partition each, to a file of its own through
/// `writer`, closing each file before the next opens; returns the writer and the files.
async fn one_file_each(
    mut writer: RecordBatchWriter,
    table: &str,
    partition_columns: &[String],
    parts: Vec<arrow::array::RecordBatch>,
) -> Result<(RecordBatchWriter, Vec<Add>)> {
    let mut adds = Vec::with_capacity(parts.len());
    for rows in parts {
        if rows.num_rows() == 0 {
            continue;
        }
        write_one_partition(&mut writer, table, partition_columns, rows).await?;
        close(&mut writer, table, &mut adds).await?;
    }
    Ok((writer, adds))
}

/// A table's application transaction (`txn`) markers, to look many up. The kernel's look-up
/// replays the log since the last checkpoint, and the checkpoint itself when the id is not in
/// the commits after it (a request per commit on S3), for every id; ingest looks up several per
/// new file. This reads the checkpoint's `txn` column and the commits after it once. A log laid
/// out otherwise (a multi-part or V2 checkpoint, one newer than the version read, a commit
/// missing) falls back to one look-up per id.
pub struct Markers<'a> {
    table: &'a DeltaTable,
    index: Option<HashMap<String, i64>>,
}

impl<'a> Markers<'a> {
    pub async fn load(table: &'a DeltaTable) -> Result<Markers<'a>> {
        let index = match table.version() {
            Some(version) => txn_index(table, version).await?,
            None => Some(HashMap::new()),
        };
        Ok(Markers { table, index })
    }

    /// Markers not read, for when there is nothing to look up: every look-up finds none.
    pub fn none(table: &'a DeltaTable) -> Markers<'a> {
        Markers {
            table,
            index: Some(HashMap::new()),
        }
    }

    /// The version recorded for `app_id` at the version the table was read at, if any.
    pub async fn get(&self, app_id: &str) -> Result<Option<i64>> {
        match &self.index {
            Some(index) => Ok(index.get(app_id).copied()),
            None => txn_version(self.table, app_id).await,
        }
    }

    /// Every marker whose id starts with `prefix`, when the markers were read in one pass
    /// (none otherwise).
    pub fn with_prefix<'s>(&'s self, prefix: &'s str) -> impl Iterator<Item = (&'s str, i64)> + 's {
        self.index
            .iter()
            .flatten()
            .filter(move |(id, _)| id.starts_with(prefix))
            .map(|(id, v)| (id.as_str(), *v))
    }

    /// Whether the markers were read in one pass (not one look-up per id).
    pub fn indexed(&self) -> bool {
        self.index.is_some()
    }
}

/// Every `txn` marker of `table` at `version`: the last checkpoint at or before it, then the
/// commits after it, later ones winning. `None` when the log is not laid out for that.
async fn txn_index(table: &DeltaTable, version: u64) -> Result<Option<HashMap<String, i64>>> {
    use object_store::ObjectStoreExt;
    let store = table.log_store().object_store(None);
    let last = object_store::path::Path::from("_delta_log/_last_checkpoint");
    let checkpoint = match store.get(&last).await {
        Ok(get) => {
            let hint: serde_json::Value =
                serde_json::from_slice(&get.bytes().await?).map_err(|e| {
                    Error::runtime(format!("{}: _last_checkpoint: {e}", table_name(table)))
                })?;
            let single = hint.get("parts").is_none_or(|p| p.is_null())
                && hint.get("v2Checkpoint").is_none_or(|p| p.is_null());
            match hint["version"].as_u64() {
                Some(c) if single && c <= version => Some(c),
                _ => return Ok(None),
            }
        }
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let mut index = HashMap::new();
    if let Some(c) = checkpoint {
        let path = object_store::path::Path::from(format!("_delta_log/{c:020}.checkpoint.parquet"));
        let size = match store.head(&path).await {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        checkpoint_txns(store.clone(), path, size, &mut index).await?;
    }
    let first = checkpoint.map_or(0, |c| c + 1);
    let log = table.log_store();
    let commits: Vec<Option<bytes::Bytes>> = futures::stream::iter(first..=version)
        .map(|v| {
            let log = log.clone();
            async move { log.read_commit_entry(v as _).await }
        })
        .buffered(16)
        .try_collect()
        .await?;
    for (i, commit) in commits.into_iter().enumerate() {
        let Some(bytes) = commit else {
            return Ok(None);
        };
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            // Only lines with a txn action are parsed (a commit's adds are most of it).
            if memchr::memmem::find(line, b"\"txn\"").is_none() {
                continue;
            }
            let action: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
                Error::runtime(format!(
                    "{} commit {}: {e}",
                    table_name(table),
                    first + i as u64
                ))
            })?;
            let Some(txn) = action.get("txn") else {
                continue;
            };
            if let (Some(id), Some(v)) = (txn["appId"].as_str(), txn["version"].as_i64()) {
                index.insert(id.to_string(), v);
            }
        }
    }
    Ok(Some(index))
}

/// The `txn` rows of a checkpoint file. Only its `txn` column is fetched (ranged reads): a
/// checkpoint is mostly `add` actions with their statistics.
async fn checkpoint_txns(
    store: Arc<dyn object_store::ObjectStore>,
    path: object_store::path::Path,
    size: u64,
    index: &mut HashMap<String, i64>,
) -> Result<()> {
    use arrow::array::{Array, AsArray};
    use deltalake::parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
    use deltalake::parquet::arrow::ProjectionMask;
    let reader = RangeReader { store, path, size };
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
    let Ok(column) = builder.schema().index_of("txn") else {
        return Ok(());
    };
    let mask = ProjectionMask::roots(builder.parquet_schema(), [column]);
    let mut batches = builder.with_projection(mask).build()?;
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        let txn = batch.column(0).as_struct();
        let (Some(ids), Some(versions)) =
            (txn.column_by_name("appId"), txn.column_by_name("version"))
        else {
            return Ok(());
        };
        let ids = arrow::compute::cast(ids, &arrow::datatypes::DataType::Utf8)?;
        let ids = ids.as_string::<i32>();
        let versions = arrow::compute::cast(versions, &arrow::datatypes::DataType::Int64)?;
        let versions = versions.as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..txn.len() {
            if txn.is_valid(i) && ids.is_valid(i) && versions.is_valid(i) {
                index.insert(ids.value(i).to_string(), versions.value(i));
            }
        }
    }
    Ok(())
}

/// A Parquet file in an object store, read by ranges (only the columns asked for are fetched).
struct RangeReader {
    store: Arc<dyn object_store::ObjectStore>,
    path: object_store::path::Path,
    size: u64,
}

impl deltalake::parquet::arrow::async_reader::AsyncFileReader for RangeReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> futures::future::BoxFuture<'_, deltalake::parquet::errors::Result<bytes::Bytes>> {
        use futures::FutureExt;
        use object_store::ObjectStoreExt;
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(|e| deltalake::parquet::errors::ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a deltalake::parquet::arrow::arrow_reader::ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<
        'a,
        deltalake::parquet::errors::Result<
            Arc<deltalake::parquet::file::metadata::ParquetMetaData>,
        >,
    > {
        use futures::FutureExt;
        async move {
            let size = self.size;
            let metadata = deltalake::parquet::file::metadata::ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// The version recorded for an application id, if any.
pub async fn txn_version(table: &DeltaTable, app_id: &str) -> Result<Option<i64>> {
    let state = table.snapshot()?;
    Ok(state
        .transaction_version(table.log_store().as_ref(), app_id)
        .await?)
}

/// Commits `adds` (possibly none) plus `txns` as one append to `table`, and refreshes it.
pub async fn commit_append(
    table: &mut DeltaTable,
    adds: Vec<Add>,
    txns: Vec<Transaction>,
    metadata: HashMap<String, serde_json::Value>,
) -> Result<i64> {
    let actions: Vec<Action> = adds.into_iter().map(Action::Add).collect();
    commit(table, actions, txns, metadata, SaveMode::Append).await
}

/// Writes one small batch to `table` with the lake's Parquet settings and commits it as an
/// append: the load history and the run log grow this way.
pub async fn append_batch(
    table: &mut DeltaTable,
    batch: arrow::array::RecordBatch,
    cfg: &crate::config::Config,
    metadata: HashMap<String, serde_json::Value>,
) -> Result<i64> {
    use deltalake::writer::DeltaWriter;
    let props = writer_properties(cfg.ingest.zstd_level, cfg.ingest.row_group_rows)?;
    let mut w = writer(table, props, cfg.ingest.target_file_size)?;
    let name = table_name(table);
    w.write(batch).await.map_err(|e| write_failed(&name, e))?;
    let adds = w.flush().await.map_err(|e| write_failed(&name, e))?;
    commit_append(table, adds, Vec::new(), metadata).await
}

/// The table's rows, from its files' statistics (files without them count as empty).
pub fn table_rows(table: &DeltaTable) -> Result<u64> {
    let snapshot = table.snapshot()?;
    Ok(snapshot
        .log_data()
        .iter()
        .filter_map(|f| f.num_records())
        .map(|n| n as u64)
        .sum())
}

/// Commits any actions (adds and removes) plus `txns` as one Delta commit, and refreshes the
/// table. `Overwrite` commits conflict with any concurrent commit to the same table.
pub async fn commit(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    txns: Vec<Transaction>,
    metadata: HashMap<String, serde_json::Value>,
    mode: SaveMode,
) -> Result<i64> {
    let partition_cols: Vec<String> = table.snapshot()?.metadata().partition_columns().to_vec();
    let operation = DeltaOperation::Write {
        mode,
        partition_by: (!partition_cols.is_empty()).then_some(partition_cols),
        predicate: None,
    };
    let props = CommitProperties::default()
        .with_application_transactions(txns)
        .with_metadata(metadata);
    let finalized = CommitBuilder::from(props)
        .with_actions(actions)
        .build(Some(table.snapshot()?), table.log_store(), operation)
        .await
        .map_err(|e| lost_race(table, e))?;
    let version = finalized.version();
    // The commit already brought the snapshot it was built on up to the new version; loading
    // the log again (`update_state`) replayed it a second time: 0.1–0.2 s per commit of a 10M
    // lake's fact table.
    table.state = Some(finalized.snapshot);
    Ok(version as i64)
}

/// A commit that another writer's commit to the same table made impossible (a second `clean` or
/// `build` started by hand while one ran): nothing of it was made, and running the command again
/// does its work on top of the other's. Exit 75, like a lake locked by another run: try again.
fn lost_race(table: &DeltaTable, e: deltalake::DeltaTableError) -> Error {
    use deltalake::kernel::transaction::TransactionError as T;
    match &e {
        deltalake::DeltaTableError::Transaction {
            source: T::CommitConflict(_) | T::MaxCommitAttempts(_),
        }
        // The versions since this command's snapshot are gone: an erasure checkpointed the log
        // and deleted the entries before it.
        | deltalake::DeltaTableError::InvalidVersion(_) => Error::Conflict(format!(
            "another writer committed to {} while this command ran, so this command's commit to \
             it was not made; run it again (`clicklake run` holds the lake's lock, so its stages \
             never race)",
            table_name(table)
        )),
        _ => e.into(),
    }
}

/// Streams record batches into a table's writer: conforms each batch to the table schema (by
/// column name; engine layouts such as string views are cast back), and flushes files whenever
/// the buffered rows pass `flush_at` bytes, so memory stays bounded.
///
/// A partitioned table's rows are split by partition, and a partition's file is opened only once
/// [`waiting::OPEN_AT`] bytes of its rows have come; until then they wait in memory (see
/// [`waiting`]). Partitions that stay small are written one at a time when the waiting rows pass
/// `flush_at` (the largest first) and at [`TableSink::finish`]. Each open partition file has a
/// writer of its own and counts at what it holds in memory ([`waiting::OPEN_COLUMN_BYTES`] a
/// column) beside its buffered pages; at most [`TableSink::max_open`] are open at once, and when
/// one more opens or the open files pass `flush_at`, the file written to least recently is
/// closed (a backfill's finished days go first, the partitions still receiving rows stay open).
/// So memory is bounded by twice `flush_at` however many partitions the rows spread over.
pub struct TableSink {
    writer: RecordBatchWriter,
    /// What a sibling writer is made from.
    for_table: DeltaTable,
    props: WriterProperties,
    target_file_size: u64,
    adds: Vec<Add>,
    flush_at: usize,
    target: arrow::datatypes::SchemaRef,
    partition_columns: Vec<String>,
    what: String,
    table: String,
    rows: u64,
    /// Rows of partitions with no file open, in memory.
    waiting: Waiting,
    /// Bytes of a partition's rows that open its file ([`waiting::OPEN_AT`]).
    open_at: usize,
    /// What an open file of this table costs in memory beyond its buffered pages.
    open_file_bytes: usize,
    /// Partitions with a file open, each in a writer of its own, with when it was last written.
    open: HashMap<PartitionKey, OpenFile>,
    /// Counts writes into open files, to find the one written least recently.
    writes: u64,
    /// Writes partitions that never opened a file of their own in `writer`, one at a time.
    alone: Option<RecordBatchWriter>,
    hashes: Vec<u64>,
}

/// Writes and closes `writer`'s open files, adding them to `adds`.
async fn close(writer: &mut RecordBatchWriter, table: &str, adds: &mut Vec<Add>) -> Result<()> {
    adds.extend(writer.flush().await.map_err(|e| write_failed(table, e))?);
    Ok(())
}

/// A partition's open file in [`TableSink`].
struct OpenFile {
    writer: RecordBatchWriter,
    /// The sink's write count when it was last written to.
    written: u64,
}

impl TableSink {
    /// `what` names the producer in errors ("the final clean model").
    pub fn new(
        table: &DeltaTable,
        props: WriterProperties,
        target_file_size: u64,
        flush_at: usize,
        what: impl Into<String>,
    ) -> Result<TableSink> {
        let snapshot = table.snapshot()?;
        let target = snapshot.snapshot().arrow_schema();
        let partition_columns = snapshot.metadata().partition_columns().to_vec();
        let file_columns = target
            .fields()
            .len()
            .saturating_sub(partition_columns.len());
        Ok(TableSink {
            writer: writer(table, props.clone(), target_file_size)?,
            for_table: table.clone(),
            props,
            target_file_size,
            adds: Vec::new(),
            flush_at,
            target,
            partition_columns,
            what: what.into(),
            table: table_name(table),
            rows: 0,
            waiting: Waiting::default(),
            open_at: waiting::OPEN_AT,
            open_file_bytes: file_columns.max(1) * waiting::OPEN_COLUMN_BYTES,
            open: HashMap::new(),
            writes: 0,
            alone: None,
            hashes: Vec::new(),
        })
    }

    /// `batch` with the table's columns, in its order and types.
    pub fn conform(&self, batch: &arrow::array::RecordBatch) -> Result<arrow::array::RecordBatch> {
        let mut columns = Vec::with_capacity(self.target.fields().len());
        for field in self.target.fields() {
            let col = batch.column_by_name(field.name()).ok_or_else(|| {
                Error::config(format!(
                    "{} does not produce column {}",
                    self.what,
                    field.name()
                ))
            })?;
            columns.push(if col.data_type() == field.data_type() {
                col.clone()
            } else {
                arrow::compute::cast(col, field.data_type())?
            });
        }
        Ok(arrow::array::RecordBatch::try_new(
            self.target.clone(),
            columns,
        )?)
    }

    pub async fn write(&mut self, batch: &arrow::array::RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if !self.partition_columns.is_empty() {
            let parts = spread::split_by_partition(
                batch,
                &self.partition_columns,
                &self.what,
                &mut self.hashes,
            )?;
            for (_, part) in parts {
                self.write_part(part).await?;
            }
            return Ok(());
        }
        let conformed = self.conform(batch)?;
        self.write_split_by_deltalake(conformed).await
    }

    /// Writes `conformed` through deltalake's writer, which splits it by partition itself.
    async fn write_split_by_deltalake(
        &mut self,
        conformed: arrow::array::RecordBatch,
    ) -> Result<()> {
        self.rows += conformed.num_rows() as u64;
        let table = &self.table;
        self.writer
            .write(conformed)
            .await
            .map_err(|e| write_failed(table, e))?;
        self.flush_if_full().await
    }

    /// Writes `batch`, whose rows the caller has found to be all of one partition, without
    /// deltalake's split by partition (see [`write_one_partition`]): into the partition's open file,
    /// or to wait until enough rows of the partition have come to open one. Two partitions whose
    /// values hash alike come here together and go through deltalake's split.
    pub async fn write_part(&mut self, batch: arrow::array::RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let conformed = self.conform(&batch)?;
        if !is_one_partition(&conformed, &self.partition_columns)? {
            return self.write_split_by_deltalake(conformed).await;
        }
        self.rows += conformed.num_rows() as u64;
        let key = waiting::partition_key(&conformed, &self.partition_columns)?;
        if self.open.contains_key(&key) {
            self.write_open(&key, conformed).await?;
            return self.flush_if_full().await;
        }
        if self.waiting.add(key.clone(), conformed)? >= self.open_at {
            while self.open.len() >= self.max_open() {
                self.close_least_recent().await?;
            }
            let file = OpenFile {
                writer: writer(&self.for_table, self.props.clone(), self.target_file_size)?,
                written: 0,
            };
            self.open.insert(key.clone(), file);
            if let Some(rows) = self.waiting.take(&key)? {
                self.write_open(&key, rows).await?;
            }
            self.flush_if_full().await?;
        }
        if self.waiting.bytes() > self.flush_at {
            for key in self.waiting.largest_first() {
                if self.waiting.bytes() <= self.flush_at / 2 {
                    break;
                }
                self.write_alone(&key).await?;
            }
        }
        Ok(())
    }

    /// Files open at once, at most: half of `flush_at` in what open files cost (the other half
    /// is for their pages), and at least one.
    fn max_open(&self) -> usize {
        (self.flush_at / 2 / self.open_file_bytes).max(1)
    }

    /// What the open files hold: their buffered pages and what each costs open.
    fn writer_bytes(&self) -> usize {
        let pages: usize = self.open.values().map(|f| f.writer.buffer_len()).sum();
        self.writer.buffer_len() + pages + self.open.len() * self.open_file_bytes
    }

    async fn write_open(
        &mut self,
        key: &PartitionKey,
        rows: arrow::array::RecordBatch,
    ) -> Result<()> {
        self.writes += 1;
        let file = self.open.get_mut(key).expect("an open partition");
        file.written = self.writes;
        write_one_partition(&mut file.writer, &self.table, &self.partition_columns, rows).await
    }

    /// Closes the open file written to least recently.
    async fn close_least_recent(&mut self) -> Result<()> {
        let Some(key) = self
            .open
            .iter()
            .min_by_key(|(_, f)| f.written)
            .map(|(k, _)| k.clone())
        else {
            return Ok(());
        };
        let mut file = self.open.remove(&key).expect("an open partition");
        close(&mut file.writer, &self.table, &mut self.adds).await
    }

    /// Writes the rows waiting for partition `key` to a file of their own, and closes it.
    async fn write_alone(&mut self, key: &PartitionKey) -> Result<()> {
        if let Some(rows) = self.waiting.take(key)? {
            self.one_file_each(vec![rows]).await?;
        }
        Ok(())
    }

    /// Writes every partition still waiting, each to a file of its own; on two tasks, dealt
    /// out largest first, where there are two cores (a backfill leaves hundreds of partitions
    /// for the end, with nothing else left to do).
    pub async fn write_waiting(&mut self) -> Result<()> {
        let mut lists: [(Vec<arrow::array::RecordBatch>, usize); 2] = Default::default();
        for key in self.waiting.largest_first() {
            if let Some(rows) = self.waiting.take(&key)? {
                let lighter = usize::from(lists[1].1 < lists[0].1);
                lists[lighter].1 += rows.num_rows();
                lists[lighter].0.push(rows);
            }
        }
        let [(mut mine, _), (theirs, _)] = lists;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let helper = if theirs.is_empty() {
            None
        } else if cores < 2 {
            mine.extend(theirs);
            None
        } else {
            let w = writer(&self.for_table, self.props.clone(), self.target_file_size)?;
            let (table, columns) = (self.table.clone(), self.partition_columns.clone());
            Some(tokio::spawn(async move {
                one_file_each(w, &table, &columns, theirs).await
            }))
        };
        let done = self.one_file_each(mine).await;
        let Some(helper) = helper else {
            return done;
        };
        if done.is_err() {
            helper.abort();
            return done;
        }
        let (_, adds) = helper
            .await
            .map_err(|e| Error::runtime(format!("writing rows: {e}")))??;
        self.adds.extend(adds);
        Ok(())
    }

    /// [`one_file_each`] through this sink's writer of single files.
    async fn one_file_each(&mut self, parts: Vec<arrow::array::RecordBatch>) -> Result<()> {
        let alone = match self.alone.take() {
            Some(alone) => alone,
            None => writer(&self.for_table, self.props.clone(), self.target_file_size)?,
        };
        let (alone, adds) =
            one_file_each(alone, &self.table, &self.partition_columns, parts).await?;
        self.alone = Some(alone);
        self.adds.extend(adds);
        Ok(())
    }

    async fn flush_if_full(&mut self) -> Result<()> {
        while self.writer_bytes() > self.flush_at && !self.open.is_empty() {
            self.close_least_recent().await?;
        }
        if self.writer_bytes() > self.flush_at {
            close(&mut self.writer, &self.table, &mut self.adds).await?;
        }
        Ok(())
    }

    /// Writes and closes every open file.
    async fn flush(&mut self) -> Result<()> {
        for (_, mut file) in std::mem::take(&mut self.open) {
            close(&mut file.writer, &self.table, &mut self.adds).await?;
        }
        close(&mut self.writer, &self.table, &mut self.adds).await
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Another writer into the same table with the same settings, writing files of its own.
    pub fn sibling(&self) -> Result<TableSink> {
        let mut sink = TableSink::new(
            &self.for_table,
            self.props.clone(),
            self.target_file_size,
            self.flush_at,
            self.what.clone(),
        )?;
        sink.table = self.table.clone();
        Ok(sink)
    }

    /// Writes what waits and what is buffered, and returns every file written (not yet
    /// committed).
    pub async fn finish(mut self) -> Result<Vec<Add>> {
        self.write_waiting().await?;
        self.flush().await?;
        Ok(self.adds)
    }
}

/// The table-relative path of a scan's file id (a URL under the table root), as the table log
/// names the file: `<root>/<table>/<partition dirs>/<file>.parquet` → `<partition dirs>/<file>`.
pub fn table_relative_path(file_id: &str, table: &str) -> String {
    let path = url::Url::parse(file_id)
        .map(|u| u.path().to_string())
        .unwrap_or_else(|_| file_id.to_string());
    let decoded = percent_encoding::percent_decode_str(&path)
        .decode_utf8_lossy()
        .to_string();
    match decoded.find(&format!("/{table}/")) {
        Some(i) => decoded[i + table.len() + 2..].to_string(),
        None => decoded,
    }
}

/// The actions of commit `version` of `table` as JSON objects, or `None` when the log no longer
/// holds that commit (log retention).
pub async fn commit_actions(
    table: &DeltaTable,
    version: i64,
) -> Result<Option<Vec<serde_json::Value>>> {
    let Some(bytes) = table.log_store().read_commit_entry(version as _).await? else {
        return Ok(None);
    };
    let mut actions = Vec::new();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        actions.push(
            serde_json::from_slice(line).map_err(|e| {
                Error::runtime(format!("{} commit {version}: {e}", table_name(table)))
            })?,
        );
    }
    Ok(Some(actions))
}

/// True for an `add` or `remove` action that changes rows (not a compaction's rewrite).
pub fn is_data_change(action: &serde_json::Value) -> bool {
    ["add", "remove"].iter().any(|kind| {
        action
            .get(kind)
            .is_some_and(|a| a["dataChange"].as_bool().unwrap_or(true))
    })
}

/// A failed data-file write, named as one: deltalake reports a failed upload of a Parquet file as
/// "Failed to parse parquet", which reads like a corrupt input.
pub fn write_failed(table: &str, e: deltalake::DeltaTableError) -> Error {
    let cause = match &e {
        deltalake::DeltaTableError::Parquet { source } => source.to_string(),
        other => other.to_string(),
    };
    Error::runtime(format!(
        "writing a data file of {table}: {}",
        cause.replace('\n', " ")
    ))
}

fn table_name(table: &DeltaTable) -> String {
    let uri = table.table_url().to_string();
    uri.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Streams every row of `files` (scan file ids of `table`) whose `column` is not in `drop` into
/// `sink`, and returns how many rows were copied. The small `drop` set is checked per batch
/// rather than with an anti join, which would hold the files' rows in memory.
///
/// A copy is mostly Parquet encoding and compression, which a writer does on one core: with
/// more cores and files, a second writer (a [`TableSink::sibling`], on its own task) takes half
/// of the bytes, and its files join `sink`'s.
pub async fn copy_rows_except(
    ctx: &datafusion::prelude::SessionContext,
    table: &DeltaTable,
    files: &[String],
    column: &str,
    drop: &std::collections::HashSet<String>,
    sink: &mut TableSink,
) -> Result<u64> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 || files.len() < 2 {
        return copy_files(ctx, table, files.to_vec(), column, drop, sink).await;
    }
    let (mine, theirs) = split_by_size(table, files)?;
    let mut other = sink.sibling()?;
    let helper = {
        let (ctx, table, column) = (ctx.clone(), table.clone(), column.to_string());
        let drop = drop.clone();
        tokio::spawn(async move {
            let copied = copy_files(&ctx, &table, theirs, &column, &drop, &mut other).await?;
            Ok::<_, Error>((copied, other.finish().await?))
        })
    };
    let copied = copy_files(ctx, table, mine, column, drop, sink).await;
    let helped = helper
        .await
        .map_err(|e| Error::runtime(format!("copying rows: {e}")))?;
    let (theirs_copied, adds) = helped?;
    sink.adds.extend(adds);
    sink.rows += theirs_copied;
    Ok(copied? + theirs_copied)
}

/// `files` dealt into two groups of about equal bytes (largest first, each to the lighter side).
fn split_by_size(table: &DeltaTable, files: &[String]) -> Result<(Vec<String>, Vec<String>)> {
    let mut sized: Vec<(i64, &String)> = file_sizes(table, files)?.into_iter().zip(files).collect();
    sized.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let (mut a, mut b) = ((0i64, Vec::new()), (0i64, Vec::new()));
    for (size, f) in sized {
        let lighter = if a.0 <= b.0 { &mut a } else { &mut b };
        lighter.0 += size;
        lighter.1.push(f.clone());
    }
    Ok((a.1, b.1))
}

/// The size the table log records for each of `files` (scan file ids of `table`), 0 for one it
/// does not hold.
pub fn file_sizes(table: &DeltaTable, files: &[String]) -> Result<Vec<i64>> {
    let name = table_name(table);
    let sizes: HashMap<String, i64> = table
        .snapshot()?
        .log_data()
        .iter()
        .map(|f| (f.path().to_string(), f.size()))
        .collect();
    Ok(files
        .iter()
        .map(|f| {
            sizes
                .get(&table_relative_path(f, &name))
                .copied()
                .unwrap_or(0)
        })
        .collect())
}

async fn copy_files(
    ctx: &datafusion::prelude::SessionContext,
    table: &DeltaTable,
    files: Vec<String>,
    column: &str,
    drop: &std::collections::HashSet<String>,
    sink: &mut TableSink,
) -> Result<u64> {
    use futures::StreamExt;
    // Strings read as the table stores them (`Utf8`), not as views the sink casts back.
    let mut state = ctx.state();
    state
        .config_mut()
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    let provider = table
        .table_provider()
        .with_session(Arc::new(state.clone()))
        .with_file_paths(files)
        .await?;
    let ctx = datafusion::prelude::SessionContext::new_with_state(state);
    let mut stream = ctx.read_table(provider)?.execute_stream().await?;
    let mut copied = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let values = batch
            .column_by_name(column)
            .ok_or_else(|| Error::runtime(format!("{}: no column {column}", table_name(table))))?;
        // Rows whose key is NULL stay: no key set holds them.
        let keep: arrow::array::BooleanArray = key_in(values, drop)?
            .iter()
            .map(|dropped| Some(dropped != Some(true)))
            .collect();
        let kept = arrow::compute::filter_record_batch(&batch, &keep)?;
        copied += kept.num_rows() as u64;
        sink.write(&kept).await?;
    }
    Ok(copied)
}

/// For each value of a key column, whether its text is one of `keys` (NULL for a NULL key).
pub fn key_in(
    values: &arrow::array::ArrayRef,
    keys: &std::collections::HashSet<String>,
) -> Result<arrow::array::BooleanArray> {
    Ok(crate::catalog::utf8(values)?
        .iter()
        .map(|v| v.map(|v| keys.contains(v)))
        .collect())
}

/// Remove actions for the data files a scan named `files` (file ids, as from a file column).
/// Every one must be in the table's current snapshot.
pub fn remove_actions(table: &DeltaTable, files: &[String], name: &str) -> Result<Vec<Action>> {
    let wanted: std::collections::HashSet<String> =
        files.iter().map(|f| table_relative_path(f, name)).collect();
    let removes: Vec<Action> = table
        .snapshot()?
        .log_data()
        .iter()
        .filter(|f| wanted.contains(&f.path().to_string()))
        .map(|f| Action::Remove(f.remove_action(true)))
        .collect();
    if removes.len() != wanted.len() {
        return Err(Error::runtime(format!(
            "{name}: matched {} of the {} files to rewrite in the table log",
            removes.len(),
            wanted.len()
        )));
    }
    Ok(removes)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
    use deltalake::kernel::StructType;

    use super::*;

    /// A table of `v` (Int64) partitioned by `p` (Utf8) in `dir`, and its Arrow schema.
    pub(super) async fn partitioned_table(
        dir: &std::path::Path,
    ) -> (DeltaTable, arrow::datatypes::SchemaRef) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, true),
            Field::new("p", DataType::Utf8, true),
        ]));
        let kernel: StructType = schema.as_ref().try_into_kernel().unwrap();
        let table = deltalake::operations::create::CreateBuilder::new()
            .with_location(url::Url::from_directory_path(dir).unwrap().to_string())
            .with_columns(kernel.fields().cloned())
            .with_partition_columns(["p".to_string()])
            .await
            .unwrap();
        (table, schema)
    }

    /// A sink with default Parquet settings and 1 GiB files into [`partitioned_table`] in `dir`,
    /// and the table's Arrow schema.
    pub(super) async fn sink(
        dir: &std::path::Path,
        flush_at: usize,
    ) -> (TableSink, arrow::datatypes::SchemaRef) {
        let (table, schema) = partitioned_table(dir).await;
        let sink = TableSink::new(
            &table,
            WriterProperties::default(),
            1 << 30,
            flush_at,
            "test",
        )
        .unwrap();
        (sink, schema)
    }

    #[test]
    fn each_column_gets_the_encoding_its_values_pay_for() {
        use deltalake::parquet::schema::types::ColumnPath;
        let props = writer_properties(1, 1024).unwrap();
        let path = |c: &str| ColumnPath::from(c);
        for column in ["event_time", "received_at", "line_number"] {
            assert_eq!(
                props.encoding(&path(column)),
                Some(Encoding::DELTA_BINARY_PACKED),
                "{column}"
            );
            assert!(!props.dictionary_enabled(&path(column)), "{column}");
        }
        for column in ["event_id", "session_key", "anonymous_id", "ip"] {
            assert!(!props.dictionary_enabled(&path(column)), "{column}");
            assert_eq!(props.encoding(&path(column)), None, "{column}");
        }
        for column in ["properties", "page_url", "category", "event_type"] {
            assert!(props.dictionary_enabled(&path(column)), "{column}");
        }
        assert_eq!(
            props.statistics_enabled(&path("properties")),
            EnabledStatistics::None
        );
        assert_eq!(
            props.statistics_enabled(&path("event_time")),
            EnabledStatistics::Page
        );
    }

    /// A batch of `n` rows of partition `p` with values from `first`.
    fn rows(schema: &arrow::datatypes::SchemaRef, p: &str, first: i64, n: usize) -> RecordBatch {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(first..first + n as i64)),
                Arc::new(StringArray::from(vec![p; n])),
            ],
        )
        .unwrap()
    }

    /// Rows per partition value, from the files' statistics.
    fn rows_by_partition(adds: &[Add]) -> std::collections::BTreeMap<String, Vec<i64>> {
        let mut files: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
        for add in adds {
            let stats: serde_json::Value =
                serde_json::from_str(add.stats.as_deref().unwrap()).unwrap();
            let p = add.partition_values["p"].clone().unwrap();
            assert!(add.path.starts_with(&format!("p={p}/")), "{}", add.path);
            files
                .entry(p)
                .or_default()
                .push(stats["numRecords"].as_i64().unwrap());
        }
        files
    }

    #[tokio::test]
    async fn small_partitions_wait_in_memory_and_are_written_one_file_each() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sink, schema) = sink(dir.path(), 1 << 30).await;
        // A backfill: 200 partitions, each receiving rows in 5 batches, interleaved.
        for round in 0..5 {
            for p in 0..200 {
                sink.write(&rows(&schema, &format!("d{p:03}"), round * 10, 10))
                    .await
                    .unwrap();
            }
            assert!(sink.open.is_empty(), "a small partition opened a file");
        }
        assert_eq!(sink.rows(), 10_000);
        let adds = sink.finish().await.unwrap();
        let files = rows_by_partition(&adds);
        assert_eq!(files.len(), 200);
        assert!(files.values().all(|n| n == &vec![50]), "{files:?}");
    }

    #[tokio::test]
    async fn a_partition_opens_its_file_once_enough_rows_came_and_the_least_recently_written_closes(
    ) {
        let dir = tempfile::tempdir().unwrap();
        // Room for 4 open files of one column (`v`; `p` is in the path) beside their pages.
        let (mut sink, schema) = sink(dir.path(), 8 * waiting::OPEN_COLUMN_BYTES).await;
        sink.open_at = 8_000;
        let max_open = sink.max_open();
        assert_eq!(max_open, 4);
        sink.write(&rows(&schema, "big", 0, 500)).await.unwrap();
        assert!(sink.open.is_empty());
        assert!(sink.waiting.bytes() > 0);
        // 1,000 Int64 values and their partition string pass 8,000 bytes.
        sink.write(&rows(&schema, "big", 500, 500)).await.unwrap();
        assert_eq!(sink.open.len(), 1);
        assert_eq!(sink.waiting.bytes(), 0);
        sink.write(&rows(&schema, "big", 1000, 10)).await.unwrap();
        assert_eq!(sink.waiting.bytes(), 0, "rows of an open partition waited");
        // More large partitions than may be open: opening one more closes the file written to
        // least recently. `big` is written again after o0 and o1 opened, so o0 goes first.
        for p in 0..max_open {
            sink.write(&rows(&schema, &format!("o{p}"), 0, 1000))
                .await
                .unwrap();
            if p == 1 {
                sink.write(&rows(&schema, "big", 1010, 10)).await.unwrap();
            }
            assert!(sink.open.len() <= max_open);
        }
        let key = |p: &str| vec![datafusion::common::ScalarValue::Utf8(Some(p.to_string()))];
        assert_eq!(sink.open.len(), max_open);
        assert!(!sink.open.contains_key(&key("o0")), "o0 was not closed");
        assert!(sink.open.contains_key(&key("big")), "big was closed");
        let adds = sink.finish().await.unwrap();
        let files = rows_by_partition(&adds);
        assert_eq!(files["big"], vec![1020]);
        assert_eq!(files.len(), max_open + 1);
        assert!(files.iter().all(|(p, n)| p == "big" || n == &vec![1000]));
    }

    #[tokio::test]
    async fn waiting_rows_past_the_flush_threshold_are_written_largest_first() {
        let dir = tempfile::tempdir().unwrap();
        let flush_at = 64 << 10;
        let (mut sink, schema) = sink(dir.path(), flush_at).await;
        sink.open_at = usize::MAX;
        for p in 0..100 {
            let n = if p == 0 { 300 } else { 100 };
            sink.write(&rows(&schema, &format!("s{p:02}"), 0, n))
                .await
                .unwrap();
            assert!(sink.waiting.bytes() <= flush_at, "{}", sink.waiting.bytes());
        }
        sink.write(&rows(&schema, "s00", 100, 5)).await.unwrap();
        let adds = sink.finish().await.unwrap();
        let files = rows_by_partition(&adds);
        assert_eq!(files.len(), 100);
        let all: i64 = files.values().flatten().sum();
        assert_eq!(all, 300 + 99 * 100 + 5);
        // The largest partition was written first, before its last rows came.
        assert_eq!(files["s00"], vec![300, 5]);
    }

    #[tokio::test]
    async fn two_partitions_in_one_part_are_split_by_deltalake() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sink, schema) = sink(dir.path(), 1 << 30).await;
        let mixed = arrow::compute::concat_batches(
            &schema,
            &[rows(&schema, "a", 0, 2), rows(&schema, "b", 2, 3)],
        )
        .unwrap();
        sink.write_part(mixed).await.unwrap();
        let files = rows_by_partition(&sink.finish().await.unwrap());
        assert_eq!(files["a"], vec![2]);
        assert_eq!(files["b"], vec![3]);
    }
}
