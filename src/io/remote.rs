//! Inputs and outputs on object storage: `s3://bucket/key`, `gs://...`, `az://...` (and
//! the other URL forms the `object_store` crate knows), with credentials from the
//! standard environment variables of each cloud (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`,
//! `GOOGLE_APPLICATION_CREDENTIALS`, `AZURE_STORAGE_ACCOUNT_NAME`, ...).
//!
//! A remote Parquet file is read with the parquet crate's async reader over
//! `object_store`: the footer, then only the byte ranges of the projected columns,
//! fetched in a few large pieces ahead of the decoder ([`Prefetch`]). Decoding runs on
//! the I/O runtime one batch ahead of the caller, so the network, the decoder and the
//! caller's work overlap.
//!
//! A remote output is first written whole to a local temporary file, then sent as a
//! multipart upload that is completed only once every part is in: until then the
//! object store shows nothing at the destination, and a failed or interrupted upload
//! is aborted. `file://` URLs are plain local paths.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use arrow::record_batch::RecordBatch;
use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::{AsyncFileReader, MetadataFetch, ParquetRecordBatchStream};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::error::{Error, Result};

/// The URL schemes read through `object_store` (a `file://` URL is a local path).
const SCHEMES: &[&str] = &["s3://", "s3a://", "gs://", "az://", "azure://", "abfs://", "abfss://", "adl://"];

/// Whether an input or output names an object store location.
pub fn is_remote(p: &Path) -> bool {
    let s = p.to_string_lossy();
    SCHEMES.iter().any(|scheme| s.len() > scheme.len() && s[..scheme.len()].eq_ignore_ascii_case(scheme))
}

/// A `file://` URL as the local path it names; any other path unchanged.
pub fn local_path(p: &Path) -> PathBuf {
    let s = p.to_string_lossy();
    if !s.starts_with("file://") {
        return p.to_path_buf();
    }
    url::Url::parse(&s).ok().and_then(|u| u.to_file_path().ok()).unwrap_or_else(|| PathBuf::from(&s["file://".len()..]))
}

/// The runtime that drives object store requests (two I/O threads, started at the
/// first remote access; a process that reads no URL never starts it).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("microseg-io")
            .enable_all()
            .build()
            .expect("cannot start the object store I/O threads")
    })
}

/// Run a future on the I/O runtime and wait for it.
fn block_on<F: Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// A location: its store (one client per bucket or container, shared) and the key.
struct Location {
    store: Arc<dyn ObjectStore>,
    key: ObjectPath,
}

fn locate(p: &Path) -> Result<Location> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let text = p.to_string_lossy();
    let url = url::Url::parse(&text).map_err(|e| Error::Usage(format!("{text} is not a valid URL: {e}")))?;
    let (scheme, key) = ObjectStoreScheme::parse(&url)
        .map_err(|e| Error::Usage(format!("{text}: not an object store URL microseg can read: {e}")))?;
    let root = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    let mut stores = STORES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(store) = stores.get(&root) {
        return Ok(Location { store: store.clone(), key });
    }
    let store = build_store(scheme, &root).map_err(|e| {
        Error::Usage(format!(
            "{text}: cannot set up the object store client: {e}; check the credential and endpoint \
             environment variables (see docs/object-storage.md)"
        ))
    })?;
    stores.insert(root, store.clone());
    Ok(Location { store, key })
}

fn build_store(scheme: ObjectStoreScheme, root: &str) -> object_store::Result<Arc<dyn ObjectStore>> {
    use object_store::{ClientOptions, RetryConfig};
    // Fail in well under a minute on a store that does not answer, not after the
    // crate's default three minutes of retries; transient errors are still retried.
    let retry = RetryConfig { max_retries: 4, retry_timeout: std::time::Duration::from_secs(45), ..Default::default() };
    Ok(match scheme {
        ObjectStoreScheme::AmazonS3 => {
            let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(root).with_retry(retry);
            // An endpoint given as http:// (a local MinIO or test server) is meant to be used.
            let endpoint = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT"));
            if endpoint.is_ok_and(|e| e.starts_with("http://")) {
                b = b.with_client_options(ClientOptions::new().with_allow_http(true));
            }
            if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
                b = b.with_region("us-east-1");
            }
            Arc::new(b.build()?)
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            Arc::new(object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(root).with_retry(retry).build()?)
        }
        ObjectStoreScheme::MicrosoftAzure => {
            Arc::new(object_store::azure::MicrosoftAzureBuilder::from_env().with_url(root).with_retry(retry).build()?)
        }
        other => {
            return Err(object_store::Error::NotSupported {
                source: format!("the scheme {other:?} is not an object store microseg reads").into(),
            });
        }
    })
}

