//! Filters and transformations through the real stack: one test per filter operator and per
//! transformation operation. Each test loads three rows (full load) and inserts three more (CDC)
//! into a fresh table, so every operator is checked on both paths, then compares the target.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::Duration;

use serde_json::{Value, json};
use trempy_e2e::*;

const WAIT: Duration = Duration::from_secs(120);

const COLUMNS: &str =
    "id int PRIMARY KEY, n int NOT NULL, amount numeric(10,2), name text, d date, ts timestamp, note text, born date";

/// Rows 1-3 go through the full load, rows 4-6 through CDC.
const ROWS: [&str; 6] = [
    "(1, 1, 10.50, 'alpha', '2020-01-01', '2020-01-01 10:00', NULL, '1990-06-15')",
    "(2, 2, 20.00, 'beta', '2021-06-15', '2021-06-15 12:30', 'x', '1985-01-01')",
    "(3, 3, 30.25, '  gamma ', '2022-12-31', '2022-12-31 23:59', 'a.c', '2000-02-29')",
    "(4, 4, 40.00, 'alphabet', '2023-03-03', '2023-03-03 03:03', NULL, '1970-12-31')",
    "(5, 5, 50.75, 'Delta', '2024-02-29', '2024-02-29 00:00', 'abc', '2001-03-01')",
    "(6, 6, -1.00, 'omega', '2025-07-04', '2025-07-04 07:04', 'xyz', '1999-07-04')",
];

/// Runs one case: `query` is run on the target with `{t}` replaced by the target table.
async fn case(
    prefix: &str,
    filters: &[Value],
    transformations: &[Value],
    target_table: Option<&str>,
    query: &str,
    expected: &[&str],
) {
    let task = unique(prefix);
    let table = format!("public.{task}");
    let source = source().await;
    source
        .batch_execute(&format!(
            "CREATE TABLE {table} ({COLUMNS}); INSERT INTO {table} VALUES {}",
            ROWS[..3].join(", ")
        ))
        .await
        .unwrap();
    create_task_with(&source, &task, &rules_settings(&task, ("public", &task), "upsert", filters, transformations))
        .await;
    let _applier = Applier::start(&task);
    wait_for_phase(&source, &task, "cdc", WAIT).await;
    source.batch_execute(&format!("INSERT INTO {table} VALUES {}", ROWS[3..].join(", "))).await.unwrap();
    let target = target_table.map_or_else(|| table.clone(), |t| t.replace("{task}", &task));
    wait_for_target_rows(&query.replace("{t}", &target), expected, WAIT).await;
    drop_task(&source, &task).await;
}

/// A filter case: the ids the target keeps.
async fn filter(op: &str, column: &str, operands: Value, ids: &[i32]) {
    let mut settings = json!({"filter_type": op, "description": op, "column_name": column});
    if let (Some(s), Some(o)) = (settings.as_object_mut(), operands.as_object()) {
        s.extend(o.clone());
    }
    let expected: Vec<String> = ids.iter().map(ToString::to_string).collect();
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    case(&format!("f_{op}"), &[settings], &[], None, "SELECT id::text FROM {t} ORDER BY id", &expected).await;
}

macro_rules! filter_test {
    ($name:ident, $op:literal, $column:literal, $operands:tt, $ids:expr) => {
        #[tokio::test]
        async fn $name() {
            filter($op, $column, json!($operands), &$ids).await;
        }
    };
}

