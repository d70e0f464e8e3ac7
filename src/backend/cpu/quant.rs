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
//! then an upper bound of v_a itself, from the f32 distance ‖x − c_a‖² and its error
//! bound (`prior_limits`). v_a is at least the smallest v_j, so every centroid that
//! could be the nearest is kept, ties included; and U lies within f32 rounding of v_a
//! where the smallest upper bound lies up to t_i above v_i, so fewer centroids pass.
//! The tile compares each lower bound with U as it goes, leaving a bit per centroid
//! instead of k bounds to store and sweep, and a row left with a alone takes the f32
//! distance already computed.

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
    /// Whether `near` runs its products on AMX (`near_amx`; the `int8-amx` kernel).
    pub amx: bool,
    groups: usize,
    n_panels: usize,
    panels: Vec<u8>,
    scale: Vec<f32>,
    norm2: Vec<f32>,
    /// ‖c_j‖² − a_j rounded down (`near`'s lower bounds start from it).
    nw: Vec<f32>,
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
        let (mut scale, mut norm2) = (vec![0.0f32; padded], vec![f32::INFINITY; padded]);
        let mut nw = vec![f32::INFINITY; padded];
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
            scale[j] = rc.scale;
            norm2[j] = norms[j];
            ta[j] = up32(g * norms[j] as f64 + 1e-36 * dim as f64);
            let w = norms[j] as f64 - ta[j] as f64;
            nw[j] = if (w as f32 as f64) > w { (w as f32).next_down() } else { w as f32 };
            tb[j] = up32(2.0 * rc.err as f64 + 32.0 * UNIT * rc.dq as f64);
            tc[j] = up32(2.0 * rc.norm as f64);
        }
        QuantCentroids { isa, amx: false, groups, n_panels, panels, scale, norm2, nw, ta, tb, tc }
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
    /// A lower bound of ‖x‖² (for `prior_limits`).
    xlo: Vec<f32>,
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
    xlo: &'a [f32],
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
            xlo: &self.xlo[r0..r0 + n],
        }
    }

    /// A lower bound of row r's ‖x‖² (within f32 rounding of it).
    pub fn sq_lo(&self, r: usize) -> f32 {
        self.xlo[r]
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
            xlo: vec![0.0; rows],
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
            .zip(c.xlo.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(ci, ((((codes, corr), alpha), (ex, xq)), xlo))| {
                for r in 0..corr.len() {
                    let row = &x[(ci * CHUNK + r) * dim..(ci * CHUNK + r + 1) * dim];
                    let out = &mut codes[r * kp4..(r + 1) * kp4];
                    (corr[r], alpha[r], ex[r], xq[r], xlo[r]) = code_one(isa, row, out);
                }
            });
        c
    }

    /// Code the first `rows` rows of `x` into this buffer (a tile).
    pub fn code(&mut self, x: &[f32], rows: usize, dim: usize) {
        for r in 0..rows {
            let out = &mut self.codes[r * self.kp4..(r + 1) * self.kp4];
            (self.corr[r], self.alpha[r], self.ex[r], self.xq[r], self.xlo[r]) =
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
        pick(&self.xlo, &mut out.xlo);
    }

    pub fn view(&self) -> RowView<'_> {
        RowView {
            kp4: self.kp4,
            codes: &self.codes,
            corr: &self.corr,
            alpha: &self.alpha,
            ex: &self.ex,
            xq: &self.xq,
            xlo: &self.xlo,
        }
    }
}

