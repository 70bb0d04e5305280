//! Reading model directories and images from disk.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use visionthink_core::config::{GenerationConfig, ModelConfig, PreprocessorConfig};
use visionthink_core::image::{decode, DecodeLimits, RgbImage};
use visionthink_core::model_files::{ModelFiles, ModelFilesError};
use visionthink_core::prompt::ChatTemplate;
use visionthink_core::tokenizer::QwenTokenizer;

/// Writes `bytes` to `path` through a temporary file in the same folder, synced and renamed:
/// a crash or a full disk leaves either the old file or the new one, never half of one.
///
/// ```
/// let p = std::env::temp_dir().join(format!("vt-atomic-{}.txt", std::process::id()));
/// visionthink::files::write_atomic(&p, b"ok").unwrap();
/// assert_eq!(std::fs::read(&p).unwrap(), b"ok");
/// # std::fs::remove_file(&p).ok();
/// ```
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a file path", path.display()),
        ));
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Largest file the SDK reads into memory for images and JSON configs (1 GiB).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Reads a whole file, naming it in errors and refusing anything larger than `max`.
pub fn read_file(path: &Path, max: u64) -> Result<Vec<u8>> {
    let err = |error| Error::Read {
        path: path.display().to_string(),
        error,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    if meta.len() > max {
        return Err(Error::Content {
            path: path.display().to_string(),
            reason: format!("file of {} bytes exceeds the {max}-byte limit", meta.len()),
        });
    }
    std::fs::read(path).map_err(err)
}

/// Decodes an image file (PNG, JPEG, WebP, GIF) with the default decode limits.
pub fn load_image(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let bytes = read_file(path, MAX_FILE_BYTES)?;
    decode(&bytes, DecodeLimits::default()).map_err(|e| Error::Content {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// A local Hugging Face model directory: `tokenizer.json` (required) and, when present,
/// `config.json`, `preprocessor_config.json`, `generation_config.json` and a chat template
/// (`chat_template.json`, `chat_template.jinja` or `tokenizer_config.json`).
#[derive(Debug)]
pub struct ModelDir {
    /// Where it was read from.
    pub path: PathBuf,
    /// The tokenizer.
    pub tokenizer: QwenTokenizer,
    /// The model config, if the directory has one.
    pub config: Option<ModelConfig>,
    /// Image processor settings (Qwen2.5-VL defaults when absent).
    pub preprocessor: PreprocessorConfig,
    /// Decoding defaults, if present.
    pub generation: Option<GenerationConfig>,
    /// The chat template, if present.
    pub chat_template: Option<ChatTemplate>,
}

impl ModelDir {
    /// Parses a model's files held in memory (`(file name, bytes)`); `label` stands for the
    /// folder in errors and in [`ModelDir::path`].
    pub fn from_files(label: &str, files: &[(&str, &[u8])]) -> Result<Self> {
        let parsed = ModelFiles::parse(|name| {
            Ok::<_, Error>(
                files
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, b)| b.to_vec()),
            )
        });
        Self::from_parsed(PathBuf::from(label), parsed)
    }

    /// The parse result of [`ModelFiles::parse`] as a `ModelDir` at `path` (errors name the file
    /// under `path`).
    fn from_parsed(
        path: PathBuf,
        parsed: std::result::Result<ModelFiles, ModelFilesError<Error>>,
    ) -> Result<Self> {
        let ModelFiles {
            tokenizer,
            config,
            preprocessor,
            generation,
            chat_template,
        } = parsed.map_err(|e| match e {
            ModelFilesError::Read(e) => e,
            ModelFilesError::File { file, error } => Error::Content {
                path: path.join(file).display().to_string(),
                // The path already names the file: "…/config.json: invalid config.json: …"
                // would say it twice.
                reason: match error {
                    visionthink_core::Error::Config { file: f, reason } if f == file => reason,
                    other => other.to_string(),
                },
            },
        })?;
        Ok(Self {
            path,
            tokenizer,
            config,
            preprocessor,
            generation,
            chat_template,
        })
    }

    /// The tokenizer, configs and chat template of a llama.cpp GGUF model, from its metadata
    /// alone: the tokenizer from `tokenizer.ggml.*` (ids identical to HF's `tokenizer.json`),
    /// the model config from the text file's `qwen2vl.*` keys and the mmproj's `clip.vision.*`
    /// keys, the processor's mean and std from the mmproj, the template from
    /// `tokenizer.chat_template`. Errors name the file and the field.
    pub fn from_gguf(weights: &visionthink_model::gguf::GgufWeights) -> Result<Self> {
        let path = weights.text_path().to_path_buf();
        let files =
            ModelFiles::from_gguf(weights.text_header(), weights.mmproj_header()).map_err(|e| {
                Error::Content {
                    path: path.display().to_string(),
                    reason: match e {
                        visionthink_core::Error::Config { reason, .. } => reason,
                        e => e.to_string(),
                    },
                }
            })?;
        Ok(Self {
            path,
            tokenizer: files.tokenizer,
            config: files.config,
            preprocessor: files.preprocessor,
            generation: files.generation,
            chat_template: files.chat_template,
        })
    }

    /// Opens a directory, parsing every file it finds; a malformed file is an error that names
    /// it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if !path.is_dir() {
            return Err(Error::Content {
                path: path.display().to_string(),
                reason: "not a directory".into(),
            });
        }
        let files = ModelFiles::parse(|name| {
            let p = path.join(name);
            if p.exists() {
                read_file(&p, MAX_FILE_BYTES).map(Some)
            } else {
                Ok(None)
            }
        });
        Self::from_parsed(path, files)
    }
}

