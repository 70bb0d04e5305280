// Q6_K: super-blocks of 256 values, 210 bytes: 128 bytes of low nibbles, 64 bytes of 2-bit high
// parts, 16 signed 8-bit scales (one per 16 values), f16 d. Each half of 128 values uses 64 low
// bytes, 32 high bytes and 8 scales; its quarter t = 0..3 takes the low (t < 2) or high nibble of
// low byte l + 32 (t & 1) and bits 2t..2t+1 of high byte l. Value: d * scale * (q - 32).
const QSUB: u32 = 16u;
// The scale of value `j` (0..256) of the super-block at byte `base`.
fn scale6(base: u32, j: u32) -> f32 {
    return wsbyte(base + 192u + (j >> 7u) * 8u + ((j & 31u) >> 4u) + 2u * ((j >> 5u) & 3u));
}
fn wsub(s: u32) -> vec2<f32> {
    let base = (s / 16u) * 210u;
    let x = whalf(base + 208u) * scale6(base, (s & 15u) * 16u);
    return vec2<f32>(x, -32.0 * x);
}
fn wq(i: u32) -> f32 {
    let base = (i / 256u) * 210u;
    let j = i & 255u;
    let h = j >> 7u;
    let t = (j >> 5u) & 3u;
    let l = j & 31u;
    let lo = (wbyte(base + h * 64u + l + 32u * (t & 1u)) >> ((t >> 1u) << 2u)) & 15u;
    let hi = (wbyte(base + 128u + h * 32u + l) >> (2u * t)) & 3u;
    return f32(lo | (hi << 4u));
}
fn wv(i: u32, row: u32) -> f32 {
    let base = (i / 256u) * 210u;
    return whalf(base + 208u) * scale6(base, i & 255u) * (wq(i) - 32.0);
}
