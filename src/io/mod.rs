//! The only module that knows Parquet: finding input files, reading their schema and
//! metadata, streaming projected record batches, and writing outputs atomically.
//! It knows nothing of features or clustering; `features` turns batches into a matrix.

mod footer;
pub mod output;
pub mod remote;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderBuilder, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::file::metadata::ParquetMetaData;

use crate::error::{Error, Result};

/// Schema metadata key listing columns that are never default features (written by
/// `generate` for its ground-truth column), comma separated.
pub const NON_FEATURE_KEY: &str = "microseg.non_features";

/// Rows per streamed record batch: large enough to amortise per-batch work, small
/// enough that a batch of 32 float columns stays a few MiB.
pub const BATCH_ROWS: usize = 65_536;

/// A table read batch by batch: one or more Parquet files (or directories of them), or
/// record batches already in memory (an Arrow table or stream handed over by Python,
/// an `ndarray`): every job reads its input through this one type.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The files, or one name standing for the in-memory batches (for messages).
    pub files: Vec<PathBuf>,
    pub rows_per_file: Vec<u64>,
    pub schema: SchemaRef,
    /// In-memory batches (shared, never copied); `None` for files.
    memory: Option<std::sync::Arc<Vec<RecordBatch>>>,
}

/// How a column can be used as clustering input.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnKind {
    /// One numeric value per row (int, uint, float, decimal, bool).
    Scalar,
    /// A fixed-length numeric vector per row: `width` features.
    Embedding { width: usize },
}

/// Classify an Arrow type as a feature column, or `None` when it cannot be one.
pub fn column_kind(dt: &DataType) -> Option<ColumnKind> {
    use DataType::*;
    match dt {
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 | Float16 | Float32 | Float64
        | Decimal32(..) | Decimal64(..) | Decimal128(..) | Decimal256(..) | Boolean => Some(ColumnKind::Scalar),
        FixedSizeList(f, n) if is_float_or_int(f.data_type()) && *n > 0 => {
            Some(ColumnKind::Embedding { width: *n as usize })
        }
        _ => None,
    }
}

fn is_float_or_int(dt: &DataType) -> bool {
    dt.is_floating() || dt.is_integer()
}

/// A `List`/`LargeList` of numbers: an embedding whose width only its values show.
pub fn is_numeric_list(dt: &DataType) -> bool {
    matches!(dt, DataType::List(f) | DataType::LargeList(f) if is_float_or_int(f.data_type()))
}

