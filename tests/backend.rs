//! The backend passes, generic over the backend (each test body runs for every
//! backend and kernel): hand-computed cases, invariants, and property tests against
//! an f64 reference.

use microseg::backend::cpu::{CpuBackend, Kernel};
use microseg::backend::{Backend, Centroids, ClusterStats, Nearest};
use proptest::prelude::*;

use crate::util::{blobs, d2};

fn backends() -> Vec<(&'static str, Box<dyn Backend>)> {
    vec![("cpu-auto", Box::new(CpuBackend::new(Kernel::Auto))), ("cpu-gemm", Box::new(CpuBackend::new(Kernel::Gemm)))]
}

fn check_hand_computed(b: &dyn Backend) {
    // Points on a line and two centroids at 0 and 10.
    let pts = [0.0f32, 0.0, 1.0, 0.0, 6.0, 0.0, 10.0, 0.0, 5.0, 0.0];
    let c = Centroids::new(vec![0.0, 0.0, 10.0, 0.0], 2);
    let mut out = vec![Nearest::default(); 5];
    b.assign(&pts, &c, &mut out).unwrap();
    let want = [(0, 0.0, 100.0), (0, 1.0, 81.0), (1, 16.0, 36.0), (1, 0.0, 100.0), (0, 25.0, 25.0)];
    for (i, (o, w)) in out.iter().zip(want).enumerate() {
        assert_eq!((o.label, o.dist, o.second), (w.0, w.1, w.2), "row {i}: got {o:?}, want {w:?}");
    }
    let s = b.reduce(&pts, None, &out, 2).unwrap();
    assert_eq!(s.count, vec![3, 2]);
    assert_eq!(s.weight, vec![3.0, 2.0]);
    assert_eq!(s.sum, vec![6.0, 0.0, 16.0, 0.0]);
    assert_eq!(s.sse, vec![26.0, 16.0]);
    let w = [1.0f32, 2.0, 0.5, 1.0, 0.0];
    let s = b.reduce(&pts, Some(&w), &out, 2).unwrap();
    assert_eq!(s.weight, vec![3.0, 1.5]);
    assert_eq!(s.sum, vec![2.0, 0.0, 13.0, 0.0]);
    assert_eq!(s.sse, vec![2.0, 8.0]);
}

#[test]
fn hand_computed_assign_and_reduce() {
    for (name, b) in backends() {
        eprintln!("backend {name}");
        check_hand_computed(b.as_ref());
    }
}

/// Every label is the f64 argmin (ties to the lower index) and distances match f64.
fn check_against_f64(b: &dyn Backend, n: usize, dim: usize, k: usize, seed: u64) {
    let x = blobs(n, dim, k.max(2), 6.0, seed);
    let c = Centroids::new(blobs(k, dim, k.max(2), 6.0, seed + 1).data, dim);
    let mut out = vec![Nearest::default(); n];
    b.assign(&x.data, &c, &mut out).unwrap();
    for (i, o) in out.iter().enumerate() {
        let mut d: Vec<(f64, usize)> = (0..k).map(|j| (d2(x.row(i), c.row(j)), j)).collect();
        d.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(
            o.label as usize, d[0].1,
            "row {i}: label {} (d={}), f64 reference {} (d={})",
            o.label, o.dist, d[0].1, d[0].0
        );
        assert!(
            (o.dist as f64 - d[0].0).abs() <= 1e-6 * d[0].0.max(1e-12),
            "row {i}: dist {} vs f64 {}",
            o.dist,
            d[0].0
        );
        if k > 1 {
            assert!(
                (o.second as f64 - d[1].0).abs() <= 1e-6 * d[1].0.max(1e-12),
                "row {i}: second {} vs f64 {}",
                o.second,
                d[1].0
            );
        } else {
            assert!(o.second.is_infinite());
        }
    }
}

#[test]
fn assign_matches_f64_reference_over_shapes() {
    for (name, b) in backends() {
        for &(n, dim, k) in
            &[(1, 1, 1), (7, 3, 2), (100, 5, 17), (1000, 16, 33), (513, 32, 256), (300, 64, 1024), (50, 7, 50)]
        {
            eprintln!("backend {name} n={n} d={dim} k={k}");
            check_against_f64(b.as_ref(), n, dim, k, (n * 31 + k) as u64);
        }
    }
}

