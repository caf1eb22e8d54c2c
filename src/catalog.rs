//! The lake's tables: fixed SQL names, schemas and partitioning, and how they are created, opened
//! and registered with DataFusion (the role of dbt's `source()`/`ref()`).
//!
//! Every table is a Delta table in `<lake>/<name>/`. Later layers add their definitions here.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::StructType;
use deltalake::protocol::SaveMode;
use deltalake::DeltaTable;

use crate::error::{Error, Result};
use crate::storage::Lake;

/// A table of the lake.
#[derive(Debug)]
pub struct TableDef {
    pub name: &'static str,
    pub description: &'static str,
    pub partition_columns: &'static [&'static str],
    pub schema: fn() -> SchemaRef,
}

pub const RAW_EVENTS: TableDef = TableDef {
    name: "raw_events",
    description: "validated events as landed, one row per accepted input line",
    partition_columns: &["event_date", "segment"],
    schema: raw_events_schema,
};

pub const QUARANTINE: TableDef = TableDef {
    name: "quarantine",
    description: "rejected input lines with their reason",
    partition_columns: &["ingest_date"],
    schema: quarantine_schema,
};

pub const INGESTED_FILES: TableDef = TableDef {
    name: "ingested_files",
    description: "one row per source file ingested: the load history",
    partition_columns: &[],
    schema: ingested_files_schema,
};

pub const EVENTS: TableDef = TableDef {
    name: "events",
    description: "clean events: normalised, one row per event_id, sessionized, identities stitched",
    partition_columns: &["event_date", "segment"],
    schema: events_schema,
};

pub const EVENTS_CHANGES: TableDef = TableDef {
    name: "events_changes",
    description: "keys of the events rows each incremental clean changed, for incremental builds",
    partition_columns: &[],
    schema: events_changes_schema,
};

pub const USER_SEGMENT_HISTORY: TableDef = TableDef {
    name: "user_segment_history",
    description: "type-2 history of customer segment membership",
    partition_columns: &[],
    schema: user_segment_history_schema,
};

pub const RUNS: TableDef = TableDef {
    name: "_runs",
    description: "one row per `clicklake run`: timings, rows per stage, outcome",
    partition_columns: &[],
    schema: runs_schema,
};

pub const ERASURES: TableDef = TableDef {
    name: "erasures",
    description: "one row per `clicklake erase`: the pseudonymised person, rows removed per table",
    partition_columns: &[],
    schema: erasures_schema,
};

pub const CONSENTS: TableDef = TableDef {
    name: "consents",
    description:
        "consent decisions imported with `clicklake consent` (purpose, granted, when, version)",
    partition_columns: &[],
    schema: consents_schema,
};

pub const AUDIT: TableDef = TableDef {
    name: "_audit",
    description: "who ran run, erase and vacuum, when, and the outcome",
    partition_columns: &[],
    schema: audit_schema,
};

/// Every table with a fixed definition, in the order `tables` lists them (the star tables
/// defined by SQL models follow, see [`star_tables`]).
pub const ALL: &[&TableDef] = &[
    &RAW_EVENTS,
    &QUARANTINE,
    &INGESTED_FILES,
    &EVENTS,
    &EVENTS_CHANGES,
    &RUNS,
    &ERASURES,
    &CONSENTS,
    &AUDIT,
];

/// The tables of the star models in the configured `[build] sql_dir` (see [`use_star_dir`]).
static CONFIGURED_STAR_TABLES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Makes the tables of the models in `<dir>/star/` part of the lake's tables (for `sql`,
/// `tables`, `status`, `check`, `compact` and `history`), as the embedded models' are: a model of
/// the user's own, added with `[build] sql_dir`, builds a table analysts query like any other.
/// Called once, with the configuration; an unreadable directory adds nothing here (`build`
/// reports it).
pub fn use_star_dir(dir: Option<&std::path::Path>) {
    let mut names: Vec<String> = dir
        .and_then(|d| std::fs::read_dir(d.join("star")).ok())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|f| f.ends_with(".sql"))
        .map(|f| crate::models::view_name(&f))
        .collect();
    names.sort();
    let _ = CONFIGURED_STAR_TABLES.set(names);
}

