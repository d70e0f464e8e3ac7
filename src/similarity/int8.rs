//! The exact search's fast scan on x86-64 with AVX-512 VNNI: every (query, base) score
//! is first estimated from 8-bit codes (`vpdpbusd`: 64 multiply-adds per instruction,
//! four times the f32 FMA rate), and only pairs the estimate cannot rule out are scored
//! exactly (f64) and offered to the running top-k. Hand-written because no crate in
//! our stack computes int8 GEMM tiles, and the filter must sit inside the tile loop so
//! that no score matrix is ever stored.
//!
//! Why it is exact. Each row v (already scaled: σ = 1 for inner product, 1/‖v‖ for
//! cosine) is coded as v ≈ v' = s·c with c ∈ [−127, 127]^d and s = max|v|/127. For a
//! query q and base row b, with e_q = q − q' and e_b = b − b':
//!     q·b − q'·b' = e_q·b + q'·e_b,   so   |q·b − q'·b'| ≤ ‖e_q‖‖b‖ + ‖q'‖‖e_b‖
//! (Cauchy–Schwarz). c_q·c_b is an exact integer, so q'·b' = s_q s_b (c_q·c_b) up to
//! f32 rounding, which the margin η covers (2⁻²⁰ of the magnitudes involved, far above
//! the few ulps it can be). A pair whose upper bound q'·b' + ‖e_q‖‖b‖ + ‖q'‖‖e_b‖ + η
//! is below the k-th best exact score already kept cannot be in the top k, so it is
//! skipped; every other pair is scored in f64 from the original vectors, as before.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::{Hit, Side, TopK, dot64};

/// Queries per register tile (12 × 2 accumulators of 16 lanes).
const QT: usize = 12;
/// Base rows per packed panel (two 16-lane registers).
const PW: usize = 32;
/// Base rows per cache block (2048 × 384 B = 768 KiB: stays in a core's L2).
const SUB_PANELS: usize = 64;

/// Widest rows the scan takes: its i32 accumulators hold d · 255 · 127 < 2³¹.
pub const MAX_DIM: usize = 60_000;

/// The instruction set a scan runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 VNNI: `vpdpbusd`, 64 products per instruction, codes in ±127.
    Avx512Vnni,
    /// AVX2: `vpmaddubsw` + `vpmaddwd`, 32 products per pair of instructions. Its i16
    /// pair sums saturate at 32,767, so query codes stay in ±63 (2 · 255 · 63 < 2¹⁵).
    Avx2,
}

impl Isa {
    /// The best this CPU has, if any.
    pub fn best() -> Option<Isa> {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
        {
            Some(Isa::Avx512Vnni)
        } else {
            Isa::Avx2.supported().then_some(Isa::Avx2)
        }
    }

    pub fn supported(self) -> bool {
        match self {
            Isa::Avx512Vnni => Isa::best() == Some(Isa::Avx512Vnni),
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        }
    }

    /// Largest code of the signed (broadcast) operand.
    pub(crate) fn query_levels(self) -> f32 {
        match self {
            Isa::Avx512Vnni => 127.0,
            Isa::Avx2 => 63.0,
        }
    }
}

/// One row's code and the terms of its error bound (all rounded up).
#[derive(Clone, Copy, Default)]
pub(crate) struct RowCode {
    /// s·σ: the code's scale in the scaled space.
    pub scale: f32,
    /// Σ c.
    pub sum: i32,
    /// ‖vσ‖.
    pub norm: f32,
    /// ‖s·c·σ‖ (the dequantised row).
    pub dq: f32,
    /// ‖vσ − s·c·σ‖.
    pub err: f32,
    /// A lower bound of ‖vσ‖².
    pub sq_lo: f32,
}

/// Round a non-negative bound up by a relative margin covering the f32 sums behind it.
fn up(x: f64, dim: usize) -> f32 {
    let y = x * (1.0 + (dim as f64 + 16.0) * 2f64.powi(-22));
    let f = y as f32;
    if (f as f64) < y { f.next_up() } else { f }
}

/// A lower bound of ‖vσ‖² from the f32 sum of squares `ss` (non-negative terms, each
/// lane's chain and the lanes' tree within the margin `up` takes; `1e-36·d` covers
/// squares that underflow), rounded down.
fn sq_down(ss: f32, sigma: f64, dim: usize) -> f32 {
    let y = (ss as f64 * sigma * sigma * (1.0 - (dim as f64 + 16.0) * 2f64.powi(-22)) - 1e-36 * dim as f64).max(0.0);
    let f = y as f32;
    if (f as f64) > y { f.next_down() } else { f }
}

