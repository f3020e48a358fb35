//! The one error type of this crate.

use std::fmt;

/// What went wrong, coarse enough for a caller to decide what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A pgoutput message that is truncated, malformed or of an unknown kind.
    MalformedPgOutput,
    /// A text that should have been an LSN (`X/Y`) is not one.
    InvalidLsn,
    /// A message body that is not a valid envelope of a version we understand.
    MalformedEnvelope,
    /// A TREMpy message (a JSON object with a `task` name) of a newer envelope version than this
    /// crate reads: not bad input, but a reader that must be upgraded.
    NewerEnvelope,
    /// Task settings that do not validate.
    InvalidSettings,
    /// A name (task, slot, queue) that is not allowed or too long.
    InvalidName,
    /// A text that should have been a `pg_snapshot` is not one.
    MalformedSnapshot,
    /// COPY text data that does not parse.
    MalformedCopyData,
    /// An applier report that is not valid JSON of a version we understand.
    MalformedReport,
    /// Broker credentials that cannot be used: a malformed URL, a password file that cannot be
    /// read or that others may read, a password given twice.
    Credentials,
}

/// An error of the protocol crate: a kind plus a message for humans.
///
/// Messages never contain row values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human readable message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
