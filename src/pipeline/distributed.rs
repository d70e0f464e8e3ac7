//! k-means over partitions held by other processes (Spark tasks, say): the pieces a
//! driver and its workers call, each exchanging only mergeable statistics (kilobytes),
//! never rows. The same decisions as the single-node fit are taken from the merged
//! statistics, in partition order, identically on every worker:
//!
//! 1. [`Plan::new`] on the schema: the columns, the id and the initialisation.
//! 2. Each partition's [`Plan::moments`]; [`Plan::scaling`] merges them into the
//!    transforms (the single-node fit's, to rounding) and the tolerance.
//! 3. [`Plan::initial_centroids`] from the given start or from a seeded sample.
//! 4. Every iteration each [`Partition::step`] gives its statistics; [`merge`] adds them
//!    in partition order; empty clusters take the farthest rows of all partitions
//!    ([`Partition::candidates`], [`relocate`]: the single-node rule); [`update`] gives
//!    the next centroids and whether the fit has converged.
//! 5. [`Partition::finish`] against the final centroids; [`Plan::assemble`] makes the
//!    model file every other command reads.

use serde::{Deserialize, Serialize};

use super::fit::{Assembly, FitConfig, FitReport, assemble, plan};
use crate::backend::{Backend, Centroids, ClusterStats, Nearest};
use crate::error::{Error, Result};
use crate::features::{self, FeatureColumn, FeatureTransform, Matrix, MissingPolicy, Moments};
use crate::io::Dataset;
use crate::kmeans::{self, InitMethod, KMeansParams, Metric};
use crate::model::baseline::BASELINE_ROWS;
use crate::model::{Baseline, Model};

/// What every task needs to know of the fit.
#[derive(Debug, Clone)]
pub struct Plan {
    pub cfg: FitConfig,
    pub id_col: Option<String>,
    pub cols: Vec<FeatureColumn>,
    pub init: InitMethod,
}

/// A partition's moments, read and checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartMoments {
    pub count: Vec<f64>,
    pub mean: Vec<f64>,
    pub m2: Vec<f64>,
    pub rows_read: u64,
    pub rows_used: u64,
    pub rows_dropped: u64,
    /// The partition's rows as read ([`features::data_fingerprint`]).
    pub fingerprint: String,
}

/// The merged scaling: transforms, the fit's tolerance, and the rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scaling {
    pub transforms: Vec<FeatureTransform>,
    pub tol_scaled: f64,
    pub rows_read: u64,
    pub rows_used: u64,
    pub rows_dropped: u64,
    /// SHA-256 over the partitions' fingerprints in partition order.
    pub fingerprint: String,
}

/// One partition's pass: its statistics and how many of its labels changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartStats {
    pub stats: ClusterStats,
    pub changed: u64,
}

/// A row that may re-seed an empty cluster: its squared distance to its centroid, its
/// row number in the whole table, its current label, weight and values.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Candidate {
    pub dist: f32,
    pub row: u64,
    pub label: u32,
    pub weight: f64,
    pub values: Vec<f32>,
}

/// A partition's final pass: statistics against the final centroids and the rows of the
/// baseline's strided sample (model space) with their assignment. The sample (200,000
/// rows of the whole table) travels as base64 of little-endian words, not as decimal
/// text: exact, about half the size, and no float parsing on the driver.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartFinal {
    pub stats: ClusterStats,
    #[serde(with = "packed")]
    pub rows: Vec<f32>,
    #[serde(with = "packed")]
    pub labels: Vec<u32>,
    #[serde(with = "packed")]
    pub dist: Vec<f32>,
    #[serde(with = "packed")]
    pub second: Vec<f32>,
}

/// Vectors of 4-byte words as base64 text of their little-endian bytes.
mod packed {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub trait Word: Copy {
        fn to_le(self) -> [u8; 4];
        fn from_le(b: [u8; 4]) -> Self;
    }
    impl Word for f32 {
        fn to_le(self) -> [u8; 4] {
            self.to_le_bytes()
        }
        fn from_le(b: [u8; 4]) -> Self {
            f32::from_le_bytes(b)
        }
    }
    impl Word for u32 {
        fn to_le(self) -> [u8; 4] {
            self.to_le_bytes()
        }
        fn from_le(b: [u8; 4]) -> Self {
            u32::from_le_bytes(b)
        }
    }

