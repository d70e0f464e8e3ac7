//! The Parquet reader and feature conversion: any bytes as an input file, through the
//! schema checks, the column selection, the conversion to features, a small fit, assign
//! and drift.
#![no_main]

use libfuzzer_sys::fuzz_target;
use microseg::io::Dataset;

fuzz_target!(init: microseg::io::filter_contained_panics(), |data: &[u8]| {
    let choice = data.first().copied().unwrap_or(0);
    let path = microseg_fuzz::file_of(data.get(1..).unwrap_or_default(), "parquet");
    if let Ok(ds) = Dataset::open(&[path]) {
        // Every column, read whole: the reader must refuse what it cannot decode.
        let names: Vec<String> = ds.schema.fields().iter().map(|f| f.name().clone()).collect();
        if let Ok(batches) = ds.batches(&names) {
            for b in batches {
                if b.is_err() {
                    break;
                }
            }
        }
        microseg_fuzz::fit_small(&ds, choice);
    }
});
