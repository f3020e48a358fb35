//! Source schema changes on the target, in stream order.
//!
//! A [`SchemaChange`] sits among its transaction's row changes: every change before it has the
//! old shape, every change after it the new one. The applier follows it inside the open target
//! transaction (PostgreSQL DDL is transactional), so the target table changes exactly there:
//!
//! 1. **Rules follow renames** ([`follow_renames`]): a renamed source table or column is renamed
//!    in the task's settings (`trempy_protocol::renames`), so its filters and transformations keep
//!    applying; the rewritten settings are recorded with the progress, like settings from the
//!    stream. The rules are then compiled against the new shape: one that no longer fits halts the
//!    task naming it ([`ErrorKind::Rules`]).
//! 2. **The target's side** ([`target`]): the old and the new source shapes go through the task's
//!    rules (target schema, table and column names, types, the SCD2 columns) and
//!    [`trempy_protocol::schema::diff`] gives the steps of the *target* table. Source columns keep
//!    their `attnum`; columns the rules create are matched by name.
//! 3. **Reconciliation** ([`reconcile`], pure): each step is compared with the target's actual
//!    columns, types, NOT NULL flags and keys ([`read`]); a step already done (a re-copy, a replay
//!    or the DBA got there first) is skipped, the others become single statements with quoted
//!    identifiers and checked type names. A value is never written into SQL text: the value every
//!    existing row got in an added column travels as a parameter, cast from text to the checked
//!    type. Values the source computed row by row (a volatile `DEFAULT`, an identity column, an
//!    `ALTER COLUMN … TYPE … USING`) follow the change as [`Backfill`]s when the table has a key:
//!    the column is added (or converted, emptied) and each row gets its value by key
//!    ([`BackfillPlan`]), then its NOT NULL. Without a key, or into a column the rules transform,
//!    they cannot be derived: [`Action::Cannot`].
//! 4. **Execution** ([`execute`]): when the task manages its target tables
//!    (`create_table_if_not_exists`), the statements run one at a time through the extended
//!    protocol; anything that cannot be derived halts in order ([`ErrorKind::Schema`]) with the
//!    remedy, a `reload`. When it does not, the task halts naming the statements for the DBA to
//!    run; the next attempt finds them done and goes on. Either way a schema change is never
//!    dead-lettered.
//! 5. **Record** ([`record`]): one row in `trempy.applier_schema_changes`, in the same transaction.
//!
//! SCD2: the history keeps its versions. An added column is NULL in every version, and only the
//! current versions get the value existing rows got at the source; `SET NOT NULL` is not applied to
//! a history column (closed versions may hold NULL); renames, drops and type changes apply to the
//! history table (a `USING` conversion casts the closed versions' values and backfills the current
//! ones); the SCD2 columns are never dropped.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::Value;
use tokio_postgres::Client;
use trempy_protocol::Lsn;
use trempy_protocol::envelope::{Column, Relation};
use trempy_protocol::renames;
use trempy_protocol::schema::{self, Backfill, Conversion, Existing, SchemaChange, Shape, ShapeColumn, Step};
use trempy_protocol::settings::{Scd2Columns, TaskSettings};
use trempy_protocol::typename;

use crate::error::{Error, ErrorKind};
use crate::ident::qualified;
use crate::ident::quote_ident;
use crate::policy::{self, Reaction};
use crate::rules;
use crate::target_catalog::Catalog;

/// `(schema, table)`, unquoted.
pub(crate) type Name = (String, String);

/// A source shape as the relation the stream describes after the change.
pub(crate) fn relation(rel: u32, shape: &Shape) -> Relation {
    Relation {
        id: rel,
        schema: shape.schema.clone(),
        table: shape.table.clone(),
        columns: shape
            .columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                type_name: c.type_name.clone(),
                type_oid: c.type_oid,
                key: c.key,
                not_null: c.not_null,
                create_type: c.create_type.clone(),
            })
            .collect(),
    }
}

/// `schema.table` as people read it (unquoted), for logs and records.
pub(crate) fn display(name: &Name) -> String {
    format!("{}.{}", name.0, name.1)
}

/// The task's settings after the change's renames (`None` when nothing was renamed): the new
/// settings document as text, and parsed. `settings` is the settings document in effect.
pub(crate) fn follow_renames(
    settings: Option<&str>,
    change: &SchemaChange,
) -> Result<Option<(String, TaskSettings)>, Error> {
    let (Some(text), Some(old), Some(new)) = (settings, &change.old, &change.new) else { return Ok(None) };
    let Ok(mut doc) = serde_json::from_str::<Value>(text) else { return Ok(None) };
    let table = (old.schema.as_str(), old.table.as_str());
    let renamed: Vec<(&str, &str, i16)> = new
        .columns
        .iter()
        .filter_map(|c| {
            old.columns
                .iter()
                .find(|o| o.attnum == c.attnum && o.name != c.name)
                .map(|o| (o.name.as_str(), c.name.as_str(), c.attnum))
        })
        .collect();
    let mut changed = false;
    // Through a placeholder no identifier can be (NUL), so that swapped names do not collide.
    let placeholder = |attnum: i16| format!("\u{0}trempy:{attnum}");
    for (from, _, attnum) in &renamed {
        changed |= renames::follow_column_rename(&mut doc, table, from, &placeholder(*attnum));
    }
    for (_, to, attnum) in &renamed {
        renames::follow_column_rename(&mut doc, table, &placeholder(*attnum), to);
    }
    if (old.schema.as_str(), old.table.as_str()) != (new.schema.as_str(), new.table.as_str()) {
        changed |= renames::follow_table_rename(&mut doc, table, (&new.schema, &new.table));
    }
    if !changed {
        return Ok(None);
    }
    let text = doc.to_string();
    let parsed = TaskSettings::parse(&text).map_err(|problems| {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        Error::new(
            ErrorKind::Rules,
            format!(
                "the task's settings, with the renames of {} applied, are not valid any more: {}. Fix them at the source with trempy.update_task: \
                 the applier takes the new settings from behind this message and applies it under them",
                display(&(new.schema.clone(), new.table.clone())),
                list.join("; ")
            ),
        )
    })?;
    Ok(Some((text, parsed)))
}

/// The target table's side of a source schema change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The target table before the change, when the old shape is known.
    pub(crate) old: Option<Name>,
    /// After it; `None` when the source table was dropped.
    pub(crate) new: Option<Name>,
    /// The steps the target table takes, in target names.
    pub(crate) steps: Vec<Step>,
    /// How the change's backfills reach the target table, when it has backfilled columns.
    pub(crate) backfill: Option<BackfillPlan>,
}

impl Target {
    /// The target tables the steps touch.
    pub(crate) fn names(&self) -> Vec<Name> {
        let mut names: Vec<Name> = self.old.iter().chain(self.new.iter()).cloned().collect();
        names.dedup();
        names
    }
}

/// Synthetic numbers for target columns that copy no source column (created by the rules, the
/// SCD2 columns): matched by name between the old and the new target shape.
struct Synthetic(HashMap<String, i16>);

impl Synthetic {
    fn attnum(&mut self, name: &str) -> i16 {
        let next = i16::MAX - i16::try_from(self.0.len()).unwrap_or(i16::MAX);
        *self.0.entry(name.to_owned()).or_insert(next)
    }
}

