//! The running stack the benchmark measures (started by `scripts/dev.sh stack-up`, described by
//! the variables of `.stack/env`): both databases, RabbitMQ, and the programs it starts.

use std::path::{Path, PathBuf};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio::process::Command;
use tokio_postgres::Client;
use trempy_e2e::env;

use crate::host::Pid;

/// The `application_name` of the benchmark's own sessions.
pub const APP_NAME: &str = "trempy-bench";

/// Connections to the stack and where its parts live.
pub struct Stack {
    pub source: Client,
    pub target: Client,
    source_port: String,
    socket_dir: String,
    password: String,
    stack_dir: PathBuf,
    pg_bin: PathBuf,
    pub applier_bin: PathBuf,
    pub target_dsn: String,
    admin: lapin::Connection,
}

/// When each server last started: a change during a case means a restart disturbed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Epoch {
    source: String,
    target: String,
    rabbit: Option<Pid>,
}

impl Epoch {
    /// What restarted between `self` and `now`.
    pub fn restarts_since(&self, now: &Self) -> Vec<&'static str> {
        let mut restarted = Vec::new();
        if self.source != now.source {
            restarted.push("the source PostgreSQL restarted");
        }
        if self.target != now.target {
            restarted.push("the target PostgreSQL restarted");
        }
        if self.rabbit != now.rabbit {
            restarted.push("RabbitMQ restarted");
        }
        restarted
    }
}

impl Stack {
    /// Connects to the stack of `.stack/env`.
    pub async fn open() -> Self {
        let source_dsn = env("TREMPY_SOURCE_DSN");
        let password = url::Url::parse(&source_dsn)
            .ok()
            .and_then(|u| u.password().map(str::to_owned))
            .expect("TREMPY_SOURCE_DSN carries the stack's password");
        let admin = lapin::Connection::connect(&env("TREMPY_AMQP_ADMIN_URL"), lapin::ConnectionProperties::default())
            .await
            .expect("cannot connect to RabbitMQ as the stack's administrator");
        Self {
            source: session(&source_dsn).await,
            target: session(&env("TREMPY_TARGET_DSN")).await,
            source_port: env("TREMPY_SOURCE_PORT"),
            socket_dir: env("TREMPY_SOCKET_DIR"),
            password,
            stack_dir: PathBuf::from(env("TREMPY_STACK_DIR")),
            pg_bin: PathBuf::from(env("TREMPY_PG_BIN")),
            applier_bin: PathBuf::from(env("TREMPY_APPLIER_BIN")),
            target_dsn: env("TREMPY_TARGET_DSN"),
            admin,
        }
    }

    /// The state directory (results, applier logs).
    pub fn dir(&self) -> &Path {
        &self.stack_dir
    }

    pub fn pg_bin(&self, program: &str) -> PathBuf {
        self.pg_bin.join(program)
    }

    /// A connection string to the source for a subscription; it holds the password.
    pub fn source_conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} dbname=source user=trempy password={}", self.source_port, self.password)
    }

    /// A command of the PostgreSQL client programs (psql, pgbench) against the source, over the
    /// stack's socket, with the password in its environment only.
    pub fn source_client_command(&self, program: &str) -> Command {
        let mut command = Command::new(self.pg_bin(program));
        command
            .env("PGPASSWORD", &self.password)
            .env("PGHOST", &self.socket_dir)
            .env("PGPORT", &self.source_port)
            .env("PGUSER", "trempy")
            .env("PGDATABASE", "source")
            .env("PGOPTIONS", "-c client_min_messages=warning");
        command
    }

    /// RabbitMQ's `beam.smp`, if it runs.
    pub fn rabbit_pid(&self) -> Option<Pid> {
        trempy_e2e::stack::rabbit_pid()
    }

    /// RabbitMQ's version (`rabbitmqctl version`).
    pub async fn rabbit_version(&self) -> String {
        let version = trempy_e2e::stack::rabbitmqctl(&["-q", "-s", "version"]).await;
        version.and_then(|v| v.lines().next().map(str::to_owned)).unwrap_or_else(|| "unknown".to_owned())
    }

    /// Messages ready in a queue, 0 if it does not exist.
    pub async fn queue_messages(&self, queue: &str) -> u32 {
        let Ok(channel) = self.admin.create_channel().await else { return 0 };
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let count =
            channel.queue_declare(queue.into(), passive, FieldTable::default()).await.map_or(0, |q| q.message_count());
        let _ = channel.close(200, "done".into()).await;
        count
    }

    /// Deletes a queue if it exists.
    pub async fn delete_queue(&self, queue: &str) {
        trempy_e2e::delete_queue(&self.admin, queue).await;
    }

    /// When each server last started.
    pub async fn epoch(&self) -> Epoch {
        let started = "SELECT pg_postmaster_start_time()::text";
        Epoch {
            source: text(&self.source, started).await,
            target: text(&self.target, started).await,
            rabbit: self.rabbit_pid(),
        }
    }
}

/// A session of the benchmark, in UTC (the fingerprints of both sides compare text forms).
async fn session(dsn: &str) -> Client {
    let client = trempy_e2e::connect(&trempy_e2e::with_application_name(dsn, APP_NAME)).await;
    client
        .batch_execute("SET TimeZone = 'UTC'; SET client_min_messages = warning")
        .await
        .expect("cannot set up the benchmark's session");
    client
}

/// The single value of a query, as text (NULL as "").
pub async fn text(client: &Client, sql: &str) -> String {
    let row = client.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.get::<_, Option<String>>(0).unwrap_or_default()
}

/// The single bigint of a query (NULL as 0).
pub async fn int(client: &Client, sql: &str) -> i64 {
    let row = client.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.get::<_, Option<i64>>(0).unwrap_or(0)
}

/// Runs statements, panicking with the statement on failure.
pub async fn run(client: &Client, sql: &str) {
    client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A process id read from a query (`pid` columns are int4), if there is one.
pub async fn pid(client: &Client, sql: &str) -> Option<Pid> {
    let rows = client.query(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.first().and_then(|r| r.get::<_, Option<i32>>(0)).and_then(|p| Pid::try_from(p).ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_names_each_restart() {
        let before = Epoch { source: "a".into(), target: "b".into(), rabbit: Some(1) };
        assert!(before.restarts_since(&before.clone()).is_empty());
        let after = Epoch { source: "a".into(), target: "c".into(), rabbit: None };
        assert_eq!(before.restarts_since(&after), ["the target PostgreSQL restarted", "RabbitMQ restarted"]);
    }
}
