//! Outputs that appear whole or not at all, and never at a user's expense.
//!
//! A regular-file output is written to a temporary `.NAME.XXXXXX.partial` beside its
//! destination, created at the first byte written (not before the work starts), held
//! under an exclusive lock while it is written, and renamed into place by `commit`. An
//! existing file is replaced only with `--force`; an output that exists and is not a
//! regular file (a character device such as `/dev/null` or a terminal, a pipe) is
//! written in place and never renamed over; `-` is standard output. Temporary files
//! left by a killed run are swept by the next run on the same path (their lock is
//! gone), and [`cleanup_on_signal`] removes the live ones when a signal ends the run.
//! [`check_paths`] refuses an output that is also an input.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// The path that means standard output (for an output) or standard input (for an input).
pub const STDIO: &str = "-";

/// Set when standard output turned out to be a closed pipe: the command stops, and the
/// process exits 0 quietly (as `head` expects, and as ripgrep does).
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// Temporary files and directories this process created and has not committed yet:
/// what a signal handler must remove.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live_remove(p: &Path) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|q| q != p);
}

/// Create a directory for outputs (`segment --out-dir`, with its parents): removed,
/// when still empty, if a signal ends the run. It is created and registered under the
/// lock [`cleanup_on_signal`] takes, so no signal falls in between. Call [`forget_dir`]
/// once the outputs are in it.
pub fn create_dir(p: &Path) -> std::io::Result<()> {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    std::fs::create_dir_all(p)?;
    live.push(p.to_path_buf());
    Ok(())
}

pub fn forget_dir(p: &Path) {
    live_remove(p);
}

/// Remove every uncommitted temporary file (and empty directory registered) of this
/// process. Called from the signal-handling thread before the process exits.
pub fn cleanup_on_signal() {
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    // Files first, so the directories holding them are empty when their turn comes.
    for p in live.iter().filter(|p| !p.is_dir()) {
        let _ = std::fs::remove_file(p);
    }
    for p in live.iter().rev().filter(|p| p.is_dir()) {
        let _ = std::fs::remove_dir(p);
    }
}

/// Whether a path names standard input/output.
pub fn is_stdio(p: &Path) -> bool {
    p.as_os_str() == STDIO
}

/// Where the bytes of an output go.
enum Target {
    /// A temporary file renamed over `dest` at commit (created at the first write).
    Atomic { dest: PathBuf, force: bool, tmp: Option<NamedTempFile> },
    /// Standard output.
    Stdout,
    /// An existing character device or pipe, opened for writing at the first write.
    InPlace { file: Option<File> },
    /// An object store URL: a local temporary file (created at the first write), sent
    /// as one multipart upload at commit.
    Remote { tmp: Option<NamedTempFile> },
}

/// An output being written; visible at its path only on `commit` (for regular files).
pub struct AtomicOutput {
    /// As the user gave it (for messages).
    path: PathBuf,
    target: Target,
}

impl AtomicOutput {
    /// Check the destination up front (before any expensive work): a directory, a
    /// missing parent, an existing file without `force` and an unwritable special file
    /// are refused here. Nothing is created yet.
    pub fn create(path: &Path, force: bool) -> Result<Self> {
        let path = &super::remote::local_path(path);
        if super::remote::is_remote(path) {
            super::remote::check_output(path, force)?;
            return Ok(AtomicOutput { path: path.to_path_buf(), target: Target::Remote { tmp: None } });
        }
        if is_stdio(path) {
            return Ok(AtomicOutput { path: path.to_path_buf(), target: Target::Stdout });
        }
        // /dev/stdout, /dev/fd/N, /proc/self/fd/N: streams whatever they lead to (a shell
        // redirection included); written in place, never replaced.
        if (path.starts_with("/dev") || path.starts_with("/proc"))
            && let Ok(m) = std::fs::metadata(path)
        {
            let ft = m.file_type();
            if ft.is_file() || is_char_device_or_fifo(&ft) {
                return Ok(AtomicOutput { path: path.to_path_buf(), target: Target::InPlace { file: None } });
            }
            return Err(not_writable(path));
        }
        // Follow symlinks: what matters is what the name leads to.
        if let Ok(meta) = std::fs::metadata(path) {
            let ft = meta.file_type();
            if ft.is_dir() {
                return Err(Error::output(path, "is a directory; give a file name"));
            }
            if !ft.is_file() {
                if is_char_device_or_fifo(&ft) {
                    return Ok(AtomicOutput { path: path.to_path_buf(), target: Target::InPlace { file: None } });
                }
                return Err(not_writable(path));
            }
            if !force {
                return Err(Error::OutputExists(path.to_path_buf()));
            }
        }
        // A symlink to a regular file: replace the file it points to, keep the link.
        let dest = match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            _ => path.to_path_buf(),
        };
        let dir = parent_dir(&dest);
        if !dir.is_dir() {
            return Err(Error::output(path, format!("directory {} does not exist", dir.display())));
        }
        sweep_stale(&dest);
        Ok(AtomicOutput { path: path.to_path_buf(), target: Target::Atomic { dest, force, tmp: None } })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this output goes to standard output.
    pub fn is_stdout(&self) -> bool {
        matches!(self.target, Target::Stdout)
    }

