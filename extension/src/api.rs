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

use crate::decoding::slot;
use crate::table_shape::describe_table;
use crate::worker::setup;
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
    // Several problems are listed one per line too; one is said once.
    let detail = (list.len() > 1).then(|| format!("{} problems:\n{}", list.len(), list.join("\n")));
    fail(code, format!("{what} for task \"{name}\": {}", list.join("; ")), detail)
}

fn task_names(name: &str) -> TaskNames {
    TaskNames::new(name).unwrap_or_else(|err| {
        fail(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("name: {}", err.message()), None)
    })
}

/// Creates a task from the original TREMpy's settings document and starts it.
///
/// Everything is validated first; each error names the offending field. For a task that streams
/// changes (`cdc`, `full_load_and_cdc`), capture has started when this returns: the task's
/// publication and replication slot are made by a helper worker while this call waits (see
/// [`crate::worker::setup`]), so every change committed after it returns is captured. That
/// needs a transaction that has not written anything yet; a rolled-back call leaves nothing
/// behind (the launcher drops the slot it made).
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn create_task(name: &str, settings: JsonB) {
    let names = task_names(name);
    let parsed = validated(name, &settings);
    let tables = table_pairs(&parsed);
    Spi::connect(|client| {
        let exists = !client
            .select("SELECT 1 FROM trempy.tasks WHERE task_name = $1", None, &[name.into()])
            .unwrap_or_else(|err| internal(format!("could not read trempy.tasks: {err}")))
            .is_empty();
        if exists {
            fail(
                PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
                format!("task \"{name}\" already exists"),
                Some("Use trempy.update_task to change its settings (start_mode \"continue\" keeps its position, \"reload\" starts over).".to_owned()),
            );
        }
        check_tables_and_rules(client, &parsed).enforce(name);
        warn_toast_under_filters(client, &parsed);
        // A slot or publication left by a rolled-back call is the helper's to drop.
        let claimed = !client
            .select("SELECT 1 FROM trempy.slot_claims WHERE slot_name = $1", None, &[names.slot().as_str().into()])
            .unwrap_or_else(|err| internal(format!("could not read trempy.slot_claims: {err}")))
            .is_empty();
        if !claimed
            && let Some(problem) = slot::name_conflict(client, &names).unwrap_or_else(|err| internal(err.to_string()))
        {
            fail(PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT, problem, None);
        }
    });
    let created = parsed.streams().then(|| {
        let claim = take_claim("create_task");
        let request = setup::Request {
            task: name.to_owned(),
            claim,
            tables: tables.clone(),
            publication: setup::Publication::Create,
            drop_slot: false,
            create_slot: true,
        };
        (claim, run_setup(name, &request))
    });
    Spi::connect_mut(|client| {
        if created.is_none() {
            slot::create_publication(client, &names, &tables).unwrap_or_else(|err| internal(err.to_string()));
        }
        let identity = created.as_ref().and_then(|(_, identity)| identity.as_ref());
        client
            .update(
                "INSERT INTO trempy.tasks (task_name, settings, slot_system_id, slot_timeline, slot_lsn) VALUES ($1, $2, $3, $4, $5::text::pg_lsn)",
                None,
                &[
                    name.into(),
                    JsonB(settings.0.clone()).into(),
                    identity.map(|i| i.system_id.as_str()).into(),
                    identity.map(|i| i.timeline).into(),
                    identity.map(|i| i.lsn.as_str()).into(),
                ],
            )
            .unwrap_or_else(|err| internal(format!("could not record task \"{name}\": {err}")));
        client
            .update("INSERT INTO trempy.task_progress (task_name, slot_created_at) VALUES ($1, CASE WHEN $2 THEN pg_catalog.now() END)", None, &[name.into(), identity.is_some().into()])
            .unwrap_or_else(|err| internal(format!("could not record task \"{name}\": {err}")));
        record_shapes(client, name);
        if let Some((claim, _)) = &created {
            forget_claim(client, *claim);
        }
    });
}

