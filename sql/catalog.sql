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
    -- This task's identity, new at every create_task: every message carries it, and appliers
    -- keep their state under it, so a task dropped and created again under the same name (or
    -- a task of the same name on another source) never inherits another one's position.
    incarnation uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    -- The identity of the task's replication slot, recorded when it was created (by
    -- create_task, or update_task when the task starts streaming or reloads): the cluster
    -- (system identifier and timeline) and the slot's consistent point. A slot that is missing,
    -- invalidated, or on another system or timeline (a promoted standby, a restore) is never
    -- re-created silently: the task fails with the cause in trempy.status().
    slot_system_id   text,
    slot_timeline    integer,
    slot_lsn         pg_lsn,
    -- Why the task cannot go on without the DBA ('slot_missing', 'slot_invalidated',
    -- 'slot_other_system'); NULL while it can. Cleared by update_task with start_mode reload.
    failure    text CHECK (failure IN ('slot_missing', 'slot_invalidated', 'slot_other_system')),
    -- Copies made so far (every attempt of every table): each copy's id is the next number.
    copy_seq   bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Replication slots (and publications) made for a create_task or update_task whose transaction
-- has not ended yet. They are made by a helper worker, outside the caller's transaction
-- (PostgreSQL cannot create a logical slot in a transaction that has written, and the slot must
-- exist before the call returns). The caller holds the advisory lock `claim` until its
-- transaction ends, and deletes the claim in the transaction that records the slot. A claim
-- whose lock is free is therefore what a rolled-back call left behind: the launcher (or the next
-- helper for the same slot name) drops that slot and the publication it made, and the claim.
CREATE TABLE trempy.slot_claims (
    claim               bigint PRIMARY KEY,
    slot_name           text NOT NULL,
    created_publication text,
    created_at          timestamptz NOT NULL DEFAULT now()
);

-- Written by each task's worker: what it has published and the last error it met.
CREATE TABLE trempy.task_progress (
    task_name              text PRIMARY KEY REFERENCES trempy.tasks ON DELETE CASCADE,
    slot_created_at        timestamptz,
    changes_published      bigint NOT NULL DEFAULT 0,
    transactions_published bigint NOT NULL DEFAULT 0,
    messages_published     bigint NOT NULL DEFAULT 0,
    last_published_lsn     pg_lsn,
    -- Commit LSN of the last transaction published, written with the slot's advance: the next
    -- decoding call's first transaction names it, so the applier can tell a gap in the stream.
    last_commit_lsn        pg_lsn,
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
    applier_received_at    timestamptz,
    -- Source schema changes the applier has applied on the target, and the last one
    applier_schema_changes     bigint,
    applier_last_schema_change text
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
    -- The id of the table's latest copy (trempy.tasks.copy_seq): chunks carry it, and appliers
    -- order copies by it, whatever position the table has.
    copy_id        bigint,
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
