//! Row filters: the original's `filters` entries, checked against the column types and compiled
//! into a [`RowFilter`] that decides, row by row, whether a change is replicated.
//!
//! All filters of one table are ANDed. A filter reads the row in PostgreSQL text form and
//! compares it as the column's real type: numbers exactly as decimals, dates and timestamps as
//! instants, booleans as booleans, text by bytes. SQL NULL satisfies only `is_null`. See
//! `docs/rules.md` for every operator.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::settings::Problem;
pub use crate::settings::{ColumnDesc, TableInfo};
use crate::transform::pgtext::{self, Class, Num, Stamp};

/// One entry of `filters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterRule {
    /// The source table the filter applies to; it must be listed in `tables`.
    pub table_info: TableInfo,
    /// What to test.
    pub settings: FilterSettings,
}

/// `filters[i].settings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSettings {
    /// The operator.
    pub filter_type: FilterType,
    /// Free text for people.
    pub description: String,
    /// The source column tested.
    pub column_name: String,
    /// The operand of single-operand operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// The list of `in` / `not_in`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Value>,
    /// The lower bound of the `between` operators (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower: Option<Value>,
    /// The upper bound of the `between` operators (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<Value>,
}

/// `filters[i].settings.filter_type`: the 24 operators of the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterType {
    /// `column = value`.
    Equals,
    /// `column <> value`.
    NotEquals,
    /// `column > value`.
    GreaterThan,
    /// `column >= value`.
    GreaterThanOrEqual,
    /// `column < value`.
    LessThan,
    /// `column <= value`.
    LessThanOrEqual,
    /// `column IN (values)`.
    In,
    /// `column NOT IN (values)`.
    NotIn,
    /// `column IS NULL`.
    IsNull,
    /// `column IS NOT NULL`.
    IsNotNull,
    /// The text starts with `value`.
    StartsWith,
    /// The text ends with `value`.
    EndsWith,
    /// The text contains `value` (a literal substring).
    Contains,
    /// The text does not contain `value` (a literal substring).
    NotContains,
    /// `column BETWEEN lower AND upper`.
    Between,
    /// `column NOT BETWEEN lower AND upper`.
    NotBetween,
    /// `=` on a date or timestamp column.
    DateEquals,
    /// `<>` on a date or timestamp column.
    DateNotEquals,
    /// `>` on a date or timestamp column.
    DateGreaterThan,
    /// `>=` on a date or timestamp column.
    DateGreaterThanOrEqual,
    /// `<` on a date or timestamp column.
    DateLessThan,
    /// `<=` on a date or timestamp column.
    DateLessThanOrEqual,
    /// `BETWEEN` on a date or timestamp column.
    DateBetween,
    /// `NOT BETWEEN` on a date or timestamp column.
    DateNotBetween,
}

/// Which operands an operator takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arity {
    Nothing,
    Value,
    Values,
    Range,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextOp {
    StartsWith,
    EndsWith,
    Contains,
    NotContains,
}

impl FilterType {
    /// The name used in settings.
    pub fn name(self) -> &'static str {
        use FilterType as F;
        match self {
            F::Equals => "equals",
            F::NotEquals => "not_equals",
            F::GreaterThan => "greater_than",
            F::GreaterThanOrEqual => "greater_than_or_equal",
            F::LessThan => "less_than",
            F::LessThanOrEqual => "less_than_or_equal",
            F::In => "in",
            F::NotIn => "not_in",
            F::IsNull => "is_null",
            F::IsNotNull => "is_not_null",
            F::StartsWith => "starts_with",
            F::EndsWith => "ends_with",
            F::Contains => "contains",
            F::NotContains => "not_contains",
            F::Between => "between",
            F::NotBetween => "not_between",
            F::DateEquals => "date_equals",
            F::DateNotEquals => "date_not_equals",
            F::DateGreaterThan => "date_greater_than",
            F::DateGreaterThanOrEqual => "date_greater_than_or_equal",
            F::DateLessThan => "date_less_than",
            F::DateLessThanOrEqual => "date_less_than_or_equal",
            F::DateBetween => "date_between",
            F::DateNotBetween => "date_not_between",
        }
    }

    fn arity(self) -> Arity {
        use FilterType as F;
        match self {
            F::IsNull | F::IsNotNull => Arity::Nothing,
            F::In | F::NotIn => Arity::Values,
            F::Between | F::NotBetween | F::DateBetween | F::DateNotBetween => Arity::Range,
            _ => Arity::Value,
        }
    }

    fn is_date(self) -> bool {
        self.name().starts_with("date_")
    }

    fn comparison(self) -> Option<Cmp> {
        use FilterType as F;
        Some(match self {
            F::Equals | F::DateEquals => Cmp::Eq,
            F::NotEquals | F::DateNotEquals => Cmp::Ne,
            F::GreaterThan | F::DateGreaterThan => Cmp::Gt,
            F::GreaterThanOrEqual | F::DateGreaterThanOrEqual => Cmp::Ge,
            F::LessThan | F::DateLessThan => Cmp::Lt,
            F::LessThanOrEqual | F::DateLessThanOrEqual => Cmp::Le,
            _ => return None,
        })
    }

    fn text_op(self) -> Option<TextOp> {
        use FilterType as F;
        Some(match self {
            F::StartsWith => TextOp::StartsWith,
            F::EndsWith => TextOp::EndsWith,
            F::Contains => TextOp::Contains,
            F::NotContains => TextOp::NotContains,
            _ => return None,
        })
    }

    /// Needs an ordering of the column's type.
    fn orders(self) -> bool {
        matches!(self.comparison(), Some(Cmp::Gt | Cmp::Ge | Cmp::Lt | Cmp::Le)) || self.arity() == Arity::Range
    }
}

