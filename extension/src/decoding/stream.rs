//! A task's change stream: its replication connection ([`Connection`]) read continuously, each
//! pgoutput message turned into envelope messages as it arrives ([`Assembler`]) and handed to
//! the AMQP thread, and the slot confirmed, through standby status updates, only up to what
//! RabbitMQ has confirmed ([`Confirmations`]).
//!
//! * **Latency.** A transaction is handed over as soon as its commit is decoded when the AMQP
//!   thread is idle. While it is busy confirming earlier messages, later transactions are packed
//!   into the next message (up to `trempy.max_message_size`), which goes as soon as it is free:
//!   batching grows with the load instead of costing latency at low rates.
//! * **Confirmation.** After a transaction is handed over, a flush is asked for; its answer (in
//!   order) confirms everything before it. Only then does the status update move the slot.
//!   Idle, the keepalive position is confirmed (see [`Confirmations`]).
//! * **Failure.** Any error drops the stream: the connection is closed, and the worker rewinds
//!   the AMQP thread and opens a new stream, which the walsender starts from the slot's
//!   confirmed position. Transactions handed over but not confirmed are sent again; the applier
//!   skips what it already applied (their commit LSNs are at or below its watermark).
//! * **Memory.** A transaction of any size goes out in chunks as it is decoded; the socket's
//!   backpressure holds the walsender while the AMQP thread is busy.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use pgrx::spi::SpiClient;
use trempy_protocol::Lsn;
use trempy_protocol::assemble::{Assembler, Counts};
use trempy_protocol::envelope::StreamId;
use trempy_protocol::handoff::Handoff;
use trempy_protocol::names::TaskNames;
use trempy_protocol::pgoutput::{self, Message};
use trempy_protocol::replication::{self, Confirmations, ServerMessage};

pub(crate) use super::connection::server_conninfo as conninfo;
use super::connection::{Connection, Received};
use super::describe::describe;
use crate::amqp::Publisher;
use crate::error::{Error, ErrorKind};
use crate::outbox::{publish_failure, send};

/// How long one [`Stream::pump`] reads before it lets the worker do its housekeeping.
const PUMP_BUDGET: Duration = Duration::from_millis(50);

/// A status update is sent at least this often, whether the position moved or not (the
/// walsender drops a connection silent for `wal_sender_timeout`, 60 s by default).
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// A moved position is reported at most this often.
const STATUS_MIN_INTERVAL: Duration = Duration::from_millis(20);

/// Where a stream starts, read at the source before it is opened.
pub(crate) struct Start {
    /// The slot's confirmed position: decoding resumes right after it.
    pub(crate) confirmed: Lsn,
    /// The task's tables, by OID.
    pub(crate) tables: Vec<u32>,
    /// Changes that tables' full loads already contain, to leave out.
    pub(crate) handoff: Handoff,
    /// Commit LSN of the last transaction published before, if known: the first transaction
    /// names it (the applier detects gaps that way).
    pub(crate) after: Option<Lsn>,
    /// Describe NOT NULL and the created column types too (`create_table_if_not_exists`).
    pub(crate) for_create: bool,
    pub(crate) max_message_bytes: usize,
    /// How to connect (never logged).
    pub(crate) conninfo: String,
}

/// A flush asked of the AMQP thread, and what its success confirms.
struct Ticket {
    reply: Receiver<Result<(), String>>,
    /// The stream's counts when it was asked for.
    counts: Counts,
    /// Commit LSN of the last transaction it covers.
    commit: Option<Lsn>,
}

/// What RabbitMQ has confirmed of the stream so far.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Confirmed {
    /// Since the stream was opened.
    pub(crate) counts: Counts,
    /// End of the last transaction RabbitMQ confirmed (or the slot's position at the start).
    pub(crate) end: Lsn,
    /// Commit LSN of the last transaction confirmed, if any.
    pub(crate) commit: Option<Lsn>,
}

/// What one [`Stream::pump`] left behind.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pumped {
    /// Everything confirmed so far.
    pub(crate) confirmed: Confirmed,
    /// How long the worker may wait (on its latch and [`Stream::socket`]) before pumping again.
    pub(crate) wait: Duration,
    /// Nothing is in flight: everything received was published and confirmed.
    pub(crate) idle: bool,
}

/// An open stream; see the module documentation.
pub(crate) struct Stream {
    names: TaskNames,
    connection: Connection,
    assembler: Assembler,
    confirmations: Confirmations,
    tickets: VecDeque<Ticket>,
    confirmed: Confirmed,
    for_create: bool,
    /// Complete transactions received since the last flush request.
    unrequested: bool,
    /// Highest WAL position received (the status update's write position).
    written: Lsn,
    reply_requested: bool,
    last_status: Instant,
    sent: u64,
    opened_at: Lsn,
}

impl Stream {
    /// Opens the task's replication connection and starts streaming its slot.
    pub(crate) fn open(names: &TaskNames, stream: &StreamId, start: Start) -> Result<Self, Error> {
        let connection = Connection::start(&start.conninfo, &names.slot(), &names.slot(), &names.publication())?;
        let assembler = Assembler::new(stream, start.max_message_bytes)
            .with_handoff(start.handoff)
            .with_tables(start.tables)
            .after(start.after);
        Ok(Self {
            names: names.clone(),
            connection,
            assembler,
            confirmations: Confirmations::new(start.confirmed),
            tickets: VecDeque::new(),
            confirmed: Confirmed { counts: Counts::default(), end: start.confirmed, commit: start.after },
            for_create: start.for_create,
            unrequested: false,
            written: start.confirmed,
            reply_requested: false,
            last_status: Instant::now(),
            sent: 0,
            opened_at: start.confirmed,
        })
    }

