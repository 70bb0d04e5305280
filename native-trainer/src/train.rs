//! The two training phases: the SFT warm start and multi-turn GRPO (SPEC §7), with
//! checkpoints, exact resume, JSONL metrics and progress bars.

use crate::checkpoint::{self, DataCursor, TrainerState};
use crate::config::{JudgeKind, OnNan, TrainConfig};
use crate::data::Dataset;
use crate::grpo::{batch_logp, group_hidden, group_logps, sequence_loss, LossConfig, SharedPrefix};
use crate::optim::{AdamW, GradAccum};
use crate::policy::Policy;
use crate::rng::Rng;
use crate::rollout::{
    forced_trajectory, prepare, rollout_group, PreparedPrompt, RolloutConfig, Steer, Trajectory,
};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;
use visionthink::{HttpJudge, HttpJudgeConfig};
use visionthink_core::judge::{ExactJudge, Judge, JudgeRequest, RuleJudge};
use visionthink_core::reward::{grpo_advantages, score_group, JudgedRollout};
use visionthink_core::sampling::SamplingConfig;

/// The metrics file in the run folder.
pub const METRICS: &str = "metrics.jsonl";

/// Appends one JSON line to a file of the run folder.
fn append_jsonl(path: &Path, v: &Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot append to {}", path.display()))?;
    writeln!(f, "{v}")?;
    Ok(())
}

/// Appends one JSON line to the run's metrics.
fn log_metrics(out: &Path, v: &Value) -> Result<()> {
    append_jsonl(&out.join(METRICS), v)
}

/// Appends one rollout record to the run's `rollouts.jsonl` (`run.log_rollouts`).
fn log_rollout(out: &Path, v: &Value) -> Result<()> {
    append_jsonl(&out.join("rollouts.jsonl"), v)
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in MiB.
pub fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Keeps only metric lines of `phase` up to `step` (after a resume, the lines of steps that the
/// restored checkpoint does not contain are dropped, so no step appears twice).
fn truncate_metrics(out: &Path, phase: &str, step: usize) -> Result<()> {
    let p = out.join(METRICS);
    let Ok(text) = std::fs::read_to_string(&p) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
            v["phase"] != phase || v["step"].as_u64().is_some_and(|s| s as usize <= step)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    checkpoint::write_atomic(&p, body.as_bytes())
}

/// Serves examples in a seeded order, epoch after epoch.
struct Loader<'a> {
    data: &'a Dataset,
    seed: u64,
    cursor: DataCursor,
    order: Vec<usize>,
}

impl<'a> Loader<'a> {
    fn new(data: &'a Dataset, seed: u64, cursor: DataCursor) -> Self {
        let order =
            Rng::new(seed ^ cursor.epoch.wrapping_mul(0x9E37)).permutation(data.examples.len());
        Self {
            data,
            seed,
            cursor,
            order,
        }
    }

    fn next(&mut self) -> usize {
        if self.cursor.index >= self.order.len() {
            self.cursor = DataCursor {
                epoch: self.cursor.epoch + 1,
                index: 0,
            };
            self.order = Rng::new(self.seed ^ self.cursor.epoch.wrapping_mul(0x9E37))
                .permutation(self.data.examples.len());
        }
        let i = self.order[self.cursor.index];
        self.cursor.index += 1;
        i
    }
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template(&format!("{what} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}} < {{eta_precise}}, {{per_sec}}] {{msg}}")) {
        pb.set_style(style);
    }
    pb
}

/// With `VISIONTHINK_TRACE` set, a line on stderr as a step enters each part
/// (`trace: grpo step 3 rollout|update|checkpoint|saved`): where a run is, for logs and for the
/// fault tests that kill it at chosen points.
fn trace(phase: &str, step: usize, part: &str) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("VISIONTHINK_TRACE").is_some()) {
        eprintln!("trace: {phase} step {step} {part}");
    }
}

