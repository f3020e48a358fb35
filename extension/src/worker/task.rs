//! A task worker: copies one task's tables (full load), then decodes its changes and publishes
//! them, forever.
//!
//! On start it publishes the task's settings (a control message: the applier applies what follows
//! under them). Each round: is the task still enabled? Is its slot (made by `create_task` or
//! `update_task`, never here) still there, valid, and made on this server and timeline? If not,
//! the task fails loudly (`trempy.tasks.failure`, the cause and the remedy in `last_error`) and the
//! worker exits: a missing slot is never re-created silently, as that would skip every change
//! between the old slot's position and the new one's. Is a table still to be copied? Copy it (see [`crate::load`]).
//! Otherwise the worker streams: it opens the task's replication connection to this server and
//! publishes each transaction as soon as its commit is decoded; the slot is confirmed only up
//! to what RabbitMQ confirmed, and, idle, up to the walsender's keepalive position, so idle or
//! filtered databases do not pin WAL (see [`crate::decoding::stream`]). The worker sleeps on its
//! latch and the connection's socket; any error closes the stream, and the next one starts from
//! the slot's confirmed position.
//!
//! Each round also takes the applier's latest report, if one came through the feedback queue,
//! and records it in `trempy.task_progress` (the `applier_*` columns that `trempy.status()`
//! shows).

use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use trempy_protocol::Lsn;
use trempy_protocol::envelope::StreamId;
use trempy_protocol::feedback::Report;
use trempy_protocol::names::TaskNames;
use trempy_protocol::settings::TaskSettings;

use super::LOCK_CLASS;
use crate::amqp::{Broker, Publisher};
use crate::decoding::slot;
use crate::decoding::stream::{self, Stream};
use crate::error::{Error, ErrorKind, Reaction, reaction};
use crate::gucs;
use crate::load::{self, Next};
use crate::outbox::{confirm, ensure_connected, send};
use crate::sequences::Sequences;
use crate::session::{self, guarded, in_repeatable_read_transaction, in_transaction};

use super::phase::{Phases, Work};

enum Round {
    /// RabbitMQ confirmed the task's settings.
    SettingsPublished,
    /// Nothing new; wait for the poll interval.
    Idle,
    /// Streaming; pump again after this long (or when the socket is readable).
    Streaming(Duration),
    /// The task cannot go on: its slot is gone, invalidated, or from another server.
    Failed(Failure),
    /// Copied a table.
    Copied(load::Due, load::Copied),
    /// The full load is complete.
    Loaded,
    /// The task was stopped or dropped.
    Stop,
}

struct Task {
    names: TaskNames,
    task_id: i32,
    /// The task's stream: name, incarnation, generation (every message carries it).
    stream: StreamId,
    /// Set when the task's slot was created on another server or timeline than this one.
    other_system: Option<String>,
    settings: TaskSettings,
    document: serde_json::Value,
    poll_interval: Duration,
}

/// Entry point of a task worker; the argument is the task's `task_id`, the extra field the
/// database name.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn trempy_task_main(arg: pg_sys::Datum) {
    let task_id = i32::try_from(arg.value()).unwrap_or(-1);
    let database = BackgroundWorker::get_extra().to_owned();
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // SAFETY: main thread, before any work: replaces pgrx's SIGTERM handler with one that also
    // makes PostgreSQL's next interrupt check end the process, as a backend's does.
    unsafe { pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(on_sigterm)) };
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    session::set_database(&database);
    if let Err(err) = session::pin_output_settings() {
        warning!("trempy task {task_id}: could not pin the output settings: {err}");
        return;
    }
    // The worker's own bookkeeping commits must never wait for a synchronous standby: with
    // synchronous_standby_names = '*' its own walsender would be one, and it only answers once
    // this worker has confirmed, so the commit would wait for itself.
    if let Err(err) = in_transaction(|| {
        Spi::run("SELECT pg_catalog.set_config('synchronous_commit', 'local', false)")?;
        Ok(())
    }) {
        warning!("trempy task {task_id}: could not set synchronous_commit: {err}");
        return;
    }

    let task = match in_transaction(|| Ok(claim(task_id))) {
        Ok(Some(task)) => task,
        Ok(None) => return, // stopped, dropped, or another worker runs it: exit 0
        Err(err) => {
            warning!("trempy task {task_id}: could not start: {err}");
            return;
        }
    };
    let publisher = match Publisher::spawn(task.names.clone()) {
        Ok(publisher) => publisher,
        Err(err) => {
            record_error(&task, &Error::new(ErrorKind::Config, format!("could not start the AMQP thread: {err}")));
            return;
        }
    };
    let broker = gucs::broker();
    if broker.as_ref().is_some_and(Broker::password_in_url) {
        warning!(
            "trempy task \"{}\": trempy.amqp_url holds a password, which members of pg_read_all_settings (pg_monitor) can read and which PostgreSQL logs at every reload; move it to trempy.amqp_password_file",
            task.names.task()
        );
    }
    publisher.configure(broker);
    log!("trempy task \"{}\": worker started", task.names.task());
    run(&task, &publisher);
    publisher.shutdown();
    log!("trempy task \"{}\": worker stopped", task.names.task());
}

