//! The k-means iterations. Lloyd assigns every point each iteration; Hamerly keeps
//! an upper bound on each point's distance to its centroid and a lower bound on the
//! second nearest, and recomputes only points whose bounds overlap. Both share the
//! update, the reduction and the stopping rule, so they give the same model bit for bit.

use std::collections::BinaryHeap;
use std::time::Instant;

use rayon::prelude::*;

use super::hyperparams::{Algorithm, InitMethod, KMeansParams, Metric};
use super::init;
use crate::backend::cpu::{Kernel, PreparedCentroids, REDUCE_ROWS, assign_block, exact_sq_dist};
use crate::backend::{Backend, Centroids, ClusterStats, Nearest};
use crate::error::{Error, Result};
use crate::features::{Matrix, column_means, column_variances};

/// Progress of one iteration, for logs and progress bars.
#[derive(Debug, Clone)]
pub struct IterInfo {
    pub run: usize,
    pub iteration: usize,
    pub changed: u64,
    pub shift: f64,
    /// Points whose distances to all centroids were computed this iteration.
    pub full_evaluations: u64,
    pub seconds: f64,
}

/// The result of a fit: the best of `n_init` runs.
#[derive(Debug, Clone)]
pub struct KMeansFit {
    pub centroids: Centroids,
    /// Final assignment of every row against `centroids`.
    pub nearest: Vec<Nearest>,
    /// Statistics of the final assignment (count, weight, sums, squared error).
    pub stats: ClusterStats,
    pub inertia: f64,
    pub iterations: usize,
    /// Stopped because no label changed or the shift fell under the tolerance.
    pub converged: bool,
    /// Empty clusters re-seeded with the farthest points.
    pub relocations: usize,
    /// Which restart won (0-based).
    pub best_run: usize,
    pub tol_scaled: f64,
    /// Seconds spent in iterations of the winning run.
    pub iteration_seconds: f64,
    /// Seconds in initialisation (all runs).
    pub init_seconds: f64,
    /// Points fully evaluated over the winning run (n per iteration for Lloyd).
    pub full_evaluations: u64,
}

/// scikit-learn's tolerance: `tol` times the mean per-feature variance.
pub fn tolerance(x: &Matrix, tol: f64) -> f64 {
    if tol == 0.0 {
        return 0.0;
    }
    let means = column_means(x, false);
    let vars = column_variances(x, &means);
    tol * vars.iter().sum::<f64>() / vars.len() as f64
}

/// Fit k-means on `x` (rows × dim) with optional sample weights.
pub fn fit<B: Backend + ?Sized>(
    backend: &B,
    x: &Matrix,
    weights: Option<&[f32]>,
    params: &KMeansParams,
    on_iter: &mut dyn FnMut(&IterInfo),
) -> Result<KMeansFit> {
    fit_cancellable(backend, x, weights, params, &mut |info| {
        on_iter(info);
        true
    })
}

/// As [`fit`]; the fit stops with [`Error::Interrupted`] when `on_iter` returns false
/// (a Ctrl-C seen by a Python caller, a job cancelled by its driver).
pub fn fit_cancellable<B: Backend + ?Sized>(
    backend: &B,
    x: &Matrix,
    weights: Option<&[f32]>,
    params: &KMeansParams,
    on_iter: &mut dyn FnMut(&IterInfo) -> bool,
) -> Result<KMeansFit> {
    fit_resumable(backend, x, weights, params, None, on_iter, &mut |_, _| Ok(()))
}

/// Why a fit hands its state to the saver of [`fit_resumable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateEvent {
    /// The end of an iteration that did not end the run.
    Iteration,
    /// A run has ended (its result is in `best` when it is the best so far).
    RunEnd,
    /// `on_iter` asked the fit to stop: the last state before [`Error::Interrupted`].
    Stopping,
}

/// A run that has ended, enough to rebuild its result exactly: its final centroids
/// (the labels, statistics and inertia are one exact pass against them).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DoneRun {
    pub run: usize,
    pub centroids: Vec<f32>,
    pub iterations: usize,
    pub converged: bool,
    pub relocations: usize,
    pub full_evaluations: u64,
}

