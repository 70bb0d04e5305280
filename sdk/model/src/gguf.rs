//! Weights from llama.cpp's GGUF files: a Qwen2.5-VL text GGUF plus its `mmproj` GGUF (each
//! whole or a `gguf-split` set `…-00001-of-0000N.gguf`), under the graph's HF tensor names.
//!
//! llama.cpp names tensors its own way and stores the vision tower differently: the `qkv`
//! projection as three tensors, the 3-D patch embedding as two 2-D kernels (one per temporal
//! slice). [`GgufWeights::get`] reassembles HF's tensors from them, in f32. Quantized matrices
//! (Q4_0 … Q6_K) are handed to a backend as they are ([`QuantView`]) when it computes on them
//! (candle's `QMatMul`), and dequantized to f32 otherwise.

use crate::error::{Error, Result};
use crate::weights::Bytes;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use visionthink_core::gguf::{GgmlType, Gguf, TensorInfo};

/// A quantized matrix as stored in the file: `[rows, cols]`, row-major blocks.
#[derive(Debug, Clone, Copy)]
pub struct QuantView<'a> {
    /// HF name of the tensor it is (a row block of).
    pub name: &'a str,
    /// Block type.
    pub ty: GgmlType,
    /// `[out, in]`.
    pub shape: [usize; 2],
    /// The blocks.
    pub bytes: &'a [u8],
    /// Whether `bytes` are pages of a read-only file mapping, which a backend copying them may
    /// drop from memory as it goes ([`QuantView::copy_releasing`]).
    pub file_backed: bool,
}

impl QuantView<'_> {
    /// The bytes, copied: a stretch at a time, each stretch's file pages dropped from this
    /// process's resident set once copied when the view is [`Self::file_backed`], so that a
    /// matrix is never resident twice (the mapped file and the copy: the 0.5B Q4_0 file's
    /// 76 MB embedding, a 7B head's 447 MB).
    ///
    /// ```
    /// use visionthink_core::gguf::GgmlType;
    /// let bytes = vec![7u8; 100];
    /// let q = visionthink_model::gguf::QuantView {
    ///     name: "w",
    ///     ty: GgmlType::F16,
    ///     shape: [5, 10],
    ///     bytes: &bytes,
    ///     file_backed: false,
    /// };
    /// assert_eq!(q.copy_releasing(), bytes);
    /// ```
    pub fn copy_releasing(&self) -> Vec<u8> {
        let mut out = crate::weights::huge_page_vec(self.bytes.len());
        self.read_releasing(|c| out.extend_from_slice(c));
        out
    }

    /// `f` on the bytes a stretch at a time (4 MiB, an even length), each stretch's file pages
    /// dropped once `f` has read it, as [`Self::copy_releasing`] does.
    pub fn read_releasing(&self, mut f: impl FnMut(&[u8])) {
        const STRETCH: usize = 4 << 20;
        for c in self.bytes.chunks(STRETCH) {
            f(c);
            #[cfg(not(target_arch = "wasm32"))]
            if self.file_backed {
                crate::weights::release_mapped(c);
            }
        }
    }
}

/// One GGUF file: its bytes and header.
struct Part {
    path: PathBuf,
    bytes: Bytes,
    header: Gguf,
}

/// The tensors of a text GGUF and an mmproj GGUF.
pub struct GgufWeights {
    parts: Vec<Part>,
    /// llama.cpp tensor name → (part, index in its table).
    index: HashMap<String, (usize, usize)>,
    /// The text model's header (metadata: config, tokenizer, chat template).
    text: usize,
    /// The mmproj's header.
    mmproj: usize,
}

impl std::fmt::Debug for GgufWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GgufWeights({} tensors in {} files)",
            self.index.len(),
            self.parts.len()
        )
    }
}