/// The operands present in a filter's settings, before typing.
enum Operands<'a> {
    Nothing,
    Value(&'a Value),
    Values(&'a [Value]),
    Range(&'a Value, &'a Value),
}

impl FilterSettings {
    /// Checks which operand keys are present for the operator; everything that needs no column
    /// type. `path` is `filters[i].settings`.
    fn operands(&self, path: &str, problems: &mut Vec<Problem>) -> Option<Operands<'_>> {
        let op = self.filter_type;
        let arity = op.arity();
        let keys = [
            ("value", &self.value, Arity::Value),
            ("values", &self.values, Arity::Values),
            ("lower", &self.lower, Arity::Range),
            ("upper", &self.upper, Arity::Range),
        ];
        let takes = match arity {
            Arity::Nothing => "no operand".to_owned(),
            Arity::Value => "`value`".to_owned(),
            Arity::Values => "`values`".to_owned(),
            Arity::Range => "`lower` and `upper`".to_owned(),
        };
        let before = problems.len();
        if self.column_name.is_empty() {
            problems.push(Problem::new(format!("{path}.column_name"), "must not be empty"));
        }
        for (key, present, needed_by) in keys {
            match (present.is_some(), needed_by == arity) {
                (true, false) => problems.push(Problem::new(
                    format!("{path}.{key}"),
                    format!("is not used by {} (it takes {takes})", op.name()),
                )),
                (false, true) => problems.push(Problem::new(
                    format!("{path}.{key}"),
                    format!(
                        "is required by {}{}",
                        op.name(),
                        if arity == Arity::Value { " (null is not a value: use is_null / is_not_null)" } else { "" }
                    ),
                )),
                _ => {}
            }
        }
        let operands = match (arity, &self.value, &self.values, &self.lower, &self.upper) {
            (Arity::Nothing, ..) => Operands::Nothing,
            (Arity::Value, Some(v), ..) => Operands::Value(v),
            (Arity::Values, _, Some(list), ..) => match list {
                Value::Array(items) if items.is_empty() => {
                    problems.push(Problem::new(format!("{path}.values"), "must not be empty"));
                    return None;
                }
                Value::Array(items) => {
                    for (k, item) in items.iter().enumerate() {
                        if item.is_null() {
                            problems.push(Problem::new(
                                format!("{path}.values[{k}]"),
                                "null never equals anything; use is_null",
                            ));
                        }
                    }
                    Operands::Values(items)
                }
                _ => {
                    problems.push(Problem::new(format!("{path}.values"), "must be a JSON list, such as [1, 2, 3]"));
                    return None;
                }
            },
            (Arity::Range, _, _, Some(lower), Some(upper)) => Operands::Range(lower, upper),
            _ => return None,
        };
        if op.text_op().is_some() {
            match &self.value {
                Some(Value::String(s)) if s.is_empty() => {
                    problems.push(Problem::new(format!("{path}.value"), "must not be empty"))
                }
                Some(Value::String(_)) | None => {}
                Some(_) => problems.push(Problem::new(
                    format!("{path}.value"),
                    format!("{} takes a JSON string", self.filter_type.name()),
                )),
            }
        }
        (problems.len() == before).then_some(operands)
    }
}

