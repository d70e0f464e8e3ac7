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