/// The tables `build` writes: one per embedded star model, named after its file, and one per
/// model of the configured `[build] sql_dir` that adds a table.
pub fn star_tables() -> Vec<String> {
    let mut tables: Vec<String> = crate::models::embedded("star")
        .iter()
        .map(|(file, _)| crate::models::view_name(file))
        .collect();
    for name in CONFIGURED_STAR_TABLES.get().into_iter().flatten() {
        if !tables.contains(name) {
            tables.push(name.clone());
        }
    }
    tables
}

/// Whether `name` is one of the lake's own tables (fixed or built by `build`).
pub fn is_lake_table(name: &str) -> bool {
    ALL.iter().any(|d| d.name == name) || star_tables().iter().any(|t| t == name)
}

/// Every name is one of the lake's tables (a usage error naming them otherwise), before any I/O.
pub fn check_table_names(names: &[String]) -> Result<Vec<String>> {
    let mut all: Vec<String> = ALL.iter().map(|d| d.name.to_string()).collect();
    all.extend(star_tables());
    for n in names {
        if !all.contains(n) {
            return Err(Error::usage(format!(
                "unknown table {n:?}; the lake's tables are: {}",
                all.join(", ")
            )));
        }
    }
    Ok(all)
}

/// The tables named (checked against the lake's catalog), or every existing one, opened once
/// each; a named table that does not exist yet is left out.
pub async fn open_existing(lake: &Lake, names: &[String]) -> Result<Vec<(String, DeltaTable)>> {
    let mut opened = Vec::new();
    for name in existing_tables(lake, names).await? {
        if let Some(table) = lake.open_table(&name).await? {
            opened.push((name, table));
        }
    }
    Ok(opened)
}

/// What `compact` and `vacuum` check before they take the lock: the tables named are the
/// lake's (before any I/O), and the lake is there ([`require_lake`]).
pub async fn check_maintenance(lake: &Lake, names: &[String]) -> Result<()> {
    check_table_names(names)?;
    require_lake(lake).await
}

/// The lake is there: its `raw_events` table exists (every lake that ever ingested has it).
/// Commands that maintain or erase call this before taking the lock or writing anything, so a
/// mistyped `--lake` is exit 2 instead of a new lake holding one `_audit` row, or an erasure
/// reported as "recorded" in a lake nobody reads.
pub async fn require_lake(lake: &Lake) -> Result<()> {
    if lake.table_exists(RAW_EVENTS.name).await? {
        return Ok(());
    }
    Err(Error::usage(format!(
        "no lake at {}: it has no raw_events table (is --lake right? `clicklake ingest` creates \
         the lake)",
        crate::storage::redact(lake.root())
    )))
}

/// The tables named, checked against the lake's catalog, or every existing one.
pub async fn existing_tables(lake: &Lake, names: &[String]) -> Result<Vec<String>> {
    let all = check_table_names(names)?;
    let wanted = if names.is_empty() {
        all
    } else {
        names.to_vec()
    };
    let mut out = Vec::new();
    for n in wanted {
        if lake.table_exists(&n).await? {
            out.push(n);
        }
    }
    Ok(out)
}

/// The keys of `events` rows whose changed values clean records in `events_changes`: columns of
/// `events`, and `user_key`, the customer a row belongs to (see [`change_key_sql`]).
pub const CHANGE_KEYS: &[&str] = &[
    "session_key",
    "order_id",
    "product_id",
    "event_date",
    "user_key",
];

/// The columns of `events` that stitching and sessionization set: the only ones a row of an
/// earlier event can change in when a later one arrives (a first login, a late event).
pub const IDENTITY_COLUMNS: [&str; 3] = ["stitched_user_id", "session_key", "session_source"];

/// Where `events_changes` lists the keys of change key `key` whose rows changed in
/// [`IDENTITY_COLUMNS`] alone (same partition, same other values). They are listed under `key`
/// too; a model that reads none of those columns, directly or through the tables it reads, need
/// not recompute them.
pub fn identity_only_key(key: &str) -> String {
    format!("{key}:identity_only")
}

