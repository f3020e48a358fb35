//! The launcher: a static background worker that starts one dynamic worker per enabled task and
//! starts it again when it has died (dynamic workers are never restarted by the postmaster, and
//! are not re-created after a crash restart: the launcher is their only supervisor).
//!
//! A running task worker holds a session advisory lock ([`super::LOCK_CLASS`], task id); the
//! launcher starts a worker for every enabled task for which `trempy.worker_pid()` finds none,
//! at most once per [`START_BACKOFF`] per task.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;

use crate::gucs;

const TICK: Duration = Duration::from_secs(1);
const START_BACKOFF: Duration = Duration::from_secs(3);

/// Registers the launcher. Only possible while `shared_preload_libraries` are being loaded.
pub(crate) fn register() {
    BackgroundWorkerBuilder::new("trempy launcher")
        .set_type("trempy launcher")
        .set_library("trempy")
        .set_function("trempy_launcher_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// Entry point of the launcher process.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn trempy_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = gucs::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    if let Err(err) = super::pin_output_settings() {
        warning!("trempy launcher: could not pin its session settings: {err}");
        return;
    }
    log!("trempy launcher started in database \"{database}\"");
    let mut last_start: HashMap<i32, Instant> = HashMap::new();
    while BackgroundWorker::wait_latch(Some(TICK)) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: main thread, outside a transaction.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let orphans = super::in_transaction(|| Ok(tasks_without_worker()));
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
        Ok(_) => log!("trempy launcher: started the worker of task \"{name}\""),
        Err(_) => warning!("trempy launcher: could not start the worker of task \"{name}\": not enough max_worker_processes"),
    }
}
