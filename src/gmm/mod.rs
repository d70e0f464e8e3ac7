//! Gaussian mixtures fitted by expectation–maximisation: validated parameters
//! (`hyperparams`), the start from hard labels (`init`), and the EM iterations on
//! mergeable sufficient statistics (`algorithm`). The E-step (log densities of every
//! row under every component, responsibilities by log-sum-exp) is a backend pass, so
//! it runs as a WGSL shader or on the CPU twin; everything else is f64 on the host.
//! Like `kmeans`, it works on a matrix in memory and knows nothing of files or models.
//!
//! The arithmetic follows scikit-learn's `GaussianMixture` (same covariance types,
//! `reg_covar` on the diagonal, `10·eps` added to the component masses, precision
//! Cholesky factors, convergence on the change of the mean log-likelihood), so a fit
//! from the same start reaches the same optimum in the same number of iterations.

pub mod algorithm;
pub mod hyperparams;
pub mod linalg;
pub mod stats;

pub use algorithm::{EmIter, GmmDone, GmmFit, GmmResume, fit, fit_cancellable, fit_resumable};
pub use hyperparams::{CovarianceType, GmmInit, GmmParams};
pub use stats::{GaussianTerms, Mixture, MixtureStats, TermsKind};
