//! AdamW with f32 moments, global-norm gradient clipping, gradient accumulation and a learning
//! rate schedule (candle's `AdamW` has none of the last three and keeps moments in the
//! parameter dtype). Non-finite gradients are detected before anything is changed.

pub use crate::config::{OptimConfig, Schedule};
use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use visionthink_model::candle_backend::SparseRows;

/// Accumulated gradients of the parameters (sums over micro-batches). Dense gradients come
/// from candle's `GradStore`; rows gathered by a sparse-gradient backend
/// ([`visionthink_model::candle_backend::SparseRows`]) are added into a per-table buffer.
#[derive(Debug, Default)]
pub struct GradAccum {
    sums: Vec<Option<Tensor>>,
    sparse: Vec<Option<Vec<f32>>>,
    /// Micro-batches added.
    pub micro_batches: usize,
}

impl GradAccum {
    /// Empty.
    pub fn new(n: usize) -> Self {
        Self {
            sums: vec![None; n],
            sparse: vec![None; n],
            micro_batches: 0,
        }
    }

    /// Adds one backward pass's gradients and the gathered rows recorded during its forward.
    pub fn add(&mut self, vars: &[Var], grads: &GradStore, rows: &[SparseRows]) -> Result<()> {
        if self.sums.len() != vars.len() {
            *self = Self::new(vars.len());
        }
        for (slot, v) in self.sums.iter_mut().zip(vars) {
            if let Some(g) = grads.get(v.as_tensor()) {
                let g = g.to_dtype(DType::F32)?;
                *slot = Some(match slot.take() {
                    Some(s) => (s + g)?,
                    None => g,
                });
            }
        }
        for r in rows {
            let Some(i) = vars.iter().position(|v| v.as_tensor().id() == r.table) else {
                bail!("gathered rows of a tensor that is not a parameter");
            };
            let Some(g) = grads.get(r.rows.as_tensor()) else {
                continue;
            };
            let (n, h) = g.dims2()?;
            let g = g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let buf = self.sparse[i].get_or_insert_with(|| vec![0.0; vars[i].elem_count()]);
            for (k, &id) in r.ids.iter().enumerate().take(n) {
                let dst = &mut buf[id as usize * h..(id as usize + 1) * h];
                for (d, s) in dst.iter_mut().zip(&g[k * h..(k + 1) * h]) {
                    *d += s;
                }
            }
        }
        self.micro_batches += 1;
        Ok(())
    }

    /// The summed gradient of each parameter (`None`: it got none).
    pub fn merged(&mut self, vars: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let mut out = Vec::with_capacity(vars.len());
        for (i, v) in vars.iter().enumerate() {
            let dense = self.sums.get_mut(i).and_then(Option::take);
            let sparse = match self.sparse.get_mut(i).and_then(Option::take) {
                Some(b) => Some(Tensor::from_vec(b, v.shape(), v.device())?),
                None => None,
            };
            out.push(match (dense, sparse) {
                (Some(d), Some(s)) => Some((d + s)?),
                (d, s) => d.or(s),
            });
        }
        Ok(out)
    }
}

/// AdamW state.
#[derive(Debug)]
pub struct AdamW {
    /// Settings.
    pub cfg: OptimConfig,
    /// First moments.
    pub m: Vec<Tensor>,
    /// Second moments.
    pub v: Vec<Tensor>,
    /// Optimizer steps taken.
    pub t: usize,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
}

impl AdamW {
    /// Zero moments for `vars`.
    pub fn new(cfg: OptimConfig, vars: &[Var]) -> Result<Self> {
        let zeros = |v: &Var| Tensor::zeros(v.shape(), DType::F32, v.device());
        Ok(Self {
            cfg,
            m: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            v: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            t: 0,
        })
    }

    /// Applies the accumulated gradients (averaged over `divisor`), clipped to the global norm;
    /// a non-finite norm changes nothing and is an error the caller logs.
    pub fn step(&mut self, vars: &[Var], acc: &mut GradAccum, divisor: f64) -> Result<StepInfo> {
        let grads = acc.merged(vars)?;
        self.step_grads(vars, grads, divisor)
    }

