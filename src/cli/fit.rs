//! `microseg fit` and `microseg segment`: read the training table, fit transforms and
//! k-means, write the model (and, for `segment`, assignments and a summary).

use std::path::{Path, PathBuf};

use clap::Args;

use super::{AlgorithmArg, CovarianceArg, MethodArg, MetricArg, MissingArg, ScaleArg, TableArgs, log};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::io::Dataset;
use crate::io::output::{AtomicOutput, ParquetOutput, write_json};
use crate::kmeans::{self, Metric};
use crate::model::{Method, Model};
use crate::pipeline::{self, AlgorithmChoice, FitConfig, FitReport, InitSpec};

/// Options of a fit, shared by `fit` and `segment`.
#[derive(Debug, Clone, Args)]
pub(crate) struct FitOpts {
    /// Number of segments.
    #[arg(long)]
    k: usize,
    /// Feature columns (default: every numeric column but the id and weight columns).
    #[arg(long, value_delimiter = ',')]
    features: Option<Vec<String>>,
    /// Columns left out of the default feature set.
    #[arg(long, value_delimiter = ',')]
    exclude: Vec<String>,
    /// Heavy-tailed columns transformed by ln(1 + x) before scaling (e.g. spend).
    #[arg(long, value_delimiter = ',')]
    log1p: Vec<String>,
    /// Per-feature scaling fitted on the training data.
    #[arg(long, value_enum, default_value = "standard")]
    scale: ScaleArg,
    /// Rows with null/NaN/inf features: refuse (error), leave out (drop) or fill with the training mean.
    #[arg(long, value_enum, default_value = "error")]
    missing: MissingArg,
    /// Sample weights column (finite, >= 0).
    #[arg(long)]
    weight_col: Option<String>,
    #[command(flatten)]
    table: TableArgs,
    #[command(flatten)]
    backend: super::backend::BackendArgs,
    /// k-means: k-means++ (default), k-means||, random, or a file of initial centroids
    /// (Parquet, CSV without header: k lines of d numbers in the model's feature space,
    /// or a model JSON). gmm: k-means (default: the project's own k-means) or such a
    /// file; responsibilities start as the hard assignment to those centroids.
    #[arg(long)]
    init: Option<String>,
    /// Rows sampled for initialisation (0: 64·k, at least 10,000).
    #[arg(long, default_value_t = 0)]
    init_sample: usize,
    /// Restarts from different seeds; the lowest inertia wins.
    #[arg(long, default_value_t = 1)]
    n_init: usize,
    /// Iterations at most [default: 300 for kmeans, 100 for gmm].
    #[arg(long)]
    max_iter: Option<usize>,
    /// kmeans: relative tolerance on the centroid shift (times the mean feature
    /// variance) [default: 1e-4]. gmm: on the change of the mean log-likelihood per row
    /// [default: 1e-3].
    #[arg(long)]
    tol: Option<f64>,
    /// kmeans, or gmm: a Gaussian mixture fitted by EM (soft membership: assignments
    /// carry each row's posterior probability).
    #[arg(long, value_enum, default_value = "kmeans")]
    method: MethodArg,
    /// gmm: the shape of each component's covariance.
    #[arg(long, value_enum, default_value = "diag")]
    covariance: CovarianceArg,
    /// gmm: added to the diagonal of every covariance (keeps them positive definite).
    #[arg(long, default_value_t = 1e-6)]
    reg_covar: f64,
    #[arg(long, default_value_t = kmeans::DEFAULT_SEED)]
    seed: u64,
    /// A previous model of the same features: matching segments keep its ids and names,
    /// and the new model records the lineage (kept, split, new, vanished).
    #[arg(long)]
    previous: Option<PathBuf>,
    /// Allow features whose names look sensitive (gender, race, religion, health, …).
    #[arg(long)]
    allow_sensitive: bool,
    /// euclidean, or cosine: spherical k-means (rows and centroids on the unit sphere;
    /// zero rows are an error, or left out with --missing drop).
    #[arg(long, value_enum, default_value = "euclidean")]
    metric: MetricArg,
    /// Total variance each embedding column gets under --scale standard (each scalar
    /// feature has 1); default: the number of scalar features, so both groups weigh the same.
    #[arg(long)]
    embedding_weight: Option<f64>,
    /// Exact iteration: Lloyd, Hamerly's bounds, or triangle-inequality pruning; all give
    /// the same model bit for bit. auto: Hamerly below k = 128, pruned from 128 on.
    #[arg(long, value_enum, default_value = "auto")]
    algorithm: AlgorithmArg,
    /// --algorithm minibatch: rows drawn per step [default: 1024].
    #[arg(long, value_name = "B")]
    batch_size: Option<usize>,
    /// --algorithm minibatch: stop after this many steps without improvement of the
    /// smoothed batch inertia (0: run all --max-iter passes) [default: 10].
    #[arg(long, value_name = "N")]
    max_no_improvement: Option<usize>,
    /// --algorithm minibatch: then up to N exact Lloyd iterations from the mini-batch
    /// centroids (0: the mini-batch result as scikit-learn gives it) [default: 0].
    #[arg(long, value_name = "N")]
    refine: Option<usize>,
    /// --refine: rounds of split/merge moves, each before its share of the exact
    /// iterations: a cluster holding two centroids gives one up to a cluster that holds
    /// two natural groups, where the split gains more than the merge costs (0: none;
    /// not with --stream) [default: 2].
    #[arg(long, value_name = "ROUNDS", requires = "refine")]
    split_merge: Option<usize>,
    /// --algorithm minibatch: re-seed clusters lighter than this share of the heaviest
    /// (0: never; with --refine, 0 often lands lower) [default: 0.01].
    #[arg(long, value_name = "R")]
    reassignment_ratio: Option<f64>,
    /// --algorithm minibatch: read the input batch by batch on every pass instead of
    /// loading it (data larger than memory): a pass to scan, one per epoch, one per
    /// --refine iteration, one to finish.
    #[arg(long)]
    stream: bool,
    /// --stream: rows in the shuffle buffer mini-batches are drawn from [default: 1048576].
    #[arg(long, value_name = "ROWS", requires = "stream")]
    shuffle_rows: Option<usize>,
    /// Train on every row even where the id column names a subscriber twice (refused by
    /// default: it usually means a join gone wrong upstream).
    #[arg(long)]
    allow_duplicate_ids: bool,
    /// Save the fit's state in this directory (created if missing) as it goes; the same
    /// command run again resumes from it and writes the model an uninterrupted fit
    /// writes, byte for byte. Removed once the outputs are written. k-means only.
    #[arg(long, value_name = "DIR")]
    checkpoint: Option<PathBuf>,
    /// Save the state every N iterations (and at the end of each run, and when a signal
    /// stops the fit) [default: 10].
    #[arg(long, value_name = "N", requires = "checkpoint")]
    checkpoint_every: Option<usize>,
    /// ... or once this many seconds have passed since the last save [default: 60].
    #[arg(long, value_name = "S", requires = "checkpoint")]
    checkpoint_seconds: Option<f64>,
}

