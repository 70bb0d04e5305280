//! GGUF, llama.cpp's model format, read from bytes (sans-I/O): the header (metadata and tensor
//! table) of a text GGUF and of its `mmproj` GGUF, and from their metadata the model config, the
//! image-processor settings, the tokenizer and the chat template — so a model folder of two
//! `.gguf` files needs nothing else.
//!
//! The parser trusts nothing in the header: every count and length is checked against the bytes
//! that are actually there before anything is allocated for it, every tensor's extent against
//! the file's length, so a corrupt or hostile file gets a [`GgufError`] naming the field, never a
//! panic or an allocation sized by the header. A header that runs past the bytes given is
//! [`GgufError::Truncated`] with the number of bytes needed, so a streaming reader (the browser)
//! can fetch more and parse again.
//!
//! ```
//! use visionthink_core::gguf::{Gguf, GgufError};
//! let err = Gguf::parse(b"GGUF\x03\x00\x00\x00", 8).unwrap_err();
//! assert!(matches!(err, GgufError::Truncated { .. }));
//! let err = Gguf::parse(b"GGML\x03\x00\x00\x00\x00\x00\x00\x00", 12).unwrap_err();
//! assert!(err.to_string().contains("magic"));
//! ```

use crate::config::{ModelConfig, PreprocessorConfig, TextConfig, VisionConfig};
use std::collections::BTreeMap;

/// Why a GGUF header could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The header continues past the bytes given; `needed` bytes (at least) hold it.
    #[error("GGUF header truncated in {field}: at least {needed} bytes are needed")]
    Truncated {
        /// What was being read.
        field: String,
        /// Bytes needed from the start of the file.
        needed: u64,
    },
    /// A field holds a value the format (or this reader) does not allow.
    #[error("invalid GGUF {field}: {reason}")]
    Invalid {
        /// Which field (`magic`, `tensor_count`, `tensor blk.0.attn_q.weight offset`, a key…).
        field: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> GgufError {
    GgufError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A ggml tensor type this project reads (others are refused by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 32 values: f16 scale, 4-bit values.
    Q4_0,
    /// 32 values: f16 scale and min, 4-bit values.
    Q4_1,
    /// 32 values: f16 scale, 5-bit values.
    Q5_0,
    /// 32 values: f16 scale and min, 5-bit values.
    Q5_1,
    /// 32 values: f16 scale, 8-bit values.
    Q8_0,
    /// k-quant super-blocks of 256 values, 2 bits.
    Q2_K,
    /// 3 bits.
    Q3_K,
    /// 4 bits (most of a `Q4_K_M` file).
    Q4_K,
    /// 5 bits.
    Q5_K,
    /// 6 bits (the rest of a `Q4_K_M` file).
    Q6_K,
}

impl GgmlType {
    /// Every type, in id order.
    pub const ALL: [GgmlType; 13] = [
        Self::F32,
        Self::F16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
        Self::BF16,
    ];

    /// ggml's id of the type.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q2_K => 10,
            Self::Q3_K => 11,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::BF16 => 30,
        }
    }

    /// The type with ggml id `id`.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    /// llama.cpp's name (`Q4_K`, `F16`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2_K => "Q2_K",
            Self::Q3_K => "Q3_K",
            Self::Q4_K => "Q4_K",
            Self::Q5_K => "Q5_K",
            Self::Q6_K => "Q6_K",
        }
    }

    /// Values per block.
    pub fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            _ => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q2_K => 84,
            Self::Q3_K => 110,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
        }
    }

    /// Whether values are stored in blocks with scales (not plain floats).
    pub fn is_quantized(self) -> bool {
        !matches!(self, Self::F32 | Self::F16 | Self::BF16)
    }

    /// Bytes of a tensor of `elements` values whose rows are `row` values long, or `None` when a
    /// row is not a whole number of blocks (or the size overflows).
    pub fn bytes_for(self, elements: u64, row: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if row == 0 || row % bs != 0 {
            return None;
        }
        (elements / bs).checked_mul(self.block_bytes() as u64)
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Unsigned integer (u8, u16, u32, u64).
    U(u64),
    /// Signed integer (i8, i16, i32, i64).
    I(i64),
    /// Float (f32, f64).
    F(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// Array of values of one type.
    Array(Vec<Value>),
}

impl Value {
    /// As an unsigned integer (non-negative signed values too).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Self::U(v) => Some(*v),
            Self::I(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }
    /// As a float (integers too).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::F(v) => Some(*v),
            Self::U(v) => Some(*v as f64),
            Self::I(v) => Some(*v as f64),
            _ => None,
        }
    }
    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// llama.cpp's tensor name (`blk.0.attn_q.weight`, `v.patch_embd.weight`, …).
    pub name: String,
    /// Dimensions in ggml order (innermost first: a `[out, in]` matrix is `[in, out]`).
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
    /// Offset of the data from the file's start (already past the header and aligned).
    pub offset: u64,
    /// Bytes of data.
    pub bytes: u64,
}

