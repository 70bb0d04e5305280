//! Tokenization with the `tokenizers` crate from `tokenizer.json` bytes.
//!
//! Prompt text from our templates is split at added tokens exactly as HF `tokenizers` does
//! (leftmost-longest match, each piece between added tokens encoded separately), so ids match
//! the reference byte for byte. Text a user supplied is merged into the surrounding plain text
//! but its added-token strings are never matched: a question containing `<|im_start|>` is
//! encoded as the characters `<`, `|`, `im`, … .

use crate::error::{Error, Result};
use crate::prompt::{Prompt, Segment};
use crate::tokens;

/// A Qwen2.5-VL tokenizer.
pub struct QwenTokenizer {
    /// Full tokenizer (added tokens recognised); used for decoding.
    full: tokenizers::Tokenizer,
    /// The same tokenizer without its added vocabulary: plain byte-level BPE.
    plain: tokenizers::Tokenizer,
    /// Added tokens, longest first (for leftmost-longest matching).
    added: Vec<(String, u32)>,
    /// The added tokens that are not special (`<tool_call>`, `</tool_call>`, `<|fim_…|>`, …),
    /// longest first: recognised in chat message text, as HF does, where control tokens are not.
    added_text: Vec<(String, u32)>,
}

impl std::fmt::Debug for QwenTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QwenTokenizer({} added tokens)", self.added.len())
    }
}

/// A piece of text to encode: plain text (BPE) or an id that is already known.
enum Piece<'a> {
    Plain(&'a str),
    Id(u32),
    /// `n` × `<|image_pad|>`.
    Pads(usize),
}

impl QwenTokenizer {
    /// Loads `tokenizer.json` bytes. The table must have the Qwen2.5-VL control tokens at their
    /// ids (SPEC §3); a Qwen3 table with `<think>` etc. as added tokens must be reduced first.
    pub fn from_bytes(json: &[u8]) -> Result<Self> {
        let mut value: serde_json::Value = serde_json::from_slice(json)
            .map_err(|e| Error::Tokenizer(format!("malformed JSON: {e}")))?;
        check_bpe_merges(&value)?;
        let full =
            tokenizers::Tokenizer::from_bytes(json).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let obj = value
            .as_object_mut()
            .ok_or_else(|| Error::Tokenizer("top level must be an object".into()))?;
        let mut added = Vec::new();
        let mut added_text = Vec::new();
        if let Some(list) = obj.get("added_tokens").and_then(|v| v.as_array()) {
            for t in list {
                let content = t.get("content").and_then(|c| c.as_str());
                let id = t
                    .get("id")
                    .and_then(|c| c.as_u64())
                    .and_then(|i| u32::try_from(i).ok());
                let special = t.get("special").and_then(|v| v.as_bool()).unwrap_or(true);
                match (content, id) {
                    (Some(c), Some(i)) if !c.is_empty() => {
                        if !special {
                            added_text.push((c.to_string(), i));
                        }
                        added.push((c.to_string(), i));
                    }
                    _ => {
                        return Err(Error::Tokenizer(format!(
                            "malformed added token entry: {t}"
                        )))
                    }
                }
            }
        }
        obj.insert("added_tokens".into(), serde_json::Value::Array(Vec::new()));
        let plain_json = serde_json::to_vec(&value).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let plain = tokenizers::Tokenizer::from_bytes(&plain_json)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        for (name, id) in [
            ("<|im_start|>", tokens::IM_START),
            ("<|im_end|>", tokens::IM_END),
            ("<|vision_start|>", tokens::VISION_START),
            ("<|vision_end|>", tokens::VISION_END),
            ("<|image_pad|>", tokens::IMAGE_PAD),
        ] {
            match added.iter().find(|(c, _)| c == name) {
                Some((_, got)) if *got == id => {}
                Some((_, got)) => {
                    return Err(Error::Tokenizer(format!(
                        "`{name}` has id {got}, expected {id}: not a Qwen2.5-VL table"
                    )))
                }
                None => {
                    return Err(Error::Tokenizer(format!(
                        "missing added token `{name}`: not a Qwen2.5-VL table"
                    )))
                }
            }
        }
        added.sort_by_key(|a| std::cmp::Reverse(a.0.len()));
        added_text.sort_by_key(|a| std::cmp::Reverse(a.0.len()));
        Ok(Self {
            full,
            plain,
            added,
            added_text,
        })
    }