/// The state of a fit between two iterations: what a checkpoint holds. The labels are
/// not kept: they are the exact assignment to `labels_from`, recomputed on resume, so a
/// resumed fit makes the same decisions, and the same model, as one never stopped.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Resume {
    /// The run in progress (0-based; `n_init` once every run has ended).
    pub run: usize,
    /// Iterations done in this run.
    pub iteration: usize,
    /// The run's stopping rule has fired: what is left is the final exact pass.
    pub converged: bool,
    /// Centroids the next iteration assigns to (None: the run has not started).
    pub centroids: Option<Vec<f32>>,
    /// Centroids the current labels were assigned to (the previous iteration's).
    pub labels_from: Option<Vec<f32>>,
    pub relocations: usize,
    pub full_evaluations: u64,
    /// The best run that has ended so far (lowest inertia, first on ties).
    pub best: Option<DoneRun>,
}

impl Resume {
    fn check(&self, k: usize, dim: usize, runs: usize) -> Result<()> {
        let bad = |what: &str| Err(Error::Runtime(format!("the checkpoint's state is inconsistent: {what}")));
        let ok_len =
            |v: &Option<Vec<f32>>| v.as_ref().is_none_or(|c| c.len() == k * dim && c.iter().all(|x| x.is_finite()));
        if self.run > runs || (self.run == runs && self.best.is_none()) {
            return bad("run number");
        }
        if !ok_len(&self.centroids) || !ok_len(&self.labels_from) {
            return bad("centroids of another shape");
        }
        if self.centroids.is_some() != self.labels_from.is_some() || (self.centroids.is_some() && self.iteration == 0) {
            return bad("centroids without their iteration");
        }
        if self.best.as_ref().is_some_and(|b| b.centroids.len() != k * dim || b.run >= runs) {
            return bad("best run");
        }
        Ok(())
    }
}

/// As [`fit_cancellable`], resumable: `resume` (from a checkpoint) continues a fit where
/// it stopped, and `on_state` sees the state after every iteration and run, and before
/// an interruption, to save what it chooses. A fit resumed from any of those states
/// gives the model of a fit never stopped, bit for bit (on backends with exact labels).
pub fn fit_resumable<B: Backend + ?Sized>(
    backend: &B,
    x: &Matrix,
    weights: Option<&[f32]>,
    params: &KMeansParams,
    resume: Option<Resume>,
    on_iter: &mut dyn FnMut(&IterInfo) -> bool,
    on_state: &mut dyn FnMut(&Resume, StateEvent) -> Result<()>,
) -> Result<KMeansFit> {
    let usable = weights.map_or(x.n(), |w| w.iter().filter(|v| **v > 0.0).count());
    params.check(usable, x.dim)?;
    if let Some(w) = weights {
        assert_eq!(w.len(), x.n(), "one weight per row");
    }
    let tol_scaled = tolerance(x, params.tol);
    let runs = if matches!(params.init, InitMethod::Given(_)) { 1 } else { params.n_init };
    if let Some(r) = &resume {
        r.check(params.k, x.dim, runs)?;
    }
    // The matrix is borrowed, hence unchanged, for the whole fit.
    backend.retain(&x.data, x.dim)?;
    let mut ctl = Control { on_iter, on_state };
    let result = fit_runs(backend, x, weights, params, tol_scaled, runs, resume, &mut ctl);
    backend.release();
    result
}

/// The caller's hooks: progress (and the request to stop), and the state saver.
struct Control<'a> {
    on_iter: &'a mut dyn FnMut(&IterInfo) -> bool,
    on_state: &'a mut dyn FnMut(&Resume, StateEvent) -> Result<()>,
}

