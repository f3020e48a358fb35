//! Task lifecycle and identity, against the real stack: no ordinary DBA operation loses a
//! committed change silently. Capture has started when `create_task` returns; a slot that is gone,
//! invalidated or from another server stops the task loudly instead of being re-created; a task
//! created again under an old name starts clean; slot-changing calls are safe under ROLLBACK;
//! table copies are ordered by their id, not by a reusable position.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use trempy_e2e::*;

const WAIT: Duration = Duration::from_secs(120);

/// A table `public.<name>` (id, v) on both sides, with `rows` rows at the source.
async fn source_table(name: &str, rows: i64) -> String {
    let table = format!("public.{name}");
    create_table_both(&format!("CREATE TABLE {table} (id bigint PRIMARY KEY, v text NOT NULL)")).await;
    source()
        .await
        .batch_execute(&format!("INSERT INTO {table} SELECT g, 'row ' || g FROM generate_series(1, {rows}) g"))
        .await
        .unwrap();
    table
}

/// A `full_load_and_cdc` task on a fresh table of `rows` rows, with its applier, once the target
/// has every row. Returns the task, the table, a source connection, the settings and the applier.
async fn loaded_task(prefix: &str, rows: i64) -> (String, String, Client, serde_json::Value, Applier) {
    let task = unique(prefix);
    let table = source_table(&task, rows).await;
    let source = source().await;
    let settings = load_settings(&task, "full_load_and_cdc", &[("public", &task)]);
    create_task_with(&source, &task, &settings).await;
    let applier = Applier::start(&task);
    wait_converged(&[(&table, "id")], WAIT).await;
    (task, table, source, settings, applier)
}

/// Stops the task and waits until its worker has exited.
async fn stop(source: &Client, task: &str) {
    source.execute("SELECT trempy.stop_task($1)", &[&task]).await.unwrap();
    wait_for_state(source, task, "stopped", WAIT).await;
}

async fn slot_count(source: &Client, task: &str) -> i64 {
    source
        .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'trempy_' || $1", &[&task])
        .await
        .unwrap()
        .get(0)
}

