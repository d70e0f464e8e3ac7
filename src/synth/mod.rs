//! Synthetic subscriber tables for tests, demos and benchmarks: named behavioural
//! columns (recency, frequency, heavy-tailed spend with a few "whales", rates in
//! [0, 1], a cyclic send hour), unequal ground-truth segments, written row group by
//! row group so 10⁷+ rows never sit in memory at once.

pub mod events;

use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma, LogNormal, Normal, Pareto};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::io::NON_FEATURE_KEY;
use crate::io::output::ParquetOutput;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// Days since an event: gamma distributed, segment-specific scale.
    Days,
    /// Event counts: rounded log-normal, stored as Int32.
    Count,
    /// Money: log-normal with rare Pareto "whales", Float64.
    Money,
    /// A rate in [0, 1], Float32.
    Rate,
    /// Preferred hour of day in [0, 24), cyclic.
    Hour,
    /// A generic standardised behavioural score.
    Score,
}

const NAMED: &[(&str, Kind)] = &[
    ("recency_days", Kind::Days),
    ("frequency", Kind::Count),
    ("monetary", Kind::Money),
    ("tenure_days", Kind::Days),
    ("open_rate", Kind::Rate),
    ("click_rate", Kind::Rate),
    ("avg_order_value", Kind::Money),
    ("orders_90d", Kind::Count),
    ("sessions_30d", Kind::Count),
    ("preferred_hour", Kind::Hour),
    ("cart_abandon_rate", Kind::Rate),
    ("discount_share", Kind::Rate),
    ("return_rate", Kind::Rate),
    ("email_opens_30d", Kind::Count),
    ("push_opens_30d", Kind::Count),
    ("app_minutes_30d", Kind::Money),
    ("support_tickets_1y", Kind::Count),
    ("categories_bought", Kind::Count),
    ("days_since_last_open", Kind::Days),
    ("mobile_share", Kind::Rate),
];

#[derive(Debug, Clone)]
pub struct SynthSpec {
    pub rows: u64,
    pub dims: usize,
    pub clusters: usize,
    pub seed: u64,
    pub row_group_rows: usize,
}

fn columns(dims: usize) -> Vec<(String, Kind)> {
    (0..dims)
        .map(|j| match NAMED.get(j) {
            Some((n, k)) => (n.to_string(), *k),
            None => (format!("score_{:02}", j - NAMED.len() + 1), Kind::Score),
        })
        .collect()
}

fn arrow_type(k: Kind) -> DataType {
    match k {
        Kind::Count => DataType::Int32,
        Kind::Rate | Kind::Hour => DataType::Float32,
        _ => DataType::Float64,
    }
}

/// The schema `generate` writes.
pub fn schema(dims: usize) -> SchemaRef {
    let mut fields = vec![Field::new("subscriber_id", DataType::Int64, false)];
    for (name, kind) in columns(dims) {
        fields.push(Field::new(name, arrow_type(kind), false));
    }
    fields.push(Field::new("true_segment", DataType::Int32, false));
    let meta: std::collections::HashMap<String, String> =
        [(NON_FEATURE_KEY.to_string(), "true_segment".to_string())].into_iter().collect();
    Arc::new(Schema::new_with_metadata(fields, meta))
}

/// Segment-level parameters: shares and one latent location per (segment, column).
struct Segments {
    cum_share: Vec<f64>,
    z: Vec<f64>,
    dims: usize,
}

impl Segments {
    fn new(spec: &SynthSpec) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let normal = Normal::<f64>::new(0.0, 1.0).unwrap();
        let raw: Vec<f64> = (0..spec.clusters).map(|_| (0.8 * normal.sample(&mut rng)).exp()).collect();
        let total: f64 = raw.iter().sum();
        let mut acc = 0.0;
        let cum_share = raw.iter().map(|r| {
            acc += r / total;
            acc
        });
        let cum_share = cum_share.collect();
        let z = (0..spec.clusters * spec.dims).map(|_| 1.5 * normal.sample(&mut rng)).collect();
        Segments { cum_share, z, dims: spec.dims }
    }
}

