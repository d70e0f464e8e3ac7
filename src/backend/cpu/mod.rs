//! The CPU backend: rayon over row blocks, distances by ‖x‖² − 2x·c + ‖c‖² with a
//! blocked SGEMM (matrixmultiply), then exact f64 differences for the few centroids
//! that the expansion's rounding cannot separate. It is the reference the GPU path
//! is checked against, so a label never depends on how rows were blocked.

pub mod fused;

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

/// Which distance kernel the CPU backend runs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// The fused AVX2 kernel where the CPU has AVX2 + FMA, else SGEMM; the environment
    /// variable `MICROSEG_CPU_KERNEL=gemm` forces SGEMM (for benchmarks).
    #[default]
    Auto,
    /// Blocked SGEMM (matrixmultiply) then a scan: portable.
    Gemm,
}

impl Kernel {
    fn fused(self) -> bool {
        match self {
            Kernel::Auto => fused::available() && !std::env::var("MICROSEG_CPU_KERNEL").is_ok_and(|v| v == "gemm"),
            Kernel::Gemm => false,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend {
    pub kernel: Kernel,
}

impl CpuBackend {
    pub fn new(kernel: Kernel) -> Self {
        CpuBackend { kernel }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn assign(&self, points: &[f32], centroids: &Centroids, out: &mut [Nearest]) -> Result<()> {
        let prepared = PreparedCentroids::with_kernel(centroids, self.kernel);
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
    /// Present when the fused AVX2 kernel runs on this CPU.
    pub packed: Option<fused::PackedCentroids>,
}

impl<'a> PreparedCentroids<'a> {
    pub fn with_kernel(c: &'a Centroids, kernel: Kernel) -> Self {
        let norms: Vec<f32> = (0..c.k).map(|j| c.row(j).iter().map(|v| v * v).sum()).collect();
        let max_norm = norms.iter().cloned().fold(0.0, f32::max);
        let packed = kernel.fused().then(|| fused::PackedCentroids::new(&c.data, &norms, c.dim));
        PreparedCentroids { c, norms, max_norm, packed }
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

/// Assign a block of rows (any count) sequentially: values v = ‖c‖² − 2x·c for a
/// few rows at a time, then the exact top-2 of each row.
pub fn assign_block(points: &[f32], pc: &PreparedCentroids, out: &mut [Nearest], scratch: &mut Vec<f32>) {
    let (k, dim) = (pc.c.k, pc.c.dim);
    if let Some(pk) = &pc.packed {
        let kp = pk.padded_k();
        if scratch.len() < fused::ROWS * kp {
            scratch.resize(fused::ROWS * kp, 0.0);
        }
        let mut second = [0.0f32; fused::ROWS];
        let mut cand = Vec::with_capacity(16);
        for (p, o) in points.chunks(fused::ROWS * dim).zip(out.chunks_mut(fused::ROWS)) {
            // SAFETY: `packed` exists only when AVX2 and FMA are available; the slices
            // hold o.len() rows of points and o.len() × kp values.
            unsafe { fused::values(p, o.len(), pk, scratch, &mut second) };
            for (r, o) in o.iter_mut().enumerate() {
                let x = &p[r * dim..(r + 1) * dim];
                cand.clear();
                // SAFETY: as above (AVX2 present).
                unsafe {
                    fused::candidates(&scratch[r * kp..r * kp + k], candidate_limit(x, second[r], pc), &mut cand)
                };
                *o = best_of(x, &cand, pc);
            }
        }
        return;
    }
    let rows = rows_per_block(k);
    if scratch.len() < rows * k {
        scratch.resize(rows * k, 0.0);
    }
    for (p, o) in points.chunks(rows * dim).zip(out.chunks_mut(rows)) {
        let m = o.len();
        let vals = &mut scratch[..m * k];
        // vals[m × k] = P[m × dim] · Cᵀ[dim × k], then v = ‖c‖² − 2·dot in place.
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
                vals.as_mut_ptr(),
                k as isize,
                1,
            );
        }
        for row in vals.chunks_exact_mut(k) {
            for (v, n) in row.iter_mut().zip(&pc.norms) {
                *v = n - 2.0 * *v;
            }
        }
        let mut cand = Vec::with_capacity(16);
        for (r, o) in o.iter_mut().enumerate() {
            let (x, v) = (&p[r * dim..(r + 1) * dim], &vals[r * k..(r + 1) * k]);
            let limit = candidate_limit(x, top2_values(v).1, pc);
            cand.clear();
            cand.extend((0..k as u32).filter(|&j| v[j as usize] <= limit));
            *o = best_of(x, &cand, pc);
        }
    }
}

/// The largest v that can still belong to one of a row's two nearest centroids,
/// given the approximate second-smallest v2. E bounds the rounding error of
/// ‖c‖² − 2·x·c against the exact ‖x−c‖² − ‖x‖² (γ_{d+4}, using
/// ‖c‖² + 2‖x‖‖c‖ ≤ ‖x‖² + 2 max‖c‖²); a true top-2 centroid lies within 2E of v2.
#[inline]
fn candidate_limit(x: &[f32], v2: f32, pc: &PreparedCentroids) -> f32 {
    let xn: f32 = x.iter().map(|a| a * a).sum();
    let e = (x.len() as f32 + 4.0) * f32::EPSILON * 2.0 * (xn + 2.0 * pc.max_norm);
    v2 + 2.0 * e
}

/// The exact nearest and second nearest among the candidates (ties: lower index).
#[inline]
fn best_of(x: &[f32], cand: &[u32], pc: &PreparedCentroids) -> Nearest {
    let (mut b1, mut b2) = ((f64::INFINITY, u32::MAX), (f64::INFINITY, u32::MAX));
    for &j in cand {
        let c = (exact_sq_dist(x, pc.c.row(j as usize)), j);
        if c < b1 {
            b2 = b1;
            b1 = c;
        } else if c < b2 {
            b2 = c;
        }
    }
    if pc.c.k == 1 {
        b2.0 = f64::INFINITY;
    }
    Nearest { label: b1.1, dist: b1.0 as f32, second: b2.0 as f32 }
}

/// The second smallest of some values (counting repeats).
#[inline]
pub(crate) fn second_smallest(vals: impl Iterator<Item = f32>) -> f32 {
    let (mut a, mut b) = (f32::INFINITY, f32::INFINITY);
    for v in vals {
        if v < a {
            b = a;
            a = v;
        } else if v < b {
            b = v;
        }
    }
    b
}

#[inline(always)]
fn fmin(a: f32, b: f32) -> f32 {
    if a < b { a } else { b }
}
#[inline(always)]
fn fmax(a: f32, b: f32) -> f32 {
    if a > b { a } else { b }
}

/// The two smallest values, branch-free over LANES lanes.
#[inline]
fn top2_values(v: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { top2_values_avx2(v) };
        }
    }
    top2_values_generic(v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn top2_values_avx2(v: &[f32]) -> (f32, f32) {
    top2_values_generic(v)
}

#[inline(always)]
fn top2_values_generic(vals: &[f32]) -> (f32, f32) {
    let mut m1 = [f32::INFINITY; LANES];
    let mut m2 = [f32::INFINITY; LANES];
    let n = vals.len() / LANES * LANES;
    for c in vals[..n].chunks_exact(LANES) {
        for l in 0..LANES {
            let v = c[l];
            m2[l] = fmin(m2[l], fmax(m1[l], v));
            m1[l] = fmin(m1[l], v);
        }
    }
    for &v in &vals[n..] {
        m2[0] = fmin(m2[0], fmax(m1[0], v));
        m1[0] = fmin(m1[0], v);
    }
    let a = m1.iter().copied().fold(f32::INFINITY, fmin);
    (a, second_smallest(m1.into_iter().chain(m2)))
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
