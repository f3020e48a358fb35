//! The task's filters and transformations (and the SCD2 columns), applied to the stream.
//!
//! Per source relation, the task's settings compile into a [`RowFilter`] and a [`TablePlan`]
//! (cached by relation id and shape, dropped when new settings arrive), and a **target relation**:
//! the plan's target schema, table and columns, plus the three SCD2 columns in `scd2` mode. Every
//! change is rewritten into the target relation's shape before [`crate::apply`] sees it:
//!
//! * insert: dropped unless the new row passes the filter; otherwise transformed.
//! * update whose new row passes the filter: transformed; under a filter it is applied as an
//!   upsert in `default` mode too, because the row may be entering the filter (then it is not in
//!   the target yet) or staying in it.
//! * update whose new row fails the filter: a delete of the target row by key (the row left the
//!   filter, or never was in the target: deleting nothing is harmless). In `scd2` mode that closes
//!   the current version.
//! * delete: applied by key whatever the filter says. Under the default replica identity a
//!   delete carries only the key, so a filter on another column cannot be evaluated; deleting a
//!   row that is not in the target (because the filter kept it out) does nothing. In `default`
//!   mode such deletes are not reported as "found no row".
//! * truncate: of the target table.
//!
//! A filter that reads a column whose value was not sent (unchanged TOAST) takes it from the old
//! row when the change carries it (`REPLICA IDENTITY FULL`); otherwise the row counts as passing.
//!
//! Transformation times (`date_now`, `datetime_now`) are the source commit time in CDC and the
//! copy's snapshot time in a full load, so replays compute the same values.

use std::collections::HashMap;

use tokio_postgres::Client;
use trempy_protocol::copytext;
use trempy_protocol::envelope::{Change, Column, Relation};
use trempy_protocol::filter::RowFilter;
use trempy_protocol::settings::{CdcMode, ColumnDesc, Scd2Columns, TaskSettings};
use trempy_protocol::transform::{Context, TablePlan};

use crate::apply::Mode;
use crate::error::{Error, ErrorKind, Operation};
use crate::ident::qualified;
use crate::scd2;
use crate::target_catalog::Catalog;

/// One source relation, compiled.
#[derive(Debug)]
struct Mapped {
    /// The source relation it was compiled for (to notice a changed shape).
    source: Relation,
    filter: Option<RowFilter>,
    plan: TablePlan,
    /// Index of the target relation in [`Rules::targets`].
    target: usize,
    /// Neither filtered nor transformed nor SCD2: changes go through untouched.
    passthrough: bool,
}

/// The compiled rules of the task, per source relation.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    mapped: HashMap<u32, Mapped>,
    targets: Vec<Relation>,
}

/// The mode in effect: `upsert` for a stream without settings (appliers before settings travelled
/// in the stream upserted).
pub(crate) fn mode(settings: Option<&TaskSettings>) -> Mode {
    match settings.map(TaskSettings::cdc_mode) {
        Some(CdcMode::Default) => Mode::Default,
        Some(CdcMode::Scd2) => Mode::Scd2,
        Some(CdcMode::Upsert) | None => Mode::Upsert,
    }
}

/// The SCD2 column names, in `scd2` mode.
pub(crate) fn scd2_columns(settings: Option<&TaskSettings>) -> Option<Scd2Columns> {
    (mode(settings) == Mode::Scd2).then(|| settings.map(TaskSettings::scd2_columns)).flatten()
}

fn same_shape(a: &Relation, b: &Relation) -> bool {
    a.schema == b.schema && a.table == b.table && a.columns == b.columns
}

impl Rules {
    /// Forgets everything compiled (new settings).
    pub(crate) fn clear(&mut self) {
        self.mapped.clear();
        self.targets.clear();
    }

    /// Forgets one source relation (its shape changed at the source: see
    /// [`crate::schema_change`]); it is compiled again when next prepared.
    pub(crate) fn forget(&mut self, id: u32) {
        self.mapped.remove(&id);
    }

    /// The target relations (ids are the source relations').
    pub(crate) fn targets(&self) -> &[Relation] {
        &self.targets
    }

    /// The target relation of a source relation, once prepared.
    pub(crate) fn target(&self, id: u32) -> Option<&Relation> {
        self.mapped.get(&id).map(|m| &self.targets[m.target])
    }

