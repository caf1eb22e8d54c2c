//! `clicklake erase`: remove every row of one person (`--user-id`, `--anonymous-id`, `--email`)
//! or of everyone a request file names (`--from FILE`) from every table and the files that held
//! them, record each erasure (pseudonymised) and print a receipt.

use std::collections::BTreeMap;
use std::process::ExitCode;

use crate::audit;
use crate::cli::EraseArgs;
use crate::config::Config;
use crate::erase::{self, EraseReceipt, EraseRequest, Erasure, Subject, SubjectKind, TableErasure};
use crate::error::Error;
use crate::request_file;
use crate::storage::Lake;

const KINDS: [SubjectKind; 3] = [
    SubjectKind::UserId,
    SubjectKind::AnonymousId,
    SubjectKind::Email,
];

pub async fn run(cfg: &Config, lake: &Lake, args: EraseArgs) -> anyhow::Result<ExitCode> {
    let batch = !args.from.is_empty();
    let subjects = if batch {
        requests(&args.from)?
    } else {
        vec![flag_subject(args.user_id, args.anonymous_id, args.email)?]
    };
    if cfg.privacy.key.is_none() {
        return Err(Error::usage(
            "erase needs the pseudonymisation key to match pseudonymised columns and to record \
             the erasure: set CLICKLAKE_PII_KEY (or [privacy] key_file)",
        )
        .into());
    }
    // A mistyped lake must not answer "recorded": the person would stay in the real one.
    crate::catalog::require_lake(lake).await?;
    if subjects.is_empty() {
        if !cfg.quiet {
            outln!(
                "nothing to erase: {} names no one (a header and no rows)",
                args.from.join(", ")
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let dry = if args.dry_run { " (dry run)" } else { "" };
    let detail = if batch {
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &subjects {
            *kinds.entry(s.kind.as_str()).or_default() += 1;
        }
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
        format!(
            "{} requests from {} ({}){dry}",
            subjects.len(),
            args.from
                .iter()
                .map(|p| request_file::file_name(p))
                .collect::<Vec<_>>()
                .join(", "),
            kinds.join(", ")
        )
    } else {
        format!("{}{dry}", subjects[0].kind.as_str())
    };
    let req = EraseRequest {
        subjects,
        dry_run: args.dry_run,
    };
    // The same lock as `run`: an erasure never interleaves with a cron tick (exit 75 if one runs).
    let run_id = format!("erase-{}", uuid::Uuid::new_v4().simple());
    let lease = crate::lease::Lease::acquire(lake, &run_id, cfg.run.lease_ttl, cfg.wait).await?;
    let result = erase::erase(lake, cfg, req).await;
    if let Err(e) = lease.release().await {
        tracing::warn!("cannot release the lease (it lapses on its own): {e}");
    }
    let erasure = audit::outcome(lake, cfg, "erase", &detail, result, |r: &Erasure| {
        if r.dry_run {
            "dry_run"
        } else {
            "success"
        }
    })
    .await?;
    match erasure.receipt().filter(|_| !batch) {
        Some(receipt) if args.json => outln!("{}", serde_json::to_string(&receipt)?)?,
        Some(receipt) if !cfg.quiet => out!("{}", render(&receipt))?,
        None if args.json => outln!("{}", serde_json::to_string(&erasure)?)?,
        None if !cfg.quiet => out!("{}", render_batch(&erasure))?,
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// The one person the flags name.
fn flag_subject(
    user_id: Option<String>,
    anonymous_id: Option<String>,
    email: Option<String>,
) -> Result<Subject, Error> {
    let (kind, value) =
        match (user_id, anonymous_id, email) {
            (Some(v), None, None) => (SubjectKind::UserId, v),
            (None, Some(v), None) => (SubjectKind::AnonymousId, v),
            (None, None, Some(v)) => (SubjectKind::Email, v),
            _ => return Err(Error::usage(
                "erase takes exactly one of --user-id, --anonymous-id, --email, or --from FILE \
                 naming one person per row",
            )),
        };
    Subject::new(kind, &value, "--user-id or --anonymous-id")
        .map_err(|e| Error::usage(format!("--{} {e}", kind.as_str().replace('_', "-"))))
}

/// Everyone the request files name, each row checked first: a row must name one person by
/// exactly one id (exit 2 naming the file, line and field otherwise).
fn requests(paths: &[String]) -> Result<Vec<Subject>, Error> {
    let names: Vec<&str> = KINDS.iter().map(|k| k.as_str()).collect();
    let mut subjects = Vec::new();
    for path in paths {
        for (line, fields) in request_file::read(path, &names)? {
            let given: Vec<(SubjectKind, &String)> = KINDS
                .iter()
                .filter_map(|k| fields.get(k.as_str()).map(|v| (*k, v)))
                .collect();
            let bad = |field: &str, msg: String| {
                Error::usage(format!("{path}:{line}: field {field}: {msg}"))
            };
            let (kind, value) = match given.as_slice() {
                [one] => *one,
                [] => {
                    return Err(bad(
                        "user_id",
                        "no user_id, anonymous_id or email: each row names one person".into(),
                    ))
                }
                [(first, _), (second, _), ..] => {
                    return Err(bad(
                        second.as_str(),
                        format!(
                            "a row names one person by one id, and this one has {} and {}: put \
                             each id on a row of its own (the erasure of any one of them finds \
                             the others it was seen with)",
                            first.as_str(),
                            second.as_str()
                        ),
                    ))
                }
            };
            let subject = Subject::new(kind, value, "the user_id or anonymous_id column")
                .map_err(|e| bad(kind.as_str(), e))?;
            subjects.push(subject);
        }
    }
    Ok(subjects)
}

fn render(r: &EraseReceipt) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "erasure {}{}\n  subject      {} {}\n  identities   {} user ids, {} anonymous ids, {} e-mails\n",
        r.erasure_id,
        if r.dry_run { " (dry run: nothing changed)" } else { "" },
        r.subject_kind.as_str(),
        r.subject,
        r.identities.user_ids,
        r.identities.anonymous_ids,
        r.identities.emails
    ));
    out.push_str(&table_lines(&r.tables, r.rows_removed, r.dry_run));
    out.push_str(&finished_lines(
        &r.interrupted_finished,
        &r.interrupted_completed,
        r.dry_run,
    ));
    if !r.dry_run {
        out.push_str("  recorded in  erasures (later ingests of this person's rows are refused)\n");
    }
    out
}

fn render_batch(e: &Erasure) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "erasure of {} people{}\n",
        e.people.len(),
        if e.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    ));
    for p in &e.people {
        out.push_str(&format!(
            "  {}  {:<12} {}  {} user ids, {} anonymous ids, {} e-mails, {} rows{}\n",
            p.erasure_id,
            p.subject_kind.as_str(),
            p.subject,
            p.identities.user_ids,
            p.identities.anonymous_ids,
            p.identities.emails,
            p.rows_removed,
            if p.rows_removed == 0 {
                " (none found)"
            } else {
                ""
            }
        ));
    }
    out.push_str(&table_lines(&e.tables, e.rows_removed, e.dry_run));
    out.push_str(&finished_lines(
        &e.interrupted_finished,
        &e.interrupted_completed,
        e.dry_run,
    ));
    if !e.dry_run {
        out.push_str(
            "  recorded in  erasures, one row per person (later ingests of their rows are refused)\n",
        );
    }
    out
}