/// The SQL of change key `key` over the `events` row aliased `alias`. For `user_key` it is the
/// customer as text, `user<US>uid` (the stitched user_id when known, else the user_id) or
/// `anonymous<US>anonymous_id`: what the star schema's user_key is the md5 of. Recorded unhashed,
/// a build finds the customer's events by their identity columns instead of hashing every row.
pub fn change_key_sql(alias: &str, key: &str) -> String {
    match key {
        "user_key" => format!(
            "CASE WHEN coalesce({a}.stitched_user_id, {a}.user_id) IS NOT NULL \
             THEN concat('user', chr(31), coalesce({a}.stitched_user_id, {a}.user_id)) \
             WHEN {a}.anonymous_id IS NOT NULL THEN concat('anonymous', chr(31), {a}.anonymous_id) \
             END",
            a = alias
        ),
        _ => format!("{alias}.{key}"),
    }
}

/// The join of a table of customers `(id, registered)` (see [`customer_identity`]) aliased
/// `customers` to their rows of `events` aliased `events`.
pub fn customer_join(customers: &str, events: &str) -> String {
    format!(
        "{c}.id = coalesce({e}.stitched_user_id, {e}.user_id, {e}.anonymous_id) \
         AND {c}.registered = (coalesce({e}.stitched_user_id, {e}.user_id) IS NOT NULL)",
        c = customers,
        e = events
    )
}

/// True when change key `key` is a column of `events` rather than computed from its row.
pub fn is_events_column(key: &str) -> bool {
    key != "user_key"
}

/// A recorded `user_key` change (see [`change_key_sql`]) as (registered, identity): the user_id
/// of a registered customer, the anonymous_id of another.
pub fn customer_identity(recorded: &str) -> Option<(bool, &str)> {
    match recorded.split_once('\u{1f}')? {
        ("user", id) => Some((true, id)),
        ("anonymous", id) => Some((false, id)),
        _ => None,
    }
}

/// Star tables whose schema is fixed here because their model reads its own previous state.
pub const FIXED_STAR: &[&TableDef] = &[&USER_SEGMENT_HISTORY];

pub fn find(name: &str) -> Option<&'static TableDef> {
    ALL.iter()
        .chain(FIXED_STAR)
        .copied()
        .find(|t| t.name == name)
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn money() -> DataType {
    DataType::Decimal128(18, 2)
}

/// The canonical event columns, in order, as landed in `raw_events`.
pub fn raw_events_schema() -> SchemaRef {
    let s = |n: &str| Field::new(n, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        s("event_id"),
        Field::new("event_time", ts(), true),
        Field::new("received_at", ts(), true),
        s("event_type"),
        s("user_id"),
        s("anonymous_id"),
        s("session_id"),
        s("product_id"),
        s("category"),
        s("brand"),
        Field::new("price", money(), true),
        Field::new("quantity", DataType::Int64, true),
        s("currency"),
        s("order_id"),
        Field::new("revenue", money(), true),
        Field::new("checkout_step", DataType::Int64, true),
        s("page_url"),
        s("referrer"),
        s("device"),
        s("country"),
        s("email"),
        s("ip"),
        s("properties"),
        s("source_file"),
        Field::new("line_number", DataType::Int64, true),
        s("batch_id"),
        Field::new("ingested_at", ts(), true),
        Field::new("event_date", DataType::Date32, true),
        s("segment"),
    ]))
}

/// `events`: the raw_events columns, normalised, plus identity, session and category levels.
pub fn events_schema() -> SchemaRef {
    let s = |n: &str| Arc::new(Field::new(n, DataType::Utf8, true));
    let mut fields = Vec::new();
    for f in raw_events_schema().fields() {
        fields.push(f.clone());
        match f.name().as_str() {
            "user_id" => fields.push(s("stitched_user_id")),
            "session_id" => fields.extend([s("session_key"), s("session_source")]),
            "category" => fields.extend([s("category_l1"), s("category_l2"), s("category_l3")]),
            _ => {}
        }
    }
    Arc::new(Schema::new(fields))
}

