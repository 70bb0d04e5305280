// Q4_K: super-blocks of 256 values, 144 bytes: f16 d, f16 dmin, 12 bytes packing eight 6-bit
// scales and mins, 128 bytes of nibbles (each 64 values: 32 bytes, low nibbles first). Value j of
// sub-block s = j / 32: d * scale[s] * q - dmin * min[s].
fn wv(i: u32, row: u32) -> f32 {
    let base = (i / 256u) * 144u;
    let j = i & 255u;
    let s = j >> 5u;
    let q = (wbyte(base + 16u + (j >> 6u) * 32u + (j & 31u)) >> ((s & 1u) << 2u)) & 15u;
    var sc: u32;
    var mn: u32;
    if (s < 4u) {
        sc = wbyte(base + 4u + s) & 63u;
        mn = wbyte(base + 8u + s) & 63u;
    } else {
        let hi = wbyte(base + 8u + s);
        sc = (hi & 15u) | ((wbyte(base + s) >> 6u) << 4u);
        mn = (hi >> 4u) | ((wbyte(base + 4u + s) >> 6u) << 4u);
    }
    return whalf(base) * f32(sc) * f32(q) - whalf(base + 2u) * f32(mn);
}
