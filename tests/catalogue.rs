//! The catalogue of bad inputs: every command, fed what a hostile or careless user
//! feeds it. Each case is checked for its exit code, for a message that names what is
//! wrong (the file, the column, the flag), for nothing on stdout, and for nothing left
//! behind (the directory holds exactly what it held before).

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Float64Array, Int64Array, StringArray};
use tempfile::TempDir;

use crate::util::{assert_fails, listing, ok, run, table, write_parquet};

fn f64s(v: Vec<f64>) -> ArrayRef {
    Arc::new(Float64Array::from(v))
}

fn ids(n: usize) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(0..n as i64))
}

/// The files the cases use, all in one directory.
fn fixtures(p: &Path) {
    table(p, "in.parquet", 2_000);
    table(p, "more.parquet", 500);
    ok(&run(&["fit", "in.parquet", "--k", "3", "--model", "m.json", "--quiet"], p));
    ok(&run(&["fit", "in.parquet", "--k", "3", "--method", "gmm", "--model", "gmm.json", "--quiet"], p));
    ok(&run(&["profile", "--model", "m.json", "in.parquet", "--out", "profile.json", "--quiet"], p));
    let n = 200;
    let spend: Vec<f64> = (0..n).map(|i| i as f64).collect();
    let with = |name: &str, col: Vec<f64>| {
        write_parquet(
            &p.join(name),
            vec![("subscriber_id", ids(n)), ("spend", f64s(spend.clone())), ("visits", f64s(col))],
        );
    };
    with("nan.parquet", (0..n).map(|i| if i == 17 { f64::NAN } else { 1.0 }).collect());
    with("inf.parquet", (0..n).map(|i| if i == 3 { f64::INFINITY } else { 1.0 }).collect());
    with("huge.parquet", (0..n).map(|i| if i == 5 { 1e300 } else { 1.0 }).collect());
    write_parquet(
        &p.join("nulls.parquet"),
        vec![
            ("subscriber_id", ids(n)),
            ("spend", f64s(spend.clone())),
            ("visits", Arc::new(Float64Array::from_iter((0..n).map(|i| if i == 9 { None } else { Some(1.0) })))),
        ],
    );
    write_parquet(
        &p.join("text.parquet"),
        vec![
            ("subscriber_id", ids(n)),
            ("spend", Arc::new(StringArray::from_iter_values((0..n).map(|i| format!("{i} EUR"))))),
            ("visits", f64s(vec![1.0; n])),
        ],
    );
    write_parquet(
        &p.join("dupids.parquet"),
        vec![
            ("subscriber_id", Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i % 50)))),
            ("spend", f64s(spend.clone())),
            ("visits", Arc::new(Float32Array::from_iter_values((0..n).map(|i| (i % 3) as f32)))),
        ],
    );
    write_parquet(
        &p.join("tiny.parquet"),
        vec![("subscriber_id", ids(2)), ("spend", f64s(vec![1.0, 2.0])), ("visits", f64s(vec![0.0, 1.0]))],
    );
    write_parquet(
        &p.join("zero.parquet"),
        vec![("subscriber_id", ids(0)), ("spend", f64s(vec![])), ("visits", f64s(vec![]))],
    );
    write_parquet(&p.join("other.parquet"), vec![("user", ids(n)), ("score", f64s(spend.clone()))]);
    // One input, two files of different schemas.
    std::fs::create_dir(p.join("mixed")).unwrap();
    table(&p.join("mixed"), "a.parquet", 100);
    write_parquet(&p.join("mixed/b.parquet"), vec![("subscriber_id", ids(100)), ("spend", f64s(vec![1.0; 100]))]);
    std::fs::create_dir(p.join("emptydir")).unwrap();
    std::fs::write(p.join("notparquet.parquet"), "subscriber_id,spend\n1,2\n").unwrap();
    std::fs::write(p.join("empty.parquet"), "").unwrap();
    let whole = std::fs::read(p.join("in.parquet")).unwrap();
    std::fs::write(p.join("truncated.parquet"), &whole[..whole.len() / 2]).unwrap();
    // Models: garbage, truncated, another format version, another method, a hand-edited one.
    let model = std::fs::read_to_string(p.join("m.json")).unwrap();
    std::fs::write(p.join("garbage.json"), "not json at all").unwrap();
    std::fs::write(p.join("cut.json"), &model[..model.len() / 2]).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&model).unwrap();
    v["format_version"] = 999.into();
    std::fs::write(p.join("future.json"), v.to_string()).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&model).unwrap();
    v["k"] = 7.into();
    std::fs::write(p.join("edited.json"), v.to_string()).unwrap();
    std::fs::write(p.join("profile_only.json"), std::fs::read(p.join("profile.json")).unwrap()).unwrap();
    // Initial centroids: wrong width, not numbers.
    std::fs::write(p.join("wide.csv"), "1,2,3\n4,5,6\n").unwrap();
    std::fs::write(p.join("words.csv"), "a,b\nc,d\n").unwrap();
    // Event logs.
    write_parquet(
        &p.join("events_notime.parquet"),
        vec![("subscriber_id", ids(3)), ("event_type", Arc::new(StringArray::from(vec!["open", "send", "click"])))],
    );
    std::fs::create_dir(p.join("readonly")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p.join("readonly"), std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    std::fs::write(p.join("exists.parquet"), "keep me").unwrap();
    // Files on which the parquet crate panics or runs out of memory, found by fuzzing (a
    // choice byte, then the file).
    for (seed, name) in [
        ("parquet_features/regression-fc9e086c288c", "nodict.parquet"),
        ("parquet_features/regression-page-header-skip-past-eof", "pastend.parquet"),
        ("event_reader/regression-d3eec40a662e", "badfooter.parquet"),
        ("event_reader/regression-70eed4b98e7c", "hugedict.parquet"),
    ] {
        let bytes = std::fs::read(crate::util::repo().join("fuzz/seeds").join(seed)).unwrap();
        std::fs::write(p.join(name), &bytes[1..]).unwrap();
    }
    // A footer declaring a map of 10⁹ booleans, over which the parquet crate loops for
    // seconds. Kept out of the fuzz seeds: its mutations reach that loop and time out.
    // Made by hand from pyarrow files: a page header with a list of booleans in an
    // unknown field, a footer whose created_by (a string) is sent as a boolean, and a
    // dictionary page header claiming 1.75·10⁹ values (its CRC field taken out to keep
    // the header's length).
    for (file, name) in [
        ("boolean-map-footer.parquet", "boolfooter.parquet"),
        ("boolean-list-page-header.parquet", "boolpage.parquet"),
        ("created-by-as-boolean.parquet", "wiretype.parquet"),
        ("dictionary-claims-1.75e9.parquet", "dictclaims.parquet"),
    ] {
        std::fs::copy(crate::util::repo().join("tests/data/corrupt").join(file), p.join(name)).unwrap();
    }
}

