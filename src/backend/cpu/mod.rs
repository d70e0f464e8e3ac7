//! The CPU backend: rayon over row blocks, distances by ‖x‖² − 2x·c + ‖c‖² with a
//! blocked SGEMM (matrixmultiply), then exact f64 differences for the few centroids
//! that the expansion's rounding cannot separate. It is the reference the GPU path
//! is checked against, so a label never depends on how rows were blocked.

use rayon::prelude::*;

use super::{Backend, Centroids, ClusterStats, Nearest};
use crate::error::Result;

/// Rows reduced by one task. Fixed (not derived from the thread count) so that the
/// order of floating-point additions, and hence every result, repeats exactly.
pub const REDUCE_ROWS: usize = 65_536;

/// Lanes of the vectorised top-2 scan.
const LANES: usize = 8;

/// Rows per GEMM block: keep the block's k dot products (rows × k × 4 B) near 128 KiB
/// so they stay in L2 while they are scanned.
pub fn rows_per_block(k: usize) -> usize {
    (32_768 / k.max(1)).clamp(16, 256)
}

#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn assign(&self, points: &[f32], centroids: &Centroids, out: &mut [Nearest]) -> Result<()> {
        let prepared = PreparedCentroids::new(centroids);
        let dim = centroids.dim;
        let rows = rows_per_block(centroids.k);
        debug_assert_eq!(points.len(), out.len() * dim);
        points
            .par_chunks(rows * dim)
            .zip(out.par_chunks_mut(rows))
            .for_each_init(Vec::new, |scratch, (p, o)| assign_block(p, &prepared, o, scratch));
        Ok(())
    }

    fn reduce(&self, points: &[f32], weights: Option<&[f32]>, nearest: &[Nearest], k: usize) -> Result<ClusterStats> {
        let dim = points.len() / nearest.len().max(1);
        Ok(reduce_cpu(points, dim.max(1), weights, nearest, k))
    }
}

/// Centroids with their squared norms, computed once per pass.
pub struct PreparedCentroids<'a> {
    pub c: &'a Centroids,
    pub norms: Vec<f32>,
    pub max_norm: f32,
}

impl<'a> PreparedCentroids<'a> {
    pub fn new(c: &'a Centroids) -> Self {
        let norms: Vec<f32> = (0..c.k).map(|j| c.row(j).iter().map(|v| v * v).sum()).collect();
        let max_norm = norms.iter().cloned().fold(0.0, f32::max);
        PreparedCentroids { c, norms, max_norm }
    }
}

