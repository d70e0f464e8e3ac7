//! The quantised assignment pass: every (row, centroid) distance is first estimated
//! from 8-bit codes (AVX-512 VNNI `vpdpbusd`, 64 multiply-adds per instruction, or
//! AVX2 `vpmaddubsw` + `vpmaddwd`) together with a proven error bound; a centroid is
//! examined exactly only where the bound cannot rule it out, and the label is then
//! decided by the same exact f64 rule as every other kernel. Hand-written because no
//! crate in the stack computes int8 GEMM tiles with a per-pair bound and a running
//! minimum inside the tile loop.
//!
//! Why it is exact. A row x is coded as x' = s_x·c_x, c_x ∈ [−L, L]^d (L = 127 with
//! VNNI, 63 with AVX2, whose i16 pair sums would otherwise saturate), a centroid c_j
//! as c'_j = s_j·c_j' with codes in ±127, both by `similarity::int8::code_row`. With
//! e_x = x − x' and e_j = c_j − c'_j,
//!     x·c_j = x'·c'_j + e_x·c_j + x'·e_j,   |e_x·c_j| ≤ ‖e_x‖‖c_j‖,  |x'·e_j| ≤ ‖x'‖‖e_j‖,
//! and x'·c'_j = s_x s_j I_j with I_j = c_x·c_j' an exact integer. So the value
//! v_j = ‖c_j‖² − 2x·c_j that orders the centroids lies within t_j of
//!     est_j = fl(‖c_j‖²) − 2s_x·(I_j·s_j)   (f32),
//!     t_j   = a_j + ‖e_x‖·2‖c_j‖ + ‖x'‖·(2‖e_j‖ + 32u‖c'_j‖),   a_j = (d+4)ε·‖c_j‖² + 10⁻³⁶d,
//! where the a_j and 32u terms cover the f32 rounding of the norm, the conversion,
//! product and fused subtraction (|s_x s_j I_j| ≤ ‖x'‖‖c'_j‖) and of t_j and the
//! comparisons themselves; every norm is rounded up. A centroid j is a candidate when
//! est_j − t_j ≤ U, where U is the smallest upper bound est_i + t_i over i (labels) or
//! the second smallest (labels and exact distances): any centroid outside cannot be
//! the nearest (nor the second), ties included. The candidates, in index order, go to
//! the same exact decision as the f32 kernels, so labels, distances and models are
//! bit-identical whichever kernel runs.
//!
//! Lloyd's iterations know each row's previous label a before the tile (`near`): U is
//! then est_a + t_a, at least the smallest upper bound (so every centroid the smallest
//! keeps, the nearest included, is kept), computed first from the row's and centroid
//! a's codes alone (`limits`), and the tile compares each lower bound with it as it
//! goes, leaving a bit per centroid instead of k bounds to store and sweep.

use std::arch::x86_64::*;

use crate::similarity::int8::{Isa, code_row};

/// Centroids per packed panel (two 16-lane registers).
pub const PW: usize = 32;
/// Rows per tile.
pub const TR: usize = 8;
/// Widest rows coded: the i32 accumulators hold d·(255·127 + 128·127) < 2³¹.
pub const MAX_DIM: usize = 16_384;

/// Unit roundoff of f32.
const UNIT: f64 = f32::EPSILON as f64 / 2.0;

/// A non-negative f64 bound as f32, rounded up with a relative margin for the f32
/// arithmetic that combines it.
fn up32(x: f64) -> f32 {
    let y = x * (1.0 + 2f64.powi(-20));
    let f = y as f32;
    if (f as f64) < y { f.next_up() } else { f }
}

/// Centroids coded once per pass: panel p holds, for each group g of four features,
/// 32 centroids × 4 bytes (code + 128, unsigned, as `vpdpbusd` takes them), and the
/// per-centroid terms padded to whole panels (padding: norm +inf, terms 0).
pub struct QuantCentroids {
    pub isa: Isa,
    groups: usize,
    n_panels: usize,
    panels: Vec<u8>,
    /// Each centroid's codes as the panels hold them (code + 128), `groups`·4 bytes per
    /// centroid in index order: one centroid's bound without its panel (`upper_of`).
    rows_u8: Vec<u8>,
    scale: Vec<f32>,
    norm2: Vec<f32>,
    ta: Vec<f32>,
    tb: Vec<f32>,
    tc: Vec<f32>,
}

impl QuantCentroids {
    /// `norms[j]` is the f32 ‖c_j‖² the other kernels use.
    pub fn new(isa: Isa, data: &[f32], norms: &[f32], dim: usize) -> Self {
        assert!(dim <= MAX_DIM, "quantised assignment takes at most {MAX_DIM} features");
        let k = norms.len();
        let kp4 = dim.next_multiple_of(4);
        let groups = kp4 / 4;
        let n_panels = k.div_ceil(PW);
        let padded = n_panels * PW;
        let mut panels = vec![128u8; n_panels * groups * PW * 4];
        let mut rows_u8 = vec![128u8; k * kp4];
        let (mut scale, mut norm2) = (vec![0.0f32; padded], vec![f32::INFINITY; padded]);
        let (mut ta, mut tb, mut tc) = (vec![0.0f32; padded], vec![0.0f32; padded], vec![0.0f32; padded]);
        let g = (dim as f64 + 4.0) * f32::EPSILON as f64;
        let mut code = vec![0i8; kp4];
        for j in 0..k {
            let rc = code_row(isa, &data[j * dim..(j + 1) * dim], 1.0, 127.0, &mut code);
            code[dim..].fill(0);
            let (p, l) = (j / PW, j % PW);
            for (gi, quad) in code.chunks_exact(4).enumerate() {
                let at = ((p * groups + gi) * PW + l) * 4;
                for (t, &q) in quad.iter().enumerate() {
                    panels[at + t] = (q as u8) ^ 0x80;
                }
            }
            for (o, &q) in rows_u8[j * kp4..(j + 1) * kp4].iter_mut().zip(&code) {
                *o = (q as u8) ^ 0x80;
            }
            scale[j] = rc.scale;
            norm2[j] = norms[j];
            ta[j] = up32(g * norms[j] as f64 + 1e-36 * dim as f64);
            tb[j] = up32(2.0 * rc.err as f64 + 32.0 * UNIT * rc.dq as f64);
            tc[j] = up32(2.0 * rc.norm as f64);
        }
        QuantCentroids { isa, groups, n_panels, panels, rows_u8, scale, norm2, ta, tb, tc }
    }