/// SIGTERM (`drop_task`, `update_task`, server shutdown): ends the worker promptly. The loops
/// between SQL calls see `ShutdownRequestPending`; a long SQL call in progress (decoding a large
/// backlog, reading a table to copy) is interrupted at its next interrupt check by PostgreSQL's own
/// `die` handler, as the apply workers of native logical replication are. Nothing is lost: the
/// slot only advances, and a copy only counts, after RabbitMQ confirmed and the transaction
/// committed.
unsafe extern "C-unwind" fn on_sigterm(signal: i32) {
    // SAFETY: async-signal-safe writes of flags PostgreSQL polls, and its own handler.
    unsafe {
        (&raw mut pg_sys::ShutdownRequestPending).write_volatile(1);
        pg_sys::die(signal);
    }
}

/// Takes the task's advisory lock and reads the task. `None` when the task is not to run here.
fn claim(task_id: i32) -> Option<Task> {
    Spi::connect(|client| {
        let row = client
            .select(
                // The settings as published: each table with its OID (TableRef::relid).
                "SELECT t.task_name,
                        jsonb_set(t.settings, '{tables}', coalesce((
                            SELECT jsonb_agg(e || coalesce((SELECT jsonb_build_object('relid', c.oid::int8)
                                                              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                                             WHERE n.nspname = e ->> 'schema_name' AND c.relname = e ->> 'table_name'), '{}'::jsonb) ORDER BY x.i)
                              FROM jsonb_array_elements(t.settings -> 'tables') WITH ORDINALITY AS x(e, i)), '[]'::jsonb))::text,
                        t.enabled AND t.failure IS NULL, pg_catalog.pg_try_advisory_lock($1, t.task_id), t.generation,
                        t.incarnation::text, t.slot_system_id, t.slot_timeline
                   FROM trempy.tasks t WHERE t.task_id = $2",
                Some(1),
                &[LOCK_CLASS.into(), task_id.into()],
            )
            .ok()?;
        if row.is_empty() {
            return None;
        }
        let row = row.first();
        let name = row.get::<String>(1).ok()??;
        let settings = row.get::<String>(2).ok()??;
        let enabled = row.get::<bool>(3).ok()??;
        let locked = row.get::<bool>(4).ok()??;
        let generation = u32::try_from(row.get::<i32>(5).ok()??).ok()?;
        let incarnation = row.get::<String>(6).ok()??;
        let recorded = (row.get::<String>(7).ok()?, row.get::<i32>(8).ok()?);
        if !locked || !enabled {
            return None;
        }
        let other_system = match recorded {
            (Some(system), Some(timeline)) => {
                let (here_system, here_timeline) = slot::here(client).ok()?;
                (system != here_system || timeline != here_timeline)
                    .then(|| format!("system {system} timeline {timeline}, and this server is system {here_system} timeline {here_timeline}"))
            }
            _ => None,
        };
        let names = TaskNames::new(&name).ok()?;
        let document: serde_json::Value = serde_json::from_str(&settings).ok()?;
        let Ok(settings) = TaskSettings::parse(&settings) else {
            warning!(
                "trempy task \"{name}\": its stored settings no longer validate; update them with trempy.update_task"
            );
            return None;
        };
        let interval = settings.task.interval_seconds;
        let poll_interval = interval.map_or_else(gucs::poll_interval, |s| Duration::from_secs(u64::from(s)));
        let stream = StreamId::new(&name, &incarnation, generation);
        Some(Task { names, task_id, stream, other_system, settings, document, poll_interval })
    })
}

