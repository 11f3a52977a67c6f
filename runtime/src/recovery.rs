//! Rebuilding the feature store's state when a live topology restarts.
//!
//! The feature store keeps its windows in memory (differential dataflow arrangements); a process
//! that restarts from the consumer group's committed offsets would start with empty windows and
//! score the next transactions with wrong features (a card's 30-day count would restart at 1).
//! weir does not checkpoint that state: it **replays the retained history** instead. Kafka keeps
//! the topic (retention must cover the longest `window + delay`, 37 days for the handbook
//! features), and the replay uses the same operators and the same event-time rules as the first
//! run, so the rebuilt windows equal those of an uninterrupted run (tested with SIGKILL in
//! `tests/tests/reliability.rs`).
//!
//! [`plan`]: for the group's committed offsets, find the event time `T` of the first event not
//! committed in each partition; the replay starts, in every partition, at the first event at or
//! after `min(T) - warmup` (`[backfill] warmup`, the same history a backfill reads before its
//! range). Events before the commit are read into the feature store but not scored (the score
//! gate acknowledges them; their dead letters were sent the first time); the group's offsets
//! are never committed below where they were (a crash during the replay loses nothing).
//! Readiness (`/readyz`) stays "not ready" until every replayed event was processed.
//!
//! Cost: the replay reads `warmup` of history: about as long as a backfill of that span.

use std::collections::BTreeMap;
use std::time::Duration;

use weir_connectors::kafka::admin::{committed_offsets, offsets_for_time, timestamps_at, watermarks};
use weir_connectors::ConnectorError;
use weir_core::Lineage;
use weir_feature_store::snapshot::{Restored, SnapshotStore};

/// Where a restarted live source reads from, per partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPlan {
    /// `partition -> first offset to read`: the replay's start (the group's commit when
    /// nothing before it is needed).
    pub start: BTreeMap<i32, i64>,
    /// `partition -> the group's committed offset`: events before it are replayed without
    /// scoring; offsets are never committed at or below it again.
    pub committed: BTreeMap<i32, i64>,
    /// Event time the replay starts at, ms since the Unix epoch (`None`: nothing to replay).
    pub from_ms: Option<i64>,
    /// The cut of the snapshot the feature state starts from (`None`: replayed history).
    pub snapshot_cut_ms: Option<i64>,
}

/// Where a restart may find the feature store's snapshots, and how to judge them.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotSource<'a> {
    /// The store.
    pub store: &'a SnapshotStore,
    /// The stage definitions a usable snapshot has (`weir_feature_store::keyed::stage_definitions`).
    pub definitions: &'a BTreeMap<String, String>,
    /// How far before a cut the replay starts, ms: events a little behind in a partition (allowed
    /// lateness, a transaction time up to `decode.allowed_future` after its message timestamp)
    /// may still be processed after it.
    pub margin_ms: i64,
}

impl RecoveryPlan {
    /// No replay: every partition starts at the group's commit.
    fn at_commit(committed: BTreeMap<i32, i64>) -> Self {
        Self {
            start: committed.clone(),
            committed,
            from_ms: None,
            snapshot_cut_ms: None,
        }
    }

    /// Events replayed without scoring: `committed - start`, summed over partitions.
    pub fn replay_events(&self) -> i64 {
        self.committed
            .iter()
            .map(|(p, c)| c - self.start.get(p).copied().unwrap_or(*c).min(*c))
            .sum()
    }

    /// Whether the event at `lineage` is scored (at or after its partition's commit).
    pub fn scores(&self, lineage: Lineage) -> bool {
        self.committed
            .get(&lineage.partition)
            .is_none_or(|c| lineage.offset >= *c)
    }
}

