//! The delivery ledger: which offsets have been read, which are acknowledged by a sink, and up to
//! where each partition may be committed.
//!
//! Rule (at-least-once, no gaps): per partition, the committable position is one past the end of
//! the *contiguous* run of acknowledged offsets starting at the oldest unacknowledged read. An
//! offset acknowledged out of order waits until everything before it is acknowledged too. This is
//! the rule Kafka Streams and Flink's Kafka source follow for commits (commit the position of
//! the next record to read, never beyond an unprocessed one).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::record::Lineage;

#[derive(Default)]
struct PartitionLedger {
    /// Offsets read and not yet committed, in read (= offset) order, with their ack flag and
    /// their dataflow time.
    pending: VecDeque<(i64, bool, u64)>,
    /// Offsets acknowledged, not yet popped.
    acked: usize,
    /// Next position to commit: one past the last offset of the acknowledged prefix.
    committable: Option<i64>,
}

/// Tracks read and acknowledged offsets per partition. Shared (`Arc`) between the source, which
/// [`register`](Self::register)s each offset it reads, and the sinks, which
/// [`ack`](Self::ack) them on delivery.
///
/// Memory: one `(i64, bool, u64)` (24 bytes) per event read and not yet committed, so it is bounded by
/// the number of events in flight, which backpressure bounds.
#[derive(Default)]
pub struct DeliveryLedger {
    parts: Mutex<HashMap<i32, PartitionLedger>>,
}