/// Code one row into `out` (its first `v.len()` bytes; the caller pads with 0).
/// Vectorised by hand: the plain loop calls libm's `rintf`/`fmaf` per element on a
/// baseline x86-64 build, and its f32 sums do not vectorise.
pub(crate) fn code_row(isa: Isa, v: &[f32], sigma: f64, levels: f32, out: &mut [i8]) -> RowCode {
    // SAFETY: a `Scan` exists only for an `isa` the CPU supports.
    unsafe {
        match isa {
            Isa::Avx512Vnni => code_row_avx512(v, sigma, levels, out),
            Isa::Avx2 => code_row_avx2(v, sigma, levels, out),
        }
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn code_row_avx2(v: &[f32], sigma: f64, levels: f32, out: &mut [i8]) -> RowCode {
    const L: usize = 8;
    let d = v.len();
    let (mut mx, mut ss) = ([0.0f32; L], [0.0f32; L]);
    let n = d / L * L;
    for x in v[..n].chunks_exact(L) {
        for l in 0..L {
            mx[l] = mx[l].max(x[l].abs());
            ss[l] = x[l].mul_add(x[l], ss[l]);
        }
    }
    for (l, x) in v[n..].iter().enumerate() {
        mx[l] = mx[l].max(x.abs());
        ss[l] = x.mul_add(*x, ss[l]);
    }
    let m = mx.iter().fold(0.0f32, |a, b| a.max(*b));
    let ss_v: f32 = ss.iter().sum();
    if m == 0.0 || sigma == 0.0 || !m.is_finite() {
        out[..d].fill(0);
        let nrm = (ss_v as f64).sqrt() * sigma;
        return RowCode {
            scale: 0.0,
            sum: 0,
            norm: up(nrm, d),
            dq: 0.0,
            err: up(nrm, d),
            sq_lo: sq_down(ss_v, sigma, d),
        };
    }
    let s = m / levels;
    let inv = levels / m;
    let (mut sr, mut sc, mut sm) = ([0.0f32; L], [0i32; L], [0i32; L]);
    let mut one = |l: usize, x: f32, o: &mut i8| {
        let c = (x * inv).round_ties_even().clamp(-levels, levels);
        let r = (-s).mul_add(c, x);
        sr[l] = r.mul_add(r, sr[l]);
        let ci = c as i32;
        sc[l] += ci * ci;
        sm[l] += ci;
        *o = ci as i8;
    };
    for (x, o) in v[..n].chunks_exact(L).zip(out[..n].chunks_exact_mut(L)) {
        for l in 0..L {
            one(l, x[l], &mut o[l]);
        }
    }
    for (l, (x, o)) in v[n..].iter().zip(&mut out[n..d]).enumerate() {
        one(l, *x, o);
    }
    let ss_r: f32 = sr.iter().sum();
    let ss_c: i64 = sc.iter().map(|x| *x as i64).sum();
    RowCode {
        scale: (s as f64 * sigma) as f32,
        sum: sm.iter().sum(),
        norm: up((ss_v as f64).sqrt() * sigma, d),
        dq: up(s as f64 * sigma * (ss_c as f64).sqrt(), d),
        err: up((ss_r as f64).sqrt() * sigma, d),
        sq_lo: sq_down(ss_v, sigma, d),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn code_row_avx512(v: &[f32], sigma: f64, levels: f32, out: &mut [i8]) -> RowCode {
    let d = v.len();
    assert!(out.len() >= d);
    let vp = v.as_ptr();
    let mask_at = |i: usize| -> __mmask16 { if d - i >= 16 { 0xffff } else { (1u16 << (d - i)) - 1 } };
    let (mut vmax, mut vss) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for i in (0..d).step_by(16) {
        // SAFETY: the mask keeps the load inside `v`.
        let x = unsafe { _mm512_maskz_loadu_ps(mask_at(i), vp.add(i)) };
        vmax = _mm512_max_ps(vmax, _mm512_abs_ps(x));
        vss = _mm512_fmadd_ps(x, x, vss);
    }
    let m = _mm512_reduce_max_ps(vmax);
    let ss_v = _mm512_reduce_add_ps(vss);
    if m == 0.0 || sigma == 0.0 || !m.is_finite() {
        out[..d].fill(0);
        let n = (ss_v as f64).sqrt() * sigma;
        return RowCode { scale: 0.0, sum: 0, norm: up(n, d), dq: 0.0, err: up(n, d), sq_lo: sq_down(ss_v, sigma, d) };
    }
    let s = m / levels;
    let inv = _mm512_set1_ps(levels / m);
    let (lo, hi, neg_s) = (_mm512_set1_ps(-levels), _mm512_set1_ps(levels), _mm512_set1_ps(-s));
    let (mut vr, mut vc, mut vsum) = (_mm512_setzero_ps(), _mm512_setzero_si512(), _mm512_setzero_si512());
    let op = out.as_mut_ptr();
    for i in (0..d).step_by(16) {
        let k = mask_at(i);
        let x = unsafe { _mm512_maskz_loadu_ps(k, vp.add(i)) };
        let c = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(x, inv));
        let c = _mm512_min_ps(_mm512_max_ps(c, lo), hi);
        let r = _mm512_fmadd_ps(neg_s, c, x);
        vr = _mm512_fmadd_ps(r, r, vr);
        let ci = _mm512_cvtps_epi32(c);
        vc = _mm512_add_epi32(vc, _mm512_mullo_epi32(ci, ci));
        vsum = _mm512_add_epi32(vsum, ci);
        // SAFETY: the mask keeps the store inside `out`.
        unsafe { _mm512_mask_cvtsepi32_storeu_epi8(op.add(i) as *mut _, k, ci) };
    }
    let ss_r = _mm512_reduce_add_ps(vr);
    let ss_c = _mm512_reduce_add_epi32(vc) as i64;
    let sum = _mm512_reduce_add_epi32(vsum);
    RowCode {
        scale: (s as f64 * sigma) as f32,
        sum,
        norm: up((ss_v as f64).sqrt() * sigma, d),
        dq: up(s as f64 * sigma * (ss_c as f64).sqrt(), d),
        err: up((ss_r as f64).sqrt() * sigma, d),
        sq_lo: sq_down(ss_v, sigma, d),
    }
}

/// Queries coded row-major (rows padded to whole tiles, `kp` bytes per row).
struct QueryCodes {
    kp: usize,
    codes: Vec<i8>,
    rows: Vec<RowCode>,
}

fn code_queries(isa: Isa, exact: &[f32], scale: &[f64], dim: usize) -> QueryCodes {
    let kp = dim.next_multiple_of(4);
    let n = exact.len() / dim;
    let mut codes = vec![0i8; n.next_multiple_of(QT) * kp];
    let mut rows = vec![RowCode::default(); n];
    codes.par_chunks_mut(kp).zip(rows.par_iter_mut()).enumerate().for_each(|(i, (c, r))| {
        *r = code_row(isa, &exact[i * dim..(i + 1) * dim], scale[i], isa.query_levels(), c);
    });
    QueryCodes { kp, codes, rows }
}

/// Base rows packed per panel of 32: for each group g of four features, 32 rows × 4
/// bytes (c + 128, unsigned, as `vpdpbusd` takes them); per-row terms padded likewise.
/// The buffers are reused from chunk to chunk.
#[derive(Default)]
struct BasePanels {
    groups: usize,
    packed: Vec<u8>,
    rows: Vec<RowCode>,
    scale: Vec<f32>,
    norm: Vec<f32>,
    err: Vec<f32>,
    n: usize,
    /// Largest ‖b‖, ‖b'‖, ‖e_b‖ (for the rounding margin).
    max_norm: f32,
    max_dq: f32,
    max_err: f32,
}

impl BasePanels {
    fn pack(&mut self, isa: Isa, exact: &[f32], scale: &[f64], dim: usize) {
        let kp = dim.next_multiple_of(4);
        let groups = kp / 4;
        let n = exact.len() / dim;
        let panels = n.div_ceil(PW);
        self.groups = groups;
        self.n = n;
        self.packed.resize(panels * groups * PW * 4, 128);
        self.rows.clear();
        self.rows.resize(panels * PW, RowCode::default());
        self.packed.par_chunks_mut(groups * PW * 4).zip(self.rows.par_chunks_mut(PW)).enumerate().for_each_init(
            || vec![0i8; kp],
            |code, (p, (dst, rc))| {
                for (l, r) in rc.iter_mut().enumerate() {
                    let j = p * PW + l;
                    if j < n {
                        *r = code_row(isa, &exact[j * dim..(j + 1) * dim], scale[j], 127.0, code);
                    } else {
                        code.fill(0);
                    }
                    for (g, quad) in code.chunks_exact(4).enumerate() {
                        let w = u32::from_ne_bytes(std::array::from_fn(|t| quad[t] as u8)) ^ 0x8080_8080;
                        dst[(g * PW + l) * 4..(g * PW + l) * 4 + 4].copy_from_slice(&w.to_ne_bytes());
                    }
                }
            },
        );
        let rows = &self.rows;
        let max = |f: fn(&RowCode) -> f32| rows.iter().map(f).fold(0.0f32, f32::max);
        (self.max_norm, self.max_dq, self.max_err) = (max(|r| r.norm), max(|r| r.dq), max(|r| r.err));
        self.scale.clear();
        self.scale.extend(rows.iter().map(|r| r.scale));
        self.norm.clear();
        self.norm.extend(rows.iter().map(|r| r.norm));
        self.err.clear();
        self.err.extend(rows.iter().map(|r| r.err));
    }
}

/// Integer scores c_q·(c_b + 128) of QT queries (row stride kp) against one panel.
///
/// # Safety
/// AVX-512 F/BW/VNNI must be present (`Isa::Avx512Vnni.supported()`); `q` holds QT rows of `4·groups`
/// bytes, `panel` `groups × 128` bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_scores(q: &[i8], groups: usize, panel: &[u8], out: &mut [i32; QT * PW]) {
    debug_assert!(q.len() >= QT * groups * 4 && panel.len() >= groups * PW * 4);
    let kp = groups * 4;
    let qp = q.as_ptr();
    let bp = panel.as_ptr();
    let mut acc0 = [_mm512_setzero_si512(); QT];
    let mut acc1 = [_mm512_setzero_si512(); QT];
    for g in 0..groups {
        // SAFETY: in bounds by the caller's contract.
        let (b0, b1) = unsafe {
            (
                _mm512_loadu_si512(bp.add(g * PW * 4) as *const __m512i),
                _mm512_loadu_si512(bp.add(g * PW * 4 + 64) as *const __m512i),
            )
        };
        for i in 0..QT {
            let w = unsafe { (qp.add(i * kp + g * 4) as *const i32).read_unaligned() };
            let a = _mm512_set1_epi32(w);
            acc0[i] = _mm512_dpbusd_epi32(acc0[i], b0, a);
            acc1[i] = _mm512_dpbusd_epi32(acc1[i], b1, a);
        }
    }
    let op = out.as_mut_ptr();
    for i in 0..QT {
        unsafe {
            _mm512_storeu_si512(op.add(i * PW) as *mut __m512i, acc0[i]);
            _mm512_storeu_si512(op.add(i * PW + 16) as *mut __m512i, acc1[i]);
        }
    }
}

/// Per-query terms of the filter.
#[derive(Clone, Copy)]
struct QueryTerms {
    corr: i32,
    scale: f32,
    err: f32,
    dq: f32,
    /// Pairs pass when their estimate reaches this (−inf until the list is full).
    lim: f32,
    eta: f64,
}

/// Bit l of `masks[i]`: base row l of the panel may beat query i's limit.
///
/// # Safety
/// As `tile_scores`; the slices hold one panel's 32 per-row terms.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn filter(
    s: &[i32; QT * PW],
    terms: &[QueryTerms],
    scale: &[f32],
    norm: &[f32],
    err: &[f32],
    valid: u32,
    masks: &mut [u32; QT],
) {
    unsafe {
        let half = |v: &[f32], h: usize| _mm512_loadu_ps(v.as_ptr().add(16 * h));
        let (sb, nb, eb) =
            ([half(scale, 0), half(scale, 1)], [half(norm, 0), half(norm, 1)], [half(err, 0), half(err, 1)]);
        for (i, t) in terms.iter().enumerate() {
            let mut m = 0u32;
            for h in 0..2 {
                let acc = _mm512_loadu_si512(s.as_ptr().add(i * PW + 16 * h) as *const __m512i);
                let dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_set1_epi32(t.corr)));
                let e = _mm512_fmadd_ps(_mm512_set1_ps(t.err), nb[h], _mm512_mul_ps(_mm512_set1_ps(t.dq), eb[h]));
                let est = _mm512_fmadd_ps(_mm512_set1_ps(t.scale), _mm512_mul_ps(dot, sb[h]), e);
                let pass = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(est, _mm512_set1_ps(t.lim));
                m |= (pass as u32) << (16 * h);
            }
            masks[i] = m & valid;
        }
    }
}

