//! Mini-batch k-means streamed from the input (`--algorithm minibatch --stream`): the
//! feature matrix is never held, so data larger than memory is clustered in a few
//! passes over the files, in memory bounded by the batch, the shuffle buffer and the
//! initialisation sample.
//!
//! Passes: one to scan (row count, the columns' moments for the scaling, a seeded
//! reservoir sample for the initialisation), one per epoch of mini-batch steps (rows go
//! through a shuffle buffer, so files sorted by date or by segment still give mixed
//! batches), one per `--refine` Lloyd iteration (its statistics merge batch by batch),
//! and one to finish (the segments' statistics, the drift baseline from a strided
//! sample, the rows' fingerprint). Mini-batch steps are those of the in-memory fit
//! (`kmeans::minibatch::Stepper`); only where the rows come from differs. On any backend.

use std::path::Path;
use std::time::Instant;

use rand::RngExt;

use super::fit::{Assembly, FitConfig, FitReport, assemble, plan};
use crate::backend::{Backend, Centroids, ClusterStats, Nearest};
use crate::error::{Error, Result};
use crate::features::{self, FeatureColumn, FeatureTransform, Matrix, MissingPolicy, MissingReport, Moments};
use crate::io::Dataset;
use crate::kmeans::minibatch::{MiniBatchParams, Stepper};
use crate::kmeans::{self, IterInfo, KMeansParams, Metric};
use crate::model::baseline::BASELINE_ROWS;
use crate::model::{Baseline, Model};

/// One pass's reading: features converted, weights checked, missing values handled
/// by the policy, and (once the transforms are known) taken into model space.
struct Reader<'a> {
    ds: &'a Dataset,
    names: Vec<String>,
    cols: &'a [FeatureColumn],
    weighted: bool,
    missing: MissingPolicy,
    /// `--missing mean`: the fill values, known after the scan.
    fill: Option<Vec<f32>>,
    transforms: Option<&'a [FeatureTransform]>,
    metric: Metric,
}

/// What a pass saw.
#[derive(Default)]
struct Counts {
    rows_read: u64,
    rows_used: u64,
    rows_dropped: u64,
    /// Rows left out for being zero in model space (cosine metric, --missing drop).
    zero_rows: u64,
}

impl Counts {
    /// Rows before the cosine metric left out zero rows: what every pass must see.
    fn rows(&self) -> u64 {
        self.rows_used + self.zero_rows
    }
}

impl Reader<'_> {
    /// Read every batch; `each(model_space, weights, raw)` sees the rows kept and
    /// returns false to stop. `raw`, when `want_raw`: the rows and weights as read,
    /// before the transforms (and before rows that are zero in model space are left
    /// out under the cosine metric), as the fingerprint of the in-memory fit takes them.
    fn pass(
        &self,
        want_raw: bool,
        mut each: impl FnMut(&[f32], Option<&[f32]>, Option<(&[f32], Option<&[f32]>)>) -> Result<bool>,
    ) -> Result<(Counts, MissingReport)> {
        let dim = features::dim_of(self.cols);
        let mut report = MissingReport::new(self.cols.len());
        let mut counts = Counts::default();
        let mut block: Vec<f32> = Vec::new();
        let mut raw: Vec<f32> = Vec::new();
        let mut raw_w: Vec<f32> = Vec::new();
        for sb in self.ds.batches(&self.names)? {
            let sb = sb?;
            let m = sb.batch.num_rows();
            counts.rows_read += m as u64;
            block.clear();
            block.resize(m * dim, 0.0);
            features::convert_batch(&sb.batch, self.cols, sb.path, &mut block)?;
            let mut w = if self.weighted {
                Some(features::batch_weights(sb.batch.column(self.cols.len()), &self.names[self.cols.len()], sb.path)?)
            } else {
                None
            };
            let complete = report.scan(&block, self.cols, sb.path);
            if complete.iter().any(|c| !c) {
                match self.missing {
                    // Counted for the error after the scan.
                    MissingPolicy::Error => continue,
                    MissingPolicy::Drop => {
                        let kept = features::compact_rows(&mut block, dim, &complete);
                        counts.rows_dropped += (m - kept) as u64;
                        if let Some(w) = w.as_mut() {
                            let mut it = complete.iter();
                            w.retain(|_| *it.next().unwrap());
                        }
                    }
                    MissingPolicy::Mean => {
                        if let Some(f) = &self.fill {
                            let mut mtx = Matrix::new(std::mem::take(&mut block), dim);
                            features::fill_missing(&mut mtx, f);
                            block = mtx.data;
                        }
                    }
                }
            }
            if report.rows_with_any > 0 && self.missing == MissingPolicy::Error {
                continue;
            }
            if block.is_empty() {
                continue;
            }
            if want_raw {
                raw.clear();
                raw.extend_from_slice(&block);
                raw_w.clear();
                raw_w.extend(w.iter().flatten());
            }
            if let Some(tf) = self.transforms {
                features::apply_transforms(&mut block, tf);
                features::check_range(&block, self.cols, tf, sb.path)?;
                if self.metric == Metric::Cosine {
                    let mut mtx = Matrix::new(std::mem::take(&mut block), dim);
                    let keep = features::normalize_rows(&mut mtx, self.missing, &sb.path.display().to_string())?;
                    block = mtx.data;
                    if let Some(k) = keep {
                        counts.zero_rows += k.iter().filter(|v| !**v).count() as u64;
                        if let Some(w) = w.as_mut() {
                            let mut it = k.iter();
                            w.retain(|_| *it.next().unwrap());
                        }
                    }
                    if block.is_empty() {
                        continue;
                    }
                }
            }
            counts.rows_used += (block.len() / dim) as u64;
            let raw = want_raw.then(|| (&raw[..], self.weighted.then_some(&raw_w[..])));
            if !each(&block, w.as_deref(), raw)? {
                break;
            }
        }
        Ok((counts, report))
    }
}

