//! `weir backfill`: replay a bounded range of the source topic through the topology's own
//! operators, as a batch job that can be interrupted and resumed.
//!
//! A job goes through these steps (design note: `docs/design/2026-11-21-backfill.md`):
//!
//! 1. **Resolve** the range to per-partition offsets, once, when the job is created: by time with
//!    Kafka's ListOffsets by timestamp (`--from`/`--to`; the end of a range past the last message
//!    is the high watermark), or given directly (`--from-offsets`/`--to-offsets`). The feature
//!    warm-up adds the history before the range (`[backfill] warmup`, by default the longest
//!    `window + delay`), read but not scored. Labels (a side input) are read from the start of
//!    their topic up to its high watermark at resolution, as the live path reads them.
//! 2. **Record** the job in a state file `<state dir>/<job id>.json` (JSON): topology, brokers,
//!    sink, the resolved offsets, the completed offset ranges, status. Resuming reads the same
//!    offsets: a resumed job never re-resolves a moving topic.
//! 3. **Run** the same dataflow as `weir run` ([`run_topology`]) over those offsets, with the
//!    `[backfill]` micro-batch window and a score filter: an event is scored if its offset is in
//!    the range and not in a completed range. No consumer-group offsets are committed.
//! 4. **Track progress** from the delivery ledger: per partition, the offsets before the first
//!    unacknowledged one are complete (warm-up events are acknowledged when the score gate drops
//!    them; scores when their sink acknowledges them: a Parquet file on completion, a Kafka record
//!    on delivery). The state file is rewritten (atomically) every second and at the end.
//! 5. **Resume** (`--resume <job id>`): the warm-up is read again (feature state is rebuilt, not
//!    stored), completed ranges are skipped. For a Parquet sink the job's own complete files are
//!    authoritative too (a file completed after the last state write is found and its rows are
//!    not written again); stale in-progress files are deleted. So the union of a job's Parquet
//!    files holds each transaction of the range exactly once. A Kafka sink is at-least-once: rows
//!    delivered after the last state write are written again.
//!
//! Scores equal the live path's bit for bit: the features of a transaction at `t` depend only on
//! the events and labels with times up to `t` (the watermark rule of the feature store), all of
//! which the warm-up and range contain, and the model scores each row independently of its batch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use weir_connectors::kafka::admin::{offsets_for_time, timestamps_at, watermarks};
use weir_connectors::parquet::sink::{job_prefix, job_run_prefix, score_file_lineages, score_files};
use weir_core::{clock, DeliveryLedger, FlowControl, Lineage, Metrics};
use weir_operators::micro_batch::BatchWindow;

use weir_runtime::runner::{
    flow_control, run_topology, Mode, ReadRanges, RunOptions, RunReport, ScoreFilter, TopologyError,
};
use weir_topologies::config::{ConfigError, TopologyConfig};

/// Errors of a backfill.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// The topology file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A broker call failed (resolving the range).
    #[error(transparent)]
    Connector(#[from] weir_connectors::ConnectorError),
    /// The topology failed.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The job state file cannot be read or written.
    #[error("backfill job state `{path}`: {detail}")]
    State {
        /// The state file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The range or the sink is invalid.
    #[error("{0}")]
    Usage(String),
}

/// The range of a new job.
#[derive(Debug, Clone, PartialEq)]
pub enum RangeSpec {
    /// Events with message timestamps in `[from_ms, to_ms)`, ms since the Unix epoch.
    Time {
        /// First time included.
        from_ms: i64,
        /// First time excluded.
        to_ms: i64,
    },
    /// Per partition, offsets in `[from, to)`; a partition missing from `to` ends at its high
    /// watermark. Partitions missing from `from` are not replayed.
    Offsets {
        /// First offset included, per partition.
        from: BTreeMap<i32, i64>,
        /// First offset excluded, per partition.
        to: BTreeMap<i32, i64>,
    },
}

pub use weir_topologies::plan::SinkSpec;

/// Parses per-partition offsets `partition:offset[,partition:offset...]`, e.g. `0:1200,1:1180`.
///
/// # Errors
/// A message naming the malformed item.
pub fn parse_offsets(s: &str) -> Result<BTreeMap<i32, i64>, String> {
    let mut out = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let parsed = item
            .split_once(':')
            .and_then(|(p, o)| Some((p.trim().parse::<i32>().ok()?, o.trim().parse::<i64>().ok()?)));
        match parsed {
            Some((p, o)) if p >= 0 && o >= 0 => {
                if out.insert(p, o).is_some() {
                    return Err(format!("partition {p} is given twice"));
                }
            }
            _ => return Err(format!("`{item}` is not partition:offset (non-negative integers)")),
        }
    }
    if out.is_empty() {
        return Err("no partition:offset given".into());
    }
    Ok(out)
}

