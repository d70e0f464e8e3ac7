//! The Python front end: maps keyword arguments onto the library's job configurations
//! and Arrow objects (anything with `__arrow_c_stream__`: pyarrow tables and readers,
//! polars frames, DuckDB results) onto in-memory datasets, without copying their
//! buffers. No pipeline logic lives here; `microseg/__init__.py` adds the Pythonic
//! surface (numpy and pandas inputs, docstrings).

mod spark;

use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::ffi_stream::RecordBatchStreamReader;
use arrow::pyarrow::{FromPyArrow, IntoPyArrow};
use arrow::record_batch::{RecordBatch, RecordBatchIterator};
use microseg::backend::{Backend, BackendChoice};
use microseg::features::{MissingPolicy, Scale};
use microseg::gmm::CovarianceType;
use microseg::io::Dataset;
use microseg::model::{Method, Metric, Model};
use microseg::pipeline::{self, AlgorithmChoice, AssignConfig, FitConfig, InitSpec};
use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

pyo3::create_exception!(
    _native,
    InvalidInputError,
    PyValueError,
    "Bad input data or arguments (exit codes 2 and 3 of the CLI)."
);

/// A microseg error as the Python exception a data engineer expects, with the CLI's message.
fn to_py(e: microseg::Error) -> PyErr {
    use microseg::Error as E;
    let msg = e.to_string();
    match e {
        E::Usage(_) | E::Input { .. } | E::Data(_) | E::OutputExists(_) => InvalidInputError::new_err(msg),
        E::Output { .. } => PyOSError::new_err(msg),
        E::Interrupted | E::Stopped { .. } => PyKeyboardInterrupt::new_err(msg),
        _ => PyRuntimeError::new_err(msg),
    }
}

/// Any Arrow stream-capable object as a dataset of its batches (buffers shared, not
/// copied); a path or URL (or a list of them) as the Parquet files it names, read as the
/// CLI reads them (a directory or prefix: its `*.parquet` files).
fn dataset(data: &Bound<'_, PyAny>, name: &str) -> PyResult<Dataset> {
    if let Ok(path) = data.extract::<String>() {
        return Dataset::open(&[std::path::PathBuf::from(path)]).map_err(to_py);
    }
    let is_list = data.is_instance_of::<pyo3::types::PyList>() || data.is_instance_of::<pyo3::types::PyTuple>();
    if is_list && let Ok(paths) = data.extract::<Vec<String>>() {
        let paths: Vec<std::path::PathBuf> = paths.into_iter().map(Into::into).collect();
        return Dataset::open(&paths).map_err(to_py);
    }
    let reader = RecordBatchStreamReader::from_pyarrow_bound(data)?;
    let schema: SchemaRef = arrow::record_batch::RecordBatchReader::schema(&reader);
    let batches: Vec<RecordBatch> =
        reader.collect::<Result<_, _>>().map_err(|e| InvalidInputError::new_err(format!("{name}: {e}")))?;
    Dataset::from_batches(name, schema, batches).map_err(to_py)
}

fn backend(name: Option<&str>, allow_software_gpu: bool) -> PyResult<Box<dyn Backend>> {
    backend_with_kernel(name, allow_software_gpu, None)
}

/// The backend, its CPU side running `kernel` (`--kernel`'s names; default:
/// MICROSEG_CPU_KERNEL, else auto).
fn backend_with_kernel(
    name: Option<&str>,
    allow_software_gpu: bool,
    kernel: Option<&str>,
) -> PyResult<Box<dyn Backend>> {
    let env = std::env::var("MICROSEG_BACKEND").ok();
    let choice: BackendChoice = name.or(env.as_deref()).unwrap_or("auto").parse().map_err(to_py)?;
    let kernel = match kernel {
        None => microseg::backend::cpu::Kernel::Auto,
        Some(k) => microseg::backend::cpu::Kernel::parse(k).ok_or_else(|| {
            InvalidInputError::new_err(format!(
                "kernel={k:?}: not a CPU kernel (one of {})",
                microseg::backend::cpu::Kernel::NAMES.join(", ")
            ))
        })?,
    };
    microseg::backend::open_with_kernel(choice, allow_software_gpu, kernel).map_err(to_py)
}