impl FilterRule {
    /// Problems that need no catalog: operands present, of the right JSON shape. `index` is the
    /// position in `filters`.
    pub fn shape_problems(&self, index: usize) -> Vec<Problem> {
        let mut problems = Vec::new();
        let _ = self.settings.operands(&format!("filters[{index}].settings"), &mut problems);
        problems
    }
}

/// A column value in comparable form.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Canon {
    Num(Num),
    Text(String),
    Bool(bool),
    Stamp(Stamp),
    Time(i64),
    /// Types TREMpy does not interpret: exact text, equality only.
    Exact(String),
}

impl Canon {
    /// A row value (PostgreSQL text output) of a column of `class`.
    fn of_row(class: Class, text: &str) -> Option<Canon> {
        Some(match class {
            Class::Int | Class::Numeric | Class::Float => Canon::Num(Num::parse(text, class)?),
            Class::Text => Canon::Text(text.to_owned()),
            Class::Char => Canon::Text(text.trim_end_matches(' ').to_owned()),
            Class::Bool => Canon::Bool(pgtext::parse_bool(text)?),
            Class::Date | Class::Timestamp | Class::TimestampTz => Canon::Stamp(pgtext::parse_datetime(text)?.stamp),
            Class::Time => Canon::Time(pgtext::parse_time(text, true)?),
            Class::Other => Canon::Exact(text.to_owned()),
        })
    }

