//! Tracing set-up: stderr always, a rotating file under `--log-dir` optionally.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

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
    /// Daily log files kept under `--log-dir`, today's included; older ones are
    /// deleted at start and at each rotation, so the logs cannot fill the disk.
    #[arg(long, env = "HB_LOG_MAX_FILES", default_value_t = 7,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub log_max_files: u32,
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
            let appender = file_appender(dir, program, args.log_max_files)?;
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

/// Daily files `{program}.log.{YYYY-MM-DD}` in `dir`, at most `max_files` of them.
fn file_appender(
    dir: &Path,
    program: &str,
    max_files: u32,
) -> Result<tracing_appender::rolling::RollingFileAppender, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create log directory {}: {e}", dir.display()))?;
    tracing_appender::rolling::RollingFileAppender::builder()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix(format!("{program}.log"))
        .max_log_files(max_files as usize)
        .build(dir)
        .map_err(|e| format!("cannot open a log file in {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_log_files_beyond_the_limit_are_deleted_at_start() {
        let dir = std::env::temp_dir().join(format!("hb-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for day in 1..=10 {
            std::fs::write(dir.join(format!("hb-test.log.2026-01-{day:02}")), "old\n").unwrap();
            // The appender orders by creation time; some file systems keep it coarse.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::write(dir.join("other.txt"), "not a log\n").unwrap();
        let _appender = file_appender(&dir, "hb-test", 3).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        std::fs::remove_dir_all(&dir).unwrap();
        // The two newest old files, today's and the unrelated file.
        assert_eq!(left.len(), 4, "{left:?}");
        assert!(
            left.contains(&"hb-test.log.2026-01-10".to_owned()),
            "{left:?}"
        );
        assert!(
            left.contains(&"hb-test.log.2026-01-09".to_owned()),
            "{left:?}"
        );
        assert!(left.contains(&"other.txt".to_owned()), "{left:?}");
    }
}
