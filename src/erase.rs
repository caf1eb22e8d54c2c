//! GDPR erasure: remove every row of one person, or of everyone a request file names, from
//! every table, then the files that held them.
//!
//! 1. Resolve each person's identities from `raw_events` and `events`: the id given
//!    (pseudonymised like at landing), every anonymous_id seen with their user_id (and the
//!    stitched one), every user_id seen with their anonymous ids, their e-mail pseudonyms. Each
//!    scan serves everyone of a batch at once (see [`resolve`]).
//! 2. For every table, a predicate over the columns it has (user_id, stitched_user_id,
//!    anonymous_id, email, user_key, session_key; quarantine: the raw line mentions an identity).
//!    One grouped scan counts each person's rows; tables with matching rows get one commit that
//!    rewrites the files holding any of them.
//! 3. Before the first commit, write a pending-erasure object (`_clicklake/erasures/pending/`:
//!    the erasure ids, the subjects' pseudonyms and the tables to rewrite; see [`Pending`]).
//! 4. Rewrite each table, then vacuum it with zero retention, so no file any retained version
//!    references still holds a removed row (time travel on those tables ends at the erasure).
//! 5. Append an `erasures` row per person (pseudonyms only) whose identities are refused at every
//!    later landing, and an `_audit` row; then delete the pending object.
//!
//! An erasure cut off between 3 and 5 (a crash, a kill, a failed upload) leaves its pending
//! object. Every later erasure finishes the tables any pending object names (the zero-retention
//! vacuum, the checkpoint); a later erasure whose request names all of a pending one's people
//! (running the failed request again) completes it and deletes its object. Until then `run`
//! warns of it on every tick and `status` lists it.
//!
//! The next `clean` sees rows removed from raw_events and rebuilds `events` in full; the next
//! `build` sees a commit on events it did not write and rebuilds the star schema in full.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::prelude::{col, DataFrame, Expr, SessionContext};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::catalog::{self, ERASURES, FILE_COLUMN};
use crate::config::Config;
use crate::delta;
use crate::error::{Error, Result};
use crate::sqlfn;
use crate::storage::Lake;

/// Which id the request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
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

/// One person to erase, named by one of their ids.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Subject {
    pub kind: SubjectKind,
    pub value: String,
}

impl Subject {
    /// The id as given, trimmed; an empty one, or an e-mail that is not `NAME@DOMAIN` (a user
    /// id or a name in the e-mail column, which would match nobody and record an erasure that
    /// blocks nobody while the person stays), is refused with the reason.
    /// `ids_go_in` ends the e-mail message: where an id should have been given instead.
    pub fn new(
        kind: SubjectKind,
        value: &str,
        ids_go_in: &str,
    ) -> std::result::Result<Subject, String> {
        let value = value.trim();
        if value.is_empty() {
            return Err("empty".into());
        }
        if kind == SubjectKind::Email
            && !value
                .split_once('@')
                .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        {
            return Err(format!(
                "{value:?} is not an e-mail address (NAME@DOMAIN); for an id use {ids_go_in}"
            ));
        }
        Ok(Subject {
            kind,
            value: value.to_string(),
        })
    }
}

/// Everyone one `erase` removes: their rows go in one commit per table.
pub struct EraseRequest {
    pub subjects: Vec<Subject>,
    pub dry_run: bool,
}

/// One table's part of an erasure: the rows of everyone erased, the files its commit rewrote
/// and the files vacuumed after it.
#[derive(Debug, Serialize, Default, Clone)]
pub struct TableErasure {
    pub table: String,
    pub rows: u64,
    pub files_rewritten: u64,
    pub files_deleted: u64,
}

/// The receipt of a one-person erasure (`--user-id`, `--anonymous-id`, `--email`).
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
    /// Tables an earlier erasure that was cut off meant to rewrite, now finished.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interrupted_finished: Vec<String>,
    /// Earlier erasures that were cut off and that this one completed (its request named all
    /// their people).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interrupted_completed: Vec<String>,
}

/// One person of an erasure: what was found of them and removed.
#[derive(Debug, Serialize)]
pub struct PersonErasure {
    pub erasure_id: String,
    pub subject_kind: SubjectKind,
    /// The HMAC pseudonym of the id given.
    pub subject: String,
    pub identities: IdentityCounts,
    /// Table → this person's rows in it.
    pub tables: BTreeMap<String, u64>,
    pub rows_removed: u64,
}

/// What one `erase` did (or, with `--dry-run`, would do), for one person or a batch.
#[derive(Debug, Serialize)]
pub struct Erasure {
    pub dry_run: bool,
    pub requested_at: String,
    pub people: Vec<PersonErasure>,
    /// Per table, everyone's rows (a row two requests name counts once) and the files.
    pub tables: Vec<TableErasure>,
    pub rows_removed: u64,
    pub files_rewritten: u64,
    pub files_deleted: u64,
    /// Tables an earlier erasure that was cut off meant to rewrite, now finished.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interrupted_finished: Vec<String>,
    /// Earlier erasures that were cut off and that this one completed (its request named all
    /// their people).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interrupted_completed: Vec<String>,
}