fn parse<T>(what: &str, value: &str, options: &[(&str, T)]) -> PyResult<T>
where
    T: Copy,
{
    options.iter().find(|(n, _)| *n == value).map(|(_, v)| *v).ok_or_else(|| {
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        InvalidInputError::new_err(format!("{what}='{value}': use one of {}", names.join(", ")))
    })
}

/// Run `f` without the GIL; a Ctrl-C arriving meanwhile is seen between iterations.
fn interruptible<T: Send>(py: Python<'_>, f: impl FnOnce(&mut dyn FnMut() -> bool) -> T + Send) -> T {
    py.detach(|| {
        let mut still_wanted = || Python::attach(|py| py.check_signals().is_ok());
        f(&mut still_wanted)
    })
}

/// A fitted segmentation model (see `microseg.Model` for the documented surface).
#[pyclass(module = "microseg._native", name = "NativeModel", frozen)]
struct NativeModel {
    model: Arc<Model>,
}

#[pymethods]
impl NativeModel {
    /// The model file's JSON text.
    fn to_json(&self) -> PyResult<String> {
        serde_json::to_string_pretty(&*self.model).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// Write the model file (atomically; an existing file is replaced only with overwrite).
    #[pyo3(signature = (path, overwrite = true))]
    fn save(&self, py: Python<'_>, path: PathBuf, overwrite: bool) -> PyResult<()> {
        let model = self.model.clone();
        py.detach(move || {
            let out = microseg::io::output::AtomicOutput::create(&path, overwrite)?;
            microseg::io::output::write_json(out, &*model)
        })
        .map_err(to_py)
    }

    fn fingerprint(&self) -> String {
        self.model.fingerprint()
    }

    /// Centroids in model space as row lists (k × d).
    fn centroids(&self) -> Vec<Vec<f32>> {
        self.model.segments.iter().map(|s| s.centroid.clone()).collect()
    }

    /// Assign every row; returns a pyarrow.RecordBatchReader over id, segment, distance,
    /// margin (and explanation).
    #[pyo3(signature = (data, id_col = None, explain = false, profile_json = None, backend_name = None, allow_software_gpu = false))]
    #[allow(clippy::too_many_arguments)]
    fn assign<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
        id_col: Option<String>,
        explain: bool,
        profile_json: Option<String>,
        backend_name: Option<String>,
        allow_software_gpu: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let ds = dataset(data, "<table>")?;
        let profile = match profile_json {
            Some(text) => {
                let p: microseg::segments::profile::Profile = serde_json::from_str(&text)
                    .map_err(|e| InvalidInputError::new_err(format!("not a microseg profile ({e})")))?;
                p.check_model(&self.model).map_err(InvalidInputError::new_err)?;
                Some(p)
            }
            None => None,
        };
        let be = backend(backend_name.as_deref(), allow_software_gpu)?;
        let model = self.model.clone();
        let cfg = AssignConfig {
            id_col,
            explain: explain.then(|| pipeline::segment_names(&model, profile.as_ref())),
            pseudonymize: None,
            soft_top: None,
        };
        let (schema, batches) = py
            .detach(move || {
                let mut sink = (None, Vec::new());
                pipeline::assign(&model, &ds, &cfg, be.as_ref(), &mut sink)?;
                Ok::<_, microseg::Error>((sink.0.expect("assign announces its schema"), sink.1))
            })
            .map_err(to_py)?;
        let reader = RecordBatchIterator::new(batches.into_iter().map(Ok), schema);
        let boxed: Box<dyn arrow::record_batch::RecordBatchReader + Send> = Box::new(reader);
        boxed.into_pyarrow(py)
    }

