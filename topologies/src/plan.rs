//! The plan a topology file compiles to: what its events become features by (the decoder of its
//! `[schema]`, its feature spec, the labels' schema), how far a run reads ([`Mode`]) and where
//! its scores go ([`SinkSpec`]), for the runtime to build a dataflow from.

use std::collections::BTreeMap;
use std::path::PathBuf;

use weir_feature_store::definition::LabelLayout;
use weir_feature_store::FeatureSpec;
use weir_operators::decode::EventDecoder;
use weir_operators::schema::Schema;

use crate::TopologyConfig;

/// How far a run reads its source topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Mode {
    /// From the start position until SIGINT/SIGTERM, committing acknowledged offsets to the
    /// consumer group (`weir run`).
    #[default]
    Live,
    /// Up to the end of the topic as seen at start, then stop; no commits (`weir run
    /// --until-end`, the demo, the benchmarks, training-set export).
    UntilEnd,
    /// Exactly these offset ranges, then stop; no commits (a backfill).
    Range(ReadRanges),
}

impl Mode {
    /// Whether the run stops by itself (and commits nothing).
    pub fn is_bounded(&self) -> bool {
        !matches!(self, Mode::Live)
    }

    /// The ranges of a [`Mode::Range`].
    pub fn ranges(&self) -> Option<&ReadRanges> {
        match self {
            Mode::Range(r) => Some(r),
            _ => None,
        }
    }
}

/// Offset ranges a bounded run reads, `partition -> [start, stop)`, per topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadRanges {
    /// The source topic.
    pub source: BTreeMap<i32, (i64, i64)>,
    /// The labels topic (side input), if the features need labels.
    pub labels: BTreeMap<i32, (i64, i64)>,
}

/// Where a run writes its scores, instead of the topology's `[sink]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SinkSpec {
    /// Parquet files in this directory.
    Parquet(PathBuf),
    /// A Kafka topic on the source's brokers.
    Kafka(String),
}

impl SinkSpec {
    /// Parses `parquet:<dir>` or `kafka:<topic>`.
    ///
    /// # Errors
    /// A message naming the accepted forms.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("parquet", dir)) if !dir.is_empty() => Ok(Self::Parquet(PathBuf::from(dir))),
            Some(("kafka", topic)) if !topic.is_empty() => Ok(Self::Kafka(topic.to_string())),
            _ => Err(format!("`{s}` is not parquet:<directory> or kafka:<topic>")),
        }
    }

    /// `parquet:<dir>` or `kafka:<topic>`.
    pub fn describe(&self) -> String {
        match self {
            Self::Parquet(d) => format!("parquet:{}", d.display()),
            Self::Kafka(t) => format!("kafka:{t}"),
        }
    }
}

/// What a topology's events become features by: the decoder of its `[schema]`, its feature
/// spec, and the label messages' schema and layout where the spec needs labels.
#[derive(Debug, Clone)]
pub struct FeaturePlan {
    /// The events' decoder (schema, ranges, limits).
    pub decoder: EventDecoder,
    /// The features.
    pub spec: FeatureSpec,
    /// The labels' schema and layout, if the spec needs labels.
    pub labels: Option<(Schema, LabelLayout)>,
}

impl FeaturePlan {
    /// The plan of `cfg` (validated).
    pub fn of(cfg: &TopologyConfig) -> Self {
        let spec = cfg.feature_spec();
        Self {
            decoder: cfg.decoder(),
            labels: spec.needs_labels().then(|| cfg.label_schema()),
            spec,
        }
    }
}
