//! `features`: events → per-subscriber features and BG/NBD / Gamma-Gamma traits.
//! References: the parameters Fader, Hardie & Lee (2005) and Fader & Hardie (2013) publish
//! for the CDNOW sample; planted truth of generated logs; bad input catalogue.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{Float64Type, Int64Type};

use crate::util::{all_rows, assert_fails, json, ok, repo, run, write_parquet};

fn cdnow() -> std::path::PathBuf {
    repo().join("datasets/cdnow_sample_events.parquet")
}

fn col<'a>(b: &'a arrow::record_batch::RecordBatch, name: &str) -> &'a ArrayRef {
    b.column_by_name(name).unwrap_or_else(|| panic!("no column {name}"))
}

fn close(got: f64, want: f64, rel: f64, what: &str) {
    assert!((got - want).abs() <= rel * want.abs(), "{what}: {got} against {want} (within {rel})");
}

/// `features --predict` in weeks with order values, writing t.json and f.parquet in `dir`.
fn predict_weekly(events: &Path, as_of: &str, extra: &[&str], dir: &Path) -> std::process::Output {
    let mut args = vec![
        "features",
        "--events",
        events.to_str().unwrap(),
        "--as-of",
        as_of,
        "--time-unit",
        "week",
        "--value-col",
        "value",
        "--predict",
        "--traits-out",
        "t.json",
        "--out",
        "f.parquet",
    ];
    args.extend_from_slice(extra);
    run(&args, dir)
}

#[test]
fn bgnbd_and_gamma_gamma_reproduce_the_published_cdnow_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let o = predict_weekly(&cdnow(), "1997-09-30", &["--horizon", "273", "--quiet"], dir.path());
    ok(&o);
    let t = json(&dir.path().join("t.json"));
    let b = &t["bgnbd"];
    // Fader, Hardie & Lee (2005), "Counting your customers the easy way", section 5.
    close(b["r"].as_f64().unwrap(), 0.243, 0.01, "r");
    close(b["alpha"].as_f64().unwrap(), 4.414, 0.01, "alpha");
    close(b["a"].as_f64().unwrap(), 0.793, 0.01, "a");
    close(b["b"].as_f64().unwrap(), 2.426, 0.01, "b");
    close(b["log_likelihood"].as_f64().unwrap(), -9582.4, 1e-5, "log-likelihood");
    assert_eq!(b["n_customers"], 2357);
    assert_eq!(b["convergence"]["converged"], true);
    // Every parameter is pinned down by CDNOW: no ridge warning.
    assert!(b.get("weakly_identified").is_none(), "{b}");
    assert!(!String::from_utf8_lossy(&o.stderr).contains("ridge"));
    // Fader & Hardie (2013), "The Gamma-Gamma model of monetary value": 946 repeat buyers.
    let g = &t["gamma_gamma"];
    close(g["p"].as_f64().unwrap(), 6.25, 0.01, "p");
    close(g["q"].as_f64().unwrap(), 3.74, 0.01, "q");
    close(g["gamma"].as_f64().unwrap(), 15.44, 0.01, "gamma");
    assert_eq!(g["n_customers"], 946);
    // FHL's worked example: customer 1 (x = 2, t_x = 30.43, T = 38.86 weeks) is expected to
    // make 1.226 purchases in the next 39 weeks.
    let f = all_rows(&dir.path().join("f.parquet"));
    let ids = col(&f, "subscriber_id").as_primitive::<Int64Type>();
    let i = (0..ids.len()).find(|&i| ids.value(i) == 1).unwrap();
    assert_eq!(col(&f, "frequency").as_primitive::<Int64Type>().value(i), 2);
    close(col(&f, "recency_weeks").as_primitive::<Float64Type>().value(i), 30.43, 1e-3, "t_x");
    close(col(&f, "tenure_weeks").as_primitive::<Float64Type>().value(i), 38.86, 1e-3, "T");
    close(col(&f, "mean_repeat_value").as_primitive::<Float64Type>().value(i), 22.35, 1e-3, "zbar");
    close(col(&f, "expected_purchases_273d").as_primitive::<Float64Type>().value(i), 1.226, 1e-3, "E[Y(39)]");
    let p = col(&f, "p_alive").as_primitive::<Float64Type>().value(i);
    let c = col(&f, "churn_probability").as_primitive::<Float64Type>().value(i);
    assert!((p + c - 1.0).abs() < 1e-12 && p > 0.0 && p < 1.0);
}

