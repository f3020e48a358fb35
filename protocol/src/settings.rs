//! Task settings: the original TREMpy's `settings.json` format, parsed strictly and validated.
//!
//! [`TaskSettings::parse`] turns JSON text into typed settings or a list of [`Problem`]s, each
//! naming the offending field by its path (`task.cdc_settings.mode`, `tables[1].priority`).
//! Unknown keys are errors. [`TaskSettings::unsupported`] lists the valid settings that this
//! version does not implement yet, so that nothing is ever accepted silently and then ignored.
//! Checks that need the database (tables exist, have a key) live in the extension; the
//! checks of filters and transformations against the source columns are here too
//! ([`TaskSettings::check_rules`]), given a catalog lookup.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::filter::{FilterRule, RowFilter};
use crate::names;
use crate::transform::{TablePlan, TransformRule};

/// One problem with a task's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: a path into the settings document, such as `tables[0].priority`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// A whole task's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSettings {
    /// The `task` section.
    pub task: TaskSection,
    /// The `error_handling` section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_handling: Option<ErrorHandling>,
    /// Source tables.
    pub tables: Vec<TableRef>,
    /// Row filters ([`crate::filter`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterRule>,
    /// Transformations ([`crate::transform`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transformations: Vec<TransformRule>,
    /// Sequences whose values the target gets ([`crate::sequence`]), besides those owned by
    /// the tables' identity and serial columns (always included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sequences: Vec<SequenceRef>,
}

/// One entry of `sequences`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceRef {
    /// Schema, unquoted, as in the catalog.
    pub schema_name: String,
    /// Sequence, unquoted, as in the catalog.
    pub sequence_name: String,
}

/// `table_info` of a filter or a transformation: the source table it applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableInfo {
    /// Schema, unquoted, as in the catalog.
    pub schema_name: String,
    /// Table, unquoted, as in the catalog.
    pub table_name: String,
}

/// A source column as the catalog describes it, in table order (dropped columns left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDesc {
    /// Column name.
    pub name: String,
    /// The type as `format_type(atttypid, atttypmod)` prints it: `integer`, `numeric(10,2)`,
    /// `timestamp(3) without time zone`, `"My Schema".mood`, `text[]`.
    pub type_name: String,
    /// Part of the replica identity (the key).
    pub key: bool,
    /// `NOT NULL`.
    pub not_null: bool,
}

/// The `task` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSection {
    /// Must equal the name given to `trempy.create_task`.
    pub task_name: String,
    /// What to replicate.
    pub replication_type: ReplicationType,
    /// Seconds between polls of the source when idle. Absent: `trempy.poll_interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u32>,
    /// `reload` or `continue` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_mode: Option<StartMode>,
    /// Create missing target tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_table_if_not_exists: Option<bool>,
    /// Full-load options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_load_settings: Option<FullLoadSettings>,
    /// CDC options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdc_settings: Option<CdcSettings>,
    /// SCD2 column names, where the original engine reads them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scd2_settings: Option<Scd2Settings>,
    /// Injected by the original engine into its own metadata; accepted and ignored, because
    /// TREMpy derives every object name from `task_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_id: Option<String>,
}

/// `task.replication_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicationType {
    /// Copy the tables once.
    FullLoad,
    /// Stream changes.
    Cdc,
    /// Copy, then stream.
    FullLoadAndCdc,
}

/// `task.start_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartMode {
    /// Start over.
    Reload,
    /// Resume.
    Continue,
}

/// `task.full_load_settings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullLoadSettings {
    /// Drop and recreate target tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recreate_table_if_exists: Option<bool>,
    /// Truncate target tables before loading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate_before_insert: Option<bool>,
}

/// `task.cdc_settings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdcSettings {
    /// How changes are applied. Absent: `default`, as in the original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<CdcMode>,
    /// SCD2 column names, where the original's UI and samples put them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scd2_settings: Option<Scd2Settings>,
}

/// `task.cdc_settings.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CdcMode {
    /// Plain INSERT / UPDATE / DELETE.
    Default,
    /// INSERT … ON CONFLICT DO UPDATE; DELETE by key.
    Upsert,
    /// Slowly changing dimension, type 2.
    Scd2,
}

/// SCD2 column names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scd2Settings {
    /// Default `scd_start_date`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_date_column_name: Option<String>,
    /// Default `scd_end_date`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_date_column_name: Option<String>,
    /// Default `scd_current`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_column_name: Option<String>,
}

