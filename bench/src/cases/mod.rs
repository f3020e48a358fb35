//! The benchmark's cases and what they share while they run: the stack, the settings, the
//! report, and the check that no server restarted under a case (the stack may be shared).

pub mod catch_up;
pub mod latency;
pub mod load;
pub mod rss;

use std::time::Duration;

use crate::config::Settings;
use crate::report::{Figure, Report};
use crate::stack::{Epoch, Stack};

/// A run in progress.
pub struct Run<'a> {
    pub stack: &'a Stack,
    pub settings: &'a Settings,
    pub report: Report,
    pub clk_tck: f64,
    epoch: Option<Epoch>,
}

impl<'a> Run<'a> {
    pub fn new(stack: &'a Stack, settings: &'a Settings, report: Report, clk_tck: f64) -> Self {
        Self { stack, settings, report, clk_tck, epoch: None }
    }

    /// Progress, on stderr (stdout is the table).
    pub fn say(&self, line: &str) {
        eprintln!("bench: {line}");
    }

    /// The time allowed for each wait.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.settings.timeout_s)
    }

    /// A case begins: remember when each server started.
    pub async fn begin_case(&mut self) {
        self.report.begin_case();
        self.epoch = Some(self.stack.epoch().await);
    }

    /// Before a case's figures: mark them if a server restarted while it ran.
    pub async fn check_case(&mut self, label: &str) {
        let now = self.stack.epoch().await;
        if let Some(before) = &self.epoch {
            for reason in before.restarts_since(&now) {
                self.report.disturbed(reason);
            }
        }
        self.warn_if_disturbed(label);
    }

    /// Marks the current case (e.g. its writer stalled).
    pub fn disturbed(&mut self, reason: &str) {
        self.report.disturbed(reason);
    }

    fn warn_if_disturbed(&mut self, label: &str) {
        if let Some(why) = self.report.disturbance() {
            self.say(&format!("WARNING: {label}: {why} during the case (shared stack): its rows are marked (!)"));
            self.detail(format!("(!) {label}: DISTURBED: {why} during the case; rerun for meaningful figures"));
        }
    }

    pub fn figure(&mut self, figure: &Figure) {
        self.report.figure(figure).expect("cannot append to the results file");
    }

    pub fn detail(&mut self, line: String) {
        self.report.detail(line);
    }
}
