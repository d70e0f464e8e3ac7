//! `microseg profile`, `microseg drift` and `microseg audit`: what a marketer reads
//! about the segments, and the checks a batch job runs before trusting them again.

use std::collections::HashMap;
use std::path::PathBuf;

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, UInt32Type};
use clap::Args;

use super::assign::{id_column, stream_assigned};
use super::backend::BackendArgs;
use super::{TableArgs, log};
use crate::error::{Error, Result};
use crate::io::Dataset;
use crate::io::output::{AtomicOutput, write_json};
use crate::model::Model;
use crate::segments::audit::AuditBuilder;
use crate::segments::drift::{DriftBuilder, Thresholds};
use crate::segments::profile::{Profile, ProfileBuilder};

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
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

/// Profile the input against a model (shared with `segment`).
pub(crate) fn profile_of(
    model: &Model,
    ds: &Dataset,
    id_named: Option<&str>,
    outcomes: &[String],
    backend: &dyn crate::backend::Backend,
) -> Result<Profile> {
    for o in outcomes {
        if model.feature_columns.iter().any(|c| &c.column == o) {
            return Err(Error::Usage(format!("--outcomes names '{o}', which is a clustering feature")));
        }
    }
    let id = id_column(model, ds, id_named)?;
    let mut b = ProfileBuilder::new(model, outcomes);
    stream_assigned(model, ds, id.as_deref(), outcomes, backend, |batch| {
        let labels: Vec<u32> = batch.nearest.iter().map(|n| n.label).collect();
        b.add(batch.raw, &labels, &batch.extra)
    })?;
    Ok(b.finish())
}

