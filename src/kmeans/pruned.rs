//! Label-blocked Lloyd with triangle-inequality pruning. For a point x assigned to
//! centroid a, any centroid j with ‖c_a − c_j‖ > 2‖x − c_a‖ is strictly farther from x
//! than c_a. So the points of each cluster (with ‖x − c_a‖ under the cluster's 90th
//! percentile q_a) are assigned with the same fused kernel against only the centroids
//! within 2·q_a of c_a; the remaining points against all of them. Labels are exact, as
//! Lloyd's: pruned centroids are farther by a margin far above f64 rounding, and the
//! kept ones are decided by the same exact rule (ties to the lower index, since each
//! candidate list is in index order).

use rayon::prelude::*;

use crate::backend::cpu::{
    Kernel, Precision, PreparedCentroids, SharedCodes, assign_block_with, exact_sq_dist, gather_codes,
};
use crate::backend::{Centroids, Nearest};
use crate::features::Matrix;

/// Relative margin: a centroid is pruned only when clearly beyond the bound.
const MARGIN: f64 = 1e-6;
/// A cluster's points are split at these quantiles of their distance to the centroid;
/// each band is assigned against the centroids within twice its upper edge, and the
/// points beyond the last quantile against all centroids.
const BANDS: [f64; 4] = [0.3, 0.6, 0.8, 0.92];
/// Rows per work item.
const ITEM_ROWS: usize = 4096;

/// One band of a cluster: its candidate centroids (global indices, ascending) and rows.
struct Plan {
    cand: Vec<u32>,
    cents: Centroids,
    near: Vec<u32>,
}

/// Assign every row given its previous label; returns (labels changed, centroid
/// evaluations as a fraction of n·k). `codes`: the rows' 8-bit codes when the kernel
/// is quantised (else each work item codes its rows).
pub(crate) fn step(
    x: &Matrix,
    c: &Centroids,
    nearest: &mut [Nearest],
    kernel: Kernel,
    codes: Option<&SharedCodes>,
) -> (u64, f64) {
    let (n, k, dim) = (x.n(), c.k, x.dim);
    // One kernel for every band, chosen for the whole k (a band's few centroids would
    // otherwise pick another, and the rows' codes are for this one).
    let kernel = kernel.resolve(k, dim);
    // Centroid–centroid distances (exact).
    let cc: Vec<f64> =
        (0..k * k).into_par_iter().map(|ij| exact_sq_dist(c.row(ij / k), c.row(ij % k)).sqrt()).collect();
    // Each point's exact distance to its current centroid.
    let u: Vec<f64> = nearest
        .par_iter()
        .enumerate()
        .map(|(i, nr)| exact_sq_dist(x.row(i), c.row(nr.label as usize)).sqrt())
        .collect();
    // Rows grouped by label (counting sort, stable: rows stay in index order).
    let mut start = vec![0usize; k + 1];
    for nr in nearest.iter() {
        start[nr.label as usize + 1] += 1;
    }
    for a in 0..k {
        start[a + 1] += start[a];
    }
    let mut order = vec![0u32; n];
    let mut fill = start.clone();
    for (i, nr) in nearest.iter().enumerate() {
        let a = nr.label as usize;
        order[fill[a]] = i as u32;
        fill[a] += 1;
    }
    let plans: Vec<Plan> = (0..k)
        .into_par_iter()
        .flat_map_iter(|a| {
            let rows = &order[start[a]..start[a + 1]];
            let mut plans = Vec::new();
            if rows.is_empty() {
                return plans;
            }
            let mut us: Vec<f64> = rows.iter().map(|&i| u[i as usize]).collect();
            let mut lo = f64::NEG_INFINITY;
            for share in BANDS {
                let q_idx = ((rows.len() as f64 * share) as usize).min(rows.len() - 1);
                let q = *us.select_nth_unstable_by(q_idx, |x, y| x.total_cmp(y)).1;
                if q <= lo {
                    continue;
                }
                let reach = 2.0 * q * (1.0 + MARGIN);
                let cand: Vec<u32> = (0..k as u32).filter(|&j| cc[a * k + j as usize] <= reach).collect();
                if cand.len() * 4 > k * 3 {
                    // Pruning would save little: these rows and the rest go to the full pass.
                    break;
                }
                let near: Vec<u32> =
                    rows.iter().copied().filter(|&i| u[i as usize] > lo && u[i as usize] <= q).collect();
                let mut data = Vec::with_capacity(cand.len() * dim);
                for &j in &cand {
                    data.extend_from_slice(c.row(j as usize));
                }
                plans.push(Plan { cents: Centroids::new(data, dim), cand, near });
                lo = q;
            }
            plans
        })
        .collect();
    // Rows not covered by a plan go against all centroids.
    let mut covered = vec![false; n];
    for p in &plans {
        for &i in &p.near {
            covered[i as usize] = true;
        }
    }
    let far: Vec<u32> = (0..n as u32).filter(|&i| !covered[i as usize]).collect();
    // Work items: (plan or none, a slice of rows).
    let mut items: Vec<(Option<usize>, &[u32])> = Vec::new();
    for (a, p) in plans.iter().enumerate() {
        for ch in p.near.chunks(ITEM_ROWS) {
            items.push((Some(a), ch));
        }
    }
    for ch in far.chunks(ITEM_ROWS) {
        items.push((None, ch));
    }
    let full = PreparedCentroids::with_kernel(c, kernel);
    let results: Vec<Vec<Nearest>> = items
        .par_iter()
        .map(|(plan, rows)| {
            let mut buf = Vec::with_capacity(rows.len() * dim);
            for &i in rows.iter() {
                buf.extend_from_slice(x.row(i as usize));
            }
            let mut out = vec![Nearest::default(); rows.len()];
            let mut scratch = Vec::new();
            let mut code_buf = None;
            let view = gather_codes(codes, rows, &mut code_buf);
            match plan {
                Some(a) => {
                    let p = &plans[*a];
                    let pc = PreparedCentroids::with_kernel(&p.cents, kernel);
                    assign_block_with(&buf, &pc, &mut out, &mut scratch, Precision::LabelsOnly, view, None);
                    for o in out.iter_mut() {
                        o.label = p.cand[o.label as usize];
                    }
                }
                None => {
                    assign_block_with(&buf, &full, &mut out, &mut scratch, Precision::LabelsOnly, view, None);
                }
            }
            out
        })
        .collect();
    let mut changed = 0u64;
    let mut evaluated = 0f64;
    for ((plan, rows), out) in items.iter().zip(&results) {
        let width = plan.map_or(k, |a| plans[a].cand.len());
        evaluated += (rows.len() * width) as f64;
        for (&i, o) in rows.iter().zip(out) {
            if nearest[i as usize].label != o.label {
                changed += 1;
            }
            nearest[i as usize] = *o;
        }
    }
    (changed, evaluated / (n * k) as f64)
}
