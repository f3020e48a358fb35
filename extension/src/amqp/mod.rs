//! The AMQP side of a task worker: one OS thread with its own tokio runtime, which owns the
//! RabbitMQ connection and publishes what the worker's main thread hands it.
//!
//! **No Postgres API is called from here** (this module imports no pgrx): the main thread talks
//! to this thread over channels only. Messages are published one at a time, each awaited until
//! RabbitMQ confirms it; a nack, a returned (unroutable) message, an error or a timeout marks the
//! stream failed and drops the connection, and every later message is discarded until the main
//! thread rewinds. So the queue only ever receives a prefix of the stream, never a stream with a
//! hole in it, and the main thread confirms the slot only up to what a flush said was confirmed.
//!
//! Between messages, every [`feedback::POLL`], the thread also reads the task's feedback queue
//! (the applier's reports, see [`trempy_protocol::feedback`]) on a channel of its own and hands
//! the latest valid report to the main thread ([`Publisher::latest_report`]). Nothing about
//! reports can fail a batch: a missing queue, a malformed report or a broken channel only means
//! no report this time.

mod batch;
mod feedback;

use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::mpsc;
use trempy_protocol::envelope;
use trempy_protocol::feedback::Report;
use trempy_protocol::names::TaskNames;
use trempy_protocol::topology;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where RabbitMQ is and how to log in: `trempy.amqp_url` and `trempy.amqp_password_file`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Broker {
    pub(crate) url: String,
    pub(crate) password_file: Option<std::path::PathBuf>,
}

impl Broker {
    /// The URL to connect with, the password file read now (so a rotated password is used from
    /// the next connection on).
    fn connect_url(&self) -> Result<String, String> {
        trempy_protocol::credentials::resolve(&self.url, self.password_file.as_deref())
            .map_err(|e| e.message().to_owned())
    }

    /// Whether the password sits in `trempy.amqp_url` itself (readable by `pg_read_all_settings`).
    pub(crate) fn password_in_url(&self) -> bool {
        self.password_file.is_none() && trempy_protocol::credentials::holds_password(&self.url)
    }
}

enum Command {
    Configure(Option<Broker>),
    Publish { body: Vec<u8>, message_id: String },
    Flush(std_mpsc::Sender<Result<(), String>>),
    Rewind,
    Connect(std_mpsc::Sender<Result<(), String>>),
}

/// What became of a message offered to the thread.
pub(crate) enum Offer {
    /// Queued for publishing.
    Accepted,
    /// The thread is busy; offer it again.
    Full(Vec<u8>, String),
    /// The thread is gone.
    Gone,
}

/// Handle to the AMQP thread, held by the worker's main thread.
pub(crate) struct Publisher {
    tx: mpsc::Sender<Command>,
    reports: std_mpsc::Receiver<Report>,
    thread: Option<JoinHandle<()>>,
}

