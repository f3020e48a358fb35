//! Every object name derived from a task name, in one place.
//!
//! A task name matches `^[a-z0-9_]+$`, so every derived name is a valid unquoted PostgreSQL
//! identifier and a valid RabbitMQ name. Replication slot and publication names share one prefix
//! and are checked against PostgreSQL's 63-byte identifier limit, so a name is never truncated
//! into another task's name.

use crate::error::{Error, ErrorKind, Result};

/// Longest identifier PostgreSQL keeps without truncation (NAMEDATALEN - 1).
const PG_MAX_IDENTIFIER_BYTES: usize = 63;

/// Prefix of every replication slot and publication that TREMpy owns.
pub const OBJECT_PREFIX: &str = "trempy_";

/// Longest task name: the slot name `trempy_<task>` must fit in 63 bytes.
pub const TASK_NAME_MAX_BYTES: usize = PG_MAX_IDENTIFIER_BYTES - OBJECT_PREFIX.len();

/// Checks a task name: `^[a-z0-9_]+$`, at most [`TASK_NAME_MAX_BYTES`] bytes.
pub fn validate_task_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::new(ErrorKind::InvalidName, "task name must not be empty"));
    }
    if let Some(bad) = name.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_')) {
        return Err(Error::new(
            ErrorKind::InvalidName,
            format!("task name {name:?} contains {bad:?}; allowed are a-z, 0-9 and _ (^[a-z0-9_]+$)"),
        ));
    }
    if name.len() > TASK_NAME_MAX_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidName,
            format!(
                "task name {name:?} is {} bytes long; at most {TASK_NAME_MAX_BYTES} are allowed so that its replication slot name fits PostgreSQL's 63-byte limit",
                name.len()
            ),
        ));
    }
    Ok(())
}

/// The names of everything one task owns, at the source and in RabbitMQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskNames {
    task: String,
}

impl TaskNames {
    /// Derives the names for a task, validating the task name first.
    pub fn new(task: &str) -> Result<Self> {
        validate_task_name(task)?;
        Ok(Self { task: task.to_owned() })
    }

    /// The task name itself.
    pub fn task(&self) -> &str {
        &self.task
    }

    /// Logical replication slot at the source: `trempy_<task>`.
    pub fn slot(&self) -> String {
        format!("{OBJECT_PREFIX}{}", self.task)
    }

    /// Publication at the source: `trempy_<task>`.
    pub fn publication(&self) -> String {
        format!("{OBJECT_PREFIX}{}", self.task)
    }

    /// Durable direct exchange the decoding worker publishes to.
    pub fn exchange(&self) -> String {
        format!("trempy_exchange_{}", self.task)
    }

    /// Routing key binding the exchange to the queue.
    pub fn routing_key(&self) -> String {
        format!("trempy_routing_key_{}", self.task)
    }

    /// The task's queue, consumed by the applier.
    pub fn queue(&self) -> String {
        format!("trempy_queue_{}", self.task)
    }

    /// Dead-letter exchange of the task's queue.
    pub fn dlx_exchange(&self) -> String {
        format!("trempy_dlx_exchange_{}", self.task)
    }

    /// Routing key of dead-lettered messages.
    pub fn dlx_routing_key(&self) -> String {
        format!("dlx.{}", self.task)
    }

    /// Queue that keeps dead-lettered messages.
    pub fn dlx_queue(&self) -> String {
        format!("dlx_queue_{}", self.task)
    }

    /// Queue of the applier's reports back to the source (see [`crate::feedback`]): the applier
    /// publishes to it through [`Self::feedback_exchange`], the decoding worker reads it.
    pub fn feedback_queue(&self) -> String {
        format!("trempy_feedback_{}", self.task)
    }

    /// Durable direct exchange of the applier's reports, bound to [`Self::feedback_queue`] (with
    /// the queue's name as routing key). Not the default exchange: a user allowed to write to the
    /// default exchange can publish into every queue, the task's change queue included.
    pub fn feedback_exchange(&self) -> String {
        format!("trempy_feedback_exchange_{}", self.task)
    }
}

/// Parses a slot or publication name back into the task name it belongs to, if it is one of ours.
///
/// Matching is exact: `trempy_a` belongs to task `a`, never to a task whose name merely starts
/// with `a`.
pub fn task_of_object(name: &str) -> Option<&str> {
    let task = name.strip_prefix(OBJECT_PREFIX)?;
    validate_task_name(task).ok().map(|()| task)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        for name in ["a", "orders_sync", "t_1", &"x".repeat(TASK_NAME_MAX_BYTES)] {
            assert!(validate_task_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn invalid_names_say_why() {
        let cases = [
            ("", "must not be empty"),
            ("Orders", "contains 'O'"),
            ("a-b", "contains '-'"),
            ("a b", "contains ' '"),
            ("é", "contains 'é'"),
            ("a;drop", "contains ';'"),
        ];
        for (name, expected) in cases {
            let err = validate_task_name(name).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidName);
            assert!(err.message().contains(expected), "{name}: {}", err.message());
        }
        let long = "x".repeat(TASK_NAME_MAX_BYTES + 1);
        assert!(validate_task_name(&long).unwrap_err().message().contains("63-byte"));
    }

    #[test]
    fn derived_names_fit_and_parse_back() {
        let long = "x".repeat(TASK_NAME_MAX_BYTES);
        let names = TaskNames::new(&long).unwrap();
        assert_eq!(names.slot().len(), 63);
        assert_eq!(task_of_object(&names.slot()), Some(long.as_str()));
        let names = TaskNames::new("orders_sync").unwrap();
        assert_eq!(names.slot(), "trempy_orders_sync");
        assert_eq!(names.queue(), "trempy_queue_orders_sync");
        assert_eq!(names.exchange(), "trempy_exchange_orders_sync");
        assert_eq!(names.dlx_exchange(), "trempy_dlx_exchange_orders_sync");
        assert_eq!(names.dlx_queue(), "dlx_queue_orders_sync");
        assert_eq!(names.dlx_routing_key(), "dlx.orders_sync");
        assert_eq!(names.feedback_queue(), "trempy_feedback_orders_sync");
        assert_eq!(task_of_object("trempy_"), None);
        assert_eq!(task_of_object("other_slot"), None);
        assert_eq!(task_of_object("trempy_A"), None);
    }
}