/// The SCD2 column names in effect ([`TaskSettings::scd2_columns`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scd2Columns {
    /// Start of a version's validity (`timestamptz`, part of the target key).
    pub start: String,
    /// End of a version's validity (`timestamptz`, NULL while current).
    pub end: String,
    /// True on the current version (`boolean`).
    pub current: String,
}

/// `error_handling`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorHandling {
    /// Stop the task when an insert fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_if_insert_error: Option<bool>,
    /// Stop the task when an update fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_if_update_error: Option<bool>,
    /// Stop the task when a delete fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_if_delete_error: Option<bool>,
    /// Stop the task when an upsert fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_if_upsert_error: Option<bool>,
    /// Stop the task when an SCD2 operation fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_if_scd2_error: Option<bool>,
}

/// One entry of `tables`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableRef {
    /// Schema, unquoted, as in the catalog.
    pub schema_name: String,
    /// Table, unquoted, as in the catalog.
    pub table_name: String,
    /// 0 (highest) to 4 (lowest).
    pub priority: u8,
    /// The table's OID at the source, added by the decoding worker when it publishes the
    /// settings (never by users): the settings name each table as it is *now*, while the
    /// stream behind them may still carry changes made under an older name, before a rename
    /// whose schema change is further on. Rules bind to the table by this id, so they keep
    /// applying to those changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relid: Option<u32>,
}

/// Highest allowed `priority` number (LOWEST).
pub const MAX_PRIORITY: u8 = 4;

impl TaskSettings {
    /// The (schema, table) the settings name the source relation `relid` by, when they know its
    /// OID ([`TableRef::relid`]).
    pub fn table_of(&self, relid: u32) -> Option<(&str, &str)> {
        self.tables.iter().find(|t| t.relid == Some(relid)).map(|t| (t.schema_name.as_str(), t.table_name.as_str()))
    }

    /// Parses settings from JSON text and checks everything that needs no database.
    ///
    /// A document that does not match the schema yields the first such problem (with its path);
    /// a document that matches yields every semantic problem at once.
    pub fn parse(json: &str) -> Result<Self, Vec<Problem>> {
        let (settings, problems) = Self::read(json)?;
        if problems.is_empty() { Ok(settings) } else { Err(problems) }
    }

    /// Reads a document that matches the schema (else its one problem), with its semantic
    /// problems: for a caller that lists every problem, those the settings have as a whole and
    /// those only the database can see.
    pub fn read(json: &str) -> Result<(Self, Vec<Problem>), Vec<Problem>> {
        if !json.trim_start().starts_with('{') {
            return Err(vec![Problem::new("", "settings must be a JSON object")]);
        }
        let mut de = serde_json::Deserializer::from_str(json);
        let settings: TaskSettings = serde_path_to_error::deserialize(&mut de).map_err(|err| {
            let path = err.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let message = err.into_inner().to_string();
            // serde_json appends "at line L column C", meaningless for a jsonb the server reformatted
            let message = message.split(" at line ").next().unwrap_or_default().to_owned();
            vec![Problem::new(path, message)]
        })?;
        let problems = settings.problems();
        Ok((settings, problems))
    }