    /// Length of one row's buffer of lower bounds (k rounded up to whole panels).
    pub fn padded_k(&self) -> usize {
        self.n_panels * PW
    }

    /// Candidate masks per row for `near`: one `u16` per 16 centroids, rounded up to
    /// whole `u64`s.
    pub fn mask_words(&self) -> usize {
        (self.n_panels * PW / 16).next_multiple_of(4)
    }
}

/// Rows coded for the quantised kernels, with the per-row terms of the bound: coded
/// once per fit for the whole matrix (`CpuBackend::row_codes`), or a tile at a time.
pub struct RowCodes {
    pub isa: Isa,
    kp4: usize,
    codes: Vec<i8>,
    /// −128·Σc_x: starts the accumulators so that they end at I_j exactly.
    corr: Vec<i32>,
    /// 2·s_x.
    alpha: Vec<f32>,
    /// ‖e_x‖ (rounded up).
    ex: Vec<f32>,
    /// ‖x'‖ (rounded up).
    xq: Vec<f32>,
    /// ‖x‖² (for the distances of label-only passes).
    xn2: Vec<f32>,
}

/// Rows of a `RowCodes`.
#[derive(Clone, Copy)]
pub struct RowView<'a> {
    kp4: usize,
    codes: &'a [i8],
    corr: &'a [i32],
    alpha: &'a [f32],
    ex: &'a [f32],
    xq: &'a [f32],
    xn2: &'a [f32],
}

impl<'a> RowView<'a> {
    /// Rows r0..r0 + n.
    pub fn slice(self, r0: usize, n: usize) -> RowView<'a> {
        RowView {
            kp4: self.kp4,
            codes: &self.codes[r0 * self.kp4..(r0 + n) * self.kp4],
            corr: &self.corr[r0..r0 + n],
            alpha: &self.alpha[r0..r0 + n],
            ex: &self.ex[r0..r0 + n],
            xq: &self.xq[r0..r0 + n],
            xn2: &self.xn2[r0..r0 + n],
        }
    }

    /// ‖x‖² of row r (within rounding).
    pub fn sq_norm(&self, r: usize) -> f32 {
        self.xn2[r]
    }
}

impl RowCodes {
    /// Room for `rows` rows of `dim` features, none coded yet.
    pub fn new(isa: Isa, dim: usize, rows: usize) -> Self {
        let kp4 = dim.next_multiple_of(4);
        RowCodes {
            isa,
            kp4,
            codes: vec![0; rows * kp4],
            corr: vec![0; rows],
            alpha: vec![0.0; rows],
            ex: vec![0.0; rows],
            xq: vec![0.0; rows],
            xn2: vec![0.0; rows],
        }
    }

    /// Every row of `x` (row-major, `dim` wide), coded in parallel.
    pub fn code_all(isa: Isa, x: &[f32], dim: usize) -> Self {
        use rayon::prelude::*;
        const CHUNK: usize = 4096;
        let n = x.len() / dim.max(1);
        let mut c = RowCodes::new(isa, dim, n);
        let kp4 = c.kp4;
        c.codes
            .par_chunks_mut(CHUNK * kp4)
            .zip(c.corr.par_chunks_mut(CHUNK))
            .zip(c.alpha.par_chunks_mut(CHUNK))
            .zip(c.ex.par_chunks_mut(CHUNK).zip(c.xq.par_chunks_mut(CHUNK)))
            .zip(c.xn2.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(ci, ((((codes, corr), alpha), (ex, xq)), xn2))| {
                for r in 0..corr.len() {
                    let row = &x[(ci * CHUNK + r) * dim..(ci * CHUNK + r + 1) * dim];
                    let out = &mut codes[r * kp4..(r + 1) * kp4];
                    (corr[r], alpha[r], ex[r], xq[r], xn2[r]) = code_one(isa, row, out);
                }
            });
        c
    }

    /// Code the first `rows` rows of `x` into this buffer (a tile).
    pub fn code(&mut self, x: &[f32], rows: usize, dim: usize) {
        for r in 0..rows {
            let out = &mut self.codes[r * self.kp4..(r + 1) * self.kp4];
            (self.corr[r], self.alpha[r], self.ex[r], self.xq[r], self.xn2[r]) =
                code_one(self.isa, &x[r * dim..(r + 1) * dim], out);
        }
    }

