//! The CPU twin of the Gaussian-mixture E-step: every row's weighted log density under
//! every component, responsibilities by log-sum-exp, rows in parallel.
//!
//! Two stages, so the result is the f64 computation's exactly while most of the work is
//! f32 SIMD. A screen computes every (row, component) Mahalanobis term in f32 on blocks
//! of 8 rows held in SIMD lanes (the means as an f32 hi + lo pair, so x − μ keeps its
//! digits far from the origin), with a proven bound on its error. A component whose
//! screened log density, raised by its bound, stays more than 60 e-folds under the
//! row's best (lowered by its bound) has a responsibility the f64 path would also set
//! to 0 (`stats::NEGLIGIBLE_LOG`), so it is skipped; the few others are computed in f64
//! (differences from the means in f64) and normalised as before. Hand-written because
//! this pass is the whole cost of an EM iteration (measured in docs/benchmarks.md).

use rayon::prelude::*;

use crate::gmm::stats::{GaussianTerms, NEGLIGIBLE_LOG, TermsKind, normalise};

/// Rows per parallel task.
const ROWS: usize = 256;
/// Rows per SIMD block (two AVX2 registers of f32, so each broadcast mean and
/// precision serves 16 rows).
const LANES: usize = 16;

/// The f32 form of the terms for the screen.
struct Screen {
    k: usize,
    d: usize,
    kind: TermsKind,
    mu_hi: Vec<f32>,
    mu_lo: Vec<f32>,
    /// Diagonal: k × d; Triangular: k × d × d (upper).
    prec: Vec<f32>,
    /// log_const in f32 (−∞ stays −∞).
    lc: Vec<f32>,
    /// Per component, the slack for rounding lc and v = lc − ½q in f32: 4ε|lc| + 1e-6.
    slack: Vec<f32>,
    /// Triangular: (d + 4)ε‖U_j‖_F·1.01 per component (the bound's E per ‖x − μ‖).
    kfrob: Vec<f32>,
    /// Relative error coefficient of q: (d + 12)ε·1.01.
    cq: f32,
}

impl Screen {
    fn new(t: &GaussianTerms) -> Self {
        let mu_hi: Vec<f32> = t.means.iter().map(|v| *v as f32).collect();
        let mu_lo: Vec<f32> = t.means.iter().zip(&mu_hi).map(|(v, h)| (v - *h as f64) as f32).collect();
        let eps = f32::EPSILON as f64;
        let d = t.dim as f64;
        let kfrob = if t.kind == TermsKind::Triangular {
            t.prec
                .chunks_exact(t.dim * t.dim)
                .map(|u| ((d + 4.0) * eps * u.iter().map(|v| v * v).sum::<f64>().sqrt() * 1.01) as f32)
                .collect()
        } else {
            Vec::new()
        };
        let lc: Vec<f32> = t.log_const.iter().map(|v| *v as f32).collect();
        let slack =
            t.log_const.iter().map(|v| if v.is_finite() { (4.0 * eps * v.abs() + 1e-6) as f32 } else { 0.0 }).collect();
        Screen {
            k: t.k,
            d: t.dim,
            kind: t.kind,
            mu_hi,
            mu_lo,
            prec: t.prec.iter().map(|v| *v as f32).collect(),
            lc,
            slack,
            kfrob,
            cq: ((d + 12.0) * eps * 1.01) as f32,
        }
    }

