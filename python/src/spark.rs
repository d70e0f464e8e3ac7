//! The native side of `microseg.spark`: the pieces of `pipeline::distributed` a Spark
//! driver and its tasks call, with statistics carried as JSON text (what
//! `BarrierTaskContext.allGather` passes). The heavy calls release the GIL and run on a
//! thread pool of the task's cores.

use std::sync::Arc;

use microseg::backend::cpu::CpuBackend;
use microseg::backend::{Backend, Centroids};
use microseg::features::{MissingPolicy, Scale};
use microseg::model::Metric;
use microseg::pipeline::distributed::{self, Candidate, Merged, PartFinal, PartMoments, PartStats, Plan, Scaling};
use microseg::pipeline::{FitConfig, InitSpec};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use serde::{Deserialize, Serialize};

use super::{NativeModel, dataset, parse, to_py};

/// The options of `microseg.spark.fit` (the single-node fit's, less what a distributed
/// Lloyd fit does not do).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Options {
    k: usize,
    features: Option<Vec<String>>,
    exclude: Vec<String>,
    log1p: Vec<String>,
    scale: String,
    missing: String,
    weight_col: Option<String>,
    id_col: Option<String>,
    init: String,
    init_centroids: Option<Vec<f32>>,
    init_sample: usize,
    max_iter: usize,
    tol: f64,
    seed: u64,
    metric: String,
    embedding_weight: Option<f64>,
    allow_sensitive: bool,
}

impl Default for Options {
    fn default() -> Self {
        let d = FitConfig::default();
        Options {
            k: d.k,
            features: None,
            exclude: Vec::new(),
            log1p: Vec::new(),
            scale: "standard".into(),
            missing: "error".into(),
            weight_col: None,
            id_col: None,
            init: "k-means++".into(),
            init_centroids: None,
            init_sample: 0,
            max_iter: d.max_iter,
            tol: d.tol,
            seed: 0,
            metric: "euclidean".into(),
            embedding_weight: None,
            allow_sensitive: false,
        }
    }
}

impl Options {
    fn config(&self) -> PyResult<FitConfig> {
        Ok(FitConfig {
            k: self.k,
            features: self.features.clone(),
            exclude: self.exclude.clone(),
            log1p: self.log1p.clone(),
            scale: parse("scale", &self.scale, &[("standard", Scale::Standard), ("none", Scale::None)])?,
            missing: parse(
                "missing",
                &self.missing,
                &[("error", MissingPolicy::Error), ("drop", MissingPolicy::Drop), ("mean", MissingPolicy::Mean)],
            )?,
            weight_col: self.weight_col.clone(),
            id_col: self.id_col.clone(),
            init: match &self.init_centroids {
                Some(c) => InitSpec::Centroids(c.clone()),
                None => InitSpec::parse(&self.init),
            },
            init_sample: self.init_sample,
            max_iter: self.max_iter,
            tol: self.tol,
            seed: self.seed,
            metric: parse("metric", &self.metric, &[("euclidean", Metric::Euclidean), ("cosine", Metric::Cosine)])?,
            embedding_weight: self.embedding_weight,
            allow_sensitive: self.allow_sensitive,
            ..FitConfig::default()
        })
    }
}