    /// The codes of `rows` (indices into `self`), in that order, into `out`.
    pub fn gather(&self, rows: &[u32], out: &mut RowCodes) {
        let kp4 = self.kp4;
        out.isa = self.isa;
        out.kp4 = kp4;
        out.codes.clear();
        for &i in rows {
            out.codes.extend_from_slice(&self.codes[i as usize * kp4..(i as usize + 1) * kp4]);
        }
        let pick = |v: &[f32], o: &mut Vec<f32>| {
            o.clear();
            o.extend(rows.iter().map(|&i| v[i as usize]));
        };
        out.corr.clear();
        out.corr.extend(rows.iter().map(|&i| self.corr[i as usize]));
        pick(&self.alpha, &mut out.alpha);
        pick(&self.ex, &mut out.ex);
        pick(&self.xq, &mut out.xq);
        pick(&self.xn2, &mut out.xn2);
    }

    pub fn view(&self) -> RowView<'_> {
        RowView {
            kp4: self.kp4,
            codes: &self.codes,
            corr: &self.corr,
            alpha: &self.alpha,
            ex: &self.ex,
            xq: &self.xq,
            xn2: &self.xn2,
        }
    }
}

/// One row's code (into `out`, zero-padded) and its (corr, α, ‖e_x‖, ‖x'‖, ‖x‖²).
fn code_one(isa: Isa, row: &[f32], out: &mut [i8]) -> (i32, f32, f32, f32, f32) {
    let rc = code_row(isa, row, 1.0, isa.query_levels(), out);
    out[row.len()..].fill(0);
    (-128 * rc.sum, 2.0 * rc.scale, rc.err, rc.dq, rc.norm * rc.norm)
}

/// Lower bounds est_j − t_j of `rows` coded rows into `lower` (row stride
/// `padded_k()`), and each row's smallest and (with `top2`) second smallest upper
/// bound est_j + t_j into `upper` (the second is +inf without `top2`).
///
/// # Safety
/// `qc.isa` must be supported by the CPU; `tile` must hold `rows` rows coded for
/// `qc.isa` and `lower` `rows × padded_k()` values.
pub unsafe fn bounds(
    tile: RowView<'_>,
    rows: usize,
    qc: &QuantCentroids,
    top2: bool,
    lower: &mut [f32],
    upper: &mut [[f32; 2]; TR],
) {
    debug_assert!(rows <= TR && lower.len() >= rows * qc.padded_k());
    // Register tiles: the accumulators and running minima of 8 rows (labels) or 4
    // (labels and second distances) fit the 32 AVX-512 registers; AVX2 works in 4s.
    let step = if top2 || qc.isa == Isa::Avx2 { 4 } else { 8 };
    let kp = qc.padded_k();
    let mut r0 = 0;
    while r0 < rows {
        let n = step.min(rows - r0);
        let lo = &mut lower[r0 * kp..];
        let up = &mut upper[r0..];
        unsafe {
            match (qc.isa, top2) {
                (Isa::Avx512Vnni, false) => dispatch_vnni::<false>(tile, r0, n, qc, lo, up),
                (Isa::Avx512Vnni, true) => dispatch_vnni::<true>(tile, r0, n, qc, lo, up),
                (Isa::Avx2, false) => dispatch_avx2::<false>(tile, r0, n, qc, lo, up),
                (Isa::Avx2, true) => dispatch_avx2::<true>(tile, r0, n, qc, lo, up),
            }
        }
        r0 += n;
    }
}

unsafe fn dispatch_vnni<const T2: bool>(
    tile: RowView<'_>,
    r0: usize,
    n: usize,
    qc: &QuantCentroids,
    lo: &mut [f32],
    up: &mut [[f32; 2]],
) {
    unsafe {
        match n {
            8 => tile_vnni::<8, T2>(tile, r0, qc, lo, up),
            7 => tile_vnni::<7, T2>(tile, r0, qc, lo, up),
            6 => tile_vnni::<6, T2>(tile, r0, qc, lo, up),
            5 => tile_vnni::<5, T2>(tile, r0, qc, lo, up),
            4 => tile_vnni::<4, T2>(tile, r0, qc, lo, up),
            3 => tile_vnni::<3, T2>(tile, r0, qc, lo, up),
            2 => tile_vnni::<2, T2>(tile, r0, qc, lo, up),
            1 => tile_vnni::<1, T2>(tile, r0, qc, lo, up),
            _ => unreachable!("tile of {n} rows"),
        }
    }
}

unsafe fn dispatch_avx2<const T2: bool>(
    tile: RowView<'_>,
    r0: usize,
    n: usize,
    qc: &QuantCentroids,
    lo: &mut [f32],
    up: &mut [[f32; 2]],
) {
    unsafe {
        match n {
            4 => tile_avx2::<4, T2>(tile, r0, qc, lo, up),
            3 => tile_avx2::<3, T2>(tile, r0, qc, lo, up),
            2 => tile_avx2::<2, T2>(tile, r0, qc, lo, up),
            1 => tile_avx2::<1, T2>(tile, r0, qc, lo, up),
            _ => unreachable!("tile of {n} rows"),
        }
    }
}

/// The two smallest lanes of two registers' worth of running minima.
fn lanes_two_smallest(m1: &[f32], m2: &[f32], top2: bool) -> [f32; 2] {
    if top2 {
        super::two_smallest(m1.iter().chain(m2).copied())
    } else {
        [m1.iter().copied().fold(f32::INFINITY, f32::min), f32::INFINITY]
    }
}

