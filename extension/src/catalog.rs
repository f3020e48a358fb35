//! Reads the source catalog: what a table looks like, for the full load and for the extras
//! (NOT NULL, the type a created target table gets) that pgoutput's Relation message lacks.

use pgrx::spi::SpiClient;
use trempy_protocol::envelope::{Column, Relation};

use crate::error::{Error, ErrorKind};

/// Describes a table from the catalog: its replicated columns (not dropped, not generated, in
/// order), their types, NOT NULL, and the key (the primary key, else the replica identity index).
pub(crate) fn describe_table(client: &SpiClient<'_>, relid: u32) -> Result<Relation, Error> {
    let head = client.select(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::oid",
        Some(1),
        &[i64::from(relid).into()],
    )?;
    if head.is_empty() {
        return Err(Error::new(ErrorKind::Catalog, format!("table with OID {relid} no longer exists")));
    }
    let row = head.first();
    let schema = row.get::<String>(1)?.unwrap_or_default();
    let table = row.get::<String>(2)?.unwrap_or_default();
    let rows = client.select(
        "WITH k AS (SELECT i.indkey FROM pg_index i WHERE i.indrelid = $1::oid AND (i.indisprimary OR i.indisreplident)
                     ORDER BY i.indisprimary DESC LIMIT 1)
         SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), a.atttypid::int8, a.atttypmod, a.attnotnull,
                coalesce(a.attnum = ANY ((SELECT k.indkey FROM k)::int2[]), false)
           FROM pg_attribute a
          WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
          ORDER BY a.attnum",
        None,
        &[i64::from(relid).into()],
    )?;
    let mut columns = Vec::new();
    for row in rows {
        let type_oid = u32::try_from(row.get::<i64>(3)?.unwrap_or_default()).unwrap_or_default();
        let typmod = row.get::<i32>(4)?.unwrap_or(-1);
        columns.push(Column {
            name: row.get::<String>(1)?.unwrap_or_default(),
            type_name: row.get::<String>(2)?.unwrap_or_default(),
            type_oid,
            key: row.get::<bool>(6)?.unwrap_or(false),
            not_null: row.get::<bool>(5)?.unwrap_or(false),
            create_type: None,
        });
        let last = columns.len() - 1;
        columns[last].create_type = create_type(client, type_oid, typmod)?;
    }
    Ok(Relation { id: relid, schema, table, columns })
}

/// The type a target table created by TREMpy gets for a column of this type, when it is not the
/// type itself: a domain becomes its base type (through nested domains, with the domain's
/// typmod), an enum becomes `text`, and arrays of either follow their element.
fn create_type(client: &SpiClient<'_>, type_oid: u32, typmod: i32) -> Result<Option<String>, Error> {
    let lookup = |oid: u32| -> Result<Option<(String, u32, i32, u32)>, Error> {
        let t = client.select(
            "SELECT typtype::text, typbasetype::int8, typtypmod, CASE WHEN typcategory = 'A' THEN typelem ELSE 0 END::int8 FROM pg_type WHERE oid = $1::oid",
            Some(1),
            &[i64::from(oid).into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        Ok(Some((
            r.get::<String>(1)?.unwrap_or_default(),
            u32::try_from(r.get::<i64>(2)?.unwrap_or_default()).unwrap_or_default(),
            r.get::<i32>(3)?.unwrap_or(-1),
            u32::try_from(r.get::<i64>(4)?.unwrap_or_default()).unwrap_or_default(),
        )))
    };
    let (mut oid, mut modifier, mut array) = (type_oid, typmod, false);
    let mut changed = false;
    for _ in 0..32 {
        let Some((kind, base, domain_typmod, elem)) = lookup(oid)? else { return Ok(None) };
        match kind.as_str() {
            "e" => return Ok(Some(if array { "text[]".to_owned() } else { "text".to_owned() })),
            "d" => {
                oid = base;
                modifier = domain_typmod;
                changed = true;
            }
            _ if elem != 0 && !array => {
                array = true;
                oid = elem;
            }
            _ => break,
        }
    }
    if !changed {
        return Ok(None);
    }
    let name = client
        .select("SELECT pg_catalog.format_type($1::oid, $2)", Some(1), &[i64::from(oid).into(), modifier.into()])?
        .first()
        .get::<String>(1)?
        .unwrap_or_default();
    Ok(Some(if array { format!("{name}[]") } else { name }))
}
