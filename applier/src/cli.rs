//! Command line: `trempy-applier run --task NAME`, `status`, `resume`, `errors` and `dlq`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio::sync::watch;
use trempy_protocol::names::TaskNames;
use trempy_protocol::settings::TaskSettings;

use crate::consume::{self, Options};
use crate::deadletter::{self, Outcome, Selection};
use crate::errorlog::{self, Action};
use crate::policy::{DEFAULT_MAX_ATTEMPTS, ErrorPolicy};
use crate::{error, migrations, report, state, target};

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
    /// Show what has been applied to the target, and each task's state, per task.
    Status(StatusArgs),
    /// Resume a task its error policy stopped (the running applier picks it up within a second).
    Resume(TaskArgs),
    /// List a task's apply errors, newest first (never row values).
    Errors(ErrorsArgs),
    /// Dead-lettered source transactions and messages of a task.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List them (state dead, replayed or discarded; never row values).
    List(TaskArgs),
    /// Show one (with its body, which holds row values, only with --body).
    Show(ShowArgs),
    /// Apply them to the target now (after fixing the cause), exactly once each. Refuses one the
    /// task has moved past (its rows may have changed since), listing the tables and keys it would
    /// write, unless --force.
    Replay(ReplayArgs),
    /// Give up on them.
    Discard(SelectArgs),
}

#[derive(Debug, Args)]
struct TaskArgs {
    /// Task name, as given to trempy.create_task.
    #[arg(long)]
    task: String,
    /// Target database, as a libpq connection string or URL.
    #[arg(long, env = "TREMPY_TARGET_DSN", hide_env_values = true)]
    target_dsn: String,
}

#[derive(Debug, Args)]
struct ErrorsArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// At most this many errors.
    #[arg(long, default_value_t = 100)]
    limit: i64,
}

#[derive(Debug, Args)]
struct ShowArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// Dead letter id (see `dlq list`).
    #[arg(long)]
    id: i64,
    /// Also print the message body (it contains row values).
    #[arg(long)]
    body: bool,
}

#[derive(Debug, Args)]
#[group(id = "which", required = true, multiple = false, args = ["id", "all"])]
struct SelectArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// RabbitMQ, to remove resolved copies from the dead-letter queue.
    #[command(flatten)]
    broker: BrokerArgs,
    /// One dead letter (see `dlq list`).
    #[arg(long)]
    id: Option<i64>,
    /// Every dead letter of the task still in state dead, in order.
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    #[command(flatten)]
    select: SelectArgs,
    /// Replay even a dead letter the task's watermark has moved past (or that predates a reload):
    /// its old row images then overwrite whatever later changes wrote to the same rows.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Task name, as given to trempy.create_task.
    #[arg(long)]
    task: String,
    #[command(flatten)]
    broker: BrokerArgs,
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
    /// Commit once no message arrived for this many milliseconds. 0 (the default): as soon as
    /// no message is waiting; what arrives while a commit runs goes into the next one (group
    /// commit), so a busy stream still commits in batches and a quiet one at once.
    #[arg(long, default_value_t = 0)]
    idle_commit_ms: u64,
    /// The task's settings (the JSON given to trempy.create_task); only `error_handling` is read.
    /// Without it every `stop_if_*_error` flag is false.
    #[arg(long)]
    settings_file: Option<PathBuf>,
    /// Attempts at a source transaction failing for a permanent reason before it is dead-lettered.
    #[arg(long, default_value_t = DEFAULT_MAX_ATTEMPTS)]
    max_attempts: u32,
    /// Messages read ahead (never acknowledged) for newer task settings when halted because the
    /// task's rules do not fit a table.
    #[arg(long, default_value_t = 10_000)]
    lookahead: u16,
}

/// How to reach RabbitMQ.
#[derive(Debug, Args)]
struct BrokerArgs {
    /// RabbitMQ URL, amqp://user@host:port/vhost; the password either in it
    /// (amqp://user:password@…) or, better, in --amqp-password-file.
    #[arg(long, env = "TREMPY_AMQP_URL", hide_env_values = true)]
    amqp_url: String,
    /// File holding the RabbitMQ password (its content without a trailing line break), owned by
    /// the user running the applier with mode 0600 or less (or by root, 0640 or less). Read once,
    /// at start.
    #[arg(long, env = "TREMPY_AMQP_PASSWORD_FILE")]
    amqp_password_file: Option<PathBuf>,
}

