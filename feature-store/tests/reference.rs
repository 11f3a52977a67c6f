//! The feature store against an independent reference: a plain loop over the transactions,
//! straight from the definitions (handbook ch. 3; windows `(t - d - w, t - d]`; labels count once
//! arrived). Run with 1 and 4 timely workers, and with arrival order shuffled within the
//! lateness bound: identical features every time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use timely::dataflow::operators::vec::Input;
use timely::dataflow::operators::{Inspect, Probe};
mod common;

use common::{event_row, label_row};
use weir_feature_store::definition::handbook_features;
use weir_feature_store::definition::{handbook_spec, EventRow, FeatureKind, LabelRow};
use weir_feature_store::{windowed_features, FeatureValues};
use weir_simulator::{FraudLabel as Label, Transaction};
use weir_simulator::{SimConfig, Simulator, DAY_MS};

const LATENESS_MS: i64 = 3_600_000; // shuffle bound: 1 hour

struct Data {
    txs: Vec<Transaction>,
    labels: Vec<Label>,
}

fn dataset() -> Data {
    let sim = Simulator::new(SimConfig {
        n_customers: 600,
        n_terminals: 1200,
        n_days: 61,
        seed: 3,
        ..SimConfig::default()
    });
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let mut txs = Vec::new();
    let mut labels = Vec::new();
    for lt in sim.flatten() {
        // Chargebacks arrive 7 days after the transaction, some up to 3 days later still: those
        // must not count before they arrive.
        let extra = if rng.random_bool(0.5) {
            rng.random_range(0..3 * DAY_MS)
        } else {
            0
        };
        labels.push(Label {
            available_at_ms: lt.label.available_at_ms + extra,
            ..lt.label
        });
        txs.push(lt.tx);
    }
    Data { txs, labels }
}

fn names() -> Vec<String> {
    let mut n = vec![
        "amount".to_string(),
        "tx_during_weekend".into(),
        "tx_during_night".into(),
    ];
    n.extend(
        handbook_features()
            .into_iter()
            .filter(|f| f.kind == FeatureKind::Window)
            .map(|f| f.name),
    );
    n
}

/// The reference: for each transaction, scan the entity's transactions.
fn reference(data: &Data) -> HashMap<u64, Vec<f64>> {
    let mut by_customer: HashMap<u64, Vec<&Transaction>> = HashMap::new();
    let mut by_terminal: HashMap<u64, Vec<(&Transaction, Option<&Label>)>> = HashMap::new();
    let label_of: HashMap<u64, &Label> = data.labels.iter().map(|l| (l.tx_id, l)).collect();
    for tx in &data.txs {
        by_customer.entry(tx.customer_id).or_default().push(tx);
        by_terminal
            .entry(tx.terminal_id)
            .or_default()
            .push((tx, label_of.get(&tx.tx_id).copied()));
    }
    let day = DAY_MS;
    let mut out = HashMap::new();
    for tx in &data.txs {
        let t = tx.tx_time_ms;
        let hour = t.rem_euclid(day) as f64 / 3_600_000.0;
        let weekday = (t.div_euclid(day) + 3).rem_euclid(7);
        let mut v = vec![
            tx.amount,
            (weekday >= 5) as u8 as f64,
            (hour.floor() <= 6.0) as u8 as f64,
        ];
        for w in [1, 7, 30] {
            let in_window: Vec<&&Transaction> = by_customer[&tx.customer_id]
                .iter()
                .filter(|o| o.tx_time_ms > t - w * day && o.tx_time_ms <= t)
                .collect();
            let n = in_window.len() as f64;
            let sum: f64 = in_window.iter().map(|o| o.amount).sum();
            v.push(n);
            v.push(if n == 0.0 { 0.0 } else { sum / n });
        }
        for w in [1, 7, 30] {
            let d = 7 * day;
            let in_window: Vec<_> = by_terminal[&tx.terminal_id]
                .iter()
                .filter(|(o, _)| o.tx_time_ms > t - d - w * day && o.tx_time_ms <= t - d)
                .collect();
            let n = in_window.len() as f64;
            let frauds = in_window
                .iter()
                .filter(|(_, l)| l.is_some_and(|l| l.tx_fraud == 1 && l.available_at_ms <= t))
                .count() as f64;
            v.push(n);
            v.push(if n == 0.0 { 0.0 } else { frauds / n });
        }
        out.insert(tx.tx_id, v);
    }
    out
}

