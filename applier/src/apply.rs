//! Turns envelope changes into bulk SQL against the target, in source order.
//!
//! Consecutive changes that share a statement (same table, same operation, same set of columns)
//! form a run, executed as one statement over text arrays turned into rows (`ROWS FROM (pg_catalog.unnest(…), …)`). In `upsert` mode inserts
//! and updates become `INSERT … ON CONFLICT (key) DO UPDATE`, deletes a `DELETE … USING
//! unnest(…)`. In `default` mode an insert is a plain `INSERT` (a row that already exists is an
//! error that halts the task), an update an `UPDATE … FROM pg_catalog.unnest(…)` by key and a delete the
//! same `DELETE`; an update or delete that finds no target row is logged as a warning with the
//! table and the count. `scd2` mode is in [`crate::scd2`]. Values
//! travel in text form and are cast to the source column type, which round-trips every type
//! exactly. Within an upsert run only the last image of each key is kept (a later full image of a
//! row supersedes an earlier one). An update that changes the key deletes the old row first.
//! Unchanged TOASTed columns are left out of the statement, so the target keeps its value; such an
//! update is always an `UPDATE` by key (never an upsert, which would insert NULL in their place),
//! and outside `default` mode a row it does not find halts the task ([`ErrorKind::UnchangedToast`]).
//! Inserts say `OVERRIDING SYSTEM VALUE`: the source's values win over `GENERATED ALWAYS`
//! identity columns in the target.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};
use tracing::warn;
use trempy_protocol::envelope::{Change, Relation};

use crate::error::{Error, ErrorKind, Operation};
use crate::ident::{self, quote_ident};
use crate::keyless::{self, Missing};
use crate::scd2;

/// Rows after which a run is executed even if the next change would fit it.
const MAX_RUN_ROWS: usize = 10_000;

/// Bulk statements submitted to the target and not yet awaited.
const MAX_IN_FLIGHT: usize = 2;

type InFlight = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

fn qualified(rel: &Relation) -> String {
    ident::qualified(&rel.schema, &rel.table)
}

/// How changes are written to the target (`task.cdc_settings.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Plain INSERT, UPDATE by key, DELETE by key.
    Default,
    /// INSERT … ON CONFLICT (key) DO UPDATE, DELETE by key.
    Upsert,
    /// History: see [`crate::scd2`].
    Scd2,
}

/// One row operation, ready to join a run.
#[derive(Debug)]
enum Op<'a> {
    Upsert {
        rel: &'a Relation,
        present: Vec<usize>,
        row: Vec<Option<String>>,
        source: Operation,
    },
    /// `default` mode.
    Insert {
        rel: &'a Relation,
        row: Vec<Option<String>>,
    },
    /// `default` mode: `key` holds the old key values (the row's own unless the key changed).
    /// `require`: every row must be found (an update lacking unchanged TOASTed values, which an
    /// insert could not supply), else the task halts.
    Update {
        rel: &'a Relation,
        key: Vec<Option<String>>,
        present: Vec<usize>,
        row: Vec<Option<String>>,
        key_changed: bool,
        require: bool,
    },
    Delete {
        rel: &'a Relation,
        row: Vec<Option<String>>,
        report: bool,
        source: Operation,
    },
    Truncate {
        rels: Vec<&'a Relation>,
        cascade: bool,
        restart_identity: bool,
    },
    /// `scd2` mode: one statement per change.
    Single {
        table: String,
        statement: scd2::Statement,
    },
    /// A table without a key: one statement per update or delete, matching the whole old row
    /// ([`crate::keyless`]). `report`: warn when it finds no row (`default` mode).
    Match {
        table: String,
        statement: keyless::Statement,
        operation: Operation,
        report: bool,
    },
}

pub(crate) fn key_indexes(rel: &Relation) -> Result<Vec<usize>, Error> {
    let keys: Vec<usize> = rel.columns.iter().enumerate().filter(|(_, c)| c.key).map(|(i, _)| i).collect();
    if keys.is_empty() {
        return Err(Error::new(
            ErrorKind::TargetSql,
            format!("table {} has no key columns in the stream", qualified(rel)),
        )
        .with_table(qualified(rel)));
    }
    Ok(keys)
}

