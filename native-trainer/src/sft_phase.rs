//! The SFT warm start: traces whose resize decision is drawn independently of the question
//! (probability `sft.tool_fraction`), so only RL can learn when resizing pays.

use crate::config::{Phase, TrainConfig};
use crate::data::{Dataset, Example};
use crate::grpo::{batch_logp, group_hidden, SharedPrefix};
use crate::metrics::{self, SftStep};
use crate::optim::GradAccum;
use crate::policy::Policy;
use crate::rng::Rng;
use crate::rollout::{crop_call, forced_trajectory, RESIZE_CALL};
use crate::run::{self, Hooks, Loader, StepEnd};
use anyhow::Result;
use candle_core::Tensor;
use std::time::Instant;
use visionthink_model::{CandleBackend, Qwen25VL};

/// Runs (or, with `resume`, continues) the SFT phase for `run.steps` steps.
pub fn sft(cfg: &TrainConfig, resume: bool, hooks: &Hooks<'_>) -> Result<()> {
    let ds = run::open_data(cfg)?;
    let (policy, mut opt, mut state) = run::start(cfg, Phase::Sft, resume, cfg.run.steps, true)?;
    let vars = policy.vars();
    let mut rng = Rng { state: state.rng };
    let mut loader = Loader::new(&ds, cfg.run.seed, state.cursor.clone());
    let pb = run::bar(cfg.run.steps, Phase::Sft);
    pb.set_position(state.step as u64);
    while state.step < cfg.run.steps {
        let step = state.step + 1;
        run::trace(Phase::Sft, step, "update");
        let t0 = Instant::now();
        policy.be.take_sparse_rows();
        let view = policy.compute_view(cfg.run.compute_dtype)?;
        let (cbe, cmodel) = policy.forward_parts(&view);
        let batch = build_batch(cfg, &policy, (cbe, cmodel), &ds, &mut loader, &mut rng)?;
        // One vocabulary projection and one backward per batch: the large embedding / head
        // gradients are formed once.
        let (total, loss) = batch_loss(cbe, cmodel, &batch)?;
        let t_fwd = t0.elapsed().as_secs_f64();
        let mut acc = GradAccum::new(vars.len());
        if let Some(t) = total {
            let grads = t.backward()?;
            acc.add(&vars, &grads, &policy.be.take_sparse_rows())?;
        }
        let t_bwd = t0.elapsed().as_secs_f64() - t_fwd;
        if loss.n == 0 {
            run::non_finite(cfg, Phase::Sft, step, "no finite loss in the batch")?;
        } else {
            match opt.step(&vars, &mut acc, 1.0) {
                Ok(info) => {
                    let secs = t0.elapsed().as_secs_f64();
                    let mean = loss.sum / loss.n as f64;
                    metrics::log(
                        &cfg.run.out,
                        &SftStep {
                            phase: Phase::Sft,
                            step,
                            loss: mean,
                            grad_norm: info.grad_norm,
                            lr: info.lr,
                            tokens: loss.tokens,
                            tokens_per_s: loss.tokens as f64 / secs,
                            seconds: secs,
                            forward_s: t_fwd,
                            backward_s: t_bwd,
                            optimizer_s: secs - t_fwd - t_bwd,
                            peak_rss_mb: metrics::peak_rss_mb(),
                        },
                    )?;
                    pb.set_message(format!("loss {mean:.3}"));
                }
                Err(e) => run::non_finite(cfg, Phase::Sft, step, &e.to_string())?,
            }
        }
        let end = StepEnd {
            cfg,
            phase: Phase::Sft,
            policy: &policy,
            opt: &opt,
            rng: &rng,
            loader: &loader,
            writer: true,
        };
        state = end.finish(step, hooks)?;
        pb.inc(1);
    }
    pb.finish();
    Ok(())
}

/// The decoder's final hidden rows of each trace of a batch, and the ids they predict.
struct Batch {
    rows: Vec<Tensor>,
    ids: Vec<Vec<u32>>,
}

