//! Exact top-k similarity (inner product or cosine) between query and base vectors.
//! Scores are computed in f32 with the CPU backend's fused kernel, base chunk by base
//! chunk (so a base larger than memory streams through), into a per-query running
//! top-k; every candidate within the f32 rounding bound of the k-th score is re-scored
//! in f64, and the final order is by f64 score, ties to the lower base index, so the
//! result equals a float64 brute force (recall 1.0).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::backend::cpu::{ErrorTerms, fused};

#[cfg(target_arch = "x86_64")]
pub(crate) mod int8;

/// Which scan scores the pairs before the exact f64 re-scoring (the result is the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanKernel {
    /// The 8-bit filter (AVX-512 VNNI, else AVX2), else f32.
    Auto,
    /// f32 scores (the AVX2 fused kernel, or portable code).
    F32,
    /// 8-bit codes with a proven error bound, with the best instructions this CPU has
    /// (resolves to `Int8` for AVX-512 VNNI, `Int8Avx2` otherwise, f32 without AVX2).
    Int8,
    /// The 8-bit scan with AVX2 only (what CPUs without AVX-512 VNNI run).
    Int8Avx2,
}

impl ScanKernel {
    /// The scan that will actually run on this CPU for rows `dim` wide.
    pub fn resolve_for(self, dim: usize) -> ScanKernel {
        #[cfg(target_arch = "x86_64")]
        {
            use int8::Isa;
            if dim > int8::MAX_DIM {
                return ScanKernel::F32;
            }
            match self {
                ScanKernel::F32 => ScanKernel::F32,
                ScanKernel::Int8Avx2 if Isa::Avx2.supported() => ScanKernel::Int8Avx2,
                ScanKernel::Int8Avx2 => ScanKernel::F32,
                ScanKernel::Auto | ScanKernel::Int8 => match Isa::best() {
                    Some(Isa::Avx512Vnni) => ScanKernel::Int8,
                    Some(Isa::Avx2) => ScanKernel::Int8Avx2,
                    None => ScanKernel::F32,
                },
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (self, dim);
            ScanKernel::F32
        }
    }

    /// Its name in `--json` output.
    pub fn name(self) -> &'static str {
        match self {
            ScanKernel::Auto => "auto",
            ScanKernel::F32 => "f32",
            ScanKernel::Int8 => "int8-avx512vnni",
            ScanKernel::Int8Avx2 => "int8-avx2",
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn scan(self, q: &Side<'_>, dim: usize) -> Option<int8::Scan> {
        match self.resolve_for(dim) {
            ScanKernel::Int8 => int8::Scan::new(int8::Isa::Avx512Vnni, q, dim),
            ScanKernel::Int8Avx2 => int8::Scan::new(int8::Isa::Avx2, q, dim),
            _ => None,
        }
    }
}

/// Query rows per tile (the fused kernel's register tile).
const QROWS: usize = fused::ROWS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimMetric {
    /// x·y.
    Ip,
    /// x·y / (‖x‖‖y‖): the caller normalises both sides first.
    Cosine,
}

/// One neighbour: base row (global index) and its exact (f64) score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub index: u64,
    pub score: f64,
}

/// Running top-k of one query: candidates with exact scores, trimmed lazily.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    hits: Vec<Hit>,
    /// The k-th best exact score so far (−inf until k hits).
    kth: f64,
}

fn better(a: &Hit, b: &Hit) -> std::cmp::Ordering {
    b.score.total_cmp(&a.score).then(a.index.cmp(&b.index))
}

impl TopK {
    pub fn new(k: usize) -> Self {
        TopK { k, hits: Vec::with_capacity(k + k / 4 + 16), kth: f64::NEG_INFINITY }
    }

    fn push(&mut self, h: Hit) {
        self.hits.push(h);
        // Trim often, so the k-th score (the filter) rises early.
        if self.hits.len() >= self.k + self.k / 4 + 16 {
            self.trim();
        }
    }

