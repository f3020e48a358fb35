//! The RabbitMQ objects of one task, declared identically (and idempotently) by both sides.
//!
//! Who declares what follows who may write where (docs/architecture.md, "RabbitMQ users and
//! permissions"):
//! * the decoding worker declares everything it publishes through ([`declare`]): the task's
//!   exchange, its queue and their binding, and the dead-letter exchange and queue;
//! * the applier declares the same two queues, never a binding to them
//!   ([`declare_consumer_queues`]): binding a queue takes write permission on it, and whoever may
//!   bind the change queue to an exchange they can publish to can forge changes. So the applier
//!   can start before the task's first message and wait on an empty queue, and still cannot put
//!   a message into it;
//! * the applier's reports go through a feedback exchange of their own
//!   ([`declare_feedback_route`]), not the default exchange (writing to the default exchange
//!   means writing to every queue); the decoding worker declares the feedback queue it reads
//!   ([`declare_feedback`]).
//!
//! The main queue is a quorum queue (replicated, durable) with a single active consumer, so that
//! changes are applied in order by one applier at a time while a second one can wait as a hot
//! standby. The broker itself never dead-letters because of redeliveries (an explicit, very high
//! `x-delivery-limit`): whether a message is poison is the applier's decision. Nor does it drop
//! messages when a length limit applies: `x-overflow: reject-publish` makes it refuse new ones
//! instead (see [`queue_arguments`]).
//!
//! The feedback queue carries the applier's reports back to the source. It is a classic queue
//! (so the decoding worker can `basic.get` from it) that keeps at most [`FEEDBACK_MAX_LENGTH`]
//! reports and drops the oldest beyond that, so it never grows. Each side declares it on its own
//! channel: a failed declaration closes only that channel.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use crate::names::TaskNames;

/// Redeliveries after which the broker itself would dead-letter; effectively never.
const BROKER_DELIVERY_LIMIT: i64 = 1_000_000;

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Reports the feedback queue keeps; older ones are dropped (only the latest matters).
pub const FEEDBACK_MAX_LENGTH: i64 = 100;

/// Declares the task's feedback queue, always with the same arguments. Safe to call any number
/// of times.
pub async fn declare_feedback(channel: &Channel, names: &TaskNames) -> lapin::Result<()> {
    let durable_queue = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long("classic"));
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(FEEDBACK_MAX_LENGTH));
    args.insert("x-overflow".into(), long("drop-head"));
    channel.queue_declare(names.feedback_queue().as_str().into(), durable_queue, args).await?;
    Ok(())
}

/// Declares the feedback queue, the feedback exchange and their binding (routing key: the
/// queue's name), for the applier to publish its reports through.
pub async fn declare_feedback_route(channel: &Channel, names: &TaskNames) -> lapin::Result<()> {
    declare_feedback(channel, names).await?;
    let durable_exchange = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    channel
        .exchange_declare(
            names.feedback_exchange().as_str().into(),
            ExchangeKind::Direct,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            names.feedback_queue().as_str().into(),
            names.feedback_exchange().as_str().into(),
            names.feedback_queue().as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Declares the task's change queue and dead-letter queue with the same arguments as
/// [`declare`], binding nothing: what the applier consumes and reads back.
pub async fn declare_consumer_queues(channel: &Channel, names: &TaskNames) -> lapin::Result<()> {
    let durable_queue = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    channel.queue_declare(names.dlx_queue().as_str().into(), durable_queue, dlx_queue_arguments()).await?;
    channel.queue_declare(names.queue().as_str().into(), durable_queue, queue_arguments(names)).await?;
    Ok(())
}

fn dlx_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long("quorum"));
    args
}

/// The main queue's arguments. `x-overflow: reject-publish`: should a limit ever apply to the
/// queue (a `max-length` policy), the broker refuses new messages (the publisher's confirm is a
/// nack, and it publishes again later) rather than dropping or dead-lettering the oldest, which
/// would leave a gap in the stream. A policy that sets `overflow` itself still wins over this
/// argument for quorum queues: see docs/architecture.md ("RabbitMQ policies").
fn queue_arguments(names: &TaskNames) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long("quorum"));
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    args.insert("x-dead-letter-exchange".into(), long(&names.dlx_exchange()));
    args.insert("x-dead-letter-routing-key".into(), long(&names.dlx_routing_key()));
    args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(BROKER_DELIVERY_LIMIT));
    args.insert("x-overflow".into(), long("reject-publish"));
    args
}

/// Declares the task's exchanges, queues and bindings (the decoding worker). Safe to call any number of times (with
/// the same arguments: a queue declared by an older TREMpy with other arguments makes the broker
/// refuse the declaration, `PRECONDITION_FAILED - inequivalent arg`).
pub async fn declare(channel: &Channel, names: &TaskNames) -> lapin::Result<()> {
    let durable_exchange = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    let durable_queue = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };

    channel
        .exchange_declare(
            names.dlx_exchange().as_str().into(),
            ExchangeKind::Direct,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    channel.queue_declare(names.dlx_queue().as_str().into(), durable_queue, dlx_queue_arguments()).await?;
    channel
        .queue_bind(
            names.dlx_queue().as_str().into(),
            names.dlx_exchange().as_str().into(),
            names.dlx_routing_key().as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    channel
        .exchange_declare(
            names.exchange().as_str().into(),
            ExchangeKind::Direct,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    channel.queue_declare(names.queue().as_str().into(), durable_queue, queue_arguments(names)).await?;
    channel
        .queue_bind(
            names.queue().as_str().into(),
            names.exchange().as_str().into(),
            names.routing_key().as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_queue_refuses_rather_than_drops() {
        let names = TaskNames::new("orders_sync").unwrap_or_else(|e| panic!("{e}"));
        let args = queue_arguments(&names);
        let get = |key: &str| args.inner().get(key).cloned();
        assert_eq!(get("x-overflow"), Some(long("reject-publish")));
        assert_eq!(get("x-delivery-limit"), Some(AMQPValue::LongLongInt(BROKER_DELIVERY_LIMIT)));
        assert_eq!(get("x-queue-type"), Some(long("quorum")));
        // No limit of our own: nothing expires, nothing is dropped.
        for key in ["x-message-ttl", "x-expires", "x-max-length", "x-max-length-bytes"] {
            assert_eq!(get(key), None, "{key}");
        }
    }
}
