//! "Buy 'til you die" models fitted on per-subscriber purchase summaries:
//!
//! - **BG/NBD** (Fader, Hardie & Lee 2005, "Counting your customers the easy way"): while
//!   alive a customer buys as a Poisson process of rate λ ~ Gamma(r, α); after each repeat
//!   purchase she drops out with probability p ~ Beta(a, b). The data per customer are
//!   (x, t_x, T): repeat purchases, the time of the last one and the time since the first,
//!   in one time unit.
//! - **Gamma-Gamma** (Fader & Hardie 2013, "The Gamma-Gamma model of monetary value"):
//!   the mean value m̄ of a customer's x repeat purchases, with transaction values
//!   Gamma(p, ν) and ν ~ Gamma(q, γ) across customers.
//!
//! Both are fitted by maximum likelihood (L-BFGS from `argmin` on log-parameters, with
//! analytic gradients). The BG/NBD likelihood depends on the data only through
//! (x, t_x, T), so identical triples are grouped: the fit costs the number of distinct
//! triples, not of customers. The Gamma-Gamma likelihood's terms that depend only on x
//! are computed once per distinct x.

use argmin::core::{CostFunction, Executor, Gradient, State, TerminationReason, TerminationStatus};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use statrs::function::gamma::{digamma, ln_gamma};

use crate::error::{Error, Result};

/// How an optimiser run ended, kept in the traits model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Convergence {
    pub converged: bool,
    pub iterations: u64,
    /// The L2 norm of the gradient of the mean log-likelihood (in log-parameters) at the end.
    pub gradient_norm: f64,
    pub reason: String,
}

/// Fitted BG/NBD parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BgNbd {
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
    /// The total log-likelihood at the optimum.
    pub log_likelihood: f64,
    pub n_customers: u64,
    /// Distinct (x, t_x, T) triples the likelihood was evaluated on.
    pub n_groups: u64,
    pub convergence: Convergence,
    /// Parameters the data do not pin down ([`weakly_identified`]), each with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weakly_identified: Vec<String>,
}

/// Fitted Gamma-Gamma parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GammaGamma {
    pub p: f64,
    pub q: f64,
    pub gamma: f64,
    pub log_likelihood: f64,
    pub n_customers: u64,
    pub convergence: Convergence,
}

/// One distinct BG/NBD summary and how many customers share it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Triple {
    pub x: f64,
    pub t_x: f64,
    pub t: f64,
    pub weight: f64,
}

/// Group customers' (x, t_x, T) summaries by identical values (exact bit patterns).
pub fn group_triples(items: impl Iterator<Item = (u32, f64, f64)>) -> Vec<Triple> {
    let mut map: foldhash::HashMap<(u32, u64, u64), f64> = Default::default();
    for (x, tx, t) in items {
        *map.entry((x, tx.to_bits(), t.to_bits())).or_insert(0.0) += 1.0;
    }
    let mut v: Vec<Triple> = map
        .into_iter()
        .map(|((x, tx, t), w)| Triple { x: x as f64, t_x: f64::from_bits(tx), t: f64::from_bits(t), weight: w })
        .collect();
    // A fixed order, so the sums (and the fit) repeat exactly.
    v.sort_by(|p, q| p.x.total_cmp(&q.x).then(p.t_x.total_cmp(&q.t_x)).then(p.t.total_cmp(&q.t)));
    v
}

fn log_sum_exp(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    let m = a.max(b);
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// The BG/NBD log-likelihood of one customer and its gradient in (r, α, a, b).
fn bgnbd_ll(r: f64, alpha: f64, a: f64, b: f64, x: f64, tx: f64, t: f64) -> (f64, [f64; 4]) {
    let a1 = ln_gamma(r + x) - ln_gamma(r) + r * alpha.ln();
    let a2 = ln_gamma(b + x) + ln_gamma(a + b) - ln_gamma(b) - ln_gamma(a + b + x);
    let l3 = -(r + x) * (alpha + t).ln();
    let l4 = if x > 0.0 { a.ln() - (b + x - 1.0).ln() - (r + x) * (alpha + tx).ln() } else { f64::NEG_INFINITY };
    let lse = log_sum_exp(l3, l4);
    let w3 = (l3 - lse).exp();
    let w4 = if x > 0.0 { (l4 - lse).exp() } else { 0.0 };
    let dr = digamma(r + x) - digamma(r) + alpha.ln() - w3 * (alpha + t).ln() - w4 * (alpha + tx).ln();
    let dalpha = r / alpha - w3 * (r + x) / (alpha + t) - w4 * (r + x) / (alpha + tx);
    let da = digamma(a + b) - digamma(a + b + x) + w4 / a;
    let db = digamma(b + x) + digamma(a + b)
        - digamma(b)
        - digamma(a + b + x)
        - if x > 0.0 { w4 / (b + x - 1.0) } else { 0.0 };
    (a1 + a2 + lse, [dr, dalpha, da, db])
}

/// The BG/NBD total log-likelihood of grouped data at (r, α, a, b).
pub fn bgnbd_log_likelihood(data: &[Triple], r: f64, alpha: f64, a: f64, b: f64) -> f64 {
    data.iter().map(|g| g.weight * bgnbd_ll(r, alpha, a, b, g.x, g.t_x, g.t).0).sum()
}

/// Rows per rayon task for the likelihood sums (fixed, so the sums repeat exactly).
const CHUNK: usize = 4096;

struct BgNbdProblem<'a> {
    data: &'a [Triple],
    total: f64,
}

