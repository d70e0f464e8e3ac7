//! Mini-batch k-means, following scikit-learn's `MiniBatchKMeans` (Sculley 2010): each
//! step draws `batch_size` rows at random, assigns them exactly to the current centroids
//! (a backend pass), and moves each centroid toward its batch members with a learning
//! rate of 1 / (its cumulative weight). Clusters whose cumulative weight falls under
//! `reassignment_ratio` × the largest are re-seeded from batch rows every 10·k sampled
//! rows; the run stops when the exponentially weighted average of the batch inertia has
//! not improved for `max_no_improvement` steps, when the centroids move less than the
//! tolerance, or after `max_iter` passes' worth of rows. A last exact pass gives the
//! labels, statistics and inertia the model reports, as the full fit does.

use rand::RngExt;

use super::algorithm::{IterInfo, KMeansFit, initial_centroids, tolerance};
use super::hyperparams::KMeansParams;
use super::init;
use crate::backend::{Backend, Centroids, Nearest};
use crate::error::{Error, Result};
use crate::features::Matrix;

/// What mini-batch adds to the k-means parameters (scikit-learn's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct MiniBatchParams {
    pub batch_size: usize,
    /// Steps without improvement of the smoothed batch inertia before stopping (0: never).
    pub max_no_improvement: usize,
    /// Clusters lighter than this share of the heaviest are re-seeded.
    pub reassignment_ratio: f64,
}

impl Default for MiniBatchParams {
    fn default() -> Self {
        MiniBatchParams { batch_size: 1024, max_no_improvement: 10, reassignment_ratio: 0.01 }
    }
}

impl MiniBatchParams {
    pub fn check(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::Usage("--batch-size must be at least 1".into()));
        }
        if !(self.reassignment_ratio.is_finite() && self.reassignment_ratio >= 0.0) {
            return Err(Error::Usage("--reassignment-ratio must be a number, 0 or more".into()));
        }
        Ok(())
    }
}

/// Fit by mini-batches; `on_iter` sees progress about ten times per pass over the rows
/// (`iteration` counts steps) and stops the fit by returning false.
pub fn fit_minibatch<B: Backend + ?Sized>(
    backend: &B,
    x: &Matrix,
    weights: Option<&[f32]>,
    params: &KMeansParams,
    mb: &MiniBatchParams,
    on_iter: &mut dyn FnMut(&IterInfo) -> bool,
) -> Result<KMeansFit> {
    mb.check()?;
    let usable = weights.map_or(x.n(), |w| w.iter().filter(|v| **v > 0.0).count());
    params.check(usable, x.dim)?;
    let (n, dim, k) = (x.n(), x.dim, params.k);
    let batch = mb.batch_size.min(n);
    let tol_scaled = tolerance(x, params.tol);
    let t0 = std::time::Instant::now();
    let c = initial_centroids(x, weights, params, 0);
    let init_seconds = t0.elapsed().as_secs_f64();
    // The sampling has its own stream, apart from the initialisation's.
    let mut rng = init::rng_for(params.seed, 1 << 20);
    let n_steps = (params.max_iter as u128 * n as u128).div_ceil(batch as u128).min(u64::MAX as u128) as u64;
    let report_every = ((n / batch) / 10).max(1) as u64;
    let mut buf = vec![0.0f32; batch * dim];
    let mut bw = vec![1.0f32; batch];
    let mut st = Stepper::new(c, mb, tol_scaled, n, report_every);
    let t_iter = std::time::Instant::now();
    for _ in 0..n_steps {
        for b in 0..batch {
            let i = rng.random_range(0..n);
            buf[b * dim..(b + 1) * dim].copy_from_slice(x.row(i));
            bw[b] = weights.map_or(1.0, |w| w[i]);
        }
        if st.step(backend, &buf, &bw, &mut rng, n_steps, on_iter)? {
            break;
        }
    }
    let Stepper { c, steps, converged, relocations, .. } = st;
    let mut nearest = vec![Nearest::default(); n];
    backend.retain(&x.data, dim)?;
    let last = backend.assign(&x.data, &c, &mut nearest).and_then(|_| backend.reduce(&x.data, weights, &nearest, k));
    backend.release();
    let stats = last?;
    let inertia = stats.inertia();
    if !inertia.is_finite() {
        return Err(Error::Runtime("mini-batch k-means diverged: the objective is not finite".into()));
    }
    Ok(KMeansFit {
        centroids: c,
        nearest,
        stats,
        inertia,
        iterations: steps as usize,
        converged,
        relocations,
        best_run: 0,
        tol_scaled,
        iteration_seconds: t_iter.elapsed().as_secs_f64(),
        init_seconds,
        full_evaluations: steps * batch as u64 + n as u64,
    })
}

/// The state of a mini-batch fit between steps: centroids, their cumulative weights,
/// the smoothed batch inertia and the stopping rule. The in-memory fit feeds it rows
/// sampled with replacement; the streamed fit, rows drawn from a shuffle buffer.
pub struct Stepper {
    pub c: Centroids,
    counts: Vec<f64>,
    mb: MiniBatchParams,
    tol_scaled: f64,
    /// Rows of the whole input (the smoothing of the batch inertia depends on it).
    n: usize,
    report_every: u64,
    since_reassign: usize,
    ewa: Option<f64>,
    ewa_min: Option<f64>,
    no_improvement: usize,
    pub steps: u64,
    pub converged: bool,
    pub relocations: usize,
    out: Vec<Nearest>,
    t_report: std::time::Instant,
}

