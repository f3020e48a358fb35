//! Steady latency (`latency`): pgbench writes one row per transaction at `rate` rows/s with the
//! consumer running. Per row: target commit time - source commit time. The source's comes from
//! `pg_xact_commit_timestamp(xmin)` (track_commit_timestamp is on there); the target's from the
//! commit record of the transaction that wrote the row, read from the target's WAL with
//! pg_walinspect (a physical slot keeps that WAL meanwhile). Percentiles by HdrHistogram.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio_postgres::types::PgLsn;

use super::Run;
use crate::host::{self, Pid};
use crate::native;
use crate::report::{Figure, Unit, per_million, sum};
use crate::stack::{self, Stack};
use crate::table;
use crate::trempy_side::{self, Applier};

/// The physical slot at the target that keeps the WAL the latencies are read from.
pub const WALHOLD_SLOT: &str = "bench_walhold";
const TASK: &str = "bench_lat";
const SUBSCRIPTION: &str = "bench_sub_lat";

/// What pgbench reported about its run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WriterSummary {
    pub processed: u64,
    pub failed: Option<String>,
    pub latency_avg: String,
    pub schedule_lag: String,
    /// The largest delay behind the rate schedule, in ms.
    pub max_lag_ms: Option<f64>,
    pub tps: Option<f64>,
}

impl WriterSummary {
    /// Reads pgbench's closing summary.
    pub fn parse(output: &str) -> Self {
        let mut summary = Self::default();
        for line in output.lines() {
            if let Some(n) = line.strip_prefix("number of transactions actually processed: ") {
                summary.processed = n.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
            } else if let Some(f) = line.strip_prefix("number of failed transactions: ") {
                summary.failed = (!f.starts_with("0 ")).then(|| f.to_owned());
            } else if let Some(l) = line.strip_prefix("latency average = ") {
                l.clone_into(&mut summary.latency_avg);
            } else if let Some(g) = line.strip_prefix("rate limit schedule lag: ") {
                g.clone_into(&mut summary.schedule_lag);
                summary.max_lag_ms = g.split_once("(max ").and_then(|(_, m)| m.split(')').next()?.trim().parse().ok());
            } else if let Some(t) = line.strip_prefix("tps = ") {
                summary.tps = t.split_whitespace().next().and_then(|t| t.parse().ok());
            }
        }
        summary
    }

    fn describe(&self) -> String {
        let tps = self.tps.map_or_else(|| "?".to_owned(), |t| format!("{t:.0}"));
        let failed = self.failed.as_ref().map_or_else(String::new, |f| format!(", failed {f}"));
        format!(
            "{} rows at {tps} rows/s, pgbench latency avg {}, schedule lag {}{failed}",
            self.processed, self.latency_avg, self.schedule_lag
        )
    }
}

/// Per-row commit-to-commit latencies.
#[derive(Clone, Debug, PartialEq)]
pub struct Latencies {
    pub rows: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub avg_ms: f64,
}

impl Latencies {
    /// Summarises latencies given in microseconds (negative ones, clock noise, count as 0).
    pub fn of(micros: impl IntoIterator<Item = i64>) -> Self {
        // 1 µs .. 1 h at 3 significant digits; longer values saturate
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        for us in micros {
            histogram.saturating_record(u64::try_from(us).unwrap_or(0).max(1));
        }
        #[allow(clippy::cast_precision_loss)]
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            rows: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p95_ms: ms(histogram.value_at_quantile(0.95)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
            avg_ms: histogram.mean() / 1000.0,
        }
    }
}

/// What one consumer's run measured.
struct Measured {
    latencies: Latencies,
    target_txns: i64,
    writer: WriterSummary,
    tail_s: f64,
    cpu_s: Vec<Option<f64>>,
}