#[derive(Debug, Args)]
pub(crate) struct FitArgs {
    /// Parquet files or directories of them.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    opts: FitOpts,
    /// Where to write the model (JSON).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    pub(crate) write: super::WriteArgs,
}

#[derive(Debug, Args)]
pub(crate) struct SegmentArgs {
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    opts: FitOpts,
    /// Directory for model.json, assignments.parquet, profile.json and report.html (created if missing).
    #[arg(long)]
    out_dir: PathBuf,
    /// Columns that are not features to summarise per segment in the profile.
    #[arg(long, value_delimiter = ',')]
    outcomes: Vec<String>,
    /// Add an `explanation` column to the assignments.
    #[arg(long)]
    explain: bool,
    #[command(flatten)]
    privacy: super::assign::PrivacyArgs,
    #[command(flatten)]
    pub(crate) write: super::WriteArgs,
}

impl FitOpts {
    /// The flags as the library's configuration (nothing added).
    fn config(&self, previous: Option<Model>) -> FitConfig {
        let method = match self.method {
            MethodArg::Kmeans => Method::KMeans,
            MethodArg::Gmm => Method::Gmm,
        };
        let defaults = FitConfig::for_method(method, self.k);
        let minibatch = self.algorithm == AlgorithmArg::Minibatch;
        FitConfig {
            method,
            covariance: covariance(self.covariance),
            reg_covar: self.reg_covar,
            k: self.k,
            features: self.features.clone(),
            exclude: self.exclude.clone(),
            log1p: self.log1p.clone(),
            scale: self.scale.into(),
            missing: self.missing.into(),
            weight_col: self.weight_col.clone(),
            id_col: self.table.id_col.clone(),
            init: self.init.as_deref().map_or(InitSpec::KMeansPlusPlus, InitSpec::parse),
            init_sample: self.init_sample,
            n_init: self.n_init,
            // Mini-batch: scikit-learn's MiniBatchKMeans defaults (100 passes at most, no
            // tolerance: the smoothed inertia decides).
            max_iter: self.max_iter.unwrap_or(if minibatch { 100 } else { defaults.max_iter }),
            tol: self.tol.unwrap_or(if minibatch { 0.0 } else { defaults.tol }),
            batch_size: self.batch_size.unwrap_or(defaults.batch_size),
            max_no_improvement: self.max_no_improvement.unwrap_or(defaults.max_no_improvement),
            refine: self.refine.unwrap_or(defaults.refine),
            split_merge: self.split_merge.unwrap_or(defaults.split_merge),
            reassignment_ratio: self.reassignment_ratio.unwrap_or(defaults.reassignment_ratio),
            stream: self.stream,
            shuffle_rows: self.shuffle_rows.unwrap_or(defaults.shuffle_rows),
            seed: self.seed,
            previous,
            allow_sensitive: self.allow_sensitive,
            metric: match self.metric {
                MetricArg::Euclidean => Metric::Euclidean,
                MetricArg::Cosine => Metric::Cosine,
            },
            embedding_weight: self.embedding_weight,
            algorithm: match self.algorithm {
                AlgorithmArg::Auto => AlgorithmChoice::Auto,
                AlgorithmArg::Lloyd => AlgorithmChoice::Lloyd,
                AlgorithmArg::Hamerly => AlgorithmChoice::Hamerly,
                AlgorithmArg::Pruned => AlgorithmChoice::Pruned,
                AlgorithmArg::Minibatch => AlgorithmChoice::MiniBatch,
            },
            allow_duplicate_ids: self.allow_duplicate_ids,
            checkpoint: self.checkpoint.as_ref().map(|dir| {
                let d = pipeline::CheckpointSpec::new(dir);
                pipeline::CheckpointSpec {
                    every: self.checkpoint_every.unwrap_or(d.every),
                    seconds: self.checkpoint_seconds.unwrap_or(d.seconds),
                    ..d
                }
            }),
        }
    }

