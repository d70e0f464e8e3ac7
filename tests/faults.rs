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
