//! Source schema changes on the target, driven by hand-made version-3 envelopes (the stream a
//! task worker publishes: a settings message, then source transactions whose changes include
//! `"op": "schema"`). No source task is involved: the applier only reads its queue. Each step on a
//! table the task manages, the halts (a volatile default, a USING conversion, a target the task
//! does not manage), SCD2 history, rules following renames, and DROP TABLE keeping target data.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::Duration;

use serde_json::{Value, json};
use trempy_e2e::*;

const WAIT: Duration = Duration::from_secs(120);

/// The task's stream as the test writes it: one message per call, commit LSNs increasing.
struct Stream {
    task: String,
    incarnation: String,
    generation: u32,
    n: u32,
}

impl Stream {
    fn new(task: &str) -> Self {
        Self {
            task: task.to_owned(),
            incarnation: format!("6f1c2a9e-3b1d-4c55-9a0e-{:012x}", std::process::id()),
            generation: 1,
            n: 0,
        }
    }

    fn head(&self) -> Value {
        json!({"version": 3, "task": self.task, "incarnation": self.incarnation, "generation": self.generation})
    }

    async fn publish(&self, body: &Value) {
        let (connection, channel) = amqp_channel().await;
        publish_to_task(&channel, &self.task, body.to_string().as_bytes()).await;
        let _ = connection.close(200, "bye".into()).await;
    }

    async fn settings(&self, settings: &Value) {
        let mut body = self.head();
        body["settings"] = settings.clone();
        body["transactions"] = json!([]);
        body["relations"] = json!([]);
        self.publish(&body).await;
    }

    /// One source transaction in one message; returns its commit LSN.
    async fn tx(&mut self, relations: &[Value], changes: Vec<Value>) -> String {
        self.n += 1;
        let lsn = format!("0/{:X}", self.n * 16);
        let mut body = self.head();
        body["transactions"] = json!([{"changes": changes, "xid": self.n, "commit_lsn": lsn, "commit_time": format!("2026-01-01T00:{:02}:{:02}.000000Z", self.n / 60, self.n % 60), "seq": 0, "last": true}]);
        body["relations"] = json!(relations);
        self.publish(&body).await;
        lsn
    }
}

/// A relation: columns as (name, type, key).
fn rel(id: u32, table: &str, columns: &[(&str, &str, bool)]) -> Value {
    let columns: Vec<Value> =
        columns.iter().map(|(n, t, k)| json!({"name": n, "type": t, "type_oid": 0, "key": k, "not_null": k})).collect();
    json!({"id": id, "schema": "public", "table": table, "columns": columns})
}

/// A shape: columns as (attnum, name, type, key, not_null).
fn shape(table: &str, columns: &[(i16, &str, &str, bool, bool)]) -> Value {
    let columns: Vec<Value> = columns
        .iter()
        .map(|(a, n, t, k, nn)| json!({"attnum": a, "name": n, "type": t, "type_oid": 0, "key": k, "not_null": nn}))
        .collect();
    json!({"schema": "public", "table": table, "columns": columns})
}

fn schema_change(rel: u32, old: Value, new: Option<Value>, fills: Value, rewritten: Value) -> Value {
    let mut change =
        json!({"op": "schema", "rel": rel, "tag": "ALTER TABLE", "old": old, "fills": fills, "rewritten": rewritten});
    if let Some(new) = new {
        change["new"] = new;
    }
    change
}

fn insert(rel: u32, values: &[Option<&str>]) -> Value {
    json!({"op": "insert", "rel": rel, "new": values})
}

fn settings(task: &str, table: &str, mode: &str, managed: bool) -> Value {
    let mut s = rules_settings(task, ("public", table), mode, &[], &[]);
    s["task"]["create_table_if_not_exists"] = json!(managed);
    s
}

/// `name type [not null]` of each column, in order.
fn columns_sql(table: &str) -> String {
    format!(
        "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod) || CASE WHEN attnotnull THEN ' not null' ELSE '' END, ', ' ORDER BY attnum)
           FROM pg_attribute WHERE attrelid = 'public.{table}'::regclass AND attnum > 0 AND NOT attisdropped"
    )
}

