//! The command line as batch jobs see it: the main job end to end, the JSON summary,
//! exit codes, and one test per kind of bad input (clear message, non-zero exit, no
//! output left behind).

use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Float64Array, Int64Array};
use arrow::datatypes::DataType;
use tempfile::TempDir;

use crate::util::{assert_fails, listing, repo, run, stderr, table, write_parquet};

#[test]
fn main_job_on_the_shipped_data_set() {
    let d = TempDir::new().unwrap();
    let input = repo().join("datasets/online_retail_customers.parquet");
    let o = run(
        &[
            "segment",
            input.to_str().unwrap(),
            "--k",
            "6",
            "--log1p",
            "monetary,frequency",
            "--out-dir",
            "out",
            "--json",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        listing(&d.path().join("out")),
        vec!["assignments.parquet", "model.json", "profile.json", "report.html"]
    );
    let s = String::from_utf8(o.stdout).unwrap();
    assert_eq!(s.lines().count(), 1, "one JSON line on stdout");
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    for key in ["n_rows", "k", "iterations", "inertia", "fit_seconds", "seconds_per_iteration", "backend"] {
        assert!(v.get(key).is_some(), "summary lacks {key}: {s}");
    }
    assert_eq!(v["n_rows"], 4372);
    assert_eq!(v["assigned_rows"], 4372);
    // The assignments: id unchanged, segment < k, distance ≥ 0, margin ≥ 0.
    let f = std::fs::File::open(d.path().join("out/assignments.parquet")).unwrap();
    let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap();
    let mut rows = 0;
    for b in r {
        let b = b.unwrap();
        let names: Vec<String> = b.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, vec!["subscriber_id", "segment", "distance", "margin"]);
        assert_eq!(
            b.column(1).data_type(),
            &DataType::Int32,
            "segment ids are int32: no unsigned types for warehouses"
        );
        assert_eq!(b.column(2).data_type(), &DataType::Float32);
        let seg = b.column(1).as_any().downcast_ref::<arrow::array::Int32Array>().unwrap();
        assert!(seg.values().iter().all(|s| *s < 6));
        let dist = b.column(2).as_any().downcast_ref::<Float32Array>().unwrap();
        let margin = b.column(3).as_any().downcast_ref::<Float32Array>().unwrap();
        assert!(dist.values().iter().all(|v| *v >= 0.0) && margin.values().iter().all(|v| *v >= 0.0));
        rows += b.num_rows();
    }
    assert_eq!(rows, 4372);
}

