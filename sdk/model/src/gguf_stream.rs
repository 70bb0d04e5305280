//! A GGUF model built as its bytes arrive, so no file is ever held whole: the browser streams
//! each part of a text GGUF and an mmproj GGUF (whole files or `gguf-split` sets) from the
//! network or the Cache API, and every tensor goes to the backend (GPU buffers, or the CPU
//! fallback's quantized blocks) as soon as its last byte is in; only that tensor's bytes are
//! buffered. Sans-I/O: the caller pushes bytes, so the same code runs natively (tests) and in
//! wasm.
//!
//! - Each file's header is parsed as soon as it is complete ([`GgufError::Truncated`] says how
//!   many bytes it needs); the model's config is checked as soon as both headers are in, and
//!   the [`Limits`] (the adapter's binding size, the memory a backend may take) before any
//!   tensor bytes are used: a model that cannot fit fails after its headers, not after its
//!   download.
//! - Each file may carry its SHA-256 (the browser manifest's): a mismatch at the end of the file
//!   drops every tensor made from it and leaves the loader ready for the same file again.
//! - Tensors are placed by llama.cpp's names ([`crate::gguf::target`]); GGUF blocks that the
//!   backend computes on ([`Backend::takes_quantized`]) stay blocks, everything else is
//!   dequantized to f32, exactly as [`crate::Qwen25VL::load`] does for files on disk.
//!
//! ```
//! use visionthink_model::gguf_stream::{GgufStream, Limits};
//! use visionthink_model::CandleBackend;
//! let be = CandleBackend::cpu();
//! let mut s = GgufStream::new(Limits::default());
//! s.begin_file("m.gguf", 4, None).unwrap();
//! let e = s.push(&be, b"GGUX").unwrap_err();
//! assert!(e.to_string().contains("magic"), "{e}");
//! ```

use crate::backend::{Backend, QuantWriter};
use crate::error::{Error, Result};
use crate::gguf::{dequantize, join_temporal, split_part, target, QuantView, Target};
use crate::graph::Qwen25VL;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use visionthink_core::gguf::{GgmlType, Gguf, GgufError, TensorInfo};
use visionthink_core::model_files::ModelFiles;

/// What a backend can take, checked against every header before its tensors are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Largest row of one weight in bytes, as stored (a GPU's `maxStorageBufferBindingSize`:
    /// weights are split into row chunks, so one row must fit).
    pub max_row_bytes: Option<u64>,
    /// Largest total of all weights in bytes, as stored (GPU memory, or what a wasm32 heap can
    /// hold for the CPU fallback).
    pub max_total_bytes: Option<u64>,
}

/// Counters of a load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Bytes pushed (all files, refetches included).
    pub bytes_in: u64,
    /// Largest tensor buffered at once, in bytes (the loader's peak memory besides the backend's
    /// own).
    pub peak_buffered: u64,
    /// Tensors handed to the backend.
    pub tensors: u64,
    /// Tensors kept in their GGUF blocks.
    pub quantized: u64,
    /// Weight bytes as the backend stores them (blocks as stored, f32 otherwise), summed over
    /// the headers read.
    pub planned_bytes: u64,
}

/// One temporal slice of the patch embedding: values and shape.
type Slice = (Vec<f32>, Vec<usize>);

/// Which file of the model a part belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Text,
    Mmproj,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Text => "text GGUF",
            Role::Mmproj => "mmproj GGUF",
        }
    }
}

/// One set (text or mmproj): its first part's header and file name, and the parts done.
struct Set {
    header: Gguf,
    base: String,
    count: u64,
    done: Vec<bool>,
}

/// Where a row block of a made tensor came from, to undo a file that failed its checksum.
#[derive(Debug, Clone)]
enum Made {
    Block(String, usize),
    Slice(String, usize),
}

