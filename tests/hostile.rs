//! The command line against a hostile user: special files, outputs that alias inputs,
//! signals, artefacts of different models, overflow, joins that match nothing, closed
//! pipes, absurd flags. One test per defect class (issue 9), each failing before its
//! fix, and a catalogue with a bad invocation of every command.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, StringArray};
use arrow::datatypes::DataType;
use tempfile::TempDir;

use crate::util::{assert_fails, bin, first_batch, fitted, json, listing, ok, repo, run, stderr, table, write_parquet};

fn fit(dir: &Path, input: &str, model: &str, k: &str) {
    ok(&run(&["fit", input, "--k", k, "--model", model, "--quiet"], dir));
}

fn parquet_rows(bytes: Vec<u8>) -> usize {
    let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .unwrap()
        .build()
        .unwrap();
    r.map(|b| b.unwrap().num_rows()).sum()
}

#[cfg(unix)]
fn is_char_device(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p).unwrap().file_type().is_char_device()
}

// 1. Special files are written in place (or refused), never renamed over.
#[test]
#[cfg(unix)]
fn special_files_are_written_in_place_never_replaced() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    table(p, "in.parquet", 200);
    // A character device: written in place, with or without --force.
    ok(&run(&["fit", "in.parquet", "--k", "3", "--model", "/dev/null", "--force", "--quiet"], p));
    assert!(is_char_device(Path::new("/dev/null")));
    // A full device: the write fails (exit 4), the device stays a device.
    let o = run(&["fit", "in.parquet", "--k", "3", "--model", "/dev/full", "--force", "--quiet"], p);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(is_char_device(Path::new("/dev/full")), "/dev/full must stay a device");
    fit(p, "in.parquet", "m.json", "3");
    // `-` is standard output for Parquet and JSON outputs.
    let o = run(&["assign", "--model", "m.json", "in.parquet", "--out", "-", "--quiet"], p);
    ok(&o);
    assert_eq!(parquet_rows(o.stdout), 200);
    let o = run(&["profile", "--model", "m.json", "in.parquet", "--out", "-", "--quiet"], p);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["format"], "microseg-profile");
    // /dev/stdout leads to whatever stdout is (a pipe here): streamed, never replaced.
    let o = run(&["assign", "--model", "m.json", "in.parquet", "--out", "/dev/stdout", "--force", "--quiet"], p);
    ok(&o);
    assert_eq!(parquet_rows(o.stdout), 200);
    assert!(std::fs::symlink_metadata("/dev/stdout").unwrap().file_type().is_symlink());
    // A named pipe: written in place while a reader drains it; it stays a pipe.
    let fifo = p.join("pipe");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let f2 = fifo.clone();
    let reader = std::thread::spawn(move || std::fs::read(f2).unwrap());
    ok(&run(&["assign", "--model", "m.json", "in.parquet", "--out", "pipe", "--force", "--quiet"], p));
    assert_eq!(parquet_rows(reader.join().unwrap()), 200);
    {
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "the pipe must stay a pipe");
    }
    // `-` is standard input for one input.
    let o = bin()
        .args(["assign", "--model", "m.json", "-", "--out", "from_stdin.parquet", "--quiet"])
        .current_dir(p)
        .stdin(std::fs::File::open(p.join("in.parquet")).unwrap())
        .output()
        .unwrap();
    ok(&o);
    assert_eq!(parquet_rows(std::fs::read(p.join("from_stdin.parquet")).unwrap()), 200);
    let o = run(&["assign", "--model", "m.json", "-", "-", "--out", "x.parquet"], p);
    assert_eq!(o.status.code(), Some(2), "stdin twice: {}", stderr(&o));
    // A symlink to a regular file: the file is replaced, the link kept.
    std::fs::write(p.join("target.json"), "old").unwrap();
    std::os::unix::fs::symlink("target.json", p.join("link.json")).unwrap();
    ok(&run(&["fit", "in.parquet", "--k", "3", "--model", "link.json", "--force", "--quiet"], p));
    assert!(std::fs::symlink_metadata(p.join("link.json")).unwrap().file_type().is_symlink());
    assert!(std::fs::read_to_string(p.join("target.json")).unwrap().contains("microseg-model"));
    // A directory is refused.
    let o = run(&["fit", "in.parquet", "--k", "3", "--model", ".", "--force"], p);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
}

