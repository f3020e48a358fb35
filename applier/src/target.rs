//! Every connection the applier opens to the target database, with the session settings pinned.
//!
//! Values travel as text and the target parses them (and prints some back), so the settings that
//! govern value formats are fixed for every applier session, whatever the role's or database's
//! defaults (`ALTER ROLE … SET`, `ALTER DATABASE … SET`, `PGOPTIONS`): see [`SESSION_SETTINGS`]
//! and docs/applier.md ("Target sessions"). They are set with `SET` right after connecting rather
//! than as startup options, so that connection poolers that refuse the `options` startup
//! parameter still work.
//!
//! `search_path` is `pg_catalog, pg_temp`: no object of a user schema can capture a name in the
//! applier's SQL. The applier's own tables are `trempy.`-qualified, target tables are always
//! `schema.table`, and the type of every value cast is the target column's type as
//! `pg_catalog.format_type` prints it in this session, that is schema-qualified unless it is a
//! `pg_catalog` type ([`crate::catalog`]).

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use tracing::warn;
use trempy_protocol::redact::redact;

use crate::error::{Error, ErrorKind};

/// The settings of every applier session on the target.
///
/// * `DateStyle = 'ISO, MDY'`, `IntervalStyle = postgres`: the formats PostgreSQL prints by
///   default; the input order (MDY) only matters for a source that sends non-ISO dates.
/// * `TimeZone = UTC`: a `timestamp` value written to a `timestamptz` column (or the reverse)
///   is read as UTC, whatever the target's default zone.
/// * `extra_float_digits = 3`, `bytea_output = hex`: exact, unambiguous output.
/// * `lc_monetary = 'C'`: `money` input is parsed with `$`, `,` and `.` (C and en_US
///   conventions). `money` values travel as the source prints them in its own `lc_monetary`, so
///   they round-trip when the source session uses `C` or a locale with the same conventions.
/// * `search_path = pg_catalog, pg_temp`: see the module documentation.
pub(crate) const SESSION_SETTINGS: &str = "SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; SET TimeZone = 'UTC'; \
     SET extra_float_digits = 3; SET bytea_output = 'hex'; SET lc_monetary = 'C'; SET search_path = pg_catalog, pg_temp";

/// Connects to the target, drives the connection in a task of its own and pins the session
/// settings. Errors never quote the DSN's password.
pub(crate) async fn connect(dsn: &str) -> Result<(Client, JoinHandle<()>), Error> {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls).await.map_err(|e| {
        let why = e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned());
        Error::new(ErrorKind::TargetConnection, format!("cannot connect to the target database: {why}"))
    })?;
    let driver = tokio::spawn(async move {
        if let Err(err) = connection.await {
            warn!(error = %redact(&err.to_string()), "target connection closed");
        }
    });
    client.batch_execute(SESSION_SETTINGS).await.map_err(|e| Error::target(&e))?;
    Ok((client, driver))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_format_setting_is_pinned() {
        for setting in [
            "DateStyle = 'ISO",
            "IntervalStyle = 'postgres'",
            "TimeZone = 'UTC'",
            "extra_float_digits = 3",
            "bytea_output = 'hex'",
            "lc_monetary = 'C'",
            "search_path = pg_catalog, pg_temp",
        ] {
            assert!(SESSION_SETTINGS.contains(setting), "{setting}");
        }
        // pg_temp last: temporary objects never capture a name.
        assert!(SESSION_SETTINGS.trim_end().ends_with("pg_catalog, pg_temp"));
    }
}
