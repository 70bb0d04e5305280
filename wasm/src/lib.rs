//! # visionthink-wasm
//!
//! The browser build of VisionThink: [`Engine`] (exported to JavaScript by wasm-bindgen) loads
//! a Qwen2.5-VL checkpoint from bytes and answers questions about images with the low-res-first
//! protocol, on WebGPU (our wgpu executor) or, when WebGPU or an adapter is missing, on the CPU
//! (candle compiled to wasm32 with SIMD128). Preprocessing, tokenization, prompts and the
//! protocol are the shared core, unchanged.
//!
//! Errors reach JavaScript as `Error`s with stable names: `WebGPUNotAvailable`,
//! `AdapterLimitError`, `ModelLoadError`, `OutOfMemory`, `DeviceLost`, `ImageError`,
//! `InputError`, `ProtocolError`, `BackendError`, `AbortError`, `TypeError`.
//!
//! The npm package (`web/`) wraps this in a TypeScript API (fetching with progress and the Cache
//! API, async iteration, Web Worker). [`chat::ChatSession`] runs the same protocol against a chat
//! server (`createEngine({ endpoint })`).

pub mod chat;
pub mod runner;

use runner::{AskOptions, Event, Host, Model, RunError};
use std::cell::Cell;
use std::rc::Rc;
use visionthink_core::model_files::{ModelFiles, ModelFilesError};
use visionthink_model::gguf_stream::{GgufStream, Limits};
use visionthink_model::wgpu_backend::WeightStorage;
use visionthink_model::{CandleBackend, WeightStore, WgpuBackend, WgpuOptions};
use wasm_bindgen::prelude::*;

/// A JS `Error` with a stable `name`.
fn js_error(name: &str, message: &str) -> JsValue {
    let e = js_sys::Error::new(message);
    e.set_name(name);
    e.into()
}

impl From<RunError> for JsValue {
    fn from(e: RunError) -> Self {
        js_error(e.name(), &e.to_string())
    }
}

/// Load options (`{ backend: "auto" | "webgpu" | "cpu", weights: "f32" | "f16" | "int8" }`;
/// the older `int8: true` / `f16: true` are still read).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LoadOptions {
    backend: Option<String>,
    weights: Option<String>,
    int8: bool,
    f16: bool,
}

impl LoadOptions {
    /// The weight storage, parsed once here (`TypeError` for an unknown name, or for
    /// `weights` given together with the older flags).
    fn weight_storage(&self) -> Result<WeightStorage, JsValue> {
        match (&self.weights, self.int8 || self.f16) {
            (Some(_), true) => Err(js_error(
                "TypeError",
                "options: give `weights` or the older `int8` / `f16`, not both",
            )),
            (Some(w), false) => {
                WeightStorage::parse(w).map_err(|e| js_error("TypeError", &format!("options: {e}")))
            }
            (None, _) => Ok(WeightStorage::from_flags(self.int8, self.f16)),
        }
    }
}

impl LoadOptions {
    /// The WebGPU executor the options ask for (`None`: the CPU), with the notice of an `auto`
    /// fallback.
    async fn executor(&self) -> Result<(Option<WgpuBackend>, Option<String>), JsValue> {
        let want = self.backend.as_deref().unwrap_or("auto");
        let gpu_opts = WgpuOptions {
            weights: self.weight_storage()?,
            ..Default::default()
        };
        match want {
            "cpu" => Ok((None, None)),
            "webgpu" | "auto" => match WgpuBackend::new(gpu_opts).await {
                Ok(be) => Ok((Some(be), None)),
                Err(e) if want == "auto" => Ok((
                    None,
                    Some(format!("WebGPU is not available ({e}); running on the CPU")),
                )),
                Err(e) => Err(RunError::from(e).into()),
            },
            other => Err(js_error(
                "TypeError",
                &format!("backend must be auto, webgpu or cpu, not {other:?}"),
            )),
        }
    }
}

