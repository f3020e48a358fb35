//! CDC catch-up (`batch`, `txns`): a backlog written while the consumer is stopped but its slot
//! holds the position, then consumed; and end to end, with the consumer running meanwhile.
//! TREMpy: decode+publish (start_task until every change is confirmed by RabbitMQ), then the
//! drain (trempy-applier until the target has every row). Native: a disabled subscription's
//! slot, then ENABLE.

use std::time::{Duration, Instant};

use serde_json::json;

use super::Run;
use crate::host::{self, Pid};
use crate::native;
use crate::report::{Figure, Unit, per_million, rate, ratio, sum};
use crate::stack;
use crate::table;
use crate::trempy_side::{self, Applier};

/// CPU seconds between two tick readings.
struct Ticks {
    hz: f64,
}

impl Ticks {
    fn seconds(&self, after: Option<u64>, before: Option<u64>) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)]
        Some(after?.checked_sub(before?)? as f64 / self.hz)
    }
}

/// What the TREMpy half of a catch-up measured.
struct TrempyCatchUp {
    build_s: f64,
    startup_s: f64,
    publish_s: f64,
    drain_s: f64,
    messages: i64,
    lag_bytes: String,
    queue_messages: u32,
    slot_moves: (String, String),
    progress: String,
    worker_s: Option<f64>,
    worker_changed: bool,
    /// CPU seconds of the walsender that decoded for the worker.
    walsender_s: Option<f64>,
    /// Bytes that walsender read (WAL, mostly), and the WAL the backlog wrote.
    walsender_read: Option<u64>,
    backlog_wal: Option<u64>,
    beam_s: Option<f64>,
    beam_publish_s: Option<f64>,
    applier_s: Option<f64>,
    backend_s: Option<f64>,
    machine_s: Option<f64>,
    machine_publish_s: Option<f64>,
}