/// A compiled source shape: the target relation and, per target column, its source `attnum`;
/// with the source columns the rules copy unchanged, and whether a filter applies.
fn target_shape(
    rel: u32,
    source: &Shape,
    settings: Option<&TaskSettings>,
    synthetic: &mut Synthetic,
) -> Result<(Shape, Vec<i16>, bool), Error> {
    let (filter, plan, target) = rules::compile(settings, &relation(rel, source))?;
    let verbatim = (0..target.columns.len())
        .filter_map(|i| plan.copied_verbatim(i))
        .filter_map(|s| source.columns.get(s))
        .map(|c| c.attnum)
        .collect();
    let columns = target
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let attnum =
                plan.columns.get(i).and_then(|p| p.source).and_then(|s| source.columns.get(s)).map(|s| s.attnum);
            ShapeColumn {
                attnum: attnum.unwrap_or_else(|| synthetic.attnum(&c.name)),
                name: c.name.clone(),
                type_name: c.type_name.clone(),
                type_oid: c.type_oid,
                key: c.key,
                not_null: c.not_null,
                create_type: c.create_type.clone(),
            }
        })
        .collect();
    Ok((Shape { schema: target.schema, table: target.table, columns }, verbatim, filter.is_some()))
}

/// The target table's steps: the old shape compiled under the settings `before` the change, the
/// new one under the settings `after` it (renames followed). The new shape must fit the rules
/// (else [`ErrorKind::Rules`], naming them); an old shape that does not fit is taken as unknown
/// (every column is then reconciled by name).
pub(crate) fn target(
    change: &SchemaChange,
    before: Option<&TaskSettings>,
    after: Option<&TaskSettings>,
) -> Result<Target, Error> {
    let mut synthetic = Synthetic(HashMap::new());
    let old = change
        .old
        .as_ref()
        .and_then(|shape| target_shape(change.rel, shape, before, &mut synthetic).ok())
        .map(|(shape, _, _)| shape);
    let old_name = old
        .as_ref()
        .map(|s| (s.schema.clone(), s.table.clone()))
        .or_else(|| change.old.as_ref().map(|s| (s.schema.clone(), s.table.clone())));
    let Some(source_new) = &change.new else {
        return Ok(Target { old: old_name, new: None, steps: vec![Step::DropTable], backfill: None });
    };
    let (new, verbatim, filtered) = target_shape(change.rel, source_new, after, &mut synthetic)?;
    // An added column's fill is the target's only when the rules copy the column unchanged.
    let mut rewritten = change.rewritten.clone();
    let mut fills = Vec::new();
    for fill in &change.fills {
        let copied = new
            .columns
            .iter()
            .find(|c| c.attnum == fill.attnum)
            .zip(source_new.columns.iter().find(|c| c.attnum == fill.attnum));
        match copied {
            Some((t, s)) if t.type_name == s.type_name => fills.push(fill.clone()),
            Some(_) if fill.value.is_some() => rewritten.push(fill.attnum),
            _ => {}
        }
    }
    // Backfilled values reach the target when the rules copy their columns, and the key that
    // finds the rows, unchanged; otherwise they cannot be derived there.
    let copied =
        |attnum: i16| verbatim.contains(&attnum).then(|| new.columns.iter().find(|c| c.attnum == attnum)).flatten();
    let source_key: Vec<&ShapeColumn> = source_new.columns.iter().filter(|c| c.key).collect();
    let key: Option<Vec<BackfillColumn>> =
        source_key.iter().map(|s| copied(s.attnum).map(|t| BackfillColumn::new(s, t))).collect();
    let scd2 = rules::scd2_columns(after);
    let mut backfilled = Vec::new();
    let mut columns = Vec::new();
    for &attnum in &change.backfilled {
        let source = source_new.columns.iter().find(|c| c.attnum == attnum);
        match (source, copied(attnum), &key) {
            (Some(s), Some(t), Some(_)) => {
                backfilled.push(attnum);
                columns.push(BackfillColumn::new(s, t));
            }
            _ if new.columns.iter().any(|c| c.attnum == attnum) => rewritten.push(attnum),
            _ => {} // not replicated to the target
        }
    }
    let not_null = if scd2.is_some() {
        Vec::new()
    } else {
        columns.iter().filter(|c| c.not_null).map(|c| c.target.clone()).collect()
    };
    let new_name = (new.schema.clone(), new.table.clone());
    let mut unreplicated = change.unreplicated.clone();
    let backfill = if change.attached.is_empty() {
        match key {
            Some(key) if !columns.is_empty() => Some(BackfillPlan {
                table: new_name.clone(),
                key,
                columns,
                current: scd2.map(|s| s.current),
                not_null,
                insert: false,
            }),
            _ => None,
        }
    } else {
        // Rows of attached partitions are inserted as they are: only into a target that takes
        // every column unchanged, unfiltered, outside SCD2 (else the task halts on them).
        let every: Option<Vec<BackfillColumn>> = source_new
            .columns
            .iter()
            .filter(|c| !c.key)
            .map(|s| copied(s.attnum).map(|t| BackfillColumn::new(s, t)))
            .collect();
        match (key, every) {
            (Some(key), Some(columns))
                if !filtered && scd2.is_none() && new.columns.len() == source_new.columns.len() =>
            {
                Some(BackfillPlan {
                    table: new_name.clone(),
                    key,
                    columns,
                    current: None,
                    not_null: Vec::new(),
                    insert: true,
                })
            }
            _ => {
                unreplicated.extend(change.attached.iter().cloned());
                None
            }
        }
    };
    let target_change = SchemaChange {
        rel: change.rel,
        tag: change.tag.clone(),
        old,
        new: Some(new),
        fills,
        rewritten,
        backfilled,
        unreplicated,
        attached: Vec::new(),
    };
    Ok(Target { old: old_name, new: Some(new_name), steps: schema::diff(&target_change), backfill })
}

/// One column of a backfill: its source name, and its target name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BackfillColumn {
    source: String,
    target: String,
    target_type: String,
    not_null: bool,
}

impl BackfillColumn {
    fn new(source: &ShapeColumn, target: &ShapeColumn) -> Self {
        Self {
            source: source.name.clone(),
            target: target.name.clone(),
            target_type: target.target_type().to_owned(),
            not_null: target.not_null,
        }
    }
}

/// How the [`Backfill`]s after a schema change reach the target table: each row is found by its
/// key and its backfilled columns set (only the current version in SCD2 mode); after the last
/// batch the columns take their NOT NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BackfillPlan {
    table: Name,
    key: Vec<BackfillColumn>,
    columns: Vec<BackfillColumn>,
    /// The SCD2 "current version" column, in SCD2 mode.
    current: Option<String>,
    /// Target columns to make NOT NULL after the last batch.
    not_null: Vec<String>,
    /// The rows are new (an attached partition's): inserted, or set where the key exists.
    insert: bool,
}

impl BackfillPlan {
    /// The plan without its DDL (the NOT NULL after the last batch), for a target the task does
    /// not manage.
    pub(crate) fn without_ddl(mut self) -> Self {
        self.not_null.clear();
        self
    }

