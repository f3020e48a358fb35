//! The SQL API: `trempy.create_task`, `update_task`, `start_task`, `stop_task`, `drop_task`,
//! `validate_settings`.
//! (`trempy.status()` is plain SQL, in `sql/status.sql`.)
//!
//! Workers are never started from here: a dynamic background worker is not transactional, so a
//! worker started by a transaction that then rolls back would run for a task that does not
//! exist. These functions only change `trempy.tasks`; the launcher acts on committed rows.

use std::time::{Duration, Instant};

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{JsonB, PgSqlErrorCode};
use trempy_protocol::names::TaskNames;
use trempy_protocol::settings::{CdcMode, ColumnDesc, Problem, StartMode, TaskSettings};

use crate::catalog::describe_table;
use crate::decoding::slot;
use crate::{gucs, worker};

fn fail(code: PgSqlErrorCode, message: String, detail: Option<String>) -> ! {
    let report = pgrx::pg_sys::panic::ErrorReport::new(code, message, "trempy");
    match detail {
        Some(detail) => report.set_detail(detail).report(PgLogLevel::ERROR),
        None => report.report(PgLogLevel::ERROR),
    }
    unreachable!("ERROR does not return")
}

fn fail_settings(name: &str, problems: &[Problem], code: PgSqlErrorCode, what: &str) -> ! {
    let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
    fail(code, format!("{what} for task \"{name}\": {}", list.join("; ")), Some(list.join("\n")))
}

fn task_names(name: &str) -> TaskNames {
    TaskNames::new(name).unwrap_or_else(|err| fail(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("name: {}", err.message()), None))
}

/// Creates a task from the original TREMpy's settings document and starts it.
///
/// Everything is validated first; each error names the offending field. The task's publication
/// is created here; its replication slot is created by the task's worker right after this
/// transaction commits (PostgreSQL refuses to create a logical slot in a transaction that has
/// written anything), and `trempy.status()` shows `starting` until then.
#[pg_extern]
fn create_task(name: &str, settings: JsonB) {
    let names = task_names(name);
    let parsed = validated(name, &settings);

    Spi::connect_mut(|client| {
        let exists = client
            .select("SELECT 1 FROM trempy.tasks WHERE task_name = $1", None, &[name.into()])
            .map(|t| !t.is_empty())
            .unwrap_or(false);
        if exists {
            fail(
                PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
                format!("task \"{name}\" already exists"),
                Some("Use trempy.update_task to change its settings (start_mode \"continue\" keeps its position, \"reload\" starts over).".to_owned()),
            );
        }
        let table_problems = check_tables_and_rules(client, &parsed);
        if !table_problems.is_empty() {
            fail_settings(name, &table_problems, PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "invalid settings");
        }
        if let Some(problem) = slot::name_conflict(client, &names) {
            fail(PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT, problem, None);
        }
        client
            .update("INSERT INTO trempy.tasks (task_name, settings) VALUES ($1, $2)", None, &[name.into(), JsonB(settings.0.clone()).into()])
            .unwrap_or_else(|err| fail(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("could not record task \"{name}\": {err}"), None));
        client
            .update("INSERT INTO trempy.task_progress (task_name) VALUES ($1)", None, &[name.into()])
            .unwrap_or_else(|err| fail(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("could not record task \"{name}\": {err}"), None));
        let tables: Vec<(String, String)> = parsed.tables.iter().map(|t| (t.schema_name.clone(), t.table_name.clone())).collect();
        slot::create_publication(client, &names, &tables);
    });
}

/// Parses and checks settings for task `name`, or raises an error naming every problem.
fn validated(name: &str, settings: &JsonB) -> TaskSettings {
    ensure_runnable_here();
    let text = settings.0.to_string();
    let parsed = TaskSettings::parse(&text).unwrap_or_else(|problems| fail_settings(name, &problems, PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "invalid settings"));
    if parsed.task.task_name != name {
        fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid settings for task \"{name}\": task.task_name: \"{}\" differs from the task name \"{name}\"", parsed.task.task_name),
            None,
        );
    }
    let unsupported = parsed.unsupported();
    if !unsupported.is_empty() {
        fail_settings(name, &unsupported, PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED, "unsupported settings");
    }
    parsed
}

