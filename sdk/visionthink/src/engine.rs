//! Running a Qwen2.5-VL checkpoint: prompt logits, generation, and the VisionThink low-res-first
//! episode with the KV cache of turn 1 reused for the tool turn.

pub use crate::error::CancelReason;
use crate::error::{Error, Result};
use crate::files::ModelDir;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
pub use visionthink_core::answer::{Answer, Event, Timings};
use visionthink_core::config::ModelConfig;
use visionthink_core::driver::{
    Action, EpisodeDriver, EpisodeOptions, FeedKind, ModelInfo, TurnDecoder,
};
use visionthink_core::image::{preprocess, PixelPool, PixelValues, RgbImage};
use visionthink_core::protocol::ProtocolConfig;
use visionthink_core::sampling::{Sampler, SamplingConfig};
pub use visionthink_model::WeightStorage;
use visionthink_model::{CandleBackend, Feed, Qwen25VL, Session as ModelSession, WeightStore};
#[cfg(feature = "wgpu")]
use visionthink_model::{WgpuBackend, WgpuOptions};

/// Pixel buffers an engine keeps between episodes: an episode's half-size and full image.
const PIXEL_BUFFERS: usize = 2;

fn model_err(e: visionthink_model::Error) -> Error {
    Error::Model(e)
}

/// Compute precision of the candle executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 everywhere (bf16/f16 checkpoints are upcast exactly). The CPU default.
    #[default]
    F32,
    /// bf16 weights and activations (softmax and norms in f32).
    Bf16,
    /// f16 weights and activations (softmax and norms in f32).
    F16,
}

/// How to load a model: where, in which precision, and how the WebGPU executor stores weights.
///
/// ```no_run
/// use visionthink::{DeviceChoice, LoadOptions, WeightStorage};
/// let opts = LoadOptions { device: DeviceChoice::Wgpu, wgpu_weights: Some(WeightStorage::Int8), ..Default::default() };
/// let vt = visionthink::VisionThink::load_with("path/to/model", &opts)?;
/// # Ok::<(), visionthink::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadOptions {
    /// Where to run.
    pub device: DeviceChoice,
    /// Compute precision of the candle executor; for the WebGPU executor (which computes in
    /// f32), `F16` stores the weights as f16 unless `wgpu_weights` says otherwise.
    pub precision: Precision,
    /// The WebGPU executor's weight storage (`f32`, `f16`, `int8`); only with
    /// [`DeviceChoice::Wgpu`], and only with the default `F32` precision.
    pub wgpu_weights: Option<WeightStorage>,
}

impl LoadOptions {
    /// The WebGPU executor's weight storage these options ask for.
    #[cfg(feature = "wgpu")]
    fn wgpu_storage(&self) -> Result<WeightStorage> {
        let config = |m: &str| Err(Error::Model(visionthink_model::Error::Config(m.into())));
        match (self.wgpu_weights, self.precision) {
            (Some(w), Precision::F32) => Ok(w),
            (Some(_), _) => config("give the WebGPU weight storage or a precision, not both"),
            (None, Precision::F32) => Ok(WeightStorage::F32),
            (None, Precision::F16) => Ok(WeightStorage::F16),
            (None, Precision::Bf16) => config(
                "the WebGPU executor stores weights as f32, f16 or int8 (use --dtype f32 or f16, or --weights)",
            ),
        }
    }
}

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The CPU.
    #[default]
    Cpu,
    /// The first CUDA GPU (needs the `cuda` feature).
    Cuda,
    /// The WebGPU executor (wgpu: Vulkan, Metal or DX12; f32 kernels; needs the `wgpu`
    /// feature, on by default). `WGPU_BACKEND` selects the driver.
    Wgpu,
}

/// A backend with its model. One per engine, built once and never moved in a hot path, so the
/// size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Exec {
    Candle(CandleBackend, Qwen25VL<CandleBackend>),
    #[cfg(feature = "wgpu")]
    Wgpu(WgpuBackend, Qwen25VL<WgpuBackend>),
}

/// Options of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// New-token budget per model turn (official evaluation: 8192).
    pub max_new_tokens: usize,
    /// Greedy or sampled selection.
    pub sampling: SamplingConfig,
    /// Keep generating past `<|im_end|>` / `<|endoftext|>` (for benchmarks).
    pub ignore_eos: bool,
    /// Stops the generation between tokens when set or past its deadline (a server's
    /// per-request deadline, a client that went away): the call returns [`Error::Cancelled`].
    pub cancel: Option<Cancel>,
}