fn relation(relations: &[Relation], id: u32) -> Result<&Relation, Error> {
    relations
        .iter()
        .find(|r| r.id == id)
        .ok_or_else(|| Error::new(ErrorKind::Envelope, format!("relation {id} is not described")))
}

/// The operations a change turns into (taking its values, not copying them).
fn plan<'r>(relations: &'r [Relation], change: Change, mode: Mode, commit_time: &str) -> Result<Vec<Op<'r>>, Error> {
    if let (Mode::Scd2, Change::Truncate { rels, .. }) = (mode, &change) {
        return rels
            .iter()
            .map(|id| {
                let rel = relation(relations, *id)?;
                Ok(Op::Single { table: qualified(rel), statement: scd2::truncate(rel, commit_time)? })
            })
            .collect();
    }
    if let Change::Schema(_) | Change::Backfill(_) = change {
        return Err(schema_here());
    }
    if mode == Mode::Scd2 {
        let rel = relation(relations, change_rel(&change))?;
        return Ok(scd2::statements(rel, change, commit_time)?
            .into_iter()
            .map(|statement| Op::Single { table: qualified(rel), statement })
            .collect());
    }
    if !matches!(change, Change::Truncate { .. }) {
        let rel = relation(relations, change_rel(&change))?;
        if rel.columns.iter().all(|c| !c.key) {
            return keyless_plan(rel, change, mode);
        }
    }
    Ok(match change {
        Change::Insert { rel, new } => {
            let rel = relation(relations, rel)?;
            if mode == Mode::Default {
                vec![Op::Insert { rel, row: new }]
            } else {
                vec![Op::Upsert { rel, present: (0..rel.columns.len()).collect(), row: new, source: Operation::Insert }]
            }
        }
        Change::Update { rel, old, new, unchanged } => {
            let rel = relation(relations, rel)?;
            let keys = key_indexes(rel)?;
            let present: Vec<usize> = (0..rel.columns.len()).filter(|i| !unchanged.contains(i)).collect();
            if let Some(k) = keys.iter().find(|k| !present.contains(k)) {
                return Err(Error::new(
                    ErrorKind::Envelope,
                    format!("update of {} without a value for key column {k}", qualified(rel)),
                ));
            }
            let key_changed = old.as_ref().is_some_and(|old| keys.iter().any(|&k| old.get(k) != new.get(k)));
            // An update lacking unchanged TOASTed values is never an upsert: inserting the row
            // would put NULL (or the column default) in their place. It updates the row by key,
            // which must then exist (in upsert mode, and for rows that may be entering a filter).
            if mode == Mode::Default || !unchanged.is_empty() {
                let source = if key_changed { old.as_ref() } else { Some(&new) };
                let key = keys.iter().map(|&k| source.and_then(|r| r.get(k).cloned().flatten())).collect();
                return Ok(vec![Op::Update {
                    rel,
                    key,
                    present,
                    row: new,
                    key_changed,
                    require: mode != Mode::Default,
                }]);
            }
            let mut ops = Vec::with_capacity(2);
            if let Some(old) = old
                && key_changed
            {
                ops.push(Op::Delete { rel, row: old, report: false, source: Operation::Update });
            }
            ops.push(Op::Upsert { rel, present, row: new, source: Operation::Update });
            ops
        }
        Change::Delete { rel, old } => vec![Op::Delete {
            rel: relation(relations, rel)?,
            row: old,
            report: mode == Mode::Default,
            source: Operation::Delete,
        }],
        Change::Truncate { rels, cascade, restart_identity } => {
            let rels = rels.iter().map(|id| relation(relations, *id)).collect::<Result<Vec<_>, _>>()?;
            vec![Op::Truncate { rels, cascade, restart_identity }]
        }
        Change::Schema(_) | Change::Backfill(_) => return Err(schema_here()),
    })
}