/// An object store failure as an error naming the location and what to do. `output`
/// says whether the location is an output (exit 4) or an input (exit 3).
fn store_error(p: &Path, e: object_store::Error, output: bool) -> Error {
    use object_store::Error as E;
    let detail = brief(&e.to_string());
    let msg = match &e {
        E::NotFound { .. } => {
            if output {
                "the bucket (or container) does not exist; create it or give another URL".to_string()
            } else {
                "no such object, and no bucket or prefix of that name; check the URL".to_string()
            }
        }
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => denied(&detail),
        _ if detail.contains("NoSuchBucket") => "the bucket does not exist; check the URL".to_string(),
        // S3 reports some refusals only in its reply's code.
        _ if ["InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403 Forbidden"]
            .iter()
            .any(|s| detail.contains(s)) =>
        {
            denied(&detail)
        }
        _ if detail.contains("error sending request") || detail.contains("connect") => format!(
            "the object store does not answer ({detail}); check the endpoint (AWS_ENDPOINT_URL, ...) and the network"
        ),
        _ => format!("the object store failed: {detail}"),
    };
    if output { Error::output(p, msg) } else { Error::input(p, msg) }
}

fn denied(detail: &str) -> String {
    format!(
        "access denied ({detail}); check the credentials in the environment \
         (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*)"
    )
}

/// A store's error in one line: the service's own code and message where its reply
/// carries them (S3 and Azure answer in XML), not the whole reply.
fn brief(detail: &str) -> String {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = detail.find(&open)? + open.len();
        let end = detail[start..].find(&format!("</{name}>"))? + start;
        Some(detail[start..end].trim().to_string())
    };
    if let Some(code) = tag("Code") {
        let status = ["400", "401", "403", "404", "409", "412", "416", "500", "503"]
            .into_iter()
            .find(|s| detail.contains(&format!("status code: {s}")) || detail.contains(&format!(" {s} ")));
        let said = match tag("Message") {
            Some(m) => format!("{code}: {m}"),
            None => code,
        };
        return match status {
            Some(s) => format!("HTTP {s}, {said}"),
            None => said,
        };
    }
    let line = detail.lines().next().unwrap_or("").trim();
    if line.chars().count() > 300 {
        format!("{}…", line.chars().take(300).collect::<String>())
    } else {
        line.to_string()
    }
}

/// Known object sizes, from the listing or `head` that found each input: the reader
/// needs the size to fetch the footer, and asking once is enough.
static SIZES: Mutex<Option<HashMap<PathBuf, u64>>> = Mutex::new(None);

fn known_size(p: &Path) -> Option<u64> {
    SIZES.lock().unwrap_or_else(|e| e.into_inner()).as_ref()?.get(p).copied()
}

fn remember_size(p: &Path, size: u64) {
    SIZES.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_default().insert(p.to_path_buf(), size);
}

