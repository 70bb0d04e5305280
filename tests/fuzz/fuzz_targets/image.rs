//! Fuzz target `image`: see [`visionthink_fuzz::image`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| visionthink_fuzz::image(data));
