// Plain values: scale 1, offset 0, the value itself.
fn wscale(i0: u32, row: u32) -> vec2<f32> { return vec2<f32>(1.0, 0.0); }
fn wint(i: u32, row: u32) -> f32 { return wv(i, row); }
