//! # visionthink-fuzz
//!
//! One harness function per parser that takes untrusted bytes. Each is called by a libFuzzer
//! target (`fuzz_targets/*.rs`, built by `cargo fuzz --fuzz-dir tests/fuzz`) and by the replay
//! test (`tests/replay.rs`), which runs every file of `corpus/<target>/` and
//! `regressions/<target>/` through it on the stable toolchain.
//!
//! A harness panics when a property fails; beyond "does not crash", they check:
//! - **bounded memory**: the peak heap growth while parsing stays under a stated limit
//!   ([`HEAP_LIMIT`], or a multiple of the input's length where a format legitimately expands),
//!   so no allocation is sized by an untrusted header;
//! - **round trips** where a format allows (safetensors, tool calls, the tokenizer's
//!   encode/decode);
//! - **no control token from user text**: text a user supplied never yields a control-token id;
//! - **shape**: preprocessing either errors or returns `pixel_values` whose shape matches
//!   `grid_thw`;
//! - **termination**: the episode driver ends within its stated token and round budgets whatever
//!   the model emits.
//!
//! ```
//! // Every harness accepts any bytes.
//! visionthink_fuzz::tool_call(b"<tool_call>{\"name\": \"resize_image\"}}</tool_call>");
//! visionthink_fuzz::judge_reply(b"\x00not json");
//! ```

#![allow(unsafe_code)] // only in `heap`, the counting allocator

use arbitrary::{Arbitrary, Unstructured};
use serde_json::{json, Value};
use std::sync::OnceLock;
use visionthink_core::config::{GenerationConfig, ModelConfig, PreprocessorConfig};
use visionthink_core::image::{decode, preprocess, DecodeLimits, RgbImage};
use visionthink_core::prompt::{ChatTemplate, Message, Prompt};
use visionthink_core::tokenizer::QwenTokenizer;
use visionthink_core::tokens;

pub mod heap;

/// Peak heap growth allowed while a harness parses one input, beyond what the input itself
/// justifies (see each harness).
pub const HEAP_LIMIT: usize = 64 << 20;

/// A harness: takes one input, panics when a property fails.
pub type Harness = fn(&[u8]);

/// The harnesses by target name, in the order `run.sh` and the replay test use.
pub const TARGETS: [(&str, Harness); 13] = [
    ("tool_call", tool_call),
    ("model_output", model_output),
    ("safetensors", safetensors),
    ("configs", configs),
    ("chat_template", chat_template),
    ("tokenizer_text", tokenizer_text),
    ("tokenizer_json", tokenizer_json),
    ("image", image),
    ("dataset_jsonl", dataset_jsonl),
    ("dataset_parquet", dataset_parquet),
    ("judge_reply", judge_reply),
    ("serve_request", serve_request),
    ("gguf", gguf),
];

/// The reduced Qwen2.5-VL tokenizer of the fixtures, loaded once per process.
fn qwen_tokenizer() -> &'static QwenTokenizer {
    static T: OnceLock<QwenTokenizer> = OnceLock::new();
    T.get_or_init(|| {
        QwenTokenizer::from_bytes(include_bytes!("../../fixtures/tokenizer/tokenizer.json"))
            .expect("the fixture tokenizer loads")
    })
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// Splits fuzz input at `0xFF` bytes (never part of UTF-8) into at most `n` parts.
fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |&b| b == 0xFF).collect()
}

/// Tool calls in one model turn: `tool_call_contents`, `parse_tool_call` with the official tool
/// set, `last_answer`, the reward's prediction extraction. Round trip: a call that parses,
/// written back in the official format, parses to the same request.
pub fn tool_call(data: &[u8]) {
    use visionthink_core::protocol::{last_answer, parse_tool_call, tool_call_contents};
    let turn = text(data);
    heap::limited(HEAP_LIMIT + 8 * turn.len(), || {
        let cfg = visionthink_core::protocol::ProtocolConfig::default();
        let contents = tool_call_contents(&turn);
        let parsed = parse_tool_call(&contents, &cfg.tools);
        if let Ok(request) = &parsed {
            // With the official tool set the only request is the resize tool's: written back
            // in the official format, the call parses to the same request.
            let action = cfg.tools[0].action();
            let again = format!(
                "<tool_call>\n{}\n</tool_call>",
                json!({"name": "resize_image", "arguments": {"action": action}})
            );
            let c2 = tool_call_contents(&again);
            assert_eq!(
                parse_tool_call(&c2, &cfg.tools).as_ref(),
                Ok(request),
                "a parsed call does not round-trip"
            );
        }
        let _ = last_answer(&turn);
        let _ = visionthink_core::reward::extract_prediction(std::slice::from_ref(&turn));
        let _ = visionthink_core::judge::last_boxed(&turn);
        let _ = visionthink_core::judge::normalize_answer(&turn);
        let _ = visionthink_core::judge::parse_judge_reply(&turn);
    });
}

