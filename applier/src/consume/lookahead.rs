//! Newer settings behind a message that the task's rules cannot handle.
//!
//! When the task's filters and transformations no longer fit a source table (a column they use
//! was dropped or renamed: [`ErrorKind::Rules`](crate::error::ErrorKind::Rules)), the applier halts at that message, which stays
//! at the head of the queue. The remedy is new settings (`trempy.update_task`), but they travel as
//! a control message published **behind** it, which the halted applier would never reach. So,
//! at each halt on a rules error, the applier looks ahead:
//!
//! 1. It reads the committed position (watermark, incarnation, generation, settings) from the
//!    target, opens its own RabbitMQ channel with a large window (`--lookahead` messages) and
//!    reads the queue from its head without acknowledging anything: first the failing message,
//!    then the ones behind it. Bodies are dropped as soon as they are read; only settings control
//!    messages of this task's stream (the same incarnation, this generation or a newer one) are
//!    kept, the last one read winning: it is the newest the source has published.
//! 2. It closes the channel, so RabbitMQ puts every message back at the head of the queue, in its
//!    original order: nothing is consumed, skipped or reordered.
//! 3. If those newest settings differ from the ones in effect, it records them as the settings in
//!    effect at the committed position (`trempy.applier_progress.settings`, guarded by the
//!    position so it never races another applier), and the next session applies the failing
//!    message, and everything after it, under them. When the stream reaches the settings message
//!    itself, it is taken again as usual (the same settings: nothing changes).
//!
//! What this changes: the newer settings govern from the failing message on instead of from their
//! own place in the stream; messages in between (captured before `update_task`) are applied under
//! the settings that fix the failure rather than under the ones that cannot handle them. A
//! settings message between the two (a worker restart) is taken when reached, as always. If the
//! newer settings do not fit either, the applier halts again at the same message and looks again
//! (finding nothing newer, it waits for the next `update_task`). Settings further behind than the
//! window are not seen: raise `--lookahead`.
//!
//! A halt because an update lacks unchanged TOAST values the target does not have
//! ([`ErrorKind::UnchangedToast`](crate::error::ErrorKind::UnchangedToast)) has one remedy, a `reload` of the task: its messages (a newer
//! generation) are queued behind the halted one, whose generation they supersede. The look-ahead
//! then starts the newer generation at once (as its first message would: empty position, no load
//! mark, staging cleared), so the older generation's remaining messages, the halted one included,
//! are acknowledged and dropped as predating the reload, which copies the tables again.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::Connection;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tracing::info;
use trempy_protocol::envelope::Envelope;

use super::Options;
use crate::error::Error;
use crate::{broker, progress, stream, target};

/// How long the queue may stay silent before the look-ahead takes it as read to its end.
const QUIET: Duration = Duration::from_secs(1);

/// What the look-ahead found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// Newer settings, now in effect from the committed position on (or a newer generation,
    /// now started).
    Adopted,
    /// No settings behind the failing message other than those in effect (within the window).
    Nothing,
}

/// What the halt is about: which remedies the look-ahead may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Halt {
    /// The rules do not fit a table: newer settings fix it.
    Rules,
    /// Only a `reload` (a newer generation) fixes it: an update lacks unchanged TOAST values, or
    /// a source schema change cannot be followed on the target.
    Reload,
}

/// What a scan of the queue saw.
#[derive(Debug, Default)]
struct Seen {
    /// The newest settings of the task's stream.
    settings: Option<serde_json::Value>,
    /// The highest newer generation of the task's incarnation.
    generation: Option<u32>,
}

/// Looks for settings (or, for [`Halt::Reload`], a reload) published behind the failing
/// message and adopts the newest (see the module documentation).
pub(super) async fn newer_settings(options: &Options, halt: Halt) -> Result<Found, Error> {
    let task = options.names.task();
    let (mut client, _driver) = target::connect(&options.target_dsn).await?;
    let position = progress::load(&mut client, task).await?;
    let connection = broker::connect(&options.amqp_url, format!("trempy-applier {task} look-ahead")).await?;
    let seen =
        broker::within(broker::STEP_TIMEOUT, "looking ahead in the queue", scan(&connection, options, &position)).await;
    // Closing returns every message read to the head of the queue, in order.
    broker::close(&connection, "look-ahead done").await;
    let seen = seen?;
    if halt == Halt::Reload {
        let Some(generation) = seen.generation else { return Ok(Found::Nothing) };
        progress::clear_staged(&client, task).await?;
        if progress::start_generation(&client, task, &position, generation).await? {
            info!(
                task,
                generation,
                "the task was reloaded at the source (a newer generation is queued behind the halted message): starting over at it"
            );
            return Ok(Found::Adopted);
        }
        return Ok(Found::Nothing);
    }
    let Some(settings) = seen.settings else { return Ok(Found::Nothing) };
    if !differs(position.settings.as_deref(), &settings) {
        return Ok(Found::Nothing);
    }
    if progress::adopt_settings(&client, task, &position, &settings.to_string()).await? {
        info!(task, watermark = %position.watermark, "newer task settings found in the queue behind the failing message: applying it, and what follows, under them");
        Ok(Found::Adopted)
    } else {
        Ok(Found::Nothing)
    }
}

