//! Choosing k: fit every k of a range on one seeded sample of the transformed rows and
//! score each fit with the usual criteria (inertia and its elbow, BIC and AIC for
//! mixtures, silhouette, Calinski–Harabasz, Davies–Bouldin), then recommend the k most
//! criteria choose, saying plainly where they disagree.

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use super::fit::{FitConfig, prepare};
use crate::backend::{Backend, Centroids, ClusterStats, Nearest};
use crate::error::{Error, Result};
use crate::features::Matrix;
use crate::gmm::{GmmInit, GmmParams};
use crate::io::Dataset;
use crate::kmeans::{self, Algorithm, InitMethod, KMeansParams};
use crate::model::Method;

/// Rows every fit sees by default: enough for stable criteria at the k a marketer asks
/// for, few enough that a sweep of 2..64 over 10⁷ input rows takes minutes.
pub const DEFAULT_SAMPLE: usize = 50_000;
/// Rows of the sample the silhouette is computed on (it is quadratic in them).
pub const DEFAULT_SILHOUETTE_SAMPLE: usize = 2_000;

#[derive(Debug, Clone)]
pub struct ChooseKConfig {
    /// The fit's options (features, transforms, method, covariance, seed, max_iter,
    /// tol); its `k` is ignored.
    pub fit: FitConfig,
    /// The k to try, ascending, each at least 2.
    pub ks: Vec<usize>,
    pub sample: usize,
    pub silhouette_sample: usize,
}

impl ChooseKConfig {
    /// Parse `A..B` (inclusive), `A..=B`, or a comma-separated list.
    pub fn parse_range(s: &str) -> Result<Vec<usize>> {
        let bad = || Error::Usage(format!("--k {s}: expected a range like 2..64 or a list like 3,5,8"));
        let num = |t: &str| t.trim().parse::<usize>().map_err(|_| bad());
        let ks: Vec<usize> = if let Some((a, b)) = s.split_once("..") {
            let (a, b) = (num(a)?, num(b.trim_start_matches('='))?);
            if a > b {
                return Err(Error::Usage(format!("--k {s}: the range is empty ({a} > {b}); write it low..high")));
            }
            (a..=b).collect()
        } else {
            let mut v = s.split(',').map(num).collect::<Result<Vec<_>>>()?;
            v.sort_unstable();
            v.dedup();
            v
        };
        if ks.first().is_none_or(|&k| k < 2) {
            return Err(Error::Usage(format!("--k {s}: every k must be at least 2 (the criteria compare segments)")));
        }
        if ks.len() > 512 {
            return Err(Error::Usage(format!("--k {s}: {} values of k; try at most 512", ks.len())));
        }
        Ok(ks)
    }
}

/// One k's fit and scores.
#[derive(Debug, Clone, Serialize)]
pub struct KScore {
    pub k: usize,
    /// Weighted sum of squared distances to the assigned centre (model space).
    pub inertia: f64,
    pub silhouette: f64,
    pub calinski_harabasz: f64,
    pub davies_bouldin: f64,
    /// Mixtures only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bic: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aic: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_likelihood: Option<f64>,
    pub iterations: usize,
    pub converged: bool,
    /// Segments no sampled row ended in.
    pub empty_segments: usize,
    pub seconds: f64,
}

/// The k one criterion prefers.
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    pub criterion: &'static str,
    pub k: usize,
    pub rule: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    pub k: usize,
    pub runner_up: Option<usize>,
    pub rule: String,
    /// True when every criterion chose the same k.
    pub criteria_agree: bool,
    /// In words: which criterion chose which k.
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChooseKReport {
    pub format: &'static str,
    pub format_version: u32,
    pub method: &'static str,
    pub features: Vec<String>,
    pub input_rows: usize,
    pub sample_rows: usize,
    pub silhouette_rows: usize,
    pub seed: u64,
    pub scores: Vec<KScore>,
    pub choices: Vec<Choice>,
    pub recommendation: Recommendation,
    pub seconds: f64,
}

const ELBOW_RULE: &str = "the k farthest below the straight line joining the inertia at the smallest and the \
                          largest k, on axes scaled to [0, 1] (Kneedle, Satopää et al. 2011)";