/// `tile_scores` with AVX2: `vpmaddubsw` multiplies the unsigned base bytes by the
/// signed query bytes (|c_q| ≤ 63, so no pair sum saturates) and `vpmaddwd` by 1 widens
/// the pairs to the same four-product i32 lanes as `vpdpbusd`. Sub-tiles of 4 queries ×
/// 16 rows keep 8 accumulators in the 16 registers.
///
/// # Safety
/// AVX2 and FMA must be present; sizes as `tile_scores`.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_scores_avx2(q: &[i8], groups: usize, panel: &[u8], out: &mut [i32; QT * PW]) {
    debug_assert!(q.len() >= QT * groups * 4 && panel.len() >= groups * PW * 4);
    let kp = groups * 4;
    let qp = q.as_ptr();
    let bp = panel.as_ptr();
    let op = out.as_mut_ptr();
    let ones = _mm256_set1_epi16(1);
    for h in 0..2 {
        for qb in (0..QT).step_by(4) {
            let mut acc0 = [_mm256_setzero_si256(); 4];
            let mut acc1 = [_mm256_setzero_si256(); 4];
            for g in 0..groups {
                // SAFETY: in bounds by the caller's contract.
                let (b0, b1) = unsafe {
                    let at = bp.add(g * PW * 4 + h * 64);
                    (_mm256_loadu_si256(at as *const __m256i), _mm256_loadu_si256(at.add(32) as *const __m256i))
                };
                for i in 0..4 {
                    let w = unsafe { (qp.add((qb + i) * kp + g * 4) as *const i32).read_unaligned() };
                    let a = _mm256_set1_epi32(w);
                    acc0[i] = _mm256_add_epi32(acc0[i], _mm256_madd_epi16(_mm256_maddubs_epi16(b0, a), ones));
                    acc1[i] = _mm256_add_epi32(acc1[i], _mm256_madd_epi16(_mm256_maddubs_epi16(b1, a), ones));
                }
            }
            for i in 0..4 {
                unsafe {
                    _mm256_storeu_si256(op.add((qb + i) * PW + h * 16) as *mut __m256i, acc0[i]);
                    _mm256_storeu_si256(op.add((qb + i) * PW + h * 16 + 8) as *mut __m256i, acc1[i]);
                }
            }
        }
    }
}

