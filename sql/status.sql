-- The worker of task N holds the session advisory lock (1414680400, N) in this database while it
-- runs (LOCK_CLASS in extension/src/worker/mod.rs). The launcher, status() and drop_task find the
-- worker through this function only.
CREATE FUNCTION trempy.worker_pid(task_id integer)
RETURNS integer
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT l.pid
      FROM pg_locks l
     WHERE l.locktype = 'advisory' AND l.granted
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND l.classid = 1414680400::oid AND l.objid = task_id::oid AND l.objsubid = 2
     LIMIT 1
$$;

COMMENT ON FUNCTION trempy.worker_pid(integer) IS 'PID of the worker running the task with this task_id, or NULL.';

-- trempy.load_status(): one row per table of each task's full load. Rows of the table being
-- copied come live from pg_stat_progress_copy (the worker reports its copy there).
CREATE FUNCTION trempy.load_status()
RETURNS TABLE (
    task_name      text,
    "position"     integer,
    schema_name    text,
    table_name     text,
    state          text,
    attempt        integer,
    rows_copied    bigint,
    rows_estimated bigint,
    percent        numeric,
    started_at     timestamptz,
    finished_at    timestamptz,
    eta            timestamptz
)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
-- Monitoring reads a few rows: JIT compilation (the planner's estimates of set-returning
-- functions pass its thresholds) would cost far more than the query, worst on a busy server.
SET jit = off
AS $$
    SELECT tt.task_name, tt.position, tt.schema_name, tt.table_name, tt.state, tt.attempt, r.copied, tt.rows_estimated,
           CASE WHEN tt.state = 'copied' THEN 100
                WHEN tt.rows_estimated > 0 THEN least(99.9, round(100.0 * r.copied / tt.rows_estimated, 1))
           END,
           tt.started_at, tt.finished_at,
           CASE WHEN tt.state = 'copied' THEN tt.finished_at
                WHEN tt.state = 'copying' AND r.copied > 0 AND tt.rows_estimated > r.copied
                THEN now() + (now() - tt.started_at) * ((tt.rows_estimated - r.copied)::float8 / r.copied)
           END
      FROM trempy.task_tables tt
      JOIN trempy.tasks t ON t.task_name = tt.task_name
      LEFT JOIN pg_stat_progress_copy p ON tt.state = 'copying' AND p.relid = tt.relid AND p.pid = trempy.worker_pid(t.task_id)
      CROSS JOIN LATERAL (SELECT CASE WHEN tt.state = 'copying' THEN coalesce(p.tuples_processed, 0) ELSE tt.rows_copied END AS copied) r
     ORDER BY tt.task_name, tt.position
$$;

COMMENT ON FUNCTION trempy.load_status() IS 'Full load progress: one row per table of each task, with rows copied, estimate, percent and ETA.';

-- trempy.server_identity(): this cluster's system identifier and the timeline it writes WAL on
-- (NULL during recovery). A task's slot is recorded with both: a promoted standby or a restored
-- copy has another timeline or system. The worker and status() both ask here.
CREATE FUNCTION trempy.server_identity(OUT system_id text, OUT timeline integer)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.system_identifier::text,
           CASE WHEN NOT pg_is_in_recovery()
                THEN ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int4 END
      FROM pg_control_system() c
$$;

COMMENT ON FUNCTION trempy.server_identity() IS 'This cluster''s system identifier and current WAL timeline (NULL in recovery), as recorded with each task''s slot.';

