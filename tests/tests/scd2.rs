//! The `scd2` and `default` modes through the real stack, and the original's two sample
//! scenarios (employees upsert and SCD2) on a small generated employees schema.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::Duration;

use serde_json::{Value, json};
use trempy_e2e::*;

const WAIT: Duration = Duration::from_secs(120);

/// Publishes a hand-made envelope to the task's exchange, as the task worker would.
async fn publish(task: &str, body: &Value) {
    let (connection, channel) = amqp_channel().await;
    publish_to_task(&channel, task, body.to_string().as_bytes()).await;
    let _ = connection.close(200, "bye".into()).await;
}

/// Insert, several updates (one leaving a TOASTed column unchanged), a no-op update, delete,
/// re-insert of the same key, a full-loaded row, then the same source transactions replayed
/// above the watermark (as if it had been lost): the history is exactly as expected.
#[tokio::test]
async fn scd2_history_is_exact_and_replays_add_nothing() {
    let task = unique("scd2_hist");
    let table = format!("public.{task}");
    let source = source().await;
    source
        .batch_execute(&format!("CREATE TABLE {table} (id int PRIMARY KEY, name text, bio text); INSERT INTO {table} VALUES (100, 'loaded', 'l')"))
        .await
        .unwrap();
    create_task_with(&source, &task, &rules_settings(&task, ("public", &task), "scd2", &[], &[])).await;
    let mut applier = Applier::start(&task);
    wait_for_phase(&source, &task, "cdc", WAIT).await;
    // a random 16 kB text: stored out of line (TOAST), so an update of another column does not send it
    let big = "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 500))";
    for sql in [
        format!("INSERT INTO {table} VALUES (1, 'a', {big})"),
        format!("UPDATE {table} SET name = 'b' WHERE id = 1"),
        format!("UPDATE {table} SET name = 'c' WHERE id = 1"),
        format!("UPDATE {table} SET name = name WHERE id = 1"),
        format!("DELETE FROM {table} WHERE id = 1"),
        format!("INSERT INTO {table} VALUES (1, 'd', 'small')"),
        format!(
            "INSERT INTO {table} VALUES (2, 'x', 'y'); UPDATE {table} SET name = 'x2' WHERE id = 2; UPDATE {table} SET name = 'x3' WHERE id = 2"
        ),
    ] {
        source.batch_execute(&sql).await.unwrap();
    }
    let history = format!(
        "SELECT id || ':' || name || ':' || length(bio) || ':' || scd_current || ':' || (scd_end_date IS NULL)
                || ':' || coalesce((scd_end_date = lead(scd_start_date) OVER (PARTITION BY id ORDER BY scd_start_date))::text, '-')
           FROM {table} ORDER BY id, scd_start_date"
    );
    let expected = [
        "1:a:16000:false:false:true",
        "1:b:16000:false:false:true",
        // closed by the delete: the re-insert opens a later version
        "1:c:16000:false:false:false",
        "1:d:5:true:true:-",
        // three changes in one source transaction: one version
        "2:x3:1:true:true:-",
        "100:loaded:1:true:true:-",
    ];
    wait_for_target_rows(&history, &expected, WAIT).await;
    // the applier dies and comes back: nothing changes
    applier.restart_after_kill().await;
    source.batch_execute(&format!("UPDATE {table} SET bio = 'z' WHERE id = 100")).await.unwrap();
    let mut expected2: Vec<&str> = expected[..5].to_vec();
    expected2.extend(["100:loaded:1:false:false:true", "100:loaded:1:true:true:-"]);
    wait_for_target_rows(&history, &expected2, WAIT).await;

    // Replay key 1's source transactions above the watermark, with their original commit times.
    let target = target().await;
    let times = text_rows(
        &target,
        &format!("SELECT to_char(scd_start_date AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM {table} WHERE id = 1 ORDER BY scd_start_date"),
    )
    .await;
    let delete_time = text_rows(&target, &format!("SELECT to_char(scd_end_date AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM {table} WHERE id = 1 AND name = 'c'")).await;
    let oid: i64 = source.query_one(&format!("SELECT '{table}'::regclass::oid::int8"), &[]).await.unwrap().get(0);
    let generation: i32 =
        source.query_one("SELECT generation FROM trempy.tasks WHERE task_name = $1", &[&task]).await.unwrap().get(0);
    let rel = json!({"id": oid, "schema": "public", "table": task, "columns": [
        {"name": "id", "type": "integer", "type_oid": 23, "key": true},
        {"name": "name", "type": "text", "type_oid": 25, "key": false},
        {"name": "bio", "type": "text", "type_oid": 25, "key": false}]});
    let tx = |n: u32, time: &str, changes: Value| json!({"changes": changes, "xid": 1, "commit_lsn": format!("FF/{n:X}"), "commit_time": time, "seq": 0, "last": true});
    let replay = json!({"version": 1, "task": task, "generation": generation, "relations": [rel], "transactions": [
        tx(1, &times[0], json!([{"op": "insert", "rel": oid, "new": ["1", "a", "q"]}])),
        tx(2, &times[1], json!([{"op": "update", "rel": oid, "new": ["1", "b", null], "unchanged": [2]}])),
        tx(3, &times[2], json!([{"op": "update", "rel": oid, "new": ["1", "c", null], "unchanged": [2]}])),
        tx(4, &delete_time[0], json!([{"op": "delete", "rel": oid, "old": ["1", null, null]}])),
        tx(5, &times[3], json!([{"op": "insert", "rel": oid, "new": ["1", "d", "small"]}])),
    ]});
    publish(&task, &replay).await;
    wait_for_target_rows(
        "SELECT commit_lsn::text FROM trempy.applier_progress WHERE task_name = '{task}'"
            .replace("{task}", &task)
            .as_str(),
        &["FF/5"],
        WAIT,
    )
    .await;
    assert_eq!(text_rows(&target, &history).await, expected2);
    drop_task(&source, &task).await;
}

