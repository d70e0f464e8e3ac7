//! Segments people can use: profiles and names, drift against the training baseline,
//! stable ids across retrains (lineage), and fairness audits. Everything here works on
//! statistics gathered from streamed batches; nothing reads files or runs clusters.

pub mod audit;
pub mod drift;
pub mod explain;
pub mod lineage;
pub mod privacy;
pub mod profile;
pub mod report;

use serde::Deserialize;

pub use crate::model::baseline::{Baseline, Histogram, MAX_CATEGORIES, margin, quantile_sorted};

/// Deserialise a number that may have been written as `null` (serde_json writes NaN,
/// such as the quantiles of an empty segment, as `null`) back to NaN.
pub(crate) fn nullable_f64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

pub(crate) fn version_one() -> u32 {
    1
}

/// Shares below this count as this (PSI is undefined for empty bins).
pub const PSI_FLOOR: f64 = 1e-4;

/// Population stability index Σ (a − e)·ln(a / e) between expected and actual shares.
pub fn psi(expected: &[f64], actual: &[f64]) -> f64 {
    expected
        .iter()
        .zip(actual)
        .map(|(e, a)| {
            let (e, a) = (e.max(PSI_FLOOR), a.max(PSI_FLOOR));
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// Column names that look like protected or sensitive attributes (matched as words
/// of the lower-cased name).
const SENSITIVE: &[&str] = &[
    "gender",
    "sex",
    "race",
    "ethnic",
    "ethnicity",
    "religion",
    "religious",
    "disability",
    "disabled",
    "health",
    "pregnan",
    "orientation",
    "nationality",
    "citizenship",
    "marital",
    "birth",
    "dob",
    "age",
    "ssn",
    "caste",
];

pub fn looks_sensitive(column: &str) -> bool {
    let c = column.to_lowercase();
    c.split(|ch: char| !ch.is_ascii_alphanumeric())
        .any(|w| SENSITIVE.iter().any(|s| w == *s || (s.len() > 4 && w.starts_with(s))))
}
