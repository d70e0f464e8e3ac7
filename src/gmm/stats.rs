//! The fitted mixture, the precomputed terms an E-step needs, and the mergeable
//! sufficient statistics an M-step is computed from.
//!
//! Statistics are taken about a shift (the means the E-step used): per component the
//! mass Σ w·r, Σ w·r·(x − c) and Σ w·r·(x − c)² (diagonal types) or Σ w·r·(x − c)(x − c)ᵀ
//! (full, tied). They merge by addition, like k-means' cluster statistics; the shift
//! keeps the f64 sums well conditioned for data far from the origin, where the raw
//! moments Σ r·x² of scikit-learn's diagonal M-step cancel.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::hyperparams::CovarianceType;
use super::linalg;
use crate::error::{Error, Result};

/// A fitted mixture in model space, f64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mixture {
    pub covariance: CovarianceType,
    pub k: usize,
    pub dim: usize,
    /// Mixing weights (sum 1; 0 for an emptied component).
    pub weights: Vec<f64>,
    /// k × d.
    pub means: Vec<f64>,
    /// full: k × d × d; diag: k × d; spherical: k; tied: d × d (row-major).
    pub covariances: Vec<f64>,
}

impl Mixture {
    pub fn mean(&self, j: usize) -> &[f64] {
        &self.means[j * self.dim..(j + 1) * self.dim]
    }

    /// The variance of feature `t` in component `j`.
    pub fn variance(&self, j: usize, t: usize) -> f64 {
        let d = self.dim;
        match self.covariance {
            CovarianceType::Full => self.covariances[j * d * d + t * d + t],
            CovarianceType::Diag => self.covariances[j * d + t],
            CovarianceType::Spherical => self.covariances[j],
            CovarianceType::Tied => self.covariances[t * d + t],
        }
    }

    /// Component j's covariance as a full d × d matrix.
    pub fn covariance_matrix(&self, j: usize) -> Vec<f64> {
        let d = self.dim;
        match self.covariance {
            CovarianceType::Full => self.covariances[j * d * d..(j + 1) * d * d].to_vec(),
            CovarianceType::Tied => self.covariances.clone(),
            _ => {
                let mut m = vec![0.0; d * d];
                for t in 0..d {
                    m[t * d + t] = self.variance(j, t);
                }
                m
            }
        }
    }

    /// Free parameters (scikit-learn's `_n_parameters`).
    pub fn n_parameters(&self) -> usize {
        self.covariance.parameters(self.k, self.dim) + self.k * self.dim + self.k - 1
    }

    /// The E-step's terms: precision Cholesky factors, log determinants and log weights.
    /// Fails, naming the component, where a covariance is not positive definite.
    pub fn terms(&self) -> Result<GaussianTerms> {
        let (k, d) = (self.k, self.dim);
        let half_log_2pi = 0.5 * d as f64 * (2.0 * std::f64::consts::PI).ln();
        let mut log_const = Vec::with_capacity(k);
        let (kind, prec) = match self.covariance {
            CovarianceType::Diag | CovarianceType::Spherical => {
                let mut prec = Vec::with_capacity(k * d);
                for j in 0..k {
                    let mut log_det = 0.0;
                    for t in 0..d {
                        let v = self.variance(j, t);
                        if !(v > 0.0 && v.is_finite()) {
                            return Err(singular(j, self.covariance));
                        }
                        let p = 1.0 / v.sqrt();
                        log_det += p.ln();
                        prec.push(p);
                    }
                    log_const.push(self.weights[j].ln() + log_det - half_log_2pi);
                }
                (TermsKind::Diagonal, prec)
            }
            CovarianceType::Full | CovarianceType::Tied => {
                let mut prec = Vec::with_capacity(k * d * d);
                let shared = if self.covariance == CovarianceType::Tied {
                    let l = linalg::cholesky(&self.covariances, d).ok_or_else(|| singular(0, self.covariance))?;
                    Some(linalg::precision_cholesky(&l, d))
                } else {
                    None
                };
                for j in 0..k {
                    let u = match &shared {
                        Some(u) => u.clone(),
                        None => {
                            let l = linalg::cholesky(&self.covariances[j * d * d..(j + 1) * d * d], d)
                                .ok_or_else(|| singular(j, self.covariance))?;
                            linalg::precision_cholesky(&l, d)
                        }
                    };
                    let log_det: f64 = (0..d).map(|t| u[t * d + t].ln()).sum();
                    log_const.push(self.weights[j].ln() + log_det - half_log_2pi);
                    prec.extend(u);
                }
                (TermsKind::Triangular, prec)
            }
        };
        Ok(GaussianTerms { k, dim: d, kind, means: self.means.clone(), prec, log_const })
    }
}