/// The per-centroid vectors (scale, ‖c‖², a, 2‖e‖ + 32u‖c'‖, 2‖c‖) at centroid `at`,
/// loaded with `$load` (the caller's lane width; the vectors are padded to whole panels).
macro_rules! centroid_terms {
    ($load:ident, $qc:expr, $at:expr) => {{
        let (qc, at) = ($qc, $at);
        // SAFETY: the per-centroid vectors are padded to whole panels.
        unsafe {
            (
                $load(qc.scale.as_ptr().add(at)),
                $load(qc.norm2.as_ptr().add(at)),
                $load(qc.ta.as_ptr().add(at)),
                $load(qc.tb.as_ptr().add(at)),
                $load(qc.tc.as_ptr().add(at)),
            )
        }
    }};
}

/// est_j = fl(‖c_j‖²) − α·(I_j·s_j) and t_j = a_j + ‖e_x‖·2‖c_j‖ + ‖x'‖·tb_j for one
/// row's accumulator register, in 512- or 256-bit lanes: the operations and order the
/// bound's proof (module header) and `limits` count on.
macro_rules! est_and_bound {
    (512, $acc:expr, $terms:expr, $alpha:expr, $ex:expr, $xq:expr) => {{
        let (s, n, ta, tb, tc) = $terms;
        let est = _mm512_fnmadd_ps(_mm512_set1_ps($alpha), _mm512_mul_ps(_mm512_cvtepi32_ps($acc), s), n);
        let t = _mm512_fmadd_ps(_mm512_set1_ps($xq), tb, _mm512_fmadd_ps(_mm512_set1_ps($ex), tc, ta));
        (est, t)
    }};
    (256, $acc:expr, $terms:expr, $alpha:expr, $ex:expr, $xq:expr) => {{
        let (s, n, ta, tb, tc) = $terms;
        let est = _mm256_fnmadd_ps(_mm256_set1_ps($alpha), _mm256_mul_ps(_mm256_cvtepi32_ps($acc), s), n);
        let t = _mm256_fmadd_ps(_mm256_set1_ps($xq), tb, _mm256_fmadd_ps(_mm256_set1_ps($ex), tc, ta));
        (est, t)
    }};
}

