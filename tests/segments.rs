//! Profiles, drift, lineage and audits: every number against an independent
//! computation or a constructed case whose answer is known.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int32Array, Int64Array, StringArray, UInt32Array};
use arrow::datatypes::Field;
use microseg::segments::audit::AuditBuilder;
use microseg::segments::{Histogram, psi, quantile_sorted};
use rand::{RngExt, SeedableRng};
use tempfile::TempDir;

use crate::util::{all_rows, first_batch, json, ok, repo, run, write_parquet as write};

#[test]
fn psi_matches_the_formula_on_known_shares() {
    // Σ (a − e) ln(a / e), computed by hand.
    let e = [0.25, 0.25, 0.5];
    let a = [0.5, 0.25, 0.25];
    let want = (0.5f64 - 0.25) * (0.5f64 / 0.25).ln() + 0.0 + (0.25f64 - 0.5) * (0.25f64 / 0.5).ln();
    assert!((psi(&e, &a) - want).abs() < 1e-15);
    assert_eq!(psi(&e, &e), 0.0);
    // Empty bins are floored, not infinite.
    assert!(psi(&[0.5, 0.5, 0.0], &[0.4, 0.4, 0.2]).is_finite());
}

#[test]
fn quantiles_and_histograms() {
    let v = [1.0f32, 2.0, 3.0, 4.0];
    assert_eq!(quantile_sorted(&v, 0.5), 2.5);
    assert!((quantile_sorted(&v, 0.1) - 1.3).abs() < 1e-12);
    assert_eq!(quantile_sorted(&v, 1.0), 4.0);
    let mut x: Vec<f32> = (0..1000).map(|i| i as f32).collect();
    let h = Histogram::fit(&mut x);
    assert_eq!(h.edges.len(), 9);
    for s in &h.shares {
        assert!((s - 0.1).abs() < 0.002, "{:?}", h.shares);
    }
    // A binary feature: a bin per value, and one for values never seen in training.
    let mut b: Vec<f32> = (0..100).map(|i| (i % 4 == 0) as u8 as f32).collect();
    let h = Histogram::fit(&mut b);
    assert!(h.is_categorical());
    assert_eq!(h.shares.iter().sum::<f64>(), 1.0);
    assert_eq!((h.bin(0.0), h.bin(1.0), h.bin(0.5), h.bin(2.0)), (0, 1, 2, 2));
    assert_eq!(h.shares, vec![0.75, 0.25, 0.0]);
    // Few distinct values (an integer count 0..=9): still a bin per value.
    let mut c: Vec<f32> = (0..1000).map(|i| (i % 10) as f32).collect();
    assert_eq!(Histogram::fit(&mut c).values.len(), 10);
}

#[test]
fn disparate_impact_on_a_constructed_case() {
    // Group a: 60 rows, 30 in segment 0; group b: 40 rows, 10 in segment 0.
    let mut b = AuditBuilder::default();
    for i in 0..60 {
        b.add((i >= 30) as u32, "a");
    }
    for i in 0..40 {
        b.add((i >= 10) as u32, "b");
    }
    let r = b.finish("group");
    let s0 = &r.segments[0];
    let ga = s0.groups.iter().find(|g| g.group == "a").unwrap();
    let gb = s0.groups.iter().find(|g| g.group == "b").unwrap();
    assert_eq!((ga.selection_rate, gb.selection_rate), (0.5, 0.25));
    assert_eq!((ga.disparate_impact, gb.disparate_impact), (1.0, 0.5));
    assert!(gb.flagged && !ga.flagged);
    assert_eq!(gb.share_of_segment, 0.25);
    assert_eq!(gb.share_of_population, 0.4);
    let s1 = &r.segments[1];
    let ga1 = s1.groups.iter().find(|g| g.group == "a").unwrap();
    assert!((ga1.disparate_impact - 0.5 / 0.75).abs() < 1e-15 && ga1.flagged);
    assert_eq!(r.flags, 2);
}

/// Three tight blobs in 2-D, far apart; ids 0.. in order.
fn blobs(dir: &Path, name: &str, centres: &[(f64, f64)], per: usize, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for &(cx, cy) in centres {
        for _ in 0..per {
            x.push(cx + rng.random::<f64>() - 0.5);
            y.push(cy + rng.random::<f64>() - 0.5);
        }
    }
    let n = x.len() as i64;
    write(
        &dir.join(name),
        vec![
            ("subscriber_id", Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef),
            ("x", Arc::new(Float64Array::from(x)) as ArrayRef),
            ("y", Arc::new(Float64Array::from(y)) as ArrayRef),
        ],
    );
}

