//! Checkpoints of a fit: the state between two iterations, written atomically
//! (temporary file, fsync, rename, fsync of the directory) into a directory the caller
//! names. Rerunning the same fit finds it and resumes; the model is the one an
//! uninterrupted fit makes, byte for byte. A checkpoint records what it belongs to (the
//! engine version, the fingerprint of the training rows, every option that changes the
//! fit) and one of another fit is refused with the option that differs, never used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gmm::GmmResume;
use crate::io::output::{AtomicOutput, write_json};
use crate::io::remote;
use crate::kmeans::{Resume, StateEvent};

pub const CHECKPOINT_FORMAT: &str = "microseg.checkpoint";
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;
/// The file a fit keeps in its checkpoint directory.
pub const CHECKPOINT_FILE: &str = "fit.checkpoint.json";

/// Where and how often a fit saves its state.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointSpec {
    pub dir: PathBuf,
    /// Save after this many iterations since the last save (and at the end of each run).
    pub every: usize,
    /// ... or once this many seconds have passed since the last save.
    pub seconds: f64,
}

impl CheckpointSpec {
    /// `dir`: a local directory (or `file://` URL), or an object store prefix
    /// (`s3://bucket/checkpoints/job-7`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CheckpointSpec { dir: remote::local_path(&dir.into()), every: 10, seconds: 60.0 }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(CHECKPOINT_FILE)
    }

    pub fn check(&self) -> Result<()> {
        if self.every == 0 {
            return Err(Error::Usage("--checkpoint-every must be at least 1 (iterations)".into()));
        }
        if !(self.seconds.is_finite() && self.seconds >= 0.0) {
            return Err(Error::Usage("--checkpoint-seconds must be a number of seconds, 0 or more".into()));
        }
        if !remote::is_remote(&self.dir) && self.dir.exists() && !self.dir.is_dir() {
            return Err(Error::output(&self.dir, "exists and is not a directory; give a directory for --checkpoint"));
        }
        Ok(())
    }

    /// Remove the checkpoint once the outputs it led to are committed.
    pub fn remove(&self) {
        let p = self.path();
        if remote::is_remote(&p) {
            match remote::delete(&p) {
                Ok(()) => log::debug!("removed the checkpoint {}", p.display()),
                Err(e) => log::warn!("could not remove the finished checkpoint {}: {e}", p.display()),
            }
        } else if p.exists() {
            match std::fs::remove_file(&p) {
                Ok(()) => log::debug!("removed the checkpoint {}", p.display()),
                Err(e) => log::warn!("could not remove the finished checkpoint {}: {e}", p.display()),
            }
        }
    }
}

/// What a checkpoint belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub engine_version: String,
    /// SHA-256 of the training rows as read (the model's input fingerprint).
    pub input_fingerprint: String,
    /// Every option that changes the fit, as text.
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointFile {
    format: String,
    format_version: u32,
    #[serde(flatten)]
    identity: Identity,
    /// Where the fit was: "run r iteration i", for people reading the file.
    position: String,
    /// The state of a k-means fit, or of a mixture's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kmeans: Option<Resume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gmm: Option<GmmResume>,
}

/// The state a checkpoint holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Saved {
    KMeans(Resume),
    Gmm(GmmResume),
}

impl Saved {
    pub fn kmeans(self) -> Option<Resume> {
        match self {
            Saved::KMeans(r) => Some(r),
            Saved::Gmm(_) => None,
        }
    }

    pub fn gmm(self) -> Option<GmmResume> {
        match self {
            Saved::Gmm(r) => Some(r),
            Saved::KMeans(_) => None,
        }
    }
}

/// Saves a fit's state as often as its spec says.
pub struct Checkpointer {
    spec: CheckpointSpec,
    identity: Identity,
    since: usize,
    last: Instant,
    /// The position of the last save, for the message of an interrupted run.
    pub saved: Option<String>,
}

fn position(run: usize, iteration: usize, runs: usize) -> String {
    if run >= runs {
        return "after the last run".into();
    }
    let r = if runs > 1 { format!("run {} of {runs}, ", run + 1) } else { String::new() };
    format!("{r}iteration {iteration}")
}

