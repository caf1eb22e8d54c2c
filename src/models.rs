//! SQL models: the transformation logic of `clean` (and later layers) lives in `.sql` files under
//! `sql/<layer>/`, embedded in the binary and overridable from a directory (`--sql-dir`).
//!
//! A layer is a chain run in file-name order (`01_normalized.sql`, `02_candidates.sql`, …). Each
//! model is one SELECT (CTEs welcome) and is registered as a view named after its file without the
//! numeric prefix, so later models read earlier ones by name, like dbt's `ref()`. The last model is
//! the one materialised. Values such as the session gap are bound parameters (`$session_gap_us`),
//! never spliced into the text.
//!
//! A model whose text starts with the line `-- materialized: memory` is computed once and kept in
//! memory instead of being inlined wherever it is referenced (dbt's `materialized='table'`, for
//! small intermediate results such as the list of duplicated events).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use datafusion::common::ParamValues;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{DataFrame, SessionContext};

use crate::error::{is_sql_mistake, root_message, Error, Result};

/// One SQL model.
#[derive(Debug, Clone)]
pub struct Model {
    /// The view name other models use (`normalized` for `01_normalized.sql`).
    pub name: String,
    /// Where it came from, for messages: `embedded:sql/clean/01_normalized.sql` or a path.
    pub origin: String,
    pub sql: String,
}

impl Model {
    /// True when the model asks to be computed once and kept in memory.
    pub fn in_memory(&self) -> bool {
        self.directive("materialized").as_deref() == Some("memory")
    }

    /// The value of a `-- key: value` line in the model's leading comment block (dbt's
    /// `config()`), e.g. `materialized`, `unique_key`, `partition_by`, `not_null`.
    pub fn directive(&self, key: &str) -> Option<String> {
        directive(&self.sql, key)
    }

    /// A comma-separated directive as a list (empty when absent).
    pub fn directive_list(&self, key: &str) -> Vec<String> {
        self.directive(key)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The value of a `-- key: value` line in a query's leading comment block.
pub fn directive(sql: &str, key: &str) -> Option<String> {
    sql.lines()
        .map(str::trim)
        .take_while(|l| l.is_empty() || l.starts_with("--"))
        .filter_map(|l| l.strip_prefix("--"))
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
}

const CLEAN: &[(&str, &str)] = &[
    (
        "01_normalized.sql",
        include_str!("../sql/clean/01_normalized.sql"),
    ),
    (
        "02_candidates.sql",
        include_str!("../sql/clean/02_candidates.sql"),
    ),
    (
        "03_duplicates.sql",
        include_str!("../sql/clean/03_duplicates.sql"),
    ),
    (
        "04_deduplicated.sql",
        include_str!("../sql/clean/04_deduplicated.sql"),
    ),
    (
        "05_derived_sessions.sql",
        include_str!("../sql/clean/05_derived_sessions.sql"),
    ),
    (
        "06_identities.sql",
        include_str!("../sql/clean/06_identities.sql"),
    ),
    (
        "07_sessionized.sql",
        include_str!("../sql/clean/07_sessionized.sql"),
    ),
];

const STAR: &[(&str, &str)] = &[
    (
        "01_dim_date.sql",
        include_str!("../sql/star/01_dim_date.sql"),
    ),
    (
        "02_dim_segment.sql",
        include_str!("../sql/star/02_dim_segment.sql"),
    ),
    (
        "03_dim_product.sql",
        include_str!("../sql/star/03_dim_product.sql"),
    ),
    (
        "04_fact_sessions.sql",
        include_str!("../sql/star/04_fact_sessions.sql"),
    ),
    (
        "05_fact_cart_lines.sql",
        include_str!("../sql/star/05_fact_cart_lines.sql"),
    ),
    (
        "06_fact_checkout_funnel.sql",
        include_str!("../sql/star/06_fact_checkout_funnel.sql"),
    ),
    (
        "07_fact_orders.sql",
        include_str!("../sql/star/07_fact_orders.sql"),
    ),
    (
        "08_agg_product_daily.sql",
        include_str!("../sql/star/08_agg_product_daily.sql"),
    ),
    (
        "095_user_consent.sql",
        include_str!("../sql/star/095_user_consent.sql"),
    ),
    (
        "098_agg_user_interest.sql",
        include_str!("../sql/star/098_agg_user_interest.sql"),
    ),
    (
        "09_agg_funnel_daily.sql",
        include_str!("../sql/star/09_agg_funnel_daily.sql"),
    ),
    (
        "10_agg_user_features.sql",
        include_str!("../sql/star/10_agg_user_features.sql"),
    ),
    (
        "11_user_segments.sql",
        include_str!("../sql/star/11_user_segments.sql"),
    ),
    (
        "12_dim_user.sql",
        include_str!("../sql/star/12_dim_user.sql"),
    ),
    (
        "13_user_segment_history.sql",
        include_str!("../sql/star/13_user_segment_history.sql"),
    ),
];

/// The embedded models of a layer.
pub fn embedded(layer: &str) -> &'static [(&'static str, &'static str)] {
    match layer {
        "clean" => CLEAN,
        "star" => STAR,
        _ => &[],
    }
}

/// The model chain of `layer`: the embedded files, with any same-named file in
/// `<sql_dir>/<layer>/` replacing its embedded twin and any new file joining the chain.
pub fn load(layer: &str, sql_dir: Option<&Path>) -> Result<Vec<Model>> {
    let mut files: BTreeMap<String, (String, String)> = embedded(layer)
        .iter()
        .map(|(file, sql)| {
            (
                file.to_string(),
                (format!("embedded:sql/{layer}/{file}"), sql.to_string()),
            )
        })
        .collect();
    // A models directory need not override every layer: `<dir>/<layer>/` may be absent.
    if let Some(dir) = sql_dir.filter(|d| !d.is_dir() || d.join(layer).exists()) {
        let dir: PathBuf = dir.join(layer);
        let section = if layer == "star" { "build" } else { layer };
        let entries = std::fs::read_dir(&dir).map_err(|e| {
            Error::config(format!(
                "--sql-dir / [{section}] sql_dir: cannot read {} ({e}); it must hold a {layer}/ \
                 directory of .sql models",
                dir.display()
            ))
        })?;
        for entry in entries {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("sql") {
                continue;
            }
            let file = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| Error::config(format!("{}: not a UTF-8 name", path.display())))?
                .to_string();
            let sql = std::fs::read_to_string(&path)
                .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
            files.insert(file, (path.display().to_string(), sql));
        }
    }
    if files.is_empty() {
        return Err(Error::config(format!("no SQL models for layer {layer}")));
    }
    Ok(files
        .into_iter()
        .map(|(file, (origin, sql))| Model {
            name: view_name(&file),
            origin,
            sql,
        })
        .collect())
}

