//! The start-up and exit that every binary's `main` shares: logging first, then
//! the program, and any error as one line `program: error: cause: …` and a
//! failure exit code.

use std::error::Error;
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
    E: AsRef<dyn Error + Send + Sync + 'static>,
{
    let result = match logging::init(log, program) {
        Ok(_log) => body().await.map_err(|e| one_line(e.as_ref())),
        Err(e) => Err(e),
    };
    exit_code(program, result)
}

/// Success for `Ok`; for `Err`, the error on one line of stderr after
/// `program: `, and failure.
pub fn exit_code<E: Display>(program: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `error: cause: cause`, leaving out a cause that the
/// message before it already ends with (an error that both shows its source and
/// reports it as its `source()` would otherwise print it twice).
fn one_line(e: &(dyn Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Inner;
    impl Display for Inner {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("address in use")
        }
    }
    impl Error for Inner {}

    /// Shows its source in its message and reports it as `source()` too.
    #[derive(Debug)]
    struct Shows(Inner);
    impl Display for Shows {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot serve HTTP: {}", self.0)
        }
    }
    impl Error for Shows {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    /// Only reports its source.
    #[derive(Debug)]
    struct Hides(Inner);
    impl Display for Hides {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("cannot serve HTTP")
        }
    }
    impl Error for Hides {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn an_error_is_one_line_with_each_cause_once() {
        assert_eq!(one_line(&Shows(Inner)), "cannot serve HTTP: address in use");
        assert_eq!(one_line(&Hides(Inner)), "cannot serve HTTP: address in use");
        let wrapped = anyhow::Error::new(Shows(Inner)).context("starting");
        assert_eq!(
            one_line(AsRef::<dyn Error + Send + Sync>::as_ref(&wrapped)),
            "starting: cannot serve HTTP: address in use"
        );
        assert_eq!(exit_code("hb-x", Err("refused")), ExitCode::FAILURE);
        assert_eq!(exit_code::<&str>("hb-x", Ok(())), ExitCode::SUCCESS);
    }
}
