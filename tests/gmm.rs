//! Gaussian mixtures: agreement with scikit-learn 1.9.1 (numpy 2.4.6) from the same
//! start (fixtures by scripts/sklearn_gmm_reference.py), the E-step against an
//! independent f64 reference, and the GPU E-step against its CPU twin.

use microseg::backend::Backend;
use microseg::backend::cpu::CpuBackend;
use microseg::gmm::{self, CovarianceType, GmmInit, GmmParams, Mixture};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::util::{load, rel, repo};

const TYPES: [CovarianceType; 4] =
    [CovarianceType::Full, CovarianceType::Diag, CovarianceType::Spherical, CovarianceType::Tied];

fn read_csv(path: &std::path::Path, dim: usize) -> microseg::backend::Centroids {
    let text = std::fs::read_to_string(path).unwrap();
    let data: Vec<f32> = text.lines().flat_map(|l| l.split(',').map(|v| v.trim().parse::<f32>().unwrap())).collect();
    microseg::backend::Centroids::new(data, dim)
}

fn check_case(case: &str) {
    let dir = repo().join("tests/data/sklearn_gmm").join(case);
    for cov in TYPES {
        let exp: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{}.json", cov.name()))).unwrap()).unwrap();
        let feats: Vec<&str> = exp["features"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let (x, _) = load(&repo().join(exp["input"].as_str().unwrap()), &feats, None);
        let k = exp["k"].as_u64().unwrap() as usize;
        let init = read_csv(&dir.join("init.csv"), x.dim);
        let p = GmmParams {
            covariance: cov,
            reg_covar: exp["reg_covar"].as_f64().unwrap(),
            tol: exp["tol"].as_f64().unwrap(),
            max_iter: exp["max_iter"].as_u64().unwrap() as usize,
            init: GmmInit::Given(init.clone()),
            ..GmmParams::new(k)
        };
        let mut nearest = vec![Default::default(); x.n()];
        CpuBackend::default().assign(&x.data, &init, &mut nearest).unwrap();
        let init_labels = exp["init_labels"].as_array().unwrap();
        assert!(nearest.iter().zip(init_labels).all(|(a, b)| a.label as u64 == b.as_u64().unwrap()), "{case}: start");
        let f = gmm::fit(&CpuBackend::default(), &x, None, &p).unwrap();
        let tag = format!("{case}/{}", cov.name());
        let score = exp["score"].as_f64().unwrap();
        let lower = exp["lower_bound"].as_f64().unwrap();
        assert!(rel(f.log_likelihood, score) <= 1e-6, "{tag}: log-likelihood {} vs {score}", f.log_likelihood);
        assert!(rel(f.lower_bound, lower) <= 1e-6, "{tag}: lower bound {} vs {lower}", f.lower_bound);
        assert_eq!(f.iterations as u64, exp["n_iter"].as_u64().unwrap(), "{tag}: iterations");
        assert_eq!(f.converged, exp["converged"].as_bool().unwrap(), "{tag}");
        assert!(rel(f.bic(), exp["bic"].as_f64().unwrap()) <= 1e-6, "{tag}: BIC {}", f.bic());
        assert!(rel(f.aic(), exp["aic"].as_f64().unwrap()) <= 1e-6, "{tag}: AIC {}", f.aic());
        let labels = exp["labels"].as_array().unwrap();
        let agree = f.labels.iter().zip(labels).filter(|(a, b)| **a as u64 == b.as_u64().unwrap()).count();
        assert!(agree as f64 >= 0.999 * x.n() as f64, "{tag}: {agree} of {} labels agree", x.n());
        for (j, w) in exp["weights"].as_array().unwrap().iter().enumerate() {
            let w = w.as_f64().unwrap();
            assert!((f.mixture.weights[j] - w).abs() <= 1e-6 * w.max(1e-3), "{tag}: weight {j}");
        }
        eprintln!(
            "{tag}: log-likelihood rel {:.1e}, {} iterations, {} of {} labels agree",
            rel(f.log_likelihood, score),
            f.iterations,
            agree,
            x.n()
        );
    }
}

#[test]
fn matches_sklearn_on_generated_blobs() {
    check_case("blobs");
}

#[test]
fn matches_sklearn_on_generated_subscribers() {
    check_case("generated");
}

#[test]
fn matches_sklearn_on_online_retail() {
    check_case("online_retail");
}

#[test]
fn matches_sklearn_on_bank_marketing() {
    check_case("bank");
}

/// A random mixture of each covariance type (well-conditioned, full matrices from
/// random factors).
fn random_mixture(cov: CovarianceType, k: usize, d: usize, seed: u64) -> Mixture {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let spd = |rng: &mut ChaCha8Rng| {
        let a: Vec<f64> = (0..d * d).map(|_| rng.random::<f64>() - 0.5).collect();
        let mut m = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                m[i * d + j] =
                    (0..d).map(|p| a[i * d + p] * a[j * d + p]).sum::<f64>() + if i == j { 0.3 } else { 0.0 };
            }
        }
        m
    };
    let covariances = match cov {
        CovarianceType::Full => (0..k).flat_map(|_| spd(&mut rng)).collect(),
        CovarianceType::Tied => spd(&mut rng),
        CovarianceType::Diag => (0..k * d).map(|_| 0.2 + rng.random::<f64>() * 3.0).collect(),
        CovarianceType::Spherical => (0..k).map(|_| 0.2 + rng.random::<f64>() * 3.0).collect(),
    };
    let mut weights: Vec<f64> = (0..k).map(|_| 0.1 + rng.random::<f64>()).collect();
    let s: f64 = weights.iter().sum();
    weights.iter_mut().for_each(|w| *w /= s);
    let means = (0..k * d).map(|_| (rng.random::<f64>() - 0.5) * 8.0).collect();
    Mixture { covariance: cov, k, dim: d, weights, means, covariances }
}

