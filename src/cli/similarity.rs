//! `microseg neighbors`: exact top-k neighbours of each query row among base rows, by
//! inner product or cosine over a Parquet embedding column; the base streams through
//! batch by batch, so it can be larger than memory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, Float64Array, Int32Array, StringArray, UInt64Array};
use arrow::compute::{cast, concat, take};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use clap::{Args, ValueEnum};

use super::backend::{BackendArgs, similarity_gpu};
use super::log;
use crate::error::{Error, Result};
use crate::features::{self, FeatureColumn, MissingPolicy};
use crate::io::output::{AtomicOutput, ParquetOutput};
use crate::io::{ColumnKind, Dataset};
use crate::similarity::{GpuSearcher, Hit, ScanKernel, Searcher, Side, SimMetric, TopK, prepare, search_chunk};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum SimMetricArg {
    Cosine,
    Ip,
}

#[derive(Debug, Args)]
pub(crate) struct NeighborsArgs {
    /// Base Parquet files (or directories).
    #[arg(long, required = true, num_args = 1..)]
    base: Vec<PathBuf>,
    /// Query Parquet file(s).
    #[arg(long, required = true, num_args = 1..)]
    queries: Vec<PathBuf>,
    /// The embedding column (FixedSizeList of numbers) in both.
    #[arg(long)]
    embedding: String,
    #[arg(long)]
    k: usize,
    #[arg(long, value_enum, default_value = "cosine")]
    metric: SimMetricArg,
    /// Id column in both (default: subscriber_id when present, else row numbers).
    #[arg(long)]
    id_col: Option<String>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    force: bool,
    #[arg(long)]
    pub(crate) json: bool,
    /// `auto` and `cpu` search on the CPU; `gpu` runs the top-k shader.
    #[command(flatten)]
    backend: BackendArgs,
    /// The CPU scan before exact re-scoring (same result): `auto` and `int8` pick the
    /// 8-bit filter with AVX-512 VNNI, else AVX2 (`int8-avx2` forces that), else f32.
    #[arg(long, value_enum, default_value = "auto")]
    scan: ScanArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ScanArg {
    Auto,
    F32,
    Int8,
    Int8Avx2,
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

pub(crate) fn run_neighbors(a: NeighborsArgs) -> Result<()> {
    if a.k == 0 {
        return Err(Error::Usage("--k must be at least 1".into()));
    }
    let inputs: Vec<&std::path::Path> = a.base.iter().chain(&a.queries).map(|p| p.as_path()).collect();
    crate::io::output::check_paths(&inputs, &[&a.out], a.json)?;
    let out = AtomicOutput::create(&a.out, a.force)?;
    let metric = match a.metric {
        SimMetricArg::Cosine => SimMetric::Cosine,
        SimMetricArg::Ip => SimMetric::Ip,
    };
    let t0 = Instant::now();
    let qds = Dataset::open(&a.queries)?;
    if qds.n_rows() == 0 {
        return Err(Error::input(&qds.files[0], "the query file has no rows; give at least one query"));
    }
    let bds = Dataset::open(&a.base)?;
    let qcols = embedding_column(&qds, &a.embedding)?;
    let bcols = embedding_column(&bds, &a.embedding)?;
    let dim = qcols[0].width;
    if bcols[0].width != dim {
        return Err(Error::input(
            &bds.files[0],
            format!("'{}' has {} values per row but the queries have {dim}", a.embedding, bcols[0].width),
        ));
    }
    let queries = features::load_training(&qds, &qcols, None, MissingPolicy::Error)?.matrix.data;
    let (qs, qscale) = prepare(&queries, dim, metric);
    let q = Side { scan: qs.as_deref().unwrap_or(&queries), exact: &queries, scale: &qscale };
    let nq = queries.len() / dim;
    let gpu = similarity_gpu(&a.backend)?;
    let kernel = match a.scan {
        ScanArg::Auto => ScanKernel::Auto,
        ScanArg::F32 => ScanKernel::F32,
        ScanArg::Int8 => ScanKernel::Int8,
        ScanArg::Int8Avx2 => ScanKernel::Int8Avx2,
    };
    let scan_name = kernel.resolve_for(dim).name();
    let read_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let base_rows;
    let mut compute_s = 0.0;
    let mut redone = 0;
    let hits: Vec<Vec<Hit>> = match &gpu {
        None => {
            let mut searcher = Searcher::new(kernel, q, dim, a.k);
            base_rows = stream_sides(&bds, &bcols, metric, |b, offset| {
                let tc = Instant::now();
                searcher.add(b, offset);
                compute_s += tc.elapsed().as_secs_f64();
                Ok(())
            })?;
            searcher.finish()
        }
        Some(gpu) => {
            let mut searcher = GpuSearcher::new(gpu, q, dim, a.k)?;
            base_rows = stream_sides(&bds, &bcols, metric, |b, offset| {
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
                stream_sides(&bds, &bcols, metric, |b, offset| {
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
    let resolve = |ds: &Dataset| crate::pipeline::resolve_id(ds, a.id_col.as_deref(), &["subscriber_id"]);
    let (qid, bid) = (resolve(&qds)?, resolve(&bds)?);
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
    let qids = ids_of(&qds, qid.as_deref(), &q_rows)?;
    let rows: Vec<u64> = hits.iter().flatten().map(|h| h.index).collect();
    let bids = ids_of(&bds, bid.as_deref(), &rows)?;
    let schema = Arc::new(Schema::new(vec![
        id_field(&qds, qid.as_deref(), "query")?,
        Field::new("rank", DataType::Int32, false),
        id_field(&bds, bid.as_deref(), "neighbor")?,
        Field::new("score", DataType::Float64, false),
    ]));
    let meta = super::provenance("neighbors", None, false);
    let mut w = ParquetOutput::with_metadata(out, schema.clone(), 1 << 20, meta)?;
    let cols: Vec<ArrayRef> = vec![qids, Arc::new(Int32Array::from(r_col)), bids, Arc::new(Float64Array::from(s_col))];
    w.write(&RecordBatch::try_new(schema, cols).map_err(|e| Error::Runtime(e.to_string()))?)?;
    w.commit()?;
    let qps = nq as f64 / search_s.max(1e-9);
    log(format!(
        "{nq} queries × {base_rows} base rows, k={}: search {search_s:.2}s ({qps:.0} queries/s); wrote {}",
        a.k,
        a.out.display()
    ));
    if a.json {
        super::print_json(&serde_json::json!({
            "command": "neighbors", "queries": nq, "base_rows": base_rows, "dim": dim, "k": a.k,
            "metric": metric, "read_seconds": read_s, "search_seconds": search_s, "queries_per_second": qps,
            "compute_seconds": compute_s, "queries_per_second_compute_only": nq as f64 / compute_s.max(1e-9),
            "threads": rayon::current_num_threads(),
            "backend": if gpu.is_some() { "gpu" } else { "cpu" }, "queries_redone_on_cpu": redone,
            "scan": if gpu.is_some() { "gpu" } else { scan_name },
        }))?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum SeedMode {
    /// Similarity to the most similar seed.
    Max,
    /// Mean similarity over the seeds.
    Mean,
    /// Similarity to the seeds' centroid (normalised for cosine).
    Centroid,
}

#[derive(Debug, Args)]
pub(crate) struct SimilarArgs {
    /// The subscribers to score (Parquet files or directories).
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    #[arg(long)]
    embedding: String,
    /// Seed vectors: a Parquet file with the same embedding column.
    #[arg(long, conflicts_with = "seed_ids", required_unless_present = "seed_ids")]
    seeds: Option<PathBuf>,
    /// Seed ids, one per line, looked up in the input's id column.
    #[arg(long)]
    seed_ids: Option<PathBuf>,
    /// How many look-alikes to write.
    #[arg(long)]
    top: usize,
    #[arg(long, value_enum, default_value = "max")]
    mode: SeedMode,
    #[arg(long, value_enum, default_value = "cosine")]
    metric: SimMetricArg,
    /// Id column (default: subscriber_id when present, else row numbers).
    #[arg(long)]
    id_col: Option<String>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    force: bool,
    #[arg(long)]
    pub(crate) json: bool,
    /// `auto` and `cpu` score on the CPU; `gpu` runs the top-k shader (mode max).
    #[command(flatten)]
    backend: BackendArgs,
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

pub(crate) fn run_similar(a: SimilarArgs) -> Result<()> {
    if a.top == 0 {
        return Err(Error::Usage("--top must be at least 1".into()));
    }
    let mut inputs: Vec<&std::path::Path> = a.input.iter().map(|p| p.as_path()).collect();
    inputs.extend(a.seeds.as_deref());
    inputs.extend(a.seed_ids.as_deref());
    crate::io::output::check_paths(&inputs, &[&a.out], a.json)?;
    let out = AtomicOutput::create(&a.out, a.force)?;
    let metric = match a.metric {
        SimMetricArg::Cosine => SimMetric::Cosine,
        SimMetricArg::Ip => SimMetric::Ip,
    };
    let ds = Dataset::open(&a.input)?;
    let cols = embedding_column(&ds, &a.embedding)?;
    let dim = cols[0].width;
    let id = crate::pipeline::resolve_id(&ds, a.id_col.as_deref(), &["subscriber_id"])?;
    // The seeds and the ids to leave out.
    let mut exclude = std::collections::HashSet::new();
    let seeds: Vec<f32> = match (&a.seeds, &a.seed_ids) {
        (Some(p), _) => {
            let sds = Dataset::open(std::slice::from_ref(p))?;
            let scols = embedding_column(&sds, &a.embedding)?;
            if scols[0].width != dim {
                // Blame the file that is wrong: a ragged list column, else the seeds.
                for d in [&ds, &sds] {
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
            let sid = crate::pipeline::resolve_id(&sds, a.id_col.as_deref(), &["subscriber_id"])?;
            let mut v = Vec::new();
            stream_rows(&sds, &scols, sid.as_deref(), |block, ids, _, _| {
                v.extend_from_slice(block);
                if let Some(ids) = ids {
                    exclude.extend((0..ids.len()).map(|i| ids.value(i).to_string()));
                }
                Ok(())
            })?;
            v
        }
        (None, Some(p)) => {
            let Some(idc) = id.as_deref() else {
                return Err(Error::Usage("--seed-ids needs an id column in the input (--id-col)".into()));
            };
            let text = std::fs::read_to_string(p).map_err(|e| Error::input(p, format!("cannot read: {e}")))?;
            let wanted: std::collections::HashSet<String> =
                text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
            let mut v = Vec::new();
            stream_rows(&ds, &cols, Some(idc), |block, ids, _, _| {
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
        (None, None) => unreachable!("clap requires one"),
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
    let gpu = if matches!(a.mode, SeedMode::Max) { similarity_gpu(&a.backend)? } else { None };
    let t0 = Instant::now();
    let mut best = TopK::new(a.top);
    let mut row_ids: std::collections::HashMap<u64, ArrayRef> = std::collections::HashMap::new();
    stream_rows(&ds, &cols, id.as_deref(), |block, ids, id_values, offset| {
        let m = block.len() / dim;
        let (bs, bscale) = prepare(block, dim, metric);
        let scores: Vec<f64> = match a.mode {
            SeedMode::Max => {
                let b = Side { scan: bs.as_deref().unwrap_or(block), exact: block, scale: &bscale };
                let lists: Vec<Vec<Hit>> = match &gpu {
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
        id_field(&ds, id.as_deref(), id.as_deref().unwrap_or("row"))?,
        Field::new("rank", DataType::Int32, false),
        Field::new("score", DataType::Float64, false),
    ]));
    let meta = super::provenance("similar", None, false);
    let mut w = ParquetOutput::with_metadata(out, schema.clone(), 1 << 20, meta)?;
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
    w.write(&RecordBatch::try_new(schema, cols_out).map_err(|e| Error::Runtime(e.to_string()))?)?;
    w.commit()?;
    log(format!(
        "scored against {ns} seeds ({} excluded ids) in {secs:.2}s; wrote the top {} to {}",
        exclude.len(),
        hits.len(),
        a.out.display()
    ));
    if a.json {
        super::print_json(&serde_json::json!({"command": "similar", "seeds": ns, "top": hits.len(), "seconds": secs}))?;
    }
    Ok(())
}
