//! The wgpu backend: the assign and reduce passes as WGSL compute shaders
//! (`shaders/*.wgsl`), on any GPU wgpu reaches (Vulkan, Metal, DX12), or on Mesa's
//! lavapipe when asked. A `GpuContext` (device, queue, pipelines, layouts) is built
//! once per job; data that fits stays resident on the device across iterations,
//! larger data streams through in chunks under the storage-binding cap. A Lloyd
//! iteration (`assign_reduce`) uploads nothing per row: the reduce reads the labels and
//! distances from the assignment's own buffers, and only they and the statistics come
//! back. GPU labels equal the CPU backend's except at true near-ties (the CPU decides
//! those in f64).

use std::borrow::Cow;
use std::sync::Mutex;

use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

use super::{Backend, Centroids, ClusterStats, Nearest};

use crate::error::{Error, Result};
/// naga, as wgpu uses it (shader validation in tests).
pub use wgpu::naga;

/// Shader sources, one entry point (`main`) each.
pub const ASSIGN_WGSL: &str = include_str!("../../../shaders/assign.wgsl");
pub const REDUCE_PARTIALS_WGSL: &str = include_str!("../../../shaders/reduce_partials.wgsl");
pub const REDUCE_COMBINE_WGSL: &str = include_str!("../../../shaders/reduce_combine.wgsl");
pub const TOPK_WGSL: &str = include_str!("../../../shaders/topk.wgsl");
pub const GMM_ESTEP_WGSL: &str = include_str!("../../../shaders/gmm_estep.wgsl");
/// Every shader, for validation tests.
pub const SHADERS: &[(&str, &str)] = &[
    ("assign.wgsl", ASSIGN_WGSL),
    ("reduce_partials.wgsl", REDUCE_PARTIALS_WGSL),
    ("reduce_combine.wgsl", REDUCE_COMBINE_WGSL),
    ("topk.wgsl", TOPK_WGSL),
    ("gmm_estep.wgsl", GMM_ESTEP_WGSL),
];
/// Workgroup memory topk.wgsl needs (bytes).
const TOPK_WORKGROUP_BYTES: u32 = (1024 + 1024 + 4096) * 4;
/// Base rows per top-k dispatch. On lavapipe (Mesa 22.3.6), dispatches merging about
/// 1,000 rows or more into lists longer than 64 lost some rows (cause not found; every
/// list is owned by one invocation); 256-row dispatches pass the exactness tests.
/// Check this first on a real GPU.
pub const TOPK_DISPATCH_ROWS: usize = 4096;
/// Mesa's llvmpipe (behind lavapipe) ends every loop of a shader invocation once the
/// invocation has run 65,535 loop iterations in all (`LP_MAX_TGSI_LOOP_ITERATIONS`, its
/// guard against hangs), silently: a top-k dispatch that merged too many rows into long
/// lists lost the later rows. On a software adapter each dispatch is therefore sized so
/// that its merging invocations stay well under that count.
const SOFTWARE_LOOP_BUDGET: usize = 40_000;

/// Base rows per top-k dispatch: TOPK_DISPATCH_ROWS on hardware; on a software adapter
/// as many as keep the estimated loop iterations of one invocation (a rescan of the
/// list per insertion, plus the tile loops) under SOFTWARE_LOOP_BUDGET; None when even
/// one tile would not fit (the list is too long for that driver).
pub fn topk_dispatch_rows(software: bool, keep: usize, dim: usize) -> Option<usize> {
    if !software {
        return Some(TOPK_DISPATCH_ROWS);
    }
    let per_row = keep + 2 + dim.div_ceil(16) * 2;
    let rows = SOFTWARE_LOOP_BUDGET / per_row / ASSIGN_TILE as usize * ASSIGN_TILE as usize;
    (rows >= ASSIGN_TILE as usize).then_some(rows.min(TOPK_DISPATCH_ROWS))
}

/// Workgroups a top-k dispatch aims for: enough for every SM of a large GPU (132 on an
/// H100) to hold several, however few the queries (1,000 queries are 16 workgroups of
/// 64 without slicing the base).
const TOPK_TARGET_GROUPS: usize = 1024;
/// Device memory the per-slice top-k lists may take (scores and indices).
const TOPK_LISTS_BUDGET: usize = 256 << 20;
/// Environment variable: slices of the base per top-k dispatch (tests force counts).
pub const TOPK_SLICES_ENV: &str = "MICROSEG_GPU_TOPK_SLICES";

/// How many slices each top-k dispatch splits its base rows into, each with its own
/// list per query: enough for TOPK_TARGET_GROUPS workgroups, no slice under one tile
/// of rows, the lists within TOPK_LISTS_BUDGET.
pub fn topk_slices(nq: usize, keep: usize, dispatch_rows: usize) -> usize {
    let most = dispatch_rows.div_ceil(ASSIGN_TILE as usize).max(1);
    let memory = (TOPK_LISTS_BUDGET / (nq.max(1) * keep.max(1) * 8)).max(1);
    let forced = std::env::var(TOPK_SLICES_ENV).ok().and_then(|v| v.parse::<usize>().ok());
    let want = forced.unwrap_or_else(|| TOPK_TARGET_GROUPS.div_ceil(nq.div_ceil(ASSIGN_TILE as usize).max(1)));
    want.clamp(1, most.min(memory))
}

/// Mirrors of the shaders' constants.
pub const ASSIGN_TILE: u32 = 64;
pub const REDUCE_WG: u32 = 64;
/// Largest workgroup count per dispatch dimension WebGPU guarantees.
const MAX_GROUPS: u32 = 65_535;
/// Device memory the reduction's partial sums may take.
const PARTIALS_BUDGET: u64 = 64 << 20;