/// Independent f64 reference: the density from the covariance itself (inverse and
/// determinant by Gauss–Jordan elimination with partial pivoting), not from Cholesky
/// factors of the precision.
fn reference_log_densities(m: &Mixture, x: &[f64]) -> Vec<f64> {
    let d = m.dim;
    (0..m.k)
        .map(|j| {
            let mut a = m.covariance_matrix(j);
            let mut inv: Vec<f64> = (0..d * d).map(|i| if i % (d + 1) == 0 { 1.0 } else { 0.0 }).collect();
            let mut log_det = 0.0;
            for c in 0..d {
                let p = (c..d).max_by(|&r, &s| a[r * d + c].abs().total_cmp(&a[s * d + c].abs())).unwrap();
                for t in 0..d {
                    a.swap(c * d + t, p * d + t);
                    inv.swap(c * d + t, p * d + t);
                }
                let piv = a[c * d + c];
                log_det += piv.abs().ln();
                for t in 0..d {
                    a[c * d + t] /= piv;
                    inv[c * d + t] /= piv;
                }
                for r in 0..d {
                    if r != c {
                        let f = a[r * d + c];
                        for t in 0..d {
                            a[r * d + t] -= f * a[c * d + t];
                            inv[r * d + t] -= f * inv[c * d + t];
                        }
                    }
                }
            }
            let diff: Vec<f64> = (0..d).map(|t| x[t] - m.mean(j)[t]).collect();
            let q: f64 = (0..d).map(|a| (0..d).map(|b| diff[a] * inv[a * d + b] * diff[b]).sum::<f64>()).sum();
            m.weights[j].ln() - 0.5 * (d as f64 * (2.0 * std::f64::consts::PI).ln() + log_det + q)
        })
        .collect()
}

fn random_rows(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n * d).map(|_| (rng.random::<f32>() - 0.5) * 12.0).collect()
}

