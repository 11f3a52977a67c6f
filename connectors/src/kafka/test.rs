//! Tests of the Kafka source and sinks against the embedded (mock) broker.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use timely::dataflow::operators::{Inspect, Probe};
use weir_core::{DeliveryLedger, FlowControl, Metrics, RowMeta, ScoreSink, SourceEvent};

use super::admin::{read_topic, BulkProducer};
use super::embedded::EmbeddedKafka;
use super::sink::KafkaScoreSink;
use super::source::{kafka_source, KafkaSourceConfig, SourceShared, StartPosition};

fn config(brokers: &str, bounded: bool, group: &str) -> KafkaSourceConfig {
    KafkaSourceConfig {
        brokers: brokers.to_string(),
        topic: "events".into(),
        group_id: group.into(),
        start: StartPosition::Committed,
        bounded,
        ranges: None,
        commit: true,
        assign: false,
        start_offsets: None,
        commit_floor: None,
        follows: None,
        idle_timeout: Duration::from_millis(500),
        max_poll_records: 100,
        commit_interval: Duration::from_millis(50),
        pause_after: Duration::from_secs(1),
        allowed_lateness_ms: 0,
        drain_timeout: Duration::from_secs(2),
        properties: BTreeMap::from([("session.timeout.ms".into(), "6000".into())]),
    }
}

