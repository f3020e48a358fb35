//! End-to-end CDC tests against the real stack (see `trempy_e2e`). Run serially:
//! `. .stack/env && cargo test -p trempy-e2e -- --test-threads=1`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::Duration;

use trempy_e2e::stack::{Cluster, Shutdown};
use trempy_e2e::*;

const CONVERGE: Duration = Duration::from_secs(120);

async fn transactions_applied(task: &str) -> i64 {
    target()
        .await
        .query_one("SELECT transactions_applied FROM trempy.applier_progress WHERE task_name = $1", &[&task])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_updates_deletes_on_two_tables_with_odd_identifiers_and_text() {
    let task = unique("dml");
    let schema = format!("Odd Schema ✓ {task}");
    let table_b = "Tâble \"B\"";
    let q_schema = format!("\"{}\"", schema.replace('"', "\"\""));
    let q_b = format!("{q_schema}.\"{}\"", table_b.replace('"', "\"\""));
    let a = format!("public.{task}_a");
    create_table_both(&format!(
        "CREATE TABLE {a} (id int PRIMARY KEY, note text, amount numeric(12,2), tags text[]);
         CREATE SCHEMA {q_schema};
         CREATE TABLE {q_b} (\"Id\" int, \"Kind Of\" text, \"Na\"\"me\" text, PRIMARY KEY (\"Id\", \"Kind Of\"));"
    ))
    .await;
    let source = source().await;
    create_task(&source, &task, &[("public", &format!("{task}_a")), (&schema, table_b)]).await;
    let _applier = Applier::start(&task);

    let tricky = [
        "it's \"quoted\"",
        "line\nbreak\r\n and\ttab",
        "back\\slash \\x00",
        "unicode ✓ 🚀 ñ 中文",
        "",
        "null",
        "NULL",
        " leading and trailing ",
    ];
    for (i, text) in tricky.iter().enumerate() {
        source
            .execute(
                &format!("INSERT INTO {a} VALUES ($1, $2, $1::int * 1.5, ARRAY[$2::text, 'x,y', NULL])"),
                &[&(i as i32), text],
            )
            .await
            .unwrap();
        source.execute(&format!("INSERT INTO {q_b} VALUES ($1, 'k', $2)"), &[&(i as i32), text]).await.unwrap();
    }
    source.execute(&format!("INSERT INTO {a} (id) VALUES (100)"), &[]).await.unwrap();
    source.batch_execute(&format!("UPDATE {a} SET note = 'updated', amount = NULL WHERE id = 1")).await.unwrap();
    source.batch_execute(&format!("UPDATE {a} SET id = 200 WHERE id = 2")).await.unwrap();
    source.batch_execute(&format!("UPDATE {q_b} SET \"Kind Of\" = 'moved' WHERE \"Id\" = 3")).await.unwrap();
    source.batch_execute(&format!("DELETE FROM {a} WHERE id = 4; DELETE FROM {q_b} WHERE \"Id\" = 4")).await.unwrap();
    source.batch_execute(&format!("BEGIN; INSERT INTO {a} (id, note) VALUES (999, 'rolled back'); UPDATE {a} SET note = 'rolled back' WHERE id = 0; ROLLBACK;")).await.unwrap();
    source
        .batch_execute(&format!("BEGIN; INSERT INTO {a} (id, note) VALUES (300, 'multi'); UPDATE {q_b} SET \"Na\"\"me\" = 'multi' WHERE \"Id\" = 5; DELETE FROM {a} WHERE id = 5; COMMIT;"))
        .await
        .unwrap();

    wait_converged(&[(&a, "id"), (&q_b, "\"Id\", \"Kind Of\"")], CONVERGE).await;
    let target = target().await;
    let ids: Vec<i32> =
        target.query(&format!("SELECT id FROM {a} ORDER BY id"), &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert!(!ids.contains(&999), "a rolled-back insert reached the target");
    assert!(ids.contains(&200) && !ids.contains(&2), "primary-key update did not move the row: {ids:?}");
    let note: String = target.query_one(&format!("SELECT note FROM {a} WHERE id = 0"), &[]).await.unwrap().get(0);
    assert_eq!(note, tricky[0]);
    drop_task(&source, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transaction_of_100k_rows() {
    let (task, t, source) = table_task("big", "id bigint PRIMARY KEY, payload text, n int").await;
    let _applier = Applier::start(&task);
    source
        .batch_execute(&format!(
            "INSERT INTO {t} SELECT g, md5(g::text) || repeat('x', 40), g FROM generate_series(1, 100000) g"
        ))
        .await
        .unwrap();
    source.batch_execute(&format!("UPDATE {t} SET n = n + 1 WHERE id % 2 = 0")).await.unwrap();
    let fp = wait_converged(&[(&t, "id")], CONVERGE).await;
    assert_eq!(fp[0].0, 100_000);
    assert_eq!(transactions_applied(&task).await, 2, "each source transaction applied exactly once");
    drop_task(&source, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_one_row_transactions() {
    let (task, t, source) = table_task("small", "id bigint PRIMARY KEY, v text").await;
    let _applier = Applier::start(&task);
    source
        .batch_execute(&format!(
            "DO $$ BEGIN FOR i IN 1..10000 LOOP INSERT INTO {t} VALUES (i, 'v' || i); COMMIT; END LOOP; END $$"
        ))
        .await
        .unwrap();
    let fp = wait_converged(&[(&t, "id")], CONVERGE).await;
    assert_eq!(fp[0].0, 10_000);
    assert_eq!(transactions_applied(&task).await, 10_000, "each source transaction applied exactly once");
    drop_task(&source, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applier_sigkilled_mid_stream_loses_and_duplicates_nothing() {
    let (task, t, ledger, source, mut applier) = mixed_workload_task("kill_applier").await;
    let writer = Writer::start(mixed_transaction(&t, &ledger));
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        applier.restart_after_kill().await;
    }
    let committed = writer.stop().await;
    wait_converged(&[(&t, "id"), (&ledger, "id")], CONVERGE).await;
    assert_eq!(rows_written_twice(&target().await, &ledger).await, 0, "a source transaction was applied twice");
    assert_eq!(
        transactions_applied(&task).await,
        committed as i64,
        "applied transactions != committed source transactions"
    );
    println!("{committed} source transactions, applier killed 4 times");
    drop_task(&source, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_worker_sigkilled_mid_stream_is_restarted_and_loses_nothing() {
    let (task, t, ledger, source, _applier) = mixed_workload_task("kill_worker").await;
    let writer = Writer::start(mixed_transaction(&t, &ledger));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid: i32 =
        source.query_one("SELECT worker_pid FROM trempy.status() WHERE task_name = $1", &[&task]).await.unwrap().get(0);
    // SIGKILL of a backend makes the postmaster reset the whole cluster; the launcher comes back
    // and starts the task's worker again.
    assert!(std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = writer.stop().await;
    let source = trempy_e2e::source().await;
    wait_for_state(&source, &task, "running", Duration::from_secs(60)).await;
    let new_pid: i32 =
        source.query_one("SELECT worker_pid FROM trempy.status() WHERE task_name = $1", &[&task]).await.unwrap().get(0);
    assert_ne!(pid, new_pid);
    wait_converged(&[(&t, "id"), (&ledger, "id")], CONVERGE).await;
    assert_eq!(rows_written_twice(&target().await, &ledger).await, 0, "a source transaction was applied twice");
    drop_task(&source, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_stopped_and_restarted_mid_stream_loses_nothing() {
    let (task, t, ledger, source, _applier) = mixed_workload_task("rabbit").await;
    let writer = Writer::start(mixed_transaction(&t, &ledger));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack::rabbit_stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack::rabbit_start().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let committed = writer.stop().await;
    wait_converged(&[(&t, "id"), (&ledger, "id")], CONVERGE).await;
    assert_eq!(rows_written_twice(&target().await, &ledger).await, 0, "a source transaction was applied twice");
    assert_eq!(
        transactions_applied(&task).await,
        committed as i64,
        "applied transactions != committed source transactions"
    );
    assert_eq!(state(&source, &task).await.as_deref(), Some("running"));
    drop_task(&source, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_task_resumes_where_it_stopped() {
    let (task, t, source) = table_task("stopstart", "id int PRIMARY KEY, v text").await;
    let _applier = Applier::start(&task);
    source.batch_execute(&format!("INSERT INTO {t} SELECT g, 'a' FROM generate_series(1, 100) g")).await.unwrap();
    source.execute("SELECT trempy.stop_task($1)", &[&task]).await.unwrap();
    wait_for_state(&source, &task, "stopped", Duration::from_secs(30)).await;
    source
        .batch_execute(&format!(
            "INSERT INTO {t} SELECT g, 'b' FROM generate_series(101, 200) g; UPDATE {t} SET v = 'c' WHERE id <= 10"
        ))
        .await
        .unwrap();
    source.execute("SELECT trempy.start_task($1)", &[&task]).await.unwrap();
    wait_for_state(&source, &task, "running", Duration::from_secs(30)).await;
    let fp = wait_converged(&[(&t, "id")], CONVERGE).await;
    assert_eq!(fp[0].0, 200);
    drop_task(&source, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_task_removes_only_its_own_slot_and_publication() {
    let a = unique("drop");
    let b = format!("{a}_x"); // shares a's name as a prefix
    let table = format!("{a}_t");
    create_table_both(&format!("CREATE TABLE public.{table} (id int PRIMARY KEY)")).await;
    let source = source().await;
    create_task(&source, &a, &[("public", &table)]).await;
    create_task(&source, &b, &[("public", &table)]).await;
    drop_task(&source, &a).await;
    let slots: Vec<String> = source
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name IN ($1, $2)",
            &[&format!("trempy_{a}"), &format!("trempy_{b}")],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(slots, vec![format!("trempy_{b}")]);
    let pubs: i64 = source
        .query_one("SELECT count(*) FROM pg_publication WHERE pubname = $1", &[&format!("trempy_{a}")])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pubs, 0);
    assert_eq!(state(&source, &b).await.as_deref(), Some("running"));
    drop_task(&source, &b).await;
}

/// A counter of the task's row in `trempy.status()`.
async fn status_count(client: &tokio_postgres::Client, task: &str, column: &str) -> i64 {
    client
        .query_one(&format!("SELECT {column} FROM trempy.status() WHERE task_name = $1"), &[&task])
        .await
        .unwrap()
        .get(0)
}

/// How far the source has flushed WAL, as a byte position.
async fn flushed_wal(client: &tokio_postgres::Client) -> i64 {
    client.query_one("SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint", &[]).await.unwrap().get(0)
}

/// The slot's confirmed_flush_lsn and restart_lsn, as byte positions.
async fn slot_position(client: &tokio_postgres::Client, slot: &str) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint, pg_wal_lsn_diff(restart_lsn, '0/0')::bigint FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slot_advances_when_only_other_tables_change() {
    let task = unique("idle");
    let published = format!("{task}_pub");
    let other = format!("public.{task}_other");
    create_table_both(&format!("CREATE TABLE public.{published} (id int PRIMARY KEY)")).await;
    let source = source().await;
    source.batch_execute(&format!("CREATE TABLE {other} (id int PRIMARY KEY, v text)")).await.unwrap();
    create_task(&source, &task, &[("public", &published)]).await;
    let slot = format!("trempy_{task}");
    let before = slot_position(&source, &slot).await;
    source
        .batch_execute(&format!("INSERT INTO {other} SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g"))
        .await
        .unwrap();
    let wal_after_writes = flushed_wal(&source).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = slot_position(&source, &slot).await;
        if now.0 >= wal_after_writes {
            assert!(now.1 >= before.1);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slot did not advance past unpublished changes: {before:?} -> {now:?}, WAL at {wal_after_writes}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let published_changes = status_count(&source, &task, "changes_published").await;
    assert_eq!(published_changes, 0, "changes of an unpublished table were published");
    drop_task(&source, &task).await;
}

/// A task whose tables are idle while another database of the cluster writes retains no WAL:
/// the walsender's keepalives are confirmed when nothing is owed, so the slot's confirmed
/// position passes the other database's WAL and its restart position follows at the next
/// running-transactions record (a checkpoint writes one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slot_advances_when_only_another_database_writes() {
    let task = unique("idledb");
    create_table_both(&format!("CREATE TABLE public.{task} (id int PRIMARY KEY)")).await;
    let source = source().await;
    create_task(&source, &task, &[("public", &task)]).await;
    let slot = format!("trempy_{task}");
    let elsewhere = connect(&source_dsn_of("postgres")).await;
    let scratch = format!("public.{task}_elsewhere");
    elsewhere.batch_execute(&format!("CREATE TABLE {scratch} (id int, v text)")).await.unwrap();
    elsewhere
        .batch_execute(&format!("INSERT INTO {scratch} SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g"))
        .await
        .unwrap();
    let wal_after_writes = flushed_wal(&source).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (confirmed, restart) = slot_position(&source, &slot).await;
        if confirmed >= wal_after_writes && restart >= wal_after_writes {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot retains WAL another database wrote: confirmed {confirmed}, restart {restart}, WAL written up to {wal_after_writes}"
        );
        // A running-transactions record (a checkpoint writes one) lets restart_lsn move.
        elsewhere.batch_execute(&format!("INSERT INTO {scratch} VALUES (0, 'tick'); CHECKPOINT")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let published_changes = status_count(&source, &task, "changes_published").await;
    assert_eq!(published_changes, 0, "changes of another database were published");
    elsewhere.batch_execute(&format!("DROP TABLE {scratch}")).await.unwrap();
    drop_task(&source, &task).await;
}

/// The task's walsender (the worker's replication connection to its own server) is terminated
/// again and again while a writer commits: each time the worker opens a new stream from the
/// slot's confirmed position, and the target converges (nothing lost; what was sent twice is
/// applied once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_walsender_is_replaced_and_the_target_converges() {
    let task = unique("walsender");
    let t = format!("public.{task}");
    create_table_both(&format!("CREATE TABLE {t} (id bigint PRIMARY KEY, n bigint)")).await;
    let source = source().await;
    create_task(&source, &task, &[("public", &task)]).await;
    let _applier = Applier::start(&task);
    let slot = format!("trempy_{task}");
    let table = t.clone();
    let writer = Writer::start(move |i| {
        format!("INSERT INTO {table} VALUES ({}, 0) ON CONFLICT (id) DO UPDATE SET n = {table}.n + 1", i % 500)
    });
    // Five times: wait for the worker's (new) walsender, let changes flow, terminate it.
    let mut terminated: Vec<i32> = Vec::new();
    for _ in 0..5 {
        let pid = new_walsender(&source, &slot, &terminated).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        source.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
        terminated.push(pid);
    }
    let committed = writer.stop().await;
    assert!(committed > 0, "the writer committed nothing");
    wait_converged(&[(&t, "id")], CONVERGE).await;
    new_walsender(&source, &slot, &terminated).await;
    drop_task(&source, &task).await;
}

/// A replication connection that cannot be opened (here a conninfo naming no server; in
/// production a `pg_hba.conf` without a matching line, or `max_wal_senders` used up) keeps the
/// task retrying with the cause and the remedy in `trempy.status()`, publishing nothing; once it
/// is fixed the task resumes and the target converges, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_replication_connection_retries_loudly_and_resumes_once_fixed() {
    let task = unique("noconn");
    let t = format!("public.{task}");
    create_table_both(&format!("CREATE TABLE {t} (id int PRIMARY KEY, v text)")).await;
    let source = source().await;
    create_task(&source, &task, &[("public", &task)]).await;
    let _applier = Applier::start(&task);
    // Point the worker at no server (one statement per call: ALTER SYSTEM refuses a transaction
    // block), then end its current stream: the next one cannot be opened. The guard puts the
    // setting back even if an assertion fails, so that later tests are not left without streams.
    let reset = ResetConninfo;
    source
        .batch_execute("ALTER SYSTEM SET trempy.replication_conninfo = 'host=/nonexistent-trempy-socket-dir port=1'")
        .await
        .unwrap();
    source.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let slot = format!("trempy_{task}");
    let walsender = new_walsender(&source, &slot, &[]).await;
    source.execute("SELECT pg_terminate_backend($1)", &[&walsender]).await.unwrap();
    source
        .batch_execute(&format!("INSERT INTO {t} SELECT g, 'while unreachable' FROM generate_series(1, 50) g"))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let last_error = loop {
        let text = status_text(&source, &task, "last_error").await.unwrap_or_default();
        if text.contains("could not open the replication connection") {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "no error about the replication connection: {text:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let state = state(&source, &task).await;
    let published = status_count(&source, &task, "changes_published").await;
    drop(reset);
    assert!(
        last_error.contains("pg_hba.conf")
            && last_error.contains("max_wal_senders")
            && last_error.contains("trempy.replication_conninfo"),
        "the error names the cause and the remedy: {last_error}"
    );
    assert_eq!(state.as_deref(), Some("retrying"));
    assert_eq!(published, 0, "changes were published without a stream");
    source.batch_execute(&format!("INSERT INTO {t} VALUES (51, 'after the fix')")).await.unwrap();
    let fp = wait_converged(&[(&t, "id")], CONVERGE).await;
    assert_eq!(fp[0].0, 51);
    drop_task(&source, &task).await;
}

/// Resets `trempy.replication_conninfo` at the source when dropped.
struct ResetConninfo;

impl Drop for ResetConninfo {
    fn drop(&mut self) {
        let reset = "ALTER SYSTEM RESET trempy.replication_conninfo";
        let reset = trempy_e2e::stack::psql_as_postgres(Cluster::Source, reset)
            && trempy_e2e::stack::psql_as_postgres(Cluster::Source, "SELECT pg_reload_conf()");
        assert!(reset || std::thread::panicking(), "could not reset trempy.replication_conninfo");
    }
}

/// Waits (up to 60 s) for a walsender streaming the slot that is none of `terminated`.
async fn new_walsender(source: &tokio_postgres::Client, slot: &str, terminated: &[i32]) -> i32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let active: Option<i32> = source
            .query_opt("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .unwrap()
            .and_then(|row| row.get(0));
        if let Some(pid) = active.filter(|pid| !terminated.contains(pid)) {
            return pid;
        }
        assert!(std::time::Instant::now() < deadline, "no walsender streams the slot again after {terminated:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A streaming task decodes its slot through one replication connection, so PostgreSQL logs
/// "starting logical decoding" once for it, not at every round (the SQL interface it used before
/// logged two lines per round: the peek's and the advance's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_logs_one_decoding_start_not_one_per_round() {
    let task = unique("quietlog");
    let t = format!("public.{task}");
    create_table_both(&format!("CREATE TABLE {t} (id int PRIMARY KEY)")).await;
    let source = source().await;
    create_task(&source, &task, &[("public", &task)]).await;
    for i in 0..20 {
        source.batch_execute(&format!("INSERT INTO {t} VALUES ({i})")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let published = status_count(&source, &task, "transactions_published").await;
        if published >= 20 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "only {published} of 20 transactions published");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(format!("{}/source.log", env("TREMPY_STACK_DIR"))).unwrap();
    let starts = log.matches(&format!("starting logical decoding for slot \"trempy_{task}\"")).count();
    assert_eq!(starts, 1, "decoding of the task's slot started {starts} times for 20 transactions");
    drop_task(&source, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_target_table_halts_in_order_then_resumes_once_created() {
    let task = unique("missing");
    let t = format!("public.{task}");
    let ddl = format!("CREATE TABLE {t} (id int PRIMARY KEY, v text)");
    let source = source().await;
    source.batch_execute(&ddl).await.unwrap();
    create_task(&source, &task, &[("public", &task)]).await;
    let _applier = Applier::start(&task);
    source.batch_execute(&format!("INSERT INTO {t} VALUES (1, 'first'); INSERT INTO {t} VALUES (2, 'second'); UPDATE {t} SET v = 'third' WHERE id = 1")).await.unwrap();
    // The applier cannot apply anything yet: it must halt clearly, neither skip nor crash-loop.
    let log = wait_for_applier_log(&task, &["apply halted", "42P01"], Duration::from_secs(60)).await;
    assert!(
        !log.contains("first") && !log.contains("second") && !log.contains("third"),
        "row values must not be logged"
    );
    target().await.batch_execute(&ddl).await.unwrap();
    wait_converged(&[(&t, "id")], CONVERGE).await;
    assert_eq!(transactions_applied(&task).await, 1, "the three statements were one source transaction");
    drop_task(&source, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_restarted_mid_stream_loses_and_duplicates_nothing() {
    let (task, t, ledger, source, _applier) = mixed_workload_task("target_restart").await;
    let writer = Writer::start(mixed_transaction(&t, &ledger));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack::restart(Cluster::Target, Shutdown::Immediate).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let committed = writer.stop().await;
    wait_converged(&[(&t, "id"), (&ledger, "id")], CONVERGE).await;
    assert_eq!(rows_written_twice(&target().await, &ledger).await, 0, "a source transaction was applied twice");
    assert_eq!(
        transactions_applied(&task).await,
        committed as i64,
        "applied transactions != committed source transactions"
    );
    drop_task(&source, &task).await;
}
