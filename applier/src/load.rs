//! Full-load chunks: each is written with `COPY … FROM STDIN` in the open target transaction,
//! together with the load mark (table, attempt, chunk) it reaches, so a restarted applier resumes
//! after the last committed chunk and never writes a chunk twice.
//!
//! Before a table's first chunk the target table is prepared as the task says (re-created,
//! created if missing, truncated). A table that is then empty is written with plain COPY; a table
//! that already holds rows (loading into existing data without `truncate_before_insert`) is
//! merged instead: COPY into a temporary table, then `INSERT … ON CONFLICT (key) DO UPDATE`.
//! A new attempt of the same table (the decoding worker was interrupted mid-table and copies it
//! again under a new snapshot) empties the table again first, unless it was being merged.
//!
//! Statements built from a message's names (always quoted) run one at a time through the
//! extended protocol, never as a multi-statement string.

use std::io::Cursor;
use std::pin::pin;

use futures_util::SinkExt;
use tokio_postgres::Client;
use trempy_protocol::envelope::{LoadChunk, Relation};

use crate::error::{Error, ErrorKind};
use crate::ident::qualified;
use crate::ident::quote_ident;
use crate::target_catalog::{self, Catalog};

/// The last load chunk applied in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LoadMark {
    /// The copy's id (strictly increasing over a task incarnation's copies; 0 in version-1
    /// messages).
    pub(crate) copy_id: u64,
    pub(crate) table_index: u32,
    pub(crate) attempt: u32,
    pub(crate) seq: u32,
    /// The table is being merged into existing rows rather than loaded empty.
    pub(crate) merge: bool,
}

/// What to do with a chunk, given the mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Applied already (a redelivery, or an older attempt).
    Skip,
    /// The next chunk of the current attempt.
    Continue,
    /// The first chunk of a table (`restart`: of a new attempt of the table last written).
    First { restart: bool },
}

/// Decides what to do with a chunk. Chunks are ordered by their copy's id, then their number: a
/// copy id at or below the mark's was applied already (or is an older copy queued before a newer
/// one), whatever position its table has. A chunk that does not follow the mark is an error: it
/// is never applied out of order and never acknowledged.
///
/// The first chunk of a copy that is not its table's first (`attempt` above 1: the worker was
/// interrupted mid-table, or the task switched from `full_load` to `full_load_and_cdc`) empties
/// the table again first, so rows the source deleted between the two snapshots go too; unless
/// that very table was last being merged into rows it already held.
pub(crate) fn verdict(mark: Option<LoadMark>, chunk: &LoadChunk) -> Result<Verdict, String> {
    let here = (chunk.copy_id, chunk.table_index, chunk.attempt, chunk.seq);
    let Some(m) = mark else {
        return if chunk.seq == 0 {
            Ok(Verdict::First { restart: chunk.attempt > 1 })
        } else {
            Err(format!("load chunk {here:?} arrived before the first chunk of its copy"))
        };
    };
    let there = (m.copy_id, m.table_index, m.attempt, m.seq);
    if here <= there {
        return Ok(Verdict::Skip);
    }
    let same_copy = chunk.copy_id == m.copy_id && chunk.table_index == m.table_index && chunk.attempt == m.attempt;
    if same_copy {
        return if chunk.seq == m.seq + 1 {
            Ok(Verdict::Continue)
        } else {
            Err(format!("load chunk {here:?} arrived after chunk {there:?}"))
        };
    }
    if chunk.seq == 0 {
        let same_table_merged = chunk.table_index == m.table_index && m.merge;
        let restart = chunk.attempt > 1 && !same_table_merged;
        return Ok(Verdict::First { restart });
    }
    Err(format!("load chunk {here:?} arrived after chunk {there:?}"))
}

