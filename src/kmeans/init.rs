//! Initial centroids: greedy k-means++, k-means‖ and random, each on a seeded sample
//! of rows when the data is large (as FAISS samples), so initialisation never
//! dominates a fit of 10⁷ rows. Every sum runs in a fixed order: same seed, same start.

use rand::RngExt;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::backend::Centroids;
use crate::backend::cpu::exact_sq_dist;
use crate::features::Matrix;

const CHUNK: usize = 4096;

/// A seeded RNG for restart `run` of a fit.
pub fn rng_for(seed: u64, run: usize) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(run as u64);
    r
}

/// The rows initialisation works on: all of them, or a sorted seeded sample.
pub fn sample_rows(x: &Matrix, w: Option<&[f32]>, rows: usize, rng: &mut ChaCha8Rng) -> (Matrix, Option<Vec<f32>>) {
    let n = x.n();
    if rows >= n {
        return (x.clone(), w.map(|w| w.to_vec()));
    }
    let mut idx = rand::seq::index::sample(rng, n, rows).into_vec();
    idx.sort_unstable();
    let mut data = Vec::with_capacity(rows * x.dim);
    for &i in &idx {
        data.extend_from_slice(x.row(i));
    }
    (Matrix::new(data, x.dim), w.map(|w| idx.iter().map(|&i| w[i]).collect()))
}

/// Sum in fixed chunks (deterministic whatever the thread count).
fn fixed_sum(v: &[f64]) -> f64 {
    let parts: Vec<f64> = v.par_chunks(CHUNK).map(|c| c.iter().sum::<f64>()).collect();
    parts.iter().sum()
}

/// Index i of the first cumulative weight ≥ target (numpy searchsorted, side left).
fn search_cumulative(cum: &[f64], target: f64) -> usize {
    cum.partition_point(|&c| c < target).min(cum.len() - 1)
}

fn weighted_pick(w: Option<&[f32]>, n: usize, rng: &mut ChaCha8Rng) -> usize {
    match w {
        None => rng.random_range(0..n),
        Some(w) => {
            let mut cum = Vec::with_capacity(n);
            let mut acc = 0.0f64;
            for &v in w {
                acc += v as f64;
                cum.push(acc);
            }
            search_cumulative(&cum, rng.random::<f64>() * acc)
        }
    }
}

/// Greedy k-means++ (Arthur & Vassilvitskii 2007, with scikit-learn's 2 + ln k local trials).
pub fn kmeans_plus_plus(x: &Matrix, w: Option<&[f32]>, k: usize, rng: &mut ChaCha8Rng) -> Centroids {
    let n = x.n();
    let trials = 2 + (k as f64).ln() as usize;
    let weight = |i: usize| w.map_or(1.0, |w| w[i] as f64);
    let mut centers: Vec<f32> = Vec::with_capacity(k * x.dim);
    let first = weighted_pick(w, n, rng);
    centers.extend_from_slice(x.row(first));
    let mut closest: Vec<f64> = (0..n).into_par_iter().map(|i| exact_sq_dist(x.row(i), x.row(first))).collect();
    let mut pot = fixed_sum(&closest.iter().enumerate().map(|(i, d)| d * weight(i)).collect::<Vec<_>>());
    for _ in 1..k {
        let mut cum = Vec::with_capacity(n);
        let mut acc = 0.0f64;
        for (i, d) in closest.iter().enumerate() {
            acc += d * weight(i);
            cum.push(acc);
        }
        let candidates: Vec<usize> = (0..trials).map(|_| search_cumulative(&cum, rng.random::<f64>() * pot)).collect();
        let mut best: Option<(f64, usize, Vec<f64>)> = None;
        for &c in &candidates {
            let cand_row = x.row(c);
            let d: Vec<f64> =
                (0..n).into_par_iter().map(|i| exact_sq_dist(x.row(i), cand_row).min(closest[i])).collect();
            let p = fixed_sum(&d.iter().enumerate().map(|(i, v)| v * weight(i)).collect::<Vec<_>>());
            if best.as_ref().is_none_or(|b| p < b.0) {
                best = Some((p, c, d));
            }
        }
        let (p, c, d) = best.unwrap();
        pot = p;
        closest = d;
        centers.extend_from_slice(x.row(c));
    }
    Centroids::new(centers, x.dim)
}

/// k distinct rows chosen uniformly at random.
pub fn random_rows(x: &Matrix, k: usize, rng: &mut ChaCha8Rng) -> Centroids {
    let mut idx = rand::seq::index::sample(rng, x.n(), k).into_vec();
    idx.sort_unstable();
    let mut data = Vec::with_capacity(k * x.dim);
    for i in idx {
        data.extend_from_slice(x.row(i));
    }
    Centroids::new(data, x.dim)
}

/// k-means‖: 5 rounds, each keeping every row with probability min(1, ℓ·w·d²/φ) with
/// ℓ = 2k, then the candidates weighted by the rows nearest to them and reduced to k
/// by greedy k-means++.
pub fn kmeans_parallel(x: &Matrix, w: Option<&[f32]>, k: usize, rng: &mut ChaCha8Rng) -> Centroids {
    let n = x.n();
    let weight = |i: usize| w.map_or(1.0, |w| w[i] as f64);
    let ell = 2.0 * k as f64;
    let first = weighted_pick(w, n, rng);
    let mut cand: Vec<usize> = vec![first];
    let mut closest: Vec<f64> = (0..n).into_par_iter().map(|i| exact_sq_dist(x.row(i), x.row(first))).collect();
    let mut owner: Vec<u32> = vec![0; n];
    for _round in 0..5 {
        let phi = fixed_sum(&closest.iter().enumerate().map(|(i, d)| d * weight(i)).collect::<Vec<_>>());
        if phi <= 0.0 {
            break;
        }
        let u: Vec<f64> = (0..n).map(|_| rng.random::<f64>()).collect();
        let new: Vec<usize> = (0..n).filter(|&i| u[i] < ell * weight(i) * closest[i] / phi).collect();
        if new.is_empty() {
            continue;
        }
        let base = cand.len();
        cand.extend_from_slice(&new);
        let rows: Vec<&[f32]> = new.iter().map(|&i| x.row(i)).collect();
        closest.par_iter_mut().zip(owner.par_iter_mut()).enumerate().for_each(|(i, (d, o))| {
            for (j, r) in rows.iter().enumerate() {
                let e = exact_sq_dist(x.row(i), r);
                if e < *d {
                    *d = e;
                    *o = (base + j) as u32;
                }
            }
        });
    }
    let mut cw = vec![0.0f32; cand.len()];
    for (i, &o) in owner.iter().enumerate() {
        cw[o as usize] += weight(i) as f32;
    }
    let mut data = Vec::with_capacity(cand.len() * x.dim);
    for &c in &cand {
        data.extend_from_slice(x.row(c));
    }
    let cm = Matrix::new(data, x.dim);
    if cand.len() <= k {
        // Too few candidates (tiny or degenerate data): top up with random rows.
        let mut out = cm.data.clone();
        let extra = random_rows(x, k, rng);
        let mut j = 0;
        while out.len() < k * x.dim {
            out.extend_from_slice(extra.row(j));
            j += 1;
        }
        return Centroids::new(out, x.dim);
    }
    kmeans_plus_plus(&cm, Some(&cw), k, rng)
}
