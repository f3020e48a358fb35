//! What the applier does about each kind of error. Kept apart from the code that raises errors.
//!
//! Two layers:
//! * [`reaction`] classifies any error: transient (retry forever with back-off), target not ready
//!   or rules not fitting (halt in order, retry with a long back-off), bad input (dead-letter at
//!   once), or permanent for the failing source transaction (a refused row, a row the
//!   transformations cannot compute).
//! * [`ErrorPolicy::decide`] applies the task's `error_handling` settings to a permanent failure
//!   of one source transaction, once the applier has pinpointed it: stop the task, retry, or
//!   dead-letter after [`ErrorPolicy::max_attempts`] attempts.

use std::time::Duration;

use trempy_protocol::settings::ErrorHandling;

use crate::error::{Error, ErrorKind, Operation};

/// The reaction to an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reaction {
    /// Transient: roll back, reconnect, and try again after the delay, forever. Unacknowledged
    /// messages are redelivered; nothing is lost or applied twice.
    Retry(Duration),
    /// The message can never be applied by anyone (not a valid envelope): dead-letter it.
    DeadLetter,
    /// The target is not ready (missing table, schema or column, or a column of another type), the
    /// applier is too old for the message (a newer envelope version), the task's rules do not fit
    /// a table any more, an update lacks unchanged TOASTed values the target does not have, a source
    /// schema change cannot be followed by the applier alone, or the
    /// failing source transaction is
    /// larger than one message and cannot be dead-lettered: roll back, report loudly, and try again
    /// after a long delay, in order: the task waits rather than skipping a source transaction.
    Halt(Duration),
    /// Permanent for the failing source transaction (constraint violation, bad value, missing
    /// column, …): the [`ErrorPolicy`] decides.
    Permanent,
}

fn backoff(base: Duration, cap: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1_u32 << attempt.min(16)).min(cap)
}

/// SQLSTATE classes that mean "try again": connection (08), transaction rollback
/// (40: serialization failure, deadlock), insufficient resources (53), operator intervention (57),
/// system errors (58), lock not available (55P03).
fn transient_sqlstate(code: &str) -> bool {
    ["08", "40", "53", "57", "58"].iter().any(|class| code.starts_with(class)) || code == "55P03"
}

/// SQLSTATEs that mean the target is not set up (yet) for the stream: undefined table (42P01),
/// invalid schema name (3F000), undefined column (42703: a column added at the source and not yet
/// at the target) and datatype mismatch (42804: a column of another type at the target).
/// Dead-lettering would skip every change to the table until the target is fixed, so the task
/// waits instead.
fn not_ready_sqlstate(code: &str) -> bool {
    matches!(code, "42P01" | "3F000" | "42703" | "42804")
}

/// Delay before the next attempt after a transient failure.
pub(crate) fn retry_delay(attempt: u32) -> Duration {
    backoff(Duration::from_millis(250), Duration::from_secs(30), attempt)
}

/// Delay before reconnecting to a server that is down: it comes back at an unknown moment, so
/// keep knocking every few seconds and replication resumes soon after it does.
pub(crate) fn reconnect_delay(attempt: u32) -> Duration {
    backoff(Duration::from_millis(250), Duration::from_secs(4), attempt)
}

/// Delay before the next attempt while halted.
pub(crate) fn halt_delay(attempt: u32) -> Duration {
    backoff(Duration::from_secs(5), Duration::from_secs(300), attempt)
}

/// Delay before the next attempt at a source transaction that failed permanently.
pub(crate) fn permanent_delay(attempt: u32) -> Duration {
    backoff(Duration::from_secs(1), Duration::from_secs(60), attempt.saturating_sub(1))
}