#[test]
fn cpu_estep_matches_an_independent_f64_reference() {
    for (s, cov) in TYPES.into_iter().enumerate() {
        for (k, d) in [(1, 1), (3, 2), (7, 5), (16, 13)] {
            let m = random_mixture(cov, k, d, 100 + s as u64 * 10 + k as u64);
            let t = m.terms().unwrap();
            let n = 301;
            let x = random_rows(n, d, s as u64 + 7);
            let mut resp = vec![0.0f32; n * k];
            let mut ln = vec![0.0f64; n];
            CpuBackend::default().gmm_estep(&x, 0..n, &t, &mut resp, &mut ln).unwrap();
            for i in 0..n {
                let row: Vec<f64> = x[i * d..(i + 1) * d].iter().map(|v| *v as f64).collect();
                let wlp = reference_log_densities(&m, &row);
                let max = wlp.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + wlp.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                assert!(
                    (ln[i] - lse).abs() <= 1e-9 * lse.abs().max(1.0),
                    "{cov:?} k={k} d={d} row {i}: {} vs {lse}",
                    ln[i]
                );
                for j in 0..k {
                    let r = (wlp[j] - lse).exp();
                    assert!((resp[i * k + j] as f64 - r).abs() <= 1e-6, "{cov:?} k={k} d={d} row {i} comp {j}");
                }
            }
        }
    }
}

/// Rows drawn from the mixture itself (component i mod k, x = μ + L·z with z a sum of
/// uniforms, L the covariance's Cholesky factor): data a fit actually sees, where the
/// rows that two components share have moderate Mahalanobis terms.
fn mixture_rows(m: &Mixture, n: usize, seed: u64) -> Vec<f32> {
    let d = m.dim;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n * d);
    for i in 0..n {
        let j = i % m.k;
        let l = microseg::gmm::linalg::cholesky(&m.covariance_matrix(j), d).unwrap();
        let z: Vec<f64> = (0..d).map(|_| (0..4).map(|_| rng.random::<f64>() - 0.5).sum::<f64>() * 1.7).collect();
        for a in 0..d {
            out.push((m.mean(j)[a] + (0..=a).map(|b| l[a * d + b] * z[b]).sum::<f64>()) as f32);
        }
    }
    out
}

#[test]
fn gpu_estep_matches_the_cpu_twin() {
    for (name, b) in crate::backend::backends().into_iter().filter(|(n, _)| n.starts_with("wgpu")) {
        for (s, cov) in TYPES.into_iter().enumerate() {
            for (k, d) in [(1, 3), (5, 4), (12, 16), (33, 7)] {
                let m = random_mixture(cov, k, d, 200 + s as u64 * 10 + k as u64);
                let t = m.terms().unwrap();
                let n = 1037;
                let x = mixture_rows(&m, n, s as u64 + 17);
                let (mut r_cpu, mut r_gpu) = (vec![0.0f32; n * k], vec![0.0f32; n * k]);
                let (mut l_cpu, mut l_gpu) = (vec![0.0f64; n], vec![0.0f64; n]);
                CpuBackend::default().gmm_estep(&x, 0..n, &t, &mut r_cpu, &mut l_cpu).unwrap();
                b.gmm_estep(&x, 0..n, &t, &mut r_gpu, &mut l_gpu).unwrap();
                let worst = r_cpu.iter().zip(&r_gpu).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(worst <= 1e-5, "{name} {cov:?} k={k} d={d}: responsibilities differ by {worst}");
                let worst_ln =
                    l_cpu.iter().zip(&l_gpu).map(|(a, b)| (a - b).abs() / a.abs().max(1.0)).fold(0.0, f64::max);
                assert!(worst_ln <= 1e-5, "{name} {cov:?} k={k} d={d}: log densities differ by {worst_ln}");
            }
        }
    }
}

