//! Snapshots of the keyed window operator: a run restored from a snapshot and fed only the
//! events from its cut on computes the same features as an uninterrupted run, bit for bit, with
//! 1 or 3 workers (also when the worker count changes, and when workers' cuts differ); a corrupt
//! newest file is skipped for the previous one; a snapshot of other feature definitions is never
//! loaded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use timely::dataflow::operators::vec::Input;
use timely::dataflow::operators::{Inspect, Probe};
mod common;

use common::{event_row, label_row};
use weir_feature_store::definition::{handbook_features, FeatureSpec};
use weir_feature_store::definition::{handbook_spec, EventRow, FeatureKind, LabelRow};
use weir_feature_store::keyed::{stage_definitions, Snapshots};
use weir_feature_store::snapshot::{SnapshotSettings, SnapshotStats, SnapshotStore};
use weir_feature_store::windowed_features_with;
use weir_simulator::{FraudLabel as Label, Transaction};
use weir_simulator::{SimConfig, Simulator, DAY_MS};

const EPOCH_MS: i64 = 600_000; // the inputs' timely time advances every 10 minutes of event time
const INTERVAL_MS: u64 = DAY_MS as u64; // a cut per simulated day

/// Arrivals in time order: transactions at their time, labels when their chargeback is due.
fn arrivals() -> Vec<(i64, Result<Transaction, Label>)> {
    let sim = Simulator::new(SimConfig {
        n_customers: 300,
        n_terminals: 600,
        n_days: 40,
        seed: 11,
        ..SimConfig::default()
    });
    let mut out = Vec::new();
    for lt in sim.flatten() {
        out.push((lt.label.available_at_ms, Err(lt.label)));
        out.push((lt.tx.tx_time_ms, Ok(lt.tx)));
    }
    out.sort_by_key(|(t, _)| *t);
    out
}

fn spec() -> FeatureSpec {
    let names: Vec<String> = handbook_features().into_iter().map(|f| f.name).collect();
    handbook_spec(&names).unwrap()
}

/// Runs the feature store over the arrivals at or after `from_ms` with `workers` workers; returns
/// tx id -> feature bits.
fn run(
    arrivals: &[(i64, Result<Transaction, Label>)],
    from_ms: i64,
    workers: usize,
    snapshots: Snapshots,
) -> HashMap<u64, Vec<u64>> {
    let out = Arc::new(Mutex::new(HashMap::new()));
    let arrivals: Arc<Vec<_>> = Arc::new(arrivals.iter().filter(|(t, _)| *t >= from_ms).cloned().collect());
    let o = out.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let (o, snapshots) = (o.clone(), snapshots.clone());
        let (mut txs, mut labels, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (txs_in, txs) = scope.new_input::<EventRow>();
            let (labels_in, labels) = scope.new_input::<LabelRow>();
            let (probe, _) = windowed_features_with(txs, Some(labels), spec(), &snapshots)
                .inspect(move |fv| {
                    o.lock().unwrap().insert(
                        fv.meta.id.as_int().unwrap() as u64,
                        fv.values.iter().map(|v| v.to_bits()).collect::<Vec<u64>>(),
                    );
                })
                .probe();
            (txs_in, labels_in, probe)
        });
        let spec = spec();
        if worker.index() == 0 {
            for (t, a) in arrivals.iter() {
                let epoch = (*t - t.rem_euclid(EPOCH_MS)) as u64;
                if epoch > *txs.time() {
                    txs.advance_to(epoch);
                    labels.advance_to(epoch);
                    worker.step();
                }
                match a {
                    Ok(tx) => txs.send(event_row(&spec, tx)),
                    Err(l) => labels.send(label_row(&spec, l)),
                }
            }
        }
        drop(txs);
        drop(labels);
        while !probe.done() {
            worker.step();
        }
    })
    .unwrap();
    Arc::try_unwrap(out).unwrap().into_inner().unwrap()
}

fn writing(dir: &std::path::Path) -> (Snapshots, Arc<SnapshotStats>) {
    let stats = Arc::new(SnapshotStats::default());
    let settings = SnapshotSettings {
        store: SnapshotStore::new(dir),
        interval_ms: INTERVAL_MS,
        min_wall_ms: 0,
        keep: 3,
        retain_ms: 0,
        stats: stats.clone(),
    };
    (
        Snapshots {
            settings: Some(settings),
            restore: None,
        },
        stats,
    )
}

