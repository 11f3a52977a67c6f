//! Windowed per-entity features, maintained incrementally with differential dataflow.
//!
//! For every accumulator (entity, what is summed, window `w`, delay `d`; see
//! [`crate::definition`]) a transaction at event time `t` contributes `+v` at `t + d` and `-v`
//! at `t + d + w` to the key `(entity, id, slot)`; a fraud label contributes `+1` at
//! `max(t_tx + d, arrival)` and `-1` at `t_tx + d + w`. `count()` turns these into each key's
//! total *as of every time*, arranged by key and exchanged by entity, so any number of workers
//! computes the same totals. All values are integers (amounts in micro-units): totals are exact
//! and independent of the order updates arrive in.
//!
//! Each transaction is also a query: `(entity, id) -> query` present only at its time `t`
//! (`+1` at `t`, `-1` at `t + 1`). Joined with the totals, it yields the totals as of `t`. An
//! assembler, exchanged by transaction, collects them and emits the transaction's feature vector
//! once the frontier has passed `t`: only then is every event with time `<= t` (from every
//! partition and from the labels source) accounted for, so a live run and a replay compute the
//! same values. The cost is latency: the watermark's lag behind the transaction (see the Kafka
//! source's watermark and idle timeout).
//!
//! Memory: the arrangements hold, per key, the pending future updates (each contribution until
//! its retraction time passes) and the current total; as the frontier advances, differential
//! compacts each key's history to its current total. So state is bounded by (entities ×
//! accumulators) plus the contributions still inside their windows.
//!
//! Records whose event time is behind the stream's current watermark (late beyond the allowed
//! lateness) are processed at the watermark instead.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use differential_dataflow::collection::AsCollection;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Capability;
use timely::dataflow::{Stream, StreamVec};
use weir_core::{Label, RowMeta, Transaction};

use crate::definition::{amount_micros, AccKind, Entity, FeatureSpec};

/// A transaction's feature vector, `[n_features] f64` in the spec's column order.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FeatureValues {
    /// Identity and lineage of the transaction.
    pub meta: RowMeta,
    /// Feature values in column order.
    pub values: Vec<f64>,
}

fn entity_code(e: Entity) -> u8 {
    match e {
        Entity::Customer => 0,
        Entity::Terminal => 1,
    }
}

fn entity_id(e: Entity, customer_id: u64, terminal_id: u64) -> u64 {
    match e {
        Entity::Customer => customer_id,
        Entity::Terminal => terminal_id,
    }
}

fn hash64<H: Hash>(h: &H) -> u64 {
    let mut s = std::collections::hash_map::DefaultHasher::new();
    h.hash(&mut s);
    s.finish()
}

/// Entity key `(entity code, id)`.
type Key = (u8, u64);
/// A query: `(tx_id, partition, offset, time)`; unique per event read.
type Query = (u64, i32, i64, u64);
/// A join result as a differential update: `((query, slot, total), time, diff)`.
type Answer = ((Query, u16, i128), u64, isize);

/// Stamps each record with its event time in ms, raised to the stream's current capability time
/// if it is behind (late).
fn with_event_time<'s, D: Clone + 'static>(
    stream: StreamVec<'s, u64, D>,
    time_of: impl Fn(&D) -> i64 + 'static,
) -> StreamVec<'s, u64, (D, u64)> {
    stream.unary(Pipeline, "EventTime", move |_, _| {
        move |input, output| {
            input.for_each(|cap, data| {
                let c = *cap.least().expect("a message has a time");
                let mut session = output.session(&cap);
                for d in data.drain(..) {
                    let t = (time_of(&d).max(0) as u64).max(c);
                    session.give((d, t));
                }
            });
        }
    })
}

