//! The trained model: Qwen2.5-VL on candle with trainable f32 weights, created from scratch or
//! loaded from an HF folder, and saved back as an HF folder (safetensors + config + tokenizer
//! files) that the SDK, the CLI and the browser load unchanged.

use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use candle_core::Var;
use serde::{Deserialize, Serialize};
use std::path::Path;
use visionthink_core::config::ModelConfig;
use visionthink_core::model_files::{ModelFiles, MODEL_FILES};
use visionthink_model::graph::{checkpoint_layout, InitKind};
use visionthink_model::{CandleBackend, Qwen25VL, WeightStore};

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

/// The training device: `VISIONTHINK_DEVICE=cuda` (with the `cuda` feature) trains on the first
/// GPU with f32 master weights; the CPU otherwise.
pub fn train_device() -> Result<candle_core::Device> {
    match std::env::var("VISIONTHINK_DEVICE").as_deref() {
        Ok("cuda") => {
            if !candle_core::utils::cuda_is_available() {
                bail!("VISIONTHINK_DEVICE=cuda, but this build has no CUDA (rebuild with --features cuda)");
            }
            Ok(candle_core::Device::new_cuda(0)?)
        }
        Ok("cpu") | Err(_) => Ok(candle_core::Device::Cpu),
        Ok(other) => bail!("VISIONTHINK_DEVICE={other}: expected cpu or cuda"),
    }
}

/// A trainable model with the files that make it an HF folder.
pub struct Policy {
    /// The trainable backend (its variables are the parameters, in load order).
    pub be: CandleBackend,
    /// The graph over trainable weights.
    pub model: Qwen25VL<CandleBackend>,
    /// Tokenizer, processor settings, template.
    pub files: ModelFiles,
    /// The parsed config.
    pub cfg: ModelConfig,
    /// Raw bytes of the non-weight files (copied into every checkpoint).
    pub aux: Vec<(&'static str, Vec<u8>)>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Policy({} parameters)", self.num_params())
    }
}

fn read_aux(dir: &Path, config_json: Option<Vec<u8>>) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let mut aux = Vec::new();
    for name in MODEL_FILES {
        if name == "config.json" {
            if let Some(c) = &config_json {
                aux.push((name, c.clone()));
                continue;
            }
        }
        let p = dir.join(name);
        if p.exists() {
            aux.push((
                name,
                std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?,
            ));
        }
    }
    Ok(aux)
}

