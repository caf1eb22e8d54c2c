//! The memory pool of a run: DataFusion's fair spill pool, except that `RepartitionExec` never
//! spills.
//!
//! DataFusion 55.2 can deadlock under a memory limit when a `RepartitionExec` spills: two input
//! tasks spill at once, its spill pool holds two open files, the reader waits on the older file
//! while the batch it needs is in the newer one, and every thread parks for good
//! (apache/datafusion#24883, fixed upstream after 55 by #24891). `clean --full-refresh` of 10M
//! events under `--memory-limit 1GiB` hung that way.
//!
//! So this pool grants a repartition's reservations without checking the limit and counts them
//! beside the fair pool; every other operator (aggregations, sorts, joins) still spills within
//! its fair share, as before. A repartition's buffer is small while its consumers keep up: its
//! channels hold a batch or so per output partition. Behind a slow consumer it grows
//! (apache/datafusion#22090): the clean's partitioned joins held 1.9 GB of the wide event stream
//! at 10M, so the clean builds its joins on their small side instead, and `clean -vv` logs the
//! peak (192 MB there since).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::common::Result;
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

#[derive(Debug)]
pub struct RunPool {
    inner: FairSpillPool,
    limit: usize,
    /// Bytes held by repartition buffers, outside the fair pool.
    repartition: AtomicUsize,
    /// The most they held at once.
    repartition_peak: AtomicUsize,
}

impl RunPool {
    pub fn new(limit: usize) -> Self {
        RunPool {
            inner: FairSpillPool::new(limit),
            limit,
            repartition: AtomicUsize::new(0),
            repartition_peak: AtomicUsize::new(0),
        }
    }

    /// The most bytes repartition buffers held at once (they are outside the limit).
    pub fn repartition_peak(&self) -> usize {
        self.repartition_peak.load(Ordering::Relaxed)
    }

    fn add_repartition(&self, bytes: usize) {
        let now = self.repartition.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.repartition_peak.fetch_max(now, Ordering::Relaxed);
    }
}

/// The spillable reservations of a `RepartitionExec` output partition (named
/// `RepartitionExec[N]`; its merge reservations cannot spill and stay in the pool).
fn is_repartition_buffer(consumer: &MemoryConsumer) -> bool {
    consumer.can_spill() && consumer.name().starts_with("RepartitionExec[")
}

impl fmt::Display for RunPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RunPool({} bytes, repartitions never spill)", self.limit)
    }
}

impl MemoryPool for RunPool {
    fn name(&self) -> &str {
        "clicklake-run"
    }

    // Repartition buffers stay registered, so the fair shares of the operators that spill are
    // what they were with the plain fair pool.
    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        if is_repartition_buffer(reservation.consumer()) {
            self.add_repartition(additional);
        } else {
            self.inner.grow(reservation, additional)
        }
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        if is_repartition_buffer(reservation.consumer()) {
            self.repartition.fetch_sub(shrink, Ordering::Relaxed);
        } else {
            self.inner.shrink(reservation, shrink)
        }
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        if is_repartition_buffer(reservation.consumer()) {
            self.add_repartition(additional);
            Ok(())
        } else {
            self.inner.try_grow(reservation, additional)
        }
    }

    fn reserved(&self) -> usize {
        self.inner.reserved() + self.repartition.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;

    /// A count(DISTINCT) over 200k distinct strings on two partitions under a 4 MiB pool: two
    /// hash repartitions between grouped aggregations, the plan shape of apache/datafusion#24883.
    async fn distinct_count(pool: Arc<dyn MemoryPool>) -> Result<usize> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool)
            .build_arc()?;
        let config = SessionConfig::new()
            .with_target_partitions(2)
            .with_batch_size(1024);
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Int64, false),
            Field::new("trace_id", DataType::Utf8, false),
        ]));
        let partition = |p: i64| -> Vec<RecordBatch> {
            (0..100)
                .map(|b| {
                    let ids: Vec<i64> = (0..1000).map(|i| p * 100_000 + b * 1000 + i).collect();
                    RecordBatch::try_new(
                        schema.clone(),
                        vec![
                            Arc::new(Int64Array::from_iter_values(ids.iter().map(|i| i % 7))),
                            Arc::new(StringArray::from_iter_values(
                                ids.iter().map(|i| format!("trace-{i:012}-{:064}", i * 31)),
                            )),
                        ],
                    )
                    .unwrap()
                })
                .collect()
        };
        let table = MemTable::try_new(schema.clone(), vec![partition(0), partition(1)])?;
        ctx.register_table("t", Arc::new(table))?;
        let batches = ctx
            .sql("SELECT g, count(DISTINCT trace_id) AS n FROM t GROUP BY g")
            .await?
            .collect()
            .await?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    /// The query completes with every group under a pool far smaller than its ~20 MB of strings.
    /// (It does not reproduce the upstream deadlock, which needs two spills racing into one
    /// output partition; `only_repartition_buffers_pass_the_limit` shows that a repartition
    /// never reaches its spill path.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spilling_aggregation_completes_under_a_small_limit() {
        for attempt in 0..4 {
            let pool: Arc<dyn MemoryPool> = Arc::new(RunPool::new(4 << 20));
            let run = tokio::time::timeout(Duration::from_secs(20), distinct_count(pool)).await;
            match run {
                Ok(rows) => assert_eq!(rows.unwrap(), 7, "attempt {attempt}"),
                Err(_) => panic!("attempt {attempt} did not complete within 60 s (deadlock)"),
            }
        }
    }

    /// Repartition buffers are granted beyond the limit and counted; other consumers still
    /// get an error past their share, which makes them spill.
    #[test]
    fn only_repartition_buffers_pass_the_limit() {
        let pool: Arc<dyn MemoryPool> = Arc::new(RunPool::new(1000));
        let repartition = MemoryConsumer::new("RepartitionExec[0]")
            .with_can_spill(true)
            .register(&pool);
        repartition.try_grow(5000).unwrap();
        assert_eq!(pool.reserved(), 5000);
        // Two spilling consumers registered: each may hold half of the pool.
        let sorter = MemoryConsumer::new("ExternalSorter[0]")
            .with_can_spill(true)
            .register(&pool);
        sorter.try_grow(400).unwrap();
        assert!(sorter.try_grow(200).is_err());
        // A consumer that cannot spill gets what the others leave (1000 - 400).
        let merge = MemoryConsumer::new("RepartitionExec[Merge 0]").register(&pool);
        assert!(merge.try_grow(700).is_err());
        merge.try_grow(600).unwrap();
        drop(repartition);
        assert_eq!(pool.reserved(), 1000);
    }
}
