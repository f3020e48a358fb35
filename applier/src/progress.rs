//! The watermark: the last source commit LSN applied for a task, kept in the target database
//! and always updated in the same transaction as the rows it covers.

use trempy_protocol::Lsn;

use crate::error::{Error, ErrorKind};

const SETUP: &str = "
SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS trempy;
CREATE TABLE IF NOT EXISTS trempy.applier_progress (
    task_name              text PRIMARY KEY,
    commit_lsn             pg_lsn NOT NULL,
    source_commit_time     timestamptz,
    transactions_applied   bigint NOT NULL DEFAULT 0,
    changes_applied        bigint NOT NULL DEFAULT 0,
    applied_at             timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE trempy.applier_progress IS
  'TREMpy: per task, the last source commit LSN applied here. Updated in the same transaction as the rows.';
";

/// Creates the progress table if needed and returns the task's watermark.
pub(crate) async fn load(client: &mut tokio_postgres::Client, task: &str) -> Result<Lsn, Error> {
    client.batch_execute(SETUP).await?;
    client
        .execute("INSERT INTO trempy.applier_progress (task_name, commit_lsn) VALUES ($1, '0/0') ON CONFLICT (task_name) DO NOTHING", &[&task])
        .await?;
    let row = client.query_one("SELECT commit_lsn::text FROM trempy.applier_progress WHERE task_name = $1", &[&task]).await?;
    let text: String = row.get(0);
    Lsn::parse(&text).map_err(|e| Error::new(ErrorKind::Conflict, format!("progress row of task {task}: {e}")))
}

/// What one target transaction applied.
#[derive(Debug, Clone, Default)]
pub(crate) struct Applied {
    pub(crate) watermark: Lsn,
    pub(crate) commit_time: Option<String>,
    pub(crate) transactions: u64,
    pub(crate) changes: u64,
}

/// Moves the watermark from `from` to `applied.watermark` inside the open transaction. Fails
/// (so the transaction is rolled back) if the row no longer holds `from`: another applier moved it.
pub(crate) async fn advance(tx: &tokio_postgres::Client, task: &str, from: Lsn, applied: &Applied) -> Result<(), Error> {
    let updated = tx
        .execute(
            "UPDATE trempy.applier_progress
                SET commit_lsn = $2::text::pg_lsn, source_commit_time = $4::text::timestamptz,
                    transactions_applied = transactions_applied + $5, changes_applied = changes_applied + $6, applied_at = now()
              WHERE task_name = $1 AND commit_lsn = $3::text::pg_lsn",
            &[
                &task,
                &applied.watermark.to_string(),
                &from.to_string(),
                &applied.commit_time,
                &i64::try_from(applied.transactions).unwrap_or(i64::MAX),
                &i64::try_from(applied.changes).unwrap_or(i64::MAX),
            ],
        )
        .await?;
    if updated == 1 {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::Conflict, format!("the progress of task {task} moved under this applier (is another applier running?)")))
    }
}

const STAGING_SETUP: &str = "
CREATE TABLE IF NOT EXISTS trempy.applier_staging (
    task_name  text NOT NULL,
    commit_lsn pg_lsn NOT NULL,
    seq        integer NOT NULL,
    body       bytea NOT NULL,
    PRIMARY KEY (task_name, commit_lsn, seq)
);
COMMENT ON TABLE trempy.applier_staging IS
  'TREMpy: chunks of a source transaction larger than one message, kept until its last chunk arrives.';
";

/// A source transaction whose first chunks are staged in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Staged {
    pub(crate) commit_lsn: Lsn,
    pub(crate) next_seq: u32,
}

/// Creates the staging table if needed and returns what is staged for the task (committed).
pub(crate) async fn load_staged(client: &tokio_postgres::Client, task: &str) -> Result<Option<Staged>, Error> {
    client.batch_execute(STAGING_SETUP).await?;
    let rows = client
        .query("SELECT commit_lsn::text, max(seq) FROM trempy.applier_staging WHERE task_name = $1 GROUP BY commit_lsn ORDER BY commit_lsn DESC", &[&task])
        .await?;
    let Some(row) = rows.first() else { return Ok(None) };
    let lsn: String = row.get(0);
    let max_seq: i32 = row.get(1);
    let commit_lsn = Lsn::parse(&lsn).map_err(|e| Error::new(ErrorKind::Conflict, format!("staging of task {task}: {e}")))?;
    Ok(Some(Staged { commit_lsn, next_seq: u32::try_from(max_seq).unwrap_or(0) + 1 }))
}

/// Stages one chunk (inside the caller's open transaction).
pub(crate) async fn stage(client: &tokio_postgres::Client, task: &str, commit_lsn: Lsn, seq: u32, body: &[u8]) -> Result<(), Error> {
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
