//! Helpers for TREMpy's end-to-end tests. They run against the real stack started by
//! `scripts/dev.sh stack-up` (source and target PostgreSQL, RabbitMQ, the installed extension
//! and the built applier), found through the variables of `.stack/env`.
//!
//! Every test uses its own task and tables (names made unique per process and call), so tests
//! share one stack; tests that restart servers (through [`stack`]) run serially
//! (`--test-threads=1`). The benchmark (`bench/`) is built on these helpers too.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio_postgres::{Client, NoTls};

pub mod stack;

/// A required environment variable, with a clear message when the stack is not up.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the stack with `scripts/dev.sh stack-up` and `. .stack/env`")
    })
}

/// A name unique to this test process and call: `<prefix>_<pid>_<n>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Connects to a DSN, retrying for a while (servers may be restarting).
pub async fn connect(dsn: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match tokio_postgres::connect(dsn, NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                return client;
            }
            Err(err) if Instant::now() < deadline => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("cannot connect: {err}"),
        }
    }
}

/// `dsn` (a URL) with an `application_name`, so that its sessions can be found in
/// `pg_stat_activity`.
pub fn with_application_name(dsn: &str, name: &str) -> String {
    let separator = if dsn.contains('?') { '&' } else { '?' };
    format!("{dsn}{separator}application_name={name}")
}

/// The source database.
pub async fn source() -> Client {
    connect(&env("TREMPY_SOURCE_DSN")).await
}

/// The DSN of another database of the source cluster.
pub fn source_dsn_of(database: &str) -> String {
    let dsn = env("TREMPY_SOURCE_DSN");
    let base = dsn.rfind('/').map_or(dsn.as_str(), |i| &dsn[..i]);
    format!("{base}/{database}")
}

/// The target database.
pub async fn target() -> Client {
    connect(&env("TREMPY_TARGET_DSN")).await
}

/// Settings for a CDC upsert task over `tables` (`schema.table` names, unquoted parts).
pub fn cdc_settings(task: &str, tables: &[(&str, &str)]) -> serde_json::Value {
    let tables: Vec<serde_json::Value> =
        tables.iter().map(|(s, t)| serde_json::json!({"schema_name": s, "table_name": t, "priority": 0})).collect();
    serde_json::json!({
        "task": {"task_name": task, "replication_type": "cdc", "cdc_settings": {"mode": "upsert"}},
        "tables": tables,
    })
}

/// Settings for a `full_load` or `full_load_and_cdc` upsert task over `tables`, creating missing
/// target tables; `priority` follows the order of `tables`.
pub fn load_settings(task: &str, replication_type: &str, tables: &[(&str, &str)]) -> serde_json::Value {
    let tables: Vec<serde_json::Value> = tables
        .iter()
        .enumerate()
        .map(|(i, (s, t))| serde_json::json!({"schema_name": s, "table_name": t, "priority": i.min(4)}))
        .collect();
    serde_json::json!({
        "task": {"task_name": task, "replication_type": replication_type, "cdc_settings": {"mode": "upsert"}, "create_table_if_not_exists": true},
        "tables": tables,
    })
}

/// Creates a task from a settings document (without waiting).
pub async fn create_task_with(source: &Client, task: &str, settings: &serde_json::Value) {
    source.execute("CREATE EXTENSION IF NOT EXISTS trempy", &[]).await.unwrap();
    source.execute("SELECT trempy.create_task($1, $2::text::jsonb)", &[&task, &settings.to_string()]).await.unwrap();
}

/// Creates a task from `settings`, returning the WARNING/NOTICE texts `create_task` raised.
pub async fn create_task_notices(task: &str, settings: &serde_json::Value) -> Vec<String> {
    let (client, mut connection) =
        tokio_postgres::connect(&env("TREMPY_SOURCE_DSN"), tokio_postgres::NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = futures_util::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notice(notice) = message {
                let _ = tx.send(notice.message().to_owned());
            }
        }
    });
    client.execute("CREATE EXTENSION IF NOT EXISTS trempy", &[]).await.unwrap();
    client.execute("SELECT trempy.create_task($1, $2::text::jsonb)", &[&task, &settings.to_string()]).await.unwrap();
    drop(client);
    let mut notices = Vec::new();
    while let Some(n) = rx.recv().await {
        notices.push(n);
    }
    notices
}

