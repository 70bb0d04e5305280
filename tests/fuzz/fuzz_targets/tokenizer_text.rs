//! Fuzz target `tokenizer_text`: see [`visionthink_fuzz::tokenizer_text`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| visionthink_fuzz::tokenizer_text(data));