/// Starts or resumes: the policy, optimizer and state of a phase.
fn start(
    cfg: &TrainConfig,
    phase: &str,
    resume: bool,
    lr_scale_steps: usize,
) -> Result<(Policy, AdamW, TrainerState)> {
    std::fs::create_dir_all(&cfg.run.out)
        .with_context(|| format!("cannot create {}", cfg.run.out.display()))?;
    let mut ocfg = cfg.optim.clone();
    if ocfg.total_steps == 0 {
        ocfg.total_steps = lr_scale_steps;
    }
    if resume {
        if let Some((dir, state)) = checkpoint::latest_intact(&cfg.run.out)? {
            if state.phase != phase {
                bail!(
                    "{} holds a {} checkpoint; this is {phase}",
                    dir.display(),
                    state.phase
                );
            }
            let policy = Policy::load(&dir)?;
            let mut opt = AdamW::new(ocfg, &policy.vars())?;
            checkpoint::load_moments(&dir, &mut opt, state.optimizer_steps)?;
            truncate_metrics(&cfg.run.out, phase, state.step)?;
            eprintln!(
                "resuming {phase} from {} (step {})",
                dir.display(),
                state.step
            );
            return Ok((policy, opt, state));
        }
        eprintln!(
            "--resume: no checkpoint in {}, starting fresh",
            cfg.run.out.display()
        );
    }
    let policy = match &cfg.model.init_from {
        Some(dir) => Policy::load(dir)?,
        None => Policy::from_scratch(&cfg.model.arch, &cfg.model.files_from, cfg.run.seed)?,
    };
    truncate_metrics(&cfg.run.out, phase, 0)?;
    let opt = AdamW::new(ocfg, &policy.vars())?;
    let state = TrainerState {
        step: 0,
        optimizer_steps: 0,
        rng: Rng::new(cfg.run.seed).state,
        cursor: DataCursor::default(),
        phase: phase.into(),
        files: Default::default(),
    };
    Ok((policy, opt, state))
}

fn open_data(cfg: &TrainConfig) -> Result<Dataset> {
    let ds = Dataset::open(&cfg.data.train, cfg.run.bad_rows)?;
    for s in &ds.skipped {
        eprintln!("skipped row: {s}");
    }
    Ok(ds)
}

/// Decodes and prepares an example, or explains why it was skipped.
fn prepared(policy: &Policy, cfg: &TrainConfig, ds: &Dataset, i: usize) -> Result<PreparedPrompt> {
    let img = ds.image(i)?;
    let ex = &ds.examples[i];
    prepare(&policy.files, &img, &ex.problem, cfg.data.image_path)
        .with_context(|| format!("row {} ({})", ex.doc_id, ex.image))
}

/// Records the state after `step`, checkpoints it when due (then prunes old checkpoints and
/// redraws the curves). `fail_at` is the test hook that dies right after a step, unsaved.
#[allow(clippy::too_many_arguments)] // the pieces of the trainer's state, each borrowed
fn end_step(
    cfg: &TrainConfig,
    policy: &Policy,
    opt: &AdamW,
    step: usize,
    rng: &Rng,
    loader: &Loader<'_>,
    phase: &str,
    fail_at: Option<usize>,
) -> Result<TrainerState> {
    let state = TrainerState {
        step,
        optimizer_steps: opt.t,
        rng: rng.state,
        cursor: loader.cursor.clone(),
        phase: phase.into(),
        files: Default::default(),
    };
    if fail_at == Some(step) {
        // Like SIGKILL: no checkpoint of this step.
        std::process::exit(3);
    }
    if step % cfg.run.save_every.max(1) == 0 || step == cfg.run.steps {
        trace(phase, step, "checkpoint");
        checkpoint::save(&cfg.run.out, policy, opt, &state)?;
        trace(phase, step, "saved");
        checkpoint::prune(&cfg.run.out, cfg.run.keep_checkpoints)?;
        if let Err(e) = crate::plots::write_curves(&cfg.run.out) {
            eprintln!("curves not drawn: {e:#}");
        }
    }
    Ok(state)
}

