//! A fused distance kernel for x86-64 with AVX2 + FMA: for 6 rows at a time and
//! panels of 16 centroids it keeps the dot products in 12 registers, writes
//! v = ‖c‖² − 2x·c straight into a small per-row buffer and tracks, lane-wise in
//! registers, the two smallest upper bounds v + e (e: the rounding bound, see
//! `ErrorTerms`). Where one panel holds every centroid (k ≤ 16), `one_panel` decides
//! each row in registers instead. Hand-written because a general SGEMM (matrixmultiply, measured in
//! benches/assign.rs) packs both operands on every call and stores a C tile per short
//! (16–64) inner product, which costs it about a third of the time at k-means shapes.

use super::ErrorTerms;

/// Centroids per panel (two 8-lane registers).
pub const PANEL: usize = 16;
/// Rows per register tile.
pub const ROWS: usize = 6;

/// Centroids rearranged once per pass: panel p holds, for each feature, the values of
/// centroids 16p..16p+16. Padding centroids have norm +inf, so they never win.
pub struct PackedCentroids {
    pub panels: Vec<f32>,
    pub norms: Vec<f32>,
    /// Padded copies of the per-centroid error terms (0 for padding).
    pub err_a: Vec<f32>,
    pub err_b: Vec<f32>,
    pub n_panels: usize,
    pub dim: usize,
}

impl PackedCentroids {
    pub fn new(data: &[f32], norms: &[f32], err: &ErrorTerms, dim: usize) -> Self {
        let k = norms.len();
        let n_panels = k.div_ceil(PANEL);
        let mut panels = vec![0.0f32; n_panels * dim * PANEL];
        let mut padded = vec![f32::INFINITY; n_panels * PANEL];
        let mut err_a = vec![0.0f32; n_panels * PANEL];
        let mut err_b = vec![0.0f32; n_panels * PANEL];
        for j in 0..k {
            let (p, l) = (j / PANEL, j % PANEL);
            for f in 0..dim {
                panels[(p * dim + f) * PANEL + l] = data[j * dim + f];
            }
            padded[j] = norms[j];
            err_a[j] = err.a[j];
            err_b[j] = err.b[j];
        }
        PackedCentroids { panels, norms: padded, err_a, err_b, n_panels, dim }
    }

    /// Length of one row's value buffer (k rounded up to whole panels).
    pub fn padded_k(&self) -> usize {
        self.n_panels * PANEL
    }
}