fn singular(j: usize, cov: CovarianceType) -> Error {
    let which = if cov == CovarianceType::Tied { "the shared (tied)".to_string() } else { format!("component {j}'s") };
    Error::Data(format!(
        "Gaussian mixture: {which} covariance is not positive definite (its rows collapsed onto a point, \
         a line or a constant feature); raise --reg-covar, lower --k, or scale the features (--scale standard)"
    ))
}

/// How a row's Mahalanobis term is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TermsKind {
    /// ‖(x − μ) ∘ p‖² with p a vector of d precision square roots (diag, spherical).
    Diagonal,
    /// ‖(x − μ) · U‖² with U an upper-triangular d × d factor (full, tied).
    Triangular,
}

/// What an E-step needs, in f64: a row's weighted log density under component j is
/// `log_const[j] − ½·m_j(x)` with m_j the Mahalanobis term of `kind`.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianTerms {
    pub k: usize,
    pub dim: usize,
    pub kind: TermsKind,
    /// k × d.
    pub means: Vec<f64>,
    /// Diagonal: k × d; Triangular: k × d × d (row-major U, zero below the diagonal).
    pub prec: Vec<f64>,
    /// log w_j + log det U_j − ½·d·ln 2π (−∞ for an emptied component).
    pub log_const: Vec<f64>,
}

impl GaussianTerms {
    /// Weighted log density of one row (f64) under component `j`; `diff` and `y` are
    /// d-long scratch.
    #[inline]
    pub fn log_density(&self, j: usize, x: &[f64], diff: &mut [f64], y: &mut [f64]) -> f64 {
        let d = self.dim;
        let mu = &self.means[j * d..(j + 1) * d];
        match self.kind {
            TermsKind::Diagonal => {
                let p = &self.prec[j * d..(j + 1) * d];
                let mut q = 0.0;
                for t in 0..d {
                    let z = (x[t] - mu[t]) * p[t];
                    q += z * z;
                }
                self.log_const[j] - 0.5 * q
            }
            TermsKind::Triangular => {
                let u = &self.prec[j * d * d..(j + 1) * d * d];
                for t in 0..d {
                    diff[t] = x[t] - mu[t];
                    y[t] = 0.0;
                }
                for a in 0..d {
                    let da = diff[a];
                    let row = &u[a * d..(a + 1) * d];
                    for b in a..d {
                        y[b] += da * row[b];
                    }
                }
                self.log_const[j] - 0.5 * y.iter().map(|v| v * v).sum::<f64>()
            }
        }
    }

    /// Weighted log densities of one row (f64) under every component, into `out`.
    pub fn log_densities(&self, x: &[f64], diff: &mut [f64], y: &mut [f64], out: &mut [f64]) {
        for (j, o) in out.iter_mut().enumerate() {
            *o = self.log_density(j, x, diff, y);
        }
    }
}

/// Below this many e-folds under a row's best component a responsibility is taken as
/// exactly 0 (e^−60 ≈ 1e−26, far under f64 rounding of the row's total).
pub const NEGLIGIBLE_LOG: f64 = -60.0;

