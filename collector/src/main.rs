//! `hb-collector`: Kafka to PostgreSQL, alerts and the dashboard.

use std::process::ExitCode;

use clap::Parser;
use hb_collector::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    hb_runtime::program::run("hb-collector", &cli.log, || async move {
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
    })
    .await
}
