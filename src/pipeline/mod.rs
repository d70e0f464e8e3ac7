//! The jobs: fit, assign, profile, drift and segment, over any table of record batches
//! (Parquet files, or batches in memory from Python or an `ndarray`), each taking a
//! validated configuration and returning a report. Every front end (the CLI, the Python
//! package, a Spark worker) maps its own conventions onto these calls and adds no
//! pipeline logic. Nothing here prints: progress goes through the `log` facade.

mod assign;
mod audit;
pub mod checkpoint;
pub mod choose_k;
pub mod distributed;
pub mod fit;
mod similarity;
pub mod stream;
pub mod update;

pub use assign::{
    AssignConfig, AssignReport, AssignedBatch, BatchSink, assign, id_column, profile, segment_names, stream_assigned,
};
pub use audit::{AuditConfig, audit, fingerprint_of};
pub use checkpoint::CheckpointSpec;
pub use choose_k::{ChooseKConfig, ChooseKReport, choose_k};
pub use fit::{AlgorithmChoice, FitConfig, FitReport, InitSpec, fit, fit_array, fit_with_progress, read_centroids};
pub use similarity::{
    NeighborsConfig, NeighborsReport, SeedMode, Seeds, SimilarConfig, SimilarReport, neighbors, similar,
};
pub use update::{Forgetting, UpdateConfig, UpdateReport, update_model};

use crate::backend::{Backend, Centroids, ClusterStats, Nearest};
use crate::error::{Error, Result};
use crate::io::Dataset;
use crate::model::Model;
use crate::segments::drift::{DriftBuilder, DriftReport, Thresholds};
use crate::segments::profile::Profile;

/// Resolve the id column: the one named (must exist), else `fallbacks` in order when present.
pub fn resolve_id(ds: &Dataset, named: Option<&str>, fallbacks: &[&str]) -> Result<Option<String>> {
    if let Some(n) = named {
        ds.column_type(n)?;
        return Ok(Some(n.to_string()));
    }
    Ok(fallbacks.iter().find(|c| ds.has_column(c)).map(|c| c.to_string()))
}

/// Refuse an id column that names a subscriber twice (a join gone wrong upstream would
/// otherwise weigh those subscribers double), in a pass of its own; a fit checks the ids
/// in the pass that reads its features instead ([`features::load_table`]).
pub fn check_unique_ids(ds: &Dataset, id: &str) -> Result<()> {
    let mut seen = crate::features::UniqueIds::new(id, ds.column_type(id)?);
    for sb in ds.batches(&[id.to_string()])? {
        let sb = sb?;
        seen.add(sb.batch.column(0), sb.path)?;
    }
    Ok(())
}

/// Drift of `source` against the model's training baseline.
pub fn drift(model: &Model, source: &Dataset, thresholds: Thresholds, backend: &dyn Backend) -> Result<DriftReport> {
    if !(thresholds.watch > 0.0 && thresholds.retrain >= thresholds.watch && thresholds.retrain.is_finite()) {
        return Err(Error::Usage("--watch must be > 0 and --retrain >= --watch".into()));
    }
    let mut b = DriftBuilder::new(model)?;
    stream_assigned(model, source, None, &[], backend, |batch| {
        b.add(batch.model_space, batch.nearest, batch.posteriors.map(|p| p.0));
        Ok(())
    })?;
    Ok(b.finish(model, thresholds))
}

/// One Lloyd step's pass over a part of the data: the per-segment statistics (count,
/// weight, sum, squared error) of `source`'s rows against the model's centroids, in
/// model space. Statistics of parts merge by [`ClusterStats::merge`]; [`update`] turns
/// the merged statistics into the next centroids. This is what a distributed driver
/// calls on each partition.
pub fn partial_stats(model: &Model, source: &Dataset, backend: &dyn Backend) -> Result<ClusterStats> {
    kmeans_only(model, "a Lloyd step's statistics")?;
    let mut total = ClusterStats::zeros(model.k, model.dim());
    stream_assigned(model, source, None, &[], backend, |batch| {
        let stats = backend.reduce(batch.model_space, None, batch.nearest, model.k)?;
        total.merge(&stats);
        Ok(())
    })?;
    Ok(total)
}

/// The same pass over a matrix already in model space (row-major, `centroids.dim` wide).
pub fn partial_stats_of(
    points: &[f32],
    weights: Option<&[f32]>,
    centroids: &Centroids,
    backend: &dyn Backend,
) -> Result<ClusterStats> {
    if !points.len().is_multiple_of(centroids.dim) {
        return Err(Error::Data(format!("{} values do not make rows of {} features", points.len(), centroids.dim)));
    }
    let mut nearest = vec![Nearest::default(); points.len() / centroids.dim];
    // Exact distances: the squared error is part of the statistics.
    backend.assign(points, centroids, &mut nearest)?;
    backend.reduce(points, weights, &nearest, centroids.k)
}