/// Tokens the protocol reacts to, and JSON pieces, so the fuzzer reaches tool calls quickly.
fn protocol_tokens() -> &'static [u32] {
    static TABLE: OnceLock<Vec<u32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let tok = qwen_tokenizer();
        let mut t = vec![
            tokens::IM_END,
            tokens::ENDOFTEXT,
            tokens::IM_START,
            tokens::TOOL_CALL,
            tokens::TOOL_CALL_END,
            tokens::IMAGE_PAD,
            tokens::VISION_START,
        ];
        for s in [
            "<answer>",
            "</answer>",
            "<think>",
            "</think>",
            "{\"name\": \"resize_image\", \"arguments\": {\"action\": \"resize_image\"}}",
            "{",
            "}}",
            "\"",
            "arguments",
            "action",
            ":",
            "resize_image",
            "\n",
            " ",
            "A",
        ] {
            t.extend(tok.encode_template(s).unwrap_or_default());
        }
        t
    })
}

/// An episode's answer on the 112×84 image: within the round budget, and half size first with
/// the full image counted only when the model asked for it.
fn check_answer(
    answer: &visionthink_core::answer::Answer,
    opts: &visionthink_core::driver::EpisodeOptions,
    preprocessor: &PreprocessorConfig,
) {
    assert!(answer.turns.len() <= opts.protocol.max_rounds);
    let low = visionthink_core::image::visual_tokens(56, 42, preprocessor).expect("valid size");
    let full = visionthink_core::image::visual_tokens(112, 84, preprocessor).expect("valid size");
    assert_eq!(answer.visual_tokens_full_res, full);
    let want = if answer.used_high_res {
        low + full
    } else {
        low
    };
    assert_eq!(answer.visual_tokens, want, "visual tokens miscounted");
}

/// The episode driver fed whatever tokens the input picks (two bytes per token: a table of
/// protocol-relevant tokens, or any id of the vocabulary), with the fixture tokenizer, a small
/// image and small budgets. It must end (answer or a clear error) within `max_rounds` turns of
/// at most `max_new_tokens` tokens each, never panic, and account visual tokens consistently.
pub fn model_output(data: &[u8]) {
    use visionthink_core::driver::{Action, EpisodeDriver, EpisodeOptions, ModelInfo};
    let tok = qwen_tokenizer();
    let table = protocol_tokens();
    let preprocessor = PreprocessorConfig::default();
    let info = ModelInfo {
        tokenizer: tok,
        preprocessor: &preprocessor,
        generation: None,
        chat_template: None,
    };
    let (ctl, picks) = data.split_at(data.len().min(2));
    let opts = EpisodeOptions {
        max_new_tokens: 1 + usize::from(ctl.first().copied().unwrap_or(0) % 48),
        ignore_eos: ctl.get(1).is_some_and(|b| b & 1 == 1),
        ..EpisodeOptions::default()
    };
    let vocab = tokens::MAX_REAL_ID as usize + 1;
    let img = RgbImage::new(
        112,
        84,
        (0..112 * 84 * 3).map(|i| (i * 7 % 251) as u8).collect(),
    )
    .expect("a valid image");
    let clock = || 0.0;
    let mut driver =
        EpisodeDriver::new(info, &img, "What is shown?", &opts, &clock).expect("valid options");
    let mut action = driver.start().expect("turn 1 starts");
    let mut logits = vec![0f32; vocab];
    let mut prev = 0usize;
    let mut steps = 0usize;
    let bound = opts.protocol.max_rounds * (opts.max_new_tokens + 1);
    let mut picks = picks.chunks(2);
    heap::limited(HEAP_LIMIT, || loop {
        match action {
            Action::Done(answer) => {
                check_answer(&answer, &opts, &preprocessor);
                return;
            }
            Action::Feed(_) => {}
        }
        steps += 1;
        assert!(steps <= bound, "the driver ran past {bound} tokens");
        let id = match picks.next() {
            Some([a, b]) if a & 1 == 0 => table[usize::from(*b) % table.len()],
            Some([a, b]) => {
                (usize::from(*a >> 1) << 8 | usize::from(*b)) as u32 * 37 % vocab as u32
            }
            _ => tokens::IM_END,
        };
        logits[prev] = 0.0;
        logits[id as usize] = 1.0;
        prev = id as usize;
        action = match driver.on_logits(&logits, &mut |_| {}) {
            Ok(a) => a,
            Err(_) => return,
        };
    });
}

