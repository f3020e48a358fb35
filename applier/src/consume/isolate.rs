//! One transaction at a time: how the applier pinpoints a source transaction that fails for a
//! permanent reason, and what it then does about it.
//!
//! In a batch, one target transaction and one bulk statement cover many source transactions, so a
//! failure does not say which one is at fault. After a permanent failure the session is opened
//! again in isolation mode up to the highest LSN the failed batch had seen: each message is then
//! its own target transaction, each of its source transactions applied in a savepoint and its
//! statements awaited before the next, so a failure names its source transaction, table and
//! operation. The error is logged (`trempy.applier_errors`), its attempt counted
//! (`trempy.applier_state`), and the task's [`ErrorPolicy`](crate::policy::ErrorPolicy) decides:
//!
//! * **stop**: roll back, state `stopped`; nothing is acknowledged or dead-lettered;
//! * **retry**: roll back, state `retrying`, try the message again after a back-off;
//! * **dead-letter** (after the last attempt, or at once for invalid content): apply the message
//!   again without the failing transactions, recording each of them in
//!   `trempy.applier_deadletters` and publishing its copy to the dead-letter queue (confirmed),
//!   move the watermark past them, COMMIT, then acknowledge.
//!
//! Messages that carry a chunk of a source transaction larger than one message are applied as
//! usual: such a transaction cannot be dead-lettered, so its failure halts the task in order.

use std::time::Duration;

use tracing::{info, warn};
use trempy_protocol::Lsn;
use trempy_protocol::envelope::{Change, Envelope};

use super::Session;
use crate::deadletter::{self, Why};
use crate::error::{Error, ErrorKind};
use crate::errorlog::{self, Action};
use crate::policy::{self, Decision, Reaction};
use crate::state;

/// Source transactions of one message that failed: commit LSN and error.
type Failures = Vec<(Lsn, Error)>;

