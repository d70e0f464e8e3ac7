//! Applying a model to data: the one streaming pass every later command rides on
//! (transforms, missing values, the backend's assign pass, batch by batch), the
//! assignment job writing id, segment, distance, margin and explanations, and profiles.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, BooleanArray, Float32Array, Int32Array, UInt64Array};
use arrow::compute::filter;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::backend::{Backend, Nearest};
use crate::error::{Error, Result};
use crate::features::{self, MissingPolicy, MissingReport};
use crate::io::{BATCH_ROWS, ColumnKind, Dataset};
use crate::model::Model;
use crate::segments::profile::{Profile, ProfileBuilder};

/// Check that the input has every model column with the same shape.
pub(crate) fn check_columns(model: &Model, ds: &Dataset) -> Result<()> {
    for c in &model.feature_columns {
        let dt = ds.schema.field_with_name(&c.column).map(|f| f.data_type().clone()).map_err(|_| {
            Error::input(&ds.files[0], format!("the model's feature column '{}' is missing from the input", c.column))
        })?;
        let width = match ds.feature_kind(&c.column)? {
            Some(ColumnKind::Scalar) => 1,
            Some(ColumnKind::Embedding { width }) => width,
            // A list column without a non-empty row (no rows at all, or only nulls) shows
            // no width to contradict the model's: each row's length is checked as it is read.
            None if c.width > 1 && crate::io::is_numeric_list(&dt) => c.width,
            None => 0,
        };
        if width != c.width {
            return Err(Error::input(
                &ds.files[0],
                format!(
                    "column '{}' has type {dt} but the model expects {} numeric value(s) per row",
                    c.column, c.width
                ),
            ));
        }
    }
    Ok(())
}

/// One batch of input run through a model: what every streaming command needs.
pub struct AssignedBatch<'a> {
    /// The id column (or row numbers), rows with missing values already left out.
    pub ids: ArrayRef,
    /// Extra columns asked for (outcomes, protected attributes), filtered like `ids`.
    pub extra: Vec<ArrayRef>,
    /// Feature values in input units (log1p undone), row-major.
    pub raw: &'a [f32],
    /// Feature values in model space, row-major.
    pub model_space: &'a [f32],
    /// For a mixture: the most probable component as `label`, squared distances to the
    /// means of it (`dist`) and of the runner-up (`second`).
    pub nearest: &'a [Nearest],
    /// A mixture's posteriors of every row (rows × k) and log densities; None for k-means.
    pub posteriors: Option<(&'a [f32], &'a [f64])>,
}

