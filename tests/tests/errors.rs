//! Apply errors end to end: a source transaction the target refuses is retried, then
//! dead-lettered with headers saying why, recorded in the target, and replayed exactly once after
//! the cause is fixed (refused without --force once the task moved past it); a stop policy pauses
//! the task until resumed; transient errors are never dead-lettered; invalid messages are
//! dead-lettered at once, while a message of a newer envelope version halts the task in order.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use lapin::message::BasicGetMessage;
use lapin::options::BasicGetOptions;
use lapin::types::{AMQPValue, FieldTable};
use tokio_postgres::Client;
use trempy_e2e::*;

const CONVERGE: Duration = Duration::from_secs(120);

/// The dead-letter queue's messages, left in the queue (fetched unacknowledged on a channel that
/// is then closed).
async fn dead_letters(task: &str) -> Vec<BasicGetMessage> {
    let (connection, channel) = amqp_channel().await;
    let mut all = Vec::new();
    while let Some(m) =
        channel.basic_get(format!("dlx_queue_{task}").as_str().into(), BasicGetOptions { no_ack: false }).await.unwrap()
    {
        all.push(m);
    }
    drop(channel);
    let _ = connection.close(200, "bye".into()).await;
    all
}

/// Waits until the dead-letter queue holds `n` messages, and returns them.
async fn wait_for_dead_letters(task: &str, n: usize) -> Vec<BasicGetMessage> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let all = dead_letters(task).await;
        if all.len() >= n {
            return all;
        }
        assert!(Instant::now() < deadline, "{} of {n} dead letters in dlx_queue_{task}", all.len());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn header(message: &BasicGetMessage, name: &str) -> Option<String> {
    let headers: &FieldTable = message.delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::LongLongInt(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn settings(task: &str, table: &str, stop_if_insert_error: bool) -> serde_json::Value {
    let mut s = cdc_settings(task, &[("public", table)]);
    s["error_handling"] = serde_json::json!({
        "stop_if_insert_error": stop_if_insert_error, "stop_if_update_error": false, "stop_if_delete_error": false,
        "stop_if_upsert_error": false, "stop_if_scd2_error": false
    });
    s
}

/// A source transaction for [`envelope`]: commit LSN `0/<lsn>` (hex) and its changes.
fn txn(lsn: u64, changes: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({"changes": changes, "xid": lsn, "commit_lsn": format!("0/{lsn:X}"), "commit_time": "2026-01-01T00:00:00.000000Z", "seq": 0, "last": true})
}

fn insert(id: i32, v: &str) -> serde_json::Value {
    serde_json::json!({"op": "insert", "rel": 1, "new": [id.to_string(), v]})
}

fn update(id: i32, v: &str) -> serde_json::Value {
    serde_json::json!({"op": "update", "rel": 1, "new": [id.to_string(), v]})
}

/// A version-1 message of `task` with these source transactions on `public.<task>` (id, v).
fn envelope(task: &str, transactions: Vec<serde_json::Value>) -> Vec<u8> {
    serde_json::json!({
        "version": 1, "task": task, "transactions": transactions,
        "relations": [{"id": 1, "schema": "public", "table": task, "columns": [
            {"name": "id", "type": "integer", "type_oid": 23, "key": true},
            {"name": "v", "type": "text", "type_oid": 25, "key": false}]}]
    })
    .to_string()
    .into_bytes()
}

/// Publishes messages to the task's queue as the decoding worker would (persistent, mandatory,
/// confirmed).
async fn publish(task: &str, bodies: &[&[u8]]) {
    let (connection, channel) = amqp_channel().await;
    for body in bodies {
        publish_to_task(&channel, task, body).await;
    }
    let _ = connection.close(200, "bye".into()).await;
}

/// A fresh task name, its target table `public.<task>` (id int key, v text, plus `extra` DDL
/// after the columns) and its applier, connected (so the topology exists), started with `args`.
///
/// These tests publish the messages themselves rather than capture them at a source: they test
/// the applier alone, whatever extension build is installed.
async fn applier_task(prefix: &str, extra: &str, args: &[&str]) -> (String, String, Applier) {
    let task = unique(prefix);
    let t = format!("public.{task}");
    target().await.batch_execute(&format!("CREATE TABLE {t} (id int PRIMARY KEY, v text{extra})")).await.unwrap();
    let applier = Applier::start_with(&task, args);
    wait_for_applier_log(&task, &["applier connected"], Duration::from_secs(60)).await;
    (task, t, applier)
}

/// Like [`applier_task`], with a CHECK constraint only the target has (refusing v = 'bad') and an
/// applier reading `error_handling` from a settings file.
async fn refusing_task(prefix: &str, stop_if_insert_error: bool) -> (String, String, Applier) {
    let task = unique(prefix);
    let file = format!("{}/settings-{task}.json", env("TREMPY_STACK_DIR"));
    std::fs::write(&file, settings(&task, &task, stop_if_insert_error).to_string()).unwrap();
    let t = format!("public.{task}");
    target()
        .await
        .batch_execute(&format!("CREATE TABLE {t} (id int PRIMARY KEY, v text CONSTRAINT no_bad CHECK (v <> 'bad'))"))
        .await
        .unwrap();
    let applier = Applier::start_with(&task, &["--settings-file", &file]);
    wait_for_applier_log(&task, &["applier connected"], Duration::from_secs(60)).await;
    (task, t, applier)
}

/// The target's rows of `t`, in key order.
async fn rows(client: &Client, t: &str) -> Vec<(i32, String)> {
    client
        .query(&format!("SELECT id, v FROM {t} ORDER BY id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Waits until the target's rows of `t` are `expected`.
async fn wait_rows(client: &Client, t: &str, expected: &[(i32, &str)]) {
    let expected: Vec<(i32, String)> = expected.iter().map(|(i, v)| (*i, (*v).to_owned())).collect();
    let deadline = Instant::now() + CONVERGE;
    loop {
        let now = rows(client, t).await;
        if now == expected {
            return;
        }
        assert!(Instant::now() < deadline, "target has {now:?}, expected {expected:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn count(client: &Client, sql: &str, task: &str) -> i64 {
    client.query_one(sql, &[&task]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_insert_is_dead_lettered_after_three_attempts_then_replayed_exactly_once() {
    let (task, t, _applier) = refusing_task("deadletter", false).await;
    // One message, three source transactions; the target refuses the middle one.
    let message = envelope(
        &task,
        vec![
            txn(0x10, vec![insert(1, "before")]),
            txn(0x20, vec![insert(2, "bad"), insert(3, "with the bad one")]),
            txn(0x30, vec![insert(4, "after"), update(1, "after, updated")]),
        ],
    );
    publish(&task, &[&message]).await;

    let dead = wait_for_dead_letters(&task, 1).await;
    assert_eq!(dead.len(), 1);
    let m = &dead[0];
    assert_eq!(header(m, "x-trempy-error-class").as_deref(), Some("target_sql"));
    assert_eq!(header(m, "x-trempy-sqlstate").as_deref(), Some("23514"));
    assert_eq!(header(m, "x-trempy-table").as_deref(), Some(format!("\"public\".\"{task}\"").as_str()));
    assert_eq!(header(m, "x-trempy-operation").as_deref(), Some("insert"));
    assert_eq!(header(m, "x-trempy-attempts").as_deref(), Some("3"));
    assert_eq!(header(m, "x-trempy-commit-lsn").as_deref(), Some("0/20"));
    let reason = header(m, "x-trempy-reason").unwrap();
    assert!(reason.contains("no_bad") && !reason.contains("(v)") && !reason.contains("with the bad one"), "{reason}");

    // The transactions around it are applied; the refused one is not, not even partly.
    let target = target().await;
    wait_rows(&target, &t, &[(1, "after, updated"), (4, "after")]).await;
    let progress = target
        .query_one(
            "SELECT commit_lsn::text, transactions_applied FROM trempy.applier_progress WHERE task_name = $1",
            &[&task],
        )
        .await
        .unwrap();
    assert_eq!((progress.get::<_, String>(0), progress.get::<_, i64>(1)), ("0/30".to_owned(), 2));
    let row = target.query_one("SELECT id, state, commit_lsn::text, sqlstate, attempts FROM trempy.applier_deadletters WHERE task_name = $1", &[&task]).await.unwrap();
    let (id, state, lsn, sqlstate, attempts): (i64, String, String, String, i32) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!((state.as_str(), lsn.as_str(), sqlstate.as_str(), attempts), ("dead", "0/20", "23514", 3));
    let logged = count(&target, "SELECT count(*) FROM trempy.applier_errors WHERE task_name = $1 AND sqlstate = '23514' AND operation = 'insert' AND commit_lsn = '0/20'", &task).await;
    assert_eq!(logged, 3, "each attempt is in the error log");
    let (ok, errors) = applier_command(&["errors", "--task", &task]).await;
    assert!(
        ok && errors.contains("dead_letter") && errors.contains("23514") && !errors.contains("with the bad one"),
        "{errors}"
    );
    let (ok, list) = applier_command(&["dlq", "list", "--task", &task]).await;
    assert!(ok && list.contains(&format!("{id}\tdead\t0/20")), "{list}");
    let (ok, show) = applier_command(&["dlq", "show", "--task", &task, "--id", &id.to_string()]).await;
    assert!(ok && show.contains("changes: 2") && !show.contains("with the bad one"), "{show}");

    // Fix the cause, replay. The watermark (0/30) has moved past the dead letter (0/20), so replay
    // first refuses, listing the table and keys it would write, and changes nothing.
    target.batch_execute(&format!("ALTER TABLE {t} DROP CONSTRAINT no_bad")).await.unwrap();
    let (ok, out) = applier_command(&["dlq", "replay", "--task", &task, "--id", &id.to_string()]).await;
    assert!(!ok && out.contains(&format!("{id}\trefused")) && out.contains("--force"), "{out}");
    assert!(
        out.contains(&format!("public.{task}: (id=\"2\") (id=\"3\")")) && !out.contains("with the bad one"),
        "{out}"
    );
    assert_eq!(rows(&target, &t).await, vec![(1, "after, updated".to_owned()), (4, "after".to_owned())]);
    let state: String =
        target.query_one("SELECT state FROM trempy.applier_deadletters WHERE id = $1", &[&id]).await.unwrap().get(0);
    assert_eq!(state, "dead");
    // With --force: exactly the dead-lettered transaction is applied.
    let (ok, out) = applier_command(&["dlq", "replay", "--task", &task, "--id", &id.to_string(), "--force"]).await;
    assert!(ok && out.contains(&format!("{id}\treplayed")), "{out}");
    let all = [(1, "after, updated"), (2, "bad"), (3, "with the bad one"), (4, "after")];
    assert_eq!(rows(&target, &t).await, all.iter().map(|(i, v)| (*i, (*v).to_owned())).collect::<Vec<_>>());
    let state: String =
        target.query_one("SELECT state FROM trempy.applier_deadletters WHERE id = $1", &[&id]).await.unwrap().get(0);
    assert_eq!(state, "replayed");
    assert!(dead_letters(&task).await.is_empty(), "the replayed copy is still in the dead-letter queue");

    // Replaying again changes nothing.
    target.batch_execute(&format!("UPDATE {t} SET v = 'changed after the replay' WHERE id = 3")).await.unwrap();
    let (ok, out) = applier_command(&["dlq", "replay", "--task", &task, "--id", &id.to_string()]).await;
    assert!(ok && out.contains("nothing done"), "{out}");
    let (ok, out) = applier_command(&["dlq", "replay", "--task", &task, "--all"]).await;
    assert!(ok && !out.contains("\treplayed"), "{out}");
    let v: String = target.query_one(&format!("SELECT v FROM {t} WHERE id = 3"), &[]).await.unwrap().get(0);
    assert_eq!(v, "changed after the replay", "a second replay applied the transaction again");

    // The stream goes on; a redelivery of the whole message changes nothing either.
    publish(&task, &[&message, &envelope(&task, vec![txn(0x40, vec![insert(5, "later")])])]).await;
    wait_rows(
        &target,
        &t,
        &[(1, "after, updated"), (2, "bad"), (3, "changed after the replay"), (4, "after"), (5, "later")],
    )
    .await;
    let (ok, status) = applier_command(&["status"]).await;
    assert!(ok && status.lines().any(|l| l.starts_with(&format!("{task}\trunning\t"))), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_policy_pauses_the_task_until_resumed() {
    let (task, t, _applier) = refusing_task("stop", true).await;
    let target = target().await;
    publish(&task, &[&envelope(&task, vec![txn(0x10, vec![insert(1, "before")])])]).await;
    wait_rows(&target, &t, &[(1, "before")]).await;
    publish(
        &task,
        &[
            &envelope(&task, vec![txn(0x20, vec![insert(2, "bad")])]),
            &envelope(&task, vec![txn(0x30, vec![insert(3, "after")])]),
        ],
    )
    .await;

    let deadline = Instant::now() + CONVERGE;
    loop {
        let state = target
            .query_opt("SELECT state, reason FROM trempy.applier_state WHERE task_name = $1", &[&task])
            .await
            .unwrap();
        if let Some(row) = state
            && row.get::<_, String>(0) == "stopped"
        {
            let reason: String = row.get(1);
            assert!(
                reason.contains("insert")
                    && reason.contains("no_bad")
                    && reason.contains("0/20")
                    && !reason.contains("(v)"),
                "{reason}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the task did not stop");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, status) = applier_command(&["status"]).await;
    assert!(ok && status.lines().any(|l| l.starts_with(&format!("{task}\tstopped\t"))), "{status}");
    // Stopped: nothing after the failed transaction is applied, nothing is dead-lettered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rows(&target, &t).await, vec![(1, "before".to_owned())]);
    assert_eq!(count(&target, "SELECT count(*) FROM trempy.applier_deadletters WHERE task_name = $1", &task).await, 0);
    assert!(dead_letters(&task).await.is_empty());
    assert_eq!(
        count(&target, "SELECT count(*) FROM trempy.applier_errors WHERE task_name = $1 AND action = 'stop'", &task)
            .await,
        1
    );

    target.batch_execute(&format!("ALTER TABLE {t} DROP CONSTRAINT no_bad")).await.unwrap();
    let (ok, out) = applier_command(&["resume", "--task", &task]).await;
    assert!(ok && out.contains("resumed"), "{out}");
    wait_rows(&target, &t, &[(1, "before"), (2, "bad"), (3, "after")]).await;
    let state: String =
        target.query_one("SELECT state FROM trempy.applier_state WHERE task_name = $1", &[&task]).await.unwrap().get(0);
    assert_eq!(state, "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_timeouts_are_retried_and_never_dead_lettered() {
    // Every write to the target table first takes a lock on a second table, waiting at most
    // 50 ms: while a test session holds that table, each attempt fails with 55P03.
    let task = unique("locked");
    let (t, lock) = (format!("public.{task}"), format!("public.{task}_lock"));
    target()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, v text);
             CREATE TABLE {lock} ();
             CREATE FUNCTION public.{task}_take() RETURNS trigger LANGUAGE plpgsql AS $f$
             BEGIN SET LOCAL lock_timeout = '50ms'; LOCK TABLE {lock} IN SHARE MODE; RETURN NEW; END $f$;
             CREATE TRIGGER take BEFORE INSERT OR UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION public.{task}_take();"
        ))
        .await
        .unwrap();
    let _applier = Applier::start(&task);
    wait_for_applier_log(&task, &["applier connected"], Duration::from_secs(60)).await;
    let target = target().await;
    publish(&task, &[&envelope(&task, vec![txn(0x10, vec![insert(1, "first")])])]).await;
    wait_rows(&target, &t, &[(1, "first")]).await;

    let holder = trempy_e2e::target().await;
    holder.batch_execute(&format!("BEGIN; LOCK TABLE {lock} IN ACCESS EXCLUSIVE MODE")).await.unwrap();
    let later: Vec<Vec<u8>> =
        (2..6).map(|i| envelope(&task, vec![txn(0x10 * i as u64, vec![insert(i, "while locked")])])).collect();
    publish(&task, &later.iter().map(Vec::as_slice).collect::<Vec<_>>()).await;
    // Far more than three attempts fail while the lock is held.
    wait_for_applier_log(&task, &["55P03"], Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    holder.batch_execute("COMMIT").await.unwrap();
    wait_rows(
        &target,
        &t,
        &[(1, "first"), (2, "while locked"), (3, "while locked"), (4, "while locked"), (5, "while locked")],
    )
    .await;
    assert_eq!(count(&target, "SELECT count(*) FROM trempy.applier_deadletters WHERE task_name = $1", &task).await, 0);
    assert!(dead_letters(&task).await.is_empty(), "a transient failure was dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_messages_are_dead_lettered_at_once_with_a_reason_and_can_be_discarded() {
    let (task, t, _applier) = applier_task("invalid", "", &[]).await;
    let target = target().await;
    // Not TREMpy messages: a version 0, a newer version of another task, no task at all.
    let version_0 = serde_json::json!({"version": 0, "task": task, "transactions": [], "relations": []}).to_string();
    let other_task =
        serde_json::json!({"version": 99, "task": format!("{task}_other"), "transactions": [], "relations": []})
            .to_string();
    let before = envelope(&task, vec![txn(0x10, vec![insert(1, "before")])]);
    let after = envelope(&task, vec![txn(0x20, vec![insert(2, "after")])]);
    let bodies: [&[u8]; 6] = [
        &before,
        b"{\"version\": 1, \"task\": \"trunc",
        version_0.as_bytes(),
        other_task.as_bytes(),
        b"not json at all",
        &after,
    ];
    publish(&task, &bodies).await;
    wait_rows(&target, &t, &[(1, "before"), (2, "after")]).await;

    let dead = wait_for_dead_letters(&task, 4).await;
    assert_eq!(dead.len(), 4);
    for m in &dead {
        assert_eq!(header(m, "x-trempy-error-class").as_deref(), Some("envelope"));
        assert_eq!(header(m, "x-trempy-attempts").as_deref(), Some("1"));
    }
    assert!(dead.iter().any(|m| header(m, "x-trempy-reason").unwrap().contains("unsupported envelope version 0")));
    assert!(dead.iter().any(|m| header(m, "x-trempy-reason").unwrap().contains("another task")));
    assert!(dead.iter().any(|m| m.delivery.data == b"{\"version\": 1, \"task\": \"trunc"));

    let (_, list) = applier_command(&["dlq", "list", "--task", &task]).await;
    assert_eq!(list.lines().filter(|l| l.contains("\tdead\t")).count(), 4, "{list}");
    let (ok, out) = applier_command(&["dlq", "replay", "--task", &task, "--all"]).await;
    assert!(!ok && out.contains("cannot be replayed"), "{out}");
    let (ok, out) = applier_command(&["dlq", "discard", "--task", &task, "--all"]).await;
    assert!(ok && out.contains("discarded 4; removed 4"), "{out}");
    assert!(dead_letters(&task).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_envelope_version_halts_in_order_and_is_never_dead_lettered() {
    let (task, t, _applier) = applier_task("newer", "", &[]).await;
    let target = target().await;
    let newer = serde_json::json!({"version": 99, "task": task, "transactions": [], "relations": [], "field_of_the_future": true}).to_string();
    let before = envelope(&task, vec![txn(0x10, vec![insert(1, "before")])]);
    let after = envelope(&task, vec![txn(0x20, vec![insert(2, "after")])]);
    publish(&task, &[&before, newer.as_bytes(), &after]).await;
    wait_for_applier_log(
        &task,
        &["apply halted", "envelope version 99", "upgrade trempy-applier"],
        Duration::from_secs(60),
    )
    .await;
    // What came before it is applied; nothing after it is, and nothing is dead-lettered.
    wait_rows(&target, &t, &[(1, "before")]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rows(&target, &t).await, vec![(1, "before".to_owned())]);
    let watermark: String = target
        .query_one("SELECT commit_lsn::text FROM trempy.applier_progress WHERE task_name = $1", &[&task])
        .await
        .unwrap()
        .get(0);
    assert_eq!(watermark, "0/10");
    assert_eq!(count(&target, "SELECT count(*) FROM trempy.applier_deadletters WHERE task_name = $1", &task).await, 0);
    assert!(dead_letters(&task).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_are_counted_across_applier_restarts() {
    let (task, t, mut applier) = refusing_task("restart", false).await;
    publish(&task, &[&envelope(&task, vec![txn(0x10, vec![insert(1, "bad")]), txn(0x20, vec![insert(2, "fine")])])])
        .await;
    wait_for_applier_log(&task, &["source transaction failed"], Duration::from_secs(60)).await;
    applier.restart_after_kill().await;
    let dead = wait_for_dead_letters(&task, 1).await;
    assert_eq!(header(&dead[0], "x-trempy-attempts").as_deref(), Some("3"));
    let target = target().await;
    wait_rows(&target, &t, &[(2, "fine")]).await;
    // Had the restart reset the counter, the transaction would have been tried more than 3 times.
    let tried = count(
        &target,
        "SELECT count(*) FROM trempy.applier_errors WHERE task_name = $1 AND commit_lsn = '0/10'",
        &task,
    )
    .await;
    let dead_lettered = count(
        &target,
        "SELECT count(*) FROM trempy.applier_errors WHERE task_name = $1 AND action = 'dead_letter'",
        &task,
    )
    .await;
    assert!(tried <= 3 && dead_lettered == 1, "{tried} attempts logged, {dead_lettered} dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_target_table_halts_and_is_never_dead_lettered() {
    let task = unique("notable");
    let t = format!("public.{task}");
    let _applier = Applier::start(&task);
    wait_for_applier_log(&task, &["applier connected"], Duration::from_secs(60)).await;
    publish(&task, &[&envelope(&task, vec![txn(0x10, vec![insert(1, "waits")])])]).await;
    wait_for_applier_log(&task, &["apply halted", "42P01"], Duration::from_secs(60)).await;
    let target = target().await;
    target.batch_execute(&format!("CREATE TABLE {t} (id int PRIMARY KEY, v text)")).await.unwrap();
    wait_rows(&target, &t, &[(1, "waits")]).await;
    assert_eq!(count(&target, "SELECT count(*) FROM trempy.applier_deadletters WHERE task_name = $1", &task).await, 0);
    assert!(dead_letters(&task).await.is_empty());
}

/// A settings control message (version 1) of `task`, in effect for every later message.
fn settings_message(task: &str, settings: &serde_json::Value) -> Vec<u8> {
    serde_json::json!({"version": 1, "task": task, "settings": settings, "transactions": [], "relations": []})
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_type_name_is_dead_lettered_and_never_executed() {
    let (task, t, _applier) = applier_task("forged", "", &[]).await;
    let target = target().await;
    let canary = format!("public.{task}_canary");
    let created = format!("{task}_new");
    target.batch_execute(&format!("CREATE TABLE {canary} (id int); INSERT INTO {canary} VALUES (7)")).await.unwrap();
    // The task creates missing tables, so a relation's types become DDL.
    let mut settings = cdc_settings(&task, &[("public", &task), ("public", &created)]);
    settings["task"]["create_table_if_not_exists"] = true.into();
    let forged = serde_json::json!({
        "version": 1, "task": task,
        "transactions": [txn(0x20, vec![serde_json::json!({"op": "insert", "rel": 2, "new": ["1"]})])],
        "relations": [{"id": 2, "schema": "public", "table": created, "columns": [
            {"name": "id", "type": "integer", "type_oid": 23, "key": true,
             "create_type": format!("int); DROP TABLE {canary}; --")}]}]
    })
    .to_string();
    let before = envelope(&task, vec![txn(0x10, vec![insert(1, "before")])]);
    let after = envelope(&task, vec![txn(0x30, vec![insert(2, "after")])]);
    publish(&task, &[&settings_message(&task, &settings), &before, forged.as_bytes(), &after]).await;
    // The stream goes on around it.
    wait_rows(&target, &t, &[(1, "before"), (2, "after")]).await;

    let dead = wait_for_dead_letters(&task, 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].delivery.data, forged.as_bytes(), "the forged message is dead-lettered as it came");
    assert_eq!(header(&dead[0], "x-trempy-error-class").as_deref(), Some("envelope"));
    let reason = header(&dead[0], "x-trempy-reason").unwrap();
    assert!(reason.contains("relations[0].columns[0].create_type is not a type name"), "{reason}");
    // Nothing of it ran: the canary is intact and the table was not created.
    assert_eq!(count(&target, &format!("SELECT count(*) FROM {canary} WHERE id = $1::text::int"), "7").await, 1);
    assert_eq!(count(&target, "SELECT count(*) FROM pg_catalog.pg_class WHERE relname = $1", &created).await, 0);
    assert_eq!(
        count(
            &target,
            "SELECT count(*) FROM trempy.applier_deadletters WHERE task_name = $1 AND error_class = 'envelope'",
            &task
        )
        .await,
        1
    );
}

/// A version-1 message of `task` on `public.<task>` with the given columns (name, type, key).
fn message_with(task: &str, columns: &[(&str, &str, bool)], transactions: Vec<serde_json::Value>) -> Vec<u8> {
    let columns: Vec<serde_json::Value> =
        columns.iter().map(|(n, t, k)| serde_json::json!({"name": n, "type": t, "type_oid": 0, "key": k})).collect();
    serde_json::json!({"version": 1, "task": task, "transactions": transactions, "relations": [{"id": 1, "schema": "public", "table": task, "columns": columns}]})
        .to_string()
        .into_bytes()
}

/// An insert of `values` into relation 1.
fn insert_row(values: &[&str]) -> serde_json::Value {
    serde_json::json!({"op": "insert", "rel": 1, "new": values})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_transformations_cannot_compute_is_dead_lettered_and_later_rows_flow() {
    let (task, t, _applier) = applier_task("overflow", ", n integer", &["--max-attempts", "2"]).await;
    let target = target().await;
    let mut settings = cdc_settings(&task, &[("public", &task)]);
    settings["transformations"] = serde_json::json!([{"table_info": {"schema_name": "public", "table_name": task},
        "settings": {"transformation_type": "modify_column_value", "description": "power", "contract": {"operation": "math_expression", "column_name": "n", "expression": "value ^ 400"}, "priority": 1}}]);
    let columns = [("id", "integer", true), ("v", "text", false), ("n", "integer", false)];
    // 10 ^ 400 overflows double precision: the middle transaction cannot be computed.
    let first = message_with(
        &task,
        &columns,
        vec![
            txn(0x10, vec![insert_row(&["1", "before", "1"])]),
            txn(0x20, vec![insert_row(&["2", "overflows", "10"])]),
            txn(0x30, vec![insert_row(&["3", "same message", "0"])]),
        ],
    );
    let later = message_with(&task, &columns, vec![txn(0x40, vec![insert_row(&["4", "later", "-1"])])]);
    publish(&task, &[&settings_message(&task, &settings), &first, &later]).await;
    wait_rows(&target, &t, &[(1, "before"), (3, "same message"), (4, "later")]).await;
    let powers: Vec<i32> =
        target.query(&format!("SELECT n FROM {t} ORDER BY id"), &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(powers, vec![1, 0, 1]);

    let dead = wait_for_dead_letters(&task, 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(header(&dead[0], "x-trempy-error-class").as_deref(), Some("transform"));
    assert_eq!(header(&dead[0], "x-trempy-commit-lsn").as_deref(), Some("0/20"));
    assert_eq!(header(&dead[0], "x-trempy-operation").as_deref(), Some("insert"));
    let reason = header(&dead[0], "x-trempy-reason").unwrap();
    assert!(reason.contains("cannot transform a row for"), "{reason}");
    assert_eq!(
        count(
            &target,
            "SELECT count(*) FROM trempy.applier_deadletters WHERE task_name = $1 AND commit_lsn = '0/20'",
            &task
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_that_stop_fitting_halt_naming_the_rule_until_newer_settings_behind_them_arrive() {
    let (task, t, _applier) = applier_task("unfit", ", status text", &[]).await;
    let target = target().await;
    let mut filtered = cdc_settings(&task, &[("public", &task)]);
    filtered["filters"] = serde_json::json!([{"table_info": {"schema_name": "public", "table_name": task},
        "settings": {"filter_type": "equals", "description": "only active", "column_name": "status", "value": "active"}}]);
    let before = message_with(
        &task,
        &[("id", "integer", true), ("v", "text", false), ("status", "text", false)],
        vec![txn(0x10, vec![insert_row(&["1", "kept", "active"]), insert_row(&["2", "filtered out", "inactive"])])],
    );
    // `status` was dropped at the source: the filter no longer fits the table.
    let dropped = [("id", "integer", true), ("v", "text", false)];
    let unfit = message_with(&task, &dropped, vec![txn(0x20, vec![insert_row(&["3", "after the drop"])])]);
    let queued = message_with(&task, &dropped, vec![txn(0x30, vec![insert_row(&["4", "queued behind"])])]);
    publish(&task, &[&settings_message(&task, &filtered), &before, &unfit, &queued]).await;
    let log = wait_for_applier_log(
        &task,
        &["apply halted", "filter 0 (equals, \"only active\")", "trempy.update_task"],
        Duration::from_secs(60),
    )
    .await;
    assert!(log.contains("filters[0].settings.column_name"), "the halt does not say which setting");
    wait_rows(&target, &t, &[(1, "kept")]).await;
    assert_eq!(
        count(&target, "SELECT count(*) FROM trempy.applier_deadletters WHERE task_name = $1", &task).await,
        0,
        "nothing may be dead-lettered"
    );

    // New settings (what update_task publishes) arrive behind the failing message: the applier
    // reaches them, applies the failing message and everything after it in order.
    let fixed = cdc_settings(&task, &[("public", &task)]);
    let after = message_with(&task, &dropped, vec![txn(0x40, vec![insert_row(&["5", "after the fix"])])]);
    publish(&task, &[&settings_message(&task, &fixed), &after]).await;
    wait_rows(&target, &t, &[(1, "kept"), (3, "after the drop"), (4, "queued behind"), (5, "after the fix")]).await;
    wait_for_applier_log(
        &task,
        &["newer task settings found in the queue behind the failing message"],
        Duration::from_secs(10),
    )
    .await;
    let watermark: String = target
        .query_one("SELECT commit_lsn::text FROM trempy.applier_progress WHERE task_name = $1", &[&task])
        .await
        .unwrap()
        .get(0);
    assert_eq!(watermark, "0/40");
    let recorded: serde_json::Value = target
        .query_one("SELECT settings::text FROM trempy.applier_progress WHERE task_name = $1", &[&task])
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    assert_eq!(recorded, fixed);
    assert_eq!(count(&target, "SELECT count(*) FROM trempy.applier_deadletters WHERE task_name = $1", &task).await, 0);
}
