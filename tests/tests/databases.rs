//! One `shared_preload_libraries` entry serves every database `trempy.databases` lists: each has
//! its own extension, tasks and workers, and two databases replicate at the same time. A
//! database that is not listed is refused by create_task with the setting to change.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use trempy_e2e::*;

const WAIT: Duration = Duration::from_secs(120);

/// Waits until `table` has the same rows in `source` as in the target.
async fn wait_same(source: &Client, table: &str) -> i64 {
    let target = target().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let s = fingerprint(source, table, "id").await;
        let t = if table_exists(&target, table).await {
            fingerprint(&target, table, "id").await
        } else {
            (-1, String::new())
        };
        if s == t {
            return s.0;
        }
        assert!(Instant::now() < deadline, "{table} did not converge within {WAIT:?}: source {s:?}, target {t:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A session in `database` once new sessions see it `listed` in trempy.databases (the
/// postmaster applies a reload a moment after pg_reload_conf() returns).
async fn connect_listed(database: &str, listed: bool) -> Client {
    let deadline = Instant::now() + WAIT;
    loop {
        let client = connect(&source_dsn_of(database)).await;
        let setting: String = client.query_one("SHOW trempy.databases", &[]).await.unwrap().get(0);
        if setting.split(',').any(|d| d.trim() == database) == listed {
            return client;
        }
        assert!(
            Instant::now() < deadline,
            "trempy.databases never became {setting:?} with {database} listed: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn set_databases(source: &Client, value: Option<&str>) {
    match value {
        Some(value) => source.batch_execute(&format!("ALTER SYSTEM SET trempy.databases = '{value}'")).await.unwrap(),
        None => source.batch_execute("ALTER SYSTEM RESET trempy.databases").await.unwrap(),
    }
    source.batch_execute("SELECT pg_reload_conf()").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_databases_of_one_cluster_replicate_at_the_same_time() {
    let database = unique("second");
    let source = source().await;
    source.batch_execute(&format!("CREATE DATABASE {database}")).await.unwrap();
    let second = connect(&source_dsn_of(&database)).await;
    let (task_a, task_b) = (unique("dba"), unique("dbb"));
    let (table_a, table_b) = (format!("public.{task_a}"), format!("public.{task_b}"));
    source.batch_execute(&format!("CREATE TABLE {table_a} (id bigint PRIMARY KEY, v text); INSERT INTO {table_a} SELECT g, 'loaded' FROM generate_series(1, 1000) g;")).await.unwrap();
    second
        .batch_execute(&format!("CREATE EXTENSION trempy; CREATE TABLE {table_b} (id bigint PRIMARY KEY, v text); INSERT INTO {table_b} SELECT g, 'loaded' FROM generate_series(1, 1000) g;"))
        .await
        .unwrap();

    // not listed: refused, naming the setting and the statement that adds it
    let settings_b = load_settings(&task_b, "full_load_and_cdc", &[("public", &task_b)]);
    let err = second
        .execute("SELECT trempy.create_task($1, $2::text::jsonb)", &[&task_b, &settings_b.to_string()])
        .await
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert!(db.message().contains("not in trempy.databases"), "{}", db.message());
    assert!(
        db.detail().is_some_and(|h| h.contains("ALTER SYSTEM SET trempy.databases") && h.contains(&database)),
        "{:?}",
        db.detail()
    );

    set_databases(&source, Some(&format!("source, {database}"))).await;
    drop(second);
    let second = connect_listed(&database, true).await;
    create_task_with(&source, &task_a, &load_settings(&task_a, "full_load_and_cdc", &[("public", &task_a)])).await;
    second
        .execute("SELECT trempy.create_task($1, $2::text::jsonb)", &[&task_b, &settings_b.to_string()])
        .await
        .unwrap();
    let (_applier_a, _applier_b) = (Applier::start(&task_a), Applier::start(&task_b));

    // both databases write at the same time
    let writes = |client: Client, table: String| {
        tokio::spawn(async move {
            for i in 0..200_i64 {
                client
                    .batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES ({}, 'streamed'); UPDATE {table} SET v = 'updated' WHERE id = {}; DELETE FROM {table} WHERE id = {}; COMMIT;", 1001 + i, 1 + i, 501 + i))
                    .await
                    .unwrap();
            }
        })
    };
    let a = writes(source, table_a.clone());
    let b = writes(second, table_b.clone());
    a.await.unwrap();
    b.await.unwrap();
    let (source, second) = (crate::source().await, connect(&source_dsn_of(&database)).await);
    assert_eq!(wait_same(&source, &table_a).await, 1000);
    assert_eq!(wait_same(&second, &table_b).await, 1000);

    // each database's workers, and only its own tasks, in its own trempy.status()
    let in_second: Vec<String> =
        second.query("SELECT task_name FROM trempy.status()", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(in_second, std::slice::from_ref(&task_b));
    let worker: Option<i32> = second.query_one("SELECT worker_pid FROM trempy.status()", &[]).await.unwrap().get(0);
    assert!(worker.is_some(), "the second database's task has its worker");
    let launchers: i64 = source
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'trempy launcher' AND datname IN ('source', $1)", &[&database])
        .await
        .unwrap()
        .get(0);
    assert_eq!(launchers, 2, "one launcher per listed database");

    // taken out of the list, the database's launcher and its task's worker stop
    drop_task(&source, &task_a).await;
    drop(second);
    set_databases(&source, None).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let left: i64 = source
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type LIKE 'trempy%'",
                &[&database],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second database's launcher and task worker did not stop when it left trempy.databases"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let second = connect_listed(&database, false).await;
    second.execute("SELECT trempy.drop_task($1)", &[&task_b]).await.unwrap();
    drop(second);
    // (our own sessions may take a moment to close)
    source.batch_execute(&format!("DROP DATABASE {database} WITH (FORCE)")).await.unwrap();
}
