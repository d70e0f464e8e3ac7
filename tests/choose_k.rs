//! `choose-k`: the criteria against scikit-learn 1.9.1's metrics, recovery of the
//! number of clusters of generated Gaussian blobs, bad input, and the chart in
//! headless Chromium.

use microseg::backend::cpu::CpuBackend;
use microseg::backend::{Backend, Centroids, Nearest};
use microseg::features::Matrix;
use microseg::model::Method;
use microseg::pipeline::FitConfig;
use microseg::pipeline::choose_k::{self, ChooseKConfig};
use serde_json::Value;

use crate::util::{assert_fails, json, ok, rel, repo, run};

#[test]
fn criteria_match_scikit_learn_metrics() {
    let exp: Value = json(&repo().join("tests/data/sklearn_gmm/metrics.json"));
    let (x, _) = crate::util::load(&repo().join("tests/data/gmm_blobs.parquet"), &["f0", "f1", "f2", "f3"], None);
    let n = exp["rows"].as_u64().unwrap() as usize;
    let x = Matrix::new(x.data[..n * 4].to_vec(), 4);
    let labels: Vec<u32> = exp["labels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let k = 5;
    // Centres: the label means (f64, then f32 as the engine stores them).
    let mut sums = vec![0.0f64; k * 4];
    let mut counts = vec![0.0f64; k];
    for (i, &l) in labels.iter().enumerate() {
        counts[l as usize] += 1.0;
        for t in 0..4 {
            sums[l as usize * 4 + t] += x.row(i)[t] as f64;
        }
    }
    let c = Centroids::new((0..k * 4).map(|i| (sums[i] / counts[i / 4]) as f32).collect(), 4);
    let nearest: Vec<Nearest> = labels
        .iter()
        .enumerate()
        .map(|(i, &l)| Nearest {
            label: l,
            dist: microseg::backend::cpu::exact_sq_dist(x.row(i), c.row(l as usize)) as f32,
            second: f32::INFINITY,
        })
        .collect();
    let stats = CpuBackend::default().reduce(&x.data, None, &nearest, k).unwrap();
    let rows: Vec<usize> = (0..n).collect();
    let mut dist = vec![0.0f32; n * n];
    for a in 0..n {
        for b in 0..n {
            dist[a * n + b] = microseg::backend::cpu::exact_sq_dist(x.row(a), x.row(b)).sqrt() as f32;
        }
    }
    let _ = rows;
    let sil = choose_k::silhouette(&dist, &labels, k);
    let ch = choose_k::calinski_harabasz(&stats, &c);
    let db = choose_k::davies_bouldin(&stats, &c, &x, None, &nearest);
    assert!((sil - exp["silhouette"].as_f64().unwrap()).abs() < 1e-6, "silhouette {sil} vs {}", exp["silhouette"]);
    assert!(rel(ch, exp["calinski_harabasz"].as_f64().unwrap()) < 1e-6, "CH {ch} vs {}", exp["calinski_harabasz"]);
    assert!(rel(db, exp["davies_bouldin"].as_f64().unwrap()) < 1e-6, "DB {db} vs {}", exp["davies_bouldin"]);
}

/// Gaussian blobs (unit variance, unequal sizes) whose centres are drawn at random
/// and kept only when at least `gap` apart.
fn gaussian_blobs(n: usize, d: usize, k: usize, gap: f64, seed: u64) -> Matrix {
    use rand::{RngExt, SeedableRng};
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut centres: Vec<Vec<f64>> = Vec::new();
    while centres.len() < k {
        let c: Vec<f64> = (0..d).map(|_| (rng.random::<f64>() - 0.5) * gap * k as f64).collect();
        if centres.iter().all(|o| o.iter().zip(&c).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt() >= gap) {
            centres.push(c);
        }
    }
    let mut data = Vec::with_capacity(n * d);
    for i in 0..n {
        // Sizes in proportion 1 : 2 : … : k.
        let mut u = i % (k * (k + 1) / 2);
        let mut j = 0;
        while u > j {
            u -= j + 1;
            j += 1;
        }
        for c in &centres[j.min(k - 1)] {
            let z: f64 = StandardNormal.sample(&mut rng);
            data.push((c + z) as f32);
        }
    }
    Matrix::new(data, d)
}

/// Gaussian blobs of several counts, sizes, dimensions and overlaps: most
/// criteria, hence the recommendation, find the true k.
#[test]
fn recovers_the_number_of_separated_and_overlapping_blobs() {
    // (k, d, seed, gap between centres in standard deviations): the last two overlap
    // (tails of neighbouring blobs meet at 2.5 sd).
    for (true_k, d, seed, gap) in [
        (3, 2, 1, 10.0),
        (5, 4, 2, 10.0),
        (8, 6, 3, 10.0),
        (4, 10, 4, 10.0),
        (6, 3, 5, 10.0),
        (4, 3, 6, 5.0),
        (5, 2, 7, 5.0),
    ] {
        let x = gaussian_blobs(4000, d, true_k, gap, seed);
        let cfg = ChooseKConfig {
            fit: FitConfig { n_init: 3, ..FitConfig::for_method(Method::KMeans, 2) },
            ks: (2..=12).collect(),
            sample: 4000,
            silhouette_sample: 1500,
        };
        let r = choose_k::choose_k(&crate::util::matrix_dataset(&x), &cfg, &CpuBackend::default(), &mut |_, _| true)
            .unwrap();
        assert_eq!(r.recommendation.k, true_k, "k={true_k} d={d}: {}", r.recommendation.note);
        // A criterion may differ (the silhouette prefers 2 when two blobs sit closer
        // than the third); the report then says so.
        assert_eq!(r.recommendation.criteria_agree, r.choices.iter().all(|c| c.k == true_k));
        if !r.recommendation.criteria_agree {
            assert!(r.recommendation.note.starts_with("the criteria disagree"), "{}", r.recommendation.note);
        }
        let votes = r.choices.iter().filter(|c| c.k == true_k).count();
        assert!(votes >= 2, "k={true_k} d={d}: {}", r.recommendation.note);
    }
}

/// Anisotropic clusters of unequal sizes (the scikit-learn fixture's blobs, 4
/// components): the mixture's BIC finds 4, and the report says where the
/// distance-based criteria disagree.
#[test]
fn mixture_bic_recovers_elongated_clusters() {
    let ds = microseg::io::Dataset::open(&[repo().join("tests/data/gmm_blobs.parquet")]).unwrap();
    let cfg = ChooseKConfig {
        fit: FitConfig { covariance: microseg::gmm::CovarianceType::Full, ..FitConfig::for_method(Method::Gmm, 2) },
        ks: (2..=8).collect(),
        sample: 10_000,
        silhouette_sample: 1000,
    };
    let r = choose_k::choose_k(&ds, &cfg, &CpuBackend::default(), &mut |_, _| true).unwrap();
    assert_eq!(r.recommendation.k, 4, "{}", r.recommendation.note);
    let bic: Vec<f64> = r.scores.iter().map(|s| s.bic.unwrap()).collect();
    assert!(bic[2] < bic[1] && bic[2] < bic[3], "BIC {bic:?}");
    if !r.recommendation.criteria_agree {
        assert!(r.recommendation.note.starts_with("the criteria disagree"), "{}", r.recommendation.note);
    }
}

#[test]
fn cli_writes_report_and_chart_and_refuses_bad_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = repo().join("tests/data/gmm_blobs.parquet");
    let data_s = data.to_str().unwrap();
    for (k, code, needle) in [
        ("5..2", 2, "the range is empty"),
        ("1..4", 2, "at least 2"),
        ("two", 2, "expected a range"),
        ("2,3,5000", 3, "more than the 2400 rows sampled"),
    ] {
        assert_fails(&run(&["choose-k", data_s, "--k", k, "--out", "r.json"], d), code, &[needle], d, &[]);
    }
    ok(&run(&["--quiet", "choose-k", data_s, "--k", "2..6", "--out", "r.json", "--chart", "c.html"], d));
    let r = json(&d.join("r.json"));
    assert_eq!(r["format"], "microseg-choose-k");
    assert_eq!(r["scores"].as_array().unwrap().len(), 5);
    let html = std::fs::read_to_string(d.join("c.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Recommended k"));
    for needle in ["<script", "http://", "https://"] {
        assert!(!html.contains(needle), "the chart references {needle}");
    }
    crate::report::render_in_chromium(d, &d.join("c.html"), 8_000);
}
