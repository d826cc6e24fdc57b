use std::process::ExitCode;

use clap::Parser;
use hb_bridge::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = async {
        let _log = hb_runtime::logging::init(&cli.log, "hb-bridge").map_err(anyhow::Error::msg)?;
        let config = cli.bridge.into_config()?;
        hb_bridge::run(config, hb_runtime::shutdown::on_signal()).await?;
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hb-bridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}
