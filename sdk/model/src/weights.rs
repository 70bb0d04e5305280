//! Reading HF safetensors checkpoints (single file or sharded with `model.safetensors.index.json`),
//! memory-mapped natively or from bytes (browsers), with bf16/f16/f32 upcast exactly to f32.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The bytes of one weight file.
pub(crate) enum Bytes {
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    /// Whether these are pages of a file mapping.
    pub(crate) fn is_mapped(&self) -> bool {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Self::Mapped(_) => true,
            Self::Owned(_) => false,
        }
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// The tensors of a checkpoint: HF safetensors, or llama.cpp GGUF files read under HF names.
pub struct WeightStore {
    files: Vec<(PathBuf, Bytes)>,
    /// tensor name → index into `files`.
    index: HashMap<String, usize>,
    /// Set for a GGUF model (then `files` is empty).
    gguf: Option<crate::gguf::GgufWeights>,
}

impl std::fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.gguf {
            Some(g) => write!(f, "WeightStore({g:?})"),
            None => write!(
                f,
                "WeightStore({} tensors in {} files)",
                self.index.len(),
                self.files.len()
            ),
        }
    }
}

fn load_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Load {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

impl WeightStore {
    /// A store over safetensors files held in memory (`(name, bytes)`, e.g. fetched by a
    /// browser); names only label errors. Each file is validated here.
    ///
    /// ```
    /// let err = visionthink_model::WeightStore::from_bytes(vec![("model.safetensors".into(), vec![1, 2, 3])]);
    /// assert!(err.unwrap_err().to_string().contains("model.safetensors"));
    /// ```
    pub fn from_bytes(files: Vec<(String, Vec<u8>)>) -> Result<Self> {
        Self::index(
            files
                .into_iter()
                .map(|(name, bytes)| (PathBuf::from(name), Bytes::Owned(bytes)))
                .collect(),
        )
    }

    /// Validates each file's safetensors header and indexes its tensor names.
    fn index(files: Vec<(PathBuf, Bytes)>) -> Result<Self> {
        let mut index = HashMap::new();
        for (i, (path, bytes)) in files.iter().enumerate() {
            let st = safetensors::SafeTensors::deserialize(bytes)
                .map_err(|e| load_err(path, format!("invalid safetensors: {e}")))?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
        }
        Ok(Self {
            files,
            index,
            gguf: None,
        })
    }

    /// A store over llama.cpp GGUF weights (text + mmproj), read under HF names.
    pub fn from_gguf(weights: crate::gguf::GgufWeights) -> Self {
        Self {
            files: Vec::new(),
            index: HashMap::new(),
            gguf: Some(weights),
        }
    }

    /// The GGUF files behind this store, if it is one.
    pub fn gguf(&self) -> Option<&crate::gguf::GgufWeights> {
        self.gguf.as_ref()
    }

    /// The quantized row blocks of a tensor as stored (GGUF only; see
    /// [`crate::gguf::GgufWeights::quantized_parts`]).
    pub fn quantized_parts<'a>(
        &'a self,
        name: &'a str,
        parts: usize,
    ) -> Option<Vec<crate::gguf::QuantView<'a>>> {
        self.gguf.as_ref()?.quantized_parts(name, parts)
    }

    /// Releases the file pages behind a quantized view a backend has copied (GGUF only).
    pub fn release_quantized(&self, q: &crate::gguf::QuantView<'_>) {
        if let Some(g) = &self.gguf {
            g.release(q);
        }
    }

    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let mut names: Vec<PathBuf> = Vec::new();
        if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|e| load_err(&index_path, e.to_string()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| load_err(&index_path, format!("malformed JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| load_err(&index_path, "no `weight_map` object"))?;
            for f in map.values() {
                let f = f.as_str().ok_or_else(|| {
                    load_err(&index_path, "`weight_map` values must be file names")
                })?;
                let p = dir.join(f);
                if !names.contains(&p) {
                    names.push(p);
                }
            }
        } else {
            names.push(dir.join("model.safetensors"));
        }
        let mut files = Vec::new();
        for path in names {
            let file = std::fs::File::open(&path).map_err(|e| load_err(&path, e.to_string()))?;
            let map = map_file(&file, &path)?;
            files.push((path, Bytes::Mapped(map)));
        }
        Self::index(files)
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        if let Some(g) = &self.gguf {
            return g.contains(name);
        }
        self.index.contains_key(name)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty() && self.gguf.is_none()
    }

    /// A tensor as f32 values, checked against the expected shape; `names` are alternatives
    /// (new and old HF key layouts), the first present one is used.
    pub fn get(&self, names: &[&str], shape: &[usize]) -> Result<Vec<f32>> {
        if let Some(g) = &self.gguf {
            let name = names.first().copied().unwrap_or_default();
            return g.get(name, shape);
        }
        let Some((name, &fi)) = names.iter().find_map(|n| self.index.get_key_value(*n)) else {
            return Err(Error::MissingTensor(names.join(" | ")));
        };
        let (path, map) = &self.files[fi];
        let st = safetensors::SafeTensors::deserialize(map)
            .map_err(|e| load_err(path, e.to_string()))?;
        let view = st.tensor(name).map_err(|e| load_err(path, e.to_string()))?;
        if view.shape() != shape {
            return Err(Error::Shape {
                name: name.clone(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let data = view.data();
        use safetensors::Dtype;
        let out = match view.dtype() {
            Dtype::F32 => le_floats(Float::F32, data),
            Dtype::BF16 => le_floats(Float::BF16, data),
            Dtype::F16 => le_floats(Float::F16, data),
            other => {
                return Err(Error::Dtype {
                    name: name.clone(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        #[cfg(not(target_arch = "wasm32"))]
        if let Bytes::Mapped(_) = map {
            release_mapped(data);
        }
        Ok(out)
    }
}

/// A little-endian float format of a weight file.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Float {
    F32,
    F16,
    BF16,
}

/// Little-endian floats upcast exactly to f32 (safetensors and GGUF store them alike).
/// The buffer is allocated untouched and given huge pages first ([`huge_page_vec`]).
pub(crate) fn le_floats(kind: Float, data: &[u8]) -> Vec<f32> {
    let width = match kind {
        Float::F32 => 4,
        Float::F16 | Float::BF16 => 2,
    };
    let mut out = huge_page_vec(data.len() / width);
    match kind {
        Float::F32 => out.extend(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        Float::BF16 => out.extend(
            data.chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        Float::F16 => out.extend(
            data.chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
    }
    out
}

#[cfg(not(target_arch = "wasm32"))]
/// Memory-maps a checkpoint file read-only: weights are paged in on first use and shared with
/// the page cache instead of being copied into the heap.
#[allow(unsafe_code)]
pub(crate) fn map_file(file: &std::fs::File, path: &Path) -> Result<memmap2::Mmap> {
    // SAFETY: the mapping is read-only and this process never writes the file. As with every
    // mmap-based loader (safetensors, candle), a concurrent writer in another process could
    // change the bytes under us; checkpoints are not modified while being served.
    unsafe { memmap2::Mmap::map(file) }.map_err(|e| load_err(path, format!("cannot map: {e}")))
}

/// An empty vector with room for `n` values, its memory untouched and advised for transparent
/// huge pages (where the system leaves that to `madvise`), to be filled with `extend`: a weight
/// buffer. A decode step reads every weight once, and with 4 KiB pages the reads of a model of
/// gigabytes miss the TLB every few kilobytes. The advice is given on Linux with glibc only.
pub(crate) fn huge_page_vec<T>(n: usize) -> Vec<T> {
    let v = Vec::with_capacity(n);
    #[cfg(not(target_arch = "wasm32"))]
    advise_huge_pages(v.as_ptr(), v.capacity());
    v
}

/// Asks the kernel to back the whole 2 MiB pages inside `[p, p + len)`, memory this process
/// allocated and has not touched yet, with transparent huge pages ([`huge_page_vec`]).
#[cfg(not(target_arch = "wasm32"))]
fn advise_huge_pages<T>(p: *const T, len: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const HUGE: usize = 2 << 20;
        let bytes = len * std::mem::size_of::<T>();
        let at = p as usize;
        let (start, end) = (at.div_ceil(HUGE) * HUGE, (at + bytes) / HUGE * HUGE);
        if end > start {
            // SAFETY: an advice on whole pages inside an allocation of this process; it changes
            // how the kernel backs the pages, never their contents. Failure is harmless.
            #[allow(unsafe_code)]
            let _ = unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE)
            };
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (p, len);
}

/// Drops the pages holding `bytes` from this process's resident set, the pages it shares with
/// its neighbours included. Only for stretches of this crate's file mappings ([`map_file`]:
/// private, read-only) that have been copied out: a dropped page is read again from the file
/// (the page cache) if touched, so a neighbour not yet copied loses nothing. Linux with glibc
/// only (elsewhere nothing happens).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn release_mapped(bytes: &[u8]) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const PAGE: usize = 4096;
        let at = bytes.as_ptr() as usize;
        let (start, end) = (at / PAGE * PAGE, (at + bytes.len()).div_ceil(PAGE) * PAGE);
        if end > start {
            // SAFETY: the range covers the pages of `bytes`, a stretch of a private, read-only,
            // file-backed mapping (the callers' condition); a mapping is made of whole pages, so
            // the rounded range stays inside it. MADV_DONTNEED only drops clean pages, which are
            // re-read from the file if touched again; no data can be lost and no reference is
            // invalidated. Failure is harmless (the pages stay resident).
            #[allow(unsafe_code)]
            let _ = unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
            };
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = bytes;
}
