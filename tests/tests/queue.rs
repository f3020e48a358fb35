//! What the applier does with bad input on the queue: a message that is not a valid envelope is
//! dead-lettered with nothing lost around it; a chunk out of sequence is never applied and never
//! acknowledged.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, QueuePurgeOptions};
use trempy_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_message_is_dead_lettered_and_the_stream_goes_on() {
    let (task, t, source) = table_task("poison", "id int PRIMARY KEY, v text").await;
    let _applier = Applier::start(&task);
    source.batch_execute(&format!("INSERT INTO {t} VALUES (1, 'before')")).await.unwrap();
    wait_converged(&[(&t, "id")], Duration::from_secs(60)).await;

    let (_connection, channel) = amqp_channel().await;
    publish_to_task(&channel, &task, b"{\"version\": 1, \"task\": \"truncated").await;
    source.batch_execute(&format!("INSERT INTO {t} VALUES (2, 'after')")).await.unwrap();
    wait_converged(&[(&t, "id")], Duration::from_secs(60)).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        if let Some(message) = channel
            .basic_get(format!("dlx_queue_{task}").as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            break message;
        }
        assert!(Instant::now() < deadline, "the malformed message did not reach the dead-letter queue");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(dead.delivery.data, b"{\"version\": 1, \"task\": \"truncated");
    drop_task(&source, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_out_of_sequence_is_never_applied_nor_acknowledged() {
    let (task, t, source) = table_task("order", "id int PRIMARY KEY, v text").await;
    let mut applier = Applier::start(&task);
    source.batch_execute(&format!("INSERT INTO {t} VALUES (0, 'first')")).await.unwrap();
    wait_converged(&[(&t, "id")], Duration::from_secs(60)).await; // the topology exists

    // Chunk 1 of a transaction whose chunk 0 never came, far beyond anything applied.
    let body = serde_json::json!({
        "version": 1, "task": task,
        "transactions": [{"changes": [{"op": "insert", "rel": 1, "new": ["42", "orphan"]}],
                          "xid": 1, "commit_lsn": "FF/0", "commit_time": "2026-01-01T00:00:00.000000Z", "seq": 1, "last": true}],
        "relations": [{"id": 1, "schema": "public", "table": task, "columns": [
            {"name": "id", "type": "integer", "type_oid": 23, "key": true},
            {"name": "v", "type": "text", "type_oid": 25, "key": false}]}]
    });
    let (connection, channel) = amqp_channel().await;
    publish_to_task(&channel, &task, body.to_string().as_bytes()).await;
    wait_for_applier_log(&task, &["arrived where chunk 0 was expected"], Duration::from_secs(60)).await;
    let target = target().await;
    let orphans: i64 = target.query_one(&format!("SELECT count(*) FROM {t} WHERE id = 42"), &[]).await.unwrap().get(0);
    assert_eq!(orphans, 0, "an out-of-sequence chunk was applied");

    // It is still in the queue: stop the applier, and the message is there to be inspected.
    applier.kill().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still_there = channel
        .queue_purge(format!("trempy_queue_{task}").as_str().into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(still_there, 1, "the out-of-sequence chunk was acknowledged");
    drop(connection);

    // With the bad message gone, replication goes on.
    let _applier = Applier::start(&task);
    source.batch_execute(&format!("INSERT INTO {t} VALUES (1, 'fine')")).await.unwrap();
    wait_converged(&[(&t, "id")], Duration::from_secs(60)).await;
    drop_task(&source, &task).await;
}

/// Waits until the task's worker has published at least `count` source transactions in all.
async fn wait_published(source: &tokio_postgres::Client, task: &str, count: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let published: i64 =
            status_text(source, task, "transactions_published").await.and_then(|t| t.parse().ok()).unwrap_or(0);
        if published >= count {
            return;
        }
        assert!(Instant::now() < deadline, "task {task} published {published} transactions, not {count}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_queue_halts_the_applier_at_the_gap_and_a_reload_converges() {
    let task = unique("gap");
    let t = format!("public.{task}");
    create_table_both(&format!("CREATE TABLE {t} (id int PRIMARY KEY, v text)")).await;
    let source = source().await;
    let mut settings = load_settings(&task, "full_load_and_cdc", &[("public", &task)]);
    settings["task"]["full_load_settings"] = serde_json::json!({"truncate_before_insert": true});
    create_task_with(&source, &task, &settings).await;
    let mut applier = Applier::start(&task);
    wait_for_phase(&source, &task, "cdc", Duration::from_secs(60)).await;
    for i in 1..=10 {
        source.batch_execute(&format!("INSERT INTO {t} VALUES ({i}, 'applied')")).await.unwrap();
    }
    wait_converged(&[(&t, "id")], Duration::from_secs(60)).await;
    applier.kill().await;

    // Published while the applier is down, then purged (a DBA, a policy's message-ttl, …).
    for i in 11..=20 {
        source.batch_execute(&format!("INSERT INTO {t} VALUES ({i}, 'purged')")).await.unwrap();
    }
    wait_published(&source, &task, 20).await;
    let (_connection, channel) = amqp_channel().await;
    channel.queue_purge(format!("trempy_queue_{task}").as_str().into(), QueuePurgeOptions::default()).await.unwrap();
    for i in 21..=30 {
        source.batch_execute(&format!("INSERT INTO {t} VALUES ({i}, 'after the hole')")).await.unwrap();
    }
    wait_published(&source, &task, 30).await;

    // The applier halts at the first transaction after the hole and applies nothing past it.
    let _applier = Applier::start(&task);
    wait_for_applier_log(&task, &["gap in the stream", "reload"], Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reason = status_text(&source, &task, "applier_reason").await.unwrap_or_default();
        if reason.contains("gap in the stream") {
            break;
        }
        assert!(Instant::now() < deadline, "trempy.status() does not report the gap (applier_reason {reason:?})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let target = target().await;
    let rows: i64 = target.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0);
    assert_eq!(rows, 10, "nothing after the hole may be applied");

    // The remedy: a reload copies the table again and the stream goes on.
    settings["task"]["start_mode"] = "reload".into();
    update_task(&source, &task, &settings).await;
    let fp = wait_converged(&[(&t, "id")], Duration::from_secs(120)).await;
    assert_eq!(fp[0].0, 30);
    drop_task(&source, &task).await;
}

/// Sets RabbitMQ's `max_message_size` (it applies to channels opened from then on).
fn set_broker_max_message_size(bytes: u64) {
    let eval = format!("application:set_env(rabbit, max_message_size, {bytes}).");
    assert!(stack::rabbitmqctl_blocking(&["eval", &eval]).is_some(), "rabbitmqctl eval failed");
}

/// RabbitMQ 3.10's default `max_message_size` (128 MiB), restored however the test ends.
struct RestoreMaxMessageSize;

impl Drop for RestoreMaxMessageSize {
    fn drop(&mut self) {
        set_broker_max_message_size(134_217_728);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_larger_than_rabbitmqs_limit_is_reported_with_the_remedy_and_flows_once_the_limit_is_raised() {
    let task = unique("oversize");
    let t = format!("public.{task}");
    create_table_both(&format!("CREATE TABLE {t} (id int PRIMARY KEY, v text)")).await;
    let source = source().await;
    let restore = RestoreMaxMessageSize;
    set_broker_max_message_size(1_048_576);
    create_task(&source, &task, &[("public", &task)]).await;
    let _applier = Applier::start(&task);
    source.batch_execute(&format!("INSERT INTO {t} VALUES (1, 'small')")).await.unwrap();
    // 1.5 MB of incompressible text in one row: one change, never cut, over the 1 MiB limit.
    source
        .batch_execute(&format!(
            "INSERT INTO {t} SELECT 2, string_agg(md5(g::text || random()::text), '') FROM generate_series(1, 48000) g"
        ))
        .await
        .unwrap();
    source.batch_execute(&format!("INSERT INTO {t} VALUES (3, 'after')")).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let last_error = loop {
        if let Some(text) = status_text(&source, &task, "last_error").await.filter(|t| t.contains("message too large"))
        {
            break text;
        }
        assert!(Instant::now() < deadline, "trempy.status() does not report the oversized message");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("last_error: {last_error}");
    assert!(
        last_error.contains("max_message_size")
            && last_error.contains("rabbitmq.conf")
            && last_error.contains("nothing is skipped"),
        "{last_error}"
    );
    let target = target().await;
    let applied = text_rows(&target, &format!("SELECT id::text FROM {t} ORDER BY id")).await;
    assert!(applied.len() <= 1, "rows after the refused one were applied: {applied:?}");

    // The operator raises the limit: the task resumes by itself, in order, nothing skipped.
    drop(restore);
    let fp = wait_converged(&[(&t, "id")], Duration::from_secs(180)).await;
    assert_eq!(fp[0].0, 3);
    drop_task(&source, &task).await;
}
