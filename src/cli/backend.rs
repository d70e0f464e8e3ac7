//! Backend choice for every command that runs an algorithm (`--backend`, or
//! MICROSEG_BACKEND for batch jobs), and `microseg info`.

use clap::{Args, ValueEnum};

use crate::backend::cpu::Kernel;
use crate::backend::wgpu::{self as gpu, WgpuBackend};
use crate::backend::{Backend, BackendChoice};
use crate::error::{Error, Result};

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
    #[arg(long, env = "MICROSEG_ALLOW_SOFTWARE_GPU", value_parser = clap::builder::BoolishValueParser::new())]
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
    /// 8-bit codes, VNNI with Lloyd's products on AMX tiles (`tdpbsud`), d ≤ 64.
    #[value(name = "int8-amx")]
    Int8Amx,
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
            KernelArg::Int8Amx => Kernel::Int8Amx,
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

/// The file `scripts/gpu-check.sh` writes (its auto.json): where each kind of pass ran
/// faster on that machine's GPU adapter. With it, `auto` follows the measurement.
pub const AUTO_FILE_ENV: &str = "MICROSEG_AUTO_FILE";

/// Where a kind of pass won in gpu-check's measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Side {
    Cpu,
    Gpu,
}

#[derive(Debug, serde::Deserialize)]
struct Measured {
    /// The adapter measured (as `microseg info` names it).
    adapter: String,
    /// k-means passes (fit, assign, ...).
    kmeans: Side,
    /// Exact top-k (`neighbors`, `similar`).
    similarity: Side,
}

/// The measured side for one kind of pass under `--backend auto`: `None` without the
/// file (unset or empty: the default rule), or where it was measured on another adapter than the one
/// `auto` would use here (said on stderr); the CPU where there is no adapter.
fn measured_side(allow_software: bool, kind: fn(&Measured) -> Side) -> Result<Option<Side>> {
    let Some(path) = std::env::var_os(AUTO_FILE_ENV).filter(|p| !p.is_empty()) else { return Ok(None) };
    let path = std::path::PathBuf::from(path);
    let what = "point it at the auto.json scripts/gpu-check.sh wrote, or unset it";
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Usage(format!("{AUTO_FILE_ENV}={}: cannot read it ({e}); {what}", path.display())))?;
    let m: Measured = serde_json::from_str(&text).map_err(|e| {
        Error::Usage(format!(
            "{AUTO_FILE_ENV}={}: not gpu-check's auto.json ({e}): it needs \"adapter\", and \"kmeans\" and \
             \"similarity\" each \"cpu\" or \"gpu\"; {what}",
            path.display()
        ))
    })?;
    match gpu::pick_adapter(allow_software) {
        None => Ok(Some(Side::Cpu)),
        Some(a) if a.name == m.adapter => Ok(Some(kind(&m))),
        Some(a) => {
            super::log(format!(
                "{AUTO_FILE_ENV}: measured on {}, not on this machine's {}: auto's default rule applies",
                m.adapter, a.name
            ));
            Ok(None)
        }
    }
}

/// The GPU for the similarity commands: under `--backend gpu`, or under `auto` where
/// gpu-check measured the top-k shader faster than the CPU's scan on this adapter
/// (`MICROSEG_AUTO_FILE`). Without a measurement `auto` stays on the CPU, whose 8-bit
/// scan is the measured fast path.
pub(crate) fn similarity_gpu(a: &BackendArgs) -> Result<Option<WgpuBackend>> {
    match a.backend {
        BackendArg::Cpu => Ok(None),
        BackendArg::Auto => match measured_side(a.allow_software_gpu, |m| m.similarity)? {
            Some(Side::Gpu) => crate::backend::open_gpu(a.allow_software_gpu).map(Some),
            _ => Ok(None),
        },
        BackendArg::Gpu => crate::backend::open_gpu(a.allow_software_gpu).map(Some),
    }
}

/// Open the backend the flags ask for; under `auto` with `MICROSEG_AUTO_FILE`, the CPU
/// where gpu-check measured it faster for k-means passes on this adapter.
pub(crate) fn open(a: &BackendArgs) -> Result<Box<dyn Backend>> {
    let choice = match a.backend {
        BackendArg::Auto if measured_side(a.allow_software_gpu, |m| m.kmeans)? == Some(Side::Cpu) => BackendChoice::Cpu,
        other => other.choice(),
    };
    crate::backend::open_with_kernel(choice, a.allow_software_gpu, a.kernel.into())
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
            "auto_adapter": chosen.as_ref().map(|c| c.name.clone()),
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