#[test]
fn a_run_restored_from_a_snapshot_computes_what_an_uninterrupted_run_does() {
    let all = arrivals();
    let reference = run(&all, i64::MIN, 1, Snapshots::default());
    assert!(reference.len() > 20_000, "{} transactions", reference.len());
    for (write_workers, read_workers) in [(1, 1), (3, 3), (3, 1)] {
        let dir = tempfile::tempdir().unwrap();
        // The first run stops after day 25 (a crash): it wrote a snapshot per day, keeping 3.
        let stop = all[0].0 + 25 * DAY_MS;
        let head: Vec<_> = all.iter().filter(|(t, _)| *t < stop).cloned().collect();
        let (snap, stats) = writing(dir.path());
        run(&head, i64::MIN, write_workers, snap);
        let store = SnapshotStore::new(dir.path());
        assert!(stats.written.load(std::sync::atomic::Ordering::Relaxed) >= 2 * 20);
        let cuts = store.cuts();
        assert_eq!(cuts.len(), 3, "older snapshots are deleted: {cuts:?}");
        if write_workers > 1 {
            // Cuts that differ by worker and stage (as when a crash comes between two workers'
            // writes): the newest files of one worker of each stage are gone.
            for f in ["customer_id-1-of-3.snap", "terminal_id-2-of-3.snap"] {
                std::fs::remove_file(dir.path().join(format!("cut-{:020}", cuts[0])).join(f)).unwrap();
            }
        }
        let restored = store
            .load_latest(u64::MAX, &stage_definitions(&spec()))
            .expect("a usable snapshot");
        assert_eq!(restored.max_cut_ms, cuts[0]);
        let expected_least = if write_workers > 1 { cuts[1] } else { cuts[0] };
        assert_eq!(restored.cut_ms, expected_least, "the least cut of the files loaded");
        assert!(restored.cut_ms as i64 > stop - 3 * DAY_MS && restored.cut_ms as i64 <= stop);
        assert!(restored.entries() > 1000);
        // The restart is fed only what comes at or after the cut (labels too).
        let (cut, restored_max) = (restored.cut_ms as i64, restored.max_cut_ms as i64);
        let resumed = run(
            &all,
            cut,
            read_workers,
            Snapshots {
                settings: None,
                restore: Some(Arc::new(restored)),
            },
        );
        // Every transaction at or after the newest cut is computed from the restored state
        // and the replay alone (one before an entity's own cut passes through: its state holds
        // it already, and its score was delivered before the crash).
        let cut = restored_max;
        let mut checked = 0;
        for (id, bits) in &resumed {
            let tx_time = all
                .iter()
                .find_map(|(_, a)| a.as_ref().ok().filter(|tx| tx.tx_id == *id).map(|tx| tx.tx_time_ms));
            if tx_time.is_some_and(|t| t >= cut) {
                assert_eq!(
                    bits, &reference[id],
                    "tx {id} ({write_workers} -> {read_workers} workers)"
                );
                checked += 1;
            }
        }
        let after_cut = all.iter().filter(|(t, a)| a.is_ok() && *t >= cut).count();
        assert_eq!(checked, after_cut, "every transaction after the cut, all equal");
    }
}

#[test]
fn a_corrupt_or_foreign_newest_snapshot_is_skipped_for_the_previous_one() {
    let all = arrivals();
    let dir = tempfile::tempdir().unwrap();
    let head: Vec<_> = all
        .iter()
        .filter(|(t, _)| *t < all[0].0 + 10 * DAY_MS)
        .cloned()
        .collect();
    run(&head, i64::MIN, 2, writing(dir.path()).0);
    let store = SnapshotStore::new(dir.path());
    let cuts = store.cuts();
    assert_eq!(cuts.len(), 3);
    let defs = stage_definitions(&spec());
    assert_eq!(store.load_latest(u64::MAX, &defs).unwrap().cut_ms, cuts[0]);
    // Flip one byte in the middle of worker 0's newest file of a stage.
    let file = |cut: u64| {
        dir.path()
            .join(format!("cut-{cut:020}"))
            .join("customer_id-0-of-2.snap")
    };
    let newest = file(cuts[0]);
    let mut bytes = std::fs::read(&newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&newest, &bytes).unwrap();
    let err = SnapshotStore::read(&newest).unwrap_err().to_string();
    assert!(err.contains("checksum"), "{err}");
    let r = store.load_latest(u64::MAX, &defs).unwrap();
    assert_eq!(
        (r.cut_ms, r.max_cut_ms),
        (cuts[1], cuts[0]),
        "that worker falls back to its previous file, the others keep their newest"
    );
    assert_eq!(r.stages["customer_id"].parts[0].cut_ms, cuts[1]);
    assert_eq!(r.stages["customer_id"].parts[1].cut_ms, cuts[0]);
    // A truncated file (a partial write) is skipped as well.
    let second = file(cuts[1]);
    let len = std::fs::metadata(&second).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&second)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    assert_eq!(store.load_latest(u64::MAX, &defs).unwrap().cut_ms, cuts[2]);
    assert!(
        store.load_latest(cuts[2] - 1, &defs).is_none(),
        "nothing at or before an earlier cut"
    );
    // Other feature definitions (a 2-day window instead of 1): never loaded.
    let mut other = handbook_features();
    let first = other.iter().position(|f| f.kind == FeatureKind::Window).unwrap();
    other[first].window = Some(std::time::Duration::from_secs(2 * 86_400));
    let names: Vec<String> = other.iter().map(|f| f.name.clone()).collect();
    let other_spec = FeatureSpec::new(&names, &other, &weir_feature_store::handbook_fields(), Some(1)).unwrap();
    assert!(store.load_latest(u64::MAX, &stage_definitions(&other_spec)).is_none());
    // A stage's worker without a usable file: its entities' state is unknown, nothing loads.
    std::fs::remove_file(file(cuts[2])).unwrap();
    assert!(
        store.load_latest(u64::MAX, &defs).is_none(),
        "a snapshot missing a worker's state is not loaded"
    );
}
