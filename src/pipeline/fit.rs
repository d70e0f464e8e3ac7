//! The fit job: select and check the feature columns, read them into the matrix,
//! fit the transforms, run k-means on a backend, and build the model (segments, drift
//! baseline, lineage against a previous model, manifest).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float32Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use ndarray::ArrayView2;
use serde::Serialize;

use super::resolve_id;
use crate::backend::{Backend, Centroids};
use crate::error::{Error, Result};
use crate::features::{self, MissingPolicy, Scale};
use crate::io::Dataset;
use crate::kmeans::{self, Algorithm, InitMethod, KMeansParams, Metric};
use crate::model::{FORMAT, FORMAT_VERSION, Manifest, Method, Model};

/// How the first centroids are chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum InitSpec {
    /// Greedy k-means++ (scikit-learn's variant, 2 + ln k trials per step).
    KMeansPlusPlus,
    /// k-means‖ (oversampled rounds, then k-means++ on the candidates).
    KMeansParallel,
    /// k distinct rows at random.
    Random,
    /// A file of centroids in model space: Parquet (all numeric columns) or CSV without header.
    File(PathBuf),
    /// Centroids given directly (row-major, in model space).
    Centroids(Vec<f32>),
}

impl InitSpec {
    /// `k-means++`, `k-means||`, `random`, or else a file path (as the CLI's `--init`).
    pub fn parse(s: &str) -> Self {
        match s {
            // "k-means": the default start of either method (k-means++ seeding for
            // k-means; a k-means fit for a mixture).
            "k-means++" | "kmeans++" | "k-means" | "kmeans" => InitSpec::KMeansPlusPlus,
            "k-means||" | "kmeans||" => InitSpec::KMeansParallel,
            "random" => InitSpec::Random,
            file => InitSpec::File(PathBuf::from(file)),
        }
    }
}

/// Which exact iteration runs (all give the same model bit for bit on the CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlgorithmChoice {
    /// Hamerly below k = 128, pruned from 128 on; Lloyd on a GPU backend.
    #[default]
    Auto,
    Lloyd,
    Hamerly,
    Pruned,
    /// Mini-batch k-means (scikit-learn's `MiniBatchKMeans`): approximate, much faster
    /// on many rows; batches of [`FitConfig::batch_size`].
    MiniBatch,
}

/// Everything a fit needs besides the data and the backend. Build it with
/// `FitConfig { k: 16, ..Default::default() }`; [`FitConfig::check`] runs before any
/// data is read.
#[derive(Debug, Clone)]
pub struct FitConfig {
    /// Number of segments (default 8, as scikit-learn).
    pub k: usize,
    /// Feature columns (default: every numeric column but the id and weight columns and
    /// columns the file marks as non-features).
    pub features: Option<Vec<String>>,
    /// Columns left out of the default feature set.
    pub exclude: Vec<String>,
    /// Heavy-tailed columns transformed by ln(1 + x) before scaling.
    pub log1p: Vec<String>,
    pub scale: Scale,
    pub missing: MissingPolicy,
    /// Sample weights column (finite, >= 0).
    pub weight_col: Option<String>,
    /// Column carried into outputs (default: `subscriber_id` when present).
    pub id_col: Option<String>,
    pub init: InitSpec,
    /// Rows sampled for initialisation (0: 64·k, at least 10,000).
    pub init_sample: usize,
    /// Restarts from different seeds; the lowest inertia wins.
    pub n_init: usize,
    pub max_iter: usize,
    /// Relative tolerance on the centroid shift (times the mean feature variance).
    pub tol: f64,
    pub seed: u64,
    /// A previous model of the same features: matching segments keep its ids and names.
    pub previous: Option<Model>,
    /// Allow features whose names look like protected attributes.
    pub allow_sensitive: bool,
    pub metric: Metric,
    /// Total variance of each embedding column under standard scaling (default: the
    /// number of scalar features).
    pub embedding_weight: Option<f64>,
    pub algorithm: AlgorithmChoice,
    /// k-means, or a Gaussian mixture (EM from a k-means start or `init` centroids).
    pub method: Method,
    /// Covariance shape of a mixture (default diag).
    pub covariance: crate::gmm::CovarianceType,
    /// Added to the diagonal of a mixture's covariances (default 1e-6).
    pub reg_covar: f64,
    /// Save the fit's state there as it goes, and resume from what is there.
    pub checkpoint: Option<super::CheckpointSpec>,
    /// Train on rows whose id repeats (refused by default).
    pub allow_duplicate_ids: bool,
    /// Rows per step of `AlgorithmChoice::MiniBatch` (default 1024, as scikit-learn).
    pub batch_size: usize,
    /// Mini-batch: steps without improvement of the smoothed batch inertia before
    /// stopping (default 10, as scikit-learn; 0: run all `max_iter` passes).
    pub max_no_improvement: usize,
    /// Mini-batch: then up to this many exact Lloyd iterations from its centroids (0:
    /// scikit-learn's result as it is).
    pub refine: usize,
    /// Mini-batch with `refine`: rounds of split/merge moves (`kmeans::split_merge`), each
    /// before its share of the exact iterations (default 2; 0: none). In memory only.
    pub split_merge: usize,
    /// Mini-batch: clusters lighter than this share of the heaviest are re-seeded
    /// (default 0.01, as scikit-learn; 0: never).
    pub reassignment_ratio: f64,
    /// Mini-batch: read the input in batches on every pass instead of loading it, for
    /// data larger than memory (`pipeline::stream`).
    pub stream: bool,
    /// Streamed mini-batch: rows in the shuffle buffer the batches are drawn from.
    pub shuffle_rows: usize,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            k: 8,
            features: None,
            exclude: Vec::new(),
            log1p: Vec::new(),
            scale: Scale::Standard,
            missing: MissingPolicy::Error,
            weight_col: None,
            id_col: None,
            init: InitSpec::KMeansPlusPlus,
            init_sample: 0,
            n_init: 1,
            max_iter: 300,
            tol: 1e-4,
            seed: kmeans::DEFAULT_SEED,
            previous: None,
            allow_sensitive: false,
            metric: Metric::Euclidean,
            embedding_weight: None,
            algorithm: AlgorithmChoice::Auto,
            method: Method::KMeans,
            covariance: crate::gmm::CovarianceType::Diag,
            reg_covar: 1e-6,
            checkpoint: None,
            allow_duplicate_ids: false,
            batch_size: 1024,
            max_no_improvement: 10,
            refine: 0,
            split_merge: 2,
            reassignment_ratio: 0.01,
            stream: false,
            shuffle_rows: 1 << 20,
        }
    }
}

