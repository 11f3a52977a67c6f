//! `weir tune`: sweep a grid of micro-batch windows (`max_batch_rows` x `max_wait`) over a
//! recorded stretch of traffic replayed at a fixed rate, and recommend one.
//!
//! For each point of the grid, a fresh embedded broker is started and the topology (its features,
//! its model, its `[batching] max_inflight_batches`, the point's window) runs live on it while a
//! producer thread replays the recording at `rate` events per second. Each replayed event is
//! stamped with the wall clock when it is sent (message timestamp and `tx_time_ms`), so
//! latency is measured as operators see it in production: from the Kafka message timestamp to
//! the score sink's acknowledgement (`weir_end_to_end_latency_seconds`), including any time the
//! event waited in Kafka because the pipeline could not keep up.
//!
//! A point's run: start the topology, replay `prime` events and wait until they are scored (the
//! consumer group has formed, ONNX Runtime is warm), reset the latency summary, replay the
//! measured `events`, wait until every one is scored or dead-lettered, stop. Throughput = events
//! handled while the replay ran / its duration (so the idle timeout that releases the last events
//! of a replay does not count); p50/p99 over every measured event.
//!
//! A setting meets the target when its p99 is at most `p99_target`; the recommendation is the
//! one with the highest throughput among those (ties: lower p99). Offered above capacity, a
//! setting's throughput is its capacity and its p99 grows with the backlog; offered below, every
//! setting's throughput is about the offered rate and the window decides the latency.
//!
//! Limits: labels are not replayed (`fraud_ratio` features read 0), and simulated times are
//! replaced by replay times, so feature values differ from production; the work per event is the
//! same, which is what the window trades against latency.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use weir_connectors::kafka::admin::{read_topic, BulkProducer};
use weir_connectors::kafka::embedded::EmbeddedKafka;
use weir_connectors::kafka::source::StartPosition;
use weir_core::{clock, Metrics};
use weir_operators::micro_batch::BatchWindow;
use weir_simulator::Transaction;
use weir_simulator::{SimConfig, Simulator};

use weir_runtime::runner::{flow_control, run_topology, RunOptions};
use weir_topologies::TopologyConfig;

/// Errors of `weir tune`.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// The topology file is invalid.
    #[error(transparent)]
    Config(#[from] weir_topologies::config::ConfigError),
    /// The recording could not be read.
    #[error("cannot read the recording {what}: {detail}")]
    Input {
        /// The file or topic.
        what: String,
        /// Why.
        detail: String,
    },
    /// The recording has fewer events than the sweep needs.
    #[error(
        "the recording has {have} events; the sweep needs --events {events} plus {prime} to prime (lower --events)"
    )]
    TooShort {
        /// Events in the recording.
        have: usize,
        /// Measured events per point.
        events: usize,
        /// Priming events per point.
        prime: usize,
    },
    /// A grid value is invalid.
    #[error("{0}")]
    Grid(String),
    /// The embedded broker or a producer failed.
    #[error(transparent)]
    Connector(#[from] weir_connectors::ConnectorError),
    /// The topology failed.
    #[error(transparent)]
    Topology(#[from] weir_runtime::runner::TopologyError),
    /// A point did not finish within its timeout.
    #[error("max_batch_rows {rows}, max_wait {wait:?}: {done} of {events} events handled after {timeout:?}")]
    Stalled {
        /// The point's max_batch_rows.
        rows: usize,
        /// The point's max_wait.
        wait: Duration,
        /// Events handled.
        done: u64,
        /// Events replayed.
        events: usize,
        /// The timeout.
        timeout: Duration,
    },
    /// An output file could not be written.
    #[error("cannot write {path}: {detail}")]
    Output {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
}

/// One recorded message.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    /// Message key.
    pub key: Option<Vec<u8>>,
    /// The payload as recorded.
    pub payload: Vec<u8>,
    /// The payload parsed, if it is a transaction (re-stamped when replayed; parsed once here,
    /// not on every replay of every grid point); `None`: replayed as recorded (a dead letter).
    pub tx: Option<Transaction>,
}

impl RecordedEvent {
    fn new(key: Option<Vec<u8>>, payload: Vec<u8>) -> Self {
        let tx = serde_json::from_slice::<Transaction>(&payload).ok();
        Self { key, payload, tx }
    }
}

/// A recorded stretch of traffic, in replay order.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// The messages.
    pub events: Vec<RecordedEvent>,
}