/// The file being fed.
struct Feed<T> {
    name: String,
    size: u64,
    sha256: Option<[u8; 32]>,
    hasher: Sha256,
    /// Bytes of the header so far (until it parses).
    head: Vec<u8>,
    /// Bytes needed before the next parse attempt.
    need: u64,
    /// The tensor table in offset order, once the header is in (its metadata goes to the set,
    /// and is not kept per part).
    tensors: Option<Vec<TensorInfo>>,
    role: Option<Role>,
    part: usize,
    /// Bytes received.
    pos: u64,
    /// The next tensor to complete.
    next: usize,
    /// Weight bytes this file adds to [`StreamStats::planned_bytes`] (taken back if it fails).
    planned: u64,
    /// Bytes of the tensor being received.
    buf: Vec<u8>,
    /// The backend's writer of the tensor being received, when it takes its blocks in pieces.
    writer: Option<Box<dyn QuantWriter<T>>>,
    made: Vec<Made>,
}

/// A GGUF model loaded by pushing its files' bytes in order.
pub struct GgufStream<B: Backend> {
    limits: Limits,
    sets: [Option<Set>; 2],
    file: Option<Feed<B::Tensor>>,
    /// HF name → row blocks made so far.
    blocks: HashMap<String, Vec<Option<B::Tensor>>>,
    /// The patch embedding's two temporal slices as f32 values, until both are in.
    slices: HashMap<String, [Option<Slice>; 2]>,
    stats: StreamStats,
}

/// (bytes of the longest row, bytes in all) of a tensor as `be` will store it.
fn stored_size<B: Backend>(be: &B, t: &TensorInfo) -> (u64, u64) {
    let shape = t.shape();
    let rows = shape.first().copied().unwrap_or(1).max(1) as u64;
    if kept_as_blocks(be, t).is_some() {
        let bytes = match t.ty {
            // Rewritten as Q8_0 (34 bytes per 32 values instead of 22).
            GgmlType::Q5_0 => t.bytes / 22 * 34,
            _ => t.bytes,
        };
        (bytes / rows, bytes)
    } else {
        let bytes = t.elements() * 4;
        (
            if shape.len() == 1 {
                bytes
            } else {
                bytes / rows
            },
            bytes,
        )
    }
}

/// `[rows, cols]` of a tensor `be` keeps in its GGUF blocks (a quantized matrix of a type it
/// computes on); `None` for what is dequantized to f32.
fn kept_as_blocks<B: Backend>(be: &B, t: &TensorInfo) -> Option<[usize; 2]> {
    match t.shape().as_slice() {
        &[rows, cols] if t.ty.is_quantized() && be.takes_quantized(t.ty) => Some([rows, cols]),
        _ => None,
    }
}

fn file_err(file: &str, reason: impl Into<String>) -> Error {
    Error::Load {
        path: file.to_string(),
        reason: reason.into(),
    }
}

impl<B: Backend> GgufStream<B> {
    /// A loader (the backend is passed to the calls that make tensors, so the caller keeps
    /// owning it).
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            sets: [None, None],
            file: None,
            blocks: HashMap::new(),
            slices: HashMap::new(),
            stats: StreamStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    /// Starts a file (a whole GGUF or one `gguf-split` part; the first part of a set before its
    /// others) of `size` bytes, optionally with its SHA-256.
    pub fn begin_file(&mut self, name: &str, size: u64, sha256: Option<[u8; 32]>) -> Result<()> {
        if let Some(f) = &self.file {
            return Err(file_err(
                name,
                format!("{} is still being loaded (end_file first)", f.name),
            ));
        }
        self.file = Some(Feed {
            name: name.to_string(),
            size,
            sha256,
            hasher: Sha256::new(),
            head: Vec::new(),
            need: 0,
            tensors: None,
            role: None,
            part: 0,
            pos: 0,
            next: 0,
            planned: 0,
            buf: Vec::new(),
            writer: None,
            made: Vec::new(),
        });
        Ok(())
    }

