//! The CPU backend: rayon over row blocks, distances by ‖x‖² − 2x·c + ‖c‖² with a
//! blocked SGEMM (matrixmultiply), then exact f64 differences for the few centroids
//! that the expansion's rounding cannot separate. It is the reference the GPU path
//! is checked against, so a label never depends on how rows were blocked.

#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod fused;
pub mod gmm;
#[cfg(target_arch = "x86_64")]
pub mod quant;

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

/// Which distance kernel the CPU backend runs. Every kernel gives the same labels,
/// distances and models bit for bit (each decides in f64 whatever its fast arithmetic
/// cannot); they differ only in speed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// The fastest this CPU has for the shape (`Kernel::resolve`); the environment
    /// variable `MICROSEG_CPU_KERNEL` (one of `Kernel::NAMES`) forces one (benchmarks).
    #[default]
    Auto,
    /// Blocked SGEMM (matrixmultiply) then a scan: portable.
    Gemm,
    /// The fused f32 kernel with AVX2 + FMA (`fused`).
    F32Avx2,
    /// The fused f32 kernel with AVX-512 (16 lanes, `fused::values`, `fused::one_panel`).
    F32Avx512,
    /// 8-bit codes with a proven bound, AVX2 (`quant`).
    Int8Avx2,
    /// 8-bit codes with a proven bound, AVX-512 VNNI (`quant`).
    Int8Vnni,
    /// `Int8Vnni` with the integer products of Lloyd's iterations on AMX tiles
    /// (`amx`, `quant::near_amx`); rows of at most 64 features.
    Int8Amx,
}