/// The Parquet objects an input URL names: the object itself, or (for a URL ending in
/// `/`, or one that is no object) every `*.parquet` object under that prefix, sorted.
pub fn expand(p: &Path) -> Result<Vec<PathBuf>> {
    let loc = locate(p)?;
    let text = p.to_string_lossy().into_owned();
    if !text.ends_with('/') {
        match block_on(loc.store.head(&loc.key)) {
            Ok(meta) => {
                remember_size(p, meta.size);
                return Ok(vec![p.to_path_buf()]);
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_error(p, e, false)),
        }
    }
    let prefix = if loc.key.as_ref().is_empty() { None } else { Some(&loc.key) };
    let listed: Vec<object_store::ObjectMeta> = block_on(loc.store.list(prefix).collect::<Vec<_>>())
        .into_iter()
        .collect::<object_store::Result<_>>()
        .map_err(|e| store_error(p, e, false))?;
    let base = text.trim_end_matches('/');
    let key_len = loc.key.as_ref().len();
    let mut found: Vec<(PathBuf, u64)> = listed
        .into_iter()
        .filter(|m| m.location.extension() == Some("parquet"))
        .map(|m| {
            let rest = &m.location.as_ref()[key_len..];
            let rest = rest.trim_start_matches('/');
            (PathBuf::from(format!("{base}/{rest}")), m.size)
        })
        .collect();
    if found.is_empty() {
        return Err(Error::input(p, "no such object, and no *.parquet objects under that prefix; check the URL"));
    }
    found.sort();
    for (f, size) in &found {
        remember_size(f, *size);
    }
    Ok(found.into_iter().map(|(f, _)| f).collect())
}

/// The whole of a small remote object (a model, a profile).
pub fn read_all(p: &Path) -> Result<Vec<u8>> {
    let loc = locate(p)?;
    block_on(async { loc.store.get(&loc.key).await?.bytes().await })
        .map(|b| b.to_vec())
        .map_err(|e| store_error(p, e, false))
}

/// The whole of a small remote object, or `None` where there is none at the key.
pub fn read_if_any(p: &Path) -> Result<Option<Vec<u8>>> {
    let loc = locate(p)?;
    match block_on(async { loc.store.get(&loc.key).await?.bytes().await }) {
        Ok(b) => Ok(Some(b.to_vec())),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(store_error(p, e, false)),
    }
}

/// Delete a remote object (none at the key is fine).
pub fn delete(p: &Path) -> Result<()> {
    let loc = locate(p)?;
    match block_on(loc.store.delete(&loc.key)) {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(store_error(p, e, true)),
    }
}

/// The async Parquet reader of a remote object. `columns`: the top-level columns the
/// caller will read, whose byte ranges are then fetched ahead (see [`Prefetch`]); `None`
/// for a look at the footer only. The footer is read once per object and process.
pub fn builder(p: &Path, columns: Option<&[String]>) -> Result<ParquetRecordBatchStreamBuilder<ObjectReader>> {
    static FOOTERS: Mutex<Option<HashMap<PathBuf, ArrowReaderMetadata>>> = Mutex::new(None);
    let loc = locate(p)?;
    let size = match known_size(p) {
        Some(s) => s,
        None => {
            let s = block_on(loc.store.head(&loc.key)).map_err(|e| store_error(p, e, false))?.size;
            remember_size(p, s);
            s
        }
    };
    if size == 0 {
        return Err(Error::input(p, "the object is empty (0 bytes), not a Parquet file"));
    }
    let mut reader = ObjectReader { store: loc.store, key: loc.key, size, prefetch: None, chunks: None };
    let cached = FOOTERS.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|f| f.get(p).cloned());
    let meta = match cached {
        Some(m) => m,
        None => {
            let loaded = super::contain(|| block_on(ArrowReaderMetadata::load_async(&mut reader, Default::default())));
            let m = match loaded {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => return Err(read_error(p, e)),
                Err(msg) => {
                    return Err(Error::input(
                        p,
                        format!("is corrupt: the Parquet decoder failed ({msg}); rewrite the file or leave it out"),
                    ));
                }
            };
            FOOTERS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_default()
                .insert(p.to_path_buf(), m.clone());
            m
        }
    };
    if let Some(columns) = columns {
        let roots: Vec<usize> = columns.iter().filter_map(|c| meta.schema().index_of(c).ok()).collect();
        reader.prefetch = Some(Prefetch::new(plan(meta.metadata(), &roots)));
        reader.chunks = Some(Chunks::new(meta.metadata().clone(), &roots));
    }
    Ok(ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta))
}