    /// The next bytes of the current file.
    pub fn push(&mut self, be: &B, bytes: &[u8]) -> Result<()> {
        let mut f = self
            .file
            .take()
            .ok_or_else(|| Error::Input("push before begin_file".into()))?;
        match self.feed(be, &mut f, bytes) {
            Ok(()) => {
                self.file = Some(f);
                Ok(())
            }
            Err(e) => {
                // A failed file leaves the loader as if it had never started.
                self.undo(&f);
                Err(e)
            }
        }
    }

    /// Drops the current file and everything made from it (an aborted download), so it can
    /// be fed again from its start.
    pub fn abort_file(&mut self) {
        if let Some(f) = self.file.take() {
            self.undo(&f);
        }
    }

    fn feed(&mut self, be: &B, f: &mut Feed<B::Tensor>, bytes: &[u8]) -> Result<()> {
        if f.pos + bytes.len() as u64 > f.size {
            return Err(file_err(
                &f.name,
                format!(
                    "more than the {} bytes announced ({} so far)",
                    f.size,
                    f.pos + bytes.len() as u64
                ),
            ));
        }
        f.hasher.update(bytes);
        self.stats.bytes_in += bytes.len() as u64;
        let start = f.pos;
        f.pos += bytes.len() as u64;
        if f.tensors.is_some() {
            return self.tensors(be, f, start, bytes);
        }
        f.head.extend_from_slice(bytes);
        if (f.head.len() as u64) < f.need {
            return Ok(());
        }
        match Gguf::parse(&f.head, f.size) {
            Err(GgufError::Truncated { needed, .. }) if needed > f.head.len() as u64 => {
                // At least twice what is here before the next attempt, so a header that
                // arrives in small chunks is parsed a logarithmic number of times.
                f.need = needed.max(2 * f.head.len() as u64).min(f.size);
                Ok(())
            }
            Err(e) => Err(file_err(&f.name, e.to_string())),
            Ok(h) => {
                self.header(be, f, h)?;
                let head = std::mem::take(&mut f.head);
                self.tensors(be, f, 0, &head)
            }
        }
    }

    /// A file's header is in: its set and part, the limits, and (once both sets are known)
    /// the config.
    fn header(&mut self, be: &B, f: &mut Feed<B::Tensor>, h: Gguf) -> Result<()> {
        let (no, count) = h.split().map_err(|e| file_err(&f.name, e.to_string()))?;
        let mut tensors = h.tensors.clone();
        tensors.sort_by_key(|t| t.offset);
        // The metadata (a whole vocabulary: tens of MB parsed) is kept once, by its set.
        let mut h = Some(h);
        let base = split_part(&f.name).map_or(f.name.as_str(), |(b, ..)| b);
        let role = if no == 0 {
            let arch = h.as_ref().and_then(|h| h.get("general.architecture"));
            let role = match arch.and_then(|v| v.as_str()) {
                Some("clip") => Role::Mmproj,
                _ => Role::Text,
            };
            let slot = &mut self.sets[role as usize];
            if let Some(s) = slot {
                if s.base != base || s.count != count {
                    return Err(file_err(
                        &f.name,
                        format!("a second {} (the first was {})", role.name(), s.base),
                    ));
                }
            } else {
                *slot = h.take().map(|header| Set {
                    header,
                    base: base.to_string(),
                    count,
                    done: vec![false; count as usize],
                });
            }
            role
        } else {
            let found = self.sets.iter().position(|s| {
                s.as_ref()
                    .is_some_and(|s| s.base == base && s.count == count)
            });
            match found {
                Some(0) => Role::Text,
                Some(_) => Role::Mmproj,
                None => {
                    return Err(file_err(
                        &f.name,
                        format!(
                            "split part {} of {count} given before the set's first part",
                            no + 1
                        ),
                    ))
                }
            }
        };
        if self.sets[role as usize]
            .as_ref()
            .and_then(|s| s.done.get(no as usize))
            .copied()
            .unwrap_or(true)
        {
            return Err(file_err(
                &f.name,
                format!("split part {} of {count} already loaded", no + 1),
            ));
        }
        // Limits, before any tensor bytes are used.
        let mut total = 0u64;
        drop(h);
        for t in &tensors {
            let (row, bytes) = stored_size(be, t);
            if let Some(max) = self.limits.max_row_bytes {
                if row > max {
                    return Err(Error::AdapterLimit(format!(
                        "{}: tensor {} needs {row}-byte rows as stored; the adapter binds at \
                         most {max} bytes",
                        f.name, t.name
                    )));
                }
            }
            total += bytes;
        }
        self.stats.planned_bytes += total;
        f.planned = total;
        if let Some(max) = self.limits.max_total_bytes {
            if self.stats.planned_bytes > max {
                return Err(Error::AdapterLimit(format!(
                    "the model's weights need at least {} bytes as stored (so far, with {}); \
                     this backend can hold {max}",
                    self.stats.planned_bytes, f.name
                )));
            }
        }
        if let [Some(t), Some(m)] = &self.sets {
            visionthink_core::gguf::model_config(&t.header, &m.header)
                .map_err(|e| file_err(&f.name, e.to_string()))?;
        }
        f.role = Some(role);
        f.part = no as usize;
        f.tensors = Some(tensors);
        Ok(())
    }

