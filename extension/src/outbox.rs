//! The main thread's side of publishing: hands messages to the AMQP thread ([`crate::publish`],
//! which may not call PostgreSQL) and waits for its answers, giving up on shutdown.

use std::time::Duration;

use crate::amqp::{Offer, Publisher};
use crate::error::{Error, ErrorKind};
use crate::session::shutdown_requested;

/// Hands a message to the AMQP thread, waiting while it is busy (and giving up on shutdown).
pub(crate) fn send(publisher: &Publisher, body: Vec<u8>, message_id: String) -> Result<(), Error> {
    let mut pending = (body, message_id);
    loop {
        match publisher.offer(pending.0, pending.1) {
            Offer::Accepted => return Ok(()),
            Offer::Gone => return Err(Error::new(ErrorKind::PublisherGone, "the AMQP thread has stopped")),
            Offer::Full(body, id) => {
                if shutdown_requested() {
                    return Err(Error::new(ErrorKind::Shutdown, "shutdown requested while publishing"));
                }
                pending = (body, id);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Waits until RabbitMQ has confirmed everything sent so far.
pub(crate) fn confirm(publisher: &Publisher) -> Result<(), Error> {
    await_reply(publisher.flush())
}

/// Makes sure the AMQP thread is connected to RabbitMQ, so that a batch is decoded only when it
/// can be published (decoding a backlog costs seconds; RabbitMQ may be down for a while).
pub(crate) fn ensure_connected(publisher: &Publisher) -> Result<(), Error> {
    await_reply(publisher.connect())
}

/// The error for a failure the AMQP thread reported.
pub(crate) fn publish_failure(reason: String) -> Error {
    let kind =
        if reason.starts_with(crate::amqp::OVERSIZE_MARK) { ErrorKind::MessageTooLarge } else { ErrorKind::Publish };
    Error::new(kind, reason)
}

/// Waits for the AMQP thread's answer, giving up on shutdown.
fn await_reply(reply: Option<std::sync::mpsc::Receiver<Result<(), String>>>) -> Result<(), Error> {
    let reply = reply.ok_or_else(|| Error::new(ErrorKind::PublisherGone, "the AMQP thread has stopped"))?;
    loop {
        match reply.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(reason)) => return Err(publish_failure(reason)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if shutdown_requested() {
                    return Err(Error::new(ErrorKind::Shutdown, "shutdown requested while waiting for RabbitMQ"));
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Error::new(ErrorKind::PublisherGone, "the AMQP thread has stopped"));
            }
        }
    }
}
