//! Features: which columns feed the clustering, how Arrow batches become a row-major
//! f32 matrix, the missing-value policy, and the per-feature transforms (log1p,
//! standard scaling) fitted on training data and re-applied at assign time.
//! It reads batches from `io` and knows nothing of clustering.

use std::borrow::Cow;
use std::path::Path;

use arrow::array::{Array, ArrayRef, AsArray, Float32Array, Float64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float32Type, Float64Type};
use arrow::record_batch::RecordBatch;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::{ColumnKind, Dataset, column_kind};

mod ids;
pub use ids::UniqueIds;

/// Rows per rayon task when converting and transforming (fits L2 at d ≤ 64).
const ROWS_PER_TASK: usize = 2048;

/// A dense row-major f32 matrix: `n` rows of `dim` features.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Matrix {
    pub data: Vec<f32>,
    pub dim: usize,
}

impl Matrix {
    pub fn new(data: Vec<f32>, dim: usize) -> Self {
        assert!(dim > 0 && data.len().is_multiple_of(dim), "matrix data is not a multiple of dim");
        Matrix { data, dim }
    }
    pub fn n(&self) -> usize {
        self.data.len() / self.dim
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// What to do with rows holding nulls, NaN or ±inf in a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MissingPolicy {
    /// Refuse the input, naming the column and the count of bad rows.
    #[default]
    Error,
    /// Leave such rows out (of the fit, and of the assignments).
    Drop,
    /// Replace the value by the feature's training mean (stored in the model).
    Mean,
}

/// Scaling fitted per feature on the training data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// Subtract the mean, divide by the population standard deviation.
    #[default]
    Standard,
    /// Use the values as they are.
    None,
}

/// One input column feeding `width` consecutive features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureColumn {
    pub column: String,
    /// 1 for a scalar column, d for an embedding.
    pub width: usize,
    /// Apply ln(1 + x) before scaling (heavy-tailed columns such as spend).
    #[serde(default)]
    pub log1p: bool,
}

/// One feature (one matrix column): its fitted transform and imputation value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureTransform {
    /// `column` for scalars, `column[i]` for embedding elements.
    pub name: String,
    /// Subtracted after log1p (0 when unscaled).
    pub center: f64,
    /// Divided by after centring (1 when unscaled, or when the feature is constant).
    pub scale: f64,
    /// Value (after log1p, before scaling) that replaces a missing value under `--missing mean`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impute: Option<f32>,
}

impl FeatureTransform {
    #[inline]
    pub fn apply(&self, v: f32) -> f32 {
        ((v as f64 - self.center) / self.scale) as f32
    }
    /// Back from model space to the value after log1p (the caller undoes log1p).
    pub fn invert(&self, z: f32) -> f64 {
        z as f64 * self.scale + self.center
    }
}

/// Choose the feature columns: the ones named, or every numeric column but the id,
/// the weight, the excluded ones and those the file marks as non-features.
pub fn select_columns(
    ds: &Dataset,
    requested: Option<&[String]>,
    exclude: &[String],
    log1p: &[String],
    reserved: &[&str],
) -> Result<Vec<FeatureColumn>> {
    let names: Vec<String> = match requested {
        Some(r) => r.to_vec(),
        None => {
            let hidden = ds.non_feature_columns();
            ds.feature_capable_columns()
                .into_iter()
                .filter(|c| !reserved.contains(&c.as_str()) && !exclude.contains(c) && !hidden.contains(c))
                .collect()
        }
    };
    if names.is_empty() {
        return Err(Error::input(&ds.files[0], "no numeric feature columns found; name them with --features a,b,c"));
    }
    let mut seen = std::collections::HashSet::new();
    let mut cols = Vec::with_capacity(names.len());
    for name in names {
        if !seen.insert(name.clone()) {
            return Err(Error::Usage(format!("feature '{name}' is named twice in --features")));
        }
        if reserved.contains(&name.as_str()) {
            return Err(Error::Usage(format!(
                "column '{name}' is the id or weight column and cannot also be a feature"
            )));
        }
        let dt = ds.column_type(&name)?;
        let width = match ds.feature_kind(&name)? {
            Some(ColumnKind::Scalar) => 1,
            Some(ColumnKind::Embedding { width }) => width,
            None => {
                return Err(Error::input(
                    &ds.files[0],
                    format!(
                        "column '{name}' has type {dt}, which cannot be a feature; features must be \
                         numeric (int, uint, float, decimal, bool) or FixedSizeList<Float32> embeddings; \
                         drop it from --features"
                    ),
                ));
            }
        };
        let is_log = log1p.contains(&name);
        if is_log && width > 1 {
            return Err(Error::Usage(format!("--log1p applies to scalar columns; '{name}' is an embedding")));
        }
        cols.push(FeatureColumn { column: name, width, log1p: is_log });
    }
    for l in log1p {
        if !cols.iter().any(|c| &c.column == l) {
            return Err(Error::Usage(format!("--log1p names '{l}', which is not a feature column")));
        }
    }
    Ok(cols)
}