/// Handles a non-finite loss or gradient by the configured policy.
fn non_finite(cfg: &TrainConfig, out: &Path, phase: &str, step: usize, what: &str) -> Result<()> {
    eprintln!("step {step}: {what}; optimizer step skipped");
    log_metrics(out, &json!({"phase": phase, "step": step, "skipped": what}))?;
    if cfg.run.on_nan == OnNan::Stop {
        bail!("step {step}: {what} (run.on_nan = \"stop\")");
    }
    Ok(())
}

/// The SFT warm start: traces whose resize decision is drawn independently of the question
/// (probability `sft.tool_fraction`), so only RL can learn when resizing pays.
pub fn sft(cfg: &TrainConfig, resume: bool, fail_at: Option<usize>) -> Result<()> {
    let ds = open_data(cfg)?;
    let (policy, mut opt, mut state) = start(cfg, "sft", resume, cfg.run.steps)?;
    let vars = policy.vars();
    let merge = policy.files.preprocessor.merge_size;
    let mut rng = Rng { state: state.rng };
    let mut loader = Loader::new(&ds, cfg.run.seed, state.cursor.clone());
    let pb = bar(cfg.run.steps, "sft");
    pb.set_position(state.step as u64);
    let tool_call = crate::rollout::RESIZE_CALL;
    while state.step < cfg.run.steps {
        trace("sft", state.step + 1, "update");
        let t0 = Instant::now();
        let mut acc = GradAccum::new(vars.len());
        let (mut loss_sum, mut tokens, mut n) = (0.0f64, 0usize, 0usize);
        let mut rows = Vec::new();
        let mut ids = Vec::new();
        let mut shared: Option<SharedPrefix> = None;
        policy.be.take_sparse_rows();
        let view = policy.compute_view(cfg.run.compute_dtype)?;
        let (cbe, cmodel) = policy.forward_parts(&view);
        for _ in 0..cfg.sft.batch {
            let i = loader.next();
            let prompt = match prepared(&policy, cfg, &ds, i) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("skipped: {e:#}");
                    continue;
                }
            };
            let ex = &ds.examples[i];
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
            let (Some(think_tool), Some(think_after), Some(think_direct)) = (
                fill(&cfg.sft.think_tool),
                fill(&cfg.sft.think_after),
                fill(&cfg.sft.think_direct),
            ) else {
                eprintln!(
                    "skipped: row {} lacks an attribute the SFT templates use",
                    ex.doc_id
                );
                continue;
            };
            let turns = if rng.uniform() < cfg.sft.tool_fraction {
                vec![
                    format!("<think>{think_tool}</think>{tool_call}"),
                    format!("<think>{think_after}</think><answer>{answer}</answer>"),
                ]
            } else {
                vec![format!(
                    "<think>{think_direct}</think><answer>{answer}</answer>"
                )]
            };
            let traj = forced_trajectory(&policy.files, &prompt, &turns)?;
            if shared.is_none() {
                shared = SharedPrefix::new(cbe, cmodel, &prompt, merge)?;
            }
            rows.extend(group_hidden(
                cbe,
                cmodel,
                &prompt,
                &[&traj],
                merge,
                shared.as_ref(),
            )?);
            ids.push(traj.generated_ids());
        }
        // One vocabulary projection and one backward per batch: the large embedding / head
        // gradients are formed once.
        let mut total: Option<Tensor> = None;
        for (lp, _) in batch_logp(cbe, cmodel, &rows, &ids, false)? {
            let loss = (lp.mean_all()?.neg()? / rows.len() as f64)?;
            let v = loss.to_scalar::<f32>()? as f64;
            if !v.is_finite() {
                continue;
            }
            loss_sum += v * rows.len() as f64;
            tokens += lp.dim(0)?;
            n += 1;
            total = Some(match total {
                Some(t) => (t + loss)?,
                None => loss,
            });
        }
        let t_fwd = t0.elapsed().as_secs_f64();
        if let Some(t) = total.take() {
            let grads = t.backward()?;
            acc.add(&vars, &grads, &policy.be.take_sparse_rows())?;
        }
        let t_bwd = t0.elapsed().as_secs_f64() - t_fwd;
        let step = state.step + 1;
        if n == 0 {
            non_finite(
                cfg,
                &cfg.run.out,
                "sft",
                step,
                "no finite loss in the batch",
            )?;
        } else {
            match opt.step(&vars, &mut acc, 1.0) {
                Ok(info) => {
                    let secs = t0.elapsed().as_secs_f64();
                    let opt_s = secs - t_fwd - t_bwd;
                    log_metrics(
                        &cfg.run.out,
                        &json!({"phase": "sft", "step": step, "loss": loss_sum / n as f64, "grad_norm": info.grad_norm, "lr": info.lr, "tokens": tokens, "tokens_per_s": tokens as f64 / secs, "seconds": secs, "forward_s": t_fwd, "backward_s": t_bwd, "optimizer_s": opt_s, "peak_rss_mb": peak_rss_mb()}),
                    )?;
                    pb.set_message(format!("loss {:.3}", loss_sum / n as f64));
                }
                Err(e) => non_finite(cfg, &cfg.run.out, "sft", step, &e.to_string())?,
            }
        }
        state = end_step(cfg, &policy, &opt, step, &rng, &loader, "sft", fail_at)?;
        pb.inc(1);
    }
    pb.finish();
    Ok(())
}

