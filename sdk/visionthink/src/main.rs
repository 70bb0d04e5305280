//! The `visionthink` command-line tool. JSON goes to stdout only; errors go to stderr with the
//! whole cause chain and a non-zero exit code.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use visionthink::core::config::PreprocessorConfig;
use visionthink::core::image::{inference_low_res, preprocess, PixelValues, RgbImage};
use visionthink::core::prompt;
use visionthink::core::reward::{PenaltyMode, RewardConfig};
use visionthink::core::rope::rope_index;
use visionthink::core::tokenizer::QwenTokenizer;
use visionthink::http_judge::JudgeChoice;
use visionthink::{files, load_image, score, HttpJudgeConfig, ModelDir};

/// The example image and tokenizer built into the binary for `visionthink demo`.
const EXAMPLE_IMAGE: &[u8] = include_bytes!("../assets/example.png");
const EXAMPLE_QUESTION: &str =
    "What is the serial code printed in small type under the red circle?";
const EMBEDDED_TOKENIZER: &[u8] =
    include_bytes!("../../../tests/fixtures/tokenizer/tokenizer.json");

#[derive(Parser)]
#[command(
    name = "visionthink",
    version,
    about = "VisionThink: look at a half-size image first, ask for the full one only when needed"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Qwen2.5-VL image processor (Pillow-exact) on an image.
    Preprocess(PreprocessArgs),
    /// Tokenize a fully rendered prompt and compute M-RoPE positions.
    Tokenize(TokenizeArgs),
    /// Print the VisionThink turn-1 prompt for a question.
    Prompt(PromptCmdArgs),
    /// Score rollouts: format, accuracy (judge), tool and group penalties.
    Score(ScoreArgs),
    /// Last-position logits of a rendered prompt (images as <|vision_start|><|image_pad|><|vision_end|>).
    Logits(LogitsArgs),
    /// Generate from a rendered prompt.
    Generate(GenerateArgs),
    /// Answer a question about an image with the VisionThink protocol (low-res first).
    Ask(AskArgs),
    /// Serve an OpenAI-compatible /v1/chat/completions endpoint (text and image parts, SSE
    /// streaming); it binds 127.0.0.1 unless told otherwise.
    #[cfg(feature = "serve")]
    Serve(ServeArgs),
    /// Show the low-res-first protocol on the built-in example image (or yours): the turn-1
    /// prompt, the half-size image, the visual tokens saved, and both possible next turns.
    Demo(DemoArgs),
    /// Convert an HF checkpoint to llama.cpp's GGUF pair (text model + mmproj), F32, F16,
    /// Q8_0, Q4_0 or Q4_K, optionally split into parts, with the browser manifest.
    Convert(ConvertArgs),
}