#[test]
fn fit_then_assign_round_trip_is_deterministic() {
    let d = TempDir::new().unwrap();
    table(d.path(), "t.parquet", 500);
    for m in ["a.json", "b.json"] {
        let o = run(&["fit", "t.parquet", "--k", "3", "--model", m], d.path());
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(
        std::fs::read(d.path().join("a.json")).unwrap(),
        std::fs::read(d.path().join("b.json")).unwrap(),
        "a rerun must give the same model bytes"
    );
    let model: serde_json::Value = serde_json::from_slice(&std::fs::read(d.path().join("a.json")).unwrap()).unwrap();
    assert_eq!(model["format"], "microseg-model");
    assert_eq!(model["feature_columns"].as_array().unwrap().len(), 2, "the id and the string column are not features");
    assert_eq!(model["manifest"]["seed"], 0);
    let o = run(&["assign", "--model", "a.json", "t.parquet", "--out", "a.parquet", "--json"], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["n_rows"], 500);
}

#[test]
fn generate_writes_a_table_fit_can_use() {
    let d = TempDir::new().unwrap();
    let o = run(
        &[
            "generate",
            "--rows",
            "5000",
            "--dims",
            "24",
            "--clusters",
            "5",
            "--row-group-rows",
            "1000",
            "--out",
            "g.parquet",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["fit", "g.parquet", "--k", "5", "--model", "m.json", "--json"], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let model: serde_json::Value = serde_json::from_slice(&std::fs::read(d.path().join("m.json")).unwrap()).unwrap();
    let cols: Vec<&str> =
        model["feature_columns"].as_array().unwrap().iter().map(|c| c["column"].as_str().unwrap()).collect();
    assert_eq!(cols.len(), 24);
    assert!(!cols.contains(&"true_segment"), "the ground truth must never be a default feature");
    assert!(cols.contains(&"monetary") && cols.contains(&"open_rate"));
}

#[test]
fn missing_column() {
    let d = TempDir::new().unwrap();
    table(d.path(), "t.parquet", 50);
    let o = run(&["fit", "t.parquet", "--k", "2", "--features", "spend,nope", "--model", "m.json"], d.path());
    assert_fails(&o, 3, &["t.parquet", "no column 'nope'", "spend"], d.path(), &["t.parquet"]);
}

#[test]
fn wrong_type() {
    let d = TempDir::new().unwrap();
    table(d.path(), "t.parquet", 50);
    let o = run(&["fit", "t.parquet", "--k", "2", "--features", "spend,channel", "--model", "m.json"], d.path());
    assert_fails(&o, 3, &["t.parquet", "'channel'", "Utf8", "cannot be a feature"], d.path(), &["t.parquet"]);
}

fn bad_values(vals: Vec<Option<f64>>) -> (TempDir, usize) {
    let d = TempDir::new().unwrap();
    let n = vals.len();
    write_parquet(
        &d.path().join("t.parquet"),
        vec![
            ("subscriber_id", Arc::new(Int64Array::from_iter_values(0..n as i64)) as ArrayRef),
            ("spend", Arc::new(Float64Array::from(vals)) as ArrayRef),
            ("visits", Arc::new(Float32Array::from_iter_values((0..n).map(|i| i as f32))) as ArrayRef),
        ],
    );
    (d, n)
}

#[test]
fn nulls_nan_and_inf_are_refused_by_default() {
    for (what, bad) in
        [("null", None), ("NaN", Some(f64::NAN)), ("inf", Some(f64::INFINITY)), ("-inf", Some(f64::NEG_INFINITY))]
    {
        let mut vals: Vec<Option<f64>> = (0..40).map(|i| Some(i as f64)).collect();
        vals[3] = bad;
        vals[17] = bad;
        let (d, _) = bad_values(vals);
        let o = run(&["fit", "t.parquet", "--k", "2", "--model", "m.json"], d.path());
        assert_fails(
            &o,
            3,
            &["t.parquet", "column 'spend' has 2 of 40 rows", "--missing drop"],
            d.path(),
            &["t.parquet"],
        );
        eprintln!("{what}: ok");
    }
}

#[test]
fn missing_values_can_be_dropped_or_imputed() {
    let mut vals: Vec<Option<f64>> = (0..40).map(|i| Some((i % 4) as f64)).collect();
    vals[5] = None;
    vals[6] = Some(f64::NAN);
    let (d, _) = bad_values(vals);
    let o = run(&["fit", "t.parquet", "--k", "2", "--missing", "drop", "--model", "drop.json", "--json"], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["n_rows"].as_u64(), v["rows_dropped"].as_u64()), (Some(38), Some(2)));
    let o = run(&["assign", "--model", "drop.json", "t.parquet", "--out", "a.parquet", "--json"], d.path());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["n_rows"].as_u64(), v["rows_dropped"].as_u64()), (Some(38), Some(2)));
    let o = run(&["fit", "t.parquet", "--k", "2", "--missing", "mean", "--model", "mean.json", "--json"], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let model: serde_json::Value = serde_json::from_slice(&std::fs::read(d.path().join("mean.json")).unwrap()).unwrap();
    // Mean of the 38 finite values of i % 4 (i ≠ 5, 6): (60 − 1 − 2) / 38.
    let imp = model["features"][0]["impute"].as_f64().unwrap();
    assert!((imp - 57.0 / 38.0).abs() < 1e-6, "impute {imp}");
}

#[test]
fn empty_file() {
    let d = TempDir::new().unwrap();
    std::fs::write(d.path().join("zero.parquet"), b"").unwrap();
    let o = run(&["fit", "zero.parquet", "--k", "2", "--model", "m.json"], d.path());
    assert_fails(&o, 3, &["zero.parquet", "empty"], d.path(), &["zero.parquet"]);
    // A valid Parquet file with no rows.
    write_parquet(
        &d.path().join("norows.parquet"),
        vec![("spend", Arc::new(Float64Array::from(Vec::<f64>::new())) as ArrayRef)],
    );
    let o = run(&["fit", "norows.parquet", "--k", "2", "--model", "m.json"], d.path());
    assert_fails(&o, 3, &["norows.parquet", "no rows"], d.path(), &["norows.parquet", "zero.parquet"]);
}

#[test]
fn k_larger_than_rows() {
    let d = TempDir::new().unwrap();
    table(d.path(), "t.parquet", 5);
    let o = run(&["fit", "t.parquet", "--k", "6", "--model", "m.json"], d.path());
    assert_fails(&o, 3, &["--k 6", "5 usable rows"], d.path(), &["t.parquet"]);
}

#[test]
fn corrupt_file() {
    let d = TempDir::new().unwrap();
    let good = table(d.path(), "good.parquet", 100);
    let mut bytes = std::fs::read(&good).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(d.path().join("bad.parquet"), &bytes).unwrap();
    std::fs::write(d.path().join("text.parquet"), b"id,spend\n1,2\n").unwrap();
    for f in ["bad.parquet", "text.parquet"] {
        let o = run(&["fit", f, "--k", "2", "--model", "m.json"], d.path());
        assert_fails(
            &o,
            3,
            &[f, "not a readable Parquet file"],
            d.path(),
            &["bad.parquet", "good.parquet", "text.parquet"],
        );
    }
}

#[test]
fn unwritable_output() {
    let d = TempDir::new().unwrap();
    table(d.path(), "t.parquet", 50);
    let o = run(&["fit", "t.parquet", "--k", "2", "--model", "no/such/dir/m.json"], d.path());
    assert_fails(&o, 4, &["no/such/dir/m.json", "does not exist"], d.path(), &["t.parquet"]);
    let ro = d.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let mut perm = std::fs::metadata(&ro).unwrap().permissions();
    use std::os::unix::fs::PermissionsExt;
    perm.set_mode(0o555);
    std::fs::set_permissions(&ro, perm).unwrap();
    // Root ignores directory permissions; only check when they hold.
    if std::fs::write(ro.join("probe"), b"x").is_err() {
        let o = run(&["assign", "--model", "x.json", "t.parquet", "--out", "ro/a.parquet"], d.path());
        assert_eq!(o.status.code(), Some(3), "the missing model is reported first: {}", stderr(&o));
        let o = run(&["fit", "t.parquet", "--k", "2", "--model", "ro/m.json"], d.path());
        assert_fails(&o, 4, &["ro/m.json", "cannot write"], d.path(), &["ro", "t.parquet"]);
    } else {
        let _ = std::fs::remove_file(ro.join("probe"));
    }
}

#[test]
fn existing_output_is_never_overwritten_without_force() {
    let d = TempDir::new().unwrap();
    table(d.path(), "t.parquet", 50);
    std::fs::write(d.path().join("m.json"), b"precious").unwrap();
    let o = run(&["fit", "t.parquet", "--k", "2", "--model", "m.json"], d.path());
    assert_fails(&o, 2, &["m.json", "already exists", "--force"], d.path(), &["m.json", "t.parquet"]);
    assert_eq!(std::fs::read(d.path().join("m.json")).unwrap(), b"precious");
    // The input itself is an existing file too.
    let o = run(&["generate", "--rows", "10", "--dims", "2", "--clusters", "2", "--out", "t.parquet"], d.path());
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["fit", "t.parquet", "--k", "2", "--model", "m.json", "--force"], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(std::fs::read(d.path().join("m.json")).unwrap(), b"precious");
}

#[test]
fn a_failed_segment_leaves_no_directory() {
    let d = TempDir::new().unwrap();
    table(d.path(), "t.parquet", 4);
    let o = run(&["segment", "t.parquet", "--k", "9", "--out-dir", "out"], d.path());
    assert_fails(&o, 3, &["--k 9"], d.path(), &["t.parquet"]);
}

#[test]
fn assign_checks_the_input_against_the_model() {
    let d = TempDir::new().unwrap();
    table(d.path(), "t.parquet", 60);
    assert!(run(&["fit", "t.parquet", "--k", "2", "--model", "m.json"], d.path()).status.success());
    write_parquet(
        &d.path().join("other.parquet"),
        vec![("spend", Arc::new(Float64Array::from(vec![1.0, 2.0])) as ArrayRef)],
    );
    let o = run(&["assign", "--model", "m.json", "other.parquet", "--out", "a.parquet"], d.path());
    assert_fails(&o, 3, &["other.parquet", "'visits'", "missing"], d.path(), &["m.json", "other.parquet", "t.parquet"]);
    std::fs::write(d.path().join("bad.json"), b"{\"format\": 1}").unwrap();
    let o = run(&["assign", "--model", "bad.json", "t.parquet", "--out", "a.parquet"], d.path());
    assert_fails(
        &o,
        3,
        &["bad.json", "not a microseg model"],
        d.path(),
        &["bad.json", "m.json", "other.parquet", "t.parquet"],
    );
}

#[test]
fn usage_errors_exit_2() {
    let d = TempDir::new().unwrap();
    let o = run(&["fit", "--k", "2"], d.path());
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["fit", "x.parquet", "--k", "2", "--model", "m.json", "--scale", "weird"], d.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("weird"));
}