/// Stream the input through the model's transforms and the backend's assign pass,
/// batch by batch (bounded memory), handing each batch to `each`. Returns (rows
/// assigned, rows left out for missing values).
pub fn stream_assigned(
    model: &Model,
    ds: &Dataset,
    id_col: Option<&str>,
    extra: &[String],
    backend: &dyn Backend,
    mut each: impl FnMut(AssignedBatch<'_>) -> Result<()>,
) -> Result<(u64, u64)> {
    check_columns(model, ds)?;
    for c in extra {
        ds.column_type(c)?;
    }
    let cols = &model.feature_columns;
    let dim = model.dim();
    let mut names: Vec<String> = cols.iter().map(|c| c.column.clone()).collect();
    names.extend(id_col.map(str::to_string));
    names.extend(extra.iter().cloned());
    let centroids = model.centroids();
    let terms = model.gmm.as_ref().map(|g| g.mixture().terms()).transpose()?;
    let (mut resp, mut log_norm): (Vec<f32>, Vec<f64>) = (Vec::new(), Vec::new());
    let fill: Option<Vec<f32>> = if model.missing == MissingPolicy::Mean {
        Some(model.features.iter().map(|f| f.impute.unwrap_or(0.0)).collect())
    } else {
        None
    };
    let log1p: Vec<bool> = cols.iter().flat_map(|c| std::iter::repeat_n(c.log1p, c.width)).collect();
    let mut report = MissingReport::new(cols.len());
    let (mut rows, mut row_base, mut dropped) = (0u64, 0u64, 0u64);
    let mut block: Vec<f32> = Vec::with_capacity(BATCH_ROWS * dim);
    let mut raw: Vec<f32> = Vec::with_capacity(BATCH_ROWS * dim);
    let mut nearest: Vec<Nearest> = Vec::with_capacity(BATCH_ROWS);
    for sb in ds.batches(&names)? {
        let sb = sb?;
        let m = sb.batch.num_rows();
        block.clear();
        block.resize(m * dim, 0.0);
        features::convert_batch(&sb.batch, cols, sb.path, &mut block)?;
        let complete = report.scan(&block, cols, sb.path);
        let all_complete = complete.iter().all(|c| *c);
        if model.missing == MissingPolicy::Error && (report.rows_with_any > 0) {
            // Keep scanning so the error can give the total count; write nothing more.
            row_base += m as u64;
            continue;
        }
        let first_extra = cols.len() + id_col.is_some() as usize;
        let mut ids: ArrayRef = match id_col {
            Some(_) => sb.batch.column(cols.len()).clone(),
            None => Arc::new(UInt64Array::from_iter_values(row_base..row_base + m as u64)),
        };
        let mut extra_arrays: Vec<ArrayRef> =
            (0..extra.len()).map(|i| sb.batch.column(first_extra + i).clone()).collect();
        row_base += m as u64;
        match (model.missing, &fill) {
            (MissingPolicy::Drop, _) if !all_complete => {
                let kept = features::compact_rows(&mut block, dim, &complete);
                dropped += (m - kept) as u64;
                let mask = BooleanArray::from(complete.clone());
                ids = filter(&ids, &mask).map_err(|e| Error::Runtime(e.to_string()))?;
                for a in extra_arrays.iter_mut() {
                    *a = filter(a, &mask).map_err(|e| Error::Runtime(e.to_string()))?;
                }
            }
            (MissingPolicy::Mean, Some(f)) if !all_complete => {
                let mut mtx = features::Matrix::new(std::mem::take(&mut block), dim);
                features::fill_missing(&mut mtx, f);
                block = mtx.data;
            }
            _ => {}
        }
        let kept = block.len() / dim;
        if kept == 0 {
            continue;
        }
        raw.clear();
        raw.extend(
            block
                .chunks_exact(dim)
                .flat_map(|row| row.iter().zip(&log1p).map(|(v, l)| if *l { v.exp_m1() } else { *v })),
        );
        features::apply_transforms(&mut block, &model.features);
        features::check_range(&block, cols, &model.features, sb.path)?;
        if model.metric == crate::model::Metric::Cosine {
            let mut mtx = features::Matrix::new(std::mem::take(&mut block), dim);
            let policy = if model.missing == MissingPolicy::Drop { MissingPolicy::Drop } else { MissingPolicy::Error };
            let keep = features::normalize_rows(&mut mtx, policy, &sb.path.display().to_string())?;
            block = mtx.data;
            if let Some(k) = keep {
                dropped += k.iter().filter(|v| !**v).count() as u64;
                features::compact_rows(&mut raw, dim, &k);
                let mask = BooleanArray::from(k);
                ids = filter(&ids, &mask).map_err(|e| Error::Runtime(e.to_string()))?;
                for a in extra_arrays.iter_mut() {
                    *a = filter(a, &mask).map_err(|e| Error::Runtime(e.to_string()))?;
                }
            }
        }
        let kept = block.len() / dim;
        if kept == 0 {
            continue;
        }
        nearest.clear();
        nearest.resize(kept, Nearest::default());
        if let Some(t) = &terms {
            resp.resize(kept * t.k, 0.0);
            log_norm.resize(kept, 0.0);
            backend.gmm_estep(&block, 0..kept, t, &mut resp, &mut log_norm)?;
            for (i, (r, x)) in resp.chunks_exact(t.k).zip(block.chunks_exact(dim)).enumerate() {
                let [(a, _), (b, _)] = crate::gmm::algorithm::top_two(r);
                let sq = |j: usize| crate::backend::cpu::exact_sq_dist(x, centroids.row(j)) as f32;
                nearest[i] =
                    Nearest { label: a as u32, dist: sq(a), second: if t.k > 1 { sq(b) } else { f32::INFINITY } };
            }
        } else {
            backend.assign(&block, &centroids, &mut nearest)?;
        }
        if let Some(bad) = nearest.iter().position(|n| !n.dist.is_finite()) {
            return Err(Error::Runtime(format!(
                "{}: row {} of a batch has no finite distance to any centroid; nothing was written",
                sb.path.display(),
                bad
            )));
        }
        let posteriors = terms.as_ref().map(|_| (&resp[..], &log_norm[..]));
        each(AssignedBatch {
            ids,
            extra: extra_arrays,
            raw: &raw,
            model_space: &block,
            nearest: &nearest,
            posteriors,
        })?;
        rows += kept as u64;
    }
    if model.missing == MissingPolicy::Error
        && let Some(e) = report.to_error(cols, row_base)
    {
        return Err(e);
    }
    Ok((rows, dropped))
}

/// The id column for a streaming command: the one named, else the model's, else
/// `subscriber_id`, when present in the input.
pub fn id_column(model: &Model, ds: &Dataset, named: Option<&str>) -> Result<Option<String>> {
    let mut fallbacks: Vec<&str> = Vec::new();
    if let Some(id) = &model.id_column {
        fallbacks.push(id);
    }
    fallbacks.push("subscriber_id");
    super::resolve_id(ds, named, &fallbacks)
}

/// A receiver of output batches: a Parquet file, an Arrow table in memory, a stream.
pub trait BatchSink {
    /// The schema of every batch that follows (called once, before any batch).
    fn start(&mut self, schema: &SchemaRef) -> Result<()>;
    fn write(&mut self, batch: &RecordBatch) -> Result<()>;
}

/// Batches collected in memory (for Python and tests).
impl BatchSink for (Option<SchemaRef>, Vec<RecordBatch>) {
    fn start(&mut self, schema: &SchemaRef) -> Result<()> {
        self.0 = Some(schema.clone());
        Ok(())
    }
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.1.push(batch.clone());
        Ok(())
    }
}

