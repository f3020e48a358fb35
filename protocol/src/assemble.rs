//! Turns the pgoutput messages of one decoding call into envelope messages of bounded size.
//!
//! Small source transactions are packed together into one message; a transaction larger than
//! the size bound is split into chunks (`seq` 0, 1, …, `last` on the final one), so memory stays
//! bounded on both sides however large a source transaction is. Relation descriptions are
//! resolved once per decoding call (PostgreSQL re-sends a Relation message before the first
//! change to each table in every call, and again after DDL).

use std::collections::{HashMap, HashSet};

use crate::envelope::{MessageBuilder, Relation, StreamId, TransactionHeader};
use crate::error::{Error, ErrorKind, Result};
use crate::handoff::Handoff;
use crate::lsn::Lsn;
use crate::pgoutput::{self, Message, OldTuple};
use crate::schema::{self, Backfill, SchemaChange};

/// Counters of what an [`Assembler`] produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Row changes (insert, update, delete, truncate).
    pub changes: u64,
    /// Complete source transactions.
    pub transactions: u64,
    /// Envelope messages produced.
    pub messages: u64,
}

#[derive(Debug)]
struct OpenTransaction {
    xid: u32,
    commit_lsn: Lsn,
    prev_commit_lsn: Option<Lsn>,
    commit_time: String,
    seq: u32,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Assembler {
    stream: StreamId,
    handoff: Handoff,
    /// The task's tables, by OID (which stays across renames); `None` keeps every table the
    /// publication sends.
    tables: Option<HashSet<u32>>,
    /// Relations sent but not among `tables` (a publication can hold more tables than the
    /// task's settings for a moment: see `with_tables`).
    ignored: HashSet<u32>,
    max_message_bytes: usize,
    relations: HashMap<u32, Relation>,
    builder: MessageBuilder,
    open: Option<OpenTransaction>,
    last_end_lsn: Option<Lsn>,
    /// Commit LSN of the last transaction published in the stream (before this call: see
    /// [`Assembler::after`]).
    last_commit_lsn: Option<Lsn>,
    counts: Counts,
}

impl Assembler {
    /// An assembler for one decoding call of a task's stream; messages are cut once they reach
    /// `max_message_bytes` (a soft bound: one row change is never split).
    pub fn new(stream: &StreamId, max_message_bytes: usize) -> Self {
        Self {
            stream: stream.clone(),
            handoff: Handoff::new(),
            tables: None,
            ignored: HashSet::new(),
            max_message_bytes,
            relations: HashMap::new(),
            builder: MessageBuilder::new(stream),
            open: None,
            last_end_lsn: None,
            last_commit_lsn: None,
            counts: Counts::default(),
        }
    }

    /// Leaves out the changes that tables' full loads already contain (see [`Handoff`]). The
    /// transactions themselves are kept, possibly empty, so the applier's watermark moves.
    #[must_use]
    pub fn with_handoff(mut self, handoff: Handoff) -> Self {
        self.handoff = handoff;
        self
    }

    /// The stream's last transaction published before this decoding call (its commit LSN):
    /// every transaction names the one before it, so the applier can tell a gap.
    #[must_use]
    pub fn after(mut self, last_commit_lsn: Option<Lsn>) -> Self {
        self.last_commit_lsn = last_commit_lsn;
        self
    }

    /// Commit LSN of the last transaction assembled (or the one given to [`Assembler::after`]).
    pub fn last_commit_lsn(&self) -> Option<Lsn> {
        self.last_commit_lsn
    }

    /// Leaves out the changes (and schema changes) of every table but these (OIDs). A call that
    /// added tables to the task's publication and then rolled back leaves them in the
    /// publication; the event trigger describes schema changes of every task's tables.
    #[must_use]
    pub fn with_tables(mut self, tables: impl IntoIterator<Item = u32>) -> Self {
        self.tables = Some(tables.into_iter().collect());
        self
    }