    pub fn serialize<T: Word, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = v.iter().flat_map(|w| w.to_le()).collect();
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, T: Word, D: Deserializer<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        let bytes = STANDARD.decode(text.as_bytes()).map_err(D::Error::custom)?;
        if !bytes.len().is_multiple_of(4) {
            return Err(D::Error::custom(format!("{} bytes are not whole 4-byte words", bytes.len())));
        }
        Ok(bytes.chunks_exact(4).map(|c| T::from_le([c[0], c[1], c[2], c[3]])).collect())
    }
}

/// The merged statistics of an iteration and what the fit decided from them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Merged {
    pub stats: ClusterStats,
    pub changed: u64,
}

impl Plan {
    /// The plan of a fit of `cfg` on a table of `schema`'s columns (its rows, if any,
    /// are only used to check the id column).
    pub fn new(schema: &Dataset, cfg: FitConfig) -> Result<Plan> {
        cfg.check()?;
        if cfg.method != crate::model::Method::KMeans {
            return Err(Error::Usage("the distributed fit runs k-means; fit mixtures on one machine".into()));
        }
        if cfg.n_init > 1 || cfg.algorithm == super::AlgorithmChoice::MiniBatch {
            return Err(Error::Usage(
                "the distributed fit runs one Lloyd start: leave n_init and the mini-batch options out".into(),
            ));
        }
        let (id_col, cols, init) = plan(schema, &cfg)?;
        Ok(Plan { cfg, id_col, cols, init })
    }

    /// The columns a task reads: the features, then the weight column.
    pub fn columns(&self) -> Vec<String> {
        let mut c: Vec<String> = self.cols.iter().map(|c| c.column.clone()).collect();
        c.extend(self.cfg.weight_col.clone());
        c
    }

    pub fn dim(&self) -> usize {
        features::dim_of(&self.cols)
    }

    fn params(&self) -> KMeansParams {
        KMeansParams {
            k: self.cfg.k,
            init: self.init.clone(),
            max_iter: self.cfg.max_iter,
            tol: self.cfg.tol,
            n_init: 1,
            seed: self.cfg.seed,
            algorithm: kmeans::Algorithm::Lloyd,
            init_sample: self.cfg.init_sample,
            metric: self.cfg.metric,
        }
    }

    /// A partition's rows read as the single-node fit reads them. Under `--missing mean`
    /// the gaps are filled with `fill` (the merged means); before those are known
    /// (`fill` None) they stay NaN, which the moments skip.
    fn load(&self, part: &Dataset, fill: Option<&[f32]>) -> Result<features::TrainingTable> {
        let missing = self.cfg.missing;
        let dim = self.dim();
        let empty = |rows_read: u64, rows_dropped: u64| features::TrainingTable {
            matrix: Matrix::new(Vec::new(), dim),
            weights: self.cfg.weight_col.as_ref().map(|_| Vec::new()),
            rows_read,
            rows_dropped,
            impute: None,
            missing: features::MissingReport::new(self.cols.len()),
        };
        // A partition may hold no rows at all: that is not an error here.
        if part.n_rows() == 0 {
            return Ok(empty(0, 0));
        }
        let gaps = vec![f32::NAN; dim];
        let fill = if missing == MissingPolicy::Mean { Some(fill.unwrap_or(&gaps)) } else { None };
        match features::load_table(part, &self.cols, self.cfg.weight_col.as_deref(), missing, fill, None) {
            Ok(t) => Ok(t),
            // Every row of this partition dropped for missing values: an empty partition.
            Err(Error::Input { .. }) if missing == MissingPolicy::Drop => {
                let t = features::load_table(
                    part,
                    &self.cols,
                    self.cfg.weight_col.as_deref(),
                    MissingPolicy::Mean,
                    Some(&gaps),
                    None,
                )?;
                Ok(empty(t.rows_read, t.rows_read))
            }
            Err(e) => Err(e),
        }
    }

    /// A partition's moments (and its fingerprint, rows and missing values).
    pub fn moments(&self, part: &Dataset) -> Result<PartMoments> {
        let t = self.load(part, None)?;
        let mut m = Moments::new(self.dim());
        if t.matrix.n() > 0 {
            m.add(&t.matrix.data);
        }
        Ok(PartMoments {
            count: m.count,
            mean: m.mean,
            m2: m.m2,
            rows_read: t.rows_read,
            rows_used: t.matrix.n() as u64,
            rows_dropped: t.rows_dropped,
            fingerprint: features::data_fingerprint(&t.matrix, t.weights.as_deref()),
        })
    }

