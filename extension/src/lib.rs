//! TREMpy, source side: the `trempy.*` SQL API, the task catalog, and the background workers
//! that decode each task's changes (pgoutput, through a replication slot) and publish them to
//! RabbitMQ with publisher confirms, advancing the slot only past what RabbitMQ has confirmed.
//!
//! Layout: [`api`] (SQL functions), [`gucs`] (settings), [`worker`] (launcher and task workers:
//! everything that runs on a worker's main thread), [`load`] (the full load: snapshot copies
//! published in chunks), [`decoding`] (slot, publication, decoding a batch and advancing over SPI),
//! [`table_shape`] (table descriptions), [`sequences`] (sequence values for the target), [`amqp`] (the AMQP thread, which publishes and reads the feedback queue: no Postgres API may be called there).

use pgrx::prelude::*;

mod amqp;
mod api;
mod decoding;
mod error;
mod gucs;
mod load;
mod outbox;
mod sequences;
mod session;
mod table_shape;
mod worker;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../../sql/catalog.sql", name = "catalog", bootstrap);
extension_sql_file!("../../sql/ddl.sql", name = "ddl");
extension_sql_file!("../../sql/status.sql", name = "status", finalize);

/// Called when the library is loaded. Registers the settings always, and the launcher worker
/// when loaded through `shared_preload_libraries` (the only time PostgreSQL allows it).
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    // SAFETY: reading a flag PostgreSQL sets before loading preload libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        worker::launcher::register();
    }
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["wal_level = logical"]
    }
}
