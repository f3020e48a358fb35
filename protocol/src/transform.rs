//! Transformations: the original's `transformations` entries, validated against the source
//! columns and compiled into a [`TablePlan`] that maps a source row to a target row.
//!
//! Transformations of a table run in `priority` order (0 first; ties keep their order in the
//! settings). Each one sees the columns as the earlier ones left them: names, types and values.
//! See `docs/rules.md` for every operation and the rules chosen.

pub mod expr;
pub(crate) mod pgtext;

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use self::expr::{Expression, Mode};
use self::pgtext::{Class, Fields, FormatItem, Stamp};
pub use crate::settings::{ColumnDesc, TableInfo};
use crate::settings::{MAX_PRIORITY, Problem};

/// One entry of `transformations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformRule {
    /// The source table; it must be listed in `tables`.
    pub table_info: TableInfo,
    /// What to do.
    pub settings: TransformSettings,
}

/// `transformations[i].settings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformSettings {
    /// The kind of transformation.
    pub transformation_type: TransformationType,
    /// Free text for people.
    pub description: String,
    /// The operation's parameters; their keys depend on the type and `operation`.
    pub contract: Map<String, Value>,
    /// 0 (first) to 4 (last). Structural transformations must use 0.
    pub priority: u8,
}

/// `transformations[i].settings.transformation_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransformationType {
    /// Adds a column (`literal`, `date_now`, `datetime_now`, `concat`, `date_diff_years`).
    CreateColumn,
    /// Changes a column's values (`format_date`, `uppercase`, `lowercase`, `trim`,
    /// `extract_year`, `extract_month`, `extract_day`, `math_expression`).
    ModifyColumnValue,
    /// Sets the target schema.
    ModifySchemaName,
    /// Sets the target table.
    ModifyTableName,
    /// Renames a column.
    ModifyColumnName,
    /// Adds columns to the target key.
    AddPrimaryKey,
    /// Removes columns from the target key.
    RemovePrimaryKey,
}

impl TransformationType {
    /// The name used in settings.
    pub fn name(self) -> &'static str {
        match self {
            TransformationType::CreateColumn => "create_column",
            TransformationType::ModifyColumnValue => "modify_column_value",
            TransformationType::ModifySchemaName => "modify_schema_name",
            TransformationType::ModifyTableName => "modify_table_name",
            TransformationType::ModifyColumnName => "modify_column_name",
            TransformationType::AddPrimaryKey => "add_primary_key",
            TransformationType::RemovePrimaryKey => "remove_primary_key",
        }
    }

    /// Renames and key changes: they must run at priority 0.
    pub fn is_structural(self) -> bool {
        !matches!(self, TransformationType::CreateColumn | TransformationType::ModifyColumnValue)
    }
}

/// When the transformation runs: the time that `date_now` and `datetime_now` read.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// A `timestamptz` in PostgreSQL text form (an offset is optional; none means UTC): the
    /// source commit time for CDC, the snapshot time for a full load. Replays therefore give
    /// the same values.
    pub now: &'a str,
}

/// One column of the target table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetColumn {
    /// Target column name.
    pub name: String,
    /// Target SQL type, `format_type()` style.
    pub type_name: String,
    /// Part of the target key.
    pub key: bool,
    /// Never NULL.
    pub not_null: bool,
    /// The source column index when the column is a copy of a source column, modified or not.
    pub source: Option<usize>,
}

/// What kind of failure an [`ApplyError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyErrorKind {
    /// The row or the unchanged indexes do not fit the source table the plan was made for.
    RowShape,
    /// [`Context::now`] is not a finite timestamp.
    Context,
    /// A column value is not in the text form of its type.
    Value,
    /// Arithmetic overflow or a result that is not a number.
    Arithmetic,
}

/// A row that could not be transformed. The message never contains row values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyError {
    /// The kind.
    pub kind: ApplyErrorKind,
    /// The target column being computed, if any.
    pub column: Option<String>,
    /// What happened.
    pub message: String,
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.column {
            Some(column) => write!(f, "column {column:?}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ApplyError {}

// ---------------------------------------------------------------------------------------------
// Contracts, checked without a catalog.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Year,
    Month,
    Day,
}

#[derive(Debug, Clone)]
enum ValueOp {
    FormatDate(Vec<FormatItem>),
    Upper,
    Lower,
    Trim,
    Extract(Part),
    Math(Expression),
}

impl ValueOp {
    fn name(&self) -> &'static str {
        match self {
            ValueOp::FormatDate(_) => "format_date",
            ValueOp::Upper => "uppercase",
            ValueOp::Lower => "lowercase",
            ValueOp::Trim => "trim",
            ValueOp::Extract(Part::Year) => "extract_year",
            ValueOp::Extract(Part::Month) => "extract_month",
            ValueOp::Extract(Part::Day) => "extract_day",
            ValueOp::Math(_) => "math_expression",
        }
    }
}

/// A contract, parsed.
#[derive(Debug, Clone)]
enum Op {
    Literal { new: String, text: String, type_name: &'static str },
    Now { new: String, date_only: bool },
    Concat { new: String, inputs: Vec<String>, separator: String },
    DateDiffYears { new: String, start: String, end: String },
    Modify { column: String, op: ValueOp },
    SchemaName(String),
    TableName(String),
    ColumnName { from: String, to: String },
    AddKey(Vec<String>),
    RemoveKey(Vec<String>),
}

const CREATE_OPERATIONS: &str = "literal, date_now, datetime_now, concat, date_diff_years";
const MODIFY_OPERATIONS: &str =
    "format_date, uppercase, lowercase, trim, extract_year, extract_month, extract_day, math_expression";
const LITERAL_TYPES: &str = "smallint, integer, bigint, real, double precision, numeric, character varying, varchar, text, boolean, date, timestamp";

/// Reads a contract's keys, collecting problems.
struct Reader<'a> {
    map: &'a Map<String, Value>,
    path: String,
    problems: Vec<Problem>,
}

impl Reader<'_> {
    fn at(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    fn problem(&mut self, key: &str, message: impl Into<String>) {
        let path = self.at(key);
        self.problems.push(Problem::new(path, message));
    }

    /// Reports keys other than `allowed` and missing `required` ones.
    fn keys(&mut self, what: &str, required: &[&str], optional: &[&str]) {
        let mut expected: Vec<&str> = required.iter().chain(optional).copied().collect();
        expected.sort_unstable();
        for key in self.map.keys() {
            if key != "operation" && !expected.contains(&key.as_str()) {
                let message = format!("is not used by {what} (its keys: {})", expected.join(", "));
                self.problem(key, message);
            }
        }
        for key in required {
            if !self.map.contains_key(*key) {
                self.problem(key, format!("is required by {what}"));
            }
        }
    }

    fn string(&mut self, key: &str, may_be_empty: bool) -> Option<String> {
        match self.map.get(key)? {
            Value::String(s) if s.is_empty() && !may_be_empty => {
                self.problem(key, "must not be empty");
                None
            }
            Value::String(s) => Some(s.clone()),
            _ => {
                self.problem(key, "must be a JSON string");
                None
            }
        }
    }

    fn names(&mut self, key: &str) -> Option<Vec<String>> {
        match self.map.get(key)? {
            Value::Array(items) if items.is_empty() => {
                self.problem(key, "must name at least one column");
                None
            }
            Value::Array(items) => {
                let mut names = Vec::new();
                for (k, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) if !s.is_empty() => names.push(s.clone()),
                        _ => self.problem(&format!("{key}[{k}]"), "must be a column name (a non-empty JSON string)"),
                    }
                }
                (names.len() == items.len()).then_some(names)
            }
            Value::String(_) => {
                self.problem(key, "must be a JSON list of column names, such as [\"id\"]; a plain string is not accepted (the original split it into characters)");
                None
            }
            _ => {
                self.problem(key, "must be a JSON list of column names");
                None
            }
        }
    }
}