pub fn events_changes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("change_id", DataType::Utf8, true),
        Field::new("key_column", DataType::Utf8, true),
        Field::new("key", DataType::Utf8, true),
    ]))
}

pub fn user_segment_history_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_key", DataType::Utf8, true),
        Field::new("segment", DataType::Utf8, true),
        Field::new("valid_from", ts(), true),
        Field::new("valid_to", ts(), true),
    ]))
}

pub fn quarantine_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("reason", DataType::Utf8, true),
        Field::new("detail", DataType::Utf8, true),
        Field::new("source_file", DataType::Utf8, true),
        Field::new("line_number", DataType::Int64, true),
        Field::new("raw", DataType::Utf8, true),
        Field::new("batch_id", DataType::Utf8, true),
        Field::new("ingested_at", ts(), true),
        Field::new("ingest_date", DataType::Date32, true),
    ]))
}

pub fn ingested_files_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("file_key", DataType::Utf8, true),
        Field::new("source_file", DataType::Utf8, true),
        Field::new("size_bytes", DataType::Int64, true),
        Field::new("version_tag", DataType::Utf8, true),
        Field::new("lines", DataType::Int64, true),
        Field::new("blank_lines", DataType::Int64, true),
        Field::new("landed", DataType::Int64, true),
        Field::new("quarantined", DataType::Int64, true),
        Field::new("batch_id", DataType::Utf8, true),
        Field::new("ingested_at", ts(), true),
        Field::new("forced", DataType::Boolean, true),
        Field::new("recovered", DataType::Boolean, true),
    ]))
}

pub fn erasures_schema() -> SchemaRef {
    let i = |n: &str| Field::new(n, DataType::Int64, true);
    let s = |n: &str| Field::new(n, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        Field::new("erasure_id", DataType::Utf8, false),
        Field::new("requested_at", ts(), false),
        // user_id | anonymous_id | email
        Field::new("subject_kind", DataType::Utf8, false),
        // HMAC pseudonym of the id given
        Field::new("subject", DataType::Utf8, false),
        // JSON array of the pseudonyms of every identity found (applied at landing)
        Field::new("identities", DataType::Utf8, false),
        // JSON object: table -> rows removed
        s("rows_removed"),
        i("rows_removed_total"),
        i("tables_touched"),
        i("files_rewritten"),
        i("files_deleted"),
        s("holder"),
    ]))
}

pub fn consents_schema() -> SchemaRef {
    let s = |n: &str| Field::new(n, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        s("user_id"),
        s("anonymous_id"),
        Field::new("purpose", DataType::Utf8, false),
        Field::new("granted", DataType::Boolean, false),
        Field::new("decided_at", ts(), false),
        s("version"),
        // file:<name>:<line>
        Field::new("source", DataType::Utf8, false),
        Field::new("imported_at", ts(), false),
    ]))
}

pub fn audit_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("at", ts(), false),
        // run | erase | vacuum
        Field::new("command", DataType::Utf8, false),
        // OS user@host pid
        Field::new("holder", DataType::Utf8, false),
        // success | failed | dry_run | checks_failed
        Field::new("outcome", DataType::Utf8, false),
        Field::new("detail", DataType::Utf8, true),
    ]))
}

pub fn runs_schema() -> SchemaRef {
    let i = |n: &str| Field::new(n, DataType::Int64, true);
    let f = |n: &str| Field::new(n, DataType::Float64, true);
    let s = |n: &str| Field::new(n, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("started_at", ts(), false),
        Field::new("finished_at", ts(), false),
        f("seconds"),
        // success | checks_failed | failed
        Field::new("outcome", DataType::Utf8, false),
        s("error"),
        s("holder"),
        s("inbox"),
        i("files_ingested"),
        i("lines_read"),
        i("rows_landed"),
        i("rows_quarantined"),
        f("ingest_seconds"),
        s("clean_mode"),
        i("raw_rows_consumed"),
        i("events_written"),
        f("clean_seconds"),
        s("build_mode"),
        i("tables_built"),
        f("build_seconds"),
        i("checks_passed"),
        i("checks_failed"),
        f("check_seconds"),
        // The whole summary as `run --json` prints it.
        s("summary"),
    ]))
}

