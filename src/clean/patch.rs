//! Column patches of `events` files.
//!
//! Most rows an incremental clean changes in existing files change only in their identity and
//! session columns: a visitor's first login stitches their whole history (every day they were
//! seen), and a late event can move rows into another derived session. Those rows keep their
//! partition and every other value. Rewriting each file that holds one of them by decoding and
//! encoding every row costs most of a full clean; a patch instead writes a new file whose
//! [`PATCHABLE`] columns are re-encoded with the new values, while every other column chunk
//! (with its page index) is copied byte for byte from the current file. The new file replaces
//! the old one in the run's single commit, like any rewritten file.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray, StringBuilder};
use arrow::datatypes::SchemaRef;
use deltalake::kernel::Add;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::parquet::arrow::arrow_writer::{compute_leaves, ArrowRowGroupWriterFactory};
use deltalake::parquet::arrow::{parquet_to_arrow_schema, ProjectionMask};
use deltalake::parquet::column::writer::ColumnCloseResult;
use deltalake::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::parquet::file::writer::SerializedFileWriter;
use deltalake::DeltaTable;
use futures::StreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt;

use super::FILE_COLUMN;
use crate::catalog::{self, EVENTS};
use crate::delta::{self, table_relative_path, TableSink};
use crate::error::{Error, Result};

/// The columns a patch may change: stitching and sessionization. A changed row that differs
/// from its current version in any other column (or partition) goes to a full rewrite.
pub const PATCHABLE: [&str; 3] = catalog::IDENTITY_COLUMNS;

/// The rows to patch in one file.
#[derive(Debug, Default)]
pub struct FilePatch {
    /// The new [`PATCHABLE`] values of each row to patch, by event_id.
    pub rows: HashMap<String, [Option<String>; 3]>,
    /// Which [`PATCHABLE`] columns differ from the file's in at least one of those rows: only
    /// they are decoded and re-encoded (a first login changes `stitched_user_id` alone).
    pub differs: [bool; 3],
}

/// Sorts the new versions of the rows flagged patchable (`to_patch`: batches of the clean's
/// output, with the current file in `FILE_COLUMN` and `__differs_<column>` flags) into one
/// patch per file. Rows whose file is rewritten anyway (`superseded`) are written to `write`
/// instead, and their ids join `changed_ids`, the rows that rewrite leaves out.
pub async fn plan(
    to_patch: Vec<RecordBatch>,
    superseded: &HashSet<String>,
    changed_ids: &mut Vec<String>,
    write: &mut TableSink,
) -> Result<HashMap<String, FilePatch>> {
    let mut patches: HashMap<String, FilePatch> = HashMap::new();
    for batch in to_patch {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| Error::runtime(format!("clean: the output has no column {name}")))
        };
        let files = catalog::utf8(column(FILE_COLUMN)?)?;
        let ids = catalog::utf8(column("event_id")?)?;
        let values = PATCHABLE
            .iter()
            .map(|c| catalog::utf8(column(c)?))
            .collect::<Result<Vec<_>>>()?;
        let differs = PATCHABLE
            .iter()
            .map(|c| {
                column(&format!("__differs_{c}"))?
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .cloned()
                    .ok_or_else(|| Error::runtime(format!("clean: __differs_{c} is not boolean")))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut rewrite = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let (file, id) = (files.value(i), ids.value(i));
            let with_rewrite = superseded.contains(file);
            if with_rewrite {
                changed_ids.push(id.to_string());
            } else {
                let value = |k: usize| {
                    values[k]
                        .is_valid(i)
                        .then(|| values[k].value(i).to_string())
                };
                let patch = patches.entry(file.to_string()).or_default();
                patch
                    .rows
                    .insert(id.to_string(), [value(0), value(1), value(2)]);
                for (k, d) in differs.iter().enumerate() {
                    patch.differs[k] |= d.is_valid(i) && d.value(i);
                }
            }
            rewrite.push(with_rewrite);
        }
        let rewritten = arrow::compute::filter_record_batch(&batch, &BooleanArray::from(rewrite))?;
        write.write(&rewritten).await?;
    }
    Ok(patches)
}

/// Patches every file of `patches` and returns the new files' Adds. Two files at a time, each
/// on a task of its own (decoding and encoding take a core), when the memory budget allows: a
/// patch holds its file and the new copy in memory.
pub async fn patch_files(
    table: &DeltaTable,
    patches: HashMap<String, FilePatch>,
    props: &WriterProperties,
    memory_limit: u64,
) -> Result<Vec<Add>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let files: Vec<String> = patches.keys().cloned().collect();
    let largest = delta::file_sizes(table, &files)?
        .into_iter()
        .max()
        .unwrap_or(0)
        .max(0) as u64;
    let parallel = if cores >= 2 && largest * 4 <= memory_limit / 2 {
        2
    } else {
        1
    };
    let mut patching = futures::stream::iter(patches.into_iter().map(|(file, patch)| {
        let (table, props) = (table.clone(), props.clone());
        tokio::spawn(async move { patch_file(&table, &file, &patch, &props).await })
    }))
    .buffer_unordered(parallel);
    let mut adds = Vec::new();
    while let Some(patched) = patching.next().await {
        let (add, _) =
            patched.map_err(|e| Error::runtime(format!("patching events files: {e}")))??;
        adds.push(add);
    }
    Ok(adds)
}

