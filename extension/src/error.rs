//! The one error type of the extension, and the policy that says what a task worker does about
//! each kind.

use std::fmt;
use std::time::Duration;

use trempy_protocol::cause::Cause;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// Missing or wrong configuration (`trempy.amqp_url` unset, …).
    Config,
    /// The task's slot or publication is missing or unusable.
    Catalog,
    /// PostgreSQL raised an error during SPI work.
    Postgres,
    /// pgoutput data TREMpy could not turn into a message.
    Decode,
    /// The replication connection to this server could not be opened or broke (pg_hba.conf,
    /// max_wal_senders, the walsender's own error): it is opened again from the slot.
    Replication,
    /// RabbitMQ did not confirm a message (refused, returned, nacked, timed out, disconnected).
    Publish,
    /// RabbitMQ refused a message as larger than its `max_message_size`: retrying soon cannot
    /// help, only the operator can (see the message).
    MessageTooLarge,
    /// The worker's AMQP thread has ended (a panic in the AMQP client or its runtime): nothing
    /// can be published by this worker any more.
    PublisherGone,
    /// Shutdown was requested in the middle of the work.
    Shutdown,
}

/// An error with its kind. Messages never contain row values or credentials: whatever a library
/// put in the text (a malformed `trempy.amqp_url` is echoed whole by the AMQP URI parser), every
/// password in it is masked here, before the message can reach the server log or `last_error`.
#[derive(Debug, Clone)]
pub(crate) struct Error {
    kind: ErrorKind,
    message: String,
    /// What caused it, redacted.
    cause: Option<Box<Cause>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: trempy_protocol::redact::redact(&message.into()), cause: None }
    }

    /// Keeps what caused it (its whole chain, redacted).
    pub(crate) fn caused_by(mut self, err: &(dyn std::error::Error + 'static)) -> Self {
        self.cause = Some(Cause::chain(err));
        self
    }

    pub(crate) fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The same error, of another kind (once the caller knows better where it came from).
    pub(crate) fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|c| c as &(dyn std::error::Error + 'static))
    }
}

impl From<trempy_protocol::Error> for Error {
    fn from(err: trempy_protocol::Error) -> Self {
        Self::new(ErrorKind::Decode, err.message()).caused_by(&err)
    }
}

impl From<pgrx::spi::SpiError> for Error {
    fn from(err: pgrx::spi::SpiError) -> Self {
        Self::new(ErrorKind::Postgres, err.to_string()).caused_by(&err)
    }
}

/// What a task worker does after an error of some kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reaction {
    /// Record the error in `trempy.task_progress`, wait, and try the same work again. Nothing
    /// was advanced, so nothing is lost.
    RetryAfter(Duration),
    /// Exit quietly (shutdown was asked for).
    Exit,
    /// Record the error, exit, and let the launcher start a new worker (after its own back-off),
    /// with new threads. Nothing was advanced, so nothing is lost.
    Restart,
}

/// The policy: every kind is retried from the slot's confirmed position, with a back-off that
/// grows with consecutive failures.
pub(crate) fn reaction(kind: ErrorKind, consecutive_failures: u32) -> Reaction {
    let backoff = |base_ms: u64, cap_ms: u64| {
        let exp = consecutive_failures.min(10);
        Duration::from_millis((base_ms << exp).min(cap_ms))
    };
    match kind {
        ErrorKind::Shutdown => Reaction::Exit,
        ErrorKind::PublisherGone => Reaction::Restart,
        // Each retry decodes the batch again: wait for the operator's fix, checking every minute.
        ErrorKind::MessageTooLarge => Reaction::RetryAfter(backoff(10_000, 60_000)),
        ErrorKind::Publish | ErrorKind::Replication => Reaction::RetryAfter(backoff(250, 4_000)),
        ErrorKind::Config | ErrorKind::Catalog | ErrorKind::Decode | ErrorKind::Postgres => {
            Reaction::RetryAfter(backoff(1_000, 30_000))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_amqp_thread_restarts_the_worker_instead_of_retrying_forever() {
        for failures in [0, 1, 50] {
            assert_eq!(reaction(ErrorKind::PublisherGone, failures), Reaction::Restart);
        }
        assert!(matches!(reaction(ErrorKind::Publish, 50), Reaction::RetryAfter(_)));
        assert_eq!(reaction(ErrorKind::Shutdown, 0), Reaction::Exit);
    }
}
