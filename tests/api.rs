//! The library API used directly (no binary): the same rows give the same model from a
//! Parquet file and from batches in memory; one Lloyd step from merged statistics;
//! the `ndarray` edges; configuration checked before data is read.

use std::sync::Arc;

use microseg::backend::cpu::CpuBackend;
use microseg::io::Dataset;
use microseg::pipeline::{self, AssignConfig, FitConfig};

use crate::util::repo;

fn retail() -> Dataset {
    Dataset::open(&[repo().join("datasets/online_retail_customers.parquet")]).unwrap()
}

/// The shipped table as Arrow batches in memory, cut into uneven pieces.
fn retail_in_memory() -> Dataset {
    let f = std::fs::File::open(repo().join("datasets/online_retail_customers.parquet")).unwrap();
    let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap().with_batch_size(777);
    let schema = r.schema().clone();
    let batches: Vec<_> = r.build().unwrap().map(|b| b.unwrap()).collect();
    assert!(batches.len() > 1);
    Dataset::from_batches("<table>", schema, batches).unwrap()
}

fn config() -> FitConfig {
    FitConfig { k: 6, log1p: vec!["monetary".into(), "frequency".into()], ..Default::default() }
}

#[test]
fn in_memory_batches_fit_the_same_model_as_the_file() {
    let cpu = CpuBackend::default();
    let (a, ra) = pipeline::fit(&retail(), &config(), &cpu).unwrap();
    let (b, rb) = pipeline::fit(&retail_in_memory(), &config(), &cpu).unwrap();
    assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
    assert_eq!((ra.iterations, ra.inertia), (rb.iterations, rb.inertia));
    // Assignments agree too, batch layout aside.
    let collect = |ds: &Dataset| {
        let mut sink = (None, Vec::new());
        pipeline::assign(&a, ds, &AssignConfig::default(), &cpu, &mut sink).unwrap();
        let batches: Vec<_> = sink.1;
        arrow::compute::concat_batches(&sink.0.unwrap(), &batches).unwrap()
    };
    assert_eq!(collect(&retail()), collect(&retail_in_memory()));
}

#[test]
fn one_lloyd_step_from_merged_partition_statistics() {
    let cpu = CpuBackend::default();
    let cfg = FitConfig { max_iter: 3, tol: 0.0, ..config() };
    let (model, _) = pipeline::fit(&retail(), &cfg, &cpu).unwrap();
    // Two "partitions" of the data, their statistics merged, against the whole.
    let mem = retail_in_memory();
    let Dataset { schema, .. } = mem.clone();
    let all: Vec<_> = {
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        mem.batches(&names).unwrap().map(|b| b.unwrap().batch).collect()
    };
    let half = all.len() / 2;
    let p1 = Dataset::from_batches("p1", schema.clone(), all[..half].to_vec()).unwrap();
    let p2 = Dataset::from_batches("p2", schema.clone(), all[half..].to_vec()).unwrap();
    let whole = pipeline::partial_stats(&model, &mem, &cpu).unwrap();
    let mut merged = pipeline::partial_stats(&model, &p1, &cpu).unwrap();
    merged.merge(&pipeline::partial_stats(&model, &p2, &cpu).unwrap());
    assert_eq!(merged.count, whole.count);
    for (a, b) in merged.sum.iter().zip(&whole.sum) {
        assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} vs {b}");
    }
    // The update is the weighted mean of each segment's members (model space).
    let next = pipeline::update(&model, &merged).unwrap();
    for j in 0..model.k {
        for p in 0..model.dim() {
            let want = whole.sum[j * model.dim() + p] / whole.weight[j];
            let got = next.row(j)[p] as f64;
            assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "segment {j} feature {p}: {got} vs {want}");
        }
    }
}

#[test]
fn ndarray_in_and_out() {
    let cpu = CpuBackend::default();
    let x = ndarray::Array2::from_shape_fn((300, 2), |(i, j)| ((i % 3) * 10 + j) as f32 + (i as f32 * 0.001));
    let cfg = FitConfig { k: 3, ..Default::default() };
    let (model, report) = pipeline::fit_array(x.view(), None, &cfg, &cpu).unwrap();
    assert_eq!(report.n_rows, 300);
    assert_eq!(model.features.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["x0", "x1"]);
    let (seg, dist) = model.assign_array(x.view(), &cpu).unwrap();
    assert_eq!(seg.len(), 300);
    // Rows of the same blob share a segment; the three blobs get three segments.
    for i in 3..300 {
        assert_eq!(seg[i], seg[i % 3], "row {i}");
    }
    let mut ids: Vec<i32> = seg.iter().take(3).copied().collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    assert!(dist.iter().all(|d| d.is_finite() && *d >= 0.0));
    let wrong = ndarray::Array2::<f32>::zeros((5, 3));
    assert!(model.assign_array(wrong.view(), &cpu).is_err());
}

#[test]
fn configuration_is_checked_before_any_data_is_read() {
    let cpu = CpuBackend::default();
    let missing = Dataset::from_batches("<none>", Arc::new(arrow::datatypes::Schema::empty()), vec![]).unwrap();
    for (cfg, needle) in [
        (FitConfig { k: 0, ..Default::default() }, "--k"),
        (FitConfig { max_iter: 0, ..Default::default() }, "--max-iter"),
        (FitConfig { tol: f64::NAN, ..Default::default() }, "--tol"),
        (FitConfig { embedding_weight: Some(-1.0), ..Default::default() }, "--embedding-weight"),
    ] {
        let e = pipeline::fit(&missing, &cfg, &cpu).unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
        assert_eq!(e.exit_code(), microseg::ExitCode::Usage);
    }
}
