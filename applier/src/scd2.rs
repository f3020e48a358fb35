//! `scd2` mode: the target keeps every version of a row.
//!
//! A target relation in this mode ends with three columns that [`crate::rules`] appends: the
//! version's start (`timestamptz`, part of the target key: source key + start), its end
//! (`timestamptz`, NULL while current) and whether it is current (`boolean`). Their names come
//! from the task's settings (`scd_start_date`, `scd_end_date`, `scd_current` by default).
//!
//! Every time is the **source commit time** of the change's transaction, never the target's
//! clock, so a replayed change computes the same versions:
//!
//! * insert / update: if the current version holds the same values in every replicated column,
//!   nothing happens (a no-op update creates no version). Otherwise the current version is closed
//!   (`end` = commit time, `current` = false) and a new one opened (`start` = commit time). Columns
//!   not sent (unchanged TOAST; under `REPLICA IDENTITY FULL` they are taken from the old row
//!   instead, see [`crate::rules`]) are carried from the current version, which must exist: when
//!   there is none (the row enters a filter, or its key changed) the task halts rather than open
//!   a version with NULL in their place. A second change of the same key in the same source
//!   transaction revises the version that transaction opened.
//! * delete: the current version is closed; a version opened by the same source transaction is
//!   removed instead (it was never visible at the source).
//! * an update that changes the key closes the old key's version and opens one for the new key.
//! * truncate: every current version is closed.
//!
//! Replays are harmless on top of the watermark: a version is closed only by a later commit time
//! (`start < t`), the new version's insert is `ON CONFLICT (key, start)` and only revises a version
//! that is still current, and a version newer than the change is never touched.
//!
//! One statement per change (the history of a key is sequential); statements are pipelined like
//! the bulk ones.

use trempy_protocol::envelope::{Change, Relation};

use crate::error::{Error, ErrorKind};
use crate::ident::qualified;
use crate::ident::quote_ident;

/// A statement and its text parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Statement {
    pub(crate) sql: String,
    pub(crate) params: Vec<Option<String>>,
    /// It must find a row (the probe for a current version to carry unchanged TOASTed values
    /// from): finding none halts the task (`ErrorKind::UnchangedToast`).
    pub(crate) require: bool,
}

impl Statement {
    fn new(sql: String, params: Vec<Option<String>>) -> Self {
        Self { sql, params, require: false }
    }
}

/// The number of SCD2 columns at the end of a target relation.
pub(crate) const COLUMNS: usize = 3;

struct Shape<'a> {
    rel: &'a Relation,
    table: String,
    /// Data columns (before the SCD2 ones).
    width: usize,
    /// Business key: data columns that are key.
    keys: Vec<usize>,
    start: String,
    end: String,
    current: String,
}

impl<'a> Shape<'a> {
    fn of(rel: &'a Relation) -> Result<Self, Error> {
        let table = qualified(&rel.schema, &rel.table);
        let width = rel.columns.len().checked_sub(COLUMNS).ok_or_else(|| {
            Error::new(ErrorKind::Rules, format!("{table} lacks its SCD2 columns")).with_table(table.clone())
        })?;
        let keys: Vec<usize> =
            rel.columns.iter().enumerate().filter(|(k, c)| c.key && *k < width).map(|(k, _)| k).collect();
        if keys.is_empty() {
            return Err(Error::new(
                ErrorKind::Rules,
                format!("{table} has no key for SCD2 (the task's transformations removed every key column)"),
            )
            .with_table(table));
        }
        let name = |i: usize| quote_ident(&rel.columns[width + i].name);
        Ok(Shape { rel, table, width, keys, start: name(0), end: name(1), current: name(2) })
    }

    fn col(&self, i: usize) -> String {
        quote_ident(&self.rel.columns[i].name)
    }