/// Runs a catch-up case of `rows` rows in transactions of `per_txn` rows.
pub async fn run(run: &mut Run<'_>, name: &str, rows: u64, per_txn: u64) {
    let txns = rows.div_ceil(per_txn);
    run.say(&format!("== case {name}: {rows} rows in {txns} transactions of {per_txn} row(s)"));
    run.begin_case().await;
    let ticks = Ticks { hz: run.clk_tck };

    let (t, want) = trempy_catch_up(run, name, rows, per_txn, txns, &ticks).await;
    let (native_s, native_build_s, ws_s, aw_s, nm_s, ws_read) =
        native_catch_up(run, name, rows, per_txn, &want, &ticks).await;
    let (e2e_s, e2e_build_s) = trempy_end_to_end(run, name, rows, per_txn, &want).await;
    let (native_e2e_s, native_e2e_build_s) = native_end_to_end(run, name, rows, per_txn, &want).await;

    let label = format!("{name}: {rows} rows / {txns} txns");
    run.check_case(&label).await;
    let common =
        json!({"rows": rows, "txns": txns, "rows_per_txn": per_txn, "sync_commit": run.settings.sync_commit.as_sql()});
    let throughput = |metric: &str, seconds: Option<f64>, anchor: &str, anchor_s: Option<f64>| {
        Figure::new(&label, metric, Unit::RowsPerS, rate(rows, seconds))
            .anchor(anchor, rate(rows, anchor_s))
            .extra(common.clone())
            .extra(json!({"trempy_s": seconds, "anchor_s": anchor_s}))
    };
    let total_s = t.publish_s + t.drain_s;
    let wanted = if per_txn == 1 { 1.5 } else { 1.0 };
    let total = throughput("catch-up total (publish + drain)", Some(total_s), "native sub catch-up", Some(native_s));
    let met = total.ratio().map(|r| r >= wanted);
    run.figure(&total.target(&format!(">= {wanted:.1}x native"), met));
    run.figure(
        &throughput("decode+publish (slot -> RabbitMQ)", Some(t.publish_s), "native sub catch-up", Some(native_s))
            .extra(json!({"worker_start_s": t.startup_s})),
    );
    run.figure(
        &throughput("apply drain (queue -> target)", Some(t.drain_s), "native sub catch-up", Some(native_s))
            .extra(json!({"messages_published": t.messages, "queue_messages": t.queue_messages})),
    );
    run.figure(
        &throughput("end-to-end (applier live)", Some(e2e_s), "native end-to-end", Some(native_e2e_s))
            .extra(json!({"trempy_build_s": e2e_build_s, "native_build_s": native_e2e_build_s})),
    );

    // CPU per million changes over the catch-up
    let apply_s = sum(&[t.applier_s, t.backend_s]);
    let total_cpu = sum(&[t.worker_s, t.beam_s, apply_s]);
    let native_cpu = sum(&[ws_s, aw_s]);
    let cpu = |metric: &str, value: Option<f64>| {
        Figure::new(&label, metric, Unit::CpuSPerMillion, per_million(value, rows)).extra(common.clone())
    };
    run.figure(
        &cpu("CPU: task worker (decode+publish)", t.worker_s)
            .anchor("native walsender", per_million(ws_s, rows))
            .extra(json!({"trempy_cpu_s": t.worker_s, "anchor_cpu_s": ws_s, "worker_pid_changed": t.worker_changed})),
    );
    run.figure(
        &cpu("CPU: the task's walsender (decoding)", t.walsender_s)
            .anchor("native walsender", per_million(ws_s, rows))
            .extra(json!({"trempy_cpu_s": t.walsender_s, "anchor_cpu_s": ws_s})),
    );
    let decode_cpu = sum(&[t.worker_s, t.walsender_s]);
    run.figure(
        &cpu("CPU: task worker + its walsender", decode_cpu)
            .anchor("native walsender", per_million(ws_s, rows))
            .extra(json!({"trempy_cpu_s": decode_cpu, "anchor_cpu_s": ws_s})),
    );
    #[allow(clippy::cast_precision_loss)]
    let mib_per_million = |bytes: Option<u64>| {
        bytes
            .filter(|_| rows > 0)
            .map(|b| Unit::MibPerMillion.round(b as f64 / 1_048_576.0 * 1_000_000.0 / rows as f64))
    };
    run.figure(
        &Figure::new(&label, "WAL read by decoding", Unit::MibPerMillion, mib_per_million(t.walsender_read))
            .anchor("native walsender", mib_per_million(ws_read))
            .extra(common.clone())
            .extra(json!({"trempy_read_bytes": t.walsender_read, "anchor_read_bytes": ws_read,
                          "backlog_wal_bytes": t.backlog_wal, "backlog_wal_mib_per_1m": mib_per_million(t.backlog_wal)})),
    );
    run.figure(
        &cpu("CPU: RabbitMQ beam.smp", t.beam_s)
            .extra(json!({"trempy_cpu_s": t.beam_s, "during_publish_cpu_s": t.beam_publish_s})),
    );
    run.figure(
        &cpu("CPU: applier + its target backends", apply_s)
            .anchor("native apply worker", per_million(aw_s, rows))
            .extra(json!({"applier_cpu_s": t.applier_s, "target_backends_cpu_s": t.backend_s, "anchor_cpu_s": aw_s})),
    );
    run.figure(
        &cpu("CPU: all TREMpy processes", total_cpu)
            .anchor("walsender + apply worker", per_million(native_cpu, rows))
            .extra(json!({"trempy_cpu_s": total_cpu, "anchor_cpu_s": native_cpu,
                          "machine_busy_cpu_s": t.machine_s, "anchor_machine_busy_cpu_s": nm_s})),
    );

    // the COPY pipe (batch only): the same rows, source -> target
    let mut copy_note = String::new();
    if name == "batch" {
        stack::run(
            &run.stack.target,
            "DROP TABLE IF EXISTS bench.t2; CREATE TABLE bench.t2 (LIKE bench.t INCLUDING ALL)",
        )
        .await;
        run.say(&format!("[{name}] COPY pipe: {rows} rows"));
        let copy_s = table::copy_pipe(run.stack, "SELECT * FROM bench.t", "bench.t2").await;
        let copied = stack::int(&run.stack.target, "SELECT count(*) FROM bench.t2").await;
        assert_eq!(u64::try_from(copied).ok(), Some(rows), "the COPY pipe did not copy {rows} rows");
        stack::run(&run.stack.target, "DROP TABLE bench.t2").await;
        run.say(&format!("[{name}] COPY pipe: {copy_s:.3}s"));
        run.figure(&throughput("apply drain (queue -> target)", Some(t.drain_s), "COPY binary pipe", Some(copy_s)));
        run.figure(
            &Figure::new(&format!("full load: {rows} rows"), "see the load case", Unit::RowsPerS, None)
                .anchor("COPY binary pipe", rate(rows, Some(copy_s)))
                .extra(json!({"rows": rows, "anchor_s": copy_s})),
        );
        copy_note = format!("; COPY pipe {copy_s:.3}s");
    }

    let worker_note =
        if t.worker_changed { " (the worker changed: CPU of the first worker only, a lower bound)" } else { "" };
    run.detail(format!(
        "{label}: backlog write {:.3}s (native {native_build_s:.3}s); TREMpy decode+publish {:.3}s (of which worker start {:.3}s), drain {:.3}s; native catch-up {native_s:.3}s",
        t.build_s, t.publish_s, t.startup_s, t.drain_s
    ));
    run.detail(format!(
        "{label}: during decode+publish the slot's restart_lsn moved {}, its confirmed_flush_lsn {}",
        t.slot_moves.0, t.slot_moves.1
    ));
    let mib = |b: Option<u64>| {
        #[allow(clippy::cast_precision_loss)]
        b.map_or_else(|| "n/a".to_owned(), |b| format!("{:.1} MiB", b as f64 / 1_048_576.0))
    };
    run.detail(format!(
        "{label}: the backlog wrote {} of WAL; the task's walsender read {} (its CPU {} s), the native walsender {} (its CPU {} s)",
        mib(t.backlog_wal),
        mib(t.walsender_read),
        t.walsender_s.map_or_else(|| "n/a".to_owned(), |s| format!("{s:.2}")),
        mib(ws_read),
        ws_s.map_or_else(|| "n/a".to_owned(), |s| format!("{s:.2}"))
    ));
    #[allow(clippy::cast_precision_loss)]
    let per_message = ratio(Some(rows as f64), u64::try_from(t.messages).ok().map(|m| m as f64))
        .map_or("-".to_owned(), |r| format!("{r:.0}"));
    run.detail(format!(
        "{label}: messages_published {} (lag_bytes after publish {}), RabbitMQ queue depth before the applier {}, rows/message {per_message}, applier_progress (txns, changes) {}",
        t.messages, t.lag_bytes, t.queue_messages, t.progress
    ));
    run.detail(format!(
        "{label}: end-to-end TREMpy {e2e_s:.3}s (backlog written in {e2e_build_s:.3}s), native {native_e2e_s:.3}s (written in {native_e2e_build_s:.3}s){copy_note}"
    ));
    let show = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"));
    run.detail(format!(
        "{label}: CPU s over the catch-up: task worker {}{worker_note}, beam.smp {} (during decode+publish {}), applier {}, its target backends {}; whole machine busy {} CPU s during decode+publish, {} in all ({total_s:.3} s). Native: walsender {}, apply worker {}; machine busy {} CPU s in {native_s:.3} s",
        show(t.worker_s), show(t.beam_s), show(t.beam_publish_s), show(t.applier_s), show(t.backend_s),
        show(t.machine_publish_s), show(t.machine_s), show(ws_s), show(aw_s), show(nm_s)
    ));
}

