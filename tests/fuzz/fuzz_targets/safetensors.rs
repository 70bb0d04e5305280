//! Fuzz target `safetensors`: see [`visionthink_fuzz::safetensors`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| visionthink_fuzz::safetensors(data));
