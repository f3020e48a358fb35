//! The consuming loop: one session = one target connection + one RabbitMQ channel.
//!
//! Deliveries are processed strictly in queue order. Source transactions already at or below the
//! watermark are skipped. Applied changes accumulate in one open target transaction that is
//! committed (together with the new watermark) at a delivery boundary where no source transaction
//! is half-applied, once enough changes are pending, enough time has passed, or the queue is idle.
//! Deliveries are acknowledged (cumulatively) only after that COMMIT.
//!
//! A source transaction larger than one message arrives as chunks; it is applied inside a
//! savepoint, so that if the decoding side re-publishes it from its first chunk (after a failed
//! publish) the partial copy is rolled back and applied afresh. When its chunks outnumber the
//! prefetch window, the window is doubled: RabbitMQ would send nothing more until something is
//! acknowledged, and nothing can be acknowledged before the transaction ends. (Quorum queues with
//! a single active consumer refuse both `basic.get` and a channel-wide QoS, so the consumer is
//! cancelled, whatever it already received is kept in order, and it consumes again with the
//! larger window; unacknowledged messages stay with the channel meanwhile.) After the next
//! COMMIT the window returns to its configured size.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use tokio::sync::watch;
use tokio_postgres::{Client, NoTls};
use tracing::{error, info, warn};
use trempy_protocol::Lsn;
use trempy_protocol::envelope::Envelope;
use trempy_protocol::names::TaskNames;
use trempy_protocol::topology;

use crate::apply::Writer;
use crate::error::{Error, ErrorKind};
use crate::policy::{self, Reaction};
use crate::progress::{self, Applied};

/// How the applier runs.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) names: TaskNames,
    pub(crate) amqp_url: String,
    pub(crate) target_dsn: String,
    pub(crate) prefetch: u16,
    pub(crate) batch_changes: u64,
    pub(crate) batch_delay: Duration,
    pub(crate) idle_commit: Duration,
}

/// Runs until `shutdown` turns true, reconnecting after failures as the policy says.
pub(crate) async fn run(options: Options, mut shutdown: watch::Receiver<bool>) {
    let mut attempt = 0_u32;
    loop {
        let mut session = match Session::open(&options).await {
            Ok(session) => session,
            Err(err) => {
                attempt = attempt.saturating_add(1);
                if !pause(&options, &err, attempt, &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        match session.serve(&mut shutdown).await {
            Ok(()) => {
                session.close().await;
                return;
            }
            Err(err) => {
                attempt = if session.committed_any { 1 } else { attempt.saturating_add(1) };
                session.close().await;
                if !pause(&options, &err, attempt, &mut shutdown).await {
                    return;
                }
            }
        }
    }
}

/// Reports an error and waits as the policy says; false if shutdown came first.
async fn pause(options: &Options, err: &Error, attempt: u32, shutdown: &mut watch::Receiver<bool>) -> bool {
    let task = options.names.task();
    let table = err.table().unwrap_or("-");
    let lsn = err.lsn().map(|l| l.to_string()).unwrap_or_else(|| "-".into());
    let sqlstate = err.sqlstate().unwrap_or("-");
    let reaction = match policy::reaction(err, attempt) {
        // Dead-lettering happens inside a session; out here it can only mean "try again".
        Reaction::DeadLetter => Reaction::Retry(Duration::from_secs(1)),
        other => other,
    };
    let delay = match reaction {
        Reaction::Retry(delay) => {
            warn!(task, table, lsn, sqlstate, error = %err, retry_in_ms = delay_ms(delay), "apply interrupted; will retry");
            delay
        }
        Reaction::Halt(delay) => {
            error!(task, table, lsn, sqlstate, error = %err, retry_in_ms = delay_ms(delay), "apply halted: fix the cause on the target; the task resumes by itself");
            delay
        }
        Reaction::DeadLetter => Duration::from_secs(1),
    };
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        _ = shutdown.wait_for(|stop| *stop) => false,
    }
}

fn delay_ms(delay: Duration) -> u64 {
    u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)
}

/// A source transaction whose chunks are being applied.
#[derive(Debug, Clone, Copy)]
struct OpenTransaction {
    commit_lsn: Lsn,
    next_seq: u32,
}

struct Session<'o> {
    options: &'o Options,
    client: Client,
    connection: Connection,
    channel: Channel,
    consumer: Consumer,
    /// Prefetch window of the current consumer.
    window: u16,
    /// Number of consumers opened in this session (for unique consumer tags).
    consumers: u32,
    /// Deliveries received by a cancelled consumer, not processed yet.
    backlog: VecDeque<Delivery>,
    writer: Writer,
    /// Watermark committed in the target.
    committed: Lsn,
    /// What the open target transaction holds.
    pending: Applied,
    in_transaction: bool,
    open: Option<OpenTransaction>,
    /// Highest delivery tag that may be acknowledged at the next COMMIT.
    ackable: Option<u64>,
    /// Deliveries the current consumer received since the last acknowledgement.
    unacked: u32,
    since: Option<Instant>,
    committed_any: bool,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    at: Option<Instant>,
    transactions: u64,
    changes: u64,
}