fn load_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Load {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Where an HF tensor lives in llama.cpp's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// One tensor.
    One(String),
    /// Row blocks of several tensors, concatenated (the vision `qkv`).
    Rows(Vec<String>),
    /// The patch embedding `[dim, c, 2, p, p]` from its two temporal slices `[dim, c, p, p]`.
    Temporal(String, String),
}

/// Decoder layer modules: (HF module, llama.cpp name).
const TEXT_MODULES: [(&str, &str); 9] = [
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// Vision block modules with one source tensor each: (HF module, llama.cpp name).
const VISION_MODULES: [(&str, &str); 6] = [
    ("norm1", "ln1"),
    ("norm2", "ln2"),
    ("attn.proj", "attn_out"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// The vision `qkv`'s row blocks, in order.
const QKV: [&str; 3] = ["q", "k", "v"];

/// llama.cpp's name(s) for an HF (transformers 5) tensor name.
pub fn source(hf: &str) -> Option<Source> {
    let one = |s: String| Some(Source::One(s));
    if let Some(rest) = hf.strip_prefix("model.language_model.") {
        if rest == "embed_tokens.weight" {
            return one("token_embd.weight".into());
        }
        if rest == "norm.weight" {
            return one("output_norm.weight".into());
        }
        let rest = rest.strip_prefix("layers.")?;
        let (i, tail) = rest.split_once('.')?;
        let (module, kind) = tail.rsplit_once('.')?;
        let (_, name) = TEXT_MODULES.iter().find(|(m, _)| *m == module)?;
        return one(format!("blk.{i}.{name}.{kind}"));
    }
    if hf == "lm_head.weight" {
        return one("output.weight".into());
    }
    let rest = hf.strip_prefix("model.visual.")?;
    match rest {
        "patch_embed.proj.weight" => {
            return Some(Source::Temporal(
                "v.patch_embd.weight".into(),
                "v.patch_embd.weight.1".into(),
            ))
        }
        "merger.ln_q.weight" => return one("v.post_ln.weight".into()),
        _ => {}
    }
    if let Some(m) = rest.strip_prefix("merger.mlp.") {
        return one(format!("mm.{m}"));
    }
    let rest = rest.strip_prefix("blocks.")?;
    let (i, tail) = rest.split_once('.')?;
    let (module, kind) = tail.rsplit_once('.')?;
    if module == "attn.qkv" {
        return Some(Source::Rows(
            QKV.iter()
                .map(|x| format!("v.blk.{i}.attn_{x}.{kind}"))
                .collect(),
        ));
    }
    let (_, name) = VISION_MODULES.iter().find(|(m, _)| *m == module)?;
    one(format!("v.blk.{i}.{name}.{kind}"))
}

/// Where a llama.cpp tensor goes in the graph: the inverse of [`source`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The whole HF tensor.
    Whole(String),
    /// Row block `part` of `parts` of the HF tensor (the vision `qkv`).
    Rows {
        /// HF name.
        hf: String,
        /// Which block.
        part: usize,
        /// How many.
        parts: usize,
    },
    /// Temporal slice `slice` (0 or 1) of the patch embedding.
    Temporal {
        /// HF name.
        hf: String,
        /// Which slice.
        slice: usize,
    },
}

/// The HF tensor a llama.cpp tensor name feeds (`None` for names the graph does not use).
///
/// ```
/// use visionthink_model::gguf::{source, target, Source, Target};
/// assert_eq!(
///     target("v.blk.3.attn_k.bias"),
///     Some(Target::Rows { hf: "model.visual.blocks.3.attn.qkv.bias".into(), part: 1, parts: 3 })
/// );
/// let Some(Target::Whole(hf)) = target("blk.0.ffn_down.weight") else { panic!() };
/// assert_eq!(source(&hf), Some(Source::One("blk.0.ffn_down.weight".into())));
/// ```
pub fn target(gguf: &str) -> Option<Target> {
    let whole = |s: String| Some(Target::Whole(s));
    match gguf {
        "token_embd.weight" => return whole("model.language_model.embed_tokens.weight".into()),
        "output_norm.weight" => return whole("model.language_model.norm.weight".into()),
        "output.weight" => return whole("lm_head.weight".into()),
        "v.post_ln.weight" => return whole("model.visual.merger.ln_q.weight".into()),
        "v.patch_embd.weight" | "v.patch_embd.weight.1" => {
            return Some(Target::Temporal {
                hf: "model.visual.patch_embed.proj.weight".into(),
                slice: usize::from(gguf.ends_with(".1")),
            })
        }
        _ => {}
    }
    if let Some(m) = gguf.strip_prefix("mm.") {
        return whole(format!("model.visual.merger.mlp.{m}"));
    }
    let (vision, rest) = match gguf.strip_prefix("v.blk.") {
        Some(r) => (true, r),
        None => (false, gguf.strip_prefix("blk.")?),
    };
    let (i, tail) = rest.split_once('.')?;
    if !i.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (name, kind) = tail.rsplit_once('.')?;
    if !vision {
        let (module, _) = TEXT_MODULES.iter().find(|(_, n)| *n == name)?;
        return whole(format!("model.language_model.layers.{i}.{module}.{kind}"));
    }
    if let Some(part) = QKV.iter().position(|x| name == format!("attn_{x}")) {
        return Some(Target::Rows {
            hf: format!("model.visual.blocks.{i}.attn.qkv.{kind}"),
            part,
            parts: QKV.len(),
        });
    }
    let (module, _) = VISION_MODULES.iter().find(|(_, n)| *n == name)?;
    whole(format!("model.visual.blocks.{i}.{module}.{kind}"))
}

/// `(base, part, count)` of a `gguf-split` part's file name (`base-00002-of-00003.gguf`: five
/// digits each, as gguf-split writes them); `None` for a whole file.
///
/// ```
/// use visionthink_model::gguf::split_part;
/// assert_eq!(split_part("m-00002-of-00003.gguf"), Some(("m", 2, 3)));
/// assert_eq!(split_part("m.gguf"), None);
/// ```
pub fn split_part(file_name: &str) -> Option<(&str, usize, usize)> {
    let stem = file_name.strip_suffix(".gguf")?;
    let (head, count) = stem.rsplit_once("-of-")?;
    let (base, no) = head.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    (digits(no) && digits(count)).then_some((base, no.parse().ok()?, count.parse().ok()?))
}

/// The parts of a split set named by its first part (`name-00001-of-00003.gguf`), in order; a
/// single file otherwise.
#[cfg(not(target_arch = "wasm32"))]
pub fn split_set(first: &Path) -> Result<Vec<PathBuf>> {
    let name = first
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| load_err(first, "not a file name"))?;
    if !name.ends_with(".gguf") {
        return Err(load_err(first, "a GGUF file name ends in .gguf"));
    }
    match split_part(name) {
        Some((base, 1, n)) if n >= 1 => Ok((1..=n)
            .map(|i| first.with_file_name(format!("{base}-{i:05}-of-{n:05}.gguf")))
            .collect()),
        Some((_, no, _)) => Err(load_err(
            first,
            format!("part {no} of a split set: name its first part (-00001-of-…)"),
        )),
        None => Ok(vec![first.to_path_buf()]),
    }
}

impl GgufWeights {
    /// Opens a text GGUF and an mmproj GGUF (either may be the first part of a split set),
    /// memory-mapped.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(text: &Path, mmproj: &Path) -> Result<Self> {
        let mut files = Vec::new();
        for set in [text, mmproj] {
            let mut parts = Vec::new();
            for path in split_set(set)? {
                let file =
                    std::fs::File::open(&path).map_err(|e| load_err(&path, e.to_string()))?;
                let map = crate::weights::map_file(&file, &path)?;
                parts.push((path, Bytes::Mapped(map)));
            }
            files.push(parts);
        }
        let mmproj = files.pop().unwrap_or_default();
        let text = files.pop().unwrap_or_default();
        Self::index(text, mmproj)
    }

    /// A store over GGUF files held in memory: the text set's parts in order, then the mmproj
    /// set's (names label errors).
    pub fn from_bytes(
        text: Vec<(String, Vec<u8>)>,
        mmproj: Vec<(String, Vec<u8>)>,
    ) -> Result<Self> {
        let own = |v: Vec<(String, Vec<u8>)>| -> Vec<(PathBuf, Bytes)> {
            v.into_iter()
                .map(|(n, b)| (PathBuf::from(n), Bytes::Owned(b)))
                .collect()
        };
        Self::index(own(text), own(mmproj))
    }

    fn index(text: Vec<(PathBuf, Bytes)>, mmproj: Vec<(PathBuf, Bytes)>) -> Result<Self> {
        let mut parts = Vec::new();
        let mut firsts = Vec::new();
        for set in [text, mmproj] {
            let n = set.len();
            firsts.push(parts.len());
            for (i, (path, bytes)) in set.into_iter().enumerate() {
                let header = Gguf::parse(&bytes, bytes.len() as u64)
                    .map_err(|e| load_err(&path, e.to_string()))?;
                let (no, count) = header.split().map_err(|e| load_err(&path, e.to_string()))?;
                if count as usize != n || (n > 1 && no as usize != i) {
                    return Err(load_err(
                        &path,
                        format!(
                            "split part {} of {count}, found as part {} of {n}: a part is missing or out of order",
                            no + 1,
                            i + 1
                        ),
                    ));
                }
                parts.push(Part {
                    path,
                    bytes,
                    header,
                });
            }
        }
        let mut index = HashMap::new();
        for (p, part) in parts.iter().enumerate() {
            for (t, info) in part.header.tensors.iter().enumerate() {
                if index.insert(info.name.clone(), (p, t)).is_some() {
                    return Err(load_err(
                        &part.path,
                        format!("tensor {} appears twice", info.name),
                    ));
                }
            }
        }
        let (text, mmproj) = (firsts[0], firsts[1]);
        if text >= parts.len() || mmproj >= parts.len() {
            return Err(Error::Config(
                "a GGUF model needs a text file and an mmproj file".into(),
            ));
        }
        Ok(Self {
            parts,
            index,
            text,
            mmproj,
        })
    }

    /// The text model's header (metadata of the first part).
    pub fn text_header(&self) -> &Gguf {
        &self.parts[self.text].header
    }

    /// The mmproj's header.
    pub fn mmproj_header(&self) -> &Gguf {
        &self.parts[self.mmproj].header
    }

    /// The text file's path (its first part).
    pub fn text_path(&self) -> &Path {
        &self.parts[self.text].path
    }

    /// Bytes of every part (the size of the model on disk).
    pub fn file_bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.bytes.len() as u64).sum()
    }

    fn find(&self, name: &str) -> Option<(&Part, &TensorInfo)> {
        let &(p, t) = self.index.get(name)?;
        let part = &self.parts[p];
        Some((part, &part.header.tensors[t]))
    }

    /// Whether the HF tensor is present.
    pub fn contains(&self, hf: &str) -> bool {
        match source(hf) {
            Some(Source::One(n)) => self.index.contains_key(&n),
            Some(Source::Rows(v)) => v.iter().all(|n| self.index.contains_key(n)),
            Some(Source::Temporal(a, b)) => {
                self.index.contains_key(&a) && self.index.contains_key(&b)
            }
            None => false,
        }
    }

    fn data<'a>(&self, part: &'a Part, info: &TensorInfo) -> &'a [u8] {
        // The header parser checked offset + bytes against the file length.
        &part.bytes[info.offset as usize..(info.offset + info.bytes) as usize]
    }

    fn values(&self, name: &str, hf: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (part, info) = self
            .find(name)
            .ok_or_else(|| Error::MissingTensor(format!("{hf} (GGUF {name})")))?;
        let data = self.data(part, info);
        let out = dequantize(info.ty, data, info.elements() as usize)
            .map_err(|e| load_err(&part.path, format!("tensor {name}: {e}")))?;
        #[cfg(not(target_arch = "wasm32"))]
        if let Bytes::Mapped(_) = &part.bytes {
            crate::weights::release_mapped(data);
        }
        Ok((out, info.shape()))
    }

    /// An HF tensor as f32 values, checked against `shape`.
    pub fn get(&self, hf: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let src = source(hf).ok_or_else(|| Error::MissingTensor(format!("{hf} (no GGUF name)")))?;
        let check = |found: Vec<usize>| -> Result<()> {
            if found != shape {
                return Err(Error::Shape {
                    name: hf.to_string(),
                    expected: shape.to_vec(),
                    found,
                });
            }
            Ok(())
        };
        match src {
            Source::One(n) => {
                let (v, s) = self.values(&n, hf)?;
                check(s)?;
                Ok(v)
            }
            Source::Rows(names) => {
                let mut all = Vec::new();
                let mut rows = 0;
                let mut rest = Vec::new();
                for n in &names {
                    let (v, s) = self.values(n, hf)?;
                    rows += s.first().copied().unwrap_or(0);
                    rest = s.get(1..).map(<[usize]>::to_vec).unwrap_or_default();
                    all.extend(v);
                }
                let mut s = vec![rows];
                s.extend(rest);
                check(s)?;
                Ok(all)
            }
            Source::Temporal(a, b) => {
                let first = self.values(&a, hf)?;
                let second = self.values(&b, hf)?;
                let (out, shape) = join_temporal(&format!("{hf} (GGUF {b})"), &first, &second)?;
                check(shape)?;
                Ok(out)
            }
        }
    }

    /// The row blocks of an HF matrix as stored, when every block is one quantized, F16 or
    /// BF16 GGUF tensor (`parts` of them: 3 for the vision `qkv`, else 1), for a backend that
    /// computes on them as they are ([`crate::Backend::takes_quantized`]); `None` for F32
    /// tensors and for tensors assembled from several sources.
    pub fn quantized_parts<'a>(&'a self, hf: &'a str, parts: usize) -> Option<Vec<QuantView<'a>>> {
        let names = match (source(hf)?, parts) {
            (Source::One(n), 1) => vec![n],
            (Source::Rows(v), p) if v.len() == p => v,
            _ => return None,
        };
        names
            .iter()
            .map(|n| {
                let (part, info) = self.find(n)?;
                let shape = info.shape();
                (info.ty != GgmlType::F32 && shape.len() == 2).then(|| QuantView {
                    name: hf,
                    ty: info.ty,
                    shape: [shape[0], shape[1]],
                    bytes: self.data(part, info),
                    file_backed: part.bytes.is_mapped(),
                })
            })
            .collect()
    }
}