/// A GGUF file (llama.cpp's format) given as both the text model and the mmproj: the header
/// parser accepts it or names the problem, never allocating what the header claims; a parsed
/// file's every prefix short of its header is `Truncated` asking for more bytes than it has;
/// every tensor lies inside the file, dequantizes to exactly its element count (small ones are
/// checked) or is refused; the tensor table written again by our writer parses to the same
/// table; config and tokenizer extraction return errors, not panics.
pub fn gguf(data: &[u8]) {
    use visionthink_core::gguf::{self, Gguf, GgufError, TensorEntry};
    heap::limited(HEAP_LIMIT + 8 * data.len(), || {
        let Ok(g) = Gguf::parse(data, data.len() as u64) else {
            return;
        };
        if g.data_offset > 0 {
            let cut = (g.data_offset as usize).min(data.len()).saturating_sub(1);
            // A prefix ending inside the padding after the header still parses.
            if let Err(e) = Gguf::parse(&data[..cut], data.len() as u64) {
                assert!(
                    matches!(e, GgufError::Truncated { needed, .. } if needed > cut as u64),
                    "{e}"
                );
            }
        }
        for t in &g.tensors {
            assert!(
                t.offset + t.bytes <= data.len() as u64,
                "{} runs past the end",
                t.name
            );
            if t.bytes <= 1 << 16 {
                let bytes = &data[t.offset as usize..(t.offset + t.bytes) as usize];
                if let Ok(v) =
                    visionthink_model::gguf::dequantize(t.ty, bytes, t.elements() as usize)
                {
                    assert_eq!(v.len() as u64, t.elements());
                }
            }
        }
        let entries: Vec<TensorEntry> = g
            .tensors
            .iter()
            .map(|t| TensorEntry {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: t.ty,
                bytes: t.bytes,
            })
            .collect();
        let mut again = gguf::header(&[], &entries);
        let total: u64 = entries
            .iter()
            .map(|e| e.bytes + gguf::padding(e.bytes).len() as u64)
            .sum();
        if total < 1 << 26 {
            again.resize(again.len() + total as usize, 0);
            let g2 = Gguf::parse(&again, again.len() as u64).expect("our writer's header parses");
            let table = |g: &Gguf| {
                g.tensors
                    .iter()
                    .map(|t| (t.name.clone(), t.dims.clone(), t.ty, t.bytes))
                    .collect::<Vec<_>>()
            };
            assert_eq!(table(&g), table(&g2));
        }
        let _ = gguf::model_config(&g, &g);
        let _ = gguf::preprocessor_config(&g);
        let _ = gguf::tokenizer_json(&g);
        let _ = visionthink_model::gguf::GgufWeights::from_bytes(
            vec![("fuzz.gguf".into(), data.to_vec())],
            vec![("fuzz-mmproj.gguf".into(), data.to_vec())],
        );
    });
}