impl Kernel {
    /// The names `--kernel` and `MICROSEG_CPU_KERNEL` take.
    pub const NAMES: [&'static str; 7] =
        ["auto", "gemm", "f32-avx2", "f32-avx512", "int8-avx2", "int8-vnni", "int8-amx"];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Auto => "auto",
            Kernel::Gemm => "gemm",
            Kernel::F32Avx2 => "f32-avx2",
            Kernel::F32Avx512 => "f32-avx512",
            Kernel::Int8Avx2 => "int8-avx2",
            Kernel::Int8Vnni => "int8-vnni",
            Kernel::Int8Amx => "int8-amx",
        }
    }

    pub fn parse(name: &str) -> Option<Kernel> {
        [
            Kernel::Auto,
            Kernel::Gemm,
            Kernel::F32Avx2,
            Kernel::F32Avx512,
            Kernel::Int8Avx2,
            Kernel::Int8Vnni,
            Kernel::Int8Amx,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }

    /// Whether the running CPU can run this kernel.
    pub fn supported(self) -> bool {
        match self {
            Kernel::Auto | Kernel::Gemm => true,
            Kernel::F32Avx2 => fused::available(),
            Kernel::F32Avx512 => fused::available512(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Int8Avx2 => crate::similarity::int8::Isa::Avx2.supported(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Int8Vnni => crate::similarity::int8::Isa::Avx512Vnni.supported(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Int8Amx => amx::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Int8Avx2 | Kernel::Int8Vnni | Kernel::Int8Amx => false,
        }
    }

    /// The concrete kernels this CPU runs (for tests and benchmarks).
    pub fn available() -> Vec<Kernel> {
        [Kernel::Gemm, Kernel::F32Avx2, Kernel::F32Avx512, Kernel::Int8Avx2, Kernel::Int8Vnni, Kernel::Int8Amx]
            .into_iter()
            .filter(|k| k.supported())
            .collect()
    }

    /// The kernel a pass over k centroids of `dim` features runs. `Auto` takes
    /// `MICROSEG_CPU_KERNEL` when it names a kernel this CPU has, else the fastest
    /// this CPU has: for k ≤ 16 and d ≤ 64 the fused f32 kernel (16 lanes, else 2 × 8),
    /// whose one panel of centroids decides each row in registers (1.2–2.6× the 8-bit
    /// codes' speed at every such shape measured); otherwise 8-bit codes with VNNI, else with AVX2 (they
    /// beat the fused f32 kernel at every larger k and d measured: docs/benchmarks.md),
    /// else SGEMM. A named kernel the CPU lacks, or codes on rows wider than
    /// `quant::MAX_DIM`, fall back to the same choice.
    pub fn resolve(self, k: usize, dim: usize) -> Kernel {
        let fits = |kr: Kernel| {
            kr.supported()
                && (!kr.is_quantised() || dim <= MAX_QUANT_DIM)
                && (kr != Kernel::Int8Amx || (1..=MAX_AMX_CODE_BYTES).contains(&dim.next_multiple_of(4)))
        };
        match self {
            Kernel::Auto => {
                if let Some(kr) = std::env::var("MICROSEG_CPU_KERNEL").ok().and_then(|v| Kernel::parse(&v))
                    && kr != Kernel::Auto
                    && fits(kr)
                {
                    return kr;
                }
                if k <= fused::PANEL && dim <= ONE_PANEL_MAX_DIM {
                    if let Some(kr) = [Kernel::F32Avx512, Kernel::F32Avx2].into_iter().find(|kr| fits(*kr)) {
                        return kr;
                    }
                }
                [Kernel::Int8Vnni, Kernel::Int8Avx2, Kernel::F32Avx2]
                    .into_iter()
                    .find(|kr| fits(*kr))
                    .unwrap_or(Kernel::Gemm)
            }
            kr if fits(kr) => kr,
            _ => Kernel::Auto.resolve(k, dim),
        }
    }

    /// The instructions a kernel needs, in words.
    pub fn needs(self) -> &'static str {
        match self {
            Kernel::Auto | Kernel::Gemm => "none",
            Kernel::F32Avx2 | Kernel::Int8Avx2 => "AVX2 and FMA",
            Kernel::F32Avx512 => "AVX-512 F",
            Kernel::Int8Vnni => "AVX-512 F, BW and VNNI",
            Kernel::Int8Amx => "AVX-512 F, BW and VNNI, AMX-TILE and AMX-INT8 (and the OS's permission)",
        }
    }

    /// Whether the kernel works on 8-bit codes.
    pub fn is_quantised(self) -> bool {
        matches!(self, Kernel::Int8Avx2 | Kernel::Int8Vnni | Kernel::Int8Amx)
    }

    /// Whether a whole Lloyd pass of this (resolved) kernel over k centroids costs less
    /// than the bounds' bookkeeping of Hamerly or pruning: with 8-bit codes, and with
    /// the fused f32 kernel when one panel holds every centroid (measured at k = 16:
    /// Lloyd 10–13 ms per iteration, Hamerly 35–57, pruned 53–68; docs/benchmarks.md).
    pub fn whole_pass_pays(self, k: usize) -> bool {
        self.is_quantised() || (matches!(self, Kernel::F32Avx512 | Kernel::F32Avx2) && k <= fused::PANEL)
    }
}

/// The widest rows `auto` gives the one-panel f32 kernel (measured to d = 64).
const ONE_PANEL_MAX_DIM: usize = 64;

#[cfg(target_arch = "x86_64")]
const MAX_QUANT_DIM: usize = quant::MAX_DIM;
#[cfg(target_arch = "x86_64")]
const MAX_AMX_CODE_BYTES: usize = amx::MAX_CODE_BYTES;
#[cfg(not(target_arch = "x86_64"))]
const MAX_AMX_CODE_BYTES: usize = 0;
#[cfg(not(target_arch = "x86_64"))]
const MAX_QUANT_DIM: usize = 0;

#[derive(Debug, Default)]
pub struct CpuBackend {
    pub kernel: Kernel,
    /// The matrix `retain` announced, its 8-bit codes once a quantised pass needs them,
    /// and its rows' norms once an f32 fused pass does.
    retained: std::sync::Mutex<Retained>,
}

#[derive(Default)]
struct Retained {
    /// (address, length, dim) of the retained matrix.
    key: Option<(usize, usize, usize)>,
    /// `retain` calls of that matrix not yet released (they nest).
    depth: usize,
    #[cfg(target_arch = "x86_64")]
    codes: Option<std::sync::Arc<quant::RowCodes>>,
    /// Its rows' norms ‖x‖ once an f32 fused pass needs them.
    norms: Option<std::sync::Arc<Vec<f32>>>,
}

impl std::fmt::Debug for Retained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retained").field("key", &self.key).finish_non_exhaustive()
    }
}

impl Clone for CpuBackend {
    fn clone(&self) -> Self {
        CpuBackend::new(self.kernel)
    }
}

impl CpuBackend {
    pub fn new(kernel: Kernel) -> Self {
        CpuBackend { kernel, retained: Default::default() }
    }

    /// The 8-bit codes of `points` for `isa` when `points` is the matrix `retain`
    /// announced: coded at the first call, then kept until `release` (rows are coded
    /// once per fit, not once per iteration). `None` for any other slice.
    #[cfg(target_arch = "x86_64")]
    pub fn row_codes(
        &self,
        points: &[f32],
        dim: usize,
        isa: crate::similarity::int8::Isa,
    ) -> Option<std::sync::Arc<quant::RowCodes>> {
        let mut g = self.retained.lock().unwrap_or_else(|e| e.into_inner());
        if g.key != Some((points.as_ptr() as usize, points.len(), dim)) {
            return None;
        }
        if let Some(c) = &g.codes
            && c.isa == isa
        {
            return Some(c.clone());
        }
        let c = std::sync::Arc::new(quant::RowCodes::code_all(isa, points, dim));
        g.codes = Some(c.clone());
        Some(c)
    }

