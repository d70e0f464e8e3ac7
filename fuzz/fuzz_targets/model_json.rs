//! The model JSON loader: any text through parsing and validation; a model that
//! validates must then work in every later command (assign, drift, profile, update,
//! the explanations) on a table of its own columns, without a panic.
#![no_main]

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, FixedSizeListArray, Float32Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use libfuzzer_sys::fuzz_target;
use microseg::backend::cpu::CpuBackend;
use microseg::io::Dataset;
use microseg::model::Model;

fuzz_target!(|data: &[u8]| {
    let path = microseg_fuzz::file_of(data, "json");
    let Ok(model) = Model::load(&path) else { return };
    let _ = model.fingerprint();
    // A few rows of the model's own columns, near its centroids.
    let n = 5;
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    let centroids = model.centroids();
    let mut offset = 0;
    for c in &model.feature_columns {
        let values: Vec<f32> = (0..n)
            .flat_map(|i| {
                let row = centroids.row(i % model.k);
                (0..c.width).map(move |j| row[offset + j] + i as f32)
            })
            .collect();
        offset += c.width;
        if c.width == 1 {
            fields.push(Field::new(&c.column, DataType::Float32, false));
            cols.push(Arc::new(Float32Array::from(values)));
        } else {
            let item = Arc::new(Field::new("item", DataType::Float32, true));
            let a = FixedSizeListArray::try_new(item, c.width as i32, Arc::new(Float32Array::from(values)), None)
                .expect("sizes agree");
            fields.push(Field::new(&c.column, a.data_type().clone(), false));
            cols.push(Arc::new(a));
        }
    }
    if fields.iter().enumerate().any(|(i, f)| fields[..i].iter().any(|g| g.name() == f.name())) {
        return; // Columns named twice cannot be a table (validation allows it: the reader refuses it).
    }
    let schema = Arc::new(Schema::new(fields));
    let Ok(batch) = RecordBatch::try_new(schema.clone(), cols) else { return };
    let ds = Dataset::from_batches("<fuzz>", schema, vec![batch]).expect("an in-memory table");
    microseg_fuzz::drive(&model, &ds);
    let cpu = CpuBackend::default();
    let names = microseg::pipeline::segment_names(&model, None);
    let cfg = microseg::pipeline::AssignConfig { explain: Some(names), ..Default::default() };
    let mut sink = (None, Vec::new());
    let _ = microseg::pipeline::assign(&model, &ds, &cfg, &cpu, &mut sink);
    let _ = microseg::pipeline::update_model(&model, &ds, &Default::default(), &cpu);
});