    /// Every semantic problem (the schema itself is enforced by parsing).
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Err(err) = names::validate_task_name(&self.task.task_name) {
            problems.push(Problem::new("task.task_name", err.message()));
        }
        if self.task.interval_seconds == Some(0) {
            problems.push(Problem::new("task.interval_seconds", "must be greater than 0"));
        }
        if self.tables.is_empty() {
            problems.push(Problem::new("tables", "at least one table is required"));
        }
        for (i, table) in self.tables.iter().enumerate() {
            if table.schema_name.is_empty() {
                problems.push(Problem::new(format!("tables[{i}].schema_name"), "must not be empty"));
            }
            if table.table_name.is_empty() {
                problems.push(Problem::new(format!("tables[{i}].table_name"), "must not be empty"));
            }
            if table.priority > MAX_PRIORITY {
                problems.push(Problem::new(
                    format!("tables[{i}].priority"),
                    format!("{} is out of range; use 0 (highest) to {MAX_PRIORITY} (lowest)", table.priority),
                ));
            }
            if let Some(first) = self.tables[..i]
                .iter()
                .position(|t| t.schema_name == table.schema_name && t.table_name == table.table_name)
            {
                problems.push(Problem::new(format!("tables[{i}]"), format!("duplicate of tables[{first}]")));
            }
        }
        for (i, sequence) in self.sequences.iter().enumerate() {
            if sequence.schema_name.is_empty() {
                problems.push(Problem::new(format!("sequences[{i}].schema_name"), "must not be empty"));
            }
            if sequence.sequence_name.is_empty() {
                problems.push(Problem::new(format!("sequences[{i}].sequence_name"), "must not be empty"));
            }
            if let Some(first) = self.sequences[..i].iter().position(|s| s == sequence) {
                problems.push(Problem::new(format!("sequences[{i}]"), format!("duplicate of sequences[{first}]")));
            }
        }
        problems.extend(self.rule_table_problems());
        for (i, filter) in self.filters.iter().enumerate() {
            problems.extend(filter.shape_problems(i));
        }
        for (i, transformation) in self.transformations.iter().enumerate() {
            problems.extend(transformation.shape_problems(i));
        }
        for (path, scd2) in self.scd2_sections() {
            let names = [
                ("start_date_column_name", &scd2.start_date_column_name),
                ("end_date_column_name", &scd2.end_date_column_name),
                ("current_column_name", &scd2.current_column_name),
            ];
            for (key, value) in names {
                if value.as_deref() == Some("") {
                    problems.push(Problem::new(format!("{path}.{key}"), "must not be empty"));
                }
            }
        }
        let sections: Vec<&Scd2Settings> = self.scd2_sections().map(|(_, s)| s).collect();
        if let [top, nested] = sections[..] {
            let pairs = [
                ("start_date_column_name", &top.start_date_column_name, &nested.start_date_column_name),
                ("end_date_column_name", &top.end_date_column_name, &nested.end_date_column_name),
                ("current_column_name", &top.current_column_name, &nested.current_column_name),
            ];
            for (key, a, b) in pairs {
                if let (Some(a), Some(b)) = (a, b)
                    && a != b
                {
                    problems.push(Problem::new(
                        format!("task.cdc_settings.scd2_settings.{key}"),
                        format!("{b:?} differs from task.scd2_settings.{key} {a:?}; both places are read, so give the name in one of them only (or the same in both)"),
                    ));
                }
            }
        }
        let scd = self.scd2_columns();
        if scd.start == scd.end || scd.start == scd.current || scd.end == scd.current {
            problems.push(Problem::new(
                "task.scd2_settings",
                "the start, end and current SCD2 columns need three different names",
            ));
        }
        problems
    }

    /// Every filter and transformation must name a table listed in `tables`.
    fn rule_table_problems(&self) -> Vec<Problem> {
        let listed = |info: &TableInfo| {
            self.tables.iter().any(|t| t.schema_name == info.schema_name && t.table_name == info.table_name)
        };
        let infos = self
            .filters
            .iter()
            .map(|f| ("filters", &f.table_info))
            .enumerate()
            .chain(self.transformations.iter().map(|t| ("transformations", &t.table_info)).enumerate());
        infos
            .filter(|(_, (_, info))| !listed(info))
            .map(|(i, (list, info))| {
                Problem::new(
                    format!("{list}[{i}].table_info"),
                    format!("table {}.{} is not listed in tables", info.schema_name, info.table_name),
                )
            })
            .collect()
    }

    /// The filters and transformations of one source table, each with its index in its list.
    #[allow(clippy::type_complexity)]
    fn rules_of(&self, schema: &str, table: &str) -> (Vec<(usize, &FilterRule)>, Vec<(usize, &TransformRule)>) {
        let of = |info: &TableInfo| info.schema_name == schema && info.table_name == table;
        let filters = self.filters.iter().enumerate().filter(|(_, f)| of(&f.table_info)).collect();
        let transformations = self.transformations.iter().enumerate().filter(|(_, t)| of(&t.table_info)).collect();
        (filters, transformations)
    }

    /// Checks every filter and transformation against the source columns. `catalog` returns a
    /// table's columns, or `None` when the table does not exist. Also reports the checks that
    /// need no catalog, and two source tables that would land in the same target table.
    pub fn check_rules(&self, catalog: &dyn Fn(&str, &str) -> Option<Vec<ColumnDesc>>) -> Vec<Problem> {
        let mut problems = self.rule_table_problems();
        let mut targets: Vec<(String, String)> = Vec::with_capacity(self.tables.len());
        for (j, table) in self.tables.iter().enumerate() {
            let (filters, transformations) = self.rules_of(&table.schema_name, &table.table_name);
            let mut target = (table.schema_name.clone(), table.table_name.clone());
            if !filters.is_empty() || !transformations.is_empty() {
                match catalog(&table.schema_name, &table.table_name) {
                    None => problems.push(Problem::new(
                        format!("tables[{j}]"),
                        format!(
                            "table {}.{} does not exist, so its filters and transformations cannot be checked",
                            table.schema_name, table.table_name
                        ),
                    )),
                    Some(columns) => match self.table_plan(&table.schema_name, &table.table_name, &columns) {
                        Ok((_, plan)) => target = (plan.target_schema, plan.target_table),
                        Err(more) => problems.extend(more),
                    },
                }
            }
            if let Some(first) = targets.iter().position(|t| *t == target) {
                problems.push(Problem::new(
                    format!("tables[{j}]"),
                    format!("replicates into {}.{}, the same target table as tables[{first}]", target.0, target.1),
                ));
            }
            targets.push(target);
        }
        problems
    }

    /// What the applier needs for one source table: its compiled filters (`None` without any)
    /// and its transformation plan (the identity without any). `columns` are the source columns.
    pub fn table_plan(
        &self,
        schema: &str,
        table: &str,
        columns: &[ColumnDesc],
    ) -> Result<(Option<RowFilter>, TablePlan), Vec<Problem>> {
        let (filters, transformations) = self.rules_of(schema, table);
        let filter = if filters.is_empty() { Ok(None) } else { RowFilter::compile(columns, &filters).map(Some) };
        let plan = if transformations.is_empty() {
            Ok(TablePlan::identity(schema, table, columns))
        } else {
            TablePlan::compile(schema, table, columns, &transformations)
        };
        match (filter, plan) {
            (Ok(filter), Ok(plan)) => Ok((filter, plan)),
            (Err(mut a), Err(b)) => {
                a.extend(b);
                Err(a)
            }
            (Err(a), _) | (_, Err(a)) => Err(a),
        }
    }

    fn scd2_sections(&self) -> impl Iterator<Item = (&'static str, &Scd2Settings)> {
        let top = self.task.scd2_settings.as_ref().map(|s| ("task.scd2_settings", s));
        let nested = self
            .task
            .cdc_settings
            .as_ref()
            .and_then(|c| c.scd2_settings.as_ref())
            .map(|s| ("task.cdc_settings.scd2_settings", s));
        top.into_iter().chain(nested)
    }

    /// True when the task copies its tables (`full_load` or `full_load_and_cdc`).
    pub fn copies(&self) -> bool {
        matches!(self.task.replication_type, ReplicationType::FullLoad | ReplicationType::FullLoadAndCdc)
    }

    /// True when the task streams changes (`cdc` or `full_load_and_cdc`).
    pub fn streams(&self) -> bool {
        matches!(self.task.replication_type, ReplicationType::Cdc | ReplicationType::FullLoadAndCdc)
    }

    /// The start mode in effect (`continue` when absent, as in the original).
    pub fn start_mode(&self) -> StartMode {
        self.task.start_mode.unwrap_or(StartMode::Continue)
    }

    /// How target tables are prepared before their full load.
    pub fn prepare(&self) -> crate::envelope::Prepare {
        let full = self.task.full_load_settings.as_ref();
        crate::envelope::Prepare {
            create: self.task.create_table_if_not_exists == Some(true),
            recreate: full.and_then(|f| f.recreate_table_if_exists) == Some(true),
            truncate: full.and_then(|f| f.truncate_before_insert) == Some(true),
        }
    }

    /// The tables in load order: ascending priority, ties in list order.
    pub fn tables_in_load_order(&self) -> Vec<&TableRef> {
        let mut tables: Vec<&TableRef> = self.tables.iter().collect();
        tables.sort_by_key(|t| t.priority);
        tables
    }

    /// The CDC mode in effect (`default` when absent, as in the original).
    pub fn cdc_mode(&self) -> CdcMode {
        self.task.cdc_settings.as_ref().and_then(|c| c.mode).unwrap_or(CdcMode::Default)
    }

    /// Valid settings that this version does not implement yet. Each is an error for
    /// `create_task`: TREMpy never accepts a setting and then ignores it.
    pub fn unsupported(&self) -> Vec<Problem> {
        // Every setting is implemented: modes (default, upsert, scd2), filters, transformations,
        // and `error_handling` (the applier's error policy: every flag, either value).
        Vec::new()
    }

    /// The SCD2 column names in effect: `task.cdc_settings.scd2_settings` or
    /// `task.scd2_settings` (both places are read; [`TaskSettings::problems`] rejects two that
    /// differ), each name defaulting to `scd_start_date`, `scd_end_date`, `scd_current`.
    pub fn scd2_columns(&self) -> Scd2Columns {
        let pick = |get: fn(&Scd2Settings) -> &Option<String>, default: &str| {
            self.scd2_sections().find_map(|(_, s)| get(s).clone()).unwrap_or_else(|| default.to_owned())
        };
        Scd2Columns {
            start: pick(|s| &s.start_date_column_name, "scd_start_date"),
            end: pick(|s| &s.end_date_column_name, "scd_end_date"),
            current: pick(|s| &s.current_column_name, "scd_current"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{ "task": {"task_name": "orders_sync", "replication_type": "cdc", "cdc_settings": {"mode": "upsert"}},
        "tables": [{"schema_name": "public", "table_name": "orders", "priority": 0}] }"#;

    fn first_problem(json: &str) -> String {
        TaskSettings::parse(json).unwrap_err()[0].to_string()
    }

    #[test]
    fn the_fuzz_seeds_are_the_example_settings() {
        crate::fuzz_seeds::check("settings", &[("good", GOOD.as_bytes().to_vec())]);
    }

    #[test]
    fn read_keeps_the_settings_beside_their_semantic_problems_but_not_a_schema_mismatch() {
        let zero = GOOD.replace("\"cdc_settings\"", "\"interval_seconds\": 0, \"cdc_settings\"");
        let (settings, problems) = TaskSettings::read(&zero).unwrap();
        assert_eq!(settings.tables[0].table_name, "orders");
        assert_eq!(problems.iter().map(|p| p.path.as_str()).collect::<Vec<_>>(), ["task.interval_seconds"]);
        assert_eq!(TaskSettings::parse(&zero).unwrap_err(), problems);
        let mismatch = GOOD.replace("\"priority\": 0", "\"priority\": \"first\"");
        assert_eq!(TaskSettings::read(&mismatch).unwrap_err()[0].path, "tables[0].priority");
    }

    #[test]
    fn good_settings_parse_and_are_supported() {
        let s = TaskSettings::parse(GOOD).unwrap();
        assert_eq!(s.task.task_name, "orders_sync");
        assert_eq!(s.cdc_mode(), CdcMode::Upsert);
        assert!(s.unsupported().is_empty(), "{:?}", s.unsupported());
    }

    #[test]
    fn the_originals_complete_example_parses() {
        let json = r#"{
          "task": { "task_name": "emp_hist_scd2", "replication_type": "full_load_and_cdc", "interval_seconds": 5,
            "start_mode": "reload", "create_table_if_not_exists": true,
            "full_load_settings": { "recreate_table_if_exists": true, "truncate_before_insert": true },
            "cdc_settings": { "mode": "scd2", "scd2_settings": {"start_date_column_name": "valid_from"} },
            "scd2_settings": { "start_date_column_name": "valid_from", "end_date_column_name": "valid_to", "current_column_name": "is_current" } },
          "error_handling": { "stop_if_insert_error": false, "stop_if_update_error": false, "stop_if_delete_error": false,
            "stop_if_upsert_error": false, "stop_if_scd2_error": true },
          "tables": [ { "schema_name": "employees", "table_name": "employee", "priority": 0 },
                      { "schema_name": "employees", "table_name": "salary",   "priority": 2 } ],
          "filters": [
            { "table_info": { "schema_name": "employees", "table_name": "salary" },
              "settings": { "filter_type": "greater_than", "description": "only salaries above 50k", "column_name": "amount", "value": 50000 } },
            { "table_info": { "schema_name": "employees", "table_name": "employee" },
              "settings": { "filter_type": "date_between", "description": "hired in the 90s", "column_name": "hire_date", "lower": "1990-01-01", "upper": "1999-12-31" } } ],
          "transformations": [
            { "table_info": { "schema_name": "employees", "table_name": "employee" },
              "settings": { "transformation_type": "modify_table_name", "description": "target name", "contract": { "target_table_name": "employee_history" }, "priority": 0 } },
            { "table_info": { "schema_name": "employees", "table_name": "salary" },
              "settings": { "transformation_type": "modify_schema_name", "description": "target schema", "contract": { "target_schema_name": "payroll" }, "priority": 0 } },
            { "table_info": { "schema_name": "employees", "table_name": "salary" },
              "settings": { "transformation_type": "modify_column_name", "description": "rename amount",
                            "contract": { "column_name": "amount", "target_column_name": "yearly_amount" }, "priority": 0 } },
            { "table_info": { "schema_name": "employees", "table_name": "employee" },
              "settings": { "transformation_type": "modify_column_value", "description": "upper first name",
                            "contract": { "operation": "uppercase", "column_name": "first_name" }, "priority": 1 } },
            { "table_info": { "schema_name": "employees", "table_name": "employee" },
              "settings": { "transformation_type": "create_column", "description": "full name",
                            "contract": { "operation": "concat", "new_column_name": "full_name", "depends_on": ["first_name", "last_name"], "separator": " " }, "priority": 2 } },
            { "table_info": { "schema_name": "employees", "table_name": "salary" },
              "settings": { "transformation_type": "create_column", "description": "years in band",
                            "contract": { "operation": "date_diff_years", "new_column_name": "years", "depends_on": ["from_date", "to_date"], "round_result": true }, "priority": 3 } } ] }"#;
        let s = TaskSettings::parse(json).unwrap();
        assert!(s.check_rules(&catalog).is_empty(), "{:?}", s.check_rules(&catalog));
        let salary = catalog("employees", "salary").unwrap();
        let (filter, plan) = s.table_plan("employees", "salary", &salary).unwrap();
        assert_eq!(filter.unwrap().columns_used(), vec![1]);
        assert_eq!(
            (plan.target_schema.as_str(), plan.columns[1].name.as_str(), plan.columns[4].name.as_str()),
            ("payroll", "yearly_amount", "years")
        );
        let paths: Vec<String> = s.unsupported().into_iter().map(|p| p.path).collect();
        assert_eq!(s.cdc_mode(), CdcMode::Scd2);
        assert_eq!(
            s.scd2_columns(),
            Scd2Columns { start: "valid_from".into(), end: "valid_to".into(), current: "is_current".into() }
        );
        assert!(!paths.iter().any(|p| p.starts_with("error_handling")), "{paths:?}");
        for supported in [
            "task.cdc_settings.mode",
            "task.scd2_settings",
            "task.cdc_settings.scd2_settings",
            "filters",
            "transformations",
            "task.replication_type",
            "task.start_mode",
            "task.create_table_if_not_exists",
            "task.full_load_settings.recreate_table_if_exists",
        ] {
            assert!(!paths.iter().any(|p| p == supported), "{supported} in {paths:?}");
        }
        assert!(s.copies() && s.streams());
        assert_eq!(s.start_mode(), StartMode::Reload);
        assert_eq!(s.prepare(), crate::envelope::Prepare { create: true, recreate: true, truncate: true });
    }

    #[test]
    fn schema_errors_name_the_field() {
        let cases = [
            (GOOD.replace("\"cdc\"", "\"stream\""), "task.replication_type: unknown variant `stream`"),
            (GOOD.replace("\"upsert\"", "\"merge\""), "task.cdc_settings.mode: unknown variant `merge`"),
            (
                GOOD.replace("\"mode\"", "\"mod\""),
                "task.cdc_settings.mod: unknown field `mod`, expected `mode` or `scd2_settings`",
            ),
            (GOOD.replace("\"priority\": 0", "\"priority\": \"high\""), "tables[0].priority: invalid type"),
            (GOOD.replace(", \"priority\": 0", ""), "tables[0]: missing field `priority`"),
            (GOOD.replace("\"priority\": 0", "\"priority\": -1"), "tables[0].priority: invalid value"),
            (GOOD.replace("\"tables\"", "\"tablez\""), "tablez: unknown field `tablez`"),
            (GOOD.replace("\"task_name\": \"orders_sync\", ", ""), "task: missing field `task_name`"),
            ("[]".to_string(), "settings must be a JSON object"),
        ];
        for (json, expected) in cases {
            let got = first_problem(&json);
            assert!(got.starts_with(expected), "expected {expected:?}, got {got:?}");
        }
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let json = r#"{ "task": {"task_name": "Bad-Name", "replication_type": "cdc", "interval_seconds": 0},
            "tables": [{"schema_name": "", "table_name": "t", "priority": 7},
                       {"schema_name": "", "table_name": "t", "priority": 0}] }"#;
        let problems: Vec<String> = TaskSettings::parse(json).unwrap_err().iter().map(ToString::to_string).collect();
        let expected = [
            "task.task_name: task name \"Bad-Name\" contains 'B'",
            "task.interval_seconds: must be greater than 0",
            "tables[0].schema_name: must not be empty",
            "tables[0].priority: 7 is out of range",
            "tables[1]: duplicate of tables[0]",
        ];
        for e in expected {
            assert!(problems.iter().any(|p| p.starts_with(e)), "{e} missing from {problems:?}");
        }
        let empty = r#"{ "task": {"task_name": "a", "replication_type": "cdc"}, "tables": [] }"#;
        assert_eq!(first_problem(empty), "tables: at least one table is required");
    }

    fn catalog(schema: &str, table: &str) -> Option<Vec<ColumnDesc>> {
        let columns: &[(&str, &str)] = match (schema, table) {
            ("employees", "employee") => &[
                ("emp_no", "integer"),
                ("first_name", "character varying(14)"),
                ("last_name", "character varying(16)"),
                ("hire_date", "date"),
            ],
            ("employees", "salary") => {
                &[("emp_no", "integer"), ("amount", "integer"), ("from_date", "date"), ("to_date", "date")]
            }
            ("public", "orders") => &[("id", "bigint"), ("total", "numeric(12,2)")],
            _ => return None,
        };
        Some(
            columns
                .iter()
                .map(|(n, t)| ColumnDesc {
                    name: (*n).to_owned(),
                    type_name: (*t).to_owned(),
                    key: *n == "emp_no" || *n == "id",
                    not_null: false,
                })
                .collect(),
        )
    }

    fn with_rules(filters: &str, transformations: &str) -> String {
        let body = GOOD.trim_end().strip_suffix('}').unwrap_or_default();
        format!("{body}, \"filters\": [{filters}], \"transformations\": [{transformations}] }}")
    }

    #[test]
    fn the_originals_complete_example_checks_against_its_catalog() {
        let json = with_rules("", "");
        let s = TaskSettings::parse(&json).unwrap();
        assert!(s.check_rules(&catalog).is_empty());
        let (filter, plan) = s.table_plan("public", "orders", &catalog("public", "orders").unwrap()).unwrap();
        assert!(filter.is_none());
        assert_eq!(plan.target_table, "orders");
    }

    #[test]
    fn rules_need_a_listed_table() {
        let f = r#"{"table_info": {"schema_name": "public", "table_name": "other"}, "settings": {"filter_type": "is_null", "description": "", "column_name": "x"}}"#;
        let t = r#"{"table_info": {"schema_name": "public", "table_name": "orders"}, "settings": {"transformation_type": "modify_table_name", "description": "", "contract": {"target_table_name": "o"}, "priority": 0}},
                   {"table_info": {"schema_name": "x", "table_name": "orders"}, "settings": {"transformation_type": "modify_table_name", "description": "", "contract": {"target_table_name": "o"}, "priority": 0}}"#;
        let problems: Vec<String> =
            TaskSettings::parse(&with_rules(f, t)).unwrap_err().iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "filters[0].table_info: table public.other is not listed in tables",
                "transformations[1].table_info: table x.orders is not listed in tables"
            ]
        );
    }

    #[test]
    fn parse_reports_rule_shapes_without_a_catalog() {
        let f = r#"{"table_info": {"schema_name": "public", "table_name": "orders"}, "settings": {"filter_type": "in", "description": "", "column_name": "id", "values": "1,2"}}"#;
        let t = r#"{"table_info": {"schema_name": "public", "table_name": "orders"}, "settings": {"transformation_type": "add_primary_key", "description": "", "contract": {"column_names": "id"}, "priority": 2}}"#;
        let problems: Vec<String> =
            TaskSettings::parse(&with_rules(f, t)).unwrap_err().iter().map(ToString::to_string).collect();
        for expected in [
            "filters[0].settings.values: must be a JSON list",
            "transformations[0].settings.priority: add_primary_key is structural",
            "transformations[0].settings.contract.column_names: must be a JSON list",
        ] {
            assert!(problems.iter().any(|p| p.starts_with(expected)), "{expected} missing from {problems:?}");
        }
        let bad_type = with_rules(
            r#"{"table_info": {"schema_name": "public", "table_name": "orders"}, "settings": {"filter_type": "regex", "description": "", "column_name": "id"}}"#,
            "",
        );
        assert!(first_problem(&bad_type).starts_with("filters[0].settings.filter_type: unknown variant `regex`"));
        let missing = with_rules(
            r#"{"table_info": {"schema_name": "public", "table_name": "orders"}, "settings": {"filter_type": "is_null", "column_name": "id"}}"#,
            "",
        );
        assert!(first_problem(&missing).starts_with("filters[0].settings: missing field `description`"));
    }

    #[test]
    fn check_rules_uses_the_catalog() {
        let f = r#"{"table_info": {"schema_name": "public", "table_name": "orders"}, "settings": {"filter_type": "greater_than", "description": "", "column_name": "total", "value": "abc"}}"#;
        let t = r#"{"table_info": {"schema_name": "public", "table_name": "orders"}, "settings": {"transformation_type": "modify_column_value", "description": "", "contract": {"operation": "uppercase", "column_name": "nope"}, "priority": 1}}"#;
        let s = TaskSettings::parse(&with_rules(f, t)).unwrap();
        let problems: Vec<String> = s.check_rules(&catalog).iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("filters[0].settings.value: \"abc\" is not a number"), "{problems:?}");
        assert!(
            problems[1].starts_with(
                "transformations[0].settings.contract.column_name: column \"nope\" does not exist in public.orders"
            ),
            "{problems:?}"
        );
        let missing_table = s.check_rules(&|_: &str, _: &str| None);
        assert_eq!(
            missing_table[0].to_string(),
            "tables[0]: table public.orders does not exist, so its filters and transformations cannot be checked"
        );
    }

    #[test]
    fn table_plan_gives_the_applier_a_filter_and_a_plan() {
        let f = r#"{"table_info": {"schema_name": "public", "table_name": "orders"}, "settings": {"filter_type": "greater_than", "description": "", "column_name": "total", "value": 100}}"#;
        let t = r#"{"table_info": {"schema_name": "public", "table_name": "orders"}, "settings": {"transformation_type": "modify_schema_name", "description": "", "contract": {"target_schema_name": "mart"}, "priority": 0}}"#;
        let s = TaskSettings::parse(&with_rules(f, t)).unwrap();
        let (filter, plan) = s.table_plan("public", "orders", &catalog("public", "orders").unwrap()).unwrap();
        let filter = filter.unwrap();
        assert!(filter.matches(&[Some("1".into()), Some("100.01".into())]));
        assert!(!filter.matches(&[Some("1".into()), Some("100.00".into())]));
        assert_eq!((plan.target_schema.as_str(), plan.target_table.as_str()), ("mart", "orders"));
    }

    #[test]
    fn two_tables_into_one_target_are_reported() {
        let json = r#"{ "task": {"task_name": "t", "replication_type": "cdc"},
            "tables": [{"schema_name": "employees", "table_name": "employee", "priority": 0}, {"schema_name": "employees", "table_name": "salary", "priority": 0}],
            "transformations": [{"table_info": {"schema_name": "employees", "table_name": "salary"},
              "settings": {"transformation_type": "modify_table_name", "description": "", "contract": {"target_table_name": "employee"}, "priority": 0}}] }"#;
        let s = TaskSettings::parse(json).unwrap();
        assert_eq!(
            s.check_rules(&catalog)[0].to_string(),
            "tables[1]: replicates into employees.employee, the same target table as tables[0]"
        );
    }

    #[test]
    fn absent_mode_means_default_and_is_supported() {
        let json = GOOD.replace(", \"cdc_settings\": {\"mode\": \"upsert\"}", "");
        let s = TaskSettings::parse(&json).unwrap();
        assert_eq!(s.cdc_mode(), CdcMode::Default);
        assert!(s.unsupported().is_empty());
        assert_eq!(
            s.scd2_columns(),
            Scd2Columns { start: "scd_start_date".into(), end: "scd_end_date".into(), current: "scd_current".into() }
        );
    }

    #[test]
    fn scd2_names_are_read_in_both_places_and_must_agree() {
        let nested = GOOD.replace(
            "{\"mode\": \"upsert\"}",
            "{\"mode\": \"scd2\", \"scd2_settings\": {\"current_column_name\": \"live\"}}",
        );
        assert_eq!(TaskSettings::parse(&nested).unwrap().scd2_columns().current, "live");
        let top = GOOD.replace(
            "{\"mode\": \"upsert\"}",
            "{\"mode\": \"scd2\"}, \"scd2_settings\": {\"end_date_column_name\": \"until\"}",
        );
        assert_eq!(TaskSettings::parse(&top).unwrap().scd2_columns().end, "until");
        let both = GOOD.replace(
            "{\"mode\": \"upsert\"}",
            "{\"mode\": \"scd2\", \"scd2_settings\": {\"current_column_name\": \"live\"}}, \"scd2_settings\": {\"current_column_name\": \"is_current\"}",
        );
        assert!(first_problem(&both).starts_with("task.cdc_settings.scd2_settings.current_column_name: \"live\" differs from task.scd2_settings.current_column_name"));
        let clash = GOOD.replace(
            "{\"mode\": \"upsert\"}",
            "{\"mode\": \"scd2\", \"scd2_settings\": {\"end_date_column_name\": \"scd_current\"}}",
        );
        assert!(first_problem(&clash).starts_with("task.scd2_settings: the start, end and current"));
    }
}