/// Squared Euclidean distance by differences, accumulated in f64: the exact
/// tie-breaker every assignment path (Lloyd, Hamerly, GPU checks) agrees on.
#[inline]
pub fn exact_sq_dist(x: &[f32], c: &[f32]) -> f64 {
    let mut acc = [0.0f64; 4];
    let n4 = x.len() / 4 * 4;
    for (xc, cc) in x[..n4].chunks_exact(4).zip(c[..n4].chunks_exact(4)) {
        for l in 0..4 {
            let d = xc[l] as f64 - cc[l] as f64;
            acc[l] += d * d;
        }
    }
    for (a, b) in x[n4..].iter().zip(&c[n4..]) {
        let d = *a as f64 - *b as f64;
        acc[0] += d * d;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// Assign one block of rows (any count; sub-blocked for the GEMM) sequentially.
pub fn assign_block(points: &[f32], pc: &PreparedCentroids, out: &mut [Nearest], scratch: &mut Vec<f32>) {
    let (k, dim) = (pc.c.k, pc.c.dim);
    let rows = rows_per_block(k);
    if scratch.len() < rows * k {
        scratch.resize(rows * k, 0.0);
    }
    for (p, o) in points.chunks(rows * dim).zip(out.chunks_mut(rows)) {
        let m = o.len();
        let dots = &mut scratch[..m * k];
        // dots[m × k] = P[m × dim] · Cᵀ[dim × k]
        unsafe {
            matrixmultiply::sgemm(
                m,
                dim,
                k,
                1.0,
                p.as_ptr(),
                dim as isize,
                1,
                pc.c.data.as_ptr(),
                1,
                dim as isize,
                0.0,
                dots.as_mut_ptr(),
                k as isize,
                1,
            );
        }
        for (r, o) in o.iter_mut().enumerate() {
            let x = &p[r * dim..(r + 1) * dim];
            *o = nearest_from_dots(x, &dots[r * k..(r + 1) * k], pc);
        }
    }
}

/// From one row's dot products, the exact top-2 (see the module comment).
#[inline]
fn nearest_from_dots(x: &[f32], dots: &[f32], pc: &PreparedCentroids) -> Nearest {
    let k = dots.len();
    let (_, v2) = top2_values(dots, &pc.norms);
    if k == 1 {
        return Nearest { label: 0, dist: exact_sq_dist(x, pc.c.row(0)) as f32, second: f32::INFINITY };
    }
    // Bound on the rounding error of cn − 2·dot against the exact ‖x−c‖² − ‖x‖²
    // (γ_{d+4} with ‖c‖² + 2‖x‖‖c‖ ≤ ‖x‖² + 2 max‖c‖²); any centroid whose exact
    // distance can be among the two smallest lies within 2E of the approximate second.
    let xn: f32 = x.iter().map(|v| v * v).sum();
    let e = (x.len() as f32 + 4.0) * f32::EPSILON * 2.0 * (xn + 2.0 * pc.max_norm);
    let limit = v2 + 2.0 * e;
    let (mut b1, mut b2) = ((f64::INFINITY, u32::MAX), (f64::INFINITY, u32::MAX));
    for j in 0..k {
        let v = pc.norms[j] - 2.0 * dots[j];
        if v <= limit {
            let d = exact_sq_dist(x, pc.c.row(j));
            let cand = (d, j as u32);
            if cand < b1 {
                b2 = b1;
                b1 = cand;
            } else if cand < b2 {
                b2 = cand;
            }
        }
    }
    Nearest { label: b1.1, dist: b1.0 as f32, second: b2.0 as f32 }
}

#[inline(always)]
fn fmin(a: f32, b: f32) -> f32 {
    if a < b { a } else { b }
}
#[inline(always)]
fn fmax(a: f32, b: f32) -> f32 {
    if a > b { a } else { b }
}

/// The two smallest values of cn[j] − 2·dots[j], branch-free over LANES lanes.
#[inline]
fn top2_values(dots: &[f32], cn: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { top2_values_avx2(dots, cn) };
        }
    }
    top2_values_generic(dots, cn)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn top2_values_avx2(dots: &[f32], cn: &[f32]) -> (f32, f32) {
    top2_values_generic(dots, cn)
}

#[inline(always)]
fn top2_values_generic(dots: &[f32], cn: &[f32]) -> (f32, f32) {
    let mut m1 = [f32::INFINITY; LANES];
    let mut m2 = [f32::INFINITY; LANES];
    let n = dots.len() / LANES * LANES;
    for (dc, cc) in dots[..n].chunks_exact(LANES).zip(cn[..n].chunks_exact(LANES)) {
        for l in 0..LANES {
            let v = cc[l] - 2.0 * dc[l];
            m2[l] = fmin(m2[l], fmax(m1[l], v));
            m1[l] = fmin(m1[l], v);
        }
    }
    for (d, c) in dots[n..].iter().zip(&cn[n..]) {
        let v = c - 2.0 * d;
        m2[0] = fmin(m2[0], fmax(m1[0], v));
        m1[0] = fmin(m1[0], v);
    }
    let (mut a, mut b) = (f32::INFINITY, f32::INFINITY);
    for v in m1.into_iter().chain(m2) {
        if v < a {
            b = a;
            a = v;
        } else if v < b {
            b = v;
        }
    }
    (a, b)
}

/// Per-centroid statistics over fixed chunks of REDUCE_ROWS rows, merged in chunk
/// order (not by a rayon reduction, whose tree depends on scheduling).
pub fn reduce_cpu(points: &[f32], dim: usize, weights: Option<&[f32]>, nearest: &[Nearest], k: usize) -> ClusterStats {
    let partials: Vec<ClusterStats> = points
        .par_chunks(REDUCE_ROWS * dim)
        .zip(nearest.par_chunks(REDUCE_ROWS))
        .enumerate()
        .map(|(ci, (p, nr))| {
            let w = weights.map(|w| &w[ci * REDUCE_ROWS..ci * REDUCE_ROWS + nr.len()]);
            reduce_chunk(p, dim, w, nr, k)
        })
        .collect();
    let mut total = ClusterStats::zeros(k, dim);
    for p in &partials {
        total.merge(p);
    }
    total
}

fn reduce_chunk(points: &[f32], dim: usize, weights: Option<&[f32]>, nearest: &[Nearest], k: usize) -> ClusterStats {
    let mut s = ClusterStats::zeros(k, dim);
    for (i, (row, nr)) in points.chunks_exact(dim).zip(nearest).enumerate() {
        let l = nr.label as usize;
        let w = weights.map_or(1.0, |w| w[i] as f64);
        s.count[l] += 1;
        s.weight[l] += w;
        s.sse[l] += w * nr.dist as f64;
        let acc = &mut s.sum[l * dim..(l + 1) * dim];
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += w * v as f64;
        }
    }
    s
}
