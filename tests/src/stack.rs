//! Control of the running stack's servers, for the tests that stop, restart or fail them over:
//! the PostgreSQL clusters (through `pg_ctl` as the `postgres` OS user, which alone may run
//! them), the source's physical standby, and the private RabbitMQ node (through its own scripts,
//! with the environment that makes them address this node and no other). `scripts/dev.sh
//! stack-up` creates and configures everything; this module only stops and starts what exists,
//! finding it through `.stack/env`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::env;

/// How long a server may take to start or stop.
const START_TIMEOUT: Duration = Duration::from_secs(120);
const RABBIT_BIN: &str = "/usr/lib/rabbitmq/bin";

/// A PostgreSQL cluster of the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cluster {
    Source,
    Target,
    /// The source's physical standby, only while a test has one ([`standby_create`]).
    Standby,
}

impl Cluster {
    fn name(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Target => "target",
            Self::Standby => "standby",
        }
    }

    fn data(self) -> PathBuf {
        match self {
            Self::Source => PathBuf::from(env("TREMPY_SOURCE_PGDATA")),
            Self::Target => PathBuf::from(env("TREMPY_TARGET_PGDATA")),
            Self::Standby => PathBuf::from(env("TREMPY_STANDBY_PGDATA")),
        }
    }

    fn port(self) -> String {
        match self {
            Self::Source => env("TREMPY_SOURCE_PORT"),
            Self::Target => env("TREMPY_TARGET_PORT"),
            Self::Standby => env("TREMPY_STANDBY_PORT"),
        }
    }

    fn log(self) -> PathBuf {
        PathBuf::from(env("TREMPY_STACK_DIR")).join(format!("{}.log", self.name()))
    }
}

/// How a cluster shuts down (`pg_ctl stop -m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Disconnects sessions and checkpoints.
    Fast,
    /// Like a crash: no checkpoint, recovery at the next start.
    Immediate,
}

impl Shutdown {
    fn mode(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Immediate => "immediate",
        }
    }
}

fn pg_bin(program: &str) -> PathBuf {
    PathBuf::from(env("TREMPY_PG_BIN")).join(program)
}

/// A PostgreSQL program run as the `postgres` OS user, from a directory it may enter.
fn as_postgres(program: &str) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(pg_bin(program)).current_dir("/");
    command
}