impl FitConfig {
    /// The defaults of a method: a mixture iterates at most 100 times and stops when the
    /// mean log-likelihood changes by less than 1e-3, as scikit-learn's GaussianMixture.
    pub fn for_method(method: Method, k: usize) -> Self {
        match method {
            Method::KMeans => FitConfig { k, ..Default::default() },
            Method::Gmm => FitConfig { k, method, max_iter: 100, tol: 1e-3, ..Default::default() },
        }
    }

    /// The checks that need no data, in the words of the options.
    pub fn check(&self) -> Result<()> {
        if self.method == Method::Gmm {
            if self.metric != Metric::Euclidean {
                return Err(Error::Usage(
                    "--metric cosine is spherical k-means; a Gaussian mixture (--method gmm) is euclidean".into(),
                ));
            }
            if self.algorithm != AlgorithmChoice::Auto {
                return Err(Error::Usage(
                    "--algorithm chooses a k-means iteration; --method gmm runs EM (leave --algorithm out)".into(),
                ));
            }
            if matches!(self.init, InitSpec::KMeansParallel | InitSpec::Random) {
                return Err(Error::Usage(
                    "--method gmm starts from k-means (--init k-means, the default) or from a centroids file".into(),
                ));
            }
            crate::gmm::GmmParams {
                reg_covar: self.reg_covar,
                max_iter: self.max_iter,
                tol: self.tol,
                n_init: self.n_init,
                ..crate::gmm::GmmParams::new(self.k)
            }
            .check_settings()?;
        }
        KMeansParams::check_settings(self.k, self.max_iter, self.tol, self.n_init)?;
        if self.stream && (self.algorithm != AlgorithmChoice::MiniBatch || self.method != Method::KMeans) {
            return Err(Error::Usage(
                "--stream reads the input batch by batch for mini-batch k-means; add --algorithm minibatch".into(),
            ));
        }
        if self.stream && self.shuffle_rows == 0 {
            return Err(Error::Usage("--shuffle-rows must be at least 1".into()));
        }
        if self.refine > 0 && self.algorithm != AlgorithmChoice::MiniBatch {
            return Err(Error::Usage("--refine follows a mini-batch fit; add --algorithm minibatch".into()));
        }
        if self.algorithm == AlgorithmChoice::MiniBatch {
            kmeans::MiniBatchParams {
                batch_size: self.batch_size,
                reassignment_ratio: self.reassignment_ratio,
                ..Default::default()
            }
            .check()?;
            if self.n_init > 1 {
                return Err(Error::Usage("--algorithm minibatch runs one start: leave --n-init out".into()));
            }
            if self.checkpoint.is_some() {
                return Err(Error::Usage(
                    "--checkpoint saves full fits; --algorithm minibatch is not checkpointed: leave one out".into(),
                ));
            }
        }
        if let Some(c) = &self.checkpoint {
            c.check()?;
        }
        if self.embedding_weight.is_some_and(|w| !(w.is_finite() && w > 0.0)) {
            return Err(Error::Usage("--embedding-weight must be a positive number".into()));
        }
        if let InitSpec::File(p) = &self.init
            && !p.is_file()
        {
            return Err(Error::Usage(format!(
                "--init {}: not k-means++, k-means||, random, nor an existing centroids file",
                p.display()
            )));
        }
        Ok(())
    }
}

