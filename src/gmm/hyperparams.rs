//! Gaussian-mixture parameters: defaults as scikit-learn's `GaussianMixture` (but
//! `diag` covariances by default: at tens of millions of rows and dozens of features
//! they are what a marketer's data supports), checked before any data is read.

use serde::{Deserialize, Serialize};

use crate::backend::Centroids;
use crate::error::{Error, Result};

/// The shape of each component's covariance (scikit-learn's `covariance_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CovarianceType {
    /// A full d × d matrix per component.
    Full,
    /// A variance per feature per component.
    #[default]
    Diag,
    /// One variance per component.
    Spherical,
    /// One full d × d matrix shared by all components.
    Tied,
}

impl CovarianceType {
    pub fn name(self) -> &'static str {
        match self {
            CovarianceType::Full => "full",
            CovarianceType::Diag => "diag",
            CovarianceType::Spherical => "spherical",
            CovarianceType::Tied => "tied",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "full" => CovarianceType::Full,
            "diag" => CovarianceType::Diag,
            "spherical" => CovarianceType::Spherical,
            "tied" => CovarianceType::Tied,
            other => {
                return Err(Error::Usage(format!("--covariance {other}: expected one of full, diag, spherical, tied")));
            }
        })
    }

    /// Free parameters of the covariances (scikit-learn's count).
    pub fn parameters(self, k: usize, d: usize) -> usize {
        match self {
            CovarianceType::Full => k * d * (d + 1) / 2,
            CovarianceType::Diag => k * d,
            CovarianceType::Spherical => k,
            CovarianceType::Tied => d * (d + 1) / 2,
        }
    }
}

/// Where EM starts: responsibilities are the hard assignment of every row to the
/// nearest of these centroids, and the first M-step is computed from them.
#[derive(Debug, Clone, PartialEq)]
pub enum GmmInit {
    /// The labels of the project's own k-means with its defaults (k-means++, seeded by
    /// `seed` and the run number).
    KMeans,
    /// Given centroids (k × d, model space): the rows' nearest of them.
    Given(Centroids),
}

#[derive(Debug, Clone, PartialEq)]
pub struct GmmParams {
    pub k: usize,
    pub covariance: CovarianceType,
    /// Added to the diagonal of every covariance (scikit-learn's `reg_covar`).
    pub reg_covar: f64,
    pub max_iter: usize,
    /// EM stops when the mean log-likelihood per row changes by less than this.
    pub tol: f64,
    /// Starts from k-means of different seeds; the highest final lower bound wins.
    pub n_init: usize,
    pub seed: u64,
    pub init: GmmInit,
}

impl GmmParams {
    pub fn new(k: usize) -> Self {
        GmmParams {
            k,
            covariance: CovarianceType::Diag,
            reg_covar: 1e-6,
            max_iter: 100,
            tol: 1e-3,
            n_init: 1,
            seed: crate::kmeans::DEFAULT_SEED,
            init: GmmInit::KMeans,
        }
    }

    /// The checks that need no data.
    pub fn check_settings(&self) -> Result<()> {
        crate::kmeans::KMeansParams::check_settings(self.k, self.max_iter, self.tol, self.n_init)?;
        if !(self.reg_covar.is_finite() && self.reg_covar >= 0.0) {
            return Err(Error::Usage(format!("--reg-covar must be a finite number >= 0, not {}", self.reg_covar)));
        }
        Ok(())
    }

    /// Validate against the data: `n` rows (with positive weight) of `dim` features.
    pub fn check(&self, n: usize, dim: usize) -> Result<()> {
        self.check_settings()?;
        let given = if let GmmInit::Given(c) = &self.init { Some(c) } else { None };
        crate::kmeans::hyperparams::check_start(self.k, n, dim, given)
    }
}
