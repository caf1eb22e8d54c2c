//! Source mappings: how another tracker's export becomes canonical rows.
//!
//! A source is one SQL file, `sql/sources/<name>.sql` (embedded) or `<sources_dir>/<name>.sql`
//! (the user's, read at run time, replacing an embedded one of the same name). Its leading comment
//! block says how the raw file is parsed:
//!
//! ```text
//! -- format: csv | ndjson
//! -- delimiter: , | ; | tab | |           (csv; default ,)
//! -- header: true | false | auto          (csv; auto = a first line equal to the columns)
//! -- columns: a, b, c                     (csv: the columns the mapping reads, by header name)
//! -- timestamp_formats: %Y-%m-%d %H:%M:%S UTC | %d/%m/%Y %H:%M   (chrono formats, tried in order)
//! -- param.app_ids: []                    (a bound parameter $app_ids and its default, TOML)
//! ```
//!
//! The body is one SELECT (CTEs welcome) from the table `source`: the declared columns as strings
//! (empty cells NULL) for CSV, plus `_line` (the line number) and `_raw` (the line's text; for
//! NDJSON the only payload, read with `json_get`). It returns canonical columns by name, `_line`,
//! optionally `_reject` (a non-NULL text sends the row to quarantine with that detail) and
//! `properties` (a JSON object merged with any other, non-canonical output column).
//!
//! Every line is accounted for: a line the mapping returns no row for is quarantined as
//! `unmapped_line`; a line it returns several rows for (one per product) counts its extra rows in
//! `extra_rows`, so `lines + extra_rows = landed + quarantined + blank`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Int64Builder, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::prelude::{SessionConfig, SessionContext};

use super::parse::Format;
use crate::error::{root_message, Error, Result};
use crate::models::Model;

/// What kind of TOML value `v` is, for messages about a parameter of the wrong kind.
fn toml_kind(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a number",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "a list",
        toml::Value::Table(_) => "a table",
    }
}

/// The sources compiled into the binary, besides `native`.
const EMBEDDED: &[(&str, &str)] = &[
    (
        "diginetica",
        include_str!("../../sql/sources/diginetica.sql"),
    ),
    ("ga4", include_str!("../../sql/sources/ga4.sql")),
    ("rees46", include_str!("../../sql/sources/rees46.sql")),
    ("segment", include_str!("../../sql/sources/segment.sql")),
    ("snowplow", include_str!("../../sql/sources/snowplow.sql")),
];

/// Whether a CSV source's files start with a header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    Yes,
    No,
    /// A first line whose fields are exactly the declared columns is a header.
    Auto,
}

/// A loaded, planned source mapping.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    /// `embedded:sql/sources/<name>.sql` or the user's path, for messages.
    pub origin: String,
    pub format: Format,
    pub delimiter: u8,
    pub header: Header,
    /// The columns the mapping reads (CSV).
    pub columns: Vec<String>,
    /// Extra timestamp formats, tried after RFC 3339 and the ISO-like defaults.
    pub timestamp_formats: Vec<String>,
    sql: String,
    params: ParamValues,
    schema: SchemaRef,
}

