//! `visionthink convert`: an HF checkpoint to llama.cpp's GGUF pair (text model + `mmproj`),
//! F32, F16, Q8_0, Q4_0 or Q4_K, whole or split into parts of at most a given size with
//! `gguf-split`'s naming and keys, plus the `visionthink-manifest.json` (file list, sizes,
//! SHA-256) the npm package reads.
//!
//! Names, metadata keys and layouts are llama.cpp's (`convert_hf_to_gguf.py` for Qwen2.5-VL):
//! the vision `qkv` is written as three tensors, the 3-D patch embedding as two 2-D kernels,
//! the window-attention blocks as `clip.vision.n_wa_pattern`. A matrix whose rows are not whole
//! blocks of the chosen type falls back to Q8_0 (rows of 32), else F16, as llama.cpp does; norms
//! and biases stay F32. The vision tower is F16 except with `q8_0` (llama.cpp's published
//! `mmproj` files are F16: a 4-bit vision tower costs accuracy for little memory).

use crate::error::{Error, Result};
use crate::files::ModelDir;
use sha2::Digest;
use std::io::Write;
use std::path::{Path, PathBuf};
use visionthink_core::config::ModelConfig;
use visionthink_core::gguf::{self, GgmlType, MetaValue, TensorEntry};
use visionthink_model::gguf::{quantize, source, Source};
use visionthink_model::graph::{checkpoint_layout, read_tensor, TensorSpec};
use visionthink_model::WeightStore;

/// The weight type of a converted model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    /// f32 everywhere (lossless for f32 and bf16 checkpoints).
    F32,
    /// f16 everywhere (norms and biases f32).
    F16,
    /// 8-bit blocks of 32.
    Q8_0,
    /// 4-bit blocks of 32.
    Q4_0,
    /// 4-bit k-quant super-blocks of 256.
    Q4K,
    /// llama.cpp's `Q4_K_M` mix: Q4_K, with Q6_K for the head (the embedding when tied) and
    /// for `attn_v` / `ffn_down` of the layers llama.cpp gives more bits (the first and last
    /// eighth, and every third in between).
    Q4KM,
}

