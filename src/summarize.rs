//! `SUMMARIZE TABLE`, `SUMMARIZE 'file.csv'` or `SUMMARIZE (query)` in `clicklake sql`: a profile
//! of every column, one row each, as DuckDB's `SUMMARIZE` gives it: type, min, max, approximate
//! distinct count, mean, standard deviation, quartiles (numbers only), non-null count and the
//! share of NULLs. All of it comes from one aggregate query, so the relation is read once.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{DataFrame, SessionContext};

use crate::commands::sql::sql_type;

/// The relation a `SUMMARIZE` statement names, as SQL for a FROM clause, when `text` is one;
/// `Some(Err)` is a message for the user.
pub fn parse(text: &str) -> Option<Result<String, String>> {
    let text = text.trim().trim_end_matches(';').trim();
    let keyword = text.split_whitespace().next()?;
    if !keyword.eq_ignore_ascii_case("summarize") {
        return None;
    }
    let rest = text[keyword.len()..].trim();
    let starts = |word: &str| {
        rest.get(..word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
    };
    Some(match rest {
        "" => Err("SUMMARIZE needs a table, a file in quotes or a (query)".into()),
        _ if starts("select") || starts("with") => Ok(format!("({rest})")),
        _ => Ok(rest.to_string()),
    })
}

/// One statement of a text: SQL for DataFusion, or a SUMMARIZE (which DataFusion does not parse).
pub enum Piece {
    Sql(datafusion::sql::parser::Statement),
    /// The relation to summarize (SQL for a FROM clause), and the statement as written.
    Summarize(String, String),
}

/// The statements of `text`, in order. DataFusion parses the text whole, as before, unless one of
/// its statements is a SUMMARIZE: then the text is cut at its `;`s (outside strings, quoted names
/// and comments, as SQL's tokenizer finds them) and each statement is parsed on its own.
/// `Err` is the parser's message.
pub fn statements(text: &str) -> Result<Vec<Piece>, String> {
    use datafusion::sql::parser::DFParser;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    let parse_sql = |text: &str| {
        DFParser::parse_sql_with_dialect(text, &GenericDialect {})
            .map(|s| s.into_iter().map(Piece::Sql).collect::<Vec<_>>())
            .map_err(|e| e.to_string())
    };
    let Some(cut) = cut_if_summarize(text) else {
        return parse_sql(text);
    };
    let mut pieces = Vec::new();
    for statement in cut {
        match parse(&statement) {
            Some(Ok(from)) => pieces.push(Piece::Summarize(from, statement.trim().to_string())),
            Some(Err(message)) => return Err(message),
            None => pieces.extend(parse_sql(&statement)?),
        }
    }
    Ok(pieces)
}

/// `text` cut into its statements when one of them is a SUMMARIZE; `None` when none is (or when
/// the text does not tokenize: the parser then says why).
fn cut_if_summarize(text: &str) -> Option<Vec<String>> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    // Most texts have no SUMMARIZE: no need to tokenize them before the parser does.
    if !text.to_ascii_lowercase().contains("summarize") {
        return None;
    }
    let tokens = Tokenizer::new(&GenericDialect {}, text).tokenize().ok()?;
    // Each statement's text, and whether it holds more than blanks and comments.
    let mut cut: Vec<(String, bool)> = vec![(String::new(), false)];
    for token in tokens {
        let current = cut.last_mut().expect("one statement at least");
        match token {
            Token::SemiColon => cut.push((String::new(), false)),
            // Blanks and comments before a statement are left out, so it starts with its
            // first word.
            Token::Whitespace(_) if !current.1 => {}
            Token::Whitespace(_) => current.0.push_str(&token.to_string()),
            _ => {
                current.0.push_str(&token.to_string());
                current.1 = true;
            }
        }
    }
    let statements: Vec<String> = cut.into_iter().filter(|s| s.1).map(|s| s.0).collect();
    statements
        .iter()
        .any(|s| parse(s).is_some())
        .then_some(statements)
}

