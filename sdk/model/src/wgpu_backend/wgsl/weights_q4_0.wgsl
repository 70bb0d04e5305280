// Q4_0: blocks of 32 values, 18 bytes: f16 scale d, 16 bytes of nibbles (value j in the low
// nibble of byte j, value j + 16 in its high nibble); value = d * (q - 8).
const QSUB: u32 = 32u;
fn wsub(s: u32) -> vec2<f32> {
    let d = whalf(s * 18u);
    return vec2<f32>(d, -8.0 * d);
}
fn wq(i: u32) -> f32 {
    let j = i & 31u;
    return f32((wbyte((i / 32u) * 18u + 2u + (j & 15u)) >> ((j >> 4u) << 2u)) & 15u);
}
fn wv(i: u32, row: u32) -> f32 {
    return whalf((i / 32u) * 18u) * (wq(i) - 8.0);
}
