//! The TOML configuration of `sft`, `train` and `eval`. Every section rejects unknown keys;
//! defaults are the official settings of SPEC §7 where they apply. `--set a.b=value`
//! overrides any key (the value is parsed as TOML, or taken as a string).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use visionthink_core::reward::{AdvantageNorm, PenaltyMode, RewardConfig};

/// A training phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The SFT warm start.
    Sft,
    /// Multi-turn GRPO.
    Grpo,
}

impl Phase {
    /// `sft` or `grpo`, as in checkpoints and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Sft => "sft",
            Phase::Grpo => "grpo",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What to do when a loss or gradient is NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNan {
    /// Skip the optimizer step, log it, go on.
    #[default]
    Skip,
    /// Stop the run with an error.
    Stop,
}

/// The dtype of the training forward and backward (SFT steps and the GRPO update). The master
/// weights, optimizer moments and checkpoints stay f32; rollouts and reference log-probs run in
/// f32 too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeDtype {
    /// f32 throughout.
    #[default]
    F32,
    /// bf16 weights and activations, cast from the f32 master weights at every step (softmax,
    /// norms, log-probs and the loss in f32). Meant for GPUs; on a CPU it is slower than f32.
    Bf16,
}

/// `[run]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Output folder (checkpoints, metrics, curves, report).
    pub out: PathBuf,
    /// Seed of initialisation, data order and sampling.
    pub seed: u64,
    /// Steps of this phase (SFT optimizer steps, or GRPO rollout batches).
    pub steps: usize,
    /// Checkpoint every this many steps (and at the end).
    pub save_every: usize,
    /// NaN/inf loss policy.
    pub on_nan: OnNan,
    /// Malformed dataset rows.
    pub bad_rows: BadRows,
    /// Checkpoints kept on disk (the newest; 0 = all).
    pub keep_checkpoints: usize,
    /// GRPO: append every rollout (turns, verdict, reward, advantage) to `rollouts.jsonl`.
    pub log_rollouts: bool,
    /// Dtype of the training forward / backward (`"f32"` or `"bf16"`).
    pub compute_dtype: ComputeDtype,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            out: PathBuf::from("runs/default"),
            seed: 0,
            steps: 1,
            save_every: 10,
            on_nan: OnNan::Skip,
            bad_rows: BadRows::Skip,
            keep_checkpoints: 3,
            log_rollouts: false,
            compute_dtype: ComputeDtype::F32,
        }
    }
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// Start from this HF folder (or a run folder: its latest checkpoint); empty = a new model
    /// of `[model.arch]`.
    pub init_from: Option<PathBuf>,
    /// Tokenizer, processor settings and chat template of a new model come from this folder.
    pub files_from: PathBuf,
    /// Size of a new model.
    pub arch: Arch,
    /// Replaces the decoder's M-RoPE base (`rope_theta`) of the model `init_from` names; the
    /// checkpoints carry the new value. A small base lets attention tell the visual tokens'
    /// rows and columns apart, which pointing at one of them needs: with the tiny decoder's
    /// head dimension 16 and base 10⁶, a column turns the key by at most 1.8e-4 rad.
    pub rope_theta: Option<f64>,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            init_from: None,
            files_from: PathBuf::from("tests/fixtures/models/tied_nested"),
            arch: Arch::default(),
            rope_theta: None,
        }
    }
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// Training set (a folder with `data.jsonl`, or Parquet files).
    pub train: PathBuf,
    /// SPEC §4 image path.
    pub image_path: ImagePath,
    /// Train only on rows of these kinds (`coarse`, `fine`, `global_fine`, `local_fine`,
    /// `unknown`); empty (the default) keeps every row. The crop recipe's pointing phase
    /// uses `["local_fine"]`.
    pub kinds: Vec<crate::data::Kind>,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            train: PathBuf::from("data/train"),
            image_path: ImagePath::Training,
            kinds: Vec::new(),
        }
    }
}