/// Reads the queue from its head (without acknowledging) and returns the newest settings of the
/// task's stream in it, and the newest generation.
async fn scan(connection: &Connection, options: &Options, position: &progress::Position) -> Result<Seen, Error> {
    let task = options.names.task();
    let channel = connection.create_channel().await?;
    channel.basic_qos(options.lookahead, BasicQosOptions { global: false }).await?;
    let mut consumer = channel
        .basic_consume(
            options.names.queue().as_str().into(),
            format!("trempy-applier-{task}-lookahead").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut seen = Seen::default();
    let mut read = 0_u32;
    while read < u32::from(options.lookahead) {
        let Ok(next) = tokio::time::timeout(QUIET, consumer.next()).await else { break };
        let Some(delivery) = next else { break };
        let delivery = delivery?;
        read += 1;
        if let Some(settings) = settings_of(&delivery.data, task, &position.stream) {
            seen.settings = Some(settings);
        }
        if let Some(generation) = newer_generation(&delivery.data, task, &position.stream) {
            seen.generation = seen.generation.max(Some(generation));
        }
    }
    Ok(seen)
}

/// The generation of a message of the task's incarnation, when newer than the one applied.
fn newer_generation(body: &[u8], task: &str, current: &stream::Current) -> Option<u32> {
    #[derive(serde::Deserialize)]
    struct Head {
        task: String,
        incarnation: Option<String>,
        generation: Option<u32>,
    }
    let head: Head = serde_json::from_slice(body).ok()?;
    let generation = head.generation.unwrap_or(1);
    (head.task == task
        && stream::verdict(current, head.incarnation.as_deref(), generation) == stream::Verdict::NewGeneration)
        .then_some(generation)
}

/// The settings a message carries, if it is a settings control message of this task's stream
/// (its incarnation; this generation or a newer one). Cheap for data messages: only a body with a
/// `"settings":` key (row values are JSON strings, whose quotes are escaped) is parsed.
fn settings_of(body: &[u8], task: &str, current: &stream::Current) -> Option<serde_json::Value> {
    const KEY: &[u8] = b"\"settings\":";
    if !body.windows(KEY.len()).any(|w| w == KEY) {
        return None;
    }
    let envelope = Envelope::parse(body).ok()?;
    if envelope.task != task {
        return None;
    }
    match stream::verdict(current, envelope.incarnation.as_deref(), envelope.generation) {
        stream::Verdict::Apply | stream::Verdict::NewGeneration => envelope.settings,
        stream::Verdict::Skip | stream::Verdict::NewIncarnation | stream::Verdict::Retired => None,
    }
}

/// True when `newest` is not the settings document recorded as in effect.
fn differs(recorded: Option<&str>, newest: &serde_json::Value) -> bool {
    recorded.and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok()).as_ref() != Some(newest)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn current(generation: u32) -> stream::Current {
        stream::Current { incarnation: Some("i1".into()), generation, retired: vec!["i0".into()] }
    }

    fn message(task: &str, incarnation: &str, generation: u32, settings: Option<serde_json::Value>) -> Vec<u8> {
        let mut m = serde_json::json!({"version": 2, "task": task, "incarnation": incarnation, "generation": generation, "transactions": [], "relations": []});
        if let Some(s) = settings {
            m["settings"] = s;
        }
        m.to_string().into_bytes()
    }

    #[test]
    fn only_settings_of_this_stream_are_taken() {
        let s = serde_json::json!({"task": {"task_name": "t"}});
        assert_eq!(settings_of(&message("t", "i1", 2, Some(s.clone())), "t", &current(2)), Some(s.clone()));
        // a reload's settings (newer generation) fix the stream too
        assert_eq!(settings_of(&message("t", "i1", 3, Some(s.clone())), "t", &current(2)), Some(s.clone()));
        // from before a reload, another incarnation, a retired one, another task: not ours
        assert_eq!(settings_of(&message("t", "i1", 1, Some(s.clone())), "t", &current(2)), None);
        assert_eq!(settings_of(&message("t", "i9", 2, Some(s.clone())), "t", &current(2)), None);
        assert_eq!(settings_of(&message("t", "i0", 2, Some(s.clone())), "t", &current(2)), None);
        assert_eq!(settings_of(&message("u", "i1", 2, Some(s.clone())), "t", &current(2)), None);
        // data messages, even with "settings" in a value, and garbage
        assert_eq!(settings_of(&message("t", "i1", 2, None), "t", &current(2)), None);
        let data = br#"{"version":1,"task":"t","transactions":[{"changes":[{"op":"insert","rel":1,"new":["\"settings\":"]}],"xid":1,"commit_lsn":"0/1","commit_time":"x","seq":0,"last":true}],"relations":[{"id":1,"schema":"s","table":"x","columns":[{"name":"a","type":"text","type_oid":25,"key":true}]}]}"#;
        assert_eq!(settings_of(data, "t", &current(2)), None);
        assert_eq!(settings_of(b"{\"settings\": not json", "t", &current(2)), None);
    }

    #[test]
    fn only_a_newer_generation_of_this_incarnation_counts() {
        assert_eq!(newer_generation(&message("t", "i1", 3, None), "t", &current(2)), Some(3));
        assert_eq!(newer_generation(&message("t", "i1", 2, None), "t", &current(2)), None);
        assert_eq!(newer_generation(&message("t", "i9", 3, None), "t", &current(2)), None);
        assert_eq!(newer_generation(&message("u", "i1", 3, None), "t", &current(2)), None);
        assert_eq!(newer_generation(b"garbage", "t", &current(2)), None);
    }

    #[test]
    fn settings_differ_by_content_not_by_text() {
        let s = serde_json::json!({"a": 1, "b": [1, 2]});
        assert!(!differs(Some("{\"b\": [1, 2], \"a\": 1}"), &s));
        assert!(differs(Some("{\"a\": 2, \"b\": [1, 2]}"), &s));
        assert!(differs(None, &s));
    }
}
