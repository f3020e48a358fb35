//! The message that travels through RabbitMQ: versioned, self-describing JSON.
//!
//! One message carries one or more source transactions in commit order, or one chunk of a large
//! source transaction. Each message lists the relations its changes refer to (schema, table,
//! column names, types and key columns), so the applier needs nothing but the stream. The format is
//! documented in `docs/envelope.md`; [`MessageBuilder`] writes it (decoding side) and
//! [`Envelope::parse`] reads and checks it (applying side).

use std::collections::BTreeSet;
use std::io::Write as _;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::lsn::Lsn;
use crate::pgoutput::Value;
use crate::schema::{Backfill, SchemaChange};
use crate::sequence::SequenceValue;
use crate::typename;

/// The envelope version this crate writes. Version 2 added `incarnation` and `load.copy_id`,
/// version 4 `sequences`; [`Envelope::parse`] reads versions [`OLDEST_VERSION`] to [`VERSION`].
pub const VERSION: u32 = 4;

/// The oldest envelope version [`Envelope::parse`] still reads.
pub const OLDEST_VERSION: u32 = 1;

/// Which stream a message belongs to: the task, the task's incarnation (a new one at every
/// `create_task`, so a task dropped and created again under the same name, or two sources with a
/// task of the same name, never share state in the target) and its generation (one more at every
/// `reload`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamId {
    /// Name of the task.
    pub task: String,
    /// The task incarnation's unique id (a UUID).
    pub incarnation: String,
    /// The task's generation, from 1.
    pub generation: u32,
}

impl StreamId {
    /// A stream id.
    pub fn new(task: &str, incarnation: &str, generation: u32) -> Self {
        Self { task: task.to_owned(), incarnation: incarnation.to_owned(), generation }
    }

    /// Writes `{"version":…,"task":…,"incarnation":…,"generation":…` (the head of every
    /// message).
    fn write_head(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(b"{\"version\":");
        buf.extend_from_slice(VERSION.to_string().as_bytes());
        buf.extend_from_slice(b",\"task\":");
        write_json_str(buf, &self.task);
        buf.extend_from_slice(b",\"incarnation\":");
        write_json_str(buf, &self.incarnation);
        let _ = write!(buf, ",\"generation\":{}", self.generation);
    }
}

/// Content type of every message.
pub const CONTENT_TYPE: &str = "application/json";

/// A parsed message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Format version, [`VERSION`].
    pub version: u32,
    /// Name of the task that captured the changes.
    pub task: String,
    /// The task incarnation's unique id (see [`StreamId`]); absent in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<String>,
    /// The task's generation: 1 at creation, one more at every `reload`. An applier drops
    /// messages of an older generation than the one it has applied, and starts over (empty
    /// watermark) at the first message of a newer one.
    #[serde(default = "first_generation")]
    pub generation: u32,
    /// A control message: the task's settings document, in effect for every message after
    /// this one. Published each time a task worker starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<serde_json::Value>,
    /// Source transactions (or chunks of one), in commit order.
    pub transactions: Vec<Transaction>,
    /// Every relation the changes refer to.
    pub relations: Vec<Relation>,
    /// A chunk of a table's full load (then `transactions` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadChunk>,
    /// A control message: the task's sequences as the source has them
    /// ([`crate::sequence`]); then `transactions` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequences: Option<Vec<SequenceValue>>,
}

fn first_generation() -> u32 {
    1
}

/// One chunk of rows of a table's full load, copied under one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadChunk {
    /// The relation (described in `relations`).
    pub rel: u32,
    /// The copy's id: strictly increasing over every table copy (every attempt) of a task
    /// incarnation, so that a table added at a reused position or copied again after another
    /// table is never taken for one already applied. 0 in version 1.
    #[serde(default)]
    pub copy_id: u64,
    /// Position of the table in the task's load order (priority, then list order), from 0.
    pub table_index: u32,
    /// Copy attempt of this table, from 1. A new attempt (after the decoding worker was
    /// interrupted mid-table) copies the table again from its first row under a new snapshot.
    pub attempt: u32,
    /// Chunk number within the attempt, from 0.
    pub seq: u32,
    /// True on the attempt's final chunk.
    pub last: bool,
    /// Rows in `data`.
    pub rows: u64,
    /// Time of the copy snapshot, RFC 3339 (UTC).
    pub snapshot_time: String,
    /// What the target table needs before the first chunk (sent with `seq` 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepare: Option<Prepare>,
    /// The rows in PostgreSQL's COPY text format: one line per row, columns in the relation's
    /// order separated by tabs, `\N` for NULL, backslash escapes.
    pub data: String,
}

/// How to prepare a target table for its full load (from the task's settings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prepare {
    /// Create the target table when it does not exist.
    #[serde(default)]
    pub create: bool,
    /// Drop and re-create the target table.
    #[serde(default)]
    pub recreate: bool,
    /// Empty the target table first.
    #[serde(default)]
    pub truncate: bool,
}

/// One source transaction, or one chunk of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transaction {
    /// The changes, in source order.
    pub changes: Vec<Change>,
    /// Source transaction id (32-bit, as pgoutput sends it).
    pub xid: u32,
    /// LSN of the source commit record: the transaction's identity in the stream, strictly
    /// increasing in commit order.
    pub commit_lsn: Lsn,
    /// Commit LSN of the transaction published just before this one in the task's stream (absent
    /// for the first of a generation, and in version 1). An applier that has not applied that
    /// one has a gap before this transaction: it halts instead of applying past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_commit_lsn: Option<Lsn>,
    /// Source commit time, RFC 3339 in UTC with microseconds.
    pub commit_time: String,
    /// Chunk number within the transaction, from 0.
    pub seq: u32,
    /// True on the transaction's final chunk.
    pub last: bool,
}