// 2. An output that is also an input is refused (exit 2), even with --force.
#[test]
fn outputs_that_alias_inputs_are_refused() {
    let d = fitted(300, "3");
    let p = d.path();
    ok(&run(&["profile", "--model", "m.json", "in.parquet", "--out", "prof.json", "--quiet"], p));
    std::fs::create_dir(p.join("sub")).unwrap();
    let before = std::fs::read(p.join("in.parquet")).unwrap();
    let model_before = std::fs::read(p.join("m.json")).unwrap();
    #[cfg(unix)]
    std::fs::hard_link(p.join("in.parquet"), p.join("hard.parquet")).unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["fit", "in.parquet", "--k", "3", "--model", "in.parquet", "--force"],
        vec!["fit", "in.parquet", "--k", "3", "--model", "sub/../in.parquet", "--force"],
        vec!["fit", "in.parquet", "--k", "3", "--previous", "m.json", "--model", "m.json", "--force"],
        vec!["assign", "--model", "m.json", "in.parquet", "--out", "./in.parquet", "--force"],
        vec!["assign", "--model", "m.json", "in.parquet", "--out", "m.json", "--force"],
        vec!["assign", "--model", "m.json", ".", "--out", "in.parquet", "--force"],
        vec!["profile", "--model", "m.json", "in.parquet", "--out", "m.json", "--force"],
        vec!["drift", "--model", "m.json", "in.parquet", "--out", "m.json", "--force"],
        vec!["report", "--model", "m.json", "--profile", "prof.json", "--out", "prof.json", "--force"],
        vec![
            "audit",
            "--segments",
            "in.parquet",
            "--input",
            "in.parquet",
            "--protected",
            "visits",
            "--out",
            "in.parquet",
            "--force",
        ],
        vec![
            "similar",
            "--input",
            "in.parquet",
            "--embedding",
            "e",
            "--seed-ids",
            "m.json",
            "--top",
            "1",
            "--out",
            "in.parquet",
            "--force",
        ],
        vec![
            "neighbors",
            "--base",
            "in.parquet",
            "--queries",
            "in.parquet",
            "--embedding",
            "e",
            "--k",
            "1",
            "--out",
            "in.parquet",
            "--force",
        ],
    ];
    for args in &cases {
        let o = run(args, p);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("is also an input"), "{args:?}: {}", stderr(&o));
    }
    #[cfg(unix)]
    {
        let o = run(&["assign", "--model", "m.json", "in.parquet", "--out", "hard.parquet", "--force"], p);
        assert_eq!(o.status.code(), Some(2), "a hard link is the same file: {}", stderr(&o));
    }
    // Two outputs on one path.
    let o = run(&["segment", "in.parquet", "--k", "2", "--out-dir", "seg", "--force"], p);
    ok(&o);
    assert_eq!(std::fs::read(p.join("in.parquet")).unwrap(), before, "the input was changed");
    assert_eq!(std::fs::read(p.join("m.json")).unwrap(), model_before, "the model was changed");
    let o = run(&["segment", "seg/assignments.parquet", "--k", "2", "--out-dir", "seg", "--force"], p);
    assert_eq!(o.status.code(), Some(2), "segment over its own input: {}", stderr(&o));
}