/// Applies one chunk inside the open transaction and returns the new mark.
pub(crate) async fn apply(
    client: &Client,
    catalog: &mut Catalog,
    relation: &Relation,
    chunk: LoadChunk,
    verdict: Verdict,
    mark: Option<LoadMark>,
) -> Result<LoadMark, Error> {
    let table = qualified(&relation.schema, &relation.table);
    let merge = match verdict {
        Verdict::Skip => {
            return mark.ok_or_else(|| Error::new(ErrorKind::Conflict, "skipped a load chunk without a mark"));
        }
        Verdict::Continue => mark.is_some_and(|m| m.merge),
        Verdict::First { restart } => prepare(client, catalog, relation, &chunk, restart).await?,
    };
    let columns: Vec<String> = relation.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let data = Cursor::new(chunk.data.into_bytes());
    let target = if merge { "pg_temp.trempy_load".to_owned() } else { table.clone() };
    if merge {
        client
            .execute("DROP TABLE IF EXISTS pg_temp.trempy_load", &[])
            .await
            .map_err(|e| Error::target(&e).with_table(table.clone()))?;
        client
            .execute(
                &format!("CREATE TEMP TABLE trempy_load AS SELECT {} FROM {table} WITH NO DATA", columns.join(", ")),
                &[],
            )
            .await
            .map_err(|e| Error::target(&e).with_table(table.clone()))?;
    }
    let copy = format!("COPY {target} ({}) FROM STDIN", columns.join(", "));
    let sink = client
        .copy_in::<_, Cursor<Vec<u8>>>(copy.as_str())
        .await
        .map_err(|e| Error::target(&e).with_table(table.clone()))?;
    let mut sink = pin!(sink);
    sink.send(data).await.map_err(|e| Error::target(&e).with_table(table.clone()))?;
    let written = sink.as_mut().finish().await.map_err(|e| Error::target(&e).with_table(table.clone()))?;
    if written != chunk.rows {
        return Err(Error::new(
            ErrorKind::Envelope,
            format!("load chunk of {table} says {} rows but holds {written}", chunk.rows),
        )
        .with_table(table));
    }
    if merge {
        let keys: Vec<String> = relation.columns.iter().filter(|c| c.key).map(|c| quote_ident(&c.name)).collect();
        let sets: Vec<String> = relation
            .columns
            .iter()
            .filter(|c| !c.key)
            .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(&c.name)))
            .collect();
        let action = if sets.is_empty() { "NOTHING".to_owned() } else { format!("UPDATE SET {}", sets.join(", ")) };
        let sql = format!(
            "INSERT INTO {table} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM pg_temp.trempy_load ON CONFLICT ({}) DO {action}",
            keys.join(", "),
            cols = columns.join(", ")
        );
        client.execute(&sql, &[]).await.map_err(|e| Error::target(&e).with_table(table.clone()))?;
        client
            .execute("DROP TABLE pg_temp.trempy_load", &[])
            .await
            .map_err(|e| Error::target(&e).with_table(table.clone()))?;
    }
    Ok(LoadMark {
        copy_id: chunk.copy_id,
        table_index: chunk.table_index,
        attempt: chunk.attempt,
        seq: chunk.seq,
        merge,
    })
}

