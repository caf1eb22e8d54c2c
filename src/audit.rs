//! The audit trail: every `run`, `erase` and `vacuum` appends who ran it (OS user, host, pid),
//! when, what and the outcome to the `_audit` table.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray, TimestampMicrosecondArray};

use crate::catalog::{self, AUDIT};
use crate::config::Config;
use crate::delta;
use crate::error::Result;
use crate::storage::Lake;

/// Appends one audit row. `detail` is a short JSON or text description (no personal data).
pub async fn record(
    lake: &Lake,
    cfg: &Config,
    command: &str,
    outcome: &str,
    detail: &str,
) -> Result<()> {
    lake.ensure_root()?;
    let mut table = catalog::ensure_table(lake, &AUDIT).await?;
    let s = |v: &str| Arc::new(StringArray::from(vec![v.to_string()])) as arrow::array::ArrayRef;
    let batch = RecordBatch::try_new(
        (AUDIT.schema)(),
        vec![
            Arc::new(
                TimestampMicrosecondArray::from(vec![chrono::Utc::now().timestamp_micros()])
                    .with_timezone("UTC"),
            ),
            s(command),
            s(&crate::lease::holder_name()),
            s(outcome),
            s(detail),
        ],
    )?;
    delta::append_batch(&mut table, batch, cfg, HashMap::new()).await?;
    Ok(())
}

/// Records the outcome of `result` for `command`, then returns it unchanged. A failure to write
/// the audit row is reported on stderr; it never hides the command's own result.
pub async fn outcome<T>(
    lake: &Lake,
    cfg: &Config,
    command: &str,
    detail: &str,
    result: Result<T>,
    ok: impl FnOnce(&T) -> &'static str,
) -> Result<T> {
    let (outcome, detail) = match &result {
        Ok(v) => (ok(v), detail.to_string()),
        Err(e) => ("failed", format!("{detail}: {e}")),
    };
    if let Err(e) = record(lake, cfg, command, outcome, &detail).await {
        eprintln!("warning: could not write the audit record: {e}");
    }
    result
}
