// One-row product without workgroup memory or barriers (software adapters, which pay heavily per
// barrier): each invocation computes 4 outputs as a vec4, 8 reduction steps at a time; its 4
// weight rows' scales and offsets (a GGUF sub-block's) are read once per 8 values, and each
// input value (SwiGLU's product with `glu`) serves the 4 rows.
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let c0 = flat(wid, nwg, lid) * 4u;
    if (c0 >= p.m) { return; }
    let c = vec4<u32>(c0, min(c0 + 1u, p.m - 1u), min(c0 + 2u, p.m - 1u), min(c0 + 3u, p.m - 1u));
    let wb = vec4<u32>(p.w_off) + c * p.k;
    var a = vec4<f32>(0.0);
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
            a += xin(p.x_off + k) * wk;
        }
    }
    for (; k0 < p.k; k0++) {
        a += xin(p.x_off + k0) * vec4<f32>(wv(wb.x + k0, c.x), wv(wb.y + k0, c.y),
                                           wv(wb.z + k0, c.z), wv(wb.w + k0, c.w));
    }
    for (var j = 0u; j < 4u; j++) {
        let cj = c0 + j;
        if (cj >= p.m) { break; }
        store(0u, cj, a[j]);
    }
}