#[test]
fn integer_weights_equal_repeated_rows() {
    let x = crate::util::blobs(600, 3, 3, 6.0, 9);
    let w: Vec<f32> = (0..x.n()).map(|i| (i % 3) as f32).collect();
    let mut rows = Vec::new();
    for i in 0..x.n() {
        for _ in 0..(i % 3) {
            rows.extend_from_slice(&x.data[i * 3..(i + 1) * 3]);
        }
    }
    let rep = microseg::features::Matrix::new(rows, 3);
    let init = microseg::backend::Centroids::new(x.data[..9].to_vec(), 3);
    for cov in TYPES {
        let p = GmmParams { covariance: cov, init: GmmInit::Given(init.clone()), ..GmmParams::new(3) };
        let a = gmm::fit(&CpuBackend::default(), &x, Some(&w), &p).unwrap();
        let b = gmm::fit(&CpuBackend::default(), &rep, None, &p).unwrap();
        assert!(
            rel(a.log_likelihood, b.log_likelihood) < 1e-9,
            "{cov:?}: {} vs {}",
            a.log_likelihood,
            b.log_likelihood
        );
        assert_eq!(a.iterations, b.iterations);
    }
}

#[test]
fn singular_covariance_without_regularisation_is_a_clear_error() {
    // A constant feature: every component's variance along it is 0.
    let mut x = crate::util::blobs(200, 2, 2, 5.0, 3);
    for i in 0..x.n() {
        x.data[i * 2 + 1] = 4.0;
    }
    let p = GmmParams { reg_covar: 0.0, ..GmmParams::new(2) };
    let e = gmm::fit(&CpuBackend::default(), &x, None, &p).unwrap_err();
    assert_eq!(e.exit_code(), microseg::ExitCode::BadInput);
    assert!(e.to_string().contains("--reg-covar"), "{e}");
    // With the default regularisation it fits.
    gmm::fit(&CpuBackend::default(), &x, None, &GmmParams::new(2)).unwrap();
}

#[test]
fn an_emptied_component_is_frozen_with_weight_zero() {
    // Two tight blobs and three starting centroids, one far from every row: it takes
    // no row at the start and stays empty, deterministically.
    let x = crate::util::blobs(400, 2, 2, 3.0, 5);
    let mut c = x.data[..4].to_vec();
    c.extend([1e4, 1e4]);
    let p = GmmParams { init: GmmInit::Given(microseg::backend::Centroids::new(c, 2)), ..GmmParams::new(3) };
    let a = gmm::fit(&CpuBackend::default(), &x, None, &p).unwrap();
    let b = gmm::fit(&CpuBackend::default(), &x, None, &p).unwrap();
    assert_eq!(a.emptied, vec![(2, 0)]);
    assert_eq!(a.mixture.weights[2], 0.0);
    assert!(a.labels.iter().all(|l| *l != 2));
    assert_eq!(a.mixture, b.mixture);
}