impl Recording {
    /// Reads JSON Lines (one transaction per line, as `weir generate --out` writes); the key is
    /// the line's `customer_id` when it parses.
    ///
    /// # Errors
    /// [`TuneError::Input`] if the file cannot be read.
    pub fn from_jsonl(path: &Path) -> Result<Self, TuneError> {
        let text = std::fs::read(path).map_err(|e| TuneError::Input {
            what: path.display().to_string(),
            detail: e.to_string(),
        })?;
        let events = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut e = RecordedEvent::new(None, l.to_vec());
                e.key = e.tx.as_ref().map(|t| t.customer_id.to_string().into_bytes());
                e
            })
            .collect();
        Ok(Self { events })
    }

    /// Reads every message of `topic` on `brokers`, ordered by message timestamp (then partition
    /// and offset): the order they were produced in, across partitions.
    ///
    /// # Errors
    /// [`TuneError::Input`] if the topic cannot be read.
    pub fn from_topic(brokers: &str, topic: &str) -> Result<Self, TuneError> {
        let mut records = read_topic(brokers, topic, Duration::from_secs(120)).map_err(|e| TuneError::Input {
            what: format!("topic `{topic}` on {brokers}"),
            detail: e.to_string(),
        })?;
        records.sort_by_key(|r| (r.timestamp_ms.unwrap_or(0), r.partition, r.offset));
        let events = records
            .into_iter()
            .filter_map(|r| Some(RecordedEvent::new(r.key, r.payload?)))
            .collect();
        Ok(Self { events })
    }

    /// Simulates `sim` (the demo's data, without labels), at most `limit` transactions.
    pub fn simulated(sim: SimConfig, limit: usize) -> Self {
        let events = Simulator::new(sim)
            .flatten()
            .take(limit)
            .map(|lt| RecordedEvent {
                key: Some(lt.tx.customer_id.to_string().into_bytes()),
                payload: serde_json::to_vec(&lt.tx).expect("serializable"),
                tx: Some(lt.tx),
            })
            .collect();
        Self { events }
    }
}

/// What to sweep.
#[derive(Debug, Clone)]
pub struct TuneOptions {
    /// The topology file.
    pub topology: PathBuf,
    /// `max_batch_rows` values.
    pub max_batch_rows: Vec<usize>,
    /// `max_wait` values.
    pub max_wait: Vec<Duration>,
    /// Also run the adaptive window (`max_wait = "auto"`, with `p99_target` as its target and
    /// the largest `max_batch_rows` as its cap), as one more point of the same chart.
    pub auto: bool,
    /// Offered load, events per second.
    pub rate: f64,
    /// Measured events per point.
    pub events: usize,
    /// Priming events per point (replayed and scored before measuring).
    pub prime: usize,
    /// The p99 latency target.
    pub p99_target: Duration,
    /// Output directory for `tune.csv`, `tune.md`, `tune.svg`.
    pub out: PathBuf,
    /// Show a progress bar.
    pub progress: bool,
}

/// One point of the sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct TunePoint {
    /// The window (the adaptive controller's at the end of the point, if `adaptive`).
    pub window: BatchWindow,
    /// The point ran the adaptive window (`max_wait = "auto"`).
    pub adaptive: bool,
    /// The rate the replay achieved, events/s (below the requested rate when the machine's CPU
    /// is saturated: the replay shares it with the topology).
    pub offered: f64,
    /// Measured events scored or dead-lettered per second while the replay ran (events still in
    /// flight when it ended are not counted; a backlog it left is not either): the offered rate
    /// when the pipeline keeps up, its capacity when it does not.
    pub throughput: f64,
    /// Median latency, Kafka message timestamp to sink acknowledgement, ms (1 ms resolution).
    pub p50_ms: f64,
    /// 99th percentile of the same, ms.
    pub p99_ms: f64,
    /// Mean rows per micro-batch over the measured events.
    pub mean_batch_rows: f64,
    /// `p99_ms` is within the target.
    pub meets_target: bool,
}