/// Records the shape of each of the task's tables, which the schema-change event trigger starts
/// from (sql/ddl.sql).
fn record_shapes(client: &mut SpiClient<'_>, name: &str) {
    client
        .update("SELECT trempy.record_shapes($1)", None, &[name.into()])
        .unwrap_or_else(|err| internal(format!("could not record the shapes of task \"{name}\"'s tables: {err}")));
}

/// The first column of the first row of a read-only query, or `None`. Unlike `Spi::get_one`,
/// which marks the transaction as writing (pgrx runs it as an update and assigns an xid), this
/// leaves the transaction without an xid, which the setup helper's slot needs (see
/// [`take_claim`]).
fn read_one<T: pgrx::FromDatum + pgrx::IntoDatum>(sql: &str, args: &[pgrx::datum::DatumWithOid<'_>]) -> Option<T> {
    Spi::connect(|client| {
        let table = client.select(sql, Some(1), args).unwrap_or_else(|err| internal(err.to_string()));
        if table.is_empty() { None } else { table.first().get::<T>(1).unwrap_or_else(|err| internal(err.to_string())) }
    })
}

fn internal(message: String) -> ! {
    fail(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, message, None)
}

fn table_pairs(settings: &TaskSettings) -> Vec<(String, String)> {
    settings.tables.iter().map(|t| (t.schema_name.clone(), t.table_name.clone())).collect()
}

/// Reads `columns` of the task's row (read-only: no xid), or raises "task does not exist".
fn read_task<R>(name: &str, columns: &str, read: impl FnOnce(pgrx::spi::SpiTupleTable<'_>) -> R) -> R {
    Spi::connect(|client| {
        let table = client
            .select(&format!("SELECT {columns} FROM trempy.tasks WHERE task_name = $1"), Some(1), &[name.into()])
            .unwrap_or_else(|err| internal(format!("could not read trempy.tasks: {err}")));
        if table.is_empty() {
            fail(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("task \"{name}\" does not exist"), None);
        }
        read(table.first())
    })
}

/// Refuses to go on inside a transaction block: `what` cannot be undone by a ROLLBACK.
fn refuse_in_transaction_block(what: &str, why: &str) {
    // SAFETY: reads the state of this backend's transaction.
    if unsafe { pg_sys::IsTransactionBlock() } {
        fail(
            PgSqlErrorCode::ERRCODE_ACTIVE_SQL_TRANSACTION,
            format!("{what} cannot run inside a transaction block"),
            Some(format!("{why} A ROLLBACK could not undo that, so run it on its own, outside BEGIN ... COMMIT.")),
        );
    }
}

/// Takes a claim for a slot the setup helper is about to create: an advisory lock held until
/// this transaction ends. The transaction must not have written (the helper's slot waits for
/// every transaction that has).
fn take_claim(what: &str) -> i64 {
    // SAFETY: reads the state of this backend's transaction.
    if unsafe { pg_sys::GetTopTransactionIdIfAny() } != pg_sys::TransactionId::INVALID {
        fail(
            PgSqlErrorCode::ERRCODE_ACTIVE_SQL_TRANSACTION,
            format!("trempy.{what} must run before anything else in its transaction"),
            Some(format!(
                "It returns once the task's replication slot exists, and PostgreSQL builds a slot only after every transaction that has written has ended, this one included. \
                 Run SELECT trempy.{what}(...) on its own, or first in its transaction."
            )),
        );
    }
    let claim = read_one::<i64>(
        "SELECT ('x' || pg_catalog.substr(pg_catalog.md5(pg_catalog.gen_random_uuid()::text), 1, 15))::bit(60)::int8",
        &[],
    )
    .unwrap_or_else(|| internal("could not draw a claim number".to_owned()));
    read_one::<bool>("SELECT true FROM pg_catalog.pg_advisory_xact_lock($1)", &[claim.into()]);
    claim
}

/// Runs the setup helper, or raises its error.
fn run_setup(name: &str, request: &setup::Request) -> Option<crate::decoding::slot::SlotIdentity> {
    setup::run(request).unwrap_or_else(|message| {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("could not prepare the replication slot of task \"{name}\": {message}"),
            None,
        )
    })
}

/// Deletes the claim in the transaction that records its slot (see [`crate::worker::setup`]).
fn forget_claim(client: &mut SpiClient<'_>, claim: i64) {
    client
        .update("DELETE FROM trempy.slot_claims WHERE claim = $1", None, &[claim.into()])
        .unwrap_or_else(|err| internal(format!("could not record the slot: {err}")));
}

/// Parses and checks settings for task `name`, or raises an error naming every problem.
fn validated(name: &str, settings: &JsonB) -> TaskSettings {
    ensure_runnable_here();
    let text = settings.0.to_string();
    let parsed = TaskSettings::parse(&text).unwrap_or_else(|problems| {
        fail_settings(name, &problems, PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "invalid settings")
    });
    if parsed.task.task_name != name {
        fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "invalid settings for task \"{name}\": task.task_name: \"{}\" differs from the task name \"{name}\"",
                parsed.task.task_name
            ),
            None,
        );
    }
    if let Some(i) = parsed.tables.iter().position(|t| t.relid.is_some()) {
        fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "invalid settings for task \"{name}\": tables[{i}].relid: set by TREMpy when it publishes the settings; leave it out"
            ),
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
///   Tables added to the publication are captured for every transaction that commits after this
///   returns (it waits for the transactions that were running when they were added).
/// * `reload`: the task starts over: its slot is dropped and made again, its load state is
///   dropped, its generation goes up (appliers drop every message of older generations still
///   queued and restart from an empty position), and a task with a full load copies every table
///   again. It also clears a failure (a lost slot). It cannot run inside a transaction block.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn update_task(name: &str, settings: JsonB) {
    let names = task_names(name);
    let parsed = validated(name, &settings);
    let tables = table_pairs(&parsed);
    let reload = parsed.start_mode() == StartMode::Reload;
    if reload {
        refuse_in_transaction_block(
            "trempy.update_task with start_mode \"reload\"",
            "It drops the task's replication slot and makes a new one.",
        );
    }
    let (task_id, failure, has_slot) = read_task(name, "task_id, failure, slot_lsn IS NOT NULL", |row| {
        let read = |e: pgrx::spi::SpiError| -> ! { internal(e.to_string()) };
        (
            row.get::<i32>(1).unwrap_or_else(|e| read(e)).unwrap_or_default(),
            row.get::<String>(2).unwrap_or_else(|e| read(e)),
            row.get::<bool>(3).unwrap_or_else(|e| read(e)).unwrap_or(false),
        )
    });
    Spi::connect(|client| {
        check_tables_and_rules(client, &parsed).enforce(name);
        warn_toast_under_filters(client, &parsed);
    });
    if let Some(failure) = &failure
        && !reload
    {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("task \"{name}\" failed ({failure}): it cannot continue from where it was"),
            Some(
                "trempy.status() shows why (last_error). Update it with task.start_mode \"reload\" to start it over."
                    .to_owned(),
            ),
        );
    }
    let streams = parsed.streams();
    let needs_slot = streams && (reload || !has_slot);
    let adds = Spi::connect(|client| {
        tables.iter().any(|(schema, table)| {
            !slot::publication_has(client, &names, schema, table).unwrap_or_else(|err| internal(err.to_string()))
        })
    });
    let request = |claim| {
        if reload && streams {
            Some(setup::Request {
                task: name.to_owned(),
                claim,
                tables: tables.clone(),
                publication: setup::Publication::Set,
                drop_slot: true,
                create_slot: true,
            })
        } else if needs_slot || adds {
            Some(setup::Request {
                task: name.to_owned(),
                claim,
                tables: tables.clone(),
                publication: setup::Publication::Extend,
                drop_slot: false,
                create_slot: needs_slot,
            })
        } else {
            None
        }
    };
    let claim = request(0).is_some().then(|| take_claim("update_task"));
    if reload && !parsed.copies() {
        warn_what_reload_discards(name, &names);
    }
    stop_worker(name, task_id);
    let identity = claim.and_then(|claim| request(claim).and_then(|r| run_setup(name, &r)));
    Spi::connect_mut(|client| {
        slot::set_publication_tables(client, &names, &tables).unwrap_or_else(|err| internal(err.to_string()));
        if reload && !streams {
            slot::drop_slot(client, &names).unwrap_or_else(|err| internal(err.to_string()));
        }
        let sql = if reload {
            "UPDATE trempy.tasks SET settings = $2, enabled = true, generation = generation + 1, failure = NULL, updated_at = pg_catalog.now(),
                    slot_system_id = $3, slot_timeline = $4, slot_lsn = $5::text::pg_lsn
              WHERE task_name = $1"
        } else {
            "UPDATE trempy.tasks SET settings = $2, enabled = true, updated_at = pg_catalog.now(),
                    slot_system_id = coalesce($3, slot_system_id), slot_timeline = coalesce($4, slot_timeline), slot_lsn = coalesce($5::text::pg_lsn, slot_lsn)
              WHERE task_name = $1"
        };
        client
            .update(
                sql,
                None,
                &[
                    name.into(),
                    JsonB(settings.0.clone()).into(),
                    identity.as_ref().map(|i| i.system_id.as_str()).into(),
                    identity.as_ref().map(|i| i.timeline).into(),
                    identity.as_ref().map(|i| i.lsn.as_str()).into(),
                ],
            )
            .unwrap_or_else(|err| internal(format!("could not update task \"{name}\": {err}")));
        record_shapes(client, name);
        let reset = if reload {
            vec![
                "DELETE FROM trempy.task_tables WHERE task_name = $1",
                "UPDATE trempy.task_progress SET slot_created_at = NULL, changes_published = 0, transactions_published = 0, messages_published = 0,
                        last_published_lsn = NULL, last_commit_lsn = NULL, last_publish_at = NULL, last_error = NULL, last_error_at = NULL, error_active = false,
                        phase = NULL, load_started_at = NULL, load_finished_at = NULL
                  WHERE task_name = $1",
            ]
        } else {
            vec!["UPDATE trempy.task_progress SET phase = NULL WHERE task_name = $1 AND phase = 'finished'"]
        };
        for sql in reset {
            client
                .update(sql, None, &[name.into()])
                .unwrap_or_else(|err| internal(format!("could not update task \"{name}\": {err}")));
        }
        if identity.is_some() {
            client
                .update(
                    "UPDATE trempy.task_progress SET slot_created_at = pg_catalog.now() WHERE task_name = $1",
                    None,
                    &[name.into()],
                )
                .unwrap_or_else(|err| internal(format!("could not update task \"{name}\": {err}")));
        }
        if let Some(claim) = claim {
            forget_claim(client, claim);
        }
    });
}

