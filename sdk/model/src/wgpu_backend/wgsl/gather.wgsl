struct P { n: u32, cols: u32, t_off: u32, row0: u32, rows: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> o: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n * p.cols) { return; }
    let r = i / p.cols;
    let c = i % p.cols;
    let id = ids[r];
    if (id < p.row0 || id >= p.row0 + p.rows) { return; }
    let row = id - p.row0;
    o[i] = wv(p.t_off + row * p.cols + c, row);
}