    fn trim(&mut self) {
        if self.hits.len() > self.k {
            self.hits.select_nth_unstable_by(self.k - 1, better);
            self.hits.truncate(self.k);
        }
        if self.hits.len() == self.k {
            self.kth = self.hits.iter().map(|h| h.score).fold(f64::INFINITY, f64::min);
        }
    }

    /// Offer a hit with its exact score.
    pub fn push_hit(&mut self, h: Hit) {
        if h.score >= self.kth || self.hits.len() < self.k {
            self.push(h);
        }
    }

    /// Merge another partial list of the same query (chunks searched separately).
    pub fn merge(&mut self, other: TopK) {
        for h in other.hits {
            self.push(h);
        }
        self.trim();
    }

    /// The final list, best first.
    pub fn finish(mut self) -> Vec<Hit> {
        self.trim();
        self.hits.sort_by(better);
        self.hits
    }
}

/// Exact-enough dot product: f64 products summed in 16 lanes, combined in a fixed
/// tree, so every caller and every CPU gets the same bits (no FMA contraction); on
/// AVX-512 the same operations run 8 lanes at a time.
pub(crate) fn dot64(a: &[f32], b: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: checked just above.
        return unsafe { dot64_avx512(a, b) };
    }
    dot64_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot64_avx512(a: &[f32], b: &[f32]) -> f64 {
    dot64_lanes(a, b)
}

#[inline(always)]
fn dot64_lanes(a: &[f32], b: &[f32]) -> f64 {
    const L: usize = 16;
    let mut acc = [0.0f64; L];
    let n = a.len().min(b.len()) / L * L;
    for (x, y) in a[..n].chunks_exact(L).zip(b[..n].chunks_exact(L)) {
        for l in 0..L {
            acc[l] += x[l] as f64 * y[l] as f64;
        }
    }
    for (i, (x, y)) in a[n..].iter().zip(&b[n..]).enumerate() {
        acc[i] += *x as f64 * *y as f64;
    }
    let mut w = L;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            acc[l] += acc[l + w];
        }
    }
    acc[0]
}

/// Base vectors packed per block: the block is read by every query tile, so it should
/// stay in the last-level cache (4096 × 384 × 4 B = 6 MiB).
const BASE_BLOCK: usize = 4096;

/// Vectors as searched (`scan`, normalised for cosine) and as scored exactly
/// (`exact` · `scale`: the original vector and 1/‖v‖ for cosine, 1 for inner product).
pub struct Side<'a> {
    pub scan: &'a [f32],
    pub exact: &'a [f32],
    pub scale: &'a [f64],
}

/// Search one chunk of the base (rows `base_offset..`) for every query, updating the
/// per-query lists, with the fastest scan this CPU has.
pub fn search_chunk(q: &Side<'_>, b: &Side<'_>, dim: usize, base_offset: u64, lists: &mut [TopK]) {
    search_chunk_with(ScanKernel::Auto, q, b, dim, base_offset, lists)
}

/// `search_chunk` with a chosen scan (tests run both).
pub fn search_chunk_with(
    kernel: ScanKernel,
    q: &Side<'_>,
    b: &Side<'_>,
    dim: usize,
    base_offset: u64,
    lists: &mut [TopK],
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(mut scan) = kernel.scan(q, dim) {
        return scan.chunk(q, b, dim, base_offset, lists);
    }
    search_chunk_f32(q, b, dim, base_offset, lists)
}

