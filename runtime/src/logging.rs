//! Tracing set-up: stderr always, a rotating file under `--log-dir` optionally.

use std::io::IsTerminal;
use std::path::PathBuf;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging flags, flattened into each binary's command line.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log filter in `RUST_LOG` syntax, e.g. `info` or `hb_bridge=debug,info`.
    #[arg(long = "log", env = "HB_LOG", default_value = "info")]
    pub filter: String,
    /// Format of log lines on stderr and in files.
    #[arg(long, env = "HB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Also write logs to daily-rotated files in this directory (e.g. `logs/`).
    #[arg(long, env = "HB_LOG_DIR")]
    pub log_dir: Option<PathBuf>,
}

/// Keeps the file writer flushing; drop it last, at the very end of `main`.
pub struct LogGuard {
    _guard: Option<WorkerGuard>,
}

/// Installs the global subscriber. `program` names the log files.
pub fn init(args: &LogArgs, program: &str) -> Result<LogGuard, String> {
    let filter = |s: &str| EnvFilter::try_new(s).map_err(|e| format!("invalid --log filter: {e}"));
    let json = args.log_format == LogFormat::Json;
    // Colours only for a person at a terminal, never in files or captured output.
    let stderr = fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let stderr = if json {
        stderr.json().with_filter(filter(&args.filter)?).boxed()
    } else {
        stderr.with_filter(filter(&args.filter)?).boxed()
    };
    let (file, guard) = match &args.log_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create log directory {}: {e}", dir.display()))?;
            let appender = tracing_appender::rolling::daily(dir, format!("{program}.log"));
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let layer = fmt::layer().with_ansi(false).with_writer(writer);
            let layer = if json {
                layer.json().with_filter(filter(&args.filter)?).boxed()
            } else {
                layer.with_filter(filter(&args.filter)?).boxed()
            };
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(LogGuard { _guard: guard })
}