#[allow(clippy::too_many_arguments)]
fn fit_runs<B: Backend + ?Sized>(
    backend: &B,
    x: &Matrix,
    weights: Option<&[f32]>,
    params: &KMeansParams,
    tol_scaled: f64,
    runs: usize,
    resume: Option<Resume>,
    ctl: &mut Control<'_>,
) -> Result<KMeansFit> {
    let (first_run, mut best_done, mut best) = match &resume {
        Some(r) => {
            let fit = match &r.best {
                Some(d) => Some(rebuild(backend, x, weights, params.k, d, tol_scaled)?),
                None => None,
            };
            (r.run, r.best.clone(), fit)
        }
        None => (0, None, None),
    };
    let mut resume = resume.filter(|r| r.centroids.is_some());
    let mut init_seconds = 0.0;
    for run in first_run..runs {
        let t0 = Instant::now();
        let start = match resume.take() {
            Some(r) => Start::Resumed(r),
            None => Start::Fresh(initial_centroids(x, weights, params, run)),
        };
        init_seconds += t0.elapsed().as_secs_f64();
        let fit = run_once(backend, x, weights, params, start, tol_scaled, run, &best_done, ctl)?;
        if best.as_ref().is_none_or(|b| fit.inertia < b.inertia) {
            best_done = Some(DoneRun {
                run,
                centroids: fit.centroids.data.clone(),
                iterations: fit.iterations,
                converged: fit.converged,
                relocations: fit.relocations,
                full_evaluations: fit.full_evaluations,
            });
            best = Some(fit);
        }
        let state = Resume {
            run: run + 1,
            iteration: 0,
            converged: false,
            centroids: None,
            labels_from: None,
            relocations: 0,
            full_evaluations: 0,
            best: best_done.clone(),
        };
        (ctl.on_state)(&state, StateEvent::RunEnd)?;
    }
    let mut best = best.expect("a fit has at least one run");
    best.init_seconds = init_seconds;
    Ok(best)
}

/// The result of an ended run from its final centroids: the same exact pass that
/// ended it.
fn rebuild<B: Backend + ?Sized>(
    backend: &B,
    x: &Matrix,
    w: Option<&[f32]>,
    k: usize,
    d: &DoneRun,
    tol_scaled: f64,
) -> Result<KMeansFit> {
    let c = Centroids::new(d.centroids.clone(), x.dim);
    let mut nearest = vec![Nearest::default(); x.n()];
    backend.assign(&x.data, &c, &mut nearest)?;
    let stats = backend.reduce(&x.data, w, &nearest, k)?;
    let inertia = stats.inertia();
    Ok(KMeansFit {
        centroids: c,
        nearest,
        stats,
        inertia,
        iterations: d.iterations,
        converged: d.converged,
        relocations: d.relocations,
        best_run: d.run,
        tol_scaled,
        iteration_seconds: 0.0,
        init_seconds: 0.0,
        full_evaluations: d.full_evaluations,
    })
}

/// Where a run begins: its initial centroids, or a saved state.
enum Start {
    Fresh(Centroids),
    Resumed(Resume),
}

pub fn initial_centroids(x: &Matrix, w: Option<&[f32]>, p: &KMeansParams, run: usize) -> Centroids {
    let mut rng = init::rng_for(p.seed, run);
    if let InitMethod::Given(c) = &p.init {
        let mut c = c.clone();
        if p.metric == Metric::Cosine {
            let norms = crate::features::row_norms(&c.data, c.dim);
            crate::features::divide_rows(&mut c.data, c.dim, &norms);
        }
        return c;
    }
    let (sample, sw) = init::sample_rows(x, w, p.init_sample_rows(x.n()), &mut rng);
    match &p.init {
        InitMethod::KMeansPlusPlus => init::kmeans_plus_plus(&sample, sw.as_deref(), p.k, &mut rng),
        InitMethod::KMeansParallel => init::kmeans_parallel(&sample, sw.as_deref(), p.k, &mut rng),
        InitMethod::Random => init::random_rows(&sample, p.k, &mut rng),
        InitMethod::Given(_) => unreachable!(),
    }
}

/// Hamerly bounds (distances, not squared), rounded outward so they stay valid.
struct Bounds {
    upper: Vec<f32>,
    lower: Vec<f32>,
}

#[inline]
fn round_up(v: f64) -> f32 {
    let f = v as f32;
    if (f as f64) < v { f.next_up() } else { f }
}
#[inline]
fn round_down(v: f64) -> f32 {
    let f = v as f32;
    if (f as f64) > v { f.next_down() } else { f }
}

/// Hamerly keeps using its bounds while they leave at most this share of points to search.
const BOUNDS_WORTH: f64 = 0.8;

/// Relative margin under which a bound does not prune (covers f64 rounding of the
/// exact distances that decide labels).
const PRUNE_MARGIN: f64 = 1e-6;

