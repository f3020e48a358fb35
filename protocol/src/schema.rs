//! Schema changes on the source, as they travel in a task's stream.
//!
//! The extension's event trigger (`sql/ddl.sql`) describes every DDL statement that changes a
//! table a task replicates: the table's shape before and after it, read from the catalog inside
//! the DDL's own transaction, and emitted as a transactional logical message. The decoding
//! worker turns that message into a [`SchemaChange`] ("op": "schema") in the transaction's changes
//! ([`crate::envelope::Change::Schema`]), so the target sees it exactly where it happened: every
//! change before it has the old shape, every change after it the new one.
//!
//! Columns are matched by `attnum`, never by name: a column whose number stays and whose name
//! changes was renamed, not dropped and added. [`diff`] turns two shapes into the steps a target
//! table takes to follow (pure, so the applier's decisions are tested here).

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// Logical-message prefix of the event trigger's messages.
pub const MESSAGE_PREFIX: &str = "trempy.ddl";

/// Logical-message prefix of the event trigger's [`Backfill`]s.
pub const BACKFILL_PREFIX: &str = "trempy.backfill";

/// A table's shape at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    /// Schema name, unquoted.
    pub schema: String,
    /// Table name, unquoted.
    pub table: String,
    /// Replicated columns (not dropped, not generated), in `attnum` order.
    pub columns: Vec<ShapeColumn>,
}

impl Shape {
    /// Its columns are in strictly increasing `attnum` order, as the catalog lists them.
    pub fn in_attnum_order(&self) -> bool {
        self.columns.windows(2).all(|w| w[0].attnum < w[1].attnum)
    }
}

/// One column of a [`Shape`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapeColumn {
    /// The column's number at the source (`pg_attribute.attnum`): its identity across renames.
    pub attnum: i16,
    /// Column name, unquoted.
    pub name: String,
    /// The type as `format_type(oid, typmod)` prints it.
    #[serde(rename = "type")]
    pub type_name: String,
    /// The type's OID at the source.
    pub type_oid: u32,
    /// Part of the key that identifies a row (primary key, else replica identity index).
    #[serde(default)]
    pub key: bool,
    /// Declared NOT NULL.
    #[serde(default)]
    pub not_null: bool,
    /// The type a target column created by TREMpy gets when it is not `type` (a domain's base
    /// type, `text` for an enum, arrays alike).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_type: Option<String>,
}

impl ShapeColumn {
    /// The type a target column created by TREMpy gets.
    pub fn target_type(&self) -> &str {
        self.create_type.as_deref().unwrap_or(&self.type_name)
    }
}

/// The value every existing row got in a column the statement added (PostgreSQL's "missing
/// value" of a non-volatile `DEFAULT`); `value: null` is SQL NULL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fill {
    /// The added column.
    pub attnum: i16,
    /// Its value in every row that existed before, in the type's text form; `None` for NULL.
    pub value: Option<String>,
}

/// One DDL statement's effect on one replicated table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaChange {
    /// The table's OID at the source (stays across renames).
    pub rel: u32,
    /// The statement's command tag (`ALTER TABLE`, `DROP TABLE`, …), informational.
    pub tag: String,
    /// The shape before the statement; `None` when TREMpy had not recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Shape>,
    /// The shape after it; `None` when the table was dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<Shape>,
    /// Added columns whose existing rows all got one value (or NULL). An added column listed
    /// neither here nor in `rewritten` is NULL in every existing row.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fills: Vec<Fill>,
    /// Columns whose existing rows got values the target cannot derive: added with a volatile
    /// `DEFAULT` (each row computed its own), or converted by `ALTER COLUMN … TYPE … USING`.
    /// The source rewrote them without any row change in the WAL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewritten: Vec<i16>,
    /// Columns the source rewrote (as in `rewritten`) whose new values follow, row by row, in
    /// [`Backfill`]s right after this change in the same transaction: the table has a key, so
    /// each row can be found on the target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backfilled: Vec<i16>,
    /// Partitions (leaves, `schema.table` quoted) the statement attached to this partitioned
    /// table while they held rows: those rows never passed through the stream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreplicated: Vec<String>,
    /// Partitions (leaves, `schema.table` quoted) the statement attached while they held rows,
    /// whose rows follow as inserting [`Backfill`]s (the table has a key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attached: Vec<String>,
}