/// One row's code (into `out`, zero-padded) and its (corr, α, ‖e_x‖, ‖x'‖, ≤ ‖x‖²).
fn code_one(isa: Isa, row: &[f32], out: &mut [i8]) -> (i32, f32, f32, f32, f32) {
    let rc = code_row(isa, row, 1.0, isa.query_levels(), out);
    out[row.len()..].fill(0);
    (-128 * rc.sum, 2.0 * rc.scale, rc.err, rc.dq, rc.sq_lo)
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
/// bound's proof (module header) counts on.
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

/// The lower bound est_j − t_j of `near`, for one row's accumulator register in 512- or
/// 256-bit lanes, from centroid `at`: ((‖c_j‖² − a_j)↓ − α·(I_j·s_j)) − ‖e_x‖·2‖c_j‖ −
/// ‖x'‖·tb_j, three fused steps where `est_and_bound!` takes four and a subtraction.
/// Its roundings stay within the margins the bound leaves (module header):
/// - the conversion of I_j and the product, 2u of |α·s_j·I_j| ≤ 2‖x'‖‖c'_j‖, and each of
///   the three steps, u of a value below ‖c_j‖² + 2‖x'‖‖c'_j‖ + t_j: together
///   10u‖x'‖‖c'_j‖ of tb_j's 32u‖x'‖‖c'_j‖, and 3u‖c_j‖² of what a_j leaves beside the
///   norm's own rounding (at least 7u‖c_j‖²);
/// - 3u·t_j, within the 2⁻²⁰ relative margin every term of t_j is rounded up by.
///
/// The bits may differ from `bounds`' by those roundings.
macro_rules! near_lower {
    (512, $qc:expr, $at:expr, $acc:expr, $alpha:expr, $ex:expr, $xq:expr) => {{
        let (qc, at) = ($qc, $at);
        // SAFETY: the per-centroid vectors are padded to whole panels.
        let (s, w, tb, tc) = unsafe {
            (
                _mm512_loadu_ps(qc.scale.as_ptr().add(at)),
                _mm512_loadu_ps(qc.nw.as_ptr().add(at)),
                _mm512_loadu_ps(qc.tb.as_ptr().add(at)),
                _mm512_loadu_ps(qc.tc.as_ptr().add(at)),
            )
        };
        let q = _mm512_fnmadd_ps(_mm512_set1_ps($alpha), _mm512_mul_ps(_mm512_cvtepi32_ps($acc), s), w);
        _mm512_fnmadd_ps(_mm512_set1_ps($xq), tb, _mm512_fnmadd_ps(_mm512_set1_ps($ex), tc, q))
    }};
    (256, $qc:expr, $at:expr, $acc:expr, $alpha:expr, $ex:expr, $xq:expr) => {{
        let (qc, at) = ($qc, $at);
        // SAFETY: as above.
        let (s, w, tb, tc) = unsafe {
            (
                _mm256_loadu_ps(qc.scale.as_ptr().add(at)),
                _mm256_loadu_ps(qc.nw.as_ptr().add(at)),
                _mm256_loadu_ps(qc.tb.as_ptr().add(at)),
                _mm256_loadu_ps(qc.tc.as_ptr().add(at)),
            )
        };
        let q = _mm256_fnmadd_ps(_mm256_set1_ps($alpha), _mm256_mul_ps(_mm256_cvtepi32_ps($acc), s), w);
        _mm256_fnmadd_ps(_mm256_set1_ps($xq), tb, _mm256_fnmadd_ps(_mm256_set1_ps($ex), tc, q))
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

/// The limits of `near` for the rows `x` of a tile (at most TR, `dim` wide, coded as `tile`)
/// labelled `label` ahead: for each, `dist[r]`, an f32 distance ‖x − c_a‖² to the
/// previous centroid a within `f32_dist_rel` of the real one, and `limit[r]`, an upper
/// bound of v_a = ‖x − c_a‖² − ‖x‖² from it (its error bound added, the row code's
/// lower bound of ‖x‖² subtracted, rounded up). v_a is at least the row's smallest v_j,
/// so no centroid whose lower bound exceeds the limit can be the nearest; and as the
/// limit holds v_a within f32 rounding, not within the codes' error, it leaves about
/// half the codes' band. The tile's distances are computed together, its rows' sums
/// reduced by one shuffle network.
///
/// # Safety
/// `isa` must be supported by the CPU; `x` holds at most TR rows, `tile` their codes;
/// every label is below k.
pub unsafe fn prior_limits(
    isa: Isa,
    x: &[f32],
    tile: RowView<'_>,
    c: &crate::backend::Centroids,
    label: &[usize; TR],
    limit: &mut [f32; TR],
    dist: &mut [f32; TR],
) {
    let d = c.dim;
    let rows = x.len() / d;
    debug_assert!(rows <= TR && x.len() >= rows * d && label[..rows].iter().all(|&a| a < c.k));
    let row = |r: usize| x[r * d..].as_ptr();
    let cen: [*const f32; TR] = std::array::from_fn(|r| c.row(label[r.min(rows - 1)]).as_ptr());
    // SAFETY: the caller's instruction set; rows r < `rows` hold d values each, and so
    // does every centroid; unused rows are not read.
    *dist = unsafe {
        match isa {
            Isa::Avx512Vnni => dists512(row, &cen, rows, d),
            Isa::Avx2 => dists256(row, &cen, rows, d),
        }
    };
    let (rel, abs) = (f32_dist_rel(d), DIST_ABS * d as f64);
    // hi ≥ ‖x − c_a‖² (f32_dist_rel's 2⁻⁴⁰ covers the f64 roundings of hi); the 2⁻⁴⁵
    // term covers the subtraction's, and the last margin the f32 conversion's (to
    // nearest: half an ulp, or 2⁻¹⁵⁰ below the normal range).
    for r in 0..rows {
        let hi = dist[r] as f64 * (1.0 + rel) + abs;
        let lo = tile.xlo[r] as f64;
        let v = (hi - lo) + (hi + lo) * 2f64.powi(-45);
        limit[r] = (v + v.abs() * 2f64.powi(-22) + 1e-44) as f32;
    }
}

/// Per lane ‖x_r − c_r‖² of `rows` ≤ 8 rows (lanes past `rows`: 0): one fused chain per
/// row and lane, then the rows' 16 lanes summed by a shuffle tree, four levels as in
/// `sq_dist512`, so within `f32_dist_rel(d)`.
#[target_feature(enable = "avx512f")]
unsafe fn dists512(row: impl Fn(usize) -> *const f32, cen: &[*const f32; TR], rows: usize, d: usize) -> [f32; TR] {
    let mut acc = [_mm512_setzero_ps(); TR];
    for (r, a) in acc.iter_mut().enumerate().take(rows) {
        let (xp, cp) = (row(r), cen[r]);
        let mut i = 0;
        while i < d {
            let m: __mmask16 = if d - i >= 16 { 0xffff } else { (1u16 << (d - i)) - 1 };
            // SAFETY: the mask keeps both loads inside the rows (the caller's).
            let t = unsafe { _mm512_sub_ps(_mm512_maskz_loadu_ps(m, xp.add(i)), _mm512_maskz_loadu_ps(m, cp.add(i))) };
            *a = _mm512_fmadd_ps(t, t, *a);
            i += 16;
        }
    }
    // Pairs of rows: 128-bit blocks [r0 r1 | s0 s1] + [r2 r3 | s2 s3].
    let pair = |a: __m512, b: __m512| {
        _mm512_add_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(a, b), _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b))
    };
    let (ab, cd, ef, gh) = (pair(acc[0], acc[1]), pair(acc[2], acc[3]), pair(acc[4], acc[5]), pair(acc[6], acc[7]));
    // Quads: one 128-bit block per row.
    let quad = |p: __m512, q: __m512| {
        _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(p, q), _mm512_shuffle_f32x4::<0b11_01_11_01>(p, q))
    };
    let (abcd, efgh) = (quad(ab, cd), quad(ef, gh));
    // Within blocks: halves, then adjacent lanes, the order of `_mm512_reduce_add_ps`
    // (so `sq_dist512`'s bits, as that order stands).
    let block = |v: __m512| {
        let v = _mm512_add_ps(v, _mm512_permute_ps::<0b01_00_11_10>(v));
        _mm512_add_ps(v, _mm512_permute_ps::<0b10_11_00_01>(v))
    };
    let idx = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0);
    let all = _mm512_permutex2var_ps(block(abcd), idx, block(efgh));
    let mut out = [0.0f32; TR];
    // SAFETY: eight lanes into eight floats.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), _mm512_castps512_ps256(all)) };
    out
}