fn run(task: &Task, publisher: &Publisher) {
    if let Some(detail) = &task.other_system {
        // Before anything is published: this server is not the one the slot was made on.
        record_failure(task, &Failure::OtherSystem(detail.clone()));
        return;
    }
    let mut failures = 0_u32;
    let mut error_active = true; // clear any error a previous worker left, on the first success
    let mut wait = Duration::ZERO;
    let mut phases = Phases::new(task.settings.copies(), task.settings.streams());
    let mut recorded_report: Option<(Report, std::time::Instant)> = None;
    let mut sequences = Sequences::new();
    let mut streaming = Streaming::default();
    while session::wait(wait, streaming.socket()) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: main thread, outside a transaction.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            if !session::still_served() {
                log!("trempy task \"{}\": its database left trempy.databases; stopping", task.names.task());
                return;
            }
            publisher.configure(gucs::broker());
        }
        if let Some(report) = publisher.latest_report()
            && worth_recording(recorded_report.as_ref(), &report)
            && record_report(task, &report)
        {
            recorded_report = Some((report, std::time::Instant::now()));
        }
        // Sequences: at the end of the full load (which a full_load task waits for), and at the
        // interval once the task streams.
        let owed = phases.work() == Work::OwedSequences;
        if owed || phases.periodic_sequences() {
            match sequences.publish(task.names.task(), &task.settings, &task.stream, publisher, owed) {
                Ok(()) if owed => phases.sequences_published(),
                Ok(()) => {}
                Err(err) => {
                    warning!(
                        "trempy task \"{}\": could not publish its sequences: {err}; trying again",
                        task.names.task()
                    );
                    record_error(task, &err);
                    error_active = true;
                    // The stream's messages may be behind the failure: start it again.
                    streaming.close(publisher);
                    if owed {
                        wait = Duration::from_secs(1);
                        continue;
                    }
                }
            }
        }
        let outcome = match phases.work() {
            Work::Finish => {
                finish(task);
                return;
            }
            Work::Settings => publish_settings(task, publisher).map(|()| Round::SettingsPublished),
            Work::Load => step(task, publisher),
            Work::Stream => streaming.step(task, publisher, &mut error_active),
            // (not reached: publishing them above moved on, or its failure tries again)
            Work::OwedSequences => Ok(Round::Idle),
        };
        match outcome {
            Ok(Round::SettingsPublished) => {
                phases.settings_published();
                wait = Duration::ZERO;
            }
            Ok(Round::Stop) => return,
            Ok(Round::Idle) => {
                failures = 0;
                wait = task.poll_interval;
                if error_active {
                    error_active = !record(
                        task,
                        "UPDATE trempy.task_progress SET error_active = false WHERE task_name = $1 AND error_active",
                        &[task.names.task().into()],
                    );
                }
            }
            Ok(Round::Copied(due, copied)) => {
                failures = 0;
                wait = Duration::ZERO;
                log!(
                    "trempy task \"{}\": copied table {}.{} (attempt {}): {} rows in {} messages",
                    task.names.task(),
                    spi::quote_identifier(&due.schema),
                    spi::quote_identifier(&due.table),
                    due.attempt,
                    copied.rows,
                    copied.messages
                );
                error_active = !record(
                    task,
                    "UPDATE trempy.task_progress SET error_active = false WHERE task_name = $1",
                    &[task.names.task().into()],
                );
            }
            Ok(Round::Loaded) => {
                failures = 0;
                wait = Duration::ZERO;
                log!("trempy task \"{}\": full load complete", task.names.task());
                // The sequences go next (a full_load task ends once they are published).
                phases.load_done();
            }
            Ok(Round::Failed(failure)) => {
                record_failure(task, &failure);
                return;
            }
            Ok(Round::Streaming(next)) => {
                failures = 0;
                wait = next;
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                // Whatever was handed to the AMQP thread may be behind a failure: the stream
                // starts again from the slot's confirmed position, the copy from its start.
                streaming.close(publisher);
                match reaction(err.kind(), failures) {
                    Reaction::Exit => return,
                    Reaction::Restart => {
                        warning!(
                            "trempy task \"{}\": {err}; exiting, the launcher starts a new worker",
                            task.names.task()
                        );
                        record_error(task, &err);
                        return;
                    }
                    Reaction::RetryAfter(delay) => {
                        warning!("trempy task \"{}\": {err}; retrying in {} ms", task.names.task(), delay.as_millis());
                        record_error(task, &err);
                        error_active = true;
                        wait = delay;
                    }
                }
            }
        }
    }
}