filter_test!(filter_equals, "equals", "n", {"value": 3}, [3]);
filter_test!(filter_not_equals, "not_equals", "n", {"value": "3"}, [1, 2, 4, 5, 6]);
filter_test!(filter_greater_than, "greater_than", "amount", {"value": "40"}, [5]);
filter_test!(filter_greater_than_or_equal, "greater_than_or_equal", "n", {"value": 4}, [4, 5, 6]);
filter_test!(filter_less_than, "less_than", "amount", {"value": 10.5}, [6]);
filter_test!(filter_less_than_or_equal, "less_than_or_equal", "amount", {"value": "10.50"}, [1, 6]);
filter_test!(filter_in, "in", "n", {"values": [2, 5]}, [2, 5]);
filter_test!(filter_not_in, "not_in", "name", {"values": ["beta", "omega"]}, [1, 3, 4, 5]);
filter_test!(filter_is_null, "is_null", "note", {}, [1, 4]);
filter_test!(filter_is_not_null, "is_not_null", "note", {}, [2, 3, 5, 6]);
filter_test!(filter_starts_with, "starts_with", "name", {"value": "alpha"}, [1, 4]);
filter_test!(filter_ends_with, "ends_with", "name", {"value": "ta"}, [2, 5]);
filter_test!(filter_contains, "contains", "note", {"value": "a.c"}, [3]);
filter_test!(filter_not_contains, "not_contains", "note", {"value": "a.c"}, [2, 5, 6]);
filter_test!(filter_between, "between", "n", {"lower": 2, "upper": 4}, [2, 3, 4]);
filter_test!(filter_not_between, "not_between", "n", {"lower": 2, "upper": 4}, [1, 5, 6]);
filter_test!(filter_date_equals, "date_equals", "d", {"value": "2022-12-31"}, [3]);
filter_test!(filter_date_not_equals, "date_not_equals", "d", {"value": "2022-12-31"}, [1, 2, 4, 5, 6]);
filter_test!(filter_date_greater_than, "date_greater_than", "ts", {"value": "2023-03-03 03:03:00"}, [5, 6]);
filter_test!(filter_date_greater_than_or_equal, "date_greater_than_or_equal", "ts", {"value": "2023-03-03 03:03"}, [4, 5, 6]);
filter_test!(filter_date_less_than, "date_less_than", "d", {"value": "2021-06-15"}, [1]);
filter_test!(filter_date_less_than_or_equal, "date_less_than_or_equal", "d", {"value": "2021-06-15"}, [1, 2]);
filter_test!(filter_date_between, "date_between", "ts", {"lower": "2021-01-01 00:00:00", "upper": "2023-12-31"}, [2, 3, 4]);
filter_test!(filter_date_not_between, "date_not_between", "d", {"lower": "2021-01-01", "upper": "2023-12-31"}, [1, 5, 6]);

/// A transformation case: `query` on the target table (default: the source's name).
async fn transform(prefix: &str, transformations: Value, target_table: Option<&str>, query: &str, expected: &[&str]) {
    let list: Vec<Value> = transformations.as_array().cloned().unwrap_or_default();
    case(prefix, &[], &list, target_table, query, expected).await;
}

fn create(op: &str, contract: Value, priority: u8) -> Value {
    let mut contract = contract;
    contract["operation"] = json!(op);
    json!({"transformation_type": "create_column", "description": op, "contract": contract, "priority": priority})
}

fn modify(op: &str, column: &str, extra: Value) -> Value {
    let mut contract = extra;
    contract["operation"] = json!(op);
    contract["column_name"] = json!(column);
    json!({"transformation_type": "modify_column_value", "description": op, "contract": contract, "priority": 1})
}

fn structural(kind: &str, contract: Value) -> Value {
    json!({"transformation_type": kind, "description": kind, "contract": contract, "priority": 0})
}

#[tokio::test]
async fn transform_literal() {
    let t = json!([
        create("literal", json!({"new_column_name": "src", "value": "PYTHON", "value_type": "text"}), 1),
        create("literal", json!({"new_column_name": "k", "value": 7, "value_type": "integer"}), 1)
    ]);
    transform(
        "t_literal",
        t,
        None,
        "SELECT src || '/' || (k + 1) FROM {t} WHERE id IN (1, 6) ORDER BY id",
        &["PYTHON/8", "PYTHON/8"],
    )
    .await;
}

#[tokio::test]
async fn transform_date_now() {
    // the load's snapshot time or the source commit time: today (UTC) in this test
    let t = json!([create("date_now", json!({"new_column_name": "synced"}), 1)]);
    let q = "SELECT (pg_typeof(synced)::text || ':' || (synced BETWEEN (now() AT TIME ZONE 'UTC')::date - 1 AND (now() AT TIME ZONE 'UTC')::date)) FROM {t} ORDER BY id";
    transform("t_date_now", t, None, q, &["date:true"; 6]).await;
}

#[tokio::test]
async fn transform_datetime_now() {
    let t = json!([create("datetime_now", json!({"new_column_name": "synced_at"}), 1)]);
    let q = "SELECT (pg_typeof(synced_at)::text || ':' || (synced_at BETWEEN (now() AT TIME ZONE 'UTC') - interval '10 minutes' AND (now() AT TIME ZONE 'UTC'))) FROM {t} ORDER BY id";
    transform("t_datetime_now", t, None, q, &["timestamp without time zone:true"; 6]).await;
}