impl Erasure {
    /// The receipt of a one-person erasure, in the shape `erase --json` has always printed.
    pub fn receipt(&self) -> Option<EraseReceipt> {
        let [person] = self.people.as_slice() else {
            return None;
        };
        Some(EraseReceipt {
            erasure_id: person.erasure_id.clone(),
            dry_run: self.dry_run,
            subject_kind: person.subject_kind,
            subject: person.subject.clone(),
            identities: person.identities.clone(),
            tables: self.tables.clone(),
            rows_removed: self.rows_removed,
            files_rewritten: self.files_rewritten,
            files_deleted: self.files_deleted,
            requested_at: self.requested_at.clone(),
            interrupted_finished: self.interrupted_finished.clone(),
            interrupted_completed: self.interrupted_completed.clone(),
        })
    }
}

#[derive(Debug, Serialize, Default, Clone)]
pub struct IdentityCounts {
    pub user_ids: usize,
    pub anonymous_ids: usize,
    pub emails: usize,
}

/// The stored forms of one person's ids, as they appear in the lake's columns, and the keys the
/// star schema gives them and their sessions.
#[derive(Debug, Default, Clone)]
struct Identities {
    user_ids: BTreeSet<String>,
    anonymous_ids: BTreeSet<String>,
    /// E-mail values as stored (pseudonyms when email is a personal column).
    emails: BTreeSet<String>,
    user_keys: BTreeSet<String>,
    session_keys: BTreeSet<String>,
}

impl Identities {
    fn is_empty(&self) -> bool {
        self.user_ids.is_empty() && self.anonymous_ids.is_empty() && self.emails.is_empty()
    }

    fn extend(&mut self, other: &Identities) {
        self.user_ids.extend(other.user_ids.iter().cloned());
        self.anonymous_ids
            .extend(other.anonymous_ids.iter().cloned());
        self.emails.extend(other.emails.iter().cloned());
        self.user_keys.extend(other.user_keys.iter().cloned());
        self.session_keys.extend(other.session_keys.iter().cloned());
    }

    /// The id sets a column of a personal table is matched against (the key column: two).
    fn sets(&self, column: Column) -> (&BTreeSet<String>, Option<&BTreeSet<String>>) {
        match column {
            Column::UserId | Column::StitchedUserId => (&self.user_ids, None),
            Column::AnonymousId => (&self.anonymous_ids, None),
            Column::Email => (&self.emails, None),
            Column::UserKey => (&self.user_keys, None),
            Column::SessionKey => (&self.session_keys, None),
            Column::Key => (&self.user_keys, Some(&self.session_keys)),
        }
    }

    /// The values a column of a personal table is matched against.
    fn of(&self, column: Column) -> BTreeSet<String> {
        let (first, second) = self.sets(column);
        first
            .iter()
            .chain(second.into_iter().flatten())
            .cloned()
            .collect()
    }

    /// Every id, for matching quarantined lines.
    fn ids(&self) -> impl Iterator<Item = &String> {
        self.user_ids
            .iter()
            .chain(&self.anonymous_ids)
            .chain(&self.emails)
    }
}

fn union(people: &[Identities]) -> Identities {
    let mut all = Identities::default();
    for p in people {
        all.extend(p);
    }
    all
}

/// The rows of a query as strings (NULL as `None`).
async fn rows_of(df: DataFrame) -> Result<Vec<Vec<Option<String>>>> {
    let mut out = Vec::new();
    for b in df.collect().await? {
        let columns = b
            .columns()
            .iter()
            .map(catalog::strings)
            .collect::<Result<Vec<_>>>()?;
        for i in 0..b.num_rows() {
            out.push(columns.iter().map(|c| c[i].clone()).collect());
        }
    }
    Ok(out)
}

/// Expands each person's ids to every identity of theirs, in two rounds over `raw_events` then
/// `events` (ids seen together on a row; in `events` also the rows stitched to their user ids).
/// Each table is scanned once a round for everyone: a scan returns the distinct id combinations
/// of the rows matching anyone, and each person takes those matching their own ids as they
/// stood before the scan, so a batch finds for each person what an erasure of them alone would.
async fn resolve(ctx: &SessionContext, tables: &[String], people: &mut [Identities]) -> Result<()> {
    for _ in 0..2 {
        for t in ["raw_events", "events"] {
            if !tables.iter().any(|x| x == t) {
                continue;
            }
            let all = union(people);
            if all.is_empty() {
                return Ok(());
            }
            let mut columns = vec![Column::UserId, Column::AnonymousId, Column::Email];
            if t == "events" {
                columns.push(Column::StitchedUserId);
            }
            let Some(w) = any_of(&columns, &all) else {
                return Ok(());
            };
            let names: Vec<&str> = columns.iter().map(|c| c.name()).collect();
            let seen = rows_of(
                ctx.table(t)
                    .await?
                    .filter(w)?
                    .select_columns(&names)?
                    .distinct()?,
            )
            .await?;
            let owners = Owners::new(&columns, false, people)?;
            let mut found = vec![Identities::default(); people.len()];
            for row in &seen {
                for i in owners.of(row) {
                    let add = |set: &mut BTreeSet<String>, v: &Option<String>| {
                        if let Some(v) = v {
                            set.insert(v.clone());
                        }
                    };
                    add(&mut found[i].user_ids, &row[0]);
                    add(&mut found[i].anonymous_ids, &row[1]);
                    add(&mut found[i].emails, &row[2]);
                }
            }
            for (ids, found) in people.iter_mut().zip(&found) {
                ids.extend(found);
            }
        }
    }
    Ok(())
}