/// A full load runs once: the task is done, not waiting. Only now, once the sequences are
/// published too, so that a worker that died before is started again.
fn finish(task: &Task) {
    if let Err(err) = in_transaction(|| {
        Spi::connect_mut(|client| {
            client.update(
                "UPDATE trempy.tasks SET enabled = false WHERE task_id = $1",
                None,
                &[task.task_id.into()],
            )?;
            Ok(())
        })
    }) {
        warning!("trempy task \"{}\": could not mark the finished full load: {err}", task.names.task());
    }
}

/// Publishes the task's settings, which apply to every message after them.
fn publish_settings(task: &Task, publisher: &Publisher) -> Result<(), Error> {
    let body = trempy_protocol::envelope::settings_message(&task.stream, &task.document)?;
    send(publisher, body, format!("{}:settings:{}", task.names.task(), task.stream.generation))?;
    confirm(publisher)
}

/// The full load's next step (a transaction to plan, one to copy).
fn step(task: &Task, publisher: &Publisher) -> Result<Round, Error> {
    let next = in_transaction(|| {
        Spi::connect_mut(|client| {
            if !enabled(client, task)? {
                return Ok(None);
            }
            if task.settings.streams() {
                // Every copy's snapshot must be taken after the slot's consistent point.
                match check_slot(client, task)? {
                    Ok(_) => {}
                    Err(round) => return Ok(Some(Err(round))),
                }
            }
            client.update(
                "UPDATE trempy.task_progress SET phase = 'full_load', load_started_at = coalesce(load_started_at, now()), load_finished_at = NULL
                  WHERE task_name = $1 AND phase IS DISTINCT FROM 'full_load'",
                None,
                &[task.names.task().into()],
            )?;
            match load::next(client, task.names.task(), task.stream.generation, &task.settings)? {
                Next::Copy(due) => Ok(Some(Ok(due))),
                Next::Done => {
                    let phase = if task.settings.streams() { "cdc" } else { "finished" };
                    client.update(
                        "UPDATE trempy.task_progress SET phase = $2, load_finished_at = now() WHERE task_name = $1",
                        None,
                        &[task.names.task().into(), phase.into()],
                    )?;
                    Ok(Some(Err(Round::Loaded)))
                }
            }
        })
    })?;
    match next {
        None => Ok(Round::Stop),
        Some(Err(round)) => Ok(round),
        Some(Ok(due)) => {
            ensure_connected(publisher)?;
            let copied = in_repeatable_read_transaction(|| {
                load::copy_table(
                    &task.stream,
                    task.settings.prepare(),
                    task.settings.streams(),
                    &due,
                    publisher,
                    gucs::max_message_bytes(),
                )
            })?;
            Ok(Round::Copied(due, copied))
        }
    }
}

/// The OIDs of the task's tables now (`trempy.task_relids`: renames keep them, the event
/// trigger keeps the settings' names current).
fn task_relids(client: &pgrx::spi::SpiClient<'_>, task: &Task) -> Result<Vec<u32>, Error> {
    let rows = client.select("SELECT r::int8 FROM trempy.task_relids($1) r", None, &[task.names.task().into()])?;
    let mut relids = Vec::new();
    for row in rows {
        if let Some(relid) = row.get::<i64>(1)?.and_then(|r| u32::try_from(r).ok()) {
            relids.push(relid);
        }
    }
    Ok(relids)
}

fn enabled(client: &pgrx::spi::SpiClient<'_>, task: &Task) -> Result<bool, Error> {
    let row = client.select("SELECT enabled FROM trempy.tasks WHERE task_id = $1", Some(1), &[task.task_id.into()])?;
    Ok(!row.is_empty() && row.first().get::<bool>(1)?.unwrap_or(false))
}

