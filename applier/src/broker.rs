//! The applier's connections to RabbitMQ, opened and closed within deadlines.
//!
//! A broker that is starting or stopping can accept a TCP connection and then never answer, and
//! a connection it dropped can leave a close waiting forever: every call here is bounded, so a
//! stuck broker becomes a `Broker` error the policy retries, never a consumer that waits for ever.

use std::future::Future;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use trempy_protocol::redact::redact;

use crate::error::{Error, ErrorKind};

/// How long opening a connection (and what follows it: channels, declarations), or one
/// exchange with the broker (an acknowledgement, a confirmed publish), may take.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a polite close may take before the connection is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens a named connection to RabbitMQ within [`STEP_TIMEOUT`].
pub(crate) async fn connect(url: &str, name: String) -> Result<Connection, Error> {
    within(STEP_TIMEOUT, "connecting to RabbitMQ", async {
        Connection::connect(url, ConnectionProperties::default().with_connection_name(name.into())).await.map_err(|e| {
            Error::new(ErrorKind::Broker, format!("cannot connect to RabbitMQ: {}", redact(&e.to_string())))
                .caused_by(&e)
        })
    })
    .await
}

/// Runs a step talking to RabbitMQ; one that takes longer than `limit` is a `Broker` error.
pub(crate) async fn within<T>(
    limit: Duration,
    what: &str,
    step: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(limit, step)
        .await
        .map_err(|_| Error::new(ErrorKind::Broker, format!("{what} timed out after {}s", limit.as_secs_f64())))?
}

/// Closes a connection, giving up after [`CLOSE_TIMEOUT`] (the broker may be gone).
pub(crate) async fn close(connection: &Connection, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, reason.into())).await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_step_that_never_answers_is_a_broker_error_after_its_limit() {
        let stuck =
            within(Duration::from_millis(20), "declaring the queue", std::future::pending::<Result<(), Error>>());
        let err = stuck.await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Broker);
        assert_eq!(err.to_string(), "declaring the queue timed out after 0.02s");
    }

    #[tokio::test]
    async fn a_step_that_answers_in_time_keeps_its_outcome() {
        assert_eq!(within(Duration::from_secs(5), "x", async { Ok(7) }).await.unwrap(), 7);
        let failed = within(Duration::from_secs(5), "x", async { Err::<(), _>(Error::new(ErrorKind::Conflict, "no")) });
        assert_eq!(failed.await.unwrap_err().kind(), ErrorKind::Conflict);
    }
}
