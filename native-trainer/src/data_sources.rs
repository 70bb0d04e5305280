//! [`Dataset::open`]: the dataset formats in one place (Parquet in the HF layout, JSONL).

use crate::data::{BadRows, DataError, Dataset, Source, DATA_FILE};
use crate::jsonl_data::Jsonl;
use std::path::Path;

/// Parquet: a `.parquet` file, or a folder without `data.jsonl`.
fn parquet_claims(path: &Path) -> bool {
    path.extension().is_some_and(|x| x == "parquet")
        || (path.is_dir() && !path.join(DATA_FILE).exists())
}

/// What a build without the `parquet` feature answers for Parquet paths.
#[cfg(not(feature = "parquet"))]
struct NoParquet;

#[cfg(not(feature = "parquet"))]
impl Source for NoParquet {
    fn claims(&self, path: &Path) -> bool {
        parquet_claims(path)
    }

    fn read(&self, path: &Path, _bad: BadRows) -> Result<Dataset, DataError> {
        Err(DataError::Io {
            path: path.display().to_string(),
            reason: format!(
                "no {DATA_FILE}, and this build reads no Parquet (enable the `parquet` feature)"
            ),
        })
    }
}

#[cfg(feature = "parquet")]
impl Source for crate::parquet_data::Parquet {
    fn claims(&self, path: &Path) -> bool {
        parquet_claims(path)
    }

    fn read(&self, path: &Path, bad: BadRows) -> Result<Dataset, DataError> {
        crate::parquet_data::open(path, bad)
    }
}

#[cfg(feature = "parquet")]
const PARQUET: &dyn Source = &crate::parquet_data::Parquet;
#[cfg(not(feature = "parquet"))]
const PARQUET: &dyn Source = &NoParquet;

impl Dataset {
    /// Reads a dataset: a Parquet file or folder of them (the VisionThink HF layout), else
    /// `DIR/data.jsonl` or a `.jsonl` path; with `bad = Skip`, malformed rows are listed in
    /// [`Dataset::skipped`].
    pub fn open(path: &Path, bad: BadRows) -> Result<Self, DataError> {
        let sources: [&dyn Source; 2] = [PARQUET, &Jsonl];
        match sources.iter().find(|s| s.claims(path)) {
            Some(s) => s.read(path, bad),
            None => Jsonl.read(path, bad),
        }
    }
}