fn make_judge(cfg: &TrainConfig) -> Box<dyn Judge + Send + Sync> {
    match cfg.judge.kind {
        JudgeKind::Rule => Box::new(RuleJudge),
        JudgeKind::Exact => Box::new(ExactJudge),
        JudgeKind::Http => {
            let mut h = HttpJudgeConfig::new(&cfg.judge.url, &cfg.judge.model);
            h.timeout = std::time::Duration::from_secs_f64(cfg.judge.timeout_s.max(0.001));
            h.retry_delay = std::time::Duration::from_secs_f64(cfg.judge.retry_delay_s.max(0.0));
            Box::new(HttpJudge::new(h))
        }
    }
}

/// Judges every request with at most `concurrency` in flight; `None` = the judge failed.
pub fn judge_all(
    judge: &(dyn Judge + Send + Sync),
    reqs: &[JudgeRequest],
    concurrency: usize,
) -> Vec<Option<bool>> {
    let mut out = vec![None; reqs.len()];
    for (chunk_out, chunk) in out
        .chunks_mut(concurrency.max(1))
        .zip(reqs.chunks(concurrency.max(1)))
    {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|r| s.spawn(move || judge.judge(r)))
                .collect();
            for (slot, h) in chunk_out.iter_mut().zip(handles) {
                *slot = match h.join() {
                    Ok(Ok(v)) => Some(v),
                    Ok(Err(e)) => {
                        eprintln!("{e}");
                        None
                    }
                    Err(_) => None,
                };
            }
        });
    }
    out
}

/// One scored group.
struct Group {
    prompt: PreparedPrompt,
    trajs: Vec<Trajectory>,
    advantages: Vec<f64>,
    old: Option<Vec<Vec<f32>>>,
}

#[derive(Default)]
struct Tally {
    n: f64,
    reward: f64,
    correct: f64,
    resized: f64,
    length: f64,
    visual: f64,
}