#[test]
fn the_holdout_check_compares_forecast_and_actual_by_frequency() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(
        &[
            "features",
            "--events",
            cdnow().to_str().unwrap(),
            "--as-of",
            "1998-06-30",
            "--holdout-from",
            "1997-10-01",
            "--time-unit",
            "week",
            "--predict",
            "--traits-out",
            "t.json",
            "--out",
            "f.parquet",
            "--quiet",
        ],
        dir.path(),
    );
    ok(&o);
    let t = json(&dir.path().join("t.json"));
    // The calibration fit is the same as with --as-of 1997-09-30.
    close(t["bgnbd"]["r"].as_f64().unwrap(), 0.243, 0.01, "r");
    let h = &t["holdout"];
    assert_eq!(h["days"], 273.0);
    let groups = h["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 8);
    let customers: u64 = groups.iter().map(|g| g["customers"].as_u64().unwrap()).sum();
    assert_eq!(customers, 2357);
    // The actual holdout purchase days per customer add up to the column written.
    let f = all_rows(&dir.path().join("f.parquet"));
    let actual: i64 = col(&f, "holdout_purchase_days").as_primitive::<Int64Type>().values().iter().sum();
    assert_eq!(actual as f64, h["actual_total"].as_f64().unwrap());
    // The report shows the forecast and the holdout check (chart and table).
    ok(&run(
        &[
            "segment",
            "f.parquet",
            "--k",
            "3",
            "--features",
            "frequency,recency_weeks,tenure_weeks",
            "--out-dir",
            "seg",
            "--quiet",
        ],
        dir.path(),
    ));
    ok(&run(
        &[
            "report",
            "--model",
            "seg/model.json",
            "--profile",
            "seg/profile.json",
            "--traits",
            "t.json",
            "--out",
            "r.html",
        ],
        dir.path(),
    ));
    let html = std::fs::read_to_string(dir.path().join("r.html")).unwrap();
    for needle in [
        "Purchase forecast",
        "r = 0.243",
        "Holdout check",
        "aria-label=\"holdout forecast against actual\"",
        "<td>7+</td>",
    ] {
        assert!(html.contains(needle), "report lacks {needle}");
    }
    let o = run(
        &[
            "report",
            "--model",
            "seg/model.json",
            "--profile",
            "seg/profile.json",
            "--traits",
            "seg/model.json",
            "--out",
            "r2.html",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(3), "{}", crate::util::stderr(&o));
    assert!(crate::util::stderr(&o).contains("not a traits model"), "{}", crate::util::stderr(&o));
    assert!(!dir.path().join("r2.html").exists());
    // The forecast follows the actuals group by group (the model's known fit on CDNOW).
    for g in groups {
        let (p, a) = (g["predicted_mean"].as_f64().unwrap(), g["actual_mean"].as_f64().unwrap());
        assert!((p - a).abs() < 0.5 * a.max(0.5), "frequency {}: {p} against {a}", g["frequency"]);
    }
}

fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Mann–Whitney with average ranks for ties.
    let mut ranks = vec![0.0; scores.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        for k in i..=j {
            ranks[idx[k]] = (i + j) as f64 / 2.0 + 1.0;
        }
        i = j + 1;
    }
    let pos = labels.iter().filter(|l| **l).count() as f64;
    let neg = labels.len() as f64 - pos;
    let sum: f64 = ranks.iter().zip(labels).filter(|(_, l)| **l).map(|(r, _)| r).sum();
    (sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

#[test]
fn generated_logs_give_back_their_planted_hour_cadence_and_churn() {
    let dir = tempfile::tempdir().unwrap();
    for seed in ["1", "2"] {
        ok(&run(
            &[
                "generate-events",
                "--subscribers",
                "4000",
                "--seed",
                seed,
                "--out",
                "e.parquet",
                "--truth",
                "truth.parquet",
                "--force",
                "--quiet",
            ],
            dir.path(),
        ));
        ok(&run(
            &[
                "features",
                "--events",
                "e.parquet",
                "--as-of",
                "2026-06-30",
                "--value-col",
                "value",
                "--category-col",
                "category",
                "--timezone-col",
                "timezone",
                "--predict",
                "--traits-out",
                "t.json",
                "--out",
                "f.parquet",
                "--force",
                "--quiet",
            ],
            dir.path(),
        ));
        let f = all_rows(&dir.path().join("f.parquet"));
        let t = all_rows(&dir.path().join("truth.parquet"));
        let fid = col(&f, "subscriber_id").as_primitive::<Int64Type>();
        let tid = col(&t, "subscriber_id").as_primitive::<Int64Type>();
        // Both are in id order; every subscriber has events.
        assert_eq!(fid.values(), tid.values());
        let hour = col(&f, "preferred_hour").as_primitive::<Float64Type>();
        let true_hour = col(&t, "true_hour").as_primitive::<Float64Type>();
        let opens = col(&f, "opens").as_primitive::<Int64Type>();
        let (mut near, mut many) = (0, 0);
        for i in 0..f.num_rows() {
            if opens.value(i) >= 10 {
                many += 1;
                let d = (hour.value(i) - true_hour.value(i)).rem_euclid(24.0);
                if d.min(24.0 - d) <= 1.0 {
                    near += 1;
                }
            }
        }
        assert!(many > 500 && near as f64 >= 0.95 * many as f64, "hour within 1 h for {near} of {many}");
        let cad = col(&f, "cadence").as_string::<i32>();
        let true_cad = col(&t, "true_cadence").as_string::<i32>();
        let right = (0..f.num_rows()).filter(|&i| cad.value(i) == true_cad.value(i)).count();
        assert!(right as f64 >= 0.9 * f.num_rows() as f64, "cadence right for {right} of {}", f.num_rows());
        let churn = col(&f, "churn_probability").as_primitive::<Float64Type>();
        let buyer = col(&t, "buyer").as_boolean();
        let churned = col(&t, "churned").as_boolean();
        let (mut s, mut l) = (Vec::new(), Vec::new());
        for i in 0..f.num_rows() {
            if buyer.value(i) {
                assert!(!churn.is_null(i), "a buyer without a churn probability");
                s.push(churn.value(i));
                l.push(churned.value(i));
            } else {
                assert!(churn.is_null(i), "a subscriber who never bought has no churn probability");
            }
        }
        let a = auc(&s, &l);
        assert!(a >= 0.8, "churn ROC AUC {a}");
        // Fatigue: planted fatigue is flagged far more often than its absence.
        let fat = col(&f, "fatigued").as_boolean();
        let tf = col(&t, "true_fatigued").as_boolean();
        let rate = |want: bool| {
            let v: Vec<usize> = (0..f.num_rows()).filter(|&i| tf.value(i) == want).collect();
            v.iter().filter(|&&i| fat.value(i)).count() as f64 / v.len() as f64
        };
        assert!(rate(true) > 0.6 && rate(false) < 0.1, "fatigue flagged {} / {}", rate(true), rate(false));
    }
}

/// A small hand-made log whose every feature is known.
fn tiny_log(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("log.parquet");
    let day = |d: i64, h: i64| (20_000 + d) * 86_400 + h * 3600; // 2024-10-04 + d days
    let rows: Vec<(i64, i64, &str, Option<f64>)> = vec![
        (7, day(0, 10), "purchase", Some(10.0)),
        (7, day(0, 11), "purchase", Some(5.0)),
        (7, day(10, 9), "purchase", Some(20.0)),
        (7, day(30, 9), "purchase", Some(30.0)),
        (7, day(31, 9), "send", None),
        (7, day(31, 10), "open", None),
        (7, day(31, 10), "click", None),
        (3, day(5, 8), "send", None),
        (3, day(40, 8), "open", None),
        (3, day(45, 8), "purchase", Some(0.0)),
        // Later than --as-of: left out.
        (3, day(60, 8), "purchase", Some(99.0)),
    ];
    write_log(&p, &rows);
    p
}

/// An event log of (subscriber, time in seconds, event, value) rows.
fn write_log(p: &Path, rows: &[(i64, i64, &str, Option<f64>)]) {
    write_parquet(
        p,
        vec![
            ("subscriber_id", Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef),
            (
                "timestamp",
                Arc::new(arrow::array::TimestampSecondArray::from_iter_values(rows.iter().map(|r| r.1))) as ArrayRef,
            ),
            ("event", Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))) as ArrayRef),
            ("value", Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.3))) as ArrayRef),
        ],
    );
}

