//! The training distributions stored in a model for `drift` and explanations: a
//! histogram per feature (deciles, or a bin per value for few-valued features), the
//! mean distance to the centroid and the low-margin threshold.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// A feature's training distribution, in one of two forms:
/// - continuous: bin edges (deciles, ascending, distinct) and the share of training rows
///   per bin (`edges.len() + 1` bins: (−∞, e₀], (e₀, e₁], …, (eₙ, ∞));
/// - categorical, for flags and features with few distinct values (at most
///   [`MAX_CATEGORIES`]): one bin per training value (`values`, ascending) and a last bin
///   for any other value. Deciles of a 0/1 flag collapse to one edge and cannot see its
///   share move; a bin per value can.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub edges: Vec<f64>,
    pub shares: Vec<f64>,
    /// The training values of a categorical feature (empty for a continuous one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<f64>,
}

/// Features with at most this many distinct training values get a bin per value.
pub const MAX_CATEGORIES: usize = 16;

impl Histogram {
    /// The histogram of `values` (sorted in place): categorical when they hold at most
    /// [`MAX_CATEGORIES`] distinct values, else deciles.
    pub fn fit(values: &mut [f32]) -> Self {
        // Values equal under total_cmp are the same bits: the unstable sort gives the same order.
        values.sort_unstable_by(|a, b| a.total_cmp(b));
        let mut distinct: Vec<f64> = Vec::new();
        for v in values.iter() {
            if distinct.last() != Some(&(*v as f64)) {
                distinct.push(*v as f64);
                if distinct.len() > MAX_CATEGORIES {
                    break;
                }
            }
        }
        if !values.is_empty() && distinct.len() <= MAX_CATEGORIES {
            let mut h = Histogram { edges: Vec::new(), shares: Vec::new(), values: distinct };
            let mut counts = vec![0u64; h.values.len() + 1];
            for v in values.iter() {
                counts[h.bin(*v as f64)] += 1;
            }
            h.shares = counts.iter().map(|c| *c as f64 / values.len() as f64).collect();
            return h;
        }
        let mut edges: Vec<f64> = (1..10).map(|i| quantile_sorted(values, i as f64 / 10.0)).collect();
        edges.dedup();
        // A bin per edge interval; the last edge equal to the maximum would leave an empty top bin.
        if let (Some(&last), Some(&max)) = (edges.last(), values.last())
            && last >= max as f64
            && edges.len() > 1
        {
            edges.pop();
        }
        let mut counts = vec![0u64; edges.len() + 1];
        for v in values.iter() {
            counts[bin(&edges, *v as f64)] += 1;
        }
        let n = values.len().max(1) as f64;
        Histogram { edges, shares: counts.iter().map(|c| *c as f64 / n).collect(), values: Vec::new() }
    }

    pub fn is_categorical(&self) -> bool {
        !self.values.is_empty()
    }

    pub fn bin(&self, v: f64) -> usize {
        if self.is_categorical() {
            // Values come through the same f32 transform as at training; allow rounding.
            let tol = |x: f64| 1e-6 * x.abs().max(1e-6);
            let i = self.values.partition_point(|x| *x < v - tol(v));
            return if i < self.values.len() && (self.values[i] - v).abs() <= tol(v) { i } else { self.values.len() };
        }
        bin(&self.edges, v)
    }

    /// Structural checks for a loaded model (the message says what is wrong).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let bins = if self.is_categorical() { self.values.len() + 1 } else { self.edges.len() + 1 };
        if self.shares.len() != bins {
            return Err(format!("\"shares\" has {} entries but there are {bins} bins", self.shares.len()));
        }
        let sorted = |v: &[f64]| v.iter().all(|x| x.is_finite()) && v.windows(2).all(|w| w[0] < w[1]);
        if !sorted(&self.edges) || !sorted(&self.values) {
            return Err("\"edges\" and \"values\" must be finite and strictly ascending".into());
        }
        if self.shares.iter().any(|s| !(s.is_finite() && (0.0..=1.0 + 1e-9).contains(s))) {
            return Err("\"shares\" must be between 0 and 1".into());
        }
        Ok(())
    }
}

fn bin(edges: &[f64], v: f64) -> usize {
    edges.partition_point(|e| *e < v)
}

