//! Fuzz target `configs`: see [`visionthink_fuzz::configs`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| visionthink_fuzz::configs(data));