/// The columns by which a table's rows name a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    UserId,
    StitchedUserId,
    AnonymousId,
    Email,
    UserKey,
    SessionKey,
    /// `events_changes.key`: a customer's or a session's key.
    Key,
}

impl Column {
    const ALL: [Column; 7] = [
        Column::UserId,
        Column::StitchedUserId,
        Column::AnonymousId,
        Column::Email,
        Column::UserKey,
        Column::SessionKey,
        Column::Key,
    ];

    fn name(self) -> &'static str {
        match self {
            Column::UserId => "user_id",
            Column::StitchedUserId => "stitched_user_id",
            Column::AnonymousId => "anonymous_id",
            Column::Email => "email",
            Column::UserKey => "user_key",
            Column::SessionKey => "session_key",
            Column::Key => "key",
        }
    }
}

/// `column IN (...) OR ...` over the columns for which `ids` has values (a set lookup per row
/// for a long list, see [`sqlfn::in_key_sets`]); `None` if none has.
fn any_of(columns: &[Column], ids: &Identities) -> Option<Expr> {
    columns
        .iter()
        .filter_map(|c| {
            let values = ids.of(*c);
            (!values.is_empty())
                .then(|| sqlfn::in_key_sets(vec![(c.name(), values.into_iter().collect())]))
        })
        .reduce(Expr::or)
}

/// Which of a batch's people each value names, so that a row is attributed by looking its
/// values up rather than by comparing it with every person (a request of thousands of people
/// against thousands of grouped rows).
struct Owners {
    /// Per column of the rows, in order: value → the people (indexes into the batch) it names.
    columns: Vec<HashMap<String, Vec<usize>>>,
    /// For `quarantine`'s raw lines (the value after the columns): every person's ids as
    /// [`needle`]s, and the people each needle names.
    raw: Option<(aho_corasick::AhoCorasick, Vec<Vec<usize>>)>,
}

impl Owners {
    fn new(columns: &[Column], raw: bool, people: &[Identities]) -> Result<Owners> {
        let columns = columns
            .iter()
            .map(|c| {
                let mut owners: HashMap<String, Vec<usize>> = HashMap::new();
                for (i, ids) in people.iter().enumerate() {
                    for v in ids.of(*c) {
                        owners.entry(v).or_default().push(i);
                    }
                }
                owners
            })
            .collect();
        let raw = if raw {
            let mut by_needle: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for (i, ids) in people.iter().enumerate() {
                for id in ids.ids() {
                    let owners = by_needle.entry(needle(id).into_owned()).or_default();
                    if owners.last() != Some(&i) {
                        owners.push(i);
                    }
                }
            }
            let (needles, owners): (Vec<String>, Vec<Vec<usize>>) = by_needle.into_iter().unzip();
            let automaton = aho_corasick::AhoCorasick::new(&needles)
                .map_err(|e| Error::runtime(format!("matching quarantined lines: {e}")))?;
            Some((automaton, owners))
        } else {
            None
        };
        Ok(Owners { columns, raw })
    }

    /// The people a row names (its values of the columns, in order, then the raw line when
    /// matched by it), each once.
    fn of(&self, row: &[Option<String>]) -> BTreeSet<usize> {
        let mut found = BTreeSet::new();
        for (owners, v) in self.columns.iter().zip(row) {
            if let Some(people) = v.as_ref().and_then(|v| owners.get(v)) {
                found.extend(people.iter().copied());
            }
        }
        if let (Some((automaton, owners)), Some(Some(raw))) =
            (&self.raw, row.get(self.columns.len()))
        {
            for m in automaton.find_overlapping_iter(raw.as_str()) {
                found.extend(owners[m.pattern().as_usize()].iter().copied());
            }
        }
        found
    }
}

/// What a quarantined line holds when it mentions an id (e-mails appear masked as
/// `pii:<pseudonym>`): the id, or a short one only as a whole JSON string, so `u1` does not
/// match every line holding `u10`. The SQL predicate and the attribution of counted lines to
/// people both search for it.
fn needle(id: &str) -> std::borrow::Cow<'_, str> {
    if id.chars().count() >= 6 {
        id.into()
    } else {
        format!("\"{id}\"").into()
    }
}

/// How a table names people: the columns it has of [`Column::ALL`], and for `quarantine` its
/// raw lines. `None` for tables without personal rows (aggregates, dimensions of products and
/// dates, bookkeeping).
struct Personal {
    columns: Vec<Column>,
    raw: bool,
}

