//! The one error type of the extension, and the policy that says what a task worker does about
//! each kind.

use std::fmt;
use std::time::Duration;

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
    /// RabbitMQ did not confirm a message (refused, returned, nacked, timed out, disconnected).
    Publish,
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
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: trempy_protocol::redact::redact(&message.into()) }
    }

    pub(crate) fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<trempy_protocol::Error> for Error {
    fn from(err: trempy_protocol::Error) -> Self {
        Self::new(ErrorKind::Decode, err.message())
    }
}

impl From<pgrx::spi::SpiError> for Error {
    fn from(err: pgrx::spi::SpiError) -> Self {
        Self::new(ErrorKind::Postgres, err.to_string())
    }
}

/// What a task worker does after an error of some kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reaction {
    /// Record the error in `trempy.task_progress`, wait, and try the same work again. Nothing
    /// was advanced, so nothing is lost.
    RetryAfter(Duration),
    /// Exit; the launcher starts a new worker (after its own back-off).
    Exit,
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
        ErrorKind::Publish => Reaction::RetryAfter(backoff(250, 4_000)),
        ErrorKind::Config | ErrorKind::Catalog | ErrorKind::Decode | ErrorKind::Postgres => Reaction::RetryAfter(backoff(1_000, 30_000)),
    }
}
