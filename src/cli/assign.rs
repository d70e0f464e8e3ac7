//! `microseg assign`: the flags of an assignment, mapped onto `pipeline::assign`, whose
//! batches go to a Parquet output.

use std::path::PathBuf;

use clap::Args;

use super::{TableArgs, log};
use crate::error::Result;
use crate::io::Dataset;
use crate::io::output::{AtomicOutput, ParquetOutput};
use crate::model::Model;
use crate::pipeline;

#[derive(Debug, Args)]
pub(crate) struct AssignArgs {
    /// The model written by `fit` or `segment`.
    #[arg(long)]
    model: PathBuf,
    /// Parquet files or directories of them.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    table: TableArgs,
    #[command(flatten)]
    backend: super::backend::BackendArgs,
    /// Add an `explanation` column: the features that most pull each subscriber toward
    /// their segment, in words.
    #[arg(long)]
    explain: bool,
    /// Gaussian-mixture models: also write the N most probable segments and their
    /// posteriors as list columns `top_segments` and `top_probabilities`.
    #[arg(long)]
    soft_top: Option<usize>,
    /// Segment names for explanations (a profile from `microseg profile`); default:
    /// the model's names, else "segment N".
    #[arg(long)]
    profile: Option<PathBuf>,
    #[command(flatten)]
    privacy: PrivacyArgs,
    /// Output Parquet: id, segment (int32), distance (float32), margin (float32); - for
    /// standard output.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    pub(crate) write: super::WriteArgs,
}

#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct PrivacyArgs {
    /// Replace the id column in the output by a keyed hash (HMAC-SHA-256; the key is read
    /// from MICROSEG_ID_KEY and never stored).
    #[arg(long)]
    pub pseudonymize_ids: bool,
}

pub(crate) fn run_assign(a: AssignArgs) -> Result<()> {
    let mut inputs: Vec<&std::path::Path> = a.inputs.iter().map(|p| p.as_path()).collect();
    inputs.push(&a.model);
    inputs.extend(a.profile.as_deref());
    crate::io::output::check_paths(&inputs, &[&a.out], a.write.json)?;
    let model = Model::load(&a.model)?;
    let ds = Dataset::open(&a.inputs)?;
    let pseudonymize =
        a.privacy.pseudonymize_ids.then(crate::segments::privacy::Pseudonymizer::from_env).transpose()?;
    let profile = match &a.profile {
        Some(p) => Some(super::segments::read_profile(p, &model, &a.model)?),
        None => None,
    };
    let out = AtomicOutput::create(&a.out, a.write.force)?;
    let backend = super::backend::open(&a.backend)?;
    let cfg = pipeline::AssignConfig {
        id_col: a.table.id_col.clone(),
        explain: a.explain.then(|| pipeline::segment_names(&model, profile.as_ref())),
        soft_top: a.soft_top,
        pseudonymize,
    };
    let meta = super::provenance("assign", Some(&model), cfg.pseudonymize.is_some());
    let mut sink = ParquetOutput::pending(out, 1 << 20, meta)?;
    let res = pipeline::assign(&model, &ds, &cfg, backend.as_ref(), &mut sink)?;
    sink.commit()?;
    log(format!(
        "assigned {} rows to {} segments in {:.2}s ({} left out); wrote {}",
        res.n_rows,
        model.k,
        res.assign_seconds,
        res.rows_dropped,
        a.out.display()
    ));
    if a.write.json {
        super::print_json(&serde_json::json!({
            "command": "assign",
            "n_rows": res.n_rows,
            "rows_dropped": res.rows_dropped,
            "k": model.k,
            "segment_counts": res.segment_counts,
            "assign_seconds": res.assign_seconds,
            "rows_per_second": res.n_rows as f64 / res.assign_seconds.max(1e-9),
            "model_fingerprint": model.fingerprint(),
            "backend": backend.name(),
            "out": a.out,
        }))?;
    }
    Ok(())
}
