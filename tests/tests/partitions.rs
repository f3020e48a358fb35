//! A partitioned table is replicated through its root: one target table with every partition's
//! rows, in the full load and in CDC, including partitions created after the task started and
//! rows that move between partitions, and the rows a table holds when it is attached as a partition.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::Duration;

use trempy_e2e::*;

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_table_is_one_target_table_and_partitions_added_mid_stream_arrive() {
    let task = unique("parts");
    let root = format!("public.{task}");
    let source = source().await;
    source
        .batch_execute(&format!(
            "CREATE TABLE {root} (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
             CREATE TABLE public.{task}_eu PARTITION OF {root} FOR VALUES IN ('eu');
             CREATE TABLE public.{task}_us PARTITION OF {root} FOR VALUES IN ('us');
             INSERT INTO {root} SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, 'loaded' FROM generate_series(1, 1000) g;"
        ))
        .await
        .unwrap();

    // A partition listed next to its root would be copied twice: refused, naming the root.
    let both = load_settings(&task, "full_load_and_cdc", &[("public", &task), ("public", &format!("{task}_eu"))]);
    let err = source
        .execute("SELECT trempy.create_task($1, $2::text::jsonb)", &[&task, &both.to_string()])
        .await
        .unwrap_err();
    let message = err.as_db_error().map(|e| e.message().to_owned()).unwrap_or_default();
    assert!(message.contains("is a partition of"), "{message}");

    create_task_with(&source, &task, &load_settings(&task, "full_load_and_cdc", &[("public", &task)])).await;
    let _applier = Applier::start(&task);
    let target = target().await;
    let deadline = std::time::Instant::now() + WAIT;
    while !target.query_one("SELECT to_regclass($1) IS NOT NULL", &[&root]).await.unwrap().get::<_, bool>(0) {
        assert!(std::time::Instant::now() < deadline, "the applier did not create the target table");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fp = wait_converged(&[(&root, "id, region")], WAIT).await;
    assert_eq!(fp[0].0, 1000, "the full load reads every partition through the root");
    let plain: String = target
        .query_one("SELECT c.relkind::text FROM pg_class c WHERE c.oid = $1::text::regclass", &[&root])
        .await
        .unwrap()
        .get(0);
    assert_eq!(plain, "r", "the target is one ordinary table");

    // CDC: a partition created mid-stream, rows into it, rows moved between partitions, deletes.
    source
        .batch_execute(&format!(
            "CREATE TABLE public.{task}_asia PARTITION OF {root} FOR VALUES IN ('asia');
             INSERT INTO {root} SELECT g, 'asia', 'new partition' FROM generate_series(1001, 1200) g;
             UPDATE {root} SET region = 'asia', v = 'moved' WHERE id BETWEEN 1 AND 100;
             UPDATE {root} SET v = 'updated' WHERE id BETWEEN 500 AND 600;
             DELETE FROM {root} WHERE id BETWEEN 900 AND 950;"
        ))
        .await
        .unwrap();
    let fp = wait_converged(&[(&root, "id, region")], WAIT).await;
    assert_eq!(fp[0].0, 1000 + 200 - 51);
    let asia: i64 =
        target.query_one(&format!("SELECT count(*) FROM {root} WHERE region = 'asia'"), &[]).await.unwrap().get(0);
    assert_eq!(asia, 300);

    // A table attached as a partition while holding rows: those rows never passed through the
    // stream. The event trigger sends them (a partition of them) in the ATTACH's transaction,
    // and the applier inserts them there, between the changes before and after it.
    source
        .batch_execute(&format!(
            "CREATE TABLE public.{task}_af (id int, region text, v text, PRIMARY KEY (id, region));
             INSERT INTO public.{task}_af SELECT g, 'af', 'held before attach' FROM generate_series(2001, 2050) g;
             CREATE TABLE public.{task}_oc (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
             CREATE TABLE public.{task}_oc1 PARTITION OF public.{task}_oc FOR VALUES IN ('oc');
             INSERT INTO public.{task}_oc SELECT g, 'oc', 'held in a sub-partition' FROM generate_series(3001, 3020) g;
             BEGIN;
             ALTER TABLE {root} ATTACH PARTITION public.{task}_af FOR VALUES IN ('af');
             ALTER TABLE {root} ATTACH PARTITION public.{task}_oc FOR VALUES IN ('oc');
             UPDATE {root} SET v = 'changed after attach' WHERE id = 2001;
             COMMIT;
             INSERT INTO {root} VALUES (4000, 'eu', 'after attach');"
        ))
        .await
        .unwrap();
    let fp = wait_converged(&[(&root, "id, region")], WAIT).await;
    assert_eq!(fp[0].0, 1000 + 200 - 51 + 50 + 20 + 1);
    let reason = status_text(&source, &task, "applier_reason").await;
    println!("applier: {reason:?}");
    drop_task(&source, &task).await;
}
