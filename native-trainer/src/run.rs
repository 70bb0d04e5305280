//! What both training phases share: starting or resuming (policy, optimizer, trainer state),
//! the seeded data order, the end of a step (state, checkpoint, pruning, curves), the
//! non-finite policy, progress bars, tracing and the hooks a caller can attach.

use crate::checkpoint::{self, DataCursor, TrainerState};
use crate::config::{OnNan, Phase, TrainConfig};
use crate::data::Dataset;
use crate::metrics;
use crate::optim::AdamW;
use crate::policy::{Policy, SaveDtype};
use crate::rng::Rng;
use crate::rollout::{prepare_with, PreparedPrompt};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// Callbacks into a training run.
#[derive(Default)]
pub struct Hooks<'a> {
    /// Called after each step's update, before the step's state is checkpointed. The fault
    /// tests end the process here (`--fail-at-step`), like a SIGKILL between steps.
    pub after_update: Option<&'a dyn Fn(Phase, usize)>,
}

impl std::fmt::Debug for Hooks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("after_update", &self.after_update.is_some())
            .finish()
    }
}

/// Serves examples in a seeded order, epoch after epoch.
pub struct Loader<'a> {
    data: &'a Dataset,
    seed: u64,
    /// Where the next example comes from.
    pub cursor: DataCursor,
    order: Vec<usize>,
}

impl<'a> Loader<'a> {
    /// The order of `cursor.epoch`, from `cursor.index`.
    pub fn new(data: &'a Dataset, seed: u64, cursor: DataCursor) -> Self {
        let order =
            Rng::new(seed ^ cursor.epoch.wrapping_mul(0x9E37)).permutation(data.examples.len());
        Self {
            data,
            seed,
            cursor,
            order,
        }
    }

    /// The next example's index.
    pub fn next_index(&mut self) -> usize {
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

/// A progress bar over `len` steps.
pub fn bar(len: usize, what: Phase) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template(&format!("{what} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}} < {{eta_precise}}, {{per_sec}}] {{msg}}")) {
        pb.set_style(style);
    }
    pb
}

/// With `VISIONTHINK_TRACE` set, a line on stderr as a step enters each part
/// (`trace: grpo step 3 rollout|update|checkpoint|saved`): where a run is, for logs and for the
/// fault tests that kill it at chosen points.
pub fn trace(phase: Phase, step: usize, part: &str) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("VISIONTHINK_TRACE").is_some()) {
        eprintln!("trace: {phase} step {step} {part}");
    }
}

/// A phase's policy, optimizer and state, resumed from the newest intact checkpoint
/// (`resume`) or started fresh; `lr_scale_steps` sizes the schedule when the config does not.
/// `writer`: this process writes the run folder's files (rank 0 of a data-parallel job).
pub fn start(
    cfg: &TrainConfig,
    phase: Phase,
    resume: bool,
    lr_scale_steps: usize,
    writer: bool,
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
            if writer {
                metrics::truncate(&cfg.run.out, phase, state.step)?;
            }
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
        Some(dir) => Policy::load_with_rope_theta(dir, cfg.model.rope_theta)?,
        None => Policy::from_scratch(&cfg.model.arch, &cfg.model.files_from, cfg.run.seed)?,
    };
    if writer {
        metrics::truncate(&cfg.run.out, phase, 0)?;
    }
    let opt = AdamW::new(ocfg, &policy.vars())?;
    let state = TrainerState {
        step: 0,
        optimizer_steps: 0,
        rng: Rng::new(cfg.run.seed).state,
        cursor: DataCursor::default(),
        phase,
        files: Default::default(),
    };
    Ok((policy, opt, state))
}

/// The training set, with its skipped rows reported.
pub fn open_data(cfg: &TrainConfig) -> Result<Dataset> {
    let mut ds = Dataset::open(&cfg.data.train, cfg.run.bad_rows)?;
    for s in &ds.skipped {
        eprintln!("skipped row: {s}");
    }
    if !cfg.data.kinds.is_empty() {
        ds.retain_kinds(&cfg.data.kinds);
        if ds.examples.is_empty() {
            let names: Vec<_> = cfg.data.kinds.iter().map(|k| k.name()).collect();
            anyhow::bail!(
                "{} has no row of the kinds data.kinds names ({})",
                cfg.data.train.display(),
                names.join(", ")
            );
        }
    }
    Ok(ds)
}

/// Decodes and prepares an example, or explains why it was skipped.
pub fn prepared(
    policy: &Policy,
    cfg: &TrainConfig,
    ds: &Dataset,
    i: usize,
) -> Result<PreparedPrompt> {
    let img = ds.image(i)?;
    let ex = &ds.examples[i];
    let protocol = visionthink_core::protocol::ProtocolConfig::from_tools(&cfg.rollout.tools)?;
    prepare_with(
        &policy.files,
        &img,
        &ex.problem,
        cfg.data.image_path,
        &protocol,
    )
    .with_context(|| format!("row {} ({})", ex.doc_id, ex.image))
}

/// What a step ends with: the run, its policy and optimizer, the RNG and data position.
pub struct StepEnd<'a> {
    /// The configuration.
    pub cfg: &'a TrainConfig,
    /// The phase.
    pub phase: Phase,
    /// The policy after the update.
    pub policy: &'a Policy,
    /// The optimizer after the update.
    pub opt: &'a AdamW,
    /// The run's RNG.
    pub rng: &'a Rng,
    /// The data position.
    pub loader: &'a Loader<'a>,
    /// This process writes the checkpoints (rank 0 of a data-parallel job).
    pub writer: bool,
}

impl StepEnd<'_> {
    /// Records the state after `step` and checkpoints it when due (then prunes old checkpoints
    /// and redraws the curves). The hook runs first: a run it ends has no checkpoint of `step`.
    pub fn finish(&self, step: usize, hooks: &Hooks<'_>) -> Result<TrainerState> {
        let (cfg, phase) = (self.cfg, self.phase);
        let state = TrainerState {
            step,
            optimizer_steps: self.opt.t,
            rng: self.rng.state,
            cursor: self.loader.cursor.clone(),
            phase,
            files: Default::default(),
        };
        if let Some(hook) = hooks.after_update {
            hook(phase, step);
        }
        if self.writer && (step % cfg.run.save_every.max(1) == 0 || step == cfg.run.steps) {
            trace(phase, step, "checkpoint");
            let files = self.policy.hf_files(SaveDtype::F32)?;
            checkpoint::save(&cfg.run.out, files, self.opt, &state)?;
            trace(phase, step, "saved");
            checkpoint::prune(&cfg.run.out, cfg.run.keep_checkpoints)?;
            if let Err(e) = crate::plots::write_curves(&cfg.run.out) {
                eprintln!("curves not drawn: {e:#}");
            }
        }
        Ok(state)
    }
}

/// Handles a non-finite loss or gradient by the configured policy: logged and skipped, or an
/// error with `run.on_nan = "stop"`.
pub fn non_finite(cfg: &TrainConfig, phase: Phase, step: usize, what: &str) -> Result<()> {
    eprintln!("step {step}: {what}; optimizer step skipped");
    let record = metrics::Skipped {
        phase,
        step,
        skipped: what,
    };
    metrics::log(&cfg.run.out, &record)?;
    if cfg.run.on_nan == OnNan::Stop {
        bail!("step {step}: {what} (run.on_nan = \"stop\")");
    }
    Ok(())
}
