//! What both sides of TREMpy share.
//!
//! * [`lsn`]: PostgreSQL log sequence numbers.
//! * [`pgoutput`]: a parser for the binary messages of PostgreSQL's `pgoutput` plugin (protocol 1).
//! * [`replication`]: the streaming replication messages around pgoutput, and which position a
//!   task worker may confirm.
//! * [`assemble`]: turns a stream of pgoutput messages into envelope messages of bounded size.
//! * [`envelope`]: the versioned JSON message that travels through RabbitMQ.
//! * [`handoff`]: which decoded changes a table's full load already contains.
//! * [`copytext`]: PostgreSQL's COPY text format, the body of full-load messages.
//! * [`settings`]: task settings, their schema and their validation.
//! * [`filter`]: row filters, typed against the source columns ([`filter::RowFilter`]).
//! * [`transform`]: transformations, compiled into a source-to-target plan
//!   ([`transform::TablePlan`]), with the `math_expression` language in [`transform::expr`].
//! * [`names`]: every object name derived from a task name.
//! * [`feedback`]: the applier's reports back to the source.
//! * [`redact`]: removes passwords from connection URLs and DSNs quoted in messages.
//! * [`typename`]: checks type names and identifiers a message carries before anything uses them.
//!
//! This crate uses neither pgrx nor tokio, so that it builds and fuzzes fast.

pub mod assemble;
pub mod cause;
pub mod copytext;
pub mod databases;
pub mod envelope;
mod error;
pub mod feedback;
pub mod filter;
#[cfg(test)]
mod fuzz_seeds;
pub mod handoff;
pub mod lsn;
pub mod names;
pub mod pgoutput;
pub mod redact;
pub mod renames;
pub mod replication;
pub mod schema;
pub mod sequence;
pub mod settings;
pub mod transform;
pub mod typename;

pub use error::{Error, ErrorKind, Result};
pub use lsn::Lsn;
#[cfg(feature = "amqp")]
pub mod credentials;
#[cfg(feature = "amqp")]
pub mod topology;
