//! Background workers: the [`launcher`] (one per cluster, started at server start) and one
//! [`task`] worker per running task. Everything here runs on a worker's main thread, the only
//! thread allowed to call PostgreSQL.

pub(crate) mod launcher;
pub(crate) mod task;

use std::panic::AssertUnwindSafe;

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

use crate::error::{Error, ErrorKind};

/// First key of the session advisory lock a task worker holds while it runs; the second key is
/// the task's `task_id`. `trempy.status()` and `drop_task` find the worker through it.
pub(crate) const LOCK_CLASS: i32 = 1_414_680_400;

/// True once PostgreSQL asked this process to shut down (SIGTERM). Unlike pgrx's
/// `sigterm_received()`, reading it does not consume the request.
pub(crate) fn shutdown_requested() -> bool {
    // SAFETY: a sig_atomic_t PostgreSQL's signal handler writes; read it volatile.
    unsafe { std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) != 0 }
}

/// Runs `f` (which starts and commits its own transaction) and turns a PostgreSQL ERROR raised
/// inside it into an [`Error`], aborting the failed transaction, so that the worker survives,
/// records the error and retries instead of exiting.
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    PgTryBuilder::new(AssertUnwindSafe(f))
        .catch_others(|caught| {
            let message = match &caught {
                CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) | CaughtError::RustPanic { ereport: report, .. } => {
                    report.message().to_owned()
                }
            };
            // SAFETY: we are on the main thread, after an ERROR unwound out of a transaction.
            unsafe {
                if pg_sys::IsTransactionState() {
                    pg_sys::AbortCurrentTransaction();
                }
            }
            Err(Error::new(ErrorKind::Postgres, message))
        })
        .execute()
}

/// Runs `f` in its own transaction on the main thread, [`guarded`].
pub(crate) fn in_transaction<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    guarded(|| pgrx::bgworkers::BackgroundWorker::transaction(AssertUnwindSafe(f)))
}
