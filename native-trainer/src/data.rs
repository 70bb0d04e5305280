//! Training and evaluation data: a JSONL file (`data.jsonl`) next to an image folder, one row
//! per question. Malformed rows are named by file and line and either skipped (reported, never
//! silently) or fatal, by flag.

pub use crate::config::BadRows;
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
    /// Needs the full image: the detail is spread over all of it, so no crop shows it (the v2
    /// synthetic task).
    GlobalFine,
    /// Needs a small region at full resolution: a crop around it shows it (the v2 synthetic
    /// task).
    LocalFine,
}

impl Kind {
    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Coarse => "coarse",
            Kind::Fine => "fine",
            Kind::Unknown => "unknown",
            Kind::GlobalFine => "global_fine",
            Kind::LocalFine => "local_fine",
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

/// The JSONL file of a dataset folder.
pub const DATA_FILE: &str = "data.jsonl";

impl Dataset {
    /// Keeps only the rows of `kinds` (with their inline images).
    ///
    /// ```
    /// use visionthink_train::data::{Dataset, Example, Kind};
    /// let row = |id: &str, kind| Example {
    ///     doc_id: id.into(),
    ///     image: "a.png".into(),
    ///     problem: "<image>\nQ?".into(),
    ///     answer: "yes".into(),
    ///     kind,
    ///     data_source: "synth2".into(),
    ///     attributes: Default::default(),
    /// };
    /// let mut ds = Dataset {
    ///     dir: ".".into(),
    ///     examples: vec![row("a", Kind::Coarse), row("b", Kind::LocalFine)],
    ///     skipped: Vec::new(),
    ///     inline_images: vec![None, Some(vec![1])],
    /// };
    /// ds.retain_kinds(&[Kind::LocalFine]);
    /// assert_eq!(ds.examples.len(), 1);
    /// assert_eq!(ds.examples[0].doc_id, "b");
    /// assert_eq!(ds.inline_images, vec![Some(vec![1])]);
    /// ```
    pub fn retain_kinds(&mut self, kinds: &[Kind]) {
        let keep: Vec<bool> = self
            .examples
            .iter()
            .map(|e| kinds.contains(&e.kind))
            .collect();
        let mut i = 0;
        self.examples.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        if !self.inline_images.is_empty() {
            let mut j = 0;
            self.inline_images.retain(|_| {
                j += 1;
                keep.get(j - 1).copied().unwrap_or(false)
            });
        }
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

/// A dataset format. [`Dataset::open`] asks each format in turn whether it reads a path.
pub trait Source {
    /// Whether this format reads `path` (a file or a folder).
    fn claims(&self, path: &Path) -> bool;
    /// Reads every row; with `bad = Skip`, malformed rows are listed in [`Dataset::skipped`].
    fn read(&self, path: &Path, bad: BadRows) -> Result<Dataset, DataError>;
}

impl Dataset {
    /// An empty dataset whose image paths are relative to `dir`.
    pub fn empty(dir: PathBuf) -> Self {
        Self {
            dir,
            examples: Vec::new(),
            skipped: Vec::new(),
            inline_images: Vec::new(),
        }
    }

    /// Keeps a parsed row (with its image bytes when the format carries them), or, for a
    /// malformed one, fails or lists it, as `bad` says.
    pub fn push_row(
        &mut self,
        row: Result<(Example, Option<Vec<u8>>), DataError>,
        bad: BadRows,
    ) -> Result<(), DataError> {
        match (row, bad) {
            (Ok((ex, bytes)), _) => {
                self.examples.push(ex);
                self.inline_images.push(bytes);
            }
            (Err(e), BadRows::Fail) => return Err(e),
            (Err(e), BadRows::Skip) => self.skipped.push(e.to_string()),
        }
        Ok(())
    }

    /// The dataset, or [`DataError::Empty`] naming `label` when no row was usable.
    pub fn non_empty(self, label: &str) -> Result<Self, DataError> {
        match self.examples.is_empty() {
            true => Err(DataError::Empty(label.to_string())),
            false => Ok(self),
        }
    }
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
