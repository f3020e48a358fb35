//! Full load and its hand-off to CDC, against the real stack: every source transaction is either
//! in a table's copy or replayed by CDC, never both and never neither, while writers keep
//! changing every table during the load.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::Duration;

use trempy_e2e::*;

const CONVERGE: Duration = Duration::from_secs(300);
const ROWS: i64 = 200_000;

/// Three tables of `ROWS` rows with different shapes (one with odd identifiers and a composite
/// key, one with a wide text column), created on the source only: the task creates them on the
/// target. Returns their qualified names and their ORDER BY lists.
async fn three_tables(task: &str) -> Vec<(String, String)> {
    let schema = format!("\"Load ✓ {task}\"");
    let a = format!("public.{task}_a");
    let b = format!("{schema}.\"Mixed Case\"");
    let c = format!("public.{task}_c");
    source()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {a} (id bigint PRIMARY KEY, v int NOT NULL, note text);
             INSERT INTO {a} SELECT g, g % 1000, 'row ' || g FROM generate_series(1, {ROWS}) g;
             CREATE SCHEMA {schema};
             CREATE TABLE {b} (\"Id\" int, \"Kind\" text, \"Ünï\" numeric(12,3), PRIMARY KEY (\"Id\", \"Kind\"));
             INSERT INTO {b} SELECT g, CASE WHEN g % 2 = 0 THEN 'even' ELSE 'odd \"q\"' END, g / 7.0 FROM generate_series(1, {ROWS}) g;
             CREATE TABLE {c} (id int PRIMARY KEY, body text, at timestamptz NOT NULL DEFAULT now());
             INSERT INTO {c} SELECT g, repeat(md5(g::text), 4) || E'\\t\\n\\\\', '2026-01-01'::timestamptz + g * interval '1 second'
               FROM generate_series(1, {ROWS}) g;
             ANALYZE {a}, {b}, {c};"
        ))
        .await
        .unwrap();
    vec![(a, "id".into()), (b, "\"Id\", \"Kind\"".into()), (c, "id".into())]
}

/// The three tables of [`three_tables`] as (schema, table) pairs, unquoted.
fn table_names(task: &str) -> Vec<(String, String)> {
    vec![
        ("public".into(), format!("{task}_a")),
        (format!("Load ✓ {task}"), "Mixed Case".into()),
        ("public".into(), format!("{task}_c")),
    ]
}

/// One transaction touching all three tables: inserts, updates and deletes, sometimes many rows.
fn mixed_writes(tables: &[(String, String)], i: u64) -> String {
    let (a, b, c) = (&tables[0].0, &tables[1].0, &tables[2].0);
    let id = (i * 7919) % (ROWS as u64) + 1;
    let other = (i * 104_729) % (ROWS as u64) + 1;
    let big = if i.is_multiple_of(50) {
        format!("UPDATE {a} SET v = v + 1 WHERE id BETWEEN {id} AND {id} + 500;")
    } else {
        String::new()
    };
    format!(
        "BEGIN;
         INSERT INTO {a} VALUES ({n}, {i} % 1000, 'new') ON CONFLICT (id) DO UPDATE SET note = 'again';
         UPDATE {a} SET note = note || '+', v = v + 1 WHERE id = {id};
         DELETE FROM {a} WHERE id = {other};
         UPDATE {b} SET \"Ünï\" = \"Ünï\" + 1 WHERE \"Id\" = {id};
         INSERT INTO {b} VALUES ({n}, 'new', {i}) ON CONFLICT DO NOTHING;
         DELETE FROM {b} WHERE \"Id\" = {other} AND \"Kind\" = 'odd \"q\"';
         UPDATE {c} SET body = 'changed ' || {i} WHERE id = {other};
         DELETE FROM {c} WHERE id = {id};
         INSERT INTO {c} (id, body) VALUES ({n}, 'new') ON CONFLICT (id) DO NOTHING;
         {big}
         COMMIT;",
        n = ROWS as u64 + 1 + i
    )
}

/// The three tables of [`three_tables`], a writer changing all of them, and a `full_load_and_cdc`
/// task over them created while the writer runs. Returns the tables, a source connection and
/// the writer.
async fn load_under_writes(task: &str) -> (Vec<(String, String)>, tokio_postgres::Client, Writer) {
    let tables = three_tables(task).await;
    let source = source().await;
    let names = table_names(task);
    let refs: Vec<(&str, &str)> = names.iter().map(|(s, t)| (s.as_str(), t.as_str())).collect();
    let writer_tables = tables.clone();
    let writer = Writer::start(move |i| mixed_writes(&writer_tables, i));
    tokio::time::sleep(Duration::from_millis(500)).await;
    create_task_with(&source, task, &load_settings(task, "full_load_and_cdc", &refs)).await;
    (tables, source, writer)
}