impl Objective for BgNbdProblem<'_> {
    fn eval(&self, theta: &[f64]) -> (f64, Vec<f64>) {
        let p: Vec<f64> = theta.iter().map(|t| t.exp()).collect();
        let parts: Vec<(f64, [f64; 4])> = self
            .data
            .par_chunks(CHUNK)
            .map(|c| {
                let mut ll = 0.0;
                let mut g = [0.0; 4];
                for d in c {
                    let (l, gd) = bgnbd_ll(p[0], p[1], p[2], p[3], d.x, d.t_x, d.t);
                    ll += d.weight * l;
                    for j in 0..4 {
                        g[j] += d.weight * gd[j];
                    }
                }
                (ll, g)
            })
            .collect();
        let mut ll = 0.0;
        let mut g = [0.0; 4];
        for (l, gd) in parts {
            ll += l;
            for j in 0..4 {
                g[j] += gd[j];
            }
        }
        let cost = -ll / self.total;
        let grad = (0..4).map(|j| -g[j] * p[j] / self.total).collect();
        (if cost.is_finite() { cost } else { f64::INFINITY }, grad)
    }
}

/// Log-parameters beyond ±this are a degenerate fit (a parameter running off to 0 or ∞).
const MAX_LOG_PARAM: f64 = 30.0;

/// A smooth objective in log-parameters: minus the mean log-likelihood and its gradient.
trait Objective {
    fn eval(&self, theta: &[f64]) -> (f64, Vec<f64>);
}

/// The most objective evaluations one fit may make: 1000 L-BFGS iterations at about ten
/// line-search steps each. argmin's More-Thuente line search has no step limit of its own,
/// and on a degenerate likelihood (non-finite values along the search direction) it can
/// step forever; past this budget the evaluation fails, which ends the line search and the
/// fit with the best parameters found so far, reported as not converged.
const MAX_EVALUATIONS: u64 = 10_000;

/// An [`Objective`] as argmin's cost and gradient, counting evaluations against
/// [`MAX_EVALUATIONS`].
struct Argmin<'a, O> {
    objective: &'a O,
    evaluations: std::sync::atomic::AtomicU64,
}

impl<'a, O: Objective> Argmin<'a, O> {
    fn new(objective: &'a O) -> Self {
        Argmin { objective, evaluations: 0.into() }
    }

    fn eval(&self, theta: &[f64]) -> std::result::Result<(f64, Vec<f64>), argmin::core::Error> {
        let n = self.evaluations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n >= MAX_EVALUATIONS {
            return Err(argmin::core::Error::msg(format!(
                "{MAX_EVALUATIONS} likelihood evaluations without converging"
            )));
        }
        Ok(self.objective.eval(theta))
    }
}

impl<O: Objective> CostFunction for Argmin<'_, O> {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, theta: &Self::Param) -> std::result::Result<f64, argmin::core::Error> {
        Ok(self.eval(theta)?.0)
    }
}

impl<O: Objective> Gradient for Argmin<'_, O> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;
    fn gradient(&self, theta: &Self::Param) -> std::result::Result<Vec<f64>, argmin::core::Error> {
        Ok(self.eval(theta)?.1)
    }
}

fn minimise<O: Objective>(problem: &O, start: Vec<f64>) -> Result<(Vec<f64>, Convergence)> {
    let solver = LBFGS::new(MoreThuenteLineSearch::new(), 10)
        .with_tolerance_grad(1e-9)
        .and_then(|s| s.with_tolerance_cost(1e-14))
        .map_err(|e| Error::Runtime(format!("optimiser setup: {e}")))?;
    let res = Executor::new(Argmin::new(problem), solver)
        .configure(|s| s.param(start).max_iters(1000))
        .run()
        .map_err(|e| Error::Data(format!("the maximum-likelihood fit failed: {e}")))?;
    let state = res.state();
    let best = state.get_best_param().cloned().ok_or_else(|| Error::Data("the fit found no parameters".into()))?;
    let (_, g) = problem.eval(&best);
    let gradient_norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
    let reason = match state.get_termination_status() {
        TerminationStatus::Terminated(r) => r.text().to_string(),
        TerminationStatus::NotTerminated => "not terminated".to_string(),
    };
    let solver_converged =
        matches!(state.get_termination_status(), TerminationStatus::Terminated(TerminationReason::SolverConverged));
    let in_range = best.iter().all(|t| t.is_finite() && t.abs() < MAX_LOG_PARAM);
    let converged = in_range && (solver_converged || gradient_norm < 1e-6);
    Ok((best, Convergence { converged, iterations: state.get_iter(), gradient_norm, reason }))
}