impl<'o> Session<'o> {
    async fn open(options: &'o Options) -> Result<Session<'o>, Error> {
        let (mut client, driver) = tokio_postgres::connect(&options.target_dsn, NoTls).await.map_err(|e| {
            Error::new(ErrorKind::TargetConnection, format!("cannot connect to the target database: {}", e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned())))
        })?;
        tokio::spawn(async move {
            if let Err(err) = driver.await {
                warn!(error = %err, "target connection closed");
            }
        });
        let task = options.names.task();
        let committed = progress::load(&mut client, task).await?;
        let connection = Connection::connect(&options.amqp_url, ConnectionProperties::default().with_connection_name(format!("trempy-applier {task}").into()))
            .await
            .map_err(|e| Error::new(ErrorKind::Broker, format!("cannot connect to RabbitMQ: {e}")))?;
        let channel = connection.create_channel().await?;
        topology::declare(&channel, &options.names).await?;
        let consumer = consume(&channel, &options.names, options.prefetch, 0).await?;
        info!(task, watermark = %committed, queue = %options.names.queue(), "applier connected");
        Ok(Session {
            options,
            client,
            connection,
            channel,
            consumer,
            window: options.prefetch,
            consumers: 1,
            backlog: VecDeque::new(),
            writer: Writer::new(),
            committed,
            pending: Applied { watermark: committed, ..Applied::default() },
            in_transaction: false,
            open: None,
            ackable: None,
            unacked: 0,
            since: None,
            committed_any: false,
            stats: Stats::default(),
        })
    }

    async fn close(self) {
        if self.in_transaction {
            let _ = self.client.batch_execute("ROLLBACK").await;
        }
        let _ = self.connection.close(200, "bye".into()).await;
    }

    /// Consumes until shutdown (Ok) or an error.
    async fn serve(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), Error> {
        loop {
            if self.open.is_some() && self.backlog.is_empty() && self.unacked >= u32::from(self.window) {
                // The window is full in the middle of a source transaction.
                self.resize_window(self.window.saturating_mul(2)).await?;
                continue;
            }
            if let Some(delivery) = self.backlog.pop_front() {
                self.handle(delivery).await?;
                if self.commit_due() {
                    self.commit().await?;
                }
                continue;
            }
            let wait = self.commit_wait();
            let next = tokio::select! {
                next = self.consumer.next() => Some(next),
                () = sleep_opt(wait) => None,
                _ = shutdown.wait_for(|stop| *stop) => {
                    if self.open.is_none() {
                        self.commit().await?;
                    }
                    return Ok(());
                }
            };
            match next {
                None => self.commit().await?,
                Some(Some(Ok(delivery))) => {
                    self.unacked += 1;
                    self.handle(delivery).await?;
                    if self.commit_due() {
                        self.commit().await?;
                    }
                }
                Some(Some(Err(err))) => return Err(err.into()),
                Some(None) => return Err(Error::new(ErrorKind::Broker, "the consumer was cancelled by RabbitMQ")),
            }
        }
    }

    /// How long to wait for the next delivery before committing what is pending.
    fn commit_wait(&self) -> Option<Duration> {
        if self.open.is_some() || self.ackable.is_none() {
            return None;
        }
        let since = self.since.map_or(Duration::ZERO, |s| s.elapsed());
        Some(self.options.idle_commit.min(self.options.batch_delay.saturating_sub(since)))
    }

    fn commit_due(&self) -> bool {
        self.open.is_none()
            && self.ackable.is_some()
            && (self.pending.changes >= self.options.batch_changes || self.since.is_some_and(|s| s.elapsed() >= self.options.batch_delay))
    }

    async fn handle(&mut self, delivery: Delivery) -> Result<(), Error> {
        self.since.get_or_insert_with(Instant::now);
        let tag = delivery.delivery_tag;
        let envelope = match Envelope::parse(&delivery.data) {
            Ok(envelope) if envelope.task == self.options.names.task() => envelope,
            Ok(envelope) => return self.dead_letter(tag, &format!("message of task {:?} in the queue of task {:?}", envelope.task, self.options.names.task())).await,
            Err(err) => return self.dead_letter(tag, err.message()).await,
        };
        for transaction in &envelope.transactions {
            if let Some(open) = self.open {
                if transaction.commit_lsn == open.commit_lsn && transaction.seq == open.next_seq {
                    self.apply(&envelope, transaction).await?;
                    continue;
                }
                // The decoding side re-published from an earlier point: drop the partial copy.
                warn!(task = self.options.names.task(), lsn = %open.commit_lsn, "source transaction restarted; discarding its partial application");
                self.writer.reset();
                self.client.batch_execute("ROLLBACK TO SAVEPOINT trempy_source_transaction").await?;
                self.open = None;
            }
            if transaction.commit_lsn <= self.pending.watermark {
                continue; // applied already (redelivery or re-publication)
            }
            if transaction.seq != 0 {
                warn!(task = self.options.names.task(), lsn = %transaction.commit_lsn, seq = transaction.seq, "chunk without its start; skipped (its transaction is re-published whole)");
                continue;
            }
            self.begin().await?;
            if !transaction.last {
                self.writer.flush(&self.client).await?;
                self.client.batch_execute("SAVEPOINT trempy_source_transaction").await?;
            }
            self.apply(&envelope, transaction).await?;
        }
        if self.open.is_none() {
            self.ackable = Some(tag);
        }
        Ok(())
    }