pub async fn run(run: &mut Run<'_>, rate: u64) {
    let seconds = run.settings.seconds;
    run.say(&format!("== case latency: {rate} rows/s for {seconds}s, one row per transaction"));
    run.begin_case().await;
    let stack = run.stack;
    let walinspect = ensure_walinspect(stack).await;
    drop_walhold(stack).await;
    stack::run(&stack.target, &format!("SELECT pg_create_physical_replication_slot('{WALHOLD_SLOT}', true)")).await;

    table::recreate(stack).await;
    trempy_side::create_cdc_task(stack, TASK).await;
    let mut applier = Applier::start(stack, TASK, &run.settings.applier_args);
    applier.wait_connected().await;
    // one group of processes per CPU figure; the applier opens several target sessions
    let pids = [
        trempy_side::worker_pid(stack, TASK)
            .await
            .into_iter()
            .chain(trempy_side::wait_walsender(stack, TASK).await)
            .collect(),
        stack.rabbit_pid().into_iter().collect(),
        vec![applier.pid],
        applier.backend_pids(stack).await,
    ];
    let trempy = measure(run, "TREMpy", rate, &walinspect, &pids, &mut || applier.assert_alive()).await;
    applier.stop().await;
    trempy_side::drop_task(stack, TASK).await;

    table::recreate(stack).await;
    native::create_subscription(stack, SUBSCRIPTION, true).await;
    native::wait_streaming(stack, SUBSCRIPTION).await;
    let pids = [
        native::walsender_pid(stack, SUBSCRIPTION).await.into_iter().collect(),
        native::apply_worker_pid(stack, SUBSCRIPTION).await.into_iter().collect(),
    ];
    let native = measure(run, "native", rate, &walinspect, &pids, &mut || {}).await;
    native::drop_subscription(stack, SUBSCRIPTION).await;
    drop_walhold(stack).await;

    let label = format!("latency: {rate} rows/s for {seconds}s");
    run.check_case(&label).await;
    let (t, n) = (&trempy.latencies, &native.latencies);
    let common = json!({"rate": rate, "seconds": seconds, "clients": run.settings.clients, "rows": t.rows, "anchor_rows": n.rows});
    let figure = |metric: &str, ours: f64, theirs: f64| {
        Figure::new(&label, metric, Unit::Ms, Some(ours))
            .anchor("native sub streaming", Some(theirs))
            .extra(common.clone())
    };
    run.figure(&figure("commit-to-apply p50", t.p50_ms, n.p50_ms).target("<= 10 ms", Some(t.p50_ms <= 10.0)));
    run.figure(&figure("commit-to-apply p95", t.p95_ms, n.p95_ms));
    run.figure(
        &figure("commit-to-apply p99", t.p99_ms, n.p99_ms).target("<= 5x native", Some(t.p99_ms <= 5.0 * n.p99_ms)),
    );
    run.figure(
        &figure("commit-to-apply max", t.max_ms, n.max_ms)
            .extra(json!({"trempy_avg_ms": t.avg_ms, "anchor_avg_ms": n.avg_ms})),
    );

    let at = |cpu: &[Option<f64>], i: usize| cpu.get(i).copied().flatten();
    let (c_w, c_beam, c_a, c_ab) =
        (at(&trempy.cpu_s, 0), at(&trempy.cpu_s, 1), at(&trempy.cpu_s, 2), at(&trempy.cpu_s, 3));
    let (c_ws, c_aw) = (at(&native.cpu_s, 0), at(&native.cpu_s, 1));
    let c_apply = sum(&[c_a, c_ab]);
    let c_total = sum(&[c_w, c_beam, c_apply]);
    let c_native = sum(&[c_ws, c_aw]);
    let cpu = |metric: &str, ours: Option<f64>, anchor: &str, theirs: Option<f64>| {
        Figure::new(&label, metric, Unit::CpuSPerMillion, per_million(ours, t.rows))
            .anchor(anchor, per_million(theirs, n.rows))
            .extra(common.clone())
    };
    run.figure(
        &cpu("CPU: task worker + its walsender", c_w, "native walsender", c_ws)
            .extra(json!({"trempy_cpu_s": c_w, "anchor_cpu_s": c_ws})),
    );
    run.figure(
        &cpu("CPU: applier + its target backends", c_apply, "native apply worker", c_aw)
            .extra(json!({"applier_cpu_s": c_a, "target_backends_cpu_s": c_ab, "anchor_cpu_s": c_aw})),
    );
    run.figure(
        &cpu("CPU: all TREMpy processes", c_total, "walsender + apply worker", c_native)
            .extra(json!({"trempy_cpu_s": c_total, "beam_cpu_s": c_beam, "anchor_cpu_s": c_native})),
    );
    let show = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"));
    run.detail(format!(
        "{label}: CPU s while writing + draining: task worker and its walsender {}, beam.smp {}, applier {}, its target backends {}; native walsender {}, apply worker {}",
        show(c_w), show(c_beam), show(c_a), show(c_ab), show(c_ws), show(c_aw)
    ));
    for (who, m) in [("TREMpy", &trempy), ("native", &native)] {
        run.detail(format!(
            "{label}: {who} writer {}; {} rows in {} target transactions; avg {:.1} ms; target complete {:.3}s after the writer stopped",
            m.writer.describe(), m.latencies.rows, m.target_txns, m.latencies.avg_ms, m.tail_s
        ));
    }
}

