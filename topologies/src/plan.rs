//! The plan a topology file compiles to: what its events become features by (the decoder of its
//! `[schema]`, its feature spec, the labels' schema), for the runtime to build a dataflow from.

use weir_feature_store::definition::LabelLayout;
use weir_feature_store::FeatureSpec;
use weir_operators::decode::EventDecoder;
use weir_operators::schema::Schema;

use crate::TopologyConfig;

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