/// Rows taken at random from the shuffle buffer, for the mini-batch steps.
struct Shuffle {
    dim: usize,
    rows: Vec<f32>,
    weights: Vec<f32>,
    capacity: usize,
}

impl Shuffle {
    fn len(&self) -> usize {
        self.weights.len()
    }

    fn push(&mut self, block: &[f32], w: Option<&[f32]>) {
        self.rows.extend_from_slice(block);
        match w {
            Some(w) => self.weights.extend_from_slice(w),
            None => self.weights.extend(std::iter::repeat_n(1.0, block.len() / self.dim)),
        }
    }

    /// Move `batch` rows drawn without replacement into `buf`, `bw`.
    fn draw(&mut self, batch: usize, buf: &mut [f32], bw: &mut [f32], rng: &mut rand_chacha::ChaCha8Rng) {
        let d = self.dim;
        for b in 0..batch {
            let i = rng.random_range(0..self.len());
            buf[b * d..(b + 1) * d].copy_from_slice(&self.rows[i * d..(i + 1) * d]);
            bw[b] = self.weights[i];
            // Swap-remove row i.
            let last = self.len() - 1;
            if i != last {
                self.rows.copy_within(last * d..(last + 1) * d, i * d);
                self.weights[i] = self.weights[last];
            }
            self.rows.truncate(last * d);
            self.weights.truncate(last);
        }
    }
}