impl TensorInfo {
    /// Dimensions outermost first, as PyTorch writes them (`[out, in]`).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
    /// Number of values.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF header.
#[derive(Debug, Clone)]
pub struct Gguf {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// The tensor table in file order.
    pub tensors: Vec<TensorInfo>,
    /// Where tensor data starts.
    pub data_offset: u64,
    /// Data alignment (`general.alignment`, 32 by default).
    pub alignment: u64,
}

/// Cursor over the header bytes.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, field: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        let end = (self.pos as u64).saturating_add(n);
        if end > self.b.len() as u64 {
            return Err(GgufError::Truncated {
                field: field(),
                needed: end,
            });
        }
        let s = &self.b[self.pos..end as usize];
        self.pos = end as usize;
        Ok(s)
    }
    fn u32(&mut self, field: &dyn Fn() -> String) -> Result<u32, GgufError> {
        let s = self.take(4, field)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self, field: &dyn Fn() -> String) -> Result<u64, GgufError> {
        let s = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn string(&mut self, field: &dyn Fn() -> String) -> Result<String, GgufError> {
        let n = self.u64(field)?;
        let s = self.take(n, field)?;
        String::from_utf8(s.to_vec()).map_err(|_| invalid(field(), "string is not UTF-8"))
    }
    /// Remaining bytes: no count may promise more entries than these can hold.
    fn left(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }
    fn value(
        &mut self,
        ty: u32,
        field: &dyn Fn() -> String,
        depth: u32,
    ) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U(self.take(1, field)?[0] as u64),
            1 => Value::I(self.take(1, field)?[0] as i8 as i64),
            2 => {
                let s = self.take(2, field)?;
                Value::U(u16::from_le_bytes([s[0], s[1]]) as u64)
            }
            3 => {
                let s = self.take(2, field)?;
                Value::I(i16::from_le_bytes([s[0], s[1]]) as i64)
            }
            4 => Value::U(self.u32(field)? as u64),
            5 => Value::I(self.u32(field)? as i32 as i64),
            6 => {
                // The shortest decimal that reads back as this f32, as a double: a config's
                // `1e-6` stored as f32 reads back as 1e-6, not 9.99999997e-7.
                let f = f32::from_bits(self.u32(field)?);
                Value::F(f.to_string().parse().unwrap_or(f as f64))
            }
            7 => match self.take(1, field)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(invalid(field(), format!("bool byte {b}"))),
            },
            8 => Value::Str(self.string(field)?),
            9 => {
                if depth > 0 {
                    return Err(invalid(field(), "nested arrays are not supported"));
                }
                let ety = self.u32(field)?;
                let n = self.u64(field)?;
                let min = match ety {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => return Err(invalid(field(), "nested arrays are not supported")),
                    t => return Err(invalid(field(), format!("unknown array element type {t}"))),
                };
                if n.saturating_mul(min) > self.left() {
                    return Err(GgufError::Truncated {
                        field: field(),
                        needed: (self.pos as u64).saturating_add(n.saturating_mul(min)),
                    });
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(ety, field, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U(self.u64(field)?),
            11 => Value::I(self.u64(field)? as i64),
            12 => Value::F(f64::from_bits(self.u64(field)?)),
            t => return Err(invalid(field(), format!("unknown value type {t}"))),
        })
    }
}

/// A tensor-table entry as read, before its extent is checked.
struct RawEntry {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    offset: u64,
}

