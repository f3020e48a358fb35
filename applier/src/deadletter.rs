//! Dead letters: source transactions (and messages that are not valid envelopes) the applier moved
//! past, kept so that an operator can inspect, replay or discard them.
//!
//! Two copies of each dead letter exist:
//! * the authoritative one in the target, `trempy.applier_deadletters` (one row per source
//!   transaction, or per invalid message; the body as it came, state `dead`, `replayed` or
//!   `discarded`). A transaction's row is inserted **in the target transaction that moves the
//!   watermark past it**, so a dead-lettered transaction is never both skipped and unrecorded;
//! * a copy in the task's dead-letter queue (`dlx_queue_<task>`), published through the task's DLX
//!   with publisher confirms **before** that target transaction commits, with headers saying why
//!   (`x-trempy-*`). A crash between the confirm and the COMMIT can leave a copy whose row never
//!   committed (the transaction is then dead-lettered again under a new id): the queue holds
//!   dead letters at least once, the table exactly once.
//!
//! Replay applies the stored body in one target transaction that also marks the row `replayed`
//! (guarded by `state = 'dead'`, so replaying twice is a no-op), then removes queue copies whose
//! row is no longer `dead`. It writes the transaction's row images as they were at its source
//! commit, so it refuses, unless forced, a dead letter the task's watermark has moved past
//! ([`overtaken`]): it lists the tables and keys it would write ([`rows_written`]) instead.

use std::sync::Arc;

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use tokio_postgres::Client;
use trempy_protocol::Lsn;
use trempy_protocol::envelope::{CONTENT_TYPE, Change, Envelope, Transaction};
use trempy_protocol::names::TaskNames;
use trempy_protocol::settings::TaskSettings;

use crate::apply::Writer;
use crate::broker;
use crate::error::{Error, ErrorKind};
use crate::rules::{self, Rules};
use crate::target_catalog::Catalog;

/// What a dead letter says about itself (headers and table columns).
#[derive(Debug, Clone)]
pub(crate) struct Why<'e> {
    pub(crate) error: &'e Error,
    pub(crate) commit_lsn: Option<Lsn>,
    pub(crate) xid: Option<u32>,
    pub(crate) attempts: u32,
}

/// A message body holding exactly one source transaction of `envelope`.
pub(crate) fn single(envelope: &Envelope, transaction: Transaction) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(&envelope.single(transaction)).map_err(|e| Error::new(ErrorKind::Envelope, e.to_string()))
}