/// Total number of features (matrix columns).
pub fn dim_of(cols: &[FeatureColumn]) -> usize {
    cols.iter().map(|c| c.width).sum()
}

/// Feature names, one per matrix column.
pub fn feature_names(cols: &[FeatureColumn]) -> Vec<String> {
    cols.iter()
        .flat_map(|c| {
            if c.width == 1 {
                vec![c.column.clone()]
            } else {
                (0..c.width).map(|i| format!("{}[{i}]", c.column)).collect()
            }
        })
        .collect()
}

/// A column's values as one flat f32 slice (`width` per row), nulls as NaN.
fn flat_values<'a>(
    array: &'a ArrayRef,
    keep: &'a mut Option<ArrayRef>,
    width: usize,
) -> Result<Cow<'a, [f32]>, String> {
    if width == 1 {
        let arr: &Float32Array = if array.data_type() == &DataType::Float32 {
            array.as_primitive::<Float32Type>()
        } else {
            *keep = Some(cast(array, &DataType::Float32).map_err(|e| e.to_string())?);
            keep.as_ref().unwrap().as_primitive::<Float32Type>()
        };
        if arr.null_count() == 0 {
            return Ok(Cow::Borrowed(arr.values()));
        }
        return Ok(Cow::Owned(arr.iter().map(|v| v.unwrap_or(f32::NAN)).collect()));
    }
    if matches!(array.data_type(), DataType::List(_) | DataType::LargeList(_)) {
        return list_values(array, width).map(Cow::Owned);
    }
    let list = array.as_fixed_size_list();
    let n = list.len();
    let start = list.value_offset_at(0);
    let child_sliced = list.values().slice(start, n * width);
    let child_f32: ArrayRef = if child_sliced.data_type() == &DataType::Float32 {
        child_sliced
    } else {
        cast(&child_sliced, &DataType::Float32).map_err(|e| e.to_string())?
    };
    if list.null_count() == 0 && child_f32.null_count() == 0 {
        // Borrow the values (no copy): `keep` holds the array for the caller's lifetime.
        *keep = Some(child_f32);
        return Ok(Cow::Borrowed(keep.as_ref().unwrap().as_primitive::<Float32Type>().values()));
    }
    let child = child_f32.as_primitive::<Float32Type>();
    let mut v: Vec<f32> = child.iter().map(|x| x.unwrap_or(f32::NAN)).collect();
    for i in 0..n {
        if list.is_null(i) {
            v[i * width..(i + 1) * width].fill(f32::NAN);
        }
    }
    Ok(Cow::Owned(v))
}

/// A `List` column of numbers as `width` values per row (NaN for a null row); every
/// row must hold exactly `width` values.
fn list_values(array: &ArrayRef, width: usize) -> Result<Vec<f32>, String> {
    let (offsets, child): (Vec<usize>, ArrayRef) = match array.data_type() {
        DataType::List(_) => {
            let l = array.as_list::<i32>();
            (l.value_offsets().iter().map(|o| *o as usize).collect(), l.values().clone())
        }
        _ => {
            let l = array.as_list::<i64>();
            (l.value_offsets().iter().map(|o| *o as usize).collect(), l.values().clone())
        }
    };
    let child = cast(&child, &DataType::Float32).map_err(|e| e.to_string())?;
    let child = child.as_primitive::<Float32Type>();
    let mut v = Vec::with_capacity(array.len() * width);
    for i in 0..array.len() {
        if array.is_null(i) {
            v.extend(std::iter::repeat_n(f32::NAN, width));
            continue;
        }
        let (a, b) = (offsets[i], offsets[i + 1]);
        if b - a != width {
            return Err(format!(
                "batch row {i} holds {} values, not {width}; the lists must all have one length",
                b - a
            ));
        }
        v.extend((a..b).map(|j| if child.is_null(j) { f32::NAN } else { child.value(j) }));
    }
    Ok(v)
}