/// Parses and checks a `literal`'s value for its type; returns the text to store and the type.
fn literal(value: &Value, value_type: &str) -> Result<(String, &'static str), String> {
    let (type_name, class) = match value_type {
        "smallint" => ("smallint", Class::Int),
        "integer" => ("integer", Class::Int),
        "bigint" => ("bigint", Class::Int),
        "real" => ("real", Class::Float),
        "double precision" => ("double precision", Class::Float),
        "numeric" => ("numeric", Class::Numeric),
        "character varying" | "varchar" => ("character varying", Class::Text),
        "text" => ("text", Class::Text),
        "boolean" => ("boolean", Class::Bool),
        "date" => ("date", Class::Date),
        "timestamp" => ("timestamp without time zone", Class::Timestamp),
        other => return Err(format!("value_type {other:?} is not supported; use one of: {LITERAL_TYPES}")),
    };
    let text = match (value, class) {
        (Value::Null, _) => return Err("must not be null".to_owned()),
        (Value::String(s), _) => s.clone(),
        (Value::Number(n), Class::Int | Class::Float | Class::Numeric) => n.to_string(),
        (Value::Bool(b), Class::Bool) => return Ok(((if *b { "t" } else { "f" }).to_owned(), type_name)),
        (other, _) => return Err(format!("{other} is not a {value_type} value")),
    };
    let bad = || format!("{text:?} is not a valid {value_type}");
    let stored = match class {
        Class::Int => {
            let n: i64 = if pgtext::Num::parse(&text, Class::Int).is_some() {
                text.parse().map_err(|_| bad())?
            } else {
                return Err(bad());
            };
            let (low, high) = match type_name {
                "smallint" => (i64::from(i16::MIN), i64::from(i16::MAX)),
                "integer" => (i64::from(i32::MIN), i64::from(i32::MAX)),
                _ => (i64::MIN, i64::MAX),
            };
            if !(low..=high).contains(&n) {
                return Err(format!("{text} is out of range for {type_name}"));
            }
            n.to_string()
        }
        Class::Float | Class::Numeric => {
            let num = pgtext::Num::parse(&text, class).ok_or_else(bad)?;
            if let pgtext::Num::Finite(_) = num {
                let limit = if type_name == "real" { f64::from(f32::MAX) } else { f64::MAX };
                let magnitude = text.parse::<f64>().map_err(|_| bad())?.abs();
                if class == Class::Float && magnitude > limit {
                    return Err(format!("{text} is out of range for {type_name}"));
                }
                text.clone()
            } else {
                num.to_string()
            }
        }
        Class::Bool => (if pgtext::parse_bool(&text).ok_or_else(bad)? { "t" } else { "f" }).to_owned(),
        Class::Date | Class::Timestamp => {
            let parsed = pgtext::parse_datetime(&text).ok_or_else(bad)?;
            if parsed.has_offset || (class == Class::Date && parsed.has_time) {
                return Err(format!(
                    "{text:?} is not a valid {value_type} (no {})",
                    if parsed.has_offset { "UTC offset" } else { "time of day" }
                ));
            }
            match parsed.stamp {
                Stamp::At(micros) if class == Class::Date => Fields::of(micros).date_text(),
                Stamp::At(micros) => Fields::of(micros).timestamp_text(),
                Stamp::PosInf => "infinity".to_owned(),
                Stamp::NegInf => "-infinity".to_owned(),
            }
        }
        _ => text.clone(),
    };
    Ok((stored, type_name))
}

impl TransformSettings {
    /// Parses the contract; `path` is `transformations[i].settings`.
    fn op(&self, path: &str) -> Result<Op, Vec<Problem>> {
        let mut r = Reader { map: &self.contract, path: format!("{path}.contract"), problems: Vec::new() };
        let kind = self.transformation_type;
        let operation = match kind {
            TransformationType::CreateColumn | TransformationType::ModifyColumnValue => {
                let known =
                    if kind == TransformationType::CreateColumn { CREATE_OPERATIONS } else { MODIFY_OPERATIONS };
                match r.map.get("operation") {
                    None => {
                        r.problem("operation", format!("is required by {}; use one of: {known}", kind.name()));
                        return Err(r.problems);
                    }
                    Some(Value::String(op)) if known.split(", ").any(|k| k == op) => Some(op.clone()),
                    Some(other) => {
                        r.problem(
                            "operation",
                            format!("unknown operation {other} for {}; use one of: {known}", kind.name()),
                        );
                        return Err(r.problems);
                    }
                }
            }
            _ => {
                if r.map.contains_key("operation") {
                    r.problem("operation", format!("is not used by {}", kind.name()));
                }
                None
            }
        };
        let what = match &operation {
            Some(op) => format!("{}/{op}", kind.name()),
            None => kind.name().to_owned(),
        };
        let op = match (kind, operation.as_deref().unwrap_or_default()) {
            (TransformationType::CreateColumn, "literal") => {
                r.keys(&what, &["new_column_name", "value", "value_type"], &[]);
                let new = r.string("new_column_name", false);
                let value_type = r.string("value_type", false);
                let value = match (r.map.get("value"), value_type) {
                    (Some(value), Some(value_type)) => match literal(value, &value_type) {
                        Ok(v) => Some(v),
                        Err(message) => {
                            let key = if message.starts_with("value_type") { "value_type" } else { "value" };
                            r.problem(key, message);
                            None
                        }
                    },
                    _ => None,
                };
                new.zip(value).map(|(new, (text, type_name))| Op::Literal { new, text, type_name })
            }
            (TransformationType::CreateColumn, op @ ("date_now" | "datetime_now")) => {
                r.keys(&what, &["new_column_name"], &[]);
                r.string("new_column_name", false).map(|new| Op::Now { new, date_only: op == "date_now" })
            }
            (TransformationType::CreateColumn, "concat") => {
                r.keys(&what, &["new_column_name", "depends_on", "separator"], &[]);
                let new = r.string("new_column_name", false);
                let inputs = r.names("depends_on");
                let separator = r.string("separator", true);
                match (new, inputs, separator) {
                    (Some(new), Some(inputs), Some(separator)) => Some(Op::Concat { new, inputs, separator }),
                    _ => None,
                }
            }
            (TransformationType::CreateColumn, "date_diff_years") => {
                r.keys(&what, &["new_column_name", "depends_on"], &["round_result"]);
                match r.map.get("round_result") {
                    None | Some(Value::Bool(true)) => {}
                    Some(Value::Bool(false)) => r.problem(
                        "round_result",
                        "false is not supported: date_diff_years gives whole elapsed years (like PostgreSQL's age()); leave round_result out or set it to true",
                    ),
                    Some(_) => r.problem("round_result", "must be true (or left out)"),
                }
                let new = r.string("new_column_name", false);
                let inputs = r.names("depends_on");
                if inputs.as_ref().is_some_and(|i| i.len() != 2) {
                    r.problem("depends_on", "must name exactly two columns: [start, end]");
                }
                match (new, inputs.as_deref()) {
                    (Some(new), Some([start, end])) => {
                        Some(Op::DateDiffYears { new, start: start.clone(), end: end.clone() })
                    }
                    _ => None,
                }
            }
            (TransformationType::ModifyColumnValue, op) => {
                let extra: &[&str] = match op {
                    "format_date" => &["format"],
                    "math_expression" => &["expression"],
                    _ => &[],
                };
                let required: Vec<&str> = std::iter::once("column_name").chain(extra.iter().copied()).collect();
                r.keys(&what, &required, &[]);
                let column = r.string("column_name", false);
                let value_op = match op {
                    "format_date" => {
                        r.string("format", false).and_then(|format| match pgtext::compile_format(&format) {
                            Ok(items) => Some(ValueOp::FormatDate(items)),
                            Err(message) => {
                                r.problem("format", message);
                                None
                            }
                        })
                    }
                    "math_expression" => {
                        r.string("expression", false).and_then(|text| match Expression::parse(&text) {
                            Ok(expression) => Some(ValueOp::Math(expression)),
                            Err(err) => {
                                r.problem("expression", err.to_string());
                                None
                            }
                        })
                    }
                    "uppercase" => Some(ValueOp::Upper),
                    "lowercase" => Some(ValueOp::Lower),
                    "trim" => Some(ValueOp::Trim),
                    "extract_year" => Some(ValueOp::Extract(Part::Year)),
                    "extract_month" => Some(ValueOp::Extract(Part::Month)),
                    _ => Some(ValueOp::Extract(Part::Day)),
                };
                column.zip(value_op).map(|(column, op)| Op::Modify { column, op })
            }
            (TransformationType::ModifySchemaName, _) => {
                r.keys(&what, &["target_schema_name"], &[]);
                r.string("target_schema_name", false).map(Op::SchemaName)
            }
            (TransformationType::ModifyTableName, _) => {
                r.keys(&what, &["target_table_name"], &[]);
                r.string("target_table_name", false).map(Op::TableName)
            }
            (TransformationType::ModifyColumnName, _) => {
                r.keys(&what, &["column_name", "target_column_name"], &[]);
                let from = r.string("column_name", false);
                let to = r.string("target_column_name", false);
                from.zip(to).map(|(from, to)| Op::ColumnName { from, to })
            }
            (TransformationType::AddPrimaryKey, _) => {
                r.keys(&what, &["column_names"], &[]);
                r.names("column_names").map(Op::AddKey)
            }
            (TransformationType::RemovePrimaryKey, _) => {
                r.keys(&what, &["column_names"], &[]);
                r.names("column_names").map(Op::RemoveKey)
            }
            // unreachable: the operation was checked against the known list above
            (TransformationType::CreateColumn, _) => None,
        };
        match op {
            Some(op) if r.problems.is_empty() => Ok(op),
            _ => Err(r.problems),
        }
    }