/// Records a dead letter in the target (inside the caller's transaction, or on its own) and
/// returns its id.
pub(crate) async fn insert(client: &Client, task: &str, why: &Why<'_>, body: &[u8]) -> Result<i64, Error> {
    let row = client
        .query_one(
            "INSERT INTO trempy.applier_deadletters (task_name, commit_lsn, xid, table_name, operation, sqlstate, error_class, reason, attempts, body)
             VALUES ($1, $2::text::pg_lsn, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            &[
                &task,
                &why.commit_lsn.map(|l| l.to_string()),
                &why.xid.map(i64::from),
                &why.error.table(),
                &why.error.operation().map(|o| o.as_str()),
                &why.error.sqlstate(),
                &why.error.kind().class(),
                &why.error.message(),
                &i32::try_from(why.attempts).unwrap_or(i32::MAX),
                &body,
            ],
        )
        .await?;
    Ok(row.get(0))
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// The `x-trempy-*` headers of a dead letter.
fn headers(task: &str, id: i64, why: &Why<'_>) -> FieldTable {
    let mut h = FieldTable::default();
    let mut put = |k: &str, v: AMQPValue| {
        h.insert(ShortString::from(k), v);
    };
    put("x-trempy-task", long(task));
    put("x-trempy-deadletter-id", AMQPValue::LongLongInt(id));
    put("x-trempy-error-class", long(why.error.kind().class()));
    put("x-trempy-reason", long(why.error.message()));
    put("x-trempy-attempts", AMQPValue::LongLongInt(i64::from(why.attempts)));
    if let Some(code) = why.error.sqlstate() {
        put("x-trempy-sqlstate", long(code));
    }
    if let Some(table) = why.error.table() {
        put("x-trempy-table", long(table));
    }
    if let Some(op) = why.error.operation() {
        put("x-trempy-operation", long(op.as_str()));
    }
    if let Some(lsn) = why.commit_lsn {
        put("x-trempy-commit-lsn", long(&lsn.to_string()));
    }
    h
}

/// A channel in confirm mode, for dead-letter copies.
pub(crate) async fn confirm_channel(connection: &Connection) -> Result<Channel, Error> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

/// Publishes a dead letter's copy to the task's DLX and waits for RabbitMQ's confirm; a nack
/// or a returned (unroutable) message is an error.
pub(crate) async fn publish(
    channel: &Channel,
    names: &TaskNames,
    id: i64,
    why: &Why<'_>,
    body: &[u8],
) -> Result<(), Error> {
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(CONTENT_TYPE.into())
        .with_headers(headers(names.task(), id, why));
    let publish = async {
        Ok(channel
            .basic_publish(
                names.dlx_exchange().as_str().into(),
                names.dlx_routing_key().as_str().into(),
                BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                body,
                properties,
            )
            .await?
            .await?)
    };
    let confirm = broker::within(broker::STEP_TIMEOUT, "publishing a dead letter", publish).await?;
    if !confirm.is_ack() {
        return Err(Error::new(ErrorKind::Broker, "RabbitMQ refused a dead letter (nack)"));
    }
    if confirm.take_message().is_some() {
        return Err(Error::new(
            ErrorKind::Broker,
            "RabbitMQ returned a dead letter as unroutable (is the dead-letter queue declared?)",
        ));
    }
    Ok(())
}

/// One row of `dlq list`.
pub(crate) async fn list(client: &Client, task: &str) -> Result<Vec<String>, Error> {
    let rows = client
        .query(
            "SELECT id, state, coalesce(commit_lsn::text, '-'), coalesce(table_name, '-'), coalesce(operation, '-'), coalesce(sqlstate, '-'),
                    error_class, attempts, dead_lettered_at::text, reason
               FROM trempy.applier_deadletters WHERE task_name = $1 ORDER BY id",
            &[&task],
        )
        .await?;
    let mut lines = vec![
        "id\tstate\tcommit_lsn\ttable\toperation\tsqlstate\terror_class\tattempts\tdead_lettered_at\treason".to_owned(),
    ];
    for row in rows {
        let (id, attempts): (i64, i32) = (row.get(0), row.get(7));
        let text = |i: usize| row.get::<_, String>(i);
        lines.push(format!(
            "{id}\t{}\t{}\t{}\t{}\t{}\t{}\t{attempts}\t{}\t{}",
            text(1),
            text(2),
            text(3),
            text(4),
            text(5),
            text(6),
            text(8),
            text(9)
        ));
    }
    Ok(lines)
}

/// `dlq show`: everything about one dead letter; the body (row values) only if asked for.
pub(crate) async fn show(client: &Client, task: &str, id: i64, with_body: bool) -> Result<Vec<String>, Error> {
    let row = client
        .query_opt(
            "SELECT state, coalesce(commit_lsn::text, '-'), coalesce(xid::text, '-'), coalesce(table_name, '-'), coalesce(operation, '-'),
                    coalesce(sqlstate, '-'), error_class, attempts, dead_lettered_at::text, coalesce(resolved_at::text, '-'), reason, body
               FROM trempy.applier_deadletters WHERE task_name = $1 AND id = $2",
            &[&task, &id],
        )
        .await?
        .ok_or_else(|| Error::new(ErrorKind::Conflict, format!("task {task} has no dead letter {id}")))?;
    let text = |i: usize| row.get::<_, String>(i);
    let attempts: i32 = row.get(7);
    let body: Vec<u8> = row.get(11);
    let mut lines = vec![
        format!("id: {id}"),
        format!("state: {}", text(0)),
        format!("commit_lsn: {}", text(1)),
        format!("xid: {}", text(2)),
        format!("table: {}", text(3)),
        format!("operation: {}", text(4)),
        format!("sqlstate: {}", text(5)),
        format!("error_class: {}", text(6)),
        format!("attempts: {attempts}"),
        format!("dead_lettered_at: {}", text(8)),
        format!("resolved_at: {}", text(9)),
        format!("reason: {}", text(10)),
        format!("body_bytes: {}", body.len()),
    ];
    match Envelope::parse(&body) {
        Ok(envelope) => {
            let changes: usize = envelope.transactions.iter().map(|t| t.changes.len()).sum();
            let tables: Vec<String> = envelope.relations.iter().map(|r| format!("{}.{}", r.schema, r.table)).collect();
            lines.push(format!("changes: {changes}"));
            lines.push(format!("relations: {}", tables.join(", ")));
        }
        Err(err) => lines.push(format!("body: not a valid envelope ({})", err.message())),
    }
    if with_body {
        lines.push(String::from_utf8_lossy(&body).into_owned());
    }
    Ok(lines)
}

/// The dead letters a command acts on: one id, or every `dead` one of the task.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Selection {
    One(i64),
    All,
}

async fn selected(client: &Client, task: &str, which: Selection) -> Result<Vec<i64>, Error> {
    let rows = match which {
        Selection::One(id) => {
            client
                .query("SELECT id FROM trempy.applier_deadletters WHERE task_name = $1 AND id = $2", &[&task, &id])
                .await?
        }
        Selection::All => {
            client
                .query(
                    "SELECT id FROM trempy.applier_deadletters WHERE task_name = $1 AND state = 'dead' ORDER BY id",
                    &[&task],
                )
                .await?
        }
    };
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// What happened to one dead letter in `replay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Applied now.
    Replayed,
    /// Not `dead` any more (replayed or discarded before): nothing done.
    AlreadyResolved,
    /// Not applied: the task moved on since it was dead-lettered, so its old row images could
    /// overwrite newer rows ([`overtaken`]). `rows` lists what it would write, key values
    /// included: for the operator's terminal only, never for logs.
    Refused { reason: String, rows: Vec<String> },
}

/// Why replaying a dead letter could overwrite newer rows, if it could: the task's applied
/// position `progress` (watermark, generation) has moved past the dead letter's source commit
/// (`commit_lsn`, the last of its transactions) or the task was reloaded since (`generation`, the
/// dead letter's). The applier keeps no history per row, so any later applied transaction may
/// have touched the same rows. Never quotes row values.
pub(crate) fn overtaken(progress: Option<(Lsn, u32)>, commit_lsn: Option<Lsn>, generation: u32) -> Option<String> {
    let (watermark, current) = progress?;
    if current > generation {
        return Some(format!(
            "the task was reloaded (generation {current}) after this dead letter (generation {generation}): its rows were loaded again"
        ));
    }
    let commit_lsn = commit_lsn?;
    (current == generation && watermark > commit_lsn)
        .then(|| format!("the task's watermark {watermark} is past this dead letter's commit LSN {commit_lsn}: later changes may have touched the same rows"))
}

/// Keys listed per table by [`rows_written`] before the rest is only counted.
const LISTED_KEYS: usize = 20;

/// What replaying `envelope` would write, one line per table: the source table and the key
/// values of its rows, in change order (an update that changes the key lists both keys). Holds
/// row values: for the operator's terminal only.
pub(crate) fn rows_written(envelope: &Envelope) -> Vec<String> {
    let mut tables: Vec<(u32, Vec<String>, usize)> = Vec::new();
    let mut note = |rel: u32, key: String| {
        let at = match tables.iter().position(|(r, _, _)| *r == rel) {
            Some(at) => at,
            None => {
                tables.push((rel, Vec::new(), 0));
                tables.len() - 1
            }
        };
        let (_, keys, more) = &mut tables[at];
        if keys.len() < LISTED_KEYS {
            if !keys.contains(&key) {
                keys.push(key);
            }
        } else if !keys.contains(&key) {
            *more += 1;
        }
    };
    let key_of = |rel: u32, row: &[Option<String>]| -> String {
        let Some(relation) = envelope.relation(rel) else { return "?".to_owned() };
        let parts: Vec<String> = relation
            .columns
            .iter()
            .zip(row)
            .filter(|(c, _)| c.key)
            .map(|(c, v)| {
                format!("{}={}", c.name, v.as_deref().map_or_else(|| "NULL".to_owned(), |v| format!("{v:?}")))
            })
            .collect();
        if parts.is_empty() { "(no key columns)".to_owned() } else { format!("({})", parts.join(", ")) }
    };
    for transaction in &envelope.transactions {
        for change in &transaction.changes {
            match change {
                Change::Insert { rel, new } => note(*rel, key_of(*rel, new)),
                Change::Update { rel, old, new, .. } => {
                    if let Some(old) = old {
                        let before = key_of(*rel, old);
                        if before != key_of(*rel, new) {
                            note(*rel, before);
                        }
                    }
                    note(*rel, key_of(*rel, new));
                }
                Change::Delete { rel, old } => note(*rel, key_of(*rel, old)),
                Change::Truncate { rels, .. } => {
                    rels.iter().for_each(|rel| note(*rel, "every row (TRUNCATE)".to_owned()))
                }
                Change::Schema(schema) => note(schema.rel, "its schema (a schema change)".to_owned()),
                Change::Backfill(backfill) => {
                    note(backfill.rel, format!("{} rows' rewritten columns (a backfill)", backfill.rows.len()))
                }
            }
        }
    }
    tables
        .into_iter()
        .map(|(rel, keys, more)| {
            let name = envelope
                .relation(rel)
                .map_or_else(|| format!("relation {rel}"), |r| format!("{}.{}", r.schema, r.table));
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            format!("{name}: {}{more}", keys.join(" "))
        })
        .collect()
}

/// Replays one dead letter: its transaction applied and the row marked `replayed` in one target
/// transaction; a no-op if the row is not `dead`. Unless `force`, refuses one the task has moved
/// past ([`overtaken`]).
async fn replay_one(client: &Arc<Client>, task: &str, id: i64, force: bool) -> Result<Outcome, Error> {
    client.batch_execute("BEGIN").await?;
    let result = async {
        let row = client
            .query_opt("SELECT body FROM trempy.applier_deadletters WHERE task_name = $1 AND id = $2 AND state = 'dead' FOR UPDATE", &[&task, &id])
            .await?;
        let Some(row) = row else { return Ok(Outcome::AlreadyResolved) };
        let body: Vec<u8> = row.get(0);
        let mut envelope = Envelope::parse(&body).map_err(|e| match e.kind() {
            trempy_protocol::ErrorKind::NewerEnvelope => Error::new(ErrorKind::NewerEnvelope, format!("dead letter {id} cannot be replayed by this applier: {e}")),
            _ => Error::new(ErrorKind::Envelope, format!("dead letter {id} is not a valid envelope and cannot be replayed (discard it): {e}")),
        })?;
        if envelope.task != task {
            return Err(Error::new(ErrorKind::Envelope, format!("dead letter {id} belongs to task {:?}; discard it", envelope.task)));
        }
        // Under the task's settings as last recorded by the applier: its mode, filters and
        // transformations.
        let progress = client
            .query_opt("SELECT settings::text, commit_lsn::text, generation FROM trempy.applier_progress WHERE task_name = $1", &[&task])
            .await?;
        if !force {
            let position = progress.as_ref().and_then(|r| {
                let watermark = Lsn::parse(&r.get::<_, String>(1)).ok()?;
                Some((watermark, u32::try_from(r.get::<_, i32>(2)).unwrap_or(0)))
            });
            let commit_lsn = envelope.transactions.iter().map(|t| t.commit_lsn).max();
            if let Some(reason) = overtaken(position, commit_lsn, envelope.generation) {
                return Ok(Outcome::Refused { reason, rows: rows_written(&envelope) });
            }
        }
        let settings = progress.and_then(|r| r.get::<_, Option<String>>(0)).and_then(|text| TaskSettings::parse(&text).ok());
        let (mut catalog, mut rules) = (Catalog::default(), Rules::default());
        rules.prepare(client, &mut catalog, settings.as_ref(), &envelope.relations, false).await?;
        let mode = rules::mode(settings.as_ref());
        let mut writer = Writer::new();
        for transaction in std::mem::take(&mut envelope.transactions) {
            let lsn = transaction.commit_lsn;
            for change in transaction.changes {
                for (change, mode) in rules.map(change, mode, &transaction.commit_time)? {
                    writer.apply(client, rules.targets(), change, mode, &transaction.commit_time).await.map_err(|e| e.with_lsn(lsn))?;
                }
            }
        }
        writer.finish(client).await?;
        client.execute("UPDATE trempy.applier_deadletters SET state = 'replayed', resolved_at = now() WHERE id = $1", &[&id]).await?;
        Ok(Outcome::Replayed)
    }
    .await;
    match result {
        Ok(outcome @ Outcome::Refused { .. }) => {
            client.batch_execute("ROLLBACK").await?;
            Ok(outcome)
        }
        Ok(outcome) => {
            client.batch_execute("COMMIT").await?;
            Ok(outcome)
        }
        Err(err) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(err)
        }
    }
}