/// Sorted, disjoint, non-adjacent half-open offset ranges `[start, end)` of one partition.
pub type Ranges = Vec<(i64, i64)>;

/// Adds `[start, end)` to `ranges`, merging overlapping and adjacent ranges.
pub fn add_range(ranges: &mut Ranges, start: i64, end: i64) {
    if end <= start {
        return;
    }
    ranges.push((start, end));
    ranges.sort_unstable();
    let mut merged: Ranges = Vec::with_capacity(ranges.len());
    for &(a, b) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    *ranges = merged;
}

/// Whether `offset` is in `ranges`.
pub fn ranges_contain(ranges: &Ranges, offset: i64) -> bool {
    let i = ranges.partition_point(|&(a, _)| a <= offset);
    i > 0 && offset < ranges[i - 1].1
}

/// Offsets covered by `ranges`.
pub fn ranges_len(ranges: &Ranges) -> i64 {
    ranges.iter().map(|(a, b)| b - a).sum()
}

/// The persistent record of a backfill job (`<state dir>/<job id>.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    /// Job id, e.g. `bf-20180502T010000Z-3fa2`.
    pub job_id: String,
    /// Topology file (absolute).
    pub topology: PathBuf,
    /// Bootstrap servers.
    pub brokers: String,
    /// Source topic.
    pub topic: String,
    /// Labels topic, if the features read labels.
    pub labels_topic: Option<String>,
    /// Score sink.
    pub sink: SinkSpec,
    /// The range as given, for people.
    pub range: String,
    /// Feature warm-up before the range, ms.
    pub warmup_ms: i64,
    /// Offsets read, per partition `[start, stop)` (warm-up and range).
    pub read: BTreeMap<i32, (i64, i64)>,
    /// Offsets scored, per partition `[start, stop)`.
    pub score: BTreeMap<i32, (i64, i64)>,
    /// Labels read, per partition `[start, stop)`.
    pub labels: BTreeMap<i32, (i64, i64)>,
    /// Offsets of the score range whose scores were acknowledged by the sink.
    pub completed: BTreeMap<i32, Ranges>,
    /// `running`, `interrupted`, `failed` or `done`.
    pub status: String,
    /// Attempts so far (1 + resumes).
    pub attempts: u32,
    /// When the job was created, RFC 3339.
    pub created_at: String,
    /// Last update, RFC 3339.
    pub updated_at: String,
    /// On a cluster: this share's process and the cluster's peers (every process records the
    /// partitions its workers own, [`weir_connectors::kafka::source::owner_of`]); `None` for
    /// one process.
    #[serde(default)]
    pub cluster: Option<ClusterShare>,
}

/// Which share of a job a process of a cluster runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterShare {
    /// The process's index.
    pub process: usize,
    /// Every process's `host:port`.
    pub peers: Vec<String>,
    /// Workers per process.
    pub workers: usize,
}

impl JobState {
    /// Events in the score range.
    pub fn range_events(&self) -> i64 {
        self.score.values().map(|(a, b)| (b - a).max(0)).sum()
    }

    /// Events of the score range completed.
    pub fn completed_events(&self) -> i64 {
        self.completed.values().map(ranges_len).sum()
    }

    /// Whether every offset of the score range is completed.
    pub fn is_complete(&self) -> bool {
        self.score.iter().all(|(p, &(a, b))| {
            b <= a
                || self
                    .completed
                    .get(p)
                    .is_some_and(|r| r.iter().any(|&(s, e)| s <= a && e >= b))
        })
    }

    /// The state file of job `job_id` under `state_dir`.
    pub fn path(state_dir: &Path, job_id: &str) -> PathBuf {
        state_dir.join(format!("{job_id}.json"))
    }