    /// Priority problems; `path` is `transformations[i].settings`.
    fn priority_problems(&self, path: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.priority > MAX_PRIORITY {
            problems.push(Problem::new(
                format!("{path}.priority"),
                format!("{} is out of range; use 0 (first) to {MAX_PRIORITY} (last)", self.priority),
            ));
        }
        if self.transformation_type.is_structural() && self.priority != 0 {
            problems.push(Problem::new(
                format!("{path}.priority"),
                format!(
                    "{} is structural and must run at priority 0, before every value transformation (which then refers to columns by their new names)",
                    self.transformation_type.name()
                ),
            ));
        }
        problems
    }
}

impl TransformRule {
    /// Problems that need no catalog: priority, contract keys and values, expressions, formats,
    /// literals. `index` is the position in `transformations`.
    pub fn shape_problems(&self, index: usize) -> Vec<Problem> {
        let path = format!("transformations[{index}].settings");
        let mut problems = self.settings.priority_problems(&path);
        if let Err(more) = self.settings.op(&path) {
            problems.extend(more);
        }
        problems
    }
}

// ---------------------------------------------------------------------------------------------
// Plans.

/// How a target value is computed.
#[derive(Debug, Clone)]
enum Node {
    Source(usize),
    Literal(String),
    Now { date_only: bool },
    Concat { inputs: Vec<(Node, Class)>, separator: String },
    DateDiffYears { start: Box<Node>, end: Box<Node> },
    Apply { op: ValueOp, class: Class, input: Box<Node> },
}

impl Node {
    fn sources(&self, out: &mut Vec<usize>) {
        match self {
            Node::Source(i) => out.push(*i),
            Node::Literal(_) | Node::Now { .. } => {}
            Node::Concat { inputs, .. } => inputs.iter().for_each(|(n, _)| n.sources(out)),
            Node::DateDiffYears { start, end } => {
                start.sources(out);
                end.sources(out);
            }
            Node::Apply { input, .. } => input.sources(out),
        }
    }

    /// The source column this is a (possibly modified) copy of.
    fn copy_of(&self) -> Option<usize> {
        match self {
            Node::Source(i) => Some(*i),
            Node::Apply { input, .. } => input.copy_of(),
            _ => None,
        }
    }

    fn uses_now(&self) -> bool {
        match self {
            Node::Now { .. } => true,
            Node::Source(_) | Node::Literal(_) => false,
            Node::Concat { inputs, .. } => inputs.iter().any(|(n, _)| n.uses_now()),
            Node::DateDiffYears { start, end } => start.uses_now() || end.uses_now(),
            Node::Apply { input, .. } => input.uses_now(),
        }
    }
}

/// A column while the plan is being built.
#[derive(Debug, Clone)]
struct Slot {
    name: String,
    type_name: String,
    class: Class,
    key: bool,
    not_null: bool,
    node: Node,
    /// The transformation that created it and its priority.
    created: Option<(usize, u8)>,
}

/// How one source table maps to its target table.
#[derive(Debug, Clone)]
pub struct TablePlan {
    /// Target schema.
    pub target_schema: String,
    /// Target table.
    pub target_table: String,
    /// Target columns, in order.
    pub columns: Vec<TargetColumn>,
    source_columns: usize,
    values: Vec<Node>,
    /// Per target column, the source columns its value reads.
    inputs: Vec<Vec<usize>>,
    identity: bool,
    uses_now: bool,
}

struct Builder<'a> {
    schema: &'a str,
    table: &'a str,
    slots: Vec<Slot>,
    renamed: HashMap<String, (String, usize)>,
    /// Columns that transformations create: name → (index, priority).
    created_later: HashMap<String, (usize, u8)>,
    problems: Vec<Problem>,
}

impl Builder<'_> {
    /// Finds a column by its current name for the transformation `index` at `priority`.
    fn find(&mut self, name: &str, index: usize, priority: u8, path: String) -> Option<usize> {
        if let Some(at) = self.slots.iter().position(|s| s.name == name) {
            if let Some((creator, p)) = self.slots[at].created
                && p == priority
            {
                self.problems.push(Problem::new(
                    path,
                    format!("column {name:?} is created by transformations[{creator}] at the same priority {p}; give transformations[{index}] a larger priority number so that it runs after"),
                ));
                return None;
            }
            return Some(at);
        }
        let mut message =
            format!("column {name:?} does not exist in {}.{} at priority {priority}", self.schema, self.table);
        if let Some((to, by)) = self.renamed.get(name) {
            message.push_str(&format!(": transformations[{by}] renamed it to {to:?}"));
        } else if let Some((by, p)) = self.created_later.get(name) {
            message.push_str(&format!(
                ": it is created by transformations[{by}] at priority {p}, which runs later; a transformation that uses it needs a larger priority number"
            ));
        }
        self.problems.push(Problem::new(path, message));
        None
    }

    /// `add_primary_key` (`add`) or `remove_primary_key`.
    fn set_key(&mut self, names: &[String], add: bool, index: usize, priority: u8, path: &str) {
        for (k, name) in names.iter().enumerate() {
            if let Some(i) = self.find(name, index, priority, format!("{path}.column_names[{k}]")) {
                self.slots[i].key = add;
                // key columns are NOT NULL in PostgreSQL
                self.slots[i].not_null |= add;
            }
        }
    }

    fn create(&mut self, name: &str, path: String, slot: Slot) {
        if self.slots.iter().any(|s| s.name == name) {
            self.problems
                .push(Problem::new(path, format!("column {name:?} already exists in {}.{}", self.schema, self.table)));
        } else {
            self.slots.push(slot);
        }
    }
}