/// What is computed for a column of this type, each level adding to the one before.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Profile {
    /// count only (lists, structs, maps, binary)
    Count,
    /// and min, max, approximate distinct count
    Ordered,
    /// and mean, standard deviation and quartiles
    Numeric,
}

fn profile(t: &DataType) -> Profile {
    use DataType as T;
    match t {
        _ if t.is_numeric() => Profile::Numeric,
        T::Utf8 | T::LargeUtf8 | T::Utf8View | T::Boolean | T::Date32 | T::Date64 => {
            Profile::Ordered
        }
        T::Timestamp(..) | T::Time32(_) | T::Time64(_) => Profile::Ordered,
        T::Dictionary(_, value) => profile(value).min(Profile::Ordered),
        _ => Profile::Count,
    }
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The profile of every column of `from` (SQL for a FROM clause), as a one-batch DataFrame.
pub async fn run(ctx: &SessionContext, from: &str) -> datafusion::error::Result<DataFrame> {
    let schema = ctx
        .sql(&format!("SELECT * FROM {from} LIMIT 0"))
        .await?
        .schema()
        .as_arrow()
        .clone();
    let mut aggregates = vec!["count(*)".to_string()];
    for f in schema.fields() {
        let c = match f.data_type() {
            // Partition columns come dictionary-encoded, which approx_distinct does not take.
            DataType::Dictionary(_, value) => {
                format!("arrow_cast({}, '{value}')", quoted(f.name()))
            }
            _ => quoted(f.name()),
        };
        aggregates.push(format!("count({c})"));
        let p = profile(f.data_type());
        if p >= Profile::Ordered {
            aggregates.push(format!("min({c})"));
            aggregates.push(format!("max({c})"));
            aggregates.push(format!("approx_distinct({c})"));
        }
        if p == Profile::Numeric {
            let d = format!("CAST({c} AS DOUBLE)");
            aggregates.push(format!("avg({d})"));
            aggregates.push(format!("stddev({d})"));
            for q in ["0.25", "0.5", "0.75"] {
                aggregates.push(format!("approx_percentile_cont({d}, {q})"));
            }
        }
    }
    let sql = format!("SELECT {} FROM {from}", aggregates.join(", "));
    let batches = ctx.sql(&sql).await?.collect().await?;
    let row = arrow::compute::concat_batches(&batches[0].schema(), &batches)?;
    let mut values = row.columns().iter();
    let mut next = || values.next().expect("one value per aggregate").clone();
    let as_i64 = |a: ArrayRef| -> datafusion::error::Result<Option<i64>> {
        let a = arrow::compute::cast(&a, &DataType::Int64)?;
        let a = a.as_any().downcast_ref::<Int64Array>().expect("cast");
        Ok((!a.is_null(0)).then(|| a.value(0)))
    };
    let as_f64 = |a: ArrayRef| -> datafusion::error::Result<Option<f64>> {
        let a = arrow::compute::cast(&a, &DataType::Float64)?;
        let a = a.as_any().downcast_ref::<Float64Array>().expect("cast");
        Ok((!a.is_null(0) && a.value(0).is_finite()).then(|| a.value(0)))
    };
    let options = FormatOptions::default();
    let shown = |a: ArrayRef| -> datafusion::error::Result<Option<String>> {
        if a.is_null(0) {
            return Ok(None);
        }
        Ok(Some(
            ArrayFormatter::try_new(&a, &options)?.value(0).to_string(),
        ))
    };
    let rows = as_i64(next())?.unwrap_or(0);
    let mut out = Columns::default();
    for f in schema.fields() {
        let count = as_i64(next())?.unwrap_or(0);
        let p = profile(f.data_type());
        out.name.push(f.name().clone());
        out.kind.push(sql_type(f.data_type()));
        if p >= Profile::Ordered {
            out.min.push(shown(next())?);
            out.max.push(shown(next())?);
            out.distinct.push(as_i64(next())?);
        } else {
            out.min.push(None);
            out.max.push(None);
            out.distinct.push(None);
        }
        let numeric = p == Profile::Numeric;
        for stat in [
            &mut out.avg,
            &mut out.std,
            &mut out.q25,
            &mut out.q50,
            &mut out.q75,
        ] {
            stat.push(if numeric { as_f64(next())? } else { None });
        }
        out.count.push(count);
        out.nulls.push((rows > 0).then(|| {
            let share = 100.0 * (rows - count) as f64 / rows as f64;
            (share * 100.0).round() / 100.0
        }));
    }
    ctx.read_batch(out.batch()?)
}

#[derive(Default)]
struct Columns {
    name: Vec<String>,
    kind: Vec<String>,
    min: Vec<Option<String>>,
    max: Vec<Option<String>>,
    distinct: Vec<Option<i64>>,
    avg: Vec<Option<f64>>,
    std: Vec<Option<f64>>,
    q25: Vec<Option<f64>>,
    q50: Vec<Option<f64>>,
    q75: Vec<Option<f64>>,
    count: Vec<i64>,
    nulls: Vec<Option<f64>>,
}

impl Columns {
    /// DuckDB's SUMMARIZE columns, in its order.
    fn batch(self) -> datafusion::error::Result<RecordBatch> {
        let strings = |v: Vec<String>| Arc::new(StringArray::from(v)) as ArrayRef;
        let texts = |v: Vec<Option<String>>| Arc::new(StringArray::from(v)) as ArrayRef;
        let floats = |v: Vec<Option<f64>>| Arc::new(Float64Array::from(v)) as ArrayRef;
        Ok(RecordBatch::try_from_iter([
            ("column_name", strings(self.name)),
            ("column_type", strings(self.kind)),
            ("min", texts(self.min)),
            ("max", texts(self.max)),
            (
                "approx_unique",
                Arc::new(Int64Array::from(self.distinct)) as ArrayRef,
            ),
            ("avg", floats(self.avg)),
            ("std", floats(self.std)),
            ("q25", floats(self.q25)),
            ("q50", floats(self.q50)),
            ("q75", floats(self.q75)),
            ("count", Arc::new(Int64Array::from(self.count)) as ArrayRef),
            ("null_percentage", floats(self.nulls)),
        ])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarize_names_a_table_a_file_or_a_query() {
        assert_eq!(parse("SUMMARIZE events;"), Some(Ok("events".into())));
        assert_eq!(
            parse("summarize 'exports/x.csv'"),
            Some(Ok("'exports/x.csv'".into()))
        );
        assert_eq!(
            parse("Summarize SELECT a FROM t"),
            Some(Ok("(SELECT a FROM t)".into()))
        );
        assert_eq!(parse("SUMMARIZE (SELECT 1)"), Some(Ok("(SELECT 1)".into())));
        assert!(matches!(parse("summarize ;"), Some(Err(_))));
        assert_eq!(parse("SELECT 'summarize'"), None);
        assert_eq!(parse("summarized"), None);
    }

    #[test]
    fn a_summarize_among_statements_is_cut_out_at_its_semicolons() {
        let kinds = |text: &str| -> Vec<String> {
            statements(text)
                .unwrap()
                .into_iter()
                .map(|p| match p {
                    Piece::Sql(s) => format!("sql {s}"),
                    Piece::Summarize(from, _) => format!("summarize {from}"),
                })
                .collect()
        };
        assert_eq!(
            kinds("SELECT 'a;b' AS x; -- a comment; still one\nSUMMARIZE events;\nSELECT 1 AS \"odd;name\" ;"),
            [
                "sql SELECT 'a;b' AS x",
                "summarize events",
                "sql SELECT 1 AS \"odd;name\""
            ]
        );
        // Without a SUMMARIZE the text is parsed whole, as before.
        assert_eq!(
            kinds("SELECT 1; SELECT 2"),
            ["sql SELECT 1", "sql SELECT 2"]
        );
        assert!(statements("SELEC 1").is_err());
    }
}