/// Opens a table, creating it first when it does not exist (safe under concurrent creators).
pub async fn ensure_table(lake: &Lake, def: &TableDef) -> Result<DeltaTable> {
    if let Some(t) = lake.open_table(def.name).await? {
        return Ok(t);
    }
    let schema = (def.schema)();
    let kernel: StructType = schema
        .as_ref()
        .try_into_kernel()
        .map_err(|e| Error::runtime(format!("schema of {}: {e}", def.name)))?;
    let created = deltalake::operations::create::CreateBuilder::new()
        .with_location(lake.table_url(def.name).to_string())
        .with_storage_options(lake.storage_options())
        .with_table_name(def.name)
        .with_comment(def.description)
        .with_columns(kernel.fields().cloned())
        .with_partition_columns(def.partition_columns.iter().map(|s| s.to_string()))
        .with_save_mode(SaveMode::Ignore)
        .with_configuration_property(
            deltalake::TableProperty::CheckpointInterval,
            Some(crate::delta::CHECKPOINT_INTERVAL),
        )
        .await;
    match created {
        Ok(t) => Ok(t),
        Err(e) => match lake.open_table(def.name).await? {
            // Another process created it between our open and create: use theirs.
            Some(t) => Ok(t),
            None => Err(e.into()),
        },
    }
}

/// A session for SQL models: joins keep the sides the model wrote (small side first, where hash
/// joins build), instead of being swapped on statistics a Delta scan cannot always provide —
/// a swap would hold the whole event stream in memory.
pub fn model_session(memory_limit: u64) -> Result<SessionContext> {
    let ctx = session(memory_limit)?;
    ctx.state_ref()
        .write()
        .config_mut()
        .options_mut()
        .optimizer
        .join_reordering = false;
    Ok(ctx)
}

/// A session for the star models: as [`model_session`], with strings read as plain `Utf8`
/// instead of string views. The star models group, rank and join strings; views there keep
/// every decoded page of a scan alive, and each operator that gathers rows copies those pages
/// again (a 1.2M-session join took 8 s instead of a fraction of one).
pub fn star_session(memory_limit: u64) -> Result<SessionContext> {
    let ctx = model_session(memory_limit)?;
    ctx.state_ref()
        .write()
        .config_mut()
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    Ok(ctx)
}

/// A table's DataFusion provider, scanning with `ctx`'s settings (string views or not,
/// filter pushdown), and small files whole (see [`crate::whole_files`]).
pub async fn provider(
    ctx: &SessionContext,
    table: &DeltaTable,
) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
    table.update_datafusion_session(&ctx.state())?;
    let provider = table
        .table_provider()
        .with_session(Arc::new(ctx.state()))
        .await?;
    Ok(crate::whole_files::for_table(table, provider))
}

/// The column [`provider_with_file_column`] adds to every row: the file it was read from.
pub const FILE_COLUMN: &str = "__clicklake_file";

/// A table's provider whose rows carry the file they were read from in [`FILE_COLUMN`] (so that
/// just those files are rewritten), reading small files whole (see [`crate::whole_files`]).
pub async fn provider_with_file_column(
    table: &DeltaTable,
) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
    let provider = table.table_provider().with_file_column(FILE_COLUMN).await?;
    Ok(crate::whole_files::for_table(table, provider))
}

/// A DataFusion session with the run's memory budget and disk spilling.
pub fn session(memory_limit: u64) -> Result<SessionContext> {
    session_with(memory_limit, RuntimeEnvBuilder::new())
}

/// The session of `clicklake sql`: as [`session`], and a statement may also name files and
/// directories by path or URL (`FROM 'orders.csv'`, `FROM 's3://bucket/export/'`), read by
/// their extension as datafusion-cli and DuckDB do; `s3://` URLs use the lake's store settings.
pub fn adhoc_session(memory_limit: u64, lake: &Lake) -> Result<SessionContext> {
    let runtime = RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(crate::storage::SessionStores::new(lake)));
    Ok(session_with(memory_limit, runtime)?.enable_url_table())
}

