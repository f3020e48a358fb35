//! The consuming loop: one session = one target connection + one RabbitMQ channel.
//!
//! Deliveries are processed strictly in queue order. Source transactions already at or below the
//! watermark are skipped. Applied changes accumulate in one open target transaction that is
//! committed, together with the new watermark, once enough changes are pending, enough time has
//! passed, or the queue is idle; deliveries are acknowledged (cumulatively) only after that COMMIT.
//!
//! A source transaction larger than one message arrives as chunks (`seq` 0, 1, …, `last`). Its
//! chunks are staged in the target (`trempy.applier_staging`), each staged chunk committed before
//! its delivery is acknowledged, so the prefetch window never has to hold a whole transaction and
//! memory stays bounded. When the last chunk arrives, the staged chunks and the last one are
//! applied in one target transaction with the new watermark, and the staging rows are deleted in
//! it. If the decoding side re-publishes the transaction from its first chunk (after a failed
//! publish), staging starts over. A chunk that does not follow its predecessor is an error: it is
//! never skipped and never acknowledged.
//!
//! Errors: see [`policy`]. After a permanent failure in a batch, the messages of that batch are
//! applied one at a time, each source transaction in a savepoint ([`isolate`]), so that the
//! failing source transaction is known; the task's [`ErrorPolicy`] then stops the task, retries
//! the transaction, or dead-letters it. A message that is not a valid envelope is dead-lettered at
//! once, except a message of this task in a newer envelope version: it halts the task in order
//! (what came before it committed, it left in the queue) until the applier is upgraded. A halt
//! because the task's rules no longer fit a table looks for newer settings behind the failing
//! message ([`lookahead`]).

mod isolate;
mod lookahead;
mod route;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio::sync::watch;
use tokio_postgres::Client;
use tracing::{debug, error, info, warn};
use trempy_protocol::Lsn;
use trempy_protocol::envelope::{Change, Envelope, LoadChunk, Relation, Transaction};
use trempy_protocol::names::TaskNames;
use trempy_protocol::schema::{Backfill, SchemaChange};
use trempy_protocol::settings::TaskSettings;
use trempy_protocol::topology;

use route::Route;

use crate::apply::Writer;
use crate::broker;
use crate::deadletter::{self, Why};
use crate::error::{Error, ErrorKind};
use crate::errorlog::{self, Action};
use crate::load::{self, Verdict};
use crate::migrations;
use crate::policy::{self, ErrorPolicy, Reaction};
use crate::progress::{self, Applied, Position, Staged};
use crate::report::Live;
use crate::rules::{self, Rules};
use crate::schema_change::{self, Management};
use crate::sequence;
use crate::target_catalog::Catalog;
use crate::{state, stream, target};

/// How the applier runs.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) names: TaskNames,
    pub(crate) amqp_url: String,
    pub(crate) target_dsn: String,
    pub(crate) prefetch: u16,
    /// Messages read ahead for newer settings when halted on a rules error ([`lookahead`]).
    pub(crate) lookahead: u16,
    pub(crate) batch_changes: u64,
    pub(crate) batch_delay: Duration,
    pub(crate) idle_commit: Duration,
    /// The error policy until the task's settings arrive in the stream (or are found recorded in
    /// the target); only `max_attempts` is kept then.
    pub(crate) error_policy: ErrorPolicy,
    /// Tells the reports to the source about a halt.
    pub(crate) live: Live,
}

/// What outlives one session.
#[derive(Debug, Clone, Copy)]
struct Carry {
    policy: ErrorPolicy,
    /// After a permanent failure in a batch, messages up to this LSN are applied one at a time.
    isolate_until: Option<Lsn>,
    /// The source transaction `trempy.applier_state` counts failed attempts at.
    failing: Option<Lsn>,
    /// `trempy.applier_state` was told this run started.
    started: bool,
}

/// How long a stopped task waits between looks at `trempy.applier_state`.
const STOPPED_POLL: Duration = Duration::from_secs(1);