/// Environment variable: rows per chunk (tests force tiny chunks with it).
pub const CHUNK_ROWS_ENV: &str = "MICROSEG_GPU_CHUNK_ROWS";
/// Environment variable: data above this many MiB is streamed, not kept resident.
pub const RESIDENT_MIB_ENV: &str = "MICROSEG_GPU_RESIDENT_MIB";

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AssignParams {
    n: u32,
    k: u32,
    d: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PartialParams {
    n: u32,
    k: u32,
    d: u32,
    rows_per_group: u32,
    weighted: u32,
    slot0: u32,
    _pad0: u32,
    _pad1: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct TopkParams {
    nq: u32,
    nb: u32,
    d: u32,
    k: u32,
    offset: u32,
    span: u32,
    slices: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct EstepParams {
    rows: u32,
    offset: u32,
    k: u32,
    d: u32,
    kind: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct CombineParams {
    k: u32,
    width: u32,
    slots: u32,
    _pad: u32,
}

/// The shader's per-point output (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GpuNearest {
    label: u32,
    dist: f32,
    second: f32,
    changed: u32,
}

const _: () = assert!(std::mem::size_of::<AssignParams>() == 16);
const _: () = assert!(std::mem::size_of::<PartialParams>() == 32);
const _: () = assert!(std::mem::size_of::<CombineParams>() == 16);
const _: () = assert!(std::mem::size_of::<EstepParams>() == 32);
const _: () = assert!(std::mem::size_of::<TopkParams>() == 32);
const _: () = assert!(std::mem::size_of::<GpuNearest>() == 16);

/// What `microseg info` shows of an adapter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterReport {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub software: bool,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
}

fn report(a: &wgpu::Adapter) -> AdapterReport {
    let i = a.get_info();
    let l = a.limits();
    AdapterReport {
        name: i.name.clone(),
        backend: i.backend.to_str().to_string(),
        device_type: format!("{:?}", i.device_type),
        driver: format!("{} {}", i.driver, i.driver_info).trim().to_string(),
        software: i.device_type == wgpu::DeviceType::Cpu,
        max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
        max_buffer_size: l.max_buffer_size,
        max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
        max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
    }
}

/// Vulkan, Metal and DX12 (GL's compute support is too thin, and probing it on a
/// headless machine only prints EGL noise); WGPU_BACKEND overrides.
fn instance() -> wgpu::Instance {
    let desc = wgpu::InstanceDescriptor {
        backends: wgpu::Backends::PRIMARY,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    };
    wgpu::Instance::new(desc.with_env())
}

/// Usable compute adapters, best first: hardware before software, discrete before
/// integrated, native APIs before GL.
fn ranked_adapters() -> Vec<wgpu::Adapter> {
    let mut v: Vec<wgpu::Adapter> = pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .filter(|a| a.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS))
        .collect();
    let rank = |a: &wgpu::Adapter| {
        let i = a.get_info();
        let t = match i.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        (t, (i.backend == wgpu::Backend::Gl) as u8)
    };
    v.sort_by_key(rank);
    v
}

/// Every adapter wgpu finds, best first.
pub fn list_adapters() -> Vec<AdapterReport> {
    ranked_adapters().iter().map(report).collect()
}

/// The adapter a job would use: the best hardware one, or a software one (lavapipe)
/// only when `allow_software`.
pub fn pick_adapter(allow_software: bool) -> Option<AdapterReport> {
    ranked_adapters().iter().find(|a| allow_software || a.get_info().device_type != wgpu::DeviceType::Cpu).map(report)
}

struct Pipe {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// Device, queue and pipelines, built once per job.
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    pub adapter: AdapterReport,
    limits: wgpu::Limits,
    assign: Pipe,
    partials: Pipe,
    combine: Pipe,
    gmm_estep: Pipe,
    /// None when the adapter's workgroup memory is too small for the top-k tile.
    topk: Option<Pipe>,
}

fn gpu_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Runtime(format!("GPU {what}: {e}"))
}

fn entry(binding: u32, ty: wgpu::BufferBindingType) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
        count: None,
    }
}

fn storage(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    entry(binding, wgpu::BufferBindingType::Storage { read_only })
}