/// The sweep's result.
#[derive(Debug, Clone)]
pub struct TuneReport {
    /// Every point, in grid order (`max_batch_rows` outer, `max_wait` inner).
    pub points: Vec<TunePoint>,
    /// Index into `points` of the recommended setting, if any meets the target.
    pub recommended: Option<usize>,
    /// The files written: CSV, Markdown, SVG.
    pub files: Vec<PathBuf>,
}

/// Parses a comma-separated list of durations ("1ms,5ms,20ms").
///
/// # Errors
/// [`TuneError::Grid`] naming the bad value.
pub fn parse_durations(s: &str) -> Result<Vec<Duration>, TuneError> {
    s.split(',')
        .map(|v| humantime::parse_duration(v.trim()).map_err(|e| TuneError::Grid(format!("--max-wait `{v}`: {e}"))))
        .collect()
}

/// Parses a comma-separated list of row counts ("64,256,1024"), each at least 1.
///
/// # Errors
/// [`TuneError::Grid`] naming the bad value.
pub fn parse_rows(s: &str) -> Result<Vec<usize>, TuneError> {
    s.split(',')
        .map(|v| match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(TuneError::Grid(format!(
                "--max-batch-rows `{v}`: expected an integer >= 1"
            ))),
        })
        .collect()
}

/// Runs the sweep over `recording` and writes the table and the plot.
///
/// # Errors
/// [`TuneError`] from the configuration, the recording, a point's run, or the output files.
pub fn run_tune(opts: &TuneOptions, recording: &Recording) -> Result<TuneReport, TuneError> {
    let cfg = TopologyConfig::load(&opts.topology)?;
    if recording.events.len() < opts.events + opts.prime {
        return Err(TuneError::TooShort {
            have: recording.events.len(),
            events: opts.events,
            prime: opts.prime,
        });
    }
    if opts.max_batch_rows.is_empty() || opts.max_wait.is_empty() || opts.rate <= 0.0 {
        return Err(TuneError::Grid(
            "the grid needs at least one max_batch_rows, one max_wait and a rate > 0".into(),
        ));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| TuneError::Output {
        path: opts.out.clone(),
        detail: e.to_string(),
    })?;
    let grid: Vec<BatchWindow> = opts
        .max_batch_rows
        .iter()
        .flat_map(|&r| {
            opts.max_wait.iter().map(move |&w| BatchWindow {
                max_batch_rows: r,
                max_wait: w,
            })
        })
        .collect();
    let bar = if opts.progress {
        ProgressBar::new(grid.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("tune [{bar:30}] {pos}/{len} points, eta {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut points = Vec::with_capacity(grid.len());
    for (i, window) in grid.iter().enumerate() {
        bar.set_message(format!(
            "max_batch_rows {} max_wait {}",
            window.max_batch_rows,
            humantime::format_duration(window.max_wait)
        ));
        let mut p = run_point(&cfg, *window, false, opts, recording, i)?;
        p.meets_target = p.p99_ms <= opts.p99_target.as_secs_f64() * 1e3;
        tracing::info!(
            max_batch_rows = window.max_batch_rows,
            max_wait = ?window.max_wait,
            throughput = p.throughput,
            p99_ms = p.p99_ms,
            "tune point"
        );
        points.push(p);
        bar.inc(1);
    }
    if opts.auto {
        let cap = opts.max_batch_rows.iter().copied().max().unwrap_or(256);
        bar.set_message("max_wait auto");
        let window = BatchWindow {
            max_batch_rows: cap,
            max_wait: opts.p99_target / 4,
        };
        let mut p = run_point(&cfg, window, true, opts, recording, grid.len())?;
        p.meets_target = p.p99_ms <= opts.p99_target.as_secs_f64() * 1e3;
        tracing::info!(throughput = p.throughput, p99_ms = p.p99_ms, "tune point: auto");
        points.push(p);
    }
    bar.finish_and_clear();
    let recommended = recommend(&points);
    let files = write_outputs(opts, &points, recommended)?;
    Ok(TuneReport {
        points,
        recommended,
        files,
    })
}

/// Throughputs within this fraction of the best count as equal (run-to-run noise: when the
/// pipeline keeps up, every setting's throughput is the offered rate).
pub const THROUGHPUT_TIE: f64 = 0.02;

/// The recommended point: among those that meet the target, the highest throughput; throughputs
/// within [`THROUGHPUT_TIE`] of it count as equal and the lowest p99 among them wins.
pub fn recommend(points: &[TunePoint]) -> Option<usize> {
    let best = points
        .iter()
        .filter(|p| p.meets_target)
        .map(|p| p.throughput)
        .fold(f64::NAN, f64::max);
    points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.meets_target && p.throughput >= best * (1.0 - THROUGHPUT_TIE))
        .min_by(|(_, a), (_, b)| a.p99_ms.total_cmp(&b.p99_ms))
        .map(|(i, _)| i)
}

/// Replays `events` at `rate`, transactions stamped with the wall clock; stops early if `stop`.
pub(crate) fn replay(
    producer: &BulkProducer,
    topic: &str,
    events: &[RecordedEvent],
    rate: f64,
    stop: &AtomicBool,
) -> Result<(Instant, Duration), TuneError> {
    let started = Instant::now();
    for (n, e) in events.iter().enumerate() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        // Sleep only when a millisecond or more ahead: a sleep per event at thousands of events
        // per second would cost more than the gap it waits for, and the rate would fall short.
        let due = Duration::from_secs_f64(n as f64 / rate);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            if wait >= Duration::from_millis(1) {
                std::thread::sleep(wait);
            }
        }
        let now = clock::wall_ms();
        let stamped = match &e.tx {
            Some(tx) => serde_json::to_vec(&Transaction {
                tx_time_ms: now,
                ..tx.clone()
            })
            .expect("serializable"),
            None => e.payload.clone(), // malformed: replayed as recorded (a dead letter)
        };
        producer.send(topic, e.key.as_deref(), &stamped, Some(now))?;
    }
    Ok((started, started.elapsed()))
}

