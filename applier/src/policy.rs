//! What the applier does about each kind of error. Kept apart from the code that raises errors.

use std::time::Duration;

use crate::error::{Error, ErrorKind};

/// The reaction to an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reaction {
    /// Transient: roll back, reconnect, and try again after the delay. Unacknowledged messages
    /// are redelivered; nothing is lost or applied twice.
    Retry(Duration),
    /// The message can never be applied by anyone (not a valid envelope): dead-letter it.
    DeadLetter,
    /// Permanent until an operator acts (missing table or column, constraint violation, …):
    /// roll back, report loudly, and try again after a long delay, in order: the task waits
    /// rather than skipping a source transaction.
    Halt(Duration),
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

/// The policy.
pub(crate) fn reaction(err: &Error, attempt: u32) -> Reaction {
    let fast = backoff(Duration::from_millis(250), Duration::from_secs(30), attempt);
    // A server that is down comes back at an unknown moment: keep knocking every few seconds,
    // so replication resumes soon after it does.
    let reconnect = backoff(Duration::from_millis(250), Duration::from_secs(4), attempt);
    match err.kind() {
        ErrorKind::Broker | ErrorKind::TargetConnection => Reaction::Retry(reconnect),
        ErrorKind::Conflict => Reaction::Retry(fast),
        ErrorKind::Envelope => Reaction::DeadLetter,
        ErrorKind::TargetSql => match err.sqlstate() {
            Some(code) if transient_sqlstate(code) => Reaction::Retry(fast),
            _ => Reaction::Halt(backoff(Duration::from_secs(5), Duration::from_secs(300), attempt)),
        },
        ErrorKind::Transform => Reaction::Halt(backoff(Duration::from_secs(5), Duration::from_secs(300), attempt)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_reactions() {
        let broker = Error::new(ErrorKind::Broker, "x");
        assert_eq!(reaction(&broker, 0), Reaction::Retry(Duration::from_millis(250)));
        assert_eq!(reaction(&broker, 3), Reaction::Retry(Duration::from_secs(2)));
        assert_eq!(reaction(&broker, 30), Reaction::Retry(Duration::from_secs(4)));
        assert_eq!(reaction(&Error::new(ErrorKind::Conflict, "x"), 30), Reaction::Retry(Duration::from_secs(30)));
        assert_eq!(reaction(&Error::new(ErrorKind::Envelope, "x"), 0), Reaction::DeadLetter);
        assert!(matches!(reaction(&Error::new(ErrorKind::TargetSql, "x"), 0), Reaction::Halt(_)));
    }

    #[test]
    fn transient_sqlstates() {
        for code in ["40001", "40P01", "08006", "57P01", "53300", "55P03"] {
            assert!(transient_sqlstate(code), "{code}");
        }
        for code in ["42P01", "42703", "23505", "22P02"] {
            assert!(!transient_sqlstate(code), "{code}");
        }
    }
}
