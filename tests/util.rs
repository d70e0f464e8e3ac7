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

/// Every row of a Parquet file, as one batch.
pub fn all_rows(path: &Path) -> arrow::record_batch::RecordBatch {
    let f = std::fs::File::open(path).unwrap();
    let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap();
    let schema = arrow::record_batch::RecordBatchReader::schema(&r);
    let batches: Vec<_> = r.map(|b| b.unwrap()).collect();
    arrow::compute::concat_batches(&schema, &batches).unwrap()
}

/// The command under test.
pub fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_microseg"))
}

/// Run the command in `dir` and collect its output.
pub fn run(args: &[&str], dir: &Path) -> std::process::Output {
    bin().args(args).current_dir(dir).output().unwrap()
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert a successful run (stderr shown otherwise).
pub fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "exit {:?}; stderr:\n{}", o.status.code(), stderr(o));
}

pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Files in a directory (hidden ones too), so a test can prove nothing, not even a
/// temporary file, is left.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Assert a failed run: the exit code, every needle in stderr, nothing on stdout, and
/// the directory holding exactly `files` afterwards.
pub fn assert_fails(o: &std::process::Output, code: i32, needles: &[&str], dir: &Path, files: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "exit code; stderr:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks '{n}':\n{err}");
    }
    assert!(o.stdout.is_empty(), "stdout should be empty on failure");
    let mut want: Vec<String> = files.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(listing(dir), want, "files left behind");
}

/// A small valid table: id, two float features, one string column.
pub fn table(dir: &Path, name: &str, n: usize) -> PathBuf {
    let p = dir.join(name);
    write_parquet(
        &p,
        vec![
            (
                "subscriber_id",
                std::sync::Arc::new(arrow::array::Int64Array::from_iter_values(0..n as i64)) as arrow::array::ArrayRef,
            ),
            (
                "spend",
                std::sync::Arc::new(arrow::array::Float64Array::from_iter_values((0..n).map(|i| (i % 7) as f64 * 10.0)))
                    as arrow::array::ArrayRef,
            ),
            (
                "visits",
                std::sync::Arc::new(arrow::array::Float32Array::from_iter_values((0..n).map(|i| (i % 3) as f32)))
                    as arrow::array::ArrayRef,
            ),
            (
                "channel",
                std::sync::Arc::new(arrow::array::StringArray::from_iter_values(
                    (0..n).map(|i| if i % 2 == 0 { "email" } else { "sms" }),
                )) as arrow::array::ArrayRef,
            ),
        ],
    );
    p
}

/// A table of `n` rows (see [`table`]) in a fresh directory, with a model of `k`
/// segments fitted on it: `in.parquet` and `m.json`.
pub fn fitted(n: usize, k: &str) -> tempfile::TempDir {
    let d = tempfile::TempDir::new().unwrap();
    table(d.path(), "in.parquet", n);
    ok(&run(&["fit", "in.parquet", "--k", k, "--model", "m.json", "--quiet"], d.path()));
    d
}

/// A matrix as an in-memory table, columns x0, x1, ...
pub fn matrix_dataset(x: &Matrix) -> microseg::io::Dataset {
    use arrow::array::{ArrayRef, Float32Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let fields: Vec<Field> = (0..x.dim).map(|j| Field::new(format!("x{j}"), DataType::Float32, false)).collect();
    let cols: Vec<ArrayRef> = (0..x.dim)
        .map(|j| Arc::new(Float32Array::from_iter_values((0..x.n()).map(|i| x.row(i)[j]))) as ArrayRef)
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let b = arrow::record_batch::RecordBatch::try_new(schema.clone(), cols).unwrap();
    microseg::io::Dataset::from_batches("blobs", schema, vec![b]).unwrap()
}
