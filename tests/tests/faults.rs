//! Seeded fault injection: under a continuous mixed workload (inserts, updates and deletes on
//! several tables, every 25th transaction larger than one message), faults are injected at
//! random moments, one at a time, in a seeded random order:
//!
//! * SIGKILL of the applier (restarted at once, as a supervisor would);
//! * SIGKILL of the task's decoding worker, and of the launcher (PostgreSQL then resets the
//!   whole source cluster);
//! * RabbitMQ stopped for a while, then started;
//! * the source PostgreSQL restarted `fast` and `immediate`;
//! * the target PostgreSQL restarted `immediate`, and stopped for a while (refusing connections).
//!
//! After each fault: how long until replication resumed (from the end of the fault until the
//! applier commits again) and until it caught up (until a marker row committed after the fault
//! is in the target, the backlog built during the outage drained); then, with the writer paused, the target
//! must equal the source completely (row for row, md5 of every row in key order: nothing lost),
//! and an insert-only ledger whose target copy counts every write must show no row written twice
//! (nothing applied twice). At the end the task must be running.
//!
//! `TREMPY_FAULT_ROUNDS` (default 1: every fault once, the CI version) and `TREMPY_FAULT_SEED`
//! (default 20261122) choose the run, `TREMPY_FAULTS` (comma-separated keys such as
//! `rabbit,kill-worker`; default all) the faults; `scripts/dev.sh faults` runs the long version.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use trempy_e2e::stack::{Cluster, Shutdown};
use trempy_e2e::*;

const CONVERGE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillApplier,
    KillDecodingWorker,
    KillLauncher,
    RabbitStopStart,
    SourceRestartFast,
    SourceRestartImmediate,
    TargetRestartImmediate,
    TargetDown,
}

const FAULTS: [Fault; 8] = [
    Fault::KillApplier,
    Fault::KillDecodingWorker,
    Fault::KillLauncher,
    Fault::RabbitStopStart,
    Fault::SourceRestartFast,
    Fault::SourceRestartImmediate,
    Fault::TargetRestartImmediate,
    Fault::TargetDown,
];

impl Fault {
    /// The fault's name in `TREMPY_FAULTS`.
    fn key(self) -> &'static str {
        match self {
            Self::KillApplier => "kill-applier",
            Self::KillDecodingWorker => "kill-worker",
            Self::KillLauncher => "kill-launcher",
            Self::RabbitStopStart => "rabbit",
            Self::SourceRestartFast => "source-fast",
            Self::SourceRestartImmediate => "source-immediate",
            Self::TargetRestartImmediate => "target-immediate",
            Self::TargetDown => "target-down",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::KillApplier => "SIGKILL applier",
            Self::KillDecodingWorker => "SIGKILL decoding worker",
            Self::KillLauncher => "SIGKILL launcher",
            Self::RabbitStopStart => "RabbitMQ stop/start",
            Self::SourceRestartFast => "source restart (fast)",
            Self::SourceRestartImmediate => "source restart (immediate)",
            Self::TargetRestartImmediate => "target restart (immediate)",
            Self::TargetDown => "target refusing connections 5 s",
        }
    }
}

/// xorshift64*: a small seeded generator, so a run can be repeated exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn kill_backend(of_type: &str, task: &str) {
    let source = source().await;
    let sql = if of_type == "trempy task" {
        "SELECT worker_pid FROM trempy.status() WHERE task_name = $1".to_owned()
    } else {
        format!("SELECT pid FROM pg_stat_activity WHERE backend_type = '{of_type}' AND $1::text IS NOT NULL")
    };
    let pid: Option<i32> = source.query_opt(sql.as_str(), &[&task]).await.unwrap().and_then(|r| r.get(0));
    let pid = pid.unwrap_or_else(|| panic!("no {of_type} process to kill"));
    assert!(std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
}

async fn inject(fault: Fault, task: &str, applier: &mut Applier) {
    match fault {
        Fault::KillApplier => applier.restart_after_kill().await,
        Fault::KillDecodingWorker => kill_backend("trempy task", task).await,
        Fault::KillLauncher => kill_backend("trempy launcher", task).await,
        Fault::RabbitStopStart => {
            stack::rabbit_stop().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            stack::rabbit_start().await;
        }
        Fault::SourceRestartFast => stack::restart(Cluster::Source, Shutdown::Fast).await,
        Fault::SourceRestartImmediate => stack::restart(Cluster::Source, Shutdown::Immediate).await,
        Fault::TargetRestartImmediate => stack::restart(Cluster::Target, Shutdown::Immediate).await,
        Fault::TargetDown => {
            stack::stop(Cluster::Target, Shutdown::Fast).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            stack::start(Cluster::Target).await;
        }
    }
}