impl Dataset {
    /// Expand inputs (files, or directories of `*.parquet` files) and read each footer.
    pub fn open(inputs: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        for input in inputs {
            let input = &remote::local_path(input);
            if remote::is_remote(input) {
                files.extend(remote::expand(input)?);
            } else if input.is_dir() {
                let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                    .map_err(|e| Error::input(input, format!("cannot list directory: {e}")))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "parquet"))
                    .collect();
                if found.is_empty() {
                    return Err(Error::input(input, "directory holds no *.parquet files"));
                }
                found.sort();
                files.extend(found);
            } else if input.exists() || output::is_stdio(input) {
                files.push(input.clone());
            } else {
                return Err(Error::input(input, "no such file or directory"));
            }
        }
        if files.is_empty() {
            return Err(Error::Usage("no input files given".into()));
        }
        let mut schema: Option<SchemaRef> = None;
        let mut rows_per_file = Vec::with_capacity(files.len());
        for f in &files {
            let (s, rows) = if remote::is_remote(f) {
                let b = remote::builder(f, None)?;
                (b.schema().clone(), b.metadata().file_metadata().num_rows())
            } else {
                let b = open_builder(f)?;
                (b.schema().clone(), b.metadata().file_metadata().num_rows())
            };
            rows_per_file.push(rows.max(0) as u64);
            match &schema {
                None => schema = Some(s),
                Some(first) => check_same_schema(first, &s, f, &files[0])?,
            }
        }
        Ok(Dataset { files, rows_per_file, schema: schema.unwrap(), memory: None })
    }

    /// A table of record batches already in memory (all of one schema); `name` stands
    /// for it in messages. The batches are shared, not copied.
    pub fn from_batches(name: &str, schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<Self> {
        for (i, b) in batches.iter().enumerate() {
            if b.schema().fields() != schema.fields() {
                return Err(Error::input(name, format!("batch {i} has another schema than the first")));
            }
        }
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        Ok(Dataset {
            files: vec![PathBuf::from(name)],
            rows_per_file: vec![rows],
            schema,
            memory: Some(std::sync::Arc::new(batches)),
        })
    }

    /// Whether the table is in memory rather than in files.
    pub fn in_memory(&self) -> bool {
        self.memory.is_some()
    }

    pub fn n_rows(&self) -> u64 {
        self.rows_per_file.iter().sum()
    }

    /// A display name for error messages: the file, or the first file and a count.
    pub fn display_name(&self) -> String {
        match self.files.len() {
            1 => self.files[0].display().to_string(),
            n => format!("{} (and {} more files)", self.files[0].display(), n - 1),
        }
    }

    pub fn has_column(&self, name: &str) -> bool {
        self.schema.field_with_name(name).is_ok()
    }

    /// The type of a column, or an error that lists the columns there are.
    pub fn column_type(&self, name: &str) -> Result<&DataType> {
        self.schema.field_with_name(name).map(|f| f.data_type()).map_err(|_| {
            let names: Vec<&str> = self.schema.fields().iter().map(|f| f.name().as_str()).collect();
            Error::input(&self.files[0], format!("no column '{name}'; the columns are: {}", names.join(", ")))
        })
    }

    /// Columns the schema metadata marks as never-features (ground truth, labels).
    pub fn non_feature_columns(&self) -> Vec<String> {
        self.schema
            .metadata()
            .get(NON_FEATURE_KEY)
            .map(|s| s.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// How a named column can feed features: as `column_kind`, and also a `List` of
    /// numbers whose rows all hold the same count (the width is read from the first
    /// non-empty row; `features` checks every row against it).
    pub fn feature_kind(&self, name: &str) -> Result<Option<ColumnKind>> {
        let dt = self.column_type(name)?.clone();
        if let Some(k) = column_kind(&dt) {
            return Ok(Some(k));
        }
        if !is_numeric_list(&dt) {
            return Ok(None);
        }
        let cols = vec![name.to_string()];
        for sb in self.batches(&cols)? {
            let sb = sb?;
            let a = sb.batch.column(0);
            let lens: Vec<usize> = match a.data_type() {
                DataType::List(_) => {
                    let l = a.as_list::<i32>();
                    (0..l.len()).filter(|&i| !l.is_null(i)).map(|i| l.value_length(i) as usize).collect()
                }
                _ => {
                    let l = a.as_list::<i64>();
                    (0..l.len()).filter(|&i| !l.is_null(i)).map(|i| l.value_length(i) as usize).collect()
                }
            };
            if let Some(&w) = lens.iter().find(|w| **w > 0) {
                return Ok(Some(ColumnKind::Embedding { width: w }));
            }
        }
        Ok(None)
    }

    /// For a `List` column: the first row whose length differs from the first non-empty
    /// row's, as (file, row within the file, its length, the expected length).
    pub fn first_ragged_row(&self, name: &str) -> Result<Option<(PathBuf, u64, usize, usize)>> {
        if !matches!(self.column_type(name)?, DataType::List(_) | DataType::LargeList(_)) {
            return Ok(None);
        }
        let cols = vec![name.to_string()];
        let mut width: Option<usize> = None;
        let (mut file, mut row) = (PathBuf::new(), 0u64);
        for sb in self.batches(&cols)? {
            let sb = sb?;
            if sb.path != file {
                file = sb.path.to_path_buf();
                row = 0;
            }
            let a = sb.batch.column(0);
            let lens: Vec<Option<usize>> = match a.data_type() {
                DataType::List(_) => {
                    let l = a.as_list::<i32>();
                    (0..l.len()).map(|i| (!l.is_null(i)).then(|| l.value_length(i) as usize)).collect()
                }
                _ => {
                    let l = a.as_list::<i64>();
                    (0..l.len()).map(|i| (!l.is_null(i)).then(|| l.value_length(i) as usize)).collect()
                }
            };
            for len in lens {
                if let Some(len) = len.filter(|l| *l > 0) {
                    match width {
                        None => width = Some(len),
                        Some(w) if w != len => return Ok(Some((file, row, len, w))),
                        _ => {}
                    }
                }
                row += 1;
            }
        }
        Ok(None)
    }

    /// Every column usable as a feature, in schema order.
    pub fn feature_capable_columns(&self) -> Vec<String> {
        self.schema.fields().iter().filter(|f| column_kind(f.data_type()).is_some()).map(|f| f.name().clone()).collect()
    }

    /// Stream record batches holding exactly `columns` (in that order), file after
    /// file, row group by row group. Only those columns are decoded (projection).
    pub fn batches<'a>(&'a self, columns: &'a [String]) -> Result<Batches<'a>> {
        for c in columns {
            self.column_type(c)?;
        }
        Ok(Batches { ds: self, columns, file: 0, reader: None, next_batch: 0 })
    }
}

/// A Parquet source: a file, or standard input (read whole once: Parquet needs its footer).
enum Source {
    File(File),
    Stdin(bytes::Bytes),
}

impl parquet::file::reader::Length for Source {
    fn len(&self) -> u64 {
        match self {
            Source::File(f) => parquet::file::reader::Length::len(f),
            Source::Stdin(b) => b.len() as u64,
        }
    }
}

impl parquet::file::reader::ChunkReader for Source {
    type T = Box<dyn Read + Send>;
    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(match self {
            Source::File(f) => Box::new(parquet::file::reader::ChunkReader::get_read(f, start)?),
            Source::Stdin(b) => Box::new(parquet::file::reader::ChunkReader::get_read(b, start)?),
        })
    }
    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        match self {
            Source::File(f) => parquet::file::reader::ChunkReader::get_bytes(f, start, length),
            Source::Stdin(b) => parquet::file::reader::ChunkReader::get_bytes(b, start, length),
        }
    }
}

