//! `visionthink-train`: synth, sft, train (GRPO), eval, select, export, plot.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use visionthink_train::config::{Phase, TrainConfig};
use visionthink_train::data::Kind;
use visionthink_train::data::{BadRows, Dataset};
use visionthink_train::files::write_atomic;
use visionthink_train::policy::SaveDtype;
use visionthink_train::rollout::ImagePath;
use visionthink_train::{eval, synth, train};

// Training allocates and frees many large tensors (vocabulary-sized logits and gradients);
// mimalloc keeps freed pages for reuse instead of returning them to the kernel each time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "visionthink-train",
    version,
    about = "Multi-turn GRPO for VisionThink on candle"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct RunArgs {
    /// TOML configuration (defaults: the official settings).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a key: `--set grpo.kl_coef=0 --set run.out=runs/x`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue from the newest checkpoint in run.out.
    #[arg(long)]
    resume: bool,
    /// Test hook: exit without saving right after this step.
    #[arg(long, hide = true)]
    fail_at_step: Option<usize>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes a synthetic VisionThink set: coarse questions (colour, background shade) answerable from the
    /// half-size image, fine ones (one-pixel texture) that are not. `--task v2` (for the crop
    /// tool): 448-pixel images, and the fine questions split into global ones (is the
    /// background texture the same everywhere) and local ones (the texture inside a small
    /// framed square).
    Synth {
        /// Which task.
        #[arg(long, value_enum, default_value = "v1")]
        task: synth::Task,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Questions.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Output folder (data.jsonl + images/).
        #[arg(long)]
        out: PathBuf,
        /// Fraction of fine questions.
        #[arg(long, default_value_t = 0.15)]
        fine_fraction: f64,
        /// Image side in pixels (default 224 for v1, 448 for v2; v2 needs a multiple of 56 from
        /// 112 on).
        #[arg(long)]
        size: Option<u32>,
    },
    /// SFT warm start on traces whose resize decision ignores the question.
    Sft(RunArgs),
    /// Multi-turn GRPO.
    Train(RunArgs),
    /// Writes a checkpoint's model as a clean HF folder (weights in bf16 or f32, config,
    /// tokenizer, processor settings, template; no optimizer state).
    Export {
        /// A checkpoint or model folder (default: the shipped model embedded in this binary,
        /// e.g. to start a run from it with `model.init_from`).
        #[arg(long)]
        from: Option<PathBuf>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Weight dtype.
        #[arg(long, value_enum, default_value = "bf16")]
        dtype: SaveDtype,
    },
    /// Writes a random checkpoint of a real Qwen2.5-VL shape (3B or 7B) in the hub's layout:
    /// bf16 shards with model.safetensors.index.json, config.json, and the shipped model's
    /// tokenizer, template and processor files. For load and speed measurements at real size;
    /// the answers are noise. Prints `{"out", "bytes", "seconds"}`.
    RandomCheckpoint {
        /// The shape.
        #[arg(long, value_enum)]
        shape: visionthink_train::shapes::Shape,
        /// Output folder (a cache folder: 7.5 GB for 3B, 16.6 GB for 7B).
        #[arg(long)]
        out: PathBuf,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Largest shard in bytes.
        #[arg(long, default_value_t = 4_000_000_000)]
        shard_bytes: u64,
    },
    /// Draws the PNG curves of a run folder's metrics.jsonl into it.
    Plot {
        /// The run folder.
        #[arg(long)]
        run: PathBuf,
    },
    /// Evaluates a model against always-high and always-low baselines.
    Eval {
        /// Model folder (default: the shipped model).
        #[arg(long, conflicts_with = "model")]
        model_dir: Option<PathBuf>,
        /// A llama.cpp text GGUF (Q4_K_M, Q8_0, F16, …; the first part names a split set),
        /// evaluated instead of --model-dir, with --mmproj.
        #[arg(long, value_name = "PATH.gguf", requires = "mmproj")]
        model: Option<PathBuf>,
        /// The vision tower's GGUF for --model.
        #[arg(long, value_name = "PATH.gguf", requires = "model")]
        mmproj: Option<PathBuf>,
        /// Data folder.
        #[arg(long)]
        data: PathBuf,
        /// Print the JSON report.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        opts: EvalOpts,
        /// Write report.md, report.json and samples.jsonl (every question's responses) here.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        remote: RemoteEvalOpts,
    },
    /// Evaluates every checkpoint of a run folder on a validation set (not the test set) and
    /// prints the best one's folder: the highest mean accuracy reward with the tool penalty
    /// (right from the half-size image 1, right after a resize 0.9, wrong 0), then the fewest
    /// visual tokens, then the earliest step. One JSON line per checkpoint goes to stderr, the
    /// ranking to `select.json` in the run folder.
    Select {
        /// The run folder (its `step-N` checkpoints).
        #[arg(long)]
        run: PathBuf,
        /// Validation data folder.
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        opts: EvalOpts,
    },
}