/// Whether the running CPU has what the fused kernel needs.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// v[r][j] = ‖c_j‖² − 2 x_r·c_j for `rows` ≤ ROWS rows starting at `x` (row stride
/// dim), written to `out` with row stride `padded_k()`; `upper[r]` receives the two
/// smallest upper bounds v + a_j + ‖x_r‖·b_j of row r, given ‖x_r‖ in `xnorm`. With
/// `avx512` a panel of 16 centroids is one register (6 accumulators and 12 running
/// minima in the 32 registers), with the same operations per lane, so the same bits.
///
/// # Safety
/// The CPU must support AVX2 and FMA (`available()`), and AVX-512 F with `avx512`
/// (`available512()`); `x` must hold `rows × dim` values and `out` `rows × padded_k()`.
#[cfg(target_arch = "x86_64")]
pub unsafe fn values(
    x: &[f32],
    rows: usize,
    pk: &PackedCentroids,
    xnorm: &[f32; ROWS],
    out: &mut [f32],
    upper: &mut [[f32; 2]; ROWS],
    avx512: bool,
) {
    debug_assert!(x.len() >= rows * pk.dim && out.len() >= rows * pk.padded_k());
    macro_rules! run {
        ($r:literal) => {
            if avx512 { tile512::<$r>(x, pk, xnorm, out, upper) } else { tile::<$r>(x, pk, xnorm, out, upper) }
        };
    }
    unsafe {
        match rows {
            6 => run!(6),
            5 => run!(5),
            4 => run!(4),
            3 => run!(3),
            2 => run!(2),
            1 => run!(1),
            _ => unreachable!("tile of {rows} rows"),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize>(
    x: &[f32],
    pk: &PackedCentroids,
    xnorm: &[f32; ROWS],
    out: &mut [f32],
    upper: &mut [[f32; 2]; ROWS],
) {
    use std::arch::x86_64::*;
    let dim = pk.dim;
    let kp = pk.padded_k();
    let xp = x.as_ptr();
    let two = _mm256_set1_ps(2.0);
    let inf = _mm256_set1_ps(f32::INFINITY);
    let mut m1 = [inf; R];
    let mut m2 = [inf; R];
    let mut xn = [_mm256_setzero_ps(); R];
    for r in 0..R {
        xn[r] = _mm256_set1_ps(xnorm[r]);
    }
    for p in 0..pk.n_panels {
        let mut acc0 = [_mm256_setzero_ps(); R];
        let mut acc1 = [_mm256_setzero_ps(); R];
        let bp = unsafe { pk.panels.as_ptr().add(p * dim * PANEL) };
        for f in 0..dim {
            let (b0, b1) = unsafe { (_mm256_loadu_ps(bp.add(f * PANEL)), _mm256_loadu_ps(bp.add(f * PANEL + 8))) };
            for r in 0..R {
                let a = unsafe { _mm256_broadcast_ss(&*xp.add(r * dim + f)) };
                acc0[r] = _mm256_fmadd_ps(a, b0, acc0[r]);
                acc1[r] = _mm256_fmadd_ps(a, b1, acc1[r]);
            }
        }
        let o = p * PANEL;
        let (n0, n1, a0, a1, e0, e1) = unsafe {
            (
                _mm256_loadu_ps(pk.norms.as_ptr().add(o)),
                _mm256_loadu_ps(pk.norms.as_ptr().add(o + 8)),
                _mm256_loadu_ps(pk.err_a.as_ptr().add(o)),
                _mm256_loadu_ps(pk.err_a.as_ptr().add(o + 8)),
                _mm256_loadu_ps(pk.err_b.as_ptr().add(o)),
                _mm256_loadu_ps(pk.err_b.as_ptr().add(o + 8)),
            )
        };
        for r in 0..R {
            // 2·dot is exact, so n − 2·dot rounds once, like the scalar expression.
            let v0 = _mm256_fnmadd_ps(two, acc0[r], n0);
            let v1 = _mm256_fnmadd_ps(two, acc1[r], n1);
            let u0 = _mm256_fmadd_ps(xn[r], e0, _mm256_add_ps(v0, a0));
            let u1 = _mm256_fmadd_ps(xn[r], e1, _mm256_add_ps(v1, a1));
            unsafe {
                let dst = out.as_mut_ptr().add(r * kp + o);
                _mm256_storeu_ps(dst, v0);
                _mm256_storeu_ps(dst.add(8), v1);
            }
            m2[r] = _mm256_min_ps(m2[r], _mm256_max_ps(m1[r], u0));
            m1[r] = _mm256_min_ps(m1[r], u0);
            m2[r] = _mm256_min_ps(m2[r], _mm256_max_ps(m1[r], u1));
            m1[r] = _mm256_min_ps(m1[r], u1);
        }
    }
    for r in 0..R {
        let (mut a, mut b) = ([0.0f32; 8], [0.0f32; 8]);
        unsafe {
            _mm256_storeu_ps(a.as_mut_ptr(), m1[r]);
            _mm256_storeu_ps(b.as_mut_ptr(), m2[r]);
        }
        upper[r] = super::two_smallest(a.iter().chain(&b).copied());
    }
}

/// Whether the running CPU has what `values(.., avx512 = true)` needs.
pub fn available512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tile512<const R: usize>(
    x: &[f32],
    pk: &PackedCentroids,
    xnorm: &[f32; ROWS],
    out: &mut [f32],
    upper: &mut [[f32; 2]; ROWS],
) {
    use std::arch::x86_64::*;
    let dim = pk.dim;
    let kp = pk.padded_k();
    let xp = x.as_ptr();
    let two = _mm512_set1_ps(2.0);
    let inf = _mm512_set1_ps(f32::INFINITY);
    let mut m1 = [inf; R];
    let mut m2 = [inf; R];
    for p in 0..pk.n_panels {
        let mut acc = [_mm512_setzero_ps(); R];
        let bp = unsafe { pk.panels.as_ptr().add(p * dim * PANEL) };
        for f in 0..dim {
            let b = unsafe { _mm512_loadu_ps(bp.add(f * PANEL)) };
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(unsafe { *xp.add(r * dim + f) }), b, *a);
            }
        }
        let o = p * PANEL;
        let (n, ea, eb) = unsafe {
            (
                _mm512_loadu_ps(pk.norms.as_ptr().add(o)),
                _mm512_loadu_ps(pk.err_a.as_ptr().add(o)),
                _mm512_loadu_ps(pk.err_b.as_ptr().add(o)),
            )
        };
        for r in 0..R {
            let v = _mm512_fnmadd_ps(two, acc[r], n);
            let u = _mm512_fmadd_ps(_mm512_set1_ps(xnorm[r]), eb, _mm512_add_ps(v, ea));
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(r * kp + o), v) };
            m2[r] = _mm512_min_ps(m2[r], _mm512_max_ps(m1[r], u));
            m1[r] = _mm512_min_ps(m1[r], u);
        }
    }
    for r in 0..R {
        let (mut a, mut b) = ([0.0f32; 16], [0.0f32; 16]);
        unsafe {
            _mm512_storeu_ps(a.as_mut_ptr(), m1[r]);
            _mm512_storeu_ps(b.as_mut_ptr(), m2[r]);
        }
        upper[r] = super::two_smallest(a.iter().chain(&b).copied());
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn values(
    _x: &[f32],
    _rows: usize,
    _pk: &PackedCentroids,
    _xn: &[f32; ROWS],
    _out: &mut [f32],
    _u: &mut [[f32; 2]; ROWS],
    _avx512: bool,
) {
    unreachable!("the fused kernel is x86-64 only")
}

/// Indices j with lower bound v_j − a_j − ‖x‖·b_j ≤ `limit`, eight lanes at a time.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `a` and `b` are at least as long as `v`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn candidates(v: &[f32], a: &[f32], b: &[f32], xnorm: f32, limit: f32, out: &mut Vec<u32>) {
    use std::arch::x86_64::*;
    let u2 = _mm256_set1_ps(limit);
    let xn = _mm256_set1_ps(xnorm);
    let n8 = v.len() / 8 * 8;
    let mut j = 0;
    while j < n8 {
        let (x, aa, bb) = unsafe {
            (_mm256_loadu_ps(v.as_ptr().add(j)), _mm256_loadu_ps(a.as_ptr().add(j)), _mm256_loadu_ps(b.as_ptr().add(j)))
        };
        let thr = _mm256_fmadd_ps(xn, bb, _mm256_add_ps(aa, u2));
        let mut mask = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(x, thr)) as u32;
        while mask != 0 {
            out.push(j as u32 + mask.trailing_zeros());
            mask &= mask - 1;
        }
        j += 8;
    }
    for i in n8..v.len() {
        if v[i] <= limit + a[i] + xnorm * b[i] {
            out.push(i as u32);
        }
    }
}

