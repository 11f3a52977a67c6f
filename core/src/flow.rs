//! Flow control shared by a topology's source(s) and micro-batcher(s): backpressure and shutdown.
//!
//! The micro-batcher publishes how many rows it holds and whether its hand-off to inference is
//! blocked; the source reads [`FlowControl::should_pause`] before each poll and pauses its Kafka
//! partitions while it is true. Memory held in the pipeline is therefore bounded by configuration
//! (see [`FlowControl::new`]), and overload shows up as consumer lag instead.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Shared backpressure and shutdown state of one topology.
#[derive(Debug)]
pub struct FlowControl {
    buffered_rows: AtomicUsize,
    max_buffered_rows: AtomicUsize,
    high_water: AtomicUsize,
    blocked: AtomicUsize,
    shutdown: AtomicBool,
    paused_micros: AtomicU64,
    pauses: AtomicU64,
    sources_finished: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight_seen: AtomicUsize,
    max_in_flight: usize,
    cutoff: AtomicU64,
    memory_pressure: AtomicBool,
}

impl FlowControl {
    /// Flow control that pauses sources once `high_water` rows (summed over all micro-batchers)
    /// wait to be handed to inference, or while any micro-batcher cannot hand off a full batch.
    ///
    /// A topology sets `high_water = 2 * workers * max_batch_rows`: each micro-batcher holds less
    /// than one partial batch plus one pending batch in normal operation, so only a stuck
    /// hand-off reaches it; with at most one poll of `max_batch_rows` events arriving after the
    /// signal, buffered rows stay below `3 * workers * max_batch_rows`.
    pub fn new(high_water: usize) -> Self {
        Self::with_in_flight_limit(high_water, usize::MAX)
    }

    /// As [`FlowControl::new`], and sources also pause once `max_in_flight` rows they read have
    /// not yet been handed to inference (or sent to the dead-letter queue): this bounds the rows
    /// the feature store holds while they wait for the watermark.
    pub fn with_in_flight_limit(high_water: usize, max_in_flight: usize) -> Self {
        Self {
            buffered_rows: AtomicUsize::new(0),
            max_buffered_rows: AtomicUsize::new(0),
            high_water: AtomicUsize::new(high_water.max(1)),
            blocked: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            paused_micros: AtomicU64::new(0),
            pauses: AtomicU64::new(0),
            sources_finished: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight_seen: AtomicUsize::new(0),
            max_in_flight: max_in_flight.max(1),
            cutoff: AtomicU64::new(u64::MAX),
            memory_pressure: AtomicBool::new(false),
        }
    }

    /// Changes the buffered-rows limit (the micro-batch window was reloaded: a topology keeps it
    /// at `2 * workers * max_batch_rows`).
    pub fn set_high_water(&self, high_water: usize) {
        self.high_water.store(high_water.max(1), Ordering::Release);
    }

    /// Adds `n` rows to the buffered count (a micro-batcher received them).
    pub fn add_buffered(&self, n: usize) {
        let now = self.buffered_rows.fetch_add(n, Ordering::AcqRel) + n;
        self.max_buffered_rows.fetch_max(now, Ordering::AcqRel);
    }

    /// Removes `n` rows from the buffered count (a micro-batcher handed them to inference).
    pub fn remove_buffered(&self, n: usize) {
        self.buffered_rows.fetch_sub(n, Ordering::AcqRel);
    }

    /// Rows currently held by micro-batchers.
    pub fn buffered_rows(&self) -> usize {
        self.buffered_rows.load(Ordering::Acquire)
    }

    /// The largest [`buffered_rows`](Self::buffered_rows) seen since start.
    pub fn max_buffered_rows(&self) -> usize {
        self.max_buffered_rows.load(Ordering::Acquire)
    }

