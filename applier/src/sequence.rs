//! Sequence values from the source ([`trempy_protocol::sequence`]): each target sequence is set
//! forward to the source's last value, never backwards, so that a target promoted at a cutover
//! hands out values past every replicated one.
//!
//! The target sequence of a source sequence owned by a column (identity or serial) is the one
//! owned by that column's target (the target table the task's rules give the source table, the
//! column of the same name), else the sequence of the same schema and name. A missing one is
//! created when the task creates target tables (`task.create_table_if_not_exists`), and then
//! becomes the default of the owning target column if that column has none; otherwise the task
//! halts naming it, like a missing target table.

use tokio_postgres::Client;
use tracing::debug;
use trempy_protocol::sequence::SequenceValue;

use crate::catalog::qualified;
use crate::error::{Error, ErrorKind};
use crate::rules::Rules;

/// The target table and column that own the target of `value`, if the source sequence is owned.
fn owner_target(value: &SequenceValue, rules: &Rules) -> Option<(String, String)> {
    let owner = value.owner.as_ref()?;
    let table = rules.target(owner.relid).map_or_else(|| qualified(&owner.schema, &owner.table), |t| qualified(&t.schema, &t.table));
    Some((table, owner.column.clone()))
}

/// Sets each target sequence forward to its source value; returns how many moved.
pub(crate) async fn apply(client: &Client, values: &[SequenceValue], rules: &Rules, create: bool) -> Result<usize, Error> {
    let mut moved = 0;
    for value in values {
        let name = qualified(&value.schema, &value.name);
        let fail = |e: &tokio_postgres::Error| Error::target(e).with_table(name.clone());
        let owner = owner_target(value, rules);
        let owned: Option<String> = match &owner {
            Some((table, column)) => client
                .query_one(
                    "SELECT CASE WHEN pg_catalog.to_regclass($1) IS NOT NULL
                                  AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped)
                            THEN pg_catalog.pg_get_serial_sequence($1, $2) END",
                    &[table, column],
                )
                .await
                .map_err(|e| fail(&e))?
                .get(0),
            None => None,
        };
        let target = match owned {
            Some(sequence) => sequence,
            None => {
                let exists: bool = client
                    .query_one("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1) AND c.relkind = 'S')", &[&name])
                    .await
                    .map_err(|e| fail(&e))?
                    .get(0);
                if !exists {
                    if !create {
                        return Err(Error::new(
                            ErrorKind::TargetSql,
                            format!("target sequence {name} does not exist (the source's values for it have nowhere to go): create it, or set task.create_table_if_not_exists"),
                        )
                        .with_sqlstate("42P01")
                        .with_table(name));
                    }
                    create_sequence(client, value, &name, owner.as_ref()).await?;
                }
                name.clone()
            }
        };
        let current: Option<i64> = client.query_one("SELECT pg_catalog.pg_sequence_last_value($1::text::regclass)", &[&target]).await.map_err(|e| fail(&e))?.get(0);
        if value.ahead_of(current) {
            client.execute("SELECT pg_catalog.setval($1::text::regclass, $2, true)", &[&target, &value.last_value]).await.map_err(|e| fail(&e))?;
            moved += 1;
        }
    }
    debug!(sequences = values.len(), moved, "sequence values applied");
    Ok(moved)
}

/// Creates the target sequence, and makes it the default of the owning target column when that
/// column has no default and is no identity column.
async fn create_sequence(client: &Client, value: &SequenceValue, name: &str, owner: Option<&(String, String)>) -> Result<(), Error> {
    let fail = |e: tokio_postgres::Error| Error::target(&e).with_table(name.to_owned());
    client.execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", crate::apply::quote_ident(&value.schema)), &[]).await.map_err(fail)?;
    // type_name is one of bigint, integer, smallint (checked when the message was parsed)
    client.execute(&format!("CREATE SEQUENCE IF NOT EXISTS {name} AS {} INCREMENT BY {}", value.type_name, value.increment), &[]).await.map_err(fail)?;
    let Some((table, column)) = owner else { return Ok(()) };
    let bare: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                             WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped
                               AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = '')",
            &[table, column],
        )
        .await
        .map_err(fail)?
        .get(0);
    if bare {
        let column = crate::apply::quote_ident(column);
        client.execute(&format!("ALTER TABLE {table} ALTER COLUMN {column} SET DEFAULT pg_catalog.nextval('{}'::regclass)", name.replace('\'', "''")), &[]).await.map_err(fail)?;
        client.execute(&format!("ALTER SEQUENCE {name} OWNED BY {table}.{column}"), &[]).await.map_err(fail)?;
    }
    Ok(())
}
