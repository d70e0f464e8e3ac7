//! The distributed fit's pieces driven in-process over 8 partitions, as Spark tasks
//! drive them: the same labels and centroids (within 1e-6 relative) as the single-node
//! fit from the same start, empty clusters re-seeded by the same rule, the model usable
//! by every command.

use microseg::backend::Centroids;
use microseg::backend::cpu::CpuBackend;
use microseg::io::Dataset;
use microseg::pipeline::distributed::{self, Plan};
use microseg::pipeline::{self, AssignConfig, FitConfig, InitSpec};

use crate::util::repo;

/// The shipped table cut into `parts` partitions of uneven size (one of them empty).
fn partitions(parts: usize) -> (Dataset, Vec<Dataset>) {
    let path = repo().join("datasets/online_retail_customers.parquet");
    let whole = Dataset::open(std::slice::from_ref(&path)).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap().with_batch_size(1 << 20);
    let schema = r.schema().clone();
    let batch =
        arrow::compute::concat_batches(&schema, &r.build().unwrap().map(|b| b.unwrap()).collect::<Vec<_>>()).unwrap();
    let n = batch.num_rows();
    let mut cuts: Vec<usize> = (0..parts).map(|i| (i * i * n) / (parts * parts)).collect();
    cuts.push(n);
    if parts > 2 {
        cuts[2] = cuts[1]; // an empty partition
    }
    let ds = (0..parts)
        .map(|i| {
            Dataset::from_batches(
                &format!("part-{i}"),
                schema.clone(),
                vec![batch.slice(cuts[i], cuts[i + 1] - cuts[i])],
            )
            .unwrap()
        })
        .collect();
    (whole, ds)
}

/// The driver's and the tasks' protocol, in one process.
fn fit_distributed(cfg: &FitConfig, parts: &[Dataset], sample: &Dataset) -> (microseg::model::Model, usize) {
    let cpu = CpuBackend::default();
    let plan = Plan::new(&parts[0], cfg.clone()).unwrap();
    let moments: Vec<_> = parts.iter().map(|p| plan.moments(p).unwrap()).collect();
    let scaling = plan.scaling(&moments).unwrap();
    let mut offset = 0;
    let mut tasks: Vec<_> = parts
        .iter()
        .map(|p| {
            let t = plan.partition(&scaling, p, offset).unwrap();
            offset += t.rows() as u64;
            t
        })
        .collect();
    let mut c = plan.initial_centroids(&scaling, Some(sample)).unwrap();
    let (mut iterations, mut converged, mut relocations) = (0, false, 0);
    while iterations < cfg.max_iter {
        let stats: Vec<_> = tasks.iter_mut().map(|t| t.step(&c, &cpu).unwrap()).collect();
        // Through JSON, as allGather carries them.
        let stats: Vec<distributed::PartStats> =
            stats.iter().map(|s| serde_json::from_str(&serde_json::to_string(s).unwrap()).unwrap()).collect();
        let mut merged = distributed::merge(&stats).unwrap();
        let empty = distributed::empty_clusters(&merged);
        if empty > 0 {
            let cands: Vec<_> = tasks.iter_mut().map(|t| t.candidates(empty)).collect();
            relocations += distributed::relocate(&mut merged, &cands);
        }
        let (next, _, done) = distributed::update(&merged, &c, cfg.metric, scaling.tol_scaled);
        c = next;
        iterations += 1;
        if done {
            converged = true;
            break;
        }
    }
    let total = scaling.rows_used;
    let finals: Vec<_> = tasks.iter_mut().map(|t| t.finish(&c, total, &cpu).unwrap()).collect();
    // Through JSON too, as each task's row of the stage's result carries them; the
    // words of the baseline's sample come back bit for bit.
    let finals: Vec<distributed::PartFinal> = finals
        .iter()
        .map(|f| {
            let back: distributed::PartFinal = serde_json::from_str(&serde_json::to_string(f).unwrap()).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                (bits(&back.rows), bits(&back.dist), bits(&back.second)),
                (bits(&f.rows), bits(&f.dist), bits(&f.second))
            );
            assert_eq!(back.labels, f.labels);
            back
        })
        .collect();
    let (m, _) = plan.assemble(&scaling, c, &finals, iterations, converged, relocations, &cpu, 0.0).unwrap();
    (m, relocations)
}

