-- TREMpy 0.1.0 -> 0.2.0 (ALTER EXTENSION trempy UPDATE). What changed in the extension's SQL:
-- a table's key is its replica identity index before its primary key (tables without a primary
-- key and tables whose identity is another unique index), and the task's sequences are read for
-- the target. Nothing else: the catalog tables and the Rust functions are as in 0.1.0.
\echo Use "ALTER EXTENSION trempy UPDATE" to load this file. \quit

-- A table's shape: schema, name, and its replicated columns (not dropped, not generated) by
-- attnum, with type, key (the replica identity index, else the primary key: the key is what the
-- old rows of updates and deletes carry), NOT NULL and the
-- created column type. The one description of a table: the worker's relation descriptions and
-- full loads use it too (extension/src/table_shape.rs). NULL when the table does not exist.
CREATE OR REPLACE FUNCTION trempy.table_shape(rel oid)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH k AS (SELECT i.indkey FROM pg_index i WHERE i.indrelid = rel AND (i.indisprimary OR i.indisreplident)
                ORDER BY i.indisreplident DESC, i.indisprimary DESC LIMIT 1)
    SELECT jsonb_build_object(
               'schema', n.nspname::text,
               'table', c.relname::text,
               'columns', coalesce((
                   SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                              'attnum', a.attnum,
                              'name', a.attname::text,
                              'type', format_type(a.atttypid, a.atttypmod),
                              'type_oid', a.atttypid::int8,
                              'key', coalesce(a.attnum = ANY ((SELECT k.indkey FROM k)::int2[]), false),
                              'not_null', a.attnotnull,
                              'create_type', trempy.create_type(a.atttypid, a.atttypmod))) ORDER BY a.attnum)
                     FROM pg_attribute a
                    WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '[]'::jsonb))
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = rel
$$;

-- The task's sequences as the source has them (protocol/src/sequence.rs): those its settings list
-- and those owned by its tables' identity and serial columns, each once it has handed out a
-- value. Read by the task worker at a bounded interval (trempy.sequence_interval) and at the end
-- of a full load; it publishes them when they changed.
CREATE FUNCTION trempy.task_sequences(task text)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH listed AS (
        SELECT c.oid AS seq
          FROM trempy.tasks t, jsonb_array_elements(coalesce(t.settings -> 'sequences', '[]')) e
          JOIN pg_namespace n ON n.nspname = e ->> 'schema_name'
          JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = e ->> 'sequence_name' AND c.relkind = 'S'
         WHERE t.task_name = task
        UNION
        SELECT d.objid
          FROM pg_depend d JOIN pg_class c ON c.oid = d.objid AND c.relkind = 'S'
         WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
           AND d.refobjid IN (SELECT trempy.task_relids(task))
    ), valued AS (
        SELECT l.seq, pg_sequence_last_value(l.seq) AS last_value FROM listed l
    )
    SELECT coalesce(jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
               'schema', n.nspname::text,
               'name', c.relname::text,
               'type', format_type(s.seqtypid, NULL),
               'increment', s.seqincrement,
               'last_value', v.last_value,
               'owner', (SELECT jsonb_build_object('relid', tc.oid::int8, 'schema', tn.nspname::text, 'table', tc.relname::text, 'column', a.attname::text)
                           FROM pg_depend d
                           JOIN pg_class tc ON tc.oid = d.refobjid
                           JOIN pg_namespace tn ON tn.oid = tc.relnamespace
                           JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.refclassid = 'pg_class'::regclass
                            AND d.deptype IN ('a', 'i')
                          LIMIT 1)))
               ORDER BY n.nspname, c.relname), '[]'::jsonb)
      FROM valued v
      JOIN pg_class c ON c.oid = v.seq
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_sequence s ON s.seqrelid = c.oid
     WHERE v.last_value IS NOT NULL
$$;
