//! Split/merge moves between exact passes: the way out of the basin Lloyd's iterations
//! (and mini-batch steps) cannot leave, where two centroids share one natural cluster
//! while another centroid holds two.
//!
//! From the statistics of an exact pass (weights, sums and squared errors per centroid)
//! the cost of merging two clusters into one centroid at their joint mean is exact
//! (Ward's criterion, `w_i·w_j / (w_i + w_j) · |m_i − m_j|²`). The gain of splitting a
//! cluster is estimated by 2-means on a seeded sample of its members (started from the
//! split along its principal axis), as a share of its exact squared error about its mean.
//! Moves are made greedily, the widest split against the cheapest merge, while the gain
//! exceeds the cost by a margin; every centroid takes part in at most one move per round.
//! The exact iterations that follow settle them. This is the move of "breathing"
//! k-means (Fritzke, 2020), applied once per round instead of by adding and removing
//! whole batches of centroids.

use rand::RngExt;

use crate::backend::{Centroids, ClusterStats, Nearest};
use crate::features::Matrix;

/// Members sampled from each candidate cluster for its 2-means split.
const SAMPLE: usize = 2048;
/// A move is made only when the split's estimated gain exceeds the merge's cost by this factor.
const MARGIN: f64 = 1.1;

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Moves {
    /// Pairs (kept, freed) merged, and the clusters split, in the order they were made.
    pub merged: Vec<(usize, usize)>,
    pub split: Vec<usize>,
    /// The sum of the estimated gains less the exact merge costs (squared-error units).
    pub estimated_gain: f64,
}

impl Moves {
    pub fn count(&self) -> usize {
        self.split.len()
    }
}

/// One round of moves on `c`, given the exact pass `nearest`/`stats` against it.
/// Deterministic for a seed.
pub fn split_merge(
    x: &Matrix,
    weights: Option<&[f32]>,
    c: &mut Centroids,
    nearest: &[Nearest],
    stats: &ClusterStats,
    seed: u64,
    round: usize,
) -> Moves {
    let (k, dim) = (c.k, c.dim);
    let mut moves = Moves::default();
    if k < 3 {
        return moves;
    }
    let means: Vec<f64> = (0..k)
        .flat_map(|j| {
            let w = stats.weight[j];
            (0..dim).map(move |p| if w > 0.0 { stats.sum[j * dim + p] / w } else { f64::NAN })
        })
        .collect();
    let mean = |j: usize| &means[j * dim..(j + 1) * dim];
    // Exact squared error about each cluster's own mean.
    let within: Vec<f64> = (0..k)
        .map(|j| {
            let w = stats.weight[j];
            if w <= 0.0 {
                return 0.0;
            }
            let off: f64 = c.row(j).iter().zip(mean(j)).map(|(a, b)| (*a as f64 - b).powi(2)).sum();
            (stats.sse[j] - w * off).max(0.0)
        })
        .collect();
    // The cheapest merge of each cluster (an empty centroid is free to move).
    let mut merges: Vec<(f64, usize, usize)> = (0..k)
        .filter_map(|j| {
            let wj = stats.weight[j];
            if wj <= 0.0 {
                return Some((0.0, j, usize::MAX));
            }
            (0..k)
                .filter(|&i| i != j && stats.weight[i] > 0.0)
                .map(|i| {
                    let wi = stats.weight[i];
                    let d2: f64 = mean(i).iter().zip(mean(j)).map(|(a, b)| (a - b).powi(2)).sum();
                    (wi * wj / (wi + wj) * d2, i)
                })
                .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
                .map(|(cost, i)| (cost, j, i))
        })
        .collect();
    merges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    // Split candidates: the clusters of largest squared error.
    let n_cand = (k / 8).clamp(1, 64);
    let mut order: Vec<usize> = (0..k).filter(|&j| stats.weight[j] > 0.0 && stats.count[j] >= 4).collect();
    order.sort_by(|a, b| within[*b].total_cmp(&within[*a]).then(a.cmp(b)));
    order.truncate(n_cand);
    if order.is_empty() {
        return moves;
    }
    let mut slot = vec![usize::MAX; k];
    for (s, &j) in order.iter().enumerate() {
        slot[j] = s;
    }
    let mut members: Vec<Vec<u32>> = vec![Vec::new(); order.len()];
    for (i, o) in nearest.iter().enumerate() {
        let s = slot[o.label as usize];
        if s != usize::MAX && weights.is_none_or(|w| w[i] > 0.0) {
            members[s].push(i as u32);
        }
    }
    let mut rng = super::init::rng_for(seed, (1 << 21) + round);
    let mut splits: Vec<(f64, usize, Vec<f32>, Vec<f32>)> = Vec::new();
    for (s, rows) in members.iter_mut().enumerate() {
        let j = order[s];
        let take = rows.len().min(SAMPLE);
        for t in 0..take {
            let r = rng.random_range(t..rows.len());
            rows.swap(t, r);
        }
        rows.truncate(take);
        rows.sort_unstable();
        if let Some((ratio, a, b)) = two_means(x, weights, rows) {
            splits.push((ratio * within[j], j, a, b));
        }
    }
    splits.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut used = vec![false; k];
    for (gain, m, a, b) in splits {
        if used[m] {
            continue;
        }
        let Some(&(cost, freed, kept)) =
            merges.iter().find(|(_, j, i)| *j != m && *i != m && !used[*j] && (*i == usize::MAX || !used[*i]))
        else {
            break;
        };
        if gain <= MARGIN * cost {
            break;
        }
        if kept != usize::MAX {
            let (wi, wj) = (stats.weight[kept], stats.weight[freed]);
            for p in 0..dim {
                c.data[kept * dim + p] = ((wi * mean(kept)[p] + wj * mean(freed)[p]) / (wi + wj)) as f32;
            }
            used[kept] = true;
            moves.merged.push((kept, freed));
        }
        c.data[m * dim..(m + 1) * dim].copy_from_slice(&a);
        c.data[freed * dim..(freed + 1) * dim].copy_from_slice(&b);
        used[m] = true;
        used[freed] = true;
        moves.split.push(m);
        moves.estimated_gain += gain - cost;
    }
    moves
}