/// A final pass that does not fit together (cut short, or not base64) is refused with a
/// message, not a panic.
#[test]
fn a_malformed_final_pass_is_refused() {
    let (whole, parts) = partitions(2);
    let cfg = FitConfig { k: 3, seed: 1, max_iter: 3, ..Default::default() };
    let cpu = CpuBackend::default();
    let plan = Plan::new(&parts[0], cfg.clone()).unwrap();
    let moments: Vec<_> = parts.iter().map(|p| plan.moments(p).unwrap()).collect();
    let scaling = plan.scaling(&moments).unwrap();
    let mut task = plan.partition(&scaling, &whole, 0).unwrap();
    let c = plan.initial_centroids(&scaling, Some(&whole)).unwrap();
    let good = task.finish(&c, scaling.rows_used, &cpu).unwrap();
    let mut short = good.clone();
    short.rows.pop();
    let mut label = good.clone();
    label.labels[0] = 3;
    for bad in [short, label] {
        let e = plan.assemble(&scaling, c.clone(), &[bad], 0, false, 0, &cpu, 0.0).unwrap_err();
        assert!(e.to_string().contains("final pass"), "{e}");
    }
    let mut text: serde_json::Value = serde_json::to_value(&good).unwrap();
    text["rows"] = serde_json::Value::String("not base64!".into());
    assert!(serde_json::from_value::<distributed::PartFinal>(text.clone()).is_err());
    text["rows"] = serde_json::Value::String("AAA=".into());
    let e = serde_json::from_value::<distributed::PartFinal>(text).unwrap_err();
    assert!(e.to_string().contains("4-byte words"), "{e}");
}

fn labels(model: &microseg::model::Model, ds: &Dataset) -> Vec<i32> {
    let mut sink = (None, Vec::new());
    pipeline::assign(model, ds, &AssignConfig::default(), &CpuBackend::default(), &mut sink).unwrap();
    sink.1
        .iter()
        .flat_map(|b| {
            use arrow::array::AsArray;
            b.column(1).as_primitive::<arrow::datatypes::Int32Type>().values().to_vec()
        })
        .collect()
}

#[test]
fn eight_partitions_fit_what_one_machine_fits_from_the_same_start() {
    let (whole, parts) = partitions(8);
    let cpu = CpuBackend::default();
    let base = FitConfig { k: 7, log1p: vec!["monetary".into(), "frequency".into()], seed: 4, ..Default::default() };
    // A k-means++ start in model space.
    let start: Vec<f32> = {
        let p = Plan::new(&whole, base.clone()).unwrap();
        let s = p.scaling(&[p.moments(&whole).unwrap()]).unwrap();
        p.initial_centroids(&s, Some(&whole)).unwrap().data
    };
    let cfg = FitConfig { init: InitSpec::Centroids(start), ..base };
    let (single, _) = pipeline::fit(&whole, &cfg, &cpu).unwrap();
    let (dist, _) = fit_distributed(&cfg, &parts, &whole);
    assert_eq!(dist.manifest.iterations, single.manifest.iterations);
    assert_eq!(dist.manifest.rows_used, single.manifest.rows_used);
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-12);
    for (a, b) in dist.features.iter().zip(&single.features) {
        assert!(rel(a.center, b.center) < 1e-9 && rel(a.scale, b.scale) < 1e-9, "{a:?} vs {b:?}");
    }
    for (a, b) in dist.segments.iter().zip(&single.segments) {
        assert_eq!(a.size, b.size, "segment {}", a.id);
        for (x, y) in a.centroid.iter().zip(&b.centroid) {
            assert!((x - y).abs() as f64 <= 1e-6 * (y.abs() as f64).max(1.0), "segment {}: {x} vs {y}", a.id);
        }
    }
    assert!(rel(dist.manifest.objective, single.manifest.objective) < 1e-6);
    assert_eq!(labels(&dist, &whole), labels(&single, &whole));
    // The model is a model.
    dist.validate().unwrap();
    let text = serde_json::to_string(&dist).unwrap();
    microseg::model::Model::validate(&serde_json::from_str(&text).unwrap()).unwrap();
}

#[test]
fn empty_clusters_are_reseeded_as_on_one_machine() {
    let (whole, parts) = partitions(8);
    let cpu = CpuBackend::default();
    // Two centroids far outside the data: they empty at once and must be re-seeded.
    let p = Plan::new(&whole, FitConfig { k: 5, ..Default::default() }).unwrap();
    let s = p.scaling(&[p.moments(&whole).unwrap()]).unwrap();
    let mut start = Plan::new(&whole, FitConfig { k: 3, seed: 2, ..Default::default() })
        .unwrap()
        .initial_centroids(&s, Some(&whole))
        .unwrap()
        .data;
    let dim = p.dim();
    start.extend(std::iter::repeat_n(500.0, dim));
    start.extend(std::iter::repeat_n(-500.0, dim));
    let cfg = FitConfig { k: 5, init: InitSpec::Centroids(start.clone()), ..Default::default() };
    let (single, _) = pipeline::fit(&whole, &cfg, &cpu).unwrap();
    let (dist, relocations) = fit_distributed(&cfg, &parts, &whole);
    assert!(relocations >= 2, "{relocations} relocations");
    assert_eq!(dist.manifest.empty_cluster_relocations, single.manifest.empty_cluster_relocations);
    assert_eq!(labels(&dist, &whole), labels(&single, &whole));
    let _ = Centroids::new(start, dim);
}
