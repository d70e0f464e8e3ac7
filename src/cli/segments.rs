//! `microseg profile`, `microseg drift` and `microseg audit`: what a marketer reads
//! about the segments, and the checks a batch job runs before trusting them again.

use std::path::PathBuf;

use clap::Args;

use super::backend::BackendArgs;
use super::{TableArgs, log};
use crate::error::{Error, Result};
use crate::io::Dataset;
use crate::io::output::{AtomicOutput, write_json};
use crate::model::Model;
use crate::pipeline;
use crate::segments::audit::AuditReport;
use crate::segments::drift::Thresholds;
use crate::segments::profile::Profile;

#[derive(Debug, Args)]
pub(crate) struct ProfileArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Columns that are not features to summarise per segment (rates, means, the best
    /// send hour for an hour-of-day column, shares of a categorical column).
    #[arg(long, value_delimiter = ',')]
    outcomes: Vec<String>,
    #[command(flatten)]
    table: TableArgs,
    #[command(flatten)]
    backend: BackendArgs,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    pub(crate) write: super::WriteArgs,
}

pub(crate) fn run_profile(a: ProfileArgs) -> Result<()> {
    let mut inputs: Vec<&std::path::Path> = a.inputs.iter().map(|p| p.as_path()).collect();
    inputs.push(&a.model);
    crate::io::output::check_paths(&inputs, &[&a.out], a.write.json)?;
    let model = Model::load(&a.model)?;
    let ds = Dataset::open(&a.inputs)?;
    let out = AtomicOutput::create(&a.out, a.write.force)?;
    let backend = super::backend::open(&a.backend)?;
    let p = pipeline::profile(&model, &ds, a.table.id_col.as_deref(), &a.outcomes, backend.as_ref())?;
    write_json(out, &p)?;
    for s in &p.segments {
        log(format!("segment {}: {} ({})", s.id, s.name, crate::segments::report::pct(s.share)));
    }
    if a.write.json {
        super::print_json(&serde_json::json!({
            "command": "profile", "n_rows": p.n_rows, "k": p.k, "out": a.out,
            "names": p.segments.iter().map(|s| (s.id, s.name.clone())).collect::<Vec<_>>(),
        }))?;
    }
    Ok(())
}

#[derive(Debug, Args)]
pub(crate) struct DriftArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// PSI from which the verdict is "watch" (exit code 10).
    #[arg(long, default_value_t = 0.1)]
    watch: f64,
    /// PSI from which the verdict is "retrain" (exit code 11).
    #[arg(long, default_value_t = 0.25)]
    retrain: f64,
    #[command(flatten)]
    backend: BackendArgs,
    /// Also write the full report (JSON) here.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) write: super::WriteArgs,
}

/// Returns the verdict's exit code (0 stable, 10 watch, 11 retrain).
pub(crate) fn run_drift(a: DriftArgs) -> Result<u8> {
    if !(a.watch > 0.0 && a.retrain >= a.watch && a.retrain.is_finite()) {
        return Err(Error::Usage("--watch must be > 0 and --retrain >= --watch".into()));
    }
    let mut inputs: Vec<&std::path::Path> = a.inputs.iter().map(|p| p.as_path()).collect();
    inputs.push(&a.model);
    let outputs: Vec<&std::path::Path> = a.out.as_deref().into_iter().collect();
    crate::io::output::check_paths(&inputs, &outputs, a.write.json)?;
    let model = Model::load(&a.model)?;
    let ds = Dataset::open(&a.inputs)?;
    let out = a.out.as_ref().map(|p| AtomicOutput::create(p, a.write.force)).transpose()?;
    let backend = super::backend::open(&a.backend)?;
    let r = pipeline::drift(&model, &ds, Thresholds { watch: a.watch, retrain: a.retrain }, backend.as_ref())?;
    if let Some(o) = out {
        write_json(o, &r)?;
    }
    log(format!(
        "verdict {:?}: segment PSI {:.3}, worst feature {} ({:.3}), mean distance {:.3} (training {:.3})",
        r.verdict,
        r.segment_psi,
        r.feature_psi.first().map_or("-", |f| f.feature.as_str()),
        r.feature_psi.first().map_or(0.0, |f| f.psi),
        r.mean_distance,
        r.training_mean_distance
    ));
    for reason in &r.reasons {
        log(format!("  {reason}"));
    }
    if a.write.json {
        super::print_json(&serde_json::json!({
            "command": "drift", "n_rows": r.n_rows, "min_rows": r.min_rows, "verdict": r.verdict,
            "model_fingerprint": r.model_fingerprint, "exit_code": r.verdict.exit_code(),
            "segment_psi": r.segment_psi, "max_feature_psi": r.feature_psi.first().map(|f| f.psi),
            "mean_distance": r.mean_distance, "training_mean_distance": r.training_mean_distance,
            "low_margin_share": r.low_margin_share, "reasons": r.reasons,
        }))?;
    }
    Ok(r.verdict.exit_code())
}