impl Reader<'_> {
    /// `n` key-value pairs.
    fn metadata(&mut self, n: u64) -> Result<BTreeMap<String, Value>, GgufError> {
        let mut metadata = BTreeMap::new();
        for i in 0..n {
            let key = self.string(&|| format!("metadata key {i}"))?;
            let field = || format!("metadata `{key}`");
            let ty = self.u32(&field)?;
            let v = self.value(ty, &field, 0)?;
            metadata.insert(key, v);
        }
        Ok(metadata)
    }

    /// Tensor-table entry `i`: name, dims, type, offset.
    fn tensor_entry(&mut self, i: u64) -> Result<RawEntry, GgufError> {
        let name = self.string(&|| format!("tensor {i} name"))?;
        let field = |what: &str| format!("tensor {name} {what}");
        let nd = self.u32(&|| field("n_dims"))?;
        if nd == 0 || nd > MAX_DIMS {
            return Err(invalid(field("n_dims"), format!("{nd} (1 to {MAX_DIMS})")));
        }
        let mut dims = Vec::with_capacity(nd as usize);
        for _ in 0..nd {
            dims.push(self.u64(&|| field("dims"))?);
        }
        let id = self.u32(&|| field("type"))?;
        let ty = GgmlType::from_id(id).ok_or_else(|| {
            invalid(field("type"), format!("ggml type {id} is not supported (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K…Q6_K are)"))
        })?;
        let offset = self.u64(&|| field("offset"))?;
        Ok(RawEntry {
            name,
            dims,
            ty,
            offset,
        })
    }
}

impl RawEntry {
    /// The entry with its size, checked to be whole blocks, aligned and inside the file.
    fn place(
        self,
        data_offset: u64,
        alignment: u64,
        file_len: u64,
    ) -> Result<TensorInfo, GgufError> {
        let RawEntry {
            name,
            dims,
            ty,
            offset,
        } = self;
        let field = |what: &str| format!("tensor {name} {what}");
        let elements = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&e| e > 0)
            .ok_or_else(|| invalid(field("dims"), format!("{dims:?} is empty or overflows")))?;
        let bytes = ty.bytes_for(elements, dims[0]).ok_or_else(|| {
            invalid(
                field("dims"),
                format!(
                    "rows of {} values are not whole {} blocks of {}",
                    dims[0],
                    ty.name(),
                    ty.block_size()
                ),
            )
        })?;
        if offset % alignment != 0 {
            return Err(invalid(
                field("offset"),
                format!("{offset} is not a multiple of the alignment {alignment}"),
            ));
        }
        let end = data_offset
            .checked_add(offset)
            .and_then(|s| s.checked_add(bytes));
        if end.is_none_or(|e| e > file_len) {
            return Err(invalid(
                field("offset"),
                format!("{bytes} bytes at data offset {offset} run past the end of the file ({file_len} bytes)"),
            ));
        }
        Ok(TensorInfo {
            name,
            dims,
            ty,
            offset: data_offset + offset,
            bytes,
        })
    }
}

/// The most dimensions a ggml tensor has.
const MAX_DIMS: u32 = 4;