impl Publisher {
    /// Starts the thread with every signal blocked, so that PostgreSQL's signals are always
    /// delivered to the main thread (and to no thread that lapin or tokio start later).
    pub(crate) fn spawn(names: TaskNames) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(4);
        let (reports_tx, reports) = std_mpsc::channel();
        let thread = with_signals_blocked(|| {
            std::thread::Builder::new().name("trempy-amqp".into()).spawn(move || run(names, rx, reports_tx))
        })?;
        Ok(Self { tx, reports, thread: Some(thread) })
    }

    /// The latest applier report read since the last call, if any. Never blocks.
    pub(crate) fn latest_report(&self) -> Option<Report> {
        self.reports.try_iter().last()
    }

    /// Sets (or changes) the broker; the connection is re-opened on the next message.
    pub(crate) fn configure(&self, broker: Option<Broker>) -> bool {
        self.tx.blocking_send(Command::Configure(broker)).is_ok()
    }

    /// Offers one message without blocking.
    pub(crate) fn offer(&self, body: Vec<u8>, message_id: String) -> Offer {
        match self.tx.try_send(Command::Publish { body, message_id }) {
            Ok(()) => Offer::Accepted,
            Err(mpsc::error::TrySendError::Full(Command::Publish { body, message_id })) => {
                Offer::Full(body, message_id)
            }
            Err(_) => Offer::Gone,
        }
    }

    /// Asks for the outcome of everything offered so far: `Ok` once RabbitMQ has confirmed all
    /// of it, else the first failure since the last [`Publisher::rewind`]. Poll the receiver.
    pub(crate) fn flush(&self) -> Option<std_mpsc::Receiver<Result<(), String>>> {
        let (reply, rx) = std_mpsc::channel();
        self.tx.blocking_send(Command::Flush(reply)).ok().map(|()| rx)
    }

    /// After a failure: the main thread publishes again from a confirmed position, so messages
    /// offered from now on are published (until then every one is discarded, see [`batch`]).
    pub(crate) fn rewind(&self) -> bool {
        self.tx.blocking_send(Command::Rewind).is_ok()
    }

    /// Asks the thread to make sure it is connected (opening the connection if needed): `Ok` once
    /// it is, else why not. Lets the worker find RabbitMQ down before it decodes a batch it could
    /// not publish. Poll the receiver with a timeout.
    pub(crate) fn connect(&self) -> Option<std_mpsc::Receiver<Result<(), String>>> {
        let (reply, rx) = std_mpsc::channel();
        self.tx.blocking_send(Command::Connect(reply)).ok().map(|()| rx)
    }

    /// Closes the connection and waits (boundedly) for the thread to end.
    pub(crate) fn shutdown(mut self) {
        let Some(thread) = self.thread.take() else { return };
        drop(self);
        let deadline = std::time::Instant::now() + JOIN_TIMEOUT;
        while !thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

/// Marks a failure as RabbitMQ refusing a message for its size ([`OVERSIZE_MARK`] leads the
/// text), with the cause and the remedy, if `error` says so (RabbitMQ closes the channel with
/// `PRECONDITION_FAILED - message size N is larger than configured max size M`).
fn oversize(error: &str, message_id: &str, bytes: usize) -> Option<String> {
    error.contains("larger than configured max size").then(|| {
        format!(
            "{OVERSIZE_MARK}: RabbitMQ refused message {message_id} of {bytes} bytes as larger than its max_message_size ({error}). \
             A transaction is cut into messages of trempy.max_message_size, but one row change is never cut: \
             lower trempy.max_message_size below RabbitMQ's limit if it is above it, otherwise raise max_message_size in rabbitmq.conf \
             (RabbitMQ allows up to 512 MiB). The task retries by itself and resumes once the message fits; nothing is skipped"
        )
    })
}

/// Leads the text of a failure that [`oversize`] recognised.
pub(crate) const OVERSIZE_MARK: &str = "message too large for RabbitMQ";

fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: plain libc calls on properly initialised sigset_t values.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let result = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        result
    }
}

struct Link {
    connection: Connection,
    channel: Channel,
    /// Channel reading the feedback queue, opened on first use.
    feedback: Option<Channel>,
}

struct State {
    names: TaskNames,
    broker: Option<Broker>,
    link: Option<Link>,
    /// The batch being published: a prefix only, never a hole.
    batch: batch::Batch,
    /// When reading the feedback queue last opened (or tried to open) a connection.
    feedback_connect: Option<Instant>,
}

fn run(names: TaskNames, mut rx: mpsc::Receiver<Command>, reports: std_mpsc::Sender<Report>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("trempy task {}: could not start the AMQP runtime: {err}", names.task());
            return;
        }
    };
    runtime.block_on(async move {
        let mut state = State { names, broker: None, link: None, batch: batch::Batch::default(), feedback_connect: None };
        let mut poll = tokio::time::interval(feedback::POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let command = tokio::select! {
                command = rx.recv() => command,
                _ = poll.tick() => {
                    // Bounded: this thread also publishes, and a broker that stopped answering
                    // must not hold up the task (the connection is dropped and opened again).
                    match tokio::time::timeout(feedback::TIMEOUT, state.read_feedback()).await {
                        Ok(Some(report)) => {
                            let _ = reports.send(report);
                        }
                        Ok(None) => {}
                        Err(_) => {
                            eprintln!("trempy task {}: reading the feedback queue timed out; reconnecting", state.names.task());
                            state.disconnect().await;
                        }
                    }
                    continue;
                }
            };
            let Some(command) = command else { break };
            match command {
                Command::Configure(broker) => {
                    if broker != state.broker {
                        state.broker = broker;
                        state.disconnect().await;
                    }
                }
                Command::Publish { body, message_id } => {
                    if state.batch.admits()
                        && let Err(err) = state.publish(&body, message_id).await
                    {
                        eprintln!("trempy task {}: publish failed: {err}", state.names.task());
                        state.batch.fail(err);
                        state.disconnect().await;
                    }
                }
                Command::Flush(reply) => {
                    let _ = reply.send(state.batch.flush());
                }
                Command::Rewind => state.batch.rewind(),
                Command::Connect(reply) => {
                    let connected = state.connect().await.map(|_| ());
                    if connected.is_err() {
                        state.disconnect().await;
                    }
                    let _ = reply.send(connected);
                }
            }
        }
        state.disconnect().await;
    });
}

