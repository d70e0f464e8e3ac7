//! `microseg neighbors`: exact top-k neighbours of each query row among base rows, by
//! inner product or cosine over a Parquet embedding column; the base streams through
//! batch by batch, so it can be larger than memory.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::backend::{BackendArgs, similarity_gpu};
use super::log;
use crate::error::{Error, Result};
use crate::io::Dataset;
use crate::io::output::{AtomicOutput, ParquetOutput};
use crate::pipeline::{self, NeighborsConfig, SeedMode, Seeds, SimilarConfig};
use crate::similarity::{ScanKernel, SimMetric};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum SimMetricArg {
    Cosine,
    Ip,
}

impl From<SimMetricArg> for SimMetric {
    fn from(m: SimMetricArg) -> Self {
        match m {
            SimMetricArg::Cosine => SimMetric::Cosine,
            SimMetricArg::Ip => SimMetric::Ip,
        }
    }
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
    #[command(flatten)]
    pub(crate) write: super::WriteArgs,
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

pub(crate) fn run_neighbors(a: NeighborsArgs) -> Result<()> {
    let inputs: Vec<&std::path::Path> = a.base.iter().chain(&a.queries).map(|p| p.as_path()).collect();
    crate::io::output::check_paths(&inputs, &[&a.out], a.write.json)?;
    let out = AtomicOutput::create(&a.out, a.write.force)?;
    let queries = Dataset::open(&a.queries)?;
    let base = Dataset::open(&a.base)?;
    let cfg = NeighborsConfig {
        embedding: a.embedding.clone(),
        k: a.k,
        metric: a.metric.into(),
        id_col: a.id_col.clone(),
        scan: match a.scan {
            ScanArg::Auto => ScanKernel::Auto,
            ScanArg::F32 => ScanKernel::F32,
            ScanArg::Int8 => ScanKernel::Int8,
            ScanArg::Int8Avx2 => ScanKernel::Int8Avx2,
        },
    };
    let gpu = similarity_gpu(&a.backend)?;
    let mut sink = ParquetOutput::pending(out, 1 << 20, super::provenance("neighbors", None, false))?;
    let r = pipeline::neighbors(&base, &queries, &cfg, gpu.as_ref(), &mut sink)?;
    sink.commit()?;
    let qps = r.queries as f64 / r.search_seconds.max(1e-9);
    log(format!(
        "{} queries × {} base rows, k={}: search {:.2}s ({qps:.0} queries/s); wrote {}",
        r.queries,
        r.base_rows,
        r.k,
        r.search_seconds,
        a.out.display()
    ));
    if a.write.json {
        let mut v = serde_json::to_value(&r).map_err(|e| Error::Runtime(e.to_string()))?;
        v["command"] = "neighbors".into();
        v["metric"] = serde_json::to_value(cfg.metric).unwrap_or_default();
        v["queries_per_second"] = qps.into();
        v["queries_per_second_compute_only"] = (r.queries as f64 / r.compute_seconds.max(1e-9)).into();
        v["threads"] = rayon::current_num_threads().into();
        super::print_json(&v)?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum SeedModeArg {
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
    mode: SeedModeArg,
    #[arg(long, value_enum, default_value = "cosine")]
    metric: SimMetricArg,
    /// Id column (default: subscriber_id when present, else row numbers).
    #[arg(long)]
    id_col: Option<String>,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    pub(crate) write: super::WriteArgs,
    /// `auto` and `cpu` score on the CPU; `gpu` runs the top-k shader (mode max).
    #[command(flatten)]
    backend: BackendArgs,
}

pub(crate) fn run_similar(a: SimilarArgs) -> Result<()> {
    let mut inputs: Vec<&std::path::Path> = a.input.iter().map(|p| p.as_path()).collect();
    inputs.extend(a.seeds.as_deref());
    inputs.extend(a.seed_ids.as_deref());
    crate::io::output::check_paths(&inputs, &[&a.out], a.write.json)?;
    let out = AtomicOutput::create(&a.out, a.write.force)?;
    let input = Dataset::open(&a.input)?;
    let seed_table = a.seeds.as_ref().map(|p| Dataset::open(std::slice::from_ref(p))).transpose()?;
    let seeds = match (&seed_table, &a.seed_ids) {
        (Some(t), _) => Seeds::Table(t),
        (None, Some(p)) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::input(p, format!("cannot read: {e}")))?;
            let ids = text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
            Seeds::Ids { ids, source: p.clone() }
        }
        (None, None) => return Err(Error::Usage("give --seeds or --seed-ids".into())),
    };
    let cfg = SimilarConfig {
        embedding: a.embedding.clone(),
        top: a.top,
        mode: match a.mode {
            SeedModeArg::Max => SeedMode::Max,
            SeedModeArg::Mean => SeedMode::Mean,
            SeedModeArg::Centroid => SeedMode::Centroid,
        },
        metric: a.metric.into(),
        id_col: a.id_col.clone(),
    };
    let gpu = if matches!(a.mode, SeedModeArg::Max) { similarity_gpu(&a.backend)? } else { None };
    let mut sink = ParquetOutput::pending(out, 1 << 20, super::provenance("similar", None, false))?;
    let r = pipeline::similar(&input, seeds, &cfg, gpu.as_ref(), &mut sink)?;
    sink.commit()?;
    log(format!(
        "scored against {} seeds ({} excluded ids) in {:.2}s; wrote the top {} to {}",
        r.seeds,
        r.excluded_ids,
        r.seconds,
        r.top,
        a.out.display()
    ));
    if a.write.json {
        super::print_json(
            &serde_json::json!({"command": "similar", "seeds": r.seeds, "top": r.top, "seconds": r.seconds}),
        )?;
    }
    Ok(())
}