    /// The norms ‖x‖ of the rows of `points` when it is the matrix `retain` announced:
    /// computed at the first call, then kept until `release`. `None` for any other slice.
    pub fn row_norms(&self, points: &[f32], dim: usize) -> Option<std::sync::Arc<Vec<f32>>> {
        let mut g = self.retained.lock().unwrap_or_else(|e| e.into_inner());
        if g.key != Some((points.as_ptr() as usize, points.len(), dim)) {
            return None;
        }
        if let Some(n) = &g.norms {
            return Some(n.clone());
        }
        let n = std::sync::Arc::new(points.par_chunks(dim).map(|x| sq_norm(x).sqrt()).collect::<Vec<f32>>());
        g.norms = Some(n.clone());
        Some(n)
    }

    fn assign_with(&self, points: &[f32], centroids: &Centroids, out: &mut [Nearest], precision: Precision) {
        let prepared = PreparedCentroids::with_kernel(centroids, self.kernel);
        let dim = centroids.dim;
        let rows = rows_per_block(centroids.k);
        debug_assert_eq!(points.len(), out.len() * dim);
        #[cfg(target_arch = "x86_64")]
        let codes = prepared.quant.as_ref().and_then(|qc| self.row_codes(points, dim, qc.isa));
        let norms = prepared.packed.as_ref().and_then(|_| self.row_norms(points, dim));
        points.par_chunks(rows * dim).zip(out.par_chunks_mut(rows)).enumerate().for_each_init(
            Vec::new,
            |scratch, (ci, (p, o))| {
                #[cfg(target_arch = "x86_64")]
                let view = codes.as_ref().map(|c| c.view().slice(ci * rows, o.len()));
                #[cfg(not(target_arch = "x86_64"))]
                let view = {
                    let _ = ci;
                    None
                };
                let n = norms.as_ref().map(|n| &n[ci * rows..ci * rows + o.len()]);
                assign_block_with(p, &prepared, o, scratch, precision, view, n);
            },
        );
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
        // The labels `out` holds bound the rows, as in `assign_reduce`: the same
        // distances whichever of the two a Lloyd iteration takes (by the rows' count).
        self.assign_with(points, centroids, out, Precision::NearPrior);
        Ok(())
    }

    fn reduce(&self, points: &[f32], weights: Option<&[f32]>, nearest: &[Nearest], k: usize) -> Result<ClusterStats> {
        let dim = points.len() / nearest.len().max(1);
        Ok(reduce_cpu(points, dim.max(1), weights, nearest, k))
    }

    fn assign_reduce(
        &self,
        points: &[f32],
        weights: Option<&[f32]>,
        centroids: &Centroids,
        nearest: &mut [Nearest],
    ) -> Result<(ClusterStats, u64)> {
        let (k, dim) = (centroids.k, centroids.dim);
        let n = nearest.len();
        // Fused by chunks of REDUCE_ROWS (the reduction's own, so the sums are
        // `reduce`'s bit for bit); too few chunks would leave threads idle.
        if n < 2 * REDUCE_ROWS * rayon::current_num_threads() {
            return super::assign_then_reduce(self, points, weights, centroids, nearest);
        }
        let prepared = PreparedCentroids::with_kernel(centroids, self.kernel);
        #[cfg(target_arch = "x86_64")]
        let codes = prepared.quant.as_ref().and_then(|qc| self.row_codes(points, dim, qc.isa));
        let norms = prepared.packed.as_ref().and_then(|_| self.row_norms(points, dim));
        let rows = rows_per_block(k);
        let partials: Vec<(ClusterStats, u64)> = points
            .par_chunks(REDUCE_ROWS * dim)
            .zip(nearest.par_chunks_mut(REDUCE_ROWS))
            .enumerate()
            .map(|(ci, (p, nr))| {
                let w = weights.map(|w| &w[ci * REDUCE_ROWS..ci * REDUCE_ROWS + nr.len()]);
                let mut stats = ClusterStats::zeros(k, dim);
                let mut scratch = Vec::new();
                let mut changed = 0u64;
                for (bi, (pb, nb)) in p.chunks(rows * dim).zip(nr.chunks_mut(rows)).enumerate() {
                    #[cfg(target_arch = "x86_64")]
                    let view = codes.as_ref().map(|c| c.view().slice(ci * REDUCE_ROWS + bi * rows, nb.len()));
                    #[cfg(not(target_arch = "x86_64"))]
                    let view = None;
                    let at = ci * REDUCE_ROWS + bi * rows;
                    let n = norms.as_ref().map(|n| &n[at..at + nb.len()]);
                    changed += assign_block_with(pb, &prepared, nb, &mut scratch, Precision::NearPrior, view, n);
                    let wb = w.map(|w| &w[bi * rows..bi * rows + nb.len()]);
                    accumulate(&mut stats, pb, wb, nb);
                }
                (stats, changed)
            })
            .collect();
        let mut total = ClusterStats::zeros(k, dim);
        let mut changed = 0;
        for (p, c) in &partials {
            total.merge(p);
            changed += c;
        }
        Ok((total, changed))
    }