impl Tally {
    fn add(&mut self, reward: f64, correct: bool, resized: bool, len: usize, visual: usize) {
        self.n += 1.0;
        self.reward += reward;
        self.correct += f64::from(u8::from(correct));
        self.resized += f64::from(u8::from(resized));
        self.length += len as f64;
        self.visual += visual as f64;
    }
    fn json(&self) -> Value {
        let d = self.n.max(1.0);
        json!({"n": self.n, "reward": self.reward / d, "accuracy": self.correct / d, "resize_ratio": self.resized / d, "response_length": self.length / d, "visual_tokens": self.visual / d})
    }
}

/// Multi-turn GRPO.
pub fn grpo(cfg: &TrainConfig, resume: bool, fail_at: Option<usize>) -> Result<()> {
    let ds = open_data(cfg)?;
    let minis_per_step = cfg
        .grpo
        .prompts_per_step
        .div_ceil(cfg.grpo.mini_batch_prompts);
    let (policy, mut opt, mut state) = start(cfg, "grpo", resume, cfg.run.steps * minis_per_step)?;
    let vars = policy.vars();
    let merge = policy.files.preprocessor.merge_size;
    let judge = make_judge(cfg);
    let reward_cfg = cfg.reward.to_core();
    let loss_cfg = LossConfig {
        clip_low: cfg.grpo.clip_low,
        clip_high: cfg.grpo.clip_high,
        kl_coef: cfg.grpo.kl_coef,
        entropy_coef: cfg.grpo.entropy_coef,
    };
    // The frozen reference for the KL term: the starting weights (or a given folder).
    let reference = if cfg.grpo.kl_coef != 0.0 {
        let dir = cfg
            .grpo
            .reference
            .clone()
            .or_else(|| cfg.model.init_from.clone());
        let r = match dir {
            Some(d) => Policy::load(&d)?,
            None => {
                bail!("grpo.kl_coef > 0 needs a reference: set model.init_from or grpo.reference")
            }
        };
        Some(r.frozen())
    } else {
        None
    };
    let (fbe, fmodel) = policy.frozen();
    let rollout_cfg = RolloutConfig {
        sampling: SamplingConfig {
            temperature: cfg.rollout.temperature,
            top_p: cfg.rollout.top_p,
            top_k: cfg.rollout.top_k,
            seed: 0,
        },
        max_new_tokens: cfg.rollout.max_new_tokens,
        max_rounds: cfg.rollout.max_rounds,
        max_images: cfg.rollout.max_images,
        record_logps: false,
    };
    let mut rng = Rng { state: state.rng };
    let mut loader = Loader::new(&ds, cfg.run.seed, state.cursor.clone());
    let pb = bar(cfg.run.steps, "grpo");
    pb.set_position(state.step as u64);
    while state.step < cfg.run.steps {
        let step = state.step + 1;
        trace("grpo", step, "rollout");
        let t_roll = Instant::now();
        let mut kept: Vec<Group> = Vec::new();
        let mut all = Tally::default();
        let mut by: BTreeMap<String, Tally> = BTreeMap::new();
        let (mut groups_seen, mut groups_dropped, mut judge_failures, mut gen_tokens) =
            (0usize, 0usize, 0usize, 0usize);
        let mut rounds = 0;
        while kept.len() < cfg.grpo.prompts_per_step && rounds < cfg.grpo.max_sampling_rounds.max(1)
        {
            rounds += 1;
            let need = cfg.grpo.prompts_per_step - kept.len();
            for _ in 0..need {
                let i = loader.next();
                let ex = &ds.examples[i];
                let prompt = match prepared(&policy, cfg, &ds, i) {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("skipped: {e:#}");
                        continue;
                    }
                };
                let trajs = rollout_group(
                    &fbe,
                    &fmodel,
                    &policy.files,
                    &prompt,
                    cfg.rollout.n,
                    &rollout_cfg,
                    &Steer::Free,
                    rng.next_u64(),
                )?;
                let reqs: Vec<JudgeRequest> = trajs
                    .iter()
                    .map(|t| {
                        JudgeRequest::for_question(&ex.problem, &ex.answer, &t.outcome.prediction)
                    })
                    .collect();
                let verdicts = judge_all(judge.as_ref(), &reqs, cfg.judge.concurrency);
                judge_failures += verdicts.iter().filter(|v| v.is_none()).count();
                let judged: Vec<JudgedRollout> = trajs
                    .iter()
                    .zip(&verdicts)
                    .map(|(t, v)| JudgedRollout {
                        turns: t.outcome.turns.clone(),
                        correct: *v,
                    })
                    .collect();
                let gs = score_group(&judged, &reward_cfg);
                groups_seen += 1;
                for ((t, s), v) in trajs.iter().zip(&gs.rollouts).zip(&verdicts) {
                    let len = t.generated.iter().filter(|g| **g).count();
                    gen_tokens += len;
                    let args = (
                        s.reward,
                        *v == Some(true),
                        t.used_high,
                        len,
                        t.visual_tokens,
                    );
                    all.add(args.0, args.1, args.2, args.3, args.4);
                    for key in [
                        format!("kind/{}", ex.kind.name()),
                        format!("source/{}", ex.data_source),
                    ] {
                        by.entry(key)
                            .or_default()
                            .add(args.0, args.1, args.2, args.3, args.4);
                    }
                }
                let rewards: Vec<f64> = gs.rollouts.iter().map(|r| r.reward).collect();
                let advantages = grpo_advantages(&rewards);
                let keep = gs.kept || !cfg.grpo.dynamic_sampling;
                if cfg.run.log_rollouts {
                    for ((t, sc), a) in trajs.iter().zip(&gs.rollouts).zip(&advantages) {
                        log_rollout(
                            &cfg.run.out,
                            &json!({"step": step, "doc_id": ex.doc_id,
                                "kind": ex.kind.name(), "answer": ex.answer,
                                "turns": t.outcome.turns, "accuracy": sc.accuracy,
                                "format": sc.format_score, "reward": sc.reward,
                                "advantage": if keep { Some(*a) } else { None }}),
                        )?;
                    }
                }
                if keep {
                    kept.push(Group {
                        prompt,
                        trajs,
                        advantages,
                        old: None,
                    });
                } else {
                    groups_dropped += 1;
                }
            }
        }
        let rollout_s = t_roll.elapsed().as_secs_f64();
        trace("grpo", step, "update");
        // Old log-probs: with one optimizer step per batch the policy has not moved, so they are
        // the detached current ones; with several, they are computed before the first update.
        let t_upd = Instant::now();
        let minis: Vec<usize> = (0..kept.len())
            .step_by(cfg.grpo.mini_batch_prompts)
            .collect();
        if minis.len() > 1 {
            for g in &mut kept {
                let refs: Vec<&Trajectory> = g.trajs.iter().collect();
                g.old = Some(group_logps(&fbe, &fmodel, &g.prompt, &refs, merge)?);
            }
        }
        let (mut pg, mut kl, mut ent, mut clip, mut seqs, mut upd_tokens) =
            (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64, 0usize);
        let mut grad_norm = f64::NAN;
        let mut lr = opt.cfg.lr_at(opt.t);
        let mut skipped = None;
        for &m0 in &minis {
            let chunk = &kept[m0..(m0 + cfg.grpo.mini_batch_prompts).min(kept.len())];
            let nseq: usize = chunk.iter().map(|g| g.trajs.len()).sum();
            let mut acc = GradAccum::new(vars.len());
            let mut finite = true;
            // Built per mini-batch: a bf16 cast does not follow the previous update.
            let view = policy.compute_view(cfg.run.compute_dtype)?;
            let (cbe, cmodel) = policy.forward_parts(&view);
            for g in chunk {
                let refs: Vec<&Trajectory> = g.trajs.iter().collect();
                let ref_lp = match &reference {
                    Some((rbe, rmodel)) => Some(group_logps(rbe, rmodel, &g.prompt, &refs, merge)?),
                    None => None,
                };
                policy.be.take_sparse_rows();
                let shared = SharedPrefix::new(cbe, cmodel, &g.prompt, merge)?;
                let rows = group_hidden(cbe, cmodel, &g.prompt, &refs, merge, shared.as_ref())?;
                let ids: Vec<Vec<u32>> = g.trajs.iter().map(Trajectory::generated_ids).collect();
                let lps = batch_logp(cbe, cmodel, &rows, &ids, cfg.grpo.entropy_coef != 0.0)?;
                let mut total: Option<Tensor> = None;
                for (k, (lp, e)) in lps.into_iter().enumerate() {
                    let old = match &g.old {
                        Some(o) => o[k].clone(),
                        None => lp.to_vec1::<f32>()?,
                    };
                    let (loss, st) = sequence_loss(
                        &lp,
                        e.as_ref(),
                        &old,
                        ref_lp.as_ref().map(|r| r[k].as_slice()),
                        g.advantages[k],
                        &loss_cfg,
                    )?;
                    pg += st.pg;
                    kl += st.kl;
                    ent += st.entropy;
                    clip += st.clip_frac;
                    seqs += 1.0;
                    upd_tokens += st.tokens;
                    let loss = (loss / nseq as f64)?;
                    total = Some(match total {
                        Some(t) => (t + loss)?,
                        None => loss,
                    });
                }
                if let Some(total) = total {
                    if !total.to_scalar::<f32>()?.is_finite() {
                        finite = false;
                        break;
                    }
                    let grads = total.backward()?;
                    acc.add(&vars, &grads, &policy.be.take_sparse_rows())?;
                }
            }
            if !finite {
                skipped = Some("non-finite loss".to_string());
                continue;
            }
            if acc.micro_batches == 0 {
                continue;
            }
            match opt.step(&vars, &mut acc, 1.0) {
                Ok(info) => {
                    grad_norm = info.grad_norm;
                    lr = info.lr;
                }
                Err(e) => skipped = Some(e.to_string()),
            }
        }
        let update_s = t_upd.elapsed().as_secs_f64();
        if let Some(what) = &skipped {
            non_finite(cfg, &cfg.run.out, "grpo", step, what)?;
        }
        let d = seqs.max(1.0);
        let by_json: serde_json::Map<String, Value> =
            by.iter().map(|(k, t)| (k.clone(), t.json())).collect();
        let mut m = json!({
            "phase": "grpo", "step": step, "groups": groups_seen, "groups_kept": kept.len(), "groups_dropped": groups_dropped,
            "judge_failures": judge_failures, "sampling_rounds": rounds,
            "pg_loss": pg / d, "kl": kl / d, "entropy": ent / d, "clip_frac": clip / d, "grad_norm": grad_norm, "lr": lr,
            "rollout_s": rollout_s, "update_s": update_s,
            "rollout_tokens_per_s": gen_tokens as f64 / rollout_s.max(1e-9), "update_tokens_per_s": upd_tokens as f64 / update_s.max(1e-9),
            "by": by_json, "peak_rss_mb": peak_rss_mb(),
        });
        if let (Value::Object(dst), Value::Object(src)) = (&mut m, all.json()) {
            dst.extend(src);
        }
        log_metrics(&cfg.run.out, &m)?;
        pb.set_message(format!(
            "reward {:.3} acc {:.2} resize fine {:.2} coarse {:.2}",
            all.reward / all.n.max(1.0),
            all.correct / all.n.max(1.0),
            by.get("kind/fine")
                .map_or(f64::NAN, |t| t.resized / t.n.max(1.0)),
            by.get("kind/coarse")
                .map_or(f64::NAN, |t| t.resized / t.n.max(1.0)),
        ));
        state = end_step(cfg, &policy, &opt, step, &rng, &loader, "grpo", fail_at)?;
        pb.inc(1);
    }
    pb.finish();
    Ok(())
}