/// The normalised responsibilities (f32, in place of the log densities' order) and the
/// log of the row's total density, from one row's weighted log densities.
pub fn normalise(wlp: &[f64], resp: &mut [f32]) -> f64 {
    let max = wlp.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut s = 0.0;
    for &v in wlp {
        let z = v - max;
        if z > NEGLIGIBLE_LOG {
            s += z.exp();
        }
    }
    let lse = max + s.ln();
    for (r, &v) in resp.iter_mut().zip(wlp) {
        let z = v - lse;
        *r = if v - max > NEGLIGIBLE_LOG { z.exp() as f32 } else { 0.0 };
    }
    lse
}

/// Sufficient statistics of one pass, about `shift` (k × d). They merge by addition.
#[derive(Debug, Clone, PartialEq)]
pub struct MixtureStats {
    pub k: usize,
    pub dim: usize,
    /// Whether `second` holds d × d blocks (full, tied) or d diagonals.
    pub full: bool,
    /// Σ w·r per component.
    pub mass: Vec<f64>,
    /// Σ w·r·(x − c), k × d.
    pub first: Vec<f64>,
    /// Σ w·r·(x − c)² (k × d) or the upper triangles of Σ w·r·(x − c)(x − c)ᵀ (k × d × d).
    pub second: Vec<f64>,
    /// Σ w·log p(x): the log-likelihood of the pass.
    pub log_likelihood: f64,
    /// Σ w.
    pub total_weight: f64,
}

impl MixtureStats {
    pub fn zeros(k: usize, dim: usize, full: bool) -> Self {
        MixtureStats {
            k,
            dim,
            full,
            mass: vec![0.0; k],
            first: vec![0.0; k * dim],
            second: vec![0.0; if full { k * dim * dim } else { k * dim }],
            log_likelihood: 0.0,
            total_weight: 0.0,
        }
    }

    pub fn merge(&mut self, o: &MixtureStats) {
        assert_eq!((self.k, self.dim, self.full), (o.k, o.dim, o.full), "merging mixture stats of different shapes");
        for (a, b) in self.mass.iter_mut().zip(&o.mass) {
            *a += b;
        }
        for (a, b) in self.first.iter_mut().zip(&o.first) {
            *a += b;
        }
        for (a, b) in self.second.iter_mut().zip(&o.second) {
            *a += b;
        }
        self.log_likelihood += o.log_likelihood;
        self.total_weight += o.total_weight;
    }

    /// Add one row with responsibilities given as (component, r) pairs.
    #[inline]
    fn add_row(&mut self, x: &[f32], w: f64, shift: &[f64], resp: impl Iterator<Item = (usize, f64)>, dev: &mut [f64]) {
        let d = self.dim;
        for (j, r) in resp {
            let wr = w * r;
            self.mass[j] += wr;
            let c = &shift[j * d..(j + 1) * d];
            for ((o, &v), &m) in dev[..d].iter_mut().zip(&x[..d]).zip(c) {
                *o = v as f64 - m;
            }
            if !self.full {
                // One fused pass: Σ w·r·(x − c) and Σ w·r·(x − c)².
                let f = &mut self.first[j * d..(j + 1) * d];
                let s = &mut self.second[j * d..(j + 1) * d];
                for ((a, b), &v) in f.iter_mut().zip(s.iter_mut()).zip(&dev[..d]) {
                    let u = wr * v;
                    *a += u;
                    *b += u * v;
                }
                continue;
            }
            let f = &mut self.first[j * d..(j + 1) * d];
            for (a, &v) in f.iter_mut().zip(&dev[..d]) {
                *a += wr * v;
            }
            let s = &mut self.second[j * d * d..(j + 1) * d * d];
            for a in 0..d {
                let wa = wr * dev[a];
                let row = &mut s[a * d..(a + 1) * d];
                for b in a..d {
                    row[b] += wa * dev[b];
                }
            }
        }
    }
}

