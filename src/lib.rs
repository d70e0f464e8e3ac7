//! microseg: subscriber tables (Parquet) to micro-segments.
//!
//! Data flows `io` (Parquet → Arrow batches) → `features` (validated, transformed,
//! row-major f32 matrix) → `backend` passes (mergeable statistics) → `kmeans` → `model`.
//! `pipeline` holds the jobs (fit, assign, profile, drift, segment) every front end
//! calls; `cli` (behind the default `cli` feature) is the only module that knows about
//! processes, flags and exit codes.

pub mod backend;
#[cfg(feature = "cli")]
pub mod cli;
pub mod error;
pub mod events;
pub mod features;
pub mod gmm;
pub mod io;
pub mod kmeans;
pub mod model;
pub mod pipeline;
pub mod segments;
pub mod similarity;
pub mod synth;

pub use error::{Error, ExitCode, Result};

/// Engine version written into every model manifest.
pub const ENGINE_VERSION: &str = env!("CARGO_PKG_VERSION");
