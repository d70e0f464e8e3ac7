//! `microseg update`: fold new rows into a model (segment ids and names kept) and say
//! what moved.

use std::path::PathBuf;

use clap::Args;

use super::log;
use crate::error::{Error, Result};
use crate::io::Dataset;
use crate::io::output::{AtomicOutput, write_json};
use crate::model::Model;
use crate::pipeline::{self, Forgetting, UpdateConfig};

#[derive(Debug, Args)]
pub(crate) struct UpdateArgs {
    /// The model to update (JSON); it is read, never changed.
    #[arg(long)]
    model: PathBuf,
    /// Parquet files or directories of them: the new rows.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Where to write the updated model (JSON).
    #[arg(long)]
    out: PathBuf,
    /// Multiply the model's statistics by this factor before adding the new rows: 1 keeps
    /// all of the past (the default), 0.5 gives the past half its weight.
    #[arg(long, conflicts_with_all = ["half_life_rows", "half_life_days"])]
    decay: Option<f64>,
    /// The past weighs half after this many new rows (weighted rows with a weight column).
    #[arg(long, value_name = "ROWS", conflicts_with = "half_life_days")]
    half_life_rows: Option<f64>,
    /// The past weighs half after this many days: give --elapsed-days, or --as-of when
    /// the model's last update recorded its own.
    #[arg(long, value_name = "DAYS")]
    half_life_days: Option<f64>,
    /// Days since the data the model last saw (with --half-life-days).
    #[arg(long, value_name = "DAYS", requires = "half_life_days")]
    elapsed_days: Option<f64>,
    /// The date of the new data (2024-06-30 or an ISO 8601 time): recorded in the model,
    /// and with --half-life-days the days elapsed are counted from the last update's.
    #[arg(long, value_name = "TIME")]
    as_of: Option<String>,
    /// Lloyd steps on the new rows at most.
    #[arg(long, default_value_t = 10)]
    max_iter: usize,
    /// Report a segment whose root mean squared distance grew beyond this multiple of its
    /// value when the model was fitted.
    #[arg(long, default_value_t = 1.5)]
    max_growth: f64,
    /// Report a segment whose share fell below this [default: 0.25 / k].
    #[arg(long)]
    min_share: Option<f64>,
    /// Also write the full report of what moved (JSON) here.
    #[arg(long)]
    report: Option<PathBuf>,
    #[command(flatten)]
    backend: super::backend::BackendArgs,
    #[command(flatten)]
    pub(crate) write: super::WriteArgs,
}

pub(crate) fn run_update(a: UpdateArgs) -> Result<()> {
    let mut inputs: Vec<&std::path::Path> = a.inputs.iter().map(|p| p.as_path()).collect();
    inputs.push(&a.model);
    let mut outputs: Vec<&std::path::Path> = vec![&a.out];
    outputs.extend(a.report.as_deref());
    crate::io::output::check_paths(&inputs, &outputs, a.write.json)?;
    let model = Model::load(&a.model)?;
    let forgetting = match (a.decay, a.half_life_rows, a.half_life_days) {
        (Some(d), _, _) => Forgetting::Decay(d),
        (_, Some(h), _) => Forgetting::HalfLifeRows(h),
        (_, _, Some(h)) => {
            let elapsed = match (a.elapsed_days, a.as_of.as_deref()) {
                (Some(e), _) => e,
                (None, Some(t)) => pipeline::update::elapsed_days(&model, t)?.ok_or_else(|| {
                    Error::Usage(format!(
                        "--half-life-days needs the days elapsed: {} records no --as-of of an earlier \
                         update, so give --elapsed-days",
                        a.model.display()
                    ))
                })?,
                (None, None) => {
                    return Err(Error::Usage(
                        "--half-life-days needs --elapsed-days DAYS, or --as-of TIME after an update that \
                         recorded one"
                            .into(),
                    ));
                }
            };
            Forgetting::HalfLifeDays { half_life: h, elapsed }
        }
        _ => Forgetting::Decay(1.0),
    };
    if let Some(t) = &a.as_of {
        pipeline::update::elapsed_days(&model, t)?;
    }
    let cfg = UpdateConfig {
        forgetting,
        max_iter: a.max_iter,
        max_growth: a.max_growth,
        min_share: a.min_share,
        as_of: a.as_of.clone(),
    };
    let ds = Dataset::open(&a.inputs)?;
    let out = AtomicOutput::create(&a.out, a.write.force)?;
    let report_out = a.report.as_ref().map(|p| AtomicOutput::create(p, a.write.force)).transpose()?;
    let backend = super::backend::open(&a.backend)?;
    let (updated, r) = pipeline::update_model(&model, &ds, &cfg, backend.as_ref())?;
    // Outputs are written together: the report first, the model last.
    if let Some(o) = report_out {
        write_json(o, &r)?;
    }
    write_json(out, &updated)?;
    log(format!(
        "folded {} rows into {} segments (past kept ×{:.4}); {} iterations{}; new rows' mean squared \
         distance {:.4} -> {:.4}; largest centroid shift {:.4}; segment PSI of the new rows {:.3}",
        r.rows_used,
        updated.k,
        r.decay,
        r.iterations,
        if r.converged { "" } else { " (not converged: raise --max-iter)" },
        r.new_rows_mse_before,
        r.new_rows_mse_after,
        r.max_shift,
        r.segment_psi
    ));
    for c in r.segments.iter().filter(|c| !c.flags.is_empty()) {
        log(format!(
            "segment {}{}: {} (share {} -> {}, rms distance {:.3} -> {:.3}); refit to split or merge it",
            c.id,
            c.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default(),
            c.flags.join(", "),
            crate::segments::report::pct(c.share_before),
            crate::segments::report::pct(c.share_after),
            c.rms_before,
            c.rms_after
        ));
    }
    if a.write.json {
        super::print_json(&serde_json::json!({
            "command": "update", "out": a.out, "rows_used": r.rows_used, "rows_dropped": r.rows_dropped,
            "decay": r.decay, "iterations": r.iterations, "converged": r.converged,
            "new_rows_mse_before": r.new_rows_mse_before, "new_rows_mse_after": r.new_rows_mse_after,
            "max_shift": r.max_shift, "segment_psi": r.segment_psi, "flagged": r.flagged,
            "model_fingerprint": r.model_fingerprint,
        }))?;
    }
    Ok(())
}