/// A line per table (its rows, and the files its commit rewrote and vacuumed), then the total.
fn table_lines(tables: &[TableErasure], rows: u64, dry_run: bool) -> String {
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut out = String::new();
    for t in tables {
        let files = if dry_run {
            String::new()
        } else {
            format!(
                " ({} files rewritten, {} deleted)",
                t.files_rewritten, t.files_deleted
            )
        };
        out.push_str(&format!(
            "  {:<22} {verb} {} rows{files}\n",
            t.table, t.rows
        ));
    }
    out.push_str(&format!(
        "  total        {verb} {rows} rows in {} tables\n",
        tables.len()
    ));
    out
}

fn finished_lines(tables: &[String], completed: &[String], dry_run: bool) -> String {
    let mut out = String::new();
    if !tables.is_empty() {
        out.push_str(&format!(
            "  {:<12} {}: left by an earlier erasure that was cut off (superseded files {}deleted, \
             log checkpointed)\n",
            if dry_run { "would finish" } else { "finished" },
            tables.join(", "),
            if dry_run { "to be " } else { "" }
        ));
    }
    if !completed.is_empty() {
        out.push_str(&format!(
            "  {:<12} {}: cut off earlier, this request names all its people\n",
            if dry_run {
                "would complete"
            } else {
                "completed"
            },
            completed.join(", ")
        ));
    }
    out
}