impl Personal {
    fn of(table: &str, columns: &[String]) -> Option<Personal> {
        let has = |c: &str| columns.iter().any(|x| x == c);
        let personal = Personal {
            columns: Column::ALL
                .into_iter()
                .filter(|c| has(c.name()))
                .filter(|c| *c != Column::Key || table == catalog::EVENTS_CHANGES.name)
                .collect(),
            raw: table == catalog::QUARANTINE.name && has("raw"),
        };
        (!personal.columns.is_empty() || personal.raw).then_some(personal)
    }

    /// The rows of `ids` as a predicate; `None` when they have no value to match.
    fn predicate(&self, ids: &Identities) -> Result<Option<Expr>> {
        let mut clauses: Vec<Expr> = any_of(&self.columns, ids).into_iter().collect();
        if self.raw {
            let needles: BTreeSet<String> = ids.ids().map(|v| needle(v).into_owned()).collect();
            if !needles.is_empty() {
                clauses.push(sqlfn::contains_any("raw", needles.into_iter().collect())?);
            }
        }
        Ok(clauses.into_iter().reduce(Expr::or))
    }
}

/// `md5(concat(prefix, chr(31), id))` for every id: the customer keys of the star schema.
async fn customer_keys(
    ctx: &SessionContext,
    prefix: &str,
    ids: &BTreeSet<String>,
) -> Result<HashMap<String, String>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    // The ids as a one-column table: the same SQL functions as the models compute the keys.
    let ids = StringArray::from_iter_values(ids.iter());
    let batch = RecordBatch::try_from_iter([("id", Arc::new(ids) as arrow::array::ArrayRef)])?;
    let key = datafusion::functions::expr_fn::md5(datafusion::functions::expr_fn::concat(vec![
        datafusion::prelude::lit(prefix),
        datafusion::prelude::lit("\u{1f}"),
        col("id"),
    ]));
    let rows = rows_of(ctx.read_batch(batch)?.select(vec![col("id"), key])?).await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| Some((r[0].clone()?, r[1].clone()?)))
        .collect())
}

/// The stored form of a subject's id: pseudonymised when its column is.
fn stored_seed(cfg: &Config, key: &crate::privacy::PiiKey, s: &Subject) -> Identities {
    let mut ids = Identities::default();
    match s.kind {
        SubjectKind::UserId if cfg.privacy.user_id => {
            ids.user_ids.insert(key.pseudonym("user_id", &s.value));
        }
        SubjectKind::UserId => {
            ids.user_ids.insert(s.value.clone());
        }
        SubjectKind::AnonymousId => {
            ids.anonymous_ids.insert(s.value.clone());
        }
        SubjectKind::Email if cfg.privacy.email => {
            ids.emails.insert(key.email(&s.value));
        }
        SubjectKind::Email => {
            ids.emails.insert(s.value.clone());
        }
    }
    ids
}

