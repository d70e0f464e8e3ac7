//! EM for Gaussian mixtures: start from hard labels, then alternate the E-step (a
//! backend pass) and the M-step (f64 on the host) until the mean log-likelihood per row
//! changes by less than `tol`, as scikit-learn's `GaussianMixture.fit`.

use std::time::Instant;

use super::hyperparams::{CovarianceType, GmmInit, GmmParams};
use super::stats::{self, GaussianTerms, Mixture, MixtureStats, Resp};
use crate::backend::{Backend, Nearest};
use crate::error::{Error, Result};
use crate::features::Matrix;
use crate::kmeans::{self, Algorithm, InitMethod, KMeansParams, StateEvent};
use serde::{Deserialize, Serialize};

/// Rows per E-step call: the backend's preference rounded up to a multiple of the
/// statistics' chunk (so the statistics are summed in the same order whatever the
/// block). The responsibilities of one block (rows × k f32) are the only buffer EM adds
/// to the matrix; on the CPU a block stays in cache between the E-step that writes it
/// and the statistics that read it.
pub fn block_rows(backend: &(impl Backend + ?Sized), k: usize, dim: usize, full: bool) -> usize {
    let chunk = stats::stats_rows(k, dim, full);
    backend.gmm_block_rows().div_ceil(chunk).max(1) * chunk
}

/// One EM iteration (or, with `init` set, one iteration of the k-means start).
#[derive(Debug, Clone)]
pub struct EmIter {
    pub run: usize,
    pub iteration: usize,
    /// True while the k-means start runs (the log-likelihood is then NaN).
    pub init: bool,
    /// Mean log-likelihood per row (weighted) before this iteration's M-step.
    pub log_likelihood: f64,
    /// Its change since the previous iteration (+∞ at the first).
    pub change: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone)]
pub struct GmmFit {
    pub mixture: Mixture,
    /// Most probable component of every row (ties to the lower index), its posterior,
    /// the runner-up and its posterior (k = 1: the same component, 0).
    pub labels: Vec<u32>,
    pub probability: Vec<f32>,
    pub second: Vec<u32>,
    pub second_probability: Vec<f32>,
    /// Mean log-likelihood per row under the final parameters (scikit-learn's `score`).
    pub log_likelihood: f64,
    /// The mean log-likelihood of the last E-step (scikit-learn's `lower_bound_`).
    pub lower_bound: f64,
    /// Σ w (the rows' count without weights).
    pub total_weight: f64,
    pub iterations: usize,
    pub converged: bool,
    pub best_run: usize,
    /// Components emptied during the fit, with the iteration they emptied at.
    pub emptied: Vec<(usize, usize)>,
    pub init_seconds: f64,
    pub em_seconds: f64,
}

impl GmmFit {
    /// Bayesian information criterion (lower is better), scikit-learn's formula with
    /// the rows' total weight as the sample size.
    pub fn bic(&self) -> f64 {
        -2.0 * self.log_likelihood * self.total_weight + self.mixture.n_parameters() as f64 * self.total_weight.ln()
    }

    /// Akaike information criterion (lower is better).
    pub fn aic(&self) -> f64 {
        -2.0 * self.log_likelihood * self.total_weight + 2.0 * self.mixture.n_parameters() as f64
    }
}

/// Fit a mixture on `x` (rows × dim) with optional sample weights.
pub fn fit<B: Backend + ?Sized>(
    backend: &B,
    x: &Matrix,
    weights: Option<&[f32]>,
    params: &GmmParams,
) -> Result<GmmFit> {
    fit_cancellable(backend, x, weights, params, &mut |_| true)
}

/// As [`fit`]; stops with [`Error::Interrupted`] when `on_iter` returns false.
pub fn fit_cancellable<B: Backend + ?Sized>(
    backend: &B,
    x: &Matrix,
    weights: Option<&[f32]>,
    params: &GmmParams,
    on_iter: &mut dyn FnMut(&EmIter) -> bool,
) -> Result<GmmFit> {
    fit_resumable(backend, x, weights, params, None, on_iter, &mut |_, _| Ok(()))
}

/// An EM run that has ended, enough to rebuild its result exactly (the final E-step
/// against its mixture gives the labels and posteriors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GmmDone {
    pub run: usize,
    pub mixture: Mixture,
    pub lower_bound: f64,
    pub iterations: usize,
    pub converged: bool,
    pub emptied: Vec<(usize, usize)>,
}

