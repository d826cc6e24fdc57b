//! Shared set-up of the agent's integration tests.

use std::path::Path;

use hb_testkit::{Process, Services};

/// Starts `hb-agent` (as built by cargo for these tests) as the fleet user
/// `hb-sim`, its password from the environment as in production, with its state
/// under `state_dir`, `args` after those. These tests are about the agent and the
/// broker alone (no collector confirms storage), so readings leave the spool on
/// the broker's PUBACK.
pub fn start_agent(s: &Services, state_dir: &Path, args: &[&str], work: &Path) -> Process {
    let mut all: Vec<String> = vec![
        "--confirm".into(),
        "puback".into(),
        "--mqtt-username".into(),
        "hb-sim".into(),
        "--state-dir".into(),
        state_dir.to_str().expect("UTF-8 path").into(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    Process::start(
        "agent",
        Path::new(env!("CARGO_BIN_EXE_hb-agent")),
        &all,
        &[("HB_MQTT_PASSWORD", &s.mqtt_sim_password)],
        work,
    )
}