/// Fit by mini-batches streamed from `source` (see the module's documentation).
pub fn fit_streamed(
    source: &Dataset,
    cfg: &FitConfig,
    backend: &dyn Backend,
    progress: &mut dyn FnMut(&IterInfo) -> bool,
) -> Result<(Model, FitReport)> {
    let t_read = Instant::now();
    let ds = source;
    let (id_col, cols, init) = plan(ds, cfg)?;
    if let Some(id) = id_col.as_deref().filter(|_| !cfg.allow_duplicate_ids) {
        super::check_unique_ids(ds, id)?;
    }
    let dim = features::dim_of(&cols);
    let params = &KMeansParams {
        k: cfg.k,
        init,
        max_iter: cfg.max_iter,
        tol: cfg.tol,
        n_init: 1,
        seed: cfg.seed,
        algorithm: kmeans::Algorithm::Lloyd,
        init_sample: cfg.init_sample,
        metric: cfg.metric,
    };
    let mb = MiniBatchParams {
        batch_size: cfg.batch_size,
        max_no_improvement: cfg.max_no_improvement,
        reassignment_ratio: cfg.reassignment_ratio,
    };
    mb.check()?;
    let mut names: Vec<String> = cols.iter().map(|c| c.column.clone()).collect();
    names.extend(cfg.weight_col.clone());
    let mut reader = Reader {
        ds,
        names,
        cols: &cols,
        weighted: cfg.weight_col.is_some(),
        missing: cfg.missing,
        fill: None,
        transforms: None,
        metric: cfg.metric,
    };

    // The scan: moments, rows, and a seeded reservoir sample for the initialisation.
    let mut moments = Moments::new(dim);
    let want_sample = params.init_sample_rows(ds.n_rows().max(1) as usize);
    let mut sample: Vec<f32> = Vec::with_capacity(want_sample * dim);
    let mut sample_w: Vec<f32> = Vec::with_capacity(want_sample);
    let mut seen = 0u64;
    let mut rng = kmeans::init::rng_for(params.seed, 2 << 20);
    let (scan, report) = reader.pass(false, |block, w, _| {
        moments.add(block);
        for (i, row) in block.chunks_exact(dim).enumerate() {
            let wi = w.map_or(1.0, |w| w[i]);
            if sample_w.len() < want_sample {
                sample.extend_from_slice(row);
                sample_w.push(wi);
            } else {
                let j = rng.random_range(0..=seen);
                if (j as usize) < want_sample {
                    let j = j as usize;
                    sample[j * dim..(j + 1) * dim].copy_from_slice(row);
                    sample_w[j] = wi;
                }
            }
            seen += 1;
        }
        Ok(true)
    })?;
    if cfg.missing == MissingPolicy::Error
        && let Some(e) = report.to_error(&cols, scan.rows_read)
    {
        return Err(e);
    }
    let n = scan.rows_used as usize;
    if n == 0 {
        return Err(Error::input(ds.display_name(), "the input has no complete rows; nothing to cluster"));
    }
    if scan.rows_dropped > 0 {
        log::info!("left out {} of {} rows with missing values (--missing drop)", scan.rows_dropped, scan.rows_read);
    }
    let impute: Option<Vec<f32>> = (cfg.missing == MissingPolicy::Mean).then(|| {
        moments.mean.iter().zip(&moments.count).map(|(m, c)| if *c > 0.0 { *m as f32 } else { f32::NAN }).collect()
    });
    if let Some(f) = &impute
        && let Some(j) = f.iter().position(|v| !v.is_finite())
    {
        return Err(Error::input(
            ds.display_name(),
            format!("feature '{}' has no finite value at all; it cannot be imputed", features::feature_names(&cols)[j]),
        ));
    }
    // Filled values sit at the mean: they add rows, not squared deviations.
    let variances: Vec<f64> = match cfg.missing {
        MissingPolicy::Mean => moments.m2.iter().map(|m| m / n as f64).collect(),
        _ => moments.variances(),
    };
    let scaled = (cfg.scale == features::Scale::Standard).then(|| (moments.mean.clone(), variances.clone()));
    let transforms = features::transforms_from(scaled, dim, &cols, impute.as_deref(), cfg.embedding_weight);
    // The sample in model space, and the initial centroids from it.
    let mut sample = Matrix::new(sample, dim);
    if let Some(f) = &impute {
        features::fill_missing(&mut sample, f);
    }
    features::apply_transforms(&mut sample.data, &transforms);
    features::check_range(&sample.data, &cols, &transforms, Path::new(&ds.display_name()))?;
    let mut sample_w = Some(sample_w);
    if cfg.metric == Metric::Cosine
        && let Some(k) = features::normalize_rows(&mut sample, cfg.missing, &ds.display_name())?
        && let Some(w) = sample_w.as_mut()
    {
        let mut it = k.iter();
        w.retain(|_| *it.next().unwrap());
    }
    let sample_weights = if cfg.weight_col.is_some() { sample_w } else { None };
    let read_seconds = t_read.elapsed().as_secs_f64();
    params.check(n, dim)?;
    let ip = KMeansParams { init_sample: sample.n(), ..params.clone() };
    let t0 = Instant::now();
    let c = kmeans::algorithm::initial_centroids(&sample, sample_weights.as_deref(), &ip, 0);
    let init_seconds = t0.elapsed().as_secs_f64();
    drop(sample);
    let variance = features::model_space_variance(&variances, &transforms);
    let tol_scaled = params.tol * variance;
    reader.fill = impute.clone();
    reader.transforms = Some(&transforms);

    // Epochs of mini-batch steps from the shuffle buffer.
    let t_fit = Instant::now();
    let batch = mb.batch_size.min(n);
    let report_every = ((n / batch) / 10).max(1) as u64;
    let last_step = (params.max_iter as u128 * n as u128).div_ceil(batch as u128).min(u64::MAX as u128) as u64;
    let mut st = Stepper::new(c, &mb, tol_scaled, n, report_every);
    let capacity = cfg.shuffle_rows.max(batch);
    let mut pool = Shuffle { dim, rows: Vec::new(), weights: Vec::new(), capacity };
    let mut draw_rng = kmeans::init::rng_for(params.seed, 1 << 20);
    let (mut buf, mut bw) = (vec![0.0f32; batch * dim], vec![1.0f32; batch]);
    let mut stopped = false;
    let mut epochs = 0;
    log::info!(
        "streaming mini-batches of {batch} rows from a shuffle buffer of {} rows, up to {} passes",
        capacity.min(n),
        params.max_iter
    );
    while !stopped && epochs < params.max_iter {
        epochs += 1;
        let mut failed: Option<Error> = None;
        let (c, _) = reader.pass(false, |block, w, _| {
            pool.push(block, w);
            while pool.len() >= pool.capacity.min(n) && pool.len() >= batch {
                pool.draw(batch, &mut buf, &mut bw, &mut draw_rng);
                match st.step(backend, &buf, &bw, &mut draw_rng, last_step, progress) {
                    Ok(true) => {
                        stopped = true;
                        return Ok(false);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        failed = Some(e);
                        return Ok(false);
                    }
                }
            }
            Ok(true)
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if !stopped && c.rows() != n as u64 {
            return Err(changed(ds));
        }
        // The end of the input: the rest of the buffer, in whole batches.
        while !stopped && pool.len() >= batch {
            pool.draw(batch, &mut buf, &mut bw, &mut draw_rng);
            stopped = st.step(backend, &buf, &bw, &mut draw_rng, last_step, progress)?;
        }
        log::debug!("pass {epochs}: {} steps so far", st.steps);
    }
    drop(pool);
    let Stepper { c, steps, converged, relocations, .. } = st;
    let mut c = c;
    let metric = params.metric;

    // Exact Lloyd iterations, a pass each.
    let mut refined = 0;
    let refine_tol = if tol_scaled > 0.0 { tol_scaled } else { 1e-4 * variance };
    for it in 0..cfg.refine {
        let (stats, _) = stats_pass(&reader, backend, &c, n, None)?;
        let next = kmeans::centroids_from(&stats, &c, metric);
        let shift: f64 = next.data.iter().zip(&c.data).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
        c = next;
        refined += 1;
        if !progress(&IterInfo {
            run: 0,
            iteration: steps as usize + it + 1,
            changed: 0,
            shift,
            full_evaluations: n as u64,
            seconds: 0.0,
        }) {
            return Err(Error::Interrupted);
        }
        if shift <= refine_tol {
            break;
        }
    }

    // The finishing pass: statistics, the baseline sample, the fingerprint.
    let mut fin = Finish::new(n, dim, cfg.weight_col.is_some());
    let (stats, last) = stats_pass(&reader, backend, &c, n, Some(&mut fin))?;
    let inertia = stats.inertia();
    if !inertia.is_finite() {
        return Err(Error::Runtime("mini-batch k-means diverged: the objective is not finite".into()));
    }
    let baseline = Baseline::fit(&fin.rows, dim, &fin.nearest);
    let input_fingerprint = fin.fingerprint();
    let fit = kmeans::KMeansFit {
        centroids: c,
        nearest: Vec::new(),
        stats,
        inertia,
        iterations: steps as usize + refined,
        converged,
        relocations,
        best_run: 0,
        tol_scaled,
        iteration_seconds: t_fit.elapsed().as_secs_f64(),
        init_seconds,
        full_evaluations: steps * batch as u64 + (refined as u64 + 1) * n as u64,
    };
    log::info!(
        "{} after {} mini-batch steps over {epochs} passes{}: inertia {:.6e}",
        if converged { "stopped early" } else { "stopped at --max-iter passes" },
        steps,
        if refined > 0 { format!(" and {refined} exact iterations") } else { String::new() },
        inertia
    );
    let fit_seconds = t_fit.elapsed().as_secs_f64();
    let per_iter = fit_seconds / (steps as f64 + refined as f64).max(1.0);
    assemble(Assembly {
        cfg,
        params,
        algorithm: params.algorithm,
        backend,
        id_col,
        cols: cols.clone(),
        transforms: transforms.clone(),
        fit,
        baseline,
        gmm_section: None,
        input_fingerprint,
        rows_read: scan.rows_read,
        rows_dropped: scan.rows_dropped + last.zero_rows,
        n: last.rows_used as usize,
        read_seconds,
        fit_seconds,
        per_iter,
    })
}

fn changed(ds: &Dataset) -> Error {
    Error::input(
        ds.display_name(),
        "changed while it was read (another number of rows on a later pass); nothing was written",
    )
}

/// What the finishing pass keeps: a strided sample of rows and their assignment for the
/// baseline, and the rows as read for the fingerprint (hashed as they pass; weights kept
/// to be hashed last, as `features::data_fingerprint` orders them).
struct Finish {
    step: usize,
    index: usize,
    rows: Vec<f32>,
    nearest: Vec<Nearest>,
    hash: sha2::Sha256,
    weights: Option<Vec<f32>>,
}

impl Finish {
    fn new(n: usize, dim: usize, weighted: bool) -> Self {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        hash.update((n as u64).to_le_bytes());
        hash.update((dim as u64).to_le_bytes());
        Finish {
            step: n.div_ceil(BASELINE_ROWS).max(1),
            index: 0,
            rows: Vec::new(),
            nearest: Vec::new(),
            hash,
            weights: weighted.then(Vec::new),
        }
    }

    fn fingerprint(self) -> String {
        use sha2::Digest;
        let mut h = self.hash;
        if let Some(w) = &self.weights {
            h.update(b"weights");
            h.update(bytemuck::cast_slice::<f32, u8>(w));
        }
        format!("sha256:{}", h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>())
    }
}

/// One exact pass: every row to its nearest centroid, the statistics merged in file
/// order (the same on every run); with `fin`, what the finishing pass keeps.
fn stats_pass(
    reader: &Reader<'_>,
    backend: &dyn Backend,
    c: &Centroids,
    n: usize,
    mut fin: Option<&mut Finish>,
) -> Result<(ClusterStats, Counts)> {
    let mut total = ClusterStats::zeros(c.k, c.dim);
    let mut nearest: Vec<Nearest> = Vec::new();
    let mut failed = None;
    let (counts, _) = reader.pass(fin.is_some(), |block, w, raw| {
        let m = block.len() / c.dim;
        nearest.clear();
        nearest.resize(m, Nearest::default());
        let r = backend.assign(block, c, &mut nearest).and_then(|_| backend.reduce(block, w, &nearest, c.k));
        match r {
            Ok(s) => total.merge(&s),
            Err(e) => {
                failed = Some(e);
                return Ok(false);
            }
        }
        if let Some(f) = fin.as_deref_mut() {
            use sha2::Digest;
            if let Some((raw, raw_w)) = raw {
                f.hash.update(bytemuck::cast_slice::<f32, u8>(raw));
                if let (Some(all), Some(w)) = (f.weights.as_mut(), raw_w) {
                    all.extend_from_slice(w);
                }
            }
            for (i, nr) in nearest.iter().enumerate() {
                if (f.index + i).is_multiple_of(f.step) {
                    f.rows.extend_from_slice(&block[i * c.dim..(i + 1) * c.dim]);
                    f.nearest.push(*nr);
                }
            }
            f.index += m;
        }
        Ok(true)
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    if counts.rows() != n as u64 {
        return Err(changed(reader.ds));
    }
    Ok((total, counts))
}
