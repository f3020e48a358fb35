//! The launchers. A static *supervisor* (registered at preload, connected to no database) keeps
//! one *launcher* running in each database `trempy.databases` lists, starting it again when it
//! has died and stopping it when its database leaves the list. Each launcher starts one dynamic
//! worker per enabled task of its database and starts it again when it has died (dynamic workers
//! are never restarted by the postmaster, and are not re-created after a crash restart: the
//! launchers are their only supervisors).
//!
//! A launcher holds a session advisory lock ([`super::LOCK_CLASS`], [`LAUNCHER_KEY`]) in its
//! database: a second one (left by a supervisor that died with an error, whose launchers go on)
//! waits for the lock instead of doubling the work. A running task worker holds one
//! ([`super::LOCK_CLASS`], task id); the launcher starts a worker for every enabled task for
//! which `trempy.worker_pid()` finds none, at most once per [`START_BACKOFF`] per task.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::prelude::*;

use crate::gucs;
use crate::session;

const TICK: Duration = Duration::from_secs(1);
const START_BACKOFF: Duration = Duration::from_secs(3);
/// Between two starts of a database's launcher (a database that does not exist, or refuses
/// connections, is tried again at this pace, with a warning each time).
const LAUNCHER_BACKOFF: Duration = Duration::from_secs(10);
/// The second key of a launcher's advisory lock (task ids start at 1).
const LAUNCHER_KEY: i32 = -1;

/// Registers the supervisor. Only possible while `shared_preload_libraries` are being loaded.
pub(crate) fn register() {
    BackgroundWorkerBuilder::new("trempy supervisor")
        .set_type("trempy supervisor")
        .set_library("trempy")
        .set_function("trempy_supervisor_main")
        .enable_shmem_access(None)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// One database's launcher, as the supervisor sees it.
struct Served {
    worker: Option<DynamicBackgroundWorker>,
    started: Instant,
}

/// Entry point of the supervisor process.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn trempy_supervisor_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    log!("trempy supervisor started");
    let mut served: HashMap<String, Served> = HashMap::new();
    let mut reported: Option<String> = None;
    let mut legacy_reported: Option<String> = None;
    while BackgroundWorker::wait_latch(Some(TICK)) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: main thread, outside a transaction.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let (databases, problem) = gucs::databases();
        let legacy = gucs::legacy_database();
        if legacy != legacy_reported {
            if let Some(legacy) = &legacy {
                warning!(
                    "trempy supervisor: trempy.database is replaced by trempy.databases; serving \"{legacy}\" too: move it into trempy.databases"
                );
            }
            legacy_reported = legacy;
        }
        if problem != reported {
            if let Some(problem) = &problem {
                warning!("trempy supervisor: trempy.databases: {problem}; serving only the databases before it");
            }
            reported = problem;
        }
        served.retain(|database, launcher| {
            if databases.contains(database) {
                return true;
            }
            if let Some(worker) = launcher.worker.take() {
                let _ = worker.terminate();
            }
            log!("trempy supervisor: database \"{database}\" left trempy.databases; its launcher stops");
            false
        });
        for database in &databases {
            let running = served.get(database).is_some_and(|s| {
                s.worker.as_ref().is_some_and(|w| {
                    !matches!(w.pid(), Err(BackgroundWorkerStatus::Stopped | BackgroundWorkerStatus::PostmasterDied))
                })
            });
            if running || served.get(database).is_some_and(|s| s.started.elapsed() < LAUNCHER_BACKOFF) {
                continue;
            }
            if served.contains_key(database) {
                warning!(
                    "trempy supervisor: the launcher of database \"{database}\" stopped (see the log above: does the database exist and accept connections?); starting it again"
                );
            }
            let worker = start_launcher(database);
            served.insert(database.clone(), Served { worker, started: Instant::now() });
        }
    }
}

fn start_launcher(database: &str) -> Option<DynamicBackgroundWorker> {
    let started = BackgroundWorkerBuilder::new(&format!("trempy launcher {database}"))
        .set_type("trempy launcher")
        .set_library("trempy")
        .set_function("trempy_launcher_main")
        .enable_spi_access()
        .set_restart_time(None)
        .set_extra(database)
        .load_dynamic();
    match started {
        Ok(worker) => Some(worker),
        Err(_) => {
            warning!(
                "trempy supervisor: could not start the launcher of database \"{database}\": not enough max_worker_processes"
            );
            None
        }
    }
}