impl Gguf {
    /// Parses the header from `bytes` (the file, or a prefix of it) of a file of `file_len`
    /// bytes, checking every tensor's extent against `file_len`.
    pub fn parse(bytes: &[u8], file_len: u64) -> Result<Self, GgufError> {
        let mut r = Reader { b: bytes, pos: 0 };
        let f = |s: &'static str| move || s.to_string();
        let magic = r.take(4, &f("magic"))?;
        if magic != b"GGUF" {
            return Err(invalid("magic", format!("{magic:?} is not \"GGUF\"")));
        }
        let version = r.u32(&f("version"))?;
        if !(2..=3).contains(&version) {
            return Err(invalid("version", format!("{version} (2 and 3 are read)")));
        }
        let n_tensors = r.u64(&f("tensor_count"))?;
        let n_kv = r.u64(&f("metadata_kv_count"))?;
        // A tensor entry takes at least 24 bytes, a key-value pair at least 12: no count may
        // promise more than the file can hold.
        if n_tensors.saturating_mul(24) > file_len {
            return Err(invalid(
                "tensor_count",
                format!("{n_tensors} tensors cannot fit in a file of {file_len} bytes"),
            ));
        }
        if n_kv.saturating_mul(12) > file_len {
            return Err(invalid(
                "metadata_kv_count",
                format!("{n_kv} entries cannot fit in a file of {file_len} bytes"),
            ));
        }
        let metadata = r.metadata(n_kv)?;
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(invalid(
                        "general.alignment",
                        format!("{v:?} is not a power of two"),
                    ))
                }
            },
        };
        let entries = (0..n_tensors)
            .map(|i| r.tensor_entry(i))
            .collect::<Result<Vec<_>, _>>()?;
        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
        let tensors = entries
            .into_iter()
            .map(|e| e.place(data_offset, alignment, file_len))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            version,
            metadata,
            tensors,
            data_offset,
            alignment,
        })
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn need(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key)
            .ok_or_else(|| invalid(format!("metadata `{key}`"), "missing"))
    }

    /// A required unsigned integer.
    pub fn u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.need(key)?;
        v.as_u64().ok_or_else(|| {
            invalid(
                format!("metadata `{key}`"),
                format!("{v:?} is not an unsigned integer"),
            )
        })
    }

    fn usize(&self, key: &str) -> Result<usize, GgufError> {
        usize::try_from(self.u64(key)?)
            .map_err(|_| invalid(format!("metadata `{key}`"), "too large"))
    }

    /// A required float.
    pub fn f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.need(key)?;
        v.as_f64().ok_or_else(|| {
            invalid(
                format!("metadata `{key}`"),
                format!("{v:?} is not a number"),
            )
        })
    }

    /// A required string.
    pub fn str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.need(key)?;
        v.as_str()
            .ok_or_else(|| invalid(format!("metadata `{key}`"), "not a string"))
    }

    /// A required array.
    pub fn array(&self, key: &str) -> Result<&[Value], GgufError> {
        match self.need(key)? {
            Value::Array(v) => Ok(v),
            _ => Err(invalid(format!("metadata `{key}`"), "not an array")),
        }
    }

    /// `(split.no, split.count)` of a `gguf-split` part; `(0, 1)` for a whole file.
    pub fn split(&self) -> Result<(u64, u64), GgufError> {
        match (self.get("split.no"), self.get("split.count")) {
            (None, None) => Ok((0, 1)),
            _ => Ok((self.u64("split.no")?, self.u64("split.count")?)),
        }
    }
}

/// The text model's architecture name in llama.cpp's files.
pub const TEXT_ARCH: &str = "qwen2vl";
/// The vision projector type of a Qwen2.5-VL `mmproj` file.
pub const PROJECTOR: &str = "qwen2.5vl_merger";

/// The model config of a Qwen2.5-VL text GGUF plus its `mmproj` GGUF (llama.cpp's keys). Token
/// ids are Qwen2.5-VL's; the window is 112 px and the merge 2×2, as llama.cpp assumes. The
/// vocabulary is `token_embd.weight`'s row count; the head is tied when `output.weight` is absent.
pub fn model_config(text: &Gguf, mmproj: &Gguf) -> Result<ModelConfig, GgufError> {
    let arch = text.str("general.architecture")?;
    if arch != TEXT_ARCH {
        return Err(invalid(
            "metadata `general.architecture`",
            format!("{arch:?}: a Qwen2.5-VL text model is {TEXT_ARCH:?}"),
        ));
    }
    let k = |s: &str| format!("{TEXT_ARCH}.{s}");
    let embd = text
        .tensor("token_embd.weight")
        .ok_or_else(|| invalid("tensor token_embd.weight", "missing"))?;
    let hidden = text.usize(&k("embedding_length"))?;
    if embd.dims.len() != 2 || embd.dims[0] as usize != hidden {
        return Err(invalid(
            "tensor token_embd.weight dims",
            format!("{:?} where the hidden size is {hidden}", embd.dims),
        ));
    }
    let sections: Vec<usize> = text
        .array(&k("rope.dimension_sections"))?
        .iter()
        .map(|v| v.as_u64().map(|x| x as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            invalid(
                format!("metadata `{}`", k("rope.dimension_sections")),
                "not integers",
            )
        })?;
    let mrope_section: Vec<usize> = sections.iter().copied().take(3).collect();
    let text_cfg = TextConfig {
        vocab_size: embd.dims[1] as usize,
        hidden_size: hidden,
        intermediate_size: text.usize(&k("feed_forward_length"))?,
        num_hidden_layers: text.usize(&k("block_count"))?,
        num_attention_heads: text.usize(&k("attention.head_count"))?,
        num_key_value_heads: text.usize(&k("attention.head_count_kv"))?,
        rms_norm_eps: text.f64(&k("attention.layer_norm_rms_epsilon"))?,
        rope_theta: text.f64(&k("rope.freq_base"))?,
        mrope_section,
        max_position_embeddings: text.usize(&k("context_length"))?,
        tie_word_embeddings: text.tensor("output.weight").is_none(),
        hidden_act: "silu".into(),
    };
    let heads = text_cfg.num_attention_heads;
    let kv = text_cfg.num_key_value_heads;
    if heads == 0 || kv == 0 || hidden % heads != 0 || heads % kv != 0 {
        return Err(invalid(
            format!("metadata `{}`", k("attention.head_count")),
            format!("{heads} heads / {kv} KV heads do not divide hidden size {hidden}"),
        ));
    }
    let half = hidden / heads / 2;
    if text_cfg.mrope_section.len() != 3 || text_cfg.mrope_section.iter().sum::<usize>() != half {
        return Err(invalid(
            format!("metadata `{}`", k("rope.dimension_sections")),
            format!("{sections:?}: the first three must sum to head_dim / 2 = {half}"),
        ));
    }
    let vision = vision_config(mmproj, hidden)?;
    Ok(ModelConfig {
        text: text_cfg,
        vision,
        image_token_id: crate::tokens::IMAGE_PAD,
        video_token_id: crate::tokens::VIDEO_PAD,
        vision_start_token_id: crate::tokens::VISION_START,
        vision_end_token_id: crate::tokens::VISION_END,
    })
}