/// The CLI end to end: `fit --method gmm` from the fixture's start equals scikit-learn,
/// `assign` writes the posterior columns (consistent with the model), and the later
/// commands take the model.
#[test]
fn cli_fits_assigns_and_profiles_a_mixture() {
    use crate::util::{json, ok, run};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = repo().join("tests/data/gmm_blobs.parquet");
    let fixture = repo().join("tests/data/sklearn_gmm/blobs");
    let exp: Value = serde_json::from_str(&std::fs::read_to_string(fixture.join("full.json")).unwrap()).unwrap();
    let (data_s, init_s) = (data.to_str().unwrap(), fixture.join("init.csv"));
    ok(&run(
        &[
            "--quiet",
            "fit",
            data_s,
            "--k",
            "4",
            "--method",
            "gmm",
            "--covariance",
            "full",
            "--scale",
            "none",
            "--init",
            init_s.to_str().unwrap(),
            "--model",
            "m.json",
        ],
        d,
    ));
    let m = json(&d.join("m.json"));
    assert_eq!(m["method"], "gmm");
    let schema = json(&repo().join("schemas/model.schema.json"));
    let v = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = v.iter_errors(&m).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "the mixture model breaks schemas/model.schema.json: {errors:?}");
    let ll = m["gmm"]["log_likelihood"].as_f64().unwrap();
    assert!(rel(ll, exp["score"].as_f64().unwrap()) <= 1e-6, "{ll}");
    assert_eq!(m["manifest"]["iterations"], exp["n_iter"]);
    assert!(rel(m["gmm"]["bic"].as_f64().unwrap(), exp["bic"].as_f64().unwrap()) <= 1e-6);
    ok(&run(&["--quiet", "assign", "--model", "m.json", data_s, "--out", "a.parquet", "--soft-top", "3"], d));
    let b = {
        let f = std::fs::File::open(d.join("a.parquet")).unwrap();
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap();
        let batches: Vec<_> = r.map(|b| b.unwrap()).collect();
        arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
    };
    let col = |n: &str| b.column_by_name(n).unwrap_or_else(|| panic!("no column {n}")).clone();
    let seg = col("segment");
    let seg = seg.as_any().downcast_ref::<arrow::array::Int32Array>().unwrap();
    let p = col("probability");
    let p = p.as_any().downcast_ref::<arrow::array::Float32Array>().unwrap();
    let p2 = col("second_probability");
    let p2 = p2.as_any().downcast_ref::<arrow::array::Float32Array>().unwrap();
    let ll_col = col("log_likelihood");
    let ll_col = ll_col.as_any().downcast_ref::<arrow::array::Float64Array>().unwrap();
    let labels = exp["labels"].as_array().unwrap();
    assert_eq!(labels.len(), b.num_rows());
    for (i, want) in labels.iter().enumerate() {
        assert!(p.value(i) >= p2.value(i) && p.value(i) <= 1.0 && p.value(i) >= 1.0 / 4.0 - 1e-6);
        assert_eq!(seg.value(i) as u64, want.as_u64().unwrap(), "row {i}");
    }
    let mean_ll: f64 = ll_col.values().iter().sum::<f64>() / b.num_rows() as f64;
    assert!(rel(mean_ll, ll) <= 1e-9, "assign's log-likelihoods average {mean_ll}, the model says {ll}");
    let tops = col("top_segments");
    let tops = tops.as_any().downcast_ref::<arrow::array::ListArray>().unwrap();
    assert_eq!(tops.value(0).len(), 3);
    ok(&run(&["--quiet", "profile", "--model", "m.json", data_s, "--out", "p.json"], d));
    ok(&run(&["--quiet", "report", "--model", "m.json", "--profile", "p.json", "--out", "r.html"], d));
    let html = std::fs::read_to_string(d.join("r.html")).unwrap();
    assert!(
        html.contains("Gaussian mixture (full covariances)") && html.contains("BIC"),
        "the report names the mixture"
    );
    ok(&run(
        &["--quiet", "fit", data_s, "--k", "4", "--method", "gmm", "--previous", "m.json", "--model", "m2.json"],
        d,
    ));
    assert!(json(&d.join("m2.json"))["lineage"].is_object());
}

#[test]
fn cli_refuses_contradictory_mixture_options() {
    use crate::util::{assert_fails, run};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = repo().join("tests/data/gmm_blobs.parquet");
    let data_s = data.to_str().unwrap();
    let cases: [(&[&str], i32, &str); 6] = [
        (&["--covariance", "full"], 2, "add --method gmm"),
        (&["--method", "gmm", "--metric", "cosine"], 2, "euclidean"),
        (&["--method", "gmm", "--algorithm", "hamerly"], 2, "--algorithm"),
        (&["--method", "gmm", "--reg-covar=-1"], 2, "--reg-covar"),
        (&["--method", "gmm", "--init", "random"], 2, "starts from k-means"),
        (&["--method", "gmm", "--k", "5000"], 3, "more than the 2400 usable rows"),
    ];
    for (extra, code, needle) in cases {
        let mut args = vec!["fit", data_s, "--model", "m.json"];
        if !extra.contains(&"--k") {
            args.extend(["--k", "4"]);
        }
        args.extend(extra);
        assert_fails(&run(&args, d), code, &[needle], d, &[]);
    }
    // --soft-top on a k-means model.
    crate::util::ok(&run(&["--quiet", "fit", data_s, "--k", "3", "--model", "km.json"], d));
    assert_fails(
        &run(&["assign", "--model", "km.json", data_s, "--out", "a.parquet", "--soft-top", "2"], d),
        2,
        &["--soft-top needs a Gaussian-mixture model"],
        d,
        &["km.json"],
    );
}

