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

-- trempy.status(): one row per task, from the catalog, the worker's advisory lock and the slot.
CREATE FUNCTION trempy.status()
RETURNS TABLE (
    task_name              text,
    state                  text,
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
    last_error_at          timestamptz
)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.task_name,
           CASE
               WHEN NOT t.enabled AND w.pid IS NULL THEN 'stopped'
               WHEN NOT t.enabled THEN 'stopping'
               WHEN w.pid IS NULL THEN 'starting'
               WHEN s.slot_name IS NULL THEN 'starting'
               WHEN coalesce(p.error_active, false) THEN 'retrying'
               ELSE 'running'
           END,
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
           p.last_error_at
      FROM trempy.tasks t
      LEFT JOIN trempy.task_progress p ON p.task_name = t.task_name
      LEFT JOIN pg_replication_slots s
             ON s.slot_name = 'trempy_' || t.task_name AND s.database = current_database()
      LEFT JOIN LATERAL (SELECT trempy.worker_pid(t.task_id) AS pid) w ON true
     ORDER BY t.task_name
$$;

COMMENT ON FUNCTION trempy.status() IS 'One row per TREMpy task: state, worker, slot position and lag, publish counters, last error.';

-- Managing tasks is for superusers (or roles they grant EXECUTE to); status is readable by all.
REVOKE ALL ON FUNCTION trempy.create_task(text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION trempy.start_task(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION trempy.stop_task(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION trempy.drop_task(text) FROM PUBLIC;