#[test]
fn every_numeric_type_and_embeddings_become_features() {
    use arrow::array::{BooleanArray, Decimal128Array, FixedSizeListArray, Int16Array, UInt8Array};
    use arrow::datatypes::Float32Type;
    let d = TempDir::new().unwrap();
    let n = 60usize;
    let emb = FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
        (0..n).map(|i| Some(vec![Some(i as f32), Some((i % 5) as f32), Some(1.0)])),
        3,
    );
    write_parquet(
        &d.path().join("t.parquet"),
        vec![
            ("subscriber_id", Arc::new(Int64Array::from_iter_values(0..n as i64)) as ArrayRef),
            ("small", Arc::new(UInt8Array::from_iter_values((0..n).map(|i| (i % 7) as u8))) as ArrayRef),
            ("signed", Arc::new(Int16Array::from_iter_values((0..n).map(|i| i as i16 - 30))) as ArrayRef),
            ("flag", Arc::new(BooleanArray::from_iter((0..n).map(|i| Some(i % 2 == 0)))) as ArrayRef),
            (
                "price",
                Arc::new(
                    Decimal128Array::from_iter_values((0..n).map(|i| i as i128 * 125))
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ) as ArrayRef,
            ),
            ("emb", Arc::new(emb) as ArrayRef),
        ],
    );
    let o = run(&["fit", "t.parquet", "--k", "3", "--scale", "none", "--model", "m.json"], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let model: serde_json::Value = serde_json::from_slice(&std::fs::read(d.path().join("m.json")).unwrap()).unwrap();
    let names: Vec<&str> = model["features"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["small", "signed", "flag", "price", "emb[0]", "emb[1]", "emb[2]"]);
    // Decimal 1.25 per row: the centroids' mean price must be in that scale (0 .. 73.75).
    for s in model["segments"].as_array().unwrap() {
        let price = s["centroid_original"][3].as_f64().unwrap();
        assert!((0.0..=73.75).contains(&price), "price {price}");
        let flag = s["centroid_original"][2].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&flag), "flag {flag}");
    }
}