/// Writes the patched copy of `file_id` (a scan file id of `table`) and returns its Add (the
/// old file's partition values, its other columns' statistics) and its row count.
pub async fn patch_file(
    table: &DeltaTable,
    file_id: &str,
    patch: &FilePatch,
    props: &WriterProperties,
) -> Result<(Add, u64)> {
    let rel = table_relative_path(file_id, EVENTS.name);
    let (partition_values, old_stats) = table
        .snapshot()?
        .log_data()
        .iter()
        .find(|f| f.path() == rel.as_str())
        .map(|f| (f.remove_action(true).partition_values, f.stats()))
        .ok_or_else(|| Error::runtime(format!("events: file {rel} is not in the table log")))?;
    let store = table.log_store().object_store(None);
    let bytes = store.get(&Path::from(rel.as_str())).await?.bytes().await?;
    let failed = |e: &dyn std::fmt::Display| Error::runtime(format!("events: patching {rel}: {e}"));

    let metadata = ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Optional)
        .parse_and_finish(&bytes)
        .map_err(|e| failed(&e))?;
    let file_meta = metadata.file_metadata();
    let arrow_schema: SchemaRef = Arc::new(
        parquet_to_arrow_schema(file_meta.schema_descr(), file_meta.key_value_metadata())
            .map_err(|e| failed(&e))?,
    );
    let leaf = |name: &str| {
        arrow_schema
            .index_of(name)
            .map_err(|_| failed(&format!("no column {name}")))
    };
    let id_at = leaf("event_id")?;
    // The patched columns: (index in PATCHABLE, leaf column).
    let patched: Vec<(usize, usize)> = PATCHABLE
        .iter()
        .enumerate()
        .filter(|(k, _)| patch.differs[*k])
        .map(|(k, c)| Ok((k, leaf(c)?)))
        .collect::<Result<_>>()?;
    let patched_at: Vec<usize> = patched.iter().map(|(_, at)| *at).collect();
    // The schema is flat (one leaf a field): field i is leaf column i.
    if file_meta.schema_descr().num_columns() != arrow_schema.fields().len() {
        return Err(failed(&"nested columns cannot be patched"));
    }

    let props = props
        .clone()
        .into_builder()
        .set_key_value_metadata(file_meta.key_value_metadata().cloned())
        .build();
    let mut writer = SerializedFileWriter::new(
        Vec::with_capacity(bytes.len()),
        file_meta.schema_descr().root_schema_ptr(),
        Arc::new(props),
    )
    .map_err(|e| failed(&e))?;
    let factory = ArrowRowGroupWriterFactory::new(&writer, arrow_schema.clone());
    let mut stats = PatchStats::default();
    let mut rows = 0u64;
    for rg in 0..metadata.num_row_groups() {
        let new_columns = patched_columns(&bytes, &metadata, rg, id_at, &patched, patch)
            .map_err(|e| failed(&e))?;
        for ((k, _), array) in patched.iter().zip(&new_columns) {
            stats.feed(*k, array);
        }
        let encoders = factory.create_column_writers(rg).map_err(|e| failed(&e))?;
        let mut group = writer.next_row_group().map_err(|e| failed(&e))?;
        let chunks = metadata.row_group(rg);
        // Columns go into a row group in order, each re-encoded or copied as its turn comes.
        for (i, mut encoder) in encoders.into_iter().enumerate() {
            if let Some(k) = patched_at.iter().position(|&p| p == i) {
                for leaf in compute_leaves(arrow_schema.field(i), &new_columns[k])
                    .map_err(|e| failed(&e))?
                {
                    encoder.write(&leaf).map_err(|e| failed(&e))?;
                }
                encoder
                    .close()
                    .and_then(|c| c.append_to_row_group(&mut group))
                    .map_err(|e| failed(&e))?;
            } else {
                let chunk = chunks.column(i);
                let close = ColumnCloseResult {
                    bytes_written: chunk.compressed_size() as u64,
                    rows_written: chunks.num_rows() as u64,
                    metadata: chunk.clone(),
                    bloom_filter: None,
                    column_index: metadata.column_index().map(|c| c[rg][i].clone()),
                    offset_index: metadata.offset_index().map(|o| o[rg][i].clone()),
                };
                group.append_column(&bytes, close).map_err(|e| failed(&e))?;
            }
        }
        group.close().map_err(|e| failed(&e))?;
        rows += chunks.num_rows() as u64;
    }
    // Writes the footer.
    let buffer = writer.into_inner().map_err(|e| failed(&e))?;

    let dir = rel
        .rsplit_once('/')
        .map(|(d, _)| format!("{d}/"))
        .unwrap_or_default();
    let name = format!("part-00000-{}-c000.zstd.parquet", uuid::Uuid::new_v4());
    let new_rel = format!("{dir}{name}");
    let size = buffer.len() as i64;
    store
        .put(&Path::from(new_rel.as_str()), buffer.into())
        .await?;
    let add = Add {
        path: new_rel,
        partition_values: partition_values.unwrap_or_default(),
        size,
        modification_time: chrono::Utc::now().timestamp_millis(),
        data_change: true,
        stats: Some(stats.apply(old_stats.as_deref(), rows, &patch.differs)?),
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
        clustering_provider: None,
    };
    Ok((add, rows))
}

