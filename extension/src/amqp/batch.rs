//! What became of the messages offered since the last flush. The queue must only ever receive a
//! prefix of a batch, never a batch with a hole in it: after the first failure nothing more of
//! the batch is published (it is discarded, and the main thread publishes the batch again from
//! its start), and the flush reports that first failure, so the slot is not advanced past it.

/// The publishing state of the current batch.
#[derive(Debug, Default)]
pub(super) struct Batch {
    failure: Option<String>,
}

impl Batch {
    /// Whether the next message may be published: not after a failure, which would leave a hole.
    pub(super) fn admits(&self) -> bool {
        self.failure.is_none()
    }

    /// Records why a message was not confirmed; the first failure is the one reported.
    pub(super) fn fail(&mut self, reason: String) {
        self.failure.get_or_insert(reason);
    }

    /// `Ok` when every message since the last flush was confirmed, else the first failure; the
    /// next message starts a new batch.
    pub(super) fn flush(&mut self) -> Result<(), String> {
        self.failure.take().map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_whose_messages_were_all_confirmed_flushes_ok() {
        let mut batch = Batch::default();
        assert!(batch.admits());
        assert_eq!(batch.flush(), Ok(()));
    }

    #[test]
    fn after_a_failure_nothing_more_of_the_batch_is_published_and_the_flush_reports_the_first() {
        let mut batch = Batch::default();
        batch.fail("RabbitMQ refused (nacked) a message".to_owned());
        assert!(!batch.admits(), "a later message would leave a hole in the queue");
        batch.fail("publish failed: connection reset".to_owned());
        assert_eq!(batch.flush(), Err("RabbitMQ refused (nacked) a message".to_owned()));
        // the batch is published again from its start: a new batch
        assert!(batch.admits());
        assert_eq!(batch.flush(), Ok(()));
    }
}
