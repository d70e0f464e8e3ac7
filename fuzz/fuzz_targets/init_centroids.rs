//! The init-centroids reader: any bytes as a CSV, Parquet or model file of initial
//! centroids for a fit of 1 to 8 features.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: microseg::io::filter_contained_panics(), |data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else { return };
    let dim = 1 + (choice as usize & 7);
    let ext = ["csv", "parquet", "json", "txt"][(choice as usize >> 3) & 3];
    let path = microseg_fuzz::file_of(rest, ext);
    if let Ok(c) = microseg::pipeline::read_centroids(&path, dim) {
        assert_eq!(c.dim, dim);
        assert_eq!(c.data.len(), c.k * dim);
    }
});
