//! The JSONL dataset layout: `DIR/data.jsonl`, one row per line (`image` relative to `DIR`,
//! `problem` or `question`, `answer` or `original_answer`, optional `doc_id`, `kind`,
//! `data_source`, `attributes`), and its writer.

use crate::data::{BadRows, DataError, Dataset, Example, Kind, Source, DATA_FILE};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The JSONL format: a `.jsonl` file, or a folder with `data.jsonl`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Jsonl;

impl Source for Jsonl {
    fn claims(&self, path: &Path) -> bool {
        !path.is_dir() || path.join(DATA_FILE).exists()
    }

    fn read(&self, path: &Path, bad: BadRows) -> Result<Dataset, DataError> {
        let (dir, file) = if path.is_dir() {
            (path.to_path_buf(), path.join(DATA_FILE))
        } else {
            (
                path.parent().map(Path::to_path_buf).unwrap_or_default(),
                path.to_path_buf(),
            )
        };
        let text = std::fs::read_to_string(&file).map_err(|e| DataError::Io {
            path: file.display().to_string(),
            reason: e.to_string(),
        })?;
        Dataset::from_jsonl(dir, &file.display().to_string(), &text, bad)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    #[serde(default)]
    doc_id: Option<serde_json::Value>,
    image: String,
    #[serde(alias = "question")]
    problem: String,
    #[serde(alias = "original_answer")]
    answer: String,
    #[serde(default)]
    kind: Option<Kind>,
    #[serde(default)]
    data_source: Option<String>,
    #[serde(default)]
    attributes: std::collections::BTreeMap<String, String>,
}

impl Dataset {
    /// Parses the rows of a JSONL text (`label` names the file in errors); image paths are
    /// relative to `dir` and never leave it (absolute paths and `..` are malformed rows).
    ///
    /// ```
    /// use visionthink_train::data::{BadRows, Dataset};
    /// let text = "{\"image\": \"a.png\", \"problem\": \"Q?\", \"answer\": \"A\"}\n{\"image\": \"/etc/passwd\", \"problem\": \"Q\", \"answer\": \"A\"}";
    /// let ds = Dataset::from_jsonl("d".into(), "d/data.jsonl", text, BadRows::Skip).unwrap();
    /// assert_eq!((ds.examples.len(), ds.skipped.len()), (1, 1));
    /// assert!(Dataset::from_jsonl("d".into(), "d/data.jsonl", text, BadRows::Fail).is_err());
    /// ```
    pub fn from_jsonl(
        dir: PathBuf,
        label: &str,
        text: &str,
        bad: BadRows,
    ) -> Result<Self, DataError> {
        let mut ds = Dataset::empty(dir);
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let row = parse_row(line, i + 1).map_err(|reason| DataError::Row {
                path: label.to_string(),
                line: i + 1,
                reason,
            });
            ds.push_row(row.map(|ex| (ex, None)), bad)?;
        }
        ds.non_empty(label)
    }
}

/// One JSONL line as an example (`line` is 1-based, for the default `doc_id`).
fn parse_row(text: &str, line: usize) -> Result<Example, String> {
    let r = serde_json::from_str::<Row>(text).map_err(|e| e.to_string())?;
    if r.image.is_empty() || r.problem.trim().is_empty() {
        return Err("empty `image` or `problem`".to_string());
    }
    if Path::new(&r.image).is_absolute() || r.image.contains("..") {
        return Err(format!(
            "image path {:?} must be relative to the dataset folder",
            r.image
        ));
    }
    Ok(Example {
        doc_id: match r.doc_id {
            Some(serde_json::Value::String(s)) => s,
            Some(v) => v.to_string(),
            None => format!("line{line}"),
        },
        image: r.image,
        problem: r.problem,
        answer: r.answer,
        kind: r.kind.unwrap_or(Kind::Unknown),
        data_source: r.data_source.unwrap_or_else(|| "unknown".into()),
        attributes: r.attributes,
    })
}

/// Writes a dataset folder: `images/*.png` and `data.jsonl` (written to a temporary name and
/// renamed, so a crash never leaves a truncated index).
pub fn write_jsonl_set(dir: &Path, rows: &[(Example, image::RgbImage)]) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir.join("images"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let mut lines = String::new();
    for (ex, img) in rows {
        let path = dir.join(&ex.image);
        img.save(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        lines.push_str(&serde_json::to_string(ex)?);
        lines.push('\n');
    }
    crate::files::write_atomic(&dir.join(DATA_FILE), lines.as_bytes())
}