pub(crate) fn run_profile(a: ProfileArgs) -> Result<()> {
    let model = Model::load(&a.model)?;
    let ds = Dataset::open(&a.inputs)?;
    let out = AtomicOutput::create(&a.out, a.force)?;
    let backend = super::backend::open(&a.backend)?;
    let p = profile_of(&model, &ds, a.table.id_col.as_deref(), &a.outcomes, backend.as_ref())?;
    write_json(out, &p)?;
    for s in &p.segments {
        log(format!("segment {}: {} ({:.1} %)", s.id, s.name, 100.0 * s.share));
    }
    if a.json {
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
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

/// Returns the verdict's exit code (0 stable, 10 watch, 11 retrain).
pub(crate) fn run_drift(a: DriftArgs) -> Result<u8> {
    if !(a.watch > 0.0 && a.retrain >= a.watch) {
        return Err(Error::Usage("--watch must be > 0 and --retrain >= --watch".into()));
    }
    let model = Model::load(&a.model)?;
    let ds = Dataset::open(&a.inputs)?;
    let out = a.out.as_ref().map(|p| AtomicOutput::create(p, a.force)).transpose()?;
    let backend = super::backend::open(&a.backend)?;
    let mut b = DriftBuilder::new(&model)?;
    stream_assigned(&model, &ds, None, &[], backend.as_ref(), |batch| {
        b.add(batch.model_space, batch.nearest);
        Ok(())
    })?;
    let r = b.finish(&model, Thresholds { watch: a.watch, retrain: a.retrain });
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
    if a.json {
        super::print_json(&serde_json::json!({
            "command": "drift", "n_rows": r.n_rows, "verdict": r.verdict, "exit_code": r.verdict.exit_code(),
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
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

fn keys(a: &dyn Array) -> Result<Vec<Option<String>>> {
    let s = cast(a, &DataType::Utf8).map_err(|e| Error::Data(format!("cannot read as text: {e}")))?;
    let s = s.as_string::<i32>();
    Ok((0..s.len()).map(|i| (!s.is_null(i)).then(|| s.value(i).to_string())).collect())
}

pub(crate) fn run_audit(a: AuditArgs) -> Result<()> {
    if let Some(m) = &a.model {
        let model = Model::load(m)?;
        let used: Vec<&String> =
            a.protected.iter().filter(|p| model.feature_columns.iter().any(|c| &c.column == *p)).collect();
        if !used.is_empty() {
            return Err(Error::Usage(format!(
                "protected column(s) {} were clustering features of {}; refit without them (--exclude) before auditing",
                used.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                m.display()
            )));
        }
    }
    let out = a.out.as_ref().map(|p| AtomicOutput::create(p, a.force)).transpose()?;
    let seg_ds = Dataset::open(std::slice::from_ref(&a.segments))?;
    let cols = vec![a.id_col.clone(), "segment".to_string()];
    let mut segment_of: HashMap<String, u32> = HashMap::new();
    for sb in seg_ds.batches(&cols)? {
        let sb = sb?;
        let ids = keys(sb.batch.column(0).as_ref())
            .map_err(|e| Error::input(sb.path, format!("column '{}': {e}", a.id_col)))?;
        let seg = cast(sb.batch.column(1), &DataType::UInt32)
            .map_err(|e| Error::input(sb.path, format!("column 'segment': {e}")))?;
        let seg = seg.as_primitive::<UInt32Type>();
        for (i, id) in ids.into_iter().enumerate() {
            if let Some(id) = id {
                segment_of.insert(id, seg.value(i));
            }
        }
    }
    let ds = Dataset::open(std::slice::from_ref(&a.input))?;
    let mut names = vec![a.id_col.clone()];
    names.extend(a.protected.iter().cloned());
    let mut builders: Vec<AuditBuilder> = a.protected.iter().map(|_| AuditBuilder::default()).collect();
    let mut unmatched = 0u64;
    for sb in ds.batches(&names)? {
        let sb = sb?;
        let ids = keys(sb.batch.column(0).as_ref())
            .map_err(|e| Error::input(sb.path, format!("column '{}': {e}", a.id_col)))?;
        let groups: Vec<Vec<Option<String>>> = (0..a.protected.len())
            .map(|p| {
                keys(sb.batch.column(p + 1).as_ref())
                    .map_err(|e| Error::input(sb.path, format!("column '{}': {e}", a.protected[p])))
            })
            .collect::<Result<_>>()?;
        for (i, id) in ids.iter().enumerate() {
            let Some(seg) = id.as_ref().and_then(|id| segment_of.get(id)) else {
                unmatched += 1;
                continue;
            };
            for (p, b) in builders.iter_mut().enumerate() {
                b.add(*seg, groups[p][i].as_deref().unwrap_or("(missing)"));
            }
        }
    }
    if unmatched > 0 {
        log(format!(
            "{unmatched} rows of {} have no segment in {} and are left out",
            a.input.display(),
            a.segments.display()
        ));
    }
    let report: Vec<_> = builders.into_iter().zip(&a.protected).map(|(b, c)| b.finish(c)).collect();
    for r in &report {
        log(format!("{}: {} segment×group pairs under the four-fifths rule", r.column, r.flags));
    }
    if let Some(o) = out {
        write_json(o, &report)?;
    }
    if a.json {
        super::print_json(&serde_json::json!({
            "command": "audit", "unmatched_rows": unmatched,
            "flags": report.iter().map(|r| (r.column.clone(), r.flags)).collect::<Vec<_>>(),
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
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    force: bool,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::input(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| Error::input(path, format!("not a {what} ({e})")))
}

pub(crate) fn run_report(a: ReportArgs) -> Result<()> {
    let out = AtomicOutput::create(&a.out, a.force)?;
    let model = Model::load(&a.model)?;
    let profile: Profile = read_json(&a.profile, "microseg profile")?;
    let drift: Option<crate::segments::drift::DriftReport> =
        a.drift.as_deref().map(|p| read_json(p, "drift report")).transpose()?;
    let audit: Option<Vec<crate::segments::audit::AttributeAudit>> =
        a.audit.as_deref().map(|p| read_json(p, "audit report")).transpose()?;
    write_html(out, &crate::segments::report::render(&model, &profile, drift.as_ref(), audit.as_deref()))?;
    log(format!("wrote {}", a.out.display()));
    Ok(())
}

pub(crate) fn write_html(mut out: AtomicOutput, html: &str) -> Result<()> {
    out.write_all(html.as_bytes())?;
    out.commit()
}
