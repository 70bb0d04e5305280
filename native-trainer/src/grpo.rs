//! The GRPO objective of SPEC §7 on candle tensors, and the teacher-forced forward that scores
//! a group of trajectories: the shared turn-1 prefix is computed once (with gradient) and every
//! rollout continues from it, so a group costs one prefix plus its continuations.
//!
//! Per generated token `t` of a sequence with advantage `A`:
//! `ratio = exp(logp − old)`, `pg = max(−A·ratio, −A·clamp(ratio, 1−ε_low, 1+ε_high))`,
//! `kl = clamp(exp(ref − logp) − (ref − logp) − 1, −10, 10)` (k3), `entropy = −Σ p log p`;
//! the sequence loss is the token mean of `pg + β·kl − c·entropy`, and the batch loss the mean
//! over sequences ("token mean per sequence").

use crate::rollout::{PreparedPrompt, Trajectory};
use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};
use visionthink_core::rope::{extend_rope_index, MropeBuilder};
use visionthink_model::{CandleBackend, Qwen25VL};

/// Coefficients of the objective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossConfig {
    /// Lower clip ε (0.2).
    pub clip_low: f64,
    /// Upper clip ε (0.2).
    pub clip_high: f64,
    /// KL coefficient β (0.001); 0 skips the reference model.
    pub kl_coef: f64,
    /// Entropy bonus c (0.001).
    pub entropy_coef: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            clip_low: 0.2,
            clip_high: 0.2,
            kl_coef: 0.001,
            entropy_coef: 0.001,
        }
    }
}

/// Per-sequence statistics of the objective (detached).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SeqStats {
    /// Mean policy-gradient term.
    pub pg: f64,
    /// Mean k3 KL.
    pub kl: f64,
    /// Mean entropy.
    pub entropy: f64,
    /// Fraction of tokens whose ratio was clipped.
    pub clip_frac: f64,
    /// Tokens.
    pub tokens: usize,
}

/// [`logp_and_entropy`] from candle's differentiable ops (off the CPU, where the fused op does
/// not run; and the reference the fused op is tested against).
pub fn composed_logp_entropy(
    logits: &Tensor,
    ids: &[u32],
    with_entropy: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let lsm = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let idx = Tensor::from_slice(ids, (ids.len(), 1), logits.device())?;
    let logp = lsm.gather(&idx, 1)?.squeeze(1)?;
    let ent = if with_entropy {
        Some((lsm.exp()? * &lsm)?.sum(1)?.neg()?)
    } else {
        None
    };
    Ok((logp, ent))
}

/// The columns of a fused op's `[T, 2]` output: log-probs, and entropies when asked for.
fn split_logp_entropy(both: &Tensor, with_entropy: bool) -> Result<(Tensor, Option<Tensor>)> {
    let logp = both.narrow(1, 0, 1)?.squeeze(1)?;
    let ent = if with_entropy {
        Some(both.narrow(1, 1, 1)?.squeeze(1)?)
    } else {
        None
    };
    Ok((logp, ent))
}

/// Log-probabilities of `ids` under `logits [T, V]` and the entropy of each row.
pub fn logp_and_entropy(
    logits: &Tensor,
    ids: &[u32],
    with_entropy: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    if logits.device().is_cpu() {
        let both = logits
            .to_dtype(DType::F32)?
            .contiguous()?
            .apply_op1(crate::fused::LogpEntropy { ids: ids.to_vec() })?;
        return split_logp_entropy(&both, with_entropy);
    }
    composed_logp_entropy(logits, ids, with_entropy)
}