    /// The statement that applies one batch: one `text[]` parameter per key column, then per
    /// column, in the plan's order. Names are quoted, types checked.
    fn statement(&self) -> Result<String, Error> {
        let mut aliases = Vec::new();
        let mut params = Vec::new();
        for (i, _) in self.key.iter().chain(self.columns.iter()).enumerate() {
            aliases.push(format!("v{i}"));
            params.push(format!("pg_catalog.unnest(${}::text[])", i + 1));
        }
        let cast = |c: &BackfillColumn| {
            typename::check_type(&c.target_type)
                .map(|()| c.target_type.clone())
                .map_err(|m| Error::new(ErrorKind::Schema, format!("backfill of column {}: the type {m}", c.target)))
        };
        let table = qualified(&self.table.0, &self.table.1);
        if self.insert {
            let mut names = Vec::new();
            let mut values = Vec::new();
            for (i, c) in self.key.iter().chain(self.columns.iter()).enumerate() {
                names.push(quote_ident(&c.target));
                values.push(format!("v.v{i}::{}", cast(c)?));
            }
            let key: Vec<String> = self.key.iter().map(|c| quote_ident(&c.target)).collect();
            let update: Vec<String> =
                self.columns.iter().map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(&c.target))).collect();
            let action =
                if update.is_empty() { "NOTHING".to_owned() } else { format!("UPDATE SET {}", update.join(", ")) };
            return Ok(format!(
                "INSERT INTO {table} ({}) SELECT {} FROM ROWS FROM ({}) AS v({}) ON CONFLICT ({}) DO {action}",
                names.join(", "),
                values.join(", "),
                params.join(", "),
                aliases.join(", "),
                key.join(", ")
            ));
        }
        let mut set = Vec::new();
        for (i, c) in self.columns.iter().enumerate() {
            set.push(format!("{} = v.v{}::{}", quote_ident(&c.target), self.key.len() + i, cast(c)?));
        }
        let mut matches = Vec::new();
        for (i, c) in self.key.iter().enumerate() {
            matches.push(format!("t.{} = v.v{i}::{}", quote_ident(&c.target), cast(c)?));
        }
        if let Some(current) = &self.current {
            matches.push(format!("t.{}", quote_ident(current)));
        }
        Ok(format!(
            "UPDATE {table} AS t SET {} FROM ROWS FROM ({}) AS v({}) WHERE {}",
            set.join(", "),
            params.join(", "),
            aliases.join(", "),
            matches.join(" AND ")
        ))
    }

    /// Applies one batch in the open transaction; returns the rows it set. After the last one,
    /// the columns take their NOT NULL. A target table that is not there (the session's
    /// `catalog` knows) gets nothing.
    pub(crate) async fn apply(
        &self,
        client: &Client,
        catalog: &mut Catalog,
        backfill: &Backfill,
    ) -> Result<u64, Error> {
        let halt =
            |what: String| Error::new(ErrorKind::Schema, format!("backfill of {}: {what}", display(&self.table)));
        let position =
            |names: &[String], name: &str, offset: usize| names.iter().position(|n| n == name).map(|i| i + offset);
        let mut indexes = Vec::new();
        for c in &self.key {
            indexes.push(
                position(&backfill.key, &c.source, 0)
                    .ok_or_else(|| halt(format!("the source sent no key column {}", c.source)))?,
            );
        }
        for c in &self.columns {
            indexes.push(
                position(&backfill.columns, &c.source, backfill.key.len())
                    .ok_or_else(|| halt(format!("the source sent no column {}", c.source)))?,
            );
        }
        if catalog.columns(client, &self.table.0, &self.table.1).await?.is_none() {
            return Ok(0);
        }
        let table = display(&self.table);
        let mut set = 0;
        if !backfill.rows.is_empty() {
            let arrays: Vec<Vec<Option<&str>>> = indexes
                .iter()
                .map(|&i| backfill.rows.iter().map(|r| r.get(i).and_then(|v| v.as_deref())).collect())
                .collect();
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                arrays.iter().map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
            set = client
                .execute(self.statement()?.as_str(), &params)
                .await
                .map_err(|e| halt_on_target(&e, |err| format!("backfill of {table}: {err}")))?;
        }
        if backfill.last {
            for column in &self.not_null {
                let sql = format!(
                    "ALTER TABLE {} ALTER COLUMN {} SET NOT NULL",
                    qualified(&self.table.0, &self.table.1),
                    quote_ident(column)
                );
                client.execute(sql.as_str(), &[]).await.map_err(|e| {
                    halt_on_target(&e, |err| format!("backfill of {table}: `{sql}` failed on the target: {err}"))
                })?;
            }
        }
        Ok(set)
    }
}

/// A target table as it is now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Actual {
    /// Name, type (`format_type`), NOT NULL; in column order.
    pub(crate) columns: Vec<(String, String, bool)>,
    /// The primary key's constraint name and columns.
    pub(crate) primary_key: Option<(String, Vec<String>)>,
    /// The column lists of every plain unique index (the primary key's included).
    pub(crate) unique: Vec<Vec<String>>,
}

impl Actual {
    fn column(&self, name: &str) -> Option<&(String, String, bool)> {
        self.columns.iter().find(|c| c.0 == name)
    }
}

/// One statement for the target. `value` is its only parameter (`$1`, text), when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Statement {
    pub(crate) sql: String,
    pub(crate) value: Option<String>,
}

impl Statement {
    fn new(sql: String) -> Self {
        Self { sql, value: None }
    }

    /// The statement as a DBA runs it: the parameter as a quoted literal.
    pub(crate) fn for_dba(&self) -> String {
        match &self.value {
            Some(v) => self.sql.replace("$1::text", &format!("'{}'", v.replace('\'', "''"))),
            None => self.sql.clone(),
        }
    }
}

/// What one step comes to on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// A statement to run.
    Run(Statement),
    /// Nothing to do: the target is there already (or the step has no effect on it).
    Already(String),
    /// The target cannot follow by itself: why.
    Cannot(String),
}