/// Computes the feature vectors of `txs` under `spec`, with fraud `labels` if the spec needs
/// them. Streams are timestamped with event time (ms); the output carries each transaction at
/// its event time, emitted once the frontier passes it (immediately if the spec has no windowed
/// feature).
///
/// # Panics
/// If the spec needs labels and `labels` is `None`: a topology validates this at start-up.
pub fn windowed_features<'s>(
    txs: StreamVec<'s, u64, (RowMeta, Transaction)>,
    labels: Option<StreamVec<'s, u64, Label>>,
    spec: FeatureSpec,
) -> StreamVec<'s, u64, FeatureValues> {
    if !spec.is_windowed() {
        return txs.map(move |(meta, tx)| FeatureValues {
            values: spec.values(tx.tx_time_ms, tx.amount, &[]),
            meta,
        });
    }
    assert!(
        !spec.needs_labels() || labels.is_some(),
        "feature spec needs a labels stream"
    );
    let accs = spec.accumulators().to_vec();
    let entities: Vec<Entity> = {
        let mut e: Vec<Entity> = accs.iter().map(|a| a.entity).collect();
        e.sort();
        e.dedup();
        e
    };
    let timed = with_event_time(txs, |(meta, _): &(RowMeta, Transaction)| meta.event_time_ms);

    // Contributions of transactions: ((entity key, slot), time, value).
    let tx_accs = accs.clone();
    let tx_contrib = timed.clone().flat_map(move |((_, tx), t)| {
        let mut out = Vec::with_capacity(2 * tx_accs.len());
        for (slot, a) in tx_accs.iter().enumerate() {
            let v: i128 = match a.kind {
                AccKind::TxCount => 1,
                AccKind::AmountMicros => amount_micros(tx.amount) as i128,
                AccKind::FraudCount => continue,
            };
            if v == 0 {
                continue;
            }
            let key = (
                entity_code(a.entity),
                entity_id(a.entity, tx.customer_id, tx.terminal_id),
            );
            out.push(((key, slot as u16), t + a.delay_ms, v));
            out.push(((key, slot as u16), t + a.delay_ms + a.window_ms, -v));
        }
        out
    });
    // i128 sums: no accepted amount (decode.max_amount) and no window length can overflow them.
    let mut contrib: differential_dataflow::collection::vec::Collection<'s, u64, (Key, u16), i128> =
        tx_contrib.as_collection();

    // Contributions of labels.
    if let Some(labels) = labels {
        let label_accs = accs.clone();
        let timed_labels = with_event_time(labels, |l: &Label| l.available_at_ms);
        let label_contrib = timed_labels.flat_map(move |(l, arrived)| {
            let mut out = Vec::new();
            if l.tx_fraud != 1 {
                return out;
            }
            let t_tx = l.tx_time_ms.max(0) as u64;
            for (slot, a) in label_accs.iter().enumerate() {
                if a.kind != AccKind::FraudCount {
                    continue;
                }
                let start = (t_tx + a.delay_ms).max(arrived);
                let end = t_tx + a.delay_ms + a.window_ms;
                if start < end {
                    let key = (entity_code(a.entity), entity_id(a.entity, l.customer_id, l.terminal_id));
                    out.push(((key, slot as u16), start, 1i128));
                    out.push(((key, slot as u16), end, -1i128));
                }
            }
            out
        });
        contrib = contrib.concat(label_contrib.as_collection());
    }

    // Totals per (key, slot) as of every time, keyed by entity for the join.
    let totals = contrib.count().map(|((key, slot), total)| (key, (slot, total)));

    // Queries: each transaction, present at its time only.
    let q_entities = entities.clone();
    let queries = timed
        .clone()
        .flat_map(move |((meta, tx), t)| {
            let q: Query = (meta.tx_id, meta.lineage.partition, meta.lineage.offset, t);
            let mut out = Vec::with_capacity(2 * q_entities.len());
            for e in &q_entities {
                let key = (entity_code(*e), entity_id(*e, tx.customer_id, tx.terminal_id));
                out.push(((key, q), t, 1isize));
                out.push(((key, q), t + 1, -1isize));
            }
            out
        })
        .as_collection();
    let answers = queries.join_map(totals, |_key, q: &Query, &(slot, total)| (*q, slot, total));

    assemble(timed, answers.inner, spec)
}

