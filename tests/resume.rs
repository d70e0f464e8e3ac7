//! Checkpoints, resume and signals: a fit stopped anywhere (kill -9, SIGTERM, a state
//! taken at any iteration) and resumed gives the model of a fit never stopped, byte for
//! byte; a checkpoint of another fit is refused, never used.

use std::path::Path;
use std::time::Duration;

use microseg::backend::cpu::{CpuBackend, Kernel};
use microseg::kmeans::{self, Algorithm, KMeansParams, Resume, StateEvent};
use rand::{RngExt, SeedableRng};
use tempfile::TempDir;

use crate::util::{assert_fails, bin, blobs, listing, ok, run, stderr};

/// Every state a fit hands out, resumed: the same centroids, labels, inertia and
/// counters as the fit that ran through, for each algorithm and across restarts.
#[test]
fn resuming_from_any_state_gives_the_same_fit() {
    let x = blobs(6_000, 5, 9, 6.0, 3);
    let be = CpuBackend::new(Kernel::Auto);
    for algorithm in [Algorithm::Lloyd, Algorithm::Hamerly, Algorithm::Pruned] {
        let p = KMeansParams { n_init: 3, tol: 1e-7, max_iter: 40, algorithm, ..KMeansParams::new(12) };
        let mut states: Vec<(Resume, StateEvent)> = Vec::new();
        let full = kmeans::fit_resumable(&be, &x, None, &p, None, &mut |_| true, &mut |s, e| {
            states.push((s.clone(), e));
            Ok(())
        })
        .unwrap();
        assert!(states.len() > 10, "{algorithm:?}: only {} states", states.len());
        assert!(states.iter().filter(|(_, e)| *e == StateEvent::RunEnd).count() == 3);
        for (i, (s, _)) in states.iter().enumerate() {
            // Through JSON, as a checkpoint file carries it.
            let s: Resume = serde_json::from_str(&serde_json::to_string(s).unwrap()).unwrap();
            let r = kmeans::fit_resumable(&be, &x, None, &p, Some(s), &mut |_| true, &mut |_, _| Ok(())).unwrap();
            let what = format!("{algorithm:?}, state {i}");
            assert_eq!(r.centroids.data, full.centroids.data, "{what}: centroids");
            assert!(r.nearest.iter().zip(&full.nearest).all(|(a, b)| a.label == b.label), "{what}: labels");
            assert_eq!(r.inertia.to_bits(), full.inertia.to_bits(), "{what}: inertia");
            assert_eq!(
                (r.iterations, r.converged, r.best_run, r.relocations),
                (full.iterations, full.converged, full.best_run, full.relocations),
                "{what}: counters"
            );
        }
    }
}

/// Stopping (as a signal does) hands out the state first; resuming it finishes the fit.
#[test]
fn a_stopped_fit_saves_its_state_and_resumes() {
    let x = blobs(4_000, 4, 6, 5.0, 8);
    let be = CpuBackend::new(Kernel::Auto);
    let p = KMeansParams { tol: 0.0, max_iter: 25, ..KMeansParams::new(8) };
    let full = kmeans::fit(&be, &x, None, &p, &mut |_| {}).unwrap();
    let mut last: Option<(Resume, StateEvent)> = None;
    let err = kmeans::fit_resumable(&be, &x, None, &p, None, &mut |i| i.iteration < 7, &mut |s, e| {
        last = Some((s.clone(), e));
        Ok(())
    })
    .unwrap_err();
    assert!(matches!(err, microseg::Error::Interrupted));
    let (state, event) = last.unwrap();
    assert_eq!((event, state.iteration), (StateEvent::Stopping, 7));
    let r = kmeans::fit_resumable(&be, &x, None, &p, Some(state), &mut |_| true, &mut |_, _| Ok(())).unwrap();
    assert_eq!(r.centroids.data, full.centroids.data);
    assert_eq!(r.iterations, 25);
    // A state of another shape is refused, not used.
    let bad = Resume { centroids: Some(vec![0.0; 3]), ..last_state(&be, &x, &p) };
    assert!(kmeans::fit_resumable(&be, &x, None, &p, Some(bad), &mut |_| true, &mut |_, _| Ok(())).is_err());
}