/// `[sft]`: the warm start on traces whose tool use does not depend on the question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftSection {
    /// Examples per optimizer step.
    pub batch: usize,
    /// Probability that a trace calls the resize tool, the same for every question.
    pub tool_fraction: f64,
    /// Think text of a direct answer. `{answer}` is replaced by the ground truth, `{kind}` by
    /// the question kind (`coarse` / `fine`) and `{name}` by the example's attribute `name`
    /// (rows without it are skipped, and reported).
    pub think_direct: String,
    /// Think text of a resize call.
    pub think_tool: String,
    /// Think text after the full image arrives.
    pub think_after: String,
    /// Probability that a trace calls the crop tool instead (the extended tool set,
    /// `rollout.tools = "resize,crop"`; 0 by default). The box is the row's `box` attribute,
    /// in the coordinates of the turn-1 image as the model sees it.
    pub crop_fraction: f64,
    /// Think text of a crop call.
    pub think_crop: String,
    /// Think text after the crop arrives.
    pub think_after_crop: String,
    /// The row attribute that holds a crop trace's box (`box` by default: the v2 task's framed
    /// square; `crop_box`: the region that shows what the question asks, see
    /// [`crate::synth::generate_v2`]).
    pub box_attribute: String,
}

impl Default for SftSection {
    fn default() -> Self {
        Self {
            batch: 16,
            tool_fraction: 0.5,
            think_direct: "The answer is visible in the image.".into(),
            think_tool: "I need a closer look at the details.".into(),
            think_after: "The full image shows the details.".into(),
            crop_fraction: 0.0,
            think_crop: "The detail is in a small region; I need a closer look at it.".into(),
            think_after_crop: "The cropped region shows the detail.".into(),
            box_attribute: "box".into(),
        }
    }
}

/// `[rollout]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutSection {
    /// Rollouts per prompt (16).
    pub n: usize,
    /// Temperature (1.0).
    pub temperature: f64,
    /// Nucleus mass (1.0).
    pub top_p: f64,
    /// Sample among the k most likely tokens only (0 = off, the official setting).
    pub top_k: usize,
    /// Token budget per model turn (8192).
    pub max_new_tokens: usize,
    /// Generation rounds (2).
    pub max_rounds: usize,
    /// Images per episode (2).
    pub max_images: usize,
    /// The tool set: `resize` (the official protocol) or `resize,crop` (beyond the paper: the
    /// extended system prompt and the crop tool; give `max_rounds`/`max_images` 3 to allow a
    /// crop after a crop).
    pub tools: String,
}

impl Default for RolloutSection {
    fn default() -> Self {
        Self {
            n: 16,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 8192,
            max_rounds: 2,
            max_images: 2,
            tools: "resize".into(),
        }
    }
}

/// `[reward]` (SPEC §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardSection {
    /// Accuracy weight (1.0).
    pub acc_weight: f64,
    /// Format weight (0.5).
    pub format_weight: f64,
    /// Tool-call penalty (0.1).
    pub tool_call_penalty: f64,
    /// Tool bonus (0).
    pub use_tool_bonus: f64,
    /// `code` (default), `paper`, `none`, `always_penalize_tool`.
    pub penalty: PenaltyMode,
    /// θ (0.2).
    pub threshold: f64,
    /// Beyond the paper (the crop tool's cost): reward lost per full image's worth of visual
    /// tokens delivered by tool turns — a crop by its share, a resize 1 (0).
    pub image_cost: f64,
}

impl Default for RewardSection {
    fn default() -> Self {
        let r = RewardConfig::default();
        Self {
            acc_weight: r.acc_weight,
            format_weight: r.format_weight,
            tool_call_penalty: r.tool_call_penalty,
            use_tool_bonus: r.use_tool_bonus,
            penalty: r.penalty,
            threshold: r.threshold,
            image_cost: r.image_cost,
        }
    }
}

impl RewardSection {
    /// The core's reward settings.
    pub fn to_core(&self) -> RewardConfig {
        RewardConfig {
            acc_weight: self.acc_weight,
            format_weight: self.format_weight,
            tool_call_penalty: self.tool_call_penalty,
            use_tool_bonus: self.use_tool_bonus,
            penalty: self.penalty,
            threshold: self.threshold,
            image_cost: self.image_cost,
        }
    }
}

/// Which judge decides correctness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgeKind {
    /// Normalised exact / numeric match (offline default).
    #[default]
    Rule,
    /// Stripped string equality.
    Exact,
    /// The official LLM judge over an OpenAI-compatible endpoint.
    Http,
}

/// `[judge]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeSection {
    /// Judge kind.
    pub kind: JudgeKind,
    /// Endpoint of the HTTP judge (`http://127.0.0.1:8000/v1`).
    pub url: String,
    /// Model name sent to it.
    pub model: String,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Per-request timeout, seconds (official 120).
    pub timeout_s: f64,
    /// Pause between attempts, seconds (official 1).
    pub retry_delay_s: f64,
}

impl Default for JudgeSection {
    fn default() -> Self {
        Self {
            kind: JudgeKind::Rule,
            url: "http://127.0.0.1:8000/v1".into(),
            model: "judge".into(),
            concurrency: 8,
            timeout_s: 120.0,
            retry_delay_s: 1.0,
        }
    }
}