    /// A schema change or backfill of `rel` belongs in the stream: the table is the task's, and
    /// not left out like its row changes.
    fn carries(&self, rel: u32) -> bool {
        self.tables.as_ref().is_none_or(|tables| tables.contains(&rel)) && !self.skips(rel)
    }

    fn skips(&self, rel: u32) -> bool {
        self.ignored.contains(&rel)
            || (!self.handoff.is_empty() && self.open.as_ref().is_some_and(|open| self.handoff.skips(rel, open.xid)))
    }

    /// Whether a transaction is open: its BEGIN was fed, its COMMIT not yet.
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// End LSN of the last complete transaction seen: where the slot may advance once everything
    /// produced so far is confirmed.
    pub fn last_end_lsn(&self) -> Option<Lsn> {
        self.last_end_lsn
    }

    /// What was produced so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Feeds one pgoutput message. `describe` turns a Relation message into the relation's full
    /// description (type names, key columns); it is called once per Relation message. Returns a
    /// finished envelope message when one is ready.
    pub fn push<E: From<Error>>(
        &mut self,
        message: Message<'_>,
        describe: &mut dyn FnMut(&pgoutput::Relation<'_>) -> std::result::Result<Relation, E>,
    ) -> std::result::Result<Option<Vec<u8>>, E> {
        match message {
            Message::Begin(begin) => {
                if self.open.is_some() {
                    return Err(protocol_error("BEGIN inside a transaction").into());
                }
                let ready = if self.builder.len() >= self.max_message_bytes { self.flush()? } else { None };
                self.open = Some(OpenTransaction {
                    xid: begin.xid,
                    commit_lsn: begin.final_lsn,
                    prev_commit_lsn: self.last_commit_lsn,
                    commit_time: pgoutput::timestamp_to_rfc3339(begin.commit_time),
                    seq: 0,
                });
                self.builder.open_transaction();
                Ok(ready)
            }
            Message::Commit(commit) => {
                let Some(open) = self.open.take() else {
                    return Err(protocol_error("COMMIT outside a transaction").into());
                };
                self.builder.close_transaction(&header(&open, true));
                self.last_end_lsn = Some(commit.end_lsn);
                self.last_commit_lsn = Some(open.commit_lsn);
                self.counts.transactions += 1;
                if self.builder.len() >= self.max_message_bytes { Ok(self.flush()?) } else { Ok(None) }
            }
            Message::Relation(relation) => {
                if let Some(tables) = &self.tables {
                    if !tables.contains(&relation.oid) {
                        self.ignored.insert(relation.oid);
                        return Ok(None);
                    }
                    self.ignored.remove(&relation.oid);
                }
                let described = describe(&relation)?;
                let ready = match self.relations.get(&relation.oid) {
                    // The same relation changed shape while this message refers to it: the
                    // message's single description must fit every change in it, so cut here.
                    Some(previous)
                        if *previous != described && self.builder.relation_ids().any(|id| id == relation.oid) =>
                    {
                        self.cut()?
                    }
                    _ => None,
                };
                self.relations.insert(relation.oid, described);
                Ok(ready)
            }
            Message::Insert(insert) if self.skips(insert.relation_oid) => Ok(None),
            Message::Update(update) if self.skips(update.relation_oid) => Ok(None),
            Message::Delete(delete) if self.skips(delete.relation_oid) => Ok(None),
            Message::Truncate(mut truncate) if truncate.relation_oids.iter().any(|&rel| self.skips(rel)) => {
                let kept: Vec<u32> = truncate.relation_oids.iter().copied().filter(|&rel| !self.skips(rel)).collect();
                if kept.is_empty() {
                    return Ok(None);
                }
                truncate.relation_oids = kept;
                Ok(self.change(|b| b.truncate(&truncate.relation_oids, truncate.cascade, truncate.restart_identity))?)
            }
            Message::Insert(insert) => Ok(self.change(|b| b.insert(insert.relation_oid, &insert.new))?),
            Message::Update(update) => {
                let old = update.old.as_ref().map(|old| match old {
                    OldTuple::Key(t) | OldTuple::Full(t) => t.as_slice(),
                });
                Ok(self.change(|b| b.update(update.relation_oid, old, &update.new))?)
            }
            Message::Delete(delete) => {
                let (OldTuple::Key(old) | OldTuple::Full(old)) = &delete.old;
                Ok(self.change(|b| b.delete(delete.relation_oid, old))?)
            }
            Message::Truncate(truncate) => {
                Ok(self.change(|b| b.truncate(&truncate.relation_oids, truncate.cascade, truncate.restart_identity))?)
            }
            Message::Logical(message) if message.transactional && message.prefix == schema::MESSAGE_PREFIX => {
                let change = SchemaChange::parse(message.content)?;
                if !self.carries(change.rel) {
                    return Ok(None);
                }
                Ok(self.change(|b| b.schema(&change))?)
            }
            Message::Logical(message) if message.transactional && message.prefix == schema::BACKFILL_PREFIX => {
                let backfill = Backfill::parse(message.content)?;
                if !self.carries(backfill.rel) {
                    return Ok(None);
                }
                Ok(self.change(|b| b.backfill(&backfill))?)
            }
            Message::Origin(_) | Message::Type(_) | Message::Logical(_) => Ok(None),
        }
    }

    /// Finishes the decoding call: returns the last, partly filled message, if any. The call
    /// must end outside a transaction (PostgreSQL only returns whole transactions).
    pub fn finish(&mut self) -> Result<Option<Vec<u8>>> {
        if self.open.is_some() {
            return Err(protocol_error("decoding call ended inside a transaction"));
        }
        self.flush()
    }

    fn change(&mut self, write: impl FnOnce(&mut MessageBuilder) -> Result<()>) -> Result<Option<Vec<u8>>> {
        if self.open.is_none() {
            return Err(protocol_error("row change outside a transaction"));
        }
        let ready = if self.builder.len() >= self.max_message_bytes { self.cut()? } else { None };
        write(&mut self.builder)?;
        self.counts.changes += 1;
        Ok(ready)
    }

    /// Ends the current message in the middle of the open transaction (a chunk boundary) and
    /// reopens the transaction with the next `seq` in a new message.
    fn cut(&mut self) -> Result<Option<Vec<u8>>> {
        let Some(open) = self.open.as_mut() else { return self.flush() };
        self.builder.close_transaction(&header(open, false));
        open.seq += 1;
        let ready = self.flush()?;
        self.builder.open_transaction();
        Ok(ready)
    }

    fn flush(&mut self) -> Result<Option<Vec<u8>>> {
        if self.builder.is_empty() {
            return Ok(None);
        }
        let builder = std::mem::replace(&mut self.builder, MessageBuilder::new(&self.stream));
        let relations = &self.relations;
        let body = builder.finish(|id| relations.get(&id))?;
        self.counts.messages += 1;
        Ok(Some(body))
    }
}

fn header(open: &OpenTransaction, last: bool) -> TransactionHeader {
    TransactionHeader {
        xid: open.xid,
        commit_lsn: open.commit_lsn,
        prev_commit_lsn: open.prev_commit_lsn,
        commit_time: open.commit_time.clone(),
        seq: open.seq,
        last,
    }
}

fn protocol_error(what: &str) -> Error {
    Error::new(ErrorKind::MalformedPgOutput, format!("unexpected pgoutput sequence: {what}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::envelope::{Change, Column, Envelope, Transaction};
    use crate::pgoutput::{Begin, Column as PgColumn, Commit, Insert, Value};

    fn rel_msg(ncols: usize) -> pgoutput::Relation<'static> {
        pgoutput::Relation {
            oid: 42,
            namespace: "public",
            name: "t",
            replica_identity: b'd',
            columns: (0..ncols)
                .map(|i| PgColumn { is_key: i == 0, name: ["id", "v", "w"][i], type_oid: 25, type_modifier: -1 })
                .collect(),
        }
    }

    fn describe(r: &pgoutput::Relation<'_>) -> Result<Relation> {
        Ok(Relation {
            id: r.oid,
            schema: r.namespace.to_owned(),
            table: r.name.to_owned(),
            columns: r
                .columns
                .iter()
                .map(|c| Column {
                    name: c.name.to_owned(),
                    type_name: "text".into(),
                    type_oid: c.type_oid,
                    key: c.is_key,
                    ..Column::default()
                })
                .collect(),
        })
    }

    fn begin(n: u64) -> Message<'static> {
        Message::Begin(Begin { final_lsn: Lsn(n * 100), commit_time: 0, xid: n as u32 })
    }

    fn commit(n: u64) -> Message<'static> {
        Message::Commit(Commit { flags: 0, commit_lsn: Lsn(n * 100), end_lsn: Lsn(n * 100 + 8), commit_time: 0 })
    }

