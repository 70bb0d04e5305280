//! Checkpoint loading errors name the file, the tensor and the shapes.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use visionthink_model::{Error, WeightStore};

fn write_st(
    dir: &std::path::Path,
    name: &str,
    tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)],
) {
    let views: HashMap<String, safetensors::tensor::TensorView<'_>> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(&views, None).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

#[test]
fn dtype_shape_missing_and_index_errors() {
    let dir = std::env::temp_dir().join(format!("vt-load-{}", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    std::fs::create_dir_all(&dir).unwrap();
    let bf16_one = half::bf16::from_f32(1.5).to_le_bytes();
    write_st(
        &dir,
        "model.safetensors",
        &[
            ("ints", safetensors::Dtype::I64, vec![2], vec![0; 16]),
            (
                "w",
                safetensors::Dtype::BF16,
                vec![2],
                [bf16_one, bf16_one].concat(),
            ),
        ],
    );
    let store = WeightStore::open(&dir).unwrap();
    assert_eq!(store.get(&["w"], &[2]).unwrap(), vec![1.5, 1.5]);
    assert!(matches!(
        store.get(&["ints"], &[2]),
        Err(Error::Dtype { .. })
    ));
    let e = store.get(&["w"], &[3]).unwrap_err().to_string();
    assert!(e.contains("tensor w has shape [2], expected [3]"), "{e}");
    let e = store.get(&["model.a", "a"], &[1]).unwrap_err().to_string();
    assert!(e.contains("missing tensor model.a | a"), "{e}");
    // A sharded index naming a shard that is not there.
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"w": "model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let e = WeightStore::open(&dir).unwrap_err().to_string();
    assert!(e.contains("model-00001-of-00002.safetensors"), "{e}");
    std::fs::write(dir.join("model.safetensors.index.json"), "{not json").unwrap();
    let e = WeightStore::open(&dir).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors.index.json") && e.contains("malformed JSON"),
        "{e}"
    );
}

/// Removes a test's temporary folder when the test passes (kept when it fails, to look at).
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