fn centroid_ids(model: &serde_json::Value) -> Vec<(u32, f64)> {
    model["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_u64().unwrap() as u32, s["centroid_original"][0].as_f64().unwrap()))
        .collect()
}

#[test]
fn lineage_keeps_ids_and_records_splits_and_vanished_segments() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    blobs(p, "three.parquet", &[(0.0, 0.0), (100.0, 0.0), (0.0, 100.0)], 200, 1);
    ok(&run(&["fit", "three.parquet", "--k", "3", "--scale", "none", "--model", "a.json"], p));
    // Name a segment; a refit with another seed keeps ids (by place) and the name.
    let mut a = json(&p.join("a.json"));
    let far_x = centroid_ids(&a).iter().find(|(_, x)| *x > 50.0).unwrap().0;
    for s in a["segments"].as_array_mut().unwrap() {
        if s["id"] == far_x {
            s["name"] = "the far east".into();
        }
    }
    std::fs::write(p.join("a.json"), serde_json::to_vec(&a).unwrap()).unwrap();
    ok(&run(
        &[
            "fit",
            "three.parquet",
            "--k",
            "3",
            "--scale",
            "none",
            "--seed",
            "7",
            "--previous",
            "a.json",
            "--model",
            "b.json",
        ],
        p,
    ));
    let b = json(&p.join("b.json"));
    let place = |m: &serde_json::Value| {
        let mut v: Vec<(i64, u32)> = centroid_ids(m).iter().map(|(id, x)| ((x / 50.0).round() as i64, *id)).collect();
        v.sort();
        v
    };
    assert_eq!(place(&a), place(&b), "same places, same ids");
    let kept: Vec<&str> =
        b["lineage"]["entries"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kept, vec!["kept"; 3]);
    let named = b["segments"].as_array().unwrap().iter().find(|s| s["id"] == far_x).unwrap();
    assert_eq!(named["name"], "the far east");
    // One blob split in two: three kept, one split from the blob that split.
    blobs(p, "four.parquet", &[(0.0, 0.0), (100.0, 0.0), (0.0, 100.0), (0.0, 110.0)], 200, 2);
    ok(&run(&["fit", "four.parquet", "--k", "4", "--scale", "none", "--previous", "a.json", "--model", "c.json"], p));
    let c = json(&p.join("c.json"));
    let entries = c["lineage"]["entries"].as_array().unwrap();
    assert_eq!(entries.iter().filter(|e| e["kind"] == "kept").count(), 3);
    let split: Vec<_> = entries.iter().filter(|e| e["kind"] == "split").collect();
    assert_eq!(split.len(), 1);
    let up_id = centroid_ids(&a).iter().find(|(_, x)| x.abs() < 50.0).map(|_| ()).and(Some(())).map(|_| {
        a["segments"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["centroid_original"][1].as_f64().unwrap() > 50.0)
                .unwrap()["id"]
                .clone()
    });
    assert_eq!(split[0]["previous"], up_id.unwrap(), "split from the blob at (0, 100)");
    assert_eq!(split[0]["id"], 3, "a fresh id after the previous ones");
    // Two of the three blobs merged: one vanished, merged into a kept segment.
    blobs(p, "two.parquet", &[(0.0, 0.0), (100.0, 0.0)], 300, 3);
    ok(&run(&["fit", "two.parquet", "--k", "2", "--scale", "none", "--previous", "a.json", "--model", "e.json"], p));
    let e = json(&p.join("e.json"));
    assert_eq!(e["lineage"]["vanished"].as_array().unwrap().len(), 1);
    // Other features: refused with a clear message.
    std::fs::copy(repo().join("datasets/online_retail_customers.parquet"), p.join("cust.parquet")).unwrap();
    let o = run(&["fit", "cust.parquet", "--k", "3", "--previous", "a.json", "--model", "f.json"], p);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("same features"));
}

