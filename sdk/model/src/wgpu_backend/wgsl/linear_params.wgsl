struct P { n: u32, k: u32, m: u32, x_off: u32, w_off: u32, o_stride: u32, o_col: u32,
           b_off: u32, has_b: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> o: array<f32>;