    fn insert(v: &'static str) -> Message<'static> {
        Message::Insert(Insert { relation_oid: 42, new: vec![Value::Text(v), Value::Text(v)] })
    }

    fn run(messages: Vec<Message<'static>>, max: usize) -> (Vec<Envelope>, Assembler) {
        let mut a = Assembler::new(&StreamId::new("t", "i", 1), max);
        let mut out = Vec::new();
        for m in messages {
            if let Some(body) = a.push::<Error>(m, &mut describe).unwrap() {
                out.push(Envelope::parse(&body).unwrap());
            }
        }
        if let Some(body) = a.finish().unwrap() {
            out.push(Envelope::parse(&body).unwrap());
        }
        (out, a)
    }

    #[test]
    fn a_transaction_is_open_from_its_begin_to_its_commit() {
        let mut a = Assembler::new(&StreamId::new("t", "i", 1), 1 << 20);
        assert!(!a.in_transaction());
        for (message, open_after) in
            [(Message::Relation(rel_msg(2)), false), (begin(1), true), (insert("x"), true), (commit(1), false)]
        {
            a.push::<Error>(message, &mut describe).unwrap();
            assert_eq!(a.in_transaction(), open_after);
        }
    }

    #[test]
    fn small_transactions_share_a_message() {
        let mut msgs = vec![Message::Relation(rel_msg(2))];
        for n in 1..=50 {
            msgs.extend([begin(n), insert("x"), commit(n)]);
        }
        let (out, a) = run(msgs, 1 << 20);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].transactions.len(), 50);
        assert!(out[0].transactions.iter().all(|t| t.last && t.seq == 0));
        assert_eq!(a.counts(), Counts { changes: 50, transactions: 50, messages: 1 });
        assert_eq!(a.last_end_lsn(), Some(Lsn(5008)));
    }