    /// The temporary file, created (and locked) now if this is the first write.
    fn open(&mut self) -> Result<()> {
        match &mut self.target {
            Target::Atomic { dest, tmp, .. } if tmp.is_none() => {
                let dir = parent_dir(dest);
                let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let t = live_tempfile(&dir, &format!(".{name}."))
                    .map_err(|e| Error::output(&self.path, format!("cannot write in {}: {e}", dir.display())))?;
                // The lock tells a later run that this file's writer is alive.
                let _ = t.as_file().try_lock();
                *tmp = Some(t);
            }
            Target::Remote { tmp } if tmp.is_none() => {
                let t = live_tempfile(&std::env::temp_dir(), ".microseg-upload.").map_err(|e| {
                    Error::output(&self.path, format!("cannot write its local copy before the upload: {e}"))
                })?;
                *tmp = Some(t);
            }
            Target::InPlace { file } if file.is_none() => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&self.path)
                    .map_err(|e| Error::output(&self.path, format!("cannot open for writing: {e}")))?;
                *file = Some(f);
            }
            _ => {}
        }
        Ok(())
    }

    /// A writer for this output (a second handle on the same file, or on stdout).
    fn writer(&mut self) -> Result<Box<dyn Write + Send>> {
        self.open()?;
        let path = self.path.clone();
        let dup = |f: &File| f.try_clone().map_err(|e| Error::output(&path, e));
        Ok(match &self.target {
            Target::Atomic { tmp, .. } | Target::Remote { tmp } => Box::new(dup(tmp.as_ref().unwrap().as_file())?),
            Target::InPlace { file } => Box::new(dup(file.as_ref().unwrap())?),
            Target::Stdout => Box::new(StdoutWriter),
        })
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let mut w = self.writer()?;
        w.write_all(bytes).and_then(|_| w.flush()).map_err(|e| self.write_error(e))
    }

    fn write_error(&self, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            STDOUT_CLOSED.store(self.is_stdout(), Ordering::Relaxed);
        }
        Error::output(&self.path, e)
    }

    /// Flush to disk and rename into place (regular files); flush (streams).
    pub fn commit(mut self) -> Result<()> {
        self.open()?;
        let path = self.path.clone();
        match std::mem::replace(&mut self.target, Target::Stdout) {
            Target::Stdout => std::io::stdout().flush().map_err(|e| self.write_error(e)),
            Target::InPlace { file } => {
                let mut f = file.unwrap();
                f.flush().map_err(|e| Error::output(&path, e))
            }
            Target::Atomic { dest, force, tmp } => {
                let tmp = tmp.unwrap();
                let tmp_path = tmp.path().to_path_buf();
                let res = commit_file(tmp, &dest, force, &path);
                live_remove(&tmp_path);
                res
            }
            Target::Remote { tmp } => {
                let tmp = tmp.unwrap();
                let res = tmp.as_file().sync_all().map_err(|e| Error::output(&path, e));
                let res = res.and_then(|_| super::remote::upload(tmp.path(), &path));
                live_remove(tmp.path());
                res
            }
        }
    }
}