    /// Per-segment profiles as the JSON text of `microseg profile`.
    #[pyo3(signature = (data, outcomes = Vec::new(), id_col = None, backend_name = None, allow_software_gpu = false))]
    fn profile(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        outcomes: Vec<String>,
        id_col: Option<String>,
        backend_name: Option<String>,
        allow_software_gpu: bool,
    ) -> PyResult<String> {
        let ds = dataset(data, "<table>")?;
        let be = backend(backend_name.as_deref(), allow_software_gpu)?;
        let model = self.model.clone();
        let p = py
            .detach(move || pipeline::profile(&model, &ds, id_col.as_deref(), &outcomes, be.as_ref()))
            .map_err(to_py)?;
        serde_json::to_string(&p).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// Drift of `data` against the training baseline, as the JSON text of `microseg drift`.
    #[pyo3(signature = (data, watch = 0.1, retrain = 0.25, backend_name = None, allow_software_gpu = false))]
    fn drift(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        watch: f64,
        retrain: f64,
        backend_name: Option<String>,
        allow_software_gpu: bool,
    ) -> PyResult<String> {
        let ds = dataset(data, "<table>")?;
        let be = backend(backend_name.as_deref(), allow_software_gpu)?;
        let model = self.model.clone();
        let t = microseg::segments::drift::Thresholds { watch, retrain };
        let r = py.detach(move || pipeline::drift(&model, &ds, t, be.as_ref())).map_err(to_py)?;
        serde_json::to_string(&r).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// Fold new rows into the model; returns the updated model and the JSON text of the
    /// report of what moved (as `microseg update --report` writes it).
    #[pyo3(signature = (data, decay = None, half_life_rows = None, half_life_days = None, elapsed_days = None, as_of = None, max_iter = 10, max_growth = 1.5, min_share = None, backend_name = None, allow_software_gpu = false))]
    #[allow(clippy::too_many_arguments)]
    fn update(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        decay: Option<f64>,
        half_life_rows: Option<f64>,
        half_life_days: Option<f64>,
        elapsed_days: Option<f64>,
        as_of: Option<String>,
        max_iter: usize,
        max_growth: f64,
        min_share: Option<f64>,
        backend_name: Option<String>,
        allow_software_gpu: bool,
    ) -> PyResult<(NativeModel, String)> {
        use microseg::pipeline::{Forgetting, UpdateConfig};
        let forgetting = match (decay, half_life_rows, half_life_days) {
            (d, None, None) => Forgetting::Decay(d.unwrap_or(1.0)),
            (None, Some(h), None) => Forgetting::HalfLifeRows(h),
            (None, None, Some(h)) => {
                let elapsed = match (elapsed_days, as_of.as_deref()) {
                    (Some(e), _) => Some(e),
                    (None, Some(t)) => pipeline::update::elapsed_days(&self.model, t).map_err(to_py)?,
                    (None, None) => None,
                };
                let elapsed = elapsed.ok_or_else(|| {
                    PyValueError::new_err(
                        "half_life_days needs elapsed_days, or as_of after an update that recorded one",
                    )
                })?;
                Forgetting::HalfLifeDays { half_life: h, elapsed }
            }
            _ => return Err(PyValueError::new_err("give one of decay, half_life_rows and half_life_days")),
        };
        let ds = dataset(data, "<table>")?;
        let be = backend(backend_name.as_deref(), allow_software_gpu)?;
        let model = self.model.clone();
        let cfg = UpdateConfig { forgetting, max_iter, max_growth, min_share, as_of };
        let (m, r) = py.detach(move || pipeline::update_model(&model, &ds, &cfg, be.as_ref())).map_err(to_py)?;
        let report = serde_json::to_string(&r).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        Ok((NativeModel { model: Arc::new(m) }, report))
    }
}

/// Read a model file (or `-`, standard input).
#[pyfunction]
fn load(path: PathBuf) -> PyResult<NativeModel> {
    Ok(NativeModel { model: Arc::new(Model::load(&path).map_err(to_py)?) })
}

/// A model from its JSON text.
#[pyfunction]
fn loads(text: &str) -> PyResult<NativeModel> {
    let model: Model =
        serde_json::from_str(text).map_err(|e| InvalidInputError::new_err(format!("not a microseg model: {e}")))?;
    model.validate().map_err(|m| InvalidInputError::new_err(format!("invalid model: {m}")))?;
    Ok(NativeModel { model: Arc::new(model) })
}

/// Fit k-means segments; the keywords are the CLI's flags (see `microseg.fit`).
#[pyfunction]
#[pyo3(signature = (
    data, k = 8, features = None, exclude = Vec::new(), log1p = Vec::new(), scale = "standard",
    missing = "error", weight_col = None, id_col = None, init = "k-means++", init_centroids = None,
    init_sample = 0, n_init = 1, max_iter = None, tol = None, seed = 0, previous = None,
    allow_sensitive = false, metric = "euclidean", embedding_weight = None, algorithm = "auto",
    backend_name = None, allow_software_gpu = false, method = "kmeans", covariance = "diag",
    reg_covar = 1e-6, kernel = None, allow_duplicate_ids = false, batch_size = 1024,
    max_no_improvement = 10, refine = 0, split_merge = 2, reassignment_ratio = 0.01, stream = false, shuffle_rows = 1048576
))]
#[allow(clippy::too_many_arguments)]
fn fit(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    k: usize,
    features: Option<Vec<String>>,
    exclude: Vec<String>,
    log1p: Vec<String>,
    scale: &str,
    missing: &str,
    weight_col: Option<String>,
    id_col: Option<String>,
    init: &str,
    init_centroids: Option<Vec<f32>>,
    init_sample: usize,
    n_init: usize,
    max_iter: Option<usize>,
    tol: Option<f64>,
    seed: u64,
    previous: Option<PyRef<'_, NativeModel>>,
    allow_sensitive: bool,
    metric: &str,
    embedding_weight: Option<f64>,
    algorithm: &str,
    backend_name: Option<String>,
    allow_software_gpu: bool,
    method: &str,
    covariance: &str,
    reg_covar: f64,
    kernel: Option<String>,
    allow_duplicate_ids: bool,
    batch_size: usize,
    max_no_improvement: usize,
    refine: usize,
    split_merge: usize,
    reassignment_ratio: f64,
    stream: bool,
    shuffle_rows: usize,
) -> PyResult<(NativeModel, String)> {
    let method = parse("method", method, &[("kmeans", Method::KMeans), ("gmm", Method::Gmm)])?;
    let defaults = FitConfig::for_method(method, k);
    let cfg = FitConfig {
        method,
        covariance: parse(
            "covariance",
            covariance,
            &[
                ("full", CovarianceType::Full),
                ("diag", CovarianceType::Diag),
                ("spherical", CovarianceType::Spherical),
                ("tied", CovarianceType::Tied),
            ],
        )?,
        reg_covar,
        k,
        features,
        exclude,
        log1p,
        scale: parse("scale", scale, &[("standard", Scale::Standard), ("none", Scale::None)])?,
        missing: parse(
            "missing",
            missing,
            &[("error", MissingPolicy::Error), ("drop", MissingPolicy::Drop), ("mean", MissingPolicy::Mean)],
        )?,
        weight_col,
        id_col,
        init: match init_centroids {
            Some(c) => InitSpec::Centroids(c),
            None => InitSpec::parse(init),
        },
        init_sample,
        n_init,
        max_iter: max_iter.unwrap_or(defaults.max_iter),
        tol: tol.unwrap_or(defaults.tol),
        seed,
        previous: previous.map(|p| (*p.model).clone()),
        allow_sensitive,
        metric: parse("metric", metric, &[("euclidean", Metric::Euclidean), ("cosine", Metric::Cosine)])?,
        embedding_weight,
        algorithm: parse(
            "algorithm",
            algorithm,
            &[
                ("auto", AlgorithmChoice::Auto),
                ("lloyd", AlgorithmChoice::Lloyd),
                ("hamerly", AlgorithmChoice::Hamerly),
                ("pruned", AlgorithmChoice::Pruned),
                ("minibatch", AlgorithmChoice::MiniBatch),
            ],
        )?,
        checkpoint: None,
        allow_duplicate_ids,
        batch_size,
        max_no_improvement,
        refine,
        split_merge,
        reassignment_ratio,
        stream,
        shuffle_rows,
    };
    // Mini-batch: scikit-learn's MiniBatchKMeans defaults unless given.
    let cfg = if cfg.algorithm == AlgorithmChoice::MiniBatch {
        FitConfig { max_iter: max_iter.unwrap_or(100), tol: tol.unwrap_or(0.0), ..cfg }
    } else {
        cfg
    };
    cfg.check().map_err(to_py)?;
    let ds = dataset(data, "<table>")?;
    let be = backend_with_kernel(backend_name.as_deref(), allow_software_gpu, kernel.as_deref())?;
    let (model, report) = interruptible(py, move |still_wanted| {
        pipeline::fit_with_progress(&ds, &cfg, be.as_ref(), &mut |_| still_wanted())
    })
    .map_err(to_py)?;
    let report = serde_json::to_string(&report).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok((NativeModel { model: Arc::new(model) }, report))
}

