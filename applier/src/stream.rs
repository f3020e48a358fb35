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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(incarnation: Option<&str>, generation: u32, retired: &[&str]) -> Current {
        Current { incarnation: incarnation.map(str::to_owned), generation, retired: retired.iter().map(|s| (*s).to_owned()).collect() }
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