/// The token-mean loss of one sequence. `old` and `reference` are per-token log-probs without
/// gradient (`reference` ignored when `kl_coef` is 0).
pub fn sequence_loss(
    logp: &Tensor,
    entropy: Option<&Tensor>,
    old: &[f32],
    reference: Option<&[f32]>,
    advantage: f64,
    cfg: &LossConfig,
) -> Result<(Tensor, SeqStats)> {
    let t = logp.dim(0)?;
    if t == 0 || old.len() != t || reference.is_some_and(|r| r.len() != t) {
        bail!(
            "sequence of {t} tokens with {} old and {:?} reference log-probs",
            old.len(),
            reference.map(<[f32]>::len)
        );
    }
    let dev = logp.device();
    let old_t = Tensor::from_slice(old, t, dev)?;
    let ratio = (logp - &old_t)?.exp()?;
    let neg_a = -advantage;
    let pg1 = (&ratio * neg_a)?;
    let clipped = ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)?;
    let pg2 = (&clipped * neg_a)?;
    let pg = pg1.maximum(&pg2)?;
    let mut tok = pg.clone();
    let mut stats = SeqStats {
        tokens: t,
        ..Default::default()
    };
    let ratios = ratio.to_vec1::<f32>()?;
    stats.clip_frac = ratios
        .iter()
        .filter(|&&r| {
            (advantage > 0.0 && f64::from(r) > 1.0 + cfg.clip_high)
                || (advantage < 0.0 && f64::from(r) < 1.0 - cfg.clip_low)
        })
        .count() as f64
        / t as f64;
    stats.pg = pg.mean_all()?.to_scalar::<f32>()? as f64;
    if cfg.kl_coef != 0.0 {
        if let Some(r) = reference {
            let d = (Tensor::from_slice(r, t, dev)? - logp)?;
            let kl = ((d.exp()? - &d)? - 1.0)?.clamp(-10.0, 10.0)?;
            stats.kl = kl.mean_all()?.to_scalar::<f32>()? as f64;
            tok = (tok + (kl * cfg.kl_coef)?)?;
        }
    }
    if let Some(e) = entropy {
        stats.entropy = e.mean_all()?.to_scalar::<f32>()? as f64;
        if cfg.entropy_coef != 0.0 {
            tok = (tok - (e * cfg.entropy_coef)?)?;
        }
    }
    Ok((tok.mean_all()?, stats))
}

/// Final hidden rows `[generated tokens, hidden]` that predict each trajectory's generated
/// tokens, teacher-forced, with the turn-1 prefix and each image's vision features computed
/// once per group.
pub fn group_hidden(
    be: &CandleBackend,
    model: &Qwen25VL<CandleBackend>,
    prompt: &PreparedPrompt,
    trajs: &[&Trajectory],
    merge: u32,
    shared: Option<&SharedPrefix>,
) -> Result<Vec<Tensor>> {
    let low = model
        .vision
        .forward(be, &prompt.low.data, &[prompt.low.grid_thw])?;
    let reuse =
        shared.filter(|s| prompt.prefix.len() > s.ids.len() && prompt.prefix.starts_with(&s.ids));
    let (mut cache, mut pos, start) = match reuse {
        Some(s) => (s.cache.clone(), s.pos.clone(), s.ids.len()),
        None => (model.new_cache(), MropeBuilder::new(), 0),
    };
    let rest = &prompt.prefix[start..];
    extend_rope_index(&mut pos, rest, &[prompt.low.grid_thw], merge)?;
    let e = model.embed(be, rest, Some(&low))?;
    let hidden_p = model.decode(be, &e, pos.positions(), &mut cache)?;
    let last_p = hidden_p.narrow(0, rest.len() - 1, 1)?;
    let high = if trajs.iter().any(|t| t.used_high()) {
        Some(
            model
                .vision
                .forward(be, &prompt.high.data, &[prompt.high.grid_thw])?,
        )
    } else {
        None
    };
    // A trajectory's tool images in order: the group's full image, or its own crops.
    let tool_feats = |t: &Trajectory| -> Result<Option<Tensor>> {
        let mut parts = Vec::with_capacity(t.images.len());
        for img in &t.images {
            parts.push(match (&img.pixels, &high) {
                (None, Some(h)) => h.clone(),
                (None, None) => anyhow::bail!("a trajectory's full image was not computed"),
                (Some(pv), _) => model.vision.forward(be, &pv.data, &[pv.grid_thw])?,
            });
        }
        Ok(match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => Some(Tensor::cat(&parts, 0)?),
        })
    };
    let mut out = Vec::with_capacity(trajs.len());
    for t in trajs {
        let c = t.cont.len();
        // Rows that predict each continuation token: the prefix's last row, then the
        // continuation's rows except its last.
        let rows = if c > 1 {
            let mut cache = cache.clone();
            let mut pos = pos.clone();
            let grids: Vec<[u32; 3]> = t.images.iter().map(|i| i.pixels(prompt).grid_thw).collect();
            let input = &t.cont[..c - 1];
            extend_rope_index(&mut pos, input, &grids, merge)?;
            let feats = tool_feats(t)?;
            let e = model.embed(be, input, feats.as_ref())?;
            let h = model.decode(be, &e, pos.positions(), &mut cache)?;
            Tensor::cat(&[&last_p, &h], 0)?
        } else {
            last_p.clone()
        };
        let sel: Vec<u32> = t
            .generated
            .iter()
            .enumerate()
            .filter(|(_, g)| **g)
            .map(|(i, _)| i as u32)
            .collect();
        let idx = Tensor::from_slice(&sel, sel.len(), rows.device())?;
        out.push(rows.index_select(&idx, 0)?);
    }
    Ok(out)
}