pub async fn erase(lake: &Lake, cfg: &Config, req: EraseRequest) -> Result<Erasure> {
    let key = cfg.privacy.key.as_ref().ok_or_else(|| {
        Error::usage(
            "erase needs the pseudonymisation key to match pseudonymised columns and to record \
             the erasure: set CLICKLAKE_PII_KEY (or [privacy] key_file)",
        )
    })?;
    // Each person once, in the order of the request.
    let mut seen = BTreeSet::new();
    let subjects: Vec<Subject> = req
        .subjects
        .iter()
        .filter(|s| seen.insert((*s).clone()))
        .cloned()
        .collect();
    let pseudonyms: Vec<String> = subjects
        .iter()
        .map(|s| match s.kind {
            SubjectKind::Email => key.email(&s.value),
            kind => key.pseudonym(kind.as_str(), &s.value),
        })
        .collect();
    let mut people: Vec<Identities> = subjects.iter().map(|s| stored_seed(cfg, key, s)).collect();

    let ctx = catalog::session(cfg.memory_limit)?;
    let opened = catalog::open_existing(lake, &[]).await?;
    for (name, t) in &opened {
        catalog::register(&ctx, name, t).await?;
    }
    let names: Vec<String> = opened.iter().map(|(n, _)| n.clone()).collect();
    resolve(&ctx, &names, &mut people).await?;
    let earlier = pending(lake).await?;

    star_keys(&ctx, &names, &mut people).await?;

    let requested_at = chrono::Utc::now();
    let erasure_ids: Vec<String> = people
        .iter()
        .map(|_| {
            format!(
                "{}-{}",
                requested_at.format("%Y%m%dT%H%M%SZ"),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            )
        })
        .collect();
    let Counted {
        mut tables,
        rewrites,
        leftovers,
        per_person,
    } = count_rows(&ctx, opened, &people).await?;
    // Tables an erasure that was cut off meant to rewrite: the rewritten ones are finished by
    // their own vacuum; the others may still hold superseded files with its people's rows.
    let unfinished: BTreeSet<&String> = earlier.iter().flat_map(|(_, p)| &p.tables).collect();
    let subject_keys: Vec<String> = subjects
        .iter()
        .zip(&pseudonyms)
        .map(|(s, p)| subject_key(s.kind, p))
        .collect();
    let mut interrupted_finished = Vec::new();
    let mut announced = None;
    if !req.dry_run {
        let (store, root) = lake.root_store()?;
        if !rewrites.is_empty() {
            let p = Pending {
                erasure_ids: erasure_ids.clone(),
                started_at: requested_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                subjects: subject_keys.clone(),
                tables: rewrites
                    .iter()
                    .map(|(i, _, _)| tables[*i].table.clone())
                    .collect(),
            };
            announced = Some(announce(&store, &root, &p).await?);
        }
        rewrite_all(cfg, rewrites, &mut tables, &erasure_ids).await?;
    }
    for (name, table) in leftovers {
        if !unfinished.contains(&name) {
            continue;
        }
        // A dry run says what it would finish.
        if !req.dry_run {
            let deleted = finish(table, &name).await?;
            tracing::warn!(
                "{name}: finished an earlier erasure that was cut off: {deleted} superseded \
                 files deleted"
            );
        }
        interrupted_finished.push(name);
    }
    // Earlier erasures whose people this request names again are complete once it is recorded.
    let completed: Vec<&(ObjectPath, Pending)> = earlier
        .iter()
        .filter(|(_, p)| p.subjects.iter().all(|s| subject_keys.contains(s)))
        .collect();

    let mut out = Vec::new();
    let mut records = Vec::new();
    for ((((subject, pseudonym), ids), counts), erasure_id) in subjects
        .iter()
        .zip(pseudonyms)
        .zip(&people)
        .zip(per_person)
        .zip(erasure_ids)
    {
        let identities = landed_identities(cfg, key, &pseudonym, ids);
        let person = PersonErasure {
            erasure_id,
            subject_kind: subject.kind,
            subject: pseudonym,
            identities: IdentityCounts {
                user_ids: ids.user_ids.len(),
                anonymous_ids: ids.anonymous_ids.len(),
                emails: ids.emails.len(),
            },
            rows_removed: counts.values().sum(),
            tables: counts,
        };
        records.push(identities);
        out.push(person);
    }
    let erasure = Erasure {
        dry_run: req.dry_run,
        requested_at: requested_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        people: out,
        rows_removed: tables.iter().map(|t| t.rows).sum(),
        files_rewritten: tables.iter().map(|t| t.files_rewritten).sum(),
        files_deleted: tables.iter().map(|t| t.files_deleted).sum(),
        tables,
        interrupted_finished,
        interrupted_completed: completed
            .iter()
            .flat_map(|(_, p)| p.erasure_ids.iter().cloned())
            .collect(),
    };
    if !req.dry_run {
        record(
            lake,
            cfg,
            &erasure,
            &records,
            requested_at.timestamp_micros(),
        )
        .await?;
        let (store, _) = lake.root_store()?;
        // The erasure is done and recorded: a record left behind only makes `status` ask for
        // the request once more.
        for path in completed.iter().map(|(path, _)| path).chain(&announced) {
            match store.delete(path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => tracing::warn!(
                    "the erasure is recorded, but its pending record {path} could not be \
                     deleted ({e}): status lists it until the request runs again"
                ),
            }
        }
    }
    Ok(erasure)
}

/// Adds the keys the star schema uses for these people (`user_key` of their user and anonymous
/// ids) and their sessions (`session_key` of their `events` rows).
async fn star_keys(
    ctx: &SessionContext,
    names: &[String],
    people: &mut [Identities],
) -> Result<()> {
    let all = union(people);
    let user_keys = customer_keys(ctx, "user", &all.user_ids).await?;
    let anonymous_keys = customer_keys(ctx, "anonymous", &all.anonymous_ids).await?;
    for ids in people.iter_mut() {
        ids.user_keys.extend(
            ids.user_ids
                .iter()
                .filter_map(|u| user_keys.get(u).cloned()),
        );
        ids.user_keys.extend(
            ids.anonymous_ids
                .iter()
                .filter_map(|a| anonymous_keys.get(a).cloned()),
        );
    }
    if names.iter().any(|n| n == "events") {
        let columns = [
            Column::UserId,
            Column::StitchedUserId,
            Column::AnonymousId,
            Column::Email,
        ];
        if let Some(w) = any_of(&columns, &union(people)) {
            let rows = rows_of(
                ctx.table("events")
                    .await?
                    .filter(w)?
                    .select_columns(&[
                        "user_id",
                        "stitched_user_id",
                        "anonymous_id",
                        "email",
                        "session_key",
                    ])?
                    .distinct()?,
            )
            .await?;
            let owners = Owners::new(&columns, false, people)?;
            for r in &rows {
                let Some(key) = &r[4] else { continue };
                for i in owners.of(&r[..4]) {
                    people[i].session_keys.insert(key.clone());
                }
            }
        }
    }
    Ok(())
}