fn vision_config(mm: &Gguf, text_hidden: usize) -> Result<VisionConfig, GgufError> {
    let arch = mm.str("general.architecture")?;
    if arch != "clip" {
        return Err(invalid(
            "metadata `general.architecture`",
            format!("{arch:?}: an mmproj file is \"clip\" (was the text GGUF given as --mmproj?)"),
        ));
    }
    let proj = mm.str("clip.projector_type")?;
    if proj != PROJECTOR {
        return Err(invalid(
            "metadata `clip.projector_type`",
            format!("{proj:?}: Qwen2.5-VL's is {PROJECTOR:?}"),
        ));
    }
    let depth = mm.usize("clip.vision.block_count")?;
    let out = mm.usize("clip.vision.projection_dim")?;
    if out != text_hidden {
        return Err(invalid(
            "metadata `clip.vision.projection_dim`",
            format!("the mmproj projects to {out} values but the text model's hidden size is {text_hidden}: they are not one model"),
        ));
    }
    let fullatt_block_indexes = match mm.get("clip.vision.wa_layer_indexes") {
        Some(Value::Array(v)) => v
            .iter()
            .map(|x| x.as_u64().map(|i| i as usize))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid("metadata `clip.vision.wa_layer_indexes`", "not integers"))?,
        Some(_) => {
            return Err(invalid(
                "metadata `clip.vision.wa_layer_indexes`",
                "not an array",
            ))
        }
        None => {
            // llama.cpp: with a pattern n, blocks n-1, 2n-1, … attend to the whole image.
            let n = mm.usize("clip.vision.n_wa_pattern")?;
            if n == 0 {
                return Err(invalid("metadata `clip.vision.n_wa_pattern`", "0"));
            }
            (0..depth).filter(|i| (i + 1) % n == 0).collect()
        }
    };
    let patch = mm
        .tensor("v.patch_embd.weight")
        .ok_or_else(|| invalid("tensor v.patch_embd.weight", "missing"))?;
    let in_channels = patch.dims.get(2).copied().unwrap_or(3) as usize;
    Ok(VisionConfig {
        depth,
        hidden_size: mm.usize("clip.vision.embedding_length")?,
        intermediate_size: mm.usize("clip.vision.feed_forward_length")?,
        num_heads: mm.usize("clip.vision.attention.head_count")?,
        in_channels,
        patch_size: mm.usize("clip.vision.patch_size")?,
        spatial_merge_size: 2,
        temporal_patch_size: 2,
        window_size: 112,
        fullatt_block_indexes,
        out_hidden_size: out,
        tokens_per_second: 2.0,
        hidden_act: "silu".into(),
    })
}

