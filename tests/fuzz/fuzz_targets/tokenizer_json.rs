//! Fuzz target `tokenizer_json`: see [`visionthink_fuzz::tokenizer_json`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| visionthink_fuzz::tokenizer_json(data));
