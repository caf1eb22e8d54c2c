//! Column patches of Delta table files.
//!
//! When the rows an incremental run changes in a file keep their partition and differ from
//! their current versions only in a few string columns (a visitor's first login stitches their
//! whole history; their sessions change customer), rewriting the file decodes and encodes every
//! row. A patch instead writes a new file whose changed columns are re-encoded with the new
//! values, while every other column chunk (with its page index) is copied byte for byte from the
//! current file. The new file replaces the old one in the run's single commit, like any
//! rewritten file. `clean` patches `events`, `build` the star tables keyed one row per key.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, StringBuilder};
use arrow::datatypes::SchemaRef;
use deltalake::kernel::Add;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::parquet::arrow::arrow_writer::{compute_leaves, ArrowRowGroupWriterFactory};
use deltalake::parquet::arrow::{parquet_to_arrow_schema, ProjectionMask};
use deltalake::parquet::bloom_filter::Sbbf;
use deltalake::parquet::column::writer::ColumnCloseResult;
use deltalake::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::parquet::file::writer::SerializedFileWriter;
use deltalake::DeltaTable;
use futures::StreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt;

use crate::delta::{self, table_relative_path};
use crate::error::{Error, Result};

/// The rows to patch in one file.
#[derive(Debug, Default)]
pub struct ColumnPatch {
    /// The string columns re-encoded: those that differ from the file's in at least one of the
    /// patched rows.
    pub columns: Vec<String>,
    /// By key (as text): the new values of `columns` in the row holding that key.
    pub rows: HashMap<String, Vec<Option<String>>>,
}

/// Where a table's files are patched: its name and the column that finds a patched row.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub table: &'a str,
    pub key: &'a str,
}

/// What replaced some keys' current rows in a table: the new files (the patched ones; rows
/// copied out of rewritten files went to the sink) and the removes of the files they replace.
#[derive(Default)]
pub struct Replaced {
    pub adds: Vec<Add>,
    pub removes: Vec<deltalake::kernel::Action>,
    pub files_patched: u64,
    pub rows_patched: u64,
    pub rows_copied: u64,
}

/// The files holding current rows of some keys, and what becomes of them.
pub struct Replacement<'a> {
    /// Files patched in place, with their rows' new values.
    pub patches: HashMap<String, ColumnPatch>,
    /// Files rewritten: every row but those of the keys in `drop` is copied.
    pub rewrite: &'a [String],
    pub drop: &'a std::collections::HashSet<String>,
}

/// Replaces the current rows of some keys: each file of `patches` is patched in place; every
/// file of `rewrite` has its other rows copied into `sink` (the new rows of those keys go there
/// too, written by the caller). `clean` and `build` end an incremental run so.
pub async fn replace(
    ctx: &datafusion::prelude::SessionContext,
    table: &DeltaTable,
    target: Target<'_>,
    replacement: Replacement<'_>,
    sink: &mut delta::TableSink,
    (props, memory_limit): (&WriterProperties, u64),
) -> Result<Replaced> {
    let Replacement {
        patches,
        rewrite,
        drop,
    } = replacement;
    let mut out = Replaced::default();
    if !patches.is_empty() {
        let files: Vec<String> = patches.keys().cloned().collect();
        out.files_patched = files.len() as u64;
        out.rows_patched = patches.values().map(|p| p.rows.len() as u64).sum();
        out.adds = patch_files(table, target, patches, props, memory_limit).await?;
        out.removes = delta::remove_actions(table, &files, target.table)?;
    }
    if !rewrite.is_empty() {
        out.rows_copied =
            delta::copy_rows_except(ctx, table, rewrite, target.key, drop, sink).await?;
        out.removes
            .extend(delta::remove_actions(table, rewrite, target.table)?);
    }
    Ok(out)
}

/// Patches every file of `patches` and returns the new files' Adds. Two files at a time, each
/// on a task of its own (decoding and encoding take a core), when the memory budget allows: a
/// patch holds its file and the new copy in memory.
pub async fn patch_files(
    table: &DeltaTable,
    target: Target<'_>,
    patches: HashMap<String, ColumnPatch>,
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
    let (name, key) = (target.table.to_string(), target.key.to_string());
    let mut patching = futures::stream::iter(patches.into_iter().map(|(file, patch)| {
        let (table, props, name, key) = (table.clone(), props.clone(), name.clone(), key.clone());
        tokio::spawn(async move {
            let target = Target {
                table: &name,
                key: &key,
            };
            patch_file(&table, target, &file, &patch, &props).await
        })
    }))
    .buffer_unordered(parallel);
    let mut adds = Vec::new();
    while let Some(patched) = patching.next().await {
        let (add, _) = patched
            .map_err(|e| Error::runtime(format!("patching {} files: {e}", target.table)))??;
        adds.push(add);
    }
    Ok(adds)
}