/// Wait until a `.partial` file appears in `dir` (the output has started).
fn wait_for_partial(dir: &Path, child: &mut std::process::Child) -> bool {
    for _ in 0..20_000 {
        if dir.is_dir() && listing(dir).iter().any(|f| f.ends_with(".partial")) {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    false
}

// 3. Signals remove the temporary file and exit 128 + signal; a killed run's file is
// swept by the next run on the same path.
#[test]
#[cfg(unix)]
fn signals_leave_no_partial_file_and_stale_ones_are_swept() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    ok(&run(&["generate", "--rows", "600000", "--dims", "6", "--clusters", "4", "--out", "big.parquet", "--quiet"], p));
    ok(&run(&["fit", "big.parquet", "--k", "4", "--max-iter", "2", "--model", "m.json", "--quiet"], p));
    let base = listing(p);
    for (sig, code) in [("-INT", 130), ("-TERM", 143), ("-KILL", -1)] {
        let mut attempts = 0;
        let status = loop {
            let mut child = bin()
                .args([
                    "assign",
                    "--model",
                    "m.json",
                    "big.parquet",
                    "--explain",
                    "--threads",
                    "1",
                    "--out",
                    "a.parquet",
                ])
                .args(["--quiet"])
                .current_dir(p)
                .spawn()
                .unwrap();
            assert!(wait_for_partial(p, &mut child), "{sig}: no temporary file appeared");
            let pid = child.id().to_string();
            assert!(std::process::Command::new("kill").args([sig, &pid]).status().unwrap().success());
            let status = child.wait().unwrap();
            // A run that finished between the file appearing and the signal landing
            // proves nothing: remove its output and try again.
            if status.success() && attempts < 5 {
                attempts += 1;
                std::fs::remove_file(p.join("a.parquet")).unwrap();
                continue;
            }
            break status;
        };
        if code > 0 {
            assert_eq!(status.code(), Some(code), "{sig}");
            assert_eq!(listing(p), base, "{sig}: files left behind");
        } else {
            assert!(listing(p).iter().any(|f| f.ends_with(".partial")), "kill -9 cannot clean up");
            // The next run on the same path sweeps it, even when that run fails.
            let o = run(&["assign", "--model", "m.json", "missing.parquet", "--out", "a.parquet"], p);
            assert_eq!(o.status.code(), Some(3));
            assert_eq!(listing(p), base, "the stale temporary file was not swept");
        }
    }
    // `segment` into a directory it created: the directory goes too.
    let mut child = bin()
        .args(["segment", "big.parquet", "--k", "4", "--max-iter", "2", "--explain", "--threads", "1"])
        .args(["--out-dir", "seg", "--quiet"])
        .current_dir(p)
        .spawn()
        .unwrap();
    assert!(wait_for_partial(&p.join("seg"), &mut child), "segment: no temporary file appeared");
    assert!(std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert_eq!(child.wait().unwrap().code(), Some(143));
    assert_eq!(listing(p), base, "segment: files or its directory left behind");
    // An unrelated file that only looks like ours is left alone.
    std::fs::write(p.join(".a.parquet.notours.partial"), "x").unwrap();
    ok(&run(&["assign", "--model", "m.json", "big.parquet", "--out", "a.parquet", "--quiet"], p));
    assert!(p.join(".a.parquet.notours.partial").exists(), "only our own naming is swept");
}

/// A table with a 0/1 flag held by 90 % of the rows (the UK customers) and a spend.
fn flag_table(dir: &Path, name: &str, n: usize, uk_share: f64) -> PathBuf {
    let p = dir.join(name);
    let uk: Vec<bool> = (0..n).map(|i| ((i as f64 + 0.5) / n as f64) < uk_share).collect();
    write_parquet(
        &p,
        vec![
            ("subscriber_id", Arc::new(Int64Array::from_iter_values(0..n as i64)) as ArrayRef),
            ("is_uk", Arc::new(BooleanArray::from(uk.clone())) as ArrayRef),
            ("spend", Arc::new(Float64Array::from_iter_values((0..n).map(|i| 50.0 + ((i * 37) % 23) as f64)))),
        ],
    );
    p
}

// 4. Flags get a bin per value: drift sees their share move; explanations state the
// row's real value.
#[test]
fn flags_drift_and_explanations_use_real_values() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    flag_table(p, "train.parquet", 2000, 0.9);
    flag_table(p, "no_uk.parquet", 2000, 0.0);
    fit(p, "train.parquet", "m.json", "2");
    let model = json(&p.join("m.json"));
    let h = &model["baseline"]["features"][0];
    assert_eq!(h["values"].as_array().unwrap().len(), 2, "a flag gets a bin per value: {h}");
    let o = run(&["drift", "--model", "m.json", "train.parquet", "--json"], p);
    assert_eq!(o.status.code(), Some(0), "stable on its own training data: {}", stderr(&o));
    let o = run(&["drift", "--model", "m.json", "no_uk.parquet", "--json", "--quiet"], p);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(11), "the UK share fell from 90 % to 0 %: {v}");
    assert!(v["max_feature_psi"].as_f64().unwrap() > 1.0, "{v}");
    ok(&run(&["assign", "--model", "m.json", "train.parquet", "--explain", "--out", "a.parquet", "--quiet"], p));
    let b = first_batch(&p.join("a.parquet"));
    let expl = b.column(4).as_any().downcast_ref::<StringArray>().unwrap();
    let mut stated = 0;
    for i in 0..b.num_rows() {
        let uk = ((i as f64 + 0.5) / 2000.0) < 0.9;
        let e = expl.value(i);
        assert!(!e.contains(if uk { "UK: no" } else { "UK: yes" }), "row {i} (UK {uk}): {e}");
        stated += e.contains("UK: ") as usize;
    }
    assert!(stated > 0, "the flag should explain some rows");
}

