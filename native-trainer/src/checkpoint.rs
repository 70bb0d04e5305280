//! Checkpoints: `OUT/step-N/` is an HF model folder plus `optimizer.safetensors` (AdamW
//! moments) and `trainer_state.json` (step, RNG, data cursor). Every file is written to a
//! temporary name and renamed; the folder is assembled as `OUT/.tmp-step-N` and renamed into
//! place; `OUT/latest` (the name of the newest complete checkpoint) is replaced last. A crash or
//! a full disk at any point leaves the previous checkpoint intact and `latest` pointing at it.
//! The trainer state records the SHA-256 of every other file of its checkpoint, so a file
//! damaged after it was written (a bad disk, a partial copy, an edit) is detected at resume, and
//! the newest intact checkpoint is used instead.

use crate::config::Phase;
use crate::files::serialize_f32;
pub use crate::files::write_atomic;
use crate::optim::AdamW;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the data loader is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataCursor {
    /// Passes over the data completed.
    pub epoch: u64,
    /// Next position in this epoch's order.
    pub index: usize,
}

/// Everything besides weights and moments needed to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Completed steps.
    pub step: usize,
    /// Optimizer steps taken.
    pub optimizer_steps: usize,
    /// Generator state.
    pub rng: u64,
    /// Data position.
    pub cursor: DataCursor,
    /// `sft` or `grpo`.
    pub phase: Phase,
    /// SHA-256 (hex) of each other file of the checkpoint, by file name (empty in checkpoints
    /// written before hashes were recorded: those are not verified).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
}

/// The file naming the newest complete checkpoint.
pub const LATEST: &str = "latest";

/// The trainer state of a checkpoint, written last: a `step-N` folder is complete once it holds
/// this file.
const STATE: &str = "trainer_state.json";

/// Whether the checkpoint folder `dir` is complete (see [`STATE`]).
fn is_complete(dir: &Path) -> bool {
    dir.join(STATE).exists()
}

/// Removes all but the newest `keep` complete checkpoints (`step-N` folders) of `out`; the one
/// `latest` names is always kept. `keep = 0` keeps everything.
pub fn prune(out: &Path, keep: usize) -> Result<()> {
    if keep == 0 {
        return Ok(());
    }
    let latest = std::fs::read_to_string(out.join(LATEST)).unwrap_or_default();
    let steps = step_dirs(out)?;
    let excess = steps.len().saturating_sub(keep);
    for (_, p) in steps.into_iter().take(excess) {
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy() == latest.trim())
        {
            continue;
        }
        std::fs::remove_dir_all(&p).with_context(|| format!("cannot remove {}", p.display()))?;
    }
    Ok(())
}

/// The `step-N` folders of `out` (complete or not), oldest first.
fn step_dirs(out: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut steps: Vec<(usize, PathBuf)> = std::fs::read_dir(out)
        .with_context(|| format!("cannot list {}", out.display()))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n = name.strip_prefix("step-")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    steps.sort();
    Ok(steps)
}

/// The complete checkpoints of the run folder `out` as `(step, folder)`, oldest first.
pub fn checkpoints(out: &Path) -> Result<Vec<(usize, PathBuf)>> {
    Ok(step_dirs(out)?
        .into_iter()
        .filter(|(_, p)| is_complete(p))
        .collect())
}

/// Saves a checkpoint under `out/step-{state.step}`: the model folder's files (`model_files`,
/// from `Policy::hf_files`), the moments of `opt`, and `state` with every file's SHA-256.
pub fn save(
    out: &Path,
    model_files: Vec<(String, Vec<u8>)>,
    opt: &AdamW,
    state: &TrainerState,
) -> Result<PathBuf> {
    let name = format!("step-{}", state.step);
    let final_dir = out.join(&name);
    let tmp = out.join(format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot clear {}", tmp.display()))?;
    }
    let result = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp)?;
        let mut files = BTreeMap::new();
        let mut put = |file: &str, bytes: &[u8]| -> Result<()> {
            write_atomic(&tmp.join(file), bytes)?;
            files.insert(file.to_string(), hex::encode(Sha256::digest(bytes)));
            Ok(())
        };
        for (file, bytes) in &model_files {
            put(file, bytes)?;
        }
        let mut moments = Vec::new();
        for (i, (m, v)) in opt.m.iter().zip(&opt.v).enumerate() {
            for (k, t) in [("m", m), ("v", v)] {
                moments.push((
                    format!("{k}.{i}"),
                    t.dims().to_vec(),
                    t.flatten_all()?.to_vec1::<f32>()?,
                ));
            }
        }
        put("optimizer.safetensors", &serialize_f32(&moments)?)?;
        let state = TrainerState {
            files,
            ..state.clone()
        };
        write_atomic(
            &tmp.join(STATE),
            serde_json::to_string_pretty(&state)?.as_bytes(),
        )?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir)?;
        }
        std::fs::rename(&tmp, &final_dir)?;
        write_atomic(&out.join(LATEST), name.as_bytes())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.context(format!(
            "checkpoint {} not written; the previous one is intact",
            final_dir.display()
        )));
    }
    Ok(final_dir)
}