impl GpuContext {
    /// Open the best adapter (software only if allowed). `Ok(None)` when there is none.
    pub fn new(allow_software: bool) -> Result<Option<Self>> {
        let Some(adapter) =
            ranked_adapters().into_iter().find(|a| allow_software || a.get_info().device_type != wgpu::DeviceType::Cpu)
        else {
            return Ok(None);
        };
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("microseg"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| gpu_err("device request failed", e))?;
        device.on_uncaptured_error(std::sync::Arc::new(|e: wgpu::Error| {
            log::error!("uncaptured GPU error: {e}");
        }));
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let make = |src: &str, name: &str, entries: &[wgpu::BindGroupLayoutEntry]| {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(src)),
            });
            let layout =
                device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(name), entries });
            let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(name),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: Some(&pl),
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
            Pipe { pipeline, layout }
        };
        let uniform = entry(0, wgpu::BufferBindingType::Uniform);
        let assign = make(
            ASSIGN_WGSL,
            "assign",
            &[uniform, storage(1, true), storage(2, true), storage(3, true), storage(4, false), storage(5, false)],
        );
        let partials = make(
            REDUCE_PARTIALS_WGSL,
            "reduce_partials",
            &[uniform, storage(1, true), storage(2, true), storage(3, true), storage(4, false)],
        );
        let combine = make(REDUCE_COMBINE_WGSL, "reduce_combine", &[uniform, storage(1, true), storage(2, false)]);
        let gmm_estep = make(
            GMM_ESTEP_WGSL,
            "gmm_estep",
            &[
                uniform,
                storage(1, true),
                storage(2, true),
                storage(3, true),
                storage(4, true),
                storage(5, true),
                storage(6, false),
                storage(7, false),
            ],
        );
        let topk = (limits.max_compute_workgroup_storage_size >= TOPK_WORKGROUP_BYTES).then(|| {
            make(
                TOPK_WGSL,
                "topk",
                &[uniform, storage(1, true), storage(2, true), storage(3, false), storage(4, false)],
            )
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(gpu_err("pipeline creation failed", e));
        }
        Ok(Some(GpuContext {
            device,
            queue,
            adapter: report(&adapter),
            limits,
            assign,
            partials,
            combine,
            gmm_estep,
            topk,
        }))
    }

    fn buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(16),
            usage,
            mapped_at_creation: false,
        })
    }

    fn upload(&self, label: &str, bytes: &[u8], usage: wgpu::BufferUsages) -> wgpu::Buffer {
        if bytes.is_empty() {
            return self.buffer(label, 16, usage);
        }
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some(label), contents: bytes, usage })
    }

    /// The one readback helper: copy → map → poll → cast → unmap.
    fn read<T: Pod>(&self, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<T>> {
        let staging = self.buffer("readback", bytes, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(src, 0, &staging, 0, bytes);
        self.queue.submit([enc.finish()]);
        let slice = staging.slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| gpu_err("wait failed", e))?;
        rx.recv().map_err(|e| gpu_err("readback failed", e))?.map_err(|e| gpu_err("readback failed", e))?;
        let out = {
            let view = slice.get_mapped_range().map_err(|e| gpu_err("readback failed", e))?;
            bytemuck::cast_slice::<u8, T>(&view).to_vec()
        };
        staging.unmap();
        Ok(out)
    }

    /// Run `f` inside validation and out-of-memory error scopes.
    fn scoped<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let r = f();
        let v = pollster::block_on(val.pop());
        let o = pollster::block_on(oom.pop());
        if let Some(e) = o {
            return Err(gpu_err(&format!("{what}: out of device memory"), e));
        }
        if let Some(e) = v {
            return Err(gpu_err(&format!("{what}: validation error"), e));
        }
        r
    }

    fn bind(&self, pipe: &Pipe, buffers: &[wgpu::BindingResource<'_>]) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, r)| wgpu::BindGroupEntry { binding: i as u32, resource: r.clone() })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipe.layout,
            entries: &entries,
        })
    }

    fn dispatch(&self, enc: &mut wgpu::CommandEncoder, pipe: &Pipe, bg: &wgpu::BindGroup, groups: u32) {
        self.dispatch_2d(enc, pipe, bg, groups, 1);
    }

    fn dispatch_2d(&self, enc: &mut wgpu::CommandEncoder, pipe: &Pipe, bg: &wgpu::BindGroup, x: u32, y: u32) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
        pass.set_pipeline(&pipe.pipeline);
        pass.set_bind_group(0, bg, &[]);
        pass.dispatch_workgroups(x, y, 1);
    }
}

/// Row chunks of the points, each under the storage-binding cap.
struct Chunks {
    /// (first row, rows) per chunk.
    ranges: Vec<(usize, usize)>,
}

/// Rows per chunk: every per-row buffer of a chunk (points: 4·d bytes per row,
/// outputs: 16) must fit one storage binding, and its workgroups one dispatch.
fn chunk_rows(ctx: &GpuContext, dim: usize, forced: Option<usize>) -> usize {
    let by_binding = (ctx.limits.max_storage_buffer_binding_size / (4 * dim.max(4)) as u64) as usize;
    let by_dispatch = (MAX_GROUPS * ASSIGN_TILE) as usize;
    let env = std::env::var(CHUNK_ROWS_ENV).ok().and_then(|v| v.parse::<usize>().ok());
    forced.or(env).unwrap_or(usize::MAX).min(by_binding).min(by_dispatch).max(1)
}

fn chunks(n: usize, rows: usize) -> Chunks {
    Chunks { ranges: (0..n).step_by(rows.max(1)).map(|s| (s, rows.min(n - s))).collect() }
}

/// Points on the device, shifted by their column means: distances do not change, and
/// the f32 expansion ‖x‖² − 2x·c + ‖c‖² no longer cancels on data far from the origin.
#[derive(Clone)]
struct DevicePoints {
    buffers: Vec<wgpu::Buffer>,
    shift: Vec<f32>,
}

/// Points kept on the device between passes (uploaded once per fit), for the slice
/// announced by `Backend::retain` (address and length identify it until `release`).
struct Resident {
    key: (usize, usize),
    dim: usize,
    /// `retain` calls of that matrix not yet released (they nest).
    depth: usize,
    points: Option<DevicePoints>,
}

/// Seconds spent per kind of work since the last `take_times` (for `microseg bench`).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PassTimes {
    pub upload: f64,
    pub compute: f64,
    pub readback: f64,
}

pub struct WgpuBackend {
    pub ctx: GpuContext,
    resident: Mutex<Option<Resident>>,
    times: Mutex<PassTimes>,
    chunk_rows: Option<usize>,
    resident_budget: Option<u64>,
}

