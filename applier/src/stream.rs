//! Which stream a message belongs to, against the stream the target has applied so far.
//!
//! A task's stream is identified by its incarnation (a new one at every `create_task` at the
//! source) and its generation (one more at every `reload`). The target records the incarnation
//! and generation it applies, and the incarnations it has left behind. A message of:
//! * the same incarnation and generation is applied;
//! * the same incarnation and an older generation was queued before a reload: skipped;
//! * the same incarnation and a newer generation starts the task over (the source reloaded it);
//! * a new incarnation starts the task over too: the task was dropped and created again under
//!   the same name (whatever the old one had reached means nothing to the new one);
//! * an incarnation left behind halts: two sources publish a task of the same name into this
//!   queue, or an old message came back after a newer incarnation was applied. Applying it
//!   would interleave two unrelated streams.
//!
//! Within a stream, every transaction names the one published before it (`prev_commit_lsn`):
//! [`gap`] finds a transaction whose predecessor was never applied (a message purged from the
//! queue, expired or dropped by a broker policy) so that the applier halts instead of applying
//! past the hole.

use trempy_protocol::Lsn;
use trempy_protocol::envelope::Transaction;

/// Where the target stands: the incarnation (unknown before the first version-2 message) and
/// generation it applies, and the incarnations it has left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Current {
    pub(crate) incarnation: Option<String>,
    pub(crate) generation: u32,
    pub(crate) retired: Vec<String>,
}

/// What to do with a message, given where the target stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Part of the stream being applied.
    Apply,
    /// From before a reload of the same incarnation: acknowledge without applying.
    Skip,
    /// The task was reloaded: start over at this generation.
    NewGeneration,
    /// The task was created again under the same name: start over with this incarnation.
    NewIncarnation,
    /// From an incarnation already left behind: halt, never apply.
    Retired,
}

/// Decides (see the module documentation). A message without an incarnation (envelope version 1)
/// belongs to whatever incarnation is current.
pub(crate) fn verdict(current: &Current, incarnation: Option<&str>, generation: u32) -> Verdict {
    if let Some(incarnation) = incarnation {
        if current.retired.iter().any(|r| r == incarnation) {
            return Verdict::Retired;
        }
        match current.incarnation.as_deref() {
            Some(now) if now != incarnation => return Verdict::NewIncarnation,
            // The first message that names an incarnation: it is this target's stream, unless
            // its generation is below the one applied (then it is a task created again).
            None if generation < current.generation => return Verdict::NewIncarnation,
            _ => {}
        }
    }
    match generation.cmp(&current.generation) {
        std::cmp::Ordering::Less => Verdict::Skip,
        std::cmp::Ordering::Equal => Verdict::Apply,
        std::cmp::Ordering::Greater => Verdict::NewGeneration,
    }
}

/// The incarnations left behind once `next` replaces `current` (bounded: the last 16).
pub(crate) fn retire(current: &Current, next: &str) -> Vec<String> {
    let mut retired = current.retired.clone();
    if let Some(old) = &current.incarnation
        && old != next
        && !retired.contains(old)
    {
        retired.push(old.clone());
    }
    let excess = retired.len().saturating_sub(16);
    retired.drain(..excess);
    retired
}

