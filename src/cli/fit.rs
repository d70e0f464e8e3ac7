//! `microseg fit` and `microseg segment`: read the training table, fit transforms and
//! k-means, write the model (and, for `segment`, assignments and a summary).

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;

use super::{AlgorithmArg, MetricArg, MissingArg, ScaleArg, TableArgs, log};
use crate::backend::{Backend, Centroids};
use crate::error::{Error, Result};
use crate::features::{self, MissingPolicy, Scale};
use crate::io::Dataset;
use crate::io::output::{AtomicOutput, write_json};
use crate::kmeans::{self, Algorithm, InitMethod, KMeansParams, Metric};
use crate::model::{FORMAT, FORMAT_VERSION, Manifest, Model};

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
    /// k-means++, k-means||, random, or a file of initial centroids (Parquet, or CSV
    /// without header: k lines of d numbers, in the model's feature space).
    #[arg(long, default_value = "k-means++")]
    init: String,
    /// Rows sampled for initialisation (0: 64·k, at least 10,000).
    #[arg(long, default_value_t = 0)]
    init_sample: usize,
    /// Restarts from different seeds; the lowest inertia wins.
    #[arg(long, default_value_t = 1)]
    n_init: usize,
    #[arg(long, default_value_t = 300)]
    max_iter: usize,
    /// Relative tolerance on the centroid shift (times the mean feature variance).
    #[arg(long, default_value_t = 1e-4)]
    tol: f64,
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
    /// Replace existing outputs.
    #[arg(long)]
    force: bool,
    /// Print a one-line JSON summary on stdout.
    #[arg(long)]
    pub(crate) json: bool,
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
    #[arg(long)]
    force: bool,
    #[arg(long)]
    pub(crate) json: bool,
}

/// What a fit produced, with its timings.
pub(crate) struct FitOutcome {
    pub model: Model,
    pub summary: serde_json::Value,
}