impl Quant {
    /// Parses `f32`, `f16`, `q8_0`, `q4_0`, `q4_k` or `q4_k_m`.
    ///
    /// ```
    /// use visionthink::convert::Quant;
    /// assert_eq!(Quant::parse("q4_k").unwrap(), Quant::Q4K);
    /// assert!(Quant::parse("q3").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => Self::F32,
            "f16" => Self::F16,
            "q8_0" => Self::Q8_0,
            "q4_0" => Self::Q4_0,
            "q4_k" | "q4_k_s" => Self::Q4K,
            "q4_k_m" => Self::Q4KM,
            other => {
                return Err(Error::Content {
                    path: "--quant".into(),
                    reason: format!("{other:?} is not one of f32, f16, q8_0, q4_0, q4_k, q4_k_m"),
                })
            }
        })
    }

    fn ty(self) -> GgmlType {
        match self {
            Self::F32 => GgmlType::F32,
            Self::F16 => GgmlType::F16,
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4_0 => GgmlType::Q4_0,
            Self::Q4K | Self::Q4KM => GgmlType::Q4_K,
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_MOSTLY_*`).
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 7,
            Self::Q4_0 => 2,
            Self::Q4K => 14,
            Self::Q4KM => 15,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4K => "q4_k",
            Self::Q4KM => "q4_k_m",
        }
    }
}

/// Parses a size such as `512M`, `2G`, `1000000` (bytes; K, M, G are powers of 1024).
///
/// ```
/// assert_eq!(visionthink::convert::parse_size("512M").unwrap(), 512 << 20);
/// assert!(visionthink::convert::parse_size("12X").is_err());
/// ```
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .filter(|&n| n > 0)
        .ok_or_else(|| Error::Content {
            path: "--split-max-size".into(),
            reason: format!("{s:?} is not a size such as 512M"),
        })
}

/// Options of [`convert`].
#[derive(Debug, Clone, Copy)]
pub struct ConvertOptions {
    /// Weight type.
    pub quant: Quant,
    /// Largest part in bytes (`None`: one file each).
    pub split_max_bytes: Option<u64>,
}

/// One written file.
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenFile {
    /// Where.
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// What [`convert`] wrote.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The text model's first part (what `--model` takes).
    pub text: PathBuf,
    /// The mmproj's first part (what `--mmproj` takes).
    pub mmproj: PathBuf,
    /// Every file, manifest excluded.
    pub files: Vec<WrittenFile>,
    /// Tensors per type, summed over both files.
    pub types: Vec<(GgmlType, usize)>,
}

/// One tensor to write: its GGUF entry and how to make its bytes.
struct Planned {
    entry: TensorEntry,
    spec: TensorSpec,
    /// Which row block or temporal slice of the HF tensor (`None`: all of it).
    piece: Option<(usize, usize)>,
    temporal: bool,
}

/// The stored type of one tensor: norms and biases f32; the patch-embedding kernels f16 (f32
/// with `want` f32); a matrix `want` when its rows are whole blocks of it, else Q8_0 (a
/// quantized `want` with rows of 32), else f16 — llama-quantize's fallbacks.
fn planned_type(spec: &TensorSpec, shape: &[usize], want: GgmlType) -> GgmlType {
    if shape.len() != 2 || spec.shape.len() == 1 {
        return match (shape.len() >= 3, want) {
            (true, GgmlType::F32) => GgmlType::F32,
            (true, _) => GgmlType::F16,
            (false, _) => GgmlType::F32,
        };
    }
    let cols = shape[1];
    if cols % want.block_size() == 0 {
        want
    } else if want.is_quantized() && cols % GgmlType::Q8_0.block_size() == 0 {
        GgmlType::Q8_0
    } else {
        GgmlType::F16
    }
}

/// The type llama.cpp's `Q4_K_M` gives a decoder tensor (`llama_tensor_get_type`): Q6_K for the
/// head (the embedding when the head is tied) and for `attn_v` / `ffn_down` of the layers
/// `use_more_bits` picks, Q4_K for the rest.
fn k_mix(hf: &str, cfg: &ModelConfig) -> GgmlType {
    let tied = cfg.text.tie_word_embeddings;
    let head = hf == "lm_head.weight" || (tied && hf == "model.language_model.embed_tokens.weight");
    let n = cfg.text.num_hidden_layers;
    // llama.cpp's `use_more_bits` (its third test only matters past the first eighth).
    let more_bits = |i: usize| i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
    let layer = hf
        .strip_prefix("model.language_model.layers.")
        .and_then(|r| r.split_once('.'))
        .and_then(|(i, rest)| Some((i.parse::<usize>().ok()?, rest)));
    match layer {
        _ if head => GgmlType::Q6_K,
        Some((i, "self_attn.v_proj.weight" | "mlp.down_proj.weight")) if more_bits(i) => {
            GgmlType::Q6_K
        }
        _ => GgmlType::Q4_K,
    }
}

fn plan(cfg: &ModelConfig, quant: Quant) -> Result<(Vec<Planned>, Vec<Planned>)> {
    let (mut text, mut vision) = (Vec::new(), Vec::new());
    for spec in checkpoint_layout(cfg) {
        let is_vision = spec.name.starts_with("model.visual.");
        let want = match (is_vision, quant) {
            (false, Quant::Q4KM) => k_mix(&spec.name, cfg),
            (false, q) => q.ty(),
            (true, Quant::Q8_0) => GgmlType::Q8_0,
            (true, Quant::F32) => GgmlType::F32,
            (true, _) => GgmlType::F16,
        };
        let src = source(&spec.name).ok_or_else(|| {
            Error::Model(visionthink_model::Error::MissingTensor(format!(
                "{}: no llama.cpp name",
                spec.name
            )))
        })?;
        let (names, piece_shape, temporal) = match src {
            Source::One(n) => (vec![n], spec.shape.clone(), false),
            Source::Rows(v) => {
                let mut s = spec.shape.clone();
                s[0] /= v.len();
                (v, s, false)
            }
            Source::Temporal(a, b) => {
                let s = &spec.shape;
                (vec![a, b], vec![s[0], s[1], s[3], s[4]], true)
            }
        };
        let n = names.len();
        for (i, name) in names.into_iter().enumerate() {
            let ty = planned_type(&spec, &piece_shape, want);
            let elements: usize = piece_shape.iter().product();
            let cols = piece_shape.last().copied().unwrap_or(1);
            let bytes =
                ty.bytes_for(elements as u64, cols as u64)
                    .ok_or_else(|| Error::Content {
                        path: spec.name.clone(),
                        reason: format!("{piece_shape:?} cannot be stored as {}", ty.name()),
                    })?;
            let p = Planned {
                entry: TensorEntry {
                    name,
                    dims: piece_shape.iter().rev().map(|&d| d as u64).collect(),
                    ty,
                    bytes,
                },
                spec: spec.clone(),
                piece: (n > 1).then_some((i, n)),
                temporal,
            };
            match is_vision {
                true => vision.push(p),
                false => text.push(p),
            }
        }
    }
    Ok((text, vision))
}

/// The bytes of a planned tensor from the checkpoint.
fn tensor_bytes(
    store: &WeightStore,
    p: &Planned,
    cache: &mut Option<(String, Vec<f32>)>,
) -> Result<Vec<u8>> {
    if cache.as_ref().map(|c| c.0 != p.spec.name).unwrap_or(true) {
        let v = read_tensor(store, &p.spec).map_err(Error::Model)?;
        *cache = Some((p.spec.name.clone(), v));
    }
    let all = cache.as_ref().map(|c| c.1.as_slice()).unwrap_or_default();
    let values: Vec<f32> = match (p.piece, p.temporal) {
        (None, _) => all.to_vec(),
        (Some((i, n)), false) => {
            let len = all.len() / n;
            all[i * len..(i + 1) * len].to_vec()
        }
        (Some((i, _)), true) => {
            // [dim, c, 2, p, p]: slice i of every (out, channel) pair.
            let k: usize = p.spec.shape[3] * p.spec.shape[4];
            all.chunks_exact(2 * k)
                .flat_map(|c| c[i * k..(i + 1) * k].to_vec())
                .collect()
        }
    };
    let cols = p.entry.dims.first().copied().unwrap_or(1) as usize;
    quantize(p.entry.ty, &values, cols).map_err(Error::Model)
}

fn rope_sections(cfg: &ModelConfig) -> Vec<i32> {
    let mut v: Vec<i32> = cfg.text.mrope_section.iter().map(|&x| x as i32).collect();
    v.resize(4, 0);
    v
}

/// `tokenizer.ggml.*` from `tokenizer.json`, padded to the embedding's rows as llama.cpp's
/// converter does (`[PAD{id}]`, type 5).
fn tokenizer_meta(dir: &ModelDir, vocab_rows: usize) -> Result<Vec<(String, MetaValue)>> {
    let path = dir.path.join("tokenizer.json");
    let bad = |reason: String| Error::Content {
        path: path.display().to_string(),
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_rows];
    let vocab = v["model"]["vocab"]
        .as_object()
        .ok_or_else(|| bad("no model.vocab".into()))?;
    let mut put = |id: u64, tok: &str, ty: i32| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            bad(format!(
                "token id {id} is past the embedding's {vocab_rows} rows"
            ))
        })?;
        *slot = Some((tok.to_string(), ty));
        Ok(())
    };
    for (tok, id) in vocab {
        put(
            id.as_u64().ok_or_else(|| bad(format!("id of {tok:?}")))?,
            tok,
            1,
        )?;
    }
    for t in v["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (t["id"].as_u64(), t["content"].as_str()) else {
            return Err(bad(format!("malformed added token {t}")));
        };
        // As llama.cpp's converter: special, or looking like `<|…|>`, is a control token.
        let special = t["special"].as_bool().unwrap_or(true)
            || (content.starts_with("<|") && content.ends_with("|>"));
        put(id, content, if special { 3 } else { 4 })?;
    }
    let (names, types): (Vec<String>, Vec<i32>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or((format!("[PAD{i}]"), 5)))
        .unzip();
    let merges: Vec<String> = v["model"]["merges"]
        .as_array()
        .ok_or_else(|| bad("no model.merges".into()))?
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Array(p) if p.len() == 2 => Ok(format!(
                "{} {}",
                p[0].as_str().unwrap_or_default(),
                p[1].as_str().unwrap_or_default()
            )),
            other => Err(bad(format!("malformed merge {other}"))),
        })
        .collect::<Result<_>>()?;
    let mut meta = vec![
        ("tokenizer.ggml.model".into(), MetaValue::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), MetaValue::Str("qwen2".into())),
        ("tokenizer.ggml.tokens".into(), MetaValue::Strs(names)),
        ("tokenizer.ggml.token_type".into(), MetaValue::I32s(types)),
        ("tokenizer.ggml.merges".into(), MetaValue::Strs(merges)),
        (
            "tokenizer.ggml.eos_token_id".into(),
            MetaValue::U32(visionthink_core::tokens::IM_END),
        ),
        (
            "tokenizer.ggml.padding_token_id".into(),
            MetaValue::U32(visionthink_core::tokens::ENDOFTEXT),
        ),
        (
            "tokenizer.ggml.bos_token_id".into(),
            MetaValue::U32(visionthink_core::tokens::ENDOFTEXT),
        ),
        (
            "tokenizer.ggml.add_bos_token".into(),
            MetaValue::Bool(false),
        ),
    ];
    if let Some(t) = &dir.chat_template {
        meta.push((
            "tokenizer.chat_template".into(),
            MetaValue::Str(t.source().to_string()),
        ));
    }
    Ok(meta)
}

