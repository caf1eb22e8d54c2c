//! Checks that passed and whose inputs have not changed since: their result still holds, so a
//! cron tick that brought nothing new does not scan the lake again to say so.
//!
//! A check's inputs are the tables its plan scans, each as (table id, version): a Delta version
//! is immutable, and the id tells a table apart from one created again under the same name. A
//! pass is recorded with those inputs and a digest of the query (and of clicklake's version);
//! the next run reuses it when all of them are equal. Only passes with no offending row are kept,
//! so the record holds no row of any table (nothing an erasure would have to find), and a check
//! that warned or failed always runs again. A query calling a function that is not immutable
//! (`now()`, `random()`…) is never reused: its result can change without its tables changing.
//!
//! The record is one object, `_clicklake/check_passes.json`. Every entry carries the inputs it
//! holds for, so a record written by a concurrent `check` (which takes no lock) can only be
//! missing entries, never wrong; a record that cannot be read is ignored, one that cannot be
//! written is a warning.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::storage::Lake;

/// A pass and what it held for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Pass {
    /// SHA-256 of clicklake's version and the query.
    pub query: String,
    /// Table name → `id@version`.
    pub inputs: BTreeMap<String, String>,
    /// When the check ran (RFC 3339, UTC).
    pub checked_at: String,
}

/// The recorded passes by check name.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Passes {
    checks: BTreeMap<String, Pass>,
}

fn path(root: &ObjectPath) -> ObjectPath {
    root.clone().join("_clicklake").join("check_passes.json")
}

impl Passes {
    /// The lake's record; empty when there is none or it cannot be read.
    pub(super) async fn load(lake: &Lake) -> Passes {
        let read = async {
            let (store, root) = lake.root_store().ok()?;
            let bytes = match store.get(&path(&root)).await {
                Ok(r) => r.bytes().await.ok()?,
                Err(object_store::Error::NotFound { .. }) => return None,
                Err(e) => {
                    tracing::warn!(
                        "the record of passed checks (_clicklake/check_passes.json) could not be read ({e}); every check runs"
                    );
                    return None;
                }
            };
            match serde_json::from_slice(&bytes) {
                Ok(passes) => Some(passes),
                Err(e) => {
                    tracing::warn!(
                        "the record of passed checks (_clicklake/check_passes.json) is not readable ({e}); every check runs"
                    );
                    None
                }
            }
        };
        read.await.unwrap_or_default()
    }

    /// The recorded pass of `name` when it was for `query` over `inputs`.
    pub(super) fn still_holds(
        &self,
        name: &str,
        query: &str,
        inputs: &BTreeMap<String, String>,
    ) -> Option<&Pass> {
        self.checks
            .get(name)
            .filter(|p| p.query == query && &p.inputs == inputs)
    }

    pub(super) fn record(&mut self, name: &str, pass: Option<Pass>) {
        match pass {
            Some(p) => self.checks.insert(name.to_string(), p),
            None => self.checks.remove(name),
        };
    }

    /// Writes the record; a failure only warns (the next run checks again), and a refusal (a CI
    /// job checking the lake with read-only credentials) is not even that.
    pub(super) async fn save(&self, lake: &Lake) {
        let body = match serde_json::to_vec_pretty(self) {
            Ok(body) => body,
            Err(e) => {
                return tracing::warn!(
                    "the record of passed checks (_clicklake/check_passes.json): {e}"
                )
            }
        };
        let put = match lake.root_store() {
            Ok((store, root)) => store.put(&path(&root), PutPayload::from(body)).await,
            Err(e) => {
                return tracing::warn!(
                    "the record of passed checks (_clicklake/check_passes.json): {e}"
                )
            }
        };
        match put {
            Ok(_) => {}
            Err(e) if refused(&e) => tracing::debug!(
                "the record of passed checks (_clicklake/check_passes.json) was not written ({e}): every check runs each time"
            ),
            Err(e) => tracing::warn!(
                "the record of passed checks (_clicklake/check_passes.json) could not be written ({e}); the next run checks \
                 everything again"
            ),
        }
    }
}

/// Whether a write failed because this lake may not be written here: credentials without write
/// access, or a read-only file system.
fn refused(e: &object_store::Error) -> bool {
    if matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            );
        }
        source = s.source();
    }
    false
}

