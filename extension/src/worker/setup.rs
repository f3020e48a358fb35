//! The setup helper: a short-lived background worker that creates (or re-creates) a task's
//! replication slot, and changes its publication, outside the transaction of the `trempy.*`
//! call that asked for it, while that call waits.
//!
//! Why a helper: `create_task` must return only once capture has started (every change committed
//! after it returns is captured), so the slot must exist before it returns. PostgreSQL cannot
//! create a logical slot in a transaction that has written, and building the slot waits for every
//! transaction holding an xid, which would include the caller's own once it has written. The
//! publication must also be committed before the slot's consistent point, or pgoutput would not
//! see it for the first transactions. So the caller (holding no xid) hands the work to this
//! helper, which commits the publication change, creates the slot, and reports the slot's
//! identity back; the caller then records the task in its own transaction.
//!
//! Rollback safety: before it creates a slot, the helper records a claim
//! (`trempy.slot_claims`) whose advisory lock the caller holds until its transaction ends; the
//! caller deletes the claim in the transaction that records the slot. A claim whose lock is free
//! was left by a rolled-back call: its slot (and the publication it created) is dropped, by the
//! launcher or by the next helper for the same slot name ([`drop_orphans`]).
//!
//! The request and the outcome travel in a dynamic shared memory segment the caller creates:
//! a header with two lengths, the request (JSON), then room for the outcome (JSON).

use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde::{Deserialize, Serialize};
use trempy_protocol::names::TaskNames;

use crate::decoding::slot::{self, SlotIdentity};
use crate::error::{Error, ErrorKind};
use crate::session::{self, in_transaction};

/// What to do with the task's publication.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum Publication {
    /// Leave it as it is.
    Keep,
    /// Create it for exactly these tables (it must not exist).
    Create,
    /// Add these tables to it (those it lacks). A rolled-back caller leaves a publication with
    /// more tables than the task's settings, which the worker ignores.
    Extend,
    /// Make it cover exactly these tables (only for calls refused inside transaction blocks).
    Set,
}

/// What the caller asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Request {
    pub(crate) task: String,
    /// The advisory lock the caller holds until its transaction ends.
    pub(crate) claim: i64,
    /// The task's tables, (schema, table).
    pub(crate) tables: Vec<(String, String)>,
    pub(crate) publication: Publication,
    /// Drop the task's slot first (a reload).
    pub(crate) drop_slot: bool,
    /// Create the task's slot.
    pub(crate) create_slot: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Outcome {
    Done(Option<SlotIdentity>),
    Failed(String),
}

/// Room for the outcome in the segment.
const OUTCOME_ROOM: usize = 16 * 1024;
const HEADER: usize = 8;