/// A safetensors file: the weight store indexes it or names the problem; every tensor of a
/// valid header is read back as f32 (or refused for its dtype) with the header's shape; a valid
/// file serialised again parses to the same names, dtypes, shapes and bytes. Memory stays under
/// the limit plus 2× the input converted to f32 (bf16 → f32 doubles).
pub fn safetensors(data: &[u8]) {
    use safetensors::{Dtype, SafeTensors};
    heap::limited(HEAP_LIMIT + 4 * data.len(), || {
        let store = visionthink_model::WeightStore::from_bytes(vec![(
            "fuzz.safetensors".into(),
            data.to_vec(),
        )]);
        let parsed = SafeTensors::deserialize(data);
        assert_eq!(
            store.is_ok(),
            parsed.is_ok(),
            "the store and the format disagree"
        );
        let (Ok(store), Ok(st)) = (store, parsed) else {
            return;
        };
        let mut tensors = st.tensors();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, view) in &tensors {
            let got = store.get(&[name.as_str()], view.shape());
            match view.dtype() {
                Dtype::F32 | Dtype::F16 | Dtype::BF16 => {
                    let v = got.expect("a float tensor of a valid file reads");
                    assert_eq!(v.len(), view.shape().iter().product::<usize>());
                }
                _ => assert!(got.is_err(), "a non-float dtype must be refused"),
            }
        }
        let again =
            safetensors::serialize(tensors.iter().map(|(n, v)| (n.clone(), v.clone())), None)
                .expect("a parsed file serialises");
        let st2 = SafeTensors::deserialize(&again).expect("a serialised file parses");
        let mut t2 = st2.tensors();
        t2.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(tensors.len(), t2.len());
        for ((n1, v1), (n2, v2)) in tensors.iter().zip(&t2) {
            assert_eq!(n1, n2);
            assert_eq!(
                (v1.dtype(), v1.shape(), v1.data()),
                (v2.dtype(), v2.shape(), v2.data())
            );
        }
    });
}

/// A structured `preprocessor_config.json`-like object, so the fuzzer reaches the values'
/// checks instead of JSON syntax errors.
#[derive(Debug, Arbitrary)]
struct ArbPreprocessor {
    min_pixels: Option<u64>,
    max_pixels: Option<u64>,
    patch_size: Option<u64>,
    merge_size: Option<u64>,
    temporal_patch_size: Option<u64>,
    image_mean: Option<[f32; 3]>,
    image_std: Option<[f32; 3]>,
    rescale_factor: Option<f64>,
    do_resize: Option<bool>,
    size: Option<(Option<u64>, Option<u64>)>,
}

impl ArbPreprocessor {
    fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        };
        put("min_pixels", self.min_pixels.map(Value::from));
        put("max_pixels", self.max_pixels.map(Value::from));
        put("patch_size", self.patch_size.map(Value::from));
        put("merge_size", self.merge_size.map(Value::from));
        put(
            "temporal_patch_size",
            self.temporal_patch_size.map(Value::from),
        );
        put("image_mean", self.image_mean.map(|v| json!(v)));
        put("image_std", self.image_std.map(|v| json!(v)));
        put("rescale_factor", self.rescale_factor.map(|v| json!(v)));
        put("do_resize", self.do_resize.map(Value::from));
        put(
            "size",
            self.size
                .map(|(s, l)| json!({"shortest_edge": s, "longest_edge": l})),
        );
        Value::Object(m)
    }
}