fn last_state(be: &CpuBackend, x: &microseg::features::Matrix, p: &KMeansParams) -> Resume {
    let mut last = None;
    kmeans::fit_resumable(be, x, None, p, None, &mut |_| true, &mut |s, _| {
        last = Some(s.clone());
        Ok(())
    })
    .unwrap();
    last.unwrap()
}

const FIT: &[&str] =
    &["fit", "big.parquet", "--k", "48", "--tol", "0", "--max-iter", "60", "--n-init", "2", "--backend", "cpu"];

/// The table of the command-line tests, and the model of an uninterrupted fit of it.
fn big_table_and_reference(dir: &Path) -> Vec<u8> {
    ok(&run(
        &["generate", "--rows", "1500000", "--dims", "12", "--clusters", "30", "--out", "big.parquet", "--quiet"],
        dir,
    ));
    let mut args = FIT.to_vec();
    args.extend(["--model", "ref.json", "--quiet"]);
    ok(&run(&args, dir));
    std::fs::read(dir.join("ref.json")).unwrap()
}

/// kill -9 at random points, then the same command: the model equals an uninterrupted
/// run's byte for byte, and the checkpoint is gone once the model is written.
#[test]
#[cfg(unix)]
fn kill_9_anywhere_then_rerun_gives_the_same_model() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    let reference = big_table_and_reference(p);
    kill_and_rerun(p, FIT, &reference, 4, 300..2500);
}

/// The same for a Gaussian mixture: EM resumed from its checkpoint (the k-means start
/// of an interrupted run begins again) writes the uninterrupted model.
#[test]
#[cfg(unix)]
fn kill_9_during_a_mixture_fit_then_rerun_gives_the_same_model() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    ok(&run(&["generate", "--rows", "200000", "--dims", "6", "--clusters", "8", "--out", "g.parquet", "--quiet"], p));
    const GMM: &[&str] = &[
        "fit",
        "g.parquet",
        "--k",
        "8",
        "--method",
        "gmm",
        "--covariance",
        "full",
        "--tol",
        "0",
        "--max-iter",
        "40",
        "--n-init",
        "2",
        "--backend",
        "cpu",
    ];
    let mut args = GMM.to_vec();
    args.extend(["--model", "ref.json", "--quiet"]);
    ok(&run(&args, p));
    let reference = std::fs::read(p.join("ref.json")).unwrap();
    kill_and_rerun(p, GMM, &reference, 3, 200..1800);
}

fn kill_and_rerun(p: &Path, fit: &[&str], reference: &[u8], rounds: u64, after_ms: std::ops::Range<u64>) {
    let mut resumed_from_checkpoint = 0;
    for seed in 0..rounds {
        let _ = std::fs::remove_file(p.join("m.json"));
        let mut args = fit.to_vec();
        args.extend(["--model", "m.json", "--checkpoint", "ck", "--checkpoint-every", "1", "--quiet"]);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        // Up to three kills per round, each at a random time; then a run to the end.
        for _ in 0..3 {
            let had = p.join("ck/fit.checkpoint.json").exists();
            let mut child = bin().args(&args).current_dir(p).spawn().unwrap();
            std::thread::sleep(Duration::from_millis(rng.random_range(after_ms.clone())));
            let _ = child.kill();
            let status = child.wait().unwrap();
            if status.success() {
                break;
            }
            resumed_from_checkpoint += had as usize;
        }
        if !p.join("m.json").exists() {
            let o = run(&args, p);
            ok(&o);
        }
        assert!(std::fs::read(p.join("m.json")).unwrap() == reference, "round {seed}: the model differs");
        assert!(!p.join("ck/fit.checkpoint.json").exists(), "round {seed}: the checkpoint was left");
        // A temporary file of a killed save is swept by the next save.
        assert!(listing(&p.join("ck")).is_empty(), "round {seed}: {:?} left", listing(&p.join("ck")));
    }
    assert!(resumed_from_checkpoint > 0, "no kill landed after a checkpoint: the test proved nothing");
}

