-- TREMpy catalog (source side). Installed by CREATE EXTENSION trempy into schema trempy.

-- One row per task. settings holds the validated settings document exactly as given.
CREATE TABLE trempy.tasks (
    task_name  text PRIMARY KEY CHECK (task_name ~ '^[a-z0-9_]+$' AND octet_length(task_name) <= 56),
    -- Small stable number passed to the task's worker; also the key of the worker's advisory lock.
    task_id    integer GENERATED ALWAYS AS IDENTITY UNIQUE,
    settings   jsonb NOT NULL,
    enabled    boolean NOT NULL DEFAULT true,
    -- 1 at creation, one more at every reload (start_mode "reload"). Every message carries it;
    -- appliers drop messages of older generations.
    generation integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Written by each task's worker: what it has published and the last error it met.
CREATE TABLE trempy.task_progress (
    task_name              text PRIMARY KEY REFERENCES trempy.tasks ON DELETE CASCADE,
    slot_created_at        timestamptz,
    changes_published      bigint NOT NULL DEFAULT 0,
    transactions_published bigint NOT NULL DEFAULT 0,
    messages_published     bigint NOT NULL DEFAULT 0,
    last_published_lsn     pg_lsn,
    last_publish_at        timestamptz,
    last_error             text,
    last_error_at          timestamptz,
    error_active           boolean NOT NULL DEFAULT false,
    -- 'full_load' while tables are being copied, then 'cdc' (or 'finished' for a full_load task).
    phase                  text CHECK (phase IN ('full_load', 'cdc', 'finished')),
    load_started_at        timestamptz,
    load_finished_at       timestamptz,
    -- The applier's latest report, from the task's feedback queue (see docs/architecture.md):
    -- its state ('running', 'retrying', 'stopped', 'halted'), why and since when, its watermark
    -- (last source commit LSN applied), counts, when it made the report (applier's clock) and
    -- when the worker recorded it (source clock). NULL until a report arrives.
    applier_state          text,
    applier_reason         text,
    applier_since          timestamptz,
    applier_lsn            pg_lsn,
    applier_generation     integer,
    applier_transactions   bigint,
    applier_changes        bigint,
    applier_rows_loaded    bigint,
    applier_dead_letters   bigint,
    applier_reported_at    timestamptz,
    applier_received_at    timestamptz
);

-- The full load of each table of a task, in load order (priority, then list order). Each table
-- is copied under one REPEATABLE READ snapshot; CDC later leaves out the changes of transactions
-- visible in that snapshot (see docs/architecture.md).
CREATE TABLE trempy.task_tables (
    task_name      text NOT NULL REFERENCES trempy.tasks ON DELETE CASCADE,
    generation     integer NOT NULL,
    position       integer NOT NULL,
    schema_name    text NOT NULL,
    table_name     text NOT NULL,
    relid          oid NOT NULL,
    state          text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'copying', 'copied')),
    attempt        integer NOT NULL DEFAULT 0,
    rows_estimated bigint,
    rows_copied    bigint NOT NULL DEFAULT 0,
    bytes_copied   bigint NOT NULL DEFAULT 0,
    snapshot       text,
    snapshot_lsn   pg_lsn,
    -- The copy was taken after the task's slot existed, so CDC can take over from it. A copy made
    -- without a slot (a full_load task later switched to full_load_and_cdc) is made again.
    for_cdc        boolean NOT NULL DEFAULT false,
    started_at     timestamptz,
    finished_at    timestamptz,
    PRIMARY KEY (task_name, schema_name, table_name)
);

-- pg_dump keeps the task definitions and their progress.
SELECT pg_catalog.pg_extension_config_dump('trempy.tasks', '');
SELECT pg_catalog.pg_extension_config_dump('trempy.task_progress', '');
SELECT pg_catalog.pg_extension_config_dump('trempy.task_tables', '');
