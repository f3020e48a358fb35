//! The one error type of the applier.

use std::fmt;

use trempy_protocol::Lsn;
use trempy_protocol::cause::Cause;
use trempy_protocol::redact::redact;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// RabbitMQ unreachable, channel or connection closed, consume failed.
    Broker,
    /// The target database is unreachable or the connection broke.
    TargetConnection,
    /// The target database refused a statement (see the SQLSTATE).
    TargetSql,
    /// A message that is not a valid envelope for this task.
    Envelope,
    /// A message of this task in a newer envelope format than this applier reads: it halts the
    /// task in order until the applier is upgraded.
    NewerEnvelope,
    /// Another applier moved this task's progress row.
    Conflict,
    /// The error policy stopped the task; it waits for `trempy-applier resume` or a restart.
    Stopped,
    /// The stream cannot be followed safely (messages of a task incarnation already left
    /// behind): it halts in order, never skips and never dead-letters.
    Stream,
    /// A row that the task's transformations cannot compute (an arithmetic overflow, a value out
    /// of range): a permanent failure of its source transaction, which the task's error policy
    /// handles like a refused row (stop, or retry then dead-letter).
    Transform,
    /// The task's filters and transformations do not fit a source table as it is now (a column
    /// they use was dropped or renamed): it halts in order, naming the rules, until new settings
    /// (`trempy.update_task`) arrive; the applier looks for them in the queue behind the failing
    /// message.
    Rules,
    /// An update lacks values the target needs and does not have (unchanged TOASTed columns of
    /// a row missing from the target): it halts in order, never writing NULL in their place.
    UnchangedToast,
    /// A source schema change the target cannot follow by itself: what it did cannot be derived
    /// on the target (a volatile `DEFAULT`, a `USING` conversion), the task does not manage its
    /// target tables (the DBA runs the statements the reason names), or a statement of it failed.
    /// It halts in order and is never dead-lettered; the next attempt reconciles again.
    Schema,
    /// The target's TREMpy tables are at a newer version than this applier knows
    /// ([`crate::migrations`]): it halts until upgraded.
    TargetSchema,
}

impl ErrorKind {
    /// The name used in `x-trempy-error-class` headers and `trempy.applier_errors.error_class`.
    pub(crate) fn class(self) -> &'static str {
        match self {
            Self::Broker => "broker",
            Self::TargetConnection => "target_connection",
            Self::TargetSql => "target_sql",
            Self::Envelope => "envelope",
            Self::NewerEnvelope => "newer_envelope",
            Self::Conflict => "conflict",
            Self::Stopped => "stopped",
            Self::Transform => "transform",
            Self::Rules => "rules",
            Self::UnchangedToast => "unchanged_toast",
            Self::Schema => "schema",
            Self::Stream => "stream",
            Self::TargetSchema => "target_schema",
        }
    }
}

/// The source operation behind a failed statement. Inserts and updates of the same columns share
/// one bulk upsert statement; a statement that mixes them is [`Operation::Upsert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Insert,
    Update,
    Upsert,
    Delete,
    Truncate,
    /// An SCD2 statement (closing or opening versions).
    Scd2,
}

impl Operation {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Upsert => "upsert",
            Self::Delete => "delete",
            Self::Truncate => "truncate",
            Self::Scd2 => "scd2",
        }
    }

    /// The operation of a statement covering rows of `self` and of `other`.
    pub(crate) fn merge(self, other: Self) -> Self {
        if self == other { self } else { Self::Upsert }
    }
}

/// An applier error. Messages never contain row values or credentials.
#[derive(Debug, Clone)]
pub(crate) struct Error {
    kind: ErrorKind,
    message: String,
    sqlstate: Option<String>,
    table: Option<String>,
    lsn: Option<Lsn>,
    operation: Option<Operation>,
    /// What caused it, redacted ([`Cause`]).
    cause: Option<Box<Cause>>,
}

