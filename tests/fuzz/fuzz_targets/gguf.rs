//! Fuzz target `gguf`: see [`visionthink_fuzz::gguf`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| visionthink_fuzz::gguf(data));
