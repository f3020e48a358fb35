//! One decoding call: peek pgoutput changes through an SPI cursor, turn them into envelope
//! messages, and hand each to the AMQP thread as soon as it is complete, so that memory stays
//! bounded whatever the size of the source transactions. Nothing here advances the slot.

use std::collections::HashMap;

use pgrx::FromDatum;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use trempy_protocol::Lsn;
use trempy_protocol::assemble::{Assembler, Counts};
use trempy_protocol::envelope::{Column, Relation, StreamId};
use trempy_protocol::handoff::Handoff;
use trempy_protocol::names::TaskNames;
use trempy_protocol::pgoutput;

use crate::amqp::Publisher;
use crate::error::{Error, ErrorKind};
use crate::outbox::{confirm, send};
use crate::session::each_row;

/// What one decoding call is to do.
pub(crate) struct Batch<'a> {
    pub(crate) names: &'a TaskNames,
    pub(crate) stream: &'a StreamId,
    /// The task's tables, by OID (stable across renames): the publication may hold more for a
    /// moment, and the event trigger describes schema changes of every task's tables.
    pub(crate) tables: Vec<u32>,
    /// Changes that tables' full loads already contain, to leave out.
    pub(crate) handoff: Handoff,
    /// Decode what committed before this position.
    pub(crate) upto: Lsn,
    pub(crate) batch_size: i32,
    pub(crate) max_message_bytes: usize,
    /// Describe NOT NULL and the created column types too (only needed when the applier may
    /// create target tables: `create_table_if_not_exists`); they cost catalog reads per relation
    /// at every decoding call.
    pub(crate) for_create: bool,
    /// Commit LSN of the stream's last transaction published before this call, if known: the
    /// first transaction of the call names it (the applier detects gaps that way).
    pub(crate) after: Option<Lsn>,
}

/// What one decoding call published.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Published {
    pub(crate) counts: Counts,
    /// End of the last complete transaction published, if any: where the slot may advance.
    pub(crate) end_lsn: Option<Lsn>,
    /// Commit LSN of the last transaction published, if any.
    pub(crate) commit_lsn: Option<Lsn>,
}

/// Decodes the changes committed before `upto` (at most about `batch_size` changes, always whole
/// transactions) and publishes them. Returns once RabbitMQ has confirmed every message.
pub(crate) fn publish_batch(
    client: &SpiClient<'_>,
    batch: Batch<'_>,
    publisher: &Publisher,
) -> Result<Published, Error> {
    let Batch { names, stream, tables, handoff, upto, batch_size, max_message_bytes, for_create, after } = batch;
    let mut cursor = client.try_open_cursor(
        "SELECT data FROM pg_catalog.pg_logical_slot_peek_binary_changes($1, $2::pg_lsn, $3, 'proto_version', '1', 'publication_names', $4, 'messages', 'true')",
        &[names.slot().as_str().into(), upto.to_string().as_str().into(), batch_size.into(), names.publication().as_str().into()],
    )?;
    let mut assembler =
        Assembler::new(stream, max_message_bytes).with_handoff(handoff).with_tables(tables).after(after);
    let mut types: HashMap<(u32, i32), String> = HashMap::new();
    let mut describe = |relation: &pgoutput::Relation<'_>| describe(client, &mut types, relation, for_create);
    let mut sent = 0_u64;
    each_row(&mut cursor, "trempy decoding", |table| {
        let datum = table
            .get_datum_by_ordinal(1)?
            .ok_or_else(|| Error::new(ErrorKind::Decode, "logical decoding returned a NULL data row"))?;
        // SAFETY: a bytea datum of the current tuple, valid until the page is freed.
        let data = unsafe { <&[u8] as FromDatum>::from_polymorphic_datum(datum, false, pg_sys::BYTEAOID) }
            .ok_or_else(|| Error::new(ErrorKind::Decode, "logical decoding returned a NULL data row"))?;
        let message = pgoutput::parse(data)?;
        if let Some(body) = assembler.push(message, &mut describe)? {
            send(publisher, body, format!("{}:{upto}:{sent}", names.task()))?;
            sent += 1;
        }
        Ok(())
    })?;
    if let Some(body) = assembler.finish()? {
        send(publisher, body, format!("{}:{upto}:{sent}", names.task()))?;
    }
    let counts = assembler.counts();
    if counts.messages > 0 {
        confirm(publisher)?;
    }
    let commit_lsn = if counts.transactions > 0 { assembler.last_commit_lsn() } else { None };
    Ok(Published { counts, end_lsn: assembler.last_end_lsn(), commit_lsn })
}

/// Describes a relation for the envelope: type names as `format_type` prints them, and key
/// columns. Under REPLICA IDENTITY FULL pgoutput marks every column as key, so the primary key
/// is read from the catalog instead.
fn describe(
    client: &SpiClient<'_>,
    types: &mut HashMap<(u32, i32), String>,
    relation: &pgoutput::Relation<'_>,
    for_create: bool,
) -> Result<Relation, Error> {
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