/// Byte ranges closer than this are fetched as one (what they skip costs less than a
/// request), as `object_store` coalesces.
const COALESCE_GAP: u64 = 1 << 20;
/// Fetched pieces: about a quarter of what the read needs, within these bounds, so a
/// file takes a few large requests (each GET costs a round trip before its first byte)
/// and several are in flight at once.
const PIECE_MIN: u64 = 8 << 20;
const PIECE_MAX: u64 = 64 << 20;
/// Pieces in flight ahead of the decoder (at most 4 × 64 MiB held).
const AHEAD: usize = 4;

/// The bytes of a column chunk, as the async reader asks for them; `None` for a chunk with
/// a negative offset or no bytes, left to the decoder (`byte_range` would assert on it).
fn chunk_range(col: &parquet::file::metadata::ColumnChunkMetaData) -> Option<std::ops::Range<u64>> {
    let start = col.dictionary_page_offset().unwrap_or(col.data_page_offset());
    let len = col.compressed_size();
    (start >= 0 && len > 0).then(|| start as u64..(start + len) as u64)
}

/// The pieces in which a read of `roots` over every row group is fetched, in file order:
/// the column chunks' ranges, coalesced, cut into pieces.
fn plan(meta: &ParquetMetaData, roots: &[usize]) -> Vec<std::ops::Range<u64>> {
    let schema = meta.file_metadata().schema_descr();
    let mut ranges: Vec<std::ops::Range<u64>> = Vec::new();
    for rg in meta.row_groups() {
        for (c, col) in rg.columns().iter().enumerate() {
            if roots.contains(&schema.get_column_root_idx(c))
                && let Some(r) = chunk_range(col)
            {
                ranges.push(r);
            }
        }
    }
    ranges.sort_by_key(|r| r.start);
    let mut spans: Vec<std::ops::Range<u64>> = Vec::new();
    for r in ranges {
        match spans.last_mut() {
            Some(last) if r.start <= last.end + COALESCE_GAP => last.end = last.end.max(r.end),
            _ => spans.push(r),
        }
    }
    let total: u64 = spans.iter().map(|r| r.end - r.start).sum();
    let piece = (total / AHEAD as u64).clamp(PIECE_MIN, PIECE_MAX);
    let mut pieces = Vec::new();
    for span in spans {
        let mut at = span.start;
        while at < span.end {
            // No runt at the end of a span: a last piece under a quarter joins the one before.
            let end = if span.end - at < piece + piece / 4 { span.end } else { at + piece };
            pieces.push(at..end);
            at = end;
        }
    }
    pieces
}

/// Pieces of one object fetched ahead of the decoder. The decoder asks for its column
/// chunks in file order; each ask is served from the pieces holding it, and starts the
/// fetch of the next [`AHEAD`] pieces, so the network works while the CPU decodes.
/// Pieces before the one asked for are dropped. A range in no piece (the footer, an
/// index) is fetched as asked.
struct Prefetch {
    pieces: Vec<std::ops::Range<u64>>,
    fetches: Vec<Option<tokio::task::JoinHandle<object_store::Result<bytes::Bytes>>>>,
    fetched: Vec<Option<bytes::Bytes>>,
}

impl Prefetch {
    fn new(pieces: Vec<std::ops::Range<u64>>) -> Self {
        let n = pieces.len();
        Prefetch { pieces, fetches: (0..n).map(|_| None).collect(), fetched: vec![None; n] }
    }

    /// The piece holding `offset`, if any.
    fn piece_of(&self, offset: u64) -> Option<usize> {
        let i = self.pieces.partition_point(|p| p.end <= offset);
        (i < self.pieces.len() && self.pieces[i].start <= offset).then_some(i)
    }
}

/// One remote Parquet object, read by byte ranges (the parquet crate's async reader
/// asks for the footer, then for the column chunks of each row group).
pub struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    key: ObjectPath,
    size: u64,
    prefetch: Option<Prefetch>,
    chunks: Option<Chunks>,
}

/// The column chunks a read will fetch, by byte range, so that each one's dictionary
/// pages are checked (as `super::check_dictionaries` does for local files) on the bytes
/// fetched for decoding, before the decoder sees them: no second request.
struct Chunks {
    meta: Arc<ParquetMetaData>,
    /// (start, end) → (row group, column).
    at: HashMap<(u64, u64), (usize, usize)>,
}