#[tokio::test]
async fn transform_concat() {
    let t = json!([create(
        "concat",
        json!({"new_column_name": "whole", "depends_on": ["name", "n", "note"], "separator": "-"}),
        1
    )]);
    transform(
        "t_concat",
        t,
        None,
        "SELECT whole FROM {t} ORDER BY id",
        &["alpha-1", "beta-2-x", "  gamma -3-a.c", "alphabet-4", "Delta-5-abc", "omega-6-xyz"],
    )
    .await;
}

#[tokio::test]
async fn transform_date_diff_years() {
    let t = json!([create(
        "date_diff_years",
        json!({"new_column_name": "age", "depends_on": ["born", "d"], "round_result": true}),
        1
    )]);
    // whole elapsed years, like age(): 2000-02-29 → 2022-12-31 is 22, 1970-12-31 → 2023-03-03 is 52
    transform(
        "t_date_diff_years",
        t,
        None,
        "SELECT age::text FROM {t} ORDER BY id",
        &["29", "36", "22", "52", "22", "26"],
    )
    .await;
}

#[tokio::test]
async fn transform_format_date() {
    let t = json!([modify("format_date", "d", json!({"format": "%d/%m/%Y"}))]);
    let q = "SELECT pg_typeof(d)::text || ':' || d FROM {t} ORDER BY id";
    transform(
        "t_format_date",
        t,
        None,
        q,
        &[
            "text:01/01/2020",
            "text:15/06/2021",
            "text:31/12/2022",
            "text:03/03/2023",
            "text:29/02/2024",
            "text:04/07/2025",
        ],
    )
    .await;
}

#[tokio::test]
async fn transform_uppercase() {
    transform(
        "t_uppercase",
        json!([modify("uppercase", "name", json!({}))]),
        None,
        "SELECT name FROM {t} ORDER BY id",
        &["ALPHA", "BETA", "  GAMMA ", "ALPHABET", "DELTA", "OMEGA"],
    )
    .await;
}

#[tokio::test]
async fn transform_lowercase() {
    transform(
        "t_lowercase",
        json!([modify("lowercase", "name", json!({}))]),
        None,
        "SELECT name FROM {t} WHERE id = 5",
        &["delta"],
    )
    .await;
}

#[tokio::test]
async fn transform_trim() {
    transform(
        "t_trim",
        json!([modify("trim", "name", json!({}))]),
        None,
        "SELECT '[' || name || ']' FROM {t} WHERE id = 3",
        &["[gamma]"],
    )
    .await;
}

#[tokio::test]
async fn transform_extract_year() {
    let q = "SELECT pg_typeof(ts)::text || ':' || ts FROM {t} ORDER BY id";
    transform(
        "t_extract_year",
        json!([modify("extract_year", "ts", json!({}))]),
        None,
        q,
        &["integer:2020", "integer:2021", "integer:2022", "integer:2023", "integer:2024", "integer:2025"],
    )
    .await;
}

#[tokio::test]
async fn transform_extract_month() {
    transform(
        "t_extract_month",
        json!([modify("extract_month", "d", json!({}))]),
        None,
        "SELECT d::text FROM {t} ORDER BY id",
        &["1", "6", "12", "3", "2", "7"],
    )
    .await;
}

#[tokio::test]
async fn transform_extract_day() {
    transform(
        "t_extract_day",
        json!([modify("extract_day", "d", json!({}))]),
        None,
        "SELECT d::text FROM {t} ORDER BY id",
        &["1", "15", "31", "3", "29", "4"],
    )
    .await;
}

#[tokio::test]
async fn transform_math_expression() {
    // precedence, unary minus and parentheses; numeric stays exact
    let t = json!([
        modify("math_expression", "amount", json!({"expression": "-(value - 0.5) * 2 + 100 / 4"})),
        modify("math_expression", "n", json!({"expression": "value * 2 + 1"}))
    ]);
    transform(
        "t_math_expression",
        t,
        None,
        "SELECT n || ':' || amount::float8 || ':' || pg_typeof(amount) FROM {t} ORDER BY id",
        &["3:5:numeric", "5:-14:numeric", "7:-34.5:numeric", "9:-54:numeric", "11:-75.5:numeric", "13:28:numeric"],
    )
    .await;
}