/// SCD2 column names from `task.cdc_settings.scd2_settings` (where the original's samples put
/// them and its engine never read them), with a filter and a transformation.
#[tokio::test]
async fn scd2_custom_names_in_cdc_settings_with_rules() {
    let task = unique("scd2_names");
    let table = format!("public.{task}");
    let source = source().await;
    source.batch_execute(&format!("CREATE TABLE {table} (id int PRIMARY KEY, name text, n int); INSERT INTO {table} VALUES (1, 'a', 1), (2, 'b', -1)")).await.unwrap();
    let mut settings = rules_settings(
        &task,
        ("public", &task),
        "scd2",
        &[json!({"filter_type": "greater_than", "description": "", "column_name": "n", "value": 0})],
        &[
            json!({"transformation_type": "modify_column_value", "description": "", "contract": {"operation": "uppercase", "column_name": "name"}, "priority": 1}),
        ],
    );
    settings["task"]["cdc_settings"]["scd2_settings"] = json!({"start_date_column_name": "valid_from", "end_date_column_name": "valid_to", "current_column_name": "is_current"});
    create_task_with(&source, &task, &settings).await;
    let _applier = Applier::start(&task);
    wait_for_phase(&source, &task, "cdc", WAIT).await;
    source.batch_execute(&format!("UPDATE {table} SET name = 'a2' WHERE id = 1")).await.unwrap();
    // leaves the filter: closes the version
    source.batch_execute(&format!("UPDATE {table} SET n = 0 WHERE id = 1")).await.unwrap();
    // enters it: opens one
    source.batch_execute(&format!("UPDATE {table} SET n = 5 WHERE id = 2")).await.unwrap();
    let q = format!(
        "SELECT id || ':' || name || ':' || is_current || ':' || (valid_to IS NULL) FROM {table} ORDER BY id, valid_from"
    );
    wait_for_target_rows(&q, &["1:A:false:false", "1:A2:false:false", "2:B:true:true"], WAIT).await;
    drop_task(&source, &task).await;
}

/// Kills the applier repeatedly while updates stream in: redelivered messages create no extra
/// version (each update changes the value, so versions = updates + 1 per key).
#[tokio::test]
async fn scd2_redelivered_messages_create_no_extra_versions() {
    let task = unique("scd2_redeliver");
    let table = format!("public.{task}");
    let source = source().await;
    source.batch_execute(&format!("CREATE TABLE {table} (id int PRIMARY KEY, v bigint NOT NULL)")).await.unwrap();
    create_task_with(&source, &task, &rules_settings(&task, ("public", &task), "scd2", &[], &[])).await;
    let mut applier = Applier::start(&task);
    wait_for_phase(&source, &task, "cdc", WAIT).await;
    source.batch_execute(&format!("INSERT INTO {table} SELECT g, 0 FROM generate_series(1, 10) g")).await.unwrap();
    let t = table.clone();
    let writer = Writer::start(move |i| format!("UPDATE {t} SET v = {} WHERE id = {}", i + 1, i % 10 + 1));
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        applier.restart_after_kill().await;
    }
    let committed = writer.stop().await;
    let expected_versions = 10 + committed;
    let q = format!("SELECT count(*)::text || ':' || count(*) FILTER (WHERE scd_current)::text FROM {table}");
    wait_for_target_rows(&q, &[&format!("{expected_versions}:10")], WAIT).await;
    // every current version holds the source's value
    let current = text_rows(
        &target().await,
        &format!("SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM {table} WHERE scd_current"),
    )
    .await;
    let at_source =
        text_rows(&source, &format!("SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM {table}")).await;
    assert_eq!(current, at_source);
    drop_task(&source, &task).await;
}

