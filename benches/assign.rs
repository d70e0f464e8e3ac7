//! Criterion benches of one assignment pass and one reduction pass, with the naive
//! triple loop as the baseline in the same group. Ids read
//! `assign/<impl>/n=…,d=…,k=…`. Sizes are modest so the bench runs in minutes on two
//! cores; the full-size peer comparison is scripts/bench-peers.sh.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use microseg::backend::cpu::{CpuBackend, Kernel};
use microseg::backend::{Backend, Centroids, Nearest};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn data(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    (0..n * d).map(|_| r.random::<f32>() * 2.0 - 1.0).collect()
}

/// Every point against every centroid, one multiply-add at a time.
fn naive(x: &[f32], c: &Centroids, out: &mut [Nearest]) {
    let d = c.dim;
    for (i, o) in out.iter_mut().enumerate() {
        let xi = &x[i * d..(i + 1) * d];
        let (mut b1, mut b2) = ((f32::INFINITY, 0u32), f32::INFINITY);
        for j in 0..c.k {
            let s: f32 = xi.iter().zip(c.row(j)).map(|(a, b)| (a - b) * (a - b)).sum();
            if s < b1.0 {
                b2 = b1.0;
                b1 = (s, j as u32);
            } else if s < b2 {
                b2 = s;
            }
        }
        *o = Nearest { label: b1.1, dist: b1.0, second: b2 };
    }
}

fn bench(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("assign");
    g.sample_size(10);
    for &(n, d, k) in &[(100_000usize, 32usize, 256usize), (100_000, 16, 1024), (200_000, 16, 16)] {
        let x = data(n, d, 1);
        let c = Centroids::new(data(k, d, 2), d);
        let mut out = vec![Nearest::default(); n];
        let id = format!("n={n},d={d},k={k}");
        g.throughput(Throughput::Elements((n * k) as u64));
        for (name, b) in [("cpu-fused", CpuBackend::new(Kernel::Auto)), ("cpu-gemm", CpuBackend::new(Kernel::Gemm))] {
            g.bench_with_input(BenchmarkId::new(name, &id), &(), |bn, _| {
                bn.iter(|| b.assign(&x, &c, &mut out).unwrap())
            });
        }
        if n * k <= 100_000 * 256 {
            g.bench_with_input(BenchmarkId::new("naive", &id), &(), |bn, _| bn.iter(|| naive(&x, &c, &mut out)));
        }
        let b = CpuBackend::default();
        b.assign(&x, &c, &mut out).unwrap();
        g.bench_with_input(BenchmarkId::new("reduce-cpu", &id), &(), |bn, _| {
            bn.iter(|| b.reduce(&x, None, &out, k).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