    /// A filter operand (JSON) for a column of `class` and type `type_name`.
    fn of_json(class: Class, type_name: &str, value: &Value) -> Result<Canon, String> {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) if class.is_number() => n.to_string(),
            Value::Bool(b) if class == Class::Bool => return Ok(Canon::Bool(*b)),
            Value::Null => return Err("null never compares true; use is_null / is_not_null".to_owned()),
            other => {
                let wanted = match class {
                    Class::Int | Class::Numeric | Class::Float => "a number (or a string holding one)",
                    Class::Bool => "true or false",
                    _ => "a JSON string",
                };
                return Err(format!("{other} does not fit the {type_name} column; give {wanted}"));
            }
        };
        let bad = |what: &str| format!("{text:?} is not {what}, so it cannot be compared with the {type_name} column");
        match class {
            Class::Int => Num::parse(&text, class).map(Canon::Num).ok_or_else(|| bad("an integer")),
            Class::Numeric | Class::Float => Num::parse(&text, class).map(Canon::Num).ok_or_else(|| bad("a number")),
            Class::Bool => pgtext::parse_bool(&text)
                .map(Canon::Bool)
                .ok_or_else(|| bad("a boolean (true, false, t, f, yes, no, on, off, 1, 0)")),
            Class::Date | Class::Timestamp | Class::TimestampTz => {
                let parsed = pgtext::parse_datetime(&text)
                    .ok_or_else(|| bad("a date or timestamp (YYYY-MM-DD, YYYY-MM-DD HH:MM:SS[.ffffff][+hh[:mm]])"))?;
                if parsed.has_offset && class != Class::TimestampTz {
                    return Err(format!(
                        "{text:?} has a UTC offset but the column is {type_name}, which has no time zone; leave the offset out"
                    ));
                }
                Ok(Canon::Stamp(parsed.stamp))
            }
            Class::Time => pgtext::parse_time(&text, true)
                .map(Canon::Time)
                .ok_or_else(|| bad("a time of day (HH:MM[:SS[.ffffff]])")),
            Class::Text | Class::Char | Class::Other => Ok(Canon::of_row(class, &text).unwrap_or(Canon::Exact(text))),
        }
    }

    fn compare(&self, other: &Canon) -> Option<Ordering> {
        match (self, other) {
            (Canon::Num(a), Canon::Num(b)) => Some(a.cmp(b)),
            (Canon::Text(a), Canon::Text(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            (Canon::Bool(a), Canon::Bool(b)) => Some(a.cmp(b)),
            (Canon::Stamp(a), Canon::Stamp(b)) => Some(a.cmp(b)),
            (Canon::Time(a), Canon::Time(b)) => Some(a.cmp(b)),
            // equality only: ordering operators are refused for these types at compile time
            (Canon::Exact(a), Canon::Exact(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Test {
    IsNull,
    IsNotNull,
    Compare(Cmp, Canon),
    Range { lower: Canon, upper: Canon, negate: bool },
    Set { values: Vec<Canon>, negate: bool },
    Text(TextOp, String),
}

#[derive(Debug, Clone)]
struct Compiled {
    column: usize,
    class: Class,
    test: Test,
}

impl Compiled {
    fn matches(&self, row: &[Option<String>]) -> bool {
        let Some(cell) = row.get(self.column) else { return false };
        let Some(text) = cell.as_deref() else { return matches!(self.test, Test::IsNull) };
        let value = || Canon::of_row(self.class, text);
        match &self.test {
            Test::IsNull => false,
            Test::IsNotNull => true,
            Test::Compare(op, operand) => {
                let Some(ord) = value().and_then(|v| v.compare(operand)) else { return false };
                match op {
                    Cmp::Eq => ord == Ordering::Equal,
                    Cmp::Ne => ord != Ordering::Equal,
                    Cmp::Gt => ord == Ordering::Greater,
                    Cmp::Ge => ord != Ordering::Less,
                    Cmp::Lt => ord == Ordering::Less,
                    Cmp::Le => ord != Ordering::Greater,
                }
            }
            Test::Range { lower, upper, negate } => {
                let Some(v) = value() else { return false };
                match (v.compare(lower), v.compare(upper)) {
                    (Some(lo), Some(up)) => (lo != Ordering::Less && up != Ordering::Greater) != *negate,
                    _ => false,
                }
            }
            Test::Set { values, negate } => {
                let Some(v) = value() else { return false };
                values.iter().any(|candidate| v.compare(candidate) == Some(Ordering::Equal)) != *negate
            }
            Test::Text(op, needle) => {
                let text = if self.class == Class::Char { text.trim_end_matches(' ') } else { text };
                match op {
                    TextOp::StartsWith => text.starts_with(needle.as_str()),
                    TextOp::EndsWith => text.ends_with(needle.as_str()),
                    TextOp::Contains => text.contains(needle.as_str()),
                    TextOp::NotContains => !text.contains(needle.as_str()),
                }
            }
        }
    }
}

/// All filters of one table, compiled and ANDed.
#[derive(Debug, Clone)]
pub struct RowFilter {
    tests: Vec<Compiled>,
}

impl RowFilter {
    /// Compiles the filters of one table against its source columns. `rules` pairs each filter
    /// with its index in `settings.filters` (for problem paths). Every problem is reported.
    pub fn compile(columns: &[ColumnDesc], rules: &[(usize, &FilterRule)]) -> Result<RowFilter, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut tests = Vec::new();
        for (index, rule) in rules {
            let path = format!("filters[{index}].settings");
            let settings = &rule.settings;
            let op = settings.filter_type;
            let operands = settings.operands(&path, &mut problems);
            let Some(column) = columns.iter().position(|c| c.name == settings.column_name) else {
                if !settings.column_name.is_empty() {
                    problems.push(Problem::new(
                        format!("{path}.column_name"),
                        format!(
                            "column {:?} does not exist in {}.{}",
                            settings.column_name, rule.table_info.schema_name, rule.table_info.table_name
                        ),
                    ));
                }
                continue;
            };
            let desc = &columns[column];
            let class = Class::of(&desc.type_name);
            let type_name = desc.type_name.as_str();
            if op.is_date() && !class.is_temporal() {
                problems.push(Problem::new(
                    format!("{path}.filter_type"),
                    format!(
                        "{} needs a date, timestamp or timestamptz column; {:?} is {type_name}",
                        op.name(),
                        desc.name
                    ),
                ));
                continue;
            }
            if op.orders() && class == Class::Other {
                problems.push(Problem::new(
                    format!("{path}.filter_type"),
                    format!(
                        "{} needs an ordered type (a number, text, boolean, date, timestamp or time); {:?} is {type_name}, which TREMpy compares for equality only",
                        op.name(),
                        desc.name
                    ),
                ));
                continue;
            }
            let Some(operands) = operands else { continue };
            let mut typed = |key: &str, value: &Value| match Canon::of_json(class, type_name, value) {
                Ok(canon) => Some(canon),
                Err(message) => {
                    problems.push(Problem::new(format!("{path}.{key}"), message));
                    None
                }
            };
            let test = match operands {
                Operands::Nothing if op == FilterType::IsNull => Some(Test::IsNull),
                Operands::Nothing => Some(Test::IsNotNull),
                Operands::Value(value) => match (op.comparison(), op.text_op(), value) {
                    (Some(cmp), _, _) => typed("value", value).map(|canon| Test::Compare(cmp, canon)),
                    (None, Some(text_op), Value::String(needle)) => Some(Test::Text(text_op, needle.clone())),
                    _ => None,
                },
                Operands::Values(items) => {
                    let values: Vec<Option<Canon>> =
                        items.iter().enumerate().map(|(k, item)| typed(&format!("values[{k}]"), item)).collect();
                    values
                        .into_iter()
                        .collect::<Option<Vec<_>>>()
                        .map(|values| Test::Set { values, negate: op == FilterType::NotIn })
                }
                Operands::Range(lower, upper) => {
                    let (lower, upper) = (typed("lower", lower), typed("upper", upper));
                    match (lower, upper) {
                        (Some(lower), Some(upper)) => {
                            if lower.compare(&upper) == Some(Ordering::Greater) {
                                problems.push(Problem::new(
                                    format!("{path}.lower"),
                                    "is greater than upper, so nothing would be between them",
                                ));
                                None
                            } else {
                                Some(Test::Range {
                                    lower,
                                    upper,
                                    negate: matches!(op, FilterType::NotBetween | FilterType::DateNotBetween),
                                })
                            }
                        }
                        _ => None,
                    }
                }
            };
            if let Some(test) = test {
                tests.push(Compiled { column, class, test });
            }
        }
        if problems.is_empty() { Ok(RowFilter { tests }) } else { Err(problems) }
    }

    /// True when the row passes every filter. Never panics. SQL NULL passes only `is_null`; a
    /// value that does not parse as its column's type (never the case for PostgreSQL's own
    /// output) and a row too short to hold the column fail.
    pub fn matches(&self, row: &[Option<String>]) -> bool {
        self.tests.iter().all(|t| t.matches(row))
    }

    /// The source column indexes the filters read, ascending, without duplicates.
    pub fn columns_used(&self) -> Vec<usize> {
        let mut used: Vec<usize> = self.tests.iter().map(|t| t.column).collect();
        used.sort_unstable();
        used.dedup();
        used
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn columns() -> Vec<ColumnDesc> {
        [
            ("id", "integer"),
            ("amount", "numeric(10,2)"),
            ("ratio", "double precision"),
            ("name", "character varying(20)"),
            ("code", "character(3)"),
            ("active", "boolean"),
            ("born", "date"),
            ("seen", "timestamp(3) without time zone"),
            ("at", "timestamp with time zone"),
            ("starts", "time without time zone"),
            ("token", "uuid"),
            ("mood", "\"My Schema\".mood"),
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

    fn rule(settings: Value) -> FilterRule {
        serde_json::from_value(
            json!({ "table_info": {"schema_name": "public", "table_name": "t"}, "settings": settings }),
        )
        .unwrap()
    }

    fn compile(settings: Value) -> Result<RowFilter, Vec<String>> {
        let rule = rule(settings);
        RowFilter::compile(&columns(), &[(3, &rule)]).map_err(|ps| ps.iter().map(ToString::to_string).collect())
    }

    fn filter(filter_type: &str, column: &str, operand: Value) -> RowFilter {
        let mut settings = json!({ "filter_type": filter_type, "description": "d", "column_name": column });
        if let Value::Object(extra) = operand {
            settings.as_object_mut().unwrap().extend(extra);
        }
        compile(settings).unwrap()
    }

    /// A row with `value` in `column` and NULL everywhere else.
    fn row(column: &str, value: Option<&str>) -> Vec<Option<String>> {
        columns().iter().map(|c| if c.name == column { value.map(str::to_owned) } else { None }).collect()
    }

    /// Which of `values` (in `column`) the filter keeps.
    fn kept(f: &RowFilter, column: &str, values: &[Option<&str>]) -> Vec<Option<String>> {
        values.iter().filter(|v| f.matches(&row(column, **v))).map(|v| v.map(str::to_owned)).collect()
    }

    fn some(values: &[&str]) -> Vec<Option<String>> {
        values.iter().map(|v| Some((*v).to_owned())).collect()
    }

    #[test]
    fn equals_compares_canonical_forms() {
        let f = filter("equals", "amount", json!({"value": 1.5}));
        assert_eq!(kept(&f, "amount", &[Some("1.50"), Some("1.51"), None]), some(&["1.50"]));
        let f = filter("equals", "active", json!({"value": true}));
        assert_eq!(kept(&f, "active", &[Some("t"), Some("f"), None]), some(&["t"]));
        let f = filter("equals", "code", json!({"value": "ab"}));
        assert_eq!(kept(&f, "code", &[Some("ab "), Some("abc")]), some(&["ab "]));
        let f = filter("equals", "at", json!({"value": "2024-01-31 15:04:05+02"}));
        assert_eq!(
            kept(&f, "at", &[Some("2024-01-31 13:04:05+00"), Some("2024-01-31 15:04:05+00")]),
            some(&["2024-01-31 13:04:05+00"])
        );
        let f = filter("equals", "token", json!({"value": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}));
        assert!(f.matches(&row("token", Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"))));
    }

    #[test]
    fn not_equals_drops_nulls() {
        let f = filter("not_equals", "id", json!({"value": 7}));
        assert_eq!(kept(&f, "id", &[Some("7"), Some("8"), None]), some(&["8"]));
    }

    #[test]
    fn orderings_are_exact_on_numbers() {
        let f = filter("greater_than", "amount", json!({"value": "99999999.98"}));
        assert_eq!(
            kept(&f, "amount", &[Some("99999999.99"), Some("99999999.98"), Some("NaN"), Some("-Infinity"), None]),
            some(&["99999999.99", "NaN"])
        );
        let f = filter("greater_than_or_equal", "id", json!({"value": 10}));
        assert_eq!(kept(&f, "id", &[Some("9"), Some("10"), Some("11")]), some(&["10", "11"]));
        let f = filter("less_than", "ratio", json!({"value": 0.3}));
        assert_eq!(
            kept(&f, "ratio", &[Some("0.30000000000000004"), Some("0.29"), Some("-Infinity"), Some("Infinity")]),
            some(&["0.29", "-Infinity"])
        );
        let f = filter("less_than_or_equal", "id", json!({"value": "-5"}));
        assert_eq!(kept(&f, "id", &[Some("-5"), Some("-6"), Some("5")]), some(&["-5", "-6"]));
    }

    #[test]
    fn orderings_on_text_compare_bytes() {
        let f = filter("greater_than", "name", json!({"value": "b"}));
        assert_eq!(kept(&f, "name", &[Some("a"), Some("B"), Some("ba"), Some("é")]), some(&["ba", "é"]));
    }

    #[test]
    fn in_and_not_in() {
        let f = filter("in", "amount", json!({"values": [1, "2.5", 3.25]}));
        assert_eq!(
            kept(&f, "amount", &[Some("1.00"), Some("2.50"), Some("3.25"), Some("4.00"), None]),
            some(&["1.00", "2.50", "3.25"])
        );
        let f = filter("not_in", "name", json!({"values": ["a", "b"]}));
        assert_eq!(kept(&f, "name", &[Some("a"), Some("c"), None]), some(&["c"]));
    }

    #[test]
    fn null_tests() {
        let f = filter("is_null", "name", json!({}));
        assert_eq!(kept(&f, "name", &[Some("a"), None]), vec![None]);
        let f = filter("is_not_null", "name", json!({}));
        assert_eq!(kept(&f, "name", &[Some("a"), None]), some(&["a"]));
    }

    #[test]
    fn text_operators_are_literal() {
        let f = filter("starts_with", "name", json!({"value": "ab"}));
        assert_eq!(kept(&f, "name", &[Some("abc"), Some("xab"), None]), some(&["abc"]));
        let f = filter("ends_with", "code", json!({"value": "c"}));
        assert_eq!(kept(&f, "code", &[Some("abc"), Some("ac "), Some("ca ")]), some(&["abc", "ac "]));
        // the original used a regular expression: "a.c" matched "abc", "(" crashed
        let f = filter("contains", "name", json!({"value": "a.c"}));
        assert_eq!(kept(&f, "name", &[Some("abc"), Some("xa.cx"), None]), some(&["xa.cx"]));
        let f = filter("contains", "name", json!({"value": "("}));
        assert_eq!(kept(&f, "name", &[Some("f(x)"), Some("fx")]), some(&["f(x)"]));
        let f = filter("not_contains", "name", json!({"value": ".*"}));
        assert_eq!(kept(&f, "name", &[Some("abc"), Some("a.*"), None]), some(&["abc"]));
    }

    #[test]
    fn between_is_inclusive() {
        let f = filter("between", "id", json!({"lower": 1, "upper": 3}));
        assert_eq!(kept(&f, "id", &[Some("0"), Some("1"), Some("3"), Some("4"), None]), some(&["1", "3"]));
        let f = filter("not_between", "id", json!({"lower": 1, "upper": 3}));
        assert_eq!(kept(&f, "id", &[Some("0"), Some("1"), Some("3"), Some("4"), None]), some(&["0", "4"]));
    }

    #[test]
    fn date_operators_on_dates_timestamps_and_timestamptz() {
        let f = filter("date_equals", "born", json!({"value": "2024-01-31"}));
        assert_eq!(kept(&f, "born", &[Some("2024-01-31"), Some("2024-02-01")]), some(&["2024-01-31"]));
        let f = filter("date_not_equals", "born", json!({"value": "2024-01-31"}));
        assert_eq!(kept(&f, "born", &[Some("2024-01-31"), Some("2024-02-01"), None]), some(&["2024-02-01"]));
        // the original crashed on timestamp columns in CDC
        let f = filter("date_greater_than", "seen", json!({"value": "2024-01-31 13:04:05"}));
        assert_eq!(
            kept(&f, "seen", &[Some("2024-01-31 13:04:05"), Some("2024-01-31 13:04:05.001"), Some("infinity")]),
            some(&["2024-01-31 13:04:05.001", "infinity"])
        );
        let f = filter("date_greater_than_or_equal", "seen", json!({"value": "2024-01-31T13:04:05"}));
        assert_eq!(
            kept(&f, "seen", &[Some("2024-01-31 13:04:05"), Some("2024-01-31 13:04:04.999")]),
            some(&["2024-01-31 13:04:05"])
        );
        // timestamptz: instants; a value without offset is UTC
        let f = filter("date_less_than", "at", json!({"value": "2024-01-31 12:00:00"}));
        assert_eq!(
            kept(
                &f,
                "at",
                &[Some("2024-01-31 13:00:00+05:30"), Some("2024-01-31 12:00:00+00"), Some("2024-01-31 11:59:59-01")]
            ),
            some(&["2024-01-31 13:00:00+05:30"])
        );
        let f = filter("date_less_than_or_equal", "at", json!({"value": "2024-01-31 12:00:00+00"}));
        assert_eq!(
            kept(&f, "at", &[Some("2024-01-31 12:00:00+00"), Some("2024-01-31 12:00:01+00")]),
            some(&["2024-01-31 12:00:00+00"])
        );
        let f = filter("date_between", "born", json!({"lower": "1990-01-01", "upper": "1999-12-31"}));
        assert_eq!(
            kept(&f, "born", &[Some("1989-12-31"), Some("1990-01-01"), Some("1999-12-31"), Some("2000-01-01"), None]),
            some(&["1990-01-01", "1999-12-31"])
        );
        let f = filter("date_not_between", "born", json!({"lower": "1990-01-01", "upper": "1999-12-31"}));
        assert_eq!(kept(&f, "born", &[Some("1989-12-31"), Some("1995-06-01"), None]), some(&["1989-12-31"]));
        // a date column compares with a timestamp as midnight, as in PostgreSQL
        let f = filter("date_less_than", "born", json!({"value": "2024-01-31 00:00:01"}));
        assert!(f.matches(&row("born", Some("2024-01-31"))));
    }

    #[test]
    fn ordering_on_booleans_and_times() {
        let f = filter("greater_than", "active", json!({"value": false}));
        assert_eq!(kept(&f, "active", &[Some("t"), Some("f")]), some(&["t"]));
        let f = filter("between", "starts", json!({"lower": "09:00", "upper": "17:00:00"}));
        assert_eq!(
            kept(&f, "starts", &[Some("08:59:59"), Some("09:00:00"), Some("17:00:00"), Some("17:00:00.5")]),
            some(&["09:00:00", "17:00:00"])
        );
    }

    #[test]
    fn the_originals_string_values_from_the_ui_work() {
        // The original's UI saved numbers as strings, which its engine then refused.
        let f = filter("greater_than", "amount", json!({"value": "50000"}));
        assert!(f.matches(&row("amount", Some("50000.01"))));
    }

    #[test]
    fn columns_used_lists_each_column_once() {
        let a = rule(json!({"filter_type": "is_not_null", "description": "", "column_name": "name"}));
        let b = rule(json!({"filter_type": "equals", "description": "", "column_name": "id", "value": 1}));
        let f = RowFilter::compile(&columns(), &[(0, &a), (1, &b), (2, &a)]).unwrap();
        assert_eq!(f.columns_used(), vec![0, 3]);
        let mut r = row("id", Some("1"));
        r[3] = Some("x".to_owned());
        assert!(f.matches(&r));
        r[3] = None;
        assert!(!f.matches(&r));
        assert!(!f.matches(&[]), "a short row never matches and never panics");
    }

    #[test]
    fn malformed_row_values_never_match_and_never_panic() {
        let f = filter("greater_than", "id", json!({"value": 1}));
        for junk in ["", "x", "1.5", "99999999999999999999999999999999999999999", "--1", "1e5"] {
            let _ = f.matches(&row("id", Some(junk)));
        }
        assert!(!f.matches(&row("id", Some("abc"))));
        let f = filter("date_equals", "at", json!({"value": "2024-01-01"}));
        assert!(!f.matches(&row("at", Some("31/01/2024"))));
    }

    #[test]
    fn problems_name_the_field() {
        let cases = [
            (
                json!({"filter_type": "equals", "description": "", "column_name": "nope", "value": 1}),
                "filters[3].settings.column_name: column \"nope\" does not exist in public.t",
            ),
            (
                json!({"filter_type": "equals", "description": "", "column_name": "id", "value": "abc"}),
                "filters[3].settings.value: \"abc\" is not an integer",
            ),
            (
                json!({"filter_type": "equals", "description": "", "column_name": "id"}),
                "filters[3].settings.value: is required by equals",
            ),
            (
                json!({"filter_type": "equals", "description": "", "column_name": "id", "value": null}),
                "filters[3].settings.value: is required by equals",
            ),
            (
                json!({"filter_type": "equals", "description": "", "column_name": "id", "value": 1, "lower": 1}),
                "filters[3].settings.lower: is not used by equals",
            ),
            (
                json!({"filter_type": "in", "description": "", "column_name": "id", "values": "1,2"}),
                "filters[3].settings.values: must be a JSON list",
            ),
            (
                json!({"filter_type": "in", "description": "", "column_name": "id", "values": []}),
                "filters[3].settings.values: must not be empty",
            ),
            (
                json!({"filter_type": "in", "description": "", "column_name": "id", "values": [1, "x"]}),
                "filters[3].settings.values[1]: \"x\" is not an integer",
            ),
            (
                json!({"filter_type": "in", "description": "", "column_name": "id", "values": [1, null]}),
                "filters[3].settings.values[1]: null never equals anything",
            ),
            (
                json!({"filter_type": "between", "description": "", "column_name": "id", "lower": 5, "upper": 1}),
                "filters[3].settings.lower: is greater than upper",
            ),
            (
                json!({"filter_type": "between", "description": "", "column_name": "id", "lower": 5}),
                "filters[3].settings.upper: is required by between",
            ),
            (
                json!({"filter_type": "date_equals", "description": "", "column_name": "born", "value": "2024-02-30"}),
                "filters[3].settings.value: \"2024-02-30\" is not a date",
            ),
            (
                json!({"filter_type": "date_equals", "description": "", "column_name": "seen", "value": "2024-02-01 10:00+02"}),
                "filters[3].settings.value: \"2024-02-01 10:00+02\" has a UTC offset",
            ),
            (
                json!({"filter_type": "date_equals", "description": "", "column_name": "name", "value": "2024-02-01"}),
                "filters[3].settings.filter_type: date_equals needs a date, timestamp or timestamptz column; \"name\" is character varying(20)",
            ),
            (
                json!({"filter_type": "greater_than", "description": "", "column_name": "mood", "value": "happy"}),
                "filters[3].settings.filter_type: greater_than needs an ordered type",
            ),
            (
                json!({"filter_type": "contains", "description": "", "column_name": "name", "value": 5}),
                "filters[3].settings.value: contains takes a JSON string",
            ),
            (
                json!({"filter_type": "equals", "description": "", "column_name": "name", "value": 5}),
                "filters[3].settings.value: 5 does not fit the character varying(20) column; give a JSON string",
            ),
            (
                json!({"filter_type": "equals", "description": "", "column_name": "active", "value": "maybe"}),
                "filters[3].settings.value: \"maybe\" is not a boolean",
            ),
            (
                json!({"filter_type": "is_null", "description": "", "column_name": "id", "value": 1}),
                "filters[3].settings.value: is not used by is_null (it takes no operand)",
            ),
        ];
        for (settings, expected) in cases {
            let problems = compile(settings.clone()).unwrap_err();
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "{settings}: expected {expected:?}, got {problems:?}"
            );
        }
    }

    #[test]
    fn every_operator_has_a_name_and_parses() {
        let names = [
            "equals",
            "not_equals",
            "greater_than",
            "greater_than_or_equal",
            "less_than",
            "less_than_or_equal",
            "in",
            "not_in",
            "is_null",
            "is_not_null",
            "starts_with",
            "ends_with",
            "contains",
            "not_contains",
            "between",
            "not_between",
            "date_equals",
            "date_not_equals",
            "date_greater_than",
            "date_greater_than_or_equal",
            "date_less_than",
            "date_less_than_or_equal",
            "date_between",
            "date_not_between",
        ];
        for name in names {
            let op: FilterType = serde_json::from_value(json!(name)).unwrap();
            assert_eq!(op.name(), name);
        }
    }
}