/// Every state a mixture fit hands out (EM iterations, ends of runs, across restarts
/// and covariance types), resumed through JSON: the same mixture, labels, posteriors
/// and likelihoods, bit for bit.
#[test]
fn resuming_a_mixture_from_any_state_gives_the_same_fit() {
    use microseg::gmm::{self, CovarianceType, GmmParams, GmmResume};
    let x = blobs(3_000, 3, 4, 4.0, 5);
    let be = CpuBackend::new(Kernel::Auto);
    for covariance in [CovarianceType::Full, CovarianceType::Diag] {
        let p = GmmParams { n_init: 2, tol: 1e-9, max_iter: 30, covariance, ..GmmParams::new(5) };
        let mut states: Vec<(GmmResume, StateEvent)> = Vec::new();
        let full = gmm::fit_resumable(&be, &x, None, &p, None, &mut |_| true, &mut |s, e| {
            states.push((s.clone(), e));
            Ok(())
        })
        .unwrap();
        assert!(states.iter().filter(|(_, e)| *e == StateEvent::RunEnd).count() == 2);
        assert!(states.len() > 6, "{covariance:?}: only {} states", states.len());
        for (i, (s, _)) in states.iter().enumerate() {
            let s: GmmResume = serde_json::from_str(&serde_json::to_string(s).unwrap()).unwrap();
            let r = gmm::fit_resumable(&be, &x, None, &p, Some(s), &mut |_| true, &mut |_, _| Ok(())).unwrap();
            let what = format!("{covariance:?}, state {i}");
            assert_eq!(r.mixture, full.mixture, "{what}: mixture");
            assert_eq!((&r.labels, &r.probability), (&full.labels, &full.probability), "{what}: posteriors");
            assert_eq!(r.log_likelihood.to_bits(), full.log_likelihood.to_bits(), "{what}: likelihood");
            assert_eq!(
                (r.iterations, r.converged, r.best_run, &r.emptied),
                (full.iterations, full.converged, full.best_run, &full.emptied),
                "{what}: counters"
            );
        }
        // Stopped at iteration 4 of the first run: the state is handed out, then resumed.
        let mut last = None;
        let err = gmm::fit_resumable(&be, &x, None, &p, None, &mut |i| i.init || i.iteration < 4, &mut |s, e| {
            last = Some((s.clone(), e));
            Ok(())
        })
        .unwrap_err();
        assert!(matches!(err, microseg::Error::Interrupted));
        let (state, event) = last.unwrap();
        assert_eq!((event, state.iteration), (StateEvent::Stopping, 4));
        let r = gmm::fit_resumable(&be, &x, None, &p, Some(state), &mut |_| true, &mut |_, _| Ok(())).unwrap();
        assert_eq!(r.mixture, full.mixture);
    }
}