impl Drop for AtomicOutput {
    fn drop(&mut self) {
        // An uncommitted temporary file is deleted by NamedTempFile's own drop.
        if let Target::Atomic { tmp: Some(t), .. } | Target::Remote { tmp: Some(t) } = &self.target {
            live_remove(t.path());
        }
    }
}

/// A `PREFIX??????.partial` temporary file in `dir`, created and registered under the
/// lock [`cleanup_on_signal`] takes, so a signal landing in between still finds it and
/// removes it.
fn live_tempfile(dir: &Path, prefix: &str) -> std::io::Result<NamedTempFile> {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    let t = tempfile::Builder::new().prefix(prefix).suffix(".partial").tempfile_in(dir)?;
    live.push(t.path().to_path_buf());
    Ok(t)
}

fn commit_file(tmp: NamedTempFile, dest: &Path, force: bool, shown: &Path) -> Result<()> {
    tmp.as_file().sync_all().map_err(|e| Error::output(shown, e))?;
    // Temporary files are created private (0600); a finished output gets the usual mode.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    // Whatever appeared at the destination since `create` must still be a regular file:
    // a device or pipe put there meanwhile is never renamed over.
    if let Ok(m) = std::fs::symlink_metadata(dest)
        && !m.file_type().is_file()
    {
        return Err(Error::output(shown, "is no longer a regular file; nothing was written"));
    }
    let res = if force { tmp.persist(dest) } else { tmp.persist_noclobber(dest) };
    if res.is_ok()
        && let Ok(d) = File::open(parent_dir(dest))
    {
        // The rename itself is durable once the directory is synced.
        let _ = d.sync_all();
    }
    res.map(|_| ()).map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            Error::OutputExists(shown.to_path_buf())
        } else {
            Error::output(shown, e.error)
        }
    })
}

fn not_writable(path: &Path) -> Error {
    Error::output(
        path,
        "exists and is neither a regular file, a character device nor a pipe; microseg does not \
         write there (give a regular file name, or - for standard output)",
    )
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(unix)]
fn is_char_device_or_fifo(ft: &std::fs::FileType) -> bool {
    use std::os::unix::fs::FileTypeExt;
    ft.is_char_device() || ft.is_fifo()
}

#[cfg(not(unix))]
fn is_char_device_or_fifo(_: &std::fs::FileType) -> bool {
    false
}

/// Remove `.NAME.*.partial` files beside `dest` whose writer is gone: a live writer
/// holds an exclusive lock on its temporary file, a killed one's lock died with it.
fn sweep_stale(dest: &Path) {
    let dir = parent_dir(dest);
    let Some(name) = dest.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let prefix = format!(".{name}.");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let fname = e.file_name().to_string_lossy().into_owned();
        let rest = match fname.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".partial")) {
            Some(r) => r,
            None => continue,
        };
        // Only our own naming: six random characters from tempfile.
        if rest.len() != 6 || !rest.chars().all(|c| c.is_ascii_alphanumeric()) {
            continue;
        }
        let p = e.path();
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if let Ok(f) = File::open(&p)
            && f.try_lock().is_ok()
        {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Standard output as a `Write`: a closed pipe is remembered, so the command can end
/// quietly with exit code 0.
struct StdoutWriter;

impl Write for StdoutWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = std::io::stdout().lock().write(buf);
        note_broken_pipe(&r);
        r
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let r = std::io::stdout().lock().flush();
        note_broken_pipe(&r);
        r
    }
}

fn note_broken_pipe<T>(r: &std::io::Result<T>) {
    if let Err(e) = r
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Print text on standard output; a closed pipe ends the command quietly (exit 0).
pub fn print_stdout(text: &str) -> Result<()> {
    let mut w = StdoutWriter;
    match w.write_all(text.as_bytes()).and_then(|_| w.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Error::output(STDIO, e)),
        Err(e) => Err(Error::Runtime(format!("cannot write to standard output: {e}"))),
    }
}