/// `default` mode: plain insert, update and delete by key; an update or delete that finds no
/// target row is logged; an insert of a row the target already has halts the task until fixed.
#[tokio::test]
async fn default_mode_insert_update_delete() {
    let task = unique("default_mode");
    let table = format!("public.{task}");
    create_table_both(&format!("CREATE TABLE {table} (id int PRIMARY KEY, v text)")).await;
    let source = source().await;
    let mut settings = cdc_settings(&task, &[("public", &task)]);
    settings["task"]["cdc_settings"]["mode"] = json!("default");
    create_task_with(&source, &task, &settings).await;
    wait_for_state(&source, &task, "running", WAIT).await;
    let _applier = Applier::start(&task);
    source
        .batch_execute(&format!(
            "INSERT INTO {table} VALUES (1, 'a'), (2, 'b'), (3, 'c'); UPDATE {table} SET v = 'b2' WHERE id = 2"
        ))
        .await
        .unwrap();
    source
        .batch_execute(&format!("DELETE FROM {table} WHERE id = 3; UPDATE {table} SET id = 4 WHERE id = 1"))
        .await
        .unwrap();
    let q = format!("SELECT id || ':' || v FROM {table} ORDER BY id");
    wait_for_target_rows(&q, &["2:b2", "4:a"], WAIT).await;
    // the target loses a row: the update and the delete of it find nothing, and say so
    let target = target().await;
    target.batch_execute(&format!("DELETE FROM {table} WHERE id = 2")).await.unwrap();
    source
        .batch_execute(&format!("UPDATE {table} SET v = 'b3' WHERE id = 2; DELETE FROM {table} WHERE id = 2"))
        .await
        .unwrap();
    wait_for_applier_log(&task, &["1 of 1 updates found no target row", "1 of 1 deletes found no target row"], WAIT)
        .await;
    // a row the target has already: the plain insert is a unique violation. With the default
    // error policy (no stop_if_* flag) the source transaction is retried, then dead-lettered, and
    // the stream goes on; once the cause is fixed, replaying it (forced: later transactions were
    // applied) applies it exactly once.
    target.batch_execute(&format!("INSERT INTO {table} VALUES (5, 'target')")).await.unwrap();
    source
        .batch_execute(&format!("INSERT INTO {table} VALUES (5, 'source'); INSERT INTO {table} VALUES (6, 'after')"))
        .await
        .unwrap();
    source.batch_execute(&format!("INSERT INTO {table} VALUES (7, 'next')")).await.unwrap();
    wait_for_target_rows(&q, &["4:a", "5:target", "7:next"], WAIT).await;
    let sqlstate: String = target
        .query_one("SELECT sqlstate FROM trempy.applier_deadletters WHERE task_name = $1 AND state = 'dead'", &[&task])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sqlstate, "23505");
    target.batch_execute(&format!("DELETE FROM {table} WHERE id = 5")).await.unwrap();
    // The task applied a later transaction (7), so replay refuses without --force and lists the
    // keys it would write.
    let (ok, out) = applier_command(&["dlq", "replay", "--task", &task, "--all"]).await;
    assert!(!ok && out.contains("refused") && out.contains(&format!("{table}: (id=\"5\") (id=\"6\")")), "{out}");
    let (ok, out) = applier_command(&["dlq", "replay", "--task", &task, "--all", "--force"]).await;
    assert!(ok, "dlq replay failed: {out}");
    wait_for_target_rows(&q, &["4:a", "5:source", "6:after", "7:next"], WAIT).await;
    drop_task(&source, &task).await;
}

