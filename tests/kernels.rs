//! Every CPU distance kernel this machine has (SGEMM, fused f32 with 8 and 16 lanes,
//! 8-bit codes with AVX2 and with AVX-512 VNNI) against an f64 reference and against each other: the same
//! labels as the reference's argmin (ties to the lower index) on awkward shapes,
//! scales, offsets, duplicate rows and exact ties, the same distances bit for bit, and
//! the same model file byte for byte whichever kernel and exact algorithm ran.

use microseg::backend::cpu::{CpuBackend, Kernel};
use microseg::backend::{Backend, Centroids, Nearest};
use microseg::features::Matrix;
use microseg::kmeans::{self, Algorithm, InitMethod, KMeansParams};
use proptest::prelude::*;
use rand::{RngExt, SeedableRng};

use crate::util::{blobs, ok, repo, run};

fn kernels() -> Vec<Kernel> {
    let k = Kernel::available();
    assert!(k.contains(&Kernel::Gemm));
    k
}

/// The f64 reference: Σ (x − c)² in plain order, argmin with ties to the lower index.
fn reference(x: &[f32], c: &Centroids) -> (u32, f64, f64) {
    let mut best = (f64::INFINITY, u32::MAX);
    let mut second = f64::INFINITY;
    for j in 0..c.k {
        let d: f64 = x.iter().zip(c.row(j)).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
        if d < best.0 {
            second = best.0;
            best = (d, j as u32);
        } else if d < second {
            second = d;
        }
    }
    (best.1, best.0, second)
}

/// The nearest centroid other than `best` in f64 (ties to the lower index); `best`
/// itself when k = 1.
fn second_label(x: &[f32], c: &Centroids, best: u32) -> u32 {
    let d = |j: usize| -> f64 { x.iter().zip(c.row(j)).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum() };
    (0..c.k)
        .filter(|&j| j as u32 != best)
        .min_by(|&a, &b| d(a).total_cmp(&d(b)).then(a.cmp(&b)))
        .unwrap_or(best as usize) as u32
}

/// Rows and centroids of one case: uniform in ±scale around `offset`, with some rows
/// repeated, some centroids duplicated (every row then ties between the copies) and
/// some rows exactly halfway between two centroids on a grid (a real tie).
fn case(n: usize, k: usize, dim: usize, scale: f32, offset: f32, seed: u64) -> (Vec<f32>, Centroids) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut c: Vec<f32> = (0..k * dim).map(|_| offset + scale * (rng.random::<f32>() * 2.0 - 1.0)).collect();
    if k >= 3 {
        // Centroid 2 is a copy of centroid 1; centroid 0 a grid point.
        let c1: Vec<f32> = c[dim..2 * dim].to_vec();
        c[2 * dim..3 * dim].copy_from_slice(&c1);
        for (f, v) in c[..dim].iter_mut().enumerate() {
            *v = offset + scale * (f % 3) as f32;
        }
    }
    let mut x: Vec<f32> = (0..n * dim).map(|_| offset + scale * (rng.random::<f32>() * 2.0 - 1.0)).collect();
    for i in 0..n {
        match i % 7 {
            // A repeat of row 0.
            3 if i > 0 => x.copy_within(0..dim, i * dim),
            // A copy of centroid 1 (so centroids 1 and 2 tie at distance 0).
            5 if k >= 3 => x[i * dim..(i + 1) * dim].copy_from_slice(&c[dim..2 * dim]),
            _ => {}
        }
    }
    if k >= 4 && n >= 7 {
        // Row 6 halfway between grid centroids 0 and 3 along feature 0: exactly
        // representable, so both are at the same real distance.
        for f in 0..dim {
            c[3 * dim + f] = c[f];
            x[6 * dim + f] = c[f];
        }
        c[3 * dim] = c[0] + 2.0 * scale;
        x[6 * dim] = c[0] + scale;
    }
    (x, Centroids::new(c, dim))
}

/// Rows whose 8-bit quantisation residuals all point along 1 = (1, …, 1) (each
/// coordinate 0.49 of a code step above its code, one at the top code), against
/// centroid pairs ±(μ·1 + noise): the rows' residual errors then differ between the
/// two centroids of a pair by nearly the Cauchy–Schwarz bound, and rows with Σx ≈ 0 are
/// near-ties between them, so a bound that is too small shows.
fn aligned_case(n: usize, k: usize, dim: usize, scale: f32, levels: f32, seed: u64) -> (Vec<f32>, Centroids) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let s = scale / levels;
    let mut x = Vec::with_capacity(n * dim);
    for _ in 0..n {
        for f in 0..dim {
            let code = if f == 0 { levels } else { (rng.random::<f32>() * 2.0 - 1.0) * (levels - 2.0) };
            x.push(s * (code.round() + if f == 0 { 0.0 } else { 0.49 }));
        }
    }
    let mut c = Vec::with_capacity(k * dim);
    for j in 0..k {
        let sign = if j % 2 == 0 { 1.0 } else { -1.0 };
        let mu = scale * (0.2 + rng.random::<f32>());
        for _ in 0..dim {
            c.push(sign * mu * (1.0 + 0.01 * rng.random::<f32>()));
        }
    }
    (x, Centroids::new(c, dim))
}