#[test]
fn a_hand_made_log_gives_its_known_features() {
    let dir = tempfile::tempdir().unwrap();
    tiny_log(dir.path());
    // As of day 50 (2024-11-23).
    ok(&run(
        &["features", "--events", "log.parquet", "--as-of", "2024-11-23", "--value-col", "value", "--out", "f.parquet"],
        dir.path(),
    ));
    let f = all_rows(&dir.path().join("f.parquet"));
    assert_eq!(col(&f, "subscriber_id").as_primitive::<Int64Type>().values(), &[3, 7]);
    let i64s = |n: &str| col(&f, n).as_primitive::<Int64Type>().values().to_vec();
    let f64s = |n: &str| col(&f, n).as_primitive::<Float64Type>().values().to_vec();
    assert_eq!(i64s("orders"), [1, 4]);
    assert_eq!(i64s("purchase_days"), [1, 3]);
    assert_eq!(i64s("frequency"), [0, 2]);
    assert_eq!(f64s("recency_days"), [0.0, 30.0]);
    assert_eq!(f64s("tenure_days"), [5.0, 50.0]);
    assert_eq!(f64s("revenue"), [0.0, 65.0]);
    // Repeat value: (65 − the first day's 15) over 2 repeat days.
    assert_eq!(col(&f, "mean_repeat_value").as_primitive::<Float64Type>().value(1), 25.0);
    assert!(col(&f, "mean_repeat_value").is_null(0));
    assert_eq!(i64s("days_since_last_purchase"), [5, 20]);
    assert_eq!(col(&f, "median_purchase_gap_days").as_primitive::<Float64Type>().value(1), 15.0);
    assert_eq!(i64s("sends"), [1, 1]);
    assert_eq!(i64s("sends_30d"), [0, 1]);
    assert_eq!(i64s("opens_30d"), [1, 1]);
    assert_eq!(f64s("open_rate"), [1.0, 1.0]);
    assert_eq!(i64s("days_since_last_open"), [10, 19]);
    assert_eq!(i64s("days_since_first_event"), [45, 50]);
    assert!((f64s("preferred_hour")[0] - 8.0).abs() < 1e-9);
    assert_eq!(col(&f, "preferred_weekday").as_primitive::<arrow::datatypes::Int32Type>().value(1), 1); // a Monday
    assert_eq!(col(&f, "cadence").as_string::<i32>().value(1), "sporadic");
}

