//! The low-res-first episode in a browser: the same core (decode, Pillow-exact resampling,
//! tokenizer, prompts, protocol state machine) and the same model graph as the Rust SDK, with an
//! `async` token loop so the page stays responsive: the WebGPU executor reads logits back with
//! `mapAsync`, the CPU executor yields to the event loop between tokens.

use serde::Serialize;
pub use visionthink_core::answer::{Answer, Event, Timings};
use visionthink_core::image::{decode, preprocess, visual_tokens, DecodeLimits, PixelValues};
use visionthink_core::model_files::ModelFiles;
use visionthink_core::protocol::{Episode, EpisodeImages, ProtocolConfig, Step};
use visionthink_core::rope::{extend_rope_index, MropeBuilder, Positions};
use visionthink_core::tokenizer::StreamDecoder;
use visionthink_core::{config::ModelConfig, tokens};
use visionthink_model::generate::{Sampler, SamplingConfig};
use visionthink_model::{Backend, CandleBackend, KvCache, Qwen25VL, WgpuBackend};

/// Everything that can go wrong, with the stable JS error name of each kind.
#[derive(Debug)]
pub enum RunError {
    /// From the model (loading, executor, limits, device).
    Model(visionthink_model::Error),
    /// From the core (image, tokenizer, protocol).
    Core(visionthink_core::Error),
    /// Cancelled by the caller.
    Cancelled,
    /// Invalid options.
    Options(String),
}

impl From<visionthink_model::Error> for RunError {
    fn from(e: visionthink_model::Error) -> Self {
        Self::Model(e)
    }
}

impl From<visionthink_core::Error> for RunError {
    fn from(e: visionthink_core::Error) -> Self {
        Self::Core(e)
    }
}

impl RunError {
    /// The JS `Error.name`.
    pub fn name(&self) -> &'static str {
        use visionthink_model::Error as M;
        match self {
            RunError::Model(M::NoAdapter(_)) => "WebGPUNotAvailable",
            RunError::Model(M::AdapterLimit(_)) => "AdapterLimitError",
            RunError::Model(M::OutOfMemory(_)) => "OutOfMemory",
            RunError::Model(M::DeviceLost(_)) => "DeviceLost",
            RunError::Model(M::Input(_)) => "InputError",
            RunError::Model(M::Backend(_)) => "BackendError",
            RunError::Model(_) => "ModelLoadError",
            RunError::Core(e) if is_image_error(e) => "ImageError",
            RunError::Core(_) => "ProtocolError",
            RunError::Cancelled => "AbortError",
            RunError::Options(_) => "TypeError",
        }
    }
}

fn is_image_error(e: &visionthink_core::Error) -> bool {
    use visionthink_core::Error as C;
    matches!(
        e,
        C::ImageDecode { .. }
            | C::ImageTooLarge { .. }
            | C::ImageTooSmall { .. }
            | C::AspectRatio { .. }
    )
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Model(e) => write!(f, "{e}"),
            RunError::Core(e) => write!(f, "{e}"),
            RunError::Cancelled => write!(f, "cancelled"),
            RunError::Options(m) => write!(f, "invalid options: {m}"),
        }
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, RunError>;

/// An executor with its model (one per engine, never moved in a hot path).
#[allow(clippy::large_enum_variant)]
pub enum Exec {
    /// WebGPU.
    Gpu(WgpuBackend, Qwen25VL<WgpuBackend>),
    /// CPU (candle compiled to wasm32).
    Cpu(CandleBackend, Qwen25VL<CandleBackend>),
}

enum Cache {
    Gpu(KvCache<WgpuBackend>),
    Cpu(KvCache<CandleBackend>),
}

/// A loaded model.
pub struct Model {
    /// Tokenizer, configs, template.
    pub files: ModelFiles,
    /// The model config.
    pub config: ModelConfig,
    /// The executor.
    pub exec: Exec,
}

/// What the page needs to know about time (injected: `performance.now()` in browsers).
pub trait Host {
    /// Milliseconds since an arbitrary origin.
    fn now_ms(&self) -> f64;
    /// Lets the event loop run (cancellation, rendering) between CPU tokens.
    fn yield_now(&self) -> impl std::future::Future<Output = ()>;
    /// Whether the caller asked to stop.
    fn cancelled(&self) -> bool;
}

/// Options of one `ask`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AskOptions {
    /// New-token budget per turn.
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    /// Nucleus mass.
    pub top_p: f64,
    /// Top-k (0 = off).
    pub top_k: usize,
    /// Sampling seed.
    pub seed: u64,
    /// Teacher-forced turn texts (replay a trajectory).
    pub forced_turns: Vec<String>,
}

impl Default for AskOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 1024,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            forced_turns: Vec::new(),
        }
    }
}

