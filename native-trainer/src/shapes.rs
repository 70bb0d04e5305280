//! Random checkpoints of the real Qwen2.5-VL shapes (3B, 7B) in the hub's layout: `config.json`
//! (transformers 4, flat, as the hub ships it), bf16 weights in `model-0000i-of-0000n.safetensors`
//! shards with `model.safetensors.index.json`, and the tokenizer, template and processor files of
//! the shipped model. For loading and speed measurements at real size without downloading
//! weights; the values are random (uniform with the config's initializer std), so the answers
//! are noise.

use anyhow::{bail, Context, Result};
use std::io::{BufWriter, Write};
use std::path::Path;
use visionthink_core::config::ModelConfig;
use visionthink_model::graph::{checkpoint_layout, InitKind, TensorSpec};

/// A real Qwen2.5-VL size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// A benchmark shape (issue 14): Qwen2.5-0.5B's text decoder (hidden 896, 24 layers, FFN
    /// 4864, 14 / 2 heads, tied) with the real vision block width and 4 blocks (full attention
    /// in the last).
    #[value(name = "0.5b")]
    B05,
    /// Qwen2.5-VL-3B-Instruct: hidden 2048, 36 layers, FFN 11008, 16 / 2 heads, tied.
    #[value(name = "3b")]
    B3,
    /// Qwen2.5-VL-7B-Instruct (VisionThink's base): hidden 3584, 28 layers, FFN 18944, 28 / 4
    /// heads, untied.
    #[value(name = "7b")]
    B7,
}

impl Shape {
    /// `config.json` in the hub's (flat, transformers 4) layout.
    pub fn config_json(self) -> String {
        let (hidden, layers, ffn, heads, kv, tied, vocab) = match self {
            Shape::B05 => (896, 24, 4864, 14, 2, true, 151936),
            Shape::B3 => (2048, 36, 11008, 16, 2, true, 151936),
            Shape::B7 => (3584, 28, 18944, 28, 4, false, 152064),
        };
        let (depth, full): (usize, Vec<usize>) = match self {
            Shape::B05 => (4, vec![3]),
            _ => (32, vec![7, 15, 23, 31]),
        };
        // head_dim / 2 split over (t, h, w): 64 → 16/24/24 (3B, 7B), 32 → 8/12/12 (0.5B).
        let sections: [usize; 3] = match hidden / heads {
            64 => [8, 12, 12],
            _ => [16, 24, 24],
        };
        let v = serde_json::json!({
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            "attention_dropout": 0.0,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "vision_start_token_id": 151652,
            "vision_end_token_id": 151653,
            "vision_token_id": 151654,
            "image_token_id": 151655,
            "video_token_id": 151656,
            "hidden_act": "silu",
            "hidden_size": hidden,
            "initializer_range": 0.02,
            "intermediate_size": ffn,
            "max_position_embeddings": 128000,
            "max_window_layers": layers,
            "num_attention_heads": heads,
            "num_hidden_layers": layers,
            "num_key_value_heads": kv,
            "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0,
            "sliding_window": 32768,
            "tie_word_embeddings": tied,
            "torch_dtype": "bfloat16",
            "use_cache": true,
            "use_sliding_window": false,
            "vision_config": {
                "depth": depth,
                "hidden_act": "silu",
                "hidden_size": 1280,
                "intermediate_size": 3420,
                "num_heads": 16,
                "in_chans": 3,
                "out_hidden_size": hidden,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "spatial_patch_size": 14,
                "window_size": 112,
                "fullatt_block_indexes": full,
                "tokens_per_second": 2,
                "temporal_patch_size": 2
            },
            "rope_scaling": {"type": "mrope", "mrope_section": sections},
            "vocab_size": vocab
        });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }
}

/// xorshift64*: fast, seeded, good enough for random weights.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The bf16 bytes of one tensor: uniform with standard deviation `std` for matrices, ones for
/// norms, zeros for biases.
fn tensor_bytes(spec: &TensorSpec, std: f32, rng: &mut Rng, out: &mut Vec<u8>) {
    let n: usize = spec.shape.iter().product();
    out.clear();
    out.reserve(n * 2);
    let half_width = std * 3f32.sqrt();
    for _ in 0..n {
        let v = match spec.init {
            InitKind::Ones => 1.0,
            InitKind::Zeros => 0.0,
            InitKind::Matrix => {
                let u = (rng.next() >> 40) as f32 / (1u64 << 24) as f32;
                (2.0 * u - 1.0) * half_width
            }
        };
        out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes());
    }
}