    fn retain(&self, points: &[f32], dim: usize) -> Result<()> {
        let mut g = self.retained.lock().unwrap_or_else(|e| e.into_inner());
        let key = Some((points.as_ptr() as usize, points.len(), dim));
        if g.key == key {
            g.depth += 1;
        } else {
            *g = Retained { key, depth: 1, ..Default::default() };
        }
        Ok(())
    }

    fn release(&self) {
        let mut g = self.retained.lock().unwrap_or_else(|e| e.into_inner());
        g.depth = g.depth.saturating_sub(1);
        if g.depth == 0 {
            *g = Retained::default();
        }
    }

    fn as_cpu(&self) -> Option<&CpuBackend> {
        Some(self)
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
    /// Present when the fused AVX2 kernel runs.
    pub packed: Option<fused::PackedCentroids>,
    /// Present when the quantised kernel runs.
    #[cfg(target_arch = "x86_64")]
    pub quant: Option<quant::QuantCentroids>,
    /// The kernel that runs.
    pub kernel: Kernel,
}

impl<'a> PreparedCentroids<'a> {
    pub fn with_kernel(c: &'a Centroids, kernel: Kernel) -> Self {
        let kernel = kernel.resolve(c.k, c.dim);
        let norms: Vec<f32> = (0..c.k).map(|j| sq_norm(c.row(j))).collect();
        let err = ErrorTerms::new(&norms, c.dim);
        let packed = matches!(kernel, Kernel::F32Avx2 | Kernel::F32Avx512)
            .then(|| fused::PackedCentroids::new(&c.data, &norms, &err, c.dim));
        #[cfg(target_arch = "x86_64")]
        let quant = {
            use crate::similarity::int8::Isa;
            let isa = match kernel {
                Kernel::Int8Vnni | Kernel::Int8Amx => Some(Isa::Avx512Vnni),
                Kernel::Int8Avx2 => Some(Isa::Avx2),
                _ => None,
            };
            isa.map(|isa| {
                let mut qc = quant::QuantCentroids::new(isa, &c.data, &norms, c.dim);
                qc.amx = kernel == Kernel::Int8Amx;
                qc
            })
        };
        PreparedCentroids {
            c,
            norms,
            err,
            packed,
            #[cfg(target_arch = "x86_64")]
            quant,
            kernel,
        }
    }
}

/// Squared Euclidean distance by differences, accumulated in f64: the exact
/// tie-breaker every assignment path (Lloyd, Hamerly, GPU checks) agrees on. Lane l of
/// four partial sums takes the features i ≡ l (mod 4) in order, the tail goes to lane 0,
/// and the lanes are added as (0 + 1) + (2 + 3): every evaluation order below follows
/// that, with separate multiplies and adds (no FMA), so the bits never depend on the CPU.
#[inline]
pub fn exact_sq_dist(x: &[f32], c: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if x.len() >= 8 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present.
        return unsafe { exact_sq_dist_avx2(x, c) };
    }
    exact_sq_dist_portable(x, c)
}

#[inline]
fn exact_sq_dist_portable(x: &[f32], c: &[f32]) -> f64 {
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

/// `exact_sq_dist` with the four lanes in one AVX2 register (the same operations).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exact_sq_dist_avx2(x: &[f32], c: &[f32]) -> f64 {
    use std::arch::x86_64::*;
    debug_assert_eq!(x.len(), c.len());
    let n4 = x.len() / 4 * 4;
    let mut acc = _mm256_setzero_pd();
    let mut i = 0;
    while i < n4 {
        // SAFETY: i + 4 ≤ n4 ≤ len of both.
        let (a, b) = unsafe {
            (_mm256_cvtps_pd(_mm_loadu_ps(x.as_ptr().add(i))), _mm256_cvtps_pd(_mm_loadu_ps(c.as_ptr().add(i))))
        };
        let d = _mm256_sub_pd(a, b);
        acc = _mm256_add_pd(acc, _mm256_mul_pd(d, d));
        i += 4;
    }
    let mut l = [0.0f64; 4];
    // SAFETY: four f64 lanes into four f64s.
    unsafe { _mm256_storeu_pd(l.as_mut_ptr(), acc) };
    for (a, b) in x[n4..].iter().zip(&c[n4..]) {
        let d = *a as f64 - *b as f64;
        l[0] += d * d;
    }
    (l[0] + l[1]) + (l[2] + l[3])
}