    /// Reads a job's state.
    ///
    /// # Errors
    /// [`BackfillError::Usage`] for a job id that is not one (see [`validate_job_id`]);
    /// [`BackfillError::State`] if it is missing or not a job state.
    pub fn load(state_dir: &Path, job_id: &str) -> Result<Self, BackfillError> {
        validate_job_id(job_id)?;
        let path = Self::path(state_dir, job_id);
        let text = std::fs::read_to_string(&path).map_err(|e| BackfillError::State {
            path: path.clone(),
            detail: format!("{e} (is `{job_id}` a job id printed by `weir backfill`, and is --state-dir the same?)"),
        })?;
        serde_json::from_str(&text).map_err(|e| BackfillError::State {
            path,
            detail: e.to_string(),
        })
    }

    /// Writes the state atomically (a temporary file renamed over the old one).
    ///
    /// # Errors
    /// [`BackfillError::State`] on I/O errors.
    pub fn save(&self, state_dir: &Path) -> Result<(), BackfillError> {
        let path = Self::path(state_dir, &self.job_id);
        let err = |e: std::io::Error| BackfillError::State {
            path: path.clone(),
            detail: e.to_string(),
        };
        std::fs::create_dir_all(state_dir).map_err(err)?;
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("serializable");
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }

    /// Adds what the ledger says is acknowledged: per partition, everything read before the
    /// first unacknowledged offset (reading starts at or before the score range), clipped to the
    /// score range.
    fn record_progress(&mut self, ledger: &DeliveryLedger) {
        let parts: Vec<i32> = self.score.keys().copied().collect();
        for (p, next) in ledger.committable(&parts) {
            let (a, b) = self.score[&p];
            add_range(self.completed.entry(p).or_default(), a, next.min(b));
        }
        self.updated_at = now_rfc3339();
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Checks that `job_id` is a job id: 1 to 128 ASCII letters, digits, `-` or `_` (what
/// `weir backfill` prints, e.g. `bf-20181201T000000Z-1a2b`). It names a file under the state
/// directory, so anything else (a path, `..`) is refused.
///
/// # Errors
/// [`BackfillError::Usage`] naming the id.
pub fn validate_job_id(job_id: &str) -> Result<(), BackfillError> {
    let ok = !job_id.is_empty()
        && job_id.len() <= 128
        && job_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    match ok {
        true => Ok(()),
        false => Err(BackfillError::Usage(format!(
            "`{job_id}` is not a backfill job id (1-128 letters, digits, `-` or `_`, as `weir backfill` prints them)"
        ))),
    }
}

fn new_job_id() -> String {
    let stamp: String = now_rfc3339().chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    // Two jobs created in the same second (or in parallel tests) differ by process and clock.
    let salt = (std::process::id() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ clock::now_micros();
    format!("bf-{stamp}-{:04x}", salt & 0xffff)
}

/// Called with a job's state (e.g. to print its id when it starts).
pub type JobCallback = Arc<dyn Fn(&JobState) + Send + Sync>;

/// Options of `weir backfill`.
#[derive(Clone, Default)]
pub struct BackfillOptions {
    /// Topology file (a new job).
    pub topology: Option<PathBuf>,
    /// Bootstrap servers, overriding `source.brokers` (or the job's, on resume).
    pub brokers: Option<String>,
    /// The range (a new job).
    pub range: Option<RangeSpec>,
    /// Where scores go (a new job).
    pub sink: Option<SinkSpec>,
    /// Resume this job instead of creating one.
    pub resume: Option<String>,
    /// Directory of job state files.
    pub state_dir: PathBuf,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
    /// Set by the caller (SIGINT/SIGTERM) to stop early: in-flight batches drain, progress is
    /// recorded, and the job can be resumed.
    pub shutdown: Option<Arc<AtomicBool>>,
    /// Called with the job id once the job is recorded, before any event is read.
    pub on_start: Option<JobCallback>,
    /// Use this configuration instead of loading `topology` (benchmarks adjust topics in
    /// memory); `topology` is still recorded in the job.
    pub config: Option<TopologyConfig>,
    /// `--process`/`--peers`/`--hostfile`: run on a cluster (see `weir_runtime::cluster`).
    pub cluster: weir_topologies::config::ClusterOverride,
    /// The id of a new job (default: a generated one). On a cluster every process is given the
    /// same id and records its own share as `<id>-p<process>`.
    pub job_id: Option<String>,
}

/// What a backfill attempt did.
#[derive(Debug, Clone)]
pub struct BackfillReport {
    /// The job's state after the attempt.
    pub job: JobState,
    /// Its state file.
    pub state_file: PathBuf,
    /// The run's report (this attempt).
    pub run: RunReport,
    /// Events the job completed before this attempt (resume).
    pub skipped: i64,
}

impl BackfillReport {
    /// A human-readable summary.
    pub fn render(&self) -> String {
        let r = &self.run;
        let secs = r.elapsed.as_secs_f64().max(1e-9);
        let mut s = format!(
            "backfill {} {}: {} of {} events in range completed; this attempt scored {} and sent {} dead letters, {} were completed earlier, {} warm-up events read\n",
            self.job.job_id,
            self.job.status,
            self.job.completed_events(),
            self.job.range_events(),
            r.scored,
            r.dead_letters.values().sum::<u64>(),
            self.skipped,
            r.warmup,
        );
        s += &format!(
            "  {:.2} s, {:.0} events/s read ({:.0} scored/s); {} batches, mean {:.1} rows; execution provider {}\n",
            secs,
            r.events_per_second(),
            r.scored as f64 / secs,
            r.batches,
            r.mean_batch_rows,
            r.execution_provider,
        );
        s += &format!(
            "  output {}; job state {}\n",
            self.job.sink.describe(),
            self.state_file.display()
        );
        if self.job.status != "done" {
            s += &format!(
                "  resume with: weir backfill --resume {} --state-dir {}\n",
                self.job.job_id,
                self.state_file
                    .parent()
                    .map(Path::display)
                    .map(|d| d.to_string())
                    .unwrap_or_default()
            );
        }
        s
    }
}

/// Resolves a new job's offsets.
fn resolve(cfg: &TopologyConfig, brokers: &str, range: &RangeSpec, job: &mut JobState) -> Result<(), BackfillError> {
    let timeout = Duration::from_secs(30);
    let topic = &cfg.source.topic;
    let marks: BTreeMap<i32, (i64, i64)> = watermarks(brokers, topic, timeout)?
        .into_iter()
        .map(|(p, lo, hi)| (p, (lo, hi)))
        .collect();
    let warmup = job.warmup_ms;
    let (score, warm_from_ms) = match range {
        RangeSpec::Time { from_ms, to_ms } => {
            if to_ms <= from_ms {
                return Err(BackfillError::Usage("--to must be after --from".into()));
            }
            let start = offsets_for_time(brokers, topic, *from_ms, timeout)?;
            let stop = offsets_for_time(brokers, topic, *to_ms, timeout)?;
            let score = start.iter().map(|(p, a)| (*p, (*a, stop[p].max(*a)))).collect();
            (score, Some(from_ms - warmup))
        }
        RangeSpec::Offsets { from, to } => {
            let mut score = BTreeMap::new();
            for (p, a) in from {
                let Some(&(lo, hi)) = marks.get(p) else {
                    return Err(BackfillError::Usage(format!(
                        "--from-offsets: topic `{topic}` has no partition {p} (partitions: {:?})",
                        marks.keys().collect::<Vec<_>>()
                    )));
                };
                let b = to.get(p).copied().unwrap_or(hi);
                if *a < lo || b > hi || b < *a {
                    return Err(BackfillError::Usage(format!(
                        "partition {p}: range [{a}, {b}) is outside the topic's offsets [{lo}, {hi}) or reversed"
                    )));
                }
                score.insert(*p, (*a, b));
            }
            if let Some(p) = to.keys().find(|p| !from.contains_key(p)) {
                return Err(BackfillError::Usage(format!(
                    "--to-offsets names partition {p}, which --from-offsets does not"
                )));
            }
            // Nothing precedes a range that starts every partition at its beginning.
            let from_start = marks
                .iter()
                .all(|(p, (lo, _))| score.get(p).is_some_and(|(a, _)| a <= lo));
            let warm_from = if warmup > 0 && !from_start {
                let starts = score.iter().map(|(p, (a, _))| (*p, *a)).collect();
                timestamps_at(brokers, topic, &starts, timeout)?
                    .values()
                    .min()
                    .map(|t| t - warmup)
            } else {
                None
            };
            (score, warm_from)
        }
    };
    let warm = match warm_from_ms {
        Some(t) if warmup > 0 => offsets_for_time(brokers, topic, t, timeout)?,
        _ => BTreeMap::new(),
    };
    job.read = score
        .iter()
        .map(|(p, &(a, b))| (*p, (warm.get(p).copied().unwrap_or(a).min(a), b)))
        .collect();
    // Warm-up in partitions outside an offset range (they hold history of the same entities).
    for (p, &w) in &warm {
        if !job.read.contains_key(p) {
            let stop = match range {
                RangeSpec::Offsets { .. } => marks[p].1,
                RangeSpec::Time { .. } => continue,
            };
            job.read.insert(*p, (w, stop));
        }
    }
    job.score = score;
    if let Some(labels) = &job.labels_topic {
        job.labels = watermarks(brokers, labels, timeout)?
            .into_iter()
            .map(|(p, lo, hi)| (p, (lo, hi)))
            .collect();
    }
    Ok(())
}

/// Scans a Parquet output directory for the job's complete files (adding their rows to the
/// completed ranges) and deletes its in-progress files (left by a crash).
fn reconcile_parquet(dir: &Path, job: &mut JobState) -> Result<u64, BackfillError> {
    let files = score_files(dir, &job_prefix(&job.job_id));
    for path in &files.in_progress {
        tracing::info!(path = %path.display(), "removing an incomplete file of an earlier attempt");
        std::fs::remove_file(path).map_err(|e| BackfillError::State {
            path: path.clone(),
            detail: format!("cannot remove stale file: {e}"),
        })?;
    }
    let mut rows = 0u64;
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for path in &files.complete {
        for (p, o) in score_file_lineages(path)? {
            by_partition.entry(p).or_default().push(o);
            rows += 1;
        }
    }
    for (p, mut offsets) in by_partition {
        offsets.sort_unstable();
        let ranges = job.completed.entry(p).or_default();
        let mut run: Option<(i64, i64)> = None;
        for o in offsets {
            run = match run {
                Some((a, b)) if o == b => Some((a, b + 1)),
                Some((a, b)) if o < b => Some((a, b)), // a duplicate row: already covered
                Some((a, b)) => {
                    add_range(ranges, a, b);
                    Some((o, o + 1))
                }
                None => Some((o, o + 1)),
            };
        }
        if let Some((a, b)) = run {
            add_range(ranges, a, b);
        }
    }
    Ok(rows)
}

/// Runs (or resumes) a backfill job to completion or until shutdown is requested.
///
/// # Errors
/// [`BackfillError`] for an invalid topology, range, sink or job id, a broker that cannot resolve
/// the range, or a failed run. An interrupted run is not an error: its report has status
/// `interrupted`.
pub fn run_backfill(opts: &BackfillOptions) -> Result<BackfillReport, BackfillError> {
    // On a cluster, each process keeps its own share of the job: `<id>-p<process>`.
    let share = |id: &str, cfg: &TopologyConfig| -> String {
        let suffix = format!("-p{}", cfg.cluster.process);
        if cfg.cluster.peers.len() > 1 && !id.ends_with(&suffix) {
            format!("{id}{suffix}")
        } else {
            id.to_string()
        }
    };
    let (mut job, cfg) = match &opts.resume {
        Some(id) => {
            validate_job_id(id)?;
            // The topology (and so the cluster) is the job's: find this process's share.
            let mut cfg = match JobState::load(&opts.state_dir, id) {
                Ok(j) => TopologyConfig::load(&j.topology)?,
                Err(e) if opts.cluster.process.is_some() => {
                    let guess = format!("{id}-p{}", opts.cluster.process.unwrap_or(0));
                    TopologyConfig::load(&JobState::load(&opts.state_dir, &guess).map_err(|_| e)?.topology)?
                }
                Err(e) => return Err(e),
            };
            opts.cluster.apply(&mut cfg)?;
            let mut job = JobState::load(&opts.state_dir, &share(id, &cfg))?;
            // A share covers the partitions of its process in that cluster's shape only.
            let shape = |c: &Option<ClusterShare>| c.as_ref().map(|c| (c.peers.len(), c.workers));
            let now = (cfg.cluster.peers.len() > 1).then_some((cfg.cluster.peers.len(), cfg.topology.workers));
            if shape(&job.cluster) != now {
                let says = |s: Option<(usize, usize)>| match s {
                    Some((n, w)) => format!("{n} processes x {w} workers"),
                    None => "one process".into(),
                };
                return Err(BackfillError::Usage(format!(
                    "job {} ran on {}, this is {}: resume it on the same cluster shape, or start a new job",
                    job.job_id,
                    says(shape(&job.cluster)),
                    says(now)
                )));
            }
            if let Some(b) = &opts.brokers {
                job.brokers = b.clone();
            }
            if job.status == "done" {
                return Err(BackfillError::Usage(format!(
                    "job {id} is already done ({} events); nothing to resume",
                    job.completed_events()
                )));
            }
            job.attempts += 1;
            (job, cfg)
        }
        None => {
            let topology = opts
                .topology
                .as_ref()
                .ok_or_else(|| BackfillError::Usage("give a topology file, or --resume <job id>".into()))?;
            let mut cfg = match &opts.config {
                Some(c) => c.clone(),
                None => TopologyConfig::load(topology)?,
            };
            opts.cluster.apply(&mut cfg)?;
            let job_id = match &opts.job_id {
                Some(id) => {
                    validate_job_id(id)?;
                    share(id, &cfg)
                }
                None if cfg.cluster.peers.len() > 1 => {
                    return Err(BackfillError::Usage(
                        "a backfill on a cluster needs --job-id, the same on every process".into(),
                    ))
                }
                None => new_job_id(),
            };
            let range = opts
                .range
                .as_ref()
                .ok_or_else(|| BackfillError::Usage("give --from/--to or --from-offsets".into()))?;
            let sink = opts
                .sink
                .clone()
                .ok_or_else(|| BackfillError::Usage("give --sink parquet:<dir> or --sink kafka:<topic>".into()))?;
            let brokers = opts.brokers.clone().unwrap_or_else(|| cfg.source.brokers.clone());
            // Resolving the range needs the brokers: name an unreachable address at once.
            let field = if opts.brokers.is_some() {
                "--brokers"
            } else {
                "source.brokers"
            };
            weir_runtime::runner::wait_for_brokers(
                &brokers,
                &cfg.source.properties,
                field,
                false,
                &FlowControl::new(1),
            )?;
            let range_text = match range {
                RangeSpec::Time { from_ms, to_ms } => format!("time [{from_ms}, {to_ms}) ms"),
                RangeSpec::Offsets { from, to } => format!("offsets from {from:?} to {to:?}"),
            };
            let mut job = JobState {
                job_id,
                topology: std::path::absolute(topology).unwrap_or_else(|_| topology.clone()),
                brokers: brokers.clone(),
                topic: cfg.source.topic.clone(),
                labels_topic: cfg.feature_spec().needs_labels().then(|| cfg.labels.topic.clone()),
                sink,
                range: range_text,
                warmup_ms: cfg.backfill_warmup_ms(),
                read: BTreeMap::new(),
                score: BTreeMap::new(),
                labels: BTreeMap::new(),
                completed: BTreeMap::new(),
                status: "running".into(),
                attempts: 1,
                created_at: now_rfc3339(),
                updated_at: now_rfc3339(),
                cluster: (cfg.cluster.peers.len() > 1).then(|| ClusterShare {
                    process: cfg.cluster.process,
                    peers: cfg.cluster.peers.clone(),
                    workers: cfg.topology.workers,
                }),
            };
            resolve(&cfg, &brokers, range, &mut job)?;
            if let Some(c) = &job.cluster {
                // This process scores (and records) the partitions its workers own; every
                // process reads the whole range (its sources take their own partitions of it).
                let (peers, local) = (
                    c.peers.len() * c.workers,
                    c.process * c.workers..(c.process + 1) * c.workers,
                );
                job.score
                    .retain(|p, _| local.contains(&weir_connectors::kafka::source::owner_of(*p, peers)));
            }
            (job, cfg)
        }
    };
    if let SinkSpec::Parquet(dir) = job.sink.clone() {
        reconcile_parquet(&dir, &mut job)?;
    }
    let skipped = job.completed_events();
    job.status = "running".into();
    job.updated_at = now_rfc3339();
    job.save(&opts.state_dir)?;
    tracing::info!(job = %job.job_id, range = %job.range, events = job.range_events(), completed = skipped, "backfill started");
    if let Some(f) = &opts.on_start {
        f(&job);
    }

    let ledger = Arc::new(DeliveryLedger::new());
    let metrics = Arc::new(Metrics::for_process(
        &cfg.topology.name,
        (cfg.cluster.peers.len() > 1).then_some(cfg.cluster.process),
    ));
    let flow = Arc::new(flow_control(&cfg, cfg.backfill.max_batch_rows));
    let filter: ScoreFilter = {
        let (score, done) = (job.score.clone(), job.completed.clone());
        Arc::new(move |l: Lineage| {
            score
                .get(&l.partition)
                .is_some_and(|&(a, b)| l.offset >= a && l.offset < b)
                && !done.get(&l.partition).is_some_and(|r| ranges_contain(r, l.offset))
        })
    };
    let window = BatchWindow {
        max_batch_rows: cfg.backfill.max_batch_rows,
        max_wait: cfg.backfill.max_wait,
    };

    let run_opts = RunOptions {
        brokers: Some(job.brokers.clone()),
        mode: Mode::Range(ReadRanges {
            source: job.read.clone(),
            labels: job.labels.clone(),
        }),
        score_filter: Some(filter),
        window: Some((window, cfg.backfill.max_inflight_batches)),
        sink: Some(job.sink.clone()),
        parquet_prefix: Some(job_run_prefix(&job.job_id, clock::wall_ms())),
        ledger: Some(ledger.clone()),
        flow: Some(flow.clone()),
        metrics: Some(metrics.clone()),
        ..RunOptions::default()
    };

    // Progress: a bar (events read / to read) and the state file, rewritten every second.
    let total_read: i64 = job.read.values().map(|(a, b)| (b - a).max(0)).sum();
    let done = Arc::new(AtomicBool::new(false));
    let shared_job = Arc::new(std::sync::Mutex::new(job.clone()));
    let progress = {
        let (done, metrics, ledger, job, state_dir, flow, shutdown) = (
            done.clone(),
            metrics.clone(),
            ledger.clone(),
            shared_job.clone(),
            opts.state_dir.clone(),
            flow.clone(),
            opts.shutdown.clone(),
        );
        let bar = if opts.progress {
            indicatif::ProgressBar::new(total_read.max(0) as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {human_pos}/{human_len} events {per_sec} ETA {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(job.lock().unwrap().job_id.clone());
        std::thread::spawn(move || {
            let mut last_save = Instant::now();
            let mut last_log = Instant::now();
            while !done.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(20));
                if shutdown.as_ref().is_some_and(|s| s.load(Ordering::Acquire)) && !flow.shutdown_requested() {
                    tracing::info!("shutdown requested: draining in-flight batches, then recording progress");
                    flow.request_shutdown();
                }
                let read = metrics.events_in.get();
                bar.set_position(read);
                bar.set_message(format!("({} scored)", metrics.scores_out.get()));
                if last_save.elapsed() >= Duration::from_secs(1) {
                    last_save = Instant::now();
                    let mut j = job.lock().unwrap();
                    j.record_progress(&ledger);
                    if let Err(e) = j.save(&state_dir) {
                        tracing::warn!(error = %e, "cannot record backfill progress");
                    }
                }
                if last_log.elapsed() >= Duration::from_secs(10) {
                    last_log = Instant::now();
                    tracing::info!(
                        read,
                        to_read = total_read,
                        scored = metrics.scores_out.get(),
                        "backfill progress"
                    );
                }
            }
            bar.finish_and_clear();
        })
    };

    let result = run_topology(&cfg, run_opts);
    done.store(true, Ordering::Release);
    let _ = progress.join();
    let mut job = shared_job.lock().unwrap().clone();
    job.record_progress(&ledger);
    job.status = match (&result, job.is_complete()) {
        (Err(_), _) => "failed",
        (Ok(_), true) => "done",
        (Ok(_), false) => "interrupted",
    }
    .into();
    job.save(&opts.state_dir)?;
    let run = result?;
    tracing::info!(job = %job.job_id, status = %job.status, scored = run.scored, "backfill finished");
    Ok(BackfillReport {
        state_file: JobState::path(&opts.state_dir, &job.job_id),
        job,
        run,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_answer_membership() {
        let mut r = Ranges::new();
        add_range(&mut r, 10, 20);
        add_range(&mut r, 30, 40);
        add_range(&mut r, 20, 25);
        add_range(&mut r, 5, 5);
        assert_eq!(r, vec![(10, 25), (30, 40)]);
        add_range(&mut r, 24, 31);
        assert_eq!(r, vec![(10, 40)]);
        assert!(ranges_contain(&r, 10) && ranges_contain(&r, 39));
        assert!(!ranges_contain(&r, 9) && !ranges_contain(&r, 40));
        assert_eq!(ranges_len(&r), 30);
    }

    #[test]
    fn offsets_and_sinks_parse_with_clear_errors() {
        assert_eq!(parse_offsets("0:10, 3:7").unwrap(), BTreeMap::from([(0, 10), (3, 7)]));
        assert!(parse_offsets("0:10,0:11").unwrap_err().contains("twice"));
        assert!(parse_offsets("0=10").unwrap_err().contains("partition:offset"));
        assert!(parse_offsets("").is_err());
        assert_eq!(
            SinkSpec::parse("parquet:out/x").unwrap(),
            SinkSpec::Parquet(PathBuf::from("out/x"))
        );
        assert_eq!(SinkSpec::parse("kafka:s").unwrap(), SinkSpec::Kafka("s".into()));
        assert!(SinkSpec::parse("s3:bucket").is_err());
    }

    fn job() -> JobState {
        JobState {
            cluster: None,
            job_id: "bf-x".into(),
            topology: PathBuf::from("/t.toml"),
            brokers: "b".into(),
            topic: "t".into(),
            labels_topic: None,
            sink: SinkSpec::Kafka("s".into()),
            range: String::new(),
            warmup_ms: 0,
            read: BTreeMap::from([(0, (0, 100)), (1, (0, 50))]),
            score: BTreeMap::from([(0, (40, 100)), (1, (10, 50))]),
            labels: BTreeMap::new(),
            completed: BTreeMap::new(),
            status: "running".into(),
            attempts: 1,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn progress_comes_from_the_acknowledged_prefix_clipped_to_the_range() {
        let mut j = job();
        let ledger = DeliveryLedger::new();
        for o in 0..100 {
            ledger.register(
                Lineage {
                    partition: 0,
                    offset: o,
                },
                0,
            );
        }
        for o in 0..60 {
            ledger.ack(Lineage {
                partition: 0,
                offset: o,
            });
        }
        ledger.ack(Lineage {
            partition: 0,
            offset: 80,
        }); // not contiguous: not complete yet
        j.record_progress(&ledger);
        assert_eq!(j.completed.get(&0), Some(&vec![(40, 60)]));
        assert_eq!(j.completed_events(), 20);
        assert!(!j.is_complete());
        j.completed.insert(0, vec![(40, 100)]);
        j.completed.insert(1, vec![(10, 50)]);
        assert!(j.is_complete());
        assert_eq!(j.range_events(), 100);
    }

    #[test]
    fn state_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = job();
        j.completed.insert(1, vec![(10, 20), (30, 31)]);
        j.save(dir.path()).unwrap();
        assert_eq!(JobState::load(dir.path(), "bf-x").unwrap(), j);
        let e = JobState::load(dir.path(), "bf-nope").unwrap_err().to_string();
        assert!(e.contains("bf-nope.json"), "{e}");
    }

    #[test]
    fn job_ids_that_are_paths_are_refused() {
        // Issue 13, item 12: `--resume ../../etc/passwd` read `.weir/backfill/../../etc/passwd.json`.
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "../../etc/passwd",
            "/etc/passwd",
            "a/b",
            "..",
            "",
            "bf x",
            &"x".repeat(129),
        ] {
            match JobState::load(dir.path(), bad) {
                Err(BackfillError::Usage(m)) => assert!(m.contains("not a backfill job id"), "{m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(validate_job_id(&new_job_id()).is_ok(), "the ids weir makes are valid");
    }
}