/// Writes one safetensors shard of `specs`, generating each tensor as it is written.
fn write_shard(path: &Path, specs: &[&TensorSpec], std: f32, rng: &mut Rng) -> Result<u64> {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for s in specs {
        let bytes = s.shape.iter().product::<usize>() as u64 * 2;
        header.insert(
            s.name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": s.shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut json = serde_json::to_string(&header)?;
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 22, file);
    w.write_all(&(json.len() as u64).to_le_bytes())?;
    w.write_all(json.as_bytes())?;
    let mut buf = Vec::new();
    for s in specs {
        tensor_bytes(s, std, rng, &mut buf);
        w.write_all(&buf)?;
    }
    w.flush()?;
    Ok(offset)
}

/// Writes a random checkpoint of `shape` into `out`, in shards of at most `shard_bytes`.
/// Returns the total weight bytes.
pub fn write_checkpoint(shape: Shape, out: &Path, seed: u64, shard_bytes: u64) -> Result<u64> {
    let config = shape.config_json();
    let cfg = ModelConfig::from_json(config.as_bytes())?;
    // The hub's (transformers 4) tensor names, as its Qwen2.5-VL files have them.
    let mut specs = checkpoint_layout(&cfg);
    for s in &mut specs {
        for (new, old) in [
            ("model.visual.", "visual."),
            ("model.language_model.", "model."),
        ] {
            if let Some(rest) = s.name.strip_prefix(new) {
                s.name = format!("{old}{rest}");
            }
        }
    }
    let mut shards: Vec<Vec<&TensorSpec>> = vec![Vec::new()];
    let mut size = 0u64;
    for s in &specs {
        let bytes = s.shape.iter().product::<usize>() as u64 * 2;
        if size > 0 && size + bytes > shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        if let Some(last) = shards.last_mut() {
            last.push(s);
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let n = shards.len();
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut weight_map = serde_json::Map::new();
    let mut total = 0;
    for (i, shard) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        total += write_shard(&out.join(&name), shard, 0.02, &mut rng)?;
        for s in shard {
            weight_map.insert(s.name.clone(), serde_json::Value::String(name.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    crate::files::write_atomic(
        &out.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index)?.as_bytes(),
    )?;
    crate::files::write_atomic(&out.join("config.json"), config.as_bytes())?;
    for (file, bytes) in visionthink::shipped::FILES {
        if file.ends_with(".safetensors") || *file == "config.json" {
            continue;
        }
        crate::files::write_atomic(&out.join(file), bytes)?;
    }
    if total == 0 {
        bail!("no weights written");
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layouts have the published parameter counts (Qwen2.5-VL-3B: 3.75 B, 7B: 8.29 B).
    #[test]
    fn real_shapes_have_the_published_sizes() {
        for (shape, params) in [(Shape::B3, 3_754_622_976u64), (Shape::B7, 8_292_166_656)] {
            let cfg = ModelConfig::from_json(shape.config_json().as_bytes()).expect("config");
            let n: u64 = checkpoint_layout(&cfg)
                .iter()
                .map(|s| s.shape.iter().product::<usize>() as u64)
                .sum();
            assert_eq!(n, params, "{shape:?}");
        }
    }

    /// A shard reads back with the safetensors crate: names, shapes, bf16, ones, zeros, and
    /// matrices with the asked standard deviation.
    #[test]
    fn shards_are_valid_safetensors() {
        let spec = |name: &str, shape: Vec<usize>, init| TensorSpec {
            name: name.into(),
            shape,
            init,
        };
        let specs = [
            spec("w", vec![64, 128], InitKind::Matrix),
            spec("n", vec![128], InitKind::Ones),
            spec("b", vec![64], InitKind::Zeros),
        ];
        let refs: Vec<&TensorSpec> = specs.iter().collect();
        let path =
            std::env::temp_dir().join(format!("vt-shard-{}.safetensors", std::process::id()));
        let bytes = write_shard(&path, &refs, 0.02, &mut Rng(7)).expect("write");
        assert_eq!(bytes, (64 * 128 + 128 + 64) * 2);
        let data = std::fs::read(&path).expect("read");
        std::fs::remove_file(&path).ok();
        let st = safetensors::SafeTensors::deserialize(&data).expect("safetensors");
        let values = |name: &str| -> Vec<f32> {
            let t = st.tensor(name).expect("tensor");
            assert_eq!(t.dtype(), safetensors::Dtype::BF16);
            t.data()
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()
        };
        assert_eq!(st.tensor("w").expect("w").shape(), [64, 128]);
        assert!(values("n").iter().all(|&v| v == 1.0));
        assert!(values("b").iter().all(|&v| v == 0.0));
        let w = values("w");
        let std = (w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32).sqrt();
        assert!((std - 0.02).abs() < 0.001, "std {std}");
    }
}
