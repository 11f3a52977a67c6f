//! The second shipped topology, `topologies/card-payments.toml`, end to end on a real broker
//! (nisshi): events of another schema than the handbook's (string ids, RFC 3339 times, integer
//! cents, a categorical country, fields weir does not read), scored by their own model with no
//! code of their own. Every payment is scored exactly once under its id as it came; malformed
//! payments are dead letters naming the field; the features `weir features export` computes
//! from the same file equal an independent reference (a plain loop over the payments, straight
//! from the definitions in the file).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use arrow::array::{Array, Float64Array, StringArray, TimestampMillisecondArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use weir_connectors::kafka::admin::{read_topic, BulkProducer};
use weir_tests::{create_topics, run_weir, topology_file_of, NisshiBroker};

const DAY: i64 = 86_400_000;

/// One payment as the generator wrote it.
#[derive(Debug, Clone)]
struct Payment {
    id: String,
    t: i64,
    card: String,
    merchant: String,
    amount: f64,
    country: String,
}

fn rfc3339_ms(s: &str) -> Option<i64> {
    Some(
        humantime::parse_rfc3339(s)
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_millis() as i64,
    )
}

/// The reference features of every payment, in the topology's `model.features` order.
fn reference(payments: &[Payment], labels: &HashMap<String, (bool, i64)>) -> HashMap<String, Vec<f64>> {
    let mut by_card: HashMap<&str, Vec<&Payment>> = HashMap::new();
    let mut by_merchant: HashMap<&str, Vec<&Payment>> = HashMap::new();
    let mut by_pair: HashMap<(&str, &str), Vec<&Payment>> = HashMap::new();
    for p in payments {
        by_card.entry(&p.card).or_default().push(p);
        by_merchant.entry(&p.merchant).or_default().push(p);
        by_pair.entry((&p.card, &p.merchant)).or_default().push(p);
    }
    let risk: BTreeMap<&str, f64> = [
        ("FR", 0.1),
        ("DE", 0.1),
        ("GB", 0.15),
        ("ES", 0.15),
        ("IT", 0.15),
        ("US", 0.3),
        ("BR", 0.6),
        ("NG", 0.9),
    ]
    .into();
    let window = |list: &[&Payment], t: i64, delay: i64, w: i64| -> Vec<f64> {
        list.iter()
            .filter(|o| o.t > t - delay - w && o.t <= t - delay)
            .map(|o| o.amount)
            .collect()
    };
    let mut out = HashMap::new();
    for p in payments {
        let t = p.t;
        let hour_int = t.rem_euclid(DAY) / 3_600_000;
        let weekday = (t.div_euclid(DAY) + 3).rem_euclid(7);
        let mut v = vec![
            p.amount,
            t.rem_euclid(DAY) as f64 / 3_600_000.0,
            (weekday >= 5) as u8 as f64,
            !(6..22).contains(&hour_int) as u8 as f64,
            (p.country == "FR") as u8 as f64,
            (p.country == "DE") as u8 as f64,
            (p.country == "GB") as u8 as f64,
            risk.get(p.country.as_str()).copied().unwrap_or(0.5),
        ];
        let card = &by_card[p.card.as_str()];
        v.push(window(card, t, 0, DAY).len() as f64);
        let w7 = window(card, t, 0, 7 * DAY);
        v.push(w7.iter().sum::<f64>() / w7.len() as f64);
        let w1 = window(card, t, 0, DAY);
        v.push(w1.iter().cloned().fold(f64::MIN, f64::max));
        v.push(w7.iter().cloned().fold(f64::MAX, f64::min));
        let merchant = &by_merchant[p.merchant.as_str()];
        v.push(window(merchant, t, 7 * DAY, 7 * DAY).len() as f64);
        let in30: Vec<&&Payment> = merchant
            .iter()
            .filter(|o| o.t > t - 7 * DAY - 30 * DAY && o.t <= t - 7 * DAY)
            .collect();
        let frauds = in30
            .iter()
            .filter(|o| labels.get(&o.id).is_some_and(|(f, at)| *f && *at <= t))
            .count();
        v.push(if in30.is_empty() {
            0.0
        } else {
            frauds as f64 / in30.len() as f64
        });
        v.push(window(&by_pair[&(p.card.as_str(), p.merchant.as_str())], t, 0, 30 * DAY).len() as f64);
        out.insert(p.id.clone(), v);
    }
    out
}