impl State {
    async fn connect(&mut self) -> Result<&Channel, String> {
        if self.link.as_ref().is_some_and(|l| !l.connection.status().connected() || !l.channel.status().connected()) {
            self.disconnect().await;
        }
        if self.link.is_none() {
            let Some(broker) = &self.broker else {
                return Err("trempy.amqp_url is not set".to_owned());
            };
            let url = broker.connect_url()?;
            let name = format!("trempy task {}", self.names.task());
            let link = tokio::time::timeout(CONNECT_TIMEOUT, async {
                let props = ConnectionProperties::default().with_connection_name(name.into());
                let connection =
                    Connection::connect(&url, props).await.map_err(|e| format!("cannot connect to RabbitMQ: {e}"))?;
                let channel = connection.create_channel().await.map_err(|e| format!("cannot open a channel: {e}"))?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(|e| format!("cannot enable publisher confirms: {e}"))?;
                topology::declare(&channel, &self.names)
                    .await
                    .map_err(|e| format!("cannot declare the task's exchanges and queues: {e}"))?;
                Ok::<_, String>(Link { connection, channel, feedback: None })
            })
            .await
            .map_err(|_| format!("connecting to RabbitMQ timed out after {}s", CONNECT_TIMEOUT.as_secs()))??;
            self.link = Some(link);
        }
        self.link.as_ref().map(|l| &l.channel).ok_or_else(|| "no channel".to_owned())
    }

    async fn publish(&mut self, body: &[u8], message_id: String) -> Result<(), String> {
        let exchange = self.names.exchange();
        let routing_key = self.names.routing_key();
        let channel = self.connect().await?;
        let mut headers = FieldTable::default();
        headers.insert("trempy-envelope-version".into(), AMQPValue::LongUInt(envelope::VERSION));
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(envelope::CONTENT_TYPE.into())
            .with_message_id(message_id.as_str().into())
            .with_app_id("trempy".into())
            .with_headers(headers);
        let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
        let too_large = |e: &lapin::Error| oversize(&e.to_string(), &message_id, body.len());
        let publish =
            channel.basic_publish(exchange.as_str().into(), routing_key.as_str().into(), options, body, properties);
        let confirm = tokio::time::timeout(CONFIRM_TIMEOUT, publish)
            .await
            .map_err(|_| format!("RabbitMQ did not take a message within {}s", CONFIRM_TIMEOUT.as_secs()))?
            .map_err(|e| too_large(&e).unwrap_or_else(|| format!("publish failed: {e}")))?;
        let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| format!("RabbitMQ did not confirm a message within {}s", CONFIRM_TIMEOUT.as_secs()))?
            .map_err(|e| too_large(&e).unwrap_or_else(|| format!("publisher confirm failed: {e}")))?;
        if !confirmation.is_ack() {
            return Err("RabbitMQ refused (nacked) a message".to_owned());
        }
        if let Some(returned) = confirmation.take_message() {
            return Err(format!(
                "RabbitMQ returned a message as unroutable ({} {}); is the task's queue bound?",
                returned.reply_code, returned.reply_text
            ));
        }
        Ok(())
    }

    async fn disconnect(&mut self) {
        if let Some(link) = self.link.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), link.connection.close(200, "bye".into())).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmqs_size_refusal_is_recognised_with_the_cause_and_the_remedy() {
        let refused =
            "channel closed: PRECONDITION_FAILED - message size 20000000 is larger than configured max size 16777216";
        let text = oversize(refused, "orders:0/1A2B3C:4", 20_000_000).unwrap_or_default();
        assert!(text.starts_with(OVERSIZE_MARK), "{text}");
        assert!(text.contains("orders:0/1A2B3C:4") && text.contains("20000000 bytes"), "{text}");
        assert!(text.contains("max_message_size") && text.contains("nothing is skipped"), "{text}");
        assert_eq!(oversize("publish failed: connection reset by peer", "m", 10), None);
    }
}