impl WgpuBackend {
    pub fn new(ctx: GpuContext) -> Self {
        WgpuBackend {
            ctx,
            resident: Mutex::new(None),
            times: Mutex::new(PassTimes::default()),
            chunk_rows: None,
            resident_budget: None,
        }
    }

    /// Force chunks of at most `rows` rows (tests exercise tiling with tiny chunks).
    pub fn with_chunk_rows(mut self, rows: usize) -> Self {
        self.chunk_rows = Some(rows.max(1));
        self
    }

    /// Keep at most `bytes` of points resident; larger data streams every pass.
    pub fn with_resident_budget(mut self, bytes: u64) -> Self {
        self.resident_budget = Some(bytes);
        self
    }

    /// Upload, compute and readback seconds since the last call.
    pub fn take_times(&self) -> PassTimes {
        std::mem::take(&mut *self.times.lock().unwrap())
    }

    fn add_time(&self, f: impl FnOnce(&mut PassTimes) -> &mut f64, since: std::time::Instant) {
        *f(&mut self.times.lock().unwrap()) += since.elapsed().as_secs_f64();
    }

    /// Submit and wait until the device is done (so compute time is measured alone).
    fn run(&self, enc: wgpu::CommandEncoder) -> Result<()> {
        let t = std::time::Instant::now();
        self.ctx.queue.submit([enc.finish()]);
        self.ctx.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| gpu_err("wait failed", e))?;
        self.add_time(|t| &mut t.compute, t);
        Ok(())
    }

    fn read<T: Pod>(&self, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<T>> {
        let t = std::time::Instant::now();
        let r = self.ctx.read(src, bytes);
        self.add_time(|t| &mut t.readback, t);
        r
    }

    /// Read one chunk's assignment back into `out`.
    fn collect(&self, obuf: &wgpu::Buffer, out: &mut [Nearest]) -> Result<()> {
        let res: Vec<GpuNearest> = self.read(obuf, (out.len() * 16) as u64)?;
        for (o, r) in out.iter_mut().zip(&res) {
            *o = Nearest { label: r.label, dist: r.dist, second: r.second };
        }
        Ok(())
    }

    /// The assignment pass; returns each chunk's output buffer (labels, distances) on
    /// the device. `upload_prev`: send the labels `out` holds so the shader can flag
    /// changes; without it the buffers start zeroed (nothing per row is uploaded).
    fn assign_on_device(
        &self,
        points: &[f32],
        centroids: &Centroids,
        out: &mut [Nearest],
        upload_prev: bool,
    ) -> Result<Vec<wgpu::Buffer>> {
        let (k, dim) = (centroids.k, centroids.dim);
        let ctx = &self.ctx;
        ctx.scoped("assign", || {
            let (src, ch) = self.source(points, dim);
            let shift = src.shift();
            let moved: Vec<f32> =
                centroids.data.chunks_exact(dim).flat_map(|row| row.iter().zip(shift).map(|(v, c)| v - c)).collect();
            let norms: Vec<f32> = moved.chunks_exact(dim).map(|row| row.iter().map(|v| v * v).sum()).collect();
            let st = wgpu::BufferUsages::STORAGE;
            let cbuf = ctx.upload("centroids", bytemuck::cast_slice(&moved), st);
            let nbuf = ctx.upload("norms", bytemuck::cast_slice(&norms), st);
            let mut pending: Option<(usize, usize, wgpu::Buffer)> = None;
            let mut kept = Vec::with_capacity(ch.ranges.len());
            for (i, &(s, m)) in ch.ranges.iter().enumerate() {
                let buf = self.chunk(&src, i, s, m, dim);
                let params = AssignParams { n: m as u32, k: k as u32, d: dim as u32, _pad: 0 };
                let pbuf = ctx.upload("params", bytemuck::bytes_of(&params), wgpu::BufferUsages::UNIFORM);
                let obuf = if upload_prev {
                    let prev: Vec<GpuNearest> = out[s..s + m]
                        .iter()
                        .map(|o| GpuNearest { label: o.label, dist: 0.0, second: 0.0, changed: 0 })
                        .collect();
                    ctx.upload("nearest", bytemuck::cast_slice(&prev), st | wgpu::BufferUsages::COPY_SRC)
                } else {
                    ctx.buffer("nearest", (m * 16) as u64, st | wgpu::BufferUsages::COPY_SRC)
                };
                let changes =
                    ctx.upload("changes", bytemuck::cast_slice(&[0u32; 4]), st | wgpu::BufferUsages::COPY_SRC);
                let bg = ctx.bind(
                    &ctx.assign,
                    &[
                        pbuf.as_entire_binding(),
                        buf.as_entire_binding(),
                        cbuf.as_entire_binding(),
                        nbuf.as_entire_binding(),
                        obuf.as_entire_binding(),
                        changes.as_entire_binding(),
                    ],
                );
                let mut enc = ctx.device.create_command_encoder(&Default::default());
                ctx.dispatch(&mut enc, &ctx.assign, &bg, (m as u32).div_ceil(ASSIGN_TILE));
                self.submit(&src, enc)?;
                if let Some((ps, pm, pbuf)) = pending.replace((s, m, obuf.clone())) {
                    self.collect(&pbuf, &mut out[ps..ps + pm])?;
                }
                kept.push(obuf);
            }
            if let Some((ps, pm, pbuf)) = pending {
                self.collect(&pbuf, &mut out[ps..ps + pm])?;
            }
            Ok(kept)
        })
    }

    /// The reduction, each chunk's labels and distances from `labels(chunk, start,
    /// rows)`: the assignment's buffers, or an upload of `nearest`.
    fn reduce_from(
        &self,
        points: &[f32],
        weights: Option<&[f32]>,
        nearest: &[Nearest],
        k: usize,
        labels: &dyn Fn(usize, usize, usize) -> wgpu::Buffer,
    ) -> Result<ClusterStats> {
        let n = nearest.len();
        let dim = if n == 0 { 1 } else { points.len() / n };
        let ctx = &self.ctx;
        let width = dim + 2;
        ctx.scoped("reduce", || {
            let (src, ch) = self.source(points, dim);
            let slot_bytes = (k * width * 8) as u64;
            let cap = PARTIALS_BUDGET.min(ctx.limits.max_storage_buffer_binding_size);
            let max_slots = (cap / slot_bytes).max(1) as usize;
            // Slots per chunk: proportional to its rows, at least one, 256 rows or more each.
            let per_chunk: Vec<usize> = ch
                .ranges
                .iter()
                .map(|&(_, m)| ((max_slots * m).div_ceil(n.max(1))).min(m.div_ceil(256)).clamp(1, MAX_GROUPS as usize))
                .collect();
            let slots: usize = per_chunk.iter().sum();
            // llvmpipe's loop limit (see SOFTWARE_LOOP_BUDGET): one invocation sums
            // rows_per_group rows for width/64 columns; past the limit it would stop early.
            let loops = ch.ranges.iter().zip(&per_chunk).map(|(&(_, m), &g)| m.div_ceil(g) * width.div_ceil(64)).max();
            if ctx.adapter.software && loops.unwrap_or(0) > SOFTWARE_LOOP_BUDGET {
                return Err(Error::Runtime(format!(
                    "GPU reduce: {n} rows × {k} centroids × {dim} features is too large for a software GPU \
                     driver (its shader loop limit); use --backend cpu"
                )));
            }
            if slots as u64 * slot_bytes > ctx.limits.max_storage_buffer_binding_size {
                return Err(Error::Runtime(format!(
                    "GPU reduce: {k} centroids × {width} columns do not fit one storage binding; use --backend cpu"
                )));
            }
            let st = wgpu::BufferUsages::STORAGE;
            let partials = ctx.buffer("partials", slots as u64 * slot_bytes, st | wgpu::BufferUsages::COPY_DST);
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            enc.clear_buffer(&partials, 0, None);
            ctx.queue.submit([enc.finish()]);
            let mut slot0 = 0usize;
            for (i, (&(s, m), &g)) in ch.ranges.iter().zip(&per_chunk).enumerate() {
                let buf = self.chunk(&src, i, s, m, dim);
                let lbuf = labels(i, s, m);
                let wbuf = match weights {
                    Some(w) => ctx.upload("weights", bytemuck::cast_slice(&w[s..s + m]), st),
                    None => ctx.buffer("weights", 16, st),
                };
                let params = PartialParams {
                    n: m as u32,
                    k: k as u32,
                    d: dim as u32,
                    rows_per_group: m.div_ceil(g) as u32,
                    weighted: weights.is_some() as u32,
                    slot0: slot0 as u32,
                    _pad0: 0,
                    _pad1: 0,
                };
                let pbuf = ctx.upload("params", bytemuck::bytes_of(&params), wgpu::BufferUsages::UNIFORM);
                let bg = ctx.bind(
                    &ctx.partials,
                    &[
                        pbuf.as_entire_binding(),
                        buf.as_entire_binding(),
                        lbuf.as_entire_binding(),
                        wbuf.as_entire_binding(),
                        partials.as_entire_binding(),
                    ],
                );
                let mut enc = ctx.device.create_command_encoder(&Default::default());
                ctx.dispatch(&mut enc, &ctx.partials, &bg, g as u32);
                self.submit(&src, enc)?;
                slot0 += g;
            }
            let cells = k * width;
            let params = CombineParams { k: k as u32, width: width as u32, slots: slots as u32, _pad: 0 };
            let pbuf = ctx.upload("params", bytemuck::bytes_of(&params), wgpu::BufferUsages::UNIFORM);
            let totals = ctx.buffer("totals", (cells * 4) as u64, st | wgpu::BufferUsages::COPY_SRC);
            let bg = ctx.bind(
                &ctx.combine,
                &[pbuf.as_entire_binding(), partials.as_entire_binding(), totals.as_entire_binding()],
            );
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            ctx.dispatch(&mut enc, &ctx.combine, &bg, (cells as u32).div_ceil(REDUCE_WG));
            self.run(enc)?;
            let t: Vec<f32> = self.read(&totals, (cells * 4) as u64)?;
            let mut stats = ClusterStats::zeros(k, dim);
            for nr in nearest {
                stats.count[nr.label as usize] += 1;
            }
            for j in 0..k {
                let row = &t[j * width..(j + 1) * width];
                stats.weight[j] = row[dim] as f64;
                for p in 0..dim {
                    // The device summed shifted rows: add the shift back.
                    stats.sum[j * dim + p] = row[p] as f64 + src.shift()[p] as f64 * stats.weight[j];
                }
                stats.sse[j] = row[dim + 1] as f64;
            }
            Ok(stats)
        })
    }

    /// Open the best adapter; `Ok(None)` when none exists.
    pub fn open(allow_software: bool) -> Result<Option<Self>> {
        Ok(GpuContext::new(allow_software)?.map(WgpuBackend::new))
    }

    fn resident_budget(&self) -> u64 {
        let mib = std::env::var(RESIDENT_MIB_ENV).ok().and_then(|v| v.parse::<u64>().ok());
        self.resident_budget.or(mib.map(|m| m << 20)).unwrap_or(self.ctx.limits.max_buffer_size.min(8 << 30))
    }

    /// Where this pass reads each chunk of points from: the resident buffers of the
    /// retained slice (uploaded on first use when it fits the budget), or a stream.
    fn source<'p>(&self, points: &'p [f32], dim: usize) -> (Source<'p>, Chunks) {
        let n = points.len() / dim;
        let rows = chunk_rows(&self.ctx, dim, self.chunk_rows);
        let ch = chunks(n, rows);
        let key = (points.as_ptr() as usize, points.len());
        let fits = (points.len() * 4) as u64 <= self.resident_budget();
        let mut guard = self.resident.lock().unwrap();
        let retained = guard.as_ref().is_some_and(|r| r.key == key && r.dim == dim);
        if let Some(p) = guard.as_ref().filter(|_| retained).and_then(|r| r.points.clone()) {
            return (Source::Resident(p), ch);
        }
        let shift: Vec<f32> = crate::features::column_means_of(points, dim, false).iter().map(|m| *m as f32).collect();
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        if retained && fits {
            let t_up = std::time::Instant::now();
            let buffers: Vec<wgpu::Buffer> = ch
                .ranges
                .iter()
                .map(|&(s, m)| {
                    self.ctx.upload("points", bytemuck::cast_slice(&shifted(points, dim, &shift, s, m)), usage)
                })
                .collect();
            // Make the copies happen now, so upload time is not counted as compute.
            self.ctx.queue.submit([]);
            let _ = self.ctx.device.poll(wgpu::PollType::wait_indefinitely());
            self.add_time(|t| &mut t.upload, t_up);
            let dp = DevicePoints { buffers, shift };
            guard.as_mut().unwrap().points = Some(dp.clone());
            return (Source::Resident(dp), ch);
        }
        // Two buffers in turn: the queue writes chunk i + 1 while chunk i computes
        // (writes are ordered after the work already submitted, so reuse is safe).
        let bytes = (rows.min(n.max(1)) * dim * 4) as u64;
        let bufs = [self.ctx.buffer("points-a", bytes, usage), self.ctx.buffer("points-b", bytes, usage)];
        (Source::Stream { points, shift, bufs }, ch)
    }

    /// The device buffer holding chunk `i` (rows s..s+m) of `src`.
    fn chunk(&self, src: &Source<'_>, i: usize, s: usize, m: usize, dim: usize) -> wgpu::Buffer {
        match src {
            Source::Resident(dp) => dp.buffers[i].clone(),
            Source::Stream { points, shift, bufs } => {
                let t = std::time::Instant::now();
                let buf = &bufs[i % 2];
                self.ctx.queue.write_buffer(buf, 0, bytemuck::cast_slice(&shifted(points, dim, shift, s, m)));
                self.add_time(|t| &mut t.upload, t);
                buf.clone()
            }
        }
    }

    /// Submit; wait only for resident data (to time compute alone). Streamed chunks
    /// overlap: the caller reads chunk i − 1 while chunk i runs.
    fn submit(&self, src: &Source<'_>, enc: wgpu::CommandEncoder) -> Result<()> {
        match src {
            Source::Resident(_) => self.run(enc),
            Source::Stream { .. } => {
                self.ctx.queue.submit([enc.finish()]);
                Ok(())
            }
        }
    }
}