/// The screened CPU E-step (f32 SIMD screen with a proven bound, f64 for the rest)
/// equals the plain f64 E-step bit for bit: shapes, covariance types, data far from the
/// origin, tiny and huge scales, duplicate rows, rows far from every component.
#[test]
fn screened_estep_equals_the_plain_f64_estep_bit_for_bit() {
    for (s, cov) in TYPES.into_iter().enumerate() {
        for (k, d, offset, scale) in
            [(1, 1, 0.0, 1.0), (4, 3, 1e4, 1.0), (9, 8, -3e5, 1e-2), (16, 13, 0.0, 1e3), (24, 37, 50.0, 1e-3)]
        {
            let mut m = random_mixture(cov, k, d, 300 + s as u64 * 10 + k as u64);
            let f2 = scale * scale;
            m.means.iter_mut().for_each(|v| *v = *v * scale + offset);
            m.covariances.iter_mut().for_each(|v| *v *= f2);
            let t = m.terms().unwrap();
            let mut x = mixture_rows(&m, 203, s as u64 + 29);
            // Far outliers, duplicates, and a row at a mean.
            x.extend((0..d).map(|f| (offset + scale * 40.0 * (f as f64 + 1.0)) as f32));
            x.extend_from_within(..d);
            x.extend(m.mean(0).iter().map(|v| *v as f32));
            let n = x.len() / d;
            let (mut r1, mut r2) = (vec![0.0f32; n * k], vec![0.0f32; n * k]);
            let (mut l1, mut l2) = (vec![0.0f64; n], vec![0.0f64; n]);
            CpuBackend::default().gmm_estep(&x, 0..n, &t, &mut r1, &mut l1).unwrap();
            microseg::backend::cpu::gmm::estep_unscreened(&x, &t, &mut r2, &mut l2);
            assert_eq!(l1, l2, "{cov:?} k={k} d={d} offset {offset} scale {scale}: log densities");
            assert_eq!(r1, r2, "{cov:?} k={k} d={d} offset {offset} scale {scale}: responsibilities");
        }
    }
}

