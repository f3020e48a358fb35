//! Tables without a key: updates and deletes find their target row by its whole old value.
//!
//! A source table with no primary key and no replica identity index is either insert-only (its
//! identity is DEFAULT or NOTHING: PostgreSQL refuses its updates and deletes while it is
//! published) or `REPLICA IDENTITY FULL`, whose updates and deletes carry the whole old row.
//! Each such change becomes one statement that picks **one** target row equal to the old row,
//! column by column (`LIMIT 1`, by `tableoid` and `ctid`), and updates or deletes just that row:
//! when identical rows exist, one of them changes, as at the source (and as native logical
//! replication does).
//!
//! A column compares by its text form (`t.c::text = ($n::type)::text`, the same output function
//! on both sides, so equal values and only those match, for every type, also those without an
//! equality operator such as `json` or `point`), and a column of a type whose equality is
//! exact-enough to narrow the search also by `=`, so that an index on the target is used when
//! one fits. A NULL old value matches `IS NULL`.

use trempy_protocol::envelope::Relation;
use trempy_protocol::typename::without_modifiers;

use crate::error::{Error, ErrorKind};
use crate::ident::quote_ident;

/// Types whose `=` is a btree equality that an index on the target can serve. The text
/// comparison beside it keeps the match exact (`=` holds for `1.0` and `1.00`).
const INDEXABLE: &[&str] = &[
    "smallint",
    "integer",
    "bigint",
    "numeric",
    "real",
    "double precision",
    "text",
    "character varying",
    "character",
    "\"char\"",
    "name",
    "boolean",
    "date",
    "time without time zone",
    "time with time zone",
    "timestamp without time zone",
    "timestamp with time zone",
    "interval",
    "uuid",
    "bytea",
    "oid",
    "inet",
    "cidr",
    "macaddr",
    "money",
    "jsonb",
    "pg_lsn",
];

fn indexable(type_name: &str) -> bool {
    INDEXABLE.contains(&without_modifiers(type_name).as_str())
}

/// One statement for one change, with its text parameters.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Statement {
    pub(crate) sql: String,
    pub(crate) params: Vec<Option<String>>,
}

/// How an update that finds no equal row ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missing {
    /// Nothing is written (`default` mode warns with the count).
    Skip,
    /// The new row is inserted (`upsert` mode, and a row entering a filter).
    Insert,
}

/// `WITH m AS (SELECT tableoid, ctid … WHERE <old row> LIMIT 1)` and the condition that picks
/// that row; pushes the old values it needs onto `params`.
fn matching(
    rel: &Relation,
    table: &str,
    old: &[Option<String>],
    params: &mut Vec<Option<String>>,
) -> Result<(String, String), Error> {
    if old.len() != rel.columns.len() {
        return Err(Error::new(
            ErrorKind::Envelope,
            format!("the old row of {table} has {} values for {} columns", old.len(), rel.columns.len()),
        )
        .with_table(table.to_owned()));
    }
    let mut conditions = Vec::with_capacity(old.len());
    for (column, value) in rel.columns.iter().zip(old) {
        let c = format!("t.{}", quote_ident(&column.name));
        match value {
            None => conditions.push(format!("{c} IS NULL")),
            Some(value) => {
                params.push(Some(value.clone()));
                let p = format!("${}::text::{}", params.len(), column.type_name);
                if indexable(&column.type_name) {
                    conditions.push(format!("{c} = {p}"));
                }
                conditions.push(format!("{c}::text = ({p})::text"));
            }
        }
    }
    let with = format!(
        "m AS (SELECT t.tableoid AS o, t.ctid AS c FROM {table} AS t WHERE {} LIMIT 1)",
        conditions.join(" AND ")
    );
    Ok((with, "t.ctid = (SELECT m.c FROM m) AND t.tableoid = (SELECT m.o FROM m)".to_owned()))
}

/// Deletes one target row equal to `old`.
pub(crate) fn delete(rel: &Relation, table: &str, old: &[Option<String>]) -> Result<Statement, Error> {
    let mut params = Vec::with_capacity(old.len());
    let (with, picked) = matching(rel, table, old, &mut params)?;
    Ok(Statement { sql: format!("WITH {with} DELETE FROM {table} AS t WHERE {picked}"), params })
}

