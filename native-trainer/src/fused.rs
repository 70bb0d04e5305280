//! A fused, exact log-prob + entropy op over vocabulary-sized logits, with its backward.
//!
//! Composed from candle ops, `log_softmax → gather` and `−Σ p·log p` make about fifteen passes
//! over a `[tokens, 151936]` tensor per step, each a fresh allocation; at this model size that
//! is most of a training step. This op reads the logits once forward (per row: max, log-sum-exp,
//! the chosen token's log-prob, the entropy) and writes the gradient once backward:
//! `∂/∂z_j = g_logp·(1[j = id] − p_j) − g_H·p_j·(log p_j + H)`.
//! Rows are split over the available cores. CPU only; other devices use the composed ops.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor};

/// The op: `logits [T, V]` (f32, contiguous) → `[T, 2]` = (log p(id_t), entropy_t).
#[derive(Debug, Clone)]
pub struct LogpEntropy {
    /// The chosen token of each row.
    pub ids: Vec<u32>,
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8)
}

/// A per-row kernel: `(row index, logits row, output row)`.
type RowFn<'a> = dyn Fn(usize, &[f32], &mut [f32]) + Sync + 'a;

/// Runs `f(row_index, row, out_chunk)` over row blocks in parallel.
fn par_rows(data: &[f32], v: usize, out: &mut [f32], out_stride: usize, f: &RowFn<'_>) {
    let t = data.len() / v.max(1);
    let per = t.div_ceil(threads()).max(1);
    std::thread::scope(|s| {
        for (c, (rows, outs)) in data
            .chunks(per * v)
            .zip(out.chunks_mut(per * out_stride))
            .enumerate()
        {
            s.spawn(move || {
                for (i, (row, o)) in rows.chunks(v).zip(outs.chunks_mut(out_stride)).enumerate() {
                    f(c * per + i, row, o);
                }
            });
        }
    });
}

/// (max, log Σ exp(z − max)) of a row.
fn lse(row: &[f32]) -> (f32, f32) {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s: f32 = row.iter().map(|&z| (z - m).exp()).sum();
    (m, s.ln())
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("logp_entropy needs contiguous logits"),
    }
}

impl CustomOp1 for LogpEntropy {
    fn name(&self) -> &'static str {
        "logp-entropy"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (t, v) = layout.shape().dims2()?;
        if self.ids.len() != t || self.ids.iter().any(|&i| i as usize >= v) {
            candle_core::bail!("logp_entropy: {} ids for {t} rows of {v}", self.ids.len());
        }
        let data = contiguous_f32(storage, layout)?;
        let mut out = vec![0f32; t * 2];
        par_rows(data, v, &mut out, 2, &|r, row, o| {
            let (m, l) = lse(row);
            let logz = m + l;
            o[0] = row[self.ids[r] as usize] - logz;
            // H = logZ − Σ p z.
            let pz: f32 = row.iter().map(|&z| (z - logz).exp() * z).sum();
            o[1] = logz - pz;
        });
        Ok((CpuStorage::F32(out), Shape::from((t, 2))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (t, v) = arg.dims2()?;
        let g = grad_res.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let r = res.to_vec2::<f32>()?;
        let arg = arg.contiguous()?;
        let (st, layout) = arg.storage_and_layout();
        let Storage::Cpu(cpu) = &*st else {
            candle_core::bail!("logp_entropy backward runs on the CPU")
        };
        let data = contiguous_f32(cpu, layout)?;
        let mut grad = vec![0f32; t * v];
        par_rows(data, v, &mut grad, v, &|i, row, o| {
            let (m, l) = lse(row);
            let logz = m + l;
            let (g_lp, g_h, h) = (g[i][0], g[i][1], r[i][1]);
            for (j, (&z, out)) in row.iter().zip(o.iter_mut()).enumerate() {
                let logp = z - logz;
                let p = logp.exp();
                let onehot = if j as u32 == self.ids[i] { 1.0 } else { 0.0 };
                *out = g_lp * (onehot - p) - g_h * p * (logp + h);
            }
        });
        Ok(Some(Tensor::from_vec(grad, (t, v), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Values and gradients equal the composed candle ops.
    #[test]
    fn matches_composed_ops() {
        let mut rng = crate::rng::Rng::new(5);
        let (t, v) = (7, 301);
        let data: Vec<f32> = (0..t * v).map(|_| (rng.normal() * 3.0) as f32).collect();
        let ids: Vec<u32> = (0..t).map(|_| rng.below(v as u64) as u32).collect();
        let w: Vec<f32> = (0..t * 2).map(|_| rng.normal() as f32).collect();
        let weights = Tensor::from_vec(w, (t, 2), &Device::Cpu).expect("w");
        let var = Var::from_vec(data, (t, v), &Device::Cpu).expect("var");
        let fused = var
            .as_tensor()
            .apply_op1(LogpEntropy { ids: ids.clone() })
            .expect("op");
        let lf = (&fused * &weights).expect("mul").sum_all().expect("sum");
        let gf = lf
            .backward()
            .expect("b")
            .get(var.as_tensor())
            .expect("g")
            .to_vec2::<f32>()
            .expect("v");
        let (lp, ent) =
            crate::grpo::composed_logp_entropy(var.as_tensor(), &ids, true).expect("composed");
        let ent = ent.expect("entropy").unsqueeze(1).expect("col");
        let lp = lp.unsqueeze(1).expect("col");
        let composed = Tensor::cat(&[&lp, &ent], 1).expect("cat");
        let lc = (&composed * &weights).expect("mul").sum_all().expect("sum");
        let gc = lc
            .backward()
            .expect("b")
            .get(var.as_tensor())
            .expect("g")
            .to_vec2::<f32>()
            .expect("v");
        let (a, b) = (
            fused.to_vec2::<f32>().expect("a"),
            composed.to_vec2::<f32>().expect("b"),
        );
        for i in 0..t {
            for k in 0..2 {
                assert!(
                    (a[i][k] - b[i][k]).abs() < 1e-4,
                    "value [{i}][{k}] {} vs {}",
                    a[i][k],
                    b[i][k]
                );
            }
            for j in 0..v {
                assert!(
                    (gf[i][j] - gc[i][j]).abs() < 1e-5,
                    "grad [{i}][{j}] {} vs {}",
                    gf[i][j],
                    gc[i][j]
                );
            }
        }
    }
}