/// (what, arguments, exit code, what stderr must say)
type Case = (&'static str, &'static [&'static str], i32, &'static [&'static str]);

const CASES: &[Case] = &[
    // Files that are not what they claim.
    ("not parquet", &["fit", "notparquet.parquet", "--k", "2", "--model", "o.json"], 3, &["notparquet.parquet"]),
    ("empty file", &["fit", "empty.parquet", "--k", "2", "--model", "o.json"], 3, &["empty.parquet"]),
    ("truncated file", &["fit", "truncated.parquet", "--k", "2", "--model", "o.json"], 3, &["truncated.parquet"]),
    ("missing file", &["fit", "nowhere.parquet", "--k", "2", "--model", "o.json"], 3, &["nowhere.parquet"]),
    ("empty directory", &["fit", "emptydir", "--k", "2", "--model", "o.json"], 3, &["emptydir"]),
    ("no rows", &["fit", "zero.parquet", "--k", "2", "--model", "o.json"], 3, &["zero.parquet"]),
    ("schemas differ within one input", &["fit", "mixed", "--k", "2", "--model", "o.json"], 3, &["visits"]),
    (
        "truncated input to assign",
        &["assign", "--model", "m.json", "truncated.parquet", "--out", "o.parquet"],
        3,
        &["truncated.parquet"],
    ),
    (
        "not parquet to profile",
        &["profile", "--model", "m.json", "notparquet.parquet", "--out", "o.json"],
        3,
        &["notparquet.parquet"],
    ),
    ("empty file to drift", &["drift", "--model", "m.json", "empty.parquet"], 3, &["empty.parquet"]),
    // Values.
    (
        "NaN in a feature",
        &["fit", "nan.parquet", "--k", "2", "--model", "o.json"],
        3,
        &["nan.parquet", "visits", "--missing"],
    ),
    ("infinity in a feature", &["fit", "inf.parquet", "--k", "2", "--model", "o.json"], 3, &["inf.parquet", "visits"]),
    (
        "null in a feature",
        &["fit", "nulls.parquet", "--k", "2", "--model", "o.json"],
        3,
        &["nulls.parquet", "visits", "--missing"],
    ),
    ("absurd magnitude", &["fit", "huge.parquet", "--k", "2", "--model", "o.json"], 3, &["huge.parquet", "visits"]),
    (
        "NaN at assignment",
        &["assign", "--model", "m.json", "nan.parquet", "--out", "o.parquet"],
        3,
        &["nan.parquet", "visits"],
    ),
    (
        "null at assignment",
        &["assign", "--model", "m.json", "nulls.parquet", "--out", "o.parquet"],
        3,
        &["nulls.parquet", "visits"],
    ),
    (
        "absurd magnitude at assignment",
        &["assign", "--model", "m.json", "huge.parquet", "--out", "o.parquet"],
        3,
        &["huge.parquet", "visits"],
    ),
    (
        "text in a feature",
        &["fit", "text.parquet", "--features", "spend,visits", "--k", "2", "--model", "o.json"],
        3,
        &["text.parquet", "spend"],
    ),
    (
        "text in a model's feature",
        &["assign", "--model", "m.json", "text.parquet", "--out", "o.parquet"],
        3,
        &["text.parquet", "spend"],
    ),
    (
        "duplicate ids",
        &["fit", "dupids.parquet", "--k", "2", "--model", "o.json"],
        3,
        &["dupids.parquet", "subscriber_id", "twice", "--allow-duplicate-ids"],
    ),
    (
        "duplicate ids to segment",
        &["segment", "dupids.parquet", "--k", "2", "--out-dir", "seg"],
        3,
        &["dupids.parquet", "twice"],
    ),
    ("k larger than the rows", &["fit", "tiny.parquet", "--k", "5", "--model", "o.json"], 3, &["--k"]),
    (
        "feature column missing",
        &["fit", "in.parquet", "--features", "spend,height", "--k", "2", "--model", "o.json"],
        3,
        &["height"],
    ),
    (
        "model's columns missing",
        &["assign", "--model", "m.json", "other.parquet", "--out", "o.parquet"],
        3,
        &["other.parquet", "spend"],
    ),
    (
        "id column missing",
        &["assign", "--model", "m.json", "in.parquet", "--id-col", "user", "--out", "o.parquet"],
        3,
        &["user"],
    ),
    ("weight column missing", &["fit", "in.parquet", "--k", "2", "--weight-col", "w", "--model", "o.json"], 3, &["w"]),
    // Models and artefacts.
    (
        "model not JSON",
        &["assign", "--model", "garbage.json", "in.parquet", "--out", "o.parquet"],
        3,
        &["garbage.json"],
    ),
    ("model truncated", &["assign", "--model", "cut.json", "in.parquet", "--out", "o.parquet"], 3, &["cut.json"]),
    (
        "model of a future version",
        &["assign", "--model", "future.json", "in.parquet", "--out", "o.parquet"],
        3,
        &["future.json", "999"],
    ),
    (
        "model edited inconsistently",
        &["assign", "--model", "edited.json", "in.parquet", "--out", "o.parquet"],
        3,
        &["edited.json"],
    ),
    (
        "a profile given as the model",
        &["assign", "--model", "profile_only.json", "in.parquet", "--out", "o.parquet"],
        3,
        &["profile_only.json"],
    ),
    ("missing model", &["drift", "--model", "none.json", "in.parquet"], 3, &["none.json"]),
    (
        "previous model of other features",
        &["fit", "other.parquet", "--k", "2", "--previous", "m.json", "--model", "o.json"],
        2,
        &["--previous", "same features"],
    ),
    (
        "init centroids of another width",
        &["fit", "in.parquet", "--k", "2", "--init", "wide.csv", "--model", "o.json"],
        3,
        &["wide.csv", "3 values"],
    ),
    (
        "init centroids not numbers",
        &["fit", "in.parquet", "--k", "2", "--init", "words.csv", "--model", "o.json"],
        3,
        &["words.csv", "line 1"],
    ),
    (
        "report of a profile of another model",
        &["report", "--model", "gmm.json", "--profile", "profile.json", "--out", "o.html"],
        3,
        &["profile.json"],
    ),
    // Events.
    (
        "event log without a time column",
        &["features", "--events", "events_notime.parquet", "--as-of", "2024-01-01", "--out", "o.parquet"],
        3,
        &["events_notime.parquet", "time"],
    ),
    (
        "event log not parquet",
        &["features", "--events", "notparquet.parquet", "--as-of", "2024-01-01", "--out", "o.parquet"],
        3,
        &["notparquet.parquet"],
    ),
    // Outputs.
    (
        "output exists",
        &["assign", "--model", "m.json", "in.parquet", "--out", "exists.parquet"],
        2,
        &["exists.parquet", "--force"],
    ),
    (
        "output is an input",
        &["assign", "--model", "m.json", "in.parquet", "--out", "in.parquet", "--force"],
        2,
        &["in.parquet"],
    ),
    ("output is the model", &["fit", "in.parquet", "--k", "2", "--model", "in.parquet", "--force"], 2, &["in.parquet"]),
    (
        "output directory missing",
        &["assign", "--model", "m.json", "in.parquet", "--out", "no/such/dir/o.parquet"],
        4,
        &["no/such/dir"],
    ),
    ("output is a directory", &["fit", "in.parquet", "--k", "2", "--model", "emptydir"], 4, &["emptydir", "directory"]),
    (
        "out-dir is a file",
        &["segment", "in.parquet", "--k", "2", "--out-dir", "exists.parquet"],
        4,
        &["exists.parquet", "not a directory"],
    ),
    (
        "a dictionary page missing (a parquet crate panic)",
        &["fit", "nodict.parquet", "--k", "2", "--model", "o.json"],
        3,
        &["nodict.parquet", "corrupt"],
    ),
    (
        "negative column offsets (a parquet crate panic)",
        &["features", "--events", "badfooter.parquet", "--as-of", "2024-01-01", "--out", "o.parquet"],
        3,
        &["badfooter.parquet", "corrupt"],
    ),
    (
        // Found by fuzzing; its page headers also run past their chunk, which is now
        // found first.
        "a dictionary page claiming 1.75·10⁹ values in 72 bytes (the parquet crate filled 14 GB)",
        &["features", "--events", "hugedict.parquet", "--as-of", "2024-01-01", "--out", "o.parquet"],
        3,
        &["hugedict.parquet", "corrupt", "'timestamp'"],
    ),
    (
        "a dictionary page claiming 1.75·10⁹ values in 8 bytes, in a file otherwise whole",
        &["fit", "dictclaims.parquet", "--k", "2", "--model", "o.json"],
        3,
        &["dictclaims.parquet", "corrupt", "column 'a'", "dictionary page claims 1750000000 values but holds 8 bytes"],
    ),
    (
        "a 556-byte footer declaring a map of 10⁹ booleans (the parquet crate looped 4.7 s over it)",
        &["fit", "in.parquet", "--k", "2", "--init", "boolfooter.parquet", "--model", "o.json"],
        3,
        &["boolfooter.parquet", "corrupt", "footer declares a map of 1031730483 booleans"],
    ),
    (
        "a page header running past its column chunk (the crate's stream reader skipped past the file's end 2³¹ times)",
        &["fit", "pastend.parquet", "--k", "2", "--model", "o.json"],
        3,
        &["pastend.parquet", "corrupt", "column 'a'", "runs past the end of its column chunk"],
    ),
    (
        "a page header declaring a list of booleans (the parquet crate loops over them too)",
        &["fit", "boolpage.parquet", "--k", "2", "--model", "o.json"],
        3,
        &["boolpage.parquet", "corrupt", "column 'a'", "page header at byte 241", "list of 16777215 booleans"],
    ),
    (
        "a footer sending a known field with another wire type (the crate and a plain walk part ways)",
        &["fit", "wiretype.parquet", "--k", "2", "--model", "o.json"],
        3,
        &["wiretype.parquet", "corrupt", "sends field 6 of FileMetaData as a boolean", "where Parquet has a string"],
    ),
    // Flags.
    ("k zero", &["fit", "in.parquet", "--k", "0", "--model", "o.json"], 2, &["--k"]),
    ("negative tolerance", &["fit", "in.parquet", "--k", "2", "--tol=-1", "--model", "o.json"], 2, &["--tol"]),
    ("unknown flag", &["fit", "in.parquet", "--k", "2", "--clusters", "3", "--model", "o.json"], 2, &["--clusters"]),
    (
        "mixture options on k-means",
        &["fit", "in.parquet", "--k", "2", "--covariance", "full", "--model", "o.json"],
        2,
        &["--method gmm"],
    ),
    (
        "cosine mixture",
        &["fit", "in.parquet", "--k", "2", "--method", "gmm", "--metric", "cosine", "--model", "o.json"],
        2,
        &["cosine"],
    ),
    (
        "bounds on a mixture",
        &["fit", "in.parquet", "--k", "2", "--method", "gmm", "--algorithm", "hamerly", "--model", "o.json"],
        2,
        &["--algorithm"],
    ),
    (
        "checkpoint flags without a checkpoint",
        &["fit", "in.parquet", "--k", "2", "--checkpoint-every", "3", "--model", "o.json"],
        2,
        &["--checkpoint"],
    ),
    (
        "checkpoint of a mini-batch fit",
        &["fit", "in.parquet", "--k", "2", "--algorithm", "minibatch", "--checkpoint", "ck", "--model", "o.json"],
        2,
        &["--checkpoint"],
    ),
    (
        "split/merge moves on a streamed fit",
        &[
            "fit",
            "in.parquet",
            "--k",
            "2",
            "--algorithm",
            "minibatch",
            "--stream",
            "--refine",
            "2",
            "--split-merge",
            "2",
            "--model",
            "o.json",
        ],
        2,
        &["--split-merge", "--stream"],
    ),
    (
        "split/merge moves without exact iterations",
        &["fit", "in.parquet", "--k", "2", "--algorithm", "minibatch", "--split-merge", "2", "--model", "o.json"],
        2,
        &["--refine"],
    ),
    (
        "unparsable --as-of",
        &["features", "--events", "in.parquet", "--as-of", "yesterday", "--out", "o.parquet"],
        2,
        &["--as-of"],
    ),
    ("choose-k range backwards", &["choose-k", "in.parquet", "--k", "9..3"], 2, &["--k"]),
    // update.
    (
        "update of a mixture",
        &["update", "--model", "gmm.json", "more.parquet", "--out", "o.json"],
        2,
        &["k-means", "gmm"],
    ),
    (
        "update with no decay",
        &["update", "--model", "m.json", "more.parquet", "--decay", "0", "--out", "o.json"],
        2,
        &["--decay"],
    ),
    (
        "update with two forgetting rules",
        &["update", "--model", "m.json", "more.parquet", "--decay", "0.5", "--half-life-rows", "9", "--out", "o.json"],
        2,
        &["--half-life-rows"],
    ),
    (
        "update by days without the days",
        &["update", "--model", "m.json", "more.parquet", "--half-life-days", "30", "--out", "o.json"],
        2,
        &["--elapsed-days"],
    ),
    (
        "update with other columns",
        &["update", "--model", "m.json", "other.parquet", "--out", "o.json"],
        3,
        &["other.parquet", "spend"],
    ),
    (
        "update onto its own model",
        &["update", "--model", "m.json", "more.parquet", "--out", "m.json", "--force"],
        2,
        &["m.json"],
    ),
    (
        "update onto an existing file",
        &["update", "--model", "m.json", "more.parquet", "--out", "exists.parquet"],
        2,
        &["exists.parquet", "--force"],
    ),
    (
        "update with NaN",
        &["update", "--model", "m.json", "nan.parquet", "--out", "o.json"],
        3,
        &["nan.parquet", "visits"],
    ),
];

#[test]
fn every_bad_input_is_refused_cleanly() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    fixtures(p);
    let base = listing(p);
    let names: Vec<&str> = base.iter().map(|s| s.as_str()).collect();
    assert!(CASES.len() >= 40, "the catalogue lists {} cases", CASES.len());
    let mut failures = Vec::new();
    for (what, args, code, needles) in CASES {
        let o = run(args, p);
        let r = std::panic::catch_unwind(|| assert_fails(&o, *code, needles, p, &names));
        if r.is_err() {
            failures.push(format!(
                "{what}: {args:?}\n  exit {:?}\n  stderr: {}",
                o.status.code(),
                String::from_utf8_lossy(&o.stderr).trim()
            ));
            // Leave the directory as it was for the next case.
            for f in listing(p) {
                if !base.contains(&f) {
                    let _ = std::fs::remove_file(p.join(&f)).or_else(|_| std::fs::remove_dir_all(p.join(&f)));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
    assert_eq!(std::fs::read(p.join("exists.parquet")).unwrap(), b"keep me");
}
