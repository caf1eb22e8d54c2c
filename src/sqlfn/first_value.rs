//! `first_value(x ORDER BY …)` in a hash aggregate, keeping each group's best row in arrow's row
//! format.
//!
//! DataFusion 55's own accumulator for it keeps each group's ordering values as `ScalarValue`s and,
//! for every input batch, walks a buffer of *all* groups seen so far to find the ones the batch
//! touched: its cost grows with groups × batches. On the star models (one group per session or
//! customer) that made `first_value` the most expensive aggregate of the build: grouping 10M
//! events by session took 3.1 s of CPU with `first_value(event_id ORDER BY event_time, event_id)`
//! and 1.0 s without it.
//!
//! This accumulator converts each batch's ordering columns and value, in that order, to rows
//! whose bytes compare as the ordering does (`RowConverter`), and keeps a group's row when it is
//! smaller than the one it holds: one byte comparison per input row, a copy only when a group's
//! first row changes. Rows whose ordering values tie are told apart by the value, so the result
//! no longer depends on the order rows arrive in.
//!
//! Everything else (the function's name, type, its state as exchanged between partial and final
//! aggregates, the row-at-a-time accumulator used without GROUP BY, planning rewrites) is
//! DataFusion's `first_value`, to which this type delegates; it replaces the built-in function
//! under the same name. Orderings or values of nested or dictionary types keep DataFusion's
//! accumulator.

use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, BooleanArray};
use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, FieldRef};
use arrow::row::{RowConverter, SortField};
use datafusion::common::Result;
use datafusion::functions_aggregate::first_last;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, Documentation, EmitTo, GroupsAccumulator, ReversedUDAF,
    Signature,
};

#[derive(Debug)]
pub(super) struct FirstValue {
    /// DataFusion's `first_value`, with the same `pre_ordered`.
    inner: Arc<dyn AggregateUDFImpl>,
    /// Whether the planner found the input already in the requested order.
    pre_ordered: bool,
}

impl PartialEq for FirstValue {
    fn eq(&self, other: &Self) -> bool {
        self.pre_ordered == other.pre_ordered
    }
}

impl Eq for FirstValue {}

impl std::hash::Hash for FirstValue {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.pre_ordered.hash(state);
    }
}

impl FirstValue {
    pub(super) fn new() -> Self {
        Self {
            inner: Arc::new(first_last::FirstValue::new()),
            pre_ordered: false,
        }
    }
}

/// The row fields of an aggregate this accumulator handles: its ordering columns with their sort
/// options, then its value unless it is one of them (`first_value(id ORDER BY time, id)`: a tie on
/// every ordering column is then a tie on the value too); `None` when it has no ORDER BY or a
/// column's type is not a plain one.
fn row_layout(args: &AccumulatorArgs) -> Result<Option<RowLayout>> {
    if args.order_bys.is_empty() {
        return Ok(None);
    }
    let plain = |t: &DataType| {
        t.is_primitive()
            || matches!(
                t,
                DataType::Boolean
                    | DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
                    | DataType::Binary
                    | DataType::LargeBinary
                    | DataType::BinaryView
                    | DataType::FixedSizeBinary(_)
            )
    };
    let mut fields = Vec::with_capacity(args.order_bys.len() + 1);
    for order in args.order_bys {
        let t = order.expr.data_type(args.schema)?;
        if !plain(&t) {
            return Ok(None);
        }
        fields.push((t, order.options));
    }
    let value = args.return_field.data_type();
    if !plain(value) {
        return Ok(None);
    }
    let value_at = args.exprs.first().and_then(|value_expr| {
        args.order_bys
            .iter()
            .position(|order| order.expr.as_ref() == value_expr.as_ref())
            .filter(|&k| &fields[k].0 == value)
    });
    let value_at = value_at.unwrap_or_else(|| {
        fields.push((value.clone(), SortOptions::default()));
        fields.len() - 1
    });
    let layout = RowLayout {
        orderings: args.order_bys.len(),
        value_at,
        fields,
    };
    Ok(RowConverter::supports_fields(&layout.sort_fields()).then_some(layout))
}

/// The columns of a row: the orderings, then the value unless `value_at` is an ordering's.
struct RowLayout {
    orderings: usize,
    value_at: usize,
    fields: Vec<(DataType, SortOptions)>,
}

