//! The task's publication and replication slot. The publication is always created before the
//! slot: changes decoded with a historic snapshot older than the publication fail forever.

use pgrx::PgSqlErrorCode;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use trempy_protocol::Lsn;
use trempy_protocol::names::TaskNames;

use crate::error::{Error, ErrorKind};

fn sql_error(message: String) -> ! {
    pgrx::pg_sys::panic::ErrorReport::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, message, "trempy").report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Explains why the task's slot or publication name is already taken, if it is.
pub(crate) fn name_conflict(client: &SpiClient<'_>, names: &TaskNames) -> Option<String> {
    let slot = names.slot();
    let slot_db = client
        .select("SELECT coalesce(database::text, '(physical)') FROM pg_replication_slots WHERE slot_name = $1", Some(1), &[slot.as_str().into()])
        .ok()
        .and_then(|t| t.first().get::<String>(1).ok().flatten());
    if let Some(db) = slot_db {
        return Some(format!("replication slot \"{slot}\" already exists (database {db}); drop it or choose another task name"));
    }
    let publication = names.publication();
    let pub_exists = client
        .select("SELECT 1 FROM pg_publication WHERE pubname = $1", Some(1), &[publication.as_str().into()])
        .map(|t| !t.is_empty())
        .unwrap_or(false);
    pub_exists.then(|| format!("publication \"{publication}\" already exists; drop it or choose another task name"))
}

/// Creates the task's publication for exactly these tables.
pub(crate) fn create_publication(client: &mut SpiClient<'_>, names: &TaskNames, tables: &[(String, String)]) {
    let list: Vec<String> = tables.iter().map(|(s, t)| format!("{}.{}", spi::quote_identifier(s), spi::quote_identifier(t))).collect();
    let sql = format!("CREATE PUBLICATION {} FOR TABLE {}", spi::quote_identifier(names.publication()), list.join(", "));
    client.update(sql.as_str(), None, &[]).unwrap_or_else(|err| sql_error(format!("could not create publication \"{}\": {err}", names.publication())));
}

/// Makes the task's publication cover exactly these tables.
pub(crate) fn set_publication_tables(client: &mut SpiClient<'_>, names: &TaskNames, tables: &[(String, String)]) {
    let list: Vec<String> = tables.iter().map(|(s, t)| format!("{}.{}", spi::quote_identifier(s), spi::quote_identifier(t))).collect();
    let sql = format!("ALTER PUBLICATION {} SET TABLE {}", spi::quote_identifier(names.publication()), list.join(", "));
    client.update(sql.as_str(), None, &[]).unwrap_or_else(|err| sql_error(format!("could not change publication \"{}\": {err}", names.publication())));
}

/// Drops the task's slot (once no process uses it) and its publication, by exact name.
pub(crate) fn drop_slot_and_publication(client: &mut SpiClient<'_>, names: &TaskNames) {
    drop_slot(client, names);
    let sql = format!("DROP PUBLICATION IF EXISTS {}", spi::quote_identifier(names.publication()));
    client.update(sql.as_str(), None, &[]).unwrap_or_else(|err| sql_error(format!("could not drop publication \"{}\": {err}", names.publication())));
}

/// Drops the task's slot, by exact name, once no process uses it.
pub(crate) fn drop_slot(client: &mut SpiClient<'_>, names: &TaskNames) {
    let slot = names.slot();
    for _ in 0..600 {
        let active = client
            .select(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()",
                Some(1),
                &[slot.as_str().into()],
            )
            .ok()
            .and_then(|t| if t.is_empty() { None } else { t.first().get::<bool>(1).ok().flatten() });
        match active {
            None => break,
            Some(false) => {
                client
                    .update("SELECT pg_drop_replication_slot($1)", None, &[slot.as_str().into()])
                    .unwrap_or_else(|err| sql_error(format!("could not drop replication slot \"{slot}\": {err}")));
                break;
            }
            Some(true) => {
                let _ = client.update("SELECT pg_sleep(0.05)", None, &[]);
            }
        }
    }
}

/// Where the slot stands: its confirmed position and how far WAL has been flushed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Position {
    pub(crate) confirmed: Lsn,
    pub(crate) flushed: Lsn,
}

/// The slot's position, or `None` when the slot does not exist yet. Read-only: no XID, no WAL.
pub(crate) fn position(client: &SpiClient<'_>, names: &TaskNames) -> Result<Option<Position>, Error> {
    let table = client.select(
        "SELECT confirmed_flush_lsn::text, pg_current_wal_flush_lsn()::text FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()",
        Some(1),
        &[names.slot().as_str().into()],
    )?;
    if table.is_empty() {
        return Ok(None);
    }
    let row = table.first();
    let confirmed = row.get::<String>(1)?.ok_or_else(|| Error::new(ErrorKind::Catalog, format!("slot \"{}\" has no confirmed position (a physical slot?)", names.slot())))?;
    let flushed = row.get::<String>(2)?.unwrap_or_default();
    Ok(Some(Position { confirmed: Lsn::parse(&confirmed)?, flushed: Lsn::parse(&flushed)? }))
}

/// Creates the slot (pgoutput). Must run in a transaction that has written nothing.
pub(crate) fn create_slot(client: &SpiClient<'_>, names: &TaskNames) -> Result<(), Error> {
    let publication_exists = !client.select("SELECT 1 FROM pg_publication WHERE pubname = $1", Some(1), &[names.publication().as_str().into()])?.is_empty();
    if !publication_exists {
        return Err(Error::new(ErrorKind::Catalog, format!("publication \"{}\" does not exist; drop and re-create the task", names.publication())));
    }
    client.select("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", None, &[names.slot().as_str().into()])?;
    Ok(())
}

/// Moves the slot's confirmed position to `lsn`: everything before it will never be decoded
/// again. Only called once RabbitMQ has confirmed every message up to `lsn`.
pub(crate) fn advance(client: &SpiClient<'_>, names: &TaskNames, lsn: Lsn) -> Result<(), Error> {
    client.select("SELECT pg_replication_slot_advance($1, $2::pg_lsn)", None, &[names.slot().as_str().into(), lsn.to_string().as_str().into()])?;
    Ok(())
}
