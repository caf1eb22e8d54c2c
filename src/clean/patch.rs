//! Which `events` files an incremental clean patches (see [`crate::patch`]).
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

use arrow::array::{Array, BooleanArray, RecordBatch};

use super::FILE_COLUMN;
use crate::catalog;
use crate::delta::TableSink;
use crate::error::{Error, Result};
use crate::patch::ColumnPatch;

/// The columns a patch may change: stitching and sessionization. A changed row that differs
/// from its current version in any other column (or partition) goes to a full rewrite.
pub const PATCHABLE: [&str; 3] = catalog::IDENTITY_COLUMNS;

/// The rows to patch in one file, as [`plan`] gathers them.
#[derive(Debug, Default)]
struct FilePatch {
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
) -> Result<HashMap<String, ColumnPatch>> {
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
    // Only the columns that differ in some row of a file are re-encoded (a first login changes
    // `stitched_user_id` alone).
    Ok(patches
        .into_iter()
        .map(|(file, patch)| {
            let keep: Vec<usize> = (0..PATCHABLE.len()).filter(|&k| patch.differs[k]).collect();
            let columns = keep.iter().map(|&k| PATCHABLE[k].to_string()).collect();
            let rows = patch
                .rows
                .into_iter()
                .map(|(id, values)| (id, keep.iter().map(|&k| values[k].clone()).collect()))
                .collect();
            (file, ColumnPatch { columns, rows })
        })
        .collect())
}
