//! Shared helpers: seeded data, f64 references, loading fixtures.

use std::path::{Path, PathBuf};

use microseg::features::{self, Matrix, MissingPolicy, Scale};
use microseg::io::Dataset;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Gaussian blobs: `k` centres spread by `spread`, unit noise, seeded.
pub fn blobs(n: usize, dim: usize, k: usize, spread: f32, seed: u64) -> Matrix {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<f32> = (0..k * dim).map(|_| spread * (rng.random::<f32>() * 2.0 - 1.0)).collect();
    let mut data = Vec::with_capacity(n * dim);
    for i in 0..n {
        let c = i % k;
        for f in 0..dim {
            // Sum of uniforms: cheap, bell-shaped noise.
            let noise: f32 = (0..4).map(|_| rng.random::<f32>() - 0.5).sum();
            data.push(centres[c * dim + f] + noise);
        }
    }
    Matrix::new(data, dim)
}

/// Squared distance in f64 by differences (the reference).
pub fn d2(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum()
}

/// Load named columns of a Parquet file as a matrix, unscaled, with optional weights.
pub fn load(path: &Path, features: &[&str], weight: Option<&str>) -> (Matrix, Option<Vec<f32>>) {
    let ds = Dataset::open(&[path.to_path_buf()]).unwrap();
    let names: Vec<String> = features.iter().map(|s| s.to_string()).collect();
    let cols = features::select_columns(&ds, Some(&names), &[], &[], &[]).unwrap();
    let t = features::load_training(&ds, &cols, weight, MissingPolicy::Error).unwrap();
    let tf = features::fit_transforms(&t.matrix, &cols, Scale::None, None);
    assert!(tf.iter().all(|t| t.center == 0.0 && t.scale == 1.0));
    (t.matrix, t.weights)
}

/// Relative difference, for failure messages that show both values.
pub fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
}

/// Write columns as one Parquet file (one row group).
pub fn write_parquet(path: &Path, cols: Vec<(&str, arrow::array::ArrayRef)>) {
    use arrow::datatypes::{Field, Schema};
    let fields: Vec<Field> = cols.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect();
    let batch = arrow::record_batch::RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(fields)),
        cols.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// The first record batch of a Parquet file.
pub fn first_batch(path: &Path) -> arrow::record_batch::RecordBatch {
    let f = std::fs::File::open(path).unwrap();
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
}