static STDIN: std::sync::OnceLock<std::result::Result<bytes::Bytes, String>> = std::sync::OnceLock::new();

/// Standard input, read whole at the first call (an input given as `-`).
pub fn stdin_bytes() -> Result<bytes::Bytes> {
    STDIN
        .get_or_init(|| {
            let mut v = Vec::new();
            std::io::stdin().lock().read_to_end(&mut v).map(|_| bytes::Bytes::from(v)).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| Error::input(output::STDIO, format!("cannot read standard input: {e}")))
}

#[cfg(unix)]
fn is_fifo(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    m.file_type().is_fifo()
}

#[cfg(not(unix))]
fn is_fifo(_: &std::fs::Metadata) -> bool {
    false
}

/// Pipes given as inputs, read whole at their first opening (a pipe reads only once).
static PIPES: std::sync::Mutex<Vec<(PathBuf, bytes::Bytes)>> = std::sync::Mutex::new(Vec::new());

fn cached_pipe(path: &Path) -> Option<bytes::Bytes> {
    PIPES.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|(p, _)| p == path).map(|(_, b)| b.clone())
}

fn pipe_bytes(path: &Path, mut file: File) -> Result<bytes::Bytes> {
    let mut pipes = PIPES.lock().unwrap_or_else(|e| e.into_inner());
    let mut v = Vec::new();
    file.read_to_end(&mut v).map_err(|e| Error::input(path, format!("cannot read: {e}")))?;
    let b = bytes::Bytes::from(v);
    pipes.push((path.to_path_buf(), b.clone()));
    Ok(b)
}

/// The text of a small input (a model, a profile, a report): a file, or `-` for stdin.
pub fn read_text(path: &Path, what: &str) -> Result<String> {
    let path = &remote::local_path(path);
    let bytes = if output::is_stdio(path) {
        stdin_bytes()?.to_vec()
    } else if remote::is_remote(path) {
        remote::read_all(path)?
    } else {
        std::fs::read(path).map_err(|e| Error::input(path, format!("cannot read the {what}: {e}")))?
    };
    String::from_utf8(bytes).map_err(|_| Error::input(path, format!("not a {what}: the file is not UTF-8 text")))
}