/// Order lines as a shop exports them: float customer ids with nulls, an invoice column,
/// quantity and unit price, a cancellation with a negative quantity; no type column.
fn order_lines(dir: &Path, ids: Vec<Option<f64>>) -> std::path::PathBuf {
    let p = dir.join("lines.parquet");
    let day = |d: i64, h: i64| (20_000 + d) * 86_400 + h * 3600;
    // (invoice, time, quantity, unit price); one row per entry of `ids`.
    let rows: Vec<(&str, i64, f64, f64)> = vec![
        ("A1", day(0, 10), 2.0, 5.0),
        ("A2", day(10, 9), 1.0, 20.0),
        ("B1", day(3, 8), 4.0, 2.5),
        ("X1", day(4, 8), 1.0, 9.0),
        ("A1", day(0, 10), 3.0, 1.0),   // a line of A1 after A2's: still one order
        ("C9", day(12, 9), -1.0, 20.0), // a cancellation
        ("A3", day(10, 15), 1.0, 0.0),  // a free order on a purchase day already seen
    ];
    assert_eq!(rows.len(), ids.len());
    write_parquet(
        &p,
        vec![
            ("CustomerID", Arc::new(Float64Array::from(ids)) as ArrayRef),
            ("InvoiceNo", Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef),
            (
                "InvoiceDate",
                Arc::new(arrow::array::TimestampSecondArray::from_iter_values(rows.iter().map(|r| r.1))) as ArrayRef,
            ),
            ("Quantity", Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))) as ArrayRef),
            ("UnitPrice", Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.3))) as ArrayRef),
        ],
    );
    p
}

const LINES: [&str; 14] = [
    "features",
    "--events",
    "lines.parquet",
    "--as-of",
    "2024-11-23",
    "--id-col",
    "CustomerID",
    "--time-col",
    "InvoiceDate",
    "--event-type",
    "purchase",
    "--value-col",
    "Quantity*UnitPrice",
    "--quiet",
];