fn handled(m: &Metrics) -> u64 {
    m.scores_out.get() + m.dead_letters_total()
}

/// Waits until `m` handled `target` events; returns when, or the count reached at `timeout`.
fn wait_handled(m: &Metrics, target: u64, timeout: Duration) -> Result<Instant, u64> {
    let deadline = Instant::now() + timeout;
    loop {
        if handled(m) >= target {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            return Err(handled(m));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn run_point(
    cfg: &TopologyConfig,
    window: BatchWindow,
    adaptive: bool,
    opts: &TuneOptions,
    recording: &Recording,
    index: usize,
) -> Result<TunePoint, TuneError> {
    let kafka = EmbeddedKafka::start()?;
    let partitions = 4;
    kafka.create_topic(&cfg.source.topic, partitions)?;
    kafka.create_topic(&cfg.labels.topic, partitions)?;
    kafka.create_topic(&cfg.sink.topic, partitions)?;
    kafka.create_topic(&cfg.dead_letter.topic, 1)?;
    let brokers = kafka.bootstrap_servers();
    let mut cfg = cfg.clone();
    cfg.source.group_id = format!("weir-tune-{index}");
    cfg.metrics.listen.clear();
    cfg.sink.kind = "kafka".into();
    if adaptive {
        cfg.batching.adaptive = true;
        cfg.batching.p99_target = opts.p99_target;
        cfg.batching.max_batch_rows = window.max_batch_rows;
        cfg.batching.max_wait = window.max_wait;
    }
    let flow = Arc::new(flow_control(&cfg, window.max_batch_rows));
    let metrics = Arc::new(Metrics::new(&cfg.topology.name));
    let runner = {
        let (cfg, brokers, flow, metrics) = (cfg.clone(), brokers.clone(), flow.clone(), metrics.clone());
        std::thread::spawn(move || {
            run_topology(
                &cfg,
                RunOptions {
                    brokers: Some(brokers),
                    start: Some(StartPosition::Earliest),
                    flow: Some(flow),
                    metrics: Some(metrics),
                    window: (!adaptive).then_some((window, cfg.batching.max_inflight_batches)),
                    ..RunOptions::default()
                },
            )
        })
    };
    let properties = [("linger.ms".to_string(), "1".to_string())].into_iter().collect();
    let producer = BulkProducer::new(&brokers, &properties)?;
    let stop = AtomicBool::new(false);
    let (prime, measured) = recording.events[..opts.prime + opts.events].split_at(opts.prime);
    let timeout = Duration::from_secs_f64(60.0 + 4.0 * opts.events as f64 / opts.rate);
    let result = (|| -> Result<TunePoint, TuneError> {
        replay(&producer, &cfg.source.topic, prime, opts.rate, &stop)?;
        producer.flush(Duration::from_secs(30))?;
        let stalled = |done| TuneError::Stalled {
            rows: window.max_batch_rows,
            wait: window.max_wait,
            done,
            events: opts.events,
            timeout,
        };
        wait_handled(&metrics, prime.len() as u64, timeout).map_err(stalled)?;
        // Measure from here: the group has formed and the model is warm.
        let base = handled(&metrics);
        let (b0, r0) = (
            metrics.batch_rows.get_sample_count(),
            metrics.batch_rows.get_sample_sum(),
        );
        metrics.reset_latency_summaries();
        let (_, sent_in) = replay(&producer, &cfg.source.topic, measured, opts.rate, &stop)?;
        let during_replay = handled(&metrics) - base;
        wait_handled(&metrics, base + measured.len() as u64, timeout).map_err(stalled)?;
        let batches = metrics.batch_rows.get_sample_count() - b0;
        let rows = metrics.batch_rows.get_sample_sum() - r0;
        let window = if adaptive {
            BatchWindow {
                max_batch_rows: metrics.window_max_rows.get().max(1) as usize,
                max_wait: Duration::from_secs_f64(metrics.window_max_wait.get().max(0.0)),
            }
        } else {
            window
        };
        Ok(TunePoint {
            window,
            adaptive,
            offered: measured.len() as f64 / sent_in.as_secs_f64().max(1e-9),
            throughput: during_replay as f64 / sent_in.as_secs_f64().max(1e-9),
            // Rounded to the 0.1 ms the table shows, so that the target is judged on the
            // number the table shows.
            p50_ms: (metrics.event_latency_quantile_us(0.5) as f64 / 100.0).round() / 10.0,
            p99_ms: (metrics.event_latency_quantile_us(0.99) as f64 / 100.0).round() / 10.0,
            mean_batch_rows: rows / (batches.max(1) as f64),
            meets_target: false,
        })
    })();
    stop.store(true, Ordering::Release);
    flow.request_shutdown();
    let run = runner.join().map_err(|_| {
        TuneError::Topology(weir_runtime::runner::TopologyError::Worker(
            "the topology thread panicked".into(),
        ))
    })?;
    let point = result?;
    run?;
    Ok(point)
}

fn write_file(path: PathBuf, text: &str) -> Result<PathBuf, TuneError> {
    std::fs::write(&path, text).map_err(|e| TuneError::Output {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    Ok(path)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// How a point's window is written: `256/5ms`, or `auto (256/4ms at the end)`.
pub fn window_label(p: &TunePoint) -> String {
    let fixed = format!(
        "{}/{}",
        p.window.max_batch_rows,
        humantime::format_duration(Duration::from_micros(p.window.max_wait.as_micros() as u64 / 100 * 100))
    );
    if p.adaptive {
        format!("auto ({fixed} at the end)")
    } else {
        fixed
    }
}

/// Writes `tune.csv`, `tune.md` and `tune.svg` into `opts.out`.
fn write_outputs(opts: &TuneOptions, points: &[TunePoint], rec: Option<usize>) -> Result<Vec<PathBuf>, TuneError> {
    let mut csv = String::from(
        "max_batch_rows,max_wait_ms,requested_events_per_s,offered_events_per_s,throughput_events_per_s,p50_ms,p99_ms,mean_batch_rows,meets_p99_target,recommended\n",
    );
    for (i, p) in points.iter().enumerate() {
        csv.push_str(&format!(
            "{},{},{},{:.0},{:.0},{:.1},{:.1},{:.1},{},{}\n",
            p.window.max_batch_rows,
            if p.adaptive {
                "auto".to_string()
            } else {
                ms(p.window.max_wait).to_string()
            },
            opts.rate,
            p.offered,
            p.throughput,
            p.p50_ms,
            p.p99_ms,
            p.mean_batch_rows,
            p.meets_target,
            rec == Some(i)
        ));
    }
    let mut md = format!(
        "# weir tune: {}\n\n{} events per point offered at {} events/s; p99 target {} ms \
         (latency: Kafka message timestamp to score acknowledgement).\n\n\
         | max_batch_rows | max_wait | offered (events/s) | throughput (events/s) | p50 (ms) | p99 (ms) | mean batch rows | meets p99 |\n\
         |---:|---:|---:|---:|---:|---:|---:|:---:|\n",
        opts.topology.display(),
        opts.events,
        opts.rate,
        ms(opts.p99_target)
    );
    for (i, p) in points.iter().enumerate() {
        md.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {}{} |\n",
            p.window.max_batch_rows,
            if p.adaptive {
                format!("auto (ends at {})", humantime::format_duration(p.window.max_wait))
            } else {
                humantime::format_duration(p.window.max_wait).to_string()
            },
            p.offered,
            p.throughput,
            p.p50_ms,
            p.p99_ms,
            p.mean_batch_rows,
            if p.meets_target { "yes" } else { "no" },
            if rec == Some(i) { " (recommended)" } else { "" }
        ));
    }
    md.push('\n');
    md.push_str(&recommendation_line(points, rec, opts.p99_target));
    md.push('\n');
    let svg = plot_svg(points, rec, ms(opts.p99_target), opts.rate);
    Ok(vec![
        write_file(opts.out.join("tune.csv"), &csv)?,
        write_file(opts.out.join("tune.md"), &md)?,
        write_file(opts.out.join("tune.svg"), &svg)?,
    ])
}

/// One sentence: the recommended setting, or why there is none.
pub fn recommendation_line(points: &[TunePoint], rec: Option<usize>, target: Duration) -> String {
    match rec {
        Some(i) => {
            let p = &points[i];
            format!(
                "Recommended: max_batch_rows = {}, max_wait = \"{}\" ({:.0} events/s, p99 {:.1} ms <= {} ms).",
                p.window.max_batch_rows,
                humantime::format_duration(p.window.max_wait),
                p.throughput,
                p.p99_ms,
                ms(target)
            )
        }
        None => match points.iter().min_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms)) {
            Some(p) => format!(
                "No setting meets p99 <= {} ms; the lowest p99 is {:.1} ms (max_batch_rows = {}, max_wait = \"{}\"): lower the rate or raise the target.",
                ms(target),
                p.p99_ms,
                p.window.max_batch_rows,
                humantime::format_duration(p.window.max_wait)
            ),
            None => "No points.".into(),
        },
    }
}

/// The plot: p99 latency (ms, log scale) against throughput (events/s), one point per setting,
/// labelled `rows/wait`; settings meeting the target in green, the others in red, the target as
/// a dashed line, the recommendation circled.
fn plot_svg(points: &[TunePoint], rec: Option<usize>, target_ms: f64, rate: f64) -> String {
    use plotters::prelude::*;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 600)).into_drawing_area();
        let _ = root.fill(&WHITE);
        // Zoom on the points: below capacity they all sit near the offered rate.
        let hi = points.iter().map(|p| p.throughput).fold(rate, f64::max);
        let lo = points.iter().map(|p| p.throughput).fold(hi, f64::min);
        let pad = ((hi - lo) * 0.15).max(hi * 0.01);
        let (min_x, max_x) = ((lo - pad).max(0.0), hi + pad);
        let max_y = points.iter().map(|p| p.p99_ms).fold(target_ms, f64::max).max(1.0) * 2.0;
        let min_y = points.iter().map(|p| p.p99_ms).fold(target_ms, f64::min).max(0.5) / 2.0;
        let chart = ChartBuilder::on(&root)
            .caption(
                format!("weir tune: p99 latency vs throughput (offered {rate:.0} events/s)"),
                ("sans-serif", 20),
            )
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(min_x..max_x, (min_y..max_y).log_scale());
        if let Ok(mut chart) = chart {
            let _ = chart
                .configure_mesh()
                .x_desc("throughput (events/s)")
                .y_desc("p99 latency (ms), Kafka timestamp to sink ack")
                .draw();
            let _ = chart
                .draw_series(DashedLineSeries::new(
                    vec![(min_x, target_ms), (max_x, target_ms)],
                    6,
                    4,
                    BLUE.stroke_width(1),
                ))
                .map(|s| {
                    s.label(format!("p99 target {target_ms} ms"))
                        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE))
                });
            for (i, p) in points.iter().enumerate() {
                let color = if p.meets_target { GREEN.mix(0.9) } else { RED.mix(0.9) };
                let label = window_label(p);
                let at = (p.throughput, p.p99_ms.max(min_y));
                let _ = chart.draw_series(std::iter::once(
                    EmptyElement::at(at)
                        + Circle::new((0, 0), 5, color.filled())
                        + Text::new(label, (7, -12), ("sans-serif", 12)),
                ));
                if rec == Some(i) {
                    let _ = chart
                        .draw_series(std::iter::once(Circle::new(at, 12, BLACK.stroke_width(2))))
                        .map(|s| {
                            s.label(format!("recommended: {}", recommendation_short(p)))
                                .legend(|(x, y)| Circle::new((x + 10, y), 6, BLACK.stroke_width(2)))
                        });
                }
            }
            let _ = chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw();
        }
        let _ = root.present();
    }
    svg
}