// 5. An audit that joins nothing is bad input; counts and warnings are reported.
#[test]
fn audits_that_join_nothing_are_refused_and_counts_are_reported() {
    let d = fitted(300, "3");
    let p = d.path();
    ok(&run(&["assign", "--model", "m.json", "in.parquet", "--out", "seg.parquet", "--quiet"], p));
    // Disjoint ids, and string ids that are not the integers.
    let people = |name: &str, ids: ArrayRef| {
        let n = ids.len();
        write_parquet(
            &p.join(name),
            vec![
                ("subscriber_id", ids),
                ("group", Arc::new(StringArray::from_iter_values((0..n).map(|i| ["a", "b"][i % 2]))) as ArrayRef),
                ("customer_no", Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i * 7919)))),
            ],
        );
    };
    people("disjoint.parquet", Arc::new(Int64Array::from_iter_values(1000..1300)));
    people("strings.parquet", Arc::new(StringArray::from_iter_values((0..300).map(|i| format!("C{i:05}")))));
    for input in ["disjoint.parquet", "strings.parquet"] {
        let o = run(
            &["audit", "--segments", "seg.parquet", "--input", input, "--protected", "group", "--out", "audit.json"],
            p,
        );
        assert_eq!(o.status.code(), Some(3), "{input}: {}", stderr(&o));
        assert!(stderr(&o).contains("no row joins"), "{}", stderr(&o));
        assert!(!p.join("audit.json").exists());
    }
    // Half the ids join, some twice; a protected column with 300 distinct values.
    people(
        "half.parquet",
        Arc::new(Int64Array::from_iter_values((150..450).map(|i| if i >= 400 { i - 250 } else { i }))),
    );
    let o = run(
        &[
            "audit",
            "--segments",
            "seg.parquet",
            "--input",
            "half.parquet",
            "--protected",
            "group,customer_no",
            "--json",
        ],
        p,
    );
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["joined_rows"], 200, "{v}");
    assert_eq!(v["unmatched_input_rows"], 100);
    assert_eq!(v["duplicate_input_ids"], 50);
    assert_eq!(v["unmatched_segment_rows"], 150);
    let warnings = v["report"]["warnings"].to_string();
    assert!(warnings.contains("customer_no") && warnings.contains("distinct values"), "{warnings}");
}

// 6. Artefacts of different models are not mixed.
#[test]
fn artefacts_of_another_model_are_refused() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    table(p, "in.parquet", 400);
    fit(p, "in.parquet", "a.json", "5");
    fit(p, "in.parquet", "b.json", "4");
    ok(&run(&["profile", "--model", "b.json", "in.parquet", "--out", "pb.json", "--quiet"], p));
    ok(&run(&["profile", "--model", "a.json", "in.parquet", "--out", "pa.json", "--quiet"], p));
    let o = run(&["report", "--model", "a.json", "--profile", "pb.json", "--out", "r.html"], p);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("another model"), "{}", stderr(&o));
    let o = run(
        &["assign", "--model", "a.json", "in.parquet", "--explain", "--profile", "pb.json", "--out", "x.parquet"],
        p,
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    // A drift report of b beside model a.
    let _ = run(&["drift", "--model", "b.json", "in.parquet", "--out", "db.json", "--quiet"], p);
    let o = run(&["report", "--model", "a.json", "--profile", "pa.json", "--drift", "db.json", "--out", "r.html"], p);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    // Assignments of b audited against model a.
    ok(&run(&["assign", "--model", "b.json", "in.parquet", "--out", "sb.parquet", "--quiet"], p));
    let o = run(
        &["audit", "--segments", "sb.parquet", "--input", "in.parquet", "--protected", "visits", "--model", "a.json"],
        p,
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(!p.join("r.html").exists() && !p.join("x.parquet").exists());
    // The matching pairs are accepted, and renaming a segment keeps the fingerprint.
    ok(&run(&["report", "--model", "a.json", "--profile", "pa.json", "--out", "r.html", "--quiet"], p));
    let mut m = json(&p.join("a.json"));
    m["segments"][0]["name"] = "my own name".into();
    std::fs::write(p.join("a_named.json"), m.to_string()).unwrap();
    ok(&run(&["report", "--model", "a_named.json", "--profile", "pa.json", "--out", "r2.html", "--quiet"], p));
}

// 7. Values whose squares overflow f32 are refused with the column named; no inf
// distances are ever written.
#[test]
fn overflowing_values_are_refused_with_the_column() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    let n = 100;
    let col = |big: f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values((0..n).map(|i| if i == 7 { big } else { (i % 5) as f64 })))
    };
    let ids = || Arc::new(Int64Array::from_iter_values(0..n as i64)) as ArrayRef;
    write_parquet(&p.join("huge.parquet"), vec![("subscriber_id", ids()), ("spend", col(1e38)), ("visits", col(2.0))]);
    write_parquet(&p.join("ok.parquet"), vec![("subscriber_id", ids()), ("spend", col(3.0)), ("visits", col(2.0))]);
    write_parquet(&p.join("new.parquet"), vec![("subscriber_id", ids()), ("spend", col(1e30)), ("visits", col(2.0))]);
    let o = run(&["fit", "huge.parquet", "--k", "3", "--scale", "none", "--model", "m.json"], p);
    assert_fails(&o, 3, &["'spend'", "overflow"], p, &["huge.parquet", "new.parquet", "ok.parquet"]);
    fit(p, "ok.parquet", "m.json", "3");
    let o = run(&["assign", "--model", "m.json", "new.parquet", "--out", "a.parquet"], p);
    assert_fails(&o, 3, &["'spend'", "overflow"], p, &["huge.parquet", "m.json", "new.parquet", "ok.parquet"]);
    let o = run(&["profile", "--model", "m.json", "new.parquet", "--out", "p.json"], p);
    assert_eq!(o.status.code(), Some(3));
}

