//! Topology configuration: schema, defaults and validation.
//!
//! A topology file is TOML. It is laid over weir's defaults (`defaults.toml` in this crate, one
//! file with every field), then deserialized with unknown fields rejected, then validated. Every
//! error names the offending field, e.g. `batching.max_batch_rows: must be at least 1`.
//! The fields are documented in `topologies/fraud-scoring.toml` and in the README.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use weir_connectors::kafka::source::StartPosition;
use weir_feature_store::definition::{FieldInfo, FieldKind, LabelLayout};
use weir_feature_store::{FeatureDef, FeatureError, FeatureSpec};
use weir_operators::decode::{EventDecoder, Range};
use weir_operators::inference::ExecutionProvider;
use weir_operators::micro_batch::BatchWindow;
use weir_operators::schema::{FieldSpec, FieldType, Schema, TimeFormat, UnknownFields, Value};

/// weir's defaults for every field.
pub const DEFAULTS_TOML: &str = include_str!("defaults.toml");

/// Errors loading a topology file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read topology file `{path}`: {detail}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        detail: String,
    },
    /// The file is not valid TOML.
    #[error("topology file `{path}` is not valid TOML: {detail}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        detail: String,
    },
    /// A field is unknown, missing or of the wrong type, or its value is invalid.
    #[error("topology file `{path}`: field `{field}`: {detail}")]
    Field {
        /// The file.
        path: PathBuf,
        /// Dotted field path, e.g. `batching.max_wait`.
        field: String,
        /// What is wrong.
        detail: String,
    },
}

/// `[topology]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologySection {
    /// Name, used as the `topology` label of every metric.
    pub name: String,
    /// Timely worker threads (source, decode, features, micro-batching).
    pub workers: usize,
    /// Resident memory bound, e.g. `"1GiB"` (bytesize units): above 90% of it sources pause until
    /// every event in flight was scored (a backstop: the in-flight limits bound the buffers;
    /// the feature store's windows grow with the traffic in them). `None`: no bound.
    #[serde(default)]
    pub max_memory: Option<bytesize::ByteSize>,
}

/// `[source]`: a Kafka topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Topic to read.
    pub topic: String,
    /// Consumer group id.
    pub group_id: String,
    /// `committed`, `earliest`, `latest`, or an RFC 3339 time such as `2018-05-01T00:00:00Z`.
    pub start: String,
    /// Most messages read per source activation.
    pub max_poll_records: usize,
    /// Interval between offset commits.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Backpressure lasting this long counts as a pause episode (reading stops at once either way;
    /// a source that subscribed to its group, rather than assigning partitions, pauses them then).
    #[serde(with = "humantime_serde")]
    pub pause_after: Duration,
    /// Most events between the source and inference (decoding, waiting in the feature store for
    /// the watermark, in micro-batches) before the source holds back.
    pub max_in_flight_rows: usize,
    /// A partition silent this long stops holding the watermark back.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Watermark lag behind the largest event time seen.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// Where event time comes from: `message_timestamp` (the Kafka timestamp) or the name of a
    /// timestamp field of `[schema]`. The watermark and the windows both follow it.
    pub event_time: String,
    /// Longest wait at shutdown for in-flight events before the final commit.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// librdkafka consumer properties, overriding weir's.
    pub properties: BTreeMap<String, String>,
}

/// `[schema]`: the events' declared fields (see `weir_operators::schema`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaSection {
    /// Payload format: `json` (the only one so far; the switch where Avro goes next).
    pub format: String,
    /// Keys weir does not read: `ignore` (the default) or `reject` (a dead letter).
    pub unknown_fields: String,
    /// The event id field (a required integer or string), carried to the sinks as it came.
    pub id: String,
    /// The fields weir reads, in any order.
    pub fields: Vec<FieldDecl>,
}

/// One `[[schema.fields]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDecl {
    /// The JSON key.
    pub name: String,
    /// `integer`, `float`, `string`, `bool` or `timestamp`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `timestamp`: `epoch_ms` (default), `epoch_s`, `epoch_us` or `rfc3339`.
    #[serde(default)]
    pub format: Option<String>,
    /// `float`: factor applied to the number read (e.g. 0.01 for integer cents). Default 1.
    #[serde(default)]
    pub scale: Option<f64>,
    /// Whether an event without it is a dead letter (default true).
    #[serde(default = "yes")]
    pub required: bool,
    /// The value of an optional field that is absent (or null), of the field's type.
    #[serde(default)]
    pub default: Option<toml::Value>,
    /// `integer`, `float`: least accepted value (after scaling); below it, a dead letter.
    #[serde(default)]
    pub min: Option<f64>,
    /// `integer`, `float`: greatest accepted value (after scaling).
    #[serde(default)]
    pub max: Option<f64>,
}

fn yes() -> bool {
    true
}

/// `[labels]`: where labels come from (for `ratio` features). A label message is a JSON object
/// with the labelled event's id (under `id`), the label (under `label`), the entity fields of
/// the features that read labels (named as in `[schema]`), and optionally the event's time
/// field; it is timed by its message timestamp (when it became known).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsSection {
    /// Topic of labels, on the source's brokers.
    pub topic: String,
    /// The field holding the labelled event's id (default: `[schema] id`).
    #[serde(default)]
    pub id: Option<String>,
    /// The field holding the label: 0 or 1 (`integer`), or false or true (`bool`).
    pub label: String,
    /// `integer` or `bool`.
    pub label_type: String,
}

/// `[decode]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeSection {
    /// Largest accepted distance of a transaction time into the future (of the wall clock).
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// Largest accepted distance of a transaction time after its own Kafka message timestamp
    /// (restarts and backfills look offsets up by message timestamp and must not skip it).
    #[serde(with = "humantime_serde")]
    pub allowed_future: Duration,
    /// Largest accepted payload, bytes.
    pub max_payload_bytes: usize,
}

/// `[dead_letter]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterSection {
    /// Dead-letter topic (on the source's brokers).
    pub topic: String,
    /// librdkafka producer properties of the dead-letter producer, overriding weir's (the
    /// score sink's `sink.properties` do not apply to it).
    pub properties: BTreeMap<String, String>,
}

/// `[model]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Path of the ONNX model, relative to the topology file's directory.
    pub path: PathBuf,
    /// Version written next to every score.
    pub version: String,
    /// Feature names, in the model's input order.
    pub features: Vec<String>,
    /// Input name (default: the model's only input).
    pub input: Option<String>,
    /// Output name (default: `probabilities`, else the first float output).
    pub output: Option<String>,
    /// Execution providers in order of preference: `cuda`, `cpu`.
    pub execution_providers: Vec<String>,
    /// ONNX Runtime intra-op threads per session.
    pub intra_threads: usize,
    /// Inference threads, one session each.
    pub inference_threads: usize,
}