fn options<T: serde::de::DeserializeOwned + Default>(v: JsValue) -> Result<T, JsValue> {
    if v.is_undefined() || v.is_null() {
        return Ok(T::default());
    }
    serde_wasm_bindgen::from_value(v).map_err(|e| js_error("TypeError", &format!("options: {e}")))
}

/// Reads `name` from a JS object or `Map` of `Uint8Array`s.
fn file_bytes(files: &JsValue, name: &str) -> Result<Option<Vec<u8>>, JsValue> {
    let v = if let Some(map) = files.dyn_ref::<js_sys::Map>() {
        map.get(&JsValue::from_str(name))
    } else {
        js_sys::Reflect::get(files, &JsValue::from_str(name))?
    };
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    let arr = v
        .dyn_into::<js_sys::Uint8Array>()
        .map_err(|_| js_error("TypeError", &format!("{name} must be a Uint8Array")))?;
    Ok(Some(arr.to_vec()))
}

fn file_names(files: &JsValue) -> Vec<String> {
    let keys = match files.dyn_ref::<js_sys::Map>() {
        Some(m) => js_sys::Array::from(&m.keys().into()),
        None => js_sys::Object::keys(files.unchecked_ref::<js_sys::Object>()),
    };
    keys.iter().filter_map(|k| k.as_string()).collect()
}

/// A loaded model.
#[wasm_bindgen]
pub struct Engine {
    model: Rc<Model>,
    cancel: Rc<Cell<bool>>,
    notice: Option<String>,
}

struct BrowserHost {
    cancel: Rc<Cell<bool>>,
}

fn now_ms() -> f64 {
    let perf = js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("performance"))
        .ok()
        .filter(|p| !p.is_undefined());
    match perf.and_then(|p| {
        let f = js_sys::Reflect::get(&p, &JsValue::from_str("now")).ok()?;
        f.dyn_into::<js_sys::Function>().ok()?.call0(&p).ok()
    }) {
        Some(v) => v.as_f64().unwrap_or(0.0),
        None => js_sys::Date::now(),
    }
}

impl Host for BrowserHost {
    fn now_ms(&self) -> f64 {
        now_ms()
    }
    async fn yield_now(&self) {
        // A macrotask (setTimeout 0), so input events and `cancel()` get to run.
        let promise = js_sys::Promise::new(&mut |resolve, _| {
            let set_timeout =
                js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("setTimeout"))
                    .ok()
                    .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
            match set_timeout {
                Some(f) => {
                    let _ = f.call2(&JsValue::NULL, &resolve, &JsValue::from(0));
                }
                None => {
                    let _ = resolve.call0(&JsValue::NULL);
                }
            }
        });
        let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
    }
    fn cancelled(&self) -> bool {
        self.cancel.get()
    }
}

#[wasm_bindgen]
impl Engine {
    /// Loads a model from its files: `files` maps names (`config.json`, `tokenizer.json`,
    /// `model.safetensors` or shards, optional configs and chat template) to `Uint8Array`s.
    /// With `backend: "auto"` (default) a missing WebGPU falls back to the CPU with a
    /// [`Engine::notice`].
    pub async fn load(files: JsValue, options_js: JsValue) -> Result<Engine, JsValue> {
        let opts: LoadOptions = options(options_js)?;
        let parsed = ModelFiles::parse(|name| file_bytes(&files, name)).map_err(|e| match e {
            ModelFilesError::Read(e) => e,
            ModelFilesError::File { file, error } => {
                js_error("ModelLoadError", &format!("{file}: {error}"))
            }
        })?;
        let mut shards = Vec::new();
        for name in file_names(&files) {
            if name.ends_with(".safetensors") {
                if let Some(b) = file_bytes(&files, &name)? {
                    shards.push((name, b));
                }
            }
        }
        if shards.is_empty() {
            return Err(js_error(
                "ModelLoadError",
                "no *.safetensors file among the model files",
            ));
        }
        let store = WeightStore::from_bytes(shards).map_err(RunError::from)?;
        let (gpu, notice) = opts.executor().await?;
        let model = Model::new(parsed, &store, gpu)?;
        Ok(Engine {
            model: Rc::new(model),
            cancel: Rc::new(Cell::new(false)),
            notice,
        })
    }