/// Assign a block of rows (any count) sequentially: values v = ‖c‖² − 2x·c for a
/// few rows at a time, then the exact top-2 of each row.
pub fn assign_block(points: &[f32], pc: &PreparedCentroids, out: &mut [Nearest], scratch: &mut Vec<f32>) {
    assign_block_with(points, pc, out, scratch, Precision::Exact, None, None);
}

/// The 8-bit codes of the rows an assignment is given, where they were coded ahead
/// (`CpuBackend::row_codes`); `None` codes them a tile at a time.
#[cfg(target_arch = "x86_64")]
pub type RowCodesView<'a> = quant::RowView<'a>;
#[cfg(not(target_arch = "x86_64"))]
pub type RowCodesView<'a> = std::marker::PhantomData<&'a ()>;

/// Rows coded ahead for a quantised kernel (an empty type off x86-64).
#[cfg(target_arch = "x86_64")]
pub type SharedCodes = std::sync::Arc<quant::RowCodes>;
#[cfg(not(target_arch = "x86_64"))]
pub type SharedCodes = ();

impl CpuBackend {
    /// The codes of the retained matrix `points` for the kernel a pass over k
    /// centroids runs, when that kernel is quantised and this backend retains `points`.
    pub fn codes_for(&self, points: &[f32], dim: usize, k: usize) -> Option<SharedCodes> {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::similarity::int8::Isa;
            match self.kernel.resolve(k, dim) {
                Kernel::Int8Vnni | Kernel::Int8Amx => self.row_codes(points, dim, Isa::Avx512Vnni),
                Kernel::Int8Avx2 => self.row_codes(points, dim, Isa::Avx2),
                _ => None,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (points, dim, k);
            None
        }
    }
}

/// The codes of `rows` of `codes` gathered into `buf`, viewed; `None` without codes.
pub fn gather_codes<'a>(
    codes: Option<&SharedCodes>,
    rows: &[u32],
    buf: &'a mut Option<SharedCodesBuf>,
) -> Option<RowCodesView<'a>> {
    #[cfg(target_arch = "x86_64")]
    {
        let c = codes?;
        let b = buf.get_or_insert_with(|| quant::RowCodes::new(c.isa, 1, 0));
        c.gather(rows, b);
        Some(b.view())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (codes, rows, buf);
        None
    }
}

/// A buffer for `gather_codes`.
#[cfg(target_arch = "x86_64")]
pub type SharedCodesBuf = quant::RowCodes;
#[cfg(not(target_arch = "x86_64"))]
pub type SharedCodesBuf = ();

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
    /// Exact labels; distances only within the fast arithmetic's error bound (the f32
    /// expansion's, or the 8-bit codes', a few per cent), and `second` possibly +inf.
    /// An exact distance is only computed when two centroids cannot be told apart.
    LabelsOnly,
    /// As `LabelsOnly`, where `out` already holds a label for each row (from an earlier
    /// pass with the same k; u32::MAX or any index ≥ k: none). The 8-bit kernels then
    /// bound each row by that centroid's upper bound, known before the tile, and take
    /// the candidates in the tile's own pass; labels are the same whatever `out` held.
    NearPrior,
}

impl Precision {
    fn exact(self) -> bool {
        self == Precision::Exact
    }
}

/// The 8-bit kernels' decision among a row's candidates (ascending). Labels only
/// (`single` given): a single candidate is the nearest, at `single`; f32 distances
/// settle all but near-ties among several (`known`: one candidate's f32 distance,
/// computed already). The rest, and every row of an exact pass (`single` none: the
/// model's last pass), go to the exact f64 rule.
#[cfg(target_arch = "x86_64")]
fn decide_quant(
    isa: crate::similarity::int8::Isa,
    x: &[f32],
    cand: &[u32],
    pc: &PreparedCentroids,
    single: Option<f32>,
    known: Option<(u32, f32)>,
) -> Nearest {
    let proven = match (cand.len(), single) {
        (_, None) => None,
        (1, Some(d)) => Some((cand[0], d)),
        _ => quant::proven_nearest(isa, x, cand, pc.c, known),
    };
    match proven {
        Some((label, dist)) => Nearest { label, dist: dist.max(0.0), second: f32::INFINITY },
        None => best_of(x, cand, pc),
    }
}

