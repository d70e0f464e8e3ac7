//! The model file: versioned JSON holding the features and their fitted transforms,
//! the centroids (in model space and in original units), per-segment statistics and a
//! manifest that says how the model was made. It is the contract between `fit` and
//! every later command; nothing here computes clusters.

pub mod baseline;
pub mod lineage;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use baseline::{Baseline, Histogram};
pub use lineage::{Lineage, LineageKind};

use crate::backend::{Centroids, ClusterStats};
use crate::error::{Error, Result};
use crate::features::{FeatureColumn, FeatureTransform, MissingPolicy, Scale, dim_of};
pub use crate::kmeans::Metric;

/// The model family (stored as "kmeans" or "gmm").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    #[default]
    KMeans,
    /// A Gaussian mixture: rows belong to the most probable component, with a posterior.
    Gmm,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::KMeans => "kmeans",
            Method::Gmm => "gmm",
        }
    }
}

/// What a Gaussian-mixture model adds: the mixture in model space (the segments'
/// centroids are its means, rounded to f32), its covariances in input units, and the
/// fit's likelihood and information criteria.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GmmSection {
    pub covariance: crate::gmm::CovarianceType,
    pub reg_covar: f64,
    /// Mixing weights by segment index (0 for an emptied component).
    pub weights: Vec<f64>,
    /// Means in model space, f64, by segment index.
    pub means: Vec<Vec<f64>>,
    /// Covariances in model space, laid out by type: full k × d × d, diag k × d,
    /// spherical k, tied d × d (row-major).
    pub covariances: Vec<f64>,
    /// Per segment, each feature's standard deviation in the input's units (scaling
    /// undone; for log1p features, in ln(1 + x) units).
    pub std_original: Vec<Vec<f64>>,
    /// Mean log-likelihood per training row under the final parameters.
    pub log_likelihood: f64,
    /// Mean log-likelihood of the last E-step (scikit-learn's `lower_bound_`).
    pub lower_bound: f64,
    pub bic: f64,
    pub aic: f64,
    pub n_parameters: usize,
    /// Components that lost all their rows (kept with weight 0), with the iteration.
    #[serde(default)]
    pub emptied: Vec<EmptiedComponent>,
    /// Posterior under which a member counts as weakly assigned: the 10th percentile of
    /// the training rows' posteriors.
    pub low_probability: f64,
    /// Share of training rows below it (what `drift` compares the new share with).
    #[serde(default)]
    pub low_probability_share: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmptiedComponent {
    pub segment: u32,
    pub iteration: usize,
}

impl GmmSection {
    pub fn mixture(&self) -> crate::gmm::Mixture {
        crate::gmm::Mixture {
            covariance: self.covariance,
            k: self.weights.len(),
            dim: self.means.first().map_or(0, |m| m.len()),
            weights: self.weights.clone(),
            means: self.means.iter().flatten().copied().collect(),
            covariances: self.covariances.clone(),
        }
    }
}

pub const FORMAT: &str = "microseg-model";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub format: String,
    pub format_version: u32,
    pub method: Method,
    pub metric: Metric,
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
    pub baseline: Option<Baseline>,
    /// How the segments relate to the previous model's (`fit --previous`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
    /// The mixture of a `gmm` model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gmm: Option<GmmSection>,
    /// Batches of new rows folded in by `microseg update`, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub updates: Vec<UpdateRecord>,
}

