@group(0) @binding(2) var<storage, read> w: array<f32>;
fn wv(i: u32, row: u32) -> f32 { return w[i]; }