/// `[grpo]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoSection {
    /// Prompts per rollout batch (512).
    pub prompts_per_step: usize,
    /// Prompts per optimizer step (32).
    pub mini_batch_prompts: usize,
    /// Lower clip (0.2).
    pub clip_low: f64,
    /// Upper clip (0.2).
    pub clip_high: f64,
    /// k3 KL coefficient (0.001).
    pub kl_coef: f64,
    /// Entropy bonus (0.001).
    pub entropy_coef: f64,
    /// Drop zero-variance groups and sample more prompts (DAPO; on).
    pub dynamic_sampling: bool,
    /// How a group's rewards become advantages: `"std"` (official, `(r − mean) / std`) or
    /// `"none"` (Dr. GRPO, `r − mean`; see [`AdvantageNorm`]).
    pub advantage_norm: AdvantageNorm,
    /// Sampling rounds per step before training on what was kept.
    pub max_sampling_rounds: usize,
    /// Reference model for the KL term (default: the starting checkpoint).
    pub reference: Option<PathBuf>,
}

impl Default for GrpoSection {
    fn default() -> Self {
        Self {
            prompts_per_step: 512,
            mini_batch_prompts: 32,
            clip_low: 0.2,
            clip_high: 0.2,
            kl_coef: 0.001,
            entropy_coef: 0.001,
            dynamic_sampling: true,
            advantage_norm: AdvantageNorm::Std,
            max_sampling_rounds: 3,
            reference: None,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// `[run]`.
    pub run: RunConfig,
    /// `[model]`.
    pub model: ModelSection,
    /// `[data]`.
    pub data: DataSection,
    /// `[sft]`.
    pub sft: SftSection,
    /// `[rollout]`.
    pub rollout: RolloutSection,
    /// `[reward]`.
    pub reward: RewardSection,
    /// `[judge]`.
    pub judge: JudgeSection,
    /// `[grpo]`.
    pub grpo: GrpoSection,
    /// `[optim]`.
    pub optim: OptimConfig,
}

impl TrainConfig {
    /// Reads a TOML file (or the defaults when `path` is `None`) and applies `key=value`
    /// overrides. Unknown keys anywhere are errors naming the key.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let mut value: toml::Table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                text.parse()
                    .with_context(|| format!("{} is not valid TOML", p.display()))?
            }
            None => toml::Table::new(),
        };
        for o in overrides {
            let (key, raw) = o
                .split_once('=')
                .with_context(|| format!("override {o:?} is not key=value"))?;
            let parsed: toml::Value = match format!("v = {raw}").parse::<toml::Table>() {
                Ok(mut t) => t
                    .remove("v")
                    .unwrap_or_else(|| toml::Value::String(raw.to_string())),
                Err(_) => toml::Value::String(raw.to_string()),
            };
            let parts: Vec<&str> = key.trim().split('.').collect();
            let mut table = &mut value;
            for p in &parts[..parts.len() - 1] {
                let entry = table
                    .entry(p.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                table = match entry {
                    toml::Value::Table(t) => t,
                    _ => bail!("override {key}: {p} is not a section"),
                };
            }
            table.insert(parts[parts.len() - 1].to_string(), parsed);
        }
        let what = path.map_or("configuration".to_string(), |p| p.display().to_string());
        let cfg: TrainConfig = toml::Value::Table(value)
            .try_into()
            .with_context(|| format!("invalid {what}"))?;
        if cfg.rollout.n == 0
            || cfg.sft.batch == 0
            || cfg.grpo.prompts_per_step == 0
            || cfg.grpo.mini_batch_prompts == 0
        {
            bail!("rollout.n, sft.batch, grpo.prompts_per_step and grpo.mini_batch_prompts must be at least 1");
        }
        if !(cfg.optim.lr.is_finite() && cfg.optim.lr > 0.0) {
            bail!("optim.lr must be a positive number");
        }
        let protocol = visionthink_core::protocol::ProtocolConfig::from_tools(&cfg.rollout.tools)
            .map_err(|e| anyhow::anyhow!("rollout.tools: {e}"))?;
        let (t, c) = (cfg.sft.tool_fraction, cfg.sft.crop_fraction);
        if !((0.0..=1.0).contains(&t) && (0.0..=1.0).contains(&c) && t + c <= 1.0) {
            bail!(
                "sft.tool_fraction and sft.crop_fraction must be in [0, 1] with a sum of at most 1"
            );
        }
        if c > 0.0 && protocol.tools.len() < 2 {
            bail!("sft.crop_fraction needs the crop tool: set rollout.tools = \"resize,crop\"");
        }
        Ok(cfg)
    }
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Constant after warm-up (official).
    #[default]
    Constant,
    /// Cosine decay to `min_lr_ratio · lr` after warm-up.
    Cosine,
}