/// The integer products I_j of rows r0..r0 + R with the 32 centroids of panel p, as two
/// arrays of R registers of 16: the accumulators start at −128·Σc_x and end at I_j
/// exactly. A macro, so that the accumulators stay in the caller's registers (the
/// caller has AVX-512 F/BW/VNNI; `tile` holds rows r0..r0 + R; p < n_panels).
macro_rules! products_vnni {
    ($R:ident, $tile:expr, $r0:expr, $qc:expr, $p:expr) => {{
        let (tile, r0, qc, p) = ($tile, $r0, $qc, $p);
        let groups = qc.groups;
        let cp = unsafe { tile.codes.as_ptr().add(r0 * tile.kp4) };
        let mut acc0: [__m512i; $R] = std::array::from_fn(|r| _mm512_set1_epi32(tile.corr[r0 + r]));
        let mut acc1 = acc0;
        let bp = unsafe { qc.panels.as_ptr().add(p * groups * PW * 4) };
        for g in 0..groups {
            // SAFETY: panel p holds `groups` groups of 128 bytes; each coded row kp4 bytes.
            let (b0, b1) = unsafe {
                (
                    _mm512_loadu_si512(bp.add(g * PW * 4) as *const __m512i),
                    _mm512_loadu_si512(bp.add(g * PW * 4 + 64) as *const __m512i),
                )
            };
            for r in 0..$R {
                let w = unsafe { (cp.add(r * tile.kp4 + g * 4) as *const i32).read_unaligned() };
                let a = _mm512_set1_epi32(w);
                acc0[r] = _mm512_dpbusd_epi32(acc0[r], b0, a);
                acc1[r] = _mm512_dpbusd_epi32(acc1[r], b1, a);
            }
        }
        (acc0, acc1)
    }};
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_vnni<const R: usize, const T2: bool>(
    tile: RowView<'_>,
    r0: usize,
    qc: &QuantCentroids,
    lower: &mut [f32],
    upper: &mut [[f32; 2]],
) {
    let kp = qc.padded_k();
    let inf = _mm512_set1_ps(f32::INFINITY);
    let (mut m1, mut m2) = ([inf; R], [inf; R]);
    // Row terms stay in memory: broadcast where used, so that the accumulators and
    // minima keep the registers.
    let (alpha, ex, xq) = (&tile.alpha[r0..r0 + R], &tile.ex[r0..r0 + R], &tile.xq[r0..r0 + R]);
    for p in 0..qc.n_panels {
        let (acc0, acc1) = products_vnni!(R, tile, r0, qc, p);
        let o = p * PW;
        for h in 0..2 {
            let at = o + 16 * h;
            let terms = centroid_terms!(_mm512_loadu_ps, qc, at);
            for r in 0..R {
                let acc = if h == 0 { acc0[r] } else { acc1[r] };
                let (est, t) = est_and_bound!(512, acc, terms, alpha[r], ex[r], xq[r]);
                let u = _mm512_add_ps(est, t);
                unsafe { _mm512_storeu_ps(lower.as_mut_ptr().add(r * kp + at), _mm512_sub_ps(est, t)) };
                if T2 {
                    m2[r] = _mm512_min_ps(m2[r], _mm512_max_ps(m1[r], u));
                }
                m1[r] = _mm512_min_ps(m1[r], u);
            }
        }
    }
    for r in 0..R {
        // Lane-wise m1 ≤ m2: the smallest of all lanes is m1's; the second is m2's
        // smallest or m1's smallest once one lane holding the first is set aside.
        let a = _mm512_reduce_min_ps(m1[r]);
        upper[r] = if T2 {
            let at = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(m1[r], _mm512_set1_ps(a));
            let first = if at == 0 { 0 } else { 1u16 << at.trailing_zeros() };
            let rest = _mm512_reduce_min_ps(_mm512_mask_mov_ps(m1[r], first, inf));
            [a, rest.min(_mm512_reduce_min_ps(m2[r]))]
        } else {
            [a, f32::INFINITY]
        };
    }
}

/// As `products_vnni!` with AVX2, for the 16 centroids of half h of panel p (two arrays
/// of R registers of 8); the caller has AVX2.
macro_rules! products_avx2 {
    ($R:ident, $tile:expr, $r0:expr, $qc:expr, $p:expr, $h:expr) => {{
        let (tile, r0, qc, p, h) = ($tile, $r0, $qc, $p, $h);
        let groups = qc.groups;
        let cp = unsafe { tile.codes.as_ptr().add(r0 * tile.kp4) };
        let ones = _mm256_set1_epi16(1);
        let bp = unsafe { qc.panels.as_ptr().add(p * groups * PW * 4) };
        let mut acc0: [__m256i; $R] = std::array::from_fn(|r| _mm256_set1_epi32(tile.corr[r0 + r]));
        let mut acc1 = acc0;
        for g in 0..groups {
            // SAFETY: as in `products_vnni!`.
            let (b0, b1) = unsafe {
                let at = bp.add(g * PW * 4 + h * 64);
                (_mm256_loadu_si256(at as *const __m256i), _mm256_loadu_si256(at.add(32) as *const __m256i))
            };
            for r in 0..$R {
                let w = unsafe { (cp.add(r * tile.kp4 + g * 4) as *const i32).read_unaligned() };
                let a = _mm256_set1_epi32(w);
                acc0[r] = _mm256_add_epi32(acc0[r], _mm256_madd_epi16(_mm256_maddubs_epi16(b0, a), ones));
                acc1[r] = _mm256_add_epi32(acc1[r], _mm256_madd_epi16(_mm256_maddubs_epi16(b1, a), ones));
            }
        }
        (acc0, acc1)
    }};
}

/// As `tile_vnni` with AVX2: 4 rows × 16 centroids of i32 accumulators at a time.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const R: usize, const T2: bool>(
    tile: RowView<'_>,
    r0: usize,
    qc: &QuantCentroids,
    lower: &mut [f32],
    upper: &mut [[f32; 2]],
) {
    let kp = qc.padded_k();
    let inf = _mm256_set1_ps(f32::INFINITY);
    let (mut m1, mut m2) = ([inf; R], [inf; R]);
    for p in 0..qc.n_panels {
        for h in 0..2 {
            let (acc0, acc1) = products_avx2!(R, tile, r0, qc, p, h);
            for e in 0..2 {
                let at = p * PW + 16 * h + 8 * e;
                let terms = centroid_terms!(_mm256_loadu_ps, qc, at);
                for r in 0..R {
                    let acc = if e == 0 { acc0[r] } else { acc1[r] };
                    let (est, t) =
                        est_and_bound!(256, acc, terms, tile.alpha[r0 + r], tile.ex[r0 + r], tile.xq[r0 + r]);
                    let u = _mm256_add_ps(est, t);
                    unsafe { _mm256_storeu_ps(lower.as_mut_ptr().add(r * kp + at), _mm256_sub_ps(est, t)) };
                    if T2 {
                        m2[r] = _mm256_min_ps(m2[r], _mm256_max_ps(m1[r], u));
                    }
                    m1[r] = _mm256_min_ps(m1[r], u);
                }
            }
        }
    }
    for r in 0..R {
        let (mut a, mut b) = ([0.0f32; 8], [0.0f32; 8]);
        unsafe {
            _mm256_storeu_ps(a.as_mut_ptr(), m1[r]);
            _mm256_storeu_ps(b.as_mut_ptr(), m2[r]);
        }
        upper[r] = lanes_two_smallest(&a, &b, T2);
    }
}