/// `eval` of a served model.
#[derive(clap::Args)]
struct RemoteEvalOpts {
    /// With --endpoint: evaluate the model an OpenAI-compatible chat server serves (vLLM,
    /// `visionthink serve`) instead of a model folder — accuracy, tool use, visual tokens and
    /// latency of the low-res-first protocol (report.md and report.json with --out).
    #[command(flatten)]
    remote: visionthink::remote::RemoteArgs,
    /// Questions in flight at once (a server batches them).
    #[arg(long, default_value_t = 1, requires = "endpoint")]
    concurrency: usize,
}

/// Options shared by `eval` and `select`.
#[derive(clap::Args)]
struct EvalOpts {
    /// Rows to evaluate (0 = all).
    #[arg(long, default_value_t = 0)]
    rows: usize,
    /// Image path.
    #[arg(long, value_enum, default_value = "inference")]
    image_path: ImagePathArg,
    /// Token budget per turn.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Malformed rows.
    #[arg(long, value_enum, default_value = "skip")]
    bad_rows: BadRows,
    /// The low-res-first policy's tools: `resize` (the official protocol) or `resize,crop`
    /// (3 rounds and the extended system prompt; the report adds crop and box-hit ratios).
    #[arg(long, default_value = "resize")]
    tools: String,
    /// Rounds (and images) per episode (default: 2 for `resize`, 3 for `resize,crop`).
    #[arg(long)]
    max_rounds: Option<usize>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ImagePathArg {
    Training,
    Inference,
    /// Turn 1 shows the original (the full-resolution baseline's path).
    Full,
}

/// Prints the error with its cause chain on one line (`error: what: why`), as the `visionthink`
/// binary does, and exits with 1 (no debug dump or backtrace for a user's mistake).
fn main() {
    visionthink_model::candle_backend::fix_thread_count();
    visionthink_model::candle_backend::tune_allocator();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Synth {
            task,
            seed,
            count,
            out,
            fine_fraction,
            size,
        } => cmd_synth(
            task,
            synth::SynthConfig {
                seed,
                count,
                fine_fraction,
                size: size.unwrap_or(match task {
                    synth::Task::V1 => 224,
                    synth::Task::V2 => 448,
                }),
            },
            &out,
        ),
        Cmd::Sft(a) => cmd_phase(Phase::Sft, a),
        Cmd::Train(a) => cmd_phase(Phase::Grpo, a),
        Cmd::Export { from, out, dtype } => cmd_export(from.as_deref(), &out, dtype),
        Cmd::RandomCheckpoint {
            shape,
            out,
            seed,
            shard_bytes,
        } => {
            let t = std::time::Instant::now();
            let bytes =
                visionthink_train::shapes::write_checkpoint(shape, &out, seed, shard_bytes)?;
            let secs = t.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({"out": out, "bytes": bytes, "seconds": secs})
            );
            Ok(())
        }
        Cmd::Plot { run } => {
            for p in visionthink_train::plots::write_curves(&run)? {
                println!("{}", p.display());
            }
            Ok(())
        }
        Cmd::Eval {
            model_dir,
            model,
            mmproj,
            data,
            json,
            opts,
            out,
            remote,
        } => {
            let source = match (model_dir, model.zip(mmproj)) {
                (_, Some((text, mm))) => ModelSource::Gguf(text, mm),
                (dir, None) => ModelSource::Dir(dir),
            };
            match (&remote.remote.endpoint, source) {
                (Some(_), ModelSource::Dir(None)) => {
                    cmd_eval_remote(&remote, &data, json, &opts, out.as_deref())
                }
                (Some(_), _) => bail!("give a local model or --endpoint, not both"),
                (None, source) => cmd_eval(&source, &data, json, &opts, out.as_deref()),
            }
        }
        Cmd::Select { run, data, opts } => cmd_select(&run, &data, &opts),
    }
}