    /// Compiles the relations not compiled yet (or whose shape changed), then reads their target
    /// column types (creating missing target tables when `create`).
    pub(crate) async fn prepare(
        &mut self,
        client: &Client,
        catalog: &mut Catalog,
        settings: Option<&TaskSettings>,
        relations: &[Relation],
        create: bool,
    ) -> Result<(), Error> {
        for source in relations {
            if self.mapped.get(&source.id).is_some_and(|m| same_shape(&m.source, source)) {
                continue;
            }
            let (filter, plan, mut target) = compile(settings, source)?;
            tracing::debug!(rel = source.id, source = %qualified(&source.schema, &source.table), target = %qualified(&target.schema, &target.table), create, "relation prepared");
            catalog.resolve(client, std::slice::from_mut(&mut target), create).await?;
            let passthrough = filter.is_none() && !transformed(settings, source) && mode(settings) != Mode::Scd2;
            // The slot of this relation's target, also after it was forgotten (a relation
            // is found in `targets` by its id: there must be one per id).
            let slot = self
                .mapped
                .get(&source.id)
                .map(|m| m.target)
                .or_else(|| self.targets.iter().position(|t| t.id == source.id));
            let index = match slot {
                Some(i) => {
                    self.targets[i] = target;
                    i
                }
                None => {
                    self.targets.push(target);
                    self.targets.len() - 1
                }
            };
            self.mapped.insert(source.id, Mapped { source: source.clone(), filter, plan, target: index, passthrough });
        }
        Ok(())
    }

    /// Rewrites one change into its target relation's shape, with the mode to apply it in.
    pub(crate) fn map(&self, mut change: Change, mode: Mode, commit_time: &str) -> Result<Vec<(Change, Mode)>, Error> {
        let id = match &change {
            Change::Insert { rel, .. } | Change::Update { rel, .. } | Change::Delete { rel, .. } => *rel,
            Change::Truncate { .. } | Change::Schema(_) | Change::Backfill(_) => return Ok(vec![(change, mode)]),
        };
        let m = self
            .mapped
            .get(&id)
            .ok_or_else(|| Error::new(ErrorKind::Envelope, format!("relation {id} is not described")))?;
        if let Change::Update { old: Some(old), new, unchanged, .. } = &mut change {
            fill_unchanged(old, new, unchanged);
        }
        if m.passthrough {
            return Ok(vec![(change, mode)]);
        }
        let table = || qualified(&m.plan.target_schema, &m.plan.target_table);
        let ctx = Context { now: commit_time };
        let operation = match (&change, mode) {
            (_, Mode::Scd2) => Operation::Scd2,
            (Change::Insert { .. }, _) => Operation::Insert,
            (Change::Update { .. }, _) => Operation::Update,
            _ => Operation::Delete,
        };
        // A row the plan cannot compute fails its source transaction (the error policy decides).
        let transform = |row: Vec<Option<String>>, unchanged: &[usize]| {
            m.plan.apply(row, unchanged, &ctx).map_err(|e| {
                Error::new(ErrorKind::Transform, format!("cannot transform a row for {}: {e}", table()))
                    .with_table(table())
                    .with_operation(operation)
            })
        };
        let passes = |row: &[Option<String>]| m.filter.as_ref().is_none_or(|f| f.matches(row));
        // a delete under a filter may find no row: not worth a warning in default mode
        let delete_mode = if mode == Mode::Default && m.filter.is_some() { Mode::Upsert } else { mode };
        Ok(match change {
            Change::Insert { rel, new } => {
                if !passes(&new) {
                    return Ok(Vec::new());
                }
                let (new, _) = transform(new, &[])?;
                vec![(Change::Insert { rel, new }, mode)]
            }
            Change::Update { rel, old, new, unchanged } => {
                let verdict = match &m.filter {
                    None => true,
                    Some(filter) => {
                        let used = filter.columns_used();
                        if used.iter().any(|c| unchanged.contains(c)) {
                            match &old {
                                Some(old)
                                    if used.iter().all(|c| {
                                        !unchanged.contains(c) || old.get(*c).is_some_and(Option::is_some)
                                    }) =>
                                {
                                    let mut probe = new.clone();
                                    for &c in &unchanged {
                                        if let (Some(slot), Some(value)) = (probe.get_mut(c), old.get(c)) {
                                            slot.clone_from(value);
                                        }
                                    }
                                    filter.matches(&probe)
                                }
                                _ => true,
                            }
                        } else {
                            filter.matches(&new)
                        }
                    }
                };
                let old = old.map(|o| transform(o, &[])).transpose()?.map(|(o, _)| o);
                if verdict {
                    let (new, unchanged) = transform(new, &unchanged)?;
                    let mode = if mode == Mode::Default && m.filter.is_some() { Mode::Upsert } else { mode };
                    vec![(Change::Update { rel, old, new, unchanged }, mode)]
                } else {
                    let keys_of = |unchanged: &[usize], row| transform(row, unchanged).map(|(r, _)| r);
                    let row = match old {
                        Some(old) => old,
                        None => keys_of(&unchanged, new)?,
                    };
                    vec![(Change::Delete { rel, old: row }, delete_mode)]
                }
            }
            Change::Delete { rel, old } => {
                let (old, _) = transform(old, &[])?;
                vec![(Change::Delete { rel, old }, delete_mode)]
            }
            Change::Truncate { .. } | Change::Schema(_) | Change::Backfill(_) => vec![(change, mode)],
        })
    }