/// Runs until `shutdown` turns true, reconnecting after failures as the policy says.
pub(crate) async fn run(options: Options, mut shutdown: watch::Receiver<bool>) {
    let mut attempt = 0_u32;
    // A start resumes a stopped task: the state is set to running at the first connection.
    let mut carry = Carry { policy: options.error_policy, isolate_until: None, failing: None, started: false };
    loop {
        let mut session = match Session::open(&options, carry).await {
            Ok(session) => session,
            Err(err) => {
                attempt = attempt.saturating_add(1);
                if !pause(&options, &err, attempt, None, &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        let served = session.serve(&mut shutdown).await;
        carry = session.carry;
        match served {
            Ok(()) => {
                session.close().await;
                return;
            }
            Err(err) => {
                attempt = if session.committed_any { 1 } else { attempt.saturating_add(1) };
                let (high, committed, retry_in) = (session.high, session.committed.watermark, session.retry_in);
                session.close().await;
                if err.kind() == ErrorKind::Stopped {
                    error!(task = options.names.task(), error = %err, "task stopped by its error policy; resume with `trempy-applier resume --task` or a restart");
                    if !wait_for_resume(&options, &mut shutdown).await {
                        return;
                    }
                    attempt = 0;
                    continue;
                }
                let halt = match err.kind() {
                    ErrorKind::Rules => Some(lookahead::Halt::Rules),
                    ErrorKind::UnchangedToast | ErrorKind::Schema => Some(lookahead::Halt::Reload),
                    _ => None,
                };
                if let Some(halt) = halt {
                    // The remedy (new settings, a reload) is queued behind the failing message.
                    match lookahead::newer_settings(&options, halt).await {
                        Ok(lookahead::Found::Adopted) => {
                            attempt = 0;
                            continue;
                        }
                        Ok(lookahead::Found::Nothing) => {}
                        Err(e) => {
                            warn!(task = options.names.task(), error = %e, "could not look ahead in the queue for newer settings")
                        }
                    }
                }
                if matches!(policy::reaction(&err, attempt), Reaction::Permanent | Reaction::DeadLetter)
                    && carry.isolate_until.is_none()
                    && high > committed
                {
                    warn!(task = options.names.task(), error = %err, up_to = %high, "a source transaction failed permanently; applying one transaction at a time to find it");
                    carry.isolate_until = Some(high);
                    attempt = 0;
                }
                if !pause(&options, &err, attempt, retry_in, &mut shutdown).await {
                    return;
                }
            }
        }
    }
}

/// Waits until an operator resumes the stopped task (or shutdown: false).
async fn wait_for_resume(options: &Options, shutdown: &mut watch::Receiver<bool>) -> bool {
    loop {
        tokio::select! {
            () = tokio::time::sleep(STOPPED_POLL) => {},
            _ = shutdown.wait_for(|stop| *stop) => return false,
        }
        let Ok((client, driver)) = target::connect(&options.target_dsn).await else { continue };
        let now = state::get(&client, options.names.task()).await;
        drop(client);
        let _ = driver.await;
        if let Ok(Some(now)) = now
            && now != "stopped"
        {
            info!(task = options.names.task(), "task resumed");
            return true;
        }
    }
}

/// Reports an error and waits as the policy says (or `retry_in`, when the error policy chose
/// the delay); false if shutdown came first.
async fn pause(
    options: &Options,
    err: &Error,
    attempt: u32,
    retry_in: Option<Duration>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let task = options.names.task();
    let table = err.table().unwrap_or("-");
    let lsn = err.lsn().map(|l| l.to_string()).unwrap_or_else(|| "-".into());
    let sqlstate = err.sqlstate().unwrap_or("-");
    let reaction = match (policy::reaction(err, attempt), retry_in) {
        // Dead-lettering happens inside a session; out here it means the failing source
        // transaction is being pinpointed or tried again.
        (Reaction::Permanent | Reaction::DeadLetter, Some(delay)) => Reaction::Retry(delay),
        // Pinpointing the failing transaction comes first.
        (Reaction::Permanent | Reaction::DeadLetter, None) if attempt == 0 => Reaction::Retry(Duration::ZERO),
        // Failing again while one transaction at a time is applied, where it cannot be
        // dead-lettered (a source transaction larger than one message): halt.
        (Reaction::Permanent | Reaction::DeadLetter, None) => Reaction::Halt(policy::halt_delay(attempt)),
        (other, _) => other,
    };
    let delay = match reaction {
        Reaction::Retry(delay) => {
            warn!(task, table, lsn, sqlstate, error = %err, retry_in_ms = delay_ms(delay), "apply interrupted; will retry");
            delay
        }
        Reaction::Halt(delay) => {
            error!(task, table, lsn, sqlstate, error = %err, retry_in_ms = delay_ms(delay), "apply halted: fix the cause (on the target, or upgrade the applier as the error says); the task resumes by itself");
            options.live.halt(&err.to_string());
            delay
        }
        Reaction::DeadLetter | Reaction::Permanent => Duration::from_secs(1),
    };
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        _ = shutdown.wait_for(|stop| *stop) => false,
    }
}

fn delay_ms(delay: Duration) -> u64 {
    u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)
}

struct Session<'o> {
    options: &'o Options,
    client: Arc<Client>,
    connection: Connection,
    channel: Channel,
    consumer: Consumer,
    /// Confirm-mode channel for dead-letter copies.
    dead_letters: Channel,
    writer: Writer,
    catalog: Catalog,
    /// The task's filters and transformations, compiled per source relation.
    rules: Rules,
    /// The task's settings, as last received.
    settings: Option<TaskSettings>,
    /// Where the task stands, as committed in the target.
    committed: Position,
    /// What the open target transaction holds.
    pending: Applied,
    in_transaction: bool,
    /// The transaction being staged, as the open target transaction sees it.
    staged: Option<Staged>,
    /// Highest delivery tag that may be acknowledged at the next COMMIT.
    ackable: Option<u64>,
    since: Option<Instant>,
    committed_any: bool,
    /// The stream has a gap before the messages now arriving (logged once).
    gapped: bool,
    /// Sequences skipped because the target has none for them (warned once each).
    sequences_warned: std::collections::HashSet<String>,
    stats: Stats,
    carry: Carry,
    /// Highest source commit LSN seen in this session.
    high: Lsn,
    /// Delay the error policy chose for the next attempt.
    retry_in: Option<Duration>,
    /// A schema change was applied in the open target transaction (its settings, rules and
    /// caches are reset if that transaction is rolled back).
    schema_changed: bool,
    /// Per source relation, how the backfills after its last schema change reach the target
    /// (they follow that change in the same source transaction; the next change replaces it).
    backfills: HashMap<u32, schema_change::BackfillPlan>,
}

