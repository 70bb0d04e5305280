// Q4_K: super-blocks of 256 values, 144 bytes: f16 d, f16 dmin, 12 bytes packing eight 6-bit
// scales and mins, 128 bytes of nibbles (each 64 values: 32 bytes, low nibbles first). Value j of
// sub-block s = j / 32: d * scale[s] * q - dmin * min[s].
const QSUB: u32 = 32u;
// (scale, min) of sub-block `s` (0..8) of the super-block at byte `base`.
fn scale_min(base: u32, s: u32) -> vec2<f32> {
    if (s < 4u) {
        return vec2<f32>(f32(wbyte(base + 4u + s) & 63u), f32(wbyte(base + 8u + s) & 63u));
    }
    let hi = wbyte(base + 8u + s);
    return vec2<f32>(f32((hi & 15u) | ((wbyte(base + s) >> 6u) << 4u)),
                     f32((hi >> 4u) | ((wbyte(base + 4u + s) >> 6u) << 4u)));
}
fn wsub(s: u32) -> vec2<f32> {
    let base = (s / 8u) * 144u;
    let sm = scale_min(base, s & 7u);
    return vec2<f32>(whalf(base) * sm.x, -(whalf(base + 2u) * sm.y));
}
fn wq(i: u32) -> f32 {
    let j = i & 255u;
    let b = (i / 256u) * 144u + 16u + (j >> 6u) * 32u + (j & 31u);
    return f32((wbyte(b) >> (((j >> 5u) & 1u) << 2u)) & 15u);
}
fn wv(i: u32, row: u32) -> f32 {
    let base = (i / 256u) * 144u;
    let sm = scale_min(base, (i & 255u) >> 5u);
    return whalf(base) * sm.x * wq(i) - whalf(base + 2u) * sm.y;
}