    /// The configuration with the previous model loaded; checked before any data is read.
    fn checked_config(&self) -> Result<FitConfig> {
        if (self.batch_size.is_some()
            || self.max_no_improvement.is_some()
            || self.refine.is_some()
            || self.reassignment_ratio.is_some())
            && self.algorithm != AlgorithmArg::Minibatch
        {
            return Err(Error::Usage(
                "--batch-size, --max-no-improvement, --refine and --reassignment-ratio set mini-batch steps; add \
                 --algorithm minibatch"
                    .into(),
            ));
        }
        if self.stream && self.split_merge.is_some_and(|r| r > 0) {
            return Err(Error::Usage(
                "--split-merge needs every row's segment in memory; --stream does not keep them: leave one out".into(),
            ));
        }
        let cfg = self.config(None);
        cfg.check()?;
        if self.method != MethodArg::Gmm && (self.covariance != CovarianceArg::Diag || self.reg_covar != 1e-6) {
            return Err(Error::Usage("--covariance and --reg-covar set a Gaussian mixture; add --method gmm".into()));
        }
        let previous = self.previous.as_deref().map(Model::load).transpose()?;
        Ok(FitConfig { previous, ..cfg })
    }
}

/// Fit with a progress bar on a terminal; a signal stops it at the end of an iteration.
fn fit_model(inputs: &[PathBuf], cfg: &FitConfig, backend: &dyn Backend) -> Result<(Model, FitReport)> {
    let ds = Dataset::open(inputs)?;
    let bar = progress_bar(cfg.max_iter as u64);
    stoppable(cfg, |on_iter, _| {
        pipeline::fit_with_progress(&ds, cfg, backend, &mut |info: &kmeans::IterInfo| {
            bar.set_position(info.iteration as u64);
            bar.set_message(format!("run {} changed {}", info.run + 1, info.changed));
            on_iter(info)
        })
    })
    .inspect(|_| bar.finish_and_clear())
    .inspect_err(|_| bar.finish_and_clear())
}

