//! Schema changes on the source are captured in stream order: the event trigger's messages
//! travel inside their transactions, between the row changes before and after them, with the
//! table's shape before and after (by attnum) and what existing rows hold in added columns (one
//! value, or each row's own value by key, as a backfill). Read straight from the task's queue,
//! without an applier.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use trempy_e2e::*;
use trempy_protocol::envelope::{Change, Envelope};
use trempy_protocol::schema::{self, Existing, Step};

/// Every transaction's changes in the task's queue, as one list, once `want` changes are there.
/// (A consumer, as the applier would be: the queue has a single active consumer.)
async fn queued_changes(task: &str, want: usize) -> (Vec<Change>, Vec<Vec<String>>) {
    use futures_util::StreamExt;
    let (_connection, channel) = amqp_channel().await;
    let mut consumer = channel
        .basic_consume(
            format!("trempy_queue_{task}").as_str().into(),
            "schema_capture".into(),
            BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut changes = Vec::new();
    let mut described = Vec::new();
    while changes.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let delivery = tokio::time::timeout(left, consumer.next()).await;
        let Ok(Some(Ok(delivery))) = delivery else { panic!("only {} changes arrived: {changes:?}", changes.len()) };
        let envelope = Envelope::parse(&delivery.data).unwrap();
        // Each row change with the column names its message describes its relation with.
        for change in envelope.transactions.iter().flat_map(|t| t.changes.iter()) {
            if let Change::Insert { rel, .. } = change {
                let relation = envelope.relations.iter().find(|r| r.id == *rel).unwrap();
                described.push(relation.columns.iter().map(|c| c.name.clone()).collect());
            }
        }
        changes.extend(envelope.transactions.into_iter().flat_map(|t| t.changes));
    }
    (changes, described)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_travel_in_stream_order_with_the_shapes_and_what_existing_rows_hold() {
    let task = unique("ddlcap");
    let t = format!("public.{task}");
    let source = source().await;
    source.batch_execute(&format!("CREATE TABLE {t} (id int PRIMARY KEY, v text)")).await.unwrap();
    create_task(&source, &task, &[("public", &task)]).await;
    let renamed = format!("{task}_renamed");
    for statement in [
        format!("INSERT INTO {t} VALUES (1, 'a')"),
        format!("BEGIN; ALTER TABLE {t} ADD COLUMN c2 int DEFAULT 7; INSERT INTO {t} VALUES (2, 'b', 8); COMMIT"),
        format!("ALTER TABLE {t} ADD COLUMN c3 timestamptz DEFAULT clock_timestamp()"),
        format!("ALTER TABLE {t} RENAME COLUMN v TO v2"),
        format!("ALTER TABLE {t} ALTER COLUMN c2 TYPE bigint"),
        format!("ALTER TABLE {t} ALTER COLUMN c2 TYPE numeric USING c2 + 1"),
        format!("ALTER TABLE {t} RENAME TO {renamed}"),
        format!("INSERT INTO public.{renamed} VALUES (3, 'c')"),
        format!("ALTER TABLE public.{renamed} DROP COLUMN c3"),
        format!("DROP TABLE public.{renamed}"),
    ] {
        source.batch_execute(&statement).await.unwrap();
    }
    let (changes, described) = queued_changes(&task, 13).await;
    // Each insert is described with the shape it was made under.
    assert_eq!(described, vec![vec!["id", "v"], vec!["id", "v", "c2"], vec!["id", "v2", "c2", "c3"]], "{described:?}");
    let steps: Vec<String> = changes
        .iter()
        .map(|change| match change {
            Change::Insert { new, .. } => format!("insert {}", new[0].as_deref().unwrap_or("-")),
            // The values the statement computed per row, by key, in the statement's transaction.
            Change::Backfill(b) => {
                let rows: Vec<String> =
                    b.rows.iter().map(|r| format!("{}={}", r[0].as_deref().unwrap_or("-"), r[1].is_some())).collect();
                format!("backfill {:?} by {:?}: {} last {}", b.columns, b.key, rows.join(" "), b.last)
            }
            Change::Schema(s) => schema::diff(s)
                .iter()
                .map(|step| match step {
                    Step::AddColumn { column, fill: Existing::Value(v) } => format!("add {} = {v}", column.name),
                    Step::AddColumn { column, fill: Existing::Unknown } => format!("add {} unknown", column.name),
                    Step::AddColumn { column, fill: Existing::Backfilled } => format!("add {} backfilled", column.name),
                    Step::AddColumn { column, fill: Existing::Null } => format!("add {} null", column.name),
                    Step::RenameColumn { from, to } => format!("rename column {from} to {to}"),
                    Step::AlterType { column, conversion } => {
                        format!("type {} {} {conversion:?}", column.name, column.type_name)
                    }
                    Step::RenameTable { to, .. } => format!("rename table to {}", to.1),
                    Step::DropColumn { name } => format!("drop {name}"),
                    Step::DropTable => "drop table".to_owned(),
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>()
                .join(", "),
            other => format!("{other:?}"),
        })
        .collect();
    println!("{steps:#?}");
    assert_eq!(
        steps,
        vec![
            "insert 1".to_owned(),
            "add c2 = 7".to_owned(),
            "insert 2".to_owned(),
            "add c3 backfilled".to_owned(),
            r#"backfill ["c3"] by ["id"]: 1=true 2=true last true"#.to_owned(),
            "rename column v to v2".to_owned(),
            "type c2 bigint Cast".to_owned(),
            "type c2 numeric Backfilled".to_owned(),
            r#"backfill ["c2"] by ["id"]: 1=true 2=true last true"#.to_owned(),
            format!("rename table to {renamed}"),
            "insert 3".to_owned(),
            "drop c3".to_owned(),
            "drop table".to_owned(),
        ]
    );
    // The task's settings follow the rename; the schema changes are listed per task.
    let tables: String = source
        .query_one("SELECT settings->'tables'->0->>'table_name' FROM trempy.tasks WHERE task_name = $1", &[&task])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, renamed);
    let seen: i64 = source
        .query_one("SELECT count(*) FROM trempy.task_schema_changes WHERE task_name = $1", &[&task])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 8);
    drop_task(&source, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_of_tables_no_task_replicates_are_not_recorded() {
    let source = source().await;
    source.execute("CREATE EXTENSION IF NOT EXISTS trempy", &[]).await.unwrap();
    let table = format!("public.{}", unique("unwatched"));
    let before: i64 = source.query_one("SELECT count(*) FROM trempy.schema_changes", &[]).await.unwrap().get(0);
    source
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY); ALTER TABLE {table} ADD COLUMN c int; DROP TABLE {table}"
        ))
        .await
        .unwrap();
    let after: i64 = source.query_one("SELECT count(*) FROM trempy.schema_changes", &[]).await.unwrap().get(0);
    assert_eq!(after, before);
}