/// What a fit did, for logs and `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    pub n_rows: usize,
    pub rows_read: u64,
    pub rows_dropped: u64,
    pub n_features: usize,
    pub k: usize,
    pub iterations: usize,
    pub converged: bool,
    pub inertia: f64,
    pub read_seconds: f64,
    pub init_seconds: f64,
    pub fit_seconds: f64,
    pub seconds_per_iteration: f64,
    pub full_evaluations_per_iteration: f64,
    pub empty_cluster_relocations: usize,
    pub empty_segments: usize,
    pub model_fingerprint: String,
    pub backend: &'static str,
    pub algorithm: &'static str,
    /// The CPU distance kernel the passes ran ("gpu" on a device).
    pub kernel: &'static str,
    pub threads: usize,
}

/// Read centroids from a file: CSV without header (one centroid per line) or Parquet
/// (all numeric columns), `dim` values each.
pub fn read_centroids(path: &Path, dim: usize) -> Result<Centroids> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        let m = Model::load(path)?;
        if m.dim() != dim {
            return Err(Error::input(
                path,
                format!("this model has {} features but the fit has {dim}; give a model of the same features", m.dim()),
            ));
        }
        return Ok(m.centroids());
    }
    let is_csv = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv") || e.eq_ignore_ascii_case("txt"));
    if is_csv {
        let text = std::fs::read_to_string(path).map_err(|e| Error::input(path, format!("cannot read: {e}")))?;
        let mut data = Vec::new();
        for (ln, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let row: std::result::Result<Vec<f32>, _> = line.split(',').map(|s| s.trim().parse::<f32>()).collect();
            let row = row.map_err(|e| Error::input(path, format!("line {}: not a list of numbers ({e})", ln + 1)))?;
            if row.len() != dim {
                return Err(Error::input(
                    path,
                    format!("line {} has {} values but the model has {dim} features", ln + 1, row.len()),
                ));
            }
            data.extend(row);
        }
        if data.is_empty() {
            return Err(Error::input(path, "holds no centroids"));
        }
        return Ok(Centroids::new(data, dim));
    }
    let ds = Dataset::open(&[path.to_path_buf()])?;
    let cols = features::select_columns(&ds, None, &[], &[], &[])?;
    let t = features::load_training(&ds, &cols, None, MissingPolicy::Error)?;
    if t.matrix.dim != dim {
        return Err(Error::input(
            path,
            format!("has {} numeric columns but the model has {dim} features", t.matrix.dim),
        ));
    }
    Ok(Centroids::new(t.matrix.data, dim))
}

/// Fit a model on `source` (see [`fit_with_progress`]).
pub fn fit(source: &Dataset, cfg: &FitConfig, backend: &dyn Backend) -> Result<(Model, FitReport)> {
    fit_with_progress(source, cfg, backend, &mut |_| true)
}

/// Fit on the rows of a matrix (input units, one column per feature, named `names` or
/// `x0`, `x1`, …): the `ndarray` edge of the API. The matrix is viewed as Arrow
/// columns (one copy, column by column) and fitted as a table.
pub fn fit_array(
    x: ArrayView2<'_, f32>,
    names: Option<&[String]>,
    cfg: &FitConfig,
    backend: &dyn Backend,
) -> Result<(Model, FitReport)> {
    let d = x.ncols();
    let names: Vec<String> = match names {
        Some(n) if n.len() == d => n.to_vec(),
        Some(n) => return Err(Error::Usage(format!("{} names for {d} columns", n.len()))),
        None => (0..d).map(|j| format!("x{j}")).collect(),
    };
    let fields: Vec<Field> = names.iter().map(|n| Field::new(n, DataType::Float32, false)).collect();
    let columns: Vec<ArrayRef> =
        (0..d).map(|j| Arc::new(Float32Array::from_iter_values(x.column(j).iter().copied())) as ArrayRef).collect();
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| Error::Runtime(e.to_string()))?;
    let ds = Dataset::from_batches("<array>", schema, vec![batch])?;
    fit(&ds, cfg, backend)
}

/// The training rows of `source` ready for a fit: selected, checked, read, and put in
/// model space by the transforms fitted on them (and on the unit sphere for cosine).
pub struct Prepared {
    pub id_col: Option<String>,
    pub cols: Vec<features::FeatureColumn>,
    pub transforms: Vec<features::FeatureTransform>,
    pub table: features::TrainingTable,
    pub init: InitMethod,
    /// SHA-256 of the rows as read, before the transforms.
    pub input_fingerprint: String,
}

/// Select, read and transform the training rows as `fit` does (shared with
/// `choose-k`, so both see the same matrix).
pub fn prepare(source: &Dataset, cfg: &FitConfig) -> Result<Prepared> {
    let ds = source;
    let (id_col, cols, init) = plan(ds, cfg)?;
    let check_ids = id_col.as_deref().filter(|_| !cfg.allow_duplicate_ids);
    let mut table = features::load_table(ds, &cols, cfg.weight_col.as_deref(), cfg.missing, None, check_ids)?;
    if table.rows_dropped > 0 {
        log::info!("left out {} of {} rows with missing values (--missing drop)", table.rows_dropped, table.rows_read);
    }
    let input_fingerprint = features::data_fingerprint(&table.matrix, table.weights.as_deref());
    let transforms = features::fit_transforms_weighted(
        &table.matrix,
        &cols,
        cfg.scale,
        table.impute.as_deref(),
        cfg.embedding_weight,
    );
    features::apply_transforms(&mut table.matrix.data, &transforms);
    features::check_range(&table.matrix.data, &cols, &transforms, Path::new(&ds.display_name()))?;
    if cfg.metric == Metric::Cosine {
        let keep = features::normalize_rows(&mut table.matrix, cfg.missing, &ds.display_name())?;
        if let (Some(k), Some(w)) = (&keep, table.weights.as_mut()) {
            let mut it = k.iter();
            w.retain(|_| *it.next().unwrap());
        }
        if let Some(k) = keep {
            let dropped = k.iter().filter(|v| !**v).count() as u64;
            table.rows_dropped += dropped;
            log::info!("left out {dropped} rows with a zero vector (--metric cosine, --missing drop)");
        }
    }
    Ok(Prepared { id_col, cols, transforms, table, init, input_fingerprint })
}

