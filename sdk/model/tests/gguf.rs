//! llama.cpp compatibility: GGUF files written by llama.cpp's own converter
//! (tests/fixtures/gguf, made by tests/scripts/gen_gguf_fixtures.py from the `tied_nested` test
//! checkpoint) load under HF names and reproduce the transformers goldens; the tokenizer rebuilt
//! from the GGUF metadata gives tokenizer.json's ids; corrupt files are named errors.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use visionthink_core::gguf::{self, Gguf};
use visionthink_core::tokenizer::QwenTokenizer;
use visionthink_model::gguf::GgufWeights;
use visionthink_model::{Backend, CandleBackend, Qwen25VL, WeightStore};

mod common;
use common::fixtures;

fn gguf_file(name: &str) -> PathBuf {
    fixtures().join("gguf").join(name)
}

fn open(mmproj: &str) -> GgufWeights {
    GgufWeights::open(
        &gguf_file("tied_nested-f16.gguf"),
        &gguf_file(&format!("tied_nested-mmproj-{mmproj}.gguf")),
    )
    .unwrap()
}

fn load<B: Backend>(be: &B, mmproj: &str) -> Qwen25VL<B> {
    let w = open(mmproj);
    let cfg = gguf::model_config(w.text_header(), w.mmproj_header()).unwrap();
    Qwen25VL::load(be, &cfg, &WeightStore::from_gguf(w)).unwrap()
}

#[test]
fn config_from_metadata_equals_config_json() {
    let w = open("f16");
    let from_gguf = gguf::model_config(w.text_header(), w.mmproj_header()).unwrap();
    let json = std::fs::read(fixtures().join("models/tied_nested/config.json")).unwrap();
    let want = visionthink_core::config::ModelConfig::from_json(&json).unwrap();
    assert_eq!(from_gguf.text, want.text);
    assert_eq!(
        from_gguf.vision.fullatt_block_indexes,
        want.vision.fullatt_block_indexes
    );
    assert_eq!(from_gguf.vision, want.vision);
    let pre = gguf::preprocessor_config(w.mmproj_header()).unwrap();
    assert_eq!(pre, visionthink_core::config::PreprocessorConfig::default());
}

/// F16 text + F32 or F16 mmproj: within 1e-3 of the transformers goldens (f32 on bf16 weights;
/// the converter rounds bf16 to f16), identical argmax and greedy tokens.
#[test]
fn float_ggufs_match_transformers() {
    let be = CandleBackend::cpu();
    for mm in ["f32", "f16"] {
        let (l, v) = common::check_models(&be, 1e-3, true, |variant| {
            (variant == "tied_nested").then(|| load(&be, mm))
        });
        eprintln!("F16 text + {mm} mmproj: logits {l:.2e}, vision {v:.2e} of the scale");
    }
}

/// The Q8_0 mmproj (every vision matrix in Q8_0 blocks, computed by candle's quantized matmul):
/// argmax identical on every golden case.
#[test]
fn q8_0_mmproj_keeps_the_argmax() {
    let be = CandleBackend::cpu();
    let (l, v) = common::check_models(&be, 0.05, false, |variant| {
        (variant == "tied_nested").then(|| load(&be, "q8_0"))
    });
    eprintln!("F16 text + Q8_0 mmproj: logits {l:.2e}, vision {v:.2e} of the scale");
}

#[test]
fn tokenizer_from_metadata_gives_tokenizer_json_ids() {
    let w = open("f16");
    let json = gguf::tokenizer_json(w.text_header()).unwrap();
    let from_gguf = QwenTokenizer::from_bytes(&json).unwrap();
    let hf = QwenTokenizer::from_bytes(
        &std::fs::read(fixtures().join("tokenizer/tokenizer.json")).unwrap(),
    )
    .unwrap();
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("golden/tokens.json")).unwrap(),
    )
    .unwrap();
    let mut texts: Vec<String> = golden["cases"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["text"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for f in [
        "prompt_two_images_visionthink.txt",
        "prompt_one_image_lowres.txt",
    ] {
        texts.push(std::fs::read_to_string(fixtures().join("golden").join(f)).unwrap());
    }
    texts.push(
        "héllo wörld 你好 <tool_call>{\"name\": 1}</tool_call> <|im_start|> 12345\n\n  x".into(),
    );
    assert!(texts.len() >= 3);
    for t in &texts {
        assert_eq!(
            from_gguf.encode_template(t).unwrap(),
            hf.encode_template(t).unwrap(),
            "{t:?}"
        );
        assert_eq!(
            from_gguf.encode_plain(t).unwrap(),
            hf.encode_plain(t).unwrap(),
            "{t:?}"
        );
        let ids = hf.encode_template(t).unwrap();
        assert_eq!(
            from_gguf.decode(&ids, false).unwrap(),
            hf.decode(&ids, false).unwrap()
        );
    }
    // The chat template travels in the metadata.
    assert!(w
        .text_header()
        .str("tokenizer.chat_template")
        .unwrap()
        .contains("<|im_start|>"));
}

#[test]
fn corrupt_and_mismatched_files_are_named_errors() {
    let text = std::fs::read(gguf_file("tied_nested-f16.gguf")).unwrap();
    let mm = std::fs::read(gguf_file("tied_nested-mmproj-f16.gguf")).unwrap();
    let load = |t: Vec<u8>, m: Vec<u8>| {
        GgufWeights::from_bytes(
            vec![("text.gguf".into(), t)],
            vec![("mmproj.gguf".into(), m)],
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    // Truncated anywhere: the header or the data.
    for cut in [3, 100, 5_000, text.len() - 1] {
        let e = load(text[..cut].to_vec(), mm.clone()).unwrap_err();
        assert!(e.contains("text.gguf"), "{cut}: {e}");
    }
    let mut bad = text.clone();
    bad[0] = b'X';
    assert!(load(bad, mm.clone()).unwrap_err().contains("magic"));
    // The two files swapped: each is named for what it is not.
    let w = GgufWeights::from_bytes(
        vec![("mmproj.gguf".into(), mm.clone())],
        vec![("text.gguf".into(), text.clone())],
    )
    .unwrap();
    let e = gguf::model_config(w.text_header(), w.mmproj_header())
        .unwrap_err()
        .to_string();
    assert!(e.contains("general.architecture"), "{e}");
    // An mmproj of another model (projection width edited): both sizes named.
    let header = Gguf::parse(&mm, mm.len() as u64).unwrap();
    assert_eq!(header.u64("clip.vision.projection_dim").unwrap(), 16);
    let key = b"clip.vision.projection_dim";
    let at = mm.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4;
    let mut other = mm.clone();
    other[at..at + 4].copy_from_slice(&32u32.to_le_bytes());
    let w = GgufWeights::from_bytes(vec![("t".into(), text)], vec![("m".into(), other)]).unwrap();
    let e = gguf::model_config(w.text_header(), w.mmproj_header())
        .unwrap_err()
        .to_string();
    assert!(e.contains("32") && e.contains("16"), "{e}");
}
