//! Exact similarity jobs over embedding columns: `neighbors` (top-k per query) and
//! `similar` (a look-alike audience of a seed set). The base streams batch by batch;
//! scores are exact (f64 re-scoring behind an 8-bit or f32 filter, or the GPU shader).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, Float64Array, Int32Array, StringArray, UInt64Array};
use arrow::compute::{cast, concat, take};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use serde::Serialize;

use super::BatchSink;
use crate::backend::wgpu::WgpuBackend;
use crate::error::{Error, Result};
use crate::features::{self, FeatureColumn, MissingPolicy};
use crate::io::{ColumnKind, Dataset};
use crate::similarity::{GpuSearcher, Hit, ScanKernel, Searcher, Side, SimMetric, TopK, prepare, search_chunk};

/// What `neighbors` searches.
#[derive(Debug, Clone)]
pub struct NeighborsConfig {
    /// The embedding column (a fixed-length list of numbers) in both tables.
    pub embedding: String,
    pub k: usize,
    pub metric: SimMetric,
    /// Id column in both (default: `subscriber_id` when present, else row numbers).
    pub id_col: Option<String>,
    /// The CPU scan in front of exact re-scoring (all give the same result).
    pub scan: ScanKernel,
}

#[derive(Debug, Clone, Serialize)]
pub struct NeighborsReport {
    pub queries: usize,
    pub base_rows: u64,
    pub dim: usize,
    pub k: usize,
    pub read_seconds: f64,
    pub search_seconds: f64,
    pub compute_seconds: f64,
    pub queries_redone_on_cpu: usize,
    pub backend: &'static str,
    pub scan: &'static str,
}

/// How look-alikes are scored against the seeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedMode {
    /// Similarity to the most similar seed.
    Max,
    /// Mean similarity over the seeds.
    Mean,
    /// Similarity to the seeds' centroid (normalised for cosine).
    Centroid,
}

/// The seed set: rows of a table with the same embedding column, or ids looked up in
/// the input's id column.
pub enum Seeds<'a> {
    Table(&'a Dataset),
    Ids { ids: HashSet<String>, source: PathBuf },
}