    /// A micro-batcher reports that its hand-off is blocked (`true`) or flowing again (`false`).
    /// Each `true` must be matched by one `false`.
    pub fn set_blocked(&self, blocked: bool) {
        if blocked {
            self.blocked.fetch_add(1, Ordering::AcqRel);
        } else {
            self.blocked.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// A source read `n` events that will each end as a batch row or a dead letter.
    pub fn add_in_flight(&self, n: usize) {
        let now = self.in_flight.fetch_add(n, Ordering::AcqRel) + n;
        self.max_in_flight_seen.fetch_max(now, Ordering::AcqRel);
    }

    /// `n` events left the pipeline's memory (handed to inference, or sent as dead letters).
    pub fn remove_in_flight(&self, n: usize) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(n)));
    }

    /// Events read and not yet handed to inference or sent as dead letters.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The largest [`in_flight`](Self::in_flight) seen since start.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight_seen.load(Ordering::Acquire)
    }

    /// Sets or clears memory pressure: while set, sources pause (the process's resident memory
    /// went over its configured limit; see `topology.max_memory`).
    pub fn set_memory_pressure(&self, on: bool) {
        self.memory_pressure.store(on, Ordering::Release);
    }

    /// Whether memory pressure holds sources back.
    pub fn memory_pressure(&self) -> bool {
        self.memory_pressure.load(Ordering::Acquire)
    }

    /// Whether sources should stop reading now. Memory pressure is not a reason to stop: the
    /// events in flight wait for a watermark that only reading can advance (a full stop
    /// deadlocked, then let partitions turn idle and features depend on timing); it makes the
    /// sources align instead ([`should_align`](Self::should_align)).
    pub fn should_pause(&self) -> bool {
        self.blocked.load(Ordering::Acquire) > 0
            || self.buffered_rows() >= self.high_water.load(Ordering::Acquire)
            || self.in_flight() >= self.max_in_flight
    }

    /// Whether half of `max_in_flight` events are in flight. Most of them wait in the feature
    /// store for the watermark: from here a source reads only the partitions that hold the
    /// watermark back (watermark alignment), whose events release the others. The other half
    /// of the limit is left to those partitions, so that the limit itself never stops the
    /// reads the watermark waits for (see the Kafka source).
    ///
    /// Memory pressure ([`set_memory_pressure`](Self::set_memory_pressure)) aligns too: the
    /// partitions ahead stop, the laggards' reads release the rows held for the watermark, and
    /// the order events are processed in stays the one the watermark gives (features do not
    /// depend on timing).
    pub fn should_align(&self) -> bool {
        self.memory_pressure() || self.in_flight() >= self.max_in_flight / 2
    }

    /// How many events one of `peers` source workers may read in its next activation, at most
    /// `max_poll_records`. Below the alignment threshold (half of `max_in_flight`), each worker
    /// gets its share of what is left below it, so that the workers reading at once cannot
    /// overshoot it: the rows read before alignment starts (mostly ahead of the watermark) stay
    /// within one half of the limit, and the other half stays free for the partitions holding
    /// the watermark. (Without the cap, one activation of 1,024 records over a limit of 1,000
    /// filled the limit with rows ahead of a partition never read, which then could not be read:
    /// a deadlock until the stall escape.) While aligning, the rest of the limit.
    ///
    /// ```
    /// use weir_core::flow::FlowControl;
    /// let flow = FlowControl::with_in_flight_limit(100, 1000);
    /// assert_eq!(flow.read_budget(1024, 2), 250); // (500 - 0) / 2 workers
    /// flow.add_in_flight(600);
    /// assert_eq!(flow.read_budget(1024, 2), 400); // aligning: up to the limit
    /// flow.add_in_flight(400);
    /// assert_eq!(flow.read_budget(1024, 2), 0);
    /// ```
    pub fn read_budget(&self, max_poll_records: usize, peers: usize) -> usize {
        let in_flight = self.in_flight();
        let half = self.max_in_flight / 2;
        let room = if in_flight < half {
            (half - in_flight).div_ceil(peers.max(1))
        } else {
            self.max_in_flight.saturating_sub(in_flight)
        };
        room.min(max_poll_records)
    }

    /// Most events a source may have read and not yet seen acknowledged by a sink (the delivery
    /// ledger's pending entries) before it stops reading: twice the in-flight limit. Events
    /// past inference (queued, in the producer, failed and being dead-lettered) count here, so
    /// that a sink that stops acknowledging stops the sources instead of growing the ledger
    /// without bound.
    pub fn max_unacked(&self) -> usize {
        self.max_in_flight.saturating_mul(2)
    }

    /// Adds time a source spent paused, in µs.
    pub fn add_paused_micros(&self, us: u64) {
        self.paused_micros.fetch_add(us, Ordering::Relaxed);
    }

    /// Counts one episode of a source pausing its partitions.
    pub fn add_pause(&self) {
        self.pauses.fetch_add(1, Ordering::Relaxed);
    }

    /// Pause episodes so far (summed over sources).
    pub fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }

    /// Total time sources spent paused by backpressure, in µs (summed over sources).
    pub fn paused_micros(&self) -> u64 {
        self.paused_micros.load(Ordering::Relaxed)
    }

    /// A source reports that it finished (final commit done). A source keeps its Kafka consumer
    /// (and so its group membership) until every source of the process finished, so that one
    /// worker leaving the group does not trigger a rebalance that fails the others' final commits.
    pub fn source_finished(&self) {
        self.sources_finished.fetch_add(1, Ordering::AcqRel);
    }

    /// Sources that finished.
    pub fn sources_finished(&self) -> usize {
        self.sources_finished.load(Ordering::Acquire)
    }

    /// Asks sources to stop reading and the topology to drain (SIGINT/SIGTERM).
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
    }

    /// Whether shutdown was requested.
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// A source stopping early (shutdown) reports the timely time its watermark froze at. The
    /// cutoff is the minimum over sources: a result at a time before it was final while every
    /// source still held its watermark; one at or after it was released only because a source
    /// stopped, and may miss events that source never read. Such results must not be delivered
    /// (they are re-read on restart or resume). Call before dropping the capability.
    pub fn freeze_at(&self, time: u64) {
        self.cutoff.fetch_min(time, Ordering::SeqCst);
    }

    /// The shutdown cutoff (`u64::MAX` while no source stopped early); see
    /// [`freeze_at`](Self::freeze_at).
    pub fn cutoff(&self) -> u64 {
        self.cutoff.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_on_high_water_or_blocked_handoff() {
        let flow = FlowControl::new(100);
        assert!(!flow.should_pause());
        flow.add_buffered(99);
        assert!(!flow.should_pause());
        flow.add_buffered(1);
        assert!(flow.should_pause());
        flow.remove_buffered(50);
        assert!(!flow.should_pause());
        flow.set_blocked(true);
        assert!(flow.should_pause());
        flow.set_blocked(false);
        assert!(!flow.should_pause());
        assert_eq!(flow.max_buffered_rows(), 100);
        let flow = FlowControl::with_in_flight_limit(100, 12);
        flow.add_in_flight(11);
        assert!(!flow.should_pause());
        flow.add_in_flight(1);
        assert!(flow.should_pause());
        flow.remove_in_flight(4);
        assert!(!flow.should_pause());
        assert!(flow.should_align(), "8 of 12 in flight: past half the limit");
        flow.remove_in_flight(3);
        assert!(!flow.should_align());
        assert_eq!(flow.max_in_flight(), 12);
        assert_eq!(flow.max_unacked(), 24);
    }

    #[test]
    fn memory_pressure_aligns_the_sources_instead_of_stopping_them() {
        // Issue 13, item 4: a full stop under memory pressure deadlocked with the watermark.
        let flow = FlowControl::with_in_flight_limit(100, 1000);
        flow.set_memory_pressure(true);
        assert!(!flow.should_pause(), "reading must go on: the watermark needs it");
        assert!(flow.should_align(), "only the partitions holding the watermark read");
        flow.set_memory_pressure(false);
        assert!(!flow.should_align());
    }

    #[test]
    fn cutoff_is_the_minimum_frozen_time() {
        let flow = FlowControl::new(1);
        assert_eq!(flow.cutoff(), u64::MAX);
        flow.freeze_at(500);
        flow.freeze_at(900);
        assert_eq!(flow.cutoff(), 500);
        flow.freeze_at(100);
        assert_eq!(flow.cutoff(), 100);
    }
}
