//! Fairness audit of a segmentation: for each protected attribute, each group's share
//! of every segment against its share of the population, and the disparate-impact
//! ratio of the four-fifths rule (a segment "selects" its members: a group's selection
//! rate is the share of the group that lands in the segment; the ratio is that rate
//! over the highest group's rate), flagged where it falls under 0.8.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The four-fifths rule.
pub const FOUR_FIFTHS: f64 = 0.8;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupInSegment {
    pub group: String,
    pub members: u64,
    pub share_of_segment: f64,
    pub share_of_population: f64,
    pub selection_rate: f64,
    pub disparate_impact: f64,
    pub flagged: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentAudit {
    pub segment: u32,
    pub size: u64,
    pub groups: Vec<GroupInSegment>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeAudit {
    pub column: String,
    /// Group → rows in the population.
    pub population: BTreeMap<String, u64>,
    pub segments: Vec<SegmentAudit>,
    pub flags: usize,
}

pub const AUDIT_FORMAT: &str = "microseg-audit";

/// Groups above this count suggest the protected column is an identifier or a number,
/// not a group label: the audit says so.
pub const MANY_GROUPS: usize = 100;

/// The whole audit: how the two files joined, and one entry per protected attribute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditReport {
    /// "microseg-audit".
    pub format: String,
    pub format_version: u32,
    /// The model the assignments came from (from their Parquet metadata), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_fingerprint: Option<String>,
    /// Rows of the input that found their id in the assignments.
    pub joined_rows: u64,
    /// Rows of the input whose id has no segment (or is null).
    pub unmatched_input_rows: u64,
    /// Assignment rows whose id no input row has.
    pub unmatched_segment_rows: u64,
    /// Ids that appear more than once in the assignments (the first row counts).
    pub duplicate_segment_ids: u64,
    /// Ids that appear more than once in the input (each row counts).
    pub duplicate_input_ids: u64,
    pub warnings: Vec<String>,
    pub attributes: Vec<AttributeAudit>,
}

/// Counts (segment, group) pairs for one protected attribute.
#[derive(Debug, Default)]
pub struct AuditBuilder {
    counts: BTreeMap<u32, BTreeMap<String, u64>>,
    population: BTreeMap<String, u64>,
}

impl AuditBuilder {
    pub fn add(&mut self, segment: u32, group: &str) {
        *self.counts.entry(segment).or_default().entry(group.to_string()).or_insert(0) += 1;
        *self.population.entry(group.to_string()).or_insert(0) += 1;
    }

    pub fn finish(self, column: &str) -> AttributeAudit {
        let total: u64 = self.population.values().sum();
        let mut flags = 0;
        let segments = self
            .counts
            .iter()
            .map(|(&segment, groups)| {
                let size: u64 = groups.values().sum();
                let rates: BTreeMap<&String, f64> =
                    self.population.iter().map(|(g, n)| (g, *groups.get(g).unwrap_or(&0) as f64 / *n as f64)).collect();
                let best = rates.values().cloned().fold(0.0, f64::max);
                let groups = self
                    .population
                    .iter()
                    .map(|(g, n)| {
                        let members = *groups.get(g).unwrap_or(&0);
                        let rate = rates[g];
                        let di = if best > 0.0 { rate / best } else { 1.0 };
                        let flagged = di < FOUR_FIFTHS;
                        flags += flagged as usize;
                        GroupInSegment {
                            group: g.clone(),
                            members,
                            share_of_segment: members as f64 / size.max(1) as f64,
                            share_of_population: *n as f64 / total.max(1) as f64,
                            selection_rate: rate,
                            disparate_impact: di,
                            flagged,
                        }
                    })
                    .collect();
                SegmentAudit { segment, size, groups }
            })
            .collect();
        AttributeAudit { column: column.to_string(), population: self.population, segments, flags }
    }
}