#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// Assignments written by `assign` or `segment` (an id column and `segment`).
    #[arg(long)]
    segments: PathBuf,
    /// The table holding the protected columns (joined on the id column).
    #[arg(long)]
    input: PathBuf,
    /// Protected attributes (never clustering features).
    #[arg(long, value_delimiter = ',', required = true)]
    protected: Vec<String>,
    /// Id column in both files (default: subscriber_id).
    #[arg(long, default_value = "subscriber_id")]
    id_col: String,
    /// The model the segments came from: refuse if a protected column was a feature.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) write: super::WriteArgs,
}

pub(crate) fn run_audit(a: AuditArgs) -> Result<()> {
    let mut inputs = vec![a.segments.as_path(), a.input.as_path()];
    inputs.extend(a.model.as_deref());
    let outputs: Vec<&std::path::Path> = a.out.as_deref().into_iter().collect();
    crate::io::output::check_paths(&inputs, &outputs, a.write.json)?;
    let model = a.model.as_deref().map(Model::load).transpose()?;
    let out = a.out.as_ref().map(|p| AtomicOutput::create(p, a.write.force)).transpose()?;
    let segments = Dataset::open(std::slice::from_ref(&a.segments))?;
    let input = Dataset::open(std::slice::from_ref(&a.input))?;
    let cfg = pipeline::AuditConfig { id_col: a.id_col.clone(), protected: a.protected.clone() };
    let report = pipeline::audit(&segments, &input, &cfg, model.as_ref())?;
    if let Some(o) = out {
        write_json(o, &report)?;
    }
    if a.write.json {
        super::print_json(&serde_json::json!({
            "command": "audit", "joined_rows": report.joined_rows, "unmatched_input_rows": report.unmatched_input_rows,
            "unmatched_segment_rows": report.unmatched_segment_rows,
            "duplicate_segment_ids": report.duplicate_segment_ids, "duplicate_input_ids": report.duplicate_input_ids,
            "flags": report.attributes.iter().map(|r| (r.column.clone(), r.flags)).collect::<Vec<_>>(),
            "report": report,
        }))?;
    }
    Ok(())
}

#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    #[arg(long)]
    model: PathBuf,
    /// A profile written by `microseg profile` (or `segment`).
    #[arg(long)]
    profile: PathBuf,
    /// A drift report (`microseg drift --out`), to include.
    #[arg(long)]
    drift: Option<PathBuf>,
    /// An audit report (`microseg audit --out`), to include.
    #[arg(long)]
    audit: Option<PathBuf>,
    /// A traits model (`microseg features --traits-out`): the purchase forecast and its
    /// holdout check, to include.
    #[arg(long)]
    traits: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    force: bool,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path, what: &str) -> Result<T> {
    let text = crate::io::read_text(path, what)?;
    serde_json::from_str(&text).map_err(|e| Error::input(path, format!("not a {what} ({e})")))
}