#[tokio::test]
async fn transform_modify_schema_name() {
    let t = json!([structural("modify_schema_name", json!({"target_schema_name": "mart_{task}"}))]);
    transform_named("t_schema", t, "mart_{task}.{task}", "SELECT count(*)::text FROM {t}", &["6"]).await;
}

#[tokio::test]
async fn transform_modify_table_name() {
    let t = json!([structural("modify_table_name", json!({"target_table_name": "{task}_history"}))]);
    transform_named("t_table", t, "public.{task}_history", "SELECT count(*)::text FROM {t}", &["6"]).await;
}

#[tokio::test]
async fn transform_modify_column_name() {
    let t = json!([
        structural("modify_column_name", json!({"column_name": "name", "target_column_name": "label"})),
        modify("uppercase", "label", json!({}))
    ]);
    transform("t_colname", t, None, "SELECT label FROM {t} WHERE id = 2", &["BETA"]).await;
}

#[tokio::test]
async fn transform_add_primary_key() {
    let t = json!([structural("add_primary_key", json!({"column_names": ["n"]}))]);
    let q = "SELECT string_agg(a.attname, ',' ORDER BY a.attname) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) WHERE i.indrelid = '{t}'::regclass AND i.indisprimary";
    transform("t_addpk", t, None, q, &["id,n"]).await;
}

#[tokio::test]
async fn transform_remove_primary_key() {
    let t = json!([
        structural("add_primary_key", json!({"column_names": ["name"]})),
        structural("remove_primary_key", json!({"column_names": ["id"]}))
    ]);
    let q = "SELECT string_agg(a.attname, ',' ORDER BY a.attname) || ':' || (SELECT count(*) FROM {t}) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) WHERE i.indrelid = '{t}'::regclass AND i.indisprimary";
    transform("t_rmpk", t, None, q, &["name:6"]).await;
}

/// A transformation case whose settings and target name contain `{task}`.
async fn transform_named(prefix: &str, transformations: Value, target: &str, query: &str, expected: &[&str]) {
    let task = unique(prefix);
    let table = format!("public.{task}");
    let list: Vec<Value> = serde_json::from_str(&transformations.to_string().replace("{task}", &task)).unwrap();
    let source = source().await;
    source
        .batch_execute(&format!(
            "CREATE TABLE {table} ({COLUMNS}); INSERT INTO {table} VALUES {}",
            ROWS[..3].join(", ")
        ))
        .await
        .unwrap();
    create_task_with(&source, &task, &rules_settings(&task, ("public", &task), "upsert", &[], &list)).await;
    let _applier = Applier::start(&task);
    wait_for_phase(&source, &task, "cdc", WAIT).await;
    source.batch_execute(&format!("INSERT INTO {table} VALUES {}", ROWS[3..].join(", "))).await.unwrap();
    wait_for_target_rows(&query.replace("{t}", &target.replace("{task}", &task)), expected, WAIT).await;
    drop_task(&source, &task).await;
}

/// Rows leaving and entering a filter, and deletes under a filter on a non-key column (the
/// original dropped such deletes and left stale rows).
#[tokio::test]
async fn filter_leave_enter_and_delete_on_a_non_key_column() {
    let task = unique("f_move");
    let table = format!("public.{task}");
    let source = source().await;
    source
        .batch_execute(&format!(
            "CREATE TABLE {table} ({COLUMNS}); INSERT INTO {table} VALUES {}",
            ROWS[..3].join(", ")
        ))
        .await
        .unwrap();
    let f = json!({"filter_type": "greater_than", "description": "", "column_name": "n", "value": 1});
    create_task_with(&source, &task, &rules_settings(&task, ("public", &task), "upsert", &[f], &[])).await;
    let _applier = Applier::start(&task);
    wait_for_phase(&source, &task, "cdc", WAIT).await;
    wait_for_target_rows(&format!("SELECT id::text FROM {table} ORDER BY id"), &["2", "3"], WAIT).await;
    source
        .batch_execute(&format!(
            "UPDATE {table} SET n = 0 WHERE id = 2; UPDATE {table} SET n = 10 WHERE id = 1; DELETE FROM {table} WHERE id = 3;
             INSERT INTO {table} VALUES {}; DELETE FROM {table} WHERE id = 4",
            ROWS[3..].join(", ")
        ))
        .await
        .unwrap();
    wait_for_target_rows(&format!("SELECT id || ':' || n FROM {table} ORDER BY id"), &["1:10", "5:5", "6:6"], WAIT)
        .await;
    drop_task(&source, &task).await;
}