#[test]
fn a_table_of_order_lines_is_a_purchase_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ids = vec![Some(7.0), Some(7.0), Some(3.0), None, Some(7.0), Some(7.0), Some(7.0)];
    order_lines(d, ids.clone());
    let lines = |extra: &[&str]| {
        let mut a = LINES.to_vec();
        a.extend_from_slice(extra);
        run(&a, d)
    };
    ok(&lines(&["--order-col", "InvoiceNo", "--skip-null-ids", "--skip-negative-values", "--out", "f.parquet"]));
    let f = all_rows(&d.join("f.parquet"));
    // Whole-number float ids come out as integers, in id order.
    assert_eq!(col(&f, "CustomerID").as_primitive::<Int64Type>().values(), &[3, 7]);
    let i64s = |n: &str| col(&f, n).as_primitive::<Int64Type>().values().to_vec();
    let f64s = |n: &str| col(&f, n).as_primitive::<Float64Type>().values().to_vec();
    // Customer 7: orders A1 (two lines, 13), A2 (20) and A3 (0); the cancellation is left out.
    assert_eq!(i64s("orders"), [1, 3]);
    assert_eq!(i64s("purchase_days"), [1, 2]);
    assert_eq!(i64s("frequency"), [0, 1]);
    assert_eq!(f64s("revenue"), [10.0, 33.0]);
    assert_eq!(col(&f, "mean_repeat_value").as_primitive::<Float64Type>().value(1), 20.0);
    assert_eq!(f64s("recency_days"), [0.0, 10.0]);
    // Without an order column every line is an order.
    ok(&lines(&["--skip-null-ids", "--skip-negative-values", "--out", "g.parquet"]));
    let g = all_rows(&d.join("g.parquet"));
    assert_eq!(col(&g, "orders").as_primitive::<Int64Type>().values(), &[1, 4]);
    assert_eq!(col(&g, "revenue").as_primitive::<Float64Type>().values(), &[10.0, 33.0]);

    // Each refusal names the column and the flag that would accept it; nothing is written.
    let all = ["f.parquet", "g.parquet", "lines.parquet"];
    let o = lines(&["--order-col", "InvoiceNo", "--skip-negative-values", "--out", "h.parquet"]);
    assert_fails(&o, 3, &["lines.parquet", "'CustomerID'", "null subscriber ids", "--skip-null-ids"], d, &all);
    let o = lines(&["--skip-null-ids", "--out", "h.parquet"]);
    assert_fails(&o, 3, &["'Quantity*UnitPrice'", "negative value (-20)", "--skip-negative-values"], d, &all);
    let mut refund = LINES.to_vec();
    refund[10] = "refund";
    refund.extend_from_slice(&["--skip-null-ids", "--skip-negative-values", "--out", "h.parquet"]);
    assert_fails(&run(&refund, d), 2, &["--event-type 'refund'"], d, &all);
    let mut three = LINES.to_vec();
    three[12] = "Quantity*UnitPrice*Quantity";
    three.extend_from_slice(&["--skip-null-ids", "--skip-negative-values", "--out", "h.parquet"]);
    assert_fails(&run(&three, d), 2, &["product of two"], d, &all);
    let mut no_type = LINES.to_vec();
    no_type.drain(9..11);
    no_type.extend_from_slice(&["--skip-null-ids", "--skip-negative-values", "--out", "h.parquet"]);
    assert_fails(&run(&no_type, d), 3, &["no event type", "--event-type"], d, &all);
    let mut fractional = ids;
    fractional[2] = Some(3.5);
    order_lines(d, fractional);
    let o = lines(&["--skip-null-ids", "--skip-negative-values", "--out", "h.parquet"]);
    assert_fails(&o, 3, &["'CustomerID'", "3.5 is not a whole number"], d, &all);
}

#[test]
fn order_ids_and_skipped_rows_in_a_mixed_log() {
    // A log with a type column: sends carry no order id, one purchase has no subscriber
    // (and no value); ids are dictionary-encoded text with a null key.
    use arrow::array::DictionaryArray;
    use arrow::datatypes::Int32Type;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let day = |n: i64| (20_000 + n) * 86_400 + 9 * 3600;
    let ids: DictionaryArray<Int32Type> =
        vec![Some("ann"), Some("ann"), Some("ann"), None, Some("bob"), Some("ann")].into_iter().collect();
    write_parquet(
        &d.join("mixed.parquet"),
        vec![
            ("subscriber_id", Arc::new(ids) as ArrayRef),
            (
                "timestamp",
                Arc::new(arrow::array::TimestampSecondArray::from_iter_values([
                    day(0),
                    day(1),
                    day(1),
                    day(2),
                    day(3),
                    day(5),
                ])) as ArrayRef,
            ),
            (
                "event",
                Arc::new(StringArray::from(vec!["send", "purchase", "purchase", "purchase", "send", "purchase"]))
                    as ArrayRef,
            ),
            (
                "order",
                Arc::new(StringArray::from(vec![None, Some("o1"), Some("o1"), None, None, Some("o2")])) as ArrayRef,
            ),
            (
                "value",
                Arc::new(Float64Array::from(vec![None, Some(4.0), Some(6.0), None, None, Some(5.0)])) as ArrayRef,
            ),
        ],
    );
    let base = [
        "features",
        "--events",
        "mixed.parquet",
        "--as-of",
        "2024-11-23",
        "--value-col",
        "value",
        "--order-col",
        "order",
        "--quiet",
    ];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        run(&a, d)
    };
    ok(&with(&["--skip-null-ids", "--out", "f.parquet"]));
    let f = all_rows(&d.join("f.parquet"));
    assert_eq!(col(&f, "subscriber_id").as_string::<i32>().iter().collect::<Vec<_>>(), [Some("ann"), Some("bob")]);
    assert_eq!(col(&f, "orders").as_primitive::<Int64Type>().values(), &[2, 0]);
    assert_eq!(col(&f, "revenue").as_primitive::<Float64Type>().value(0), 15.0);
    assert_eq!(col(&f, "sends").as_primitive::<Int64Type>().values(), &[1, 1]);
    // Without --skip-null-ids the null key is refused, naming the flag.
    let o = with(&["--out", "g.parquet"]);
    assert_fails(&o, 3, &["null subscriber ids", "--skip-null-ids"], d, &["f.parquet", "mixed.parquet"]);
}

