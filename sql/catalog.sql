-- TREMpy catalog (source side). Installed by CREATE EXTENSION trempy into schema trempy.

-- One row per task. settings holds the validated settings document exactly as given.
CREATE TABLE trempy.tasks (
    task_name  text PRIMARY KEY CHECK (task_name ~ '^[a-z0-9_]+$' AND octet_length(task_name) <= 56),
    -- Small stable number passed to the task's worker; also the key of the worker's advisory lock.
    task_id    integer GENERATED ALWAYS AS IDENTITY UNIQUE,
    settings   jsonb NOT NULL,
    enabled    boolean NOT NULL DEFAULT true,
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
    error_active           boolean NOT NULL DEFAULT false
);

-- pg_dump keeps the task definitions and their progress.
SELECT pg_catalog.pg_extension_config_dump('trempy.tasks', '');
SELECT pg_catalog.pg_extension_config_dump('trempy.task_progress', '');