/// How often the counts of a busy stream are recorded in `trempy.task_progress`: each record is
/// a write transaction at the source (which the walsender decodes in turn).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// How often at most the counts are recorded once the stream has nothing in flight, so that
/// `trempy.status()` shows a caught-up task promptly.
const PROGRESS_INTERVAL_IDLE: Duration = Duration::from_millis(100);

/// The worker's stream, while it streams, and what of it was recorded.
#[derive(Default)]
struct Streaming {
    stream: Option<Stream>,
    /// Counts and position of the stream recorded in `trempy.task_progress`.
    recorded: stream::Confirmed,
    recorded_at: Option<std::time::Instant>,
    /// Commit LSN of the last transaction RabbitMQ confirmed in this worker: the next stream's
    /// first transaction names it.
    last_commit: Option<Lsn>,
    /// When the task was last seen enabled (`stop_task` only clears the flag).
    checked_at: Option<std::time::Instant>,
}

impl Streaming {
    fn socket(&self) -> Option<pg_sys::pgsocket> {
        self.stream.as_ref().and_then(Stream::socket)
    }

    /// After an error: closes the stream, if open (the walsender stops), and lets the AMQP
    /// thread publish again (a publish failure is sticky until then, whoever published: the
    /// settings, a copy, the sequences or the stream all start again from a confirmed point).
    fn close(&mut self, publisher: &Publisher) {
        self.stream = None;
        publisher.rewind();
    }

    /// Opens the stream if needed, then pumps it once and records its progress (at most every
    /// [`PROGRESS_INTERVAL`], or [`PROGRESS_INTERVAL_IDLE`] once nothing is in flight, and only
    /// when something was published: recording writes WAL).
    fn step(&mut self, task: &Task, publisher: &Publisher, error_active: &mut bool) -> Result<Round, Error> {
        if self.stream.is_none() {
            match self.open(task, publisher)? {
                Ok(stream) => {
                    self.stream = Some(stream);
                    self.recorded = stream::Confirmed::default();
                    // opening just read the enabled flag
                    self.checked_at = Some(std::time::Instant::now());
                }
                Err(round) => return Ok(round),
            }
        }
        let Some(stream) = self.stream.as_mut() else { return Ok(Round::Idle) };
        // Whether the task is still enabled, at the housekeeping interval (a catalog read).
        let check = self.checked_at.is_none_or(|at| at.elapsed() >= task.poll_interval);
        let pumped = in_transaction(|| {
            Spi::connect(|client| {
                if check && !enabled(client, task)? {
                    return Ok(None);
                }
                stream.pump(client, publisher, task.poll_interval).map(Some)
            })
        });
        let pumped = match pumped {
            Ok(Some(pumped)) => pumped,
            Ok(None) => {
                self.close(publisher);
                return Ok(Round::Stop);
            }
            Err(err) => {
                // An ERROR raised by the replication connection (the walsender ended, the
                // connection broke) is opened again soon; others follow their own kind.
                let err = if self.stream.as_ref().is_some_and(Stream::failed_in_connection) {
                    err.with_kind(crate::error::ErrorKind::Replication)
                } else {
                    err
                };
                self.close(publisher);
                return Err(err);
            }
        };
        if check {
            self.checked_at = Some(std::time::Instant::now());
        }
        let confirmed = pumped.confirmed;
        self.last_commit = confirmed.commit.or(self.last_commit);
        let interval = if pumped.idle { PROGRESS_INTERVAL_IDLE } else { PROGRESS_INTERVAL };
        let due = self.recorded_at.is_none_or(|at| at.elapsed() >= interval);
        let news = confirmed.counts != self.recorded.counts;
        if due && (news || *error_active) {
            let delta = |now: u64, then: u64| i64::try_from(now.saturating_sub(then)).unwrap_or(i64::MAX);
            let recorded = record(
                task,
                "UPDATE trempy.task_progress
                    SET changes_published = changes_published + $2, transactions_published = transactions_published + $3,
                        messages_published = messages_published + $4,
                        last_published_lsn = CASE WHEN $3 > 0 THEN $5::pg_lsn ELSE last_published_lsn END,
                        last_publish_at = CASE WHEN $3 > 0 THEN now() ELSE last_publish_at END,
                        last_commit_lsn = coalesce($6::pg_lsn, last_commit_lsn), error_active = false
                  WHERE task_name = $1",
                &[
                    task.names.task().into(),
                    delta(confirmed.counts.changes, self.recorded.counts.changes).into(),
                    delta(confirmed.counts.transactions, self.recorded.counts.transactions).into(),
                    delta(confirmed.counts.messages, self.recorded.counts.messages).into(),
                    confirmed.end.to_string().into(),
                    confirmed.commit.map(|lsn| lsn.to_string()).into(),
                ],
            );
            if recorded {
                self.recorded = confirmed;
                self.recorded_at = Some(std::time::Instant::now());
                *error_active = false;
            }
        }
        Ok(Round::Streaming(pumped.wait))
    }

