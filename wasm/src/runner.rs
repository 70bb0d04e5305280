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
use visionthink_core::sampling::SamplingConfig;
use visionthink_model::{CandleBackend, Feed, Qwen25VL, Session as ModelSession, WgpuBackend};

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
    /// The JS `Error.name`: the model's and the core's own names (the SDK uses the same).
    pub fn name(&self) -> &'static str {
        match self {
            RunError::Model(e) => e.name(),
            RunError::Core(e) => e.name(),
            RunError::Cancelled => "AbortError",
            RunError::Options(_) => "TypeError",
        }
    }
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
    /// Model generation rounds (default 2, official; 3 with the extended tools).
    pub max_rounds: Option<usize>,
    /// Images per episode, the half-size one included (default 2, official; 3 with the
    /// extended tools).
    pub max_images: Option<usize>,
    /// The tools offered to the model: `resize` (official) or `resize,crop` (beyond the paper).
    pub tools: String,
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
            max_rounds: None,
            max_images: None,
            tools: "resize".into(),
            forced_turns: d.forced_turns,
        }
    }
}

impl AskOptions {
    /// The core driver's options, checked (a bad value is a `TypeError` in JS).
    pub fn episode_options(&self) -> Result<EpisodeOptions> {
        let protocol = ProtocolConfig::from_tools(&self.tools)
            .map_err(|e| RunError::Options(e.to_string()))?
            .with_limits(self.max_rounds, self.max_images);
        let opts = EpisodeOptions {
            max_new_tokens: self.max_new_tokens,
            sampling: SamplingConfig {
                temperature: self.temperature,
                top_p: self.top_p,
                top_k: self.top_k,
                seed: self.seed,
            },
            ignore_eos: self.ignore_eos,
            protocol,
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

    /// A model already built on its executor (the streaming GGUF load), with its files.
    pub fn from_parts(files: ModelFiles, exec: Exec) -> Result<Self> {
        let config = files.config.clone().ok_or_else(|| {
            RunError::Model(visionthink_model::Error::Config("no model config".into()))
        })?;
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

/// The model session on the engine's executor (each holds its own backend and cache).
enum Running<'a> {
    Gpu(ModelSession<'a, WgpuBackend>),
    Cpu(ModelSession<'a, CandleBackend>),
}

struct Session<'a> {
    run: Running<'a>,
    timings: Timings,
}

impl<'a> Session<'a> {
    fn new(model: &'a Model) -> Self {
        let merge = model.merge();
        let run = match &model.exec {
            Exec::Gpu(be, m) => Running::Gpu(ModelSession::new(be, m, merge)),
            Exec::Cpu(be, m) => Running::Cpu(ModelSession::new(be, m, merge)),
        };
        Self {
            run,
            timings: Timings::default(),
        }
    }

    /// Feeds `ids` (with `images` for a prompt) and reads the logits back: awaiting `mapAsync`
    /// on WebGPU; on the CPU, then yielding to the event loop. The vision call's time goes to
    /// `vision_ms` (on WebGPU: recording only).
    async fn run(
        &mut self,
        ids: &[u32],
        images: Option<&[PixelValues]>,
        host: &impl Host,
    ) -> Result<Vec<f32>> {
        let clock = || host.now_ms();
        match &mut self.run {
            Running::Gpu(s) => {
                let logits = match images {
                    Some(images) => {
                        let (l, vision_ms) = s.feed(ids, images, &clock)?;
                        self.timings.vision_ms += vision_ms;
                        l
                    }
                    None => {
                        // A decode step (only `step` feeds without images): recorded and
                        // submitted, then read back; the first part is the host's overhead.
                        let (t, before) = (clock(), s.backend().counters().dispatches);
                        let l = s.feed_tokens(ids)?;
                        s.backend().submit();
                        self.timings.decode_host_ms += clock() - t;
                        self.timings.decode_dispatches +=
                            s.backend().counters().dispatches - before;
                        l
                    }
                };
                Ok(s.backend().read_async(&logits).await?)
            }
            Running::Cpu(s) => {
                let (logits, vision_ms) = match images {
                    Some(images) => Feed::feed(s, ids, images, &clock)?,
                    None => (Feed::feed_tokens(s, ids)?, 0.0),
                };
                self.timings.vision_ms += vision_ms;
                Ok(logits)
            }
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
        let vision_before = self.timings.vision_ms;
        let logits = self.run(ids, Some(images), host).await?;
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
        let logits = self.run(ids, None, host).await?;
        self.timings.decode_ms += host.now_ms() - t;
        if matches!(self.run, Running::Cpu(..)) {
            host.yield_now().await;
        }
        Ok(logits)
    }
}