/// Rows s..s+m of `points`, shifted by the column means.
fn shifted(points: &[f32], dim: usize, shift: &[f32], s: usize, m: usize) -> Vec<f32> {
    points[s * dim..(s + m) * dim].chunks_exact(dim).flat_map(|row| row.iter().zip(shift).map(|(v, c)| v - c)).collect()
}

/// Points for one pass: resident on the device, or streamed through two buffers.
enum Source<'p> {
    Resident(DevicePoints),
    Stream { points: &'p [f32], shift: Vec<f32>, bufs: [wgpu::Buffer; 2] },
}

impl Source<'_> {
    fn shift(&self) -> &[f32] {
        match self {
            Source::Resident(dp) => &dp.shift,
            Source::Stream { shift, .. } => shift,
        }
    }
}

impl Backend for WgpuBackend {
    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn exact_labels(&self) -> bool {
        false
    }

    fn retain(&self, points: &[f32], dim: usize) -> Result<()> {
        let mut g = self.resident.lock().unwrap();
        let key = (points.as_ptr() as usize, points.len());
        match g.as_mut() {
            Some(r) if r.key == key && r.dim == dim => r.depth += 1,
            _ => *g = Some(Resident { key, dim, depth: 1, points: None }),
        }
        Ok(())
    }

    fn release(&self) {
        let mut g = self.resident.lock().unwrap();
        if let Some(r) = g.as_mut() {
            r.depth = r.depth.saturating_sub(1);
            if r.depth == 0 {
                *g = None;
            }
        }
    }