// 8. Too few rows for a drift verdict: its own verdict and exit code, not "retrain".
#[test]
fn drift_on_too_few_rows_says_so() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    table(p, "in.parquet", 1000);
    table(p, "one.parquet", 1);
    fit(p, "in.parquet", "m.json", "3");
    write_parquet(
        &p.join("empty.parquet"),
        vec![
            ("subscriber_id", Arc::new(Int64Array::from(Vec::<i64>::new())) as ArrayRef),
            ("spend", Arc::new(Float64Array::from(Vec::<f64>::new())) as ArrayRef),
            ("visits", Arc::new(Float64Array::from(Vec::<f64>::new())) as ArrayRef),
        ],
    );
    for input in ["empty.parquet", "one.parquet"] {
        let o = run(&["drift", "--model", "m.json", input, "--json", "--out", "d.json", "--force", "--quiet"], p);
        assert_eq!(o.status.code(), Some(12), "{input}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["verdict"], "insufficient_data");
        assert!(v["min_rows"].as_u64().unwrap() >= 100);
        // The written report is readable by `report`.
        ok(&run(&["profile", "--model", "m.json", input, "--out", "p.json", "--force", "--quiet"], p));
        ok(&run(
            &["report", "--model", "m.json", "--profile", "p.json", "--drift", "d.json", "--out", "r.html", "--force"],
            p,
        ));
    }
}

// 9. k above the distinct rows: said on stderr and counted in the model and --json.
#[test]
fn identical_rows_with_k_above_distinct_rows_are_reported() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    write_parquet(
        &p.join("same.parquet"),
        vec![
            ("spend", Arc::new(Float64Array::from(vec![5.0; 20])) as ArrayRef),
            ("visits", Arc::new(Float64Array::from_iter_values((0..20).map(|i| (i % 2) as f64))) as ArrayRef),
        ],
    );
    let o = run(&["fit", "same.parquet", "--k", "5", "--model", "m.json", "--json"], p);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["empty_segments"], 3, "2 distinct rows, k = 5: {v}");
    assert!(stderr(&o).contains("3 of 5 segments are empty"), "{}", stderr(&o));
    assert_eq!(json(&p.join("m.json"))["manifest"]["empty_segments"], 3);
}

