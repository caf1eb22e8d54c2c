//! SQL functions clicklake adds to DataFusion: reading JSON text held in string columns, and
//! the clean layer's text normalisation.
//!
//! Source mappings (`sql/sources/*.sql`) use them to pick fields out of tracker payloads, and
//! analysts use them on `properties`:
//!
//! - `json_get(json, key_or_index, ...)` → Utf8: the value at that path; strings unquoted, numbers
//!   and booleans as their text, objects and arrays as JSON text; NULL when the text is not JSON,
//!   the path is absent or the value is JSON `null`.
//! - `json_length(json, key_or_index, ...)` → Int64: the length of the array (or the number of keys
//!   of the object) at that path, NULL otherwise.
//! - `json_param(json, key_or_index, ..., name)` → Utf8: parameter `name` of the key/value array at
//!   that path, as GA4 and Firebase export `event_params` and `user_properties`
//!   (`[{"key": "ga_session_id", "value": {"int_value": 4863244888, …}}]`): the set one of its
//!   typed values, as text like `json_get`.
//!
//! The three parse each row once for all their calls on one column (see [`ParsedColumn`]).
//!
//! Path steps are string keys or integer indexes (0-based), as literals or columns.
//!
//! - `trim_to_null(text)` → the same string type: `nullif(trim(text), '')` (spaces trimmed from
//!   both ends, an empty result NULL). A column that needs no change comes back as it is, and
//!   one whose only change is empty strings gets a new null mask over the same bytes: on clean
//!   data the pair of built-in functions rebuilt every string view of 14 columns, 7 % of a full
//!   clean's instructions.
//! - `category_level(path, n)` → the same string type: level `n` (1-based) of a category path
//!   split on `/` or `.`, NULL when the path has fewer levels or that level is empty; the same as
//!   `nullif(split_part(replace(path, '.', '/'), '/', n), '')`. A level of a string view column
//!   is a view of the same bytes: the built-in chain copied every path once to replace and once
//!   per level to split.
//!
//! It also replaces the aggregate `first_value(x ORDER BY …)` with one that is the same function
//! but keeps each group's first row in a faster way (`first_value.rs`).

mod first_value;
mod json_doc;

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, GenericStringArray, Int64Builder, StringBuilder,
    StringViewArray,
};
use arrow::datatypes::DataType;
use datafusion::common::{exec_err, Result};
use datafusion::logical_expr::{
    AggregateUDF, ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::prelude::SessionContext;
use json_doc::Doc;

/// Registers clicklake's functions in a session.
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::from(JsonFn::new(JsonOp::Get)));
    ctx.register_udf(ScalarUDF::from(JsonFn::new(JsonOp::Length)));
    ctx.register_udf(ScalarUDF::from(JsonFn::new(JsonOp::Param)));
    ctx.register_udf(ScalarUDF::from(TrimToNull::new()));
    ctx.register_udf(ScalarUDF::from(CategoryLevel::new()));
    ctx.register_udaf(AggregateUDF::new_from_impl(first_value::FirstValue::new()));
}