/// The classification.
pub(crate) fn reaction(err: &Error, attempt: u32) -> Reaction {
    match err.kind() {
        ErrorKind::Broker | ErrorKind::TargetConnection => Reaction::Retry(reconnect_delay(attempt)),
        ErrorKind::Conflict => Reaction::Retry(retry_delay(attempt)),
        ErrorKind::Stopped => Reaction::Halt(halt_delay(attempt)),
        ErrorKind::Envelope => Reaction::DeadLetter,
        ErrorKind::TargetSql => match err.sqlstate() {
            Some(code) if transient_sqlstate(code) => Reaction::Retry(retry_delay(attempt)),
            Some(code) if not_ready_sqlstate(code) => Reaction::Halt(halt_delay(attempt)),
            _ => Reaction::Permanent,
        },
        // A row the transformations cannot compute fails its source transaction only.
        ErrorKind::Transform => Reaction::Permanent,
        ErrorKind::Rules
        | ErrorKind::UnchangedToast
        | ErrorKind::Schema
        | ErrorKind::Stream
        | ErrorKind::NewerEnvelope
        | ErrorKind::TargetSchema => Reaction::Halt(halt_delay(attempt)),
    }
}

/// What to do about a source transaction that failed permanently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Roll back and try the same transaction again after the delay.
    Retry(Duration),
    /// Stop the task: nothing more is consumed, the failed transaction stays in the queue.
    Stop,
    /// Move past the transaction: dead-letter it and record it in the target.
    DeadLetter,
}

/// The task's `error_handling` settings plus the attempt limit, as the apply path consults them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ErrorPolicy {
    pub(crate) stop_on_insert: bool,
    pub(crate) stop_on_update: bool,
    pub(crate) stop_on_delete: bool,
    pub(crate) stop_on_upsert: bool,
    pub(crate) stop_on_scd2: bool,
    /// Attempts at a permanently failing source transaction before it is dead-lettered (≥ 1).
    pub(crate) max_attempts: u32,
}

/// Attempts before dead-lettering, when not configured.
pub(crate) const DEFAULT_MAX_ATTEMPTS: u32 = 3;

impl Default for ErrorPolicy {
    fn default() -> Self {
        Self::from_settings(None, DEFAULT_MAX_ATTEMPTS)
    }
}

impl ErrorPolicy {
    /// From the task's settings; absent flags are false (continue), as in the original TREMpy.
    pub(crate) fn from_settings(settings: Option<&ErrorHandling>, max_attempts: u32) -> Self {
        let flag = |f: fn(&ErrorHandling) -> Option<bool>| settings.and_then(f).unwrap_or(false);
        Self {
            stop_on_insert: flag(|e| e.stop_if_insert_error),
            stop_on_update: flag(|e| e.stop_if_update_error),
            stop_on_delete: flag(|e| e.stop_if_delete_error),
            stop_on_upsert: flag(|e| e.stop_if_upsert_error),
            stop_on_scd2: flag(|e| e.stop_if_scd2_error),
            max_attempts: max_attempts.max(1),
        }
    }

    /// Whether a failure of this operation stops the task. In upsert mode every insert and update
    /// is applied as an upsert, so `stop_if_upsert_error` covers both. An operation that is not
    /// known (the error did not come from a statement) stops the task if any flag is set. TRUNCATE
    /// follows `stop_if_delete_error`; every statement of the SCD2 mode follows `stop_if_scd2_error`.
    fn stops(&self, operation: Option<Operation>) -> bool {
        match operation {
            Some(Operation::Insert) => self.stop_on_insert || self.stop_on_upsert,
            Some(Operation::Update) => self.stop_on_update || self.stop_on_upsert,
            Some(Operation::Upsert) => self.stop_on_insert || self.stop_on_update || self.stop_on_upsert,
            Some(Operation::Delete | Operation::Truncate) => self.stop_on_delete,
            Some(Operation::Scd2) => self.stop_on_scd2,
            None => {
                self.stop_on_insert
                    || self.stop_on_update
                    || self.stop_on_delete
                    || self.stop_on_upsert
                    || self.stop_on_scd2
            }
        }
    }