/// Drops the task's slot as a DBA would: a streaming task's walsender holds it, so terminate that
/// first (as for any slot in use), then drop it before the worker connects again.
async fn drop_slot_by_hand(source: &Client, task: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        source
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'trempy_' || $1 AND active_pid IS NOT NULL",
                &[&task],
            )
            .await
            .unwrap();
        match source.execute("SELECT pg_drop_replication_slot('trempy_' || $1)", &[&task]).await {
            Ok(_) => return,
            Err(err) => {
                assert!(Instant::now() < deadline, "could not drop the slot of {task}: {err}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The error message and detail of a failed statement.
fn error_text(err: &tokio_postgres::Error) -> String {
    err.as_db_error().map_or_else(|| err.to_string(), |e| format!("{} {}", e.message(), e.detail().unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_committed_right_after_create_task_returns_are_captured_across_20_drop_create_cycles() {
    let task = unique("born");
    let table = format!("public.{task}");
    create_table_both(&format!("CREATE TABLE {table} (id bigint PRIMARY KEY, cycle int NOT NULL, note text)")).await;
    let source = source().await;
    source.execute("CREATE EXTENSION IF NOT EXISTS trempy", &[]).await.unwrap();
    let settings = cdc_settings(&task, &[("public", &task)]);
    // One applier for every incarnation of the name: each new one must start clean.
    let _applier = Applier::start(&task);
    for cycle in 0..20_i64 {
        source
            .execute("SELECT trempy.create_task($1, $2::text::jsonb)", &[&task, &settings.to_string()])
            .await
            .unwrap();
        // No waiting: a 5,000-row transaction and a one-row one, committed as soon as it returns.
        let first = cycle * 10_000;
        source
            .batch_execute(&format!(
                "INSERT INTO {table} SELECT g, {cycle}, 'bulk' FROM generate_series({first} + 1, {first} + 5000) g"
            ))
            .await
            .unwrap();
        source.batch_execute(&format!("INSERT INTO {table} VALUES ({first} + 9999, {cycle}, 'single')")).await.unwrap();
        let fp = wait_converged(&[(&table, "id")], WAIT).await;
        assert_eq!(fp[0].0, (cycle + 1) * 5001, "cycle {cycle}");
        drop_task(&source, &task).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_stops_the_task_loudly_and_a_reload_converges() {
    let (task, table, source, settings, _applier) = loaded_task("lostslot", 100).await;

    // Dropped while the task is stopped (what a DBA does after an invalidation, or what a
    // restore or pg_upgrade amounts to): start_task refuses, naming the remedy.
    stop(&source, &task).await;
    drop_slot_by_hand(&source, &task).await;
    source
        .batch_execute(&format!("INSERT INTO {table} SELECT g, 'while stopped' FROM generate_series(101, 150) g"))
        .await
        .unwrap();
    let err = source.execute("SELECT trempy.start_task($1)", &[&task]).await.unwrap_err();
    let text = error_text(&err);
    assert!(text.contains("cannot resume") && text.contains("no longer exists") && text.contains("reload"), "{text}");
    assert_eq!(status_text(&source, &task, "failure").await.as_deref(), Some("slot_missing"));
    assert_eq!(state(&source, &task).await.as_deref(), Some("failed"));
    assert_eq!(slot_count(&source, &task).await, 0, "no slot may be made behind the DBA's back");

    // The remedy: a reload copies the table again and converges.
    update_task(&source, &task, &reload_settings(settings.clone())).await;
    wait_for_phase(&source, &task, "cdc", WAIT).await;
    let fp = wait_converged(&[(&table, "id")], WAIT).await;
    assert_eq!(fp[0].0, 150);

    // Dropped under a running task: the worker stops the task with the cause and the remedy,
    // and never makes a new slot.
    drop_slot_by_hand(&source, &task).await;
    source.batch_execute(&format!("INSERT INTO {table} VALUES (151, 'after the drop')")).await.unwrap();
    let last_error = wait_for_failure(&source, &task, "slot_missing", WAIT).await;
    assert!(
        last_error.contains("no longer exists") && last_error.contains("update_task") && last_error.contains("reload"),
        "{last_error}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await; // the launcher's back-off: it must not restart it
    assert_eq!(state(&source, &task).await.as_deref(), Some("failed"));
    assert_eq!(slot_count(&source, &task).await, 0);
    let err = source
        .execute("SELECT trempy.update_task($1, $2::text::jsonb)", &[&task, &settings.to_string()])
        .await
        .unwrap_err();
    assert!(
        error_text(&err).contains("reload"),
        "continue on a failed task must point at reload: {}",
        error_text(&err)
    );

    update_task(&source, &task, &reload_settings(settings)).await;
    let fp = wait_converged(&[(&table, "id")], WAIT).await;
    assert_eq!(fp[0].0, 151);
    assert_eq!(state(&source, &task).await.as_deref(), Some("running"));
    drop_task(&source, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_stops_the_task_loudly_and_a_reload_converges() {
    let (task, table, source, settings, _applier) = loaded_task("invalid", 100).await;
    stop(&source, &task).await;
    source
        .batch_execute(&format!("INSERT INTO {table} SELECT g, 'while stopped' FROM generate_series(101, 120) g"))
        .await
        .unwrap();

    // Let the stopped slot fall further behind than max_slot_wal_keep_size allows.
    source.batch_execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'").await.unwrap();
    source
        .batch_execute(&format!("SELECT pg_reload_conf(); CREATE TABLE public.{task}_wal (id serial, pad text)"))
        .await
        .unwrap();
    let mut wal_status = String::new();
    for _ in 0..60 {
        source
            .batch_execute(&format!(
                "INSERT INTO public.{task}_wal (pad) SELECT repeat('x', 2000) FROM generate_series(1, 2000)"
            ))
            .await
            .unwrap();
        source.batch_execute("SELECT pg_switch_wal()").await.unwrap();
        source.batch_execute("CHECKPOINT").await.unwrap();
        wal_status = source
            .query_one(
                "SELECT coalesce(wal_status, 'gone') FROM pg_replication_slots WHERE slot_name = 'trempy_' || $1",
                &[&task],
            )
            .await
            .unwrap()
            .get(0);
        if wal_status == "lost" {
            break;
        }
    }
    source.batch_execute("ALTER SYSTEM RESET max_slot_wal_keep_size").await.unwrap();
    source.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    assert_eq!(wal_status, "lost", "the test could not invalidate the slot");

    let err = source.execute("SELECT trempy.start_task($1)", &[&task]).await.unwrap_err();
    let text = error_text(&err);
    assert!(text.contains("invalidated") && text.contains("reload"), "{text}");
    assert_eq!(status_text(&source, &task, "failure").await.as_deref(), Some("slot_invalidated"));
    assert_eq!(state(&source, &task).await.as_deref(), Some("failed"));

    update_task(&source, &task, &reload_settings(settings)).await;
    let fp = wait_converged(&[(&table, "id")], WAIT).await;
    assert_eq!(fp[0].0, 120);
    source.batch_execute(&format!("INSERT INTO {table} VALUES (121, 'streamed')")).await.unwrap();
    wait_converged(&[(&table, "id")], WAIT).await;
    drop_task(&source, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_stops_the_task_loudly_and_a_reload_converges() {
    let (task, table, primary, settings, _applier) = loaded_task("failover", 100).await;

    stack::standby_create().await;
    let standby = connect(&env("TREMPY_STANDBY_DSN")).await;
    primary
        .batch_execute(&format!("INSERT INTO {table} SELECT g, 'before the failover' FROM generate_series(101, 130) g"))
        .await
        .unwrap();
    let lsn: String = primary.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    let deadline = Instant::now() + WAIT;
    while !standby
        .query_one("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", &[&lsn])
        .await
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(Instant::now() < deadline, "the standby did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack::standby_promote().await;
    // The old primary is gone, as far as the task is concerned.
    primary.execute("SELECT trempy.stop_task($1)", &[&task]).await.unwrap();

    // On the promoted node the task's slot does not exist and its timeline differs: it stops.
    let last_error = wait_for_failure(&standby, &task, "slot_other_system", WAIT).await;
    assert!(last_error.contains("another server or timeline") && last_error.contains("reload"), "{last_error}");
    let slots: i64 = standby
        .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'trempy_' || $1", &[&task])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "the promoted node must not make a slot behind the DBA's back");

    // The remedy on the new primary: a reload converges the target to it.
    standby.batch_execute(&format!("INSERT INTO {table} SELECT g, 'after the failover' FROM generate_series(131, 140) g; DELETE FROM {table} WHERE id = 1")).await.unwrap();
    update_task(&standby, &task, &reload_settings(settings)).await;
    wait_for_phase(&standby, &task, "cdc", WAIT).await;
    standby.batch_execute(&format!("UPDATE {table} SET v = 'streamed' WHERE id = 2")).await.unwrap();
    let deadline = Instant::now() + WAIT;
    let target = target().await;
    loop {
        let (s, t) = (fingerprint(&standby, &table, "id").await, fingerprint(&target, &table, "id").await);
        if s == t {
            assert_eq!(s.0, 139);
            break;
        }
        assert!(Instant::now() < deadline, "the target did not converge to the promoted node: {s:?} {t:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    standby.execute("SELECT trempy.drop_task($1)", &[&task]).await.unwrap();
    drop(standby);
    stack::standby_destroy().await;
    drop_task(&primary, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_created_again_under_the_name_of_a_reloaded_one_starts_clean() {
    let (task, table, source, settings, _applier) = loaded_task("reborn", 50).await;
    update_task(&source, &task, &reload_settings(settings.clone())).await;
    source.batch_execute(&format!("INSERT INTO {table} VALUES (51, 'generation 2')")).await.unwrap();
    wait_converged(&[(&table, "id")], WAIT).await;
    let target = target().await;
    let generation: i32 = target
        .query_one("SELECT generation FROM trempy.applier_progress WHERE task_name = $1", &[&task])
        .await
        .unwrap()
        .get(0);
    assert_eq!(generation, 2);

    drop_task(&source, &task).await;
    source.batch_execute(&format!("INSERT INTO {table} VALUES (52, 'between the two tasks')")).await.unwrap();
    let mut again = load_settings(&task, "full_load_and_cdc", &[("public", &task)]);
    again["task"]["full_load_settings"] = serde_json::json!({"truncate_before_insert": true});
    create_task_with(&source, &task, &again).await;
    source
        .batch_execute(&format!(
            "INSERT INTO {table} VALUES (53, 'new task'); UPDATE {table} SET v = 'new task' WHERE id = 1"
        ))
        .await
        .unwrap();
    let fp = wait_converged(&[(&table, "id")], WAIT).await;
    assert_eq!(fp[0].0, 53);
    let incarnation: String = source
        .query_one("SELECT incarnation::text FROM trempy.tasks WHERE task_name = $1", &[&task])
        .await
        .unwrap()
        .get(0);
    let row = target.query_one("SELECT incarnation, generation, cardinality(retired_incarnations) FROM trempy.applier_progress WHERE task_name = $1", &[&task]).await.unwrap();
    assert_eq!(
        (row.get::<_, Option<String>>(0), row.get::<_, i32>(1), row.get::<_, Option<i32>>(2)),
        (Some(incarnation), 1, Some(1))
    );
    drop_task(&source, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_changing_calls_are_safe_under_rollback() {
    let (task, table, source) = table_task("rollback", "id int PRIMARY KEY, v text").await;
    let _applier = Applier::start(&task);
    source.batch_execute(&format!("INSERT INTO {table} VALUES (1, 'a')")).await.unwrap();
    wait_converged(&[(&table, "id")], WAIT).await;

    // drop_task and a reload inside a transaction block are refused: a dropped slot cannot be
    // rolled back.
    source.batch_execute("BEGIN").await.unwrap();
    let err = source.execute("SELECT trempy.drop_task($1)", &[&task]).await.unwrap_err();
    source.batch_execute("ROLLBACK").await.unwrap();
    assert!(error_text(&err).contains("cannot run inside a transaction block"), "{}", error_text(&err));
    let mut reload = cdc_settings(&task, &[("public", &task)]);
    reload["task"]["start_mode"] = "reload".into();
    source.batch_execute("BEGIN").await.unwrap();
    let err = source
        .execute("SELECT trempy.update_task($1, $2::text::jsonb)", &[&task, &reload.to_string()])
        .await
        .unwrap_err();
    source.batch_execute("ROLLBACK").await.unwrap();
    assert!(error_text(&err).contains("cannot run inside a transaction block"), "{}", error_text(&err));
    // a continue inside a block that rolls back changes nothing either
    let mut other = cdc_settings(&task, &[("public", &task)]);
    other["task"]["interval_seconds"] = 7.into();
    source.batch_execute("BEGIN").await.unwrap();
    source.execute("SELECT trempy.update_task($1, $2::text::jsonb)", &[&task, &other.to_string()]).await.unwrap();
    source.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(slot_count(&source, &task).await, 1);
    let interval: Option<String> = source
        .query_one("SELECT settings #>> '{task,interval_seconds}' FROM trempy.tasks WHERE task_name = $1", &[&task])
        .await
        .unwrap()
        .get(0);
    assert_eq!(interval, None);
    wait_for_state(&source, &task, "running", WAIT).await;
    source.batch_execute(&format!("INSERT INTO {table} VALUES (2, 'after the rollbacks')")).await.unwrap();
    wait_converged(&[(&table, "id")], WAIT).await;

    // create_task in a transaction that rolls back leaves no task, and its slot and
    // publication go too, so the name can be used again.
    let other_task = unique("rolledback");
    let settings = cdc_settings(&other_task, &[("public", &task)]);
    source.batch_execute("BEGIN").await.unwrap();
    source
        .execute("SELECT trempy.create_task($1, $2::text::jsonb)", &[&other_task, &settings.to_string()])
        .await
        .unwrap();
    assert_eq!(slot_count(&source, &other_task).await, 1, "the slot exists before create_task returns");
    source.batch_execute("ROLLBACK").await.unwrap();
    let deadline = Instant::now() + WAIT;
    while slot_count(&source, &other_task).await > 0 {
        assert!(Instant::now() < deadline, "the slot of a rolled-back create_task was not dropped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let publications: i64 = source
        .query_one("SELECT count(*) FROM pg_publication WHERE pubname = 'trempy_' || $1", &[&other_task])
        .await
        .unwrap()
        .get(0);
    assert_eq!(publications, 0);
    source
        .execute("SELECT trempy.create_task($1, $2::text::jsonb)", &[&other_task, &settings.to_string()])
        .await
        .unwrap();
    drop_task(&source, &other_task).await;

    // create_task after the transaction wrote would wait for itself: a clear error instead.
    source.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (3, 'in the block')")).await.unwrap();
    let err = source
        .execute("SELECT trempy.create_task($1, $2::text::jsonb)", &[&other_task, &settings.to_string()])
        .await
        .unwrap_err();
    source.batch_execute("ROLLBACK").await.unwrap();
    assert!(error_text(&err).contains("must run before anything else in its transaction"), "{}", error_text(&err));
    drop_task(&source, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_added_at_a_reused_position_is_loaded() {
    let task = unique("reuse");
    let (a, b, c) = (
        source_table(&format!("{task}_a"), 300).await,
        source_table(&format!("{task}_b"), 300).await,
        source_table(&format!("{task}_c"), 300).await,
    );
    let (ta, tb, tc) = (format!("{task}_a"), format!("{task}_b"), format!("{task}_c"));
    let source = source().await;
    create_task_with(&source, &task, &load_settings(&task, "full_load_and_cdc", &[("public", &ta), ("public", &tb)]))
        .await;
    let _applier = Applier::start(&task);
    wait_converged(&[(&a, "id"), (&b, "id")], WAIT).await;

    // b (position 1) leaves, c arrives and takes position 1 again
    update_task(&source, &task, &load_settings(&task, "full_load_and_cdc", &[("public", &ta), ("public", &tc)])).await;
    source.batch_execute(&format!("UPDATE {c} SET v = 'streamed' WHERE id = 7")).await.unwrap();
    let fp = wait_converged(&[(&a, "id"), (&c, "id")], WAIT).await;
    assert_eq!(fp[1].0, 300);
    let position: i32 = source
        .query_one("SELECT position FROM trempy.task_tables WHERE task_name = $1 AND table_name = $2", &[&task, &tc])
        .await
        .unwrap()
        .get(0);
    assert_eq!(position, 1, "c took b's old position");
    drop_task(&source, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_a_finished_full_load_to_full_load_and_cdc_copies_every_table_again_exactly() {
    let task = unique("switch");
    let (x, y) = (source_table(&format!("{task}_x"), 400).await, source_table(&format!("{task}_y"), 400).await);
    let (tx, ty) = (format!("{task}_x"), format!("{task}_y"));
    let source = source().await;
    create_task_with(&source, &task, &load_settings(&task, "full_load", &[("public", &tx), ("public", &ty)])).await;
    let _applier = Applier::start(&task);
    wait_for_state(&source, &task, "finished", WAIT).await;
    wait_converged(&[(&x, "id"), (&y, "id")], WAIT).await;

    // Changes the finished full load never saw, on the first table (the lower position).
    source.batch_execute(&format!("DELETE FROM {x} WHERE id <= 50; UPDATE {x} SET v = 'changed' WHERE id > 350; INSERT INTO {x} VALUES (401, 'new')")).await.unwrap();
    let mut settings = load_settings(&task, "full_load_and_cdc", &[("public", &tx), ("public", &ty)]);
    settings["task"]["start_mode"] = "continue".into();
    update_task(&source, &task, &settings).await;
    wait_for_phase(&source, &task, "cdc", WAIT).await;
    source.batch_execute(&format!("UPDATE {y} SET v = 'streamed' WHERE id = 1")).await.unwrap();
    let fp = wait_converged(&[(&x, "id"), (&y, "id")], WAIT).await;
    assert_eq!((fp[0].0, fp[1].0), (351, 400));
    let copies: Vec<(String, i32, i64)> = source
        .query(
            "SELECT table_name, attempt, copy_id FROM trempy.task_tables WHERE task_name = $1 ORDER BY position",
            &[&task],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(copies, vec![(tx, 2, 3), (ty, 2, 4)], "each copy has its own, increasing id");
    drop_task(&source, &task).await;
}
