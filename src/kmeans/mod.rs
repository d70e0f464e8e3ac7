//! k-means: validated parameters (`hyperparams`), initialisation (`init`) and the
//! exact Lloyd / Hamerly iterations (`algorithm`). It works on a matrix in memory
//! through a `Backend` and knows nothing of files, flags or models.

pub mod algorithm;
pub mod hyperparams;
pub mod init;
pub mod minibatch;
mod pruned;
mod splitmerge;

pub use algorithm::{
    DoneRun, IterInfo, KMeansFit, Resume, StateEvent, centroids_from, fit, fit_cancellable, fit_resumable, tolerance,
};
pub use hyperparams::{Algorithm, DEFAULT_SEED, InitMethod, KMeansParams, Metric};
pub use minibatch::{MiniBatchParams, fit_minibatch};
pub use splitmerge::{Moves, split_merge};