fn text_meta(cfg: &ModelConfig, name: &str, quant: Quant) -> Vec<(String, MetaValue)> {
    let t = &cfg.text;
    let k = |s: &str| format!("qwen2vl.{s}");
    let u = |x: usize| MetaValue::U32(x as u32);
    vec![
        (
            "general.architecture".into(),
            MetaValue::Str("qwen2vl".into()),
        ),
        ("general.type".into(), MetaValue::Str("model".into())),
        ("general.name".into(), MetaValue::Str(name.into())),
        (k("block_count"), u(t.num_hidden_layers)),
        (k("context_length"), u(t.max_position_embeddings)),
        (k("embedding_length"), u(t.hidden_size)),
        (k("feed_forward_length"), u(t.intermediate_size)),
        (k("attention.head_count"), u(t.num_attention_heads)),
        (k("attention.head_count_kv"), u(t.num_key_value_heads)),
        (
            k("rope.dimension_sections"),
            MetaValue::I32s(rope_sections(cfg)),
        ),
        (k("rope.freq_base"), MetaValue::F32(t.rope_theta as f32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            MetaValue::F32(t.rms_norm_eps as f32),
        ),
        (
            "general.file_type".into(),
            MetaValue::U32(quant.file_type()),
        ),
        ("general.quantization_version".into(), MetaValue::U32(2)),
    ]
}

fn mmproj_meta(
    cfg: &ModelConfig,
    dir: &ModelDir,
    name: &str,
    quant: Quant,
) -> Vec<(String, MetaValue)> {
    let v = &cfg.vision;
    let u = |x: usize| MetaValue::U32(x as u32);
    let p = &dir.preprocessor;
    let mut meta = vec![
        ("general.architecture".into(), MetaValue::Str("clip".into())),
        ("general.type".into(), MetaValue::Str("mmproj".into())),
        ("general.name".into(), MetaValue::Str(name.into())),
        (
            "general.file_type".into(),
            MetaValue::U32(if quant == Quant::Q8_0 { 7 } else { 1 }),
        ),
        ("clip.has_vision_encoder".into(), MetaValue::Bool(true)),
        ("clip.vision.projection_dim".into(), u(v.out_hidden_size)),
        ("clip.vision.image_size".into(), u(560)),
        ("clip.vision.patch_size".into(), u(v.patch_size)),
        ("clip.vision.embedding_length".into(), u(v.hidden_size)),
        (
            "clip.vision.feed_forward_length".into(),
            u(v.intermediate_size),
        ),
        ("clip.vision.block_count".into(), u(v.depth)),
        ("clip.vision.attention.head_count".into(), u(v.num_heads)),
        (
            "clip.vision.image_mean".into(),
            MetaValue::F32s(p.image_mean.to_vec()),
        ),
        (
            "clip.vision.image_std".into(),
            MetaValue::F32s(p.image_std.to_vec()),
        ),
        (
            "clip.projector_type".into(),
            MetaValue::Str(gguf::PROJECTOR.into()),
        ),
        ("clip.use_silu".into(), MetaValue::Bool(true)),
        (
            "clip.vision.attention.layer_norm_epsilon".into(),
            MetaValue::F32(cfg.text.rms_norm_eps as f32),
        ),
        ("general.quantization_version".into(), MetaValue::U32(2)),
    ];
    // llama.cpp reads a regular pattern (blocks n-1, 2n-1, … attend fully); the exact list is
    // written as well, and is what this project reads first.
    let full = &v.fullatt_block_indexes;
    if let Some(&first) = full.first() {
        let n = first + 1;
        if (0..v.depth)
            .filter(|i| (i + 1) % n == 0)
            .eq(full.iter().copied())
        {
            meta.push(("clip.vision.n_wa_pattern".into(), u(n)));
        }
    }
    meta.push((
        "clip.vision.wa_layer_indexes".into(),
        MetaValue::I32s(full.iter().map(|&i| i as i32).collect()),
    ));
    meta
}

/// Tensors grouped into parts of at most `max` bytes (header estimate included); one part
/// when `max` is `None`.
fn split_parts(tensors: Vec<Planned>, meta_bytes: u64, max: Option<u64>) -> Vec<Vec<Planned>> {
    let Some(max) = max else {
        return vec![tensors];
    };
    let mut parts: Vec<Vec<Planned>> = vec![Vec::new()];
    let mut size = meta_bytes;
    for t in tensors {
        let need = t.entry.bytes + gguf::ALIGNMENT + 64 + t.entry.name.len() as u64;
        let last = parts.len() - 1;
        if !parts[last].is_empty() && size + need > max {
            parts.push(Vec::new());
            size = 256;
        }
        size += need;
        if let Some(p) = parts.last_mut() {
            p.push(t);
        }
    }
    parts
}

/// Where and how the sets are written, and the progress over both.
struct SetWriter<'a> {
    out: &'a Path,
    store: &'a WeightStore,
    max: Option<u64>,
    done: u64,
    total: u64,
    progress: &'a mut dyn FnMut(u64, u64),
}

