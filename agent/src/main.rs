//! `hb-agent`: reads, numbers, spools and publishes heart-rate readings (see the crate docs).

use std::process::ExitCode;

use clap::Parser;
use hb_agent::Cli;

fn main() -> ExitCode {
    // Before any thread exists: setting the environment is then race-free.
    for (name, value) in hb_agent::renamed_env(|n| std::env::var_os(n)) {
        std::env::set_var(name, value);
    }
    let cli = Cli::parse();
    // A few blocking threads are plenty for the spool's file work; the default
    // (512) lets a 1000-device start spawn hundreds, each with its own stack and
    // malloc arena, that stay resident long after.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            let e = format!("cannot start the runtime: {e}");
            return hb_runtime::program::exit_code("hb-agent", Err(e));
        }
    };
    runtime.block_on(hb_runtime::program::run(
        "hb-agent",
        &cli.log,
        || async move {
            let config = cli.agent.into_config()?;
            let stats = hb_agent::run(config, hb_runtime::shutdown::on_signal()).await?;
            tracing::info!(
                acked = stats.acked,
                dropped = stats.dropped,
                resent = stats.resent,
                "Agent stopped."
            );
            anyhow::Ok(())
        },
    ))
}