/// `[batching]`: the micro-batch window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingSection {
    /// Flush at this many rows (with `max_wait = "auto"`: the most the controller uses).
    pub max_batch_rows: usize,
    /// Flush when the oldest row waited this long. `"auto"` (read as [`BatchingSection::adaptive`])
    /// lets a controller set it and `max_batch_rows` for `p99_target`
    /// (`weir_operators::adaptive`); this is then its starting value.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Batches queued for inference before sources pause.
    pub max_inflight_batches: usize,
    /// With `max_wait = "auto"`: the read-to-acknowledgement p99 the controller keeps under.
    #[serde(with = "humantime_serde")]
    pub p99_target: Duration,
    /// `max_wait = "auto"` was given.
    #[serde(skip)]
    pub adaptive: bool,
}

impl BatchingSection {
    /// The live micro-batch window (`max_batch_rows`, `max_wait`).
    pub fn window(&self) -> BatchWindow {
        BatchWindow {
            max_batch_rows: self.max_batch_rows,
            max_wait: self.max_wait,
        }
    }
}

/// `[backfill]`: how `weir backfill` replays a bounded range of the source topic. The operators
/// are the same as live; only the micro-batch window and the warm-up differ.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillSection {
    /// Flush at this many rows (a backlog fills batches: larger batches amortise inference).
    pub max_batch_rows: usize,
    /// Flush when the oldest row waited this long (rarely reached on a backlog).
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Batches queued for inference before sources pause.
    pub max_inflight_batches: usize,
    /// History replayed into the feature store before the range, without scoring: `"auto"`
    /// (the longest `window + delay` of the `[[feature]]`s) or a duration.
    pub warmup: String,
}

/// `[snapshot]`: snapshots of the feature store's state, so that a live restart replays only
/// what came after the latest one (see `weir_feature_store::snapshot`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSection {
    /// Directory, relative to the working directory; empty: no snapshots (a restart replays the
    /// longest `window + delay` of history). One directory per topology and consumer group.
    pub dir: PathBuf,
    /// Event time between cuts, and the least wall-clock time between two snapshots.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Snapshots kept (older ones are deleted), at least 1.
    pub keep: usize,
}

/// `[metrics]`: the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `host:port` to listen on, e.g. `0.0.0.0:9464`; empty: no endpoint.
    pub listen: String,
}

/// `[sink]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSection {
    /// `kafka` or `parquet`.
    pub kind: String,
    /// Kafka topic (kind = kafka).
    pub topic: String,
    /// Output directory (kind = parquet), relative to the working directory.
    pub path: Option<PathBuf>,
    /// Rows per Parquet file.
    pub max_rows_per_file: usize,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// librdkafka producer properties, overriding weir's (kind = kafka).
    pub properties: BTreeMap<String, String>,
}

/// `[[shadow]]`: a challenger model scoring the same rows as `[model]` beside it: its scores go
/// to their own topic (or Parquet directory) and never replace the primary score.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSection {
    /// Path of the ONNX model, relative to the topology file's directory (same features, input
    /// and output as `[model]`).
    pub path: PathBuf,
    /// Version written next to its scores.
    pub version: String,
    /// Fraction of events it scores, `(0, 1]`, chosen by a hash of the event id (a replay
    /// samples the same events).
    #[serde(default = "one")]
    pub fraction: f64,
    /// Kafka topic of its scores (default `<sink.topic>-<version>`); with a Parquet sink its
    /// files go to `<sink dir>/shadow-<version>/`.
    #[serde(default)]
    pub topic: Option<String>,
}

fn one() -> f64 {
    1.0
}

/// `[cluster]`: one topology run by several processes as one timely cluster (timely's
/// `CommunicationConfig::Cluster`: every process runs `topology.workers` workers, and the
/// partitions, the feature state and the commits are spread over all of them). Empty `peers`
/// and `hostfile`: one process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// This process's index into `peers`, `0..peers.len()` (`weir run --process`).
    pub process: usize,
    /// Every process's `host:port`, in process order, this one included: where each listens
    /// for the others (`--peers`).
    pub peers: Vec<String>,
    /// A file of `host:port` lines (blank lines and `#` comments skipped), instead of `peers`
    /// (`--hostfile`), as timely's examples take; read at start-up, relative to the working
    /// directory.
    pub hostfile: PathBuf,
    /// How long a process waits at start for its peers to connect, before it exits naming
    /// those it could not reach.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl ClusterSection {
    /// Processes in the cluster (1 without peers).
    pub fn processes(&self) -> usize {
        self.peers.len().max(1)
    }
}

/// Command-line overrides of `[cluster]` (`--process`, `--peers`, `--hostfile`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterOverride {
    /// `--process`.
    pub process: Option<usize>,
    /// `--peers` (replaces `cluster.peers` and `cluster.hostfile`).
    pub peers: Option<Vec<String>>,
    /// `--hostfile` (replaces `cluster.peers` and `cluster.hostfile`).
    pub hostfile: Option<PathBuf>,
}

impl ClusterOverride {
    /// Applies the flags to `cfg` and resolves its cluster ([`TopologyConfig::resolve_cluster`]).
    ///
    /// # Errors
    /// As [`TopologyConfig::resolve_cluster`].
    pub fn apply(&self, cfg: &mut TopologyConfig) -> Result<(), ConfigError> {
        if let Some(p) = self.process {
            cfg.cluster.process = p;
        }
        if let Some(peers) = &self.peers {
            cfg.cluster.peers = peers.clone();
            cfg.cluster.hostfile = PathBuf::new();
        }
        if let Some(h) = &self.hostfile {
            cfg.cluster.peers = Vec::new();
            cfg.cluster.hostfile = h.clone();
        }
        cfg.resolve_cluster()
    }
}

/// A whole topology file, defaults applied.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyConfig {
    /// `[topology]`.
    pub topology: TopologySection,
    /// `[schema]`.
    pub schema: SchemaSection,
    /// `[source]`.
    pub source: SourceSection,
    /// `[decode]`.
    pub decode: DecodeSection,
    /// `[dead_letter]`.
    pub dead_letter: DeadLetterSection,
    /// `[model]`.
    pub model: ModelSection,
    /// `[batching]`.
    pub batching: BatchingSection,
    /// `[sink]`.
    pub sink: SinkSection,
    /// `[labels]`.
    pub labels: LabelsSection,
    /// `[backfill]`.
    pub backfill: BackfillSection,
    /// `[metrics]`.
    pub metrics: MetricsSection,
    /// `[snapshot]`.
    pub snapshot: SnapshotSection,
    /// `[cluster]`.
    pub cluster: ClusterSection,
    /// `[[shadow]]`: challenger models.
    #[serde(default, rename = "shadow")]
    pub shadows: Vec<ShadowSection>,
    /// `[[feature]]`: feature definitions (per-event and windowed).
    #[serde(default, rename = "feature")]
    pub features: Vec<FeatureDef>,
    /// Directory of the topology file (model paths are relative to it).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file this was loaded from.
    #[serde(skip)]
    pub file: PathBuf,
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(bv) if bv.is_table() && v.is_table() => merge(bv, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Parses a start position: `committed`, `earliest`, `latest` or an RFC 3339 time.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_start(s: &str) -> Result<StartPosition, String> {
    match s {
        "committed" => Ok(StartPosition::Committed),
        "earliest" => Ok(StartPosition::Earliest),
        "latest" => Ok(StartPosition::Latest),
        t => humantime::parse_rfc3339_weak(t)
            .map(|st| {
                StartPosition::Timestamp(
                    st.duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0),
                )
            })
            .map_err(|e| format!("`{t}` is not committed, earliest, latest or an RFC 3339 time ({e})")),
    }
}

