//! Logical decoding: the task's publication and slot ([`slot`], over SPI), and its change stream
//! ([`stream`]): a replication connection to this server ([`connection`]) whose pgoutput messages
//! become envelope messages, each relation described from the catalog ([`describe`]). Main thread
//! only.

mod connection;
mod describe;
pub(crate) mod slot;
pub(crate) mod stream;
