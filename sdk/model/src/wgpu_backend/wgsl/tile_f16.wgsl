// The tiled matmul in f16 (needs `enable f16;` first in the module): values beyond f16's range
// are clamped to it, not turned into infinities.
alias T = f16;
fn to_t(v: f32) -> T { return f16(clamp(v, -65504.0, 65504.0)); }