/// What one grouped scan per table found of everyone's rows.
struct Counted {
    /// The tables holding rows of anyone, with their counts.
    tables: Vec<TableErasure>,
    /// Per such table: its entry in `tables`, the table, and the predicate of the rows to remove.
    rewrites: Vec<(usize, deltalake::DeltaTable, Expr)>,
    /// Tables without rows of these people, where an earlier erasure may have been cut off.
    leftovers: Vec<(String, deltalake::DeltaTable)>,
    /// Per person, rows per table.
    per_person: Vec<BTreeMap<String, u64>>,
}

/// Counts every person's rows in every table that can hold personal data: the matching rows
/// grouped by the values that name people, each group then attributed to the people it names.
async fn count_rows(
    ctx: &SessionContext,
    opened: Vec<(String, deltalake::DeltaTable)>,
    people: &[Identities],
) -> Result<Counted> {
    let mut per_person: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); people.len()];
    let all = union(people);
    let skip = [
        catalog::ERASURES.name,
        catalog::AUDIT.name,
        catalog::RUNS.name,
        catalog::INGESTED_FILES.name,
    ];
    let mut tables = Vec::new();
    let mut rewrites = Vec::new();
    let mut leftovers = Vec::new();
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
        let Some(personal) = Personal::of(&name, &columns) else {
            continue;
        };
        let Some(w) = personal.predicate(&all)? else {
            leftovers.push((name, table));
            continue;
        };
        let mut keys: Vec<Expr> = personal.columns.iter().map(|c| col(c.name())).collect();
        if personal.raw {
            keys.push(col("raw"));
        }
        let counting = std::time::Instant::now();
        let count = datafusion::functions_aggregate::expr_fn::count(datafusion::prelude::lit(1));
        let grouped = rows_of(
            ctx.table(name.as_str())
                .await?
                .filter(w.clone())?
                .aggregate(
                    keys,
                    vec![datafusion::prelude::cast(
                        count,
                        arrow::datatypes::DataType::Utf8,
                    )],
                )?,
        )
        .await?;
        let count = |row: &Vec<Option<String>>| {
            row.last()
                .cloned()
                .flatten()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let rows: u64 = grouped.iter().map(count).sum();
        tracing::info!(
            "{name}: {rows} rows of the people to erase, counted in {:.2} s",
            counting.elapsed().as_secs_f64()
        );
        if rows == 0 {
            leftovers.push((name, table));
            continue;
        }
        let owners = Owners::new(&personal.columns, personal.raw, people)?;
        for row in &grouped {
            let n = count(row);
            for i in owners.of(row) {
                if n > 0 {
                    *per_person[i].entry(name.clone()).or_default() += n;
                }
            }
        }
        tables.push(TableErasure {
            table: name.clone(),
            rows,
            ..Default::default()
        });
        rewrites.push((tables.len() - 1, table, w));
    }
    Ok(Counted {
        tables,
        rewrites,
        leftovers,
        per_person,
    })
}

/// Every identity's pseudonym, as landing computes them from clear values: what later landings
/// refuse.
fn landed_identities(
    cfg: &Config,
    key: &crate::privacy::PiiKey,
    pseudonym: &str,
    ids: &Identities,
) -> BTreeSet<String> {
    let mut identities: BTreeSet<String> = BTreeSet::new();
    identities.insert(pseudonym.to_string());
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
    identities
}

/// Rewrites each table without its erased rows (entry index, table, predicate), two at a time
/// on their own tasks (a rewrite's Parquet encoding runs on the task that writes, so two tables
/// use both cores), filling in each entry's files.
async fn rewrite_all(
    cfg: &Config,
    rewrites: Vec<(usize, deltalake::DeltaTable, Expr)>,
    tables: &mut [TableErasure],
    erasure_ids: &[String],
) -> Result<()> {
    const AT_ONCE: usize = 2;
    let cfg = Arc::new(cfg.clone());
    let ids = Arc::new(erasure_ids.to_vec());
    let mut running = tokio::task::JoinSet::new();
    let mut pending = rewrites.into_iter();
    let mut failed = None;
    loop {
        // After a failure no new table starts, and the running ones finish (a commit is not
        // cut off between itself and its vacuum).
        while failed.is_none() && running.len() < AT_ONCE {
            let Some((i, table, predicate)) = pending.next() else {
                break;
            };
            let (cfg, ids, name) = (cfg.clone(), ids.clone(), tables[i].table.clone());
            running.spawn(async move {
                let files = rewrite_without(&cfg, table, &name, &predicate, &ids).await;
                (i, files)
            });
        }
        let Some(done) = running.join_next().await else {
            return failed.map_or(Ok(()), Err);
        };
        match done {
            Ok((i, Ok((rewritten, deleted)))) => {
                tables[i].files_rewritten = rewritten;
                tables[i].files_deleted = deleted;
            }
            Ok((_, Err(e))) => {
                failed.get_or_insert(e);
            }
            Err(e) => {
                failed.get_or_insert(Error::runtime(format!("an erasure task failed: {e}")));
            }
        }
    }
}