impl Default for GenerateOptions {
    /// The core's episode defaults (one set for every executor).
    fn default() -> Self {
        let d = EpisodeOptions::default();
        Self {
            max_new_tokens: d.max_new_tokens,
            sampling: d.sampling,
            ignore_eos: d.ignore_eos,
            cancel: None,
        }
    }
}

/// A handle that stops a running generation from another thread, or once a deadline passes.
/// Clones share one flag. The model is asked between forward passes (each token, each turn), so
/// a cancelled call returns within one forward pass.
///
/// ```
/// use std::time::{Duration, Instant};
/// use visionthink::{Cancel, CancelReason};
/// let cancel = Cancel::with_deadline(Instant::now() + Duration::from_secs(60));
/// assert!(cancel.check().is_ok());
/// cancel.clone().cancel(); // e.g. from the thread that saw the client disconnect
/// assert_eq!(cancel.reason(), Some(CancelReason::Requested));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    flag: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

impl PartialEq for Cancel {
    /// The same handle (clones of one another).
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.flag, &other.flag) && self.deadline == other.deadline
    }
}

impl Cancel {
    /// A handle without a deadline.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle that also fires at `deadline`.
    pub fn with_deadline(deadline: Instant) -> Self {
        Self {
            flag: Arc::default(),
            deadline: Some(deadline),
        }
    }

    /// Stops every generation using this handle (or a clone of it).
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }

    /// Why the generation must stop, if it must.
    pub fn reason(&self) -> Option<CancelReason> {
        if self.flag.load(Ordering::Relaxed) {
            Some(CancelReason::Requested)
        } else if self.deadline.is_some_and(|d| Instant::now() >= d) {
            Some(CancelReason::DeadlinePassed)
        } else {
            None
        }
    }

    /// `Err(Error::Cancelled)` when the generation must stop.
    pub fn check(&self) -> Result<()> {
        match self.reason() {
            Some(r) => Err(Error::Cancelled(r)),
            None => Ok(()),
        }
    }
}

impl GenerateOptions {
    pub(crate) fn check_cancel(&self) -> Result<()> {
        self.cancel.as_ref().map_or(Ok(()), Cancel::check)
    }
}

/// Options of [`VisionThink::ask`].
#[derive(Debug, Clone, Default)]
pub struct AskOptions {
    /// Generation settings of every turn.
    pub generation: GenerateOptions,
    /// Rounds and images (official: 2 and 2).
    pub protocol: ProtocolConfig,
    /// Teacher forcing: the model is fed these turn texts instead of choosing tokens (replaying a
    /// recorded trajectory, testing both branches of the protocol on any checkpoint). Turns
    /// beyond the list are generated.
    pub forced_turns: Vec<String>,
}

impl AskOptions {
    /// The core driver's options (the cancel handle stays with the SDK).
    pub fn episode_options(&self) -> EpisodeOptions {
        EpisodeOptions {
            max_new_tokens: self.generation.max_new_tokens,
            sampling: self.generation.sampling.clone(),
            ignore_eos: self.generation.ignore_eos,
            protocol: self.protocol.clone(),
            forced_turns: self.forced_turns.clone(),
        }
    }
}

