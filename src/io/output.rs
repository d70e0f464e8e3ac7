//! Outputs that appear whole or not at all: each is written to a temporary file in
//! the destination's directory and renamed into place by `commit`. An existing file is
//! only replaced when the user said `--force`; a dropped, uncommitted output vanishes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// An output file being written; becomes visible at `path` only on `commit`.
pub struct AtomicOutput {
    path: PathBuf,
    force: bool,
    tmp: NamedTempFile,
}

impl AtomicOutput {
    /// Check the destination up front (before any expensive work) and open the
    /// temporary file beside it.
    pub fn create(path: &Path, force: bool) -> Result<Self> {
        if path.is_dir() {
            return Err(Error::output(path, "is a directory; give a file name"));
        }
        if path.exists() && !force {
            return Err(Error::OutputExists(path.to_path_buf()));
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(Error::output(path, format!("directory {} does not exist", dir.display())));
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".partial")
            .tempfile_in(&dir)
            .map_err(|e| Error::output(path, format!("cannot write in {}: {e}", dir.display())))?;
        Ok(AtomicOutput { path: path.to_path_buf(), force, tmp })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        self.tmp.as_file()
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        self.tmp.write_all(bytes).map_err(|e| Error::output(&self.path, e))
    }

    /// Flush to disk and rename into place.
    pub fn commit(self) -> Result<()> {
        self.tmp.as_file().sync_all().map_err(|e| Error::output(&self.path, e))?;
        // Temporary files are created private (0600); a finished output gets the usual mode.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = self.tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644));
        }
        let path = self.path;
        let res = if self.force { self.tmp.persist(&path) } else { self.tmp.persist_noclobber(&path) };
        res.map(|_| ()).map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                Error::OutputExists(path.clone())
            } else {
                Error::output(&path, e.error)
            }
        })
    }
}

/// Serialise a value as pretty JSON into an atomic output and commit it.
pub fn write_json<T: serde::Serialize>(out: AtomicOutput, value: &T) -> Result<()> {
    let mut out = out;
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Runtime(e.to_string()))?;
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    out.commit()
}

/// A Parquet writer over an atomic output (zstd, row groups as batches arrive).
pub struct ParquetOutput {
    out: Option<AtomicOutput>,
    writer: Option<ArrowWriter<File>>,
}

impl ParquetOutput {
    pub fn new(out: AtomicOutput, schema: SchemaRef, row_group_rows: usize) -> Result<Self> {
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap()))
            .set_max_row_group_row_count(Some(row_group_rows))
            .build();
        let file = out.file().try_clone().map_err(|e| Error::output(out.path(), e))?;
        let writer =
            ArrowWriter::try_new(file, Arc::clone(&schema), Some(props)).map_err(|e| Error::output(out.path(), e))?;
        Ok(ParquetOutput { out: Some(out), writer: Some(writer) })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let path = self.out.as_ref().unwrap().path().to_path_buf();
        self.writer.as_mut().unwrap().write(batch).map_err(|e| Error::output(path, e))
    }

    /// Finish the file (footer) and rename it into place.
    pub fn commit(mut self) -> Result<()> {
        let out = self.out.take().unwrap();
        self.writer.take().unwrap().close().map_err(|e| Error::output(out.path(), e))?;
        out.commit()
    }
}
