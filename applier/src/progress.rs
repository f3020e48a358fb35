//! The watermark: the last source commit LSN applied for a task, kept in the target database
//! and always updated in the same transaction as the rows it covers.

use trempy_protocol::Lsn;

use crate::error::{Error, ErrorKind};
use crate::load::LoadMark;
use crate::stream::Current;

/// Where a task stands in the target, as committed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Position {
    pub(crate) watermark: Lsn,
    /// The task incarnation and generation applied, and the incarnations left behind.
    pub(crate) stream: Current,
    /// The task settings last received (JSON).
    pub(crate) settings: Option<String>,
    pub(crate) load: Option<LoadMark>,
}

/// Where the task stands (its progress row is created if missing).
pub(crate) async fn load(client: &mut tokio_postgres::Client, task: &str) -> Result<Position, Error> {
    client
        .execute("INSERT INTO trempy.applier_progress (task_name, commit_lsn) VALUES ($1, '0/0') ON CONFLICT (task_name) DO NOTHING", &[&task])
        .await?;
    let row = client
        .query_one(
            "SELECT commit_lsn::text, generation, settings::text, load_table, load_attempt, load_seq, load_merge, incarnation, retired_incarnations, load_copy
               FROM trempy.applier_progress WHERE task_name = $1",
            &[&task],
        )
        .await?;
    let text: String = row.get(0);
    let watermark =
        Lsn::parse(&text).map_err(|e| Error::new(ErrorKind::Conflict, format!("progress row of task {task}: {e}")))?;
    let number = |i: usize| row.get::<_, Option<i32>>(i).and_then(|v| u32::try_from(v).ok());
    let load = match (number(3), number(4), number(5)) {
        (Some(table_index), Some(attempt), Some(seq)) => Some(LoadMark {
            copy_id: row.get::<_, Option<i64>>(9).and_then(|v| u64::try_from(v).ok()).unwrap_or(0),
            table_index,
            attempt,
            seq,
            merge: row.get::<_, Option<bool>>(6).unwrap_or(false),
        }),
        _ => None,
    };
    let stream = Current { incarnation: row.get(7), generation: number(1).unwrap_or(1), retired: row.get(8) };
    Ok(Position { watermark, stream, settings: row.get(2), load })
}

/// What one target transaction applied.
#[derive(Debug, Clone, Default)]
pub(crate) struct Applied {
    pub(crate) watermark: Lsn,
    pub(crate) commit_time: Option<String>,
    pub(crate) transactions: u64,
    pub(crate) changes: u64,
    /// The incarnation and generation the transaction applies (a newer one than committed
    /// starts over).
    pub(crate) stream: Current,
    /// New settings received, to record.
    pub(crate) settings: Option<String>,
    pub(crate) load: Option<LoadMark>,
    pub(crate) rows_loaded: u64,
}

impl Applied {
    /// Nothing applied yet, from this committed position.
    pub(crate) fn continuing(from: &Position) -> Self {
        Self { watermark: from.watermark, stream: from.stream.clone(), load: from.load, ..Self::default() }
    }

    /// True when committing this must move the recorded position.
    pub(crate) fn moves(&self, from: &Position) -> bool {
        self.watermark != from.watermark
            || self.stream != from.stream
            || self.load != from.load
            || self.settings.is_some()
            || self.transactions > 0
    }
}

/// Moves the task's position from `from` to `applied` inside the open transaction. Fails (so
/// the transaction is rolled back) if the row no longer holds `from`: another applier moved it.
pub(crate) async fn advance(
    tx: &tokio_postgres::Client,
    task: &str,
    from: &Position,
    applied: &Applied,
) -> Result<(), Error> {
    let number = |v: Option<u32>| v.map(|n| i32::try_from(n).unwrap_or(i32::MAX));
    let updated = tx
        .execute(
            "UPDATE trempy.applier_progress
                SET commit_lsn = $2::text::pg_lsn, source_commit_time = coalesce($4::text::timestamptz, source_commit_time),
                    transactions_applied = CASE WHEN generation = $8 AND incarnation IS NOT DISTINCT FROM $16 THEN transactions_applied ELSE 0 END + $5,
                    changes_applied = CASE WHEN generation = $8 AND incarnation IS NOT DISTINCT FROM $16 THEN changes_applied ELSE 0 END + $6,
                    rows_loaded = CASE WHEN generation = $8 AND incarnation IS NOT DISTINCT FROM $16 THEN rows_loaded ELSE 0 END + $14,
                    applied_at = now(), generation = $8, settings = coalesce($9::text::jsonb, settings),
                    load_table = $10, load_attempt = $11, load_seq = $12, load_merge = $13,
                    incarnation = $16, retired_incarnations = $17, load_copy = $18
              WHERE task_name = $1 AND commit_lsn = $3::text::pg_lsn AND generation = $7 AND incarnation IS NOT DISTINCT FROM $15",
            &[
                &task,
                &applied.watermark.to_string(),
                &from.watermark.to_string(),
                &applied.commit_time,
                &i64::try_from(applied.transactions).unwrap_or(i64::MAX),
                &i64::try_from(applied.changes).unwrap_or(i64::MAX),
                &i32::try_from(from.stream.generation).unwrap_or(i32::MAX),
                &i32::try_from(applied.stream.generation).unwrap_or(i32::MAX),
                &applied.settings,
                &number(applied.load.map(|m| m.table_index)),
                &number(applied.load.map(|m| m.attempt)),
                &number(applied.load.map(|m| m.seq)),
                &applied.load.map(|m| m.merge),
                &i64::try_from(applied.rows_loaded).unwrap_or(i64::MAX),
                &from.stream.incarnation,
                &applied.stream.incarnation,
                &applied.stream.retired,
                &applied.load.map(|m| i64::try_from(m.copy_id).unwrap_or(i64::MAX)),
            ],
        )
        .await?;
    if updated == 1 {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Conflict,
            format!("the progress of task {task} moved under this applier (is another applier running?)"),
        ))
    }
}

