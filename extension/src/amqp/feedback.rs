//! Reading the task's feedback queue (the applier's reports, see [`trempy_protocol::feedback`])
//! on the AMQP thread, on a channel of its own beside the publishing one. Nothing here can fail
//! a batch: a missing queue, a malformed report or a broken channel only means no report now.

use std::time::{Duration, Instant};

use lapin::options::BasicGetOptions;
use trempy_protocol::feedback::Report;
use trempy_protocol::topology;

use super::State;

/// How often the feedback queue is read.
pub(super) const POLL: Duration = Duration::from_secs(2);
/// While not connected, how often reading the feedback queue may open a connection.
const CONNECT_EVERY: Duration = Duration::from_secs(30);
/// Most reports read from the feedback queue at one poll.
const MAX_READ: usize = 200;
/// How long one read of the feedback queue (connecting included) may take.
pub(super) const TIMEOUT: Duration = Duration::from_secs(20);

impl State {
    /// Reads the feedback queue to its end (boundedly) and returns the latest valid report.
    pub(super) async fn read_feedback(&mut self) -> Option<Report> {
        self.broker.as_ref()?;
        if self.link.is_none() {
            if self.feedback_connect.is_some_and(|at| at.elapsed() < CONNECT_EVERY) {
                return None;
            }
            self.feedback_connect = Some(Instant::now());
        }
        self.connect().await.ok()?;
        let link = self.link.as_mut()?;
        if link.feedback.as_ref().is_some_and(|c| !c.status().connected()) {
            link.feedback = None;
        }
        if link.feedback.is_none() {
            let channel = link.connection.create_channel().await.ok()?;
            topology::declare_feedback(&channel, &self.names).await.ok()?;
            link.feedback = Some(channel);
        }
        let channel = link.feedback.as_ref()?;
        let queue = self.names.feedback_queue();
        let mut latest = None;
        for _ in 0..MAX_READ {
            match channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }).await {
                Ok(Some(message)) => match Report::parse(&message.delivery.data) {
                    Ok(report) if report.task == self.names.task() => latest = Some(report),
                    Ok(_) | Err(_) => {} // not ours, or not a report: dropped
                },
                Ok(None) => break,
                Err(_) => {
                    link.feedback = None;
                    break;
                }
            }
        }
        latest
    }
}
