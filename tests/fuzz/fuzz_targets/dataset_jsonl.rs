//! Fuzz target `dataset_jsonl`: see [`visionthink_fuzz::dataset_jsonl`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| visionthink_fuzz::dataset_jsonl(data));