    /// Filters and transforms one full-load chunk (COPY text) for its target relation; returns
    /// the data and its row count. Untouched when the relation needs nothing.
    pub(crate) fn load_data(
        &self,
        id: u32,
        data: String,
        rows: u64,
        snapshot_time: &str,
    ) -> Result<(String, u64), Error> {
        let m = self
            .mapped
            .get(&id)
            .ok_or_else(|| Error::new(ErrorKind::Envelope, format!("load relation {id} is not described")))?;
        if m.passthrough {
            return Ok((data, rows));
        }
        let table = || qualified(&m.plan.target_schema, &m.plan.target_table);
        let scd2 = self.targets[m.target].columns.len() > m.plan.columns.len();
        let decoded = copytext::rows(&data, m.source.columns.len()).map_err(|e| {
            Error::new(ErrorKind::Envelope, format!("load chunk of {}: {}", table(), e.message())).with_table(table())
        })?;
        drop(data);
        let ctx = Context { now: snapshot_time };
        let mut out = copytext::Writer::with_capacity(decoded.len() * 64);
        for row in decoded {
            if !m.filter.as_ref().is_none_or(|f| f.matches(&row)) {
                continue;
            }
            let (row, _) = m.plan.apply(row, &[], &ctx).map_err(|e| {
                Error::new(ErrorKind::Transform, format!("cannot transform a row for {}: {e}", table()))
                    .with_table(table())
            })?;
            for value in &row {
                out.value(value.as_deref().map(str::as_bytes));
            }
            if scd2 {
                out.value(Some(snapshot_time.as_bytes()));
                out.value(None);
                out.value(Some(b"t"));
            }
            out.end_row();
        }
        let rows = out.rows();
        let bytes = out.take();
        let text = String::from_utf8(bytes).map_err(|_| {
            Error::new(ErrorKind::Transform, format!("a transformed row for {} is not UTF-8", table()))
                .with_table(table())
        })?;
        Ok((text, rows))
    }
}

/// Under `REPLICA IDENTITY FULL` an update carries the whole old row, TOASTed values included:
/// the columns the new row lacks (unchanged TOAST) are taken from it, so the change can be
/// written whole (even as the insert of a row entering a filter). A TOASTed value is never NULL,
/// so a NULL there means the old row does not carry the column (it is outside the identity).
fn fill_unchanged(old: &[Option<String>], new: &mut [Option<String>], unchanged: &mut Vec<usize>) {
    unchanged.retain(|&c| match (old.get(c), new.get_mut(c)) {
        (Some(Some(value)), Some(slot)) => {
            *slot = Some(value.clone());
            false
        }
        _ => true,
    });
}

/// True when the task has transformations for this source table (a modified column keeps its
/// name and source index, so the plan's shape alone cannot tell).
fn transformed(settings: Option<&TaskSettings>, source: &Relation) -> bool {
    let (schema, table) = rules_name(settings, source);
    settings.is_some_and(|s| {
        s.transformations.iter().any(|t| t.table_info.schema_name == schema && t.table_info.table_name == table)
    })
}

