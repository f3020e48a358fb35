//! Schema changes under load: a writer inserts and updates without pause while the source table
//! goes through one schema change after another (ADD COLUMN without and with a default, RENAME
//! COLUMN, ALTER COLUMN TYPE, ADD COLUMN with a volatile DEFAULT and as an identity, ALTER COLUMN
//! TYPE … USING, SET and DROP NOT NULL, DROP COLUMN, a new key, RENAME TABLE), and
//! the target TREMpy manages ends with exactly the source's columns (names, types, order) and
//! rows.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::{Arc, RwLock};
use std::time::Duration;

use trempy_e2e::*;

const WAIT: Duration = Duration::from_secs(180);

/// `name type` of each column in order, as the catalog says.
async fn columns(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
    text_rows(
        client,
        &format!(
            "SELECT a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
               FROM pg_attribute a WHERE a.attrelid = '{table}'::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
        ),
    )
    .await
}

async fn key(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
    text_rows(
        client,
        &format!(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
              WHERE i.indrelid = '{table}'::regclass AND i.indisprimary ORDER BY a.attname"
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_going_through_every_schema_change_under_writers_ends_equal_on_the_target() {
    every_schema_change_under_writers("upsert").await;
}

/// In SCD2 mode the target keeps every version: its current versions equal the source's rows,
/// and the history survives each change (versions closed before a column existed have NULL in
/// it). A new key over such a column halts, naming the statement, until the DBA fills the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_scd2_history_follows_every_schema_change_under_writers() {
    every_schema_change_under_writers("scd2").await;
}

async fn every_schema_change_under_writers(mode: &str) {
    let task = unique(if mode == "scd2" { "ddlscd" } else { "ddlflow" });
    let table = Arc::new(RwLock::new(format!("public.{task}")));
    let t0 = table.read().unwrap().clone();
    let source = source().await;
    source
        .batch_execute(&format!("CREATE TABLE {t0} (id int PRIMARY KEY, touched int NOT NULL DEFAULT 0, v text); INSERT INTO {t0} (id, v) SELECT g, 'loaded' FROM generate_series(1, 200) g"))
        .await
        .unwrap();
    let mut settings = load_settings(&task, "full_load_and_cdc", &[("public", &task)]);
    settings["task"]["cdc_settings"] = serde_json::json!({"mode": mode});
    create_task_with(&source, &task, &settings).await;
    let _applier = Applier::start(&task);
    wait_for_phase(&source, &task, "cdc", WAIT).await;

    let current = Arc::clone(&table);
    let writer = Writer::start(move |i| {
        let t = current.read().unwrap().clone();
        format!(
            "BEGIN; INSERT INTO {t} (id) VALUES ({}) ON CONFLICT DO NOTHING; UPDATE {t} SET touched = touched + 1 WHERE id = {}; COMMIT;",
            1000 + i,
            1 + i % 300
        )
    });
    let renamed = format!("public.{task}_renamed");
    let steps = [
        format!("ALTER TABLE {t0} ADD COLUMN c2 integer"),
        format!("ALTER TABLE {t0} ADD COLUMN c3 integer DEFAULT 7"),
        format!("ALTER TABLE {t0} RENAME COLUMN v TO v2"),
        format!("ALTER TABLE {t0} ALTER COLUMN c3 TYPE bigint"),
        // values the source computes row by row travel as backfills
        format!("ALTER TABLE {t0} ADD COLUMN r double precision NOT NULL DEFAULT random()"),
        format!("ALTER TABLE {t0} ADD COLUMN serial_no bigint GENERATED ALWAYS AS IDENTITY"),
        format!("ALTER TABLE {t0} ALTER COLUMN c3 TYPE numeric(12,1) USING c3 * 1.5 + id"),
        format!(
            "ALTER TABLE {t0} ALTER COLUMN c2 SET DEFAULT 0; UPDATE {t0} SET c2 = 0 WHERE c2 IS NULL; ALTER TABLE {t0} ALTER COLUMN c2 SET NOT NULL"
        ),
        format!("ALTER TABLE {t0} ALTER COLUMN c2 DROP NOT NULL"),
        format!("ALTER TABLE {t0} DROP COLUMN c2"),
        format!("ALTER TABLE {t0} ADD COLUMN k integer NOT NULL DEFAULT 1"),
        format!("ALTER TABLE {t0} DROP CONSTRAINT {task}_pkey, ADD PRIMARY KEY (id, k)"),
    ];
    for step in &steps {
        println!("{step}");
        source.batch_execute(step).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await; // the writer commits in between
    }
    // RENAME TABLE: the writer follows the new name (a few of its transactions fail meanwhile).
    {
        let mut name = table.write().unwrap();
        *name = renamed.clone();
    }
    source.batch_execute(&format!("ALTER TABLE {t0} RENAME TO {task}_renamed")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let committed = writer.stop().await;
    println!("writer committed {committed} transactions");
    assert!(committed > 20, "the writer barely ran: {committed}");

    let target = target().await;
    if mode == "scd2" {
        // The new key takes k, which versions closed before it existed lack: the applier halts
        // naming the statement, the DBA fills the history, and the stream goes on by itself.
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let reason = status_text(&source, &task, "applier_reason").await.unwrap_or_default();
            if reason.contains("ADD PRIMARY KEY") {
                println!("halted: {reason}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no halt at the new key; the applier says {reason:?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        target.batch_execute(&format!("UPDATE {t0} SET k = 1 WHERE k IS NULL")).await.unwrap();
    }
    let deadline = std::time::Instant::now() + WAIT;
    while !target.query_one("SELECT to_regclass($1) IS NOT NULL", &[&renamed]).await.unwrap().get::<_, bool>(0) {
        let reason = status_text(&source, &task, "applier_reason").await;
        assert!(std::time::Instant::now() < deadline, "the target table was not renamed; the applier says {reason:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (s, t) = if mode == "scd2" {
        // The current versions, without the SCD2 columns, equal the source's rows.
        let cols = "id, touched, v2, c3, r, serial_no, k";
        let current = format!("SELECT {cols} FROM {renamed} WHERE scd_current ORDER BY id");
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let sql = format!(
                "SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, ',')), '') FROM ({current}) t"
            );
            let want = text_rows(&source, &sql.replace(" WHERE scd_current", "")).await;
            let have = text_rows(&target, &sql).await;
            if want == have {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "current versions differ: source {want:?}, target {have:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let history: i64 = target
            .query_one(&format!("SELECT count(*) FROM {renamed} WHERE NOT scd_current"), &[])
            .await
            .unwrap()
            .get(0);
        println!("{history} closed versions");
        assert!(history > 0, "no version was ever closed");
        let scd = ["scd_start_date", "scd_end_date", "scd_current"];
        let target_columns = columns(&target, &renamed)
            .await
            .into_iter()
            .filter(|c| !scd.iter().any(|s| c.starts_with(s)))
            .collect::<Vec<_>>();
        (columns(&source, &renamed).await, target_columns)
    } else {
        let fp = wait_converged(&[(&renamed, "id")], WAIT).await;
        println!("{} rows", fp[0].0);
        (columns(&source, &renamed).await, columns(&target, &renamed).await)
    };
    println!("source {s:?}\ntarget {t:?}");
    // SCD2 keys are (key, start date) and versions keep NULLs: compare names and types only.
    let strip = |v: Vec<String>| {
        if mode == "scd2" { v.into_iter().map(|c| c.trim_end_matches(" not null").to_owned()).collect() } else { v }
    };
    assert_eq!(strip(t), strip(s), "the target's columns differ from the source's");
    if mode != "scd2" {
        assert_eq!(key(&target, &renamed).await, vec!["id".to_owned(), "k".to_owned()]);
    }
    let old_name: Option<String> = target.query_one("SELECT to_regclass($1)::text", &[&t0]).await.unwrap().get(0);
    assert_eq!(old_name, None, "the target table kept its old name too");
    let seen = status_text(&source, &task, "schema_changes_seen").await;
    println!(
        "schema changes seen: {seen:?}, applied: {:?}",
        status_text(&source, &task, "schema_changes_applied").await
    );
    assert_eq!(seen.as_deref(), Some("13"));
    drop_task(&source, &task).await;
}

/// A table renamed while its worker was stopped: the worker then publishes the task's settings
/// as they are now (naming the new table), ahead of the changes made under the old name and of
/// the rename itself. The rules bind to the table by its OID, so the masking applies to every
/// change, before the rename and after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_renamed_while_its_worker_is_stopped_keeps_its_masking_on_changes_made_before() {
    let task = unique("renstop");
    let (t, renamed) = (format!("public.{task}"), format!("public.{task}_renamed"));
    let source = source().await;
    source
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, email text); INSERT INTO {t} VALUES (1, 'loaded@x')"
        ))
        .await
        .unwrap();
    let mut settings = load_settings(&task, "full_load_and_cdc", &[("public", &task)]);
    settings["transformations"] = serde_json::json!([{"table_info": {"schema_name": "public", "table_name": task}, "settings":
        {"transformation_type": "modify_column_value", "description": "mask", "contract": {"operation": "uppercase", "column_name": "email"}, "priority": 1}}]);
    create_task_with(&source, &task, &settings).await;
    let _applier = Applier::start(&task);
    wait_for_phase(&source, &task, "cdc", WAIT).await;

    source.execute("SELECT trempy.stop_task($1)", &[&task]).await.unwrap();
    wait_for_state(&source, &task, "stopped", WAIT).await;
    source
        .batch_execute(&format!(
            "INSERT INTO {t} VALUES (2, 'before@x'); ALTER TABLE {t} RENAME TO {task}_renamed; INSERT INTO {renamed} VALUES (3, 'after@x')"
        ))
        .await
        .unwrap();
    source.execute("SELECT trempy.start_task($1)", &[&task]).await.unwrap();

    let target = target().await;
    let want = vec!["1 LOADED@X".to_owned(), "2 BEFORE@X".to_owned(), "3 AFTER@X".to_owned()];
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let exists: bool = target.query_one("SELECT to_regclass($1) IS NOT NULL", &[&renamed]).await.unwrap().get(0);
        let have = if exists {
            text_rows(&target, &format!("SELECT id || ' ' || email FROM {renamed} ORDER BY id")).await
        } else {
            Vec::new()
        };
        if have == want {
            break;
        }
        let reason = status_text(&source, &task, "applier_reason").await;
        assert!(std::time::Instant::now() < deadline, "target {have:?}, want {want:?}; the applier says {reason:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop_task(&source, &task).await;
}