/// Write a batch's feature columns (the batch's first `cols.len()` columns, in order)
/// row-major into `out` (rows × dim). Nulls become NaN; log1p is applied where asked.
pub fn convert_batch(batch: &RecordBatch, cols: &[FeatureColumn], path: &Path, out: &mut [f32]) -> Result<()> {
    let dim = dim_of(cols);
    let m = batch.num_rows();
    debug_assert_eq!(out.len(), m * dim);
    let mut keeps: Vec<Option<ArrayRef>> = vec![None; cols.len()];
    let mut flats = Vec::with_capacity(cols.len());
    // Float64 columns (the usual Arrow type) are read in place and narrowed while they
    // are written into the matrix: the matrix is the only copy (no f32 array between).
    let mut doubles: Vec<(&Float64Array, usize, bool)> = Vec::new();
    let mut offset = 0;
    for ((c, array), keep) in cols.iter().zip(batch.columns()).zip(keeps.iter_mut()) {
        if c.width == 1 && array.data_type() == &DataType::Float64 {
            let f = array.as_primitive::<Float64Type>();
            if c.log1p
                && let Some(pos) = (0..f.len()).find(|&i| f.is_valid(i) && (f.value(i) as f32) <= -1.0)
            {
                return Err(Error::input(
                    path,
                    format!(
                        "column '{}' has the value {} (batch row {pos}); log1p needs values > -1; \
                         drop '{}' from --log1p or fix the data",
                        c.column,
                        f.value(pos),
                        c.column
                    ),
                ));
            }
            doubles.push((f, offset, c.log1p));
            offset += 1;
            continue;
        }
        let vals = flat_values(array, keep, c.width)
            .map_err(|e| Error::input(path, format!("column '{}': cannot convert to float: {e}", c.column)))?;
        if c.log1p
            && let Some(pos) = vals.iter().position(|&v| v <= -1.0)
        {
            return Err(Error::input(
                path,
                format!(
                    "column '{}' has the value {} (batch row {pos}); log1p needs values > -1; \
                         drop '{}' from --log1p or fix the data",
                    c.column, vals[pos], c.column
                ),
            ));
        }
        flats.push((vals, offset, c.width, c.log1p));
        offset += c.width;
    }
    out.par_chunks_mut(ROWS_PER_TASK * dim).enumerate().for_each(|(ti, chunk)| {
        let r0 = ti * ROWS_PER_TASK;
        let rows = chunk.len() / dim;
        for (vals, off, w, log1p) in &flats {
            let (off, w) = (*off, *w);
            let src = &vals[r0 * w..(r0 + rows) * w];
            if w == 1 {
                for (r, &v) in src.iter().enumerate() {
                    chunk[r * dim + off] = if *log1p { v.ln_1p() } else { v };
                }
            } else {
                for r in 0..rows {
                    chunk[r * dim + off..r * dim + off + w].copy_from_slice(&src[r * w..(r + 1) * w]);
                }
            }
        }
        for (f, off, log1p) in &doubles {
            let values = &f.values()[r0..r0 + rows];
            let nulls = f.nulls();
            for (r, &v) in values.iter().enumerate() {
                // As Arrow's cast does: round to f32, then log1p in f32; nulls are NaN.
                let v = if nulls.is_some_and(|n| n.is_null(r0 + r)) { f32::NAN } else { v as f32 };
                chunk[r * dim + off] = if *log1p { v.ln_1p() } else { v };
            }
        }
    });
    Ok(())
}

/// The batch's rows as one row-major f32 slice: borrowed straight from Arrow when the
/// features are one f32 column without nulls (an embedding, usually), else converted
/// into `scratch`. Calls `f` with it.
pub fn with_rows<R>(
    batch: &RecordBatch,
    cols: &[FeatureColumn],
    path: &Path,
    scratch: &mut Vec<f32>,
    f: impl FnOnce(&[f32]) -> R,
) -> Result<R> {
    if let [c] = cols {
        let mut keep = None;
        if let Ok(Cow::Borrowed(v)) = flat_values(batch.column(0), &mut keep, c.width)
            && !c.log1p
            && v.len() == batch.num_rows() * c.width
        {
            return Ok(f(v));
        }
    }
    let n = batch.num_rows() * dim_of(cols);
    if scratch.len() < n {
        scratch.resize(n, 0.0);
    }
    convert_batch(batch, cols, path, &mut scratch[..n])?;
    Ok(f(&scratch[..n]))
}