/// Writes the patched copy of `file_id` (a scan file id of `table`) and returns its Add (the
/// old file's partition values, its other columns' statistics) and its row count.
pub async fn patch_file(
    table: &DeltaTable,
    target: Target<'_>,
    file_id: &str,
    patch: &ColumnPatch,
    props: &WriterProperties,
) -> Result<(Add, u64)> {
    let table_name = target.table;
    let rel = table_relative_path(file_id, table_name);
    let (partition_values, old_stats) = table
        .snapshot()?
        .log_data()
        .iter()
        .find(|f| f.path() == rel.as_str())
        .map(|f| (f.remove_action(true).partition_values, f.stats()))
        .ok_or_else(|| {
            Error::runtime(format!("{table_name}: file {rel} is not in the table log"))
        })?;
    let store = table.log_store().object_store(None);
    let bytes = store.get(&Path::from(rel.as_str())).await?.bytes().await?;
    let failed =
        |e: &dyn std::fmt::Display| Error::runtime(format!("{table_name}: patching {rel}: {e}"));

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
    let key_at = leaf(target.key)?;
    // The patched columns: (index in patch.columns, leaf column).
    let patched: Vec<(usize, usize)> = patch
        .columns
        .iter()
        .enumerate()
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
    let mut stats = PatchStats::new(patch.columns.len());
    let mut rows = 0u64;
    for rg in 0..metadata.num_row_groups() {
        let new_columns = patched_columns(&bytes, &metadata, rg, key_at, &patched, patch)
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
                    // A copied column keeps its bloom filter (the values did not change).
                    bloom_filter: Sbbf::read_from_column_chunk(chunk, &bytes)
                        .map_err(|e| failed(&e))?,
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
        stats: Some(stats.apply(table_name, old_stats.as_deref(), rows, &patch.columns)?),
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
        clustering_provider: None,
    };
    Ok((add, rows))
}

/// One row group's `patched` columns ((index in `patch.columns`, leaf column)) with the new
/// values of the patched rows.
fn patched_columns(
    bytes: &bytes::Bytes,
    metadata: &ParquetMetaData,
    rg: usize,
    key_at: usize,
    patched: &[(usize, usize)],
    patch: &ColumnPatch,
) -> deltalake::parquet::errors::Result<Vec<ArrayRef>> {
    let mut leaves = vec![key_at];
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
    let key_name = metadata
        .file_metadata()
        .schema_descr()
        .column(key_at)
        .name()
        .to_string();
    let ids = string(&key_name)?;
    let olds: Vec<StringArray> = patched
        .iter()
        .map(|(k, _)| string(&patch.columns[*k]))
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
struct PatchStats {
    min: Vec<Option<String>>,
    max: Vec<Option<String>>,
    nulls: Vec<u64>,
}

impl PatchStats {
    fn new(columns: usize) -> Self {
        PatchStats {
            min: vec![None; columns],
            max: vec![None; columns],
            nulls: vec![0; columns],
        }
    }

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
    fn apply(
        &self,
        table: &str,
        old: Option<&str>,
        rows: u64,
        columns: &[String],
    ) -> Result<String> {
        let mut stats: serde_json::Value = match old {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| Error::runtime(format!("{table}: file statistics: {e}")))?,
            None => serde_json::json!({}),
        };
        let object = stats
            .as_object_mut()
            .ok_or_else(|| Error::runtime(format!("{table}: file statistics are not an object")))?;
        object.insert("numRecords".into(), rows.into());
        for key in ["minValues", "maxValues", "nullCount"] {
            if !object.get(key).is_some_and(|v| v.is_object()) {
                object.insert(key.into(), serde_json::json!({}));
            }
        }
        for (k, column) in columns.iter().enumerate() {
            for (key, value) in [("minValues", &self.min[k]), ("maxValues", &self.max[k])] {
                let map = object[key].as_object_mut().expect("an object");
                match value {
                    Some(v) => map.insert(column.clone(), v.clone().into()),
                    None => map.remove(column),
                };
            }
            object["nullCount"]
                .as_object_mut()
                .expect("an object")
                .insert(column.clone(), self.nulls[k].into());
        }
        Ok(stats.to_string())
    }
}
