//! Customer segments: the `[[segments]]` of clicklake.toml as the `segment_rules` table, each
//! rule checked as one SQL boolean expression over `agg_user_features`, and `segment_members`,
//! the membership the `user_segments` model reads.
//!
//! A rule is operator-written SQL, so it is spliced into the query; it is first parsed on its own
//! and must be exactly one expression, so a rule cannot close the query around it.

use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::ParamValues;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use deltalake::DeltaTable;

use crate::catalog;
use crate::config::{Config, Segment, SegmentKind};
use crate::error::{root_message, Error, Result};

/// `segment_rules`: name, kind, rule, priority, refresh — one row per configured segment.
pub fn rules_table(cfg: &Config) -> Result<MemTable> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("priority", DataType::Int64, true),
        Field::new("refresh", DataType::Utf8, true),
    ]));
    let segs = &cfg.build.segments;
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(segs.iter().map(|s| &s.name))),
            Arc::new(StringArray::from_iter_values(
                segs.iter().map(|s| s.kind.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(segs.iter().map(|s| &s.rule))),
            Arc::new(Int64Array::from_iter_values(
                segs.iter().map(|s| s.priority),
            )),
            Arc::new(StringArray::from_iter(
                segs.iter()
                    .map(|s| s.refresh.map(crate::config::format_duration)),
            )),
        ],
    )?;
    Ok(MemTable::try_new(schema, vec![vec![batch]])?)
}

fn rule_error(s: &Segment, msg: impl std::fmt::Display) -> Error {
    Error::config(format!("segment {}: rule `{}`: {msg}", s.name, s.rule))
}

/// Checks that every rule is one boolean expression that plans against `agg_user_features`
/// (as registered in `ctx`, a table or the planned model).
pub async fn validate_rules(ctx: &SessionContext, cfg: &Config) -> Result<()> {
    for s in &cfg.build.segments {
        let dialect = GenericDialect {};
        let mut parser = Parser::new(&dialect)
            .try_with_sql(&s.rule)
            .map_err(|e| rule_error(s, e))?;
        parser.parse_expr().map_err(|e| rule_error(s, e))?;
        if parser.peek_token().token != Token::EOF {
            return Err(rule_error(
                s,
                format!("unexpected {} after the expression", parser.peek_token()),
            ));
        }
        let df = ctx
            .sql(&format!(
                "SELECT user_key FROM agg_user_features WHERE ({})",
                s.rule
            ))
            .await
            .map_err(|e| rule_error(s, root_message(&e)))?;
        df.create_physical_plan()
            .await
            .map_err(|e| rule_error(s, root_message(&e)))?;
    }
    Ok(())
}

/// Registers `segment_members` (user_key, segment, evaluated_at): dynamic segments evaluated at
/// `$as_of`; a static one carried over from `previous` (user_segments as last built) while its
/// last evaluation is younger than its refresh period, else evaluated anew.
pub async fn register_members(
    ctx: &SessionContext,
    cfg: &Config,
    previous: Option<&DeltaTable>,
    params: &ParamValues,
    as_of: i64,
) -> Result<()> {
    let mut evaluated: std::collections::HashMap<String, i64> = Default::default();
    if let Some(previous) = previous {
        let _ = ctx.deregister_table("user_segments_previous");
        catalog::register(ctx, "user_segments_previous", previous).await?;
        let batches = ctx
            .sql(
                "SELECT segment, CAST(max(evaluated_at) AS BIGINT) FROM user_segments_previous \
                 GROUP BY segment",
            )
            .await?
            .collect()
            .await?;
        for b in batches {
            let names = catalog::strings(b.column(0))?;
            let at = arrow::compute::cast(b.column(1), &DataType::Int64)?;
            let at = at
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("cast to Int64");
            for (i, n) in names.into_iter().enumerate() {
                if let (Some(n), true) = (n, at.is_valid(i)) {
                    evaluated.insert(n, at.value(i));
                }
            }
        }
    }
    // Our own integer, not user text: safe to inline, and typed (a placeholder in a UNION
    // branch would leave the column untyped).
    let at = format!("arrow_cast({as_of}, 'Timestamp(Microsecond, Some(\"UTC\"))')");
    let mut parts = Vec::new();
    for s in &cfg.build.segments {
        // Names are validated lower-case identifiers: safe as literals.
        let carried = match (s.kind, s.refresh, evaluated.get(&s.name)) {
            (SegmentKind::Static, Some(refresh), Some(&last)) => {
                as_of >= last && ((as_of - last) as u128) < refresh.as_micros()
            }
            _ => false,
        };
        if carried {
            parts.push(format!(
                // Only customers that still exist (stitching can retire an anonymous key).
                "SELECT p.user_key, p.segment, p.evaluated_at FROM user_segments_previous p \
                 JOIN (SELECT user_key FROM agg_user_features) f ON f.user_key = p.user_key \
                 WHERE p.segment = '{}'",
                s.name
            ));
        } else {
            parts.push(format!(
                "SELECT user_key, '{}' AS segment, {at} AS evaluated_at \
                 FROM agg_user_features WHERE ({})",
                s.name, s.rule
            ));
        }
    }
    if parts.is_empty() {
        parts.push(format!(
            "SELECT CAST(NULL AS VARCHAR) AS user_key, CAST(NULL AS VARCHAR) AS segment, \
                 {at} AS evaluated_at WHERE false"
        ));
    }
    let sql = parts.join("\nUNION ALL\n");
    let df = ctx
        .sql(&sql)
        .await
        .and_then(|df| df.with_param_values(params.clone()))
        .map_err(|e| Error::config(format!("segments: {}", root_message(&e))))?;
    let _ = ctx.deregister_table("segment_members");
    ctx.register_table("segment_members", df.into_view())?;
    Ok(())
}