thread_local! {
    /// How deep this thread is in [`contain`]ed code.
    static CONTAINED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Whether this thread runs [`contain`]ed code: a panic there is a dependency's answer
/// to a corrupt file or a failed device, turned into an error, not a bug of ours.
pub fn in_contained() -> bool {
    CONTAINED.with(|d| d.get() > 0)
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Keep the panic hook in place (whatever it is) quiet for panics inside [`contain`],
/// which become errors. Front ends call it after setting their own hook.
pub fn filter_contained_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !in_contained() {
            previous(info)
        }
    }));
}

/// Run `f`, which calls into a dependency that may panic on bad input or a failed
/// device (the parquet crate on some corrupt files, wgpu on a lost device); a panic
/// comes back as its message.
pub fn contain<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    CONTAINED.with(|d| d.set(d.get() + 1));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINED.with(|d| d.set(d.get() - 1));
    r.map_err(|payload| panic_message(payload.as_ref()))
}

/// Run Parquet decoding of `path`. The parquet crate panics on some corrupt files
/// (found by fuzzing: a dictionary page missing, negative column offsets in the
/// footer): such a panic becomes a clear input error naming the file.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    contain(f).unwrap_or_else(|msg| {
        Err(Error::input(
            path,
            format!("is corrupt: the Parquet decoder failed ({msg}); rewrite the file or leave it out"),
        ))
    })
}

fn open_builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<Source>> {
    let source = open_source(path)?;
    check_footer(path, &source)?;
    guarded(path, || {
        ParquetRecordBatchReaderBuilder::try_new(source)
            .map_err(|e| Error::input(path, format!("not a readable Parquet file: {e}")))
    })
}

/// [`footer::check`] on a local file's footer, before the parquet crate decodes it.
/// A footer that cannot be found or read is left to the crate, which says why.
fn check_footer(path: &Path, source: &Source) -> Result<()> {
    use parquet::file::reader::{ChunkReader, Length};
    let len = source.len();
    let Some(tail) = len.checked_sub(8).and_then(|at| source.get_bytes(at, 8).ok()) else { return Ok(()) };
    let Some(r) = footer::range(len, &tail) else { return Ok(()) };
    let Ok(bytes) = source.get_bytes(r.start, (r.end - r.start) as usize) else { return Ok(()) };
    footer::check(&bytes).map_err(|why| Error::input(path, corrupt(&format!("its footer {why}"))))
}

fn open_source(path: &Path) -> Result<Source> {
    let source = if output::is_stdio(path) {
        Source::Stdin(stdin_bytes()?)
    } else if let Some(b) = cached_pipe(path) {
        Source::Stdin(b)
    } else {
        let file = File::open(path).map_err(|e| Error::input(path, format!("cannot open: {e}")))?;
        let meta = file.metadata().map_err(|e| Error::input(path, format!("cannot open: {e}")))?;
        if meta.is_file() {
            Source::File(file)
        } else if is_fifo(&meta) {
            // A pipe (`/dev/stdin` from a pipe, a named pipe): read whole once, kept for
            // the later passes over the same input.
            Source::Stdin(pipe_bytes(path, file)?)
        } else {
            return Err(Error::input(
                path,
                "not a regular file or a pipe; give a Parquet file (or - for standard input)",
            ));
        }
    };
    if parquet::file::reader::Length::len(&source) == 0 {
        return Err(Error::input(path, "the file is empty (0 bytes), not a Parquet file"));
    }
    Ok(source)
}

/// Refuse a column chunk whose dictionary page claims more values than its bytes can
/// hold. The parquet crate sizes a dictionary from the page header's count before it
/// decodes a value: a 1.8 kB file found by fuzzing (`fuzz/seeds/event_reader/
/// regression-70eed4b98e7c`) made it fill 14 GB. Data pages are skipped by their headers
/// (not read); only dictionary pages, small by design, are decompressed a second time.
fn check_dictionaries(path: &Path, meta: &ParquetMetaData, roots: &[usize]) -> Result<()> {
    let source = std::sync::Arc::new(open_source(path)?);
    let schema = meta.file_metadata().schema_descr();
    for (g, rg) in meta.row_groups().iter().enumerate() {
        for (c, col) in rg.columns().iter().enumerate() {
            if roots.contains(&schema.get_column_root_idx(c)) {
                check_chunk_dictionary(source.clone(), g, col, rg.num_rows())
                    .map_err(|what| Error::input(path, corrupt(&what)))?;
            }
        }
    }
    Ok(())
}