/// Drift on a mixture model reads weak membership from posteriors: the training data
/// itself is stable, and rows moved to between two components are flagged.
#[test]
fn drift_on_a_mixture_reads_weak_membership_from_posteriors() {
    use crate::util::{json, ok, run};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = repo().join("tests/data/gmm_blobs.parquet");
    let data_s = data.to_str().unwrap();
    ok(&run(
        &["--quiet", "fit", data_s, "--k", "4", "--method", "gmm", "--covariance", "full", "--model", "m.json"],
        d,
    ));
    let m = json(&d.join("m.json"));
    let share = m["gmm"]["low_probability_share"].as_f64().unwrap();
    assert!(share <= 0.1 + 1e-9, "{share}");
    let o = run(&["--quiet", "drift", "--model", "m.json", data_s, "--json"], d);
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["verdict"], "stable", "{r}");
    assert!((r["low_margin_share"].as_f64().unwrap() - share).abs() < 1e-3, "{r}");
    // Rows on the lines between component means, kept where `assign` finds their
    // membership ambiguous (posterior under 0.9): a population between segments.
    let means = m["gmm"]["means"].as_array().unwrap();
    let mean = |j: usize| -> Vec<f64> { means[j].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect() };
    let tf = m["features"].as_array().unwrap();
    let write = |path: &std::path::Path, rows: &[Vec<f32>]| {
        let arrays: Vec<(String, arrow::array::ArrayRef)> = (0..4)
            .map(|t| {
                let v: Vec<f32> = rows.iter().map(|r| r[t]).collect();
                (format!("f{t}"), std::sync::Arc::new(arrow::array::Float32Array::from(v)) as arrow::array::ArrayRef)
            })
            .collect();
        crate::util::write_parquet(path, arrays.iter().map(|(n, a)| (n.as_str(), a.clone())).collect());
    };
    let mut line = Vec::new();
    for a in 0..4 {
        for b in a + 1..4 {
            let (ma, mb) = (mean(a), mean(b));
            for i in 0..20_000 {
                let w = i as f64 / 20_000.0;
                line.push(
                    (0..4)
                        .map(|t| {
                            let z = ma[t] * (1.0 - w) + mb[t] * w;
                            (z * tf[t]["scale"].as_f64().unwrap() + tf[t]["center"].as_f64().unwrap()) as f32
                        })
                        .collect::<Vec<f32>>(),
                );
            }
        }
    }
    write(&d.join("line.parquet"), &line);
    ok(&run(&["--quiet", "assign", "--model", "m.json", "line.parquet", "--out", "line_a.parquet"], d));
    let f = std::fs::File::open(d.join("line_a.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap();
    let mut probs = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let p = b.column_by_name("probability").unwrap().clone();
        probs.extend(p.as_any().downcast_ref::<arrow::array::Float32Array>().unwrap().values().iter().copied());
    }
    let between: Vec<Vec<f32>> = line.iter().zip(&probs).filter(|(_, p)| **p < 0.9).map(|(r, _)| r.clone()).collect();
    assert!(between.len() >= 300, "only {} ambiguous rows on the lines between means", between.len());
    write(&d.join("between.parquet"), &between);
    let o = run(&["--quiet", "drift", "--model", "m.json", "between.parquet", "--json"], d);
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r["low_margin_share"].as_f64().unwrap() > 2.0 * share, "{r}");
    assert!(r["reasons"].as_array().unwrap().iter().any(|s| s.as_str().unwrap().contains("weakly assigned")), "{r}");
}

#[test]
fn kmeans_only_operations_refuse_a_mixture_and_singular_fits_write_nothing() {
    use crate::util::{assert_fails, ok, run};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = repo().join("tests/data/gmm_blobs.parquet");
    let data_s = data.to_str().unwrap();
    ok(&run(&["--quiet", "fit", data_s, "--k", "3", "--method", "gmm", "--model", "m.json"], d));
    let model = microseg::model::Model::load(&d.join("m.json")).unwrap();
    let ds = microseg::io::Dataset::open(std::slice::from_ref(&data)).unwrap();
    let e = microseg::pipeline::partial_stats(&model, &ds, &CpuBackend::default()).unwrap_err();
    assert!(e.to_string().contains("applies to k-means models"), "{e}");
    let stats = microseg::backend::ClusterStats::zeros(3, 4);
    assert!(microseg::pipeline::update(&model, &stats).is_err());
    // A constant feature and no regularisation: exit 3, no model file.
    let rows = 300;
    let f0: Vec<f32> = (0..rows).map(|i| (i % 17) as f32).collect();
    let f1: Vec<f32> = vec![2.5; rows];
    crate::util::write_parquet(
        &d.join("flat.parquet"),
        vec![
            ("a", std::sync::Arc::new(arrow::array::Float32Array::from(f0)) as arrow::array::ArrayRef),
            ("b", std::sync::Arc::new(arrow::array::Float32Array::from(f1)) as arrow::array::ArrayRef),
        ],
    );
    assert_fails(
        &run(
            &[
                "fit",
                "flat.parquet",
                "--k",
                "2",
                "--method",
                "gmm",
                "--scale",
                "none",
                "--reg-covar",
                "0",
                "--model",
                "g.json",
            ],
            d,
        ),
        3,
        &["not positive definite", "--reg-covar"],
        d,
        &["flat.parquet", "m.json"],
    );
}