/// Fit BG/NBD by maximum likelihood on grouped (x, t_x, T) data.
pub fn fit_bgnbd(data: &[Triple]) -> Result<BgNbd> {
    let total: f64 = data.iter().map(|g| g.weight).sum();
    if total < 2.0 {
        return Err(Error::Data("BG/NBD needs at least two customers with a purchase".into()));
    }
    if !data.iter().any(|g| g.x > 0.0) {
        return Err(Error::Data(
            "BG/NBD needs repeat purchases: no customer bought on more than one day before the as-of time".into(),
        ));
    }
    // Start where the rate scale matches the data: α at the mean age.
    let mean_t = data.iter().map(|g| g.weight * g.t).sum::<f64>() / total;
    let start = vec![0.0, mean_t.max(1e-3).ln(), 0.0, 0.0];
    let (theta, convergence) = minimise(&BgNbdProblem { data, total }, start)?;
    let p: Vec<f64> = theta.iter().map(|t| t.exp()).collect();
    let log_likelihood = bgnbd_log_likelihood(data, p[0], p[1], p[2], p[3]);
    Ok(BgNbd {
        r: p[0],
        alpha: p[1],
        a: p[2],
        b: p[3],
        log_likelihood,
        n_customers: total as u64,
        n_groups: data.len() as u64,
        convergence,
        weakly_identified: weakly_identified(&p, log_likelihood, &["r", "alpha", "a", "b"], |q| {
            bgnbd_log_likelihood(data, q[0], q[1], q[2], q[3])
        }),
    })
}

/// The log-likelihood drop under which a parameter change is not told apart from the
/// optimum: half the 95 % point of χ² with one degree of freedom (1.92).
const FLAT_DROP: f64 = 0.5 * 3.841;

/// The parameters whose value the data do not pin down: moving one tenfold either way,
/// the others held, costs less log-likelihood than [`FLAT_DROP`]. With the others held the
/// likelihood falls at least as fast as along the ridge, so a parameter named here is
/// surely weak; such a fit (for example a → 0 with b free, where the data show almost no
/// dropout) has forecasts the data do not support, whatever the optimiser reports.
fn weakly_identified(p: &[f64], best: f64, names: &[&str], ll: impl Fn(&[f64]) -> f64) -> Vec<String> {
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        for (factor, way) in [(0.1, "a tenth"), (10.0, "ten times")] {
            let mut q = p.to_vec();
            q[i] *= factor;
            let drop = best - ll(&q);
            if drop.is_finite() && drop < FLAT_DROP {
                out.push(format!("{name} = {:.4}: {way} that value lowers the log-likelihood by only {drop:.2}", p[i]));
                break;
            }
        }
    }
    out
}

/// The Gauss hypergeometric function ₂F₁(a, b; c; z) for 0 ≤ z < 1 by its series
/// (the arguments BG/NBD needs: z = t/(α+T+t)). The terms shrink geometrically as z^n.
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
    debug_assert!((0.0..1.0).contains(&z));
    let mut term = 1.0;
    let mut sum = 1.0;
    for n in 0..1_000_000 {
        let n = n as f64;
        term *= (a + n) * (b + n) / ((c + n) * (n + 1.0)) * z;
        sum += term;
        if term.abs() <= 1e-16 * sum.abs() {
            break;
        }
    }
    sum
}

impl BgNbd {
    /// P(alive at T | x, t_x, T).
    pub fn p_alive(&self, x: f64, tx: f64, t: f64) -> f64 {
        if x == 0.0 {
            return 1.0;
        }
        let (r, alpha, a, b) = (self.r, self.alpha, self.a, self.b);
        let log_ratio = (r + x) * ((alpha + t).ln() - (alpha + tx).ln());
        let term = (a / (b + x - 1.0)).ln() + log_ratio;
        1.0 / (1.0 + term.exp())
    }