    /// `WITH u AS (SELECT $1::text::T AS c<i>, …, $n::text::timestamptz AS t)` over `columns`.
    fn values(&self, columns: &[usize]) -> String {
        let mut items: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(p, &i)| format!("${}::text::{} AS c{i}", p + 1, self.rel.columns[i].type_name))
            .collect();
        items.push(format!("${}::text::timestamptz AS t", columns.len() + 1));
        format!("WITH u AS (SELECT {})", items.join(", "))
    }

    fn key_match(&self, alias: &str) -> String {
        self.keys.iter().map(|&k| format!("{alias}.{} = u.c{k}", self.col(k))).collect::<Vec<_>>().join(" AND ")
    }

    /// Opens a version from the `present` data columns (the others are carried).
    fn version_sql(&self, present: &[usize]) -> String {
        let compare: Vec<usize> = present.iter().copied().filter(|i| !self.keys.contains(i)).collect();
        let differs = |alias: &str| {
            if compare.is_empty() {
                "false".to_owned()
            } else {
                let left: Vec<String> = compare.iter().map(|&i| format!("{alias}.{}", self.col(i))).collect();
                let right: Vec<String> = compare.iter().map(|&i| format!("u.c{i}")).collect();
                format!("ROW({}) IS DISTINCT FROM ROW({})", left.join(", "), right.join(", "))
            }
        };
        let (start, end, current) = (&self.start, &self.end, &self.current);
        let table = &self.table;
        let mut names: Vec<String> = (0..self.width).map(|i| self.col(i)).collect();
        let mut picks: Vec<String> = (0..self.width)
            .map(|i| if present.contains(&i) { format!("u.c{i}") } else { format!("cur.{}", self.col(i)) })
            .collect();
        names.extend([start.clone(), end.clone(), current.clone()]);
        picks.extend(["u.t".to_owned(), "NULL".to_owned(), "true".to_owned()]);
        let sets: Vec<String> = (0..self.width)
            .filter(|i| !self.keys.contains(i))
            .map(|i| format!("{0} = EXCLUDED.{0}", self.col(i)))
            .collect();
        let action = if sets.is_empty() {
            "NOTHING".to_owned()
        } else {
            format!("UPDATE SET {} WHERE x.{current}", sets.join(", "))
        };
        let conflict: Vec<String> = self.keys.iter().map(|&k| self.col(k)).chain([start.clone()]).collect();
        format!(
            "{values}, cur AS (SELECT x.* FROM {table} AS x, u WHERE {km} AND x.{current}), \
             closed AS (UPDATE {table} AS x SET {end} = u.t, {current} = false FROM u WHERE {km} AND x.{current} AND x.{start} < u.t AND {dx}) \
             INSERT INTO {table} AS x ({names}) OVERRIDING SYSTEM VALUE SELECT {picks} FROM u LEFT JOIN cur ON true \
             WHERE cur.{start} IS NULL OR (cur.{start} <= u.t AND {dcur}) ON CONFLICT ({conflict}) DO {action}",
            values = self.values(present),
            km = self.key_match("x"),
            dx = differs("x"),
            dcur = differs("cur"),
            names = names.join(", "),
            picks = picks.join(", "),
            conflict = conflict.join(", "),
        )
    }

    /// Finds the current version of a key (a row when there is one).
    fn current_sql(&self) -> String {
        format!(
            "{values} SELECT 1 FROM {table} AS x, u WHERE {km} AND x.{current}",
            values = self.values(&self.keys),
            table = self.table,
            km = self.key_match("x"),
            current = self.current
        )
    }

    /// Closes the current version of a key.
    fn close_sql(&self) -> String {
        let (start, end, current) = (&self.start, &self.end, &self.current);
        let table = &self.table;
        let km = self.key_match("x");
        format!(
            "{values}, gone AS (DELETE FROM {table} AS x USING u WHERE {km} AND x.{current} AND x.{start} = u.t) \
             UPDATE {table} AS x SET {end} = u.t, {current} = false FROM u WHERE {km} AND x.{current} AND x.{start} < u.t",
            values = self.values(&self.keys),
        )
    }

    fn key_params(&self, row: &[Option<String>], commit_time: &str) -> Vec<Option<String>> {
        self.keys.iter().map(|&k| row.get(k).cloned().flatten()).chain([Some(commit_time.to_owned())]).collect()
    }
}

/// The statements of one change against an SCD2 target relation.
pub(crate) fn statements(rel: &Relation, change: Change, commit_time: &str) -> Result<Vec<Statement>, Error> {
    let shape = Shape::of(rel)?;
    let version = |present: Vec<usize>, row: &[Option<String>]| -> Statement {
        let mut params: Vec<Option<String>> = present.iter().map(|&i| row.get(i).cloned().flatten()).collect();
        params.push(Some(commit_time.to_owned()));
        Statement::new(shape.version_sql(&present), params)
    };
    Ok(match change {
        Change::Insert { new, .. } => vec![version((0..shape.width).collect(), &new)],
        Change::Update { old, new, unchanged, .. } => {
            if let Some(k) = shape.keys.iter().find(|k| unchanged.contains(k)) {
                return Err(Error::new(
                    ErrorKind::Envelope,
                    format!("update of {} without a value for key column {k}", shape.table),
                ));
            }
            let mut out = Vec::with_capacity(3);
            if let Some(old) = old
                && shape.keys.iter().any(|&k| old.get(k) != new.get(k))
            {
                out.push(Statement::new(shape.close_sql(), shape.key_params(&old, commit_time)));
            }
            if !unchanged.is_empty() {
                // The values not sent are carried from the current version: there must be one
                // (never a version with NULL in their place).
                out.push(Statement {
                    sql: shape.current_sql(),
                    params: shape.key_params(&new, commit_time),
                    require: true,
                });
            }
            let present = (0..shape.width).filter(|i| !unchanged.contains(i)).collect();
            out.push(version(present, &new));
            out
        }
        Change::Delete { old, .. } => vec![Statement::new(shape.close_sql(), shape.key_params(&old, commit_time))],
        Change::Truncate { .. } => vec![truncate(rel, commit_time)?],
        Change::Schema(_) | Change::Backfill(_) => {
            return Err(Error::new(
                ErrorKind::Conflict,
                "a schema change or backfill reached the SCD2 writer; it is applied by the session",
            ));
        }
    })
}

