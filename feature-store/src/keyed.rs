//! The keyed window operator: per entity, a time-ordered log and running sums with one eviction
//! cursor per window (subtract-on-evict), in timely operators exchanged by entity.
//!
//! A transaction's windowed features need two entities (its customer and its terminal), so the
//! features are computed in one stage per entity kind, chained: each stage exchanges rows by its
//! entity, fills the accumulator slots of its kind and passes the row on; the last stage turns
//! the slots into the feature vector ([`FeatureSpec::values`]).
//!
//! **Time.** Timely time is coarse (the sources' watermark, per poll round; the benchmark's
//! epochs); event time is data. Rows and labels carry their event time (`RowMeta::event_time_ms`;
//! a label's `available_at_ms`), raised to their message's timely time if behind it (late). A
//! stage buffers what it receives and processes, in event-time order, every time the frontier of
//! its inputs has passed: then every event up to that time, from every partition and from the labels, is there.
//! At one millisecond, labels are applied first, then the transactions are inserted, then they
//! read their windows: a window `(t - d - w, t - d]` with `d = 0` includes the transaction itself
//! and every other of the entity at the same millisecond (the handbook's rolling windows).
//!
//! **State per entity** (Feldera's rolling aggregates and the sliding-window literature's
//! subtract-on-evict, for invertible aggregates): a log of what the windows need, in columns
//! (event time, and only where an accumulator reads them the amount in micro-units, or the
//! transaction id and fraud flag: 16 or 17 bytes per event for the handbook's features), in time
//! order, and per accumulator a running sum (`i128`) with a `head` cursor (the next entry to
//! enter the window, once its time is `<= t - d`) and a `tail` cursor (the next entry to leave it,
//! once its time is `<= t - d - w`). Queries come in increasing time, so both cursors only move
//! forward: a hash lookup and a few additions per event and accumulator. Entries every window has
//! left are dropped from the front of the log, so the log holds the events of the longest
//! `window + delay`.
//!
//! **Labels are upserts keyed by transaction id.** A label finds its transaction in its
//! terminal's (or customer's) log by time and id and sets the entry's fraud flag; a window
//! holding the entry gains or loses the difference. A label re-sent counts once; a later
//! `tx_fraud = 0` undoes an earlier 1. A label whose transaction has not been seen waits beside
//! the log until it is; one whose transaction left every window is irrelevant and dropped.
//!
//! ```
//! use timely::dataflow::operators::{ToStream, Capture, capture::Extract, vec::Map};
//! use weir_core::{EventId, Lineage, RowMeta, Value};
//! use weir_feature_store::{definition::handbook_spec, keyed::keyed_features};
//! let spec = handbook_spec(&["customer_id_nb_tx_1day_window"]).unwrap();
//! let rows: Vec<_> = (0..3i64).map(|i| {
//!     // tx_id, tx_time_ms, customer_id, terminal_id, amount
//!     let values = [Value::Int(i), Value::Time(1000 + i), Value::Int(7), Value::Int(1), Value::Float(1.0)];
//!     let meta = RowMeta { lineage: Lineage { partition: 0, offset: i }, id: EventId::Int(i), event_time_ms: 1000 + i, read_at_us: 0 };
//!     spec.event_row(meta, &values).unwrap()
//! }).collect();
//! let out = timely::example(move |scope| {
//!     keyed_features(rows.to_stream(scope), None, spec, &Default::default())
//!         .map(|fv| (fv.meta.id.as_int().unwrap(), fv.values[0] as u64))
//!         .capture()
//! });
//! let mut counts: Vec<(i64, u64)> = out.extract().into_iter().flat_map(|(_, v)| v).collect();
//! counts.sort();
//! // Each transaction counts the customer's transactions in its 1-day window, itself included.
//! assert_eq!(counts, vec![(0, 1), (1, 2), (2, 3)]);
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::definition::{AccKind, Aggregation, Column, EventRow, FeatureSpec, LabelRow};
use crate::snapshot::{Restored, SnapshotHeader, SnapshotSettings};
use crate::windows::FeatureValues;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

/// A fast hasher for integer keys (entity and transaction ids): one multiply (Fibonacci hashing,
/// Knuth TAOCP vol. 3, 6.4). Entity ids are not chosen by an adversary who could see the
/// process's hash seeds, and the keys are spread by the exchange already.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ *b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// `HashMap` keyed by integer ids with [`IdHasher`].
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// The running sums of one window over an entity's log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// Sequence number of the next entry to enter the window.
    pub head: u64,
    /// Sequence number of the next entry to leave the window.
    pub tail: u64,
    /// Sums of the entries in `[tail, head)`: events, measures (micro-units), labels 1.
    pub sums: [i128; 3],
}

/// One window of a stage, `(t - delay - window, t - delay]`, and the accumulator slots it fills:
/// accumulators of one window share its cursors (a count and a mean over the same days move
/// together).
#[derive(Debug, Clone, Copy)]
struct Win {
    window_ms: u64,
    delay_ms: u64,
    /// Slots of the event count, the measure sum and the label count, where configured.
    slots: [Option<usize>; 3],
    /// Slots of the least and the greatest measure, where configured.
    extrema: [Option<usize>; 2],
}