#[allow(clippy::too_many_arguments)]
fn run_once<B: Backend + ?Sized>(
    backend: &B,
    x: &Matrix,
    w: Option<&[f32]>,
    p: &KMeansParams,
    start: Start,
    tol_scaled: f64,
    run: usize,
    best: &Option<DoneRun>,
    ctl: &mut Control<'_>,
) -> Result<KMeansFit> {
    let n = x.n();
    let k = p.k;
    let dim = x.dim;
    let mut nearest = vec![Nearest { label: u32::MAX, dist: 0.0, second: 0.0 }; n];
    let mut prev_c: Option<Centroids> = None;
    let mut relocations = 0usize;
    let mut converged = false;
    let mut iterations = 0;
    let mut full_evals = 0u64;
    let mut c = match start {
        Start::Fresh(c) => c,
        Start::Resumed(r) => {
            // The labels of the last iteration done: the exact assignment to the
            // centroids it used, as every algorithm here computes them.
            let from = Centroids::new(r.labels_from.expect("checked"), dim);
            backend.assign(&x.data, &from, &mut nearest)?;
            prev_c = Some(from);
            relocations = r.relocations;
            full_evals = r.full_evaluations;
            iterations = r.iteration;
            converged = r.converged;
            Centroids::new(r.centroids.expect("checked"), dim)
        }
    };
    let mut labels_old: Vec<u32> = Vec::new();
    let mut bounds: Option<Bounds> = None;
    let mut last_searched = 0.0f64;
    let t_iter = Instant::now();
    let first = if converged { p.max_iter } else { iterations };
    for it in first..p.max_iter {
        let t0 = Instant::now();
        // Bounds stop paying when most points fail them (large k, centroids still
        // drifting): then run full passes, trying the bounds again every 4th iteration.
        let use_bounds = last_searched <= BOUNDS_WORTH || it % 4 == 0;
        let (changed, evaluated, fused) = match (p.algorithm, &prev_c) {
            (Algorithm::Hamerly, Some(old)) if bounds.is_some() && use_bounds => {
                let kernel = backend.as_cpu().map_or(Kernel::Auto, |b| b.kernel);
                let (changed, evaluated) = hamerly_step(x, old, &c, &mut nearest, bounds.as_mut().unwrap(), kernel);
                (changed, evaluated, None)
            }
            (Algorithm::Pruned, Some(_)) => {
                let cpu = backend.as_cpu();
                let codes = cpu.and_then(|b| b.codes_for(&x.data, x.dim, k));
                let kernel = cpu.map_or(Kernel::Auto, |b| b.kernel);
                let (changed, share) = super::pruned::step(x, &c, &mut nearest, kernel, codes.as_ref());
                (changed, (share * n as f64) as u64, None)
            }
            (Algorithm::Hamerly, _) => {
                labels_old.clear();
                labels_old.extend(nearest.iter().map(|nr| nr.label));
                backend.assign(&x.data, &c, &mut nearest)?;
                let changed = crate::backend::count_changed(&labels_old, &nearest);
                bounds = Some(bounds_from(&nearest));
                (changed, n as u64, None)
            }
            _ => {
                // Assignment, changed labels and statistics in one pass over the rows.
                let (stats, changed) = backend.assign_reduce(&x.data, w, &c, &mut nearest)?;
                (changed, n as u64, Some(stats))
            }
        };
        last_searched = evaluated as f64 / n as f64;
        full_evals += evaluated;
        let mut stats = match fused {
            Some(s) => s,
            None => backend.reduce(&x.data, w, &nearest, k)?,
        };
        let empties = stats.weight.iter().filter(|v| **v == 0.0).count();
        if empties > 0 {
            // Label-only passes and pruned points carry inexact distances; the choice of
            // the farthest points must not depend on the algorithm.
            refresh_distances(x, &c, &mut nearest);
        }
        let moved = relocate_empty(&mut stats, x, w, &nearest);
        relocations += moved;
        let new_c = centroids_from(&stats, &c, p.metric);
        let shift: f64 = (0..k).map(|j| exact_sq_dist(new_c.row(j), c.row(j))).sum();
        prev_c = Some(std::mem::replace(&mut c, new_c));
        iterations = it + 1;
        converged = changed == 0 || shift <= tol_scaled;
        let go_on = (ctl.on_iter)(&IterInfo {
            run,
            iteration: iterations,
            changed,
            shift,
            full_evaluations: evaluated,
            seconds: t0.elapsed().as_secs_f64(),
        });
        if !go_on || (!converged && iterations < p.max_iter) {
            let state = Resume {
                run,
                iteration: iterations,
                converged,
                centroids: Some(c.data.clone()),
                labels_from: prev_c.as_ref().map(|pc| pc.data.clone()),
                relocations,
                full_evaluations: full_evals,
                best: best.clone(),
            };
            (ctl.on_state)(&state, if go_on { StateEvent::Iteration } else { StateEvent::Stopping })?;
        }
        if !go_on {
            return Err(Error::Interrupted);
        }
        if converged {
            break;
        }
    }
    // One exact pass against the final centroids: the model's labels, distances,
    // margins and inertia are consistent with its centroids whatever the stop reason.
    backend.assign(&x.data, &c, &mut nearest)?;
    full_evals += n as u64;
    let iteration_seconds = t_iter.elapsed().as_secs_f64();
    let stats = backend.reduce(&x.data, w, &nearest, k)?;
    let inertia = stats.inertia();
    if !inertia.is_finite() {
        return Err(Error::Runtime("k-means diverged: the objective is not finite".into()));
    }
    Ok(KMeansFit {
        centroids: c,
        nearest,
        stats,
        inertia,
        iterations,
        converged,
        relocations,
        best_run: run,
        tol_scaled,
        iteration_seconds,
        init_seconds: 0.0,
        full_evaluations: full_evals,
    })
}