/// Where a mixture fit is, between two EM iterations: what a checkpoint holds. A run
/// interrupted during its k-means start begins that start again (it is seeded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GmmResume {
    /// The run in progress (0-based; `n_init` once every run has ended).
    pub run: usize,
    /// EM iterations done in this run.
    pub iteration: usize,
    /// The run's stopping rule has fired: what is left is the final E-step.
    pub converged: bool,
    /// The mixture after `iteration` M-steps (None: the run's EM has not started).
    pub mixture: Option<Mixture>,
    /// The mean log-likelihood of the last E-step (None before the first).
    pub lower_bound: Option<f64>,
    pub emptied: Vec<(usize, usize)>,
    /// The best run that has ended so far.
    pub best: Option<GmmDone>,
}

impl GmmResume {
    fn start() -> Self {
        GmmResume {
            run: 0,
            iteration: 0,
            converged: false,
            mixture: None,
            lower_bound: None,
            emptied: Vec::new(),
            best: None,
        }
    }
}

/// As [`fit_cancellable`], from a saved state (`resume`), handing the state to
/// `on_state` after every EM iteration, at the end of every run and before an
/// interruption. A fit resumed from any state it handed out ends as the uninterrupted
/// fit does, bit for bit.
pub fn fit_resumable<B: Backend + ?Sized>(
    backend: &B,
    x: &Matrix,
    weights: Option<&[f32]>,
    params: &GmmParams,
    resume: Option<GmmResume>,
    on_iter: &mut dyn FnMut(&EmIter) -> bool,
    on_state: &mut dyn FnMut(&GmmResume, StateEvent) -> Result<()>,
) -> Result<GmmFit> {
    let usable = weights.map_or(x.n(), |w| w.iter().filter(|v| **v > 0.0).count());
    params.check(usable, x.dim)?;
    if let Some(w) = weights {
        assert_eq!(w.len(), x.n(), "one weight per row");
    }
    let runs = if matches!(params.init, GmmInit::Given(_)) { 1 } else { params.n_init };
    let mut state = resume.unwrap_or_else(GmmResume::start);
    if state.run > runs || state.mixture.as_ref().is_some_and(|m| (m.k, m.dim) != (params.k, x.dim)) {
        return Err(Error::Data(format!(
            "the saved state (run {}, a mixture of another shape) does not fit this fit of {runs} runs, k = {}",
            state.run, params.k
        )));
    }
    backend.retain(&x.data, x.dim)?;
    let result = (|| {
        let mut best: Option<(GmmFit, GmmDone)> = match state.best.take() {
            Some(d) => Some((finish(backend, x, weights, params, &d)?, d)),
            None => None,
        };
        let mut init_seconds = 0.0;
        for run in state.run..runs {
            let start = if state.run == run && state.mixture.is_some() {
                std::mem::replace(&mut state, GmmResume::start())
            } else {
                let t0 = Instant::now();
                let (labels, shift) = initial_labels(backend, x, weights, params, run, on_iter)?;
                init_seconds += t0.elapsed().as_secs_f64();
                // The k-means start's retain and release nest inside this one.
                let full = is_full(params.covariance);
                let st = stats::accumulate(&x.data, x.dim, params.k, weights, &shift, Resp::Hard(&labels), None, full);
                let (mix, first_empty) = stats::m_step(&st, &shift, params.covariance, params.reg_covar, None);
                GmmResume {
                    run,
                    mixture: Some(mix),
                    emptied: first_empty.into_iter().map(|j| (j, 0)).collect(),
                    ..GmmResume::start()
                }
            };
            let best_done = best.as_ref().map(|b| b.1.clone());
            let t_em = Instant::now();
            let done = run_em(backend, x, weights, params, start, best_done, on_iter, on_state)?;
            let mut f = finish(backend, x, weights, params, &done)?;
            f.em_seconds = t_em.elapsed().as_secs_f64();
            // scikit-learn keeps the first run with the highest lower bound.
            if best.as_ref().is_none_or(|b| f.lower_bound > b.0.lower_bound) {
                best = Some((f, done));
            }
            let ended = GmmResume { run: run + 1, best: best.as_ref().map(|b| b.1.clone()), ..GmmResume::start() };
            on_state(&ended, StateEvent::RunEnd)?;
        }
        let (mut best, _) = best.expect("at least one run");
        best.init_seconds = init_seconds;
        Ok(best)
    })();
    backend.release();
    result
}