fn sim_metric(metric: &str) -> PyResult<microseg::similarity::SimMetric> {
    use microseg::similarity::SimMetric;
    parse("metric", metric, &[("cosine", SimMetric::Cosine), ("ip", SimMetric::Ip)])
}

fn gpu_for(
    backend_name: Option<&str>,
    allow_software_gpu: bool,
) -> PyResult<Option<microseg::backend::wgpu::WgpuBackend>> {
    match backend_name {
        Some("gpu") => microseg::backend::open_gpu(allow_software_gpu).map(Some).map_err(to_py),
        Some("cpu") | Some("auto") | None => Ok(None),
        Some(other) => Err(InvalidInputError::new_err(format!("backend '{other}': use auto, gpu or cpu"))),
    }
}

fn reader_of<'py>(py: Python<'py>, sink: (Option<SchemaRef>, Vec<RecordBatch>)) -> PyResult<Bound<'py, PyAny>> {
    let schema = sink.0.ok_or_else(|| PyRuntimeError::new_err("no schema"))?;
    let reader = RecordBatchIterator::new(sink.1.into_iter().map(Ok), schema);
    let boxed: Box<dyn arrow::record_batch::RecordBatchReader + Send> = Box::new(reader);
    boxed.into_pyarrow(py)
}

/// Exact top-k neighbours of every query row among the base rows (embedding column).
#[pyfunction]
#[pyo3(signature = (base, queries, embedding, k, metric = "cosine", id_col = None, backend_name = None, allow_software_gpu = false))]
#[allow(clippy::too_many_arguments)]
fn neighbors<'py>(
    py: Python<'py>,
    base: &Bound<'py, PyAny>,
    queries: &Bound<'py, PyAny>,
    embedding: String,
    k: usize,
    metric: &str,
    id_col: Option<String>,
    backend_name: Option<String>,
    allow_software_gpu: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let base = dataset(base, "<base>")?;
    let queries = dataset(queries, "<queries>")?;
    let cfg = pipeline::NeighborsConfig {
        embedding,
        k,
        metric: sim_metric(metric)?,
        id_col,
        scan: microseg::similarity::ScanKernel::Auto,
    };
    let gpu = gpu_for(backend_name.as_deref(), allow_software_gpu)?;
    let sink = py
        .detach(move || {
            let mut sink = (None, Vec::new());
            pipeline::neighbors(&base, &queries, &cfg, gpu.as_ref(), &mut sink)?;
            Ok::<_, microseg::Error>(sink)
        })
        .map_err(to_py)?;
    reader_of(py, sink)
}

