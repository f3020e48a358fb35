//! The applier's own tables in the target database (schema `trempy`: progress, staging, state,
//! errors, dead letters, schema changes), created and upgraded through numbered migrations. The
//! version reached is recorded in `trempy.applier_schema`; every applier session and one-shot
//! command brings the target up to [`LATEST`] first, under an advisory lock (appliers of other
//! tasks may share the target), in one transaction. A target at a newer version than this
//! applier knows is refused: an older applier could misread tables a newer one changed.
//!
//! Version 1 is the schema as it stood when versioning began, written so that it also upgrades a
//! target of any earlier (unversioned) applier: `IF NOT EXISTS` everywhere, and the columns added
//! over time to `applier_progress` added when missing. Later versions are plain steps.

use tokio_postgres::Client;

use crate::error::{Error, ErrorKind};

/// One step of the target schema.
struct Migration {
    version: i32,
    /// What it does, recorded beside the version.
    what: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    what: "progress, staging, state, errors, dead letters and schema changes (upgrades unversioned targets)",
    sql: "
CREATE TABLE IF NOT EXISTS trempy.applier_progress (
    task_name              text PRIMARY KEY,
    commit_lsn             pg_lsn NOT NULL,
    source_commit_time     timestamptz,
    transactions_applied   bigint NOT NULL DEFAULT 0,
    changes_applied        bigint NOT NULL DEFAULT 0,
    applied_at             timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE trempy.applier_progress IS
  'TREMpy: per task, the last source commit LSN applied here. Updated in the same transaction as the rows.';
ALTER TABLE trempy.applier_progress
    ADD COLUMN IF NOT EXISTS generation   integer NOT NULL DEFAULT 1,
    ADD COLUMN IF NOT EXISTS settings     jsonb,
    ADD COLUMN IF NOT EXISTS load_table   integer,
    ADD COLUMN IF NOT EXISTS load_attempt integer,
    ADD COLUMN IF NOT EXISTS load_seq     integer,
    ADD COLUMN IF NOT EXISTS load_merge   boolean,
    ADD COLUMN IF NOT EXISTS rows_loaded  bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS incarnation  text,
    ADD COLUMN IF NOT EXISTS retired_incarnations text[] NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS load_copy    bigint;
CREATE TABLE IF NOT EXISTS trempy.applier_staging (
    task_name  text NOT NULL,
    commit_lsn pg_lsn NOT NULL,
    seq        integer NOT NULL,
    body       bytea NOT NULL,
    PRIMARY KEY (task_name, commit_lsn, seq)
);
COMMENT ON TABLE trempy.applier_staging IS
  'TREMpy: chunks of a source transaction larger than one message, kept until its last chunk arrives.';
CREATE TABLE IF NOT EXISTS trempy.applier_state (
    task_name   text PRIMARY KEY,
    state       text NOT NULL CHECK (state IN ('running', 'retrying', 'stopped')),
    reason      text,
    since       timestamptz NOT NULL DEFAULT now(),
    failing_lsn pg_lsn,
    attempts    integer NOT NULL DEFAULT 0
);
COMMENT ON TABLE trempy.applier_state IS
  'TREMpy: per task, running / retrying / stopped, why and since when; attempts at the failing source transaction.';
CREATE TABLE IF NOT EXISTS trempy.applier_errors (
    id          bigserial PRIMARY KEY,
    task_name   text NOT NULL,
    logged_at   timestamptz NOT NULL DEFAULT now(),
    table_name  text,
    operation   text,
    commit_lsn  pg_lsn,
    sqlstate    text,
    error_class text NOT NULL,
    message     text NOT NULL,
    attempt     integer,
    action      text NOT NULL
);
CREATE INDEX IF NOT EXISTS applier_errors_task ON trempy.applier_errors (task_name, id);
COMMENT ON TABLE trempy.applier_errors IS
  'TREMpy: every apply error (never row values); action says what the applier did about it.';
CREATE TABLE IF NOT EXISTS trempy.applier_deadletters (
    id               bigserial PRIMARY KEY,
    task_name        text NOT NULL,
    commit_lsn       pg_lsn,
    xid              bigint,
    table_name       text,
    operation        text,
    sqlstate         text,
    error_class      text NOT NULL,
    reason           text NOT NULL,
    attempts         integer NOT NULL,
    body             bytea NOT NULL,
    state            text NOT NULL DEFAULT 'dead' CHECK (state IN ('dead', 'replayed', 'discarded')),
    dead_lettered_at timestamptz NOT NULL DEFAULT now(),
    resolved_at      timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS applier_deadletters_txn ON trempy.applier_deadletters (task_name, commit_lsn) WHERE commit_lsn IS NOT NULL;
COMMENT ON TABLE trempy.applier_deadletters IS
  'TREMpy: dead-lettered source transactions and invalid messages; replay with trempy-applier dlq replay.';
CREATE TABLE IF NOT EXISTS trempy.applier_schema_changes (
    id           bigserial PRIMARY KEY,
    task_name    text NOT NULL,
    incarnation  text,
    commit_lsn   pg_lsn NOT NULL,
    source_table text NOT NULL,
    target_table text,
    steps        text NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS applier_schema_changes_task ON trempy.applier_schema_changes (task_name, id);
COMMENT ON TABLE trempy.applier_schema_changes IS
  'TREMpy: source schema changes applied to the target, in the transaction that applied them.';
",
}];

/// The version this applier brings a target to.
pub(crate) const LATEST: i32 = 1;

/// Key of the advisory lock under which a target is migrated (`'TRMA'`).
const LOCK_KEY: i64 = 0x5452_4D41;

/// Brings the target's tables to [`LATEST`]; returns the version it found.
pub(crate) async fn run(client: &Client) -> Result<i32, Error> {
    client.batch_execute("BEGIN").await?;
    let outcome = migrate(client).await;
    match &outcome {
        Ok(_) => client.batch_execute("COMMIT").await?,
        Err(_) => {
            let _ = client.batch_execute("ROLLBACK").await;
        }
    }
    outcome
}

async fn migrate(client: &Client) -> Result<i32, Error> {
    client
        .batch_execute(
            "SET LOCAL client_min_messages = warning;
             CREATE SCHEMA IF NOT EXISTS trempy;",
        )
        .await?;
    client.execute("SELECT pg_catalog.pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS trempy.applier_schema (
                 version    integer PRIMARY KEY,
                 what       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );
             COMMENT ON TABLE trempy.applier_schema IS
               'TREMpy: the versions of the applier''s tables in this database (applier/src/migrations.rs).';",
        )
        .await?;
    let found: i32 = client.query_one("SELECT coalesce(max(version), 0) FROM trempy.applier_schema", &[]).await?.get(0);
    if found > LATEST {
        return Err(Error::new(
            ErrorKind::TargetSchema,
            format!(
                "the TREMpy tables in the target database are at version {found}, newer than this applier's {LATEST} (a newer trempy-applier upgraded them): upgrade trempy-applier"
            ),
        ));
    }
    for migration in pending(found) {
        client.batch_execute(migration.sql).await?;
        client
            .execute(
                "INSERT INTO trempy.applier_schema (version, what) VALUES ($1, $2)",
                &[&migration.version, &migration.what],
            )
            .await?;
        tracing::info!(version = migration.version, what = migration.what, "target tables migrated");
    }
    Ok(found)
}

/// The migrations after `found`, in order.
fn pending(found: i32) -> impl Iterator<Item = &'static Migration> {
    MIGRATIONS.iter().filter(move |m| m.version > found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_one_to_latest() {
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, i32::try_from(i).unwrap_or(i32::MAX) + 1);
            assert!(!migration.sql.trim().is_empty() && !migration.what.is_empty());
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(LATEST));
    }

    #[test]
    fn only_the_missing_steps_run() {
        assert_eq!(pending(0).count(), MIGRATIONS.len());
        assert_eq!(pending(LATEST).count(), 0);
    }

    #[test]
    fn version_one_upgrades_unversioned_targets() {
        let sql = MIGRATIONS[0].sql;
        // every table and index is created only when missing, every later column added when missing
        assert!(!sql.contains("CREATE TABLE trempy.") && !sql.contains("CREATE INDEX applier"));
        for column in ["generation", "settings", "load_copy", "retired_incarnations", "incarnation"] {
            assert!(sql.contains(&format!("ADD COLUMN IF NOT EXISTS {column} ")), "{column}");
        }
    }
}
