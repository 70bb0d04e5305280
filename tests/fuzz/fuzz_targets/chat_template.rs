//! Fuzz target `chat_template`: see [`visionthink_fuzz::chat_template`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| visionthink_fuzz::chat_template(data));