/// Plans the replay of a live restart of group `group` on `topic`, or `None` when the group has
/// committed nothing (a first run reads the topic from its start and needs no replay).
///
/// `warmup_ms`: history needed before the first event scored (0: none, start at the commit).
/// A broker that cannot look up offsets by time (librdkafka's mock cluster) replays from the
/// start of each partition instead (correct, longer).
///
/// # Errors
/// [`ConnectorError`] if the topic is unknown or the broker does not answer within `timeout`.
pub fn plan(
    brokers: &str,
    topic: &str,
    group: &str,
    warmup_ms: i64,
    snapshots: Option<SnapshotSource<'_>>,
    timeout: Duration,
) -> Result<Option<(RecoveryPlan, Option<Restored>)>, ConnectorError> {
    let committed: BTreeMap<i32, i64> = committed_offsets(brokers, group, topic, timeout)?
        .into_iter()
        .filter_map(|(p, o)| Some((p, o?)))
        .collect();
    if committed.is_empty() {
        return Ok(None);
    }
    if warmup_ms <= 0 {
        return Ok(Some((RecoveryPlan::at_commit(committed), None)));
    }
    let marks: BTreeMap<i32, (i64, i64)> = watermarks(brokers, topic, timeout)?
        .into_iter()
        .map(|(p, lo, hi)| (p, (lo, hi)))
        .collect();
    // The first event not committed, or the last one where everything was.
    let resume_at: BTreeMap<i32, i64> = committed
        .iter()
        .filter_map(|(p, c)| {
            let (lo, hi) = *marks.get(p)?;
            (hi > lo).then_some((*p, (*c).clamp(lo, hi - 1)))
        })
        .collect();
    let Some(resume_ms) = timestamps_at(brokers, topic, &resume_at, timeout)?
        .values()
        .min()
        .copied()
    else {
        return Ok(Some((RecoveryPlan::at_commit(committed), None)));
    };
    // The newest snapshot whose cut is far enough before the first event not committed that
    // every such event is processed after the cut (so that it is scored with the features of
    // its own time), else the whole warm-up.
    let restored = snapshots.and_then(|s| {
        let max_cut = resume_ms - s.margin_ms;
        (max_cut > 0)
            .then(|| s.store.load_latest(max_cut as u64, s.definitions))
            .flatten()
            .map(|r| (r, s.margin_ms))
    });
    let (from_ms, snapshot_cut_ms, restored) = match restored {
        Some((r, margin)) => (r.cut_ms as i64 - margin, Some(r.cut_ms as i64), Some(r)),
        None => (resume_ms - warmup_ms, None, None),
    };
    let found = match offsets_for_time(brokers, topic, from_ms, timeout) {
        Ok(found) => found,
        Err(e @ ConnectorError::OffsetLookup { .. }) => {
            tracing::warn!(error = %e, "cannot look up offsets by time: replaying each partition from its start");
            marks.iter().map(|(p, (lo, _))| (*p, *lo)).collect()
        }
        Err(e) => return Err(e),
    };
    let start = marks
        .iter()
        .map(|(p, (lo, _))| {
            let s = found.get(p).copied().unwrap_or(*lo);
            (*p, committed.get(p).map_or(*lo, |c| s.min(*c)))
        })
        .collect();
    Ok(Some((
        RecoveryPlan {
            start,
            committed,
            from_ms: Some(from_ms),
            snapshot_cut_ms,
        },
        restored,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_events_are_not_scored_and_counted() {
        let plan = RecoveryPlan {
            start: BTreeMap::from([(0, 10), (1, 0), (2, 7)]),
            committed: BTreeMap::from([(0, 25), (1, 3)]),
            from_ms: Some(0),
            snapshot_cut_ms: None,
        };
        assert_eq!(plan.replay_events(), 15 + 3);
        let scores = |partition, offset| plan.scores(Lineage { partition, offset });
        assert!(!scores(0, 24));
        assert!(scores(0, 25));
        assert!(!scores(1, 0));
        // No commit: everything in the partition is scored.
        assert!(scores(2, 7));
    }
}