impl BrokerArgs {
    /// The URL to connect with, the password file's password in it.
    fn url(&self) -> Result<String, error::Error> {
        trempy_protocol::credentials::resolve(&self.amqp_url, self.amqp_password_file.as_deref())
            .map_err(|e| error::Error::new(error::ErrorKind::Broker, e.message()))
    }
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
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
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
        Command::Resume(args) => runtime.block_on(resume(args)),
        Command::Errors(args) => runtime.block_on(errors(args)),
        Command::Dlq(command) => runtime.block_on(dlq(command)),
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
    let error_handling = match &args.settings_file {
        None => None,
        Some(path) => match std::fs::read_to_string(path).map_err(|e| e.to_string()).and_then(|json| {
            TaskSettings::parse(&json)
                .map_err(|problems| problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
        }) {
            Ok(settings) if settings.task.task_name == args.task => settings.error_handling,
            Ok(settings) => {
                tracing::error!(
                    "--settings-file {}: the settings are those of task {:?}, not {:?}",
                    path.display(),
                    settings.task.task_name,
                    args.task
                );
                return ExitCode::from(2);
            }
            Err(err) => {
                tracing::error!("--settings-file {}: {err}", path.display());
                return ExitCode::from(2);
            }
        },
    };
    let amqp_url = match args.broker.url() {
        Ok(url) => url,
        Err(err) => {
            tracing::error!("--amqp-url/--amqp-password-file: {err}");
            return ExitCode::from(2);
        }
    };
    let options = Options {
        names,
        amqp_url,
        target_dsn: args.target_dsn,
        prefetch: args.prefetch.max(1),
        lookahead: args.lookahead.max(1),
        batch_changes: args.batch_changes.max(1),
        batch_delay: Duration::from_millis(args.batch_delay_ms),
        idle_commit: Duration::from_millis(args.idle_commit_ms),
        error_policy: ErrorPolicy::from_settings(error_handling.as_ref(), args.max_attempts),
        live: report::Live::default(),
    };
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    let reports = tokio::spawn(report::run(
        options.names.clone(),
        options.amqp_url.clone(),
        options.target_dsn.clone(),
        options.live.clone(),
        shutdown.clone(),
    ));
    consume::run(options, shutdown).await;
    let _ = reports.await;
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
    let client = match target::connect(&args.target_dsn).await {
        Ok((client, _driver)) => client,
        Err(err) => {
            tracing::error!(error = %err, "cannot connect to the target database");
            return ExitCode::FAILURE;
        }
    };
    if let Err(err) = migrations::run(&client).await {
        tracing::error!(error = %err, "cannot bring the target's TREMpy tables up to date");
        return ExitCode::FAILURE;
    }
    let rows = client
        .query(
            "SELECT p.task_name, coalesce(s.state, '-'), coalesce(s.since::text, '-'), coalesce(s.attempts, 0), coalesce(s.reason, '-'),
                    p.commit_lsn::text, coalesce(p.source_commit_time::text, '-'), p.transactions_applied, p.changes_applied, p.applied_at::text
               FROM trempy.applier_progress p LEFT JOIN trempy.applier_state s USING (task_name) ORDER BY p.task_name",
            &[],
        )
        .await;
    match rows {
        Ok(rows) => {
            println!(
                "task\tstate\tsince\tattempts\treason\tcommit_lsn\tsource_commit_time\ttransactions_applied\tchanges_applied\tapplied_at"
            );
            for row in rows {
                let text = |i: usize| row.get::<_, String>(i);
                let (attempts, txns, changes): (i32, i64, i64) = (row.get(3), row.get(7), row.get(8));
                println!(
                    "{}\t{}\t{}\t{attempts}\t{}\t{}\t{}\t{txns}\t{changes}\t{}",
                    text(0),
                    text(1),
                    text(2),
                    text(4),
                    text(5),
                    text(6),
                    text(9)
                );
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot read trempy.applier_progress (has an applier run against this database?)");
            ExitCode::FAILURE
        }
    }
}

/// Connects to the target for a one-shot command and brings its TREMpy tables up to date.
async fn connect(target_dsn: &str, task: &str) -> Result<(Arc<tokio_postgres::Client>, TaskNames), error::Error> {
    let names = TaskNames::new(task)
        .map_err(|e| error::Error::new(error::ErrorKind::Conflict, format!("--task: {}", e.message())))?;
    let (client, _driver) = target::connect(target_dsn).await?;
    migrations::run(&client).await?;
    Ok((Arc::new(client), names))
}

#[allow(clippy::print_stdout)]
fn print_lines(lines: Result<Vec<String>, error::Error>) -> ExitCode {
    match lines {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = %err, "failed");
            ExitCode::FAILURE
        }
    }
}

