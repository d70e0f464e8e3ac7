//! The fairness audit job: assignments joined to the protected columns on the id.

use std::collections::HashMap;

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};

use crate::error::{Error, Result};
use crate::io::Dataset;
use crate::model::Model;
use crate::segments::audit::{AuditBuilder, AuditReport};

fn keys(a: &dyn Array) -> Result<Vec<Option<String>>> {
    let s = cast(a, &DataType::Utf8).map_err(|e| Error::Data(format!("cannot read as text: {e}")))?;
    let s = s.as_string::<i32>();
    Ok((0..s.len()).map(|i| (!s.is_null(i)).then(|| s.value(i).to_string())).collect())
}

/// The model fingerprint a Parquet output of ours carries in its metadata.
pub fn fingerprint_of(ds: &Dataset) -> Option<String> {
    ds.schema.metadata().get("microseg.model_fingerprint").cloned()
}

/// What an audit joins and checks.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Id column in both tables.
    pub id_col: String,
    /// Protected attributes (never clustering features).
    pub protected: Vec<String>,
}

/// Fairness audit: join the assignments (`segments`: an id column and `segment`) to the
/// table holding the protected columns on the id, then per attribute the four-fifths
/// rule per segment and group. `model`, when given, must be the one the assignments
/// came from, and none of its features may be a protected column.
pub fn audit(segments: &Dataset, input: &Dataset, cfg: &AuditConfig, model: Option<&Model>) -> Result<AuditReport> {
    let a = cfg;
    let seg_ds = segments;
    let seg_fp = fingerprint_of(seg_ds);
    if let Some(model) = model {
        if let Some(fp) = &seg_fp
            && *fp != model.fingerprint()
        {
            return Err(Error::input(
                &seg_ds.files[0],
                format!(
                    "these assignments were made with another model (fingerprint {} against the model's {}); \
                     assign again with that model or pass the model they came from",
                    crate::segments::profile::short(fp),
                    crate::segments::profile::short(&model.fingerprint())
                ),
            ));
        }
        let used: Vec<&String> =
            a.protected.iter().filter(|p| model.feature_columns.iter().any(|c| &c.column == *p)).collect();
        if !used.is_empty() {
            return Err(Error::Usage(format!(
                "protected column(s) {} were clustering features of the model; refit without them (--exclude) before auditing",
                used.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let cols = vec![a.id_col.clone(), "segment".to_string()];
    let seg_id_type = seg_ds.column_type(&a.id_col)?.clone();
    let mut segment_of: HashMap<String, (u32, bool)> = HashMap::new();
    let mut duplicate_segment_ids = 0u64;
    for sb in seg_ds.batches(&cols)? {
        let sb = sb?;
        let ids = keys(sb.batch.column(0).as_ref())
            .map_err(|e| Error::input(sb.path, format!("column '{}': {e}", a.id_col)))?;
        let seg = cast(sb.batch.column(1), &DataType::Int64)
            .map_err(|e| Error::input(sb.path, format!("column 'segment': {e}")))?;
        let seg = seg.as_primitive::<Int64Type>();
        for (i, id) in ids.into_iter().enumerate() {
            let Some(id) = id else { continue };
            if seg.is_null(i) || seg.value(i) < 0 || seg.value(i) > u32::MAX as i64 {
                return Err(Error::input(
                    sb.path,
                    format!("column 'segment' holds {} at row {i}; segment ids are integers from 0", seg.value(i)),
                ));
            }
            match segment_of.entry(id) {
                std::collections::hash_map::Entry::Occupied(_) => duplicate_segment_ids += 1,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert((seg.value(i) as u32, false));
                }
            }
        }
    }
    let ds = input;
    let input_id_type = ds.column_type(&a.id_col)?.clone();
    let mut names = vec![a.id_col.clone()];
    names.extend(a.protected.iter().cloned());
    let mut builders: Vec<AuditBuilder> = a.protected.iter().map(|_| AuditBuilder::default()).collect();
    let (mut unmatched, mut joined, mut duplicate_input_ids) = (0u64, 0u64, 0u64);
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
            let Some(entry) = id.as_ref().and_then(|id| segment_of.get_mut(id)) else {
                unmatched += 1;
                continue;
            };
            if entry.1 {
                duplicate_input_ids += 1;
            }
            entry.1 = true;
            joined += 1;
            for (p, b) in builders.iter_mut().enumerate() {
                b.add(entry.0, groups[p][i].as_deref().unwrap_or("(missing)"));
            }
        }
    }
    let unmatched_segment_rows = segment_of.values().filter(|(_, seen)| !seen).count() as u64;
    if joined == 0 {
        return Err(Error::input(
            &ds.files[0],
            format!(
                "no row joins the assignments in {} on '{}' ({} input rows, {} assigned ids; the id column is {} \
                 here and {} there): check that both files hold the same subscribers and id format (and \
                 --id-col; pseudonymised ids do not join raw ones)",
                seg_ds.display_name(),
                a.id_col,
                unmatched,
                segment_of.len(),
                input_id_type,
                seg_id_type
            ),
        ));
    }
    let mut warnings = Vec::new();
    if unmatched > 0 {
        warnings.push(format!("{unmatched} rows of {} have no segment and are left out", ds.display_name()));
    }
    if unmatched_segment_rows > 0 {
        warnings.push(format!("{unmatched_segment_rows} assigned ids have no row in {}", ds.display_name()));
    }
    if duplicate_segment_ids > 0 {
        warnings.push(format!(
            "{duplicate_segment_ids} ids appear more than once in {} (the first row counts)",
            seg_ds.display_name()
        ));
    }
    if duplicate_input_ids > 0 {
        warnings.push(format!("{duplicate_input_ids} ids appear more than once in {}", ds.display_name()));
    }
    let attributes: Vec<_> = builders.into_iter().zip(&a.protected).map(|(b, c)| b.finish(c)).collect();
    for r in &attributes {
        if r.population.len() > crate::segments::audit::MANY_GROUPS {
            warnings.push(format!(
                "protected column '{}' has {} distinct values: is it a group label? (an id or a number \
                 gives meaningless groups; bucket it first)",
                r.column,
                r.population.len()
            ));
        }
    }
    for w in &warnings {
        log::warn!("{w}");
    }
    for r in &attributes {
        log::info!("{}: {} segment×group pairs under the four-fifths rule", r.column, r.flags);
    }
    Ok(AuditReport {
        format: crate::segments::audit::AUDIT_FORMAT.into(),
        format_version: 1,
        model_fingerprint: seg_fp,
        joined_rows: joined,
        unmatched_input_rows: unmatched,
        unmatched_segment_rows,
        duplicate_segment_ids,
        duplicate_input_ids,
        warnings,
        attributes,
    })
}