/// `synth`.
fn cmd_synth(task: synth::Task, cfg: synth::SynthConfig, out: &Path) -> Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&cfg.fine_fraction),
        "--fine-fraction must be in [0, 1]"
    );
    anyhow::ensure!(
        (56..=4096).contains(&cfg.size),
        "--size must be in [56, 4096]"
    );
    anyhow::ensure!(
        task == synth::Task::V1 || (cfg.size % 56 == 0 && cfg.size >= 112),
        "--task v2 needs --size to be a multiple of 56 from 112 on (both halves on the 28-pixel grid)"
    );
    let rows = match task {
        synth::Task::V1 => synth::generate(&cfg),
        synth::Task::V2 => synth::generate_v2(&cfg),
    };
    visionthink_train::jsonl_data::write_jsonl_set(out, &rows)?;
    let count = |k: Kind| rows.iter().filter(|(e, _)| e.kind == k).count();
    let coarse = count(Kind::Coarse);
    let mut summary = serde_json::json!({
        "out": out, "count": rows.len(), "fine": rows.len() - coarse, "coarse": coarse,
    });
    if task == synth::Task::V2 {
        summary["global_fine"] = count(Kind::GlobalFine).into();
        summary["local_fine"] = count(Kind::LocalFine).into();
    }
    println!("{summary}");
    Ok(())
}

/// `sft` and `train`. `--fail-at-step N` ends the process with status 3 right after step N's
/// update, before its checkpoint (the fault tests' SIGKILL between steps).
fn cmd_phase(phase: Phase, a: RunArgs) -> Result<()> {
    let cfg = TrainConfig::load(a.config.as_deref(), &a.overrides)?;
    let fail_at = a.fail_at_step;
    let die = move |_: Phase, step: usize| {
        if fail_at == Some(step) {
            std::process::exit(3);
        }
    };
    let hooks = train::Hooks {
        after_update: fail_at.map(|_| &die as &dyn Fn(Phase, usize)),
    };
    match phase {
        Phase::Sft => train::sft(&cfg, a.resume, &hooks),
        Phase::Grpo => train::grpo(&cfg, a.resume, &hooks),
    }
}

/// `export`.
fn cmd_export(from: Option<&Path>, out: &Path, dtype: SaveDtype) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let from = match from {
        Some(dir) => dir,
        None => {
            // The shipped model's own files first; the export below rewrites the weights in the
            // asked dtype and the rest as every export writes them.
            for (name, bytes) in visionthink::shipped::FILES {
                write_atomic(&out.join(name), bytes)?;
            }
            out
        }
    };
    let policy = visionthink_train::policy::Policy::load(from)?;
    let mut total = 0;
    for (name, bytes) in policy.hf_files(dtype)? {
        total += bytes.len();
        write_atomic(&out.join(&name), &bytes)?;
    }
    println!(
        "{}",
        serde_json::json!({"out": out, "bytes": total, "parameters": policy.num_params()})
    );
    Ok(())
}

/// The model `eval` runs: a folder (`None`: the shipped model) or a GGUF pair.
enum ModelSource {
    Dir(Option<PathBuf>),
    Gguf(PathBuf, PathBuf),
}

/// `eval`.
fn cmd_eval(
    model: &ModelSource,
    data: &Path,
    json: bool,
    opts: &EvalOpts,
    out: Option<&Path>,
) -> Result<()> {
    let ds = open_eval_data(data, opts.bad_rows)?;
    let (name, report) = evaluate(model, &ds, opts)?;
    let title = format!("Evaluation of {name} on {}", data.display());
    let md = eval::markdown(&report, &title);
    if let Some(dir) = out {
        write_reports(dir, &report, &md)?;
        let mut lines = String::new();
        for s in &report.samples {
            lines.push_str(&serde_json::to_string(s)?);
            lines.push('\n');
        }
        write_atomic(&dir.join("samples.jsonl"), lines.as_bytes())?;
    }
    print_report(json, &report, &md)
}

/// Writes an evaluation's `report.json` and `report.md` into `dir`.
fn write_reports(dir: &Path, report: &impl serde::Serialize, md: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_atomic(
        &dir.join("report.json"),
        serde_json::to_string_pretty(report)?.as_bytes(),
    )?;
    write_atomic(&dir.join("report.md"), md.as_bytes())
}

