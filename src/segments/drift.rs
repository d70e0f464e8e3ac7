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
}

impl Verdict {
    /// The process exit code `microseg drift` ends with (documented in README).
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Stable => 0,
            Verdict::Watch => 10,
            Verdict::Retrain => 11,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDrift {
    pub feature: String,
    pub psi: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    pub n_rows: u64,
    pub segment_psi: f64,
    /// Per segment: training share, current share.
    pub segment_shares: Vec<(u32, f64, f64)>,
    /// Sorted, largest PSI first.
    pub feature_psi: Vec<FeatureDrift>,
    pub mean_distance: f64,
    pub training_mean_distance: f64,
    pub low_margin_share: f64,
    pub training_low_margin_share: f64,
    pub thresholds: Thresholds,
    pub verdict: Verdict,
    pub reasons: Vec<String>,
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
}

impl DriftBuilder {
    pub fn new(model: &Model) -> Result<Self> {
        let baseline = model.baseline.clone().ok_or_else(|| {
            Error::Usage(
                "the model has no training baseline (made by an older microseg); refit it to measure drift".into(),
            )
        })?;
        let bins = baseline.features.iter().map(|h| vec![0; h.shares.len()]).collect();
        Ok(DriftBuilder { baseline, seg_counts: vec![0; model.k], bins, n: 0, dist_sum: 0.0, low: 0, with_margin: 0 })
    }

    pub fn add(&mut self, model_space: &[f32], nearest: &[Nearest]) {
        let d = self.bins.len();
        for (row, nr) in model_space.chunks_exact(d).zip(nearest) {
            self.n += 1;
            self.seg_counts[nr.label as usize] += 1;
            self.dist_sum += (nr.dist.max(0.0) as f64).sqrt();
            if let Some(m) = margin(nr) {
                self.with_margin += 1;
                if (m as f64) < self.baseline.low_margin {
                    self.low += 1;
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
        if self.baseline.low_margin_share > 0.0 && low_margin_share >= 2.0 * self.baseline.low_margin_share {
            worst = worst.max(1);
            reasons.push(format!(
                "{:.1} % of members are weakly assigned (training: {:.1} %)",
                100.0 * low_margin_share,
                100.0 * self.baseline.low_margin_share
            ));
        }
        let verdict = [Verdict::Stable, Verdict::Watch, Verdict::Retrain][worst];
        DriftReport {
            n_rows: self.n,
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
            training_low_margin_share: self.baseline.low_margin_share,
            thresholds: t,
            verdict,
            reasons,
        }
    }
}