/// Write a row's result; 1 when its label changed. Field by field: a whole-struct copy
/// through the stack made the 8-byte reload of two 4-byte stores miss store forwarding.
#[inline(always)]
fn replace(o: &mut Nearest, new: Nearest) -> u64 {
    let c = u64::from(o.label != new.label);
    o.label = new.label;
    o.dist = new.dist;
    o.second = new.second;
    c
}

/// The norms ‖x‖ of the rows of `p`: copied from those computed ahead, else computed.
fn row_norms_into(out: &mut [f32], p: &[f32], dim: usize, ahead: Option<&[f32]>) {
    match ahead {
        Some(n) => out.copy_from_slice(n),
        None => {
            for (xn, x) in out.iter_mut().zip(p.chunks_exact(dim)) {
                *xn = sq_norm(x).sqrt();
            }
        }
    }
}

/// How many tiles ahead the 8-bit pass prefetches its f32 rows.
#[cfg(target_arch = "x86_64")]
const PREFETCH_TILES: usize = 2;

/// `assign_block` at the given precision, with the rows' 8-bit codes and norms ‖x‖
/// where they were computed ahead (`row_codes`, `row_norms`). Returns how many rows'
/// labels differ from those `out` held.
pub fn assign_block_with(
    points: &[f32],
    pc: &PreparedCentroids,
    out: &mut [Nearest],
    scratch: &mut Vec<f32>,
    precision: Precision,
    codes: Option<RowCodesView<'_>>,
    norms: Option<&[f32]>,
) -> u64 {
    let (k, dim) = (pc.c.k, pc.c.dim);
    let mut changed = 0u64;
    #[cfg(target_arch = "x86_64")]
    if let Some(qc) = &pc.quant {
        use crate::similarity::int8::Isa;
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let kp = qc.padded_k();
        if scratch.len() < quant::TR * kp {
            scratch.resize(quant::TR * kp, 0.0);
        }
        let exact = precision.exact();
        let mut tile = codes.is_none().then(|| quant::RowCodes::new(qc.isa, dim, quant::TR));
        let mut upper = [[0.0f32; 2]; quant::TR];
        let mut cand = Vec::with_capacity(16);
        let mw = qc.mask_words();
        let mut masks = vec![0u64; if precision == Precision::NearPrior { quant::TR * mw / 4 } else { 0 }];
        // The AMX tiles, configured once per block (`ldtilecfg` costs about 60 ns).
        let mut sums = Vec::new();
        let tiles = (qc.amx && precision == Precision::NearPrior).then(|| {
            sums = vec![0i32; quant::TR * kp];
            // SAFETY: `amx` is set only for the int8-amx kernel, which runs where
            // `amx::available()` (`Kernel::resolve`), on codes of at most 64 bytes.
            unsafe { amx::Tiles::configure(dim.next_multiple_of(4)) }
        });
        for (ti, (p, o)) in points.chunks(quant::TR * dim).zip(out.chunks_mut(quant::TR)).enumerate() {
            let view = match (&mut tile, codes) {
                (Some(t), _) => {
                    t.code(p, o.len(), dim);
                    t.view()
                }
                (None, Some(c)) => c.slice(ti * quant::TR, o.len()),
                (None, None) => unreachable!(),
            };
            // The rows are read by the limits, where several candidates remain, and by
            // the statistics, a few per tile: too sparse for the stream prefetcher, so
            // fetch those of the tile after next while this one works.
            let ahead = &points[((ti + PREFETCH_TILES) * quant::TR * dim).min(points.len())..];
            for line in ahead[..ahead.len().min(quant::TR * dim)].chunks(16) {
                // SAFETY: a prefetch of memory the slice holds.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr() as *const i8) };
            }
            if precision == Precision::NearPrior && o.iter().all(|o| (o.label as usize) < k) {
                // Each row is bounded against the centroid it had: the tile keeps every
                // centroid that could be nearer, without a sweep of its own.
                let (mut label, mut limit, mut dist) = ([0usize; quant::TR], [0.0f32; quant::TR], [0.0f32; quant::TR]);
                for (l, o) in label.iter_mut().zip(o.iter()) {
                    *l = o.label as usize;
                }
                // SAFETY: the view holds o.len() rows for `qc.isa` (which the CPU has,
                // `Kernel::resolve`), `p` those rows; the labels are below k.
                unsafe { quant::prior_limits(qc.isa, p, view, pc.c, &label, &mut limit, &mut dist) };
                match &tiles {
                    // SAFETY: configured for these codes' width; a whole tile; `masks`
                    // and `sums` have the sizes `near_amx` asks.
                    Some(t) if o.len() == quant::TR => unsafe {
                        quant::near_amx(t, view, qc, &limit, bytemuck::cast_slice_mut(&mut masks), &mut sums)
                    },
                    // SAFETY: as for `bounds` below; `masks` holds TR × mask_words() words.
                    _ => unsafe { quant::near(view, o.len(), qc, &limit, bytemuck::cast_slice_mut(&mut masks)) },
                }
                for (r, o) in o.iter_mut().enumerate() {
                    let (a, row_masks) = (label[r], &masks[r * mw / 4..(r + 1) * mw / 4]);
                    let x = &p[r * dim..(r + 1) * dim];
                    // The previous centroid passes its own limit wherever the bounds hold
                    // (finite values): then a single bit is its own, and it is the nearest.
                    // Counted without a branch per word, as most rows are such (the words'
                    // scan mispredicted per row).
                    let a_passes = row_masks[a / 64] >> (a % 64) & 1 == 1;
                    if a_passes && quant::bits_set(row_masks) == 1 {
                        let new = Nearest { label: a as u32, dist: dist[r].max(0.0), second: f32::INFINITY };
                        changed += replace(o, new);
                        continue;
                    }
                    if !a_passes {
                        // A limit or a bound that is not a number (values beyond f32's
                        // range): every centroid, decided exactly.
                        cand.clear();
                        cand.extend(0..k as u32);
                        changed += replace(o, decide_quant(qc.isa, x, &cand, pc, None, None));
                        continue;
                    }
                    quant::from_masks(row_masks, k, &mut cand);
                    let known = Some((a as u32, dist[r]));
                    changed += replace(o, decide_quant(qc.isa, x, &cand, pc, Some(dist[r]), known));
                }
                continue;
            }
            // SAFETY: `quant` exists only for an instruction set the CPU has (`Kernel::
            // resolve`); the view holds o.len() rows coded for it and `scratch` o.len() × kp.
            unsafe { quant::bounds(view, o.len(), qc, exact, scratch, &mut upper) };
            for (r, o) in o.iter_mut().enumerate() {
                let x = &p[r * dim..(r + 1) * dim];
                cand.clear();
                let (lower, limit) = (&scratch[r * kp..r * kp + k], upper[r][usize::from(exact)]);
                // SAFETY: VNNI implies AVX-512 F; both quantised kernels imply AVX2.
                unsafe {
                    if qc.isa == Isa::Avx512Vnni {
                        quant::candidates512(lower, limit, &mut cand)
                    } else {
                        quant::candidates(lower, limit, &mut cand)
                    }
                };
                // A single candidate's distance: the middle of its bounds.
                let single =
                    (!exact).then(|| cand.first().map_or(0.0, |&j| 0.5 * (lower[j as usize] + limit)) + view.sq_lo(r));
                changed += replace(o, decide_quant(qc.isa, x, &cand, pc, single, None));
            }
        }
        return changed;
    }
    if let Some(pk) = &pc.packed {
        let kp = pk.padded_k();
        if scratch.len() < fused::ROWS * kp {
            scratch.resize(fused::ROWS * kp, 0.0);
        }
        let mut upper = [[0.0f32; 2]; fused::ROWS];
        let mut xnorm = [0.0f32; fused::ROWS];
        let mut cand = Vec::with_capacity(16);
        if !precision.exact() && pk.n_panels == 1 {
            // One panel holds every centroid: the rows are decided in registers, and
            // only those with several candidates go to the exact decision.
            let avx512 = pc.kernel == Kernel::F32Avx512;
            let tr = if avx512 { fused::ONE_PANEL_ROWS_512 } else { fused::ROWS };
            let mut xnorm = [0.0f32; fused::ONE_PANEL_ROWS_512];
            let mut several = [0u16; fused::ONE_PANEL_ROWS_512];
            for (ti, (p, o)) in points.chunks(tr * dim).zip(out.chunks_mut(tr)).enumerate() {
                let m = o.len();
                row_norms_into(&mut xnorm[..m], p, dim, norms.map(|n| &n[ti * tr..ti * tr + m]));
                // SAFETY: a fused kernel runs only where the CPU has it (`Kernel::resolve`),
                // AVX-512 F with F32Avx512; one panel, and p holds m ≤ tr rows.
                changed += unsafe { fused::one_panel(p, m, pk, k, &xnorm[..m], o, &mut several[..m], avx512) };
                for (r, o) in o.iter_mut().enumerate().filter(|(r, _)| several[*r] != 0) {
                    let mut bits = several[r];
                    cand.clear();
                    while bits != 0 {
                        cand.push(bits.trailing_zeros());
                        bits &= bits - 1;
                    }
                    changed += replace(o, best_of(&p[r * dim..(r + 1) * dim], &cand, pc));
                }
            }
            return changed;
        }
        for (ti, (p, o)) in points.chunks(fused::ROWS * dim).zip(out.chunks_mut(fused::ROWS)).enumerate() {
            let m = o.len();
            row_norms_into(&mut xnorm[..m], p, dim, norms.map(|n| &n[ti * fused::ROWS..ti * fused::ROWS + m]));
            // SAFETY: `packed` exists only for a fused kernel the CPU has (AVX2 and FMA,
            // or AVX-512 too); the slices hold o.len() rows of points and o.len() × kp values.
            unsafe { fused::values(p, o.len(), pk, &xnorm, scratch, &mut upper, pc.kernel == Kernel::F32Avx512) };
            for (r, o) in o.iter_mut().enumerate() {
                let x = &p[r * dim..(r + 1) * dim];
                let v = &scratch[r * kp..r * kp + k];
                let limit = if precision.exact() { upper[r][1] } else { upper[r][0] };
                cand.clear();
                // SAFETY: as above; `row` is this row's output of `values`.
                unsafe { fused::candidates(v, &pc.err.a, &pc.err.b, xnorm[r], limit, &mut cand) };
                changed += replace(o, decide(x, v, xnorm[r], upper[r], &cand, pc, precision));
            }
        }
        return changed;
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
            let limit = if precision.exact() { up[1] } else { up[0] };
            cand.clear();
            cand.extend((0..k as u32).filter(|&j| v[j as usize] <= limit + a[j as usize] + xn * b[j as usize]));
            changed += replace(o, decide(x, v, xn, up, &cand, pc, precision));
        }
    }
    changed
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
    if !precision.exact() && cand.len() == 1 {
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
    accumulate(&mut s, points, weights, nearest);
    s
}