    /// `"webgpu"` or `"cpu"`.
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        self.model.backend().to_string()
    }

    /// Why the engine fell back to the CPU, if it did.
    #[wasm_bindgen(getter)]
    pub fn notice(&self) -> Option<String> {
        self.notice.clone()
    }

    /// Adapter facts (`{name, backend, maxBinding, maxBuffer, shaderF16}`), or `null` on CPU.
    #[wasm_bindgen(js_name = adapterInfo)]
    pub fn adapter_info(&self) -> JsValue {
        match &self.model.exec {
            runner::Exec::Gpu(be, _) => {
                let i = be.info();
                let o = js_sys::Object::new();
                let set = |k: &str, v: JsValue| {
                    let _ = js_sys::Reflect::set(&o, &JsValue::from_str(k), &v);
                };
                set("name", JsValue::from_str(&i.name));
                set("backend", JsValue::from_str(&i.backend));
                set("maxBinding", JsValue::from_f64(i.max_binding as f64));
                set("maxBuffer", JsValue::from_f64(i.max_buffer as f64));
                set("shaderF16", JsValue::from_bool(i.shader_f16));
                o.into()
            }
            runner::Exec::Cpu(..) => JsValue::NULL,
        }
    }

    /// Answers `question` about an encoded image (PNG/JPEG/WebP/GIF bytes). `onEvent` receives
    /// `{type: "token", turn, id, text}` per token and `{type: "resize"}` when the model asks
    /// for the full image. Resolves to the answer record (the Rust SDK's fields plus `backend`).
    /// Options: `{maxNewTokens, temperature, topP, topK, seed, forcedTurns}`.
    pub fn ask(
        &self,
        image: js_sys::Uint8Array,
        question: String,
        options_js: JsValue,
        on_event: Option<js_sys::Function>,
    ) -> js_sys::Promise {
        let model = self.model.clone();
        let cancel = self.cancel.clone();
        cancel.set(false);
        let bytes = image.to_vec();
        wasm_bindgen_futures::future_to_promise(async move {
            let opts: AskOptions = options(options_js)?;
            let host = BrowserHost { cancel };
            let mut emit = |ev: Event<'_>| {
                let Some(f) = &on_event else { return };
                let o = js_sys::Object::new();
                let set = |k: &str, v: JsValue| {
                    let _ = js_sys::Reflect::set(&o, &JsValue::from_str(k), &v);
                };
                match ev {
                    Event::Token { turn, id, text } => {
                        set("type", "token".into());
                        set("turn", JsValue::from(turn as u32));
                        set("id", JsValue::from(id));
                        set("text", JsValue::from_str(text));
                    }
                    Event::ResizeRequested => set("type", "resize".into()),
                }
                let _ = f.call1(&JsValue::NULL, &o);
            };
            let answer = model
                .ask(&bytes, &question, &opts, &host, &mut emit)
                .await?;
            let ser = serde_wasm_bindgen::Serializer::json_compatible();
            serde::Serialize::serialize(&answer, &ser)
                .map_err(|e| js_error("BackendError", &e.to_string()))
        })
    }

    /// Stops the running `ask` at the next token (it rejects with an `AbortError`).
    pub fn cancel(&self) {
        self.cancel.set(true);
    }

    /// Destroys the GPU device now, as a lost device would be (its memory is freed at once): a
    /// running `ask` rejects with `DeviceLost` at its next readback, and so does every later one
    /// on this engine. (The TypeScript engine then loads the model again on a fresh device at
    /// its next `ask`.) No effect on the CPU backend.
    #[wasm_bindgen(js_name = destroyDevice)]
    pub fn destroy_device(&self) {
        if let runner::Exec::Gpu(be, _) = &self.model.exec {
            be.destroy();
        }
    }
}