/// Each table of the task's load with its copy attempt, in load order.
async fn load_attempts(source: &tokio_postgres::Client, task: &str) -> Vec<(String, i32)> {
    source
        .query("SELECT table_name, attempt FROM trempy.load_status() WHERE task_name = $1 ORDER BY position", &[&task])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn pairs(tables: &[(String, String)]) -> Vec<(&str, &str)> {
    tables.iter().map(|(t, o)| (t.as_str(), o.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_load_and_cdc_is_exact_while_writers_change_every_table() {
    let task = unique("load");
    let (tables, source, writer) = load_under_writes(&task).await;
    let _applier = Applier::start(&task);
    wait_for_phase(&source, &task, "cdc", CONVERGE).await;
    // keep writing a little into CDC, then stop
    tokio::time::sleep(Duration::from_secs(2)).await;
    let committed = writer.stop().await;
    println!("writer committed {committed} transactions during the load");
    assert!(committed > 20, "the writer barely ran ({committed})");
    wait_converged(&pairs(&tables), CONVERGE).await;

    // progress: every table copied once, counts and percent reported
    let rows = source
        .query("SELECT state, attempt, rows_copied, percent::float8 FROM trempy.load_status() WHERE task_name = $1 ORDER BY position", &[&task])
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert_eq!(row.get::<_, String>(0), "copied");
        assert_eq!(row.get::<_, i32>(1), 1);
        assert!(row.get::<_, i64>(2) >= ROWS - 1000, "rows copied {}", row.get::<_, i64>(2));
        assert_eq!(row.get::<_, f64>(3), 100.0);
    }
    let status = source
        .query_one("SELECT phase, load_percent::float8 FROM trempy.status() WHERE task_name = $1", &[&task])
        .await
        .unwrap();
    assert_eq!((status.get::<_, String>(0), status.get::<_, f64>(1)), ("cdc".to_owned(), 100.0));
    // the created target tables carry the key and NOT NULL
    let target = target().await;
    let pk: i64 = target
        .query_one(
            &format!(
                "SELECT count(*) FROM pg_index WHERE indrelid = '{}'::regclass AND indisprimary",
                tables[1].0.replace('\'', "''")
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pk, 1);
    let not_null: bool = target
        .query_one(
            &format!(
                "SELECT attnotnull FROM pg_attribute WHERE attrelid = '{}'::regclass AND attname = 'v'",
                tables[0].0
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(not_null);
    drop_task(&source, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applier_killed_during_the_load_resumes_from_its_last_chunk_and_stays_exact() {
    let task = unique("loadkill");
    let (tables, source, writer) = load_under_writes(&task).await;
    let mut applier = Applier::start(&task);
    let target = target().await;
    let mut kills = 0;
    let mut last_loaded = 0_i64;
    let deadline = std::time::Instant::now() + CONVERGE;
    // kill the applier each time it has loaded more rows, until the whole load is applied
    while kills < 4 && std::time::Instant::now() < deadline {
        let loaded: Option<i64> = target
            .query_opt("SELECT rows_loaded FROM trempy.applier_progress WHERE task_name = $1", &[&task])
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0));
        let loaded = loaded.unwrap_or(0);
        if loaded > last_loaded && loaded < 3 * ROWS {
            applier.restart_after_kill().await;
            kills += 1;
            last_loaded = loaded;
        }
        if loaded >= 3 * ROWS - 3000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!("killed the applier {kills} times during the load");
    assert!(kills >= 1, "the load finished before the applier could be killed");
    wait_for_phase(&source, &task, "cdc", CONVERGE).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    writer.stop().await;
    wait_converged(&pairs(&tables), CONVERGE).await;
    drop_task(&source, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_starts_clean_and_continue_picks_up_edited_settings() {
    let task = unique("reload");
    let a = format!("public.{task}_a");
    let b = format!("public.{task}_b");
    source()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {a} (id int PRIMARY KEY, v text); INSERT INTO {a} SELECT g, 'v' || g FROM generate_series(1, 1000) g;
             CREATE TABLE {b} (id int PRIMARY KEY, v text); INSERT INTO {b} SELECT g, 'b' || g FROM generate_series(1, 10) g;"
        ))
        .await
        .unwrap();
    let source = source().await;
    let only_a = [("public", format!("{task}_a"))];
    let refs: Vec<(&str, &str)> = only_a.iter().map(|(s, t)| (*s, t.as_str())).collect();
    create_task_with(&source, &task, &load_settings(&task, "full_load", &refs)).await;
    let _applier = Applier::start(&task);
    wait_for_state(&source, &task, "finished", CONVERGE).await;
    wait_converged(&[(&a, "id")], CONVERGE).await;

    // the source changes and the target drifts; a reload with truncate makes them equal again
    source
        .batch_execute(&format!("DELETE FROM {a} WHERE id <= 10; INSERT INTO {a} VALUES (5000, 'new')"))
        .await
        .unwrap();
    target().await.batch_execute(&format!("INSERT INTO {a} VALUES (9999, 'stray')")).await.unwrap();
    let mut settings = load_settings(&task, "full_load", &refs);
    settings["task"]["start_mode"] = "reload".into();
    settings["task"]["full_load_settings"] = serde_json::json!({"truncate_before_insert": true});
    source.execute("SELECT trempy.update_task($1, $2::text::jsonb)", &[&task, &settings.to_string()]).await.unwrap();
    wait_for_state(&source, &task, "finished", CONVERGE).await;
    let fp = wait_converged(&[(&a, "id")], CONVERGE).await;
    assert_eq!(fp[0].0, 991);
    let generation: i32 = target()
        .await
        .query_one("SELECT generation FROM trempy.applier_progress WHERE task_name = $1", &[&task])
        .await
        .unwrap()
        .get(0);
    assert_eq!(generation, 2);

    // continue with edited settings: now full_load_and_cdc over both tables. Table a was copied
    // without a slot, so CDC cannot take over from that copy: it is copied again (attempt 2)
    // after the slot is created; b is copied; then changes to both stream.
    let both = [("public", format!("{task}_a")), ("public", format!("{task}_b"))];
    let refs: Vec<(&str, &str)> = both.iter().map(|(s, t)| (*s, t.as_str())).collect();
    let mut settings = load_settings(&task, "full_load_and_cdc", &refs);
    settings["task"]["start_mode"] = "continue".into();
    settings["task"]["full_load_settings"] = serde_json::json!({"truncate_before_insert": true});
    source.execute("SELECT trempy.update_task($1, $2::text::jsonb)", &[&task, &settings.to_string()]).await.unwrap();
    wait_for_phase(&source, &task, "cdc", CONVERGE).await;
    source
        .batch_execute(&format!(
            "UPDATE {a} SET v = 'streamed' WHERE id = 500; INSERT INTO {b} VALUES (11, 'streamed')"
        ))
        .await
        .unwrap();
    wait_converged(&[(&a, "id"), (&b, "id")], CONVERGE).await;
    let attempts = load_attempts(&source, &task).await;
    assert_eq!(attempts, vec![(format!("{task}_a"), 2), (format!("{task}_b"), 1)]);

    // another edit in continue mode keeps the slot and the copies: nothing is copied again and
    // changes made while the worker restarts are not lost
    let writer_a = a.clone();
    let writer = Writer::start(move |i| {
        format!("INSERT INTO {writer_a} VALUES ({}, 'during') ON CONFLICT (id) DO UPDATE SET v = 'again'", 10_000 + i)
    });
    settings["task"]["interval_seconds"] = 1.into();
    source.execute("SELECT trempy.update_task($1, $2::text::jsonb)", &[&task, &settings.to_string()]).await.unwrap();
    wait_for_state(&source, &task, "running", CONVERGE).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    writer.stop().await;
    wait_converged(&[(&a, "id"), (&b, "id")], CONVERGE).await;
    let attempts_after = load_attempts(&source, &task).await;
    assert_eq!(attempts_after, attempts);
    drop_task(&source, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoding_worker_stopped_mid_table_copies_the_table_again_and_stays_exact() {
    let task = unique("loadterm");
    let (tables, source, writer) = load_under_writes(&task).await;
    let _applier = Applier::start(&task);
    // as soon as some table has published rows but is not finished, stop the worker (SIGTERM);
    // the launcher starts a new one, which copies that table again under a new snapshot. A stop
    // that lands after the copy committed interrupts nothing: then try the next table. (Any
    // attempt: a worker may have been restarted before, on a loaded machine.)
    let deadline = std::time::Instant::now() + CONVERGE;
    let mut seen: Vec<String> = Vec::new();
    let (interrupted, attempt_stopped) = loop {
        let rows = source
            .query(
                "SELECT l.table_name, l.state, l.attempt, l.rows_copied, trempy.worker_pid(t.task_id) FROM trempy.load_status() l JOIN trempy.tasks t USING (task_name)
                  WHERE l.task_name = $1 ORDER BY l.position",
                &[&task],
            )
            .await
            .unwrap();
        let now: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{} {} attempt {} rows>0 {}",
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, i32>(2),
                    r.get::<_, i64>(3) > 0
                )
            })
            .collect();
        let now = now.join(", ");
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        let copying = rows.iter().find(|r| r.get::<_, String>(1) == "copying" && r.get::<_, i64>(3) > 0);
        if let Some(row) = copying {
            let (table, attempt, pid): (String, i32, Option<i32>) = (row.get(0), row.get(2), row.get(4));
            source.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
            while source
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", &[&pid])
                .await
                .unwrap()
                .get::<_, i64>(0)
                > 0
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let row = source
                .query_one(
                    "SELECT state, attempt FROM trempy.load_status() WHERE task_name = $1 AND table_name = $2",
                    &[&task, &table],
                )
                .await
                .unwrap();
            let (state, now_attempt): (String, i32) = (row.get(0), row.get(1));
            seen.push(format!(
                "stopped worker {pid:?} copying {table} (attempt {attempt}): now {state}, attempt {now_attempt}"
            ));
            if state != "copied" {
                break (table, attempt);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never stopped the worker while a table was being copied; seen:\n{}",
            seen.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("{}", seen.join("\n"));
    wait_for_phase(&source, &task, "cdc", CONVERGE).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    writer.stop().await;
    wait_converged(&pairs(&tables), CONVERGE).await;
    let attempt: i32 = source
        .query_one(
            "SELECT attempt FROM trempy.load_status() WHERE task_name = $1 AND table_name = $2",
            &[&task, &interrupted],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        attempt > attempt_stopped,
        "table {interrupted} should have been copied again after attempt {attempt_stopped}; seen:\n{}",
        seen.join("\n")
    );
    drop_task(&source, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_identifiers_are_quoted_everywhere_never_executed() {
    let task = unique("hostile");
    // a schema, table and columns whose names try to end the statement and inject another
    // (names stay under PostgreSQL's 63 bytes, which would truncate them)
    let schema = format!("s\"; DROP TABLE c; -- {task}");
    let table = "t'); DELETE FROM public.canary; --\"ü";
    let q = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    let qualified = format!("{}.{}", q(&schema), q(table));
    let canary = format!("public.{task}_canary");
    let source = source().await;
    source
        .batch_execute(&format!(
            "CREATE TABLE {canary} (id int PRIMARY KEY); INSERT INTO {canary} VALUES (1);
             CREATE SCHEMA {};
             CREATE TABLE {qualified} ({} int PRIMARY KEY, {} text, \"Mixed Case ✓\" numeric);
             INSERT INTO {qualified} SELECT g, 'v;' || g, g FROM generate_series(1, 100) g;",
            q(&schema),
            q("id; DROP TABLE x"),
            q("$1 \\' --")
        ))
        .await
        .unwrap();
    target()
        .await
        .batch_execute(&format!("CREATE TABLE {canary} (id int PRIMARY KEY); INSERT INTO {canary} VALUES (1);"))
        .await
        .unwrap();
    create_task_with(&source, &task, &load_settings(&task, "full_load_and_cdc", &[(&schema, table)])).await;
    let _applier = Applier::start(&task);
    wait_for_phase(&source, &task, "cdc", CONVERGE).await;
    source
        .batch_execute(&format!(
            "UPDATE {qualified} SET {} = 'changed' WHERE {} <= 10; DELETE FROM {qualified} WHERE {} > 90;",
            q("$1 \\' --"),
            q("id; DROP TABLE x"),
            q("id; DROP TABLE x")
        ))
        .await
        .unwrap();
    let order = q("id; DROP TABLE x");
    let fp = wait_converged(&[(&qualified, &order), (&canary, "id")], CONVERGE).await;
    assert_eq!(fp[0].0, 90);
    assert_eq!(fp[1].0, 1, "the canary must survive on both sides");
    drop_task(&source, &task).await;
}
