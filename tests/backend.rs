//! The backend passes, generic over the backend (each test body runs for every
//! backend and kernel): hand-computed cases, invariants, and property tests against
//! an f64 reference.

use microseg::backend::cpu::{CpuBackend, Kernel};
use microseg::backend::wgpu::WgpuBackend;
use microseg::backend::{Backend, Centroids, ClusterStats, Nearest};
use proptest::prelude::*;

use crate::util::{blobs, d2};

/// Every backend this machine has: every CPU kernel, and the wgpu backend (a
/// software adapter such as lavapipe counts here) as is and with tiny, streamed
/// chunks. CI sets MICROSEG_REQUIRE_GPU_TESTS so a missing adapter fails, not skips.
pub fn backends() -> Vec<(&'static str, Box<dyn Backend>)> {
    let mut v: Vec<(&'static str, Box<dyn Backend>)> = vec![("cpu-auto", Box::new(CpuBackend::new(Kernel::Auto)))];
    for k in Kernel::available() {
        v.push((k.name(), Box::new(CpuBackend::new(k))));
    }
    match (WgpuBackend::open(true), WgpuBackend::open(true)) {
        (Ok(Some(a)), Ok(Some(b))) => {
            v.push(("wgpu", Box::new(a)));
            v.push(("wgpu-37-row-chunks-streamed", Box::new(b.with_chunk_rows(37).with_resident_budget(0))));
        }
        (r, _) => {
            let why = match r {
                Err(e) => e.to_string(),
                _ => "no adapter".to_string(),
            };
            if std::env::var_os("MICROSEG_REQUIRE_GPU_TESTS").is_some() {
                panic!("no wgpu adapter ({why}) but MICROSEG_REQUIRE_GPU_TESTS is set");
            }
            eprintln!("note: wgpu backend not tested here ({why}); install mesa-vulkan-drivers for lavapipe");
        }
    }
    v
}

/// Whether `got` is acceptable for a row whose exact sorted distances are `d`:
/// the exact nearest, or for an f32 backend the runner-up at a true near-tie.
fn label_ok(b: &dyn Backend, got: u32, d: &[(f64, usize)]) -> bool {
    got as usize == d[0].1
        || (!b.exact_labels() && d.len() > 1 && got as usize == d[1].1 && d[1].0 - d[0].0 <= 1e-5 * d[1].0)
}

/// Distance tolerance: f64-exact for the CPU, f32 differences for a GPU.
fn dist_tol(b: &dyn Backend) -> f64 {
    if b.exact_labels() { 1e-6 } else { 1e-5 }
}

fn check_hand_computed(b: &dyn Backend) {
    // Points on a line and two centroids at 0 and 10.
    let pts = [0.0f32, 0.0, 1.0, 0.0, 6.0, 0.0, 10.0, 0.0, 5.0, 0.0];
    let c = Centroids::new(vec![0.0, 0.0, 10.0, 0.0], 2);
    let mut out = vec![Nearest::default(); 5];
    b.assign(&pts, &c, &mut out).unwrap();
    let want = [(0, 0.0, 100.0), (0, 1.0, 81.0), (1, 16.0, 36.0), (1, 0.0, 100.0), (0, 25.0, 25.0)];
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1.0);
    for (i, (o, w)) in out.iter().zip(want).enumerate() {
        assert_eq!(o.label, w.0, "row {i}: got {o:?}, want {w:?}");
        assert!(close(o.dist as f64, w.1) && close(o.second as f64, w.2), "row {i}: got {o:?}, want {w:?}");
    }
    let all_close = |a: &[f64], b: &[f64]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| close(*x, *y));
    let s = b.reduce(&pts, None, &out, 2).unwrap();
    assert_eq!(s.count, vec![3, 2]);
    assert!(all_close(&s.weight, &[3.0, 2.0]), "{:?}", s.weight);
    assert!(all_close(&s.sum, &[6.0, 0.0, 16.0, 0.0]), "{:?}", s.sum);
    assert!(all_close(&s.sse, &[26.0, 16.0]), "{:?}", s.sse);
    let w = [1.0f32, 2.0, 0.5, 1.0, 0.0];
    let s = b.reduce(&pts, Some(&w), &out, 2).unwrap();
    assert!(all_close(&s.weight, &[3.0, 1.5]), "{:?}", s.weight);
    assert!(all_close(&s.sum, &[2.0, 0.0, 13.0, 0.0]), "{:?}", s.sum);
    assert!(all_close(&s.sse, &[2.0, 8.0]), "{:?}", s.sse);
    if b.exact_labels() {
        // The CPU path is exact on these integers.
        assert_eq!(out[2].dist, 16.0);
    }
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
            assert!(
                (o.dist - o.second).abs() <= 1e-5 * o.second.max(1.0),
                "{name} row {i}: the duplicate is the runner-up"
            );
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
            let mut d: Vec<(f64, usize)> = (0..4).map(|j| (d2(x.row(i), c.row(j)), j)).collect();
            d.sort_by(|a, b| a.partial_cmp(b).unwrap());
            assert!(label_ok(b.as_ref(), o.label, &d), "{name} row {i}: {} vs {:?}", o.label, d);
        }
    }
}

#[test]
fn every_shader_is_valid_wgsl() {
    use microseg::backend::wgpu::{SHADERS, naga};
    let dir = crate::util::repo().join("shaders");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "wgsl"))
        .collect();
    assert!(!files.is_empty(), "no shaders in {}", dir.display());
    assert_eq!(files.len(), SHADERS.len(), "every file in shaders/ is compiled into the backend");
    for f in files {
        let src = std::fs::read_to_string(f.path()).unwrap();
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{}: {}", f.path().display(), e.emit_to_string(&src)));
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::default())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {}", f.path().display(), e.emit_to_string(&src)));
        let entries: Vec<&str> = module.entry_points.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(entries, vec!["main"], "{}: one entry point named main", f.path().display());
    }
}

