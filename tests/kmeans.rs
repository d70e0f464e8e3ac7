//! k-means: hand-computed fits, Lloyd = Hamerly bit for bit, determinism whatever the
//! thread count, a non-increasing objective, empty-cluster handling, initialisation.

use microseg::backend::Centroids;
use microseg::backend::cpu::CpuBackend;
use microseg::features::Matrix;
use microseg::kmeans::{self, Algorithm, InitMethod, KMeansFit, KMeansParams};

use crate::util::{blobs, d2};

fn run(x: &Matrix, w: Option<&[f32]>, p: &KMeansParams) -> KMeansFit {
    kmeans::fit(&CpuBackend::default(), x, w, p, &mut |_| {}).unwrap()
}

fn given(k: usize, dim: usize, data: Vec<f32>) -> KMeansParams {
    let mut p = KMeansParams::new(k);
    p.init = InitMethod::Given(Centroids::new(data, dim));
    p
}

#[test]
fn two_pairs_on_a_line() {
    let x = Matrix::new(vec![0.0, 1.0, 10.0, 11.0], 1);
    for alg in [Algorithm::Lloyd, Algorithm::Hamerly, Algorithm::Pruned] {
        let mut p = given(2, 1, vec![0.0, 1.0]);
        p.algorithm = alg;
        let f = run(&x, None, &p);
        assert_eq!(f.centroids.data, vec![0.5, 10.5], "{alg:?}");
        assert_eq!(f.nearest.iter().map(|n| n.label).collect::<Vec<_>>(), vec![0, 0, 1, 1]);
        assert_eq!(f.inertia, 1.0);
        assert!(f.converged);
        assert_eq!(f.stats.count, vec![2, 2]);
    }
}

#[test]
fn weights_pull_the_centroid() {
    let x = Matrix::new(vec![0.0, 4.0, 100.0], 1);
    let w = [3.0f32, 1.0, 2.0];
    let f = run(&x, Some(&w), &given(2, 1, vec![0.0, 100.0]));
    assert_eq!(f.centroids.data, vec![1.0, 100.0]);
    // 3·1² + 1·3² = 12
    assert_eq!(f.inertia, 12.0);
}

#[test]
fn an_empty_cluster_takes_the_farthest_point() {
    let x = Matrix::new(vec![0.0, 1.0, 2.0, 20.0], 1);
    for alg in [Algorithm::Lloyd, Algorithm::Hamerly, Algorithm::Pruned] {
        let mut p = given(3, 1, vec![0.0, 1.0, 1000.0]);
        p.algorithm = alg;
        let f = run(&x, None, &p);
        assert!(f.relocations >= 1, "{alg:?}: no relocation reported");
        assert_eq!(f.centroids.data, vec![0.0, 1.5, 20.0], "{alg:?}");
        assert_eq!(f.nearest.iter().map(|n| n.label).collect::<Vec<_>>(), vec![0, 1, 1, 2]);
        assert_eq!(f.inertia, 0.5);
        assert!(f.stats.count.iter().all(|c| *c > 0), "{alg:?}: a dead segment");
    }
}

fn assert_same_fit(a: &KMeansFit, b: &KMeansFit, what: &str) {
    assert_eq!(a.centroids.data, b.centroids.data, "{what}: centroids differ");
    assert_eq!(a.nearest, b.nearest, "{what}: assignments differ");
    assert_eq!(a.inertia.to_bits(), b.inertia.to_bits(), "{what}: inertia {} vs {}", a.inertia, b.inertia);
    assert_eq!(a.iterations, b.iterations, "{what}: iterations");
    assert_eq!(a.relocations, b.relocations, "{what}: relocations");
}

