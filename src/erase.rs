//! GDPR erasure: remove every row of one person from every table, then the files that held them.
//!
//! 1. Resolve the person's identities from `raw_events` and `events`: the id given (pseudonymised
//!    like at landing), every anonymous_id seen with their user_id (and the stitched one), every
//!    user_id seen with their anonymous ids, their e-mail pseudonyms.
//! 2. For every table, a predicate over the columns it has (user_id, stitched_user_id,
//!    anonymous_id, email, user_key, session_key; quarantine: the raw line mentions an identity),
//!    counted first; tables with matching rows get a Delta DELETE commit.
//! 3. Vacuum the touched tables with zero retention, so no file any retained version references
//!    still holds a removed row (time travel on those tables ends at the erasure).
//! 4. Append an `erasures` row (pseudonyms only) whose identities are refused at every later
//!    landing, and an `_audit` row.
//!
//! The next `clean` sees rows removed from raw_events and rebuilds `events` in full; the next
//! `build` sees a commit on events it did not write and rebuilds the star schema in full.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::prelude::SessionContext;
use serde::Serialize;

use crate::catalog::{self, ERASURES};
use crate::config::Config;
use crate::delta;
use crate::error::{Error, Result};
use crate::storage::Lake;

/// Which id the request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    UserId,
    AnonymousId,
    Email,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::UserId => "user_id",
            SubjectKind::AnonymousId => "anonymous_id",
            SubjectKind::Email => "email",
        }
    }
}

pub struct EraseRequest {
    pub kind: SubjectKind,
    pub value: String,
    pub dry_run: bool,
}

#[derive(Debug, Serialize, Default)]
pub struct TableErasure {
    pub table: String,
    pub rows: u64,
    pub files_rewritten: u64,
    pub files_deleted: u64,
}

/// The receipt.
#[derive(Debug, Serialize)]
pub struct EraseReceipt {
    pub erasure_id: String,
    pub dry_run: bool,
    pub subject_kind: SubjectKind,
    /// The HMAC pseudonym of the id given (the id itself is never stored or printed).
    pub subject: String,
    pub identities: IdentityCounts,
    pub tables: Vec<TableErasure>,
    pub rows_removed: u64,
    pub files_rewritten: u64,
    pub files_deleted: u64,
    pub requested_at: String,
}

#[derive(Debug, Serialize, Default)]
pub struct IdentityCounts {
    pub user_ids: usize,
    pub anonymous_ids: usize,
    pub emails: usize,
}

/// The stored forms of one person's ids, as they appear in the lake's columns.
#[derive(Debug, Default)]
struct Identities {
    user_ids: BTreeSet<String>,
    anonymous_ids: BTreeSet<String>,
    /// E-mail values as stored (pseudonyms when email is a personal column).
    emails: BTreeSet<String>,
}

