// `out = x · wᵀ + b` without workgroup memory or barriers (software adapters, which pay heavily
// per barrier): each invocation computes 8 rows × 4 columns of the output as eight vec4
// accumulators, 8 reduction steps at a time; its 4 weight rows' scales and offsets (a GGUF
// sub-block's) are read once per 8 values, and each widened column of 4 weights serves the 8
// input rows. Rows and columns past the ends read the last ones; their sums are not stored.
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = flat(wid, nwg, lid);
    let groups = (p.m + 3u) / 4u;
    let r0 = (g / groups) * 8u;
    let c0 = (g % groups) * 4u;
    if (r0 >= p.n) { return; }
    let x0 = p.x_off + min(r0 + 0u, p.n - 1u) * p.k;
    let x1 = p.x_off + min(r0 + 1u, p.n - 1u) * p.k;
    let x2 = p.x_off + min(r0 + 2u, p.n - 1u) * p.k;
    let x3 = p.x_off + min(r0 + 3u, p.n - 1u) * p.k;
    let x4 = p.x_off + min(r0 + 4u, p.n - 1u) * p.k;
    let x5 = p.x_off + min(r0 + 5u, p.n - 1u) * p.k;
    let x6 = p.x_off + min(r0 + 6u, p.n - 1u) * p.k;
    let x7 = p.x_off + min(r0 + 7u, p.n - 1u) * p.k;
    let c = vec4<u32>(c0, min(c0 + 1u, p.m - 1u), min(c0 + 2u, p.m - 1u), min(c0 + 3u, p.m - 1u));
    let wb = vec4<u32>(p.w_off) + c * p.k;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    var k0 = 0u;
    for (; k0 + 8u <= p.k; k0 += 8u) {
        let s0 = wscale(wb.x + k0, c.x);
        let s1 = wscale(wb.y + k0, c.y);
        let s2 = wscale(wb.z + k0, c.z);
        let s3 = wscale(wb.w + k0, c.w);
        let sc = vec4<f32>(s0.x, s1.x, s2.x, s3.x);
        let off = vec4<f32>(s0.y, s1.y, s2.y, s3.y);
        for (var t = 0u; t < 8u; t++) {
            let k = k0 + t;
            let wk = vec4<f32>(wint(wb.x + k, c.x), wint(wb.y + k, c.y),
                               wint(wb.z + k, c.z), wint(wb.w + k, c.w)) * sc + off;
            a0 += x[x0 + k] * wk;
            a1 += x[x1 + k] * wk;
            a2 += x[x2 + k] * wk;
            a3 += x[x3 + k] * wk;
            a4 += x[x4 + k] * wk;
            a5 += x[x5 + k] * wk;
            a6 += x[x6 + k] * wk;
            a7 += x[x7 + k] * wk;
        }
    }
    for (; k0 < p.k; k0++) {
        let wk = vec4<f32>(wv(wb.x + k0, c.x), wv(wb.y + k0, c.y),
                           wv(wb.z + k0, c.z), wv(wb.w + k0, c.w));
        a0 += x[x0 + k0] * wk;
        a1 += x[x1 + k0] * wk;
        a2 += x[x2 + k0] * wk;
        a3 += x[x3 + k0] * wk;
        a4 += x[x4 + k0] * wk;
        a5 += x[x5 + k0] * wk;
        a6 += x[x6 + k0] * wk;
        a7 += x[x7 + k0] * wk;
    }
    var acc = array<vec4<f32>, 8>(a0, a1, a2, a3, a4, a5, a6, a7);
    for (var i = 0u; i < 8u; i++) {
        let r = r0 + i;
        if (r >= p.n) { break; }
        for (var j = 0u; j < 4u; j++) {
            let cj = c0 + j;
            if (cj >= p.m) { break; }
            store(r, cj, acc[i][j]);
        }
    }
}
