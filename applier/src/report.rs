//! Reports to the source: the applier's state for the task, published to the task's feedback
//! queue so that `trempy.status()` at the source can show it without the applier ever connecting
//! to the source database.
//!
//! A separate task with its own target connection and its own RabbitMQ connection: it reads what
//! the applier recorded in the target (`trempy.applier_state`, `trempy.applier_progress`,
//! `trempy.applier_deadletters`, `trempy.applier_schema_changes`) once a second and publishes a [`Report`] when the state, reason
//! or watermark changed, and every [`EVERY`] otherwise. Reports are fire-and-forget (no
//! publisher confirms, not mandatory); any failure here is logged at debug level and tried again
//! later, and never touches applying. A halt (which the applier does not record in the target)
//! reaches it through [`Live`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::watch;
use tokio_postgres::Client;
use tracing::debug;
use trempy_protocol::Lsn;
use trempy_protocol::feedback::{self, ApplierState, Report};
use trempy_protocol::names::TaskNames;
use trempy_protocol::topology;

use crate::{broker, schema_change, target};

/// How often the target is read.
const POLL: Duration = Duration::from_secs(1);
/// Longest time between two reports while nothing changes.
const EVERY: Duration = Duration::from_secs(5);
/// Longest wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the consuming loop knows and the target does not: the apply is halted, why, since when.
#[derive(Debug, Clone, Default)]
pub(crate) struct Live(Arc<Mutex<Option<(String, i64)>>>);

impl Live {
    /// Applying is halted for `reason` (kept from the first halt until [`Live::clear`]).
    pub(crate) fn halt(&self, reason: &str) {
        if let Ok(mut halted) = self.0.lock()
            && halted.is_none()
        {
            *halted = Some((reason.to_owned(), now_ms()));
        }
    }

    /// Applying goes on.
    pub(crate) fn clear(&self) {
        if let Ok(mut halted) = self.0.lock() {
            *halted = None;
        }
    }

    fn halted(&self) -> Option<(String, i64)> {
        self.0.lock().ok().and_then(|h| h.clone())
    }
}

/// Where the task stands, as the target records it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Recorded {
    state: ApplierState,
    reason: Option<String>,
    since_ms: Option<i64>,
    watermark: Lsn,
    generation: u32,
    transactions_applied: u64,
    changes_applied: u64,
    rows_loaded: u64,
    dead_letters: u64,
    /// Schema changes applied for the current incarnation, and the last one.
    schema_changes: u64,
    last_schema_change: Option<String>,
}

/// The report for what is recorded, with a halt overriding the recorded state.
fn report(task: &str, recorded: Recorded, halted: Option<(String, i64)>, reported_at_ms: i64) -> Report {
    let (state, reason, since_ms) = match halted {
        Some((reason, since)) => (ApplierState::Halted, Some(reason), Some(since)),
        None => (recorded.state, recorded.reason, recorded.since_ms),
    };
    Report {
        version: feedback::VERSION,
        task: task.to_owned(),
        state,
        reason,
        since_ms,
        watermark: recorded.watermark,
        generation: recorded.generation,
        transactions_applied: recorded.transactions_applied,
        changes_applied: recorded.changes_applied,
        rows_loaded: recorded.rows_loaded,
        dead_letters: recorded.dead_letters,
        reported_at_ms,
        schema_changes_applied: (recorded.schema_changes > 0).then_some(recorded.schema_changes),
        last_schema_change: recorded.last_schema_change,
    }
}

/// A report is due when what it says changed (counts aside), or [`EVERY`] passed.
fn due(last: Option<&(Report, Instant)>, next: &Report) -> bool {
    let Some((last, at)) = last else { return true };
    let key = |r: &Report| (r.state, r.reason.clone(), r.since_ms, r.watermark, r.generation, r.schema_changes_applied);
    key(last) != key(next) || at.elapsed() >= EVERY
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Reports until `shutdown` turns true.
pub(crate) async fn run(
    names: TaskNames,
    amqp_url: String,
    target_dsn: String,
    live: Live,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut target: Option<Client> = None;
    let mut link: Option<(Connection, Channel)> = None;
    let mut last: Option<(Report, Instant)> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(POLL) => {},
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        let recorded = match read(&mut target, &target_dsn, names.task()).await {
            Ok(Some(recorded)) => recorded,
            Ok(None) => continue, // the applier has not started yet
            Err(err) => {
                debug!(task = names.task(), error = %err, "cannot read the applier's state for a report");
                target = None;
                continue;
            }
        };
        let next = report(names.task(), recorded, live.halted(), now_ms());
        if !due(last.as_ref(), &next) {
            continue;
        }
        match publish(&mut link, &amqp_url, &names, &next).await {
            Ok(()) => last = Some((next, Instant::now())),
            Err(err) => {
                debug!(task = names.task(), error = %err, "cannot publish a report to the source");
                if let Some((connection, _)) = link.take() {
                    broker::close(&connection, "bye").await;
                }
            }
        }
    }
    if let Some((connection, _)) = link.take() {
        broker::close(&connection, "bye").await;
    }
}