    fn assign(&self, points: &[f32], centroids: &Centroids, out: &mut [Nearest]) -> Result<()> {
        self.assign_on_device(points, centroids, out, true).map(|_| ())
    }

    fn assign_reduce(
        &self,
        points: &[f32],
        weights: Option<&[f32]>,
        centroids: &Centroids,
        nearest: &mut [Nearest],
    ) -> Result<(ClusterStats, u64)> {
        let old: Vec<u32> = nearest.iter().map(|n| n.label).collect();
        // The labels stay on the device: the reduce reads the assignment's buffers.
        let bufs = self.assign_on_device(points, centroids, nearest, false)?;
        let changed = super::count_changed(&old, nearest);
        let stats = self.reduce_from(points, weights, nearest, centroids.k, &|i, _, _| bufs[i].clone())?;
        Ok((stats, changed))
    }

    fn gmm_block_rows(&self) -> usize {
        131_072
    }

    fn gmm_estep(
        &self,
        points: &[f32],
        rows: std::ops::Range<usize>,
        terms: &crate::gmm::GaussianTerms,
        resp: &mut [f32],
        log_norm: &mut [f64],
    ) -> Result<()> {
        use crate::gmm::TermsKind;
        let (k, d) = (terms.k, terms.dim);
        let ctx = &self.ctx;
        let per_component = match terms.kind {
            TermsKind::Diagonal => d + 3,
            TermsKind::Triangular => d * (d + 1) / 2 + d + 3,
        };
        if ctx.adapter.software && k * per_component > SOFTWARE_LOOP_BUDGET {
            return Err(Error::Runtime(format!(
                "GPU mixture E-step: {k} components × {d} features ({}) is too large for a software GPU driver \
                 (its shader loop limit); use --backend cpu",
                if terms.kind == TermsKind::Diagonal { "diagonal" } else { "full covariances" }
            )));
        }
        ctx.scoped("mixture E-step", || {
            let (src, ch) = self.source(points, d);
            let shift = src.shift();
            // Means relative to the same shift as the points, as an f32 hi + lo pair.
            let mut hi = Vec::with_capacity(k * d);
            let mut lo = Vec::with_capacity(k * d);
            for (i, m) in terms.means.iter().enumerate() {
                let v = m - shift[i % d] as f64;
                let h = v as f32;
                hi.push(h);
                lo.push((v - h as f64) as f32);
            }
            let prec: Vec<f32> = terms.prec.iter().map(|v| *v as f32).collect();
            let lc: Vec<f32> = terms.log_const.iter().map(|v| if v.is_finite() { *v as f32 } else { -1e30 }).collect();
            let st = wgpu::BufferUsages::STORAGE;
            let hbuf = ctx.upload("means-hi", bytemuck::cast_slice(&hi), st);
            let lbuf = ctx.upload("means-lo", bytemuck::cast_slice(&lo), st);
            let pbuf = ctx.upload("precisions", bytemuck::cast_slice(&prec), st);
            let cbuf = ctx.upload("log-const", bytemuck::cast_slice(&lc), st);
            // Rows per dispatch: its responsibilities must fit one storage binding.
            let by_binding = (ctx.limits.max_storage_buffer_binding_size / (4 * k as u64)) as usize;
            let step = by_binding.min((MAX_GROUPS * 64) as usize).max(1);
            for (i, &(s, m)) in ch.ranges.iter().enumerate() {
                let (a, b) = (rows.start.max(s), rows.end.min(s + m));
                if a >= b {
                    continue;
                }
                let buf = self.chunk(&src, i, s, m, d);
                for lo_row in (a..b).step_by(step) {
                    let hi_row = (lo_row + step).min(b);
                    let r = hi_row - lo_row;
                    let params = EstepParams {
                        rows: r as u32,
                        offset: (lo_row - s) as u32,
                        k: k as u32,
                        d: d as u32,
                        kind: (terms.kind == TermsKind::Triangular) as u32,
                        _pad: [0; 3],
                    };
                    let ubuf = ctx.upload("params", bytemuck::bytes_of(&params), wgpu::BufferUsages::UNIFORM);
                    let out = st | wgpu::BufferUsages::COPY_SRC;
                    let rbuf = ctx.buffer("resp", (r * k * 4) as u64, out);
                    let nbuf = ctx.buffer("log-norm", (r * 4) as u64, out);
                    let bg = ctx.bind(
                        &ctx.gmm_estep,
                        &[
                            ubuf.as_entire_binding(),
                            buf.as_entire_binding(),
                            hbuf.as_entire_binding(),
                            lbuf.as_entire_binding(),
                            pbuf.as_entire_binding(),
                            cbuf.as_entire_binding(),
                            rbuf.as_entire_binding(),
                            nbuf.as_entire_binding(),
                        ],
                    );
                    let mut enc = ctx.device.create_command_encoder(&Default::default());
                    ctx.dispatch(&mut enc, &ctx.gmm_estep, &bg, (r as u32).div_ceil(64));
                    self.run(enc)?;
                    let o = lo_row - rows.start;
                    let rv: Vec<f32> = self.read(&rbuf, (r * k * 4) as u64)?;
                    resp[o * k..(o + r) * k].copy_from_slice(&rv);
                    let nv: Vec<f32> = self.read(&nbuf, (r * 4) as u64)?;
                    for (dst, v) in log_norm[o..o + r].iter_mut().zip(nv) {
                        *dst = v as f64;
                    }
                }
            }
            Ok(())
        })
    }