/// SIGTERM (and SIGINT) during a fit: exit 143 (130) at the end of the iteration under
/// way, the state saved, one line saying where, no temporary file left; the rerun
/// finishes with the uninterrupted model.
#[test]
#[cfg(unix)]
fn sigterm_stops_at_the_end_of_the_iteration_and_the_rerun_resumes() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    let reference = big_table_and_reference(p);
    let base = listing(p);
    for (sig, code) in [("-TERM", 143), ("-INT", 130)] {
        let mut args = FIT.to_vec();
        // -v logs every iteration: the test knows which iteration was under way.
        args.extend(["--model", "m.json", "--checkpoint", "ck", "--checkpoint-every", "1000", "-v"]);
        let mut child = bin().args(&args).current_dir(p).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines().map_while(|l| l.ok()) {
                let _ = tx.send(line);
            }
        });
        // Wait for the third iteration, then send the signal.
        let mut seen: Vec<String> = Vec::new();
        let mut iterations = 0;
        while iterations < 3 {
            let line = rx.recv_timeout(Duration::from_secs(120)).expect("the fit logs its iterations");
            if line.contains(" iteration ") && line.contains("labels changed") {
                iterations += 1;
            }
            seen.push(line);
        }
        assert!(bin_kill(sig, child.id()));
        let status = child.wait().unwrap();
        reader.join().unwrap();
        seen.extend(rx.try_iter());
        let text = seen.join("\n");
        assert_eq!(status.code(), Some(code), "{sig}:\n{text}");
        let logged = seen.iter().filter(|l| l.contains(" iteration ") && l.contains("labels changed")).count();
        // Stopped at the end of the iteration the signal fell in: at most one more.
        assert!(logged <= iterations + 1, "{sig}: {logged} iterations logged after the signal at {iterations}");
        let stop =
            seen.iter().find(|l| l.contains("stopped by")).unwrap_or_else(|| panic!("{sig}: no stop line:\n{text}"));
        // "run 1 iteration 8: ..." — the last iteration done is the one the line names.
        let last_done = seen
            .iter()
            .rev()
            .find(|l| l.contains(" iteration ") && l.contains("labels changed"))
            .and_then(|l| l.split(" iteration ").nth(1)?.split(':').next()?.parse::<usize>().ok())
            .unwrap();
        assert!(
            stop.contains(&format!("at iteration {last_done} ")) && stop.contains("run the same command"),
            "{stop}"
        );
        let mut want = base.clone();
        want.push("ck".into());
        want.sort();
        assert_eq!(listing(p), want, "{sig}: files left behind");
        assert_eq!(listing(&p.join("ck")), ["fit.checkpoint.json"], "{sig}: the checkpoint directory");
    }
    let mut args = FIT.to_vec();
    args.extend(["--model", "m.json", "--checkpoint", "ck"]);
    let o = run(&args, p);
    ok(&o);
    assert!(stderr(&o).contains("resuming from the checkpoint"), "{}", stderr(&o));
    assert!(std::fs::read(p.join("m.json")).unwrap() == reference, "the resumed model differs");
    // Without --checkpoint the line says nothing was kept.
    let mut args = FIT.to_vec();
    args.extend(["--model", "n.json", "-v"]);
    let child = bin().args(&args).current_dir(p).stderr(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(bin_kill("-TERM", child.id()));
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(143) && err.contains("at iteration") {
        assert!(err.contains("nothing was written"), "{err}");
    }
    assert!(!p.join("n.json").exists());
}

fn bin_kill(sig: &str, pid: u32) -> bool {
    std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success()
}