/// `03_deduplicated.sql` → `deduplicated`.
pub fn view_name(file: &str) -> String {
    let stem = file.strip_suffix(".sql").unwrap_or(file);
    let stem = stem.trim_start_matches(|c: char| c.is_ascii_digit());
    stem.strip_prefix('_').unwrap_or(stem).to_string()
}

/// Plans the chain: every model but the last is registered as a view, the last is returned.
/// A model that does not plan is a configuration error naming its file and the SQL problem.
pub async fn plan_chain(
    ctx: &SessionContext,
    models: &[Model],
    params: &ParamValues,
) -> Result<DataFrame> {
    let mut last = None;
    for (i, model) in models.iter().enumerate() {
        let df = ctx
            .sql_with_options(&model.sql, query_only())
            .await
            .and_then(|df| df.with_param_values(params.clone()))
            .map_err(|e| model_error(model, e))?;
        if i + 1 == models.len() {
            last = Some(df);
        } else if model.in_memory() {
            let df_schema = df.schema().inner().clone();
            let plan = df
                .create_physical_plan()
                .await
                .map_err(|e| model_error(model, e))?;
            tracing::debug!(
                "materializing {} in memory:\n{}",
                model.origin,
                datafusion::physical_plan::displayable(plan.as_ref()).indent(true)
            );
            let stream = datafusion::physical_plan::execute_stream(plan.clone(), ctx.task_ctx())
                .map_err(|e| model_error(model, e))?;
            let (schema, batches) = collect_compact(df_schema, stream)
                .await
                .map_err(|e| model_error(model, e))?;
            tracing::trace!(
                "{} ran:\n{}",
                model.origin,
                datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(
                    plan.as_ref()
                )
                .indent(true)
            );
            let table = datafusion::datasource::MemTable::try_new(schema, vec![batches])
                .map_err(|e| model_error(model, e))?;
            ctx.register_table(model.name.as_str(), std::sync::Arc::new(table))
                .map_err(|e| model_error(model, e))?;
        } else {
            ctx.register_table(model.name.as_str(), df.into_view())
                .map_err(|e| model_error(model, e))?;
        }
    }
    Ok(last.expect("load() never returns an empty chain"))
}

/// Collects a stream in memory with its string views copied into plain strings, batch by batch
/// as they arrive: a view array read from Parquet points into whole decoded pages, so a small
/// result would otherwise keep gigabytes of pages alive (and collecting first, then copying,
/// would hold them all at once).
pub async fn collect_compact(
    schema: arrow::datatypes::SchemaRef,
    stream: datafusion::physical_plan::SendableRecordBatchStream,
) -> datafusion::error::Result<(arrow::datatypes::SchemaRef, Vec<arrow::array::RecordBatch>)> {
    Ok(
        collect_compact_at_most(schema, stream, usize::MAX, usize::MAX)
            .await?
            .expect("no stream has more than usize::MAX rows"),
    )
}