/// The limits of `near` for `rows` rows of `tile` labelled `label` ahead: for each,
/// the upper bound u_a = est_a + t_a of v_a (the previous centroid's), computed with
/// the tile's own f32 operations in the tile's order, so with the bits the tile would
/// give it.
///
/// # Safety
/// `qc.isa` must be supported by the CPU; `tile` holds `rows` ≤ TR rows coded for it;
/// every label is below k.
pub unsafe fn limits(tile: RowView<'_>, rows: usize, qc: &QuantCentroids, label: &[usize; TR], out: &mut [f32; TR]) {
    // SAFETY: the caller's.
    unsafe {
        match qc.isa {
            Isa::Avx512Vnni => limits_vnni(tile, rows, qc, label, out),
            Isa::Avx2 => limits_avx2(tile, rows, qc, label, out),
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
unsafe fn limits_vnni(tile: RowView<'_>, rows: usize, qc: &QuantCentroids, label: &[usize; TR], out: &mut [f32; TR]) {
    let kp4 = tile.kp4;
    for r in 0..rows {
        let a = label[r];
        // SAFETY: VNNI is the caller's; the slices are one code each.
        let dot = unsafe { dot_vnni(&qc.rows_u8[a * kp4..(a + 1) * kp4], &tile.codes[r * kp4..(r + 1) * kp4]) };
        out[r] = limit_of(tile, r, qc, a, dot);
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn limits_avx2(tile: RowView<'_>, rows: usize, qc: &QuantCentroids, label: &[usize; TR], out: &mut [f32; TR]) {
    let kp4 = tile.kp4;
    for r in 0..rows {
        let a = label[r];
        // SAFETY: AVX2 is the caller's; the slices are one code each.
        let dot = unsafe { dot_avx2(&qc.rows_u8[a * kp4..(a + 1) * kp4], &tile.codes[r * kp4..(r + 1) * kp4]) };
        out[r] = limit_of(tile, r, qc, a, dot);
    }
}

/// `limits` for one row, from its code's product with centroid a's (inlined into the
/// callers, whose FMA the `mul_add`s use): fnmadd is fma(−α, ·, ·), one rounding.
#[inline(always)]
fn limit_of(tile: RowView<'_>, r: usize, qc: &QuantCentroids, a: usize, dot: i32) -> f32 {
    let i = (tile.corr[r] + dot) as f32;
    let est = (-tile.alpha[r]).mul_add(i * qc.scale[a], qc.norm2[a]);
    est + tile.xq[r].mul_add(qc.tb[a], tile.ex[r].mul_add(qc.tc[a], qc.ta[a]))
}

/// Σ c_i·x_i of unsigned and signed bytes, 64 at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
#[inline]
unsafe fn dot_vnni(c: &[u8], x: &[i8]) -> i32 {
    let n = c.len().min(x.len());
    let mut acc = _mm512_setzero_si512();
    let mut i = 0;
    while i < n {
        let m: __mmask64 = if n - i >= 64 { !0 } else { (1u64 << (n - i)) - 1 };
        // SAFETY: the mask keeps both loads inside the slices.
        let (a, b) = unsafe {
            (_mm512_maskz_loadu_epi8(m, c.as_ptr().add(i) as *const i8), _mm512_maskz_loadu_epi8(m, x.as_ptr().add(i)))
        };
        acc = _mm512_dpbusd_epi32(acc, a, b);
        i += 64;
    }
    _mm512_reduce_add_epi32(acc)
}

/// `dot_vnni` with AVX2 (`vpmaddubsw` pairs stay below 2¹⁵ for codes within ±63).
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot_avx2(c: &[u8], x: &[i8]) -> i32 {
    let n = c.len().min(x.len());
    let n32 = n / 32 * 32;
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_si256();
    let mut i = 0;
    while i < n32 {
        // SAFETY: i + 32 ≤ n.
        let (a, b) = unsafe {
            (
                _mm256_loadu_si256(c.as_ptr().add(i) as *const __m256i),
                _mm256_loadu_si256(x.as_ptr().add(i) as *const __m256i),
            )
        };
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), ones));
        i += 32;
    }
    let mut l = [0i32; 8];
    // SAFETY: eight lanes into eight integers.
    unsafe { _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, acc) };
    l.iter().sum::<i32>() + c[n32..n].iter().zip(&x[n32..n]).map(|(&c, &x)| i32::from(c) * i32::from(x)).sum::<i32>()
}

/// The candidates of `rows` coded rows under limits known ahead, in one pass: bit l of
/// `masks[r·mask_words() + w]` is set when centroid j = 16w + l has est_j − t_j ≤
/// `limit[r]`, the test `candidates` makes with the smallest upper bound. With
/// `limit[r]` the upper bound of some v_a (`limits`), which is at least the smallest,
/// no centroid left out can be the row's nearest, ties included (and a itself passes);
/// padding centroids never pass a finite limit.
///
/// # Safety
/// `qc.isa` must be supported by the CPU; `tile` must hold `rows` ≤ TR rows coded for
/// it and `masks` `rows × mask_words()` words.
pub unsafe fn near(tile: RowView<'_>, rows: usize, qc: &QuantCentroids, limit: &[f32; TR], masks: &mut [u16]) {
    debug_assert!(rows <= TR && masks.len() >= rows * qc.mask_words());
    let step = if qc.isa == Isa::Avx2 { 4 } else { 8 };
    let mw = qc.mask_words();
    let mut r0 = 0;
    while r0 < rows {
        let n = step.min(rows - r0);
        let m = &mut masks[r0 * mw..];
        let l = &limit[r0..];
        macro_rules! go {
            ($f:ident, $($n:literal)*) => {
                match n {
                    $($n => unsafe { $f::<$n>(tile, r0, qc, l, m) },)*
                    _ => unreachable!("tile of {n} rows"),
                }
            };
        }
        match qc.isa {
            Isa::Avx512Vnni => go!(near_vnni, 8 7 6 5 4 3 2 1),
            Isa::Avx2 => go!(near_avx2, 4 3 2 1),
        }
        r0 += n;
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn near_vnni<const R: usize>(
    tile: RowView<'_>,
    r0: usize,
    qc: &QuantCentroids,
    limit: &[f32],
    masks: &mut [u16],
) {
    let mw = qc.mask_words();
    let (alpha, ex, xq) = (&tile.alpha[r0..r0 + R], &tile.ex[r0..r0 + R], &tile.xq[r0..r0 + R]);
    for p in 0..qc.n_panels {
        let (acc0, acc1) = products_vnni!(R, tile, r0, qc, p);
        for h in 0..2 {
            let at = p * PW + 16 * h;
            let terms = centroid_terms!(_mm512_loadu_ps, qc, at);
            for r in 0..R {
                let acc = if h == 0 { acc0[r] } else { acc1[r] };
                let (est, t) = est_and_bound!(512, acc, terms, alpha[r], ex[r], xq[r]);
                let lo = _mm512_sub_ps(est, t);
                masks[r * mw + 2 * p + h] = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(lo, _mm512_set1_ps(limit[r]));
            }
        }
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn near_avx2<const R: usize>(
    tile: RowView<'_>,
    r0: usize,
    qc: &QuantCentroids,
    limit: &[f32],
    masks: &mut [u16],
) {
    let mw = qc.mask_words();
    for p in 0..qc.n_panels {
        for h in 0..2 {
            let (acc0, acc1) = products_avx2!(R, tile, r0, qc, p, h);
            let mut word = [0u16; R];
            for e in 0..2 {
                let at = p * PW + 16 * h + 8 * e;
                let terms = centroid_terms!(_mm256_loadu_ps, qc, at);
                for r in 0..R {
                    let acc = if e == 0 { acc0[r] } else { acc1[r] };
                    let (est, t) =
                        est_and_bound!(256, acc, terms, tile.alpha[r0 + r], tile.ex[r0 + r], tile.xq[r0 + r]);
                    let lo = _mm256_sub_ps(est, t);
                    let pass = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(lo, _mm256_set1_ps(limit[r])));
                    word[r] |= (pass as u16) << (8 * e);
                }
            }
            for r in 0..R {
                masks[r * mw + 2 * p + h] = word[r];
            }
        }
    }
}

/// The centroids j < k whose bits are set in one row's `near` masks (as `u64`s),
/// ascending.
pub fn from_masks(masks: &[u64], k: usize, out: &mut Vec<u32>) {
    out.clear();
    for (w, &m) in masks.iter().enumerate() {
        let mut bits = m;
        while bits != 0 {
            let j = 64 * w as u32 + bits.trailing_zeros();
            if (j as usize) < k {
                out.push(j);
            }
            bits &= bits - 1;
        }
    }
}

/// Indices j < lower.len() with lower[j] ≤ limit, ascending, eight lanes at a time.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn candidates(lower: &[f32], limit: f32, out: &mut Vec<u32>) {
    let lim = _mm256_set1_ps(limit);
    let n8 = lower.len() / 8 * 8;
    let mut j = 0;
    while j < n8 {
        let v = unsafe { _mm256_loadu_ps(lower.as_ptr().add(j)) };
        let mut mask = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(v, lim)) as u32;
        while mask != 0 {
            out.push(j as u32 + mask.trailing_zeros());
            mask &= mask - 1;
        }
        j += 8;
    }
    for (i, v) in lower.iter().enumerate().skip(n8) {
        if *v <= limit {
            out.push(i as u32);
        }
    }
}

/// `candidates` sixteen lanes at a time, without a branch per lane group: the indices
/// that pass are compressed into a register and stored whole (the list grows by
/// their count), as a mispredicted branch costs more than the few passing lanes.
///
/// # Safety
/// The CPU must support AVX-512 F.
#[target_feature(enable = "avx512f,popcnt")]
pub unsafe fn candidates512(lower: &[f32], limit: f32, out: &mut Vec<u32>) {
    let lim = _mm512_set1_ps(limit);
    let n = lower.len();
    out.clear();
    out.reserve(n + 16);
    let base = out.as_mut_ptr();
    let mut len = 0usize;
    let mut idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let sixteen = _mm512_set1_epi32(16);
    let mut j = 0;
    while j < n {
        let m: __mmask16 = if n - j >= 16 { 0xffff } else { (1u16 << (n - j)) - 1 };
        // SAFETY: the mask keeps the load inside `lower`; the list has room for n + 16.
        unsafe {
            let v = _mm512_maskz_loadu_ps(m, lower.as_ptr().add(j));
            let pass = _mm512_mask_cmp_ps_mask::<_CMP_LE_OQ>(m, v, lim);
            _mm512_storeu_si512(base.add(len) as *mut __m512i, _mm512_maskz_compress_epi32(pass, idx));
            len += pass.count_ones() as usize;
        }
        idx = _mm512_add_epi32(idx, sixteen);
        j += 16;
    }
    // SAFETY: the first `len` entries were written.
    unsafe { out.set_len(len) };
}

/// ‖x − c‖² in f32, sixteen lanes (one fused multiply-add chain per lane, then the
/// lanes' tree). Its relative error is below `f32_dist_rel(d)` (see there).
///
/// # Safety
/// The CPU must support AVX-512 F; `c` is at least as long as `x`.
#[target_feature(enable = "avx512f")]
unsafe fn sq_dist512(x: &[f32], c: &[f32]) -> f32 {
    let d = x.len();
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < d {
        let m: __mmask16 = if d - i >= 16 { 0xffff } else { (1u16 << (d - i)) - 1 };
        // SAFETY: the mask keeps both loads inside the rows.
        let (a, b) =
            unsafe { (_mm512_maskz_loadu_ps(m, x.as_ptr().add(i)), _mm512_maskz_loadu_ps(m, c.as_ptr().add(i))) };
        let t = _mm512_sub_ps(a, b);
        acc = _mm512_fmadd_ps(t, t, acc);
        i += 16;
    }
    _mm512_reduce_add_ps(acc)
}

/// `sq_dist512` with eight AVX2 lanes and a scalar tail.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `c` is at least as long as `x`.
#[target_feature(enable = "avx2,fma")]
unsafe fn sq_dist256(x: &[f32], c: &[f32]) -> f32 {
    let d = x.len();
    let n8 = d / 8 * 8;
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i < n8 {
        // SAFETY: i + 8 ≤ n8 ≤ d.
        let t = unsafe { _mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(c.as_ptr().add(i))) };
        acc = _mm256_fmadd_ps(t, t, acc);
        i += 8;
    }
    let mut l = [0.0f32; 8];
    // SAFETY: eight lanes into eight floats.
    unsafe { _mm256_storeu_ps(l.as_mut_ptr(), acc) };
    for j in n8..d {
        let t = x[j] - c[j];
        l[j - n8] = t.mul_add(t, l[j - n8]);
    }
    ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
}

/// A bound on the relative error of `sq_dist512`/`sq_dist256` over d features: each
/// difference rounds once (u), its square and the running sum once per fused step
/// (at most d/8 + 1 terms per lane), the lanes' tree four times more, and every term is
/// non-negative, so the computed sum is within (1 + u)^(d/8 + 8) − 1 < (d + 16)·u of
/// the real one (rounded up generously); `DIST_ABS` covers subnormal squares.
fn f32_dist_rel(d: usize) -> f64 {
    (d as f64 + 16.0) * UNIT + 2f64.powi(-40)
}
const DIST_ABS: f64 = 1e-36;

/// Among candidates `cand` of row x (ascending), the nearest when f32 distances alone
/// prove it: its distance with the error bound added is below every other's with it
/// subtracted. `None` (a near-tie) leaves the decision to the exact f64 rule, whose
/// choice a proven one always equals.
pub fn proven_nearest(isa: Isa, x: &[f32], cand: &[u32], c: &crate::backend::Centroids) -> Option<(u32, f32)> {
    let dist = |j: u32| -> f32 {
        // SAFETY: `isa` is the kernel's, supported by the CPU (VNNI implies AVX-512 F).
        unsafe {
            match isa {
                Isa::Avx512Vnni => sq_dist512(x, c.row(j as usize)),
                Isa::Avx2 => sq_dist256(x, c.row(j as usize)),
            }
        }
    };
    let (mut best, mut best_d, mut runner) = (cand[0], dist(cand[0]), f32::INFINITY);
    for &j in &cand[1..] {
        let dj = dist(j);
        if dj < best_d {
            runner = best_d;
            (best, best_d) = (j, dj);
        } else if dj < runner {
            runner = dj;
        }
    }
    let rel = f32_dist_rel(x.len());
    let abs = DIST_ABS * x.len() as f64;
    let proven = (best_d as f64) * (1.0 + rel) + abs < (runner as f64) * (1.0 - rel) - abs;
    proven.then_some((best, best_d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    /// `limits` gives the tile's own u_a (with k = 1 the tile's smallest upper bound is
    /// u_0: the same bits), and `near`'s masks are exactly the lower bounds `bounds`
    /// stores that are at most the limit, for each instruction set this CPU has, whole
    /// and partial tiles, one and several panels.
    #[test]
    fn near_marks_what_bounds_would_keep_under_the_same_limit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut value = move || rng.random::<f32>() * 4.0 - 2.0;
        for isa in [Isa::Avx512Vnni, Isa::Avx2].into_iter().filter(|i| i.supported()) {
            for (dim, k) in [(5, 1), (32, 1), (32, 40), (70, 70), (13, 257)] {
                let c: Vec<f32> = (0..k * dim).map(|_| value()).collect();
                let norms: Vec<f32> = c.chunks(dim).map(|r| r.iter().map(|v| v * v).sum()).collect();
                let qc = QuantCentroids::new(isa, &c, &norms, dim);
                let (kp, mw) = (qc.padded_k(), qc.mask_words());
                for rows in [TR, 5] {
                    let x: Vec<f32> = (0..rows * dim).map(|_| value()).collect();
                    let mut codes = RowCodes::new(isa, dim, TR);
                    codes.code(&x, rows, dim);
                    let view = codes.view();
                    let (mut lower, mut upper) = (vec![0.0f32; TR * kp], [[0.0f32; 2]; TR]);
                    let label: [usize; TR] = std::array::from_fn(|r| (r * 7) % k);
                    let (mut limit, mut masks) = ([0.0f32; TR], vec![0u64; TR * mw / 4]);
                    // SAFETY: `isa` is supported; the buffers have the sizes each asks.
                    unsafe {
                        bounds(view, rows, &qc, false, &mut lower, &mut upper);
                        limits(view, rows, &qc, &label, &mut limit);
                        near(view, rows, &qc, &limit, bytemuck::cast_slice_mut(&mut masks));
                    }
                    for r in 0..rows {
                        if k == 1 {
                            assert_eq!(limit[r].to_bits(), upper[r][0].to_bits(), "{isa:?} d={dim} row {r}");
                        }
                        assert!(limit[r] >= upper[r][0], "{isa:?} d={dim} k={k} row {r}");
                        let mut got = Vec::new();
                        from_masks(&masks[r * mw / 4..(r + 1) * mw / 4], k, &mut got);
                        let want: Vec<u32> =
                            (0..k as u32).filter(|&j| lower[r * kp + j as usize] <= limit[r]).collect();
                        assert_eq!(got, want, "{isa:?} d={dim} k={k} rows={rows} row {r}");
                        assert!(got.contains(&(label[r] as u32)));
                    }
                }
            }
        }
    }
}