#[test]
fn several_files_and_a_directory_read_as_one_table() {
    let d = TempDir::new().unwrap();
    std::fs::create_dir(d.path().join("parts")).unwrap();
    table(&d.path().join("parts"), "a.parquet", 100);
    table(&d.path().join("parts"), "b.parquet", 50);
    // Both parts number their rows from 0: the ids repeat across the files.
    let o = run(&["fit", "parts", "--k", "2", "--model", "dir.json", "--json", "--allow-duplicate-ids"], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["n_rows"], 150);
    let o = run(
        &["fit", "parts/a.parquet", "parts/b.parquet", "--k", "2", "--model", "files.json", "--allow-duplicate-ids"],
        d.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let a: serde_json::Value = serde_json::from_slice(&std::fs::read(d.path().join("dir.json")).unwrap()).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&std::fs::read(d.path().join("files.json")).unwrap()).unwrap();
    assert_eq!(a["segments"], b["segments"], "a directory is its sorted files");
    // The fingerprint is of the rows, not of the files: the two models are the same bytes.
    assert_eq!(
        std::fs::read(d.path().join("dir.json")).unwrap(),
        std::fs::read(d.path().join("files.json")).unwrap(),
        "the same rows make the same model file"
    );
    // A file with another schema is refused, naming it and the column.
    write_parquet(
        &d.path().join("parts/c.parquet"),
        vec![("spend", Arc::new(Float32Array::from(vec![1.0f32])) as ArrayRef)],
    );
    let o = run(&["fit", "parts", "--k", "2", "--model", "bad.json"], d.path());
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("c.parquet") && stderr(&o).contains("subscriber_id"), "{}", stderr(&o));
}

