//! Drift of a scored population against the model's training baseline: population
//! stability index (PSI) of segment shares and of every feature's decile histogram,
//! mean distance to the centroid against training, and the share of weakly assigned
//! (low-margin) members; a verdict an orchestrator can branch on.

use serde::{Deserialize, Serialize};

use super::{Baseline, margin, psi};
use crate::backend::Nearest;
use crate::error::{Error, Result};
use crate::model::Model;

/// PSI thresholds: under `watch` stable, from `retrain` on retrain (the usual 0.1 / 0.25).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub watch: f64,
    pub retrain: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { watch: 0.1, retrain: 0.25 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Stable,
    Watch,
    Retrain,
    /// Too few rows to tell drift from sampling noise (see [`min_rows`]).
    #[serde(rename = "insufficient_data")]
    InsufficientData,
}

impl Verdict {
    /// The process exit code `microseg drift` ends with (documented in README).
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Stable => 0,
            Verdict::Watch => 10,
            Verdict::Retrain => 11,
            Verdict::InsufficientData => 12,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDrift {
    pub feature: String,
    #[serde(deserialize_with = "super::nullable_f64")]
    pub psi: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    /// "microseg-drift".
    #[serde(default = "drift_format")]
    pub format: String,
    #[serde(default = "super::version_one")]
    pub format_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_fingerprint: Option<String>,
    pub n_rows: u64,
    /// Rows needed for a verdict (below: `insufficient_data`).
    #[serde(default)]
    pub min_rows: u64,
    #[serde(deserialize_with = "super::nullable_f64")]
    pub segment_psi: f64,
    /// Per segment: training share, current share.
    pub segment_shares: Vec<(u32, f64, f64)>,
    /// Sorted, largest PSI first.
    pub feature_psi: Vec<FeatureDrift>,
    #[serde(deserialize_with = "super::nullable_f64")]
    pub mean_distance: f64,
    #[serde(deserialize_with = "super::nullable_f64")]
    pub training_mean_distance: f64,
    /// Share of weakly assigned members: margin under the training's 10th percentile
    /// (k-means), or posterior under it (mixtures).
    #[serde(deserialize_with = "super::nullable_f64")]
    pub low_margin_share: f64,
    #[serde(deserialize_with = "super::nullable_f64")]
    pub training_low_margin_share: f64,
    pub thresholds: Thresholds,
    pub verdict: Verdict,
    pub reasons: Vec<String>,
}

pub const DRIFT_FORMAT: &str = "microseg-drift";

fn drift_format() -> String {
    DRIFT_FORMAT.into()
}

/// Rows a verdict needs. PSI over B bins of n rows drawn from the very same
/// distribution is about (B − 1)/n from sampling noise alone; 20 rows per bin keep that
/// near 0.05, half the "watch" threshold, for the segment shares and every feature.
pub fn min_rows(model: &Model) -> u64 {
    let feature_bins =
        model.baseline.as_ref().map_or(0, |b| b.features.iter().map(|h| h.shares.len()).max().unwrap_or(0));
    20 * model.k.max(feature_bins).max(10) as u64
}

/// Gathers drift statistics batch by batch.
pub struct DriftBuilder {
    baseline: Baseline,
    seg_counts: Vec<u64>,
    bins: Vec<Vec<u64>>,
    n: u64,
    dist_sum: f64,
    low: u64,
    with_margin: u64,
    /// Mixtures: a member is weakly assigned below this posterior (with the training
    /// share below it), instead of below the baseline's low margin.
    weak_posterior: Option<(f64, f64)>,
}

impl DriftBuilder {
    pub fn new(model: &Model) -> Result<Self> {
        let baseline = model.baseline.clone().ok_or_else(|| {
            Error::Usage(
                "the model has no training baseline (made by an older microseg); refit it to measure drift".into(),
            )
        })?;
        let bins = baseline.features.iter().map(|h| vec![0; h.shares.len()]).collect();
        let weak_posterior = model.gmm.as_ref().map(|g| (g.low_probability, g.low_probability_share));
        Ok(DriftBuilder {
            baseline,
            seg_counts: vec![0; model.k],
            bins,
            n: 0,
            dist_sum: 0.0,
            low: 0,
            with_margin: 0,
            weak_posterior,
        })
    }