#[derive(clap::Args)]
struct ConvertArgs {
    /// HF model folder (config.json, tokenizer.json, safetensors).
    #[arg(long)]
    from: PathBuf,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Weight type: f32, f16, q8_0, q4_0, q4_k or q4_k_m (llama.cpp's mix of Q4_K and Q6_K).
    #[arg(long, default_value = "f16")]
    quant: String,
    /// Largest file, e.g. 512M (gguf-split parts, -00001-of-0000N.gguf).
    #[arg(long)]
    split_max_size: Option<String>,
    /// Print JSON (files, sizes, SHA-256, tensor types).
    #[arg(long)]
    json: bool,
}

fn cmd_convert(a: ConvertArgs) -> Result<()> {
    use std::io::IsTerminal;
    let opts = visionthink::convert::ConvertOptions {
        quant: visionthink::convert::Quant::parse(&a.quant)?,
        split_max_bytes: a
            .split_max_size
            .as_deref()
            .map(visionthink::convert::parse_size)
            .transpose()?,
    };
    let tty = std::io::stderr().is_terminal();
    let mut last = 0u64;
    let mut bar = |done: u64, total: u64| {
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        if pct != last || done == total {
            last = pct;
            let filled = (pct / 4) as usize;
            let line = format!(
                "[{}{}] {pct:>3}% {:.1}/{:.1} MB",
                "#".repeat(filled),
                "-".repeat(25 - filled),
                done as f64 / 1e6,
                total as f64 / 1e6
            );
            if tty {
                eprint!("\r{line}");
            } else if pct % 10 == 0 {
                eprintln!("{line}");
            }
        }
    };
    let c = visionthink::convert::convert(&a.from, &a.out, opts, &mut bar)
        .with_context(|| format!("converting {}", a.from.display()))?;
    if tty {
        eprintln!();
    }
    if a.json {
        let v = serde_json::json!({
            "model": c.text,
            "mmproj": c.mmproj,
            "files": c.files.iter().map(|f| serde_json::json!({"path": f.path, "size": f.size, "sha256": f.sha256})).collect::<Vec<_>>(),
            "tensor_types": c.types.iter().map(|(t, n)| (t.name().to_string(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for f in &c.files {
            println!(
                "{}  {} bytes  sha256 {}",
                f.path.display(),
                f.size,
                f.sha256
            );
        }
        println!(
            "run: visionthink ask --model {} --mmproj {} --image IMG --question Q",
            c.text.display(),
            c.mmproj.display()
        );
    }
    Ok(())
}

#[derive(clap::Args)]
struct PreprocessArgs {
    /// Image file (PNG, JPEG, WebP, GIF).
    #[arg(long)]
    image: PathBuf,
    /// Apply the VisionThink inference downscale (half width, half height) first.
    #[arg(long)]
    low_res: bool,
    /// Override the minimum area.
    #[arg(long)]
    min_pixels: Option<u64>,
    /// Override the maximum area.
    #[arg(long)]
    max_pixels: Option<u64>,
    /// Take limits from this model directory's preprocessor_config.json.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct TokenizeArgs {
    /// Model directory with tokenizer.json.
    #[arg(long)]
    model_dir: PathBuf,
    /// Prompt text; each image appears as <|vision_start|><|image_pad|><|vision_end|>.
    #[arg(long)]
    prompt_file: PathBuf,
    /// Images in prompt order.
    #[arg(long = "image")]
    images: Vec<PathBuf>,
    /// Override the minimum area.
    #[arg(long)]
    min_pixels: Option<u64>,
    /// Override the maximum area.
    #[arg(long)]
    max_pixels: Option<u64>,
    /// Downscale every image as the VisionThink low-resolution turn does.
    #[arg(long)]
    low_res: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct PromptCmdArgs {
    /// The question (an <image> tag places the image; otherwise it comes first).
    #[arg(long)]
    question: String,
    /// Render through this model directory's chat template.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ScoreArgs {
    /// Which judge decides accuracy.
    #[arg(long, value_enum)]
    judge: JudgeKind,
    /// Rollouts JSONL.
    #[arg(long)]
    input: PathBuf,
    /// Scored JSONL to write.
    #[arg(long)]
    output: PathBuf,
    /// Group penalty.
    #[arg(long, value_enum, default_value = "code")]
    penalty: Penalty,
    /// OpenAI-compatible endpoint for `--judge http` (e.g. http://127.0.0.1:8000/v1).
    #[arg(long)]
    judge_url: Option<String>,
    /// Model name for `--judge http`.
    #[arg(long)]
    judge_model: Option<String>,
    /// Per-request timeout in seconds for `--judge http`.
    #[arg(long, default_value_t = 120.0)]
    judge_timeout: f64,
    /// Concurrent judge requests.
    #[arg(long, default_value_t = 8)]
    workers: usize,
}

#[derive(clap::Args)]
struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompt: PromptArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompt: PromptArgs,
    #[command(flatten)]
    gen: GenArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct AskArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The image.
    #[arg(long)]
    image: PathBuf,
    /// The question.
    #[arg(long)]
    question: String,
    /// Generation rounds [default: 2 (official); 3 with --tools resize,crop].
    #[arg(long)]
    max_rounds: Option<usize>,
    /// Images per episode, the low-res one included [default: 2 (official); 3 with
    /// --tools resize,crop].
    #[arg(long)]
    max_images: Option<usize>,
    /// The tools offered to the model: `resize` (the official protocol and system prompt) or
    /// `resize,crop` (beyond the paper: `crop_image` also returns a box of the original image).
    #[arg(long, default_value = "resize")]
    tools: String,
    #[command(flatten)]
    gen: GenArgs,
    /// Print tokens as they are generated.
    #[arg(long)]
    stream: bool,
    /// Teacher forcing: feed this text as the next model turn instead of generating (repeat
    /// for several turns).
    #[arg(long = "force-turn")]
    force_turns: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: visionthink::remote::RemoteArgs,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Use this image instead of the built-in example.
    #[arg(long)]
    image: Option<PathBuf>,
    /// The question.
    #[arg(long, default_value = EXAMPLE_QUESTION)]
    question: String,
    /// Write the low-resolution image the model sees first (PNG).
    #[arg(long)]
    save_low_res: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// Model directory (HF layout), or with `--features hub` a Hub id like owner/name. Default:
    /// the shipped synthetic-task model embedded in the binary.
    #[arg(long, conflicts_with = "model")]
    model_dir: Option<PathBuf>,
    /// A llama.cpp text GGUF (Q4_K_M, Q8_0, F16, …; the first part names a split set), or a
    /// folder holding one text GGUF and one `mmproj` GGUF. Instead of --model-dir.
    #[arg(long, value_name = "PATH.gguf")]
    model: Option<PathBuf>,
    /// The vision tower's GGUF (llama.cpp's `mmproj-….gguf`) for --model.
    #[arg(long, value_name = "PATH.gguf", requires = "model")]
    mmproj: Option<PathBuf>,
    /// Override the processor's maximum area.
    #[arg(long)]
    max_pixels: Option<u64>,
    /// Executor.
    #[arg(long, value_enum, default_value = "candle")]
    backend: BackendKind,
    /// Compute dtype.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
    /// Device.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// How the WebGPU executor stores weights: f32, f16 or int8 (default: f16 with --dtype f16,
    /// else f32). Only with --backend wgpu.
    #[arg(long, value_name = "f32|f16|int8")]
    weights: Option<String>,
}

#[derive(clap::Args)]
struct PromptArgs {
    /// Prompt text file; each image appears as <|vision_start|><|image_pad|><|vision_end|>.
    #[arg(long)]
    prompt_file: PathBuf,
    /// Images in prompt order.
    #[arg(long = "image")]
    images: Vec<PathBuf>,
}

impl PromptArgs {
    fn load(&self) -> Result<(String, Vec<RgbImage>)> {
        Ok((read_prompt(&self.prompt_file)?, load_images(&self.images)?))
    }
}

/// Flags of `visionthink serve`.
#[cfg(feature = "serve")]
#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 = any free port; the chosen one is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Answer official LLM-judge requests with the deterministic rule judge.
    #[arg(long)]
    rule_judge: bool,
    /// Serve only the rule judge (no model is loaded).
    #[arg(long)]
    no_model: bool,
    /// Model name reported to clients.
    #[arg(long, default_value = "visionthink")]
    name: String,
    /// Require `Authorization: Bearer KEY` on every route but /health. Needed to bind an
    /// address other than loopback (or pass --insecure).
    #[arg(long, env = "VISIONTHINK_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Serve a non-loopback address without an API key.
    #[arg(long)]
    insecure: bool,
    /// Largest request body in bytes (images travel inline as base64); larger is a 413.
    #[arg(long, default_value_t = 64 << 20)]
    max_body_bytes: usize,
    /// Largest decoded image, in pixels (width × height); larger is a 400. Sides are
    /// limited to 32768 px, decoder memory to 1 GiB.
    #[arg(long, default_value_t = 89_478_485)]
    max_image_pixels: u64,
    /// Largest `max_tokens` a request may ask for, per model turn; larger is a 400.
    #[arg(long, default_value_t = 8192)]
    max_tokens_cap: usize,
    /// Images one request to the `-raw` model may carry; more is a 400.
    #[arg(long, default_value_t = 8)]
    max_images_per_request: usize,
    /// A browser origin allowed to call the server (CORS), e.g. https://app.example (repeat
    /// for several; `*` for any). Pages using the npm package's remote engine need it.
    #[arg(long = "allow-origin")]
    allow_origins: Vec<String>,
    /// Requests decoded together (continuous batching).
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Requests that may wait for a place in the batch; one more is a 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Milliseconds a decode step waits for the other requests' steps.
    #[arg(long, default_value_t = 2.0)]
    batch_window_ms: f64,
    /// Seconds a request may take from arrival to its last token, waiting for the model
    /// included; past it the generation stops and the answer is a 504.
    #[arg(long, default_value_t = 300.0)]
    request_timeout: f64,
}

#[derive(clap::Args)]
struct GenArgs {
    /// New-token budget per turn (official evaluation: 8192).
    #[arg(long, default_value_t = 8192)]
    max_new_tokens: usize,
    /// Greedy decoding (the default unless --temperature > 0).
    #[arg(long)]
    greedy: bool,
    /// Keep generating past end-of-turn tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Top-k cutoff (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl GenArgs {
    fn options(&self) -> Result<visionthink::GenerateOptions> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!("--temperature must be a non-negative number");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1]");
        }
        Ok(visionthink::GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            ignore_eos: self.ignore_eos,
            sampling: visionthink_core::sampling::SamplingConfig {
                temperature: if self.greedy { 0.0 } else { self.temperature },
                top_p: self.top_p,
                top_k: self.top_k,
                seed: self.seed,
            },
            cancel: None,
        })
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendKind {
    Candle,
    Wgpu,
}

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    F32,
    Bf16,
    F16,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

fn load_model(args: &ModelArgs) -> Result<visionthink::VisionThink> {
    let precision = match args.dtype {
        DtypeArg::F32 => visionthink::Precision::F32,
        DtypeArg::Bf16 => visionthink::Precision::Bf16,
        DtypeArg::F16 => visionthink::Precision::F16,
    };
    let device = match (args.backend, args.device) {
        (BackendKind::Candle, DeviceArg::Cpu) => visionthink::DeviceChoice::Cpu,
        (BackendKind::Candle, DeviceArg::Cuda) => visionthink::DeviceChoice::Cuda,
        (BackendKind::Wgpu, DeviceArg::Cpu) => visionthink::DeviceChoice::Wgpu,
        (BackendKind::Wgpu, DeviceArg::Cuda) => {
            bail!("--backend wgpu picks its GPU through WGPU_BACKEND; --device cuda is for --backend candle")
        }
    };
    let opts = visionthink::LoadOptions {
        device,
        precision,
        wgpu_weights: args
            .weights
            .as_deref()
            .map(visionthink::WeightStorage::parse)
            .transpose()?,
    };
    if let Some(model) = &args.model {
        let (text, mmproj) = gguf_pair(model, args.mmproj.as_deref())?;
        let mut vt = visionthink::VisionThink::load_gguf(&text, &mmproj, &opts)
            .with_context(|| format!("loading {} with {}", text.display(), mmproj.display()))?;
        override_limits(&mut vt.dir.preprocessor, None, args.max_pixels)?;
        return Ok(vt);
    }
    let Some(dir) = &args.model_dir else {
        #[cfg(feature = "embedded-model")]
        {
            let mut vt =
                visionthink::shipped::load_with(&opts).context("loading the shipped model")?;
            override_limits(&mut vt.dir.preprocessor, None, args.max_pixels)?;
            return Ok(vt);
        }
        #[cfg(not(feature = "embedded-model"))]
        bail!("no model: pass --model-dir DIR (this build embeds no default model)");
    };
    let dir = visionthink::files::resolve_model(&dir.display().to_string())?;
    let mut vt = visionthink::VisionThink::load_with(&dir, &opts)
        .with_context(|| format!("loading {}", dir.display()))?;
    override_limits(&mut vt.dir.preprocessor, None, args.max_pixels)?;
    Ok(vt)
}

/// The text and mmproj GGUF files of `--model` (a file, or a folder holding exactly one text
/// GGUF, or the first parts of split sets, and one file whose name starts with `mmproj`) and
/// `--mmproj`.
fn gguf_pair(model: &Path, mmproj: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    if !model.is_dir() {
        let Some(mm) = mmproj else {
            bail!("--model {} needs --mmproj PATH.gguf (the vision tower), or give a folder holding both", model.display());
        };
        return Ok((model.to_path_buf(), mm.to_path_buf()));
    }
    let mut texts = Vec::new();
    let mut mms = Vec::new();
    for entry in std::fs::read_dir(model).with_context(|| format!("reading {}", model.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let later_part =
            visionthink_model::gguf::split_part(name).is_some_and(|(_, no, _)| no != 1);
        if !name.ends_with(".gguf") || later_part {
            continue;
        }
        if name.to_ascii_lowercase().starts_with("mmproj") {
            mms.push(path);
        } else {
            texts.push(path);
        }
    }
    let mm = match (mmproj, mms.as_slice()) {
        (Some(m), _) => m.to_path_buf(),
        (None, [one]) => one.clone(),
        (None, found) => bail!(
            "{}: {} files named mmproj*.gguf (one is needed; or pass --mmproj)",
            model.display(),
            found.len()
        ),
    };
    match texts.as_slice() {
        [one] => Ok((one.clone(), mm)),
        found => bail!(
            "{}: {} text GGUF files (one is needed; name it with --model FILE)",
            model.display(),
            found.len()
        ),
    }
}

fn load_images(paths: &[PathBuf]) -> Result<Vec<RgbImage>> {
    paths.iter().map(|p| Ok(load_image(p)?)).collect()
}

#[derive(Clone, Copy, ValueEnum)]
enum JudgeKind {
    Exact,
    Rule,
    Http,
}

#[derive(Clone, Copy, ValueEnum)]
enum Penalty {
    Code,
    Paper,
    None,
    AlwaysTool,
}

fn main() {
    visionthink_model::candle_backend::fix_thread_count();
    visionthink_model::candle_backend::tune_allocator();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn pixel_json(pv: &PixelValues) -> Value {
    let mut h = Sha256::new();
    let mut sum = 0f64;
    for v in &pv.data {
        h.update(v.to_le_bytes());
        sum += f64::from(*v);
    }
    json!({
        "shape": [pv.num_patches(), pv.row_len()],
        "sum": sum,
        "sha256_f32le": hex::encode(h.finalize()),
    })
}

fn processor_config(
    model_dir: Option<&Path>,
    min: Option<u64>,
    max: Option<u64>,
) -> Result<PreprocessorConfig> {
    let mut cfg = match model_dir {
        Some(dir) => {
            let p = dir.join("preprocessor_config.json");
            if p.exists() {
                let bytes = files::read_file(&p, files::MAX_FILE_BYTES)?;
                PreprocessorConfig::from_json(&bytes)
                    .with_context(|| format!("reading {}", p.display()))?
            } else {
                PreprocessorConfig::default()
            }
        }
        None => PreprocessorConfig::default(),
    };
    override_limits(&mut cfg, min, max)?;
    Ok(cfg)
}

/// Applies `--min-pixels` / `--max-pixels` over a processor config and checks the result.
fn override_limits(cfg: &mut PreprocessorConfig, min: Option<u64>, max: Option<u64>) -> Result<()> {
    if let Some(v) = min {
        cfg.min_pixels = v;
    }
    if let Some(v) = max {
        cfg.max_pixels = v;
    }
    if cfg.min_pixels > cfg.max_pixels {
        bail!(
            "min_pixels {} is larger than max_pixels {}",
            cfg.min_pixels,
            cfg.max_pixels
        );
    }
    Ok(())
}

fn read_prompt(path: &Path) -> Result<String> {
    let bytes = files::read_file(path, files::MAX_FILE_BYTES)?;
    String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("prompt file {} is not UTF-8: {e}", path.display()))
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Preprocess(a) => cmd_preprocess(a)?,
        Command::Tokenize(a) => cmd_tokenize(a)?,
        Command::Prompt(a) => cmd_prompt(a)?,
        Command::Score(a) => cmd_score(a)?,
        Command::Logits(a) => cmd_logits(a)?,
        Command::Generate(a) => cmd_generate(a)?,
        Command::Ask(a) => cmd_ask(a)?,
        Command::Convert(a) => cmd_convert(a)?,
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve(args)?,
        Command::Demo(a) => demo(
            a.image.as_deref(),
            &a.question,
            a.save_low_res.as_deref(),
            a.json,
        )?,
    }
    Ok(())
}

/// `visionthink preprocess`.
fn cmd_preprocess(a: PreprocessArgs) -> Result<()> {
    let PreprocessArgs {
        image,
        low_res,
        min_pixels,
        max_pixels,
        model_dir,
        json: as_json,
    } = a;
    let cfg = processor_config(model_dir.as_deref(), min_pixels, max_pixels)?;
    let original = load_image(&image)?;
    let input = if low_res {
        inference_low_res(&original)
            .with_context(|| format!("low-resolution copy of {}", image.display()))?
    } else {
        original.clone()
    };
    let pv =
        preprocess(&input, &cfg).with_context(|| format!("preprocessing {}", image.display()))?;
    let mut v = json!({
        "input_size_wh": [original.width, original.height],
        "resized_hw": [pv.resized.height, pv.resized.width],
        "grid_thw": pv.grid_thw,
        "num_image_tokens": pv.num_image_tokens(cfg.merge_size),
        "resized_rgb_sha256": sha256_hex(&pv.resized.data),
        "pixel_values": pixel_json(&pv),
    });
    if low_res {
        v["low_res_wh"] = json!([input.width, input.height]);
    }
    if as_json {
        print_json(&v)?;
    } else {
        println!(
            "{}: {}x{} → resized {}x{} (w×h), grid {:?}, {} image tokens",
            image.display(),
            input.width,
            input.height,
            pv.resized.width,
            pv.resized.height,
            pv.grid_thw,
            pv.num_image_tokens(cfg.merge_size)
        );
    }
    Ok(())
}

/// `visionthink tokenize`.
fn cmd_tokenize(a: TokenizeArgs) -> Result<()> {
    let TokenizeArgs {
        model_dir,
        prompt_file,
        images,
        min_pixels,
        max_pixels,
        low_res,
        json: as_json,
    } = a;
    let model = ModelDir::open(&model_dir)?;
    let mut cfg = model.preprocessor.clone();
    override_limits(&mut cfg, min_pixels, max_pixels)?;
    let text = read_prompt(&prompt_file)?;
    let mut counts = Vec::new();
    let mut grids = Vec::new();
    for path in &images {
        let img = load_image(path)?;
        let img = if low_res {
            inference_low_res(&img)?
        } else {
            img
        };
        let pv =
            preprocess(&img, &cfg).with_context(|| format!("preprocessing {}", path.display()))?;
        counts.push(pv.num_image_tokens(cfg.merge_size));
        grids.push(pv.grid_thw);
    }
    let ids = model
        .tokenizer
        .encode_rendered(&text, &counts)
        .with_context(|| format!("tokenizing {}", prompt_file.display()))?;
    let (pos, delta) = rope_index(&ids, &grids, cfg.merge_size)?;
    let v = json!({"input_ids": ids, "position_ids": pos.axes, "rope_delta": delta});
    if as_json {
        print_json(&v)?;
    } else {
        println!(
            "{} tokens ({} images), rope_delta {delta}",
            ids.len(),
            images.len()
        );
    }
    Ok(())
}

/// `visionthink prompt`.
fn cmd_prompt(a: PromptCmdArgs) -> Result<()> {
    let PromptCmdArgs {
        question,
        model_dir,
        json: as_json,
    } = a;
    let p = match model_dir {
        Some(dir) => {
            let model = ModelDir::open(&dir)?;
            match model.chat_template {
                Some(t) => t.visionthink_turn1(&question)?,
                None => prompt::visionthink_turn1(&question),
            }
        }
        None => prompt::visionthink_turn1(&question),
    };
    if as_json {
        print_json(&json!({"prompt_text": p.render()}))?;
    } else {
        print!("{}", p.render());
    }
    Ok(())
}

/// `visionthink score`.
fn cmd_score(a: ScoreArgs) -> Result<()> {
    let ScoreArgs {
        judge,
        input,
        output,
        penalty,
        judge_url,
        judge_model,
        judge_timeout,
        workers,
    } = a;
    let text = read_prompt(&input)?;
    let lines = score::parse_rollouts(&text, &input.display().to_string())?;
    let cfg = RewardConfig {
        penalty: match penalty {
            Penalty::Code => PenaltyMode::Code,
            Penalty::Paper => PenaltyMode::Paper,
            Penalty::None => PenaltyMode::None,
            Penalty::AlwaysTool => PenaltyMode::AlwaysPenalizeTool,
        },
        ..RewardConfig::default()
    };
    let judge = match judge {
        JudgeKind::Exact => JudgeChoice::Exact,
        JudgeKind::Rule => JudgeChoice::Rule,
        JudgeKind::Http => {
            let url = judge_url.context("--judge http needs --judge-url")?;
            let model = judge_model.context("--judge http needs --judge-model")?;
            if !(judge_timeout.is_finite() && judge_timeout > 0.0) {
                bail!("--judge-timeout must be a positive number of seconds");
            }
            let mut c = HttpJudgeConfig::new(&url, &model);
            c.timeout = std::time::Duration::from_secs_f64(judge_timeout);
            c.api_key = std::env::var("VISIONTHINK_JUDGE_API_KEY").ok();
            JudgeChoice::Http(c)
        }
    }
    .build();
    let scored = score::score_rollouts(&lines, judge.as_ref(), &cfg, workers);
    let mut out = String::new();
    for v in &scored {
        out.push_str(&serde_json::to_string(v)?);
        out.push('\n');
    }
    // Through a synced temporary file and a rename: a failure never leaves half a file.
    visionthink::files::write_atomic(&output, out.as_bytes())
        .with_context(|| format!("writing {}", output.display()))?;
    let failed = scored
        .iter()
        .filter(|v| v.get("judge_error").is_some())
        .count();
    if failed > 0 {
        eprintln!("warning: the judge failed on {failed} rollout(s); their groups are marked group_kept=false");
    }
    Ok(())
}

/// `visionthink logits`.
fn cmd_logits(a: LogitsArgs) -> Result<()> {
    let LogitsArgs {
        model,
        prompt,
        json: as_json,
    } = a;
    let vt = load_model(&model)?;
    let (text, images) = prompt.load()?;
    let logits = vt.prompt_logits(&text, &images)?;
    let argmax = visionthink_core::sampling::argmax(&logits);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let top5: Vec<Value> = order
        .iter()
        .take(5)
        .map(|&i| json!([i, logits[i]]))
        .collect();
    let v = json!({"argmax": argmax, "logits_last_first16": &logits[..16.min(logits.len())], "top5": top5});
    if as_json {
        print_json(&v)?;
    } else {
        println!(
            "argmax {argmax}; top5 {}",
            serde_json::to_string(&v["top5"])?
        );
    }
    Ok(())
}

/// `visionthink generate`.
fn cmd_generate(a: GenerateArgs) -> Result<()> {
    let GenerateArgs {
        model,
        prompt,
        gen,
        json: as_json,
    } = a;
    let vt = load_model(&model)?;
    let (prompt, images) = prompt.load()?;
    let opts = gen.options()?;
    let (tokens, text) = vt.generate(&prompt, &images, &opts, |_, piece| {
        if !as_json {
            print!("{piece}");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
    })?;
    if as_json {
        print_json(&json!({"tokens": tokens, "text": text}))?;
    } else {
        println!();
    }
    Ok(())
}

/// `visionthink ask`.
fn cmd_ask(a: AskArgs) -> Result<()> {
    let AskArgs {
        model,
        image,
        question,
        max_rounds,
        max_images,
        tools,
        gen,
        stream,
        force_turns,
        json: as_json,
        remote,
    } = a;
    let protocol = visionthink::core::protocol::ProtocolConfig::from_tools(&tools)?
        .with_limits(max_rounds, max_images);
    let extended = protocol.tools.len() > 1;
    let remote = match remote.config().map_err(anyhow::Error::msg)? {
        Some(mut cfg) => {
            cfg.stream = stream;
            Some(visionthink::RemoteEngine::connect(cfg)?)
        }
        None => None,
    };
    let local = match remote {
        Some(_) => None,
        None => Some(load_model(&model)?),
    };
    let engine: &dyn visionthink::Engine = match (&remote, &local) {
        (Some(r), _) => r,
        (None, Some(l)) => l,
        (None, None) => bail!("no engine"),
    };
    let img = load_image(&image)?;
    if protocol.max_rounds == 0 || protocol.max_images == 0 {
        bail!("--max-rounds and --max-images must be at least 1");
    }
    let opts = visionthink::AskOptions {
        generation: gen.options()?,
        protocol,
        forced_turns: force_turns,
    };
    let answer = engine.ask_streaming(&img, &question, &opts, &mut |ev| {
        if stream && !as_json {
            match ev {
                visionthink::Event::Token { text, .. } => print!("{text}"),
                visionthink::Event::ResizeRequested if extended => {
                    print!("\n[tool image appended]\n")
                }
                visionthink::Event::ResizeRequested => {
                    print!("\n[resize → full-resolution image]\n")
                }
            }
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
        if stream && as_json {
            if let visionthink::Event::Token { text, .. } = ev {
                eprint!("{text}");
            }
        }
    })?;
    if as_json {
        let mut v = serde_json::to_value(&answer)?;
        v["num_turns"] = json!(answer.turns.len());
        print_json(&v)?;
    } else {
        if stream {
            println!();
        }
        println!("answer: {}", answer.text);
        println!(
            "full image requested: {}; visual tokens {} (full-res only: {}); {} turn(s); {:.0} ms",
            answer.used_high_res,
            answer.visual_tokens,
            answer.visual_tokens_full_res,
            answer.turns.len(),
            answer.timings.total_ms
        );
    }
    Ok(())
}

/// `visionthink serve`: checks the flags and the bind address (no model is loaded for a
/// refused bind), then serves until Ctrl-C.
#[cfg(feature = "serve")]
fn serve(a: ServeArgs) -> Result<()> {
    if !(a.request_timeout > 0.0 && a.request_timeout.is_finite()) {
        bail!("--request-timeout must be a positive number of seconds");
    }
    if a.max_tokens_cap == 0 {
        bail!("--max-tokens-cap must be at least 1");
    }
    if a.max_batch == 0 {
        bail!("--max-batch must be at least 1");
    }
    if !(a.batch_window_ms >= 0.0 && a.batch_window_ms.is_finite()) {
        bail!("--batch-window-ms must be a number ≥ 0");
    }
    let cfg = visionthink::serve::ServeConfig {
        model_name: a.name,
        rule_judge: a.rule_judge || a.no_model,
        max_tokens_cap: a.max_tokens_cap,
        body_limit: a.max_body_bytes,
        image_limits: visionthink::core::image::DecodeLimits {
            max_pixels: a.max_image_pixels,
            ..Default::default()
        },
        request_timeout: std::time::Duration::from_secs_f64(a.request_timeout),
        api_key: a.api_key.filter(|k| !k.is_empty()),
        max_images: a.max_images_per_request,
        allowed_origins: a.allow_origins,
        max_batch: a.max_batch,
        max_queue: a.max_queue,
        batch_window: std::time::Duration::from_secs_f64(a.batch_window_ms.max(0.0) / 1e3),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (host, port) = (a.host, a.port);
    let addrs: Vec<std::net::SocketAddr> = rt
        .block_on(tokio::net::lookup_host((host.as_str(), port)))
        .with_context(|| format!("cannot resolve {host}"))?
        .collect();
    visionthink::serve::check_bind(&addrs, &cfg, a.insecure).map_err(anyhow::Error::msg)?;
    let vt = if a.no_model {
        None
    } else {
        Some(load_model(&a.model)?)
    };
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addrs.as_slice())
            .await
            .with_context(|| format!("cannot bind {host}:{port}"))?;
        let addr = listener.local_addr()?;
        println!("listening on http://{addr}/v1");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let app = visionthink::serve::router(vt, cfg)
            .into_make_service_with_connect_info::<visionthink::serve::Peer>();
        axum::serve(listener, app)
            .with_graceful_shutdown(visionthink::serve::shutdown_signal())
            .await?;
        Ok::<(), anyhow::Error>(())
    })
}

fn demo(
    image: Option<&Path>,
    question: &str,
    save_low_res: Option<&Path>,
    as_json: bool,
) -> Result<()> {
    let (original, source) = match image {
        Some(p) => (load_image(p)?, p.display().to_string()),
        None => (
            visionthink::core::image::decode(EXAMPLE_IMAGE, Default::default())?,
            "built-in example".to_string(),
        ),
    };
    let tok = QwenTokenizer::from_bytes(EMBEDDED_TOKENIZER)?;
    let cfg = PreprocessorConfig::default();
    let mut episode = visionthink::core::protocol::Episode::new(question, Default::default());
    let turn1 = episode.initial_prompt();
    let images = visionthink::core::protocol::EpisodeImages::for_inference(&original)?;
    let low = preprocess(&images.low_res, &cfg)?;
    let full = preprocess(&images.high_res, &cfg)?;
    let (low_tokens, full_tokens) = (low.num_image_tokens(2), full.num_image_tokens(2));
    let ids = tok.encode_prompt(&turn1, &[low_tokens])?;
    let tool_turn = prompt::tool_response_image();
    let tool_ids = tok.encode_prompt(&tool_turn, &[full_tokens])?;
    if let Some(path) = save_low_res {
        write_png(path, &images.low_res)?;
    }
    let saved = 100.0 * (1.0 - low_tokens as f64 / full_tokens as f64);
    let shipped = shipped_demo()?;
    if as_json {
        return print_json(&json!({
            "shipped_model": shipped,
            "image": source,
            "question": question,
            "original_wh": [original.width, original.height],
            "low_res_wh": [images.low_res.width, images.low_res.height],
            "visual_tokens_low_res": low_tokens,
            "visual_tokens_full_res": full_tokens,
            "visual_tokens_saved_percent": saved,
            "turn1_prompt_tokens": ids.len(),
            "tool_turn_tokens": tool_ids.len(),
            "prompt_text": turn1.render(),
        }));
    }
    println!(
        "VisionThink protocol on the {source} ({}x{})",
        original.width, original.height
    );
    println!("question: {question}\n");
    println!("turn 1 — the model sees the half-size image:");
    println!(
        "  low-res {}x{} → {}x{} after smart_resize → {low_tokens} visual tokens (full image: {full_tokens}; {saved:.1}% fewer)",
        images.low_res.width, images.low_res.height, low.resized.width, low.resized.height
    );
    println!(
        "  prompt: {} tokens with the image; its text ends with:",
        ids.len()
    );
    let text = turn1.render();
    let tail: String = text
        .chars()
        .rev()
        .take(170)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    for line in tail.lines() {
        println!("    | {line}");
    }
    println!("\nthen either the model answers directly: <think>…</think><answer>…</answer> (done, {low_tokens} visual tokens),");
    println!("or it calls the tool: <tool_call>{{\"name\": \"resize_image\", \"arguments\": {{\"action\": \"resize\"}}}}</tool_call>");
    println!(
        "  and turn 2 appends the full image ({}x{}, {full_tokens} tokens) in a tool response of {} tokens, directly after <|im_end|>.",
        images.high_res.width,
        images.high_res.height,
        tool_ids.len()
    );
    if let Some(p) = save_low_res {
        println!("\nlow-res image written to {}", p.display());
    }
    if let Some(runs) = shipped {
        println!(
            "\nthe shipped model (trained on the synthetic task) on its example image (224x224):"
        );
        for r in runs {
            println!(
                "  [{}] {}\n      → {}  (full image requested: {}; visual tokens {} vs {} at full resolution)",
                r["kind"].as_str().unwrap_or(""),
                r["question"].as_str().unwrap_or(""),
                r["answer"].as_str().unwrap_or(""),
                r["used_high_res"],
                r["visual_tokens"],
                r["visual_tokens_full_res"]
            );
        }
    }
    Ok(())
}

/// The shipped model answering a coarse and a fine question about its example image.
fn shipped_demo() -> Result<Option<Vec<Value>>> {
    #[cfg(feature = "embedded-model")]
    {
        use visionthink::shipped;
        let vt = shipped::load(Default::default(), Default::default())?;
        let img = visionthink::core::image::decode(shipped::EXAMPLE_IMAGE, Default::default())?;
        let opts = visionthink::AskOptions {
            generation: visionthink::GenerateOptions {
                max_new_tokens: 64,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut out = Vec::new();
        for (kind, q) in [
            ("coarse", shipped::EXAMPLE_COARSE),
            ("fine", shipped::EXAMPLE_FINE),
        ] {
            let a = vt.ask(&img, q, &opts)?;
            out.push(json!({
                "kind": kind,
                "question": q,
                "answer": a.text,
                "used_high_res": a.used_high_res,
                "visual_tokens": a.visual_tokens,
                "visual_tokens_full_res": a.visual_tokens_full_res,
                "turns": a.turns,
            }));
        }
        Ok(Some(out))
    }
    #[cfg(not(feature = "embedded-model"))]
    Ok(None)
}

fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    let buf = image::RgbImage::from_raw(img.width, img.height, img.data.clone())
        .context("pixel buffer size")?;
    buf.save_with_format(path, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", path.display()))
}