    async fn begin(&mut self) -> Result<(), Error> {
        if !self.in_transaction {
            self.client.batch_execute("BEGIN").await?;
            self.in_transaction = true;
        }
        Ok(())
    }

    async fn apply(&mut self, envelope: &Envelope, transaction: &trempy_protocol::envelope::Transaction) -> Result<(), Error> {
        for change in &transaction.changes {
            self.writer.apply(&self.client, envelope, change).await.map_err(|e| e.with_lsn(transaction.commit_lsn))?;
        }
        self.pending.changes += transaction.changes.len() as u64;
        if transaction.last {
            self.writer.flush(&self.client).await.map_err(|e| e.with_lsn(transaction.commit_lsn))?;
            self.pending.watermark = transaction.commit_lsn;
            self.pending.commit_time = Some(transaction.commit_time.clone());
            self.pending.transactions += 1;
            self.open = None;
        } else {
            self.open = Some(OpenTransaction { commit_lsn: transaction.commit_lsn, next_seq: transaction.seq + 1 });
        }
        Ok(())
    }

    /// Commits the open target transaction with the new watermark, then acknowledges.
    async fn commit(&mut self) -> Result<(), Error> {
        debug_assert!(self.open.is_none());
        if self.in_transaction {
            self.writer.flush(&self.client).await?;
            if self.pending.watermark > self.committed {
                progress::advance(&self.client, self.options.names.task(), self.committed, &self.pending).await?;
            }
            self.client.batch_execute("COMMIT").await?;
            self.in_transaction = false;
            self.committed = self.pending.watermark;
            self.committed_any = true;
            self.stats.transactions += self.pending.transactions;
            self.stats.changes += self.pending.changes;
        }
        if let Some(tag) = self.ackable.take() {
            self.channel.basic_ack(tag, BasicAckOptions { multiple: true }).await?;
            self.unacked = 0;
        }
        self.pending = Applied { watermark: self.committed, ..Applied::default() };
        self.since = None;
        self.report();
        if self.window > self.options.prefetch && self.open.is_none() {
            self.resize_window(self.options.prefetch).await?;
        }
        Ok(())
    }

    /// Replaces the consumer by one with another prefetch window, keeping every delivery the
    /// old one received (in order) for processing.
    async fn resize_window(&mut self, window: u16) -> Result<(), Error> {
        let tag = consumer_tag(&self.options.names, self.consumers - 1);
        self.channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await?;
        while let Some(delivery) = self.consumer.next().await {
            self.backlog.push_back(delivery?);
        }
        self.consumer = consume(&self.channel, &self.options.names, window, self.consumers).await?;
        self.consumers += 1;
        self.unacked = 0;
        self.window = window;
        info!(task = self.options.names.task(), window, "consumer window resized");
        Ok(())
    }

    fn report(&mut self) {
        let at = *self.stats.at.get_or_insert_with(Instant::now);
        if at.elapsed() >= Duration::from_secs(10) {
            info!(task = self.options.names.task(), transactions = self.stats.transactions, changes = self.stats.changes, watermark = %self.committed, "applied");
            self.stats = Stats { at: Some(Instant::now()), ..Stats::default() };
        }
    }

    /// Sends a message that can never be applied to the task's dead-letter queue. Everything
    /// before it is committed first, so the order of what is applied is unaffected.
    async fn dead_letter(&mut self, tag: u64, reason: &str) -> Result<(), Error> {
        error!(task = self.options.names.task(), delivery_tag = tag, reason, "dead-lettering a message that is not a valid envelope");
        if self.open.is_none() {
            self.commit().await?;
        }
        self.channel.basic_reject(tag, BasicRejectOptions { requeue: false }).await?;
        Ok(())
    }
}

fn consumer_tag(names: &TaskNames, n: u32) -> String {
    format!("trempy-applier-{}-{n}", names.task())
}

async fn consume(channel: &Channel, names: &TaskNames, window: u16, n: u32) -> Result<Consumer, Error> {
    channel.basic_qos(window, BasicQosOptions { global: false }).await?;
    let tag = consumer_tag(names, n);
    Ok(channel.basic_consume(names.queue().as_str().into(), tag.as_str().into(), BasicConsumeOptions::default(), FieldTable::default()).await?)
}

async fn sleep_opt(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