/// A row change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// A new row.
    Insert {
        /// Relation id (see [`Relation::id`]).
        rel: u32,
        /// Column values in text form, `null` for SQL NULL.
        new: Vec<Option<String>>,
    },
    /// A changed row.
    Update {
        /// Relation id.
        rel: u32,
        /// The old key (or whole old row under REPLICA IDENTITY FULL), sent by PostgreSQL only
        /// when the key changed or the identity is FULL. Columns outside the identity are null.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        old: Option<Vec<Option<String>>>,
        /// The new row. Unchanged TOASTed columns are null here and listed in `unchanged`.
        new: Vec<Option<String>>,
        /// Indexes of columns whose value did not change and was not sent (TOASTed values).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unchanged: Vec<usize>,
    },
    /// A deleted row.
    Delete {
        /// Relation id.
        rel: u32,
        /// The old key (or whole old row under REPLICA IDENTITY FULL).
        old: Vec<Option<String>>,
    },
    /// TRUNCATE of one or more relations.
    Truncate {
        /// Relation ids.
        rels: Vec<u32>,
        /// TRUNCATE … CASCADE at the source.
        cascade: bool,
        /// TRUNCATE … RESTART IDENTITY at the source.
        restart_identity: bool,
    },
    /// A schema change of a replicated table, where it happened in the transaction (version 3;
    /// see [`crate::schema`]).
    /// Boxed: rare, and many times the size of a row change.
    Schema(Box<SchemaChange>),
    /// The values a schema change gave existing rows, right after it (version 3; see
    /// [`crate::schema::Backfill`]).
    Backfill(Backfill),
}

/// A source table as the changes see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relation {
    /// The source relation's OID, used as its id inside a message.
    pub id: u32,
    /// Schema name, unquoted.
    pub schema: String,
    /// Table name, unquoted.
    pub table: String,
    /// Columns in order.
    pub columns: Vec<Column>,
}

/// A source column.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// Column name, unquoted.
    pub name: String,
    /// The type as `format_type(oid, typmod)` prints it, identifiers already quoted where
    /// needed (e.g. `character varying(20)`, `integer[]`, `"My Schema".mood`).
    #[serde(rename = "type")]
    pub type_name: String,
    /// The type's OID at the source.
    pub type_oid: u32,
    /// Part of the key that identifies a row (primary key or replica identity index).
    pub key: bool,
    /// Declared NOT NULL at the source.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_null: bool,
    /// The type a target table created by TREMpy gets for this column, when it differs from
    /// `type`: domains are resolved to their base type and enums become `text` (arrays alike).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_type: Option<String>,
}

#[derive(Deserialize)]
struct VersionProbe {
    version: Option<serde_json::Value>,
    task: Option<serde_json::Value>,
}