/// Runs a command to completion and panics with its output if it failed.
async fn run(what: &str, command: &mut Command) {
    let output = command.stdin(Stdio::null()).output().await.unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs a command that leaves a server running behind it: its output is not read (the server
/// could hold the pipe open for ever); the server's own log tells what went wrong.
async fn run_detached(what: &str, command: &mut Command) {
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(status.success(), "{what} failed ({status})");
}

fn pg_ctl(cluster: Cluster, args: &[&str]) -> Command {
    let mut command = as_postgres("pg_ctl");
    command.arg("-D").arg(cluster.data()).args(args);
    command
}

/// Whether the cluster's postmaster runs.
pub async fn running(cluster: Cluster) -> bool {
    if !cluster.data().join("PG_VERSION").exists() {
        return false;
    }
    let mut status = pg_ctl(cluster, &["status"]);
    status.stdout(Stdio::null()).stderr(Stdio::null()).status().await.is_ok_and(|s| s.success())
}

/// Stops a cluster (nothing to do if it is stopped).
pub async fn stop(cluster: Cluster, shutdown: Shutdown) {
    if !running(cluster).await {
        return;
    }
    let timeout = START_TIMEOUT.as_secs().to_string();
    let what = format!("pg_ctl stop -m {} ({})", shutdown.mode(), cluster.name());
    run(&what, &mut pg_ctl(cluster, &["stop", "-w", "-t", &timeout, "-m", shutdown.mode()])).await;
}

/// Starts a cluster and waits until it accepts connections.
pub async fn start(cluster: Cluster) {
    if !running(cluster).await {
        let timeout = START_TIMEOUT.as_secs().to_string();
        let log = cluster.log();
        let mut command = pg_ctl(cluster, &["start", "-w", "-t", &timeout, "-l"]);
        command.arg(&log);
        let what = format!("pg_ctl start ({}; log {})", cluster.name(), log.display());
        run_detached(&what, &mut command).await;
    }
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let ready = Command::new(pg_bin("pg_isready"))
            .args(["-q", "-h", &env("TREMPY_SOCKET_DIR"), "-p", &cluster.port(), "-t", "2"])
            .status()
            .await
            .is_ok_and(|s| s.success());
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "the {} cluster does not accept connections", cluster.name());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Stops and starts a cluster.
pub async fn restart(cluster: Cluster, shutdown: Shutdown) {
    stop(cluster, shutdown).await;
    start(cluster).await;
}

/// A physical standby of the source, streaming from it (`pg_basebackup -R`), started. It shares
/// the source's settings (trempy preloaded) but its port, so once promoted it runs the source's
/// tasks. An earlier standby is destroyed first.
pub async fn standby_create() {
    standby_destroy().await;
    let data = Cluster::Standby.data();
    run(
        "mkdir (standby)",
        Command::new("install").args(["-d", "-m", "700", "-o", "postgres", "-g", "postgres"]).arg(&data),
    )
    .await;
    let mut backup = as_postgres("pg_basebackup");
    backup
        .args(["-h", &env("TREMPY_SOCKET_DIR"), "-p", &Cluster::Source.port(), "-U", "postgres", "-D"])
        .arg(&data)
        .args(["-X", "stream", "-R", "-c", "fast"]);
    run("pg_basebackup of the source", &mut backup).await;
    // the copied stack settings are the source's: only the port differs
    let settings = data.join("trempy-stack.conf");
    let source_settings = std::fs::read_to_string(&settings).expect("the base backup has the stack's settings");
    let port = Cluster::Standby.port();
    let standby_settings: Vec<String> = source_settings
        .lines()
        .map(|line| if line.starts_with("port = ") { format!("port = {port}") } else { line.to_owned() })
        .collect();
    std::fs::write(&settings, standby_settings.join("\n") + "\n").expect("cannot write the standby's settings");
    let log = Cluster::Standby.log();
    run(
        "log file (standby)",
        Command::new("install").args(["-m", "640", "-o", "postgres", "-g", "postgres", "/dev/null"]).arg(&log),
    )
    .await;
    start(Cluster::Standby).await;
}

/// Promotes the standby to a primary.
pub async fn standby_promote() {
    let timeout = START_TIMEOUT.as_secs().to_string();
    run("pg_ctl promote (standby)", &mut pg_ctl(Cluster::Standby, &["promote", "-w", "-t", &timeout])).await;
}

/// Stops the standby (immediately) and removes it.
pub async fn standby_destroy() {
    stop(Cluster::Standby, Shutdown::Immediate).await;
    let _ = std::fs::remove_dir_all(Cluster::Standby.data());
    let _ = std::fs::remove_file(Cluster::Standby.log());
}

/// SQL as the `postgres` superuser over the stack's socket (peer authentication), for what a
/// test must do as the cluster's owner; blocking, so that `Drop` guards can use it.
pub fn psql_as_postgres(cluster: Cluster, sql: &str) -> bool {
    std::process::Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(pg_bin("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", &env("TREMPY_SOCKET_DIR"), "-p", &cluster.port()])
        .args(["-U", "postgres", "-d", cluster.name(), "-c", sql])
        .current_dir("/")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The private RabbitMQ node's directory.
fn rabbit_dir() -> PathBuf {
    PathBuf::from(env("TREMPY_STACK_DIR")).join("rabbitmq")
}

fn rabbit_pid_file() -> PathBuf {
    rabbit_dir().join("rabbitmq.pid")
}

/// The environment that makes RabbitMQ's scripts address the stack's node: its name, ports,
/// directories and its own HOME, which holds the Erlang cookie.
fn rabbit_env() -> Vec<(&'static str, OsString)> {
    let dir = rabbit_dir();
    vec![
        ("RABBITMQ_NODENAME", env("TREMPY_RABBIT_NODE").into()),
        ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
        ("RABBITMQ_NODE_PORT", env("TREMPY_AMQP_PORT").into()),
        ("RABBITMQ_DIST_PORT", env("TREMPY_RABBIT_DIST_PORT").into()),
        ("ERL_EPMD_PORT", env("TREMPY_EPMD_PORT").into()),
        ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
        ("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}".into()),
        ("RABBITMQ_MNESIA_BASE", dir.join("mnesia").into()),
        ("RABBITMQ_LOG_BASE", dir.join("log").into()),
        ("RABBITMQ_PID_FILE", rabbit_pid_file().into()),
        ("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf").into()),
        ("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config").into()),
        ("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins").into()),
        ("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf").into()),
        ("HOME", dir.join("home").into()),
    ]
}