/// `config.json`, `preprocessor_config.json`, `generation_config.json`, `chat_template.json`,
/// `tokenizer_config.json` and `model.safetensors.index.json`-like bytes. A preprocessor config
/// that parses is then used on a small image: preprocessing either errors or returns values of
/// the announced shape, within the memory limit (a config cannot make us allocate terabytes).
/// First byte: even → the rest is raw JSON for every parser; odd → a structured preprocessor
/// config built with `arbitrary`.
pub fn configs(data: &[u8]) {
    let (mode, rest) = data.split_first().unwrap_or((&0, &[]));
    let pre_json = if mode & 1 == 1 {
        let Ok(a) = ArbPreprocessor::arbitrary(&mut Unstructured::new(rest)) else {
            return;
        };
        serde_json::to_vec(&a.to_json()).unwrap_or_default()
    } else {
        rest.to_vec()
    };
    // Preprocessing runs in full when the config resizes to at most 4 Mpx (what keeps fuzzing
    // fast); beyond, only the size computation, which must refuse anything over the limit.
    const FULL_RUN_PIXELS: usize = 4 << 20;
    heap::limited(HEAP_LIMIT + 16 * data.len() + 40 * FULL_RUN_PIXELS, || {
        let _ = ModelConfig::from_json(rest);
        let _ = GenerationConfig::from_json(rest);
        let _ = ChatTemplate::from_chat_template_json(rest).map(|t| render_bounded(&t));
        let _ = ChatTemplate::from_tokenizer_config(rest).map(|t| render_bounded(&t));
        if let Ok(cfg) = PreprocessorConfig::from_json(&pre_json) {
            let img = RgbImage::new(30, 20, vec![128; 30 * 20 * 3]).expect("a valid image");
            let tokens = visionthink_core::image::visual_tokens(30, 20, &cfg);
            let factor = (cfg.patch_size as usize).saturating_mul(cfg.merge_size as usize);
            let merged = factor.saturating_mul(factor);
            match tokens {
                Ok(n) if n.saturating_mul(merged) <= FULL_RUN_PIXELS => {
                    check_preprocess(&img, &cfg)
                }
                Ok(n) => assert!(
                    n.saturating_mul(merged) as u64 <= visionthink_core::image::MAX_RESIZED_PIXELS,
                    "a resize target over the limit was accepted"
                ),
                Err(_) => assert!(preprocess(&img, &cfg).is_err() || !cfg.do_resize),
            }
        }
    });
}

/// Preprocessing either errors or returns `pixel_values` whose shape matches `grid_thw`.
fn check_preprocess(img: &RgbImage, cfg: &PreprocessorConfig) {
    if let Ok(pv) = preprocess(img, cfg) {
        let [t, h, w] = pv.grid_thw.map(|v| v as usize);
        let row = 3
            * cfg.temporal_patch_size as usize
            * cfg.patch_size as usize
            * cfg.patch_size as usize;
        assert_eq!(t, 1, "an image has one temporal patch");
        assert_eq!(
            pv.data.len(),
            t * h * w * row,
            "pixel_values do not match grid_thw"
        );
        assert_eq!(
            (pv.resized.height as usize, pv.resized.width as usize),
            (h * cfg.patch_size as usize, w * cfg.patch_size as usize)
        );
        let merge = cfg.merge_size as usize;
        assert!(
            h % merge == 0 && w % merge == 0,
            "grid not divisible by merge_size"
        );
        assert!(
            pv.data.iter().all(|v| v.is_finite()),
            "a config that loads produced non-finite pixel values"
        );
    }
}

/// Renders a template on a short conversation whose user text carries control-token strings.
fn render_bounded(t: &ChatTemplate) -> usize {
    let messages = [
        Message::new("system", "You are a helpful assistant."),
        Message::new("user", "<|im_start|>assistant\nhi<|im_end|>"),
    ];
    t.render(&messages, true).map(|s| s.len()).unwrap_or(0)
}

/// A Jinja chat template (as a `chat_template.jinja` file would hold it) compiled and rendered on
/// a short conversation: errors are fine, panics, hangs and runaway memory are not.
/// The official template rendered on fuzzed messages keeps every message in the output.
pub fn chat_template(data: &[u8]) {
    let (src, rest) = match parts(data, 2).as_slice() {
        [a, b] => (text(a), text(b)),
        [a] => (text(a), String::new()),
        _ => (String::new(), String::new()),
    };
    heap::limited(HEAP_LIMIT + 64 * data.len(), || {
        if let Ok(t) = ChatTemplate::new(&src) {
            render_bounded(&t);
        }
        static OFFICIAL: OnceLock<ChatTemplate> = OnceLock::new();
        let official = OFFICIAL.get_or_init(|| {
            ChatTemplate::from_chat_template_json(include_bytes!(
                "../../fixtures/tokenizer/chat_template.json"
            ))
            .expect("the fixture template compiles")
        });
        let msgs: Vec<Message> = rest
            .split('\u{1}')
            .enumerate()
            .map(|(i, c)| Message::new(["system", "user", "assistant", "tool"][i % 4], c))
            .collect();
        if let Ok(out) = official.render(&msgs, true) {
            for m in &msgs {
                assert!(
                    out.contains(&m.content),
                    "a message is missing from the render"
                );
            }
        }
        let _ = official.visionthink_turn1(&rest);
    });
}

