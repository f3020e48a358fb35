//! TREMpy's demo (`scripts/dev.sh demo`): loads `sql/demo_schema.sql` into the source and the
//! target, (re)creates the task `demo` for `shop."Customers"` and `shop.orders`, starts
//! trempy-applier in the background, makes a few changes on the source, waits until the target
//! matches the source, and shows what happened as a DBA would see it (psql). The stack and the
//! applier are left running. Re-runnable: a previous demo task, its applier, its RabbitMQ queues,
//! its watermark and the demo rows are removed first.
//!
//! It is built on the end-to-end tests' helpers: the same connections, the same table
//! fingerprint and the same wait for it.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_postgres::Client;
use trempy_e2e::{connect, env, fingerprint, wait_for_fingerprint};

const TASK: &str = "demo";
const SCHEMA: &str = include_str!("../../sql/demo_schema.sql");
/// The demo's tables, as they are written in SQL, and their keys.
const TABLES: [(&str, &str); 2] = [("shop.\"Customers\"", "id"), ("shop.orders", "id")];

/// The changes the demo makes at the source, one statement at a time (as psql sends them).
const CHANGES: &[&str] = &[
    // inserts, one with quotes, a backslash, unicode and a newline in the name
    "INSERT INTO shop.\"Customers\" (id, name, email) VALUES
        (1, 'Alice Martin', 'alice@example.com'),
        (2, E'Zoë O''Brien \"the \\\\ great\" — 東京 🚀\\nsecond line', 'zoe@example.com'),
        (3, 'Carlos Pérez', 'carlos@example.com'),
        (4, 'To Be Deleted', NULL)",
    "INSERT INTO shop.orders (customer_id, amount, status, note) VALUES
        (1, 19.99, 'new', 'first order'), (2, 5.00, 'new', E'tab\\there'), (3, 120.50, 'new', NULL)",
    // updates
    "UPDATE shop.\"Customers\" SET email = 'alice.martin@example.com' WHERE id = 1",
    "UPDATE shop.orders SET status = 'paid' WHERE customer_id = 1",
    // a primary-key update (the applier deletes the old key and upserts the new row)
    "UPDATE shop.\"Customers\" SET id = 30 WHERE id = 3",
    "UPDATE shop.orders SET customer_id = 30 WHERE customer_id = 3",
    // deletes
    "DELETE FROM shop.\"Customers\" WHERE id = 4",
    "DELETE FROM shop.orders WHERE id = 2",
    // a rolled-back transaction: never reaches the target
    "BEGIN",
    "INSERT INTO shop.\"Customers\" (id, name) VALUES (99, 'never committed')",
    "DELETE FROM shop.orders",
    "ROLLBACK",
    // one 10,000-row transaction
    "INSERT INTO shop.orders (customer_id, amount, status, note)
     SELECT 1 + g % 2, round((g % 1000) / 7.0, 2), (ARRAY['new', 'paid', 'shipped'])[1 + g % 3], 'bulk order #' || g
       FROM generate_series(1, 10000) AS g",
];

fn say(line: &str) {
    eprintln!("demo: {line}");
}

