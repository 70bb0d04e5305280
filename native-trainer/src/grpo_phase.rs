//! Multi-turn GRPO (SPEC §7): each step rolls out groups of episodes on a frozen view of the
//! policy, judges and scores them with the official rewards, drops groups whose rewards are all
//! equal (dynamic sampling, resampling up to `grpo.max_sampling_rounds`), then updates the
//! policy with the clipped surrogate (plus KL and entropy terms) in mini-batches.

use crate::collective::Collective;
use crate::config::{Phase, TrainConfig};
use crate::data::{Dataset, Example};
use crate::grpo::{batch_logp, group_hidden, group_logps, sequence_loss, LossConfig, SharedPrefix};
use crate::metrics::{self, GrpoStep, RolloutRecord, RolloutStats, Tally};
use crate::optim::{AdamW, GradAccum};
use crate::policy::Policy;
use crate::rng::Rng;
use crate::rollout::{rollout_group, PreparedPrompt, RolloutConfig, Steer, Trajectory};
use crate::run::{self, Hooks, Loader, StepEnd};
use anyhow::{bail, Result};
use candle_core::{Tensor, Var};
use std::collections::BTreeMap;
use std::time::Instant;
use visionthink::http_judge::JudgeChoice;
use visionthink::score::judge_all;
use visionthink::HttpJudgeConfig;
use visionthink_core::judge::{Judge, JudgeRequest};
use visionthink_core::reward::{advantages, score_group, JudgedRollout, RewardConfig};
use visionthink_core::sampling::SamplingConfig;
use visionthink_model::{CandleBackend, Qwen25VL};

/// Runs (or, with `resume`, continues) the GRPO phase for `run.steps` steps; data-parallel when
/// started by an MPI launcher (see [`crate::collective`]).
pub fn grpo(cfg: &TrainConfig, resume: bool, hooks: &Hooks<'_>) -> Result<()> {
    let comm = crate::collective::from_env()?;
    grpo_with(cfg, resume, hooks, comm.as_ref())
}

