//! Agreement with scikit-learn 1.9.1 (numpy 2.4.6): from the same initial centroids,
//! unscaled features, KMeans(algorithm="lloyd", tol=1e-4) reaches the labels and
//! inertia stored in tests/data/sklearn/*/expected.json (made by
//! scripts/sklearn_reference.py). Both of our exact algorithms must match.

use microseg::backend::Centroids;
use microseg::backend::cpu::CpuBackend;
use microseg::kmeans::{self, Algorithm, InitMethod, KMeansParams};
use serde_json::Value;

use crate::util::{load, rel, repo};

fn read_csv(path: &std::path::Path, dim: usize) -> Centroids {
    let text = std::fs::read_to_string(path).unwrap();
    let data: Vec<f32> = text.lines().flat_map(|l| l.split(',').map(|v| v.trim().parse::<f32>().unwrap())).collect();
    Centroids::new(data, dim)
}

fn check_case(case: &str) {
    let dir = repo().join("tests/data/sklearn").join(case);
    let exp: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let feats: Vec<&str> = exp["features"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let (x, w) = load(&repo().join(exp["input"].as_str().unwrap()), &feats, exp["weight_col"].as_str());
    let k = exp["k"].as_u64().unwrap() as usize;
    let init = read_csv(&dir.join("init.csv"), x.dim);
    let labels: Vec<u32> = exp["labels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let ties: Vec<usize> = exp["near_ties"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let sk_inertia = exp["inertia"].as_f64().unwrap();
    assert_eq!(labels.len(), x.n());
    for alg in [Algorithm::Lloyd, Algorithm::Hamerly, Algorithm::Pruned] {
        let p = KMeansParams {
            init: InitMethod::Given(init.clone()),
            max_iter: exp["max_iter"].as_u64().unwrap() as usize,
            tol: exp["tol"].as_f64().unwrap(),
            algorithm: alg,
            ..KMeansParams::new(k)
        };
        let f = kmeans::fit(&CpuBackend::default(), &x, w.as_deref(), &p, &mut |_| {}).unwrap();
        check_against(case, alg.name(), &f, &labels, &ties, sk_inertia, exp["n_iter"].as_u64().unwrap());
    }
    // The GPU backend (lavapipe in CI) from the same start: labels equal but at true
    // near-ties, inertia within 1e-5.
    for (name, b) in crate::backend::backends().into_iter().filter(|(n, _)| *n == "wgpu") {
        let p = KMeansParams {
            init: InitMethod::Given(init.clone()),
            max_iter: exp["max_iter"].as_u64().unwrap() as usize,
            tol: exp["tol"].as_f64().unwrap(),
            algorithm: Algorithm::Lloyd,
            ..KMeansParams::new(k)
        };
        let f = kmeans::fit(b.as_ref(), &x, w.as_deref(), &p, &mut |_| {}).unwrap();
        let mismatches = (0..x.n()).filter(|&i| f.nearest[i].label != labels[i]).count();
        let r = rel(f.inertia, sk_inertia);
        assert!(r <= 1e-5, "{case}/{name}: inertia {} vs scikit-learn {sk_inertia} (rel {r:e})", f.inertia);
        assert!(
            mismatches <= ties.len() + x.n() / 10_000,
            "{case}/{name}: {mismatches} labels differ from scikit-learn"
        );
        eprintln!("{case}/{name}: {mismatches} label differences, inertia rel {r:e}, {} iterations", f.iterations);
    }
}

fn check_against(
    case: &str,
    alg: &str,
    f: &kmeans::KMeansFit,
    labels: &[u32],
    ties: &[usize],
    sk_inertia: f64,
    sk_iter: u64,
) {
    let mismatches: Vec<usize> =
        (0..labels.len()).filter(|&i| f.nearest[i].label != labels[i] && !ties.contains(&i)).collect();
    assert!(
        mismatches.is_empty(),
        "{case}/{alg}: {} labels differ from scikit-learn, first rows {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(5)]
    );
    let r = rel(f.inertia, sk_inertia);
    assert!(r <= 1e-5, "{case}/{alg}: inertia {} vs scikit-learn {sk_inertia} (rel {r:e} > 1e-5)", f.inertia);
    assert_eq!(f.iterations as u64, sk_iter, "{case}/{alg}: iterations");
}

#[test]
fn generated_data_matches_sklearn() {
    check_case("generated");
}

#[test]
fn online_retail_customers_match_sklearn() {
    check_case("online_retail");
}

#[test]
fn bank_marketing_matches_sklearn() {
    check_case("bank");
}

#[test]
fn weighted_fit_matches_sklearn() {
    check_case("weighted");
}