/// Runs the demo; its failures end it with the cause on stderr.
pub async fn run(timeout: Duration) -> ExitCode {
    match demo(timeout).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("demo: ERROR: {failure}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(timeout: Duration) -> Result<(), String> {
    let started = Instant::now();
    let stack_dir = PathBuf::from(env("TREMPY_STACK_DIR"));
    let applier_log = stack_dir.join("applier-demo.log");
    let pid_file = stack_dir.join("applier-demo.pid");
    let source = session("TREMPY_SOURCE_DSN").await;
    let target = session("TREMPY_TARGET_DSN").await;

    // ------------------------------------------------------------ reset a previous run
    stop_previous_applier(&pid_file).await?;
    say("loading sql/demo_schema.sql into source and target");
    source
        .batch_execute("CREATE EXTENSION IF NOT EXISTS trempy")
        .await
        .map_err(|e| format!("CREATE EXTENSION trempy: {e}"))?;
    for (side, client) in [("source", &source), ("target", &target)] {
        client.batch_execute(SCHEMA).await.map_err(|e| format!("loading the demo schema into the {side}: {e}"))?;
    }
    let exists: i64 = source
        .query_one("SELECT count(*) FROM trempy.tasks WHERE task_name = $1", &[&TASK])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if exists > 0 {
        say(&format!("dropping the previous task '{TASK}'"));
        source.execute("SELECT trempy.drop_task($1)", &[&TASK]).await.map_err(|e| format!("trempy.drop_task: {e}"))?;
    }
    let (admin, _channel) = trempy_e2e::amqp_channel().await;
    for queue in [format!("trempy_queue_{TASK}"), format!("dlx_queue_{TASK}")] {
        trempy_e2e::delete_queue(&admin, &queue).await;
    }
    // demo rows of an earlier run: gone on both sides, so that source and target start equal
    let truncate = "TRUNCATE shop.\"Customers\", shop.orders RESTART IDENTITY";
    source.batch_execute(truncate).await.map_err(|e| format!("TRUNCATE on the source: {e}"))?;
    target.batch_execute(truncate).await.map_err(|e| format!("TRUNCATE on the target: {e}"))?;
    target
        .batch_execute(&format!(
            "DO $$ BEGIN
                IF to_regclass('trempy.applier_progress') IS NOT NULL THEN
                    DELETE FROM trempy.applier_progress WHERE task_name = '{TASK}';
                END IF;
            END $$"
        ))
        .await
        .map_err(|e| format!("resetting the demo's watermark on the target: {e}"))?;

    // ------------------------------------------------------------ task + applier
    say(&format!("creating task '{TASK}' for shop.\"Customers\" and shop.orders"));
    let settings = json!({
        "task": {"task_name": TASK, "replication_type": "cdc", "cdc_settings": {"mode": "upsert"}},
        "tables": [{"schema_name": "shop", "table_name": "Customers", "priority": 0},
                   {"schema_name": "shop", "table_name": "orders", "priority": 0}]
    });
    source
        .execute("SELECT trempy.create_task($1, $2::text::jsonb)", &[&TASK, &settings.to_string()])
        .await
        .map_err(|e| format!("trempy.create_task('{TASK}'): {e}"))?;
    wait_running(&source).await?;
    say(&format!("task '{TASK}' is running"));

    say(&format!("starting trempy-applier in the background (log: {})", applier_log.display()));
    let pid = start_applier(&applier_log)?;
    std::fs::write(&pid_file, format!("{pid}\n")).map_err(|e| format!("{}: {e}", pid_file.display()))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    if !is_demo_applier(pid) {
        return Err(format!("trempy-applier exited right away:\n{}", log_tail(&applier_log)));
    }

    // ------------------------------------------------------------ changes on the source
    say("making changes on the source");
    for statement in CHANGES {
        source.batch_execute(statement).await.map_err(|e| format!("the demo changes failed on the source: {e}"))?;
    }

    // ------------------------------------------------------------ convergence
    say(&format!("waiting up to {}s for the target to match the source", timeout.as_secs()));
    let converge_started = Instant::now();
    let deadline = converge_started + timeout;
    let mut converged = true;
    let mut applier_died = false;
    for (table, key) in TABLES {
        let want = fingerprint(&source, table, key).await;
        let ready = format!("SELECT to_regclass('{}') IS NOT NULL", table.replace('\'', "''"));
        let left = deadline.saturating_duration_since(Instant::now());
        let seen = wait_for_fingerprint(&target, table, key, &want, &ready, left, || {
            applier_died = !is_demo_applier(pid);
            !applier_died
        })
        .await;
        converged &= seen.is_ok();
        if applier_died {
            return Err(format!("trempy-applier (pid {pid}) exited:\n{}", log_tail(&applier_log)));
        }
    }
    let converged_after = converge_started.elapsed();

    // ------------------------------------------------------------ what happened
    show(
        "trempy.status() (source)",
        "source",
        &format!(
            "SELECT task_name, state, lag_bytes, changes_published, transactions_published, messages_published, last_error
               FROM trempy.status() WHERE task_name = '{TASK}'"
        ),
    )
    .await;
    show(
        "trempy.applier_progress (target)",
        "target",
        &format!(
            "SELECT task_name, commit_lsn, transactions_applied, changes_applied, applied_at
               FROM trempy.applier_progress WHERE task_name = '{TASK}'"
        ),
    )
    .await;
    show(
        "target rows of shop.\"Customers\"",
        "target",
        "SELECT id, name, email, created_at FROM shop.\"Customers\" ORDER BY id",
    )
    .await;
    println_summary(&source, &target).await;

    if !converged {
        return Err(format!(
            "the target did not converge within {}s (the applier, pid {pid}, is still running); its log ends:\n{}",
            timeout.as_secs(),
            log_tail(&applier_log)
        ));
    }
    print_epilogue(converged_after, started.elapsed(), pid, &applier_log);
    Ok(())
}

/// A session as role trempy, named in pg_stat_activity.
async fn session(dsn_variable: &str) -> Client {
    let dsn = env(dsn_variable);
    connect(&trempy_e2e::with_application_name(&dsn, "trempy-demo")).await
}

async fn wait_running(source: &Client) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = source
            .query_opt("SELECT state, last_error FROM trempy.status() WHERE task_name = $1", &[&TASK])
            .await
            .map_err(|e| e.to_string())?;
        let (state, error): (Option<String>, Option<String>) = row.map_or((None, None), |r| (r.get(0), r.get(1)));
        if state.as_deref() == Some("running") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("task '{TASK}' did not reach state 'running' (state {state:?}, last error {error:?})"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Starts `trempy-applier run --task demo` in a process group of its own, so that it outlives
/// the demo and a Ctrl-C in its terminal.
fn start_applier(log: &PathBuf) -> Result<u32, String> {
    let file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let child = std::process::Command::new(env("TREMPY_APPLIER_BIN"))
        .args(["run", "--task", TASK])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start trempy-applier: {e}"))?;
    Ok(child.id())
}

/// Whether `pid` is a running `trempy-applier run --task demo` (not a zombie).
fn is_demo_applier(pid: u32) -> bool {
    let running = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    running
        && args.first().is_some_and(|a| a.ends_with(b"trempy-applier"))
        && args.get(1..4) == Some(&[b"run".as_slice(), b"--task".as_slice(), TASK.as_bytes()][..])
}

/// Stops the applier a previous demo run left running (by its recorded pid).
async fn stop_previous_applier(pid_file: &PathBuf) -> Result<(), String> {
    let Some(pid) = std::fs::read_to_string(pid_file).ok().and_then(|p| p.trim().parse::<u32>().ok()) else {
        return Ok(());
    };
    if is_demo_applier(pid) {
        say(&format!("stopping the applier of the previous demo run (pid {pid})"));
        let _ = tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            if Instant::now() >= deadline {
                return Err(format!("the previous demo applier (pid {pid}) did not stop"));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let _ = std::fs::remove_file(pid_file);
    Ok(())
}

fn log_tail(log: &PathBuf) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

/// Shows a query's result as psql does, as role trempy over the stack's socket (the password
/// in psql's environment only).
async fn show(title: &str, database: &str, sql: &str) {
    let port = env(if database == "source" { "TREMPY_SOURCE_PORT" } else { "TREMPY_TARGET_PORT" });
    let password = std::fs::read_to_string(PathBuf::from(env("TREMPY_STACK_DIR")).join("password")).unwrap_or_default();
    let output = tokio::process::Command::new(PathBuf::from(env("TREMPY_PG_BIN")).join("psql"))
        .args(["-X", "-h", &env("TREMPY_SOCKET_DIR"), "-p", &port, "-U", "trempy", "-d", database, "-c", sql])
        .env("PGPASSWORD", password.trim())
        .env("PGAPPNAME", "trempy-demo")
        .env("PGTZ", "UTC")
        .stdin(Stdio::null())
        .output()
        .await;
    print_block(title, output.ok().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()));
}

#[allow(clippy::print_stdout)] // what happened is the demo's output
fn print_block(title: &str, text: Option<String>) {
    println!("== {title}");
    print!("{}", text.filter(|t| !t.is_empty()).unwrap_or_else(|| "(nothing to show yet)\n".to_owned()));
}

/// Source and target side by side: each table's row count and fingerprint.
#[allow(clippy::print_stdout)]
async fn println_summary(source: &Client, target: &Client) {
    println!("== source vs target (count, md5 over every row's md5, in key order)");
    println!("{:<17} {:>10} {:>10}  {:<32}  {:<32}  match", "table", "source", "target", "source md5", "target md5");
    for (table, key) in TABLES {
        let (s, t) = (fingerprint(source, table, key).await, fingerprint(target, table, key).await);
        let matched = if s == t { "yes" } else { "NO" };
        println!("{table:<17} {:>10} {:>10}  {:<32}  {:<32}  {matched}", s.0, t.0, s.1, t.1);
    }
    println!();
}

#[allow(clippy::print_stdout)]
fn print_epilogue(converged_after: Duration, took: Duration, pid: u32, log: &std::path::Path) {
    println!(
        "The target matches the source (converged {:.1}s after the changes; demo took {:.0}s).",
        converged_after.as_secs_f64(),
        took.as_secs_f64()
    );
    println!("Left running:");
    println!("  {:<50} log: {}", format!("trempy-applier, pid {pid}"), log.display());
    println!(
        "  {:<50} try: scripts/dev.sh psql-source -c \"INSERT INTO shop.\\\"Customers\\\" (id, name) VALUES (5, 'Eve')\"",
        format!("task '{TASK}' on the source")
    );
    println!("To stop:");
    println!("  {:<70} # the applier (SIGTERM)", format!("kill {pid}"));
    println!(
        "  {:<70} # the task (slot + publication)",
        format!("scripts/dev.sh psql-source -c \"SELECT trempy.drop_task('{TASK}')\"")
    );
    println!("  {:<70} # the whole stack", "scripts/dev.sh stack-down");
}