/// The answer record (the Rust SDK's `Answer`) and the executor that produced it.
#[derive(Debug, Clone, Serialize)]
pub struct BrowserAnswer {
    /// The record, its fields inlined.
    #[serde(flatten)]
    pub answer: Answer,
    /// `"webgpu"` or `"cpu"`.
    pub backend: &'static str,
}

impl Model {
    /// Builds the executor's model from the parsed files and the weights.
    pub fn new(
        files: ModelFiles,
        store: &visionthink_model::WeightStore,
        gpu: Option<WgpuBackend>,
    ) -> Result<Self> {
        let config = files.config.clone().ok_or_else(|| {
            RunError::Model(visionthink_model::Error::Config(
                "missing config.json".into(),
            ))
        })?;
        let exec = match gpu {
            Some(be) => {
                let m = Qwen25VL::load(&be, &config, store)?;
                Exec::Gpu(be, m)
            }
            None => {
                let be = CandleBackend::cpu();
                let m = Qwen25VL::load(&be, &config, store)?;
                Exec::Cpu(be, m)
            }
        };
        Ok(Self {
            files,
            config,
            exec,
        })
    }

    /// `"webgpu"` or `"cpu"`.
    pub fn backend(&self) -> &'static str {
        match self.exec {
            Exec::Gpu(..) => "webgpu",
            Exec::Cpu(..) => "cpu",
        }
    }

    fn merge(&self) -> u32 {
        self.files.preprocessor.merge_size
    }

    /// Answers a question about an encoded image (PNG, JPEG, WebP, GIF) with the low-res-first
    /// protocol.
    pub async fn ask(
        &self,
        image: &[u8],
        question: &str,
        opts: &AskOptions,
        host: &impl Host,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<BrowserAnswer> {
        if opts.max_new_tokens == 0 {
            return Err(RunError::Options("maxNewTokens must be at least 1".into()));
        }
        let valid = opts.top_p > 0.0 && opts.top_p <= 1.0 && opts.temperature >= 0.0;
        if !valid {
            return Err(RunError::Options(
                "temperature must be ≥ 0 and topP in (0, 1]".into(),
            ));
        }
        let start = host.now_ms();
        let original = decode(image, DecodeLimits::default())?;
        let images = EpisodeImages::for_inference(&original)?;
        let low = preprocess(&images.low_res, &self.files.preprocessor)?;
        let full_tokens = visual_tokens(
            images.high_res.width,
            images.high_res.height,
            &self.files.preprocessor,
        )?;
        let mut preprocess_ms = host.now_ms() - start;
        let mut episode = Episode::new(question, ProtocolConfig::default());
        let turn1 = match &self.files.chat_template {
            Some(t) => {
                let p = t.visionthink_turn1(question)?;
                episode.with_initial_prompt(&p);
                p
            }
            None => episode.initial_prompt(),
        };
        let mut visual_tokens = low.num_image_tokens(self.merge());
        let ids = self
            .files
            .tokenizer
            .encode_prompt(&turn1, &[visual_tokens])?;
        let mut s = Session::new(self);
        let mut logits = s.feed(&ids, std::slice::from_ref(&low), host).await?;
        let mut sampler = Sampler::new(SamplingConfig {
            temperature: opts.temperature,
            top_p: opts.top_p,
            top_k: opts.top_k,
            seed: opts.seed,
        });
        let mut turn = 0;
        let outcome = loop {
            let forced = opts
                .forced_turns
                .get(turn)
                .map(|t| {
                    self.files
                        .tokenizer
                        .encode_template(&format!("{t}<|im_end|>"))
                })
                .transpose()?;
            let generated = s
                .generate(
                    logits,
                    opts.max_new_tokens,
                    &mut sampler,
                    forced.as_deref(),
                    host,
                    &mut |id, text| on_event(Event::Token { turn, id, text }),
                )
                .await?;
            let text = self.files.tokenizer.decode(&generated, true)?;
            match episode.on_model_turn(&text)? {
                Step::Done(o) => break o,
                Step::ToolTurn(tt) => {
                    let t = host.now_ms();
                    let pvs: Vec<PixelValues> = match &tt.image {
                        Some(req) => {
                            on_event(Event::ResizeRequested);
                            let pv = preprocess(&req.fulfil(&images)?, &self.files.preprocessor)?;
                            visual_tokens += pv.num_image_tokens(self.merge());
                            vec![pv]
                        }
                        None => Vec::new(),
                    };
                    preprocess_ms += host.now_ms() - t;
                    let counts: Vec<usize> = pvs
                        .iter()
                        .map(|p| p.num_image_tokens(self.merge()))
                        .collect();
                    let ids = self.files.tokenizer.encode_prompt(&tt.prompt, &counts)?;
                    logits = s.feed(&ids, &pvs, host).await?;
                    turn += 1;
                }
            }
        };
        let mut timings = s.timings;
        timings.preprocess_ms = preprocess_ms;
        timings.total_ms = host.now_ms() - start;
        Ok(BrowserAnswer {
            answer: Answer::from_outcome(&outcome, visual_tokens, full_tokens, timings),
            backend: self.backend(),
        })
    }
}

