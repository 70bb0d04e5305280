@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(5) var<storage, read> sc: array<f32>;
fn wv(i: u32, row: u32) -> f32 {
    return f32(extractBits(bitcast<i32>(w[i / 4u]), (i % 4u) * 8u, 8u)) * sc[row];
}
