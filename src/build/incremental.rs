//! How an incremental model's new rows meet the table's current files: the rows of the changed
//! keys, the files holding those keys' current rows, and which of those files are patched
//! (changed string columns re-encoded, see [`crate::patch`]) rather than rewritten.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{DataType, Field};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;

use super::FILE_COLUMN;
use crate::catalog;
use crate::delta;
use crate::error::{Error, Result};

/// The rows of `batch` whose `column` is NULL or one of `keys` (as text), and how many others.
pub(super) fn rows_of_keys(
    batch: &RecordBatch,
    column: &str,
    keys: &HashSet<String>,
) -> Result<(RecordBatch, u64)> {
    rows_by_keys(batch, column, keys, true)
}

/// The rows of `batch` whose `column` is NULL, or one of `keys` when `listed` (else not one of
/// them), and how many others.
pub(super) fn rows_by_keys(
    batch: &RecordBatch,
    column: &str,
    keys: &HashSet<String>,
    listed: bool,
) -> Result<(RecordBatch, u64)> {
    let Some(values) = batch.column_by_name(column) else {
        return Ok((batch.clone(), 0));
    };
    // Rows whose key is NULL stay, as in a full build.
    let keep: arrow::array::BooleanArray = delta::key_in(values, keys)?
        .iter()
        .map(|within| Some(within.is_none_or(|w| w == listed)))
        .collect();
    let dropped = keep.false_count() as u64;
    if dropped == 0 {
        return Ok((batch.clone(), 0));
    }
    Ok((arrow::compute::filter_record_batch(batch, &keep)?, dropped))
}

/// The data files of `table` holding a row whose `column` is in `changed_keys`.
pub(super) async fn files_holding(
    ctx: &SessionContext,
    table: &DeltaTable,
    column: &str,
) -> Result<Vec<String>> {
    let provider = catalog::provider_with_file_column(table).await?;
    let _ = ctx.deregister_table("current_files");
    ctx.register_table("current_files", provider)?;
    let batches = ctx
        .sql(&format!(
            "SELECT DISTINCT CAST(t.{FILE_COLUMN} AS VARCHAR) FROM changed_keys k \
             JOIN current_files t ON {}",
            key_join("t", column)
        ))
        .await?
        .collect()
        .await?;
    let _ = ctx.deregister_table("current_files");
    let mut out = Vec::new();
    for b in batches {
        out.extend(catalog::strings(b.column(0))?.into_iter().flatten());
    }
    Ok(out)
}

/// At most this many rows of an incremental model's output are held in memory to patch files
/// with; a larger change (a backfill) rewrites the files.
pub(super) const PATCH_ROWS_MAX: usize = 200_000;

/// How an incremental model's new rows meet the files holding their keys' current rows.
#[derive(Default)]
pub(super) struct PatchPlan {
    /// Files whose changed rows differ only in string columns outside the partition: patched.
    pub(super) patches: HashMap<String, crate::patch::ColumnPatch>,
    /// The keys whose new rows the patches carry, or that equal their current rows (a file
    /// whose every changed row is unchanged stays as it is).
    pub(super) carried: HashSet<String>,
    /// Files rewritten without the changed keys' rows.
    pub(super) rewrite: Vec<String>,
}