/// A reload of a task without a full load copies nothing: say what it gives up.
fn warn_what_reload_discards(name: &str, names: &TaskNames) {
    let held = read_one::<String>(
        "SELECT confirmed_flush_lsn::text || ' to ' || pg_catalog.pg_current_wal_lsn()::text || ' (' ||
                pg_catalog.pg_size_pretty(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), confirmed_flush_lsn)) || ' of WAL)'
           FROM pg_catalog.pg_replication_slots WHERE slot_name = $1::text::name AND database = pg_catalog.current_database()",
        &[names.slot().as_str().into()],
    );
    let what = held.map_or_else(
        || "the changes committed since its slot was lost".to_owned(),
        |range| format!("the changes its slot still held and had not published (WAL {range})"),
    );
    warning!(
        "reloading cdc task \"{name}\" discards {what}: a cdc task has no full load, so nothing is copied again; the new slot captures what commits from now on"
    );
}

/// Every problem with a settings document, without creating anything: the schema, the semantic
/// checks, what this version does not support, the tables, and the filters and transformations
/// against the source catalog. No rows: the settings are valid for `create_task` (apart from the
/// task name, which `create_task` compares with `task.task_name`).
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn validate_settings(settings: JsonB) -> TableIterator<'static, (name!(path, String), name!(message, String))> {
    let problems = match TaskSettings::read(&settings.0.to_string()) {
        Err(problems) => problems,
        Ok((parsed, mut problems)) => {
            problems.extend(parsed.unsupported());
            problems.extend(Spi::connect(|client| check_tables_and_rules(client, &parsed).problems));
            problems
        }
    };
    TableIterator::new(problems.into_iter().map(|p| (p.path, p.message)))
}