fn read_centroids_file(path: &Path, dim: usize) -> Result<Centroids> {
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

/// Read, transform and fit; returns the model and the JSON summary fields.
pub(crate) fn fit_model(inputs: &[PathBuf], o: &FitOpts, backend: &dyn Backend) -> Result<FitOutcome> {
    KMeansParams::check_settings(o.k, o.max_iter, o.tol, o.n_init)?;
    let t_read = Instant::now();
    let ds = Dataset::open(inputs)?;
    let id_col = super::resolve_id(&ds, o.table.id_col.as_deref(), &["subscriber_id"])?;
    if let Some(w) = &o.weight_col {
        ds.column_type(w)?;
    }
    let mut reserved: Vec<&str> = Vec::new();
    if let Some(id) = &id_col {
        reserved.push(id);
    }
    if let Some(w) = &o.weight_col {
        reserved.push(w);
    }
    let cols = features::select_columns(&ds, o.features.as_deref(), &o.exclude, &o.log1p, &reserved)?;
    let dim = features::dim_of(&cols);
    let previous = match &o.previous {
        Some(p) => {
            let prev = Model::load(p)?;
            crate::segments::lineage::check_previous(&prev, &cols)?;
            Some((p, prev))
        }
        None => None,
    };
    let sensitive: Vec<&str> =
        cols.iter().map(|c| c.column.as_str()).filter(|c| crate::segments::looks_sensitive(c)).collect();
    if !sensitive.is_empty() {
        let list = sensitive.join(", ");
        if !o.allow_sensitive {
            return Err(Error::Usage(format!(
                "feature column(s) {list} look like protected or sensitive attributes; leave them out \
                 (--exclude {list}) and audit them instead (microseg audit --protected), or pass \
                 --allow-sensitive to cluster on them anyway"
            )));
        }
        log(format!("warning: clustering on sensitive-looking column(s) {list} (--allow-sensitive)"));
    }
    log(format!(
        "{}: {} rows; {} features from {} columns: {}",
        ds.display_name(),
        ds.n_rows(),
        dim,
        cols.len(),
        cols.iter().map(|c| c.column.as_str()).collect::<Vec<_>>().join(", ")
    ));
    let init = match o.init.as_str() {
        "k-means++" | "kmeans++" => InitMethod::KMeansPlusPlus,
        "k-means||" | "kmeans||" => InitMethod::KMeansParallel,
        "random" => InitMethod::Random,
        file => {
            let p = Path::new(file);
            if !p.is_file() {
                return Err(Error::Usage(format!(
                    "--init {file}: not k-means++, k-means||, random, nor an existing centroids file"
                )));
            }
            InitMethod::Given(read_centroids_file(p, dim)?)
        }
    };
    let missing = match o.missing {
        MissingArg::Error => MissingPolicy::Error,
        MissingArg::Drop => MissingPolicy::Drop,
        MissingArg::Mean => MissingPolicy::Mean,
    };
    let scale = match o.scale {
        ScaleArg::Standard => Scale::Standard,
        ScaleArg::None => Scale::None,
    };
    let mut table = features::load_training(&ds, &cols, o.weight_col.as_deref(), missing)?;
    if table.rows_dropped > 0 {
        log(format!(
            "left out {} of {} rows with missing values (--missing drop)",
            table.rows_dropped, table.rows_read
        ));
    }
    if o.embedding_weight.is_some_and(|w| !(w.is_finite() && w > 0.0)) {
        return Err(Error::Usage("--embedding-weight must be a positive number".into()));
    }
    let transforms =
        features::fit_transforms_weighted(&table.matrix, &cols, scale, table.impute.as_deref(), o.embedding_weight);
    features::apply_transforms(&mut table.matrix.data, &transforms);
    features::check_range(&table.matrix.data, &cols, &transforms, Path::new(&ds.display_name()))?;
    let metric = match o.metric {
        MetricArg::Euclidean => Metric::Euclidean,
        MetricArg::Cosine => Metric::Cosine,
    };
    if metric == Metric::Cosine {
        let keep = features::normalize_rows(&mut table.matrix, missing, &ds.display_name())?;
        if let (Some(k), Some(w)) = (&keep, table.weights.as_mut()) {
            let mut it = k.iter();
            w.retain(|_| *it.next().unwrap());
        }
        if let Some(k) = keep {
            let dropped = k.iter().filter(|v| !**v).count() as u64;
            table.rows_dropped += dropped;
            log(format!("left out {dropped} rows with a zero vector (--metric cosine, --missing drop)"));
        }
    }
    let read_seconds = t_read.elapsed().as_secs_f64();
    let algorithm = match o.algorithm {
        AlgorithmArg::Lloyd => Algorithm::Lloyd,
        AlgorithmArg::Auto if !backend.exact_labels() => Algorithm::Lloyd,
        AlgorithmArg::Auto => Algorithm::auto(o.k),
        AlgorithmArg::Hamerly => Algorithm::Hamerly,
        AlgorithmArg::Pruned => Algorithm::Pruned,
    };
    if algorithm != Algorithm::Lloyd && !backend.exact_labels() {
        return Err(Error::Usage(format!(
            "--algorithm {} runs its bounds on the CPU backend; use --algorithm lloyd (or auto) with --backend {}",
            algorithm.name(),
            backend.name()
        )));
    }
    let params = KMeansParams {
        k: o.k,
        init,
        max_iter: o.max_iter,
        tol: o.tol,
        n_init: o.n_init,
        seed: o.seed,
        algorithm,
        init_sample: o.init_sample,
        metric,
    };
    let n = table.matrix.n();
    log(format!(
        "fitting k={} on {n} × {dim} ({} backend, {}, init {}, {} threads)",
        o.k,
        backend.name(),
        algorithm.name(),
        params.init.name(),
        rayon::current_num_threads()
    ));
    let bar = progress_bar(o.max_iter as u64);
    let mut iter_secs: Vec<(usize, f64)> = Vec::new();
    let t_fit = Instant::now();
    let fit =
        kmeans::fit(backend, &table.matrix, table.weights.as_deref(), &params, &mut |info: &kmeans::IterInfo| {
            iter_secs.push((info.run, info.seconds));
            if super::verbose() {
                log(format!(
                    "run {} iteration {}: {} labels changed, {:.1}% of points searched, shift {:.3e}, {:.3}s",
                    info.run + 1,
                    info.iteration,
                    info.changed,
                    100.0 * info.full_evaluations as f64 / n as f64,
                    info.shift,
                    info.seconds
                ));
            }
            bar.set_position(info.iteration as u64);
            bar.set_message(format!("run {} changed {}", info.run + 1, info.changed));
        })?;
    let fit_seconds = t_fit.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let per_iter = {
        let s: Vec<f64> = iter_secs.iter().filter(|(r, _)| *r == fit.best_run).map(|(_, s)| *s).collect();
        s.iter().sum::<f64>() / s.len().max(1) as f64
    };
    log(format!(
        "{} after {} iterations: inertia {:.6e}, {:.3}s per iteration, {} empty-cluster relocations",
        if fit.converged { "converged" } else { "stopped at --max-iter" },
        fit.iterations,
        fit.inertia,
        per_iter,
        fit.relocations
    ));
    let empty_segments = fit.stats.count.iter().filter(|c| **c == 0).count();
    if empty_segments > 0 {
        log(format!(
            "warning: {empty_segments} of {} segments are empty: the {n} rows hold fewer than k distinct \
             points (identical rows); choose a smaller --k",
            o.k
        ));
    }
    let mut segments = Model::segments_from(&fit.centroids, &fit.stats, &cols, &transforms);
    let lineage = match &previous {
        Some((p, prev)) => {
            let l = crate::segments::lineage::link(prev, &mut segments, &cols, &transforms)?;
            let kept = l.entries.iter().filter(|e| e.kind == "kept").count();
            log(format!(
                "segment ids from {}: {kept} kept, {} split, {} new, {} vanished",
                p.display(),
                l.entries.iter().filter(|e| e.kind == "split").count(),
                l.entries.iter().filter(|e| e.kind == "new").count(),
                l.vanished.len()
            ));
            Some(l)
        }
        None => None,
    };
    let baseline = Some(crate::segments::Baseline::fit(&table.matrix.data, dim, &fit.nearest));
    let model = Model {
        baseline,
        lineage,
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        method: crate::model::Method::KMeans,
        metric,
        k: o.k,
        id_column: id_col,
        weight_column: o.weight_col.clone(),
        missing,
        scale,
        feature_columns: cols,
        features: transforms,
        segments,
        manifest: Manifest {
            engine: "microseg".into(),
            engine_version: crate::ENGINE_VERSION.into(),
            inputs: ds.files.iter().map(|f| f.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect(),
            input_fingerprint: ds.fingerprint()?,
            rows_read: table.rows_read,
            rows_used: n as u64,
            rows_dropped: table.rows_dropped,
            seed: o.seed,
            init: params.init.name().into(),
            init_sample_rows: params.init_sample_rows(n),
            n_init: o.n_init,
            best_run: fit.best_run,
            algorithm: algorithm.name().into(),
            max_iter: o.max_iter,
            tol: o.tol,
            tol_scaled: fit.tol_scaled,
            iterations: fit.iterations,
            converged: fit.converged,
            objective: fit.inertia,
            empty_cluster_relocations: fit.relocations,
            empty_segments,
            backend: backend.name().into(),
        },
    };
    let summary = serde_json::json!({
        "n_rows": n,
        "rows_read": table.rows_read,
        "rows_dropped": table.rows_dropped,
        "n_features": dim,
        "k": o.k,
        "iterations": fit.iterations,
        "converged": fit.converged,
        "inertia": fit.inertia,
        "read_seconds": read_seconds,
        "init_seconds": fit.init_seconds,
        "fit_seconds": fit_seconds,
        "seconds_per_iteration": per_iter,
        "full_evaluations_per_iteration": fit.full_evaluations as f64 / (fit.iterations as f64 + 1.0) / n as f64,
        "empty_cluster_relocations": fit.relocations,
        "empty_segments": empty_segments,
        "model_fingerprint": model.fingerprint(),
        "backend": backend.name(),
        "algorithm": algorithm.name(),
        "threads": rayon::current_num_threads(),
    });
    Ok(FitOutcome { model, summary })
}

fn progress_bar(len: u64) -> indicatif::ProgressBar {
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
    if !matches!(o.init.as_str(), "k-means++" | "kmeans++" | "k-means||" | "kmeans||" | "random") {
        v.push(Path::new(&o.init));
    }
    v
}

pub(crate) fn run_fit(a: FitArgs) -> Result<()> {
    KMeansParams::check_settings(a.opts.k, a.opts.max_iter, a.opts.tol, a.opts.n_init)?;
    crate::io::output::check_paths(&fit_inputs(&a.inputs, &a.opts), &[&a.model], a.json)?;
    let out = AtomicOutput::create(&a.model, a.force)?;
    let backend = super::backend::open(&a.opts.backend)?;
    let outcome = fit_model(&a.inputs, &a.opts, backend.as_ref())?;
    write_json(out, &outcome.model)?;
    log(format!("wrote the model to {}", a.model.display()));
    if a.json {
        let mut s = outcome.summary;
        s["command"] = "fit".into();
        s["model"] = a.model.display().to_string().into();
        super::print_json(&s)?;
    }
    Ok(())
}

pub(crate) fn run_segment(a: SegmentArgs) -> Result<()> {
    KMeansParams::check_settings(a.opts.k, a.opts.max_iter, a.opts.tol, a.opts.n_init)?;
    if a.out_dir.exists() && !a.out_dir.is_dir() {
        return Err(Error::output(&a.out_dir, "exists and is not a directory"));
    }
    let outputs: Vec<PathBuf> = ["model.json", "assignments.parquet", "profile.json", "report.html"]
        .iter()
        .map(|f| a.out_dir.join(f))
        .collect();
    let out_refs: Vec<&Path> = outputs.iter().map(|p| p.as_path()).collect();
    crate::io::output::check_paths(&fit_inputs(&a.inputs, &a.opts), &out_refs, a.json)?;
    let created = !a.out_dir.exists();
    if created {
        std::fs::create_dir_all(&a.out_dir).map_err(|e| Error::output(&a.out_dir, e))?;
        crate::io::output::register_dir(&a.out_dir);
    }
    let result = segment_into(&a);
    if result.is_err() && created {
        // Leave nothing behind: the directory was ours and holds no committed output.
        let _ = std::fs::remove_dir(&a.out_dir);
    }
    crate::io::output::forget_dir(&a.out_dir);
    result
}

fn segment_into(a: &SegmentArgs) -> Result<()> {
    let model_out = AtomicOutput::create(&a.out_dir.join("model.json"), a.force)?;
    let assign_out = AtomicOutput::create(&a.out_dir.join("assignments.parquet"), a.force)?;
    let profile_out = AtomicOutput::create(&a.out_dir.join("profile.json"), a.force)?;
    let report_out = AtomicOutput::create(&a.out_dir.join("report.html"), a.force)?;
    let backend = super::backend::open(&a.opts.backend)?;
    let outcome = fit_model(&a.inputs, &a.opts, backend.as_ref())?;
    let ds = Dataset::open(&a.inputs)?;
    let id = a.opts.table.id_col.as_deref();
    let pseudonymize =
        a.privacy.pseudonymize_ids.then(crate::segments::privacy::Pseudonymizer::from_env).transpose()?;
    let profile = super::segments::profile_of(&outcome.model, &ds, id, &a.outcomes, backend.as_ref())?;
    let opts = super::assign::AssignOptions {
        explain: a.explain.then(|| super::assign::segment_names(&outcome.model, Some(&profile))),
        pseudonymize,
    };
    let assigned = super::assign::assign_stream(&outcome.model, &ds, id, assign_out, backend.as_ref(), &opts)?;
    let html = crate::segments::report::render(&outcome.model, &profile, None, None);
    // Commit only when every output is ready: a failure above leaves nothing behind.
    assigned.output.commit()?;
    write_json(profile_out, &profile)?;
    super::segments::write_html(report_out, &html)?;
    write_json(model_out, &outcome.model)?;
    for s in &profile.segments {
        log(format!("segment {}: {} ({:.1} %)", s.id, s.name, 100.0 * s.share));
    }
    log(format!("wrote model.json, assignments.parquet, profile.json and report.html to {}", a.out_dir.display()));
    if a.json {
        let mut s = outcome.summary;
        s["command"] = "segment".into();
        s["out_dir"] = a.out_dir.display().to_string().into();
        s["assigned_rows"] = assigned.rows.into();
        s["assign_seconds"] = assigned.seconds.into();
        s["segment_names"] =
            profile.segments.iter().map(|p| serde_json::json!([p.id, p.name])).collect::<Vec<_>>().into();
        super::print_json(&s)?;
    }
    Ok(())
}