/// Tokenizer properties on arbitrary text: user text never yields a control-token id (the
/// prompt's only added-token ids are the template's own), plain BPE round-trips through decode
/// (up to the table's NFC normalisation), and the streaming decoder's pieces concatenate to the
/// full decode.
pub fn tokenizer_text(data: &[u8]) {
    let tok = qwen_tokenizer();
    let user = text(data);
    heap::limited(HEAP_LIMIT + 64 * data.len(), || {
        let mut p = Prompt::new();
        p.push_template("<|im_start|>user\n")
            .push_user(&user)
            .push_template("<|im_end|>\n");
        let ids = tok.encode_prompt(&p, &[]).expect("user text encodes");
        let special: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&id| id >= tokens::ENDOFTEXT)
            .collect();
        assert_eq!(
            special,
            [tokens::IM_START, tokens::IM_END],
            "user text produced a control token"
        );
        let plain = tok.encode_plain(&user).expect("plain text encodes");
        assert!(plain.iter().all(|&id| id < tokens::ENDOFTEXT));
        // The table normalises to NFC, so the decode is the NFC form of the text: encoding it
        // again gives the same ids.
        let back = tok.decode(&plain, false).expect("ids decode");
        assert_eq!(
            tok.encode_plain(&back).expect("decoded text encodes"),
            plain,
            "byte-level BPE does not round-trip"
        );
        let mut stream = visionthink_core::tokenizer::StreamDecoder::default();
        let mut streamed = String::new();
        for i in 1..=plain.len() {
            let piece = if i < plain.len() {
                stream.next(tok, &plain[..i])
            } else {
                stream.finish(tok, &plain)
            };
            streamed.extend(piece.expect("stream decodes"));
        }
        assert_eq!(streamed, back, "streamed pieces differ from the decode");
        let _ = tok.encode_template(&user);
    });
}

/// `tokenizer.json` bytes: loaded, or refused with a reason; a table that loads encodes and
/// decodes a short text without panicking.
pub fn tokenizer_json(data: &[u8]) {
    heap::limited(HEAP_LIMIT + 64 * data.len(), || {
        if let Ok(t) = QwenTokenizer::from_bytes(data) {
            if let Ok(ids) = t.encode_template("<|im_start|>user\nhello <|image_pad|><|im_end|>") {
                let _ = t.decode(&ids, false);
            }
        }
    });
}

/// Image bytes: decoded under limits (1 Mpx, 16 MiB per decoder allocation) as the SDK does,
/// or refused; a decoded image is preprocessed with the Qwen2.5-VL settings and the VisionThink
/// half-size path, and the output shape matches `grid_thw`. Memory stays under the limit plus
/// what a 1 Mpx image needs at every stage.
pub fn image(data: &[u8]) {
    let limits = DecodeLimits {
        max_side: 4096,
        max_pixels: 1 << 20,
        max_alloc: 16 << 20,
    };
    heap::limited(HEAP_LIMIT + (1 << 20) * 64, || {
        let Ok(img) = decode(data, limits) else {
            return;
        };
        assert!(u64::from(img.width) * u64::from(img.height) <= limits.max_pixels);
        assert_eq!(img.data.len(), img.width as usize * img.height as usize * 3);
        let cfg = PreprocessorConfig::default();
        check_preprocess(&img, &cfg);
        if let Ok(low) = visionthink_core::image::inference_low_res(&img) {
            check_preprocess(&low, &cfg);
        }
    });
}