/// Index of the first non-finite value (vectorised scan, then the position).
pub fn first_non_finite(v: &[f32]) -> Option<usize> {
    let bad = v.chunks(4096).position(|c| !c.iter().fold(true, |ok, x| ok & x.is_finite()))?;
    let start = bad * 4096;
    v[start..].iter().position(|x| !x.is_finite()).map(|p| start + p)
}

/// Rows with a missing (null/NaN/±inf) feature: per column, the count of bad rows.
#[derive(Debug, Default, Clone)]
pub struct MissingReport {
    /// Per feature column (not per matrix column): rows with a bad value.
    pub bad_rows: Vec<u64>,
    /// Per feature column: the first file where it happened.
    pub first_file: Vec<Option<std::path::PathBuf>>,
    pub rows_with_any: u64,
}

impl MissingReport {
    pub fn new(n_cols: usize) -> Self {
        MissingReport { bad_rows: vec![0; n_cols], first_file: vec![None; n_cols], rows_with_any: 0 }
    }

    /// Scan a converted block; returns whether each row is complete (all finite).
    pub fn scan(&mut self, block: &[f32], cols: &[FeatureColumn], path: &Path) -> Vec<bool> {
        let dim = dim_of(cols);
        let mut complete = vec![true; block.len() / dim];
        for (r, row) in block.chunks_exact(dim).enumerate() {
            if row.iter().all(|v| v.is_finite()) {
                continue;
            }
            complete[r] = false;
            self.rows_with_any += 1;
            let mut off = 0;
            for (ci, c) in cols.iter().enumerate() {
                if row[off..off + c.width].iter().any(|v| !v.is_finite()) {
                    self.bad_rows[ci] += 1;
                    if self.first_file[ci].is_none() {
                        self.first_file[ci] = Some(path.to_path_buf());
                    }
                }
                off += c.width;
            }
        }
        complete
    }

    /// The error for `--missing error`, naming every affected column.
    pub fn to_error(&self, cols: &[FeatureColumn], total_rows: u64) -> Option<Error> {
        let parts: Vec<String> = cols
            .iter()
            .zip(&self.bad_rows)
            .filter(|(_, n)| **n > 0)
            .map(|(c, n)| {
                format!(
                    "column '{}' has {n} of {total_rows} rows null, NaN, infinite or beyond the 32-bit float range (±3.4e38)",
                    c.column
                )
            })
            .collect();
        if parts.is_empty() {
            return None;
        }
        let first = self.first_file.iter().flatten().next().cloned().unwrap_or_default();
        Some(Error::input(
            first,
            format!(
                "{}; pass --missing drop to leave those rows out or --missing mean to fill them with the training mean",
                parts.join("; ")
            ),
        ))
    }
}

/// Keep only the rows flagged `true` in a row-major block, in place; returns rows kept.
pub fn compact_rows(block: &mut Vec<f32>, dim: usize, keep: &[bool]) -> usize {
    let mut w = 0;
    for (r, &k) in keep.iter().enumerate() {
        if k {
            if w != r {
                block.copy_within(r * dim..(r + 1) * dim, w * dim);
            }
            w += 1;
        }
    }
    block.truncate(w * dim);
    w
}

/// A training table read into memory.
#[derive(Debug)]
pub struct TrainingTable {
    pub matrix: Matrix,
    pub weights: Option<Vec<f32>>,
    /// Rows in the input files.
    pub rows_read: u64,
    pub rows_dropped: u64,
    /// Values filled under `--missing mean`, per matrix column.
    pub impute: Option<Vec<f32>>,
    pub missing: MissingReport,
}

/// Read the training features into one matrix sized up front from the Parquet
/// metadata (no growth copies), applying the missing-value policy.
pub fn load_training(
    ds: &Dataset,
    cols: &[FeatureColumn],
    weight_col: Option<&str>,
    missing: MissingPolicy,
) -> Result<TrainingTable> {
    load_table(ds, cols, weight_col, missing, None, None)
}

