//! `weir`: run, replay and benchmark fraud-scoring topologies.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// mimalloc (Microsoft's allocator, through the `mimalloc` crate): the feature store and the
/// dataflow allocate a feature vector per event and a buffer per batch; glibc's malloc spent a
/// tenth of `weir bench-features` consolidating and unlinking its free lists.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Args, Parser, Subcommand};
use weir_connectors::kafka::embedded::EmbeddedKafka;
use weir_runtime::reload::Reloader;
use weir_runtime::runner::{open_scorers, run_topology, RunOptions};
use weir_simulator::SimConfig;
use weir_tools::bench::{run_bench, BenchOptions};
use weir_tools::demo::{run_demo, summary, DemoOptions, LABELS_TOPIC};
use weir_tools::generate::Target;
use weir_topologies::config::{parse_start, TopologyConfig};

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Score Kafka event streams with ONNX models in micro-batches"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Running as one process of a timely cluster (overrides `[cluster]`; see the README's
/// "Cluster").
#[derive(Args, Clone, Debug, Default)]
struct ClusterArgs {
    /// This process's index among the peers (0-based).
    #[arg(long)]
    process: Option<usize>,
    /// Every process's host:port, comma-separated, in process order (this one included).
    #[arg(long, value_delimiter = ',', conflicts_with = "hostfile")]
    peers: Option<Vec<String>>,
    /// A file of host:port lines, one per process, in process order.
    #[arg(long)]
    hostfile: Option<PathBuf>,
}

impl ClusterArgs {
    fn to_override(&self) -> weir_topologies::config::ClusterOverride {
        weir_topologies::config::ClusterOverride {
            process: self.process,
            peers: self.peers.clone(),
            hostfile: self.hostfile.clone(),
        }
    }
}

#[derive(Args, Clone)]
struct SimArgs {
    /// Simulated days.
    #[arg(long, default_value_t = 25)]
    days: u32,
    /// Customers (cards).
    #[arg(long, default_value_t = 5000)]
    customers: usize,
    /// Terminals.
    #[arg(long, default_value_t = 10_000)]
    terminals: usize,
    /// Random seed.
    #[arg(long, default_value_t = 2018)]
    seed: u64,
    /// First day, RFC 3339 (default: the handbook's 2018-04-01).
    #[arg(long, default_value = "2018-04-01T00:00:00Z")]
    start: String,
}