/// Replaces a task's settings and restarts it, as its new `task.start_mode` says:
///
/// * `continue` (the default): the task keeps its slot, its position and what it has copied, and
///   goes on under the new settings (tables added to a task with a full load are copied first).
/// * `reload`: the task starts over: its slot and load state are dropped, its generation goes
///   up (appliers drop every message of older generations still queued and restart from an
///   empty position), and a task with a full load copies every table again.
#[pg_extern]
fn update_task(name: &str, settings: JsonB) {
    let names = task_names(name);
    let parsed = validated(name, &settings);
    let task_id = Spi::get_one_with_args::<i32>("SELECT task_id FROM trempy.tasks WHERE task_name = $1 FOR UPDATE", &[name.into()])
        .ok()
        .flatten()
        .unwrap_or_else(|| fail(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("task \"{name}\" does not exist"), None));
    Spi::connect_mut(|client| {
        let table_problems = check_tables_and_rules(client, &parsed);
        if !table_problems.is_empty() {
            fail_settings(name, &table_problems, PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "invalid settings");
        }
    });
    stop_worker(name, task_id);
    Spi::connect_mut(|client| {
        let tables: Vec<(String, String)> = parsed.tables.iter().map(|t| (t.schema_name.clone(), t.table_name.clone())).collect();
        slot::set_publication_tables(client, &names, &tables);
        let reload = parsed.start_mode() == StartMode::Reload;
        if reload {
            slot::drop_slot(client, &names);
        }
        let sql = if reload {
            "UPDATE trempy.tasks SET settings = $2, enabled = true, generation = generation + 1, updated_at = now() WHERE task_name = $1"
        } else {
            "UPDATE trempy.tasks SET settings = $2, enabled = true, updated_at = now() WHERE task_name = $1"
        };
        client
            .update(sql, None, &[name.into(), JsonB(settings.0.clone()).into()])
            .unwrap_or_else(|err| fail(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("could not update task \"{name}\": {err}"), None));
        let reset = if reload {
            vec![
                "DELETE FROM trempy.task_tables WHERE task_name = $1",
                "UPDATE trempy.task_progress SET slot_created_at = NULL, changes_published = 0, transactions_published = 0, messages_published = 0,
                        last_published_lsn = NULL, last_publish_at = NULL, last_error = NULL, last_error_at = NULL, error_active = false,
                        phase = NULL, load_started_at = NULL, load_finished_at = NULL
                  WHERE task_name = $1",
            ]
        } else {
            vec!["UPDATE trempy.task_progress SET phase = NULL WHERE task_name = $1 AND phase = 'finished'"]
        };
        for sql in reset {
            client
                .update(sql, None, &[name.into()])
                .unwrap_or_else(|err| fail(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("could not update task \"{name}\": {err}"), None));
        }
    });
}

/// Every problem with a settings document, without creating anything: the schema, the semantic
/// checks, what this version does not support, the tables, and the filters and transformations
/// against the source catalog. No rows: the settings are valid for `create_task` (apart from the
/// task name, which `create_task` compares with `task.task_name`).
#[pg_extern]
fn validate_settings(settings: JsonB) -> TableIterator<'static, (name!(path, String), name!(message, String))> {
    let problems = match TaskSettings::parse(&settings.0.to_string()) {
        Err(problems) => problems,
        Ok(parsed) => {
            let mut problems = parsed.unsupported();
            problems.extend(Spi::connect(|client| check_tables_and_rules(client, &parsed)));
            problems
        }
    };
    TableIterator::new(problems.into_iter().map(|p| (p.path, p.message)))
}