/// A Parquet file.
impl BatchSink for crate::io::output::ParquetOutput {
    fn start(&mut self, schema: &SchemaRef) -> Result<()> {
        self.set_schema(schema)
    }
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        crate::io::output::ParquetOutput::write(self, batch)
    }
}

/// How assignments are written beyond id, segment, distance and margin.
#[derive(Default)]
pub struct AssignConfig {
    /// The id column copied to the output (default: the model's, else `subscriber_id`
    /// when present; else 0-based row numbers in a `row` column).
    pub id_col: Option<String>,
    /// Add an `explanation` column, naming segments with these names (by segment
    /// index; [`segment_names`] gives the profile's or the model's).
    pub explain: Option<Vec<String>>,
    /// Replace ids by keyed pseudonyms.
    pub pseudonymize: Option<crate::segments::privacy::Pseudonymizer>,
    /// A mixture model: also write the N most probable segments and their posteriors as
    /// list columns `top_segments` and `top_probabilities`.
    pub soft_top: Option<usize>,
}

/// What an assignment did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AssignReport {
    /// Rows per segment, by segment index.
    pub segment_counts: Vec<u64>,
    pub n_rows: u64,
    pub rows_dropped: u64,
    pub assign_seconds: f64,
}

/// Assign every row of `source` to the model's segments, batch by batch (memory is
/// bounded by one batch), handing `id, segment (int32), distance, margin[, explanation]`
/// batches to `sink`.
pub fn assign(
    model: &Model,
    source: &Dataset,
    cfg: &AssignConfig,
    backend: &dyn Backend,
    sink: &mut dyn BatchSink,
) -> Result<AssignReport> {
    assign_observed(model, source, cfg, backend, sink, &[], &mut |_| Ok(()))
}