impl GgufWeights {
    /// Drops the file pages behind a quantized view from this process's resident set once a
    /// backend has copied its blocks (as for tensors read as f32), so peak memory stays near the
    /// model's size instead of twice it. Nothing happens for in-memory files.
    pub fn release(&self, q: &QuantView<'_>) {
        #[cfg(not(target_arch = "wasm32"))]
        for part in &self.parts {
            if let Bytes::Mapped(m) = &part.bytes {
                let base = m.as_ptr() as usize;
                let at = q.bytes.as_ptr() as usize;
                if at >= base && at + q.bytes.len() <= base + m.len() {
                    crate::weights::release_mapped(q.bytes);
                }
            }
        }
        #[cfg(target_arch = "wasm32")]
        let _ = q;
    }
}

/// The patch embedding `[dim, c, 2, p, p]` from its two temporal slices `[dim, c, p, p]`
/// (values and shape each), as llama.cpp stores it; `name` labels a shape mismatch.
pub(crate) fn join_temporal(
    name: &str,
    (a, sa): &(Vec<f32>, Vec<usize>),
    (b, sb): &(Vec<f32>, Vec<usize>),
) -> Result<(Vec<f32>, Vec<usize>)> {
    if sa != sb || sa.len() != 4 {
        return Err(Error::Shape {
            name: name.to_string(),
            expected: sa.clone(),
            found: sb.clone(),
        });
    }
    // Per (out, channel): slice 0 then slice 1.
    let k = sa[2] * sa[3];
    let mut out = Vec::with_capacity(a.len() * 2);
    for (x, y) in a.chunks_exact(k).zip(b.chunks_exact(k)) {
        out.extend_from_slice(x);
        out.extend_from_slice(y);
    }
    Ok((out, vec![sa[0], sa[1], 2, sa[2], sa[3]]))
}