fn windows_of(accs: &[Acc]) -> Vec<Win> {
    let mut wins: Vec<Win> = Vec::new();
    for a in accs {
        let at = match wins
            .iter()
            .position(|w| w.window_ms == a.window_ms && w.delay_ms == a.delay_ms)
        {
            Some(at) => at,
            None => {
                wins.push(Win {
                    window_ms: a.window_ms,
                    delay_ms: a.delay_ms,
                    slots: [None; 3],
                    extrema: [None; 2],
                });
                wins.len() - 1
            }
        };
        let w = &mut wins[at];
        match a.kind {
            AccKind::Count => w.slots[0] = Some(a.slot),
            AccKind::Sum => w.slots[1] = Some(a.slot),
            AccKind::Labels => w.slots[2] = Some(a.slot),
            AccKind::Min => w.extrema[0] = Some(a.slot),
            AccKind::Max => w.extrema[1] = Some(a.slot),
        }
    }
    wins
}

/// One accumulator of a stage: what it sums and over which window.
#[derive(Debug, Clone, Copy)]
struct Acc {
    /// Slot in the row's accumulator vector.
    slot: usize,
    kind: AccKind,
    window_ms: u64,
    delay_ms: u64,
}

/// Which columns a stage's logs keep: only what its accumulators read.
#[derive(Debug, Clone, Copy, Default)]
struct Columns {
    /// Measures (a sum, mean, min or max of the stage's field).
    amounts: bool,
    /// Join ids and label flags (ratios: labels find their event).
    labels: bool,
    /// Monotone queues for a min or a max.
    extrema: bool,
}

/// One entry of an entity's log, 16 bytes: its time with the fraud flag in the top bit (event
/// times are below 2^63 ms), and one value: the amount in micro-units where an accumulator sums
/// amounts, else the transaction id where one counts frauds (a stage that needs both keeps the
/// ids in a second column).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Entry {
    time_fraud: u64,
    value: u64,
}

const FRAUD_BIT: u64 = 1 << 63;

impl Entry {
    #[inline]
    fn time(self) -> u64 {
        self.time_fraud & !FRAUD_BIT
    }
    #[inline]
    fn fraud(self) -> u8 {
        (self.time_fraud >> 63) as u8
    }
}

/// The windows of one entity: its log of [`Entry`], in time order, and one cursor per window of
/// the stage. The log is a ring buffer ([`VecDeque`]): entries every window has left are popped
/// from the front, so it holds the events of the longest `window + delay`, in 16 bytes each (24
/// where a stage needs both amounts and transaction ids), and its capacity is at most twice
/// that.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EntityWindows {
    /// The log, in time order.
    log: VecDeque<Entry>,
    /// Transaction ids, only where the stage needs both amounts and ids (as `log`).
    ids: VecDeque<u64>,
    /// Sequence number of the first entry in the log.
    base: u64,
    /// Labels whose transaction is not in the log yet: tx id -> fraud flag.
    waiting_labels: Option<Box<IdMap<u64, u8>>>,
    /// Per window, the sequence numbers of the window's candidates for its least (`2 w`) and
    /// greatest (`2 w + 1`) measure, in increasing order with monotone measures (the sliding
    /// window minimum's ascending-minima queue): empty unless the stage has a min or a max.
    /// (Boxed: most stages have none, and the arena's entries stay 88 bytes.)
    #[allow(clippy::box_collection)]
    extrema: Option<Box<Vec<VecDeque<u64>>>>,
}