fn recommendation_short(p: &TunePoint) -> String {
    if p.adaptive {
        return format!("max_wait auto (p99_target), max_batch_rows {}", p.window.max_batch_rows);
    }
    format!(
        "max_batch_rows {} max_wait {}",
        p.window.max_batch_rows,
        humantime::format_duration(p.window.max_wait)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(rows: usize, wait_ms: u64, throughput: f64, p99_ms: f64, target: f64) -> TunePoint {
        TunePoint {
            adaptive: false,
            window: BatchWindow {
                max_batch_rows: rows,
                max_wait: Duration::from_millis(wait_ms),
            },
            offered: throughput,
            throughput,
            p50_ms: p99_ms / 2.0,
            p99_ms,
            mean_batch_rows: rows as f64 / 2.0,
            meets_target: p99_ms <= target,
        }
    }

    #[test]
    fn recommends_the_fastest_setting_within_the_target() {
        let pts = vec![
            point(64, 1, 8000.0, 5.0, 20.0),
            point(256, 5, 9500.0, 15.0, 20.0),
            point(1024, 20, 12000.0, 45.0, 20.0), // fastest, but over the target
            point(256, 1, 9400.0, 12.0, 20.0),    // within 2% of the best, lower p99: wins
            point(16, 1, 9000.0, 3.0, 20.0),      // lowest p99, but 5% slower
        ];
        assert_eq!(recommend(&pts), Some(3));
        assert!(recommendation_line(&pts, Some(3), Duration::from_millis(20)).contains("max_batch_rows = 256"));
        let none: Vec<_> = pts
            .iter()
            .map(|p| TunePoint {
                meets_target: false,
                ..p.clone()
            })
            .collect();
        assert_eq!(recommend(&none), None);
        assert!(recommendation_line(&none, None, Duration::from_millis(1)).contains("lowest p99 is 3.0 ms"));
    }

    #[test]
    fn grids_parse_and_bad_values_are_named() {
        assert_eq!(parse_rows("64, 256").unwrap(), vec![64, 256]);
        assert!(parse_rows("64,0").unwrap_err().to_string().contains("`0`"));
        assert_eq!(
            parse_durations("1ms,20ms").unwrap(),
            vec![Duration::from_millis(1), Duration::from_millis(20)]
        );
        assert!(parse_durations("1ms,soon").unwrap_err().to_string().contains("`soon`"));
    }

    #[test]
    fn the_plot_is_an_svg_with_a_point_per_setting() {
        let pts = vec![point(64, 1, 8000.0, 5.0, 20.0), point(1024, 20, 12000.0, 45.0, 20.0)];
        let svg = plot_svg(&pts, Some(0), 20.0, 10000.0);
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.contains("64/1ms") && svg.contains("1024/20ms"), "labels");
        assert!(svg.contains("recommended: max_batch_rows 64"));
    }
}
