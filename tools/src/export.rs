//! `weir features export`: a point-in-time-correct training set from the topology's own feature
//! definitions.
//!
//! Runs the topology's sources (bounded, from the earliest offset, no commits) and feature
//! operator, exactly as scoring does, and writes one Parquet row per transaction whose event
//! time is in `[from, to)`: its features as of its own time, and its final label (read from the
//! labels topic; `-1` if none arrived). Training on this file and scoring with the topology
//! therefore see the same feature values: no training/serving skew.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::ProbeHandle;
use weir_connectors::kafka::admin::read_topic;
use weir_connectors::kafka::embedded::EmbeddedKafka;
use weir_connectors::kafka::source::{SourceShared, StartPosition};
use weir_connectors::parquet::features::{TrainingRow, TrainingSetWriter};
use weir_core::{DeliveryLedger, FlowControl, Metrics};
use weir_operators::decode::DecodeLimits;
use weir_simulator::SimConfig;

use crate::demo::DemoError;
use crate::generate::Target;
use weir_runtime::runner::{drive_worker, feature_dataflow, labels_source, source_config, FeaturePlan};
use weir_topologies::config::TopologyConfig;

/// Options of an export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Topology file (features, topics).
    pub topology: PathBuf,
    /// Brokers; `None` with `generate` = an embedded broker.
    pub brokers: Option<String>,
    /// First event time included, ms since the Unix epoch.
    pub from_ms: Option<i64>,
    /// First event time excluded, ms since the Unix epoch.
    pub to_ms: Option<i64>,
    /// Output Parquet file.
    pub out: PathBuf,
    /// Generate this simulated data onto an embedded broker first.
    pub generate: Option<SimConfig>,
    /// `--process`/`--peers`/`--hostfile`: export on a cluster.
    pub cluster: weir_topologies::config::ClusterOverride,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    /// Rows written.
    pub rows: usize,
    /// Of which labelled fraudulent.
    pub frauds: usize,
    /// Rows without a label.
    pub unlabelled: usize,
    /// Feature columns, in order.
    pub features: Vec<String>,
    /// Seconds spent computing and writing.
    pub elapsed: Duration,
}