/// The operations of a change to a table without a key: inserts join plain insert runs (in
/// every mode: there is no key to conflict on); an update or delete matches the whole old row,
/// which `REPLICA IDENTITY FULL` sends (an insert-only table's source refuses them).
fn keyless_plan(rel: &Relation, change: Change, mode: Mode) -> Result<Vec<Op<'_>>, Error> {
    let table = qualified(rel);
    let no_old = |what: &str| {
        Error::new(
            ErrorKind::Envelope,
            format!(
                "{what} of {table}, which has no key, came without the old row, so no target row can be matched: \
                 give the source table a primary key, or run ALTER TABLE … REPLICA IDENTITY FULL on it, then reload the task"
            ),
        )
        .with_table(table.clone())
    };
    Ok(match change {
        Change::Insert { new, .. } => vec![Op::Insert { rel, row: new }],
        Change::Update { old, new, unchanged, .. } => {
            let old = old.ok_or_else(|| no_old("an update"))?;
            if !unchanged.is_empty() {
                return Err(no_old("an update lacking unchanged large (TOASTed) values"));
            }
            let missing = if mode == Mode::Default { Missing::Skip } else { Missing::Insert };
            let statement = keyless::update(rel, &table, &old, new, missing)?;
            vec![Op::Match { table, statement, operation: Operation::Update, report: missing == Missing::Skip }]
        }
        Change::Delete { old, .. } => {
            let statement = keyless::delete(rel, &table, &old)?;
            vec![Op::Match { table, statement, operation: Operation::Delete, report: mode == Mode::Default }]
        }
        Change::Truncate { .. } | Change::Schema(_) | Change::Backfill(_) => return Err(schema_here()),
    })
}

/// Schema changes and their backfills are applied by [`crate::schema_change`], never as row
/// operations.
fn schema_here() -> Error {
    Error::new(
        ErrorKind::Conflict,
        "a schema change or backfill reached the row writer; it is applied by the session, not as a row change",
    )
}

fn change_rel(change: &Change) -> u32 {
    match change {
        Change::Insert { rel, .. } | Change::Update { rel, .. } | Change::Delete { rel, .. } => *rel,
        Change::Schema(schema) => schema.rel,
        Change::Backfill(backfill) => backfill.rel,
        Change::Truncate { rels, .. } => rels.first().copied().unwrap_or_default(),
    }
}

fn upsert_sql(rel: &Relation, present: &[usize]) -> Result<String, Error> {
    let keys = key_indexes(rel)?;
    let cols: Vec<String> = present.iter().map(|&i| quote_ident(&rel.columns[i].name)).collect();
    let casts: Vec<String> =
        present.iter().enumerate().map(|(p, &i)| format!("u.c{p}::{}", rel.columns[i].type_name)).collect();
    let conflict: Vec<String> = keys.iter().map(|&i| quote_ident(&rel.columns[i].name)).collect();
    let sets: Vec<String> = present
        .iter()
        .filter(|i| !keys.contains(i))
        .map(|&i| {
            let c = quote_ident(&rel.columns[i].name);
            format!("{c} = EXCLUDED.{c}")
        })
        .collect();
    let action = if sets.is_empty() { "NOTHING".to_owned() } else { format!("UPDATE SET {}", sets.join(", ")) };
    Ok(format!(
        "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {} ON CONFLICT ({}) DO {action}",
        qualified(rel),
        cols.join(", "),
        casts.join(", "),
        unnested(present.len()),
        conflict.join(", ")
    ))
}

/// `ROWS FROM (pg_catalog.unnest($1::text[]), …) AS u(c0, …)`: one row per change, one text
/// column per parameter. (The multi-argument `unnest(a, b)` is a grammar shorthand that exists
/// only unqualified; with `search_path` pinned to `pg_catalog` every call is qualified.)
fn unnested(width: usize) -> String {
    let calls: Vec<String> = (1..=width).map(|p| format!("pg_catalog.unnest(${p}::text[])")).collect();
    let aliases: Vec<String> = (0..width).map(|p| format!("c{p}")).collect();
    format!("ROWS FROM ({}) AS u({})", calls.join(", "), aliases.join(", "))
}