/// 2-means on the rows `rows` of `x`, started from the split along their principal axis.
/// Returns the share of the squared error about the mean that the split removes and the
/// two centres, or None where the rows cannot be split.
fn two_means(x: &Matrix, weights: Option<&[f32]>, rows: &[u32]) -> Option<(f64, Vec<f32>, Vec<f32>)> {
    let dim = x.dim;
    if rows.len() < 4 {
        return None;
    }
    let w = |r: u32| weights.map_or(1.0, |w| w[r as usize] as f64);
    let row = |r: u32| x.row(r as usize);
    let total: f64 = rows.iter().map(|&r| w(r)).sum();
    let mut mu = vec![0.0f64; dim];
    for &r in rows {
        for (m, v) in mu.iter_mut().zip(row(r)) {
            *m += w(r) * *v as f64;
        }
    }
    mu.iter_mut().for_each(|m| *m /= total);
    let before: f64 = rows.iter().map(|&r| w(r) * sq(row(r), &mu)).sum();
    if before <= 0.0 {
        return None;
    }
    // Principal axis by power iteration on the (implicit) covariance.
    let mut v: Vec<f64> = (0..dim).map(|p| 1.0 + p as f64 * 1e-3).collect();
    for _ in 0..20 {
        let mut next = vec![0.0f64; dim];
        for &r in rows {
            let xr = row(r);
            let proj: f64 = xr.iter().zip(&mu).zip(&v).map(|((a, m), b)| (*a as f64 - m) * b).sum();
            for ((n, a), m) in next.iter_mut().zip(xr).zip(&mu) {
                *n += w(r) * proj * (*a as f64 - m);
            }
        }
        let norm = next.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm.is_nan() || norm <= 0.0 {
            return None;
        }
        v = next.into_iter().map(|a| a / norm).collect();
    }
    let mut side: Vec<bool> = rows
        .iter()
        .map(|&r| row(r).iter().zip(&mu).zip(&v).map(|((a, m), b)| (*a as f64 - m) * b).sum::<f64>() > 0.0)
        .collect();
    let mut centres = [vec![0.0f64; dim], vec![0.0f64; dim]];
    let mut after = before;
    for _ in 0..25 {
        let mut sums = [vec![0.0f64; dim], vec![0.0f64; dim]];
        let mut ws = [0.0f64; 2];
        for (&r, &s) in rows.iter().zip(&side) {
            let h = s as usize;
            ws[h] += w(r);
            for (a, v) in sums[h].iter_mut().zip(row(r)) {
                *a += w(r) * *v as f64;
            }
        }
        if ws[0] <= 0.0 || ws[1] <= 0.0 {
            return None;
        }
        for h in 0..2 {
            centres[h] = sums[h].iter().map(|a| a / ws[h]).collect();
        }
        let mut changed = false;
        after = 0.0;
        for (&r, s) in rows.iter().zip(side.iter_mut()) {
            let (d0, d1) = (sq(row(r), &centres[0]), sq(row(r), &centres[1]));
            let now = d1 < d0;
            changed |= now != *s;
            *s = now;
            after += w(r) * d0.min(d1);
        }
        if !changed {
            break;
        }
    }
    let ratio = ((before - after) / before).clamp(0.0, 1.0);
    let f = |c: &[f64]| c.iter().map(|a| *a as f32).collect::<Vec<f32>>();
    Some((ratio, f(&centres[0]), f(&centres[1])))
}