fn search_chunk_f32(q: &Side<'_>, b: &Side<'_>, dim: usize, base_offset: u64, lists: &mut [TopK]) {
    let (queries, base) = (q.scan, b.scan);
    // |f32 dot − exact| ≤ γ_{d+2} ‖q‖‖b‖ (plus the rounding of normalisation); a
    // candidate is re-scored when its f32 score is within twice that of the k-th.
    let gamma = (dim as f64 + 8.0) * f32::EPSILON as f64;
    let qnorms: Vec<f64> =
        queries.chunks_exact(dim).map(|r| r.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()).collect();
    let fused_ok = fused::available();
    for (bi, block) in base.chunks(BASE_BLOCK * dim).enumerate() {
        let nb = block.len() / dim;
        let offset = base_offset + (bi * BASE_BLOCK) as u64;
        let zeros = vec![0.0f32; nb];
        let no_err = ErrorTerms { a: zeros.clone(), b: zeros.clone() };
        let bnorm =
            block.chunks_exact(dim).map(|r| r.iter().map(|x| x * x).sum::<f32>().sqrt()).fold(0.0f32, f32::max) as f64;
        let packed = fused_ok.then(|| fused::PackedCentroids::new(block, &zeros, &no_err, dim));
        let stride = nb.next_multiple_of(fused::PANEL);
        let b0 = bi * BASE_BLOCK;
        queries
            .par_chunks(QROWS * dim)
            .zip(lists.par_chunks_mut(QROWS))
            .zip(qnorms.par_chunks(QROWS))
            .enumerate()
            .for_each_init(Vec::new, |scores: &mut Vec<f32>, (ti, ((qt, l), qn))| {
                let q0 = ti * QROWS;
                let rows = l.len();
                scores.clear();
                scores.resize(rows * stride, 0.0);
                match &packed {
                    Some(pk) => {
                        let mut upper = [[0.0f32; 2]; QROWS];
                        let xn = [0.0f32; QROWS];
                        // SAFETY: `packed` exists only with AVX2 + FMA; `q` holds `rows`
                        // rows, `scores` rows × padded block.
                        unsafe { fused::values(qt, rows, pk, &xn, scores, &mut upper, false) };
                    }
                    None => {
                        for r in 0..rows {
                            for j in 0..nb {
                                let d: f32 = qt[r * dim..(r + 1) * dim]
                                    .iter()
                                    .zip(&block[j * dim..(j + 1) * dim])
                                    .map(|(a, b)| a * b)
                                    .sum();
                                scores[r * stride + j] = -2.0 * d;
                            }
                        }
                    }
                }
                for r in 0..rows {
                    let qi = q0 + r;
                    let qr = &q.exact[qi * dim..(qi + 1) * dim];
                    let slack = 2.0 * gamma * qn[r] * bnorm + f64::MIN_POSITIVE;
                    let list = &mut l[r];
                    // v = 0 − 2·dot: the f32 score is −v/2 (exact); compare in v against
                    // a limit rounded up (conservative), eight values at a time.
                    let limit = |l: &TopK| -> f32 {
                        if l.hits.len() < l.k {
                            return f32::INFINITY;
                        }
                        let x = -2.0 * (l.kth - slack);
                        let f = x as f32;
                        if (f as f64) < x { f.next_up() } else { f }
                    };
                    let mut lim = limit(list);
                    let row = &scores[r * stride..r * stride + nb];
                    let mut j0 = 0;
                    while j0 < nb {
                        let end = (j0 + 8).min(nb);
                        if row[j0..end].iter().all(|v| *v > lim) {
                            j0 = end;
                            continue;
                        }
                        for (j, &v) in row.iter().enumerate().take(end).skip(j0) {
                            if v <= lim {
                                let bj = b0 + j;
                                let exact = dot64(qr, &b.exact[bj * dim..(bj + 1) * dim]) * q.scale[qi] * b.scale[bj];
                                if exact >= list.kth || list.hits.len() < list.k {
                                    list.push(Hit { index: offset + j as u64, score: exact });
                                    lim = limit(list);
                                }
                            }
                        }
                        j0 = end;
                    }
                }
            });
    }
}

/// Exact top-k of one query set over a base that arrives chunk by chunk (the queries'
/// codes and the scan's buffers are kept between chunks).
pub struct Searcher<'a> {
    q: Side<'a>,
    dim: usize,
    lists: Vec<TopK>,
    #[cfg(target_arch = "x86_64")]
    int8: Option<int8::Scan>,
}

