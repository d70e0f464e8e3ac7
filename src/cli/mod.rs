//! The command line: flags become validated configuration, commands call the library,
//! errors become documented exit codes. `main` is `parse → run → ExitCode`.
//! Logs and progress go to stderr; stdout carries only the `--json` summary.

mod assign;
mod backend;
pub use backend::AUTO_FILE_ENV;
mod bench;
mod choose_k;
mod events;
mod fit;
mod generate;
mod segments;
mod similarity;
mod update;

use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::{Error, ExitCode, Result};

static QUIET: AtomicBool = AtomicBool::new(false);

/// A line of human-readable progress on stderr (silenced by --quiet), through the
/// same `log` facade the library uses.
pub(crate) fn log(msg: impl AsRef<str>) {
    log::info!("{}", msg.as_ref());
}

/// The one logger: the library's and the CLI's lines on stderr as `microseg: ...`
/// (warnings marked), nothing from other crates (wgpu, naga), nothing under --quiet,
/// debug lines (per iteration) under -v.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level() && m.target().starts_with("microseg")
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let prefix = match r.level() {
                log::Level::Error => "error: ",
                log::Level::Warn => "warning: ",
                _ => "",
            };
            stderr_line(&format!("microseg: {prefix}{}", r.args()));
        }
    }
    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

fn configure_logging(quiet: bool, verbose: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(match (quiet, verbose) {
        (true, _) => log::LevelFilter::Off,
        (false, true) => log::LevelFilter::Debug,
        (false, false) => log::LevelFilter::Info,
    });
}

/// A line on stderr; a closed or broken stderr is ignored (`eprintln!` would panic).
fn stderr_line(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

pub(crate) fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Environment variable that sets the worker thread count (like --threads).
pub const THREADS_ENV: &str = "MICROSEG_THREADS";

#[derive(Debug, Parser)]
#[command(name = "microseg", version, about = "Subscriber tables (Parquet) to micro-segments", long_about = None)]
#[command(after_help = "Exit codes: 0 success, 1 runtime failure, 2 usage error (including an existing \
output without --force), 3 bad input data, 4 output cannot be written; drift: 10 watch, 11 retrain, \
12 too few rows for a verdict; 129/130/143 stopped by SIGHUP/SIGINT/SIGTERM (a fit stops at the end of an iteration; with --checkpoint the same command resumes).")]
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
    /// An event log (sends, opens, clicks, visits, purchases, ...) to one feature row per
    /// subscriber: purchases, engagement, send time, cadence, fatigue, content affinity;
    /// with --predict, churn and lifetime value from BG/NBD and Gamma-Gamma.
    Features(events::FeaturesArgs),
    /// Write a synthetic event log (time order) with planted truth per subscriber.
    #[command(name = "generate-events")]
    GenerateEvents(generate::GenerateEventsArgs),
    /// Write a synthetic subscriber table with ground-truth segments.
    Generate(generate::GenerateArgs),
    /// How many segments? Fit every k of a range on a sample and score each (elbow,
    /// BIC/AIC, silhouette, Calinski–Harabasz, Davies–Bouldin); recommend one.
    #[command(name = "choose-k")]
    ChooseK(choose_k::ChooseKArgs),
    /// Fold new rows into a k-means model without refitting: ids and names kept, the past
    /// decayed (--decay, --half-life-rows, --half-life-days), what moved reported.
    Update(update::UpdateArgs),
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

