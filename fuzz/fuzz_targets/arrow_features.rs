//! Feature conversion from Arrow tables built by the fuzzer: every numeric type, nulls,
//! NaN, infinities, 1e300, text, embeddings, repeated ids; fit, assign, drift, profile,
//! then an update of the model with the same rows.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(choice) = u.arbitrary::<u8>() else { return };
    let Ok(ds) = microseg_fuzz::table(&mut u) else { return };
    if let Some(model) = microseg_fuzz::fit_small(&ds, choice) {
        let cpu = microseg::backend::cpu::CpuBackend::default();
        let _ = microseg::pipeline::update_model(&model, &ds, &Default::default(), &cpu);
    }
});