impl RowLayout {
    /// The row converter's fields.
    fn sort_fields(&self) -> Vec<SortField> {
        self.fields
            .iter()
            .map(|(t, options)| SortField::new_with_options(t.clone(), *options))
            .collect()
    }

    /// The row columns of the value and ordering columns (an update's input, or a state's).
    fn columns(&self, value: &ArrayRef, orderings: &[ArrayRef]) -> Vec<ArrayRef> {
        let mut columns = orderings.to_vec();
        if self.value_at == self.orderings {
            columns.push(Arc::clone(value));
        }
        columns
    }
}

impl AggregateUDFImpl for FirstValue {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.inner.return_field(arg_fields)
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.inner.accumulator(args)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.inner.state_fields(args)
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        matches!(row_layout(&args), Ok(Some(_))) || self.inner.groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        match row_layout(&args)? {
            Some(layout) => Ok(Box::new(FirstRows::try_new(layout, args.ignore_nulls)?)),
            None => self.inner.create_groups_accumulator(args),
        }
    }

    fn with_beneficial_ordering(
        self: Arc<Self>,
        beneficial_ordering: bool,
    ) -> Result<Option<Arc<dyn AggregateUDFImpl>>> {
        let inner = Arc::clone(&self.inner).with_beneficial_ordering(beneficial_ordering)?;
        Ok(inner.map(|inner| {
            Arc::new(Self {
                inner,
                pre_ordered: beneficial_ordering,
            }) as _
        }))
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner.order_sensitivity()
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        self.inner.reverse_expr()
    }

    fn supports_null_handling_clause(&self) -> bool {
        self.inner.supports_null_handling_clause()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// Each group's first row: its ordering values and value in row format.
struct FirstRows {
    layout: RowLayout,
    converter: RowConverter,
    ignore_nulls: bool,
    /// Per group, the smallest row offered so far; empty while it has none (a row never is).
    best: Vec<Vec<u8>>,
    /// The bytes `best` holds on the heap.
    heap: usize,
    /// The row of all NULLs, decoded for groups without a row.
    null_row: Vec<u8>,
}

impl FirstRows {
    fn try_new(layout: RowLayout, ignore_nulls: bool) -> Result<Self> {
        let nulls: Vec<ArrayRef> = layout
            .fields
            .iter()
            .map(|(t, _)| new_null_array(t, 1))
            .collect();
        let converter = RowConverter::new(layout.sort_fields())?;
        let null_row = converter.convert_columns(&nulls)?.row(0).as_ref().to_vec();
        Ok(Self {
            layout,
            converter,
            ignore_nulls,
            best: Vec::new(),
            heap: 0,
            null_row,
        })
    }

    /// Offers row `i` of `columns` (as `layout.columns` makes them) to group `groups[i]` where `keep(i)`.
    fn offer(
        &mut self,
        columns: &[ArrayRef],
        groups: &[usize],
        total_groups: usize,
        keep: impl Fn(usize) -> bool,
    ) -> Result<()> {
        if self.best.len() < total_groups {
            self.best.resize_with(total_groups, Vec::new);
        }
        let rows = self.converter.convert_columns(columns)?;
        for (i, &group) in groups.iter().enumerate() {
            if !keep(i) {
                continue;
            }
            let row = rows.row(i);
            let row = row.as_ref();
            let best = &mut self.best[group];
            if best.is_empty() || row < best.as_slice() {
                let before = best.capacity();
                best.clear();
                best.extend_from_slice(row);
                self.heap = self.heap + best.capacity() - before;
            }
        }
        Ok(())
    }

    /// The emitted groups' value, their ordering columns and whether each group had a row.
    fn take(&mut self, emit_to: EmitTo) -> Result<(ArrayRef, Vec<ArrayRef>, BooleanArray)> {
        let taken = emit_to.take_needed(&mut self.best);
        self.heap -= taken.iter().map(Vec::capacity).sum::<usize>();
        let is_set: BooleanArray = taken.iter().map(|row| Some(!row.is_empty())).collect();
        let parser = self.converter.parser();
        let rows = taken
            .iter()
            .map(|row| parser.parse(if row.is_empty() { &self.null_row } else { row }));
        let mut columns = self.converter.convert_rows(rows)?;
        let value = Arc::clone(&columns[self.layout.value_at]);
        columns.truncate(self.layout.orderings);
        Ok((value, columns, is_set))
    }
}

/// Whether row `i` of an optional boolean filter is true.
fn passes(filter: Option<&BooleanArray>, i: usize) -> bool {
    filter.is_none_or(|f| f.is_valid(i) && f.value(i))
}

impl GroupsAccumulator for FirstRows {
    /// `values`: the value, then the ordering columns.
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let value = &values[0];
        let columns = self.layout.columns(value, &values[1..]);
        let ignore_nulls = self.ignore_nulls;
        self.offer(&columns, group_indices, total_num_groups, |i| {
            passes(opt_filter, i) && !(ignore_nulls && value.is_null(i))
        })
    }

    /// `values`: the state, as `state` makes it.
    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        let orderings = self.layout.orderings;
        let columns = self.layout.columns(&values[0], &values[1..=orderings]);
        let is_set = values[orderings + 1]
            .as_any()
            .downcast_ref::<BooleanArray>();
        let Some(is_set) = is_set else {
            return datafusion::common::internal_err!(
                "first_value: the state's flag is not boolean"
            );
        };
        self.offer(&columns, group_indices, total_num_groups, |i| {
            passes(Some(is_set), i)
        })
    }

    /// Each input row as the state of a group of its own (when partial aggregation does not pay).
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let value = &values[0];
        let is_set: BooleanArray = (0..value.len())
            .map(|i| Some(passes(opt_filter, i) && !(self.ignore_nulls && value.is_null(i))))
            .collect();
        let mut state = values.to_vec();
        state.push(Arc::new(is_set));
        Ok(state)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        Ok(self.take(emit_to)?.0)
    }

    /// The value, the ordering columns, whether the group had a row: DataFusion's state fields.
    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let (value, columns, is_set) = self.take(emit_to)?;
        let mut state = Vec::with_capacity(columns.len() + 2);
        state.push(value);
        state.extend(columns);
        state.push(Arc::new(is_set));
        Ok(state)
    }

    fn size(&self) -> usize {
        self.best.capacity() * size_of::<Vec<u8>>()
            + self.heap
            + self.converter.size()
            + self.null_row.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        AsArray, Float64Array, Int64Array, StringViewArray, TimestampMicrosecondArray,
    };
    use arrow::datatypes::{Field, Schema, TimeUnit};
    use arrow::record_batch::RecordBatch;
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// Rows spread over 4 partitions of 6 batches: 1,500 groups, each in many batches and
    /// partitions; event times with ties and NULLs, NULL values, long and short strings.
    fn events() -> MemTable {
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Int64, false),
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("id", DataType::Utf8View, false),
            Field::new("s", DataType::Utf8View, true),
            Field::new("i", DataType::Int64, true),
            Field::new("f", DataType::Float64, true),
        ]));
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut partitions = Vec::new();
        let mut id = 0;
        for _ in 0..4 {
            let mut batches = Vec::new();
            for _ in 0..6 {
                let n = 1_000;
                let mut cols: (Vec<i64>, Vec<Option<i64>>, Vec<String>) = Default::default();
                let (mut s, mut i, mut f) = (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..n {
                    id += 1;
                    cols.0.push(next(1_500) as i64);
                    cols.1
                        .push((next(20) != 0).then(|| next(50) as i64 * 1_000_000));
                    // Ids are unique but not in arrival order.
                    cols.2.push(format!("e{:07}", (id * 7_919) % 100_003));
                    s.push(match next(10) {
                        0 => None,
                        1 => Some(format!(
                            "a long value past the inline twelve bytes {}",
                            next(9)
                        )),
                        _ => Some(format!("v{}", next(30))),
                    });
                    i.push((next(8) != 0).then(|| next(100) as i64 - 50));
                    f.push((next(8) != 0).then(|| next(1_000) as f64 / 7.0));
                }
                let columns: Vec<ArrayRef> = vec![
                    Arc::new(Int64Array::from(cols.0)),
                    Arc::new(TimestampMicrosecondArray::from(cols.1).with_timezone("UTC")),
                    Arc::new(StringViewArray::from_iter_values(cols.2)),
                    Arc::new(StringViewArray::from(s)),
                    Arc::new(Int64Array::from(i)),
                    Arc::new(Float64Array::from(f)),
                ];
                batches.push(RecordBatch::try_new(Arc::clone(&schema), columns).unwrap());
            }
            partitions.push(batches);
        }
        MemTable::try_new(schema, partitions).unwrap()
    }

    async fn run(ctx: &SessionContext, sql: &str) -> String {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        pretty_format_batches(&batches).unwrap().to_string()
    }

    fn context(ours: bool) -> SessionContext {
        context_within(ours, None)
    }

    /// With `memory_limit`, aggregates that outgrow it spill their state and merge it back.
    fn context_within(ours: bool, memory_limit: Option<usize>) -> SessionContext {
        let mut config = SessionConfig::new()
            .with_target_partitions(3)
            .with_batch_size(700);
        config.options_mut().execution.sort_spill_reservation_bytes = 16 << 10;
        let mut runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new();
        if let Some(limit) = memory_limit {
            runtime = runtime.with_memory_limit(limit, 1.0);
        }
        let ctx = SessionContext::new_with_config_rt(config, runtime.build_arc().unwrap());
        if ours {
            ctx.register_udaf(datafusion::logical_expr::AggregateUDF::new_from_impl(
                FirstValue::new(),
            ));
        }
        ctx.register_table("ev", Arc::new(events())).unwrap();
        ctx
    }

    #[tokio::test]
    async fn first_values_equal_datafusions_own_where_the_ordering_is_total() {
        let sql = "SELECT g, \
                first_value(s ORDER BY t, id) AS s_first, \
                first_value(i ORDER BY t DESC NULLS LAST, id DESC) AS i_last, \
                first_value(f ORDER BY id) FILTER (WHERE i > 0) AS f_positive, \
                first_value(s ORDER BY t NULLS FIRST, id) IGNORE NULLS AS s_present, \
                first_value(id ORDER BY s DESC, id) AS id_by_s, \
                first_value(t ORDER BY f NULLS FIRST, id) AS t_by_f, \
                first_value(t ORDER BY t DESC NULLS LAST, id) AS t_latest, \
                first_value(s ORDER BY t DESC, id) FILTER (WHERE i > 0) AS s_latest_positive, \
                first_value(f ORDER BY i NULLS FIRST, id DESC) AS f_by_i, \
                first_value(arrow_cast(s, 'Dictionary(Int32, Utf8)') ORDER BY t, id) AS dict, \
                count(*) AS n \
            FROM ev GROUP BY g ORDER BY g";
        let ours = run(&context(true), sql).await;
        let theirs = run(&context(false), sql).await;
        assert_eq!(ours.lines().count(), 1_500 + 4, "one line per group");
        assert_eq!(ours, theirs);
        // Without GROUP BY, and grouped by a key of one group only.
        for sql in [
            "SELECT first_value(s ORDER BY t, id) FROM ev",
            "SELECT first_value(s ORDER BY t, id) FROM ev GROUP BY g = g",
        ] {
            assert_eq!(
                run(&context(true), sql).await,
                run(&context(false), sql).await
            );
        }
    }

    type Metric = fn(&datafusion::physical_plan::metrics::MetricsSet) -> Option<usize>;

    /// Runs `sql` in `ctx`; returns its output and the plan's total of `metric`.
    async fn run_counting(ctx: &SessionContext, sql: &str, metric: Metric) -> (String, usize) {
        fn total(
            plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
            metric: Metric,
        ) -> usize {
            let own = plan.metrics().and_then(|m| metric(&m)).unwrap_or(0);
            own + plan
                .children()
                .into_iter()
                .map(|c| total(c, metric))
                .sum::<usize>()
        }
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let batches = datafusion::physical_plan::collect(Arc::clone(&plan), ctx.task_ctx())
            .await
            .unwrap();
        let out = pretty_format_batches(&batches).unwrap().to_string();
        (out, total(&plan, metric))
    }

    #[tokio::test]
    async fn first_values_survive_an_aggregate_spilling_its_state() {
        let sql = "SELECT g, first_value(s ORDER BY t, id) AS s_first, \
                first_value(id ORDER BY t DESC, id) AS id_last \
            FROM ev GROUP BY g ORDER BY g";
        let ctx = context_within(true, Some(400_000));
        let (ours, spills) = run_counting(&ctx, sql, |m| m.spill_count()).await;
        assert!(spills > 0, "the aggregate spilled");
        assert_eq!(ours, run(&context(false), sql).await);
    }

    #[tokio::test]
    async fn first_values_survive_a_partial_aggregate_passing_rows_through() {
        // A partial aggregate that finds too few rows per group stops aggregating and hands each
        // row on as a state of its own (`convert_to_state`).
        let sql = "SELECT g, first_value(s ORDER BY t, id) FILTER (WHERE i > 0) AS s_first, \
                first_value(i ORDER BY t DESC, id) IGNORE NULLS AS i_last, \
                first_value(id ORDER BY t, id) AS id_first \
            FROM ev GROUP BY g ORDER BY g";
        let mut outputs = Vec::new();
        for ours in [true, false] {
            let ctx = context(ours);
            for set in [
                "SET datafusion.execution.skip_partial_aggregation_probe_rows_threshold = 100",
                "SET datafusion.execution.skip_partial_aggregation_probe_ratio_threshold = 0.01",
            ] {
                ctx.sql(set).await.unwrap().collect().await.unwrap();
            }
            let (out, skipped) = run_counting(&ctx, sql, |m| {
                m.sum_by_name("skipped_aggregation_rows")
                    .map(|v| v.as_usize())
            })
            .await;
            assert!(skipped > 0, "the partial aggregate passed rows through");
            outputs.push(out);
        }
        assert_eq!(outputs[0], outputs[1]);
    }

    #[tokio::test]
    async fn rows_that_tie_on_the_ordering_are_told_apart_by_the_value() {
        let ctx = context(true);
        let sql = "SELECT k, first_value(v ORDER BY o) AS v, first_value(v ORDER BY o DESC) AS d \
            FROM (VALUES (1, 1, 'b'), (1, 1, 'a'), (1, 0, 'z'), (2, 5, 'y'), (2, 5, 'x')) AS t(k, o, v) \
            GROUP BY k ORDER BY k";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let v = batches[0].column(1).as_string::<i32>();
        let d = batches[0].column(2).as_string::<i32>();
        assert_eq!((v.value(0), v.value(1)), ("z", "x"));
        assert_eq!((d.value(0), d.value(1)), ("a", "x"));
    }

    #[test]
    fn groups_are_emitted_in_parts_and_merge_from_their_state() {
        use arrow::array::StringArray;
        let fields = || RowLayout {
            orderings: 1,
            value_at: 1,
            fields: vec![
                (DataType::Int64, SortOptions::default()),
                (DataType::Utf8, SortOptions::default()),
            ],
        };
        let mut acc = FirstRows::try_new(fields(), false).unwrap();
        let values: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![
                Some("c"),
                None,
                Some("a"),
                Some("b"),
            ])),
            Arc::new(Int64Array::from(vec![3, 1, 2, 1])),
        ];
        // Group 2 gets no row.
        acc.update_batch(&values, &[0, 0, 1, 3], None, 4).unwrap();
        assert!(acc.size() > 0);
        let first = acc.state(EmitTo::First(2)).unwrap();
        let rest = acc.state(EmitTo::All).unwrap();
        assert_eq!(
            first[0].as_string::<i32>().iter().collect::<Vec<_>>(),
            [None, Some("a")]
        );
        assert_eq!(
            first[1]
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values(),
            &[1, 2]
        );
        assert_eq!(
            first[2].as_boolean().iter().collect::<Vec<_>>(),
            [Some(true), Some(true)]
        );
        assert_eq!(
            rest[0].as_string::<i32>().iter().collect::<Vec<_>>(),
            [None, Some("b")]
        );
        assert_eq!(
            rest[2].as_boolean().iter().collect::<Vec<_>>(),
            [Some(false), Some(true)]
        );
        assert_eq!(acc.heap, 0, "emitted rows are no longer counted");

        // The states merge into one accumulator: the second state's unset group leaves group 0
        // as it is (a NULL value ordered by 1), its "b" ordered by 1 replaces "a" ordered by 2.
        let mut merged = FirstRows::try_new(fields(), false).unwrap();
        merged.merge_batch(&first, &[0, 1], 2).unwrap();
        merged.merge_batch(&rest, &[0, 1], 2).unwrap();
        let out = merged.evaluate(EmitTo::All).unwrap();
        assert_eq!(
            out.as_string::<i32>().iter().collect::<Vec<_>>(),
            [None, Some("b")]
        );
    }
}