/// [`load_training`] for rows a fitted model takes in (`microseg update`): under
/// `--missing mean` the gaps are filled with `fill`, the model's training means, not
/// the new rows' own. With `unique_ids`, that column is read in the same pass and its
/// ids are checked unique ([`UniqueIds`]).
pub fn load_table(
    ds: &Dataset,
    cols: &[FeatureColumn],
    weight_col: Option<&str>,
    missing: MissingPolicy,
    fill: Option<&[f32]>,
    unique_ids: Option<&str>,
) -> Result<TrainingTable> {
    let dim = dim_of(cols);
    let n_meta = ds.n_rows() as usize;
    let mut names: Vec<String> = cols.iter().map(|c| c.column.clone()).collect();
    if let Some(w) = weight_col {
        let dt = ds.column_type(w)?;
        if column_kind(dt) != Some(ColumnKind::Scalar) {
            return Err(Error::input(&ds.files[0], format!("weight column '{w}' has type {dt}; it must be numeric")));
        }
        names.push(w.to_string());
    }
    let mut ids = match unique_ids {
        Some(id) => {
            let at = names.iter().position(|n| n == id).unwrap_or_else(|| {
                names.push(id.to_string());
                names.len() - 1
            });
            Some((at, UniqueIds::new(id, ds.column_type(id)?)))
        }
        None => None,
    };
    let mut data: Vec<f32> = Vec::new();
    data.try_reserve_exact(n_meta * dim).map_err(|_| {
        Error::Runtime(format!("cannot allocate {} MiB for the feature matrix", (n_meta * dim * 4) >> 20))
    })?;
    let mut weights: Option<Vec<f32>> = weight_col.map(|_| Vec::with_capacity(n_meta));
    let mut report = MissingReport::new(cols.len());
    let mut rows_read = 0u64;
    for sb in ds.batches(&names)? {
        let sb = sb?;
        if let Some((at, seen)) = ids.as_mut() {
            seen.add(sb.batch.column(*at), sb.path)?;
        }
        let m = sb.batch.num_rows();
        rows_read += m as u64;
        let start = data.len();
        if start + m * dim > data.capacity() {
            return Err(Error::input(sb.path, "holds more rows than its metadata says; the file may be corrupt"));
        }
        data.resize(start + m * dim, 0.0);
        convert_batch(&sb.batch, cols, sb.path, &mut data[start..])?;
        let mut w_block: Option<Vec<f32>> = None;
        if let Some(wname) = weight_col {
            w_block = Some(batch_weights(sb.batch.column(cols.len()), wname, sb.path)?);
        }
        let complete = report.scan(&data[start..], cols, sb.path);
        if missing == MissingPolicy::Drop && complete.iter().any(|c| !c) {
            let mut block = data.split_off(start);
            compact_rows(&mut block, dim, &complete);
            data.extend_from_slice(&block);
            if let Some(wv) = w_block.as_mut() {
                let mut it = complete.iter();
                wv.retain(|_| *it.next().unwrap());
            }
        }
        if let (Some(all), Some(wv)) = (weights.as_mut(), w_block) {
            all.extend_from_slice(&wv);
        }
    }
    if missing == MissingPolicy::Error
        && let Some(e) = report.to_error(cols, rows_read)
    {
        return Err(e);
    }
    let rows_dropped = if missing == MissingPolicy::Drop { report.rows_with_any } else { 0 };
    let n = data.len() / dim;
    if n == 0 {
        let why = if rows_read == 0 {
            "has no rows".to_string()
        } else {
            format!("has no complete rows ({rows_read} read, all dropped)")
        };
        return Err(Error::input(ds.display_name(), format!("the input {why}; nothing to cluster")));
    }
    let mut matrix = Matrix::new(data, dim);
    let impute = if let (MissingPolicy::Mean, Some(fill)) = (missing, fill) {
        fill_missing(&mut matrix, fill);
        Some(fill.to_vec())
    } else if missing == MissingPolicy::Mean {
        let means = column_means(&matrix, true);
        for (j, m) in means.iter().enumerate() {
            if !m.is_finite() {
                return Err(Error::input(
                    ds.display_name(),
                    format!("feature '{}' has no finite value at all; it cannot be imputed", feature_names(cols)[j]),
                ));
            }
        }
        let fill: Vec<f32> = means.iter().map(|&m| m as f32).collect();
        fill_missing(&mut matrix, &fill);
        Some(fill)
    } else {
        None
    };
    if let Some(w) = &weights
        && w.iter().map(|&x| x as f64).sum::<f64>() <= 0.0
    {
        return Err(Error::input(ds.display_name(), "the weights sum to zero; nothing to cluster"));
    }
    Ok(TrainingTable { matrix, weights, rows_read, rows_dropped, impute, missing: report })
}