fn check_case(x: &[f32], c: &Centroids) -> Result<(), TestCaseError> {
    let dim = c.dim;
    let n = x.len() / dim;
    let want: Vec<(u32, f64, f64)> = (0..n).map(|i| reference(&x[i * dim..(i + 1) * dim], c)).collect();
    let mut first: Option<Vec<Nearest>> = None;
    for kernel in kernels() {
        let b = CpuBackend::new(kernel);
        let mut exact = vec![Nearest::default(); n];
        b.assign(x, c, &mut exact).unwrap();
        let mut labels = vec![Nearest::default(); n];
        b.assign_labels(x, c, &mut labels).unwrap();
        // Labels from an earlier pass: the right ones, the runner-up (a near-tie in the
        // aligned cases), a stale shift of them, or none for some rows; each must end
        // in the reference's labels.
        let runner_up: Vec<u32> = (0..n).map(|i| second_label(&x[i * dim..(i + 1) * dim], c, want[i].0)).collect();
        // (A tile with a row without a label takes the pass that sweeps the bounds, so
        // the missing labels are a prior of their own.)
        let mut near: Vec<Vec<Nearest>> = [0u32, 1, 7, u32::MAX, u32::MAX - 1]
            .iter()
            .map(|&shift| {
                (0..n)
                    .map(|i| {
                        let label = match shift {
                            0 => want[i].0,
                            u32::MAX => runner_up[i],
                            _ if shift == u32::MAX - 1 && i % 5 == 4 => u32::MAX,
                            _ if shift == u32::MAX - 1 => want[i].0,
                            _ => (want[i].0 + shift + i as u32) % c.k as u32,
                        };
                        Nearest { label, ..Nearest::default() }
                    })
                    .collect()
            })
            .collect();
        for prior in near.iter_mut() {
            b.assign_labels(x, c, prior).unwrap();
        }
        for i in 0..n {
            let (l, d, s) = want[i];
            prop_assert_eq!(exact[i].label, l, "{} row {} (exact pass): want {} at {}", kernel.name(), i, l, d);
            prop_assert_eq!(labels[i].label, l, "{} row {} (labels pass): want {} at {}", kernel.name(), i, l, d);
            for (p, prior) in near.iter().enumerate() {
                prop_assert_eq!(
                    prior[i].label,
                    l,
                    "{} row {} (labels from prior {}): want {} at {}",
                    kernel.name(),
                    i,
                    p,
                    l,
                    d
                );
            }
            // The exact pass's distances are the f64 ones rounded to f32.
            let tol = 1e-6 * d.max(f64::MIN_POSITIVE);
            prop_assert!(
                (exact[i].dist as f64 - d).abs() <= tol,
                "{} row {}: {} vs {}",
                kernel.name(),
                i,
                exact[i].dist,
                d
            );
            if c.k > 1 {
                prop_assert!((exact[i].second as f64 - s).abs() <= 1e-6 * s.max(f64::MIN_POSITIVE));
            }
        }
        match &first {
            None => first = Some(exact),
            Some(f) => {
                for i in 0..n {
                    prop_assert_eq!(f[i].dist.to_bits(), exact[i].dist.to_bits(), "{} row {} dist", kernel.name(), i);
                    prop_assert_eq!(
                        f[i].second.to_bits(),
                        exact[i].second.to_bits(),
                        "{} row {} second",
                        kernel.name(),
                        i
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, rng_seed: proptest::test_runner::RngSeed::Fixed(0x6b65_726e), .. ProptestConfig::default() })]

    #[test]
    fn every_kernel_gives_the_f64_reference_labels(
        dim in prop_oneof![1usize..6, 6usize..40, Just(64usize), Just(131usize)],
        k in prop_oneof![1usize..5, 5usize..40, Just(64usize), Just(257usize)],
        n in 1usize..90,
        scale in prop_oneof![Just(1e-3f32), Just(1.0f32), Just(1e3f32), Just(1e6f32)],
        far in any::<bool>(),
        seed in any::<u64>(),
    ) {
        // Far from the origin: coordinates around 10⁴·scale with a spread of `scale`.
        let offset = if far { 1e4 * scale } else { 0.0 };
        let (x, c) = case(n, k, dim, scale, offset, seed);
        check_case(&x, &c)?;
        // Residuals aligned, for both code widths of the rows (VNNI ±127, AVX2 ±63).
        for levels in [127.0, 63.0] {
            let (x, c) = aligned_case(n, k, dim.max(8), scale, levels, seed ^ 0xa11);
            check_case(&x, &c)?;
        }
    }
}

/// Rows coded once per fit (`retain`), bands of the pruned pass (gathered codes),
/// Hamerly's recomputed rows (coded a tile at a time): every kernel and algorithm ends
/// in the same centroids, labels and distances bit for bit, including across empties.
#[test]
fn fits_are_bit_identical_across_kernels_and_algorithms() {
    // k ≤ 16 takes the one-panel path of the fused f32 kernels (k = 5 and 12: the
    // 8-lane kernel's partial registers); the last case takes the fused assignment and
    // statistics by chunks, with the rows' norms kept for the fit.
    let cases: &[(usize, usize, usize, usize, bool)] = &[
        (6000, 16, 8, 16, false),
        (9000, 32, 12, 256, true),
        (3000, 3, 4, 300, false),
        (4000, 7, 5, 40, false),
        (5000, 8, 6, 12, true),
        (4000, 24, 4, 5, false),
        // Enough rows for two chunks per thread, however many threads run.
        (2 * microseg::backend::cpu::REDUCE_ROWS * rayon::current_num_threads() + 4096, 4, 6, 6, true),
        // The same with several panels, the last partial (the 8-bit kernels bound the
        // rows by their previous labels there).
        (2 * microseg::backend::cpu::REDUCE_ROWS * rayon::current_num_threads() + 4100, 12, 20, 70, false),
    ];
    for &(n, dim, blobs_k, k, weighted) in cases {
        let x: Matrix = blobs(n, dim, blobs_k, 5.0, n as u64 + 1);
        let w: Option<Vec<f32>> = weighted.then(|| (0..n).map(|i| (i % 4) as f32 * 0.5).collect());
        let mut base: Option<kmeans::KMeansFit> = None;
        for kernel in kernels() {
            for alg in [Algorithm::Lloyd, Algorithm::Hamerly, Algorithm::Pruned] {
                let mut p = KMeansParams::new(k);
                p.tol = 0.0;
                p.max_iter = 30;
                p.algorithm = alg;
                let f = kmeans::fit(&CpuBackend::new(kernel), &x, w.as_deref(), &p, &mut |_| {}).unwrap();
                let what = format!("{} {} n={n} d={dim} k={k}", kernel.name(), alg.name());
                match &base {
                    None => base = Some(f),
                    Some(b) => {
                        let bits = |c: &Centroids| c.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&b.centroids), bits(&f.centroids), "{what}: centroids");
                        assert_eq!(b.iterations, f.iterations, "{what}: iterations");
                        assert_eq!(b.inertia.to_bits(), f.inertia.to_bits(), "{what}: inertia");
                        for (i, (a, g)) in b.nearest.iter().zip(&f.nearest).enumerate() {
                            assert_eq!(
                                (a.label, a.dist.to_bits(), a.second.to_bits()),
                                (g.label, g.dist.to_bits(), g.second.to_bits()),
                                "{what}: row {i}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The CLI: `--kernel` × `--algorithm` write one model file, byte for byte, on the
/// scikit-learn fixtures (real tables, their starts, unscaled) and on generated
/// subscribers (k-means++ start, standard scaling).
#[test]
fn model_files_are_byte_identical_across_kernels_and_algorithms() {
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("gen.parquet");
    ok(&run(
        &[
            "generate",
            "--rows",
            "20000",
            "--dims",
            "12",
            "--clusters",
            "9",
            "--seed",
            "5",
            "--out",
            generated.to_str().unwrap(),
        ],
        dir.path(),
    ));
    let mut cases: Vec<(String, Vec<String>)> = vec![(
        "generated subscribers".into(),
        [
            "fit",
            generated.to_str().unwrap(),
            "--exclude",
            "segment_true",
            "--k",
            "40",
            "--seed",
            "3",
            "--max-iter",
            "40",
        ]
        .map(String::from)
        .to_vec(),
    )];
    for case in ["bank", "online_retail", "generated", "weighted"] {
        let fx = repo().join("tests/data/sklearn").join(case);
        let e: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fx.join("expected.json")).unwrap()).unwrap();
        let feats: Vec<&str> = e["features"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let mut args: Vec<String> = vec![
            "fit".into(),
            repo().join(e["input"].as_str().unwrap()).to_string_lossy().into(),
            "--features".into(),
            feats.join(","),
            "--k".into(),
            e["k"].to_string(),
            "--init".into(),
            fx.join("init.csv").to_string_lossy().into(),
            "--scale".into(),
            "none".into(),
            "--allow-sensitive".into(),
        ];
        if let Some(wc) = e["weight_col"].as_str() {
            args.extend(["--weight-col".into(), wc.into()]);
        }
        cases.push((format!("scikit-learn fixture {case}"), args));
    }
    for (what, base) in &cases {
        let mut first: Option<Vec<u8>> = None;
        for kernel in kernels() {
            for alg in ["lloyd", "hamerly", "pruned"] {
                let model = dir.path().join(format!("m-{}-{alg}.json", kernel.name()));
                let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
                args.extend(["--backend", "cpu", "--kernel", kernel.name(), "--algorithm", alg]);
                args.extend(["--model", model.to_str().unwrap(), "--force", "--quiet"]);
                ok(&run(&args, dir.path()));
                let bytes = std::fs::read(&model).unwrap();
                match &first {
                    None => first = Some(bytes),
                    Some(f) => {
                        assert!(*f == bytes, "{what}: --kernel {} --algorithm {alg} wrote another model", kernel.name())
                    }
                }
            }
        }
    }
}

/// A kernel this CPU lacks is refused before any data is read; an unknown one is a
/// usage error.
#[test]
fn a_kernel_the_cpu_lacks_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = repo().join("tests/data/generated_small.parquet");
    let input = input.to_str().unwrap();
    let o = run(&["fit", input, "--k", "2", "--kernel", "int9", "--model", "m.json"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    for kernel in [Kernel::Int8Amx, Kernel::Int8Vnni, Kernel::Int8Avx2, Kernel::F32Avx2] {
        if !kernel.supported() {
            let o = run(
                &["fit", input, "--k", "2", "--kernel", kernel.name(), "--backend", "cpu", "--model", "m.json"],
                dir.path(),
            );
            assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
            assert!(String::from_utf8_lossy(&o.stderr).contains("lacks"));
            assert!(!dir.path().join("m.json").exists(), "a refused kernel left a model");
        }
    }
}

/// The given start reaches the same model whatever the kernel (a fixed start, so
/// initialisation plays no part).
#[test]
fn a_given_start_gives_one_fit_for_every_kernel() {
    let x = blobs(5000, 9, 6, 3.0, 77);
    let start = Centroids::new(x.data[..20 * 9].to_vec(), 9);
    let mut out = Vec::new();
    for kernel in kernels() {
        let p =
            KMeansParams { init: InitMethod::Given(start.clone()), tol: 0.0, max_iter: 25, ..KMeansParams::new(20) };
        let f = kmeans::fit(&CpuBackend::new(kernel), &x, None, &p, &mut |_| {}).unwrap();
        out.push((kernel.name(), f.inertia.to_bits(), f.nearest.iter().map(|n| n.label).collect::<Vec<_>>()));
    }
    for o in &out[1..] {
        assert_eq!((o.1, &o.2), (out[0].1, &out[0].2), "{} vs {}", o.0, out[0].0);
    }
}

/// A previous centroid beyond f32's range (its squared norm overflows, so its code-based
/// bound is not a number) leaves the row to the exact rule, not to that centroid: rows
/// near the one ordinary centroid, labelled ahead with an overflowing one (so that the
/// ordinary one's is the only bit the tile sets), get the f64 reference's labels from
/// every kernel. With k = 32 no padding centroid takes part.
#[test]
fn a_previous_centroid_beyond_f32_range_is_not_kept_unproven() {
    let dim = 8;
    let mut c = vec![0.0f32; 32 * dim];
    c[..dim].fill(3e19); // ‖c_0‖² = 7.2e39 > f32::MAX
    for j in 1..32 {
        for (f, v) in c[j * dim..(j + 1) * dim].iter_mut().enumerate() {
            // Beyond range too but for centroid 5, the only one whose bound holds.
            *v = if j == 5 { 0.25 } else { 3e19 * (1.0 + 0.1 * (f + j) as f32) };
        }
    }
    let c = Centroids::new(c, dim);
    let n = 64;
    let x: Vec<f32> = (0..n * dim).map(|i| 0.25 + 0.01 * (i % 7) as f32).collect();
    for kernel in kernels() {
        let b = CpuBackend::new(kernel);
        let mut out = vec![Nearest { label: 0, ..Nearest::default() }; n];
        b.assign_labels(&x, &c, &mut out).unwrap();
        for (i, o) in out.iter().enumerate() {
            let want = reference(&x[i * dim..(i + 1) * dim], &c).0;
            assert_eq!(o.label, want, "{} row {i}", kernel.name());
        }
    }
}