/// `default` mode: a plain insert; a row that exists already is an error.
fn insert_sql(rel: &Relation) -> String {
    let cols: Vec<String> = rel.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let casts: Vec<String> = rel.columns.iter().enumerate().map(|(p, c)| format!("u.c{p}::{}", c.type_name)).collect();
    format!(
        "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {}",
        qualified(rel),
        cols.join(", "),
        casts.join(", "),
        unnested(rel.columns.len())
    )
}

/// `default` mode: an update by key. The first parameters are the (old) key values, then one per
/// present column; every present column is set, the key columns too (a key-changing update).
fn update_sql(rel: &Relation, present: &[usize]) -> Result<String, Error> {
    let keys = key_indexes(rel)?;
    let width = keys.len() + present.len();
    let sets: Vec<String> = present
        .iter()
        .enumerate()
        .map(|(p, &i)| {
            format!("{} = u.c{}::{}", quote_ident(&rel.columns[i].name), keys.len() + p, rel.columns[i].type_name)
        })
        .collect();
    let conditions: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(p, &i)| format!("t.{} = u.c{p}::{}", quote_ident(&rel.columns[i].name), rel.columns[i].type_name))
        .collect();
    Ok(format!(
        "UPDATE {} AS t SET {} FROM {} WHERE {}",
        qualified(rel),
        sets.join(", "),
        unnested(width),
        conditions.join(" AND ")
    ))
}