/// `dists512` with eight AVX2 lanes (a masked tail), the rows' lanes summed by `hadd`
/// and one cross-half add: three levels, as in `sq_dist256`'s tree.
#[target_feature(enable = "avx2,fma")]
unsafe fn dists256(row: impl Fn(usize) -> *const f32, cen: &[*const f32; TR], rows: usize, d: usize) -> [f32; TR] {
    let mut acc = [_mm256_setzero_ps(); TR];
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (r, a) in acc.iter_mut().enumerate().take(rows) {
        let (xp, cp) = (row(r), cen[r]);
        let mut i = 0;
        while i < d {
            // SAFETY: whole chunks inside the rows; the tail's mask keeps its loads there.
            let t = unsafe {
                if d - i >= 8 {
                    _mm256_sub_ps(_mm256_loadu_ps(xp.add(i)), _mm256_loadu_ps(cp.add(i)))
                } else {
                    let m = _mm256_cmpgt_epi32(_mm256_set1_epi32((d - i) as i32), lane);
                    _mm256_sub_ps(_mm256_maskload_ps(xp.add(i), m), _mm256_maskload_ps(cp.add(i), m))
                }
            };
            *a = _mm256_fmadd_ps(t, t, *a);
            i += 8;
        }
    }
    let ab = _mm256_hadd_ps(acc[0], acc[1]);
    let cd = _mm256_hadd_ps(acc[2], acc[3]);
    let ef = _mm256_hadd_ps(acc[4], acc[5]);
    let gh = _mm256_hadd_ps(acc[6], acc[7]);
    let (abcd, efgh) = (_mm256_hadd_ps(ab, cd), _mm256_hadd_ps(ef, gh));
    let all = _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(abcd, efgh), _mm256_permute2f128_ps::<0x31>(abcd, efgh));
    let mut out = [0.0f32; TR];
    // SAFETY: eight lanes into eight floats.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), all) };
    out
}

