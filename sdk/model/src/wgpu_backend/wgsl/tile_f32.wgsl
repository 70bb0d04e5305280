// The tiled matmul in f32.
alias T = f32;
fn to_t(v: f32) -> T { return v; }