    /// One batch: rows in model space, their assignment, and for a mixture their
    /// posteriors (rows × k).
    pub fn add(&mut self, model_space: &[f32], nearest: &[Nearest], posteriors: Option<&[f32]>) {
        let d = self.bins.len();
        let k = self.seg_counts.len();
        for (i, (row, nr)) in model_space.chunks_exact(d).zip(nearest).enumerate() {
            self.n += 1;
            self.seg_counts[nr.label as usize] += 1;
            self.dist_sum += (nr.dist.max(0.0) as f64).sqrt();
            match (self.weak_posterior, posteriors) {
                (Some((low, _)), Some(p)) => {
                    self.with_margin += 1;
                    if (p[i * k + nr.label as usize] as f64) < low {
                        self.low += 1;
                    }
                }
                _ => {
                    if let Some(m) = margin(nr) {
                        self.with_margin += 1;
                        if (m as f64) < self.baseline.low_margin {
                            self.low += 1;
                        }
                    }
                }
            }
            for (j, v) in row.iter().enumerate() {
                self.bins[j][self.baseline.features[j].bin(*v as f64)] += 1;
            }
        }
    }

    pub fn finish(self, model: &Model, t: Thresholds) -> DriftReport {
        let n = self.n.max(1) as f64;
        let expected: Vec<f64> = model.segments.iter().map(|s| s.share).collect();
        let actual: Vec<f64> = self.seg_counts.iter().map(|c| *c as f64 / n).collect();
        let segment_psi = psi(&expected, &actual);
        let mut feature_psi: Vec<FeatureDrift> = self
            .bins
            .iter()
            .zip(&self.baseline.features)
            .zip(&model.features)
            .map(|((counts, h), f)| {
                let a: Vec<f64> = counts.iter().map(|c| *c as f64 / n).collect();
                FeatureDrift { feature: f.name.clone(), psi: psi(&h.shares, &a) }
            })
            .collect();
        feature_psi.sort_by(|a, b| b.psi.total_cmp(&a.psi).then(a.feature.cmp(&b.feature)));
        let mean_distance = self.dist_sum / n;
        let low_margin_share = self.low as f64 / self.with_margin.max(1) as f64;
        let mut reasons = Vec::new();
        let level = |x: f64| {
            if x >= t.retrain {
                2
            } else if x >= t.watch {
                1
            } else {
                0
            }
        };
        let mut worst = level(segment_psi);
        if worst > 0 {
            reasons.push(format!("segment shares moved: PSI {segment_psi:.3}"));
        }
        for f in feature_psi.iter().filter(|f| level(f.psi) > 0) {
            worst = worst.max(level(f.psi));
            reasons.push(format!("feature '{}' moved: PSI {:.3}", f.feature, f.psi));
        }
        let training_weak = self.weak_posterior.map_or(self.baseline.low_margin_share, |w| w.1);
        // Twice the training share, and at least 5 % (a mixture may assign every training
        // row with certainty, so its share can be 0).
        if self.with_margin > 0 && low_margin_share >= (2.0 * training_weak).max(0.05) {
            worst = worst.max(1);
            reasons.push(format!(
                "{:.1} % of members are weakly assigned (training: {:.1} %)",
                100.0 * low_margin_share,
                100.0 * training_weak
            ));
        }
        let mut verdict = [Verdict::Stable, Verdict::Watch, Verdict::Retrain][worst];
        let min_rows = min_rows(model);
        if self.n < min_rows {
            verdict = Verdict::InsufficientData;
            reasons.insert(
                0,
                format!(
                    "only {} rows: a verdict needs at least {min_rows} (20 per segment or feature bin), \
                     or sampling noise alone reads as drift",
                    self.n
                ),
            );
        }
        DriftReport {
            format: DRIFT_FORMAT.into(),
            format_version: 1,
            model_fingerprint: Some(model.fingerprint()),
            n_rows: self.n,
            min_rows,
            segment_psi,
            segment_shares: model
                .segments
                .iter()
                .zip(expected.iter().zip(&actual))
                .map(|(s, (e, a))| (s.id, *e, *a))
                .collect(),
            feature_psi,
            mean_distance,
            training_mean_distance: self.baseline.mean_distance,
            low_margin_share,
            training_low_margin_share: training_weak,
            thresholds: t,
            verdict,
            reasons,
        }
    }
}
