// GGUF blocks: the (scale, offset) of the 8 values from `i0` (a multiple of 8, so they share one
// sub-block), and the stored integer of value `i`: value = wint · scale + offset.
fn wscale(i0: u32, row: u32) -> vec2<f32> { return wsub(i0 / QSUB); }
fn wint(i: u32, row: u32) -> f32 { return wq(i); }