#[test]
fn profile_numbers_match_a_direct_computation() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    let data = repo().join("datasets/online_retail_customers.parquet");
    let input = data.to_str().unwrap();
    ok(&run(&["fit", input, "--k", "5", "--log1p", "monetary", "--exclude", "is_uk", "--model", "m.json"], p));
    ok(&run(&["assign", "--model", "m.json", input, "--out", "a.parquet"], p));
    ok(&run(&["profile", "--model", "m.json", input, "--outcomes", "is_uk,country", "--out", "p.json"], p));
    let prof = json(&p.join("p.json"));
    // Independent: read the raw columns and the assignments, group, compute.
    let (x, _) = crate::util::load(&data, &["monetary", "recency_days"], None);
    let f = std::fs::File::open(p.join("a.parquet")).unwrap();
    let mut seg: Vec<u32> = Vec::new();
    for b in parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap() {
        let b = b.unwrap();
        seg.extend(b.column(1).as_any().downcast_ref::<Int32Array>().unwrap().values().iter().map(|v| *v as u32));
    }
    let mut by: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, s) in seg.iter().enumerate() {
        by.entry(*s).or_default().push(i);
    }
    let pop_mean: f64 = (0..x.n()).map(|i| x.row(i)[0] as f64).sum::<f64>() / x.n() as f64;
    let pop_sd = ((0..x.n()).map(|i| (x.row(i)[0] as f64 - pop_mean).powi(2)).sum::<f64>() / x.n() as f64).sqrt();
    for s in prof["segments"].as_array().unwrap() {
        let id = s["id"].as_u64().unwrap() as u32;
        let rows = &by[&id];
        assert_eq!(s["size"].as_u64().unwrap() as usize, rows.len());
        let f = s["features"].as_array().unwrap().iter().find(|f| f["name"] == "monetary").unwrap();
        let mean: f64 = rows.iter().map(|&i| x.row(i)[0] as f64).sum::<f64>() / rows.len() as f64;
        assert!((f["mean"].as_f64().unwrap() - mean).abs() <= 1e-3 * mean.abs().max(1.0), "segment {id} mean");
        let mut v: Vec<f32> = rows.iter().map(|&i| x.row(i)[0]).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        // numpy.median (linear interpolation), written out.
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2] as f64
        } else {
            (v[v.len() / 2 - 1] as f64 + v[v.len() / 2] as f64) / 2.0
        };
        assert!((f["median"].as_f64().unwrap() - median).abs() <= 1e-2 * median.abs().max(1.0), "segment {id} median");
        let sd = f["std_diff"].as_f64().unwrap();
        assert!((sd - (mean - pop_mean) / pop_sd).abs() < 1e-3, "segment {id} standardised difference");
        assert!(!s["name"].as_str().unwrap().is_empty());
        let uk = &s["outcomes"][0];
        assert_eq!(uk["kind"], "numeric");
        assert_eq!(uk["rate"], true);
        let country = &s["outcomes"][1];
        assert_eq!(country["kind"], "categorical");
    }
}

#[test]
fn drift_is_stable_on_training_data_and_flags_a_moved_feature() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    let data = repo().join("datasets/online_retail_customers.parquet");
    ok(&run(&["fit", data.to_str().unwrap(), "--k", "5", "--exclude", "is_uk", "--model", "m.json"], p));
    let o = run(&["drift", "--model", "m.json", data.to_str().unwrap(), "--json"], p);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verdict"], "stable");
    assert!(v["segment_psi"].as_f64().unwrap() < 1e-9);
    // Everyone bought again recently: recency collapses.
    let (x, _) = crate::util::load(&data, &["recency_days"], None);
    let f = std::fs::File::open(&data).unwrap();
    let mut cols: Vec<(String, ArrayRef)> = Vec::new();
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap().with_batch_size(1 << 20);
    for b in reader.build().unwrap() {
        let b = b.unwrap();
        for (i, field) in b.schema().fields().iter().enumerate() {
            let a = if field.name() == "recency_days" {
                Arc::new(Float64Array::from_iter_values((0..x.n()).map(|r| x.row(r)[0] as f64 * 0.2))) as ArrayRef
            } else {
                b.column(i).clone()
            };
            cols.push((field.name().clone(), a));
        }
    }
    write(&p.join("moved.parquet"), cols.iter().map(|(n, a)| (n.as_str(), a.clone())).collect());
    let o = run(&["drift", "--model", "m.json", "moved.parquet", "--out", "r.json", "--json"], p);
    assert_eq!(o.status.code(), Some(11), "{}", String::from_utf8_lossy(&o.stderr));
    let r = json(&p.join("r.json"));
    assert_eq!(r["verdict"], "retrain");
    assert_eq!(r["feature_psi"][0]["feature"], "recency_days");
    // PSI recomputed here from the stored training shares and the new bin counts.
    let m = json(&p.join("m.json"));
    let names: Vec<&str> = m["features"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    let j = names.iter().position(|n| *n == "recency_days").unwrap();
    let h = &m["baseline"]["features"][j];
    let edges: Vec<f64> = h["edges"].as_array().unwrap().iter().map(|e| e.as_f64().unwrap()).collect();
    let shares: Vec<f64> = h["shares"].as_array().unwrap().iter().map(|e| e.as_f64().unwrap()).collect();
    let t = &m["features"][j];
    let (c, s) = (t["center"].as_f64().unwrap(), t["scale"].as_f64().unwrap());
    let mut counts = vec![0f64; shares.len()];
    for r in 0..x.n() {
        let z = (((x.row(r)[0] as f64 * 0.2) as f32 as f64 - c) / s) as f32 as f64;
        counts[edges.iter().filter(|e| **e < z).count()] += 1.0;
    }
    let actual: Vec<f64> = counts.iter().map(|c| c / x.n() as f64).collect();
    let want: f64 = shares
        .iter()
        .zip(&actual)
        .map(|(e, a)| {
            let (e, a) = (e.max(1e-4), a.max(1e-4));
            (a - e) * (a / e).ln()
        })
        .sum();
    let got = r["feature_psi"][0]["psi"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-6 * want, "PSI {got} vs {want}");
    // Thresholds can be set: a lax watch/retrain turns the verdict to stable.
    let o = run(&["drift", "--model", "m.json", "moved.parquet", "--watch", "50", "--retrain", "60"], p);
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn audit_reports_the_four_fifths_rule_from_files() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    let n = 100i64;
    write(
        &p.join("seg.parquet"),
        vec![
            ("subscriber_id", Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef),
            (
                "segment",
                Arc::new(UInt32Array::from_iter_values(
                    (0..n).map(|i| if i < 60 { (i >= 30) as u32 } else { (i >= 70) as u32 }),
                )) as ArrayRef,
            ),
        ],
    );
    write(
        &p.join("people.parquet"),
        vec![
            ("subscriber_id", Arc::new(Int64Array::from_iter_values((0..n).rev())) as ArrayRef),
            (
                "group",
                Arc::new(StringArray::from_iter_values((0..n).rev().map(|i| if i < 60 { "a" } else { "b" })))
                    as ArrayRef,
            ),
        ],
    );
    let o =
        run(&["audit", "--segments", "seg.parquet", "--input", "people.parquet", "--protected", "group", "--json"], p);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = &v["report"]["attributes"][0];
    assert_eq!(r["flags"], 2);
    let b0 = r["segments"][0]["groups"].as_array().unwrap().iter().find(|g| g["group"] == "b").unwrap();
    assert_eq!(b0["disparate_impact"], 0.5);
}