async fn resume(args: TaskArgs) -> ExitCode {
    let result = async {
        let (client, names) = connect(&args.target_dsn, &args.task).await?;
        let resumed = state::resume(&client, names.task()).await?;
        Ok(vec![if resumed {
            format!("task {} resumed", names.task())
        } else {
            format!("task {} was not stopped", names.task())
        }])
    }
    .await;
    print_lines(result)
}

async fn errors(args: ErrorsArgs) -> ExitCode {
    let result = async {
        let (client, names) = connect(&args.task.target_dsn, &args.task.task).await?;
        errorlog::list(&client, names.task(), args.limit).await
    }
    .await;
    print_lines(result)
}

async fn dlq(command: DlqCommand) -> ExitCode {
    let result = match command {
        DlqCommand::List(args) => {
            async {
                let (client, names) = connect(&args.target_dsn, &args.task).await?;
                deadletter::list(&client, names.task()).await
            }
            .await
        }
        DlqCommand::Show(args) => {
            async {
                let (client, names) = connect(&args.task.target_dsn, &args.task.task).await?;
                deadletter::show(&client, names.task(), args.id, args.body).await
            }
            .await
        }
        DlqCommand::Replay(args) => replay(args).await,
        DlqCommand::Discard(args) => {
            async {
                let (client, names) = connect(&args.task.target_dsn, &args.task.task).await?;
                let n = deadletter::discard(&client, names.task(), selection(&args)).await?;
                let removed = deadletter::sweep(&client, &args.broker.url()?, &names).await?;
                Ok(vec![format!("discarded {n}; removed {removed} resolved copies from {}", names.dlx_queue())])
            }
            .await
        }
    };
    print_lines(result)
}

fn selection(args: &SelectArgs) -> Selection {
    args.id.map_or(Selection::All, Selection::One)
}

/// `dlq replay`. A refusal's key values go to stdout (the operator's terminal) only, never to the
/// log or `trempy.applier_errors`.
async fn replay(args: ReplayArgs) -> Result<Vec<String>, error::Error> {
    let ReplayArgs { select: args, force } = args;
    let (client, names) = connect(&args.task.target_dsn, &args.task.task).await?;
    let task = names.task();
    let mut lines = Vec::new();
    let mut failed = None;
    for (id, outcome) in deadletter::replay(&client, task, selection(&args), force).await? {
        match outcome {
            Ok(Outcome::Replayed) => lines.push(format!("{id}\treplayed")),
            Ok(Outcome::AlreadyResolved) => {
                lines.push(format!("{id}\tnot dead (replayed or discarded before): nothing done"))
            }
            Ok(Outcome::Refused { reason, rows }) => {
                lines
                    .push(format!("{id}\trefused: {reason}. Replaying it would write these rows (source table: key):"));
                lines.extend(rows.into_iter().map(|row| format!("  {row}")));
                lines.push(
                    "  Check them on the target; replay with --force to apply its row images anyway, or discard it."
                        .to_owned(),
                );
                failed = Some(error::Error::new(
                    error::ErrorKind::Conflict,
                    format!("dead letter {id} not replayed without --force"),
                ));
            }
            Err(err) => {
                let _ = errorlog::record(&client, task, &err, None, None, Action::ReplayFailed).await;
                lines.push(format!("{id}\tfailed: {err}"));
                failed = Some(err);
            }
        }
    }
    let removed = deadletter::sweep(&client, &args.broker.url()?, &names).await?;
    lines.push(format!("removed {removed} resolved copies from {}", names.dlx_queue()));
    if let Some(err) = failed {
        print_lines(Ok(lines));
        return Err(err);
    }
    Ok(lines)
}