/// [`grpo`] on a given collective engine (every rank calls it with the same arguments).
pub fn grpo_with(
    cfg: &TrainConfig,
    resume: bool,
    hooks: &Hooks<'_>,
    comm: &dyn Collective,
) -> Result<()> {
    let ds = run::open_data(cfg)?;
    let minis_per_step = cfg
        .grpo
        .prompts_per_step
        .div_ceil(cfg.grpo.mini_batch_prompts);
    let lr_steps = cfg.run.steps * minis_per_step;
    let writer = comm.rank() == 0;
    let (policy, mut opt, mut state) = run::start(cfg, Phase::Grpo, resume, lr_steps, writer)?;
    if comm.size() > 1 {
        let weights = format!("{} at step {}", policy.weights_fingerprint()?, state.step);
        crate::collective::check_same(comm, &serde_json::to_value(cfg)?, &weights)?;
    }
    let run = GrpoRun::new(cfg, &policy, comm)?;
    let mut rng = Rng { state: state.rng };
    let mut loader = Loader::new(&ds, cfg.run.seed, state.cursor.clone());
    let pb = if writer {
        run::bar(cfg.run.steps, Phase::Grpo)
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.set_position(state.step as u64);
    while state.step < cfg.run.steps {
        let step = state.step + 1;
        run::trace(Phase::Grpo, step, "rollout");
        let t_roll = Instant::now();
        let mut batch = run.collect(step, &ds, &mut loader, &mut rng)?;
        let rollout_s = t_roll.elapsed().as_secs_f64();
        run::trace(Phase::Grpo, step, "update");
        let t_upd = Instant::now();
        let upd = run.update(&mut batch.kept, &mut opt)?;
        let update_s = t_upd.elapsed().as_secs_f64();
        if let Some(what) = &upd.skipped {
            if writer {
                run::non_finite(cfg, Phase::Grpo, step, what)?;
            } else if cfg.run.on_nan == crate::config::OnNan::Stop {
                bail!("step {step}: {what} (run.on_nan = \"stop\")");
            }
        }
        if writer {
            metrics::log(
                &cfg.run.out,
                &record(step, &batch, &upd, rollout_s, update_s),
            )?;
        }
        pb.set_message(format!(
            "reward {:.3} acc {:.2} resize fine {:.2} coarse {:.2}",
            batch.t.all.means().reward,
            batch.t.all.means().accuracy,
            batch
                .t
                .by
                .get("kind/fine")
                .map_or(f64::NAN, Tally::resize_ratio),
            batch
                .t
                .by
                .get("kind/coarse")
                .map_or(f64::NAN, Tally::resize_ratio),
        ));
        let end = StepEnd {
            cfg,
            phase: Phase::Grpo,
            policy: &policy,
            opt: &opt,
            rng: &rng,
            loader: &loader,
            writer,
        };
        state = end.finish(step, hooks)?;
        pb.inc(1);
    }
    pb.finish();
    Ok(())
}

/// The judge a training run uses (`[judge]`).
pub fn make_judge(cfg: &TrainConfig) -> Box<dyn Judge + Send + Sync> {
    use crate::config::JudgeKind;
    match cfg.judge.kind {
        JudgeKind::Rule => JudgeChoice::Rule,
        JudgeKind::Exact => JudgeChoice::Exact,
        JudgeKind::Http => {
            let mut h = HttpJudgeConfig::new(&cfg.judge.url, &cfg.judge.model);
            h.timeout = std::time::Duration::from_secs_f64(cfg.judge.timeout_s.max(0.001));
            h.retry_delay = std::time::Duration::from_secs_f64(cfg.judge.retry_delay_s.max(0.0));
            JudgeChoice::Http(h)
        }
    }
    .build()
}

/// Everything a GRPO step uses besides the optimizer and the data position.
struct GrpoRun<'a> {
    cfg: &'a TrainConfig,
    policy: &'a Policy,
    comm: &'a dyn Collective,
    vars: Vec<Var>,
    merge: u32,
    judge: Box<dyn Judge + Send + Sync>,
    reward_cfg: RewardConfig,
    loss_cfg: LossConfig,
    rollout_cfg: RolloutConfig,
    /// The frozen reference of the KL term.
    reference: Option<(CandleBackend, Qwen25VL<CandleBackend>)>,
    /// A view of the policy without autograd, for rollouts and old log-probs.
    frozen: (CandleBackend, Qwen25VL<CandleBackend>),
}

/// One scored group.
struct Group {
    prompt: PreparedPrompt,
    trajs: Vec<Trajectory>,
    advantages: Vec<f64>,
    old: Option<Vec<Vec<f32>>>,
}

/// A kept group in the step's global order: its position among the step's prompts, and the
/// group itself on the rank that rolled it out (`None` on the others).
struct Kept {
    slot: usize,
    group: Option<Group>,
}

/// A step's rollout counts: what the metrics report, and what ranks add up after each round.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Tallies {
    all: Tally,
    by: BTreeMap<String, Tally>,
    groups_seen: usize,
    groups_dropped: usize,
    judge_failures: usize,
    gen_tokens: usize,
}

impl Tallies {
    /// Adds another's counts (another round's, or another rank's).
    fn merge(&mut self, o: &Tallies) {
        self.all.merge(&o.all);
        for (k, t) in &o.by {
            self.by.entry(k.clone()).or_default().merge(t);
        }
        self.groups_seen += o.groups_seen;
        self.groups_dropped += o.groups_dropped;
        self.judge_failures += o.judge_failures;
        self.gen_tokens += o.gen_tokens;
    }
}

/// What a rank tells the others after a sampling round: the prompts it kept, and its tallies.
#[derive(serde::Serialize, serde::Deserialize)]
struct RoundReport {
    kept: Vec<usize>,
    tallies: Tallies,
}

/// A step's rollouts: the kept groups and the counts for the metrics.
#[derive(Default)]
struct Collected {
    kept: Vec<Kept>,
    t: Tallies,
    rounds: usize,
}

/// Sums of the update's loss terms.
struct Update {
    pg: f64,
    kl: f64,
    ent: f64,
    clip: f64,
    seqs: f64,
    tokens: usize,
    grad_norm: f64,
    lr: f64,
    /// Why an optimizer step was skipped (non-finite loss or gradient).
    skipped: Option<String>,
}

