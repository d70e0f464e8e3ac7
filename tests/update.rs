//! `microseg update`: folding a stream of new rows into a model lands near a refit of
//! everything seen; forgetting follows a moving segment; ids, names and lineage are
//! kept; segments that widen or shrink are reported; the command line's contract.

use microseg::backend::cpu::CpuBackend;
use microseg::features::{Matrix, Scale};
use microseg::model::Model;
use microseg::pipeline::{self, FitConfig, Forgetting, UpdateConfig};
use tempfile::TempDir;

use crate::util::{blobs, d2, json, matrix_dataset, ok, run, table};

fn chunk(x: &Matrix, from: usize, to: usize) -> Matrix {
    Matrix::new(x.data[from * x.dim..to * x.dim].to_vec(), x.dim)
}

/// Rows in model space are the rows themselves under `Scale::None`, so models fitted on
/// different rows can be compared on one objective.
fn config(k: usize, seed: u64) -> FitConfig {
    FitConfig { k, scale: Scale::None, n_init: 3, seed, ..Default::default() }
}

/// The inertia of a model's centroids on `x` (every row to its nearest centroid).
fn inertia(model: &Model, x: &Matrix) -> f64 {
    let cpu = CpuBackend::default();
    let s = pipeline::partial_stats_of(&x.data, None, &model.centroids(), &cpu).unwrap();
    s.sse.iter().sum()
}

/// For each centroid of `a`, the distance to the nearest of `b`; the largest of them.
fn worst_match(a: &Model, b: &Model) -> f64 {
    let (ca, cb) = (a.centroids(), b.centroids());
    (0..ca.k)
        .map(|i| (0..cb.k).map(|j| d2(ca.row(i), cb.row(j))).fold(f64::INFINITY, f64::min).sqrt())
        .fold(0.0, f64::max)
}