/// Runs the writer while the consumer runs, waits until the target has every row, and reads
/// each row's latency; `check` runs while waiting.
async fn measure(
    run: &mut Run<'_>,
    label: &str,
    rate: u64,
    walinspect: &str,
    pids: &[Vec<Pid>],
    check: &mut (dyn FnMut() + Send),
) -> Measured {
    let stack = run.stack;
    let settings = run.settings;
    let start_lsn: PgLsn =
        stack.target.query_one("SELECT pg_current_wal_insert_lsn()", &[]).await.expect("WAL position").get(0);
    run.say(&format!(
        "[latency] {label}: pgbench -R {} -T {} -c {} (one row per transaction)",
        rate, settings.seconds, settings.clients
    ));
    let before: Vec<Vec<(Pid, u64)>> = pids.iter().map(|group| host::ticks_of(group)).collect();
    let writer = pgbench(stack, run, label, rate).await;
    let t0 = Instant::now();
    let rows = stack::int(&stack.source, "SELECT count(*) FROM bench.t").await;
    assert!(rows > 0, "pgbench wrote no rows");
    let max_id = stack::int(&stack.source, "SELECT max(id) FROM bench.t").await;
    assert_eq!(max_id, rows, "bench.t ids are not 1..{rows} (a pgbench transaction failed?)");
    let rows = u64::try_from(rows).unwrap_or(0);
    let want = table::checksum(&stack.source).await;
    let tail_s = table::wait_converged(stack, t0, rows, &want, run.timeout(), check).await;
    #[allow(clippy::cast_precision_loss)]
    let cpu_s = before.iter().map(|b| host::ticks_since(b).map(|t| t as f64 / run.clk_tck)).collect();
    // pg_walinspect reads only flushed WAL, and the native apply worker commits asynchronously:
    // wait until the WAL writer has flushed every commit record
    let end_lsn: PgLsn =
        stack.target.query_one("SELECT pg_current_wal_insert_lsn()", &[]).await.expect("WAL position").get(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let flushed: bool = stack
            .target
            .query_one("SELECT pg_current_wal_flush_lsn() >= $1", &[&end_lsn])
            .await
            .expect("WAL flush position")
            .get(0);
        if flushed {
            break;
        }
        assert!(Instant::now() < deadline, "the target did not flush its WAL up to {end_lsn}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack::run(&stack.target, "DROP TABLE IF EXISTS bench.lat_src; CREATE TABLE bench.lat_src (id bigint PRIMARY KEY, commit_ts timestamptz NOT NULL)").await;
    table::copy_pipe(stack, "SELECT id, pg_xact_commit_timestamp(xmin) FROM bench.t", "bench.lat_src").await;
    let sql = format!(
        "WITH c AS (
             SELECT xid, split_part(description, ';', 1)::timestamptz AS commit_ts
               FROM {walinspect}.pg_get_wal_records_info($1, $2)
              WHERE resource_manager = 'Transaction' AND record_type = 'COMMIT')
         SELECT (extract(epoch FROM c.commit_ts - s.commit_ts) * 1000000)::bigint
           FROM bench.t t JOIN bench.lat_src s USING (id) JOIN c ON c.xid = t.xmin"
    );
    let latencies =
        stack.target.query(sql.as_str(), &[&start_lsn, &end_lsn]).await.expect("reading the latencies failed");
    let latencies = Latencies::of(latencies.iter().map(|r| r.get::<_, i64>(0)));
    let target_txns = stack::int(&stack.target, "SELECT count(DISTINCT xmin::text) FROM bench.t").await;
    stack::run(&stack.target, "DROP TABLE bench.lat_src").await;
    assert_eq!(latencies.rows, rows, "latency: matched {} of {rows} rows to a target commit record", latencies.rows);
    if let Some(lag) = writer.max_lag_ms.filter(|&l| l > 1000.0) {
        run.disturbed(&format!(
            "the {label} writer fell up to {lag} ms behind its schedule (the source or the machine stalled)"
        ));
    }
    run.say(&format!(
        "[latency] {label}: {}; target complete {tail_s:.3}s after the writer; latency ms p50 {} p95 {} p99 {} max {} avg {:.1}, {target_txns} target txns",
        writer.describe(), latencies.p50_ms, latencies.p95_ms, latencies.p99_ms, latencies.max_ms, latencies.avg_ms
    ));
    Measured { latencies, target_txns, writer, tail_s, cpu_s }
}

/// The writer: pgbench inserting one row per transaction into `bench.t` at the source.
async fn pgbench(stack: &Stack, run: &Run<'_>, label: &str, rate: u64) -> WriterSummary {
    let settings = run.settings;
    let script = std::env::temp_dir().join(format!("trempy-bench-writer-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        "\\set v random(1, 1000000)\n\
         INSERT INTO bench.t (id, a, b, c, d) VALUES (nextval('bench.t_id_seq'), :v, md5(:v::text), now(), :v / 100.0);\n",
    )
    .expect("cannot write the pgbench script");
    let threads = settings
        .clients
        .min(u64::try_from(std::thread::available_parallelism().map_or(1, std::num::NonZero::get)).unwrap_or(1));
    let output = stack
        .source_client_command("pgbench")
        .env("PGAPPNAME", "trempy-bench-writer")
        .arg("-n")
        .args(["-c", &settings.clients.to_string(), "-j", &threads.to_string()])
        .args(["-R", &rate.to_string(), "-T", &settings.seconds.to_string()])
        .arg("-f")
        .arg(&script)
        .output()
        .await
        .expect("cannot run pgbench (it comes with postgresql-15)");
    let _ = std::fs::remove_file(&script);
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let log = stack.dir().join(format!("pgbench-{label}.log"));
    let _ = std::fs::write(&log, &text);
    assert!(output.status.success(), "pgbench failed; see {}:\n{text}", log.display());
    WriterSummary::parse(&text)
}

/// The schema of pg_walinspect at the target, installing it into `bench` if it is missing.
async fn ensure_walinspect(stack: &Stack) -> String {
    let installed =
        stack::text(&stack.target, "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pg_walinspect' UNION ALL SELECT '' LIMIT 1").await;
    if !installed.is_empty() {
        return installed;
    }
    stack::run(&stack.target, "CREATE SCHEMA IF NOT EXISTS bench; CREATE EXTENSION pg_walinspect SCHEMA bench").await;
    "bench".to_owned()
}

/// Drops the target's WAL-holding slot if it exists.
pub async fn drop_walhold(stack: &Stack) {
    stack::run(
        &stack.target,
        &format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{WALHOLD_SLOT}'"
        ),
    )
    .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_summary_is_read_from_its_closing_lines() {
        let output = "pgbench (15.8 (Debian 15.8-0+deb12u1))\n\
            transaction type: writer.sql\n\
            number of transactions actually processed: 120091\n\
            number of failed transactions: 0 (0.000%)\n\
            latency average = 1.846 ms\n\
            rate limit schedule lag: avg 1.138 (max 34.776) ms\n\
            initial connection time = 12.3 ms\n\
            tps = 2001.512 (without initial connection time)\n";
        let s = WriterSummary::parse(output);
        assert_eq!(s.processed, 120_091);
        assert_eq!(s.failed, None);
        assert_eq!(s.max_lag_ms, Some(34.776));
        assert_eq!(s.tps, Some(2001.512));
        assert_eq!(
            s.describe(),
            "120091 rows at 2002 rows/s, pgbench latency avg 1.846 ms, schedule lag avg 1.138 (max 34.776) ms"
        );
        let failed = WriterSummary::parse("number of failed transactions: 3 (0.100%)\n");
        assert_eq!(failed.failed.as_deref(), Some("3 (0.100%)"));
        assert_eq!(WriterSummary::parse("garbage"), WriterSummary::default());
    }

    #[test]
    fn latencies_are_percentiles_of_every_row() {
        // 1..=1000 ms
        let l = Latencies::of((1..=1000).map(|ms| ms * 1000));
        assert_eq!(l.rows, 1000);
        assert!((l.p50_ms - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_ms - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.max_ms - 1000.0).abs() < 1.0, "{l:?}");
        assert!((l.avg_ms - 500.5).abs() < 1.0, "{l:?}");
        // clock noise below zero counts as nothing
        assert_eq!(Latencies::of([-5]).rows, 1);
    }
}