/// Updates one target row equal to `old` to `new` (whole rows: a keyless table's updates carry
/// the whole old row, from which unchanged TOASTed values were taken). With
/// [`Missing::Insert`], inserts `new` when no row is equal to `old`.
pub(crate) fn update(
    rel: &Relation,
    table: &str,
    old: &[Option<String>],
    new: Vec<Option<String>>,
    missing: Missing,
) -> Result<Statement, Error> {
    if new.len() != rel.columns.len() {
        return Err(Error::new(
            ErrorKind::Envelope,
            format!("the new row of {table} has {} values for {} columns", new.len(), rel.columns.len()),
        )
        .with_table(table.to_owned()));
    }
    let mut params = Vec::with_capacity(old.len() + new.len());
    let (with, picked) = matching(rel, table, old, &mut params)?;
    let first_new = params.len() + 1;
    params.extend(new);
    let values: Vec<String> =
        rel.columns.iter().enumerate().map(|(i, c)| format!("${}::text::{}", first_new + i, c.type_name)).collect();
    let sets: Vec<String> =
        rel.columns.iter().zip(&values).map(|(c, v)| format!("{} = {v}", quote_ident(&c.name))).collect();
    let update = format!("UPDATE {table} AS t SET {} WHERE {picked}", sets.join(", "));
    let sql = match missing {
        Missing::Skip => format!("WITH {with} {update}"),
        Missing::Insert => {
            let columns: Vec<String> = rel.columns.iter().map(|c| quote_ident(&c.name)).collect();
            format!(
                "WITH {with}, u AS ({update} RETURNING 1) INSERT INTO {table} ({}) OVERRIDING SYSTEM VALUE SELECT {} WHERE NOT EXISTS (SELECT 1 FROM u)",
                columns.join(", "),
                values.join(", ")
            )
        }
    };
    Ok(Statement { sql, params })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use trempy_protocol::envelope::Column;

    use super::*;

    fn rel() -> Relation {
        Relation {
            id: 1,
            schema: "public".into(),
            table: "history".into(),
            columns: vec![
                Column { name: "tid".into(), type_name: "integer".into(), type_oid: 23, ..Column::default() },
                Column { name: "doc".into(), type_name: "json".into(), type_oid: 114, ..Column::default() },
                Column {
                    name: "at".into(),
                    type_name: "timestamp(3) with time zone".into(),
                    type_oid: 1184,
                    ..Column::default()
                },
            ],
        }
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    const T: &str = "\"public\".\"history\"";

    #[test]
    fn a_delete_picks_one_row_equal_to_the_old_one() {
        let st = delete(&rel(), T, &[s("7"), s("{\"a\": 1}"), None]).unwrap();
        assert_eq!(
            st.sql,
            "WITH m AS (SELECT t.tableoid AS o, t.ctid AS c FROM \"public\".\"history\" AS t \
             WHERE t.\"tid\" = $1::text::integer AND t.\"tid\"::text = ($1::text::integer)::text AND t.\"doc\"::text = ($2::text::json)::text AND t.\"at\" IS NULL LIMIT 1) \
             DELETE FROM \"public\".\"history\" AS t WHERE t.ctid = (SELECT m.c FROM m) AND t.tableoid = (SELECT m.o FROM m)"
        );
        assert_eq!(st.params, vec![s("7"), s("{\"a\": 1}")]);
    }

    #[test]
    fn an_update_sets_every_column_and_may_insert_when_nothing_matches() {
        let old = [s("7"), None, s("2024-01-01 00:00:00+00")];
        let new = vec![s("8"), s("[]"), None];
        let skip = update(&rel(), T, &old, new.clone(), Missing::Skip).unwrap();
        assert!(skip.sql.starts_with("WITH m AS ("), "{}", skip.sql);
        assert!(skip.sql.contains("t.\"at\" = $2::text::timestamp(3) with time zone AND t.\"at\"::text = ($2::text::timestamp(3) with time zone)::text"), "{}", skip.sql);
        assert!(skip.sql.ends_with("UPDATE \"public\".\"history\" AS t SET \"tid\" = $3::text::integer, \"doc\" = $4::text::json, \"at\" = $5::text::timestamp(3) with time zone WHERE t.ctid = (SELECT m.c FROM m) AND t.tableoid = (SELECT m.o FROM m)"), "{}", skip.sql);
        assert_eq!(skip.params, vec![s("7"), s("2024-01-01 00:00:00+00"), s("8"), s("[]"), None]);
        let insert = update(&rel(), T, &old, new, Missing::Insert).unwrap();
        assert!(
            insert.sql.ends_with(
                "RETURNING 1) INSERT INTO \"public\".\"history\" (\"tid\", \"doc\", \"at\") OVERRIDING SYSTEM VALUE SELECT $3::text::integer, $4::text::json, $5::text::timestamp(3) with time zone WHERE NOT EXISTS (SELECT 1 FROM u)"
            ),
            "{}",
            insert.sql
        );
    }

    #[test]
    fn rows_of_the_wrong_width_are_refused() {
        assert!(delete(&rel(), T, &[s("1")]).is_err());
        assert!(update(&rel(), T, &[s("1"), None, None], vec![s("1")], Missing::Skip).is_err());
    }

    #[test]
    fn types_that_narrow_by_equality() {
        assert!(indexable("numeric(12,2)"));
        assert!(indexable("timestamp(3) without time zone"));
        assert!(indexable("character varying(3)"));
        assert!(!indexable("character varying(3)[]"));
        assert!(!indexable("json"));
        assert!(!indexable("point"));
        assert!(!indexable("\"My Schema\".mood"));
    }
}