#[test]
fn sensitive_looking_features_need_consent() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    write(
        &p.join("t.parquet"),
        vec![
            ("spend", Arc::new(Float64Array::from_iter_values((0..50).map(|i| i as f64))) as ArrayRef),
            ("gender", Arc::new(Float64Array::from_iter_values((0..50).map(|i| (i % 2) as f64))) as ArrayRef),
        ],
    );
    let o = run(&["fit", "t.parquet", "--k", "2", "--model", "m.json"], p);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("gender"));
    assert!(!p.join("m.json").exists());
    ok(&run(&["fit", "t.parquet", "--k", "2", "--model", "m.json", "--allow-sensitive"], p));
    ok(&run(&["fit", "t.parquet", "--k", "2", "--model", "n.json", "--exclude", "gender"], p));
}

#[test]
fn explanations_and_pseudonymised_ids() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    let data = repo().join("datasets/online_retail_customers.parquet");
    let input = data.to_str().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_microseg"))
        .args([
            "segment",
            input,
            "--k",
            "5",
            "--exclude",
            "is_uk",
            "--explain",
            "--pseudonymize-ids",
            "--out-dir",
            "out",
        ])
        .env("MICROSEG_ID_KEY", "a-test-key-of-some-length")
        .current_dir(p)
        .output()
        .unwrap();
    ok(&o);
    let b = first_batch(&p.join("out/assignments.parquet"));
    let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
    let expl = b.column(4).as_any().downcast_ref::<StringArray>().unwrap();
    // HMAC-SHA-256("a-test-key-of-some-length", "12346"), first 16 bytes, computed independently.
    let want = {
        use hmac::{Hmac, KeyInit, Mac};
        let mut m = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(b"a-test-key-of-some-length").unwrap();
        m.update(b"12346");
        m.finalize().into_bytes()[..16].iter().map(|x| format!("{x:02x}")).collect::<String>()
    };
    assert_eq!(ids.value(0), want, "the first customer is 12346");
    assert!(
        !std::fs::read_to_string(p.join("out/model.json")).unwrap().contains("a-test-key"),
        "the key is never stored"
    );
    let prof = json(&p.join("out/profile.json"));
    let seg = b.column(1).as_any().downcast_ref::<Int32Array>().unwrap();
    for i in 0..20 {
        let name = prof["segments"].as_array().unwrap().iter().find(|s| s["id"] == seg.value(i)).unwrap()["name"]
            .as_str()
            .unwrap()
            .to_string();
        let e = expl.value(i);
        assert!(e.starts_with(&format!("you are in {name}")), "{e}");
        assert!(e.contains(" because your "), "{e}");
    }
    // Without a key: a clear usage error, nothing written.
    let o = Command::new(env!("CARGO_BIN_EXE_microseg"))
        .args(["assign", "--model", "out/model.json", input, "--out", "x.parquet", "--pseudonymize-ids"])
        .env_remove("MICROSEG_ID_KEY")
        .current_dir(p)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("MICROSEG_ID_KEY"));
    assert!(!p.join("x.parquet").exists());
}

