//! How a model's segments relate to the previous model's (`fit --previous`): the
//! records stored in the model file. `segments::lineage` computes them.

use serde::{Deserialize, Serialize};

/// What became of a segment across a retrain (stored as "kept", "split", "new").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineageKind {
    /// Matched to `previous`, whose id and name it keeps.
    Kept,
    /// Nearest to `previous`, whose id another new segment kept.
    Split,
    /// Matches nothing of the previous model.
    New,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineageEntry {
    pub id: u32,
    pub kind: LineageKind,
    pub previous: Option<u32>,
    /// Distance between the matched centroids (new model space).
    pub distance: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vanished {
    pub id: u32,
    pub name: Option<String>,
    /// The new segment nearest to it, when it looks merged into one.
    pub merged_into: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    /// The previous model's input fingerprint (its training data).
    pub previous_fingerprint: String,
    /// The previous model's own fingerprint ([`crate::model::Model::fingerprint`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_model: Option<String>,
    pub entries: Vec<LineageEntry>,
    pub vanished: Vec<Vanished>,
}