/// Image-processor settings: Qwen2.5-VL's defaults with the mmproj's mean, std and patch size.
pub fn preprocessor_config(mm: &Gguf) -> Result<PreprocessorConfig, GgufError> {
    let mut p = PreprocessorConfig::default();
    let three = |key: &str| -> Result<Option<[f32; 3]>, GgufError> {
        match mm.get(key) {
            None => Ok(None),
            Some(Value::Array(v)) if v.len() == 3 => {
                let f: Vec<f32> = v
                    .iter()
                    .filter_map(|x| x.as_f64().map(|f| f as f32))
                    .collect();
                <[f32; 3]>::try_from(f)
                    .map(Some)
                    .map_err(|_| invalid(format!("metadata `{key}`"), "not 3 numbers"))
            }
            Some(_) => Err(invalid(format!("metadata `{key}`"), "not 3 numbers")),
        }
    };
    if let Some(m) = three("clip.vision.image_mean")? {
        p.image_mean = m;
    }
    if let Some(s) = three("clip.vision.image_std")? {
        p.image_std = s;
    }
    p.patch_size = mm.u64("clip.vision.patch_size")? as u32;
    Ok(p)
}

/// The pre-tokenizer split of Qwen2's `tokenizer.json` (llama.cpp's `tokenizer.ggml.pre = "qwen2"`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A `tokenizer.json` equivalent to the GGUF's tokenizer (`tokenizer.ggml.*`): the byte-level
/// BPE vocabulary (normal tokens), its merges, and the added tokens — control tokens (type 3) as
/// special, user-defined ones (type 4, `<tool_call>`) as not. Unused padding entries are left
/// out, as HF's file has them not.
pub fn tokenizer_json(text: &Gguf) -> Result<Vec<u8>, GgufError> {
    let model = text.str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(invalid(
            "metadata `tokenizer.ggml.model`",
            format!("{model:?}: Qwen2.5-VL's is byte-level BPE (\"gpt2\")"),
        ));
    }
    let pre = text.str("tokenizer.ggml.pre")?;
    if pre != "qwen2" {
        return Err(invalid(
            "metadata `tokenizer.ggml.pre`",
            format!("{pre:?}: Qwen2.5-VL's is \"qwen2\""),
        ));
    }
    let tokens = text.array("tokenizer.ggml.tokens")?;
    let types = text.array("tokenizer.ggml.token_type")?;
    if types.len() != tokens.len() {
        return Err(invalid(
            "metadata `tokenizer.ggml.token_type`",
            format!("{} types for {} tokens", types.len(), tokens.len()),
        ));
    }
    let merges = text.array("tokenizer.ggml.merges")?;
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, (t, ty)) in tokens.iter().zip(types).enumerate() {
        let t = t.as_str().ok_or_else(|| {
            invalid(
                "metadata `tokenizer.ggml.tokens`",
                format!("entry {id} is not a string"),
            )
        })?;
        match ty.as_u64() {
            Some(1) => {
                vocab.insert(t.to_string(), id.into());
            }
            Some(ty @ (3 | 4)) => added.push(serde_json::json!({
                "id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": ty == 3,
            })),
            Some(5 | 2 | 6) => {}
            _ => {
                return Err(invalid(
                    "metadata `tokenizer.ggml.token_type`",
                    format!("entry {id}: {ty:?}"),
                ))
            }
        }
    }
    let merges: Vec<serde_json::Value> = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let s = m.as_str().ok_or_else(|| {
                invalid(
                    "metadata `tokenizer.ggml.merges`",
                    format!("entry {i} is not a string"),
                )
            })?;
            let (a, b) = s.split_once(' ').ok_or_else(|| {
                invalid(
                    "metadata `tokenizer.ggml.merges`",
                    format!("entry {i} {s:?} is not two tokens"),
                )
            })?;
            Ok(serde_json::json!([a, b]))
        })
        .collect::<Result<_, GgufError>>()?;
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
    let doc = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
            byte_level.clone(),
        ]},
        "post_processor": byte_level.clone(),
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    });
    serde_json::to_vec(&doc).map_err(|e| invalid("tokenizer", e.to_string()))
}

