//! The applier's reports reach the source: `trempy.status()` shows the applier's state, reason
//! and the LSN it applied, through the task's feedback queue (the applier never connects to the
//! source). A stop-policy failure shows as `applier stopped` with the reason; a resume shows as
//! running again.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use trempy_e2e::*;

const CONVERGE: Duration = Duration::from_secs(120);

/// The task's `trempy.status()` columns this test looks at.
#[derive(Debug, Clone)]
struct Seen {
    state: Option<String>,
    applier_state: Option<String>,
    applier_reason: Option<String>,
    applier_lsn: Option<String>,
    reported: bool,
}

async fn seen(source: &Client, task: &str) -> Seen {
    let row = source
        .query_one(
            "SELECT state, applier_state, applier_reason, applier_lsn::text, applier_reported_at IS NOT NULL FROM trempy.status() WHERE task_name = $1",
            &[&task],
        )
        .await
        .unwrap();
    Seen {
        state: row.get(0),
        applier_state: row.get(1),
        applier_reason: row.get(2),
        applier_lsn: row.get(3),
        reported: row.get(4),
    }
}

/// Waits until the task's status row satisfies `wanted`, and returns it.
async fn wait_seen(source: &Client, task: &str, what: &str, wanted: impl Fn(&Seen) -> bool) -> Seen {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let now = seen(source, task).await;
        if wanted(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "task {task}: {what} never showed in trempy.status(): {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `a >= b` for two LSNs as text, compared by the source.
async fn lsn_at_least(source: &Client, a: &str, b: &str) -> bool {
    source.query_one("SELECT $1::text::pg_lsn >= $2::text::pg_lsn", &[&a, &b]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_appliers_state_reason_and_position() {
    let task = unique("feedback");
    let t = format!("public.{task}");
    let source = source().await;
    source.batch_execute(&format!("CREATE TABLE {t} (id int PRIMARY KEY, v text)")).await.unwrap();
    // Only the target refuses v = 'bad'.
    target()
        .await
        .batch_execute(&format!("CREATE TABLE {t} (id int PRIMARY KEY, v text CONSTRAINT no_bad CHECK (v <> 'bad'))"))
        .await
        .unwrap();
    let mut settings = cdc_settings(&task, &[("public", &task)]);
    settings["error_handling"] = serde_json::json!({
        "stop_if_insert_error": true, "stop_if_update_error": false, "stop_if_delete_error": false,
        "stop_if_upsert_error": true, "stop_if_scd2_error": false
    });
    create_task_with(&source, &task, &settings).await;
    wait_for_state(&source, &task, "running", Duration::from_secs(60)).await;
    let _applier = Applier::start(&task);

    // Running: the applier's watermark reaches the source's last change.
    source.batch_execute(&format!("INSERT INTO {t} VALUES (1, 'good')")).await.unwrap();
    let before_last: String = source.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    source.batch_execute(&format!("INSERT INTO {t} VALUES (2, 'good')")).await.unwrap();
    wait_converged(&[(&t, "id")], CONVERGE).await;
    let deadline = Instant::now() + CONVERGE;
    loop {
        let now = seen(&source, &task).await;
        if now.applier_state.as_deref() == Some("running")
            && let Some(lsn) = &now.applier_lsn
            && lsn_at_least(&source, lsn, &before_last).await
        {
            assert_eq!(now.state.as_deref(), Some("running"), "{now:?}");
            assert!(now.reported, "{now:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the applier's position never reached {before_last}: {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A stop-policy failure: the task shows as stopped by the applier, with the reason.
    source.batch_execute(&format!("INSERT INTO {t} VALUES (3, 'bad')")).await.unwrap();
    let stopped =
        wait_seen(&source, &task, "applier_state stopped", |s| s.applier_state.as_deref() == Some("stopped")).await;
    let stopped = if stopped.state.as_deref() == Some("applier stopped") {
        stopped
    } else {
        wait_seen(&source, &task, "state 'applier stopped'", |s| s.state.as_deref() == Some("applier stopped")).await
    };
    let reason = stopped.applier_reason.clone().unwrap_or_default();
    assert!(reason.contains("no_bad") && !reason.contains("bad')") && !reason.contains("(v)"), "{reason}");
    assert!(lsn_at_least(&source, stopped.applier_lsn.as_deref().unwrap(), &before_last).await, "{stopped:?}");

    // Fixed and resumed: running again, and the refused row arrives.
    target().await.batch_execute(&format!("ALTER TABLE {t} DROP CONSTRAINT no_bad")).await.unwrap();
    let (ok, out) = applier_command(&["resume", "--task", &task]).await;
    assert!(ok && out.contains("resumed"), "{out}");
    wait_converged(&[(&t, "id")], CONVERGE).await;
    wait_seen(&source, &task, "running again", |s| {
        s.applier_state.as_deref() == Some("running") && s.state.as_deref() == Some("running")
    })
    .await;

    drop_task(&source, &task).await;
}
