use std::process::ExitCode;

use clap::Parser;
use hb_collector::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = async {
        let _log =
            hb_runtime::logging::init(&cli.log, "hb-collector").map_err(anyhow::Error::msg)?;
        let config = cli.collector.into_config()?;
        match cli.command {
            Command::Migrate => {
                let n = hb_collector::migrate(&config.database).await?;
                tracing::info!(applied = n, "Migrations done.");
            }
            Command::Run => {
                hb_collector::run(config, hb_runtime::shutdown::on_signal()).await?;
            }
        }
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hb-collector: {e:#}");
            ExitCode::FAILURE
        }
    }
}