/// Q5_0 blocks rewritten as Q8_0 blocks, exactly: a Q5_0 value is a 5-bit integer in −16..15
/// times the block's f16 scale, which an int8 times the same scale holds as it is. candle's CPU
/// kernels for Q8_0 are vectorised where its Q5_0 ones are not (Q4_K_M files hold many Q5_0
/// matrices when rows are not whole k-quant blocks), at 34 instead of 22 bytes per 32 values.
pub fn q5_0_as_q8_0(bytes: &[u8]) -> Result<Vec<u8>> {
    if bytes.len() % 22 != 0 {
        return Err(Error::Input(format!(
            "{} bytes are not whole Q5_0 blocks",
            bytes.len()
        )));
    }
    let mut out = Vec::with_capacity(bytes.len() / 22 * 34);
    for b in bytes.chunks_exact(22) {
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs = &b[6..22];
        out.extend_from_slice(&b[..2]);
        let mut hi = [0u8; 16];
        for j in 0..16 {
            let x0 = ((qs[j] & 0x0f) as u32 | (((qh >> j) << 4) & 0x10)) as i32 - 16;
            let x1 = ((qs[j] >> 4) as u32 | ((qh >> (j + 12)) & 0x10)) as i32 - 16;
            out.push(x0 as i8 as u8);
            hi[j] = x1 as i8 as u8;
        }
        out.extend_from_slice(&hi);
    }
    Ok(out)
}

