//! The applier's own tables in the target are versioned: an applier brings a target of any
//! earlier version (also one from before versioning) up to date and replicates into it, and
//! refuses a target a newer applier has upgraded.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;
use trempy_e2e::*;

const WAIT: Duration = Duration::from_secs(120);

/// Runs `trempy-applier status` against `dsn`: exit success, stdout, stderr.
async fn status(dsn: &str) -> (bool, String, String) {
    let output = Command::new(env("TREMPY_APPLIER_BIN"))
        .args(["status", "--target-dsn", dsn])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unversioned_target_is_upgraded_in_place_and_a_newer_one_is_refused() {
    let database = unique("oldtarget");
    target().await.batch_execute(&format!("CREATE DATABASE {database}")).await.unwrap();
    let dsn = {
        let base = env("TREMPY_TARGET_DSN");
        format!("{}/{database}", &base[..base.rfind('/').unwrap()])
    };
    let old = connect(&dsn).await;
    // the progress table as the first appliers made it, with a task's position in it
    old.batch_execute(
        "CREATE SCHEMA trempy;
         CREATE TABLE trempy.applier_progress (
             task_name text PRIMARY KEY, commit_lsn pg_lsn NOT NULL, source_commit_time timestamptz,
             transactions_applied bigint NOT NULL DEFAULT 0, changes_applied bigint NOT NULL DEFAULT 0,
             applied_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO trempy.applier_progress (task_name, commit_lsn, transactions_applied, changes_applied) VALUES ('earlier_task', '0/16B3748', 5, 7);",
    )
    .await
    .unwrap();

    let (ok, out, err) = status(&dsn).await;
    assert!(ok && out.contains("earlier_task"), "status on an old target: {out} {err}");
    let version: i32 = old.query_one("SELECT max(version) FROM trempy.applier_schema", &[]).await.unwrap().get(0);
    assert!(version >= 1);
    let kept: (String, i32, i64) = {
        let row = old.query_one("SELECT commit_lsn::text, generation, changes_applied FROM trempy.applier_progress WHERE task_name = 'earlier_task'", &[]).await.unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(kept, ("0/16B3748".to_owned(), 1, 7), "the position survives the upgrade");
    for table in ["applier_state", "applier_errors", "applier_deadletters", "applier_schema_changes", "applier_staging"]
    {
        assert!(table_exists(&old, &format!("trempy.{table}")).await, "{table} created");
    }

    // a task replicates into the upgraded target
    let task = unique("upgraded");
    let table = format!("public.{task}");
    let source = source().await;
    source.batch_execute(&format!("CREATE TABLE {table} (id int PRIMARY KEY, v text); INSERT INTO {table} SELECT g, 'loaded' FROM generate_series(1, 100) g;")).await.unwrap();
    create_task_with(&source, &task, &load_settings(&task, "full_load_and_cdc", &[("public", &task)])).await;
    let _applier = Applier::start_with(&task, &["--target-dsn", &dsn]);
    source.batch_execute(&format!("UPDATE {table} SET v = 'streamed' WHERE id <= 10")).await.unwrap();
    let expected = fingerprint(&source, &table, "id").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let got =
            if table_exists(&old, &table).await { fingerprint(&old, &table, "id").await } else { (-1, String::new()) };
        if got == expected {
            break;
        }
        assert!(Instant::now() < deadline, "the upgraded target did not converge: {got:?} vs {expected:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(_applier);
    drop_task(&source, &task).await;

    // a target a newer applier upgraded is refused, naming the remedy
    old.batch_execute("INSERT INTO trempy.applier_schema (version, what) VALUES (999, 'from the future')")
        .await
        .unwrap();
    let (ok, out, err) = status(&dsn).await;
    let said = format!("{out}{err}");
    assert!(!ok && said.contains("newer than this applier") && said.contains("upgrade trempy-applier"), "{said}");
    drop(old);
    target().await.batch_execute(&format!("DROP DATABASE {database} WITH (FORCE)")).await.unwrap();
}
