//! The CPU backend: rayon over row blocks, distances by ‖x‖² − 2x·c + ‖c‖² with a
//! blocked SGEMM (matrixmultiply), then exact f64 differences for the few centroids
//! that the expansion's rounding cannot separate. It is the reference the GPU path
//! is checked against, so a label never depends on how rows were blocked.

pub mod fused;
pub mod gmm;

use rayon::prelude::*;

use super::{Backend, Centroids, ClusterStats, Nearest};
use crate::error::Result;

/// Rows reduced by one task. Fixed (not derived from the thread count) so that the
/// order of floating-point additions, and hence every result, repeats exactly.
pub const REDUCE_ROWS: usize = 65_536;

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

    fn assign_with(&self, points: &[f32], centroids: &Centroids, out: &mut [Nearest], precision: Precision) {
        let prepared = PreparedCentroids::with_kernel(centroids, self.kernel);
        let dim = centroids.dim;
        let rows = rows_per_block(centroids.k);
        debug_assert_eq!(points.len(), out.len() * dim);
        points.par_chunks(rows * dim).zip(out.par_chunks_mut(rows)).for_each_init(Vec::new, |scratch, (p, o)| {
            assign_block_with(p, &prepared, o, scratch, precision, |_, _, _, _| {})
        });
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn assign(&self, points: &[f32], centroids: &Centroids, out: &mut [Nearest]) -> Result<()> {
        self.assign_with(points, centroids, out, Precision::Exact);
        Ok(())
    }

    fn assign_labels(&self, points: &[f32], centroids: &Centroids, out: &mut [Nearest]) -> Result<()> {
        self.assign_with(points, centroids, out, Precision::LabelsOnly);
        Ok(())
    }

    fn reduce(&self, points: &[f32], weights: Option<&[f32]>, nearest: &[Nearest], k: usize) -> Result<ClusterStats> {
        let dim = points.len() / nearest.len().max(1);
        Ok(reduce_cpu(points, dim.max(1), weights, nearest, k))
    }
}

/// Per-centroid terms of the rounding-error bound of v_j = ‖c_j‖² − 2x·c_j computed
/// in f32: |v_j − (‖x−c_j‖² − ‖x‖²)| ≤ e_j = a_j + ‖x‖·b_j with a_j = g‖c_j‖²,
/// b_j = 2g‖c_j‖ and g = (d+4)·ε, which is at least γ_{d+2} (dot product, norm and
/// final subtraction; any summation order, FMA or not) with a factor 2 to spare for
/// the f32 rounding of the bound itself. Per centroid, so that one far-out centroid
/// (a cluster of "whales") does not widen every row's window.
pub struct ErrorTerms {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

impl ErrorTerms {
    fn new(norms: &[f32], dim: usize) -> Self {
        let g = (dim as f32 + 4.0) * f32::EPSILON;
        ErrorTerms { a: norms.iter().map(|n| g * n).collect(), b: norms.iter().map(|n| 2.0 * g * n.sqrt()).collect() }
    }
}

/// Centroids with their squared norms and error terms, computed once per pass.
pub struct PreparedCentroids<'a> {
    pub c: &'a Centroids,
    pub norms: Vec<f32>,
    pub err: ErrorTerms,
    /// Present when the fused AVX2 kernel runs on this CPU.
    pub packed: Option<fused::PackedCentroids>,
}

impl<'a> PreparedCentroids<'a> {
    pub fn with_kernel(c: &'a Centroids, kernel: Kernel) -> Self {
        let norms: Vec<f32> = (0..c.k).map(|j| sq_norm(c.row(j))).collect();
        let err = ErrorTerms::new(&norms, c.dim);
        let packed = kernel.fused().then(|| fused::PackedCentroids::new(&c.data, &norms, &err, c.dim));
        PreparedCentroids { c, norms, err, packed }
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
    assign_block_with(points, pc, out, scratch, Precision::Exact, |_, _, _, _| {});
}

/// ‖x‖² in f32 with 8 partial sums (a single running sum would not vectorise).
#[inline]
fn sq_norm(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let n8 = x.len() / 8 * 8;
    for c in x[..n8].chunks_exact(8) {
        for l in 0..8 {
            acc[l] += c[l] * c[l];
        }
    }
    for v in &x[n8..] {
        acc[0] += v * v;
    }
    acc.iter().sum()
}

/// What an assignment pass must deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Exact labels, and exact (f64, rounded to f32) best and second distances.
    Exact,
    /// Exact labels; distances from the f32 expansion (within the rounding bound). An
    /// exact distance is only computed when two centroids cannot be told apart.
    LabelsOnly,
}