fn session_with(memory_limit: u64, runtime: RuntimeEnvBuilder) -> Result<SessionContext> {
    let runtime = runtime
        .with_memory_pool(Arc::new(crate::memory::RunPool::new(memory_limit as usize)))
        .build_arc()?;
    let config = SessionConfig::new()
        .with_information_schema(true)
        .with_target_partitions(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        )
        .set_bool("datafusion.execution.parquet.pushdown_filters", true)
        // Long generated predicates (and analysts' long CASE chains) nest deeper than 50.
        .set_usize("datafusion.sql_parser.recursion_limit", 1024);
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    crate::sqlfn::register(&ctx);
    Ok(ctx)
}

/// Registers every existing table of the lake under its fixed name. Returns the names found.
pub async fn register_all(
    ctx: &SessionContext,
    lake: &Lake,
    as_of: Option<crate::storage::TableAsOf>,
) -> Result<Vec<String>> {
    Ok(register_all_opened(ctx, lake, as_of)
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}

/// As [`register_all`], with each registered table as it was opened.
pub async fn register_all_opened(
    ctx: &SessionContext,
    lake: &Lake,
    as_of: Option<crate::storage::TableAsOf>,
) -> Result<Vec<(String, DeltaTable)>> {
    let mut found = Vec::new();
    let star = star_tables();
    let names = ALL
        .iter()
        .map(|d| d.name.to_string())
        .chain(star.iter().cloned());
    // Opened concurrently: on an object store each open is a few round trips.
    let opened = futures::future::try_join_all(names.map(|name| async move {
        let table = match as_of {
            Some(a) => lake.open_table_as_of(&name, a).await?,
            None => lake.open_table(&name).await?,
        };
        Ok::<_, Error>((name, table))
    }))
    .await?;
    for (name, table) in opened {
        if let Some(table) = table {
            register(ctx, &name, &table).await?;
            found.push((name, table));
        }
    }
    Ok(found)
}

/// The names of the tables registered in `ctx`, sorted.
pub fn registered_tables(ctx: &SessionContext) -> Vec<String> {
    let mut names = ctx
        .catalog("datafusion")
        .and_then(|c| c.schema("public"))
        .map(|s| s.table_names())
        .unwrap_or_default();
    names.sort();
    names
}

/// Registers one opened table.
pub async fn register(ctx: &SessionContext, name: &str, table: &DeltaTable) -> Result<()> {
    ctx.register_table(name, provider(ctx, table).await?)?;
    Ok(())
}

/// A string column as a plain `StringArray`, whatever layout the engine chose (Utf8, Utf8View,
/// dictionary…): one cast per batch, no per-row allocation.
pub fn utf8(array: &arrow::array::ArrayRef) -> Result<arrow::array::StringArray> {
    let utf8 = arrow::compute::cast(array, &DataType::Utf8)?;
    Ok(utf8
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .expect("cast to Utf8 yields a StringArray")
        .clone())
}

/// The first non-null value of the first column of a query, as an integer (counts, and
/// timestamps cast to BIGINT, which gives their microseconds).
pub async fn query_i64(ctx: &SessionContext, sql: &str) -> Result<Option<i64>> {
    for batch in ctx.sql(sql).await?.collect().await? {
        let column = arrow::compute::cast(batch.column(0), &DataType::Int64)?;
        let column = column
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .expect("cast to Int64");
        if let Some(v) = column.iter().flatten().next() {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// The values of a string column as owned strings (for small results).
pub fn strings(array: &arrow::array::ArrayRef) -> Result<Vec<Option<String>>> {
    Ok(utf8(array)?.iter().map(|v| v.map(str::to_string)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded customer splits into its identity; anything else is not a customer.
    #[test]
    fn a_recorded_customer_is_its_identity() {
        assert_eq!(customer_identity("user\u{1f}u-1"), Some((true, "u-1")));
        assert_eq!(
            customer_identity("anonymous\u{1f}a\u{1f}b"),
            Some((false, "a\u{1f}b"))
        );
        assert_eq!(customer_identity("user-1"), None);
        assert_eq!(customer_identity("other\u{1f}x"), None);
    }
}
