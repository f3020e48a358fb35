//! A task worker's replication connection to its own server, through PostgreSQL's own
//! `libpqwalreceiver` (what the built-in logical replication apply worker uses): the walsender at
//! the other end decodes the task's slot continuously, from WAL it reads once, and wakes at every
//! WAL flush; this end receives each pgoutput message as soon as it is decoded. Main thread only.
//!
//! PG15's `walrcv_startstreaming` cannot ask pgoutput for logical decoding messages (the DDL
//! capture's), so `START_REPLICATION` goes through `walrcv_exec`, which leaves the connection in
//! COPY BOTH mode; `walrcv_receive` and `walrcv_send` then work as for the apply worker.
//!
//! The function pointers are called through pgrx's FFI boundary guard: an ERROR raised inside
//! (a broken connection, the walsender's own ERROR) becomes a Rust panic that
//! [`crate::session::guarded`] turns into an [`Error`]; the caller then drops the connection.

use std::ffi::{CStr, CString};

use pgrx::PgMemoryContexts;
use pgrx::pg_sys;
use pgrx::spi::SpiClient;

use crate::error::{Error, ErrorKind};

/// An open replication connection streaming a slot.
pub(crate) struct Connection {
    conn: *mut pg_sys::WalReceiverConn,
    functions: pg_sys::WalReceiverFunctionsType,
    socket: pg_sys::pgsocket,
    /// Set while a call into libpqwalreceiver runs: still set after it raised an ERROR.
    in_call: bool,
}

/// What [`Connection::receive`] found.
pub(crate) enum Received<'a> {
    /// One CopyData message (see `trempy_protocol::replication::parse`).
    Data(&'a [u8]),
    /// Nothing more for now: wait until [`Connection::socket`] is readable.
    WouldBlock,
    /// The server ended the stream.
    Ended,
}

fn replication_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Replication, message)
}

/// Loads `libpqwalreceiver` (once per process) and returns its functions.
fn functions() -> Result<pg_sys::WalReceiverFunctionsType, Error> {
    // SAFETY: main thread; load_file is a guarded PostgreSQL call, and WalReceiverFunctions is
    // set by the library's _PG_init and never changed afterwards.
    unsafe {
        if pg_sys::WalReceiverFunctions.is_null() {
            pg_sys::load_file(c"libpqwalreceiver".as_ptr(), false);
        }
        if pg_sys::WalReceiverFunctions.is_null() {
            return Err(replication_error("libpqwalreceiver did not register its functions"));
        }
        Ok(*pg_sys::WalReceiverFunctions)
    }
}

fn c_string(what: &str, value: &str) -> Result<CString, Error> {
    CString::new(value).map_err(|_| Error::new(ErrorKind::Config, format!("{what} holds a NUL byte")))
}

/// Takes a C string PostgreSQL allocated and frees it.
///
/// # Safety
/// `text` is null or a palloc'd NUL-terminated string no one else uses.
unsafe fn take_text(text: *mut std::ffi::c_char) -> Option<String> {
    if text.is_null() {
        return None;
    }
    // SAFETY: per the contract above.
    unsafe {
        let owned = CStr::from_ptr(text).to_string_lossy().into_owned();
        pg_sys::pfree(text.cast());
        Some(owned)
    }
}

impl Connection {
    /// Connects with `conninfo` (never logged: it may hold a password) as `application_name`, and
    /// starts streaming `slot` from its confirmed position with pgoutput (protocol 1, the task's
    /// publication, logical decoding messages included).
    pub(crate) fn start(conninfo: &str, application_name: &str, slot: &str, publication: &str) -> Result<Self, Error> {
        let functions = functions()?;
        let conninfo = c_string("the replication conninfo", conninfo)?;
        let appname = c_string("the application name", application_name)?;
        let command = c_string("the slot or publication name", &start_replication(slot, publication))?;
        // Everything libpqwalreceiver allocates for the connection must outlive transactions.
        let mut top = PgMemoryContexts::TopMemoryContext;
        // SAFETY: main thread; what is allocated meanwhile belongs to the connection.
        unsafe { top.switch_to(|_| Self::connect(functions, &conninfo, &appname, &command, slot)) }
    }