/// A metadata value to write, with the width llama.cpp reads it at.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// u32.
    U32(u32),
    /// i32.
    I32(i32),
    /// u16 (`split.no`, `split.count`).
    U16(u16),
    /// f32.
    F32(f32),
    /// bool.
    Bool(bool),
    /// string.
    Str(String),
    /// array of i32.
    I32s(Vec<i32>),
    /// array of f32.
    F32s(Vec<f32>),
    /// array of strings.
    Strs(Vec<String>),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl MetaValue {
    fn write(&self, out: &mut Vec<u8>) {
        let (ty, body): (u32, Vec<u8>) = match self {
            Self::U32(v) => (4, v.to_le_bytes().to_vec()),
            Self::I32(v) => (5, v.to_le_bytes().to_vec()),
            Self::U16(v) => (2, v.to_le_bytes().to_vec()),
            Self::F32(v) => (6, v.to_le_bytes().to_vec()),
            Self::Bool(v) => (7, vec![*v as u8]),
            Self::Str(s) => {
                let mut b = Vec::new();
                put_str(&mut b, s);
                (8, b)
            }
            Self::I32s(v) => (9, array(5, v.len(), v.iter().flat_map(|x| x.to_le_bytes()))),
            Self::F32s(v) => (9, array(6, v.len(), v.iter().flat_map(|x| x.to_le_bytes()))),
            Self::Strs(v) => {
                let mut b = Vec::new();
                for s in v {
                    put_str(&mut b, s);
                }
                (9, array(8, v.len(), b))
            }
        };
        out.extend(ty.to_le_bytes());
        out.extend(body);
    }
}

fn array(ety: u32, n: usize, body: impl IntoIterator<Item = u8>) -> Vec<u8> {
    let mut b = ety.to_le_bytes().to_vec();
    b.extend((n as u64).to_le_bytes());
    b.extend(body);
    b
}

/// A tensor to write: name, ggml dims (innermost first), type, data length in bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    /// llama.cpp's name.
    pub name: String,
    /// Dimensions, innermost first.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
    /// Bytes of data.
    pub bytes: u64,
}

/// The alignment this writer uses (llama.cpp's default).
pub const ALIGNMENT: u64 = 32;

/// A GGUF v3 header for `metadata` and `tensors` (data laid out in order, each aligned to
/// [`ALIGNMENT`]), padded so the data starts right after it. The caller writes each tensor's
/// bytes followed by [`padding`] of its length.
///
/// ```
/// use visionthink_core::gguf::{header, padding, Gguf, GgmlType, MetaValue, TensorEntry};
/// let t = TensorEntry { name: "w".into(), dims: vec![2], ty: GgmlType::F32, bytes: 8 };
/// let mut file = header(&[("general.architecture".into(), MetaValue::Str("qwen2vl".into()))], &[t]);
/// file.extend([0u8; 8]);
/// file.extend(padding(8));
/// let g = Gguf::parse(&file, file.len() as u64).unwrap();
/// assert_eq!(g.tensor("w").unwrap().shape(), vec![2]);
/// ```
pub fn header(metadata: &[(String, MetaValue)], tensors: &[TensorEntry]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut out, k);
        v.write(&mut out);
    }
    let mut offset = 0u64;
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(t.ty.id().to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += t.bytes + padding(t.bytes).len() as u64;
    }
    let pad = padding(out.len() as u64);
    out.extend(pad);
    out
}