/// candle's name for a ggml type.
pub fn candle_dtype(ty: GgmlType) -> candle_core::quantized::GgmlDType {
    use candle_core::quantized::GgmlDType as D;
    match ty {
        GgmlType::F32 => D::F32,
        GgmlType::F16 => D::F16,
        GgmlType::BF16 => D::BF16,
        GgmlType::Q4_0 => D::Q4_0,
        GgmlType::Q4_1 => D::Q4_1,
        GgmlType::Q5_0 => D::Q5_0,
        GgmlType::Q5_1 => D::Q5_1,
        GgmlType::Q8_0 => D::Q8_0,
        GgmlType::Q2_K => D::Q2K,
        GgmlType::Q3_K => D::Q3K,
        GgmlType::Q4_K => D::Q4K,
        GgmlType::Q5_K => D::Q5K,
        GgmlType::Q6_K => D::Q6K,
    }
}

/// The blocks of `bytes` as a candle `QTensor` of `shape` on `device`. candle reads blocks in
/// place and requires their alignment: misaligned bytes (a buffer from a browser) are copied
/// into an aligned one first.
pub fn qtensor(
    ty: GgmlType,
    bytes: &[u8],
    shape: &[usize],
    device: &candle_core::Device,
) -> Result<candle_core::quantized::QTensor> {
    use candle_core::quantized::{QStorage, QTensor};
    let elements: usize = shape.iter().product();
    let row = shape.last().copied().unwrap_or(0) as u64;
    if ty.bytes_for(elements as u64, row) != Some(bytes.len() as u64) {
        return Err(Error::Input(format!(
            "{} blocks of {} bytes do not hold a {shape:?} tensor",
            ty.name(),
            bytes.len()
        )));
    }
    let aligned: Vec<u32>;
    let data: &[u8] = if (bytes.as_ptr() as usize) % 4 == 0 {
        bytes
    } else {
        let mut v = vec![0u32; bytes.len().div_ceil(4)];
        bytemuck::cast_slice_mut::<u32, u8>(&mut v)[..bytes.len()].copy_from_slice(bytes);
        aligned = v;
        &bytemuck::cast_slice::<u32, u8>(&aligned)[..bytes.len()]
    };
    let storage = QStorage::from_data(std::borrow::Cow::Borrowed(data), device, candle_dtype(ty))?;
    Ok(QTensor::new(storage, shape)?)
}

