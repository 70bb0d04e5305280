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

/// F16 matrices kept in 16 bits (the default on a native CPU: half the memory) compute what the
/// same files read as f32 compute, on the same f32 values, up to the order of the additions
/// (tiles of the matrix widened one at a time): a 24-token prefill, a one-token decode step
/// (the one-row product widens in registers) and the vision tower of the F16 mmproj.
#[test]
fn f16_matrices_kept_in_16_bits_give_the_f32_results() {
    let kept = CandleBackend::cpu();
    let wide = CandleBackend::cpu().keep_gguf_blocks(false);
    let (a, b) = (load(&kept, "f16"), load(&wide, "f16"));
    // The kept matrices are stand-ins (zero strides, no f32 values behind them).
    assert_eq!(a.lm_head().stride(), [0, 0]);
    assert_ne!(b.lm_head().stride(), [0, 0]);
    let close = |got: &[f32], want: &[f32], what: &str| {
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = got
            .iter()
            .zip(want)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert_eq!(got.len(), want.len(), "{what}");
        assert!(diff <= 1e-6 * scale, "{what}: {diff} of {scale}");
    };
    close(&logits(&kept, &a), &logits(&wide, &b), "prefill");
    let step = |be: &CandleBackend, m: &Qwen25VL<CandleBackend>| {
        let mut pos = visionthink_core::rope::MropeBuilder::new();
        pos.push_text(5);
        let mut cache = m.new_cache();
        let e = m.embed(be, &[300, 301, 302, 303, 304], None).unwrap();
        m.decode(be, &e, pos.positions(), &mut cache).unwrap();
        pos.push_text(1);
        let e = m.embed(be, &[305], None).unwrap();
        let h = m.decode(be, &e, pos.positions(), &mut cache).unwrap();
        m.last_logits(be, &h).unwrap()
    };
    close(&step(&kept, &a), &step(&wide, &b), "decode step");
    let grid = [[1u32, 4, 4]];
    let pixels: Vec<f32> = (0..16 * 1176)
        .map(|i| ((i * 31 % 97) as f32 - 48.0) / 40.0)
        .collect();
    let fa = kept
        .to_vec(&a.vision.forward(&kept, &pixels, &grid).unwrap())
        .unwrap();
    let fb = wide
        .to_vec(&b.vision.forward(&wide, &pixels, &grid).unwrap())
        .unwrap();
    close(&fa, &fb, "vision features");
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

/// Feeds a file to a streaming loader in chunks of `chunk` bytes.
fn feed<B: Backend>(
    s: &mut visionthink_model::gguf_stream::GgufStream<B>,
    be: &B,
    name: &str,
    bytes: &[u8],
    chunk: usize,
    sha256: Option<[u8; 32]>,
) -> visionthink_model::Result<()> {
    s.begin_file(name, bytes.len() as u64, sha256)?;
    for c in bytes.chunks(chunk) {
        s.push(be, c)?;
    }
    s.end_file()
}

fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

/// The last-position logits of a fixed prompt (no image).
fn logits<B: Backend>(be: &B, m: &Qwen25VL<B>) -> Vec<f32> {
    let ids: Vec<u32> = (0..24u32).map(|i| 200 + i * 101).collect();
    let mut b = visionthink_core::rope::MropeBuilder::new();
    b.push_text(ids.len());
    let e = m.embed(be, &ids, None).unwrap();
    let mut cache = m.new_cache();
    let h = m.decode(be, &e, b.positions(), &mut cache).unwrap();
    m.last_logits(be, &h).unwrap()
}

/// The files streamed in chunks of any size (one byte at a time for the header's start, a
/// prime, whole) build the same model as the files opened from disk: identical logits, the
/// goldens reproduced, the tokenizer and template from the streamed headers; the loader never
/// buffers more than the largest tensor.
#[test]
fn streamed_files_build_the_same_model() {
    use visionthink_model::gguf_stream::{GgufStream, Limits};
    let be = CandleBackend::cpu();
    let text = std::fs::read(gguf_file("tied_nested-f16.gguf")).unwrap();
    let want = logits(&be, &load(&be, "q8_0"));
    let largest = |b: &[u8]| {
        let h = Gguf::parse(b, b.len() as u64).unwrap();
        h.tensors.iter().map(|t| t.bytes).max().unwrap()
    };
    for mm in ["f32", "q8_0"] {
        let mmb = std::fs::read(gguf_file(&format!("tied_nested-mmproj-{mm}.gguf"))).unwrap();
        for chunk in [7919, 65_536, usize::MAX] {
            let mut s = GgufStream::new(Limits::default());
            feed(&mut s, &be, "t.gguf", &text, chunk, Some(sha256(&text))).unwrap();
            feed(&mut s, &be, "m.gguf", &mmb, chunk, Some(sha256(&mmb))).unwrap();
            let stats = s.stats();
            assert_eq!(stats.bytes_in, (text.len() + mmb.len()) as u64);
            assert!(stats.peak_buffered <= largest(&text).max(largest(&mmb)));
            if mm == "q8_0" {
                assert!(stats.quantized > 0);
            }
            let (model, files) = s.finish(&be).unwrap();
            assert!(files.chat_template.is_some());
            assert_eq!(
                files
                    .tokenizer
                    .encode_template("a <|im_start|>user\nb")
                    .unwrap(),
                QwenTokenizer::from_bytes(
                    &std::fs::read(fixtures().join("tokenizer/tokenizer.json")).unwrap()
                )
                .unwrap()
                .encode_template("a <|im_start|>user\nb")
                .unwrap()
            );
            if mm == "q8_0" {
                assert_eq!(logits(&be, &model), want, "chunks of {chunk}");
            } else if chunk == 7919 {
                let mut once = Some(model);
                common::check_models(&be, 1e-3, true, |variant| {
                    (variant == "tied_nested").then(|| once.take()).flatten()
                });
            }
        }
    }
}

/// Bad streams are named errors: bytes past the announced size, a file ending inside the
/// header or inside a tensor, a checksum mismatch (which drops the file's tensors so a
/// refetch loads), a part given twice, a missing mmproj, and limits that cannot hold the model
/// (refused after the header, before any tensor is made).
#[test]
fn bad_streams_are_named_errors_and_a_refetch_recovers() {
    use visionthink_model::gguf_stream::{GgufStream, Limits};
    let be = CandleBackend::cpu();
    let text = std::fs::read(gguf_file("tied_nested-f16.gguf")).unwrap();
    let mm = std::fs::read(gguf_file("tied_nested-mmproj-f32.gguf")).unwrap();
    let new = || GgufStream::new(Limits::default());

    let mut s = new();
    s.begin_file("t.gguf", 10, None).unwrap();
    let e = s.push(&be, &text[..11]).unwrap_err().to_string();
    assert!(e.contains("t.gguf") && e.contains("10 bytes"), "{e}");

    for (cut, what) in [(200, "header"), (text.len() - 3, "inside tensor")] {
        let mut s = new();
        s.begin_file("t.gguf", text.len() as u64, None).unwrap();
        s.push(&be, &text[..cut]).unwrap();
        let e = s.end_file().unwrap_err().to_string();
        assert!(e.contains("t.gguf") && e.contains(what), "{e}");
    }

    // A corrupted byte in the data: the checksum fails, the file's tensors are dropped, and
    // the same file fed again (the refetch) completes the model.
    let mut s = new();
    let mut bad = text.clone();
    let last = bad.len() - 10;
    bad[last] ^= 0x55;
    let e = feed(&mut s, &be, "t.gguf", &bad, 4096, Some(sha256(&text)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("SHA-256") && e.contains("t.gguf"), "{e}");
    feed(&mut s, &be, "t.gguf", &text, 4096, Some(sha256(&text))).unwrap();
    let e = feed(&mut s, &be, "t.gguf", &text, 4096, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already loaded"), "{e}");
    let mut s2 = new();
    feed(&mut s2, &be, "t.gguf", &text, 4096, None).unwrap();
    // The failed copy's weights are not counted against the limits twice.
    assert_eq!(s.stats().planned_bytes, s2.stats().planned_bytes);
    let e = s2.finish(&be).err().unwrap().to_string();
    assert!(e.contains("mmproj"), "{e}");
    feed(&mut s, &be, "m.gguf", &mm, 4096, None).unwrap();
    let (model, _) = s.finish(&be).unwrap();
    assert_eq!(logits(&be, &model), logits(&be, &load(&be, "f32")));

    // Limits: a row larger than the adapter binds, or more bytes than the backend holds.
    for (limits, want) in [
        (
            Limits {
                max_row_bytes: Some(64),
                max_total_bytes: None,
            },
            "binds at most 64 bytes",
        ),
        (
            Limits {
                max_row_bytes: None,
                max_total_bytes: Some(1 << 20),
            },
            "can hold 1048576",
        ),
    ] {
        let mut s = GgufStream::new(limits);
        let e = feed(&mut s, &be, "t.gguf", &text, 1 << 20, None).unwrap_err();
        assert_eq!(e.name(), "AdapterLimitError", "{e}");
        assert!(e.to_string().contains(want), "{e}");
        assert_eq!(s.stats().tensors, 0);
    }
}
