//! Training and evaluation data: a JSONL file (`data.jsonl`) next to an image folder, one row
//! per question. Malformed rows are named by file and line and either skipped (reported, never
//! silently) or fatal, by flag.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use visionthink_core::image::RgbImage;

/// Whether a question needs the full-resolution image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Answerable from the half-size image.
    Coarse,
    /// Needs the full image.
    Fine,
    /// Not labelled (real datasets).
    Unknown,
}

impl Kind {
    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Coarse => "coarse",
            Kind::Fine => "fine",
            Kind::Unknown => "unknown",
        }
    }
}

/// One question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// Row id.
    pub doc_id: String,
    /// Image path relative to the dataset folder.
    pub image: String,
    /// The question, with the `<image>` placeholder.
    pub problem: String,
    /// The ground truth.
    pub answer: String,
    /// Coarse or fine.
    pub kind: Kind,
    /// Which generator / benchmark it comes from.
    pub data_source: String,
    /// Known facts about the image (the synthetic set writes `color`, `shape`, `texture`); SFT
    /// trace templates can refer to them as `{name}`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// What to do with a malformed row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BadRows {
    /// Report it (file, line, reason) and go on.
    #[default]
    Skip,
    /// Stop with an error naming it.
    Fail,
}

/// Errors of dataset reading.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A row is malformed (and rows are fatal).
    #[error("{path}:{line}: {reason}")]
    Row {
        /// The file.
        path: String,
        /// 1-based line (or row index for Parquet).
        line: usize,
        /// Why.
        reason: String,
    },
    /// An image failed to decode.
    #[error("image {path} (row {doc_id}): {reason}")]
    Image {
        /// The image file.
        path: String,
        /// The row.
        doc_id: String,
        /// Why.
        reason: String,
    },
    /// Nothing usable.
    #[error("{0}: no usable rows")]
    Empty(String),
}

/// A loaded dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Folder the image paths are relative to.
    pub dir: PathBuf,
    /// The rows.
    pub examples: Vec<Example>,
    /// Rows that were skipped, with file, line and reason.
    pub skipped: Vec<String>,
    /// Images held in memory (Parquet rows carry their image bytes), by row.
    pub inline_images: Vec<Option<Vec<u8>>>,
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

/// The JSONL file of a dataset folder.
pub const DATA_FILE: &str = "data.jsonl";

impl Dataset {
    /// Reads `DIR/data.jsonl` (or a `.jsonl` path directly); with `bad = Skip`, malformed rows
    /// are listed in [`Dataset::skipped`].
    pub fn open(path: &Path, bad: BadRows) -> Result<Self, DataError> {
        let is_parquet = path.extension().is_some_and(|x| x == "parquet")
            || (path.is_dir() && !path.join(DATA_FILE).exists());
        if is_parquet {
            #[cfg(feature = "parquet")]
            return crate::parquet_data::open(path, bad);
            #[cfg(not(feature = "parquet"))]
            return Err(DataError::Io {
                path: path.display().to_string(),
                reason: format!("no {DATA_FILE}, and this build reads no Parquet (enable the `parquet` feature)"),
            });
        }
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
        Self::from_jsonl(dir, &file.display().to_string(), &text, bad)
    }

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
        let mut examples = Vec::new();
        let mut skipped = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed = serde_json::from_str::<Row>(line)
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    if r.image.is_empty() || r.problem.trim().is_empty() {
                        return Err("empty `image` or `problem`".to_string());
                    }
                    if Path::new(&r.image).is_absolute() || r.image.contains("..") {
                        return Err(format!(
                            "image path {:?} must be relative to the dataset folder",
                            r.image
                        ));
                    }
                    Ok(r)
                });
            match parsed {
                Ok(r) => examples.push(Example {
                    doc_id: match r.doc_id {
                        Some(serde_json::Value::String(s)) => s,
                        Some(v) => v.to_string(),
                        None => format!("line{}", i + 1),
                    },
                    image: r.image,
                    problem: r.problem,
                    answer: r.answer,
                    kind: r.kind.unwrap_or(Kind::Unknown),
                    data_source: r.data_source.unwrap_or_else(|| "unknown".into()),
                    attributes: r.attributes,
                }),
                Err(reason) => {
                    let e = DataError::Row {
                        path: label.to_string(),
                        line: i + 1,
                        reason,
                    };
                    match bad {
                        BadRows::Fail => return Err(e),
                        BadRows::Skip => skipped.push(e.to_string()),
                    }
                }
            }
        }
        if examples.is_empty() {
            return Err(DataError::Empty(label.to_string()));
        }
        let n = examples.len();
        Ok(Self {
            dir,
            examples,
            skipped,
            inline_images: vec![None; n],
        })
    }

    /// Decodes the image of row `i` (with the default decode limits: huge or corrupt files are
    /// errors naming the file and row).
    pub fn image(&self, i: usize) -> Result<RgbImage, DataError> {
        let ex = &self.examples[i];
        let path = self.dir.join(&ex.image);
        let read;
        let bytes: &[u8] = match self.inline_images.get(i).and_then(Option::as_ref) {
            Some(b) => b,
            None => {
                read = std::fs::read(&path).map_err(|e| DataError::Image {
                    path: path.display().to_string(),
                    doc_id: ex.doc_id.clone(),
                    reason: e.to_string(),
                })?;
                &read
            }
        };
        visionthink_core::image::decode(bytes, Default::default()).map_err(|e| DataError::Image {
            path: path.display().to_string(),
            doc_id: ex.doc_id.clone(),
            reason: e.to_string(),
        })
    }
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
    crate::checkpoint::write_atomic(&dir.join(DATA_FILE), lines.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_rows_are_named_and_skipped_or_fatal() {
        let dir = std::env::temp_dir().join(format!("vt-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let good = r#"{"image": "a.png", "problem": "<image>\nQ?", "answer": "x", "kind": "fine"}"#;
        let text = format!(
            "{good}\n{{not json\n{{\"image\": \"b.png\", \"problem\": \"Q\"}}\n{{\"image\": \"/etc/passwd\", \"problem\": \"Q\", \"answer\": \"y\"}}\n{{\"image\": \"c.png\", \"problem\": \"Q\", \"answer\": \"y\", \"colour\": 1}}\n"
        );
        std::fs::write(dir.join(DATA_FILE), text).expect("write");
        let ds = Dataset::open(&dir, BadRows::Skip).expect("open");
        assert_eq!(ds.examples.len(), 1);
        assert_eq!(ds.examples[0].kind, Kind::Fine);
        assert_eq!(ds.skipped.len(), 4, "{:?}", ds.skipped);
        assert!(ds.skipped[0].contains("data.jsonl:2"), "{}", ds.skipped[0]);
        assert!(ds.skipped[1].contains(":3") && ds.skipped[1].contains("answer"));
        assert!(ds.skipped[2].contains("relative"));
        assert!(ds.skipped[3].contains("colour"), "{}", ds.skipped[3]);
        let err = Dataset::open(&dir, BadRows::Fail).expect_err("fatal");
        assert!(err.to_string().contains("data.jsonl:2"), "{err}");
        // A missing or corrupt image is an error naming the file and row.
        std::fs::write(dir.join("a.png"), b"not a png").expect("write");
        let err = ds.image(0).expect_err("corrupt");
        assert!(
            err.to_string().contains("a.png") && err.to_string().contains("line1"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
