//! The applier's report back to the source: where the task stands on the target side.
//!
//! The applier publishes one (a small versioned JSON object) to the task's feedback queue
//! ([`crate::names::TaskNames::feedback_queue`]) when its state changes and every few seconds
//! otherwise; the decoding worker reads the latest and shows it in `trempy.status()`. Reports
//! carry states, positions, counts and reasons, never row values. A report is information only:
//! nothing at the source depends on it for correctness.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::lsn::Lsn;

/// The report format this crate writes and reads.
pub const VERSION: u32 = 1;

/// Content type of a report.
pub const CONTENT_TYPE: &str = "application/json";

/// Longest reason kept from a report, in characters.
const MAX_REASON_CHARS: usize = 1_000;

/// The applier's state for the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplierState {
    /// Applying (or waiting for messages).
    Running,
    /// A source transaction failed and is being tried again.
    Retrying,
    /// The task's error policy stopped the task; an operator resumes it.
    Stopped,
    /// Applying cannot go on until the cause is fixed on the target; it resumes by itself.
    Halted,
}

impl ApplierState {
    /// The state's name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Stopped => "stopped",
            Self::Halted => "halted",
        }
    }

    /// Parses a state name (as `trempy.applier_state` stores it).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "running" => Some(Self::Running),
            "retrying" => Some(Self::Retrying),
            "stopped" => Some(Self::Stopped),
            "halted" => Some(Self::Halted),
            _ => None,
        }
    }
}

/// One report of the applier about one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Always [`VERSION`].
    pub version: u32,
    pub task: String,
    pub state: ApplierState,
    /// Why the applier is in this state (never row values).
    #[serde(default)]
    pub reason: Option<String>,
    /// Since when, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub since_ms: Option<i64>,
    /// The last source commit LSN applied (the watermark).
    pub watermark: Lsn,
    /// The task generation the watermark belongs to.
    pub generation: u32,
    pub transactions_applied: u64,
    pub changes_applied: u64,
    pub rows_loaded: u64,
    /// Messages dead-lettered and neither replayed nor discarded.
    pub dead_letters: u64,
    /// When the report was made, in milliseconds since the Unix epoch.
    pub reported_at_ms: i64,
    /// Source schema changes applied on the target for this task incarnation (absent in reports
    /// of appliers that predate schema changes, and while there are none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_changes_applied: Option<u64>,
    /// The last one: `<commit LSN> <source table> -> <target table>: <steps>` (never row values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schema_change: Option<String>,
}

impl Report {
    /// Parses a report. Never panics; the error says what is wrong.
    pub fn parse(body: &[u8]) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|err| malformed(format!("not JSON: {err}")))?;
        match value.get("version") {
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(VERSION)) => {}
            Some(other) => {
                return Err(malformed(format!(
                    "unsupported report version {other}; this build reads version {VERSION}"
                )));
            }
            None => return Err(malformed("missing field `version`")),
        }
        let mut report: Report = serde_json::from_value(value).map_err(|err| malformed(err.to_string()))?;
        crate::names::validate_task_name(&report.task).map_err(|err| malformed(format!("task: {}", err.message())))?;
        if let Some(reason) = &mut report.reason
            && reason.chars().count() > MAX_REASON_CHARS
        {
            *reason = reason.chars().take(MAX_REASON_CHARS).collect();
        }
        if let Some(last) = &mut report.last_schema_change
            && last.chars().count() > MAX_REASON_CHARS
        {
            *last = last.chars().take(MAX_REASON_CHARS).collect();
        }
        Ok(report)
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain fields cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

fn malformed(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::MalformedReport, format!("malformed applier report: {}", message.into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            version: VERSION,
            task: "orders".into(),
            state: ApplierState::Stopped,
            reason: Some("insert into public.t refused at 0/20".into()),
            since_ms: Some(1_700_000_000_000),
            watermark: Lsn(0x10),
            generation: 1,
            transactions_applied: 3,
            changes_applied: 7,
            rows_loaded: 0,
            dead_letters: 0,
            reported_at_ms: 1_700_000_001_000,
            schema_changes_applied: None,
            last_schema_change: None,
        }
    }

    #[test]
    fn schema_change_fields_are_optional_both_ways() {
        let old = String::from_utf8(report().to_json()).unwrap();
        assert!(!old.contains("schema_change"), "{old}");
        assert_eq!(Report::parse(old.as_bytes()).unwrap(), report());
        let mut r = report();
        r.schema_changes_applied = Some(2);
        r.last_schema_change =
            Some("0/20 public.t -> public.t: ALTER TABLE \"public\".\"t\" ADD COLUMN \"c\" integer".into());
        let json = String::from_utf8(r.to_json()).unwrap();
        assert!(
            json.contains(r#""schema_changes_applied":2"#) && json.contains(r#""last_schema_change":"0/20 public.t"#),
            "{json}"
        );
        assert_eq!(Report::parse(json.as_bytes()).unwrap(), r);
    }

    #[test]
    fn round_trip() {
        let r = report();
        let json = r.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains(r#""state":"stopped""#) && text.contains(r#""watermark":"0/10""#), "{text}");
        assert_eq!(Report::parse(&json).unwrap(), r);
    }

    #[test]
    fn states_by_name() {
        for s in [ApplierState::Running, ApplierState::Retrying, ApplierState::Stopped, ApplierState::Halted] {
            assert_eq!(ApplierState::from_name(s.as_str()), Some(s));
        }
        assert_eq!(ApplierState::from_name("paused"), None);
    }

    #[test]
    fn malformed_reports_are_errors_not_panics() {
        let good = String::from_utf8(report().to_json()).unwrap();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "not JSON"),
            ("{".into(), "not JSON"),
            (good[..good.len() / 2].to_owned(), "not JSON"),
            ("[]".into(), "missing field `version`"),
            ("{}".into(), "missing field `version`"),
            (good.replace(r#""version":1"#, r#""version":2"#), "unsupported report version 2"),
            (good.replace(r#""version":1"#, r#""version":"1""#), "unsupported report version"),
            (good.replace("stopped", "paused"), "unknown variant"),
            (good.replace(r#""0/10""#, r#""nope""#), "LSN"),
            (good.replace(r#""orders""#, r#""Orders; drop""#), "task"),
            (good.replace(r#""generation":1"#, r#""generation":-1"#), "invalid value"),
            (good.replace(r#""version":1"#, r#""version":1,"extra":true"#), "unknown field"),
        ];
        for (body, expected) in cases {
            let err = Report::parse(body.as_bytes()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::MalformedReport);
            assert!(err.message().contains(expected), "{body}: {}", err.message());
        }
        assert!(Report::parse(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn long_reasons_are_cut() {
        let mut r = report();
        r.reason = Some("é".repeat(MAX_REASON_CHARS + 10));
        let parsed = Report::parse(&r.to_json()).unwrap();
        assert_eq!(parsed.reason.unwrap().chars().count(), MAX_REASON_CHARS);
    }
}
