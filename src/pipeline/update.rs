//! `microseg update`: fold new rows into a fitted k-means model without refitting.
//!
//! The model keeps each segment's weight, centroid and squared error; together they are
//! the segment's mergeable statistics (weight `w`, sum `w·c`, error about `c`). An update
//! multiplies them by a forgetting factor `λ` and iterates Lloyd's steps on the new rows
//! with each segment's past as a fixed pseudo-member of weight `λ·w` at its old centroid:
//! the new rows move to their nearest centroid, every centroid becomes the weighted mean
//! of its past and its new members, until no new row changes segment. With `λ = 1` this
//! is the k-means of the past centroids (weighted) and the new rows; repeated over a
//! stream it stays close to a refit of everything seen (see the tests for the distance).
//! The transforms (scaling, log1p, imputed means) are the model's and stay fixed, so
//! centroids of successive updates stay comparable; segment ids and names are kept, and
//! segments that grow too wide or too small are reported, never split or dropped.

use serde::Serialize;

use crate::backend::{Backend, ClusterStats, Nearest};
use crate::error::{Error, Result};
use crate::features::{self, Matrix, MissingPolicy};
use crate::io::Dataset;
use crate::model::{LineageKind, Method, Metric, Model, UpdateRecord, lineage::LineageEntry};

/// How much of the past an update keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Forgetting {
    /// Multiply the past statistics by this factor, in (0, 1] (1: keep all of it).
    Decay(f64),
    /// The past weighs half as much after this many (weighted) new rows.
    HalfLifeRows(f64),
    /// The past weighs half as much after this many days; `elapsed` days have passed
    /// since the data the model last saw.
    HalfLifeDays { half_life: f64, elapsed: f64 },
}

impl Default for Forgetting {
    fn default() -> Self {
        Forgetting::Decay(1.0)
    }
}

impl Forgetting {
    /// The factor for a batch of new rows of total weight `new_weight`.
    pub fn factor(self, new_weight: f64) -> f64 {
        match self {
            Forgetting::Decay(d) => d,
            Forgetting::HalfLifeRows(h) => 0.5f64.powf(new_weight / h),
            Forgetting::HalfLifeDays { half_life, elapsed } => 0.5f64.powf(elapsed / half_life),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Forgetting::Decay(_) => "decay",
            Forgetting::HalfLifeRows(_) => "half-life-rows",
            Forgetting::HalfLifeDays { .. } => "half-life-days",
        }
    }