/// A batch's weight column as f32, refused unless every weight is finite and >= 0.
pub fn batch_weights(column: &arrow::array::ArrayRef, wname: &str, path: &Path) -> Result<Vec<f32>> {
    let arr =
        cast(column, &DataType::Float32).map_err(|e| Error::input(path, format!("weight column '{wname}': {e}")))?;
    let arr = arr.as_primitive::<Float32Type>();
    let mut wv = Vec::with_capacity(arr.len());
    for (i, v) in arr.iter().enumerate() {
        match v {
            Some(x) if x.is_finite() && x >= 0.0 => wv.push(x),
            other => {
                return Err(Error::input(
                    path,
                    format!(
                        "weight column '{wname}' has {} at batch row {i}; weights must be finite and >= 0",
                        other.map(|x| x.to_string()).unwrap_or_else(|| "a null".into())
                    ),
                ));
            }
        }
    }
    Ok(wv)
}

/// Replace non-finite values by the per-feature fill value, in place.
pub fn fill_missing(m: &mut Matrix, fill: &[f32]) {
    let dim = m.dim;
    m.data.par_chunks_mut(ROWS_PER_TASK * dim).for_each(|chunk| {
        for row in chunk.chunks_exact_mut(dim) {
            for (v, f) in row.iter_mut().zip(fill) {
                if !v.is_finite() {
                    *v = *f;
                }
            }
        }
    });
}

/// Per-feature means in f64, in a fixed chunk order so reruns repeat bit for bit.
/// With `skip_non_finite`, NaN/inf values are left out of the mean.
pub fn column_means(m: &Matrix, skip_non_finite: bool) -> Vec<f64> {
    column_means_of(&m.data, m.dim, skip_non_finite)
}

/// `column_means` over a row-major slice of `dim` columns.
pub fn column_means_of(data: &[f32], dim: usize, skip_non_finite: bool) -> Vec<f64> {
    let partials: Vec<(Vec<f64>, Vec<u64>)> = data
        .par_chunks(ROWS_PER_TASK * dim)
        .map(|chunk| {
            let mut s = vec![0.0f64; dim];
            let mut c = vec![0u64; dim];
            for row in chunk.chunks_exact(dim) {
                for j in 0..dim {
                    let v = row[j];
                    if !skip_non_finite || v.is_finite() {
                        s[j] += v as f64;
                        c[j] += 1;
                    }
                }
            }
            (s, c)
        })
        .collect();
    let mut s = vec![0.0f64; dim];
    let mut c = vec![0u64; dim];
    for (ps, pc) in partials {
        for j in 0..dim {
            s[j] += ps[j];
            c[j] += pc[j];
        }
    }
    s.iter().zip(&c).map(|(s, &c)| if c == 0 { f64::NAN } else { s / c as f64 }).collect()
}

/// Per-feature population variances (two-pass, f64, fixed order).
pub fn column_variances(m: &Matrix, means: &[f64]) -> Vec<f64> {
    let dim = m.dim;
    let partials: Vec<Vec<f64>> = m
        .data
        .par_chunks(ROWS_PER_TASK * dim)
        .map(|chunk| {
            let mut s = vec![0.0f64; dim];
            for row in chunk.chunks_exact(dim) {
                for j in 0..dim {
                    let d = row[j] as f64 - means[j];
                    s[j] += d * d;
                }
            }
            s
        })
        .collect();
    let mut s = vec![0.0f64; dim];
    for p in partials {
        for j in 0..dim {
            s[j] += p[j];
        }
    }
    let n = m.n().max(1) as f64;
    s.iter().map(|v| v / n).collect()
}

/// Fit the scaling on the training matrix (after log1p and imputation).
///
/// Scalar columns are standardised one by one. An embedding column is centred per
/// element but scaled as one block, so that its elements keep their relative
/// geometry and its total variance equals `embedding_weight` (each scalar feature has
/// variance 1): with the default weight (the number of scalar features, at least 1)
/// the embedding and the scalars weigh the same in the distance.
pub fn fit_transforms(
    m: &Matrix,
    cols: &[FeatureColumn],
    scale: Scale,
    impute: Option<&[f32]>,
) -> Vec<FeatureTransform> {
    fit_transforms_weighted(m, cols, scale, impute, None)
}