impl EntityWindows {
    /// Events in the log.
    pub fn len(&self) -> usize {
        self.log.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    /// The transaction id of entry `i`.
    #[inline]
    fn id(&self, cols: Columns, i: usize) -> u64 {
        match cols.amounts {
            true => self.ids[i],
            false => self.log[i].value,
        }
    }

    /// Appends a transaction at `time` (not before the last entry); `tx_id` is its join key (0
    /// in a stage without labels, which never looks it up).
    #[inline]
    fn insert(&mut self, cols: Columns, time: u64, amount: i64, tx_id: u64) {
        let mut e = Entry {
            time_fraud: time & !FRAUD_BIT,
            value: match cols.amounts {
                true => amount as u64,
                false => tx_id,
            },
        };
        if cols.labels {
            if let Some(w) = self.waiting_labels.as_mut() {
                if w.remove(&tx_id) == Some(1) {
                    e.time_fraud |= FRAUD_BIT;
                }
                if w.is_empty() {
                    self.waiting_labels = None;
                }
            }
            if cols.amounts {
                self.ids.push_back(tx_id);
            }
        }
        self.log.push_back(e);
    }

    /// Moves the cursors to `t`: the window sums as of `t`.
    #[inline]
    fn advance(&mut self, cursors: &mut [Cursor], wins: &[Win], cols: Columns, t: u64) {
        if cols.extrema {
            self.advance_extrema(cursors, wins, t);
        }
        let base = self.base;
        let end = base + self.log.len() as u64;
        let log = &self.log;
        for (c, w) in cursors.iter_mut().zip(wins) {
            let Some(upto) = t.checked_sub(w.delay_ms) else {
                continue;
            };
            // Enter: entries with time <= t - d.
            while c.head < end {
                let e = log[(c.head - base) as usize];
                if e.time() > upto {
                    break;
                }
                c.sums[0] += 1;
                if cols.amounts {
                    c.sums[1] += e.value as i64 as i128;
                }
                c.sums[2] += e.fraud() as i128;
                c.head += 1;
            }
            // Leave: entries with time <= t - d - w.
            if let Some(gone) = upto.checked_sub(w.window_ms) {
                while c.tail < c.head {
                    let e = log[(c.tail - base) as usize];
                    if e.time() > gone {
                        break;
                    }
                    c.sums[0] -= 1;
                    if cols.amounts {
                        c.sums[1] -= e.value as i64 as i128;
                    }
                    c.sums[2] -= e.fraud() as i128;
                    c.tail += 1;
                }
            }
        }
        // Entries every window has left are no longer needed.
        let keep_from = cursors.iter().map(|c| c.tail).min().unwrap_or(end);
        if keep_from > base {
            let n = (keep_from - base) as usize;
            self.log.drain(..n);
            if !self.ids.is_empty() {
                self.ids.drain(..n);
            }
            self.base = keep_from;
            // A log that shrank to a quarter of its capacity gives half of it back.
            if self.log.capacity() >= 64 && self.log.len() * 4 <= self.log.capacity() {
                let keep = self.log.len() * 2;
                self.log.shrink_to(keep);
                self.ids.shrink_to(keep);
            }
        }
    }

    /// Moves the min and max queues to `t`, before [`Self::advance`] moves the cursors: an
    /// entry entering a window drops the candidates it dominates from the back of the queue; a
    /// candidate the window's tail passed leaves from the front.
    #[cold]
    fn advance_extrema(&mut self, cursors: &[Cursor], wins: &[Win], t: u64) {
        let extrema = self
            .extrema
            .get_or_insert_with(|| Box::new(vec![VecDeque::new(); 2 * wins.len()]));
        let base = self.base;
        let end = base + self.log.len() as u64;
        let log = &self.log;
        let value = |seq: u64| log[(seq - base) as usize].value as i64;
        for (k, (c, w)) in cursors.iter().zip(wins).enumerate() {
            let Some(upto) = t.checked_sub(w.delay_ms) else {
                continue;
            };
            let gone = upto.checked_sub(w.window_ms);
            let mut head = c.head;
            let mut tail = c.tail;
            while head < end && log[(head - base) as usize].time() <= upto {
                let v = value(head);
                for (side, slot) in w.extrema.iter().enumerate() {
                    if slot.is_some() {
                        let q = &mut extrema[2 * k + side];
                        // Min: drop candidates >= v; max: <= v.
                        while q
                            .back()
                            .is_some_and(|&b| if side == 0 { value(b) >= v } else { value(b) <= v })
                        {
                            q.pop_back();
                        }
                        q.push_back(head);
                    }
                }
                head += 1;
            }
            if let Some(gone) = gone {
                while tail < head && log[(tail - base) as usize].time() <= gone {
                    tail += 1;
                }
            }
            for side in 0..2 {
                let q = &mut extrema[2 * k + side];
                while q.front().is_some_and(|&f| f < tail) {
                    q.pop_front();
                }
            }
        }
    }

    /// The least (`side` 0) or greatest (1) measure in window `k`, micro-units (0 if empty).
    #[inline]
    fn extreme(&self, k: usize, side: usize) -> i128 {
        match self
            .extrema
            .as_ref()
            .and_then(|e| e.get(2 * k + side))
            .and_then(|q| q.front())
        {
            Some(&seq) => self.log[(seq - self.base) as usize].value as i64 as i128,
            None => 0,
        }
    }

    /// The window sums as of `t` (moving the cursors there), written to `out` by slot: a test
    /// view of what [`Self::advance`] keeps.
    #[cfg(test)]
    fn read(&mut self, cursors: &mut [Cursor], wins: &[Win], cols: Columns, t: u64, out: &mut [i128]) {
        self.advance(cursors, wins, cols, t);
        for (c, w) in cursors.iter().zip(wins) {
            for (j, slot) in w.slots.iter().enumerate() {
                if let Some(s) = slot {
                    out[*s] = c.sums[j];
                }
            }
        }
    }

    /// Applies a label (upsert by transaction id): the entry's fraud flag becomes `fraud`, and
    /// windows that hold it change their fraud count by the difference. `now`: the label's
    /// processing time; `lookback`: the longest `window + delay` of the stage, ms.
    #[allow(clippy::too_many_arguments)]
    fn label(
        &mut self,
        cursors: &mut [Cursor],
        cols: Columns,
        tx_id: u64,
        tx_time: u64,
        fraud: u8,
        now: u64,
        lookback: u64,
    ) {
        // Entries are in time order: find the transaction's millisecond, then its id; a late
        // transaction was logged at the time it was processed, found by a scan.
        let log = &self.log;
        // A label usually finds its transaction near where the windows' heads are (the
        // handbook's labels come with the windows' delay): search outward from there.
        let hint = cursors.first().map_or(0, |c| c.head.saturating_sub(self.base) as usize);
        let from = lower_bound_from(log, hint, tx_time);
        let found = (from..log.len())
            .take_while(|&i| log[i].time() == tx_time)
            .find(|&i| self.id(cols, i) == tx_id)
            .or_else(|| (0..log.len()).find(|&i| self.id(cols, i) == tx_id));
        let Some(i) = found else {
            // Not seen yet (a label before its transaction, or a late transaction still to
            // come): it waits, unless its transaction would be out of every window by now.
            if tx_time.saturating_add(lookback) >= now {
                self.waiting_labels
                    .get_or_insert_with(Default::default)
                    .insert(tx_id, fraud);
            }
            return;
        };
        let e = &mut self.log[i];
        let old = e.fraud();
        if old == fraud {
            return;
        }
        e.time_fraud = e.time() | ((fraud as u64) << 63);
        let seq = self.base + i as u64;
        for c in cursors.iter_mut() {
            if c.tail <= seq && seq < c.head {
                c.sums[2] += fraud as i128 - old as i128;
            }
        }
    }
}

/// The first index of `log` whose time is at least `t` (its length if none), by an exponential
/// search outward from `hint` and a binary search in the bracket found (Bentley and Yao, "An
/// almost optimal algorithm for unbounded searching", 1976): `O(log d)` probes for an answer `d`
/// entries from the hint, near entries the operator has prefetched.
fn lower_bound_from(log: &VecDeque<Entry>, hint: usize, t: u64) -> usize {
    let n = log.len();
    let h = hint.min(n);
    let (mut lo, mut hi);
    if h < n && log[h].time() < t {
        // The answer is after the hint.
        lo = h + 1;
        hi = n;
        let mut step = 1;
        while h + step < n {
            let probe = h + step;
            if log[probe].time() >= t {
                hi = probe;
                break;
            }
            lo = probe + 1;
            step *= 2;
        }
    } else {
        // The answer is at or before the hint.
        lo = 0;
        hi = h;
        let mut step = 1;
        while step <= h {
            let probe = h - step;
            if log[probe].time() < t {
                lo = probe + 1;
                break;
            }
            hi = probe;
            step *= 2;
        }
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if log[mid].time() < t {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// What one stage keeps on one worker: its entities' logs in an arena, their cursors in one
/// flat vector (`n_windows` per entity, in the stage's window order), and an index from entity
/// id to arena slot. Entities keep their slot (an entity whose log emptied costs its slot and
/// cursors, a few hundred bytes); the index is small enough to stay in cache, and the arena lets
/// the operator prefetch the next rows' state while it works on the current one.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StageState {
    index: IdMap<u64, u32>,
    entities: Vec<EntityWindows>,
    cursors: Vec<Cursor>,
    n_windows: usize,
}

impl StageState {
    /// An empty state for a stage of `n_windows` windows.
    pub fn new(n_windows: usize) -> Self {
        Self {
            n_windows,
            ..Self::default()
        }
    }

    /// Entities known.
    pub fn entities(&self) -> usize {
        self.entities.len()
    }

    /// Entries in all logs.
    pub fn entries(&self) -> usize {
        self.entities.iter().map(EntityWindows::len).sum()
    }

    /// One worker's share of the states `parts` (every worker's state of one stage, as a
    /// snapshot holds them): the entities for which `owned(id)` holds, each with its log and
    /// cursors.
    pub fn merge_owned<'a>(
        parts: impl IntoIterator<Item = &'a StageState>,
        owned: impl Fn(u64) -> bool,
        n_windows: usize,
    ) -> Self {
        let mut out = Self::new(n_windows);
        for part in parts {
            let n = part.n_windows;
            for (id, slot) in &part.index {
                if !owned(*id) {
                    continue;
                }
                let s = *slot as usize;
                out.index.insert(*id, out.entities.len() as u32);
                out.entities.push(part.entities[s].clone());
                out.cursors.extend_from_slice(&part.cursors[s * n..(s + 1) * n]);
            }
        }
        out
    }

    /// The slot of entity `id`, created if new.
    #[inline]
    fn slot(&mut self, id: u64) -> u32 {
        let next = self.entities.len() as u32;
        let slot = *self.index.entry(id).or_insert(next);
        if slot == next {
            self.entities.push(EntityWindows::default());
            self.cursors
                .extend(std::iter::repeat_n(Cursor::default(), self.n_windows));
        }
        slot
    }

    /// The log and the cursors of slot `slot`.
    #[inline]
    fn parts(&mut self, slot: u32) -> (&mut EntityWindows, &mut [Cursor]) {
        let n = self.n_windows;
        let c = slot as usize * n;
        (&mut self.entities[slot as usize], &mut self.cursors[c..c + n])
    }

    /// Hints the CPU to load slot `slot`'s log header and cursors (a row a few ahead).
    #[inline]
    fn prefetch_slot(&self, slot: u32) {
        let e = self.entities.as_ptr().wrapping_add(slot as usize);
        prefetch(e);
        prefetch((e as *const u8).wrapping_add(std::mem::size_of::<EntityWindows>() - 1));
        let c = self.cursors.as_ptr().wrapping_add(slot as usize * self.n_windows);
        for k in 0..self.n_windows {
            prefetch(c.wrapping_add(k));
        }
    }

    /// Hints the CPU to load the log entries slot `slot` will touch: its end (an insert) and
    /// each cursor's position (needs the header and the cursors, prefetched earlier).
    #[inline]
    fn prefetch_log(&self, slot: u32) {
        let Some(e) = self.entities.get(slot as usize) else {
            return;
        };
        let log = &e.log;
        if let Some(last) = log.back() {
            prefetch(last);
        }
        let c = slot as usize * self.n_windows;
        for cur in self.cursors.get(c..c + self.n_windows).unwrap_or_default() {
            for seq in [cur.head, cur.tail] {
                if let Some(x) = seq.checked_sub(e.base).and_then(|i| log.get(i as usize)) {
                    prefetch(x);
                }
            }
        }
    }
}

/// How many rows ahead the stage prefetches a row's log entries (and twice as far, its log
/// header and cursors): far enough to hide a memory load behind the work of the rows between.
const PREFETCH_DISTANCE: usize = 4;

/// A prefetch hint for the cache line holding `p` (no effect where the target has none; never
/// dereferences `p`).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and reads nothing into the program; any address is fine.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// An event on its way through the stages: its feature values (`row.values`, `[n_features]
/// f64`) fill as it goes, the per-event ones from the start, the windowed ones once their
/// stage has read them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StagedRow {
    /// The event.
    pub row: EventRow,
    /// Its processing time: event time, raised to the timely time it arrived at if late, ms.
    pub t: u64,
}

fn spread(id: u64) -> u64 {
    // The exchange takes the hash modulo the worker count: mix the id so consecutive ids spread.
    (id ^ (id >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

/// A windowed column a stage fills: its index in the row, its aggregation and its window.
#[derive(Debug, Clone, Copy)]
struct Out {
    column: usize,
    aggregation: Aggregation,
    win: usize,
}

/// The columns of `spec` whose accumulators are of stage `stage`, against its windows.
fn outputs_of(spec: &FeatureSpec, stage: usize, wins: &[Win]) -> Vec<Out> {
    let mut outs = Vec::new();
    for (column, c) in spec.columns().iter().enumerate() {
        let Column::Windowed {
            aggregation, numerator, ..
        } = c
        else {
            continue;
        };
        let a = spec.accumulators()[*numerator];
        if a.stage != stage {
            continue;
        }
        let win = wins
            .iter()
            .position(|w| w.window_ms == a.window_ms && w.delay_ms == a.delay_ms)
            .expect("every accumulator of the stage has its window");
        outs.push(Out {
            column,
            aggregation: *aggregation,
            win,
        });
    }
    outs
}

/// Writes the stage's columns of a row from its entity's cursors (and min/max queues): each
/// column's [`windowed_value`](crate::definition::windowed_value), computed in one dispatch on the aggregation (the same arithmetic,
/// so the same bits).
#[inline(always)]
fn write_values(outs: &[Out], w: &EntityWindows, cursors: &[Cursor], values: &mut [f64]) {
    for o in outs {
        let s = &cursors[o.win].sums;
        let n = s[0];
        let v = match o.aggregation {
            Aggregation::Count => to_f64(n),
            Aggregation::Sum => to_f64(s[1]) / 1e6,
            Aggregation::Mean if n == 0 => 0.0,
            Aggregation::Mean => to_f64(s[1]) / to_f64(n) / 1e6,
            Aggregation::Ratio if n == 0 => 0.0,
            Aggregation::Ratio => to_f64(s[2]) / to_f64(n),
            Aggregation::Min | Aggregation::Max if n == 0 => 0.0,
            Aggregation::Min => to_f64(w.extreme(o.win, 0)) / 1e6,
            Aggregation::Max => to_f64(w.extreme(o.win, 1)) / 1e6,
        };
        values[o.column] = v;
    }
}

/// `v as f64` (round to nearest), as [`windowed_value`](crate::definition::windowed_value) converts.
#[inline(always)]
fn to_f64(v: i128) -> f64 {
    crate::definition::i128_to_f64(v)
}

/// Snapshots of a dataflow's keyed window operators: where to write them, and what a restart
/// loaded (see [`crate::snapshot`]).
#[derive(Debug, Clone, Default)]
pub struct Snapshots {
    /// Write snapshots there, every interval.
    pub settings: Option<SnapshotSettings>,
    /// Start from this state: an entity's rows and labels before the cut of the file its state
    /// came from are passed through (rows) or dropped (labels) without changing it, as it holds
    /// them already.
    pub restore: Option<Arc<Restored>>,
}

/// What a snapshot of each stage of `spec` must say its definition is (stage name ->
/// definition), for [`crate::snapshot::SnapshotStore::load_latest`].
pub fn stage_definitions(spec: &FeatureSpec) -> BTreeMap<String, String> {
    stage_accs(spec)
        .into_iter()
        .map(|(stage, accs)| (spec.stages()[stage].name.clone(), definition_of(&accs)))
        .collect()
}

fn definition_of(accs: &[Acc]) -> String {
    let wins: Vec<(u64, u64)> = windows_of(accs).iter().map(|w| (w.window_ms, w.delay_ms)).collect();
    let kinds: Vec<String> = accs.iter().map(|a| format!("{:?}", a.kind)).collect();
    format!("v2 windows {wins:?} kinds {kinds:?}")
}

/// The stages of `spec` (by index) with their accumulators, in order.
fn stage_accs(spec: &FeatureSpec) -> Vec<(usize, Vec<Acc>)> {
    let mut out = Vec::new();
    for stage in 0..spec.stages().len() {
        let accs: Vec<Acc> = spec
            .accumulators()
            .iter()
            .enumerate()
            .filter(|(_, a)| a.stage == stage)
            .map(|(slot, a)| Acc {
                slot,
                kind: a.kind,
                window_ms: a.window_ms,
                delay_ms: a.delay_ms,
            })
            .collect();
        if !accs.is_empty() {
            out.push((stage, accs));
        }
    }
    out
}

/// When a stage writes its next snapshot.
struct SnapshotClock {
    settings: SnapshotSettings,
    header: SnapshotHeader,
    last_cut: u64,
    last_write: Option<std::time::Instant>,
}

impl SnapshotClock {
    /// The cut to write now, if one is due: the latest multiple of the interval at or before
    /// `upto`, at or after `applied_below` (one past the latest time applied), after the last cut
    /// written, and at least an interval of wall-clock time after the last write.
    fn due(&self, upto: u64, applied_below: u64) -> Option<u64> {
        let i = self.settings.interval_ms.max(1);
        let cut = upto / i * i;
        let wall = self
            .last_write
            .is_none_or(|w| w.elapsed().as_millis() as u64 >= self.settings.min_wall_ms);
        (cut > self.last_cut && cut >= applied_below && cut > 0 && wall).then_some(cut)
    }

    fn write(&mut self, cut: u64, state: &StageState) {
        self.header.cut_ms = cut;
        let result = self.settings.store.write(&self.header, state);
        self.settings.record(&result, cut);
        if result.is_ok() {
            let h = &self.header;
            let s = &self.settings;
            s.store.prune(&h.stage, h.worker, h.workers, s.keep, s.retain_ms);
        }
        self.last_cut = cut;
        self.last_write = Some(std::time::Instant::now());
    }
}

/// One stage: the windows of stage `entity` (index into [`FeatureSpec::stages`]) for the
/// accumulators `accs`, filling their columns.
fn stage<'s>(
    rows: StreamVec<'s, u64, StagedRow>,
    labels: Option<StreamVec<'s, u64, LabelRow>>,
    entity: usize,
    accs: Vec<Acc>,
    spec: &FeatureSpec,
    snapshots: &Snapshots,
    stages: usize,
) -> StreamVec<'s, u64, StagedRow> {
    let stage_name = spec.stages()[entity].name.clone();
    let name = format!("KeyedWindows({stage_name})");
    let definition = definition_of(&accs);
    let (index, peers) = (rows.scope().index(), rows.scope().peers());
    let restore = snapshots.restore.clone();
    let mut clock = snapshots.settings.clone().map(|settings| SnapshotClock {
        settings,
        header: SnapshotHeader {
            stage: stage_name.clone(),
            worker: index as u32,
            workers: peers as u32,
            stages: stages as u32,
            cut_ms: 0,
            definition: definition.clone(),
        },
        last_cut: 0,
        last_write: None,
    });
    let lookback = accs.iter().map(|a| a.window_ms + a.delay_ms).max().unwrap_or(0);
    let cols = Columns {
        amounts: accs
            .iter()
            .any(|a| matches!(a.kind, AccKind::Sum | AccKind::Min | AccKind::Max)),
        labels: accs.iter().any(|a| a.kind == AccKind::Labels),
        extrema: accs.iter().any(|a| matches!(a.kind, AccKind::Min | AccKind::Max)),
    };
    let wins = windows_of(&accs);
    let outs = outputs_of(spec, entity, &wins);
    // The join key is only kept where labels look entries up by it (a string id's is a hash).
    let id_of = move |row: &EventRow| if cols.labels { row.join() } else { 0 };
    let route_rows = Exchange::new(move |r: &StagedRow| spread(r.row.key(entity)));
    let route_labels = Exchange::new(move |l: &LabelRow| spread(l.keys[entity]));
    // A stage without labels reads an empty label stream (its frontier is then the rows'): not
    // one derived from the rows, which would clone every row batch for nothing.
    let labels = match labels {
        Some(l) => l,
        None => timely::dataflow::operators::generic::operator::empty(rows.scope()),
    };
    rows.binary_frontier::<_, CapacityContainerBuilder<Vec<StagedRow>>, _, _, _, _>(
        labels,
        route_rows,
        route_labels,
        &name,
        move |_cap, _info| {
            // A restart starts from its snapshot's state: this worker's share of it. Each
            // entity's state holds its events before the cut of the file it came from (the
            // worker that owned it then: `spread(id) % workers`).
            let (mut state, cuts, max_cut) = match restore.as_ref().and_then(|r| r.stages.get(&stage_name)) {
                Some(rs) => {
                    let owned = |id: u64| spread(id) % peers as u64 == index as u64;
                    let state = StageState::merge_owned(rs.parts.iter().map(|p| &p.state), owned, wins.len());
                    let cuts: Vec<u64> = rs.parts.iter().map(|p| p.cut_ms).collect();
                    // The same worker count: this worker's entities are all its old ones.
                    let max_cut = if rs.workers as usize == peers {
                        cuts[index]
                    } else {
                        cuts.iter().copied().max().unwrap_or(0)
                    };
                    tracing::info!(stage = %stage_name, worker = index, cut_ms = max_cut, entities = state.entities(), entries = state.entries(), "feature state restored from a snapshot");
                    (state, cuts, max_cut)
                }
                None => (StageState::new(wins.len()), Vec::new(), 0),
            };
            // The cut of entity `id`'s restored state (0: none).
            let cut_of = move |id: u64| match cuts.len() {
                0 => 0,
                n => cuts[(spread(id) % n as u64) as usize],
            };
            if let Some(c) = clock.as_mut() {
                c.last_cut = max_cut;
            }
            // One past the latest time applied to the state.
            let mut applied_below = max_cut;
            let (mut row_slots, mut label_slots): (Vec<u32>, Vec<u32>) = (Vec::new(), Vec::new());
            // Rows and labels waiting for the frontier, with their processing time, and
            // whether each buffer is still in time order.
            let mut rows_pending: Vec<StagedRow> = Vec::new();
            let mut labels_pending: Vec<(u64, LabelRow)> = Vec::new();
            // The least time any pending row may be emitted at.
            let mut held: Option<Capability<u64>> = None;
            let mut last_frontier = 0u64;
            move |(rows_in, rows_frontier), (labels_in, labels_frontier), output| {
                rows_in.for_each(|cap, data| {
                    let c = *cap.least().expect("a message has a time");
                    if held.as_ref().is_none_or(|h| c < *h.time()) {
                        held = cap.retain_least(0);
                    }
                    rows_pending.extend(data.drain(..).map(|mut r| {
                        r.t = r.t.max(c);
                        r
                    }));
                });
                labels_in.for_each(|cap, data| {
                    let c = *cap.least().expect("a message has a time");
                    labels_pending.extend(data.drain(..).map(|l| ((l.available_at_ms.max(0) as u64).max(c), l)));
                });
                // Everything before the frontier of both inputs is complete.
                let mut frontier = u64::MAX;
                for f in [rows_frontier.frontier(), labels_frontier.frontier()] {
                    if let Some(t) = f.iter().min() {
                        frontier = frontier.min(*t);
                    }
                }
                // What arrives is never ready at once (its time is at or after the frontier):
                // work only when the frontier moved.
                if frontier == last_frontier {
                    return;
                }
                last_frontier = frontier;
                // Event-time order (stable: arrival order within a millisecond); at one
                // millisecond labels first, then inserts, then reads. What is not ready stays.
                if !rows_pending.is_sorted_by_key(|r| r.t) {
                    rows_pending.sort_by_key(|r| r.t);
                }
                if !labels_pending.is_sorted_by_key(|(t, _)| *t) {
                    labels_pending.sort_by_key(|(t, _)| *t);
                }
                let n_rows = rows_pending.partition_point(|r| r.t < frontier);
                let n_labels = labels_pending.partition_point(|(t, _)| *t < frontier);
                let (rows_now, labels_now) = (&mut rows_pending[..n_rows], &labels_pending[..n_labels]);
                // Each row's and label's slot first (the index stays in cache), so that the loop
                // below can prefetch the state of the rows a few ahead.
                row_slots.clear();
                row_slots.extend(rows_now.iter().map(|r| state.slot(r.row.key(entity))));
                label_slots.clear();
                label_slots.extend(labels_now.iter().map(|(_, l)| state.slot(l.keys[entity])));
                let ahead = |state: &StageState, slots: &[u32], i: usize| {
                    if let Some(s) = slots.get(i + 2 * PREFETCH_DISTANCE) {
                        state.prefetch_slot(*s);
                    }
                    if let Some(s) = slots.get(i + PREFETCH_DISTANCE) {
                        state.prefetch_log(*s);
                    }
                };
                let (mut li, mut i) = (0, 0);
                while i < rows_now.len() || li < labels_now.len() {
                    let t = match (rows_now.get(i), labels_now.get(li)) {
                        (Some(r), Some((lt, _))) => r.t.min(*lt),
                        (Some(r), None) => r.t,
                        (None, Some((lt, _))) => *lt,
                        (None, None) => unreachable!("the loop condition"),
                    };
                    if t < max_cut {
                        // Before some restored entity's cut: what an entity's state holds
                        // already passes (rows: their scores were delivered before the restart,
                        // the score gate acknowledges them) or is dropped (labels).
                        while li < labels_now.len() && labels_now[li].0 == t {
                            let l = &labels_now[li].1;
                            if t >= cut_of(l.keys[entity]) {
                                let (w, c) = state.parts(label_slots[li]);
                                w.label(c, cols, l.join, l.event_time_ms.max(0) as u64, l.label.min(1), t, lookback);
                            }
                            li += 1;
                        }
                        let first = i;
                        while i < rows_now.len() && rows_now[i].t == t {
                            i += 1;
                        }
                        let fresh = |r: &StagedRow| t >= cut_of(r.row.key(entity));
                        for j in first..i {
                            let r = &rows_now[j];
                            if fresh(r) {
                                let (w, _) = state.parts(row_slots[j]);
                                w.insert(cols, t, r.row.measure(entity), id_of(&r.row));
                            }
                        }
                        for j in first..i {
                            if fresh(&rows_now[j]) {
                                let (w, c) = state.parts(row_slots[j]);
                                w.advance(c, &wins, cols, t);
                                write_values(&outs, w, c, &mut rows_now[j].row.values);
                            }
                        }
                        continue;
                    }
                    if let Some(c) = clock.as_ref().and_then(|c| c.due(t, applied_below)) {
                        clock.as_mut().expect("due").write(c, &state);
                    }
                    applied_below = t + 1;
                    while li < labels_now.len() && labels_now[li].0 == t {
                        ahead(&state, &label_slots, li);
                        let l = &labels_now[li].1;
                        let (w, c) = state.parts(label_slots[li]);
                        w.label(c, cols, l.join, l.event_time_ms.max(0) as u64, l.label.min(1), t, lookback);
                        li += 1;
                    }
                    let first = i;
                    while i < rows_now.len() && rows_now[i].t == t {
                        i += 1;
                    }
                    if i == first + 1 {
                        // The common case, one row at this millisecond.
                        ahead(&state, &row_slots, first);
                        let r = &mut rows_now[first];
                        let (w, c) = state.parts(row_slots[first]);
                        w.insert(cols, t, r.row.measure(entity), id_of(&r.row));
                        w.advance(c, &wins, cols, t);
                        write_values(&outs, w, c, &mut r.row.values);
                    } else if i > first {
                        for j in first..i {
                            let r = &rows_now[j];
                            let (w, _) = state.parts(row_slots[j]);
                            // Logged at its processing time: a late row counts where processed.
                            w.insert(cols, t, r.row.measure(entity), id_of(&r.row));
                        }
                        for j in first..i {
                            ahead(&state, &row_slots, j);
                            let (w, c) = state.parts(row_slots[j]);
                            w.advance(c, &wins, cols, t);
                            write_values(&outs, w, c, &mut rows_now[j].row.values);
                        }
                    }
                }
                labels_pending.drain(..n_labels);
                // Everything before the frontier is applied: a cut up to it may be written (not
                // once the inputs are gone: a bounded run's end is no time of the topic's).
                if let Some(c) = clock.as_ref().filter(|_| frontier != u64::MAX).and_then(|c| c.due(frontier, applied_below)) {
                    clock.as_mut().expect("due").write(c, &state);
                }
                // Emitted at the least time held (coarse: one time per round, not one per
                // millisecond, so progress tracking stays per epoch). A row not yet emitted will
                // be emitted at or after the time held for it, which is at or before its
                // processing time: downstream, everything whose processing time is before the
                // frontier has arrived.
                if n_rows > 0 {
                    let cap = held.as_ref().expect("pending rows hold a capability");
                    output.session(cap).give_iterator(rows_pending.drain(..n_rows));
                }
                // Hold only what the rows still pending need (sorted: the first is the least).
                match rows_pending.first().map(|r| r.t) {
                    Some(t) => {
                        if let Some(h) = held.as_mut() {
                            if t > *h.time() {
                                h.downgrade(&t);
                            }
                        }
                    }
                    None => held = None,
                }
            }
        },
    )
}

/// Computes the feature vectors of `txs` ([`FeatureSpec::event_row`]) under `spec` with the
/// keyed window operator, with `labels` if the spec needs them. Each event is emitted at its
/// processing time (event time, raised to its message's timely time if late) once the frontier
/// has passed it.
///
/// # Panics
/// If the spec needs labels and `labels` is `None`: a topology validates this at start-up.
pub fn keyed_features<'s>(
    txs: StreamVec<'s, u64, EventRow>,
    labels: Option<StreamVec<'s, u64, LabelRow>>,
    spec: FeatureSpec,
    snapshots: &Snapshots,
) -> StreamVec<'s, u64, FeatureValues> {
    assert!(
        !spec.needs_labels() || labels.is_some(),
        "feature spec needs a labels stream"
    );
    let mut rows = txs.map(move |row| StagedRow {
        t: row.meta.event_time_ms.max(0) as u64,
        row,
    });
    let stages = stage_accs(&spec);
    let n_stages = stages.len();
    for (entity, accs) in stages {
        let needs_labels = accs.iter().any(|a| a.kind == AccKind::Labels);
        let l = if needs_labels { labels.clone() } else { None };
        rows = stage(rows, l, entity, accs, &spec, snapshots, n_stages);
    }
    rows.map(|r| FeatureValues {
        values: r.row.values,
        inputs: r.row.inputs,
        meta: r.row.meta,
        time: r.t,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accs() -> Vec<Acc> {
        vec![
            Acc {
                slot: 0,
                kind: AccKind::Count,
                window_ms: 10,
                delay_ms: 5,
            },
            Acc {
                slot: 1,
                kind: AccKind::Labels,
                window_ms: 10,
                delay_ms: 5,
            },
        ]
    }

    fn windows() -> EntityWindows {
        EntityWindows::default()
    }

    const COLS: Columns = Columns {
        amounts: false,
        labels: true,
        extrema: false,
    };

    #[test]
    fn labels_are_upserts_re_sent_count_once_and_a_reversal_undoes() {
        let (a, mut w, mut out, mut c) = (windows_of(&accs()), windows(), vec![0i128; 2], [Cursor::default()]);
        w.insert(COLS, 100, 0, 1);
        w.insert(COLS, 101, 0, 2);
        w.read(&mut c, &a, COLS, 106, &mut out);
        assert_eq!(out, vec![2, 0], "both in (91, 101]");
        w.label(&mut c, COLS, 1, 100, 1, 107, 15);
        w.label(&mut c, COLS, 1, 100, 1, 107, 15);
        w.read(&mut c, &a, COLS, 107, &mut out);
        assert_eq!(out, vec![2, 1], "a label sent twice counts once");
        w.label(&mut c, COLS, 1, 100, 0, 108, 15);
        w.read(&mut c, &a, COLS, 108, &mut out);
        assert_eq!(out, vec![2, 0], "a chargeback reversed undoes the count");
        w.label(&mut c, COLS, 2, 101, 1, 109, 15);
        w.read(&mut c, &a, COLS, 115, &mut out);
        assert_eq!(out, vec![1, 1], "tx 1 left (100 <= 115 - 15), tx 2 is still in");
        w.read(&mut c, &a, COLS, 117, &mut out);
        assert_eq!(out, vec![0, 0]);
        assert!(w.is_empty(), "entries every window left are dropped");
    }

    #[test]
    fn the_search_from_a_hint_finds_the_first_entry_at_or_after_a_time() {
        let times = [1u64, 3, 3, 3, 7, 9, 9, 12, 20, 21, 21, 40];
        let log: VecDeque<Entry> = times
            .iter()
            .map(|&t| Entry {
                time_fraud: t,
                value: 0,
            })
            .collect();
        for t in 0..45 {
            let want = times.partition_point(|x| *x < t);
            for hint in 0..=times.len() + 2 {
                assert_eq!(lower_bound_from(&log, hint, t), want, "t {t} hint {hint}");
            }
        }
        assert_eq!(lower_bound_from(&VecDeque::new(), 3, 5), 0);
    }

    #[test]
    fn the_rows_every_stage_moves_stay_compact() {
        // Every stage moves each row through an exchange and its buffers: a row that grows past
        // a few cache lines costs throughput (bench-features fell from 2.3M to 1.7M events/s
        // per worker when generic rows were 152 bytes).
        assert!(
            std::mem::size_of::<StagedRow>() <= 120,
            "{}",
            std::mem::size_of::<StagedRow>()
        );
        assert!(std::mem::size_of::<LabelRow>() <= 56);
        assert!(std::mem::size_of::<EntityWindows>() <= 88);
        assert_eq!(std::mem::size_of::<weir_core::EventId>(), 16);
    }

    #[test]
    fn a_label_before_its_transaction_waits_for_it() {
        let (a, mut w, mut out, mut c) = (windows_of(&accs()), windows(), vec![0i128; 2], [Cursor::default()]);
        w.label(&mut c, COLS, 9, 200, 1, 150, 15);
        w.insert(COLS, 200, 0, 9);
        w.read(&mut c, &a, COLS, 205, &mut out);
        assert_eq!(out, vec![1, 1]);
    }
}
