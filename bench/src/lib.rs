//! TREMpy's benchmark (issue #6; ported from bash in issue #13). It measures TREMpy on the stack
//! of `scripts/dev.sh stack-up` and prints every figure next to an anchor measured in the same
//! run: PostgreSQL's own logical replication, or a binary COPY pipe. docs/benchmarks.md explains
//! each figure and shows a full run.
//!
//! It reuses the end-to-end tests' helpers (connections, the table fingerprint and the wait for
//! it). A failed query or wait aborts the run with its message, as in the tests; whatever the
//! outcome, every object the benchmark created (all named `bench…`) is dropped.

mod cases;
pub mod config;
mod host;
mod native;
mod report;
mod sampler;
mod stack;
mod table;
mod trempy_side;

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use serde_json::json;

use cases::Run;
use config::{Case, Settings};
use report::{Report, RunContext};
use stack::Stack;

/// Runs the benchmark; on failure, drops what it created and fails.
pub async fn run(settings: Settings) -> ExitCode {
    // the cases run in a task of their own: a failure (a panic, as in the tests) ends that task,
    // and the cleanup below still runs
    match tokio::spawn(measure(settings)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => {
            eprintln!("bench: failed; cleaning up bench objects");
            let cleaned = tokio::spawn(async {
                let stack = Stack::open().await;
                cleanup(&stack).await;
                drop_schemas(&stack).await;
            })
            .await;
            if cleaned.is_err() {
                eprintln!("bench: cleanup failed; rerun the benchmark to clean up");
            }
            ExitCode::FAILURE
        }
    }
}

/// Everything the benchmark creates, by exact name (never another task's or engineer's objects).
async fn cleanup(stack: &Stack) {
    for task in trempy_side::TASKS {
        trempy_side::drop_task(stack, task).await;
    }
    for sub in native::SUBSCRIPTIONS {
        native::drop_subscription(stack, sub).await;
    }
    cases::latency::drop_walhold(stack).await;
}

async fn drop_schemas(stack: &Stack) {
    stack::run(&stack.source, "DROP SCHEMA IF EXISTS bench CASCADE").await;
    stack::run(&stack.target, "DROP SCHEMA IF EXISTS bench CASCADE").await;
}

/// Facts about the run printed above the table.
struct Setting {
    machine: host::Machine,
    otp: String,
    extension: String,
    tree: String,
    extension_built: String,
    applier_built: String,
    decoding_mem: String,
    other_slots: String,
}

async fn measure(settings: Settings) {
    let stack = Stack::open().await;
    let started = Instant::now();
    let machine = host::Machine::read();
    let clk_tck = host::clock_ticks_per_s();
    let busy_start = host::machine_busy();
    let context = RunContext {
        run_id: stack::text(&stack.source, "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD\"T\"HH24MISS\"Z\"')")
            .await,
        quick: settings.quick,
        nproc: machine.nproc,
        mem_kb: machine.mem_kb,
        postgresql: stack::text(&stack.source, "SHOW server_version").await,
        rabbitmq: stack.rabbit_version().await,
        loadavg_start: host::loadavg(),
    };
    stack::run(&stack.source, "CREATE EXTENSION IF NOT EXISTS trempy").await;
    let setting = Setting {
        otp: otp_version(),
        extension: stack::text(&stack.source, "SELECT extversion FROM pg_extension WHERE extname = 'trempy'").await,
        tree: git_describe(),
        extension_built: modified(&stack, &pkglibdir(&stack).await.join("trempy.so")).await,
        applier_built: modified(&stack, &stack.applier_bin).await,
        decoding_mem: stack::text(&stack.source, "SHOW logical_decoding_work_mem").await,
        other_slots: String::new(),
        machine,
    };
    eprintln!("bench: cleaning up objects of an earlier run");
    cleanup(&stack).await;
    let other_slots = stack::text(
        &stack.source,
        "SELECT coalesce(string_agg(slot_name, ', ' ORDER BY slot_name), 'none') FROM pg_replication_slots",
    )
    .await;
    let setting = Setting { other_slots, ..setting };

    let results = stack.dir().join("bench-results.jsonl");
    let mut run = Run::new(&stack, &settings, Report::new(context, results.clone()), clk_tck as f64);
    for case in &settings.cases {
        match case {
            Case::Batch => cases::catch_up::run(&mut run, "batch", settings.rows, 1000).await,
            Case::Txns => cases::catch_up::run(&mut run, "txns", settings.txns, 1).await,
            Case::Load => cases::load::run(&mut run, settings.rows).await,
            Case::Latency => {
                for rate in run.settings.rates.clone() {
                    cases::latency::run(&mut run, rate).await;
                }
            }
            Case::Rss => cases::rss::run(&mut run).await,
        }
    }
    eprintln!("bench: dropping schema bench");
    drop_schemas(&stack).await;

    let seconds = started.elapsed().as_secs_f64();
    let busy_pct = busy_start.zip(host::machine_busy()).and_then(|(a, b)| b.checked_sub(a)).map(|ticks| {
        #[allow(clippy::cast_precision_loss)]
        let busy_s = ticks as f64 / clk_tck as f64;
        #[allow(clippy::cast_precision_loss)]
        let capacity = seconds * setting.machine.nproc as f64;
        report::round(busy_s / capacity * 100.0, 0)
    });
    let context = run.report.context().clone();
    let loadavg_end = host::loadavg();
    run.report
        .append(&json!({
            "run_id": context.run_id, "quick": context.quick, "case": "run", "metric": "machine",
            "cases": settings.cases_line(), "nproc": context.nproc, "mem_kb": context.mem_kb,
            "cpu": setting.machine.cpu_model, "postgresql": context.postgresql, "rabbitmq": context.rabbitmq,
            "otp": setting.otp, "trempy": setting.extension, "tree": setting.tree,
            "loadavg_start": context.loadavg_start, "loadavg_end": loadavg_end,
            "machine_busy_pct": busy_pct, "seconds": seconds.round(), "disturbed_cases": run.report.disturbed_any,
        }))
        .expect("cannot append to the results file");
    print_summary(&settings, &setting, &run.report, &loadavg_end, busy_pct, &results);
    eprintln!("bench: done in {seconds:.0}s");
}

