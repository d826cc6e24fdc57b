//! SIGINT/SIGTERM → one cancellation token that every loop selects on; a second
//! signal during the graceful drain exits at once.

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// Exit status after a second signal abandons the drain (128 + SIGINT, as a shell
/// reports a process stopped by Ctrl-C).
pub const ABANDONED_EXIT_CODE: i32 = 130;

/// Returns a token that is cancelled when the process receives SIGINT or SIGTERM.
/// A second signal while the process drains exits it at once with
/// [`ABANDONED_EXIT_CODE`]. Must be called inside a Tokio runtime.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut signals = Signals::new();
        cancel_then_wait(&mut signals, &cancel).await;
        tracing::error!(
            exit_code = ABANDONED_EXIT_CODE,
            "Second shutdown signal received; abandoning the drain and exiting now."
        );
        std::process::exit(ABANDONED_EXIT_CODE);
    });
    token
}

/// A source of shutdown signals.
trait Recv {
    /// Resolves at the next signal.
    fn recv(&mut self) -> impl Future<Output = ()> + Send;
}

/// Cancels `token` at the first of `signals`, then returns at the second.
async fn cancel_then_wait(signals: &mut impl Recv, token: &CancellationToken) {
    signals.recv().await;
    tracing::info!("Shutdown signal received.");
    token.cancel();
    signals.recv().await;
}

/// SIGINT and SIGTERM alike.
#[cfg(unix)]
enum Signals {
    Handlers(tokio::signal::unix::Signal, tokio::signal::unix::Signal),
    /// Without signal handlers, Ctrl-C still works through the portable path.
    CtrlC,
}

#[cfg(unix)]
impl Signals {
    fn new() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(int), Ok(term)) => Self::Handlers(int, term),
            _ => Self::CtrlC,
        }
    }
}

#[cfg(unix)]
impl Recv for Signals {
    async fn recv(&mut self) {
        match self {
            Self::Handlers(int, term) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            Self::CtrlC => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> Self {
        Self
    }
}

#[cfg(not(unix))]
impl Recv for Signals {
    async fn recv(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    impl Recv for tokio::sync::mpsc::UnboundedReceiver<()> {
        async fn recv(&mut self) {
            tokio::sync::mpsc::UnboundedReceiver::recv(self).await;
        }
    }

    #[tokio::test]
    async fn the_first_signal_cancels_and_the_second_ends_the_wait() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let token = CancellationToken::new();
        let watching = {
            let token = token.clone();
            tokio::spawn(async move {
                cancel_then_wait(&mut rx, &token).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!token.is_cancelled());
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), token.cancelled())
            .await
            .expect("cancelled at the first signal");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!watching.is_finished(), "still draining after one signal");
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watching)
            .await
            .expect("returns at the second signal")
            .unwrap();
    }
}