#[test]
fn reduce_agrees_across_backends() {
    let x = blobs(20_000, 12, 9, 4.0, 31);
    let c = Centroids::new(x.data[..9 * 12].to_vec(), 12);
    let w: Vec<f32> = (0..x.n()).map(|i| 0.25 + (i % 4) as f32).collect();
    let cpu = CpuBackend::default();
    let mut out = vec![Nearest::default(); x.n()];
    cpu.assign(&x.data, &c, &mut out).unwrap();
    let want = cpu.reduce(&x.data, Some(&w), &out, 9).unwrap();
    for (name, b) in backends() {
        let got = b.reduce(&x.data, Some(&w), &out, 9).unwrap();
        assert_eq!(got.count, want.count, "{name}");
        for (what, g, e) in
            [("weight", &got.weight, &want.weight), ("sum", &got.sum, &want.sum), ("sse", &got.sse, &want.sse)]
        {
            for (i, (a, b)) in g.iter().zip(e.iter()).enumerate() {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{name} {what}[{i}]: {a} vs {b}");
            }
        }
        // A fixed summation order: the same call twice gives the same bits.
        assert_eq!(got, b.reduce(&x.data, Some(&w), &out, 9).unwrap(), "{name}: reduce is not repeatable");
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
    #![proptest_config(ProptestConfig { cases: 48, rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed_cafe), .. ProptestConfig::default() })]

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
                let mut d: Vec<(f64, usize)> = (0..k).map(|j| (d2(xi, c.row(j)), j)).collect();
                d.sort_by(|a, b| a.partial_cmp(b).unwrap());
                prop_assert!(label_ok(b.as_ref(), out[i].label, &d), "{} row {}: {} vs {:?}", name, i, out[i].label, &d[..d.len().min(2)]);
                let best = d[0].0;
                let got = d.iter().find(|e| e.1 == out[i].label as usize).unwrap().0;
                // An f32 backend shifts coordinates (to avoid cancellation), so tiny
                // distances between large coordinates carry an absolute error too.
                let abs = if b.exact_labels() { 1e-30 } else { 8.0 * f32::EPSILON as f64 * got.sqrt() * scale as f64 * (dim as f64).sqrt() };
                prop_assert!((out[i].dist as f64 - got).abs() <= dist_tol(b.as_ref()) * best + abs, "{} row {}: {} vs {}", name, i, out[i].dist, got);
            }
        }
    }
}

/// A Lloyd iteration's fused pass (labels kept on the device, or one pass over the rows
/// on the CPU) equals the assignment then the reduction, bit for bit, on every
/// backend and kernel, with and without weights, chunked or not.
#[test]
fn the_fused_pass_equals_assign_then_reduce() {
    let (dim, k) = (5, 12);
    for (name, b) in backends() {
        // The CPU fuses from 2 chunks of 65,536 rows per thread on; the software GPU is slow.
        let n = if name.starts_with("wgpu") { 20_000 } else { 300_000 };
        let x = blobs(n, dim, 7, 4.0, 21);
        let c = Centroids::new(x.data[..k * dim].to_vec(), dim);
        let w: Vec<f32> = (0..n).map(|i| 0.5 + (i % 3) as f32).collect();
        for weights in [None, Some(&w[..])] {
            b.retain(&x.data, dim).unwrap();
            let mut a = vec![Nearest { label: 3, ..Nearest::default() }; n];
            b.assign_labels(&x.data, &c, &mut a).unwrap();
            let want = b.reduce(&x.data, weights, &a, k).unwrap();
            let changed_want = a.iter().filter(|r| r.label != 3).count() as u64;
            let mut f = vec![Nearest { label: 3, ..Nearest::default() }; n];
            let (got, changed) = b.assign_reduce(&x.data, weights, &c, &mut f).unwrap();
            b.release();
            assert_eq!(changed, changed_want, "{name}: changed labels");
            assert!(a.iter().zip(&f).all(|(p, q)| p.label == q.label), "{name}: labels");
            assert_eq!(got.count, want.count, "{name}");
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got.sum), bits(&want.sum), "{name}: sums (weighted: {})", weights.is_some());
            assert_eq!(bits(&got.weight), bits(&want.weight), "{name}: weights");
            assert_eq!(bits(&got.sse), bits(&want.sse), "{name}: squared error");
        }
    }
}

/// The top-k dispatch's slices of the base: enough for the target's workgroups however
/// few the queries, never a slice under one tile of rows, the lists within their budget.
#[test]
fn topk_slices_fill_the_gpu_within_the_tiles_and_the_memory() {
    use microseg::backend::wgpu::{TOPK_SLICES_ENV, topk_slices};
    if std::env::var_os(TOPK_SLICES_ENV).is_some() {
        return; // a forced count applies everywhere
    }
    // 1,000 queries are 16 workgroups of 64: 64 slices of a 4,096-row dispatch give 1,024.
    assert_eq!(topk_slices(1000, 116, 4096), 64);
    // Slices hold a tile of rows at least.
    assert_eq!(topk_slices(10, 28, 512), 8);
    assert_eq!(topk_slices(10, 28, 10), 1);
    // Many queries fill the GPU alone.
    assert_eq!(topk_slices(100_000, 16, 4096), 1);
    // The lists stay within 256 MiB: 20,000 queries × 1,000 kept × 8 bytes is 160 MB.
    assert_eq!(topk_slices(20_000, 1000, 4096), 1);
    assert_eq!(topk_slices(2_000, 1000, 4096), 16);
}