    /// The transforms and tolerance from every partition's moments, in partition order.
    pub fn scaling(&self, parts: &[PartMoments]) -> Result<Scaling> {
        use sha2::{Digest, Sha256};
        let dim = self.dim();
        let mut m = Moments::new(dim);
        let mut h = Sha256::new();
        let (mut read, mut used, mut dropped) = (0u64, 0u64, 0u64);
        for p in parts {
            if p.count.len() != dim {
                return Err(Error::Data(format!("moments of {} features for a fit of {dim}", p.count.len())));
            }
            m.merge(&Moments { count: p.count.clone(), mean: p.mean.clone(), m2: p.m2.clone() });
            h.update(p.fingerprint.as_bytes());
            read += p.rows_read;
            used += p.rows_used;
            dropped += p.rows_dropped;
        }
        if used == 0 {
            return Err(Error::Data("the partitions hold no complete rows; nothing to cluster".into()));
        }
        let impute: Option<Vec<f32>> =
            (self.cfg.missing == MissingPolicy::Mean).then(|| m.mean.iter().map(|v| *v as f32).collect());
        // Filled gaps sit at the mean: they add rows, not squared deviations.
        let variances: Vec<f64> = match self.cfg.missing {
            MissingPolicy::Mean => m.m2.iter().map(|v| v / used as f64).collect(),
            _ => m.variances(),
        };
        if let Some(j) = m.count.iter().position(|c| *c == 0.0) {
            return Err(Error::Data(format!(
                "feature '{}' has no finite value at all; it cannot be imputed or scaled",
                features::feature_names(&self.cols)[j]
            )));
        }
        let moments = (self.cfg.scale == features::Scale::Standard).then(|| (m.mean.clone(), variances.clone()));
        let transforms =
            features::transforms_from(moments, dim, &self.cols, impute.as_deref(), self.cfg.embedding_weight);
        let tol_scaled = self.cfg.tol * features::model_space_variance(&variances, &transforms);
        Ok(Scaling {
            transforms,
            tol_scaled,
            rows_read: read,
            rows_used: used,
            rows_dropped: dropped,
            fingerprint: format!("sha256:{}", h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>()),
        })
    }

    /// A partition in model space, held by its task for every iteration. `offset`: the
    /// rows of the partitions before it.
    pub fn partition(&self, s: &Scaling, part: &Dataset, offset: u64) -> Result<Partition> {
        let fill: Option<Vec<f32>> = s.transforms.iter().map(|t| t.impute).collect();
        let mut t = self.load(part, fill.as_deref())?;
        features::apply_transforms(&mut t.matrix.data, &s.transforms);
        features::check_range(&t.matrix.data, &self.cols, &s.transforms, std::path::Path::new(&part.display_name()))?;
        if self.cfg.metric == Metric::Cosine {
            let keep = features::normalize_rows(&mut t.matrix, self.cfg.missing, &part.display_name())?;
            if let (Some(k), Some(w)) = (&keep, t.weights.as_mut()) {
                let mut it = k.iter();
                w.retain(|_| *it.next().unwrap());
            }
        }
        let n = t.matrix.n();
        Ok(Partition {
            x: t.matrix,
            w: t.weights,
            nearest: vec![Nearest { label: u32::MAX, dist: 0.0, second: 0.0 }; n],
            last: None,
            offset,
        })
    }

    /// The initial centroids: the given ones, or k-means++ (or the configured method) on
    /// a sample of rows gathered from the partitions (in model space, as the single-node
    /// fit samples before it initialises).
    pub fn initial_centroids(&self, s: &Scaling, sample: Option<&Dataset>) -> Result<Centroids> {
        let p = self.params();
        if let InitMethod::Given(_) = &p.init {
            let empty = Matrix::new(vec![0.0; self.dim()], self.dim());
            return Ok(kmeans::algorithm::initial_centroids(&empty, None, &p, 0));
        }
        let sample = sample.ok_or_else(|| Error::Usage("a k-means++ start needs a sample of the rows".into()))?;
        let part = self.partition(s, sample, 0)?;
        if part.x.n() < self.cfg.k {
            return Err(Error::Data(format!(
                "the sample holds {} rows, fewer than k = {}; sample more rows",
                part.x.n(),
                self.cfg.k
            )));
        }
        let p = KMeansParams { init_sample: part.x.n(), ..p };
        Ok(kmeans::algorithm::initial_centroids(&part.x, part.w.as_deref(), &p, 0))
    }

