//! The full load: each table of the task is copied, in load order, under its own REPEATABLE
//! READ snapshot, and its rows are published in chunks (COPY text) ahead of any CDC message.
//!
//! State lives in `trempy.task_tables`, one row per table and generation. A table's row says
//! `copied`, with the snapshot it was copied under, in the same transaction as the copy itself,
//! so a worker interrupted mid-table copies that table again (a new `attempt`, from its first
//! row, under a new snapshot) and the applier starts that table over. CDC then uses the
//! snapshots to leave out what the copies already contain ([`trempy_protocol::handoff`]).

mod copy;

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use trempy_protocol::handoff::{Handoff, Snapshot};
use trempy_protocol::settings::TaskSettings;

pub(crate) use copy::{Copied, copy_table};

use crate::error::{Error, ErrorKind};

/// A table whose copy is due.
#[derive(Debug, Clone)]
pub(crate) struct Due {
    pub(crate) position: u32,
    pub(crate) schema: String,
    pub(crate) table: String,
    pub(crate) relid: u32,
    pub(crate) attempt: u32,
    /// The copy's id: one more than any copy of the task before it (`trempy.tasks.copy_seq`).
    pub(crate) copy_id: u64,
}

/// What the load needs next.
#[derive(Debug)]
pub(crate) enum Next {
    /// Copy this table.
    Copy(Due),
    /// Every table is copied.
    Done,
}

/// Records the tables to copy (those not recorded yet, in load order; a table no longer in the
/// settings is forgotten) and returns the next one to copy, its attempt already counted.
pub(crate) fn next(
    client: &mut SpiClient<'_>,
    task: &str,
    generation: u32,
    settings: &TaskSettings,
) -> Result<Next, Error> {
    let generation = i32::try_from(generation).unwrap_or(i32::MAX);
    let keep: Vec<String> = settings.tables.iter().map(|t| format!("{}.{}", t.schema_name, t.table_name)).collect();
    client.update(
        "DELETE FROM trempy.task_tables WHERE task_name = $1 AND (generation <> $2 OR NOT (schema_name || '.' || table_name = ANY ($3)))",
        None,
        &[task.into(), generation.into(), keep.into()],
    )?;
    for table in settings.tables_in_load_order() {
        let qualified =
            format!("{}.{}", spi::quote_identifier(&table.schema_name), spi::quote_identifier(&table.table_name));
        let recorded = !client
            .select(
                "SELECT 1 FROM trempy.task_tables WHERE task_name = $1 AND schema_name = $2 AND table_name = $3",
                Some(1),
                &[task.into(), table.schema_name.as_str().into(), table.table_name.as_str().into()],
            )?
            .is_empty();
        if recorded {
            continue;
        }
        let estimate = crate::table_shape::row_source(client, &table.schema_name, &table.table_name)
            .ok()
            .and_then(|source| estimate_rows(client, &source));
        client.update(
            "INSERT INTO trempy.task_tables (task_name, generation, position, schema_name, table_name, relid, rows_estimated)
             SELECT $1, $2, coalesce((SELECT max(position) + 1 FROM trempy.task_tables WHERE task_name = $1), 0), $3, $4, $5::regclass, $6",
            None,
            &[task.into(), generation.into(), table.schema_name.as_str().into(), table.table_name.as_str().into(), qualified.as_str().into(), estimate.into()],
        )?;
    }
    let due = client.update(
        "WITH d AS (SELECT schema_name, table_name FROM trempy.task_tables
                     WHERE task_name = $1 AND (state <> 'copied' OR ($2 AND NOT for_cdc)) ORDER BY position LIMIT 1),
              c AS (UPDATE trempy.tasks SET copy_seq = copy_seq + 1 WHERE task_name = $1 AND EXISTS (SELECT 1 FROM d) RETURNING copy_seq)
         UPDATE trempy.task_tables t SET attempt = attempt + 1, state = 'copying', started_at = now(), rows_copied = 0, bytes_copied = 0,
                copy_id = (SELECT copy_seq FROM c)
           FROM d
          WHERE t.task_name = $1 AND t.schema_name = d.schema_name AND t.table_name = d.table_name
         RETURNING t.position, t.schema_name, t.table_name, t.relid::int8, t.attempt, t.copy_id",
        None,
        &[task.into(), settings.streams().into()],
    )?;
    if due.is_empty() {
        return Ok(Next::Done);
    }
    let row = due.first();
    let number = |v: Option<i32>| u32::try_from(v.unwrap_or_default()).unwrap_or_default();
    Ok(Next::Copy(Due {
        position: number(row.get::<i32>(1)?),
        schema: row.get::<String>(2)?.unwrap_or_default(),
        table: row.get::<String>(3)?.unwrap_or_default(),
        relid: u32::try_from(row.get::<i64>(4)?.unwrap_or_default()).unwrap_or_default(),
        attempt: number(row.get::<i32>(5)?),
        copy_id: u64::try_from(row.get::<i64>(6)?.unwrap_or_default()).unwrap_or_default(),
    }))
}

/// The planner's estimate of a table's rows (it accounts for tables never analyzed).
fn estimate_rows(client: &SpiClient<'_>, source: &str) -> Option<i64> {
    let plan = client.select(&format!("EXPLAIN (FORMAT JSON) SELECT 1 FROM {source}"), Some(1), &[]).ok()?;
    let text = plan.first().get::<pgrx::Json>(1).ok()??;
    text.0.get(0)?.get("Plan")?.get("Plan Rows")?.as_f64().map(|rows| rows as i64)
}

/// The copy snapshots CDC must check changes against: those of copied tables whose snapshot the
/// slot has not yet passed (a transaction visible in a snapshot committed before its LSN).
pub(crate) fn handoff(client: &SpiClient<'_>, task: &str, confirmed: trempy_protocol::Lsn) -> Result<Handoff, Error> {
    let rows = client.select(
        "SELECT relid::int8, snapshot FROM trempy.task_tables WHERE task_name = $1 AND snapshot IS NOT NULL AND snapshot_lsn > $2::pg_lsn",
        None,
        &[task.into(), confirmed.to_string().as_str().into()],
    )?;
    let mut handoff = Handoff::new();
    for row in rows {
        let relid = u32::try_from(row.get::<i64>(1)?.unwrap_or_default()).unwrap_or_default();
        let text = row.get::<String>(2)?.unwrap_or_default();
        let snapshot = Snapshot::parse(&text)
            .map_err(|e| Error::new(ErrorKind::Catalog, format!("trempy.task_tables of task \"{task}\": {e}")))?;
        handoff.add(relid, snapshot);
    }
    Ok(handoff)
}