/// Compares the new rows (`new_rows`, in the table's schema) with the current rows of the
/// changed keys (`changed_keys`), file by file. A file is patched when each of its changed keys
/// has exactly one current row (in no other file) and exactly one new row, and those differ only
/// in string columns that are neither the key nor a partition column; anything else rewrites it.
/// A table with several new rows for a key is not compared: every file holding a key is
/// rewritten.
pub(super) async fn plan_patches(
    ctx: &SessionContext,
    table: &DeltaTable,
    column: &str,
    new_rows: &[RecordBatch],
) -> Result<PatchPlan> {
    let snapshot = table.snapshot()?;
    let schema = snapshot.snapshot().arrow_schema();
    let partitions = snapshot.metadata().partition_columns().to_vec();
    let compared: Vec<&Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref())
        .filter(|f| f.name() != column)
        .collect();
    let patchable: Vec<bool> = compared
        .iter()
        .map(|f| f.data_type() == &DataType::Utf8 && !partitions.contains(f.name()))
        .collect();
    // The new rows by key, to take the patched values from.
    let mut new_at: HashMap<String, (usize, usize)> = HashMap::new();
    for (i, b) in new_rows.iter().enumerate() {
        let keys = catalog::utf8(
            b.column_by_name(column)
                .ok_or_else(|| Error::runtime(format!("build: no column {column}")))?,
        )?;
        for r in 0..b.num_rows() {
            if keys.is_valid(r) && new_at.insert(keys.value(r).to_string(), (i, r)).is_some() {
                // Several rows a key (a table finer than its unique_key, such as daily
                // product metrics by date): rows cannot be matched one to one.
                return Ok(PatchPlan {
                    rewrite: files_holding(ctx, table, column).await?,
                    ..Default::default()
                });
            }
        }
    }
    let provider = catalog::provider_with_file_column(table).await?;
    let _ = ctx.deregister_table("current_rows");
    ctx.register_table("current_rows", provider)?;
    let _ = ctx.deregister_table("patch_new");
    ctx.register_table(
        "patch_new",
        Arc::new(MemTable::try_new(schema.clone(), vec![new_rows.to_vec()])?),
    )?;
    let differs: Vec<String> = compared
        .iter()
        .enumerate()
        .map(|(i, f)| format!("(o.\"{0}\" IS DISTINCT FROM n.\"{0}\") AS __d{i}", f.name()))
        .collect();
    let batches = ctx
        .sql(&format!(
            "SELECT CAST(o.{FILE_COLUMN} AS VARCHAR) AS __file, \
             CAST(o.\"{column}\" AS VARCHAR) AS __key, n.\"{column}\" IS NOT NULL AS __has_new, {} \
             FROM changed_keys k JOIN current_rows o ON {} \
             LEFT JOIN patch_new n ON o.\"{column}\" = n.\"{column}\"",
            differs.join(", "),
            key_join("o", column)
        ))
        .await?
        .collect()
        .await?;
    let _ = ctx.deregister_table("current_rows");
    let _ = ctx.deregister_table("patch_new");

    // Per file: its keys (with how many rows each), whether each has a new row, which columns
    // differ.
    #[derive(Default)]
    struct Seen {
        keys: HashMap<String, usize>,
        all_new: bool,
        differs: Vec<bool>,
    }
    let mut files: HashMap<String, Seen> = HashMap::new();
    let mut files_of_key: HashMap<String, usize> = HashMap::new();
    for b in &batches {
        let file = catalog::utf8(b.column(0))?;
        let key = catalog::utf8(b.column(1))?;
        let has_new = b
            .column(2)
            .as_any()
            .downcast_ref::<arrow::array::BooleanArray>()
            .ok_or_else(|| Error::runtime("build: __has_new is not boolean"))?;
        let flags: Vec<&arrow::array::BooleanArray> = (0..compared.len())
            .map(|i| {
                b.column(3 + i)
                    .as_any()
                    .downcast_ref::<arrow::array::BooleanArray>()
                    .ok_or_else(|| Error::runtime("build: a comparison is not boolean"))
            })
            .collect::<Result<_>>()?;
        for r in 0..b.num_rows() {
            if file.is_null(r) || key.is_null(r) {
                continue;
            }
            let seen = files
                .entry(file.value(r).to_string())
                .or_insert_with(|| Seen {
                    all_new: true,
                    differs: vec![false; compared.len()],
                    ..Default::default()
                });
            let n = seen.keys.entry(key.value(r).to_string()).or_insert(0);
            if *n == 0 {
                *files_of_key.entry(key.value(r).to_string()).or_insert(0) += 1;
            }
            *n += 1;
            seen.all_new &= has_new.is_valid(r) && has_new.value(r);
            for (d, f) in seen.differs.iter_mut().zip(&flags) {
                *d |= f.is_valid(r) && f.value(r);
            }
        }
    }
    if files.is_empty() {
        return Ok(PatchPlan::default());
    }

    // The patchable columns of the new rows, as text (the others are never read).
    let texts: Vec<Vec<arrow::array::StringArray>> = new_rows
        .iter()
        .map(|b| {
            compared
                .iter()
                .zip(&patchable)
                .map(|(f, &p)| match p {
                    true => catalog::utf8(b.column(b.schema().index_of(f.name())?)),
                    false => Ok(arrow::array::StringArray::new_null(0)),
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    let mut plan = PatchPlan::default();
    for (file, seen) in files {
        let single = seen
            .keys
            .iter()
            .all(|(k, &n)| n == 1 && files_of_key[k] == 1);
        let fits = seen.differs.iter().zip(&patchable).all(|(&d, &p)| !d || p);
        if !(seen.all_new && single && fits) {
            plan.rewrite.push(file);
            continue;
        }
        let columns: Vec<usize> = (0..compared.len()).filter(|&i| seen.differs[i]).collect();
        plan.carried.extend(seen.keys.keys().cloned());
        if columns.is_empty() {
            continue;
        }
        let mut rows = HashMap::with_capacity(seen.keys.len());
        for key in seen.keys.into_keys() {
            let &(i, r) = new_at
                .get(&key)
                .ok_or_else(|| Error::runtime(format!("build: no new row for key {key}")))?;
            let values = columns
                .iter()
                .map(|&c| {
                    let array = &texts[i][c];
                    array.is_valid(r).then(|| array.value(r).to_string())
                })
                .collect();
            rows.insert(key, values);
        }
        let names = columns
            .iter()
            .map(|&c| compared[c].name().clone())
            .collect();
        plan.patches.insert(
            file,
            crate::patch::ColumnPatch {
                columns: names,
                rows,
            },
        );
    }
    Ok(plan)
}

/// The join of `changed_keys k` (keys recorded as text) to column `column` of `alias`.
pub(super) fn key_join(alias: &str, column: &str) -> String {
    if column == "event_date" {
        format!("{alias}.{column} = CAST(k.key AS DATE)")
    } else {
        format!("{alias}.{column} = k.key")
    }
}