    #[test]
    fn a_large_transaction_is_chunked_in_order() {
        let mut msgs = vec![Message::Relation(rel_msg(2)), begin(1)];
        msgs.extend((0..1000).map(|_| insert("some value")));
        msgs.push(commit(1));
        msgs.extend([begin(2), insert("y"), commit(2)]);
        let (out, _) = run(msgs, 2000);
        assert!(out.len() > 10, "{}", out.len());
        let chunks: Vec<_> = out.iter().flat_map(|e| e.transactions.iter()).filter(|t| t.xid == 1).collect();
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.seq as usize, i);
            assert_eq!(c.last, i + 1 == chunks.len());
        }
        let total: usize = chunks.iter().map(|c| c.changes.len()).sum();
        assert_eq!(total, 1000);
        for e in &out {
            assert!(
                e.transactions.iter().rev().skip(1).all(|t| t.last),
                "only the final transaction of a message may be unfinished"
            );
        }
    }

    #[test]
    fn a_relation_that_changes_shape_mid_message_cuts_it() {
        let msgs = vec![
            Message::Relation(rel_msg(2)),
            begin(1),
            insert("a"),
            commit(1),
            begin(2),
            Message::Relation(rel_msg(3)),
            Message::Insert(Insert { relation_oid: 42, new: vec![Value::Text("b"), Value::Null, Value::Text("c")] }),
            commit(2),
        ];
        let (out, _) = run(msgs, 1 << 20);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].relations[0].columns.len(), 2);
        assert_eq!(out[1].relations[0].columns.len(), 3);
        assert!(!out[0].transactions[1].last);
        assert!(out[1].transactions[0].last);
        assert_eq!(out[1].transactions[0].seq, 1);
        assert!(matches!(&out[1].transactions[0].changes[0], Change::Insert { new, .. } if new.len() == 3));
    }

    #[test]
    fn every_transaction_names_the_one_before_it_across_calls_and_chunks() {
        let mut a = Assembler::new(&StreamId::new("t", "i", 1), 300).after(Some(Lsn(7)));
        let mut out = Vec::new();
        let mut msgs = vec![Message::Relation(rel_msg(2)), begin(1), insert("a"), commit(1), begin(2)];
        msgs.extend((0..20).map(|_| insert("a long enough value")));
        msgs.push(commit(2));
        for m in msgs {
            out.extend(a.push::<Error>(m, &mut describe).unwrap());
        }
        out.extend(a.finish().unwrap());
        let txns: Vec<Transaction> = out.iter().flat_map(|b| Envelope::parse(b).unwrap().transactions).collect();
        assert!(txns.len() > 2, "transaction 2 is chunked");
        assert_eq!(txns[0].prev_commit_lsn, Some(Lsn(7)));
        let first = txns[0].commit_lsn;
        assert!(
            txns[1..].iter().all(|t| t.prev_commit_lsn == Some(first)),
            "every chunk of the second names the first"
        );
        assert_eq!(a.last_commit_lsn(), Some(txns[txns.len() - 1].commit_lsn));
    }

    #[test]
    fn tables_outside_the_task_are_left_out_but_transactions_kept() {
        let mut a = Assembler::new(&StreamId::new("t", "i", 1), 1 << 20).with_tables([43]);
        let mut out = Vec::new();
        for m in [Message::Relation(rel_msg(2)), begin(1), insert("a"), commit(1)] {
            out.extend(a.push::<Error>(m, &mut describe).unwrap());
        }
        out.extend(a.finish().unwrap());
        let env = Envelope::parse(&out[0]).unwrap();
        assert_eq!(env.transactions.len(), 1);
        assert!(env.transactions[0].changes.is_empty());
        assert!(env.relations.is_empty());
        assert_eq!(a.counts().changes, 0);
        // the same relation, once it is the task's, is kept (whatever its name: renames keep OIDs)
        let mut a = Assembler::new(&StreamId::new("t", "i", 1), 1 << 20).with_tables([42]);
        for m in [Message::Relation(rel_msg(2)), begin(1), insert("a"), commit(1)] {
            a.push::<Error>(m, &mut describe).unwrap();
        }
        assert_eq!(a.counts().changes, 1);
    }

    fn ddl(rel: u32, new_name: &str) -> Vec<u8> {
        format!(
            r#"{{"rel":{rel},"tag":"ALTER TABLE","old":{{"schema":"public","table":"t","columns":[{{"attnum":1,"name":"id","type":"text","type_oid":25,"key":true}}]}},
                "new":{{"schema":"public","table":"{new_name}","columns":[{{"attnum":1,"name":"id","type":"text","type_oid":25,"key":true}},{{"attnum":2,"name":"v","type":"text","type_oid":25}}]}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn schema_changes_of_the_tasks_tables_travel_where_they_happened() {
        let ours = ddl(42, "t2");
        let theirs = ddl(43, "x");
        let logical = |content: &'static [u8], transactional: bool, prefix: &'static str| {
            Message::Logical(pgoutput::LogicalMessage { transactional, lsn: Lsn(1), prefix, content })
        };
        let ours: &'static [u8] = Box::leak(ours.into_boxed_slice());
        let theirs: &'static [u8] = Box::leak(theirs.into_boxed_slice());
        let mut a = Assembler::new(&StreamId::new("t", "i", 1), 1 << 20).with_tables([42]);
        let mut out = Vec::new();
        for m in [
            Message::Relation(rel_msg(2)),
            begin(1),
            insert("a"),
            logical(ours, true, schema::MESSAGE_PREFIX),
            logical(theirs, true, schema::MESSAGE_PREFIX),
            logical(
                br#"{"rel":42,"key":["id"],"columns":["v"],"rows":[["a","1"]],"last":true}"#,
                true,
                schema::BACKFILL_PREFIX,
            ),
            logical(
                br#"{"rel":43,"key":["id"],"columns":["v"],"rows":[["a","1"]],"last":true}"#,
                true,
                schema::BACKFILL_PREFIX,
            ),
            logical(b"{}", true, "someone.else"),
            Message::Relation(rel_msg(2)),
            insert("b"),
            commit(1),
        ] {
            out.extend(a.push::<Error>(m, &mut describe).unwrap());
        }
        out.extend(a.finish().unwrap());
        let txns: Vec<Transaction> = out.iter().flat_map(|b| Envelope::parse(b).unwrap().transactions).collect();
        let ops: Vec<&str> = txns
            .iter()
            .flat_map(|t| t.changes.iter())
            .map(|c| match c {
                crate::envelope::Change::Insert { .. } => "insert",
                crate::envelope::Change::Schema(s) if s.rel == 42 => "schema 42",
                crate::envelope::Change::Backfill(b) if b.rel == 42 => "backfill 42",
                _ => "other",
            })
            .collect();
        assert_eq!(ops, vec!["insert", "schema 42", "backfill 42", "insert"]);
        // A message the trigger did not write is an error, not something to skip silently.
        let mut a = Assembler::new(&StreamId::new("t", "i", 1), 1 << 20).with_tables([42]);
        a.push::<Error>(begin(1), &mut describe).unwrap();
        assert!(a.push::<Error>(logical(b"{\"rel\":", true, schema::MESSAGE_PREFIX), &mut describe).is_err());
        assert!(
            a.push::<Error>(
                logical(
                    br#"{"rel":42,"key":["id"],"columns":["v"],"rows":[["a"]],"last":true}"#,
                    true,
                    schema::BACKFILL_PREFIX
                ),
                &mut describe
            )
            .is_err()
        );
    }

    #[test]
    fn changes_the_copy_contains_are_left_out_but_transactions_kept() {
        let mut handoff = Handoff::new();
        // transactions 1 and 3 are visible in the copy of relation 42, transaction 2 is not
        handoff.add(42, crate::handoff::Snapshot::parse("2:4:2").unwrap());
        let mut a = Assembler::new(&StreamId::new("t", "i", 1), 1 << 20).with_handoff(handoff);
        let mut msgs = vec![Message::Relation(rel_msg(2))];
        for n in 1..=3 {
            msgs.extend([begin(n), insert("x"), commit(n)]);
        }
        let mut out = Vec::new();
        for m in msgs {
            if let Some(body) = a.push::<Error>(m, &mut describe).unwrap() {
                out.push(body);
            }
        }
        out.extend(a.finish().unwrap());
        let env = Envelope::parse(&out[0]).unwrap();
        let sizes: Vec<usize> = env.transactions.iter().map(|t| t.changes.len()).collect();
        assert_eq!(sizes, vec![0, 1, 0]);
        assert_eq!(a.counts().changes, 1);
        assert_eq!(a.last_end_lsn(), Some(Lsn(308)));
    }

    #[test]
    fn sequence_errors_are_reported() {
        let mut a = Assembler::new(&StreamId::new("t", "i", 1), 100);
        assert!(a.push::<Error>(insert("x"), &mut describe).is_err());
        assert!(a.push::<Error>(commit(1), &mut describe).is_err());
        a.push::<Error>(begin(1), &mut describe).unwrap();
        assert!(a.push::<Error>(begin(2), &mut describe).is_err());
        assert!(a.finish().is_err());
    }
}
