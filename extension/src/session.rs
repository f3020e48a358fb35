//! A background worker's session on its main thread (the only thread allowed to call
//! PostgreSQL): the database it serves, shutdown requests, the pinned output settings,
//! transactions that turn a PostgreSQL ERROR into an [`Error`], and cursors read page by page.

use std::panic::AssertUnwindSafe;

use pgrx::PgMemoryContexts;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::spi::{SpiCursor, SpiTupleTable};

use crate::error::{Error, ErrorKind};

thread_local! {
    /// The database this worker serves (launchers and task workers).
    static DATABASE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Records the database this worker serves, for [`still_served`].
pub(crate) fn set_database(database: &str) {
    DATABASE.with(|d| *d.borrow_mut() = Some(database.to_owned()));
}

/// Whether `trempy.databases` still lists this worker's database (read after a reload: a worker
/// of a database taken out of the list stops).
pub(crate) fn still_served() -> bool {
    DATABASE.with(|d| d.borrow().as_ref().is_none_or(|database| crate::gucs::databases().0.contains(database)))
}

/// True once PostgreSQL asked this process to shut down (SIGTERM). Unlike pgrx's
/// `sigterm_received()`, reading it does not consume the request.
pub(crate) fn shutdown_requested() -> bool {
    // SAFETY: a sig_atomic_t PostgreSQL's signal handler writes; read it volatile.
    unsafe { std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) != 0 }
}

/// The settings a decoding session runs with, whatever the database, role or server defaults
/// say: they fix the text form of every value (pgoutput's, and the full load's output
/// functions), as native logical replication's walsender does, and make `format_type`
/// schema-qualify every type outside `pg_catalog`. The applier's target sessions pin the same.
const OUTPUT_SETTINGS: [(&str, &str); 7] = [
    ("search_path", "pg_catalog, pg_temp"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("TimeZone", "UTC"),
    ("lc_monetary", "C"),
];

/// Pins [`OUTPUT_SETTINGS`] for the rest of this session. Every TREMpy background worker (task,
/// launcher, setup helper) does it first: whatever `ALTER DATABASE/ROLE … SET search_path` says,
/// no object outside `pg_catalog` can capture a name its superuser SQL uses.
pub(crate) fn pin_output_settings() -> Result<(), Error> {
    in_transaction(|| {
        for (name, value) in OUTPUT_SETTINGS {
            Spi::run_with_args("SELECT pg_catalog.set_config($1, $2, false)", &[name.into(), value.into()])?;
        }
        Ok(())
    })
}

/// Waits on the worker's latch (and `socket`, until it is readable) for at most `timeout`, then
/// handles interrupts. False once the worker is to stop (SIGTERM; the postmaster's death ends the
/// process).
pub(crate) fn wait(timeout: std::time::Duration, socket: Option<pg_sys::pgsocket>) -> bool {
    let ms = libc::c_long::try_from(timeout.as_millis()).unwrap_or(libc::c_long::MAX);
    let events = pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH;
    // WaitLatch is WaitLatchOrSocket without a socket (PGINVALID_SOCKET, -1).
    let (events, fd) = socket.map_or((events, -1), |fd| (events | pg_sys::WL_SOCKET_READABLE, fd));
    // SAFETY: main thread of a background worker; MyLatch is its own latch.
    unsafe {
        pg_sys::WaitLatchOrSocket(pg_sys::MyLatch, events as i32, fd, ms, pg_sys::PG_WAIT_EXTENSION);
        pg_sys::ResetLatch(pg_sys::MyLatch);
        pg_sys::check_for_interrupts!();
    }
    !shutdown_requested()
}

/// Runs `f` (which starts and commits its own transaction) and turns a PostgreSQL ERROR raised
/// inside it into an [`Error`], aborting the failed transaction, so that the worker survives,
/// records the error and retries instead of exiting.
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    PgTryBuilder::new(AssertUnwindSafe(f))
        .catch_others(|caught| {
            let message = match &caught {
                CaughtError::PostgresError(report)
                | CaughtError::ErrorReport(report)
                | CaughtError::RustPanic { ereport: report, .. } => report.message().to_owned(),
            };
            // SAFETY: we are on the main thread, after an ERROR unwound out of a transaction.
            unsafe {
                if pg_sys::IsTransactionState() {
                    pg_sys::AbortCurrentTransaction();
                }
                // Aborting a transaction does not release a replication slot (a backend's
                // top-level error handler does that, and a background worker has none): an
                // ERROR while a slot was acquired (creating one) would leave it active, owned
                // by this process, until it exits.
                if !pg_sys::MyReplicationSlot.is_null() {
                    pg_sys::ReplicationSlotRelease();
                }
            }
            Err(Error::new(ErrorKind::Postgres, message))
        })
        .execute()
}

/// Runs `f` in its own REPEATABLE READ transaction on the main thread, [`guarded`]: every query
/// in it sees the snapshot taken when it started.
pub(crate) fn in_repeatable_read_transaction<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    guarded(|| {
        // SAFETY: main thread of a background worker, outside any transaction; setting
        // XactIsoLevel before the first snapshot is what SET TRANSACTION ISOLATION LEVEL does.
        unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::StartTransactionCommand();
            pg_sys::XactIsoLevel = pg_sys::XACT_REPEATABLE_READ as i32;
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        }
        let result = f();
        // SAFETY: balances the push above; an ERROR inside `f` unwinds to `guarded`, which aborts.
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        }
        result
    })
}

/// Runs `f` in its own transaction on the main thread, [`guarded`].
pub(crate) fn in_transaction<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    guarded(|| pgrx::bgworkers::BackgroundWorker::transaction(AssertUnwindSafe(f)))
}

/// Rows fetched from a cursor at a time.
const FETCH_ROWS: libc::c_long = 1_000;

/// Reads a cursor to its end, calling `row` with the table positioned on each row. Everything
/// PostgreSQL allocates meanwhile goes into a memory context named `what`, reset after each page
/// of rows (with the page itself), so memory does not grow with the number of rows. Raw datums
/// (`get_datum_by_ordinal`) are valid until the page is freed; `SpiHeapTupleData::get` would copy
/// every value into the transaction's context until commit. Stops early on shutdown.
pub(crate) fn each_row(
    cursor: &mut SpiCursor<'_>,
    what: &str,
    mut row: impl FnMut(&SpiTupleTable<'_>) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut page_memory = PgMemoryContexts::new(what);
    loop {
        let mut table = cursor.fetch(FETCH_ROWS)?;
        if table.is_empty() {
            return Ok(());
        }
        // SAFETY: switching to a context we own; nothing allocated in it outlives the page, and
        // neither the page context nor the page's tuples are used after they are freed.
        unsafe {
            page_memory.switch_to(|_| -> Result<(), Error> {
                while table.next().is_some() {
                    row(&table)?;
                }
                Ok(())
            })?;
            page_memory.reset();
            pg_sys::SPI_freetuptable(pg_sys::SPI_tuptable);
        }
        if shutdown_requested() {
            return Err(Error::new(ErrorKind::Shutdown, format!("shutdown requested during {what}")));
        }
    }
}