enum Arrival {
    Tx(Transaction),
    Label(Label),
}

/// Runs the feature store with `workers` workers; transactions arrive in time order, or
/// shuffled within `LATENESS_MS` if `shuffle`.
fn weir(data: &Data, workers: usize, shuffle: bool) -> HashMap<u64, Vec<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut arrivals: Vec<(i64, Arrival)> = data
        .txs
        .iter()
        .map(|t| {
            let noise = if shuffle { rng.random_range(0..LATENESS_MS) } else { 0 };
            (t.tx_time_ms + noise, Arrival::Tx(t.clone()))
        })
        .chain(data.labels.iter().map(|l| (l.available_at_ms, Arrival::Label(*l))))
        .collect();
    arrivals.sort_by_key(|(k, _)| *k);
    let arrivals = Arc::new(arrivals);
    let spec = handbook_spec(&names()).unwrap();
    let results: Arc<Mutex<Vec<FeatureValues>>> = Arc::default();
    let r2 = results.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let results = r2.clone();
        let spec = spec.clone();
        let spec2 = spec.clone();
        let (mut tx_in, mut label_in, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (tx_in, txs) = scope.new_input::<EventRow>();
            let (label_in, labels) = scope.new_input::<LabelRow>();
            let (probe, _) = windowed_features(txs, Some(labels), spec)
                .inspect(move |fv| results.lock().unwrap().push(fv.clone()))
                .probe();
            (tx_in, label_in, probe)
        });
        for (i, (key, a)) in arrivals.iter().enumerate() {
            // The watermark: every later arrival has an event time >= key - LATENESS.
            let wm = (key - LATENESS_MS).max(0) as u64;
            if wm > *tx_in.time() {
                tx_in.advance_to(wm);
                label_in.advance_to(wm);
            }
            if i % peers == index {
                match a {
                    Arrival::Tx(tx) => tx_in.send(event_row(&spec2, tx)),
                    Arrival::Label(l) => label_in.send(label_row(&spec2, l)),
                }
            }
            if i % 2000 == 0 {
                worker.step();
            }
        }
        drop(tx_in);
        drop(label_in);
        while !probe.done() {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
    })
    .unwrap();
    let out = std::mem::take(&mut *results.lock().unwrap());
    let n = out.len();
    let map: HashMap<u64, Vec<f64>> = out
        .into_iter()
        .map(|fv| (fv.meta.id.as_int().unwrap() as u64, fv.values))
        .collect();
    assert_eq!(map.len(), n, "one feature vector per transaction");
    map
}

#[test]
fn features_equal_the_reference_for_any_worker_count_and_arrival_order() {
    let data = dataset();
    assert!(data.txs.len() >= 50_000, "{} transactions", data.txs.len());
    let span = data.txs.last().unwrap().tx_time_ms - data.txs[0].tx_time_ms;
    assert!(span >= 60 * DAY_MS - DAY_MS, "{} days", span / DAY_MS);
    let expected = reference(&data);
    let names = names();

    let one = weir(&data, 1, false);
    assert_eq!(one.len(), data.txs.len());
    let mut nonzero_risk = 0;
    for tx in &data.txs {
        let got = &one[&tx.tx_id];
        let want = &expected[&tx.tx_id];
        for (i, name) in names.iter().enumerate() {
            if name.contains("avg_amount") || name.contains("risk") || name == "amount" {
                assert!(
                    (got[i] - want[i]).abs() <= 1e-9,
                    "tx {} {name}: weir {} reference {}",
                    tx.tx_id,
                    got[i],
                    want[i]
                );
            } else {
                assert_eq!(got[i], want[i], "tx {} {name}", tx.tx_id);
            }
        }
        nonzero_risk += (want[names.len() - 1] > 0.0) as usize;
    }
    assert!(
        nonzero_risk > 1000,
        "the terminal risk features are exercised ({nonzero_risk} non-zero)"
    );

    for (workers, shuffle) in [(4, false), (1, true), (4, true)] {
        let other = weir(&data, workers, shuffle);
        assert_eq!(other.len(), one.len());
        for (id, v) in &one {
            let o = &other[id];
            assert!(
                v.iter().zip(o).all(|(a, b)| a.to_bits() == b.to_bits()),
                "tx {id}: {workers} workers, shuffled {shuffle}: {o:?} != {v:?}"
            );
        }
    }
}
