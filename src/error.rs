//! Typed errors for the whole engine and the exit code each maps to.
//! Library code returns these; only `cli` turns them into process exit codes.

use std::path::PathBuf;

/// Process exit codes: a contract with the batch jobs that call us (see README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    Success = 0,
    /// Something failed at run time (a bug, an I/O failure mid-run, out of memory).
    Runtime = 1,
    /// The command line is wrong: unknown flag, bad value, output exists without --force.
    Usage = 2,
    /// The input data is unusable: missing column, wrong type, nulls, corrupt file.
    BadInput = 3,
    /// An output cannot be written (directory missing, no permission, disk full).
    Output = 4,
    /// Stopped by SIGHUP (128 + 1).
    HungUp = 129,
    /// Stopped by SIGINT (as shells report it: 128 + 2).
    Interrupted = 130,
    /// Stopped by SIGTERM (128 + 15), as orchestrators stop a job.
    Terminated = 143,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {msg}")]
    Input { path: PathBuf, msg: String },
    #[error("{0}")]
    Data(String),
    #[error("output {}: {msg}", path.display())]
    Output { path: PathBuf, msg: String },
    #[error("output {} already exists; pass --force to replace it", .0.display())]
    OutputExists(PathBuf),
    #[error("{0}")]
    Runtime(String),
    /// The caller asked the work to stop (Ctrl-C in Python, a cancelled job).
    #[error("interrupted")]
    Interrupted,
    /// A signal stopped the work at a clean point; `message` says where, and how to go on.
    #[error("{message}")]
    Stopped { signal: i32, message: String },
}

impl Error {
    pub fn input(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Input { path: path.into(), msg: msg.into() }
    }
    pub fn output(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        let mut msg = msg.to_string();
        // ENOSPC, EFBIG, EDQUOT: say what happened and that nothing was damaged.
        if ["os error 28", "os error 27", "os error 122"].iter().any(|c| msg.contains(c)) {
            msg.push_str(
                " (the disk is full or a file-size limit was reached; nothing was written there and an \
                 existing file is unchanged: free space or raise the limit, then rerun)",
            );
        }
        Error::Output { path: path.into(), msg }
    }
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Usage(_) | Error::OutputExists(_) => ExitCode::Usage,
            Error::Input { .. } | Error::Data(_) => ExitCode::BadInput,
            Error::Output { .. } => ExitCode::Output,
            Error::Runtime(_) => ExitCode::Runtime,
            Error::Interrupted => ExitCode::Interrupted,
            Error::Stopped { signal: 1, .. } => ExitCode::HungUp,
            Error::Stopped { signal: 15, .. } => ExitCode::Terminated,
            Error::Stopped { .. } => ExitCode::Interrupted,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