/// The name the task's rules know a source relation by: the settings' name for its OID (it may
/// have been renamed since this change was made: see [`TableRef::relid`]), else its own.
///
/// [`TableRef::relid`]: trempy_protocol::settings::TableRef::relid
fn rules_name<'a>(settings: Option<&'a TaskSettings>, source: &'a Relation) -> (&'a str, &'a str) {
    settings.and_then(|s| s.table_of(source.id)).unwrap_or((source.schema.as_str(), source.table.as_str()))
}

/// The filter, plan and target relation of one source relation.
pub(crate) fn compile(
    settings: Option<&TaskSettings>,
    source: &Relation,
) -> Result<(Option<RowFilter>, TablePlan, Relation), Error> {
    let columns: Vec<ColumnDesc> = source
        .columns
        .iter()
        .map(|c| ColumnDesc { name: c.name.clone(), type_name: c.type_name.clone(), key: c.key, not_null: c.not_null })
        .collect();
    let (rules_schema, rules_table) = rules_name(settings, source);
    let (filter, mut plan) = match settings {
        None => (None, TablePlan::identity(&source.schema, &source.table, &columns)),
        Some(settings) => settings.table_plan(rules_schema, rules_table, &columns).map_err(|problems| {
            let list: Vec<String> = problems.iter().map(|p| match rule_name(settings, &p.path) {
                Some(name) => format!("{name}: {p}"),
                None => p.to_string(),
            }).collect();
            let table = qualified(&source.schema, &source.table);
            Error::new(
                ErrorKind::Rules,
                format!(
                    "the task's filters and transformations do not fit {table} as it is now (a column they use was dropped, renamed or changed at the source): {}. \
                     Fix the task's settings at the source with trempy.update_task: the applier takes the new settings from behind this message and applies it under them",
                    list.join("; ")
                ),
            )
            .with_table(table)
        })?,
    };
    // A relation known by another name in the settings (renamed since): its target is still its
    // own name, unless the rules name one; the rename's schema change renames it there.
    if (plan.target_schema.as_str(), plan.target_table.as_str()) == (rules_schema, rules_table) {
        plan.target_schema.clone_from(&source.schema);
        plan.target_table.clone_from(&source.table);
    }
    let mut target_columns: Vec<Column> = plan
        .columns
        .iter()
        .map(|c| {
            let from = c.source.and_then(|i| source.columns.get(i)).filter(|s| s.type_name == c.type_name);
            Column {
                name: c.name.clone(),
                type_name: c.type_name.clone(),
                type_oid: from.map_or(0, |s| s.type_oid),
                key: c.key,
                not_null: c.not_null,
                create_type: from.and_then(|s| s.create_type.clone()),
            }
        })
        .collect();
    if mode(settings) == Mode::Scd2 {
        let names = settings.map(TaskSettings::scd2_columns).unwrap_or_else(unreachable_scd2);
        let timestamptz = "timestamp with time zone";
        target_columns.push(Column {
            name: names.start,
            type_name: timestamptz.into(),
            type_oid: 1184,
            key: true,
            not_null: true,
            create_type: None,
        });
        target_columns.push(Column {
            name: names.end,
            type_name: timestamptz.into(),
            type_oid: 1184,
            key: false,
            not_null: false,
            create_type: None,
        });
        target_columns.push(Column {
            name: names.current,
            type_name: "boolean".into(),
            type_oid: 16,
            key: false,
            not_null: true,
            create_type: None,
        });
        debug_assert_eq!(target_columns.len(), plan.columns.len() + scd2::COLUMNS);
    }
    let target = Relation {
        id: source.id,
        schema: plan.target_schema.clone(),
        table: plan.target_table.clone(),
        columns: target_columns,
    };
    Ok((filter, plan, target))
}