/// What a fit decides before reading the features: the id column, the feature columns
/// and the initialisation. The ids are not read here: unless `--allow-duplicate-ids`, the
/// caller checks them unique, in the pass that reads the features where it can.
pub fn plan(ds: &Dataset, cfg: &FitConfig) -> Result<(Option<String>, Vec<features::FeatureColumn>, InitMethod)> {
    let id_col = resolve_id(ds, cfg.id_col.as_deref(), &["subscriber_id"])?;
    if let Some(w) = &cfg.weight_col {
        ds.column_type(w)?;
    }
    let mut reserved: Vec<&str> = Vec::new();
    reserved.extend(id_col.as_deref());
    reserved.extend(cfg.weight_col.as_deref());
    let cols = features::select_columns(ds, cfg.features.as_deref(), &cfg.exclude, &cfg.log1p, &reserved)?;
    let dim = features::dim_of(&cols);
    if let Some(prev) = &cfg.previous {
        crate::segments::lineage::check_previous(prev, &cols)?;
    }
    check_sensitive(&cols, cfg.allow_sensitive)?;
    log::info!(
        "{}: {} rows; {} features from {} columns: {}",
        ds.display_name(),
        ds.n_rows(),
        dim,
        cols.len(),
        cols.iter().map(|c| c.column.as_str()).collect::<Vec<_>>().join(", ")
    );
    let init = match &cfg.init {
        InitSpec::KMeansPlusPlus => InitMethod::KMeansPlusPlus,
        InitSpec::KMeansParallel => InitMethod::KMeansParallel,
        InitSpec::Random => InitMethod::Random,
        InitSpec::File(p) => InitMethod::Given(read_centroids(p, dim)?),
        InitSpec::Centroids(c) => {
            if c.is_empty() || c.len() % dim != 0 {
                return Err(Error::Usage(format!("initial centroids: {} values are not rows of {dim}", c.len())));
            }
            InitMethod::Given(Centroids::new(c.clone(), dim))
        }
    };
    Ok((id_col, cols, init))
}

