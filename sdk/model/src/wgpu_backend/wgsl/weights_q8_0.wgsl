// Q8_0: blocks of 32 values, 34 bytes: f16 scale d, 32 signed bytes q; value = d * q.
const QSUB: u32 = 32u;
// Sub-block `s` (QSUB values share it): value = wq * x + y.
fn wsub(s: u32) -> vec2<f32> {
    return vec2<f32>(whalf(s * 34u), 0.0);
}
// The stored integer of value `i`.
fn wq(i: u32) -> f32 {
    return wsbyte((i / 32u) * 34u + 2u + (i & 31u));
}
// Value `i`, as ggml dequantizes it.
fn wv(i: u32, row: u32) -> f32 {
    let base = (i / 32u) * 34u;
    return whalf(base) * wsbyte(base + 2u + (i & 31u));
}