/// Exports a training set.
///
/// # Errors
/// [`DemoError`] from the configuration, the broker or the output file.
pub fn export_training_set(opts: &ExportOptions) -> Result<ExportReport, DemoError> {
    let mut cfg = TopologyConfig::load(&opts.topology)?;
    opts.cluster.apply(&mut cfg)?;
    let mut _embedded = None;
    let brokers = match (&opts.brokers, &opts.generate) {
        (Some(b), None) => b.clone(),
        (None, Some(sim)) => {
            let kafka = EmbeddedKafka::start()?;
            // Enough partitions for the mock broker's 5 MiB per partition retention (payments
            // dialect events are about 280 bytes, the handbook's 100).
            let partitions = ((sim.n_customers as u64 * 2 * sim.n_days as u64 * 320) / (3 << 20) + 4) as i32;
            kafka.create_topic(&cfg.source.topic, partitions)?;
            kafka.create_topic(&cfg.labels.topic, partitions)?;
            let b = kafka.bootstrap_servers();
            crate::generate::generate_as(
                crate::generate::Dialect::of(&cfg),
                sim.clone(),
                &Target::Kafka {
                    brokers: b.clone(),
                    topic: cfg.source.topic.clone(),
                    labels_topic: cfg.labels.topic.clone(),
                    realtime: false,
                },
                0,
                None,
                |_| {},
                |_| {},
            )?;
            // The mock broker drops what exceeds its retention: an export must not be short.
            crate::demo::check_not_truncated(&b, &cfg.source.topic)?;
            crate::demo::check_not_truncated(&b, &cfg.labels.topic)?;
            _embedded = Some(kafka);
            b
        }
        _ => {
            return Err(DemoError::Usage(
                "give --brokers, or --generate-days for an embedded broker".into(),
            ))
        }
    };
    let started = Instant::now();
    let plan = FeaturePlan::of(&cfg);
    let spec = plan.spec.clone();
    // The final label of each event (the last one on the topic), by join key.
    let mut labels: HashMap<u64, u8> = HashMap::new();
    if let Some((schema, layout)) = &plan.labels {
        for r in read_topic(&brokers, &cfg.labels.topic, Duration::from_secs(600))? {
            let Some(values) = r.payload.as_deref().and_then(|p| schema.decode(p).ok()) else {
                continue;
            };
            if let Ok(l) = spec.label_row(layout, &values, 0) {
                labels.insert(l.join, l.label);
            }
        }
    }
    let names = spec.names();
    let key_names: Vec<String> = spec.stages().iter().map(|s| s.name.clone()).collect();
    let label_name = if plan.labels.is_some() {
        cfg.labels.label.clone()
    } else {
        "label".into()
    };
    let writer = Arc::new(Mutex::new(Some(TrainingSetWriter::create(
        &opts.out,
        &cfg.id_column(),
        &key_names,
        &names,
        &label_name,
    )?)));
    let counts = Arc::new(Mutex::new((0usize, 0usize, 0usize)));
    let error: Arc<Mutex<Option<String>>> = Arc::default();
    let workers = cfg.topology.workers;
    let source = source_config(&cfg, &brokers, true, Some(StartPosition::Earliest));
    let source = weir_connectors::kafka::source::KafkaSourceConfig {
        commit: false,
        ..source
    };
    let labels_cfg = labels_source(&cfg, &source);
    let n_sources = workers * (1 + labels_cfg.is_some() as usize);
    // In a cluster, each process writes the rows its own workers computed to its own `out`:
    // the training set is the union of the processes' files.
    let peers = weir_runtime::cluster::Peers::of(&cfg.cluster);
    let flow = Arc::new(FlowControl::new(usize::MAX));
    let shared = SourceShared {
        ledger: Arc::new(DeliveryLedger::new()),
        flow: flow.clone(),
        metrics: Arc::new(Metrics::new(&cfg.topology.name)),
        watermarks: Default::default(),
        positions: Default::default(),
        cluster: peers.as_ref().map(|p| p.local_workers(workers)),
    };
    // History is exported whatever the wall clock says.
    let limits = DecodeLimits {
        max_future_ms: i64::MAX / 2,
        ..cfg.decode_limits()
    };
    let plan = FeaturePlan {
        decoder: plan.decoder.with_limits(limits),
        ..plan
    };
    let (from, to) = (opts.from_ms.unwrap_or(i64::MIN), opts.to_ms.unwrap_or(i64::MAX));
    let labels = Arc::new(labels);
    let (w2, c2, e2) = (writer.clone(), counts.clone(), error.clone());
    let guards = weir_runtime::cluster::execute(peers.as_ref(), workers, move |worker| {
        let probe = ProbeHandle::new();
        let (writer, counts, error, labels) = (w2.clone(), c2.clone(), e2.clone(), labels.clone());
        let built = worker.dataflow::<u64, _, _>(|scope| -> Result<(), String> {
            let (values, letters) =
                feature_dataflow(scope, &source, labels_cfg.as_ref(), &plan, &shared, &Default::default())?;
            letters
                .inspect(|l| tracing::warn!(reason = %l.reason, offset = l.lineage.offset, "malformed event skipped"))
                .probe_with(&probe);
            values
                .inspect(move |fv| {
                    if fv.meta.event_time_ms < from || fv.meta.event_time_ms >= to {
                        return;
                    }
                    let label = labels.get(&weir_feature_store::definition::id_key(&fv.meta.id));
                    let row = TrainingRow {
                        id: fv.meta.id.clone(),
                        event_time_ms: fv.meta.event_time_ms,
                        keys: fv.keys().to_vec(),
                        features: fv.values.clone(),
                        label: label.map_or(-1, |l| *l as i8),
                    };
                    let mut c = counts.lock().unwrap();
                    c.0 += 1;
                    c.1 += (row.label == 1) as usize;
                    c.2 += (row.label == -1) as usize;
                    drop(c);
                    if let Some(w) = writer.lock().unwrap().as_mut() {
                        if let Err(e) = w.write(row) {
                            error.lock().unwrap().get_or_insert(e.to_string());
                        }
                    }
                })
                .probe_with(&probe);
            Ok(())
        });
        drive_worker(worker, built, &probe, &shared.flow, n_sources, workers)
    })
    .map_err(DemoError::Usage)?;
    for r in guards.join() {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => return Err(DemoError::Usage(e)),
        }
    }
    if let Some(e) = error.lock().unwrap().take() {
        return Err(DemoError::Usage(e));
    }
    let w = writer.lock().unwrap().take().expect("writer");
    w.close()?;
    let (rows, frauds, unlabelled) = *counts.lock().unwrap();
    Ok(ExportReport {
        rows,
        frauds,
        unlabelled,
        features: names,
        elapsed: started.elapsed(),
    })
}