fn produce(brokers: &str, n: usize) {
    let p = BulkProducer::new(brokers, &BTreeMap::new()).unwrap();
    for i in 0..n {
        let key = format!("k{}", i % 17);
        p.send(
            "events",
            Some(key.as_bytes()),
            format!("{i}").as_bytes(),
            Some(1_000 + i as i64),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// Runs a source in 2 timely workers; every event read is acknowledged unless `ack` says no.
/// Returns the events seen. Stops when the source completes (bounded) or after `stop_after`
/// distinct events (live: requests shutdown).
fn run(config: KafkaSourceConfig, stop_after: usize, ack: fn(&SourceEvent) -> bool) -> Vec<SourceEvent> {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("weir_connectors=debug")
        .try_init();
    let ledger = Arc::new(DeliveryLedger::new());
    let flow = Arc::new(FlowControl::new(1_000_000));
    let metrics = Arc::new(Metrics::new("test"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let shared = SourceShared {
        ledger: ledger.clone(),
        flow: flow.clone(),
        metrics,
        watermarks: Default::default(),
        positions: Default::default(),
    };
    let seen2 = seen.clone();
    let guards = timely::execute(timely::Config::process(2), move |worker| {
        let config = config.clone();
        let shared = shared.clone();
        let seen = seen2.clone();
        let ledger = shared.ledger.clone();
        let flow = shared.flow.clone();
        let probe = worker.dataflow::<u64, _, _>(|scope| {
            let events = kafka_source(scope, config, shared).unwrap();
            let (probe, _) = events
                .inspect(move |ev| {
                    if ack(ev) {
                        ledger.ack(ev.lineage);
                    }
                    seen.lock().unwrap().push(ev.clone());
                })
                .probe();
            probe
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while !probe.done() || flow.sources_finished() < 2 {
            assert!(Instant::now() < deadline, "source did not finish");
            // Distinct offsets: a rebalance while the group forms re-reads some events.
            let distinct = {
                let seen = seen2.lock().unwrap();
                seen.iter()
                    .map(|e| e.lineage)
                    .collect::<std::collections::HashSet<_>>()
                    .len()
            };
            if distinct >= stop_after {
                flow.request_shutdown();
            }
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
    })
    .unwrap();
    drop(guards);
    let v = seen.lock().unwrap().clone();
    v
}

fn committed(brokers: &str, group: &str) -> HashMap<i32, i64> {
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition("events", p);
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

#[test]
fn bounded_source_reads_each_offset_once_across_workers() {
    let kafka = EmbeddedKafka::start().unwrap();
    kafka.create_topic("events", 3).unwrap();
    let brokers = kafka.bootstrap_servers();
    produce(&brokers, 1000);
    let seen = run(config(&brokers, true, "g-bounded"), usize::MAX, |_| true);
    let mut lineages: Vec<_> = seen.iter().map(|e| e.lineage).collect();
    lineages.sort();
    lineages.dedup();
    assert_eq!(lineages.len(), 1000, "every offset exactly once");
    assert_eq!(seen.len(), 1000);
    let mut payloads: Vec<i64> = seen
        .iter()
        .map(|e| {
            std::str::from_utf8(e.payload.as_deref().unwrap())
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    payloads.sort();
    assert_eq!(payloads, (0..1000).collect::<Vec<_>>());
    assert!(
        seen.iter().all(|e| e.timestamp_ms >= 1000),
        "message timestamps carried"
    );
    assert!(committed(&brokers, "g-bounded").is_empty(), "bounded runs never commit");
}

#[test]
fn live_source_commits_only_acknowledged_offsets() {
    let kafka = EmbeddedKafka::start().unwrap();
    kafka.create_topic("events", 3).unwrap();
    let brokers = kafka.bootstrap_servers();
    produce(&brokers, 600);
    // Acknowledge everything except the event whose payload is "300".
    let seen = run(config(&brokers, false, "g-live"), 600, |e| {
        e.payload.as_deref() != Some(b"300")
    });
    assert!(seen.len() >= 600);
    let hole = seen
        .iter()
        .find(|e| e.payload.as_deref() == Some(b"300"))
        .unwrap()
        .lineage;
    let commits = committed(&brokers, "g-live");
    for p in 0..3 {
        let hi = seen
            .iter()
            .filter(|e| e.lineage.partition == p)
            .map(|e| e.lineage.offset + 1)
            .max()
            .unwrap();
        let expected = if p == hole.partition { hole.offset } else { hi };
        assert_eq!(
            commits.get(&p),
            Some(&expected),
            "partition {p}: commits stop at the unacknowledged offset"
        );
    }
}

#[test]
fn score_sink_acknowledges_delivered_scores() {
    let kafka = EmbeddedKafka::start().unwrap();
    kafka.create_topic("scores", 2).unwrap();
    let brokers = kafka.bootstrap_servers();
    let ledger = Arc::new(DeliveryLedger::new());
    let metrics = Arc::new(Metrics::new("t"));
    let sink = KafkaScoreSink::new(&brokers, "scores", &BTreeMap::new(), ledger.clone(), metrics.clone()).unwrap();
    let rows: Vec<RowMeta> = (0..50)
        .map(|i| RowMeta {
            lineage: weir_core::Lineage {
                partition: 0,
                offset: i,
            },
            tx_id: 100 + i as u64,
            event_time_ms: 5,
            read_at_us: 0,
        })
        .collect();
    for r in &rows {
        ledger.register(r.lineage, 0);
    }
    let scores: Vec<f32> = (0..50).map(|i| i as f32 / 100.0).collect();
    sink.write(&rows, &scores, "v\"1").unwrap();
    sink.flush(Duration::from_secs(10)).unwrap();
    assert_eq!(ledger.committable(&[0]), vec![(0, 50)]);
    assert_eq!(metrics.scores_out.get(), 50);
    let out = read_topic(&brokers, "scores", Duration::from_secs(10)).unwrap();
    assert_eq!(out.len(), 50);
    let v: serde_json::Value = serde_json::from_slice(out[0].payload.as_deref().unwrap()).unwrap();
    assert_eq!(v["model_version"], "v\"1");
    let tx = v["tx_id"].as_u64().unwrap();
    assert_eq!(v["score"].as_f64().unwrap() as f32, (tx - 100) as f32 / 100.0);
    assert_eq!(v["offset"].as_i64().unwrap() as u64, tx - 100);
}

#[test]
fn watermark_board_does_not_let_idle_workers_hold_back_the_others() {
    use super::source::{TopicWatermark, WatermarkBoard};
    let b = WatermarkBoard::default();
    let wm = |watermark, holding| TopicWatermark { watermark, holding };
    // Worker 1 has not run yet: what its partitions hold is unknown, so it holds everything back.
    assert_eq!(
        b.publish("tx", 0, 2, Some(100), Some(100), None),
        wm(Some(i64::MIN), Some(i64::MIN))
    );
    // Worker 0 still expects data up to 100, worker 1 is idle having read up to 500.
    assert_eq!(b.publish("tx", 1, 2, None, Some(500), None), wm(Some(100), Some(100)));
    // Worker 0 goes idle too: everything read (up to 500) is complete.
    assert_eq!(b.publish("tx", 0, 2, None, Some(120), None), wm(Some(501), None));
    // A side input that has read nothing follows its main topic...
    assert_eq!(b.publish("labels", 0, 1, None, None, Some("tx")), wm(Some(501), None));
    // ... unless it holds (a partition not yet past its initial idle timeout).
    assert_eq!(
        b.publish("labels", 1, 2, Some(i64::MIN), None, Some("tx")),
        wm(Some(i64::MIN), Some(i64::MIN))
    );
    // A main topic that knows nothing never follows another.
    assert_eq!(b.publish("other", 0, 1, None, None, None), wm(None, None));
}
