//! The non-weight files of a Hugging Face model (tokenizer, configs, chat template), parsed from
//! bytes supplied by the caller: the SDK reads them from a directory, the browser from fetched
//! responses. One parser, so every front end interprets a model identically.

use crate::config::{GenerationConfig, ModelConfig, PreprocessorConfig};
use crate::prompt::ChatTemplate;
use crate::tokenizer::QwenTokenizer;

/// The parsed files.
#[derive(Debug)]
pub struct ModelFiles {
    /// The tokenizer (`tokenizer.json`, required).
    pub tokenizer: QwenTokenizer,
    /// `config.json`, if present.
    pub config: Option<ModelConfig>,
    /// `preprocessor_config.json` (Qwen2.5-VL defaults when absent).
    pub preprocessor: PreprocessorConfig,
    /// `generation_config.json`, if present.
    pub generation: Option<GenerationConfig>,
    /// The chat template: `chat_template.json`, `chat_template.jinja`, or the `chat_template`
    /// of `tokenizer_config.json`, first found.
    pub chat_template: Option<ChatTemplate>,
}

/// Why the files could not be parsed.
#[derive(Debug)]
pub enum ModelFilesError<E> {
    /// The caller's reader failed on this file.
    Read(E),
    /// A file is missing or malformed.
    File {
        /// File name.
        file: &'static str,
        /// What is wrong.
        error: crate::Error,
    },
}

/// Names of the files [`ModelFiles::parse`] asks for, in order.
pub const MODEL_FILES: [&str; 7] = [
    "tokenizer.json",
    "config.json",
    "preprocessor_config.json",
    "generation_config.json",
    "chat_template.json",
    "chat_template.jinja",
    "tokenizer_config.json",
];

impl ModelFiles {
    /// Parses the files; `read(name)` returns a file's bytes, `None` when absent.
    ///
    /// ```
    /// use visionthink_core::model_files::{ModelFiles, ModelFilesError};
    /// let r = ModelFiles::parse(|_name| Ok::<_, ()>(None));
    /// assert!(matches!(r, Err(ModelFilesError::File { file: "tokenizer.json", .. })));
    /// ```
    pub fn parse<E>(
        mut read: impl FnMut(&'static str) -> Result<Option<Vec<u8>>, E>,
    ) -> Result<Self, ModelFilesError<E>> {
        let mut get = |f: &'static str| read(f).map_err(ModelFilesError::Read);
        let bad = |file: &'static str| move |error| ModelFilesError::File { file, error };
        let tok = get("tokenizer.json")?.ok_or(ModelFilesError::File {
            file: "tokenizer.json",
            error: crate::Error::Config {
                file: "tokenizer.json",
                reason: "missing (a model folder needs tokenizer.json)".into(),
            },
        })?;
        let tokenizer = QwenTokenizer::from_bytes(&tok).map_err(bad("tokenizer.json"))?;
        let config = get("config.json")?
            .map(|b| ModelConfig::from_json(&b))
            .transpose()
            .map_err(bad("config.json"))?;
        let preprocessor = get("preprocessor_config.json")?
            .map(|b| PreprocessorConfig::from_json(&b))
            .transpose()
            .map_err(bad("preprocessor_config.json"))?
            .unwrap_or_default();
        let generation = get("generation_config.json")?
            .map(|b| GenerationConfig::from_json(&b))
            .transpose()
            .map_err(bad("generation_config.json"))?;
        let chat_template = if let Some(b) = get("chat_template.json")? {
            Some(ChatTemplate::from_chat_template_json(&b).map_err(bad("chat_template.json"))?)
        } else if let Some(b) = get("chat_template.jinja")? {
            let src = String::from_utf8(b).map_err(|e| ModelFilesError::File {
                file: "chat_template.jinja",
                error: crate::Error::Config {
                    file: "chat_template.jinja",
                    reason: format!("not UTF-8: {e}"),
                },
            })?;
            Some(ChatTemplate::new(&src).map_err(bad("chat_template.jinja"))?)
        } else if let Some(b) = get("tokenizer_config.json")? {
            let has_template = serde_json::from_slice::<serde_json::Value>(&b)
                .map(|v| v.get("chat_template").is_some())
                .unwrap_or(false);
            if has_template {
                Some(
                    ChatTemplate::from_tokenizer_config(&b)
                        .map_err(bad("tokenizer_config.json"))?,
                )
            } else {
                None
            }
        } else {
            None
        };
        Ok(Self {
            tokenizer,
            config,
            preprocessor,
            generation,
            chat_template,
        })
    }

    /// The same files of a llama.cpp GGUF model, from its metadata alone: the tokenizer from
    /// `tokenizer.ggml.*` (ids identical to HF's `tokenizer.json`), the model config from the
    /// text file's `qwen2vl.*` keys and the mmproj's `clip.vision.*` keys, the processor's mean
    /// and std from the mmproj, the template from `tokenizer.chat_template`. One function for
    /// the SDK (files on disk) and the browser (headers of streamed files); errors name the key.
    pub fn from_gguf(text: &crate::gguf::Gguf, mmproj: &crate::gguf::Gguf) -> crate::Result<Self> {
        use crate::gguf;
        let bad = |e: gguf::GgufError| crate::Error::Config {
            file: "GGUF metadata",
            reason: e.to_string(),
        };
        let config = gguf::model_config(text, mmproj).map_err(bad)?;
        let preprocessor = gguf::preprocessor_config(mmproj).map_err(bad)?;
        let json = gguf::tokenizer_json(text).map_err(bad)?;
        let tokenizer = QwenTokenizer::from_bytes(&json).map_err(|e| crate::Error::Config {
            file: "GGUF metadata",
            reason: format!("tokenizer.ggml.*: {e}"),
        })?;
        let chat_template = match text.get("tokenizer.chat_template") {
            None => None,
            Some(v) => {
                let src = v.as_str().ok_or_else(|| crate::Error::Config {
                    file: "GGUF metadata",
                    reason: "`tokenizer.chat_template` is not a string".into(),
                })?;
                Some(ChatTemplate::new(src).map_err(|e| crate::Error::Config {
                    file: "GGUF metadata",
                    reason: format!("tokenizer.chat_template: {e}"),
                })?)
            }
        };
        Ok(Self {
            tokenizer,
            config: Some(config),
            preprocessor,
            generation: None,
            chat_template,
        })
    }
}
