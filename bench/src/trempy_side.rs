//! TREMpy under measurement: the benchmark's tasks at the source and `trempy-applier` as a child
//! process whose target session can be found (its CPU is TREMpy's too).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::process::{Child, Command};

use crate::host::{self, Pid};
use crate::stack::{self, Stack};

/// Every task the benchmark creates, by exact name (never another task).
pub const TASKS: [&str; 7] =
    ["bench_batch", "bench_txns", "bench_batch_e2e", "bench_txns_e2e", "bench_load", "bench_lat", "bench_rss"];

/// Creates a CDC upsert task over `bench.t` and waits until its worker runs.
pub async fn create_cdc_task(stack: &Stack, task: &str) {
    create_task(stack, task, json!({"replication_type": "cdc", "cdc_settings": {"mode": "upsert"}})).await;
    wait_state(stack, task, "running").await;
}

/// Creates a full-load task over `bench.t`.
pub async fn create_full_load_task(stack: &Stack, task: &str) {
    create_task(stack, task, json!({"replication_type": "full_load"})).await;
}

async fn create_task(stack: &Stack, task: &str, mut kind: serde_json::Value) {
    kind["task_name"] = json!(task);
    let settings = json!({"task": kind, "tables": [{"schema_name": "bench", "table_name": "t", "priority": 0}]});
    stack
        .source
        .execute("SELECT trempy.create_task($1, $2::text::jsonb)", &[&task, &settings.to_string()])
        .await
        .unwrap_or_else(|e| panic!("trempy.create_task('{task}') failed: {e}"));
}

pub async fn stop_task(stack: &Stack, task: &str) {
    call(stack, "trempy.stop_task", task).await;
    wait_state(stack, task, "stopped").await;
}

pub async fn start_task(stack: &Stack, task: &str) {
    call(stack, "trempy.start_task", task).await;
    wait_state(stack, task, "running").await;
}

async fn call(stack: &Stack, function: &str, task: &str) {
    stack
        .source
        .execute(format!("SELECT {function}($1)").as_str(), &[&task])
        .await
        .unwrap_or_else(|e| panic!("{function}('{task}') failed: {e}"));
}

async fn wait_state(stack: &Stack, task: &str, wanted: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = stack
            .source
            .query_opt("SELECT state, last_error FROM trempy.status() WHERE task_name = $1", &[&task])
            .await
            .expect("trempy.status() failed");
        let (state, error) =
            row.map_or((None, None), |r| (r.get::<_, Option<String>>(0), r.get::<_, Option<String>>(1)));
        if state.as_deref() == Some(wanted) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "task {task} did not reach state '{wanted}' within 60 s (state {state:?}, last error {error:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The task's decoding worker.
pub async fn worker_pid(stack: &Stack, task: &str) -> Option<Pid> {
    let sql = format!("SELECT worker_pid FROM trempy.status() WHERE task_name = '{task}'");
    stack::pid(&stack.source, &sql).await
}

/// The walsender streaming the task's slot to its worker.
pub async fn walsender_pid(stack: &Stack, task: &str) -> Option<Pid> {
    let sql = format!("SELECT pid FROM pg_stat_replication WHERE application_name = 'trempy_{task}' LIMIT 1");
    stack::pid(&stack.source, &sql).await
}

/// The task's walsender, once the worker has opened its stream (up to 30 s).
pub async fn wait_walsender(stack: &Stack, task: &str) -> Option<Pid> {
    for _ in 0..150 {
        if let Some(pid) = walsender_pid(stack, task).await {
            return Some(pid);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Waits until the task's counters show `rows` changes and `txns` transactions published.
pub async fn wait_published(stack: &Stack, task: &str, rows: u64, txns: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let row = stack
            .source
            .query_opt(
                "SELECT changes_published, transactions_published FROM trempy.status() WHERE task_name = $1",
                &[&task],
            )
            .await
            .expect("trempy.status() failed");
        let (changes, tx) =
            row.map_or((0, 0), |r| (r.get::<_, Option<i64>>(0).unwrap_or(0), r.get::<_, Option<i64>>(1).unwrap_or(0)));
        if u64::try_from(changes).unwrap_or(0) >= rows && u64::try_from(tx).unwrap_or(0) >= txns {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "task {task} published {changes}/{rows} changes, {tx}/{txns} transactions within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Drops a task of the benchmark with everything it left: slot and publication, its queues,
/// its watermark at the target.
pub async fn drop_task(stack: &Stack, task: &str) {
    let exists =
        stack::int(&stack.source, &format!("SELECT count(*) FROM trempy.tasks WHERE task_name = '{task}'")).await;
    if exists > 0 {
        call(stack, "trempy.drop_task", task).await;
    }
    for queue in [format!("trempy_queue_{task}"), format!("dlx_queue_{task}")] {
        stack.delete_queue(&queue).await;
    }
    stack::run(
        &stack.target,
        &format!(
            "DO $$ BEGIN
                IF to_regclass('trempy.applier_progress') IS NOT NULL THEN
                    DELETE FROM trempy.applier_progress WHERE task_name = '{task}';
                END IF;
            END $$"
        ),
    )
    .await;
}

/// `trempy-applier run` for one task, its log in the state directory.
pub struct Applier {
    task: String,
    child: Child,
    pub pid: Pid,
    log: PathBuf,
}

impl Applier {
    /// Starts the applier; its target session carries an application name of its own.
    pub fn start(stack: &Stack, task: &str, extra: &[String]) -> Self {
        let log = stack.dir().join(format!("applier-{task}.log"));
        let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let dsn = &stack.target_dsn;
        let child = Command::new(&stack.applier_bin)
            .args(["run", "--task", task])
            .args(extra)
            .env("TREMPY_TARGET_DSN", trempy_e2e::with_application_name(dsn, &app_name(task)))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start trempy-applier");
        let pid = child.id().expect("the applier has a pid");
        Self { task: task.to_owned(), child, pid, log }
    }

    /// Waits until the applier has connected to both sides.
    pub async fn wait_connected(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&self.log).unwrap_or_default().contains("applier connected") {
            self.assert_alive();
            assert!(Instant::now() < deadline, "the applier did not connect; see {}", self.log.display());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Panics, with the end of its log, if the applier has exited.
    pub fn assert_alive(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!("trempy-applier exited; see {}:\n    {}", self.log.display(), tail.join("\n    "));
    }

    /// Its sessions at the target (it opens more than one: applying, reports, look-ahead).
    pub async fn backend_pids(&self, stack: &Stack) -> Vec<Pid> {
        let rows = stack
            .target
            .query("SELECT pid FROM pg_stat_activity WHERE application_name = $1", &[&app_name(&self.task)])
            .await
            .expect("pg_stat_activity");
        rows.iter().filter_map(|r| Pid::try_from(r.get::<_, i32>(0)).ok()).collect()
    }

    /// Stops the applier as an operator would (SIGTERM), or kills it after 30 s.
    pub async fn stop(mut self) {
        if host::running(self.pid) {
            let _ = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status().await;
            if tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.is_err() {
                let _ = self.child.kill().await;
            }
        }
        let _ = self.child.wait().await;
    }
}

fn app_name(task: &str) -> String {
    format!("trempy-bench-applier-{task}")
}
