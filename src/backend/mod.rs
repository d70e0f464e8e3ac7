//! The backend seam: the two passes every clustering iteration makes over the data
//! (assign each point to its nearest centroids; reduce per-centroid statistics that
//! merge by addition). `cpu` implements them with rayon; a GPU backend is a second
//! implementation of the same trait. Backends know nothing of files or models.

pub mod cpu;
pub mod fallback;
pub mod wgpu;

use serde::Serialize;

use crate::error::Result;

/// k centroids of `dim` features, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Centroids {
    pub k: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Centroids {
    pub fn new(data: Vec<f32>, dim: usize) -> Self {
        assert!(dim > 0 && data.len().is_multiple_of(dim) && !data.is_empty());
        Centroids { k: data.len() / dim, dim, data }
    }
    pub fn row(&self, j: usize) -> &[f32] {
        &self.data[j * self.dim..(j + 1) * self.dim]
    }
}

/// A point's nearest and second-nearest centroid (squared Euclidean distances).
/// `second` is +inf when k = 1.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[repr(C)]
pub struct Nearest {
    pub label: u32,
    pub dist: f32,
    pub second: f32,
}

/// Per-centroid statistics of one pass; they merge by addition, so chunks, files,
/// devices or partitions can each produce one and the sum is the whole data's.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ClusterStats {
    pub k: usize,
    pub dim: usize,
    /// Members per centroid.
    pub count: Vec<u64>,
    /// Sum of member weights.
    pub weight: Vec<f64>,
    /// Weighted sum of member rows (k × dim).
    pub sum: Vec<f64>,
    /// Weighted sum of squared distances of members to the centroid they were assigned to.
    pub sse: Vec<f64>,
}

impl ClusterStats {
    pub fn zeros(k: usize, dim: usize) -> Self {
        ClusterStats { k, dim, count: vec![0; k], weight: vec![0.0; k], sum: vec![0.0; k * dim], sse: vec![0.0; k] }
    }

    /// Add another pass's statistics (same k and dim).
    pub fn merge(&mut self, other: &ClusterStats) {
        assert_eq!((self.k, self.dim), (other.k, other.dim), "merging stats of different shapes");
        for (a, b) in self.count.iter_mut().zip(&other.count) {
            *a += b;
        }
        for (a, b) in self.weight.iter_mut().zip(&other.weight) {
            *a += b;
        }
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (a, b) in self.sse.iter_mut().zip(&other.sse) {
            *a += b;
        }
    }

    /// The objective: total weighted squared distance.
    pub fn inertia(&self) -> f64 {
        self.sse.iter().sum()
    }
}

/// The passes a clustering algorithm needs from a compute backend.
pub trait Backend: Send + Sync {
    /// Short name written into models and summaries ("cpu", "wgpu").
    fn name(&self) -> &'static str;

    /// Whether labels are the exact nearest centroid even at near-ties (the CPU
    /// decides those in f64; a GPU in f32 may differ where the two nearest are
    /// within rounding of each other).
    fn exact_labels(&self) -> bool {
        true
    }

    /// For every row of `points` (row-major, `centroids.dim` wide) its nearest and
    /// second-nearest centroid. Ties go to the lower centroid index.
    fn assign(&self, points: &[f32], centroids: &Centroids, out: &mut [Nearest]) -> Result<()>;

    /// As `assign`, with the same exact labels, but `dist` and `second` may carry the
    /// rounding of the fast distance expansion. Iterations that only need labels use
    /// it; a backend without a cheaper path keeps this default. `out` may hold each
    /// row's label from an earlier pass with the same k (u32::MAX: none), which the CPU's
    /// 8-bit kernels use to bound the row; the labels never depend on it, and the
    /// distances are those `assign_reduce` gives from the same `out`.
    fn assign_labels(&self, points: &[f32], centroids: &Centroids, out: &mut [Nearest]) -> Result<()> {
        self.assign(points, centroids, out)
    }

    /// One Lloyd iteration's pass: exact labels into `nearest` (distances as
    /// `assign_labels` gives them), how many labels differ from those `nearest` held,
    /// and the statistics of the new assignment, equal to `reduce`'s bit for bit. A
    /// backend may fuse the three (the CPU does: each row is read once per iteration).
    fn assign_reduce(
        &self,
        points: &[f32],
        weights: Option<&[f32]>,
        centroids: &Centroids,
        nearest: &mut [Nearest],
    ) -> Result<(ClusterStats, u64)> {
        assign_then_reduce(self, points, weights, centroids, nearest)
    }

    /// `points` will be passed, unchanged, to many passes (a fit's iterations) until
    /// `release`: a device backend may keep them resident instead of uploading each time.
    /// Calls for the same matrix nest (a fit inside a job that retained it keeps what was
    /// prepared); another matrix replaces the retained one.
    fn retain(&self, _points: &[f32], _dim: usize) -> Result<()> {
        Ok(())
    }

    /// The end of what `retain` announced.
    fn release(&self) {}

    /// The CPU backend itself, for the CPU-side variants (pruned, Hamerly) that share
    /// its per-fit state; `None` for a device.
    fn as_cpu(&self) -> Option<&cpu::CpuBackend> {
        None
    }

    /// Rows a Gaussian-mixture E-step call should cover: few enough that their
    /// responsibilities stay in the CPU's cache, or, for a device, many enough to fill it.
    fn gmm_block_rows(&self) -> usize {
        16_384
    }

