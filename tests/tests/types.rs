//! Values of many PostgreSQL types, including awkward ones, round-trip exactly through CDC:
//! compared by the md5 of each row's text form on both sides.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::Duration;

use trempy_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_many_types_round_trip_exactly_through_cdc() {
    let task = unique("types");
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
    create_table_both(&ddl).await;
    let source = source().await;
    create_task(&source, &task, &[(&schema, "Värden")]).await;
    let _applier = Applier::start(&task);
    source
        .batch_execute(&format!(
            "INSERT INTO {t} VALUES
             (1, -32768, 9223372036854775807, 'NaN', 12345678.1234, 'Infinity', '-Infinity', '$1,234.56',
              E'quote '' \" \\\\ tab\\t nl\\n ✓', 'ünïcødé', 'ab', '\\x00ff10', true,
              '4713-01-01 BC', '24:00:00', '23:59:59.999999+14', 'infinity', '-infinity', '-1 year 2 mons -3 days 04:05:06.789',
              'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{\"a\": [1, 2.50, null], \"b\": \"\\u00e9\"}}', '{{\"z\": 1, \"a\": {{\"n\": null}}}}',
              '<r a=\"1\">x &amp; y</r>', '2001:db8::1/64', '10.1.0.0/16', '08:00:2b:01:02:03', B'10101', B'1',
              '{{1,NULL,3}}', '{{\"a,b\",\"\",NULL,\"NULL\",\"q\\\"uote\"}}', '{{{{1,2}},{{3,4}}}}', '[1,10)', '[2026-01-01 00:00+00,infinity)',
              'happy ☺', '{{sad,\"happy ☺\"}}', 3.5, repeat('x', 1000000)),
             (2, NULL, NULL, '-Infinity', NULL, 'NaN', '-0', NULL, '', NULL, NULL, '\\x', false,
              '294276-12-31', '00:00', NULL, '1999-12-31 23:59:59.999999', '2000-01-01 00:00:00+00', '0',
              NULL, 'null', '[]', NULL, '0.0.0.0', '::/0', NULL, B'00000', B'', '{{}}', '{{}}', NULL, 'empty', NULL,
              NULL, '{{}}', NULL, NULL);"
        ))
        .await
        .unwrap();
    // an update that leaves the 1 MB TOASTed column unchanged, and one that changes it
    source.batch_execute(&format!("UPDATE {t} SET i2 = 7 WHERE id = 1; UPDATE {t} SET big = repeat('y', 1000) WHERE id = 2")).await.unwrap();
    let fp = wait_converged(&[(&t, "id")], Duration::from_secs(120)).await;
    assert_eq!(fp[0].0, 2);
    let target = target().await;
    let big: i32 = target.query_one(&format!("SELECT length(big) FROM {t} WHERE id = 1"), &[]).await.unwrap().get(0);
    assert_eq!(big, 1_000_000, "an unchanged TOASTed value was overwritten");
    drop_task(&source, &task).await;
}
