//! Fuzz target `dataset_parquet`: see [`visionthink_fuzz::dataset_parquet`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| visionthink_fuzz::dataset_parquet(data));