/// Something that answers a question about an image with the low-res-first protocol: a local
/// model ([`VisionThink`]) or a chat server ([`RemoteEngine`](crate::RemoteEngine)). The answer
/// record is the core's either way.
///
/// ```no_run
/// fn answer(engine: &dyn visionthink::Engine) -> visionthink::Result<String> {
///     let image = visionthink::load_image("photo.jpg")?;
///     Ok(engine.ask(&image, "What is written on the sign?", &Default::default())?.text)
/// }
/// let local = visionthink::VisionThink::from_dir("path/to/model")?;
/// let remote = visionthink::RemoteEngine::connect(visionthink::RemoteConfig::new("http://127.0.0.1:8000/v1"))?;
/// println!("{} / {}", answer(&local)?, answer(&remote)?);
/// # Ok::<(), visionthink::Error>(())
/// ```
pub trait Engine {
    /// Runs one episode, reporting each generated piece of text and the resize as it happens.
    fn ask_streaming(
        &self,
        image: &RgbImage,
        question: &str,
        opts: &AskOptions,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<Answer>;

    /// Runs one episode.
    fn ask(&self, image: &RgbImage, question: &str, opts: &AskOptions) -> Result<Answer> {
        self.ask_streaming(image, question, opts, &mut |_| {})
    }
}

impl Engine for VisionThink {
    fn ask_streaming(
        &self,
        image: &RgbImage,
        question: &str,
        opts: &AskOptions,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<Answer> {
        VisionThink::ask_streaming(self, image, question, opts, on_event)
    }
}

/// Work generic over the executor (see [`VisionThink::on_executor`]): e.g. a batcher's model
/// thread, which runs on whichever backend the engine was loaded with.
pub(crate) trait OnExecutor {
    /// What the work returns.
    type Output;
    /// Runs with the executor `be`, its model and the processor's merge size.
    fn run<B: visionthink_model::Backend>(
        self,
        be: &B,
        model: &Qwen25VL<B>,
        merge: u32,
    ) -> Self::Output;
}

/// A loaded VisionThink (Qwen2.5-VL) model.
pub struct VisionThink {
    /// Tokenizer, configs, chat template.
    pub dir: ModelDir,
    /// The model config.
    pub config: ModelConfig,
    exec: Exec,
    /// Pixel buffers kept between episodes (the low-res and the full image of the last one).
    pixels: std::sync::Mutex<PixelPool>,
}

impl std::fmt::Debug for VisionThink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VisionThink({})", self.dir.path.display())
    }
}

/// A generation session: the KV cache and positions of everything fed so far, on the engine's
/// executor (a [`visionthink_model::Session`], chosen once when the session is made).
pub struct Session<'a> {
    engine: &'a VisionThink,
    model: Box<dyn Feed + 'a>,
    ids: Vec<u32>,
    timings: Timings,
}

impl VisionThink {
    /// Loads a local HF model directory on the CPU in f32.
    ///
    /// ```no_run
    /// let vt = visionthink::VisionThink::from_dir("path/to/VisionThink-Efficient")?;
    /// let image = visionthink::load_image("photo.jpg")?;
    /// let answer = vt.ask(&image, "What is written on the sign?", &Default::default())?;
    /// println!("{} (full image requested: {})", answer.text, answer.used_high_res);
    /// # Ok::<(), visionthink::Error>(())
    /// ```
    pub fn from_dir(path: impl AsRef<Path>) -> Result<Self> {
        Self::load(path, DeviceChoice::Cpu, Precision::F32)
    }

    /// Loads with a device and precision.
    pub fn load(
        path: impl AsRef<Path>,
        device: DeviceChoice,
        precision: Precision,
    ) -> Result<Self> {
        let opts = LoadOptions {
            device,
            precision,
            wgpu_weights: None,
        };
        Self::load_with(path, &opts)
    }

    /// Loads with [`LoadOptions`].
    pub fn load_with(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let dir = ModelDir::open(path.as_ref())?;
        let store = WeightStore::open(&dir.path).map_err(model_err)?;
        Self::from_parts(dir, &store, opts)
    }

    /// Loads a llama.cpp GGUF model: the text GGUF and its `mmproj` GGUF (either may be the
    /// first part of a `gguf-split` set, `…-00001-of-0000N.gguf`). Everything comes from the two
    /// files (tokenizer, config, chat template); quantized matrices (Q4_0, Q8_0, Q4_K, Q6_K, …)
    /// stay quantized on candle, and are dequantized to f32 for the WebGPU executor.
    ///
    /// ```no_run
    /// let vt = visionthink::VisionThink::load_gguf(
    ///     "Qwen2.5-VL-7B-Instruct-Q4_K_M.gguf",
    ///     "mmproj-Qwen2.5-VL-7B-Instruct-f16.gguf",
    ///     &Default::default(),
    /// )?;
    /// # Ok::<(), visionthink::Error>(())
    /// ```
    pub fn load_gguf(
        text: impl AsRef<Path>,
        mmproj: impl AsRef<Path>,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let weights = visionthink_model::gguf::GgufWeights::open(text.as_ref(), mmproj.as_ref())
            .map_err(model_err)?;
        let dir = ModelDir::from_gguf(&weights)?;
        let store = WeightStore::from_gguf(weights);
        Self::from_parts(dir, &store, opts)
    }

