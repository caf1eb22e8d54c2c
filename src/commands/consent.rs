//! `clicklake consent FILE...`: import consent decisions (CSV with a header, or NDJSON) into the
//! `consents` table. Every row is checked before anything is written: a bad one is exit 2 naming
//! the file, line and field.
//!
//! Fields: `user_id` and/or `anonymous_id` (one is required), `purpose` (e.g. analytics,
//! personalization, marketing), `status` (`granted` / `withdrawn`, or `granted` true/false),
//! `decided_at` (RFC 3339), optional `version` (of the consent text).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray};

use crate::catalog::{self, CONSENTS};
use crate::cli::ConsentArgs;
use crate::config::Config;
use crate::delta;
use crate::error::Error;
use crate::request_file::{self, Fields};
use crate::storage::Lake;

/// The columns a consent file may have (a CSV header must name one of them).
const COLUMNS: &[&str] = &[
    "user_id",
    "anonymous_id",
    "purpose",
    "status",
    "granted",
    "decided_at",
    "timestamp",
    "version",
];

struct Decision {
    user_id: Option<String>,
    anonymous_id: Option<String>,
    purpose: String,
    granted: bool,
    decided_at: i64,
    version: Option<String>,
    source: String,
}

pub async fn run(cfg: &Config, lake: &Lake, args: ConsentArgs) -> anyhow::Result<ExitCode> {
    let mut rows = Vec::new();
    for path in &args.files {
        let name = request_file::file_name(path);
        let records = request_file::read(path, COLUMNS)?;
        for (line, fields) in records {
            rows.push(decision(cfg, path, &name, line, &fields)?);
        }
    }
    if rows.is_empty() {
        return Err(Error::usage("no consent decisions in the input").into());
    }
    lake.ensure_root()?;
    // Under the lock, so two imports cannot both find a decision new.
    let work = async {
        let mut table = catalog::ensure_table(lake, &CONSENTS).await?;
        let mut seen = imported(cfg, &table).await?;
        let fresh: Vec<&Decision> = rows.iter().filter(|d| seen.insert(d.key())).collect();
        if fresh.is_empty() {
            return Ok::<_, Error>((None, fresh.len(), 0));
        }
        let withdrawn = fresh.iter().filter(|d| !d.granted).count();
        let batch = decisions_batch(&fresh)?;
        let version = delta::append_batch(&mut table, batch, cfg, HashMap::new()).await?;
        Ok((Some(version), fresh.len(), withdrawn))
    };
    let (version, new, withdrawn) = crate::lease::exclusive(lake, cfg, "consent", work).await?;
    if !cfg.quiet {
        let known = rows.len() - new;
        let again = match known {
            0 => String::new(),
            n => format!("; {n} already imported (the same decision at the same time) skipped"),
        };
        match version {
            Some(version) => outln!(
                "imported {new} consent decisions ({} grants, {withdrawn} withdrawals) into \
                 consents version {version}{again}; the next build applies them",
                new - withdrawn,
            )?,
            None => outln!(
                "nothing new: all {} consent decisions were imported before",
                rows.len()
            )?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What makes a decision the same one: who, what for, which way, when, under which text. The
/// file and line it came from do not: importing an export again adds nothing.
type DecisionKey = (
    Option<String>,
    Option<String>,
    String,
    bool,
    i64,
    Option<String>,
);

impl Decision {
    fn key(&self) -> DecisionKey {
        (
            self.user_id.clone(),
            self.anonymous_id.clone(),
            self.purpose.clone(),
            self.granted,
            self.decided_at,
            self.version.clone(),
        )
    }
}

/// The decisions the table holds already.
async fn imported(
    cfg: &Config,
    table: &deltalake::DeltaTable,
) -> Result<std::collections::HashSet<DecisionKey>, Error> {
    let ctx = catalog::session(cfg.memory_limit)?;
    catalog::register(&ctx, CONSENTS.name, table).await?;
    let batches = ctx
        .sql(
            "SELECT user_id, anonymous_id, purpose, granted, CAST(decided_at AS BIGINT), version \
             FROM consents",
        )
        .await?
        .collect()
        .await?;
    let mut keys = std::collections::HashSet::new();
    for b in batches {
        let (users, anons, purposes, versions) = (
            catalog::strings(b.column(0))?,
            catalog::strings(b.column(1))?,
            catalog::strings(b.column(2))?,
            catalog::strings(b.column(5))?,
        );
        let granted = arrow::array::AsArray::as_boolean(b.column(3));
        let at = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(b.column(4));
        for (i, (((u, a), p), v)) in users
            .into_iter()
            .zip(anons)
            .zip(purposes)
            .zip(versions)
            .enumerate()
        {
            keys.insert((
                u,
                a,
                p.unwrap_or_default(),
                granted.value(i),
                at.value(i),
                v,
            ));
        }
    }
    Ok(keys)
}

fn decisions_batch(rows: &[&Decision]) -> Result<RecordBatch, Error> {
    let now = chrono::Utc::now().timestamp_micros();
    let s = |f: &dyn Fn(&Decision) -> Option<String>| {
        Arc::new(StringArray::from_iter(rows.iter().map(|d| f(d)))) as arrow::array::ArrayRef
    };
    Ok(RecordBatch::try_new(
        (CONSENTS.schema)(),
        vec![
            s(&|d| d.user_id.clone()),
            s(&|d| d.anonymous_id.clone()),
            s(&|d| Some(d.purpose.clone())),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|d| Some(d.granted)),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|d| d.decided_at))
                    .with_timezone("UTC"),
            ),
            s(&|d| d.version.clone()),
            s(&|d| Some(d.source.clone())),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|_| now))
                    .with_timezone("UTC"),
            ),
        ],
    )?)
}

