//! The VisionThink HF dataset layout: Parquet files whose rows hold `images` (HF `Image`
//! features: a list of `{bytes, path}` structs, or one struct, or raw bytes), `problem`
//! (containing `<image>`), `original_answer`, `data_source` and `doc_id` (string or integer),
//! and optionally `kind`. Read with the `parquet` crate's Arrow reader; a malformed row is named
//! by file and row index.

use crate::data::{BadRows, DataError, Dataset, Example, Kind};
use arrow_array::{
    Array, ArrayRef, BinaryArray, Int64Array, LargeBinaryArray, LargeStringArray, ListArray,
    RecordBatch, StringArray, StructArray,
};
use std::path::Path;

/// The Parquet format (the `parquet` feature).
#[derive(Debug, Clone, Copy, Default)]
pub struct Parquet;

fn string_at(col: &ArrayRef, i: usize) -> Option<String> {
    if col.is_null(i) {
        return None;
    }
    if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
        return Some(a.value(i).to_string());
    }
    if let Some(a) = col.as_any().downcast_ref::<LargeStringArray>() {
        return Some(a.value(i).to_string());
    }
    if let Some(a) = col.as_any().downcast_ref::<Int64Array>() {
        return Some(a.value(i).to_string());
    }
    None
}

fn bytes_of(col: &dyn Array, i: usize) -> Option<Vec<u8>> {
    if col.is_null(i) {
        return None;
    }
    let any = col.as_any();
    if let Some(a) = any.downcast_ref::<BinaryArray>() {
        return Some(a.value(i).to_vec());
    }
    if let Some(a) = any.downcast_ref::<LargeBinaryArray>() {
        return Some(a.value(i).to_vec());
    }
    if let Some(s) = any.downcast_ref::<StructArray>() {
        let b = s.column_by_name("bytes")?;
        return bytes_of(b.as_ref(), i);
    }
    if let Some(l) = any.downcast_ref::<ListArray>() {
        let items = l.value(i);
        if items.is_empty() {
            return None;
        }
        return bytes_of(items.as_ref(), 0);
    }
    None
}

fn rows_of(
    batch: &RecordBatch,
    file: &Path,
    first_row: usize,
    bad: BadRows,
    out: &mut Dataset,
) -> Result<(), DataError> {
    let col = |name: &str| batch.column_by_name(name).cloned();
    let (Some(images), Some(problem)) = (col("images").or_else(|| col("image")), col("problem"))
    else {
        return Err(DataError::Io {
            path: file.display().to_string(),
            reason: "no `images` and `problem` columns (VisionThink layout)".into(),
        });
    };
    let answer = col("original_answer").or_else(|| col("answer"));
    let (source, doc, kind) = (col("data_source"), col("doc_id"), col("kind"));
    for i in 0..batch.num_rows() {
        let row = first_row + i;
        let parsed = (|| -> Result<(Example, Vec<u8>), String> {
            let bytes = bytes_of(images.as_ref(), i).ok_or("no image bytes in `images`")?;
            let problem = string_at(&problem, i).ok_or("`problem` is null or not a string")?;
            let answer = answer
                .as_ref()
                .and_then(|a| string_at(a, i))
                .ok_or("`original_answer` is missing or null")?;
            let kind = match kind.as_ref().and_then(|k| string_at(k, i)).as_deref() {
                Some("coarse") => Kind::Coarse,
                Some("fine") => Kind::Fine,
                _ => Kind::Unknown,
            };
            Ok((
                Example {
                    doc_id: doc
                        .as_ref()
                        .and_then(|d| string_at(d, i))
                        .unwrap_or_else(|| format!("row{row}")),
                    image: format!(
                        "{}#row{row}",
                        file.file_name()
                            .map(|f| f.to_string_lossy().to_string())
                            .unwrap_or_default()
                    ),
                    attributes: Default::default(),
                    problem,
                    answer,
                    kind,
                    data_source: source
                        .as_ref()
                        .and_then(|s| string_at(s, i))
                        .unwrap_or_else(|| "unknown".into()),
                },
                bytes,
            ))
        })();
        let row = parsed
            .map(|(ex, bytes)| (ex, Some(bytes)))
            .map_err(|reason| DataError::Row {
                path: file.display().to_string(),
                line: row,
                reason,
            });
        out.push_row(row, bad)?;
    }
    Ok(())
}

/// Appends the rows of one Parquet file (a `File`, or bytes in memory) to `ds`; `file` names it
/// in errors. A file the Parquet reader cannot read is an error naming it, never a panic: the
/// reader's own panics on corrupt input (decoders indexing past a page) are caught here.
fn read_rows<R: parquet::file::reader::ChunkReader + 'static>(
    reader: R,
    file: &Path,
    bad: BadRows,
    ds: &mut Dataset,
) -> Result<(), DataError> {
    let io = |e: &dyn std::fmt::Display| DataError::Io {
        path: file.display().to_string(),
        reason: e.to_string(),
    };
    let read = std::panic::AssertUnwindSafe(|| -> Result<(), DataError> {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(reader)
            .map_err(|e| io(&e))?
            .with_batch_size(256)
            .build()
            .map_err(|e| io(&e))?;
        let mut row = 0;
        for batch in reader {
            let batch = batch.map_err(|e| io(&e))?;
            rows_of(&batch, file, row, bad, ds)?;
            row += batch.num_rows();
        }
        Ok(())
    });
    std::panic::catch_unwind(read).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("the Parquet reader failed");
        Err(io(&format!("corrupt Parquet file: {what}")))
    })
}