fn sets_equal(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

/// The actions that take the target from `actual` (per table name) through `target`'s steps.
/// `scd2` holds the SCD2 column names in `scd2` mode. Pure: decided before anything runs.
pub(crate) fn reconcile(target: &Target, actual: &HashMap<Name, Actual>, scd2: Option<&Scd2Columns>) -> Vec<Action> {
    let mut out = Vec::new();
    let mut name = target.old.clone().or_else(|| target.new.clone());
    let mut table = name.as_ref().and_then(|n| actual.get(n)).cloned();
    let desired_key = target.steps.iter().find_map(|s| match s {
        Step::Key { columns } => Some(columns.clone()),
        _ => None,
    });
    let mut missing_noted = false;
    for step in &target.steps {
        let Some(current) = name.clone() else { break };
        let t = qualified(&current.0, &current.1);
        if let Step::RenameTable { from, to } = step {
            match (actual.get(from), actual.get(to)) {
                (Some(a), None) => {
                    if from.0 != to.0 {
                        out.push(Action::Run(Statement::new(format!(
                            "CREATE SCHEMA IF NOT EXISTS {}",
                            quote_ident(&to.0)
                        ))));
                        out.push(Action::Run(Statement::new(format!(
                            "ALTER TABLE {} SET SCHEMA {}",
                            qualified(&from.0, &from.1),
                            quote_ident(&to.0)
                        ))));
                    }
                    if from.1 != to.1 {
                        out.push(Action::Run(Statement::new(format!(
                            "ALTER TABLE {} RENAME TO {}",
                            qualified(&to.0, &from.1),
                            quote_ident(&to.1)
                        ))));
                    }
                    table = Some(a.clone());
                }
                (from_there, Some(a)) => {
                    let mut note = format!("table {} exists", display(to));
                    if from_there.is_some() {
                        let _ = write!(note, " (and {} too: kept as it is)", display(from));
                    }
                    out.push(Action::Already(note));
                    table = Some(a.clone());
                }
                (None, None) => table = None,
            }
            name = Some(to.clone());
            continue;
        }
        if let Step::Unreplicated { partitions } = step {
            out.push(Action::Cannot(format!(
                "{} attached as partition{} of the source table while holding rows, which never passed through the stream",
                partitions.join(", "),
                if partitions.len() == 1 { "" } else { "s" }
            )));
            continue;
        }
        if let Step::DropTable = step {
            out.push(Action::Already(format!(
                "source table dropped: target table {} kept, no longer applied",
                display(&current)
            )));
            continue;
        }
        let Some(sim) = table.as_mut() else {
            if !missing_noted {
                out.push(Action::Already(format!(
                    "target table {} does not exist: it takes the new shape when it is created",
                    display(&current)
                )));
                missing_noted = true;
            }
            continue;
        };
        let checked = |ty: &str, column: &str| {
            typename::check_type(ty)
                .map(|()| ty.to_owned())
                .map_err(|m| Action::Cannot(format!("the type of column {column} {m}")))
        };
        match step {
            Step::RenameColumn { from, to } => match (sim.column(from).is_some(), sim.column(to).is_some()) {
                (true, false) => {
                    out.push(Action::Run(Statement::new(format!(
                        "ALTER TABLE {t} RENAME COLUMN {} TO {}",
                        quote_ident(from),
                        quote_ident(to)
                    ))));
                    for c in &mut sim.columns {
                        if c.0 == *from {
                            c.0.clone_from(to);
                        }
                    }
                    let rename =
                        |cols: &mut Vec<String>| cols.iter_mut().filter(|c| *c == from).for_each(|c| c.clone_from(to));
                    if let Some((_, cols)) = sim.primary_key.as_mut() {
                        rename(cols);
                    }
                    sim.unique.iter_mut().for_each(rename);
                }
                (false, true) => out.push(Action::Already(format!("column {to} exists"))),
                (true, true) => out.push(Action::Cannot(format!(
                    "column {from} was renamed to {to} at the source, but the target table {} has both",
                    display(&current)
                ))),
                (false, false) => out.push(Action::Cannot(format!(
                    "column {from} was renamed to {to} at the source, but the target table {} has neither",
                    display(&current)
                ))),
            },
            Step::DropColumn { name: column } => {
                if scd2.is_some_and(|s| [&s.start, &s.end, &s.current].contains(&column)) {
                    out.push(Action::Already(format!("SCD2 column {column} kept")));
                } else if sim.column(column).is_some() {
                    out.push(Action::Run(Statement::new(format!(
                        "ALTER TABLE {t} DROP COLUMN {}",
                        quote_ident(column)
                    ))));
                    sim.columns.retain(|c| c.0 != *column);
                    if sim.primary_key.as_ref().is_some_and(|(_, cols)| cols.contains(column)) {
                        sim.primary_key = None;
                    }
                    sim.unique.retain(|cols| !cols.contains(column));
                } else {
                    out.push(Action::Already(format!("column {column} is not there")));
                }
            }
            Step::AlterType { column, conversion } => {
                let ty = match checked(column.target_type(), &column.name) {
                    Ok(ty) => ty,
                    Err(cannot) => {
                        out.push(cannot);
                        continue;
                    }
                };
                match sim.column(&column.name).cloned() {
                    None => out.push(Action::Cannot(format!("column {} changed type at the source, but the target table {} does not have it", column.name, display(&current)))),
                    Some((_, now, _)) if now == ty => out.push(Action::Already(format!("column {} is {ty}", column.name))),
                    // SCD2: closed versions keep their values, cast; the current ones are backfilled.
                    Some(_) if *conversion == Conversion::Cast || (*conversion == Conversion::Backfilled && scd2.is_some()) => {
                        let c = quote_ident(&column.name);
                        out.push(Action::Run(Statement::new(format!("ALTER TABLE {t} ALTER COLUMN {c} TYPE {ty} USING {c}::{ty}"))));
                        sim.columns.iter_mut().filter(|x| x.0 == column.name).for_each(|x| x.1.clone_from(&ty));
                    }
                    // The values follow in backfills: the column is emptied (and nullable) until then.
                    Some((_, _, not_null)) if *conversion == Conversion::Backfilled => {
                        let c = quote_ident(&column.name);
                        if not_null {
                            out.push(Action::Run(Statement::new(format!("ALTER TABLE {t} ALTER COLUMN {c} DROP NOT NULL"))));
                        }
                        out.push(Action::Run(Statement::new(format!("ALTER TABLE {t} ALTER COLUMN {c} TYPE {ty} USING NULL"))));
                        sim.columns.iter_mut().filter(|x| x.0 == column.name).for_each(|x| {
                            x.1.clone_from(&ty);
                            x.2 = false;
                        });
                    }
                    Some(_) => out.push(Action::Cannot(format!(
                        "column {} was converted to {ty} at the source with ALTER COLUMN … TYPE … USING an expression: the source sends the new values only for a table \
                         with a key (not part of it), and the target takes them only into a column its rules copy unchanged",
                        column.name
                    ))),
                }
            }
            Step::AddColumn { column, fill } => {
                if let Some(existing) = sim.column(&column.name) {
                    out.push(Action::Already(format!("column {} exists ({})", column.name, existing.1)));
                    continue;
                }
                let ty = match checked(column.target_type(), &column.name) {
                    Ok(ty) => ty,
                    Err(cannot) => {
                        out.push(cannot);
                        continue;
                    }
                };
                let c = quote_ident(&column.name);
                match fill {
                    Existing::Unknown => {
                        out.push(Action::Cannot(format!(
                            "column {} was added at the source with a volatile DEFAULT (or as an identity column): each existing row got its own value, which the source \
                             sends only for a table with a key and the target takes only into a column its rules copy unchanged",
                            column.name
                        )));
                        continue;
                    }
                    Existing::Null => {
                        out.push(Action::Run(Statement::new(format!("ALTER TABLE {t} ADD COLUMN {c} {ty}"))))
                    }
                    // The values follow in backfills, which then set NOT NULL.
                    Existing::Backfilled => {
                        out.push(Action::Run(Statement::new(format!("ALTER TABLE {t} ADD COLUMN {c} {ty}"))));
                        sim.columns.push((column.name.clone(), ty, false));
                        continue;
                    }
                    Existing::Value(value) => {
                        out.push(Action::Run(Statement::new(format!("ALTER TABLE {t} ADD COLUMN {c} {ty}"))));
                        let only_current =
                            scd2.map(|s| format!(" WHERE {}", quote_ident(&s.current))).unwrap_or_default();
                        out.push(Action::Run(Statement {
                            sql: format!("UPDATE {t} SET {c} = $1::text::{ty}{only_current}"),
                            value: Some(value.clone()),
                        }));
                    }
                }
                if column.not_null && scd2.is_none() {
                    out.push(Action::Run(Statement::new(format!("ALTER TABLE {t} ALTER COLUMN {c} SET NOT NULL"))));
                }
                sim.columns.push((column.name.clone(), ty, column.not_null && scd2.is_none()));
            }
            Step::NotNull { name: column, not_null } => {
                if let Some(key) = &desired_key {
                    drop_key(&mut out, sim, key, &t);
                }
                let key_column = desired_key.as_ref().is_some_and(|k| k.contains(column))
                    || sim.primary_key.as_ref().is_some_and(|(_, k)| k.contains(column));
                match sim.column(column).map(|c| c.2) {
                    None => out.push(Action::Cannot(format!(
                        "column {column} changed NOT NULL at the source, but the target table {} does not have it",
                        display(&current)
                    ))),
                    Some(now) if now == *not_null => out.push(Action::Already(format!(
                        "column {column} is {}",
                        if now { "NOT NULL" } else { "nullable" }
                    ))),
                    Some(_) if *not_null && scd2.is_some() && !key_column => out.push(Action::Already(format!(
                        "history column {column} kept nullable (closed versions may hold NULL)"
                    ))),
                    Some(_) => {
                        let what = if *not_null { "SET" } else { "DROP" };
                        out.push(Action::Run(Statement::new(format!(
                            "ALTER TABLE {t} ALTER COLUMN {} {what} NOT NULL",
                            quote_ident(column)
                        ))));
                        sim.columns.iter_mut().filter(|c| c.0 == *column).for_each(|c| c.2 = *not_null);
                    }
                }
            }
            Step::Key { columns } => {
                if sim.primary_key.as_ref().is_some_and(|(_, k)| sets_equal(k, columns)) {
                    out.push(Action::Already(format!("primary key ({}) exists", columns.join(", "))));
                    continue;
                }
                drop_key(&mut out, sim, columns, &t);
                if columns.is_empty() {
                    continue;
                }
                if sim.unique.iter().any(|u| sets_equal(u, columns)) {
                    out.push(Action::Already(format!("a unique index on ({}) exists", columns.join(", "))));
                } else {
                    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
                    out.push(Action::Run(Statement::new(format!(
                        "ALTER TABLE {t} ADD PRIMARY KEY ({})",
                        cols.join(", ")
                    ))));
                    sim.primary_key = Some((String::new(), columns.clone()));
                    sim.unique.push(columns.clone());
                }
            }
            Step::RenameTable { .. } | Step::DropTable | Step::Unreplicated { .. } => {}
        }
    }
    out
}

/// Drops the primary key when it is not `desired` (before NOT NULL changes, which PostgreSQL
/// refuses on a primary key column, and before the new key is added).
fn drop_key(out: &mut Vec<Action>, sim: &mut Actual, desired: &[String], t: &str) {
    if let Some((constraint, cols)) = &sim.primary_key
        && !sets_equal(cols, desired)
        && !constraint.is_empty()
    {
        out.push(Action::Run(Statement::new(format!("ALTER TABLE {t} DROP CONSTRAINT {}", quote_ident(constraint)))));
        let cols = cols.clone();
        sim.primary_key = None;
        sim.unique.retain(|u| !sets_equal(u, &cols));
    }
}

/// Reads the target tables as they are now (tables that do not exist are left out).
pub(crate) async fn read(client: &Client, names: &[Name]) -> Result<HashMap<Name, Actual>, Error> {
    let mut out = HashMap::new();
    for name in names {
        let table = qualified(&name.0, &name.1);
        let exists: bool = client.query_one("SELECT pg_catalog.to_regclass($1) IS NOT NULL", &[&table]).await?.get(0);
        if !exists {
            continue;
        }
        let columns = client
            .query(
                "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull
                   FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
                  ORDER BY a.attnum",
                &[&table],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let mut actual = Actual { columns, ..Actual::default() };
        let indexes = client
            .query(
                "SELECT (SELECT c.conname::text FROM pg_catalog.pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid AND c.contype = 'p'),
                        ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(n, o)
                                JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o)
                   FROM pg_catalog.pg_index i
                  WHERE i.indrelid = pg_catalog.to_regclass($1) AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL",
                &[&table],
            )
            .await?;
        for row in indexes {
            let (constraint, cols): (Option<String>, Vec<String>) = (row.get(0), row.get(1));
            if let Some(constraint) = constraint {
                actual.primary_key = Some((constraint, cols.clone()));
            }
            actual.unique.push(cols);
        }
        out.insert(name.clone(), actual);
    }
    Ok(out)
}

/// How the task stands towards its target tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Management {
    /// `create_table_if_not_exists`: the applier changes them.
    Managed,
    /// The DBA does.
    Unmanaged,
}