/// Zero bytes that bring `len` to a multiple of [`ALIGNMENT`].
pub fn padding(len: u64) -> Vec<u8> {
    vec![0; ((ALIGNMENT - len % ALIGNMENT) % ALIGNMENT) as usize]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    /// A minimal GGUF writer for the tests: metadata of (key, value) and tensors of
    /// (name, ggml dims, type, data).
    fn file(kv: &[(&str, Value)], tensors: &[(&str, Vec<u64>, GgmlType, Vec<u8>)]) -> Vec<u8> {
        fn s(out: &mut Vec<u8>, x: &str) {
            out.extend((x.len() as u64).to_le_bytes());
            out.extend(x.as_bytes());
        }
        fn v(out: &mut Vec<u8>, x: &Value) {
            match x {
                Value::U(u) => {
                    out.extend(4u32.to_le_bytes());
                    out.extend((*u as u32).to_le_bytes());
                }
                Value::Str(t) => {
                    out.extend(8u32.to_le_bytes());
                    s(out, t);
                }
                Value::F(f) => {
                    out.extend(6u32.to_le_bytes());
                    out.extend((*f as f32).to_le_bytes());
                }
                other => panic!("test writer: {other:?}"),
            }
        }
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((kv.len() as u64).to_le_bytes());
        for (k, x) in kv {
            s(&mut out, k);
            v(&mut out, x);
        }
        let mut off = 0u64;
        for (name, dims, ty, data) in tensors {
            s(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.id().to_le_bytes());
            out.extend(off.to_le_bytes());
            off += (data.len() as u64).div_ceil(32) * 32;
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
        for (_, _, _, data) in tensors {
            out.extend(data);
            while out.len() % 32 != 0 {
                out.push(0);
            }
        }
        out
    }

    #[test]
    fn reads_a_small_file() {
        let f = file(
            &[
                ("general.architecture", Value::Str("qwen2vl".into())),
                ("x", Value::U(7)),
            ],
            &[
                ("a", vec![2, 3], GgmlType::F32, vec![0; 24]),
                ("b", vec![32], GgmlType::Q8_0, vec![1; 34]),
            ],
        );
        let g = Gguf::parse(&f, f.len() as u64).unwrap();
        assert_eq!(g.str("general.architecture").unwrap(), "qwen2vl");
        assert_eq!(g.u64("x").unwrap(), 7);
        let a = g.tensor("a").unwrap();
        assert_eq!(a.shape(), vec![3, 2]);
        assert_eq!(a.offset, g.data_offset);
        assert_eq!(g.tensor("b").unwrap().bytes, 34);
        assert_eq!(g.tensor("b").unwrap().offset, g.data_offset + 32);
        // Every prefix short of the header is truncated, asking for more than it has; every
        // longer one parses.
        let end = (0..f.len())
            .find(|&c| Gguf::parse(&f[..c], f.len() as u64).is_ok())
            .unwrap();
        assert!(end > 150 && end <= g.data_offset as usize);
        for cut in 0..end {
            let e = Gguf::parse(&f[..cut], f.len() as u64).unwrap_err();
            assert!(
                matches!(e, GgufError::Truncated { needed, .. } if needed > cut as u64),
                "{cut}: {e}"
            );
        }
    }

    #[test]
    fn hostile_headers_are_named_errors() {
        let good = file(&[], &[("a", vec![4], GgmlType::F32, vec![0; 16])]);
        let n = good.len() as u64;
        // A header claiming 2^60 tensors: refused before anything is allocated for them.
        let mut f = good.clone();
        f[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(Gguf::parse(&f, n)
            .unwrap_err()
            .to_string()
            .contains("tensor_count"));
        let mut f = good.clone();
        f[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(Gguf::parse(&f, n)
            .unwrap_err()
            .to_string()
            .contains("metadata_kv_count"));
        // Data past the end of the file.
        let data_end = Gguf::parse(&good, n).unwrap().tensors[0].offset + 16;
        let e = Gguf::parse(&good, data_end - 1).unwrap_err().to_string();
        assert!(
            e.contains("tensor a offset") && e.contains("past the end"),
            "{e}"
        );
        // Unknown type id (the type field sits after name, n_dims and one dim).
        let at = 24 + 8 + 1 + 4 + 8;
        let mut f = good.clone();
        f[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
        let e = Gguf::parse(&f, n).unwrap_err().to_string();
        assert!(e.contains("tensor a type") && e.contains("99"), "{e}");
        // Misaligned offset.
        let mut f = good.clone();
        f[at + 4..at + 12].copy_from_slice(&3u64.to_le_bytes());
        assert!(Gguf::parse(&f, n)
            .unwrap_err()
            .to_string()
            .contains("alignment"));
        // A string longer than the file.
        let mut f = good.clone();
        f[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Gguf::parse(&f, n).unwrap_err(),
            GgufError::Truncated { .. }
        ));
        // A quantized row that is not whole blocks.
        let f = file(&[], &[("q", vec![16], GgmlType::Q8_0, vec![0; 34])]);
        assert!(Gguf::parse(&f, f.len() as u64)
            .unwrap_err()
            .to_string()
            .contains("blocks"));
        // Zero dims, too many dims.
        let f = file(&[], &[("z", vec![0], GgmlType::F32, vec![])]);
        assert!(Gguf::parse(&f, f.len() as u64)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let f = file(&[], &[("z", vec![1; 5], GgmlType::F32, vec![0; 4])]);
        assert!(Gguf::parse(&f, f.len() as u64)
            .unwrap_err()
            .to_string()
            .contains("n_dims"));
    }

    #[test]
    fn type_table_matches_ggml() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
        assert_eq!(GgmlType::Q4_K.bytes_for(512, 256), Some(288));
        assert_eq!(GgmlType::Q6_K.bytes_for(256, 256), Some(210));
        assert_eq!(GgmlType::Q4_0.bytes_for(64, 64), Some(36));
        assert_eq!(GgmlType::from_id(16), None);
    }
}