/// Removes the rows matching `predicate` from `table`: the files holding any are rewritten
/// without them in one commit (whose log entry names no id: the predicate is not recorded),
/// the superseded files are vacuumed at once, and a checkpoint replaces the older log entries
/// (their file statistics could name an id). Returns (files rewritten, files deleted).
async fn rewrite_without(
    cfg: &Config,
    mut table: deltalake::DeltaTable,
    name: &str,
    predicate: &Expr,
    erasure_ids: &[String],
) -> Result<(u64, u64)> {
    use futures::StreamExt;
    let started = std::time::Instant::now();
    let mut phases: Vec<(&str, f64)> = Vec::new();
    let mut lap = {
        let mut last = started;
        move |phase: &'static str, phases: &mut Vec<(&'static str, f64)>| {
            phases.push((phase, last.elapsed().as_secs_f64()));
            last = std::time::Instant::now();
        }
    };
    let ctx = catalog::session(cfg.memory_limit)?;
    let provider = catalog::provider_with_file_column(&table).await?;
    ctx.register_table("t", provider)?;
    let files: Vec<String> = rows_of(
        ctx.table("t")
            .await?
            .filter(predicate.clone())?
            .select(vec![datafusion::prelude::cast(
                col(FILE_COLUMN),
                arrow::datatypes::DataType::Utf8,
            )])?
            .distinct()?,
    )
    .await?
    .into_iter()
    .filter_map(|row| row.into_iter().next().flatten())
    .collect();
    lap("find files", &mut phases);
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
    let kept = !datafusion::functions::expr_fn::coalesce(vec![
        predicate.clone(),
        datafusion::prelude::lit(false),
    ]);
    let mut stream = ctx.table("f").await?.filter(kept)?.execute_stream().await?;
    while let Some(batch) = stream.next().await {
        sink.write(&batch?).await?;
    }
    let adds = sink.finish().await?;
    lap("rewrite", &mut phases);
    let mut actions = delta::remove_actions(&table, &files, name)?;
    actions.extend(adds.into_iter().map(deltalake::kernel::Action::Add));
    let metadata = HashMap::from([(
        "clicklake".to_string(),
        serde_json::json!({ "command": "erase", "mode": "erase", "erasure_ids": erasure_ids }),
    )]);
    delta::commit(
        &mut table,
        actions,
        Vec::new(),
        metadata,
        deltalake::protocol::SaveMode::Overwrite,
    )
    .await?;
    lap("commit", &mut phases);
    crate::fault(&format!("erase-after-commit:{name}"));
    let files_deleted = finish(table, name).await?;
    lap("vacuum and checkpoint", &mut phases);
    let phases: Vec<String> = phases
        .iter()
        .map(|(phase, s)| format!("{phase} {s:.2} s"))
        .collect();
    tracing::info!(
        "{name}: {} files rewritten in {:.2} s ({})",
        files.len(),
        started.elapsed().as_secs_f64(),
        phases.join(", ")
    );
    Ok((files.len() as u64, files_deleted))
}

/// The end of a table's erasure, after its commit: vacuums with zero retention (no file any
/// retained version references still holds a removed row), writes a checkpoint and removes the
/// older log entries (their file statistics could name an id). Returns the files deleted.
async fn finish(table: deltalake::DeltaTable, name: &str) -> Result<u64> {
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
    Ok(vacuumed.files_deleted.len() as u64)
}

/// An erasure under way, as the object it writes before its first commit and deletes once it
/// is recorded in `erasures`: what a later erasure needs to finish its tables, and to know
/// when it is complete. It holds no clear id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pending {
    pub erasure_ids: Vec<String>,
    pub started_at: String,
    /// Each person of the request as `KIND:PSEUDONYM` (the pseudonym `erase` prints).
    pub subjects: Vec<String>,
    /// The tables it was about to rewrite.
    pub tables: Vec<String>,
}

impl Pending {
    /// One line naming this erasure as cut off, and what to do about it.
    pub fn warning(&self) -> String {
        format!(
            "unfinished erasure: {} (started {}, {} {}, tables {}) was cut off before it was \
             recorded; run the same erase request again",
            self.erasure_ids.join(", "),
            self.started_at,
            self.subjects.len(),
            if self.subjects.len() == 1 {
                "person"
            } else {
                "people"
            },
            self.tables.join(", ")
        )
    }
}

fn pending_dir(root: &ObjectPath) -> ObjectPath {
    root.clone()
        .join("_clicklake")
        .join("erasures")
        .join("pending")
}

fn subject_key(kind: SubjectKind, pseudonym: &str) -> String {
    format!("{}:{pseudonym}", kind.as_str())
}

