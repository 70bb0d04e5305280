//! The run folder's logs: `metrics.jsonl` (one typed record per step) and `rollouts.jsonl`,
//! appended line by line; after a resume, the lines of steps the restored checkpoint does not
//! contain are dropped.

use crate::config::Phase;
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// The metrics file in the run folder.
pub const METRICS: &str = "metrics.jsonl";

/// The rollout log in the run folder (`run.log_rollouts`).
pub const ROLLOUTS: &str = "rollouts.jsonl";

/// Appends one JSON line to a file.
fn append_jsonl(path: &Path, v: &impl Serialize) -> Result<()> {
    let line = serde_json::to_string(v)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot append to {}", path.display()))?;
    writeln!(f, "{line}")?;
    Ok(())
}

/// Appends one record to the run's metrics.
pub fn log(out: &Path, record: &impl Serialize) -> Result<()> {
    append_jsonl(&out.join(METRICS), record)
}

/// Appends one rollout record to the run's `rollouts.jsonl`.
pub fn log_rollout(out: &Path, record: &RolloutRecord<'_>) -> Result<()> {
    append_jsonl(&out.join(ROLLOUTS), record)
}

/// [`log_rollout`] of data-parallel rank `rank`: rank 0 writes `rollouts.jsonl`, rank `r`
/// `rollouts.rank-r.jsonl` (the ranks never write one file at once).
pub fn log_rollout_of(out: &Path, rank: usize, record: &RolloutRecord<'_>) -> Result<()> {
    match rank {
        0 => log_rollout(out, record),
        r => append_jsonl(&out.join(format!("rollouts.rank-{r}.jsonl")), record),
    }
}

/// Keeps only metric lines of `phase` up to `step` (and every line of other phases).
pub fn truncate(out: &Path, phase: Phase, step: usize) -> Result<()> {
    let p = out.join(METRICS);
    let Ok(text) = std::fs::read_to_string(&p) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
            v["phase"] != phase.name() || v["step"].as_u64().is_some_and(|s| s as usize <= step)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    crate::files::write_atomic(&p, body.as_bytes())
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

/// A step whose optimizer update was skipped.
#[derive(Debug, Serialize)]
pub struct Skipped<'a> {
    /// The phase.
    pub phase: Phase,
    /// The step.
    pub step: usize,
    /// Why (a non-finite loss or gradient).
    pub skipped: &'a str,
}

/// One SFT step.
#[derive(Debug, Serialize)]
pub struct SftStep {
    /// Always [`Phase::Sft`].
    pub phase: Phase,
    /// The step (1-based).
    pub step: usize,
    /// Mean token negative log-likelihood.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate of the update.
    pub lr: f64,
    /// Supervised tokens.
    pub tokens: usize,
    /// Tokens per second of the whole step.
    pub tokens_per_s: f64,
    /// Wall-clock seconds of the step.
    pub seconds: f64,
    /// Forward seconds.
    pub forward_s: f64,
    /// Backward seconds.
    pub backward_s: f64,
    /// Optimizer seconds.
    pub optimizer_s: f64,
    /// Peak resident memory so far.
    pub peak_rss_mb: Option<f64>,
}

/// Sums over rollouts, reported as means.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
pub struct Tally {
    /// Rollouts.
    pub n: f64,
    reward: f64,
    correct: f64,
    /// Rollouts that asked for the full image.
    pub resized: f64,
    length: f64,
    visual: f64,
    /// Rollouts that received a crop (the extended tool set).
    #[serde(default)]
    pub cropped: f64,
}

/// One rollout's numbers, for a [`Tally`].
#[derive(Debug, Clone, Copy)]
pub struct RolloutStats {
    /// Its reward.
    pub reward: f64,
    /// Judged correct.
    pub correct: bool,
    /// Asked for the full image.
    pub resized: bool,
    /// Generated tokens.
    pub length: usize,
    /// Visual tokens of its images.
    pub visual: usize,
    /// Received at least one crop.
    pub cropped: bool,
}