/// The flags every command that writes outputs shares.
#[derive(Debug, Clone, Args)]
pub(crate) struct WriteArgs {
    /// Replace existing outputs (never an input, a device or a pipe).
    #[arg(long)]
    pub force: bool,
    /// Print a one-line JSON summary on stdout (a failure prints one too, with "status": "error").
    #[arg(long)]
    pub json: bool,
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

impl From<ScaleArg> for crate::features::Scale {
    fn from(a: ScaleArg) -> Self {
        match a {
            ScaleArg::Standard => crate::features::Scale::Standard,
            ScaleArg::None => crate::features::Scale::None,
        }
    }
}

impl From<MissingArg> for crate::features::MissingPolicy {
    fn from(a: MissingArg) -> Self {
        match a {
            MissingArg::Error => crate::features::MissingPolicy::Error,
            MissingArg::Drop => crate::features::MissingPolicy::Drop,
            MissingArg::Mean => crate::features::MissingPolicy::Mean,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
pub(crate) enum MethodArg {
    /// k-means: every row belongs to its nearest centroid.
    Kmeans,
    /// A Gaussian mixture fitted by EM: soft membership, a posterior per row.
    Gmm,
}

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
pub(crate) enum CovarianceArg {
    /// A full covariance matrix per component.
    Full,
    /// A variance per feature per component.
    Diag,
    /// One variance per component.
    Spherical,
    /// One full covariance matrix shared by all components.
    Tied,
}

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
pub(crate) enum AlgorithmArg {
    /// Hamerly below k = 128, pruned from 128 on.
    Auto,
    Lloyd,
    Hamerly,
    Pruned,
    /// Mini-batch k-means (approximate; scikit-learn's MiniBatchKMeans): --batch-size rows per step.
    Minibatch,
}

/// Provenance written into every Parquet output's key-value metadata: the engine, the
/// command, the model it came from, and whether the ids are pseudonyms.
pub(crate) fn provenance(
    command: &str,
    model: Option<&crate::model::Model>,
    pseudonymized: bool,
) -> crate::io::output::Provenance {
    let mut v = vec![
        ("microseg.engine".to_string(), "microseg".to_string()),
        ("microseg.engine_version".to_string(), crate::ENGINE_VERSION.to_string()),
        ("microseg.command".to_string(), command.to_string()),
        ("microseg.ids_pseudonymized".to_string(), pseudonymized.to_string()),
    ];
    if let Some(m) = model {
        v.push(("microseg.model_fingerprint".to_string(), m.fingerprint()));
    }
    v
}

/// Whether the command asked for a `--json` summary: then a failure is one JSON line too.
static JSON_MODE: AtomicBool = AtomicBool::new(false);

/// Print the one-line JSON summary on stdout, with the engine version and `status: ok`;
/// a closed pipe ends the command quietly.
pub(crate) fn print_json(v: &serde_json::Value) -> Result<()> {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.insert("status".into(), "ok".into());
        o.insert("version".into(), crate::ENGINE_VERSION.into());
    }
    crate::io::output::print_stdout(&format!("{v}\n"))
}

/// Thread counts above this multiple of the cores only cost (each thread a stack, and
/// rayon's work splitting falls apart); larger requests are capped with a notice.
const MAX_THREADS_PER_CORE: usize = 4;

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
    if let Some(mut t) = threads {
        if t == 0 {
            return Err(Error::Usage("--threads must be at least 1".into()));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cap = MAX_THREADS_PER_CORE * cores;
        if t > cap {
            log(format!("--threads {t} is more than {MAX_THREADS_PER_CORE}× the {cores} cores; using {cap}"));
            t = cap;
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .map_err(|e| Error::Runtime(format!("cannot start {t} threads: {e}")))?;
    }
    Ok(())
}

impl Command {
    fn json(&self) -> bool {
        match self {
            Command::Fit(a) => a.write.json,
            Command::Assign(a) => a.write.json,
            Command::Segment(a) => a.write.json,
            Command::Generate(a) => a.write.json,
            Command::Features(a) => a.write.json,
            Command::GenerateEvents(a) => a.write.json,
            Command::Profile(a) => a.write.json,
            Command::Drift(a) => a.write.json,
            Command::Report(_) => false,
            Command::Audit(a) => a.write.json,
            Command::Neighbors(a) => a.write.json,
            Command::Similar(a) => a.write.json,
            Command::Info(a) => a.json,
            Command::Bench(a) => a.json,
            Command::ChooseK(a) => a.write.json,
            Command::Update(a) => a.write.json,
        }
    }
}

/// Run a parsed command line; returns the process exit code on success (0, or drift's
/// verdict).
pub fn run(cli: Cli) -> Result<u8> {
    configure_logging(cli.quiet, cli.verbose);
    JSON_MODE.store(cli.command.json(), Ordering::Relaxed);
    configure_threads(cli.threads)?;
    match cli.command {
        Command::Fit(a) => fit::run_fit(a),
        Command::ChooseK(a) => choose_k::run_choose_k(a),
        Command::Assign(a) => assign::run_assign(a),
        Command::Segment(a) => fit::run_segment(a),
        Command::Generate(a) => generate::run_generate(a),
        Command::Features(a) => events::run_features(a),
        Command::GenerateEvents(a) => generate::run_generate_events(a),
        Command::Info(a) => backend::run_info(a),
        Command::Profile(a) => segments::run_profile(a),
        Command::Audit(a) => segments::run_audit(a),
        Command::Report(a) => segments::run_report(a),
        Command::Neighbors(a) => similarity::run_neighbors(a),
        Command::Similar(a) => similarity::run_similar(a),
        Command::Drift(a) => return segments::run_drift(a),
        Command::Bench(a) => bench::run_bench(a),
        Command::Update(a) => update::run_update(a),
    }
    .map(|_| 0)
}

/// Looking for GPU adapters loads Vulkan drivers whose window-system code (Wayland)
/// prints "XDG_RUNTIME_DIR is invalid or not set" on stderr when the variable is unset,
/// as in containers and batch jobs. microseg draws no windows: point it at the
/// temporary directory (before any thread starts) so nothing is printed.
fn quiet_display_probe() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
        // SAFETY: called first thing in main, before this process starts any thread.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
}

/// What the signal thread and a running fit share: whether a fit is iterating (it then
/// stops itself at the end of the iteration) and the signal that asked it to.
struct StopState {
    iterating: bool,
    signal: i32,
}

static STOP: std::sync::Mutex<StopState> = std::sync::Mutex::new(StopState { iterating: false, signal: 0 });

fn stop_state() -> std::sync::MutexGuard<'static, StopState> {
    STOP.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

/// SIGINT, SIGTERM and SIGHUP exit 128 + the signal (130, 143, 129), as shells report a
/// killed command. While a fit iterates, the first one stops it at the end of the
/// iteration (its checkpoint saved, see [`Iterating`]); otherwise, or at a second
/// signal, the run ends at once, its temporary files removed.
fn handle_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGXFSZ};
    // A file-size limit (ulimit -f) would otherwise kill the process mid-write, leaving
    // its temporary file: with a handler the write fails (EFBIG), the output is
    // abandoned cleanly and the run exits 4.
    let _ = signal_hook::flag::register(SIGXFSZ, std::sync::Arc::new(AtomicBool::new(false)));
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let mut st = stop_state();
            if st.iterating && st.signal == 0 {
                st.signal = sig;
                drop(st);
                log::info!(
                    "{}: stopping at the end of this iteration or output batch (send it again to stop now)",
                    signal_name(sig)
                );
                continue;
            }
            crate::io::output::cleanup_on_signal();
            stderr_line(&format!(
                "microseg: stopped by {} (exit {}); nothing was committed, temporary files removed",
                signal_name(sig),
                128 + sig
            ));
            std::process::exit(128 + sig);
        }
    });
}

