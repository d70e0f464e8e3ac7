//! The event reader: any bytes as an event log, through `features` (with and without
//! the predictive traits) and the rows it writes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use microseg::events::{self, EventSpec, PredictSpec};
use microseg::io::Dataset;

fuzz_target!(init: microseg::io::filter_contained_panics(), |data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else { return };
    let path = microseg_fuzz::file_of(rest, "parquet");
    let Ok(ds) = Dataset::open(&[path]) else { return };
    let mut spec = EventSpec::new(1_700_000_000 + (choice as i64) * 86_400 * 7);
    spec.now = 1_800_000_000;
    if choice & 1 != 0 {
        spec.value_col = Some("value".into());
    }
    if choice & 2 != 0 {
        spec.category_col = Some("category".into());
    }
    let predict = (choice & 4 != 0).then_some(PredictSpec { horizon_days: 365.0, discount_rate: 0.01 });
    if let Ok((state, traits)) = events::features(&ds, &spec, predict) {
        let _ = state.schema(traits.as_ref());
        let _ = state.finish(traits.as_ref(), &mut |_| Ok(()));
    }
});