fn rabbit_command(script: &str) -> Command {
    let mut command = Command::new(PathBuf::from(RABBIT_BIN).join(script));
    command.envs(rabbit_env());
    command
}

/// `rabbitmqctl` against the stack's node; its output if it succeeded.
pub async fn rabbitmqctl(args: &[&str]) -> Option<String> {
    let output = rabbit_command("rabbitmqctl")
        .args(["-n", &env("TREMPY_RABBIT_NODE")])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// [`rabbitmqctl`], blocking (for `Drop` guards).
pub fn rabbitmqctl_blocking(args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(PathBuf::from(RABBIT_BIN).join("rabbitmqctl"))
        .envs(rabbit_env())
        .args(["-n", &env("TREMPY_RABBIT_NODE")])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// RabbitMQ's `beam.smp`, if it runs. The node name is not on its command line (RabbitMQ sets
/// it at run time), so it is recognised by the stack's private `-home` directory.
pub fn rabbit_pid() -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(rabbit_pid_file()).ok()?.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let home = format!("-home\0{}\0", rabbit_dir().join("home").display());
    let ours = cmdline.windows(home.len()).any(|w| w == home.as_bytes());
    (comm.trim() == "beam.smp" && ours).then_some(pid)
}

/// Stops the RabbitMQ node (nothing to do if it is stopped); terminates it if `rabbitmqctl
/// stop` fails.
pub async fn rabbit_stop() {
    let Some(pid) = rabbit_pid() else { return };
    let pid_file = rabbit_pid_file();
    if rabbitmqctl(&["stop", &pid_file.to_string_lossy()]).await.is_none() {
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while rabbit_pid().is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status().await;
    }
    let _ = std::fs::remove_file(pid_file);
}

/// Starts the RabbitMQ node and waits until it accepts AMQP connections.
pub async fn rabbit_start() {
    if rabbit_pid().is_none() {
        let _ = std::fs::remove_file(rabbit_pid_file());
        let what = format!("rabbitmq-server -detached (log in {})", rabbit_dir().join("log").display());
        run_detached(&what, rabbit_command("rabbitmq-server").arg("-detached")).await;
    }
    let timeout = START_TIMEOUT.as_secs().to_string();
    let pid_file = rabbit_pid_file();
    let waited = rabbitmqctl(&["wait", "--timeout", &timeout, &pid_file.to_string_lossy()]).await;
    assert!(waited.is_some(), "RabbitMQ did not come up; see {}", rabbit_dir().join("log").display());
    let address = format!("127.0.0.1:{}", env("TREMPY_AMQP_PORT"));
    let deadline = Instant::now() + START_TIMEOUT;
    while tokio::net::TcpStream::connect(&address).await.is_err() {
        assert!(Instant::now() < deadline, "RabbitMQ does not accept connections on {address}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