#[derive(Default)]
struct Stats {
    at: Option<Instant>,
    transactions: u64,
    changes: u64,
}

impl<'o> Session<'o> {
    async fn open(options: &'o Options, mut carry: Carry) -> Result<Session<'o>, Error> {
        let (mut client, _driver) = target::connect(&options.target_dsn).await?;
        migrations::run(&client).await?;
        let task = options.names.task();
        let committed = progress::load(&mut client, task).await?;
        let settings = committed.settings.as_deref().and_then(|text| TaskSettings::parse(text).ok());
        if let Some(settings) = &settings {
            carry.policy = ErrorPolicy::from_settings(settings.error_handling.as_ref(), carry.policy.max_attempts);
        }
        let staged = progress::load_staged(&client, task).await?;
        if !carry.started {
            carry.failing = state::started(&client, task).await?;
            carry.started = true;
        }
        let connection = broker::connect(&options.amqp_url, format!("trempy-applier {task}")).await?;
        let opened = broker::within(broker::STEP_TIMEOUT, "opening the task's queue", async {
            let channel = connection.create_channel().await?;
            topology::declare_consumer_queues(&channel, &options.names).await?;
            let dead_letters = deadletter::confirm_channel(&connection).await?;
            channel.basic_qos(options.prefetch, BasicQosOptions { global: false }).await?;
            let consumer = channel
                .basic_consume(
                    options.names.queue().as_str().into(),
                    format!("trempy-applier-{task}").as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok((channel, dead_letters, consumer))
        })
        .await;
        let (channel, dead_letters, consumer) = match opened {
            Ok(opened) => opened,
            Err(err) => {
                broker::close(&connection, "bye").await;
                return Err(err);
            }
        };
        info!(task, watermark = %committed.watermark, generation = committed.stream.generation, incarnation = committed.stream.incarnation.as_deref().unwrap_or("-"), queue = %options.names.queue(), "applier connected");
        let pending = Applied::continuing(&committed);
        let high = committed.watermark;
        Ok(Session {
            options,
            client: Arc::new(client),
            connection,
            channel,
            consumer,
            dead_letters,
            writer: Writer::new(),
            catalog: Catalog::default(),
            rules: Rules::default(),
            settings,
            committed,
            pending,
            in_transaction: false,
            staged,
            ackable: None,
            since: None,
            committed_any: false,
            gapped: false,
            sequences_warned: std::collections::HashSet::new(),
            stats: Stats::default(),
            carry,
            high,
            retry_in: None,
            schema_changed: false,
            backfills: HashMap::new(),
        })
    }

    /// Replaces the error policy (the task's `error_handling` settings, as they arrive in the
    /// stream), effective at once and for the following sessions of this run.
    fn set_error_policy(&mut self, policy: ErrorPolicy) {
        self.carry.policy = policy;
    }

    async fn close(self) {
        if self.in_transaction {
            let _ = self.client.batch_execute("ROLLBACK").await;
        }
        broker::close(&self.connection, "bye").await;
    }

    fn task(&self) -> &str {
        self.options.names.task()
    }

    /// Consumes until shutdown (Ok) or an error.
    async fn serve(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), Error> {
        loop {
            let wait = self.commit_wait();
            let next = tokio::select! {
                // A delivery that is waiting goes before a commit: batches grow with the load.
                biased;
                next = self.consumer.next() => Some(next),
                () = sleep_opt(wait) => None,
                _ = shutdown.wait_for(|stop| *stop) => {
                    self.commit().await?;
                    return Ok(());
                }
            };
            match next {
                None => self.commit().await?,
                Some(Some(Ok(delivery))) => {
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
        self.ackable?;
        let since = self.since.map_or(Duration::ZERO, |s| s.elapsed());
        Some(self.options.idle_commit.min(self.options.batch_delay.saturating_sub(since)))
    }

    fn commit_due(&self) -> bool {
        self.ackable.is_some()
            && (self.pending.changes >= self.options.batch_changes
                || self.since.is_some_and(|s| s.elapsed() >= self.options.batch_delay))
    }

    async fn handle(&mut self, delivery: Delivery) -> Result<(), Error> {
        self.since.get_or_insert_with(Instant::now);
        let tag = delivery.delivery_tag;
        let mut envelope = match Envelope::parse(&delivery.data) {
            Ok(envelope) if envelope.task == self.task() => envelope,
            Ok(envelope) => {
                let reason = format!("message of task {:?} in the queue of task {:?}", envelope.task, self.task());
                return self.dead_letter(delivery, &reason).await;
            }
            Err(err)
                if err.kind() == trempy_protocol::ErrorKind::NewerEnvelope
                    && message_task(&delivery.data).as_deref() == Some(self.task()) =>
            {
                // Written by a newer TREMpy: halt in order (never skip it) until upgraded. What
                // came before it is committed and acknowledged; it stays in the queue.
                self.commit().await?;
                return Err(Error::new(ErrorKind::NewerEnvelope, err.message()));
            }
            Err(err) if err.kind() == trempy_protocol::ErrorKind::NewerEnvelope => {
                let reason =
                    format!("message of another task in the queue of task {:?}: {}", self.task(), err.message());
                return self.dead_letter(delivery, &reason).await;
            }
            Err(err) => return self.dead_letter(delivery, err.message()).await,
        };
        drop(delivery);
        if let Some(last) = envelope.transactions.last() {
            self.high = self.high.max(last.commit_lsn);
        }
        match stream::verdict(&self.pending.stream, envelope.incarnation.as_deref(), envelope.generation) {
            stream::Verdict::Apply => {
                if self.pending.stream.incarnation.is_none() && envelope.incarnation.is_some() {
                    // The first message naming its incarnation: this target's stream from now on.
                    self.begin().await?;
                    self.pending.stream.incarnation.clone_from(&envelope.incarnation);
                }
            }
            stream::Verdict::Skip => {
                self.ackable = Some(tag); // from before a reload
                return Ok(());
            }
            stream::Verdict::NewGeneration => {
                info!(
                    task = self.task(),
                    generation = envelope.generation,
                    "the task was reloaded at the source; starting over"
                );
                self.start_over(envelope.incarnation.as_deref(), envelope.generation).await?;
            }
            stream::Verdict::NewIncarnation => {
                warn!(
                    task = self.task(),
                    old = self.pending.stream.incarnation.as_deref().unwrap_or("-"),
                    new = envelope.incarnation.as_deref().unwrap_or("-"),
                    "the task was dropped and created again at the source (a new incarnation): everything the old one had reached is forgotten and the new one starts from scratch; \
                     messages of the old incarnation that were still queued were applied before this point"
                );
                self.start_over(envelope.incarnation.as_deref(), envelope.generation).await?;
            }
            stream::Verdict::Retired => {
                return Err(Error::new(
                    ErrorKind::Stream,
                    format!(
                        "a message of incarnation {} of task {} arrived after the newer incarnation {} was applied: two sources publish a task of this name into this queue, \
                         or a message came back from before the task was created again; not applying it. Give each source's task its own name, or purge the queue and reload the task",
                        envelope.incarnation.as_deref().unwrap_or("-"),
                        self.task(),
                        self.pending.stream.incarnation.as_deref().unwrap_or("-"),
                    ),
                ));
            }
        }
        if let Some((at, missing)) = stream::gap(self.pending.watermark, &envelope.transactions) {
            // Nothing of this generation can be applied past the hole: its messages are taken off
            // the queue unapplied (they are useless without the missing ones) while the applier
            // reports itself halted, until the reload the remedy asks for starts a new generation.
            let reason = format!(
                "gap in the stream of task {}: source transaction {at} follows {missing}, which was published but never reached this applier \
                 (the queue was purged, or a broker policy expired or dropped messages); nothing after {} is applied. \
                 Remedy: reload the task at the source (trempy.update_task with start_mode \"reload\"); see docs/architecture.md, \"RabbitMQ policies\"",
                self.task(),
                self.pending.watermark,
            );
            if !self.gapped {
                error!(task = self.task(), lsn = %at, missing = %missing, watermark = %self.pending.watermark, "{reason}");
                self.gapped = true;
            }
            self.options.live.halt(&reason);
            self.ackable = Some(tag);
            return Ok(());
        }
        self.gapped = false;
        if let Some(settings) = envelope.settings.take() {
            self.take_settings(&settings).await?;
        }
        if let Some(values) = envelope.sequences.take() {
            self.begin().await?;
            self.writer.finish(&self.client).await?;
            let settings = self.settings.as_ref();
            let missing = |value: &trempy_protocol::sequence::SequenceValue| {
                if settings.is_some_and(|s| s.prepare().create) {
                    sequence::Missing::Create
                } else if settings.is_some_and(|s| {
                    s.sequences.iter().any(|l| l.schema_name == value.schema && l.sequence_name == value.name)
                }) {
                    sequence::Missing::Halt
                } else {
                    sequence::Missing::Skip
                }
            };
            sequence::apply(&self.client, &values, missing, &mut self.sequences_warned).await?;
        }
        // A message whose every transaction is applied already (a redelivery) prepares nothing:
        // its relations may describe tables as they were before a schema change applied since,
        // and preparing would create a table under a name the target has left behind.
        let applied_already = route::applied_already(
            &envelope.transactions,
            envelope.load.is_some(),
            self.pending.watermark,
            self.staged,
        );
        debug!(
            task = self.task(),
            first = ?envelope.transactions.first().map(|t| (t.commit_lsn, t.seq, t.last)),
            last = ?envelope.transactions.last().map(|t| (t.commit_lsn, t.seq, t.last)),
            transactions = envelope.transactions.len(),
            watermark = %self.pending.watermark,
            relations = ?envelope.relations.iter().map(|r| r.table.as_str()).collect::<Vec<_>>(),
            applied_already,
            "message"
        );
        // A message that goes on with a staged transaction creates no target table here: the
        // staged chunks may hold a rename its relations are described after; they are prepared
        // again, creating what is missing, once the staged chunks are applied (apply_staged).
        let continues = envelope.transactions.first().is_some_and(|t| t.seq > 0);
        if !envelope.relations.is_empty()
            && !applied_already
            && let Err(err) = self.prepare_relations(&envelope, !envelope.transactions.is_empty() && !continues).await
        {
            if err.kind() == ErrorKind::Rules {
                // Halt in order: what came before this message is committed and acknowledged
                // (nothing of it is applied yet), so that it heads the queue for the look-ahead.
                self.commit().await?;
            }
            return Err(err);
        }
        if let Some(chunk) = envelope.load.take() {
            self.load_chunk(chunk).await?;
        }
        if self.isolating(&envelope) {
            return self.handle_isolated(tag, envelope).await;
        }
        for transaction in std::mem::take(&mut envelope.transactions) {
            let lsn = transaction.commit_lsn;
            self.transaction(&envelope, transaction).await.map_err(|e| e.with_lsn(lsn))?;
        }
        self.ackable = Some(tag);
        Ok(())
    }

    /// The task was reloaded, or created again, at the source: start over from an empty
    /// position (in the open transaction, so it only counts once committed).
    async fn start_over(&mut self, incarnation: Option<&str>, generation: u32) -> Result<(), Error> {
        self.begin().await?;
        self.writer.finish(&self.client).await?;
        progress::clear_staged(&self.client, self.options.names.task()).await?;
        self.staged = None;
        if let Some(incarnation) = incarnation {
            self.pending.stream.retired = stream::retire(&self.pending.stream, incarnation);
            self.pending.stream.incarnation = Some(incarnation.to_owned());
        }
        self.pending.stream.generation = generation;
        self.pending.watermark = Lsn(0);
        self.pending.load = None;
        Ok(())
    }

    /// Compiles the task's rules for the message's relations and resolves their target tables
    /// (creating missing ones when the task says so and `create_allowed`).
    async fn prepare_relations(&mut self, envelope: &Envelope, create_allowed: bool) -> Result<(), Error> {
        let changes = schema_changes(envelope.transactions.iter().flat_map(|t| t.changes.iter()));
        self.prepare_relations_around(&envelope.relations, &changes, create_allowed).await
    }

    /// [`Session::prepare_relations`] of `relations`, described in a message holding the schema
    /// changes `changed`.
    async fn prepare_relations_around(
        &mut self,
        relations: &[Relation],
        changed: &[&SchemaChange],
        create_allowed: bool,
    ) -> Result<(), Error> {
        let create = create_allowed && self.settings.as_ref().is_some_and(|s| s.prepare().create);
        if create {
            self.begin().await?;
        }
        // A relation with a schema change in this message may be described in its new shape,
        // which the rules fit only once the change's renames are followed: a rules error for it
        // is left to the schema change, which checks the rules against the new shape and
        // prepares the relation again.
        // Nor is its target table created here under a name the change gives it (a rename
        // followed by changes in the same message): the change renames the old one.
        if changed.is_empty() {
            return self
                .rules
                .prepare(&self.client, &mut self.catalog, self.settings.as_ref(), relations, create)
                .await;
        }
        for relation in relations {
            let change = changed.iter().find(|c| c.rel == relation.id);
            let renamed = change.is_some_and(|c| {
                c.old.as_ref().is_none_or(|old| {
                    (old.schema.as_str(), old.table.as_str()) != (relation.schema.as_str(), relation.table.as_str())
                })
            });
            let prepared = self
                .rules
                .prepare(
                    &self.client,
                    &mut self.catalog,
                    self.settings.as_ref(),
                    std::slice::from_ref(relation),
                    create && !renamed,
                )
                .await;
            match prepared {
                Err(err) if err.kind() == ErrorKind::Rules && change.is_some() => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// New task settings: they apply to every later message.
    async fn take_settings(&mut self, settings: &serde_json::Value) -> Result<(), Error> {
        let text = settings.to_string();
        let parsed = TaskSettings::parse(&text).map_err(|problems| {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            Error::new(
                ErrorKind::Conflict,
                format!("this applier does not understand the task's settings ({}); upgrade it", list.join("; ")),
            )
        })?;
        self.begin().await?;
        self.set_error_policy(ErrorPolicy::from_settings(
            parsed.error_handling.as_ref(),
            self.carry.policy.max_attempts,
        ));
        self.settings = Some(parsed);
        self.rules.clear();
        self.pending.settings = Some(text);
        Ok(())
    }

    /// One chunk of a table's full load.
    async fn load_chunk(&mut self, mut chunk: LoadChunk) -> Result<(), Error> {
        let verdict = load::verdict(self.pending.load, &chunk)
            .map_err(|m| Error::new(ErrorKind::Conflict, format!("{m}; not applying or acknowledging it")))?;
        if verdict == Verdict::Skip {
            return Ok(());
        }
        let relation =
            self.rules.target(chunk.rel).cloned().ok_or_else(|| {
                Error::new(ErrorKind::Envelope, format!("load relation {} is not described", chunk.rel))
            })?;
        self.begin().await?;
        self.writer.finish(&self.client).await?;
        let rows = chunk.rows;
        let (data, kept) =
            self.rules.load_data(chunk.rel, std::mem::take(&mut chunk.data), chunk.rows, &chunk.snapshot_time)?;
        chunk.data = data;
        chunk.rows = kept;
        let mark = load::apply(&self.client, &mut self.catalog, &relation, chunk, verdict, self.pending.load).await?;
        self.pending.load = Some(mark);
        self.pending.rows_loaded += rows;
        self.pending.changes += rows;
        Ok(())
    }

    /// One source transaction, or one chunk of it.
    async fn transaction(&mut self, envelope: &Envelope, transaction: Transaction) -> Result<(), Error> {
        let (discard, route) = route::route(self.staged, self.pending.watermark, &transaction);
        if discard && let Some(staged) = self.staged {
            // The staged transaction was re-published from its start, or abandoned for an
            // earlier position: its chunks will all come again.
            warn!(task = self.task(), lsn = %staged.commit_lsn, "discarding a partly staged source transaction that is being re-published");
            self.begin().await?;
            progress::clear_staged(&self.client, self.options.names.task()).await?;
            self.staged = None;
        }
        match route {
            Route::Skip => Ok(()),
            Route::OutOfOrder { expected } => Err(self.out_of_order(&transaction, expected)),
            Route::StageFirst | Route::StageNext => self.stage(envelope, transaction).await,
            Route::ApplyStaged => self.apply_staged(envelope, transaction).await,
            Route::Apply => self.apply_whole(transaction).await,
        }
    }

    /// A whole source transaction (one chunk): its schema changes, if any, halt in order.
    async fn apply_whole(&mut self, transaction: Transaction) -> Result<(), Error> {
        if let Err(err) = self.check_schema_rules(&transaction) {
            // Halt in order: nothing of this source transaction is applied yet; what came
            // before it is committed, so that its message heads the queue for the look-ahead.
            self.commit().await?;
            return Err(err);
        }
        self.begin().await?;
        if !transaction.changes.iter().any(|c| matches!(c, Change::Schema(_))) {
            return self.apply(transaction).await;
        }
        // A schema change that halts halts in order: this source transaction is rolled back
        // to its start and what came before it is committed (sent and awaited first, so
        // that none of it runs after the savepoint).
        self.writer.finish(&self.client).await?;
        self.client.batch_execute("SAVEPOINT trempy_schema_change").await?;
        let before = self.pending.clone();
        match self.apply(transaction).await {
            Ok(()) => {
                self.client.batch_execute("RELEASE SAVEPOINT trempy_schema_change").await?;
                Ok(())
            }
            Err(err) if err.kind() == ErrorKind::Schema => {
                self.writer.reset();
                self.client.batch_execute("ROLLBACK TO SAVEPOINT trempy_schema_change").await?;
                self.pending = before;
                self.commit().await?;
                Err(err)
            }
            Err(err) => Err(err),
        }
    }

    fn out_of_order(&self, transaction: &Transaction, staged: Option<Staged>) -> Error {
        let expected =
            staged.map_or_else(|| "chunk 0".to_owned(), |s| format!("chunk {} of {}", s.next_seq, s.commit_lsn));
        Error::new(
            ErrorKind::Conflict,
            format!(
                "chunk {} of source transaction {} arrived where {expected} was expected; not applying or acknowledging it",
                transaction.seq, transaction.commit_lsn
            ),
        )
    }

    async fn begin(&mut self) -> Result<(), Error> {
        if !self.in_transaction {
            self.client.batch_execute("BEGIN").await?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Applies the changes of a transaction (or chunk); the last chunk completes it.
    async fn apply(&mut self, transaction: Transaction) -> Result<(), Error> {
        self.pending.changes += transaction.changes.len() as u64;
        for change in transaction.changes {
            match change {
                Change::Schema(schema) => {
                    self.schema_change(*schema, transaction.commit_lsn).await?;
                    continue;
                }
                Change::Backfill(backfill) => {
                    self.backfill(&backfill, transaction.commit_lsn).await?;
                    continue;
                }
                _ => {}
            }
            let mode = rules::mode(self.settings.as_ref());
            for (change, mode) in self.rules.map(change, mode, &transaction.commit_time)? {
                self.writer.apply(&self.client, self.rules.targets(), change, mode, &transaction.commit_time).await?;
            }
        }
        if transaction.last {
            self.pending.watermark = transaction.commit_lsn;
            self.pending.commit_time = Some(transaction.commit_time);
            self.pending.transactions += 1;
        }
        Ok(())
    }

    /// The settings document in effect (JSON text), as last received or recorded.
    fn settings_text(&self) -> Option<&str> {
        self.pending.settings.as_deref().or(self.committed.settings.as_deref())
    }

    /// Checks, before anything of it is applied, that the task's rules fit every schema change
    /// of the transaction (renames followed): a rule that does not halts the task naming it.
    fn check_schema_rules(&self, transaction: &Transaction) -> Result<(), Error> {
        let mut text = self.settings_text().map(str::to_owned);
        let mut settings = self.settings.clone();
        for change in &transaction.changes {
            let Change::Schema(change) = change else { continue };
            let followed = schema_change::follow_renames(text.as_deref(), change)?;
            let after = followed.as_ref().map(|(_, s)| s).or(settings.as_ref());
            schema_change::target(change, settings.as_ref(), after).map_err(|e| e.with_lsn(transaction.commit_lsn))?;
            if let Some((t, s)) = followed {
                text = Some(t);
                settings = Some(s);
            }
        }
        Ok(())
    }

    /// Follows one source schema change on the target, where it sits in the stream (see
    /// [`schema_change`]): the rules follow renames, the target table is reconciled (or the task
    /// halts naming what to do), the change is recorded, and every cache of the session that
    /// knew the old shape is dropped.
    async fn schema_change(&mut self, change: SchemaChange, lsn: Lsn) -> Result<(), Error> {
        self.begin().await?;
        self.schema_changed = true;
        self.writer.finish(&self.client).await?;
        let followed = schema_change::follow_renames(self.settings_text(), &change)?;
        let after = followed.as_ref().map(|(_, s)| s).or(self.settings.as_ref());
        let target = schema_change::target(&change, self.settings.as_ref(), after)?;
        let management =
            if after.is_some_and(|s| s.prepare().create) { Management::Managed } else { Management::Unmanaged };
        let scd2 = rules::scd2_columns(after);
        let source = change.new.as_ref().or(change.old.as_ref()).map_or_else(
            || (String::new(), format!("relation {}", change.rel)),
            |s| (s.schema.clone(), s.table.clone()),
        );
        let what = format!("{} at {lsn}", schema_change::display(&source));
        let actual = schema_change::read(&self.client, &target.names()).await?;
        let actions = schema_change::reconcile(&target, &actual, scd2.as_ref());
        schema_change::execute(&self.client, &actions, management, &what)
            .await
            .map_err(|e| e.with_table(schema_change::display(&source)).with_lsn(lsn))?;
        let steps = schema_change::steps_text(&actions);
        let record = schema_change::Record {
            task: self.options.names.task(),
            incarnation: self.pending.stream.incarnation.as_deref(),
            commit_lsn: lsn,
            source: &source,
            target: target.new.as_ref().or(target.old.as_ref()),
            steps: &steps,
        };
        schema_change::record(&self.client, &record).await?;
        match target.backfill.clone() {
            // An unmanaged target's DDL is the DBA's: its NOT NULL too.
            Some(plan) => self
                .backfills
                .insert(change.rel, if management == Management::Managed { plan } else { plan.without_ddl() }),
            None => self.backfills.remove(&change.rel),
        };
        let run = actions.iter().filter(|a| matches!(a, schema_change::Action::Run(_))).count();
        info!(task = self.task(), table = %schema_change::display(&source), lsn = %lsn, statements = run, steps = target.steps.len(), "source schema change followed on the target");
        if let Some((text, settings)) = followed {
            info!(task = self.task(), table = %schema_change::display(&source), "the task's rules follow the rename");
            self.settings = Some(settings);
            self.pending.settings = Some(text);
        }
        // Every cache that knew the old shape.
        self.rules.forget(change.rel);
        for (schema, table) in target.names() {
            self.catalog.forget(&schema, &table);
        }
        self.writer.forget_statements();
        if let Some(new) = &change.new {
            let relation = schema_change::relation(change.rel, new);
            self.rules
                .prepare(
                    &self.client,
                    &mut self.catalog,
                    self.settings.as_ref(),
                    &[relation],
                    management == Management::Managed,
                )
                .await?;
        }
        Ok(())
    }

    /// One batch of the values a schema change gave existing rows (see
    /// [`schema_change::BackfillPlan`]).
    async fn backfill(&mut self, backfill: &Backfill, lsn: Lsn) -> Result<(), Error> {
        let Some(plan) = self.backfills.get(&backfill.rel).cloned() else {
            return Err(Error::new(
                ErrorKind::Schema,
                format!(
                    "a backfill of relation {} at {lsn} follows no schema change the target followed",
                    backfill.rel
                ),
            )
            .with_lsn(lsn));
        };
        self.begin().await?;
        self.writer.finish(&self.client).await?;
        let set = plan.apply(&self.client, &mut self.catalog, backfill).await.map_err(|e| e.with_lsn(lsn))?;
        debug!(task = self.task(), rel = backfill.rel, lsn = %lsn, rows = backfill.rows.len(), set, last = backfill.last, "backfill applied");
        Ok(())
    }

    /// Stores one chunk of a large source transaction in the open target transaction.
    async fn stage(&mut self, envelope: &Envelope, transaction: Transaction) -> Result<(), Error> {
        self.begin().await?;
        let (commit_lsn, seq) = (transaction.commit_lsn, transaction.seq);
        let body = deadletter::single(envelope, transaction)?;
        progress::stage(&self.client, self.options.names.task(), commit_lsn, seq, &body).await?;
        self.staged = Some(Staged { commit_lsn, next_seq: seq + 1 });
        Ok(())
    }

    /// Applies a staged source transaction: its staged chunks in order (each with the relation
    /// descriptions of its own message), then its last chunk (with those of `envelope`: a chunk
    /// after a schema change describes the relation with its new shape).
    async fn apply_staged(&mut self, envelope: &Envelope, last: Transaction) -> Result<(), Error> {
        self.begin().await?;
        let cursor = format!(
            "DECLARE trempy_staged NO SCROLL CURSOR FOR SELECT body FROM trempy.applier_staging WHERE task_name = '{}' AND commit_lsn = '{}' ORDER BY seq",
            self.task(),
            last.commit_lsn
        );
        self.client.execute(&cursor, &[]).await?;
        let mut expected = 0_u32;
        loop {
            let rows = self.client.query("FETCH 4 FROM trempy_staged", &[]).await?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                let body: Vec<u8> = row.get(0);
                let mut staged = Envelope::parse(&body)
                    .map_err(|e| Error::new(ErrorKind::Conflict, format!("a staged chunk does not parse: {e}")))?;
                self.prepare_relations(&staged, true).await?;
                for chunk in std::mem::take(&mut staged.transactions) {
                    if chunk.seq != expected || chunk.last {
                        return Err(Error::new(
                            ErrorKind::Conflict,
                            format!("staged chunks of {} are not contiguous at {expected}", last.commit_lsn),
                        ));
                    }
                    expected += 1;
                    self.apply(chunk).await?;
                }
            }
        }
        self.client.batch_execute("CLOSE trempy_staged").await?;
        if expected != last.seq {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("{expected} chunks of {} are staged, the last one is chunk {}", last.commit_lsn, last.seq),
            ));
        }
        // The last chunk's message, around the schema changes of the last chunk (the message's
        // other transactions were taken out of it).
        let changed = schema_changes(last.changes.iter());
        self.prepare_relations_around(&envelope.relations, &changed, true).await?;
        self.apply(last).await?;
        self.writer.flush(&self.client).await?;
        progress::clear_staged(&self.client, self.options.names.task()).await?;
        self.staged = None;
        Ok(())
    }

    /// Commits the open target transaction with the new watermark, then acknowledges.
    async fn commit(&mut self) -> Result<(), Error> {
        if self.in_transaction {
            self.writer.finish(&self.client).await?;
            if self.pending.moves(&self.committed) {
                progress::advance(&self.client, self.options.names.task(), &self.committed, &self.pending).await?;
            }
            self.client.batch_execute("COMMIT").await?;
            self.in_transaction = false;
            self.committed = Position {
                watermark: self.pending.watermark,
                stream: self.pending.stream.clone(),
                settings: self.pending.settings.take().or_else(|| self.committed.settings.take()),
                load: self.pending.load,
            };
            self.committed_any = true;
            self.schema_changed = false;
            self.options.live.clear();
            self.stats.transactions += self.pending.transactions;
            self.stats.changes += self.pending.changes;
        }
        if let Some(tag) = self.ackable.take() {
            let ack = async { Ok(self.channel.basic_ack(tag, BasicAckOptions { multiple: true }).await?) };
            broker::within(broker::STEP_TIMEOUT, "acknowledging applied messages", ack).await?;
        }
        self.pending = Applied::continuing(&self.committed);
        self.since = None;
        self.report();
        if let Some(failing) = self.carry.failing
            && self.committed.watermark >= failing
        {
            state::passed(&self.client, self.task(), self.committed.watermark).await?;
            self.carry.failing = None;
        }
        Ok(())
    }

    fn report(&mut self) {
        let at = *self.stats.at.get_or_insert_with(Instant::now);
        if at.elapsed() >= Duration::from_secs(10) {
            info!(task = self.task(), transactions = self.stats.transactions, changes = self.stats.changes, watermark = %self.committed.watermark, "applied");
            self.stats = Stats { at: Some(Instant::now()), ..Stats::default() };
        }
    }

    /// Dead-letters a message that can never be applied (see [`deadletter`]): everything before
    /// it is committed first, so the order of what is applied is unaffected; then it is recorded
    /// in the target, its copy confirmed by RabbitMQ, and only then acknowledged.
    async fn dead_letter(&mut self, delivery: Delivery, reason: &str) -> Result<(), Error> {
        let tag = delivery.delivery_tag;
        error!(task = self.task(), delivery_tag = tag, reason, "dead-lettering a message that is not a valid envelope");
        self.commit().await?;
        let err = Error::new(ErrorKind::Envelope, reason);
        let why = Why { error: &err, commit_lsn: None, xid: None, attempts: 1 };
        let id = deadletter::insert(&self.client, self.task(), &why, &delivery.data).await?;
        deadletter::publish(&self.dead_letters, &self.options.names, id, &why, &delivery.data).await?;
        errorlog::record(&self.client, self.task(), &err, None, Some(1), Action::DeadLetter).await?;
        self.channel.basic_ack(tag, BasicAckOptions::default()).await?;
        Ok(())
    }
}

/// The `task` of a message body that is a JSON object naming one.
fn message_task(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        task: String,
    }
    serde_json::from_slice::<Named>(body).ok().map(|n| n.task)
}

async fn sleep_opt(wait: Option<Duration>) {
    match wait {
        Some(d) if d.is_zero() => {}
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// The schema changes among `changes`.
fn schema_changes<'a>(changes: impl Iterator<Item = &'a Change>) -> Vec<&'a SchemaChange> {
    changes.filter_map(|c| if let Change::Schema(s) = c { Some(s.as_ref()) } else { None }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_of_a_message_body() {
        assert_eq!(message_task(b"{\"version\":9,\"task\":\"t\",\"whatever\":[1]}").as_deref(), Some("t"));
        assert_eq!(message_task(b"{\"version\":9,\"task\":7}"), None);
        assert_eq!(message_task(b"{\"version\":9}"), None);
        assert_eq!(message_task(b"not json"), None);
    }
}