    /// Reads where the stream starts and opens it. `Err` holds the round to report instead (the
    /// task was stopped, or its slot failed or is claimed).
    fn open(&self, task: &Task, publisher: &Publisher) -> Result<Result<Stream, Round>, Error> {
        let start = in_transaction(|| {
            Spi::connect(|client| {
                if !enabled(client, task)? {
                    return Ok(Err(Round::Stop));
                }
                let position = match check_slot(client, task)? {
                    Ok(position) => position,
                    Err(round) => return Ok(Err(round)),
                };
                let handoff = if task.settings.copies() {
                    load::handoff(client, task.names.task(), position.confirmed)?
                } else {
                    trempy_protocol::handoff::Handoff::new()
                };
                let after = match self.last_commit {
                    Some(lsn) => Some(lsn),
                    None => last_commit_lsn(client, task)?,
                };
                Ok(Ok(stream::Start {
                    confirmed: position.confirmed,
                    tables: task_relids(client, task)?,
                    handoff,
                    after,
                    for_create: task.settings.prepare().create,
                    max_message_bytes: gucs::max_message_bytes(),
                    conninfo: stream::conninfo(client)?,
                }))
            })
        })?;
        let start = match start {
            Ok(start) => start,
            Err(round) => return Ok(Err(round)),
        };
        ensure_connected(publisher)?;
        guarded(|| Stream::open(&task.names, &task.stream, start)).map(Ok)
    }
}

/// Commit LSN of the stream's last transaction published (since the task's last reload).
fn last_commit_lsn(client: &pgrx::spi::SpiClient<'_>, task: &Task) -> Result<Option<Lsn>, Error> {
    let row = client.select(
        "SELECT last_commit_lsn::text FROM trempy.task_progress WHERE task_name = $1",
        Some(1),
        &[task.names.task().into()],
    )?;
    if row.is_empty() {
        return Ok(None);
    }
    row.first().get::<String>(1)?.map(|text| Lsn::parse(&text)).transpose().map_err(Error::from)
}

/// Why a task cannot go on without the DBA (`trempy.tasks.failure`): its slot is missing,
/// invalidated, or was made on another system.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    Missing,
    Invalidated,
    OtherSystem(String),
}

impl Failure {
    fn code(&self) -> &'static str {
        match self {
            Self::Missing => "slot_missing",
            Self::Invalidated => "slot_invalidated",
            Self::OtherSystem(_) => "slot_other_system",
        }
    }

    /// The cause and the remedy, for `last_error` and the server log.
    fn explain(&self, task: &Task) -> String {
        let name = task.names.task();
        let slot = task.names.slot();
        let cause = match self {
            Self::Missing => format!(
                "replication slot \"{slot}\" no longer exists (it was dropped, or this server was restored, upgraded or failed over)"
            ),
            Self::Invalidated => format!(
                "replication slot \"{slot}\" was invalidated: it fell further behind than max_slot_wal_keep_size and PostgreSQL removed WAL it needed"
            ),
            Self::OtherSystem(detail) => format!(
                "replication slot \"{slot}\" was created on another server or timeline ({detail}): a promoted standby or a restored copy"
            ),
        };
        format!(
            "{cause}. Changes committed since the task last published may not have been captured, so the task stopped instead of going on from a new slot. \
             Remedy: SELECT trempy.update_task('{name}', <its settings with task.start_mode \"reload\">); a task with a full load copies its tables again and converges, \
             a cdc-only task resumes from the new slot and the changes in between must be reconciled by hand."
        )
    }
}