    /// Bytes `bytes` at file offset `start`, after the header: tensor data in offset order.
    fn tensors(&mut self, be: &B, f: &mut Feed<B::Tensor>, start: u64, bytes: &[u8]) -> Result<()> {
        let Some(tensors) = f.tensors.take() else {
            return Ok(());
        };
        let r = self.tensor_bytes(be, f, &tensors, start, bytes);
        f.tensors = Some(tensors);
        r
    }

    fn tensor_bytes(
        &mut self,
        be: &B,
        f: &mut Feed<B::Tensor>,
        tensors: &[TensorInfo],
        start: u64,
        bytes: &[u8],
    ) -> Result<()> {
        let mut at = start;
        let mut rest = bytes;
        while !rest.is_empty() {
            let Some(t) = tensors.get(f.next) else {
                return Ok(()); // padding after the last tensor
            };
            let end = t.offset + t.bytes;
            if at < t.offset {
                let skip = (t.offset - at).min(rest.len() as u64) as usize;
                at += skip as u64;
                rest = &rest[skip..];
                continue;
            }
            let take = (end - at).min(rest.len() as u64) as usize;
            if at == t.offset && take as u64 != t.bytes {
                // A tensor spanning chunks: written to the backend piece by piece if it can.
                f.writer = self.writer(be, t)?;
            }
            if let Some(w) = f.writer.as_mut() {
                let fname = f.name.clone();
                let bad = |e: Error| file_err(&fname, format!("tensor {}: {e}", t.name));
                w.write(&rest[..take]).map_err(bad)?;
                if at + take as u64 == end {
                    if let Some(w) = f.writer.take() {
                        let made = w.finish().map_err(bad)?;
                        self.stats.tensors += 1;
                        self.stats.quantized += 1;
                        self.put_target(f, t, made)?;
                    }
                }
            } else if f.buf.is_empty() && take as u64 == t.bytes {
                // The whole tensor is in this chunk: no copy.
                self.stats.peak_buffered = self.stats.peak_buffered.max(t.bytes);
                self.place(be, f, t, &rest[..take])?;
            } else {
                f.buf.extend_from_slice(&rest[..take]);
                self.stats.peak_buffered = self.stats.peak_buffered.max(f.buf.len() as u64);
                if f.buf.len() as u64 == t.bytes {
                    let buf = std::mem::take(&mut f.buf);
                    self.place(be, f, t, &buf)?;
                }
            }
            if at + take as u64 == end {
                f.next += 1;
            }
            at += take as u64;
            rest = &rest[take..];
        }
        Ok(())
    }