fn parse_files(aux: &[(&'static str, Vec<u8>)]) -> Result<(ModelFiles, ModelConfig)> {
    let files = ModelFiles::parse(|name| {
        Ok::<_, std::convert::Infallible>(
            aux.iter().find(|(n, _)| *n == name).map(|(_, b)| b.clone()),
        )
    })
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let cfg = files
        .config
        .clone()
        .context("the model has no config.json")?;
    Ok((files, cfg))
}

impl Policy {
    /// A new model of `arch` with random weights (seeded), taking the tokenizer, processor
    /// settings and chat template from `files_from` (an HF folder).
    pub fn from_scratch(arch: &Arch, files_from: &Path, seed: u64) -> Result<Self> {
        let config = arch.config_json()?;
        let aux = read_aux(files_from, Some(config.into_bytes()))?;
        let (_, cfg) = parse_files(&aux)?;
        let mut rng = Rng::new(seed);
        let mut tensors = Vec::new();
        for spec in checkpoint_layout(&cfg) {
            let n: usize = spec.shape.iter().product();
            let data: Vec<f32> = match spec.init {
                InitKind::Ones => vec![1.0; n],
                InitKind::Zeros => vec![0.0; n],
                InitKind::Matrix => (0..n)
                    .map(|_| (rng.normal() * arch.init_std) as f32)
                    .collect(),
            };
            tensors.push((spec.name, spec.shape, data));
        }
        let bytes = serialize_f32(&tensors)?;
        let store = WeightStore::from_bytes(vec![("init.safetensors".into(), bytes)])?;
        Self::build(aux, &store)
    }

    /// Loads an HF folder with trainable weights.
    pub fn load(dir: &Path) -> Result<Self> {
        let dir = &model_dir(dir)?;
        let aux = read_aux(dir, None)?;
        let store = WeightStore::open(dir)
            .with_context(|| format!("cannot load weights of {}", dir.display()))?;
        Self::build(aux, &store)
    }

    fn build(aux: Vec<(&'static str, Vec<u8>)>, store: &WeightStore) -> Result<Self> {
        let (files, cfg) = parse_files(&aux)?;
        let be = CandleBackend::trainable_sparse(train_device()?);
        let model = Qwen25VL::load(&be, &cfg, store)?;
        Ok(Self {
            be,
            model,
            files,
            cfg,
            aux,
        })
    }

    /// The parameters, in a fixed order.
    pub fn vars(&self) -> Vec<Var> {
        self.be.vars()
    }

    /// Parameter count (the tied embedding counted once).
    pub fn num_params(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// The model the training forward runs: `None` for f32 (the policy itself), or a bf16 view
    /// of the f32 master weights — every weight cast on the autograd graph, so gradients reach
    /// the f32 variables. Build it after each optimizer update (a cast is a copy: it does not
    /// follow later updates).
    pub fn compute_view(
        &self,
        dtype: crate::config::ComputeDtype,
    ) -> Result<Option<(CandleBackend, Qwen25VL<CandleBackend>)>> {
        let dt = match dtype {
            crate::config::ComputeDtype::F32 => return Ok(None),
            crate::config::ComputeDtype::Bf16 => candle_core::DType::BF16,
        };
        let mut failed = None;
        let model = self.model.map_weights(&mut |t| match t.to_dtype(dt) {
            Ok(c) => c,
            Err(e) => {
                failed.get_or_insert(e);
                t.clone()
            }
        });
        if let Some(e) = failed {
            bail!("cannot cast the weights to {dt:?}: {e}");
        }
        Ok(Some((
            CandleBackend::differentiable(self.be.device.clone(), dt),
            model,
        )))
    }

    /// The backend and model a training forward uses: `view`'s (from [`Policy::compute_view`])
    /// when there is one, else the policy's own.
    pub fn forward_parts<'a>(
        &'a self,
        view: &'a Option<(CandleBackend, Qwen25VL<CandleBackend>)>,
    ) -> (&'a CandleBackend, &'a Qwen25VL<CandleBackend>) {
        match view {
            Some((b, m)) => (b, m),
            None => (&self.be, &self.model),
        }
    }

    /// A frozen view for generation: shares the weights' storage (it sees every optimizer
    /// update) but records no autograd graph and uses the fused inference kernels.
    pub fn frozen(&self) -> (CandleBackend, Qwen25VL<CandleBackend>) {
        let model = self.model.map_weights(&mut |t| t.detach());
        (
            CandleBackend::new(self.be.device.clone(), candle_core::DType::F32),
            model,
        )
    }

    /// The HF folder files (`model.safetensors` in `dtype`, config, tokenizer, …) as bytes.
    pub fn hf_files(&self, dtype: SaveDtype) -> Result<Vec<(String, Vec<u8>)>> {
        let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = self
            .model
            .export(&self.be)?
            .into_iter()
            .map(|(s, d)| (s.name, s.shape, d))
            .collect();
        if let Some((name, _, _)) = tensors
            .iter()
            .find(|(_, _, d)| d.iter().any(|x| !x.is_finite()))
        {
            bail!("refusing to save: tensor {name} holds NaN or infinity");
        }
        let weights = match dtype {
            SaveDtype::F32 => serialize_f32(&tensors)?,
            SaveDtype::Bf16 => serialize_bf16(&tensors)?,
        };
        let mut out = vec![("model.safetensors".to_string(), weights)];
        out.extend(self.aux.iter().map(|(n, b)| (n.to_string(), b.clone())));
        Ok(out)
    }
}

/// Storage dtype of saved weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SaveDtype {
    /// Exact (training checkpoints).
    #[default]
    F32,
    /// Half the size (the shipped model).
    Bf16,
}

fn serialize_with(
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    dtype: safetensors::Dtype,
    encode: fn(&[f32]) -> Vec<u8>,
) -> Result<Vec<u8>> {
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| (n.clone(), s.clone(), encode(d)))
        .collect();
    let views = encoded
        .iter()
        .map(|(n, s, b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(dtype, s.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    Ok(safetensors::serialize(views, Some(meta))?)
}

/// Safetensors bytes of f32 tensors.
pub fn serialize_f32(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<Vec<u8>> {
    serialize_with(tensors, safetensors::Dtype::F32, |d| {
        d.iter().flat_map(|x| x.to_le_bytes()).collect()
    })
}

/// Safetensors bytes of tensors rounded to bf16.
pub fn serialize_bf16(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<Vec<u8>> {
    serialize_with(tensors, safetensors::Dtype::BF16, |d| {
        d.iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect()
    })
}

/// A model folder, or a training run's output folder (its `latest` checkpoint).
pub fn model_dir(dir: &Path) -> Result<std::path::PathBuf> {
    if !dir.join("config.json").exists() {
        if let Some((ckpt, _)) = crate::checkpoint::latest_intact(dir)? {
            return Ok(ckpt);
        }
    }
    Ok(dir.to_path_buf())
}

/// Loads a model folder (or a run folder, see [`model_dir`]) for inference (no autograd):
/// `(name, backend, model, files)`; `None` is the shipped model embedded in the SDK.
pub fn load_frozen(
    dir: Option<&Path>,
) -> Result<(String, CandleBackend, Qwen25VL<CandleBackend>, ModelFiles)> {
    let dir = dir.map(model_dir).transpose()?;
    let (name, aux, store) = match dir.as_deref() {
        Some(dir) => (
            dir.display().to_string(),
            read_aux(dir, None)?,
            WeightStore::open(dir)
                .with_context(|| format!("cannot load weights of {}", dir.display()))?,
        ),
        None => {
            let shipped = visionthink::shipped::FILES;
            let file = |name: &str| {
                shipped
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, b)| b.to_vec())
            };
            let aux = MODEL_FILES
                .iter()
                .filter_map(|&n| Some((n, file(n)?)))
                .collect();
            let weights = vec![(
                "model.safetensors".to_string(),
                file("model.safetensors").context("the shipped model has no weights")?,
            )];
            (
                visionthink::shipped::NAME.to_string(),
                aux,
                WeightStore::from_bytes(weights)?,
            )
        }
    };
    let (files, cfg) = parse_files(&aux)?;
    let be = CandleBackend::cpu();
    let model = Qwen25VL::load(&be, &cfg, &store)?;
    Ok((name, be, model, files))
}