/// What the database says of a settings document: the problems that refuse it, and the
/// warnings a DBA must see when it is accepted.
struct Checked {
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

impl Checked {
    /// Refuses the settings when there is a problem; else says each warning.
    fn enforce(self, name: &str) {
        if !self.problems.is_empty() {
            fail_settings(name, &self.problems, PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "invalid settings");
        }
        for warning in self.warnings {
            warning!("{warning}");
        }
    }
}

/// [`check_tables`], then (for the tables that passed) the filters and transformations against
/// the source catalog, and what each target table needs in the task's mode.
fn check_tables_and_rules(client: &SpiClient<'_>, settings: &TaskSettings) -> Checked {
    let mut warnings = Vec::new();
    let (mut problems, identities) = check_tables(client, settings, &mut warnings);
    for (i, sequence) in settings.sequences.iter().enumerate() {
        let kind = client
            .select(
                "SELECT c.relkind::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                Some(1),
                &[sequence.schema_name.as_str().into(), sequence.sequence_name.as_str().into()],
            )
            .and_then(|t| if t.is_empty() { Ok(None) } else { t.first().get::<String>(1) })
            .unwrap_or_else(|err| internal(format!("could not read the catalog: {err}")));
        let qualified = format!(
            "{}.{}",
            spi::quote_identifier(&sequence.schema_name),
            spi::quote_identifier(&sequence.sequence_name)
        );
        match kind.as_deref() {
            Some("S") => {}
            Some(_) => problems.push(Problem::new(format!("sequences[{i}]"), format!("{qualified} is not a sequence"))),
            None => {
                problems.push(Problem::new(format!("sequences[{i}]"), format!("sequence {qualified} does not exist")))
            }
        }
    }
    let catalog = |schema: &str, table: &str| source_columns(client, schema, table);
    problems.extend(settings.check_rules(&catalog));
    let scd2 = (settings.cdc_mode() == CdcMode::Scd2).then(|| settings.scd2_columns());
    for (i, table) in settings.tables.iter().enumerate() {
        let Some(columns) = catalog(&table.schema_name, &table.table_name) else { continue };
        let Ok((_, plan)) = settings.table_plan(&table.schema_name, &table.table_name, &columns) else { continue };
        let target = format!("{}.{}", plan.target_schema, plan.target_table);
        let full = identities[i].as_deref() == Some("f");
        if !plan.columns.iter().any(|c| c.key) {
            if scd2.is_some() {
                problems.push(Problem::new(
                    format!("tables[{i}]"),
                    format!("target table {target} has no key, and SCD2 keeps the history of each row by its key: add a primary key to the source table (or REPLICA IDENTITY USING INDEX on a unique index), and keep its columns in the transformations"),
                ));
            } else if columns.iter().any(|c| c.key) && !full {
                problems.push(Problem::new(
                    format!("tables[{i}]"),
                    format!("target table {target} has no key after the transformations, and the source's updates and deletes carry only the key: keep the key columns, or run ALTER TABLE … REPLICA IDENTITY FULL on the source table (they then match the whole old row)"),
                ));
            } else if full && plan.reads_the_clock() {
                problems.push(Problem::new(
                    format!("tables[{i}]"),
                    format!("target table {target} has no key, so updates and deletes find their row by its whole old value, which a transformation that reads the time (now) changes: drop that transformation, or give the table a key"),
                ));
            }
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
    Checked { problems, warnings }
}

/// Warns about each filtered table that has TOASTable columns (storage other than plain) and no
/// `REPLICA IDENTITY FULL`: an update that makes a row enter the filter does not carry its
/// unchanged large values, so the applier halts on it when the row is not in the target yet
/// (docs/rules.md, "Unchanged TOAST on filter entry").
fn warn_toast_under_filters(client: &SpiClient<'_>, settings: &TaskSettings) {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for filter in &settings.filters {
        let table = (filter.table_info.schema_name.as_str(), filter.table_info.table_name.as_str());
        if seen.contains(&table) {
            continue;
        }
        seen.push(table);
        let at_risk = client
            .select(
                "SELECT c.relreplident <> 'f' AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attstorage <> 'p')
                   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2",
                Some(1),
                &[table.0.into(), table.1.into()],
            )
            .ok()
            .and_then(|t| if t.is_empty() { None } else { t.first().get::<bool>(1).ok().flatten() })
            .unwrap_or(false);
        if at_risk {
            let qualified = format!("{}.{}", spi::quote_identifier(table.0), spi::quote_identifier(table.1));
            warning!(
                "table {qualified} has filters and columns that can be TOASTed, but not REPLICA IDENTITY FULL: an update that makes a row enter the filter \
                 without changing its large values does not carry them, and the applier halts on it rather than write NULL. \
                 Run ALTER TABLE {qualified} REPLICA IDENTITY FULL to have such updates carry the whole old row"
            );
        }
    }
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
    Some(crate::table_shape::rule_columns(relation))
}

/// The partitioned table among the task's tables that `schema.table` is a partition of
/// (directly or not), if any.
fn listed_ancestor(client: &SpiClient<'_>, settings: &TaskSettings, schema: &str, table: &str) -> Option<String> {
    let qualified = format!("{}.{}", spi::quote_identifier(schema), spi::quote_identifier(table));
    let rows = client
        .select(
            "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_partition_ancestors($1::text::regclass) a
               JOIN pg_catalog.pg_class c ON c.oid = a.relid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE a.relid <> $1::text::regclass",
            None,
            &[qualified.as_str().into()],
        )
        .ok()?;
    for row in rows {
        let (Ok(Some(s)), Ok(Some(t))) = (row.get::<String>(1), row.get::<String>(2)) else { continue };
        if settings.tables.iter().any(|listed| listed.schema_name == s && listed.table_name == t) {
            return Some(format!("{}.{}", spi::quote_identifier(&s), spi::quote_identifier(&t)));
        }
    }
    None
}

/// What a table without a key is replicated as, for a WARNING; `None` when it has a key (a
/// primary key, or a replica identity index) or is `REPLICA IDENTITY FULL` (its updates and
/// deletes match the whole old row on the target).
fn keyless_warning(qualified: &str, identity: &str, has_pk: bool, has_ri_index: bool) -> Option<String> {
    let keyed = match identity {
        "d" => has_pk,
        "i" => has_ri_index,
        "f" => true,
        _ => false,
    };
    (!keyed).then(|| {
        let why = if identity == "n" { "has REPLICA IDENTITY NOTHING" } else { "has no primary key and no replica identity index" };
        format!(
            "{qualified} {why}: TREMpy replicates it insert-only, and while the task's publication includes it PostgreSQL refuses UPDATE and DELETE on it \
             (\"cannot update table … because it does not have a replica identity\"). To replicate updates and deletes, add a primary key, \
             or run ALTER TABLE {qualified} REPLICA IDENTITY FULL (they then match the whole old row on the target)"
        )
    })
}

/// The checks that need the database: every table exists and is a permanent ordinary table.
/// A table without a key is accepted (insert-only, or matched by its whole old row under
/// `REPLICA IDENTITY FULL`); `warnings` says what that means for the insert-only ones. Also
/// returns each table's `relreplident` (`d`, `n`, `f` or `i`; `None` when it does not exist), in
/// the order of the settings' tables, for the rules' checks.
fn check_tables(
    client: &SpiClient<'_>,
    settings: &TaskSettings,
    warnings: &mut Vec<String>,
) -> (Vec<Problem>, Vec<Option<String>>) {
    let mut problems = Vec::new();
    let mut identities = Vec::with_capacity(settings.tables.len());
    let extension_schema = client
        .select("SELECT n.nspname::text FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'trempy'", Some(1), &[])
        .ok()
        .and_then(|t| if t.is_empty() { None } else { t.first().get::<String>(1).ok().flatten() });
    for (i, table) in settings.tables.iter().enumerate() {
        let path = format!("tables[{i}]");
        let qualified =
            format!("{}.{}", spi::quote_identifier(&table.schema_name), spi::quote_identifier(&table.table_name));
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
        identities.push(row.as_ref().map(|(_, _, identity, _, _)| identity.clone()));
        let Some((kind, persistence, identity, has_pk, has_ri_index)) = row else {
            problems.push(Problem::new(path, format!("table {qualified} does not exist")));
            continue;
        };
        if kind != "r" && kind != "p" {
            let what = match kind.as_str() {
                "v" => "a view",
                "m" => "a materialized view",
                "f" => "a foreign table",
                _ => "not an ordinary table",
            };
            problems.push(Problem::new(path, format!("{qualified} is {what}")));
            continue;
        }
        if let Some(root) = listed_ancestor(client, settings, &table.schema_name, &table.table_name) {
            problems.push(Problem::new(
                path,
                format!(
                    "{qualified} is a partition of {root}, which the task replicates already (with all its partitions)"
                ),
            ));
            continue;
        }
        if persistence != "p" {
            problems.push(Problem::new(
                path,
                format!(
                    "{qualified} is unlogged or temporary; its changes are not in the WAL and cannot be replicated"
                ),
            ));
            continue;
        }
        if let Some(warning) = keyless_warning(&qualified, &identity, has_pk, has_ri_index) {
            warnings.push(warning);
        }
        if extension_schema.as_deref() == Some(table.schema_name.as_str()) {
            warnings.push(format!(
                "{qualified} lives in the schema of the trempy extension, among TREMpy's own tables: DROP EXTENSION trempy CASCADE would drop it. \
                 Move it (ALTER TABLE {qualified} SET SCHEMA public), and keep the trempy schema out of the search_path of the roles that create tables"
            ));
        }
    }
    (problems, identities)
}

/// Refuses to create tasks where no worker would ever run them.
fn ensure_runnable_here() {
    let preloaded = read_one::<String>("SELECT pg_catalog.current_setting('shared_preload_libraries')", &[])
        .map(|libs| libs.split(',').any(|l| l.trim().trim_matches('"') == "trempy"))
        .unwrap_or(false);
    if !preloaded {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "trempy is not in shared_preload_libraries, so no worker would run this task".to_owned(),
            Some("Add shared_preload_libraries = 'trempy' and wal_level = logical to postgresql.conf and restart PostgreSQL.".to_owned()),
        );
    }
    // pgoutput's values and the full load's rows travel as UTF-8 text.
    let encoding = read_one::<String>("SELECT pg_catalog.getdatabaseencoding()::text", &[]).unwrap_or_default();
    if encoding != "UTF8" {
        fail(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("this database's encoding is {encoding}: TREMpy replicates UTF-8 databases only"),
            Some("Every value travels as UTF-8 text. Convert the database to UTF-8 (dump, create it WITH ENCODING 'UTF8', restore) to replicate it.".to_owned()),
        );
    }
    let (databases, _) = gucs::databases();
    let here = read_one::<String>("SELECT pg_catalog.current_database()::text", &[]).unwrap_or_default();
    if !databases.contains(&here) {
        let listed = if databases.is_empty() {
            "none".to_owned()
        } else {
            databases.iter().map(|d| format!("\"{d}\"")).collect::<Vec<_>>().join(", ")
        };
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "database \"{here}\" is not in trempy.databases (which lists {listed}), so no worker would run this task"
            ),
            Some(format!(
                "Add it: ALTER SYSTEM SET trempy.databases = '{}'; SELECT pg_reload_conf();",
                databases
                    .iter()
                    .chain(std::iter::once(&here))
                    .map(|d| list_item(d).replace('\'', "''"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        );
    }
}

/// A database name as an item of `trempy.databases` (quoted unless it is a plain lower-case name).
fn list_item(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain { name.to_owned() } else { format!("\"{}\"", name.replace('"', "\"\"")) }
}

fn set_enabled(name: &str, enabled: bool) {
    let updated = Spi::connect_mut(|client| {
        client
            .update(
                "UPDATE trempy.tasks SET enabled = $2, updated_at = now() WHERE task_name = $1 RETURNING 1",
                None,
                &[name.into(), enabled.into()],
            )
            .map(|t| t.len())
            .unwrap_or(0)
    });
    if updated == 0 {
        fail(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("task \"{name}\" does not exist"), None);
    }
}

/// Starts a stopped task; the launcher starts its worker within a second of the commit. A task
/// whose slot is gone, invalidated or from another server cannot resume where it stopped: that
/// is an error naming the remedy (a reload), never a silent new slot.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn start_task(name: &str) {
    let names = task_names(name);
    let (failure, recorded) = read_task(name, "failure, slot_system_id, slot_timeline", |row| {
        let recorded = row.get::<String>(2).ok().flatten().zip(row.get::<i32>(3).ok().flatten());
        (row.get::<String>(1).ok().flatten(), recorded)
    });
    let failure = failure.or_else(|| {
        let (system, timeline) = recorded?;
        Spi::connect(|client| {
            let (here_system, here_timeline) = slot::here(client).unwrap_or_else(|err| internal(err.to_string()));
            if (system.as_str(), timeline) != (here_system.as_str(), here_timeline) {
                return Some(format!(
                    "its replication slot was created on system {system} timeline {timeline}, and this server is system {here_system} timeline {here_timeline} (a promoted standby or a restore)"
                ));
            }
            match slot::find(client, &names).unwrap_or_else(|err| internal(err.to_string())) {
                slot::Found::Missing => Some(format!("its replication slot \"{}\" no longer exists", names.slot())),
                slot::Found::Invalidated => Some(format!("its replication slot \"{}\" was invalidated (max_slot_wal_keep_size)", names.slot())),
                slot::Found::Usable(_) | slot::Found::Claimed => None,
            }
        })
    });
    if let Some(failure) = failure {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("task \"{name}\" cannot resume: {failure}"),
            Some(format!(
                "Changes committed since it last published may not have been captured. \
                 SELECT trempy.update_task('{name}', <its settings with task.start_mode \"reload\">) starts it over (a task with a full load copies its tables again)."
            )),
        );
    }
    set_enabled(name, true);
}

/// Stops a task: its worker exits after its current batch. The slot is kept (and keeps WAL)
/// so that `start_task` resumes exactly where it stopped.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn stop_task(name: &str) {
    set_enabled(name, false);
}