/// Hard labels and the centroids they were taken from.
fn initial_labels<B: Backend + ?Sized>(
    backend: &B,
    x: &Matrix,
    w: Option<&[f32]>,
    p: &GmmParams,
    run: usize,
    on_iter: &mut dyn FnMut(&EmIter) -> bool,
) -> Result<(Vec<u32>, Vec<f64>)> {
    match &p.init {
        GmmInit::Given(c) => {
            // No earlier labels (label 0 for every row would bound them all by c_0).
            let mut nearest = vec![Nearest { label: u32::MAX, ..Default::default() }; x.n()];
            backend.assign_labels(&x.data, c, &mut nearest)?;
            Ok((nearest.iter().map(|n| n.label).collect(), c.data.iter().map(|v| *v as f64).collect()))
        }
        GmmInit::KMeans => {
            let kp = KMeansParams {
                seed: p.seed.wrapping_add(run as u64),
                init: InitMethod::KMeansPlusPlus,
                algorithm: Algorithm::auto_for(p.k, x.dim, backend),
                ..KMeansParams::new(p.k)
            };
            let f = kmeans::fit_cancellable(backend, x, w, &kp, &mut |i| {
                on_iter(&EmIter {
                    run,
                    iteration: i.iteration,
                    init: true,
                    log_likelihood: f64::NAN,
                    change: f64::NAN,
                    seconds: i.seconds,
                })
            })?;
            Ok((f.nearest.iter().map(|n| n.label).collect(), f.centroids.data.iter().map(|v| *v as f64).collect()))
        }
    }
}

fn is_full(c: CovarianceType) -> bool {
    matches!(c, CovarianceType::Full | CovarianceType::Tied)
}

/// Sees each block of an E-step: its first row, responsibilities and log densities.
pub type BlockFn<'a> = dyn FnMut(usize, &[f32], &[f64]) + 'a;

/// One E-step over all rows in blocks: the statistics about the terms' means (with the
/// log-likelihood) when `stats` is set, and `each_block(first_row, resp)` per block.
pub fn e_pass<B: Backend + ?Sized>(
    backend: &B,
    x: &Matrix,
    w: Option<&[f32]>,
    terms: &GaussianTerms,
    full: bool,
    mut each_block: Option<&mut BlockFn<'_>>,
) -> Result<MixtureStats> {
    let (n, d, k) = (x.n(), x.dim, terms.k);
    let mut total = MixtureStats::zeros(k, d, full);
    let block = block_rows(backend, k, d, full);
    let mut resp = vec![0.0f32; block.min(n) * k];
    let mut log_norm = vec![0.0f64; block.min(n)];
    for lo in (0..n).step_by(block) {
        let hi = (lo + block).min(n);
        let rows = hi - lo;
        let (r, ln) = (&mut resp[..rows * k], &mut log_norm[..rows]);
        backend.gmm_estep(&x.data, lo..hi, terms, r, ln)?;
        if let Some(bad) = ln.iter().position(|v| !v.is_finite()) {
            return Err(Error::Data(format!(
                "Gaussian mixture: row {} has no finite density under any component (a value too far out for \
                 the f32 arithmetic of the {} backend); scale the features or use --backend cpu",
                lo + bad,
                backend.name()
            )));
        }
        let ws = w.map(|w| &w[lo..hi]);
        let xs = &x.data[lo * d..hi * d];
        stats::accumulate_into(&mut total, xs, d, k, ws, &terms.means, Resp::Soft(r), Some(ln));
        if let Some(f) = each_block.as_mut() {
            f(lo, r, ln);
        }
    }
    Ok(total)
}