fn bounds_from(nearest: &[Nearest]) -> Bounds {
    Bounds {
        upper: nearest.par_iter().map(|nr| round_up((nr.dist as f64).sqrt())).collect(),
        lower: nearest.par_iter().map(|nr| round_down((nr.second as f64).sqrt())).collect(),
    }
}

/// Exact distance of every point to its own centroid (needed to pick the farthest
/// points when a cluster empties; Hamerly's pruned points carry stale distances).
pub(crate) fn refresh_distances(x: &Matrix, c: &Centroids, nearest: &mut [Nearest]) {
    nearest.par_iter_mut().enumerate().for_each(|(i, nr)| {
        nr.dist = exact_sq_dist(x.row(i), c.row(nr.label as usize)) as f32;
    });
}

/// Re-seed empty clusters as scikit-learn does: each takes one of the points farthest
/// from their centroid (largest distance first, ties to the lower row), which leaves
/// its old cluster. Returns how many clusters were re-seeded.
fn relocate_empty(stats: &mut ClusterStats, x: &Matrix, w: Option<&[f32]>, nearest: &[Nearest]) -> usize {
    let empty: Vec<usize> = (0..stats.k).filter(|&j| stats.weight[j] == 0.0).collect();
    if empty.is_empty() {
        return 0;
    }
    // Min-heap of the |empty| farthest points: key (distance, -row) so ties favour low rows.
    let mut heap: BinaryHeap<std::cmp::Reverse<(OrdF32, std::cmp::Reverse<usize>)>> = BinaryHeap::new();
    for (i, nr) in nearest.iter().enumerate() {
        let key = std::cmp::Reverse((OrdF32(nr.dist), std::cmp::Reverse(i)));
        if heap.len() < empty.len() {
            heap.push(key);
        } else if key < *heap.peek().unwrap() {
            heap.pop();
            heap.push(key);
        }
    }
    let mut far: Vec<(OrdF32, std::cmp::Reverse<usize>)> = heap.into_iter().map(|r| r.0).collect();
    far.sort_by(|a, b| b.cmp(a));
    let dim = x.dim;
    let mut moved = 0;
    for (&j, (_, std::cmp::Reverse(i))) in empty.iter().zip(far) {
        let row = x.row(i);
        let wi = w.map_or(1.0, |w| w[i] as f64);
        let old = nearest[i].label as usize;
        for p in 0..dim {
            stats.sum[old * dim + p] -= wi * row[p] as f64;
            stats.sum[j * dim + p] = wi * row[p] as f64;
        }
        stats.weight[old] -= wi;
        stats.weight[j] = wi;
        stats.count[old] -= 1;
        stats.count[j] = 1;
        moved += 1;
    }
    moved
}