/// [`collect_compact`], unless the stream has more than `max_rows` rows or its compacted batches
/// take more than `max_bytes`: then `None` (the stream is dropped there), so a caller can fall
/// back to streaming.
pub async fn collect_compact_at_most(
    schema: arrow::datatypes::SchemaRef,
    mut stream: datafusion::physical_plan::SendableRecordBatchStream,
    max_rows: usize,
    max_bytes: usize,
) -> datafusion::error::Result<Option<(arrow::datatypes::SchemaRef, Vec<arrow::array::RecordBatch>)>>
{
    use futures::StreamExt;
    let target = plain_strings(&schema);
    let (mut out, mut rows, mut bytes) = (Vec::new(), 0, 0);
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        rows += batch.num_rows();
        if rows > max_rows {
            return Ok(None);
        }
        let batch = compact(&target, &batch)?;
        bytes += batch.get_array_memory_size();
        if bytes > max_bytes {
            return Ok(None);
        }
        out.push(batch);
    }
    Ok(Some((target, out)))
}

/// `schema` with string and binary views as plain strings and binaries.
fn plain_strings(schema: &arrow::datatypes::SchemaRef) -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    let plain = |t: &DataType| match t {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        other => other.clone(),
    };
    std::sync::Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), plain(f.data_type()), f.is_nullable()))
            .collect::<Vec<_>>(),
    ))
}

/// A DataFrame's rows as an in-memory table ([`collect_compact`]), or `None` when there are more
/// than `max_rows` or they take more than `max_bytes` (`usize::MAX`: no limit).
pub async fn memory_table(
    df: datafusion::prelude::DataFrame,
    max_rows: usize,
    max_bytes: usize,
) -> datafusion::error::Result<Option<datafusion::datasource::MemTable>> {
    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
    let stream = df.execute_stream().await?;
    match collect_compact_at_most(schema, stream, max_rows, max_bytes).await? {
        Some((schema, batches)) => Ok(Some(datafusion::datasource::MemTable::try_new(
            schema,
            vec![batches],
        )?)),
        None => Ok(None),
    }
}

/// One batch cast to `target` (see [`plain_strings`]): the views' bytes are copied.
fn compact(
    target: &arrow::datatypes::SchemaRef,
    batch: &arrow::array::RecordBatch,
) -> datafusion::error::Result<arrow::array::RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(target.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                arrow::compute::cast(c, f.data_type())
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(arrow::array::RecordBatch::try_new(target.clone(), columns)?)
}

/// Models and checks are queries. A statement that writes or declares (INSERT, COPY, CREATE,
/// DROP, SET…) in one is refused when it plans, so a customised model or check cannot commit to
/// the lake's tables behind the command running it.
pub fn query_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// A model that does not plan is a configuration error (exit 2); one that fails while running is
/// a runtime error (exit 3). Both name the model's file.
pub fn model_error(model: &Model, e: DataFusionError) -> Error {
    let message = format!("SQL model {}: {}", model.origin, root_message(&e));
    if is_sql_mistake(&e) {
        Error::config(message)
    } else {
        Error::runtime(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_names_drop_the_order_prefix() {
        assert_eq!(view_name("03_deduplicated.sql"), "deduplicated");
        assert_eq!(view_name("normalized.sql"), "normalized");
    }

    #[test]
    fn overrides_replace_and_extend_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("clean")).unwrap();
        std::fs::write(dir.path().join("clean/04_deduplicated.sql"), "SELECT 1").unwrap();
        std::fs::write(dir.path().join("clean/08_extra.sql"), "SELECT 2").unwrap();
        let chain = load("clean", Some(dir.path())).unwrap();
        let names: Vec<&str> = chain.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "normalized",
                "candidates",
                "duplicates",
                "deduplicated",
                "derived_sessions",
                "identities",
                "sessionized",
                "extra"
            ]
        );
        assert_eq!(chain[3].sql, "SELECT 1");
        assert!(chain[2].in_memory() && !chain[3].in_memory());
        assert!(load("clean", Some(&dir.path().join("nope"))).is_err());
    }

    /// Rows are held in memory while they fit the byte budget, string views copied as plain
    /// strings; past it, `None` (the caller then scans them where they are).
    #[tokio::test]
    async fn a_memory_table_holds_rows_within_its_byte_budget() {
        let ctx = SessionContext::new();
        let df = ctx
            .sql("SELECT arrow_cast(concat('visitor-', v), 'Utf8View') AS id FROM unnest(range(20000)) AS t(v)")
            .await
            .unwrap();
        let held = memory_table(df.clone(), usize::MAX, usize::MAX)
            .await
            .unwrap()
            .unwrap();
        let schema = datafusion::catalog::TableProvider::schema(&held);
        assert_eq!(
            schema.field(0).data_type(),
            &arrow::datatypes::DataType::Utf8
        );
        let rows = ctx
            .read_table(std::sync::Arc::new(held))
            .unwrap()
            .count()
            .await
            .unwrap();
        assert_eq!(rows, 20000);
        // 20,000 ids of about 12 bytes cannot fit in 64 KiB, nor in 19,999 rows.
        assert!(memory_table(df.clone(), usize::MAX, 64 << 10)
            .await
            .unwrap()
            .is_none());
        assert!(memory_table(df, 19_999, usize::MAX)
            .await
            .unwrap()
            .is_none());
    }
}