/// Linear-interpolation quantile (numpy's default) of sorted values.
pub fn quantile_sorted(sorted: &[f32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let f = pos - lo as f64;
    sorted[lo] as f64 * (1.0 - f) + sorted[hi] as f64 * f
}

/// What drift compares against, fitted on the training rows and stored in the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Per feature (model space).
    pub features: Vec<Histogram>,
    /// Mean distance of a training row to its centroid (model space).
    pub mean_distance: f64,
    /// Margin (second − best distance) under which a member counts as weakly assigned:
    /// the 10th percentile of training margins, so 10 % of training rows are below it.
    pub low_margin: f64,
    pub low_margin_share: f64,
}

/// Rows sampled (by fixed stride) to fit histograms and margins.
pub const BASELINE_ROWS: usize = 200_000;

impl Baseline {
    /// From the training matrix (model space) and its final assignment.
    pub fn fit(x: &[f32], dim: usize, nearest: &[crate::backend::Nearest]) -> Self {
        let n = nearest.len();
        let step = n.div_ceil(BASELINE_ROWS).max(1);
        // One feature per task: sorting 200,000 values of each is most of the model's
        // assembly after a fit (tens of milliseconds per feature).
        let features = (0..dim)
            .into_par_iter()
            .map(|j| {
                let mut v: Vec<f32> = (0..n).step_by(step).map(|i| x[i * dim + j]).collect();
                Histogram::fit(&mut v)
            })
            .collect();
        let mean_distance = nearest.iter().map(|nr| (nr.dist as f64).sqrt()).sum::<f64>() / n.max(1) as f64;
        let mut margins: Vec<f32> = (0..n).step_by(step).filter_map(|i| margin(&nearest[i])).collect();
        margins.sort_unstable_by(|a, b| a.total_cmp(b));
        let low_margin = if margins.is_empty() { 0.0 } else { quantile_sorted(&margins, 0.1) };
        let low_margin_share =
            margins.iter().filter(|m| (**m as f64) < low_margin).count() as f64 / margins.len().max(1) as f64;
        Baseline { features, mean_distance, low_margin, low_margin_share }
    }

    /// Fold new rows (model space, with their assignment to the updated centroids) into
    /// the baseline, the past counting as `past_rows` rows (already decayed): each
    /// histogram's shares over its training bins, the mean distance and the share of
    /// low margins become the weighted blend of both. The bins and the low-margin
    /// threshold stay those of the fit, so drift reports stay comparable.
    pub fn fold(&mut self, x: &[f32], dim: usize, nearest: &[crate::backend::Nearest], past_rows: f64) {
        let n = nearest.len();
        if n == 0 {
            return;
        }
        let step = n.div_ceil(BASELINE_ROWS).max(1);
        let sampled = n.div_ceil(step) as f64;
        let (a, b) = (past_rows / (past_rows + n as f64), n as f64 / (past_rows + n as f64));
        for (j, h) in self.features.iter_mut().enumerate() {
            let bins = h.shares.len();
            let mut counts = vec![0u64; bins];
            for i in (0..n).step_by(step) {
                counts[h.bin(x[i * dim + j] as f64).min(bins - 1)] += 1;
            }
            for (s, c) in h.shares.iter_mut().zip(&counts) {
                *s = a * *s + b * (*c as f64 / sampled);
            }
        }
        let mean_distance = nearest.iter().map(|nr| (nr.dist.max(0.0) as f64).sqrt()).sum::<f64>() / n as f64;
        self.mean_distance = a * self.mean_distance + b * mean_distance;
        let margins: Vec<f32> = (0..n).step_by(step).filter_map(|i| margin(&nearest[i])).collect();
        if !margins.is_empty() {
            let low = margins.iter().filter(|m| (**m as f64) < self.low_margin).count() as f64 / margins.len() as f64;
            self.low_margin_share = a * self.low_margin_share + b * low;
        }
    }
}

/// Second-best minus best distance (not squared), when there is a runner-up.
pub fn margin(nr: &crate::backend::Nearest) -> Option<f32> {
    nr.second.is_finite().then(|| nr.second.max(0.0).sqrt() - nr.dist.max(0.0).sqrt())
}
