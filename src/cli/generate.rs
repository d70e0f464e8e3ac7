//! `microseg generate`: a synthetic subscriber table.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use crate::error::{Error, Result};
use crate::io::output::{AtomicOutput, ParquetOutput};
use crate::synth::{SynthSpec, generate, schema};

#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    /// Rows (subscribers) to write.
    #[arg(long)]
    rows: u64,
    /// Feature columns (named behavioural columns first, then score_NN).
    #[arg(long)]
    dims: usize,
    /// Ground-truth segments (written as `true_segment`, never a default feature).
    #[arg(long)]
    clusters: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Rows per Parquet row group.
    #[arg(long, default_value_t = 131_072)]
    row_group_rows: usize,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    pub(crate) write: super::WriteArgs,
}

/// Columns per generated table: far beyond any subscriber table, small enough that the
/// schema itself stays a few MiB.
const MAX_DIMS: usize = 65_536;

pub(crate) fn run_generate(a: GenerateArgs) -> Result<()> {
    let t0 = Instant::now();
    if a.rows == 0 || a.dims == 0 || a.clusters == 0 || a.row_group_rows == 0 {
        return Err(Error::Usage("--rows, --dims, --clusters and --row-group-rows must all be at least 1".into()));
    }
    if a.dims > MAX_DIMS {
        return Err(Error::Usage(format!("--dims {} is more than the {MAX_DIMS} columns generate writes", a.dims)));
    }
    crate::io::output::check_paths(&[], &[&a.out], a.write.json)?;
    let out = AtomicOutput::create(&a.out, a.write.force)?;
    let spec =
        SynthSpec { rows: a.rows, dims: a.dims, clusters: a.clusters, seed: a.seed, row_group_rows: a.row_group_rows };
    let meta = super::provenance("generate", None, false);
    let pq = ParquetOutput::with_metadata(out, schema(a.dims), spec.row_group_rows, meta)?;
    generate(&spec, pq)?;
    let secs = t0.elapsed().as_secs_f64();
    super::log(format!(
        "wrote {} rows × {} features ({} segments) to {} in {secs:.1}s",
        a.rows,
        a.dims,
        a.clusters,
        a.out.display()
    ));
    if a.write.json {
        super::print_json(&serde_json::json!({
            "command": "generate", "n_rows": a.rows, "dims": a.dims, "clusters": a.clusters,
            "seed": a.seed, "seconds": secs, "out": a.out,
        }))?;
    }
    Ok(())
}