/// Run `work` (a fit, or the fit and assignment of `segment`) so that SIGTERM, SIGINT or
/// SIGHUP stop it at the end of an iteration, its checkpoint written, with one line
/// saying where ([`Error::Stopped`], exit 128 + the signal). `work` gets the iteration
/// callback and a check for the passes after the fit: true asks it to stop there, with
/// [`Error::Interrupted`].
fn stoppable<T>(
    cfg: &FitConfig,
    work: impl FnOnce(&mut dyn FnMut(&kmeans::IterInfo) -> bool, &dyn Fn() -> bool) -> Result<T>,
) -> Result<T> {
    let guard = super::Iterating::enter();
    let mut last: Option<(usize, usize)> = None;
    let after_fit = std::cell::Cell::new(false);
    let stop_after_fit = || {
        let stop = guard.stop_requested().is_some();
        after_fit.set(after_fit.get() || stop);
        stop
    };
    let res = work(
        &mut |info| {
            last = Some((info.run, info.iteration));
            guard.stop_requested().is_none()
        },
        &stop_after_fit,
    );
    let Some(sig) = guard.leave() else {
        return res;
    };
    if let Err(e) = &res
        && !matches!(e, Error::Interrupted)
    {
        // A real failure outranks the stop.
        return res;
    }
    let runs = if matches!(cfg.init, InitSpec::File(_) | InitSpec::Centroids(_)) { 1 } else { cfg.n_init };
    let at = match (res.is_ok(), last) {
        (true, _) => "after the fit, before its outputs were written".to_string(),
        (false, _) if after_fit.get() => "after the fit, during the assignment pass".to_string(),
        (false, Some((run, it))) if runs > 1 => format!("at iteration {it} of run {} of {runs}", run + 1),
        (false, Some((_, it))) => format!("at iteration {it}"),
        (false, None) => "before the first iteration".to_string(),
    };
    let next = match &cfg.checkpoint {
        Some(c) => format!("the state is saved in {}: run the same command again to resume", c.dir.display()),
        None => "nothing was written (with --checkpoint DIR a rerun would resume)".to_string(),
    };
    Err(Error::Stopped { signal: sig, message: format!("stopped by {} {at}; {next}", super::signal_name(sig)) })
}

/// A sink that refuses the next batch once `stop` says so ([`Error::Interrupted`]).
struct StopAtBatch<'a> {
    sink: &'a mut dyn pipeline::BatchSink,
    stop: &'a dyn Fn() -> bool,
}

impl pipeline::BatchSink for StopAtBatch<'_> {
    fn start(&mut self, schema: &arrow::datatypes::SchemaRef) -> Result<()> {
        self.sink.start(schema)
    }
    fn write(&mut self, batch: &arrow::record_batch::RecordBatch) -> Result<()> {
        if (self.stop)() {
            return Err(Error::Interrupted);
        }
        self.sink.write(batch)
    }
}

/// The fit's report as the `--json` line of `command`.
fn summary(report: &FitReport, command: &str) -> Result<serde_json::Value> {
    let mut s = serde_json::to_value(report).map_err(|e| Error::Runtime(e.to_string()))?;
    s["command"] = command.into();
    Ok(s)
}

pub(crate) fn covariance(c: CovarianceArg) -> crate::gmm::CovarianceType {
    match c {
        CovarianceArg::Full => crate::gmm::CovarianceType::Full,
        CovarianceArg::Diag => crate::gmm::CovarianceType::Diag,
        CovarianceArg::Spherical => crate::gmm::CovarianceType::Spherical,
        CovarianceArg::Tied => crate::gmm::CovarianceType::Tied,
    }
}

pub(crate) fn progress_bar(len: u64) -> indicatif::ProgressBar {
    if super::quiet() {
        return indicatif::ProgressBar::hidden();
    }
    // Draws only when stderr is a terminal; batch logs stay clean.
    let bar = indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] iteration {pos} {msg}")
            .unwrap()
            .progress_chars("=> "),
    );
    bar
}

/// Every file a fit reads: the tables, a previous model, an initial-centroids file.
fn fit_inputs<'a>(inputs: &'a [PathBuf], o: &'a FitOpts) -> Vec<&'a Path> {
    let mut v: Vec<&Path> = inputs.iter().map(|p| p.as_path()).collect();
    v.extend(o.previous.as_deref());
    if let Some(init) = &o.init
        && let InitSpec::File(_) = InitSpec::parse(init)
    {
        v.push(Path::new(init));
    }
    v
}

pub(crate) fn run_fit(a: FitArgs) -> Result<()> {
    let cfg = a.opts.checked_config()?;
    crate::io::output::check_paths(&fit_inputs(&a.inputs, &a.opts), &[&a.model], a.write.json)?;
    let out = AtomicOutput::create(&a.model, a.write.force)?;
    let backend = super::backend::open(&a.opts.backend)?;
    let (model, report) = fit_model(&a.inputs, &cfg, backend.as_ref())?;
    write_json(out, &model)?;
    if let Some(c) = &cfg.checkpoint {
        c.remove();
    }
    log(format!("wrote the model to {}", a.model.display()));
    if a.write.json {
        let mut s = summary(&report, "fit")?;
        s["model"] = a.model.display().to_string().into();
        super::print_json(&s)?;
    }
    Ok(())
}