/// The values a statement gave the existing rows of a table in columns the target cannot derive
/// (a volatile `DEFAULT`, an identity column, a `USING` conversion), read by the event trigger
/// in the statement's own transaction and emitted after its [`SchemaChange`] in batches
/// (`trempy.emit_backfill` in `sql/ddl.sql`). Each row is the row's key, then its values in `columns`; all in the
/// types' text form (`null` for SQL NULL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backfill {
    /// The table's OID at the source.
    pub rel: u32,
    /// Key column names (source, new shape).
    pub key: Vec<String>,
    /// Backfilled column names (source, new shape).
    pub columns: Vec<String>,
    /// Key values, then column values, per row.
    pub rows: Vec<Vec<Option<String>>>,
    /// True on the statement's last batch for this table: the columns hold their values in
    /// every row then (and may take their NOT NULL).
    pub last: bool,
    /// The rows are new to the table (a partition attached holding them): inserted, or their
    /// columns set where the key is there already. `columns` are then every other column.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insert: bool,
}

impl Backfill {
    /// Reads the event trigger's message content (JSON), checking it.
    pub fn parse(content: &[u8]) -> Result<Self> {
        let backfill: Self = serde_json::from_slice(content)
            .map_err(|e| Error::new(ErrorKind::MalformedEnvelope, format!("backfill message: {e}")))?;
        backfill.check().map_err(|e| Error::new(ErrorKind::MalformedEnvelope, format!("backfill message: {e}")))?;
        Ok(backfill)
    }

    /// Every row holds a key and a value per column, and some column is named.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.key.is_empty() || (self.columns.is_empty() && !self.insert) {
            return Err("a backfill names no key or no column".to_owned());
        }
        let width = self.key.len() + self.columns.len();
        match self.rows.iter().position(|r| r.len() != width) {
            Some(i) => Err(format!("rows[{i}] has {} values for {width} columns", self.rows[i].len())),
            None => Ok(()),
        }
    }
}

impl SchemaChange {
    /// Reads the event trigger's message content (JSON), checking it.
    pub fn parse(content: &[u8]) -> Result<Self> {
        let change: Self = serde_json::from_slice(content)
            .map_err(|e| Error::new(ErrorKind::MalformedEnvelope, format!("schema change message: {e}")))?;
        for shape in change.old.iter().chain(change.new.iter()) {
            if !shape.in_attnum_order() {
                return Err(Error::new(
                    ErrorKind::MalformedEnvelope,
                    "schema change message: columns are not in attnum order",
                ));
            }
        }
        Ok(change)
    }
}

/// One step a target table takes to follow a source table's schema change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `ALTER TABLE … RENAME TO` / `SET SCHEMA`: the table's (schema, name) changed.
    RenameTable {
        /// Old schema and table name.
        from: (String, String),
        /// New schema and table name.
        to: (String, String),
    },
    /// `RENAME COLUMN`.
    RenameColumn {
        /// Old name.
        from: String,
        /// New name.
        to: String,
    },
    /// `ADD COLUMN`, existing rows getting `fill`.
    AddColumn {
        /// The new column.
        column: ShapeColumn,
        /// What the rows that existed before hold in it.
        fill: Existing,
    },
    /// `DROP COLUMN`.
    DropColumn {
        /// Its name (before any rename in the same statement).
        name: String,
    },
    /// `ALTER COLUMN … TYPE`.
    AlterType {
        /// The column (new name and type).
        column: ShapeColumn,
        /// How the target gets the converted values.
        conversion: Conversion,
    },
    /// `SET NOT NULL` (true) or `DROP NOT NULL` (false).
    NotNull {
        /// Column name (new).
        name: String,
        /// Whether it is NOT NULL now.
        not_null: bool,
    },
    /// The key columns changed (primary key added, dropped or redefined): the new key, by name,
    /// empty when the table has none any more.
    Key {
        /// Key column names, in column order.
        columns: Vec<String>,
    },
    /// The table was dropped at the source.
    DropTable,
    /// Partitions were attached holding rows the stream never carried (`schema.table`, quoted).
    Unreplicated {
        /// The partitions.
        partitions: Vec<String>,
    },
}