/// `values` (a `[rows, cols]` matrix, or any tensor for the float types) stored as `ty`:
/// little-endian floats, or ggml's reference quantization (candle's port of it) for blocks.
pub fn quantize(ty: GgmlType, values: &[f32], cols: usize) -> Result<Vec<u8>> {
    Ok(match ty {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        GgmlType::BF16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => {
            if cols == 0 || cols % ty.block_size() != 0 || values.len() % cols != 0 {
                return Err(Error::Input(format!(
                    "rows of {cols} values cannot be stored as {} blocks of {}",
                    ty.name(),
                    ty.block_size()
                )));
            }
            let rows = values.len() / cols;
            let quantize_rows = |v: &[f32]| -> Result<Vec<u8>> {
                let t = candle_core::Tensor::from_slice(
                    v,
                    (v.len() / cols, cols),
                    &candle_core::Device::Cpu,
                )?;
                let q = candle_core::quantized::QTensor::quantize(&t, candle_dtype(ty))?;
                Ok(q.data()?.into_owned())
            };
            // Blocks never cross rows, so row ranges quantized on their own threads and
            // concatenated are the same bytes (candle's quantizers are single-threaded).
            let threads = threads().min(rows / 64).max(1);
            if threads == 1 {
                quantize_rows(values)?
            } else {
                let per = rows.div_ceil(threads) * cols;
                let parts: Vec<Result<Vec<u8>>> = std::thread::scope(|s| {
                    let handles: Vec<_> = values
                        .chunks(per)
                        .map(|c| s.spawn(move || quantize_rows(c)))
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join().unwrap_or_else(|_| {
                                Err(Error::Backend("a quantization thread panicked".into()))
                            })
                        })
                        .collect()
                });
                let mut out = Vec::new();
                for p in parts {
                    out.extend(p?);
                }
                out
            }
        }
    })
}