#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
struct OrdF32(f32);
impl Eq for OrdF32 {}
#[allow(clippy::derive_ord_xor_partial_ord)]
impl Ord for OrdF32 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// New centroids: weighted means; a cluster left with no weight keeps its centroid.
/// For the cosine metric the mean is put back on the unit sphere (a zero mean keeps the
/// old centroid).
pub fn centroids_from(stats: &ClusterStats, old: &Centroids, metric: Metric) -> Centroids {
    let dim = stats.dim;
    let mut data = old.data.clone();
    for j in 0..stats.k {
        let wj = stats.weight[j];
        if wj <= 0.0 {
            continue;
        }
        let sum = &stats.sum[j * dim..(j + 1) * dim];
        let scale = match metric {
            Metric::Euclidean => 1.0 / wj,
            Metric::Cosine => {
                let norm = sum.iter().map(|v| v * v).sum::<f64>().sqrt();
                if norm == 0.0 {
                    continue;
                }
                1.0 / norm
            }
        };
        for p in 0..dim {
            data[j * dim + p] = (sum[p] * scale) as f32;
        }
    }
    Centroids::new(data, dim)
}

/// One Hamerly assignment: move the bounds by the centroid shifts, prune the points
/// they settle, recompute the rest with the same kernel Lloyd uses.
fn hamerly_step(
    x: &Matrix,
    old: &Centroids,
    c: &Centroids,
    nearest: &mut [Nearest],
    b: &mut Bounds,
    kernel: Kernel,
) -> (u64, u64) {
    let k = c.k;
    let dim = x.dim;
    let delta: Vec<f64> = (0..k).map(|j| round_up(exact_sq_dist(c.row(j), old.row(j)).sqrt()) as f64).collect();
    let (mut a1, mut d1, mut d2) = (0usize, f64::NEG_INFINITY, f64::NEG_INFINITY);
    for (j, &d) in delta.iter().enumerate() {
        if d > d1 {
            d2 = d1;
            d1 = d;
            a1 = j;
        } else if d > d2 {
            d2 = d;
        }
    }
    let d2 = if k == 1 { 0.0 } else { d2 };
    // s[j]: half the distance from centroid j to its nearest other centroid.
    let s: Vec<f64> = (0..k)
        .into_par_iter()
        .map(|j| {
            let m = (0..k).filter(|&i| i != j).map(|i| exact_sq_dist(c.row(i), c.row(j))).fold(f64::INFINITY, f64::min);
            round_down(0.5 * m.sqrt()) as f64
        })
        .collect();
    let pc = PreparedCentroids::with_kernel(c, kernel);
    let counts: Vec<(u64, u64)> = x
        .data
        .par_chunks(REDUCE_ROWS * dim)
        .zip(nearest.par_chunks_mut(REDUCE_ROWS))
        .zip(b.upper.par_chunks_mut(REDUCE_ROWS).zip(b.lower.par_chunks_mut(REDUCE_ROWS)))
        .map(|((pts, nr), (up, lo))| {
            let mut todo: Vec<usize> = Vec::new();
            for i in 0..nr.len() {
                let a = nr[i].label as usize;
                let u = round_up(up[i] as f64 + delta[a]);
                let l = round_down(lo[i] as f64 - if a == a1 { d2 } else { d1 }).max(0.0);
                lo[i] = l;
                let z = (l as f64).max(s[a]);
                if (u as f64) * (1.0 + PRUNE_MARGIN) < z {
                    up[i] = u;
                    continue;
                }
                let da = exact_sq_dist(&pts[i * dim..(i + 1) * dim], c.row(a));
                let u = round_up(da.sqrt());
                up[i] = u;
                nr[i].dist = da as f32;
                if (u as f64) * (1.0 + PRUNE_MARGIN) < z {
                    continue;
                }
                todo.push(i);
            }
            if todo.is_empty() {
                return (0, 0);
            }
            let mut buf = Vec::with_capacity(todo.len() * dim);
            for &i in &todo {
                buf.extend_from_slice(&pts[i * dim..(i + 1) * dim]);
            }
            let mut out = vec![Nearest::default(); todo.len()];
            let mut scratch = Vec::new();
            assign_block(&buf, &pc, &mut out, &mut scratch);
            let mut changed = 0u64;
            for (&i, o) in todo.iter().zip(&out) {
                if o.label != nr[i].label {
                    changed += 1;
                }
                nr[i] = *o;
                up[i] = round_up((o.dist as f64).sqrt());
                lo[i] = round_down((o.second as f64).sqrt());
            }
            (changed, todo.len() as u64)
        })
        .collect();
    counts.iter().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}
