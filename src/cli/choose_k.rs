//! `microseg choose-k`: how many segments? Fits every k of a range on one sample and
//! reports the criteria, the recommended k and a chart.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{CovarianceArg, MethodArg, MissingArg, ScaleArg, TableArgs, log};
use crate::error::Result;
use crate::io::Dataset;
use crate::io::output::{AtomicOutput, write_json};
use crate::model::Method;
use crate::pipeline::FitConfig;
use crate::pipeline::choose_k::{self, ChooseKConfig};

#[derive(Debug, Args)]
pub(crate) struct ChooseKArgs {
    /// Parquet files or directories of them.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The k to try: a range like 2..64 (inclusive) or a list like 3,5,8 (each ≥ 2).
    #[arg(long)]
    k: String,
    /// kmeans, or gmm (Gaussian mixtures: BIC and AIC are scored too).
    #[arg(long, value_enum, default_value = "kmeans")]
    method: MethodArg,
    /// gmm: the covariance shape.
    #[arg(long, value_enum, default_value = "diag")]
    covariance: CovarianceArg,
    /// gmm: added to the diagonal of every covariance.
    #[arg(long, default_value_t = 1e-6)]
    reg_covar: f64,
    /// Rows sampled (seeded) for every fit; all rows when fewer.
    #[arg(long, default_value_t = choose_k::DEFAULT_SAMPLE)]
    sample: usize,
    /// Rows of the sample the silhouette is computed on (quadratic in them).
    #[arg(long, default_value_t = choose_k::DEFAULT_SILHOUETTE_SAMPLE)]
    silhouette_sample: usize,
    /// Feature columns (default: every numeric column but the id and weight columns).
    #[arg(long, value_delimiter = ',')]
    features: Option<Vec<String>>,
    #[arg(long, value_delimiter = ',')]
    exclude: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    log1p: Vec<String>,
    #[arg(long, value_enum, default_value = "standard")]
    scale: ScaleArg,
    #[arg(long, value_enum, default_value = "error")]
    missing: MissingArg,
    #[arg(long)]
    weight_col: Option<String>,
    #[command(flatten)]
    table: TableArgs,
    #[command(flatten)]
    backend: super::backend::BackendArgs,
    #[arg(long, default_value_t = crate::kmeans::DEFAULT_SEED)]
    seed: u64,
    /// Iterations at most per fit [default: 300 for kmeans, 100 for gmm].
    #[arg(long)]
    max_iter: Option<usize>,
    /// As `fit --tol` [default: 1e-4 for kmeans, 1e-3 for gmm].
    #[arg(long)]
    tol: Option<f64>,
    /// Restarts per k (the best kept): a sweep compares fits, so a local optimum at one
    /// k would bend every criterion.
    #[arg(long, default_value_t = 3)]
    n_init: usize,
    /// Allow features whose names look sensitive.
    #[arg(long)]
    allow_sensitive: bool,
    /// Write the report (JSON) here; without it, and without --json, it goes to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write a chart of every criterion against k (self-contained HTML with SVG).
    #[arg(long)]
    chart: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) write: super::WriteArgs,
}

pub(crate) fn run_choose_k(a: ChooseKArgs) -> Result<()> {
    let method = match a.method {
        MethodArg::Kmeans => Method::KMeans,
        MethodArg::Gmm => Method::Gmm,
    };
    if method != Method::Gmm && (a.covariance != CovarianceArg::Diag || a.reg_covar != 1e-6) {
        return Err(crate::Error::Usage(
            "--covariance and --reg-covar set a Gaussian mixture; add --method gmm".into(),
        ));
    }
    let ks = ChooseKConfig::parse_range(&a.k)?;
    let d = FitConfig::for_method(method, ks[0]);
    let fit = FitConfig {
        features: a.features.clone(),
        exclude: a.exclude.clone(),
        log1p: a.log1p.clone(),
        scale: a.scale.into(),
        missing: a.missing.into(),
        weight_col: a.weight_col.clone(),
        id_col: a.table.id_col.clone(),
        max_iter: a.max_iter.unwrap_or(d.max_iter),
        tol: a.tol.unwrap_or(d.tol),
        seed: a.seed,
        n_init: a.n_init,
        allow_sensitive: a.allow_sensitive,
        covariance: super::fit::covariance(a.covariance),
        reg_covar: a.reg_covar,
        ..d
    };
    let cfg = ChooseKConfig { fit, ks, sample: a.sample, silhouette_sample: a.silhouette_sample };
    cfg.fit.check()?;
    let inputs: Vec<&Path> = a.inputs.iter().map(|p| p.as_path()).collect();
    let outputs: Vec<&Path> = a.out.iter().chain(&a.chart).map(|p| p.as_path()).collect();
    crate::io::output::check_paths(&inputs, &outputs, a.write.json)?;
    let out = a.out.as_ref().map(|p| AtomicOutput::create(p, a.write.force)).transpose()?;
    let chart = a.chart.as_ref().map(|p| AtomicOutput::create(p, a.write.force)).transpose()?;
    let backend = super::backend::open(&a.backend)?;
    let ds = Dataset::open(&a.inputs)?;
    let bar = super::fit::progress_bar(cfg.ks.len() as u64);
    let r = choose_k::choose_k(&ds, &cfg, backend.as_ref(), &mut |i, k| {
        bar.set_position(i as u64);
        bar.set_message(format!("k = {k}"));
        true
    });
    bar.finish_and_clear();
    let r = r?;
    if let Some(c) = chart {
        super::segments::write_html(c, &choose_k::chart_html(&r))?;
    }
    match out {
        Some(o) => write_json(o, &r)?,
        None if !a.write.json => {
            let text = serde_json::to_string_pretty(&r).map_err(|e| crate::Error::Runtime(e.to_string()))?;
            crate::io::output::print_stdout(&(text + "\n"))?;
        }
        None => {}
    }
    log(format!(
        "recommended k = {}{}: {}",
        r.recommendation.k,
        r.recommendation.runner_up.map(|k| format!(" (runner-up {k})")).unwrap_or_default(),
        r.recommendation.note
    ));
    if a.write.json {
        super::print_json(&serde_json::json!({
            "command": "choose-k",
            "recommended_k": r.recommendation.k,
            "runner_up": r.recommendation.runner_up,
            "criteria_agree": r.recommendation.criteria_agree,
            "note": r.recommendation.note,
            "choices": r.choices,
            "sample_rows": r.sample_rows,
            "seconds": r.seconds,
            "out": a.out.as_ref().map(|p| p.display().to_string()),
            "chart": a.chart.as_ref().map(|p| p.display().to_string()),
        }))?;
    }
    Ok(())
}