/// What rows that existed before an `ADD COLUMN` hold in the new column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    /// SQL NULL.
    Null,
    /// One value, in the type's text form.
    Value(String),
    /// Each row its own value, computed at the source (a volatile default, an identity
    /// column): sent row by row in [`Backfill`]s after the change.
    Backfilled,
    /// Each row its own value, computed at the source, and not sent (the table has no key to
    /// find the rows by): not derivable.
    Unknown,
}

/// How a target follows an `ALTER COLUMN … TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// The target casts its values to the new type, as the source did (no `USING`).
    Cast,
    /// The source converted with a `USING` expression; the new values follow in [`Backfill`]s.
    Backfilled,
    /// The source converted with a `USING` expression and the values are not sent (no key).
    Unknown,
}

/// The steps that take a target table of shape `old` to shape `new`, in an order a target can
/// run them: table rename first, then column renames, drops, type changes, additions, NOT NULL
/// changes and the key. `None` for `old` (shape not recorded before) means nothing can be
/// matched by number: every column of `new` is "added" and the applier reconciles by name.
pub fn diff(change: &SchemaChange) -> Vec<Step> {
    let Some(new) = &change.new else {
        return vec![Step::DropTable];
    };
    let empty = Shape { schema: new.schema.clone(), table: new.table.clone(), columns: Vec::new() };
    let old = change.old.as_ref().unwrap_or(&empty);
    let mut steps = Vec::new();
    if (old.schema.as_str(), old.table.as_str()) != (new.schema.as_str(), new.table.as_str()) {
        steps.push(Step::RenameTable {
            from: (old.schema.clone(), old.table.clone()),
            to: (new.schema.clone(), new.table.clone()),
        });
    }
    let before = |attnum: i16| old.columns.iter().find(|c| c.attnum == attnum);
    let after = |attnum: i16| new.columns.iter().find(|c| c.attnum == attnum);
    for column in &new.columns {
        if let Some(was) = before(column.attnum)
            && was.name != column.name
        {
            steps.push(Step::RenameColumn { from: was.name.clone(), to: column.name.clone() });
        }
    }
    for was in &old.columns {
        if after(was.attnum).is_none() {
            steps.push(Step::DropColumn { name: was.name.clone() });
        }
    }
    for column in &new.columns {
        if let Some(was) = before(column.attnum)
            && (was.type_name != column.type_name || was.target_type() != column.target_type())
        {
            let conversion = if change.backfilled.contains(&column.attnum) {
                Conversion::Backfilled
            } else if change.rewritten.contains(&column.attnum) {
                Conversion::Unknown
            } else {
                Conversion::Cast
            };
            steps.push(Step::AlterType { column: column.clone(), conversion });
        }
    }
    for column in &new.columns {
        if before(column.attnum).is_none() {
            let fill = if change.backfilled.contains(&column.attnum) {
                Existing::Backfilled
            } else if change.rewritten.contains(&column.attnum) {
                Existing::Unknown
            } else {
                match change.fills.iter().find(|f| f.attnum == column.attnum) {
                    Some(Fill { value: Some(v), .. }) => Existing::Value(v.clone()),
                    _ => Existing::Null,
                }
            };
            steps.push(Step::AddColumn { column: column.clone(), fill });
        }
    }
    for column in &new.columns {
        if let Some(was) = before(column.attnum)
            && was.not_null != column.not_null
        {
            steps.push(Step::NotNull { name: column.name.clone(), not_null: column.not_null });
        }
    }
    let key = |shape: &Shape| shape.columns.iter().filter(|c| c.key).map(|c| c.attnum).collect::<Vec<_>>();
    if change.old.is_some() && key(old) != key(new) {
        steps.push(Step::Key { columns: new.columns.iter().filter(|c| c.key).map(|c| c.name.clone()).collect() });
    }
    if !change.unreplicated.is_empty() {
        steps.push(Step::Unreplicated { partitions: change.unreplicated.clone() });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(attnum: i16, name: &str, type_name: &str) -> ShapeColumn {
        ShapeColumn {
            attnum,
            name: name.to_owned(),
            type_name: type_name.to_owned(),
            type_oid: 0,
            key: attnum == 1,
            not_null: attnum == 1,
            create_type: None,
        }
    }

    fn shape(table: &str, columns: Vec<ShapeColumn>) -> Shape {
        Shape { schema: "public".to_owned(), table: table.to_owned(), columns }
    }

    fn change(old: Option<Shape>, new: Option<Shape>) -> SchemaChange {
        SchemaChange {
            rel: 1,
            tag: "ALTER TABLE".to_owned(),
            old,
            new,
            fills: Vec::new(),
            rewritten: Vec::new(),
            backfilled: Vec::new(),
            unreplicated: Vec::new(),
            attached: Vec::new(),
        }
    }

    #[test]
    fn a_column_keeping_its_number_under_a_new_name_is_renamed_not_dropped_and_added() {
        let old = shape("t", vec![col(1, "id", "integer"), col(2, "a", "text")]);
        let new = shape("t", vec![col(1, "id", "integer"), col(2, "b", "text")]);
        assert_eq!(diff(&change(Some(old), Some(new))), vec![Step::RenameColumn { from: "a".into(), to: "b".into() }]);
    }

    #[test]
    fn a_dropped_and_re_added_column_of_the_same_name_is_dropped_then_added() {
        let old = shape("t", vec![col(1, "id", "integer"), col(2, "a", "text")]);
        let new = shape("t", vec![col(1, "id", "integer"), col(3, "a", "text")]);
        assert_eq!(
            diff(&change(Some(old), Some(new))),
            vec![
                Step::DropColumn { name: "a".into() },
                Step::AddColumn { column: col(3, "a", "text"), fill: Existing::Null }
            ]
        );
    }

    #[test]
    fn added_columns_carry_what_existing_rows_hold() {
        let old = shape("t", vec![col(1, "id", "integer")]);
        let new = shape(
            "t",
            vec![col(1, "id", "integer"), col(2, "c", "integer"), col(3, "d", "timestamp"), col(4, "e", "text")],
        );
        let mut c = change(Some(old), Some(new));
        c.fills = vec![Fill { attnum: 2, value: Some("7".into()) }];
        c.rewritten = vec![3];
        c.backfilled = vec![5];
        let mut new_columns = c.new.as_ref().map(|n| n.columns.clone()).unwrap_or_default();
        new_columns.push(col(5, "f", "uuid"));
        if let Some(n) = c.new.as_mut() {
            n.columns.clone_from(&new_columns);
        }
        let steps = diff(&c);
        assert_eq!(
            steps,
            vec![
                Step::AddColumn { column: col(2, "c", "integer"), fill: Existing::Value("7".into()) },
                Step::AddColumn { column: col(3, "d", "timestamp"), fill: Existing::Unknown },
                Step::AddColumn { column: col(4, "e", "text"), fill: Existing::Null },
                Step::AddColumn { column: col(5, "f", "uuid"), fill: Existing::Backfilled },
            ]
        );
    }

    #[test]
    fn type_not_null_key_and_table_name_changes_are_each_a_step() {
        let mut old_cols = vec![col(1, "id", "integer"), col(2, "n", "integer")];
        old_cols[1].not_null = false;
        let old = shape("t", old_cols);
        let mut new_cols = vec![col(1, "id", "bigint"), col(2, "n", "integer")];
        new_cols[1].not_null = true;
        new_cols[1].key = true;
        let mut new = shape("t2", new_cols.clone());
        new.schema = "other".into();
        let mut c = change(Some(old), Some(new));
        c.rewritten = vec![1];
        assert_eq!(
            diff(&c),
            vec![
                Step::RenameTable { from: ("public".into(), "t".into()), to: ("other".into(), "t2".into()) },
                Step::AlterType { column: new_cols[0].clone(), conversion: Conversion::Unknown },
                Step::NotNull { name: "n".into(), not_null: true },
                Step::Key { columns: vec!["id".into(), "n".into()] },
            ]
        );
    }

    #[test]
    fn a_dropped_table_is_one_step_and_an_unrecorded_old_shape_adds_every_column() {
        assert_eq!(diff(&change(Some(shape("t", vec![col(1, "id", "integer")])), None)), vec![Step::DropTable]);
        let steps = diff(&change(None, Some(shape("t", vec![col(1, "id", "integer")]))));
        assert_eq!(steps, vec![Step::AddColumn { column: col(1, "id", "integer"), fill: Existing::Null }]);
    }

    #[test]
    fn a_schema_change_travels_in_an_envelope_between_row_changes() {
        use crate::envelope::{Change, Envelope, MessageBuilder, StreamId, TransactionHeader};
        let stream = StreamId::new("t", "6f1c2a9e-3b1d-4c55-9a0e-2f4b8d7c1e00", 1);
        let mut builder = MessageBuilder::new(&stream);
        builder.open_transaction();
        let mut c = change(
            Some(shape("t", vec![col(1, "id", "integer")])),
            Some(shape("t", vec![col(1, "id", "integer"), col(2, "c", "integer")])),
        );
        c.fills = vec![Fill { attnum: 2, value: Some("7".into()) }];
        builder.schema(&c).unwrap_or_else(|e| panic!("{e}"));
        let header = TransactionHeader {
            xid: 5,
            commit_lsn: crate::Lsn(16),
            prev_commit_lsn: None,
            commit_time: "2026-01-01T00:00:00.000000Z".into(),
            seq: 0,
            last: true,
        };
        builder.close_transaction(&header);
        let body = builder.finish(|_| None).unwrap_or_else(|e| panic!("{e}"));
        let envelope = Envelope::parse(&body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(envelope.transactions[0].changes, vec![Change::Schema(Box::new(c))]);
    }

    #[test]
    fn a_schema_change_with_a_forged_type_is_refused_by_the_envelope_check() {
        let body = br#"{"version":3,"task":"t","incarnation":"6f1c2a9e-3b1d-4c55-9a0e-2f4b8d7c1e00","generation":1,"transactions":[{"changes":[
            {"op":"schema","rel":1,"tag":"ALTER TABLE","new":{"schema":"s","table":"t","columns":[{"attnum":1,"name":"a","type":"int); DROP TABLE x; --","type_oid":23}]}}],
            "xid":1,"commit_lsn":"0/10","commit_time":"2026-01-01T00:00:00.000000Z","seq":0,"last":true}],"relations":[]}"#;
        let err = crate::envelope::Envelope::parse(body).err().unwrap_or_else(|| panic!("accepted"));
        assert!(err.message().contains("new.columns[0].type"), "{err}");
    }

    #[test]
    fn messages_are_checked_not_trusted() {
        assert!(SchemaChange::parse(b"not json").is_err());
        assert!(SchemaChange::parse(br#"{"rel":1,"tag":"ALTER TABLE","extra":1}"#).is_err());
        let unordered = br#"{"rel":1,"tag":"ALTER TABLE","new":{"schema":"s","table":"t","columns":[
            {"attnum":2,"name":"b","type":"text","type_oid":25},{"attnum":1,"name":"a","type":"text","type_oid":25}]}}"#;
        assert!(SchemaChange::parse(unordered).is_err());
        let ok = br#"{"rel":1,"tag":"ALTER TABLE","new":{"schema":"s","table":"t","columns":[{"attnum":1,"name":"a","type":"text","type_oid":25}]},"fills":[{"attnum":1,"value":null}]}"#;
        assert!(SchemaChange::parse(ok).is_ok());
    }

    #[test]
    fn a_backfill_holds_a_key_and_a_value_per_column_in_every_row() {
        let ok = br#"{"rel":1,"key":["id"],"columns":["c"],"rows":[["1","x"],["2",null]],"last":true}"#;
        let backfill = Backfill::parse(ok).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(backfill.rows[1], vec![Some("2".to_owned()), None]);
        for bad in [
            &br#"{"rel":1,"key":["id"],"columns":["c"],"rows":[["1"]],"last":true}"#[..],
            br#"{"rel":1,"key":[],"columns":["c"],"rows":[],"last":true}"#,
            br#"{"rel":1,"key":["id"],"columns":[],"rows":[],"last":true}"#,
            br#"{"rel":1,"key":["id"],"columns":["c"],"rows":[],"last":true,"extra":0}"#,
            br#"{"rel":-1,"key":["id"],"columns":["c"],"rows":[],"last":true}"#,
        ] {
            assert!(Backfill::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
