use std::process::ExitCode;

use clap::Parser;
use hb_agent::Cli;

#[tokio::main]
async fn main() -> ExitCode {
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
