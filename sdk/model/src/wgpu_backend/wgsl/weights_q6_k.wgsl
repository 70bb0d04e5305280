// Q6_K: super-blocks of 256 values, 210 bytes: 128 bytes of low nibbles, 64 bytes of 2-bit high
// parts, 16 signed 8-bit scales (one per 16 values), f16 d. Each half of 128 values uses 64 low
// bytes, 32 high bytes and 8 scales; its quarter t = 0..3 takes the low (t < 2) or high nibble of
// low byte l + 32 (t & 1) and bits 2t..2t+1 of high byte l. Value: d * scale * (q - 32).
fn wv(i: u32, row: u32) -> f32 {
    let base = (i / 256u) * 210u;
    let j = i & 255u;
    let h = j >> 7u;
    let t = (j >> 5u) & 3u;
    let l = j & 31u;
    let lo = (wbyte(base + h * 64u + l + 32u * (t & 1u)) >> ((t >> 1u) << 2u)) & 15u;
    let hi = (wbyte(base + 128u + h * 32u + l) >> (2u * t)) & 3u;
    let sc = wsbyte(base + 192u + h * 8u + (l >> 4u) + 2u * t);
    return whalf(base + 208u) * sc * (f32(lo | (hi << 4u)) - 32.0);
}
