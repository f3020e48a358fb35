//! The task's publication and replication slot. The publication is always committed before the
//! slot is created: changes decoded with a historic snapshot older than the publication fail
//! forever. Slots are created by the setup helper ([`crate::worker::setup`]) only, never by a
//! task worker: a slot that is gone is a failure to report, not something to re-create.
//!
//! Every call is schema-qualified (`pg_catalog.`), with arguments cast to the exact parameter
//! types, so that no function of another schema can stand in for PostgreSQL's own.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde::{Deserialize, Serialize};
use trempy_protocol::Lsn;
use trempy_protocol::names::TaskNames;

use crate::error::{Error, ErrorKind};

/// The identity of a slot, recorded when it is created (see `trempy.tasks.slot_*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SlotIdentity {
    /// The slot's consistent point: every transaction committed after it is decoded.
    pub(crate) lsn: String,
    /// `pg_control_system().system_identifier`.
    pub(crate) system_id: String,
    /// The timeline WAL was being written on.
    pub(crate) timeline: i32,
}

/// Explains why the task's slot or publication name is already taken, if it is.
pub(crate) fn name_conflict(client: &SpiClient<'_>, names: &TaskNames) -> Result<Option<String>, Error> {
    let slot = names.slot();
    let found = client.select(
        "SELECT coalesce(database::text, '(physical)') FROM pg_catalog.pg_replication_slots WHERE slot_name = $1::text::name",
        Some(1),
        &[slot.as_str().into()],
    )?;
    let slot_db = if found.is_empty() { None } else { found.first().get::<String>(1)? };
    if let Some(db) = slot_db {
        return Ok(Some(format!(
            "replication slot \"{slot}\" already exists (database {db}); drop it or choose another task name"
        )));
    }
    let publication = names.publication();
    let pub_exists = !client
        .select(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1::text::name",
            Some(1),
            &[publication.as_str().into()],
        )?
        .is_empty();
    Ok(pub_exists.then(|| format!("publication \"{publication}\" already exists; drop it or choose another task name")))
}