impl SetWriter<'_> {
    /// Writes one set (text or mmproj) as `{stem}.gguf` or `{stem}-0000i-of-0000N.gguf` parts.
    fn write(
        &mut self,
        stem: &str,
        meta: Vec<(String, MetaValue)>,
        tensors: Vec<Planned>,
    ) -> Result<Vec<WrittenFile>> {
        let (out, store, max) = (self.out, self.store, self.max);
        let n_tensors = tensors.len();
        let meta_bytes = gguf::header(&meta, &[]).len() as u64;
        let parts = split_parts(tensors, meta_bytes, max);
        let count = parts.len();
        let mut written = Vec::new();
        let mut cache = None;
        for (i, part) in parts.into_iter().enumerate() {
            let path = match count {
                1 => out.join(format!("{stem}.gguf")),
                _ => out.join(format!("{stem}-{:05}-of-{count:05}.gguf", i + 1)),
            };
            let mut kv = if i == 0 { meta.clone() } else { Vec::new() };
            if count > 1 {
                kv.push(("split.no".into(), MetaValue::U16(i as u16)));
                kv.push(("split.count".into(), MetaValue::U16(count as u16)));
                kv.push((
                    "split.tensors.count".into(),
                    MetaValue::I32(n_tensors as i32),
                ));
            }
            let entries: Vec<TensorEntry> = part.iter().map(|p| p.entry.clone()).collect();
            let io = |e: std::io::Error| Error::Content {
                path: path.display().to_string(),
                reason: e.to_string(),
            };
            let mut file = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io)?);
            let mut hash = sha2::Sha256::new();
            let mut size = 0u64;
            let mut put = |b: &[u8], file: &mut std::io::BufWriter<std::fs::File>| -> Result<()> {
                file.write_all(b).map_err(io)?;
                hash.update(b);
                size += b.len() as u64;
                Ok(())
            };
            put(&gguf::header(&kv, &entries), &mut file)?;
            for p in &part {
                let bytes = tensor_bytes(store, p, &mut cache)?;
                if bytes.len() as u64 != p.entry.bytes {
                    return Err(Error::Content {
                        path: p.entry.name.clone(),
                        reason: format!(
                            "{} bytes where {} were planned",
                            bytes.len(),
                            p.entry.bytes
                        ),
                    });
                }
                put(&bytes, &mut file)?;
                put(&gguf::padding(bytes.len() as u64), &mut file)?;
                self.done += bytes.len() as u64;
                (self.progress)(self.done, self.total);
            }
            file.flush().map_err(io)?;
            drop(file);
            written.push(WrittenFile {
                path,
                size,
                sha256: hex::encode(hash.finalize()),
            });
        }
        Ok(written)
    }
}