impl Stepper {
    pub fn new(c: Centroids, mb: &MiniBatchParams, tol_scaled: f64, n: usize, report_every: u64) -> Self {
        let k = c.k;
        Stepper {
            c,
            counts: vec![0.0; k],
            mb: mb.clone(),
            tol_scaled,
            n,
            report_every: report_every.max(1),
            since_reassign: 0,
            ewa: None,
            ewa_min: None,
            no_improvement: 0,
            steps: 0,
            converged: false,
            relocations: 0,
            out: Vec::new(),
            t_report: std::time::Instant::now(),
        }
    }

    /// One step on the batch `buf` (rows × dim, weights `bw`); true when the stopping
    /// rule fired. `last_step` is the step count the caller stops at (for the progress).
    pub fn step<B: Backend + ?Sized>(
        &mut self,
        backend: &B,
        buf: &[f32],
        bw: &[f32],
        rng: &mut rand_chacha::ChaCha8Rng,
        last_step: u64,
        on_iter: &mut dyn FnMut(&IterInfo) -> bool,
    ) -> Result<bool> {
        let (k, dim) = (self.c.k, self.c.dim);
        let batch = bw.len();
        self.out.resize(batch, Nearest::default());
        backend.assign(buf, &self.c, &mut self.out)?;
        // The batch's weighted sums and inertia (against the centroids before the step).
        let mut wsum = vec![0.0f64; k];
        let mut sum = vec![0.0f64; k * dim];
        let mut inertia = 0.0f64;
        for (b, o) in self.out.iter().enumerate() {
            let (j, wb) = (o.label as usize, bw[b] as f64);
            wsum[j] += wb;
            inertia += wb * o.dist as f64;
            for (s, v) in sum[j * dim..(j + 1) * dim].iter_mut().zip(&buf[b * dim..(b + 1) * dim]) {
                *s += wb * *v as f64;
            }
        }
        let c = &mut self.c;
        let old = c.data.clone();
        for j in 0..k {
            if wsum[j] <= 0.0 {
                continue;
            }
            let total = self.counts[j] + wsum[j];
            for p in 0..dim {
                let v = (c.data[j * dim + p] as f64 * self.counts[j] + sum[j * dim + p]) / total;
                c.data[j * dim + p] = v as f32;
            }
            self.counts[j] = total;
        }
        // Re-seed light clusters from this batch (scikit-learn's rule and schedule).
        self.since_reassign += batch;
        if self.mb.reassignment_ratio > 0.0 && (self.counts.contains(&0.0) || self.since_reassign >= 10 * k) {
            self.since_reassign = 0;
            self.relocations += reassign(c, &mut self.counts, buf, bw, self.mb.reassignment_ratio, rng);
        }
        let shift: f64 = c.data.iter().zip(&old).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
        let step = self.steps;
        self.steps += 1;
        // Early stopping on the smoothed batch inertia (the first step is ignored).
        let batch_inertia = inertia / batch as f64;
        let mut stop = false;
        if step > 0 {
            let e = match self.ewa {
                None => batch_inertia,
                Some(e) => {
                    let alpha = (batch as f64 * 2.0 / (self.n as f64 + 1.0)).min(1.0);
                    e * (1.0 - alpha) + batch_inertia * alpha
                }
            };
            self.ewa = Some(e);
            if self.tol_scaled > 0.0 && shift <= self.tol_scaled {
                stop = true;
            }
            if self.ewa_min.is_none_or(|m| e < m) {
                self.no_improvement = 0;
                self.ewa_min = Some(e);
            } else {
                self.no_improvement += 1;
            }
            if self.mb.max_no_improvement > 0 && self.no_improvement >= self.mb.max_no_improvement {
                stop = true;
            }
        }
        if self.steps.is_multiple_of(self.report_every) || stop || self.steps == last_step {
            let go_on = on_iter(&IterInfo {
                run: 0,
                iteration: self.steps as usize,
                changed: 0,
                shift,
                full_evaluations: batch as u64 * self.report_every,
                seconds: self.t_report.elapsed().as_secs_f64() / self.report_every as f64,
            });
            self.t_report = std::time::Instant::now();
            if !go_on {
                return Err(Error::Interrupted);
            }
        }
        if stop {
            self.converged = true;
        }
        Ok(stop)
    }
}

/// scikit-learn's `_mini_batch_step` reassignment: clusters lighter than `ratio` × the
/// heaviest (at most half the batch) take distinct batch rows drawn with probability in
/// proportion to their weight, and the lightest weight of the others.
fn reassign(
    c: &mut Centroids,
    counts: &mut [f64],
    buf: &[f32],
    bw: &[f32],
    ratio: f64,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> usize {
    let dim = c.dim;
    let batch = bw.len();
    let max = counts.iter().cloned().fold(0.0, f64::max);
    let mut to: Vec<usize> = (0..counts.len()).filter(|&j| counts[j] < ratio * max).collect();
    if to.is_empty() {
        return 0;
    }
    if to.len() > batch / 2 {
        // Keep the lightest half-batch.
        to.sort_by(|a, b| counts[*a].total_cmp(&counts[*b]).then(a.cmp(b)));
        to.truncate(batch / 2);
    }
    let keep_min = (0..counts.len()).filter(|j| !to.contains(j)).map(|j| counts[j]).fold(f64::INFINITY, f64::min);
    // Weighted sampling without replacement (Efraimidis–Spirakis keys).
    let mut keyed: Vec<(f64, usize)> = (0..batch)
        .filter(|&b| bw[b] > 0.0)
        .map(|b| {
            let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            (u.ln() / bw[b] as f64, b)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut moved = 0;
    for (&j, &(_, b)) in to.iter().zip(&keyed) {
        c.data[j * dim..(j + 1) * dim].copy_from_slice(&buf[b * dim..(b + 1) * dim]);
        counts[j] = if keep_min.is_finite() { keep_min } else { 0.0 };
        moved += 1;
    }
    moved
}
