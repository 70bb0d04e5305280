// Four weight rows read side by side by the barrier-free kernels, as vec4 lanes: the rows
// `c0..c0 + 4` (past the end, the last row again), their first values `wb`.
fn rows4(c0: u32) -> vec4<u32> {
    return vec4<u32>(c0, min(c0 + 1u, p.m - 1u), min(c0 + 2u, p.m - 1u), min(c0 + 3u, p.m - 1u));
}
fn starts4(c: vec4<u32>) -> vec4<u32> { return vec4<u32>(p.w_off) + c * p.k; }

// The scales and offsets of the 4 rows' 8 values from `k0` (a multiple of 8), read once.
struct Scales4 { sc: vec4<f32>, off: vec4<f32> }
fn wscale4(wb: vec4<u32>, c: vec4<u32>, k0: u32) -> Scales4 {
    let s0 = wscale(wb.x + k0, c.x);
    let s1 = wscale(wb.y + k0, c.y);
    let s2 = wscale(wb.z + k0, c.z);
    let s3 = wscale(wb.w + k0, c.w);
    return Scales4(vec4<f32>(s0.x, s1.x, s2.x, s3.x), vec4<f32>(s0.y, s1.y, s2.y, s3.y));
}

// Value `k` of the 4 rows, widened with their scales.
fn wint4(wb: vec4<u32>, c: vec4<u32>, k: u32, s: Scales4) -> vec4<f32> {
    return vec4<f32>(wint(wb.x + k, c.x), wint(wb.y + k, c.y),
                     wint(wb.z + k, c.z), wint(wb.w + k, c.w)) * s.sc + s.off;
}

// Value `k` of the 4 rows, each read whole (the reduction's tail after the steps of 8).
fn wv4(wb: vec4<u32>, c: vec4<u32>, k: u32) -> vec4<f32> {
    return vec4<f32>(wv(wb.x + k, c.x), wv(wb.y + k, c.y), wv(wb.z + k, c.z), wv(wb.w + k, c.w));
}