/// Converts the HF model folder `from` into GGUF files in `out` (created if needed); `progress`
/// gets (bytes of tensor data written, total).
///
/// ```no_run
/// use visionthink::convert::{convert, ConvertOptions, Quant};
/// let c = convert("Qwen2.5-VL-3B-Instruct".as_ref(), "out".as_ref(),
///     ConvertOptions { quant: Quant::Q4K, split_max_bytes: Some(512 << 20) }, &mut |_, _| {})?;
/// println!("--model {} --mmproj {}", c.text.display(), c.mmproj.display());
/// # Ok::<(), visionthink::Error>(())
/// ```
pub fn convert(
    from: &Path,
    out: &Path,
    opts: ConvertOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Converted> {
    let dir = ModelDir::open(from)?;
    let cfg = dir.config.clone().ok_or_else(|| Error::Content {
        path: from.join("config.json").display().to_string(),
        reason: "missing: a model directory needs config.json".into(),
    })?;
    let store = WeightStore::open(from).map_err(Error::Model)?;
    std::fs::create_dir_all(out).map_err(|e| Error::Content {
        path: out.display().to_string(),
        reason: e.to_string(),
    })?;
    let name = from
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let (text, vision) = plan(&cfg, opts.quant)?;
    let mut types: Vec<(GgmlType, usize)> = Vec::new();
    for p in text.iter().chain(&vision) {
        match types.iter_mut().find(|(t, _)| *t == p.entry.ty) {
            Some(e) => e.1 += 1,
            None => types.push((p.entry.ty, 1)),
        }
    }
    let total: u64 = text.iter().chain(&vision).map(|p| p.entry.bytes).sum();
    let mut meta = text_meta(&cfg, &name, opts.quant);
    meta.extend(tokenizer_meta(&dir, cfg.text.vocab_size)?);
    let mm_meta = mmproj_meta(&cfg, &dir, &name, opts.quant);
    let q = opts.quant.label();
    let mm_label = match opts.quant {
        Quant::Q8_0 => "q8_0",
        Quant::F32 => "f32",
        _ => "f16",
    };
    let mut writer = SetWriter {
        out,
        store: &store,
        max: opts.split_max_bytes,
        done: 0,
        total,
        progress,
    };
    let mut files = writer.write(&format!("{name}-{q}"), meta, text)?;
    let mm = writer.write(&format!("mmproj-{name}-{mm_label}"), mm_meta, vision)?;
    let (text_first, mm_first) = (files[0].path.clone(), mm[0].path.clone());
    files.extend(mm);
    let manifest = serde_json::json!({
        "files": files.iter().map(|f| serde_json::json!({
            "name": f.path.file_name().map(|n| n.to_string_lossy().into_owned()),
            "size": f.size,
            "sha256": f.sha256,
        })).collect::<Vec<_>>(),
        "gguf": {
            "model": text_first.file_name().map(|n| n.to_string_lossy().into_owned()),
            "mmproj": mm_first.file_name().map(|n| n.to_string_lossy().into_owned()),
        },
    });
    let mpath = out.join("visionthink-manifest.json");
    std::fs::write(
        &mpath,
        serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
    )
    .map_err(|e| Error::Content {
        path: mpath.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(Converted {
        text: text_first,
        mmproj: mm_first,
        files,
        types,
    })
}