/// Read, transform and fit; `progress` sees every iteration and stops the fit
/// ([`Error::Interrupted`]) by returning false.
pub fn fit_with_progress(
    source: &Dataset,
    cfg: &FitConfig,
    backend: &dyn Backend,
    progress: &mut dyn FnMut(&kmeans::IterInfo) -> bool,
) -> Result<(Model, FitReport)> {
    cfg.check()?;
    if cfg.stream {
        return super::stream::fit_streamed(source, cfg, backend, progress);
    }
    let t_read = Instant::now();
    let ds = source;
    let Prepared { id_col, cols, transforms, table, init, input_fingerprint } = prepare(ds, cfg)?;
    let dim = features::dim_of(&cols);
    let read_seconds = t_read.elapsed().as_secs_f64();
    let algorithm = resolve_algorithm(cfg, dim, backend)?;
    let params = KMeansParams {
        k: cfg.k,
        init,
        max_iter: cfg.max_iter,
        tol: cfg.tol,
        n_init: cfg.n_init,
        seed: cfg.seed,
        algorithm,
        init_sample: cfg.init_sample,
        metric: cfg.metric,
    };
    let n = table.matrix.n();
    if cfg.method == Method::Gmm {
        log::info!(
            "fitting a Gaussian mixture of k={} on {n} × {dim} ({} backend, EM from {}, {} threads)",
            cfg.k,
            backend.name(),
            if matches!(params.init, InitMethod::Given(_)) { "the given centroids" } else { "k-means" },
            rayon::current_num_threads()
        );
    } else {
        log::info!(
            "fitting k={} on {n} × {dim} ({} backend, {}, init {}, {} threads)",
            cfg.k,
            backend.name(),
            if cfg.algorithm == AlgorithmChoice::MiniBatch { "minibatch" } else { algorithm.name() },
            params.init.name(),
            rayon::current_num_threads()
        );
    }
    let mut iter_secs: Vec<(usize, f64)> = Vec::new();
    let t_fit = Instant::now();
    let mut gmm_section = None;
    let mut on_iter = |info: &kmeans::IterInfo| {
        // A mixture's k-means start reports its iterations with no evaluations: they
        // are not EM iterations.
        if info.full_evaluations > 0 {
            iter_secs.push((info.run, info.seconds));
        }
        progress(info)
    };
    let mut ckpt = match &cfg.checkpoint {
        Some(spec) => {
            let identity = super::checkpoint::Identity {
                engine_version: crate::ENGINE_VERSION.into(),
                input_fingerprint: input_fingerprint.clone(),
                options: fit_options(cfg, &params, &cols, backend),
            };
            Some(super::checkpoint::Checkpointer::open(spec, identity)?)
        }
        None => None,
    };
    let saved = ckpt.as_mut().and_then(|c| c.1.take());
    let runs = if matches!(params.init, InitMethod::Given(_)) { 1 } else { params.n_init };
    let fit = if cfg.method == Method::Gmm {
        let resume = saved.map(|s| s.gmm().ok_or_else(|| other_method(cfg))).transpose()?;
        let mut save = |state: &crate::gmm::GmmResume, ev: kmeans::StateEvent| match ckpt.as_mut() {
            Some((c, _)) => c.offer_gmm(state, ev, runs),
            None => Ok(()),
        };
        let (x, w) = (&table.matrix, table.weights.as_deref());
        let (fit, section) = fit_mixture(cfg, &params, x, w, &transforms, backend, resume, &mut on_iter, &mut save)?;
        gmm_section = Some(section);
        fit
    } else {
        let resume = saved.map(|s| s.kmeans().ok_or_else(|| other_method(cfg))).transpose()?;
        if cfg.algorithm == AlgorithmChoice::MiniBatch {
            let mb = kmeans::MiniBatchParams {
                batch_size: cfg.batch_size,
                max_no_improvement: cfg.max_no_improvement,
                reassignment_ratio: cfg.reassignment_ratio,
            };
            log::info!("mini-batch steps of {} rows (scikit-learn's MiniBatchKMeans rules)", mb.batch_size.min(n));
            let (x, w) = (&table.matrix, table.weights.as_deref());
            // The exact passes (the mini-batch's last, the refinement's) share one
            // preparation of the matrix.
            backend.retain(&x.data, dim)?;
            let fitted = minibatch_refined(cfg, &params, &mb, x, w, backend, &mut on_iter);
            backend.release();
            fitted?
        } else {
            let mut save = |state: &kmeans::Resume, ev: kmeans::StateEvent| match ckpt.as_mut() {
                Some((c, _)) => c.offer(state, ev, runs),
                None => Ok(()),
            };
            kmeans::fit_resumable(
                backend,
                &table.matrix,
                table.weights.as_deref(),
                &params,
                resume,
                &mut |info| {
                    log::debug!(
                        "run {} iteration {}: {} labels changed, {:.1}% of points searched, shift {:.3e}, {:.3}s",
                        info.run + 1,
                        info.iteration,
                        info.changed,
                        100.0 * info.full_evaluations as f64 / n as f64,
                        info.shift,
                        info.seconds
                    );
                    on_iter(info)
                },
                &mut save,
            )?
        }
    };
    let fit_seconds = t_fit.elapsed().as_secs_f64();
    let per_iter = {
        let s: Vec<f64> = iter_secs.iter().filter(|(r, _)| *r == fit.best_run).map(|(_, s)| *s).collect();
        s.iter().sum::<f64>() / s.len().max(1) as f64
    };
    if cfg.method == Method::KMeans {
        log::info!(
            "{} after {} iterations: inertia {:.6e}, {:.3}s per iteration, {} empty-cluster relocations",
            if fit.converged { "converged" } else { "stopped at --max-iter" },
            fit.iterations,
            fit.inertia,
            per_iter,
            fit.relocations
        );
    }
    let baseline = crate::model::Baseline::fit(&table.matrix.data, dim, &fit.nearest);
    assemble(Assembly {
        cfg,
        params: &params,
        algorithm,
        backend,
        id_col,
        cols,
        transforms,
        fit,
        baseline,
        gmm_section,
        input_fingerprint,
        rows_read: table.rows_read,
        rows_dropped: table.rows_dropped,
        n,
        read_seconds,
        fit_seconds,
        per_iter,
    })
}

/// What [`assemble`] makes a model and a report of.
pub struct Assembly<'a> {
    pub cfg: &'a FitConfig,
    pub params: &'a KMeansParams,
    pub algorithm: Algorithm,
    pub backend: &'a dyn Backend,
    pub id_col: Option<String>,
    pub cols: Vec<features::FeatureColumn>,
    pub transforms: Vec<features::FeatureTransform>,
    /// Its `stats` count the rows used.
    pub fit: kmeans::KMeansFit,
    pub baseline: crate::model::Baseline,
    pub gmm_section: Option<crate::model::GmmSection>,
    pub input_fingerprint: String,
    pub rows_read: u64,
    pub rows_dropped: u64,
    /// Rows used.
    pub n: usize,
    pub read_seconds: f64,
    pub fit_seconds: f64,
    pub per_iter: f64,
}