impl Envelope {
    /// Parses and checks a message body. Never panics; every problem is an error that says what
    /// is wrong (never row values):
    /// * [`ErrorKind::NewerEnvelope`]: a TREMpy message (a JSON object with a string `task`)
    ///   whose integer `version` is higher than [`VERSION`]: written by a newer TREMpy, to be read
    ///   by an upgraded reader, never to be discarded;
    /// * [`ErrorKind::MalformedEnvelope`]: anything else that is not a valid envelope of a version
    ///   from 1 to [`VERSION`] (not JSON, no or a zero or non-integer `version`, no `task`, …).
    pub fn parse(body: &[u8]) -> Result<Self> {
        let probe: VersionProbe =
            serde_json::from_slice(body).map_err(|err| malformed(format!("not a JSON object: {err}")))?;
        match (&probe.version, &probe.task) {
            (None, _) => return Err(malformed("missing field `version`")),
            (Some(serde_json::Value::Number(n)), _)
                if n.as_u64().is_some_and(|v| (u64::from(OLDEST_VERSION)..=u64::from(VERSION)).contains(&v)) => {}
            (Some(serde_json::Value::Number(n)), Some(serde_json::Value::String(task)))
                if n.as_u64().is_some_and(|v| v > u64::from(VERSION)) =>
            {
                return Err(Error::new(
                    ErrorKind::NewerEnvelope,
                    format!(
                        "task {task:?} sent envelope version {n}, newer than this reader's version {VERSION}: upgrade trempy-applier"
                    ),
                ));
            }
            (Some(other), _) => {
                return Err(malformed(format!(
                    "unsupported envelope version {other}; this applier reads versions {OLDEST_VERSION} to {VERSION}"
                )));
            }
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let envelope: Envelope = serde_path_to_error::deserialize(&mut de)
            .map_err(|err| malformed(format!("{}: {}", err.path(), err.inner())))?;
        envelope.check()?;
        Ok(envelope)
    }

    /// A message of the same stream holding only `transaction`, with the descriptions of the
    /// relations its changes refer to: what the applier stages and dead-letters.
    pub fn single(&self, transaction: Transaction) -> Self {
        let used: BTreeSet<u32> = transaction
            .changes
            .iter()
            .flat_map(|c| match c {
                Change::Insert { rel, .. } | Change::Update { rel, .. } | Change::Delete { rel, .. } => vec![*rel],
                Change::Truncate { rels, .. } => rels.clone(),
                Change::Schema(_) | Change::Backfill(_) => Vec::new(),
            })
            .collect();
        Self {
            version: self.version,
            task: self.task.clone(),
            incarnation: self.incarnation.clone(),
            generation: self.generation,
            settings: None,
            transactions: vec![transaction],
            // Only the relations its changes refer to: another one may be described in a shape
            // the transaction never saw (before a rename the message also holds).
            relations: self.relations.iter().filter(|r| used.contains(&r.id)).cloned().collect(),
            load: None,
            sequences: None,
        }
    }

    /// The relation with this id.
    pub fn relation(&self, id: u32) -> Option<&Relation> {
        self.relations.iter().find(|r| r.id == id)
    }

    fn check(&self) -> Result<()> {
        if let Some(load) = &self.load {
            if !self.transactions.is_empty() {
                return Err(malformed("a load chunk carries transactions"));
            }
            if self.relation(load.rel).is_none() {
                return Err(malformed(format!("load.rel: relation {} is not described in `relations`", load.rel)));
            }
        }
        if self.generation == 0 {
            return Err(malformed("generation: must be at least 1"));
        }
        if let Some(sequences) = &self.sequences {
            if !self.transactions.is_empty() || self.load.is_some() {
                return Err(malformed("a sequences message carries transactions or a load chunk"));
            }
            for (i, value) in sequences.iter().enumerate() {
                if let Some(problem) = value.problem() {
                    return Err(malformed(format!("sequences[{i}]: {problem}")));
                }
            }
        }
        for (i, relation) in self.relations.iter().enumerate() {
            check_relation(relation).map_err(|msg| malformed(format!("relations[{i}].{msg}")))?;
        }
        let count = self.transactions.len();
        for (i, txn) in self.transactions.iter().enumerate() {
            if !txn.last && i + 1 != count {
                return Err(malformed(format!(
                    "transactions[{i}] is an unfinished chunk but is not the last transaction of the message"
                )));
            }
            for (j, change) in txn.changes.iter().enumerate() {
                self.check_change(change).map_err(|msg| malformed(format!("transactions[{i}].changes[{j}]: {msg}")))?;
            }
        }
        Ok(())
    }

    fn check_change(&self, change: &Change) -> std::result::Result<(), String> {
        let width = |rel: u32| -> std::result::Result<usize, String> {
            self.relation(rel)
                .map(|r| r.columns.len())
                .ok_or_else(|| format!("relation {rel} is not described in `relations`"))
        };
        let same_width = |tuple: &[Option<String>], n: usize, what: &str| {
            if tuple.len() == n { Ok(()) } else { Err(format!("`{what}` has {} values for {n} columns", tuple.len())) }
        };
        match change {
            Change::Insert { rel, new } => same_width(new, width(*rel)?, "new"),
            Change::Update { rel, old, new, unchanged } => {
                let n = width(*rel)?;
                same_width(new, n, "new")?;
                if let Some(old) = old {
                    same_width(old, n, "old")?;
                }
                match unchanged.iter().find(|&&i| i >= n) {
                    Some(i) => Err(format!("`unchanged` names column {i} of {n}")),
                    None => Ok(()),
                }
            }
            Change::Delete { rel, old } => same_width(old, width(*rel)?, "old"),
            Change::Truncate { rels, .. } => rels.iter().try_for_each(|rel| width(*rel).map(|_| ())),
            Change::Schema(schema) => check_schema_change(schema),
            Change::Backfill(backfill) => backfill.check(),
        }
    }
}

/// A schema change's names and types are what they claim to be, like a relation's, and its
/// columns are in `attnum` order.
fn check_schema_change(change: &SchemaChange) -> std::result::Result<(), String> {
    for (which, shape) in [("old", &change.old), ("new", &change.new)] {
        let Some(shape) = shape else { continue };
        let columns = shape.columns.iter().map(|c| (c.name.as_str(), c.type_name.as_str(), c.create_type.as_deref()));
        check_names(&format!("{which}."), &shape.schema, &shape.table, columns)?;
        if !shape.in_attnum_order() {
            return Err(format!("{which}.columns are not in attnum order"));
        }
    }
    Ok(())
}

/// The names and types of a relation are what they claim to be (see [`crate::typename`]): the
/// applier writes them into SQL.
fn check_relation(relation: &Relation) -> std::result::Result<(), String> {
    let columns = relation.columns.iter().map(|c| (c.name.as_str(), c.type_name.as_str(), c.create_type.as_deref()));
    check_names("", &relation.schema, &relation.table, columns)
}

/// Checks a table's schema and name, and each column's (name, type, created type); errors name
/// the field under `prefix`.
fn check_names<'a>(
    prefix: &str,
    schema: &str,
    table: &str,
    columns: impl Iterator<Item = (&'a str, &'a str, Option<&'a str>)>,
) -> std::result::Result<(), String> {
    typename::check_identifier(schema).map_err(|m| format!("{prefix}schema {m}"))?;
    typename::check_identifier(table).map_err(|m| format!("{prefix}table {m}"))?;
    for (j, (name, type_name, create_type)) in columns.enumerate() {
        typename::check_identifier(name).map_err(|m| format!("{prefix}columns[{j}].name {m}"))?;
        typename::check_type(type_name).map_err(|m| format!("{prefix}columns[{j}].type {m}"))?;
        if let Some(create_type) = create_type {
            typename::check_type(create_type).map_err(|m| format!("{prefix}columns[{j}].create_type {m}"))?;
        }
    }
    Ok(())
}

fn malformed(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::MalformedEnvelope, message)
}