    fn reduce(&self, points: &[f32], weights: Option<&[f32]>, nearest: &[Nearest], k: usize) -> Result<ClusterStats> {
        let ctx = &self.ctx;
        let upload = |_: usize, s: usize, m: usize| {
            let g: Vec<GpuNearest> = nearest[s..s + m]
                .iter()
                .map(|r| GpuNearest { label: r.label, dist: r.dist, second: 0.0, changed: 0 })
                .collect();
            ctx.upload("nearest", bytemuck::cast_slice(&g), wgpu::BufferUsages::STORAGE)
        };
        self.reduce_from(points, weights, nearest, k, &upload)
    }
}

/// Running top-`keep` inner products of some queries, kept on the device across base
/// chunks (similarity search); read back once at the end.
pub struct DeviceTopK<'a> {
    gpu: &'a WgpuBackend,
    queries: wgpu::Buffer,
    scores: wgpu::Buffer,
    index: wgpu::Buffer,
    nq: usize,
    dim: usize,
    keep: usize,
    dispatch_rows: usize,
    /// Lists per query: the slices of each dispatch's base rows.
    slices: usize,
}

impl WgpuBackend {
    /// Start a search for `queries` (row-major, `dim` wide), keeping `keep` per query.
    /// None when the device cannot run the top-k shader (too little workgroup memory,
    /// or on a software adapter a list too long for its loop limit).
    pub fn topk_start(&self, queries: &[f32], dim: usize, keep: usize) -> Option<DeviceTopK<'_>> {
        self.ctx.topk.as_ref()?;
        let dispatch_rows = topk_dispatch_rows(self.ctx.adapter.software, keep, dim)?;
        let nq = queries.len() / dim;
        let slices = topk_slices(nq, keep, dispatch_rows);
        let lists = nq * slices * keep;
        let st = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        Some(DeviceTopK {
            gpu: self,
            queries: self.ctx.upload("queries", bytemuck::cast_slice(queries), wgpu::BufferUsages::STORAGE),
            scores: self.ctx.upload("top-score", bytemuck::cast_slice(&vec![f32::NEG_INFINITY; lists]), st),
            index: self.ctx.upload("top-index", bytemuck::cast_slice(&vec![u32::MAX; lists]), st),
            nq,
            dim,
            keep,
            dispatch_rows,
            slices,
        })
    }
}