    /// Finds the leftmost-longest token of `table` in `text`: `(start, end, id)`.
    fn find_added(table: &[(String, u32)], text: &str) -> Option<(usize, usize, u32)> {
        let bytes = text.as_bytes();
        for start in 0..bytes.len() {
            if bytes[start] != b'<' && !table.iter().any(|(c, _)| c.as_bytes()[0] == bytes[start]) {
                continue;
            }
            // The table is sorted longest first, so the first hit is the longest at this start.
            for (c, id) in table {
                if bytes[start..].starts_with(c.as_bytes()) {
                    return Some((start, start + c.len(), *id));
                }
            }
        }
        None
    }

    fn split_template<'a>(&self, text: &'a str, out: &mut Vec<Piece<'a>>) {
        Self::split_at(&self.added, text, out);
    }

    fn split_at<'a>(table: &[(String, u32)], mut text: &'a str, out: &mut Vec<Piece<'a>>) {
        while let Some((s, e, id)) = Self::find_added(table, text) {
            if s > 0 {
                out.push(Piece::Plain(&text[..s]));
            }
            out.push(Piece::Id(id));
            text = &text[e..];
        }
        if !text.is_empty() {
            out.push(Piece::Plain(text));
        }
    }

    /// Encodes plain text with byte-level BPE only (no added tokens).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let enc = self
            .plain
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    fn encode_pieces(&self, pieces: &[Piece<'_>]) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut run = String::new();
        for p in pieces {
            match p {
                Piece::Plain(t) => run.push_str(t),
                Piece::Id(id) => {
                    ids.extend(self.encode_plain(&run)?);
                    run.clear();
                    ids.push(*id);
                }
                Piece::Pads(n) => {
                    ids.extend(self.encode_plain(&run)?);
                    run.clear();
                    ids.extend(std::iter::repeat_n(tokens::IMAGE_PAD, *n));
                }
            }
        }
        ids.extend(self.encode_plain(&run)?);
        Ok(ids)
    }

    /// Encodes trusted text as HF `tokenizer.encode(text, add_special_tokens=False)` does:
    /// added tokens (control tokens, `<tool_call>`, …) are recognised.
    ///
    /// Use only for text from templates; user text goes through [`Self::encode_prompt`].
    pub fn encode_template(&self, text: &str) -> Result<Vec<u32>> {
        let mut pieces = Vec::new();
        self.split_template(text, &mut pieces);
        self.encode_pieces(&pieces)
    }

    /// Encodes a [`Prompt`]: template text with added tokens recognised, user text as plain text,
    /// chat message text with only the non-special added tokens recognised, each image as `<|vision_start|>`, `image_tokens[i]` × `<|image_pad|>`, `<|vision_end|>`.
    pub fn encode_prompt(&self, prompt: &Prompt, image_tokens: &[usize]) -> Result<Vec<u32>> {
        if prompt.num_images() != image_tokens.len() {
            return Err(Error::ImageCountMismatch {
                placeholders: prompt.num_images(),
                images: image_tokens.len(),
            });
        }
        let mut pieces = Vec::new();
        let mut images = image_tokens.iter();
        for seg in prompt.segments() {
            match seg {
                Segment::Template(t) => self.split_template(t, &mut pieces),
                Segment::User(t) => pieces.push(Piece::Plain(t)),
                Segment::Message(t) => Self::split_at(&self.added_text, t, &mut pieces),
                Segment::Image => {
                    pieces.push(Piece::Id(tokens::VISION_START));
                    pieces.push(Piece::Pads(images.next().copied().unwrap_or(0)));
                    pieces.push(Piece::Id(tokens::VISION_END));
                }
            }
        }
        self.encode_pieces(&pieces)
    }

    /// Encodes a fully rendered prompt whose images appear as `<|image_pad|>` (one per image,
    /// normally inside `<|vision_start|>…<|vision_end|>`), expanding the i-th pad to
    /// `image_tokens[i]` pads — the convention of HF's Qwen2.5-VL processor.
    pub fn encode_rendered(&self, text: &str, image_tokens: &[usize]) -> Result<Vec<u32>> {
        let ids = self.encode_template(text)?;
        let found = ids.iter().filter(|&&t| t == tokens::IMAGE_PAD).count();
        if found != image_tokens.len() {
            return Err(Error::ImageCountMismatch {
                placeholders: found,
                images: image_tokens.len(),
            });
        }
        let mut out = Vec::with_capacity(ids.len() + image_tokens.iter().sum::<usize>());
        let mut counts = image_tokens.iter();
        for id in ids {
            if id == tokens::IMAGE_PAD {
                let n = counts.next().copied().unwrap_or(0);
                out.extend(std::iter::repeat_n(tokens::IMAGE_PAD, n));
            } else {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Decodes ids; `skip_special` drops special tokens (`<tool_call>` is not special and stays).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.full
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The id of a token string in the full table, if any.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.full.token_to_id(token)
    }
}

/// Refuses BPE merges that the `tokenizers` crate (0.23) cannot build safely: with a
/// `continuing_subword_prefix`, a merge's second part shorter than the prefix underflows its
/// length arithmetic (a panic), and one that does not start with the prefix is sliced inside
/// it. Found by fuzzing `tokenizer.json`; Qwen tables have no prefix.
fn check_bpe_merges(value: &serde_json::Value) -> Result<()> {
    let model = &value["model"];
    let prefix = model["continuing_subword_prefix"].as_str().unwrap_or("");
    // `type` may be absent: the crate then infers the model from its fields.
    if !matches!(model["type"].as_str(), None | Some("BPE")) || prefix.is_empty() {
        return Ok(());
    }
    for (i, m) in model["merges"].as_array().into_iter().flatten().enumerate() {
        let second = match m {
            serde_json::Value::String(s) => s.split_once(' ').map(|(_, b)| b),
            serde_json::Value::Array(a) if a.len() == 2 => a[1].as_str(),
            _ => None,
        };
        if let Some(b) = second {
            if !b.starts_with(prefix) {
                return Err(Error::Tokenizer(format!(
                    "merge {i}: {b:?} does not start with the continuing_subword_prefix {prefix:?}"
                )));
            }
        }
    }
    Ok(())
}

/// Incremental detokenisation for streaming: after each new id, [`StreamDecoder::next`] returns
/// the text it adds, decoding only the ids since the last emitted piece (O(1) per token), and
/// holds back pieces that end inside a multi-byte character.
///
/// ```
/// # use visionthink_core::tokenizer::{QwenTokenizer, StreamDecoder};
/// # fn demo(tok: &QwenTokenizer, ids: &[u32]) -> visionthink_core::Result<String> {
/// let mut stream = StreamDecoder::default();
/// let mut text = String::new();
/// for i in 1..=ids.len() {
///     let piece = if i < ids.len() { stream.next(tok, &ids[..i])? } else { stream.finish(tok, ids)? };
///     text.extend(piece);
/// }
/// # Ok(text) }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamDecoder {
    prefix: usize,
    read: usize,
}

impl StreamDecoder {
    /// `ids` is everything generated so far (the previous call's ids plus new ones).
    pub fn next(&mut self, tok: &QwenTokenizer, ids: &[u32]) -> Result<Option<String>> {
        let shown = tok.decode(&ids[self.prefix..self.read], true)?;
        let text = tok.decode(&ids[self.prefix..], true)?;
        if text.ends_with('\u{FFFD}')
            || text.len() < shown.len()
            || !text.is_char_boundary(shown.len())
        {
            return Ok(None);
        }
        self.prefix = self.read;
        self.read = ids.len();
        Ok(Some(text[shown.len()..].to_string()))
    }

    /// Like [`Self::next`] for the last ids of a stream: returns whatever is still held back,
    /// so the pieces add up to the full decode even when it ends in `U+FFFD` (an incomplete or
    /// invalid byte sequence stays the replacement character, as in the full decode).
    pub fn finish(&mut self, tok: &QwenTokenizer, ids: &[u32]) -> Result<Option<String>> {
        let shown = tok.decode(&ids[self.prefix..self.read], true)?;
        let text = tok.decode(&ids[self.prefix..], true)?;
        self.prefix = ids.len();
        self.read = ids.len();
        if text.len() <= shown.len() || !text.is_char_boundary(shown.len()) {
            return Ok(None);
        }
        Ok(Some(text[shown.len()..].to_string()))
    }
}