/// The first transaction of `transactions` (in message order) whose predecessor in the stream
/// was never applied, given the watermark (commit LSN of the last transaction applied): its
/// commit LSN and the missing predecessor's. Transactions at or below the watermark are
/// redeliveries and are not checked; a transaction without `prev_commit_lsn` (the first of a
/// generation, or a version-1 message) is not checked either.
pub(crate) fn gap(watermark: Lsn, transactions: &[Transaction]) -> Option<(Lsn, Lsn)> {
    let mut applied = watermark;
    for t in transactions {
        if t.seq == 0
            && t.commit_lsn > applied
            && let Some(prev) = t.prev_commit_lsn
            && prev > applied
        {
            return Some((t.commit_lsn, prev));
        }
        if t.last {
            applied = applied.max(t.commit_lsn);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(commit: u64, prev: Option<u64>, seq: u32, last: bool) -> Transaction {
        Transaction {
            changes: Vec::new(),
            xid: 1,
            commit_lsn: Lsn(commit),
            prev_commit_lsn: prev.map(Lsn),
            commit_time: String::new(),
            seq,
            last,
        }
    }

    #[test]
    fn a_chain_without_holes_passes() {
        assert_eq!(gap(Lsn(10), &[txn(20, Some(10), 0, true), txn(30, Some(20), 0, true)]), None);
        // chunks of one transaction all name the same predecessor
        assert_eq!(gap(Lsn(10), &[txn(20, Some(10), 0, false)]), None);
        assert_eq!(
            gap(Lsn(10), &[txn(20, Some(10), 1, false), txn(20, Some(10), 2, true), txn(30, Some(20), 0, true)]),
            None
        );
        // redeliveries below the watermark, and unknown predecessors, are not checked
        assert_eq!(gap(Lsn(50), &[txn(20, Some(10), 0, true), txn(30, Some(20), 0, true)]), None);
        assert_eq!(gap(Lsn(10), &[txn(20, None, 0, true)]), None);
        // a predecessor older than the watermark (recorded late at the source) is no hole
        assert_eq!(gap(Lsn(15), &[txn(20, Some(10), 0, true)]), None);
    }

    #[test]
    fn a_purged_transaction_is_a_gap() {
        // 20 was published but never applied: 30 names it
        assert_eq!(gap(Lsn(10), &[txn(30, Some(20), 0, true)]), Some((Lsn(30), Lsn(20))));
        // inside one message, after an applied one
        assert_eq!(gap(Lsn(10), &[txn(20, Some(10), 0, true), txn(40, Some(30), 0, true)]), Some((Lsn(40), Lsn(30))));
        // after a new generation started from an empty position
        assert_eq!(gap(Lsn(0), &[txn(40, Some(30), 0, true)]), Some((Lsn(40), Lsn(30))));
    }

    fn at(incarnation: Option<&str>, generation: u32, retired: &[&str]) -> Current {
        Current {
            incarnation: incarnation.map(str::to_owned),
            generation,
            retired: retired.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn generations_of_one_incarnation() {
        let now = at(Some("a"), 2, &[]);
        assert_eq!(verdict(&now, Some("a"), 2), Verdict::Apply);
        assert_eq!(verdict(&now, Some("a"), 1), Verdict::Skip);
        assert_eq!(verdict(&now, Some("a"), 3), Verdict::NewGeneration);
        // version 1 messages carry no incarnation: generations alone decide
        assert_eq!(verdict(&now, None, 1), Verdict::Skip);
        assert_eq!(verdict(&now, None, 2), Verdict::Apply);
    }

    #[test]
    fn a_task_created_again_starts_over_whatever_its_generation() {
        // the old task was reloaded (generation 3); the new one starts at generation 1
        let now = at(Some("old"), 3, &[]);
        assert_eq!(verdict(&now, Some("new"), 1), Verdict::NewIncarnation);
        assert_eq!(verdict(&now, Some("new"), 7), Verdict::NewIncarnation);
        assert_eq!(retire(&now, "new"), vec!["old".to_owned()]);
    }

    #[test]
    fn an_incarnation_left_behind_halts() {
        let now = at(Some("new"), 1, &["old"]);
        assert_eq!(verdict(&now, Some("old"), 1), Verdict::Retired);
        assert_eq!(verdict(&now, Some("old"), 9), Verdict::Retired);
        assert_eq!(verdict(&now, Some("new"), 1), Verdict::Apply);
    }

    #[test]
    fn the_first_named_incarnation_is_adopted() {
        // a fresh target
        assert_eq!(verdict(&at(None, 1, &[]), Some("a"), 1), Verdict::Apply);
        assert_eq!(verdict(&at(None, 1, &[]), Some("a"), 2), Verdict::NewGeneration);
        // a target that applied version-1 messages of a reloaded task: a lower generation is
        // another task, not a stale message
        assert_eq!(verdict(&at(None, 3, &[]), Some("a"), 1), Verdict::NewIncarnation);
    }

    #[test]
    fn retired_list_is_bounded_and_has_no_repeats() {
        let mut now = at(Some("i0"), 1, &[]);
        for i in 1..40 {
            let next = format!("i{i}");
            now = Current { retired: retire(&now, &next), incarnation: Some(next), generation: 1 };
        }
        assert_eq!(now.retired.len(), 16);
        assert_eq!(now.retired.last().map(String::as_str), Some("i38"));
        assert_eq!(retire(&now, "i39"), now.retired);
    }
}