    /// q[j][l] (the Mahalanobis term) and, for triangular terms, n[j][l] = ‖x − μ_j‖²,
    /// for the 8 rows of `xs` (d × 8, feature-major).
    #[inline(always)]
    fn block<const FMA: bool>(
        &self,
        xs: &[[f32; LANES]],
        diff: &mut [[f32; LANES]],
        hi_out: &mut [[f32; LANES]],
        floor: &mut [f32; LANES],
    ) {
        let (k, d) = (self.k, self.d);
        *floor = [f32::NEG_INFINITY; LANES];
        let eps = f32::EPSILON;
        let madd = |a: f32, b: f32, c: f32| if FMA { a.mul_add(b, c) } else { a * b + c };
        for (j, out) in hi_out.iter_mut().enumerate().take(k) {
            let (hi, lo) = (&self.mu_hi[j * d..(j + 1) * d], &self.mu_lo[j * d..(j + 1) * d]);
            let mut acc = [0.0f32; LANES];
            let mut nn = [0.0f32; LANES];
            match self.kind {
                TermsKind::Diagonal => {
                    let p = &self.prec[j * d..(j + 1) * d];
                    for f in 0..d {
                        for l in 0..LANES {
                            let z = ((xs[f][l] - hi[f]) - lo[f]) * p[f];
                            acc[l] = madd(z, z, acc[l]);
                        }
                    }
                }
                TermsKind::Triangular => {
                    let u = &self.prec[j * d * d..(j + 1) * d * d];
                    for f in 0..d {
                        for l in 0..LANES {
                            let v = (xs[f][l] - hi[f]) - lo[f];
                            diff[f][l] = v;
                            nn[l] = madd(v, v, nn[l]);
                        }
                    }
                    for b in 0..d {
                        let mut y = [0.0f32; LANES];
                        for a in 0..=b {
                            let w = u[a * d + b];
                            for l in 0..LANES {
                                y[l] = madd(diff[a][l], w, y[l]);
                            }
                        }
                        for l in 0..LANES {
                            acc[l] = madd(y[l], y[l], acc[l]);
                        }
                    }
                }
            }
            // The screened log density v and the bound b on its error (the module
            // comment; computed in f32, hence inflated by 10 % and the slack):
            // hi = v + b for the skip test, max(v − b) for the row's floor.
            let (lcj, sl) = (self.lc[j], self.slack[j]);
            let mut hj = [0.0f32; LANES];
            // Comparisons written out (not f32::max, whose NaN rule keeps them scalar).
            let clamp = |v: f32| if v > 0.0 { v } else { 0.0 };
            match self.kind {
                TermsKind::Diagonal => {
                    // q is a sum of squares (never negative): v ± b = lc ± slack − (½ ∓ c)·q.
                    let c = 0.55 * self.cq + 2.0 * eps;
                    let (up, down) = (lcj + sl, lcj - sl);
                    for l in 0..LANES {
                        let q = acc[l];
                        hj[l] = madd(q, c - 0.5, up);
                        let low = madd(q, -0.5 - c, down);
                        floor[l] = if low > floor[l] { low } else { floor[l] };
                    }
                }
                TermsKind::Triangular => {
                    let kf = self.kfrob[j];
                    for l in 0..LANES {
                        let q = clamp(acc[l]);
                        let e = kf * (clamp(nn[l]) * (1.0 + 4.0 * eps)).sqrt();
                        let dq = 2.0 * (q * (1.0 + self.cq)).sqrt() * e + e * e + self.cq * q;
                        let b = 0.55 * dq + 2.0 * eps * q + sl;
                        let v = lcj - 0.5 * q;
                        hj[l] = v + b;
                        let low = v - b;
                        floor[l] = if low > floor[l] { low } else { floor[l] };
                    }
                }
            }
            *out = hj;
        }
    }
}

/// The diagonal screen in AVX2 intrinsics: two registers of 8 rows per component, the
/// same operations in the same order as `Screen::block::<true>` (hence the same bits),
/// written out because the compiler splits the 16 lanes unevenly and loses a third of
/// the throughput (measured with perf on 10⁶ × 16, k = 64).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn diagonal_avx2(s: &Screen, xs: &[[f32; LANES]], hi_out: &mut [[f32; LANES]], floor: &mut [f32; LANES]) {
    use std::arch::x86_64::*;
    const { assert!(LANES == 16) };
    let (k, d) = (s.k, s.d);
    let eps = f32::EPSILON;
    let c = 0.55 * s.cq + 2.0 * eps;
    let (cu, cd) = (_mm256_set1_ps(c - 0.5), _mm256_set1_ps(-0.5 - c));
    let mut f0 = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut f1 = f0;
    for (j, out) in hi_out.iter_mut().enumerate().take(k) {
        let (mh, ml, p) = (&s.mu_hi[j * d..(j + 1) * d], &s.mu_lo[j * d..(j + 1) * d], &s.prec[j * d..(j + 1) * d]);
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for f in 0..d {
            let (h, l, pr) = (_mm256_set1_ps(mh[f]), _mm256_set1_ps(ml[f]), _mm256_set1_ps(p[f]));
            // SAFETY: xs[f] holds 16 f32; unaligned loads of 8 at 0 and 8.
            let x0 = unsafe { _mm256_loadu_ps(xs[f].as_ptr()) };
            let x1 = unsafe { _mm256_loadu_ps(xs[f].as_ptr().add(8)) };
            let z0 = _mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(x0, h), l), pr);
            let z1 = _mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(x1, h), l), pr);
            a0 = _mm256_fmadd_ps(z0, z0, a0);
            a1 = _mm256_fmadd_ps(z1, z1, a1);
        }
        let (lcj, sl) = (s.lc[j], s.slack[j]);
        let (up, down) = (_mm256_set1_ps(lcj + sl), _mm256_set1_ps(lcj - sl));
        // SAFETY: `out` holds 16 f32.
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr(), _mm256_fmadd_ps(a0, cu, up));
            _mm256_storeu_ps(out.as_mut_ptr().add(8), _mm256_fmadd_ps(a1, cu, up));
        }
        f0 = _mm256_max_ps(f0, _mm256_fmadd_ps(a0, cd, down));
        f1 = _mm256_max_ps(f1, _mm256_fmadd_ps(a1, cd, down));
    }
    // SAFETY: `floor` holds 16 f32.
    unsafe {
        _mm256_storeu_ps(floor.as_mut_ptr(), f0);
        _mm256_storeu_ps(floor.as_mut_ptr().add(8), f1);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(
    s: &Screen,
    xs: &[[f32; LANES]],
    diff: &mut [[f32; LANES]],
    hi: &mut [[f32; LANES]],
    floor: &mut [f32; LANES],
) {
    s.block::<true>(xs, diff, hi, floor)
}

fn screen_block(
    s: &Screen,
    simd: bool,
    xs: &[[f32; LANES]],
    diff: &mut [[f32; LANES]],
    hi: &mut [[f32; LANES]],
    floor: &mut [f32; LANES],
) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is true only when the CPU reports AVX2 and FMA.
        unsafe {
            if s.kind == TermsKind::Diagonal {
                diagonal_avx2(s, xs, hi, floor);
            } else {
                block_avx2(s, xs, diff, hi, floor);
            }
        }
        return;
    }
    let _ = simd;
    s.block::<false>(xs, diff, hi, floor)
}

