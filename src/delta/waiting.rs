//! [`Waiting`]: the rows of partitions that have no open file yet, held in memory.
//!
//! An open Parquet file costs about 1.3 MB of memory before it holds a row, and about half a
//! megabyte a column once its pages fill (see [`OPEN_COLUMN_BYTES`]). Writing a year's backfill
//! held a file open for each of its 731 day × segment partitions at once, 1.1 GB under
//! `--memory-limit 1GiB`. [`super::TableSink`] therefore opens
//! a partition's file only once [`OPEN_AT`] bytes of its rows have arrived; until then they wait
//! here, and partitions that never get there are written one at a time, each to a file of its
//! own, closed before the next one opens.

use std::collections::HashMap;

use arrow::array::{Array, RecordBatch};
use datafusion::common::ScalarValue;

use crate::error::{Error, Result};

/// Bytes of a partition's rows (Arrow memory) after which its file is opened and its rows
/// stream into it.
pub(super) const OPEN_AT: usize = 4 << 20;

/// About what an open partition file costs in memory for each column it writes, once its pages
/// have filled, beyond the compressed pages the writer counts itself: the column's page buffer
/// (up to a megabyte before compression), a zstd compression context sized for that page and a
/// decompression context (parquet's codec holds both), encoders (a delta encoder starts at
/// 1 MB). Measured with heaptrack: at the peak of a 1M-event `clean` under `--memory-limit
/// 256MiB`, 13 open `events` files (33 columns) held 235 MB in Parquet's writers, 0.55 MB a
/// column. (Empty, a file of 27 columns costs 1.3 MB.)
pub(super) const OPEN_COLUMN_BYTES: usize = 512 << 10;

/// A partition's values, as its rows hold them.
pub(super) type PartitionKey = Vec<ScalarValue>;

/// The values of `columns` in the first row of `batch` (not empty), whose rows all belong to
/// one partition.
pub(super) fn partition_key(batch: &RecordBatch, columns: &[String]) -> Result<PartitionKey> {
    columns
        .iter()
        .map(|name| {
            let column = batch.column_by_name(name).ok_or_else(|| {
                Error::runtime(format!("a batch to write has no partition column {name}"))
            })?;
            Ok(ScalarValue::try_from_array(column, 0)?)
        })
        .collect()
}

#[derive(Default)]
pub(super) struct Waiting {
    parts: HashMap<PartitionKey, Part>,
    bytes: usize,
}

#[derive(Default)]
struct Part {
    batches: Vec<RecordBatch>,
    bytes: usize,
}

impl Waiting {
    /// Holds `batch`, rows of partition `key`; returns the bytes now waiting for that partition.
    /// A batch that is a small view of larger buffers is copied first, so that it does not keep
    /// them alive.
    pub fn add(&mut self, key: PartitionKey, batch: RecordBatch) -> Result<usize> {
        let bytes = slice_bytes(&batch)?;
        let batch = if batch.get_array_memory_size() > 2 * bytes + (64 << 10) {
            let all = arrow::array::UInt32Array::from_iter_values(0..batch.num_rows() as u32);
            arrow::compute::take_record_batch(&batch, &all)?
        } else {
            batch
        };
        let part = self.parts.entry(key).or_default();
        part.batches.push(batch);
        part.bytes += bytes;
        self.bytes += bytes;
        Ok(part.bytes)
    }

    /// The rows waiting for partition `key` (none if nothing waits), in the order they came,
    /// as one batch.
    pub fn take(&mut self, key: &PartitionKey) -> Result<Option<RecordBatch>> {
        let Some(part) = self.parts.remove(key) else {
            return Ok(None);
        };
        self.bytes -= part.bytes;
        Ok(Some(match part.batches.as_slice() {
            [one] => one.clone(),
            batches => arrow::compute::concat_batches(&batches[0].schema(), batches)?,
        }))
    }

    /// Bytes waiting, over every partition.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The partitions with rows waiting, those with the most bytes first.
    pub fn largest_first(&self) -> Vec<PartitionKey> {
        let mut keys: Vec<(&PartitionKey, usize)> =
            self.parts.iter().map(|(k, p)| (k, p.bytes)).collect();
        keys.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
        keys.into_iter().map(|(k, _)| k.clone()).collect()
    }
}

/// The bytes of the rows of `batch`: of its slices of its buffers, not of the buffers.
fn slice_bytes(batch: &RecordBatch) -> Result<usize> {
    let mut bytes = 0;
    for column in batch.columns() {
        bytes += column.to_data().get_slice_memory_size()?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(ids: std::ops::Range<i64>, p: &str) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("p", DataType::Utf8, true),
        ]));
        let n = (ids.end - ids.start) as usize;
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(ids)),
                Arc::new(StringArray::from(vec![p; n])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn rows_wait_by_partition_and_come_back_in_order_as_one_batch() {
        let mut waiting = Waiting::default();
        let a = partition_key(&batch(0..1, "a"), &["p".into()]).unwrap();
        let b = partition_key(&batch(0..1, "b"), &["p".into()]).unwrap();
        assert_ne!(a, b);
        waiting.add(a.clone(), batch(0..10, "a")).unwrap();
        let after_b = waiting.add(b.clone(), batch(100..1000, "b")).unwrap();
        let after_a = waiting.add(a.clone(), batch(10..20, "a")).unwrap();
        assert!(after_b > after_a, "{after_b} {after_a}");
        assert_eq!(waiting.bytes(), after_a + after_b);
        assert_eq!(waiting.largest_first(), vec![b.clone(), a.clone()]);

        let rows = waiting.take(&a).unwrap().unwrap();
        let ids = rows
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.values().to_vec(), (0..20).collect::<Vec<i64>>());
        assert_eq!(waiting.bytes(), after_b);
        assert!(waiting.take(&a).unwrap().is_none());
        assert_eq!(waiting.take(&b).unwrap().unwrap().num_rows(), 900);
        assert_eq!(waiting.bytes(), 0);
    }

    #[test]
    fn a_small_view_of_a_large_batch_is_counted_and_kept_by_its_own_rows() {
        let mut waiting = Waiting::default();
        let large = batch(0..100_000, "a");
        let view = large.slice(10, 5);
        let key = partition_key(&view, &["p".into()]).unwrap();
        let bytes = waiting.add(key.clone(), view).unwrap();
        assert!(bytes < 1_000, "counted {bytes} bytes for 5 rows");
        let kept = waiting.take(&key).unwrap().unwrap();
        assert!(
            kept.get_array_memory_size() < 10_000,
            "a 5-row view holds {} bytes",
            kept.get_array_memory_size()
        );
        let ids = kept
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.values().to_vec(), vec![10, 11, 12, 13, 14]);
    }
}