/// The text every turn-1 prompt starts with (chat template, system prompt, the user template up
/// to the image), run once per optimizer step and shared by every sequence of the batch: its
/// gradient is the sum over them, as if each had computed it.
pub struct SharedPrefix {
    /// The shared ids.
    pub ids: Vec<u32>,
    cache: visionthink_model::KvCache<CandleBackend>,
    pos: MropeBuilder,
}

impl SharedPrefix {
    /// Runs the text of `prompt` before its first image (`None` when there is none).
    pub fn new(
        be: &CandleBackend,
        model: &Qwen25VL<CandleBackend>,
        prompt: &PreparedPrompt,
        merge: u32,
    ) -> Result<Option<Self>> {
        let n = prompt
            .prefix
            .iter()
            .position(|&t| t == visionthink_core::tokens::VISION_START)
            .unwrap_or(0);
        if n == 0 {
            return Ok(None);
        }
        let ids = prompt.prefix[..n].to_vec();
        let mut cache = model.new_cache();
        let mut pos = MropeBuilder::new();
        extend_rope_index(&mut pos, &ids, &[], merge)?;
        let e = model.embed(be, &ids, None)?;
        model.decode(be, &e, pos.positions(), &mut cache)?;
        Ok(Some(Self { ids, cache, pos }))
    }
}

/// Log-probs (and entropies) of `ids[i]` under the rows `rows[i]`: one vocabulary projection
/// and one fused log-softmax for the whole batch, so the head's gradient is formed once.
pub fn batch_logp(
    be: &CandleBackend,
    model: &Qwen25VL<CandleBackend>,
    rows: &[Tensor],
    ids: &[Vec<u32>],
    with_entropy: bool,
) -> Result<Vec<(Tensor, Option<Tensor>)>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let all = Tensor::cat(rows, 0)?;
    let flat: Vec<u32> = ids.iter().flatten().copied().collect();
    let head = model.lm_head();
    let (lp, ent) =
        if all.device().is_cpu() && all.dtype() == DType::F32 && head.dtype() == DType::F32 {
            // The projection and the log-softmax fused: the [tokens, vocab] logits never exist.
            let both = all.contiguous()?.apply_op2(
                &head.contiguous()?,
                crate::fused::LinearLogpEntropy { ids: flat },
            )?;
            split_logp_entropy(&both, with_entropy)?
        } else {
            let logits = model.logits(be, &all)?;
            logp_and_entropy(&logits, &flat, with_entropy)?
        };
    let mut out = Vec::with_capacity(rows.len());
    let mut start = 0;
    for r in ids {
        let n = r.len();
        out.push((
            lp.narrow(0, start, n)?,
            ent.as_ref().map(|e| e.narrow(0, start, n)).transpose()?,
        ));
        start += n;
    }
    Ok(out)
}