    fn check(self) -> Result<()> {
        let bad = |flag: &str, v: f64, what: &str| Err(Error::Usage(format!("{flag} is {v}; it must be {what}")));
        match self {
            Forgetting::Decay(d) if !(d > 0.0 && d <= 1.0) => bad("--decay", d, "in (0, 1] (1 keeps all the past)"),
            Forgetting::HalfLifeRows(h) if !(h > 0.0 && h.is_finite()) => {
                bad("--half-life-rows", h, "a positive number of rows")
            }
            Forgetting::HalfLifeDays { half_life, .. } if !(half_life > 0.0 && half_life.is_finite()) => {
                bad("--half-life-days", half_life, "a positive number of days")
            }
            Forgetting::HalfLifeDays { elapsed, .. } if !(elapsed >= 0.0 && elapsed.is_finite()) => {
                Err(Error::Usage(format!(
                    "{elapsed} days elapsed since the model's data: it must be >= 0 (is --as-of before the last update's?)"
                )))
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct UpdateConfig {
    pub forgetting: Forgetting,
    /// Lloyd steps on the new rows at most (each moves rows to their nearest centroid and
    /// the centroids to their members' mean).
    pub max_iter: usize,
    /// A segment whose root mean squared distance exceeds this multiple of the one it had
    /// when fitted is reported as too wide.
    pub max_growth: f64,
    /// A segment whose share falls below this is reported as too small (default: a
    /// quarter of an even share, 0.25 / k).
    pub min_share: Option<f64>,
    /// The date of the new data, recorded for the next `--half-life-days`.
    pub as_of: Option<String>,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig { forgetting: Forgetting::default(), max_iter: 10, max_growth: 1.5, min_share: None, as_of: None }
    }
}

/// What became of one segment.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentChange {
    pub id: u32,
    pub name: Option<String>,
    /// New rows that ended in the segment, and their share of the new rows.
    pub new_rows: u64,
    pub new_share: f64,
    pub share_before: f64,
    pub share_after: f64,
    /// How far the centroid moved (model space), and that over the segment's root mean
    /// squared distance before the update.
    pub shift: f64,
    pub relative_shift: f64,
    pub rms_before: f64,
    pub rms_after: f64,
    /// "wider" (rms above --max-growth times its value at the fit), "small" (share under
    /// --min-share), "empty" (no weight left).
    pub flags: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpdateReport {
    pub previous_model: String,
    pub model_fingerprint: String,
    pub rows_read: u64,
    pub rows_used: u64,
    pub rows_dropped: u64,
    pub decay: f64,
    pub forgetting: String,
    pub iterations: usize,
    pub converged: bool,
    /// Mean squared distance of the new rows to the old centroids and to the new ones.
    pub new_rows_mse_before: f64,
    pub new_rows_mse_after: f64,
    /// PSI of the new rows' segment shares against the model's shares: how differently
    /// the new rows spread over the segments.
    pub segment_psi: f64,
    pub max_shift: f64,
    pub mean_shift: f64,
    pub segments: Vec<SegmentChange>,
    /// Ids of the segments with a flag.
    pub flagged: Vec<u32>,
}

/// The new rows, read and taken into the model's space with its fixed transforms.
struct NewRows {
    x: Matrix,
    weights: Option<Vec<f32>>,
    rows_read: u64,
    rows_dropped: u64,
    fingerprint: String,
}

fn read_new_rows(model: &Model, source: &Dataset) -> Result<NewRows> {
    super::assign::check_columns(model, source)?;
    let fill: Option<Vec<f32>> = (model.missing == MissingPolicy::Mean)
        .then(|| model.features.iter().map(|f| f.impute.unwrap_or(0.0)).collect());
    let mut table = features::load_table(
        source,
        &model.feature_columns,
        model.weight_column.as_deref(),
        model.missing,
        fill.as_deref(),
        None,
    )?;
    let fingerprint = features::data_fingerprint(&table.matrix, table.weights.as_deref());
    features::apply_transforms(&mut table.matrix.data, &model.features);
    features::check_range(
        &table.matrix.data,
        &model.feature_columns,
        &model.features,
        std::path::Path::new(&source.display_name()),
    )?;
    if model.metric == Metric::Cosine {
        let keep = features::normalize_rows(&mut table.matrix, model.missing, &source.display_name())?;
        if let Some(k) = keep {
            if let Some(w) = table.weights.as_mut() {
                let mut it = k.iter();
                w.retain(|_| *it.next().unwrap());
            }
            table.rows_dropped += k.iter().filter(|v| !**v).count() as u64;
        }
    }
    if table.matrix.n() == 0 {
        return Err(Error::input(source.display_name(), "no rows are left to fold in"));
    }
    Ok(NewRows {
        x: table.matrix,
        weights: table.weights,
        rows_read: table.rows_read,
        rows_dropped: table.rows_dropped,
        fingerprint,
    })
}

fn mse(nearest: &[Nearest], weights: Option<&[f32]>) -> f64 {
    let (mut s, mut w) = (0.0f64, 0.0f64);
    for (i, n) in nearest.iter().enumerate() {
        let wi = weights.map_or(1.0, |w| w[i] as f64);
        s += wi * n.dist as f64;
        w += wi;
    }
    if w > 0.0 { s / w } else { 0.0 }
}

/// Fold `source`'s rows into `model`: the updated model and what moved.
pub fn update_model(
    model: &Model,
    source: &Dataset,
    cfg: &UpdateConfig,
    backend: &dyn Backend,
) -> Result<(Model, UpdateReport)> {
    if model.method != Method::KMeans {
        return Err(Error::Usage(format!(
            "update folds rows into k-means models; this is a {} model: refit it on the new data \
             (fit --method gmm --previous keeps its segment ids)",
            model.method.name()
        )));
    }
    cfg.forgetting.check()?;
    if cfg.max_iter == 0 {
        return Err(Error::Usage("--max-iter must be at least 1".into()));
    }
    if !(cfg.max_growth > 1.0 && cfg.max_growth.is_finite()) {
        return Err(Error::Usage(format!("--max-growth is {}; it must be a factor above 1", cfg.max_growth)));
    }
    let (k, dim) = (model.k, model.dim());
    let min_share = cfg.min_share.unwrap_or(0.25 / k as f64);
    if !(0.0..1.0).contains(&min_share) {
        return Err(Error::Usage(format!("--min-share is {min_share}; it must be in [0, 1)")));
    }
    let rows = read_new_rows(model, source)?;
    let (x, w) = (&rows.x, rows.weights.as_deref());
    let n = x.n();
    let new_weight: f64 = w.map_or(n as f64, |w| w.iter().map(|v| *v as f64).sum());
    let decay = cfg.forgetting.factor(new_weight);

    // The past of each segment: a pseudo-member of weight λ·w at the old centroid.
    let old = model.centroids();
    let mut prior = ClusterStats::zeros(k, dim);
    for (j, s) in model.segments.iter().enumerate() {
        prior.weight[j] = decay * s.weight;
        for p in 0..dim {
            prior.sum[j * dim + p] = prior.weight[j] * s.centroid[p] as f64;
        }
    }
    let mut nearest = vec![Nearest::default(); n];
    backend.assign(&x.data, &old, &mut nearest)?;
    let mse_before = mse(&nearest, w);
    let mut centroids = old.clone();
    let (mut iterations, mut converged) = (0, false);
    let mut labels: Vec<u32> = nearest.iter().map(|n| n.label).collect();
    while iterations < cfg.max_iter {
        let mut stats = backend.reduce(&x.data, w, &nearest, k)?;
        stats.merge(&prior);
        centroids = crate::kmeans::centroids_from(&stats, &centroids, model.metric);
        iterations += 1;
        backend.assign(&x.data, &centroids, &mut nearest)?;
        let moved = nearest.iter().zip(&labels).filter(|(n, l)| n.label != **l).count();
        log::debug!("update iteration {iterations}: {moved} of {n} new rows changed segment");
        if moved == 0 {
            converged = true;
            break;
        }
        labels.iter_mut().zip(&nearest).for_each(|(l, n)| *l = n.label);
    }
    // The final statistics: the new rows about the final centroids, plus the past moved
    // there (its error about the old centroid and its weight times the shift squared).
    let fresh = backend.reduce(&x.data, w, &nearest, k)?;
    let mse_after = mse(&nearest, w);
    let mut merged = ClusterStats::zeros(k, dim);
    let mut shifts = vec![0.0f64; k];
    for (j, s) in model.segments.iter().enumerate() {
        shifts[j] = crate::backend::cpu::exact_sq_dist(old.row(j), centroids.row(j)).sqrt();
        merged.count[j] = (decay * s.size as f64).round() as u64 + fresh.count[j];
        merged.weight[j] = prior.weight[j] + fresh.weight[j];
        merged.sse[j] = decay * s.inertia + prior.weight[j] * shifts[j] * shifts[j] + fresh.sse[j];
    }
    let mut segments = Model::segments_from(&centroids, &merged, &model.feature_columns, &model.features);
    let mut changes = Vec::with_capacity(k);
    let mut flagged = Vec::new();
    for (j, (seg, before)) in segments.iter_mut().zip(&model.segments).enumerate() {
        seg.id = before.id;
        seg.name = before.name.clone();
        seg.fit_rms_distance = Some(before.fit_rms_distance.unwrap_or(before.rms_distance));
        let mut flags = Vec::new();
        let reference = seg.fit_rms_distance.unwrap_or(0.0);
        if reference > 0.0 && seg.rms_distance > cfg.max_growth * reference {
            flags.push("wider".to_string());
        }
        if merged.weight[j] <= 0.0 {
            flags.push("empty".to_string());
        } else if seg.share < min_share {
            flags.push("small".to_string());
        }
        if !flags.is_empty() {
            flagged.push(seg.id);
        }
        changes.push(SegmentChange {
            id: seg.id,
            name: seg.name.clone(),
            new_rows: fresh.count[j],
            new_share: fresh.count[j] as f64 / n as f64,
            share_before: before.share,
            share_after: seg.share,
            shift: shifts[j],
            relative_shift: if before.rms_distance > 0.0 { shifts[j] / before.rms_distance } else { 0.0 },
            rms_before: before.rms_distance,
            rms_after: seg.rms_distance,
            flags,
        });
    }
    let expected: Vec<f64> = model.segments.iter().map(|s| s.share).collect();
    let actual: Vec<f64> = changes.iter().map(|c| c.new_share).collect();
    let segment_psi = crate::segments::psi(&expected, &actual);

    let mut updated = model.clone();
    updated.segments = segments;
    updated.manifest.objective = merged.sse.iter().sum();
    updated.manifest.empty_segments = merged.weight.iter().filter(|w| **w <= 0.0).count();
    if let Some(b) = updated.baseline.as_mut() {
        b.fold(&x.data, dim, &nearest, decay * model.segments.iter().map(|s| s.size as f64).sum::<f64>());
    }
    let previous_model = model.fingerprint();
    updated.lineage = Some(crate::model::Lineage {
        previous_fingerprint: model.manifest.input_fingerprint.clone(),
        previous_model: Some(previous_model.clone()),
        entries: changes
            .iter()
            .map(|c| LineageEntry { id: c.id, kind: LineageKind::Kept, previous: Some(c.id), distance: Some(c.shift) })
            .collect(),
        vanished: Vec::new(),
    });
    updated.updates.push(UpdateRecord {
        engine_version: crate::ENGINE_VERSION.into(),
        input_fingerprint: rows.fingerprint,
        previous_model: previous_model.clone(),
        rows_read: rows.rows_read,
        rows_used: n as u64,
        rows_dropped: rows.rows_dropped,
        weight: new_weight,
        decay,
        forgetting: cfg.forgetting.name().into(),
        as_of: cfg.as_of.clone(),
        iterations,
        converged,
        new_rows_mse_before: mse_before,
        new_rows_mse_after: mse_after,
    });
    updated.validate().map_err(|m| Error::Runtime(format!("the updated model does not validate: {m}")))?;
    let report = UpdateReport {
        previous_model,
        model_fingerprint: updated.fingerprint(),
        rows_read: rows.rows_read,
        rows_used: n as u64,
        rows_dropped: rows.rows_dropped,
        decay,
        forgetting: cfg.forgetting.name().into(),
        iterations,
        converged,
        new_rows_mse_before: mse_before,
        new_rows_mse_after: mse_after,
        segment_psi,
        max_shift: shifts.iter().copied().fold(0.0, f64::max),
        mean_shift: shifts.iter().sum::<f64>() / k as f64,
        segments: changes,
        flagged,
    };
    Ok((updated, report))
}

/// Days between the data of the model's last update (`as_of`) and `as_of`, when both
/// are known.
pub fn elapsed_days(model: &Model, as_of: &str) -> Result<Option<f64>> {
    let parse = |s: &str| {
        crate::events::parse_time(s).map(|t| t.1).ok_or_else(|| {
            Error::Usage(format!(
                "--as-of '{s}' is not a time: give a date (2024-06-30), an ISO 8601 time or epoch seconds"
            ))
        })
    };
    let now = parse(as_of)?;
    match model.updates.iter().rev().find_map(|u| u.as_of.as_deref()) {
        Some(prev) => Ok(Some((now - parse(prev)?) as f64 / 86_400.0)),
        None => Ok(None),
    }
}
