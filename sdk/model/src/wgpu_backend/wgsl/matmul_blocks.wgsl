// `out = x · wᵀ + b` over GGUF blocks: 64×64 output tiles, 16×16 threads each computing 4×4, the
// reduction taken 32 values at a time. Each thread dequantises 8 consecutive values of one weight
// row (they lie in one sub-block: QSUB is 16 or 32), reading the sub-block's scale and offset
// once instead of once per value. Rows of block weights are whole blocks, so `k` is a multiple
// of 32. Workgroup memory: 2 × 64 × 32 f32 = 16 KiB, WebGPU's default limit.
var<workgroup> xs: array<f32, 2048>;
var<workgroup> ws: array<f32, 2048>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    // The weight values this thread widens: row `wr` of the tile, values `wk..wk + 8` of the step.
    let wr = lid / 4u;
    let wk = (lid % 4u) * 8u;
    let gc = col0 + wr;
    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) { for (var j = 0u; j < 4u; j++) { acc[i][j] = 0.0; } }
    for (var k0 = 0u; k0 < p.k; k0 += 32u) {
        for (var e = lid; e < 2048u; e += 256u) {
            let gr = row0 + e / 32u;
            let gk = k0 + e % 32u;
            xs[e] = select(0.0, x[p.x_off + gr * p.k + gk], gr < p.n && gk < p.k);
        }
        if (gc < p.m && k0 + wk < p.k) {
            let i0 = p.w_off + gc * p.k + k0 + wk;
            let sc = wsub(i0 / QSUB);
            for (var j = 0u; j < 8u; j++) { ws[wr * 32u + wk + j] = wq(i0 + j) * sc.x + sc.y; }
        } else {
            for (var j = 0u; j < 8u; j++) { ws[wr * 32u + wk + j] = 0.0; }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 32u; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = xs[(l.y * 4u + i) * 32u + kk];
                bv[i] = ws[(l.x * 4u + i) * 32u + kk];
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
