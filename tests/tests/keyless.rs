//! Real-world tables without a primary key: insert-only tables, `REPLICA IDENTITY FULL` tables
//! whose updates and deletes match the whole old row (one target row per source row, even among
//! identical rows), a replica identity index used as the key, and pgbench's own schema and
//! workload replicated exactly.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::Duration;

use tokio::process::Command;
use trempy_e2e::*;

const WAIT: Duration = Duration::from_secs(120);

fn mode_settings(task: &str, table: &str, mode: &str) -> serde_json::Value {
    let mut settings = load_settings(task, "full_load_and_cdc", &[("public", table)]);
    settings["task"]["cdc_settings"]["mode"] = serde_json::json!(mode);
    settings
}

/// Under REPLICA IDENTITY FULL, identical rows stay as many on the target as at the source:
/// an update or a delete of one of them changes exactly one target row, in `default` and in
/// `upsert` mode, for values of every kind (NULL, json without an equality operator, numeric
/// scales that `=` would confuse, TOASTed text stored out of line and left unchanged by an update,
/// which the whole old row then supplies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_rows_under_replica_identity_full_change_one_target_row_at_a_time() {
    for mode in ["default", "upsert"] {
        let task = unique("fullid");
        let table = format!("public.{task}");
        let source = source().await;
        source
            .batch_execute(&format!(
                "CREATE TABLE {table} (n int, amount numeric, doc json, big text, at timestamptz);
                 ALTER TABLE {table} REPLICA IDENTITY FULL;
                 ALTER TABLE {table} ALTER COLUMN big SET STORAGE EXTERNAL;
                 INSERT INTO {table} SELECT 1, 1.0, '{{\"a\": [1, 2]}}', NULL, '2024-01-01 00:00:00+00' FROM generate_series(1, 3);
                 INSERT INTO {table} VALUES (1, 1.00, '{{\"a\": [1, 2]}}', NULL, '2024-01-01 00:00:00+00'), (2, NULL, NULL, NULL, NULL), (2, NULL, NULL, NULL, NULL);
                 INSERT INTO {table} SELECT 3, g, '[]', repeat(md5(g::text), 400), now() FROM generate_series(1, 20) g;"
            ))
            .await
            .unwrap();
        let notices = create_task_notices(&task, &mode_settings(&task, &task, mode)).await;
        assert!(
            !notices.iter().any(|n| n.contains("insert-only")),
            "a FULL identity table is not insert-only: {notices:?}"
        );
        let _applier = Applier::start(&task);
        wait_converged(&[(&table, "t::text")], WAIT).await;

        // one of three identical rows, by ctid at the source: exactly one changes on the target
        source
            .batch_execute(&format!(
                "UPDATE {table} SET doc = '{{\"b\": true}}' WHERE ctid = (SELECT ctid FROM {table} WHERE n = 1 AND amount::text = '1.0' LIMIT 1);
                 DELETE FROM {table} WHERE ctid = (SELECT ctid FROM {table} WHERE n = 1 AND amount::text = '1.0' LIMIT 1);
                 DELETE FROM {table} WHERE ctid = (SELECT ctid FROM {table} WHERE n = 2 LIMIT 1);
                 UPDATE {table} SET n = 4 WHERE ctid = (SELECT ctid FROM {table} WHERE n = 2 LIMIT 1);
                 UPDATE {table} SET at = '2025-06-01 12:00:00+02' WHERE n = 3 AND amount < 10;
                 DELETE FROM {table} WHERE n = 3 AND amount > 15;"
            ))
            .await
            .unwrap();
        let fp = wait_converged(&[(&table, "t::text")], WAIT).await;
        // 4 + 2 + 20 rows, less one n=1 row, one n=2 row and five n=3 rows
        assert_eq!(fp[0].0, 19, "{mode}: every change touched exactly one row");
        let target = target().await;
        let kept: i64 = target
            .query_one(&format!("SELECT count(*) FROM {table} WHERE n = 1 AND amount::text = '1.0'"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(kept, 2, "{mode}: the 1.00 row is not taken for a 1.0 row");
        drop_task(&source, &task).await;
    }
}

/// A table with no key and the default identity is replicated insert-only: create_task says so
/// and what to do, its inserts arrive (also with upsert mode, which has no key to conflict on),
/// and the source refuses its updates instead of their being lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_only_table_without_a_key_replicates_its_inserts_and_its_updates_are_refused_at_the_source() {
    let task = unique("insonly");
    let table = format!("public.{task}");
    let source = source().await;
    source
        .batch_execute(&format!("CREATE TABLE {table} (at timestamptz, event text, payload jsonb); INSERT INTO {table} SELECT now(), 'loaded', '{{}}' FROM generate_series(1, 500);"))
        .await
        .unwrap();
    let notices = create_task_notices(&task, &mode_settings(&task, &task, "upsert")).await;
    assert!(
        notices.iter().any(|n| n.contains("insert-only") && n.contains("REPLICA IDENTITY FULL") && n.contains(&table)),
        "create_task warns that the table is insert-only, naming the fix: {notices:?}"
    );
    let _applier = Applier::start(&task);
    for i in 0..20 {
        source.batch_execute(&format!("INSERT INTO {table} VALUES (now(), 'event {i}', '{{\"i\": {i}}}'), (now(), 'same', NULL), (now(), 'same', NULL)")).await.unwrap();
    }
    let fp = wait_converged(&[(&table, "t::text")], WAIT).await;
    assert_eq!(fp[0].0, 560);
    let err = source.batch_execute(&format!("UPDATE {table} SET event = 'x'")).await.unwrap_err();
    let message = err.as_db_error().map(|e| e.message().to_owned()).unwrap_or_default();
    assert!(message.contains("replica identity"), "the source refuses the update loudly: {message}");
    drop_task(&source, &task).await;
}

