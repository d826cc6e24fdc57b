use std::process::ExitCode;

use clap::Parser;
use hb_agent::Cli;

fn main() -> ExitCode {
    // A few blocking threads are plenty for the spool's file work; the default
    // (512) lets a 1000-device start spawn hundreds, each with its own stack and
    // malloc arena, that stay resident long after.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build();
    match runtime {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            eprintln!("hb-agent: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = async {
        let _log = hb_runtime::logging::init(&cli.log, "hb-agent").map_err(anyhow::Error::msg)?;
        let config = cli.agent.into_config()?;
        let stats = hb_agent::run(config, hb_runtime::shutdown::on_signal()).await?;
        tracing::info!(
            acked = stats.acked,
            dropped = stats.dropped,
            resent = stats.resent,
            "Agent stopped."
        );
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hb-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