/// The backlog with the task stopped; then decode+publish; then the drain.
async fn trempy_catch_up(
    run: &mut Run<'_>,
    name: &str,
    rows: u64,
    per_txn: u64,
    txns: u64,
    ticks: &Ticks,
) -> (TrempyCatchUp, (i64, String)) {
    let stack = run.stack;
    let task = format!("bench_{name}");
    table::recreate(stack).await;
    trempy_side::create_cdc_task(stack, &task).await;
    trempy_side::stop_task(stack, &task).await;
    run.say(&format!("[{name}] TREMpy: building the backlog (task stopped, slot kept)"));
    let wal_position = "SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint";
    let wal_before = stack::int(&stack.source, wal_position).await;
    let t0 = Instant::now();
    table::build_backlog(stack, rows, per_txn, run.settings.sync_commit).await;
    let build_s = t0.elapsed().as_secs_f64();
    let backlog_wal = u64::try_from(stack::int(&stack.source, wal_position).await - wal_before).ok();
    let want = table::checksum(&stack.source).await;
    run.say(&format!("[{name}] TREMpy: backlog built in {build_s:.3}s; start_task, waiting for decode+publish"));
    let slot = format!("trempy_{task}");
    let slot_before = stack
        .source
        .query_one("SELECT restart_lsn, confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await
        .expect("the task has no slot");
    let (restart_before, flush_before): (tokio_postgres::types::PgLsn, tokio_postgres::types::PgLsn) =
        (slot_before.get(0), slot_before.get(1));
    let beam = stack.rabbit_pid();
    let m0 = host::machine_busy();
    let b0 = beam.and_then(host::cpu_ticks);
    let t0 = Instant::now();
    trempy_side::start_task(stack, &task).await;
    let startup_s = t0.elapsed().as_secs_f64();
    // start_task launches a new worker: its whole CPU time is this catch-up's
    let worker = trempy_side::worker_pid(stack, &task).await;
    trempy_side::wait_published(stack, &task, rows, txns, run.timeout()).await;
    let publish_s = t0.elapsed().as_secs_f64();
    // start_task opened a new stream: its walsender's whole CPU time and reads are this catch-up's
    let walsender = trempy_side::walsender_pid(stack, &task).await;
    let walsender_s = ticks.seconds(walsender.and_then(host::cpu_ticks), Some(0));
    let walsender_read = walsender.and_then(host::read_chars);
    let w1 = worker.and_then(host::cpu_ticks);
    let bp = beam.and_then(host::cpu_ticks);
    let m1 = host::machine_busy();
    let status = stack
        .source
        .query_one(
            "SELECT messages_published, coalesce(lag_bytes::text, '-') FROM trempy.status() WHERE task_name = $1",
            &[&task],
        )
        .await
        .expect("trempy.status() failed");
    let (messages, lag_bytes): (i64, String) = (status.get(0), status.get(1));
    let moves = stack
        .source
        .query_one(
            "SELECT pg_size_pretty(pg_wal_lsn_diff(restart_lsn, $2)), pg_size_pretty(pg_wal_lsn_diff(confirmed_flush_lsn, $3))
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot, &restart_before, &flush_before],
        )
        .await
        .expect("the task's slot is gone");
    // RabbitMQ refreshes quorum queue counters every few seconds: give them up to 10 s to catch
    // up with messages_published (not timed, and not counted as CPU: the probes cost the node too)
    let queue = format!("trempy_queue_{task}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut queue_messages = stack.queue_messages(&queue).await;
    while i64::from(queue_messages) < messages && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        queue_messages = stack.queue_messages(&queue).await;
    }
    run.say(&format!(
        "[{name}] TREMpy: published in {publish_s:.3}s (messages_published {messages}, lag_bytes {lag_bytes}; queue depth {queue_messages}); starting the applier"
    ));
    let b1 = beam.and_then(host::cpu_ticks);
    let m3 = host::machine_busy();
    let t0 = Instant::now();
    let mut applier = Applier::start(stack, &task, &run.settings.applier_args);
    let drain_s = table::wait_converged(stack, t0, rows, &want, run.timeout(), || applier.assert_alive()).await;
    let a_cpu = host::cpu_ticks(applier.pid);
    // a fresh applier: the whole CPU time of its sessions is this drain's
    let ab_cpu = host::ticks_since(&applier.backend_pids(stack).await.into_iter().map(|p| (p, 0)).collect::<Vec<_>>());
    let w2 = worker.and_then(host::cpu_ticks);
    let b2 = beam.and_then(host::cpu_ticks);
    let m2 = host::machine_busy();
    let worker_end = trempy_side::worker_pid(stack, &task).await;
    let progress = stack::text(
        &stack.target,
        &format!("SELECT transactions_applied || ' ' || changes_applied FROM trempy.applier_progress WHERE task_name = '{task}'"),
    )
    .await;
    applier.stop().await;
    run.say(&format!("[{name}] TREMpy: drained in {drain_s:.3}s (applier_progress transactions, changes: {progress})"));
    trempy_side::drop_task(stack, &task).await;
    let worker_changed = worker.is_none() || worker != worker_end || w2.is_none();
    let busy = |after: Option<u64>, before: Option<u64>| ticks.seconds(after, before);
    (
        TrempyCatchUp {
            build_s,
            startup_s,
            publish_s,
            drain_s,
            messages,
            lag_bytes,
            queue_messages,
            slot_moves: (moves.get(0), moves.get(1)),
            progress,
            worker_s: ticks.seconds(w2.or(w1), Some(0)),
            worker_changed,
            walsender_s,
            walsender_read,
            backlog_wal,
            beam_s: sum(&[busy(bp, b0), busy(b2, b1)]),
            beam_publish_s: busy(bp, b0),
            applier_s: ticks.seconds(a_cpu, Some(0)),
            backend_s: ticks.seconds(ab_cpu, Some(0)),
            machine_s: sum(&[busy(m1, m0), busy(m2, m3)]),
            machine_publish_s: busy(m1, m0),
        },
        want,
    )
}

