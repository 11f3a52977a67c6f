//! Tests of the Kafka source and sinks against the embedded (mock) broker.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use timely::dataflow::operators::{Inspect, Probe};
use weir_core::{
    DeadLetter, DeadLetterSink, DeliveryLedger, FlowControl, Lineage, Metrics, RowMeta, ScoreSink, SourceEvent,
};

use super::admin::{read_topic, BulkProducer};
use super::embedded::EmbeddedKafka;
use super::sink::{KafkaDeadLetterSink, KafkaScoreSink};
use super::source::{kafka_source, EventTime, KafkaSourceConfig, SourceShared, StartPosition};

fn config(brokers: &str, bounded: bool, group: &str) -> KafkaSourceConfig {
    KafkaSourceConfig {
        brokers: brokers.to_string(),
        topic: "events".into(),
        group_id: group.into(),
        start: StartPosition::Committed,
        bounded,
        ranges: None,
        commit: true,
        start_offsets: None,
        commit_floor: None,
        follows: None,
        idle_timeout: Duration::from_millis(500),
        max_poll_records: 100,
        commit_interval: Duration::from_millis(50),
        pause_after: Duration::from_secs(1),
        allowed_lateness_ms: 0,
        event_time: Default::default(),
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
        cluster: None,
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
    let sink = KafkaScoreSink::new(
        &brokers,
        "scores",
        &crate::IdColumn::int("tx_id"),
        &BTreeMap::new(),
        ledger.clone(),
        metrics.clone(),
    )
    .unwrap();
    let rows: Vec<RowMeta> = (0..50)
        .map(|i| RowMeta {
            lineage: weir_core::Lineage {
                partition: 0,
                offset: i,
            },
            id: weir_core::EventId::Int(100 + i),
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
    let wm = |watermark, holding, others| TopicWatermark {
        watermark,
        holding,
        others,
    };
    // Worker 1 has not run yet: what its partitions hold is unknown, so it holds everything back.
    assert_eq!(
        b.publish("tx", 0, 2, Some(100), Some(100), None),
        wm(Some(i64::MIN), Some(i64::MIN), Some(i64::MIN))
    );
    // Worker 0 still expects data up to 100, worker 1 is idle having read up to 500: for worker
    // 1, the others (worker 0) hold 100.
    assert_eq!(
        b.publish("tx", 1, 2, None, Some(500), None),
        wm(Some(100), Some(100), Some(100))
    );
    // Worker 0 goes idle too: everything read (up to 500) is complete.
    assert_eq!(b.publish("tx", 0, 2, None, Some(120), None), wm(Some(501), None, None));
    // A side input that has read nothing follows its main topic...
    assert_eq!(
        b.publish("labels", 0, 1, None, None, Some("tx")),
        wm(Some(501), None, None)
    );
    // ... unless it holds (a partition not yet past its initial idle timeout).
    assert_eq!(
        b.publish("labels", 1, 2, Some(i64::MIN), None, Some("tx")),
        wm(Some(i64::MIN), Some(i64::MIN), None)
    );
    // A main topic that knows nothing never follows another.
    assert_eq!(b.publish("other", 0, 1, None, None, None), wm(None, None, None));
}

fn letter(offset: i64, payload: Option<Vec<u8>>) -> DeadLetter {
    DeadLetter {
        lineage: Lineage { partition: 0, offset },
        reason: "too_large".into(),
        detail: "payload too large".into(),
        key: Some(b"k".to_vec()),
        payload,
        headers: vec![("trace-id".into(), Some(b"t-1".to_vec())), ("empty".into(), None)],
        read_at_us: 0,
    }
}

fn sinks(
    kafka: &EmbeddedKafka,
) -> (
    Arc<DeliveryLedger>,
    Arc<Metrics>,
    KafkaScoreSink,
    Arc<KafkaDeadLetterSink>,
) {
    for t in ["scores", "dlq"] {
        kafka.create_topic(t, 1).unwrap();
    }
    let brokers = kafka.bootstrap_servers();
    let ledger = Arc::new(DeliveryLedger::new());
    let metrics = Arc::new(Metrics::new("t"));
    let none = BTreeMap::new();
    let scores = KafkaScoreSink::new(
        &brokers,
        "scores",
        &crate::IdColumn::int("tx_id"),
        &none,
        ledger.clone(),
        metrics.clone(),
    )
    .unwrap();
    let dlq =
        Arc::new(KafkaDeadLetterSink::new(&brokers, "dlq", "events", &none, ledger.clone(), metrics.clone()).unwrap());
    (ledger, metrics, scores, dlq)
}

fn wait_committable(ledger: &DeliveryLedger, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while ledger.committable(&[0]) != vec![(0, want)] {
        assert!(
            Instant::now() < deadline,
            "committable {:?}, want {want}",
            ledger.committable(&[0])
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn dead_letters_keep_tombstones_and_headers_and_oversized_payloads_are_truncated_not_lost() {
    // Issue 13, items 2 and 9: a letter over ~1 MB was refused by the producer and dropped; a
    // tombstone became a 0-byte value and the original headers were dropped.
    let kafka = EmbeddedKafka::start().unwrap();
    let (ledger, metrics, _scores, dlq) = sinks(&kafka);
    for o in 0..3 {
        ledger.register(
            Lineage {
                partition: 0,
                offset: o,
            },
            0,
        );
    }
    dlq.send(letter(0, None)).unwrap();
    dlq.send(letter(1, Some(vec![b'x'; 2_000_000]))).unwrap();
    dlq.send(letter(2, Some(b"small".to_vec()))).unwrap();
    dlq.flush(Duration::from_secs(30)).unwrap();
    wait_committable(&ledger, 3);
    let out = read_topic(&kafka.bootstrap_servers(), "dlq", Duration::from_secs(10)).unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].payload, None, "a tombstone stays null");
    assert_eq!(out[0].header("trace-id"), Some(&b"t-1"[..]), "original headers kept");
    assert!(out[0].headers.iter().any(|(k, _)| k == "empty"));
    assert_eq!(out[0].header("weir.dlq.reason"), Some(&b"too_large"[..]));
    assert!(out[0].header("weir.dlq.truncated").is_none());
    let big = &out[1];
    assert_eq!(big.header("weir.dlq.truncated"), Some(&b"true"[..]));
    assert_eq!(big.header("weir.dlq.original_bytes"), Some(&b"2000000"[..]));
    let kept = big.payload.as_deref().unwrap();
    assert!(!kept.is_empty() && kept.len() < 1_000_000 && kept.iter().all(|b| *b == b'x'));
    assert_eq!(out[2].payload.as_deref(), Some(&b"small"[..]));
    assert_eq!(metrics.dead_letters_truncated.get(), 1);
    assert_eq!(metrics.dead_letters_unwritten.get(), 0);
}

#[test]
fn a_letter_the_broker_refuses_as_too_large_is_sent_again_truncated() {
    let kafka = EmbeddedKafka::start().unwrap();
    let (ledger, metrics, _scores, dlq) = sinks(&kafka);
    ledger.register(
        Lineage {
            partition: 0,
            offset: 0,
        },
        0,
    );
    kafka.fail_next_produce(&[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE]);
    dlq.send(letter(0, Some(vec![b'y'; 100_000]))).unwrap();
    wait_committable(&ledger, 1);
    let out = read_topic(&kafka.bootstrap_servers(), "dlq", Duration::from_secs(10)).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].header("weir.dlq.truncated"), Some(&b"true"[..]));
    assert_eq!(out[0].header("weir.dlq.original_bytes"), Some(&b"100000"[..]));
    assert_eq!(
        out[0].payload.as_ref().map(Vec::len),
        Some(super::sink::BROKER_RETRY_BYTES)
    );
    assert_eq!(out[0].header("trace-id"), Some(&b"t-1"[..]));
    assert_eq!(metrics.dead_letters_truncated.get(), 1);
}

#[test]
fn a_score_record_whose_delivery_fails_becomes_a_dead_letter_and_is_acknowledged() {
    // Issue 13, item 3: a failed row was only logged, and its partition never committed again.
    let kafka = EmbeddedKafka::start().unwrap();
    let (ledger, metrics, scores, dlq) = sinks(&kafka);
    scores.set_dead_letters(dlq.clone());
    let row = RowMeta {
        lineage: Lineage {
            partition: 0,
            offset: 0,
        },
        id: weir_core::EventId::Int(7),
        event_time_ms: 5,
        read_at_us: 0,
    };
    ledger.register(row.lineage, 0);
    kafka.fail_next_produce(&[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE]);
    scores.write(&[row], &[0.5], "v1").unwrap();
    wait_committable(&ledger, 1);
    let out = read_topic(&kafka.bootstrap_servers(), "dlq", Duration::from_secs(10)).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].header("weir.dlq.reason"), Some(&b"sink"[..]));
    let v: serde_json::Value = serde_json::from_slice(out[0].payload.as_deref().unwrap()).unwrap();
    assert_eq!(v["tx_id"], 7, "the score record travels as the letter's payload");
    assert_eq!(metrics.scores_out.get(), 0);
}

