//! The start-up and exit that every binary's `main` shares: logging first, then
//! the program, and any error as one line `program: error` and a failure exit code.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use crate::logging::{self, LogArgs};

/// Installs logging from `log` (the files named after `program`), runs `body`
/// and turns its result into the process's exit code (see [`exit_code`]). The
/// log writer is flushed before the error is printed.
pub async fn run<F, E>(program: &str, log: &LogArgs, body: impl FnOnce() -> F) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: Display,
{
    let result = match logging::init(log, program) {
        Ok(_log) => body().await.map_err(|e| format!("{e:#}")),
        Err(e) => Err(e),
    };
    exit_code(program, result)
}

/// Success for `Ok`; for `Err`, the error (with its causes, `{e:#}`) on one line
/// of stderr after `program: `, and failure.
pub fn exit_code<E: Display>(program: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", error_line(program, &e));
            ExitCode::FAILURE
        }
    }
}

fn error_line(program: &str, e: &impl Display) -> String {
    format!("{program}: {e:#}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{:#}` is passed on: anyhow shows the causes with it, as `outer: inner`.
    struct Chain;
    impl Display for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            if f.alternate() {
                f.write_str("outer: inner")
            } else {
                f.write_str("outer")
            }
        }
    }

    #[test]
    fn an_error_is_one_line_with_its_causes() {
        assert_eq!(error_line("hb-x", &Chain), "hb-x: outer: inner");
        assert_eq!(exit_code("hb-x", Err(Chain)), ExitCode::FAILURE);
        assert_eq!(exit_code::<Chain>("hb-x", Ok(())), ExitCode::SUCCESS);
    }
}