/// One panel's rows decided in registers: for k ≤ `PANEL` centroids and labels only,
/// the label and distance that `values`, `candidates` and the single-candidate rule of
/// `decide` give, without writing the values out or scanning them again (the second
/// distance is left +inf, as the 8-bit kernels leave it: labels only). For each of the
/// `rows` rows, either `out[r]` is decided (`several[r] == 0`) or `several[r]` holds the
/// candidates (bit j: centroid j, two or more) for the exact decision. The same
/// operations per lane as `tile512` and `candidates`, so the same bits.
///
/// With `avx512` the panel is one 16-lane register (`tile512`'s operations), else two
/// 8-lane ones (`tile`'s).
///
/// # Safety
/// The CPU must support AVX2 and FMA (`available()`), and AVX-512 F with `avx512`
/// (`available512()`); `pk` has one panel and 1 ≤ k ≤ PANEL; `x` holds `rows × dim`
/// values; `xnorm`, `out` and `several` hold at least `rows`; and `rows` ≤
/// `ONE_PANEL_ROWS_512` with `avx512`, ≤ `ROWS` without.
///
/// Rows are finite (`features::check_range`): with a NaN the minimum below is not
/// `two_smallest`'s, and such a row would go to the exact decision with every centroid.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn one_panel(
    x: &[f32],
    rows: usize,
    pk: &PackedCentroids,
    k: usize,
    xnorm: &[f32],
    out: &mut [crate::backend::Nearest],
    several: &mut [u16],
    avx512: bool,
) -> u64 {
    debug_assert!(pk.n_panels == 1 && k <= PANEL && x.len() >= rows * pk.dim && out.len() >= rows);
    debug_assert!(
        rows <= if avx512 { ONE_PANEL_ROWS_512 } else { ROWS } && xnorm.len() >= rows && several.len() >= rows
    );
    macro_rules! run {
        ($r:literal) => {
            if avx512 {
                one_panel_tile::<$r>(x, pk, k, xnorm, out, several)
            } else {
                one_panel_tile256::<$r>(x, pk, k, xnorm, out, several)
            }
        };
    }
    unsafe {
        match rows {
            8 if avx512 => one_panel_tile::<8>(x, pk, k, xnorm, out, several),
            7 if avx512 => one_panel_tile::<7>(x, pk, k, xnorm, out, several),
            6 => run!(6),
            5 => run!(5),
            4 => run!(4),
            3 => run!(3),
            2 => run!(2),
            1 => run!(1),
            _ => unreachable!("tile of {rows} rows"),
        }
    }
}