    /// The backend's piecewise writer for a tensor whose blocks it keeps, if it has one.
    fn writer(&self, be: &B, t: &TensorInfo) -> Result<Option<Box<dyn QuantWriter<B::Tensor>>>> {
        let hf = match target(&t.name) {
            Some(Target::Whole(hf) | Target::Rows { hf, .. }) => hf,
            _ => return Ok(None),
        };
        match kept_as_blocks(be, t) {
            Some(shape) => be.quantized_writer(&hf, t.ty, shape),
            None => Ok(None),
        }
    }

    /// A tensor made from a whole GGUF tensor, put where [`target`] says.
    fn put_target(
        &mut self,
        f: &mut Feed<B::Tensor>,
        t: &TensorInfo,
        made: B::Tensor,
    ) -> Result<()> {
        match target(&t.name) {
            Some(Target::Whole(hf)) => self.put(f, &hf, 0, 1, made),
            Some(Target::Rows { hf, part, parts }) => self.put(f, &hf, part, parts, made),
            _ => Ok(()),
        }
    }

    /// One complete tensor: made on the backend and put in its place.
    fn place(
        &mut self,
        be: &B,
        f: &mut Feed<B::Tensor>,
        t: &TensorInfo,
        bytes: &[u8],
    ) -> Result<()> {
        let Some(to) = target(&t.name) else {
            return Ok(()); // a tensor the graph does not use
        };
        let fname = f.name.clone();
        let bad = |e: Error| file_err(&fname, format!("tensor {}: {e}", t.name));
        match to {
            Target::Whole(hf) | Target::Rows { hf, .. } => {
                let made = self.make(be, &hf, t, bytes).map_err(bad)?;
                self.put_target(f, t, made)
            }
            Target::Temporal { hf, slice } => {
                let values = dequantize(t.ty, bytes, t.elements() as usize).map_err(bad)?;
                let pair = self.slices.entry(hf.clone()).or_default();
                pair[slice] = Some((values, t.shape()));
                f.made.push(Made::Slice(hf.clone(), slice));
                let [Some(first), Some(second)] = pair else {
                    return Ok(());
                };
                // The slices stay until the end: if this file fails its checksum, the other
                // slice (perhaps from an earlier part) is still there when it comes again.
                let (out, full) = join_temporal(&format!("{hf} (GGUF {})", t.name), first, second)?;
                let shape = [full[0], out.len() / full[0].max(1)];
                let made = be.weight(out, &shape).map_err(bad)?;
                self.stats.tensors += 1;
                self.put(f, &hf, 0, 1, made)
            }
        }
    }

    fn make(&mut self, be: &B, hf: &str, t: &TensorInfo, bytes: &[u8]) -> Result<B::Tensor> {
        self.stats.tensors += 1;
        if let Some(shape) = kept_as_blocks(be, t) {
            self.stats.quantized += 1;
            return be.quantized_weight(&QuantView {
                name: hf,
                ty: t.ty,
                shape,
                bytes,
                file_backed: false,
            });
        }
        let values = dequantize(t.ty, bytes, t.elements() as usize)?;
        let shape = match t.shape().as_slice() {
            [n] => vec![*n],
            [rows, ..] => vec![*rows, values.len() / (*rows).max(1)],
            [] => vec![values.len()],
        };
        be.weight(values, &shape)
    }

    fn put(
        &mut self,
        f: &mut Feed<B::Tensor>,
        hf: &str,
        part: usize,
        parts: usize,
        t: B::Tensor,
    ) -> Result<()> {
        let blocks = self
            .blocks
            .entry(hf.to_string())
            .or_insert_with(|| (0..parts).map(|_| None).collect());
        match blocks.get_mut(part) {
            Some(slot @ None) => *slot = Some(t),
            _ => {
                return Err(file_err(
                    &f.name,
                    format!("{hf} (row block {part}) appears twice"),
                ))
            }
        }
        f.made.push(Made::Block(hf.to_string(), part));
        Ok(())
    }