/// A look-alike audience: the rows of `data` most similar to the seeds.
#[pyfunction]
#[pyo3(signature = (data, embedding, top, seeds = None, seed_ids = None, mode = "max", metric = "cosine", id_col = None, backend_name = None, allow_software_gpu = false))]
#[allow(clippy::too_many_arguments)]
fn similar<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    embedding: String,
    top: usize,
    seeds: Option<&Bound<'py, PyAny>>,
    seed_ids: Option<Vec<String>>,
    mode: &str,
    metric: &str,
    id_col: Option<String>,
    backend_name: Option<String>,
    allow_software_gpu: bool,
) -> PyResult<Bound<'py, PyAny>> {
    use pipeline::SeedMode;
    let input = dataset(data, "<table>")?;
    let seed_table = seeds.map(|s| dataset(s, "<seeds>")).transpose()?;
    let ids = match (&seed_table, seed_ids) {
        (Some(_), Some(_)) => return Err(InvalidInputError::new_err("give seeds or seed_ids, not both")),
        (None, None) => return Err(InvalidInputError::new_err("give seeds (a table) or seed_ids (a list of ids)")),
        (_, ids) => ids,
    };
    let cfg = pipeline::SimilarConfig {
        embedding,
        top,
        mode: parse(
            "mode",
            mode,
            &[("max", SeedMode::Max), ("mean", SeedMode::Mean), ("centroid", SeedMode::Centroid)],
        )?,
        metric: sim_metric(metric)?,
        id_col,
    };
    let gpu = if cfg.mode == SeedMode::Max { gpu_for(backend_name.as_deref(), allow_software_gpu)? } else { None };
    let sink = py
        .detach(move || {
            let seeds = match (&seed_table, ids) {
                (Some(t), _) => pipeline::Seeds::Table(t),
                (None, Some(ids)) => {
                    pipeline::Seeds::Ids { ids: ids.into_iter().collect(), source: PathBuf::from("<seed_ids>") }
                }
                (None, None) => unreachable!("checked above"),
            };
            let mut sink = (None, Vec::new());
            pipeline::similar(&input, seeds, &cfg, gpu.as_ref(), &mut sink)?;
            Ok::<_, microseg::Error>(sink)
        })
        .map_err(to_py)?;
    reader_of(py, sink)
}