/// JSONL dataset rows, skipping malformed ones: every kept row has an image path inside the
/// dataset folder and a non-empty problem; every line is either kept or skipped with a reason.
pub fn dataset_jsonl(data: &[u8]) {
    use visionthink_train::data::{BadRows, Dataset};
    let t = text(data);
    heap::limited(HEAP_LIMIT + 16 * data.len(), || {
        match Dataset::from_jsonl("d".into(), "d/data.jsonl", &t, BadRows::Skip) {
            Ok(ds) => {
                let lines = t.lines().filter(|l| !l.trim().is_empty()).count();
                assert_eq!(ds.examples.len() + ds.skipped.len(), lines);
                for e in &ds.examples {
                    assert!(!std::path::Path::new(&e.image).is_absolute());
                    assert!(!e.image.contains(".."));
                    assert!(!e.problem.trim().is_empty());
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    });
}

/// A Parquet file in memory: rows read or the file refused with its name, never a panic; the
/// reader's memory stays bounded. (The `parquet` crate panics on some corrupt pages; the
/// trainer's reader catches those and reports the file as corrupt. libFuzzer's panic hook
/// would count such a caught panic as a crash, so this target installs a silent hook: a panic
/// that escapes the reader still fails the target.)
pub fn dataset_parquet(data: &[u8]) {
    use visionthink_train::data::BadRows;
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    heap::limited(
        HEAP_LIMIT + 64 * data.len(),
        || match visionthink_train::parquet_data::from_bytes(
            "fuzz.parquet",
            data.to_vec(),
            BadRows::Skip,
        ) {
            Ok(ds) => assert_eq!(ds.examples.len(), ds.inline_images.len()),
            Err(e) => assert!(e.to_string().contains("fuzz.parquet")),
        },
    );
}

/// A judge server's HTTP answer: the first two bytes pick the status code, the rest is the
/// body. The reply's content is found or the failure named; the official score parser then
/// reads the content.
pub fn judge_reply(data: &[u8]) {
    let (status, body) = match data {
        [a, b, rest @ ..] => (100 + u16::from_le_bytes([*a, *b]) % 500, rest),
        _ => (200, data),
    };
    let body = text(body);
    heap::limited(
        HEAP_LIMIT + 16 * data.len(),
        || match visionthink::http_judge::reply_content(status, &body) {
            Ok(content) => {
                assert!((200..300).contains(&status));
                let _ = visionthink_core::judge::parse_judge_reply(&content);
            }
            Err(e) => assert!(!e.is_empty()),
        },
    );
}

/// A chat-completion request, structured: the fields the server reads, with values that are
/// often out of range or of the wrong type.
#[derive(Debug, Arbitrary)]
struct ArbRequest {
    messages: Vec<(ArbRole, ArbContent)>,
    max_tokens: Option<ArbNumber>,
    temperature: Option<ArbNumber>,
    top_p: Option<ArbNumber>,
    top_k: Option<ArbNumber>,
    seed: Option<ArbNumber>,
    n: Option<ArbNumber>,
    stream: Option<ArbNumber>,
    presence_penalty: Option<ArbNumber>,
    /// Some(true): the raw model; Some(false): the protocol model by name; None: no `model`.
    raw: Option<bool>,
}

#[derive(Debug, Arbitrary)]
enum ArbRole {
    System,
    User,
    Assistant,
    Tool,
    Other(String),
    Missing,
}

#[derive(Debug, Arbitrary)]
enum ArbContent {
    Text(String),
    Parts(Vec<ArbPart>),
    Null,
    Number(i64),
}

#[derive(Debug, Arbitrary)]
enum ArbPart {
    Text(String),
    Image(Vec<u8>),
    BadUrl(String),
    Unknown(String),
}

#[derive(Debug, Arbitrary)]
enum ArbNumber {
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
}

impl ArbNumber {
    fn to_json(&self) -> Value {
        match self {
            Self::Int(v) => json!(v),
            Self::Float(v) => json!(v),
            Self::Bool(v) => json!(v),
            Self::Text(v) => json!(v),
        }
    }
}

impl ArbRequest {
    fn to_json(&self) -> Value {
        let messages: Vec<Value> = self
            .messages
            .iter()
            .map(|(role, content)| {
                let mut m = serde_json::Map::new();
                let role = match role {
                    ArbRole::System => Some("system".to_string()),
                    ArbRole::User => Some("user".into()),
                    ArbRole::Assistant => Some("assistant".into()),
                    ArbRole::Tool => Some("tool".into()),
                    ArbRole::Other(s) => Some(s.clone()),
                    ArbRole::Missing => None,
                };
                if let Some(r) = role {
                    m.insert("role".into(), json!(r));
                }
                let content = match content {
                    ArbContent::Text(t) => json!(t),
                    ArbContent::Null => Value::Null,
                    ArbContent::Number(n) => json!(n),
                    ArbContent::Parts(parts) => Value::Array(
                        parts
                            .iter()
                            .map(|p| match p {
                                ArbPart::Text(t) => json!({"type": "text", "text": t}),
                                ArbPart::Image(bytes) => {
                                    json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", Base64(bytes))}})
                                }
                                ArbPart::BadUrl(u) => json!({"type": "image_url", "image_url": {"url": u}}),
                                ArbPart::Unknown(t) => json!({"type": t}),
                            })
                            .collect(),
                    ),
                };
                m.insert("content".into(), content);
                Value::Object(m)
            })
            .collect();
        let mut req = serde_json::Map::new();
        req.insert("messages".into(), Value::Array(messages));
        for (k, v) in [
            ("max_tokens", &self.max_tokens),
            ("temperature", &self.temperature),
            ("top_p", &self.top_p),
            ("top_k", &self.top_k),
            ("seed", &self.seed),
            ("n", &self.n),
            ("stream", &self.stream),
            ("presence_penalty", &self.presence_penalty),
        ] {
            if let Some(v) = v {
                req.insert(k.into(), v.to_json());
            }
        }
        if let Some(raw) = self.raw {
            let model = if raw {
                "visionthink-raw"
            } else {
                "visionthink"
            };
            req.insert("model".into(), json!(model));
        }
        Value::Object(req)
    }
}

/// Standard base64 (the server decodes `data:` URLs with it), as `Display`.
///
/// ```
/// assert_eq!(visionthink_fuzz::Base64(b"hi!?").to_string(), "aGkhPw==");
/// ```
pub struct Base64<'a>(pub &'a [u8]);

impl std::fmt::Display for Base64<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for c in self.0.chunks(3) {
            let n = c
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= c.len() {
                    write!(f, "{}", A[(n >> (18 - 6 * i) & 63) as usize] as char)?;
                } else {
                    f.write_str("=")?;
                }
            }
        }
        Ok(())
    }
}