#[test]
fn exact_ties_go_to_the_lower_index() {
    // Duplicate centroids: every point is equally near 1 and 3 (and 0 and 2).
    let c = Centroids::new(vec![5.0, 5.0, 1.0, 1.0, 5.0, 5.0, 1.0, 1.0], 2);
    let pts: Vec<f32> = (0..40).map(|i| (i % 7) as f32 * 0.5).collect();
    for (name, b) in backends() {
        let mut out = vec![Nearest::default(); 20];
        b.assign(&pts, &c, &mut out).unwrap();
        for (i, o) in out.iter().enumerate() {
            assert!(o.label == 0 || o.label == 1, "{name} row {i}: label {} is a higher duplicate", o.label);
            assert_eq!(o.dist, o.second, "{name} row {i}: the duplicate is the runner-up");
        }
    }
}

#[test]
fn far_from_origin_data_is_still_exact() {
    // Large offsets make ‖x‖² − 2x·c + ‖c‖² cancel badly in f32; labels must not suffer.
    let mut x = blobs(2000, 8, 4, 0.5, 9);
    for v in x.data.iter_mut() {
        *v += 1.0e4;
    }
    let mut c = blobs(4, 8, 4, 0.5, 9);
    for v in c.data.iter_mut() {
        *v += 1.0e4;
    }
    let c = Centroids::new(c.data, 8);
    for (name, b) in backends() {
        let mut out = vec![Nearest::default(); x.n()];
        b.assign(&x.data, &c, &mut out).unwrap();
        for (i, o) in out.iter().enumerate() {
            let best = (0..4).map(|j| (d2(x.row(i), c.row(j)), j)).min_by(|a, b| a.partial_cmp(b).unwrap()).unwrap();
            assert_eq!(o.label as usize, best.1, "{name} row {i}");
        }
    }
}

#[test]
fn stats_merge_by_addition() {
    let x = blobs(3000, 4, 5, 4.0, 3);
    let c = Centroids::new(x.data[..5 * 4].to_vec(), 4);
    let b = CpuBackend::default();
    let mut out = vec![Nearest::default(); x.n()];
    b.assign(&x.data, &c, &mut out).unwrap();
    let whole = b.reduce(&x.data, None, &out, 5).unwrap();
    let split = 1234;
    let mut merged = b.reduce(&x.data[..split * 4], None, &out[..split], 5).unwrap();
    merged.merge(&b.reduce(&x.data[split * 4..], None, &out[split..], 5).unwrap());
    assert_eq!(whole.count, merged.count);
    assert_eq!(whole.weight, merged.weight);
    for (a, m) in whole.sum.iter().chain(&whole.sse).zip(merged.sum.iter().chain(&merged.sse)) {
        assert!((a - m).abs() <= 1e-9 * a.abs().max(1.0), "{a} vs {m}");
    }
    let mut zero = ClusterStats::zeros(5, 4);
    zero.merge(&whole);
    assert_eq!(zero, whole);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn prop_assign_is_f64_argmin(
        dim in 1usize..40,
        k in 1usize..70,
        n in 1usize..60,
        scale in prop_oneof![Just(1.0f32), Just(1e-3f32), Just(1e3f32)],
        seed in any::<u64>(),
    ) {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let x: Vec<f32> = (0..n * dim).map(|_| scale * (rng.random::<f32>() * 2.0 - 1.0)).collect();
        let c = Centroids::new((0..k * dim).map(|_| scale * (rng.random::<f32>() * 2.0 - 1.0)).collect(), dim);
        for (name, b) in backends() {
            let mut out = vec![Nearest::default(); n];
            b.assign(&x, &c, &mut out).unwrap();
            for i in 0..n {
                let xi = &x[i * dim..(i + 1) * dim];
                let best = (0..k).map(|j| (d2(xi, c.row(j)), j)).min_by(|a, b| a.partial_cmp(b).unwrap()).unwrap();
                prop_assert_eq!(out[i].label as usize, best.1, "{} row {}", name, i);
                prop_assert!((out[i].dist as f64 - best.0).abs() <= 1e-6 * best.0 + 1e-30, "{} row {}: {} vs {}", name, i, out[i].dist, best.0);
            }
        }
    }
}