    /// [`Self::step`] with the summed gradients given (e.g. summed over data-parallel ranks):
    /// one per parameter, `None` where it got none.
    pub fn step_grads(
        &mut self,
        vars: &[Var],
        grads: Vec<Option<Tensor>>,
        divisor: f64,
    ) -> Result<StepInfo> {
        let scale = 1.0 / divisor.max(1.0);
        let mut sq = 0.0f64;
        for g in grads.iter().flatten() {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        let norm = sq.sqrt() * scale;
        if !norm.is_finite() {
            bail!("non-finite gradient norm ({norm})");
        }
        let clip = if self.cfg.grad_clip > 0.0 && norm > self.cfg.grad_clip {
            self.cfg.grad_clip / norm
        } else {
            1.0
        };
        let lr = self.cfg.lr_at(self.t);
        self.t += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        for (i, (var, g)) in vars.iter().zip(&grads).enumerate() {
            let Some(g) = g else { continue };
            let g = (g * (scale * clip))?;
            self.m[i] = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
            self.v[i] = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let mhat = (&self.m[i] / bc1)?;
            let vhat = (&self.v[i] / bc2)?;
            let update = (mhat / (vhat.sqrt()? + self.cfg.eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - lr * self.cfg.weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(StepInfo {
            grad_norm: norm,
            lr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// One AdamW step by hand: the first step moves each weight by lr·sign(g) (bias-corrected
    /// moments), after decoupled decay.
    #[test]
    fn adamw_first_step_and_clipping_by_hand() {
        let var = Var::from_vec(vec![1.0f32, -2.0], 2, &Device::Cpu).expect("var");
        let loss = (var.as_tensor() * &Tensor::new(&[3.0f32, -4.0], &Device::Cpu).expect("t"))
            .expect("mul")
            .sum_all()
            .expect("sum");
        let grads = loss.backward().expect("backward");
        let mut acc = GradAccum::new(1);
        acc.add(std::slice::from_ref(&var), &grads, &[])
            .expect("add");
        acc.add(std::slice::from_ref(&var), &grads, &[])
            .expect("add");
        let cfg = OptimConfig {
            lr: 0.1,
            weight_decay: 0.5,
            grad_clip: 1.0,
            ..Default::default()
        };
        let mut opt = AdamW::new(cfg, std::slice::from_ref(&var)).expect("adamw");
        // Two micro-batches of gradient (3, -4) averaged: norm 5, clipped to 1 → (0.6, -0.8).
        let info = opt
            .step(std::slice::from_ref(&var), &mut acc, 2.0)
            .expect("step");
        assert!((info.grad_norm - 5.0).abs() < 1e-5);
        let w = var.as_tensor().to_vec1::<f32>().expect("v");
        // w·(1 − lr·wd) − lr·g/(|g| + ε·…) = 1·0.95 − 0.1, −2·0.95 + 0.1.
        assert!(
            (w[0] - 0.85).abs() < 1e-5 && (w[1] + 1.8).abs() < 1e-5,
            "{w:?}"
        );
        let m = opt.m[0].to_vec1::<f32>().expect("m");
        assert!(
            (m[0] - 0.06).abs() < 1e-6 && (m[1] + 0.08).abs() < 1e-6,
            "{m:?}"
        );
    }

    #[test]
    fn non_finite_gradients_change_nothing() {
        let var = Var::from_vec(vec![1.0f32], 1, &Device::Cpu).expect("var");
        let loss = (var.as_tensor() * f64::NAN)
            .expect("mul")
            .sum_all()
            .expect("sum");
        let grads = loss.backward().expect("backward");
        let mut acc = GradAccum::new(1);
        acc.add(std::slice::from_ref(&var), &grads, &[])
            .expect("add");
        let mut opt =
            AdamW::new(OptimConfig::default(), std::slice::from_ref(&var)).expect("adamw");
        assert!(opt.step(std::slice::from_ref(&var), &mut acc, 1.0).is_err());
        assert_eq!(var.as_tensor().to_vec1::<f32>().expect("v"), vec![1.0]);
        assert_eq!(opt.t, 0);
    }

    #[test]
    fn schedules() {
        let c = OptimConfig {
            lr: 1.0,
            warmup_steps: 2,
            schedule: Schedule::Cosine,
            total_steps: 12,
            min_lr_ratio: 0.1,
            ..Default::default()
        };
        assert_eq!(c.lr_at(0), 0.5);
        assert_eq!(c.lr_at(1), 1.0);
        assert!((c.lr_at(2) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(7) - 0.55).abs() < 1e-12);
        assert!((c.lr_at(12) - 0.1).abs() < 1e-12);
        assert_eq!(
            OptimConfig {
                lr: 2.0,
                ..Default::default()
            }
            .lr_at(100),
            2.0
        );
    }
}