/// A checkpoint of other options, other data, another engine version, or no checkpoint
/// at all is refused with the reason; the checkpoint stays for its own fit.
#[test]
fn checkpoints_of_another_fit_are_refused() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    ok(&run(&["generate", "--rows", "3000", "--dims", "4", "--clusters", "3", "--out", "a.parquet", "--quiet"], p));
    ok(&run(
        &[
            "generate",
            "--rows",
            "3000",
            "--dims",
            "4",
            "--clusters",
            "3",
            "--seed",
            "9",
            "--out",
            "b.parquet",
            "--quiet",
        ],
        p,
    ));
    // Each option once (clap refuses a flag given twice): the defaults unless `more` sets them.
    let with = |input: &str, more: &[&str], model: &str| -> std::process::Output {
        let mut a: Vec<&str> = vec!["fit", input, "--checkpoint", "ck", "--backend", "cpu", "--quiet"];
        for (flag, value) in [("--k", "5"), ("--tol", "0"), ("--max-iter", "30")] {
            if !more.contains(&flag) {
                a.extend([flag, value]);
            }
        }
        a.extend(more);
        a.extend(["--model", model]);
        run(&a, p)
    };
    // Stop one at iteration 3 by hand: a checkpoint holding a state mid-fit.
    ok(&with("a.parquet", &["--checkpoint-every", "3"], "full.json"));
    assert!(!p.join("ck/fit.checkpoint.json").exists(), "the checkpoint is removed after the model is written");
    let kept = keep_a_checkpoint(p);
    let files = listing(p);
    let names: Vec<&str> = files.iter().map(|s| s.as_str()).collect();
    for (input, more, needles) in [
        ("a.parquet", vec!["--k", "6"], vec!["belongs to another fit", "--k was 5 there and is 6 here"]),
        ("a.parquet", vec!["--seed", "4"], vec!["--seed was 0 there and is 4 here"]),
        ("a.parquet", vec!["--max-iter", "31"], vec!["--max-iter was 30 there and is 31 here"]),
        ("b.parquet", vec![], vec!["other input data", "remove it"]),
    ] {
        let o = with(input, &more, "x.json");
        assert_fails(&o, 2, &needles, p, &names);
        assert_eq!(std::fs::read(p.join("ck/fit.checkpoint.json")).unwrap(), kept, "the checkpoint was changed");
    }
    // Another engine version.
    let mut v: serde_json::Value = serde_json::from_slice(&kept).unwrap();
    v["engine_version"] = "0.0.1".into();
    std::fs::write(p.join("ck/fit.checkpoint.json"), serde_json::to_vec(&v).unwrap()).unwrap();
    assert_fails(&with("a.parquet", &[], "x.json"), 2, &["written by microseg 0.0.1"], p, &names);
    // Not a checkpoint at all.
    std::fs::write(p.join("ck/fit.checkpoint.json"), "{\"format\": \"something\"").unwrap();
    assert_fails(
        &with("a.parquet", &[], "x.json"),
        3,
        &["fit.checkpoint.json", "not a readable microseg checkpoint"],
        p,
        &names,
    );
    // --checkpoint-every without --checkpoint; a file where the directory should be.
    let o = run(&["fit", "a.parquet", "--k", "3", "--checkpoint-every", "2", "--model", "x.json"], p);
    assert_fails(&o, 2, &["--checkpoint"], p, &names);
    let o = run(&["fit", "a.parquet", "--k", "3", "--checkpoint", "a.parquet", "--model", "x.json"], p);
    assert_fails(&o, 4, &["a.parquet", "not a directory"], p, &names);
    // A mixture's command finds the k-means checkpoint: another fit.
    std::fs::write(p.join("ck/fit.checkpoint.json"), &kept).unwrap();
    let o = run(&["fit", "a.parquet", "--k", "3", "--method", "gmm", "--checkpoint", "ck", "--model", "x.json"], p);
    assert_fails(&o, 2, &["another fit", "--method was kmeans there and is gmm here"], p, &names);
    // The right checkpoint resumes to the uninterrupted model.
    std::fs::write(p.join("ck/fit.checkpoint.json"), &kept).unwrap();
    ok(&with("a.parquet", &[], "resumed.json"));
    assert_eq!(std::fs::read(p.join("resumed.json")).unwrap(), std::fs::read(p.join("full.json")).unwrap());
}

/// A checkpoint taken mid-fit through the library (the same file the CLI writes),
/// as SIGTERM would leave it: stop the fit of the test's command at iteration 3.
fn keep_a_checkpoint(p: &Path) -> Vec<u8> {
    use microseg::io::Dataset;
    use microseg::pipeline::{self, CheckpointSpec, FitConfig};
    let cfg = FitConfig {
        k: 5,
        tol: 0.0,
        max_iter: 30,
        checkpoint: Some(CheckpointSpec { every: 1000, ..CheckpointSpec::new(p.join("ck")) }),
        ..Default::default()
    };
    let ds = Dataset::open(&[p.join("a.parquet")]).unwrap();
    let r = pipeline::fit_with_progress(&ds, &cfg, &CpuBackend::new(Kernel::Auto), &mut |i| i.iteration < 3);
    assert!(matches!(r, Err(microseg::Error::Interrupted)));
    std::fs::read(p.join("ck/fit.checkpoint.json")).unwrap()
}