/// Events to one feature row per subscriber (and the traits model as JSON, with
/// `predict`): the `microseg features` job.
#[pyfunction]
#[pyo3(signature = (events, as_of, id_col = None, time_col = None, type_col = None, types = None, value_col = None,
    category_col = None, categories = 10, timezone_col = None, timezone = "UTC", time_unit = "day", predict = false,
    horizon = 90.0, discount_rate = 0.1, holdout_from = None, event_type = None, order_col = None,
    skip_null_ids = false, skip_negative_values = false))]
#[allow(clippy::too_many_arguments)]
fn features<'py>(
    py: Python<'py>,
    events: &Bound<'py, PyAny>,
    as_of: &str,
    id_col: Option<String>,
    time_col: Option<String>,
    type_col: Option<String>,
    types: Option<std::collections::HashMap<String, Vec<String>>>,
    value_col: Option<String>,
    category_col: Option<String>,
    categories: usize,
    timezone_col: Option<String>,
    timezone: &str,
    time_unit: &str,
    predict: bool,
    horizon: f64,
    discount_rate: f64,
    holdout_from: Option<String>,
    event_type: Option<String>,
    order_col: Option<String>,
    skip_null_ids: bool,
    skip_negative_values: bool,
) -> PyResult<(Bound<'py, PyAny>, Option<String>)> {
    use microseg::events::{self, EventSpec, PredictSpec, TimeUnit, Zone};
    let time = |what: &str, s: &str| {
        events::parse_time(s).ok_or_else(|| {
            InvalidInputError::new_err(format!(
                "{what}={s:?} is not a time: give a date, an ISO 8601 time or epoch seconds"
            ))
        })
    };
    let mut spec = EventSpec::new(time("as_of", as_of)?.1);
    spec.holdout_from = holdout_from.as_deref().map(|h| time("holdout_from", h)).transpose()?.map(|t| t.0);
    for (field, v) in [(&mut spec.id_col, id_col), (&mut spec.time_col, time_col), (&mut spec.type_col, type_col)] {
        if let Some(v) = v {
            *field = v;
        }
    }
    if let Some(types) = types {
        for (kind, names) in types {
            let t = &mut spec.types;
            let slot = match kind.as_str() {
                "purchase" => &mut t.purchase,
                "send" => &mut t.send,
                "open" => &mut t.open,
                "click" => &mut t.click,
                "visit" => &mut t.visit,
                "unsubscribe" => &mut t.unsubscribe,
                "complaint" => &mut t.complaint,
                "bounce" => &mut t.bounce,
                "ignore" => &mut t.ignore,
                other => {
                    return Err(InvalidInputError::new_err(format!(
                        "types: no kind {other:?} (purchase, send, open, click, visit, unsubscribe, complaint, bounce, ignore)"
                    )));
                }
            };
            *slot = names;
        }
    }
    spec.categories = if category_col.is_some() { categories } else { 0 };
    spec.value_col = value_col;
    spec.event_type = event_type;
    spec.order_col = order_col;
    spec.skip_null_ids = skip_null_ids;
    spec.skip_negative_values = skip_negative_values;
    spec.category_col = category_col;
    spec.timezone_col = timezone_col;
    spec.timezone = Zone::parse(timezone)
        .ok_or_else(|| InvalidInputError::new_err(format!("timezone={timezone:?} is not a time zone")))?;
    spec.time_unit = parse("time_unit", time_unit, &[("day", TimeUnit::Day), ("week", TimeUnit::Week)])?;
    let predict = predict.then_some(PredictSpec { horizon_days: horizon, discount_rate });
    let ds = dataset(events, "<events>")?;
    let (sink, traits) = py
        .detach(move || {
            let (state, traits) = events::features(&ds, &spec, predict)?;
            let schema = state.schema(traits.as_ref());
            let mut batches = Vec::new();
            state.finish(traits.as_ref(), &mut |b| {
                batches.push(b);
                Ok(())
            })?;
            let json = traits
                .map(|t| serde_json::to_string(&t))
                .transpose()
                .map_err(|e| microseg::Error::Runtime(e.to_string()))?;
            Ok::<_, microseg::Error>(((Some(schema), batches), json))
        })
        .map_err(to_py)?;
    Ok((reader_of(py, sink)?, traits))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // A corrupt Parquet file is an InvalidInputError, without a panic message on stderr.
    microseg::io::filter_contained_panics();
    m.add_function(wrap_pyfunction!(fit, m)?)?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(loads, m)?)?;
    m.add_function(wrap_pyfunction!(neighbors, m)?)?;
    m.add_function(wrap_pyfunction!(similar, m)?)?;
    m.add_function(wrap_pyfunction!(features, m)?)?;
    m.add_class::<NativeModel>()?;
    m.add_class::<spark::SparkPlan>()?;
    m.add_class::<spark::SparkPartition>()?;
    m.add_function(wrap_pyfunction!(spark::spark_merge, m)?)?;
    m.add_function(wrap_pyfunction!(spark::spark_empty, m)?)?;
    m.add_function(wrap_pyfunction!(spark::spark_relocate, m)?)?;
    m.add_function(wrap_pyfunction!(spark::spark_update, m)?)?;
    m.add("InvalidInputError", m.py().get_type::<InvalidInputError>())?;
    m.add("__version__", microseg::ENGINE_VERSION)?;
    Ok(())
}