/// Held while a fit iterates: a signal then asks it to stop at the end of the
/// iteration (through [`Iterating::stop_requested`]) instead of ending the process.
pub(crate) struct Iterating(());

impl Iterating {
    pub(crate) fn enter() -> Self {
        stop_state().iterating = true;
        Iterating(())
    }

    /// The signal received since [`Iterating::enter`], if any.
    pub(crate) fn stop_requested(&self) -> Option<i32> {
        Some(stop_state().signal).filter(|s| *s != 0)
    }

    /// Leave the iterations: the signal received meanwhile, if any (the caller then
    /// stops; a signal from now on ends the process at once).
    pub(crate) fn leave(self) -> Option<i32> {
        let mut st = stop_state();
        st.iterating = false;
        Some(st.signal).filter(|s| *s != 0)
    }
}

impl Drop for Iterating {
    fn drop(&mut self) {
        stop_state().iterating = false;
    }
}

/// A panic is a bug, but it still ends with a message and the runtime exit code (1),
/// never Rust's 101 and a backtrace hint; temporary files are removed.
fn handle_panics() {
    std::panic::set_hook(Box::new(|info| {
        crate::io::output::cleanup_on_signal();
        let msg = crate::io::panic_message(info.payload());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        report_error(
            ExitCode::Runtime as u8,
            &format!("internal error: {msg}{at} (a bug in microseg; please report it with the command line)"),
            &[],
        );
        std::process::exit(ExitCode::Runtime as i32);
    }));
    crate::io::filter_contained_panics();
}

/// The error on stderr (with its causes), and with `--json` one JSON line on stdout.
fn report_error(code: u8, msg: &str, causes: &[String]) {
    stderr_line(&format!("microseg: error: {msg}"));
    for c in causes {
        stderr_line(&format!("  caused by: {c}"));
    }
    if JSON_MODE.load(Ordering::Relaxed) {
        report_json(code, msg, causes);
    }
}

/// The one JSON line of a failed `--json` run.
fn report_json(code: u8, msg: &str, causes: &[String]) {
    let line = serde_json::json!({
        "status": "error", "exit_code": code, "message": msg, "causes": causes, "version": crate::ENGINE_VERSION,
    });
    let _ = crate::io::output::print_stdout(&format!("{line}\n"));
}

/// The whole program: parse, run, map the outcome to an exit code.
pub fn main() -> std::process::ExitCode {
    quiet_display_probe();
    handle_panics();
    handle_signals();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            let code = if e.use_stderr() { ExitCode::Usage } else { ExitCode::Success };
            if e.use_stderr() && std::env::args_os().any(|a| a == "--json") {
                JSON_MODE.store(true, Ordering::Relaxed);
                let msg = e.kind().to_string();
                report_json(code as u8, &msg, &[]);
            }
            return std::process::ExitCode::from(code as u8);
        }
    };
    match run(cli) {
        Ok(code) => std::process::ExitCode::from(code),
        // Standard output was closed by its reader (`| head`): nothing is wrong.
        Err(_) if crate::io::output::stdout_closed() => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let mut causes = Vec::new();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                causes.push(s.to_string());
                src = s.source();
            }
            if let Error::Stopped { message, .. } = &e {
                // Not a failure: one line saying where the work stopped.
                stderr_line(&format!("microseg: {message}"));
                if JSON_MODE.load(Ordering::Relaxed) {
                    report_json(e.exit_code() as u8, message, &[]);
                }
                return std::process::ExitCode::from(e.exit_code() as u8);
            }
            report_error(e.exit_code() as u8, &e.to_string(), &causes);
            std::process::ExitCode::from(e.exit_code() as u8)
        }
    }
}
