//! What became of the messages offered so far. The queue must only ever receive a prefix of the
//! stream, never a stream with a hole in it: after the first failure nothing more is published
//! (it is discarded) and every flush reports that first failure, so the slot is not advanced
//! past it, until the main thread rewinds: it then publishes again from the slot's confirmed
//! position (or a copy from its start). Flushes can be asked for while messages are still being
//! offered (a streaming worker does not wait for them), so a failure must outlive the flush that
//! reports it: a message offered after that flush is still behind the hole.

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

    /// `Ok` when every message so far was confirmed, else the first failure.
    pub(super) fn flush(&self) -> Result<(), String> {
        self.failure.clone().map_or(Ok(()), Err)
    }

    /// The main thread starts publishing again from a confirmed position: messages are
    /// published from here on.
    pub(super) fn rewind(&mut self) {
        self.failure = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_whose_messages_were_all_confirmed_flushes_ok() {
        let batch = Batch::default();
        assert!(batch.admits());
        assert_eq!(batch.flush(), Ok(()));
    }

    #[test]
    fn after_a_failure_nothing_more_is_published_until_the_main_thread_rewinds() {
        let mut batch = Batch::default();
        batch.fail("RabbitMQ refused (nacked) a message".to_owned());
        assert!(!batch.admits(), "a later message would leave a hole in the queue");
        batch.fail("publish failed: connection reset".to_owned());
        assert_eq!(batch.flush(), Err("RabbitMQ refused (nacked) a message".to_owned()));
        // a flush asked for before the main thread saw the failure: still behind the hole
        assert!(!batch.admits(), "a message offered after the reporting flush is still behind the hole");
        assert_eq!(batch.flush(), Err("RabbitMQ refused (nacked) a message".to_owned()));
        // published again from the slot's confirmed position
        batch.rewind();
        assert!(batch.admits());
        assert_eq!(batch.flush(), Ok(()));
    }
}