    /// E[purchases in (T, T + h] | x, t_x, T] (FHL 2005, eq. 10), h in the model's unit.
    pub fn expected_purchases(&self, h: f64, x: f64, tx: f64, t: f64) -> f64 {
        if h <= 0.0 {
            return 0.0;
        }
        let (r, alpha, a, b) = (self.r, self.alpha, self.a, self.b);
        let z = h / (alpha + t + h);
        let f = hyp2f1(r + x, b + x, a + b + x - 1.0, z);
        let head = (a + b + x - 1.0) / (a - 1.0);
        let body = 1.0 - ((alpha + t) / (alpha + t + h)).powf(r + x) * f;
        let denom = if x > 0.0 { 1.0 + (a / (b + x - 1.0)) * ((alpha + t) / (alpha + tx)).powf(r + x) } else { 1.0 };
        (head * body / denom).max(0.0)
    }
}

/// Fit Gamma-Gamma by maximum likelihood on (x, m̄) of customers with x > 0 and m̄ > 0.
pub fn fit_gamma_gamma(data: &[(u32, f64)]) -> Result<GammaGamma> {
    if data.len() < 2 {
        return Err(Error::Data(
            "Gamma-Gamma needs at least two customers with a repeat purchase of positive value".into(),
        ));
    }
    // Group by x: Σ ln m̄ and the count per distinct x; ln(γ + m̄x) stays per customer.
    let mut by_x: std::collections::BTreeMap<u32, (f64, f64)> = Default::default();
    for &(x, m) in data {
        let e = by_x.entry(x).or_insert((0.0, 0.0));
        e.0 += 1.0;
        e.1 += m.ln();
    }
    let groups: Vec<(f64, f64, f64)> = by_x.into_iter().map(|(x, (n, s))| (x as f64, n, s)).collect();
    let pairs: Vec<(f64, f64)> = data.iter().map(|&(x, m)| (x as f64, m)).collect();
    let total = data.len() as f64;
    let mean_m = pairs.iter().map(|p| p.1).sum::<f64>() / total;
    let start = vec![0.0, 0.0, mean_m.max(1e-9).ln()];
    let problem = GgProblem { groups: &groups, pairs: &pairs, total };
    let (theta, convergence) = minimise(&problem, start)?;
    let p: Vec<f64> = theta.iter().map(|t| t.exp()).collect();
    let ll = -problem.eval(&theta).0 * total;
    Ok(GammaGamma { p: p[0], q: p[1], gamma: p[2], log_likelihood: ll, n_customers: data.len() as u64, convergence })
}

struct GgProblem<'a> {
    /// (x, customers with that x, Σ ln m̄ over them).
    groups: &'a [(f64, f64, f64)],
    /// (x, m̄) per customer.
    pairs: &'a [(f64, f64)],
    total: f64,
}

impl Objective for GgProblem<'_> {
    fn eval(&self, theta: &[f64]) -> (f64, Vec<f64>) {
        let (p, q, g) = (theta[0].exp(), theta[1].exp(), theta[2].exp());
        let mut ll = 0.0;
        let mut grad = [0.0; 3];
        for &(x, n, sum_ln_m) in self.groups {
            let px = p * x;
            ll +=
                n * (ln_gamma(px + q) - ln_gamma(px) - ln_gamma(q) + q * g.ln() + px * x.ln()) + (px - 1.0) * sum_ln_m;
            grad[0] += n * x * (digamma(px + q) - digamma(px) + x.ln()) + x * sum_ln_m;
            grad[1] += n * (digamma(px + q) - digamma(q) + g.ln());
            grad[2] += n * q / g;
        }
        let parts: Vec<[f64; 4]> = self
            .pairs
            .par_chunks(CHUNK)
            .map(|c| {
                let mut s = [0.0; 4];
                for &(x, m) in c {
                    let l = (g + m * x).ln();
                    let px_q = p * x + q;
                    s[0] -= px_q * l;
                    s[1] -= x * l;
                    s[2] -= l;
                    s[3] -= px_q / (g + m * x);
                }
                s
            })
            .collect();
        for s in parts {
            ll += s[0];
            grad[0] += s[1];
            grad[1] += s[2];
            grad[2] += s[3];
        }
        let cost = -ll / self.total;
        let scale = [p, q, g];
        let grad = (0..3).map(|j| -grad[j] * scale[j] / self.total).collect();
        (if cost.is_finite() { cost } else { f64::INFINITY }, grad)
    }
}

impl GammaGamma {
    /// E[M | x, m̄] (Fader & Hardie 2013, eq. 5); for x = 0 the population mean pγ/(q − 1).
    pub fn expected_value(&self, x: f64, m: f64) -> f64 {
        let (p, q, g) = (self.p, self.q, self.gamma);
        if x > 0.0 {
            (g + m * x) * p / (p * x + q - 1.0)
        } else if q > 1.0 {
            p * g / (q - 1.0)
        } else {
            f64::NAN
        }
    }
}