/// What closes a transaction (or chunk) in a [`MessageBuilder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionHeader {
    /// Source transaction id.
    pub xid: u32,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// Commit LSN of the transaction published before this one in the stream, if known.
    pub prev_commit_lsn: Option<Lsn>,
    /// Commit time, RFC 3339.
    pub commit_time: String,
    /// Chunk number.
    pub seq: u32,
    /// Final chunk?
    pub last: bool,
}

/// Writes one message incrementally, straight from pgoutput values, without building an
/// intermediate tree. Produces exactly the JSON that [`Envelope::parse`] reads.
#[derive(Debug)]
pub struct MessageBuilder {
    buf: Vec<u8>,
    relations: BTreeSet<u32>,
    transactions: usize,
    changes: usize,
    changes_in_open: Option<usize>,
}

impl MessageBuilder {
    /// Starts a message of a stream.
    pub fn new(stream: &StreamId) -> Self {
        let mut buf = Vec::with_capacity(64 * 1024);
        stream.write_head(&mut buf);
        buf.extend_from_slice(b",\"transactions\":[");
        Self { buf, relations: BTreeSet::new(), transactions: 0, changes: 0, changes_in_open: None }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing has been added.
    pub fn is_empty(&self) -> bool {
        self.transactions == 0 && self.changes_in_open.is_none()
    }

    /// Row changes written so far.
    pub fn changes(&self) -> usize {
        self.changes
    }

    /// Opens a transaction (or a chunk of one).
    pub fn open_transaction(&mut self) {
        debug_assert!(self.changes_in_open.is_none(), "transaction already open");
        if self.transactions > 0 {
            self.buf.push(b',');
        }
        self.buf.extend_from_slice(b"{\"changes\":[");
        self.changes_in_open = Some(0);
    }

    /// True while a transaction is open.
    pub fn has_open_transaction(&self) -> bool {
        self.changes_in_open.is_some()
    }

    fn start_change(&mut self, op: &str) -> Result<()> {
        let Some(n) = self.changes_in_open.as_mut() else {
            return Err(Error::new(ErrorKind::MalformedPgOutput, "row change outside a transaction"));
        };
        if *n > 0 {
            self.buf.push(b',');
        }
        *n += 1;
        self.changes += 1;
        self.buf.extend_from_slice(b"{\"op\":\"");
        self.buf.extend_from_slice(op.as_bytes());
        self.buf.push(b'"');
        Ok(())
    }

    fn write_rel(&mut self, rel: u32) {
        self.relations.insert(rel);
        self.buf.extend_from_slice(b",\"rel\":");
        self.buf.extend_from_slice(rel.to_string().as_bytes());
    }

    /// Adds an INSERT.
    pub fn insert(&mut self, rel: u32, new: &[Value<'_>]) -> Result<()> {
        self.start_change("insert")?;
        self.write_rel(rel);
        self.buf.extend_from_slice(b",\"new\":");
        self.write_tuple(new)?;
        self.buf.push(b'}');
        Ok(())
    }

    /// Adds an UPDATE.
    pub fn update(&mut self, rel: u32, old: Option<&[Value<'_>]>, new: &[Value<'_>]) -> Result<()> {
        self.start_change("update")?;
        self.write_rel(rel);
        if let Some(old) = old {
            self.buf.extend_from_slice(b",\"old\":");
            self.write_tuple(old)?;
        }
        self.buf.extend_from_slice(b",\"new\":");
        self.write_tuple(new)?;
        let mut unchanged =
            new.iter().enumerate().filter(|(_, v)| matches!(v, Value::UnchangedToast)).map(|(i, _)| i).peekable();
        if unchanged.peek().is_some() {
            self.buf.extend_from_slice(b",\"unchanged\":[");
            for (k, i) in unchanged.enumerate() {
                if k > 0 {
                    self.buf.push(b',');
                }
                self.buf.extend_from_slice(i.to_string().as_bytes());
            }
            self.buf.push(b']');
        }
        self.buf.push(b'}');
        Ok(())
    }

    /// Adds a DELETE.
    pub fn delete(&mut self, rel: u32, old: &[Value<'_>]) -> Result<()> {
        self.start_change("delete")?;
        self.write_rel(rel);
        self.buf.extend_from_slice(b",\"old\":");
        self.write_tuple(old)?;
        self.buf.push(b'}');
        Ok(())
    }

    /// Adds a TRUNCATE.
    pub fn truncate(&mut self, rels: &[u32], cascade: bool, restart_identity: bool) -> Result<()> {
        self.start_change("truncate")?;
        self.buf.extend_from_slice(b",\"rels\":[");
        for (k, rel) in rels.iter().enumerate() {
            if k > 0 {
                self.buf.push(b',');
            }
            self.relations.insert(*rel);
            self.buf.extend_from_slice(rel.to_string().as_bytes());
        }
        let _ = write!(self.buf, "],\"cascade\":{cascade},\"restart_identity\":{restart_identity}}}");
        Ok(())
    }

    /// Adds a schema change (not a row change: it names no relation of the message's
    /// `relations`, and the changes after it come with the new description).
    pub fn schema(&mut self, change: &SchemaChange) -> Result<()> {
        self.object_change("schema", change)
    }

    /// Adds a backfill (like a schema change, it names no relation of `relations`).
    pub fn backfill(&mut self, backfill: &Backfill) -> Result<()> {
        self.object_change("backfill", backfill)
    }

    /// Adds a change `{"op": op, …}` whose other fields are `value`'s (a JSON object).
    fn object_change(&mut self, op: &str, value: &impl Serialize) -> Result<()> {
        let body =
            serde_json::to_vec(value).map_err(|e| Error::new(ErrorKind::MalformedEnvelope, format!("{op}: {e}")))?;
        self.start_change(op)?;
        // `{"rel":…}` after `{"op":"…"`: drop the opening brace, keep the closing one.
        self.buf.push(b',');
        self.buf.extend_from_slice(body.get(1..).unwrap_or_default());
        Ok(())
    }

    /// Closes the open transaction (or chunk).
    pub fn close_transaction(&mut self, header: &TransactionHeader) {
        debug_assert!(self.changes_in_open.is_some(), "no open transaction");
        self.changes_in_open = None;
        self.transactions += 1;
        let _ = write!(self.buf, "],\"xid\":{},\"commit_lsn\":\"{}\",", header.xid, header.commit_lsn);
        if let Some(prev) = header.prev_commit_lsn {
            let _ = write!(self.buf, "\"prev_commit_lsn\":\"{prev}\",");
        }
        self.buf.extend_from_slice(b"\"commit_time\":");
        write_json_str(&mut self.buf, &header.commit_time);
        let _ = write!(self.buf, ",\"seq\":{},\"last\":{}}}", header.seq, header.last);
    }

    /// Relation ids the message refers to, for which [`MessageBuilder::finish`] needs descriptions.
    pub fn relation_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.relations.iter().copied()
    }

    /// Finishes the message. `describe` returns the description of each relation the changes
    /// refer to; a relation it cannot describe is an error.
    pub fn finish<'r>(mut self, mut describe: impl FnMut(u32) -> Option<&'r Relation>) -> Result<Vec<u8>> {
        if self.changes_in_open.is_some() {
            return Err(Error::new(ErrorKind::MalformedPgOutput, "message finished with an open transaction"));
        }
        self.buf.extend_from_slice(b"],\"relations\":[");
        for (k, id) in self.relations.iter().enumerate() {
            let relation = describe(*id).ok_or_else(|| {
                Error::new(ErrorKind::MalformedPgOutput, format!("no Relation message for relation {id}"))
            })?;
            if k > 0 {
                self.buf.push(b',');
            }
            serde_json::to_writer(&mut self.buf, relation)
                .map_err(|err| Error::new(ErrorKind::MalformedPgOutput, err.to_string()))?;
        }
        self.buf.extend_from_slice(b"]}");
        Ok(self.buf)
    }

    fn write_tuple(&mut self, tuple: &[Value<'_>]) -> Result<()> {
        self.buf.push(b'[');
        for (k, value) in tuple.iter().enumerate() {
            if k > 0 {
                self.buf.push(b',');
            }
            match value {
                Value::Null | Value::UnchangedToast => self.buf.extend_from_slice(b"null"),
                Value::Text(text) => write_json_str(&mut self.buf, text),
                Value::Binary(_) => {
                    return Err(Error::new(
                        ErrorKind::MalformedPgOutput,
                        "binary column value; TREMpy decodes in text mode",
                    ));
                }
            }
        }
        self.buf.push(b']');
        Ok(())
    }
}

/// A control message carrying the task's settings document.
pub fn settings_message(stream: &StreamId, settings: &serde_json::Value) -> Result<Vec<u8>> {
    let envelope = Envelope {
        version: VERSION,
        task: stream.task.clone(),
        incarnation: Some(stream.incarnation.clone()),
        generation: stream.generation,
        settings: Some(settings.clone()),
        transactions: Vec::new(),
        relations: Vec::new(),
        load: None,
        sequences: None,
    };
    serde_json::to_vec(&envelope).map_err(|err| Error::new(ErrorKind::MalformedEnvelope, err.to_string()))
}

/// A control message carrying the task's sequence values.
pub fn sequences_message(stream: &StreamId, values: &[SequenceValue]) -> Result<Vec<u8>> {
    let envelope = Envelope {
        version: VERSION,
        task: stream.task.clone(),
        incarnation: Some(stream.incarnation.clone()),
        generation: stream.generation,
        settings: None,
        transactions: Vec::new(),
        relations: Vec::new(),
        load: None,
        sequences: Some(values.to_vec()),
    };
    serde_json::to_vec(&envelope).map_err(|err| Error::new(ErrorKind::MalformedEnvelope, err.to_string()))
}

/// A full-load message: `chunk.data` is ignored and `copy_data` (COPY text, UTF-8) is written in
/// its place without an intermediate copy.
pub fn load_message(stream: &StreamId, relation: &Relation, chunk: &LoadChunk, copy_data: &[u8]) -> Result<Vec<u8>> {
    let text = std::str::from_utf8(copy_data).map_err(|err| {
        Error::new(
            ErrorKind::MalformedEnvelope,
            format!("load data of {}.{} is not UTF-8: {err}", relation.schema, relation.table),
        )
    })?;
    let mut buf = Vec::with_capacity(copy_data.len() + copy_data.len() / 8 + 1024);
    stream.write_head(&mut buf);
    buf.extend_from_slice(b",\"transactions\":[],\"relations\":[");
    write_serialized(&mut buf, relation)?;
    let _ = write!(
        buf,
        "],\"load\":{{\"rel\":{},\"copy_id\":{},\"table_index\":{},\"attempt\":{},\"seq\":{},\"last\":{},\"rows\":{},\"snapshot_time\":",
        chunk.rel, chunk.copy_id, chunk.table_index, chunk.attempt, chunk.seq, chunk.last, chunk.rows
    );
    write_json_str(&mut buf, &chunk.snapshot_time);
    if let Some(prepare) = &chunk.prepare {
        buf.extend_from_slice(b",\"prepare\":");
        write_serialized(&mut buf, prepare)?;
    }
    buf.extend_from_slice(b",\"data\":");
    write_json_str(&mut buf, text);
    buf.extend_from_slice(b"}}");
    Ok(buf)
}

fn write_serialized<T: Serialize>(buf: &mut Vec<u8>, value: &T) -> Result<()> {
    serde_json::to_writer(buf, value).map_err(|err| Error::new(ErrorKind::MalformedEnvelope, err.to_string()))
}

/// Appends `s` as a JSON string literal.
fn write_json_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0x00..=0x1f => None,
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        match escape {
            Some(e) => buf.extend_from_slice(e),
            None => {
                let _ = write!(buf, "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    const INCARNATION: &str = "6f1c2a9e-3b1d-4c55-9a0e-2f4b8d7c1e00";

    fn stream(generation: u32) -> StreamId {
        StreamId::new("t", INCARNATION, generation)
    }
    use super::*;

    fn relation() -> Relation {
        Relation {
            id: 16384,
            schema: "Odd \"Schema\"".into(),
            table: "tâble".into(),
            columns: vec![
                Column { name: "id".into(), type_name: "integer".into(), type_oid: 23, key: true, ..Column::default() },
                Column {
                    name: "Na me".into(),
                    type_name: "text".into(),
                    type_oid: 25,
                    key: false,
                    ..Column::default()
                },
            ],
        }
    }

    fn header(commit_lsn: u64, seq: u32, last: bool) -> TransactionHeader {
        TransactionHeader {
            xid: 7,
            commit_lsn: Lsn(commit_lsn),
            prev_commit_lsn: commit_lsn.checked_sub(100).map(Lsn),
            commit_time: "2026-11-22T06:00:00.000001Z".into(),
            seq,
            last,
        }
    }

    #[test]
    fn builder_output_parses_back_exactly() {
        let rel = relation();
        let tricky = "quote \" backslash \\ newline \n tab \t bell \u{7} unicode ✓ 'single'";
        let mut b = MessageBuilder::new(&StreamId::new("orders_sync", INCARNATION, 1));
        b.open_transaction();
        b.insert(16384, &[Value::Text("1"), Value::Text(tricky)]).unwrap();
        b.update(16384, Some(&[Value::Text("1"), Value::Null]), &[Value::Text("2"), Value::UnchangedToast]).unwrap();
        b.delete(16384, &[Value::Text("2"), Value::Null]).unwrap();
        b.close_transaction(&header(100, 0, true));
        b.open_transaction();
        b.truncate(&[16384], true, false).unwrap();
        b.close_transaction(&header(200, 0, false));
        assert_eq!(b.changes(), 4);
        let body = b.finish(|id| (id == rel.id).then_some(&rel)).unwrap();
        let env = Envelope::parse(&body).unwrap();
        assert_eq!(env.task, "orders_sync");
        assert_eq!(env.relations, vec![rel.clone()]);
        assert_eq!(env.transactions.len(), 2);
        let t = &env.transactions[0];
        assert_eq!((t.xid, t.commit_lsn, t.seq, t.last), (7, Lsn(100), 0, true));
        assert_eq!(
            t.changes,
            vec![
                Change::Insert { rel: 16384, new: vec![Some("1".into()), Some(tricky.into())] },
                Change::Update {
                    rel: 16384,
                    old: Some(vec![Some("1".into()), None]),
                    new: vec![Some("2".into()), None],
                    unchanged: vec![1]
                },
                Change::Delete { rel: 16384, old: vec![Some("2".into()), None] },
            ]
        );
        assert_eq!(
            env.transactions[1].changes,
            vec![Change::Truncate { rels: vec![16384], cascade: true, restart_identity: false }]
        );
        // serde's own serialization parses to the same value
        let again = Envelope::parse(&serde_json::to_vec(&env).unwrap()).unwrap();
        assert_eq!(again, env);
    }

    #[test]
    fn a_single_transaction_carries_only_the_relations_it_changes() {
        let mut env = Envelope {
            version: VERSION,
            task: "t".into(),
            incarnation: Some(INCARNATION.into()),
            generation: 1,
            settings: None,
            transactions: Vec::new(),
            relations: vec![relation(), Relation { id: 99, ..relation() }],
            load: None,
            sequences: None,
        };
        let transaction = |changes| Transaction {
            changes,
            xid: 1,
            commit_lsn: Lsn(16),
            prev_commit_lsn: None,
            commit_time: "2026-01-01T00:00:00.000000Z".into(),
            seq: 0,
            last: true,
        };
        env.transactions.clear();
        let one = env.single(transaction(vec![Change::Insert { rel: 16384, new: vec![Some("1".into()), None] }]));
        assert_eq!(one.relations.iter().map(|r| r.id).collect::<Vec<_>>(), [16384]);
        // a chunk with no row change (e.g. the start of a large transaction) describes nothing
        assert!(env.single(transaction(Vec::new())).relations.is_empty());
    }

    fn load_chunk(rel: &Relation) -> LoadChunk {
        LoadChunk {
            rel: rel.id,
            copy_id: 7,
            table_index: 2,
            attempt: 1,
            seq: 0,
            last: false,
            rows: 2,
            snapshot_time: "2026-11-22T06:00:00Z".into(),
            prepare: Some(Prepare { create: true, recreate: false, truncate: true }),
            data: String::new(),
        }
    }

    fn sequence_value() -> SequenceValue {
        SequenceValue {
            schema: "public".into(),
            name: "s".into(),
            type_name: "bigint".into(),
            increment: 1,
            last_value: 7,
            owner: None,
        }
    }

    /// Messages of every kind, as the extension writes them: the envelope fuzzer's seeds.
    fn seed_messages() -> Vec<(&'static str, Vec<u8>)> {
        let rel = relation();
        let mut b = MessageBuilder::new(&StreamId::new("orders_sync", INCARNATION, 1));
        b.open_transaction();
        b.insert(16384, &[Value::Text("1"), Value::Text("quote \" unicode ✓")]).unwrap();
        b.update(16384, Some(&[Value::Text("1"), Value::Null]), &[Value::Text("2"), Value::UnchangedToast]).unwrap();
        b.delete(16384, &[Value::Text("2"), Value::Null]).unwrap();
        b.close_transaction(&header(100, 0, true));
        b.open_transaction();
        b.truncate(&[16384], true, false).unwrap();
        b.close_transaction(&header(200, 0, false));
        let changes = b.finish(|id| (id == rel.id).then_some(&rel)).unwrap();
        let chunk = load_chunk(&rel);
        let load = load_message(&stream(3), &rel, &chunk, b"1\tx\\y\n2\t\\N\n").unwrap();
        let settings = settings_message(&stream(2), &serde_json::json!({"task": {"task_name": "t"}})).unwrap();
        let value = sequence_value();
        let sequences = sequences_message(&stream(2), &[value]).unwrap();
        vec![("changes", changes), ("load", load), ("settings", settings), ("sequences", sequences)]
    }

    #[test]
    fn the_fuzz_seeds_are_messages_of_every_kind() {
        let seeds = seed_messages();
        for (name, body) in &seeds {
            assert!(Envelope::parse(body).is_ok(), "{name}");
        }
        crate::fuzz_seeds::check("envelope", &seeds);
    }

    #[test]
    fn load_and_settings_messages_parse_back() {
        let rel = relation();
        let chunk = load_chunk(&rel);
        let data = "1\tx\\y \"q\"\n2\t\\N\n";
        let body = load_message(&stream(3), &rel, &chunk, data.as_bytes()).unwrap();
        let env = Envelope::parse(&body).unwrap();
        assert_eq!((env.generation, env.incarnation.as_deref()), (3, Some(INCARNATION)));
        let load = env.load.unwrap();
        assert_eq!(load.data, data);
        assert_eq!(LoadChunk { data: String::new(), ..load }, chunk);
        assert!(load_message(&stream(3), &rel, &chunk, b"\xff").is_err());

        let settings = serde_json::json!({"task": {"task_name": "t"}});
        let env = Envelope::parse(&settings_message(&stream(2), &settings).unwrap()).unwrap();
        assert_eq!((env.generation, env.settings), (2, Some(settings)));
        // version 1: absent generation means the first; no incarnation, copy ids 0
        let env = Envelope::parse(b"{\"version\":1,\"task\":\"t\",\"transactions\":[],\"relations\":[]}").unwrap();
        assert_eq!((env.generation, env.incarnation), (1, None));
        // a version this crate does not know is refused, naming it
        let err = Envelope::parse(b"{\"version\":5,\"task\":\"t\",\"transactions\":[],\"relations\":[]}").unwrap_err();
        assert!(err.to_string().contains("envelope version 5, newer than"), "{err}");
        // sequence values, checked
        let value = sequence_value();
        let env = Envelope::parse(&sequences_message(&stream(2), std::slice::from_ref(&value)).unwrap()).unwrap();
        assert_eq!(env.sequences, Some(vec![value.clone()]));
        let bad = sequences_message(&stream(2), &[SequenceValue { type_name: "text".into(), ..value }]).unwrap();
        assert!(Envelope::parse(&bad).unwrap_err().to_string().contains("sequences[0]: sequence public.s has type"));
    }

    #[test]
    fn rejects_bad_messages_with_reasons() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "not a JSON object"),
            (b"{\"version\":1,\"task\":\"t\",\"transactions\":[", "not a JSON object"),
            (b"[]", "not a JSON object"),
            (b"{\"task\":\"t\"}", "missing field `version`"),
            (b"{\"version\":99}", "unsupported envelope version 99"),
            (b"{\"version\":0,\"task\":\"t\"}", "unsupported envelope version 0"),
            (b"{\"version\":-1,\"task\":\"t\"}", "unsupported envelope version -1"),
            (b"{\"version\":2.5,\"task\":\"t\"}", "unsupported envelope version 2.5"),
            (b"{\"version\":99,\"task\":7}", "unsupported envelope version 99"),
            (b"{\"version\":\"1\"}", "unsupported envelope version"),
            (b"{\"version\":1,\"task\":\"t\",\"transactions\":[],\"relations\":[],\"x\":1}", "unknown field"),
            (
                b"{\"version\":1,\"task\":\"t\",\"transactions\":[{\"changes\":[{\"op\":\"insert\",\"rel\":1,\"new\":[]}],\"xid\":1,\"commit_lsn\":\"0/1\",\"commit_time\":\"x\",\"seq\":0,\"last\":true}],\"relations\":[]}",
                "relation 1 is not described",
            ),
            (
                b"{\"version\":1,\"task\":\"t\",\"transactions\":[{\"changes\":[],\"xid\":1,\"commit_lsn\":\"zz\",\"commit_time\":\"x\",\"seq\":0,\"last\":true}],\"relations\":[]}",
                "transactions[0].commit_lsn",
            ),
        ];
        for (body, expected) in cases {
            let err = Envelope::parse(body).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::MalformedEnvelope);
            assert!(err.message().contains(expected), "{}: {}", String::from_utf8_lossy(body), err.message());
        }
    }

