//! Who can read the RabbitMQ passwords, who can write into a task's stream, and whose functions
//! the worker, the SQL API and the applier run.
//!
//! The stack runs the two TREMpy sides as two RabbitMQ users with only the permissions each needs
//! (`scripts/dev.sh`, docs/architecture.md "RabbitMQ users and permissions"); the source cluster
//! reads its password from `trempy.amqp_password_file`, the applier from
//! `TREMPY_AMQP_PASSWORD_FILE`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use trempy_e2e::*;

/// The source cluster's RabbitMQ password, as its password file holds it.
fn source_amqp_password() -> String {
    std::fs::read_to_string(env("TREMPY_SOURCE_AMQP_PASSWORD_FILE")).unwrap().trim_end().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg_monitor_member_can_read_no_rabbitmq_password() {
    let (task, table, mut source) = table_task("monitor", "id int PRIMARY KEY").await;
    let _applier = Applier::start(&task);
    source.batch_execute(&format!("INSERT INTO {table} VALUES (1)")).await.unwrap();
    wait_converged(&[(&table, "id")], Duration::from_secs(60)).await; // the worker is connected
    let password = source_amqp_password();
    assert!(password.len() >= 16);

    let role = unique("monitor");
    source.batch_execute(&format!("CREATE ROLE {role}; GRANT pg_monitor TO {role}")).await.unwrap();
    let (url, settings, file) = {
        let tx = source.build_transaction().start().await.unwrap();
        tx.batch_execute(&format!("SET LOCAL ROLE {role}")).await.unwrap();
        let url: String = tx.query_one("SELECT current_setting('trempy.amqp_url')", &[]).await.unwrap().get(0);
        let settings: String = tx
            .query_one(
                "SELECT string_agg(name || '=' || setting, ' ') FROM pg_catalog.pg_settings WHERE name LIKE 'trempy.%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let file_path: String =
            tx.query_one("SELECT current_setting('trempy.amqp_password_file')", &[]).await.unwrap().get(0);
        let read = tx.query_one("SELECT pg_catalog.pg_read_file($1)", &[&file_path]).await;
        tx.rollback().await.unwrap();
        (url, settings, read.map(|r| r.get::<_, String>(0)))
    };
    source.batch_execute(&format!("DROP ROLE {role}")).await.unwrap();
    println!("seen by pg_monitor: trempy.amqp_url = {url}");
    assert!(url.starts_with("amqp://trempy_source@"), "{url}");
    assert!(!url.contains(&password) && !settings.contains(&password), "a pg_monitor member reads the password");
    assert!(file.is_err(), "a pg_monitor member reads the password file");
    // Nor is it in the server log (PostgreSQL logs a changed setting's value at each reload).
    let log = std::fs::read_to_string(format!("{}/source.log", env("TREMPY_STACK_DIR"))).unwrap_or_default();
    assert!(!log.contains(&password), "the source server log holds the RabbitMQ password");
    drop_task(&source, &task).await;
}

/// Puts the source's password file back to mode 0600 however the test ends.
struct RestoreMode(String);

impl Drop for RestoreMode {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o600));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_file_others_can_read_is_refused_with_the_reason_and_the_task_resumes_once_fixed() {
    let file = env("TREMPY_SOURCE_AMQP_PASSWORD_FILE");
    let task = unique("pwmode");
    let table = format!("public.{task}");
    create_table_both(&format!("CREATE TABLE {table} (id int PRIMARY KEY)")).await;
    let source = source().await;
    let restore = RestoreMode(file.clone());
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    create_task_with(&source, &task, &cdc_settings(&task, &[("public", &task)])).await;
    source.batch_execute(&format!("INSERT INTO {table} VALUES (1)")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let last_error = loop {
        if let Some(text) = status_text(&source, &task, "last_error").await.filter(|t| t.contains("password file")) {
            break text;
        }
        assert!(Instant::now() < deadline, "the worker recorded no error about the password file");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("last_error: {last_error}");
    assert!(last_error.contains("group or world access") && last_error.contains(&file), "{last_error}");
    assert!(!last_error.contains(&source_amqp_password()));
    let published: i64 = source
        .query_one("SELECT coalesce(messages_published, 0) FROM trempy.task_progress WHERE task_name = $1", &[&task])
        .await
        .unwrap()
        .get(0);
    assert_eq!(published, 0, "the worker published with a password file others can read");

    drop(restore); // mode 0600 again: the next connection attempt succeeds
    let _applier = Applier::start(&task);
    source.batch_execute(&format!("INSERT INTO {table} VALUES (2)")).await.unwrap();
    wait_converged(&[(&table, "id")], Duration::from_secs(120)).await;
    drop_task(&source, &task).await;
}

/// Runs one attempt on a fresh channel of `connection` and returns the broker's refusal, or
/// `None` if the broker accepted it.
async fn refusal<F, Fut>(connection: &lapin::Connection, attempt: F) -> Option<String>
where
    F: FnOnce(lapin::Channel) -> Fut,
    Fut: std::future::Future<Output = Result<(), lapin::Error>>,
{
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    attempt(channel).await.err().map(|e| e.to_string())
}

async fn publish_confirmed(channel: &lapin::Channel, exchange: &str, routing_key: &str) -> Result<(), lapin::Error> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            b"{\"version\": 2, \"task\": \"forged\"}",
            BasicProperties::default(),
        )
        .await?
        .await?;
    let _ = confirm;
    // A refused publish closes the channel asynchronously: a round trip makes it visible.
    channel.basic_qos(1, lapin::options::BasicQosOptions::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_appliers_rabbitmq_user_cannot_put_a_message_into_a_change_queue() {
    let (task, _table, source) = table_task("inject", "id int PRIMARY KEY").await;
    // The task's worker declares the topology before it publishes its settings message.
    let (admin, admin_channel) = amqp_channel().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let probe = admin.create_channel().await.unwrap();
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        if probe
            .queue_declare(format!("trempy_queue_{task}").as_str().into(), passive, FieldTable::default())
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the worker never declared the task's queue");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let queue = format!("trempy_queue_{task}");
    let count = || async {
        admin_channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while count().await == 0 {
        assert!(Instant::now() < deadline, "the worker published nothing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = count().await;

    let url = amqp_url_of(&env("TREMPY_AMQP_URL"), &env("TREMPY_AMQP_PASSWORD_FILE"));
    assert!(
        url.contains("trempy_applier@") || url.contains("trempy_applier:"),
        "the stack's applier does not run as trempy_applier"
    );
    let applier = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await.unwrap();
    let queue_name = format!("trempy_queue_{task}");
    let exchange = format!("trempy_exchange_{task}");
    let routing_key = format!("trempy_routing_key_{task}");
    let dlx = format!("trempy_dlx_exchange_{task}");
    let own = format!("trempy_feedback_exchange_x{task}");
    let (q1, q2, q3) = (queue_name.clone(), queue_name.clone(), queue_name.clone());
    let attempts = [
        (
            "publish to the task's exchange",
            refusal(&applier, |c| async move { publish_confirmed(&c, &exchange, &routing_key).await }).await,
        ),
        (
            "publish through the default exchange",
            refusal(&applier, |c| async move { publish_confirmed(&c, "", &q1).await }).await,
        ),
        (
            "bind the change queue to the dead-letter exchange",
            refusal(&applier, |c| async move {
                c.queue_bind(
                    q2.as_str().into(),
                    dlx.as_str().into(),
                    "forged".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
            })
            .await,
        ),
        (
            "bind the change queue to an exchange of its own",
            refusal(&applier, |c| {
                let own = own.clone();
                async move {
                    c.exchange_declare(
                        own.as_str().into(),
                        ExchangeKind::Fanout,
                        ExchangeDeclareOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                    c.queue_bind(
                        q3.as_str().into(),
                        own.as_str().into(),
                        "".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                }
            })
            .await,
        ),
    ];
    for (what, refused) in &attempts {
        println!("{what}: {refused:?}");
        let refused = refused.as_deref().unwrap_or_else(|| panic!("the applier's user may {what}"));
        assert!(refused.contains("ACCESS_REFUSED") || refused.contains("access to"), "{what}: {refused}");
    }
    assert_eq!(count().await, before, "a message reached the change queue");
    let _ = applier.close(200, "bye".into()).await;
    let _ = admin_channel.exchange_delete(own.as_str().into(), lapin::options::ExchangeDeleteOptions::default()).await;
    let _ = admin.close(200, "bye".into()).await;
    drop_task(&source, &task).await;
}

/// Functions that a role allowed to create objects in `public` plants, each with argument types
/// that match TREMpy's calls more exactly than pg_catalog's own (text for name, numeric for
/// float8): resolved through a search_path that includes `public`, they would run instead of the
/// real ones, as the superuser worker or the applier.
const PLANTED_SOURCE: &[&str] = &[
    "pg_replication_slot_advance(text, pg_lsn)",
    "pg_drop_replication_slot(text)",
    "pg_create_logical_replication_slot(text, text)",
    "pg_sleep(numeric)",
    "pg_advisory_xact_lock(bigint, bigint)",
];
const PLANTED_TARGET: &[&str] = &["unnest(text[])", "pg_sleep(numeric)"];

async fn plant(client: &tokio_postgres::Client, role: &str, functions: &[&str]) {
    client
        .batch_execute(&format!(
            "CREATE ROLE {role}; GRANT CREATE ON SCHEMA public TO {role};
             CREATE TABLE public.{role}_canary (called text, by_role text); ALTER TABLE public.{role}_canary OWNER TO {role};
             GRANT INSERT ON public.{role}_canary TO PUBLIC;
             SET ROLE {role};"
        ))
        .await
        .unwrap();
    for function in functions {
        let name = &function[..function.find('(').unwrap()];
        let returns = if name == "unnest" { "SETOF text" } else { "void" };
        let body = if name == "unnest" {
            format!("INSERT INTO public.{role}_canary VALUES ('{name}', current_user); SELECT 'planted'::text")
        } else {
            format!("INSERT INTO public.{role}_canary VALUES ('{name}', current_user)")
        };
        client
            .batch_execute(&format!("CREATE FUNCTION public.{function} RETURNS {returns} LANGUAGE sql AS $f${body}$f$"))
            .await
            .unwrap();
    }
    client.batch_execute("RESET ROLE").await.unwrap();
}

async fn unplant(client: &tokio_postgres::Client, role: &str, functions: &[&str]) -> Vec<String> {
    let called = text_rows(client, &format!("SELECT called || ' as ' || by_role FROM public.{role}_canary")).await;
    for function in functions {
        client.batch_execute(&format!("DROP FUNCTION public.{function}")).await.unwrap();
    }
    client
        .batch_execute(&format!(
            "DROP TABLE public.{role}_canary; REVOKE CREATE ON SCHEMA public FROM {role}; DROP ROLE {role}"
        ))
        .await
        .unwrap();
    called
}

/// Resets the role settings the hijack test makes, however it ends.
struct ResetSearchPaths;

impl Drop for ResetSearchPaths {
    fn drop(&mut self) {
        for (cluster, sql) in [
            (stack::Cluster::Source, "ALTER ROLE postgres IN DATABASE source RESET search_path"),
            (stack::Cluster::Target, "ALTER ROLE trempy IN DATABASE target RESET search_path"),
        ] {
            let _ = stack::psql_as_postgres(cluster, sql);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_planted_in_public_are_never_run_by_the_worker_the_sql_api_or_the_applier() {
    let role = unique("intruder");
    let source = source().await;
    let target = target().await;
    source.execute("CREATE EXTENSION IF NOT EXISTS trempy", &[]).await.unwrap();
    plant(&source, &role, PLANTED_SOURCE).await;
    plant(&target, &role, PLANTED_TARGET).await;
    // Every session searches public first, as a careless default would: this one (the SQL API),
    // the background workers' (they connect as the bootstrap superuser, postgres) and the
    // applier's.
    let reset = ResetSearchPaths;
    source.batch_execute("SET search_path = public, pg_catalog").await.unwrap();
    source.batch_execute("ALTER ROLE postgres IN DATABASE source SET search_path = public, pg_catalog").await.unwrap();
    target.batch_execute("ALTER ROLE trempy IN DATABASE target SET search_path = public, pg_catalog").await.unwrap();

    let task = unique("hijack");
    let table = format!("public.{task}");
    create_table_both(&format!("CREATE TABLE {table} (id int PRIMARY KEY, v text)")).await;
    let settings = load_settings(&task, "full_load_and_cdc", &[("public", &task)]);
    source
        .batch_execute(&format!("INSERT INTO {table} SELECT g, 'loaded' FROM generate_series(1, 100) g"))
        .await
        .unwrap();
    create_task_with(&source, &task, &settings).await;
    let applier = Applier::start(&task);
    // CDC: inserts, updates and deletes go through the bulk statements (unnest on the target)
    // and every batch advances the slot.
    for i in 0..5 {
        source
            .batch_execute(&format!(
                "INSERT INTO {table} SELECT g, 'cdc' FROM generate_series({0}, {0} + 50) g; UPDATE {table} SET v = 'updated' WHERE id % 7 = {i}; DELETE FROM {table} WHERE id % 11 = {i}",
                1000 + i * 100
            ))
            .await
            .unwrap();
    }
    wait_converged(&[(&table, "id")], Duration::from_secs(120)).await;
    // The SQL API: an edit, a stop and start, a reload, a drop.
    update_task(&source, &task, &settings).await;
    source.execute("SELECT trempy.stop_task($1)", &[&task]).await.unwrap();
    source.execute("SELECT trempy.start_task($1)", &[&task]).await.unwrap();
    source.batch_execute(&format!("INSERT INTO {table} VALUES (5000, 'after restart')")).await.unwrap();
    wait_converged(&[(&table, "id")], Duration::from_secs(120)).await;
    update_task(&source, &task, &reload_settings(settings.clone())).await;
    wait_converged(&[(&table, "id")], Duration::from_secs(120)).await;
    drop(applier);
    drop_task(&source, &task).await;

    source.batch_execute("RESET search_path").await.unwrap();
    drop(reset);
    let called_source = unplant(&source, &role, PLANTED_SOURCE).await;
    let called_target = unplant(&target, &role, PLANTED_TARGET).await;
    assert!(called_source.is_empty(), "planted functions ran on the source: {called_source:?}");
    assert!(called_target.is_empty(), "planted functions ran on the target: {called_target:?}");
}