/// EM iterations of one run from `state` (its mixture after `state.iteration` M-steps)
/// until the change of the mean log-likelihood falls under `tol` or `max_iter`.
#[allow(clippy::too_many_arguments)]
fn run_em<B: Backend + ?Sized>(
    backend: &B,
    x: &Matrix,
    w: Option<&[f32]>,
    p: &GmmParams,
    state: GmmResume,
    best: Option<GmmDone>,
    on_iter: &mut dyn FnMut(&EmIter) -> bool,
    on_state: &mut dyn FnMut(&GmmResume, StateEvent) -> Result<()>,
) -> Result<GmmDone> {
    let full = is_full(p.covariance);
    let run = state.run;
    let mut mix = state.mixture.expect("a run's EM starts from a mixture");
    let mut emptied = state.emptied;
    let mut lower = state.lower_bound.unwrap_or(f64::NEG_INFINITY);
    let mut converged = state.converged;
    let mut iterations = state.iteration;
    let mut terms = mix.terms()?;
    let snapshot = |mix: &Mixture, it: usize, lower: f64, converged: bool, emptied: &[(usize, usize)]| GmmResume {
        run,
        iteration: it,
        converged,
        mixture: Some(mix.clone()),
        lower_bound: Some(lower),
        emptied: emptied.to_vec(),
        best: best.clone(),
    };
    let mut it = iterations;
    while !converged && it < p.max_iter {
        it += 1;
        let t0 = Instant::now();
        let st = e_pass(backend, x, w, &terms, full, None)?;
        let ll = st.log_likelihood / st.total_weight;
        let (new_mix, empty) = stats::m_step(&st, &terms.means, p.covariance, p.reg_covar, Some(&mix));
        for j in empty {
            if !emptied.iter().any(|(e, _)| *e == j) {
                log::warn!(
                    "Gaussian mixture: component {j} lost all its rows at iteration {it}; it keeps its last mean \
                     and covariance with weight 0 (no row is assigned to it)"
                );
                emptied.push((j, it));
            }
        }
        mix = new_mix;
        terms = mix.terms()?;
        let change = ll - lower;
        lower = ll;
        iterations = it;
        converged = change.abs() < p.tol;
        if !on_iter(&EmIter {
            run,
            iteration: it,
            init: false,
            log_likelihood: ll,
            change,
            seconds: t0.elapsed().as_secs_f64(),
        }) {
            on_state(&snapshot(&mix, it, lower, converged, &emptied), StateEvent::Stopping)?;
            return Err(Error::Interrupted);
        }
        if !converged {
            on_state(&snapshot(&mix, it, lower, converged, &emptied), StateEvent::Iteration)?;
        }
    }
    if !converged {
        log::warn!(
            "Gaussian mixture run {} did not converge in {} iterations (last change of the mean log-likelihood above \
             --tol {}); raise --max-iter or --tol",
            run + 1,
            p.max_iter,
            p.tol
        );
    }
    Ok(GmmDone { run, mixture: mix, lower_bound: lower, iterations, converged, emptied })
}

/// The final E-step of a run: labels and posteriors consistent with its mixture.
fn finish<B: Backend + ?Sized>(
    backend: &B,
    x: &Matrix,
    w: Option<&[f32]>,
    p: &GmmParams,
    done: &GmmDone,
) -> Result<GmmFit> {
    let t_em = Instant::now();
    let k = p.k;
    let terms = done.mixture.terms()?;
    let n = x.n();
    let mut out_labels = vec![0u32; n];
    let mut prob = vec![0.0f32; n];
    let mut second = vec![0u32; n];
    let mut second_prob = vec![0.0f32; n];
    let st = e_pass(
        backend,
        x,
        w,
        &terms,
        is_full(p.covariance),
        Some(&mut |lo, r, _| {
            for (i, row) in r.chunks_exact(k).enumerate() {
                let [(a, pa), (b, pb)] = top_two(row);
                out_labels[lo + i] = a as u32;
                prob[lo + i] = pa;
                second[lo + i] = b as u32;
                second_prob[lo + i] = pb;
            }
        }),
    )?;
    Ok(GmmFit {
        mixture: done.mixture.clone(),
        labels: out_labels,
        probability: prob,
        second,
        second_probability: second_prob,
        log_likelihood: st.log_likelihood / st.total_weight,
        lower_bound: done.lower_bound,
        total_weight: st.total_weight,
        iterations: done.iterations,
        converged: done.converged,
        best_run: done.run,
        emptied: done.emptied.clone(),
        init_seconds: 0.0,
        em_seconds: t_em.elapsed().as_secs_f64(),
    })
}

/// The two most probable components of a row of responsibilities (ties to the lower
/// index); with k = 1 the runner-up is the same component with probability 0.
pub fn top_two(r: &[f32]) -> [(usize, f32); 2] {
    let mut best = (0usize, f32::NEG_INFINITY);
    let mut next = (0usize, f32::NEG_INFINITY);
    for (j, &v) in r.iter().enumerate() {
        if v > best.1 {
            next = best;
            best = (j, v);
        } else if v > next.1 {
            next = (j, v);
        }
    }
    if next.1 == f32::NEG_INFINITY {
        next = (best.0, 0.0);
    }
    [best, next]
}