impl<'a> GrpoRun<'a> {
    fn new(cfg: &'a TrainConfig, policy: &'a Policy, comm: &'a dyn Collective) -> Result<Self> {
        // The frozen reference for the KL term: the starting weights (or a given folder).
        let reference = if cfg.grpo.kl_coef != 0.0 {
            let dir = cfg
                .grpo
                .reference
                .clone()
                .or_else(|| cfg.model.init_from.clone());
            let Some(d) = dir else {
                bail!("grpo.kl_coef > 0 needs a reference: set model.init_from or grpo.reference")
            };
            // With the policy's M-RoPE base, when `model.rope_theta` replaced it.
            Some(Policy::load_with_rope_theta(&d, cfg.model.rope_theta)?.frozen()?)
        } else {
            None
        };
        Ok(Self {
            cfg,
            policy,
            comm,
            vars: policy.vars(),
            merge: policy.files.preprocessor.merge_size,
            judge: make_judge(cfg),
            reward_cfg: cfg.reward.to_core(),
            loss_cfg: LossConfig {
                clip_low: cfg.grpo.clip_low,
                clip_high: cfg.grpo.clip_high,
                kl_coef: cfg.grpo.kl_coef,
                entropy_coef: cfg.grpo.entropy_coef,
            },
            rollout_cfg: RolloutConfig {
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
            },
            reference,
            frozen: policy.frozen()?,
        })
    }