/// The model and the report of a finished fit (in memory or streamed).
pub fn assemble(a: Assembly<'_>) -> Result<(Model, FitReport)> {
    let Assembly {
        cfg,
        params,
        algorithm,
        backend,
        id_col,
        cols,
        transforms,
        fit,
        baseline,
        gmm_section,
        input_fingerprint,
        rows_read,
        rows_dropped,
        n,
        read_seconds,
        fit_seconds,
        per_iter,
    } = a;
    let dim = features::dim_of(&cols);
    let empty_segments = fit.stats.count.iter().filter(|c| **c == 0).count();
    if empty_segments > 0 {
        log::warn!(
            "{empty_segments} of {} segments are empty: the {n} rows hold fewer than k distinct points \
             (identical rows); choose a smaller --k",
            cfg.k
        );
    }
    let mut segments = Model::segments_from(&fit.centroids, &fit.stats, &cols, &transforms);
    let lineage = match &cfg.previous {
        Some(prev) => {
            let l = crate::segments::lineage::link(prev, &mut segments, &cols, &transforms)?;
            let count = |k: crate::model::LineageKind| l.entries.iter().filter(|e| e.kind == k).count();
            log::info!(
                "segment ids from the previous model: {} kept, {} split, {} new, {} vanished",
                count(crate::model::LineageKind::Kept),
                count(crate::model::LineageKind::Split),
                count(crate::model::LineageKind::New),
                l.vanished.len()
            );
            Some(l)
        }
        None => None,
    };
    let model = Model {
        baseline: Some(baseline),
        lineage,
        updates: Vec::new(),
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        method: cfg.method,
        gmm: gmm_section,
        metric: cfg.metric,
        k: cfg.k,
        id_column: id_col,
        weight_column: cfg.weight_col.clone(),
        missing: cfg.missing,
        scale: cfg.scale,
        feature_columns: cols,
        features: transforms,
        segments,
        manifest: Manifest {
            engine: "microseg".into(),
            engine_version: crate::ENGINE_VERSION.into(),
            inputs: Vec::new(),
            input_fingerprint,
            rows_read,
            rows_used: n as u64,
            rows_dropped,
            seed: cfg.seed,
            init: if cfg.method == Method::Gmm && !matches!(params.init, InitMethod::Given(_)) {
                "k-means".into()
            } else {
                params.init.name().into()
            },
            init_sample_rows: params.init_sample_rows(n),
            n_init: cfg.n_init,
            best_run: fit.best_run,
            // Hamerly and pruned are exact accelerations of Lloyd's iterations, with the
            // same result bit for bit: the model names the algorithm, the fit's report the
            // variant, so the same data and options make the same model file.
            algorithm: match (cfg.method, cfg.algorithm) {
                (Method::Gmm, _) => "em".into(),
                (_, AlgorithmChoice::MiniBatch) => "minibatch".into(),
                _ => "lloyd".into(),
            },
            max_iter: cfg.max_iter,
            tol: cfg.tol,
            tol_scaled: fit.tol_scaled,
            iterations: fit.iterations,
            converged: fit.converged,
            objective: fit.inertia,
            empty_cluster_relocations: fit.relocations,
            empty_segments,
            backend: backend.name().into(),
        },
    };
    let report = FitReport {
        n_rows: n,
        rows_read,
        rows_dropped,
        n_features: dim,
        k: cfg.k,
        iterations: fit.iterations,
        converged: fit.converged,
        inertia: fit.inertia,
        read_seconds,
        init_seconds: fit.init_seconds,
        fit_seconds,
        seconds_per_iteration: per_iter,
        full_evaluations_per_iteration: fit.full_evaluations as f64 / (fit.iterations as f64 + 1.0) / n as f64,
        empty_cluster_relocations: fit.relocations,
        empty_segments,
        model_fingerprint: model.fingerprint(),
        backend: backend.name(),
        algorithm: match (cfg.method, cfg.algorithm) {
            (Method::Gmm, _) => "em",
            (_, AlgorithmChoice::MiniBatch) => "minibatch",
            _ => algorithm.name(),
        },
        kernel: backend.as_cpu().map_or("gpu", |b| b.kernel.resolve(cfg.k, dim).name()),
        threads: rayon::current_num_threads(),
    };
    Ok((model, report))
}

