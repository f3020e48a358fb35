-- create_task validates the settings before anything else and names the field of each problem;
-- nothing is created when it refuses (these run in the stack's source database, in a scratch
-- schema, and create no task).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS trempy;
\set VERBOSITY default
CREATE SCHEMA regress;
CREATE TABLE regress.keyed (id bigint PRIMARY KEY, v text);
CREATE TABLE regress.keyless (a int, b text);
-- the task's name
SELECT trempy.create_task('bad name!', '{"task": {"task_name": "x", "replication_type": "cdc"}, "tables": []}');
-- the document's structure, then its values
SELECT trempy.create_task('regress_t', '{"task": {"task_name": "regress_t", "replication_type": "cdc"}, "tables": [{"schema_name": "regress", "table_name": "keyed"}]}');
SELECT trempy.create_task('regress_t', '{"task": {"task_name": "regress_t", "replication_type": "sometimes"}, "tables": [{"schema_name": "regress", "table_name": "keyed", "priority": 0}]}');
SELECT trempy.create_task('regress_t', '{"task": {"task_name": "regress_t", "replication_type": "cdc"}, "tables": []}');
SELECT trempy.create_task('regress_t', '{"task": {"task_name": "other", "replication_type": "cdc"}, "tables": [{"schema_name": "regress", "table_name": "keyed", "priority": 0}]}');
SELECT trempy.create_task('regress_t', '{"task": {"task_name": "regress_t", "replication_type": "cdc", "interval_seconds": 0}, "tables": [{"schema_name": "regress", "table_name": "keyed", "priority": 0}]}');
-- every problem at once, listed in the DETAIL
SELECT trempy.create_task('regress_t', '{"task": {"task_name": "regress_t", "replication_type": "cdc", "interval_seconds": 0}, "tables": []}');
SELECT trempy.create_task('regress_t', '{"task": {"task_name": "regress_t", "replication_type": "cdc", "cdc_settings": {"mode": "sideways"}}, "tables": [{"schema_name": "regress", "table_name": "keyed", "priority": 0}]}');
-- then the tables as the source has them
SELECT trempy.create_task('regress_t', '{"task": {"task_name": "regress_t", "replication_type": "cdc"}, "tables": [{"schema_name": "regress", "table_name": "missing", "priority": 0}]}');
SELECT trempy.create_task('regress_t', '{"task": {"task_name": "regress_t", "replication_type": "cdc", "cdc_settings": {"mode": "scd2"}}, "tables": [{"schema_name": "regress", "table_name": "keyless", "priority": 0}]}');
-- a transaction that wrote cannot create a slot: a clear error instead of waiting for itself
BEGIN;
INSERT INTO regress.keyed VALUES (1, 'x');
SELECT trempy.create_task('regress_t', '{"task": {"task_name": "regress_t", "replication_type": "cdc"}, "tables": [{"schema_name": "regress", "table_name": "keyed", "priority": 0}]}');
ROLLBACK;
-- validate_settings lists every problem as (path, message), and nothing for good settings
SELECT * FROM trempy.validate_settings('{"task": {"task_name": "regress_t", "replication_type": "cdc", "interval_seconds": 0}, "tables": [{"schema_name": "regress", "table_name": "missing", "priority": 0}]}');
SELECT count(*) AS problems FROM trempy.validate_settings('{"task": {"task_name": "regress_t", "replication_type": "cdc"}, "tables": [{"schema_name": "regress", "table_name": "keyed", "priority": 0}]}');
-- nothing was created
SELECT count(*) AS tasks FROM trempy.tasks WHERE task_name LIKE 'regress%';
SELECT count(*) AS slots FROM pg_replication_slots WHERE slot_name LIKE 'trempy_regress%';
SELECT count(*) AS publications FROM pg_publication WHERE pubname LIKE 'trempy_regress%';
-- calls on a task that does not exist
SELECT trempy.drop_task('regress_nope');
SELECT trempy.update_task('regress_nope', '{"task": {"task_name": "regress_nope", "replication_type": "cdc"}, "tables": [{"schema_name": "regress", "table_name": "keyed", "priority": 0}]}');
DROP SCHEMA regress CASCADE;