/// Rows per one-panel tile with 16 lanes (8 accumulators of the 32 registers); the
/// 8-lane tile takes `ROWS` (12 of the 16).
pub const ONE_PANEL_ROWS_512: usize = 8;

/// A row of a one-panel tile: decided when its candidates (`mask`) are one, j, with the
/// distance v_j + ‖x‖² (`v` gives v_j), as `decide` takes a single candidate (returns 1
/// when the label changed); else its candidates (all valid ones should none pass) are
/// left in `several`, and `out` keeps the row's old label for the caller.
#[inline(always)]
fn settle(
    mask: u16,
    valid: u16,
    xnorm: f32,
    out: &mut crate::backend::Nearest,
    several: &mut u16,
    v: impl FnOnce(u32) -> f32,
) -> u64 {
    if mask.count_ones() == 1 {
        let j = mask.trailing_zeros();
        let xn2 = xnorm * xnorm;
        let changed = u64::from(out.label != j);
        *out = crate::backend::Nearest { label: j, dist: (v(j) + xn2).max(0.0), second: f32::INFINITY };
        *several = 0;
        changed
    } else {
        *several = if mask == 0 { valid } else { mask };
        0
    }
}

/// `one_panel_tile` with two 8-lane registers per row, lane for lane `tile`'s and
/// `candidates`' operations.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn one_panel_tile256<const R: usize>(
    x: &[f32],
    pk: &PackedCentroids,
    k: usize,
    xnorm: &[f32],
    out: &mut [crate::backend::Nearest],
    several: &mut [u16],
) -> u64 {
    use std::arch::x86_64::*;
    let mut changed = 0u64;
    let dim = pk.dim;
    let xp = x.as_ptr();
    let bp = pk.panels.as_ptr();
    let mut acc0 = [_mm256_setzero_ps(); R];
    let mut acc1 = [_mm256_setzero_ps(); R];
    for f in 0..dim {
        let (b0, b1) = unsafe { (_mm256_loadu_ps(bp.add(f * PANEL)), _mm256_loadu_ps(bp.add(f * PANEL + 8))) };
        for r in 0..R {
            let a = unsafe { _mm256_broadcast_ss(&*xp.add(r * dim + f)) };
            acc0[r] = _mm256_fmadd_ps(a, b0, acc0[r]);
            acc1[r] = _mm256_fmadd_ps(a, b1, acc1[r]);
        }
    }
    let (n0, n1, a0, a1, e0, e1) = unsafe {
        let (n, a, e) = (pk.norms.as_ptr(), pk.err_a.as_ptr(), pk.err_b.as_ptr());
        (
            _mm256_loadu_ps(n),
            _mm256_loadu_ps(n.add(8)),
            _mm256_loadu_ps(a),
            _mm256_loadu_ps(a.add(8)),
            _mm256_loadu_ps(e),
            _mm256_loadu_ps(e.add(8)),
        )
    };
    let two = _mm256_set1_ps(2.0);
    let valid: u16 = if k == PANEL { u16::MAX } else { (1u16 << k) - 1 };
    // `candidates` takes the lanes past the last whole 8 with a scalar, unfused sum:
    // all of the first register below k = 8, the second below k = 16.
    let (split0, split1) = (k < 8, k < PANEL);
    let thr = |xn: __m256, lim: __m256, a: __m256, e: __m256, split: bool| {
        if split {
            _mm256_add_ps(_mm256_add_ps(lim, a), _mm256_mul_ps(xn, e))
        } else {
            _mm256_fmadd_ps(xn, e, _mm256_add_ps(a, lim))
        }
    };
    for r in 0..R {
        let xn = _mm256_set1_ps(xnorm[r]);
        let v0 = _mm256_fnmadd_ps(two, acc0[r], n0);
        let v1 = _mm256_fnmadd_ps(two, acc1[r], n1);
        let u = _mm256_min_ps(
            _mm256_fmadd_ps(xn, e0, _mm256_add_ps(v0, a0)),
            _mm256_fmadd_ps(xn, e1, _mm256_add_ps(v1, a1)),
        );
        // The smallest upper bound (labels only: the second is not needed).
        let h = _mm_min_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps::<1>(u));
        let h = _mm_min_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_min_ss(h, _mm_movehdup_ps(h));
        let lim = _mm256_broadcastss_ps(h);
        let t0 = thr(xn, lim, a0, e0, split0);
        let t1 = thr(xn, lim, a1, e1, split1);
        let m0 = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(v0, t0)) as u16;
        let m1 = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(v1, t1)) as u16;
        let mask = (m0 | (m1 << 8)) & valid;
        changed += settle(mask, valid, xnorm[r], &mut out[r], &mut several[r], |j| {
            let mut vs = [0.0f32; PANEL];
            unsafe {
                _mm256_storeu_ps(vs.as_mut_ptr(), v0);
                _mm256_storeu_ps(vs.as_mut_ptr().add(8), v1);
            }
            vs[j as usize]
        });
    }
    changed
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn one_panel_tile<const R: usize>(
    x: &[f32],
    pk: &PackedCentroids,
    k: usize,
    xnorm: &[f32],
    out: &mut [crate::backend::Nearest],
    several: &mut [u16],
) -> u64 {
    use std::arch::x86_64::*;
    let mut changed = 0u64;
    let dim = pk.dim;
    let xp = x.as_ptr();
    let bp = pk.panels.as_ptr();
    let mut acc = [_mm512_setzero_ps(); R];
    for f in 0..dim {
        let b = unsafe { _mm512_loadu_ps(bp.add(f * PANEL)) };
        for (r, a) in acc.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(_mm512_set1_ps(unsafe { *xp.add(r * dim + f) }), b, *a);
        }
    }
    let (n, ea, eb) = unsafe {
        (_mm512_loadu_ps(pk.norms.as_ptr()), _mm512_loadu_ps(pk.err_a.as_ptr()), _mm512_loadu_ps(pk.err_b.as_ptr()))
    };
    let two = _mm512_set1_ps(2.0);
    let valid: u16 = if k == PANEL { u16::MAX } else { (1u16 << k) - 1 };
    // `candidates` takes the lanes past the last whole 8 with a scalar, unfused sum.
    let unfused: u16 = valid & !((1u32 << (k / 8 * 8)) - 1) as u16;
    for r in 0..R {
        let xn = _mm512_set1_ps(xnorm[r]);
        let v = _mm512_fnmadd_ps(two, acc[r], n);
        let u = _mm512_fmadd_ps(xn, eb, _mm512_add_ps(v, ea));
        // The smallest upper bound (the second is not needed: labels only).
        let u1 = _mm512_reduce_min_ps(u);
        // Candidates: v ≤ limit + a + ‖x‖·b, fused as `candidates` computes it.
        let lim = _mm512_set1_ps(u1);
        let mut thr = _mm512_fmadd_ps(xn, eb, _mm512_add_ps(ea, lim));
        if unfused != 0 {
            let split = _mm512_add_ps(_mm512_add_ps(lim, ea), _mm512_mul_ps(xn, eb));
            thr = _mm512_mask_mov_ps(thr, unfused, split);
        }
        let mask = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(v, thr) & valid;
        changed += settle(mask, valid, xnorm[r], &mut out[r], &mut several[r], |j| {
            _mm512_cvtss_f32(_mm512_permutexvar_ps(_mm512_set1_epi32(j as i32), v))
        });
    }
    changed
}