/// A profile for `model`, refused when it was made with another model.
pub(crate) fn read_profile(path: &std::path::Path, model: &Model, model_path: &std::path::Path) -> Result<Profile> {
    let p: Profile = read_json(path, "microseg profile")?;
    p.check_model(model).map_err(|m| {
        Error::input(path, format!("this profile does not belong to the model {}: {m}", model_path.display()))
    })?;
    Ok(p)
}

/// An audit report: the current object, or the bare list older versions wrote.
fn read_audit(path: &std::path::Path) -> Result<AuditReport> {
    let v: serde_json::Value = read_json(path, "audit report")?;
    if v.is_array() {
        let attributes =
            serde_json::from_value(v).map_err(|e| Error::input(path, format!("not an audit report ({e})")))?;
        return Ok(AuditReport {
            format: crate::segments::audit::AUDIT_FORMAT.into(),
            format_version: 1,
            model_fingerprint: None,
            joined_rows: 0,
            unmatched_input_rows: 0,
            unmatched_segment_rows: 0,
            duplicate_segment_ids: 0,
            duplicate_input_ids: 0,
            warnings: Vec::new(),
            attributes,
        });
    }
    let r: AuditReport =
        serde_json::from_value(v).map_err(|e| Error::input(path, format!("not an audit report ({e})")))?;
    if r.format != crate::segments::audit::AUDIT_FORMAT {
        return Err(Error::input(path, format!("not an audit report (format '{}')", r.format)));
    }
    Ok(r)
}

/// Refuse a report of another model (when the report names its model).
fn check_fingerprint(path: &std::path::Path, what: &str, fp: Option<&String>, model: &Model) -> Result<()> {
    match fp {
        Some(fp) if *fp != model.fingerprint() => Err(Error::input(
            path,
            format!(
                "this {what} was made with another model (fingerprint {} against the model's {}); \
                 run it again with this model",
                crate::segments::profile::short(fp),
                crate::segments::profile::short(&model.fingerprint())
            ),
        )),
        _ => Ok(()),
    }
}

pub(crate) fn run_report(a: ReportArgs) -> Result<()> {
    let mut inputs = vec![a.model.as_path(), a.profile.as_path()];
    inputs.extend(a.drift.as_deref());
    inputs.extend(a.audit.as_deref());
    inputs.extend(a.traits.as_deref());
    crate::io::output::check_paths(&inputs, &[&a.out], false)?;
    let out = AtomicOutput::create(&a.out, a.force)?;
    let model = Model::load(&a.model)?;
    let profile = read_profile(&a.profile, &model, &a.model)?;
    let drift: Option<crate::segments::drift::DriftReport> =
        a.drift.as_deref().map(|p| read_json(p, "drift report")).transpose()?;
    if let (Some(p), Some(d)) = (&a.drift, &drift) {
        if d.format != crate::segments::drift::DRIFT_FORMAT {
            return Err(Error::input(p, format!("not a drift report (format '{}')", d.format)));
        }
        check_fingerprint(p, "drift report", d.model_fingerprint.as_ref(), &model)?;
    }
    let audit = a.audit.as_deref().map(read_audit).transpose()?;
    if let (Some(p), Some(r)) = (&a.audit, &audit) {
        check_fingerprint(p, "audit report", r.model_fingerprint.as_ref(), &model)?;
    }
    let traits: Option<crate::events::Traits> =
        a.traits.as_deref().map(|p| read_json(p, "traits model")).transpose()?;
    if let (Some(p), Some(t)) = (&a.traits, &traits)
        && t.format != crate::events::TRAITS_FORMAT
    {
        return Err(Error::input(p, format!("not a traits model (format '{}')", t.format)));
    }
    let html = crate::segments::report::render(
        &model,
        &profile,
        drift.as_ref(),
        audit.as_ref().map(|r| &r.attributes[..]),
        traits.as_ref(),
    );
    write_html(out, &html)?;
    log(format!("wrote {}", a.out.display()));
    Ok(())
}

pub(crate) fn write_html(mut out: AtomicOutput, html: &str) -> Result<()> {
    out.write_all(html.as_bytes())?;
    out.commit()
}