    /// The model and report from every partition's final pass (in partition order).
    #[allow(clippy::too_many_arguments)]
    pub fn assemble(
        &self,
        s: &Scaling,
        centroids: Centroids,
        finals: &[PartFinal],
        iterations: usize,
        converged: bool,
        relocations: usize,
        backend: &dyn Backend,
        fit_seconds: f64,
    ) -> Result<(Model, FitReport)> {
        let (k, dim) = (self.cfg.k, self.dim());
        let mut stats = ClusterStats::zeros(k, dim);
        let (mut rows, mut nearest) = (Vec::new(), Vec::new());
        for f in finals {
            if f.labels.len() != f.dist.len()
                || f.labels.len() != f.second.len()
                || f.rows.len() != f.labels.len() * dim
                || (f.stats.k, f.stats.dim) != (k, dim)
            {
                return Err(Error::Data(format!(
                    "a partition's final pass does not fit together: {} labels, {} distances, {} values of \
                     {dim}-feature rows, statistics of {} × {}",
                    f.labels.len(),
                    f.dist.len().min(f.second.len()),
                    f.rows.len(),
                    f.stats.k,
                    f.stats.dim
                )));
            }
            if let Some(l) = f.labels.iter().find(|&&l| l as usize >= k) {
                return Err(Error::Data(format!("a partition's final pass labels a row {l}, not below k = {k}")));
            }
            stats.merge(&f.stats);
            rows.extend_from_slice(&f.rows);
            nearest.extend(f.labels.iter().zip(&f.dist).zip(&f.second).map(|((&label, &dist), &second)| Nearest {
                label,
                dist,
                second,
            }));
        }
        let inertia = stats.inertia();
        let n = stats.count.iter().sum::<u64>() as usize;
        let params = self.params();
        let fit = kmeans::KMeansFit {
            centroids,
            nearest: Vec::new(),
            stats,
            inertia,
            iterations,
            converged,
            relocations,
            best_run: 0,
            tol_scaled: s.tol_scaled,
            iteration_seconds: fit_seconds,
            init_seconds: 0.0,
            full_evaluations: (iterations as u64 + 1) * n as u64,
        };
        assemble(Assembly {
            cfg: &self.cfg,
            params: &params,
            algorithm: kmeans::Algorithm::Lloyd,
            backend,
            id_col: self.id_col.clone(),
            cols: self.cols.clone(),
            transforms: s.transforms.clone(),
            fit,
            baseline: Baseline::fit(&rows, dim, &nearest),
            gmm_section: None,
            input_fingerprint: s.fingerprint.clone(),
            rows_read: s.rows_read,
            rows_dropped: s.rows_dropped,
            n,
            read_seconds: 0.0,
            fit_seconds,
            per_iter: fit_seconds / iterations.max(1) as f64,
        })
    }
}

/// A partition's rows in model space, with its current labels.
pub struct Partition {
    pub x: Matrix,
    pub w: Option<Vec<f32>>,
    nearest: Vec<Nearest>,
    /// The centroids of the last step while `nearest`'s distances may be inexact.
    last: Option<Centroids>,
    /// Rows of the partitions before this one.
    pub offset: u64,
}

impl Partition {
    pub fn rows(&self) -> usize {
        self.x.n()
    }

    /// One Lloyd pass against `c`: exact labels, how many changed, the statistics.
    pub fn step(&mut self, c: &Centroids, backend: &dyn Backend) -> Result<PartStats> {
        if self.x.n() == 0 {
            return Ok(PartStats { stats: ClusterStats::zeros(c.k, c.dim), changed: 0 });
        }
        // Assignment, changed labels and statistics in one pass, as on one machine.
        // Its distances may carry the fast expansion's rounding: `candidates` makes them
        // exact first.
        let (stats, changed) = backend.assign_reduce(&self.x.data, self.w.as_deref(), c, &mut self.nearest)?;
        self.last = Some(c.clone());
        Ok(PartStats { stats, changed })
    }

