//! Command line: `trempy-applier run --task NAME` and `trempy-applier status`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio::sync::watch;
use tokio_postgres::NoTls;
use trempy_protocol::names::TaskNames;

use crate::consume::{self, Options};

/// TREMpy applier: applies a task's changes from RabbitMQ to a target PostgreSQL database,
/// exactly once in effect.
#[derive(Debug, Parser)]
#[command(name = "trempy-applier", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume a task's queue and apply its changes until stopped (SIGINT or SIGTERM).
    Run(RunArgs),
    /// Show what has been applied to the target, per task.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Task name, as given to trempy.create_task.
    #[arg(long)]
    task: String,
    /// RabbitMQ URL, amqp://user:password@host:port/vhost.
    #[arg(long, env = "TREMPY_AMQP_URL", hide_env_values = true)]
    amqp_url: String,
    /// Target database, as a libpq connection string or URL.
    #[arg(long, env = "TREMPY_TARGET_DSN", hide_env_values = true)]
    target_dsn: String,
    /// Messages RabbitMQ may deliver ahead of their acknowledgement.
    #[arg(long, default_value_t = 32)]
    prefetch: u16,
    /// Commit the target transaction once this many changes are pending.
    #[arg(long, default_value_t = 50_000)]
    batch_changes: u64,
    /// Commit the target transaction at the latest this many milliseconds after its first change.
    #[arg(long, default_value_t = 250)]
    batch_delay_ms: u64,
    /// Commit as soon as no message arrived for this many milliseconds.
    #[arg(long, default_value_t = 5)]
    idle_commit_ms: u64,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Target database, as a libpq connection string or URL.
    #[arg(long, env = "TREMPY_TARGET_DSN", hide_env_values = true)]
    target_dsn: String,
}

/// Runs the command line.
pub fn main(cli: Cli) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Run(args) => runtime.block_on(run(args)),
        Command::Status(args) => runtime.block_on(status(args)),
    }
}

async fn run(args: RunArgs) -> ExitCode {
    let names = match TaskNames::new(&args.task) {
        Ok(names) => names,
        Err(err) => {
            tracing::error!("--task: {}", err.message());
            return ExitCode::from(2);
        }
    };
    let options = Options {
        names,
        amqp_url: args.amqp_url,
        target_dsn: args.target_dsn,
        prefetch: args.prefetch.max(1),
        batch_changes: args.batch_changes.max(1),
        batch_delay: Duration::from_millis(args.batch_delay_ms),
        idle_commit: Duration::from_millis(args.idle_commit_ms),
    };
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    consume::run(options, shutdown).await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

#[allow(clippy::print_stdout)]
async fn status(args: StatusArgs) -> ExitCode {
    let (client, driver) = match tokio_postgres::connect(&args.target_dsn, NoTls).await {
        Ok(pair) => pair,
        Err(err) => {
            tracing::error!(error = %err, "cannot connect to the target database");
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(driver);
    let rows = client
        .query(
            "SELECT task_name, commit_lsn::text, coalesce(source_commit_time::text, '-'), transactions_applied, changes_applied, applied_at::text
               FROM trempy.applier_progress ORDER BY task_name",
            &[],
        )
        .await;
    match rows {
        Ok(rows) => {
            println!("task\tcommit_lsn\tsource_commit_time\ttransactions_applied\tchanges_applied\tapplied_at");
            for row in rows {
                let (task, lsn, time, txns, changes, at): (String, String, String, i64, i64, String) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
                println!("{task}\t{lsn}\t{time}\t{txns}\t{changes}\t{at}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot read trempy.applier_progress (has an applier run against this database?)");
            ExitCode::FAILURE
        }
    }
}