async fn read(target: &mut Option<Client>, dsn: &str, task: &str) -> Result<Option<Recorded>, String> {
    if target.as_ref().is_none_or(Client::is_closed) {
        let (client, _driver) = tokio::time::timeout(CONNECT_TIMEOUT, target::connect(dsn))
            .await
            .map_err(|_| "connecting to the target timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        *target = Some(client);
    }
    let client = target.as_ref().ok_or("no target connection")?;
    let row = client
        .query_opt(
            "SELECT s.state, s.reason, (extract(epoch FROM s.since) * 1000)::bigint,
                    coalesce(p.commit_lsn, '0/0')::text, coalesce(p.generation, 1), coalesce(p.transactions_applied, 0),
                    coalesce(p.changes_applied, 0), coalesce(p.rows_loaded, 0),
                    (SELECT count(*) FROM trempy.applier_deadletters d WHERE d.task_name = $1 AND d.state = 'dead')
               FROM trempy.applier_state s
               LEFT JOIN trempy.applier_progress p ON p.task_name = s.task_name
              WHERE s.task_name = $1",
            &[&task],
        )
        .await
        .map_err(|e| e.to_string())?;
    let Some(row) = row else { return Ok(None) };
    let state: String = row.get(0);
    let Some(state) = ApplierState::from_name(&state) else { return Err(format!("unknown applier state {state:?}")) };
    let watermark: String = row.get(3);
    let count = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
    let (schema_changes, last_schema_change) =
        schema_change::recorded(client, task).await.map_err(|e| e.to_string())?;
    Ok(Some(Recorded {
        state,
        reason: row.get(1),
        since_ms: row.get(2),
        watermark: Lsn::parse(&watermark).map_err(|e| e.to_string())?,
        generation: u32::try_from(row.get::<_, i32>(4)).unwrap_or(0),
        transactions_applied: count(5),
        changes_applied: count(6),
        rows_loaded: count(7),
        dead_letters: count(8),
        schema_changes,
        last_schema_change,
    }))
}

async fn publish(
    link: &mut Option<(Connection, Channel)>,
    url: &str,
    names: &TaskNames,
    report: &Report,
) -> Result<(), String> {
    if link.as_ref().is_some_and(|(c, ch)| !c.status().connected() || !ch.status().connected()) {
        *link = None;
    }
    if link.is_none() {
        let connection = broker::connect(url, format!("trempy-applier {} reports", names.task()))
            .await
            .map_err(|e| e.to_string())?;
        let channel = broker::within(broker::STEP_TIMEOUT, "opening the feedback route", async {
            let channel = connection.create_channel().await?;
            topology::declare_feedback_route(&channel, names).await?;
            Ok(channel)
        })
        .await;
        match channel {
            Ok(channel) => *link = Some((connection, channel)),
            Err(err) => {
                broker::close(&connection, "bye").await;
                return Err(err.to_string());
            }
        }
    }
    let (_, channel) = link.as_ref().ok_or("no channel")?;
    let properties = BasicProperties::default()
        .with_content_type(feedback::CONTENT_TYPE.into())
        .with_app_id("trempy-applier".into());
    // Without publisher confirms the returned confirmation is resolved already; not awaited.
    let published = broker::within(broker::STEP_TIMEOUT, "publishing a report", async {
        channel
            .basic_publish(
                names.feedback_exchange().as_str().into(),
                names.feedback_queue().as_str().into(),
                BasicPublishOptions::default(),
                &report.to_json(),
                properties,
            )
            .await?;
        Ok(())
    });
    published.await.map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn recorded(state: ApplierState) -> Recorded {
        Recorded {
            state,
            reason: None,
            since_ms: Some(1),
            watermark: Lsn(0x10),
            generation: 1,
            transactions_applied: 1,
            changes_applied: 2,
            rows_loaded: 0,
            dead_letters: 0,
            schema_changes: 0,
            last_schema_change: None,
        }
    }

    #[test]
    fn a_halt_overrides_the_recorded_state() {
        let r = report("t", recorded(ApplierState::Running), None, 5);
        assert_eq!((r.state, r.reason.as_deref(), r.since_ms), (ApplierState::Running, None, Some(1)));
        let r = report("t", recorded(ApplierState::Retrying), Some(("missing table".into(), 3)), 5);
        assert_eq!((r.state, r.reason.as_deref(), r.since_ms), (ApplierState::Halted, Some("missing table"), Some(3)));
        assert_eq!(Report::parse(&r.to_json()).unwrap(), r);
    }

    #[test]
    fn schema_changes_are_reported_once_there_are_some() {
        let r = report("t", recorded(ApplierState::Running), None, 5);
        assert_eq!((r.schema_changes_applied, r.last_schema_change.as_deref()), (None, None));
        let mut with = recorded(ApplierState::Running);
        with.schema_changes = 2;
        with.last_schema_change =
            Some("0/20 public.t -> public.t: ALTER TABLE \"public\".\"t\" DROP COLUMN \"c\"".into());
        let r = report("t", with, None, 5);
        assert_eq!(r.schema_changes_applied, Some(2));
        assert!(r.last_schema_change.as_deref().is_some_and(|l| l.starts_with("0/20 public.t")));
        // a new schema change makes a report due at once
        let first = report("t", recorded(ApplierState::Running), None, 5);
        assert!(due(Some(&(first, Instant::now())), &r));
    }

    #[test]
    fn live_keeps_the_first_halt_until_cleared() {
        let live = Live::default();
        assert!(live.halted().is_none());
        live.halt("first");
        live.halt("second");
        assert_eq!(live.halted().unwrap().0, "first");
        live.clear();
        assert!(live.halted().is_none());
    }

    #[test]
    fn reports_are_due_on_change_not_on_counts() {
        let first = report("t", recorded(ApplierState::Running), None, 5);
        assert!(due(None, &first));
        let last = (first.clone(), Instant::now());
        let mut more = first.clone();
        more.changes_applied += 10;
        assert!(!due(Some(&last), &more));
        let mut moved = first.clone();
        moved.watermark = Lsn(0x20);
        assert!(due(Some(&last), &moved));
        let stopped = report("t", recorded(ApplierState::Stopped), None, 6);
        assert!(due(Some(&last), &stopped));
    }
}
