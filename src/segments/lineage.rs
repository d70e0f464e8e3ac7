//! Stable segment ids across retrains: the new centroids are matched to the previous
//! model's by an optimal assignment (Hungarian method) on centroid distances, in the
//! new model's feature space, so a segment keeps its id and name; new, split and
//! vanished segments are recorded as lineage.

use pathfinding::kuhn_munkres::kuhn_munkres_min;
use pathfinding::matrix::Matrix as CostMatrix;

use crate::error::{Error, Result};
use crate::features::{FeatureColumn, FeatureTransform};
pub use crate::model::lineage::{Lineage, LineageEntry, LineageKind, Vanished};
use crate::model::{Model, Segment};

/// The previous model's centroids mapped into the new model's space.
/// Refuse a previous model of other features (before a fit spends time on the data).
pub fn check_previous(prev: &Model, cols: &[FeatureColumn]) -> Result<()> {
    let same = prev.feature_columns.len() == cols.len()
        && prev.feature_columns.iter().zip(cols).all(|(a, b)| a.column == b.column && a.width == b.width);
    if !same {
        return Err(Error::Usage(format!(
            "--previous model has features [{}] but this fit has [{}]; ids can only be kept across fits on the same features",
            prev.feature_columns.iter().map(|c| c.column.as_str()).collect::<Vec<_>>().join(", "),
            cols.iter().map(|c| c.column.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(())
}

fn map_previous(prev: &Model, cols: &[FeatureColumn], tf: &[FeatureTransform]) -> Result<Vec<Vec<f64>>> {
    check_previous(prev, cols)?;
    let log1p: Vec<bool> = cols.iter().flat_map(|c| std::iter::repeat_n(c.log1p, c.width)).collect();
    Ok(prev
        .segments
        .iter()
        .map(|s| {
            s.centroid_original
                .iter()
                .zip(tf)
                .zip(&log1p)
                .map(|((v, t), l)| ((if *l { v.ln_1p() } else { *v }) - t.center) / t.scale)
                .collect()
        })
        .collect())
}

fn dist(a: &[f64], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - *y as f64).powi(2)).sum::<f64>().sqrt()
}

/// Give `segments` (fresh, ids 0..k) the previous model's ids and names where they
/// match; returns the lineage. A match counts only when the centroids are closer
/// than twice the two segments' RMS radii together.
pub fn link(
    prev: &Model,
    segments: &mut [Segment],
    cols: &[FeatureColumn],
    tf: &[FeatureTransform],
) -> Result<Lineage> {
    let old = map_previous(prev, cols, tf)?;
    let (kn, ko) = (segments.len(), old.len());
    let d: Vec<Vec<f64>> = segments.iter().map(|s| old.iter().map(|o| dist(o, &s.centroid)).collect()).collect();
    // Hungarian on the smaller side as rows; costs in micro-units as integers.
    let scale = 1e6 / d.iter().flatten().cloned().fold(1e-12, f64::max);
    let mut pairs: Vec<(usize, usize)> = Vec::new(); // (new, old)
    if kn <= ko {
        let m = CostMatrix::from_rows(
            (0..kn).map(|i| (0..ko).map(|j| (d[i][j] * scale).round() as i64).collect::<Vec<_>>()),
        )
        .map_err(|e| Error::Runtime(format!("lineage: {e:?}")))?;
        let (_, assign) = kuhn_munkres_min(&m);
        pairs.extend(assign.iter().enumerate().map(|(i, &j)| (i, j)));
    } else {
        let m = CostMatrix::from_rows(
            (0..ko).map(|j| (0..kn).map(|i| (d[i][j] * scale).round() as i64).collect::<Vec<_>>()),
        )
        .map_err(|e| Error::Runtime(format!("lineage: {e:?}")))?;
        let (_, assign) = kuhn_munkres_min(&m);
        pairs.extend(assign.iter().enumerate().map(|(j, &i)| (i, j)));
    }
    pairs.retain(|&(i, j)| d[i][j] <= 2.0 * (segments[i].rms_distance + prev.segments[j].rms_distance));
    let mut new_of_old: Vec<Option<usize>> = vec![None; ko];
    let mut old_of_new: Vec<Option<usize>> = vec![None; kn];
    for &(i, j) in &pairs {
        new_of_old[j] = Some(i);
        old_of_new[i] = Some(j);
    }
    let mut next_id = prev.segments.iter().map(|s| s.id).max().map_or(0, |m| m + 1);
    if let Some(l) = &prev.lineage {
        next_id = next_id.max(l.vanished.iter().map(|v| v.id + 1).max().unwrap_or(0));
    }
    let nearest_old = |i: usize| (0..ko).min_by(|&a, &b| d[i][a].total_cmp(&d[i][b])).unwrap();
    let mut entries = Vec::with_capacity(kn);
    for i in 0..kn {
        let entry = match old_of_new[i] {
            Some(j) => {
                segments[i].id = prev.segments[j].id;
                segments[i].name = prev.segments[j].name.clone();
                LineageEntry {
                    id: segments[i].id,
                    kind: LineageKind::Kept,
                    previous: Some(prev.segments[j].id),
                    distance: Some(d[i][j]),
                }
            }
            None => {
                segments[i].id = next_id;
                next_id += 1;
                let j = nearest_old(i);
                if new_of_old[j].is_some() {
                    LineageEntry {
                        id: segments[i].id,
                        kind: LineageKind::Split,
                        previous: Some(prev.segments[j].id),
                        distance: Some(d[i][j]),
                    }
                } else {
                    LineageEntry { id: segments[i].id, kind: LineageKind::New, previous: None, distance: None }
                }
            }
        };
        entries.push(entry);
    }
    let vanished = (0..ko)
        .filter(|&j| new_of_old[j].is_none())
        .map(|j| {
            let nearest_new = (0..kn).min_by(|&a, &b| d[a][j].total_cmp(&d[b][j])).unwrap();
            let merged =
                d[nearest_new][j] <= 2.0 * (segments[nearest_new].rms_distance + prev.segments[j].rms_distance);
            Vanished {
                id: prev.segments[j].id,
                name: prev.segments[j].name.clone(),
                merged_into: merged.then_some(segments[nearest_new].id),
            }
        })
        .collect();
    Ok(Lineage {
        previous_fingerprint: prev.manifest.input_fingerprint.clone(),
        previous_model: Some(prev.fingerprint()),
        entries,
        vanished,
    })
}
