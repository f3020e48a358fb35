//! Sequence values: the task's sequences as the source has them, sent at a bounded interval
//! during CDC and at the end of a full load, so that a target promoted at a cutover hands out
//! values past every replicated one (native logical replication does not carry sequences before
//! PostgreSQL 18).
//!
//! The worker reads them with `trempy.task_sequences(task)` (sql/ddl.sql): the sequences the
//! task lists, and those owned by its tables' identity and serial columns, each once it has
//! handed out a value. A value read after a row's insert is at least the row's: the target only
//! needs the latest, and a value never moves a target sequence backwards.

use serde::{Deserialize, Serialize};

/// One sequence's state at the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceValue {
    /// Schema of the source sequence.
    pub schema: String,
    /// Name of the source sequence.
    pub name: String,
    /// Its data type (`bigint`, `integer` or `smallint`).
    #[serde(rename = "type")]
    pub type_name: String,
    /// Its increment (negative for a descending sequence).
    pub increment: i64,
    /// The last value it handed out.
    pub last_value: i64,
    /// The column that owns it (identity or serial), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<SequenceOwner>,
}

/// The source column a sequence belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceOwner {
    /// The table's OID (the relation id of its changes).
    pub relid: u32,
    /// Schema of the table.
    pub schema: String,
    /// The table.
    pub table: String,
    /// The column.
    pub column: String,
    /// Where the task's transformations put that column on the target (schema, table, column),
    /// worked out by the worker from the source catalog and the settings; absent when the
    /// transformations leave the column out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<[String; 3]>,
}

impl SequenceValue {
    /// Whether `self.last_value` is ahead of a sequence whose last value is `current` (`None`:
    /// it never handed out a value), in the sequence's direction: setting it then never moves
    /// the sequence backwards.
    pub fn ahead_of(&self, current: Option<i64>) -> bool {
        match current {
            None => true,
            Some(current) if self.increment < 0 => self.last_value < current,
            Some(current) => self.last_value > current,
        }
    }

    /// What is wrong with a value read from a message, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.schema.is_empty() || self.name.is_empty() {
            return Some("a sequence has an empty schema or name".to_owned());
        }
        if self.schema.contains('\0') || self.name.contains('\0') {
            return Some("a sequence name contains a NUL".to_owned());
        }
        if !matches!(self.type_name.as_str(), "bigint" | "integer" | "smallint") {
            return Some(format!(
                "sequence {}.{} has type {:?}, not bigint, integer or smallint",
                self.schema, self.name, self.type_name
            ));
        }
        if self.increment == 0 {
            return Some(format!("sequence {}.{} has increment 0", self.schema, self.name));
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn value(increment: i64, last_value: i64) -> SequenceValue {
        SequenceValue {
            schema: "public".into(),
            name: "s".into(),
            type_name: "bigint".into(),
            increment,
            last_value,
            owner: None,
        }
    }

    #[test]
    fn a_sequence_never_moves_backwards() {
        assert!(value(1, 10).ahead_of(None));
        assert!(value(1, 10).ahead_of(Some(9)));
        assert!(!value(1, 10).ahead_of(Some(10)));
        assert!(!value(1, 10).ahead_of(Some(11)));
        assert!(value(-1, -10).ahead_of(Some(-9)));
        assert!(!value(-1, -10).ahead_of(Some(-11)));
    }

    #[test]
    fn values_are_checked() {
        assert_eq!(value(1, 1).problem(), None);
        assert!(value(0, 1).problem().is_some());
        let mut v = value(1, 1);
        v.type_name = "numeric; DROP TABLE x".into();
        assert!(v.problem().is_some());
        v = value(1, 1);
        v.name = String::new();
        assert!(v.problem().is_some());
    }

    #[test]
    fn the_wire_form() {
        let text = r#"{"schema":"public","name":"orders_id_seq","type":"bigint","increment":1,"last_value":42,"owner":{"relid":16384,"schema":"public","table":"orders","column":"id","target":["sales","orders_v2","id"]}}"#;
        let v: SequenceValue = serde_json::from_str(text).unwrap();
        assert_eq!(v.owner.as_ref().unwrap().column, "id");
        assert_eq!(v.owner.as_ref().unwrap().target.as_ref().unwrap()[1], "orders_v2");
        assert_eq!(serde_json::to_string(&v).unwrap(), text);
    }
}
