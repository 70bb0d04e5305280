// Q8_0: blocks of 32 values, 34 bytes: f16 scale d, 32 signed bytes q; value = d * q.
fn wv(i: u32, row: u32) -> f32 {
    let base = (i / 32u) * 34u;
    return whalf(base) * wsbyte(base + 2u + (i & 31u));
}