impl SimArgs {
    fn config(&self) -> Result<SimConfig, String> {
        let start_ms = match parse_start(&self.start)? {
            weir_connectors::kafka::source::StartPosition::Timestamp(ms) => ms,
            _ => return Err(format!("--start `{}` is not an RFC 3339 time", self.start)),
        };
        Ok(SimConfig {
            n_customers: self.customers,
            n_terminals: self.terminals,
            n_days: self.days,
            start_ms,
            seed: self.seed,
            ..SimConfig::default()
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a topology: consume, score, produce, commit; until SIGINT/SIGTERM (or --until-end).
    Run {
        /// Topology file.
        topology: PathBuf,
        /// Bootstrap servers, overriding source.brokers.
        #[arg(long)]
        brokers: Option<String>,
        /// Stop at the end of the topic as seen at start (bounded; no offset commits).
        #[arg(long)]
        until_end: bool,
        /// Start position, overriding source.start: committed, earliest, latest or RFC 3339.
        #[arg(long)]
        start: Option<String>,
        /// Metrics endpoint address (host:port), overriding [metrics] listen.
        #[arg(long)]
        metrics_listen: Option<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Replay a bounded range of the source topic through the topology: a resumable batch job.
    ///
    /// The range is resolved to per-partition offsets when the job starts (by message timestamp
    /// for --from/--to); the feature store first replays the history the windows need
    /// ([backfill] warmup) without scoring it. Scores go to Parquet files or a Kafka topic; no
    /// consumer-group offset is touched. Ctrl-C drains and records progress; resume with
    /// --resume <job id>.
    Backfill {
        /// Topology file (not needed with --resume).
        #[arg(required_unless_present = "resume")]
        topology: Option<PathBuf>,
        /// Bootstrap servers, overriding source.brokers (or the job's, with --resume).
        #[arg(long)]
        brokers: Option<String>,
        /// First event time included, RFC 3339 (e.g. 2018-05-01T00:00:00Z).
        #[arg(long, requires = "to", conflicts_with_all = ["from_offsets", "resume"])]
        from: Option<String>,
        /// First event time excluded, RFC 3339.
        #[arg(long, requires = "from")]
        to: Option<String>,
        /// First offsets included, partition:offset[,partition:offset...]; only these partitions.
        #[arg(long, conflicts_with = "resume")]
        from_offsets: Option<String>,
        /// First offsets excluded, partition:offset,... (default: each partition's end).
        #[arg(long, requires = "from_offsets")]
        to_offsets: Option<String>,
        /// Where scores go: parquet:<directory> or kafka:<topic>.
        #[arg(long, required_unless_present = "resume")]
        sink: Option<String>,
        /// Resume an interrupted job by its id.
        #[arg(long)]
        resume: Option<String>,
        /// Directory of job state files.
        #[arg(long, default_value = ".weir/backfill")]
        state_dir: PathBuf,
        /// Id of the new job (letters, digits, `-`, `_`; default: generated). Required on a
        /// cluster: the same on every process.
        #[arg(long, conflicts_with = "resume")]
        job_id: Option<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Generate simulated card transactions (Fraud Detection Handbook, ch. 3) to Kafka or JSONL.
    Generate {
        #[command(flatten)]
        sim: SimArgs,
        /// Bootstrap servers (write to Kafka).
        #[arg(long, conflicts_with = "out")]
        brokers: Option<String>,
        /// Transactions topic.
        #[arg(long, default_value = "transactions")]
        topic: String,
        /// Labels topic.
        #[arg(long, default_value = LABELS_TOPIC)]
        labels_topic: String,
        /// Write JSON Lines here instead (labels to <out>.labels.jsonl).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Malformed events to mix in (dead-letter demos and tests).
        #[arg(long, default_value_t = 0)]
        malformed: u64,
        /// Event schema written: `handbook` (topologies/fraud-scoring.toml) or `payments`
        /// (topologies/card-payments.toml).
        #[arg(long, value_enum, default_value = "handbook")]
        dialect: weir_tools::generate::Dialect,
        /// Most transactions per second (Kafka only); default: as fast as possible.
        #[arg(long)]
        rate: Option<f64>,
        /// Stamp each transaction with the wall clock when it is sent instead of its simulated
        /// time (Kafka only): live traffic, so that end-to-end latency is meaningful.
        #[arg(long, requires = "brokers")]
        realtime: bool,
    },
    /// Run the whole path on an embedded broker and print a summary.
    Demo {
        /// Topology file (default: `topologies/fraud-scoring.toml` in the working directory or in
        /// the workspace the `weir` binary was built in).
        #[arg(long)]
        topology: Option<PathBuf>,
        #[command(flatten)]
        sim: SimArgs,
        /// Malformed events mixed into the stream.
        #[arg(long, default_value_t = 4)]
        malformed: u64,
        /// Partitions of each topic (the embedded broker keeps at most 5 MiB per partition).
        #[arg(long, default_value_t = 16)]
        partitions: i32,
    },
    /// Sweep micro-batch windows over recorded traffic replayed at a fixed rate; write a table
    /// (CSV, Markdown) and a plot (SVG) of p99 latency against throughput, and recommend the
    /// fastest window within the p99 target.
    Tune {
        /// Topology file (default: `topologies/fraud-scoring.toml` in the working directory or in
        /// the workspace the `weir` binary was built in).
        topology: Option<PathBuf>,
        /// Recording: JSON Lines transactions (as `weir generate --out` writes).
        #[arg(long, conflicts_with = "brokers")]
        input: Option<PathBuf>,
        /// Recording: every message of --topic on these brokers, in timestamp order.
        #[arg(long)]
        brokers: Option<String>,
        /// Topic of the recording (with --brokers).
        #[arg(long, default_value = "transactions")]
        topic: String,
        /// Without --input or --brokers: the demo's simulated transactions.
        #[command(flatten)]
        sim: SimArgs,
        /// max_batch_rows values, comma-separated.
        #[arg(long, default_value = "64,256,1024")]
        max_batch_rows: String,
        /// max_wait values, comma-separated durations; `auto` adds the adaptive window (target
        /// --p99, cap the largest max_batch_rows) to the same chart.
        #[arg(long, default_value = "1ms,5ms,20ms")]
        max_wait: String,
        /// Offered load, events per second.
        #[arg(long, default_value_t = 5000.0)]
        rate: f64,
        /// Measured events per point.
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        /// Events replayed and scored before measuring each point (group join, model warm-up).
        #[arg(long, default_value_t = 500)]
        prime: usize,
        /// p99 latency target (Kafka message timestamp to score acknowledgement).
        #[arg(long, default_value = "20ms")]
        p99: String,
        /// Output directory for tune.csv, tune.md and tune.svg.
        #[arg(long, default_value = "tune")]
        out: PathBuf,
    },
    /// Measure raw ONNX Runtime, raw Kafka I/O and the pipeline, side by side.
    Bench {
        /// Topology file (default: `topologies/fraud-scoring.toml` in the working directory or in
        /// the workspace the `weir` binary was built in).
        #[arg(long)]
        topology: Option<PathBuf>,
        #[command(flatten)]
        sim: SimArgs,
        /// Partitions of each topic (the embedded broker keeps at most 5 MiB per partition).
        #[arg(long, default_value_t = 16)]
        partitions: i32,
        /// Seconds of the raw ONNX Runtime loop.
        #[arg(long, default_value_t = 3.0)]
        onnx_seconds: f64,
        /// Run against this real broker (fresh topics named after the process id) instead of
        /// the embedded one.
        #[arg(long)]
        brokers: Option<String>,
    },
    /// Read-to-acknowledgement latency of the topology against a bare consumer + producer, on
    /// the same broker at the same offered rate, in one run.
    BenchLatency {
        /// Topology file (default: `topologies/fraud-scoring.toml` in the working directory or in
        /// the workspace the `weir` binary was built in).
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Run against this real broker (fresh topics named after the process id) instead of
        /// the embedded one.
        #[arg(long)]
        brokers: Option<String>,
        /// Offered load, events per second.
        #[arg(long, default_value_t = 5000.0)]
        rate: f64,
        /// Measured traffic, seconds (after 2 s of priming traffic).
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// Step load instead: the topology alone through phases of these offered loads
        /// (events/s, comma-separated, e.g. 2000,20000,2000), each measured after
        /// --adapt-seconds; with `max_wait = "auto"` in the topology, the adaptive window.
        #[arg(long, value_delimiter = ',')]
        steps: Option<Vec<f64>>,
        /// Length of each step, seconds.
        #[arg(long, default_value_t = 15.0)]
        step_seconds: f64,
        /// Seconds of adaptation at the start of each step, not measured.
        #[arg(long, default_value_t = 5.0)]
        adapt_seconds: f64,
    },
    /// One topology as 1 process x 2 workers and as a cluster of 2 processes x 1 worker (two
    /// threads, loopback TCP) on the same events: throughput of each, and the bytes and core-µs
    /// per event the exchange between processes costs.
    BenchCluster {
        /// Topology file (default: `topologies/fraud-scoring.toml` in the working directory or in
        /// the workspace the `weir` binary was built in).
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Simulated days.
        #[arg(long, default_value_t = 25)]
        days: u32,
        /// Customers (cards).
        #[arg(long, default_value_t = 5000)]
        customers: usize,
        /// Terminals.
        #[arg(long, default_value_t = 10_000)]
        terminals: usize,
        /// Partitions of the source topic (the embedded broker keeps at most 5 MiB per partition).
        #[arg(long, default_value_t = 16)]
        partitions: i32,
        /// Runs of each shape, alternating (the best of each counts).
        #[arg(long, default_value_t = 2)]
        rounds: usize,
    },
    /// Score models with the CUDA execution provider and with CPU through weir's inference code
    /// at several batch sizes: rows/s, the provider registered, the largest score difference.
    /// Exit status 4 when CUDA is unavailable (see the README's "CUDA").
    CheckCuda {
        /// Topology whose features, input and output the models take (default:
        /// `topologies/fraud-scoring.toml`).
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Models (default: the topology's model and `models/mlp-check/model.onnx`).
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<PathBuf>>,
        /// Batch sizes, rows.
        #[arg(long, value_delimiter = ',', default_value = "256,4096,65536")]
        batches: Vec<usize>,
        /// Seconds of scoring per model, provider and batch size (at least 3 calls).
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
    /// Measure the feature store alone: events/s and resident memory over N simulated events.
    BenchFeatures {
        /// Topology file, for its feature definitions (default: `topologies/fraud-scoring.toml` in
        /// the working directory or in the workspace the `weir` binary was built in).
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Transactions to feed.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Timely workers.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Customers.
        #[arg(long, default_value_t = 5000)]
        customers: usize,
        /// Terminals.
        #[arg(long, default_value_t = 10_000)]
        terminals: usize,
    },
    /// Decode throughput on one core: the typed handbook decoder against the declared-schema
    /// decoder with the handbook's schema, on the same simulated JSON transactions.
    BenchDecode {
        /// Transactions to decode (per run; best of five interleaved runs each).
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
    },
    /// Print a consumer group's committed offsets: one line "partition offset" per partition.
    Offsets {
        /// Bootstrap servers.
        #[arg(long)]
        brokers: String,
        /// Consumer group.
        #[arg(long)]
        group: String,
        /// Topic.
        #[arg(long, default_value = "transactions")]
        topic: String,
    },
    /// Start an embedded (mock) Kafka broker and keep it running until SIGINT/SIGTERM.
    Broker {
        /// Topics to create, as name:partitions.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "transactions:4,fraud-labels:4,scores:4,transactions-dlq:1"
        )]
        topics: Vec<String>,
        /// Write the bootstrap servers to this file once ready.
        #[arg(long)]
        bootstrap_file: Option<PathBuf>,
    },
    /// Feature store: export point-in-time-correct training sets.
    Features {
        #[command(subcommand)]
        command: FeaturesCommand,
    },
    /// Validate a topology file and its model without connecting to Kafka.
    Check {
        /// Topology file.
        topology: PathBuf,
    },
}

#[derive(Subcommand)]
enum FeaturesCommand {
    /// Write features (as of each transaction's time) and labels to a Parquet file.
    Export {
        /// Topology file (feature definitions, topics).
        topology: PathBuf,
        /// Output Parquet file.
        #[arg(long)]
        out: PathBuf,
        /// Bootstrap servers.
        #[arg(long, conflicts_with = "generate_days")]
        brokers: Option<String>,
        /// First event time included, RFC 3339.
        #[arg(long)]
        from: Option<String>,
        /// First event time excluded, RFC 3339.
        #[arg(long)]
        to: Option<String>,
        /// Generate this many simulated days onto an embedded broker first.
        #[arg(long)]
        generate_days: Option<u32>,
        /// Seed of the generated data.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// On a cluster, each process writes the rows its workers computed to its own --out.
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

fn rfc3339_ms(s: &str, flag: &str) -> Result<i64, String> {
    match parse_start(s) {
        Ok(weir_connectors::kafka::source::StartPosition::Timestamp(ms)) => Ok(ms),
        _ => Err(format!(
            "{flag}: `{s}` is not an RFC 3339 time such as 2018-05-01T00:00:00Z"
        )),
    }
}

/// The default topology of the tools: `topologies/fraud-scoring.toml` in the working directory,
/// else beside the binary (`target/<profile>/weir` -> the workspace root), else in the workspace
/// it was built from.
fn default_topology(given: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return Ok(p);
    }
    const REL: &str = "topologies/fraud-scoring.toml";
    let mut tried = vec![std::env::current_dir()
        .map(|d| d.join(REL))
        .unwrap_or_else(|_| PathBuf::from(REL))];
    if let Ok(exe) = std::env::current_exe() {
        tried.extend(exe.ancestors().skip(1).take(4).map(|a| a.join(REL)));
    }
    // The workspace this binary was built from (its target dir may be elsewhere, e.g. a cache).
    if let Some(ws) = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        tried.push(ws.join(REL));
    }
    tried.iter().find(|p| p.exists()).cloned().ok_or_else(|| {
        format!(
            "no topology given and `{REL}` not found (looked at {}); pass one with --topology",
            tried
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Logs to stderr with `WEIR_LOG`'s filter, else `default`. ONNX Runtime's own logs (through
/// ort's `tracing` feature: ~86 INFO lines per session) are kept to warnings unless `WEIR_LOG`
/// names `ort`.
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},ort=warn")));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: log files and collectors get plain `key=value` fields.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// SIGINT/SIGTERM set a flag; a second SIGINT exits at once.
fn shutdown_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone());
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    flag
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), String> = match cli.command {
        Command::Run {
            topology,
            brokers,
            until_end,
            start,
            metrics_listen,
            cluster,
        } => {
            init_logging("info");
            (|| {
                let mut cfg = TopologyConfig::load(&topology).map_err(|e| e.to_string())?;
                cluster.to_override().apply(&mut cfg).map_err(|e| e.to_string())?;
                if let Some(addr) = metrics_listen {
                    cfg.metrics.listen = addr;
                }
                let start = start
                    .as_deref()
                    .map(parse_start)
                    .transpose()
                    .map_err(|e| format!("--start: {e}"))?;
                let flow = Arc::new(weir_runtime::runner::flow_control(&cfg, cfg.batching.max_batch_rows));
                let flag = shutdown_flag();
                let f = flow.clone();
                std::thread::spawn(move || loop {
                    if flag.load(Ordering::Acquire) {
                        tracing::info!("shutdown requested: draining in-flight batches");
                        f.request_shutdown();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                });
                // Live reload of [batching]: file edits (polled) or SIGHUP.
                let window = Arc::new(weir_operators::micro_batch::SharedWindow::new(cfg.batching.window()));
                let metrics = Arc::new(weir_core::Metrics::for_process(
                    &cfg.topology.name,
                    (cfg.cluster.peers.len() > 1).then_some(cfg.cluster.process),
                ));
                let sighup = Arc::new(AtomicBool::new(false));
                let _ = signal_hook::flag::register(signal_hook::consts::SIGHUP, sighup.clone());
                // Hot swap of [model]: the reloader installs a valid new model here.
                let switch = Arc::new(weir_operators::model_switch::ModelSwitch::new(
                    cfg.model.inference_threads,
                    &cfg.model.version,
                ));
                let _reloader = Reloader::new(topology.clone(), &cfg, window.clone(), flow.clone(), metrics.clone())
                    .with_model_switch(&cfg, switch.clone(), None)
                    .spawn(sighup);
                let report = run_topology(
                    &cfg,
                    RunOptions {
                        brokers,
                        mode: if until_end {
                            weir_runtime::runner::Mode::UntilEnd
                        } else {
                            weir_runtime::runner::Mode::Live
                        },
                        start,
                        flow: Some(flow),
                        metrics: Some(metrics),
                        live_window: Some(window),
                        model_switch: Some(switch),
                        ..RunOptions::default()
                    },
                )
                .map_err(|e| e.to_string())?;
                println!(
                    "events {} scored {} dead letters {} batches {} (mean {:.1} rows) in {:.2} s = {:.0} events/s; latency p50 {:.2} ms p99 {:.2} ms; sink {}",
                    report.events_in,
                    report.scored,
                    report.dead_letters.values().sum::<u64>(),
                    report.batches,
                    report.mean_batch_rows,
                    report.elapsed.as_secs_f64(),
                    report.events_per_second(),
                    report.p50_latency_us as f64 / 1000.0,
                    report.p99_latency_us as f64 / 1000.0,
                    report.sink,
                );
                println!(
                    "stages p50/p99 ms: {}",
                    report
                        .stages_us
                        .iter()
                        .map(|(s, p50, p99)| format!("{s} {:.2}/{:.2}", *p50 as f64 / 1e3, *p99 as f64 / 1e3))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                Ok(())
            })()
        }
        Command::Backfill {
            topology,
            brokers,
            from,
            to,
            from_offsets,
            to_offsets,
            sink,
            resume,
            state_dir,
            job_id,
            cluster,
        } => {
            init_logging("warn");
            (|| {
                use weir_jobs::backfill::{parse_offsets, run_backfill, BackfillOptions, RangeSpec, SinkSpec};
                let range = match (&from, &to, &from_offsets) {
                    (Some(f), Some(t), None) => Some(RangeSpec::Time {
                        from_ms: rfc3339_ms(f, "--from")?,
                        to_ms: rfc3339_ms(t, "--to")?,
                    }),
                    (None, None, Some(f)) => Some(RangeSpec::Offsets {
                        from: parse_offsets(f).map_err(|e| format!("--from-offsets: {e}"))?,
                        to: to_offsets
                            .as_deref()
                            .map(parse_offsets)
                            .transpose()
                            .map_err(|e| format!("--to-offsets: {e}"))?
                            .unwrap_or_default(),
                    }),
                    _ if resume.is_some() => None,
                    _ => return Err("give --from and --to (RFC 3339), or --from-offsets".to_string()),
                };
                let sink = sink
                    .as_deref()
                    .map(SinkSpec::parse)
                    .transpose()
                    .map_err(|e| format!("--sink: {e}"))?;
                let opts = BackfillOptions {
                    topology,
                    brokers,
                    range,
                    sink,
                    resume,
                    state_dir,
                    progress: true,
                    shutdown: Some(shutdown_flag()),
                    on_start: Some(Arc::new(|job| {
                        eprintln!(
                            "backfill job {}: {} events in range ({}), {} completed earlier, reading {} events with warm-up",
                            job.job_id,
                            job.range_events(),
                            job.range,
                            job.completed_events(),
                            job.read.values().map(|(a, b)| b - a).sum::<i64>(),
                        );
                    })),
                    config: None,
                    cluster: cluster.to_override(),
                    job_id,
                };
                let report = run_backfill(&opts).map_err(|e| e.to_string())?;
                print!("{}", report.render());
                if report.job.status != "done" {
                    return Err(format!(
                        "backfill {} {}: resume with `weir backfill --resume {}`",
                        report.job.job_id, report.job.status, report.job.job_id
                    ));
                }
                Ok(())
            })()
        }
        Command::Generate {
            sim,
            brokers,
            topic,
            labels_topic,
            out,
            malformed,
            dialect,
            rate,
            realtime,
        } => {
            init_logging("warn");
            (|| {
                let config = sim.config()?;
                let target = match (brokers, out) {
                    (Some(brokers), None) => Target::Kafka {
                        brokers,
                        topic,
                        labels_topic,
                        realtime,
                    },
                    (None, Some(out)) => {
                        let labels_path = out.with_extension("labels.jsonl");
                        Target::Jsonl { path: out, labels_path }
                    }
                    _ => return Err("give --brokers (Kafka) or --out (JSONL file)".to_string()),
                };
                let pb = indicatif::ProgressBar::new(config.n_days as u64);
                let s =
                    weir_tools::generate::generate_as(dialect, config, &target, malformed, rate, |_| {}, |_| pb.inc(1))
                        .map_err(|e| e.to_string())?;
                pb.finish_and_clear();
                println!(
                    "generated {} transactions ({} fraudulent), {} malformed events, {} labels ({} not yet due, not sent) -> {target:?}",
                    s.transactions, s.frauds, s.malformed, s.labels, s.labels_not_due
                );
                Ok(())
            })()
        }
        Command::Demo {
            topology,
            sim,
            malformed,
            partitions,
        } => {
            init_logging("warn");
            (|| {
                let opts = DemoOptions {
                    topology: default_topology(topology)?,
                    sim: sim.config()?,
                    malformed,
                    partitions,
                    progress: true,
                };
                let report = run_demo(&opts).map_err(|e| e.to_string())?;
                print!("{}", summary(&report));
                if report.missing > 0 || report.duplicates > 0 {
                    return Err(format!(
                        "{} transactions missing, {} duplicated",
                        report.missing, report.duplicates
                    ));
                }
                Ok(())
            })()
        }
        Command::Tune {
            topology,
            input,
            brokers,
            topic,
            sim,
            max_batch_rows,
            max_wait,
            rate,
            events,
            prime,
            p99,
            out,
        } => {
            init_logging("warn");
            (|| {
                use weir_tools::tune::{
                    parse_durations, parse_rows, recommendation_line, run_tune, Recording, TuneOptions,
                };
                let opts = TuneOptions {
                    topology: default_topology(topology)?,
                    max_batch_rows: parse_rows(&max_batch_rows).map_err(|e| e.to_string())?,
                    max_wait: parse_durations(
                        &max_wait
                            .split(',')
                            .filter(|w| w.trim() != "auto")
                            .collect::<Vec<_>>()
                            .join(","),
                    )
                    .map_err(|e| e.to_string())?,
                    auto: max_wait.split(',').any(|w| w.trim() == "auto"),
                    rate,
                    events,
                    prime,
                    p99_target: humantime::parse_duration(&p99).map_err(|e| format!("--p99 `{p99}`: {e}"))?,
                    out,
                    progress: true,
                };
                let recording = match (input, brokers) {
                    (Some(path), _) => Recording::from_jsonl(&path),
                    (None, Some(b)) => Recording::from_topic(&b, &topic),
                    (None, None) => Ok(Recording::simulated(sim.config()?, events + prime)),
                }
                .map_err(|e| e.to_string())?;
                let report = run_tune(&opts, &recording).map_err(|e| e.to_string())?;
                for p in &report.points {
                    println!(
                        "window {:>24}: offered {:>7.0}/s, scored {:>7.0} events/s, p50 {:>7.1} ms, p99 {:>7.1} ms, mean batch {:>6.1} rows{}",
                        weir_tools::tune::window_label(p),
                        p.offered,
                        p.throughput,
                        p.p50_ms,
                        p.p99_ms,
                        p.mean_batch_rows,
                        if p.meets_target { "" } else { "  (over target)" }
                    );
                }
                println!(
                    "{}",
                    recommendation_line(&report.points, report.recommended, opts.p99_target)
                );
                for f in &report.files {
                    println!("wrote {}", f.display());
                }
                Ok(())
            })()
        }
        Command::Bench {
            topology,
            sim,
            partitions,
            onnx_seconds,
            brokers,
        } => {
            init_logging("warn");
            (|| {
                let opts = BenchOptions {
                    topology: default_topology(topology)?,
                    sim: sim.config()?,
                    partitions,
                    onnx_seconds,
                    brokers,
                };
                let report = run_bench(&opts).map_err(|e| e.to_string())?;
                print!("{}", report.render());
                Ok(())
            })()
        }
        Command::BenchLatency {
            topology,
            brokers,
            rate,
            seconds,
            steps,
            step_seconds,
            adapt_seconds,
        } => {
            init_logging("warn");
            (|| {
                if let Some(rates) = steps {
                    let opts = weir_tools::latency::StepOptions {
                        topology: default_topology(topology)?,
                        brokers,
                        rates,
                        phase_seconds: step_seconds,
                        adapt_seconds,
                    };
                    let report = weir_tools::latency::run_step_bench(&opts).map_err(|e| e.to_string())?;
                    print!("{}", report.render());
                    return Ok(());
                }
                let opts = weir_tools::latency::LatencyOptions {
                    topology: default_topology(topology)?,
                    brokers,
                    rate,
                    seconds,
                    prime: 2.0,
                };
                let report = weir_tools::latency::run_latency_bench(&opts).map_err(|e| e.to_string())?;
                print!("{}", report.render());
                Ok(())
            })()
        }
        Command::BenchDecode { events } => {
            init_logging("warn");
            (|| {
                let r = weir_tools::bench::run_decode_bench(events).map_err(|e| e.to_string())?;
                println!(
                    "decode, {} JSON transactions, one core: typed decoder {:.0} events/s; declared schema {:.0} events/s; ratio {:.3} (target >= 0.9)",
                    r.events,
                    r.typed_per_s,
                    r.schema_per_s,
                    r.ratio()
                );
                Ok(())
            })()
        }
        Command::BenchCluster {
            topology,
            days,
            customers,
            terminals,
            partitions,
            rounds,
        } => {
            init_logging("warn");
            (|| {
                let opts = weir_tools::cluster_bench::ClusterBenchOptions {
                    topology: default_topology(topology)?,
                    sim: SimConfig {
                        n_days: days,
                        n_customers: customers,
                        n_terminals: terminals,
                        ..SimConfig::default()
                    },
                    partitions,
                    rounds,
                };
                let r = weir_tools::cluster_bench::run_cluster_bench(&opts).map_err(|e| e.to_string())?;
                print!("{}", r.render());
                Ok(())
            })()
        }
        Command::CheckCuda {
            topology,
            models,
            batches,
            seconds,
        } => {
            init_logging("warn");
            let r = (|| {
                let topology = default_topology(topology)?;
                let cfg = TopologyConfig::load(&topology).map_err(|e| e.to_string())?;
                let models = match models {
                    Some(m) => m,
                    None => {
                        let mlp = topology
                            .parent()
                            .and_then(|t| t.parent())
                            .map(|root| root.join("models/mlp-check/model.onnx"))
                            .unwrap_or_else(|| PathBuf::from("models/mlp-check/model.onnx"));
                        vec![cfg.model_path(), mlp]
                    }
                };
                let opts = weir_tools::cuda_check::CudaCheckOptions {
                    topology,
                    models,
                    batches,
                    seconds,
                    runtime: None,
                };
                weir_tools::cuda_check::run_cuda_check(&opts).map_err(|e| e.to_string())
            })();
            return match r {
                Ok(report) => {
                    print!("{}", report.render());
                    ExitCode::from(report.exit_status())
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Command::BenchFeatures {
            topology,
            events,
            workers,
            customers,
            terminals,
        } => {
            init_logging("warn");
            (|| {
                let sim = SimConfig {
                    n_customers: customers,
                    n_terminals: terminals,
                    n_days: 100_000,
                    ..SimConfig::default()
                };
                let topology = default_topology(topology)?;
                let r =
                    weir_tools::bench::run_feature_bench(&topology, sim, events, workers).map_err(|e| e.to_string())?;
                println!(
                    "feature store: {} transactions + {} labels, {customers} customers / {terminals} terminals, {} workers: {:.2} s = {:.0} events/s = {:.0} events/s per worker; resident memory before {:.0} MiB, peak {:.0} MiB: {:.1} bytes per transaction inside the longest window ({} transactions)",
                    r.events,
                    r.labels,
                    r.workers,
                    r.seconds,
                    r.events as f64 / r.seconds,
                    r.events_per_second_per_worker(),
                    r.rss_before as f64 / (1 << 20) as f64,
                    r.rss_peak as f64 / (1 << 20) as f64,
                    r.bytes_per_event_in_window(),
                    r.events_in_window,
                );
                Ok(())
            })()
        }
        Command::Offsets { brokers, group, topic } => {
            init_logging("warn");
            (|| {
                let offsets =
                    weir_connectors::kafka::admin::committed_offsets(&brokers, &group, &topic, Duration::from_secs(10))
                        .map_err(|e| e.to_string())?;
                for (p, o) in offsets {
                    println!("{p} {}", o.map(|o| o.to_string()).unwrap_or_else(|| "-".into()));
                }
                Ok(())
            })()
        }
        Command::Broker { topics, bootstrap_file } => {
            init_logging("info");
            (|| {
                let kafka = EmbeddedKafka::start().map_err(|e| e.to_string())?;
                for t in &topics {
                    let (name, parts) = t.split_once(':').unwrap_or((t.as_str(), "1"));
                    let parts: i32 = parts
                        .parse()
                        .map_err(|_| format!("--topics: `{t}` is not name:partitions"))?;
                    kafka.create_topic(name, parts).map_err(|e| e.to_string())?;
                }
                let servers = kafka.bootstrap_servers();
                if let Some(f) = &bootstrap_file {
                    std::fs::write(f, &servers).map_err(|e| format!("cannot write `{}`: {e}", f.display()))?;
                }
                println!("{servers}");
                let flag = shutdown_flag();
                while !flag.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                drop(kafka);
                Ok(())
            })()
        }
        Command::Features {
            command:
                FeaturesCommand::Export {
                    topology,
                    out,
                    brokers,
                    from,
                    to,
                    generate_days,
                    seed,
                    cluster,
                },
        } => {
            init_logging("warn");
            (|| {
                let opts = weir_tools::export::ExportOptions {
                    topology,
                    brokers,
                    from_ms: from.as_deref().map(|s| rfc3339_ms(s, "--from")).transpose()?,
                    to_ms: to.as_deref().map(|s| rfc3339_ms(s, "--to")).transpose()?,
                    out: out.clone(),
                    generate: generate_days.map(|n_days| SimConfig {
                        n_days,
                        seed,
                        ..SimConfig::default()
                    }),
                    cluster: cluster.to_override(),
                };
                let r = weir_tools::export::export_training_set(&opts).map_err(|e| e.to_string())?;
                println!(
                    "wrote {} rows ({} fraudulent, {} unlabelled) x {} features to {} in {:.1} s",
                    r.rows,
                    r.frauds,
                    r.unlabelled,
                    r.features.len(),
                    out.display(),
                    r.elapsed.as_secs_f64()
                );
                Ok(())
            })()
        }
        Command::Check { topology } => {
            init_logging("warn");
            (|| {
                let cfg = TopologyConfig::load(&topology).map_err(|e| e.to_string())?;
                cfg.check_clients().map_err(|e| e.to_string())?;
                let (_, provider) = open_scorers(&cfg, None).map_err(|e| e.to_string())?;
                println!(
                    "ok: topology `{}`, model {} ({}), {} features, execution provider {}",
                    cfg.topology.name,
                    cfg.model_path().display(),
                    cfg.model.version,
                    cfg.model.features.len(),
                    provider.name()
                );
                Ok(())
            })()
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
