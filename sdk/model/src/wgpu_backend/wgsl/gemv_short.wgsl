@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let c = flat(wid, nwg, lid);
    if (c >= p.m) { return; }
    let wb = p.w_off + c * p.k;
    var s = 0.0;
    for (var k = 0u; k < p.k; k++) { s += xin(p.x_off + k) * wv(wb + k, c); }
    store(0u, c, s);
}