    /// The Gaussian-mixture E-step for rows `rows` of `points` (row-major, `terms.dim`
    /// wide): each row's responsibilities under the mixture `terms` describes (rows × k,
    /// summing to 1; 0 where a component's weighted density is below e^−60 of the
    /// row's best) and the log of its total density. The whole matrix is passed so a
    /// device can keep it resident across blocks and iterations. The CPU twin works in
    /// f64; a device may work in f32.
    fn gmm_estep(
        &self,
        points: &[f32],
        rows: std::ops::Range<usize>,
        terms: &crate::gmm::GaussianTerms,
        resp: &mut [f32],
        log_norm: &mut [f64],
    ) -> Result<()> {
        let d = terms.dim;
        cpu::gmm::estep(&points[rows.start * d..rows.end * d], terms, resp, log_norm);
        Ok(())
    }

    /// Per-centroid count, weight, weighted sum and squared error from a labelling.
    /// The summation order is fixed by row index, so results repeat bit for bit.
    fn reduce(&self, points: &[f32], weights: Option<&[f32]>, nearest: &[Nearest], k: usize) -> Result<ClusterStats>;
}

/// `Backend::assign_reduce` unfused: `assign_labels`, the count, then `reduce`.
pub fn assign_then_reduce<B: Backend + ?Sized>(
    b: &B,
    points: &[f32],
    weights: Option<&[f32]>,
    centroids: &Centroids,
    nearest: &mut [Nearest],
) -> Result<(ClusterStats, u64)> {
    let old: Vec<u32> = nearest.iter().map(|n| n.label).collect();
    b.assign_labels(points, centroids, nearest)?;
    let changed = count_changed(&old, nearest);
    Ok((b.reduce(points, weights, nearest, centroids.k)?, changed))
}

/// Rows whose label differs from `old`.
pub fn count_changed(old: &[u32], nearest: &[Nearest]) -> u64 {
    use rayon::prelude::*;
    nearest.par_iter().zip(old).filter(|(n, l)| n.label != **l).count() as u64
}

/// Where the passes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// A hardware GPU when one exists (said in the log), else the CPU.
    #[default]
    Auto,
    /// The GPU; an error when there is none.
    Gpu,
    Cpu,
}

impl std::str::FromStr for BackendChoice {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "gpu" => Ok(BackendChoice::Gpu),
            "cpu" => Ok(BackendChoice::Cpu),
            other => Err(crate::Error::Usage(format!("backend '{other}': use auto, gpu or cpu"))),
        }
    }
}

/// Open a backend. `allow_software` also accepts a software adapter (Mesa's lavapipe).
pub fn open(choice: BackendChoice, allow_software: bool) -> Result<Box<dyn Backend>> {
    open_with_kernel(choice, allow_software, cpu::Kernel::Auto)
}

/// As [`open`], the CPU backend running `kernel` (its CPU-side variants too: pruned
/// and Hamerly passes). A kernel this CPU lacks is refused with the ones it has.
pub fn open_with_kernel(choice: BackendChoice, allow_software: bool, kernel: cpu::Kernel) -> Result<Box<dyn Backend>> {
    if !kernel.supported() {
        let have: Vec<&str> = cpu::Kernel::available().iter().map(|k| k.name()).collect();
        return Err(crate::Error::Usage(format!(
            "--kernel {}: this CPU lacks its instructions ({}); it has: auto, {}",
            kernel.name(),
            kernel.needs(),
            have.join(", ")
        )));
    }
    let cpu = || Box::new(cpu::CpuBackend::new(kernel));
    // A GPU that fails mid-job hands over to the CPU (see `fallback`).
    let with_fallback = |b: wgpu::WgpuBackend| -> Result<Box<dyn Backend>> {
        Ok(Box::new(fallback::Fallback::new(Box::new(b), cpu::CpuBackend::new(kernel))?))
    };
    match choice {
        BackendChoice::Cpu => Ok(cpu()),
        BackendChoice::Gpu => with_fallback(open_gpu(allow_software)?),
        BackendChoice::Auto => match wgpu::WgpuBackend::open(allow_software)? {
            Some(b) => {
                log_adapter(&b, "; --backend cpu to stay on the CPU");
                with_fallback(b)
            }
            None => {
                log::info!("no GPU adapter found; using the CPU backend");
                Ok(cpu())
            }
        },
    }
}

/// The GPU backend, or an error that lists the adapters wgpu did find.
pub fn open_gpu(allow_software: bool) -> Result<wgpu::WgpuBackend> {
    match wgpu::WgpuBackend::open(allow_software)? {
        Some(b) => {
            log_adapter(&b, "");
            Ok(b)
        }
        None => Err(crate::Error::Usage(no_gpu_message(allow_software))),
    }
}

fn log_adapter(b: &wgpu::WgpuBackend, note: &str) {
    let a = &b.ctx.adapter;
    log::info!("using GPU adapter {} ({}, {}){note}", a.name, a.backend, a.device_type);
}

fn no_gpu_message(allow_software: bool) -> String {
    let seen = wgpu::list_adapters();
    let seen = if seen.is_empty() {
        "wgpu found no adapter at all".to_string()
    } else {
        format!(
            "wgpu found only: {}",
            seen.iter()
                .map(|a| format!("{} ({}, {})", a.name, a.backend, a.device_type))
                .collect::<Vec<_>>()
                .join("; ")
        )
    };
    let hint = if allow_software { "" } else { "; --allow-software-gpu accepts a software adapter such as lavapipe" };
    format!("--backend gpu: no GPU adapter ({seen}); use --backend cpu{hint}")
}