/// Resolves a model location: an existing directory as is; with the `hub` feature, a Hugging
/// Face repo id such as `Senqiao/VisionThink-Efficient` is downloaded (config, tokenizer,
/// processor/generation configs, chat template, safetensors — sharded or not) into the standard
/// HF cache and its snapshot directory returned. Tests never use the network.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let looks_like_repo = spec.split('/').count() == 2
        && spec
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'));
    if !looks_like_repo {
        return Err(Error::Content {
            path: spec.to_string(),
            reason: "not a directory".into(),
        });
    }
    download(spec)
}

#[cfg(feature = "hub")]
fn download(repo_id: &str) -> Result<PathBuf> {
    let hub_err = |e: hf_hub::api::sync::ApiError| Error::Content {
        path: repo_id.to_string(),
        reason: format!("Hugging Face Hub: {e}"),
    };
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_progress(true)
        .build()
        .map_err(hub_err)?;
    let repo = api.model(repo_id.to_string());
    let config = repo.get("config.json").map_err(hub_err)?;
    repo.get("tokenizer.json").map_err(hub_err)?;
    for optional in [
        "tokenizer_config.json",
        "preprocessor_config.json",
        "generation_config.json",
        "chat_template.json",
    ] {
        let _ = repo.get(optional);
    }
    match repo.get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index).map_err(|error| Error::Read {
                path: index.display().to_string(),
                error,
            })?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Content {
                path: index.display().to_string(),
                reason: format!("malformed JSON: {e}"),
            })?;
            let mut shards: Vec<&str> = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .map(|m| m.values().filter_map(|f| f.as_str()).collect())
                .unwrap_or_default();
            shards.sort_unstable();
            shards.dedup();
            for shard in shards {
                repo.get(shard).map_err(hub_err)?;
            }
        }
        Err(_) => {
            repo.get("model.safetensors").map_err(hub_err)?;
        }
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::Content {
            path: config.display().to_string(),
            reason: "downloaded file has no parent directory".into(),
        })
}

#[cfg(not(feature = "hub"))]
fn download(repo_id: &str) -> Result<PathBuf> {
    Err(Error::Content {
        path: repo_id.to_string(),
        reason: "not a directory; to download this model id from the Hugging Face Hub, build with `--features hub`".into(),
    })
}
