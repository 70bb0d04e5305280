//! Fuzz target `model_output`: see [`visionthink_fuzz::model_output`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| visionthink_fuzz::model_output(data));
