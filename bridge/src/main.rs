//! `hb-bridge`: MQTT to Kafka, acknowledging MQTT only after Kafka confirmed.

use std::process::ExitCode;

use clap::Parser;
use hb_bridge::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    hb_runtime::program::run("hb-bridge", &cli.log, || async move {
        let config = cli.bridge.into_config()?;
        hb_bridge::run(config, hb_runtime::shutdown::on_signal()).await?;
        anyhow::Ok(())
    })
    .await
}