#[test]
fn initial_centroids_from_csv_or_parquet() {
    let d = TempDir::new().unwrap();
    table(d.path(), "t.parquet", 200);
    std::fs::write(d.path().join("c0.csv"), "0,0\n60,2\n").unwrap();
    let o =
        run(&["fit", "t.parquet", "--k", "2", "--scale", "none", "--init", "c0.csv", "--model", "csv.json"], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    write_parquet(
        &d.path().join("c0.parquet"),
        vec![
            ("a", Arc::new(Float64Array::from(vec![0.0, 60.0])) as ArrayRef),
            ("b", Arc::new(Float64Array::from(vec![0.0, 2.0])) as ArrayRef),
        ],
    );
    let o = run(
        &["fit", "t.parquet", "--k", "2", "--scale", "none", "--init", "c0.parquet", "--model", "pq.json"],
        d.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let a: serde_json::Value = serde_json::from_slice(&std::fs::read(d.path().join("csv.json")).unwrap()).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&std::fs::read(d.path().join("pq.json")).unwrap()).unwrap();
    assert_eq!(a["segments"], b["segments"]);
    assert_eq!(a["manifest"]["init"], "given");
    // Wrong width, wrong count, not numbers.
    std::fs::write(d.path().join("w.csv"), "0,0,0\n1,1,1\n").unwrap();
    std::fs::write(d.path().join("n.csv"), "0,0\n1,1\n2,2\n").unwrap();
    std::fs::write(d.path().join("x.csv"), "0,zero\n1,1\n").unwrap();
    for (f, needle) in [("w.csv", "3 values"), ("n.csv", "3 rows but --k is 2"), ("x.csv", "line 1")] {
        let o = run(&["fit", "t.parquet", "--k", "2", "--init", f, "--model", "e.json"], d.path());
        assert_eq!(o.status.code(), Some(3), "{f}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{f}: {}", stderr(&o));
        assert!(!d.path().join("e.json").exists());
    }
}

#[test]
fn sample_weights_from_a_column() {
    let d = TempDir::new().unwrap();
    let p = d.path().join("w.parquet");
    write_parquet(
        &p,
        vec![
            ("x", Arc::new(Float64Array::from(vec![0.0, 4.0, 100.0])) as ArrayRef),
            ("w", Arc::new(Float64Array::from(vec![3.0, 1.0, 2.0])) as ArrayRef),
        ],
    );
    std::fs::write(d.path().join("c0.csv"), "0\n100\n").unwrap();
    let o = run(
        &[
            "fit",
            "w.parquet",
            "--k",
            "2",
            "--scale",
            "none",
            "--weight-col",
            "w",
            "--init",
            "c0.csv",
            "--model",
            "m.json",
            "--json",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["inertia"], 12.0, "3·1² + 1·3²");
    write_parquet(
        &d.path().join("neg.parquet"),
        vec![
            ("x", Arc::new(Float64Array::from(vec![0.0, 4.0])) as ArrayRef),
            ("w", Arc::new(Float64Array::from(vec![1.0, -1.0])) as ArrayRef),
        ],
    );
    let o = run(&["fit", "neg.parquet", "--k", "1", "--weight-col", "w", "--model", "n.json"], d.path());
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("weight column 'w'") && stderr(&o).contains(">= 0"), "{}", stderr(&o));
}

#[test]
fn exit_codes_are_stable() {
    use microseg::{Error, ExitCode};
    assert_eq!(ExitCode::Success as u8, 0);
    assert_eq!(Error::Runtime("x".into()).exit_code() as u8, 1);
    assert_eq!(Error::Usage("x".into()).exit_code() as u8, 2);
    assert_eq!(Error::OutputExists("x".into()).exit_code() as u8, 2);
    assert_eq!(Error::input("f", "x").exit_code() as u8, 3);
    assert_eq!(Error::Data("x".into()).exit_code() as u8, 3);
    assert_eq!(Error::output("f", "x").exit_code() as u8, 4);
}

#[test]
fn list_columns_of_one_length_are_embeddings() {
    use arrow::array::{FixedSizeListArray, ListArray};
    use arrow::datatypes::Float32Type;
    let d = TempDir::new().unwrap();
    let rows: Vec<Vec<f32>> = (0..80).map(|i| vec![(i % 7) as f32, (i % 3) as f32 * 2.0, (i % 5) as f32]).collect();
    let list = ListArray::from_iter_primitive::<Float32Type, _, _>(
        rows.iter().map(|r| Some(r.iter().map(|v| Some(*v)).collect::<Vec<_>>())),
    );
    let fixed = FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
        rows.iter().map(|r| Some(r.iter().map(|v| Some(*v)).collect::<Vec<_>>())),
        3,
    );
    write_parquet(&d.path().join("list.parquet"), vec![("emb", Arc::new(list) as ArrayRef)]);
    write_parquet(&d.path().join("fixed.parquet"), vec![("emb", Arc::new(fixed) as ArrayRef)]);
    for f in ["list", "fixed"] {
        let o = run(
            &["fit", &format!("{f}.parquet"), "--features", "emb", "--k", "3", "--model", &format!("{f}.json")],
            d.path(),
        );
        assert!(o.status.success(), "{f}: {}", stderr(&o));
    }
    let a: serde_json::Value = serde_json::from_slice(&std::fs::read(d.path().join("list.json")).unwrap()).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&std::fs::read(d.path().join("fixed.json")).unwrap()).unwrap();
    assert_eq!(a["segments"], b["segments"], "a List<Float32> of one length is the same embedding");
    // A ragged list is refused, naming the column and the row.
    let ragged = ListArray::from_iter_primitive::<Float32Type, _, _>(
        (0..10).map(|i| Some(vec![Some(1.0f32); if i == 4 { 2 } else { 3 }])),
    );
    write_parquet(&d.path().join("ragged.parquet"), vec![("emb", Arc::new(ragged) as ArrayRef)]);
    let o = run(&["fit", "ragged.parquet", "--features", "emb", "--k", "2", "--model", "r.json"], d.path());
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("'emb'") && stderr(&o).contains("row 4"), "{}", stderr(&o));
}
