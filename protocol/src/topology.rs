//! The RabbitMQ objects of one task, declared identically (and idempotently) by the decoding
//! worker before it publishes and by the applier before it consumes, so that no message is ever
//! published to an exchange without its queue.
//!
//! The main queue is a quorum queue (replicated, durable) with a single active consumer, so that
//! changes are applied in order by one applier at a time while a second one can wait as a hot
//! standby. The broker itself never dead-letters because of redeliveries (an explicit, very high
//! `x-delivery-limit`): whether a message is poison is the applier's decision.
//!
//! The feedback queue ([`declare_feedback`]) carries the applier's reports back to the source. It
//! is a classic queue (so the decoding worker can `basic.get` from it) that keeps at most
//! [`FEEDBACK_MAX_LENGTH`] reports and drops the oldest beyond that, so it never grows. Each side
//! declares it on its own channel: a failed declaration closes only that channel.

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

/// Declares the task's exchanges, queues and bindings. Safe to call any number of times.
pub async fn declare(channel: &Channel, names: &TaskNames) -> lapin::Result<()> {
    let durable_exchange = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    let durable_queue = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };

    channel
        .exchange_declare(names.dlx_exchange().as_str().into(), ExchangeKind::Direct, durable_exchange, FieldTable::default())
        .await?;
    let mut dlx_args = FieldTable::default();
    dlx_args.insert("x-queue-type".into(), long("quorum"));
    channel.queue_declare(names.dlx_queue().as_str().into(), durable_queue, dlx_args).await?;
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
        .exchange_declare(names.exchange().as_str().into(), ExchangeKind::Direct, durable_exchange, FieldTable::default())
        .await?;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long("quorum"));
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    args.insert("x-dead-letter-exchange".into(), long(&names.dlx_exchange()));
    args.insert("x-dead-letter-routing-key".into(), long(&names.dlx_routing_key()));
    args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(BROKER_DELIVERY_LIMIT));
    channel.queue_declare(names.queue().as_str().into(), durable_queue, args).await?;
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
