//! Extension upgrades: every earlier release (its SQL frozen in `extension/versions/`), installed
//! and then brought to the current version with `ALTER EXTENSION trempy UPDATE` through the
//! upgrade scripts (`extension/upgrades/trempy--A--B.sql`), must equal a fresh install of the
//! current version object for object: functions with their whole definitions, tables with their
//! columns, defaults, constraints and indexes, views, triggers and event triggers, types, and the
//! tables whose rows `pg_dump` keeps. Each release runs in scratch databases of the source
//! cluster that no launcher serves.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use trempy_e2e::*;

/// Every object of the extension, one line each, in a stable order.
const DESCRIBE: &str = r"
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'trempy'),
members AS (SELECT d.classid, d.objid FROM pg_depend d, ext WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e')
SELECT line FROM (
    SELECT 'function ' || pg_get_functiondef(p.oid) AS line
      FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid WHERE p.prokind IN ('f', 'p', 'w')
    UNION ALL
    SELECT 'aggregate ' || p.oid::regprocedure::text
      FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid WHERE p.prokind = 'a'
    UNION ALL
    SELECT 'relation ' || c.oid::regclass::text || ' kind ' || c.relkind::text || ' persistence ' || c.relpersistence::text
           || coalesce(' acl ' || c.relacl::text, '')
      FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
    UNION ALL
    SELECT 'column ' || c.oid::regclass::text || '.' || quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod)
           || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
           || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')
           || CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END
           || CASE WHEN a.attgenerated <> '' THEN ' generated' ELSE '' END
      FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
    UNION ALL
    SELECT 'constraint ' || c.oid::regclass::text || ' ' || pg_get_constraintdef(k.oid)
      FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
      JOIN pg_constraint k ON k.conrelid = c.oid
    UNION ALL
    SELECT 'index ' || regexp_replace(pg_get_indexdef(i.indexrelid), 'INDEX \S+ ON', 'INDEX ON')
      FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
      JOIN pg_index i ON i.indrelid = c.oid
    UNION ALL
    SELECT 'view ' || c.oid::regclass::text || ' ' || pg_get_viewdef(c.oid)
      FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid WHERE c.relkind IN ('v', 'm')
    UNION ALL
    SELECT 'trigger ' || pg_get_triggerdef(t.oid)
      FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
      JOIN pg_trigger t ON t.tgrelid = c.oid AND NOT t.tgisinternal
    UNION ALL
    SELECT 'event trigger ' || e.evtname || ' on ' || e.evtevent || ' executes ' || e.evtfoid::regproc::text
           || ' enabled ' || e.evtenabled::text || coalesce(' tags ' || e.evttags::text, '')
      FROM pg_event_trigger e JOIN members m ON m.classid = 'pg_event_trigger'::regclass AND m.objid = e.oid
    UNION ALL
    SELECT 'type ' || t.oid::regtype::text || ' kind ' || t.typtype::text
           || coalesce(' labels ' || (SELECT string_agg(l.enumlabel, ',' ORDER BY l.enumsortorder) FROM pg_enum l WHERE l.enumtypid = t.oid), '')
      FROM pg_type t JOIN members m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid
    UNION ALL
    SELECT 'dumped rows of ' || c.oid::regclass::text
      FROM pg_extension x, unnest(x.extconfig) AS cfg(relid) JOIN pg_class c ON c.oid = cfg.relid
     WHERE x.extname = 'trempy'
) described
ORDER BY line";

async fn describe(client: &tokio_postgres::Client) -> Vec<String> {
    client.query(DESCRIBE, &[]).await.unwrap().iter().map(|row| row.get::<_, String>(0)).collect()
}

/// The releases frozen in `extension/versions/` (`trempy--X.sql`), oldest first.
fn earlier_releases() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../extension/versions");
    let mut versions: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.strip_prefix("trempy--")?.strip_suffix(".sql").map(str::to_owned)
        })
        .collect();
    versions.sort_by_key(|v| v.split('.').map(|n| n.parse::<u32>().unwrap()).collect::<Vec<_>>());
    versions
}

/// The first lines where two descriptions differ, for the failure message.
fn differences(upgraded: &[String], fresh: &[String]) -> String {
    let only_upgraded: Vec<&String> = upgraded.iter().filter(|l| !fresh.contains(l)).take(5).collect();
    let only_fresh: Vec<&String> = fresh.iter().filter(|l| !upgraded.contains(l)).take(5).collect();
    format!("only after the upgrade: {only_upgraded:#?}\nonly in a fresh install: {only_fresh:#?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_earlier_release_upgrades_to_exactly_a_fresh_install() {
    let source = source().await;
    let current: String = source
        .query_one("SELECT default_version FROM pg_available_extensions WHERE name = 'trempy'", &[])
        .await
        .unwrap()
        .get(0);
    let fresh_db = unique("ext_fresh");
    source.batch_execute(&format!("CREATE DATABASE {fresh_db}")).await.unwrap();
    let fresh = connect(&source_dsn_of(&fresh_db)).await;
    fresh.batch_execute("CREATE EXTENSION trempy").await.unwrap();
    let expected = describe(&fresh).await;
    assert!(expected.iter().any(|l| l.contains("trempy.create_task")), "the description lists the API");
    drop(fresh);

    let releases = earlier_releases();
    assert!(!releases.is_empty(), "extension/versions holds no earlier release");
    for release in &releases {
        assert_ne!(
            release, &current,
            "extension/versions/trempy--{current}.sql: the current version is generated, not frozen"
        );
        let db = unique("ext_upgrade");
        source.batch_execute(&format!("CREATE DATABASE {db}")).await.unwrap();
        let upgraded = connect(&source_dsn_of(&db)).await;
        upgraded.batch_execute(&format!("CREATE EXTENSION trempy VERSION '{release}'")).await.unwrap();
        upgraded.batch_execute("ALTER EXTENSION trempy UPDATE").await.unwrap();
        let version: String = upgraded
            .query_one("SELECT extversion FROM pg_extension WHERE extname = 'trempy'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(version, current, "from {release}");
        let got = describe(&upgraded).await;
        assert!(
            got == expected,
            "{release} upgraded to {current} differs from a fresh install:\n{}",
            differences(&got, &expected)
        );
        println!("{release} -> {current}: {} objects equal to a fresh install", got.len());
        drop(upgraded);
        source.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)")).await.unwrap();
    }
    source.batch_execute(&format!("DROP DATABASE {fresh_db} WITH (FORCE)")).await.unwrap();
}