fn table_list(tables: &[(String, String)]) -> String {
    tables
        .iter()
        .map(|(s, t)| format!("{}.{}", spi::quote_identifier(s), spi::quote_identifier(t)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Creates the task's publication for exactly these tables.
pub(crate) fn create_publication(
    client: &mut SpiClient<'_>,
    names: &TaskNames,
    tables: &[(String, String)],
) -> Result<(), Error> {
    // A partitioned table publishes its partitions' changes as its own (one target table), and
    // partitions created or attached later are in it without any change to the publication.
    let sql = format!(
        "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)",
        spi::quote_identifier(names.publication()),
        table_list(tables)
    );
    client.update(sql.as_str(), None, &[]).map_err(|err| {
        Error::new(ErrorKind::Catalog, format!("could not create publication \"{}\": {err}", names.publication()))
    })?;
    Ok(())
}

/// Makes the task's publication cover exactly these tables.
pub(crate) fn set_publication_tables(
    client: &mut SpiClient<'_>,
    names: &TaskNames,
    tables: &[(String, String)],
) -> Result<(), Error> {
    let sql =
        format!("ALTER PUBLICATION {} SET TABLE {}", spi::quote_identifier(names.publication()), table_list(tables));
    client.update(sql.as_str(), None, &[]).map_err(|err| {
        Error::new(ErrorKind::Catalog, format!("could not change publication \"{}\": {err}", names.publication()))
    })?;
    via_partition_root(client, names)
}

/// True when the task's publication includes the table.
pub(crate) fn publication_has(
    client: &SpiClient<'_>,
    names: &TaskNames,
    schema: &str,
    table: &str,
) -> Result<bool, Error> {
    Ok(!client
        .select(
            "SELECT 1 FROM pg_catalog.pg_publication_tables WHERE pubname = $1::text::name AND schemaname = $2::text::name AND tablename = $3::text::name",
            Some(1),
            &[names.publication().as_str().into(), schema.into(), table.into()],
        )?
        .is_empty())
}

/// Adds a table to the task's publication.
pub(crate) fn add_publication_table(
    client: &mut SpiClient<'_>,
    names: &TaskNames,
    schema: &str,
    table: &str,
) -> Result<(), Error> {
    let sql = format!(
        "ALTER PUBLICATION {} ADD TABLE {}.{}",
        spi::quote_identifier(names.publication()),
        spi::quote_identifier(schema),
        spi::quote_identifier(table)
    );
    client.update(sql.as_str(), None, &[]).map_err(|err| {
        Error::new(ErrorKind::Catalog, format!("could not change publication \"{}\": {err}", names.publication()))
    })?;
    via_partition_root(client, names)
}

/// Publications made by an older TREMpy lack `publish_via_partition_root`.
fn via_partition_root(client: &mut SpiClient<'_>, names: &TaskNames) -> Result<(), Error> {
    let sql = format!(
        "ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
        spi::quote_identifier(names.publication())
    );
    client.update(sql.as_str(), None, &[]).map_err(|err| {
        Error::new(ErrorKind::Catalog, format!("could not change publication \"{}\": {err}", names.publication()))
    })?;
    Ok(())
}

/// Drops a publication by exact name, if it exists.
pub(crate) fn drop_publication_named(client: &mut SpiClient<'_>, publication: &str) -> Result<(), Error> {
    let sql = format!("DROP PUBLICATION IF EXISTS {}", spi::quote_identifier(publication));
    client.update(sql.as_str(), None, &[]).map_err(|err| {
        Error::new(ErrorKind::Catalog, format!("could not drop publication \"{publication}\": {err}"))
    })?;
    Ok(())
}

/// Drops the task's slot and its publication, by exact name.
pub(crate) fn drop_slot_and_publication(client: &mut SpiClient<'_>, names: &TaskNames) -> Result<(), Error> {
    drop_slot(client, names)?;
    drop_publication_named(client, &names.publication())
}

/// Drops the task's slot, by exact name, once no process uses it.
pub(crate) fn drop_slot(client: &mut SpiClient<'_>, names: &TaskNames) -> Result<(), Error> {
    drop_slot_named(client, &names.slot())
}

/// Drops a logical slot of this database by exact name, once no process uses it (waiting up to
/// 30 s). A slot still in use then is an error, never left behind silently.
pub(crate) fn drop_slot_named(client: &mut SpiClient<'_>, slot: &str) -> Result<(), Error> {
    for _ in 0..600 {
        let found = client.update(
            "SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1::text::name AND database = pg_catalog.current_database()",
            Some(1),
            &[slot.into()],
        )?;
        let active = if found.is_empty() { None } else { found.first().get::<bool>(1)? };
        match active {
            None => return Ok(()),
            Some(false) => {
                client
                    .update("SELECT pg_catalog.pg_drop_replication_slot($1::text::name)", None, &[slot.into()])
                    .map_err(|err| {
                        Error::new(ErrorKind::Catalog, format!("could not drop replication slot \"{slot}\": {err}"))
                    })?;
                return Ok(());
            }
            Some(true) => {
                client.update("SELECT pg_catalog.pg_sleep(0.05::float8)", None, &[])?;
            }
        }
    }
    let found = client.update(
        "SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = $1::text::name",
        Some(1),
        &[slot.into()],
    )?;
    let holder = if found.is_empty() { None } else { found.first().get::<i32>(1)? };
    Err(Error::new(
        ErrorKind::Catalog,
        format!(
            "replication slot \"{slot}\" is still in use by process {} after 30 s, so it was not dropped; stop that process (pg_terminate_backend) and try again",
            holder.map_or_else(|| "?".to_owned(), |p| p.to_string())
        ),
    ))
}

/// Where the slot stands: its confirmed position.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Position {
    pub(crate) confirmed: Lsn,
}

/// What the task worker finds when it looks for its slot.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Found {
    /// The slot is usable.
    Usable(Position),
    /// No slot of that name in this database.
    Missing,
    /// The slot was invalidated (`wal_status` = `lost`): WAL it needs was removed.
    Invalidated,
    /// A helper is creating (or a rolled-back call left) a slot of this name: wait.
    Claimed,
}

/// Looks for the task's slot. Read-only: no XID, no WAL.
pub(crate) fn find(client: &SpiClient<'_>, names: &TaskNames) -> Result<Found, Error> {
    let table = client.select(
        "SELECT confirmed_flush_lsn::text, wal_status,
                EXISTS (SELECT 1 FROM trempy.slot_claims c WHERE c.slot_name = s.slot_name::text)
           FROM pg_catalog.pg_replication_slots s WHERE slot_name = $1::text::name AND database = pg_catalog.current_database()",
        Some(1),
        &[names.slot().as_str().into()],
    )?;
    if table.is_empty() {
        return Ok(Found::Missing);
    }
    let row = table.first();
    if row.get::<bool>(3)?.unwrap_or(false) {
        return Ok(Found::Claimed);
    }
    if row.get::<String>(2)?.as_deref() == Some("lost") {
        return Ok(Found::Invalidated);
    }
    let Some(confirmed) = row.get::<String>(1)? else {
        return Ok(Found::Invalidated);
    };
    Ok(Found::Usable(Position { confirmed: Lsn::parse(&confirmed)? }))
}

/// Creates the slot (pgoutput) and returns its identity. Must run in a transaction that has
/// written nothing; waits for every transaction holding an xid to end.
pub(crate) fn create_slot(client: &SpiClient<'_>, names: &TaskNames) -> Result<SlotIdentity, Error> {
    let publication_exists = !client
        .select(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1::text::name",
            Some(1),
            &[names.publication().as_str().into()],
        )?
        .is_empty();
    if !publication_exists {
        return Err(Error::new(
            ErrorKind::Catalog,
            format!("publication \"{}\" does not exist; drop and re-create the task", names.publication()),
        ));
    }
    let lsn = client
        .select(
            "SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1::text::name, 'pgoutput'::name)",
            Some(1),
            &[names.slot().as_str().into()],
        )?
        .first()
        .get::<String>(1)?
        .unwrap_or_default();
    let (system_id, timeline) = here(client)?;
    Ok(SlotIdentity { lsn, system_id, timeline })
}

/// This cluster's system identifier and the timeline it writes WAL on (which changes when a
/// standby is promoted).
pub(crate) fn here(client: &SpiClient<'_>) -> Result<(String, i32), Error> {
    let table = client.select("SELECT system_id, timeline FROM trempy.server_identity()", Some(1), &[])?;
    let row = table.first();
    Ok((row.get::<String>(1)?.unwrap_or_default(), row.get::<i32>(2)?.unwrap_or_default()))
}