impl Tally {
    /// Adds another tally's rollouts (another rank's, in data-parallel training).
    pub fn merge(&mut self, o: &Tally) {
        self.n += o.n;
        self.reward += o.reward;
        self.correct += o.correct;
        self.resized += o.resized;
        self.cropped += o.cropped;
        self.length += o.length;
        self.visual += o.visual;
    }

    /// Adds one rollout.
    pub fn add(&mut self, r: RolloutStats) {
        self.n += 1.0;
        self.reward += r.reward;
        self.correct += f64::from(u8::from(r.correct));
        self.resized += f64::from(u8::from(r.resized));
        self.cropped += f64::from(u8::from(r.cropped));
        self.length += r.length as f64;
        self.visual += r.visual as f64;
    }

    /// The means.
    pub fn means(&self) -> TallyMeans {
        let d = self.n.max(1.0);
        TallyMeans {
            n: self.n,
            reward: self.reward / d,
            accuracy: self.correct / d,
            resize_ratio: self.resized / d,
            crop_ratio: self.cropped / d,
            response_length: self.length / d,
            visual_tokens: self.visual / d,
        }
    }

    /// The share of rollouts that resized (NaN for none).
    pub fn resize_ratio(&self) -> f64 {
        self.resized / self.n.max(1.0)
    }
}

/// A [`Tally`]'s means.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TallyMeans {
    /// Rollouts.
    pub n: f64,
    /// Mean reward.
    pub reward: f64,
    /// Share judged correct.
    pub accuracy: f64,
    /// Share that asked for the full image.
    pub resize_ratio: f64,
    /// Share that received a crop.
    pub crop_ratio: f64,
    /// Mean generated tokens.
    pub response_length: f64,
    /// Mean visual tokens.
    pub visual_tokens: f64,
}

/// One GRPO step.
#[derive(Debug, Serialize)]
pub struct GrpoStep {
    /// Always [`Phase::Grpo`].
    pub phase: Phase,
    /// The step (1-based).
    pub step: usize,
    /// Groups rolled out.
    pub groups: usize,
    /// Groups kept for the update.
    pub groups_kept: usize,
    /// Groups dropped by dynamic sampling (all rewards equal).
    pub groups_dropped: usize,
    /// Judge calls that failed.
    pub judge_failures: usize,
    /// Sampling rounds used to fill the batch.
    pub sampling_rounds: usize,
    /// Mean policy-gradient loss.
    pub pg_loss: f64,
    /// Mean KL to the reference.
    pub kl: f64,
    /// Mean entropy.
    pub entropy: f64,
    /// Mean clipped fraction.
    pub clip_frac: f64,
    /// Gradient norm of the last update (NaN: no update).
    pub grad_norm: f64,
    /// Learning rate of the last update.
    pub lr: f64,
    /// Rollout seconds.
    pub rollout_s: f64,
    /// Update seconds.
    pub update_s: f64,
    /// Generated tokens per rollout second.
    pub rollout_tokens_per_s: f64,
    /// Trained tokens per update second.
    pub update_tokens_per_s: f64,
    /// The same means per `kind/…` and `source/…`.
    pub by: BTreeMap<String, TallyMeans>,
    /// Peak resident memory so far.
    pub peak_rss_mb: Option<f64>,
    /// Means over every rollout of the step.
    #[serde(flatten)]
    pub all: TallyMeans,
}

/// One rollout in `rollouts.jsonl`.
#[derive(Debug, Serialize)]
pub struct RolloutRecord<'a> {
    /// The step.
    pub step: usize,
    /// The row.
    pub doc_id: &'a str,
    /// Its kind.
    pub kind: &'a str,
    /// The reference answer.
    pub answer: &'a str,
    /// The model's turns.
    pub turns: &'a [String],
    /// Judged accuracy.
    pub accuracy: f64,
    /// Format score.
    pub format: f64,
    /// Reward.
    pub reward: f64,
    /// Advantage (none when the group was dropped).
    pub advantage: Option<f64>,
}
