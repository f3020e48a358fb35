//! The task's sequence values, published when they changed: at a bounded interval
//! (`trempy.sequence_interval`) once the task streams, and at the end of its full load
//! (protocol/src/sequence.rs says what the applier makes of them).

use std::time::Instant;

use pgrx::prelude::*;
use trempy_protocol::envelope::{self, StreamId};
use trempy_protocol::sequence::SequenceValue;

use crate::error::{Error, ErrorKind};
use crate::gucs;
use crate::publish::Publisher;
use crate::worker::{confirm, ensure_connected, in_transaction, send};

/// What a task worker last published of its sequences, and when it looks again.
pub(crate) struct Sequences {
    last: Option<String>,
    due: Instant,
    published: u64,
}

impl Sequences {
    pub(crate) fn new() -> Self {
        Self { last: None, due: Instant::now(), published: 0 }
    }

    /// Reads the task's sequences when the interval has passed (or at once when `now`), and
    /// publishes them when they differ from what was last published. Runs on the main thread,
    /// outside a transaction.
    pub(crate) fn publish(&mut self, task: &str, stream: &StreamId, publisher: &Publisher, now: bool) -> Result<(), Error> {
        if !now && Instant::now() < self.due {
            return Ok(());
        }
        self.due = Instant::now() + gucs::sequence_interval();
        let text = in_transaction(|| {
            Spi::connect(|client| {
                let rows = client.select("SELECT trempy.task_sequences($1)::text", Some(1), &[task.into()])?;
                Ok(if rows.is_empty() { None } else { rows.first().get::<String>(1)? })
            })
        })?
        .unwrap_or_else(|| "[]".to_owned());
        if self.last.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        let values: Vec<SequenceValue> = serde_json::from_str(&text).map_err(|e| Error::new(ErrorKind::Catalog, format!("trempy.task_sequences({task}): {e}")))?;
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
        Ok(())
    }
}
