//! The CPU twin of the Gaussian-mixture E-step: every row's weighted log density under
//! every component in f64 (differences from the means taken in f64, so data far from
//! the origin keeps its digits), responsibilities by log-sum-exp, rows in parallel.

use rayon::prelude::*;

use crate::gmm::stats::{GaussianTerms, TermsKind, normalise};

/// Rows per parallel task.
const ROWS: usize = 256;

/// Responsibilities (n × k, f32) and per-row log total density (f64) of `points`.
pub fn estep(points: &[f32], t: &GaussianTerms, resp: &mut [f32], log_norm: &mut [f64]) {
    let (k, d) = (t.k, t.dim);
    assert_eq!(points.len() / d * k, resp.len());
    // Diagonal terms, transposed (d × k) so the inner loop runs over components.
    let (mu_t, p_t) = if t.kind == TermsKind::Diagonal {
        let mut mu_t = vec![0.0; d * k];
        let mut p_t = vec![0.0; d * k];
        for j in 0..k {
            for f in 0..d {
                mu_t[f * k + j] = t.means[j * d + f];
                p_t[f * k + j] = t.prec[j * d + f];
            }
        }
        (mu_t, p_t)
    } else {
        (Vec::new(), Vec::new())
    };
    points.par_chunks(ROWS * d).zip(resp.par_chunks_mut(ROWS * k)).zip(log_norm.par_chunks_mut(ROWS)).for_each(
        |((p, r), ln)| {
            let mut x = vec![0.0f64; d];
            let mut diff = vec![0.0f64; d];
            let mut y = vec![0.0f64; d];
            let mut wlp = vec![0.0f64; k];
            let mut q = vec![0.0f64; k];
            for ((row, r), ln) in p.chunks_exact(d).zip(r.chunks_exact_mut(k)).zip(ln.iter_mut()) {
                for (a, &v) in x.iter_mut().zip(row) {
                    *a = v as f64;
                }
                if t.kind == TermsKind::Diagonal {
                    q.fill(0.0);
                    for f in 0..d {
                        let xf = x[f];
                        let mu = &mu_t[f * k..(f + 1) * k];
                        let pr = &p_t[f * k..(f + 1) * k];
                        for j in 0..k {
                            let z = (xf - mu[j]) * pr[j];
                            q[j] += z * z;
                        }
                    }
                    for j in 0..k {
                        wlp[j] = t.log_const[j] - 0.5 * q[j];
                    }
                } else {
                    t.log_densities(&x, &mut diff, &mut y, &mut wlp);
                }
                *ln = normalise(&wlp, r);
            }
        },
    );
}