/// Optimizer settings (defaults: SPEC §7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate (1e-6).
    pub lr: f64,
    /// β₁ (0.9).
    pub beta1: f64,
    /// β₂ (0.999).
    pub beta2: f64,
    /// ε (1e-8).
    pub eps: f64,
    /// Decoupled weight decay (0.01).
    pub weight_decay: f64,
    /// Global gradient-norm clip (1.0; 0 = off).
    pub grad_clip: f64,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// Schedule after warm-up.
    pub schedule: Schedule,
    /// Floor of the cosine schedule, as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// Optimizer steps the cosine schedule spans.
    pub total_steps: usize,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-6,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            grad_clip: 1.0,
            warmup_steps: 0,
            schedule: Schedule::Constant,
            min_lr_ratio: 0.0,
            total_steps: 0,
        }
    }
}

impl OptimConfig {
    /// Learning rate at optimizer step `t` (0-based).
    pub fn lr_at(&self, t: usize) -> f64 {
        if t < self.warmup_steps {
            return self.lr * (t + 1) as f64 / self.warmup_steps as f64;
        }
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
                let p = ((t - self.warmup_steps) as f64 / span as f64).min(1.0);
                let floor = self.lr * self.min_lr_ratio;
                floor + (self.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        }
    }
}

/// The size of a model trained from scratch (everything else is Qwen2.5-VL's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Arch {
    /// Decoder width.
    pub hidden_size: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads (GQA).
    pub kv_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Vision tower width.
    pub vision_hidden_size: usize,
    /// Vision blocks.
    pub vision_depth: usize,
    /// Vision heads.
    pub vision_heads: usize,
    /// Vision MLP width.
    pub vision_intermediate_size: usize,
    /// Std of the random initialisation.
    pub init_std: f64,
    /// Context length.
    pub max_position_embeddings: usize,
}

impl Default for Arch {
    fn default() -> Self {
        Self {
            hidden_size: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate_size: 128,
            vision_hidden_size: 64,
            vision_depth: 2,
            vision_heads: 4,
            vision_intermediate_size: 128,
            init_std: 0.02,
            max_position_embeddings: 4096,
        }
    }
}

impl Arch {
    /// `config.json` in the transformers 5 (nested) layout.
    pub fn config_json(&self) -> Result<String> {
        let head_dim = self.hidden_size / self.heads.max(1);
        if self.heads == 0 || self.hidden_size % self.heads != 0 || head_dim % 2 != 0 {
            bail!(
                "hidden_size {} must split into an even head size over {} heads",
                self.hidden_size,
                self.heads
            );
        }
        if self.kv_heads == 0 || self.heads % self.kv_heads != 0 {
            bail!(
                "heads {} must be a multiple of kv_heads {}",
                self.heads,
                self.kv_heads
            );
        }
        // M-RoPE sections (t, h, w) over head_dim / 2 frequencies, in Qwen2.5-VL's 1:1.5:1.5 ratio.
        let half = head_dim / 2;
        let t = (half as f64 / 4.0).round().max(1.0) as usize;
        let h = (half - t) / 2;
        let w = half - t - h;
        let v = serde_json::json!({
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "image_token_id": 151655,
            "model_type": "qwen2_5_vl",
            "tie_word_embeddings": true,
            "video_token_id": 151656,
            "vision_end_token_id": 151653,
            "vision_start_token_id": 151652,
            "text_config": {
                "bos_token_id": 151643,
                "eos_token_id": 151645,
                "hidden_act": "silu",
                "hidden_size": self.hidden_size,
                "initializer_range": self.init_std,
                "intermediate_size": self.intermediate_size,
                "max_position_embeddings": self.max_position_embeddings,
                "model_type": "qwen2_5_vl_text",
                "num_attention_heads": self.heads,
                "num_hidden_layers": self.layers,
                "num_key_value_heads": self.kv_heads,
                "rms_norm_eps": 1e-6,
                "rope_parameters": {"mrope_section": [t, h, w], "rope_theta": 1000000.0, "rope_type": "default"},
                "tie_word_embeddings": true,
                "use_cache": true,
                "vocab_size": 151936
            },
            "vision_config": {
                "depth": self.vision_depth,
                "fullatt_block_indexes": [self.vision_depth.saturating_sub(1)],
                "hidden_act": "silu",
                "hidden_size": self.vision_hidden_size,
                "in_channels": 3,
                "initializer_range": self.init_std,
                "intermediate_size": self.vision_intermediate_size,
                "model_type": "qwen2_5_vl_vision",
                "num_heads": self.vision_heads,
                "out_hidden_size": self.hidden_size,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "tokens_per_second": 2,
                "window_size": 112
            }
        });
        Ok(serde_json::to_string_pretty(&v)?)
    }
}