/// `fit_transforms` with an explicit total variance per embedding column.
pub fn fit_transforms_weighted(
    m: &Matrix,
    cols: &[FeatureColumn],
    scale: Scale,
    impute: Option<&[f32]>,
    embedding_weight: Option<f64>,
) -> Vec<FeatureTransform> {
    let moments = match scale {
        Scale::None => None,
        Scale::Standard => {
            let means = column_means(m, false);
            let vars = column_variances(m, &means);
            Some((means, vars))
        }
    };
    transforms_from(moments, m.dim, cols, impute, embedding_weight)
}

/// The transforms from the columns' (means, population variances) (`None`: no scaling),
/// as [`fit_transforms_weighted`] fits them; a streamed fit merges the moments batch by
/// batch ([`Moments`]).
pub fn transforms_from(
    moments: Option<(Vec<f64>, Vec<f64>)>,
    dim: usize,
    cols: &[FeatureColumn],
    impute: Option<&[f32]>,
    embedding_weight: Option<f64>,
) -> Vec<FeatureTransform> {
    let names = feature_names(cols);
    let scalars = cols.iter().filter(|c| c.width == 1).count();
    let weight = embedding_weight.unwrap_or(scalars.max(1) as f64);
    let (centers, scales) = match moments {
        None => (vec![0.0; dim], vec![1.0; dim]),
        Some((means, vars)) => {
            // As scikit-learn's StandardScaler: a constant feature keeps scale 1.
            let mut sd: Vec<f64> = vars
                .iter()
                .map(|v| if *v > 0.0 && v.sqrt() > 10.0 * f64::EPSILON * 1.0 { v.sqrt() } else { 1.0 })
                .collect();
            let mut off = 0;
            for c in cols {
                if c.width > 1 {
                    let total: f64 = vars[off..off + c.width].iter().sum();
                    let block = if total > 0.0 { (total / weight).sqrt() } else { 1.0 };
                    sd[off..off + c.width].fill(block);
                }
                off += c.width;
            }
            (means, sd)
        }
    };
    (0..dim)
        .map(|j| FeatureTransform {
            name: names[j].clone(),
            center: centers[j],
            scale: scales[j],
            impute: impute.map(|f| f[j]),
        })
        .collect()
}

/// Per-column count, mean and sum of squared deviations, merged batch by batch (Chan et
/// al.'s pairwise update): the moments of a table read once, in bounded memory. Values
/// that are not finite are left out (missing values).
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    pub count: Vec<f64>,
    pub mean: Vec<f64>,
    pub m2: Vec<f64>,
}

impl Moments {
    pub fn new(dim: usize) -> Self {
        Moments { count: vec![0.0; dim], mean: vec![0.0; dim], m2: vec![0.0; dim] }
    }

    /// Add a row-major block.
    pub fn add(&mut self, block: &[f32]) {
        let dim = self.count.len();
        let mut b = Moments::new(dim);
        let means = column_means_of(block, dim, true);
        for row in block.chunks_exact(dim) {
            for j in 0..dim {
                let v = row[j];
                if v.is_finite() {
                    let d = v as f64 - means[j];
                    b.count[j] += 1.0;
                    b.m2[j] += d * d;
                }
            }
        }
        b.mean = means.iter().map(|m| if m.is_finite() { *m } else { 0.0 }).collect();
        self.merge(&b);
    }

    pub fn merge(&mut self, o: &Moments) {
        for j in 0..self.count.len() {
            let (na, nb) = (self.count[j], o.count[j]);
            if nb == 0.0 {
                continue;
            }
            let n = na + nb;
            let delta = o.mean[j] - self.mean[j];
            self.mean[j] += delta * nb / n;
            self.m2[j] += o.m2[j] + delta * delta * na * nb / n;
            self.count[j] = n;
        }
    }

    /// Population variances.
    pub fn variances(&self) -> Vec<f64> {
        self.m2.iter().zip(&self.count).map(|(m, n)| if *n > 0.0 { m / n } else { 0.0 }).collect()
    }
}

/// The mean variance of the features in model space (each column's variance over its
/// scale squared): what k-means' relative tolerance multiplies, from moments rather than
/// the matrix (`kmeans::tolerance`).
pub fn model_space_variance(variances: &[f64], transforms: &[FeatureTransform]) -> f64 {
    let v: f64 = variances.iter().zip(transforms).map(|(v, t)| v / t.scale.powi(2)).sum();
    v / variances.len().max(1) as f64
}