    /// Loads a model whose files are in memory (`(file name, bytes)`: `model.safetensors`,
    /// `config.json`, `tokenizer.json`, …), e.g. one embedded in the binary.
    ///
    /// ```no_run
    /// let files: Vec<(&str, &[u8])> = vec![/* ("config.json", bytes), … */];
    /// let vt = visionthink::VisionThink::from_files("my-model", &files, Default::default(), Default::default())?;
    /// # Ok::<(), visionthink::Error>(())
    /// ```
    pub fn from_files(
        label: &str,
        files: &[(&str, &[u8])],
        device: DeviceChoice,
        precision: Precision,
    ) -> Result<Self> {
        let opts = LoadOptions {
            device,
            precision,
            wgpu_weights: None,
        };
        Self::from_files_with(label, files, &opts)
    }

    /// [`Self::from_files`] with [`LoadOptions`].
    pub fn from_files_with(
        label: &str,
        files: &[(&str, &[u8])],
        opts: &LoadOptions,
    ) -> Result<Self> {
        let dir = ModelDir::from_files(label, files)?;
        let weights: Vec<(String, Vec<u8>)> = files
            .iter()
            .filter(|(n, _)| n.ends_with(".safetensors"))
            .map(|(n, b)| (format!("{label}/{n}"), b.to_vec()))
            .collect();
        let store = WeightStore::from_bytes(weights).map_err(model_err)?;
        Self::from_parts(dir, &store, opts)
    }

    fn from_parts(dir: ModelDir, store: &WeightStore, opts: &LoadOptions) -> Result<Self> {
        let (device, precision) = (opts.device, opts.precision);
        if opts.wgpu_weights.is_some() && device != DeviceChoice::Wgpu {
            return Err(Error::Model(visionthink_model::Error::Config(
                "a WebGPU weight storage was given for another executor (--weights is for --backend wgpu)"
                    .into(),
            )));
        }
        let config = dir.config.clone().ok_or_else(|| Error::Content {
            path: dir.path.join("config.json").display().to_string(),
            reason: "missing: a model directory needs config.json".into(),
        })?;
        let dtype = match precision {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
            Precision::F16 => candle_core::DType::F16,
        };
        let candle = |be: CandleBackend| -> Result<Exec> {
            let model = Qwen25VL::load(&be, &config, store).map_err(model_err)?;
            Ok(Exec::Candle(be, model))
        };
        let exec = match device {
            DeviceChoice::Cpu => candle(CandleBackend::new(candle_core::Device::Cpu, dtype))?,
            DeviceChoice::Cuda => candle(CandleBackend::cuda(dtype).map_err(model_err)?)?,
            #[cfg(feature = "wgpu")]
            DeviceChoice::Wgpu => {
                // The WebGPU executor computes in f32 and stores weights as asked.
                let weights = opts.wgpu_storage()?;
                let be = WgpuBackend::new_blocking(WgpuOptions {
                    weights,
                    ..Default::default()
                })
                .map_err(model_err)?;
                let model = Qwen25VL::load(&be, &config, store).map_err(model_err)?;
                Exec::Wgpu(be, model)
            }
            #[cfg(not(feature = "wgpu"))]
            DeviceChoice::Wgpu => {
                return Err(Error::Model(visionthink_model::Error::Config(
                    "this build has no WebGPU executor (enable the `wgpu` feature)".into(),
                )))
            }
        };
        Ok(Self {
            dir,
            config,
            exec,
            pixels: std::sync::Mutex::new(PixelPool::new(PIXEL_BUFFERS)),
        })
    }