#[test]
fn event_order_and_file_split_do_not_change_the_features() {
    let dir = tempfile::tempdir().unwrap();
    ok(&run(
        &["generate-events", "--subscribers", "500", "--days", "120", "--out", "e.parquet", "--quiet"],
        dir.path(),
    ));
    let b = all_rows(&dir.path().join("e.parquet"));
    // Reverse the rows and split them over two files.
    let n = b.num_rows();
    let rev: Vec<u32> = (0..n as u32).rev().collect();
    let idx = arrow::array::UInt32Array::from(rev);
    let r = arrow::compute::take_record_batch(&b, &idx).unwrap();
    std::fs::create_dir(dir.path().join("split")).unwrap();
    let schema = r.schema();
    for (i, part) in [r.slice(0, n / 3), r.slice(n / 3, n - n / 3)].iter().enumerate() {
        let cols: Vec<(&str, ArrayRef)> =
            schema.fields().iter().enumerate().map(|(j, f)| (f.name().as_str(), part.column(j).clone())).collect();
        write_parquet(&dir.path().join(format!("split/{i}.parquet")), cols);
    }
    let args = |ev: &str, out: &str| {
        run(
            &[
                "features",
                "--events",
                ev,
                "--as-of",
                "2026-06-30",
                "--value-col",
                "value",
                "--category-col",
                "category",
                "--timezone-col",
                "timezone",
                "--out",
                out,
                "--quiet",
            ],
            dir.path(),
        )
    };
    ok(&args("e.parquet", "a.parquet"));
    ok(&args("split", "b.parquet"));
    let (a, c) = (all_rows(&dir.path().join("a.parquet")), all_rows(&dir.path().join("b.parquet")));
    assert_eq!(a.schema().fields(), c.schema().fields());
    for (j, field) in a.schema().fields().iter().enumerate() {
        let (x, y) = (a.column(j), c.column(j));
        if let (Some(x), Some(y)) = (x.as_primitive_opt::<Float64Type>(), y.as_primitive_opt::<Float64Type>()) {
            // Sums of floats (revenue, the hour vectors) may round differently in another order.
            for i in 0..x.len() {
                assert_eq!(x.is_null(i), y.is_null(i), "{}", field.name());
                let (u, v) = (x.value(i), y.value(i));
                assert!((u - v).abs() <= 1e-9 * u.abs().max(1.0), "{} row {i}: {u} against {v}", field.name());
            }
        } else {
            assert_eq!(x, y, "column {}", field.name());
        }
    }
}

