//! Copies one table under a REPEATABLE READ snapshot and publishes its rows in chunks.

use std::ffi::CStr;

use pgrx::prelude::*;
use trempy_protocol::copytext;
use trempy_protocol::envelope::{self, LoadChunk, Prepare, StreamId};

use super::Due;
use crate::amqp::Publisher;
use crate::error::{Error, ErrorKind};
use crate::outbox::{confirm, send};
use crate::session::each_row;
use crate::table_shape;

// pg_stat_progress_copy parameters (commands/progress.h).
const PROGRESS_COPY_BYTES_PROCESSED: i32 = 0;
const PROGRESS_COPY_TUPLES_PROCESSED: i32 = 2;
const PROGRESS_COPY_COMMAND: i32 = 4;
const PROGRESS_COPY_TYPE: i32 = 5;
const PROGRESS_COPY_COMMAND_TO: i64 = 2;
const PROGRESS_COPY_TYPE_CALLBACK: i64 = 4;

/// What a copy did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Copied {
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
    pub(crate) messages: u64,
}

/// Copies `due` and publishes it; records it as copied (with its snapshot) when RabbitMQ has
/// confirmed every chunk. Runs inside a REPEATABLE READ transaction (see
/// [`crate::worker::in_repeatable_read_transaction`]), so that every query sees one snapshot.
pub(crate) fn copy_table(
    stream: &StreamId,
    prepare: Prepare,
    for_cdc: bool,
    due: &Due,
    publisher: &Publisher,
    max_message_bytes: usize,
) -> Result<Copied, Error> {
    // SAFETY: reads a variable of this backend on its main thread.
    if unsafe { pg_sys::XactIsoLevel } != pg_sys::XACT_REPEATABLE_READ as i32 {
        return Err(Error::new(ErrorKind::Postgres, "a table must be copied in a REPEATABLE READ transaction"));
    }
    Spi::connect_mut(|client| {
        // The first query takes the transaction's snapshot; the LSN read after it is at or past
        // the commit record of every transaction the snapshot sees.
        let head = client.select(
            "SELECT pg_catalog.pg_current_snapshot()::text, pg_catalog.pg_current_wal_insert_lsn()::text,
                    to_char(statement_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            Some(1),
            &[],
        )?;
        let row = head.first();
        let snapshot = row.get::<String>(1)?.unwrap_or_default();
        let snapshot_lsn = row.get::<String>(2)?.unwrap_or_default();
        let snapshot_time = row.get::<String>(3)?.unwrap_or_default();
        let relation = table_shape::describe_table(client, due.relid)?;
        if relation.columns.is_empty() {
            return Err(Error::new(
                ErrorKind::Catalog,
                format!("table {}.{} has no columns to copy", due.schema, due.table),
            ));
        }
        let columns: Vec<String> =
            relation.columns.iter().map(|c| spi::quote_identifier(&c.name).to_string()).collect();
        let sql = format!(
            "SELECT {} FROM {}",
            columns.join(", "),
            table_shape::row_source(client, &relation.schema, &relation.table)?
        );

        // Output functions, as COPY TO uses them.
        let mut outputs: Vec<pg_sys::FmgrInfo> = Vec::with_capacity(relation.columns.len());
        for column in &relation.columns {
            let mut func = pg_sys::InvalidOid;
            let mut varlena = false;
            // SAFETY: catalog lookups on the main thread inside a transaction.
            unsafe {
                pg_sys::getTypeOutputInfo(pg_sys::Oid::from(column.type_oid), &mut func, &mut varlena);
                let mut info = std::mem::zeroed::<pg_sys::FmgrInfo>();
                pg_sys::fmgr_info(func, &mut info);
                outputs.push(info);
            }
        }

        // SAFETY: reports progress in pg_stat_progress_copy for this backend.
        unsafe {
            pg_sys::pgstat_progress_start_command(
                pg_sys::ProgressCommandType::PROGRESS_COMMAND_COPY,
                pg_sys::Oid::from(due.relid),
            );
            pg_sys::pgstat_progress_update_param(PROGRESS_COPY_COMMAND, PROGRESS_COPY_COMMAND_TO);
            pg_sys::pgstat_progress_update_param(PROGRESS_COPY_TYPE, PROGRESS_COPY_TYPE_CALLBACK);
        }
        let mut chunk = LoadChunk {
            rel: relation.id,
            copy_id: due.copy_id,
            table_index: due.position,
            attempt: due.attempt,
            seq: 0,
            last: false,
            rows: 0,
            snapshot_time,
            prepare: Some(prepare),
            data: String::new(),
        };
        let mut copied = Copied { rows: 0, bytes: 0, messages: 0 };
        let mut writer = copytext::Writer::with_capacity(max_message_bytes + max_message_bytes / 4);
        let emit = |writer: &mut copytext::Writer,
                    chunk: &mut LoadChunk,
                    copied: &mut Copied,
                    last: bool|
         -> Result<(), Error> {
            chunk.last = last;
            chunk.rows = writer.rows();
            let data = writer.take();
            let body = envelope::load_message(stream, &relation, chunk, &data)?;
            copied.rows += chunk.rows;
            copied.bytes += data.len() as u64;
            copied.messages += 1;
            let id = format!("{}:load:{}:{}:{}", stream.task, stream.generation, chunk.copy_id, chunk.seq);
            send(publisher, body, id)?;
            chunk.seq += 1;
            chunk.prepare = None;
            // SAFETY: progress reporting for this backend.
            unsafe {
                pg_sys::pgstat_progress_update_param(
                    PROGRESS_COPY_TUPLES_PROCESSED,
                    i64::try_from(copied.rows).unwrap_or(i64::MAX),
                );
                pg_sys::pgstat_progress_update_param(
                    PROGRESS_COPY_BYTES_PROCESSED,
                    i64::try_from(copied.bytes).unwrap_or(i64::MAX),
                );
            }
            Ok(())
        };

        let mut cursor = client.try_open_cursor(sql.as_str(), &[])?;
        each_row(&mut cursor, "trempy table copy", |table| {
            for (i, output) in outputs.iter_mut().enumerate() {
                match table.get_datum_by_ordinal(i + 1)? {
                    None => writer.value(None),
                    // SAFETY: the type's output function on a datum of the current row; the
                    // C string it returns lives in the page context until the page is freed.
                    Some(datum) => writer
                        .value(Some(unsafe { CStr::from_ptr(pg_sys::OutputFunctionCall(output, datum)) }.to_bytes())),
                }
            }
            writer.end_row();
            if writer.len() >= max_message_bytes {
                emit(&mut writer, &mut chunk, &mut copied, false)?;
            }
            Ok(())
        })?;
        drop(cursor);
        emit(&mut writer, &mut chunk, &mut copied, true)?;
        confirm(publisher)?;
        // SAFETY: ends this backend's progress report.
        unsafe { pg_sys::pgstat_progress_end_command() };
        client.update(
            "UPDATE trempy.task_tables SET state = 'copied', rows_copied = $4, bytes_copied = $5, snapshot = $6, snapshot_lsn = $7::pg_lsn, for_cdc = $8, finished_at = now()
              WHERE task_name = $1 AND schema_name = $2 AND table_name = $3",
            None,
            &[
                stream.task.as_str().into(),
                due.schema.as_str().into(),
                due.table.as_str().into(),
                i64::try_from(copied.rows).unwrap_or(i64::MAX).into(),
                i64::try_from(copied.bytes).unwrap_or(i64::MAX).into(),
                snapshot.as_str().into(),
                snapshot_lsn.as_str().into(),
                for_cdc.into(),
            ],
        )?;
        Ok(copied)
    })
}
