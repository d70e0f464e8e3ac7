//! The command line: flags become validated configuration, commands call the library,
//! errors become documented exit codes. `main` is `parse → run → ExitCode`.
//! Logs and progress go to stderr; stdout carries only the `--json` summary.

mod assign;
mod backend;
mod bench;
mod fit;
mod generate;
mod segments;
mod similarity;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::{Error, ExitCode, Result};

static QUIET: AtomicBool = AtomicBool::new(false);
static VERBOSE: AtomicBool = AtomicBool::new(false);

pub(crate) fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed) && !quiet()
}

/// A line of human-readable progress on stderr (silenced by --quiet).
pub(crate) fn log(msg: impl AsRef<str>) {
    if !QUIET.load(Ordering::Relaxed) {
        eprintln!("microseg: {}", msg.as_ref());
    }
}

pub(crate) fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Environment variable that sets the worker thread count (like --threads).
pub const THREADS_ENV: &str = "MICROSEG_THREADS";

#[derive(Debug, Parser)]
#[command(name = "microseg", version, about = "Subscriber tables (Parquet) to micro-segments", long_about = None)]
#[command(after_help = "Exit codes: 0 success, 1 runtime failure, 2 usage error (including an existing \
output without --force), 3 bad input data, 4 output cannot be written; drift: 10 watch, 11 retrain.")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// No progress or log lines on stderr (errors are still printed).
    #[arg(long, global = true)]
    quiet: bool,
    /// A log line per iteration (labels changed, points searched, centroid shift).
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Worker threads (default: all cores; also MICROSEG_THREADS).
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fit k-means segments on Parquet input and write the model (JSON).
    Fit(fit::FitArgs),
    /// Assign every row of Parquet input to a model's segments (streams, bounded memory).
    Assign(assign::AssignArgs),
    /// The main job: fit, assign every row and summarise the segments into a directory.
    Segment(fit::SegmentArgs),
    /// Write a synthetic subscriber table with ground-truth segments.
    Generate(generate::GenerateArgs),
    /// Per-segment profiles (means, quantiles, distinctions, names, outcomes) as JSON.
    Profile(segments::ProfileArgs),
    /// Drift of new data against the model: PSI, distances, a verdict and exit code.
    Drift(segments::DriftArgs),
    /// One self-contained HTML report of a model and its profile (and drift, audit).
    Report(segments::ReportArgs),
    /// Fairness audit of assignments over protected columns (four-fifths rule).
    Audit(segments::AuditArgs),
    /// Exact top-k neighbours of query rows among base rows (embedding column).
    Neighbors(similarity::NeighborsArgs),
    /// Look-alike audience: the input rows most similar to a seed set.
    Similar(similarity::SimilarArgs),
    /// The compute adapters found, their limits, and which one a job would use.
    Info(backend::InfoArgs),
    /// Time the assign and reduce passes on each backend and check they agree.
    Bench(bench::BenchArgs),
}

/// Options of the input table shared by fit, segment and assign.
#[derive(Debug, Clone, Args)]
pub(crate) struct TableArgs {
    /// Column carried into the outputs unchanged (default: subscriber_id when present).
    #[arg(long)]
    pub id_col: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ScaleArg {
    Standard,
    None,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum MetricArg {
    Euclidean,
    Cosine,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum MissingArg {
    Error,
    Drop,
    Mean,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum AlgorithmArg {
    /// Hamerly below k = 128, pruned from 128 on.
    Auto,
    Lloyd,
    Hamerly,
    Pruned,
}

/// Resolve the id column: the one named (must exist), else `fallbacks` in order when present.
pub(crate) fn resolve_id(ds: &crate::io::Dataset, named: Option<&str>, fallbacks: &[&str]) -> Result<Option<String>> {
    if let Some(n) = named {
        ds.column_type(n)?;
        return Ok(Some(n.to_string()));
    }
    Ok(fallbacks.iter().find(|c| ds.has_column(c)).map(|c| c.to_string()))
}

/// Print the one-line JSON summary on stdout; a closed pipe is not an error.
pub(crate) fn print_json(v: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{v}").and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Error::Runtime(format!("cannot write to stdout: {e}"))),
    }
}

fn configure_threads(threads: Option<usize>) -> Result<()> {
    let threads = match threads {
        Some(t) => Some(t),
        None => match std::env::var(THREADS_ENV) {
            Ok(v) => Some(
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| Error::Usage(format!("{THREADS_ENV}={v} is not a thread count")))?,
            ),
            Err(_) => None,
        },
    };
    if let Some(t) = threads {
        if t == 0 {
            return Err(Error::Usage("--threads must be at least 1".into()));
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .map_err(|e| Error::Runtime(format!("cannot start {t} threads: {e}")))?;
    }
    Ok(())
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    QUIET.store(cli.quiet, Ordering::Relaxed);
    VERBOSE.store(cli.verbose, Ordering::Relaxed);
    configure_threads(cli.threads)?;
    match cli.command {
        Command::Fit(a) => fit::run_fit(a),
        Command::Assign(a) => assign::run_assign(a),
        Command::Segment(a) => fit::run_segment(a),
        Command::Generate(a) => generate::run_generate(a),
        Command::Info(a) => backend::run_info(a),
        Command::Profile(a) => segments::run_profile(a),
        Command::Audit(a) => segments::run_audit(a),
        Command::Report(a) => segments::run_report(a),
        Command::Neighbors(a) => similarity::run_neighbors(a),
        Command::Similar(a) => similarity::run_similar(a),
        Command::Drift(_) => unreachable!("drift returns its verdict through main"),
        Command::Bench(a) => bench::run_bench(a),
    }
}

/// The whole program: parse, run, map the outcome to an exit code.
pub fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            let code = if e.use_stderr() { ExitCode::Usage } else { ExitCode::Success };
            return std::process::ExitCode::from(code as u8);
        }
    };
    let result = match cli.command {
        Command::Drift(a) => {
            QUIET.store(cli.quiet, Ordering::Relaxed);
            configure_threads(cli.threads).and_then(|_| segments::run_drift(a))
        }
        command => run(Cli { command, ..cli }).map(|_| 0),
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("microseg: error: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                eprintln!("  caused by: {s}");
                src = s.source();
            }
            std::process::ExitCode::from(e.exit_code() as u8)
        }
    }
}