/// What the CPU fallback may hold, in bytes: a wasm32 heap is at most 4 GiB, and the
/// activations, the tokenizer and the page need the rest.
const CPU_WEIGHT_BYTES: u64 = 3 << 30;

/// The executor of a streaming load and its loader.
#[allow(clippy::large_enum_variant)]
enum Loading {
    Gpu(WgpuBackend, GgufStream<WgpuBackend>),
    Cpu(CandleBackend, GgufStream<CandleBackend>),
}

/// Loads a llama.cpp GGUF model (a text GGUF and an mmproj GGUF, whole files or `gguf-split`
/// parts) as its bytes arrive: `beginFile(name, size, sha256?)`, `push(chunk)`… `endFile()`
/// per file, then `finish()` for the [`Engine`]. Each tensor goes to the GPU (or the CPU
/// fallback's quantized blocks) as soon as its bytes are in, so the wasm heap holds one tensor
/// at a time, never a file. A model that cannot fit the adapter (a row wider than
/// `maxStorageBufferBindingSize`) or the CPU fallback's heap is refused as soon as a header is
/// in (`AdapterLimitError`), before its weights are downloaded; a file whose SHA-256 does not
/// match is dropped (`ModelLoadError`) and can be pushed again.
#[wasm_bindgen]
pub struct GgufLoader {
    loading: Loading,
    notice: Option<String>,
}

fn hex32(s: &str) -> Result<[u8; 32], JsValue> {
    let bad = || js_error("TypeError", &format!("sha256 {s:?} is not 64 hex digits"));
    if s.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

#[wasm_bindgen]
impl GgufLoader {
    /// A loader on the executor the options ask for (`{ backend, weights }`, as
    /// [`Engine::load`]; `weights` applies to the file's float matrices, blocks stay blocks).
    pub async fn create(options_js: JsValue) -> Result<GgufLoader, JsValue> {
        let opts: LoadOptions = options(options_js)?;
        let (gpu, notice) = opts.executor().await?;
        let loading = match gpu {
            Some(be) => {
                let i = be.info();
                let limits = Limits {
                    max_row_bytes: Some(i.max_binding.min(i.max_buffer)),
                    max_total_bytes: None,
                };
                Loading::Gpu(be, GgufStream::new(limits))
            }
            None => Loading::Cpu(
                CandleBackend::cpu(),
                GgufStream::new(Limits {
                    max_row_bytes: None,
                    max_total_bytes: Some(CPU_WEIGHT_BYTES),
                }),
            ),
        };
        Ok(GgufLoader { loading, notice })
    }

    /// Starts a file of `size` bytes; `sha256` (hex) is checked at [`Self::end_file`].
    #[wasm_bindgen(js_name = beginFile)]
    pub fn begin_file(
        &mut self,
        name: &str,
        size: f64,
        sha256: Option<String>,
    ) -> Result<(), JsValue> {
        let sha = sha256.as_deref().map(hex32).transpose()?;
        if !(size >= 0.0 && size.fract() == 0.0) {
            return Err(js_error(
                "TypeError",
                &format!("size {size} is not a byte count"),
            ));
        }
        let r = match &mut self.loading {
            Loading::Gpu(_, s) => s.begin_file(name, size as u64, sha),
            Loading::Cpu(_, s) => s.begin_file(name, size as u64, sha),
        };
        r.map_err(|e| RunError::from(e).into())
    }

    /// The next bytes of the current file (any chunk size).
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), JsValue> {
        let r = match &mut self.loading {
            Loading::Gpu(be, s) => s.push(be, chunk),
            Loading::Cpu(be, s) => s.push(be, chunk),
        };
        r.map_err(|e| RunError::from(e).into())
    }

    /// Ends the current file (size and SHA-256 checked).
    #[wasm_bindgen(js_name = endFile)]
    pub fn end_file(&mut self) -> Result<(), JsValue> {
        let r = match &mut self.loading {
            Loading::Gpu(_, s) => s.end_file(),
            Loading::Cpu(_, s) => s.end_file(),
        };
        r.map_err(|e| RunError::from(e).into())
    }

    /// Drops the current file and what was made from it (an interrupted download).
    #[wasm_bindgen(js_name = abortFile)]
    pub fn abort_file(&mut self) {
        match &mut self.loading {
            Loading::Gpu(_, s) => s.abort_file(),
            Loading::Cpu(_, s) => s.abort_file(),
        }
    }

    /// `{bytesIn, peakBuffered, tensors, quantized, plannedBytes}` so far.
    pub fn stats(&self) -> JsValue {
        let st = match &self.loading {
            Loading::Gpu(_, s) => s.stats(),
            Loading::Cpu(_, s) => s.stats(),
        };
        let o = js_sys::Object::new();
        for (k, v) in [
            ("bytesIn", st.bytes_in),
            ("peakBuffered", st.peak_buffered),
            ("tensors", st.tensors),
            ("quantized", st.quantized),
            ("plannedBytes", st.planned_bytes),
        ] {
            let _ = js_sys::Reflect::set(&o, &JsValue::from_str(k), &JsValue::from_f64(v as f64));
        }
        o.into()
    }

    /// `"webgpu"` or `"cpu"`.
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        match self.loading {
            Loading::Gpu(..) => "webgpu".into(),
            Loading::Cpu(..) => "cpu".into(),
        }
    }

    /// The engine, once every part of both files is in (tokenizer, configs and chat template
    /// from the GGUF metadata).
    pub fn finish(self) -> Result<Engine, JsValue> {
        let model = match self.loading {
            Loading::Gpu(be, s) => {
                let (m, files) = s.finish(&be).map_err(RunError::from)?;
                Model::from_parts(files, runner::Exec::Gpu(be, m))?
            }
            Loading::Cpu(be, s) => {
                let (m, files) = s.finish(&be).map_err(RunError::from)?;
                Model::from_parts(files, runner::Exec::Cpu(be, m))?
            }
        };
        Ok(Engine {
            model: Rc::new(model),
            cancel: Rc::new(Cell::new(false)),
            notice: self.notice,
        })
    }
}