impl TablePlan {
    /// The plan of a table without transformations.
    pub fn identity(schema: &str, table: &str, columns: &[ColumnDesc]) -> TablePlan {
        let slots = columns.iter().enumerate().map(|(i, c)| source_slot(i, c)).collect();
        TablePlan::from_slots(schema.to_owned(), table.to_owned(), columns.len(), slots)
    }

    /// Compiles this table's transformations. `rules` pairs each with its index in
    /// `settings.transformations` (for problem paths). Every problem is reported.
    pub fn compile(
        schema: &str,
        table: &str,
        columns: &[ColumnDesc],
        rules: &[(usize, &TransformRule)],
    ) -> Result<TablePlan, Vec<Problem>> {
        let mut ordered: Vec<(usize, &TransformRule)> = rules.to_vec();
        ordered.sort_by_key(|(_, rule)| rule.settings.priority); // stable: ties keep their order
        let mut b = Builder {
            schema,
            table,
            slots: columns.iter().enumerate().map(|(i, c)| source_slot(i, c)).collect(),
            renamed: HashMap::new(),
            created_later: HashMap::new(),
            problems: Vec::new(),
        };
        let mut parsed = Vec::new();
        for (index, rule) in &ordered {
            let path = format!("transformations[{index}].settings");
            b.problems.extend(rule.settings.priority_problems(&path));
            match rule.settings.op(&path) {
                Ok(op) => {
                    if let Op::Literal { new, .. }
                    | Op::Now { new, .. }
                    | Op::Concat { new, .. }
                    | Op::DateDiffYears { new, .. } = &op
                    {
                        b.created_later.entry(new.clone()).or_insert((*index, rule.settings.priority));
                    }
                    parsed.push((*index, rule.settings.priority, format!("{path}.contract"), op));
                }
                Err(problems) => b.problems.extend(problems),
            }
        }
        let (mut target_schema, mut target_table) = (None::<(String, usize)>, None::<(String, usize)>);
        for (index, priority, path, op) in parsed {
            let at = |key: &str| format!("{path}.{key}");
            let created = Some((index, priority));
            match op {
                Op::Literal { new, text, type_name } => {
                    let slot = Slot {
                        name: new.clone(),
                        type_name: type_name.to_owned(),
                        class: Class::of(type_name),
                        key: false,
                        not_null: false,
                        node: Node::Literal(text),
                        created,
                    };
                    b.create(&new, at("new_column_name"), slot);
                }
                Op::Now { new, date_only } => {
                    let type_name = if date_only { "date" } else { "timestamp without time zone" };
                    let slot = Slot {
                        name: new.clone(),
                        type_name: type_name.to_owned(),
                        class: Class::of(type_name),
                        key: false,
                        not_null: false,
                        node: Node::Now { date_only },
                        created,
                    };
                    b.create(&new, at("new_column_name"), slot);
                }
                Op::Concat { new, inputs, separator } => {
                    let found: Vec<Option<usize>> = inputs
                        .iter()
                        .enumerate()
                        .map(|(k, name)| b.find(name, index, priority, at(&format!("depends_on[{k}]"))))
                        .collect();
                    if let Some(found) = found.into_iter().collect::<Option<Vec<usize>>>() {
                        let inputs = found.iter().map(|&i| (b.slots[i].node.clone(), b.slots[i].class)).collect();
                        let slot = Slot {
                            name: new.clone(),
                            type_name: "text".to_owned(),
                            class: Class::Text,
                            key: false,
                            not_null: false,
                            node: Node::Concat { inputs, separator },
                            created,
                        };
                        b.create(&new, at("new_column_name"), slot);
                    }
                }
                Op::DateDiffYears { new, start, end } => {
                    let mut ends = Vec::new();
                    for (k, name) in [start, end].iter().enumerate() {
                        let path = at(&format!("depends_on[{k}]"));
                        let Some(i) = b.find(name, index, priority, path.clone()) else { continue };
                        let slot = &b.slots[i];
                        if slot.class.is_temporal() {
                            ends.push(slot.node.clone());
                        } else {
                            let message = format!(
                                "date_diff_years needs date, timestamp or timestamptz columns; {name:?} is {}",
                                slot.type_name
                            );
                            b.problems.push(Problem::new(path, message));
                        }
                    }
                    if let (Some(end), Some(start), true) = (ends.pop(), ends.pop(), ends.is_empty()) {
                        let node = Node::DateDiffYears { start: Box::new(start), end: Box::new(end) };
                        let slot = Slot {
                            name: new.clone(),
                            type_name: "integer".to_owned(),
                            class: Class::Int,
                            key: false,
                            not_null: false,
                            node,
                            created,
                        };
                        b.create(&new, at("new_column_name"), slot);
                    }
                }
                Op::Modify { column, op } => {
                    let Some(i) = b.find(&column, index, priority, at("column_name")) else { continue };
                    let slot = &b.slots[i];
                    let class = slot.class;
                    let fits = match &op {
                        ValueOp::FormatDate(_) | ValueOp::Extract(_) => class.is_temporal(),
                        ValueOp::Upper | ValueOp::Lower | ValueOp::Trim => class.is_text(),
                        ValueOp::Math(_) => class.is_number(),
                    };
                    if !fits {
                        let wanted = match &op {
                            ValueOp::FormatDate(_) | ValueOp::Extract(_) => "a date, timestamp or timestamptz column",
                            ValueOp::Upper | ValueOp::Lower | ValueOp::Trim => {
                                "a text, character varying or character column"
                            }
                            ValueOp::Math(_) => "a smallint, integer, bigint, numeric, real or double precision column",
                        };
                        let message = format!("{} needs {wanted}; {column:?} is {}", op.name(), slot.type_name);
                        b.problems.push(Problem::new(at("column_name"), message));
                        continue;
                    }
                    let (type_name, not_null) = match &op {
                        ValueOp::FormatDate(_) => ("text".to_owned(), false),
                        ValueOp::Extract(_) => ("integer".to_owned(), false),
                        ValueOp::Upper | ValueOp::Lower | ValueOp::Trim => (slot.type_name.clone(), slot.not_null),
                        ValueOp::Math(e) => {
                            let type_name = match class {
                                Class::Int if e.is_integral() => slot.type_name.clone(),
                                Class::Float => slot.type_name.clone(),
                                _ => "numeric".to_owned(),
                            };
                            (type_name, slot.not_null && e.is_integral())
                        }
                    };
                    let slot = &mut b.slots[i];
                    let input = std::mem::replace(&mut slot.node, Node::Literal(String::new()));
                    slot.node = Node::Apply { op, class, input: Box::new(input) };
                    slot.class = Class::of(&type_name);
                    slot.type_name = type_name;
                    slot.not_null = not_null;
                }
                Op::SchemaName(name) => {
                    if let Some((_, by)) = &target_schema {
                        b.problems.push(Problem::new(
                            at("target_schema_name"),
                            format!("the target schema is already set by transformations[{by}]"),
                        ));
                    }
                    target_schema = Some((name, index));
                }
                Op::TableName(name) => {
                    if let Some((_, by)) = &target_table {
                        b.problems.push(Problem::new(
                            at("target_table_name"),
                            format!("the target table is already set by transformations[{by}]"),
                        ));
                    }
                    target_table = Some((name, index));
                }
                Op::ColumnName { from, to } => {
                    let Some(i) = b.find(&from, index, priority, at("column_name")) else { continue };
                    if from != to && b.slots.iter().any(|s| s.name == to) {
                        b.problems.push(Problem::new(
                            at("target_column_name"),
                            format!("column {to:?} already exists in {schema}.{table}"),
                        ));
                        continue;
                    }
                    b.renamed.insert(from, (to.clone(), index));
                    b.renamed.remove(&to);
                    b.slots[i].name = to;
                }
                Op::AddKey(names) => b.set_key(&names, true, index, priority, &path),
                Op::RemoveKey(names) => b.set_key(&names, false, index, priority, &path),
            }
        }
        if !b.problems.is_empty() {
            return Err(b.problems);
        }
        let target_schema = target_schema.map_or_else(|| schema.to_owned(), |(s, _)| s);
        let target_table = target_table.map_or_else(|| table.to_owned(), |(t, _)| t);
        Ok(TablePlan::from_slots(target_schema, target_table, columns.len(), b.slots))
    }