/// The names of every source: `native`, the embedded ones and those in `dir`.
pub fn available(dir: Option<&Path>) -> Vec<String> {
    let mut names: Vec<String> = std::iter::once("native".to_string())
        .chain(EMBEDDED.iter().map(|(n, _)| n.to_string()))
        .collect();
    if let Some(entries) = dir.and_then(|d| std::fs::read_dir(d).ok()) {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) == Some("sql") {
                if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                    names.push(stem.to_string());
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Loads and plans source `name` (`None` for the native format). Any problem with the mapping or
/// its parameters is a configuration error (exit 2) naming the file.
pub async fn load(
    name: &str,
    dir: Option<&Path>,
    settings: &BTreeMap<String, BTreeMap<String, toml::Value>>,
) -> Result<Option<Arc<Source>>> {
    if let Some(d) = dir {
        if !d.is_dir() {
            return Err(Error::config(format!(
                "sources_dir {}: not a directory",
                d.display()
            )));
        }
    }
    if name == "native" {
        if let Some(extra) = settings.get("native") {
            if !extra.is_empty() {
                return Err(Error::config("[sources.native] takes no parameters"));
            }
        }
        return Ok(None);
    }
    let user = dir.map(|d| d.join(format!("{name}.sql")));
    let (origin, sql) = match user.filter(|p| p.is_file()) {
        Some(p) => {
            let sql = std::fs::read_to_string(&p)
                .map_err(|e| Error::config(format!("cannot read {}: {e}", p.display())))?;
            (p.display().to_string(), sql)
        }
        None => match EMBEDDED.iter().find(|(n, _)| *n == name) {
            Some((_, sql)) => (format!("embedded:sql/sources/{name}.sql"), sql.to_string()),
            None => {
                return Err(Error::usage(format!(
                    "--source {name}: unknown source (available: {})",
                    available(dir).join(", ")
                )))
            }
        },
    };
    let source = parse(name, origin, sql, settings.get(name))?;
    source.plan_check().await?;
    Ok(Some(Arc::new(source)))
}

fn parse(
    name: &str,
    origin: String,
    sql: String,
    config: Option<&BTreeMap<String, toml::Value>>,
) -> Result<Source> {
    let bad = |msg: String| Error::config(format!("source mapping {origin}: {msg}"));
    let model = Model {
        name: name.to_string(),
        origin: origin.clone(),
        sql,
    };
    let format = match model.directive("format").as_deref() {
        Some("csv") => Format::Csv,
        Some("ndjson") | Some("json") => Format::Ndjson,
        Some(other) => return Err(bad(format!("format {other:?}: expected csv or ndjson"))),
        None => return Err(bad("no `-- format: csv|ndjson` line in its header".into())),
    };
    let delimiter = match model.directive("delimiter").as_deref() {
        None | Some(",") => b',',
        Some(";") => b';',
        Some("|") => b'|',
        Some("tab") | Some("\\t") => b'\t',
        Some(other) => {
            return Err(bad(format!(
                "delimiter {other:?}: expected one of , ; | tab"
            )))
        }
    };
    let header = match model.directive("header").as_deref() {
        None | Some("true") => Header::Yes,
        Some("false") => Header::No,
        Some("auto") => Header::Auto,
        Some(other) => {
            return Err(bad(format!(
                "header {other:?}: expected true, false or auto"
            )))
        }
    };
    let columns = model.directive_list("columns");
    if format == Format::Csv && columns.is_empty() {
        return Err(bad(
            "a CSV source declares the columns it reads: `-- columns: a, b, c`".into(),
        ));
    }
    for c in &columns {
        if c.starts_with('_') {
            return Err(bad(format!(
                "column {c}: names starting with _ are reserved (_line, _raw)"
            )));
        }
    }
    let timestamp_formats: Vec<String> = model
        .directive("timestamp_formats")
        .map(|v| {
            v.split(" | ")
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();

    // Parameters: declared with defaults in the header, overridden by [sources.<name>].
    let mut declared: BTreeMap<String, toml::Value> = BTreeMap::new();
    for line in model
        .sql
        .lines()
        .map(str::trim)
        .take_while(|l| l.is_empty() || l.starts_with("--"))
    {
        let Some(rest) = line.trim_start_matches("--").trim().strip_prefix("param.") else {
            continue;
        };
        let Some((key, value)) = rest.split_once(':') else {
            return Err(bad(format!("`-- param.{rest}` needs `: default`")));
        };
        let parsed: toml::Table =
            toml::from_str(&format!("v = {}", value.trim())).map_err(|_| {
                bad(format!(
                    "param.{} default {:?} is not a TOML value",
                    key.trim(),
                    value.trim()
                ))
            })?;
        declared.insert(key.trim().to_string(), parsed["v"].clone());
    }
    if let Some(cfg) = config {
        for (k, v) in cfg {
            if !declared.contains_key(k) {
                let known: Vec<&str> = declared.keys().map(String::as_str).collect();
                return Err(Error::config(format!(
                    "[sources.{name}] {k}: unknown parameter (parameters of {origin}: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
            let default = &declared[k];
            if toml_kind(v) != toml_kind(default)
                && !(toml_kind(v) == "an integer" && toml_kind(default) == "a number")
            {
                return Err(Error::config(format!(
                    "[sources.{name}] {k}: expected {} like its default {default}, not {}",
                    toml_kind(default),
                    toml_kind(v)
                )));
            }
            declared.insert(k.clone(), v.clone());
        }
    }
    let mut params: Vec<(String, ScalarValue)> = Vec::new();
    for (k, v) in &declared {
        let scalar = to_scalar(v).ok_or_else(|| {
            Error::config(format!(
                "[sources.{name}] {k}: expected a string, number, boolean or list of strings"
            ))
        })?;
        params.push((k.clone(), scalar));
    }

    let mut fields: Vec<Field> = columns
        .iter()
        .map(|c| Field::new(c, DataType::Utf8, true))
        .collect();
    fields.push(Field::new("_line", DataType::Int64, false));
    fields.push(Field::new("_raw", DataType::Utf8, false));
    Ok(Source {
        name: name.to_string(),
        origin,
        format,
        delimiter,
        header,
        columns,
        timestamp_formats,
        sql: model.sql,
        params: ParamValues::from(params),
        schema: Arc::new(Schema::new(fields)),
    })
}

fn to_scalar(v: &toml::Value) -> Option<ScalarValue> {
    Some(match v {
        toml::Value::String(s) => ScalarValue::Utf8(Some(s.clone())),
        toml::Value::Integer(i) => ScalarValue::Int64(Some(*i)),
        toml::Value::Float(f) => ScalarValue::Float64(Some(*f)),
        toml::Value::Boolean(b) => ScalarValue::Boolean(Some(*b)),
        toml::Value::Array(items) => {
            let values: Option<Vec<ScalarValue>> = items
                .iter()
                .map(|i| i.as_str().map(|s| ScalarValue::Utf8(Some(s.to_string()))))
                .collect();
            ScalarValue::List(ScalarValue::new_list_nullable(&values?, &DataType::Utf8))
        }
        _ => return None,
    })
}

thread_local! {
    /// Each parser thread runs mappings on its own single-threaded runtime and session.
    static ENGINE: RefCell<Option<Engine>> = const { RefCell::new(None) };
}

/// A parser thread's mapping engine, and the mapping it planned last.
struct Engine {
    rt: tokio::runtime::Runtime,
    ctx: SessionContext,
    planned: Option<Planned>,
}

/// A mapping planned once (parsed, analysed and optimised) over a `source` table whose rows each
/// chunk replaces: planning GA4's mapping took as long as mapping 800 of its lines, and a
/// chunk is a few thousand. Each chunk still gets its own physical plan (operators keep state
/// from one execution). A mapping calling a function that is not immutable (`now()`) is planned
/// for every chunk, as the optimiser folds such calls into constants.
struct Planned {
    /// The mapping's SQL and parameters.
    key: String,
    table: Arc<ChunkTable>,
    plan: Option<datafusion::logical_expr::LogicalPlan>,
}

/// The `source` table of a mapping: the rows of the chunk being mapped.
#[derive(Debug)]
struct ChunkTable {
    schema: SchemaRef,
    rows: std::sync::Mutex<Option<RecordBatch>>,
}

#[async_trait::async_trait]
impl datafusion::catalog::TableProvider for ChunkTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        datafusion::datasource::TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::prelude::Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let rows = self.rows.lock().expect("not poisoned").clone();
        datafusion::datasource::MemTable::try_new(
            self.schema.clone(),
            vec![rows.into_iter().collect()],
        )?
        .scan(state, projection, filters, limit)
        .await
    }
}

fn new_session() -> SessionContext {
    let config = SessionConfig::new()
        .with_target_partitions(1)
        .with_batch_size(64 * 1024)
        .with_information_schema(false);
    let ctx = SessionContext::new_with_config(config);
    crate::sqlfn::register(&ctx);
    ctx
}

impl Source {
    /// The schema of the `source` table a chunk is presented as.
    pub fn source_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn error(&self, e: impl std::fmt::Display) -> Error {
        Error::config(format!("source mapping {}: {e}", self.origin))
    }

    /// Plans the mapping against an empty `source` and checks what it returns, so a broken
    /// mapping fails before any file is read.
    async fn plan_check(&self) -> Result<()> {
        let ctx = new_session();
        let empty = RecordBatch::new_empty(self.schema.clone());
        ctx.register_batch("source", empty)
            .map_err(|e| self.error(root_message(&e)))?;
        let df = ctx
            .sql(&self.sql)
            .await
            .and_then(|df| df.with_param_values(self.params.clone()))
            .map_err(|e| self.error(root_message(&e)))?;
        let out = df.schema().clone();
        let names: Vec<&str> = out.fields().iter().map(|f| f.name().as_str()).collect();
        for required in ["_line", "event_id", "event_time", "event_type"] {
            if !names.contains(&required) {
                return Err(self.error(format!(
                    "the SELECT returns no {required} column (it returns: {})",
                    names.join(", ")
                )));
            }
        }
        let line = out
            .field_with_unqualified_name("_line")
            .expect("checked above");
        if !line.data_type().is_integer() {
            return Err(self.error(format!(
                "_line must be the integer line number from source, not {}",
                line.data_type()
            )));
        }
        // Run it once on the empty input: catches problems the planner defers to execution.
        df.collect()
            .await
            .map_err(|e| self.error(root_message(&e)))?;
        Ok(())
    }

    /// Runs the mapping over one chunk's rows (on the calling thread).
    pub fn map(&self, input: RecordBatch) -> Result<Vec<RecordBatch>> {
        ENGINE.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .map_err(|e| Error::runtime(format!("cannot start a runtime: {e}")))?;
                *slot = Some(Engine {
                    rt,
                    ctx: new_session(),
                    planned: None,
                });
            }
            let engine = slot.as_mut().expect("just set");
            let key = format!("{}\u{0}{:?}", self.sql, self.params);
            if engine.planned.as_ref().map(|p| &p.key) != Some(&key) {
                engine.planned = Some(self.plan(engine, key)?);
            }
            let (rt, ctx) = (&engine.rt, &engine.ctx);
            let planned = engine.planned.as_ref().expect("just planned");
            *planned.table.rows.lock().expect("not poisoned") = Some(input);
            let mapped = rt.block_on(async {
                match &planned.plan {
                    Some(plan) => {
                        let state = ctx.state();
                        let physical = state
                            .query_planner()
                            .create_physical_plan(plan, &state)
                            .await?;
                        datafusion::physical_plan::collect(physical, state.task_ctx()).await
                    }
                    None => {
                        ctx.sql(&self.sql)
                            .await?
                            .with_param_values(self.params.clone())?
                            .collect()
                            .await
                    }
                }
            });
            *planned.table.rows.lock().expect("not poisoned") = None;
            mapped.map_err(|e| self.runtime_error(&e))
        })
    }

    /// Registers a new `source` table in the engine's session and plans the mapping over it.
    fn plan(&self, engine: &Engine, key: String) -> Result<Planned> {
        let table = Arc::new(ChunkTable {
            schema: self.schema.clone(),
            rows: std::sync::Mutex::new(None),
        });
        let ctx = &engine.ctx;
        let _ = ctx.deregister_table("source");
        ctx.register_table("source", table.clone())
            .map_err(|e| self.runtime_error(&e))?;
        let plan = engine
            .rt
            .block_on(async {
                let df = ctx
                    .sql(&self.sql)
                    .await?
                    .with_param_values(self.params.clone())?;
                let plan = df.logical_plan();
                match crate::sqlfn::calls_only_immutable_functions(plan) {
                    true => ctx.state().optimize(plan).map(Some),
                    false => Ok(None),
                }
            })
            .map_err(|e| self.runtime_error(&e))?;
        Ok(Planned { key, table, plan })
    }

    fn runtime_error(&self, e: &datafusion::error::DataFusionError) -> Error {
        Error::runtime(format!(
            "source mapping {} failed: {}",
            self.origin,
            root_message(e)
        ))
    }
}

/// Builds the `source` table of one chunk: the declared columns, `_line` and `_raw`.
pub struct SourceRows {
    columns: Vec<StringBuilder>,
    line: Int64Builder,
    raw: StringBuilder,
}

impl SourceRows {
    pub fn new(source: &Source) -> Self {
        SourceRows {
            columns: source
                .columns
                .iter()
                .map(|_| StringBuilder::new())
                .collect(),
            line: Int64Builder::new(),
            raw: StringBuilder::new(),
        }
    }

    /// Appends one record: `values[i]` feeds declared column i (empty text → NULL).
    pub fn push<'a>(&mut self, line: u64, raw: &str, values: impl Iterator<Item = &'a str>) {
        for (b, v) in self.columns.iter_mut().zip(values) {
            if v.is_empty() {
                b.append_null();
            } else {
                b.append_value(v);
            }
        }
        self.line.append_value(line as i64);
        self.raw.append_value(raw);
    }

    pub fn finish(mut self, schema: SchemaRef) -> Result<RecordBatch> {
        let mut cols: Vec<arrow::array::ArrayRef> = self
            .columns
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as arrow::array::ArrayRef)
            .collect();
        cols.push(Arc::new(self.line.finish()));
        cols.push(Arc::new(self.raw.finish()));
        Ok(RecordBatch::try_new(schema, cols)?)
    }
}

/// For a CSV source: which record field feeds each declared column, from the file's header.
pub fn column_positions(
    source: &Source,
    header: &[String],
) -> std::result::Result<Vec<usize>, String> {
    let index: HashMap<&str, usize> = header
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    source
        .columns
        .iter()
        .map(|c| {
            index.get(c.as_str()).copied().ok_or_else(|| {
                format!(
                    "header has no column {c}, which source {} reads (header: {})",
                    source.name,
                    truncate_list(header)
                )
            })
        })
        .collect()
}

fn truncate_list(cols: &[String]) -> String {
    if cols.len() <= 12 {
        cols.join(",")
    } else {
        format!("{},… ({} columns)", cols[..12].join(","), cols.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_embedded_source_plans() {
        for (name, _) in EMBEDDED {
            let s = load(name, None, &BTreeMap::new()).await;
            assert!(s.is_ok(), "{name}: {:?}", s.err());
        }
    }

    #[tokio::test]
    async fn a_parameter_of_the_wrong_kind_is_a_config_error() {
        let cfg = BTreeMap::from([(
            "ga4".to_string(),
            BTreeMap::from([(
                "ignored_events".to_string(),
                toml::Value::String("scroll".into()),
            )]),
        )]);
        let e = load("ga4", None, &cfg).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("[sources.ga4] ignored_events: expected a list like its default"),
            "{e}"
        );
        assert!(e.to_string().ends_with("not a string"), "{e}");
        let ok = BTreeMap::from([(
            "ga4".to_string(),
            BTreeMap::from([("ignored_events".to_string(), toml::Value::Array(vec![]))]),
        )]);
        assert!(load("ga4", None, &ok).await.is_ok());
    }

    #[tokio::test]
    async fn unknown_parameters_are_config_errors() {
        let mut cfg = BTreeMap::new();
        cfg.insert(
            "snowplow".to_string(),
            BTreeMap::from([("app_idz".to_string(), toml::Value::Integer(1))]),
        );
        let e = load("snowplow", None, &cfg).await.unwrap_err();
        assert!(e.to_string().contains("app_idz: unknown parameter"), "{e}");
        assert!(load("klingon", None, &BTreeMap::new()).await.is_err());
    }

    /// Maps each chunk of `lines` (NDJSON texts) with `source`, returning the mapped event ids.
    fn mapped_ids(source: &Source, chunks: &[&[&str]]) -> Vec<Vec<String>> {
        chunks
            .iter()
            .map(|lines| {
                let mut rows = SourceRows::new(source);
                for (n, line) in lines.iter().enumerate() {
                    rows.push(n as u64 + 1, line, std::iter::empty());
                }
                let out = source
                    .map(rows.finish(source.source_schema()).unwrap())
                    .unwrap();
                let ids = out.iter().flat_map(|b| {
                    let c = arrow::compute::cast(
                        b.column_by_name("event_id").unwrap(),
                        &DataType::Utf8,
                    )
                    .unwrap();
                    let c = arrow::array::AsArray::as_string::<i32>(&c).clone();
                    c.iter()
                        .map(|v| v.unwrap_or("NULL").to_string())
                        .collect::<Vec<_>>()
                });
                ids.collect()
            })
            .collect()
    }

    #[test]
    fn each_chunk_is_mapped_from_its_own_rows_and_a_clock_is_read_for_each() {
        let mapping = |select: &str| {
            let sql = format!(
                "-- format: ndjson\nSELECT _line, json_get(_raw, 'id') AS event_id, \
                 '2026-01-01T00:00:00Z' AS event_time, 'page_view' AS event_type{select} \
                 FROM source WHERE json_get(_raw, 'id') <> 'skip'"
            );
            parse("t", "test".into(), sql, None).unwrap()
        };
        let chunks: &[&[&str]] = &[
            &[r#"{"id": "a"}"#, r#"{"id": "skip"}"#],
            &[r#"{"id": "b"}"#, r#"{"id": "c"}"#, r#"{"id": "d"}"#],
            &[],
            &[r#"{"id": "e"}"#],
        ];
        let expected = [vec!["a"], vec!["b", "c", "d"], vec![], vec!["e"]];
        let planned = || {
            ENGINE.with_borrow(|e| {
                e.as_ref()
                    .and_then(|e| e.planned.as_ref())
                    .map(|p| p.plan.is_some())
            })
        };
        let fixed = mapping("");
        assert_eq!(mapped_ids(&fixed, chunks), expected);
        assert_eq!(planned(), Some(true), "planned once, kept for every chunk");
        // Another mapping on the same thread is planned anew, and one that reads the clock is
        // planned for every chunk (the optimiser would fold now() into the first chunk's time).
        let clocked = mapping(", now() AS received_at");
        assert_eq!(mapped_ids(&clocked, chunks), expected);
        assert_eq!(planned(), Some(false));
        assert_eq!(mapped_ids(&fixed, chunks), expected);
        assert_eq!(planned(), Some(true));
    }
}
