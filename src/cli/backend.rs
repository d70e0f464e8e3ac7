//! Backend choice for every command that runs an algorithm (`--backend`, or
//! MICROSEG_BACKEND for batch jobs), and `microseg info`.

use clap::{Args, ValueEnum};

use crate::backend::cpu::Kernel;
use crate::backend::wgpu::{self as gpu, WgpuBackend};
use crate::backend::{Backend, BackendChoice};
use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackendArg {
    /// A hardware GPU when one exists (said on stderr), else the CPU.
    Auto,
    /// The GPU; fails when there is none.
    Gpu,
    Cpu,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct BackendArgs {
    /// Where the passes run.
    #[arg(long, value_enum, env = "MICROSEG_BACKEND", default_value = "auto")]
    pub backend: BackendArg,
    /// Also accept a software GPU adapter (Mesa's lavapipe); slower than the CPU
    /// backend, useful to test the shaders on a machine without a GPU.
    #[arg(long, env = "MICROSEG_ALLOW_SOFTWARE_GPU")]
    pub allow_software_gpu: bool,
    /// The CPU distance kernel. Every kernel gives the same labels and model byte for
    /// byte; auto picks the fastest for the CPU and the shape (`microseg info` lists
    /// them). A kernel this CPU lacks exits 2.
    #[arg(long, value_enum, env = "MICROSEG_CPU_KERNEL", default_value = "auto")]
    pub kernel: KernelArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum KernelArg {
    /// 8-bit codes with a proven bound (VNNI, else AVX2); SGEMM without AVX2.
    Auto,
    /// Blocked SGEMM (matrixmultiply) and a scan: any CPU.
    Gemm,
    /// The fused f32 kernel (AVX2 + FMA).
    #[value(name = "f32-avx2")]
    F32Avx2,
    /// The fused f32 kernel with 16 AVX-512 lanes.
    #[value(name = "f32-avx512")]
    F32Avx512,
    /// 8-bit codes, AVX2 (`vpmaddubsw`).
    #[value(name = "int8-avx2")]
    Int8Avx2,
    /// 8-bit codes, AVX-512 VNNI (`vpdpbusd`).
    #[value(name = "int8-vnni")]
    Int8Vnni,
}

impl From<KernelArg> for Kernel {
    fn from(k: KernelArg) -> Kernel {
        match k {
            KernelArg::Auto => Kernel::Auto,
            KernelArg::Gemm => Kernel::Gemm,
            KernelArg::F32Avx2 => Kernel::F32Avx2,
            KernelArg::F32Avx512 => Kernel::F32Avx512,
            KernelArg::Int8Avx2 => Kernel::Int8Avx2,
            KernelArg::Int8Vnni => Kernel::Int8Vnni,
        }
    }
}

impl BackendArg {
    fn choice(self) -> BackendChoice {
        match self {
            BackendArg::Auto => BackendChoice::Auto,
            BackendArg::Gpu => BackendChoice::Gpu,
            BackendArg::Cpu => BackendChoice::Cpu,
        }
    }
}

/// The GPU for the similarity commands: `Some` only under `--backend gpu` (their
/// `auto` stays on the CPU, whose 8-bit scan is the measured fast path; the top-k
/// shader has not been timed on hardware yet).
pub(crate) fn similarity_gpu(a: &BackendArgs) -> Result<Option<WgpuBackend>> {
    match a.backend {
        BackendArg::Cpu | BackendArg::Auto => Ok(None),
        BackendArg::Gpu => crate::backend::open_gpu(a.allow_software_gpu).map(Some),
    }
}

/// Open the backend the flags ask for.
pub(crate) fn open(a: &BackendArgs) -> Result<Box<dyn Backend>> {
    crate::backend::open_with_kernel(a.backend.choice(), a.allow_software_gpu, a.kernel.into())
}

#[derive(Debug, Args)]
pub(crate) struct InfoArgs {
    /// Also consider software adapters for the job (as --allow-software-gpu).
    #[arg(long)]
    allow_software_gpu: bool,
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn run_info(a: InfoArgs) -> Result<()> {
    let adapters = gpu::list_adapters();
    let chosen = gpu::pick_adapter(a.allow_software_gpu);
    let would_use = match &chosen {
        Some(c) => format!("wgpu on {} ({})", c.name, c.backend),
        None => "cpu".to_string(),
    };
    if a.json {
        return super::print_json(&serde_json::json!({
            "command": "info",
            "engine_version": crate::ENGINE_VERSION,
            "cpu_threads": rayon::current_num_threads(),
            "cpu_fused_kernel": crate::backend::cpu::fused::available(),
            "cpu_kernels": Kernel::available().iter().map(|k| k.name()).collect::<Vec<_>>(),
            "cpu_kernel_k256_d32": Kernel::Auto.resolve(256, 32).name(),
            "adapters": adapters,
            "auto_backend": would_use,
        }));
    }
    let mut text = format!("microseg {}\n", crate::ENGINE_VERSION);
    let kernels: Vec<&str> = Kernel::available().iter().map(|k| k.name()).collect();
    text += &format!(
        "cpu: {} threads, distance kernels: {} (auto: {} at k = 256, d = 32; {} at k = 16)\n",
        rayon::current_num_threads(),
        kernels.join(", "),
        Kernel::Auto.resolve(256, 32).name(),
        Kernel::Auto.resolve(16, 16).name()
    );
    if adapters.is_empty() {
        text += "gpu: no adapter found\n";
    }
    for (i, ad) in adapters.iter().enumerate() {
        text += &format!(
            "gpu {i}: {} ({}, {}{}), driver {}; max storage binding {} MiB, max buffer {} MiB, workgroup storage {} B, {} invocations/workgroup\n",
            ad.name,
            ad.backend,
            ad.device_type,
            if ad.software { ", software" } else { "" },
            if ad.driver.is_empty() { "?" } else { &ad.driver },
            ad.max_storage_buffer_binding_size >> 20,
            ad.max_buffer_size >> 20,
            ad.max_compute_workgroup_storage_size,
            ad.max_compute_invocations_per_workgroup
        );
    }
    text += &format!("--backend auto would use: {would_use}\n");
    crate::io::output::print_stdout(&text)
}