/// The newest complete checkpoint under `out`, if any (the one `latest` names), unverified.
pub fn latest(out: &Path) -> Result<Option<PathBuf>> {
    let p = out.join(LATEST);
    if !p.exists() {
        return Ok(None);
    }
    let name =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let dir = out.join(name.trim());
    if !is_complete(&dir) {
        bail!(
            "{} names {}, which is not a complete checkpoint",
            p.display(),
            dir.display()
        );
    }
    Ok(Some(dir))
}

/// Checks a checkpoint: its trainer state parses and every file it lists has the recorded
/// SHA-256. Returns the state, or what is wrong (naming the file).
pub fn verify(dir: &Path) -> Result<TrainerState> {
    let state = read_state(dir)?;
    for (file, want) in &state.files {
        let p = dir.join(file);
        let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let got = hex::encode(Sha256::digest(&bytes));
        if &got != want {
            bail!(
                "{} is damaged: its SHA-256 is {got}, the checkpoint recorded {want}",
                p.display()
            );
        }
    }
    Ok(state)
}

/// The newest intact checkpoint under `out` with its state: the one `latest` names if it
/// verifies, otherwise the newest older complete checkpoint that does (each rejected one is
/// reported on stderr with its reason). `None` when `out` has no checkpoint; an error naming
/// every rejection when none is intact.
pub fn latest_intact(out: &Path) -> Result<Option<(PathBuf, TrainerState)>> {
    let named = match latest(out) {
        Ok(Some(d)) => Some(d),
        Ok(None) => None,
        Err(e) => {
            eprintln!("warning: {e:#}");
            None
        }
    };
    let mut candidates: Vec<PathBuf> = checkpoints(out)
        .unwrap_or_default()
        .into_iter()
        .rev()
        .map(|(_, p)| p)
        .collect();
    if let Some(n) = &named {
        // The named checkpoint first; newer unnamed folders (a rename that `latest` never
        // caught up with) are not trusted.
        let pos = candidates.iter().position(|p| p == n);
        candidates = match pos {
            Some(i) => candidates.split_off(i),
            None => std::iter::once(n.clone()).chain(candidates).collect(),
        };
    }
    if candidates.is_empty() {
        return Ok(None);
    }
    let mut rejected = Vec::new();
    for dir in candidates {
        match verify(&dir) {
            Ok(state) => {
                if !rejected.is_empty() {
                    eprintln!(
                        "warning: using {}, the newest intact checkpoint",
                        dir.display()
                    );
                }
                return Ok(Some((dir, state)));
            }
            Err(e) => {
                eprintln!("warning: checkpoint {} not used: {e:#}", dir.display());
                rejected.push(format!("{e:#}"));
            }
        }
    }
    bail!(
        "no intact checkpoint in {}: {}",
        out.display(),
        rejected.join("; ")
    )
}

/// Reads a checkpoint's trainer state.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let p = dir.join(STATE);
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("malformed {}", p.display()))
}

/// A model folder, or a training run's output folder (its newest intact checkpoint).
pub fn model_dir(dir: &Path) -> Result<PathBuf> {
    if !dir.join("config.json").exists() {
        if let Some((ckpt, _)) = latest_intact(dir)? {
            return Ok(ckpt);
        }
    }
    Ok(dir.to_path_buf())
}

/// Restores AdamW moments saved by [`save`].
pub fn load_moments(dir: &Path, opt: &mut AdamW, optimizer_steps: usize) -> Result<()> {
    let p = dir.join("optimizer.safetensors");
    let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("malformed {}", p.display()))?;
    for i in 0..opt.m.len() {
        for (k, slot) in [("m", &mut opt.m[i]), ("v", &mut opt.v[i])] {
            let view = st
                .tensor(&format!("{k}.{i}"))
                .with_context(|| format!("{}: missing {k}.{i}", p.display()))?;
            if view.shape() != slot.dims() {
                bail!(
                    "{}: {k}.{i} has shape {:?}, the model needs {:?}",
                    p.display(),
                    view.shape(),
                    slot.dims()
                );
            }
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            *slot = Tensor::from_vec(data, view.shape(), slot.device())?;
        }
    }
    opt.t = optimizer_steps;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_leaves_the_old_file_when_the_write_fails() {
        let dir = std::env::temp_dir().join(format!("vt-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join("f.json");
        write_atomic(&p, b"old").expect("write");
        // A folder in the way of the temporary file's rename target makes the write fail.
        let blocked = dir.join("sub");
        std::fs::create_dir_all(blocked.join("x")).expect("mkdir");
        assert!(write_atomic(&blocked, b"new").is_err());
        assert_eq!(std::fs::read(&p).expect("read"), b"old");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn prune_keeps_the_newest_and_latest() {
        let dir = std::env::temp_dir().join(format!("vt-prune-{}", std::process::id()));
        for n in [5, 10, 15, 20] {
            std::fs::create_dir_all(dir.join(format!("step-{n}"))).expect("mkdir");
        }
        std::fs::create_dir_all(dir.join("other")).expect("mkdir");
        write_atomic(&dir.join(LATEST), b"step-5").expect("latest");
        prune(&dir, 2).expect("prune");
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec!["latest", "other", "step-15", "step-20", "step-5"]
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