fn decision(
    cfg: &Config,
    path: &str,
    name: &str,
    line: u64,
    f: &Fields,
) -> Result<Decision, Error> {
    let bad =
        |field: &str, msg: String| Error::usage(format!("{path}:{line}: field {field}: {msg}"));
    let purpose = f
        .get("purpose")
        .map(|p| p.to_lowercase())
        .ok_or_else(|| bad("purpose", "missing".into()))?;
    let granted = match (f.get("status"), f.get("granted")) {
        (Some(s), _) => match s.to_lowercase().as_str() {
            "granted" | "grant" | "opt_in" | "opted_in" => true,
            "withdrawn" | "withdraw" | "denied" | "opt_out" | "opted_out" => false,
            other => {
                return Err(bad(
                    "status",
                    format!("{other:?} is not granted or withdrawn"),
                ))
            }
        },
        (None, Some(g)) => match g.to_lowercase().as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            other => return Err(bad("granted", format!("{other:?} is not true or false"))),
        },
        (None, None) => return Err(bad("status", "missing (granted or withdrawn)".into())),
    };
    let at = f
        .get("decided_at")
        .or_else(|| f.get("timestamp"))
        .ok_or_else(|| bad("decided_at", "missing".into()))?;
    let decided_at = crate::ingest::parse::parse_rfc3339_us(at)
        .ok_or_else(|| bad("decided_at", format!("{at:?} is not an RFC 3339 instant")))?;
    let mut user_id = f.get("user_id").cloned();
    let anonymous_id = f.get("anonymous_id").cloned();
    if user_id.is_none() && anonymous_id.is_none() {
        return Err(bad(
            "user_id",
            "user_id and anonymous_id are both missing: one is required".into(),
        ));
    }
    if cfg.privacy.user_id {
        if let Some(u) = &user_id {
            let key = cfg.privacy.key.as_ref().ok_or_else(|| {
                bad(
                    "user_id",
                    "user_id is pseudonymised and no key is set: set CLICKLAKE_PII_KEY".into(),
                )
            })?;
            user_id = Some(key.pseudonym("user_id", u));
        }
    }
    Ok(Decision {
        user_id,
        anonymous_id,
        purpose,
        granted,
        decided_at,
        version: f.get("version").cloned(),
        source: format!("file:{name}:{line}"),
    })
}