/// [`check_tables`], then (for the tables that passed) the filters and transformations against
/// the source catalog, and what each target table needs in the task's mode.
fn check_tables_and_rules(client: &SpiClient<'_>, settings: &TaskSettings) -> Vec<Problem> {
    let mut problems = check_tables(client, settings);
    let catalog = |schema: &str, table: &str| source_columns(client, schema, table);
    problems.extend(settings.check_rules(&catalog));
    let scd2 = (settings.cdc_mode() == CdcMode::Scd2).then(|| settings.scd2_columns());
    for (i, table) in settings.tables.iter().enumerate() {
        let Some(columns) = catalog(&table.schema_name, &table.table_name) else { continue };
        let Ok((_, plan)) = settings.table_plan(&table.schema_name, &table.table_name, &columns) else { continue };
        let target = format!("{}.{}", plan.target_schema, plan.target_table);
        if !plan.columns.iter().any(|c| c.key) {
            problems.push(Problem::new(format!("tables[{i}]"), format!("target table {target} has no key after the transformations; keep or add a primary key column")));
        }
        if let Some(names) = &scd2 {
            for name in [&names.start, &names.end, &names.current] {
                if plan.columns.iter().any(|c| &c.name == name) {
                    problems.push(Problem::new(
                        format!("tables[{i}]"),
                        format!("target table {target} already has a column {name:?}, which is an SCD2 column name; rename one of them (task.scd2_settings)"),
                    ));
                }
            }
        }
    }
    problems
}

/// A source table's replicated columns, as the rules see them; `None` when it does not exist.
fn source_columns(client: &SpiClient<'_>, schema: &str, table: &str) -> Option<Vec<ColumnDesc>> {
    let oid = client
        .select(
            "SELECT c.oid::int8 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
            Some(1),
            &[schema.into(), table.into()],
        )
        .ok()
        .and_then(|t| if t.is_empty() { None } else { t.first().get::<i64>(1).ok().flatten() })?;
    let relation = describe_table(client, u32::try_from(oid).ok()?).ok()?;
    Some(relation.columns.into_iter().map(|c| ColumnDesc { name: c.name, type_name: c.type_name, key: c.key, not_null: c.not_null }).collect())
}

/// The checks that need the database: every table exists, is a permanent ordinary table, and
/// has a key the target can upsert on (a primary key, or a replica identity index).
fn check_tables(client: &SpiClient<'_>, settings: &TaskSettings) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (i, table) in settings.tables.iter().enumerate() {
        let path = format!("tables[{i}]");
        let qualified = format!("{}.{}", spi::quote_identifier(&table.schema_name), spi::quote_identifier(&table.table_name));
        let row = client
            .select(
                "SELECT c.relkind::text, c.relpersistence::text, c.relreplident::text,
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2",
                Some(1),
                &[table.schema_name.as_str().into(), table.table_name.as_str().into()],
            )
            .ok()
            .and_then(|t| {
                let row = t.first();
                Some((
                    row.get::<String>(1).ok()??,
                    row.get::<String>(2).ok()??,
                    row.get::<String>(3).ok()??,
                    row.get::<bool>(4).ok()??,
                    row.get::<bool>(5).ok()??,
                ))
            });
        let Some((kind, persistence, identity, has_pk, has_ri_index)) = row else {
            problems.push(Problem::new(path, format!("table {qualified} does not exist")));
            continue;
        };
        if kind != "r" {
            let what = match kind.as_str() {
                "p" => "a partitioned table (not supported yet)",
                "v" => "a view",
                "m" => "a materialized view",
                "f" => "a foreign table",
                _ => "not an ordinary table",
            };
            problems.push(Problem::new(path, format!("{qualified} is {what}")));
            continue;
        }
        if persistence != "p" {
            problems.push(Problem::new(path, format!("{qualified} is unlogged or temporary; its changes are not in the WAL and cannot be replicated")));
            continue;
        }
        let usable = match identity.as_str() {
            "d" | "f" => has_pk,
            "i" => has_ri_index,
            _ => false,
        };
        if !usable {
            let why = match identity.as_str() {
                "n" => "has REPLICA IDENTITY NOTHING".to_owned(),
                "f" => "has REPLICA IDENTITY FULL but no primary key".to_owned(),
                _ => "has no primary key".to_owned(),
            };
            problems.push(Problem::new(
                path,
                format!("{qualified} {why}; TREMpy needs a key to apply updates and deletes: add a primary key or set REPLICA IDENTITY USING INDEX on a unique index"),
            ));
        }
    }
    problems
}