fn delete_sql(rel: &Relation) -> Result<String, Error> {
    let keys = key_indexes(rel)?;
    let conditions: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(p, &i)| format!("t.{} = u.c{p}::{}", quote_ident(&rel.columns[i].name), rel.columns[i].type_name))
        .collect();
    Ok(format!("DELETE FROM {} AS t USING {} WHERE {}", qualified(rel), unnested(keys.len()), conditions.join(" AND ")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunKind {
    Upsert,
    Insert,
    /// `default` mode; rows are de-duplicated by (old) key like upserts.
    Update,
    Delete,
    Single,
}

/// A new run for an operation, and the operation's row of values for it.
type RunStart = (Run, Vec<Option<String>>);

/// Consecutive operations sharing one statement.
#[derive(Debug)]
struct Run {
    sql: String,
    kind: RunKind,
    table: String,
    /// The source operations of its rows.
    operation: Operation,
    /// Positions, within each row's values, of the key columns (for de-duplication).
    key_positions: Vec<usize>,
    rows: Vec<Vec<Option<String>>>,
    /// Warn when fewer rows than sent were affected (`default` mode updates and deletes).
    report: bool,
    /// Takes no further rows (a key-changing update, an SCD2 statement).
    alone: bool,
    /// Every row must be found: fewer affected rows than sent halts the task
    /// ([`ErrorKind::UnchangedToast`]).
    require: bool,
}

impl Run {
    fn for_op(op: &mut Op<'_>) -> Result<Option<RunStart>, Error> {
        let take = |row: &mut Vec<Option<String>>, i: usize| row.get_mut(i).and_then(Option::take);
        match op {
            Op::Upsert { rel, present, row, source } => {
                let keys = key_indexes(rel)?;
                let key_positions =
                    present.iter().enumerate().filter(|(_, i)| keys.contains(i)).map(|(p, _)| p).collect();
                let values = present.iter().map(|&i| take(row, i)).collect();
                let run = Run {
                    sql: upsert_sql(rel, present)?,
                    kind: RunKind::Upsert,
                    table: qualified(rel),
                    operation: *source,
                    key_positions,
                    rows: Vec::new(),
                    report: false,
                    alone: false,
                    require: false,
                };
                Ok(Some((run, values)))
            }
            Op::Insert { rel, row } => {
                let run = Run {
                    sql: insert_sql(rel),
                    kind: RunKind::Insert,
                    table: qualified(rel),
                    operation: Operation::Insert,
                    key_positions: Vec::new(),
                    rows: Vec::new(),
                    report: false,
                    alone: false,
                    require: false,
                };
                Ok(Some((run, std::mem::take(row))))
            }
            Op::Update { rel, key, present, row, key_changed, require } => {
                let mut values = std::mem::take(key);
                let key_positions = (0..values.len()).collect();
                values.extend(present.iter().map(|&i| take(row, i)));
                let run = Run {
                    sql: update_sql(rel, present)?,
                    kind: RunKind::Update,
                    table: qualified(rel),
                    operation: Operation::Update,
                    key_positions,
                    rows: Vec::new(),
                    report: !*require,
                    alone: *key_changed,
                    require: *require,
                };
                Ok(Some((run, values)))
            }
            Op::Delete { rel, row, report, source } => {
                let keys = key_indexes(rel)?;
                let values = keys.iter().map(|&i| take(row, i)).collect();
                let run = Run {
                    sql: delete_sql(rel)?,
                    kind: RunKind::Delete,
                    table: qualified(rel),
                    operation: *source,
                    key_positions: (0..keys.len()).collect(),
                    rows: Vec::new(),
                    report: *report,
                    alone: false,
                    require: false,
                };
                Ok(Some((run, values)))
            }
            Op::Single { table, statement } => {
                let run = Run {
                    sql: std::mem::take(&mut statement.sql),
                    kind: RunKind::Single,
                    table: std::mem::take(table),
                    operation: Operation::Scd2,
                    key_positions: Vec::new(),
                    rows: Vec::new(),
                    report: false,
                    alone: true,
                    require: statement.require,
                };
                Ok(Some((run, std::mem::take(&mut statement.params))))
            }
            Op::Match { table, statement, operation, report } => {
                let run = Run {
                    sql: std::mem::take(&mut statement.sql),
                    kind: RunKind::Single,
                    table: std::mem::take(table),
                    operation: *operation,
                    key_positions: Vec::new(),
                    rows: Vec::new(),
                    report: *report,
                    alone: true,
                    require: false,
                };
                Ok(Some((run, std::mem::take(&mut statement.params))))
            }
            Op::Truncate { .. } => Ok(None),
        }
    }

    /// Column-major text arrays for the statement's parameters; upserts keep the last image
    /// of each key.
    fn parameters(&mut self) -> Vec<Vec<Option<String>>> {
        let width = self.rows.first().map_or(0, Vec::len);
        let rows = std::mem::take(&mut self.rows);
        // Upserts keep only the last image of each key (borrowed keys: no copies).
        let keep: Vec<bool> = if matches!(self.kind, RunKind::Upsert | RunKind::Update) {
            let mut seen = HashSet::with_capacity(rows.len());
            let mut keep: Vec<bool> = rows
                .iter()
                .rev()
                .map(|row| seen.insert(self.key_positions.iter().map(|&p| row[p].as_deref()).collect::<Vec<_>>()))
                .collect();
            keep.reverse();
            keep
        } else {
            vec![true; rows.len()]
        };
        let kept = keep.iter().filter(|k| **k).count();
        let mut columns = vec![Vec::with_capacity(kept); width];
        for (row, keep) in rows.into_iter().zip(keep) {
            if keep {
                for (column, value) in columns.iter_mut().zip(row) {
                    column.push(value);
                }
            }
        }
        columns
    }
}

/// The halt when an update lacks unchanged TOASTed values and the target lacks the row (or, in
/// `scd2` mode, its current version) to keep them from.
fn missing_toast(table: &str, missing: u64, sent: u64) -> Error {
    Error::new(
        ErrorKind::UnchangedToast,
        format!(
            "{missing} of {sent} updates of {table} found no target row to update, and the source did not send their unchanged large (TOASTed) column values: \
             the row entered the task's filter, or is missing from the target. TREMpy does not write NULL in their place, so the task halts here. \
             Remedy: at the source, ALTER TABLE … REPLICA IDENTITY FULL on the table (updates then carry the whole old row, and the values are taken from it), \
             then reload the task (trempy.update_task with start_mode \"reload\") so that the missing rows are copied"
        ),
    )
    .with_table(table.to_owned())
}

/// Executes operations against the target inside the caller's open transaction.
///
/// Bulk statements are pipelined: each is sent as soon as its run is complete, and the next
/// message is parsed while the server executes it. Results are awaited in order (so the first
/// failure is the one reported), at most [`MAX_IN_FLIGHT`] behind; [`Writer::finish`] awaits them
/// all and must precede the watermark update and COMMIT.
pub(crate) struct Writer {
    statements: HashMap<String, Statement>,
    run: Option<Run>,
    in_flight: VecDeque<InFlight>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Self { statements: HashMap::new(), run: None, in_flight: VecDeque::new() }
    }

    /// Applies one change (possibly by adding it to the pending run).
    /// `relations` describe the target tables (see [`crate::rules`]); `commit_time` is the source
    /// commit time of the change's transaction (SCD2 versions start and end at it).
    pub(crate) async fn apply(
        &mut self,
        client: &Arc<Client>,
        relations: &[Relation],
        change: Change,
        mode: Mode,
        commit_time: &str,
    ) -> Result<(), Error> {
        for mut op in plan(relations, change, mode, commit_time)? {
            match Run::for_op(&mut op)? {
                Some((run, values)) => {
                    let fits = self.run.as_ref().is_some_and(|r| {
                        r.sql == run.sql
                            && r.require == run.require
                            && !r.alone
                            && !run.alone
                            && r.rows.len() < MAX_RUN_ROWS
                    });
                    let operation = run.operation;
                    if !fits {
                        self.flush(client).await?;
                        self.run = Some(run);
                    }
                    if let Some(r) = self.run.as_mut() {
                        r.operation = r.operation.merge(operation);
                        r.rows.push(values);
                    }
                }
                None => {
                    self.finish(client).await?;
                    if let Op::Truncate { rels, cascade, restart_identity } = op {
                        let names: Vec<String> = rels.iter().map(|r| qualified(r)).collect();
                        let mut sql = format!("TRUNCATE {}", names.join(", "));
                        if restart_identity {
                            sql.push_str(" RESTART IDENTITY");
                        }
                        if cascade {
                            sql.push_str(" CASCADE");
                        }
                        client.execute(&sql, &[]).await.map_err(|e| {
                            Error::target(&e).with_table(names.join(", ")).with_operation(Operation::Truncate)
                        })?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends the pending run to the target (without waiting for its result beyond the
    /// pipelining bound).
    pub(crate) async fn flush(&mut self, client: &Arc<Client>) -> Result<(), Error> {
        let Some(mut run) = self.run.take() else { return Ok(()) };
        if run.rows.is_empty() {
            return Ok(());
        }
        let statement = match self.statements.get(&run.sql) {
            Some(s) => s.clone(),
            None => {
                let s = client
                    .prepare(&run.sql)
                    .await
                    .map_err(|e| Error::target(&e).with_table(run.table.clone()).with_operation(run.operation))?;
                self.statements.insert(run.sql.clone(), s.clone());
                s
            }
        };
        let (kind, report, require) = (run.kind, run.report, run.require);
        let columns = if kind == RunKind::Single {
            run.rows.pop().unwrap_or_default().into_iter().map(|v| vec![v]).collect()
        } else {
            run.parameters()
        };
        let sent = columns.first().map_or(0, Vec::len) as u64;
        let (client, table, operation) = (Arc::clone(client), run.table, run.operation);
        let mut execution: InFlight = Box::pin(async move {
            let affected = if kind == RunKind::Single {
                let params: Vec<&(dyn ToSql + Sync)> = columns.iter().map(|c| &c[0] as &(dyn ToSql + Sync)).collect();
                client.execute(&statement, &params).await
            } else {
                let params: Vec<&(dyn ToSql + Sync)> = columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
                client.execute(&statement, &params).await
            }
            .map_err(|e| Error::target(&e).with_table(table.clone()).with_operation(operation))?;
            if require && affected < sent {
                return Err(missing_toast(&table, sent - affected, sent).with_operation(operation));
            }
            if report && affected < sent {
                let what =
                    if kind == RunKind::Update || operation == Operation::Update { "updates" } else { "deletes" };
                warn!(table = %table, sent, affected, "default mode: {} of {sent} {what} found no target row", sent - affected);
            }
            Ok(())
        });
        // The first poll sends the request; the server works on it while we go on.
        let waker = futures_util::task::noop_waker();
        match execution.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(result) => result?,
            Poll::Pending => self.in_flight.push_back(execution),
        }
        while self.in_flight.len() > MAX_IN_FLIGHT {
            if let Some(oldest) = self.in_flight.pop_front() {
                oldest.await?;
            }
        }
        Ok(())
    }

    /// Forgets the prepared statements (after a schema change: the target tables changed).
    /// Call after [`Writer::finish`].
    pub(crate) fn forget_statements(&mut self) {
        self.statements.clear();
    }

    /// Forgets the pending run and the statements in flight, after a failure (their results
    /// are discarded; the caller rolls back).
    pub(crate) fn reset(&mut self) {
        self.run = None;
        self.in_flight.clear();
    }

    /// Sends the pending run and waits for every statement sent so far.
    pub(crate) async fn finish(&mut self, client: &Arc<Client>) -> Result<(), Error> {
        self.flush(client).await?;
        while let Some(execution) = self.in_flight.pop_front() {
            execution.await?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use trempy_protocol::envelope::Column;

    use super::*;

    fn rel() -> Relation {
        Relation {
            id: 1,
            schema: "My \"Schema\"".into(),
            table: "tâble".into(),
            columns: vec![
                Column { name: "id".into(), type_name: "integer".into(), type_oid: 23, key: true, ..Column::default() },
                Column { name: "Name".into(), type_name: "text".into(), type_oid: 25, key: false, ..Column::default() },
                Column {
                    name: "tags".into(),
                    type_name: "\"My Schema\".mood[]".into(),
                    type_oid: 1,
                    key: false,
                    ..Column::default()
                },
            ],
        }
    }

    #[test]
    fn upsert_statement() {
        assert_eq!(
            upsert_sql(&rel(), &[0, 1, 2]).unwrap(),
            "INSERT INTO \"My \"\"Schema\"\"\".\"tâble\" (\"id\", \"Name\", \"tags\") OVERRIDING SYSTEM VALUE SELECT u.c0::integer, u.c1::text, u.c2::\"My Schema\".mood[] \
             FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[])) AS u(c0, c1, c2) ON CONFLICT (\"id\") DO UPDATE SET \"Name\" = EXCLUDED.\"Name\", \"tags\" = EXCLUDED.\"tags\""
        );
        assert!(upsert_sql(&rel(), &[0]).unwrap().ends_with("ON CONFLICT (\"id\") DO NOTHING"));
    }

    #[test]
    fn delete_statement() {
        assert_eq!(
            delete_sql(&rel()).unwrap(),
            "DELETE FROM \"My \"\"Schema\"\"\".\"tâble\" AS t USING ROWS FROM (pg_catalog.unnest($1::text[])) AS u(c0) WHERE t.\"id\" = u.c0::integer"
        );
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    #[test]
    fn key_change_deletes_the_old_row_first() {
        let change = Change::Update {
            rel: 1,
            old: Some(vec![s("1"), None, None]),
            new: vec![s("2"), s("x"), None],
            unchanged: vec![],
        };
        let e = [rel()];
        let ops = plan(&e, change, Mode::Upsert, "").unwrap();
        assert!(matches!(&ops[0], Op::Delete { row, .. } if row[0] == s("1")));
        assert!(matches!(&ops[1], Op::Upsert { present, .. } if present == &vec![0, 1, 2]));
        let same_key = Change::Update {
            rel: 1,
            old: Some(vec![s("2"), None, None]),
            new: vec![s("2"), s("y"), s("{}")],
            unchanged: vec![],
        };
        assert_eq!(plan(&e, same_key, Mode::Upsert, "").unwrap().len(), 1);
    }

    #[test]
    fn default_mode_inserts_plainly_and_updates_by_the_old_key() {
        assert_eq!(
            insert_sql(&rel()),
            "INSERT INTO \"My \"\"Schema\"\"\".\"tâble\" (\"id\", \"Name\", \"tags\") OVERRIDING SYSTEM VALUE SELECT u.c0::integer, u.c1::text, u.c2::\"My Schema\".mood[] \
             FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[])) AS u(c0, c1, c2)"
        );
        assert_eq!(
            update_sql(&rel(), &[0, 1]).unwrap(),
            "UPDATE \"My \"\"Schema\"\"\".\"tâble\" AS t SET \"id\" = u.c1::integer, \"Name\" = u.c2::text FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[])) AS u(c0, c1, c2) \
             WHERE t.\"id\" = u.c0::integer"
        );
        let e = [rel()];
        let change = Change::Update {
            rel: 1,
            old: Some(vec![s("1"), None, None]),
            new: vec![s("2"), s("x"), None],
            unchanged: vec![2],
        };
        let mut ops = plan(&e, change, Mode::Default, "").unwrap();
        assert!(matches!(&ops[0], Op::Update { key, key_changed: true, .. } if key == &vec![s("1")]));
        let (run, values) = Run::for_op(&mut ops[0]).unwrap().unwrap();
        assert!(run.alone && run.report);
        assert_eq!(values, vec![s("1"), s("2"), s("x")]);
        let ops = plan(&e, Change::Insert { rel: 1, new: vec![s("3"), None, None] }, Mode::Default, "").unwrap();
        assert!(matches!(&ops[0], Op::Insert { .. }));
        let ops = plan(&e, Change::Delete { rel: 1, old: vec![s("3"), None, None] }, Mode::Default, "").unwrap();
        assert!(matches!(&ops[0], Op::Delete { report: true, .. }));
    }

    #[test]
    fn an_update_lacking_unchanged_toast_is_never_an_upsert() {
        let e = [rel()];
        // upsert mode (also every update under a filter): an UPDATE by key that must find its row
        let change = Change::Update { rel: 1, old: None, new: vec![s("1"), s("x"), None], unchanged: vec![2] };
        let mut ops = plan(&e, change, Mode::Upsert, "").unwrap();
        assert_eq!(ops.len(), 1);
        assert!(
            matches!(&ops[0], Op::Update { present, require: true, key_changed: false, .. } if present == &vec![0, 1])
        );
        let (run, values) = Run::for_op(&mut ops[0]).unwrap().unwrap();
        assert!(run.require && !run.report);
        assert_eq!(values, vec![s("1"), s("1"), s("x")]);
        assert!(run.sql.starts_with("UPDATE "), "{}", run.sql);
        // a key change too: the row is updated under its old key, the unchanged value stays
        let change = Change::Update {
            rel: 1,
            old: Some(vec![s("1"), None, None]),
            new: vec![s("2"), s("x"), None],
            unchanged: vec![2],
        };
        let ops = plan(&e, change, Mode::Upsert, "").unwrap();
        assert!(matches!(&ops[..], [Op::Update { key, require: true, key_changed: true, .. }] if key == &vec![s("1")]));
        // default mode keeps reporting a missing row as a warning
        let change = Change::Update { rel: 1, old: None, new: vec![s("1"), s("x"), None], unchanged: vec![2] };
        assert!(matches!(&plan(&e, change, Mode::Default, "").unwrap()[..], [Op::Update { require: false, .. }]));
        let err = missing_toast("\"public\".\"t\"", 1, 3);
        assert_eq!(err.kind(), ErrorKind::UnchangedToast);
        assert!(
            err.message().contains("REPLICA IDENTITY FULL")
                && err.message().contains("reload")
                && err.message().contains("1 of 3"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn upsert_runs_keep_the_last_image_per_key() {
        let r = rel();
        let mut op =
            Op::Upsert { rel: &r, present: vec![0, 1, 2], row: vec![s("1"), s("a"), None], source: Operation::Insert };
        let (mut run, first) = Run::for_op(&mut op).unwrap().unwrap();
        run.rows.push(first);
        run.rows.push(vec![s("2"), s("b"), None]);
        run.rows.push(vec![s("1"), s("c"), None]);
        let columns = run.parameters();
        assert_eq!(columns[0], vec![s("2"), s("1")]);
        assert_eq!(columns[1], vec![s("b"), s("c")]);
    }

    #[test]
    fn a_relation_without_key_is_an_error() {
        let mut r = rel();
        r.columns.iter_mut().for_each(|c| c.key = false);
        assert!(upsert_sql(&r, &[0]).is_err());
        assert!(delete_sql(&r).is_err());
    }
}