    /// Whether the error that ended the last pump came from the replication connection.
    pub(crate) fn failed_in_connection(&self) -> bool {
        self.connection.failed()
    }

    /// The socket to wait on between pumps.
    pub(crate) fn socket(&self) -> Option<pgrx::pg_sys::pgsocket> {
        self.connection.socket()
    }

    /// Reads what the walsender sent (for at most [`PUMP_BUDGET`]), publishes it, collects the
    /// AMQP thread's answers and reports the confirmed position. Runs inside a transaction:
    /// a Relation message is described with SPI. With nothing in flight, the worker waits up to
    /// `idle_wait` for the socket (its housekeeping interval).
    pub(crate) fn pump(
        &mut self,
        client: &SpiClient<'_>,
        publisher: &Publisher,
        idle_wait: Duration,
    ) -> Result<Pumped, Error> {
        let deadline = Instant::now() + PUMP_BUDGET;
        let mut more = false;
        loop {
            self.collect()?;
            let buf = match self.connection.receive()? {
                Received::Data(buf) => buf,
                Received::WouldBlock => break,
                Received::Ended => {
                    return Err(Error::new(ErrorKind::Replication, "the walsender ended the replication stream"));
                }
            };
            // The message borrows the connection's buffer: copy what outlives it first.
            match replication::parse(buf)? {
                ServerMessage::XLogData { wal_start, data, .. } => {
                    self.written = self.written.max(wal_start);
                    let message = pgoutput::parse(data)?;
                    let commit_end = match &message {
                        Message::Commit(commit) => Some(commit.end_lsn),
                        _ => None,
                    };
                    let for_create = self.for_create;
                    let mut describe = |relation: &pgoutput::Relation<'_>| describe(client, relation, for_create);
                    if let Some(body) = self.assembler.push(message, &mut describe)? {
                        self.hand_over(publisher, body)?;
                    }
                    if let Some(end) = commit_end {
                        self.unrequested = true;
                        self.confirmations.received(end);
                    }
                }
                ServerMessage::Keepalive { wal_end, reply_requested, .. } => {
                    self.confirmations.keepalive(wal_end);
                    self.reply_requested |= reply_requested;
                }
            }
            if Instant::now() >= deadline {
                more = true;
                break;
            }
        }
        let open = self.assembler.in_transaction();
        // Between transactions, with the AMQP thread idle: what was received goes now.
        if !open && self.unrequested && self.tickets.is_empty() {
            if let Some(body) = self.assembler.finish()? {
                self.hand_over(publisher, body)?;
            }
            self.request(publisher)?;
        }
        self.report()?;
        let idle = !more && !open && !self.unrequested && self.tickets.is_empty();
        let wait = if more {
            Duration::ZERO
        } else if self.unrequested && !open {
            // packed transactions wait for the AMQP thread: look again soon
            Duration::from_millis(1)
        } else if !self.tickets.is_empty() {
            Duration::from_millis(10)
        } else {
            idle_wait
        };
        let confirmed = Confirmed { end: self.confirmations.confirmed(), ..self.confirmed };
        Ok(Pumped { confirmed, wait, idle })
    }

    fn hand_over(&mut self, publisher: &Publisher, body: Vec<u8>) -> Result<(), Error> {
        let id = format!("{}:{}:{}", self.names.task(), self.opened_at, self.sent);
        self.sent += 1;
        send(publisher, body, id)
    }

    /// Asks for a flush covering every transaction received so far.
    fn request(&mut self, publisher: &Publisher) -> Result<(), Error> {
        let reply =
            publisher.flush().ok_or_else(|| Error::new(ErrorKind::PublisherGone, "the AMQP thread has stopped"))?;
        self.tickets.push_back(Ticket {
            reply,
            counts: self.assembler.counts(),
            commit: self.assembler.last_commit_lsn(),
        });
        self.confirmations.requested();
        self.unrequested = false;
        Ok(())
    }

    /// Takes the AMQP thread's answers that are in, oldest first.
    fn collect(&mut self) -> Result<(), Error> {
        while let Some(ticket) = self.tickets.front() {
            match ticket.reply.try_recv() {
                Ok(Ok(())) => {
                    let (counts, commit) = (ticket.counts, ticket.commit);
                    self.tickets.pop_front();
                    self.confirmations.answered();
                    self.confirmed.counts = counts;
                    self.confirmed.commit = commit.or(self.confirmed.commit);
                }
                Ok(Err(reason)) => return Err(publish_failure(reason)),
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => {
                    return Err(Error::new(ErrorKind::PublisherGone, "the AMQP thread has stopped"));
                }
            }
        }
        Ok(())
    }

    /// Sends a standby status update when the confirmed position moved, when the walsender
    /// asked for one, or every [`STATUS_INTERVAL`].
    fn report(&mut self) -> Result<(), Error> {
        let due = self.reply_requested || self.last_status.elapsed() >= STATUS_INTERVAL;
        if !due && self.last_status.elapsed() < STATUS_MIN_INTERVAL {
            return Ok(());
        }
        let pending = self.assembler.in_transaction() || self.unrequested;
        let Some(flush) = self.confirmations.report(pending, due) else {
            return Ok(());
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let update =
            replication::status_update(self.written.max(flush), flush, flush, replication::postgres_time(now), false);
        self.connection.send(&update)?;
        self.reply_requested = false;
        self.last_status = Instant::now();
        Ok(())
    }
}
