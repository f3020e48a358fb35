//! Every `trempy.*` setting, registered in one place.

use std::ffi::CString;

use std::path::PathBuf;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

use crate::amqp::Broker;

static DATABASES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));
static AMQP_URL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static AMQP_PASSWORD_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static REPLICATION_CONNINFO: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static POLL_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(100);
static MAX_MESSAGE_KB: GucSetting<i32> = GucSetting::<i32>::new(1024);
static SEQUENCE_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(10);

/// Registers the settings. Called from `_PG_init`.
pub(crate) fn init() {
    GucRegistry::define_string_guc(
        c"trempy.databases",
        c"Databases whose tasks TREMpy runs, separated by commas (like search_path): one launcher each.",
        c"Create the extension, and the tasks, in any of them. Listed databases are served from the next reload; an unlisted one's launcher and task workers stop. Before DROP DATABASE, take it out of the list and reload (or use WITH (FORCE)).",
        &DATABASES,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"trempy.amqp_url",
        c"RabbitMQ URL (amqp://user@host:port/vhost) the task workers publish to.",
        c"Put the password in trempy.amqp_password_file: a password in this URL is readable by members of pg_read_all_settings (so pg_monitor) and is written to the server log at every reload.",
        &AMQP_URL,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_string_guc(
        c"trempy.amqp_password_file",
        c"File holding the password of trempy.amqp_url's user.",
        c"Owned by the server's OS user with mode 0600 or less (or by root, 0640 or less), like ssl_key_file; read at every connection, so a rotated password is used from the next reconnection.",
        &AMQP_PASSWORD_FILE,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"trempy.replication_conninfo",
        c"How a task worker connects to this server to stream its slot (a libpq conninfo; dbname is always the task's database).",
        c"Empty (the default): over this server's first Unix socket directory and port, as the bootstrap superuser, which a stock pg_hba.conf lets in by peer authentication. Each task uses one of max_wal_senders. Put a password in a passfile, not here.",
        &REPLICATION_CONNINFO,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_int_guc(
        c"trempy.sequence_interval",
        c"Seconds between two reads of a streaming task's sequences; their values are published to the target when they changed.",
        c"Also read at the end of a full load. A target promoted at a cutover hands out values past every replicated one once the last read after the source's last write has arrived.",
        &SEQUENCE_INTERVAL_S,
        1,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"trempy.poll_interval",
        c"How long a task worker that is not streaming (full load, retries) waits between checks, unless the task sets interval_seconds.",
        c"",
        &POLL_INTERVAL_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"trempy.max_message_size",
        c"Size at which a RabbitMQ message is cut; larger source transactions are split into chunks.",
        c"",
        &MAX_MESSAGE_KB,
        16,
        65_536,
        GucContext::Sighup,
        GucFlags::UNIT_KB,
    );
}

fn string(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting.get().and_then(|s| s.into_string().ok()).filter(|s| !s.is_empty())
}

/// `trempy.databases`, parsed, with the database of the setting it replaced
/// (`trempy.database`, still honoured); the second element names a malformed item.
pub(crate) fn databases() -> (Vec<String>, Option<String>) {
    let (mut databases, problem) = trempy_protocol::databases::parse(&string(&DATABASES).unwrap_or_default());
    if let Some(legacy) = legacy_database()
        && !databases.contains(&legacy)
    {
        databases.push(legacy);
    }
    (databases, problem)
}

/// `trempy.database`, the single database of earlier versions, when a configuration still sets
/// it (PostgreSQL keeps it as a placeholder).
pub(crate) fn legacy_database() -> Option<String> {
    // SAFETY: reads a setting by name on the calling (main) thread; the string is copied at once.
    unsafe {
        let value = pgrx::pg_sys::GetConfigOption(c"trempy.database".as_ptr(), true, false);
        if value.is_null() {
            None
        } else {
            std::ffi::CStr::from_ptr(value).to_str().ok().map(str::to_owned).filter(|s| !s.is_empty())
        }
    }
}

/// `trempy.amqp_url` and `trempy.amqp_password_file`, if the URL is set. Never log them.
pub(crate) fn broker() -> Option<Broker> {
    string(&AMQP_URL).map(|url| Broker { url, password_file: string(&AMQP_PASSWORD_FILE).map(PathBuf::from) })
}

/// `trempy.replication_conninfo`, if set. Never log it.
pub(crate) fn replication_conninfo() -> Option<String> {
    string(&REPLICATION_CONNINFO)
}

/// `trempy.poll_interval`.
pub(crate) fn poll_interval() -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(POLL_INTERVAL_MS.get()).unwrap_or(100))
}

/// `trempy.sequence_interval`.
pub(crate) fn sequence_interval() -> std::time::Duration {
    std::time::Duration::from_secs(u64::try_from(SEQUENCE_INTERVAL_S.get().max(1)).unwrap_or(10))
}

/// `trempy.max_message_size`, in bytes.
pub(crate) fn max_message_bytes() -> usize {
    usize::try_from(MAX_MESSAGE_KB.get()).unwrap_or(1024) * 1024
}