/// Refuses to create tasks where no worker would ever run them.
fn ensure_runnable_here() {
    let preloaded = Spi::get_one::<String>("SELECT current_setting('shared_preload_libraries')")
        .ok()
        .flatten()
        .map(|libs| libs.split(',').any(|l| l.trim().trim_matches('"') == "trempy"))
        .unwrap_or(false);
    if !preloaded {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "trempy is not in shared_preload_libraries, so no worker would run this task".to_owned(),
            Some("Add shared_preload_libraries = 'trempy' and wal_level = logical to postgresql.conf and restart PostgreSQL.".to_owned()),
        );
    }
    let database = gucs::database();
    let here = Spi::get_one::<String>("SELECT current_database()::text").ok().flatten().unwrap_or_default();
    if here != database {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("tasks run in database \"{database}\" (trempy.database), not in \"{here}\""),
            Some("Create the extension and the task in that database, or set trempy.database and restart PostgreSQL.".to_owned()),
        );
    }
}

fn set_enabled(name: &str, enabled: bool) {
    let updated = Spi::connect_mut(|client| {
        client
            .update("UPDATE trempy.tasks SET enabled = $2, updated_at = now() WHERE task_name = $1 RETURNING 1", None, &[name.into(), enabled.into()])
            .map(|t| t.len())
            .unwrap_or(0)
    });
    if updated == 0 {
        fail(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("task \"{name}\" does not exist"), None);
    }
}

/// Starts a stopped task; the launcher starts its worker within a second of the commit.
#[pg_extern]
fn start_task(name: &str) {
    set_enabled(name, true);
}

/// Stops a task: its worker exits after its current batch. The slot is kept (and keeps WAL)
/// so that `start_task` resumes exactly where it stopped.
#[pg_extern]
fn stop_task(name: &str) {
    set_enabled(name, false);
}

/// Drops a task: stops its worker, drops its replication slot and publication (by their exact
/// names, never another task's), and deletes its rows. The task's RabbitMQ queues are left for
/// the applier to drain; delete them with RabbitMQ's tools once they are empty.
#[pg_extern]
fn drop_task(name: &str) {
    let names = task_names(name);
    let task_id = Spi::get_one_with_args::<i32>("SELECT task_id FROM trempy.tasks WHERE task_name = $1 FOR UPDATE", &[name.into()])
        .ok()
        .flatten()
        .unwrap_or_else(|| fail(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("task \"{name}\" does not exist"), None));
    stop_worker(name, task_id);
    Spi::connect_mut(|client| {
        slot::drop_slot_and_publication(client, &names);
        client
            .update("DELETE FROM trempy.tasks WHERE task_name = $1", None, &[name.into()])
            .unwrap_or_else(|err| fail(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("could not delete task \"{name}\": {err}"), None));
    });
}

/// Terminates the task's worker and holds its advisory lock until this transaction ends, so
/// that no new worker can start for the task meanwhile.
fn stop_worker(name: &str, task_id: i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let locked = Spi::get_one_with_args::<bool>("SELECT pg_try_advisory_xact_lock($1, $2)", &[worker::LOCK_CLASS.into(), task_id.into()])
            .ok()
            .flatten()
            .unwrap_or(false);
        if locked {
            return;
        }
        if Instant::now() > deadline {
            fail(PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, format!("the worker of task \"{name}\" did not stop within 30 seconds"), None);
        }
        let _ = Spi::get_one_with_args::<bool>("SELECT pg_terminate_backend(trempy.worker_pid($1))", &[task_id.into()]);
        let _ = Spi::run("SELECT pg_sleep(0.05)");
    }
}