/// Threads for CPU-bound conversion work (1 in browsers).
fn threads() -> usize {
    #[cfg(target_arch = "wasm32")]
    return 1;
    #[cfg(not(target_arch = "wasm32"))]
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `n` values of type `ty` from `bytes`, as f32 (exact for F32/F16/BF16; the format's
/// dequantization for blocks).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let want = ty.bytes_for(n as u64, ty.block_size() as u64);
    if want != Some(bytes.len() as u64) {
        return Err(Error::Input(format!(
            "{} bytes for {n} {} values",
            bytes.len(),
            ty.name()
        )));
    }
    use crate::weights::{le_floats, Float};
    Ok(match ty {
        GgmlType::F32 => le_floats(Float::F32, bytes),
        GgmlType::F16 => le_floats(Float::F16, bytes),
        GgmlType::BF16 => le_floats(Float::BF16, bytes),
        _ => {
            let q = qtensor(ty, bytes, &[n], &candle_core::Device::Cpu)?;
            q.dequantize(&candle_core::Device::Cpu)?.to_vec1::<f32>()?
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    /// Every tensor of a (tied and an untied) layout: each llama.cpp name its source lists
    /// maps back to it, in its place.
    #[test]
    fn target_inverts_source() {
        let json = br#"{"vision_config": {"depth": 2, "hidden_size": 8, "num_heads": 2, "intermediate_size": 16, "out_hidden_size": 8}, "text_config": {"hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1, "num_hidden_layers": 2, "intermediate_size": 16, "vocab_size": 64, "tie_word_embeddings": false, "rope_scaling": {"mrope_section": [1, 1, 0]}}}"#;
        let cfg = visionthink_core::config::ModelConfig::from_json(json).unwrap();
        let specs = crate::graph::checkpoint_layout(&cfg);
        assert!(specs.iter().any(|s| s.name == "lm_head.weight"));
        for spec in specs {
            let hf = spec.name;
            match source(&hf).unwrap() {
                Source::One(n) => assert_eq!(target(&n), Some(Target::Whole(hf.clone()))),
                Source::Rows(v) => {
                    for (part, n) in v.iter().enumerate() {
                        let parts = v.len();
                        let hf = hf.clone();
                        assert_eq!(target(n), Some(Target::Rows { hf, part, parts }));
                    }
                }
                Source::Temporal(a, b) => {
                    for (slice, n) in [a, b].iter().enumerate() {
                        let hf = hf.clone();
                        assert_eq!(target(n), Some(Target::Temporal { hf, slice }));
                    }
                }
            }
        }
        for other in [
            "rope_freqs.weight",
            "blk.x.attn_q.weight",
            "v.blk.0.attn_qq.bias",
        ] {
            assert_eq!(target(other), None, "{other}");
        }
    }

    #[test]
    fn names_follow_llama_cpp() {
        let one = |hf: &str| match source(hf) {
            Some(Source::One(n)) => n,
            _ => panic!("{hf}"),
        };
        assert_eq!(
            one("model.language_model.layers.3.self_attn.o_proj.weight"),
            "blk.3.attn_output.weight"
        );
        assert_eq!(
            one("model.language_model.layers.0.post_attention_layernorm.weight"),
            "blk.0.ffn_norm.weight"
        );
        assert_eq!(
            one("model.visual.blocks.31.attn.proj.bias"),
            "v.blk.31.attn_out.bias"
        );
        assert_eq!(one("model.visual.merger.mlp.2.weight"), "mm.2.weight");
        assert_eq!(one("lm_head.weight"), "output.weight");
        assert!(
            matches!(source("model.visual.blocks.0.attn.qkv.bias"), Some(Source::Rows(v)) if v[2] == "v.blk.0.attn_v.bias")
        );
        assert!(source("model.language_model.layers.0.nonsense.weight").is_none());
    }

    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn split_names() {
        let s = split_set(Path::new("/m/model-00001-of-00003.gguf")).unwrap();
        assert_eq!(s.len(), 3);
        assert!(s[2].ends_with("model-00003-of-00003.gguf"));
        assert_eq!(split_set(Path::new("/m/model.gguf")).unwrap().len(), 1);
        let e = split_set(Path::new("/m/model-00002-of-00003.gguf"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("part 2"), "{e}");
    }

    #[test]
    fn q5_0_rewritten_as_q8_0_dequantizes_identically() {
        let values: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let q5 = quantize(GgmlType::Q5_0, &values, 256).unwrap();
        let q8 = q5_0_as_q8_0(&q5).unwrap();
        assert_eq!(q8.len(), 8 * 34);
        let a = dequantize(GgmlType::Q5_0, &q5, 256).unwrap();
        let b = dequantize(GgmlType::Q8_0, &q8, 256).unwrap();
        assert_eq!(a, b);
        assert!(q5_0_as_q8_0(&q5[..21]).is_err());
    }

    #[test]
    fn dequantizes_q8_0_blocks() {
        // One Q8_0 block: f16 scale 0.5, values -16..16.
        let mut b = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        assert_eq!(v[0], -8.0);
        assert_eq!(v[31], 7.5);
        assert!(dequantize(GgmlType::Q8_0, &b[..33], 32).is_err());
        // Misaligned bytes are copied, not refused.
        let mut shifted = vec![0u8];
        shifted.extend(&b);
        assert_eq!(dequantize(GgmlType::Q8_0, &shifted[1..], 32).unwrap(), v);
    }
}