    /// Rolls out prompts until `grpo.prompts_per_step` groups are kept or the sampling rounds
    /// run out. Prompt `j` of the step (its slot) is rolled out by rank `j mod N`, with the
    /// seed the step's RNG draws for it on every rank; after each round the ranks tell each
    /// other which slots they kept.
    fn collect(
        &self,
        step: usize,
        ds: &Dataset,
        loader: &mut Loader<'_>,
        rng: &mut Rng,
    ) -> Result<Collected> {
        let g = &self.cfg.grpo;
        let (rank, size) = (self.comm.rank(), self.comm.size());
        let mut c = Collected::default();
        let mut slot = 0usize;
        while c.kept.len() < g.prompts_per_step && c.rounds < g.max_sampling_rounds.max(1) {
            c.rounds += 1;
            let need = g.prompts_per_step - c.kept.len();
            let mut mine = Collected::default();
            for _ in 0..need {
                let i = loader.next_index();
                let seed = rng.next_u64();
                let this = slot;
                slot += 1;
                if this % size != rank {
                    continue;
                }
                let prompt = match run::prepared(self.policy, self.cfg, ds, i) {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("skipped: {e:#}");
                        continue;
                    }
                };
                self.roll_prompt(step, &ds.examples[i], prompt, seed, this, &mut mine)?;
            }
            self.merge_round(&mut c, mine)?;
        }
        Ok(c)
    }

    /// Adds a round's results of every rank to `c`: the kept groups in slot order (this rank's
    /// with their rollouts), the tallies summed.
    fn merge_round(&self, c: &mut Collected, mine: Collected) -> Result<()> {
        if self.comm.size() == 1 {
            c.t.merge(&mine.t);
            c.kept.extend(mine.kept);
            return Ok(());
        }
        let report = RoundReport {
            kept: mine.kept.iter().map(|k| k.slot).collect(),
            tallies: mine.t,
        };
        let all = self.comm.all_gather_bytes(&serde_json::to_vec(&report)?)?;
        let mut own: BTreeMap<usize, Group> = mine
            .kept
            .into_iter()
            .filter_map(|k| Some((k.slot, k.group?)))
            .collect();
        let mut round: Vec<Kept> = Vec::new();
        for (r, bytes) in all.iter().enumerate() {
            let rep: RoundReport = serde_json::from_slice(bytes)
                .map_err(|e| anyhow::anyhow!("rank {r} sent an unreadable round report: {e}"))?;
            c.t.merge(&rep.tallies);
            round.extend(rep.kept.iter().map(|&slot| Kept {
                slot,
                group: own.remove(&slot),
            }));
        }
        round.sort_by_key(|k| k.slot);
        c.kept.extend(round);
        Ok(())
    }

    /// One prompt's group: rolled out, judged, scored, tallied, logged, and kept unless dynamic
    /// sampling drops it.
    fn roll_prompt(
        &self,
        step: usize,
        ex: &Example,
        prompt: PreparedPrompt,
        seed: u64,
        slot: usize,
        c: &mut Collected,
    ) -> Result<()> {
        let (fbe, fmodel) = &self.frozen;
        let files = &self.policy.files;
        let n = self.cfg.rollout.n;
        let trajs = rollout_group(
            fbe,
            fmodel,
            files,
            &prompt,
            n,
            &self.rollout_cfg,
            &Steer::Free,
            seed,
        )?;
        let reqs: Vec<JudgeRequest> = trajs
            .iter()
            .map(|t| JudgeRequest::for_question(&ex.problem, &ex.answer, &t.outcome.prediction))
            .collect();
        let verdicts: Vec<Option<bool>> =
            judge_all(self.judge.as_ref(), &reqs, self.cfg.judge.concurrency)
                .into_iter()
                .map(|v| v.map_err(|e| eprintln!("{e}")).ok())
                .collect();
        c.t.judge_failures += verdicts.iter().filter(|v| v.is_none()).count();
        let judged: Vec<JudgedRollout> = trajs
            .iter()
            .zip(&verdicts)
            .map(|(t, v)| JudgedRollout {
                turns: t.outcome.turns.clone(),
                correct: *v,
                tool_image_share: t.tool_image_share(&prompt),
            })
            .collect();
        let gs = score_group(&judged, &self.reward_cfg);
        c.t.groups_seen += 1;
        for ((t, s), v) in trajs.iter().zip(&gs.rollouts).zip(&verdicts) {
            let length = t.generated.iter().filter(|g| **g).count();
            c.t.gen_tokens += length;
            let stats = RolloutStats {
                reward: s.reward,
                correct: *v == Some(true),
                resized: t.used_high(),
                length,
                visual: t.visual_tokens,
                cropped: t.crops() > 0,
            };
            c.t.all.add(stats);
            for key in [
                format!("kind/{}", ex.kind.name()),
                format!("source/{}", ex.data_source),
            ] {
                c.t.by.entry(key).or_default().add(stats);
            }
        }
        let rewards: Vec<f64> = gs.rollouts.iter().map(|r| r.reward).collect();
        let advantages = advantages(&rewards, self.cfg.grpo.advantage_norm);
        let keep = gs.kept || !self.cfg.grpo.dynamic_sampling;
        if self.cfg.run.log_rollouts {
            self.log_rollouts(step, ex, &trajs, &gs.rollouts, &advantages, keep)?;
        }
        if keep {
            c.kept.push(Kept {
                slot,
                group: Some(Group {
                    prompt,
                    trajs,
                    advantages,
                    old: None,
                }),
            });
        } else {
            c.t.groups_dropped += 1;
        }
        Ok(())
    }

    /// Writes a group's rollouts to this rank's rollout log.
    fn log_rollouts(
        &self,
        step: usize,
        ex: &Example,
        trajs: &[Trajectory],
        scores: &[visionthink_core::reward::RolloutScore],
        advantages: &[f64],
        keep: bool,
    ) -> Result<()> {
        for ((t, sc), a) in trajs.iter().zip(scores).zip(advantages) {
            let record = RolloutRecord {
                step,
                doc_id: &ex.doc_id,
                kind: ex.kind.name(),
                answer: &ex.answer,
                turns: &t.outcome.turns,
                accuracy: sc.accuracy,
                format: sc.format_score,
                reward: sc.reward,
                advantage: keep.then_some(*a),
            };
            metrics::log_rollout_of(&self.cfg.run.out, self.comm.rank(), &record)?;
        }
        Ok(())
    }

    /// The policy update over the kept groups, one optimizer step per mini-batch of
    /// `grpo.mini_batch_prompts` groups.
    fn update(&self, kept: &mut [Kept], opt: &mut AdamW) -> Result<Update> {
        let per_mini = self.cfg.grpo.mini_batch_prompts;
        // Old log-probs: with one optimizer step per batch the policy has not moved, so they are
        // the detached current ones; with several, they are computed before the first update.
        let minis: Vec<usize> = (0..kept.len()).step_by(per_mini).collect();
        if minis.len() > 1 {
            let (fbe, fmodel) = &self.frozen;
            for g in kept.iter_mut().filter_map(|k| k.group.as_mut()) {
                let refs: Vec<&Trajectory> = g.trajs.iter().collect();
                g.old = Some(group_logps(fbe, fmodel, &g.prompt, &refs, self.merge)?);
            }
        }
        let mut u = Update {
            pg: 0.0,
            kl: 0.0,
            ent: 0.0,
            clip: 0.0,
            seqs: 0.0,
            tokens: 0,
            grad_norm: f64::NAN,
            lr: opt.cfg.lr_at(opt.t),
            skipped: None,
        };
        for &m0 in &minis {
            let chunk = &kept[m0..(m0 + per_mini).min(kept.len())];
            self.update_mini(chunk, opt, &mut u)?;
        }
        if self.comm.size() > 1 {
            let sums = crate::collective::sum_f64(
                self.comm,
                &[u.pg, u.kl, u.ent, u.clip, u.seqs, u.tokens as f64],
            )?;
            (u.pg, u.kl, u.ent, u.clip, u.seqs) = (sums[0], sums[1], sums[2], sums[3], sums[4]);
            u.tokens = sums[5] as usize;
        }
        Ok(u)
    }

    /// One mini-batch: the loss of every sequence, one backward per group, one optimizer step.
    /// Each rank backpropagates its own groups of the mini-batch (every loss over the whole
    /// mini-batch's sequence count); the gradients are summed over the ranks before the step.
    fn update_mini(&self, chunk: &[Kept], opt: &mut AdamW, u: &mut Update) -> Result<()> {
        let nseq: usize = chunk
            .iter()
            .map(|k| {
                k.group
                    .as_ref()
                    .map_or(self.cfg.rollout.n, |g| g.trajs.len())
            })
            .sum();
        let mut acc = GradAccum::new(self.vars.len());
        // Built per mini-batch: a bf16 cast does not follow the previous update.
        let view = self.policy.compute_view(self.cfg.run.compute_dtype)?;
        let (cbe, cmodel) = self.policy.forward_parts(&view);
        let mut non_finite = false;
        for g in chunk.iter().filter_map(|k| k.group.as_ref()) {
            let Some(total) = self.group_loss(g, (cbe, cmodel), nseq, u)? else {
                continue;
            };
            if !total.to_scalar::<f32>()?.is_finite() {
                non_finite = true;
                break;
            }
            let grads = total.backward()?;
            acc.add(&self.vars, &grads, &self.policy.be.take_sparse_rows())?;
        }
        if self.comm.size() == 1 {
            if non_finite {
                u.skipped = Some("non-finite loss".to_string());
                return Ok(());
            }
            if acc.micro_batches == 0 {
                return Ok(());
            }
            return self.step(opt, acc.merged(&self.vars)?, u);
        }
        // Every rank decides the same: skip if any rank saw a non-finite loss, step if any rank
        // has gradients.
        let flags = crate::collective::sum_f64(
            self.comm,
            &[f64::from(u8::from(non_finite)), acc.micro_batches as f64],
        )?;
        if flags[0] > 0.0 {
            u.skipped = Some("non-finite loss".to_string());
            return Ok(());
        }
        if flags[1] == 0.0 {
            return Ok(());
        }
        let grads = self.sum_over_ranks(acc.merged(&self.vars)?)?;
        self.step(opt, grads, u)
    }

    fn step(&self, opt: &mut AdamW, grads: Vec<Option<Tensor>>, u: &mut Update) -> Result<()> {
        match opt.step_grads(&self.vars, grads, 1.0) {
            Ok(info) => {
                u.grad_norm = info.grad_norm;
                u.lr = info.lr;
            }
            Err(e) => u.skipped = Some(e.to_string()),
        }
        Ok(())
    }

    /// Every parameter's gradient summed over the ranks (a parameter no rank has a gradient
    /// for stays `None`, as it would in one process).
    fn sum_over_ranks(&self, grads: Vec<Option<Tensor>>) -> Result<Vec<Option<Tensor>>> {
        let sizes: Vec<usize> = self.vars.iter().map(|v| v.elem_count()).collect();
        let total: usize = sizes.iter().sum::<usize>() + sizes.len();
        let mut buf = Vec::with_capacity(total);
        for (g, &n) in grads.iter().zip(&sizes) {
            match g {
                Some(t) => buf.extend(t.flatten_all()?.to_vec1::<f32>()?),
                None => buf.extend(std::iter::repeat_n(0.0f32, n)),
            }
        }
        // One presence flag per parameter after the values.
        buf.extend(grads.iter().map(|g| f32::from(u8::from(g.is_some()))));
        self.comm.all_reduce_sum(&mut buf)?;
        let (values, present) = buf.split_at(total - sizes.len());
        let mut out = Vec::with_capacity(sizes.len());
        let mut at = 0;
        for ((v, &n), &p) in self.vars.iter().zip(&sizes).zip(present) {
            out.push(if p > 0.0 {
                Some(Tensor::from_slice(
                    &values[at..at + n],
                    v.shape(),
                    v.device(),
                )?)
            } else {
                None
            });
            at += n;
        }
        Ok(out)
    }

    /// The summed loss of one group's sequences (each over `nseq`), with the terms added to `u`.
    fn group_loss(
        &self,
        g: &Group,
        (cbe, cmodel): (&CandleBackend, &Qwen25VL<CandleBackend>),
        nseq: usize,
        u: &mut Update,
    ) -> Result<Option<Tensor>> {
        let merge = self.merge;
        let refs: Vec<&Trajectory> = g.trajs.iter().collect();
        let ref_lp = match &self.reference {
            Some((rbe, rmodel)) => Some(group_logps(rbe, rmodel, &g.prompt, &refs, merge)?),
            None => None,
        };
        self.policy.be.take_sparse_rows();
        let shared = SharedPrefix::new(cbe, cmodel, &g.prompt, merge)?;
        let rows = group_hidden(cbe, cmodel, &g.prompt, &refs, merge, shared.as_ref())?;
        let ids: Vec<Vec<u32>> = g.trajs.iter().map(Trajectory::generated_ids).collect();
        let entropy = self.cfg.grpo.entropy_coef != 0.0;
        let lps = batch_logp(cbe, cmodel, &rows, &ids, entropy)?;
        let mut total: Option<Tensor> = None;
        for (k, (lp, e)) in lps.into_iter().enumerate() {
            let old = match &g.old {
                Some(o) => o[k].clone(),
                None => lp.to_vec1::<f32>()?,
            };
            let reference = ref_lp.as_ref().map(|r| r[k].as_slice());
            let (loss, st) = sequence_loss(
                &lp,
                e.as_ref(),
                &old,
                reference,
                g.advantages[k],
                &self.loss_cfg,
            )?;
            u.pg += st.pg;
            u.kl += st.kl;
            u.ent += st.entropy;
            u.clip += st.clip_frac;
            u.seqs += 1.0;
            u.tokens += st.tokens;
            let loss = (loss / nseq as f64)?;
            total = Some(match total {
                Some(t) => (t + loss)?,
                None => loss,
            });
        }
        Ok(total)
    }
}

/// The step's metrics record.
fn record(step: usize, c: &Collected, u: &Update, rollout_s: f64, update_s: f64) -> GrpoStep {
    let d = u.seqs.max(1.0);
    GrpoStep {
        phase: Phase::Grpo,
        step,
        groups: c.t.groups_seen,
        groups_kept: c.kept.len(),
        groups_dropped: c.t.groups_dropped,
        judge_failures: c.t.judge_failures,
        sampling_rounds: c.rounds,
        pg_loss: u.pg / d,
        kl: u.kl / d,
        entropy: u.ent / d,
        clip_frac: u.clip / d,
        grad_norm: u.grad_norm,
        lr: u.lr,
        rollout_s,
        update_s,
        rollout_tokens_per_s: c.t.gen_tokens as f64 / rollout_s.max(1e-9),
        update_tokens_per_s: u.tokens as f64 / update_s.max(1e-9),
        by: c.t.by.iter().map(|(k, t)| (k.clone(), t.means())).collect(),
        peak_rss_mb: metrics::peak_rss_mb(),
        all: c.t.all.means(),
    }
}