/// Refuse a mixture model where only k-means semantics make sense.
fn kmeans_only(model: &Model, what: &str) -> Result<()> {
    if model.method != crate::model::Method::KMeans {
        return Err(Error::Usage(format!(
            "{what} applies to k-means models; this is a {} model (its EM statistics are \
             crate::gmm::MixtureStats, merged the same way)",
            model.method.name()
        )));
    }
    Ok(())
}

/// The centroids after a Lloyd update from merged statistics (a segment without members
/// keeps its centroid; cosine models renormalise).
pub fn update(model: &Model, stats: &ClusterStats) -> Result<Centroids> {
    kmeans_only(model, "a Lloyd update")?;
    if (stats.k, stats.dim) != (model.k, model.dim()) {
        return Err(Error::Data(format!(
            "statistics of {} segments × {} features do not fit a model of {} × {}",
            stats.k,
            stats.dim,
            model.k,
            model.dim()
        )));
    }
    Ok(crate::kmeans::centroids_from(stats, &model.centroids(), model.metric))
}

impl Model {
    /// The segment id and distance of every row of a matrix in input units, one column
    /// per feature in the model's order (the `ndarray` edge of [`assign`]).
    pub fn assign_array(
        &self,
        x: ndarray::ArrayView2<'_, f32>,
        backend: &dyn Backend,
    ) -> Result<(ndarray::Array1<i32>, ndarray::Array1<f32>)> {
        use std::sync::Arc;
        if self.feature_columns.iter().any(|c| c.width != 1) {
            return Err(Error::Usage("this model has embedding features; assign a table, not a matrix".into()));
        }
        if x.ncols() != self.dim() {
            return Err(Error::Data(format!(
                "the matrix has {} columns, the model {} features",
                x.ncols(),
                self.dim()
            )));
        }
        let fields: Vec<arrow::datatypes::Field> = self
            .feature_columns
            .iter()
            .map(|c| arrow::datatypes::Field::new(&c.column, arrow::datatypes::DataType::Float32, false))
            .collect();
        let columns: Vec<arrow::array::ArrayRef> = (0..x.ncols())
            .map(|j| {
                Arc::new(arrow::array::Float32Array::from_iter_values(x.column(j).iter().copied()))
                    as arrow::array::ArrayRef
            })
            .collect();
        let schema = Arc::new(arrow::datatypes::Schema::new(fields));
        let batch = arrow::record_batch::RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| Error::Runtime(e.to_string()))?;
        let ds = Dataset::from_batches("<array>", schema, vec![batch])?;
        let mut sink = (None, Vec::new());
        assign(self, &ds, &AssignConfig::default(), backend, &mut sink)?;
        let (mut seg, mut dist) = (Vec::with_capacity(x.nrows()), Vec::with_capacity(x.nrows()));
        for b in &sink.1 {
            use arrow::array::AsArray;
            seg.extend_from_slice(b.column(1).as_primitive::<arrow::datatypes::Int32Type>().values());
            dist.extend_from_slice(b.column(2).as_primitive::<arrow::datatypes::Float32Type>().values());
        }
        Ok((ndarray::Array1::from(seg), ndarray::Array1::from(dist)))
    }
}

/// What `segment` produces besides the assignments written to its sink.
pub struct Segmented {
    pub model: Model,
    pub fit: FitReport,
    pub profile: Profile,
    pub assigned: AssignReport,
}

/// The main job: fit on `source`, profile it (with `outcomes` summarised per segment),
/// and assign every row into `sink` (with explanations when `explain`, named from the
/// profile). `progress` sees every fit iteration and may stop it.
pub fn segment(
    source: &Dataset,
    cfg: &FitConfig,
    outcomes: &[String],
    assign_cfg: AssignConfig,
    backend: &dyn Backend,
    sink: &mut dyn BatchSink,
    progress: &mut dyn FnMut(&crate::kmeans::IterInfo) -> bool,
) -> Result<Segmented> {
    let (model, fit) = fit_with_progress(source, cfg, backend, progress)?;
    if assign_cfg.explain.is_none() {
        // One read after the fit's: the profile's statistics ride on the assignment.
        assign::check_outcomes(&model, outcomes)?;
        let mut b = crate::segments::profile::ProfileBuilder::new(&model, outcomes);
        let assigned = assign::assign_observed(&model, source, &assign_cfg, backend, sink, outcomes, &mut |batch| {
            assign::profile_batch(&mut b, batch)
        })?;
        return Ok(Segmented { model, fit, profile: b.finish(), assigned });
    }
    // Explanations name segments from the profile, so it needs a pass of its own.
    let profile = profile(&model, source, assign_cfg.id_col.as_deref(), outcomes, backend)?;
    let assign_cfg =
        AssignConfig { explain: assign_cfg.explain.map(|_| segment_names(&model, Some(&profile))), ..assign_cfg };
    let assigned = assign(&model, source, &assign_cfg, backend, sink)?;
    Ok(Segmented { model, fit, profile, assigned })
}