struct Pending {
    base: Option<(RowMeta, Transaction)>,
    /// (slot, total) -> accumulated diff, at the query's time.
    parts: HashMap<(u16, i128), isize>,
}

/// Collects each transaction's totals as of its time and emits its feature vector once both
/// inputs' frontiers have passed that time.
fn assemble<'s>(
    base: StreamVec<'s, u64, ((RowMeta, Transaction), u64)>,
    answers: Stream<'s, u64, Vec<Answer>>,
    spec: FeatureSpec,
) -> StreamVec<'s, u64, FeatureValues> {
    let route_base = Exchange::new(|((meta, _), _): &((RowMeta, Transaction), u64)| hash64(&meta.tx_id));
    let route_answers = Exchange::new(|((q, _, _), _, _): &Answer| hash64(&q.0));
    let n_slots = spec.accumulators().len();
    base.binary_frontier::<_, CapacityContainerBuilder<Vec<FeatureValues>>, _, _, _, _>(
        answers,
        route_base,
        route_answers,
        "AssembleFeatures",
        move |_cap, _info| {
            let mut pending: HashMap<Query, Pending> = HashMap::new();
            let mut by_time: BTreeMap<u64, (Capability<u64>, Vec<Query>)> = BTreeMap::new();
            let mut last_log = std::time::Instant::now();
            move |(base_in, base_frontier), (answers_in, answers_frontier), output| {
                base_in.for_each(|cap, data| {
                    for ((meta, tx), t) in data.drain(..) {
                        let q: Query = (meta.tx_id, meta.lineage.partition, meta.lineage.offset, t);
                        let entry = by_time.entry(t).or_insert_with(|| (cap.delayed(&t, 0), Vec::new()));
                        entry.1.push(q);
                        pending
                            .entry(q)
                            .or_insert_with(|| Pending {
                                base: None,
                                parts: HashMap::new(),
                            })
                            .base = Some((meta, tx));
                    }
                });
                answers_in.for_each(|_cap, data| {
                    for ((q, slot, total), time, diff) in data.drain(..) {
                        // Only the totals as of the query's own time; later updates are the
                        // query's retraction.
                        if time == q.3 {
                            let p = pending.entry(q).or_insert_with(|| Pending {
                                base: None,
                                parts: HashMap::new(),
                            });
                            *p.parts.entry((slot, total)).or_insert(0) += diff;
                        }
                    }
                });
                if let Some((&t, (_, qs))) = by_time.first_key_value() {
                    if last_log.elapsed() >= std::time::Duration::from_secs(1) {
                        last_log = std::time::Instant::now();
                        tracing::debug!(
                            oldest = t,
                            waiting = qs.len(),
                            times = by_time.len(),
                            base_frontier = ?base_frontier.frontier().to_vec(),
                            answers_frontier = ?answers_frontier.frontier().to_vec(),
                            "feature rows waiting for the frontier"
                        );
                    }
                }
                // Emit every time both frontiers have passed.
                while let Some((&t, _)) = by_time.first_key_value() {
                    if base_frontier.less_equal(&t) || answers_frontier.less_equal(&t) {
                        break;
                    }
                    let (cap, queries) = by_time.remove(&t).expect("first key");
                    let mut session = output.session(&cap);
                    for q in queries {
                        let Some(p) = pending.remove(&q) else { continue };
                        let Some((meta, tx)) = p.base else { continue };
                        let mut acc = vec![0i128; n_slots];
                        for ((slot, total), diff) in p.parts {
                            if diff > 0 {
                                acc[slot as usize] = total;
                            }
                        }
                        session.give(FeatureValues {
                            values: spec.values(tx.tx_time_ms, tx.amount, &acc),
                            meta,
                        });
                    }
                }
            }
        },
    )
}
