@group(0) @binding(2) var<storage, read> w: array<u32>;
fn wv(i: u32, row: u32) -> f32 {
    let v = unpack2x16float(w[i / 2u]);
    return select(v.x, v.y, (i & 1u) == 1u);
}