impl TopologyConfig {
    /// Reads `cluster.hostfile` into `cluster.peers` (the flags `--peers`/`--hostfile` set
    /// either before this), then validates the cluster: `process` within the peers, each peer a
    /// `host:port`, none twice.
    ///
    /// # Errors
    /// [`ConfigError::Field`] naming `cluster.hostfile`, `cluster.peers[i]` or `cluster.process`.
    pub fn resolve_cluster(&mut self) -> Result<(), ConfigError> {
        let file = self.cluster.hostfile.clone();
        if !file.as_os_str().is_empty() {
            if !self.cluster.peers.is_empty() {
                return Err(self.field_error("cluster.hostfile", "give peers or a hostfile, not both"));
            }
            let text = std::fs::read_to_string(&file)
                .map_err(|e| self.field_error("cluster.hostfile", format!("cannot read `{}`: {e}", file.display())))?;
            self.cluster.peers = text
                .lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            if self.cluster.peers.is_empty() {
                return Err(self.field_error("cluster.hostfile", format!("`{}` lists no peer", file.display())));
            }
        }
        self.validate_cluster()
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        let mut seen = std::collections::HashSet::new();
        for (i, peer) in c.peers.iter().enumerate() {
            let ok = peer
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(self.field_error(&format!("cluster.peers[{i}]"), format!("`{peer}` is not host:port")));
            }
            if !seen.insert(peer) {
                return Err(self.field_error(&format!("cluster.peers[{i}]"), format!("`{peer}` is listed twice")));
            }
        }
        if !c.peers.is_empty() && c.process >= c.peers.len() {
            return Err(self.field_error(
                "cluster.process",
                format!("{} is not below the number of peers ({})", c.process, c.peers.len()),
            ));
        }
        if c.peers.is_empty() && c.process != 0 {
            return Err(self.field_error("cluster.process", "must be 0 without cluster.peers"));
        }
        Ok(())
    }

    /// Loads, merges over the defaults, and validates a topology file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and, for content errors, the field.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        Self::parse_file(path, &text)
    }

    /// As [`TopologyConfig::load`], for the bytes `text` already read from `path` (the live
    /// reloader compares them with the last version before parsing).
    ///
    /// # Errors
    /// As [`TopologyConfig::load`]; text that is not UTF-8 is a [`ConfigError::Read`].
    pub fn parse_file(path: &Path, text: &[u8]) -> Result<Self, ConfigError> {
        let text = std::str::from_utf8(text).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            detail: format!("not UTF-8: {e}"),
        })?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(text, path, &base_dir)
    }

    /// Parses topology TOML `text` (reported as `file`), resolving model paths against `base_dir`.
    ///
    /// # Errors
    /// As [`TopologyConfig::load`].
    pub fn parse(text: &str, file: &Path, base_dir: &Path) -> Result<Self, ConfigError> {
        let user: toml::Value = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: file.to_path_buf(),
            detail: e.to_string(),
        })?;
        let mut merged: toml::Value = toml::from_str(DEFAULTS_TOML).expect("defaults.toml is valid");
        merge(&mut merged, user);
        // `[batching] max_wait = "auto"`: the adaptive window, starting at a quarter of its target.
        let mut adaptive = false;
        if let Some(b) = merged.get_mut("batching").and_then(toml::Value::as_table_mut) {
            if b.get("max_wait").and_then(toml::Value::as_str) == Some("auto") {
                adaptive = true;
                let start = b
                    .get("p99_target")
                    .and_then(toml::Value::as_str)
                    .and_then(|t| humantime::parse_duration(t).ok())
                    .map_or(Duration::from_millis(5), |t| (t / 4).max(Duration::from_micros(200)));
                b.insert(
                    "max_wait".into(),
                    toml::Value::String(format!("{}us", start.as_micros())),
                );
            }
        }
        let mut cfg: TopologyConfig = serde_path_to_error::deserialize(merged).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner().to_string();
            // toml reports an unknown key as the message; name it as a field too.
            let field = match inner.split('`').nth(1) {
                Some(name) if inner.starts_with("unknown field") && !field.ends_with(name) => {
                    if field == "." || field.is_empty() {
                        name.to_string()
                    } else {
                        format!("{field}.{name}")
                    }
                }
                _ => field,
            };
            ConfigError::Field {
                path: file.to_path_buf(),
                field,
                detail: inner,
            }
        })?;
        cfg.base_dir = base_dir.to_path_buf();
        cfg.file = file.to_path_buf();
        cfg.batching.adaptive = adaptive;
        cfg.validate()?;
        Ok(cfg)
    }

    fn field_error(&self, field: &str, detail: impl Into<String>) -> ConfigError {
        ConfigError::Field {
            path: self.file.clone(),
            field: field.to_string(),
            detail: detail.into(),
        }
    }

    /// Checks values that the types alone do not constrain.
    ///
    /// # Errors
    /// [`ConfigError::Field`] naming the first invalid field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("topology.workers", self.topology.workers),
            ("source.max_poll_records", self.source.max_poll_records),
            ("source.max_in_flight_rows", self.source.max_in_flight_rows),
            ("decode.max_payload_bytes", self.decode.max_payload_bytes),
            ("model.intra_threads", self.model.intra_threads),
            ("model.inference_threads", self.model.inference_threads),
            ("batching.max_batch_rows", self.batching.max_batch_rows),
            ("batching.max_inflight_batches", self.batching.max_inflight_batches),
            ("sink.max_rows_per_file", self.sink.max_rows_per_file),
            ("sink.row_group_rows", self.sink.row_group_rows),
            ("backfill.max_batch_rows", self.backfill.max_batch_rows),
            ("backfill.max_inflight_batches", self.backfill.max_inflight_batches),
            ("snapshot.keep", self.snapshot.keep),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(self.field_error(field, "must be at least 1"));
            }
        }
        if self.topology.max_memory.is_some_and(|m| m.as_u64() < 64 << 20) {
            return Err(self.field_error("topology.max_memory", "must be at least 64 MiB"));
        }
        if self.topology.workers > 64 {
            return Err(self.field_error("topology.workers", "must be at most 64"));
        }
        self.validate_cluster()?;
        for (i, s) in self.shadows.iter().enumerate() {
            if !(s.fraction > 0.0 && s.fraction <= 1.0) {
                return Err(self.field_error(&format!("shadow[{i}].fraction"), "must be in (0, 1]"));
            }
            if s.version.is_empty() || s.version == self.model.version {
                return Err(self.field_error(
                    &format!("shadow[{i}].version"),
                    "must be set and differ from model.version",
                ));
            }
        }
        for (field, v) in [
            ("topology.name", &self.topology.name),
            ("source.brokers", &self.source.brokers),
            ("source.topic", &self.source.topic),
            ("source.group_id", &self.source.group_id),
            ("dead_letter.topic", &self.dead_letter.topic),
            ("model.version", &self.model.version),
        ] {
            if v.trim().is_empty() {
                return Err(self.field_error(field, "must not be empty"));
            }
        }
        // Durations become i64/u64 milliseconds: beyond a century they are mistakes, and far
        // beyond it they overflow (`300000000y` turned into a negative limit).
        const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);
        let durations = [
            ("source.commit_interval", self.source.commit_interval),
            ("source.pause_after", self.source.pause_after),
            ("source.idle_timeout", self.source.idle_timeout),
            ("source.allowed_lateness", self.source.allowed_lateness),
            ("source.drain_timeout", self.source.drain_timeout),
            ("decode.max_future", self.decode.max_future),
            ("decode.allowed_future", self.decode.allowed_future),
            ("batching.max_wait", self.batching.max_wait),
            ("backfill.max_wait", self.backfill.max_wait),
            ("snapshot.interval", self.snapshot.interval),
        ];
        for (field, d) in durations {
            if d > MAX_DURATION {
                return Err(self.field_error(
                    field,
                    format!("{} is more than 100 years", humantime::format_duration(d)),
                ));
            }
        }
        if !self.snapshot.dir.as_os_str().is_empty() && self.snapshot.interval.is_zero() {
            return Err(self.field_error("snapshot.interval", "must be greater than 0"));
        }
        for (i, f) in self.features.iter().enumerate() {
            for (what, d) in [("window", f.window), ("delay", f.delay)] {
                let Some(d) = d else { continue };
                if d > MAX_DURATION {
                    return Err(self.field_error(
                        &format!("feature[{i}].{what}"),
                        format!("{} is more than 100 years", humantime::format_duration(d)),
                    ));
                }
            }
        }
        if self.backfill.warmup != "auto" {
            if let Ok(d) = humantime::parse_duration(&self.backfill.warmup) {
                if d > MAX_DURATION {
                    return Err(self.field_error("backfill.warmup", "more than 100 years"));
                }
            }
        }
        for (k, v) in &self.source.properties {
            if let Some(why) = weir_connectors::kafka::unsafe_consumer_property(k, v) {
                return Err(self.field_error(&format!("source.properties.{k}"), format!("`{v}` is refused: {why}")));
            }
        }
        for (section, props) in [
            ("sink", &self.sink.properties),
            ("dead_letter", &self.dead_letter.properties),
        ] {
            for (k, v) in props {
                if let Some(why) = weir_connectors::kafka::sink::unsafe_producer_property(k, v) {
                    return Err(
                        self.field_error(&format!("{section}.properties.{k}"), format!("`{v}` is refused: {why}"))
                    );
                }
            }
        }
        if self.source.pause_after.is_zero() {
            return Err(self.field_error("source.pause_after", "must be greater than 0"));
        }
        parse_start(&self.source.start).map_err(|e| self.field_error("source.start", e))?;
        if self.batching.max_wait.is_zero() {
            return Err(self.field_error(
                "batching.max_wait",
                "must be greater than 0 (e.g. \"5ms\"), or \"auto\"",
            ));
        }
        if self.batching.p99_target < Duration::from_millis(1) {
            return Err(self.field_error("batching.p99_target", "must be at least 1ms"));
        }
        if self.batching.max_batch_rows > 1_000_000 {
            return Err(self.field_error("batching.max_batch_rows", "must be at most 1000000"));
        }
        if self.backfill.max_wait.is_zero() {
            return Err(self.field_error("backfill.max_wait", "must be greater than 0 (e.g. \"100ms\")"));
        }
        if self.backfill.max_batch_rows > 1_000_000 {
            return Err(self.field_error("backfill.max_batch_rows", "must be at most 1000000"));
        }
        if !self.metrics.listen.is_empty() {
            use std::net::ToSocketAddrs;
            self.metrics.listen.to_socket_addrs().map_err(|e| {
                self.field_error(
                    "metrics.listen",
                    format!("`{}` is not host:port ({e})", self.metrics.listen),
                )
            })?;
        }
        if self.backfill.warmup != "auto" {
            humantime::parse_duration(&self.backfill.warmup).map_err(|e| {
                self.field_error(
                    "backfill.warmup",
                    format!(
                        "`{}` is not \"auto\" or a duration such as \"30d\" ({e})",
                        self.backfill.warmup
                    ),
                )
            })?;
        }
        if self.source.idle_timeout.is_zero() {
            return Err(self.field_error("source.idle_timeout", "must be greater than 0"));
        }
        let schema = self.build_schema()?;
        if self.source.event_time != "message_timestamp" && schema.time_index().is_none() {
            unreachable!("build_schema checks source.event_time");
        }
        match FeatureSpec::new(
            &self.model.features,
            &self.features,
            &self.field_infos(&schema),
            schema.time_index(),
        ) {
            Ok(spec) => {
                if spec.needs_labels() {
                    self.build_label_schema(&schema, &spec)?;
                }
            }
            Err(e @ FeatureError::Field { index, key, .. }) => {
                return Err(self.field_error(&format!("feature[{index}].{key}"), e.to_string()))
            }
            Err(e @ FeatureError::Duplicate(_)) if matches!(&e, FeatureError::Duplicate(n) if self.features.iter().any(|f| &f.name == n)) => {
                return Err(self.field_error("feature", e.to_string()))
            }
            Err(e) => return Err(self.field_error("model.features", e.to_string())),
        }
        if self.labels.topic.trim().is_empty() {
            return Err(self.field_error("labels.topic", "must not be empty"));
        }
        if self.model.execution_providers.is_empty() {
            return Err(self.field_error(
                "model.execution_providers",
                "must list at least one provider (e.g. [\"cpu\"])",
            ));
        }
        for ep in &self.model.execution_providers {
            ep.parse::<ExecutionProvider>()
                .map_err(|e| self.field_error("model.execution_providers", e.to_string()))?;
        }
        match self.sink.kind.as_str() {
            "kafka" => {
                if self.sink.topic.trim().is_empty() {
                    return Err(self.field_error("sink.topic", "must not be empty for kind = \"kafka\""));
                }
            }
            "parquet" => {
                if self.sink.path.is_none() {
                    return Err(self.field_error("sink.path", "is required for kind = \"parquet\""));
                }
            }
            other => return Err(self.field_error("sink.kind", format!("`{other}` is not kafka or parquet"))),
        }
        Ok(())
    }

    /// Builds the Kafka clients' configurations (source and labels consumers, score and
    /// dead-letter producers) without connecting, so that a property librdkafka does not know or
    /// refuses fails here, naming its section, rather than after start-up.
    ///
    /// # Errors
    /// [`ConfigError::Field`] naming `source.properties`, `sink.properties` or
    /// `dead_letter.properties` with librdkafka's message.
    pub fn check_clients(&self) -> Result<(), ConfigError> {
        use weir_connectors::kafka::check_client_properties;
        let brokers = &self.source.brokers;
        check_client_properties(brokers, &self.source.properties, false)
            .map_err(|e| self.field_error("source.properties", e))?;
        if self.sink.kind == "kafka" {
            check_client_properties(brokers, &self.sink.properties, true)
                .map_err(|e| self.field_error("sink.properties", e))?;
        }
        check_client_properties(brokers, &self.dead_letter.properties, true)
            .map_err(|e| self.field_error("dead_letter.properties", e))
    }

    /// The event time of the source, per `source.event_time`.
    pub fn event_time(&self) -> weir_connectors::kafka::source::EventTime {
        use weir_connectors::kafka::source::EventTime;
        let schema = self.schema();
        match schema.time_index() {
            None => EventTime::MessageTimestamp,
            Some(_) => EventTime::Payload(std::sync::Arc::new(weir_operators::decode::payload_time(
                &schema,
                self.decode_limits(),
            ))),
        }
    }

    /// The decode limits of `[decode]`.
    pub fn decode_limits(&self) -> weir_operators::decode::DecodeLimits {
        weir_operators::decode::DecodeLimits {
            max_future_ms: self.decode.max_future.as_millis() as i64,
            allowed_future_ms: self.decode.allowed_future.as_millis() as i64,
            max_payload_bytes: self.decode.max_payload_bytes,
        }
    }

    /// The declared event schema (validated).
    pub fn schema(&self) -> Schema {
        self.build_schema().expect("validated")
    }

    /// The decoder of the source's events: the schema, its ranges and `[decode]`'s limits.
    pub fn decoder(&self) -> EventDecoder {
        let ranges = self
            .schema
            .fields
            .iter()
            .enumerate()
            .filter(|(_, f)| f.min.is_some() || f.max.is_some())
            .map(|(i, f)| Range {
                field: i,
                min: f.min.unwrap_or(f64::NEG_INFINITY),
                max: f.max.unwrap_or(f64::INFINITY),
            })
            .collect();
        EventDecoder::new(self.schema(), self.decode_limits()).with_ranges(ranges)
    }

    /// How sinks write the event id.
    pub fn id_column(&self) -> weir_connectors::IdColumn {
        let schema = self.schema();
        let f = &schema.fields()[schema.id_index()];
        weir_connectors::IdColumn {
            name: f.name.clone(),
            string: f.kind == FieldType::String,
        }
    }

    /// The declared fields as the feature store sees them.
    fn field_infos(&self, schema: &Schema) -> Vec<FieldInfo> {
        schema
            .fields()
            .iter()
            .map(|f| FieldInfo {
                name: f.name.clone(),
                kind: match f.kind {
                    FieldType::Integer => FieldKind::Integer,
                    FieldType::Float { .. } => FieldKind::Float,
                    FieldType::String => FieldKind::String,
                    FieldType::Bool => FieldKind::Bool,
                    FieldType::Timestamp(_) => FieldKind::Timestamp,
                },
                always: f.required || f.default.is_some(),
            })
            .collect()
    }

    /// Compiles `[schema]` (and `source.event_time`, its time field) to a [`Schema`].
    fn build_schema(&self) -> Result<Schema, ConfigError> {
        let sec = &self.schema;
        if sec.format != "json" {
            return Err(self.field_error(
                "schema.format",
                format!("`{}` is not supported (supported: json)", sec.format),
            ));
        }
        let unknown = match sec.unknown_fields.as_str() {
            "ignore" => UnknownFields::Ignore,
            "reject" => UnknownFields::Reject,
            other => {
                return Err(self.field_error("schema.unknown_fields", format!("`{other}` is not ignore or reject")))
            }
        };
        if sec.fields.is_empty() {
            return Err(self.field_error("schema.fields", "declares no field"));
        }
        let mut fields = Vec::new();
        for (i, d) in sec.fields.iter().enumerate() {
            let at = |key: &str| format!("schema.fields[{i}].{key}");
            let kind = match (d.kind.as_str(), d.format.as_deref(), d.scale) {
                ("timestamp", fmt, None) => FieldType::Timestamp(match fmt.unwrap_or("epoch_ms") {
                    "epoch_ms" => TimeFormat::EpochMillis,
                    "epoch_s" => TimeFormat::EpochSeconds,
                    "epoch_us" => TimeFormat::EpochMicros,
                    "rfc3339" => TimeFormat::Rfc3339,
                    other => {
                        return Err(self.field_error(
                            &at("format"),
                            format!("`{other}` is not epoch_ms, epoch_s, epoch_us or rfc3339"),
                        ))
                    }
                }),
                (_, Some(_), _) => return Err(self.field_error(&at("format"), "applies to timestamps only")),
                ("float", None, scale) => FieldType::Float {
                    scale: scale.unwrap_or(1.0),
                },
                (_, None, Some(_)) => return Err(self.field_error(&at("scale"), "applies to floats only")),
                ("integer", None, None) => FieldType::Integer,
                ("string", None, None) => FieldType::String,
                ("bool", None, None) => FieldType::Bool,
                (other, _, _) => {
                    return Err(self.field_error(
                        &at("type"),
                        format!("`{other}` is not integer, float, string, bool or timestamp"),
                    ))
                }
            };
            if (d.min.is_some() || d.max.is_some()) && !matches!(kind, FieldType::Integer | FieldType::Float { .. }) {
                return Err(self.field_error(&at("min"), "a range applies to integers and floats only"));
            }
            if let (Some(lo), Some(hi)) = (d.min, d.max) {
                if lo.is_nan() || hi.is_nan() || lo > hi {
                    return Err(self.field_error(&at("max"), format!("{hi} is below min {lo}")));
                }
            }
            let default = match &d.default {
                None => None,
                Some(v) => Some(
                    toml_value(kind, v)
                        .ok_or_else(|| self.field_error(&at("default"), format!("{v} is not a {}", d.kind)))?,
                ),
            };
            if default.is_some() && d.required {
                return Err(self.field_error(&at("default"), "a required field has no default (set required = false)"));
            }
            fields.push(FieldSpec {
                name: d.name.clone(),
                kind,
                required: d.required,
                default,
            });
        }
        let time = match self.source.event_time.as_str() {
            "message_timestamp" => None,
            f => {
                match fields.iter().find(|x| x.name == f) {
                    Some(x) if matches!(x.kind, FieldType::Timestamp(_)) && x.required => {}
                    Some(_) => {
                        return Err(self.field_error(
                            "source.event_time",
                            format!("`{f}` is not a required timestamp field of [schema]"),
                        ))
                    }
                    None => {
                        return Err(self.field_error(
                            "source.event_time",
                            format!("`{f}` is not message_timestamp or a field of [schema]"),
                        ))
                    }
                }
                Some(f)
            }
        };
        Schema::new(fields, &sec.id, time, unknown).map_err(|e| {
            let field = match e.field.as_deref() {
                Some(name) if name == sec.id => "schema.id".to_string(),
                Some(name) => match sec.fields.iter().position(|f| f.name == name) {
                    Some(i) => format!("schema.fields[{i}]"),
                    None => "schema.fields".to_string(),
                },
                None => "schema".to_string(),
            };
            self.field_error(&field, e.to_string())
        })
    }

    /// The schema of label messages: the labelled event's id (as `[schema]` types it), the
    /// label, the entity fields of the stages that read labels (required), and the event's time
    /// field (optional); other keys are ignored. Returns it with where each value lands.
    fn build_label_schema(&self, schema: &Schema, spec: &FeatureSpec) -> Result<(Schema, LabelLayout), ConfigError> {
        let id_name = self.labels.id.clone().unwrap_or_else(|| self.schema.id.clone());
        let events = schema.fields();
        let id_kind = events[schema.id_index()].kind;
        let label_kind = match self.labels.label_type.as_str() {
            "integer" => FieldType::Integer,
            "bool" => FieldType::Bool,
            other => return Err(self.field_error("labels.label_type", format!("`{other}` is not integer or bool"))),
        };
        let mut fields = vec![
            FieldSpec::required(&id_name, id_kind),
            FieldSpec::required(&self.labels.label, label_kind),
        ];
        let mut entity_fields = Vec::new();
        for f in spec.label_entity_fields() {
            let name = &events[f].name;
            if fields.iter().any(|x| &x.name == name) {
                return Err(self.field_error(
                    "labels",
                    format!("`{name}` is an entity field and the label's id or label"),
                ));
            }
            entity_fields.push((f, fields.len()));
            fields.push(FieldSpec::required(name, events[f].kind));
        }
        let time = match schema.time_index() {
            Some(t) if !fields.iter().any(|x| x.name == events[t].name) => {
                fields.push(FieldSpec::optional(&events[t].name, events[t].kind, None));
                Some(fields.len() - 1)
            }
            _ => None,
        };
        let label_schema = Schema::new(fields, &id_name, None, UnknownFields::Ignore)
            .map_err(|e| self.field_error("labels", e.to_string()))?;
        Ok((
            label_schema,
            LabelLayout {
                id: 0,
                label: 1,
                time,
                entity_fields,
            },
        ))
    }

    /// The label messages' schema and layout (validated; the spec must need labels).
    pub fn label_schema(&self) -> (Schema, LabelLayout) {
        let schema = self.schema();
        self.build_label_schema(&schema, &self.feature_spec())
            .expect("validated")
    }

    /// The path of shadow model `i`, resolved against the file's directory.
    pub fn shadow_path(&self, i: usize) -> PathBuf {
        let p = &self.shadows[i].path;
        if p.is_absolute() {
            p.clone()
        } else {
            self.base_dir.join(p)
        }
    }

    /// The Kafka topic of shadow model `i`'s scores.
    pub fn shadow_topic(&self, i: usize) -> String {
        self.shadows[i]
            .topic
            .clone()
            .unwrap_or_else(|| format!("{}-{}", self.sink.topic, self.shadows[i].version))
    }

    /// The model path, resolved against the topology file's directory.
    pub fn model_path(&self) -> PathBuf {
        if self.model.path.is_absolute() {
            self.model.path.clone()
        } else {
            self.base_dir.join(&self.model.path)
        }
    }

    /// The source start position (validated).
    pub fn start_position(&self) -> StartPosition {
        parse_start(&self.source.start).expect("validated")
    }

    /// The feature spec (validated).
    pub fn feature_spec(&self) -> FeatureSpec {
        let schema = self.schema();
        FeatureSpec::new(
            &self.model.features,
            &self.features,
            &self.field_infos(&schema),
            schema.time_index(),
        )
        .expect("validated")
    }

    /// The feature warm-up of a backfill in ms: `backfill.warmup`, or for `"auto"` the longest
    /// `window + delay` of the windowed features (0 without any).
    pub fn backfill_warmup_ms(&self) -> i64 {
        match self.backfill.warmup.as_str() {
            "auto" => self.feature_spec().lookback_ms() as i64,
            d => humantime::parse_duration(d).expect("validated").as_millis() as i64,
        }
    }

    /// The execution providers (validated).
    pub fn execution_providers(&self) -> Vec<ExecutionProvider> {
        self.model
            .execution_providers
            .iter()
            .map(|e| e.parse().expect("validated"))
            .collect()
    }
}

