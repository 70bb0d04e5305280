// Q4_0: blocks of 32 values, 18 bytes: f16 scale d, 16 bytes of nibbles (value j in the low
// nibble of byte j, value j + 16 in its high nibble); value = d * (q - 8).
fn wv(i: u32, row: u32) -> f32 {
    let base = (i / 32u) * 18u;
    let j = i & 31u;
    let q = (wbyte(base + 2u + (j & 15u)) >> ((j >> 4u) << 2u)) & 15u;
    return whalf(base) * (f32(q) - 8.0);
}