/// Runs the actions (managed) or halts naming them (unmanaged); halts when anything cannot be
/// derived. `what` names the change for messages (`public.t at 0/1A2B`).
pub(crate) async fn execute(
    client: &Client,
    actions: &[Action],
    management: Management,
    what: &str,
) -> Result<(), Error> {
    if let Some(halt) = halt(actions, management, what) {
        return Err(halt);
    }
    for action in actions {
        if let Action::Run(statement) = action {
            let result = match &statement.value {
                Some(value) => client.execute(statement.sql.as_str(), &[value]).await,
                None => client.execute(statement.sql.as_str(), &[]).await,
            };
            result.map_err(|e| halt_on_target(&e, |err| format!("source schema change of {what}: `{}` failed on the target: {err}; fix the target table, the applier tries again", statement.sql)))?;
        }
    }
    Ok(())
}

/// A statement of a schema change (or of its backfill) the target refused: a transient error is
/// retried as it is, any other halts the task ([`ErrorKind::Schema`], with its SQLSTATE) with the
/// message `halt` writes around it.
fn halt_on_target(e: &tokio_postgres::Error, halt: impl FnOnce(&Error) -> String) -> Error {
    let err = Error::target(e);
    if matches!(policy::reaction(&err, 0), Reaction::Retry(_)) {
        return err;
    }
    let stopped = Error::new(ErrorKind::Schema, halt(&err));
    match err.sqlstate() {
        Some(code) => stopped.with_sqlstate(code),
        None => stopped,
    }
}

/// The halt, if the actions need one (pure: see [`execute`]).
pub(crate) fn halt(actions: &[Action], management: Management, what: &str) -> Option<Error> {
    let cannot: Vec<&str> =
        actions.iter().filter_map(|a| if let Action::Cannot(why) = a { Some(why.as_str()) } else { None }).collect();
    let statements: Vec<String> = actions
        .iter()
        .filter_map(|a| if let Action::Run(s) = a { Some(format!("{};", s.for_dba())) } else { None })
        .collect();
    let reload = "Remedy: reload the task at the source (trempy.update_task(name, settings with \"start_mode\": \"reload\"; with \
                  \"full_load_settings\": {\"recreate_table_if_exists\": true} when the task creates its tables) so that the table is copied again in its new shape; \
                  the applier finds the reload behind this message and starts it";
    match management {
        Management::Managed if cannot.is_empty() => None,
        Management::Managed => Some(Error::new(
            ErrorKind::Schema,
            format!("source schema change of {what} cannot be followed on the target: {}. {reload}", cannot.join("; ")),
        )),
        Management::Unmanaged if cannot.is_empty() && statements.is_empty() => None,
        Management::Unmanaged => {
            let mut message = format!(
                "source schema change of {what}: the task does not manage its target tables (create_table_if_not_exists is not true)"
            );
            if !statements.is_empty() {
                let _ = write!(message, ", so run on the target: {}", statements.join(" "));
            }
            if !cannot.is_empty() {
                let _ = write!(
                    message,
                    "; and, which no statement derives: {} (fill those values yourself, or {})",
                    cannot.join("; "),
                    reload.trim_start_matches("Remedy: ")
                );
            }
            message.push_str(". The applier tries again and goes on once the target has the new shape");
            Some(Error::new(ErrorKind::Schema, message))
        }
    }
}

/// The steps as recorded and reported: statements run, and what was there already.
pub(crate) fn steps_text(actions: &[Action]) -> String {
    if actions.is_empty() {
        return "no change on the target".to_owned();
    }
    let parts: Vec<String> = actions
        .iter()
        .map(|a| match a {
            Action::Run(s) => s.for_dba(),
            Action::Already(what) => format!("already: {what}"),
            Action::Cannot(why) => format!("cannot: {why}"),
        })
        .collect();
    parts.join("; ")
}

/// What one applied schema change is recorded as.
pub(crate) struct Record<'a> {
    pub(crate) task: &'a str,
    pub(crate) incarnation: Option<&'a str>,
    pub(crate) commit_lsn: Lsn,
    pub(crate) source: &'a Name,
    pub(crate) target: Option<&'a Name>,
    pub(crate) steps: &'a str,
}

/// Records an applied schema change (inside the open transaction).
pub(crate) async fn record(client: &Client, r: &Record<'_>) -> Result<(), Error> {
    client
        .execute(
            "INSERT INTO trempy.applier_schema_changes (task_name, incarnation, commit_lsn, source_table, target_table, steps) VALUES ($1, $2, $3::text::pg_lsn, $4, $5, $6)",
            &[&r.task, &r.incarnation, &r.commit_lsn.to_string(), &display(r.source), &r.target.map(display), &r.steps],
        )
        .await?;
    Ok(())
}