/// Fit and score every k on one sample; `progress(i, k)` before each fit (false stops
/// with [`Error::Interrupted`]).
pub fn choose_k(
    source: &Dataset,
    cfg: &ChooseKConfig,
    backend: &dyn Backend,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<ChooseKReport> {
    let t0 = Instant::now();
    let fc = FitConfig { k: *cfg.ks.last().unwrap_or(&2), ..cfg.fit.clone() };
    fc.check()?;
    if cfg.sample < 2 || cfg.silhouette_sample < 2 {
        return Err(Error::Usage("--sample and --silhouette-sample must be at least 2".into()));
    }
    let prep = prepare(source, &fc)?;
    let x = &prep.table.matrix;
    let n = x.n();
    let mut rng = kmeans::init::rng_for(cfg.fit.seed, 0);
    let (sample, sw) = kmeans::init::sample_rows(x, prep.table.weights.as_deref(), cfg.sample.min(n), &mut rng);
    let m = sample.n();
    let k_max = *cfg.ks.last().unwrap();
    if k_max > m {
        return Err(Error::Data(format!(
            "--k up to {k_max} is more than the {m} rows sampled (of {n} usable); lower the range or raise --sample"
        )));
    }
    log::info!(
        "choose-k: {} fits (k {}..{}, {}) on {m} of {n} rows × {} features; silhouette on {}",
        cfg.ks.len(),
        cfg.ks[0],
        k_max,
        cfg.fit.method.name(),
        x.dim,
        cfg.silhouette_sample.min(m)
    );
    // The silhouette's rows: every stride-th sampled row; their distances once.
    let stride = m.div_ceil(cfg.silhouette_sample.min(m));
    let sil_rows: Vec<usize> = (0..m).step_by(stride).collect();
    let dist = pairwise(&sample, &sil_rows);
    let mut scores = Vec::with_capacity(cfg.ks.len());
    for (i, &k) in cfg.ks.iter().enumerate() {
        if !progress(i, k) {
            return Err(Error::Interrupted);
        }
        let t = Instant::now();
        let s = score_k(&sample, sw.as_deref(), k, &cfg.fit, backend, &sil_rows, &dist)?;
        log::debug!(
            "k={k}: inertia {:.6e}, silhouette {:.4}, CH {:.4e}, DB {:.4}{}",
            s.inertia,
            s.silhouette,
            s.calinski_harabasz,
            s.davies_bouldin,
            s.bic.map(|b| format!(", BIC {b:.6e}")).unwrap_or_default()
        );
        scores.push(KScore { seconds: t.elapsed().as_secs_f64(), ..s });
    }
    let (choices, recommendation) = recommend(&scores, cfg.fit.method);
    Ok(ChooseKReport {
        format: "microseg-choose-k",
        format_version: 1,
        method: cfg.fit.method.name(),
        features: prep.transforms.iter().map(|t| t.name.clone()).collect(),
        input_rows: n,
        sample_rows: m,
        silhouette_rows: sil_rows.len(),
        seed: cfg.fit.seed,
        scores,
        choices,
        recommendation,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Euclidean distances (not squared) between the chosen rows, f32, row-major.
fn pairwise(x: &Matrix, rows: &[usize]) -> Vec<f32> {
    let s = rows.len();
    let mut d = vec![0.0f32; s * s];
    d.par_chunks_mut(s).enumerate().for_each(|(a, out)| {
        let ra = x.row(rows[a]);
        for (b, o) in out.iter_mut().enumerate() {
            *o = crate::backend::cpu::exact_sq_dist(ra, x.row(rows[b])).sqrt() as f32;
        }
    });
    d
}

fn score_k(
    x: &Matrix,
    w: Option<&[f32]>,
    k: usize,
    fc: &FitConfig,
    backend: &dyn Backend,
    sil_rows: &[usize],
    dist: &[f32],
) -> Result<KScore> {
    let (centroids, nearest, stats, iterations, converged, mix) = match fc.method {
        Method::KMeans => {
            let p = KMeansParams {
                seed: fc.seed,
                max_iter: fc.max_iter,
                tol: fc.tol,
                n_init: fc.n_init,
                metric: fc.metric,
                init: InitMethod::KMeansPlusPlus,
                algorithm: Algorithm::auto_for(k, x.dim, backend),
                ..KMeansParams::new(k)
            };
            let f = kmeans::fit(backend, x, w, &p, &mut |_| {})?;
            (f.centroids, f.nearest, f.stats, f.iterations, f.converged, None)
        }
        Method::Gmm => {
            let p = GmmParams {
                covariance: fc.covariance,
                reg_covar: fc.reg_covar,
                max_iter: fc.max_iter,
                tol: fc.tol,
                n_init: fc.n_init,
                seed: fc.seed,
                init: GmmInit::KMeans,
                ..GmmParams::new(k)
            };
            let f = crate::gmm::fit(backend, x, w, &p)?;
            let c = Centroids::new(f.mixture.means.iter().map(|v| *v as f32).collect(), x.dim);
            let nearest: Vec<Nearest> = f
                .labels
                .iter()
                .enumerate()
                .map(|(i, &l)| Nearest {
                    label: l,
                    dist: crate::backend::cpu::exact_sq_dist(x.row(i), c.row(l as usize)) as f32,
                    second: f32::INFINITY,
                })
                .collect();
            let stats = backend.reduce(&x.data, w, &nearest, k)?;
            let extra = (f.bic(), f.aic(), f.log_likelihood);
            (c, nearest, stats, f.iterations, f.converged, Some(extra))
        }
    };
    let labels: Vec<u32> = sil_rows.iter().map(|&i| nearest[i].label).collect();
    Ok(KScore {
        k,
        inertia: stats.inertia(),
        silhouette: silhouette(dist, &labels, k),
        calinski_harabasz: calinski_harabasz(&stats, &centroids),
        davies_bouldin: davies_bouldin(&stats, &centroids, x, w, &nearest),
        bic: mix.map(|m| m.0),
        aic: mix.map(|m| m.1),
        log_likelihood: mix.map(|m| m.2),
        iterations,
        converged,
        empty_segments: stats.count.iter().filter(|c| **c == 0).count(),
        seconds: 0.0,
    })
}

/// Mean silhouette (scikit-learn's `silhouette_score`): per row (a − b)/max(a, b)
/// with a its mean distance to the other members of its cluster and b the smallest
/// mean distance to another cluster's members; 0 for a row alone in its cluster.
pub fn silhouette(dist: &[f32], labels: &[u32], k: usize) -> f64 {
    let s = labels.len();
    let mut sizes = vec![0usize; k];
    for &l in labels {
        sizes[l as usize] += 1;
    }
    if sizes.iter().filter(|c| **c > 0).count() < 2 {
        return 0.0;
    }
    let total: f64 = (0..s)
        .into_par_iter()
        .map(|i| {
            let mut sums = vec![0.0f64; k];
            for (j, &l) in labels.iter().enumerate() {
                sums[l as usize] += dist[i * s + j] as f64;
            }
            let own = labels[i] as usize;
            if sizes[own] < 2 {
                return 0.0;
            }
            let a = sums[own] / (sizes[own] - 1) as f64;
            let b = (0..k)
                .filter(|&c| c != own && sizes[c] > 0)
                .map(|c| sums[c] / sizes[c] as f64)
                .fold(f64::INFINITY, f64::min);
            let m = a.max(b);
            if m > 0.0 { (b - a) / m } else { 0.0 }
        })
        .sum();
    total / s as f64
}

/// Between-cluster over within-cluster dispersion, each per degree of freedom
/// (scikit-learn's `calinski_harabasz_score`, with sample weights as counts).
pub fn calinski_harabasz(stats: &ClusterStats, c: &Centroids) -> f64 {
    let n: f64 = stats.weight.iter().sum();
    let k = stats.weight.iter().filter(|w| **w > 0.0).count();
    if k < 2 || n <= k as f64 {
        return 0.0;
    }
    let d = c.dim;
    let mean: Vec<f64> = (0..d).map(|t| stats.sum.iter().skip(t).step_by(d).sum::<f64>() / n).collect();
    let between: f64 = (0..c.k)
        .filter(|&j| stats.weight[j] > 0.0)
        .map(|j| stats.weight[j] * c.row(j).iter().zip(&mean).map(|(a, b)| (*a as f64 - b).powi(2)).sum::<f64>())
        .sum();
    let within = stats.inertia();
    if within <= 0.0 {
        return f64::INFINITY;
    }
    (between / (k as f64 - 1.0)) / (within / (n - k as f64))
}

/// Mean over clusters of the worst ratio (s_i + s_j) / ‖c_i − c_j‖, s the mean
/// distance of members to their centre (scikit-learn's `davies_bouldin_score`).
pub fn davies_bouldin(stats: &ClusterStats, c: &Centroids, x: &Matrix, w: Option<&[f32]>, nr: &[Nearest]) -> f64 {
    let k = c.k;
    let mut spread = vec![0.0f64; k];
    for (i, n) in nr.iter().enumerate() {
        let wi = w.map_or(1.0, |w| w[i] as f64);
        spread[n.label as usize] += wi * crate::backend::cpu::exact_sq_dist(x.row(i), c.row(n.label as usize)).sqrt();
    }
    let live: Vec<usize> = (0..k).filter(|&j| stats.weight[j] > 0.0).collect();
    if live.len() < 2 {
        return 0.0;
    }
    for &j in &live {
        spread[j] /= stats.weight[j];
    }
    let worst: f64 = live
        .iter()
        .map(|&i| {
            live.iter()
                .filter(|&&j| j != i)
                .map(|&j| {
                    let sep = crate::backend::cpu::exact_sq_dist(c.row(i), c.row(j)).sqrt();
                    if sep > 0.0 { (spread[i] + spread[j]) / sep } else { f64::INFINITY }
                })
                .fold(0.0, f64::max)
        })
        .sum();
    worst / live.len() as f64
}

/// The k of the elbow of the inertia curve (see ELBOW_RULE); None with under 3 k.
pub fn elbow(scores: &[KScore]) -> Option<usize> {
    if scores.len() < 3 {
        return None;
    }
    let (k0, k1) = (scores[0].k as f64, scores.last().unwrap().k as f64);
    let (hi, lo) =
        scores.iter().fold((f64::NEG_INFINITY, f64::INFINITY), |(h, l), s| (h.max(s.inertia), l.min(s.inertia)));
    if hi <= lo {
        return None;
    }
    scores
        .iter()
        .map(|s| {
            let x = (s.k as f64 - k0) / (k1 - k0);
            let y = (s.inertia - lo) / (hi - lo);
            (1.0 - x - y, s.k)
        })
        .fold(None, |best: Option<(f64, usize)>, (v, k)| match best {
            Some((bv, _)) if bv >= v => best,
            _ => Some((v, k)),
        })
        .map(|(_, k)| k)
}

fn best_by(scores: &[KScore], f: impl Fn(&KScore) -> f64, maximise: bool) -> (usize, Option<usize>) {
    let mut v: Vec<(f64, usize)> =
        scores.iter().map(|s| (if maximise { -f(s) } else { f(s) }, s.k)).filter(|(x, _)| x.is_finite()).collect();
    // Best first; ties to the smaller k.
    v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    (v.first().map_or(scores[0].k, |p| p.1), v.get(1).map(|p| p.1))
}

/// Each criterion's k, and the recommendation. Mixtures: the k of the lowest BIC (the
/// likelihood-based criterion; the distance-based ones assume round clusters).
/// k-means: the k most criteria choose, ties to the silhouette's.
pub fn recommend(scores: &[KScore], method: Method) -> (Vec<Choice>, Recommendation) {
    let mut choices = Vec::new();
    let mut seconds: Vec<(&'static str, Option<usize>)> = Vec::new();
    let mut push = |criterion: &'static str, (k, second): (usize, Option<usize>), rule: &'static str| {
        choices.push(Choice { criterion, k, rule });
        seconds.push((criterion, second));
    };
    if method == Method::Gmm {
        push("bic", best_by(scores, |s| s.bic.unwrap_or(f64::NAN), false), "lowest BIC");
    }
    push("silhouette", best_by(scores, |s| s.silhouette, true), "highest mean silhouette");
    push("calinski_harabasz", best_by(scores, |s| s.calinski_harabasz, true), "highest Calinski–Harabasz index");
    push("davies_bouldin", best_by(scores, |s| s.davies_bouldin, false), "lowest Davies–Bouldin index");
    if let Some(k) = elbow(scores) {
        push("elbow", (k, None), ELBOW_RULE);
    }
    let primary = if method == Method::Gmm { "bic" } else { "silhouette" };
    let mut votes: Vec<(usize, usize)> = Vec::new();
    for c in &choices {
        match votes.iter_mut().find(|v| v.0 == c.k) {
            Some(v) => v.1 += 1,
            None => votes.push((c.k, 1)),
        }
    }
    let primary_k = choices.iter().find(|c| c.criterion == primary).unwrap().k;
    // Most votes first; ties: the primary's k, then the smaller k.
    votes.sort_by(|a, b| b.1.cmp(&a.1).then((b.0 == primary_k).cmp(&(a.0 == primary_k))).then(a.0.cmp(&b.0)));
    let k = if method == Method::Gmm { primary_k } else { votes[0].0 };
    let primary_second = seconds.iter().find(|s| s.0 == primary).and_then(|s| s.1);
    let runner_up = if method == Method::Gmm { primary_second } else { votes.get(1).map(|v| v.0).or(primary_second) };
    let agree = votes.len() == 1;
    let name = |c: &str| match c {
        "bic" => "BIC",
        "silhouette" => "the silhouette",
        "calinski_harabasz" => "Calinski–Harabasz",
        "davies_bouldin" => "Davies–Bouldin",
        _ => "the inertia elbow",
    };
    let note = if agree {
        format!("every criterion chooses k = {k}")
    } else {
        let parts: Vec<String> = votes
            .iter()
            .map(|(vk, _)| {
                let who: Vec<&str> = choices.iter().filter(|c| c.k == *vk).map(|c| name(c.criterion)).collect();
                format!("{} {} k = {vk}", who.join(" and "), if who.len() > 1 { "choose" } else { "chooses" })
            })
            .collect();
        format!("the criteria disagree: {}", parts.join("; "))
    };
    let rule = if method == Method::Gmm {
        "the lowest BIC (Schwarz 1978), the likelihood-based criterion; the distance-based criteria are shown \
         beside it"
            .to_string()
    } else {
        format!(
            "the k chosen by most of the criteria ({}); ties go to {}",
            choices.iter().map(|c| name(c.criterion)).collect::<Vec<_>>().join(", "),
            name(primary)
        )
    };
    (choices, Recommendation { k, runner_up, rule, criteria_agree: agree, note })
}

/// One chart: title, how to read it, (k, value) points.
type Panel = (&'static str, &'static str, Vec<(usize, f64)>);

/// A self-contained HTML page (inline SVG, no script) with one chart per criterion
/// against k, the recommended k marked, and the rules in words.
pub fn chart_html(r: &ChooseKReport) -> String {
    use crate::segments::report::num;
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let mut panels: Vec<Panel> = vec![
        ("Inertia", "lower is tighter; look for the elbow", r.scores.iter().map(|s| (s.k, s.inertia)).collect()),
        ("Silhouette", "higher is better (−1 to 1)", r.scores.iter().map(|s| (s.k, s.silhouette)).collect()),
        ("Calinski–Harabasz", "higher is better", r.scores.iter().map(|s| (s.k, s.calinski_harabasz)).collect()),
        ("Davies–Bouldin", "lower is better", r.scores.iter().map(|s| (s.k, s.davies_bouldin)).collect()),
    ];
    if r.method == "gmm" {
        panels.insert(1, ("BIC", "lower is better", r.scores.iter().filter_map(|s| s.bic.map(|v| (s.k, v))).collect()));
        panels.insert(2, ("AIC", "lower is better", r.scores.iter().filter_map(|s| s.aic.map(|v| (s.k, v))).collect()));
    }
    let chosen = |title: &str| {
        let c = match title {
            "Inertia" => "elbow",
            "Silhouette" => "silhouette",
            "Calinski–Harabasz" => "calinski_harabasz",
            "Davies–Bouldin" => "davies_bouldin",
            "BIC" => "bic",
            _ => "",
        };
        r.choices.iter().find(|x| x.criterion == c).map(|x| x.k)
    };
    let (w, h, pad) = (420.0f64, 240.0f64, 48.0f64);
    let mut svgs = String::new();
    for (title, hint, pts) in &panels {
        let pts: Vec<(usize, f64)> = pts.iter().copied().filter(|p| p.1.is_finite()).collect();
        if pts.is_empty() {
            continue;
        }
        let (k0, k1) = (pts[0].0 as f64, pts.last().unwrap().0 as f64);
        let (lo, hi) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), p| (l.min(p.1), h.max(p.1)));
        let span = if hi > lo { hi - lo } else { 1.0 };
        let sx = |k: f64| pad + (w - 2.0 * pad) * if k1 > k0 { (k - k0) / (k1 - k0) } else { 0.5 };
        let sy = |v: f64| h - pad + -(h - 2.0 * pad) * (v - lo) / span;
        let path: Vec<String> = pts.iter().map(|(k, v)| format!("{:.1},{:.1}", sx(*k as f64), sy(*v))).collect();
        let mut g = format!(
            "<figure><svg viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{t} against k\">\
             <line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#999\"/>\
             <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"#999\"/>",
            t = esc(title),
            b = h - pad,
            r = w - pad
        );
        if let Some(k) = chosen(title) {
            let x = sx(k as f64);
            g += &format!(
                "<line x1=\"{x:.1}\" y1=\"{pad}\" x2=\"{x:.1}\" y2=\"{b}\" stroke=\"#d95f02\" stroke-dasharray=\"4 3\"/>\
                 <text x=\"{x:.1}\" y=\"{ty}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#d95f02\">k = {k}</text>",
                b = h - pad,
                ty = pad - 6.0
            );
        }
        g += &format!("<polyline fill=\"none\" stroke=\"#1b6ca8\" stroke-width=\"2\" points=\"{}\"/>", path.join(" "));
        for (k, v) in &pts {
            g += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#1b6ca8\"><title>k = {k}: {}</title></circle>",
                sx(*k as f64),
                sy(*v),
                num(*v)
            );
        }
        g += &format!(
            "<text x=\"{pad}\" y=\"{y}\" font-size=\"11\">k = {}</text><text x=\"{rx}\" y=\"{y}\" font-size=\"11\" \
             text-anchor=\"end\">k = {}</text><text x=\"4\" y=\"{ty}\" font-size=\"11\">{}</text>\
             <text x=\"4\" y=\"{by}\" font-size=\"11\">{}</text></svg>",
            pts[0].0,
            pts.last().unwrap().0,
            num(hi),
            num(lo),
            y = h - pad + 16.0,
            rx = w - pad,
            ty = pad - 20.0,
            by = h - pad + 30.0
        );
        g += &format!("<figcaption><b>{}</b>: {}</figcaption></figure>", esc(title), esc(hint));
        svgs += &g;
    }
    let rows: String = r
        .scores
        .iter()
        .map(|s| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{}</tr>",
                s.k,
                num(s.inertia),
                num(s.silhouette),
                num(s.calinski_harabasz),
                num(s.davies_bouldin),
                if r.method == "gmm" {
                    format!("<td>{}</td><td>{}</td>", num(s.bic.unwrap_or(f64::NAN)), num(s.aic.unwrap_or(f64::NAN)))
                } else {
                    String::new()
                }
            )
        })
        .collect();
    let choices: String =
        r.choices.iter().map(|c| format!("<li>{}: k = {} ({})</li>", esc(c.criterion), c.k, esc(c.rule))).collect();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>microseg choose-k</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}figure{{display:inline-block;margin:0 1em 1em 0}}\
         table{{border-collapse:collapse}}td,th{{padding:2px 8px;text-align:right;border-bottom:1px solid #ddd}}</style></head>\
         <body><h1>How many segments? Recommended k = {k}</h1><p>{note}.</p><p>Rule: {rule}. Runner-up: {ru}.</p>\
         <p>{method} fits on {m} sampled rows of {n} (seed {seed}); silhouette on {sil} of them; features: {feats}.</p>\
         {svgs}<h2>Each criterion's choice</h2><ul>{choices}</ul><h2>Scores</h2><table><tr><th>k</th><th>inertia</th>\
         <th>silhouette</th><th>Calinski–Harabasz</th><th>Davies–Bouldin</th>{gh}</tr>{rows}</table></body></html>\n",
        k = r.recommendation.k,
        note = {
            let n = esc(&r.recommendation.note);
            let mut c = n.chars();
            c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
        },
        rule = esc(&r.recommendation.rule),
        ru = r.recommendation.runner_up.map_or("none".to_string(), |k| format!("k = {k}")),
        method = if r.method == "gmm" { "Gaussian-mixture" } else { "k-means" },
        m = r.sample_rows,
        n = r.input_rows,
        seed = r.seed,
        sil = r.silhouette_rows,
        feats = esc(&r.features.join(", ")),
        gh = if r.method == "gmm" { "<th>BIC</th><th>AIC</th>" } else { "" },
    )
}