/// Apply fitted transforms to a row-major block in place.
pub fn apply_transforms(block: &mut [f32], transforms: &[FeatureTransform]) {
    let dim = transforms.len();
    if transforms.iter().all(|t| t.center == 0.0 && t.scale == 1.0) {
        return;
    }
    block.par_chunks_mut(ROWS_PER_TASK * dim).for_each(|chunk| {
        for row in chunk.chunks_exact_mut(dim) {
            for (v, t) in row.iter_mut().zip(transforms) {
                *v = t.apply(*v);
            }
        }
    });
}

/// The Euclidean norm of every row (f64).
pub fn row_norms(data: &[f32], dim: usize) -> Vec<f64> {
    data.par_chunks(dim).map(|r| r.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>().sqrt()).collect()
}

/// Divide every row by its norm; rows of norm 0 stay as they are.
pub fn divide_rows(data: &mut [f32], dim: usize, norms: &[f64]) {
    data.par_chunks_mut(dim).zip(norms).for_each(|(r, n)| {
        if *n > 0.0 {
            r.iter_mut().for_each(|v| *v = (*v as f64 / n) as f32);
        }
    });
}

/// Put every row on the unit sphere (cosine metric). A zero row is an error, or, with
/// `MissingPolicy::Drop`, left out: then the mask of kept rows is returned.
pub fn normalize_rows(m: &mut Matrix, missing: MissingPolicy, source: &str) -> Result<Option<Vec<bool>>> {
    let dim = m.dim;
    let norms = row_norms(&m.data, dim);
    let zero = norms.iter().filter(|n| **n == 0.0).count();
    if zero > 0 && missing != MissingPolicy::Drop {
        let first = norms.iter().position(|n| *n == 0.0).unwrap();
        return Err(Error::input(
            source,
            format!(
                "{zero} rows are zero vectors (first: row {first}); --metric cosine needs non-zero rows; pass --missing drop to leave them out"
            ),
        ));
    }
    divide_rows(&mut m.data, dim, &norms);
    if zero == 0 {
        return Ok(None);
    }
    let keep: Vec<bool> = norms.iter().map(|n| *n > 0.0).collect();
    compact_rows(&mut m.data, dim, &keep);
    Ok(Some(keep))
}

/// The largest magnitude a value may have in model space (after log1p and scaling).
/// Squared distances are summed in f32 (max 3.4e38): values up to 1e15 leave room for
/// d up to 10⁸ features before ‖x‖² could overflow, far beyond any real table.
pub const MAX_MODEL_VALUE: f32 = 1e15;

/// Refuse rows whose model-space values are so large that their distances would
/// overflow (they would all land in one segment at infinite distance): the error names
/// the column, the row and the value in input units.
pub fn check_range(block: &[f32], cols: &[FeatureColumn], tf: &[FeatureTransform], path: &Path) -> Result<()> {
    let dim = dim_of(cols);
    let Some(i) = block.iter().position(|v| v.abs() > MAX_MODEL_VALUE) else {
        return Ok(());
    };
    let (row, j) = (i / dim, i % dim);
    let mut off = 0;
    let col = cols
        .iter()
        .find(|c| {
            off += c.width;
            j < off
        })
        .expect("column of a matrix index");
    let mut raw = tf[j].invert(block[i]);
    if col.log1p {
        raw = raw.exp_m1();
    }
    Err(Error::input(
        path,
        format!(
            "column '{}' has the value {raw:e} (row {row} of the batch), {:e} in model space: distances \
             this large overflow 32-bit floats. Check the data, transform the column (--log1p {}) or \
             scale it (--scale standard)",
            tf[j].name, block[i], col.column
        ),
    ))
}

/// A fingerprint of the training data itself: SHA-256 over the shape, the feature
/// values as read (before transforms, after rows with missing values were handled) and
/// the weights. The same rows give the same fingerprint whether they came from one
/// Parquet file, several, or an Arrow table in memory.
pub fn data_fingerprint(m: &Matrix, weights: Option<&[f32]>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((m.n() as u64).to_le_bytes());
    h.update((m.dim as u64).to_le_bytes());
    h.update(bytemuck::cast_slice::<f32, u8>(&m.data));
    if let Some(w) = weights {
        h.update(b"weights");
        h.update(bytemuck::cast_slice::<f32, u8>(w));
    }
    format!("sha256:{}", h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>())
}