    #[test]
    fn forged_type_names_and_identifiers_are_refused() {
        let body = |column: &str, schema: &str| {
            format!(
                "{{\"version\":2,\"task\":\"t\",\"transactions\":[],\"relations\":[{{\"id\":1,\"schema\":{schema},\"table\":\"x\",\"columns\":[{column}]}}]}}"
            )
        };
        let ok = body(
            "{\"name\":\"id\",\"type\":\"numeric(12,2)\",\"type_oid\":1700,\"key\":true,\"create_type\":\"character varying(3)[]\"}",
            "\"s\"",
        );
        assert!(Envelope::parse(ok.as_bytes()).is_ok(), "{ok}");
        for (bad, expected) in [
            (
                body(
                    "{\"name\":\"id\",\"type\":\"integer\",\"type_oid\":23,\"key\":true,\"create_type\":\"int); DROP TABLE public.canary; --\"}",
                    "\"s\"",
                ),
                "relations[0].columns[0].create_type is not a type name: unexpected ')' at position 4",
            ),
            (
                body("{\"name\":\"id\",\"type\":\"integer, pg_sleep(1)\",\"type_oid\":23,\"key\":true}", "\"s\""),
                "relations[0].columns[0].type is not a type name",
            ),
            (
                body("{\"name\":\"i\\u0000d\",\"type\":\"integer\",\"type_oid\":23,\"key\":true}", "\"s\""),
                "relations[0].columns[0].name contains a NUL",
            ),
            (
                body("{\"name\":\"id\",\"type\":\"integer\",\"type_oid\":23,\"key\":true}", "\"\""),
                "relations[0].schema is empty",
            ),
        ] {
            let err = Envelope::parse(bad.as_bytes()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::MalformedEnvelope);
            assert!(err.message().contains(expected), "{bad}: {}", err.message());
            assert!(!err.message().contains("canary"), "{}", err.message());
        }
    }

