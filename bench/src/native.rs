//! The anchor: PostgreSQL's own logical replication of `bench.t`, a publication at the source
//! and a subscription at the target.

use std::time::{Duration, Instant};

use crate::host::Pid;
use crate::stack::{self, Stack};

/// Every subscription the benchmark creates, by exact name; each one's publication is named
/// `bench_pub_…`.
pub const SUBSCRIPTIONS: [&str; 6] = [
    "bench_sub_batch",
    "bench_sub_txns",
    "bench_sub_batch_e2e",
    "bench_sub_txns_e2e",
    "bench_sub_lat",
    "bench_sub_rss",
];

fn publication(sub: &str) -> String {
    sub.replacen("bench_sub_", "bench_pub_", 1)
}

/// A publication of `bench.t` at the source and a subscription (with its slot, no initial copy)
/// at the target, enabled or not. The password reaches the target only inside the statement,
/// from a session that logs no statements.
pub async fn create_subscription(stack: &Stack, sub: &str, enabled: bool) {
    let publication = publication(sub);
    stack::run(&stack.source, &format!("CREATE PUBLICATION {publication} FOR TABLE bench.t")).await;
    let target = &stack.target;
    stack::run(target, "SET log_min_error_statement = panic; SET log_statement = 'none'").await;
    let statement: String = target
        .query_one(
            "SELECT format('CREATE SUBSCRIPTION %I CONNECTION %L PUBLICATION %I \
                            WITH (enabled = %s, copy_data = false, create_slot = true)', $1::text, $2::text, $3::text, $4::text)",
            &[&sub, &stack.source_conninfo(), &publication, &enabled.to_string()],
        )
        .await
        .expect("formatting CREATE SUBSCRIPTION failed")
        .get(0);
    let created = target.batch_execute(&statement).await;
    stack::run(target, "RESET log_min_error_statement; RESET log_statement").await;
    // the error may quote the statement: name the subscription only
    if let Err(e) = created {
        panic!("CREATE SUBSCRIPTION {sub} failed: {}", e.as_db_error().map_or("connection lost", |d| d.message()));
    }
}

pub async fn enable(stack: &Stack, sub: &str) {
    stack::run(&stack.target, &format!("ALTER SUBSCRIPTION {sub} ENABLE")).await;
}

/// Waits until the subscription's walsender streams.
pub async fn wait_streaming(stack: &Stack, sub: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let sql =
        format!("SELECT count(*) FROM pg_stat_replication WHERE application_name = '{sub}' AND state = 'streaming'");
    while stack::int(&stack.source, &sql).await != 1 {
        assert!(Instant::now() < deadline, "subscription {sub} is not streaming after 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn walsender_pid(stack: &Stack, sub: &str) -> Option<Pid> {
    stack::pid(&stack.source, &format!("SELECT pid FROM pg_stat_replication WHERE application_name = '{sub}' LIMIT 1"))
        .await
}

pub async fn apply_worker_pid(stack: &Stack, sub: &str) -> Option<Pid> {
    let sql = format!("SELECT pid FROM pg_stat_subscription WHERE subname = '{sub}' AND relid IS NULL LIMIT 1");
    stack::pid(&stack.target, &sql).await
}

/// Drops the subscription (and its slot at the source), its publication and a leftover slot.
pub async fn drop_subscription(stack: &Stack, sub: &str) {
    stack::run(&stack.target, &format!("DROP SUBSCRIPTION IF EXISTS {sub}")).await;
    stack::run(
        &stack.source,
        &format!(
            "DROP PUBLICATION IF EXISTS {publication};
             SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
              WHERE slot_name = '{sub}' AND NOT active",
            publication = publication(sub)
        ),
    )
    .await;
}
