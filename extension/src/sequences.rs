//! The task's sequence values, published when they changed: at a bounded interval
//! (`trempy.sequence_interval`) once the task streams, and at the end of its full load
//! (protocol/src/sequence.rs says what the applier makes of them).

use std::time::Instant;

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use trempy_protocol::envelope::{self, StreamId};
use trempy_protocol::sequence::{SequenceOwner, SequenceValue};
use trempy_protocol::settings::TaskSettings;

use crate::amqp::Publisher;
use crate::error::{Error, ErrorKind};
use crate::gucs;
use crate::outbox::{confirm, ensure_connected, send};
use crate::session::in_transaction;
use crate::table_shape;

/// What a task worker last published of its sequences, and when it looks again.
pub(crate) struct Sequences {
    last: Option<String>,
    due: Instant,
    sent: Option<Instant>,
    published: u64,
}

/// Unchanged values are published again after this many intervals.
const RESEND_AFTER_INTERVALS: u32 = 6;

impl Sequences {
    pub(crate) fn new() -> Self {
        Self { last: None, due: Instant::now(), sent: None, published: 0 }
    }

    /// Reads the task's sequences when the interval has passed (or at once when `now`), and
    /// publishes them when they differ from what was last published, or were last published
    /// [`RESEND_AFTER_INTERVALS`] intervals ago. Runs on the main thread, outside a transaction.
    pub(crate) fn publish(
        &mut self,
        task: &str,
        settings: &TaskSettings,
        stream: &StreamId,
        publisher: &Publisher,
        now: bool,
    ) -> Result<(), Error> {
        if !now && Instant::now() < self.due {
            return Ok(());
        }
        self.due = Instant::now() + gucs::sequence_interval();
        let values = in_transaction(|| {
            Spi::connect(|client| {
                let rows = client.select("SELECT trempy.task_sequences($1)::text", Some(1), &[task.into()])?;
                let text = if rows.is_empty() { None } else { rows.first().get::<String>(1)? };
                let mut values: Vec<SequenceValue> = serde_json::from_str(text.as_deref().unwrap_or("[]"))
                    .map_err(|e| Error::new(ErrorKind::Catalog, format!("trempy.task_sequences({task}): {e}")))?;
                for owner in values.iter_mut().filter_map(|v| v.owner.as_mut()) {
                    owner.target = target_of(client, settings, owner);
                }
                Ok(values)
            })
        })?;
        let text = serde_json::to_string(&values)
            .map_err(|e| Error::new(ErrorKind::Catalog, format!("sequences of {task}: {e}")))?;
        // Unchanged values go again now and then: what the target could not do with them the
        // first time (a column default for a table created since) gets done.
        let stale = self.sent.is_none_or(|at| at.elapsed() >= gucs::sequence_interval() * RESEND_AFTER_INTERVALS);
        if self.last.as_deref() == Some(text.as_str()) && !stale {
            return Ok(());
        }
        if values.is_empty() && self.last.is_none() {
            self.last = Some(text);
            return Ok(());
        }
        ensure_connected(publisher)?;
        let body = envelope::sequences_message(stream, &values)?;
        self.published += 1;
        send(publisher, body, format!("{task}:sequences:{}:{}", stream.generation, self.published))?;
        confirm(publisher)?;
        self.last = Some(text);
        self.sent = Some(Instant::now());
        Ok(())
    }
}

/// Where the task's transformations put the owning column on the target: (schema, table,
/// column); `None` when they leave it out (or the table is gone).
fn target_of(client: &SpiClient<'_>, settings: &TaskSettings, owner: &SequenceOwner) -> Option<[String; 3]> {
    let relation = table_shape::describe_table(client, owner.relid).ok()?;
    let (schema, table) = (relation.schema.clone(), relation.table.clone());
    let columns = table_shape::rule_columns(relation);
    let index = columns.iter().position(|c| c.name == owner.column)?;
    let (_, plan) = settings.table_plan(&schema, &table, &columns).ok()?;
    let column = plan.columns.iter().find(|c| c.source == Some(index))?;
    Some([plan.target_schema.clone(), plan.target_table.clone(), column.name.clone()])
}