    /// Ends the current file: every tensor complete, the size and the SHA-256 as announced.
    /// On a checksum mismatch every tensor made from the file is dropped, and the same file
    /// can be fed again.
    pub fn end_file(&mut self) -> Result<()> {
        let f = self
            .file
            .take()
            .ok_or_else(|| Error::Input("end_file before begin_file".into()))?;
        let Some(tensors) = &f.tensors else {
            return Err(file_err(
                &f.name,
                format!("ended after {} bytes, inside the GGUF header", f.pos),
            ));
        };
        if let Some(t) = tensors.get(f.next) {
            self.undo(&f);
            return Err(file_err(
                &f.name,
                format!(
                    "ended after {} of {} bytes, inside tensor {} ({} bytes at {})",
                    f.pos, f.size, t.name, t.bytes, t.offset
                ),
            ));
        }
        if let Some(want) = f.sha256 {
            let got: [u8; 32] = f.hasher.clone().finalize().into();
            if got != want {
                self.undo(&f);
                let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
                return Err(file_err(
                    &f.name,
                    format!(
                        "SHA-256 {} does not match the manifest's {}",
                        hex(&got),
                        hex(&want)
                    ),
                ));
            }
        }
        if let Some(set) = f.role.and_then(|r| self.sets[r as usize].as_mut()) {
            if let Some(d) = set.done.get_mut(f.part) {
                *d = true;
            }
        }
        Ok(())
    }

    /// Drops what a file made (a failed checksum or a truncated file), so it can be fed again.
    fn undo(&mut self, f: &Feed<B::Tensor>) {
        // A refetched file is planned again when its header comes back.
        self.stats.planned_bytes -= f.planned;
        for m in &f.made {
            match m {
                Made::Block(hf, part) => {
                    if let Some(b) = self.blocks.get_mut(hf) {
                        if let Some(slot) = b.get_mut(*part) {
                            *slot = None;
                        }
                        if b.iter().all(Option::is_none) {
                            self.blocks.remove(hf);
                        }
                    }
                }
                Made::Slice(hf, s) => {
                    if let Some(pair) = self.slices.get_mut(hf) {
                        pair[*s] = None;
                    }
                }
            }
        }
        if let Some(role) = f.role {
            let first = f.part == 0;
            let untouched = self.sets[role as usize]
                .as_ref()
                .is_some_and(|s| s.done.iter().all(|d| !d));
            if first && untouched {
                // The set's header came from this file: it is read again.
                self.sets[role as usize] = None;
            }
        }
    }

    /// The model and its tokenizer, configs and template (from the headers' metadata), once
    /// every part of both sets is in.
    pub fn finish(mut self, be: &B) -> Result<(Qwen25VL<B>, ModelFiles)> {
        if let Some(f) = &self.file {
            return Err(file_err(&f.name, "still being loaded (end_file first)"));
        }
        for role in [Role::Text, Role::Mmproj] {
            let set = self.sets[role as usize]
                .as_ref()
                .ok_or_else(|| Error::Config(format!("no {} was loaded", role.name())))?;
            if let Some(missing) = set.done.iter().position(|d| !d) {
                return Err(file_err(
                    &set.base,
                    format!("split part {} of {} was not loaded", missing + 1, set.count),
                ));
            }
        }
        let [Some(text), Some(mm)] = &self.sets else {
            return Err(Error::Config(
                "a GGUF model needs a text and an mmproj file".into(),
            ));
        };
        let files = ModelFiles::from_gguf(&text.header, &mm.header)?;
        let cfg = files
            .config
            .clone()
            .ok_or_else(|| Error::Config("no model config in the GGUF metadata".into()))?;
        self.slices.clear();
        let has_head = self.blocks.contains_key("lm_head.weight");
        let blocks = &mut self.blocks;
        let model = Qwen25VL::assemble(be, &cfg, has_head, &mut |name, parts| {
            let b = blocks.remove(name)?;
            (b.len() == parts).then_some(())?;
            b.into_iter().collect()
        })?;
        Ok((model, files))
    }
}