/// `trempy.validate_settings` returns every problem at once, and nothing for valid settings.
#[tokio::test]
async fn validate_settings_lists_every_problem() {
    let task = unique("f_validate");
    let table = format!("public.{task}");
    let source = source().await;
    source
        .batch_execute(&format!("CREATE EXTENSION IF NOT EXISTS trempy; CREATE TABLE {table} ({COLUMNS})"))
        .await
        .unwrap();
    let good = rules_settings(
        &task,
        ("public", &task),
        "scd2",
        &[
            json!({"filter_type": "date_between", "description": "", "column_name": "ts", "lower": "2020-01-01", "upper": "2021-01-01"}),
        ],
        &[],
    );
    let rows = text_rows(
        &source,
        &format!(
            "SELECT path || ': ' || message FROM trempy.validate_settings('{}'::jsonb)",
            good.to_string().replace('\'', "''")
        ),
    )
    .await;
    assert!(rows.is_empty(), "{rows:?}");
    let bad = rules_settings(
        &task,
        ("public", &task),
        "scd2",
        &[
            json!({"filter_type": "greater_than", "description": "", "column_name": "n", "value": "abc"}),
            json!({"filter_type": "equals", "description": "", "column_name": "nope", "value": 1}),
        ],
        &[
            create("concat", json!({"new_column_name": "c", "depends_on": ["later"], "separator": ""}), 1),
            create("literal", json!({"new_column_name": "later", "value": "v", "value_type": "text"}), 2),
        ],
    );
    let rows = text_rows(
        &source,
        &format!(
            "SELECT path || ': ' || message FROM trempy.validate_settings('{}'::jsonb)",
            bad.to_string().replace('\'', "''")
        ),
    )
    .await;
    for expected in [
        "filters[0].settings.value: ",
        "filters[1].settings.column_name: column \"nope\" does not exist",
        "transformations[0].settings.contract.depends_on[0]",
    ] {
        assert!(rows.iter().any(|r| r.starts_with(expected)), "{expected} missing from {rows:?}");
    }
    // a problem found without the catalog (a structural transformation not at priority 0)
    let early = rules_settings(
        &task,
        ("public", &task),
        "upsert",
        &[],
        &[
            json!({"transformation_type": "modify_table_name", "description": "", "contract": {"target_table_name": "x"}, "priority": 2}),
        ],
    );
    let rows = text_rows(
        &source,
        &format!(
            "SELECT path || ': ' || message FROM trempy.validate_settings('{}'::jsonb)",
            early.to_string().replace('\'', "''")
        ),
    )
    .await;
    assert!(rows[0].starts_with("transformations[0].settings.priority: modify_table_name is structural"), "{rows:?}");
    let clash = rules_settings(
        &task,
        ("public", &task),
        "scd2",
        &[],
        &[structural("modify_column_name", json!({"column_name": "note", "target_column_name": "scd_current"}))],
    );
    let rows = text_rows(
        &source,
        &format!(
            "SELECT path || ': ' || message FROM trempy.validate_settings('{}'::jsonb)",
            clash.to_string().replace('\'', "''")
        ),
    )
    .await;
    assert_eq!(
        rows,
        [format!(
            "tables[0]: target table public.{task} already has a column \"scd_current\", which is an SCD2 column name; rename one of them (task.scd2_settings)"
        )]
    );
    // create_task rejects the same settings, naming the problems
    let err =
        source.execute("SELECT trempy.create_task($1, $2::text::jsonb)", &[&task, &bad.to_string()]).await.unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("filters[1].settings.column_name"), "{err:?}");
}

