//! Values of many PostgreSQL types, including awkward ones, round-trip exactly through CDC and
//! through the full load: compared by the md5 of each row's text form on both sides.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::Duration;

use trempy_e2e::*;

/// The typed table's schema, its qualified name, and its DDL (schema, enum, domain, table).
fn typed_table(task: &str) -> (String, String, String) {
    let schema = format!("Typed {task}");
    let qs = format!("\"{schema}\"");
    let t = format!("{qs}.\"Värden\"");
    let ddl = format!(
        "CREATE SCHEMA {qs};
         CREATE TYPE {qs}.mood AS ENUM ('sad', 'ok', 'happy ☺');
         CREATE DOMAIN {qs}.positive AS numeric(10,2) CHECK (VALUE > 0);
         CREATE TABLE {t} (
           id int PRIMARY KEY,
           i2 smallint, i8 bigint, num numeric, num_s numeric(12,4), f4 real, f8 double precision, m money,
           tx text, vc varchar(20), ch char(5), by bytea, b boolean,
           d date, tm time, ttz timetz, ts timestamp, tstz timestamptz, iv interval,
           u uuid, j json, jb jsonb, x xml, ip inet, cidr_ cidr, mac macaddr, bt bit(5), vb varbit,
           ai int[], at text[], a2 int[][], r int4range, tr tstzrange, e {qs}.mood, ea {qs}.mood[], dm {qs}.positive,
           big text);"
    );
    (schema, t, ddl)
}

