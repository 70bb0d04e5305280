var<workgroup> xs: array<f32, 1024>;
var<workgroup> ws: array<f32, 1024>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) { for (var j = 0u; j < 4u; j++) { acc[i][j] = 0.0; } }
    for (var k0 = 0u; k0 < p.k; k0 += 16u) {
        for (var e = lid; e < 1024u; e += 256u) {
            let rr = e / 16u;
            let kk = e % 16u;
            let gk = k0 + kk;
            let gr = row0 + rr;
            let gc = col0 + rr;
            xs[e] = select(0.0, x[p.x_off + gr * p.k + gk], gr < p.n && gk < p.k);
            var wval = 0.0;
            if (gc < p.m && gk < p.k) { wval = wv(p.w_off + gc * p.k + gk, gc); }
            ws[e] = wval;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = xs[(l.y * 4u + i) * 16u + kk];
                bv[i] = ws[(l.x * 4u + i) * 16u + kk];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) { acc[i][j] += av[i] * bv[j]; }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + l.y * 4u + i;
        if (r >= p.n) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let c = col0 + l.x * 4u + j;
            if (c >= p.m) { continue; }
            store(r, c, acc[i][j]);
        }
    }
}
