//! `microseg bench`: the same data through each backend: per-pass times (upload,
//! assign, reduce, readback folded into the pass), throughput, and label agreement;
//! with `--topk`, exact top-k search of queries over the rows instead (what
//! `neighbors` and `similar` run), and whether every backend's lists are the CPU's.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::backend::BackendArg;
use crate::backend::cpu::CpuBackend;
use crate::backend::wgpu::{PassTimes, WgpuBackend};
use crate::backend::{Backend, Centroids, Nearest};
use crate::error::{Error, Result};
use crate::features::{self, Matrix, MissingPolicy, Scale};
use crate::io::Dataset;

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// A Parquet table (all numeric feature columns, standard-scaled); default: generated rows.
    input: Option<PathBuf>,
    /// Generated rows (without INPUT).
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Generated features (without INPUT).
    #[arg(long, default_value_t = 32)]
    dims: usize,
    /// Centroids; with --topk, the length of each query's list.
    #[arg(long)]
    k: usize,
    /// Time exact top-k search (cosine) of this many generated queries over the
    /// generated rows instead of k-means passes.
    #[arg(long)]
    topk: Option<usize>,
    /// Timed repetitions of each pass (after one warm-up).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Backends to compare: cpu, gpu or both (gpu skipped with a notice when absent).
    #[arg(long, value_delimiter = ',', default_value = "cpu,gpu")]
    backends: Vec<BackendArg>,
    /// Also accept a software GPU adapter (Mesa's lavapipe).
    #[arg(long, env = "MICROSEG_ALLOW_SOFTWARE_GPU", value_parser = clap::builder::BoolishValueParser::new())]
    allow_software_gpu: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    pub(crate) json: bool,
}

fn data(a: &BenchArgs) -> Result<Matrix> {
    generated_or_read(a, a.rows)
}