/// Records `settings` as the settings in effect at the committed position `at`, which does not
/// move (newer settings found behind a message the task's rules cannot handle: see
/// `consume::lookahead`). Its own transaction; false if the position moved meanwhile.
pub(crate) async fn adopt_settings(
    client: &tokio_postgres::Client,
    task: &str,
    at: &Position,
    settings: &str,
) -> Result<bool, Error> {
    let updated = client
        .execute(
            "UPDATE trempy.applier_progress SET settings = $2::text::jsonb
              WHERE task_name = $1 AND commit_lsn = $3::text::pg_lsn AND generation = $4 AND incarnation IS NOT DISTINCT FROM $5",
            &[&task, &settings, &at.watermark.to_string(), &i32::try_from(at.stream.generation).unwrap_or(i32::MAX), &at.stream.incarnation],
        )
        .await?;
    Ok(updated == 1)
}

/// Starts a newer generation of the task at once (its own transaction; false if the position
/// moved meanwhile): an empty position, no load mark, counters reset, as the generation's first
/// message would (see `consume::lookahead`).
pub(crate) async fn start_generation(
    client: &tokio_postgres::Client,
    task: &str,
    at: &Position,
    generation: u32,
) -> Result<bool, Error> {
    let updated = client
        .execute(
            "UPDATE trempy.applier_progress
                SET generation = $2, commit_lsn = '0/0', transactions_applied = 0, changes_applied = 0, rows_loaded = 0,
                    load_table = NULL, load_attempt = NULL, load_seq = NULL, load_merge = NULL, load_copy = NULL, applied_at = now()
              WHERE task_name = $1 AND commit_lsn = $3::text::pg_lsn AND generation = $4 AND incarnation IS NOT DISTINCT FROM $5",
            &[
                &task,
                &i32::try_from(generation).unwrap_or(i32::MAX),
                &at.watermark.to_string(),
                &i32::try_from(at.stream.generation).unwrap_or(i32::MAX),
                &at.stream.incarnation,
            ],
        )
        .await?;
    Ok(updated == 1)
}

/// A source transaction whose first chunks are staged in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Staged {
    pub(crate) commit_lsn: Lsn,
    pub(crate) next_seq: u32,
}

/// What is staged for the task (committed).
pub(crate) async fn load_staged(client: &tokio_postgres::Client, task: &str) -> Result<Option<Staged>, Error> {
    let rows = client
        .query("SELECT commit_lsn::text, max(seq) FROM trempy.applier_staging WHERE task_name = $1 GROUP BY commit_lsn ORDER BY commit_lsn DESC", &[&task])
        .await?;
    let Some(row) = rows.first() else { return Ok(None) };
    let lsn: String = row.get(0);
    let max_seq: i32 = row.get(1);
    let commit_lsn =
        Lsn::parse(&lsn).map_err(|e| Error::new(ErrorKind::Conflict, format!("staging of task {task}: {e}")))?;
    Ok(Some(Staged { commit_lsn, next_seq: u32::try_from(max_seq).unwrap_or(0) + 1 }))
}

/// Stages one chunk (inside the caller's open transaction).
pub(crate) async fn stage(
    client: &tokio_postgres::Client,
    task: &str,
    commit_lsn: Lsn,
    seq: u32,
    body: &[u8],
) -> Result<(), Error> {
    client
        .execute(
            "INSERT INTO trempy.applier_staging (task_name, commit_lsn, seq, body) VALUES ($1, $2::text::pg_lsn, $3, $4)
             ON CONFLICT (task_name, commit_lsn, seq) DO UPDATE SET body = EXCLUDED.body",
            &[&task, &commit_lsn.to_string(), &i32::try_from(seq).unwrap_or(i32::MAX), &body],
        )
        .await?;
    Ok(())
}

/// Forgets every staged chunk of the task (inside the caller's open transaction).
pub(crate) async fn clear_staged(client: &tokio_postgres::Client, task: &str) -> Result<(), Error> {
    client.execute("DELETE FROM trempy.applier_staging WHERE task_name = $1", &[&task]).await?;
    Ok(())
}