    /// The decision about a source transaction that failed permanently (see [`reaction`]) for the
    /// `attempts`-th time in a row (counting this one). Invalid input never stops the task and is
    /// never retried.
    pub(crate) fn decide(&self, err: &Error, attempts: u32) -> Decision {
        if err.kind() == ErrorKind::Envelope {
            return Decision::DeadLetter;
        }
        if self.stops(err.operation()) {
            Decision::Stop
        } else if attempts < self.max_attempts {
            Decision::Retry(permanent_delay(attempts))
        } else {
            Decision::DeadLetter
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(code: &str, op: Option<Operation>) -> Error {
        let err = Error::target_code(code, "x");
        match op {
            Some(op) => err.with_operation(op),
            None => err,
        }
    }

    #[test]
    fn kinds_map_to_reactions() {
        let broker = Error::new(ErrorKind::Broker, "x");
        assert_eq!(reaction(&broker, 0), Reaction::Retry(Duration::from_millis(250)));
        assert_eq!(reaction(&broker, 3), Reaction::Retry(Duration::from_secs(2)));
        assert_eq!(reaction(&broker, 30), Reaction::Retry(Duration::from_secs(4)));
        assert_eq!(reaction(&Error::new(ErrorKind::Conflict, "x"), 30), Reaction::Retry(Duration::from_secs(30)));
        assert_eq!(reaction(&Error::new(ErrorKind::Envelope, "x"), 0), Reaction::DeadLetter);
        assert_eq!(reaction(&Error::new(ErrorKind::NewerEnvelope, "x"), 0), Reaction::Halt(Duration::from_secs(5)));
        assert_eq!(reaction(&Error::new(ErrorKind::NewerEnvelope, "x"), 30), Reaction::Halt(Duration::from_secs(300)));
        assert_eq!(reaction(&Error::new(ErrorKind::TargetSql, "x"), 0), Reaction::Permanent);
        assert_eq!(reaction(&sql("23505", None), 0), Reaction::Permanent);
        assert_eq!(reaction(&sql("42P01", None), 0), Reaction::Halt(Duration::from_secs(5)));
        assert_eq!(reaction(&sql("40P01", None), 1), Reaction::Retry(Duration::from_millis(500)));
        assert_eq!(reaction(&Error::new(ErrorKind::Rules, "x"), 0), Reaction::Halt(Duration::from_secs(5)));
        assert_eq!(reaction(&Error::new(ErrorKind::UnchangedToast, "x"), 0), Reaction::Halt(Duration::from_secs(5)));
        assert_eq!(reaction(&Error::new(ErrorKind::Schema, "x"), 0), Reaction::Halt(Duration::from_secs(5)));
    }

    #[test]
    fn a_schema_change_is_never_dead_lettered_nor_stopped() {
        let err = Error::new(ErrorKind::Schema, "cannot derive").with_operation(Operation::Insert);
        assert_eq!(reaction(&err, 0), Reaction::Halt(Duration::from_secs(5)));
        assert_eq!(reaction(&err, 40), Reaction::Halt(Duration::from_secs(300)));
    }

    #[test]
    fn a_row_the_transformations_cannot_compute_follows_the_error_policy() {
        let err = Error::new(ErrorKind::Transform, "overflow").with_operation(Operation::Insert);
        assert_eq!(reaction(&err, 0), Reaction::Permanent);
        assert_eq!(ErrorPolicy::default().decide(&err, 1), Decision::Retry(Duration::from_secs(1)));
        assert_eq!(ErrorPolicy::default().decide(&err, 3), Decision::DeadLetter);
        let stop = ErrorHandling {
            stop_if_insert_error: Some(true),
            stop_if_update_error: None,
            stop_if_delete_error: None,
            stop_if_upsert_error: None,
            stop_if_scd2_error: None,
        };
        assert_eq!(ErrorPolicy::from_settings(Some(&stop), 3).decide(&err, 1), Decision::Stop);
        let update = Error::new(ErrorKind::Transform, "overflow").with_operation(Operation::Update);
        assert_eq!(
            ErrorPolicy::from_settings(Some(&stop), 3).decide(&update, 1),
            Decision::Retry(Duration::from_secs(1))
        );
    }

    #[test]
    fn a_target_not_ready_halts_and_is_never_dead_lettered() {
        for code in ["42P01", "3F000", "42703", "42804"] {
            for op in
                [None, Some(Operation::Insert), Some(Operation::Update), Some(Operation::Delete), Some(Operation::Scd2)]
            {
                let err = sql(code, op);
                assert_eq!(reaction(&err, 0), Reaction::Halt(Duration::from_secs(5)), "{code}");
                assert_eq!(reaction(&err, 40), Reaction::Halt(Duration::from_secs(300)), "{code}");
            }
        }
        // Neighbours stay permanent: undefined function, syntax error, invalid text representation.
        for code in ["42883", "42601", "22P02"] {
            assert_eq!(reaction(&sql(code, None), 0), Reaction::Permanent, "{code}");
        }
    }

    #[test]
    fn transient_sqlstates() {
        for code in ["40001", "40P01", "08006", "57P01", "53300", "55P03", "58030"] {
            assert!(transient_sqlstate(code), "{code}");
        }
        for code in ["42P01", "42703", "42804", "23505", "22P02"] {
            assert!(!transient_sqlstate(code), "{code}");
        }
    }

    #[test]
    fn continue_retries_then_dead_letters() {
        let policy = ErrorPolicy::default();
        let err = sql("23505", Some(Operation::Insert));
        assert_eq!(policy.decide(&err, 1), Decision::Retry(Duration::from_secs(1)));
        assert_eq!(policy.decide(&err, 2), Decision::Retry(Duration::from_secs(2)));
        assert_eq!(policy.decide(&err, 3), Decision::DeadLetter);
        assert_eq!(policy.decide(&err, 40), Decision::DeadLetter);
        let once = ErrorPolicy::from_settings(None, 0);
        assert_eq!(once.max_attempts, 1);
        assert_eq!(once.decide(&err, 1), Decision::DeadLetter);
    }

    #[test]
    fn bad_input_is_dead_lettered_at_once_whatever_the_flags() {
        let all = ErrorHandling {
            stop_if_insert_error: Some(true),
            stop_if_update_error: Some(true),
            stop_if_delete_error: Some(true),
            stop_if_upsert_error: Some(true),
            stop_if_scd2_error: Some(true),
        };
        let policy = ErrorPolicy::from_settings(Some(&all), 3);
        assert_eq!(policy.decide(&Error::new(ErrorKind::Envelope, "x"), 1), Decision::DeadLetter);
        assert_eq!(policy.decide(&sql("22P02", None), 1), Decision::Stop);
    }

    #[test]
    fn stop_flags_per_operation() {
        let only = |f: fn(&mut ErrorHandling)| {
            let mut eh = ErrorHandling {
                stop_if_insert_error: None,
                stop_if_update_error: None,
                stop_if_delete_error: None,
                stop_if_upsert_error: None,
                stop_if_scd2_error: None,
            };
            f(&mut eh);
            ErrorPolicy::from_settings(Some(&eh), 3)
        };
        let cases: [(ErrorPolicy, [bool; 5]); 5] = [
            // insert, update, upsert (mixed), delete, truncate
            (only(|e| e.stop_if_insert_error = Some(true)), [true, false, true, false, false]),
            (only(|e| e.stop_if_update_error = Some(true)), [false, true, true, false, false]),
            (only(|e| e.stop_if_upsert_error = Some(true)), [true, true, true, false, false]),
            (only(|e| e.stop_if_delete_error = Some(true)), [false, false, false, true, true]),
            (only(|e| e.stop_if_insert_error = Some(false)), [false, false, false, false, false]),
        ];
        let ops = [Operation::Insert, Operation::Update, Operation::Upsert, Operation::Delete, Operation::Truncate];
        for (i, (policy, expected)) in cases.iter().enumerate() {
            for (op, stop) in ops.iter().zip(expected) {
                let got = policy.decide(&sql("23505", Some(*op)), 1);
                assert_eq!(got == Decision::Stop, *stop, "case {i}, {op:?}: {got:?}");
            }
        }
        // An error whose operation is unknown stops if any flag is set.
        assert_eq!(only(|e| e.stop_if_scd2_error = Some(true)).decide(&sql("23505", None), 1), Decision::Stop);
        assert_eq!(ErrorPolicy::default().decide(&sql("23505", None), 1), Decision::Retry(Duration::from_secs(1)));
    }
}