/// What to do with a malformed row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BadRows {
    /// Report it (file, line, reason) and go on.
    #[default]
    Skip,
    /// Stop with an error naming it.
    Fail,
}

/// Which SPEC §4 image path builds the two images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImagePath {
    /// Clamp the area into [512², 2048²], halve; full = 2× the half (the official training path).
    #[default]
    Training,
    /// Halve the original; the tool returns the original (the evaluation path).
    Inference,
    /// The full-resolution baseline (the paper's vanilla RL at full resolution): turn 1 shows
    /// the original, and so would the tool. Trained with direct answers only, it is what
    /// low-res-first models are compared against.
    Full,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_official_settings() {
        let c = TrainConfig::load(None, &[]).expect("defaults");
        assert_eq!(c.rollout.n, 16);
        assert_eq!(c.rollout.temperature, 1.0);
        assert_eq!(c.optim.lr, 1e-6);
        assert_eq!(c.optim.weight_decay, 0.01);
        assert_eq!(c.optim.grad_clip, 1.0);
        assert_eq!(
            (c.grpo.prompts_per_step, c.grpo.mini_batch_prompts),
            (512, 32)
        );
        assert_eq!((c.grpo.kl_coef, c.grpo.entropy_coef), (0.001, 0.001));
        assert_eq!(c.data.image_path, ImagePath::Training);
        assert_eq!(c.reward.penalty, PenaltyMode::Code);
        assert_eq!(c.grpo.advantage_norm, AdvantageNorm::Std);
    }

    #[test]
    fn advantage_norm_parses_and_names_unknown_values() {
        let c = TrainConfig::load(None, &[r#"grpo.advantage_norm="none""#.into()]).expect("none");
        assert_eq!(c.grpo.advantage_norm, AdvantageNorm::None);
        let err = format!(
            "{:#}",
            TrainConfig::load(None, &[r#"grpo.advantage_norm="mean""#.into()])
                .expect_err("unknown norm")
        );
        assert!(err.contains("mean"), "{err}");
    }

    #[test]
    fn data_kinds_parse_and_unknown_kinds_are_errors() {
        let c = TrainConfig::load(None, &[r#"data.kinds=["local_fine", "coarse"]"#.into()])
            .expect("kinds");
        assert_eq!(
            c.data.kinds,
            vec![crate::data::Kind::LocalFine, crate::data::Kind::Coarse]
        );
        assert!(TrainConfig::load(None, &[])
            .expect("defaults")
            .data
            .kinds
            .is_empty());
        let err = format!(
            "{:#}",
            TrainConfig::load(None, &[r#"data.kinds=["lokal_fine"]"#.into()])
                .expect_err("unknown kind")
        );
        assert!(err.contains("lokal_fine"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors_and_overrides_apply() {
        let dir = std::env::temp_dir().join(format!("vt-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join("c.toml");
        std::fs::write(&p, "[grpo]\nkl_coef = 0.0\nklcoef = 1\n").expect("write");
        let err = format!(
            "{:#}",
            TrainConfig::load(Some(&p), &[]).expect_err("unknown key")
        );
        assert!(err.contains("klcoef"), "{err}");
        std::fs::write(&p, "[grpo]\nkl_coef = 0.0\n[rollout]\nn = 4\n").expect("write");
        let c = TrainConfig::load(
            Some(&p),
            &[
                "rollout.n=8".into(),
                "run.out=x/y".into(),
                "reward.penalty=none".into(),
            ],
        )
        .expect("load");
        assert_eq!(c.rollout.n, 8);
        assert_eq!(c.grpo.kl_coef, 0.0);
        assert_eq!(c.run.out, PathBuf::from("x/y"));
        assert_eq!(c.reward.penalty, PenaltyMode::None);
        let err = format!(
            "{:#}",
            TrainConfig::load(Some(&p), &["rollout.m=8".into()]).expect_err("unknown override")
        );
        assert!(err.contains("unknown field `m`"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
