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

#[derive(Debug, Args)]
pub(crate) struct GenerateEventsArgs {
    /// Subscribers in the log.
    #[arg(long)]
    subscribers: u64,
    /// Days the log spans (ending on --last-day).
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// The log's last day.
    #[arg(long, default_value = "2026-06-30")]
    last_day: String,
    /// Unopened sends per subscriber per week (on top of one send per engagement).
    #[arg(long, default_value_t = 1.0)]
    sends_per_week: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The event log (Parquet, time order).
    #[arg(long)]
    out: PathBuf,
    /// One row per subscriber with the planted truth (zone, hour, cadence, fatigue,
    /// favourite category, churned).
    #[arg(long)]
    truth: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) write: super::WriteArgs,
}

pub(crate) fn run_generate_events(a: GenerateEventsArgs) -> Result<()> {
    use crate::synth::events::{EventSynthSpec, event_schema, generate_events, truth_schema};
    let t0 = Instant::now();
    let day = chrono::NaiveDate::parse_from_str(&a.last_day, "%Y-%m-%d")
        .map_err(|_| Error::Usage(format!("--last-day '{}' is not a date (2026-06-30)", a.last_day)))?;
    if !(a.sends_per_week.is_finite() && (0.0..=7.0).contains(&a.sends_per_week)) {
        return Err(Error::Usage("--sends-per-week must be between 0 and 7".into()));
    }
    let mut outs = vec![a.out.as_path()];
    if let Some(t) = &a.truth {
        outs.push(t);
    }
    crate::io::output::check_paths(&[], &outs, a.write.json)?;
    let spec = EventSynthSpec {
        subscribers: a.subscribers,
        days: a.days,
        last_day: day.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp().div_euclid(86_400),
        seed: a.seed,
        sends_per_week: a.sends_per_week,
        ..Default::default()
    };
    let meta = super::provenance("generate-events", None, false);
    let ev = ParquetOutput::with_metadata(AtomicOutput::create(&a.out, a.write.force)?, event_schema(), 1 << 20, meta)?;
    let truth = match &a.truth {
        Some(p) => Some(ParquetOutput::new(AtomicOutput::create(p, a.write.force)?, truth_schema(), 1 << 16)?),
        None => None,
    };
    let n = generate_events(&spec, ev, truth)?;
    let secs = t0.elapsed().as_secs_f64();
    super::log(format!("wrote {n} events of {} subscribers to {} in {secs:.1}s", a.subscribers, a.out.display()));
    if a.write.json {
        super::print_json(&serde_json::json!({
            "command": "generate-events", "events": n, "subscribers": a.subscribers, "seconds": secs, "out": a.out,
        }))?;
    }
    Ok(())
}
