//! `weir bench-cluster`: one topology as 1 process x 2 workers and as a timely cluster of
//! 2 processes x 1 worker (two threads of this process, each a cluster process with its own
//! consumer, sinks, inference and metrics, talking over loopback TCP), on the same events of the
//! embedded broker, alternately. On a 2-core machine no speed-up is expected: what it shows is
//! the cost of the exchange between processes, per event (bytes sent, and core-µs).

use std::time::Duration;

use weir_connectors::kafka::embedded::EmbeddedKafka;
use weir_connectors::kafka::source::StartPosition;
use weir_runtime::runner::{run_topology, Mode, RunOptions, RunReport};
use weir_simulator::SimConfig;
use weir_topologies::config::TopologyConfig;

use crate::demo::DemoError;
use crate::generate::{generate, Target};

/// What to run.
#[derive(Debug, Clone)]
pub struct ClusterBenchOptions {
    /// Topology file.
    pub topology: std::path::PathBuf,
    /// Simulated traffic.
    pub sim: SimConfig,
    /// Partitions of the source topic.
    pub partitions: i32,
    /// Runs of each shape (the best counts).
    pub rounds: usize,
}

/// One run of one shape.
#[derive(Debug, Clone)]
pub struct ShapeRun {
    /// Events read by all processes.
    pub events: u64,
    /// Scores acknowledged by all processes.
    pub scored: u64,
    /// Wall time of the slowest process, s.
    pub seconds: f64,
    /// Bytes sent between processes (0 in one process).
    pub bytes_sent: u64,
}

impl ShapeRun {
    /// Events per second.
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }
}

/// What [`run_cluster_bench`] measured: the best run of each shape.
#[derive(Debug, Clone)]
pub struct ClusterBenchReport {
    /// 1 process x 2 workers.
    pub one_by_two: ShapeRun,
    /// 2 processes x 1 worker.
    pub two_by_one: ShapeRun,
    /// Cores of this machine.
    pub cores: usize,
}

impl ClusterBenchReport {
    /// `two_by_one / one_by_two` throughput.
    pub fn ratio(&self) -> f64 {
        self.two_by_one.events_per_second() / self.one_by_two.events_per_second()
    }

    /// Bytes sent between the processes per event.
    pub fn bytes_per_event(&self) -> f64 {
        self.two_by_one.bytes_sent as f64 / self.two_by_one.events.max(1) as f64
    }

    /// What the exchange costs per event on this machine, core-µs: the extra wall time per
    /// event of 2 x 1 over 1 x 2, times the cores both shapes keep busy (min(2, cores)).
    pub fn exchange_core_us_per_event(&self) -> f64 {
        let per = |r: &ShapeRun| r.seconds / r.events.max(1) as f64;
        (per(&self.two_by_one) - per(&self.one_by_two)) * 1e6 * self.cores.min(2) as f64
    }

    /// The report as text.
    pub fn render(&self) -> String {
        let line = |name: &str, r: &ShapeRun| {
            format!(
                "  {name:<24} {:>9.0} events/s  ({} events, {} scored, {:.2} s, {} bytes sent between processes)\n",
                r.events_per_second(),
                r.events,
                r.scored,
                r.seconds,
                r.bytes_sent
            )
        };
        let mut s = format!("weir bench-cluster: {} cores\n", self.cores);
        s += &line("1 process x 2 workers", &self.one_by_two);
        s += &line("2 processes x 1 worker", &self.two_by_one);
        s += &format!("  2 x 1 / 1 x 2 throughput   {:.3}\n", self.ratio());
        s += &format!("  exchange per event          {:.0} bytes, {:.2} core-µs (the cost of crossing processes on this machine)\n", self.bytes_per_event(), self.exchange_core_us_per_event());
        s
    }
}

fn free_port() -> Result<u16, DemoError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| DemoError::Usage(format!("no free port: {e}")))?;
    Ok(l.local_addr().map_err(|e| DemoError::Usage(e.to_string()))?.port())
}