fn sq(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, cpu::CpuBackend};

    /// Three well-separated blobs; centroids two in blob A, one straddling B and C.
    #[test]
    fn a_shared_cluster_and_a_doubled_one_are_swapped() {
        let mut data = Vec::new();
        let mut rng = crate::kmeans::init::rng_for(7, 0);
        for &(cx, cy) in &[(0.0f32, 0.0f32), (10.0, 0.0), (0.0, 10.0)] {
            for _ in 0..600 {
                data.push(cx + rng.random_range(-1.0f32..1.0));
                data.push(cy + rng.random_range(-1.0f32..1.0));
            }
        }
        let x = Matrix::new(data, 2);
        let mut c = Centroids::new(vec![-0.5, 0.0, 0.5, 0.0, 5.0, 5.0], 2);
        let be = CpuBackend::default();
        let mut nearest = vec![Nearest::default(); x.n()];
        be.assign(&x.data, &c, &mut nearest).unwrap();
        let stats = be.reduce(&x.data, None, &nearest, 3).unwrap();
        let moves = split_merge(&x, None, &mut c, &nearest, &stats, 0, 0);
        assert_eq!(moves.count(), 1, "{moves:?}");
        assert_eq!(moves.split, vec![2]);
        be.assign(&x.data, &c, &mut nearest).unwrap();
        let after = be.reduce(&x.data, None, &nearest, 3).unwrap();
        assert!(after.inertia() < 0.2 * stats.inertia(), "{} → {}", stats.inertia(), after.inertia());
        // One centroid near each blob.
        for &(cx, cy) in &[(0.0f32, 0.0f32), (10.0, 0.0), (0.0, 10.0)] {
            let near = (0..3).any(|j| (c.row(j)[0] - cx).abs() < 0.5 && (c.row(j)[1] - cy).abs() < 0.5);
            assert!(near, "no centroid near ({cx}, {cy}): {:?}", c.data);
        }
    }

    /// At a good solution no move pays: nothing is changed.
    #[test]
    fn a_good_solution_is_left_alone() {
        let mut data = Vec::new();
        let mut rng = crate::kmeans::init::rng_for(3, 0);
        for &(cx, cy) in &[(0.0f32, 0.0f32), (10.0, 0.0), (0.0, 10.0), (10.0, 10.0)] {
            for _ in 0..500 {
                data.push(cx + rng.random_range(-1.0f32..1.0));
                data.push(cy + rng.random_range(-1.0f32..1.0));
            }
        }
        let x = Matrix::new(data, 2);
        let mut c = Centroids::new(vec![0.0, 0.0, 10.0, 0.0, 0.0, 10.0, 10.0, 10.0], 2);
        let before = c.clone();
        let be = CpuBackend::default();
        let mut nearest = vec![Nearest::default(); x.n()];
        be.assign(&x.data, &c, &mut nearest).unwrap();
        let stats = be.reduce(&x.data, None, &nearest, 4).unwrap();
        let moves = split_merge(&x, None, &mut c, &nearest, &stats, 0, 0);
        assert_eq!(moves.count(), 0);
        assert_eq!(c, before);
    }
}