/// Prepares the target table before its first chunk; true when the load must merge into rows
/// the table already holds.
async fn prepare(
    client: &Client,
    catalog: &mut Catalog,
    relation: &Relation,
    chunk: &LoadChunk,
    restart: bool,
) -> Result<bool, Error> {
    let table = qualified(&relation.schema, &relation.table);
    let prepare = chunk.prepare.unwrap_or_default();
    let exists = catalog.columns(client, &relation.schema, &relation.table).await?.is_some();
    let created = if prepare.recreate || (!exists && prepare.create) {
        target_catalog::create_table(client, relation, prepare.recreate).await?;
        catalog.forget(&relation.schema, &relation.table);
        true
    } else if !exists {
        return Err(Error::new(
            ErrorKind::TargetSql,
            format!("target table {table} does not exist: create it, or set task.create_table_if_not_exists"),
        )
        .with_sqlstate("42P01")
        .with_table(table));
    } else {
        false
    };
    if !created && (prepare.truncate || restart) {
        client
            .execute(&format!("TRUNCATE {table}"), &[])
            .await
            .map_err(|e| Error::target(&e).with_table(table.clone()))?;
        return Ok(false);
    }
    if created {
        return Ok(false);
    }
    let has_rows = client
        .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), &[])
        .await
        .map_err(|e| Error::target(&e).with_table(table.clone()))?
        .get::<_, bool>(0);
    if has_rows && relation.columns.iter().all(|c| !c.key) {
        // Without a key there is nothing to merge on: appending would duplicate every row
        // the table already holds.
        return Err(Error::new(
            ErrorKind::TargetSql,
            format!(
                "target table {table} already holds rows and has no key to merge the loaded rows on (appending them would duplicate rows): \
                 empty it, or set task.full_load_settings.truncate_before_insert (or recreate_table_if_exists), then reload the task"
            ),
        )
        .with_table(table));
    }
    Ok(has_rows)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn chunk(copy_id: u64, table_index: u32, attempt: u32, seq: u32) -> LoadChunk {
        LoadChunk {
            rel: 1,
            copy_id,
            table_index,
            attempt,
            seq,
            last: false,
            rows: 0,
            snapshot_time: String::new(),
            prepare: None,
            data: String::new(),
        }
    }

    fn mark(copy_id: u64, table_index: u32, attempt: u32, seq: u32) -> Option<LoadMark> {
        Some(LoadMark { copy_id, table_index, attempt, seq, merge: false })
    }

    #[test]
    fn chunks_apply_in_order_once() {
        assert_eq!(verdict(None, &chunk(1, 0, 1, 0)), Ok(Verdict::First { restart: false }));
        assert!(verdict(None, &chunk(1, 0, 1, 1)).is_err());
        assert_eq!(verdict(mark(1, 0, 1, 0), &chunk(1, 0, 1, 1)), Ok(Verdict::Continue));
        assert_eq!(verdict(mark(1, 0, 1, 3), &chunk(1, 0, 1, 3)), Ok(Verdict::Skip));
        assert_eq!(verdict(mark(1, 0, 1, 3), &chunk(1, 0, 1, 2)), Ok(Verdict::Skip));
        assert!(verdict(mark(1, 0, 1, 3), &chunk(1, 0, 1, 5)).is_err());
    }

    #[test]
    fn new_tables_and_attempts_start_from_their_first_chunk() {
        assert_eq!(verdict(mark(1, 0, 1, 7), &chunk(2, 1, 1, 0)), Ok(Verdict::First { restart: false }));
        assert_eq!(verdict(mark(1, 0, 1, 7), &chunk(2, 0, 2, 0)), Ok(Verdict::First { restart: true }));
        assert!(verdict(mark(1, 0, 1, 7), &chunk(2, 0, 2, 1)).is_err());
        assert!(verdict(mark(1, 0, 1, 7), &chunk(2, 1, 1, 1)).is_err());
        // an older copy arriving late (it was queued before the new one) is skipped
        assert_eq!(verdict(mark(2, 0, 2, 0), &chunk(1, 0, 1, 9)), Ok(Verdict::Skip));
        assert_eq!(verdict(mark(5, 1, 1, 0), &chunk(4, 0, 3, 0)), Ok(Verdict::Skip));
    }

    #[test]
    fn a_table_added_at_a_reused_position_is_loaded() {
        // table C (position 1, copy 3) was removed; table D takes position 1 as copy 4 (its
        // first attempt: it is another table, whatever C's target held is not D's)
        assert_eq!(verdict(mark(3, 1, 1, 9), &chunk(4, 1, 1, 0)), Ok(Verdict::First { restart: false }));
        assert_eq!(verdict(mark(4, 1, 1, 0), &chunk(4, 1, 1, 1)), Ok(Verdict::Continue));
        // even after C had several attempts
        assert_eq!(verdict(mark(3, 1, 3, 9), &chunk(4, 1, 1, 0)), Ok(Verdict::First { restart: false }));
    }

    #[test]
    fn a_lower_position_copied_again_is_loaded_and_emptied_first() {
        // full_load copied A (0) then B (1); the switch to full_load_and_cdc copies A again
        assert_eq!(verdict(mark(2, 1, 1, 4), &chunk(3, 0, 2, 0)), Ok(Verdict::First { restart: true }));
        // a table merged into rows it held is not emptied by its own new attempt
        let merged = Some(LoadMark { copy_id: 2, table_index: 1, attempt: 1, seq: 4, merge: true });
        assert_eq!(verdict(merged, &chunk(3, 1, 2, 0)), Ok(Verdict::First { restart: false }));
    }
}