/// How many schema changes were applied for the task's current incarnation, and the last one
/// (`<commit LSN> <source> -> <target>: <steps>`), for the reports to the source.
pub(crate) async fn recorded(client: &Client, task: &str) -> Result<(u64, Option<String>), Error> {
    let exists: bool = client
        .query_one("SELECT pg_catalog.to_regclass('trempy.applier_schema_changes') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok((0, None));
    }
    let row = client
        .query_one(
            "SELECT count(*), (array_agg(c.commit_lsn::text || ' ' || c.source_table || ' -> ' || coalesce(c.target_table, '-') || ': ' || c.steps ORDER BY c.id DESC))[1]
               FROM trempy.applier_schema_changes c
              WHERE c.task_name = $1 AND c.incarnation IS NOT DISTINCT FROM (SELECT p.incarnation FROM trempy.applier_progress p WHERE p.task_name = $1)",
            &[&task],
        )
        .await?;
    Ok((u64::try_from(row.get::<_, i64>(0)).unwrap_or(0), row.get(1)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use trempy_protocol::schema::Fill;

    use super::*;

    fn col(attnum: i16, name: &str, type_name: &str) -> ShapeColumn {
        ShapeColumn {
            attnum,
            name: name.into(),
            type_name: type_name.into(),
            type_oid: 0,
            key: attnum == 1,
            not_null: attnum == 1,
            create_type: None,
        }
    }

    fn shape(table: &str, columns: Vec<ShapeColumn>) -> Shape {
        Shape { schema: "public".into(), table: table.into(), columns }
    }

    fn change(old: Shape, new: Option<Shape>) -> SchemaChange {
        SchemaChange {
            rel: 7,
            tag: "ALTER TABLE".into(),
            old: Some(old),
            new,
            fills: vec![],
            rewritten: vec![],
            backfilled: vec![],
            unreplicated: vec![],
            attached: vec![],
        }
    }

    fn settings(mode: &str, managed: bool, rules: &str) -> TaskSettings {
        let json = format!(
            r#"{{ "task": {{"task_name": "t", "replication_type": "cdc", "create_table_if_not_exists": {managed}, "cdc_settings": {{"mode": "{mode}"}}}},
                "tables": [{{"schema_name": "public", "table_name": "emp", "priority": 0}}] {rules} }}"#
        );
        TaskSettings::parse(&json).unwrap()
    }

    fn name(table: &str) -> Name {
        ("public".into(), table.into())
    }

    /// The target as the old shape would have created it.
    fn actual(columns: &[(&str, &str, bool)], key: &[&str]) -> Actual {
        let key: Vec<String> = key.iter().map(|k| (*k).to_owned()).collect();
        Actual {
            columns: columns.iter().map(|(n, t, nn)| ((*n).to_owned(), (*t).to_owned(), *nn)).collect(),
            primary_key: (!key.is_empty()).then(|| ("emp_pkey".to_owned(), key.clone())),
            unique: if key.is_empty() { vec![] } else { vec![key] },
        }
    }

    fn sql(actions: &[Action]) -> Vec<String> {
        actions.iter().filter_map(|a| if let Action::Run(s) = a { Some(s.for_dba()) } else { None }).collect()
    }

    fn emp() -> Shape {
        shape("emp", vec![col(1, "id", "integer"), col(2, "name", "text"), col(3, "n", "integer")])
    }

    fn plan(c: &SchemaChange, s: &TaskSettings, target_now: Actual) -> Vec<Action> {
        let t = target(c, Some(s), Some(s)).unwrap();
        let mut actuals = HashMap::new();
        actuals.insert(t.old.clone().unwrap(), target_now);
        let scd2 = (rules::mode(Some(s)) == crate::apply::Mode::Scd2).then(|| s.scd2_columns());
        reconcile(&t, &actuals, scd2.as_ref())
    }

    fn emp_now() -> Actual {
        actual(&[("id", "integer", true), ("name", "text", false), ("n", "integer", false)], &["id"])
    }

    #[test]
    fn each_step_becomes_one_quoted_statement() {
        let s = settings("upsert", true, "");
        let mut new = shape(
            "emp",
            vec![
                col(1, "id", "bigint"),
                col(2, "full name", "text"),
                col(4, "c", "integer"),
                col(5, "d", "numeric(12,2)"),
            ],
        );
        new.columns[2].not_null = true;
        let mut c = change(emp(), Some(new));
        c.fills = vec![Fill { attnum: 4, value: Some("it's 7".into()) }];
        assert_eq!(
            sql(&plan(&c, &s, emp_now())),
            [
                r#"ALTER TABLE "public"."emp" RENAME COLUMN "name" TO "full name""#,
                r#"ALTER TABLE "public"."emp" DROP COLUMN "n""#,
                r#"ALTER TABLE "public"."emp" ALTER COLUMN "id" TYPE bigint USING "id"::bigint"#,
                r#"ALTER TABLE "public"."emp" ADD COLUMN "c" integer"#,
                r#"UPDATE "public"."emp" SET "c" = 'it''s 7'::integer"#,
                r#"ALTER TABLE "public"."emp" ALTER COLUMN "c" SET NOT NULL"#,
                r#"ALTER TABLE "public"."emp" ADD COLUMN "d" numeric(12,2)"#,
            ]
        );
        // the fill is a parameter, never SQL text
        let actions = plan(&c, &s, emp_now());
        let update = actions
            .iter()
            .find_map(
                |a| if let Action::Run(s) = a { s.value.as_ref().map(|v| (s.sql.clone(), v.clone())) } else { None },
            )
            .unwrap();
        assert_eq!(update, (r#"UPDATE "public"."emp" SET "c" = $1::text::integer"#.to_owned(), "it's 7".to_owned()));
    }

    #[test]
    fn steps_already_done_on_the_target_are_skipped() {
        let s = settings("upsert", true, "");
        let new = shape("emp", vec![col(1, "id", "integer"), col(2, "full_name", "text"), col(4, "c", "integer")]);
        let c = change(emp(), Some(new));
        // a re-copy got there first: renamed, dropped and added already
        let there = actual(&[("id", "integer", true), ("full_name", "text", false), ("c", "integer", false)], &["id"]);
        let actions = plan(&c, &s, there);
        assert!(sql(&actions).is_empty(), "{actions:?}");
        assert!(actions.iter().all(|a| matches!(a, Action::Already(_))), "{actions:?}");
        assert!(halt(&actions, Management::Unmanaged, "x").is_none());
        assert!(halt(&actions, Management::Managed, "x").is_none());
    }

    #[test]
    fn what_cannot_be_derived_halts_with_the_remedy() {
        let s = settings("upsert", true, "");
        let new = shape(
            "emp",
            vec![
                col(1, "id", "integer"),
                col(2, "name", "text"),
                col(3, "n", "bigint"),
                col(4, "at", "timestamp without time zone"),
            ],
        );
        let mut c = change(emp(), Some(new));
        c.rewritten = vec![3, 4];
        let actions = plan(&c, &s, emp_now());
        assert_eq!(actions.iter().filter(|a| matches!(a, Action::Cannot(_))).count(), 2, "{actions:?}");
        let err = halt(&actions, Management::Managed, "public.emp at 0/10").unwrap();
        assert_eq!(err.kind(), ErrorKind::Schema);
        for needle in
            ["public.emp at 0/10", "USING", "volatile DEFAULT", "\"start_mode\": \"reload\"", "trempy.update_task"]
        {
            assert!(err.message().contains(needle), "{needle}: {}", err.message());
        }
        // a type changed with USING that the target already has: nothing to derive
        let there = actual(
            &[
                ("id", "integer", true),
                ("name", "text", false),
                ("n", "bigint", false),
                ("at", "timestamp without time zone", false),
            ],
            &["id"],
        );
        assert!(halt(&plan(&c, &s, there), Management::Managed, "x").is_none());
    }

    #[test]
    fn an_unmanaged_target_halts_naming_the_statements_until_they_ran() {
        let s = settings("upsert", false, "");
        let new = shape(
            "emp",
            vec![col(1, "id", "integer"), col(2, "name", "text"), col(3, "n", "integer"), col(4, "c", "integer")],
        );
        let mut c = change(emp(), Some(new.clone()));
        c.fills = vec![Fill { attnum: 4, value: Some("7".into()) }];
        let actions = plan(&c, &s, emp_now());
        let err = halt(&actions, Management::Unmanaged, "public.emp at 0/10").unwrap();
        assert_eq!(err.kind(), ErrorKind::Schema);
        assert!(
            err.message().contains(r#"run on the target: ALTER TABLE "public"."emp" ADD COLUMN "c" integer; UPDATE "public"."emp" SET "c" = '7'::integer;"#),
            "{}",
            err.message()
        );
        let done = actual(
            &[("id", "integer", true), ("name", "text", false), ("n", "integer", false), ("c", "integer", false)],
            &["id"],
        );
        assert!(halt(&plan(&c, &s, done), Management::Unmanaged, "x").is_none());
    }

    #[test]
    fn table_renames_and_set_schema() {
        let s = settings("upsert", true, "");
        let mut new = emp();
        new.schema = "hr".into();
        new.table = "staff".into();
        let c = change(emp(), Some(new));
        let t = target(&c, Some(&s), Some(&s)).unwrap();
        assert_eq!((t.old.clone(), t.new.clone()), (Some(name("emp")), Some(("hr".into(), "staff".into()))));
        let mut actuals = HashMap::new();
        actuals.insert(name("emp"), emp_now());
        assert_eq!(
            sql(&reconcile(&t, &actuals, None)),
            [
                r#"CREATE SCHEMA IF NOT EXISTS "hr""#,
                r#"ALTER TABLE "public"."emp" SET SCHEMA "hr""#,
                r#"ALTER TABLE "hr"."emp" RENAME TO "staff""#
            ]
        );
        // renamed already: nothing to do
        let mut done = HashMap::new();
        done.insert(("hr".to_owned(), "staff".to_owned()), emp_now());
        assert!(sql(&reconcile(&t, &done, None)).is_empty());
    }

    #[test]
    fn key_changes_drop_and_add_the_primary_key() {
        let s = settings("upsert", true, "");
        let mut new = emp();
        new.columns[0].key = false;
        new.columns[0].not_null = false;
        new.columns[2].key = true;
        new.columns[2].not_null = true;
        let actions = plan(&change(emp(), Some(new)), &s, emp_now());
        assert_eq!(
            sql(&actions),
            [
                r#"ALTER TABLE "public"."emp" DROP CONSTRAINT "emp_pkey""#,
                r#"ALTER TABLE "public"."emp" ALTER COLUMN "id" DROP NOT NULL"#,
                r#"ALTER TABLE "public"."emp" ALTER COLUMN "n" SET NOT NULL"#,
                r#"ALTER TABLE "public"."emp" ADD PRIMARY KEY ("n")"#,
            ]
        );
    }

    #[test]
    fn scd2_keeps_history_columns_and_fills_only_current_versions() {
        let s = settings("scd2", true, "");
        let now = actual(
            &[
                ("id", "integer", true),
                ("name", "text", false),
                ("n", "integer", false),
                ("scd_start_date", "timestamp with time zone", true),
                ("scd_end_date", "timestamp with time zone", false),
                ("scd_current", "boolean", true),
            ],
            &["id", "scd_start_date"],
        );
        let mut new = shape(
            "emp",
            vec![col(1, "id", "integer"), col(2, "name", "text"), col(3, "n", "integer"), col(4, "c", "integer")],
        );
        new.columns[1].not_null = true;
        new.columns[3].not_null = true;
        let mut c = change(emp(), Some(new));
        c.fills = vec![Fill { attnum: 4, value: Some("7".into()) }];
        let actions = plan(&c, &s, now.clone());
        assert_eq!(
            sql(&actions),
            [
                r#"ALTER TABLE "public"."emp" ADD COLUMN "c" integer"#,
                r#"UPDATE "public"."emp" SET "c" = '7'::integer WHERE "scd_current""#
            ]
        );
        assert!(
            actions.iter().any(|a| matches!(a, Action::Already(w) if w.contains("history column name kept nullable"))),
            "{actions:?}"
        );
        // a dropped source column goes; the SCD2 columns stay; a key change keeps the start column in the key
        let mut new = shape("emp", vec![col(1, "id", "integer"), col(2, "name", "text")]);
        new.columns[0].key = false;
        new.columns[1].key = true;
        new.columns[1].not_null = true;
        let actions = plan(&change(emp(), Some(new)), &s, now);
        assert_eq!(
            sql(&actions),
            [
                r#"ALTER TABLE "public"."emp" DROP COLUMN "n""#,
                r#"ALTER TABLE "public"."emp" DROP CONSTRAINT "emp_pkey""#,
                // a new key column: NOT NULL in the history too (the key is)
                r#"ALTER TABLE "public"."emp" ALTER COLUMN "name" SET NOT NULL"#,
                r#"ALTER TABLE "public"."emp" ADD PRIMARY KEY ("name", "scd_start_date")"#,
            ]
        );
    }

    /// `n` converted with USING, `at` added with a volatile DEFAULT and NOT NULL: both backfilled.
    fn backfilled_change() -> SchemaChange {
        let mut new = shape(
            "emp",
            vec![
                col(1, "id", "integer"),
                col(2, "name", "text"),
                col(3, "n", "bigint"),
                col(4, "at", "timestamp with time zone"),
            ],
        );
        new.columns[3].not_null = true;
        let mut c = change(emp(), Some(new));
        c.backfilled = vec![3, 4];
        c
    }

    #[test]
    fn rewritten_values_sent_as_backfills_are_set_row_by_row_by_key_then_not_null() {
        let s = settings("upsert", true, "");
        let c = backfilled_change();
        let mut now = emp_now();
        now.columns[2].2 = true; // n NOT NULL on the target
        let actions = plan(&c, &s, now);
        assert_eq!(
            sql(&actions),
            [
                r#"ALTER TABLE "public"."emp" ALTER COLUMN "n" DROP NOT NULL"#,
                r#"ALTER TABLE "public"."emp" ALTER COLUMN "n" TYPE bigint USING NULL"#,
                r#"ALTER TABLE "public"."emp" ADD COLUMN "at" timestamp with time zone"#,
            ]
        );
        assert!(halt(&actions, Management::Managed, "x").is_none());
        let backfill = target(&c, Some(&s), Some(&s)).unwrap().backfill.unwrap();
        assert_eq!(
            backfill.statement().unwrap(),
            r#"UPDATE "public"."emp" AS t SET "n" = v.v1::bigint, "at" = v.v2::timestamp with time zone FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[])) AS v(v0, v1, v2) WHERE t."id" = v.v0::integer"#
        );
        assert_eq!(backfill.not_null, ["at"]);
    }

    #[test]
    fn scd2_backfills_only_current_versions_and_casts_the_history() {
        let s = settings("scd2", true, "");
        let c = backfilled_change();
        let now = actual(
            &[
                ("id", "integer", true),
                ("name", "text", false),
                ("n", "integer", false),
                ("scd_start_date", "timestamp with time zone", true),
                ("scd_end_date", "timestamp with time zone", false),
                ("scd_current", "boolean", true),
            ],
            &["id", "scd_start_date"],
        );
        assert_eq!(
            sql(&plan(&c, &s, now)),
            [
                r#"ALTER TABLE "public"."emp" ALTER COLUMN "n" TYPE bigint USING "n"::bigint"#,
                r#"ALTER TABLE "public"."emp" ADD COLUMN "at" timestamp with time zone"#
            ]
        );
        let backfill = target(&c, Some(&s), Some(&s)).unwrap().backfill.unwrap();
        assert!(
            backfill.statement().unwrap().ends_with(r#"WHERE t."id" = v.v0::integer AND t."scd_current""#),
            "{}",
            backfill.statement().unwrap()
        );
        assert!(backfill.not_null.is_empty(), "closed versions hold NULL");
    }

    #[test]
    fn a_backfill_through_a_transformation_cannot_be_derived_and_halts() {
        let mask = r#", "transformations": [{"table_info": {"schema_name": "public", "table_name": "emp"},
            "settings": {"transformation_type": "modify_column_value", "description": "mask", "contract": {"operation": "uppercase", "column_name": "code"}, "priority": 1}}]"#;
        let s = settings("upsert", true, mask);
        let mut c = change(
            emp(),
            Some(shape(
                "emp",
                vec![col(1, "id", "integer"), col(2, "name", "text"), col(3, "n", "integer"), col(4, "code", "text")],
            )),
        );
        c.backfilled = vec![4];
        assert!(target(&c, Some(&s), Some(&s)).unwrap().backfill.is_none());
        let actions = plan(&c, &s, emp_now());
        assert!(actions.iter().any(|a| matches!(a, Action::Cannot(w) if w.contains("column code"))), "{actions:?}");
    }

    #[test]
    fn a_partition_attached_holding_rows_halts_naming_it_and_the_reload() {
        let s = settings("upsert", true, "");
        let mut c = change(emp(), Some(emp()));
        c.unreplicated = vec!["public.emp_2026".into()];
        let actions = plan(&c, &s, emp_now());
        let err = halt(&actions, Management::Managed, "public.emp at 0/10").unwrap();
        for needle in
            ["public.emp_2026 attached as partition", "never passed through the stream", "\"start_mode\": \"reload\""]
        {
            assert!(err.message().contains(needle), "{needle}: {}", err.message());
        }
        // also when the target table is not there yet
        let t = target(&c, Some(&s), Some(&s)).unwrap();
        assert!(halt(&reconcile(&t, &HashMap::new(), None), Management::Managed, "x").is_some());
    }

    #[test]
    fn rows_of_a_partition_attached_holding_them_are_inserted_unless_the_rules_change_them() {
        let s = settings("upsert", true, "");
        let mut c = change(emp(), Some(emp()));
        c.attached = vec!["public.emp_2026".into()];
        let t = target(&c, Some(&s), Some(&s)).unwrap();
        assert!(t.steps.is_empty(), "{:?}", t.steps);
        assert_eq!(
            t.backfill.unwrap().statement().unwrap(),
            r#"INSERT INTO "public"."emp" ("id", "name", "n") SELECT v.v0::integer, v.v1::text, v.v2::integer FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[])) AS v(v0, v1, v2) ON CONFLICT ("id") DO UPDATE SET "name" = EXCLUDED."name", "n" = EXCLUDED."n""#
        );
        // under a filter (or SCD2) they cannot be inserted as they are: the task halts on them
        for s in [settings("upsert", true, RULES), settings("scd2", true, "")] {
            let t = target(&c, Some(&s), Some(&s)).unwrap();
            assert!(t.backfill.is_none());
            assert_eq!(t.steps, vec![Step::Unreplicated { partitions: vec!["public.emp_2026".into()] }]);
        }
    }

    #[test]
    fn a_dropped_table_keeps_its_target() {
        let s = settings("upsert", true, "");
        let c = change(emp(), None);
        let t = target(&c, Some(&s), Some(&s)).unwrap();
        assert_eq!(t.steps, vec![Step::DropTable]);
        let mut actuals = HashMap::new();
        actuals.insert(name("emp"), emp_now());
        let actions = reconcile(&t, &actuals, None);
        assert!(sql(&actions).is_empty());
        assert!(steps_text(&actions).contains("target table public.emp kept"), "{}", steps_text(&actions));
    }

    const RULES: &str = r#", "filters": [{"table_info": {"schema_name": "public", "table_name": "emp"},
            "settings": {"filter_type": "greater_than", "description": "positive", "column_name": "n", "value": 0}}],
        "transformations": [{"table_info": {"schema_name": "public", "table_name": "emp"},
            "settings": {"transformation_type": "modify_column_value", "description": "mask", "contract": {"operation": "uppercase", "column_name": "name"}, "priority": 1}}]"#;

    #[test]
    fn rules_follow_renames_of_the_table_and_its_columns() {
        let s = settings("upsert", true, RULES);
        let text = serde_json::to_string(&s).unwrap();
        let new = Shape {
            schema: "public".into(),
            table: "people".into(),
            columns: vec![col(1, "id", "integer"), col(2, "n", "text"), col(3, "name", "integer")],
        };
        // name and n swap their names (types too, so that the rules still fit)
        let mut c = change(emp(), Some(new));
        c.new.as_mut().unwrap().columns[1].type_name = "text".into();
        let (after_text, after) = follow_renames(Some(&text), &c).unwrap().unwrap();
        assert_eq!(after.tables[0].table_name, "people");
        assert_eq!(after.filters[0].table_info.table_name, "people");
        assert_eq!(after.filters[0].settings.column_name, "name");
        assert_eq!(after.transformations[0].settings.contract["column_name"], "n");
        assert!(after_text.contains("people"));
        // the target follows: renamed table, swapped columns
        let t = target(&c, Some(&s), Some(&after)).unwrap();
        assert_eq!(t.new, Some(name("people")));
        assert!(t.steps.contains(&Step::RenameColumn { from: "name".into(), to: "n".into() }), "{:?}", t.steps);
        // nothing renamed: nothing to follow
        assert!(follow_renames(Some(&text), &change(emp(), Some(emp()))).unwrap().is_none());
    }

    #[test]
    fn a_rule_the_new_shape_breaks_halts_naming_it() {
        let s = settings("upsert", true, RULES);
        let new = shape("emp", vec![col(1, "id", "integer"), col(2, "name", "text")]);
        let err = target(&change(emp(), Some(new)), Some(&s), Some(&s)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Rules);
        assert!(err.message().contains("filter 0 (greater_than, \"positive\")"), "{}", err.message());
    }

    #[test]
    fn renamed_target_columns_of_the_rules_stay() {
        // the rules rename `name` to `label` on the target: a source rename of `name` changes nothing there
        let rename = r#", "transformations": [{"table_info": {"schema_name": "public", "table_name": "emp"},
            "settings": {"transformation_type": "modify_column_name", "description": "", "contract": {"column_name": "name", "target_column_name": "label"}, "priority": 0}}]"#;
        let s = settings("upsert", true, rename);
        let text = serde_json::to_string(&s).unwrap();
        let new = shape("emp", vec![col(1, "id", "integer"), col(2, "title", "text"), col(3, "n", "integer")]);
        let c = change(emp(), Some(new));
        let (_, after) = follow_renames(Some(&text), &c).unwrap().unwrap();
        let t = target(&c, Some(&s), Some(&after)).unwrap();
        assert!(t.steps.is_empty(), "{:?}", t.steps);
    }
}