/// Run with stdout a pipe whose reader is already gone.
fn into_closed_pipe(args: &[&str], dir: &Path) -> Output {
    let mut child = bin().args(args).current_dir(dir).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

// 10. No panic on any input or stream state; a closed stdout ends quietly with 0.
#[test]
fn no_panics_and_closed_pipes_exit_quietly() {
    let d = fitted(3000, "3");
    let p = d.path();
    for args in [
        vec!["info"],
        vec!["info", "--json"],
        vec!["bench", "--rows", "2000", "--dims", "3", "--k", "4", "--backends", "cpu"],
        vec!["assign", "--model", "m.json", "in.parquet", "--out", "-", "--quiet"],
        vec!["profile", "--model", "m.json", "in.parquet", "--out", "-", "--quiet"],
        vec!["fit", "in.parquet", "--k", "3", "--model", "x.json", "--json", "--quiet"],
    ] {
        let o = into_closed_pipe(&args, p);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert!(o.stderr.is_empty(), "{args:?} printed: {}", stderr(&o));
    }
    // A closed stderr: logs and errors are dropped, the exit code still tells.
    for (args, code) in [
        (vec!["fit", "in.parquet", "--k", "3", "--model", "y.json"], 0),
        (vec!["fit", "missing.parquet", "--k", "3", "--model", "z.json"], 3),
    ] {
        let mut child = bin().args(&args).current_dir(p).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stderr.take());
        assert_eq!(child.wait().unwrap().code(), Some(code), "{args:?} with stderr closed");
    }
    for args in [
        vec!["bench", "--dims", "0", "--k", "2"],
        vec!["bench", "--rows", "0", "--k", "2"],
        vec!["bench", "--rows", "100", "--dims", "2", "--k", "2", "--iters", "0"],
        vec!["bench", "--rows", "100", "--dims", "2", "--k", "2", "--topk", "0"],
        vec!["bench", "--rows", "100", "--dims", "2", "--k", "101", "--topk", "3"],
        vec!["bench", "in.parquet", "--k", "2", "--topk", "3"],
        vec!["bench", "--rows", "100", "--dims", "2", "--k", "2", "--topk", "18446744073709551615"],
        vec![
            "generate",
            "--rows",
            "10",
            "--dims",
            "2",
            "--clusters",
            "2",
            "--row-group-rows",
            "0",
            "--out",
            "g.parquet",
        ],
        vec!["generate", "--rows", "10", "--dims", "0", "--clusters", "2", "--out", "g.parquet"],
    ] {
        let o = run(&args, p);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{args:?}");
    }
}

// 11. Absurd thread counts are capped with a notice.
#[test]
fn thread_counts_are_capped() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    table(p, "in.parquet", 500);
    let o = run(&["fit", "in.parquet", "--k", "3", "--model", "m.json", "--threads", "100000", "--json"], p);
    ok(&o);
    assert!(stderr(&o).contains("--threads 100000 is more than"), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    assert!(v["threads"].as_u64().unwrap() <= 4 * cores, "{v}");
}

// 12. Every JSON artefact names its format and version, and reports with null numbers
// (an empty profile, a drift of nothing) are read back by `report`.
#[test]
fn json_artefacts_name_their_format_and_read_back() {
    let d = fitted(400, "3");
    let p = d.path();
    ok(&run(&["profile", "--model", "m.json", "in.parquet", "--out", "p.json", "--quiet"], p));
    let _ = run(&["drift", "--model", "m.json", "in.parquet", "--out", "d.json", "--quiet"], p);
    ok(&run(&["assign", "--model", "m.json", "in.parquet", "--out", "s.parquet", "--quiet"], p));
    ok(&run(
        &["audit", "--segments", "s.parquet", "--input", "in.parquet", "--protected", "visits", "--out", "a.json"],
        p,
    ));
    for (f, format) in [
        ("m.json", "microseg-model"),
        ("p.json", "microseg-profile"),
        ("d.json", "microseg-drift"),
        ("a.json", "microseg-audit"),
    ] {
        let v = json(&p.join(f));
        assert_eq!(v["format"], format, "{f}");
        assert_eq!(v["format_version"], 1, "{f}");
    }
    assert!(json(&p.join("a.json"))["attributes"].is_array(), "the audit is an object");
    ok(&run(
        &[
            "report",
            "--model",
            "m.json",
            "--profile",
            "p.json",
            "--drift",
            "d.json",
            "--audit",
            "a.json",
            "--out",
            "r.html",
        ],
        p,
    ));
}

// 13 and 14. Output types are stable (int32 segments, ids as given) and every output
// says where it came from.
#[test]
fn outputs_carry_provenance_and_stable_types() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    table(p, "in.parquet", 300);
    let o = run(&["fit", "in.parquet", "--k", "3", "--model", "m.json", "--json", "--quiet"], p);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let fp = v["model_fingerprint"].as_str().unwrap().to_string();
    assert!(fp.starts_with("sha256:"));
    ok(&run(&["assign", "--model", "m.json", "in.parquet", "--out", "a.parquet", "--quiet"], p));
    let f = std::fs::File::open(p.join("a.parquet")).unwrap();
    let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
    let kv: std::collections::HashMap<String, String> = r
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(kv["microseg.model_fingerprint"], fp);
    assert_eq!(kv["microseg.engine_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(kv["microseg.ids_pseudonymized"], "false");
    let b = first_batch(&p.join("a.parquet"));
    assert_eq!(b.column(0).data_type(), &DataType::Int64, "the id keeps its type");
    assert_eq!(b.column(1).data_type(), &DataType::Int32);
    // A failure under --json is one JSON line too.
    let o = run(&["assign", "--model", "missing.json", "in.parquet", "--out", "b.parquet", "--json"], p);
    assert_eq!(o.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["status"].as_str(), v["exit_code"].as_u64()), (Some("error"), Some(3)), "{v}");
    assert!(v["message"].as_str().unwrap().contains("missing.json"));
    let o = run(&["fit", "in.parquet", "--k", "x", "--model", "c.json", "--json"], p);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "error");
}

