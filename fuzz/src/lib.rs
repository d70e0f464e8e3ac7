//! What the fuzz targets share: fuzzer bytes as a file the library reads, a table built
//! from fuzzer choices (types, nulls, NaN, infinities, absurd magnitudes), and the
//! small fit, assign and drift every target drives its input through. A returned error
//! is the right answer to bad input; a panic, an abort or a hang is a defect.

use std::path::PathBuf;
use std::sync::Arc;

use arbitrary::{Result as AResult, Unstructured};
use arrow::array::{
    Array, ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, Float64Array, Int32Array, Int64Array, StringArray,
    UInt8Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use microseg::backend::cpu::CpuBackend;
use microseg::features::MissingPolicy;
use microseg::io::Dataset;
use microseg::model::Model;
use microseg::pipeline::{self, AssignConfig, FitConfig};

/// The bytes as a file with this extension (one per process: libFuzzer runs inputs one
/// at a time).
pub fn file_of(bytes: &[u8], ext: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("microseg-fuzz-{}.{ext}", std::process::id()));
    std::fs::write(&p, bytes).expect("the temporary directory is writable");
    p
}

/// A value that is often ordinary and sometimes hostile.
fn value(u: &mut Unstructured) -> AResult<f64> {
    Ok(match u.int_in_range(0..=9u8)? {
        0 => f64::NAN,
        1 => f64::INFINITY * if u.arbitrary::<bool>()? { 1.0 } else { -1.0 },
        2 => u.arbitrary::<f64>()?,
        3 => 1e300 * u.int_in_range(-3..=3i32)? as f64,
        4 => 0.0,
        _ => u.int_in_range(-1000..=1000i32)? as f64 / 8.0,
    })
}

/// A table of up to 6 columns and 40 rows of types a subscriber table may hold.
pub fn table(u: &mut Unstructured) -> AResult<Dataset> {
    let n = u.int_in_range(0..=40usize)?;
    let ncols = u.int_in_range(1..=6usize)?;
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for c in 0..ncols {
        let nullable = u.arbitrary::<bool>()?;
        let opt = |u: &mut Unstructured| -> AResult<Option<f64>> {
            Ok(if nullable && u.ratio(1, 6)? { None } else { Some(value(u)?) })
        };
        let (dt, a): (DataType, ArrayRef) = match u.int_in_range(0..=6u8)? {
            0 => (DataType::Float64, Arc::new((0..n).map(|_| opt(u)).collect::<AResult<Float64Array>>()?)),
            1 => (
                DataType::Float32,
                Arc::new((0..n).map(|_| Ok(opt(u)?.map(|v| v as f32))).collect::<AResult<Float32Array>>()?),
            ),
            2 => (
                DataType::Int64,
                Arc::new((0..n).map(|_| Ok(opt(u)?.map(|v| v as i64))).collect::<AResult<Int64Array>>()?),
            ),
            3 => (
                DataType::Int32,
                Arc::new((0..n).map(|_| Ok(opt(u)?.map(|v| v as i32))).collect::<AResult<Int32Array>>()?),
            ),
            4 => (
                DataType::Boolean,
                Arc::new((0..n).map(|_| Ok(opt(u)?.map(|v| v > 0.0))).collect::<AResult<BooleanArray>>()?),
            ),
            5 => {
                let s: Vec<Option<String>> =
                    (0..n).map(|_| Ok(opt(u)?.map(|v| v.to_string()))).collect::<AResult<_>>()?;
                (DataType::Utf8, Arc::new(StringArray::from(s)))
            }
            _ => {
                let width = u.int_in_range(1..=4i32)?;
                let values: Float32Array =
                    (0..n * width as usize).map(|_| Ok(Some(value(u)? as f32))).collect::<AResult<_>>()?;
                let item = Arc::new(Field::new("item", DataType::Float32, true));
                let a = FixedSizeListArray::try_new(item, width, Arc::new(values), None).expect("sizes agree");
                (a.data_type().clone(), Arc::new(a))
            }
        };
        fields.push(Field::new(format!("c{c}"), dt, true));
        cols.push(a);
    }
    if u.arbitrary::<bool>()? {
        // An id column, possibly repeating ids.
        let modulo = u.int_in_range(1..=50u8)?;
        fields.push(Field::new("subscriber_id", DataType::UInt8, false));
        cols.push(Arc::new(UInt8Array::from_iter_values((0..n).map(|i| i as u8 % modulo))));
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), cols).expect("columns of one length");
    Ok(Dataset::from_batches("<fuzz>", schema, vec![batch]).expect("an in-memory table"))
}

/// Fit k-means with a few iterations on whatever the input holds, under each missing
/// policy the choice byte picks; when it fits, assign and check drift too.
pub fn fit_small(ds: &Dataset, choice: u8) -> Option<Model> {
    let missing = [MissingPolicy::Error, MissingPolicy::Drop, MissingPolicy::Mean][choice as usize % 3];
    let cfg = FitConfig {
        k: 1 + (choice as usize / 3) % 3,
        missing,
        max_iter: 3,
        n_init: 1,
        allow_duplicate_ids: choice & 0x40 != 0,
        metric: if choice & 0x80 != 0 { microseg::model::Metric::Cosine } else { Default::default() },
        ..Default::default()
    };
    let cpu = CpuBackend::default();
    let (model, _) = pipeline::fit(ds, &cfg, &cpu).ok()?;
    model.validate().expect("a fitted model validates");
    drive(&model, ds);
    Some(model)
}

/// Assign, drift and profile `ds` through `model` (errors are fine).
pub fn drive(model: &Model, ds: &Dataset) {
    let cpu = CpuBackend::default();
    let mut sink = (None, Vec::new());
    let _ = pipeline::assign(model, ds, &AssignConfig::default(), &cpu, &mut sink);
    let _ = pipeline::drift(model, ds, Default::default(), &cpu);
    let _ = pipeline::profile(model, ds, None, &[], &cpu);
}
