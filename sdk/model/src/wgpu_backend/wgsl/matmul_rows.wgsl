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
    let c = rows4(c0);
    let wb = starts4(c);
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
        let s = wscale4(wb, c, k0);
        for (var t = 0u; t < 8u; t++) {
            let k = k0 + t;
            let wk = wint4(wb, c, k, s);
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
        let wk = wv4(wb, c, k0);
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
