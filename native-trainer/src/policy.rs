//! The trained model: Qwen2.5-VL on candle with trainable f32 weights, created from scratch or
//! loaded from an HF folder, and saved back as an HF folder (safetensors + config + tokenizer
//! files) that the SDK, the CLI and the browser load unchanged.

use crate::checkpoint::model_dir;
pub use crate::config::Arch;
pub use crate::files::{serialize_bf16, serialize_f32};
use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use candle_core::Var;
use serde::{Deserialize, Serialize};
use std::path::Path;
use visionthink_core::config::ModelConfig;
use visionthink_core::model_files::{ModelFiles, MODEL_FILES};
use visionthink_model::graph::{checkpoint_layout, InitKind};
use visionthink_model::{CandleBackend, Qwen25VL, WeightStore};

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

/// The `config.json` at `path` with the decoder's `rope_parameters.rope_theta` set to `theta`.
fn with_rope_theta(path: &Path, theta: f64) -> Result<Vec<u8>> {
    anyhow::ensure!(
        theta.is_finite() && theta > 1.0,
        "model.rope_theta must be a number above 1, not {theta}"
    );
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut v: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let slot = v
        .pointer_mut("/text_config/rope_parameters/rope_theta")
        .with_context(|| {
            format!(
                "{} has no text_config.rope_parameters.rope_theta to replace",
                path.display()
            )
        })?;
    *slot = serde_json::json!(theta);
    Ok(serde_json::to_vec_pretty(&v)?)
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
        Self::load_with_rope_theta(dir, None)
    }

    /// [`Self::load`], the decoder's M-RoPE base replaced by `rope_theta` when given
    /// (`model.rope_theta`).
    pub fn load_with_rope_theta(dir: &Path, rope_theta: Option<f64>) -> Result<Self> {
        let dir = &model_dir(dir)?;
        let config = match rope_theta {
            Some(theta) => Some(with_rope_theta(&dir.join("config.json"), theta)?),
            None => None,
        };
        let aux = read_aux(dir, config)?;
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

    /// A short fingerprint of the weights (count, sum, sum of squares): data-parallel ranks
    /// compare theirs before training.
    pub fn weights_fingerprint(&self) -> Result<String> {
        let (mut n, mut sum, mut sq) = (0usize, 0.0f64, 0.0f64);
        for v in self.vars() {
            let t = v.as_tensor().to_dtype(candle_core::DType::F32)?;
            n += t.elem_count();
            sum += f64::from(t.sum_all()?.to_scalar::<f32>()?);
            sq += f64::from(t.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
        Ok(format!(
            "{n} parameters, sum {sum:.9e}, sum of squares {sq:.9e}"
        ))
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
        })?;
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
    /// update) but records no autograd graph and uses the fused inference kernels. Batch
    /// invariant ([`CandleBackend::batch_invariant`]): a rollout's tokens do not depend on which
    /// other rollouts share its decode steps, so one process and N data-parallel ranks agree.
    pub fn frozen(&self) -> Result<(CandleBackend, Qwen25VL<CandleBackend>)> {
        let model = self.model.map_weights(&mut |t| t.detach())?;
        Ok((
            CandleBackend::new(self.be.device.clone(), candle_core::DType::F32).batch_invariant(),
            model,
        ))
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

/// [`load_frozen`] for a llama.cpp GGUF pair (text model + mmproj): tokenizer, config and chat
/// template from their metadata; quantized matrices stay in their blocks (candle's quantized
/// kernels). For evaluation only: nothing of it is trainable.
pub fn load_frozen_gguf(
    text: &Path,
    mmproj: &Path,
) -> Result<(String, CandleBackend, Qwen25VL<CandleBackend>, ModelFiles)> {
    let weights = visionthink_model::gguf::GgufWeights::open(text, mmproj)
        .with_context(|| format!("cannot open {} with {}", text.display(), mmproj.display()))?;
    let visionthink::ModelDir {
        tokenizer,
        config,
        preprocessor,
        generation,
        chat_template,
        ..
    } = visionthink::ModelDir::from_gguf(&weights)?;
    let cfg = config.context("a GGUF model always has a config")?;
    let store = WeightStore::from_gguf(weights);
    let be = CandleBackend::cpu();
    let model = Qwen25VL::load(&be, &cfg, &store)?;
    let files = ModelFiles {
        tokenizer,
        config: Some(cfg),
        preprocessor,
        generation,
        chat_template,
    };
    Ok((text.display().to_string(), be, model, files))
}

/// Loads a model folder (or a run folder, see [`checkpoint::model_dir`](crate::checkpoint::model_dir)) for inference (no autograd):
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `model.rope_theta` replaces the decoder's base and nothing else, and refuses a base or a
    /// config it cannot use.
    #[test]
    fn rope_theta_override_replaces_only_the_base() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/visionthink/model/config.json");
        let before: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("shipped config")).expect("JSON");
        let after: serde_json::Value =
            serde_json::from_slice(&with_rope_theta(&path, 2.0).expect("patched")).expect("JSON");
        assert_eq!(
            after.pointer("/text_config/rope_parameters/rope_theta"),
            Some(&serde_json::json!(2.0))
        );
        let mut restored = after.clone();
        *restored
            .pointer_mut("/text_config/rope_parameters/rope_theta")
            .expect("base") = before["text_config"]["rope_parameters"]["rope_theta"].clone();
        assert_eq!(restored, before);
        for bad in [1.0, 0.5, f64::NAN, f64::INFINITY] {
            let e = with_rope_theta(&path, bad)
                .expect_err("refused")
                .to_string();
            assert!(e.contains("rope_theta"), "{e}");
        }
        let dir = std::env::temp_dir().join(format!("vt-rope-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let flat = dir.join("config.json");
        std::fs::write(&flat, br#"{"text_config": {"rope_theta": 10000.0}}"#).expect("write");
        let e = with_rope_theta(&flat, 2.0)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("text_config.rope_parameters.rope_theta"), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
