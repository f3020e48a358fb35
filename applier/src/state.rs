//! The task's apply state in the target (`trempy.applier_state`): `running`, `retrying` (a source
//! transaction failed permanently and is being tried again) or `stopped` (the error policy
//! stopped the task), with the reason and since when, plus the attempt counter of the failing
//! source transaction.
//!
//! The attempt counter lives here, in the target, keyed by the failing transaction's commit LSN,
//! so it survives applier restarts and counts only attempts at that transaction. (The quorum
//! queue's `x-delivery-count` header would also survive restarts, but it counts every
//! redelivery of every message in the unacknowledged window, innocent ones included, and starts
//! over when the source re-publishes the message.) Every write here is its own transaction.

use tokio_postgres::Client;
use trempy_protocol::Lsn;

use crate::error::Error;

/// An applier started (which resumes a stopped task): state `running`. The attempt counter is
/// kept; returns the failing source transaction it counts attempts at, if any.
pub(crate) async fn started(client: &Client, task: &str) -> Result<Option<Lsn>, Error> {
    let row = client
        .query_one(
            "INSERT INTO trempy.applier_state (task_name, state, reason) VALUES ($1, 'running', 'applier started')
             ON CONFLICT (task_name) DO UPDATE SET state = 'running', reason = 'applier started', since = now()
             RETURNING failing_lsn::text",
            &[&task],
        )
        .await?;
    let lsn: Option<String> = row.get(0);
    Ok(lsn.and_then(|l| Lsn::parse(&l).ok()))
}

/// The watermark passed the failing source transaction (applied or dead-lettered): state
/// `running`, attempt counter reset.
pub(crate) async fn passed(client: &Client, task: &str, watermark: Lsn) -> Result<(), Error> {
    client
        .execute(
            "UPDATE trempy.applier_state SET state = 'running', reason = NULL, since = now(), failing_lsn = NULL, attempts = 0
              WHERE task_name = $1 AND failing_lsn <= $2::text::pg_lsn",
            &[&task, &watermark.to_string()],
        )
        .await?;
    Ok(())
}

/// Counts one more failed attempt at the source transaction `lsn` and returns the count (1 when
/// another transaction failed before). Sets the state to `retrying`.
pub(crate) async fn failed_attempt(client: &Client, task: &str, lsn: Lsn, reason: &str) -> Result<u32, Error> {
    let row = client
        .query_one(
            "INSERT INTO trempy.applier_state (task_name, state, reason, failing_lsn, attempts) VALUES ($1, 'retrying', $3, $2::text::pg_lsn, 1)
             ON CONFLICT (task_name) DO UPDATE SET
                attempts = CASE WHEN applier_state.failing_lsn = EXCLUDED.failing_lsn THEN applier_state.attempts + 1 ELSE 1 END,
                since = CASE WHEN applier_state.state = 'retrying' THEN applier_state.since ELSE now() END,
                failing_lsn = EXCLUDED.failing_lsn, state = 'retrying', reason = EXCLUDED.reason
             RETURNING attempts",
            &[&task, &lsn.to_string(), &reason],
        )
        .await?;
    let attempts: i32 = row.get(0);
    Ok(u32::try_from(attempts).unwrap_or(1))
}

/// The error policy stopped the task.
pub(crate) async fn stopped(client: &Client, task: &str, lsn: Option<Lsn>, reason: &str) -> Result<(), Error> {
    client
        .execute(
            "INSERT INTO trempy.applier_state (task_name, state, reason, failing_lsn) VALUES ($1, 'stopped', $3, $2::text::pg_lsn)
             ON CONFLICT (task_name) DO UPDATE SET state = 'stopped', reason = EXCLUDED.reason, since = now(), failing_lsn = EXCLUDED.failing_lsn",
            &[&task, &lsn.map(|l| l.to_string()), &reason],
        )
        .await?;
    Ok(())
}

/// The task's state, if recorded.
pub(crate) async fn get(client: &Client, task: &str) -> Result<Option<String>, Error> {
    let row = client.query_opt("SELECT state FROM trempy.applier_state WHERE task_name = $1", &[&task]).await?;
    Ok(row.map(|r| r.get(0)))
}

/// `trempy-applier resume`: a stopped task runs again. Returns false if it was not stopped.
pub(crate) async fn resume(client: &Client, task: &str) -> Result<bool, Error> {
    let n = client
        .execute(
            "UPDATE trempy.applier_state SET state = 'running', reason = 'resumed by an operator', since = now(), attempts = 0 WHERE task_name = $1 AND state = 'stopped'",
            &[&task],
        )
        .await?;
    Ok(n == 1)
}