/// Per-token log-probs (no gradient) of a group under a frozen model.
pub fn group_logps(
    be: &CandleBackend,
    model: &Qwen25VL<CandleBackend>,
    prompt: &PreparedPrompt,
    trajs: &[&Trajectory],
    merge: u32,
) -> Result<Vec<Vec<f32>>> {
    let shared = SharedPrefix::new(be, model, prompt, merge)?;
    let rows = group_hidden(be, model, prompt, trajs, merge, shared.as_ref())?;
    let ids: Vec<Vec<u32>> = trajs.iter().map(|t| t.generated_ids()).collect();
    batch_logp(be, model, &rows, &ids, false)?
        .into_iter()
        .map(|(lp, _)| Ok(lp.to_vec1::<f32>()?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn softmax(x: &[f64]) -> Vec<f64> {
        let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    /// Two tokens over a vocabulary of three, hand-computed: loss value and d loss / d logits.
    #[test]
    fn loss_and_gradient_match_hand_computation() {
        let logits = [[0.5f64, -0.2, 0.1], [1.0, 0.3, -0.4]];
        let ids = [0u32, 2];
        let adv = 0.8;
        // old log-probs: token 0 slightly less likely before (ratio > 1 but inside the clip),
        // token 1 much more likely before (ratio < 0.8: but A > 0 so the clip is inactive
        // on the low side, the unclipped term is the max).
        let p: Vec<Vec<f64>> = logits.iter().map(|r| softmax(r)).collect();
        let logp = [p[0][0].ln(), p[1][2].ln()];
        let old = [logp[0] - 0.1, logp[1] + 0.5];
        let reference = [logp[0] + 0.3, logp[1] - 0.2];
        let cfg = LossConfig {
            clip_low: 0.2,
            clip_high: 0.2,
            kl_coef: 0.1,
            entropy_coef: 0.01,
        };
        // Hand computation.
        let mut loss = 0.0;
        let mut grad = [[0.0f64; 3]; 2];
        for t in 0..2 {
            let ratio = (logp[t] - old[t]).exp();
            let clipped = ratio.clamp(0.8, 1.2);
            let (pg1, pg2) = (-adv * ratio, -adv * clipped);
            let pg = pg1.max(pg2);
            // d pg / d logp: the unclipped branch when it is the max and not clamped.
            let dpg = if pg1 >= pg2 { -adv * ratio } else { 0.0 };
            let d = reference[t] - logp[t];
            let kl = d.exp() - d - 1.0;
            let dkl = -d.exp() + 1.0;
            let ent: f64 = -p[t].iter().map(|q| q * q.ln()).sum::<f64>();
            loss += (pg + cfg.kl_coef * kl - cfg.entropy_coef * ent) / 2.0;
            let dlogp = (dpg + cfg.kl_coef * dkl) / 2.0;
            for j in 0..3 {
                let onehot = if j as u32 == ids[t] { 1.0 } else { 0.0 };
                // d logp / d z_j = onehot − p_j; d H / d z_j = −p_j (log p_j + H).
                let dent = -p[t][j] * (p[t][j].ln() + ent);
                grad[t][j] = dlogp * (onehot - p[t][j]) - cfg.entropy_coef * dent / 2.0;
            }
        }
        let flat: Vec<f32> = logits.iter().flatten().map(|&x| x as f32).collect();
        let var = Var::from_vec(flat, (2, 3), &Device::Cpu).expect("var");
        let (lp, ent) = logp_and_entropy(var.as_tensor(), &ids, true).expect("logp");
        let oldf: Vec<f32> = old.iter().map(|&x| x as f32).collect();
        let reff: Vec<f32> = reference.iter().map(|&x| x as f32).collect();
        let (l, stats) =
            sequence_loss(&lp, ent.as_ref(), &oldf, Some(&reff), adv, &cfg).expect("loss");
        let got = l.to_scalar::<f32>().expect("scalar") as f64;
        assert!((got - loss).abs() < 1e-5, "loss {got} vs {loss}");
        assert_eq!(stats.tokens, 2);
        let grads = l.backward().expect("backward");
        let g = grads
            .get(var.as_tensor())
            .expect("grad")
            .to_vec2::<f32>()
            .expect("vec");
        for t in 0..2 {
            for j in 0..3 {
                assert!(
                    (g[t][j] as f64 - grad[t][j]).abs() < 1e-5,
                    "grad[{t}][{j}] {} vs {}",
                    g[t][j],
                    grad[t][j]
                );
            }
        }
    }

    /// A ratio pushed past the clip in the direction of the advantage has no gradient; the
    /// KL is clamped at 10.
    #[test]
    fn clipped_tokens_have_no_policy_gradient_and_kl_is_clamped() {
        let var = Var::from_vec(vec![2.0f32, 0.0, 0.0], (1, 3), &Device::Cpu).expect("var");
        let (lp, _) = logp_and_entropy(var.as_tensor(), &[0], false).expect("logp");
        let logp = lp.to_vec1::<f32>().expect("v")[0];
        let cfg = LossConfig {
            kl_coef: 0.0,
            entropy_coef: 0.0,
            ..Default::default()
        };
        // ratio = e^0.5 ≈ 1.65 > 1.2 with A > 0: clipped.
        let (l, stats) = sequence_loss(&lp, None, &[logp - 0.5], None, 1.0, &cfg).expect("loss");
        assert!((l.to_scalar::<f32>().expect("s") + 1.2).abs() < 1e-6);
        assert_eq!(stats.clip_frac, 1.0);
        let g = l
            .backward()
            .expect("b")
            .get(var.as_tensor())
            .expect("g")
            .to_vec2::<f32>()
            .expect("v");
        assert!(g[0].iter().all(|x| x.abs() < 1e-9), "{g:?}");
        // Same ratio with A < 0: the unclipped term is the max, gradient flows.
        let (l, stats) = sequence_loss(&lp, None, &[logp - 0.5], None, -1.0, &cfg).expect("loss");
        assert_eq!(stats.clip_frac, 0.0);
        let g = l
            .backward()
            .expect("b")
            .get(var.as_tensor())
            .expect("g")
            .to_vec2::<f32>()
            .expect("v");
        assert!(g[0][0] > 0.1, "{g:?}");
        // k3 of a huge log-ratio is clamped to 10.
        let cfg = LossConfig {
            kl_coef: 1.0,
            entropy_coef: 0.0,
            clip_low: 0.2,
            clip_high: 0.2,
        };
        let (_, stats) =
            sequence_loss(&lp, None, &[logp], Some(&[logp + 30.0]), 0.0, &cfg).expect("loss");
        assert!((stats.kl - 10.0).abs() < 1e-6, "{}", stats.kl);
    }
}
