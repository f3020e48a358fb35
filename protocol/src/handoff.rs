//! The hand-off from a table's full load to CDC.
//!
//! The task's slot is created first; each table is then copied under one REPEATABLE READ
//! snapshot taken after the slot was created. Every source transaction that changes the table
//! and commits after the slot's consistent point is decoded; it is either visible in the copy's
//! snapshot (its effect is in the copy: skip it) or not (its effect is not: replay it). A
//! [`Handoff`] holds each copied table's snapshot and answers that question per change.
//! See `docs/architecture.md` ("Full load and the hand-off to CDC").

use std::collections::HashMap;

use crate::error::{Error, ErrorKind, Result};

/// A `pg_snapshot` (`xmin:xmax:xip,…` with 64-bit transaction ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    xmin: u64,
    xmax: u64,
    xip: Vec<u64>,
}

impl Snapshot {
    /// Parses the text form of a `pg_snapshot`, as `pg_current_snapshot()::text` prints it.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::new(ErrorKind::MalformedSnapshot, format!("not a pg_snapshot: {text:?}"));
        let mut parts = text.trim().split(':');
        let xmin = parts.next().and_then(|p| p.parse::<u64>().ok()).ok_or_else(bad)?;
        let xmax = parts.next().and_then(|p| p.parse::<u64>().ok()).ok_or_else(bad)?;
        let list = parts.next().ok_or_else(bad)?;
        if parts.next().is_some() || xmin > xmax {
            return Err(bad());
        }
        let xip = if list.is_empty() {
            Vec::new()
        } else {
            list.split(',').map(|x| x.parse::<u64>().map_err(|_| bad())).collect::<Result<Vec<_>>>()?
        };
        if xip.iter().any(|&x| x < xmin || x >= xmax) {
            return Err(bad());
        }
        Ok(Self { xmin, xmax, xip })
    }

    /// Whether the committed transaction with this 32-bit id (as pgoutput sends it) is visible
    /// in the snapshot. The id is widened to 64 bits relative to the snapshot's `xmax`: decoded
    /// transactions are always within 2^31 ids of it.
    pub fn sees(&self, xid: u32) -> bool {
        let distance = i64::from(xid.wrapping_sub(self.xmax as u32) as i32);
        let Some(full) = self.xmax.checked_add_signed(distance) else { return true };
        full < self.xmin || (full < self.xmax && !self.xip.contains(&full))
    }
}

/// The copy snapshots of the tables whose CDC changes must be checked against them.
#[derive(Debug, Clone, Default)]
pub struct Handoff {
    tables: HashMap<u32, Snapshot>,
}

impl Handoff {
    /// No table to check.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the copy snapshot of the table with this relation OID.
    pub fn add(&mut self, relation_oid: u32, snapshot: Snapshot) {
        self.tables.insert(relation_oid, snapshot);
    }

    /// True when no table is checked.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Whether a change to this relation by this transaction is already in the table's copy.
    pub fn skips(&self, relation_oid: u32, xid: u32) -> bool {
        self.tables.get(&relation_oid).is_some_and(|s| s.sees(xid))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let s = Snapshot::parse("100:105:100,102").unwrap();
        assert_eq!(s, Snapshot { xmin: 100, xmax: 105, xip: vec![100, 102] });
        assert!(Snapshot::parse("7:7:").is_ok());
        for bad in ["", "1", "1:2", "2:1:", "1:5:9", "a:b:", "1:5:2,x", "1:5::"] {
            assert!(Snapshot::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn visibility_follows_xmin_xmax_and_xip() {
        let s = Snapshot::parse("100:105:100,102").unwrap();
        assert!(s.sees(99));
        assert!(!s.sees(100)); // in progress at snapshot time
        assert!(s.sees(101));
        assert!(!s.sees(102));
        assert!(s.sees(104));
        assert!(!s.sees(105)); // started after the snapshot
        assert!(!s.sees(1_000));
    }

    #[test]
    fn widening_works_across_an_epoch_boundary() {
        let epoch = 1_u64 << 32;
        // xmax just past the 32-bit wrap: 32-bit id 0xFFFF_FFF0 is from the previous epoch.
        let s = Snapshot::parse(&format!("{}:{}:{}", epoch - 40, epoch + 5, epoch - 32)).unwrap();
        assert!(s.sees(0xFFFF_FFD0)); // epoch - 48, below xmin
        assert!(!s.sees(0xFFFF_FFE0)); // epoch - 32, in progress
        assert!(s.sees(0xFFFF_FFF0)); // epoch - 16
        assert!(s.sees(3)); // epoch + 3
        assert!(!s.sees(5)); // epoch + 5 = xmax
        assert!(!s.sees(6));
    }

    #[test]
    fn handoff_checks_only_its_tables() {
        let mut h = Handoff::new();
        assert!(h.is_empty());
        h.add(42, Snapshot::parse("10:20:15").unwrap());
        assert!(h.skips(42, 12));
        assert!(!h.skips(42, 15));
        assert!(!h.skips(42, 25));
        assert!(!h.skips(43, 12));
    }
}