fn sql_list(values: &BTreeSet<String>) -> String {
    values
        .iter()
        .map(|v| format!("'{}'", v.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn strings_of(ctx: &SessionContext, sql: &str) -> Result<BTreeSet<String>> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let mut out = BTreeSet::new();
    for b in &batches {
        out.extend(catalog::strings(b.column(0))?.into_iter().flatten());
    }
    Ok(out)
}

/// Expands the id given to every identity of the person (two rounds: ids seen together).
async fn resolve(ctx: &SessionContext, tables: &[String], ids: &mut Identities) -> Result<()> {
    let has = |t: &str| tables.iter().any(|x| x == t);
    for _ in 0..2 {
        let mut clauses = Vec::new();
        if !ids.user_ids.is_empty() {
            clauses.push(format!("user_id IN ({})", sql_list(&ids.user_ids)));
        }
        if !ids.anonymous_ids.is_empty() {
            clauses.push(format!(
                "anonymous_id IN ({})",
                sql_list(&ids.anonymous_ids)
            ));
        }
        if !ids.emails.is_empty() {
            clauses.push(format!("email IN ({})", sql_list(&ids.emails)));
        }
        if clauses.is_empty() {
            return Ok(());
        }
        let any = clauses.join(" OR ");
        for t in ["raw_events", "events"].into_iter().filter(|t| has(t)) {
            let stitched = if t == "events" {
                if ids.user_ids.is_empty() {
                    String::new()
                } else {
                    format!(" OR stitched_user_id IN ({})", sql_list(&ids.user_ids))
                }
            } else {
                String::new()
            };
            let w = format!("({any}{stitched})");
            ids.user_ids.extend(
                strings_of(
                    ctx,
                    &format!("SELECT DISTINCT user_id FROM {t} WHERE {w} AND user_id IS NOT NULL"),
                )
                .await?,
            );
            ids.anonymous_ids.extend(
                strings_of(ctx, &format!("SELECT DISTINCT anonymous_id FROM {t} WHERE {w} AND anonymous_id IS NOT NULL")).await?,
            );
            ids.emails.extend(
                strings_of(
                    ctx,
                    &format!("SELECT DISTINCT email FROM {t} WHERE {w} AND email IS NOT NULL"),
                )
                .await?,
            );
        }
    }
    Ok(())
}

/// The DELETE predicate of one table from the columns it has; `None` if it holds no personal
/// rows (aggregates, dimensions of products and dates, bookkeeping).
fn predicate(
    table: &str,
    columns: &[String],
    ids: &Identities,
    user_keys: &BTreeSet<String>,
    session_keys: &BTreeSet<String>,
) -> Option<String> {
    let has = |c: &str| columns.iter().any(|x| x == c);
    let mut clauses = Vec::new();
    let mut add = |column: &str, values: &BTreeSet<String>| {
        if has(column) && !values.is_empty() {
            clauses.push(format!("{column} IN ({})", sql_list(values)));
        }
    };
    add("user_id", &ids.user_ids);
    add("stitched_user_id", &ids.user_ids);
    add("anonymous_id", &ids.anonymous_ids);
    add("email", &ids.emails);
    add("user_key", user_keys);
    add("session_key", session_keys);
    if table == catalog::EVENTS_CHANGES.name && has("key") {
        let all: BTreeSet<String> = user_keys.union(session_keys).cloned().collect();
        if !all.is_empty() {
            clauses.push(format!("key IN ({})", sql_list(&all)));
        }
    }
    if table == catalog::QUARANTINE.name && has("raw") {
        // The raw line mentions an identity (e-mails appear masked as `pii:<pseudonym>`).
        for v in ids
            .user_ids
            .iter()
            .chain(&ids.anonymous_ids)
            .chain(&ids.emails)
        {
            let v = v.replace('\'', "''");
            if v.chars().count() >= 6 {
                clauses.push(format!("strpos(raw, '{v}') > 0"));
            } else {
                clauses.push(format!("strpos(raw, '\"{v}\"') > 0"));
            }
        }
    }
    (!clauses.is_empty()).then(|| clauses.join(" OR "))
}

pub async fn erase(lake: &Lake, cfg: &Config, req: EraseRequest) -> Result<EraseReceipt> {
    let key = cfg.privacy.key.as_ref().ok_or_else(|| {
        Error::usage(
            "erase needs the pseudonymisation key to match pseudonymised columns and to record \
             the erasure: set CLICKLAKE_PII_KEY (or [privacy] key_file)",
        )
    })?;
    let value = req.value.trim();
    if value.is_empty() {
        return Err(Error::usage(format!(
            "--{}: empty",
            req.kind.as_str().replace('_', "-")
        )));
    }
    let subject = match req.kind {
        SubjectKind::Email => key.email(value),
        kind => key.pseudonym(kind.as_str(), value),
    };
    let mut ids = Identities::default();
    match req.kind {
        SubjectKind::UserId if cfg.privacy.user_id => {
            ids.user_ids.insert(subject.clone());
        }
        SubjectKind::UserId => {
            ids.user_ids.insert(value.to_string());
        }
        SubjectKind::AnonymousId => {
            ids.anonymous_ids.insert(value.to_string());
        }
        SubjectKind::Email if cfg.privacy.email => {
            ids.emails.insert(subject.clone());
        }
        SubjectKind::Email => {
            ids.emails.insert(value.to_string());
        }
    }

    let ctx = catalog::session(cfg.memory_limit)?;
    let opened = catalog::open_existing(lake, &[]).await?;
    for (name, t) in &opened {
        catalog::register(&ctx, name, t).await?;
    }
    let names: Vec<String> = opened.iter().map(|(n, _)| n.clone()).collect();
    resolve(&ctx, &names, &mut ids).await?;

    // Keys the star schema uses for this person and their sessions.
    let mut user_keys = BTreeSet::new();
    for u in &ids.user_ids {
        user_keys.extend(
            strings_of(
                &ctx,
                &format!(
                    "SELECT md5(concat('user', chr(31), '{}'))",
                    u.replace('\'', "''")
                ),
            )
            .await?,
        );
    }
    for a in &ids.anonymous_ids {
        user_keys.extend(
            strings_of(
                &ctx,
                &format!(
                    "SELECT md5(concat('anonymous', chr(31), '{}'))",
                    a.replace('\'', "''")
                ),
            )
            .await?,
        );
    }
    let mut session_keys = BTreeSet::new();
    if names.iter().any(|n| n == "events") {
        if let Some(w) = predicate(
            "events",
            &[
                "user_id".into(),
                "stitched_user_id".into(),
                "anonymous_id".into(),
                "email".into(),
            ],
            &ids,
            &BTreeSet::new(),
            &BTreeSet::new(),
        ) {
            session_keys = strings_of(
                &ctx,
                &format!("SELECT DISTINCT session_key FROM events WHERE {w}"),
            )
            .await?;
        }
    }

    let requested_at = chrono::Utc::now();
    let erasure_id = format!(
        "{}-{}",
        requested_at.format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let skip = [
        catalog::ERASURES.name,
        catalog::AUDIT.name,
        catalog::RUNS.name,
        catalog::INGESTED_FILES.name,
    ];
    let mut tables = Vec::new();
    for (name, table) in opened {
        if skip.contains(&name.as_str()) {
            continue;
        }
        let columns: Vec<String> = table
            .snapshot()?
            .schema()
            .fields()
            .map(|f| f.name().to_string())
            .collect();
        let Some(w) = predicate(&name, &columns, &ids, &user_keys, &session_keys) else {
            continue;
        };
        let rows = catalog::query_i64(&ctx, &format!("SELECT count(*) FROM {name} WHERE {w}"))
            .await?
            .unwrap_or(0) as u64;
        if rows == 0 {
            continue;
        }
        let mut entry = TableErasure {
            table: name.clone(),
            rows,
            ..Default::default()
        };
        if !req.dry_run {
            let (files_rewritten, files_deleted) =
                rewrite_without(cfg, table, &name, &w, &erasure_id).await?;
            entry.files_rewritten = files_rewritten;
            entry.files_deleted = files_deleted;
        }
        tables.push(entry);
    }

    // Every identity's pseudonym, as landing computes them from clear values.
    let mut identities: BTreeSet<String> = BTreeSet::new();
    identities.insert(subject.clone());
    for u in &ids.user_ids {
        identities.insert(if cfg.privacy.user_id {
            u.clone()
        } else {
            key.pseudonym("user_id", u)
        });
    }
    for a in &ids.anonymous_ids {
        identities.insert(key.pseudonym("anonymous_id", a));
    }
    for e in &ids.emails {
        identities.insert(if cfg.privacy.email {
            e.clone()
        } else {
            key.email(e)
        });
    }
    let receipt = EraseReceipt {
        erasure_id,
        dry_run: req.dry_run,
        subject_kind: req.kind,
        subject,
        identities: IdentityCounts {
            user_ids: ids.user_ids.len(),
            anonymous_ids: ids.anonymous_ids.len(),
            emails: ids.emails.len(),
        },
        rows_removed: tables.iter().map(|t| t.rows).sum(),
        files_rewritten: tables.iter().map(|t| t.files_rewritten).sum(),
        files_deleted: tables.iter().map(|t| t.files_deleted).sum(),
        tables,
        requested_at: requested_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    if !req.dry_run {
        record(
            lake,
            cfg,
            &receipt,
            &identities,
            requested_at.timestamp_micros(),
        )
        .await?;
    }
    Ok(receipt)
}

const FILE_COLUMN: &str = "__clicklake_file";

/// Removes the rows matching `predicate` from `table`: the files holding any are rewritten
/// without them in one commit (whose log entry names no id: the predicate is not recorded),
/// the superseded files are vacuumed at once, and a checkpoint replaces the older log entries
/// (their file statistics could name an id). Returns (files rewritten, files deleted).
async fn rewrite_without(
    cfg: &Config,
    mut table: deltalake::DeltaTable,
    name: &str,
    predicate: &str,
    erasure_id: &str,
) -> Result<(u64, u64)> {
    use futures::StreamExt;
    let ctx = catalog::session(cfg.memory_limit)?;
    let provider = table.table_provider().with_file_column(FILE_COLUMN).await?;
    ctx.register_table("t", provider)?;
    let files: Vec<String> = strings_of(
        &ctx,
        &format!("SELECT DISTINCT CAST({FILE_COLUMN} AS VARCHAR) FROM t WHERE {predicate}"),
    )
    .await?
    .into_iter()
    .collect();
    if files.is_empty() {
        return Ok((0, 0));
    }
    let only = table
        .table_provider()
        .with_file_paths(files.clone())
        .await?;
    ctx.register_table("f", only)?;
    let props = delta::writer_properties(cfg.ingest.zstd_level, cfg.ingest.row_group_rows)?;
    let mut sink = delta::TableSink::new(
        &table,
        props,
        cfg.ingest.target_file_size,
        (cfg.memory_limit / 8).max(16 << 20) as usize,
        name.to_string(),
    )?;
    let mut stream = ctx
        .sql(&format!(
            "SELECT * FROM f WHERE NOT coalesce(({predicate}), false)"
        ))
        .await?
        .execute_stream()
        .await?;
    while let Some(batch) = stream.next().await {
        sink.write(&batch?).await?;
    }
    let adds = sink.finish().await?;
    let mut actions = delta::remove_actions(&table, &files, name)?;
    actions.extend(adds.into_iter().map(deltalake::kernel::Action::Add));
    let metadata = HashMap::from([(
        "clicklake".to_string(),
        serde_json::json!({ "command": "erase", "mode": "erase", "erasure_id": erasure_id }),
    )]);
    delta::commit(
        &mut table,
        actions,
        Vec::new(),
        metadata,
        deltalake::protocol::SaveMode::Overwrite,
    )
    .await?;
    crate::fault("erase-after-commit");
    let (mut table, vacuumed) = table
        .vacuum()
        .with_retention_period(chrono::Duration::zero())
        .with_enforce_retention_duration(false)
        .await
        .map_err(|e| Error::runtime(format!("vacuuming {name} after the erasure: {e}")))?;
    table.update_state().await?;
    deltalake::checkpoints::create_checkpoint(&table, None)
        .await
        .map_err(|e| Error::runtime(format!("checkpointing {name} after the erasure: {e}")))?;
    let version = table.version().unwrap_or(0);
    deltalake::checkpoints::cleanup_expired_logs_for(
        version,
        table.log_store().as_ref(),
        chrono::Utc::now().timestamp_millis() + 60_000,
        None,
    )
    .await
    .map_err(|e| Error::runtime(format!("removing {name}'s older log entries: {e}")))?;
    Ok((files.len() as u64, vacuumed.files_deleted.len() as u64))
}

async fn record(
    lake: &Lake,
    cfg: &Config,
    r: &EraseReceipt,
    identities: &BTreeSet<String>,
    at_us: i64,
) -> Result<()> {
    let mut table = catalog::ensure_table(lake, &ERASURES).await?;
    let per_table: BTreeMap<&str, u64> = r
        .tables
        .iter()
        .map(|t| (t.table.as_str(), t.rows))
        .collect();
    let s = |v: String| Arc::new(StringArray::from(vec![v])) as arrow::array::ArrayRef;
    let i = |v: u64| Arc::new(Int64Array::from(vec![v as i64])) as arrow::array::ArrayRef;
    let batch = RecordBatch::try_new(
        (ERASURES.schema)(),
        vec![
            s(r.erasure_id.clone()),
            Arc::new(TimestampMicrosecondArray::from(vec![at_us]).with_timezone("UTC")),
            s(r.subject_kind_str().to_string()),
            s(r.subject.clone()),
            s(serde_json::to_string(identities).expect("strings serialize")),
            s(serde_json::to_string(&per_table).expect("map serializes")),
            i(r.rows_removed),
            i(r.tables.len() as u64),
            i(r.files_rewritten),
            i(r.files_deleted),
            s(crate::lease::holder_name()),
        ],
    )?;
    delta::append_batch(&mut table, batch, cfg, HashMap::new()).await?;
    Ok(())
}

impl EraseReceipt {
    fn subject_kind_str(&self) -> &'static str {
        self.subject_kind.as_str()
    }
}
