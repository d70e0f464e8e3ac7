//! Segment profiles: per segment and feature the mean and quantiles in input units
//! against the whole population, standardised differences, the features that most
//! set the segment apart, a short generated name, and outcome summaries (rates,
//! means, the best send hour, category shares) for columns that were not features.
//! Quantiles come from a seeded reservoir sample (exact up to its size, see
//! `segment_sample`); means and standardised differences use every row.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::quantile_sorted;
use crate::error::{Error, Result};

/// Rows kept per segment for quantiles (and for the population), at most; the samples
/// together stay under SAMPLE_BUDGET bytes (k = 256 segments of 32 features keep 8,192
/// rows each), so profiling 10⁷ rows does not hold a second copy of the data.
pub const SEGMENT_SAMPLE: usize = 50_000;
pub const POPULATION_SAMPLE: usize = 200_000;
const SAMPLE_BUDGET: usize = 256 << 20;
/// Standardised difference under which a feature does not name a segment.
const NAMING_THRESHOLD: f64 = 0.25;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSummary {
    pub name: String,
    #[serde(deserialize_with = "super::nullable_f64")]
    pub mean: f64,
    #[serde(deserialize_with = "super::nullable_f64")]
    pub std: f64,
    #[serde(deserialize_with = "super::nullable_f64")]
    pub p10: f64,
    #[serde(deserialize_with = "super::nullable_f64")]
    pub p25: f64,
    #[serde(deserialize_with = "super::nullable_f64")]
    pub median: f64,
    #[serde(deserialize_with = "super::nullable_f64")]
    pub p75: f64,
    #[serde(deserialize_with = "super::nullable_f64")]
    pub p90: f64,
    /// (segment mean − population mean) / population standard deviation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std_diff: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Distinction {
    pub feature: String,
    pub std_diff: f64,
    /// "high" or "low" against the population.
    pub direction: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutcomeSummary {
    /// Mean of a numeric column; `rate` when it only holds 0 and 1 (or booleans).
    Numeric {
        column: String,
        #[serde(deserialize_with = "super::nullable_f64")]
        mean: f64,
        rate: bool,
        count: u64,
    },
    /// An hour-of-day column: the mean and the hour most members have.
    Hour {
        column: String,
        #[serde(deserialize_with = "super::nullable_f64")]
        mean: f64,
        best_hour: u32,
        best_hour_share: f64,
        count: u64,
    },
    /// A categorical column: the most common categories and their shares.
    Categorical { column: String, top: Vec<(String, f64)>, count: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentProfile {
    pub id: u32,
    /// The model's name when the user set one, else the generated one.
    pub name: String,
    pub generated_name: String,
    pub size: u64,
    pub share: f64,
    pub features: Vec<FeatureSummary>,
    pub top_features: Vec<Distinction>,
    pub outcomes: Vec<OutcomeSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// "microseg-profile".
    pub format: String,
    #[serde(default = "super::version_one")]
    pub format_version: u32,
    /// The model the profile was made with ([`crate::model::Model::fingerprint`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_fingerprint: Option<String>,
    pub k: usize,
    pub n_rows: u64,
    pub population: Vec<FeatureSummary>,
    pub population_outcomes: Vec<OutcomeSummary>,
    pub segments: Vec<SegmentProfile>,
}

struct Reservoir {
    cap: usize,
    seen: u64,
    rows: Vec<f32>,
}

impl Reservoir {
    fn new(cap: usize) -> Self {
        Reservoir { cap, seen: 0, rows: Vec::new() }
    }
    fn add(&mut self, row: &[f32], rng: &mut ChaCha8Rng) {
        self.seen += 1;
        if self.rows.len() < self.cap * row.len() {
            self.rows.extend_from_slice(row);
        } else {
            let j = rng.random_range(0..self.seen);
            if (j as usize) < self.cap {
                let d = row.len();
                self.rows[j as usize * d..(j as usize + 1) * d].copy_from_slice(row);
            }
        }
    }
}

#[derive(Clone)]
enum OutcomeAcc {
    Numeric { sum: f64, count: u64, binary: bool, hours: [u64; 24], hour_like: bool },
    Categorical { counts: std::collections::BTreeMap<String, u64>, count: u64 },
}

/// Rows sampled per segment for k segments of `dim` features.
pub fn segment_sample(k: usize, dim: usize) -> usize {
    (SAMPLE_BUDGET * 3 / 4 / (4 * dim.max(1) * k.max(1))).clamp(1_000, SEGMENT_SAMPLE)
}

/// Gathers a profile batch by batch.
pub struct ProfileBuilder {
    fingerprint: String,
    names: Vec<String>,
    ids: Vec<u32>,
    given_names: Vec<Option<String>>,
    outcome_names: Vec<String>,
    dim: usize,
    count: Vec<u64>,
    sum: Vec<f64>,
    sumsq: Vec<f64>,
    pop_sum: Vec<f64>,
    pop_sumsq: Vec<f64>,
    samples: Vec<Reservoir>,
    pop_sample: Reservoir,
    outcomes: Vec<Vec<OutcomeAcc>>,
    pop_outcomes: Vec<OutcomeAcc>,
    rng: ChaCha8Rng,
}

impl ProfileBuilder {
    pub fn new(model: &crate::model::Model, outcome_names: &[String]) -> Self {
        let (k, dim) = (model.k, model.dim());
        ProfileBuilder {
            fingerprint: model.fingerprint(),
            names: model.features.iter().map(|f| f.name.clone()).collect(),
            ids: model.segments.iter().map(|s| s.id).collect(),
            given_names: model.segments.iter().map(|s| s.name.clone()).collect(),
            outcome_names: outcome_names.to_vec(),
            dim,
            count: vec![0; k],
            sum: vec![0.0; k * dim],
            sumsq: vec![0.0; k * dim],
            pop_sum: vec![0.0; dim],
            pop_sumsq: vec![0.0; dim],
            samples: (0..k).map(|_| Reservoir::new(segment_sample(k, dim))).collect(),
            pop_sample: Reservoir::new(POPULATION_SAMPLE.min(SAMPLE_BUDGET / 4 / (4 * dim.max(1))).max(1_000)),
            outcomes: vec![Vec::new(); k],
            pop_outcomes: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(0x9e37_79b9),
        }
    }

    /// Add a batch: raw feature rows (input units), labels (segment indexes), outcome columns.
    pub fn add(&mut self, raw: &[f32], labels: &[u32], outcomes: &[ArrayRef]) -> Result<()> {
        let d = self.dim;
        for (row, &l) in raw.chunks_exact(d).zip(labels) {
            let l = l as usize;
            self.count[l] += 1;
            for j in 0..d {
                let v = row[j] as f64;
                self.sum[l * d + j] += v;
                self.sumsq[l * d + j] += v * v;
                self.pop_sum[j] += v;
                self.pop_sumsq[j] += v * v;
            }
            self.samples[l].add(row, &mut self.rng);
            self.pop_sample.add(row, &mut self.rng);
        }
        for (oi, col) in outcomes.iter().enumerate() {
            let name = &self.outcome_names[oi];
            let numeric = col.data_type().is_numeric() || col.data_type() == &DataType::Boolean;
            if self.pop_outcomes.len() <= oi {
                let acc = if numeric {
                    OutcomeAcc::Numeric {
                        sum: 0.0,
                        count: 0,
                        binary: true,
                        hours: [0; 24],
                        hour_like: name.to_lowercase().contains("hour"),
                    }
                } else {
                    OutcomeAcc::Categorical { counts: Default::default(), count: 0 }
                };
                self.pop_outcomes.push(acc.clone());
                for s in self.outcomes.iter_mut() {
                    s.push(acc.clone());
                }
            }
            if numeric {
                let f = cast(col, &DataType::Float64).map_err(|e| Error::Data(format!("outcome '{name}': {e}")))?;
                let f = f.as_primitive::<Float64Type>();
                for (i, &l) in labels.iter().enumerate() {
                    if f.is_null(i) || !f.value(i).is_finite() {
                        continue;
                    }
                    let v = f.value(i);
                    for acc in [&mut self.outcomes[l as usize][oi], &mut self.pop_outcomes[oi]] {
                        if let OutcomeAcc::Numeric { sum, count, binary, hours, hour_like } = acc {
                            *sum += v;
                            *count += 1;
                            *binary &= v == 0.0 || v == 1.0;
                            if (0.0..24.0).contains(&v) {
                                hours[v.floor() as usize] += 1;
                            } else {
                                *hour_like = false;
                            }
                        }
                    }
                }
            } else {
                let s = cast(col, &DataType::Utf8).map_err(|e| {
                    Error::Data(format!(
                        "outcome '{name}' has type {}; it must be numeric, boolean or text: {e}",
                        col.data_type()
                    ))
                })?;
                let s = s.as_string::<i32>();
                for (i, &l) in labels.iter().enumerate() {
                    if s.is_null(i) {
                        continue;
                    }
                    let v = s.value(i).to_string();
                    for acc in [&mut self.outcomes[l as usize][oi], &mut self.pop_outcomes[oi]] {
                        if let OutcomeAcc::Categorical { counts, count } = acc {
                            *counts.entry(v.clone()).or_insert(0) += 1;
                            *count += 1;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    pub fn finish(self) -> Profile {
        let d = self.dim;
        let n: u64 = self.count.iter().sum();
        let pop_mean: Vec<f64> = (0..d).map(|j| self.pop_sum[j] / n.max(1) as f64).collect();
        let pop_std: Vec<f64> =
            (0..d).map(|j| (self.pop_sumsq[j] / n.max(1) as f64 - pop_mean[j] * pop_mean[j]).max(0.0).sqrt()).collect();
        let population = summaries(&self.names, &self.pop_sample.rows, d, &pop_mean, &pop_std, None);
        let segments = (0..self.ids.len())
            .map(|s| {
                let c = self.count[s].max(1) as f64;
                let mean: Vec<f64> = (0..d).map(|j| self.sum[s * d + j] / c).collect();
                let std: Vec<f64> =
                    (0..d).map(|j| (self.sumsq[s * d + j] / c - mean[j] * mean[j]).max(0.0).sqrt()).collect();
                let diffs: Vec<f64> =
                    (0..d).map(|j| if pop_std[j] > 0.0 { (mean[j] - pop_mean[j]) / pop_std[j] } else { 0.0 }).collect();
                let features = summaries(&self.names, &self.samples[s].rows, d, &mean, &std, Some(&diffs));
                let mut order: Vec<usize> = (0..d).collect();
                order.sort_by(|&a, &b| diffs[b].abs().total_cmp(&diffs[a].abs()).then(a.cmp(&b)));
                let top_features: Vec<Distinction> = order
                    .iter()
                    .take(3)
                    .filter(|&&j| self.count[s] > 0 && diffs[j].abs() > 0.0)
                    .map(|&j| Distinction {
                        feature: self.names[j].clone(),
                        std_diff: diffs[j],
                        direction: if diffs[j] > 0.0 { "high" } else { "low" }.into(),
                    })
                    .collect();
                let noun = self
                    .outcome_names
                    .iter()
                    .position(|o| o.eq_ignore_ascii_case("cadence"))
                    .and_then(|oi| cadence_noun(self.outcomes[s].get(oi)?, self.pop_outcomes.get(oi)?));
                let generated_name = name_with_noun(&top_features, noun.unwrap_or("customers"));
                SegmentProfile {
                    id: self.ids[s],
                    name: self.given_names[s].clone().unwrap_or_else(|| generated_name.clone()),
                    generated_name,
                    size: self.count[s],
                    share: self.count[s] as f64 / n.max(1) as f64,
                    features,
                    top_features,
                    outcomes: self.outcomes[s]
                        .iter()
                        .zip(&self.outcome_names)
                        .map(|(a, name)| summarise(a, name))
                        .collect(),
                }
            })
            .collect();
        let population_outcomes =
            self.pop_outcomes.iter().zip(&self.outcome_names).map(|(a, name)| summarise(a, name)).collect();
        Profile {
            format: PROFILE_FORMAT.into(),
            format_version: 1,
            model_fingerprint: Some(self.fingerprint),
            k: self.ids.len(),
            n_rows: n,
            population,
            population_outcomes,
            segments,
        }
    }
}

fn summaries(
    names: &[String],
    sample: &[f32],
    d: usize,
    mean: &[f64],
    std: &[f64],
    diffs: Option<&[f64]>,
) -> Vec<FeatureSummary> {
    (0..d)
        .map(|j| {
            let mut v: Vec<f32> = sample.chunks_exact(d).map(|r| r[j]).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            FeatureSummary {
                name: names[j].clone(),
                mean: mean[j],
                std: std[j],
                p10: quantile_sorted(&v, 0.10),
                p25: quantile_sorted(&v, 0.25),
                median: quantile_sorted(&v, 0.5),
                p75: quantile_sorted(&v, 0.75),
                p90: quantile_sorted(&v, 0.90),
                std_diff: diffs.map(|dd| dd[j]),
            }
        })
        .collect()
}

fn summarise(acc: &OutcomeAcc, name: &str) -> OutcomeSummary {
    match acc {
        OutcomeAcc::Numeric { sum, count, binary, hours, hour_like } => {
            let mean = if *count > 0 { sum / *count as f64 } else { f64::NAN };
            if *hour_like && *count > 0 {
                let (best, n) = hours.iter().enumerate().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0))).unwrap();
                OutcomeSummary::Hour {
                    column: name.into(),
                    mean,
                    best_hour: best as u32,
                    best_hour_share: *n as f64 / *count as f64,
                    count: *count,
                }
            } else {
                OutcomeSummary::Numeric { column: name.into(), mean, rate: *binary && *count > 0, count: *count }
            }
        }
        OutcomeAcc::Categorical { counts, count } => {
            let mut top: Vec<(String, f64)> =
                counts.iter().map(|(k, v)| (k.clone(), *v as f64 / (*count).max(1) as f64)).collect();
            top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            top.truncate(5);
            OutcomeSummary::Categorical { column: name.into(), top, count: *count }
        }
    }
}

/// A word or two for a feature in a direction, for the common marketing columns.
fn phrase(feature: &str, high: bool) -> String {
    let f = feature.to_lowercase();
    let has = |keys: &[&str]| keys.iter().any(|k| f.contains(k));
    if let Some(rest) = f.strip_prefix("is_").or_else(|| f.strip_prefix("has_")) {
        // A flag: "uk" or "non-uk"; short words read as acronyms.
        let word = if rest.len() <= 3 { rest.to_uppercase() } else { rest.replace('_', " ") };
        return if high { word } else { format!("non-{word}") };
    }
    // The predictive traits and engagement trends of `microseg features` first: their
    // names hold words the general rules below would read otherwise.
    let (hi, lo) = if has(&["churn"]) {
        ("at-risk", "loyal")
    } else if has(&["p_alive"]) {
        ("active", "at-risk")
    } else if has(&["clv", "lifetime_value"]) {
        ("high-value", "low-value")
    } else if has(&["expected_purchases"]) {
        ("likely-to-buy", "unlikely-to-buy")
    } else if has(&["fatigue"]) {
        ("fatigued", "unfatigued")
    } else if has(&["trend", "slope"]) {
        ("warming", "cooling")
    } else if has(&["unsubscribed"]) {
        ("unsubscribed", "subscribed")
    } else if has(&["engagement_gap"]) {
        ("sporadic", "habitual")
    } else if has(&["purchase_gap"]) {
        ("slow-repurchasing", "quick-repurchasing")
    } else if has(&["max_sends"]) {
        ("send-tolerant", "send-sensitive")
    } else if has(&["recen", "days_since"]) {
        ("lapsed", "recent")
    } else if has(&["freq", "orders", "invoices", "purchases"]) {
        ("frequent", "one-time")
    } else if has(&["monetary", "spend", "revenue", "value", "amount"]) {
        ("high-spending", "low-spending")
    } else if has(&["tenure", "signup", "tenure_days"]) {
        ("long-standing", "new")
    } else if has(&["return"]) {
        ("return-prone", "rarely-returning")
    } else if has(&["active"]) {
        ("regular", "occasional")
    } else if has(&["distinct", "categories", "products"]) {
        ("broad-basket", "narrow-basket")
    } else if has(&["open", "click", "engag", "session"]) {
        ("engaged", "disengaged")
    } else {
        let readable = f.replace('_', " ");
        return format!("{} {}", if high { "high" } else { "low" }, readable);
    };
    (if high { hi } else { lo }).to_string()
}

/// "recent, high-spending customers" from the two strongest distinctions.
pub fn generate_name(top: &[Distinction]) -> String {
    name_with_noun(top, "customers")
}

/// The name with another noun: "at-risk, high-value weekly-digest readers".
pub fn name_with_noun(top: &[Distinction], noun: &str) -> String {
    // Two distinct words: two features that read the same ("opens" and "clicks" both
    // "engaged") give one.
    let mut words: Vec<String> = Vec::new();
    for t in top.iter().filter(|t| t.std_diff.abs() >= NAMING_THRESHOLD) {
        let w = phrase(&t.feature, t.std_diff > 0.0);
        if !words.contains(&w) && words.len() < 2 {
            words.push(w);
        }
    }
    if words.is_empty() {
        if noun == "customers" { "typical customers".into() } else { noun.into() }
    } else {
        format!("{} {noun}", words.join(", "))
    }
}

/// A segment's share of a category above which it names the segment (a majority), with
/// at least CADENCE_LIFT times the population's share.
pub const CADENCE_SHARE: f64 = 0.5;
pub const CADENCE_LIFT: f64 = 1.25;

/// The noun for a segment whose `cadence` outcome (the class of `microseg features`) is
/// dominated by one class: "daily readers", "weekly-digest readers", "monthly readers",
/// "sporadic readers". None where no class holds CADENCE_SHARE of the segment and
/// CADENCE_LIFT times its population share, or for values that are not cadence classes.
fn cadence_noun(seg: &OutcomeAcc, pop: &OutcomeAcc) -> Option<&'static str> {
    let (OutcomeAcc::Categorical { counts, count }, OutcomeAcc::Categorical { counts: pc, count: pn }) = (seg, pop)
    else {
        return None;
    };
    if *count == 0 || *pn == 0 {
        return None;
    }
    let (class, n) = counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))?;
    let share = *n as f64 / *count as f64;
    let pop_share = pc.get(class).copied().unwrap_or(0) as f64 / *pn as f64;
    if share <= CADENCE_SHARE || share < CADENCE_LIFT * pop_share {
        return None;
    }
    match class.as_str() {
        "daily" => Some("daily readers"),
        "weekly" => Some("weekly-digest readers"),
        "monthly" => Some("monthly readers"),
        "sporadic" => Some("sporadic readers"),
        _ => None,
    }
}

pub const PROFILE_FORMAT: &str = "microseg-profile";

/// Keep the profile's arrays in segment order; look one up by id.
impl Profile {
    /// Whether this profile describes `model`: the same fingerprint, or (for a profile
    /// written before fingerprints) the same segment ids and features.
    pub fn check_model(&self, model: &crate::model::Model) -> std::result::Result<(), String> {
        if self.format != PROFILE_FORMAT {
            return Err(format!("\"format\" is '{}', not '{PROFILE_FORMAT}'", self.format));
        }
        if let Some(fp) = &self.model_fingerprint {
            let want = model.fingerprint();
            if *fp != want {
                return Err(format!(
                    "it was made with another model (model fingerprint {} here, {} in the profile); \
                     profile the data again with this model (microseg profile --model ...)",
                    short(&want),
                    short(fp)
                ));
            }
            return Ok(());
        }
        let ids: Vec<u32> = self.segments.iter().map(|s| s.id).collect();
        let model_ids: Vec<u32> = model.segments.iter().map(|s| s.id).collect();
        let names: Vec<&str> = self.population.iter().map(|f| f.name.as_str()).collect();
        let model_names: Vec<&str> = model.features.iter().map(|f| f.name.as_str()).collect();
        if self.k != model.k || ids != model_ids || names != model_names {
            return Err(
                "its segments or features differ from the model's; profile the data again with this model".into()
            );
        }
        Ok(())
    }

    pub fn segment(&self, id: u32) -> Option<&SegmentProfile> {
        self.segments.iter().find(|s| s.id == id)
    }
}

/// The first hex digits of a fingerprint, for messages.
pub fn short(fp: &str) -> &str {
    let end = fp.find(':').map_or(0, |i| i + 1) + 12;
    &fp[..end.min(fp.len())]
}