impl Checkpointer {
    /// Open the spec's directory (created if missing) and read a checkpoint left there:
    /// the state to resume from when it belongs to this fit, an error when it belongs
    /// to another.
    pub fn open(spec: &CheckpointSpec, identity: Identity) -> Result<(Self, Option<Saved>)> {
        spec.check()?;
        let path = spec.path();
        let resume = if remote::is_remote(&path) {
            // An object store prefix: the checkpoint is one object, replaced whole by each
            // save (a completed upload), as the local file is by a rename. The bucket and
            // the credentials are checked now, not at the first save.
            remote::check_output(&path, true)?;
            match remote::read_if_any(&path)? {
                Some(bytes) => Some(Self::read(&path, &bytes, &identity)?),
                None => None,
            }
        } else {
            std::fs::create_dir_all(&spec.dir).map_err(|e| Error::output(&spec.dir, format!("cannot create: {e}")))?;
            match std::fs::read(&path) {
                Ok(bytes) => Some(Self::read(&path, &bytes, &identity)?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(Error::input(&path, format!("cannot read the checkpoint: {e}"))),
            }
        };
        let me = Checkpointer { spec: spec.clone(), identity, since: 0, last: Instant::now(), saved: None };
        Ok((me, resume))
    }

    fn read(path: &Path, bytes: &[u8], want: &Identity) -> Result<Saved> {
        let start_over = "remove it (or give another --checkpoint directory) to start over, or rerun the command \
                          it was written for to resume it";
        let f: CheckpointFile = serde_json::from_slice(bytes).map_err(|e| {
            Error::input(path, format!("is not a readable microseg checkpoint ({e}); remove it to start over"))
        })?;
        if f.format != CHECKPOINT_FORMAT || f.format_version != CHECKPOINT_FORMAT_VERSION {
            return Err(Error::input(
                path,
                format!(
                    "is a {} version {} file, not a {CHECKPOINT_FORMAT} version {CHECKPOINT_FORMAT_VERSION}; remove it to start over",
                    f.format, f.format_version
                ),
            ));
        }
        let got = &f.identity;
        if got.engine_version != want.engine_version {
            return Err(Error::Usage(format!(
                "checkpoint {} was written by microseg {}, this is {}: a fit is resumed only by the engine that \
                 began it; {start_over}",
                path.display(),
                got.engine_version,
                want.engine_version
            )));
        }
        let mut keys: Vec<&String> = got.options.keys().chain(want.options.keys()).collect();
        keys.sort();
        keys.dedup();
        // The method first: with another method, every option of it differs too.
        keys.sort_by_key(|k| *k != "--method");
        for key in keys {
            let (a, b) = (got.options.get(key), want.options.get(key));
            if a != b {
                let show = |v: Option<&String>| v.map_or("(not set)".to_string(), |s| s.clone());
                return Err(Error::Usage(format!(
                    "checkpoint {} belongs to another fit: {key} was {} there and is {} here; {start_over}",
                    path.display(),
                    show(a),
                    show(b)
                )));
            }
        }
        if got.input_fingerprint != want.input_fingerprint {
            return Err(Error::Usage(format!(
                "checkpoint {} was written for other input data (rows fingerprint {}, these rows {}); {start_over}",
                path.display(),
                got.input_fingerprint,
                want.input_fingerprint
            )));
        }
        let saved = match (f.kmeans, f.gmm) {
            (Some(k), None) => Saved::KMeans(k),
            (None, Some(g)) => Saved::Gmm(g),
            _ => {
                return Err(Error::input(path, "holds no fit state (or two); it is damaged: remove it to start over"));
            }
        };
        log::info!("resuming from the checkpoint {} ({})", path.display(), f.position);
        Ok(saved)
    }

    /// Save `state` when due: at the end of a run, before an interruption, and after
    /// `every` iterations or `seconds` since the last save.
    pub fn offer(&mut self, state: &Resume, event: StateEvent, runs: usize) -> Result<()> {
        self.offer_state(event, || (position(state.run, state.iteration, runs), Saved::KMeans(state.clone())))
    }

    /// As [`Checkpointer::offer`], for a mixture's state.
    pub fn offer_gmm(&mut self, state: &GmmResume, event: StateEvent, runs: usize) -> Result<()> {
        self.offer_state(event, || (position(state.run, state.iteration, runs), Saved::Gmm(state.clone())))
    }

    fn offer_state(&mut self, event: StateEvent, state: impl FnOnce() -> (String, Saved)) -> Result<()> {
        self.since += 1;
        let due = match event {
            StateEvent::RunEnd | StateEvent::Stopping => true,
            StateEvent::Iteration => {
                self.since >= self.spec.every || self.last.elapsed().as_secs_f64() >= self.spec.seconds
            }
        };
        if !due {
            return Ok(());
        }
        let path = self.spec.path();
        let (position, saved) = state();
        let (kmeans, gmm) = match saved {
            Saved::KMeans(k) => (Some(k), None),
            Saved::Gmm(g) => (None, Some(g)),
        };
        let file = CheckpointFile {
            format: CHECKPOINT_FORMAT.into(),
            format_version: CHECKPOINT_FORMAT_VERSION,
            identity: self.identity.clone(),
            position,
            kmeans,
            gmm,
        };
        // Temporary file, fsync, rename, fsync of the directory: a kill at any point
        // leaves the previous checkpoint or this one, whole.
        write_json(AtomicOutput::create(&path, true)?, &file)?;
        log::debug!("checkpoint written to {} ({})", path.display(), file.position);
        self.saved = Some(file.position);
        self.since = 0;
        self.last = Instant::now();
        Ok(())
    }
}
