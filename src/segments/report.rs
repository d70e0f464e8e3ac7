//! The HTML report: one self-contained file (inline SVG and CSS, no script, no
//! network) with segment sizes, a heat map of standardised feature means, a 2-D
//! projection of the centroids sized by membership, the drift and fairness summaries
//! when given, and a table of segments with their names and why.

use std::fmt::Write;

use super::audit::AttributeAudit;
use super::drift::DriftReport;
use super::profile::{OutcomeSummary, Profile};
use crate::events::Traits;
use crate::model::Model;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// A feature name as a reader says it: `recency_days` → "recency (days)", `is_uk` →
/// "UK", `avg_basket_value` → "avg basket value".
pub fn label(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("is_").or_else(|| name.strip_prefix("has_")) {
        return if rest.len() <= 3 { rest.to_uppercase() } else { rest.replace('_', " ") };
    }
    for (suffix, unit) in UNITS {
        if let Some(stem) = name.strip_suffix(suffix)
            && !stem.is_empty()
        {
            return format!("{} ({unit})", stem.replace('_', " "));
        }
    }
    name.replace('_', " ")
}

/// Name suffixes that carry a unit.
const UNITS: &[(&str, &str)] = &[
    ("_days", "days"),
    ("_hours", "hours"),
    ("_minutes", "minutes"),
    ("_weeks", "weeks"),
    ("_months", "months"),
    ("_years", "years"),
    ("_pct", "%"),
];

/// A number for people: no "-0.0", three significant digits, thousands kept whole.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    let text = if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    clean_zero(text)
}

/// A signed standardised difference ("+1.25", "−0.40", "0.00").
fn signed(v: f64, decimals: usize) -> String {
    let t = format!("{v:+.decimals$}");
    let zero = format!("{:.decimals$}", 0.0);
    if t.trim_start_matches(['+', '-']) == zero { zero } else { t.replacen('-', "−", 1) }
}

fn clean_zero(text: String) -> String {
    if text.starts_with('-') && text[1..].chars().all(|c| c == '0' || c == '.') { text[1..].to_string() } else { text }
}

/// A share as a percentage; tiny non-zero shares say so instead of "0 %".
pub fn pct(share: f64) -> String {
    if !share.is_finite() {
        "–".into()
    } else if share > 0.0 && share < 0.001 {
        "<0.1 %".into()
    } else {
        format!("{:.1} %", 100.0 * share)
    }
}

/// Diverging colour for a standardised difference (blue low, white 0, red high).
fn colour(z: f64) -> String {
    let t = (z / 2.0).clamp(-1.0, 1.0);
    let (r, g, b) = if t >= 0.0 {
        (255.0, 255.0 * (1.0 - t * 0.75), 255.0 * (1.0 - t * 0.8))
    } else {
        (255.0 * (1.0 + t * 0.8), 255.0 * (1.0 + t * 0.6), 255.0)
    };
    format!("rgb({},{},{})", r as u8, g as u8, b as u8)
}

/// The first two principal axes of the centroids (power iteration on the covariance).
fn project(points: &[Vec<f64>]) -> Vec<(f64, f64)> {
    let k = points.len();
    let d = points.first().map_or(0, |p| p.len());
    if k == 0 || d == 0 {
        return vec![(0.0, 0.0); k];
    }
    let mean: Vec<f64> = (0..d).map(|j| points.iter().map(|p| p[j]).sum::<f64>() / k as f64).collect();
    let c: Vec<Vec<f64>> = points.iter().map(|p| p.iter().zip(&mean).map(|(a, m)| a - m).collect()).collect();
    let cov = |v: &[f64]| -> Vec<f64> {
        let mut out = vec![0.0; d];
        for row in &c {
            let dot: f64 = row.iter().zip(v).map(|(a, b)| a * b).sum();
            for j in 0..d {
                out[j] += dot * row[j];
            }
        }
        out
    };
    let norm = |v: &mut Vec<f64>| {
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if n > 0.0 {
            v.iter_mut().for_each(|x| *x /= n);
        }
    };
    let mut axes: Vec<Vec<f64>> = Vec::new();
    for a in 0..2.min(d) {
        let mut v: Vec<f64> = (0..d).map(|j| 1.0 + ((j * 7 + a * 3) % 5) as f64).collect();
        for _ in 0..100 {
            let mut w = cov(&v);
            for prev in &axes {
                let dot: f64 = w.iter().zip(prev).map(|(x, y)| x * y).sum();
                w.iter_mut().zip(prev).for_each(|(x, y)| *x -= dot * y);
            }
            norm(&mut w);
            v = w;
        }
        axes.push(v);
    }
    c.iter()
        .map(|row| {
            let x = axes.first().map_or(0.0, |a| row.iter().zip(a).map(|(p, q)| p * q).sum());
            let y = axes.get(1).map_or(0.0, |a| row.iter().zip(a).map(|(p, q)| p * q).sum());
            (x, y)
        })
        .collect()
}