#[test]
fn bounded_variants_give_lloyds_result_bit_for_bit() {
    let cases: &[(usize, usize, usize, usize, bool)] = &[
        (5000, 8, 6, 6, false),
        (20000, 16, 12, 40, false),
        (3000, 3, 4, 300, false), // many more centroids than blobs: empties and near ties
        (8000, 32, 10, 64, true),
        (140_000, 4, 8, 8, false), // more than two reduction chunks
    ];
    for &(n, dim, blobs_k, k, weighted) in cases {
        let x = blobs(n, dim, blobs_k, 5.0, n as u64);
        let w: Option<Vec<f32>> = weighted.then(|| (0..n).map(|i| (i % 5) as f32 * 0.5).collect());
        let mut p = KMeansParams::new(k);
        p.tol = 0.0;
        p.max_iter = 60;
        p.algorithm = Algorithm::Lloyd;
        let lloyd = run(&x, w.as_deref(), &p);
        p.algorithm = Algorithm::Hamerly;
        let ham = run(&x, w.as_deref(), &p);
        assert_same_fit(&lloyd, &ham, &format!("hamerly n={n} d={dim} k={k} weighted={weighted}"));
        p.algorithm = Algorithm::Pruned;
        let pruned = run(&x, w.as_deref(), &p);
        assert_same_fit(&lloyd, &pruned, &format!("pruned n={n} d={dim} k={k} weighted={weighted}"));
        if lloyd.iterations >= 8 {
            assert!(
                ham.full_evaluations < lloyd.full_evaluations,
                "Hamerly saved nothing at n={n} k={k} ({} iterations)",
                lloyd.iterations
            );
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let x = blobs(150_000, 6, 7, 4.0, 11);
    let mut p = KMeansParams::new(9);
    p.n_init = 2;
    let fits: Vec<KMeansFit> = [1, 2, 3]
        .iter()
        .map(|&t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap().install(|| run(&x, None, &p)))
        .collect();
    assert_same_fit(&fits[0], &fits[1], "1 vs 2 threads");
    assert_same_fit(&fits[0], &fits[2], "1 vs 3 threads");
}

#[test]
fn the_objective_never_increases() {
    let x = blobs(4000, 5, 8, 3.0, 5);
    let mut last = f64::INFINITY;
    for it in 1..12 {
        let mut p = KMeansParams::new(10);
        p.max_iter = it;
        p.tol = 0.0;
        p.init = InitMethod::Random;
        let f = run(&x, None, &p);
        assert!(f.inertia <= last * (1.0 + 1e-12), "iteration {it}: {} > {last}", f.inertia);
        last = f.inertia;
    }
}

#[test]
fn final_labels_are_nearest_to_final_centroids() {
    let x = blobs(3000, 6, 5, 3.0, 8);
    let f = run(&x, None, &KMeansParams::new(7));
    let mut inertia = 0.0;
    for i in 0..x.n() {
        let best =
            (0..7).map(|j| (d2(x.row(i), f.centroids.row(j)), j)).min_by(|a, b| a.partial_cmp(b).unwrap()).unwrap();
        assert_eq!(f.nearest[i].label as usize, best.1, "row {i}");
        inertia += best.0;
    }
    assert!(crate::util::rel(f.inertia, inertia) < 1e-6, "inertia {} vs f64 {}", f.inertia, inertia);
}

#[test]
fn every_init_finds_well_separated_blobs() {
    // 6 tight, far-apart blobs: any sane init plus Lloyd reaches the noise floor.
    let x = blobs(6000, 4, 6, 100.0, 21);
    let floor = {
        let p = KMeansParams { n_init: 8, ..KMeansParams::new(6) };
        run(&x, None, &p).inertia
    };
    for init in [InitMethod::KMeansPlusPlus, InitMethod::KMeansParallel] {
        let name = init.name();
        let p = KMeansParams { init, ..KMeansParams::new(6) };
        let f = run(&x, None, &p);
        assert!(f.inertia <= floor * 1.0001, "{name}: inertia {} vs best {floor}", f.inertia);
        assert!(f.stats.count.iter().all(|&c| c > 500), "{name}: sizes {:?}", f.stats.count);
    }
    let p = KMeansParams { init: InitMethod::Random, ..KMeansParams::new(6) };
    let f = run(&x, None, &p);
    assert!(f.stats.count.iter().all(|&c| c > 0) && f.inertia >= floor * 0.9999);
}

#[test]
fn same_seed_same_model_other_seed_other_start() {
    let x = blobs(5000, 4, 12, 2.0, 2);
    let p = KMeansParams::new(12);
    assert_same_fit(&run(&x, None, &p), &run(&x, None, &p), "rerun");
    let q = KMeansParams { seed: 99, ..p.clone() };
    assert_ne!(run(&x, None, &p).centroids.data, run(&x, None, &q).centroids.data);
    // More restarts can only help, and restart 0 is the single run.
    let many = KMeansParams { n_init: 4, ..p.clone() };
    assert!(run(&x, None, &many).inertia <= run(&x, None, &p).inertia);
}

#[test]
fn init_on_a_sample_is_seeded_and_bounded() {
    let x = blobs(50_000, 3, 4, 10.0, 4);
    let p = KMeansParams { init_sample: 2000, ..KMeansParams::new(4) };
    assert_eq!(p.init_sample_rows(x.n()), 2000);
    assert_eq!(KMeansParams::new(256).init_sample_rows(10_000_000), 16_384);
    assert_same_fit(&run(&x, None, &p), &run(&x, None, &p), "sampled init rerun");
}

#[test]
fn invalid_parameters_are_refused_before_fitting() {
    let x = blobs(10, 2, 2, 1.0, 1);
    let b = CpuBackend::default();
    for (p, needle) in [
        (KMeansParams::new(11), "more than the 10 usable rows"),
        (KMeansParams::new(0), "--k must be at least 1"),
        (KMeansParams { max_iter: 0, ..KMeansParams::new(2) }, "--max-iter"),
        (KMeansParams { tol: -1.0, ..KMeansParams::new(2) }, "--tol"),
        (given(2, 3, vec![0.0; 6]), "3 columns"),
        (given(2, 2, vec![0.0; 6]), "3 rows"),
    ] {
        let e = kmeans::fit(&b, &x, None, &p, &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains(needle), "error '{e}' lacks '{needle}'");
    }
    // Zero weights do not count as usable rows.
    let w = vec![0.0f32; 9].into_iter().chain([1.0]).collect::<Vec<_>>();
    let e = kmeans::fit(&b, &x, Some(&w), &KMeansParams::new(2), &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("1 usable rows"), "{e}");
}

/// Spherical k-means in f64, the plain way: assign by largest cosine (ties to the
/// lower index), centroid = normalised sum, until no label changes.
fn spherical_reference(x: &[Vec<f64>], mut c: Vec<Vec<f64>>, max_iter: usize) -> (f64, usize) {
    let n = x.len();
    let mut labels = vec![usize::MAX; n];
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
    let mut it = 0;
    while it < max_iter {
        it += 1;
        let mut changed = false;
        for i in 0..n {
            let mut best = (f64::NEG_INFINITY, 0);
            for (j, cj) in c.iter().enumerate() {
                let s = dot(&x[i], cj);
                if s > best.0 {
                    best = (s, j);
                }
            }
            if labels[i] != best.1 {
                changed = true;
                labels[i] = best.1;
            }
        }
        if !changed {
            break;
        }
        for (j, cj) in c.iter_mut().enumerate() {
            let mut s = vec![0.0; x[0].len()];
            for i in (0..n).filter(|&i| labels[i] == j) {
                s.iter_mut().zip(&x[i]).for_each(|(a, b)| *a += b);
            }
            let norm = s.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm > 0.0 {
                *cj = s.iter().map(|v| v / norm).collect();
            }
        }
    }
    let obj = (0..n).map(|i| 1.0 - dot(&x[i], &c[labels[i]])).sum();
    (obj, it)
}

#[test]
fn spherical_kmeans_matches_an_f64_reference_on_real_embeddings() {
    let path = crate::util::repo().join("datasets/online_retail_descriptions_minilm_l6_v2.parquet");
    let (m, _) = crate::util::load(&path, &["embedding"], None);
    let mut m = m;
    microseg::features::normalize_rows(&mut m, microseg::features::MissingPolicy::Error, "embeddings").unwrap();
    let k = 16;
    let starts: Vec<usize> = (0..k).map(|j| j * 263).collect();
    let x64: Vec<Vec<f64>> = (0..m.n()).map(|i| m.row(i).iter().map(|v| *v as f64).collect()).collect();
    let (want, ref_iters) = spherical_reference(&x64, starts.iter().map(|&i| x64[i].clone()).collect(), 60);
    for alg in [Algorithm::Lloyd, Algorithm::Hamerly, Algorithm::Pruned] {
        let mut p = given(k, m.dim, starts.iter().flat_map(|&i| m.row(i).to_vec()).collect());
        p.metric = microseg::kmeans::Metric::Cosine;
        p.tol = 0.0;
        p.max_iter = 60;
        p.algorithm = alg;
        let f = run(&m, None, &p);
        // ‖x − c‖² = 2 (1 − cos) on the unit sphere.
        let got = f.inertia / 2.0;
        assert!(
            crate::util::rel(got, want) <= 1e-5,
            "{alg:?}: objective {got} vs f64 reference {want} ({} vs {ref_iters} iterations)",
            f.iterations
        );
        for j in 0..k {
            let n: f64 = f.centroids.row(j).iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            assert!((n - 1.0).abs() < 1e-5, "centroid {j} norm {n}");
        }
    }
    // The wgpu backend (lavapipe in CI) from the same start.
    for (name, b) in crate::backend::backends().into_iter().filter(|(n, _)| *n == "wgpu") {
        let mut p = given(k, m.dim, starts.iter().flat_map(|&i| m.row(i).to_vec()).collect());
        p.metric = microseg::kmeans::Metric::Cosine;
        p.tol = 0.0;
        p.max_iter = 60;
        p.algorithm = Algorithm::Lloyd;
        let f = kmeans::fit(b.as_ref(), &m, None, &p, &mut |_| {}).unwrap();
        let got = f.inertia / 2.0;
        assert!(crate::util::rel(got, want) <= 1e-5, "{name}: objective {got} vs f64 reference {want}");
    }
}

#[test]
fn embedding_blocks_are_scaled_as_a_whole() {
    use microseg::features::{FeatureColumn, Scale, fit_transforms_weighted};
    // Two scalars (variance 4 and 1) and a 3-wide embedding with variances 1, 2, 3.
    let rows: Vec<[f32; 5]> = (0..400)
        .map(|i| {
            let s = if i % 2 == 0 { 1.0 } else { -1.0 };
            let t = if i % 4 < 2 { 1.0 } else { -1.0 };
            [2.0 * s, t, s, 2f32.sqrt() * t, 3f32.sqrt() * s * t]
        })
        .collect();
    let m = Matrix::new(rows.iter().flatten().copied().collect(), 5);
    let cols = vec![
        FeatureColumn { column: "a".into(), width: 1, log1p: false },
        FeatureColumn { column: "b".into(), width: 1, log1p: false },
        FeatureColumn { column: "e".into(), width: 3, log1p: false },
    ];
    let tf = fit_transforms_weighted(&m, &cols, Scale::Standard, None, None);
    assert!((tf[0].scale - 2.0).abs() < 1e-9 && (tf[1].scale - 1.0).abs() < 1e-9);
    // Total embedding variance 6, default weight 2 (two scalars): one scale sqrt(3).
    for t in &tf[2..] {
        assert!((t.scale - 3f64.sqrt()).abs() < 1e-6, "{}", t.scale);
    }
    let tf = fit_transforms_weighted(&m, &cols, Scale::Standard, None, Some(6.0));
    assert!((tf[2].scale - 1.0).abs() < 1e-6);
}

/// Hard cases for the scans' error bounds: exact duplicates (ties go to the lower row),
/// rows differing in one code step, norms spread over six orders of magnitude, an
/// outlier feature that coarsens every 8-bit code, zero rows, and a width that is not a
/// multiple of four. Each scan must return the float64 brute force's lists exactly.
#[test]
fn exact_top_k_survives_ties_outliers_and_odd_widths() {
    use microseg::similarity::{ScanKernel, SimMetric, search_with};
    use rand::{RngExt, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for dim in [37usize, 64, 130] {
        let n = 3000;
        let mut base: Vec<f32> = (0..n * dim).map(|_| rng.random::<f32>() - 0.5).collect();
        for j in 0..n {
            let row = &mut base[j * dim..(j + 1) * dim];
            match j % 10 {
                1 => row[0] = 40.0,                           // outlier feature
                2 => row.iter_mut().for_each(|x| *x *= 1e-3), // tiny norm
                3 => row.iter_mut().for_each(|x| *x *= 1e3),  // huge norm
                _ => {}
            }
        }
        // Exact duplicates of earlier rows, and near-duplicates one ulp away.
        for j in (50..n).step_by(17) {
            let src = (j * 7) % 50;
            let copy: Vec<f32> = base[src * dim..(src + 1) * dim].to_vec();
            base[j * dim..(j + 1) * dim].copy_from_slice(&copy);
            if j % 2 == 0 {
                base[j * dim + 1] = base[j * dim + 1].next_up();
            }
        }
        base[5 * dim..6 * dim].fill(0.0);
        let queries: Vec<f32> = (0..40).flat_map(|i| base[(i * 13) * dim..(i * 13 + 1) * dim].to_vec()).collect();
        for metric in [SimMetric::Ip, SimMetric::Cosine] {
            let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            let inv = |v: &[f32]| if norm(v) > 0.0 { 1.0 / norm(v) } else { 0.0 };
            for k in [1, 25] {
                let want: Vec<Vec<usize>> = queries
                    .chunks_exact(dim)
                    .map(|q| {
                        let mut s: Vec<(f64, usize)> = base
                            .chunks_exact(dim)
                            .enumerate()
                            .map(|(j, b)| {
                                let dot = q.iter().zip(b).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>();
                                let s = if metric == SimMetric::Cosine { dot * inv(q) * inv(b) } else { dot };
                                (s, j)
                            })
                            .collect();
                        s.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                        s.iter().take(k).map(|x| x.1).collect()
                    })
                    .collect();
                for kernel in [ScanKernel::F32, ScanKernel::Int8, ScanKernel::Int8Avx2] {
                    for chunk in [n, 333] {
                        let got = search_with(kernel, &queries, &base, dim, k, metric, chunk);
                        for (qi, (g, w)) in got.iter().zip(&want).enumerate() {
                            let ids: Vec<usize> = g.iter().map(|h| h.index as usize).collect();
                            assert_eq!(&ids, w, "{kernel:?} d={dim} k={k} {metric:?} chunk={chunk} query {qi}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn exact_top_k_similarity_has_recall_one_on_real_embeddings() {
    use microseg::similarity::{ScanKernel, SimMetric, search_with};
    let path = crate::util::repo().join("datasets/online_retail_descriptions_minilm_l6_v2.parquet");
    let (m, _) = crate::util::load(&path, &["embedding"], None);
    let dim = m.dim;
    let queries: Vec<f32> = (0..120).flat_map(|i| m.row(i * 35).to_vec()).collect();
    // float64 brute force: inner product, or cosine of the vectors as stored.
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let reference = |k: usize, metric: SimMetric| -> Vec<Vec<usize>> {
        (0..120)
            .map(|qi| {
                let q = &queries[qi * dim..(qi + 1) * dim];
                let mut s: Vec<(f64, usize)> = (0..m.n())
                    .map(|j| {
                        let dot = q.iter().zip(m.row(j)).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>();
                        let s = if metric == SimMetric::Cosine {
                            dot * (1.0 / norm(q)) * (1.0 / norm(m.row(j)))
                        } else {
                            dot
                        };
                        (s, j)
                    })
                    .collect();
                s.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                s.iter().take(k).map(|x| x.1).collect()
            })
            .collect()
    };
    for k in [1, 10, 100] {
        for (metric, chunk) in [(SimMetric::Ip, usize::MAX / dim), (SimMetric::Cosine, 997), (SimMetric::Ip, 64)] {
            let want = reference(k, metric);
            // Both CPU scans (the 8-bit filter runs where AVX-512 VNNI exists).
            for kernel in [ScanKernel::F32, ScanKernel::Int8, ScanKernel::Int8Avx2] {
                let got = search_with(kernel, &queries, &m.data, dim, k, metric, chunk);
                for (qi, (g, w)) in got.iter().zip(&want).enumerate() {
                    let ids: Vec<usize> = g.iter().map(|h| h.index as usize).collect();
                    assert_eq!(&ids, w, "{kernel:?} k={k} {metric:?} chunk={chunk} query {qi}");
                }
            }
            // The wgpu backend (lavapipe in CI): the same exact lists.
            if let Ok(Some(gpu)) = microseg::backend::wgpu::WgpuBackend::open(true) {
                let got = microseg::similarity::search_gpu(&gpu, &queries, &m.data, dim, k, metric, chunk.min(m.n()))
                    .unwrap();
                for (qi, (g, w)) in got.iter().zip(&want).enumerate() {
                    let ids: Vec<usize> = g.iter().map(|h| h.index as usize).collect();
                    assert_eq!(&ids, w, "wgpu k={k} {metric:?} chunk={chunk} query {qi}");
                }
            } else if std::env::var_os("MICROSEG_REQUIRE_GPU_TESTS").is_some() {
                panic!("no wgpu adapter but MICROSEG_REQUIRE_GPU_TESTS is set");
            }
        }
    }
}

/// Mini-batch k-means: seeded (the same model twice), close to the full fit on blobs,
/// and the model says which algorithm made it.
#[test]
fn minibatch_is_seeded_and_close_to_the_full_fit() {
    use microseg::backend::cpu::{CpuBackend, Kernel};
    use microseg::kmeans::{KMeansParams, MiniBatchParams};
    let x = crate::util::blobs(40_000, 6, 10, 9.0, 21);
    let be = CpuBackend::new(Kernel::Auto);
    let p = KMeansParams { max_iter: 5, tol: 0.0, ..KMeansParams::new(10) };
    let full = microseg::kmeans::fit(&be, &x, None, &p, &mut |_| {}).unwrap();
    let mb = MiniBatchParams { batch_size: 512, max_no_improvement: 0, ..Default::default() };
    let a = microseg::kmeans::fit_minibatch(&be, &x, None, &p, &mb, &mut |_| true).unwrap();
    let b = microseg::kmeans::fit_minibatch(&be, &x, None, &p, &mb, &mut |_| true).unwrap();
    assert_eq!(a.centroids.data, b.centroids.data, "not seeded");
    assert!(a.inertia <= full.inertia * 1.02, "mini-batch {} vs full {}", a.inertia, full.inertia);
    // Five passes of 40,000 rows in batches of 512.
    assert_eq!(a.iterations, (5 * 40_000usize).div_ceil(512));
    // Early stopping ends it sooner; a stop request ends it at once.
    let early = MiniBatchParams { batch_size: 512, ..Default::default() };
    let e = microseg::kmeans::fit_minibatch(&be, &x, None, &p, &early, &mut |_| true).unwrap();
    assert!(e.converged && e.iterations < a.iterations);
    let stopped = microseg::kmeans::fit_minibatch(&be, &x, None, &p, &mb, &mut |_| false);
    assert!(matches!(stopped, Err(microseg::Error::Interrupted)));
}

/// Mini-batch then a few exact iterations (`refine`): at the full fit's objective or
/// below, from far fewer full passes.
#[test]
fn minibatch_refined_reaches_the_full_fit() {
    use microseg::backend::cpu::{CpuBackend, Kernel};
    use microseg::pipeline::{AlgorithmChoice, FitConfig, fit_array};
    let x = crate::util::blobs(60_000, 8, 30, 7.0, 5);
    let view = ndarray::ArrayView2::from_shape((x.n(), x.dim), &x.data).unwrap();
    let be = CpuBackend::new(Kernel::Auto);
    let base = FitConfig { k: 30, scale: microseg::features::Scale::None, ..Default::default() };
    let (full, fr) = fit_array(view, None, &base, &be).unwrap();
    let cfg = FitConfig {
        algorithm: AlgorithmChoice::MiniBatch,
        batch_size: 2048,
        reassignment_ratio: 0.0,
        refine: 15,
        max_iter: 100,
        tol: 0.0,
        ..base.clone()
    };
    let (mb, mr) = fit_array(view, None, &cfg, &be).unwrap();
    assert_eq!(mb.manifest.algorithm, "minibatch");
    assert!(mr.inertia <= fr.inertia * 1.01, "refined mini-batch {} vs full {}", mr.inertia, fr.inertia);
    assert_eq!(full.manifest.algorithm, "lloyd");
    // --refine belongs to mini-batch.
    let bad = FitConfig { refine: 3, ..base };
    assert!(fit_array(view, None, &bad, &be).is_err());
}

/// Split/merge moves between the exact iterations after mini-batch steps take the fit
/// out of the basin where two centroids share one blob and one centroid holds two: on
/// well-separated blobs every seed ends at the planted clusters' own squared error,
/// which mini-batch and the same exact iterations alone miss.
#[test]
fn split_merge_moves_reach_the_planted_clusters() {
    use microseg::backend::cpu::{CpuBackend, Kernel};
    use microseg::pipeline::{AlgorithmChoice, FitConfig, fit_array};
    let (n, dim, k) = (64_000, 8, 64);
    let be = CpuBackend::new(Kernel::Auto);
    let (mut with_sum, mut without_sum) = (0.0, 0.0);
    for seed in 1..=3u64 {
        let x = crate::util::blobs(n, dim, k, 10.0, seed);
        // The planted clusters' squared error about their own means (row i is in i % k).
        let mut sums = vec![0.0f64; k * dim];
        for i in 0..n {
            for (s, v) in sums[(i % k) * dim..(i % k + 1) * dim].iter_mut().zip(x.row(i)) {
                *s += *v as f64;
            }
        }
        let per = (n / k) as f64;
        let planted: f64 = (0..n)
            .map(|i| {
                x.row(i)
                    .iter()
                    .enumerate()
                    .map(|(p, v)| (*v as f64 - sums[(i % k) * dim + p] / per).powi(2))
                    .sum::<f64>()
            })
            .sum();
        let view = ndarray::ArrayView2::from_shape((n, dim), &x.data).unwrap();
        let cfg = |rounds: usize| FitConfig {
            k,
            scale: microseg::features::Scale::None,
            algorithm: AlgorithmChoice::MiniBatch,
            batch_size: 2048,
            reassignment_ratio: 0.0,
            refine: 8,
            split_merge: rounds,
            max_iter: 100,
            tol: 0.0,
            seed,
            ..Default::default()
        };
        let (_, with) = fit_array(view, None, &cfg(3), &be).unwrap();
        let (_, without) = fit_array(view, None, &cfg(0), &be).unwrap();
        eprintln!("seed {seed}: planted {planted:.1}, with moves {:.1}, without {:.1}", with.inertia, without.inertia);
        assert!(with.inertia <= planted * 1.0001, "seed {seed}: {} against the planted {planted}", with.inertia);
        with_sum += with.inertia;
        without_sum += without.inertia;
    }
    assert!(with_sum < without_sum, "the moves changed nothing: {with_sum} against {without_sum}");
}
