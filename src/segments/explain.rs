//! Explanations a preference centre can show: for each subscriber, the features that
//! pull them most toward their segment rather than the runner-up (each feature's share
//! of ‖x − c₂‖² − ‖x − c₁‖² in model space), phrased with where their value sits in the
//! training population ("your monetary is in the top 10 %").

use super::Baseline;
use crate::model::Model;

/// Words for where a model-space value falls in the training distribution.
fn position(baseline: &Baseline, j: usize, z: f64) -> String {
    let h = &baseline.features[j];
    let b = h.bin(z);
    let below: f64 = h.shares[..b].iter().sum();
    let upto = below + h.shares[b];
    if below >= 0.5 {
        format!("in the top {:.0} %", ((1.0 - below) * 100.0).max(1.0))
    } else if upto <= 0.5 {
        format!("in the bottom {:.0} %", (upto * 100.0).max(1.0))
    } else {
        "around the middle".to_string()
    }
}

/// The explanation of one row: `x` in model space, its segment (index) and runner-up.
pub fn explain(model: &Model, names: &[String], x: &[f32], best: usize, second: Option<usize>, top: usize) -> String {
    let seg_name = &names[best];
    let Some(second) = second else {
        return format!("you are in {seg_name}");
    };
    let c1 = &model.segments[best].centroid;
    let c2 = &model.segments[second].centroid;
    let mut contrib: Vec<(f64, usize)> = (0..x.len())
        .map(|f| {
            let (a, b) = ((x[f] - c2[f]) as f64, (x[f] - c1[f]) as f64);
            (a * a - b * b, f)
        })
        .filter(|(c, _)| *c > 0.0)
        .collect();
    contrib.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let log1p: Vec<bool> = model.feature_columns.iter().flat_map(|c| std::iter::repeat_n(c.log1p, c.width)).collect();
    let parts: Vec<String> = contrib
        .iter()
        .take(top)
        .map(|&(_, f)| {
            let feature = &model.features[f].name;
            // The row's own value in input units: flags and few-valued features are
            // stated, not placed in a distribution.
            let raw = {
                let v = model.features[f].invert(x[f]);
                if log1p[f] { v.exp_m1() } else { v }
            };
            let categorical = model.baseline.as_ref().is_some_and(|bl| bl.features[f].is_categorical());
            let flag = feature.strip_prefix("is_").or_else(|| feature.strip_prefix("has_"));
            if let Some(rest) = flag {
                let word = if rest.len() <= 3 { rest.to_uppercase() } else { rest.replace('_', " ") };
                if (raw - raw.round()).abs() < 1e-3 && (raw.round() == 0.0 || raw.round() == 1.0) {
                    return format!("{word}: {}", if raw.round() == 1.0 { "yes" } else { "no" });
                }
            }
            if categorical || flag.is_some() {
                return format!("your {} is {}", feature.replace('_', " "), readable(raw));
            }
            match &model.baseline {
                Some(bl) => format!("your {} is {}", feature.replace('_', " "), position(bl, f, x[f] as f64)),
                None => format!("your {}", feature.replace('_', " ")),
            }
        })
        .collect();
    if parts.is_empty() {
        format!("you are in {seg_name}")
    } else {
        format!("you are in {seg_name} because {}", parts.join(" and "))
    }
}

/// A value as a person writes it: integers without decimals, others to 3 significant digits.
fn readable(v: f64) -> String {
    if (v - v.round()).abs() < 1e-6 * v.abs().max(1.0) {
        let r = v.round();
        if r == 0.0 { "0".to_string() } else { format!("{r}") }
    } else {
        let digits = (3 - v.abs().log10().floor() as i32 - 1).clamp(0, 6) as usize;
        format!("{v:.digits$}")
    }
}
