//! TREMpy, target side: consumes one task's RabbitMQ queue and applies the changes to a target
//! PostgreSQL database, exactly once in effect.
//!
//! The data path: [`consume`] receives messages in queue order and groups source transactions
//! into target transactions; [`rules`] filters and transforms them into the target tables' shape;
//! [`apply`] turns their changes into bulk SQL ([`scd2`] keeps history in `scd2` mode); [`load`] writes
//! full-load chunks with COPY; [`target_catalog`] reads target column types and creates target tables; [`schema_change`] follows source schema changes on the target in stream order; [`progress`] records
//! the last applied source commit LSN in the same target transaction as the rows, and anything at
//! or below it is skipped on redelivery; messages are acknowledged only after COMMIT. [`policy`]
//! says what to do about each kind of [`error`]; source transactions that cannot be applied are
//! logged ([`errorlog`]), counted ([`state`]) and, as the task's error policy says, stop the task or
//! are dead-lettered ([`deadletter`]). [`report`] tells the source where the task stands, through
//! the task's feedback queue. Every target session is opened by [`target`], which pins the
//! session settings that govern value formats and name resolution.

mod apply;
mod broker;
pub mod cli;
mod consume;
mod deadletter;
mod error;
mod errorlog;
mod ident;
mod keyless;
mod load;
mod migrations;
mod policy;
mod progress;
mod report;
mod rules;
mod scd2;
mod schema_change;
mod sequence;
mod state;
mod stream;
mod target;
mod target_catalog;