/// `dlq replay`: replays the selected dead letters in id order, stopping at the first failure or
/// refusal. Returns each id with its outcome (the failure or refusal, if any, last).
pub(crate) async fn replay(
    client: &Arc<Client>,
    task: &str,
    which: Selection,
    force: bool,
) -> Result<Vec<(i64, Result<Outcome, Error>)>, Error> {
    let mut done = Vec::new();
    for id in selected(client, task, which).await? {
        let outcome = replay_one(client, task, id, force).await;
        let failed = matches!(outcome, Err(_) | Ok(Outcome::Refused { .. }));
        done.push((id, outcome));
        if failed {
            break;
        }
    }
    Ok(done)
}

/// `dlq discard`: marks the selected dead letters `discarded`; returns how many were `dead`.
pub(crate) async fn discard(client: &Client, task: &str, which: Selection) -> Result<u64, Error> {
    let n = match which {
        Selection::One(id) => {
            client
                .execute("UPDATE trempy.applier_deadletters SET state = 'discarded', resolved_at = now() WHERE task_name = $1 AND id = $2 AND state = 'dead'", &[&task, &id])
                .await?
        }
        Selection::All => {
            client
                .execute("UPDATE trempy.applier_deadletters SET state = 'discarded', resolved_at = now() WHERE task_name = $1 AND state = 'dead'", &[&task])
                .await?
        }
    };
    Ok(n)
}