    fn from_slots(target_schema: String, target_table: String, source_columns: usize, slots: Vec<Slot>) -> TablePlan {
        let identity = slots.len() == source_columns
            && slots.iter().enumerate().all(|(i, s)| matches!(s.node, Node::Source(j) if j == i));
        let uses_now = slots.iter().any(|s| s.node.uses_now());
        let inputs = slots
            .iter()
            .map(|s| {
                let mut used = Vec::new();
                s.node.sources(&mut used);
                used.sort_unstable();
                used.dedup();
                used
            })
            .collect();
        let columns = slots
            .iter()
            .map(|s| TargetColumn {
                name: s.name.clone(),
                type_name: s.type_name.clone(),
                key: s.key,
                not_null: s.not_null,
                source: s.node.copy_of(),
            })
            .collect();
        let values = slots.into_iter().map(|s| s.node).collect();
        TablePlan { target_schema, target_table, columns, source_columns, values, inputs, identity, uses_now }
    }

    /// A value depends on the change's time (`now`): the same source row gives another target
    /// row later.
    pub fn reads_the_clock(&self) -> bool {
        self.uses_now
    }

    /// The source column target column `index` copies unchanged (no transformation computes it).
    pub fn copied_verbatim(&self, index: usize) -> Option<usize> {
        match self.values.get(index) {
            Some(Node::Source(i)) => Some(*i),
            _ => None,
        }
    }

    /// Transforms one source row (PostgreSQL text values, `None` = NULL). `unchanged` lists the
    /// source columns whose value was not sent (unchanged TOAST); a target column computed from
    /// any of them is itself unchanged: its value in the result is `None` and its index is in
    /// the returned list, so the target keeps its current value.
    pub fn apply(
        &self,
        row: Vec<Option<String>>,
        unchanged: &[usize],
        ctx: &Context,
    ) -> Result<(Vec<Option<String>>, Vec<usize>), ApplyError> {
        let shape = |message: String| ApplyError { kind: ApplyErrorKind::RowShape, column: None, message };
        if row.len() != self.source_columns {
            return Err(shape(format!(
                "the row has {} columns; the source table has {}",
                row.len(),
                self.source_columns
            )));
        }
        if let Some(bad) = unchanged.iter().find(|&&i| i >= self.source_columns) {
            return Err(shape(format!(
                "unchanged column index {bad} is out of range (the source table has {} columns)",
                self.source_columns
            )));
        }
        if self.identity {
            return Ok((row, unchanged.to_vec()));
        }
        let now = if self.uses_now { Some(parse_now(ctx.now)?) } else { None };
        let mut out = Vec::with_capacity(self.values.len());
        let mut out_unchanged = Vec::new();
        for (i, node) in self.values.iter().enumerate() {
            if self.inputs[i].iter().any(|s| unchanged.contains(s)) {
                out.push(None);
                out_unchanged.push(i);
                continue;
            }
            let value = eval(node, &row, now.as_ref()).map_err(|(kind, message)| ApplyError {
                kind,
                column: Some(self.columns[i].name.clone()),
                message,
            })?;
            out.push(value);
        }
        Ok((out, out_unchanged))
    }
}

fn source_slot(i: usize, c: &ColumnDesc) -> Slot {
    Slot {
        name: c.name.clone(),
        type_name: c.type_name.clone(),
        class: Class::of(&c.type_name),
        key: c.key,
        not_null: c.not_null,
        node: Node::Source(i),
        created: None,
    }
}

fn parse_now(now: &str) -> Result<Fields, ApplyError> {
    match pgtext::parse_datetime(now).map(|d| d.stamp) {
        Some(Stamp::At(micros)) => Ok(Fields::of(micros)),
        _ => Err(ApplyError {
            kind: ApplyErrorKind::Context,
            column: None,
            message: format!("the transformation time {now:?} is not a finite timestamp"),
        }),
    }
}

type Fault = (ApplyErrorKind, String);

fn stamp_of(text: &str) -> Result<Option<i64>, Fault> {
    match pgtext::parse_datetime(text) {
        Some(d) => Ok(match d.stamp {
            Stamp::At(micros) => Some(micros),
            Stamp::NegInf | Stamp::PosInf => None,
        }),
        None => Err((ApplyErrorKind::Value, "the value is not a date or timestamp in ISO form".to_owned())),
    }
}

/// Whole years from `start` to `end`, as `extract(year from age(end, start))`.
fn whole_years(start: i64, end: i64) -> i64 {
    if end < start {
        return -whole_years(end, start);
    }
    let (a, b) = (Fields::of(start), Fields::of(end));
    let years = b.year - a.year;
    if (b.month, b.day, b.time_micros()) < (a.month, a.day, a.time_micros()) { years - 1 } else { years }
}