/// The task's slot, if the task can go on from it: `Err` holds the round to report instead
/// (the task failed, or a helper is busy with the slot: wait). Whether the slot was made on this
/// server is checked once, when the worker starts (`Task::other_system`).
fn check_slot(client: &pgrx::spi::SpiClient<'_>, task: &Task) -> Result<Result<slot::Position, Round>, Error> {
    Ok(match slot::find(client, &task.names)? {
        slot::Found::Usable(position) => Ok(position),
        slot::Found::Missing => Err(Round::Failed(Failure::Missing)),
        slot::Found::Invalidated => Err(Round::Failed(Failure::Invalidated)),
        slot::Found::Claimed => Err(Round::Idle),
    })
}

/// Records that the task failed, with the cause and the remedy (also in the server log): the
/// launcher starts no worker for it until `update_task` reloads it.
fn record_failure(task: &Task, failure: &Failure) {
    let message = failure.explain(task);
    warning!("trempy task \"{}\": {message}", task.names.task());
    let message = message.as_str();
    let recorded = in_transaction(|| {
        Spi::connect_mut(|client| {
            client.update(
                "UPDATE trempy.tasks SET failure = $2 WHERE task_id = $1",
                None,
                &[task.task_id.into(), failure.code().into()],
            )?;
            client.update(
                "UPDATE trempy.task_progress SET last_error = $2, last_error_at = now(), error_active = true WHERE task_name = $1",
                None,
                &[task.names.task().into(), message.into()],
            )?;
            Ok(())
        })
    });
    if let Err(err) = recorded {
        warning!("trempy task \"{}\": could not record its failure: {err}", task.names.task());
    }
}

/// Runs a write against the task's progress row (`$1` is the task name, first of `args`) in its
/// own transaction; true on success.
fn record(task: &Task, sql: &str, args: &[pgrx::datum::DatumWithOid<'_>]) -> bool {
    let result =
        in_transaction(|| Spi::connect_mut(|client| client.update(sql, None, args).map(|_| ()).map_err(Error::from)));
    if let Err(err) = &result {
        warning!("trempy task \"{}\": could not record progress: {err}", task.names.task());
    }
    result.is_ok()
}

/// How often a report that changes nothing but counts and time is recorded: each record is a
/// write transaction at the source.
const REPORT_REFRESH: Duration = Duration::from_secs(30);

/// A report is recorded when it says something new, or [`REPORT_REFRESH`] after the last one.
fn worth_recording(last: Option<&(Report, std::time::Instant)>, next: &Report) -> bool {
    let Some((last, at)) = last else { return true };
    let key = |r: &Report| {
        (r.state, r.reason.clone(), r.since_ms, r.watermark, r.generation, r.dead_letters, r.schema_changes_applied)
    };
    key(last) != key(next) || at.elapsed() >= REPORT_REFRESH
}

/// Records the applier's latest report (information only: a failure is a warning); true on
/// success.
fn record_report(task: &Task, report: &Report) -> bool {
    let since = report.since_ms.map(|ms| ms as f64 / 1000.0);
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    record(
        task,
        "UPDATE trempy.task_progress
            SET applier_state = $2, applier_reason = $3, applier_since = to_timestamp($4), applier_lsn = $5::pg_lsn,
                applier_generation = $6, applier_transactions = $7, applier_changes = $8, applier_rows_loaded = $9,
                applier_dead_letters = $10, applier_reported_at = to_timestamp($11), applier_received_at = now(),
                applier_schema_changes = coalesce($12, applier_schema_changes),
                applier_last_schema_change = coalesce($13, applier_last_schema_change)
          WHERE task_name = $1",
        &[
            task.names.task().into(),
            report.state.as_str().into(),
            report.reason.as_deref().into(),
            since.into(),
            report.watermark.to_string().into(),
            i64::from(report.generation).into(),
            count(report.transactions_applied).into(),
            count(report.changes_applied).into(),
            count(report.rows_loaded).into(),
            count(report.dead_letters).into(),
            (report.reported_at_ms as f64 / 1000.0).into(),
            report.schema_changes_applied.map(count).into(),
            report.last_schema_change.as_deref().into(),
        ],
    )
}

fn record_error(task: &Task, err: &Error) {
    let message = err.to_string();
    record(
        task,
        "UPDATE trempy.task_progress SET last_error = $2, last_error_at = now(), error_active = true WHERE task_name = $1",
        &[task.names.task().into(), message.as_str().into()],
    );
}