impl<'a> Searcher<'a> {
    pub fn new(kernel: ScanKernel, q: Side<'a>, dim: usize, k: usize) -> Self {
        let lists = (0..q.exact.len() / dim).map(|_| TopK::new(k)).collect();
        #[cfg(target_arch = "x86_64")]
        let int8 = kernel.scan(&q, dim);
        #[cfg(not(target_arch = "x86_64"))]
        let _ = kernel;
        Searcher {
            q,
            dim,
            lists,
            #[cfg(target_arch = "x86_64")]
            int8,
        }
    }

    /// Search base rows `base_offset..` (one chunk).
    pub fn add(&mut self, b: &Side<'_>, base_offset: u64) {
        #[cfg(target_arch = "x86_64")]
        if let Some(scan) = &mut self.int8 {
            scan.chunk(&self.q, b, self.dim, base_offset, &mut self.lists);
            return;
        }
        search_chunk_f32(&self.q, b, self.dim, base_offset, &mut self.lists);
    }

    /// Each query's list, best first.
    pub fn finish(self) -> Vec<Vec<Hit>> {
        self.lists.into_iter().map(TopK::finish).collect()
    }
}

/// Exact top-k of every query over an in-memory base, in chunks of `chunk_rows` base
/// rows (the partial lists merge as they go), with the given scan (`ScanKernel::Auto`:
/// the fastest here). Normalises copies for cosine.
pub fn search_with(
    kernel: ScanKernel,
    queries: &[f32],
    base: &[f32],
    dim: usize,
    k: usize,
    metric: SimMetric,
    chunk_rows: usize,
) -> Vec<Vec<Hit>> {
    let (qs, qscale) = prepare(queries, dim, metric);
    let q = Side { scan: qs.as_deref().unwrap_or(queries), exact: queries, scale: &qscale };
    let mut searcher = Searcher::new(kernel, q, dim, k);
    let rows = chunk_rows.max(1);
    for (ci, chunk) in base.chunks(rows * dim).enumerate() {
        let (bs, bscale) = prepare(chunk, dim, metric);
        let b = Side { scan: bs.as_deref().unwrap_or(chunk), exact: chunk, scale: &bscale };
        searcher.add(&b, (ci * rows) as u64);
    }
    searcher.finish()
}

/// The scan copy (normalised, for cosine) and the exact scale of each row.
pub fn prepare(v: &[f32], dim: usize, metric: SimMetric) -> (Option<Vec<f32>>, Vec<f64>) {
    match metric {
        SimMetric::Ip => (None, vec![1.0; v.len() / dim]),
        SimMetric::Cosine => {
            let norms = crate::features::row_norms(v, dim);
            let mut s = v.to_vec();
            crate::features::divide_rows(&mut s, dim, &norms);
            (Some(s), norms.iter().map(|n| if *n > 0.0 { 1.0 / n } else { 0.0 }).collect())
        }
    }
}

/// Exact top-k on a GPU, chunk by chunk. The device keeps a running top-(k + 16) per
/// query in f32 (the tiles of scores never travel back); after each chunk the host
/// reads the lists back and re-scores in f64 the entries that chunk brought, into an
/// exact top-k per query. A row the device dropped scored at most the lowest f32 score
/// of its final list, so the host's k-th exact score proves the list when it lies more
/// than the f32 rounding bound above that; `finish` names the queries it cannot prove
/// (near-ties around the k-th score) for the caller to redo on the CPU.
pub struct GpuSearcher<'g, 'a> {
    dev: crate::backend::wgpu::DeviceTopK<'g>,
    q: Side<'a>,
    dim: usize,
    keep: usize,
    lists: Vec<TopK>,
    /// Largest base-row norm seen (for the rounding bound).
    bnorm: f64,
    rows: u64,
}

impl<'g, 'a> GpuSearcher<'g, 'a> {
    pub fn new(
        gpu: &'g crate::backend::wgpu::WgpuBackend,
        q: Side<'a>,
        dim: usize,
        k: usize,
    ) -> crate::error::Result<Self> {
        let keep = k + 16;
        let dev = gpu.topk_start(q.scan, dim, keep).ok_or_else(|| {
            crate::error::Error::Runtime(format!(
                "this GPU adapter cannot run the top-k shader for k = {k} (too little workgroup memory, or a \
                 software driver's loop limit); use --backend cpu"
            ))
        })?;
        let lists = (0..q.exact.len() / dim).map(|_| TopK::new(k)).collect();
        Ok(GpuSearcher { dev, q, dim, keep, lists, bnorm: 0.0, rows: 0 })
    }

