//! The library API alone, no command line: fit a model on the shipped Online Retail
//! customers, save it, assign every customer, and take one Lloyd step by hand from
//! mergeable statistics (what a distributed driver does per partition).
//!
//! cargo run --release --example fit_and_assign

use microseg::backend::cpu::CpuBackend;
use microseg::io::Dataset;
use microseg::pipeline::{self, AssignConfig, FitConfig};

fn main() -> microseg::Result<()> {
    let data = Dataset::open(&["datasets/online_retail_customers.parquet".into()])?;
    let backend = CpuBackend::default();
    let cfg = FitConfig { k: 8, log1p: vec!["monetary".into(), "frequency".into()], ..Default::default() };
    let (model, report) = pipeline::fit(&data, &cfg, &backend)?;
    println!(
        "fitted k = {} on {} rows in {} iterations, inertia {:.1}",
        model.k, report.n_rows, report.iterations, report.inertia
    );

    // Assign into batches in memory (any `BatchSink` works: a Parquet file, a stream).
    let mut batches = (None, Vec::new());
    let assigned = pipeline::assign(&model, &data, &AssignConfig::default(), &backend, &mut batches)?;
    println!("assigned {} rows; per segment: {:?}", assigned.n_rows, assigned.segment_counts);

    // One Lloyd step on statistics that merge by addition: two halves, merged.
    let mut stats = pipeline::partial_stats(&model, &data, &backend)?;
    let again = pipeline::partial_stats(&model, &data, &backend)?;
    stats.merge(&again);
    let next = pipeline::update(&model, &stats)?;
    let moved: f32 = next.data.iter().zip(&model.centroids().data).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    println!("a converged model's next Lloyd step moves its centroids by at most {moved:.2e}");
    Ok(())
}
