//! Background workers: the supervisor and one launcher per database of `trempy.databases`
//! ([`launcher`]), one [`task`] worker per running task, and the [`setup`] helper. Everything
//! here runs on a worker's main thread, the only thread allowed to call PostgreSQL; the session
//! they share is [`crate::session`], their side of publishing [`crate::outbox`].

pub(crate) mod launcher;
mod phase;
pub(crate) mod setup;
pub(crate) mod task;

/// First key of the session advisory lock a task worker holds while it runs; the second key is
/// the task's `task_id`. `trempy.status()` and `drop_task` find the worker through it.
pub(crate) const LOCK_CLASS: i32 = 1_414_680_400;