// 15. Every field of a model file is validated on load, with its name in the message.
#[test]
fn model_files_are_validated_field_by_field() {
    let d = fitted(200, "3");
    let p = d.path();
    let good = json(&p.join("m.json"));
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let edits: Vec<(&str, Edit)> = vec![
        ("\"scale\"", Box::new(|m| m["features"][0]["scale"] = (-1.0).into())),
        ("\"scale\"", Box::new(|m| m["features"][1]["scale"] = 0.0.into())),
        ("manhattan", Box::new(|m| m["metric"] = "manhattan".into())),
        ("\"id\" 0 is used twice", Box::new(|m| m["segments"][1]["id"] = 0.into())),
        ("\"centroid\"", Box::new(|m| m["segments"][0]["centroid"] = serde_json::json!([1.0]))),
        ("\"k\"", Box::new(|m| m["k"] = 7.into())),
        ("\"format_version\"", Box::new(|m| m["format_version"] = 99.into())),
        ("\"shares\"", Box::new(|m| m["baseline"]["features"][0]["shares"] = serde_json::json!([0.5]))),
    ];
    for (needle, edit) in edits {
        let mut m = good.clone();
        edit(&mut m);
        std::fs::write(p.join("bad.json"), m.to_string()).unwrap();
        let o = run(&["assign", "--model", "bad.json", "in.parquet", "--out", "a.parquet"], p);
        assert_eq!(o.status.code(), Some(3), "{needle}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "message lacks {needle}: {}", stderr(&o));
        assert!(!p.join("a.parquet").exists());
    }
}

// 16. The smaller ones.
#[test]
fn smaller_contract_defects() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    let emb = |name: &str, rows: Vec<Vec<f32>>| {
        let list = arrow::array::ListArray::from_iter_primitive::<arrow::datatypes::Float32Type, _, _>(
            rows.iter().map(|r| Some(r.iter().map(|v| Some(*v)).collect::<Vec<_>>())),
        );
        write_parquet(
            &p.join(name),
            vec![
                ("subscriber_id", Arc::new(Int32Array::from_iter_values(0..rows.len() as i32)) as ArrayRef),
                ("e", Arc::new(list) as ArrayRef),
            ],
        );
    };
    emb("base.parquet", (0..50).map(|i| vec![i as f32, 1.0, 2.0]).collect());
    emb("none.parquet", vec![]);
    emb("seeds.parquet", vec![vec![1.0, 2.0, 3.0, 4.0]]);
    let mut ragged: Vec<Vec<f32>> = (0..50).map(|i| vec![i as f32, 1.0, 2.0, 3.0]).collect();
    ragged[10] = vec![1.0, 2.0];
    emb("ragged.parquet", ragged);
    let o = run(
        &[
            "neighbors",
            "--base",
            "base.parquet",
            "--queries",
            "none.parquet",
            "--embedding",
            "e",
            "--k",
            "2",
            "--out",
            "n.parquet",
        ],
        p,
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("no rows") && !stderr(&o).contains("cluster"), "{}", stderr(&o));
    let o = run(
        &[
            "similar",
            "--input",
            "ragged.parquet",
            "--embedding",
            "e",
            "--seeds",
            "seeds.parquet",
            "--top",
            "3",
            "--out",
            "s.parquet",
        ],
        p,
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("ragged.parquet") && stderr(&o).contains("row 10"), "blame the input: {}", stderr(&o));
    let o = run(&["bench", "--rows", "100", "--dims", "2", "--k", "2", "--backends", "gpu"], p);
    assert_eq!(o.status.code(), Some(2), "no GPU to time: {}", stderr(&o));
    // neighbors keeps int32 ids as int32.
    ok(&run(
        &[
            "neighbors",
            "--base",
            "base.parquet",
            "--queries",
            "base.parquet",
            "--embedding",
            "e",
            "--k",
            "2",
            "--out",
            "n.parquet",
            "--quiet",
        ],
        p,
    ));
    let b = first_batch(&p.join("n.parquet"));
    assert_eq!((b.column(0).data_type(), b.column(1).data_type()), (&DataType::Int32, &DataType::Int32));
    assert_eq!(b.column(2).data_type(), &DataType::Int32);
}