#[test]
fn outcome_summaries_rates_means_hours_and_categories() {
    use microseg::segments::profile::{OutcomeSummary, ProfileBuilder};
    let d = TempDir::new().unwrap();
    let p = d.path();
    // Two obvious segments on x; outcomes: churned (0/1), revenue, open_hour, channel.
    let n = 200usize;
    let x: Vec<f64> =
        (0..n).map(|i| if i < 100 { (i % 10) as f64 * 0.01 } else { 10.0 + (i % 10) as f64 * 0.01 }).collect();
    write(&p.join("t.parquet"), vec![("x", Arc::new(Float64Array::from(x.clone())) as ArrayRef)]);
    std::fs::write(p.join("c0.csv"), "0\n10\n").unwrap();
    ok(&run(&["fit", "t.parquet", "--k", "2", "--scale", "none", "--init", "c0.csv", "--model", "m.json"], p));
    let model = microseg::model::Model::load(&p.join("m.json")).unwrap();
    let mut b =
        ProfileBuilder::new(&model, &["churned".into(), "revenue".into(), "open_hour".into(), "channel".into()]);
    let raw: Vec<f32> = x.iter().map(|v| *v as f32).collect();
    let labels: Vec<u32> = (0..n).map(|i| (i >= 100) as u32).collect();
    let churned = Arc::new(Int64Array::from_iter_values((0..n).map(|i| (i % 4 == 0) as i64))) as ArrayRef;
    let revenue = Arc::new(Float64Array::from_iter_values((0..n).map(|i| i as f64))) as ArrayRef;
    let hour =
        Arc::new(Int64Array::from_iter_values((0..n).map(|i| if i < 100 { 9 + (i % 3 == 0) as i64 } else { 20 })))
            as ArrayRef;
    let channel =
        Arc::new(StringArray::from_iter_values((0..n).map(|i| if i % 5 == 0 { "sms" } else { "email" }))) as ArrayRef;
    b.add(&raw, &labels, &[churned, revenue, hour, channel]).unwrap();
    let prof = b.finish();
    let s0 = &prof.segments[0];
    match &s0.outcomes[0] {
        OutcomeSummary::Numeric { mean, rate, count, .. } => assert_eq!((*mean, *rate, *count), (0.25, true, 100)),
        o => panic!("{o:?}"),
    }
    match &s0.outcomes[1] {
        OutcomeSummary::Numeric { mean, rate, .. } => assert_eq!((*mean, *rate), (49.5, false)),
        o => panic!("{o:?}"),
    }
    match (&s0.outcomes[2], &prof.segments[1].outcomes[2]) {
        (
            OutcomeSummary::Hour { best_hour: h0, best_hour_share: s, .. },
            OutcomeSummary::Hour { best_hour: h1, .. },
        ) => {
            assert_eq!((*h0, *h1), (9, 20));
            assert!((s - 0.66).abs() < 1e-12, "{s}");
        }
        o => panic!("{o:?}"),
    }
    match &s0.outcomes[3] {
        OutcomeSummary::Categorical { top, .. } => {
            assert_eq!(top, &vec![("email".to_string(), 0.8), ("sms".to_string(), 0.2)])
        }
        o => panic!("{o:?}"),
    }
}

#[test]
fn look_alikes_by_seed_ids_exclude_the_seeds_and_score_exactly() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    let (m, _) = crate::util::load(
        &repo().join("datasets/online_retail_descriptions_minilm_l6_v2.parquet"),
        &["embedding"],
        None,
    );
    let n = 1500usize;
    let dim = m.dim;
    let emb = arrow::array::FixedSizeListArray::try_new(
        Arc::new(Field::new("item", arrow::datatypes::DataType::Float32, true)),
        dim as i32,
        Arc::new(arrow::array::Float32Array::from(m.data[..n * dim].to_vec())),
        None,
    )
    .unwrap();
    write(
        &p.join("people.parquet"),
        vec![
            ("subscriber_id", Arc::new(Int64Array::from_iter_values(0..n as i64)) as ArrayRef),
            ("emb", Arc::new(emb) as ArrayRef),
        ],
    );
    std::fs::write(p.join("seeds.txt"), "5\n77\n300\n").unwrap();
    let cos = |a: &[f32], b: &[f32]| {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let na = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let nb = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        dot * (1.0 / na) * (1.0 / nb)
    };
    for mode in ["max", "mean"] {
        let out = format!("{mode}.parquet");
        ok(&run(
            &[
                "similar",
                "--input",
                "people.parquet",
                "--embedding",
                "emb",
                "--seed-ids",
                "seeds.txt",
                "--top",
                "25",
                "--mode",
                mode,
                "--out",
                &out,
            ],
            p,
        ));
        let b = first_batch(&p.join(&out));
        // The id column keeps its type (int64 here), so the output joins back to the input.
        let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(b.column(1).data_type(), &arrow::datatypes::DataType::Int32);
        let scores = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(b.num_rows(), 25);
        // Independent: score every non-seed row, take the 25 best (ties to the lower row).
        let seeds = [5usize, 77, 300];
        let mut all: Vec<(f64, usize)> = (0..n)
            .filter(|i| !seeds.contains(i))
            .map(|i| {
                let s: Vec<f64> = seeds.iter().map(|&j| cos(m.row(i), m.row(j))).collect();
                let v = if mode == "max" {
                    s.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
                } else {
                    s.iter().sum::<f64>() / 3.0
                };
                (v, i)
            })
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for r in 0..25 {
            assert_eq!(ids.value(r).to_string(), all[r].1.to_string(), "{mode} rank {r}");
            assert!((scores.value(r) - all[r].0).abs() < 1e-9, "{mode} rank {r}: {} vs {}", scores.value(r), all[r].0);
        }
    }
}