/// The time spent in the vision call goes to `vision_ms` (on WebGPU: recording only).
#[allow(clippy::too_many_arguments)]
fn record<B: Backend>(
    be: &B,
    model: &Qwen25VL<B>,
    cache: &mut KvCache<B>,
    ids: &[u32],
    images: &[PixelValues],
    positions: &Positions,
    host: &impl Host,
    vision_ms: &mut f64,
) -> visionthink_model::Result<B::Tensor> {
    let feats = if images.is_empty() {
        None
    } else {
        let t = host.now_ms();
        let grids: Vec<[u32; 3]> = images.iter().map(|p| p.grid_thw).collect();
        let pixels: Vec<f32> = images.iter().flat_map(|p| p.data.iter().copied()).collect();
        let f = model.vision.forward(be, &pixels, &grids)?;
        *vision_ms += host.now_ms() - t;
        Some(f)
    };
    let embeds = model.embed(be, ids, feats.as_ref())?;
    let hidden = model.decode(be, &embeds, positions, cache)?;
    let last = be.narrow_rows(&hidden, ids.len() - 1, 1)?;
    model.logits(be, &last)
}

struct Session<'a> {
    model: &'a Model,
    cache: Cache,
    positions: MropeBuilder,
    timings: Timings,
}

impl<'a> Session<'a> {
    fn new(model: &'a Model) -> Self {
        let cache = match &model.exec {
            Exec::Gpu(_, m) => Cache::Gpu(m.new_cache()),
            Exec::Cpu(_, m) => Cache::Cpu(m.new_cache()),
        };
        Self {
            model,
            cache,
            positions: MropeBuilder::new(),
            timings: Timings::default(),
        }
    }

    async fn run(
        &mut self,
        ids: &[u32],
        images: &[PixelValues],
        host: &impl Host,
    ) -> Result<Vec<f32>> {
        let pos = self.positions.positions();
        let v = &mut self.timings.vision_ms;
        match (&self.model.exec, &mut self.cache) {
            (Exec::Gpu(be, m), Cache::Gpu(c)) => {
                let logits = record(be, m, c, ids, images, pos, host, v)?;
                Ok(be.read_async(&logits).await?)
            }
            (Exec::Cpu(be, m), Cache::Cpu(c)) => {
                let logits = record(be, m, c, ids, images, pos, host, v)?;
                Ok(be.to_vec(&logits)?)
            }
            _ => Err(RunError::Options("cache of another executor".into())),
        }
    }

    async fn feed(
        &mut self,
        ids: &[u32],
        images: &[PixelValues],
        host: &impl Host,
    ) -> Result<Vec<f32>> {
        if host.cancelled() {
            return Err(RunError::Cancelled);
        }
        let t = host.now_ms();
        let grids: Vec<[u32; 3]> = images.iter().map(|p| p.grid_thw).collect();
        extend_rope_index(&mut self.positions, ids, &grids, self.model.merge())?;
        let vision_before = self.timings.vision_ms;
        let logits = self.run(ids, images, host).await?;
        self.timings.prefill_ms += host.now_ms() - t - (self.timings.vision_ms - vision_before);
        self.timings.prefill_tokens += ids.len();
        Ok(logits)
    }

    async fn generate(
        &mut self,
        mut logits: Vec<f32>,
        max_new_tokens: usize,
        sampler: &mut Sampler,
        forced: Option<&[u32]>,
        host: &impl Host,
        on_token: &mut dyn FnMut(u32, &str),
    ) -> Result<Vec<u32>> {
        let eos = tokens::stop_ids(self.model.files.generation.as_ref());
        let tok = &self.model.files.tokenizer;
        let budget = forced.map_or(max_new_tokens, <[u32]>::len);
        let t = host.now_ms();
        let mut out = Vec::new();
        let mut stream = StreamDecoder::default();
        for i in 0..budget {
            if host.cancelled() {
                return Err(RunError::Cancelled);
            }
            let mut id = match forced {
                Some(f) => f[i],
                None => sampler.pick(&logits),
            };
            let is_eos = eos.contains(&id);
            let last = i + 1 == budget;
            if last && !is_eos {
                id = tokens::IM_END;
            }
            out.push(id);
            if let Some(piece) = stream.next(tok, &out)? {
                on_token(id, &piece);
            }
            self.positions.push_text(1);
            logits = self.run(&[id], &[], host).await?;
            if matches!(self.model.exec, Exec::Cpu(..)) {
                host.yield_now().await;
            }
            if is_eos || last {
                break;
            }
        }
        self.timings.decode_ms += host.now_ms() - t;
        self.timings.generated_tokens += out.len();
        Ok(out)
    }
}
