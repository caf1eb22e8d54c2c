//! Tables of small files are read whole, without Parquet's own pruning.
//!
//! A lake fed from cron for a year holds hundreds of day × segment partitions of a few hundred
//! rows each. Before reading a file, DataFusion prunes it with the scan's predicate three ways:
//! the row groups' statistics, the page index (one more read per file) and the bloom filters. In
//! a file of one row group and one page per column, statistics and page index say no more than
//! the file's statistics in the Delta log (which already chose the files), yet they cost more
//! than reading the file. On a lake of 733 `events` files of 270 rows (debug build):
//!
//! - `count(*) WHERE event_type = 'consent_granted'`: 0.51–0.62 s with them, 0.33–0.38 s without;
//! - a cron tick of 120 events (`run`): 12.5–13.9 s with them, 10.5–11.4 s without (build
//!   6.6–7.5 s against 5.1–5.8 s, check 4.3–4.8 s against 3.8–4.0 s).
//!
//! The bloom filters are kept for a scan that looks their column up (a visitor's events): they
//! rule out all but a few files, which on an object store saves a request for each (locally,
//! 0.40 s with them against 0.34–0.36 s without and 0.47–0.57 s with all three). On the
//! 1M-event lake (26 `events` files of 38K rows) a scan takes 0.04–0.07 s either way, so tables
//! of larger files keep all three.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Constraints, Statistics};
use datafusion::datasource::TableType;
use datafusion::error::Result;
use datafusion::execution::SessionState;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use deltalake::DeltaTable;

/// Files of at most this many rows on average are read whole. Parquet writers start a new page
/// every 20,000 rows (arrow-rs's default), so below it a file is mostly one row group of one page
/// per column: its statistics are the file's.
pub const SMALL_FILE_ROWS: u64 = 20_000;

/// `provider`, reading whole files when `table`'s are small on average (see the module).
pub fn for_table(table: &DeltaTable, provider: Arc<dyn TableProvider>) -> Arc<dyn TableProvider> {
    match small_files(table) {
        true => Arc::new(WholeFiles(provider)),
        false => provider,
    }
}

/// Whether `table`'s files hold at most [`SMALL_FILE_ROWS`] rows on average (files without
/// statistics count as large).
fn small_files(table: &DeltaTable) -> bool {
    let Ok(snapshot) = table.snapshot() else {
        return false;
    };
    let (mut files, mut rows) = (0u64, 0u64);
    for file in snapshot.log_data().iter() {
        let Some(n) = file.num_records() else {
            return false;
        };
        files += 1;
        rows += n as u64;
    }
    files > 0 && rows <= files.saturating_mul(SMALL_FILE_ROWS)
}

/// A table provider whose scans leave out row-group statistics, the page index and bloom filters
/// (see [`without_pruning`]).
#[derive(Debug)]
pub struct WholeFiles(Arc<dyn TableProvider>);

/// `state` with Parquet's pruning switched off (filters are still pushed into the decoder),
/// except the bloom filters of a column `filters` look up: they are written for that.
fn without_pruning(state: &dyn Session, filters: &[Expr]) -> Option<SessionState> {
    let mut state = state.as_any().downcast_ref::<SessionState>()?.clone();
    let looks_up_bloom_filtered = filters.iter().any(|f| {
        f.column_refs()
            .iter()
            .any(|c| crate::delta::BLOOM_FILTERED.contains(&c.name.as_str()))
    });
    let parquet = &mut state.config_mut().options_mut().execution.parquet;
    parquet.pruning = false;
    parquet.enable_page_index = false;
    if !looks_up_bloom_filtered {
        parquet.bloom_filter_on_read = false;
    }
    Some(state)
}