/// Removes from the dead-letter queue the copies whose row is no longer `dead` (replayed,
/// discarded, or never committed); other messages go back to the queue untouched. Returns how
/// many were removed.
pub(crate) async fn sweep(client: &Client, amqp_url: &str, names: &TaskNames) -> Result<u64, Error> {
    let connection = broker::connect(amqp_url, format!("trempy-applier dlq {}", names.task())).await?;
    let channel = connection.create_channel().await?;
    trempy_protocol::topology::declare_consumer_queues(&channel, names).await?;
    let mut removed = 0_u64;
    // Messages kept stay unacknowledged until the channel closes, so each is fetched once.
    while let Some(message) =
        channel.basic_get(names.dlx_queue().as_str().into(), BasicGetOptions { no_ack: false }).await?
    {
        let id = message
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-trempy-deadletter-id"))
            .and_then(|v| match v {
                AMQPValue::LongLongInt(i) => Some(*i),
                AMQPValue::LongInt(i) => Some(i64::from(*i)),
                _ => None,
            });
        let Some(id) = id else { continue }; // not ours (dead-lettered by the broker itself): keep
        let state: Option<String> = client
            .query_opt(
                "SELECT state FROM trempy.applier_deadletters WHERE task_name = $1 AND id = $2",
                &[&names.task(), &id],
            )
            .await?
            .map(|r| r.get(0));
        if state.as_deref() != Some("dead") {
            message.delivery.acker.ack(BasicAckOptions::default()).await?;
            removed += 1;
        }
    }
    broker::close(&connection, "bye").await;
    Ok(removed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use trempy_protocol::envelope::{Column, Relation};

    use super::*;

    #[test]
    fn replay_is_refused_once_the_task_moved_past_the_dead_letter() {
        let at = |lsn: u64, generation: u32| Some((Lsn(lsn), generation));
        // Dead-lettered as the last applied transaction: nothing applied since.
        assert_eq!(overtaken(at(0x20, 1), Some(Lsn(0x20)), 1), None);
        // Later transactions applied: any of them may have touched the same rows.
        let reason = overtaken(at(0x30, 1), Some(Lsn(0x20)), 1).unwrap();
        assert!(reason.contains("0/30") && reason.contains("0/20"), "{reason}");
        // Reloaded since: refused whatever the watermark.
        assert!(overtaken(at(0, 2), Some(Lsn(0x20)), 1).unwrap().contains("reloaded"));
        assert!(overtaken(at(0x90, 3), Some(Lsn(0x20)), 1).unwrap().contains("generation 3"));
        // Nothing recorded, nothing to compare with.
        assert_eq!(overtaken(None, Some(Lsn(0x20)), 1), None);
        assert_eq!(overtaken(at(0x30, 1), None, 1), None);
        // A dead letter of a newer generation than the progress row (cannot happen, but safe).
        assert_eq!(overtaken(at(0x30, 1), Some(Lsn(0x20)), 2), None);
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    #[test]
    fn rows_written_lists_tables_and_keys_in_order() {
        let column = |name: &str, key: bool| Column {
            name: name.into(),
            type_name: "text".into(),
            type_oid: 25,
            key,
            ..Column::default()
        };
        let relations = vec![
            Relation {
                id: 1,
                schema: "public".into(),
                table: "orders".into(),
                columns: vec![column("id", true), column("region", true), column("v", false)],
            },
            Relation { id: 2, schema: "public".into(), table: "lines".into(), columns: vec![column("n", true)] },
        ];
        let changes = vec![
            Change::Insert { rel: 1, new: vec![s("1"), s("EU"), s("secret value")] },
            Change::Update {
                rel: 1,
                old: Some(vec![s("1"), s("EU"), None]),
                new: vec![s("2"), s("EU"), s("x")],
                unchanged: vec![],
            },
            Change::Update { rel: 1, old: None, new: vec![s("2"), s("EU"), s("y")], unchanged: vec![] },
            Change::Delete { rel: 2, old: vec![None] },
            Change::Truncate { rels: vec![2], cascade: false, restart_identity: false },
        ];
        let transaction = Transaction {
            changes,
            xid: 1,
            commit_lsn: Lsn(0x20),
            prev_commit_lsn: None,
            commit_time: String::new(),
            seq: 0,
            last: true,
        };
        let envelope = Envelope {
            version: 1,
            task: "t".into(),
            incarnation: None,
            generation: 1,
            settings: None,
            transactions: vec![transaction],
            relations,
            load: None,
            sequences: None,
        };
        assert_eq!(
            rows_written(&envelope),
            vec![
                "public.orders: (id=\"1\", region=\"EU\") (id=\"2\", region=\"EU\")".to_owned(),
                "public.lines: (n=NULL) every row (TRUNCATE)".to_owned(),
            ]
        );
        assert!(!rows_written(&envelope).concat().contains("secret value"), "only key values are listed");

        let many: Vec<Change> =
            (0..LISTED_KEYS + 5).map(|i| Change::Insert { rel: 2, new: vec![Some(i.to_string())] }).collect();
        let transaction = Transaction {
            changes: many,
            xid: 1,
            commit_lsn: Lsn(0x20),
            prev_commit_lsn: None,
            commit_time: String::new(),
            seq: 0,
            last: true,
        };
        let envelope = Envelope { transactions: vec![transaction], ..envelope };
        let lines = rows_written(&envelope);
        assert!(lines[0].ends_with(" and 5 more"), "{lines:?}");
    }
}