fn sample_value(kind: Kind, z: f64, rng: &mut ChaCha8Rng) -> f64 {
    let n01 = Normal::new(0.0, 1.0).unwrap();
    match kind {
        Kind::Days => Gamma::new(2.0, 15.0 * (0.6 * z).exp()).unwrap().sample(rng),
        Kind::Count => LogNormal::new(3f64.ln() + 0.6 * z, 0.5).unwrap().sample(rng).round(),
        Kind::Money => {
            let v = LogNormal::new(50f64.ln() + 0.7 * z, 0.8).unwrap().sample(rng);
            if rng.random::<f64>() < 0.01 { v * Pareto::new(1.0, 1.5).unwrap().sample(rng) } else { v }
        }
        Kind::Rate => 1.0 / (1.0 + (-(z + 0.6 * n01.sample(rng))).exp()),
        Kind::Hour => (12.0 + 3.0 * z + 2.0 * n01.sample(rng)).rem_euclid(24.0),
        Kind::Score => 2.0 * z + n01.sample(rng),
    }
}

fn group_batch(
    spec: &SynthSpec,
    seg: &Segments,
    cols: &[(String, Kind)],
    schema: &SchemaRef,
    g: u64,
    start: u64,
    rows: usize,
) -> Result<RecordBatch> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x5EED_0000_0000);
    rng.set_stream(g);
    let labels: Vec<u32> = (0..rows)
        .map(|_| {
            let u: f64 = rng.random();
            seg.cum_share.partition_point(|&c| c < u).min(seg.cum_share.len() - 1) as u32
        })
        .collect();
    let arrays: Vec<ArrayRef> = cols
        .par_iter()
        .enumerate()
        .map(|(j, (_, kind))| {
            let mut r = ChaCha8Rng::seed_from_u64(spec.seed.wrapping_add(1 + j as u64));
            r.set_stream(g);
            let vals: Vec<f64> =
                labels.iter().map(|&s| sample_value(*kind, seg.z[s as usize * seg.dims + j], &mut r)).collect();
            let a: ArrayRef = match arrow_type(*kind) {
                DataType::Int32 => Arc::new(Int32Array::from_iter_values(vals.iter().map(|v| *v as i32))),
                DataType::Float32 => Arc::new(Float32Array::from_iter_values(vals.iter().map(|v| *v as f32))),
                _ => Arc::new(Float64Array::from(vals)),
            };
            a
        })
        .collect();
    let mut all: Vec<ArrayRef> =
        vec![Arc::new(Int64Array::from_iter_values((start..start + rows as u64).map(|i| i as i64 + 1)))];
    all.extend(arrays);
    all.push(Arc::new(Int32Array::from_iter_values(labels.iter().map(|l| *l as i32))));
    RecordBatch::try_new(schema.clone(), all).map_err(|e| Error::Runtime(e.to_string()))
}

/// Write the table into `out`, row group by row group.
pub fn generate(spec: &SynthSpec, mut out: ParquetOutput) -> Result<()> {
    if spec.dims == 0 || spec.clusters == 0 || spec.rows == 0 || spec.row_group_rows == 0 {
        return Err(Error::Usage("--rows, --dims, --clusters and --row-group-rows must all be at least 1".into()));
    }
    let cols = columns(spec.dims);
    let schema = schema(spec.dims);
    let seg = Segments::new(spec);
    let mut start = 0u64;
    let mut g = 0u64;
    while start < spec.rows {
        let rows = (spec.rows - start).min(spec.row_group_rows as u64) as usize;
        let batch = group_batch(spec, &seg, &cols, &schema, g, start, rows)?;
        out.write(&batch)?;
        start += rows as u64;
        g += 1;
    }
    out.commit()
}
