//! Describes a relation of the stream for the envelope, from the catalog as it is now (SPI, on
//! the worker's main thread, in the transaction the stream is read in): type names as
//! `format_type` prints them, key columns, and for tables the applier may create, NOT NULL and
//! the created column types.

use std::collections::HashMap;

use pgrx::spi::SpiClient;
use trempy_protocol::envelope::{Column, Relation};
use trempy_protocol::pgoutput;

use crate::error::{Error, ErrorKind};

/// Describes a relation for the envelope: type names as `format_type` prints them, and key
/// columns. Under REPLICA IDENTITY FULL pgoutput marks every column as key, so the primary key
/// is read from the catalog instead.
pub(crate) fn describe(
    client: &SpiClient<'_>,
    relation: &pgoutput::Relation<'_>,
    for_create: bool,
) -> Result<Relation, Error> {
    // format_type once per distinct type of the relation
    let mut types: HashMap<(u32, i32), String> = HashMap::new();
    let primary_key: Option<Vec<String>> = if relation.replica_identity == b'f' {
        let table = client.select(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
              WHERE i.indrelid = $1::oid AND i.indisprimary",
            None,
            &[i64::from(relation.oid).into()],
        )?;
        let mut names = Vec::new();
        for row in table {
            if let Some(name) = row.get::<String>(1)? {
                names.push(name);
            }
        }
        Some(names)
    } else {
        None
    };
    // NOT NULL and the type of a created target table, from the current catalog (the table may
    // have been dropped since: then without them).
    let current = if for_create { crate::table_shape::describe_table(client, relation.oid).ok() } else { None };
    let extras = |name: &str| {
        current
            .as_ref()
            .and_then(|r| r.columns.iter().find(|c| c.name == name))
            .map(|c| (c.not_null, c.create_type.clone()))
    };
    let mut columns = Vec::with_capacity(relation.columns.len());
    for column in &relation.columns {
        let key = (column.type_oid, column.type_modifier);
        let type_name = match types.get(&key) {
            Some(name) => name.clone(),
            None => {
                let name = client
                    .select(
                        "SELECT pg_catalog.format_type($1::oid, $2)",
                        Some(1),
                        &[i64::from(column.type_oid).into(), column.type_modifier.into()],
                    )?
                    .first()
                    .get::<String>(1)?
                    .ok_or_else(|| Error::new(ErrorKind::Decode, format!("unknown type oid {}", column.type_oid)))?;
                types.insert(key, name.clone());
                name
            }
        };
        let is_key = match &primary_key {
            Some(pk) => pk.iter().any(|name| name == column.name),
            None => column.is_key,
        };
        let (not_null, create_type) = extras(column.name).unwrap_or_default();
        columns.push(Column {
            name: column.name.to_owned(),
            type_name,
            type_oid: column.type_oid,
            key: is_key,
            not_null,
            create_type,
        });
    }
    let schema = if relation.namespace.is_empty() { "pg_catalog" } else { relation.namespace };
    Ok(Relation { id: relation.oid, schema: schema.to_owned(), table: relation.name.to_owned(), columns })
}