/// How long after `since` the applier committed again (its progress row's `applied_at` moved past
/// the moment the fault ended): replication resumed.
async fn time_to_first_apply(task: &str, since: Instant, since_epoch: f64) -> Duration {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let target = connect(&env("TREMPY_TARGET_DSN")).await;
        let row = target
            .query_opt("SELECT 1 FROM trempy.applier_progress WHERE task_name = $1 AND extract(epoch FROM applied_at)::float8 > $2::float8", &[&task, &since_epoch])
            .await;
        if matches!(row, Ok(Some(_))) {
            return since.elapsed();
        }
        assert!(Instant::now() < deadline, "replication did not resume within {CONVERGE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Commits a marker row at the source (retrying while it restarts) and returns how long it took
/// for it to reach the target, counted from `since`: replication caught up with the source.
async fn time_to_resume(marks: &str, id: i64, since: Instant) -> Duration {
    // (a commit whose reply was lost to a restart is fine: the marker is there)
    let insert = format!("INSERT INTO {marks} VALUES ({id}, now()) ON CONFLICT (id) DO NOTHING");
    let deadline = Instant::now() + CONVERGE;
    loop {
        let client = connect(&env("TREMPY_SOURCE_DSN")).await;
        if client.batch_execute(&insert).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "could not write a marker at the source");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let probe = format!("SELECT 1 FROM {marks} WHERE id = {id}");
    loop {
        let target = connect(&env("TREMPY_TARGET_DSN")).await;
        if matches!(target.query_opt(probe.as_str(), &[]).await, Ok(Some(_))) {
            return since.elapsed();
        }
        assert!(Instant::now() < deadline, "replication did not resume within {CONVERGE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Default)]
struct Tally {
    runs: u32,
    lost: i64,
    duplicated: i64,
    /// Until the applier committed again.
    resumes: Vec<Duration>,
    /// Until a change made after the fault was in the target (the backlog drained).
    recoveries: Vec<Duration>,
}

/// Median and worst of some durations, in seconds.
fn median_worst(durations: &mut [Duration]) -> (f64, f64) {
    durations.sort();
    let n = durations.len();
    let median = match n {
        0 => Duration::ZERO,
        _ if n % 2 == 1 => durations[n / 2],
        _ => (durations[n / 2 - 1] + durations[n / 2]) / 2,
    };
    let worst = durations.last().copied().unwrap_or_default();
    (median.as_secs_f64(), worst.as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_faults_under_a_mixed_workload_lose_and_duplicate_nothing() {
    let rounds = env_u64("TREMPY_FAULT_ROUNDS", 1);
    let seed = env_u64("TREMPY_FAULT_SEED", 20_261_122);
    let mut rng = Rng(seed.max(1));
    let (task, t, ledger, _source, mut applier) = mixed_workload_task("faults").await;
    let marks = format!("public.{task}_marks");
    create_table_both(&format!("CREATE TABLE {marks} (id bigint PRIMARY KEY, at timestamptz)")).await;
    let mut settings = cdc_settings(
        &task,
        &[("public", &task), ("public", &format!("{task}_ledger")), ("public", &format!("{task}_marks"))],
    );
    settings["task"]["start_mode"] = "continue".into();
    source()
        .await
        .execute("SELECT trempy.update_task($1, $2::text::jsonb)", &[&task, &settings.to_string()])
        .await
        .unwrap();
    wait_for_state(&source().await, &task, "running", CONVERGE).await;

    let chosen = std::env::var("TREMPY_FAULTS").unwrap_or_default();
    let faults: Vec<Fault> = FAULTS
        .iter()
        .copied()
        .filter(|f| chosen.is_empty() || chosen.split(',').any(|k| k.trim() == f.key()))
        .collect();
    assert!(!faults.is_empty(), "TREMPY_FAULTS={chosen:?} names no fault");
    let mut tallies: Vec<(Fault, Tally)> = faults.iter().map(|f| (*f, Tally::default())).collect();
    let mut written_twice = 0_i64;
    let mut marker = 0_i64;
    let mut offset = 0_u64;
    println!("fault injection: seed {seed}, {rounds} round(s) of {} faults", faults.len());
    for round in 0..rounds {
        let mut order = faults.clone();
        for i in (1..order.len()).rev() {
            order.swap(i, usize::try_from(rng.below(i as u64 + 1)).unwrap());
        }
        for fault in order {
            let start = offset;
            let statement = mixed_transaction(&t, &ledger);
            let writer = Writer::start(move |i| statement(start + i));
            tokio::time::sleep(Duration::from_millis(500 + rng.below(2500))).await;
            inject(fault, &task, &mut applier).await;
            let ended = Instant::now();
            let ended_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
            let resumed = time_to_first_apply(&task, ended, ended_epoch).await;
            marker += 1;
            let recovery = time_to_resume(&marks, marker, ended).await;
            writer.stop().await;
            offset += 1_000_000; // fresh ledger ids for the next writer
            wait_converged(&[(&t, "id"), (&ledger, "id"), (&marks, "id")], CONVERGE).await;
            let twice = rows_written_twice(&target().await, &ledger).await;
            let tally = &mut tallies.iter_mut().find(|(f, _)| *f == fault).unwrap().1;
            tally.runs += 1;
            tally.duplicated += twice - written_twice;
            tally.recoveries.push(recovery);
            tally.resumes.push(resumed);
            written_twice = twice;
            println!(
                "round {round}: {:<34} applying again after {:>6} ms, caught up after {:>6} ms; source and target equal; rows written twice so far: {twice}",
                fault.name(),
                resumed.as_millis(),
                recovery.as_millis()
            );
        }
    }
    wait_for_state(&source().await, &task, "running", CONVERGE).await;

    println!(
        "\n| fault | runs | lost rows | duplicated rows | applying again: median / worst | caught up: median / worst |\n|---|---|---|---|---|---|"
    );
    for (fault, tally) in &mut tallies {
        let (rm, rw) = median_worst(&mut tally.resumes);
        let (cm, cw) = median_worst(&mut tally.recoveries);
        println!(
            "| {} | {} | {} | {} | {rm:.1} s / {rw:.1} s | {cm:.1} s / {cw:.1} s |",
            fault.name(),
            tally.runs,
            tally.lost,
            tally.duplicated
        );
    }
    assert_eq!(written_twice, 0, "a source transaction was applied twice");
    drop_task(&source().await, &task).await;
}