/// Two rows of awkward values (ids `first` and `first + 1`), one with a 1 MB TOASTed text.
fn awkward_rows(t: &str, first: i32) -> String {
    let second = first + 1;
    format!(
            "INSERT INTO {t} VALUES
             ({first}, -32768, 9223372036854775807, 'NaN', 12345678.1234, 'Infinity', '-Infinity', '$1,234.56',
              E'quote '' \" \\\\ tab\\t nl\\n ✓', 'ünïcødé', 'ab', '\\x00ff10', true,
              '4713-01-01 BC', '24:00:00', '23:59:59.999999+14', 'infinity', '-infinity', '-1 year 2 mons -3 days 04:05:06.789',
              'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{\"a\": [1, 2.50, null], \"b\": \"\\u00e9\"}}', '{{\"z\": 1, \"a\": {{\"n\": null}}}}',
              '<r a=\"1\">x &amp; y</r>', '2001:db8::1/64', '10.1.0.0/16', '08:00:2b:01:02:03', B'10101', B'1',
              '{{1,NULL,3}}', '{{\"a,b\",\"\",NULL,\"NULL\",\"q\\\"uote\"}}', '{{{{1,2}},{{3,4}}}}', '[1,10)', '[2026-01-01 00:00+00,infinity)',
              'happy ☺', '{{sad,\"happy ☺\"}}', 3.5, repeat('x', 1000000)),
             ({second}, NULL, NULL, '-Infinity', NULL, 'NaN', '-0', NULL, '', NULL, NULL, '\\x', false,
              '294276-12-31', '00:00', NULL, '1999-12-31 23:59:59.999999', '2000-01-01 00:00:00+00', '0',
              NULL, 'null', '[]', NULL, '0.0.0.0', '::/0', NULL, B'00000', B'', '{{}}', '{{}}', NULL, 'empty', NULL,
              NULL, '{{}}', NULL, NULL);"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_many_types_round_trip_exactly_through_cdc() {
    let task = unique("types");
    let (schema, t, ddl) = typed_table(&task);
    create_table_both(&ddl).await;
    let source = source().await;
    create_task(&source, &task, &[(&schema, "Värden")]).await;
    let _applier = Applier::start(&task);
    source.batch_execute(&awkward_rows(&t, 1)).await.unwrap();
    // an update that leaves the 1 MB TOASTed column unchanged, and one that changes it
    source
        .batch_execute(&format!(
            "UPDATE {t} SET i2 = 7 WHERE id = 1; UPDATE {t} SET big = repeat('y', 1000) WHERE id = 2"
        ))
        .await
        .unwrap();
    let fp = wait_converged(&[(&t, "id")], Duration::from_secs(120)).await;
    assert_eq!(fp[0].0, 2);
    let target = target().await;
    let big: i32 = target.query_one(&format!("SELECT length(big) FROM {t} WHERE id = 1"), &[]).await.unwrap().get(0);
    assert_eq!(big, 1_000_000, "an unchanged TOASTed value was overwritten");
    drop_task(&source, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_many_types_round_trip_exactly_through_full_load_into_created_tables() {
    let task = unique("typesload");
    let (schema, t, ddl) = typed_table(&task);
    // source only: the task creates the target table (domain as its base type, enum as text)
    let source = source().await;
    source.batch_execute(&ddl).await.unwrap();
    source.batch_execute(&awkward_rows(&t, 1)).await.unwrap();
    source.batch_execute(&awkward_rows(&t, 3)).await.unwrap();
    create_task_with(&source, &task, &load_settings(&task, "full_load_and_cdc", &[(&schema, "Värden")])).await;
    let _applier = Applier::start(&task);
    wait_for_phase(&source, &task, "cdc", Duration::from_secs(120)).await;
    let fp = wait_converged(&[(&t, "id")], Duration::from_secs(120)).await;
    assert_eq!(fp[0].0, 4);
    // then through CDC into the created table
    source.batch_execute(&awkward_rows(&t, 5)).await.unwrap();
    source.batch_execute(&format!("UPDATE {t} SET i2 = 7 WHERE id = 1; UPDATE {t} SET big = repeat('y', 1000) WHERE id = 2; DELETE FROM {t} WHERE id = 3")).await.unwrap();
    let fp = wait_converged(&[(&t, "id")], Duration::from_secs(120)).await;
    assert_eq!(fp[0].0, 5);
    let target = target().await;
    let types: Vec<(String, String)> = target
        .query(
            &format!("SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '{}'::regclass AND attname IN ('e', 'ea', 'dm', 'num_s', 'vc') ORDER BY attname", t.replace('\'', "''")),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected = [
        ("dm", "numeric(10,2)"),
        ("e", "text"),
        ("ea", "text[]"),
        ("num_s", "numeric(12,4)"),
        ("vc", "character varying(20)"),
    ];
    assert_eq!(types, expected.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect::<Vec<_>>());
    let big: i32 = target.query_one(&format!("SELECT length(big) FROM {t} WHERE id = 1"), &[]).await.unwrap().get(0);
    assert_eq!(big, 1_000_000, "an unchanged TOASTed value was overwritten");
    drop_task(&source, &task).await;
}

/// The settings that change a value's text form, at values native replication would refuse to
/// run with, set on both databases (so every new session there starts with them).
const HOSTILE: &str = "SET datestyle = 'SQL, DMY'; SET intervalstyle = 'sql_standard'; SET extra_float_digits = 0; SET bytea_output = 'escape'; SET timezone = 'Asia/Kolkata'";

async fn set_database_defaults(database: &str, settings: &str) {
    for client in [source().await, target().await] {
        let statements: Vec<String> = settings
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| format!("ALTER DATABASE {database} {s}"))
            .collect();
        for statement in statements {
            // each database is only altered on its own cluster
            let _ = client.batch_execute(&statement).await;
        }
    }
}

/// A session that prints every value in its exact, canonical form (whatever the database says).
async fn exact(dsn: &str) -> tokio_postgres::Client {
    let client = connect(dsn).await;
    client
        .batch_execute("SET datestyle = 'ISO, MDY'; SET intervalstyle = postgres; SET extra_float_digits = 3; SET bytea_output = hex; SET timezone = 'UTC'")
        .await
        .unwrap();
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_round_trip_exactly_whatever_the_databases_session_defaults_say() {
    let task = unique("hostile");
    let (schema, t, ddl) = typed_table(&task);
    let writer = exact(&env("TREMPY_SOURCE_DSN")).await;
    writer.batch_execute(&ddl).await.unwrap();
    writer.batch_execute(&awkward_rows(&t, 1)).await.unwrap();
    set_database_defaults("source", HOSTILE).await;
    set_database_defaults("target", HOSTILE).await;
    // The task's worker, the applier's sessions and this test's own comparison sessions all start
    // under the hostile defaults; only the comparison sessions are told otherwise, explicitly.
    let source = source().await;
    let datestyle: String = source.query_one("SHOW datestyle", &[]).await.unwrap().get(0);
    assert_eq!(datestyle, "SQL, DMY", "the test needs the hostile defaults in new sessions");
    create_task_with(&source, &task, &load_settings(&task, "full_load_and_cdc", &[(&schema, "Värden")])).await;
    let _applier = Applier::start(&task);
    wait_for_phase(&source, &task, "cdc", Duration::from_secs(120)).await;
    writer.batch_execute(&awkward_rows(&t, 3)).await.unwrap();
    writer
        .batch_execute(&format!(
            "UPDATE {t} SET d = '2024-02-13', iv = '-1 day -02:00:00', f8 = 0.1 + 0.2 WHERE id = 1"
        ))
        .await
        .unwrap();
    let (exact_source, exact_target) = (exact(&env("TREMPY_SOURCE_DSN")).await, exact(&env("TREMPY_TARGET_DSN")).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let converged = loop {
        let (s, t2) = (fingerprint(&exact_source, &t, "id").await, fingerprint(&exact_target, &t, "id").await);
        if s == t2 || std::time::Instant::now() > deadline {
            break (s, t2);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    set_database_defaults("source", "RESET ALL").await;
    set_database_defaults("target", "RESET ALL").await;
    assert_eq!(converged.0, converged.1, "the target differs from the source under hostile session defaults");
    assert_eq!(converged.0.0, 4);
    drop_task(&source, &task).await;
}
