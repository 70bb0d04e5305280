//! Placeholder for `visionthink-wasm`, the browser boundary (wasm-bindgen) and WebGPU executor.
//!
//! Not implemented yet (issue 4). The core it will wrap, `visionthink-core`, already builds and is
//! tested on `wasm32-unknown-unknown`.