/// `filter` with AVX2 (8 lanes at a time).
///
/// # Safety
/// As `tile_scores_avx2`; the slices hold one panel's 32 per-row terms.
#[target_feature(enable = "avx2,fma")]
unsafe fn filter_avx2(
    s: &[i32; QT * PW],
    terms: &[QueryTerms],
    scale: &[f32],
    norm: &[f32],
    err: &[f32],
    valid: u32,
    masks: &mut [u32; QT],
) {
    unsafe {
        for (i, t) in terms.iter().enumerate() {
            let mut m = 0u32;
            for e8 in 0..4 {
                let at = 8 * e8;
                let acc = _mm256_loadu_si256(s.as_ptr().add(i * PW + at) as *const __m256i);
                let dot = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc, _mm256_set1_epi32(t.corr)));
                let e = _mm256_fmadd_ps(
                    _mm256_set1_ps(t.err),
                    _mm256_loadu_ps(norm.as_ptr().add(at)),
                    _mm256_mul_ps(_mm256_set1_ps(t.dq), _mm256_loadu_ps(err.as_ptr().add(at))),
                );
                let est = _mm256_fmadd_ps(
                    _mm256_set1_ps(t.scale),
                    _mm256_mul_ps(dot, _mm256_loadu_ps(scale.as_ptr().add(at))),
                    e,
                );
                let pass = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(est, _mm256_set1_ps(t.lim)));
                m |= (pass as u32) << at;
            }
            masks[i] = m & valid;
        }
    }
}