/// Bytes of this module's linear memory (the wasm heap). A wasm heap never shrinks, so after a
/// load this is its peak.
#[wasm_bindgen(js_name = wasmHeapBytes)]
pub fn wasm_heap_bytes() -> f64 {
    wasm_bindgen::memory()
        .unchecked_into::<js_sys::WebAssembly::Memory>()
        .buffer()
        .unchecked_into::<js_sys::ArrayBuffer>()
        .byte_length() as f64
}

/// The half-size image the model sees first (the official LANCZOS downscale), as
/// `{width, height, rgba}` for display.
#[wasm_bindgen(js_name = lowResPreview)]
pub fn low_res_preview(image: js_sys::Uint8Array) -> Result<JsValue, JsValue> {
    use visionthink_core::image::{decode, inference_low_res, DecodeLimits};
    let img = decode(&image.to_vec(), DecodeLimits::default()).map_err(RunError::from)?;
    let low = inference_low_res(&img).map_err(RunError::from)?;
    let mut rgba = Vec::with_capacity(low.data.len() / 3 * 4);
    for px in low.data.chunks_exact(3) {
        rgba.extend_from_slice(&[px[0], px[1], px[2], 255]);
    }
    let o = js_sys::Object::new();
    js_sys::Reflect::set(&o, &"width".into(), &JsValue::from(low.width))?;
    js_sys::Reflect::set(&o, &"height".into(), &JsValue::from(low.height))?;
    js_sys::Reflect::set(
        &o,
        &"rgba".into(),
        &js_sys::Uint8ClampedArray::from(&rgba[..]).into(),
    )?;
    Ok(o.into())
}