/// The backlog behind a disabled subscription; ENABLE; until the target has it all. Returns the
/// catch-up and build seconds, the CPU seconds of the walsender, the apply worker and the
/// machine, and the bytes the walsender read.
async fn native_catch_up(
    run: &mut Run<'_>,
    name: &str,
    rows: u64,
    per_txn: u64,
    want: &(i64, String),
    ticks: &Ticks,
) -> (f64, f64, Option<f64>, Option<f64>, Option<f64>, Option<u64>) {
    let stack = run.stack;
    let sub = format!("bench_sub_{name}");
    table::recreate(stack).await;
    native::create_subscription(stack, &sub, false).await;
    run.say(&format!("[{name}] native: building the backlog (subscription disabled, slot created)"));
    let t0 = Instant::now();
    table::build_backlog(stack, rows, per_txn, run.settings.sync_commit).await;
    let build_s = t0.elapsed().as_secs_f64();
    assert_eq!(&table::checksum(&stack.source).await, want, "the native backlog differs from the TREMpy one");
    run.say(&format!("[{name}] native: backlog built in {build_s:.3}s; ENABLE, waiting for the target"));
    let nm0 = host::machine_busy();
    let t0 = Instant::now();
    native::enable(stack, &sub).await;
    let native_s = table::wait_converged(stack, t0, rows, want, run.timeout(), || {}).await;
    // ENABLE starts both the apply worker and its walsender: their whole CPU time is this catch-up's
    let ws: Option<Pid> = native::walsender_pid(stack, &sub).await;
    let aw: Option<Pid> = native::apply_worker_pid(stack, &sub).await;
    let ws_s = ticks.seconds(ws.and_then(host::cpu_ticks), Some(0));
    let ws_read = ws.and_then(host::read_chars);
    let aw_s = ticks.seconds(aw.and_then(host::cpu_ticks), Some(0));
    let nm_s = ticks.seconds(host::machine_busy(), nm0);
    run.say(&format!("[{name}] native: caught up in {native_s:.3}s"));
    native::drop_subscription(stack, &sub).await;
    (native_s, build_s, ws_s, aw_s, nm_s, ws_read)
}

