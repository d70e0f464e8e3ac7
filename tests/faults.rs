//! What batch jobs meet: a file-size limit mid-write, and two runs writing the same
//! output at once. Nothing partial is ever left at the destination, and an existing
//! output survives a failed write.

use std::path::Path;

use crate::util::{all_rows, bin, fitted, listing, ok, run, stderr};

fn segments_of(path: &Path) -> Vec<u32> {
    let b = all_rows(path);
    let col = b.column_by_name("segment").expect("a segment column");
    let a = arrow::compute::cast(col, &arrow::datatypes::DataType::UInt32).unwrap();
    a.as_any().downcast_ref::<arrow::array::UInt32Array>().unwrap().values().to_vec()
}

/// `ulimit -f`: the write fails with EFBIG instead of killing the process; exit 4, the
/// message says what happened, the existing output is intact, no temporary file left.
#[test]
#[cfg(unix)]
fn a_file_size_limit_leaves_the_existing_output_intact() {
    let d = fitted(60_000, "4");
    let p = d.path();
    std::fs::write(p.join("out.parquet"), b"the previous output").unwrap();
    let base = listing(p);
    let exe = env!("CARGO_BIN_EXE_microseg");
    for cmd in [
        format!("{exe} assign --model m.json in.parquet --out out.parquet --force --explain"),
        format!("{exe} segment in.parquet --k 4 --out-dir seg --explain"),
    ] {
        // 64 blocks of 512 bytes: the table fits in memory, the output does not fit the limit.
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -f 64; {cmd}"))
            .current_dir(p)
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(4), "{cmd}:\n{err}");
        assert!(err.contains("file-size limit") && err.contains("unchanged"), "{err}");
        assert_eq!(std::fs::read(p.join("out.parquet")).unwrap(), b"the previous output");
        assert_eq!(listing(p), base, "{cmd}: files left behind");
    }
}

/// Two runs writing one output at once (with --force): one whole file, the output of one
/// of them, never a mix; no temporary file left.
#[test]
fn two_runs_writing_one_output_leave_one_whole_file() {
    let d = fitted(200_000, "4");
    let p = d.path();
    ok(&run(&["fit", "in.parquet", "--k", "7", "--model", "m7.json", "--quiet"], p));
    ok(&run(&["assign", "--model", "m.json", "in.parquet", "--out", "solo4.parquet", "--quiet"], p));
    ok(&run(&["assign", "--model", "m7.json", "in.parquet", "--out", "solo7.parquet", "--quiet"], p));
    let (s4, s7) = (segments_of(&p.join("solo4.parquet")), segments_of(&p.join("solo7.parquet")));
    assert_ne!(s4, s7);
    for round in 0..3 {
        let spawn = |model: &str| {
            bin()
                .args(["assign", "--model", model, "in.parquet", "--out", "shared.parquet", "--force", "--quiet"])
                .args(["--threads", "1"])
                .current_dir(p)
                .spawn()
                .unwrap()
        };
        let (mut a, mut b) = (spawn("m.json"), spawn("m7.json"));
        assert!(a.wait().unwrap().success() && b.wait().unwrap().success(), "round {round}");
        let got = segments_of(&p.join("shared.parquet"));
        assert!(got == s4 || got == s7, "round {round}: the output is a mix of two runs");
        assert!(!listing(p).iter().any(|f| f.ends_with(".partial")), "round {round}: a temporary file was left");
    }
    // Two fits writing one model.
    let spawn = |k: &str| {
        bin()
            .args(["fit", "in.parquet", "--k", k, "--model", "shared.json", "--force", "--quiet"])
            .current_dir(p)
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn("4"), spawn("7"));
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    let m = microseg::model::Model::load(&p.join("shared.json")).expect("one whole model");
    assert!(m.k == 4 || m.k == 7);
}

/// A device that works for `ok_passes` passes, then fails: with an error, or by panicking
/// as a driver may on a lost device. Its passes are the CPU's, so the fit it hands over
/// must be the CPU's fit exactly.
struct Flaky {
    cpu: microseg::backend::cpu::CpuBackend,
    ok_passes: u64,
    passes: std::sync::atomic::AtomicU64,
    panics: bool,
}

impl Flaky {
    fn tick(&self) -> microseg::Result<()> {
        let n = self.passes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n >= self.ok_passes {
            if self.panics {
                panic!("device lost (simulated driver panic)");
            }
            return Err(microseg::Error::Runtime("GPU readback failed: device lost".into()));
        }
        Ok(())
    }
}