/// Add rows to per-centroid statistics, one row after another (each sum takes its
/// rows in order, whatever the vector width).
fn accumulate(s: &mut ClusterStats, points: &[f32], weights: Option<&[f32]>, nearest: &[Nearest]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present.
        return unsafe {
            match s.dim {
                8 => accumulate_avx2::<8>(s, points, weights, nearest),
                16 => accumulate_avx2::<16>(s, points, weights, nearest),
                32 => accumulate_avx2::<32>(s, points, weights, nearest),
                _ => accumulate_avx2::<0>(s, points, weights, nearest),
            }
        };
    }
    accumulate_body(s, points, weights, nearest)
}

/// The same loop compiled for AVX2: the vector lanes are different features, so the
/// bits are the portable loop's. `D` is `s.dim` when it is not 0.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn accumulate_avx2<const D: usize>(
    s: &mut ClusterStats,
    points: &[f32],
    weights: Option<&[f32]>,
    nearest: &[Nearest],
) {
    use std::arch::x86_64::*;
    // D > 0: the width known at compile time (the common ones, unrolled); 0: any.
    let dim = if D > 0 { D } else { s.dim };
    let d4 = dim / 4 * 4;
    for (i, (row, nr)) in points.chunks_exact(dim).zip(nearest).enumerate() {
        let l = nr.label as usize;
        let acc = &mut s.sum[l * dim..(l + 1) * dim];
        s.count[l] += 1;
        let mut j = 0;
        match weights {
            // w·v with w = 1 is v exactly: the unweighted sums skip the product.
            None => {
                s.weight[l] += 1.0;
                s.sse[l] += nr.dist as f64;
                while j < d4 {
                    // SAFETY: j + 4 ≤ d4 ≤ dim, the length of both `row` and `acc`.
                    unsafe {
                        let v = _mm256_cvtps_pd(_mm_loadu_ps(row.as_ptr().add(j)));
                        let a = acc.as_mut_ptr().add(j);
                        _mm256_storeu_pd(a, _mm256_add_pd(_mm256_loadu_pd(a), v));
                    }
                    j += 4;
                }
                for (a, &v) in acc[d4..].iter_mut().zip(&row[d4..]) {
                    *a += v as f64;
                }
            }
            Some(ws) => {
                let w = ws[i] as f64;
                s.weight[l] += w;
                s.sse[l] += w * nr.dist as f64;
                let wv = _mm256_set1_pd(w);
                while j < d4 {
                    // SAFETY: as above.
                    unsafe {
                        let v = _mm256_mul_pd(wv, _mm256_cvtps_pd(_mm_loadu_ps(row.as_ptr().add(j))));
                        let a = acc.as_mut_ptr().add(j);
                        _mm256_storeu_pd(a, _mm256_add_pd(_mm256_loadu_pd(a), v));
                    }
                    j += 4;
                }
                for (a, &v) in acc[d4..].iter_mut().zip(&row[d4..]) {
                    *a += w * v as f64;
                }
            }
        }
    }
}

#[inline(always)]
fn accumulate_body(s: &mut ClusterStats, points: &[f32], weights: Option<&[f32]>, nearest: &[Nearest]) {
    let dim = s.dim;
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
}