/// As [`assign`], also handing every assigned batch (with the `extra` columns) to
/// `observe` before it is written: another pass (a profile, say) rides on this one.
pub fn assign_observed(
    model: &Model,
    source: &Dataset,
    cfg: &AssignConfig,
    backend: &dyn Backend,
    sink: &mut dyn BatchSink,
    extra: &[String],
    observe: &mut dyn FnMut(&AssignedBatch<'_>) -> Result<()>,
) -> Result<AssignReport> {
    let t0 = Instant::now();
    let ds = source;
    check_columns(model, ds)?;
    // Before the sink starts, so a missing column leaves nothing behind.
    for c in extra {
        ds.column_type(c)?;
    }
    let id_col = id_column(model, ds, cfg.id_col.as_deref())?;
    if id_col.is_none() {
        log::info!("no id column in the input; writing `row` (0-based row number) instead");
    }
    let id_field = match (&id_col, &cfg.pseudonymize) {
        (Some(id), Some(_)) => Field::new(id, DataType::Utf8, true),
        (Some(id), None) => ds.schema.field_with_name(id).map_err(|e| Error::Runtime(e.to_string()))?.clone(),
        (None, _) => Field::new("row", DataType::UInt64, false),
    };
    let mut fields = vec![
        id_field,
        Field::new("segment", DataType::Int32, false),
        Field::new("distance", DataType::Float32, false),
        Field::new("margin", DataType::Float32, true),
    ];
    let gmm = model.gmm.is_some();
    if let Some(n) = cfg.soft_top {
        if !gmm {
            return Err(Error::Usage(
                "--soft-top needs a Gaussian-mixture model (fit --method gmm); k-means membership is hard".into(),
            ));
        }
        if n == 0 || n > model.k {
            return Err(Error::Usage(format!("--soft-top must be between 1 and the model's k ({})", model.k)));
        }
    }
    if gmm {
        fields.push(Field::new("probability", DataType::Float32, false));
        fields.push(Field::new("second_segment", DataType::Int32, true));
        fields.push(Field::new("second_probability", DataType::Float32, true));
        fields.push(Field::new("log_likelihood", DataType::Float64, false));
    }
    if cfg.soft_top.is_some() {
        let item = |t: DataType| DataType::List(Arc::new(Field::new("item", t, false)));
        fields.push(Field::new("top_segments", item(DataType::Int32), false));
        fields.push(Field::new("top_probabilities", item(DataType::Float32), false));
    }
    if cfg.explain.is_some() {
        fields.push(Field::new("explanation", DataType::Utf8, false));
    }
    // The batches say which model made them (and whether their ids are pseudonyms).
    let provenance = [
        ("microseg.model_fingerprint".to_string(), model.fingerprint()),
        ("microseg.ids_pseudonymized".to_string(), cfg.pseudonymize.is_some().to_string()),
    ];
    let meta: std::collections::HashMap<String, String> = provenance.into_iter().collect();
    let schema = Arc::new(Schema::new(fields).with_metadata(meta));
    sink.start(&schema)?;
    let seg_ids: Vec<i32> = model.segments.iter().map(|s| s.id as i32).collect();
    let centroids = model.centroids();
    let mut counts = vec![0u64; model.k];
    let (rows, dropped) = stream_assigned(model, ds, id_col.as_deref(), extra, backend, |b| {
        observe(&b)?;
        for nr in b.nearest {
            counts[nr.label as usize] += 1;
        }
        let ids = match (&cfg.pseudonymize, id_col.is_some()) {
            (Some(p), true) => p.apply(&b.ids)?,
            _ => b.ids,
        };
        let mut columns: Vec<ArrayRef> = vec![
            ids,
            Arc::new(Int32Array::from_iter_values(b.nearest.iter().map(|n| seg_ids[n.label as usize]))),
            Arc::new(Float32Array::from_iter_values(b.nearest.iter().map(|n| n.dist.sqrt()))),
            Arc::new(Float32Array::from_iter(
                b.nearest.iter().map(|n| n.second.is_finite().then(|| n.second.sqrt() - n.dist.sqrt())),
            )),
        ];
        if let Some((resp, log_norm)) = b.posteriors {
            let k = model.k;
            let tops: Vec<[(usize, f32); 2]> = resp.chunks_exact(k).map(crate::gmm::algorithm::top_two).collect();
            columns.push(Arc::new(Float32Array::from_iter_values(tops.iter().map(|t| t[0].1))));
            columns.push(Arc::new(Int32Array::from_iter(tops.iter().map(|t| (k > 1).then(|| seg_ids[t[1].0])))));
            columns.push(Arc::new(Float32Array::from_iter(tops.iter().map(|t| (k > 1).then_some(t[1].1)))));
            columns.push(Arc::new(arrow::array::Float64Array::from_iter_values(log_norm.iter().copied())));
            if let Some(n) = cfg.soft_top {
                use arrow::array::{Float32Builder, Int32Builder, ListBuilder};
                let f = |t: DataType| Arc::new(Field::new("item", t, false));
                let mut segs = ListBuilder::new(Int32Builder::new()).with_field(f(DataType::Int32));
                let mut probs = ListBuilder::new(Float32Builder::new()).with_field(f(DataType::Float32));
                let mut order: Vec<usize> = Vec::with_capacity(k);
                for r in resp.chunks_exact(k) {
                    order.clear();
                    order.extend(0..k);
                    // Most probable first; ties to the lower index (a stable sort).
                    order.sort_by(|&a, &b| r[b].total_cmp(&r[a]));
                    for &j in &order[..n] {
                        segs.values().append_value(seg_ids[j]);
                        probs.values().append_value(r[j]);
                    }
                    segs.append(true);
                    probs.append(true);
                }
                columns.push(Arc::new(segs.finish()));
                columns.push(Arc::new(probs.finish()));
            }
        }
        if let Some(names) = &cfg.explain {
            let dim = model.dim();
            let texts: Vec<String> = b
                .nearest
                .iter()
                .zip(b.model_space.chunks_exact(dim))
                .enumerate()
                .map(|(i, (n, x))| {
                    // The runner-up: the second most probable component of a mixture,
                    // the second-nearest centroid otherwise.
                    let runner = match b.posteriors {
                        Some((resp, _)) if model.k > 1 => {
                            Some(crate::gmm::algorithm::top_two(&resp[i * model.k..(i + 1) * model.k])[1].0)
                        }
                        _ => runner_up(&centroids, x, n.label as usize),
                    };
                    crate::segments::explain::explain(model, names, x, n.label as usize, runner, 2)
                })
                .collect();
            columns.push(Arc::new(arrow::array::StringArray::from(texts)));
        }
        let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| Error::Runtime(e.to_string()))?;
        sink.write(&batch)
    })?;
    Ok(AssignReport {
        segment_counts: counts,
        n_rows: rows,
        rows_dropped: dropped,
        assign_seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Per-segment profiles (means, quantiles, distinctions, names, outcomes) of `source`.
pub fn profile(
    model: &Model,
    source: &Dataset,
    id_col: Option<&str>,
    outcomes: &[String],
    backend: &dyn Backend,
) -> Result<Profile> {
    check_outcomes(model, outcomes)?;
    let id = id_column(model, source, id_col)?;
    let mut b = ProfileBuilder::new(model, outcomes);
    stream_assigned(model, source, id.as_deref(), outcomes, backend, |batch| profile_batch(&mut b, &batch))?;
    Ok(b.finish())
}

/// Outcome columns must not be clustering features.
pub(crate) fn check_outcomes(model: &Model, outcomes: &[String]) -> Result<()> {
    for o in outcomes {
        if model.feature_columns.iter().any(|c| &c.column == o) {
            return Err(Error::Usage(format!("--outcomes names '{o}', which is a clustering feature")));
        }
    }
    Ok(())
}

/// One assigned batch into a profile.
pub(crate) fn profile_batch(b: &mut ProfileBuilder, batch: &AssignedBatch<'_>) -> Result<()> {
    let labels: Vec<u32> = batch.nearest.iter().map(|n| n.label).collect();
    b.add(batch.raw, &labels, &batch.extra)
}

/// The nearest centroid to `x` other than `best` (exact, small k per row is fine).
fn runner_up(c: &crate::backend::Centroids, x: &[f32], best: usize) -> Option<usize> {
    (0..c.k)
        .filter(|&j| j != best)
        .map(|j| (crate::backend::cpu::exact_sq_dist(x, c.row(j)), j))
        .min_by(|a, b| a.partial_cmp(b).unwrap())
        .map(|(_, j)| j)
}

/// Segment names by index: the profile's, else the model's, else "segment N".
pub fn segment_names(model: &Model, profile: Option<&crate::segments::profile::Profile>) -> Vec<String> {
    model
        .segments
        .iter()
        .map(|s| {
            profile
                .and_then(|p| p.segment(s.id))
                .map(|p| p.name.clone())
                .or_else(|| s.name.clone())
                .unwrap_or_else(|| format!("segment {}", s.id))
        })
        .collect()
}
