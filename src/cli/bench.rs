//! `microseg bench`: the same data through each backend: per-pass times (upload,
//! assign, reduce, readback folded into the pass), throughput, and label agreement.

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
    #[arg(long)]
    k: usize,
    /// Timed repetitions of each pass (after one warm-up).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Backends to compare: cpu, gpu or both (gpu skipped with a notice when absent).
    #[arg(long, value_delimiter = ',', default_value = "cpu,gpu")]
    backends: Vec<BackendArg>,
    #[arg(long)]
    allow_software_gpu: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    pub(crate) json: bool,
}

fn data(a: &BenchArgs) -> Result<Matrix> {
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
    let mut v = Vec::with_capacity(a.rows * a.dims);
    for i in 0..a.rows {
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
    let x = data(&a)?;
    if a.k == 0 || a.k > x.n() {
        return Err(Error::Usage(format!("--k must be between 1 and the {} rows", x.n())));
    }
    let (n, d, k) = (x.n(), x.dim, a.k);
    let step = n / k;
    let c = Centroids::new((0..k).flat_map(|j| x.row(j * step).to_vec()).collect(), d);
    let mut rows = Vec::new();
    for which in &a.backends {
        let b = match which {
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
        };
        rows.push(time_backend(&b, &x, &c, a.iters)?);
    }
    if rows.is_empty() {
        return Err(Error::Usage(
            "no backend to time: --backends names only the GPU and wgpu found none \
             (--allow-software-gpu accepts lavapipe; or add cpu)"
                .into(),
        ));
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