/// Rows per partial statistic: set by the statistics' shape alone (about 16 bytes of
/// statistics per row, 1,024 to 16,384 rows), so the summation order, hence the result
/// bit for bit, depends neither on the number of threads nor on the block size.
pub fn stats_rows(k: usize, dim: usize, full: bool) -> usize {
    let bytes = k * if full { dim * dim } else { 2 * dim } * 8;
    (bytes / 16).next_power_of_two().clamp(1024, 16_384)
}

/// Responsibilities of a block of rows: soft (n × k, f32) or hard labels.
pub enum Resp<'a> {
    Soft(&'a [f32]),
    Hard(&'a [u32]),
}

/// Add the statistics of a block of rows about `shift` to `total`: chunks of
/// [`stats_rows`] rows (counted from the block's first row, which must be a multiple
/// of it) computed in parallel and merged one by one in row order; `log_norm` (one per
/// row, optional) adds the block's log-likelihood.
#[allow(clippy::too_many_arguments)]
pub fn accumulate_into(
    total: &mut MixtureStats,
    points: &[f32],
    dim: usize,
    k: usize,
    weights: Option<&[f32]>,
    shift: &[f64],
    resp: Resp<'_>,
    log_norm: Option<&[f64]>,
) {
    let full = total.full;
    let rows = stats_rows(k, dim, full);
    let n = points.len() / dim;
    let chunks = n.div_ceil(rows);
    let partials: Vec<MixtureStats> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let (lo, hi) = (c * rows, ((c + 1) * rows).min(n));
            let mut s = MixtureStats::zeros(k, dim, full);
            let mut dev = vec![0.0f64; dim];
            for i in lo..hi {
                let w = weights.map_or(1.0, |w| w[i] as f64);
                if w == 0.0 {
                    continue;
                }
                let x = &points[i * dim..(i + 1) * dim];
                s.total_weight += w;
                if let Some(ln) = log_norm {
                    s.log_likelihood += w * ln[i];
                }
                match &resp {
                    Resp::Soft(r) => {
                        // Most responsibilities are 0 (+0.0, all bits clear): test 16 at
                        // a time with a branch-free OR.
                        for (c, chunk) in r[i * k..(i + 1) * k].chunks(16).enumerate() {
                            if chunk.iter().fold(0u32, |a, v| a | v.to_bits()) == 0 {
                                continue;
                            }
                            for (o, &v) in chunk.iter().enumerate() {
                                if v > 0.0 {
                                    s.add_row(x, w, shift, std::iter::once((c * 16 + o, v as f64)), &mut dev);
                                }
                            }
                        }
                    }
                    Resp::Hard(l) => s.add_row(x, w, shift, std::iter::once((l[i] as usize, 1.0)), &mut dev),
                }
            }
            s
        })
        .collect();
    for p in &partials {
        total.merge(p);
    }
}

/// The statistics of all of `points` (see [`accumulate_into`]).
#[allow(clippy::too_many_arguments)]
pub fn accumulate(
    points: &[f32],
    dim: usize,
    k: usize,
    weights: Option<&[f32]>,
    shift: &[f64],
    resp: Resp<'_>,
    log_norm: Option<&[f64]>,
    full: bool,
) -> MixtureStats {
    let mut total = MixtureStats::zeros(k, dim, full);
    accumulate_into(&mut total, points, dim, k, weights, shift, resp, log_norm);
    total
}

/// A component is emptied when its share of the rows' weight falls below this.
pub const EMPTY_SHARE: f64 = 1e-12;

/// An emptied component's covariance: the previous one, or the identity at the start
/// (with weight 0 it takes no responsibility; it must only stay positive definite).
fn frozen_covariance(previous: Option<&Mixture>, j: usize, d: usize) -> Vec<f64> {
    match previous {
        Some(p) => p.covariance_matrix(j),
        None => (0..d * d).map(|i| if i % (d + 1) == 0 { 1.0 } else { 0.0 }).collect(),
    }
}