/// Runs `request` in a helper worker and waits for it. Called by the SQL API in a transaction
/// that holds no xid (see the module documentation). Returns the identity of the slot created.
pub(crate) fn run(request: &Request) -> Result<Option<SlotIdentity>, String> {
    let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    let size = HEADER + body.len() + OUTCOME_ROOM;
    // The helper works in the caller's database (one of trempy.databases: api::ensure_runnable_here).
    // SAFETY: the caller is in a transaction; the name is palloc'd in its memory context.
    let database = unsafe {
        let name = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        if name.is_null() {
            return Err("this session's database has no name".to_owned());
        } else {
            std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    };
    // SAFETY: a segment of `size` bytes, written within its bounds on this thread; detached
    // below (and by the transaction's resource owner on error).
    unsafe {
        let segment = pg_sys::dsm_create(size, 0);
        let base = pg_sys::dsm_segment_address(segment).cast::<u8>();
        let request_len = u32::try_from(body.len()).map_err(|_| "request too large".to_owned())?;
        std::ptr::copy_nonoverlapping(request_len.to_le_bytes().as_ptr(), base, 4);
        std::ptr::copy_nonoverlapping(0_u32.to_le_bytes().as_ptr(), base.add(4), 4);
        std::ptr::copy_nonoverlapping(body.as_ptr(), base.add(HEADER), body.len());
        let handle = pg_sys::dsm_segment_handle(segment);
        let worker = BackgroundWorkerBuilder::new(&format!("trempy setup {}", request.task))
            .set_type("trempy setup")
            .set_library("trempy")
            .set_function("trempy_setup_main")
            .enable_spi_access()
            .set_restart_time(None)
            .set_argument(Some(pg_sys::Datum::from(handle)))
            .set_extra(&database)
            .set_notify_pid(pg_sys::MyProcPid)
            .load_dynamic()
            .map_err(|_| "could not start a helper worker: raise max_worker_processes (TREMpy needs one per running task, plus the launcher and one for a moment during create_task and update_task)".to_owned());
        let worker = match worker {
            Ok(worker) => worker,
            Err(err) => {
                pg_sys::dsm_detach(segment);
                return Err(err);
            }
        };
        let waited = worker.wait_for_shutdown();
        let outcome_len =
            u32::from_le_bytes(std::slice::from_raw_parts(base.add(4), 4).try_into().unwrap_or([0; 4])) as usize;
        let outcome = (outcome_len > 0 && outcome_len <= OUTCOME_ROOM)
            .then(|| {
                serde_json::from_slice::<Outcome>(std::slice::from_raw_parts(
                    base.add(HEADER + body.len()),
                    outcome_len,
                ))
                .ok()
            })
            .flatten();
        pg_sys::dsm_detach(segment);
        match (outcome, waited) {
            (Some(Outcome::Done(identity)), _) => Ok(identity),
            (Some(Outcome::Failed(message)), _) => Err(message),
            (None, Err(BackgroundWorkerStatus::PostmasterDied)) => Err("the postmaster died".to_owned()),
            (None, _) => Err("the helper worker exited without reporting (see the server log)".to_owned()),
        }
    }
}

/// Entry point of the helper; the argument is the segment's handle, the extra field the
/// database name.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn trempy_setup_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = BackgroundWorker::get_extra().to_owned();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    let handle = u32::try_from(arg.value()).unwrap_or(0);
    // SAFETY: attaching the caller's segment by its handle; NULL when the caller is gone.
    let segment = unsafe { pg_sys::dsm_attach(handle) };
    if segment.is_null() {
        log!("trempy setup: the calling session is gone; nothing done");
        return;
    }
    // SAFETY: the caller wrote the header and the request within the segment's bounds.
    let (base, request) = unsafe {
        let base = pg_sys::dsm_segment_address(segment).cast::<u8>();
        let len = u32::from_le_bytes(std::slice::from_raw_parts(base, 4).try_into().unwrap_or([0; 4])) as usize;
        (base, (std::slice::from_raw_parts(base.add(HEADER), len).to_vec()))
    };
    let outcome = match serde_json::from_slice::<Request>(&request) {
        Ok(request) => match session::pin_output_settings().and_then(|()| perform(&request)) {
            Ok(identity) => Outcome::Done(identity),
            Err(err) => Outcome::Failed(err.to_string()),
        },
        Err(err) => Outcome::Failed(format!("unreadable request: {err}")),
    };
    let mut text = serde_json::to_vec(&outcome).unwrap_or_default();
    if text.len() > OUTCOME_ROOM {
        text = serde_json::to_vec(&Outcome::Failed("the helper's report was too long".to_owned())).unwrap_or_default();
    }
    // SAFETY: the outcome room follows the request; `text` fits in it.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), base.add(HEADER + request.len()), text.len());
        let len = u32::try_from(text.len()).unwrap_or(0).to_le_bytes();
        std::ptr::copy_nonoverlapping(len.as_ptr(), base.add(4), 4);
        pg_sys::dsm_detach(segment);
    }
}

/// The helper's work, in order: forget what rolled-back calls left under this slot name, drop
/// the old slot (reload), change the publication and record the claim, create the slot.
fn perform(request: &Request) -> Result<Option<SlotIdentity>, Error> {
    let names = TaskNames::new(&request.task).map_err(|e| Error::new(ErrorKind::Config, e.message()))?;
    drop_orphans(Some(&names.slot()), true)?;
    if request.drop_slot {
        in_transaction(|| Spi::connect_mut(|client| slot::drop_slot(client, &names)))?;
    }
    let added = in_transaction(|| {
        Spi::connect_mut(|client| {
            let added = change_publication(client, &names, request)?;
            if request.create_slot {
                let created = (request.publication == Publication::Create).then(|| names.publication());
                client.update(
                    "INSERT INTO trempy.slot_claims (claim, slot_name, created_publication) VALUES ($1, $2, $3)",
                    None,
                    &[request.claim.into(), names.slot().as_str().into(), created.as_deref().into()],
                )?;
            }
            Ok(added)
        })
    })?;
    if !request.create_slot {
        if added {
            wait_for_older_transactions()?;
        }
        return Ok(None);
    }
    // A transaction that writes nothing: PostgreSQL refuses to create a logical slot otherwise.
    in_transaction(|| Spi::connect(|client| slot::create_slot(client, &names))).map(Some)
}