fn one(cfg: &TopologyConfig, brokers: &str) -> Result<RunReport, DemoError> {
    Ok(run_topology(
        cfg,
        RunOptions {
            brokers: Some(brokers.to_string()),
            mode: Mode::UntilEnd,
            start: Some(StartPosition::Earliest),
            ..RunOptions::default()
        },
    )?)
}

/// Runs the benchmark.
///
/// # Errors
/// [`DemoError`] from the configuration, the broker, the model or a run.
pub fn run_cluster_bench(opts: &ClusterBenchOptions) -> Result<ClusterBenchReport, DemoError> {
    let mut cfg = TopologyConfig::load(&opts.topology)?;
    let kafka = EmbeddedKafka::start()?;
    let brokers = kafka.bootstrap_servers();
    let topic = "bench-cluster-transactions";
    for (t, p) in [
        (topic, opts.partitions),
        (cfg.labels.topic.as_str(), opts.partitions),
        ("bench-cluster-scores", opts.partitions),
        (cfg.dead_letter.topic.as_str(), 1),
    ] {
        kafka.create_topic(t, p)?;
    }
    generate(
        opts.sim.clone(),
        &Target::Kafka {
            brokers: brokers.clone(),
            topic: topic.into(),
            labels_topic: cfg.labels.topic.clone(),
            realtime: false,
        },
        0,
        None,
        |_| {},
        |_| {},
    )?;
    cfg.source.topic = topic.into();
    cfg.sink.kind = "kafka".into();
    cfg.sink.topic = "bench-cluster-scores".into();
    cfg.metrics.listen = String::new();

    let mut best: [Option<ShapeRun>; 2] = [None, None];
    let keep = |slot: &mut Option<ShapeRun>, r: ShapeRun| {
        if slot.as_ref().is_none_or(|b| r.seconds < b.seconds) {
            *slot = Some(r);
        }
    };
    for _ in 0..opts.rounds.max(1) {
        let mut single = cfg.clone();
        single.topology.workers = 2;
        let r = one(&single, &brokers)?;
        keep(
            &mut best[0],
            ShapeRun {
                events: r.events_in,
                scored: r.scored,
                seconds: r.elapsed.as_secs_f64(),
                bytes_sent: 0,
            },
        );

        let peers = vec![
            format!("127.0.0.1:{}", free_port()?),
            format!("127.0.0.1:{}", free_port()?),
        ];
        let before = weir_runtime::cluster::bytes_sent();
        let runs: Vec<std::thread::JoinHandle<Result<RunReport, String>>> = (0..2)
            .map(|process| {
                let mut c = cfg.clone();
                c.topology.workers = 1;
                c.cluster.process = process;
                c.cluster.peers = peers.clone();
                c.cluster.connect_timeout = Duration::from_secs(30);
                let brokers = brokers.clone();
                std::thread::spawn(move || one(&c, &brokers).map_err(|e| e.to_string()))
            })
            .collect();
        let mut reports = Vec::new();
        for h in runs {
            reports.push(
                h.join()
                    .map_err(|_| DemoError::Usage("a cluster process panicked".into()))?
                    .map_err(DemoError::Usage)?,
            );
        }
        keep(
            &mut best[1],
            ShapeRun {
                events: reports.iter().map(|r| r.events_in).sum(),
                scored: reports.iter().map(|r| r.scored).sum(),
                seconds: reports.iter().map(|r| r.elapsed.as_secs_f64()).fold(0.0, f64::max),
                bytes_sent: weir_runtime::cluster::bytes_sent() - before,
            },
        );
    }
    let [Some(one_by_two), Some(two_by_one)] = best else {
        unreachable!("at least one round")
    };
    if one_by_two.scored != one_by_two.events || two_by_one.scored != two_by_one.events {
        return Err(DemoError::Usage(format!(
            "not every event was scored: 1 x 2 {}/{}, 2 x 1 {}/{}",
            one_by_two.scored, one_by_two.events, two_by_one.scored, two_by_one.events
        )));
    }
    Ok(ClusterBenchReport {
        one_by_two,
        two_by_one,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}