/// Mini-batch steps, then up to `cfg.refine` exact iterations in rounds, each started by
/// split/merge moves (`kmeans::split_merge`) on the statistics of the last exact pass.
fn minibatch_refined(
    cfg: &FitConfig,
    params: &KMeansParams,
    mb: &kmeans::MiniBatchParams,
    x: &features::Matrix,
    w: Option<&[f32]>,
    backend: &dyn Backend,
    on_iter: &mut dyn FnMut(&kmeans::IterInfo) -> bool,
) -> Result<kmeans::KMeansFit> {
    let mut done = kmeans::fit_minibatch(backend, x, w, params, mb, on_iter)?;
    if cfg.refine == 0 {
        return Ok(done);
    }
    log::info!(
        "mini-batch after {} steps: inertia {:.6e}; refining with up to {} exact iterations",
        done.iterations,
        done.inertia,
        cfg.refine
    );
    let mut left = cfg.refine;
    let rounds = cfg.split_merge.min(cfg.refine);
    let mut round = 0;
    while left > 0 {
        let mut start = done.centroids.clone();
        let mut moved = 0;
        if round < rounds {
            let m = kmeans::split_merge(x, w, &mut start, &done.nearest, &done.stats, params.seed, round);
            moved = m.count();
            log::info!("split/merge round {}: {} moves, estimated gain {:.3e}", round + 1, moved, m.estimated_gain);
        }
        // Converged with nothing moved (or no round of moves left): done.
        if round > 0 && moved == 0 && done.converged {
            break;
        }
        // Each round of moves takes its share of the iterations; the last, what is left.
        let budget = if round + 1 < rounds { (left / (rounds - round)).max(1) } else { left };
        let exact = KMeansParams {
            init: InitMethod::Given(start),
            max_iter: budget,
            tol: if cfg.tol > 0.0 { cfg.tol } else { 1e-4 },
            n_init: 1,
            algorithm: Algorithm::auto_for(cfg.k, x.dim, backend),
            ..params.clone()
        };
        let r = kmeans::fit_cancellable(backend, x, w, &exact, on_iter)?;
        left -= r.iterations.clamp(1, left);
        round += 1;
        done = kmeans::KMeansFit {
            iterations: done.iterations + r.iterations,
            relocations: done.relocations + r.relocations,
            full_evaluations: done.full_evaluations + r.full_evaluations,
            init_seconds: done.init_seconds,
            ..r
        };
    }
    Ok(done)
}

/// Every option that changes a k-means fit, as text: what a checkpoint must match.
fn fit_options(
    cfg: &FitConfig,
    params: &KMeansParams,
    cols: &[features::FeatureColumn],
    backend: &dyn Backend,
) -> std::collections::BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    let init = match &params.init {
        InitMethod::Given(c) => {
            let digest = Sha256::digest(bytemuck::cast_slice::<f32, u8>(&c.data));
            format!("given centroids sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
        }
        other => other.name().to_string(),
    };
    let names: Vec<&str> = cols.iter().map(|c| c.column.as_str()).collect();
    let mut o = std::collections::BTreeMap::new();
    let mut put = |k: &str, v: String| {
        o.insert(format!("--{k}"), v);
    };
    put("k", params.k.to_string());
    put("features", names.join(","));
    put("log1p", cfg.log1p.join(","));
    put("scale", format!("{:?}", cfg.scale).to_lowercase());
    put("missing", format!("{:?}", cfg.missing).to_lowercase());
    put("weight-col", cfg.weight_col.clone().unwrap_or_default());
    put("init", init);
    put("init-sample", params.init_sample.to_string());
    put("n-init", params.n_init.to_string());
    put("max-iter", params.max_iter.to_string());
    put("tol", format!("{:e}", params.tol));
    put("seed", params.seed.to_string());
    put("metric", format!("{:?}", params.metric).to_lowercase());
    put("embedding-weight", cfg.embedding_weight.map_or(String::new(), |w| format!("{w:e}")));
    put("algorithm", params.algorithm.name().into());
    put("backend", backend.name().into());
    put("method", cfg.method.name().into());
    if cfg.method == Method::Gmm {
        put("covariance", cfg.covariance.name().into());
        put("reg-covar", format!("{:e}", cfg.reg_covar));
    }
    o
}

fn check_sensitive(cols: &[features::FeatureColumn], allow: bool) -> Result<()> {
    let sensitive: Vec<&str> =
        cols.iter().map(|c| c.column.as_str()).filter(|c| crate::segments::looks_sensitive(c)).collect();
    if sensitive.is_empty() {
        return Ok(());
    }
    let list = sensitive.join(", ");
    if !allow {
        return Err(Error::Usage(format!(
            "feature column(s) {list} look like protected or sensitive attributes; leave them out \
             (--exclude {list}) and audit them instead (microseg audit --protected), or pass \
             --allow-sensitive to cluster on them anyway"
        )));
    }
    log::warn!("clustering on sensitive-looking column(s) {list} (--allow-sensitive)");
    Ok(())
}

fn resolve_algorithm(cfg: &FitConfig, dim: usize, backend: &dyn Backend) -> Result<Algorithm> {
    let algorithm = match cfg.algorithm {
        AlgorithmChoice::Lloyd | AlgorithmChoice::MiniBatch => Algorithm::Lloyd,
        AlgorithmChoice::Auto => Algorithm::auto_for(cfg.k, dim, backend),
        AlgorithmChoice::Hamerly => Algorithm::Hamerly,
        AlgorithmChoice::Pruned => Algorithm::Pruned,
    };
    if algorithm != Algorithm::Lloyd && !backend.exact_labels() {
        return Err(Error::Usage(format!(
            "--algorithm {} runs its bounds on the CPU backend; use --algorithm lloyd (or auto) with --backend {}",
            algorithm.name(),
            backend.name()
        )));
    }
    Ok(algorithm)
}

/// EM for a Gaussian mixture, reported as the k-means fit it replaces (centroids are
/// the means, rows go to their most probable component), with the mixture section.
/// A checkpoint of the same options but the other method cannot happen (the method is
/// one of the options); should the file say otherwise, it is refused.
fn other_method(cfg: &FitConfig) -> Error {
    Error::Usage(format!(
        "the checkpoint in {} holds the state of another kind of fit than --method {}; remove it to start over",
        cfg.checkpoint.as_ref().map_or(String::new(), |c| c.dir.display().to_string()),
        cfg.method.name()
    ))
}