/// One `microseg update`: what was folded in and how much of the past it kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateRecord {
    pub engine_version: String,
    /// SHA-256 of the new rows as read (as the manifest's `input_fingerprint`).
    pub input_fingerprint: String,
    /// The fingerprint of the model the update started from.
    pub previous_model: String,
    pub rows_read: u64,
    pub rows_used: u64,
    pub rows_dropped: u64,
    /// Sum of the new rows' weights (= rows used without weights).
    pub weight: f64,
    /// The factor the previous statistics were multiplied by before the new rows were added.
    pub decay: f64,
    /// How the decay was given: "decay", "half-life-rows" or "half-life-days".
    pub forgetting: String,
    /// The date of the new data (`--as-of`), which the next `--half-life-days` counts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<String>,
    pub iterations: usize,
    pub converged: bool,
    /// Mean squared distance of the new rows to the centroids before and after.
    pub new_rows_mse_before: f64,
    pub new_rows_mse_after: f64,
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
    /// The segment's `rms_distance` when its model was fitted, kept through updates so a
    /// segment widening little by little is still seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit_rms_distance: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub engine: String,
    pub engine_version: String,
    /// Input file names, in models written before the fingerprint was of the data
    /// itself (no longer written: the same rows make the same model from any source).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// SHA-256 of the training rows as read (features and weights), whatever their source.
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
    /// Segments no training row ended in (k above the distinct rows, say).
    #[serde(default)]
    pub empty_segments: usize,
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
                    fit_rms_distance: None,
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

    /// What identifies the model's geometry: features, transforms, metric and centroids
    /// with their ids (not the names, which users may edit). Profiles, drift and audit
    /// reports and Parquet outputs carry it, so artefacts of different models are not
    /// mixed up.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let geometry = serde_json::json!({
            "method": self.method, "metric": self.metric, "feature_columns": self.feature_columns,
            "features": self.features.iter().map(|f| (&f.name, f.center, f.scale, f.impute)).collect::<Vec<_>>(),
            "segments": self.segments.iter().map(|s| (s.id, &s.centroid)).collect::<Vec<_>>(),
        });
        let digest = Sha256::digest(geometry.to_string().as_bytes());
        format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    /// Read and validate a model file (`-`: standard input).
    pub fn load(path: &Path) -> Result<Model> {
        let text = crate::io::read_text(path, "microseg model")?;
        let model: Model =
            serde_json::from_str(&text).map_err(|e| Error::input(path, format!("not a microseg model: {e}")))?;
        model
            .validate()
            .map_err(|msg| Error::input(path, format!("invalid model: {msg}; refit it or fix that field")))?;
        Ok(model)
    }

    /// Check every field a later command relies on; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("\"format\" is '{}', not '{FORMAT}' (not a microseg model)", self.format));
        }
        if self.format_version == 0 || self.format_version > FORMAT_VERSION {
            return Err(format!(
                "\"format_version\" {} is not one this engine reads (1 to {FORMAT_VERSION}); upgrade microseg",
                self.format_version
            ));
        }
        if self.feature_columns.is_empty() {
            return Err("\"feature_columns\" is empty".into());
        }
        for (i, c) in self.feature_columns.iter().enumerate() {
            if c.column.is_empty() || c.width == 0 {
                return Err(format!("\"feature_columns\"[{i}] needs a column name and a width of at least 1"));
            }
        }
        let dim = dim_of(&self.feature_columns);
        if self.features.len() != dim {
            return Err(format!(
                "\"features\" has {} transforms but \"feature_columns\" make {dim} features",
                self.features.len()
            ));
        }
        for (i, t) in self.features.iter().enumerate() {
            if !t.center.is_finite() {
                return Err(format!("\"features\"[{i}] ({}): \"center\" must be a finite number", t.name));
            }
            if !(t.scale.is_finite() && t.scale > 0.0) {
                return Err(format!(
                    "\"features\"[{i}] ({}): \"scale\" is {}; it must be a positive finite number",
                    t.name, t.scale
                ));
            }
            if t.impute.is_some_and(|v| !v.is_finite()) {
                return Err(format!("\"features\"[{i}] ({}): \"impute\" must be finite", t.name));
            }
        }
        if self.k == 0 {
            return Err("\"k\" must be at least 1".into());
        }
        if self.segments.len() != self.k {
            return Err(format!("\"k\" is {} but there are {} \"segments\"", self.k, self.segments.len()));
        }
        let mut ids = std::collections::BTreeSet::new();
        for (i, s) in self.segments.iter().enumerate() {
            if !ids.insert(s.id) {
                return Err(format!("\"segments\"[{i}]: \"id\" {} is used twice; segment ids must be unique", s.id));
            }
            if s.id > i32::MAX as u32 {
                return Err(format!("\"segments\"[{i}]: \"id\" {} is above {}", s.id, i32::MAX));
            }
            if s.centroid.len() != dim {
                return Err(format!(
                    "\"segments\"[{i}] (id {}): \"centroid\" has {} values, the model {dim} features",
                    s.id,
                    s.centroid.len()
                ));
            }
            if let Some(j) =
                s.centroid.iter().position(|v| !v.is_finite() || v.abs() > crate::features::MAX_MODEL_VALUE)
            {
                return Err(format!(
                    "\"segments\"[{i}] (id {}): \"centroid\"[{j}] is {}; it must be finite and at most {:e} in size",
                    s.id,
                    s.centroid[j],
                    crate::features::MAX_MODEL_VALUE
                ));
            }
            if !(s.share.is_finite() && (0.0..=1.0).contains(&s.share)) {
                return Err(format!("\"segments\"[{i}] (id {}): \"share\" must be between 0 and 1", s.id));
            }
        }
        match (self.method, &self.gmm) {
            (Method::Gmm, None) => return Err("\"method\" is gmm but the \"gmm\" section is missing".into()),
            (Method::KMeans, Some(_)) => return Err("\"method\" is kmeans but a \"gmm\" section is present".into()),
            (Method::Gmm, Some(g)) => {
                let k = self.k;
                let cov_len = match g.covariance {
                    crate::gmm::CovarianceType::Full => k * dim * dim,
                    crate::gmm::CovarianceType::Diag => k * dim,
                    crate::gmm::CovarianceType::Spherical => k,
                    crate::gmm::CovarianceType::Tied => dim * dim,
                };
                if g.weights.len() != k || g.means.len() != k || g.means.iter().any(|m| m.len() != dim) {
                    return Err(format!("\"gmm\": \"weights\" and \"means\" must hold {k} entries of {dim} features"));
                }
                if g.covariances.len() != cov_len {
                    return Err(format!(
                        "\"gmm\".\"covariances\" has {} values; {} covariances of {k} × {dim} need {cov_len}",
                        g.covariances.len(),
                        g.covariance.name()
                    ));
                }
                if g.weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) || g.weights.iter().sum::<f64>() <= 0.0 {
                    return Err("\"gmm\".\"weights\" must be finite, >= 0 and not all 0".into());
                }
                if g.means.iter().flatten().chain(&g.covariances).any(|v| !v.is_finite()) {
                    return Err("\"gmm\": \"means\" and \"covariances\" must be finite".into());
                }
                g.mixture().terms().map_err(|e| format!("\"gmm\".\"covariances\": {e}"))?;
            }
            (Method::KMeans, None) => {}
        }
        if let Some(b) = &self.baseline {
            if b.features.len() != dim {
                return Err(format!("\"baseline\".\"features\" has {} entries, the model {dim}", b.features.len()));
            }
            for (j, h) in b.features.iter().enumerate() {
                h.validate().map_err(|m| format!("\"baseline\".\"features\"[{j}]: {m}"))?;
            }
        }
        Ok(())
    }
}
