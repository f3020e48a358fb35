//! The one error type of the applier.

use std::fmt;

use trempy_protocol::Lsn;

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
    /// Another applier moved this task's progress row.
    Conflict,
    /// A row that the task's transformations cannot compute (a value out of range, the task's
    /// settings not fitting the relation): it stops the task in order, like a target SQL error.
    Transform,
}

/// An applier error. Messages never contain row values or credentials.
#[derive(Debug, Clone)]
pub(crate) struct Error {
    kind: ErrorKind,
    message: String,
    sqlstate: Option<String>,
    table: Option<String>,
    lsn: Option<Lsn>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), sqlstate: None, table: None, lsn: None }
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

    pub(crate) fn with_lsn(mut self, lsn: Lsn) -> Self {
        self.lsn = Some(lsn);
        self
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
            let kind = if err.is_closed() || err.code().is_none() { ErrorKind::TargetConnection } else { ErrorKind::TargetSql };
            return Self { sqlstate: err.code().map(|c| c.code().to_owned()), ..Self::new(kind, format!("target database: {err}")) };
        };
        let code = db.code().code().to_owned();
        let message = if code.starts_with("22") || code.starts_with("23") {
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
        Self { sqlstate: Some(code), ..Self::new(ErrorKind::TargetSql, message) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<lapin::Error> for Error {
    fn from(err: lapin::Error) -> Self {
        Self::new(ErrorKind::Broker, format!("RabbitMQ: {err}"))
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::target(&err)
    }
}