/// The M-step (scikit-learn's `_estimate_gaussian_parameters`, with the statistics
/// about `shift`): weights, means and covariances with `reg_covar` on the diagonal.
/// A component whose mass falls to at most `EMPTY_SHARE` of the total is emptied: it
/// keeps `previous`'s mean and covariance (at the start: its shift and the identity)
/// with weight 0, so it takes no rows from then on; the emptied indices are returned.
pub fn m_step(
    s: &MixtureStats,
    shift: &[f64],
    cov: CovarianceType,
    reg_covar: f64,
    previous: Option<&Mixture>,
) -> (Mixture, Vec<usize>) {
    let (k, d) = (s.k, s.dim);
    let eps10 = 10.0 * f64::EPSILON;
    let mut emptied = Vec::new();
    let mut weights = vec![0.0; k];
    let mut means = vec![0.0; k * d];
    // Central second moments per component (d or d × d), not yet regularised.
    let mut central: Vec<Vec<f64>> = Vec::with_capacity(k);
    for j in 0..k {
        let nk = s.mass[j] + eps10;
        let empty = s.mass[j] <= EMPTY_SHARE * s.total_weight;
        if empty {
            emptied.push(j);
        }
        weights[j] = if empty { 0.0 } else { nk };
        let c = &shift[j * d..(j + 1) * d];
        let delta: Vec<f64> = s.first[j * d..(j + 1) * d].iter().map(|v| v / nk).collect();
        for t in 0..d {
            means[j * d + t] = match previous {
                Some(p) if empty => p.mean(j)[t],
                _ if empty => c[t],
                _ => c[t] + delta[t],
            };
        }
        if s.full {
            let sec = &s.second[j * d * d..(j + 1) * d * d];
            let mut m = vec![0.0; d * d];
            for a in 0..d {
                for b in a..d {
                    let v = sec[a * d + b] / nk - delta[a] * delta[b];
                    m[a * d + b] = v;
                    m[b * d + a] = v;
                }
            }
            central.push(m);
        } else {
            central.push((0..d).map(|t| s.second[j * d + t] / nk - delta[t] * delta[t]).collect());
        }
    }
    let total: f64 = weights.iter().sum();
    for w in &mut weights {
        *w /= total;
    }
    let is_empty = |j: usize| emptied.contains(&j);
    let covariances = match cov {
        CovarianceType::Full => {
            let mut out = Vec::with_capacity(k * d * d);
            for (j, mut m) in central.into_iter().enumerate() {
                if is_empty(j) {
                    out.extend(frozen_covariance(previous, j, d));
                    continue;
                }
                for t in 0..d {
                    m[t * d + t] += reg_covar;
                }
                out.extend(m);
            }
            out
        }
        CovarianceType::Diag => {
            let mut out = Vec::with_capacity(k * d);
            for (j, m) in central.into_iter().enumerate() {
                if is_empty(j) {
                    let m = frozen_covariance(previous, j, d);
                    out.extend((0..d).map(|t| m[t * d + t]));
                    continue;
                }
                out.extend(m.into_iter().map(|v| v + reg_covar));
            }
            out
        }
        CovarianceType::Spherical => (0..k)
            .map(|j| {
                if is_empty(j) {
                    frozen_covariance(previous, j, d)[0]
                } else {
                    central[j].iter().map(|v| v + reg_covar).sum::<f64>() / d as f64
                }
            })
            .collect(),
        CovarianceType::Tied => {
            // Σ_j nk_j·C_j / Σ nk (scikit-learn: (XᵀX − Σ nk μμᵀ) / Σ nk).
            let mut m = vec![0.0; d * d];
            let mut mass = 0.0;
            for (j, c) in central.iter().enumerate() {
                let nk = s.mass[j] + eps10;
                mass += nk;
                for (a, v) in m.iter_mut().zip(c) {
                    *a += nk * v;
                }
            }
            for v in &mut m {
                *v /= mass;
            }
            for t in 0..d {
                m[t * d + t] += reg_covar;
            }
            m
        }
    };
    (Mixture { covariance: cov, k, dim: d, weights, means, covariances }, emptied)
}
