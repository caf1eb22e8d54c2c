//! `clicklake erase`: remove every row of one person from every table and the files that held
//! them, record the erasure (pseudonymised) and print a receipt.

use std::process::ExitCode;

use crate::audit;
use crate::cli::EraseArgs;
use crate::config::Config;
use crate::erase::{self, EraseReceipt, EraseRequest, SubjectKind};
use crate::error::Error;
use crate::storage::Lake;

pub async fn run(cfg: &Config, lake: &Lake, args: EraseArgs) -> anyhow::Result<ExitCode> {
    let (kind, value) = match (args.user_id, args.anonymous_id, args.email) {
        (Some(v), None, None) => (SubjectKind::UserId, v),
        (None, Some(v), None) => (SubjectKind::AnonymousId, v),
        (None, None, Some(v)) => (SubjectKind::Email, v),
        _ => {
            return Err(Error::usage(
                "erase takes exactly one of --user-id, --anonymous-id, --email",
            )
            .into())
        }
    };
    // A user id or a name passed as the e-mail matches nothing, and would record an erasure
    // that blocks nobody while the person stays.
    let address = value.trim();
    if kind == SubjectKind::Email
        && !address
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
    {
        return Err(Error::usage(format!(
            "--email {address:?} is not an e-mail address (NAME@DOMAIN); for an id use \
             --user-id or --anonymous-id"
        ))
        .into());
    }
    if cfg.privacy.key.is_none() {
        return Err(Error::usage(
            "erase needs the pseudonymisation key to match pseudonymised columns and to record \
             the erasure: set CLICKLAKE_PII_KEY (or [privacy] key_file)",
        )
        .into());
    }
    let req = EraseRequest {
        kind,
        value,
        dry_run: args.dry_run,
    };
    let detail = format!(
        "{}{}",
        kind.as_str(),
        if args.dry_run { " (dry run)" } else { "" }
    );
    // A mistyped lake must not answer "recorded": the person would stay in the real one.
    crate::catalog::require_lake(lake).await?;
    // The same lock as `run`: an erasure never interleaves with a cron tick (exit 75 if one runs).
    let run_id = format!("erase-{}", uuid::Uuid::new_v4().simple());
    let lease = crate::lease::Lease::acquire(lake, &run_id, cfg.run.lease_ttl, cfg.wait).await?;
    let result = erase::erase(lake, cfg, req).await;
    if let Err(e) = lease.release().await {
        tracing::warn!("cannot release the lease (it lapses on its own): {e}");
    }
    let receipt = audit::outcome(lake, cfg, "erase", &detail, result, |r: &EraseReceipt| {
        if r.dry_run {
            "dry_run"
        } else {
            "success"
        }
    })
    .await?;
    if args.json {
        outln!("{}", serde_json::to_string(&receipt)?)?;
    } else if !cfg.quiet {
        out!("{}", render(&receipt))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn render(r: &EraseReceipt) -> String {
    let mut out = String::new();
    let verb = if r.dry_run { "would remove" } else { "removed" };
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
    for t in &r.tables {
        out.push_str(&format!(
            "  {:<22} {verb} {} rows ({} files rewritten, {} deleted)\n",
            t.table, t.rows, t.files_rewritten, t.files_deleted
        ));
    }
    out.push_str(&format!(
        "  total        {verb} {} rows in {} tables\n",
        r.rows_removed,
        r.tables.len()
    ));
    if !r.dry_run {
        out.push_str("  recorded in  erasures (later ingests of this person's rows are refused)\n");
    }
    out
}