/// The message of a file found corrupt: `what` names the row group and column.
pub(crate) fn corrupt(what: &str) -> String {
    format!("is corrupt: {what}; rewrite the file or leave it out")
}

/// [`check_dictionaries`] for one column chunk, read from `source` (the whole file, or
/// for a remote object the chunk's fetched bytes): the problem, naming row group `g` and
/// the column, if any.
pub(crate) fn check_chunk_dictionary<R: parquet::file::reader::ChunkReader + 'static>(
    source: std::sync::Arc<R>,
    g: usize,
    col: &parquet::file::metadata::ColumnChunkMetaData,
    rows: i64,
) -> std::result::Result<(), String> {
    use parquet::basic::Type;
    use parquet::column::page::{Page, PageReader};
    let name = col.column_descr().path().string();
    let at = |e: parquet::errors::ParquetError| format!("row group {g}, column '{name}': {e}");
    // The page headers first: the crate's decoder can loop for seconds on one.
    let (start, len) = col.byte_range();
    footer::check_pages(&*source, start, start.saturating_add(len))
        .map_err(|why| format!("row group {g}, column '{name}': {why}"))?;
    let mut pages =
        parquet::file::serialized_reader::SerializedPageReader::new(source, col, rows.max(0) as usize, None)
            .map_err(at)?;
    while let Some(page) = pages.peek_next_page().map_err(at)? {
        if !page.is_dict {
            pages.skip_next_page().map_err(at)?;
            continue;
        }
        let Some(Page::DictionaryPage { buf, num_values, .. }) = pages.get_next_page().map_err(at)? else {
            continue;
        };
        let bytes = buf.len() as u64;
        let room = match col.column_descr().physical_type() {
            Type::BOOLEAN => bytes * 8,
            Type::INT32 | Type::FLOAT => bytes / 4,
            Type::INT64 | Type::DOUBLE => bytes / 8,
            Type::INT96 => bytes / 12,
            // Each value is a 4-byte length, then its bytes.
            Type::BYTE_ARRAY => bytes / 4,
            Type::FIXED_LEN_BYTE_ARRAY => bytes / col.column_descr().type_length().max(1) as u64,
        };
        if u64::from(num_values) > room {
            return Err(format!(
                "row group {g}, column '{name}': a dictionary page claims {num_values} values but holds {bytes} bytes"
            ));
        }
    }
    Ok(())
}

fn check_same_schema(first: &SchemaRef, s: &SchemaRef, path: &Path, first_path: &Path) -> Result<()> {
    for f in first.fields() {
        match s.field_with_name(f.name()) {
            Ok(g) if g.data_type() == f.data_type() => {}
            Ok(g) => {
                return Err(Error::input(
                    path,
                    format!(
                        "column '{}' is {} here but {} in {}; all inputs must share one schema",
                        f.name(),
                        g.data_type(),
                        f.data_type(),
                        first_path.display()
                    ),
                ));
            }
            Err(_) => {
                return Err(Error::input(
                    path,
                    format!("column '{}' (present in {}) is missing", f.name(), first_path.display()),
                ));
            }
        }
    }
    Ok(())
}

/// The named columns of a batch, in the order asked (no copy: arrays are shared).
fn project(batch: &RecordBatch, columns: &[String], path: &Path) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut cols = Vec::with_capacity(columns.len());
    let mut fields = Vec::with_capacity(columns.len());
    for c in columns {
        let i = schema.index_of(c).map_err(|_| Error::input(path, format!("no column '{c}'")))?;
        cols.push(batch.column(i).clone());
        fields.push(schema.field(i).clone());
    }
    RecordBatch::try_new_with_options(
        std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
        cols,
        &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .map_err(|e| Error::input(path, e.to_string()))
}

