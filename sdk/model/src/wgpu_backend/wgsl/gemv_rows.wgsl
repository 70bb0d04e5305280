var<workgroup> xs: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let c = flat(wid, nwg, lid);
    let live = c < p.m;
    let cc = min(c, p.m - 1u);
    let wb = p.w_off + cc * p.k;
    var s = 0.0;
    for (var k0 = 0u; k0 < p.k; k0 += 256u) {
        let kk = k0 + lid;
        xs[lid] = select(0.0, xin(p.x_off + min(kk, p.k - 1u)), kk < p.k);
        workgroupBarrier();
        let len = min(256u, p.k - k0);
        for (var j = 0u; j < len; j++) { s += xs[j] * wv(wb + k0 + j, cc); }
        workgroupBarrier();
    }
    if (!live) { return; }
    if (p.has_b != 0u) { s += b[p.b_off + c]; }
    o[p.o_col + c] = s + res(p.o_col + c);
}