/// The rule a settings path points into, by position, type and description: `filter 0
/// (equals, "only active")`, `transformation 2 (modify_column_value, "upper name")`.
fn rule_name(settings: &TaskSettings, path: &str) -> Option<String> {
    let index = |prefix: &str| path.strip_prefix(prefix)?.split(']').next()?.parse::<usize>().ok();
    if let Some(i) = index("filters[") {
        let f = settings.filters.get(i)?;
        Some(format!("filter {i} ({}, {:?})", f.settings.filter_type.name(), f.settings.description))
    } else if let Some(i) = index("transformations[") {
        let t = settings.transformations.get(i)?;
        Some(format!("transformation {i} ({}, {:?})", t.settings.transformation_type.name(), t.settings.description))
    } else {
        None
    }
}

/// `mode()` is `Scd2` only with settings.
fn unreachable_scd2() -> trempy_protocol::settings::Scd2Columns {
    trempy_protocol::settings::Scd2Columns {
        start: "scd_start_date".into(),
        end: "scd_end_date".into(),
        current: "scd_current".into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn source() -> Relation {
        let col = |name: &str, type_name: &str, key: bool| Column {
            name: name.into(),
            type_name: type_name.into(),
            key,
            ..Column::default()
        };
        Relation {
            id: 7,
            schema: "public".into(),
            table: "emp".into(),
            columns: vec![col("id", "integer", true), col("name", "text", false), col("gender", "text", false)],
        }
    }

    fn settings(mode: &str, rules: &str) -> TaskSettings {
        let json = format!(
            r#"{{ "task": {{"task_name": "t", "replication_type": "cdc", "cdc_settings": {{"mode": "{mode}"}}}},
                "tables": [{{"schema_name": "public", "table_name": "emp", "priority": 0}}] {rules} }}"#
        );
        TaskSettings::parse(&json).unwrap()
    }

    const RULES: &str = r#", "filters": [{"table_info": {"schema_name": "public", "table_name": "emp"},
            "settings": {"filter_type": "equals", "description": "", "column_name": "gender", "value": "F"}}],
        "transformations": [{"table_info": {"schema_name": "public", "table_name": "emp"},
            "settings": {"transformation_type": "modify_column_value", "description": "", "contract": {"operation": "uppercase", "column_name": "name"}, "priority": 1}},
          {"table_info": {"schema_name": "public", "table_name": "emp"},
            "settings": {"transformation_type": "modify_table_name", "description": "", "contract": {"target_table_name": "emp_t"}, "priority": 0}}]"#;

    fn rules(s: &TaskSettings) -> Rules {
        let (filter, plan, target) = compile(Some(s), &source()).unwrap();
        let passthrough = filter.is_none() && !transformed(Some(s), &source()) && mode(Some(s)) != Mode::Scd2;
        let mut r = Rules::default();
        r.targets.push(target);
        r.mapped.insert(7, Mapped { source: source(), filter, plan, target: 0, passthrough });
        r
    }

    fn v(values: &[&str]) -> Vec<Option<String>> {
        values.iter().map(|s| if *s == "-" { None } else { Some((*s).to_owned()) }).collect()
    }

    #[test]
    fn rules_bind_to_a_relation_by_its_oid_when_the_settings_know_it_under_a_newer_name() {
        // the settings name the table `staff` (renamed since); the stream still says `emp`
        let mask = r#", "transformations": [{"table_info": {"schema_name": "public", "table_name": "staff"},
            "settings": {"transformation_type": "modify_column_value", "description": "", "contract": {"operation": "uppercase", "column_name": "name"}, "priority": 1}}]"#;
        let json = format!(
            r#"{{ "task": {{"task_name": "t", "replication_type": "cdc", "cdc_settings": {{"mode": "upsert"}}}},
                "tables": [{{"schema_name": "public", "table_name": "staff", "priority": 0, "relid": 7}}] {mask} }}"#
        );
        let s = TaskSettings::parse(&json).unwrap();
        assert!(transformed(Some(&s), &source()));
        let (_, plan, target) = compile(Some(&s), &source()).unwrap();
        assert_eq!(
            (target.schema.as_str(), target.table.as_str()),
            ("public", "emp"),
            "the target keeps the name until the rename arrives"
        );
        let (row, _) = plan.apply(v(&["1", "ann", "F"]), &[], &Context { now: "2026-01-01 00:00:00+00" }).unwrap();
        assert_eq!(row, v(&["1", "ANN", "F"]));
        // another OID: not bound, so not transformed
        let mut other = source();
        other.id = 8;
        assert!(!transformed(Some(&s), &other));
    }

    #[test]
    fn no_rules_is_a_passthrough_and_scd2_is_not() {
        assert!(rules(&settings("upsert", "")).mapped[&7].passthrough);
        let r = rules(&settings("scd2", ""));
        assert!(!r.mapped[&7].passthrough);
        let names: Vec<&str> = r.targets[0].columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "name", "gender", "scd_start_date", "scd_end_date", "scd_current"]);
        assert!(r.targets[0].columns[3].key);
        let (data, rows) = r.load_data(7, "1\tann\tF\n".into(), 1, "2026-01-01T00:00:00Z").unwrap();
        assert_eq!((data.as_str(), rows), ("1\tann\tF\t2026-01-01T00:00:00Z\t\\N\tt\n", 1));
    }

    #[test]
    fn a_value_transformation_alone_is_not_a_passthrough() {
        let only = r#", "transformations": [{"table_info": {"schema_name": "public", "table_name": "emp"},
            "settings": {"transformation_type": "modify_column_value", "description": "", "contract": {"operation": "trim", "column_name": "name"}, "priority": 1}}]"#;
        let r = rules(&settings("upsert", only));
        assert!(!r.mapped[&7].passthrough);
        let out =
            r.map(Change::Insert { rel: 7, new: v(&["1", " a ", "F"]) }, Mode::Upsert, "2026-01-01T00:00:00Z").unwrap();
        assert!(matches!(&out[0], (Change::Insert { new, .. }, _) if new == &v(&["1", "a", "F"])));
    }

    #[test]
    fn filters_and_transformations_rewrite_changes() {
        let r = rules(&settings("default", RULES));
        assert_eq!(r.targets[0].table, "emp_t");
        let t = "2026-01-01T00:00:00Z";
        assert!(r.map(Change::Insert { rel: 7, new: v(&["1", "ann", "M"]) }, Mode::Default, t).unwrap().is_empty());
        let out = r.map(Change::Insert { rel: 7, new: v(&["1", "ann", "F"]) }, Mode::Default, t).unwrap();
        assert!(matches!(&out[0], (Change::Insert { new, .. }, Mode::Default) if new == &v(&["1", "ANN", "F"])));
        // entering or staying: upsert even in default mode
        let out = r
            .map(Change::Update { rel: 7, old: None, new: v(&["1", "bo", "F"]), unchanged: vec![] }, Mode::Default, t)
            .unwrap();
        assert!(matches!(&out[0], (Change::Update { new, .. }, Mode::Upsert) if new == &v(&["1", "BO", "F"])));
        // leaving: a delete by key
        let out = r
            .map(Change::Update { rel: 7, old: None, new: v(&["1", "bo", "M"]), unchanged: vec![] }, Mode::Default, t)
            .unwrap();
        assert!(matches!(&out[0], (Change::Delete { old, .. }, Mode::Upsert) if old[0] == Some("1".into())));
        // a delete carrying only the key is applied by key
        let out = r.map(Change::Delete { rel: 7, old: v(&["1", "-", "-"]) }, Mode::Default, t).unwrap();
        assert!(matches!(&out[0], (Change::Delete { .. }, Mode::Upsert)));
        let (data, rows) = r.load_data(7, "1\tann\tF\n2\tbob\tM\n".into(), 2, t).unwrap();
        assert_eq!((data.as_str(), rows), ("1\tANN\tF\n", 1));
    }

    #[test]
    fn unchanged_toast_is_filled_from_a_full_old_row() {
        let r = rules(&settings("default", RULES));
        let t = "2026-01-01T00:00:00Z";
        // REPLICA IDENTITY FULL: the old row carries the value; the row is written whole
        let out = r
            .map(
                Change::Update {
                    rel: 7,
                    old: Some(v(&["1", "big", "M"])),
                    new: v(&["1", "-", "F"]),
                    unchanged: vec![1],
                },
                Mode::Default,
                t,
            )
            .unwrap();
        assert!(
            matches!(&out[0], (Change::Update { new, unchanged, .. }, Mode::Upsert) if new == &v(&["1", "BIG", "F"]) && unchanged.is_empty())
        );
        // without it (or without the column in the old row) it stays unchanged: apply updates by key
        let out = r
            .map(Change::Update { rel: 7, old: None, new: v(&["1", "-", "F"]), unchanged: vec![1] }, Mode::Default, t)
            .unwrap();
        assert!(matches!(&out[0], (Change::Update { unchanged, .. }, Mode::Upsert) if unchanged == &vec![1]));
        let out = r
            .map(
                Change::Update { rel: 7, old: Some(v(&["0", "-", "-"])), new: v(&["1", "-", "F"]), unchanged: vec![1] },
                Mode::Default,
                t,
            )
            .unwrap();
        assert!(matches!(&out[0], (Change::Update { unchanged, .. }, Mode::Upsert) if unchanged == &vec![1]));
        // a passthrough table is filled too
        let p = rules(&settings("upsert", ""));
        let out = p
            .map(
                Change::Update {
                    rel: 7,
                    old: Some(v(&["1", "big", "M"])),
                    new: v(&["1", "-", "M"]),
                    unchanged: vec![1],
                },
                Mode::Upsert,
                t,
            )
            .unwrap();
        assert!(
            matches!(&out[0], (Change::Update { new, unchanged, .. }, Mode::Upsert) if new == &v(&["1", "big", "M"]) && unchanged.is_empty())
        );
    }

    #[test]
    fn a_row_the_plan_cannot_compute_is_a_transform_error_of_its_operation() {
        let math = r#", "transformations": [{"table_info": {"schema_name": "public", "table_name": "emp"},
            "settings": {"transformation_type": "modify_column_value", "description": "", "contract": {"operation": "math_expression", "column_name": "id", "expression": "value ^ 400"}, "priority": 1}}]"#;
        let r = rules(&settings("upsert", math));
        let big = "10".to_owned(); // 10^400 overflows double precision
        let err = r.map(Change::Insert { rel: 7, new: v(&[&big, "a", "F"]) }, Mode::Upsert, "t").unwrap_err();
        assert_eq!((err.kind(), err.operation()), (ErrorKind::Transform, Some(Operation::Insert)), "{}", err.message());
        let err = r
            .map(Change::Update { rel: 7, old: None, new: v(&[&big, "a", "F"]), unchanged: vec![] }, Mode::Upsert, "t")
            .unwrap_err();
        assert_eq!((err.kind(), err.operation()), (ErrorKind::Transform, Some(Operation::Update)));
        let err = r.map(Change::Insert { rel: 7, new: v(&[&big, "a", "F"]) }, Mode::Scd2, "t").unwrap_err();
        assert_eq!(err.operation(), Some(Operation::Scd2));
    }

    #[test]
    fn rules_that_no_longer_fit_name_themselves() {
        let s = settings("upsert", RULES);
        let mut gone = source();
        gone.columns.truncate(2); // `gender` was dropped at the source
        let err = compile(Some(&s), &gone).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Rules);
        assert!(
            err.message().contains("filter 0 (equals, \"\"): filters[0].settings.column_name"),
            "{}",
            err.message()
        );
        assert!(err.message().contains("trempy.update_task"), "{}", err.message());
        assert_eq!(
            rule_name(&s, "transformations[1].settings.contract"),
            Some("transformation 1 (modify_table_name, \"\")".to_owned())
        );
        assert_eq!(rule_name(&s, "tables[0]"), None);
        assert_eq!(rule_name(&s, "filters[9].x"), None);
    }

    #[test]
    fn an_unchanged_filter_column_is_taken_from_the_old_row() {
        let r = rules(&settings("upsert", RULES));
        let t = "2026-01-01T00:00:00Z";
        let out = r
            .map(
                Change::Update { rel: 7, old: Some(v(&["1", "a", "M"])), new: v(&["1", "b", "-"]), unchanged: vec![2] },
                Mode::Upsert,
                t,
            )
            .unwrap();
        assert!(matches!(&out[0], (Change::Delete { .. }, _)));
        let out = r
            .map(Change::Update { rel: 7, old: None, new: v(&["1", "b", "-"]), unchanged: vec![2] }, Mode::Upsert, t)
            .unwrap();
        assert!(matches!(&out[0], (Change::Update { unchanged, .. }, _) if unchanged == &vec![2]));
    }
}