/// Parses one Parquet file held in memory (`label` names it in errors).
///
/// ```
/// use visionthink_train::data::BadRows;
/// let err = visionthink_train::parquet_data::from_bytes("x.parquet", b"PAR1 not really".to_vec(), BadRows::Fail);
/// assert!(err.unwrap_err().to_string().contains("x.parquet"));
/// ```
pub fn from_bytes(label: &str, bytes: Vec<u8>, bad: BadRows) -> Result<Dataset, DataError> {
    let path = Path::new(label);
    let mut ds = Dataset::empty(path.parent().map(Path::to_path_buf).unwrap_or_default());
    read_rows(bytes::Bytes::from(bytes), path, bad, &mut ds)?;
    ds.non_empty(label)
}

/// Reads every `*.parquet` file of `dir` (sorted by name), or one file.
pub fn open(path: &Path, bad: BadRows) -> Result<Dataset, DataError> {
    let io = |p: &Path, e: &dyn std::fmt::Display| DataError::Io {
        path: p.display().to_string(),
        reason: e.to_string(),
    };
    let files: Vec<std::path::PathBuf> = if path.is_dir() {
        let mut v: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| io(path, &e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut ds = Dataset::empty(path.to_path_buf());
    for f in &files {
        let file = std::fs::File::open(f).map_err(|e| io(f, &e))?;
        read_rows(file, f, bad, &mut ds)?;
    }
    ds.non_empty(&path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::builder::{BinaryBuilder, ListBuilder, StringBuilder, StructBuilder};
    use arrow_array::Int64Array;
    use std::sync::Arc;

    fn png(color: [u8; 3]) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(56, 56, image::Rgb(color));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png)
            .expect("png");
        out.into_inner()
    }

    /// Writes a file in the HF layout (images as a list of {bytes, path} structs) with one
    /// good row, one row without an answer and one with undecodable image bytes.
    fn write_file(path: &Path) {
        use arrow_array::builder::ArrayBuilder;
        let fields = vec![
            Arc::new(arrow_schema::Field::new(
                "bytes",
                arrow_schema::DataType::Binary,
                true,
            )),
            Arc::new(arrow_schema::Field::new(
                "path",
                arrow_schema::DataType::Utf8,
                true,
            )),
        ];
        let sb = StructBuilder::new(
            fields.clone(),
            vec![
                Box::new(BinaryBuilder::new()) as Box<dyn ArrayBuilder>,
                Box::new(StringBuilder::new()),
            ],
        );
        let mut images = ListBuilder::new(sb);
        for bytes in [png([200, 0, 0]), png([0, 0, 200]), b"not an image".to_vec()] {
            let s = images.values();
            s.field_builder::<BinaryBuilder>(0)
                .expect("bytes")
                .append_value(&bytes);
            s.field_builder::<StringBuilder>(1)
                .expect("path")
                .append_value("x.png");
            s.append(true);
            images.append(true);
        }
        let images = images.finish();
        let problem = StringArray::from(vec![
            "<image>\nWhat color?",
            "<image>\nWhat color?",
            "<image>\nWhat color?",
        ]);
        let answer = StringArray::from(vec![Some("red"), None, Some("green")]);
        let source = StringArray::from(vec!["chartqa", "docvqa", "pope"]);
        let doc = Int64Array::from(vec![10, 11, 12]);
        let batch = RecordBatch::try_from_iter(vec![
            ("images", Arc::new(images) as ArrayRef),
            ("problem", Arc::new(problem) as ArrayRef),
            ("original_answer", Arc::new(answer) as ArrayRef),
            ("data_source", Arc::new(source) as ArrayRef),
            ("doc_id", Arc::new(doc) as ArrayRef),
        ])
        .expect("batch");
        let f = std::fs::File::create(path).expect("create");
        let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).expect("writer");
        w.write(&batch).expect("write");
        w.close().expect("close");
    }

    #[test]
    fn reads_the_visionthink_layout_and_names_bad_rows() {
        let dir = std::env::temp_dir().join(format!("vt-parquet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        write_file(&dir.join("train-00000.parquet"));
        let ds = Dataset::open(&dir, BadRows::Skip).expect("open");
        assert_eq!(ds.examples.len(), 2);
        assert_eq!(ds.examples[0].doc_id, "10");
        assert_eq!(ds.examples[0].answer, "red");
        assert_eq!(ds.examples[0].data_source, "chartqa");
        assert_eq!(ds.skipped.len(), 1);
        assert!(
            ds.skipped[0].contains("train-00000.parquet:1")
                && ds.skipped[0].contains("original_answer"),
            "{}",
            ds.skipped[0]
        );
        let img = ds.image(0).expect("decodes");
        assert_eq!((img.width, img.height), (56, 56));
        assert_eq!(img.pixel(3, 3), [200, 0, 0]);
        let err = ds.image(1).expect_err("bad bytes");
        assert!(
            err.to_string().contains("row12") || err.to_string().contains("12"),
            "{err}"
        );
        let err = Dataset::open(&dir, BadRows::Fail).expect_err("fatal");
        assert!(err.to_string().contains("train-00000.parquet:1"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