/// `assign_block`, also handing each row's values to `hook(row, v[..k], ‖x‖, nearest)`
/// (bounded variants derive their per-group lower bounds from them).
pub fn assign_block_with<F: FnMut(usize, &[f32], f32, &Nearest)>(
    points: &[f32],
    pc: &PreparedCentroids,
    out: &mut [Nearest],
    scratch: &mut Vec<f32>,
    precision: Precision,
    mut hook: F,
) {
    let (k, dim) = (pc.c.k, pc.c.dim);
    let mut row0 = 0;
    if let Some(pk) = &pc.packed {
        let kp = pk.padded_k();
        if scratch.len() < fused::ROWS * kp {
            scratch.resize(fused::ROWS * kp, 0.0);
        }
        let mut upper = [[0.0f32; 2]; fused::ROWS];
        let mut xnorm = [0.0f32; fused::ROWS];
        let mut cand = Vec::with_capacity(16);
        for (p, o) in points.chunks(fused::ROWS * dim).zip(out.chunks_mut(fused::ROWS)) {
            for (xn, x) in xnorm.iter_mut().zip(p.chunks_exact(dim)) {
                *xn = sq_norm(x).sqrt();
            }
            // SAFETY: `packed` exists only when AVX2 and FMA are available; the slices
            // hold o.len() rows of points and o.len() × kp values.
            unsafe { fused::values(p, o.len(), pk, &xnorm, scratch, &mut upper) };
            for (r, o) in o.iter_mut().enumerate() {
                let x = &p[r * dim..(r + 1) * dim];
                let v = &scratch[r * kp..r * kp + k];
                let limit = if precision == Precision::Exact { upper[r][1] } else { upper[r][0] };
                cand.clear();
                // SAFETY: as above; `row` is this row's output of `values`.
                unsafe { fused::candidates(v, &pc.err.a, &pc.err.b, xnorm[r], limit, &mut cand) };
                *o = decide(x, v, xnorm[r], upper[r], &cand, pc, precision);
                hook(row0 + r, v, xnorm[r], o);
            }
            row0 += o.len();
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
            let xn = sq_norm(x).sqrt();
            let (a, b) = (&pc.err.a, &pc.err.b);
            let up = two_smallest((0..k).map(|j| v[j] + a[j] + xn * b[j]));
            let limit = if precision == Precision::Exact { up[1] } else { up[0] };
            cand.clear();
            cand.extend((0..k as u32).filter(|&j| v[j as usize] <= limit + a[j as usize] + xn * b[j as usize]));
            *o = decide(x, v, xn, up, &cand, pc, precision);
            hook(row0 + r, v, xn, o);
        }
        row0 += m;
    }
}

/// The row's result from its candidates: with one candidate for the nearest (labels
/// only) the expansion's values stand; otherwise exact distances decide.
#[inline]
fn decide(
    x: &[f32],
    v: &[f32],
    xn: f32,
    upper: [f32; 2],
    cand: &[u32],
    pc: &PreparedCentroids,
    precision: Precision,
) -> Nearest {
    if precision == Precision::LabelsOnly && cand.len() == 1 {
        let j = cand[0];
        let xn2 = xn * xn;
        return Nearest { label: j, dist: (v[j as usize] + xn2).max(0.0), second: (upper[1] + xn2).max(0.0) };
    }
    best_of(x, cand, pc)
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

/// The two smallest of some values (counting repeats).
#[inline]
pub(crate) fn two_smallest(vals: impl Iterator<Item = f32>) -> [f32; 2] {
    let (mut a, mut b) = (f32::INFINITY, f32::INFINITY);
    for v in vals {
        if v < a {
            b = a;
            a = v;
        } else if v < b {
            b = v;
        }
    }
    [a, b]
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