// 17. The report speaks the reader's language.
#[test]
fn report_numbers_and_labels_read_well() {
    use microseg::segments::report::{label, num, pct};
    assert_eq!(label("recency_days"), "recency (days)");
    assert_eq!(label("is_uk"), "UK");
    assert_eq!(label("avg_basket_value"), "avg basket value");
    assert_eq!(num(-0.0001), "0.000");
    assert_eq!(num(-0.0), "0.000");
    assert_eq!(pct(0.0004), "<0.1 %");
    assert_eq!(pct(0.0), "0.0 %");
    let d = TempDir::new().unwrap();
    let p = d.path();
    let data = repo().join("datasets/online_retail_customers.parquet");
    let o = run(
        &["segment", data.to_str().unwrap(), "--k", "8", "--log1p", "monetary,frequency", "--out-dir", "o", "--quiet"],
        p,
    );
    ok(&o);
    let html = std::fs::read_to_string(p.join("o/report.html")).unwrap();
    for bad in ["-0.0", "−0.0", ">0.0 %<", " sd)"] {
        assert!(!html.contains(bad), "the report shows {bad}");
    }
    for good in ["first principal axis", "second principal axis", "<figcaption", "recency (days)", "overall"] {
        assert!(html.contains(good), "the report lacks {good}");
    }
}

/// One bad invocation of every command: a clear message, the documented exit code,
/// nothing on stdout and no file left behind.
#[test]
fn catalogue_of_bad_input_covers_every_command() {
    let d = fitted(100, "3");
    let p = d.path();
    ok(&run(&["assign", "--model", "m.json", "in.parquet", "--out", "s.parquet", "--quiet"], p));
    std::fs::write(p.join("junk.parquet"), b"PAR1 this is not parquet PAR1").unwrap();
    let keep = listing(p);
    let keep: Vec<&str> = keep.iter().map(|s| s.as_str()).collect();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["fit", "junk.parquet", "--k", "2", "--model", "o.json"], 3, "junk.parquet"),
        (vec!["assign", "--model", "in.parquet", "in.parquet", "--out", "o.parquet"], 3, "not a microseg model"),
        (vec!["segment", "in.parquet", "--k", "0", "--out-dir", "o"], 2, "k"),
        (vec!["generate", "--rows", "5", "--dims", "2", "--clusters", "0", "--out", "o.parquet"], 2, "--clusters"),
        (vec!["profile", "--model", "m.json", "in.parquet", "--outcomes", "spend", "--out", "o.json"], 2, "spend"),
        (vec!["drift", "--model", "m.json", "junk.parquet"], 3, "junk.parquet"),
        (vec!["report", "--model", "m.json", "--profile", "m.json", "--out", "o.html"], 3, "profile"),
        (vec!["audit", "--segments", "s.parquet", "--input", "in.parquet", "--protected", "nope"], 3, "nope"),
        (
            vec![
                "neighbors",
                "--base",
                "in.parquet",
                "--queries",
                "in.parquet",
                "--embedding",
                "spend",
                "--k",
                "1",
                "--out",
                "o.parquet",
            ],
            3,
            "FixedSizeList",
        ),
        (
            vec![
                "similar",
                "--input",
                "in.parquet",
                "--embedding",
                "spend",
                "--seeds",
                "in.parquet",
                "--top",
                "1",
                "--out",
                "o.parquet",
            ],
            3,
            "spend",
        ),
        (vec!["info", "--bogus"], 2, "--bogus"),
        (vec!["bench", "junk.parquet", "--k", "2"], 3, "junk.parquet"),
    ];
    for (args, code, needle) in cases {
        let o = run(&args, p);
        assert_fails(&o, code, &[needle], p, &keep);
    }
}

/// MICROSEG_ALLOW_SOFTWARE_GPU takes 1 and 0 as the README writes it, and true/false
/// (clap's plain bool parser refused "1" with exit 2).
#[test]
fn the_software_gpu_variable_takes_one_and_zero() {
    let d = fitted(3000, "3");
    for v in ["1", "0", "true", "false"] {
        let model = format!("m_{v}.json");
        let o = bin()
            .args(["fit", "in.parquet", "--k", "3", "--model", &model, "--backend", "cpu", "--quiet"])
            .env("MICROSEG_ALLOW_SOFTWARE_GPU", v)
            .current_dir(d.path())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "MICROSEG_ALLOW_SOFTWARE_GPU={v}: {}", stderr(&o));
    }
}
