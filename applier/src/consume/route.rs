//! Where each source transaction of a message goes, decided from the committed position alone:
//! the invariants of exactly-once delivery (a transaction at or below the watermark is applied
//! already; a large transaction's chunks arrive in order, each once; a partly staged transaction
//! that is published again from its start is discarded and staged anew) as pure functions.

use trempy_protocol::Lsn;
use trempy_protocol::envelope::Transaction;

use crate::progress::Staged;

/// What to do with one source transaction, or one chunk of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// Applied (or staged) already: a redelivery or a re-publication. Nothing to do.
    Skip,
    /// A whole transaction: apply it.
    Apply,
    /// The first chunk of a large transaction: stage it.
    StageFirst,
    /// The next chunk of the staged transaction, not its last: stage it too.
    StageNext,
    /// The last chunk of the staged transaction: apply the staged chunks and this one.
    ApplyStaged,
    /// A chunk other than the one expected: halt, applying and acknowledging nothing of it.
    OutOfOrder { expected: Option<Staged> },
}

/// The route of `transaction`, and whether the staged transaction must be discarded first
/// (it is being re-published from its start, or abandoned for another position).
pub(super) fn route(staged: Option<Staged>, watermark: Lsn, transaction: &Transaction) -> (bool, Route) {
    let (lsn, seq) = (transaction.commit_lsn, transaction.seq);
    let mut discard = false;
    if let Some(staged) = staged {
        if lsn == staged.commit_lsn && seq != 0 {
            let route = if seq < staged.next_seq {
                Route::Skip
            } else if seq > staged.next_seq {
                Route::OutOfOrder { expected: Some(staged) }
            } else if transaction.last {
                Route::ApplyStaged
            } else {
                Route::StageNext
            };
            return (false, route);
        }
        discard = true;
    }
    let route = if lsn <= watermark {
        Route::Skip
    } else if seq != 0 {
        Route::OutOfOrder { expected: None }
    } else if transaction.last {
        Route::Apply
    } else {
        Route::StageFirst
    };
    (discard, route)
}

/// A message whose every transaction is applied already (a redelivery) prepares nothing: its
/// relations may describe tables as they were before a schema change applied since. A message
/// carrying a load chunk, or no transaction, is never such a redelivery.
pub(super) fn applied_already(
    transactions: &[Transaction],
    has_load: bool,
    watermark: Lsn,
    staged: Option<Staged>,
) -> bool {
    !has_load
        && !transactions.is_empty()
        && transactions.iter().all(|t| t.commit_lsn <= watermark && staged.is_none_or(|s| s.commit_lsn != t.commit_lsn))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(lsn: u64, seq: u32, last: bool) -> Transaction {
        Transaction {
            changes: Vec::new(),
            xid: 7,
            commit_lsn: Lsn(lsn),
            prev_commit_lsn: None,
            commit_time: String::new(),
            seq,
            last,
        }
    }

    fn staged(lsn: u64, next_seq: u32) -> Option<Staged> {
        Some(Staged { commit_lsn: Lsn(lsn), next_seq })
    }

    #[test]
    fn a_whole_transaction_above_the_watermark_is_applied_and_at_or_below_it_is_skipped() {
        assert_eq!(route(None, Lsn(100), &chunk(101, 0, true)), (false, Route::Apply));
        assert_eq!(route(None, Lsn(100), &chunk(100, 0, true)), (false, Route::Skip));
        assert_eq!(route(None, Lsn(100), &chunk(50, 0, true)), (false, Route::Skip));
    }

    #[test]
    fn a_large_transaction_is_staged_chunk_by_chunk_then_applied_at_its_last() {
        assert_eq!(route(None, Lsn(100), &chunk(200, 0, false)), (false, Route::StageFirst));
        assert_eq!(route(staged(200, 1), Lsn(100), &chunk(200, 1, false)), (false, Route::StageNext));
        assert_eq!(route(staged(200, 2), Lsn(100), &chunk(200, 2, true)), (false, Route::ApplyStaged));
    }

    #[test]
    fn a_chunk_staged_already_is_skipped_and_a_chunk_ahead_of_the_next_halts() {
        assert_eq!(route(staged(200, 3), Lsn(100), &chunk(200, 1, false)), (false, Route::Skip));
        assert_eq!(
            route(staged(200, 3), Lsn(100), &chunk(200, 5, true)),
            (false, Route::OutOfOrder { expected: staged(200, 3) })
        );
    }

    #[test]
    fn a_chunk_without_its_start_halts_rather_than_apply_part_of_a_transaction() {
        assert_eq!(route(None, Lsn(100), &chunk(200, 2, true)), (false, Route::OutOfOrder { expected: None }));
        // but a chunk of a transaction applied already is a harmless redelivery
        assert_eq!(route(None, Lsn(300), &chunk(200, 2, true)), (false, Route::Skip));
    }

    #[test]
    fn a_staged_transaction_published_again_from_its_start_is_discarded_and_staged_anew() {
        assert_eq!(route(staged(200, 3), Lsn(100), &chunk(200, 0, false)), (true, Route::StageFirst));
        // abandoned for another transaction: discarded, and the other one goes its own way
        assert_eq!(route(staged(200, 3), Lsn(100), &chunk(150, 0, true)), (true, Route::Apply));
        assert_eq!(route(staged(200, 3), Lsn(100), &chunk(90, 0, true)), (true, Route::Skip));
    }

    #[test]
    fn only_a_message_of_applied_transactions_none_of_them_staged_counts_as_applied_already() {
        let applied = [chunk(90, 0, true), chunk(100, 0, true)];
        assert!(applied_already(&applied, false, Lsn(100), None));
        assert!(!applied_already(&applied, true, Lsn(100), None), "a load chunk is never a redelivery");
        assert!(!applied_already(&[], false, Lsn(100), None), "settings or sequences only");
        assert!(!applied_already(&[chunk(90, 0, true), chunk(101, 0, true)], false, Lsn(100), None));
        assert!(!applied_already(&[chunk(90, 1, false)], false, Lsn(100), staged(90, 1)));
    }
}