/// A table whose replica identity is a unique index is keyed on it, also when it has a primary
/// key on other columns: the old rows of updates and deletes carry the index's columns, so the
/// target is keyed on them too (the full load keyed the target on the primary key, and the
/// stream's upserts on the index's columns then failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_identity_index_is_the_key_also_beside_a_primary_key() {
    for with_pk in [false, true] {
        let task = unique("riidx");
        let table = format!("public.{task}");
        let pk = if with_pk { "id int PRIMARY KEY," } else { "id int," };
        let source = source().await;
        source
            .batch_execute(&format!(
                "CREATE TABLE {table} ({pk} code text NOT NULL, v text);
                 CREATE UNIQUE INDEX {task}_code ON {table} (code);
                 ALTER TABLE {table} REPLICA IDENTITY USING INDEX {task}_code;
                 INSERT INTO {table} SELECT g, 'c' || g, 'loaded' FROM generate_series(1, 100) g;"
            ))
            .await
            .unwrap();
        // upsert mode conflicts on the target's key, which must be the index's columns
        let notices = create_task_notices(&task, &mode_settings(&task, &task, "upsert")).await;
        assert!(!notices.iter().any(|n| n.contains("insert-only")), "{notices:?}");
        let _applier = Applier::start(&task);
        wait_converged(&[(&table, "code")], WAIT).await;
        source
            .batch_execute(&format!(
                "UPDATE {table} SET v = 'updated' WHERE id <= 10;
                 UPDATE {table} SET code = 'moved' || id WHERE id BETWEEN 11 AND 20;
                 DELETE FROM {table} WHERE id BETWEEN 21 AND 30;
                 UPDATE {table} SET id = id + 1000 WHERE id BETWEEN 31 AND 40;"
            ))
            .await
            .unwrap();
        let fp = wait_converged(&[(&table, "code")], WAIT).await;
        assert_eq!(fp[0].0, 90, "primary key beside: {with_pk}");
        drop_task(&source, &task).await;
    }
}

/// pgbench's schema and TPC-B workload (a client no one here wrote), with `pgbench_history`
/// keyless: under REPLICA IDENTITY FULL (then also updated and deleted from), and again with no
/// identity at all (insert-only). The four tables are loaded and streamed, and the target
/// matches the source exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_schema_and_workload_replicate_exactly_with_a_keyless_history_table() {
    let seconds = std::env::var("TREMPY_PGBENCH_SECONDS").unwrap_or_else(|_| "60".to_owned());
    for full in [true, false] {
        let task = unique("pgbench");
        let schema = task.clone();
        let source = source().await;
        source.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
        let pgbench = |args: &[&str]| {
            let mut command = Command::new("/usr/lib/postgresql/15/bin/pgbench");
            command.args(args).arg(env("TREMPY_SOURCE_DSN")).env("PGOPTIONS", format!("-c search_path={schema}"));
            command
        };
        let init = pgbench(&["-i", "-q", "-s", "1"]).output().await.unwrap();
        assert!(init.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&init.stderr));
        if full {
            source.batch_execute(&format!("ALTER TABLE {schema}.pgbench_history REPLICA IDENTITY FULL")).await.unwrap();
        }
        let tables = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"];
        let mut settings = load_settings(
            &task,
            "full_load_and_cdc",
            &tables.iter().map(|t| (schema.as_str(), *t)).collect::<Vec<_>>(),
        );
        settings["task"]["cdc_settings"]["mode"] = serde_json::json!("default");
        let notices = create_task_notices(&task, &settings).await;
        assert_eq!(
            notices.iter().any(|n| n.contains("insert-only") && n.contains("pgbench_history")),
            !full,
            "{notices:?}"
        );
        let _applier = Applier::start(&task);
        let run = pgbench(&["-c", "4", "-j", "2", "-T", &seconds, "-n"]).output().await.unwrap();
        assert!(run.status.success(), "pgbench run: {}", String::from_utf8_lossy(&run.stderr));
        let finished = std::time::Instant::now();
        let report = String::from_utf8_lossy(&run.stdout).into_owned();
        println!(
            "{}",
            report.lines().filter(|l| l.contains("transactions") || l.contains("tps")).collect::<Vec<_>>().join("\n")
        );
        if full {
            source
                .batch_execute(&format!(
                    "UPDATE {schema}.pgbench_history SET delta = delta + 1 WHERE tid = 1;
                     DELETE FROM {schema}.pgbench_history WHERE tid = 2;
                     INSERT INTO {schema}.pgbench_history SELECT * FROM {schema}.pgbench_history WHERE tid = 3;
                     DELETE FROM {schema}.pgbench_history WHERE ctid IN (SELECT ctid FROM {schema}.pgbench_history WHERE tid = 3 LIMIT 5);"
                ))
                .await
                .unwrap();
        }
        let fp = wait_converged(
            &[
                (&format!("{schema}.pgbench_accounts"), "aid"),
                (&format!("{schema}.pgbench_branches"), "bid"),
                (&format!("{schema}.pgbench_tellers"), "tid"),
                (&format!("{schema}.pgbench_history"), "t::text"),
            ],
            Duration::from_secs(300),
        )
        .await;
        assert_eq!(fp[0].0, 100_000);
        assert!(fp[3].0 > 100, "pgbench wrote history: {fp:?}");
        println!(
            "identity full: {full}: history rows {}; target identical {:.1} s after pgbench ended",
            fp[3].0,
            finished.elapsed().as_secs_f64()
        );
        drop_task(&source, &task).await;
    }
}