    #[test]
    fn a_newer_version_of_a_task_message_is_not_malformed() {
        let newer = VERSION + 1;
        for body in [
            format!("{{\"version\":{newer},\"task\":\"t\"}}"),
            format!(
                "{{\"version\":{newer},\"task\":\"t\",\"transactions\":[],\"relations\":[],\"field_of_the_future\":{{}}}}"
            ),
            "{\"version\":18446744073709551615,\"task\":\"t\"}".to_owned(),
        ] {
            let err = Envelope::parse(body.as_bytes()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::NewerEnvelope, "{body}");
            assert!(
                err.message().contains("upgrade trempy-applier") && err.message().contains("\"t\""),
                "{}",
                err.message()
            );
        }
        // Every version up to ours is read.
        for v in 1..=VERSION {
            let body = format!("{{\"version\":{v},\"task\":\"t\",\"transactions\":[],\"relations\":[]}}");
            assert!(Envelope::parse(body.as_bytes()).is_ok(), "{body}");
        }
    }

    #[test]
    fn width_and_chunk_rules_are_checked() {
        let rel = relation();
        let mut b = MessageBuilder::new(&stream(1));
        b.open_transaction();
        b.insert(16384, &[Value::Text("1")]).unwrap();
        b.close_transaction(&header(1, 0, true));
        let body = b.finish(|_| Some(&rel)).unwrap();
        assert!(Envelope::parse(&body).unwrap_err().message().contains("1 values for 2 columns"));

        let mut b = MessageBuilder::new(&stream(1));
        b.open_transaction();
        b.close_transaction(&header(1, 0, false));
        b.open_transaction();
        b.close_transaction(&header(2, 0, true));
        let body = b.finish(|_| Some(&rel)).unwrap();
        assert!(Envelope::parse(&body).unwrap_err().message().contains("unfinished chunk"));
    }

    #[test]
    fn binary_values_and_orphan_changes_are_errors() {
        let mut b = MessageBuilder::new(&stream(1));
        assert!(b.insert(1, &[]).is_err());
        b.open_transaction();
        assert!(b.insert(1, &[Value::Binary(b"x")]).is_err());
    }

    #[test]
    fn parse_never_panics_on_mutations() {
        let rel = relation();
        let mut b = MessageBuilder::new(&stream(1));
        b.open_transaction();
        b.insert(16384, &[Value::Text("1"), Value::Text("x")]).unwrap();
        b.close_transaction(&header(1, 0, true));
        let body = b.finish(|_| Some(&rel)).unwrap();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut m = body.clone();
            let pos = (state as usize) % m.len();
            m[pos] = (state >> 32) as u8;
            m.truncate(m.len() - ((state >> 40) as usize % 4));
            let _ = Envelope::parse(&m);
        }
    }
}
