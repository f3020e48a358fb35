-- Schema changes on the source (docs/architecture.md, "Schema changes"). An event trigger
-- describes every DDL statement that changes a table some task replicates: the table's shape
-- before (as recorded here) and after (read from the catalog in the DDL's own transaction), as a
-- transactional logical message with prefix 'trempy.ddl'. The task workers decode it with the
-- rest of the transaction, so the target sees it exactly where it happened.

-- The type a target column created by TREMpy gets, when it is not the column's own type: a
-- domain becomes its base type (through nested domains, with the domain's typmod), an enum
-- becomes text, and arrays of either follow their element. NULL when the type itself is used.
CREATE FUNCTION trempy.create_type(type_oid oid, type_modifier integer)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t record;
    current_oid oid := type_oid;
    modifier integer := type_modifier;
    is_array boolean := false;
    changed boolean := false;
BEGIN
    FOR i IN 1..32 LOOP
        SELECT typtype, typbasetype, typtypmod, CASE WHEN typcategory = 'A' THEN typelem ELSE 0 END AS elem
          INTO t FROM pg_type WHERE oid = current_oid;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        IF t.typtype = 'e' THEN
            RETURN CASE WHEN is_array THEN 'text[]' ELSE 'text' END;
        ELSIF t.typtype = 'd' THEN
            current_oid := t.typbasetype;
            modifier := t.typtypmod;
            changed := true;
        ELSIF t.elem <> 0 AND NOT is_array THEN
            is_array := true;
            current_oid := t.elem;
        ELSE
            EXIT;
        END IF;
    END LOOP;
    IF NOT changed THEN
        RETURN NULL;
    END IF;
    RETURN format_type(current_oid, modifier) || CASE WHEN is_array THEN '[]' ELSE '' END;
END
$$;

-- A table's shape: schema, name, and its replicated columns (not dropped, not generated) by
-- attnum, with type, key (the replica identity index, else the primary key: the key is what the
-- old rows of updates and deletes carry), NOT NULL and the
-- created column type. The one description of a table: the worker's relation descriptions and
-- full loads use it too (extension/src/table_shape.rs). NULL when the table does not exist.
CREATE FUNCTION trempy.table_shape(rel oid)
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

-- The last shape described of every table a task replicates (recorded by create_task and
-- update_task, kept current by the event trigger). Tables not listed here are not watched.
CREATE TABLE trempy.table_shapes (
    relid       oid PRIMARY KEY,
    shape       jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- Every schema change seen on a replicated table, in the DDL's transaction (so a rolled-back
-- statement leaves nothing). trempy.status() counts them per task.
CREATE TABLE trempy.schema_changes (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relid     oid NOT NULL,
    tag       text NOT NULL,
    old_shape jsonb,
    new_shape jsonb,
    seen_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schema_changes_relid ON trempy.schema_changes (relid);

-- The OIDs of a task's tables, resolved from its settings' names (kept current on renames),
-- and of those dropped since (their last changes and their DROP may still be ahead in the
-- stream).
CREATE FUNCTION trempy.task_relids(task text)
RETURNS SETOF oid
LANGUAGE sql STABLE
ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.oid
      FROM trempy.tasks t, jsonb_array_elements(t.settings -> 'tables') e
      JOIN pg_namespace n ON n.nspname = e ->> 'schema_name'
      JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = e ->> 'table_name'
     WHERE t.task_name = task
    UNION
    SELECT sc.relid
      FROM trempy.tasks t, jsonb_array_elements(t.settings -> 'tables') e, trempy.schema_changes sc
     WHERE t.task_name = task AND sc.new_shape IS NULL
       AND sc.old_shape ->> 'schema' = e ->> 'schema_name' AND sc.old_shape ->> 'table' = e ->> 'table_name'
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

-- Records the current shape of each table of the task (create_task, update_task), and forgets
-- the shapes of tables no task replicates any more.
CREATE FUNCTION trempy.record_shapes(task text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO trempy.table_shapes (relid, shape)
    SELECT r, trempy.table_shape(r) FROM trempy.task_relids(task) r
    ON CONFLICT (relid) DO UPDATE SET shape = EXCLUDED.shape, recorded_at = now();
    SELECT trempy.forget_shapes();
$$;

CREATE FUNCTION trempy.forget_shapes()
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM trempy.table_shapes s
     WHERE NOT EXISTS (SELECT 1 FROM trempy.tasks t WHERE s.relid IN (SELECT trempy.task_relids(t.task_name)));
$$;

-- Renames follow into the tasks' settings, in the DDL's transaction: the table's entry in
-- `tables` and the `table_info` of its filters and transformations get the new schema and name,
-- and a filter's `column_name` follows a renamed column. So a worker started later finds the
-- table under its new name, and the settings it publishes name what the stream names.
CREATE FUNCTION trempy.follow_renames(old_shape jsonb, new_shape jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    old_info jsonb := jsonb_build_object('schema_name', old_shape ->> 'schema', 'table_name', old_shape ->> 'table');
    new_info jsonb := jsonb_build_object('schema_name', new_shape ->> 'schema', 'table_name', new_shape ->> 'table');
    renamed jsonb;
BEGIN
    -- old column name -> new column name, for columns that kept their attnum
    SELECT coalesce(jsonb_object_agg(o ->> 'name', n ->> 'name'), '{}'::jsonb) INTO renamed
      FROM jsonb_array_elements(old_shape -> 'columns') o
      JOIN jsonb_array_elements(new_shape -> 'columns') n ON (o -> 'attnum') = (n -> 'attnum')
     WHERE o ->> 'name' <> n ->> 'name';
    IF old_info = new_info AND renamed = '{}'::jsonb THEN
        RETURN;
    END IF;
    UPDATE trempy.tasks t
       SET settings = jsonb_set(jsonb_set(jsonb_set(t.settings,
               '{tables}', (SELECT coalesce(jsonb_agg(CASE WHEN jsonb_build_object('schema_name', e -> 'schema_name', 'table_name', e -> 'table_name') = old_info
                                                         THEN e || new_info ELSE e END ORDER BY i), '[]'::jsonb)
                              FROM jsonb_array_elements(t.settings -> 'tables') WITH ORDINALITY AS x(e, i))),
               '{filters}', (SELECT coalesce(jsonb_agg(CASE WHEN (e -> 'table_info') = old_info
                                                          THEN jsonb_set(e, '{table_info}', new_info)
                                                               || CASE WHEN renamed ? (e #>> '{settings,column_name}')
                                                                       THEN jsonb_build_object('settings', (e -> 'settings') || jsonb_build_object('column_name', renamed -> (e #>> '{settings,column_name}')))
                                                                       ELSE '{}'::jsonb END
                                                          ELSE e END ORDER BY i), '[]'::jsonb)
                               FROM jsonb_array_elements(coalesce(t.settings -> 'filters', '[]'::jsonb)) WITH ORDINALITY AS x(e, i))),
               '{transformations}', (SELECT coalesce(jsonb_agg(CASE WHEN (e -> 'table_info') = old_info
                                                                 THEN jsonb_set(e, '{table_info}', new_info) ELSE e END ORDER BY i), '[]'::jsonb)
                                       FROM jsonb_array_elements(coalesce(t.settings -> 'transformations', '[]'::jsonb)) WITH ORDINALITY AS x(e, i))),
           updated_at = now()
     WHERE EXISTS (SELECT 1 FROM jsonb_array_elements(t.settings -> 'tables') e
                    WHERE jsonb_build_object('schema_name', e -> 'schema_name', 'table_name', e -> 'table_name') = old_info);
    UPDATE trempy.task_tables
       SET schema_name = new_shape ->> 'schema', table_name = new_shape ->> 'table'
     WHERE schema_name = old_shape ->> 'schema' AND table_name = old_shape ->> 'table'
       AND (schema_name, table_name) IS DISTINCT FROM (new_shape ->> 'schema', new_shape ->> 'table');
END
$$;

-- The values a DDL statement gave existing rows in columns the target cannot derive (a volatile
-- DEFAULT, an identity column, ALTER COLUMN ... TYPE ... USING): read in the statement's own
-- transaction, where they are final, and emitted as transactional logical messages with prefix
-- 'trempy.backfill' (protocol/src/schema.rs, Backfill) right after the statement's 'trempy.ddl'
-- message: each row's key and its values, in the types' text forms under pinned output settings,
-- in batches of `batch` rows; the last batch (maybe empty) says so. Names are quoted with %I and
-- the relation by its regclass: nothing of them is executed.
--
-- A partition attached holding rows sends its rows the same way: `source` is the partition read
-- (`rel` stays the replicated root), `columns` every other column, and `inserts` marks them new.
CREATE FUNCTION trempy.emit_backfill(rel oid, key text[], columns text[], batch integer, source oid DEFAULT NULL, inserts boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET DateStyle = 'ISO, MDY'
SET IntervalStyle = 'postgres'
SET extra_float_digits = 3
SET bytea_output = 'hex'
SET TimeZone = 'UTC'
SET xmloption = 'content'
AS $$
DECLARE
    read_from text := CASE WHEN (SELECT c.relkind FROM pg_class c WHERE c.oid = coalesce(source, rel)) = 'p' THEN '' ELSE 'ONLY ' END
                      || coalesce(source, rel)::regclass::text;
    exprs text := (SELECT string_agg(format('%I::text', name), ', ' ORDER BY o) FROM unnest(key || columns) WITH ORDINALITY AS u(name, o));
    r record;
    buffer jsonb[] := '{}';
    total bigint := 0;
BEGIN
    FOR r IN EXECUTE format('SELECT jsonb_build_array(%s) AS v FROM %s', exprs, read_from) LOOP
        buffer := array_append(buffer, r.v);
        total := total + 1;
        IF cardinality(buffer) >= batch THEN
            PERFORM pg_logical_emit_message(true, 'trempy.backfill',
                jsonb_build_object('rel', rel::int8, 'key', to_jsonb(key), 'columns', to_jsonb(columns), 'rows', to_jsonb(buffer), 'last', false, 'insert', inserts)::text);
            buffer := '{}';
        END IF;
    END LOOP;
    PERFORM pg_logical_emit_message(true, 'trempy.backfill',
        jsonb_build_object('rel', rel::int8, 'key', to_jsonb(key), 'columns', to_jsonb(columns), 'rows', to_jsonb(buffer), 'last', true, 'insert', inserts)::text);
    RETURN total;
END
$$;

-- Whether a table (a partition) holds any row. Its name is quoted by its regclass.
CREATE FUNCTION trempy.holds_rows(rel oid)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found boolean;
BEGIN
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM ONLY %s)', rel::regclass) INTO found;
    RETURN found;
END
$$;

-- ddl_command_end: describes each changed replicated table. Runs as the extension's owner (it
-- writes TREMpy's tables whoever runs the DDL), with a pinned search_path and no dynamic SQL (trempy.emit_backfill reads the table).
CREATE FUNCTION trempy.capture_ddl()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cmd record;
    seen oid[] := '{}';
    old_shape jsonb;
    new_shape jsonb;
    fills jsonb;
    rewritten jsonb;
    backfilled jsonb;
    key_names text[];
    unreplicated jsonb;
    attached jsonb;
    attached_leaf jsonb;
    using_clause boolean := current_query() ~* '\mUSING\M';
BEGIN
    FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE classid = 'pg_catalog.pg_class'::regclass LOOP
        CONTINUE WHEN cmd.objid = ANY (seen);
        seen := seen || cmd.objid;
        SELECT s.shape INTO old_shape FROM trempy.table_shapes s WHERE s.relid = cmd.objid FOR UPDATE;
        CONTINUE WHEN NOT FOUND;
        new_shape := trempy.table_shape(cmd.objid);
        -- Rows of a table attached as a partition were never inserted into the replicated root:
        -- no change carries them. The partitions this transaction attached (their pg_inherits
        -- rows are its own) that hold rows send them, when the table has a key, as inserting
        -- backfills; without a key they travel by name only (`unreplicated`) and the applier
        -- halts, naming them and the remedy, instead of going on without their rows.
        SELECT array_agg(n ->> 'name' ORDER BY (n ->> 'attnum')::int2) INTO key_names
          FROM jsonb_array_elements(new_shape -> 'columns') n WHERE (n ->> 'key')::boolean;
        SELECT coalesce(jsonb_agg(jsonb_build_object('oid', pc.oid::int8, 'name', format('%I.%I', pn.nspname, pc.relname)) ORDER BY pc.oid), '[]'::jsonb) INTO attached
          FROM pg_inherits i
          CROSS JOIN LATERAL pg_partition_tree(i.inhrelid) leaf
          JOIN pg_class pc ON pc.oid = leaf.relid
          JOIN pg_namespace pn ON pn.oid = pc.relnamespace
         WHERE i.inhparent = cmd.objid AND i.xmin::text = pg_current_xact_id()::xid::text AND leaf.isleaf
           AND trempy.holds_rows(leaf.relid);
        unreplicated := '[]'::jsonb;
        IF attached <> '[]'::jsonb AND key_names IS NULL THEN
            SELECT jsonb_agg(a -> 'name') INTO unreplicated FROM jsonb_array_elements(attached) a;
            attached := '[]'::jsonb;
            RAISE WARNING 'TREMpy: the rows that % already held are not replicated to the target of %.%, which has no key: the tasks that replicate it halt here until they are reloaded (trempy.update_task with "start_mode": "reload")',
                unreplicated, new_shape ->> 'schema', new_shape ->> 'table';
        END IF;
        CONTINUE WHEN new_shape IS NULL OR (new_shape = old_shape AND unreplicated = '[]'::jsonb AND attached = '[]'::jsonb);
        -- Added columns: the one value every existing row got (a non-volatile DEFAULT is kept as
        -- the "missing value"), or values the target cannot derive (a volatile DEFAULT or an
        -- identity column made the source rewrite the table, writing no row change).
        SELECT coalesce(jsonb_agg(jsonb_build_object('attnum', a.attnum, 'value', (a.attmissingval::text::text[])[1]) ORDER BY a.attnum)
                          FILTER (WHERE a.atthasmissing), '[]'::jsonb),
               coalesce(jsonb_agg(a.attnum ORDER BY a.attnum)
                          FILTER (WHERE NOT a.atthasmissing
                                    AND (a.attidentity <> '' OR EXISTS (SELECT 1 FROM pg_attrdef d WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum))), '[]'::jsonb)
          INTO fills, rewritten
          FROM pg_attribute a
         WHERE a.attrelid = cmd.objid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
           AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(old_shape -> 'columns') o WHERE (o ->> 'attnum')::int2 = a.attnum);
        -- A type change with USING: the source computed the new values with an expression the
        -- target cannot repeat. (The statement's text is checked: conservative, never lax.)
        IF using_clause THEN
            rewritten := rewritten || coalesce((
                SELECT jsonb_agg(n -> 'attnum')
                  FROM jsonb_array_elements(new_shape -> 'columns') n
                  JOIN jsonb_array_elements(old_shape -> 'columns') o ON (o -> 'attnum') = (n -> 'attnum')
                 WHERE (o ->> 'type') <> (n ->> 'type')), '[]'::jsonb);
        END IF;
        -- Rewritten values are sent row by row when the rows can be found on the target by a
        -- key the statement did not rewrite.
        backfilled := '[]'::jsonb;
        IF rewritten <> '[]'::jsonb AND key_names IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(new_shape -> 'columns') n
                            WHERE (n ->> 'key')::boolean AND rewritten @> jsonb_build_array(n -> 'attnum')) THEN
            backfilled := rewritten;
            rewritten := '[]'::jsonb;
        END IF;
        PERFORM pg_logical_emit_message(true, 'trempy.ddl',
            jsonb_build_object('rel', cmd.objid::int8, 'tag', cmd.command_tag, 'old', old_shape, 'new', new_shape,
                               'fills', fills, 'rewritten', rewritten, 'backfilled', backfilled, 'unreplicated', unreplicated,
                               'attached', (SELECT coalesce(jsonb_agg(a -> 'name'), '[]'::jsonb) FROM jsonb_array_elements(attached) a))::text);
        IF backfilled <> '[]'::jsonb THEN
            PERFORM trempy.emit_backfill(cmd.objid, key_names,
                (SELECT array_agg(n ->> 'name' ORDER BY (n ->> 'attnum')::int2) FROM jsonb_array_elements(new_shape -> 'columns') n
                  WHERE backfilled @> jsonb_build_array(n -> 'attnum')),
                5000);
        END IF;
        FOR attached_leaf IN SELECT a FROM jsonb_array_elements(attached) a LOOP
            PERFORM trempy.emit_backfill(cmd.objid, key_names,
                (SELECT coalesce(array_agg(n ->> 'name' ORDER BY (n ->> 'attnum')::int2), '{}') FROM jsonb_array_elements(new_shape -> 'columns') n
                  WHERE NOT (n ->> 'key')::boolean),
                5000, (attached_leaf ->> 'oid')::oid, true);
        END LOOP;
        UPDATE trempy.table_shapes SET shape = new_shape, recorded_at = now() WHERE relid = cmd.objid;
        INSERT INTO trempy.schema_changes (relid, tag, old_shape, new_shape) VALUES (cmd.objid, cmd.command_tag, old_shape, new_shape);
        PERFORM trempy.follow_renames(old_shape, new_shape);
    END LOOP;
END
$$;

-- sql_drop: a dropped replicated table ends its stream (the applier stops applying it and
-- keeps the target's rows).
CREATE FUNCTION trempy.capture_drop()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    obj record;
    old_shape jsonb;
BEGIN
    FOR obj IN SELECT * FROM pg_event_trigger_dropped_objects()
                WHERE classid = 'pg_catalog.pg_class'::regclass AND objsubid = 0 AND object_type = 'table' LOOP
        DELETE FROM trempy.table_shapes WHERE relid = obj.objid RETURNING shape INTO old_shape;
        CONTINUE WHEN old_shape IS NULL;
        PERFORM pg_logical_emit_message(true, 'trempy.ddl',
            jsonb_build_object('rel', obj.objid::int8, 'tag', tg_tag, 'old', old_shape)::text);
        INSERT INTO trempy.schema_changes (relid, tag, old_shape) VALUES (obj.objid, tg_tag, old_shape);
    END LOOP;
END
$$;

CREATE EVENT TRIGGER trempy_capture_ddl ON ddl_command_end EXECUTE FUNCTION trempy.capture_ddl();
CREATE EVENT TRIGGER trempy_capture_drop ON sql_drop EXECUTE FUNCTION trempy.capture_drop();

REVOKE ALL ON FUNCTION trempy.capture_ddl(), trempy.capture_drop(), trempy.follow_renames(jsonb, jsonb), trempy.emit_backfill(oid, text[], text[], integer, oid, boolean), trempy.holds_rows(oid),
    trempy.record_shapes(text), trempy.forget_shapes() FROM PUBLIC;

-- The schema changes seen per task (the applier reports those it applied: trempy.status()).
-- (The task's tables are resolved once per task: status() and this view stay fast with many
-- tasks and schema changes.)
CREATE VIEW trempy.task_schema_changes AS
SELECT t.task_name, sc.id, sc.relid,
       coalesce(sc.new_shape ->> 'schema', sc.old_shape ->> 'schema') AS schema_name,
       coalesce(sc.new_shape ->> 'table', sc.old_shape ->> 'table') AS table_name,
       sc.tag, sc.old_shape, sc.new_shape, sc.seen_at
  FROM trempy.tasks t
  CROSS JOIN LATERAL (SELECT ARRAY(SELECT trempy.task_relids(t.task_name)) AS relids) r
  JOIN trempy.schema_changes sc ON sc.relid = ANY (r.relids);

COMMENT ON VIEW trempy.task_schema_changes IS 'Schema changes seen on each task''s tables, oldest first by id.';