/// `--backend auto` follows the file gpu-check writes (MICROSEG_AUTO_FILE) where it
/// names the adapter auto would use: here the CPU for k-means and the GPU (lavapipe in
/// CI) for top-k, then the reverse; another adapter's file leaves the default rule
/// (GPU for k-means, CPU for top-k) with a notice; a file that is not one exits 2.
#[test]
fn auto_follows_the_measured_file_for_this_adapter() {
    let d = crate::util::fitted(2000, "3");
    let p = d.path();
    // Not a measurement: exit 2, the file named, nothing written (with or without an
    // adapter); an empty value is no file.
    std::fs::write(p.join("bad.json"), "{\"adapter\": 3}").unwrap();
    for (f, code) in [("bad.json", 2), ("missing.json", 2), ("", 0)] {
        let o = crate::util::bin()
            .args(["fit", "in.parquet", "--k", "3", "--model", "m_bad.json", "--backend", "auto", "--quiet"])
            .env(microseg::cli::AUTO_FILE_ENV, f)
            .current_dir(p)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(code), "{f:?}: {}", String::from_utf8_lossy(&o.stderr));
        if code == 2 {
            assert!(String::from_utf8_lossy(&o.stderr).contains(f), "names {f}");
        }
        assert_eq!(p.join("m_bad.json").exists(), code == 0);
    }
    let Some(adapter) = microseg::backend::wgpu::pick_adapter(true) else {
        assert!(
            std::env::var_os("MICROSEG_REQUIRE_GPU_TESTS").is_none(),
            "no wgpu adapter but MICROSEG_REQUIRE_GPU_TESTS is set"
        );
        return;
    };
    let (m, _) = crate::util::load(
        &repo().join("datasets/online_retail_descriptions_minilm_l6_v2.parquet"),
        &["embedding"],
        None,
    );
    let emb = |rows: std::ops::Range<usize>| -> ArrayRef {
        let v: Vec<f32> = rows.flat_map(|r| m.row(r).to_vec()).collect();
        Arc::new(
            arrow::array::FixedSizeListArray::try_new(
                Arc::new(Field::new("item", arrow::datatypes::DataType::Float32, true)),
                m.dim as i32,
                Arc::new(arrow::array::Float32Array::from(v)),
                None,
            )
            .unwrap(),
        )
    };
    write(&p.join("base.parquet"), vec![("emb", emb(0..300))]);
    write(&p.join("q.parquet"), vec![("emb", emb(300..305))]);
    let backends = |file: Option<&str>, tag: &str| -> (String, String, String) {
        let with = |args: &[&str]| {
            let mut c = crate::util::bin();
            c.args(args).arg("--allow-software-gpu").arg("--json").current_dir(p);
            match file {
                Some(f) => c.env(microseg::cli::AUTO_FILE_ENV, f),
                None => c.env_remove(microseg::cli::AUTO_FILE_ENV),
            };
            c.output().unwrap()
        };
        let model = format!("m_{tag}.json");
        let fit = with(&["fit", "in.parquet", "--k", "3", "--model", &model]);
        ok(&fit);
        let out = format!("n_{tag}.parquet");
        let nb = with(&[
            "neighbors",
            "--base",
            "base.parquet",
            "--queries",
            "q.parquet",
            "--embedding",
            "emb",
            "--k",
            "3",
            "--out",
            &out,
        ]);
        ok(&nb);
        let b = |o: &std::process::Output| {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            v["backend"].as_str().unwrap_or("?").to_string()
        };
        (b(&fit), b(&nb), String::from_utf8_lossy(&nb.stderr).into_owned())
    };
    let file = |name: &str, adapter: &str, kmeans: &str, similarity: &str| {
        let f = p.join(name);
        std::fs::write(
            &f,
            serde_json::json!({"adapter": adapter, "kmeans": kmeans, "similarity": similarity}).to_string(),
        )
        .unwrap();
        f.to_str().unwrap().to_string()
    };
    let (fit, nb, _) = backends(None, "none");
    assert_eq!((fit.as_str(), nb.as_str()), ("wgpu", "cpu"), "the default rule");
    let f = file("a.json", &adapter.name, "cpu", "gpu");
    let (fit, nb, _) = backends(Some(&f), "a");
    assert_eq!((fit.as_str(), nb.as_str()), ("cpu", "gpu"), "measured: cpu for k-means, gpu for top-k");
    let f = file("b.json", &adapter.name, "gpu", "cpu");
    let (fit, nb, _) = backends(Some(&f), "b");
    assert_eq!((fit.as_str(), nb.as_str()), ("wgpu", "cpu"), "measured: gpu for k-means, cpu for top-k");
    let f = file("c.json", "Some Other GPU", "cpu", "gpu");
    let (fit, nb, err) = backends(Some(&f), "c");
    assert_eq!((fit.as_str(), nb.as_str()), ("wgpu", "cpu"), "another adapter's measurement: the default rule");
    assert!(err.contains("Some Other GPU"), "said on stderr: {err}");
}