#[test]
fn bad_event_logs_are_refused_with_the_column_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_log(d);
    let base = ["features", "--events", "log.parquet", "--as-of", "2024-11-23", "--out", "f.parquet"];
    let with = |extra: &[&str]| {
        let mut v: Vec<&str> = base.to_vec();
        v.extend_from_slice(extra);
        run(&v, d)
    };
    let keep = ["log.parquet"];
    assert_fails(&with(&["--id-col", "customer"]), 3, &["no subscriber id", "customer", "the columns are"], d, &keep);
    assert_fails(&with(&["--value-col", "event"]), 3, &["'event'", "numbers"], d, &keep);
    assert_fails(&with(&["--type-col", "value"]), 3, &["'value'", "must be text"], d, &keep);
    assert_fails(
        &with(&["--purchase-types", "order"]),
        3,
        &["unknown event type 'purchase'", "--ignore-types"],
        d,
        &keep,
    );
    let as_of = |t: &str| run(&["features", "--events", "log.parquet", "--as-of", t, "--out", "f.parquet"], d);
    assert_fails(&as_of("yesterday"), 2, &["--as-of", "not a time"], d, &keep);
    assert_fails(&as_of("2020-01-01"), 3, &["no events at or before"], d, &keep);
    assert_fails(&with(&["--predict"]), 2, &["--traits-out"], d, &keep);
    assert_fails(&with(&["--timezone", "Mars/Olympus"]), 2, &["not a time zone"], d, &keep);
    assert_fails(&with(&["--open-types", "open,send"]), 2, &["'send'", "--send-types", "--open-types"], d, &keep);

    let write = |name: &str, ts: ArrayRef, ev: Vec<Option<&str>>, val: Vec<Option<f64>>| {
        let n = ev.len() as i64;
        write_parquet(
            &d.join(name),
            vec![
                ("subscriber_id", Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef),
                ("timestamp", ts),
                ("event", Arc::new(StringArray::from(ev)) as ArrayRef),
                ("value", Arc::new(Float64Array::from(val)) as ArrayRef),
            ],
        );
    };
    let secs = |v: Vec<Option<i64>>| Arc::new(arrow::array::TimestampSecondArray::from(v)) as ArrayRef;
    let t0 = 1_700_000_000;
    write("nulls.parquet", secs(vec![Some(t0), None]), vec![Some("send"), Some("open")], vec![None, None]);
    write("future.parquet", secs(vec![Some(t0), Some(t0 + 400 * 365 * 86_400)]), vec![Some("send"); 2], vec![None; 2]);
    write("neg.parquet", secs(vec![Some(t0); 2]), vec![Some("purchase"); 2], vec![Some(5.0), Some(-3.0)]);
    write("nan.parquet", secs(vec![Some(t0); 2]), vec![Some("purchase"); 2], vec![Some(5.0), Some(f64::NAN)]);
    write("notype.parquet", secs(vec![Some(t0); 2]), vec![Some("send"), None], vec![None; 2]);
    write("empty.parquet", secs(vec![]), vec![], vec![]);
    let ms = Arc::new(Int64Array::from(vec![t0 * 1000, t0 * 1000])) as ArrayRef;
    write("millis.parquet", ms, vec![Some("send"); 2], vec![None; 2]);
    // Before 1900: a wrong unit or a corrupt column. Far enough back, the day number wrapped
    // round the per-subscriber bitmaps and indexed out of bounds (a fuzzing crash).
    write("old.parquet", secs(vec![Some(t0), Some(-4_000_000_000)]), vec![Some("send"); 2], vec![None; 2]);
    write("ancient.parquet", secs(vec![Some(t0), Some(i64::MIN / 2)]), vec![Some("open"); 2], vec![None; 2]);
    let all = [
        "log.parquet",
        "nulls.parquet",
        "future.parquet",
        "neg.parquet",
        "nan.parquet",
        "notype.parquet",
        "empty.parquet",
        "millis.parquet",
        "old.parquet",
        "ancient.parquet",
    ];
    let on = |file: &str| {
        run(&["features", "--events", file, "--as-of", "2023-12-31", "--value-col", "value", "--out", "f.parquet"], d)
    };
    assert_fails(&on("nulls.parquet"), 3, &["nulls.parquet", "'timestamp'", "1 null timestamps"], d, &all);
    assert_fails(&on("future.parquet"), 3, &["future.parquet", "in the future"], d, &all);
    assert_fails(&on("neg.parquet"), 3, &["neg.parquet", "'value'", "negative value (-3)"], d, &all);
    assert_fails(&on("nan.parquet"), 3, &["nan.parquet", "NaN"], d, &all);
    assert_fails(&on("notype.parquet"), 3, &["notype.parquet", "null event types"], d, &all);
    assert_fails(&on("empty.parquet"), 3, &["empty.parquet", "no rows"], d, &all);
    assert_fails(&on("millis.parquet"), 3, &["millis.parquet", "in the future", "milliseconds"], d, &all);
    assert_fails(&on("old.parquet"), 3, &["old.parquet", "'timestamp'", "1843-", "before 1900"], d, &all);
    assert_fails(&on("ancient.parquet"), 3, &["ancient.parquet", "'timestamp'", "before 1900"], d, &all);
    // An existing output is kept, and the command says how to replace it.
    std::fs::write(d.join("f.parquet"), b"precious").unwrap();
    let o = run(&["features", "--events", "log.parquet", "--as-of", "2024-11-23", "--out", "f.parquet"], d);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(std::fs::read(d.join("f.parquet")).unwrap(), b"precious");
}

#[test]
fn segment_names_speak_of_the_predictive_traits() {
    use microseg::segments::profile::{Distinction, generate_name, name_with_noun};
    let d = |f: &str, z: f64| Distinction { feature: f.into(), std_diff: z, direction: String::new() };
    assert_eq!(generate_name(&[d("clv_90d", 1.4), d("churn_probability", 1.1)]), "high-value, at-risk customers");
    assert_eq!(generate_name(&[d("p_alive", -1.2), d("days_since_last_open", 0.9)]), "at-risk, lapsed customers");
    assert_eq!(generate_name(&[d("fatigued", 2.0), d("open_rate_trend", -1.0)]), "fatigued, cooling customers");
    assert_eq!(generate_name(&[d("expected_purchases_90d", 1.0)]), "likely-to-buy customers");
    assert_eq!(
        generate_name(&[d("median_engagement_gap_days", -1.0), d("max_sends_per_week", 1.0)]),
        "habitual, send-tolerant customers"
    );
    assert_eq!(generate_name(&[d("median_purchase_gap_days", 0.8)]), "slow-repurchasing customers");
    assert_eq!(
        name_with_noun(&[d("churn_probability", 0.9)], "weekly-digest readers"),
        "at-risk weekly-digest readers"
    );
    assert_eq!(name_with_noun(&[d("churn_probability", 0.1)], "daily readers"), "daily readers");
    assert_eq!(generate_name(&[d("opens_90d", 1.0), d("clicks_90d", 0.9)]), "engaged customers");
}