/// Refuse outputs that are also inputs (or each other): compared by canonical path and,
/// for files that exist, by device and inode, so a hard link or `./a/../x` is caught.
/// Directory inputs count with every file in them. Standard input may be read once; an
/// output on standard output conflicts with the `--json` summary.
pub fn check_paths(inputs: &[&Path], outputs: &[&Path], json: bool) -> Result<()> {
    // file:// URLs are compared as the paths they name.
    let inputs: Vec<PathBuf> = inputs.iter().map(|p| super::remote::local_path(p)).collect();
    let outputs: Vec<PathBuf> = outputs.iter().map(|p| super::remote::local_path(p)).collect();
    let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    let outputs: Vec<&Path> = outputs.iter().map(PathBuf::as_path).collect();
    let stdin_uses = inputs.iter().filter(|p| is_stdio(p)).count();
    if stdin_uses > 1 {
        return Err(Error::Usage("standard input (-) can be read only once; give at most one input as -".into()));
    }
    let stdout_uses = outputs.iter().filter(|p| is_stdio(p)).count();
    if stdout_uses > 1 || (stdout_uses == 1 && json) {
        return Err(Error::Usage(
            "standard output (-) can carry one output, and not beside the --json summary; \
             give the other outputs file names"
                .into(),
        ));
    }
    let mut files: Vec<(PathBuf, &Path)> = Vec::new();
    for &i in inputs.iter().filter(|p| !is_stdio(p)) {
        if i.is_dir() {
            if let Ok(rd) = std::fs::read_dir(i) {
                files.extend(rd.flatten().map(|e| (e.path(), i)));
            }
        } else {
            files.push((i.to_path_buf(), i));
        }
    }
    let ids: Vec<(Option<FileId>, Option<PathBuf>, &Path)> =
        files.iter().map(|(f, given)| (file_id(f), std::fs::canonicalize(f).ok(), *given)).collect();
    let outs: Vec<&Path> = outputs.iter().copied().filter(|p| !is_stdio(p)).collect();
    // Temporary files a killed run left beside these outputs go now, whatever happens next.
    for o in &outs {
        if std::fs::metadata(o).map_or(true, |m| m.is_file()) {
            sweep_stale(o);
        }
    }
    for (n, &o) in outs.iter().enumerate() {
        // Object store URLs: the same URL (or a file:// URL and the path it names).
        if super::remote::is_remote(o) {
            if let Some(given) = inputs.iter().find(|i| **i == o) {
                return Err(Error::Usage(format!(
                    "output {} is also an input ({}); it would be overwritten: choose another output path",
                    o.display(),
                    given.display()
                )));
            }
            if let Some(o2) = outs[..n].iter().find(|p| **p == o) {
                return Err(Error::Usage(format!(
                    "outputs {} and {} are the same object: give each output its own path",
                    o2.display(),
                    o.display()
                )));
            }
            continue;
        }
        // Special files (devices, pipes) are written in place and cannot alias data.
        if std::fs::metadata(o).is_ok_and(|m| !m.is_file()) {
            continue;
        }
        let oid = file_id(o);
        let ocanon = canonical_target(o);
        for (iid, icanon, given) in &ids {
            let same = (oid.is_some() && oid == *iid) || (ocanon.is_some() && ocanon == *icanon);
            if same {
                return Err(Error::Usage(format!(
                    "output {} is also an input ({}); it would be overwritten: choose another output path",
                    o.display(),
                    given.display()
                )));
            }
        }
        for &o2 in &outs[..n] {
            let same = (oid.is_some() && oid == file_id(o2)) || (ocanon.is_some() && ocanon == canonical_target(o2));
            if same {
                return Err(Error::Usage(format!(
                    "outputs {} and {} are the same file: give each output its own path",
                    o2.display(),
                    o.display()
                )));
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId(u64, u64);

#[cfg(unix)]
fn file_id(p: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| FileId(m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(_: &Path) -> Option<FileId> {
    None
}

/// The canonical path a (possibly not yet existing) output would have.
fn canonical_target(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = std::fs::canonicalize(p) {
        return Some(c);
    }
    let dir = std::fs::canonicalize(parent_dir(p)).ok()?;
    Some(dir.join(p.file_name()?))
}

/// Key-value metadata written into every Parquet output (provenance).
pub type Provenance = Vec<(String, String)>;

/// A Parquet writer over an atomic output (zstd, row groups as batches arrive). The
/// file is started at the first batch (or at commit, for an empty result).
pub struct ParquetOutput {
    out: Option<AtomicOutput>,
    /// Known at construction, or set by `set_schema` before the first batch.
    schema: Option<SchemaRef>,
    props: Option<WriterProperties>,
    writer: Option<ArrowWriter<Box<dyn Write + Send>>>,
}

impl ParquetOutput {
    pub fn new(out: AtomicOutput, schema: SchemaRef, row_group_rows: usize) -> Result<Self> {
        Self::with_metadata(out, schema, row_group_rows, Vec::new())
    }

    /// As `new`, with provenance key-value pairs in the file's metadata.
    pub fn with_metadata(
        out: AtomicOutput,
        schema: SchemaRef,
        row_group_rows: usize,
        metadata: Provenance,
    ) -> Result<Self> {
        let kv: Vec<KeyValue> = metadata.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap()))
            .set_max_row_group_row_count(Some(row_group_rows.max(1)))
            .set_key_value_metadata((!kv.is_empty()).then_some(kv))
            .build();
        Ok(ParquetOutput { out: Some(out), schema: Some(schema), props: Some(props), writer: None })
    }

    /// A writer whose schema comes later (`set_schema`, before the first batch).
    pub fn pending(out: AtomicOutput, row_group_rows: usize, metadata: Provenance) -> Result<Self> {
        let placeholder = Arc::new(arrow::datatypes::Schema::empty());
        let mut w = Self::with_metadata(out, placeholder, row_group_rows, metadata)?;
        w.schema = None;
        Ok(w)
    }

    pub fn set_schema(&mut self, schema: &SchemaRef) -> Result<()> {
        if self.writer.is_some() {
            return Err(Error::Runtime("the Parquet schema is set after the first batch".into()));
        }
        self.schema = Some(schema.clone());
        Ok(())
    }

    fn started(&mut self) -> Result<&mut ArrowWriter<Box<dyn Write + Send>>> {
        if self.writer.is_none() {
            let out = self.out.as_mut().unwrap();
            let w = out.writer()?;
            let schema = self.schema.clone().ok_or_else(|| Error::Runtime("Parquet output without a schema".into()))?;
            // Provenance in the Arrow schema too, where pyarrow and polars readers look.
            let mut meta = schema.metadata().clone();
            if let Some(kv) = self.props.as_ref().and_then(|p| p.key_value_metadata()) {
                meta.extend(kv.iter().map(|k| (k.key.clone(), k.value.clone().unwrap_or_default())));
            }
            let schema = Arc::new(schema.as_ref().clone().with_metadata(meta));
            let writer =
                ArrowWriter::try_new(w, schema, self.props.take()).map_err(|e| Error::output(out.path(), e))?;
            self.writer = Some(writer);
        }
        Ok(self.writer.as_mut().unwrap())
    }

    fn error(&self, e: parquet::errors::ParquetError) -> Error {
        let out = self.out.as_ref().unwrap();
        if out.is_stdout() && stdout_closed() {
            return Error::output(out.path(), "standard output was closed");
        }
        Error::output(out.path(), e)
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let res = self.started()?.write(batch);
        res.map_err(|e| self.error(e))
    }

    /// Finish the file (footer) and rename it into place.
    pub fn commit(mut self) -> Result<()> {
        self.started()?;
        let res = self.writer.take().unwrap().close();
        res.map_err(|e| self.error(e))?;
        self.out.take().unwrap().commit()
    }
}

/// Serialise a value as pretty JSON into an atomic output and commit it.
pub fn write_json<T: serde::Serialize>(out: AtomicOutput, value: &T) -> Result<()> {
    let mut out = out;
    let mut text = serde_json::to_string_pretty(value).map_err(|e| Error::Runtime(e.to_string()))?;
    text.push('\n');
    out.write_all(text.as_bytes())?;
    out.commit()
}