pub fn render(
    model: &Model,
    profile: &Profile,
    drift: Option<&DriftReport>,
    audit: Option<&[AttributeAudit]>,
    traits: Option<&Traits>,
) -> String {
    let mut h = String::new();
    let names: Vec<&str> = profile.population.iter().map(|f| f.name.as_str()).collect();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>microseg report</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>\
         body{{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}}\
         h1{{font-size:22px}}h2{{font-size:17px;margin-top:28px}}table{{border-collapse:collapse;font-size:13px}}\
         td,th{{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}}th{{background:#f4f4f4}}\
         .num{{text-align:right}}.flag{{color:#b00;font-weight:bold}}.muted{{color:#777;font-size:12px}}\
         svg text{{font-size:11px}}</style></head><body>"
    );
    let _ = write!(
        h,
        "<h1>Segments</h1><p>{} segments of {} rows; features: {}.<br><span class=\"muted\">model: engine {} {}, \
         {} iterations, inertia {:.6e}, input {}</span></p>",
        profile.k,
        profile.n_rows,
        esc(&names.iter().map(|n| label(n)).collect::<Vec<_>>().join(", ")),
        esc(&model.manifest.engine),
        esc(&model.manifest.engine_version),
        model.manifest.iterations,
        model.manifest.objective,
        esc(&model.manifest.input_fingerprint)
    );
    if let Some(g) = &model.gmm {
        let weights: Vec<String> = model
            .segments
            .iter()
            .zip(&g.weights)
            .map(|(s, w)| {
                format!("{} {}", esc(&label(s.name.as_deref().unwrap_or(&format!("segment {}", s.id)))), pct(*w))
            })
            .collect();
        let _ = write!(
            h,
            "<p>Gaussian mixture ({} covariances): soft membership, each row in its most probable component. \
             Mean log-likelihood {:.4} per row, BIC {:.6e}, AIC {:.6e}; weakly assigned: posterior under {:.3}. \
             Component weights: {}.{}</p>",
            g.covariance.name(),
            g.log_likelihood,
            g.bic,
            g.aic,
            g.low_probability,
            weights.join(", "),
            if g.emptied.is_empty() {
                String::new()
            } else {
                format!(
                    " <span class=\"flag\">Emptied during the fit (weight 0): {}.</span>",
                    g.emptied
                        .iter()
                        .map(|e| format!("segment {} at iteration {}", e.segment, e.iteration))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    // Sizes.
    let bar_h = 22;
    let w = 900;
    let _ = write!(
        h,
        "<h2>Segment sizes</h2><svg width=\"{w}\" height=\"{}\" role=\"img\" aria-label=\"segment sizes\">",
        profile.segments.len() * bar_h + 4
    );
    let max_share = profile.segments.iter().map(|s| s.share).fold(0.0, f64::max).max(1e-9);
    for (i, s) in profile.segments.iter().enumerate() {
        let y = i * bar_h;
        let len = (s.share / max_share * 360.0).max(1.0);
        let _ = write!(
            h,
            "<text x=\"0\" y=\"{}\">{} · {}</text><rect x=\"330\" y=\"{}\" width=\"{len:.1}\" height=\"{}\" fill=\"#4a7fb5\"></rect>\
             <text x=\"{:.1}\" y=\"{}\">{} ({})</text>",
            y + 15,
            s.id,
            esc(&s.name),
            y + 3,
            bar_h - 6,
            335.0 + len,
            y + 15,
            pct(s.share),
            s.size
        );
    }
    h.push_str("</svg>");
    // Heat map.
    let cw = 64;
    let ch = 22;
    let left = 260;
    let top = 110;
    let hw = left + names.len() * cw + 10;
    let hh = top + profile.segments.len() * ch + 10;
    let _ = write!(
        h,
        "<h2>How each segment differs</h2><p class=\"muted\">Each cell: the segment's mean against everyone's, in standard deviations of the whole population (+1 = one standard deviation above average); red above, blue below. The table further down gives the means in the data's own units.</p><svg width=\"{hw}\" height=\"{hh}\" role=\"img\" aria-label=\"heat map\">"
    );
    for (j, n) in names.iter().enumerate() {
        let x = left + j * cw + cw / 2;
        let _ = write!(h, "<text transform=\"translate({x},{}) rotate(-45)\">{}</text>", top - 6, esc(&label(n)));
    }
    for (i, s) in profile.segments.iter().enumerate() {
        let y = top + i * ch;
        let _ = write!(h, "<text x=\"0\" y=\"{}\">{} · {}</text>", y + 15, s.id, esc(&s.name));
        for (j, f) in s.features.iter().enumerate() {
            let z = f.std_diff.unwrap_or(0.0);
            let _ = write!(
                h,
                "<rect x=\"{}\" y=\"{y}\" width=\"{}\" height=\"{}\" fill=\"{}\" stroke=\"#fff\"></rect><text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                left + j * cw,
                cw,
                ch,
                colour(z),
                left + j * cw + cw / 2,
                y + 15,
                signed(z, 1)
            );
        }
    }
    h.push_str("</svg>");
    // Projection.
    let cents: Vec<Vec<f64>> = model.segments.iter().map(|s| s.centroid.iter().map(|v| *v as f64).collect()).collect();
    let pts = project(&cents);
    let (minx, maxx) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| (a.0.min(p.0), a.1.max(p.0)));
    let (miny, maxy) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| (a.0.min(p.1), a.1.max(p.1)));
    let (pw, ph, pad) = (560.0, 380.0, 40.0);
    let sx = |x: f64| pad + (x - minx) / (maxx - minx).max(1e-12) * (pw - 2.0 * pad);
    let sy = |y: f64| ph - pad - (y - miny) / (maxy - miny).max(1e-12) * (ph - 2.0 * pad);
    let _ = write!(
        h,
        "<h2>Segment map</h2><figure style=\"margin:0\"><svg width=\"{pw}\" height=\"{ph}\" role=\"img\" aria-label=\"segment map\"><rect x=\"0\" y=\"0\" width=\"{pw}\" height=\"{ph}\" fill=\"#fafafa\" stroke=\"#ddd\"></rect>\
         <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"></line><line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"#999\"></line>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">first principal axis →</text>\
         <text transform=\"translate(14,{}) rotate(-90)\" text-anchor=\"middle\">second principal axis →</text>",
        ph - pad,
        pw - pad,
        ph - pad,
        ph - pad,
        pw / 2.0,
        ph - 12.0,
        ph / 2.0
    );
    let max_size = model.segments.iter().map(|s| s.size).max().unwrap_or(1).max(1) as f64;
    for (s, p) in model.segments.iter().zip(&pts) {
        let r = 4.0 + 26.0 * (s.size as f64 / max_size).sqrt();
        let _ = write!(
            h,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{r:.1}\" fill=\"#4a7fb5\" fill-opacity=\"0.45\" stroke=\"#2d5d8f\"></circle><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            sx(p.0),
            sy(p.1),
            sx(p.0),
            sy(p.1) + 4.0,
            s.id
        );
    }
    h.push_str(
        "</svg><figcaption class=\"muted\">Each circle is a segment's centre (its id inside), placed on the two \
         directions along which the segment centres differ most (principal axes of the centroids in the \
         model's standardised space); circles close together are similar segments. Circle area is \
         proportional to the number of members.</figcaption></figure>",
    );
    // Table.
    h.push_str("<h2>Segments and why</h2><table><tr><th>id</th><th>name</th><th class=\"num\">members</th><th class=\"num\">share</th><th>why</th><th>outcomes</th></tr>");
    for s in &profile.segments {
        let why: Vec<String> = s
            .top_features
            .iter()
            .map(|t| {
                // The segment's mean in the data's units, against the whole population's.
                let seg = s.features.iter().find(|f| f.name == t.feature).map(|f| f.mean);
                let pop = profile.population.iter().find(|f| f.name == t.feature).map(|f| f.mean);
                let is_flag = t.feature.starts_with("is_") || t.feature.starts_with("has_");
                let units = match (seg, pop) {
                    // A flag's mean is the share of members who have it.
                    (Some(a), Some(b)) if is_flag && (0.0..=1.0).contains(&a) && (0.0..=1.0).contains(&b) => {
                        format!("{} of members against {} overall, ", pct(a), pct(b))
                    }
                    (Some(a), Some(b)) => format!("mean {} against {} overall, ", num(a), num(b)),
                    _ => String::new(),
                };
                format!(
                    "{} {} ({units}{} standard deviations)",
                    t.direction,
                    esc(&label(&t.feature)),
                    signed(t.std_diff, 2)
                )
            })
            .collect();
        let outcomes: Vec<String> = s
            .outcomes
            .iter()
            .map(|o| match o {
                OutcomeSummary::Numeric { column, mean, rate, .. } => {
                    if *rate {
                        format!("{}: {}", esc(&label(column)), pct(*mean))
                    } else {
                        format!("{}: mean {}", esc(&label(column)), num(*mean))
                    }
                }
                OutcomeSummary::Hour { column, best_hour, best_hour_share, .. } => {
                    format!("{}: best hour {best_hour}:00 ({})", esc(&label(column)), pct(*best_hour_share))
                }
                OutcomeSummary::Categorical { column, top, .. } => format!(
                    "{}: {}",
                    esc(&label(column)),
                    top.iter().take(3).map(|(k, v)| format!("{} {}", esc(k), pct(*v))).collect::<Vec<_>>().join(", ")
                ),
            })
            .collect();
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            s.id,
            esc(&s.name),
            s.size,
            pct(s.share),
            why.join("; "),
            outcomes.join("<br>")
        );
    }
    h.push_str("</table>");
    if let Some(d) = drift {
        let _ = write!(
            h,
            "<h2>Drift</h2><p>Verdict: <b>{:?}</b> on {} rows (watch from PSI {}, retrain from {}). Segment-share PSI {}; mean distance to the segment centre {} (training {}); weakly assigned {} (training {}).</p><table><tr><th>feature</th><th class=\"num\">PSI</th></tr>",
            d.verdict,
            d.n_rows,
            d.thresholds.watch,
            d.thresholds.retrain,
            num(d.segment_psi),
            num(d.mean_distance),
            num(d.training_mean_distance),
            pct(d.low_margin_share),
            pct(d.training_low_margin_share)
        );
        for f in &d.feature_psi {
            let _ = write!(h, "<tr><td>{}</td><td class=\"num\">{}</td></tr>", esc(&label(&f.feature)), num(f.psi));
        }
        h.push_str("</table>");
    }
    if let Some(a) = audit {
        h.push_str("<h2>Fairness</h2><p class=\"muted\">Disparate impact: a group's rate of landing in the segment over the highest group's rate; flagged under 0.8 (four-fifths rule).</p>");
        for attr in a {
            let _ = write!(
                h,
                "<h3>{}</h3><table><tr><th>segment</th><th>group</th><th class=\"num\">share of segment</th><th class=\"num\">share of population</th><th class=\"num\">disparate impact</th></tr>",
                esc(&label(&attr.column))
            );
            for s in &attr.segments {
                for g in &s.groups {
                    let _ = write!(
                        h,
                        "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num{}\">{:.2}</td></tr>",
                        s.segment,
                        esc(&g.group),
                        pct(g.share_of_segment),
                        pct(g.share_of_population),
                        if g.flagged { " flag" } else { "" },
                        g.disparate_impact
                    );
                }
            }
            h.push_str("</table>");
        }
    }
    if let Some(t) = traits {
        traits_section(&mut h, t);
    }
    h.push_str("<p class=\"muted\">Made by microseg. Names are generated from the features that most set each segment apart; set your own in the model file.</p></body></html>\n");
    h
}

/// The purchase forecast: BG/NBD and Gamma-Gamma parameters, and with a holdout the
/// predicted against actual purchase days per frequency group, as a chart and a table.
fn traits_section(h: &mut String, t: &Traits) {
    let b = &t.bgnbd;
    let conv = |c: &crate::events::btyd::Convergence| {
        if c.converged {
            "converged".to_string()
        } else {
            format!("<span class=\"flag\">not converged ({})</span>", esc(&c.reason))
        }
    };
    let _ = write!(
        h,
        "<h2>Purchase forecast</h2><p>BG/NBD (Fader, Hardie &amp; Lee 2005) on {} buyers, time unit {}, calibration to {}: \
         r = {}, α = {}, a = {}, b = {}; log-likelihood {:.2}, {}.",
        b.n_customers,
        esc(t.time_unit.name()),
        esc(&t.calibration_end),
        num(b.r),
        num(b.alpha),
        num(b.a),
        num(b.b),
        b.log_likelihood,
        conv(&b.convergence)
    );
    if !b.weakly_identified.is_empty() {
        let _ = write!(
            h,
            " <span class=\"flag\">The data do not pin down: {}; treat the churn probabilities and forecasts with care.</span>",
            esc(&b.weakly_identified.join("; "))
        );
    }
    if let Some(g) = &t.gamma_gamma {
        let _ = write!(
            h,
            " Gamma-Gamma (Fader &amp; Hardie 2013) on {} repeat buyers: p = {}, q = {}, γ = {}; {}.",
            g.n_customers,
            num(g.p),
            num(g.q),
            num(g.gamma),
            conv(&g.convergence)
        );
    }
    let _ = write!(h, " Forecast horizon {} days, discount rate {} a year.</p>", t.horizon_days, t.discount_rate);
    let Some(ho) = &t.holdout else { return };
    let _ = write!(
        h,
        "<h3>Holdout check</h3><p>Purchase days from {} to {} ({} days): forecast against actual, by repeat purchases \
         in the calibration period. In all: {} forecast, {} actual; mean absolute error {} per customer.</p>",
        esc(&ho.from),
        esc(&t.as_of),
        num(ho.days),
        num(ho.predicted_total),
        num(ho.actual_total),
        num(ho.mean_absolute_error)
    );
    let (left, top, gw, ch) = (50.0, 20.0, 70.0, 200.0);
    let n = ho.groups.len();
    let max = ho.groups.iter().map(|g| g.predicted_mean.max(g.actual_mean)).fold(0.0, f64::max).max(1e-9);
    let width = left + gw * n as f64 + 20.0;
    let _ = write!(
        h,
        "<svg width=\"{width:.0}\" height=\"{:.0}\" role=\"img\" aria-label=\"holdout forecast against actual\">",
        top + ch + 50.0
    );
    let _ = write!(
        h,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{:.0}\" y2=\"{}\" stroke=\"#999\"></line>\
         <text x=\"0\" y=\"{}\">{}</text><text x=\"0\" y=\"{}\">0</text>",
        top + ch,
        width - 10.0,
        top + ch,
        top + 10.0,
        num(max),
        top + ch
    );
    for (i, g) in ho.groups.iter().enumerate() {
        let x = left + gw * i as f64 + 8.0;
        for (j, (v, fill)) in [(g.predicted_mean, "#4a7fb5"), (g.actual_mean, "#e08a3c")].into_iter().enumerate() {
            let bh = v / max * ch;
            let _ = write!(
                h,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"24\" height=\"{bh:.1}\" fill=\"{fill}\"><title>{}</title></rect>",
                x + 26.0 * j as f64,
                top + ch - bh,
                num(v)
            );
        }
        let _ = write!(
            h,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            x + 25.0,
            top + ch + 16.0,
            group_label(ho, i)
        );
    }
    let _ = write!(
        h,
        "<text x=\"{left}\" y=\"{}\">repeat purchases in calibration</text>\
         <rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"#4a7fb5\"></rect><text x=\"{}\" y=\"{}\">forecast</text>\
         <rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"#e08a3c\"></rect><text x=\"{}\" y=\"{}\">actual</text></svg>",
        top + ch + 36.0,
        left + 230.0,
        top + ch + 27.0,
        left + 244.0,
        top + ch + 36.0,
        left + 310.0,
        top + ch + 27.0,
        left + 324.0,
        top + ch + 36.0
    );
    h.push_str(
        "<table><tr><th>repeat purchases</th><th class=\"num\">customers</th><th class=\"num\">forecast per customer</th>\
         <th class=\"num\">actual per customer</th></tr>",
    );
    for (i, g) in ho.groups.iter().enumerate() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            group_label(ho, i),
            g.customers,
            num(g.predicted_mean),
            num(g.actual_mean)
        );
    }
    h.push_str("</table>");
}

/// A frequency group's label: the last group holds that many repeat purchases or more.
fn group_label(ho: &crate::events::Holdout, i: usize) -> String {
    let f = ho.groups[i].frequency;
    if i + 1 == ho.groups.len() && f >= crate::events::HOLDOUT_TOP_GROUP { format!("{f}+") } else { f.to_string() }
}