#[allow(clippy::print_stdout)] // the table is the benchmark's output
fn print_summary(
    settings: &Settings,
    setting: &Setting,
    report: &Report,
    loadavg_end: &str,
    busy_pct: Option<f64>,
    results: &Path,
) {
    let context = report.context();
    let m = &setting.machine;
    println!();
    println!(
        "TREMpy benchmark  run {}{}",
        context.run_id,
        if settings.quick { "  (quick: smoke run, numbers are not meaningful)" } else { "" }
    );
    println!("machine:    {} CPUs ({}), RAM {} MiB, Linux {}", m.nproc, m.cpu_model, m.mem_kb / 1024, m.kernel);
    println!(
        "versions:   PostgreSQL {} (source and target), RabbitMQ {} (Erlang/OTP {}), trempy {}",
        context.postgresql, context.rabbitmq, setting.otp, setting.extension
    );
    println!(
        "build:      tree {}; trempy.so installed {}, trempy-applier built {}",
        setting.tree, setting.extension_built, setting.applier_built
    );
    println!(
        "load:       load average {} at start, {loadavg_end} at end; the machine's CPUs were {}% busy during the run (all processes)",
        context.loadavg_start,
        busy_pct.map_or_else(|| "?".to_owned(), |p| format!("{p:.0}"))
    );
    println!(
        "settings:   backlogs written with synchronous_commit={}; latency writer: pgbench, {} connections, server-default synchronous_commit;",
        settings.sync_commit.as_sql(),
        settings.clients
    );
    println!(
        "            trempy-applier {}; logical_decoding_work_mem {}; other slots on the source (each decodes all WAL): {}",
        if settings.applier_args.is_empty() { "defaults".to_owned() } else { settings.applier_args.join(" ") },
        setting.decoding_mem,
        setting.other_slots
    );
    println!();
    print!("{}", report.table());
    println!();
    if report.disturbed_any {
        println!("(!) = disturbed case: a server restarted or the writer stalled while it ran (see below); rerun it.");
    }
    println!("ratio = TREMpy / anchor: above 1 is better for rows/s, below 1 is better for ms, CPU s and MiB.");
    println!(
        "Catch-up anchors time from ALTER SUBSCRIPTION ENABLE; TREMpy decode+publish times from start_task (includes the worker"
    );
    println!(
        "start), drain from starting trempy-applier; end-to-end from the first insert. Latency: target commit - source commit per"
    );
    println!(
        "row. CPU: utime+stime per million changes, over the catch-up (batch, txns) or from the writer's start until the target"
    );
    println!("had every row (latency). RabbitMQ's beam.smp serves every queue of the stack (other users' too).");
    for detail in report.details() {
        println!("  {detail}");
    }
    println!();
    println!("results appended to {}", results.display());
}

fn otp_version() -> String {
    std::fs::read_dir("/usr/lib/erlang/releases")
        .into_iter()
        .flatten()
        .flatten()
        .find_map(|release| std::fs::read_to_string(release.path().join("OTP_VERSION")).ok())
        .map_or_else(|| "unknown".to_owned(), |v| v.trim().to_owned())
}

fn git_describe() -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |v| v.trim().to_owned())
}

async fn pkglibdir(stack: &Stack) -> std::path::PathBuf {
    let output = tokio::process::Command::new(stack.pg_bin("pg_config")).arg("--pkglibdir").output().await;
    output
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(std::path::PathBuf::new, |d| std::path::PathBuf::from(d.trim()))
}

/// When a file was last written, in UTC (formatted by PostgreSQL, which the stack has anyway).
async fn modified(stack: &Stack, path: &Path) -> String {
    let Some(epoch) = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
    else {
        return "unknown".to_owned();
    };
    #[allow(clippy::cast_precision_loss)]
    let seconds = epoch.as_secs() as f64;
    stack
        .source
        .query_one("SELECT to_char(to_timestamp($1) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')", &[&seconds])
        .await
        .map_or_else(|_| "unknown".to_owned(), |r| r.get(0))
}