#[test]
fn card_payments_are_scored_under_their_own_ids_and_their_features_equal_a_reference() {
    let broker = NisshiBroker::start();
    let b = broker.brokers.clone();
    create_topics(
        &b,
        &[
            ("payments", 4),
            ("payment-labels", 4),
            ("payment-scores", 4),
            ("payments-dlq", 1),
        ],
    );
    let out = run_weir(
        &[
            "generate",
            "--dialect",
            "payments",
            "--brokers",
            &b,
            "--topic",
            "payments",
            "--labels-topic",
            "payment-labels",
            "--days",
            "45",
            "--customers",
            "200",
            "--terminals",
            "400",
            "--seed",
            "5",
        ],
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Payments of the same schema written by hand: an extra nested field and a missing country
    // (ignored and defaulted), and malformed ones, each naming its field.
    let last = read_topic(&b, "payments", Duration::from_secs(60))
        .unwrap()
        .iter()
        .filter_map(|r| r.timestamp_ms)
        .max()
        .unwrap();
    let at = |ms: i64| {
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
    };
    let odd = serde_json::json!({"payment_id": "7f3a9c2e-1b4d-4e8f-9a6b-0c5d2e1f3a4b", "occurred_at": at(last),
        "card_id": "card-00001", "merchant_id": "m-00002", "amount_cents": 1250, "loyalty": {"tier": "gold", "points": [1, 2]}});
    let bad: [(&[u8], &str, &str); 4] = [
        (br#"{"payment_id":"x1","occurred_at":"yesterday","card_id":"c","merchant_id":"m","amount_cents":1}"#, "invalid_time", "occurred_at"),
        (br#"{"payment_id":"x2","occurred_at":"2018-04-01T00:00:00Z","card_id":"c","merchant_id":"m","amount_cents":"12.50"}"#, "schema", "amount_cents"),
        (br#"{"payment_id":3,"occurred_at":"2018-04-01T00:00:00Z","card_id":"c","merchant_id":"m","amount_cents":1}"#, "schema", "payment_id"),
        (br#"{"payment_id":"x4","occurred_at":"2018-04-01T00:00:00Z","card_id":"c","merchant_id":"m","amount_cents":-100}"#, "invalid_value", "amount_cents"),
    ];
    let producer = BulkProducer::new(&b, &BTreeMap::new()).unwrap();
    producer
        .send("payments", Some(b"odd"), &serde_json::to_vec(&odd).unwrap(), Some(last))
        .unwrap();
    for (payload, _, _) in &bad {
        producer.send("payments", Some(b"bad"), payload, Some(last)).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let payments: Vec<Payment> = read_topic(&b, "payments", Duration::from_secs(60))
        .unwrap()
        .iter()
        .filter_map(|r| {
            let v: serde_json::Value = serde_json::from_slice(r.payload.as_deref()?).ok()?;
            let amount = v["amount_cents"].as_i64()?;
            v["payment_id"].as_str()?;
            Some(Payment {
                id: v["payment_id"].as_str()?.to_string(),
                t: rfc3339_ms(v["occurred_at"].as_str()?)?,
                card: v["card_id"].as_str()?.to_string(),
                merchant: v["merchant_id"].as_str()?.to_string(),
                amount: amount as f64 / 100.0,
                country: v["country"].as_str().unwrap_or("??").to_string(),
            })
        })
        .filter(|p| p.amount >= 0.0)
        .collect();
    assert!(payments.len() > 15_000, "{} payments", payments.len());

    // Scoring: every payment once, under its string id; the malformed ones dead-lettered.
    let dir = tempfile::tempdir().unwrap();
    let topology = topology_file_of("card-payments.toml", dir.path(), &b, "weir-payments-test", "", "");
    let out = run_weir(
        &["run", topology.to_str().unwrap(), "--until-end", "--start", "earliest"],
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut scored: HashMap<String, usize> = HashMap::new();
    for r in read_topic(&b, "payment-scores", Duration::from_secs(60)).unwrap() {
        let v: serde_json::Value = serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap();
        let id = v["payment_id"]
            .as_str()
            .expect("the id is written as the string it came as");
        assert_eq!(r.key.as_deref(), Some(id.as_bytes()), "keyed by the id");
        assert_eq!(v["model_version"], "card-payments-v1");
        let s = v["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&s), "score {s}");
        *scored.entry(id.to_string()).or_default() += 1;
    }
    assert_eq!(scored.len(), payments.len(), "every well-formed payment is scored");
    assert!(scored.values().all(|n| *n == 1), "and once");
    assert!(payments.iter().all(|p| scored.contains_key(&p.id)));
    assert!(
        scored.contains_key("7f3a9c2e-1b4d-4e8f-9a6b-0c5d2e1f3a4b"),
        "a UUID id with extra fields"
    );
    let letters = read_topic(&b, "payments-dlq", Duration::from_secs(60)).unwrap();
    assert_eq!(letters.len(), bad.len());
    for (payload, reason, field) in &bad {
        let l = letters
            .iter()
            .find(|l| l.payload.as_deref() == Some(*payload))
            .expect("a dead letter per bad payment");
        let header = |name: &str| {
            l.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .map(|v| String::from_utf8(v).unwrap())
                .unwrap_or_default()
        };
        assert_eq!(header("weir.dlq.reason"), *reason);
        assert!(
            header("weir.dlq.detail").contains(&format!("`{field}`")),
            "{}",
            header("weir.dlq.detail")
        );
    }

    // Features: the export of the same file equals the reference.
    let labels: HashMap<String, (bool, i64)> = read_topic(&b, "payment-labels", Duration::from_secs(60))
        .unwrap()
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap();
            (
                v["payment_id"].as_str().unwrap().to_string(),
                (v["is_fraud"].as_bool().unwrap(), r.timestamp_ms.unwrap()),
            )
        })
        .collect();
    let expected = reference(&payments, &labels);
    let parquet = dir.path().join("features.parquet");
    let out = run_weir(
        &[
            "features",
            "export",
            topology.to_str().unwrap(),
            "--brokers",
            &b,
            "--out",
            parquet.to_str().unwrap(),
        ],
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&parquet).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let names = [
        "amount",
        "hour",
        "weekend",
        "night",
        "country_FR",
        "country_DE",
        "country_GB",
        "country_risk",
        "card_nb_1d",
        "card_avg_amount_7d",
        "card_max_amount_1d",
        "card_min_amount_7d",
        "merchant_nb_7d",
        "merchant_risk_30d",
        "card_merchant_nb_30d",
    ];
    let time_of: HashMap<&str, i64> = payments.iter().map(|p| (p.id.as_str(), p.t)).collect();
    let (mut rows, mut risky) = (0, 0);
    for batch in reader {
        let batch = batch.unwrap();
        let ids = batch
            .column_by_name("payment_id")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone();
        let times = batch.column_by_name("event_time").unwrap();
        let times = times.as_any().downcast_ref::<TimestampMillisecondArray>().unwrap();
        let cols: Vec<Float64Array> = names
            .iter()
            .map(|n| {
                batch
                    .column_by_name(n)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .unwrap()
                    .clone()
            })
            .collect();
        for i in 0..batch.num_rows() {
            let id = ids.value(i);
            let want = &expected[id];
            assert_eq!(
                times.value(i),
                time_of[id],
                "payment {id}: the event time is occurred_at"
            );
            for (k, name) in names.iter().enumerate() {
                let got = cols[k].value(i);
                let ok = if name.contains("avg") || name.contains("risk_30d") || *name == "hour" {
                    (got - want[k]).abs() <= 1e-9 * want[k].abs().max(1.0)
                } else {
                    got == want[k]
                };
                assert!(ok, "payment {id} {name}: weir {got}, reference {}", want[k]);
            }
            risky += (want[13] > 0.0) as usize;
            rows += 1;
        }
    }
    assert_eq!(rows, payments.len(), "one training row per payment");
    assert!(risky > 100, "the merchant risk feature is exercised ({risky} non-zero)");
    drop(broker);
}