    fn connect(
        functions: pg_sys::WalReceiverFunctionsType,
        conninfo: &CStr,
        appname: &CStr,
        command: &CStr,
        slot: &str,
    ) -> Result<Self, Error> {
        let (Some(connect), Some(exec), Some(disconnect)) =
            (functions.walrcv_connect, functions.walrcv_exec, functions.walrcv_disconnect)
        else {
            return Err(replication_error("libpqwalreceiver lacks a function"));
        };
        let mut err: *mut std::ffi::c_char = std::ptr::null_mut();
        // SAFETY: main thread; valid C strings; an ERROR inside becomes a panic.
        let conn = unsafe {
            pg_sys::ffi::pg_guard_ffi_boundary(|| connect(conninfo.as_ptr(), true, appname.as_ptr(), &mut err))
        };
        if conn.is_null() {
            // SAFETY: err is libpqwalreceiver's palloc'd message (or null).
            let reason = unsafe { take_text(err) }.unwrap_or_default();
            return Err(replication_error(format!(
                "could not open the replication connection to this server: {}. It connects with trempy.replication_conninfo (by default over the Unix socket as the bootstrap superuser): pg_hba.conf must let it in (local <database> <user> peer or trust, or a password in a passfile), and max_wal_senders must leave a sender free for each task",
                reason.trim()
            )));
        }
        let mut connection = Self { conn, functions, socket: -1, in_call: false };
        // SAFETY: a live connection; an ERROR inside becomes a panic, and `connection`'s Drop
        // closes it.
        let result =
            unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| exec(conn, command.as_ptr(), 0, std::ptr::null())) };
        // SAFETY: result is a palloc'd WalRcvExecResult (or null on out of memory).
        let (status, reason) = unsafe {
            if result.is_null() {
                (pg_sys::WalRcvExecStatus::WALRCV_ERROR, None)
            } else {
                let status = (*result).status;
                let reason = take_text((*result).err);
                pg_sys::pfree(result.cast());
                (status, reason)
            }
        };
        if status != pg_sys::WalRcvExecStatus::WALRCV_OK_COPY_BOTH {
            // SAFETY: main thread, live connection; not used after.
            unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| disconnect(conn)) };
            connection.conn = std::ptr::null_mut();
            return Err(replication_error(format!(
                "could not start streaming replication slot \"{slot}\": {}",
                reason.as_deref().map_or("no reason given", str::trim)
            )));
        }
        Ok(connection)
    }

    /// The next CopyData message, without waiting.
    pub(crate) fn receive(&mut self) -> Result<Received<'_>, Error> {
        let receive = self.functions.walrcv_receive.ok_or_else(|| replication_error("no walrcv_receive"))?;
        let mut buffer: *mut std::ffi::c_char = std::ptr::null_mut();
        let mut socket: pg_sys::pgsocket = -1;
        let conn = self.conn;
        self.in_call = true;
        // SAFETY: main thread, live connection; an ERROR inside becomes a panic.
        let len = unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| receive(conn, &mut buffer, &mut socket)) };
        self.in_call = false;
        self.socket = socket;
        match len {
            0 => Ok(Received::WouldBlock),
            n if n < 0 => Ok(Received::Ended),
            n => {
                let len = usize::try_from(n).unwrap_or_default();
                if buffer.is_null() {
                    return Err(replication_error("walrcv_receive returned no buffer"));
                }
                // SAFETY: libpq's buffer of `len` bytes, valid until the next receive (the
                // borrow of `self` ends before that).
                Ok(Received::Data(unsafe { std::slice::from_raw_parts(buffer.cast::<u8>(), len) }))
            }
        }
    }

    /// Sends one CopyData message (a standby status update).
    pub(crate) fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let send = self.functions.walrcv_send.ok_or_else(|| replication_error("no walrcv_send"))?;
        let len = i32::try_from(bytes.len()).map_err(|_| replication_error("message too long"))?;
        let conn = self.conn;
        self.in_call = true;
        // SAFETY: main thread, live connection, `len` readable bytes; an ERROR becomes a panic.
        unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| send(conn, bytes.as_ptr().cast(), len)) };
        self.in_call = false;
        Ok(())
    }

    /// Whether a call into the connection raised the ERROR being handled (the call never
    /// returned).
    pub(crate) fn failed(&self) -> bool {
        self.in_call
    }

    /// The socket to wait on after [`Received::WouldBlock`].
    pub(crate) fn socket(&self) -> Option<pg_sys::pgsocket> {
        (self.socket >= 0).then_some(self.socket)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.conn.is_null() {
            return;
        }
        if let Some(disconnect) = self.functions.walrcv_disconnect {
            let conn = self.conn;
            // SAFETY: main thread (connections never leave it); PQfinish raises no ERROR.
            unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| disconnect(conn)) };
        }
        self.conn = std::ptr::null_mut();
    }
}