fn generated_or_read(a: &BenchArgs, rows: usize) -> Result<Matrix> {
    if let Some(p) = &a.input {
        let ds = Dataset::open(std::slice::from_ref(p))?;
        let cols = features::select_columns(&ds, None, &[], &[], &["subscriber_id"])?;
        let mut t = features::load_training(&ds, &cols, None, MissingPolicy::Drop)?;
        let tf = features::fit_transforms(&t.matrix, &cols, Scale::Standard, None);
        features::apply_transforms(&mut t.matrix.data, &tf);
        return Ok(t.matrix);
    }
    use rand::{RngExt, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let centres: Vec<f32> = (0..64 * a.dims).map(|_| rng.random::<f32>() * 6.0 - 3.0).collect();
    let mut v = Vec::with_capacity(rows * a.dims);
    for i in 0..rows {
        let c = (i * 7919) % 64;
        for f in 0..a.dims {
            v.push(centres[c * a.dims + f] + rng.random::<f32>() - 0.5);
        }
    }
    Ok(Matrix::new(v, a.dims))
}

struct Row {
    backend: &'static str,
    first_assign: f64,
    assign: f64,
    reduce: f64,
    /// GPU only: the upload, and per assign pass the compute and readback parts.
    gpu: Option<(f64, PassTimes)>,
    labels: Vec<u32>,
    nearest: Vec<Nearest>,
}

enum Timed {
    Cpu(CpuBackend),
    Gpu(Box<WgpuBackend>),
}

/// Open each backend `--backends` names (the GPU skipped with a notice when absent).
fn open_backends(a: &BenchArgs) -> Result<Vec<Timed>> {
    let mut out = Vec::new();
    for which in &a.backends {
        out.push(match which {
            BackendArg::Cpu => Timed::Cpu(CpuBackend::default()),
            _ => match WgpuBackend::open(a.allow_software_gpu)? {
                Some(g) => {
                    super::log(format!(
                        "GPU adapter {} ({}, {})",
                        g.ctx.adapter.name, g.ctx.adapter.backend, g.ctx.adapter.device_type
                    ));
                    Timed::Gpu(Box::new(g))
                }
                None => {
                    super::log("no GPU adapter (--allow-software-gpu accepts lavapipe): GPU skipped");
                    continue;
                }
            },
        });
    }
    if out.is_empty() {
        return Err(Error::Usage(
            "no backend to time: --backends names only the GPU and wgpu found none \
             (--allow-software-gpu accepts lavapipe; or add cpu)"
                .into(),
        ));
    }
    Ok(out)
}

/// Base rows per chunk of a timed top-k search (the lists merge between chunks; on a
/// GPU each chunk is one upload and one read-back of the lists).
const TOPK_CHUNK_ROWS: usize = 1 << 18;

/// `--topk`: the first `rows` generated rows are the base, `queries` more the queries;
/// each backend searches `iters` times after a first (timed apart: it includes the
/// GPU's shader set-up), and its lists are compared with the CPU's.
fn run_topk(a: &BenchArgs, queries: usize) -> Result<()> {
    use crate::similarity::{ScanKernel, SimMetric, search_gpu, search_with};
    if a.input.is_some() {
        return Err(Error::Usage("--topk times generated rows only: leave out INPUT".into()));
    }
    if queries == 0 || a.k == 0 || a.k > a.rows {
        return Err(Error::Usage(format!("--topk must be at least 1 and --k between 1 and the {} rows", a.rows)));
    }
    let total = a.rows.checked_add(queries).filter(|t| t.checked_mul(a.dims).is_some());
    let Some(total) = total else {
        return Err(Error::Usage(format!("--rows {} and --topk {queries} are too many rows to generate", a.rows)));
    };
    let all = generated_or_read(a, total)?;
    let (d, n) = (all.dim, a.rows);
    let (base, q) = all.data.split_at(n * d);
    let mut lists: Vec<(&'static str, f64, f64, Vec<Vec<u64>>)> = Vec::new();
    for b in open_backends(a)? {
        let search = || -> Result<Vec<Vec<u64>>> {
            let hits = match &b {
                Timed::Cpu(_) => search_with(ScanKernel::Auto, q, base, d, a.k, SimMetric::Cosine, TOPK_CHUNK_ROWS),
                Timed::Gpu(g) => search_gpu(g, q, base, d, a.k, SimMetric::Cosine, TOPK_CHUNK_ROWS)?,
            };
            Ok(hits.into_iter().map(|l| l.into_iter().map(|h| h.index).collect()).collect())
        };
        let t = Instant::now();
        let got = search()?;
        let first = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..a.iters {
            search()?;
        }
        let name = match &b {
            Timed::Cpu(_) => "cpu",
            Timed::Gpu(_) => "wgpu",
        };
        lists.push((name, first, t.elapsed().as_secs_f64() / a.iters as f64, got));
    }
    let cpu = lists.iter().position(|l| l.0 == "cpu");
    let flops = 2.0 * n as f64 * queries as f64 * d as f64;
    let out: Vec<serde_json::Value> = lists
        .iter()
        .map(|(name, first, secs, got)| {
            serde_json::json!({
                "backend": name,
                "first_seconds": first,
                "seconds": secs,
                "queries_per_second": queries as f64 / secs,
                "score_gflops": flops / secs / 1e9,
                "lists_identical_to_cpu": cpu.map(|i| &lists[i].3 == got),
            })
        })
        .collect();
    if a.json {
        return super::print_json(&serde_json::json!({
            "command": "bench", "mode": "topk", "n": n, "d": d, "queries": queries, "k": a.k,
            "metric": "cosine", "iters": a.iters, "results": out,
        }));
    }
    let mut text = format!(
        "top-{} of {queries} queries over n={n} rows, d={d}, cosine ({} timed repetitions; the first apart)\n",
        a.k, a.iters
    );
    text += "| backend | first s | search s | queries/s | score GFLOP/s | lists identical to cpu |\n|---|---|---|---|---|---|\n";
    for o in &out {
        text += &format!(
            "| {} | {:.4} | {:.4} | {:.0} | {:.1} | {} |\n",
            o["backend"].as_str().unwrap_or("?"),
            o["first_seconds"].as_f64().unwrap_or(f64::NAN),
            o["seconds"].as_f64().unwrap_or(f64::NAN),
            o["queries_per_second"].as_f64().unwrap_or(f64::NAN),
            o["score_gflops"].as_f64().unwrap_or(f64::NAN),
            o["lists_identical_to_cpu"].as_bool().map_or("-".to_string(), |v| v.to_string()),
        );
    }
    crate::io::output::print_stdout(&text)
}

fn time_backend(which: &Timed, x: &Matrix, c: &Centroids, iters: usize) -> Result<Row> {
    let b: &dyn Backend = match which {
        Timed::Cpu(b) => b,
        Timed::Gpu(b) => b.as_ref(),
    };
    let take = || match which {
        Timed::Gpu(g) => g.take_times(),
        Timed::Cpu(_) => PassTimes::default(),
    };
    let mut out = vec![Nearest::default(); x.n()];
    b.retain(&x.data, x.dim)?; // as a fit does: resident on a device
    let t = Instant::now();
    b.assign(&x.data, c, &mut out)?; // includes the upload of resident data
    let first_assign = t.elapsed().as_secs_f64();
    let upload = take().upload;
    let t = Instant::now();
    for _ in 0..iters {
        b.assign(&x.data, c, &mut out)?;
    }
    let assign = t.elapsed().as_secs_f64() / iters as f64;
    let pt = take();
    let per = PassTimes { upload, compute: pt.compute / iters as f64, readback: pt.readback / iters as f64 };
    let t = Instant::now();
    for _ in 0..iters {
        b.reduce(&x.data, None, &out, c.k)?;
    }
    let reduce = t.elapsed().as_secs_f64() / iters as f64;
    b.release();
    let gpu = matches!(which, Timed::Gpu(_)).then_some((upload, per));
    Ok(Row {
        backend: b.name(),
        first_assign,
        assign,
        reduce,
        gpu,
        labels: out.iter().map(|o| o.label).collect(),
        nearest: out,
    })
}

pub(crate) fn run_bench(a: BenchArgs) -> Result<()> {
    if a.input.is_none() && (a.rows == 0 || a.dims == 0) {
        return Err(Error::Usage("--rows and --dims must be at least 1".into()));
    }
    if a.iters == 0 {
        return Err(Error::Usage("--iters must be at least 1 (timed repetitions)".into()));
    }
    if let Some(p) = &a.input {
        crate::io::output::check_paths(&[p.as_path()], &[], a.json)?;
    }
    if let Some(q) = a.topk {
        return run_topk(&a, q);
    }
    let x = data(&a)?;
    if a.k == 0 || a.k > x.n() {
        return Err(Error::Usage(format!("--k must be between 1 and the {} rows", x.n())));
    }
    let (n, d, k) = (x.n(), x.dim, a.k);
    let step = n / k;
    let c = Centroids::new((0..k).flat_map(|j| x.row(j * step).to_vec()).collect(), d);
    let mut rows = Vec::new();
    for b in open_backends(&a)? {
        rows.push(time_backend(&b, &x, &c, a.iters)?);
    }
    let flops = 2.0 * n as f64 * k as f64 * d as f64;
    let reference = rows.iter().position(|r| r.backend == "cpu");
    let mut out = Vec::new();
    for r in &rows {
        let (agree, non_tie) = match reference {
            Some(i) => {
                let refr = &rows[i];
                let mut same = 0usize;
                let mut non_tie = 0usize;
                for (p, (l, rl)) in r.labels.iter().zip(&refr.labels).enumerate() {
                    if l == rl {
                        same += 1;
                    } else {
                        let nr = refr.nearest[p];
                        if (nr.second - nr.dist) > 1e-5 * nr.second.max(f32::MIN_POSITIVE) {
                            non_tie += 1;
                        }
                    }
                }
                (same as f64 / n as f64, non_tie)
            }
            None => (f64::NAN, 0),
        };
        out.push(serde_json::json!({
            "backend": r.backend,
            "first_assign_seconds": r.first_assign,
            "assign_seconds": r.assign,
            "reduce_seconds": r.reduce,
            "gpu_upload_seconds": r.gpu.map(|g| g.0),
            "gpu_assign_compute_seconds": r.gpu.map(|g| g.1.compute),
            "gpu_assign_readback_seconds": r.gpu.map(|g| g.1.readback),
            "assign_gflops": flops / r.assign / 1e9,
            "points_centroids_dims_per_second": n as f64 * k as f64 * d as f64 / r.assign,
            "label_agreement_with_cpu": agree,
            "mismatches_beyond_near_ties": non_tie,
        }));
    }
    if a.json {
        return super::print_json(
            &serde_json::json!({"command": "bench", "n": n, "d": d, "k": k, "iters": a.iters, "results": out}),
        );
    }
    let mut text = format!("n={n} d={d} k={k} ({} timed repetitions; first assign includes the upload)\n", a.iters);
    text += "| backend | first assign s | upload s | assign s | of which compute s | readback s | reduce s | assign GFLOP/s | label agreement with cpu | mismatches beyond near-ties |\n";
    text += "|---|---|---|---|---|---|---|---|---|---|\n";
    let opt = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.4}"));
    for o in &out {
        text += &format!(
            "| {} | {:.4} | {} | {:.4} | {} | {} | {:.4} | {:.1} | {:.6} | {} |\n",
            o["backend"].as_str().unwrap_or("?"),
            o["first_assign_seconds"].as_f64().unwrap_or(f64::NAN),
            opt(&o["gpu_upload_seconds"]),
            o["assign_seconds"].as_f64().unwrap_or(f64::NAN),
            opt(&o["gpu_assign_compute_seconds"]),
            opt(&o["gpu_assign_readback_seconds"]),
            o["reduce_seconds"].as_f64().unwrap_or(f64::NAN),
            o["assign_gflops"].as_f64().unwrap_or(f64::NAN),
            o["label_agreement_with_cpu"].as_f64().unwrap_or(f64::NAN),
            o["mismatches_beyond_near_ties"]
        );
    }
    crate::io::output::print_stdout(&text)
}
