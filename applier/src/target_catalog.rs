//! The target's catalog: the actual type of each target column (values are cast to it, so a
//! target column of another type than the source's, e.g. `text` for an enum, works) and the DDL
//! that creates a target table from a source description.

use std::collections::HashMap;

use tokio_postgres::Client;
use trempy_protocol::envelope::Relation;

use crate::ident::{qualified, quote_ident};
use trempy_protocol::typename;

use crate::error::{Error, ErrorKind};

/// Target column types, per target table, read once per session.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    tables: HashMap<(String, String), Option<HashMap<String, String>>>,
}

/// `schema.table`, quoted.
impl Catalog {
    /// Forgets what was read (after DDL).
    pub(crate) fn forget(&mut self, schema: &str, table: &str) {
        self.tables.remove(&(schema.to_owned(), table.to_owned()));
    }

    /// The target's column types of a table, `None` when the table does not exist.
    pub(crate) async fn columns(
        &mut self,
        client: &Client,
        schema: &str,
        table: &str,
    ) -> Result<Option<&HashMap<String, String>>, Error> {
        let key = (schema.to_owned(), table.to_owned());
        if !self.tables.contains_key(&key) {
            let rows = client
                .query(
                    "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod)
                       FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
                    &[&qualified(schema, table)],
                )
                .await
                .map_err(|e| Error::target(&e))?;
            let exists = !rows.is_empty();
            let columns: HashMap<String, String> =
                rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))).collect();
            self.tables.insert(key.clone(), exists.then_some(columns));
        }
        Ok(self.tables.get(&key).and_then(Option::as_ref))
    }

    /// Rewrites each relation's column types to the target's (columns the target lacks keep the
    /// source type: the statement then fails and names the column). When `create` is set, a
    /// missing target table is created first.
    pub(crate) async fn resolve(
        &mut self,
        client: &Client,
        relations: &mut [Relation],
        create: bool,
    ) -> Result<(), Error> {
        for relation in relations {
            if create && self.columns(client, &relation.schema, &relation.table).await?.is_none() {
                create_table(client, relation, false).await?;
                self.forget(&relation.schema, &relation.table);
            }
            if let Some(target) = self.columns(client, &relation.schema, &relation.table).await? {
                for column in &mut relation.columns {
                    if let Some(t) = target.get(&column.name) {
                        column.type_name.clone_from(t);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The type a created column gets: `create_type` when the source gave one, else `type`. Both
/// were checked when the message was parsed ([`trempy_protocol::typename`]); checked again here,
/// so that nothing but a type name is ever written into the DDL.
fn column_type(column: &trempy_protocol::envelope::Column, table: &str) -> Result<String, Error> {
    let ty = column.create_type.as_deref().unwrap_or(&column.type_name);
    typename::check_type(ty).map_err(|m| {
        Error::new(ErrorKind::Envelope, format!("the type of column {} of {table} {m}", quote_ident(&column.name)))
            .with_table(table.to_owned())
    })?;
    Ok(ty.to_owned())
}

/// `CREATE TABLE` for a source relation: same column names, the source types (domains resolved
/// to their base type, enums as text: see `Column::create_type`), NOT NULL, and the key as the
/// primary key. One statement; [`create_table`] creates the schema first.
pub(crate) fn create_table_sql(relation: &Relation, if_not_exists: bool) -> Result<String, Error> {
    let table = qualified(&relation.schema, &relation.table);
    let mut columns = Vec::with_capacity(relation.columns.len() + 1);
    for c in &relation.columns {
        let not_null = if c.not_null || c.key { " NOT NULL" } else { "" };
        columns.push(format!("{} {}{not_null}", quote_ident(&c.name), column_type(c, &table)?));
    }
    let keys: Vec<String> = relation.columns.iter().filter(|c| c.key).map(|c| quote_ident(&c.name)).collect();
    if !keys.is_empty() {
        columns.push(format!("PRIMARY KEY ({})", keys.join(", ")));
    }
    Ok(format!("CREATE TABLE {}{table} ({})", if if_not_exists { "IF NOT EXISTS " } else { "" }, columns.join(", ")))
}

/// Resolves every type a created table would get on the target (`pg_catalog.to_regtype`, which
/// parses its argument as a type name and nothing else): a type the target lacks is reported as
/// such (SQLSTATE 42704, the task halts until it exists) before any DDL runs.
async fn resolve_types(client: &Client, relation: &Relation) -> Result<(), Error> {
    let table = qualified(&relation.schema, &relation.table);
    for c in &relation.columns {
        let ty = column_type(c, &table)?;
        let known: bool = client
            .query_one("SELECT pg_catalog.to_regtype($1) IS NOT NULL", &[&ty])
            .await
            .map_err(|e| Error::target(&e).with_table(table.clone()))?
            .get(0);
        if !known {
            return Err(Error::new(
                ErrorKind::TargetSql,
                format!(
                    "cannot create {table}: type {ty} of column {} does not exist in the target",
                    quote_ident(&c.name)
                ),
            )
            .with_sqlstate("42704")
            .with_table(table));
        }
    }
    Ok(())
}

/// Creates the target table (see [`create_table_sql`]), dropping it first when `recreate`. Each
/// statement runs alone through the extended protocol (never as a multi-statement string), after
/// every type was resolved on the target.
pub(crate) async fn create_table(client: &Client, relation: &Relation, recreate: bool) -> Result<(), Error> {
    let table = qualified(&relation.schema, &relation.table);
    let create = create_table_sql(relation, !recreate)?;
    resolve_types(client, relation).await?;
    let fail = |e: tokio_postgres::Error| Error::target(&e).with_table(table.clone());
    client
        .execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&relation.schema)), &[])
        .await
        .map_err(fail)?;
    if recreate {
        client.execute(&format!("DROP TABLE IF EXISTS {table}"), &[]).await.map_err(fail)?;
    }
    client.execute(&create, &[]).await.map_err(fail)?;
    tracing::info!(table = %table, source_relation = relation.id, recreated = recreate, "target table created");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use trempy_protocol::envelope::Column;

    use super::*;

    #[test]
    fn create_table_reproduces_names_types_not_null_and_key() {
        let relation = Relation {
            id: 1,
            schema: "Sales \"EU\"".into(),
            table: "Ordér s".into(),
            columns: vec![
                Column { name: "id".into(), type_name: "bigint".into(), key: true, ..Column::default() },
                Column { name: "Line No".into(), type_name: "integer".into(), key: true, ..Column::default() },
                Column {
                    name: "amount".into(),
                    type_name: "numeric(12,2)".into(),
                    not_null: true,
                    ..Column::default()
                },
                Column {
                    name: "mood".into(),
                    type_name: "\"Sales \"\"EU\"\"\".mood".into(),
                    create_type: Some("text".into()),
                    ..Column::default()
                },
                Column {
                    name: "code".into(),
                    type_name: "public.code_domain[]".into(),
                    create_type: Some("character varying(3)[]".into()),
                    ..Column::default()
                },
            ],
        };
        assert_eq!(
            create_table_sql(&relation, true).unwrap(),
            "CREATE TABLE IF NOT EXISTS \"Sales \"\"EU\"\"\".\"Ordér s\" (\"id\" bigint NOT NULL, \
             \"Line No\" integer NOT NULL, \"amount\" numeric(12,2) NOT NULL, \"mood\" text, \"code\" character varying(3)[], PRIMARY KEY (\"id\", \"Line No\"))"
        );
    }

    #[test]
    fn a_forged_type_never_reaches_the_ddl() {
        let relation = Relation {
            id: 1,
            schema: "public".into(),
            table: "t".into(),
            columns: vec![Column {
                name: "id".into(),
                type_name: "integer".into(),
                key: true,
                create_type: Some("int); DROP TABLE public.canary; --".into()),
                ..Column::default()
            }],
        };
        let err = create_table_sql(&relation, true).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Envelope);
        assert!(err.message().contains("is not a type name") && !err.message().contains("canary"), "{}", err.message());
    }
}