impl DeliveryLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `lineage` was read; it enters the dataflow at timely time `time` (event time
    /// in ms, raised to the source's watermark if late; see [`unacked_before`](Self::unacked_before)).
    /// Offsets of one partition must be registered in increasing order (as a Kafka consumer reads
    /// them); an offset at or below the last registered one of its partition is ignored (a re-read
    /// after a seek is tracked by its first registration).
    pub fn register(&self, lineage: Lineage, time: u64) {
        let mut parts = self.parts.lock().unwrap();
        let p = parts.entry(lineage.partition).or_default();
        if p.pending.back().is_none_or(|&(o, _, _)| o < lineage.offset) {
            p.pending.push_back((lineage.offset, false, time));
        }
    }

    /// Records that everything derived from `lineage` was delivered. Unknown lineages (e.g. of a
    /// partition forgotten after a rebalance) are ignored. Returns whether it was known.
    pub fn ack(&self, lineage: Lineage) -> bool {
        let mut parts = self.parts.lock().unwrap();
        let Some(p) = parts.get_mut(&lineage.partition) else {
            return false;
        };
        let Ok(i) = p.pending.binary_search_by_key(&lineage.offset, |&(o, _, _)| o) else {
            return false;
        };
        if !p.pending[i].1 {
            p.pending[i].1 = true;
            p.acked += 1;
        }
        // Pop the acknowledged prefix.
        while let Some(&(o, true, _)) = p.pending.front() {
            p.pending.pop_front();
            p.acked -= 1;
            p.committable = Some(o + 1);
        }
        true
    }

    /// Returns, for each of `partitions` with acknowledged progress, `(partition, next offset to
    /// read)`: the value to commit to Kafka. Does not change the ledger (a commit can fail; the
    /// caller commits the current value again later).
    pub fn committable(&self, partitions: &[i32]) -> Vec<(i32, i64)> {
        let parts = self.parts.lock().unwrap();
        partitions
            .iter()
            .filter_map(|part| parts.get(part)?.committable.map(|o| (*part, o)))
            .collect()
    }

    /// Events read from `partitions` and not yet acknowledged.
    pub fn unacked(&self, partitions: &[i32]) -> usize {
        let parts = self.parts.lock().unwrap();
        partitions
            .iter()
            .filter_map(|part| parts.get(part))
            .map(|p| p.pending.len() - p.acked)
            .sum()
    }

    /// Events read from `partitions`, not yet acknowledged, that entered the dataflow before
    /// timely time `cutoff`. At shutdown a source freezes its watermark at `cutoff` and waits for
    /// these: events at or after it cannot complete (their windowed features may miss events not
    /// yet read) and are re-read after a restart instead. O(events pending).
    pub fn unacked_before(&self, partitions: &[i32], cutoff: u64) -> usize {
        let parts = self.parts.lock().unwrap();
        partitions
            .iter()
            .filter_map(|part| parts.get(part))
            .map(|p| p.pending.iter().filter(|&&(_, acked, t)| !acked && t < cutoff).count())
            .sum()
    }

    /// Events read from any partition and not yet acknowledged.
    pub fn unacked_total(&self) -> usize {
        let parts = self.parts.lock().unwrap();
        parts.values().map(|p| p.pending.len() - p.acked).sum()
    }

    /// Drops all state of `partitions` (after they were revoked in a rebalance: their new owner
    /// re-reads from the last commit, so late acknowledgements must not commit anything).
    pub fn forget(&self, partitions: &[i32]) {
        let mut parts = self.parts.lock().unwrap();
        for p in partitions {
            parts.remove(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(partition: i32, offset: i64) -> Lineage {
        Lineage { partition, offset }
    }

    #[test]
    fn commits_only_contiguous_acknowledged_prefix() {
        let ledger = DeliveryLedger::new();
        for o in 10..15 {
            ledger.register(l(0, o), 0);
        }
        ledger.register(l(1, 3), 0);
        assert!(ledger.ack(l(0, 12)));
        assert_eq!(ledger.committable(&[0, 1]), vec![]);
        ledger.ack(l(0, 10));
        assert_eq!(ledger.committable(&[0, 1]), vec![(0, 11)]);
        assert_eq!(ledger.committable(&[0, 1]), vec![(0, 11)], "reading does not consume");
        ledger.ack(l(0, 11));
        assert_eq!(ledger.committable(&[0]), vec![(0, 13)]);
        assert_eq!(ledger.unacked(&[0]), 2);
        assert_eq!(ledger.unacked_total(), 3);
        ledger.ack(l(1, 3));
        assert_eq!(ledger.committable(&[0, 1]), vec![(0, 13), (1, 4)]);
    }

    #[test]
    fn gaps_in_offsets_do_not_block_commits() {
        // Compacted topics and transaction markers leave offset gaps.
        let ledger = DeliveryLedger::new();
        ledger.register(l(0, 5), 0);
        ledger.register(l(0, 9), 0);
        ledger.ack(l(0, 9));
        ledger.ack(l(0, 5));
        assert_eq!(ledger.committable(&[0]), vec![(0, 10)]);
    }

    #[test]
    fn duplicate_acks_and_unknown_lineages_are_harmless() {
        let ledger = DeliveryLedger::new();
        ledger.register(l(0, 1), 0);
        ledger.register(l(0, 2), 0);
        ledger.ack(l(0, 2));
        ledger.ack(l(0, 2));
        assert_eq!(ledger.unacked(&[0]), 1);
        assert!(!ledger.ack(l(0, 7)));
        assert!(!ledger.ack(l(3, 0)));
        ledger.forget(&[0]);
        assert!(!ledger.ack(l(0, 1)));
        assert_eq!(ledger.committable(&[0]), vec![]);
    }

    #[test]
    fn unacked_before_counts_only_events_before_the_cutoff() {
        let ledger = DeliveryLedger::new();
        ledger.register(l(0, 1), 100);
        ledger.register(l(0, 2), 200);
        ledger.register(l(0, 3), 150);
        ledger.register(l(1, 1), 300);
        assert_eq!(ledger.unacked_before(&[0, 1], 200), 2);
        ledger.ack(l(0, 3));
        assert_eq!(ledger.unacked_before(&[0, 1], 200), 1);
        assert_eq!(ledger.unacked_before(&[0, 1], 301), 3);
        assert_eq!(ledger.unacked_before(&[1], 300), 0);
    }

    #[test]
    fn re_registration_is_ignored() {
        let ledger = DeliveryLedger::new();
        ledger.register(l(0, 1), 0);
        ledger.register(l(0, 1), 0);
        ledger.register(l(0, 0), 0);
        assert_eq!(ledger.unacked(&[0]), 1);
    }
}
