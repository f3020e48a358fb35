//! Sequence values from the source ([`trempy_protocol::sequence`]): each target sequence is set
//! forward to the source's last value, never backwards, so that a target promoted at a cutover
//! hands out values past every replicated one.
//!
//! The target sequence of a source sequence owned by a column (identity or serial) is the one
//! owned by that column's target (where the worker says the task's transformations put the
//! column), else the sequence of the same schema and name. A missing one is created when the
//! task creates target tables (`task.create_table_if_not_exists`), and becomes the default of the
//! owning target column once that column exists without one. Otherwise a sequence the task
//! lists halts the task naming it, like a missing target table, and an identity or serial
//! column's sequence is skipped with one warning (its target column draws from none).

use std::collections::HashSet;

use tokio_postgres::Client;
use tracing::{debug, warn};
use trempy_protocol::sequence::SequenceValue;

use crate::error::{Error, ErrorKind};
use crate::ident::qualified;

/// The target table and column that own the target of `value`, if the source sequence is owned:
/// where the worker says the task's transformations put the owning column, else the same names.
fn owner_target(value: &SequenceValue) -> Option<(String, String)> {
    let owner = value.owner.as_ref()?;
    Some(match &owner.target {
        Some([schema, table, column]) => (qualified(schema, table), column.clone()),
        None => (qualified(&owner.schema, &owner.table), owner.column.clone()),
    })
}

/// What to do with the values of a sequence the target lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missing {
    /// Create it (the task creates target tables).
    Create,
    /// Halt naming it: the task lists it (`sequences`).
    Halt,
    /// Skip it with a warning: an identity or serial column's sequence, whose target column
    /// draws from none (the DBA's choice).
    Skip,
}

/// Sets each target sequence forward to its source value; returns how many moved.
/// `missing` says what a sequence the target lacks gets; `warned` holds the sequences skipped
/// so far (one warning each).
pub(crate) async fn apply(
    client: &Client,
    values: &[SequenceValue],
    missing: impl Fn(&SequenceValue) -> Missing,
    warned: &mut HashSet<String>,
) -> Result<usize, Error> {
    let mut moved = 0;
    for value in values {
        let name = qualified(&value.schema, &value.name);
        let fail = |e: &tokio_postgres::Error| Error::target(e).with_table(name.clone());
        let owner = owner_target(value);
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
                let what = missing(value);
                if !exists {
                    match what {
                        Missing::Create => create_sequence(client, value, &name).await?,
                        Missing::Halt => {
                            return Err(Error::new(
                                ErrorKind::TargetSql,
                                format!("target sequence {name} does not exist (the task lists it in sequences): create it, or set task.create_table_if_not_exists"),
                            )
                            .with_sqlstate("42P01")
                            .with_table(name));
                        }
                        Missing::Skip => {
                            if warned.insert(name.clone()) {
                                let column = owner.as_ref().map_or_else(String::new, |(t, c)| {
                                    format!(" (owned by {t}.{})", crate::ident::quote_ident(c))
                                });
                                warn!(sequence = %name, "the target has no sequence for {name}{column}, whose column there draws from none: its values are not carried (create it, or give the target column an identity)");
                            }
                            continue;
                        }
                    }
                }
                // A sequence TREMpy creates becomes the default of the owning target column,
                // once that column exists (in CDC the table may come later than the values).
                if what == Missing::Create
                    && let Some((table, column)) = &owner
                {
                    attach_default(client, &name, table, column).await?;
                }
                name.clone()
            }
        };
        let current: Option<i64> = client
            .query_one("SELECT pg_catalog.pg_sequence_last_value($1::text::regclass)", &[&target])
            .await
            .map_err(|e| fail(&e))?
            .get(0);
        if value.ahead_of(current) {
            client
                .execute("SELECT pg_catalog.setval($1::text::regclass, $2, true)", &[&target, &value.last_value])
                .await
                .map_err(|e| fail(&e))?;
            moved += 1;
        }
    }
    debug!(sequences = values.len(), moved, "sequence values applied");
    Ok(moved)
}

/// Creates the target sequence (and its schema).
async fn create_sequence(client: &Client, value: &SequenceValue, name: &str) -> Result<(), Error> {
    let fail = |e: tokio_postgres::Error| Error::target(&e).with_table(name.to_owned());
    client
        .execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", crate::ident::quote_ident(&value.schema)), &[])
        .await
        .map_err(fail)?;
    // type_name is one of bigint, integer, smallint (checked when the message was parsed)
    client
        .execute(
            &format!("CREATE SEQUENCE IF NOT EXISTS {name} AS {} INCREMENT BY {}", value.type_name, value.increment),
            &[],
        )
        .await
        .map_err(fail)?;
    Ok(())
}

/// Makes the sequence the default of the target column when that column exists and has no
/// default and is no identity column.
async fn attach_default(client: &Client, name: &str, table: &str, column: &str) -> Result<(), Error> {
    let fail = |e: tokio_postgres::Error| Error::target(&e).with_table(name.to_owned());
    let bare: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                             WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped
                               AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = '')",
            &[&table, &column],
        )
        .await
        .map_err(fail)?
        .get(0);
    if bare {
        let column = crate::ident::quote_ident(column);
        client
            .execute(
                &format!(
                    "ALTER TABLE {table} ALTER COLUMN {column} SET DEFAULT pg_catalog.nextval('{}'::regclass)",
                    name.replace('\'', "''")
                ),
                &[],
            )
            .await
            .map_err(fail)?;
        client.execute(&format!("ALTER SEQUENCE {name} OWNED BY {table}.{column}"), &[]).await.map_err(fail)?;
    }
    Ok(())
}