#[test]
fn event_time_is_the_configured_clock_and_late_events_are_raised_to_their_partitions_watermark() {
    // Issue 14: the watermark followed message timestamps while the windows used the payload's
    // time, so features changed from run to run when the two differed.
    let kafka = EmbeddedKafka::start().unwrap();
    kafka.create_topic("events", 1).unwrap();
    let brokers = kafka.bootstrap_servers();
    let own = [1_000i64, 5_000, 2_000, 6_000, 3_000, 5_500, 7_000];
    let p = BulkProducer::new(&brokers, &BTreeMap::new()).unwrap();
    for t in own {
        // Message timestamps a day after the payload's time, and not in the payload's order.
        let ts = 86_400_000 + 10_000 - t;
        p.send("events", None, t.to_string().as_bytes(), Some(ts)).unwrap();
    }
    // A payload without a usable time moves no watermark.
    p.send("events", None, b"not a time", Some(1)).unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
    drop(p);
    let read = |event_time: EventTime| {
        let mut cfg = config(&brokers, true, "g-event-time");
        cfg.allowed_lateness_ms = 1_000;
        cfg.event_time = event_time;
        let mut seen = run(cfg, usize::MAX, |_| true);
        seen.sort_by_key(|e| e.lineage.offset);
        seen
    };
    let payload: super::source::PayloadTime =
        Arc::new(|p: &[u8], _ts: i64| std::str::from_utf8(p).ok()?.parse::<i64>().ok());
    let seen = read(EventTime::Payload(payload));
    let times: Vec<i64> = seen.iter().map(|e| e.event_time_ms).collect();
    // Each one's own time, or the largest before it in the partition minus 1 s when behind that.
    assert_eq!(times, vec![1_000, 5_000, 4_000, 6_000, 5_000, 5_500, 7_000, 6_000]);
    let ts: Vec<i64> = seen.iter().map(|e| e.timestamp_ms).take(own.len()).collect();
    assert_eq!(
        ts,
        own.iter().map(|t| 86_400_000 + 10_000 - t).collect::<Vec<_>>(),
        "message timestamps kept"
    );

    let seen = read(EventTime::MessageTimestamp);
    let times: Vec<i64> = seen.iter().map(|e| e.event_time_ms).collect();
    let mut expected = Vec::new();
    let mut max = i64::MIN;
    for t in own.iter().map(|t| 86_400_000 + 10_000 - t).chain([1]) {
        expected.push(if max == i64::MIN { t } else { t.max(max - 1_000) });
        max = max.max(t);
    }
    assert_eq!(times, expected, "message timestamps, raised the same way");
}