/// Drops a task: stops its worker, drops its replication slot and publication (by their exact
/// names, never another task's), and deletes its rows. It cannot run inside a transaction block
/// (a dropped slot cannot be rolled back). A slot still in use after 30 s is an error, never left
/// behind. The task's RabbitMQ queues are left for the applier to drain; delete them with
/// RabbitMQ's tools once they are empty.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn drop_task(name: &str) {
    let names = task_names(name);
    refuse_in_transaction_block("trempy.drop_task", "It drops the task's replication slot.");
    let task_id = Spi::get_one_with_args::<i32>(
        "SELECT task_id FROM trempy.tasks WHERE task_name = $1 FOR UPDATE",
        &[name.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| fail(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("task \"{name}\" does not exist"), None));
    stop_worker(name, task_id);
    Spi::connect_mut(|client| {
        slot::drop_slot_and_publication(client, &names)
            .unwrap_or_else(|err| fail(PgSqlErrorCode::ERRCODE_OBJECT_IN_USE, err.to_string(), None));
        client
            .update("DELETE FROM trempy.tasks WHERE task_name = $1", None, &[name.into()])
            .unwrap_or_else(|err| internal(format!("could not delete task \"{name}\": {err}")));
        client
            .update("SELECT trempy.forget_shapes()", None, &[])
            .unwrap_or_else(|err| internal(format!("could not forget task \"{name}\"'s table shapes: {err}")));
    });
}

/// Terminates the task's worker and holds its advisory lock until this transaction ends, so
/// that no new worker can start for the task meanwhile.
fn stop_worker(name: &str, task_id: i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let locked = read_one::<bool>(
            "SELECT pg_catalog.pg_try_advisory_xact_lock($1, $2)",
            &[worker::LOCK_CLASS.into(), task_id.into()],
        )
        .unwrap_or(false);
        if locked {
            return;
        }
        if Instant::now() > deadline {
            fail(
                PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
                format!("the worker of task \"{name}\" did not stop within 30 seconds"),
                None,
            );
        }
        read_one::<bool>("SELECT pg_catalog.pg_terminate_backend(trempy.worker_pid($1))", &[task_id.into()]);
        read_one::<String>("SELECT pg_catalog.pg_sleep(0.05::float8)::text", &[]);
    }
}