impl Chunks {
    fn new(meta: Arc<ParquetMetaData>, roots: &[usize]) -> Self {
        let schema = meta.file_metadata().schema_descr();
        let mut at = HashMap::new();
        for (g, rg) in meta.row_groups().iter().enumerate() {
            for (c, col) in rg.columns().iter().enumerate() {
                if roots.contains(&schema.get_column_root_idx(c))
                    && let Some(r) = chunk_range(col)
                {
                    at.insert((r.start, r.end), (g, c));
                }
            }
        }
        Chunks { meta, at }
    }

    /// Check `bytes`, fetched for `range`, where the range is a whole column chunk.
    fn check(&self, range: &std::ops::Range<u64>, bytes: &bytes::Bytes) -> parquet::errors::Result<()> {
        let Some(&(g, c)) = self.at.get(&(range.start, range.end)) else { return Ok(()) };
        let rg = self.meta.row_group(g);
        let source = Arc::new(ChunkAt { base: range.start, bytes: bytes.clone() });
        super::check_chunk_dictionary(source, g, rg.column(c), rg.num_rows())
            .map_err(|what| ParquetError::External(Box::new(Corrupt(what))))
    }
}

/// A column chunk's fetched bytes, read at the file offsets its metadata gives.
struct ChunkAt {
    base: u64,
    bytes: bytes::Bytes,
}

impl ChunkAt {
    fn slice(&self, start: u64, len: Option<usize>) -> parquet::errors::Result<bytes::Bytes> {
        let from = start.checked_sub(self.base).map(|o| o as usize).filter(|&o| o <= self.bytes.len());
        let to = from.and_then(|o| match len {
            Some(l) => o.checked_add(l).filter(|&e| e <= self.bytes.len()),
            None => Some(self.bytes.len()),
        });
        match (from, to) {
            (Some(a), Some(b)) => Ok(self.bytes.slice(a..b)),
            _ => Err(ParquetError::EOF(format!(
                "a page at offset {start} lies outside its column chunk ({}..{})",
                self.base,
                self.base + self.bytes.len() as u64
            ))),
        }
    }
}

impl parquet::file::reader::Length for ChunkAt {
    fn len(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }
}

impl parquet::file::reader::ChunkReader for ChunkAt {
    type T = bytes::buf::Reader<bytes::Bytes>;
    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        use bytes::Buf;
        Ok(self.slice(start, None)?.reader())
    }
    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        self.slice(start, Some(length))
    }
}

/// A corrupt file, found by a check before decoding: the row group, column and problem.
#[derive(Debug)]
struct Corrupt(String);

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Corrupt {}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl ObjectReader {
    /// `range` from the pieces fetched ahead, or `None` when they do not hold all of it.
    async fn prefetched(&mut self, range: &std::ops::Range<u64>) -> parquet::errors::Result<Option<bytes::Bytes>> {
        let Some(pf) = self.prefetch.as_mut() else { return Ok(None) };
        let Some(first) = pf.piece_of(range.start) else { return Ok(None) };
        let Some(last) = pf.piece_of(range.end.saturating_sub(1).max(range.start)) else { return Ok(None) };
        if (first..last).any(|i| pf.pieces[i].end != pf.pieces[i + 1].start) {
            return Ok(None);
        }
        for i in 0..first {
            pf.fetched[i] = None;
            if let Some(h) = pf.fetches[i].take() {
                h.abort();
            }
        }
        for i in first..(last + AHEAD).min(pf.pieces.len()) {
            if pf.fetched[i].is_none() && pf.fetches[i].is_none() {
                let (store, key, r) = (self.store.clone(), self.key.clone(), pf.pieces[i].clone());
                pf.fetches[i] = Some(tokio::spawn(async move { store.get_range(&key, r).await }));
            }
        }
        let mut parts = Vec::with_capacity(last - first + 1);
        for i in first..=last {
            if pf.fetched[i].is_none() {
                let handle = pf.fetches[i].take().expect("started above");
                let bytes = handle
                    .await
                    .map_err(|e| ParquetError::General(format!("an object store fetch failed: {e}")))?
                    .map_err(external)?;
                pf.fetched[i] = Some(bytes);
            }
            let piece = &pf.pieces[i];
            let bytes = pf.fetched[i].as_ref().unwrap();
            let lo = range.start.max(piece.start) - piece.start;
            let hi = range.end.min(piece.end) - piece.start;
            parts.push(bytes.slice(lo as usize..hi as usize));
        }
        Ok(Some(if parts.len() == 1 { parts.pop().unwrap() } else { parts.concat().into() }))
    }
}

