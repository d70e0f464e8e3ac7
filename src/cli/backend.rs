//! Backend choice for every command that runs an algorithm (`--backend`, or
//! MICROSEG_BACKEND for batch jobs), and `microseg info`.

use clap::{Args, ValueEnum};

use super::log;
use crate::backend::Backend;
use crate::backend::cpu::CpuBackend;
use crate::backend::wgpu::{self as gpu, WgpuBackend};
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
    #[arg(long, env = "MICROSEG_ALLOW_SOFTWARE_GPU")]
    pub allow_software_gpu: bool,
}

/// The GPU for the similarity commands: `Some` only under `--backend gpu` (their
/// `auto` stays on the CPU, whose 8-bit scan is the measured fast path; the top-k
/// shader has not been timed on hardware yet).
pub(crate) fn similarity_gpu(a: &BackendArgs) -> Result<Option<WgpuBackend>> {
    match a.backend {
        BackendArg::Cpu | BackendArg::Auto => Ok(None),
        BackendArg::Gpu => match WgpuBackend::open(a.allow_software_gpu)? {
            Some(b) => {
                log(format!(
                    "using GPU adapter {} ({}, {})",
                    b.ctx.adapter.name, b.ctx.adapter.backend, b.ctx.adapter.device_type
                ));
                Ok(Some(b))
            }
            None => Err(Error::Usage(no_gpu_message(a.allow_software_gpu))),
        },
    }
}

/// Open the backend the flags ask for.
pub(crate) fn open(a: &BackendArgs) -> Result<Box<dyn Backend>> {
    match a.backend {
        BackendArg::Cpu => Ok(Box::new(CpuBackend::default())),
        BackendArg::Gpu => match WgpuBackend::open(a.allow_software_gpu)? {
            Some(b) => {
                log(format!(
                    "using GPU adapter {} ({}, {})",
                    b.ctx.adapter.name, b.ctx.adapter.backend, b.ctx.adapter.device_type
                ));
                Ok(Box::new(b))
            }
            None => Err(Error::Usage(no_gpu_message(a.allow_software_gpu))),
        },
        BackendArg::Auto => match WgpuBackend::open(a.allow_software_gpu)? {
            Some(b) => {
                log(format!(
                    "using GPU adapter {} ({}, {}); --backend cpu to stay on the CPU",
                    b.ctx.adapter.name, b.ctx.adapter.backend, b.ctx.adapter.device_type
                ));
                Ok(Box::new(b))
            }
            None => {
                log("no GPU adapter found; using the CPU backend");
                Ok(Box::new(CpuBackend::default()))
            }
        },
    }
}

fn no_gpu_message(allow_software: bool) -> String {
    let seen = gpu::list_adapters();
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
            "adapters": adapters,
            "auto_backend": would_use,
        }));
    }
    let mut text = format!("microseg {}\n", crate::ENGINE_VERSION);
    text += &format!(
        "cpu: {} threads, distance kernel: {}\n",
        rayon::current_num_threads(),
        if crate::backend::cpu::fused::available() { "fused AVX2/FMA" } else { "SGEMM (matrixmultiply)" }
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