impl DeviceTopK<'_> {
    /// Merge one chunk of base rows (global index of its first row: `offset`): uploaded
    /// once, searched in dispatches of TOPK_DISPATCH_ROWS rows.
    pub fn add(&mut self, base: &[f32], offset: u64) -> Result<()> {
        let ctx = &self.gpu.ctx;
        let pipe = ctx.topk.as_ref().expect("checked in topk_start");
        let rows_cap = (ctx.limits.max_storage_buffer_binding_size / (4 * self.dim as u64)) as usize;
        ctx.scoped("top-k", || {
            for (ci, chunk) in base.chunks(rows_cap.max(1) * self.dim).enumerate() {
                let off = offset + (ci * rows_cap) as u64;
                let bbuf = ctx.upload("base", bytemuck::cast_slice(chunk), wgpu::BufferUsages::STORAGE);
                let n = chunk.len() / self.dim;
                let align = (ctx.limits.min_storage_buffer_offset_alignment as usize).max(4);
                // Sub-ranges start at multiples of the binding-offset alignment.
                let step = (self.dispatch_rows * self.dim * 4).next_multiple_of(align) / (self.dim * 4);
                let step = if (step * self.dim * 4).is_multiple_of(align) { step } else { n };
                let mut enc = ctx.device.create_command_encoder(&Default::default());
                let mut r0 = 0;
                while r0 < n {
                    let nb = step.min(n - r0);
                    if off + (r0 + nb) as u64 > u32::MAX as u64 {
                        return Err(Error::Runtime("GPU top-k: more than 2³² base rows".into()));
                    }
                    // Slices of whole tiles; a short last dispatch may leave some empty.
                    let span = nb.div_ceil(self.slices).next_multiple_of(ASSIGN_TILE as usize);
                    let params = TopkParams {
                        nq: self.nq as u32,
                        nb: nb as u32,
                        d: self.dim as u32,
                        k: self.keep as u32,
                        offset: (off + r0 as u64) as u32,
                        span: span as u32,
                        slices: self.slices as u32,
                        _pad: 0,
                    };
                    let pbuf = ctx.upload("params", bytemuck::bytes_of(&params), wgpu::BufferUsages::UNIFORM);
                    let range = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &bbuf,
                        offset: (r0 * self.dim * 4) as u64,
                        size: wgpu::BufferSize::new((nb * self.dim * 4) as u64),
                    });
                    let bg = ctx.bind(
                        pipe,
                        &[
                            pbuf.as_entire_binding(),
                            self.queries.as_entire_binding(),
                            range,
                            self.scores.as_entire_binding(),
                            self.index.as_entire_binding(),
                        ],
                    );
                    ctx.dispatch_2d(&mut enc, pipe, &bg, (self.nq as u32).div_ceil(ASSIGN_TILE), self.slices as u32);
                    r0 += nb;
                }
                self.gpu.run(enc)?;
            }
            Ok(())
        })
    }

    /// Per query, the kept (base index, f32 score) pairs so far: its slices' lists
    /// merged into the `keep` best (highest score, ties to the lower index), the list one
    /// workgroup would have kept over all the rows.
    pub fn lists(&self) -> Result<Vec<Vec<(u64, f32)>>> {
        let per_query = self.slices * self.keep;
        let s: Vec<f32> = self.gpu.read(&self.scores, (self.nq * per_query * 4) as u64)?;
        let i: Vec<u32> = self.gpu.read(&self.index, (self.nq * per_query * 4) as u64)?;
        Ok((0..self.nq)
            .map(|q| {
                let mut kept: Vec<(u64, f32)> = (q * per_query..(q + 1) * per_query)
                    .filter(|&t| i[t] != u32::MAX)
                    .map(|t| (i[t] as u64, s[t]))
                    .collect();
                if self.slices > 1 {
                    // The shader's order: f32 comparison (-0 equals 0; no NaN is ever kept).
                    kept.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal).then(a.0.cmp(&b.0)));
                    kept.truncate(self.keep);
                }
                kept
            })
            .collect())
    }
}