/// Shuffle rows (blobs cycles through its clusters; a stream arrives in any order).
fn shuffled(x: Matrix, seed: u64) -> Matrix {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut order: Vec<usize> = (0..x.n()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    Matrix::new(order.iter().flat_map(|&i| x.row(i).iter().copied()).collect(), x.dim)
}

#[test]
fn repeated_updates_land_near_a_refit_of_everything() {
    let cpu = CpuBackend::default();
    // Well separated, touching and overlapping clusters.
    for (spread, seed) in [(12.0f32, 1u64), (5.0, 2), (2.5, 3), (1.0, 4), (0.5, 5)] {
        let (k, chunks, per) = (8, 8, 6_000);
        let x = shuffled(blobs(chunks * per, 6, k, spread, seed), seed);
        let (mut model, _) = pipeline::fit(&matrix_dataset(&chunk(&x, 0, per)), &config(k, seed), &cpu).unwrap();
        for c in 1..chunks {
            let (m, r) = pipeline::update_model(
                &model,
                &matrix_dataset(&chunk(&x, c * per, (c + 1) * per)),
                &UpdateConfig::default(),
                &cpu,
            )
            .unwrap();
            assert_eq!(r.rows_used, per as u64);
            assert!(r.new_rows_mse_after <= r.new_rows_mse_before * (1.0 + 1e-9));
            model = m;
        }
        let (full, _) = pipeline::fit(&matrix_dataset(&x), &config(k, seed), &cpu).unwrap();
        let (ours, reference) = (inertia(&model, &x), inertia(&full, &x));
        assert!(ours <= reference * 1.01, "spread {spread}: updated {ours} vs refit {reference}");
        // The stored objective accounts for every row seen, moved with its segment.
        let stored = model.manifest.objective;
        assert!(stored >= ours * (1.0 - 1e-6) && stored <= ours * 1.05, "stored {stored}, actual {ours}");
        let sizes: u64 = model.segments.iter().map(|s| s.size).sum();
        assert_eq!(sizes, (chunks * per) as u64);
        assert_eq!(model.updates.len(), chunks - 1);
        if spread >= 5.0 {
            // Clear clusters: the same centroids, within a tenth of the noise.
            let w = worst_match(&full, &model);
            assert!(w < 0.1, "spread {spread}: centroids {w} apart");
        }
    }
}

#[test]
fn forgetting_follows_a_segment_that_moves() {
    let cpu = CpuBackend::default();
    let (k, per) = (4, 4_000);
    let base = blobs(per * 6, 3, k, 20.0, 9);
    // Every batch, each cluster moves by 1 along the first feature.
    let batch = |t: usize| {
        let mut m = chunk(&base, t * per, (t + 1) * per);
        m.data.chunks_exact_mut(3).for_each(|r| r[0] += t as f32);
        m
    };
    let (start, _) = pipeline::fit(&matrix_dataset(&batch(0)), &config(k, 9), &cpu).unwrap();
    let follow = |forgetting: Forgetting| {
        let mut m = start.clone();
        for t in 1..6 {
            let cfg = UpdateConfig { forgetting, ..Default::default() };
            m = pipeline::update_model(&m, &matrix_dataset(&batch(t)), &cfg, &cpu).unwrap().0;
        }
        m
    };
    let (now, _) = pipeline::fit(&matrix_dataset(&batch(5)), &config(k, 9), &cpu).unwrap();
    let kept = worst_match(&now, &follow(Forgetting::Decay(1.0)));
    let forgot = worst_match(&now, &follow(Forgetting::HalfLifeRows(per as f64 / 4.0)));
    // Keeping everything lags by about half the path travelled (2.5); forgetting fast,
    // by a fraction of one step.
    assert!(kept > 1.5, "decay 1 lags by {kept}");
    assert!(forgot < 0.3, "half-life of a quarter batch lags by {forgot}");
    let m = follow(Forgetting::HalfLifeRows(per as f64));
    assert!((m.updates[0].decay - 0.5).abs() < 1e-12, "one half-life: {}", m.updates[0].decay);
}

#[test]
fn ids_names_and_lineage_are_kept_and_changes_reported() {
    let cpu = CpuBackend::default();
    let (k, per) = (4, 4_000);
    let x = blobs(per * 2, 2, k, 30.0, 4);
    let (mut model, _) = pipeline::fit(&matrix_dataset(&chunk(&x, 0, per)), &config(k, 4), &cpu).unwrap();
    for (i, s) in model.segments.iter_mut().enumerate() {
        s.id = 10 + i as u32;
        s.name = Some(format!("segment {i}"));
    }
    // New rows: the segment nearest the first point of the batch gets them widened ×4,
    // and the one of the second point gets none.
    let centroids = model.centroids();
    let nearest =
        |row: &[f32]| (0..k).min_by(|a, b| d2(row, centroids.row(*a)).total_cmp(&d2(row, centroids.row(*b)))).unwrap();
    let mut fresh = chunk(&x, per, 2 * per);
    let wide = nearest(fresh.row(0));
    let gone = (0..k).find(|j| *j != wide).unwrap();
    let mut rows = Vec::new();
    for i in 0..fresh.n() {
        let j = nearest(fresh.row(i));
        if j == gone {
            continue;
        }
        let r = fresh.data[i * 2..i * 2 + 2].to_vec();
        let c = centroids.row(j);
        rows.extend(if j == wide { r.iter().zip(c).map(|(v, c)| c + 4.0 * (v - c)).collect() } else { r });
    }
    fresh = Matrix::new(rows, 2);
    let cfg = UpdateConfig { forgetting: Forgetting::Decay(0.02), ..Default::default() };
    let (up, r) = pipeline::update_model(&model, &matrix_dataset(&fresh), &cfg, &cpu).unwrap();
    for (a, b) in up.segments.iter().zip(&model.segments) {
        assert_eq!((a.id, &a.name), (b.id, &b.name));
    }
    let lineage = up.lineage.as_ref().unwrap();
    assert_eq!(lineage.previous_model.as_deref(), Some(model.fingerprint().as_str()));
    assert!(lineage.entries.iter().all(|e| e.previous == Some(e.id)));
    let change = |j: usize| r.segments.iter().find(|c| c.id == 10 + j as u32).unwrap();
    assert!(change(wide).flags.contains(&"wider".to_string()), "{:?}", change(wide));
    assert!(change(gone).flags.contains(&"small".to_string()), "{:?}", change(gone));
    assert_eq!(change(gone).new_rows, 0);
    assert!(r.flagged.contains(&(10 + wide as u32)) && r.flagged.contains(&(10 + gone as u32)));
    // The segment that got no rows keeps its centroid; the report's PSI sees the shift.
    assert_eq!(up.segments[gone].centroid, model.segments[gone].centroid);
    assert!(r.segment_psi > 0.25, "PSI {}", r.segment_psi);
    // The updated model is a model: it validates, round-trips and drift reads it.
    up.validate().unwrap();
    let text = serde_json::to_string(&up).unwrap();
    assert_eq!(serde_json::from_str::<Model>(&text).unwrap(), up);
    pipeline::drift(&up, &matrix_dataset(&fresh), Default::default(), &cpu).unwrap();
    // Widening is measured against the fit, not only the last update.
    let again = pipeline::update_model(&up, &matrix_dataset(&fresh), &cfg, &cpu).unwrap().1;
    assert!(again.segments.iter().find(|c| c.id == 10 + wide as u32).unwrap().flags.contains(&"wider".to_string()));
}

#[test]
fn the_command_writes_the_model_and_report_and_chains_dates() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    table(p, "a.parquet", 3_000);
    table(p, "b.parquet", 800);
    ok(&run(&["fit", "a.parquet", "--k", "3", "--model", "m.json", "--quiet"], p));
    let before = std::fs::read(p.join("m.json")).unwrap();
    let o = run(
        &[
            "update",
            "--model",
            "m.json",
            "b.parquet",
            "--out",
            "m1.json",
            "--report",
            "r.json",
            "--as-of",
            "2026-01-01",
            "--json",
        ],
        p,
    );
    ok(&o);
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["status"], "ok");
    assert_eq!(line["rows_used"], 800);
    assert_eq!(std::fs::read(p.join("m.json")).unwrap(), before, "the input model is never changed");
    let m1 = json(&p.join("m1.json"));
    assert_eq!(m1["updates"][0]["as_of"], "2026-01-01");
    assert_eq!(json(&p.join("r.json"))["segments"].as_array().unwrap().len(), 3);
    // Thirty days later with a thirty-day half-life: the past weighs half.
    ok(&run(
        &[
            "update",
            "--model",
            "m1.json",
            "b.parquet",
            "--out",
            "m2.json",
            "--half-life-days",
            "30",
            "--as-of",
            "2026-01-31",
            "--quiet",
        ],
        p,
    ));
    let m2 = json(&p.join("m2.json"));
    let schema = json(&crate::util::repo().join("schemas/model.schema.json"));
    let v = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = v.iter_errors(&m2).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "the updated model breaks schemas/model.schema.json: {errors:?}");
    assert!((m2["updates"][1]["decay"].as_f64().unwrap() - 0.5).abs() < 1e-12);
    assert_eq!(m2["updates"][1]["forgetting"], "half-life-days");
    // The later commands take the updated model.
    ok(&run(&["assign", "--model", "m2.json", "b.parquet", "--out", "s.parquet", "--quiet"], p));
    let o = run(&["drift", "--model", "m2.json", "b.parquet", "--quiet"], p);
    assert!(matches!(o.status.code(), Some(0 | 10 | 11)), "{}", String::from_utf8_lossy(&o.stderr));
    // A date before the last update's is refused.
    let o = run(
        &[
            "update",
            "--model",
            "m2.json",
            "b.parquet",
            "--out",
            "m3.json",
            "--half-life-days",
            "30",
            "--as-of",
            "2025-12-01",
        ],
        p,
    );
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!p.join("m3.json").exists());
}

#[test]
fn cosine_models_keep_unit_centroids() {
    let cpu = CpuBackend::default();
    let x = blobs(6_000, 4, 3, 5.0, 8);
    let cfg = FitConfig { metric: microseg::model::Metric::Cosine, ..config(3, 8) };
    let (model, _) = pipeline::fit(&matrix_dataset(&chunk(&x, 0, 3_000)), &cfg, &cpu).unwrap();
    let (up, r) =
        pipeline::update_model(&model, &matrix_dataset(&chunk(&x, 3_000, 6_000)), &UpdateConfig::default(), &cpu)
            .unwrap();
    assert!(r.converged);
    for s in &up.segments {
        let norm = s.centroid.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "segment {} has norm {norm}", s.id);
    }
}