impl microseg::backend::Backend for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn assign(
        &self,
        points: &[f32],
        c: &microseg::backend::Centroids,
        out: &mut [microseg::backend::Nearest],
    ) -> microseg::Result<()> {
        self.tick()?;
        // Half-written output, as a device failing mid-copy leaves it.
        out[0].label = u32::MAX;
        self.cpu.assign(points, c, out)
    }
    fn reduce(
        &self,
        points: &[f32],
        w: Option<&[f32]>,
        nearest: &[microseg::backend::Nearest],
        k: usize,
    ) -> microseg::Result<microseg::backend::ClusterStats> {
        self.tick()?;
        self.cpu.reduce(points, w, nearest, k)
    }
}

#[test]
fn a_device_failing_mid_fit_hands_over_to_the_cpu() {
    use microseg::backend::cpu::CpuBackend;
    use microseg::backend::fallback::Fallback;
    use microseg::pipeline::{self, FitConfig};
    let ds =
        microseg::io::Dataset::open(&[crate::util::repo().join("datasets/online_retail_customers.parquet")]).unwrap();
    let cfg = FitConfig { k: 6, log1p: vec!["monetary".into(), "frequency".into()], tol: 0.0, ..Default::default() };
    let (reference, rr) = pipeline::fit(&ds, &cfg, &CpuBackend::default()).unwrap();
    assert!(rr.iterations > 5);
    for panics in [false, true] {
        for ok_passes in [0, 3, 8] {
            let flaky = Flaky { cpu: CpuBackend::default(), ok_passes, passes: Default::default(), panics };
            let fb = Fallback::new(Box::new(flaky), CpuBackend::default()).unwrap();
            let (m, r) = if panics {
                // The panic is contained; keep the test's output free of its message.
                let hook = std::panic::take_hook();
                std::panic::set_hook(Box::new(|_| {}));
                let out = pipeline::fit(&ds, &cfg, &fb);
                std::panic::set_hook(hook);
                out.unwrap()
            } else {
                pipeline::fit(&ds, &cfg, &fb).unwrap()
            };
            assert!(fb.fell_back(), "panics {panics}, {ok_passes} good passes");
            assert_eq!(r.backend, "gpu, then cpu");
            assert_eq!(r.iterations, rr.iterations, "panics {panics}, {ok_passes} good passes");
            assert_eq!(m.segments, reference.segments, "panics {panics}, {ok_passes} good passes");
        }
    }
}

/// The real GPU backend (lavapipe in CI) with a fault injected at its third pass: the
/// fit finishes on the CPU with a notice, and its segments are the CPU fit's.
#[test]
fn an_injected_gpu_fault_continues_on_the_cpu() {
    if microseg::backend::wgpu::WgpuBackend::open(true).ok().flatten().is_none() {
        assert!(
            std::env::var_os("MICROSEG_REQUIRE_GPU_TESTS").is_none(),
            "no wgpu adapter but MICROSEG_REQUIRE_GPU_TESTS is set"
        );
        return;
    }
    let d = crate::util::fitted(5_000, "4");
    let p = d.path();
    let fit = |backend: &str, fault: Option<&str>, model: &str| {
        let mut c = bin();
        c.args(["fit", "in.parquet", "--k", "4", "--backend", backend, "--allow-software-gpu", "--model", model]);
        c.args(["--json"]).current_dir(p);
        if let Some(f) = fault {
            c.env("MICROSEG_INJECT_GPU_FAULT", f);
        }
        c.output().unwrap()
    };
    let cpu = fit("cpu", None, "cpu.json");
    ok(&cpu);
    let o = fit("gpu", Some("3"), "gpu.json");
    ok(&o);
    let err = stderr(&o);
    assert!(err.contains("the GPU failed during") && err.contains("continuing on the CPU"), "{err}");
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["backend"], "gpu, then cpu");
    let (a, b) = (crate::util::json(&p.join("cpu.json")), crate::util::json(&p.join("gpu.json")));
    let sizes =
        |m: &serde_json::Value| m["segments"].as_array().unwrap().iter().map(|s| s["size"].clone()).collect::<Vec<_>>();
    assert_eq!(sizes(&a), sizes(&b));
    // A bad value of the variable is a usage error.
    let o = fit("gpu", Some("soon"), "never.json");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