/// Applies the publication step; true when tables were added to an existing publication.
fn change_publication(client: &mut SpiClient<'_>, names: &TaskNames, request: &Request) -> Result<bool, Error> {
    match request.publication {
        Publication::Keep => Ok(false),
        Publication::Create => {
            slot::create_publication(client, names, &request.tables)?;
            Ok(false)
        }
        Publication::Set => {
            slot::set_publication_tables(client, names, &request.tables)?;
            Ok(true)
        }
        Publication::Extend => {
            let mut added = false;
            for (schema, table) in &request.tables {
                if !slot::publication_has(client, names, schema, table)? {
                    slot::add_publication_table(client, names, schema, table)?;
                    added = true;
                }
            }
            Ok(added)
        }
    }
}

/// Waits until every transaction running now has ended: a transaction that wrote to a table
/// before the table joined the publication is not decoded for that table, so it must be over
/// before the call that added the table returns.
fn wait_for_older_transactions() -> Result<(), Error> {
    let read = |sql: &str, args: &[pgrx::datum::DatumWithOid<'_>]| -> Result<Option<String>, Error> {
        in_transaction(|| Spi::connect(|client| Ok(client.select(sql, Some(1), args)?.first().get::<String>(1)?)))
    };
    let horizon =
        read("SELECT pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text", &[])?.unwrap_or_default();
    loop {
        let done = read(
            "SELECT (pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot()) >= $1::text::xid8)::text",
            &[horizon.as_str().into()],
        )?;
        if done.as_deref() == Some("true") {
            return Ok(());
        }
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(50))) {
            return Err(Error::new(ErrorKind::Shutdown, "stopped while waiting for older transactions to end"));
        }
    }
}

/// Drops what rolled-back calls left behind: for each claim whose advisory lock is free (its
/// caller's transaction has ended without deleting it), the slot and the publication it created,
/// then the claim. `slot_name` limits this to one slot; `wait` waits for callers still running
/// (a helper) instead of skipping them (the launcher).
pub(crate) fn drop_orphans(slot_name: Option<&str>, wait: bool) -> Result<(), Error> {
    let claims = in_transaction(|| {
        Spi::connect(|client| {
            let table = client.select(
                "SELECT claim FROM trempy.slot_claims WHERE $1::text IS NULL OR slot_name = $1 ORDER BY claim",
                None,
                &[slot_name.into()],
            )?;
            let mut claims = Vec::new();
            for row in table {
                if let Some(claim) = row.get::<i64>(1)? {
                    claims.push(claim);
                }
            }
            Ok(claims)
        })
    })?;
    for claim in claims {
        // A transaction of its own, read-only (no xid, so a helper waiting here never holds up a
        // slot being built): once the lock is ours, the claiming transaction has ended.
        let free = in_transaction(|| {
            Spi::connect(|client| {
                let lock = if wait {
                    "SELECT true FROM pg_catalog.pg_advisory_xact_lock($1)"
                } else {
                    "SELECT pg_catalog.pg_try_advisory_xact_lock($1)"
                };
                Ok(client.select(lock, Some(1), &[claim.into()])?.first().get::<bool>(1)?.unwrap_or(false))
            })
        })?;
        if !free {
            continue;
        }
        // A new transaction, so a new snapshot: it sees how the claiming transaction ended. The
        // publication's drop commits first, the slot's (which takes effect at once, whatever
        // becomes of its transaction) follows with the claim's delete: whoever sees the slot gone
        // sees the publication gone too, and a crash in between leaves the claim to finish later.
        let claimed = in_transaction(|| {
            Spi::connect_mut(|client| {
                let row = client.select(
                    "SELECT slot_name, created_publication FROM trempy.slot_claims WHERE claim = $1",
                    Some(1),
                    &[claim.into()],
                )?;
                if row.is_empty() {
                    return Ok(None); // the caller committed: the claim is gone with it
                }
                let row = row.first();
                let slot_name = row.get::<String>(1)?.unwrap_or_default();
                if let Some(publication) = row.get::<String>(2)? {
                    slot::drop_publication_named(client, &publication)?;
                }
                Ok(Some(slot_name))
            })
        })?;
        let Some(slot_name) = claimed else { continue };
        in_transaction(|| {
            Spi::connect_mut(|client| {
                slot::drop_slot_named(client, &slot_name)?;
                client.update("DELETE FROM trempy.slot_claims WHERE claim = $1", None, &[claim.into()])?;
                log!(
                    "trempy: dropped replication slot \"{slot_name}\" left by a rolled-back trempy.create_task or trempy.update_task"
                );
                Ok(())
            })
        })?;
    }
    Ok(())
}