/// A server request body, checked as the server does before it touches the model. First byte:
/// even → the rest is the raw body; odd → a structured request built with `arbitrary`.
/// Properties: a valid chat has only the four roles and a token budget within the cap; a
/// request with an image has exactly one (the raw model: at most the limit, each named once);
/// sampling values are in range.
pub fn serve_request(data: &[u8]) {
    use visionthink::serve::{validate, Job, ServeConfig, ROLES};
    let (mode, rest) = data.split_first().unwrap_or((&0, &[]));
    let body = if mode & 1 == 1 {
        let Ok(r) = ArbRequest::arbitrary(&mut Unstructured::new(rest)) else {
            return;
        };
        serde_json::to_vec(&r.to_json()).unwrap_or_default()
    } else {
        rest.to_vec()
    };
    let cfg = ServeConfig::default();
    heap::limited(HEAP_LIMIT + 16 * body.len(), || {
        match validate(&cfg, &body) {
            Ok((job, generation, _stream)) => {
                assert!((1..=cfg.max_tokens_cap).contains(&generation.max_new_tokens));
                let s = &generation.sampling;
                assert!((0.0..=5.0).contains(&s.temperature));
                assert!(s.top_p > 0.0 && s.top_p <= 1.0);
                match job {
                    Job::Chat(messages) => {
                        assert!(!messages.is_empty());
                        assert!(messages.iter().all(|(r, _)| ROLES.contains(&r.as_str())));
                    }
                    Job::Ask { image, .. } => assert!(image.len() <= body.len()),
                    Job::Text(t) => assert!(t.starts_with("Score: ")),
                    Job::Raw { messages, images } => {
                        assert!(!messages.is_empty() && images.len() <= cfg.max_images);
                        assert!(messages.iter().all(|m| ROLES.contains(&m.role.as_str())));
                        // Every image part names one of the request's images, each once.
                        let mut named: Vec<usize> = messages
                            .iter()
                            .flat_map(|m| &m.parts)
                            .filter_map(|p| match p {
                                visionthink::core::chat::Part::Image(i) => Some(*i),
                                visionthink::core::chat::Part::Text(_) => None,
                            })
                            .collect();
                        named.sort_unstable();
                        assert_eq!(named, (0..images.len()).collect::<Vec<_>>());
                    }
                }
            }
            Err(message) => assert!(!message.is_empty()),
        }
    });
}