#[derive(Debug, Clone)]
pub struct SimilarConfig {
    pub embedding: String,
    /// How many look-alikes to keep.
    pub top: usize,
    pub mode: SeedMode,
    pub metric: SimMetric,
    pub id_col: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimilarReport {
    pub seeds: usize,
    pub excluded_ids: usize,
    pub top: usize,
    pub seconds: f64,
}

fn embedding_column(ds: &Dataset, name: &str) -> Result<Vec<FeatureColumn>> {
    let dt = ds.column_type(name)?;
    match ds.feature_kind(name)? {
        Some(ColumnKind::Embedding { width }) => {
            Ok(vec![FeatureColumn { column: name.to_string(), width, log1p: false }])
        }
        _ => Err(Error::input(
            &ds.files[0],
            format!("column '{name}' has type {dt}; --embedding needs a FixedSizeList of numbers"),
        )),
    }
}

/// The ids of the given rows of a dataset, in the id column's own type (row numbers as
/// uint64 when there is no id column), in the order asked.
fn ids_of(ds: &Dataset, id: Option<&str>, rows: &[u64]) -> Result<ArrayRef> {
    let Some(id) = id else {
        return Ok(Arc::new(UInt64Array::from(rows.to_vec())));
    };
    let mut wanted: Vec<(u64, usize)> = rows.iter().enumerate().map(|(i, r)| (*r, i)).collect();
    wanted.sort_unstable();
    let mut pieces: Vec<ArrayRef> = Vec::new();
    let (mut base, mut w) = (0u64, 0usize);
    for sb in ds.batches(&[id.to_string()])? {
        let sb = sb?;
        let m = sb.batch.num_rows() as u64;
        let start = w;
        while w < wanted.len() && wanted[w].0 < base + m {
            w += 1;
        }
        if w > start {
            let idx = UInt64Array::from_iter_values(wanted[start..w].iter().map(|(r, _)| r - base));
            pieces.push(take(sb.batch.column(0), &idx, None).map_err(|e| Error::Runtime(e.to_string()))?);
        }
        base += m;
    }
    let dt = ds.column_type(id)?.clone();
    let sorted = if pieces.is_empty() {
        arrow::array::new_empty_array(&dt)
    } else {
        let refs: Vec<&dyn Array> = pieces.iter().map(|a| a.as_ref()).collect();
        concat(&refs).map_err(|e| Error::Runtime(e.to_string()))?
    };
    // Back from row order to the order asked.
    let mut order = vec![0u64; rows.len()];
    for (pos, (_, i)) in wanted.iter().enumerate() {
        order[*i] = pos as u64;
    }
    take(&sorted, &UInt64Array::from(order), None).map_err(|e| Error::Runtime(e.to_string()))
}

/// The output field of an id column: its own type (nullable as in the input), or
/// uint64 row numbers.
fn id_field(ds: &Dataset, id: Option<&str>, name: &str) -> Result<Field> {
    Ok(match id {
        Some(c) => Field::new(name, ds.column_type(c)?.clone(), true),
        None => Field::new(name, DataType::UInt64, false),
    })
}

/// The exact top-k neighbours of every query row among the base rows, by inner
/// product or cosine over an embedding column; the base streams batch by batch. One
/// output batch: query id, rank (int32, from 1), neighbour id, score (float64); ids
/// keep their columns' types.
pub fn neighbors(
    base: &Dataset,
    queries: &Dataset,
    cfg: &NeighborsConfig,
    gpu: Option<&WgpuBackend>,
    sink: &mut dyn BatchSink,
) -> Result<NeighborsReport> {
    let a = cfg;
    if a.k == 0 {
        return Err(Error::Usage("--k must be at least 1".into()));
    }
    let metric = a.metric;
    let t0 = Instant::now();
    let qds = queries;
    if qds.n_rows() == 0 {
        return Err(Error::input(&qds.files[0], "the query file has no rows; give at least one query"));
    }
    let bds = base;
    let qcols = embedding_column(qds, &a.embedding)?;
    let bcols = embedding_column(bds, &a.embedding)?;
    let dim = qcols[0].width;
    if bcols[0].width != dim {
        return Err(Error::input(
            &bds.files[0],
            format!("'{}' has {} values per row but the queries have {dim}", a.embedding, bcols[0].width),
        ));
    }
    let queries = features::load_training(qds, &qcols, None, MissingPolicy::Error)?.matrix.data;
    let (qs, qscale) = prepare(&queries, dim, metric);
    let q = Side { scan: qs.as_deref().unwrap_or(&queries), exact: &queries, scale: &qscale };
    let nq = queries.len() / dim;
    let kernel = a.scan;
    let scan_name = kernel.resolve_for(dim).name();
    let read_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let base_rows;
    let mut compute_s = 0.0;
    let mut redone = 0;
    let hits: Vec<Vec<Hit>> = match gpu {
        None => {
            let mut searcher = Searcher::new(kernel, q, dim, a.k);
            base_rows = stream_sides(bds, &bcols, metric, |b, offset| {
                let tc = Instant::now();
                searcher.add(b, offset);
                compute_s += tc.elapsed().as_secs_f64();
                Ok(())
            })?;
            searcher.finish()
        }
        Some(gpu) => {
            let mut searcher = GpuSearcher::new(gpu, q, dim, a.k)?;
            base_rows = stream_sides(bds, &bcols, metric, |b, offset| {
                let tc = Instant::now();
                searcher.add(b, offset)?;
                compute_s += tc.elapsed().as_secs_f64();
                Ok(())
            })?;
            let (mut hits, unproven) = searcher.finish()?;
            // Queries the device's lists cannot prove (near-ties at the k-th score): a
            // second pass over the base on the CPU, for those queries only.
            if !unproven.is_empty() {
                redone = unproven.len();
                let sub: Vec<f32> = unproven.iter().flat_map(|&i| queries[i * dim..(i + 1) * dim].to_vec()).collect();
                let (ss, sscale) = prepare(&sub, dim, metric);
                let qs = Side { scan: ss.as_deref().unwrap_or(&sub), exact: &sub, scale: &sscale };
                let mut cpu = Searcher::new(ScanKernel::Auto, qs, dim, a.k);
                stream_sides(bds, &bcols, metric, |b, offset| {
                    cpu.add(b, offset);
                    Ok(())
                })?;
                for (&qi, h) in unproven.iter().zip(cpu.finish()) {
                    hits[qi] = h;
                }
            }
            hits
        }
    };
    let search_s = t1.elapsed().as_secs_f64();
    let resolve = |ds: &Dataset| super::resolve_id(ds, a.id_col.as_deref(), &["subscriber_id"]);
    let (qid, bid) = (resolve(qds)?, resolve(bds)?);
    let mut q_rows = Vec::new();
    let mut r_col = Vec::new();
    let mut s_col = Vec::new();
    for (qi, hs) in hits.iter().enumerate() {
        for (r, h) in hs.iter().enumerate() {
            q_rows.push(qi as u64);
            r_col.push(r as i32 + 1);
            s_col.push(h.score);
        }
    }
    let qids = ids_of(qds, qid.as_deref(), &q_rows)?;
    let rows: Vec<u64> = hits.iter().flatten().map(|h| h.index).collect();
    let bids = ids_of(bds, bid.as_deref(), &rows)?;
    let schema = Arc::new(Schema::new(vec![
        id_field(qds, qid.as_deref(), "query")?,
        Field::new("rank", DataType::Int32, false),
        id_field(bds, bid.as_deref(), "neighbor")?,
        Field::new("score", DataType::Float64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![qids, Arc::new(Int32Array::from(r_col)), bids, Arc::new(Float64Array::from(s_col))];
    sink.start(&schema)?;
    sink.write(&RecordBatch::try_new(schema, cols).map_err(|e| Error::Runtime(e.to_string()))?)?;
    Ok(NeighborsReport {
        queries: nq,
        base_rows,
        dim,
        k: a.k,
        read_seconds: read_s,
        search_seconds: search_s,
        compute_seconds: compute_s,
        queries_redone_on_cpu: redone,
        backend: if gpu.is_some() { "gpu" } else { "cpu" },
        scan: if gpu.is_some() { "gpu" } else { scan_name },
    })
}

/// Stream the base as searchable chunks (normalised for cosine) with each chunk's first
/// row; returns the number of rows.
fn stream_sides(
    ds: &Dataset,
    cols: &[FeatureColumn],
    metric: SimMetric,
    mut each: impl FnMut(&Side<'_>, u64) -> Result<()>,
) -> Result<u64> {
    let dim = cols[0].width;
    let mut rows = 0u64;
    stream_rows(ds, cols, None, |block, _, _, offset| {
        let (bs, bscale) = prepare(block, dim, metric);
        each(&Side { scan: bs.as_deref().unwrap_or(block), exact: block, scale: &bscale }, offset)?;
        rows = offset + (block.len() / dim) as u64;
        Ok(())
    })?;
    Ok(rows)
}

/// Stream rows (embedding and optional id as text) batch by batch. A second thread
/// decodes the next batches while `each` works on this one.
fn stream_rows(
    ds: &Dataset,
    cols: &[FeatureColumn],
    id: Option<&str>,
    mut each: impl FnMut(&[f32], Option<&StringArray>, Option<&ArrayRef>, u64) -> Result<()>,
) -> Result<()> {
    let dim = cols[0].width;
    let mut names = vec![cols[0].column.clone()];
    names.extend(id.map(str::to_string));
    let names = &names;
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        s.spawn(move || match ds.batches(names) {
            Ok(batches) => {
                for sb in batches {
                    let failed = sb.is_err();
                    if tx.send(sb).is_err() || failed {
                        break;
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        });
        let mut offset = 0u64;
        let mut scratch = Vec::new();
        for sb in rx {
            let sb = sb?;
            let m = sb.batch.num_rows();
            let ids = match id {
                Some(_) => {
                    Some(cast(sb.batch.column(1), &DataType::Utf8).map_err(|e| Error::input(sb.path, e.to_string()))?)
                }
                None => None,
            };
            let ids = ids.as_ref().map(|a| a.as_any().downcast_ref::<StringArray>().unwrap());
            let id_values = id.map(|_| sb.batch.column(1));
            features::with_rows(&sb.batch, &cols[..1], sb.path, &mut scratch, |block| {
                if let Some(bad) = features::first_non_finite(block) {
                    return Err(Error::input(
                        sb.path,
                        format!("'{}' has a null, NaN or infinite value at batch row {}", cols[0].column, bad / dim),
                    ));
                }
                each(block, ids, id_values, offset)
            })??;
            offset += m as u64;
        }
        Ok(())
    })
}

/// A look-alike audience: the `input` rows most similar to the seeds (by the most
/// similar seed, the mean over seeds, or the seeds' centroid), seeds left out. One
/// output batch: id (its column's type, or uint64 row numbers), rank (int32), score.
pub fn similar(
    input: &Dataset,
    seeds: Seeds<'_>,
    cfg: &SimilarConfig,
    gpu: Option<&WgpuBackend>,
    sink: &mut dyn BatchSink,
) -> Result<SimilarReport> {
    let a = cfg;
    if a.top == 0 {
        return Err(Error::Usage("--top must be at least 1".into()));
    }
    let metric = a.metric;
    let ds = input;
    let cols = embedding_column(ds, &a.embedding)?;
    let dim = cols[0].width;
    let id = super::resolve_id(ds, a.id_col.as_deref(), &["subscriber_id"])?;
    // The seeds and the ids to leave out.
    let mut exclude = std::collections::HashSet::new();
    let seeds: Vec<f32> = match seeds {
        Seeds::Table(sds) => {
            let p = &sds.files[0];
            let scols = embedding_column(sds, &a.embedding)?;
            if scols[0].width != dim {
                // Blame the file that is wrong: a ragged list column, else the seeds.
                for d in [ds, sds] {
                    if let Some((f, row, len, w)) = d.first_ragged_row(&a.embedding)? {
                        return Err(Error::input(
                            f,
                            format!(
                                "'{}' is ragged: row {row} holds {len} values where earlier rows hold {w}; \
                                 every embedding needs the same length",
                                a.embedding
                            ),
                        ));
                    }
                }
                return Err(Error::input(
                    p,
                    format!(
                        "the seeds' '{}' has {} values per row but the input's ({}) has {dim}",
                        a.embedding,
                        scols[0].width,
                        ds.display_name()
                    ),
                ));
            }
            let sid = super::resolve_id(sds, a.id_col.as_deref(), &["subscriber_id"])?;
            let mut v = Vec::new();
            stream_rows(sds, &scols, sid.as_deref(), |block, ids, _, _| {
                v.extend_from_slice(block);
                if let Some(ids) = ids {
                    exclude.extend((0..ids.len()).map(|i| ids.value(i).to_string()));
                }
                Ok(())
            })?;
            v
        }
        Seeds::Ids { ids: wanted, source: p } => {
            let Some(idc) = id.as_deref() else {
                return Err(Error::Usage("--seed-ids needs an id column in the input (--id-col)".into()));
            };
            let mut v = Vec::new();
            stream_rows(ds, &cols, Some(idc), |block, ids, _, _| {
                let ids = ids.unwrap();
                for i in 0..ids.len() {
                    if wanted.contains(ids.value(i)) {
                        v.extend_from_slice(&block[i * dim..(i + 1) * dim]);
                    }
                }
                Ok(())
            })?;
            if v.is_empty() {
                return Err(Error::input(
                    p,
                    format!("none of its {} ids is in the input's '{idc}' column", wanted.len()),
                ));
            }
            exclude = wanted;
            v
        }
    };
    if seeds.is_empty() {
        return Err(Error::Usage("no seed vectors".into()));
    }
    let (ss, sscale) = prepare(&seeds, dim, metric);
    let seed_side = Side { scan: ss.as_deref().unwrap_or(&seeds), exact: &seeds, scale: &sscale };
    // Mean and centroid modes score against one vector (the mean of the scored seeds).
    let ns = seeds.len() / dim;
    let mut mean = vec![0f64; dim];
    for (r, row) in seeds.chunks_exact(dim).enumerate() {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += *v as f64 * sscale[r] / ns as f64;
        }
    }
    let mean_norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
    let gpu = if matches!(a.mode, SeedMode::Max) { gpu } else { None };
    let t0 = Instant::now();
    let mut best = TopK::new(a.top);
    let mut row_ids: std::collections::HashMap<u64, ArrayRef> = std::collections::HashMap::new();
    stream_rows(ds, &cols, id.as_deref(), |block, ids, id_values, offset| {
        let m = block.len() / dim;
        let (bs, bscale) = prepare(block, dim, metric);
        let scores: Vec<f64> = match a.mode {
            SeedMode::Max => {
                let b = Side { scan: bs.as_deref().unwrap_or(block), exact: block, scale: &bscale };
                let lists: Vec<Vec<Hit>> = match gpu {
                    None => {
                        let mut lists: Vec<TopK> = (0..m).map(|_| TopK::new(1)).collect();
                        search_chunk(&b, &seed_side, dim, 0, &mut lists);
                        lists.into_iter().map(TopK::finish).collect()
                    }
                    Some(gpu) => {
                        let mut s = GpuSearcher::new(gpu, Side { ..b }, dim, 1)?;
                        s.add(&seed_side, 0)?;
                        let (mut lists, unproven) = s.finish()?;
                        for r in unproven {
                            let one = Side {
                                scan: &b.scan[r * dim..(r + 1) * dim],
                                exact: &b.exact[r * dim..(r + 1) * dim],
                                scale: &b.scale[r..r + 1],
                            };
                            let mut l = [TopK::new(1)];
                            search_chunk(&one, &seed_side, dim, 0, &mut l);
                            let [l] = l;
                            lists[r] = l.finish();
                        }
                        lists
                    }
                };
                lists.into_iter().map(|l| l.first().map_or(f64::NEG_INFINITY, |h| h.score)).collect()
            }
            SeedMode::Mean | SeedMode::Centroid => block
                .chunks_exact(dim)
                .enumerate()
                .map(|(r, x)| {
                    let d: f64 = x.iter().zip(&mean).map(|(p, q)| *p as f64 * q).sum::<f64>() * bscale[r];
                    if matches!(a.mode, SeedMode::Centroid) && metric == SimMetric::Cosine && mean_norm > 0.0 {
                        d / mean_norm
                    } else {
                        d
                    }
                })
                .collect(),
        };
        let mut part = TopK::new(a.top);
        for (r, s) in scores.iter().enumerate() {
            let key = ids.map_or_else(|| (offset + r as u64).to_string(), |ids| ids.value(r).to_string());
            if exclude.contains(&key) {
                continue;
            }
            part.push_hit(crate::similarity::Hit { index: offset + r as u64, score: *s });
        }
        for h in part.finish() {
            let key: ArrayRef = match id_values {
                Some(v) => v.slice((h.index - offset) as usize, 1),
                None => Arc::new(UInt64Array::from(vec![h.index])),
            };
            row_ids.insert(h.index, key);
            best.push_hit(h);
        }
        Ok(())
    })?;
    let hits = best.finish();
    let secs = t0.elapsed().as_secs_f64();
    let schema = Arc::new(Schema::new(vec![
        id_field(ds, id.as_deref(), id.as_deref().unwrap_or("row"))?,
        Field::new("rank", DataType::Int32, false),
        Field::new("score", DataType::Float64, false),
    ]));
    let id_col: ArrayRef = if hits.is_empty() {
        arrow::array::new_empty_array(schema.field(0).data_type())
    } else {
        let parts: Vec<&dyn Array> = hits.iter().map(|h| row_ids[&h.index].as_ref()).collect();
        concat(&parts).map_err(|e| Error::Runtime(e.to_string()))?
    };
    let cols_out: Vec<ArrayRef> = vec![
        id_col,
        Arc::new(Int32Array::from_iter_values(1..=hits.len() as i32)),
        Arc::new(Float64Array::from(hits.iter().map(|h| h.score).collect::<Vec<_>>())),
    ];
    sink.start(&schema)?;
    sink.write(&RecordBatch::try_new(schema, cols_out).map_err(|e| Error::Runtime(e.to_string()))?)?;
    Ok(SimilarReport { seeds: ns, excluded_ids: exclude.len(), top: hits.len(), seconds: secs })
}