    /// Search base rows `base_offset..` (one chunk; offsets must increase).
    pub fn add(&mut self, b: &Side<'_>, base_offset: u64) -> crate::error::Result<()> {
        let dim = self.dim;
        let n = b.exact.len() / dim;
        self.dev.add(b.scan, base_offset)?;
        self.bnorm = b
            .scan
            .chunks_exact(dim)
            .map(|r| r.iter().map(|x| x * x).sum::<f32>().sqrt())
            .fold(self.bnorm as f32, f32::max) as f64;
        self.rows += n as u64;
        let end = base_offset + n as u64;
        let kept = self.dev.lists()?;
        let q = &self.q;
        self.lists.par_iter_mut().zip(kept.par_iter()).enumerate().for_each(|(qi, (list, kept))| {
            let qr = &q.exact[qi * dim..(qi + 1) * dim];
            for &(j, _) in kept.iter().filter(|(j, _)| (base_offset..end).contains(j)) {
                let r = (j - base_offset) as usize;
                let score = dot64(qr, &b.exact[r * dim..(r + 1) * dim]) * q.scale[qi] * b.scale[r];
                list.push_hit(Hit { index: j, score });
            }
        });
        Ok(())
    }

    /// The lists, and the queries whose order the device's lists cannot prove.
    pub fn finish(self) -> crate::error::Result<(Vec<Vec<Hit>>, Vec<usize>)> {
        let kept = self.dev.lists()?;
        let gamma = (self.dim as f64 + 8.0) * f32::EPSILON as f64;
        let mut unproven = Vec::new();
        let mut out = Vec::with_capacity(self.lists.len());
        for (qi, (list, kept)) in self.lists.into_iter().zip(kept).enumerate() {
            let hits = list.finish();
            let full = kept.len() >= self.keep && (kept.len() as u64) < self.rows;
            if full {
                let qr = &self.q.scan[qi * self.dim..(qi + 1) * self.dim];
                let qn = qr.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                let slack = 2.0 * gamma * qn * self.bnorm;
                let lowest_kept = kept.iter().map(|p| p.1 as f64).fold(f64::INFINITY, f64::min);
                if hits.len() < self.keep - 16 || lowest_kept + slack >= hits[hits.len() - 1].score {
                    unproven.push(qi);
                }
            }
            out.push(hits);
        }
        Ok((out, unproven))
    }
}

/// `search_with` on a GPU (`GpuSearcher` over in-memory chunks); the queries it cannot
/// prove are redone on the CPU, so the result is always exact.
pub fn search_gpu(
    gpu: &crate::backend::wgpu::WgpuBackend,
    queries: &[f32],
    base: &[f32],
    dim: usize,
    k: usize,
    metric: SimMetric,
    chunk_rows: usize,
) -> crate::error::Result<Vec<Vec<Hit>>> {
    let (qs, qscale) = prepare(queries, dim, metric);
    let q = Side { scan: qs.as_deref().unwrap_or(queries), exact: queries, scale: &qscale };
    let mut searcher = GpuSearcher::new(gpu, q, dim, k)?;
    let rows = chunk_rows.max(1);
    for (ci, chunk) in base.chunks(rows * dim).enumerate() {
        let (bs, bscale) = prepare(chunk, dim, metric);
        let b = Side { scan: bs.as_deref().unwrap_or(chunk), exact: chunk, scale: &bscale };
        searcher.add(&b, (ci * rows) as u64)?;
    }
    let (mut out, unproven) = searcher.finish()?;
    for qi in unproven {
        let qr = &queries[qi * dim..(qi + 1) * dim];
        out[qi] = search_with(ScanKernel::Auto, qr, base, dim, k, metric, chunk_rows).remove(0);
    }
    Ok(out)
}