/// Responsibilities (n × k, f32) and per-row log total density (f64) of `points`.
pub fn estep(points: &[f32], t: &GaussianTerms, resp: &mut [f32], log_norm: &mut [f64]) {
    let (k, d) = (t.k, t.dim);
    assert_eq!(points.len() / d * k, resp.len());
    let screen = Screen::new(t);
    let simd = super::fused::available();
    points.par_chunks(ROWS * d).zip(resp.par_chunks_mut(ROWS * k)).zip(log_norm.par_chunks_mut(ROWS)).for_each(
        |((p, r), ln)| {
            let mut xs = vec![[0.0f32; LANES]; d];
            let mut diff = vec![[0.0f32; LANES]; d];
            let mut hi = vec![[0.0f32; LANES]; k];
            let mut floor = [0.0f32; LANES];
            let mut x = vec![0.0f64; d];
            let (mut dv, mut y) = (vec![0.0f64; d], vec![0.0f64; d]);
            let mut live: Vec<(usize, f64)> = Vec::with_capacity(k);
            let mut cands: Vec<Vec<usize>> = (0..LANES).map(|_| Vec::with_capacity(k)).collect();
            let rows = p.len() / d;
            for b0 in (0..rows).step_by(LANES) {
                let m = LANES.min(rows - b0);
                for l in 0..LANES {
                    // A short last block repeats its last row in the spare lanes.
                    let row = &p[(b0 + l.min(m - 1)) * d..(b0 + l.min(m - 1) + 1) * d];
                    for f in 0..d {
                        xs[f][l] = row[f];
                    }
                }
                screen_block(&screen, simd, &xs, &mut diff, &mut hi, &mut floor);
                // Skipped: provably more than 60 e-folds under the row's best. The cut is
                // in f32, rounded down so no component that can count is cut; the
                // candidates of each lane are gathered in one pass over the components.
                let mut cut = [0.0f32; LANES];
                for (c, &f) in cut.iter_mut().zip(&floor) {
                    let v = (f as f64 + NEGLIGIBLE_LOG) as f32;
                    *c = if v as f64 > f as f64 + NEGLIGIBLE_LOG { v.next_down() } else { v };
                }
                for c in cands.iter_mut() {
                    c.clear();
                }
                for (j, h) in hi.iter().enumerate() {
                    let mut mask = 0u32;
                    for l in 0..LANES {
                        mask |= ((h[l] >= cut[l]) as u32) << l;
                    }
                    while mask != 0 {
                        let l = mask.trailing_zeros() as usize;
                        cands[l].push(j);
                        mask &= mask - 1;
                    }
                }
                for (l, lane) in cands.iter().enumerate().take(m) {
                    let i = b0 + l;
                    for (a, &v) in x.iter_mut().zip(&p[i * d..(i + 1) * d]) {
                        *a = v as f64;
                    }
                    live.clear();
                    let mut max = f64::NEG_INFINITY;
                    for &j in lane {
                        let v = t.log_density(j, &x, &mut dv, &mut y);
                        max = max.max(v);
                        live.push((j, v));
                    }
                    // As `normalise`, over the components that can count.
                    let mut s = 0.0;
                    for &(_, v) in &live {
                        let z = v - max;
                        if z > NEGLIGIBLE_LOG {
                            s += z.exp();
                        }
                    }
                    let lse = max + s.ln();
                    let out = &mut r[i * k..(i + 1) * k];
                    out.fill(0.0);
                    for &(j, v) in &live {
                        if v - max > NEGLIGIBLE_LOG {
                            out[j] = (v - lse).exp() as f32;
                        }
                    }
                    ln[i] = lse;
                }
            }
        },
    );
}

/// The same E-step without the screen: every component in f64, one row at a time (the
/// definition the screened pass must reproduce bit for bit; for tests).
pub fn estep_unscreened(points: &[f32], t: &GaussianTerms, resp: &mut [f32], log_norm: &mut [f64]) {
    let (k, d) = (t.k, t.dim);
    let (mut x, mut dv, mut y, mut wlp) = (vec![0.0f64; d], vec![0.0f64; d], vec![0.0f64; d], vec![0.0f64; k]);
    for (i, row) in points.chunks_exact(d).enumerate() {
        for (a, &v) in x.iter_mut().zip(row) {
            *a = v as f64;
        }
        t.log_densities(&x, &mut dv, &mut y, &mut wlp);
        log_norm[i] = normalise(&wlp, &mut resp[i * k..(i + 1) * k]);
    }
}