/// Waits until `trempy.status()` shows an applier reason containing every one of `needles`.
async fn wait_for_reason(source: &tokio_postgres::Client, task: &str, needles: &[&str]) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let reason = status_text(source, task, "applier_reason").await.unwrap_or_default();
        if needles.iter().all(|n| reason.contains(n)) {
            return reason;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "trempy.status() does not report {needles:?} (applier_reason {reason:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A filtered task (`status = 'active'`) over a table with a large, incompressible text column;
/// row 1 (32 kB of md5 hex, stored out of line) is inserted outside the filter.
async fn toast_task(prefix: &str, identity_full: bool) -> (String, String, tokio_postgres::Client, Applier, Value) {
    let task = unique(prefix);
    let table = format!("public.{task}");
    let source = source().await;
    source.batch_execute(&format!("CREATE TABLE {table} (id int PRIMARY KEY, status text, body text)")).await.unwrap();
    if identity_full {
        source.batch_execute(&format!("ALTER TABLE {table} REPLICA IDENTITY FULL")).await.unwrap();
    }
    let f = json!({"filter_type": "equals", "description": "only active", "column_name": "status", "value": "active"});
    let settings = rules_settings(&task, ("public", &task), "default", &[f], &[]);
    create_task_with(&source, &task, &settings).await;
    let applier = Applier::start(&task);
    wait_for_phase(&source, &task, "cdc", WAIT).await;
    source
        .batch_execute(&format!("INSERT INTO {table} SELECT 1, 'inactive', string_agg(md5(random()::text || g), '') FROM generate_series(1, 1000) g"))
        .await
        .unwrap();
    let external: bool =
        source.query_one(&format!("SELECT pg_column_size(body) >= 30000 FROM {table}"), &[]).await.unwrap().get(0);
    assert!(external, "the large value was compressed: the test would not exercise unchanged TOAST");
    // The row enters the filter; its large value is unchanged, so pgoutput does not send it.
    source.batch_execute(&format!("UPDATE {table} SET status = 'active' WHERE id = 1")).await.unwrap();
    (task, table, source, applier, settings)
}

async fn source_md5(source: &tokio_postgres::Client, table: &str) -> String {
    source.query_one(&format!("SELECT md5(body) FROM {table} WHERE id = 1"), &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn a_row_entering_the_filter_keeps_its_unchanged_toast_under_replica_identity_full() {
    let (task, table, source, _applier, _) = toast_task("toast_full", true).await;
    let md5 = source_md5(&source, &table).await;
    wait_for_target_rows(
        &format!("SELECT id || ':' || status || ':' || coalesce(md5(body), 'NULL') FROM {table}"),
        &[&format!("1:active:{md5}")],
        WAIT,
    )
    .await;
    drop_task(&source, &task).await;
}

#[tokio::test]
async fn a_row_entering_the_filter_without_its_toast_halts_with_the_remedy_and_a_reload_converges() {
    let (task, table, source, _applier, settings) = toast_task("toast_halt", false).await;
    let reason = wait_for_reason(&source, &task, &["REPLICA IDENTITY FULL", "reload", &task]).await;
    assert!(reason.contains("does not write NULL"), "{reason}");
    let target = target().await;
    let rows: i64 = target.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0);
    assert_eq!(rows, 0, "a row without its large value was written");

    // The remedy the halt names.
    source.batch_execute(&format!("ALTER TABLE {table} REPLICA IDENTITY FULL")).await.unwrap();
    update_task(&source, &task, &reload_settings(settings)).await;
    let md5 = source_md5(&source, &table).await;
    wait_for_target_rows(
        &format!("SELECT id || ':' || status || ':' || coalesce(md5(body), 'NULL') FROM {table}"),
        &[&format!("1:active:{md5}")],
        WAIT,
    )
    .await;
    wait_converged(&[(&table, "id")], WAIT).await;
    drop_task(&source, &task).await;
}

#[tokio::test]
async fn a_rule_that_stops_fitting_halts_naming_it_and_update_task_unwedges_the_stream() {
    let task = unique("unfit");
    let table = format!("public.{task}");
    let source = source().await;
    source.batch_execute(&format!("CREATE TABLE {table} (id int PRIMARY KEY, v text, status text)")).await.unwrap();
    let f = json!({"filter_type": "equals", "description": "only active", "column_name": "status", "value": "active"});
    let settings = rules_settings(&task, ("public", &task), "upsert", &[f], &[]);
    create_task_with(&source, &task, &settings).await;
    let _applier = Applier::start(&task);
    wait_for_phase(&source, &task, "cdc", WAIT).await;
    source
        .batch_execute(&format!("INSERT INTO {table} VALUES (1, 'a', 'active'), (2, 'b', 'inactive')"))
        .await
        .unwrap();
    wait_for_target_rows(&format!("SELECT id::text FROM {table} ORDER BY id"), &["1"], WAIT).await;

    // The filtered column goes at the source: the rule no longer fits.
    source
        .batch_execute(&format!("ALTER TABLE {table} DROP COLUMN status; INSERT INTO {table} VALUES (3, 'c')"))
        .await
        .unwrap();
    let reason = wait_for_reason(&source, &task, &["filter 0 (equals, \"only active\")", "trempy.update_task"]).await;
    assert!(reason.contains("filters[0].settings.column_name"), "{reason}");
    source.batch_execute(&format!("INSERT INTO {table} VALUES (4, 'd')")).await.unwrap();
    let target = target().await;
    let ids = text_rows(&target, &format!("SELECT id::text FROM {table} ORDER BY id")).await;
    assert_eq!(ids, ["1"], "nothing may be applied past the halt");

    // The fix: the same task without the filter. Its settings are queued behind the halted
    // message; the applier reaches them and applies everything in order.
    let fixed = rules_settings(&task, ("public", &task), "upsert", &[], &[]);
    update_task(&source, &task, &fixed).await;
    source.batch_execute(&format!("INSERT INTO {table} VALUES (5, 'e')")).await.unwrap();
    // The task creates its tables, so the target follows the DROP COLUMN once the rules fit.
    wait_for_target_rows(
        &format!("SELECT id || ':' || v FROM {table} ORDER BY id"),
        &["1:a", "3:c", "4:d", "5:e"],
        WAIT,
    )
    .await;
    let status = text_rows(&target, &format!("SELECT count(*)::text FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attname = 'status' AND NOT attisdropped")).await;
    assert_eq!(status, ["0"], "the dropped column is dropped on the target too");
    let deadletters: i64 = target
        .query_one("SELECT count(*) FROM trempy.applier_deadletters WHERE task_name = $1", &[&task])
        .await
        .unwrap()
        .get(0);
    assert_eq!(deadletters, 0);
    drop_task(&source, &task).await;
}

/// Runs `sql` on a fresh source connection and returns the WARNING notices it raised.
async fn warnings_of(sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Vec<String> {
    use futures_util::StreamExt;
    let (client, mut connection) =
        tokio_postgres::connect(&env("TREMPY_SOURCE_DSN"), tokio_postgres::NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notice(notice) = message {
                let _ = tx.send((notice.severity().to_owned(), notice.message().to_owned()));
            }
        }
    });
    client.execute(sql, params).await.unwrap();
    drop(client);
    let mut warnings = Vec::new();
    while let Some((severity, message)) = rx.recv().await {
        if severity == "WARNING" {
            warnings.push(message);
        }
    }
    warnings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_task_warns_when_a_filtered_table_can_toast_without_replica_identity_full() {
    let task = unique("toastwarn");
    let table = format!("public.{task}");
    create_table_both(&format!("CREATE TABLE {table} (id int PRIMARY KEY, status text, body text)")).await;
    let filter =
        json!({"filter_type": "equals", "description": "only active", "column_name": "status", "value": "active"});
    let settings = rules_settings(&task, ("public", &task), "upsert", &[filter], &[]);
    let source = source().await;
    source.execute("CREATE EXTENSION IF NOT EXISTS trempy", &[]).await.unwrap();
    let warned = warnings_of("SELECT trempy.create_task($1, $2::text::jsonb)", &[&task, &settings.to_string()]).await;
    println!("{warned:?}");
    assert!(warned.iter().any(|w| w.contains("REPLICA IDENTITY FULL") && w.contains(&task)), "no warning: {warned:?}");

    // With REPLICA IDENTITY FULL the same settings raise no such warning.
    source.batch_execute(&format!("ALTER TABLE {table} REPLICA IDENTITY FULL")).await.unwrap();
    let warned = warnings_of("SELECT trempy.update_task($1, $2::text::jsonb)", &[&task, &settings.to_string()]).await;
    assert!(!warned.iter().any(|w| w.contains("REPLICA IDENTITY FULL")), "warned anyway: {warned:?}");
    drop_task(&source, &task).await;
}