fn eval(node: &Node, row: &[Option<String>], now: Option<&Fields>) -> Result<Option<String>, Fault> {
    Ok(match node {
        Node::Source(i) => row.get(*i).cloned().flatten(),
        Node::Literal(text) => Some(text.clone()),
        Node::Now { date_only } => {
            let Some(now) = now else { return Err((ApplyErrorKind::Context, "no transformation time".to_owned())) };
            Some(if *date_only { now.date_text() } else { now.timestamp_text() })
        }
        Node::Concat { inputs, separator } => {
            let mut parts = Vec::with_capacity(inputs.len());
            for (input, class) in inputs {
                if let Some(text) = eval(input, row, now)? {
                    parts.push(if *class == Class::Char { text.trim_end_matches(' ').to_owned() } else { text });
                }
            }
            Some(parts.join(separator))
        }
        Node::DateDiffYears { start, end } => {
            let (Some(start), Some(end)) = (eval(start, row, now)?, eval(end, row, now)?) else { return Ok(None) };
            match (stamp_of(&start)?, stamp_of(&end)?) {
                (Some(start), Some(end)) => Some(whole_years(start, end).to_string()),
                _ => None,
            }
        }
        Node::Apply { op, class, input } => {
            let Some(text) = eval(input, row, now)? else { return Ok(None) };
            match op {
                ValueOp::Upper => Some(text.to_uppercase()),
                ValueOp::Lower => Some(text.to_lowercase()),
                ValueOp::Trim => Some(text.trim().to_owned()),
                ValueOp::FormatDate(items) => stamp_of(&text)?
                    .map(|micros| pgtext::format_fields(items, &Fields::of(micros), *class == Class::TimestampTz)),
                ValueOp::Extract(part) => stamp_of(&text)?.map(|micros| {
                    let f = Fields::of(micros);
                    match part {
                        Part::Year => f.pg_year().to_string(),
                        Part::Month => f.month.to_string(),
                        Part::Day => f.day.to_string(),
                    }
                }),
                ValueOp::Math(expression) => {
                    let mode = if *class == Class::Float { Mode::Float } else { Mode::Exact };
                    let kind = |e: expr::EvalError| {
                        if e == expr::EvalError::BadInput { ApplyErrorKind::Value } else { ApplyErrorKind::Arithmetic }
                    };
                    expression.evaluate(&text, mode).map_err(|e| (kind(e), e.to_string()))?
                }
            }
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: Context<'static> = Context { now: "2024-03-01 01:02:03.5+05:30" };

    fn columns() -> Vec<ColumnDesc> {
        [
            ("id", "integer"),
            ("first", "text"),
            ("last", "character varying(20)"),
            ("born", "date"),
            ("hired", "timestamp without time zone"),
            ("at", "timestamp with time zone"),
            ("amount", "numeric(10,2)"),
            ("ratio", "double precision"),
            ("code", "character(3)"),
        ]
        .into_iter()
        .map(|(name, type_name)| ColumnDesc {
            name: name.to_owned(),
            type_name: type_name.to_owned(),
            key: name == "id",
            not_null: name == "id",
        })
        .collect()
    }

    fn source_row() -> Vec<Option<String>> {
        ["1", "Ada", "Lovelace", "1815-12-10", "2020-06-15 09:00:00", "2024-01-31 23:30:00+00", "12.50", "0.5", "ab "]
            .iter()
            .map(|v| Some((*v).to_owned()))
            .collect()
    }

    fn rule(transformation_type: &str, contract: Value, priority: u8) -> TransformRule {
        serde_json::from_value(json!({
            "table_info": {"schema_name": "public", "table_name": "t"},
            "settings": {"transformation_type": transformation_type, "description": "", "contract": contract, "priority": priority}
        }))
        .unwrap()
    }

    fn compile(rules: &[TransformRule]) -> Result<TablePlan, Vec<String>> {
        let indexed: Vec<(usize, &TransformRule)> = rules.iter().enumerate().collect();
        TablePlan::compile("public", "t", &columns(), &indexed)
            .map_err(|ps| ps.iter().map(ToString::to_string).collect())
    }

    fn plan(rules: &[TransformRule]) -> TablePlan {
        compile(rules).unwrap()
    }

    /// The target value of `column` for the source row with `changes` applied.
    fn value_of(plan: &TablePlan, column: &str, changes: &[(usize, Option<&str>)]) -> Option<String> {
        let mut row = source_row();
        for (i, v) in changes {
            row[*i] = v.map(str::to_owned);
        }
        let (out, unchanged) = plan.apply(row, &[], &NOW).unwrap();
        assert!(unchanged.is_empty());
        let at = plan.columns.iter().position(|c| c.name == column).unwrap();
        out[at].clone()
    }

    fn column<'a>(plan: &'a TablePlan, name: &str) -> &'a TargetColumn {
        plan.columns.iter().find(|c| c.name == name).unwrap()
    }

    fn create(op: &str, extra: Value) -> TransformRule {
        let mut contract = json!({"operation": op, "new_column_name": "new"});
        contract.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        rule("create_column", contract, 1)
    }

    fn modify(op: &str, column: &str, extra: Value) -> TransformRule {
        let mut contract = json!({"operation": op, "column_name": column});
        contract.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        rule("modify_column_value", contract, 1)
    }

    fn problems(rules: &[TransformRule]) -> Vec<String> {
        compile(rules).unwrap_err()
    }

    fn assert_problem(rules: &[TransformRule], expected: &str) {
        let got = problems(rules);
        assert!(got.iter().any(|p| p.starts_with(expected)), "expected {expected:?}, got {got:?}");
    }

    #[test]
    fn identity_copies_everything() {
        let p = TablePlan::identity("public", "t", &columns());
        assert_eq!((p.target_schema.as_str(), p.target_table.as_str()), ("public", "t"));
        assert_eq!(
            p.columns[0],
            TargetColumn { name: "id".into(), type_name: "integer".into(), key: true, not_null: true, source: Some(0) }
        );
        let (out, unchanged) = p.apply(source_row(), &[2], &NOW).unwrap();
        assert_eq!((out, unchanged), (source_row(), vec![2]));
        assert_eq!(plan(&[]).columns, p.columns);
    }

    #[test]
    fn literal_of_every_type() {
        let cases = [
            ("smallint", json!(7), "7", "smallint"),
            ("integer", json!("-42"), "-42", "integer"),
            ("bigint", json!(9_007_199_254_740_993_i64), "9007199254740993", "bigint"),
            ("real", json!(1.5), "1.5", "real"),
            ("double precision", json!("NaN"), "NaN", "double precision"),
            ("numeric", json!("12.50"), "12.50", "numeric"),
            ("character varying", json!("x"), "x", "character varying"),
            ("varchar", json!("y"), "y", "character varying"),
            ("boolean", json!(true), "t", "boolean"),
            ("boolean", json!("off"), "f", "boolean"),
            ("date", json!("2024-02-29"), "2024-02-29", "date"),
            ("timestamp", json!("2024-02-29T10:11:12.5"), "2024-02-29 10:11:12.5", "timestamp without time zone"),
            // the original turned a text literal into NULL
            ("text", json!("hello"), "hello", "text"),
        ];
        for (value_type, value, stored, type_name) in cases {
            let p = plan(&[create("literal", json!({"value": value, "value_type": value_type}))]);
            assert_eq!(value_of(&p, "new", &[]).as_deref(), Some(stored), "{value_type}");
            let c = column(&p, "new");
            assert_eq!(
                (c.type_name.as_str(), c.key, c.not_null, c.source),
                (type_name, false, false, None),
                "{value_type}"
            );
        }
    }

    #[test]
    fn literal_values_must_fit_their_type() {
        let cases = [
            ("integer", json!("abc"), "value: \"abc\" is not a valid integer"),
            ("smallint", json!(40000), "value: 40000 is out of range for smallint"),
            ("integer", json!(1.5), "value: \"1.5\" is not a valid integer"),
            ("real", json!("1e39"), "value: 1e39 is out of range for real"),
            ("date", json!("2023-02-29"), "value: \"2023-02-29\" is not a valid date"),
            ("date", json!("2023-02-28 10:00"), "value: \"2023-02-28 10:00\" is not a valid date (no time of day)"),
            ("boolean", json!("maybe"), "value: \"maybe\" is not a valid boolean"),
            ("text", json!(5), "value: 5 is not a text value"),
            ("text", json!(null), "value: must not be null"),
            ("int", json!(5), "value_type: value_type \"int\" is not supported"),
        ];
        for (value_type, value, expected) in cases {
            assert_problem(
                &[create("literal", json!({"value": value, "value_type": value_type}))],
                &format!("transformations[0].settings.contract.{expected}"),
            );
        }
    }

    #[test]
    fn now_uses_the_context_time_in_utc() {
        let p = plan(&[create("date_now", json!({}))]);
        assert_eq!(value_of(&p, "new", &[]).as_deref(), Some("2024-02-29"));
        assert_eq!(column(&p, "new").type_name, "date");
        let p = plan(&[create("datetime_now", json!({}))]);
        assert_eq!(value_of(&p, "new", &[]).as_deref(), Some("2024-02-29 19:32:03.5"));
        assert_eq!(column(&p, "new").type_name, "timestamp without time zone");
        let err = p.apply(source_row(), &[], &Context { now: "yesterday" }).unwrap_err();
        assert_eq!(err.kind, ApplyErrorKind::Context);
    }

    #[test]
    fn concat_skips_nulls_and_takes_any_type() {
        let p = plan(&[create("concat", json!({"depends_on": ["first", "id", "code", "amount"], "separator": "-"}))]);
        assert_eq!(value_of(&p, "new", &[]).as_deref(), Some("Ada-1-ab-12.50"));
        assert_eq!(value_of(&p, "new", &[(1, None)]).as_deref(), Some("1-ab-12.50"));
        assert_eq!(value_of(&p, "new", &[(0, None), (1, None), (6, None), (8, None)]).as_deref(), Some(""));
        assert_eq!(column(&p, "new").type_name, "text");
    }

    #[test]
    fn date_diff_years_counts_whole_elapsed_years() {
        let p = plan(&[create("date_diff_years", json!({"depends_on": ["born", "hired"], "round_result": true}))]);
        assert_eq!(column(&p, "new").type_name, "integer");
        let years = |born: &str, hired: &str| value_of(&p, "new", &[(3, Some(born)), (4, Some(hired))]);
        // the original took year(end) - year(start) = 3
        assert_eq!(years("2020-06-15", "2023-06-14 23:59:59").as_deref(), Some("2"));
        assert_eq!(years("2020-06-15", "2023-06-15 00:00:00").as_deref(), Some("3"));
        assert_eq!(years("2020-02-29", "2021-02-28 00:00:00").as_deref(), Some("0"));
        assert_eq!(years("2023-06-15", "2020-06-16 00:00:00").as_deref(), Some("-2"));
        assert_eq!(years("infinity", "2020-06-16 00:00:00"), None);
        assert_eq!(value_of(&p, "new", &[(3, None)]), None);
        let p = plan(&[create("date_diff_years", json!({"depends_on": ["hired", "at"]}))]);
        assert_eq!(value_of(&p, "new", &[]).as_deref(), Some("3"));
    }

    #[test]
    fn format_date_yields_text() {
        let p = plan(&[modify("format_date", "born", json!({"format": "%d/%m/%Y (%a %b)"}))]);
        assert_eq!(value_of(&p, "born", &[]).as_deref(), Some("10/12/1815 (Sun Dec)"));
        // the original kept the date type, so the target rejected the text
        assert_eq!(column(&p, "born").type_name, "text");
        assert_eq!(column(&p, "born").source, Some(3));
        let p = plan(&[modify("format_date", "at", json!({"format": "%Y-%m-%dT%H:%M:%S%z"}))]);
        assert_eq!(
            value_of(&p, "at", &[(5, Some("2024-01-31 23:30:00-02"))]).as_deref(),
            Some("2024-02-01T01:30:00+0000")
        );
        assert_eq!(value_of(&p, "at", &[(5, Some("infinity"))]), None);
        let err = p.apply(vec![Some("x".into()); 9], &[], &NOW).unwrap_err();
        assert_eq!((err.kind, err.column.as_deref()), (ApplyErrorKind::Value, Some("at")));
    }

    #[test]
    fn case_and_trim() {
        let p = plan(&[
            modify("uppercase", "first", json!({})),
            modify("lowercase", "last", json!({})),
            modify("trim", "code", json!({})),
        ]);
        assert_eq!(value_of(&p, "first", &[(1, Some("Ádá"))]).as_deref(), Some("ÁDÁ"));
        assert_eq!(value_of(&p, "last", &[]).as_deref(), Some("lovelace"));
        assert_eq!(value_of(&p, "code", &[(8, Some(" a "))]).as_deref(), Some("a"));
        assert_eq!(value_of(&p, "first", &[(1, None)]), None);
        assert_eq!(column(&p, "last").type_name, "character varying(20)");
    }

    #[test]
    fn extract_parts_yield_integers() {
        for (op, column_name, expected) in
            [("extract_year", "born", "1815"), ("extract_month", "hired", "6"), ("extract_day", "at", "31")]
        {
            let p = plan(&[modify(op, column_name, json!({}))]);
            assert_eq!(value_of(&p, column_name, &[]).as_deref(), Some(expected), "{op}");
            assert_eq!(column(&p, column_name).type_name, "integer");
        }
        let p = plan(&[modify("extract_year", "born", json!({}))]);
        assert_eq!(value_of(&p, "born", &[(3, Some("0044-03-15 BC"))]).as_deref(), Some("-44"));
    }

    #[test]
    fn math_expression_types_and_values() {
        let p = plan(&[modify("math_expression", "id", json!({"expression": "value*2+1"}))]);
        assert_eq!(value_of(&p, "id", &[(0, Some("20"))]).as_deref(), Some("41"));
        assert_eq!(column(&p, "id").type_name, "integer");
        let p = plan(&[modify("math_expression", "id", json!({"expression": "100 / value"}))]);
        assert_eq!(column(&p, "id").type_name, "numeric");
        assert!(!column(&p, "id").not_null);
        assert_eq!(value_of(&p, "id", &[(0, Some("8"))]).as_deref(), Some("12.5"));
        assert_eq!(value_of(&p, "id", &[(0, Some("0"))]), None);
        let p = plan(&[modify("math_expression", "amount", json!({"expression": "value*0.5+1"}))]);
        assert_eq!(value_of(&p, "amount", &[]).as_deref(), Some("7.25"));
        assert_eq!(column(&p, "amount").type_name, "numeric");
        let p = plan(&[modify("math_expression", "ratio", json!({"expression": "-(value+2)^2"}))]);
        assert_eq!(value_of(&p, "ratio", &[]).as_deref(), Some("-6.25"));
        assert_eq!(column(&p, "ratio").type_name, "double precision");
        let p = plan(&[modify("math_expression", "ratio", json!({"expression": "value ^ 10000"}))]);
        let err = p
            .apply(
                source_row().into_iter().enumerate().map(|(i, v)| if i == 7 { Some("10".into()) } else { v }).collect(),
                &[],
                &NOW,
            )
            .unwrap_err();
        assert_eq!(err.kind, ApplyErrorKind::Arithmetic);
        assert!(!err.to_string().contains("10"), "no row values in errors: {err}");
    }

    #[test]
    fn structural_transformations() {
        let p = plan(&[
            rule("modify_schema_name", json!({"target_schema_name": "payroll"}), 0),
            rule("modify_table_name", json!({"target_table_name": "people"}), 0),
            rule("modify_column_name", json!({"column_name": "first", "target_column_name": "given"}), 0),
            rule("remove_primary_key", json!({"column_names": ["id"]}), 0),
            rule("add_primary_key", json!({"column_names": ["given", "last"]}), 0),
        ]);
        assert_eq!((p.target_schema.as_str(), p.target_table.as_str()), ("payroll", "people"));
        let keys: Vec<&str> = p.columns.iter().filter(|c| c.key).map(|c| c.name.as_str()).collect();
        assert_eq!(keys, ["given", "last"]);
        assert!(column(&p, "last").not_null);
        assert_eq!(column(&p, "given").source, Some(1));
        assert_eq!(value_of(&p, "given", &[]).as_deref(), Some("Ada"));
        assert!(p.identity, "renames and keys do not touch values");
    }

    #[test]
    fn chained_renames_use_the_current_name() {
        // the original keyed its metadata by the source name, so a second rename failed
        let p = plan(&[
            rule("modify_column_name", json!({"column_name": "first", "target_column_name": "a"}), 0),
            rule("modify_column_name", json!({"column_name": "a", "target_column_name": "b"}), 0),
            modify("uppercase", "b", json!({})),
        ]);
        assert_eq!(value_of(&p, "b", &[]).as_deref(), Some("ADA"));
        assert_problem(
            &[
                rule("modify_column_name", json!({"column_name": "first", "target_column_name": "a"}), 0),
                modify("uppercase", "first", json!({})),
            ],
            "transformations[1].settings.contract.column_name: column \"first\" does not exist in public.t at priority 1: transformations[0] renamed it to \"a\"",
        );
    }

    #[test]
    fn priorities_order_and_ties_keep_list_order() {
        // listed out of order: concat (2) must see the uppercase (1) and not the lowercase (3)
        let mut concat = create("concat", json!({"depends_on": ["first"], "separator": ""}));
        concat.settings.priority = 2;
        let mut lower = modify("lowercase", "first", json!({}));
        lower.settings.priority = 3;
        let p = plan(&[concat, lower, modify("uppercase", "first", json!({}))]);
        assert_eq!(value_of(&p, "new", &[]).as_deref(), Some("ADA"));
        assert_eq!(value_of(&p, "first", &[]).as_deref(), Some("ada"));
        // ties: list order
        let p = plan(&[
            modify("math_expression", "id", json!({"expression": "value + 1"})),
            modify("math_expression", "id", json!({"expression": "value * 10"})),
        ]);
        assert_eq!(value_of(&p, "id", &[]).as_deref(), Some("20"));
    }

    #[test]
    fn unchanged_inputs_make_outputs_unchanged() {
        let p = plan(&[
            modify("uppercase", "first", json!({})),
            create("concat", json!({"depends_on": ["id", "last"], "separator": " "})),
            {
                let mut r = create("literal", json!({"value": "x", "value_type": "text"}));
                r.settings.contract.insert("new_column_name".into(), json!("lit"));
                r
            },
        ]);
        let mut row = source_row();
        row[1] = None;
        row[2] = None;
        let (out, unchanged) = p.apply(row, &[1, 2], &NOW).unwrap();
        let names: Vec<&str> = unchanged.iter().map(|&i| p.columns[i].name.as_str()).collect();
        assert_eq!(names, ["first", "last", "new"]);
        assert_eq!(out[p.columns.iter().position(|c| c.name == "lit").unwrap()].as_deref(), Some("x"));
        assert!(p.apply(source_row(), &[9], &NOW).is_err());
        assert_eq!(p.apply(vec![None; 3], &[], &NOW).unwrap_err().kind, ApplyErrorKind::RowShape);
    }

    #[test]
    fn contract_problems_have_paths() {
        let cases: Vec<(TransformRule, &str)> = vec![
            (
                rule("create_column", json!({"operation": "explode", "new_column_name": "x"}), 1),
                "transformations[0].settings.contract.operation: unknown operation \"explode\" for create_column",
            ),
            (
                rule("create_column", json!({"new_column_name": "x"}), 1),
                "transformations[0].settings.contract.operation: is required by create_column",
            ),
            (
                create("concat", json!({"depends_on": ["first"]})),
                "transformations[0].settings.contract.separator: is required by create_column/concat",
            ),
            (
                create("date_now", json!({"extra": 1})),
                "transformations[0].settings.contract.extra: is not used by create_column/date_now",
            ),
            (
                create("concat", json!({"depends_on": ["first", 5], "separator": ""})),
                "transformations[0].settings.contract.depends_on[1]: must be a column name",
            ),
            (
                create("concat", json!({"depends_on": ["first", "nope"], "separator": ""})),
                "transformations[0].settings.contract.depends_on[1]: column \"nope\" does not exist in public.t at priority 1",
            ),
            (
                create("date_diff_years", json!({"depends_on": ["born", "hired"], "round_result": false})),
                "transformations[0].settings.contract.round_result: false is not supported",
            ),
            (
                create("date_diff_years", json!({"depends_on": ["born"]})),
                "transformations[0].settings.contract.depends_on: must name exactly two columns",
            ),
            (
                create("date_diff_years", json!({"depends_on": ["born", "first"]})),
                "transformations[0].settings.contract.depends_on[1]: date_diff_years needs date, timestamp or timestamptz columns; \"first\" is text",
            ),
            (
                create("literal", json!({"value": 1, "value_type": "integer", "new_column_name": "id"})),
                "transformations[0].settings.contract.new_column_name: column \"id\" already exists in public.t",
            ),
            (
                modify("uppercase", "id", json!({})),
                "transformations[0].settings.contract.column_name: uppercase needs a text, character varying or character column; \"id\" is integer",
            ),
            (
                modify("extract_year", "first", json!({})),
                "transformations[0].settings.contract.column_name: extract_year needs a date, timestamp or timestamptz column; \"first\" is text",
            ),
            (
                modify("math_expression", "first", json!({"expression": "value+1"})),
                "transformations[0].settings.contract.column_name: math_expression needs a smallint",
            ),
            (
                modify("math_expression", "id", json!({"expression": "value*"})),
                "transformations[0].settings.contract.expression: the expression ends too early; expected a number, `value` or '(' at position 7",
            ),
            (
                modify("format_date", "born", json!({"format": "%Y-%q"})),
                "transformations[0].settings.contract.format: unsupported directive %q at position 4",
            ),
            (
                modify("trim", "first", json!({"format": "%Y"})),
                "transformations[0].settings.contract.format: is not used by modify_column_value/trim",
            ),
            (
                rule("add_primary_key", json!({"column_names": "id"}), 0),
                "transformations[0].settings.contract.column_names: must be a JSON list of column names, such as [\"id\"]; a plain string is not accepted",
            ),
            (
                rule("add_primary_key", json!({"column_names": ["id", "nope"]}), 0),
                "transformations[0].settings.contract.column_names[1]: column \"nope\" does not exist",
            ),
            (
                rule("modify_table_name", json!({"target_table_name": "x"}), 1),
                "transformations[0].settings.priority: modify_table_name is structural and must run at priority 0",
            ),
            (
                rule("modify_table_name", json!({"target_table_name": ""}), 0),
                "transformations[0].settings.contract.target_table_name: must not be empty",
            ),
            (
                rule("modify_schema_name", json!({"operation": "x", "target_schema_name": "s"}), 0),
                "transformations[0].settings.contract.operation: is not used by modify_schema_name",
            ),
            (
                rule("modify_column_name", json!({"column_name": "first", "target_column_name": "last"}), 0),
                "transformations[0].settings.contract.target_column_name: column \"last\" already exists",
            ),
            (
                rule("create_column", json!({"operation": "date_now", "new_column_name": "n"}), 5),
                "transformations[0].settings.priority: 5 is out of range",
            ),
        ];
        for (rule, expected) in cases {
            assert_problem(&[rule], expected);
        }
    }

    #[test]
    fn dependencies_on_new_columns_need_a_larger_priority() {
        let mut uses = modify("uppercase", "new", json!({}));
        uses.settings.priority = 1;
        let creates = create("concat", json!({"depends_on": ["first"], "separator": ""}));
        assert_problem(
            &[creates.clone(), uses.clone()],
            "transformations[1].settings.contract.column_name: column \"new\" is created by transformations[0] at the same priority 1",
        );
        assert_problem(
            &[uses.clone(), creates.clone()],
            "transformations[0].settings.contract.column_name: column \"new\" does not exist in public.t at priority 1: it is created by transformations[1] at priority 1, which runs later",
        );
        uses.settings.priority = 2;
        assert_eq!(value_of(&plan(&[uses, creates]), "new", &[]).as_deref(), Some("ADA"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let got = problems(&[
            modify("uppercase", "nope", json!({})),
            rule("modify_table_name", json!({"target_table_name": "x"}), 3),
            create("literal", json!({"value": "x", "value_type": "integer"})),
        ]);
        assert_eq!(got.len(), 3, "{got:?}");
        let mut two_tables = rule("modify_table_name", json!({"target_table_name": "x"}), 0);
        let first = two_tables.clone();
        two_tables.settings.contract.insert("target_table_name".into(), json!("y"));
        assert_problem(
            &[first, two_tables],
            "transformations[1].settings.contract.target_table_name: the target table is already set by transformations[0]",
        );
    }

    #[test]
    fn every_type_parses_by_name() {
        for name in [
            "create_column",
            "modify_column_value",
            "modify_schema_name",
            "modify_table_name",
            "modify_column_name",
            "add_primary_key",
            "remove_primary_key",
        ] {
            let t: TransformationType = serde_json::from_value(json!(name)).unwrap();
            assert_eq!(t.name(), name);
        }
    }
}
