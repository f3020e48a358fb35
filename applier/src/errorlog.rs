//! The error log: every apply error, in the target, for the user to query
//! (`trempy.applier_errors`, `trempy-applier errors --task`). Each entry is written in its own
//! transaction, after the failed one was rolled back, so it survives the rollback. Entries name
//! the task, table, operation, source commit LSN, SQLSTATE and message, never row values (see
//! [`Error::target`]).

use tokio_postgres::Client;
use trempy_protocol::Lsn;

use crate::error::Error;

/// What the applier did about an error, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// It will try the transaction again.
    Retry,
    /// It stopped the task (error policy).
    Stop,
    /// It dead-lettered the transaction or message.
    DeadLetter,
    /// An operator's `dlq replay` failed.
    ReplayFailed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Stop => "stop",
            Self::DeadLetter => "dead_letter",
            Self::ReplayFailed => "replay_failed",
        }
    }
}

/// Records one error (in its own transaction: the client must not be inside one).
pub(crate) async fn record(
    client: &Client,
    task: &str,
    err: &Error,
    lsn: Option<Lsn>,
    attempt: Option<u32>,
    action: Action,
) -> Result<(), Error> {
    client
        .execute(
            "INSERT INTO trempy.applier_errors (task_name, table_name, operation, commit_lsn, sqlstate, error_class, message, attempt, action)
             VALUES ($1, $2, $3, $4::text::pg_lsn, $5, $6, $7, $8, $9)",
            &[
                &task,
                &err.table(),
                &err.operation().map(|o| o.as_str()),
                &lsn.or(err.lsn()).map(|l| l.to_string()),
                &err.sqlstate(),
                &err.kind().class(),
                &err.message(),
                &attempt.map(|a| i32::try_from(a).unwrap_or(i32::MAX)),
                &action.as_str(),
            ],
        )
        .await?;
    Ok(())
}

/// The task's most recent errors, newest first, as tab-separated lines with a header.
pub(crate) async fn list(client: &Client, task: &str, limit: i64) -> Result<Vec<String>, Error> {
    let rows = client
        .query(
            "SELECT id, logged_at::text, coalesce(table_name, '-'), coalesce(operation, '-'), coalesce(commit_lsn::text, '-'),
                    coalesce(sqlstate, '-'), error_class, action, coalesce(attempt::text, '-'), message
               FROM trempy.applier_errors WHERE task_name = $1 ORDER BY id DESC LIMIT $2",
            &[&task, &limit],
        )
        .await?;
    let mut lines =
        vec!["id\tlogged_at\ttable\toperation\tcommit_lsn\tsqlstate\terror_class\taction\tattempt\tmessage".to_owned()];
    for row in rows {
        let id: i64 = row.get(0);
        let cols: Vec<String> = (1..10).map(|i| row.get::<_, String>(i)).collect();
        lines.push(format!("{id}\t{}", cols.join("\t")));
    }
    Ok(lines)
}