impl Error {
    /// An error; passwords of URLs or DSNs its message quotes (a connection error may) are masked.
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: redact(&message.into()),
            sqlstate: None,
            table: None,
            lsn: None,
            operation: None,
            cause: None,
        }
    }

    pub(crate) fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub(crate) fn sqlstate(&self) -> Option<&str> {
        self.sqlstate.as_deref()
    }

    pub(crate) fn with_table(mut self, table: impl Into<String>) -> Self {
        self.table = Some(table.into());
        self
    }

    pub(crate) fn with_sqlstate(mut self, code: &str) -> Self {
        self.sqlstate = Some(code.to_owned());
        self
    }

    /// Sets the source commit LSN, unless a more precise one is known already.
    pub(crate) fn with_lsn(mut self, lsn: Lsn) -> Self {
        self.lsn.get_or_insert(lsn);
        self
    }

    /// Keeps what caused it (its whole chain, redacted).
    pub(crate) fn caused_by(mut self, err: &(dyn std::error::Error + 'static)) -> Self {
        self.cause = Some(Cause::chain(err));
        self
    }

    pub(crate) fn with_operation(mut self, operation: Operation) -> Self {
        self.operation = Some(operation);
        self
    }

    pub(crate) fn operation(&self) -> Option<Operation> {
        self.operation
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn table(&self) -> Option<&str> {
        self.table.as_deref()
    }

    pub(crate) fn lsn(&self) -> Option<Lsn> {
        self.lsn
    }

    /// A target-database error. Data and constraint errors (SQLSTATE classes 22 and 23) quote
    /// row values in their messages, so only their code and constraint or column are kept.
    pub(crate) fn target(err: &tokio_postgres::Error) -> Self {
        let Some(db) = err.as_db_error() else {
            let kind = if err.is_closed() || err.code().is_none() {
                ErrorKind::TargetConnection
            } else {
                ErrorKind::TargetSql
            };
            return Self {
                sqlstate: err.code().map(|c| c.code().to_owned()),
                ..Self::new(kind, format!("target database: {err}")).caused_by(err)
            };
        };
        let code = db.code().code().to_owned();
        // Data and constraint errors quote row values: their cause is not kept either.
        let values = code.starts_with("22") || code.starts_with("23");
        let message = if values {
            let mut what = format!("target database refused a row (SQLSTATE {code})");
            if let Some(c) = db.constraint() {
                what.push_str(&format!(", constraint \"{c}\""));
            }
            if let Some(c) = db.column() {
                what.push_str(&format!(", column \"{c}\""));
            }
            what
        } else {
            format!("target database: {} (SQLSTATE {code})", db.message())
        };
        let error = Self { sqlstate: Some(code), ..Self::new(ErrorKind::TargetSql, message) };
        if values { error } else { error.caused_by(err) }
    }
}

#[cfg(test)]
impl Error {
    /// A target error with this SQLSTATE, for tests.
    pub(crate) fn target_code(code: &str, message: &str) -> Self {
        Self { sqlstate: Some(code.to_owned()), ..Self::new(ErrorKind::TargetSql, message) }
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

impl From<lapin::Error> for Error {
    fn from(err: lapin::Error) -> Self {
        Self::new(ErrorKind::Broker, format!("RabbitMQ: {err}")).caused_by(&err)
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::target(&err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_kept_without_its_password() {
        use std::error::Error as _;
        let url_error = std::io::Error::other("Invalid URL: 'amqp://trempy:s3cret@rabbit:5672/%2f'");
        let err = Error::new(ErrorKind::Broker, "cannot connect to RabbitMQ").caused_by(&url_error);
        let cause = err.source().map(ToString::to_string).unwrap_or_default();
        assert!(cause.contains("rabbit:5672") && !cause.contains("s3cret"), "{cause}");
        assert!(!format!("{err:?}").contains("s3cret"));
        assert!(Error::new(ErrorKind::Broker, "x").source().is_none());
    }

    #[test]
    fn messages_never_keep_a_password() {
        let err = Error::new(
            ErrorKind::Broker,
            "cannot connect to RabbitMQ: Invalid URL: 'amqp://trempy:s3cret@rabbit:5672/%2f'",
        );
        assert!(
            !err.message().contains("s3cret") && err.message().contains("amqp://trempy:***@rabbit"),
            "{}",
            err.message()
        );
        let err = Error::new(ErrorKind::TargetConnection, "bad dsn host=db password=s3cret user=x");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