/// Task and applier running while the backlog is written: from the first insert to the target
/// having it all. Returns that and the seconds the backlog took to write.
async fn trempy_end_to_end(run: &mut Run<'_>, name: &str, rows: u64, per_txn: u64, want: &(i64, String)) -> (f64, f64) {
    let stack = run.stack;
    let task = format!("bench_{name}_e2e");
    table::recreate(stack).await;
    trempy_side::create_cdc_task(stack, &task).await;
    let mut applier = Applier::start(stack, &task, &run.settings.applier_args);
    applier.wait_connected().await;
    run.say(&format!("[{name}] TREMpy end-to-end: building the backlog with the applier running"));
    let t0 = Instant::now();
    table::build_backlog(stack, rows, per_txn, run.settings.sync_commit).await;
    let build_s = t0.elapsed().as_secs_f64();
    let e2e_s = table::wait_converged(stack, t0, rows, want, run.timeout(), || applier.assert_alive()).await;
    applier.stop().await;
    run.say(&format!(
        "[{name}] TREMpy end-to-end: {e2e_s:.3}s from the first insert (backlog written in {build_s:.3}s)"
    ));
    trempy_side::drop_task(stack, &task).await;
    (e2e_s, build_s)
}

/// An enabled subscription while the backlog is written.
async fn native_end_to_end(run: &mut Run<'_>, name: &str, rows: u64, per_txn: u64, want: &(i64, String)) -> (f64, f64) {
    let stack = run.stack;
    let sub = format!("bench_sub_{name}_e2e");
    table::recreate(stack).await;
    native::create_subscription(stack, &sub, true).await;
    native::wait_streaming(stack, &sub).await;
    run.say(&format!("[{name}] native end-to-end: building the backlog with the subscription streaming"));
    let t0 = Instant::now();
    table::build_backlog(stack, rows, per_txn, run.settings.sync_commit).await;
    let build_s = t0.elapsed().as_secs_f64();
    let e2e_s = table::wait_converged(stack, t0, rows, want, run.timeout(), || {}).await;
    run.say(&format!(
        "[{name}] native end-to-end: {e2e_s:.3}s from the first insert (backlog written in {build_s:.3}s)"
    ));
    native::drop_subscription(stack, &sub).await;
    (e2e_s, build_s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_are_unknown_when_a_reading_is_missing_or_went_backwards() {
        let ticks = Ticks { hz: 100.0 };
        assert_eq!(ticks.seconds(Some(250), Some(50)), Some(2.0));
        assert_eq!(ticks.seconds(None, Some(50)), None);
        assert_eq!(ticks.seconds(Some(10), Some(50)), None);
    }
}