/// Waits until the task's phase (`full_load`, `cdc`, `finished`) is `wanted`.
pub async fn wait_for_phase(source: &Client, task: &str, wanted: &str, timeout: Duration) {
    wait_for_status(source, task, "phase", wanted, timeout).await;
}

/// Creates a task and waits until its worker has created the slot (`state = 'running'`):
/// only changes committed after that are captured.
pub async fn create_task(source: &Client, task: &str, tables: &[(&str, &str)]) {
    source.execute("CREATE EXTENSION IF NOT EXISTS trempy", &[]).await.unwrap();
    source
        .execute("SELECT trempy.create_task($1, $2::text::jsonb)", &[&task, &cdc_settings(task, tables).to_string()])
        .await
        .unwrap();
    wait_for_state(source, task, "running", Duration::from_secs(60)).await;
}

/// Runs a one-shot `trempy-applier` command (e.g. `dlq list --task t`) against the stack and
/// returns its exit success and standard output.
pub async fn applier_command(args: &[&str]) -> (bool, String) {
    let output = Command::new(env("TREMPY_APPLIER_BIN")).args(args).stderr(Stdio::inherit()).output().await.unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The task's state as `trempy.status()` shows it.
pub async fn state(source: &Client, task: &str) -> Option<String> {
    source
        .query_opt("SELECT state FROM trempy.status() WHERE task_name = $1", &[&task])
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

/// Waits until the task reaches `wanted`.
pub async fn wait_for_state(source: &Client, task: &str, wanted: &str, timeout: Duration) {
    wait_for_status(source, task, "state", wanted, timeout).await;
}

/// A text column of the task's `trempy.status()` row.
pub async fn status_text(source: &Client, task: &str, column: &str) -> Option<String> {
    let sql = format!("SELECT {column}::text FROM trempy.status() WHERE task_name = $1");
    source.query_opt(sql.as_str(), &[&task]).await.ok().flatten().and_then(|r| r.get(0))
}

/// Waits until the task has failed with `failure` (`trempy.status()`: state `failed`) and returns
/// its `last_error`.
pub async fn wait_for_failure(source: &Client, task: &str, failure: &str, timeout: Duration) -> String {
    wait_for_status(source, task, "failure", failure, timeout).await;
    wait_for_state(source, task, "failed", timeout).await;
    status_text(source, task, "last_error").await.unwrap_or_default()
}

/// Settings with `task.start_mode` = `reload` (and the target emptied before the new copy).
pub fn reload_settings(mut settings: serde_json::Value) -> serde_json::Value {
    settings["task"]["start_mode"] = "reload".into();
    settings["task"]["full_load_settings"] = serde_json::json!({"truncate_before_insert": true});
    settings
}

/// Runs `SELECT trempy.update_task(task, settings)`.
pub async fn update_task(source: &Client, task: &str, settings: &serde_json::Value) {
    source.execute("SELECT trempy.update_task($1, $2::text::jsonb)", &[&task, &settings.to_string()]).await.unwrap();
}

/// Waits until a text column of the task's `trempy.status()` row shows `wanted`.
async fn wait_for_status(source: &Client, task: &str, column: &str, wanted: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let sql = format!("SELECT {column}::text FROM trempy.status() WHERE task_name = $1");
    loop {
        let now: Option<String> = source.query_opt(sql.as_str(), &[&task]).await.ok().flatten().and_then(|r| r.get(0));
        if now.as_deref() == Some(wanted) {
            return;
        }
        assert!(Instant::now() < deadline, "task {task} did not reach {column} {wanted} (is {now:?})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Drops the task (slot and publication) at the end of a test.
pub async fn drop_task(source: &Client, task: &str) {
    source.execute("SELECT trempy.drop_task($1)", &[&task]).await.unwrap();
}

/// The applier, running as a child process for one task; killed when dropped.
pub struct Applier {
    task: String,
    extra: Vec<String>,
    child: Child,
}

impl Applier {
    /// Starts `trempy-applier run --task <task>` with a small prefetch window, so that tests
    /// also exercise transactions spanning more messages than the window.
    pub fn start(task: &str) -> Self {
        Self::start_with(task, &[])
    }

    /// [`Applier::start`] with extra arguments for `run` (e.g. `--settings-file`).
    pub fn start_with(task: &str, extra: &[&str]) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(format!("{}/applier-{task}.log", env("TREMPY_STACK_DIR")))
            .unwrap();
        let child = Command::new(env("TREMPY_APPLIER_BIN"))
            .args(["run", "--task", task, "--prefetch", "8"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self { task: task.to_owned(), extra: extra.iter().map(|a| (*a).to_owned()).collect(), child }
    }

    /// SIGKILLs the applier.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGKILLs and starts it again.
    pub async fn restart_after_kill(&mut self) {
        self.kill().await;
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        *self = Self::start_with(&self.task, &extra);
    }
}

/// `md5` of a table's rows in key order (of each row's text form) and the row count.
pub async fn fingerprint(client: &Client, table: &str, order_by: &str) -> (i64, String) {
    // md5 of the rows' md5s: 32 bytes a row, so tables of millions of rows stay under 1 GB
    let sql =
        format!("SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY {order_by})), '') FROM {table} t");
    let row = client.query_one(sql.as_str(), &[]).await.unwrap();
    (row.get(0), row.get(1))
}

/// Whether a table (a qualified, quoted-where-needed name) exists.
pub async fn table_exists(client: &Client, table: &str) -> bool {
    client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table]).await.unwrap().get(0)
}

/// Waits until every table has the same rows in the target as in the source (compared by
/// full contents, not counts), and returns the final source fingerprints.
pub async fn wait_converged(tables: &[(&str, &str)], timeout: Duration) -> Vec<(i64, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let (source, target) = (source().await, target().await);
        let mut all = Vec::new();
        let mut equal = true;
        for (table, order_by) in tables {
            let s = fingerprint(&source, table, order_by).await;
            // The applier may not have created the target table yet: not converged yet.
            let t = if table_exists(&target, table).await {
                fingerprint(&target, table, order_by).await
            } else {
                (-1, String::new())
            };
            equal &= s == t;
            all.push((s, t));
        }
        if equal {
            return all.into_iter().map(|(s, _)| s).collect();
        }
        assert!(Instant::now() < deadline, "target did not converge within {timeout:?}: {all:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until `table` at the target has the [`fingerprint`] `want`, and returns when the poll
/// that saw it began; after `timeout`, or once `keep_waiting` (asked between polls, e.g. whether
/// the consumer still runs) says no, the last fingerprint seen (`None` before `ready`). `ready` is
/// a cheap query answering whether the fingerprint is worth taking (e.g. the largest key has
/// arrived), so that a large table is not hashed on every poll.
pub async fn wait_for_fingerprint(
    target: &Client,
    table: &str,
    order_by: &str,
    want: &(i64, String),
    ready: &str,
    timeout: Duration,
    mut keep_waiting: impl FnMut() -> bool,
) -> Result<Instant, Option<(i64, String)>> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        let polled = Instant::now();
        let ready: Option<bool> = target.query_one(ready, &[]).await.map(|r| r.get(0)).unwrap_or(None);
        if ready == Some(true) {
            let seen = fingerprint(target, table, order_by).await;
            if &seen == want {
                return Ok(polled);
            }
            last = Some(seen);
        }
        if !keep_waiting() || Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Installs, on the target, a trigger that counts how many times each row of `table` (keyed by
/// its `id` column) has been written. A source that writes each id once must see 1 everywhere:
/// anything more means a change was applied twice.
pub async fn install_duplicate_detector(target: &Client, table: &str) {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS public.write_counts (tbl text, id bigint, writes int NOT NULL, PRIMARY KEY (tbl, id));
         CREATE OR REPLACE FUNCTION public.count_writes() RETURNS trigger LANGUAGE plpgsql AS $f$
         BEGIN
           INSERT INTO public.write_counts VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, NEW.id, 1)
             ON CONFLICT (tbl, id) DO UPDATE SET writes = write_counts.writes + 1;
           RETURN NEW;
         END $f$;
         CREATE TRIGGER count_writes BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION public.count_writes();"
    );
    target.batch_execute(&sql).await.unwrap();
}

/// Rows of `table` the target wrote more than once (see [`install_duplicate_detector`]).
pub async fn rows_written_twice(target: &Client, schema_table: &str) -> i64 {
    target
        .query_one("SELECT count(*) FROM public.write_counts WHERE tbl = $1 AND writes > 1", &[&schema_table])
        .await
        .unwrap()
        .get(0)
}

/// Waits until the applier's log for `task` contains every one of `needles`, and returns the log.
pub async fn wait_for_applier_log(task: &str, needles: &[&str], timeout: Duration) -> String {
    let path = format!("{}/applier-{task}.log", env("TREMPY_STACK_DIR"));
    let deadline = Instant::now() + timeout;
    loop {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if needles.iter().all(|n| log.contains(n)) {
            return log;
        }
        assert!(Instant::now() < deadline, "the applier log of {task} did not show {needles:?} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A fresh task replicating one fresh table `public.<task>` (created with `columns` on both
/// sides). Returns the task name, the table's qualified name and a source connection.
pub async fn table_task(prefix: &str, columns: &str) -> (String, String, Client) {
    let task = unique(prefix);
    let table = format!("public.{task}");
    create_table_both(&format!("CREATE TABLE {table} ({columns})")).await;
    let source = source().await;
    create_task(&source, &task, &[("public", &task)]).await;
    (task, table, source)
}

/// Creates the same table on source and target.
pub async fn create_table_both(ddl: &str) {
    source().await.batch_execute(ddl).await.unwrap();
    target().await.batch_execute(ddl).await.unwrap();
}

/// A background writer: runs `statement(i)` as one transaction for i = 0, 1, … until stopped,
/// reconnecting after errors (the source may be restarting). Returns how many commits it saw.
pub struct Writer {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<u64>,
}

impl Writer {
    /// Starts the writer.
    pub fn start(statement: impl Fn(u64) -> String + Send + 'static) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let handle = tokio::spawn(async move {
            let mut client = source().await;
            let mut i = 0_u64;
            let mut committed = 0_u64;
            while !*stopped.borrow() {
                match client.batch_execute(&statement(i)).await {
                    Ok(()) => committed += 1,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        client = source().await;
                    }
                }
                i += 1;
                if tokio::time::timeout(Duration::from_millis(2), stopped.changed()).await.is_ok() {
                    break;
                }
            }
            committed
        });
        Self { stop, handle }
    }

    /// Stops it and returns how many transactions committed.
    pub async fn stop(self) -> u64 {
        let _ = self.stop.send(true);
        self.handle.await.unwrap()
    }
}

/// The rows of a query returning one text column (NULL shown as `NULL`).
pub async fn text_rows(client: &Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_else(|| "NULL".into()))
        .collect()
}

/// Waits until `sql` (one text column) returns exactly `expected` on the target; a missing
/// table counts as not there yet.
pub async fn wait_for_target_rows(sql: &str, expected: &[&str], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let target = target().await;
    loop {
        let got: Option<Vec<String>> = match target.query(sql, &[]).await {
            Ok(rows) => {
                Some(rows.iter().map(|r| r.get::<_, Option<String>>(0).unwrap_or_else(|| "NULL".into())).collect())
            }
            Err(_) => None,
        };
        if got.as_ref().is_some_and(|g| g.iter().map(String::as_str).eq(expected.iter().copied())) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "target query {sql:?} did not return {expected:?} within {timeout:?}; last: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Settings for a `full_load_and_cdc` task over one table in `mode`, creating the target table,
/// with `filters` and `transformations` (lists of their `settings` objects) on that table.
pub fn rules_settings(
    task: &str,
    (schema, table): (&str, &str),
    mode: &str,
    filters: &[serde_json::Value],
    transformations: &[serde_json::Value],
) -> serde_json::Value {
    let info = serde_json::json!({"schema_name": schema, "table_name": table});
    let wrap = |list: &[serde_json::Value]| -> Vec<serde_json::Value> {
        list.iter().map(|s| serde_json::json!({"table_info": info, "settings": s})).collect()
    };
    serde_json::json!({
        "task": {"task_name": task, "replication_type": "full_load_and_cdc", "cdc_settings": {"mode": mode}, "create_table_if_not_exists": true},
        "tables": [{"schema_name": schema, "table_name": table, "priority": 0}],
        "filters": wrap(filters),
        "transformations": wrap(transformations),
    })
}

/// A task over a table of rows plus an insert-only ledger (one row per source transaction) whose
/// target copy counts every write, to detect double application; its applier runs.
/// Returns (task, table, ledger, source connection, applier).
pub async fn mixed_workload_task(prefix: &str) -> (String, String, String, Client, Applier) {
    let task = unique(prefix);
    let t = format!("public.{task}");
    let ledger = format!("public.{task}_ledger");
    create_table_both(&format!("CREATE TABLE {t} (id bigint PRIMARY KEY, v bigint, note text); CREATE TABLE {ledger} (id bigint PRIMARY KEY, at timestamptz)")).await;
    install_duplicate_detector(&target().await, &ledger).await;
    let source = source().await;
    create_task(&source, &task, &[("public", &task), ("public", &format!("{task}_ledger"))]).await;
    let applier = Applier::start(&task);
    (task, t, ledger, source, applier)
}

pub fn mixed_transaction(t: &str, ledger: &str) -> impl Fn(u64) -> String + Send + 'static {
    let (t, ledger) = (t.to_owned(), ledger.to_owned());
    move |i| {
        // every 25th transaction is larger than one message (about 2.5 MB): staged in chunks; it
        // inserts or updates one of 40 ranges of 20,000 rows, so the table stays bounded
        let big = if i % 25 == 0 {
            format!(
                "INSERT INTO {t} SELECT g, g, repeat('bulk', 25) FROM generate_series({}, {}) g ON CONFLICT (id) DO UPDATE SET v = {t}.v + 1;",
                1_000_000 + (i % 40) * 20_000,
                1_000_000 + (i % 40) * 20_000 + 19_999
            )
        } else {
            String::new()
        };
        format!(
            "BEGIN; INSERT INTO {t} VALUES ({i}, {i}, 'row {i}') ON CONFLICT (id) DO NOTHING; UPDATE {t} SET v = v + 1, note = 'upd' WHERE id = {}; DELETE FROM {t} WHERE id = {}; {big} INSERT INTO {ledger} VALUES ({i}, now()); COMMIT;",
            i / 2,
            i.saturating_sub(40)
        )
    }
}

/// A RabbitMQ connection as the stack's administrator (user `trempy`, every permission; neither
/// TREMpy side has these rights) and a channel with publisher confirms.
pub async fn amqp_channel() -> (lapin::Connection, lapin::Channel) {
    let connection = lapin::Connection::connect(&env("TREMPY_AMQP_ADMIN_URL"), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(lapin::options::ConfirmSelectOptions::default()).await.unwrap();
    (connection, channel)
}

/// Deletes a queue if it exists, as the stack's administrator (a connection from
/// [`amqp_channel`]).
pub async fn delete_queue(admin: &lapin::Connection, queue: &str) {
    use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
    // a passive declare of a missing queue closes its channel: probe on a channel of its own
    let channel = admin.create_channel().await.unwrap();
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    if channel.queue_declare(queue.into(), passive, lapin::types::FieldTable::default()).await.is_err() {
        return;
    }
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .unwrap_or_else(|e| panic!("could not delete queue {queue}: {e}"));
    let _ = channel.close(200, "done".into()).await;
}

/// The URL a side of TREMpy connects with: `TREMPY_AMQP_URL`-style URL of `user` with the
/// password read from `password_file`, as both sides build it.
pub fn amqp_url_of(url: &str, password_file: &str) -> String {
    trempy_protocol::credentials::resolve(url, Some(std::path::Path::new(password_file))).unwrap()
}

/// Publishes a message body to the task's queue as the decoding worker would (persistent,
/// mandatory, confirmed) and asserts it was routed. Declares the task's topology first, as the
/// decoding worker does (the applier declares its queues but binds nothing).
pub async fn publish_to_task(channel: &lapin::Channel, task: &str, body: &[u8]) {
    let names = trempy_protocol::names::TaskNames::new(task).unwrap();
    trempy_protocol::topology::declare(channel, &names).await.unwrap();
    let confirm = channel
        .basic_publish(
            format!("trempy_exchange_{task}").as_str().into(),
            format!("trempy_routing_key_{task}").as_str().into(),
            lapin::options::BasicPublishOptions { mandatory: true, ..lapin::options::BasicPublishOptions::default() },
            body,
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack() && confirm.take_message().is_none(), "not routed: is the applier's topology declared?");
}
