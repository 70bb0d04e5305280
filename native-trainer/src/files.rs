//! File formats and writes shared by checkpoints, model folders and datasets: atomic writes
//! (temporary file, fsync, rename) and safetensors bytes of f32 tensors.

use anyhow::{Context, Result};
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same folder, synced and renamed
/// (the SDK's [`visionthink::files::write_atomic`], with the path in the error).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    visionthink::files::write_atomic(path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn serialize_with(
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    dtype: safetensors::Dtype,
    encode: fn(&[f32]) -> Vec<u8>,
) -> Result<Vec<u8>> {
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| (n.clone(), s.clone(), encode(d)))
        .collect();
    let views = encoded
        .iter()
        .map(|(n, s, b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(dtype, s.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    Ok(safetensors::serialize(views, Some(meta))?)
}

/// Safetensors bytes of f32 tensors.
pub fn serialize_f32(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<Vec<u8>> {
    serialize_with(tensors, safetensors::Dtype::F32, |d| {
        d.iter().flat_map(|x| x.to_le_bytes()).collect()
    })
}

/// Safetensors bytes of tensors rounded to bf16.
pub fn serialize_bf16(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<Vec<u8>> {
    serialize_with(tensors, safetensors::Dtype::BF16, |d| {
        d.iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect()
    })
}