-- trempy.status(): one row per task, from the catalog, the worker's advisory lock and the slot.
CREATE FUNCTION trempy.status()
RETURNS TABLE (
    task_name              text,
    state                  text,
    failure                text,
    worker_pid             integer,
    slot_name              text,
    confirmed_flush_lsn    pg_lsn,
    lag_bytes              numeric,
    wal_status             text,
    changes_published      bigint,
    transactions_published bigint,
    messages_published     bigint,
    last_publish_at        timestamptz,
    last_error             text,
    last_error_at          timestamptz,
    phase                  text,
    load_rows_copied       bigint,
    load_rows_estimated    bigint,
    load_percent           numeric,
    load_eta               timestamptz,
    applier_state          text,
    applier_reason         text,
    applier_since          timestamptz,
    applier_lsn            pg_lsn,
    applier_dead_letters   bigint,
    applier_reported_at    timestamptz,
    incarnation            uuid,
    generation             integer,
    schema_changes_seen    bigint,
    schema_changes_applied bigint,
    last_schema_change     text
)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
-- Monitoring reads a few rows: JIT compilation (the planner's estimates of set-returning
-- functions pass its thresholds) would cost far more than the query, worst on a busy server.
SET jit = off
AS $$
    SELECT t.task_name,
           CASE
               WHEN f.failure IS NOT NULL AND w.pid IS NULL THEN 'failed'
               WHEN NOT t.enabled AND w.pid IS NULL AND p.phase = 'finished' THEN 'finished'
               WHEN NOT t.enabled AND w.pid IS NULL THEN 'stopped'
               WHEN NOT t.enabled THEN 'stopping'
               WHEN w.pid IS NULL THEN 'starting'
               WHEN coalesce(p.error_active, false) THEN 'retrying'
               WHEN p.applier_state = 'stopped' THEN 'applier stopped'
               ELSE 'running'
           END,
           f.failure,
           w.pid,
           'trempy_' || t.task_name,
           s.confirmed_flush_lsn,
           CASE WHEN s.confirmed_flush_lsn IS NOT NULL
                THEN pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn) END,
           s.wal_status,
           coalesce(p.changes_published, 0),
           coalesce(p.transactions_published, 0),
           coalesce(p.messages_published, 0),
           p.last_publish_at,
           p.last_error,
           p.last_error_at,
           p.phase,
           l.copied,
           l.estimated,
           CASE WHEN p.phase IN ('cdc', 'finished') THEN 100
                WHEN l.estimated > 0 THEN least(99.9, round(100.0 * l.copied / l.estimated, 1)) END,
           CASE WHEN p.phase IN ('cdc', 'finished') THEN p.load_finished_at
                WHEN p.phase = 'full_load' AND l.copied > 0 AND l.estimated > l.copied
                THEN now() + (now() - p.load_started_at) * ((l.estimated - l.copied)::float8 / l.copied) END,
           p.applier_state,
           p.applier_reason,
           p.applier_since,
           p.applier_lsn,
           p.applier_dead_letters,
           p.applier_reported_at,
           t.incarnation,
           t.generation,
           (SELECT count(*) FROM trempy.schema_changes sc WHERE sc.relid = ANY (ARRAY(SELECT trempy.task_relids(t.task_name)))),
           p.applier_schema_changes,
           p.applier_last_schema_change
      FROM trempy.tasks t
      LEFT JOIN trempy.task_progress p ON p.task_name = t.task_name
      LEFT JOIN pg_replication_slots s
             ON s.slot_name = 'trempy_' || t.task_name AND s.database = current_database()
      LEFT JOIN LATERAL (SELECT trempy.worker_pid(t.task_id) AS pid) w ON true
      -- What the worker recorded, or what it would find: a streaming task whose slot is gone or
      -- invalidated cannot go on (a stopped task's slot can vanish too).
      CROSS JOIN trempy.server_identity() h
      LEFT JOIN LATERAL (SELECT coalesce(t.failure,
                                         CASE WHEN t.slot_lsn IS NULL OR h.timeline IS NULL THEN NULL
                                              WHEN t.slot_system_id IS DISTINCT FROM h.system_id
                                                OR t.slot_timeline IS DISTINCT FROM h.timeline THEN 'slot_other_system'
                                              WHEN s.slot_name IS NULL THEN 'slot_missing'
                                              WHEN s.wal_status = 'lost' THEN 'slot_invalidated' END) AS failure) f ON true
      LEFT JOIN LATERAL (SELECT sum(ls.rows_copied)::bigint AS copied,
                                sum(greatest(coalesce(ls.rows_estimated, 0), ls.rows_copied))::bigint AS estimated
                           FROM trempy.load_status() ls WHERE ls.task_name = t.task_name) l ON true
     ORDER BY t.task_name
$$;

COMMENT ON FUNCTION trempy.status() IS 'One row per TREMpy task: state, worker, slot position and lag, publish counters, last error, full load phase, progress and ETA, and the applier''s latest report (state, reason, LSN applied, dead letters), schema changes seen and applied.';

-- Managing tasks is for superusers (or roles they grant EXECUTE to); status is readable by all.
REVOKE ALL ON FUNCTION trempy.create_task(text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION trempy.update_task(text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION trempy.start_task(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION trempy.stop_task(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION trempy.drop_task(text) FROM PUBLIC;

-- Validating settings creates nothing and reads only what pg_attribute shows everyone.
GRANT EXECUTE ON FUNCTION trempy.validate_settings(jsonb) TO PUBLIC;
COMMENT ON FUNCTION trempy.validate_settings(jsonb) IS 'Every problem with a task settings document (schema, semantics, unsupported settings, tables, filters, transformations), one row each; no rows when valid. Creates nothing.';