#[allow(clippy::too_many_arguments)]
fn fit_mixture(
    cfg: &FitConfig,
    params: &KMeansParams,
    x: &features::Matrix,
    w: Option<&[f32]>,
    transforms: &[features::FeatureTransform],
    backend: &dyn Backend,
    resume: Option<crate::gmm::GmmResume>,
    progress: &mut dyn FnMut(&kmeans::IterInfo) -> bool,
    save: &mut dyn FnMut(&crate::gmm::GmmResume, kmeans::StateEvent) -> Result<()>,
) -> Result<(kmeans::KMeansFit, crate::model::GmmSection)> {
    use crate::backend::Nearest;
    use crate::backend::cpu::exact_sq_dist;
    let gp = crate::gmm::GmmParams {
        k: cfg.k,
        covariance: cfg.covariance,
        reg_covar: cfg.reg_covar,
        max_iter: cfg.max_iter,
        tol: cfg.tol,
        n_init: cfg.n_init,
        seed: cfg.seed,
        init: match &params.init {
            InitMethod::Given(c) => crate::gmm::GmmInit::Given(c.clone()),
            _ => crate::gmm::GmmInit::KMeans,
        },
    };
    log::info!(
        "Gaussian mixture: {} covariances, reg_covar {:e}, tol {:e} on the mean log-likelihood",
        cfg.covariance.name(),
        cfg.reg_covar,
        cfg.tol
    );
    let f = crate::gmm::fit_resumable(
        backend,
        x,
        w,
        &gp,
        resume,
        &mut |it| {
            if it.init {
                log::debug!("run {} k-means start, iteration {}: {:.3}s", it.run + 1, it.iteration, it.seconds);
            } else {
                log::debug!(
                    "run {} EM iteration {}: mean log-likelihood {:.8}, change {:.3e}, {:.3}s",
                    it.run + 1,
                    it.iteration,
                    it.log_likelihood,
                    it.change,
                    it.seconds
                );
            }
            progress(&kmeans::IterInfo {
                run: it.run,
                iteration: it.iteration,
                changed: 0,
                shift: it.change,
                full_evaluations: if it.init { 0 } else { x.n() as u64 },
                seconds: it.seconds,
            })
        },
        save,
    )?;
    let (k, d) = (cfg.k, x.dim);
    let mix = &f.mixture;
    let centroids = Centroids::new(mix.means.iter().map(|v| *v as f32).collect(), d);
    let nearest: Vec<Nearest> = (0..x.n())
        .map(|i| {
            let row = &x.data[i * d..(i + 1) * d];
            let (a, b) = (f.labels[i] as usize, f.second[i] as usize);
            Nearest {
                label: a as u32,
                dist: exact_sq_dist(row, centroids.row(a)) as f32,
                second: if k > 1 { exact_sq_dist(row, centroids.row(b)) as f32 } else { f32::INFINITY },
            }
        })
        .collect();
    let stats = backend.reduce(&x.data, w, &nearest, k)?;
    let inertia = stats.inertia();
    log::info!(
        "EM {} after {} iterations: mean log-likelihood {:.6}, BIC {:.6e}, AIC {:.6e}",
        if f.converged { "converged" } else { "stopped at --max-iter" },
        f.iterations,
        f.log_likelihood,
        f.bic(),
        f.aic()
    );
    let mut probs: Vec<f32> = f.probability.iter().step_by(x.n().div_ceil(100_000).max(1)).copied().collect();
    probs.sort_by(|a, b| a.total_cmp(b));
    let low_probability = if probs.is_empty() { 0.0 } else { crate::model::baseline::quantile_sorted(&probs, 0.1) };
    let low_probability_share =
        probs.iter().filter(|p| (**p as f64) < low_probability).count() as f64 / probs.len().max(1) as f64;
    let section = crate::model::GmmSection {
        covariance: mix.covariance,
        reg_covar: cfg.reg_covar,
        weights: mix.weights.clone(),
        means: mix.means.chunks_exact(d).map(|m| m.to_vec()).collect(),
        covariances: mix.covariances.clone(),
        std_original: (0..k)
            .map(|j| (0..d).map(|t| mix.variance(j, t).sqrt() * transforms[t].scale).collect())
            .collect(),
        log_likelihood: f.log_likelihood,
        lower_bound: f.lower_bound,
        bic: f.bic(),
        aic: f.aic(),
        n_parameters: mix.n_parameters(),
        emptied: f
            .emptied
            .iter()
            .map(|&(j, it)| crate::model::EmptiedComponent { segment: j as u32, iteration: it })
            .collect(),
        low_probability,
        low_probability_share,
    };
    let fit = kmeans::KMeansFit {
        centroids,
        nearest,
        stats,
        inertia,
        iterations: f.iterations,
        converged: f.converged,
        relocations: 0,
        best_run: f.best_run,
        tol_scaled: cfg.tol,
        iteration_seconds: f.em_seconds,
        init_seconds: f.init_seconds,
        full_evaluations: (x.n() * (f.iterations + 1)) as u64,
    };
    Ok((fit, section))
}
