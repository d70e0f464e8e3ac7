//! The model file: versioned JSON holding the features and their fitted transforms,
//! the centroids (in model space and in original units), per-segment statistics and a
//! manifest that says how the model was made. It is the contract between `fit` and
//! every later command; nothing here computes clusters.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::backend::{Centroids, ClusterStats};
use crate::error::{Error, Result};
use crate::features::{FeatureColumn, FeatureTransform, MissingPolicy, Scale, dim_of};

pub const FORMAT: &str = "microseg-model";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub format: String,
    pub format_version: u32,
    /// "kmeans".
    pub method: String,
    /// "euclidean".
    pub metric: String,
    pub k: usize,
    /// Column carried into assignments unchanged.
    pub id_column: Option<String>,
    pub weight_column: Option<String>,
    pub missing: MissingPolicy,
    pub scale: Scale,
    /// Input columns in matrix order.
    pub feature_columns: Vec<FeatureColumn>,
    /// One entry per matrix column.
    pub features: Vec<FeatureTransform>,
    pub segments: Vec<Segment>,
    pub manifest: Manifest,
    /// Training distributions for `microseg drift`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<crate::segments::Baseline>,
    /// How the segments relate to the previous model's (`fit --previous`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<crate::segments::lineage::Lineage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub id: u32,
    /// A human name; users may set it and later commands keep it.
    #[serde(default)]
    pub name: Option<String>,
    /// Training rows assigned.
    pub size: u64,
    /// size / all training rows.
    pub share: f64,
    /// Sum of member weights (= size without weights).
    pub weight: f64,
    /// Weighted sum of squared distances of members (model space).
    pub inertia: f64,
    /// Root of the weighted mean squared distance (model space).
    pub rms_distance: f64,
    /// The centroid in model space (after transforms).
    pub centroid: Vec<f32>,
    /// The centroid in the input's units (transforms undone).
    pub centroid_original: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub engine: String,
    pub engine_version: String,
    /// Input file names (not full paths, so a moved input keeps its fingerprint).
    pub inputs: Vec<String>,
    pub input_fingerprint: String,
    pub rows_read: u64,
    pub rows_used: u64,
    pub rows_dropped: u64,
    pub seed: u64,
    pub init: String,
    pub init_sample_rows: usize,
    pub n_init: usize,
    pub best_run: usize,
    pub algorithm: String,
    pub max_iter: usize,
    pub tol: f64,
    pub tol_scaled: f64,
    pub iterations: usize,
    pub converged: bool,
    /// Final inertia: weighted sum of squared distances in model space.
    pub objective: f64,
    pub empty_cluster_relocations: usize,
    pub backend: String,
}

impl Model {
    /// Segments from a fit's centroids and final statistics.
    pub fn segments_from(
        centroids: &Centroids,
        stats: &ClusterStats,
        cols: &[FeatureColumn],
        tf: &[FeatureTransform],
    ) -> Vec<Segment> {
        let total: u64 = stats.count.iter().sum();
        let log1p: Vec<bool> = cols.iter().flat_map(|c| std::iter::repeat_n(c.log1p, c.width)).collect();
        (0..centroids.k)
            .map(|j| {
                let c = centroids.row(j);
                Segment {
                    id: j as u32,
                    name: None,
                    size: stats.count[j],
                    share: if total > 0 { stats.count[j] as f64 / total as f64 } else { 0.0 },
                    weight: stats.weight[j],
                    inertia: stats.sse[j],
                    rms_distance: if stats.weight[j] > 0.0 { (stats.sse[j] / stats.weight[j]).sqrt() } else { 0.0 },
                    centroid: c.to_vec(),
                    centroid_original: c
                        .iter()
                        .zip(tf)
                        .zip(&log1p)
                        .map(|((&z, t), &l)| {
                            let v = t.invert(z);
                            if l { v.exp_m1() } else { v }
                        })
                        .collect(),
                }
            })
            .collect()
    }

    pub fn dim(&self) -> usize {
        self.features.len()
    }

    /// The segment with this id.
    pub fn segment(&self, id: u32) -> Option<&Segment> {
        self.segments.iter().find(|s| s.id == id)
    }

    pub fn centroids(&self) -> Centroids {
        Centroids::new(self.segments.iter().flat_map(|s| s.centroid.iter().copied()).collect(), self.dim())
    }

    /// Read and validate a model file.
    pub fn load(path: &Path) -> Result<Model> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::input(path, format!("cannot read the model: {e}")))?;
        let model: Model = serde_json::from_str(&text)
            .map_err(|e| Error::input(path, format!("not a microseg model (invalid JSON: {e})")))?;
        if model.format != FORMAT {
            return Err(Error::input(path, format!("not a microseg model (format '{}')", model.format)));
        }
        if model.format_version > FORMAT_VERSION {
            return Err(Error::input(
                path,
                format!(
                    "model format version {} is newer than this engine reads ({FORMAT_VERSION}); upgrade microseg",
                    model.format_version
                ),
            ));
        }
        let dim = dim_of(&model.feature_columns);
        let ok = dim == model.features.len()
            && dim > 0
            && model.segments.len() == model.k
            && model.k > 0
            && model.segments.iter().all(|s| s.centroid.len() == dim && s.centroid.iter().all(|v| v.is_finite()))
            && {
                let mut ids: Vec<u32> = model.segments.iter().map(|s| s.id).collect();
                ids.sort_unstable();
                ids.windows(2).all(|w| w[0] != w[1])
            }
            && model.features.iter().all(|t| t.scale.is_finite() && t.scale != 0.0 && t.center.is_finite());
        if !ok {
            return Err(Error::input(path, "the model is inconsistent (features, k and centroids disagree); refit it"));
        }
        Ok(model)
    }
}
