//! The low-res-first episode in a browser: the same core (decode, Pillow-exact resampling,
//! tokenizer, prompts, protocol state machine) and the same model graph as the Rust SDK, with an
//! `async` token loop so the page stays responsive: the WebGPU executor reads logits back with
//! `mapAsync`, the CPU executor yields to the event loop between tokens.

use serde::Serialize;
pub use visionthink_core::answer::{Answer, Event, Timings};
use visionthink_core::config::ModelConfig;
use visionthink_core::driver::{Action, EpisodeDriver, EpisodeOptions, FeedKind, ModelInfo};
use visionthink_core::image::{decode, DecodeLimits, PixelValues};
use visionthink_core::model_files::ModelFiles;
use visionthink_core::protocol::ProtocolConfig;
use visionthink_core::rope::{extend_rope_index, MropeBuilder, Positions};
use visionthink_core::sampling::SamplingConfig;
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

/// Options of one `ask` (JS names in camelCase; defaults are the core's, the same as the Rust
/// SDK's).
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
    /// Keep generating past end-of-turn tokens (benchmarks).
    pub ignore_eos: bool,
    /// Model generation rounds (official: 2).
    pub max_rounds: usize,
    /// Images per episode, the half-size one included (official: 2).
    pub max_images: usize,
    /// Teacher-forced turn texts (replay a trajectory).
    pub forced_turns: Vec<String>,
}

impl Default for AskOptions {
    fn default() -> Self {
        let d = EpisodeOptions::default();
        Self {
            max_new_tokens: d.max_new_tokens,
            temperature: d.sampling.temperature,
            top_p: d.sampling.top_p,
            top_k: d.sampling.top_k,
            seed: d.sampling.seed,
            ignore_eos: d.ignore_eos,
            max_rounds: d.protocol.max_rounds,
            max_images: d.protocol.max_images,
            forced_turns: d.forced_turns,
        }
    }
}

impl AskOptions {
    /// The core driver's options, checked (a bad value is a `TypeError` in JS).
    pub fn episode_options(&self) -> Result<EpisodeOptions> {
        let opts = EpisodeOptions {
            max_new_tokens: self.max_new_tokens,
            sampling: SamplingConfig {
                temperature: self.temperature,
                top_p: self.top_p,
                top_k: self.top_k,
                seed: self.seed,
            },
            ignore_eos: self.ignore_eos,
            protocol: ProtocolConfig {
                max_rounds: self.max_rounds,
                max_images: self.max_images,
                ..ProtocolConfig::default()
            },
            forced_turns: self.forced_turns.clone(),
        };
        opts.validate()
            .map_err(|e| RunError::Options(e.to_string()))?;
        Ok(opts)
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
    /// protocol. The token loop is the core's [`EpisodeDriver`], as in the Rust SDK; this only
    /// runs the model on what the driver asks for, awaiting GPU readbacks and yielding to the
    /// event loop between CPU tokens.
    pub async fn ask(
        &self,
        image: &[u8],
        question: &str,
        opts: &AskOptions,
        host: &impl Host,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<BrowserAnswer> {
        let episode_opts = opts.episode_options()?;
        let original = decode(image, DecodeLimits::default())?;
        let clock = || host.now_ms();
        let mut driver = EpisodeDriver::new(
            ModelInfo::from(&self.files),
            &original,
            question,
            &episode_opts,
            &clock,
        )?;
        let mut s = Session::new(self);
        let mut action = driver.start()?;
        loop {
            match action {
                Action::Feed(feed) => {
                    let logits = match feed.kind {
                        FeedKind::Prompt => s.feed(&feed.ids, &feed.images, host).await?,
                        FeedKind::Token => s.step(&feed.ids, host).await?,
                    };
                    action = driver.on_logits(&logits, on_event)?;
                }
                Action::Done(answer) => {
                    return Ok(BrowserAnswer {
                        answer: Answer {
                            timings: answer.timings.with_executor(&s.timings),
                            ..answer
                        },
                        backend: self.backend(),
                    });
                }
            }
        }
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

    /// Feeds generated tokens, timed as decoding (their count is the driver's).
    async fn step(&mut self, ids: &[u32], host: &impl Host) -> Result<Vec<f32>> {
        if host.cancelled() {
            return Err(RunError::Cancelled);
        }
        let t = host.now_ms();
        self.positions.push_text(ids.len());
        let logits = self.run(ids, &[], host).await?;
        self.timings.decode_ms += host.now_ms() - t;
        if matches!(self.model.exec, Exec::Cpu(..)) {
            host.yield_now().await;
        }
        Ok(logits)
    }
}