    /// A new session with an empty cache.
    pub fn session(&self) -> Session<'_> {
        let merge = self.merge();
        let model: Box<dyn Feed + '_> = match &self.exec {
            Exec::Candle(be, m) => Box::new(ModelSession::new(be, m, merge)),
            #[cfg(feature = "wgpu")]
            Exec::Wgpu(be, m) => Box::new(ModelSession::new(be, m, merge)),
        };
        self.session_with(model)
    }

    /// A session whose forward passes `model` runs (e.g. a [`Batcher`](crate::batch::Batcher)'s
    /// model thread).
    pub fn session_with<'a>(&'a self, model: Box<dyn Feed + 'a>) -> Session<'a> {
        Session {
            engine: self,
            model,
            ids: Vec::new(),
            timings: Timings::default(),
        }
    }

    /// Runs `f` on this engine's executor and model, whichever backend they are.
    pub(crate) fn on_executor<F: OnExecutor>(&self, f: F) -> F::Output {
        let merge = self.merge();
        match &self.exec {
            Exec::Candle(be, m) => f.run(be, m, merge),
            #[cfg(feature = "wgpu")]
            Exec::Wgpu(be, m) => f.run(be, m, merge),
        }
    }

    /// Bytes of pixel buffers the engine keeps between episodes (the last episode's half-size and
    /// full image, reused by the next one's preprocessing): memory held while idle.
    pub fn kept_pixel_bytes(&self) -> usize {
        self.pixels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .capacity_bytes()
    }

    /// Preprocesses an image with the model's processor settings.
    pub fn preprocess(&self, image: &RgbImage) -> Result<PixelValues> {
        Ok(preprocess(image, &self.dir.preprocessor)?)
    }

    /// Visual tokens an image costs, from its size alone.
    pub fn visual_tokens(&self, image: &RgbImage) -> Result<usize> {
        Ok(visionthink_core::image::visual_tokens(
            image.width,
            image.height,
            &self.dir.preprocessor,
        )?)
    }

    fn merge(&self) -> u32 {
        self.dir.preprocessor.merge_size
    }

    fn eos(&self) -> Vec<u32> {
        visionthink_core::config::stop_ids(self.dir.generation.as_ref())
    }

    /// Last-position logits of a fully rendered prompt (images as
    /// `<|vision_start|><|image_pad|><|vision_end|>`, in order).
    pub fn prompt_logits(&self, prompt: &str, images: &[RgbImage]) -> Result<Vec<f32>> {
        let (ids, pvs) = self.encode_rendered(prompt, images)?;
        self.session().feed(&ids, &pvs)
    }

    /// Token ids of a rendered prompt with each image's pads expanded, and the images' pixels.
    fn encode_rendered(
        &self,
        prompt: &str,
        images: &[RgbImage],
    ) -> Result<(Vec<u32>, Vec<PixelValues>)> {
        let pvs = images
            .iter()
            .map(|i| self.preprocess(i))
            .collect::<Result<Vec<_>>>()?;
        let counts = self.token_counts(&pvs);
        let ids = self.dir.tokenizer.encode_rendered(prompt, &counts)?;
        Ok((ids, pvs))
    }

    fn token_counts(&self, pvs: &[PixelValues]) -> Vec<usize> {
        pvs.iter()
            .map(|p| p.num_image_tokens(self.merge()))
            .collect()
    }

    /// Generates from a fully rendered prompt.
    pub fn generate(
        &self,
        prompt: &str,
        images: &[RgbImage],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(u32, &str),
    ) -> Result<(Vec<u32>, String)> {
        let (ids, pvs) = self.encode_rendered(prompt, images)?;
        let mut s = self.session();
        let logits = s.feed(&ids, &pvs)?;
        let mut sampler = Sampler::new(opts.sampling.clone());
        let out = s.generate(logits, opts, &mut sampler, None, &mut |id, piece| {
            on_token(id, piece)
        })?;
        let text = self.dir.tokenizer.decode(&out, true)?;
        Ok((out, text))
    }

    /// Answers a question about an image with the VisionThink protocol: turn 1 on the half-size
    /// image; if the model calls the resize tool, the full image is appended in a tool turn that
    /// continues turn 1's KV cache.
    pub fn ask(&self, image: &RgbImage, question: &str, opts: &AskOptions) -> Result<Answer> {
        self.ask_streaming(image, question, opts, |_| {})
    }

    /// [`Self::ask`] with a callback per generated token and protocol event.
    ///
    /// The episode's token loop is the core's [`EpisodeDriver`]: this function only runs the
    /// model on what the driver asks for.
    pub fn ask_streaming(
        &self,
        image: &RgbImage,
        question: &str,
        opts: &AskOptions,
        mut on_event: impl FnMut(Event<'_>),
    ) -> Result<Answer> {
        self.ask_in(self.session(), image, question, opts, &mut on_event)
    }

    /// [`Self::ask_streaming`] in a given (empty) session, e.g. one of a
    /// [`Batcher`](crate::batch::Batcher).
    pub fn ask_in(
        &self,
        mut session: Session<'_>,
        image: &RgbImage,
        question: &str,
        opts: &AskOptions,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<Answer> {
        if !session.is_empty() {
            return Err(Error::Model(visionthink_model::Error::Input(
                "an episode starts in an empty session".into(),
            )));
        }
        let episode_opts = opts.episode_options();
        let t0 = Instant::now();
        let clock = move || ms(t0);
        // Concurrent episodes: the first takes the kept buffers, the others start without.
        let pool = std::mem::replace(
            &mut *self.pixels.lock().unwrap_or_else(|e| e.into_inner()),
            PixelPool::new(PIXEL_BUFFERS),
        );
        let mut driver = EpisodeDriver::new_with_pool(
            self.info(),
            image,
            question,
            &episode_opts,
            &clock,
            pool,
        )?;
        let mut action = driver.start()?;
        loop {
            match action {
                Action::Feed(feed) => {
                    opts.generation.check_cancel()?;
                    let logits = match feed.kind {
                        FeedKind::Prompt => session.feed(&feed.ids, &feed.images)?,
                        FeedKind::Token => session.step_all(&feed.ids)?,
                    };
                    driver.recycle(feed.images);
                    action = driver.on_logits(&logits, on_event)?;
                }
                Action::Done(answer) => {
                    let done = driver.into_pool();
                    let mut kept = self.pixels.lock().unwrap_or_else(|e| e.into_inner());
                    if kept.len() < done.len() {
                        *kept = done;
                    }
                    return Ok(Answer {
                        timings: answer.timings.with_executor(&session.timings),
                        ..answer
                    });
                }
            }
        }
    }

    /// What the core's driver reads from this model's files.
    pub fn info(&self) -> ModelInfo<'_> {
        ModelInfo {
            tokenizer: &self.dir.tokenizer,
            preprocessor: &self.dir.preprocessor,
            generation: self.dir.generation.as_ref(),
            chat_template: self.dir.chat_template.as_ref(),
        }
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

impl Session<'_> {
    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Every token id in the cache, in order.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Timings accumulated so far.
    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// Appends tokens (with the images whose pads they contain, in order) to the cache and
    /// returns the last position's logits. Only the new tokens are computed.
    pub fn feed(&mut self, ids: &[u32], images: &[PixelValues]) -> Result<Vec<f32>> {
        let t = Instant::now();
        let (logits, vision_ms) = self.model.feed(ids, images, &|| ms(t)).map_err(model_err)?;
        self.ids.extend_from_slice(ids);
        self.timings.vision_ms += vision_ms;
        self.timings.prefill_ms += ms(t) - vision_ms;
        self.timings.prefill_tokens += ids.len();
        Ok(logits)
    }

    fn step(&mut self, id: u32) -> Result<Vec<f32>> {
        let logits = self.model.feed_tokens(&[id]).map_err(model_err)?;
        self.ids.push(id);
        Ok(logits)
    }

    /// Feeds generated tokens, timed as decoding (their count is the driver's).
    fn step_all(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let t = Instant::now();
        let mut logits = Vec::new();
        for &id in ids {
            logits = self.step(id)?;
        }
        self.timings.decode_ms += ms(t);
        Ok(logits)
    }

    /// Generates one model turn from the given next-token logits; the turn's ids (ending with
    /// `<|im_end|>`, as the official rollout guarantees: a turn cut by the token budget has its
    /// last token replaced by `<|im_end|>`) are in the cache afterwards. With `forced`, those ids
    /// are fed instead of chosen ones (teacher forcing). The rules are the core's
    /// [`TurnDecoder`], the ones every executor applies.
    pub fn generate(
        &mut self,
        mut logits: Vec<f32>,
        opts: &GenerateOptions,
        sampler: &mut Sampler,
        forced: Option<&[u32]>,
        on_token: &mut dyn FnMut(u32, &str),
    ) -> Result<Vec<u32>> {
        let mut turn = TurnDecoder::new(
            opts.max_new_tokens,
            self.engine.eos(),
            opts.ignore_eos,
            forced.map(<[u32]>::to_vec),
        )?;
        let t = Instant::now();
        loop {
            opts.check_cancel()?;
            let picked = turn.choose(&self.engine.dir.tokenizer, &logits, sampler)?;
            if let Some(piece) = &picked.piece {
                on_token(picked.id, piece);
            }
            logits = self.step(picked.id)?;
            if picked.last {
                break;
            }
        }
        let out = turn.ids().to_vec();
        self.timings.decode_ms += ms(t);
        self.timings.generated_tokens += out.len();
        Ok(out)
    }
}