impl AsyncFileReader for ObjectReader {
    fn get_bytes(&mut self, range: std::ops::Range<u64>) -> BoxFuture<'_, parquet::errors::Result<bytes::Bytes>> {
        async move {
            let b = match self.prefetched(&range).await? {
                Some(b) => b,
                None => self.store.get_range(&self.key, range.clone()).await.map_err(external)?,
            };
            if let Some(c) = &self.chunks {
                c.check(&range, &b)?;
            }
            Ok(b)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<bytes::Bytes>>> {
        async move {
            let mut out = Vec::with_capacity(ranges.len());
            let mut missing = Vec::new();
            for (i, r) in ranges.iter().enumerate() {
                match self.prefetched(r).await? {
                    Some(b) => out.push(Some(b)),
                    None => {
                        out.push(None);
                        missing.push(i);
                    }
                }
            }
            if !missing.is_empty() {
                let asked: Vec<_> = missing.iter().map(|&i| ranges[i].clone()).collect();
                let got = self.store.get_ranges(&self.key, &asked).await.map_err(external)?;
                for (i, b) in missing.into_iter().zip(got) {
                    out[i] = Some(b);
                }
            }
            let out: Vec<bytes::Bytes> = out.into_iter().map(|b| b.unwrap()).collect();
            if let Some(c) = &self.chunks {
                for (r, b) in ranges.iter().zip(&out) {
                    c.check(r, b)?;
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let fetch = CheckedFooter { reader: self, size, footer: None };
            let meta =
                ParquetMetaDataReader::new().with_arrow_reader_options(options).load_and_finish(fetch, size).await?;
            Ok(Arc::new(meta))
        }
        .boxed()
    }
}

/// The footer fetches of an [`ObjectReader`], each checked by `footer::check` before the
/// parquet crate decodes it (the range is learnt from the fetch that ends the object).
struct CheckedFooter<'a> {
    reader: &'a mut ObjectReader,
    size: u64,
    footer: Option<std::ops::Range<u64>>,
}

impl MetadataFetch for CheckedFooter<'_> {
    fn fetch(&mut self, range: std::ops::Range<u64>) -> BoxFuture<'_, parquet::errors::Result<bytes::Bytes>> {
        async move {
            let b = self.reader.get_bytes(range.clone()).await?;
            if range.end == self.size && b.len() >= 8 {
                self.footer = super::footer::range(self.size, &b[b.len() - 8..]);
            }
            if let Some(f) = self.footer.clone().filter(|f| range.start <= f.start && f.end <= range.end) {
                let lo = (f.start - range.start) as usize;
                super::footer::check(&b[lo..lo + (f.end - f.start) as usize])
                    .map_err(|why| ParquetError::External(Box::new(Corrupt(format!("its footer {why}")))))?;
            }
            Ok(b)
        }
        .boxed()
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        for h in self.fetches.iter_mut().filter_map(Option::take) {
            h.abort();
        }
    }
}

/// A parquet error on a remote object: a store failure (access, missing) said as such,
/// anything else as an unreadable file.
fn read_error(p: &Path, e: parquet::errors::ParquetError) -> Error {
    if let parquet::errors::ParquetError::External(inner) = e {
        let inner = match inner.downcast::<Corrupt>() {
            Ok(c) => return Error::input(p, super::corrupt(&c.0)),
            Err(other) => other,
        };
        return match inner.downcast::<object_store::Error>() {
            Ok(store) => store_error(p, *store, false),
            Err(other) => Error::input(p, format!("not a readable Parquet file: {other}")),
        };
    }
    Error::input(p, format!("not a readable Parquet file: {e}"))
}

