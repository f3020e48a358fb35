//! Reads the source catalog: what a table looks like, for the full load and for the extras
//! (NOT NULL, the type a created target table gets) that pgoutput's Relation message lacks.
//!
//! The description itself is one SQL function, `trempy.table_shape` (sql/ddl.sql), which the
//! schema-change event trigger uses too: a relation description and a schema change's shape can
//! never disagree.

use pgrx::spi::{self, SpiClient};
use trempy_protocol::envelope::{Column, Relation};
use trempy_protocol::schema::Shape;
use trempy_protocol::settings::ColumnDesc;

use crate::error::{Error, ErrorKind};

/// Describes a table from the catalog: its replicated columns (not dropped, not generated, in
/// order), their types, NOT NULL, and the key (the replica identity index, else the primary key).
pub(crate) fn describe_table(client: &SpiClient<'_>, relid: u32) -> Result<Relation, Error> {
    let rows = client.select("SELECT trempy.table_shape($1::oid)::text", Some(1), &[i64::from(relid).into()])?;
    let text = if rows.is_empty() { None } else { rows.first().get::<String>(1)? };
    let text =
        text.ok_or_else(|| Error::new(ErrorKind::Catalog, format!("table with OID {relid} no longer exists")))?;
    let shape: Shape = serde_json::from_str(&text)
        .map_err(|e| Error::new(ErrorKind::Catalog, format!("trempy.table_shape({relid}): {e}")))?;
    let columns = shape
        .columns
        .into_iter()
        .map(|c| Column {
            name: c.name,
            type_name: c.type_name,
            type_oid: c.type_oid,
            key: c.key,
            not_null: c.not_null,
            create_type: c.create_type,
        })
        .collect();
    Ok(Relation { id: relid, schema: shape.schema, table: shape.table, columns })
}

/// A table's replicated columns as the task's rules see them.
pub(crate) fn rule_columns(relation: Relation) -> Vec<ColumnDesc> {
    relation
        .columns
        .into_iter()
        .map(|c| ColumnDesc { name: c.name, type_name: c.type_name, key: c.key, not_null: c.not_null })
        .collect()
}

/// What a full load reads all rows of a replicated table from: `ONLY schema.table` for an
/// ordinary table (never the rows of tables that inherit from it), `schema.table` for a
/// partitioned table (every partition's rows, as the root publishes them).
pub(crate) fn row_source(client: &SpiClient<'_>, schema: &str, table: &str) -> Result<String, Error> {
    let qualified = format!("{}.{}", spi::quote_identifier(schema), spi::quote_identifier(table));
    let rows = client.select(
        "SELECT c.relkind = 'p' FROM pg_catalog.pg_class c WHERE c.oid = $1::text::regclass",
        Some(1),
        &[qualified.as_str().into()],
    )?;
    let partitioned = !rows.is_empty() && rows.first().get::<bool>(1)?.unwrap_or(false);
    Ok(if partitioned { qualified } else { format!("ONLY {qualified}") })
}