/// The small generated employees schema of the original's samples (section 11 of the reference).
async fn employees(schema: &str) {
    source()
        .await
        .batch_execute(&format!(
            "CREATE SCHEMA {schema};
             CREATE TYPE {schema}.employee_gender AS ENUM ('M', 'F');
             CREATE TABLE {schema}.employee (id bigint PRIMARY KEY, birth_date date NOT NULL, first_name varchar(14) NOT NULL,
                 last_name varchar(16) NOT NULL, gender {schema}.employee_gender NOT NULL, hire_date date NOT NULL);
             CREATE TABLE {schema}.department (id char(4) PRIMARY KEY, dept_name varchar(40) NOT NULL);
             CREATE TABLE {schema}.department_manager (employee_id bigint, department_id char(4), from_date date NOT NULL, to_date date NOT NULL,
                 PRIMARY KEY (employee_id, department_id));
             CREATE TABLE {schema}.salary (employee_id bigint, amount bigint NOT NULL, from_date date, to_date date NOT NULL, PRIMARY KEY (employee_id, from_date));
             INSERT INTO {schema}.employee SELECT 10000 + g, date '1960-01-01' + g * 97, 'First' || g, 'Last' || g,
                 CASE WHEN g % 2 = 0 THEN 'F' ELSE 'M' END::{schema}.employee_gender, date '1990-01-01' + g * 31 FROM generate_series(1, 20) g;
             INSERT INTO {schema}.department SELECT 'd00' || g, 'Department ' || g FROM generate_series(1, 7) g;
             INSERT INTO {schema}.department_manager SELECT 10000 + g, 'd00' || g, date '2000-01-01', date '9999-01-01' FROM generate_series(1, 7) g;
             INSERT INTO {schema}.salary SELECT 10000 + g, 40000 + g * 1000, date '2020-01-01', date '9999-01-01' FROM generate_series(1, 20) g;"
        ))
        .await
        .unwrap();
}