/// A function's result: a scalar when every argument was one (the array then holds one row).
fn columnar(out: ArrayRef, scalar: bool) -> Result<ColumnarValue> {
    Ok(if scalar {
        ColumnarValue::Scalar(datafusion::common::ScalarValue::try_from_array(&out, 0)?)
    } else {
        ColumnarValue::Array(out)
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct CategoryLevel {
    signature: Signature,
}

impl CategoryLevel {
    fn new() -> Self {
        use datafusion::logical_expr::TypeSignature::Exact;
        let types = [DataType::Utf8View, DataType::Utf8, DataType::LargeUtf8];
        CategoryLevel {
            signature: Signature::one_of(
                types
                    .into_iter()
                    .map(|t| Exact(vec![t, DataType::Int64]))
                    .collect(),
                Volatility::Immutable,
            ),
        }
    }
}

/// Where level `n` (1-based) of `path` lies in it, split on '/' or '.'; None when the path has
/// fewer levels or the level is empty.
fn level_range(path: &str, n: usize) -> Option<std::ops::Range<usize>> {
    let mut start = 0;
    let mut level = 1;
    for (i, b) in path.bytes().enumerate() {
        if b == b'/' || b == b'.' {
            if level == n {
                return (i > start).then_some(start..i);
            }
            level += 1;
            start = i + 1;
        }
    }
    (level == n && path.len() > start).then_some(start..path.len())
}

/// `category_level` of a column, with the level of each row from `levels` (None for a NULL
/// level: a NULL result).
fn category_level(
    input: &ArrayRef,
    levels: impl Fn(usize) -> Result<Option<usize>>,
) -> Result<ArrayRef> {
    /// Plain strings: each level copied into a new array of the same offset width.
    fn copied<O: arrow::array::OffsetSizeTrait>(
        paths: &GenericStringArray<O>,
        levels: impl Fn(usize) -> Result<Option<usize>>,
    ) -> Result<ArrayRef> {
        let mut out = Vec::with_capacity(paths.len());
        for (i, v) in paths.iter().enumerate() {
            let level = match (v, levels(i)?) {
                (Some(v), Some(n)) => level_range(v, n).map(|r| &v[r]),
                _ => None,
            };
            out.push(level);
        }
        Ok(Arc::new(GenericStringArray::<O>::from(out)))
    }
    match input.data_type() {
        DataType::Utf8View => {
            let paths = input.as_string_view();
            let mut views = Vec::with_capacity(paths.len());
            let mut valid = Vec::with_capacity(paths.len());
            for (i, raw) in paths.views().iter().enumerate() {
                let level = match levels(i)? {
                    Some(n) if paths.is_valid(i) => {
                        let path = paths.value(i);
                        level_range(path, n).map(|r| (&path.as_bytes()[r.clone()], r.start))
                    }
                    _ => None,
                };
                match level {
                    Some((bytes, start)) => {
                        let view = arrow::array::ByteView::from(*raw);
                        // A path of up to 12 bytes is inline, and so is any level of it; a
                        // longer one points into a data buffer, where its level starts `start`
                        // bytes further on.
                        let (block, offset) = if (view.length as usize) <= 12 {
                            (0, 0)
                        } else {
                            (view.buffer_index, view.offset + start as u32)
                        };
                        views.push(arrow::array::builder::make_view(bytes, block, offset));
                        valid.push(true);
                    }
                    None => {
                        views.push(0);
                        valid.push(false);
                    }
                }
            }
            // SAFETY: every view is either zero under a null, or made by `make_view` from a
            // UTF-8 substring (split at ASCII bytes) of a valid value, with that value's buffer
            // index and an offset inside it; the buffers are the input's.
            Ok(Arc::new(unsafe {
                StringViewArray::new_unchecked(
                    views.into(),
                    paths.data_buffers().to_vec(),
                    Some(arrow::buffer::NullBuffer::from(valid)),
                )
            }))
        }
        DataType::Utf8 => copied(input.as_string::<i32>(), levels),
        DataType::LargeUtf8 => copied(input.as_string::<i64>(), levels),
        other => exec_err!("category_level takes a string, not {other}"),
    }
}

/// A level as given (1 or more), or None for NULL.
fn level_number(n: Option<i64>) -> Result<Option<usize>> {
    match n {
        None => Ok(None),
        Some(n) if n >= 1 => Ok(Some(n as usize)),
        Some(n) => exec_err!("category_level: the level must be 1 or more, not {n}"),
    }
}

impl ScalarUDFImpl for CategoryLevel {
    fn name(&self) -> &str {
        "category_level"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        Ok(args[0].clone())
    }

    /// A constant level below 1 is refused here, when the query (or model) is planned, rather
    /// than when its first row is computed.
    fn return_field_from_args(
        &self,
        args: datafusion::logical_expr::ReturnFieldArgs,
    ) -> Result<arrow::datatypes::FieldRef> {
        if let Some(Some(datafusion::common::ScalarValue::Int64(Some(n)))) =
            args.scalar_arguments.get(1)
        {
            if *n < 1 {
                return datafusion::common::plan_err!(
                    "category_level: the level must be 1 or more, not {n}"
                );
            }
        }
        let ty = args.arg_fields[0].data_type().clone();
        Ok(Arc::new(arrow::datatypes::Field::new(
            self.name(),
            ty,
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use datafusion::common::ScalarValue;
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let paths = args.args[0].to_array(args.number_rows)?;
        let out = match &args.args[1] {
            ColumnarValue::Scalar(ScalarValue::Int64(n)) => {
                let n = level_number(*n)?;
                category_level(&paths, |_| Ok(n))?
            }
            ColumnarValue::Array(ns) => {
                let ns = ns.as_primitive::<arrow::datatypes::Int64Type>();
                category_level(&paths, |i| {
                    level_number(ns.is_valid(i).then(|| ns.value(i)))
                })?
            }
            ColumnarValue::Scalar(other) => {
                return exec_err!("category_level: the level must be an integer, not {other}")
            }
        };
        columnar(out, scalar)
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct TrimToNull {
    signature: Signature,
}

impl TrimToNull {
    fn new() -> Self {
        TrimToNull {
            signature: Signature::uniform(
                1,
                vec![DataType::Utf8View, DataType::Utf8, DataType::LargeUtf8],
                Volatility::Immutable,
            ),
        }
    }
}

/// What a string column needs from `trim_to_null`.
enum TrimNeed {
    Nothing,
    /// Only its empty strings (true in the mask) become NULL.
    NullEmpties(Vec<bool>),
    Trim,
}

fn trim_need<'a>(values: impl Iterator<Item = Option<&'a str>>, len: usize) -> TrimNeed {
    let mut empty: Option<Vec<bool>> = None; // allocated at the first empty string
    for (i, v) in values.enumerate() {
        match v {
            Some("") => empty.get_or_insert_with(|| vec![false; len])[i] = true,
            Some(v) if v.starts_with(' ') || v.ends_with(' ') => return TrimNeed::Trim,
            _ => {}
        }
    }
    empty.map_or(TrimNeed::Nothing, TrimNeed::NullEmpties)
}

/// `trim_to_null` of a column whose values `values()` iterates; `trim` builds a trimmed copy of
/// the column type when sharing the bytes is not enough.
fn trim_column<'a, I: Iterator<Item = Option<&'a str>>>(
    input: &ArrayRef,
    values: impl Fn() -> I,
    trim: impl FnOnce(I) -> ArrayRef,
) -> Result<ArrayRef> {
    Ok(match trim_need(values(), input.len()) {
        TrimNeed::Nothing => Arc::clone(input),
        // The same bytes under a new null mask.
        TrimNeed::NullEmpties(empty) => arrow::compute::nullif(input, &BooleanArray::from(empty))?,
        TrimNeed::Trim => trim(values()),
    })
}

fn trimmed(v: Option<&str>) -> Option<&str> {
    v.map(|s| s.trim_matches(' ')).filter(|s| !s.is_empty())
}

fn trim_to_null(input: &ArrayRef) -> Result<ArrayRef> {
    match input.data_type() {
        DataType::Utf8View => trim_column(
            input,
            || input.as_string_view().iter(),
            |v| Arc::new(v.map(trimmed).collect::<StringViewArray>()),
        ),
        DataType::Utf8 => trim_column(
            input,
            || input.as_string::<i32>().iter(),
            |v| Arc::new(v.map(trimmed).collect::<GenericStringArray<i32>>()),
        ),
        DataType::LargeUtf8 => trim_column(
            input,
            || input.as_string::<i64>().iter(),
            |v| Arc::new(v.map(trimmed).collect::<GenericStringArray<i64>>()),
        ),
        other => exec_err!("trim_to_null takes a string, not {other}"),
    }
}

impl ScalarUDFImpl for TrimToNull {
    fn name(&self) -> &str {
        "trim_to_null"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        Ok(args[0].clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = matches!(args.args[0], ColumnarValue::Scalar(_));
        let out = trim_to_null(&args.args[0].to_array(args.number_rows)?)?;
        columnar(out, scalar)
    }
}

/// A filter true where any of `keys`' columns holds one of that column's values (a set per
/// column; a NULL matches nothing), for a scan that must find rows by several keys at once.
///
/// A few values of one column (at most [`IN_LIST_MAX`]) become a plain `IN` list, whose literals
/// the Parquet reader checks against each row group's bloom filter (see
/// `delta::BLOOM_FILTERED`), skipping row groups that hold none of them. More values, or several
/// columns, which no row group would be skipped for, are looked up in sets once a row: an `IN`
/// list of thousands of values costs a pruning predicate of every literal at each file opened
/// and a plan of every literal.
pub fn in_key_sets(
    mut keys: Vec<(&str, std::collections::HashSet<String>)>,
) -> datafusion::prelude::Expr {
    if keys.len() == 1 && keys[0].1.len() <= IN_LIST_MAX {
        let (column, set) = keys.pop().expect("one key column");
        if set.is_empty() {
            return datafusion::prelude::lit(false);
        }
        let mut values: Vec<String> = set.into_iter().collect();
        values.sort_unstable();
        let list = values.into_iter().map(datafusion::prelude::lit).collect();
        return datafusion::prelude::col(column).in_list(list, false);
    }
    let (columns, sets): (Vec<_>, Vec<_>) = keys
        .into_iter()
        .map(|(c, set)| (datafusion::prelude::col(c), set.into_iter().collect()))
        .unzip();
    StringFilter::udf(
        Test::KeySets(sets),
        Signature::variadic_any(Volatility::Immutable),
    )
    .call(columns)
}

/// The most values of one key column that [`in_key_sets`] passes as an `IN` list.
pub const IN_LIST_MAX: usize = 1_000;

/// What a [`StringFilter`] holds true of a row.
#[derive(Debug)]
enum Test {
    /// [`in_key_sets`]: one of its column's set holds the value of any column.
    KeySets(Vec<datafusion::common::HashSet<String>>),
    /// [`contains_any`]: the text holds any of the automaton's needles.
    Needles(aho_corasick::AhoCorasick),
}

/// A boolean filter over string columns that carries its data (sets of keys, an automaton)
/// rather than literals in the plan.
#[derive(Debug)]
struct StringFilter {
    /// Tells instances apart: their data is not compared, so two instances are the same
    /// function only if they are one.
    id: u64,
    test: Test,
    signature: Signature,
}

impl StringFilter {
    fn udf(test: Test, signature: Signature) -> ScalarUDF {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        ScalarUDF::new_from_impl(StringFilter {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            test,
            signature,
        })
    }
}

impl PartialEq for StringFilter {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for StringFilter {}

impl std::hash::Hash for StringFilter {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

/// Marks the rows of a string column (any of Arrow's three string layouts) whose value passes
/// `test`: a NULL never does, and a row already marked is not tested again. `function` names the
/// caller in the error for a column that is not text.
fn mark_strings(
    hit: &mut [bool],
    array: &ArrayRef,
    function: &str,
    test: impl Fn(&str) -> bool,
) -> Result<()> {
    fn mark<'a>(
        hit: &mut [bool],
        values: impl Iterator<Item = Option<&'a str>>,
        test: impl Fn(&str) -> bool,
    ) {
        for (h, v) in hit.iter_mut().zip(values) {
            *h = *h || v.is_some_and(&test);
        }
    }
    match array.data_type() {
        DataType::Utf8View => mark(hit, array.as_string_view().iter(), test),
        DataType::Utf8 => mark(hit, array.as_string::<i32>().iter(), test),
        DataType::LargeUtf8 => mark(hit, array.as_string::<i64>().iter(), test),
        other => return exec_err!("{function} takes strings, not {other}"),
    }
    Ok(())
}

impl ScalarUDFImpl for StringFilter {
    fn name(&self) -> &str {
        match self.test {
            Test::KeySets(_) => "in_key_sets",
            Test::Needles(_) => "contains_any",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let mut hit = vec![false; n];
        match &self.test {
            Test::KeySets(sets) => {
                for (arg, set) in args.args.iter().zip(sets) {
                    mark_strings(&mut hit, &arg.to_array(n)?, self.name(), |v| {
                        set.contains(v)
                    })?;
                }
            }
            Test::Needles(automaton) => {
                mark_strings(&mut hit, &args.args[0].to_array(n)?, self.name(), |v| {
                    automaton.is_match(v)
                })?;
            }
        }
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(hit))))
    }
}

/// A filter true where `column`'s text contains any of `needles` (a NULL contains nothing):
/// `strpos(column, n1) > 0 OR strpos(column, n2) > 0 OR …` in one pass over each value, however
/// many needles, where the chain of thousands of `OR`s would be planned as a tree that deep.
pub fn contains_any(column: &str, needles: Vec<String>) -> Result<datafusion::prelude::Expr> {
    if needles.is_empty() {
        return Ok(datafusion::prelude::lit(false));
    }
    let automaton = aho_corasick::AhoCorasick::new(&needles)
        .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
    Ok(StringFilter::udf(
        Test::Needles(automaton),
        Signature::any(1, Volatility::Immutable),
    )
    .call(vec![datafusion::prelude::col(column)]))
}

/// Whether `plan` (its subqueries included) calls only immutable scalar functions: its result
/// then depends on its inputs alone. `now()` is stable and `random()` volatile; the optimiser
/// folds the first into a constant, so a plan with either cannot be kept for later inputs.
pub fn calls_only_immutable_functions(plan: &datafusion::logical_expr::LogicalPlan) -> bool {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut immutable = true;
    let walked = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let datafusion::prelude::Expr::ScalarFunction(f) = e {
                    if f.func.signature().volatility != Volatility::Immutable {
                        immutable = false;
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })?;
        Ok(match immutable {
            true => TreeNodeRecursion::Continue,
            false => TreeNodeRecursion::Stop,
        })
    });
    walked.is_ok() && immutable
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum JsonOp {
    Get,
    Length,
    Param,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonFn {
    op: JsonOp,
    signature: Signature,
}

impl JsonFn {
    fn new(op: JsonOp) -> Self {
        JsonFn {
            op,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

/// One step of a path, for one row.
enum Step<'a> {
    Key(&'a str),
    Index(i64),
}

/// A path argument, as an array of keys or of indexes.
enum PathArg {
    Keys(ArrayRef),
    Indexes(ArrayRef),
}

impl PathArg {
    fn new(a: &ArrayRef) -> Result<Self> {
        Ok(if a.data_type().is_integer() {
            PathArg::Indexes(arrow::compute::cast(a, &DataType::Int64)?)
        } else {
            PathArg::Keys(arrow::compute::cast(a, &DataType::Utf8)?)
        })
    }

    fn step(&self, row: usize) -> Option<Step<'_>> {
        match self {
            PathArg::Keys(a) => {
                let a = a.as_string::<i32>();
                (!a.is_null(row)).then(|| Step::Key(a.value(row)))
            }
            PathArg::Indexes(a) => {
                let a = a.as_primitive::<arrow::datatypes::Int64Type>();
                (!a.is_null(row)).then(|| Step::Index(a.value(row)))
            }
        }
    }
}

fn walk<'v>(mut v: &'v Doc, path: &[PathArg], row: usize) -> Option<&'v Doc> {
    for p in path {
        v = match (p.step(row)?, v) {
            (Step::Key(k), Doc::Object(_)) => v.field(k)?,
            (Step::Index(i), Doc::Array(a)) if i >= 0 => a.get(i as usize)?,
            _ => return None,
        };
    }
    Some(v)
}

/// The value of parameter `name` in a key/value array as GA4 and Firebase export them
/// (`event_params`, `user_properties`): `[{"key": name, "value": {"string_value": …,
/// "int_value": …, "double_value": …, "float_value": …}}]`, of which one typed field is set.
/// The first element with that key wins; a `value` that is not an object is taken as it is.
fn param<'v>(array: &'v Doc, name: &str) -> Option<&'v Doc> {
    let Doc::Array(entries) = array else {
        return None;
    };
    let entry = entries
        .iter()
        .find(|e| e.field("key").and_then(Doc::as_str) == Some(name))?;
    match entry.field("value")? {
        typed @ Doc::Object(fields) => ["string_value", "int_value", "double_value", "float_value"]
            .iter()
            .filter_map(|k| typed.field(k))
            .chain(fields.iter().map(|(_, v)| v))
            .find(|v| !v.is_null()),
        other => Some(other),
    }
}

/// Text columns up to this size keep their parsed documents for the next JSON function call.
const PARSED_CACHE_MAX_BYTES: usize = 8 << 20;

/// The parsed documents of the last JSON text column a JSON function read on this thread.
///
/// A source mapping picks each field with its own `json_get(_raw, …)`: a GA4 row is about 3 KB
/// of JSON and the mapping reads 25 fields of it, so parsing per call was 25 parses a row. A
/// projection evaluates its expressions one after another on one thread over the same column,
/// so the first call parses each row and the others reuse the documents, as do calls inside CASE
/// or coalesce, which see a filtered copy (see [`rows_within`]). The column is kept alive with
/// them: its buffers' addresses then identify it and cannot be reused by another.
struct ParsedColumn {
    column: ArrayRef,
    docs: Arc<Vec<Option<Doc>>>,
}

thread_local! {
    static PARSED: std::cell::RefCell<Option<ParsedColumn>> = const { std::cell::RefCell::new(None) };
}

/// Whether two text columns are the same values: the same buffers, offsets and null mask.
fn same_text(a: &ArrayRef, b: &ArrayRef) -> bool {
    let (a, b) = (a.as_string::<i32>(), b.as_string::<i32>());
    let nulls = |s: &GenericStringArray<i32>| {
        s.nulls()
            .map(|n| (n.buffer().as_ptr(), n.offset(), n.len()))
    };
    a.len() == b.len()
        && a.values().as_ptr() == b.values().as_ptr()
        && a.value_offsets().as_ptr() == b.value_offsets().as_ptr()
        && nulls(a) == nulls(b)
}

/// The parsed documents of a column's rows: its own, or those of the column it was filtered from.
struct Docs {
    docs: Arc<Vec<Option<Doc>>>,
    /// Row → its row in `docs` (None for NULL), when the column is a filtered copy.
    rows: Option<Vec<Option<usize>>>,
}

impl Docs {
    fn get(&self, row: usize) -> Option<&Doc> {
        let at = match &self.rows {
            Some(rows) => rows[row]?,
            None => row,
        };
        self.docs[at].as_ref()
    }
}

/// Where each row of `column` is in `cached`, when its rows are some of `cached`'s in the same
/// order: what CASE and coalesce evaluate their branches on (a filtered copy of the column, in
/// new buffers). Equal text parses to the same document, so any row holding the same text will
/// do. None when `column` is not such a subsequence.
fn rows_within(
    cached: &GenericStringArray<i32>,
    column: &GenericStringArray<i32>,
) -> Option<Vec<Option<usize>>> {
    let mut next = 0;
    let mut rows = Vec::with_capacity(column.len());
    for v in column.iter() {
        let Some(v) = v else {
            rows.push(None);
            continue;
        };
        loop {
            if next == cached.len() {
                return None;
            }
            next += 1;
            if cached.is_valid(next - 1) && cached.value(next - 1) == v {
                rows.push(Some(next - 1));
                break;
            }
        }
    }
    Some(rows)
}

/// Each row of a Utf8 column parsed as JSON (None for NULL or text that is not JSON), shared
/// with the calls that read the same column, or a filtered copy of it, next.
fn parsed(json: &ArrayRef) -> Docs {
    if let Some(docs) = PARSED.with_borrow(|p| {
        let p = p.as_ref()?;
        if same_text(&p.column, json) {
            return Some(Docs {
                docs: p.docs.clone(),
                rows: None,
            });
        }
        rows_within(p.column.as_string::<i32>(), json.as_string::<i32>()).map(|rows| Docs {
            docs: p.docs.clone(),
            rows: Some(rows),
        })
    }) {
        return docs;
    }
    let text = json.as_string::<i32>();
    let docs: Arc<Vec<Option<Doc>>> =
        Arc::new(text.iter().map(|v| v.and_then(Doc::parse)).collect());
    let keep = text.values().len() <= PARSED_CACHE_MAX_BYTES;
    PARSED.with_borrow_mut(|p| {
        *p = keep.then(|| ParsedColumn {
            column: json.clone(),
            docs: docs.clone(),
        })
    });
    Docs { docs, rows: None }
}

impl ScalarUDFImpl for JsonFn {
    fn name(&self) -> &str {
        match self.op {
            JsonOp::Get => "json_get",
            JsonOp::Length => "json_length",
            JsonOp::Param => "json_param",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if self.op == JsonOp::Param && args.len() < 2 {
            return exec_err!("json_param(json, path..., name) needs the JSON and a name");
        }
        if args.is_empty() {
            return exec_err!(
                "{}(json, path...) needs at least the JSON argument",
                self.name()
            );
        }
        Ok(match self.op {
            JsonOp::Get | JsonOp::Param => DataType::Utf8,
            JsonOp::Length => DataType::Int64,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let json = arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
        let docs = parsed(&json);
        let (path_args, name) = match self.op {
            JsonOp::Param => {
                let (name, path) = arrays[1..].split_last().expect("checked in return_type");
                let name = PathArg::Keys(arrow::compute::cast(name, &DataType::Utf8)?);
                (path, Some(name))
            }
            JsonOp::Get | JsonOp::Length => (&arrays[1..], None),
        };
        let path = path_args
            .iter()
            .map(PathArg::new)
            .collect::<Result<Vec<_>>>()?;
        let at = |row: usize| -> Option<&Doc> {
            let v = walk(docs.get(row)?, &path, row)?;
            match name.as_ref().map(|n| n.step(row)) {
                Some(Some(Step::Key(name))) => param(v, name),
                Some(_) => None,
                None => Some(v),
            }
        };
        let out: ArrayRef = match self.op {
            JsonOp::Get | JsonOp::Param => {
                let mut b = StringBuilder::with_capacity(rows, rows * 8);
                // Other values' text is formatted into one reused buffer.
                let mut text = String::new();
                for row in 0..rows {
                    match at(row) {
                        None | Some(Doc::Null) => b.append_null(),
                        Some(Doc::String(s)) => b.append_value(s),
                        Some(other) => {
                            use std::fmt::Write as _;
                            text.clear();
                            write!(text, "{other}")?;
                            b.append_value(&text);
                        }
                    }
                }
                Arc::new(b.finish())
            }
            JsonOp::Length => {
                let mut b = Int64Builder::with_capacity(rows);
                for row in 0..rows {
                    b.append_option(at(row).and_then(|v| match v {
                        Doc::Array(a) => Some(a.len() as i64),
                        Doc::Object(m) => Some(m.len() as i64),
                        _ => None,
                    }));
                }
                Arc::new(b.finish())
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn one(sql: &str) -> String {
        let ctx = SessionContext::new();
        register(&ctx);
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let col = arrow::compute::cast(batches[0].column(0), &DataType::Utf8).unwrap();
        let col = col.as_string::<i32>();
        if col.is_null(0) {
            "NULL".into()
        } else {
            col.value(0).to_string()
        }
    }

    #[tokio::test]
    async fn category_levels_equal_the_built_in_split() {
        let ctx = SessionContext::new();
        register(&ctx);
        let paths = [
            "a/b/c",
            "a.b.c",
            "a//b",
            "/a",
            "a/",
            "",
            "x",
            "a.b/c.d",
            "electronics.smartphone",
            "a_category_longer_than_12/its_sub_level_also_long/and.a.third",
            "short/a_level_longer_than_12_bytes",
            "électronique/télé.écran",
        ];
        let values = paths
            .iter()
            .map(|p| format!("('{p}')"))
            .chain(["(NULL)".to_string()])
            .collect::<Vec<_>>()
            .join(", ");
        for ty in ["Utf8View", "Utf8", "LargeUtf8"] {
            let sql = format!(
                "WITH t AS (SELECT arrow_cast(column1, '{ty}') AS p FROM (VALUES {values})), \
                 l AS (SELECT p, n FROM t CROSS JOIN (VALUES (1), (2), (3), (4)) AS k(n)) \
                 SELECT count(*) AS rows, \
                   count(*) FILTER (WHERE category_level(p, n) IS DISTINCT FROM \
                     nullif(split_part(replace(p, '.', '/'), '/', n), '')) AS different, \
                   count(category_level(p, n)) AS levels, \
                   arrow_typeof(category_level(p, 1)) AS ty \
                 FROM l GROUP BY 4"
            );
            let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
            let b = &batches[0];
            let int = |i: usize| {
                b.column(i)
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .value(0)
            };
            assert_eq!(int(0), 52, "{ty}");
            assert_eq!(int(1), 0, "{ty}: levels differ from split_part");
            assert_eq!(int(2), 26, "{ty}");
            let out_ty = arrow::compute::cast(b.column(3), &DataType::Utf8).unwrap();
            assert_eq!(out_ty.as_string::<i32>().value(0), ty);
        }
        assert_eq!(one("SELECT category_level('a.b/c', 2)").await, "b");
        assert_eq!(
            one(
                "SELECT category_level(arrow_cast('a_category_longer_than_12/sub', 'Utf8View'), 1)"
            )
            .await,
            "a_category_longer_than_12"
        );
        assert_eq!(one("SELECT category_level('a//c', 2)").await, "NULL");
        // A constant level below 1 fails when planned; one from a column, when computed.
        let err = ctx.sql("SELECT category_level('a', 0)").await.unwrap_err();
        assert!(err.to_string().contains("1 or more, not 0"), "{err}");
        let err = ctx
            .sql("SELECT category_level('a', n) FROM (VALUES (2), (-1)) AS t(n)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("1 or more, not -1"), "{err}");
    }

    #[tokio::test]
    async fn json_paths_pick_values() {
        let doc =
            r#"'{"a": [{"id": "x", "price": 12.5, "ok": true}, {"id": null}], "n": {"k": 1}}'"#;
        assert_eq!(
            one(&format!("SELECT json_get({doc}, 'a', 0, 'id')")).await,
            "x"
        );
        assert_eq!(
            one(&format!("SELECT json_get({doc}, 'a', 0, 'price')")).await,
            "12.5"
        );
        assert_eq!(
            one(&format!("SELECT json_get({doc}, 'a', 0, 'ok')")).await,
            "true"
        );
        assert_eq!(
            one(&format!("SELECT json_get({doc}, 'a', 1, 'id')")).await,
            "NULL"
        );
        assert_eq!(
            one(&format!("SELECT json_get({doc}, 'a', 5, 'id')")).await,
            "NULL"
        );
        assert_eq!(
            one(&format!("SELECT json_get({doc}, 'n')")).await,
            r#"{"k":1}"#
        );
        assert_eq!(one(&format!("SELECT json_length({doc}, 'a')")).await, "2");
        assert_eq!(one("SELECT json_length('not json')").await, "NULL");
        assert_eq!(one("SELECT json_get(NULL, 'a')").await, "NULL");
    }

    #[tokio::test]
    async fn json_param_reads_ga4_key_value_arrays() {
        let doc = r#"'{"event_params": [
            {"key": "ga_session_id", "value": {"string_value": null, "int_value": "4863244888", "double_value": null}},
            {"key": "page_title", "value": {"string_value": "Home", "int_value": null}},
            {"key": "value", "value": {"string_value": null, "int_value": null, "double_value": 51.97}},
            {"key": "page_title", "value": {"string_value": "second", "int_value": null}},
            {"key": "empty", "value": {"string_value": null, "int_value": null}},
            {"key": "plain", "value": 7}
        ], "n": 1}'"#;
        let param = |name: &str| format!("SELECT json_param({doc}, 'event_params', '{name}')");
        assert_eq!(one(&param("ga_session_id")).await, "4863244888");
        assert_eq!(one(&param("page_title")).await, "Home");
        assert_eq!(one(&param("value")).await, "51.97");
        assert_eq!(one(&param("plain")).await, "7");
        assert_eq!(one(&param("empty")).await, "NULL");
        assert_eq!(one(&param("absent")).await, "NULL");
        // Not a key/value array at that path.
        assert_eq!(
            one(&format!("SELECT json_param({doc}, 'n', 'x')")).await,
            "NULL"
        );
        let ctx = SessionContext::new();
        register(&ctx);
        let err = ctx.sql("SELECT json_param('[]')").await.unwrap_err();
        assert!(
            err.to_string().contains("needs the JSON and a name"),
            "{err}"
        );
    }

    /// Column `c` of the batches as text, "NULL" for NULL.
    fn column_text(batches: &[arrow::array::RecordBatch], c: usize) -> Vec<String> {
        batches
            .iter()
            .flat_map(|b| {
                let col = arrow::compute::cast(b.column(c), &DataType::Utf8).unwrap();
                let col = col.as_string::<i32>().clone();
                (0..col.len())
                    .map(|i| col.is_valid(i).then(|| col.value(i).to_string()))
                    .map(|v| v.unwrap_or_else(|| "NULL".into()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The parsed documents one call leaves for the next belong to the column they were parsed
    /// from: calls alternating between two columns, and over a slice of one, read their own.
    #[tokio::test]
    async fn json_calls_on_different_columns_read_their_own_documents() {
        let ctx = SessionContext::new();
        register(&ctx);
        let sql = "SELECT json_get(a, 'k') AS a1, json_get(b, 'k') AS b1, json_get(a, 'k') AS a2, \
                   json_length(b) AS bn, json_get(a, 'k') AS a3 \
                   FROM (VALUES ('{\"k\": \"a0\"}', '{\"k\": \"b0\"}'), \
                                ('{\"k\": \"a1\"}', '{\"k\": \"b1\", \"z\": 2}'), \
                                ('{\"k\": \"a2\"}', 'not json')) AS t(a, b)";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let text = |c: usize| column_text(&batches, c);
        for c in [0, 2, 4] {
            assert_eq!(text(c), ["a0", "a1", "a2"], "column {c}");
        }
        assert_eq!(text(1), ["b0", "b1", "NULL"]);
        assert_eq!(text(3), ["1", "2", "NULL"]);
        // CASE and coalesce evaluate their branches on filtered copies of the column, whose rows
        // are found among those parsed already.
        let sql = "SELECT json_get(a, 'k') AS k, \
                   CASE WHEN a LIKE '%a1%' OR a LIKE '%a3%' THEN json_get(a, 'v') END AS v, \
                   coalesce(json_get(a, 'missing'), json_get(a, 'v'), json_get(a, 'k')) AS c \
                   FROM (VALUES ('{\"k\": \"a0\"}'), ('{\"k\": \"a1\", \"v\": 1}'), \
                                (NULL), ('{\"k\": \"a0\"}'), ('{\"k\": \"a3\", \"v\": 3}')) AS t(a)";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let text = |c: usize| column_text(&batches, c);
        assert_eq!(text(0), ["a0", "a1", "NULL", "a0", "a3"]);
        assert_eq!(text(1), ["NULL", "1", "NULL", "NULL", "3"]);
        assert_eq!(text(2), ["a0", "1", "NULL", "a0", "3"]);
        // A slice of a column parsed whole reads its own rows.
        let sliced = ctx
            .sql(
                "SELECT json_get(a, 'k') FROM (VALUES ('{\"k\": 1}'), ('{\"k\": 2}'), ('{\"k\": 3}')) \
                 AS t(a) LIMIT 2 OFFSET 1",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let col = sliced[0].column(0).as_string::<i32>();
        assert_eq!((col.value(0), col.value(1)), ("2", "3"));
    }

    #[tokio::test]
    async fn trim_to_null_is_nullif_of_trim_for_every_string_type() {
        let ctx = SessionContext::new();
        register(&ctx);
        // Columns that need nothing, only NULLs for empty strings, or trimming; with NULLs in.
        let cases = [
            "('a'), ('bcdefghijklmnopqrstuvwxyz'), (NULL)",
            "('a'), (''), (NULL), ('a long value past twelve bytes'), ('')",
            "('  a '), (''), ('   '), (NULL), (' a long value past twelve bytes ')",
        ];
        for rows in cases {
            for ty in ["VARCHAR", "Utf8View", "LargeUtf8"] {
                let cast = match ty {
                    "VARCHAR" => "arrow_cast(v, 'Utf8')".to_string(),
                    "LargeUtf8" => "arrow_cast(v, 'LargeUtf8')".to_string(),
                    _ => "arrow_cast(v, 'Utf8View')".to_string(),
                };
                let sql = format!(
                    "SELECT trim_to_null(x) IS NOT DISTINCT FROM nullif(trim(x), '') AS same, \
                     arrow_typeof(trim_to_null(x)) = arrow_typeof(x) AS same_type \
                     FROM (SELECT {cast} AS x FROM (VALUES {rows}) t(v))"
                );
                let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
                for b in &batches {
                    for c in 0..2 {
                        let col = b.column(c).as_boolean();
                        assert!(col.iter().all(|v| v == Some(true)), "{sql}");
                    }
                }
            }
        }
        assert_eq!(one("SELECT trim_to_null(' x ')").await, "x");
        assert_eq!(one("SELECT trim_to_null('  ')").await, "NULL");
    }

    /// A few values of one column are an `IN` list (which Parquet bloom filters can answer);
    /// more are the set lookup; both keep the same rows.
    #[tokio::test]
    async fn a_few_keys_of_one_column_are_an_in_list_matching_what_the_set_matches() {
        use arrow::array::RecordBatch;
        use datafusion::logical_expr::Expr;
        let batch = RecordBatch::try_from_iter([(
            "visitor",
            Arc::new(StringViewArray::from(vec![
                Some("a"),
                Some("b"),
                None,
                Some("c"),
                Some("a"),
            ])) as ArrayRef,
        )])
        .unwrap();
        let few: std::collections::HashSet<String> = ["a", "c", "zz"].map(String::from).into();
        let mut many = few.clone();
        many.extend((0..IN_LIST_MAX).map(|i| format!("x{i}")));
        let ctx = SessionContext::new();
        let kept = |filter: Expr| {
            let df = ctx
                .read_batch(batch.clone())
                .unwrap()
                .filter(filter)
                .unwrap();
            async move {
                let batches = df.collect().await.unwrap();
                let mut v: Vec<String> = batches
                    .iter()
                    .flat_map(|b| {
                        let c = arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
                        c.as_string::<i32>()
                            .iter()
                            .map(|v| v.unwrap().to_string())
                            .collect::<Vec<_>>()
                    })
                    .collect();
                v.sort();
                v
            }
        };
        let as_list = in_key_sets(vec![("visitor", few)]);
        assert!(matches!(as_list, Expr::InList(_)), "{as_list}");
        let as_set = in_key_sets(vec![("visitor", many)]);
        assert!(matches!(as_set, Expr::ScalarFunction(_)), "{as_set}");
        assert_eq!(kept(as_list).await, vec!["a", "a", "c"]);
        assert_eq!(kept(as_set).await, vec!["a", "a", "c"]);
        let none = in_key_sets(vec![("visitor", Default::default())]);
        assert!(kept(none).await.is_empty());
    }

    #[tokio::test]
    async fn key_sets_match_a_row_by_any_of_its_columns() {
        use arrow::array::{RecordBatch, StringArray};
        let batch = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(StringArray::from(vec![
                    Some("e1"),
                    Some("e2"),
                    None,
                    Some("e4"),
                ])) as ArrayRef,
            ),
            (
                "visitor",
                Arc::new(StringViewArray::from(vec![
                    Some("a"),
                    Some("b"),
                    Some("c"),
                    None,
                ])) as ArrayRef,
            ),
        ])
        .unwrap();
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        let ctx = SessionContext::new();
        let kept = ctx
            .read_batch(batch)
            .unwrap()
            .filter(in_key_sets(vec![
                ("id", set(&["e2", "e4"])),
                ("visitor", set(&["c"])),
            ]))
            .unwrap()
            .collect()
            .await
            .unwrap();
        let ids: Vec<Option<String>> = kept
            .iter()
            .flat_map(|b| {
                let c = arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
                c.as_string::<i32>()
                    .iter()
                    .map(|v| v.map(str::to_string))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(ids, vec![Some("e2".into()), None, Some("e4".into())]);
    }
}
