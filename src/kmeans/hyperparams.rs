//! k-means parameters: a builder with defaults, and `check` that validates them
//! against the data before any work starts, so invalid parameters never reach `fit`.

use crate::backend::Centroids;
use crate::error::{Error, Result};

/// How the first centroids are chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum InitMethod {
    /// Greedy k-means++ (2 + ln k candidates per step, as scikit-learn).
    KMeansPlusPlus,
    /// k-means‖ (Bahmani et al. 2012): 5 rounds oversampling 2k, then weighted k-means++.
    KMeansParallel,
    /// k distinct rows chosen uniformly.
    Random,
    /// Given centroids (k × d, in the model's feature space).
    Given(Centroids),
}

impl InitMethod {
    pub fn name(&self) -> &'static str {
        match self {
            InitMethod::KMeansPlusPlus => "k-means++",
            InitMethod::KMeansParallel => "k-means||",
            InitMethod::Random => "random",
            InitMethod::Given(_) => "given",
        }
    }
}

/// Which exact iteration is run; both give the same result bit for bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Every point against every centroid, every iteration.
    Lloyd,
    /// Hamerly's bounds skip points whose nearest centroid cannot have changed.
    Hamerly,
    /// Lloyd where each cluster's points are only compared with the centroids the
    /// triangle inequality cannot rule out (see `pruned`).
    Pruned,
}

impl Algorithm {
    /// The faster exact variant for k (measured, docs/benchmarks.md): Hamerly's bounds
    /// below 128 centroids, triangle-inequality pruning from 128 on.
    pub fn auto(k: usize) -> Self {
        if k < 128 { Algorithm::Hamerly } else { Algorithm::Pruned }
    }

    /// The faster exact variant on `backend` for k centroids of `dim` features: plain
    /// Lloyd on a device, and on the CPU with 8-bit codes or one panel of fused f32
    /// (a whole pass then costs less than the bounds' bookkeeping: measured,
    /// docs/benchmarks.md); else `auto(k)`.
    pub fn auto_for<B: crate::backend::Backend + ?Sized>(k: usize, dim: usize, backend: &B) -> Self {
        match backend.as_cpu() {
            None => Algorithm::Lloyd,
            Some(_) if !backend.exact_labels() => Algorithm::Lloyd,
            Some(cpu) if cpu.kernel.resolve(k, dim).whole_pass_pays(k) => Algorithm::Lloyd,
            Some(_) => Algorithm::auto(k),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::Lloyd => "lloyd",
            Algorithm::Hamerly => "hamerly",
            Algorithm::Pruned => "pruned",
        }
    }
}

/// The geometry of the fit (stored in the model as "euclidean" or "cosine").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Squared Euclidean distance.
    #[default]
    Euclidean,
    /// Spherical k-means: rows and centroids on the unit sphere (the caller normalises
    /// the rows; centroids are renormalised after every update), so the nearest
    /// centroid is the most cosine-similar and ‖x − c‖² = 2(1 − cos).
    Cosine,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KMeansParams {
    pub k: usize,
    pub init: InitMethod,
    pub max_iter: usize,
    /// Relative tolerance on the centroid shift, scaled by the mean feature variance.
    pub tol: f64,
    pub n_init: usize,
    pub seed: u64,
    pub algorithm: Algorithm,
    /// Rows the initialisation looks at (a seeded sample); 0 means 64·k, at least 10 000.
    pub init_sample: usize,
    pub metric: Metric,
}

pub const DEFAULT_SEED: u64 = 0;

impl KMeansParams {
    pub fn new(k: usize) -> Self {
        KMeansParams {
            k,
            init: InitMethod::KMeansPlusPlus,
            max_iter: 300,
            tol: 1e-4,
            n_init: 1,
            seed: DEFAULT_SEED,
            algorithm: Algorithm::auto(k),
            init_sample: 0,
            metric: Metric::Euclidean,
        }
    }

    /// Rows sampled for initialisation given n rows.
    pub fn init_sample_rows(&self, n: usize) -> usize {
        let want = if self.init_sample == 0 { (64 * self.k).max(10_000) } else { self.init_sample };
        want.min(n).max(self.k.min(n))
    }

    /// The checks that need no data (run before any is read, so a bad flag fails fast).
    pub fn check_settings(k: usize, max_iter: usize, tol: f64, n_init: usize) -> Result<()> {
        if k == 0 {
            return Err(Error::Usage("--k must be at least 1".into()));
        }
        if max_iter == 0 {
            return Err(Error::Usage("--max-iter must be at least 1".into()));
        }
        if !(tol.is_finite() && tol >= 0.0) {
            return Err(Error::Usage(format!("--tol must be a finite number >= 0, not {tol}")));
        }
        if n_init == 0 {
            return Err(Error::Usage("--n-init must be at least 1".into()));
        }
        Ok(())
    }

    /// Validate against the data: `n` rows (with positive weight) of `dim` features.
    pub fn check(&self, n: usize, dim: usize) -> Result<()> {
        Self::check_settings(self.k, self.max_iter, self.tol, self.n_init)?;
        let given = if let InitMethod::Given(c) = &self.init { Some(c) } else { None };
        check_start(self.k, n, dim, given)
    }
}

/// The checks of a start against the data, shared by k-means and mixtures: k at most the
/// `n` usable rows, and given centroids of the right shape, all finite.
pub fn check_start(k: usize, n: usize, dim: usize, given: Option<&Centroids>) -> Result<()> {
    if k > n {
        return Err(Error::Data(format!(
            "--k {k} is more than the {n} usable rows of the input; lower --k or give more rows"
        )));
    }
    if let Some(c) = given {
        if c.dim != dim {
            return Err(Error::Data(format!(
                "the initial centroids have {} columns but the model has {dim} features",
                c.dim
            )));
        }
        if c.k != k {
            return Err(Error::Data(format!("the initial centroids file has {} rows but --k is {k}", c.k)));
        }
        if c.data.iter().any(|v| !v.is_finite()) {
            return Err(Error::Data("the initial centroids hold a NaN or infinite value".into()));
        }
    }
    Ok(())
}