    /// The `m` rows farthest from their centroids (ties to the lower row), for the
    /// re-seeding of empty clusters: from exact distances to the last step's centroids,
    /// as the single-node fit chooses them.
    pub fn candidates(&mut self, m: usize) -> Vec<Candidate> {
        if let Some(c) = self.last.take() {
            kmeans::algorithm::refresh_distances(&self.x, &c, &mut self.nearest);
        }
        let mut idx: Vec<usize> = (0..self.x.n()).collect();
        idx.sort_by(|&a, &b| self.nearest[b].dist.total_cmp(&self.nearest[a].dist).then(a.cmp(&b)));
        idx.truncate(m);
        idx.into_iter()
            .map(|i| Candidate {
                dist: self.nearest[i].dist,
                row: self.offset + i as u64,
                label: self.nearest[i].label,
                weight: self.w.as_ref().map_or(1.0, |w| w[i] as f64),
                values: self.x.row(i).to_vec(),
            })
            .collect()
    }

    /// The exact pass against the final centroids, with the baseline's rows (every
    /// `ceil(total / 200,000)`-th row of the whole table).
    pub fn finish(&mut self, c: &Centroids, total_rows: u64, backend: &dyn Backend) -> Result<PartFinal> {
        if self.x.n() == 0 {
            return Ok(PartFinal {
                stats: ClusterStats::zeros(c.k, c.dim),
                rows: Vec::new(),
                labels: Vec::new(),
                dist: Vec::new(),
                second: Vec::new(),
            });
        }
        backend.assign(&self.x.data, c, &mut self.nearest)?;
        self.last = None;
        let stats = backend.reduce(&self.x.data, self.w.as_deref(), &self.nearest, c.k)?;
        let step = (total_rows as usize).div_ceil(BASELINE_ROWS).max(1) as u64;
        let (mut rows, mut labels, mut dist, mut second) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, nr) in self.nearest.iter().enumerate() {
            if (self.offset + i as u64).is_multiple_of(step) {
                rows.extend_from_slice(self.x.row(i));
                labels.push(nr.label);
                dist.push(nr.dist);
                second.push(nr.second);
            }
        }
        Ok(PartFinal { stats, rows, labels, dist, second })
    }
}

/// The statistics of every partition added in partition order.
pub fn merge(parts: &[PartStats]) -> Result<Merged> {
    let first = parts.first().ok_or_else(|| Error::Data("no partition statistics to merge".into()))?;
    let mut stats = ClusterStats::zeros(first.stats.k, first.stats.dim);
    let mut changed = 0;
    for p in parts {
        if (p.stats.k, p.stats.dim) != (stats.k, stats.dim) {
            return Err(Error::Data("partition statistics of different shapes".into()));
        }
        stats.merge(&p.stats);
        changed += p.changed;
    }
    Ok(Merged { stats, changed })
}

/// Clusters of `merged` without weight: each partition then sends this many candidates.
pub fn empty_clusters(merged: &Merged) -> usize {
    merged.stats.weight.iter().filter(|w| **w == 0.0).count()
}

/// Empty clusters of `merged` (ascending) take the farthest rows of all partitions, as
/// the single-node fit re-seeds them; returns how many moved.
pub fn relocate(merged: &mut Merged, candidates: &[Vec<Candidate>]) -> usize {
    let s = &mut merged.stats;
    let empty: Vec<usize> = (0..s.k).filter(|&j| s.weight[j] == 0.0).collect();
    let mut all: Vec<&Candidate> = candidates.iter().flatten().collect();
    all.sort_by(|a, b| b.dist.total_cmp(&a.dist).then(a.row.cmp(&b.row)));
    let dim = s.dim;
    let mut moved = 0;
    for (&j, c) in empty.iter().zip(all) {
        let old = c.label as usize;
        for p in 0..dim {
            s.sum[old * dim + p] -= c.weight * c.values[p] as f64;
            s.sum[j * dim + p] = c.weight * c.values[p] as f64;
        }
        s.weight[old] -= c.weight;
        s.weight[j] = c.weight;
        s.count[old] -= 1;
        s.count[j] = 1;
        moved += 1;
    }
    moved
}

/// The next centroids from the merged statistics, the squared shift, and whether the fit
/// has converged (no label changed, or the shift under the tolerance), as the
/// single-node fit decides.
pub fn update(merged: &Merged, c: &Centroids, metric: Metric, tol_scaled: f64) -> (Centroids, f64, bool) {
    let next = kmeans::centroids_from(&merged.stats, c, metric);
    let shift: f64 = (0..c.k).map(|j| crate::backend::cpu::exact_sq_dist(next.row(j), c.row(j))).sum();
    let converged = merged.changed == 0 || shift <= tol_scaled;
    (next, shift, converged)
}
