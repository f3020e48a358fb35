//! The measured table `bench.t` on both sides: creating it, writing the backlogs, waiting until
//! the target has every row, and the binary COPY pipe that is the ceiling for moving its rows.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, pin_mut};
use tokio_postgres::Client;

use crate::config::SyncCommit;
use crate::stack::{self, Stack};

/// One row's content from its id: every build of `n` rows is identical.
pub const ROW_OF_G: &str = "g, (g % 100000)::int, md5(g::text), \
     timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', ((g % 1000000) / 100.0)::numeric(12,2)";

/// `bench.t` empty on both sides, and the source's id sequence (the latency writer's).
pub async fn recreate(stack: &Stack) {
    let ddl = "CREATE SCHEMA IF NOT EXISTS bench;
        DROP TABLE IF EXISTS bench.t;
        CREATE TABLE bench.t (id bigint PRIMARY KEY, a int, b text, c timestamptz, d numeric(12,2));";
    stack::run(
        &stack.source,
        &format!("{ddl} DROP SEQUENCE IF EXISTS bench.t_id_seq; CREATE SEQUENCE bench.t_id_seq;"),
    )
    .await;
    stack::run(&stack.target, ddl).await;
}

/// Inserts rows 1..=`rows` into `bench.t` at the source, committing every `per_txn` rows.
pub async fn build_backlog(stack: &Stack, rows: u64, per_txn: u64, sync_commit: SyncCommit) {
    with_sync_commit(
        stack,
        sync_commit,
        &format!(
            "DO $$
         DECLARE i bigint := 0;
         BEGIN
             WHILE i < {rows} LOOP
                 INSERT INTO bench.t (id, a, b, c, d)
                 SELECT {ROW_OF_G} FROM generate_series(i + 1, least(i + {per_txn}, {rows})) AS g;
                 COMMIT;
                 i := i + {per_txn};
             END LOOP;
         END $$"
        ),
    )
    .await;
}

/// Inserts rows 1..=`rows` into `bench.t` at the source in one transaction.
pub async fn one_transaction(stack: &Stack, rows: u64, sync_commit: SyncCommit) {
    let insert = format!("INSERT INTO bench.t (id, a, b, c, d) SELECT {ROW_OF_G} FROM generate_series(1, {rows}) AS g");
    with_sync_commit(stack, sync_commit, &insert).await;
}

/// Runs `sql` alone (a DO block that commits must not share a statement string) with the
/// session's `synchronous_commit` set for it.
async fn with_sync_commit(stack: &Stack, sync_commit: SyncCommit, sql: &str) {
    stack::run(&stack.source, &format!("SET synchronous_commit = {}", sync_commit.as_sql())).await;
    stack::run(&stack.source, sql).await;
    stack::run(&stack.source, "RESET synchronous_commit").await;
}

/// The fingerprint of `bench.t` (row count and a hash of every row, in id order).
pub async fn checksum(client: &Client) -> (i64, String) {
    trempy_e2e::fingerprint(client, "bench.t", "id").await
}

/// Waits until the target's `bench.t` has exactly the rows of `want` (polling `max(id)`, cheap on
/// the key, before each fingerprint); `check` runs between polls. Returns the seconds from `t0`
/// to the poll that saw everything.
pub async fn wait_converged(
    stack: &Stack,
    t0: Instant,
    rows: u64,
    want: &(i64, String),
    timeout: Duration,
    mut check: impl FnMut(),
) -> f64 {
    let ready = format!("SELECT coalesce(max(id), 0) = {rows} FROM bench.t");
    let seen = trempy_e2e::wait_for_fingerprint(&stack.target, "bench.t", "id", want, &ready, timeout, || {
        check();
        true
    })
    .await;
    let seen = seen.unwrap_or_else(|last| {
        panic!("the target's bench.t did not converge within {timeout:?}: (rows, hash) {last:?}, wanted {want:?}")
    });
    seen.duration_since(t0).as_secs_f64()
}

/// Copies the rows of `query` at the source into `into` at the target with a binary COPY pipe;
/// returns the seconds it took.
pub async fn copy_pipe(stack: &Stack, query: &str, into: &str) -> f64 {
    let t0 = Instant::now();
    let rows = stack
        .source
        .copy_out(format!("COPY ({query}) TO STDOUT (FORMAT binary)").as_str())
        .await
        .expect("COPY TO STDOUT failed");
    let sink = stack
        .target
        .copy_in::<_, Bytes>(format!("COPY {into} FROM STDIN (FORMAT binary)").as_str())
        .await
        .expect("COPY FROM STDIN failed");
    pin_mut!(rows, sink);
    while let Some(chunk) = rows.next().await {
        sink.send(chunk.expect("the COPY pipe's source failed")).await.expect("the COPY pipe's target failed");
    }
    sink.as_mut().finish().await.expect("the COPY pipe's target failed");
    t0.elapsed().as_secs_f64()
}
