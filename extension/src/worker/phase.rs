//! A task worker's life as an explicit state machine, apart from the SQL it drives, so that its
//! order is unit-tested:
//!
//! ```text
//!   start ─▶ Settings ─▶ Loading ─▶ OwedSequences ─┬─▶ Streaming   (full_load_and_cdc)
//!               │        (copies)                   └─▶ Finished    (full_load: disabled, exits)
//!               └──────────────────────────────────────▶ Streaming   (cdc)
//! ```
//!
//! * Every start publishes the task's settings first: every message after them is applied under
//!   them, and the applier may have lost track of older ones (a reload, a purge).
//! * A full load ends with the sequences' values (the target's sequences must be ahead of the
//!   copied rows before anything else), and a `full_load` task is finished only once they are
//!   published, so a worker that dies before that is started again and publishes them.
//! * While streaming, the sequences also go at their interval.

/// What the worker does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    /// Publish the task's settings.
    Settings,
    /// Copy the next table of the full load (or find that none is left).
    Load,
    /// Publish the sequences the finished full load owes; nothing else until that is done.
    OwedSequences,
    /// Decode and publish changes; the sequences at their interval.
    Stream,
    /// A `full_load` task has published everything: mark it finished and exit.
    Finish,
}

/// Where a task worker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Phases {
    work: Work,
    copies: bool,
    streams: bool,
}

impl Phases {
    /// A worker just started for a task that `copies` (full load) and/or `streams` (CDC).
    pub(crate) fn new(copies: bool, streams: bool) -> Self {
        Self { work: Work::Settings, copies, streams }
    }

    pub(crate) fn work(self) -> Work {
        self.work
    }

    /// True once the full load is over (always, for a task without one).
    #[cfg(test)]
    pub(crate) fn loaded(self) -> bool {
        !self.copies || matches!(self.work, Work::OwedSequences | Work::Stream | Work::Finish)
    }

    /// True when the sequences are due at their interval (while streaming only).
    pub(crate) fn periodic_sequences(self) -> bool {
        self.work == Work::Stream
    }

    /// RabbitMQ confirmed the settings.
    pub(crate) fn settings_published(&mut self) {
        if self.work == Work::Settings {
            self.work = if self.copies { Work::Load } else { Work::Stream };
        }
    }

    /// The full load found no table left to copy.
    pub(crate) fn load_done(&mut self) {
        if self.work == Work::Load {
            self.work = Work::OwedSequences;
        }
    }

    /// RabbitMQ confirmed the sequences the full load owed.
    pub(crate) fn sequences_published(&mut self) {
        if self.work == Work::OwedSequences {
            self.work = if self.streams { Work::Stream } else { Work::Finish };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cdc_task_publishes_its_settings_then_streams() {
        let mut phases = Phases::new(false, true);
        assert_eq!((phases.work(), phases.periodic_sequences()), (Work::Settings, false));
        assert!(phases.loaded(), "nothing to copy");
        phases.settings_published();
        assert_eq!((phases.work(), phases.periodic_sequences()), (Work::Stream, true));
    }

    #[test]
    fn a_full_load_and_cdc_task_publishes_the_owed_sequences_before_it_streams() {
        let mut phases = Phases::new(true, true);
        phases.settings_published();
        assert_eq!((phases.work(), phases.loaded(), phases.periodic_sequences()), (Work::Load, false, false));
        phases.load_done();
        assert_eq!((phases.work(), phases.loaded(), phases.periodic_sequences()), (Work::OwedSequences, true, false));
        phases.sequences_published();
        assert_eq!((phases.work(), phases.periodic_sequences()), (Work::Stream, true));
    }

    #[test]
    fn a_full_load_task_finishes_only_after_its_sequences_are_published() {
        let mut phases = Phases::new(true, false);
        phases.settings_published();
        phases.load_done();
        assert_eq!(phases.work(), Work::OwedSequences);
        phases.sequences_published();
        assert_eq!((phases.work(), phases.periodic_sequences()), (Work::Finish, false));
    }

    #[test]
    fn nothing_is_skipped_out_of_order() {
        // the settings come first: no load and no sequences before them
        let mut phases = Phases::new(true, true);
        phases.load_done();
        phases.sequences_published();
        assert_eq!(phases.work(), Work::Settings);
        // the load is not over before the settings' confirm moved it on, and sequences owed stay
        // owed until published
        phases.settings_published();
        phases.sequences_published();
        assert_eq!(phases.work(), Work::Load);
        phases.load_done();
        phases.settings_published();
        phases.load_done();
        assert_eq!(phases.work(), Work::OwedSequences);
    }
}