fn primary_key_sql(table: &str) -> String {
    format!(
        "SELECT string_agg(a.attname, ',' ORDER BY a.attname) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
          WHERE i.indrelid = 'public.{table}'::regclass AND i.indisprimary"
    )
}

/// Every row as JSON (column names and values), by `id`.
fn rows_sql(table: &str) -> String {
    format!("SELECT to_jsonb(t)::text FROM public.{table} t ORDER BY (t.id)")
}

fn recorded_sql(task: &str) -> String {
    format!(
        "SELECT commit_lsn::text || ' ' || steps FROM trempy.applier_schema_changes WHERE task_name = '{task}' ORDER BY id"
    )
}

const T: Option<&str> = None;

/// Each step on a table the task manages, one after another between row changes: ADD COLUMN with
/// a fill (in the transaction after a row of the old shape), a RENAME/DROP/TYPE/ADD statement whose
/// ADD a re-copy had done already (skipped, not an error), NOT NULL and key changes, RENAME TABLE.
/// The target ends with exactly the expected columns, key and rows; each change is recorded.
#[tokio::test]
async fn each_step_on_a_managed_table() {
    let task = unique("schema_steps");
    let renamed = format!("{task}_r");
    let mut stream = Stream::new(&task);
    let _applier = Applier::start(&task);
    stream.settings(&settings(&task, &task, "upsert", true)).await;
    let v1 = [
        (1, "id", "integer", true, true),
        (2, "name", "text", false, false),
        (3, "n", "integer", false, false),
        (4, "old_c", "text", false, false),
    ];
    let r1 = rel(
        1001,
        &task,
        &[("id", "integer", true), ("name", "text", false), ("n", "integer", false), ("old_c", "text", false)],
    );
    stream
        .tx(
            std::slice::from_ref(&r1),
            vec![
                insert(1001, &[Some("1"), Some("a"), Some("1"), Some("x")]),
                insert(1001, &[Some("2"), Some("b"), Some("2"), Some("y")]),
            ],
        )
        .await;
    // a row of the old shape, then ADD COLUMN c integer DEFAULT 7 in the same source transaction
    let mut v2 = v1.to_vec();
    v2.push((5, "c", "integer", false, false));
    stream
        .tx(
            &[r1],
            vec![
                insert(1001, &[Some("3"), Some("c"), Some("3"), Some("z")]),
                schema_change(
                    1001,
                    shape(&task, &v1),
                    Some(shape(&task, &v2)),
                    json!([{"attnum": 5, "value": "7"}]),
                    json!([]),
                ),
            ],
        )
        .await;
    let r2 = rel(
        1001,
        &task,
        &[
            ("id", "integer", true),
            ("name", "text", false),
            ("n", "integer", false),
            ("old_c", "text", false),
            ("c", "integer", false),
        ],
    );
    stream
        .tx(
            &[r2],
            vec![
                insert(1001, &[Some("4"), Some("d"), Some("4"), Some("w"), Some("8")]),
                json!({"op": "update", "rel": 1001, "new": ["1", "a2", "1", "x", "7"]}),
            ],
        )
        .await;
    wait_for_target_rows(&format!("SELECT count(*)::text FROM public.{task} WHERE c IS NOT NULL"), &["4"], WAIT).await;
    // a re-copy (or the DBA) added d already
    target().await.batch_execute(&format!("ALTER TABLE public.{task} ADD COLUMN d text")).await.unwrap();
    // RENAME name TO label, DROP old_c, n TYPE bigint, ADD d: one statement
    let v3 = [
        (1, "id", "integer", true, true),
        (2, "label", "text", false, false),
        (3, "n", "bigint", false, false),
        (5, "c", "integer", false, false),
        (6, "d", "text", false, false),
    ];
    stream.tx(&[], vec![schema_change(1001, shape(&task, &v2), Some(shape(&task, &v3)), json!([]), json!([]))]).await;
    let r3 = rel(
        1001,
        &task,
        &[
            ("id", "integer", true),
            ("label", "text", false),
            ("n", "bigint", false),
            ("c", "integer", false),
            ("d", "text", false),
        ],
    );
    stream.tx(&[r3], vec![insert(1001, &[Some("5"), Some("e"), Some("5000000000"), Some("9"), Some("dd")])]).await;
    // the key becomes (id, n); label and n NOT NULL
    let v4 = [
        (1, "id", "integer", true, true),
        (2, "label", "text", false, true),
        (3, "n", "bigint", true, true),
        (5, "c", "integer", false, false),
        (6, "d", "text", false, false),
    ];
    stream.tx(&[], vec![schema_change(1001, shape(&task, &v3), Some(shape(&task, &v4)), json!([]), json!([]))]).await;
    // RENAME TABLE
    stream
        .tx(&[], vec![schema_change(1001, shape(&task, &v4), Some(shape(&renamed, &v4)), json!([]), json!([]))])
        .await;
    let r4 = rel(
        1001,
        &renamed,
        &[
            ("id", "integer", true),
            ("label", "text", false),
            ("n", "bigint", true),
            ("c", "integer", false),
            ("d", "text", false),
        ],
    );
    stream
        .tx(
            &[r4],
            vec![
                insert(1001, &[Some("6"), Some("f"), Some("6"), Some("10"), Some("x")]),
                json!({"op": "update", "rel": 1001, "new": ["2", "b2", "2", "7", null]}),
            ],
        )
        .await;
    wait_for_target_rows(
        &rows_sql(&renamed),
        &[
            r#"{"c": 7, "d": null, "n": 1, "id": 1, "label": "a2"}"#,
            r#"{"c": 7, "d": null, "n": 2, "id": 2, "label": "b2"}"#,
            r#"{"c": 7, "d": null, "n": 3, "id": 3, "label": "c"}"#,
            r#"{"c": 8, "d": null, "n": 4, "id": 4, "label": "d"}"#,
            r#"{"c": 9, "d": "dd", "n": 5000000000, "id": 5, "label": "e"}"#,
            r#"{"c": 10, "d": "x", "n": 6, "id": 6, "label": "f"}"#,
        ],
        WAIT,
    )
    .await;
    let target = target().await;
    assert_eq!(
        text_rows(&target, &columns_sql(&renamed)).await,
        ["id integer not null, label text not null, n bigint not null, c integer, d text"]
    );
    assert_eq!(text_rows(&target, &primary_key_sql(&renamed)).await, ["id,n"]);
    assert_eq!(text_rows(&target, &format!("SELECT (to_regclass('public.{task}') IS NULL)::text")).await, ["true"]);
    let recorded = text_rows(&target, &recorded_sql(&task)).await;
    assert_eq!(recorded.len(), 4, "{recorded:?}");
    assert!(
        recorded[0].starts_with("0/20 ")
            && recorded[0].contains(&format!(r#"UPDATE "public"."{task}" SET "c" = '7'::integer"#)),
        "{recorded:?}"
    );
    assert!(
        recorded[1].contains("already: column d exists") && recorded[1].contains(r#"RENAME COLUMN "name" TO "label""#),
        "{recorded:?}"
    );
    assert!(
        recorded[2].contains("ADD PRIMARY KEY") && recorded[3].contains(&format!(r#"RENAME TO "{renamed}""#)),
        "{recorded:?}"
    );
}

/// A column added with a volatile DEFAULT, and a type changed with USING, cannot be derived on
/// the target: the applier halts in order with what happened and the remedy (what came before
/// is committed, nothing is dead-lettered), and the reload queued behind the halted message
/// starts over at its generation.
#[tokio::test]
async fn what_cannot_be_derived_halts_until_a_reload() {
    for (case, rewritten_type) in [("volatile", None), ("using", Some("bigint"))] {
        let task = unique(&format!("schema_{case}"));
        let mut stream = Stream::new(&task);
        let _applier = Applier::start(&task);
        stream.settings(&settings(&task, &task, "upsert", true)).await;
        let v1 = [(1, "id", "integer", true, true), (2, "n", "integer", false, false)];
        let r1 = rel(1001, &task, &[("id", "integer", true), ("n", "integer", false)]);
        let first = stream.tx(std::slice::from_ref(&r1), vec![insert(1001, &[Some("1"), Some("1")])]).await;
        let (v2, expected) = match rewritten_type {
            None => (vec![v1[0], v1[1], (3, "at", "timestamp without time zone", false, false)], "volatile DEFAULT"),
            Some(ty) => (vec![v1[0], (2, "n", ty, false, false)], "USING"),
        };
        let rewritten = if rewritten_type.is_some() { json!([2]) } else { json!([3]) };
        stream
            .tx(&[], vec![schema_change(1001, shape(&task, &v1), Some(shape(&task, &v2)), json!([]), rewritten)])
            .await;
        let log = wait_for_applier_log(&task, &["apply halted", expected, "\"start_mode\": \"reload\""], WAIT).await;
        assert!(log.contains(&format!("public.{task} at 0/20")), "the halt names the table and the change");
        let target = target().await;
        wait_for_target_rows(
            &format!("SELECT commit_lsn::text FROM trempy.applier_progress WHERE task_name = '{task}'"),
            &[&first],
            WAIT,
        )
        .await;
        assert_eq!(
            text_rows(
                &target,
                &format!("SELECT count(*)::text FROM trempy.applier_deadletters WHERE task_name = '{task}'")
            )
            .await,
            ["0"]
        );
        assert_eq!(
            text_rows(&target, &columns_sql(&task)).await,
            ["id integer not null, n integer"],
            "nothing of the change applied"
        );
        // the reload: a newer generation queued behind the halted message
        stream.generation = 2;
        stream.settings(&settings(&task, &task, "upsert", true)).await;
        stream.tx(&[r1], vec![insert(1001, &[Some("2"), Some("2")])]).await;
        wait_for_target_rows(&format!("SELECT id::text FROM public.{task} ORDER BY id"), &["1", "2"], WAIT).await;
        assert_eq!(
            text_rows(
                &target,
                &format!("SELECT generation::text FROM trempy.applier_progress WHERE task_name = '{task}'")
            )
            .await,
            ["2"]
        );
    }
}

/// The task does not manage its target tables: the applier halts naming the exact statements;
/// once the DBA runs them, the next attempt finds the target reconciled and goes on.
#[tokio::test]
async fn an_unmanaged_target_halts_naming_the_statements_then_converges() {
    let task = unique("schema_dba");
    let target = target().await;
    target.batch_execute(&format!("CREATE TABLE public.{task} (id integer PRIMARY KEY, name text)")).await.unwrap();
    let mut stream = Stream::new(&task);
    let _applier = Applier::start(&task);
    stream.settings(&settings(&task, &task, "upsert", false)).await;
    let v1 = [(1, "id", "integer", true, true), (2, "name", "text", false, false)];
    stream
        .tx(
            &[rel(1001, &task, &[("id", "integer", true), ("name", "text", false)])],
            vec![insert(1001, &[Some("1"), Some("a")])],
        )
        .await;
    let v2 = [(1, "id", "integer", true, true), (2, "label", "text", false, false), (3, "c", "integer", false, false)];
    stream
        .tx(
            &[],
            vec![schema_change(
                1001,
                shape(&task, &v1),
                Some(shape(&task, &v2)),
                json!([{"attnum": 3, "value": "5"}]),
                json!([]),
            )],
        )
        .await;
    stream
        .tx(
            &[rel(1001, &task, &[("id", "integer", true), ("label", "text", false), ("c", "integer", false)])],
            vec![insert(1001, &[Some("2"), Some("b"), Some("6")])],
        )
        .await;
    let statements = [
        format!(r#"ALTER TABLE "public"."{task}" RENAME COLUMN "name" TO "label";"#),
        format!(r#"ALTER TABLE "public"."{task}" ADD COLUMN "c" integer;"#),
        format!(r#"UPDATE "public"."{task}" SET "c" = '5'::integer;"#),
    ];
    let needles: Vec<&str> =
        std::iter::once("does not manage its target tables").chain(statements.iter().map(String::as_str)).collect();
    wait_for_applier_log(&task, &needles, WAIT).await;
    assert_eq!(
        text_rows(&target, &rows_sql(&task)).await,
        [r#"{"id": 1, "name": "a"}"#],
        "nothing after the change is applied"
    );
    for statement in &statements {
        target.batch_execute(statement).await.unwrap();
    }
    wait_for_target_rows(
        &rows_sql(&task),
        &[r#"{"c": 5, "id": 1, "label": "a"}"#, r#"{"c": 6, "id": 2, "label": "b"}"#],
        WAIT,
    )
    .await;
    let recorded = text_rows(&target, &recorded_sql(&task)).await;
    assert!(
        recorded.len() == 1
            && recorded[0].contains("already: column label exists")
            && recorded[0].contains("already: column c exists"),
        "{recorded:?}"
    );
}

/// SCD2: the history keeps its versions; an added column is NULL in closed versions and the
/// source's fill in current ones; a renamed column is renamed in the history; a dropped column
/// goes while the SCD2 columns stay.
#[tokio::test]
async fn scd2_history_keeps_its_versions() {
    let task = unique("schema_scd2");
    let mut stream = Stream::new(&task);
    let _applier = Applier::start(&task);
    stream.settings(&settings(&task, &task, "scd2", true)).await;
    let v1 = [(1, "id", "integer", true, true), (2, "name", "text", false, false), (3, "gone", "text", false, false)];
    let r1 = rel(1001, &task, &[("id", "integer", true), ("name", "text", false), ("gone", "text", false)]);
    stream
        .tx(
            std::slice::from_ref(&r1),
            vec![insert(1001, &[Some("1"), Some("a"), Some("g")]), insert(1001, &[Some("2"), Some("b"), Some("g")])],
        )
        .await;
    stream.tx(&[r1], vec![json!({"op": "update", "rel": 1001, "new": ["1", "a2", "g"]})]).await;
    let v2 = [(1, "id", "integer", true, true), (2, "label", "text", false, false), (4, "c", "integer", false, false)];
    stream
        .tx(
            &[],
            vec![schema_change(
                1001,
                shape(&task, &v1),
                Some(shape(&task, &v2)),
                json!([{"attnum": 4, "value": "7"}]),
                json!([]),
            )],
        )
        .await;
    let r2 = rel(1001, &task, &[("id", "integer", true), ("label", "text", false), ("c", "integer", false)]);
    stream
        .tx(
            &[r2],
            vec![
                json!({"op": "update", "rel": 1001, "new": ["2", "b2", "8"]}),
                insert(1001, &[Some("3"), Some("c"), Some("9")]),
            ],
        )
        .await;
    let history = format!(
        "SELECT id || ':' || label || ':' || coalesce(c::text, 'NULL') || ':' || scd_current FROM public.{task} ORDER BY id, scd_start_date"
    );
    wait_for_target_rows(
        &history,
        &["1:a:NULL:false", "1:a2:7:true", "2:b:7:false", "2:b2:8:true", "3:c:9:true"],
        WAIT,
    )
    .await;
    let target = target().await;
    assert_eq!(
        text_rows(&target, &columns_sql(&task)).await,
        [
            "id integer not null, label text, scd_start_date timestamp with time zone not null, scd_end_date timestamp with time zone, scd_current boolean not null, c integer"
        ]
    );
    assert_eq!(text_rows(&target, &primary_key_sql(&task)).await, ["id,scd_start_date"]);
}

/// After a rename of the table and of the columns a filter and a masking transformation use, the
/// rules follow the new names (the filter still filters, the mask still masks, also after a
/// restart: the rewritten settings are recorded with the progress); a change that breaks a rule
/// halts naming it.
#[tokio::test]
async fn rules_follow_renames() {
    let task = unique("schema_rules");
    let renamed = format!("{task}_r");
    let mut stream = Stream::new(&task);
    let mut applier = Applier::start(&task);
    let rules = rules_settings(
        &task,
        ("public", &task),
        "upsert",
        &[json!({"filter_type": "greater_than", "description": "positive", "column_name": "n", "value": 0})],
        &[
            json!({"transformation_type": "modify_column_value", "description": "mask", "contract": {"operation": "uppercase", "column_name": "name"}, "priority": 1}),
        ],
    );
    stream.settings(&rules).await;
    let v1 = [(1, "id", "integer", true, true), (2, "name", "text", false, false), (3, "n", "integer", false, false)];
    stream
        .tx(
            &[rel(1001, &task, &[("id", "integer", true), ("name", "text", false), ("n", "integer", false)])],
            vec![insert(1001, &[Some("1"), Some("a"), Some("1")]), insert(1001, &[Some("2"), Some("b"), Some("-1")])],
        )
        .await;
    let v2 =
        [(1, "id", "integer", true, true), (2, "label", "text", false, false), (3, "qty", "integer", false, false)];
    stream
        .tx(&[], vec![schema_change(1001, shape(&task, &v1), Some(shape(&renamed, &v2)), json!([]), json!([]))])
        .await;
    let r2 = rel(1001, &renamed, &[("id", "integer", true), ("label", "text", false), ("qty", "integer", false)]);
    stream
        .tx(
            std::slice::from_ref(&r2),
            vec![insert(1001, &[Some("3"), Some("c"), Some("5")]), insert(1001, &[Some("4"), Some("d"), Some("-5")])],
        )
        .await;
    let rows = rows_sql(&renamed);
    wait_for_target_rows(
        &rows,
        &[r#"{"id": 1, "qty": 1, "label": "A"}"#, r#"{"id": 3, "qty": 5, "label": "C"}"#],
        WAIT,
    )
    .await;
    let target = target().await;
    let recorded =
        text_rows(&target, &format!("SELECT settings::text FROM trempy.applier_progress WHERE task_name = '{task}'"))
            .await;
    assert!(
        recorded[0].contains(r#""column_name": "qty""#)
            && recorded[0].contains(&format!(r#""table_name": "{renamed}""#)),
        "{recorded:?}"
    );
    // a restart keeps the rules on the new names
    applier.restart_after_kill().await;
    stream
        .tx(
            &[r2],
            vec![insert(1001, &[Some("5"), Some("e"), Some("6")]), insert(1001, &[Some("6"), Some("f"), Some("0")])],
        )
        .await;
    wait_for_target_rows(
        &rows,
        &[
            r#"{"id": 1, "qty": 1, "label": "A"}"#,
            r#"{"id": 3, "qty": 5, "label": "C"}"#,
            r#"{"id": 5, "qty": 6, "label": "E"}"#,
        ],
        WAIT,
    )
    .await;
    // dropping the filtered column breaks the filter: halt, naming it
    let v3 = [(1, "id", "integer", true, true), (2, "label", "text", false, false)];
    stream
        .tx(&[], vec![schema_change(1001, shape(&renamed, &v2), Some(shape(&renamed, &v3)), json!([]), json!([]))])
        .await;
    wait_for_applier_log(&task, &["apply halted", "filter 0 (greater_than, \"positive\")"], WAIT).await;
    assert_eq!(
        text_rows(&target, &columns_sql(&renamed)).await,
        ["id integer not null, label text, qty integer"],
        "the halting change is not applied"
    );
}

/// DROP TABLE at the source: the target table and its rows stay, the drop is recorded, and the
/// stream goes on.
#[tokio::test]
async fn drop_table_keeps_target_data() {
    let task = unique("schema_drop");
    let other = format!("{task}_o");
    let mut stream = Stream::new(&task);
    let _applier = Applier::start(&task);
    let mut s = settings(&task, &task, "upsert", true);
    s["tables"].as_array_mut().unwrap().push(json!({"schema_name": "public", "table_name": other, "priority": 0}));
    stream.settings(&s).await;
    let v1 = [(1, "id", "integer", true, true), (2, "name", "text", false, false)];
    let r1 = rel(1001, &task, &[("id", "integer", true), ("name", "text", false)]);
    let r2 = rel(1002, &other, &[("id", "integer", true)]);
    stream
        .tx(
            &[r1, r2.clone()],
            vec![insert(1001, &[Some("1"), Some("a")]), insert(1001, &[Some("2"), T]), insert(1002, &[Some("1")])],
        )
        .await;
    let mut drop = schema_change(1001, shape(&task, &v1), None, json!([]), json!([]));
    drop["tag"] = json!("DROP TABLE");
    stream.tx(&[], vec![drop]).await;
    stream.tx(&[r2], vec![insert(1002, &[Some("2")])]).await;
    wait_for_target_rows(&format!("SELECT id::text FROM public.{other} ORDER BY id"), &["1", "2"], WAIT).await;
    let target = target().await;
    assert_eq!(text_rows(&target, &rows_sql(&task)).await, [r#"{"id": 1, "name": "a"}"#, r#"{"id": 2, "name": null}"#]);
    let recorded = text_rows(&target, &recorded_sql(&task)).await;
    assert!(
        recorded.len() == 1 && recorded[0].contains(&format!("source table dropped: target table public.{task} kept")),
        "{recorded:?}"
    );
}