/// A TOML default as a value of `kind`.
fn toml_value(kind: FieldType, v: &toml::Value) -> Option<Value> {
    Some(match (kind, v) {
        (FieldType::Integer, toml::Value::Integer(i)) => Value::Int(*i),
        (FieldType::Float { .. }, toml::Value::Float(f)) => Value::Float(*f),
        (FieldType::Float { .. }, toml::Value::Integer(i)) => Value::Float(*i as f64),
        (FieldType::String, toml::Value::String(s)) => Value::Str(s.clone()),
        (FieldType::Bool, toml::Value::Boolean(b)) => Value::Bool(*b),
        (FieldType::Timestamp(_), toml::Value::Integer(i)) => Value::Time(*i),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[topology]
name = "t"
[schema]
id = "tx_id"
fields = [
    { name = "tx_id", type = "integer" },
    { name = "tx_time_ms", type = "timestamp" },
    { name = "customer_id", type = "integer" },
    { name = "terminal_id", type = "integer" },
    { name = "amount", type = "float", min = 0.0 },
]
[model]
path = "m.onnx"
version = "v1"
features = ["amount", "tx_hour"]
[[feature]]
name = "amount"
kind = "field"
field = "amount"
[[feature]]
name = "tx_hour"
kind = "time"
field = "tx_time_ms"
part = "hour"
"#;

    fn parse(text: &str) -> Result<TopologyConfig, ConfigError> {
        TopologyConfig::parse(text, Path::new("t.toml"), Path::new("/base"))
    }

    fn field_of(text: &str) -> (String, String) {
        match parse(text) {
            Err(ConfigError::Field { field, detail, .. }) => (field, detail),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_what_the_file_leaves_out() {
        let cfg = parse(GOOD).unwrap();
        assert_eq!(cfg.batching.max_batch_rows, 256);
        assert_eq!(cfg.batching.max_wait, Duration::from_millis(5));
        assert_eq!(cfg.model_path(), PathBuf::from("/base/m.onnx"));
        assert_eq!(
            cfg.execution_providers(),
            vec![ExecutionProvider::Cuda, ExecutionProvider::Cpu]
        );
        assert_eq!(cfg.start_position(), StartPosition::Committed);
    }

    #[test]
    fn max_wait_auto_is_the_adaptive_window_starting_at_a_quarter_of_its_target() {
        let cfg = parse(GOOD).unwrap();
        assert!(!cfg.batching.adaptive);
        let cfg = parse(&format!(
            "{GOOD}\n[batching]\nmax_wait = \"auto\"\np99_target = \"40ms\"\n"
        ))
        .unwrap();
        assert!(cfg.batching.adaptive);
        assert_eq!(cfg.batching.p99_target, Duration::from_millis(40));
        assert_eq!(cfg.batching.max_wait, Duration::from_millis(10));
        let (field, detail) = field_of(&format!("{GOOD}\n[batching]\nmax_wait = \"automatic\"\n"));
        assert_eq!(field, "batching.max_wait", "{detail}");
        let (field, _) = field_of(&format!(
            "{GOOD}\n[batching]\nmax_wait = \"auto\"\np99_target = \"0ms\"\n"
        ));
        assert_eq!(field, "batching.p99_target");
    }

    #[test]
    fn a_cluster_is_checked_naming_the_field() {
        let cfg = parse(GOOD).unwrap();
        assert_eq!(cfg.cluster.processes(), 1, "one process by default");
        let cluster = |body: &str| field_of(&format!("{GOOD}\n[cluster]\n{body}\n"));
        let cases = [
            ("peers = [\"a:1\", \"b\"]", "cluster.peers[1]", "host:port"),
            ("peers = [\"a:1\", \"a:1\"]", "cluster.peers[1]", "twice"),
            ("peers = [\"a:1\", \"b:2\"]\nprocess = 2", "cluster.process", "below"),
            ("process = 1", "cluster.process", "without cluster.peers"),
        ];
        for (body, field, says) in cases {
            let (f, detail) = cluster(body);
            assert_eq!(f, field, "{body}: {detail}");
            assert!(detail.contains(says), "{body}: {detail}");
        }
        // A hostfile (comments and blank lines skipped), and the flags over the file.
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "# the pair\nweir-0:7100\n\nweir-1:7100 # second\n").unwrap();
        let mut cfg = parse(GOOD).unwrap();
        let flags = ClusterOverride {
            process: Some(1),
            hostfile: Some(hosts.clone()),
            ..ClusterOverride::default()
        };
        flags.apply(&mut cfg).unwrap();
        assert_eq!(cfg.cluster.peers, vec!["weir-0:7100", "weir-1:7100"]);
        assert_eq!((cfg.cluster.process, cfg.cluster.processes()), (1, 2));
        let missing = ClusterOverride {
            hostfile: Some(dir.path().join("nope")),
            ..ClusterOverride::default()
        };
        match missing.apply(&mut parse(GOOD).unwrap()) {
            Err(ConfigError::Field { field, detail, .. }) => {
                assert_eq!(field, "cluster.hostfile");
                assert!(detail.contains("nope"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_fields_are_named() {
        let (field, detail) = field_of(&format!("{GOOD}\n[batching]\nmax_batch_rowz = 5\n"));
        assert_eq!(field, "batching.max_batch_rowz", "{detail}");
        let (field, _) = field_of(&format!("{GOOD}\n[sourse]\ntopic = \"x\"\n"));
        assert_eq!(field, "sourse");
    }

    #[test]
    fn invalid_values_are_named() {
        let cases = [
            ("[batching]\nmax_batch_rows = 0", "batching.max_batch_rows"),
            ("[batching]\nmax_wait = \"5 parsecs\"", "batching.max_wait"),
            ("[batching]\nmax_wait = \"0ms\"", "batching.max_wait"),
            ("[batching]\nmax_inflight_batches = -1", "batching.max_inflight_batches"),
            ("[source]\nstart = \"yesterday\"", "source.start"),
            ("[sink]\nkind = \"s3\"", "sink.kind"),
            ("[sink]\nkind = \"parquet\"", "sink.path"),
            ("[backfill]\nmax_batch_rows = 0", "backfill.max_batch_rows"),
            ("[backfill]\nwarmup = \"a while\"", "backfill.warmup"),
            ("[backfill]\nmax_wait = \"0s\"", "backfill.max_wait"),
            ("[metrics]\nlisten = \"9464\"", "metrics.listen"),
        ];
        for (extra, expected) in cases {
            let (field, detail) = field_of(&format!("{GOOD}\n{extra}\n"));
            assert_eq!(field, expected, "{extra}: {detail}");
        }
        let (field, detail) = field_of(&GOOD.replace("\"amount\", \"tx_hour\"]", "\"amount\", \"tx_hourz\"]"));
        assert_eq!(field, "model.features");
        assert!(detail.contains("tx_hourz"), "{detail}");
        let (field, _) = field_of(&GOOD.replace("[model]", "[model]\nexecution_providers = [\"tpu\"]"));
        assert_eq!(field, "model.execution_providers");
        let windowed = |entity: &str, aggregation: &str, window: &str| {
            format!("{GOOD}\n[[feature]]\nname = \"w\"\nentity = \"{entity}\"\naggregation = \"{aggregation}\"\nwindow = \"{window}\"\n")
        };
        let (field, _) = field_of(&windowed("customer_id", "count", "0d"));
        assert_eq!(field, "feature[2].window");
        let (field, _) = field_of(&windowed("merchant_id", "count", "1d"));
        assert_eq!(field, "feature[2].entity");
        let (field, _) = field_of(&windowed("customer_id", "median", "1d"));
        assert_eq!(field, "feature[2].aggregation");
        assert!(parse(&windowed("customer_id", "count", "1d")).is_ok());
        let (field, detail) =
            field_of(&windowed("customer_id", "count", "1d").replace("\"tx_hour\"]", "\"tx_hour\", \"v\"]"));
        assert_eq!(field, "model.features", "{detail}");
    }

    #[test]
    fn out_of_range_durations_and_amounts_are_named() {
        // Issue 13, item 10: `300000000y` passed and overflowed into a negative limit.
        let (field, detail) = field_of(&format!("{GOOD}\n[decode]\nmax_future = \"300000000y\"\n"));
        assert_eq!(field, "decode.max_future", "{detail}");
        assert!(detail.contains("100 years"), "{detail}");
        let (field, _) = field_of(&format!("{GOOD}\n[source]\nidle_timeout = \"1000y\"\n"));
        assert_eq!(field, "source.idle_timeout");
        let (field, _) = field_of(&format!("{GOOD}\n[decode]\nmax_amount = 1e15\n"));
        assert_eq!(field, "decode.max_amount", "gone: ranges are declared per field");
        let windowed = format!(
            "{GOOD}\n[[feature]]\nname = \"w\"\nentity = \"customer_id\"\naggregation = \"count\"\nwindow = \"500y\"\n"
        )
        .replace("\"tx_hour\"]", "\"tx_hour\", \"w\"]");
        let (field, _) = field_of(&windowed);
        assert_eq!(field, "feature[2].window");
        assert!(parse(&format!("{GOOD}\n[decode]\nmax_future = \"1y\"\n")).is_ok());
    }

    #[test]
    fn properties_that_break_at_least_once_are_refused() {
        // Issue 13, item 11: sink.properties could switch idempotence and acks off silently.
        let cases = [
            (
                "[sink.properties]\n\"enable.idempotence\" = \"false\"",
                "sink.properties.enable.idempotence",
            ),
            ("[sink.properties]\n\"acks\" = \"1\"", "sink.properties.acks"),
            (
                "[sink.properties]\n\"message.timeout.ms\" = \"30000\"",
                "sink.properties.message.timeout.ms",
            ),
            (
                "[dead_letter.properties]\n\"acks\" = \"0\"",
                "dead_letter.properties.acks",
            ),
            (
                "[source.properties]\n\"enable.auto.commit\" = \"true\"",
                "source.properties.enable.auto.commit",
            ),
            (
                "[source.properties]\n\"group.id\" = \"other\"",
                "source.properties.group.id",
            ),
        ];
        for (extra, expected) in cases {
            let (field, detail) = field_of(&format!("{GOOD}\n{extra}\n"));
            assert_eq!(field, expected, "{extra}: {detail}");
            assert!(detail.contains("refused"), "{detail}");
        }
        assert!(parse(&format!(
            "{GOOD}\n[sink.properties]\n\"acks\" = \"all\"\n\"linger.ms\" = \"1\"\n"
        ))
        .is_ok());
    }

    #[test]
    fn unknown_client_properties_are_named_by_their_section() {
        // Issue 13, item 14: "No such configuration property" did not say where.
        let cfg = parse(&format!("{GOOD}\n[source.properties]\n\"bogus.property\" = \"1\"\n")).unwrap();
        match cfg.check_clients() {
            Err(ConfigError::Field { field, detail, .. }) => {
                assert_eq!(field, "source.properties");
                assert!(detail.contains("bogus.property"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        let cfg = parse(&format!("{GOOD}\n[dead_letter.properties]\n\"linger.ms\" = \"soon\"\n")).unwrap();
        assert!(
            matches!(cfg.check_clients(), Err(ConfigError::Field { field, .. }) if field == "dead_letter.properties")
        );
        parse(GOOD).unwrap().check_clients().unwrap();
    }

    #[test]
    fn backfill_warmup_is_the_longest_lookback_unless_set() {
        let with_feature = format!(
            "{GOOD}\n[[feature]]\nname = \"w\"\nentity = \"terminal_id\"\naggregation = \"count\"\nwindow = \"30d\"\ndelay = \"7d\"\n"
        )
        .replace("\"tx_hour\"]", "\"tx_hour\", \"w\"]");
        let cfg = parse(&with_feature).unwrap();
        assert_eq!(cfg.backfill_warmup_ms(), 37 * 86_400_000);
        assert_eq!(parse(GOOD).unwrap().backfill_warmup_ms(), 0);
        let cfg = parse(&format!("{with_feature}\n[backfill]\nwarmup = \"2d\"\n")).unwrap();
        assert_eq!(cfg.backfill_warmup_ms(), 2 * 86_400_000);
    }

    #[test]
    fn a_schema_that_contradicts_itself_or_its_features_is_named() {
        let cases = [
            (GOOD.replace("id = \"tx_id\"", "id = \"uuid\""), "schema.id"),
            (
                GOOD.replace(
                    "{ name = \"tx_id\", type = \"integer\" }",
                    "{ name = \"tx_id\", type = \"integer\", required = false }",
                ),
                "schema.id",
            ),
            (
                GOOD.replace(
                    "type = \"timestamp\" }",
                    "type = \"timestamp\", format = \"epoch_ns\" }",
                ),
                "schema.fields[1].format",
            ),
            (
                GOOD.replace("type = \"float\", min = 0.0", "type = \"decimal\""),
                "schema.fields[4].type",
            ),
            (
                GOOD.replace("type = \"float\", min = 0.0", "type = \"float\", min = 2.0, max = 1.0"),
                "schema.fields[4].max",
            ),
            (
                GOOD.replace(
                    "{ name = \"customer_id\", type = \"integer\" }",
                    "{ name = \"customer_id\", type = \"integer\", default = 3 }",
                ),
                "schema.fields[2].default",
            ),
            (
                format!("{GOOD}\n[source]\nevent_time = \"amount\"\n"),
                "source.event_time",
            ),
            (
                format!("{GOOD}\n[source]\nevent_time = \"when\"\n"),
                "source.event_time",
            ),
            (
                GOOD.replace("id = \"tx_id\"", "id = \"tx_id\"\nunknown_fields = \"drop\""),
                "schema.unknown_fields",
            ),
            (
                GOOD.replace("field = \"amount\"", "field = \"amountz\""),
                "feature[0].field",
            ),
        ];
        for (text, expected) in cases {
            let (field, detail) = field_of(&text);
            assert_eq!(field, expected, "{detail}");
        }
        // A sum over a string, an entity on a float.
        let windowed = |entity: &str, aggregation: &str, of: &str| {
            format!("{GOOD}\n[[feature]]\nname = \"w\"\nentity = \"{entity}\"\naggregation = \"{aggregation}\"\n{of}window = \"1d\"\n")
                .replace("\"tx_hour\"]", "\"tx_hour\", \"w\"]")
        };
        let (field, _) = field_of(&windowed("amount", "count", ""));
        assert_eq!(field, "feature[2].entity");
        let with_country = windowed("customer_id", "sum", "of = \"country\"\n").replace(
            "{ name = \"amount\"",
            "{ name = \"country\", type = \"string\" },\n    { name = \"amount\"",
        );
        let (field, _) = field_of(&with_country);
        assert_eq!(field, "feature[2].of");
        assert!(parse(&windowed("customer_id", "max", "of = \"amount\"\n")).is_ok());
        // A ratio needs labels: the label message carries the entity's field.
        let cfg = parse(&format!(
            "{}\n[source]\nevent_time = \"tx_time_ms\"\n",
            windowed("terminal_id", "ratio", "")
        ))
        .unwrap();
        let (label_schema, layout) = cfg.label_schema();
        let names: Vec<&str> = label_schema.fields().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, vec!["tx_id", "label", "terminal_id", "tx_time_ms"]);
        assert_eq!(layout.time, Some(3));
        let (field, _) = field_of(&format!(
            "{}\n[labels]\nlabel_type = \"float\"\n",
            windowed("terminal_id", "ratio", "")
        ));
        assert_eq!(field, "labels.label_type");
    }

    #[test]
    fn syntax_errors_say_where() {
        match parse("[topology\nname = 1") {
            Err(ConfigError::Syntax { detail, .. }) => assert!(detail.contains("line 1"), "{detail}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timestamps_parse_as_start_positions() {
        assert_eq!(
            parse_start("2018-04-01T00:00:00Z"),
            Ok(StartPosition::Timestamp(1_522_540_800_000))
        );
    }
}