/// The digest a pass is recorded under: clicklake's version and the query text.
pub(super) fn query_digest(sql: &str) -> String {
    let mut h = Sha256::new();
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update([0]);
    h.update(sql.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The tables `plan` scans (subqueries included) with their `id@version` from `states`; None
/// when its result may change with its tables unchanged: it calls a function that is not
/// immutable, or scans something `states` does not know.
pub(super) fn inputs(
    plan: &LogicalPlan,
    states: &HashMap<String, String>,
) -> Option<BTreeMap<String, String>> {
    let mut scanned = BTreeSet::new();
    let walked = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            scanned.insert(scan.table_name.table().to_string());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if walked.is_err() || scanned.is_empty() || !crate::sqlfn::calls_only_immutable_functions(plan)
    {
        return None;
    }
    scanned
        .into_iter()
        .map(|t| states.get(&t).map(|s| (t, s.clone())))
        .collect()
}

/// A table's state as a pass records it: `id@version`.
pub(super) fn state(table: &deltalake::DeltaTable) -> Option<String> {
    let snapshot = table.snapshot().ok()?;
    Some(format!("{}@{}", snapshot.metadata().id(), table.version()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn plan(ctx: &SessionContext, sql: &str) -> LogicalPlan {
        ctx.sql(sql).await.unwrap().logical_plan().clone()
    }

    #[tokio::test]
    async fn a_query_is_reusable_only_over_known_tables_without_volatile_functions() {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE a (x INT) AS VALUES (1)")
            .await
            .unwrap();
        ctx.sql("CREATE TABLE b (x INT) AS VALUES (2)")
            .await
            .unwrap();
        let states: HashMap<String, String> = [
            ("a".to_string(), "ida@3".to_string()),
            ("b".to_string(), "idb@7".to_string()),
        ]
        .into();
        let both = inputs(
            &plan(&ctx, "SELECT x FROM a WHERE x NOT IN (SELECT x FROM b)").await,
            &states,
        );
        assert_eq!(
            both,
            Some(
                [
                    ("a".to_string(), "ida@3".to_string()),
                    ("b".to_string(), "idb@7".to_string())
                ]
                .into()
            )
        );
        let volatile = plan(&ctx, "SELECT x FROM a WHERE x > random()").await;
        assert_eq!(inputs(&volatile, &states), None);
        let timed = plan(&ctx, "SELECT x FROM b WHERE now() > TIMESTAMP '2026-01-01'").await;
        assert_eq!(inputs(&timed, &states), None);
        let only_a: HashMap<String, String> = [("a".to_string(), "ida@3".to_string())].into();
        let unknown = plan(&ctx, "SELECT x FROM a UNION ALL SELECT x FROM b").await;
        assert_eq!(inputs(&unknown, &only_a), None);
        assert_eq!(inputs(&plan(&ctx, "SELECT 1").await, &states), None);
    }

    #[test]
    fn a_pass_holds_for_its_query_and_inputs_only() {
        let mut passes = Passes::default();
        let inputs: BTreeMap<String, String> = [("events".to_string(), "id@4".to_string())].into();
        let pass = Pass {
            query: query_digest("SELECT 1"),
            inputs: inputs.clone(),
            checked_at: "2026-11-28T10:00:00Z".into(),
        };
        passes.record("c", Some(pass.clone()));
        assert_eq!(
            passes.still_holds("c", &query_digest("SELECT 1"), &inputs),
            Some(&pass)
        );
        assert!(passes
            .still_holds("c", &query_digest("SELECT 2"), &inputs)
            .is_none());
        let later: BTreeMap<String, String> = [("events".to_string(), "id@5".to_string())].into();
        assert!(passes
            .still_holds("c", &query_digest("SELECT 1"), &later)
            .is_none());
        assert!(passes
            .still_holds("other", &query_digest("SELECT 1"), &inputs)
            .is_none());
        passes.record("c", None);
        assert!(passes
            .still_holds("c", &query_digest("SELECT 1"), &inputs)
            .is_none());
    }

    #[test]
    fn a_lake_that_may_not_be_written_is_told_from_a_failed_write() {
        let io = |kind| object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::new(kind, "no")),
        };
        assert!(refused(&io(std::io::ErrorKind::ReadOnlyFilesystem)));
        assert!(refused(&io(std::io::ErrorKind::PermissionDenied)));
        assert!(!refused(&io(std::io::ErrorKind::StorageFull)));
        let denied = object_store::Error::PermissionDenied {
            path: "_clicklake/check_passes.json".into(),
            source: "403".into(),
        };
        assert!(refused(&denied));
        let missing = object_store::Error::NotFound {
            path: "x".into(),
            source: "404".into(),
        };
        assert!(!refused(&missing));
    }
}
