//! Fuzz target `tool_call`: see [`visionthink_fuzz::tool_call`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| visionthink_fuzz::tool_call(data));
