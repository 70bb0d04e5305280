//! Fuzz target `judge_reply`: see [`visionthink_fuzz::judge_reply`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| visionthink_fuzz::judge_reply(data));