/// `bench --topk` (what scripts/gpu-check.sh times): each backend's lists are the
/// CPU's, and the report says so; on the GPU (lavapipe in CI) with 1 and 4 slices too.
#[test]
fn bench_topk_times_both_backends_and_compares_their_lists() {
    let gpu_present = microseg::backend::wgpu::WgpuBackend::open(true).ok().flatten().is_some();
    assert!(
        gpu_present || std::env::var_os("MICROSEG_REQUIRE_GPU_TESTS").is_none(),
        "no wgpu adapter but MICROSEG_REQUIRE_GPU_TESTS is set"
    );
    let d = tempfile::tempdir().unwrap();
    for slices in [None, Some("1"), Some("4")] {
        let mut cmd = crate::util::bin();
        cmd.args([
            "bench",
            "--topk",
            "70",
            "--rows",
            "3000",
            "--dims",
            "24",
            "--k",
            "7",
            "--iters",
            "1",
            "--backends",
            "cpu,gpu",
            "--allow-software-gpu",
            "--json",
        ])
        .current_dir(d.path());
        if let Some(s) = slices {
            cmd.env(microseg::backend::wgpu::TOPK_SLICES_ENV, s);
        }
        let o = cmd.output().unwrap();
        ok(&o);
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!((r["mode"].as_str(), r["n"].as_u64(), r["queries"].as_u64()), (Some("topk"), Some(3000), Some(70)));
        let res = r["results"].as_array().unwrap();
        assert_eq!(res.len(), if gpu_present { 2 } else { 1 }, "{r}");
        for b in res {
            assert_eq!(b["lists_identical_to_cpu"], serde_json::json!(true), "{b}");
            assert!(b["seconds"].as_f64().unwrap() > 0.0 && b["queries_per_second"].as_f64().unwrap() > 0.0, "{b}");
        }
    }
}