/// f32 ‖x − c‖² with the kernel's instruction set (`sq_dist512` or `sq_dist256`).
#[inline]
fn sq_dist(isa: Isa, x: &[f32], c: &[f32]) -> f32 {
    // SAFETY: `isa` is the kernel's, supported by the CPU (VNNI implies AVX-512 F).
    unsafe {
        match isa {
            Isa::Avx512Vnni => sq_dist512(x, c),
            Isa::Avx2 => sq_dist256(x, c),
        }
    }
}

/// The candidates of `rows` coded rows under limits known ahead, in one pass: bit l of
/// `masks[r·mask_words() + w]` is set when centroid j = 16w + l has its lower bound of
/// v_j (`near_lower!`: est_j − t_j within a few roundings) ≤ `limit[r]`. With
/// `limit[r]` an upper bound of some v_a (`prior_limits`), which is at least the
/// smallest, no centroid left out can be the row's nearest, ties included, and a itself
/// passes where its values are finite; padding centroids never pass a finite limit.
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
            for r in 0..R {
                let acc = if h == 0 { acc0[r] } else { acc1[r] };
                let lo = near_lower!(512, qc, at, acc, alpha[r], ex[r], xq[r]);
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
                for r in 0..R {
                    let acc = if e == 0 { acc0[r] } else { acc1[r] };
                    let lo = near_lower!(256, qc, at, acc, tile.alpha[r0 + r], tile.ex[r0 + r], tile.xq[r0 + r]);
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

/// `near` for a whole tile of TR rows with the integer products on the AMX unit
/// (`amx::Tiles`), two panels ahead of the bounds so that both units work at once;
/// the sums are `products_vnni!`'s exactly (i32 arithmetic wraps the same way and
/// ends in range), and the bounds and masks are `near_vnni`'s operations on them, so
/// the same bits. `sums` holds TR × padded_k() values. Measured slower than
/// `near_vnni` at d = 32 and 64 (docs/benchmarks.md), so only `--kernel int8-amx`
/// runs it.
///
/// # Safety
/// `tiles` is configured for this `tile`'s code width (`kp4`), which is at most
/// `amx::MAX_CODE_BYTES`; the CPU has AVX-512 VNNI; `tile` holds TR rows coded for it;
/// `masks` holds TR × mask_words() words.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn near_amx(
    tiles: &super::amx::Tiles,
    tile: RowView<'_>,
    qc: &QuantCentroids,
    limit: &[f32; TR],
    masks: &mut [u16],
    sums: &mut [i32],
) {
    let (kp, mw) = (qc.padded_k(), qc.mask_words());
    debug_assert!(tile.corr.len() == TR && sums.len() >= TR * kp && masks.len() >= TR * mw);
    let panel = |p: usize| {
        // SAFETY: p < n_panels; each panel holds `groups` groups of 128 bytes.
        unsafe { qc.panels.as_ptr().add(p * qc.groups * PW * 4) }
    };
    let out = sums.as_mut_ptr();
    // Three panels in flight: p + 2 on the matrix unit, p + 1's sums stored, p's
    // bounds on the vector units (a tile store waits for its products, and a load
    // for the store, so each is a panel's bounds apart).
    let n = qc.n_panels;
    // SAFETY (each `compute`/`store`): the caller's configuration and rows; panel p
    // goes through set p % 2, its sums to columns 32p..32p + 32 of the TR rows of
    // `sums` (a stride of kp i32).
    unsafe {
        tiles.rows(tile.codes.as_ptr(), tile.kp4);
        tiles.compute(0, panel(0));
        if n > 1 {
            tiles.compute(1, panel(1));
        }
        tiles.store(0, out, kp * 4);
    }
    let (alpha, ex, xq) = (&tile.alpha[..TR], &tile.ex[..TR], &tile.xq[..TR]);
    for p in 0..n {
        if p + 1 < n {
            // SAFETY: as above.
            unsafe { tiles.store((p + 1) % 2, out.add((p + 1) * PW), kp * 4) };
        }
        if p + 2 < n {
            // SAFETY: as above; set p % 2's sums (panel p) were stored a panel ago.
            unsafe { tiles.compute(p % 2, panel(p + 2)) };
        }
        for h in 0..2 {
            let at = p * PW + 16 * h;
            for r in 0..TR {
                // SAFETY: row r's sums for centroids at..at + 16 were stored above; with
                // the row's correction they are I_j, as `products_vnni!` ends.
                let raw = unsafe { _mm512_loadu_si512(out.add(r * kp + at) as *const __m512i) };
                let acc = _mm512_add_epi32(raw, _mm512_set1_epi32(tile.corr[r]));
                let lo = near_lower!(512, qc, at, acc, alpha[r], ex[r], xq[r]);
                masks[r * mw + 2 * p + h] = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(lo, _mm512_set1_ps(limit[r]));
            }
        }
    }
}

/// How many bits one row's `near` masks hold, by `popcnt` (which every CPU with the
/// 8-bit kernels has; the baseline target would count in software).
#[inline]
pub fn bits_set(masks: &[u64]) -> u32 {
    #[target_feature(enable = "popcnt")]
    unsafe fn count(masks: &[u64]) -> u32 {
        masks.iter().map(|w| w.count_ones()).sum()
    }
    // SAFETY: the quantised kernels run only on CPUs with AVX2 (`Kernel::resolve`),
    // all of which have popcnt.
    unsafe { count(masks) }
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
/// choice a proven one always equals. `known` is a candidate's f32 distance computed
/// already, within the same `f32_dist_rel` (`prior_limits`).
pub fn proven_nearest(
    isa: Isa,
    x: &[f32],
    cand: &[u32],
    c: &crate::backend::Centroids,
    known: Option<(u32, f32)>,
) -> Option<(u32, f32)> {
    let dist = |j: u32| -> f32 {
        match known {
            Some((a, d)) if a == j => d,
            _ => sq_dist(isa, x, c.row(j as usize)),
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

    /// `prior_limits` bounds v_a = ‖x − c_a‖² − ‖x‖² from above, within f32 rounding
    /// of it, with an f32 distance within `f32_dist_rel`; `near`'s masks are the lower
    /// bounds `bounds` stores that are at most the limit (but within a few roundings of
    /// it), AMX's are VNNI's bit for bit, every centroid at least as near as the previous
    /// one is marked, and `near`'s own lower bound of each v_j is at most v_j. For each instruction set
    /// this CPU has, whole and partial tiles, one and several panels, data near and far
    /// from the origin.
    #[test]
    fn near_marks_what_bounds_would_keep_under_the_same_limit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut unit = move || rng.random::<f32>() * 4.0 - 2.0;
        for (isa, offset) in
            [Isa::Avx512Vnni, Isa::Avx2].into_iter().filter(|i| i.supported()).flat_map(|i| [(i, 0.0f32), (i, 300.0)])
        {
            let mut value = || unit() + offset;
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
                    let (mut limit, mut dist, mut masks) = ([0.0f32; TR], [0.0f32; TR], vec![0u64; TR * mw / 4]);
                    let cents = crate::backend::Centroids::new(c.clone(), dim);
                    // SAFETY: `isa` is supported; the buffers have the sizes each asks.
                    unsafe {
                        bounds(view, rows, &qc, false, &mut lower, &mut upper);
                        prior_limits(isa, &x, view, &cents, &label, &mut limit, &mut dist);
                        near(view, rows, &qc, &limit, bytemuck::cast_slice_mut(&mut masks));
                    }
                    // The AMX tile gives `near`'s bits, where this CPU has it.
                    let amx_masks = (isa == Isa::Avx512Vnni
                        && rows == TR
                        && dim.next_multiple_of(4) <= super::super::amx::MAX_CODE_BYTES
                        && super::super::amx::available())
                    .then(|| {
                        let (mut m, mut sums) = (vec![0u64; TR * mw / 4], vec![0i32; TR * kp]);
                        // SAFETY: AMX is available, the codes at most 64 bytes wide; whole
                        // tile; the buffers have the sizes `near_amx` asks.
                        unsafe {
                            let tiles = super::super::amx::Tiles::configure(dim.next_multiple_of(4));
                            near_amx(&tiles, view, &qc, &limit, bytemuck::cast_slice_mut(&mut m), &mut sums);
                        }
                        m
                    });
                    for r in 0..rows {
                        let xr = &x[r * dim..(r + 1) * dim];
                        // v_j in f64: within 1e-12 relative of the real value here.
                        let v = |j: usize| {
                            let cj = &c[j * dim..(j + 1) * dim];
                            let d2: f64 = xr.iter().zip(cj).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
                            d2 - xr.iter().map(|&a| (a as f64).powi(2)).sum::<f64>()
                        };
                        let (a, scale) = (label[r], xr.iter().map(|&a| (a as f64).powi(2)).sum::<f64>());
                        let at = format!("{isa:?} d={dim} k={k} rows={rows} offset={offset} row {r}");
                        let d_a = v(a) + scale;
                        let err = (dist[r] as f64 - d_a).abs();
                        assert!(
                            err <= f32_dist_rel(dim) * d_a + DIST_ABS * dim as f64 + 1e-9 * scale,
                            "{at}: distance"
                        );
                        assert!(limit[r] as f64 >= v(a), "{at}: limit {} below v_a {}", limit[r], v(a));
                        assert!((limit[r] as f64 - v(a)) <= 1e-4 * scale.max(1.0), "{at}: limit far above v_a");
                        let mut got = Vec::new();
                        from_masks(&masks[r * mw / 4..(r + 1) * mw / 4], k, &mut got);
                        // `near`'s lower bounds are `bounds`' up to a few roundings: the
                        // same candidates but where one lies that close to the limit.
                        for j in 0..k {
                            let lo = lower[r * kp + j];
                            if (lo - limit[r]).abs() > 1e-5 * (lo.abs() + limit[r].abs()) {
                                assert_eq!(got.contains(&(j as u32)), lo <= limit[r], "{at}: centroid {j}");
                            }
                        }
                        if let Some(m) = &amx_masks {
                            assert_eq!(
                                m[r * mw / 4..(r + 1) * mw / 4],
                                masks[r * mw / 4..(r + 1) * mw / 4],
                                "{at}: AMX"
                            );
                        }
                        for j in 0..k {
                            assert!(lower[r * kp + j] as f64 <= v(j), "{at}: lower bound of {j} above v_j");
                            if v(j) <= v(a) {
                                assert!(got.contains(&(j as u32)), "{at}: {j}, as near as {a}, left out");
                            }
                        }
                    }
                    // `near`'s own lower bounds are below v_j: under a limit of v_j
                    // (rounded up), centroid j is marked, whatever the row.
                    for j in 0..k {
                        let up: [f32; TR] = std::array::from_fn(|r| {
                            let xr = &x[(r % rows) * dim..(r % rows + 1) * dim];
                            let cj = &c[j * dim..(j + 1) * dim];
                            let vj = xr.iter().zip(cj).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>()
                                - xr.iter().map(|&a| (a as f64).powi(2)).sum::<f64>();
                            let f = vj as f32;
                            if (f as f64) < vj { f.next_up() } else { f }
                        });
                        // SAFETY: as above.
                        unsafe { near(view, rows, &qc, &up, bytemuck::cast_slice_mut(&mut masks)) };
                        for r in 0..rows {
                            let bit = masks[r * mw / 4 + j / 64] >> (j % 64) & 1;
                            assert_eq!(
                                bit, 1,
                                "{isa:?} d={dim} k={k} offset={offset} row {r}: lower bound of {j} above v_j"
                            );
                        }
                    }
                }
            }
        }
    }
}