/// The conninfo for this server's database (see [`conninfo`]), read in a transaction.
pub(crate) fn server_conninfo(client: &SpiClient<'_>) -> Result<String, Error> {
    let table = client.select(
        "SELECT (SELECT a.rolname::text FROM pg_catalog.pg_authid a WHERE a.oid = 10), pg_catalog.current_setting('unix_socket_directories'),
                pg_catalog.current_setting('port')::int4, pg_catalog.current_database()::text",
        Some(1),
        &[],
    )?;
    let row = table.first();
    let user = row.get::<String>(1)?.unwrap_or_default();
    let directories = row.get::<String>(2)?.unwrap_or_default();
    let port = row.get::<i32>(3)?.unwrap_or(5432);
    let database = row.get::<String>(4)?.unwrap_or_default();
    Ok(conninfo(crate::gucs::replication_conninfo().as_deref(), &directories, port, &user, &database))
}

/// `START_REPLICATION` for the task's slot from its confirmed position (`0/0`), with pgoutput's
/// options: protocol 1, the publication, and logical decoding messages (the DDL capture's).
fn start_replication(slot: &str, publication: &str) -> String {
    let publication_list = quote_identifier(publication);
    format!(
        "START_REPLICATION SLOT {} LOGICAL 0/0 (\"proto_version\" '1', \"publication_names\" {}, \"messages\" 'true')",
        quote_identifier(slot),
        quote_literal(&publication_list)
    )
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A conninfo value, quoted as libpq wants it (single quotes, `\` and `'` escaped).
fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The conninfo of the replication connection: `trempy.replication_conninfo` if set, else this
/// server's first Unix socket directory and port as `user` (the bootstrap superuser), over the
/// socket (peer or trust in a stock pg_hba.conf); `dbname` is always the task's database (a later
/// keyword wins in a conninfo string).
pub(crate) fn conninfo(
    configured: Option<&str>,
    socket_directories: &str,
    port: i32,
    user: &str,
    database: &str,
) -> String {
    let base = match configured {
        Some(configured) => configured.to_owned(),
        None => {
            let host = first_socket_directory(socket_directories).unwrap_or_else(|| "localhost".to_owned());
            format!("host={} port={port} user={}", conninfo_value(&host), conninfo_value(user))
        }
    };
    format!("{base} dbname={}", conninfo_value(database))
}

/// The first entry of `unix_socket_directories` (a comma-separated list whose entries may be
/// double-quoted), if any.
fn first_socket_directory(list: &str) -> Option<String> {
    let mut entry = String::new();
    let mut quoted = false;
    for c in list.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => break,
            c => entry.push(c),
        }
    }
    let entry = entry.trim();
    (!entry.is_empty()).then(|| entry.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_replication_quotes_names_and_asks_for_logical_messages() {
        assert_eq!(
            start_replication("trempy_orders", "trempy_orders"),
            "START_REPLICATION SLOT \"trempy_orders\" LOGICAL 0/0 (\"proto_version\" '1', \"publication_names\" '\"trempy_orders\"', \"messages\" 'true')"
        );
        assert_eq!(
            start_replication("a\"b", "it's"),
            "START_REPLICATION SLOT \"a\"\"b\" LOGICAL 0/0 (\"proto_version\" '1', \"publication_names\" '\"it''s\"', \"messages\" 'true')"
        );
    }

    #[test]
    fn the_default_conninfo_uses_the_first_socket_directory_and_the_bootstrap_superuser() {
        assert_eq!(
            conninfo(None, "/var/run/postgresql, /tmp", 5433, "postgres", "shop"),
            "host='/var/run/postgresql' port=5433 user='postgres' dbname='shop'"
        );
        assert_eq!(
            conninfo(None, "\"/run/a,b\",/tmp", 5432, "o'neil", "my db"),
            "host='/run/a,b' port=5432 user='o\\'neil' dbname='my db'"
        );
        assert_eq!(conninfo(None, "", 5432, "postgres", "d"), "host='localhost' port=5432 user='postgres' dbname='d'");
    }

    #[test]
    fn a_configured_conninfo_is_kept_and_the_database_is_always_the_tasks() {
        assert_eq!(
            conninfo(Some("host=127.0.0.1 user=repl passfile=/etc/pgpass dbname=other"), "/tmp", 5432, "postgres", "d"),
            "host=127.0.0.1 user=repl passfile=/etc/pgpass dbname=other dbname='d'"
        );
    }
}