/// The erasures that were cut off before they were recorded: their pending objects, oldest
/// first.
pub async fn pending(lake: &Lake) -> Result<Vec<(ObjectPath, Pending)>> {
    let (store, root) = lake.root_store()?;
    let listed = store.list_with_delimiter(Some(&pending_dir(&root))).await?;
    let mut out = Vec::new();
    for object in listed.objects {
        let bytes = match store.get(&object.location).await {
            Ok(r) => r.bytes().await?,
            // Completed by another erasure between the listing and the read.
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let p: Pending = serde_json::from_slice(&bytes).map_err(|e| {
            Error::runtime(format!(
                "{}/_clicklake/erasures/pending/{} is not a pending erasure ({e}); it was not \
                 written by clicklake: move it away",
                crate::storage::redact(lake.root()).trim_end_matches('/'),
                object.location.filename().unwrap_or_default()
            ))
        })?;
        out.push((object.location, p));
    }
    out.sort_by(|a, b| a.1.started_at.cmp(&b.1.started_at));
    Ok(out)
}

/// Writes `p`'s object before the first commit of its erasure.
async fn announce(
    store: &Arc<dyn ObjectStore>,
    root: &ObjectPath,
    p: &Pending,
) -> Result<ObjectPath> {
    let path = pending_dir(root).join(format!("{}.json", p.erasure_ids[0]));
    let bytes = serde_json::to_vec_pretty(p).expect("a pending erasure serializes");
    store
        .put_opts(
            &path,
            PutPayload::from(bytes),
            object_store::PutMode::Overwrite.into(),
        )
        .await?;
    Ok(path)
}

/// One `erasures` row per person: their pseudonyms (refused at every later landing), their rows
/// per table, and the files of the commits that removed them (shared within a batch).
async fn record(
    lake: &Lake,
    cfg: &Config,
    e: &Erasure,
    identities: &[BTreeSet<String>],
    at_us: i64,
) -> Result<()> {
    let mut table = catalog::ensure_table(lake, &ERASURES).await?;
    let files = |p: &PersonErasure, of: fn(&TableErasure) -> u64| -> i64 {
        e.tables
            .iter()
            .filter(|t| p.tables.contains_key(&t.table))
            .map(of)
            .sum::<u64>() as i64
    };
    let people = &e.people;
    let s = |f: &dyn Fn(&PersonErasure) -> String| {
        Arc::new(StringArray::from_iter_values(people.iter().map(f))) as arrow::array::ArrayRef
    };
    let i = |f: &dyn Fn(&PersonErasure) -> i64| {
        Arc::new(Int64Array::from_iter_values(people.iter().map(f))) as arrow::array::ArrayRef
    };
    let batch = RecordBatch::try_new(
        (ERASURES.schema)(),
        vec![
            s(&|p| p.erasure_id.clone()),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(people.iter().map(|_| at_us))
                    .with_timezone("UTC"),
            ),
            s(&|p| p.subject_kind.as_str().to_string()),
            s(&|p| p.subject.clone()),
            Arc::new(StringArray::from_iter_values(identities.iter().map(
                |ids| serde_json::to_string(ids).expect("strings serialize"),
            ))),
            s(&|p| serde_json::to_string(&p.tables).expect("map serializes")),
            i(&|p| p.rows_removed as i64),
            i(&|p| p.tables.len() as i64),
            i(&|p| files(p, |t| t.files_rewritten)),
            i(&|p| files(p, |t| t.files_deleted)),
            s(&|_| crate::lease::holder_name()),
        ],
    )?;
    delta::append_batch(&mut table, batch, cfg, HashMap::new()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(user_ids: &[&str], anonymous_ids: &[&str]) -> Identities {
        Identities {
            user_ids: user_ids.iter().map(|s| s.to_string()).collect(),
            anonymous_ids: anonymous_ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// A row is attributed to everyone any of its values names: a shared device's anonymous id
    /// to both people, a raw line to everyone whose id it holds (one id inside another too),
    /// and a short id only as a whole JSON string.
    #[test]
    fn a_row_is_attributed_to_every_person_it_names() {
        let people = [
            person(&["user-000001"], &["shared-device"]),
            person(&["user-0000012"], &["shared-device", "phone-2"]),
            person(&["u3"], &[]),
        ];
        let columns = [Column::UserId, Column::AnonymousId];
        let owners = Owners::new(&columns, true, &people).unwrap();
        let row = |u: Option<&str>, a: Option<&str>, raw: Option<&str>| {
            owners
                .of(&[u, a, raw].map(|v| v.map(str::to_string)))
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(row(Some("user-000001"), None, None), vec![0]);
        assert_eq!(row(None, Some("shared-device"), None), vec![0, 1]);
        assert_eq!(row(Some("user-0000012"), Some("phone-2"), None), vec![1]);
        assert_eq!(
            row(Some("someone-else"), Some("other"), None),
            Vec::<usize>::new()
        );
        assert_eq!(
            row(None, None, Some(r#"{"user_id":"user-0000012"}"#)),
            vec![0, 1]
        );
        assert_eq!(row(None, None, Some(r#"{"user_id":"u3"}"#)), vec![2]);
        assert_eq!(
            row(None, None, Some(r#"{"user_id":"u33"}"#)),
            Vec::<usize>::new()
        );
        // Without the raw line, only the columns count.
        let owners = Owners::new(&columns, false, &people).unwrap();
        let only = owners.of(&[None, None, Some("user-000001".to_string())]);
        assert!(only.is_empty(), "{only:?}");
    }
}