/// Record batches of a remote object, decoded on the I/O runtime one batch ahead.
pub struct RemoteBatches {
    rx: tokio::sync::mpsc::Receiver<std::result::Result<RecordBatch, String>>,
}

/// What one step of the decoding task gave: a batch, a decoding error, or a panic of
/// the parquet crate (on some corrupt files), kept apart so each is reported as such.
type Step = Option<parquet::errors::Result<RecordBatch>>;

impl RemoteBatches {
    pub fn start(path: &Path, stream: ParquetRecordBatchStream<ObjectReader>) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let path = path.to_path_buf();
        runtime().spawn(async move {
            let mut stream = stream;
            loop {
                let step: std::result::Result<Step, String> = Contained(Box::pin(stream.next())).await;
                let item = match step {
                    Ok(None) => break,
                    Ok(Some(Ok(b))) => Ok(b),
                    Ok(Some(Err(e))) => Err(read_error(&path, e).to_string()),
                    Err(panic) => Err(format!(
                        "{}: is corrupt: the Parquet decoder failed ({panic}); rewrite the file or leave it out",
                        path.display()
                    )),
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    break;
                }
            }
        });
        RemoteBatches { rx }
    }

    /// The next batch (waiting for it); `Err` holds the whole message, path included.
    pub fn next_batch(&mut self) -> Option<std::result::Result<RecordBatch, String>> {
        self.rx.blocking_recv()
    }
}

/// A future whose panics (the parquet crate's, on corrupt input) come back as `Err`
/// instead of tearing down the task silently, and stay off stderr as in [`super::contain`].
struct Contained<F>(Pin<Box<F>>);

impl<F: Future> Future for Contained<F> {
    type Output = std::result::Result<F::Output, String>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match super::contain(|| self.0.as_mut().poll(cx)) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(msg) => Poll::Ready(Err(msg)),
        }
    }
}

/// Check an output location before any work: the bucket is there and the credentials
/// can list it, and (without `force`) no object is at the key already.
pub fn check_output(p: &Path, force: bool) -> Result<()> {
    let loc = locate(p)?;
    if p.to_string_lossy().ends_with('/') || loc.key.as_ref().is_empty() {
        return Err(Error::output(p, "names a prefix, not an object; give a file name after the last /"));
    }
    let parent: Option<ObjectPath> = {
        let parts: Vec<_> = loc.key.parts().collect();
        (parts.len() > 1).then(|| ObjectPath::from_iter(parts[..parts.len() - 1].iter().cloned()))
    };
    block_on(loc.store.list_with_delimiter(parent.as_ref())).map_err(|e| store_error(p, e, true))?;
    match block_on(loc.store.head(&loc.key)) {
        Ok(_) if !force => Err(Error::OutputExists(p.to_path_buf())),
        Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(store_error(p, e, true)),
    }
}

/// Upload a finished local file to `p` as one multipart upload, completed only when
/// every part is in (aborted on any failure, so nothing partial is ever visible).
pub fn upload(local: &Path, p: &Path) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let loc = locate(p)?;
    let local = local.to_path_buf();
    block_on(async move {
        let mut file = tokio::fs::File::open(&local).await.map_err(|e| Error::output(p, e))?;
        let upload = loc.store.put_multipart(&loc.key).await.map_err(|e| store_error(p, e, true))?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buf = vec![0u8; PART_BYTES];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(Error::output(p, e));
                }
            };
            if let Err(e) = writer.wait_for_capacity(4).await {
                let _ = writer.abort().await;
                return Err(store_error(p, e, true));
            }
            writer.write(&buf[..n]);
        }
        writer.finish().await.map(|_| ()).map_err(|e| store_error(p, e, true))
    })
}

/// Multipart part size: S3's smallest but the last is 5 MiB; 16 MiB keeps the request
/// count low (10⁴ parts allowed: 160 GB) and four in flight use 64 MiB.
const PART_BYTES: usize = 16 << 20;