/// Draws `sft.batch` examples and teacher-forces their traces; rows that cannot be prepared
/// are reported and left out.
fn build_batch(
    cfg: &TrainConfig,
    policy: &Policy,
    (cbe, cmodel): (&CandleBackend, &Qwen25VL<CandleBackend>),
    ds: &Dataset,
    loader: &mut Loader<'_>,
    rng: &mut Rng,
) -> Result<Batch> {
    let merge = policy.files.preprocessor.merge_size;
    let mut batch = Batch {
        rows: Vec::new(),
        ids: Vec::new(),
    };
    let mut shared: Option<SharedPrefix> = None;
    for _ in 0..cfg.sft.batch {
        let i = loader.next_index();
        let prompt = match run::prepared(policy, cfg, ds, i) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("skipped: {e:#}");
                continue;
            }
        };
        let Some(turns) = trace_turns(cfg, &ds.examples[i], rng) else {
            eprintln!(
                "skipped: row {} lacks an attribute the SFT templates use",
                ds.examples[i].doc_id
            );
            continue;
        };
        let traj = forced_trajectory(&policy.files, &prompt, &turns)?;
        if shared.is_none() {
            shared = SharedPrefix::new(cbe, cmodel, &prompt, merge)?;
        }
        let hidden = group_hidden(cbe, cmodel, &prompt, &[&traj], merge, shared.as_ref())?;
        batch.rows.extend(hidden);
        batch.ids.push(traj.generated_ids());
    }
    Ok(batch)
}

/// The assistant turns of one SFT trace: a resize call then the answer (probability
/// `sft.tool_fraction`), a crop call around the row's box (`sft.box_attribute`) then the answer (probability
/// `sft.crop_fraction`), or the answer directly. `None` when a template names an attribute the
/// row lacks (then no random number is drawn).
fn trace_turns(cfg: &TrainConfig, ex: &Example, rng: &mut Rng) -> Option<Vec<String>> {
    let answer = &ex.answer;
    let fill = |t: &str| -> Option<String> {
        let mut out = t
            .replace("{answer}", answer)
            .replace("{kind}", ex.kind.name());
        for (k, v) in &ex.attributes {
            out = out.replace(&format!("{{{k}}}"), v);
        }
        (!out.contains('{')).then_some(out)
    };
    let think_tool = fill(&cfg.sft.think_tool)?;
    let think_after = fill(&cfg.sft.think_after)?;
    let think_direct = fill(&cfg.sft.think_direct)?;
    let crop = if cfg.sft.crop_fraction > 0.0 {
        Some((
            fill(&cfg.sft.think_crop)?,
            fill(&cfg.sft.think_after_crop)?,
            ex.attributes.get(&cfg.sft.box_attribute)?.clone(),
        ))
    } else {
        None
    };
    let u = rng.uniform();
    Some(if u < cfg.sft.tool_fraction {
        vec![
            format!("<think>{think_tool}</think>{RESIZE_CALL}"),
            format!("<think>{think_after}</think><answer>{answer}</answer>"),
        ]
    } else if let Some((think_crop, after_crop, bbox)) =
        crop.filter(|_| u < cfg.sft.tool_fraction + cfg.sft.crop_fraction)
    {
        vec![
            format!("<think>{think_crop}</think>{}", crop_call(&bbox)),
            format!("<think>{after_crop}</think><answer>{answer}</answer>"),
        ]
    } else {
        vec![format!(
            "<think>{think_direct}</think><answer>{answer}</answer>"
        )]
    })
}

/// The batch's summed negative log-likelihood.
struct BatchLoss {
    sum: f64,
    tokens: usize,
    n: usize,
}

/// The loss to differentiate (each trace's mean token NLL over the batch size; non-finite
/// traces left out) and its parts.
fn batch_loss(
    cbe: &CandleBackend,
    cmodel: &Qwen25VL<CandleBackend>,
    batch: &Batch,
) -> Result<(Option<Tensor>, BatchLoss)> {
    let mut total: Option<Tensor> = None;
    let mut loss = BatchLoss {
        sum: 0.0,
        tokens: 0,
        n: 0,
    };
    let rows = batch.rows.len();
    for (lp, _) in batch_logp(cbe, cmodel, &batch.rows, &batch.ids, false)? {
        let l = (lp.mean_all()?.neg()? / rows as f64)?;
        let v = l.to_scalar::<f32>()? as f64;
        if !v.is_finite() {
            continue;
        }
        loss.sum += v * rows as f64;
        loss.tokens += lp.dim(0)?;
        loss.n += 1;
        total = Some(match total {
            Some(t) => (t + l)?,
            None => l,
        });
    }
    Ok((total, loss))
}