pub(crate) fn run_segment(a: SegmentArgs) -> Result<()> {
    let cfg = a.opts.checked_config()?;
    if a.out_dir.exists() && !a.out_dir.is_dir() {
        return Err(Error::output(&a.out_dir, "exists and is not a directory"));
    }
    let outputs: Vec<PathBuf> = ["model.json", "assignments.parquet", "profile.json", "report.html"]
        .iter()
        .map(|f| a.out_dir.join(f))
        .collect();
    let out_refs: Vec<&Path> = outputs.iter().map(|p| p.as_path()).collect();
    crate::io::output::check_paths(&fit_inputs(&a.inputs, &a.opts), &out_refs, a.write.json)?;
    // An object store prefix needs no directory: the objects appear at commit.
    let created = !crate::io::remote::is_remote(&a.out_dir) && !a.out_dir.exists();
    if created {
        crate::io::output::create_dir(&a.out_dir).map_err(|e| Error::output(&a.out_dir, e))?;
    }
    let result = segment_into(&a, &cfg);
    if result.is_err() && created {
        // Leave nothing behind: the directory was ours and holds no committed output.
        let _ = std::fs::remove_dir(&a.out_dir);
    }
    crate::io::output::forget_dir(&a.out_dir);
    result
}

fn segment_into(a: &SegmentArgs, cfg: &FitConfig) -> Result<()> {
    let model_out = AtomicOutput::create(&a.out_dir.join("model.json"), a.write.force)?;
    let assign_out = AtomicOutput::create(&a.out_dir.join("assignments.parquet"), a.write.force)?;
    let profile_out = AtomicOutput::create(&a.out_dir.join("profile.json"), a.write.force)?;
    let report_out = AtomicOutput::create(&a.out_dir.join("report.html"), a.write.force)?;
    let backend = super::backend::open(&a.opts.backend)?;
    let ds = Dataset::open(&a.inputs)?;
    let pseudonymize =
        a.privacy.pseudonymize_ids.then(crate::segments::privacy::Pseudonymizer::from_env).transpose()?;
    let assign_cfg = pipeline::AssignConfig {
        id_col: a.opts.table.id_col.clone(),
        // Named from the profile by `segment`; the names here only ask for the column.
        explain: a.explain.then(Vec::new),
        pseudonymize,
        soft_top: None,
    };
    let meta = super::provenance("segment", None, assign_cfg.pseudonymize.is_some());
    let mut sink = ParquetOutput::pending(assign_out, 1 << 20, meta)?;
    let bar = progress_bar(cfg.max_iter as u64);
    let done = stoppable(cfg, |on_iter, stop| {
        // A signal during the assignment pass stops it at the next batch written.
        let mut sink = StopAtBatch { sink: &mut sink, stop };
        pipeline::segment(&ds, cfg, &a.outcomes, assign_cfg, backend.as_ref(), &mut sink, &mut |info| {
            bar.set_position(info.iteration as u64);
            on_iter(info)
        })
    });
    bar.finish_and_clear();
    let pipeline::Segmented { model, fit: report, profile, assigned } = done?;
    let html = crate::segments::report::render(&model, &profile, None, None, None);
    // Commit only when every output is ready: a failure above leaves nothing behind.
    sink.commit()?;
    write_json(profile_out, &profile)?;
    super::segments::write_html(report_out, &html)?;
    write_json(model_out, &model)?;
    if let Some(c) = &cfg.checkpoint {
        c.remove();
    }
    for s in &profile.segments {
        log(format!("segment {}: {} ({})", s.id, s.name, crate::segments::report::pct(s.share)));
    }
    log(format!("wrote model.json, assignments.parquet, profile.json and report.html to {}", a.out_dir.display()));
    if a.write.json {
        let mut s = summary(&report, "segment")?;
        s["out_dir"] = a.out_dir.display().to_string().into();
        s["assigned_rows"] = assigned.n_rows.into();
        s["assign_seconds"] = assigned.assign_seconds.into();
        s["segment_names"] =
            profile.segments.iter().map(|p| serde_json::json!([p.id, p.name])).collect::<Vec<_>>().into();
        super::print_json(&s)?;
    }
    Ok(())
}