/// Streaming batches over all files of a [`Dataset`].
pub struct Batches<'a> {
    ds: &'a Dataset,
    columns: &'a [String],
    file: usize,
    reader: Option<Reader>,
    /// The next in-memory batch.
    next_batch: usize,
}

/// A batch and the file it came from (for error messages).
pub struct SourcedBatch<'a> {
    pub path: &'a Path,
    pub batch: RecordBatch,
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<SourcedBatch<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(mem) = &self.ds.memory {
            let batch = mem.get(self.next_batch)?;
            self.next_batch += 1;
            let path = self.ds.files[0].as_path();
            return Some(project(batch, self.columns, path).map(|batch| SourcedBatch { path, batch }));
        }
        loop {
            if self.file >= self.ds.files.len() {
                return None;
            }
            let path = &self.ds.files[self.file];
            if self.reader.is_none() {
                match guarded(path, || self.open_reader(path)) {
                    Ok(r) => self.reader = Some(r),
                    Err(e) => {
                        self.file = self.ds.files.len();
                        return Some(Err(e));
                    }
                }
            }
            let next = match self.reader.as_mut().unwrap() {
                Reader::Local(reader) => match guarded(path, || Ok(reader.next())) {
                    Ok(n) => n.map(|r| r.map_err(|e| Error::input(path, format!("cannot decode: {e}")))),
                    Err(e) => Some(Err(e)),
                },
                // The message already names the object.
                // A remote read fails on its input (the object, its bytes or the store): exit 3, as locally.
                Reader::Remote(reader) => reader.next_batch().map(|r| r.map_err(Error::Data)),
            };
            match next {
                Some(Ok(batch)) => {
                    // The projection yields file order; put columns in the order asked.
                    return Some(project(&batch, self.columns, path).map(|batch| SourcedBatch { path, batch }));
                }
                Some(Err(e)) => {
                    self.file = self.ds.files.len();
                    return Some(Err(e));
                }
                None => {
                    self.reader = None;
                    self.file += 1;
                }
            }
        }
    }
}

/// A file's record batches: decoded here from a local file, or on the I/O runtime from
/// an object store.
enum Reader {
    Local(ParquetRecordBatchReader),
    Remote(remote::RemoteBatches),
}

impl Batches<'_> {
    fn open_reader(&self, path: &Path) -> Result<Reader> {
        if remote::is_remote(path) {
            let builder = self.configure(remote::builder(path, Some(self.columns))?);
            let stream = builder.build().map_err(|e| Error::input(path, format!("cannot read: {e}")))?;
            return Ok(Reader::Remote(remote::RemoteBatches::start(path, stream)));
        }
        let builder = open_builder(path)?;
        check_dictionaries(path, builder.metadata(), &self.roots(builder.schema()))?;
        let reader = self.configure(builder).build().map_err(|e| Error::input(path, format!("cannot read: {e}")))?;
        Ok(Reader::Local(reader))
    }

    /// The top-level columns asked for, as indices of the file's schema.
    fn roots(&self, arrow_schema: &SchemaRef) -> Vec<usize> {
        self.columns.iter().map(|c| arrow_schema.index_of(c).unwrap()).collect()
    }

    /// Project a reader (local or remote) to the columns asked for, in batches sized to
    /// the row width.
    fn configure<T>(&self, builder: ArrowReaderBuilder<T>) -> ArrowReaderBuilder<T> {
        let arrow_schema = builder.schema().clone();
        let roots = self.roots(&arrow_schema);
        // Wide rows (embeddings) come in smaller batches: about 4 MiB of values each, so
        // one batch's buffers are reused by the allocator instead of mapped afresh.
        let width: usize = roots
            .iter()
            .map(|&i| match arrow_schema.field(i).data_type() {
                DataType::FixedSizeList(_, n) => (*n).max(1) as usize,
                DataType::List(_) | DataType::LargeList(_) => 256,
                _ => 1,
            })
            .sum();
        let rows = ((1usize << 20) / width.max(1)).clamp(1024, BATCH_ROWS);
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        builder.with_projection(mask).with_batch_size(rows)
    }
}