/// Prints an evaluation: one JSON line with `--json`, else the Markdown.
fn print_report(json: bool, report: &impl serde::Serialize, md: &str) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{md}");
    }
    Ok(())
}

/// `eval --endpoint`: the protocol against a served model.
fn cmd_eval_remote(
    remote: &RemoteEvalOpts,
    data: &Path,
    json: bool,
    opts: &EvalOpts,
    out: Option<&Path>,
) -> Result<()> {
    anyhow::ensure!(
        matches!(opts.image_path, ImagePathArg::Inference),
        "a served model is evaluated on the inference image path"
    );
    anyhow::ensure!(
        opts.tools.trim() == "resize" && opts.max_rounds.is_none(),
        "a served model is evaluated under the official protocol (--tools resize, 2 rounds)"
    );
    let Some(cfg) = remote.remote.config().map_err(anyhow::Error::msg)? else {
        bail!("eval of a served model needs --endpoint");
    };
    let url = cfg.url.clone();
    let ds = open_eval_data(data, opts.bad_rows)?;
    let engine = visionthink::RemoteEngine::connect(cfg)?;
    let label = format!("{url} / {}", engine.model());
    let report = visionthink_train::remote_eval::evaluate(
        &engine,
        &label,
        &ds,
        opts.rows,
        opts.max_new_tokens,
        remote.concurrency,
        &visionthink_core::judge::RuleJudge,
    )?;
    let title = format!("Evaluation of {} on {}", engine.model(), data.display());
    let md = visionthink_train::remote_eval::markdown(&report, &title);
    if let Some(dir) = out {
        write_reports(dir, &report, &md)?;
    }
    print_report(json, &report, &md)
}

/// `select`.
fn cmd_select(run: &Path, data: &Path, opts: &EvalOpts) -> Result<()> {
    let ds = open_eval_data(data, opts.bad_rows)?;
    let ckpts = visionthink_train::checkpoint::checkpoints(run)?;
    anyhow::ensure!(
        !ckpts.is_empty(),
        "{} holds no complete checkpoint (step-N folder with trainer_state.json)",
        run.display()
    );
    let mut cands = Vec::new();
    for (step, dir) in ckpts {
        let (_, r) = evaluate(&ModelSource::Dir(Some(dir.clone())), &ds, opts)?;
        let c = eval::Candidate::from_report(dir, step, &r);
        eprintln!("{}", serde_json::to_string(&c)?);
        cands.push(c);
    }
    eval::rank(&mut cands);
    let best = cands[0].checkpoint.clone();
    write_atomic(
        &run.join("select.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({"data": data, "best": best, "ranked": cands}),
        )?
        .as_bytes(),
    )?;
    println!("{}", best.display());
    Ok(())
}

/// Opens an evaluation set, naming the skipped rows on stderr.
fn open_eval_data(data: &std::path::Path, bad_rows: BadRows) -> Result<Dataset> {
    let ds = Dataset::open(data, bad_rows)?;
    for s in &ds.skipped {
        eprintln!("skipped row: {s}");
    }
    Ok(ds)
}

/// Loads a model folder (`None`: the shipped model) and evaluates it with the rule judge.
fn evaluate(
    source: &ModelSource,
    ds: &Dataset,
    opts: &EvalOpts,
) -> Result<(String, eval::EvalReport)> {
    let (name, be, model, files) = match source {
        ModelSource::Dir(dir) => visionthink_train::policy::load_frozen(dir.as_deref())?,
        ModelSource::Gguf(text, mm) => visionthink_train::policy::load_frozen_gguf(text, mm)?,
    };
    let ip = match opts.image_path {
        ImagePathArg::Training => ImagePath::Training,
        ImagePathArg::Inference => ImagePath::Inference,
        ImagePathArg::Full => ImagePath::Full,
    };
    let protocol = visionthink_core::protocol::ProtocolConfig::from_tools(&opts.tools)?
        .with_limits(opts.max_rounds, opts.max_rounds);
    let evaluator = eval::Evaluator {
        be: &be,
        model: &model,
        files: &files,
        judge: &visionthink_core::judge::RuleJudge,
        image_path: ip,
        max_new_tokens: opts.max_new_tokens,
        protocol,
    };
    let report = evaluator.evaluate(ds, opts.rows)?;
    Ok((name, report))
}