/// One row group's `patched` columns ((index in [`PATCHABLE`], leaf column)) with the new values
/// of the patched rows.
fn patched_columns(
    bytes: &bytes::Bytes,
    metadata: &ParquetMetaData,
    rg: usize,
    id_at: usize,
    patched: &[(usize, usize)],
    patch: &FilePatch,
) -> deltalake::parquet::errors::Result<Vec<ArrayRef>> {
    let mut leaves = vec![id_at];
    leaves.extend(patched.iter().map(|(_, at)| *at));
    let rows = metadata.row_group(rg).num_rows() as usize;
    let mask = ProjectionMask::leaves(metadata.file_metadata().schema_descr(), leaves);
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())?
        .with_projection(mask)
        .with_row_groups(vec![rg])
        .with_batch_size(rows.max(1))
        .build()?;
    let batches: Vec<RecordBatch> = reader.collect::<std::result::Result<_, _>>()?;
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => {
            return Ok(vec![
                Arc::new(StringArray::new_null(0)) as ArrayRef;
                patched.len()
            ])
        }
    };
    let batch = arrow::compute::concat_batches(&schema, &batches)?;
    let string = |name: &str| -> deltalake::parquet::errors::Result<StringArray> {
        let column = batch.column_by_name(name).ok_or_else(|| {
            deltalake::parquet::errors::ParquetError::General(format!("no column {name}"))
        })?;
        arrow::compute::cast(column, &arrow::datatypes::DataType::Utf8)
            .map(|a| {
                a.as_any()
                    .downcast_ref::<StringArray>()
                    .cloned()
                    .expect("cast to Utf8")
            })
            .map_err(Into::into)
    };
    let ids = string("event_id")?;
    let olds: Vec<StringArray> = patched
        .iter()
        .map(|(k, _)| string(PATCHABLE[*k]))
        .collect::<std::result::Result<_, _>>()?;
    let mut builders: Vec<StringBuilder> = patched.iter().map(|_| StringBuilder::new()).collect();
    for row in 0..batch.num_rows() {
        let new = ids
            .is_valid(row)
            .then(|| patch.rows.get(ids.value(row)))
            .flatten();
        for (((k, _), b), old) in patched.iter().zip(builders.iter_mut()).zip(&olds) {
            match new {
                Some(values) => b.append_option(values[*k].as_deref()),
                None => b.append_option(old.is_valid(row).then(|| old.value(row))),
            }
        }
    }
    Ok(builders
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as ArrayRef)
        .collect())
}

/// The new statistics of the patched columns, over every row group.
#[derive(Default)]
struct PatchStats {
    min: [Option<String>; 3],
    max: [Option<String>; 3],
    nulls: [u64; 3],
}

impl PatchStats {
    fn feed(&mut self, column: usize, array: &ArrayRef) {
        let strings = array
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("patched columns are Utf8");
        self.nulls[column] += strings.null_count() as u64;
        if let Some(min) = arrow::compute::min_string(strings) {
            if self.min[column].as_deref().is_none_or(|m| min < m) {
                self.min[column] = Some(min.to_string());
            }
        }
        if let Some(max) = arrow::compute::max_string(strings) {
            if self.max[column].as_deref().is_none_or(|m| max > m) {
                self.max[column] = Some(max.to_string());
            }
        }
    }

    /// The old file's statistics JSON with the patched columns' entries replaced.
    fn apply(&self, old: Option<&str>, rows: u64, patched: &[bool; 3]) -> Result<String> {
        let mut stats: serde_json::Value = match old {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| Error::runtime(format!("events: file statistics: {e}")))?,
            None => serde_json::json!({}),
        };
        let object = stats
            .as_object_mut()
            .ok_or_else(|| Error::runtime("events: file statistics are not an object"))?;
        object.insert("numRecords".into(), rows.into());
        for key in ["minValues", "maxValues", "nullCount"] {
            if !object.get(key).is_some_and(|v| v.is_object()) {
                object.insert(key.into(), serde_json::json!({}));
            }
        }
        for (k, column) in PATCHABLE.iter().enumerate().filter(|(k, _)| patched[*k]) {
            for (key, value) in [("minValues", &self.min[k]), ("maxValues", &self.max[k])] {
                let map = object[key].as_object_mut().expect("an object");
                match value {
                    Some(v) => map.insert(column.to_string(), v.clone().into()),
                    None => map.remove(*column),
                };
            }
            object["nullCount"]
                .as_object_mut()
                .expect("an object")
                .insert(column.to_string(), self.nulls[k].into());
        }
        Ok(stats.to_string())
    }
}