#[async_trait]
impl TableProvider for WholeFiles {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.0.constraints()
    }

    fn table_type(&self) -> TableType {
        self.0.table_type()
    }

    fn get_table_definition(&self) -> Option<&str> {
        self.0.get_table_definition()
    }

    fn get_logical_plan(&'_ self) -> Option<Cow<'_, LogicalPlan>> {
        self.0.get_logical_plan()
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.0.get_column_default(column)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match without_pruning(state, filters) {
            Some(whole) => self.0.scan(&whole, projection, filters, limit).await,
            None => self.0.scan(state, projection, filters, limit).await,
        }
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.0.supports_filters_pushdown(filters)
    }

    fn statistics(&self) -> Option<Statistics> {
        self.0.statistics()
    }

    async fn insert_into(
        &self,
        state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.0.insert_into(state, input, insert_op).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
    use deltalake::kernel::StructType;

    use deltalake::writer::DeltaWriter;

    /// A table of `v` in `dir` holding one file per entry of `files`, of that many rows (0, 1,
    /// 2…), written with the lake's Parquet settings (page statistics, page index).
    async fn table_of_files(dir: &std::path::Path, files: &[i64]) -> deltalake::DeltaTable {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let kernel: StructType = schema.as_ref().try_into_kernel().unwrap();
        let mut table = deltalake::operations::create::CreateBuilder::new()
            .with_location(url::Url::from_directory_path(dir).unwrap().to_string())
            .with_columns(kernel.fields().cloned())
            .await
            .unwrap();
        for &rows in files {
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from_iter_values(0..rows))],
            )
            .unwrap();
            let props = crate::delta::writer_properties(3, 1_000_000).unwrap();
            let mut w = crate::delta::writer(&table, props, 1 << 30).unwrap();
            w.write(batch).await.unwrap();
            let adds = w.flush().await.unwrap();
            crate::delta::commit_append(&mut table, adds, Vec::new(), Default::default())
                .await
                .unwrap();
        }
        table
    }

    /// The count of `v = 5` through the lake's provider, and the scan's metrics.
    async fn count_fives(table: &deltalake::DeltaTable) -> (String, String) {
        let ctx = crate::catalog::session(256 << 20).unwrap();
        let provider = crate::catalog::provider(&ctx, table).await.unwrap();
        ctx.register_table("t", provider).unwrap();
        let count = ctx
            .sql("SELECT count(*) FROM t WHERE v = 5")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let analyzed = ctx
            .sql("EXPLAIN ANALYZE SELECT count(*) FROM t WHERE v = 5")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        (
            arrow::util::pretty::pretty_format_batches(&count)
                .unwrap()
                .to_string(),
            arrow::util::pretty::pretty_format_batches(&analyzed)
                .unwrap()
                .to_string(),
        )
    }

    #[tokio::test]
    async fn small_files_are_read_without_parquet_pruning_and_large_ones_with_it() {
        let small_dir = tempfile::tempdir().unwrap();
        let small = table_of_files(small_dir.path(), &[100, 100, 100]).await;
        assert!(super::small_files(&small));
        let (count, metrics) = count_fives(&small).await;
        assert!(count.contains("| 3 "), "{count}");
        // The page index was not read: it weighed no row.
        assert!(
            metrics.contains("page_index_rows_pruned=0 total"),
            "{metrics}"
        );

        let large_dir = tempfile::tempdir().unwrap();
        let large = table_of_files(large_dir.path(), &[25_000]).await;
        assert!(!super::small_files(&large));
        let (count, metrics) = count_fives(&large).await;
        assert!(count.contains("| 1 "), "{count}");
        assert!(
            !metrics.contains("page_index_rows_pruned=0 total"),
            "{metrics}"
        );
    }

    #[test]
    fn a_lookup_of_a_bloom_filtered_column_keeps_the_bloom_filters() {
        use datafusion::prelude::{col, lit};
        let ctx = crate::catalog::session(256 << 20).unwrap();
        let state = ctx.state();
        for (filter, bloom) in [
            (col("anonymous_id").eq(lit("a-1")), true),
            (col("event_type").eq(lit("purchase")), false),
        ] {
            let whole = super::without_pruning(&state, std::slice::from_ref(&filter)).unwrap();
            let parquet = &whole.config().options().execution.parquet;
            assert!(!parquet.pruning && !parquet.enable_page_index, "{filter}");
            assert_eq!(parquet.bloom_filter_on_read, bloom, "{filter}");
        }
    }
}