/// `neighbors` end to end on the shipped embeddings, on the CPU and (where an adapter
/// exists: lavapipe in CI) the GPU: the same ordered lists as a float64 brute force, ids
/// from the id column, ranks from 1; `similar --backend gpu` writes the CPU's file.
#[test]
fn neighbors_and_look_alikes_match_a_float64_brute_force_on_both_backends() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    let data = repo().join("datasets/online_retail_descriptions_minilm_l6_v2.parquet");
    let (m, _) = crate::util::load(&data, &["embedding"], None);
    let (n, dim) = (m.n(), m.dim);
    let qrows: Vec<usize> = (0..30).map(|i| i * 139 + 3).collect();
    let emb = |rows: &[usize]| -> ArrayRef {
        let v: Vec<f32> = rows.iter().flat_map(|&r| m.row(r).to_vec()).collect();
        Arc::new(
            arrow::array::FixedSizeListArray::try_new(
                Arc::new(Field::new("item", arrow::datatypes::DataType::Float32, true)),
                dim as i32,
                Arc::new(arrow::array::Float32Array::from(v)),
                None,
            )
            .unwrap(),
        )
    };
    let ids =
        |rows: &[usize]| -> ArrayRef { Arc::new(Int64Array::from_iter_values(rows.iter().map(|&r| 1000 + r as i64))) };
    let all: Vec<usize> = (0..n).collect();
    write(&p.join("base.parquet"), vec![("subscriber_id", ids(&all)), ("emb", emb(&all))]);
    write(&p.join("q.parquet"), vec![("subscriber_id", ids(&qrows)), ("emb", emb(&qrows))]);
    let k = 12;
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let gpu_present = microseg::backend::wgpu::WgpuBackend::open(true).ok().flatten().is_some();
    if !gpu_present && std::env::var_os("MICROSEG_REQUIRE_GPU_TESTS").is_some() {
        panic!("no wgpu adapter but MICROSEG_REQUIRE_GPU_TESTS is set");
    }
    for metric in ["cosine", "ip"] {
        let want: Vec<Vec<(usize, f64)>> = qrows
            .iter()
            .map(|&qi| {
                let q = m.row(qi);
                let mut s: Vec<(usize, f64)> = (0..n)
                    .map(|j| {
                        let dot: f64 = q.iter().zip(m.row(j)).map(|(a, b)| *a as f64 * *b as f64).sum();
                        (j, if metric == "cosine" { dot * (1.0 / norm(q)) * (1.0 / norm(m.row(j))) } else { dot })
                    })
                    .collect();
                s.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                s.truncate(k);
                s
            })
            .collect();
        // On the GPU also with the base of each dispatch in 1 and in 5 slices (lists per
        // query merged on the host): the same lists.
        let backends: &[(&str, Option<&str>)] = if gpu_present {
            &[("cpu", None), ("gpu", None), ("gpu", Some("1")), ("gpu", Some("5"))]
        } else {
            &[("cpu", None)]
        };
        for &(backend, slices) in backends {
            let out = format!("n_{metric}_{backend}_{}.parquet", slices.unwrap_or("auto"));
            let ks = k.to_string();
            let mut cmd = crate::util::bin();
            cmd.args([
                "neighbors",
                "--base",
                "base.parquet",
                "--queries",
                "q.parquet",
                "--embedding",
                "emb",
                "--k",
                &ks,
                "--metric",
                metric,
                "--backend",
                backend,
                "--allow-software-gpu",
                "--out",
                &out,
            ])
            .current_dir(p);
            if let Some(s) = slices {
                cmd.env(microseg::backend::wgpu::TOPK_SLICES_ENV, s);
            }
            ok(&cmd.output().unwrap());
            let b = first_batch(&p.join(&out));
            assert_eq!(b.num_rows(), qrows.len() * k);
            let col = |i: usize| b.column(i).clone();
            let (qc, rc, nc, sc) = (col(0), col(1), col(2), col(3));
            let qc = qc.as_any().downcast_ref::<Int64Array>().unwrap();
            let rc = rc.as_any().downcast_ref::<Int32Array>().unwrap();
            let nc = nc.as_any().downcast_ref::<Int64Array>().unwrap();
            let sc = sc.as_any().downcast_ref::<Float64Array>().unwrap();
            for (i, (&qi, w)) in qrows.iter().zip(&want).enumerate() {
                for (r, &(j, s)) in w.iter().enumerate() {
                    let row = i * k + r;
                    assert_eq!(qc.value(row), 1000 + qi as i64);
                    assert_eq!(rc.value(row) as usize, r + 1);
                    assert_eq!(nc.value(row), 1000 + j as i64, "{backend} {metric} query {qi} rank {r}");
                    assert!((sc.value(row) - s).abs() <= 1e-12 * s.abs().max(1.0), "{backend} {metric}");
                }
            }
        }
    }
    // Look-alikes (mode max) on the GPU: byte-identical to the CPU's output.
    if gpu_present {
        for backend in ["cpu", "gpu"] {
            ok(&run(
                &[
                    "similar",
                    "--input",
                    "base.parquet",
                    "--embedding",
                    "emb",
                    "--seeds",
                    "q.parquet",
                    "--top",
                    "40",
                    "--backend",
                    backend,
                    "--allow-software-gpu",
                    "--out",
                    &format!("s_{backend}.parquet"),
                ],
                p,
            ));
        }
        assert_eq!(std::fs::read(p.join("s_cpu.parquet")).unwrap(), std::fs::read(p.join("s_gpu.parquet")).unwrap());
    }
}

/// `segment` without explanations reads its input twice (the fit, then one pass that
/// both assigns and profiles); what it writes equals `profile` and `assign` run on
/// their own with its model, and with `--explain` (a pass of its own for the profile)
/// the profile is the same too.
#[test]
fn segment_profiles_and_assigns_in_one_pass_with_the_same_results() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    let input = repo().join("datasets/online_retail_customers.parquet");
    let input = input.to_str().unwrap();
    let fit = ["--k", "6", "--log1p", "monetary,frequency", "--seed", "2"];
    for (dir, explain) in [("one", false), ("two", true)] {
        let mut args = vec!["segment", input];
        args.extend(fit);
        args.extend(["--outcomes", "country", "--out-dir", dir, "--quiet"]);
        if explain {
            args.push("--explain");
        }
        ok(&run(&args, p));
    }
    let model = p.join("one/model.json");
    let model = model.to_str().unwrap();
    ok(&run(&["profile", "--model", model, input, "--outcomes", "country", "--out", "p.json", "--quiet"], p));
    ok(&run(&["assign", "--model", model, input, "--out", "a.parquet", "--quiet"], p));
    assert_eq!(std::fs::read(p.join("one/model.json")).unwrap(), std::fs::read(p.join("two/model.json")).unwrap());
    let profile = std::fs::read(p.join("p.json")).unwrap();
    assert!(std::fs::read(p.join("one/profile.json")).unwrap() == profile, "one-pass profile differs from `profile`");
    assert!(std::fs::read(p.join("two/profile.json")).unwrap() == profile, "profile with --explain differs");
    let (a, b) = (all_rows(&p.join("one/assignments.parquet")), all_rows(&p.join("a.parquet")));
    assert_eq!(a.num_rows(), 4372);
    assert_eq!(a.columns(), b.columns(), "one-pass assignments differ from `assign`");
}
