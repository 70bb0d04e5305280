//! Fuzz target `serve_request`: see [`visionthink_fuzz::serve_request`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| visionthink_fuzz::serve_request(data));