/// The original's upsert sample: filter gender = 'F', `full_name` = first_name || ' ' ||
/// last_name. One deliberate difference: step 4 takes 500000 out of the filter, which deletes
/// its target row (the original left a stale 'F' row behind).
#[tokio::test]
async fn sample_employees_upsert() {
    let task = unique("emp_upsert");
    let schema = format!("emp_{task}");
    employees(&schema).await;
    let source = source().await;
    let tables = [("employee", 0)];
    let info = json!({"schema_name": schema, "table_name": "employee"});
    let settings = json!({
        "task": {"task_name": task, "replication_type": "full_load_and_cdc", "start_mode": "reload", "create_table_if_not_exists": true,
                 "full_load_settings": {"recreate_table_if_exists": true, "truncate_before_insert": true}, "cdc_settings": {"mode": "upsert"}},
        "tables": tables.iter().map(|(t, p)| json!({"schema_name": schema, "table_name": t, "priority": p})).collect::<Vec<_>>(),
        "filters": [{"table_info": info, "settings": {"filter_type": "equals", "description": "women only", "column_name": "gender", "value": "F"}}],
        "transformations": [{"table_info": info, "settings": {"transformation_type": "create_column", "description": "full name",
            "contract": {"operation": "concat", "new_column_name": "full_name", "depends_on": ["first_name", "last_name"], "separator": " "}, "priority": 1}}],
    });
    create_task_with(&source, &task, &settings).await;
    let _applier = Applier::start(&task);
    wait_for_phase(&source, &task, "cdc", WAIT).await;
    let e = format!("{schema}.employee");
    for sql in [
        format!("INSERT INTO {e} VALUES (500000, '1980-01-01', 'Ana', 'Silva', 'F', '2020-01-01'), (500001, '1981-01-01', 'Bia', 'Souza', 'F', '2020-02-01'),
                                         (500002, '1982-01-01', 'Caio', 'Lima', 'M', '2020-03-01')"),
        format!("UPDATE {e} SET last_name = 'Santos' WHERE id = 500000"),
        format!("UPDATE {e} SET first_name = 'Beatriz', last_name = 'Costa' WHERE id = 500001"),
        format!("UPDATE {e} SET gender = 'M', hire_date = '2021-01-01' WHERE id = 500000"),
        format!("UPDATE {e} SET gender = 'F' WHERE id = 500002"),
    ] {
        source.batch_execute(&sql).await.unwrap();
    }
    let q = format!(
        "SELECT id || ':' || full_name || ':' || gender || ':' || hire_date FROM {e} WHERE id >= 500000 ORDER BY id"
    );
    wait_for_target_rows(&q, &["500001:Beatriz Costa:F:2020-02-01", "500002:Caio Lima:F:2020-03-01"], WAIT).await;
    // the full load kept the ten women of the seed
    let target = target().await;
    assert_eq!(text_rows(&target, &format!("SELECT count(*)::text FROM {e} WHERE id < 500000 AND gender = 'F' AND full_name = first_name || ' ' || last_name")).await, ["10"]);
    assert_eq!(text_rows(&target, &format!("SELECT count(*)::text FROM {e}")).await, ["12"]);
    drop_task(&source, &task).await;
}

/// The original's SCD2 sample: four tables, renamed to `*_history` (salary to
/// `funcionarios.salario_historico` with Portuguese column names), upper-cased names, full name,
/// a literal, a date, the years between dates and the monthly amount; the history is exact.
#[tokio::test]
async fn sample_employees_scd2() {
    let task = unique("emp_scd2");
    let schema = format!("emp_{task}");
    let pt = format!("funcionarios_{task}");
    employees(&schema).await;
    let source = source().await;
    let info = |t: &str| json!({"schema_name": schema, "table_name": t});
    let tr = |t: &str, kind: &str, contract: Value, priority: u8| json!({"table_info": info(t), "settings": {"transformation_type": kind, "description": kind, "contract": contract, "priority": priority}});
    let mut transformations = Vec::new();
    for t in ["employee", "department", "department_manager"] {
        transformations.push(tr(t, "modify_table_name", json!({"target_table_name": format!("{t}_history")}), 0));
    }
    transformations.extend([
        tr("salary", "modify_schema_name", json!({"target_schema_name": pt}), 0),
        tr("salary", "modify_table_name", json!({"target_table_name": "salario_historico"}), 0),
        tr("salary", "modify_column_name", json!({"column_name": "employee_id", "target_column_name": "funcionario_id"}), 0),
        tr("salary", "modify_column_name", json!({"column_name": "amount", "target_column_name": "valor"}), 0),
        tr("salary", "modify_column_name", json!({"column_name": "from_date", "target_column_name": "data_inicio"}), 0),
        tr("salary", "modify_column_name", json!({"column_name": "to_date", "target_column_name": "data_fim"}), 0),
        tr("salary", "create_column", json!({"operation": "date_diff_years", "new_column_name": "periodo_anos", "depends_on": ["data_inicio", "data_fim"], "round_result": true}), 2),
        tr("salary", "modify_column_value", json!({"operation": "math_expression", "column_name": "valor", "expression": "value / 12"}), 2),
        tr("employee", "modify_column_value", json!({"operation": "uppercase", "column_name": "first_name"}), 1),
        tr("employee", "modify_column_value", json!({"operation": "uppercase", "column_name": "last_name"}), 1),
        tr("employee", "create_column", json!({"operation": "concat", "new_column_name": "full_name", "depends_on": ["first_name", "last_name"], "separator": " "}), 2),
        tr("employee", "create_column", json!({"operation": "literal", "new_column_name": "updated_by", "value": "PYTHON", "value_type": "varchar"}), 2),
        tr("employee", "create_column", json!({"operation": "date_now", "new_column_name": "sync_date"}), 2),
    ]);
    let settings = json!({
        "task": {"task_name": task, "replication_type": "full_load_and_cdc", "start_mode": "reload", "create_table_if_not_exists": true,
                 "full_load_settings": {"recreate_table_if_exists": true, "truncate_before_insert": true},
                 "cdc_settings": {"mode": "scd2", "scd2_settings": {"start_date_column_name": "scd_start_date", "end_date_column_name": "scd_end_date", "current_column_name": "scd_current"}}},
        "tables": [{"schema_name": schema, "table_name": "employee", "priority": 0}, {"schema_name": schema, "table_name": "department", "priority": 1},
                   {"schema_name": schema, "table_name": "department_manager", "priority": 2}, {"schema_name": schema, "table_name": "salary", "priority": 2}],
        "transformations": transformations,
    });
    create_task_with(&source, &task, &settings).await;
    let _applier = Applier::start(&task);
    wait_for_phase(&source, &task, "cdc", WAIT).await;
    let (e, d, m, s) = (
        format!("{schema}.employee"),
        format!("{schema}.department"),
        format!("{schema}.department_manager"),
        format!("{schema}.salary"),
    );
    for sql in [
        format!("INSERT INTO {e} VALUES (500000, '1980-01-01', 'Ana', 'Silva', 'F', '2020-01-01'), (500001, '1981-01-01', 'Bia', 'Souza', 'F', '2020-02-01'),
                                         (500002, '1982-01-01', 'Caio', 'Lima', 'M', '2020-03-01')"),
        format!("UPDATE {e} SET last_name = 'Santos' WHERE id = 500000"),
        format!("UPDATE {e} SET last_name = 'Costa' WHERE id = 500001"),
        format!("UPDATE {e} SET hire_date = '2021-01-01' WHERE id = 500002"),
        format!("UPDATE {e} SET hire_date = '2022-01-01' WHERE id = 500002"),
        format!("UPDATE {e} SET hire_date = '2023-01-01' WHERE id = 500002"),
        format!("DELETE FROM {e} WHERE id >= 500000"),
        format!("INSERT INTO {d} VALUES ('d008', 'Research'), ('d009', 'Sales'), ('d010', 'Support')"),
        format!("UPDATE {d} SET dept_name = 'Sales EU' WHERE id = 'd009'"),
        format!("DELETE FROM {d} WHERE id IN ('d008', 'd009', 'd010')"),
        format!("INSERT INTO {s} VALUES (500000, 60000, '2020-01-01', '9999-01-01'); INSERT INTO {m} VALUES (500000, 'd008', '2020-01-01', '9999-01-01')"),
        format!("UPDATE {s} SET to_date = '2021-01-01' WHERE employee_id = 500000 AND from_date = '2020-01-01'; INSERT INTO {s} VALUES (500000, 66000, '2021-01-01', '9999-01-01');
                 UPDATE {m} SET to_date = '2021-01-01' WHERE employee_id = 500000; INSERT INTO {m} VALUES (500000, 'd009', '2021-01-01', '9999-01-01')"),
        format!("UPDATE {s} SET to_date = '2022-01-01' WHERE employee_id = 500000; UPDATE {m} SET to_date = '2022-01-01' WHERE employee_id = 500000"),
        format!("DELETE FROM {s} WHERE employee_id = 500000; DELETE FROM {m} WHERE employee_id = 500000"),
    ] {
        source.batch_execute(&sql).await.unwrap();
    }
    let closed = |table: &str, key: &str| {
        format!(
            "SELECT {key} || ':' || count(*) || ':' || bool_or(scd_current) FROM {table} GROUP BY {key} HAVING {key} IN"
        )
    };
    let eh = format!("{schema}.employee_history");
    wait_for_target_rows(
        &format!("{} ('500000', '500001', '500002') ORDER BY 1", closed(&eh, "id::text")),
        &["500000:2:false", "500001:2:false", "500002:4:false"],
        WAIT,
    )
    .await;
    let dh = format!("{schema}.department_history");
    wait_for_target_rows(
        &format!("{} ('d008', 'd009', 'd010') ORDER BY 1", closed(&dh, "id::text")),
        &["d008:1:false", "d009:2:false", "d010:1:false"],
        WAIT,
    )
    .await;
    let sh = format!("{pt}.salario_historico");
    wait_for_target_rows(
        &format!(
            "SELECT data_inicio || ':' || valor || ':' || data_fim || ':' || periodo_anos || ':' || scd_current FROM {sh} WHERE funcionario_id = 500000 ORDER BY data_inicio, scd_start_date"
        ),
        &[
            "2020-01-01:5000:9999-01-01:7979:false",
            "2020-01-01:5000:2021-01-01:1:false",
            "2020-01-01:5000:2022-01-01:2:false",
            "2021-01-01:5500:9999-01-01:7978:false",
            "2021-01-01:5500:2022-01-01:1:false",
        ],
        WAIT,
    )
    .await;
    let mh = format!("{schema}.department_manager_history");
    wait_for_target_rows(&format!("SELECT department_id || ':' || to_date || ':' || scd_current FROM {mh} WHERE employee_id = 500000 ORDER BY department_id, scd_start_date"),
        &["d008:9999-01-01:false", "d008:2021-01-01:false", "d008:2022-01-01:false", "d009:9999-01-01:false", "d009:2022-01-01:false"], WAIT).await;
    // the full load opened one current version per seeded row, transformed
    let target = target().await;
    assert_eq!(
        text_rows(&target, &format!("SELECT count(*) || ':' || bool_and(full_name = first_name || ' ' || last_name AND first_name = upper(first_name) AND updated_by = 'PYTHON' AND scd_current) FROM {eh} WHERE id < 500000")).await,
        ["20:true"]
    );
    assert_eq!(text_rows(&target, &format!("SELECT count(*)::text FROM {sh} WHERE funcionario_id < 500000 AND scd_current AND round(valor * 12) = 40000 + (funcionario_id - 10000) * 1000")).await, ["20"]);
    drop_task(&source, &task).await;
}