/// A truncate closes every current version.
pub(crate) fn truncate(rel: &Relation, commit_time: &str) -> Result<Statement, Error> {
    let shape = Shape::of(rel)?;
    let sql = format!(
        "UPDATE {} SET {} = $1::text::timestamptz, {} = false WHERE {} AND {} < $1::text::timestamptz",
        shape.table, shape.end, shape.current, shape.current, shape.start
    );
    Ok(Statement::new(sql, vec![Some(commit_time.to_owned())]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use trempy_protocol::envelope::Column;

    use super::*;

    fn rel() -> Relation {
        let col = |name: &str, type_name: &str, key: bool| Column {
            name: name.into(),
            type_name: type_name.into(),
            key,
            ..Column::default()
        };
        Relation {
            id: 1,
            schema: "public".into(),
            table: "emp".into(),
            columns: vec![
                col("id", "integer", true),
                col("name", "text", false),
                col("bio", "text", false),
                col("scd_start_date", "timestamp with time zone", true),
                col("scd_end_date", "timestamp with time zone", false),
                col("scd_current", "boolean", false),
            ],
        }
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    #[test]
    fn an_insert_opens_a_version_at_the_commit_time() {
        let out =
            statements(&rel(), Change::Insert { rel: 1, new: vec![s("1"), s("a"), None] }, "2026-01-01T00:00:00Z")
                .unwrap();
        assert_eq!(out.len(), 1);
        let Statement { sql, params, require } = &out[0];
        assert!(!require);
        assert_eq!(params, &vec![s("1"), s("a"), None, s("2026-01-01T00:00:00Z")]);
        assert!(sql.starts_with("WITH u AS (SELECT $1::text::integer AS c0, $2::text::text AS c1, $3::text::text AS c2, $4::text::timestamptz AS t)"), "{sql}");
        assert!(sql.contains("ROW(x.\"name\", x.\"bio\") IS DISTINCT FROM ROW(u.c1, u.c2)"), "{sql}");
        assert!(sql.ends_with("ON CONFLICT (\"id\", \"scd_start_date\") DO UPDATE SET \"name\" = EXCLUDED.\"name\", \"bio\" = EXCLUDED.\"bio\" WHERE x.\"scd_current\""), "{sql}");
    }

    #[test]
    fn unchanged_toast_is_carried_from_the_current_version() {
        let change = Change::Update { rel: 1, old: None, new: vec![s("1"), s("b"), None], unchanged: vec![2] };
        let out = statements(&rel(), change, "t").unwrap();
        assert_eq!(out.len(), 2);
        // first: the current version must exist (else the task halts rather than carry NULL)
        assert!(out[0].require);
        assert_eq!(out[0].params, vec![s("1"), s("t")]);
        assert!(
            out[0]
                .sql
                .ends_with("SELECT 1 FROM \"public\".\"emp\" AS x, u WHERE x.\"id\" = u.c0 AND x.\"scd_current\""),
            "{}",
            out[0].sql
        );
        let Statement { sql, params, require } = &out[1];
        assert!(!require);
        assert_eq!(params.len(), 3);
        assert!(sql.contains("SELECT u.c0, u.c1, cur.\"bio\", u.t, NULL, true FROM u LEFT JOIN cur"), "{sql}");
        assert!(sql.contains("ROW(x.\"name\") IS DISTINCT FROM ROW(u.c1)"), "{sql}");
    }

    #[test]
    fn a_key_change_closes_the_old_key_and_a_delete_closes() {
        let change = Change::Update {
            rel: 1,
            old: Some(vec![s("1"), None, None]),
            new: vec![s("2"), s("b"), s("c")],
            unchanged: vec![],
        };
        let out = statements(&rel(), change, "t").unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].params, vec![s("1"), s("t")]);
        assert!(out[0].sql.contains("SET \"scd_end_date\" = u.t, \"scd_current\" = false"));
        let out = statements(&rel(), Change::Delete { rel: 1, old: vec![s("2"), None, None] }, "t").unwrap();
        assert!(out[0].sql.contains("DELETE FROM \"public\".\"emp\" AS x USING u WHERE x.\"id\" = u.c0 AND x.\"scd_current\" AND x.\"scd_start_date\" = u.t"));
    }

    #[test]
    fn a_relation_without_scd2_columns_or_key_is_an_error() {
        let mut r = rel();
        r.columns.truncate(2);
        assert!(statements(&r, Change::Delete { rel: 1, old: vec![] }, "t").is_err());
        let mut r = rel();
        r.columns[0].key = false;
        assert!(statements(&r, Change::Delete { rel: 1, old: vec![] }, "t").is_err());
    }
}