fn json<T: serde::Serialize>(v: &T) -> PyResult<String> {
    serde_json::to_string(v).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> PyResult<T> {
    serde_json::from_str(text).map_err(|e| PyValueError::new_err(format!("{what}: {e}")))
}

/// A fit's plan: made on the driver from the DataFrame's schema, and again in each task
/// from `task_options()` (explicit features, no id column: the task reads only them).
#[pyclass(module = "microseg._native", name = "SparkPlan", frozen)]
pub struct SparkPlan {
    plan: Plan,
    options: Options,
}

#[pymethods]
impl SparkPlan {
    #[new]
    fn new(schema: &Bound<'_, PyAny>, options: &str) -> PyResult<Self> {
        let options: Options = from_json("options", options)?;
        let ds = dataset(schema, "<schema>")?;
        let plan = Plan::new(&ds, options.config()?).map_err(to_py)?;
        Ok(SparkPlan { plan, options })
    }

    /// The columns a task reads: the features, then the weight column.
    fn columns(&self) -> Vec<String> {
        self.plan.columns()
    }

    fn dim(&self) -> usize {
        self.plan.dim()
    }

    /// The options a task builds its plan from.
    fn task_options(&self) -> PyResult<String> {
        let mut o = self.options.clone();
        o.features = Some(self.plan.cols.iter().map(|c| c.column.clone()).collect());
        o.exclude = Vec::new();
        o.id_col = None;
        o.allow_sensitive = true;
        o.log1p = self.plan.cols.iter().filter(|c| c.log1p).map(|c| c.column.clone()).collect();
        json(&o)
    }

    /// A partition's moments (JSON).
    fn moments(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<String> {
        let ds = dataset(data, "<partition>")?;
        let m = py.detach(|| self.plan.moments(&ds)).map_err(to_py)?;
        json(&m)
    }

    /// The scaling from every partition's moments, in partition order (JSON).
    fn scaling(&self, moments: Vec<String>) -> PyResult<String> {
        let parts: Vec<PartMoments> = moments.iter().map(|m| from_json("moments", m)).collect::<PyResult<_>>()?;
        json(&self.plan.scaling(&parts).map_err(to_py)?)
    }

    /// The starting centroids (model space, row-major): given, or from a sample table.
    #[pyo3(signature = (scaling, sample = None))]
    fn initial_centroids(
        &self,
        py: Python<'_>,
        scaling: &str,
        sample: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<f32>> {
        let s: Scaling = from_json("scaling", scaling)?;
        let ds = sample.map(|t| dataset(t, "<sample>")).transpose()?;
        let c = py.detach(|| self.plan.initial_centroids(&s, ds.as_ref())).map_err(to_py)?;
        Ok(c.data)
    }

    /// A partition in model space, for the iterations of one task.
    #[pyo3(signature = (scaling, data, offset = 0, threads = 1))]
    fn partition(
        &self,
        py: Python<'_>,
        scaling: &str,
        data: &Bound<'_, PyAny>,
        offset: u64,
        threads: usize,
    ) -> PyResult<SparkPartition> {
        let s: Scaling = from_json("scaling", scaling)?;
        let ds = dataset(data, "<partition>")?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build()
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        let part = py.detach(|| pool.install(|| self.plan.partition(&s, &ds, offset))).map_err(to_py)?;
        // The partition's rows stay put until it is dropped: the backend keeps what it
        // prepares from them (the 8-bit codes, the rows' norms) for every pass, as the
        // single-node fit does.
        let cpu = CpuBackend::default();
        cpu.retain(&part.x.data, part.x.dim).map_err(to_py)?;
        Ok(SparkPartition { part: std::sync::Mutex::new(part), cpu, pool: Arc::new(pool), k: self.plan.cfg.k })
    }

    /// The model from every partition's final pass (in partition order) and the report.
    fn assemble(
        &self,
        scaling: &str,
        centroids: Vec<f32>,
        finals: Vec<String>,
        iterations: usize,
        converged: bool,
        relocations: usize,
        fit_seconds: f64,
    ) -> PyResult<(NativeModel, String)> {
        let s: Scaling = from_json("scaling", scaling)?;
        let finals: Vec<PartFinal> = finals.iter().map(|f| from_json("final", f)).collect::<PyResult<_>>()?;
        let c = Centroids::new(centroids, self.plan.dim());
        let cpu = CpuBackend::default();
        let (m, r) =
            self.plan.assemble(&s, c, &finals, iterations, converged, relocations, &cpu, fit_seconds).map_err(to_py)?;
        Ok((NativeModel { model: Arc::new(m) }, json(&r)?))
    }
}

/// One task's partition in model space, with its labels.
#[pyclass(module = "microseg._native", name = "SparkPartition", frozen)]
pub struct SparkPartition {
    part: std::sync::Mutex<distributed::Partition>,
    /// The backend of every pass, holding what it retained of the partition's rows.
    cpu: CpuBackend,
    pool: Arc<rayon::ThreadPool>,
    k: usize,
}

impl SparkPartition {
    fn centroids(&self, c: Vec<f32>, dim: usize) -> PyResult<Centroids> {
        if dim == 0 || c.len() != self.k * dim {
            return Err(PyValueError::new_err(format!("{} centroid values are not {} rows of {dim}", c.len(), self.k)));
        }
        Ok(Centroids::new(c, dim))
    }
}

#[pymethods]
impl SparkPartition {
    fn rows(&self) -> usize {
        self.part.lock().unwrap().rows()
    }

    fn set_offset(&self, offset: u64) {
        self.part.lock().unwrap().offset = offset;
    }

    /// One Lloyd pass against `centroids`: the partition's statistics (JSON).
    fn step(&self, py: Python<'_>, centroids: Vec<f32>, dim: usize) -> PyResult<String> {
        let c = self.centroids(centroids, dim)?;
        let s: PartStats =
            py.detach(|| self.pool.install(|| self.part.lock().unwrap().step(&c, &self.cpu))).map_err(to_py)?;
        json(&s)
    }

    /// The `m` rows farthest from their centroids (JSON), for empty clusters.
    fn candidates(&self, py: Python<'_>, m: usize) -> PyResult<String> {
        json(&py.detach(|| self.pool.install(|| self.part.lock().unwrap().candidates(m))))
    }

    /// The final pass (JSON).
    fn finish(&self, py: Python<'_>, centroids: Vec<f32>, dim: usize, total_rows: u64) -> PyResult<String> {
        let c = self.centroids(centroids, dim)?;
        let f = py
            .detach(|| self.pool.install(|| self.part.lock().unwrap().finish(&c, total_rows, &self.cpu)))
            .map_err(to_py)?;
        json(&f)
    }
}

/// Every partition's statistics merged in the order given (JSON).
#[pyfunction]
pub fn spark_merge(stats: Vec<String>) -> PyResult<String> {
    let parts: Vec<PartStats> = stats.iter().map(|s| from_json("statistics", s)).collect::<PyResult<_>>()?;
    json(&distributed::merge(&parts).map_err(to_py)?)
}

/// How many clusters of the merged statistics are empty.
#[pyfunction]
pub fn spark_empty(merged: &str) -> PyResult<usize> {
    Ok(distributed::empty_clusters(&from_json::<Merged>("merged", merged)?))
}

/// Re-seed the empty clusters from every partition's candidates: the new merged
/// statistics and how many moved.
#[pyfunction]
pub fn spark_relocate(merged: &str, candidates: Vec<String>) -> PyResult<(String, usize)> {
    let mut m: Merged = from_json("merged", merged)?;
    let c: Vec<Vec<Candidate>> = candidates.iter().map(|c| from_json("candidates", c)).collect::<PyResult<_>>()?;
    let moved = distributed::relocate(&mut m, &c);
    Ok((json(&m)?, moved))
}

/// The next centroids, the squared shift and whether the fit has converged.
#[pyfunction]
pub fn spark_update(
    merged: &str,
    centroids: Vec<f32>,
    dim: usize,
    metric: &str,
    tol_scaled: f64,
) -> PyResult<(Vec<f32>, f64, bool)> {
    let m: Merged = from_json("merged", merged)?;
    let metric = parse("metric", metric, &[("euclidean", Metric::Euclidean), ("cosine", Metric::Cosine)])?;
    if dim == 0 || !centroids.len().is_multiple_of(dim) || centroids.len() / dim != m.stats.k {
        return Err(PyValueError::new_err("the centroids do not match the statistics"));
    }
    let (next, shift, done) = distributed::update(&m, &Centroids::new(centroids, dim), metric, tol_scaled);
    Ok((next.data, shift, done))
}