impl Session<'_> {
    /// Whether this message is applied in isolation mode; leaves the mode past its end.
    pub(super) fn isolating(&mut self, envelope: &Envelope) -> bool {
        let Some(until) = self.carry.isolate_until else { return false };
        let first = envelope.transactions.first().map_or(Lsn(0), |t| t.commit_lsn);
        if first > until {
            info!(task = self.task(), after = %until, "past the failed batch; applying in batches again");
            self.carry.isolate_until = None;
            return false;
        }
        true
    }

    /// Applies one message in isolation mode (see the module documentation).
    pub(super) async fn handle_isolated(&mut self, tag: u64, mut envelope: Envelope) -> Result<(), Error> {
        self.commit().await?;
        if self.staged.is_some() || envelope.transactions.iter().any(|t| t.seq != 0 || !t.last) {
            for transaction in std::mem::take(&mut envelope.transactions) {
                let lsn = transaction.commit_lsn;
                self.transaction(&envelope, transaction).await.map_err(|e| e.with_lsn(lsn))?;
            }
            self.ackable = Some(tag);
            return self.commit().await;
        }
        let again = envelope.clone();
        let failures = self.apply_savepointed(envelope, &[], 0).await?;
        if failures.is_empty() {
            self.ackable = Some(tag);
            return self.commit().await;
        }
        self.rollback().await?;
        let task = self.options.names.task();
        let (first_lsn, first) = (failures[0].0, &failures[0].1);
        let attempts = state::failed_attempt(&self.client, task, first_lsn, first.message()).await?;
        self.carry.failing = Some(first_lsn);
        let policy = self.carry.policy;
        let decisions: Vec<Decision> = failures.iter().map(|(_, e)| policy.decide(e, attempts)).collect();
        let decision = if decisions.contains(&Decision::Stop) {
            Decision::Stop
        } else if let Some(retry) = decisions.iter().find(|d| matches!(d, Decision::Retry(_))) {
            *retry
        } else {
            Decision::DeadLetter
        };
        let action = match decision {
            Decision::Stop => Action::Stop,
            Decision::Retry(_) => Action::Retry,
            Decision::DeadLetter => Action::DeadLetter,
        };
        for (lsn, err) in &failures {
            warn!(task, lsn = %lsn, table = err.table().unwrap_or("-"), operation = err.operation().map_or("-", |o| o.as_str()),
                  sqlstate = err.sqlstate().unwrap_or("-"), attempts, max_attempts = policy.max_attempts, error = %err, action = ?action, "source transaction failed");
            errorlog::record(&self.client, task, err, Some(*lsn), Some(attempts), action).await?;
        }
        match decision {
            Decision::Stop => {
                let what = first.operation().map_or("apply", |o| o.as_str());
                let reason = format!(
                    "{what} of source transaction {first_lsn} failed on {}: {first}",
                    first.table().unwrap_or("the target")
                );
                state::stopped(&self.client, task, Some(first_lsn), &reason).await?;
                Err(Error::new(ErrorKind::Stopped, reason).with_lsn(first_lsn))
            }
            Decision::Retry(delay) => {
                self.retry_in = Some(delay);
                Err(first.clone())
            }
            Decision::DeadLetter => {
                if !again.relations.is_empty() {
                    self.prepare_relations(&again, !again.transactions.is_empty()).await?;
                }
                let again = self.apply_savepointed(again, &failures, attempts).await?;
                if let Some((_, err)) = again.into_iter().next() {
                    // Something else failed this time: start over with this message.
                    self.rollback().await?;
                    self.retry_in = Some(Duration::ZERO);
                    return Err(err);
                }
                self.ackable = Some(tag);
                self.commit().await
            }
        }
    }

    /// Opens a target transaction and applies the message's source transactions, each in a
    /// savepoint; those in `dead` are dead-lettered instead. Returns the transactions that failed
    /// for a permanent reason (rolled back to their savepoint); any other failure is an error.
    async fn apply_savepointed(
        &mut self,
        mut envelope: Envelope,
        dead: &[(Lsn, Error)],
        attempts: u32,
    ) -> Result<Failures, Error> {
        self.begin().await?;
        // Deferred constraints are checked at each statement, inside its savepoint, rather than at
        // COMMIT, where the failing source transaction could not be told apart.
        self.client.batch_execute("SET CONSTRAINTS ALL IMMEDIATE").await?;
        let mut failures = Vec::new();
        for transaction in std::mem::take(&mut envelope.transactions) {
            let lsn = transaction.commit_lsn;
            if lsn <= self.pending.watermark {
                continue;
            }
            if let Some((_, err)) = dead.iter().find(|(l, _)| *l == lsn) {
                let (xid, commit_time) = (transaction.xid, transaction.commit_time.clone());
                let body = deadletter::single(&envelope, transaction)?;
                let why = Why { error: err, commit_lsn: Some(lsn), xid: Some(xid), attempts };
                let id = deadletter::insert(&self.client, self.options.names.task(), &why, &body).await?;
                deadletter::publish(&self.dead_letters, &self.options.names, id, &why, &body).await?;
                warn!(task = self.task(), lsn = %lsn, id, "source transaction dead-lettered");
                self.pending.watermark = lsn;
                self.pending.commit_time = Some(commit_time);
                continue;
            }
            let before = self.pending.clone();
            let holds_schema_change = transaction.changes.iter().any(|c| matches!(c, Change::Schema(_)));
            self.client.batch_execute("SAVEPOINT trempy_transaction").await?;
            let mut applied = self.apply(transaction).await;
            if applied.is_ok() {
                applied = self.writer.finish(&self.client).await;
            }
            match applied {
                Ok(()) => self.client.batch_execute("RELEASE SAVEPOINT trempy_transaction").await?,
                Err(err) => {
                    let err = err.with_lsn(lsn);
                    self.writer.reset();
                    if !matches!(policy::reaction(&err, 0), Reaction::Permanent | Reaction::DeadLetter) {
                        return Err(err);
                    }
                    if holds_schema_change {
                        // Never dead-lettered nor skipped: the target would miss the schema change.
                        let halt = Error::new(
                            ErrorKind::Schema,
                            format!(
                                "source transaction {lsn} holds a schema change, so it cannot be dead-lettered, and it failed: {err}; fix the cause on the target, the applier tries again"
                            ),
                        );
                        let halt = match err.sqlstate() {
                            Some(code) => halt.with_sqlstate(code),
                            None => halt,
                        };
                        return Err(halt.with_lsn(lsn));
                    }
                    self.client.batch_execute("ROLLBACK TO SAVEPOINT trempy_transaction").await?;
                    self.pending = before;
                    failures.push((lsn, err));
                }
            }
        }
        Ok(failures)
    }

    async fn rollback(&mut self) -> Result<(), Error> {
        self.writer.reset();
        if self.schema_changed {
            // A schema change rolled back with the rest: the settings, rules and caches as
            // committed (the caller prepares the message's relations again).
            self.settings = self
                .committed
                .settings
                .as_deref()
                .and_then(|text| trempy_protocol::settings::TaskSettings::parse(text).ok());
            self.rules.clear();
            self.catalog = crate::target_catalog::Catalog::default();
            self.writer.forget_statements();
            self.schema_changed = false;
        }
        if self.in_transaction {
            self.client.batch_execute("ROLLBACK").await?;
            self.in_transaction = false;
        }
        self.pending = super::Applied::continuing(&self.committed);
        self.ackable = None;
        Ok(())
    }
}
