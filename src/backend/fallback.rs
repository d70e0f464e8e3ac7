//! A device backend that falls back to the CPU: when the GPU fails in the middle of a
//! job (device lost, out of memory, a driver panic), the failed pass runs again on the
//! CPU backend, with a notice, and every later pass stays there. The passes are
//! stateless (points and centroids come with every call), so a fit simply continues
//! from its current centroids; a resident copy of the points is released.
//!
//! `MICROSEG_INJECT_GPU_FAULT=N` makes the N-th device pass (1-based) fail as a lost
//! device would, so the path can be tested without pulling a GPU out of its slot.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::cpu::CpuBackend;
use super::{Backend, Centroids, ClusterStats, Nearest};
use crate::error::{Error, Result};

/// The environment variable that injects a device fault at the N-th pass.
pub const INJECT_ENV: &str = "MICROSEG_INJECT_GPU_FAULT";

pub struct Fallback {
    device: Box<dyn Backend>,
    cpu: CpuBackend,
    failed: AtomicBool,
    /// Device passes made so far (for the injected fault).
    passes: AtomicU64,
    inject_at: Option<u64>,
}

impl Fallback {
    pub fn new(device: Box<dyn Backend>, cpu: CpuBackend) -> Result<Self> {
        let inject_at = match std::env::var(INJECT_ENV) {
            Ok(v) => Some(v.trim().parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                Error::Usage(format!("{INJECT_ENV}={v}: give the pass (1, 2, ...) at which the GPU should fail"))
            })?),
            Err(_) => None,
        };
        Ok(Fallback { device, cpu, failed: AtomicBool::new(false), passes: AtomicU64::new(0), inject_at })
    }

    /// Whether the device failed and the CPU took over.
    pub fn fell_back(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Run a pass (`f` on a backend) on the device, or on the CPU once the device has
    /// failed. A device error or panic switches to the CPU, which runs the same pass.
    fn pass<T>(&self, what: &str, mut f: impl FnMut(&dyn Backend) -> Result<T>) -> Result<T> {
        if !self.fell_back() {
            let n = self.passes.fetch_add(1, Ordering::Relaxed) + 1;
            let why = if self.inject_at == Some(n) {
                format!("injected fault ({INJECT_ENV}={n}): device lost")
            } else {
                match crate::io::contain(|| f(self.device.as_ref())) {
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(e @ Error::Stopped { .. })) => return Err(e),
                    Ok(Err(e)) => e.to_string(),
                    Err(panic) => format!("the driver panicked: {panic}"),
                }
            };
            self.failed.store(true, Ordering::Relaxed);
            log::warn!(
                "the GPU failed during the {what} pass ({why}); continuing on the CPU from the current state \
                 (--backend cpu skips the GPU)"
            );
            crate::io::contain(|| self.device.release()).ok();
        }
        f(&self.cpu)
    }
}

impl Backend for Fallback {
    fn name(&self) -> &'static str {
        if self.fell_back() { "gpu, then cpu" } else { self.device.name() }
    }

    fn exact_labels(&self) -> bool {
        // Fixed for the whole job: a fit chooses its path from it once.
        self.device.exact_labels()
    }

    fn assign(&self, points: &[f32], centroids: &Centroids, out: &mut [Nearest]) -> Result<()> {
        self.pass("assign", |b| b.assign(points, centroids, out))
    }

    fn assign_labels(&self, points: &[f32], centroids: &Centroids, out: &mut [Nearest]) -> Result<()> {
        self.pass("assign", |b| b.assign_labels(points, centroids, out))
    }

    fn assign_reduce(
        &self,
        points: &[f32],
        weights: Option<&[f32]>,
        centroids: &Centroids,
        nearest: &mut [Nearest],
    ) -> Result<(ClusterStats, u64)> {
        // A failed device pass may have overwritten some labels; the CPU's rerun counts
        // the changed labels against those from before the pass.
        let before: Vec<Nearest> = if self.fell_back() { Vec::new() } else { nearest.to_vec() };
        let mut calls = 0;
        self.pass("assign", |b| {
            calls += 1;
            if calls > 1 {
                nearest.copy_from_slice(&before);
            }
            b.assign_reduce(points, weights, centroids, nearest)
        })
    }

    fn retain(&self, points: &[f32], dim: usize) -> Result<()> {
        if self.fell_back() {
            return self.cpu.retain(points, dim);
        }
        // Announcing is not a pass: nothing is uploaded yet.
        crate::io::contain(|| self.device.retain(points, dim))
            .unwrap_or_else(|panic| Err(Error::Runtime(format!("GPU: the driver panicked: {panic}"))))
    }

    fn release(&self) {
        if self.fell_back() {
            self.cpu.release();
        } else {
            crate::io::contain(|| self.device.release()).ok();
        }
    }

    fn as_cpu(&self) -> Option<&CpuBackend> {
        // Fixed for the whole job, as `exact_labels`.
        self.device.as_cpu()
    }

    fn gmm_block_rows(&self) -> usize {
        self.device.gmm_block_rows()
    }

    fn gmm_estep(
        &self,
        points: &[f32],
        rows: std::ops::Range<usize>,
        terms: &crate::gmm::GaussianTerms,
        resp: &mut [f32],
        log_norm: &mut [f64],
    ) -> Result<()> {
        self.pass("mixture E-step", |b| b.gmm_estep(points, rows.clone(), terms, resp, log_norm))
    }

    fn reduce(&self, points: &[f32], weights: Option<&[f32]>, nearest: &[Nearest], k: usize) -> Result<ClusterStats> {
        self.pass("reduce", |b| b.reduce(points, weights, nearest, k))
    }
}