#[test]
fn segments_dominated_by_a_cadence_class_are_named_after_it() {
    // Planted cadences (daily, weekly, monthly, sporadic) separate on the engagement days;
    // with `cadence` as an outcome, a segment where one class is the majority (and 1.25×
    // its population share) is named "<class> readers".
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&run(&["generate-events", "--subscribers", "3000", "--seed", "5", "--out", "e.parquet", "--quiet"], d));
    ok(&run(&["features", "--events", "e.parquet", "--as-of", "2026-06-30", "--out", "f.parquet", "--quiet"], d));
    ok(&run(
        &[
            "segment",
            "f.parquet",
            "--k",
            "4",
            "--features",
            "engaged_days_365d,opens_90d",
            "--log1p",
            "engaged_days_365d,opens_90d",
            "--outcomes",
            "cadence",
            "--out-dir",
            "seg",
            "--quiet",
        ],
        d,
    ));
    let p = json(&d.join("seg/profile.json"));
    let mut named = std::collections::BTreeSet::new();
    for s in p["segments"].as_array().unwrap() {
        let name = s["generated_name"].as_str().unwrap();
        let mix = s["outcomes"].as_array().unwrap().iter().find(|o| o["column"] == "cadence").unwrap();
        let (top, share) = (mix["top"][0][0].as_str().unwrap(), mix["top"][0][1].as_f64().unwrap());
        let noun = match top {
            "weekly" => "weekly-digest readers".to_string(),
            other => format!("{other} readers"),
        };
        if name.ends_with(&noun) {
            assert!(share > 0.5, "{name}: {top} is {share} of the segment");
            named.insert(top.to_string());
        } else {
            assert!(!name.ends_with("readers"), "{name}, where {top} is {share}");
        }
    }
    assert!(named.len() >= 3, "cadence nouns only for {named:?}");
}

#[test]
fn a_bgnbd_fit_on_a_flat_ridge_is_flagged_in_the_traits_and_the_log() {
    // Online Retail's buyers show almost no dropout: the optimum runs to a → 0, where the
    // likelihood is flat (the optimiser still reports convergence).
    let dir = tempfile::tempdir().unwrap();
    let events = repo().join("datasets/online_retail_events.parquet");
    let o = predict_weekly(&events, "2011-12-09", &[], dir.path());
    ok(&o);
    let b = &json(&dir.path().join("t.json"))["bgnbd"];
    assert!(b["a"].as_f64().unwrap() < 0.01, "{b}");
    let weak: Vec<&str> = b["weakly_identified"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(weak.iter().any(|w| w.starts_with("a = ")), "{weak:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("warning: the BG/NBD fit sits on a flat ridge") && stderr.contains("a = "), "{stderr}");
}

#[test]
fn a_degenerate_likelihood_ends_the_fit_unconverged_instead_of_searching_forever() {
    // An order value at the top of f64 makes every step of the line search non-finite;
    // argmin's More-Thuente search has no step limit of its own and stepped for ever (a
    // fuzzing timeout). The evaluation budget ends it: the fit returns, not converged.
    let g = microseg::events::btyd::fit_gamma_gamma(&[(1, 1.0), (3, f64::MAX)]).unwrap();
    assert!(!g.convergence.converged, "{g:?}");
    assert!(g.convergence.reason.contains("likelihood evaluations"), "{g:?}");

    // Through the command: the traits record it and the log warns, and the run succeeds.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("log.parquet");
    let day = |d: i64| (20_000 + d) * 86_400 + 9 * 3600;
    let rows: Vec<(i64, i64, &str, Option<f64>)> =
        [(1, 0, 10.0), (1, 7, 1.0e308), (2, 1, 5.0), (2, 9, 6.0), (3, 2, 4.0)]
            .into_iter()
            .map(|(id, d, v)| (id, day(d), "purchase", Some(v)))
            .collect();
    write_log(&p, &rows);
    let o = predict_weekly(&p, "2024-11-01", &[], dir.path());
    ok(&o);
    let gg = &json(&dir.path().join("t.json"))["gamma_gamma"];
    assert_eq!(gg["convergence"]["converged"], false, "{gg}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("warning: the Gamma-Gamma fit did not converge"), "{stderr}");
}