/// Entry point of a database's launcher.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn trempy_launcher_main(_arg: pg_sys::Datum) {
    let database = BackgroundWorker::get_extra().to_owned();
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    session::set_database(&database);
    if let Err(err) = session::pin_output_settings() {
        warning!("trempy launcher: could not pin its session settings: {err}");
        return;
    }
    let mut waiting_logged = false;
    loop {
        match session::in_transaction(|| {
            Spi::connect(|client| {
                Ok(client
                    .select(
                        "SELECT pg_catalog.pg_try_advisory_lock($1, $2)",
                        Some(1),
                        &[super::LOCK_CLASS.into(), LAUNCHER_KEY.into()],
                    )?
                    .first()
                    .get::<bool>(1)?)
            })
        }) {
            Ok(Some(true)) => break,
            Ok(_) if !waiting_logged => {
                log!("trempy launcher: another launcher serves database \"{database}\"; standing by");
                waiting_logged = true;
            }
            Ok(_) => {}
            Err(err) => warning!("trempy launcher: could not take the launcher lock of database \"{database}\": {err}"),
        }
        if !BackgroundWorker::wait_latch(Some(TICK)) {
            return;
        }
    }
    log!("trempy launcher started in database \"{database}\"");
    let mut last_start: HashMap<i32, Instant> = HashMap::new();
    while BackgroundWorker::wait_latch(Some(TICK)) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: main thread, outside a transaction.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            if !session::still_served() {
                log!("trempy launcher: database \"{database}\" left trempy.databases; stopping");
                return;
            }
        }
        let orphans = session::in_transaction(|| Ok(tasks_without_worker()));
        let orphans = match orphans {
            Ok(Some(orphans)) => orphans,
            Ok(None) => continue, // the extension is not created in this database (yet)
            Err(err) => {
                warning!("trempy launcher: could not read trempy.tasks: {err}");
                continue;
            }
        };
        // Before any worker starts: a slot left by a rolled-back create_task or update_task
        // must not be taken for its task's slot.
        if let Err(err) = super::setup::drop_orphans(None, false) {
            warning!("trempy launcher: could not drop what a rolled-back call left behind: {err}");
        }
        last_start.retain(|_, started| started.elapsed() < START_BACKOFF);
        for (task_id, name) in orphans {
            if last_start.contains_key(&task_id) {
                continue;
            }
            last_start.insert(task_id, Instant::now());
            start_task_worker(task_id, &name, &database);
        }
    }
}

/// Enabled tasks that have not failed and whose worker is not running; `None` when the extension
/// is not created in this database. Read-only: no XID, no WAL.
fn tasks_without_worker() -> Option<Vec<(i32, String)>> {
    Spi::connect(|client| {
        let installed = client
            .select("SELECT to_regclass('trempy.tasks') IS NOT NULL", None, &[])
            .ok()
            .and_then(|t| t.first().get::<bool>(1).ok().flatten())
            .unwrap_or(false);
        if !installed {
            return None;
        }
        let mut orphans = Vec::new();
        if let Ok(table) = client.select("SELECT task_id, task_name FROM trempy.tasks WHERE enabled AND failure IS NULL AND trempy.worker_pid(task_id) IS NULL", None, &[]) {
            for row in table {
                if let (Ok(Some(id)), Ok(Some(name))) = (row.get::<i32>(1), row.get::<String>(2)) {
                    orphans.push((id, name));
                }
            }
        }
        Some(orphans)
    })
}

fn start_task_worker(task_id: i32, name: &str, database: &str) {
    let started = BackgroundWorkerBuilder::new(&format!("trempy task {name}"))
        .set_type("trempy task")
        .set_library("trempy")
        .set_function("trempy_task_main")
        .enable_spi_access()
        .set_restart_time(None)
        .set_argument(task_id.into_datum())
        .set_extra(database)
        .load_dynamic();
    match started {
        Ok(_) => log!("trempy launcher: started the worker of task \"{name}\" in database \"{database}\""),
        Err(_) => {
            warning!("trempy launcher: could not start the worker of task \"{name}\": not enough max_worker_processes")
        }
    }
}