/// The f32 limit for a list: its k-th exact score less the margin, rounded down.
fn limit(list: &TopK, eta: f64) -> f32 {
    if list.hits.len() < list.k {
        return f32::NEG_INFINITY;
    }
    let x = list.kth - eta;
    let f = x as f32;
    if (f as f64) > x { f.next_down() } else { f }
}

/// The 8-bit scan of one query set: queries coded once, base buffers reused per chunk.
pub struct Scan {
    isa: Isa,
    qc: QueryCodes,
    bp: BasePanels,
}

impl Scan {
    /// Code the queries; None when the CPU lacks `isa`.
    pub fn new(isa: Isa, q: &Side<'_>, dim: usize) -> Option<Self> {
        isa.supported().then(|| Scan { isa, qc: code_queries(isa, q.exact, q.scale, dim), bp: BasePanels::default() })
    }

    /// `search_chunk` through the 8-bit filter, with the queries `new` was given.
    pub fn chunk(&mut self, q: &Side<'_>, b: &Side<'_>, dim: usize, base_offset: u64, lists: &mut [TopK]) {
        self.bp.pack(self.isa, b.exact, b.scale, dim);
        scan(self.isa, &self.qc, &self.bp, q, b, dim, base_offset, lists);
    }
}

#[allow(clippy::too_many_arguments)]
fn scan(
    isa: Isa,
    qc: &QueryCodes,
    bp: &BasePanels,
    q: &Side<'_>,
    b: &Side<'_>,
    dim: usize,
    base_offset: u64,
    lists: &mut [TopK],
) {
    let groups = bp.groups;
    let panel_bytes = groups * PW * 4;
    let n_panels = bp.n.div_ceil(PW);
    for sub in (0..n_panels).step_by(SUB_PANELS) {
        let sub_end = (sub + SUB_PANELS).min(n_panels);
        lists.par_chunks_mut(QT).enumerate().for_each_init(
            || Box::new([0i32; QT * PW]),
            |buf, (ti, tl)| {
                let q0 = ti * QT;
                let qtile = &qc.codes[q0 * qc.kp..(q0 + QT) * qc.kp];
                let mut terms: Vec<QueryTerms> = tl
                    .iter()
                    .enumerate()
                    .map(|(r, l)| {
                        let rc = qc.rows[q0 + r];
                        let eta = 2f64.powi(-20)
                            * (rc.dq as f64 * (bp.max_dq as f64 + bp.max_err as f64)
                                + rc.err as f64 * bp.max_norm as f64);
                        QueryTerms {
                            corr: 128 * rc.sum,
                            scale: rc.scale,
                            err: rc.err,
                            dq: rc.dq,
                            lim: limit(l, eta),
                            eta,
                        }
                    })
                    .collect();
                let mut masks = [0u32; QT];
                for p in sub..sub_end {
                    let o = p * PW;
                    let valid = if o + PW <= bp.n { u32::MAX } else { (1u32 << (bp.n - o)) - 1 };
                    let panel = &bp.packed[p * panel_bytes..(p + 1) * panel_bytes];
                    let (sc, nm, er) = (&bp.scale[o..o + PW], &bp.norm[o..o + PW], &bp.err[o..o + PW]);
                    // SAFETY: `Scan::new` checked the CPU has `isa`; the slices are one
                    // query tile and one panel.
                    unsafe {
                        match isa {
                            Isa::Avx512Vnni => {
                                tile_scores(qtile, groups, panel, buf);
                                filter(buf, &terms, sc, nm, er, valid, &mut masks);
                            }
                            Isa::Avx2 => {
                                tile_scores_avx2(qtile, groups, panel, buf);
                                filter_avx2(buf, &terms, sc, nm, er, valid, &mut masks);
                            }
                        }
                    }
                    for (r, t) in terms.iter_mut().enumerate() {
                        let mut m = masks[r];
                        if m == 0 {
                            continue;
                        }
                        let qi = q0 + r;
                        let qr = &q.exact[qi * dim..(qi + 1) * dim];
                        let list = &mut tl[r];
                        while m != 0 {
                            let j = o + m.trailing_zeros() as usize;
                            m &= m - 1;
                            let exact = dot64(qr, &b.exact[j * dim..(j + 1) * dim]) * q.scale[qi] * b.scale[j];
                            list.push_hit(Hit { index: base_offset + j as u64, score: exact });
                        }
                        t.lim = limit(list, t.eta);
                    }
                }
            },
        );
    }
}
