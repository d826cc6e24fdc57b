//! Shared set-up of the agent's integration tests.

use std::path::Path;

use hb_testkit::{Process, Services};

/// Starts `hb-agent` (as built by cargo for these tests) as the fleet user
/// `hb-sim`, its password from the environment as in production, with its state
/// under `state_dir`, `args` after those. These tests are about the agent and the
/// broker alone (no collector confirms storage), so readings leave the spool on
/// the broker's PUBACK.
pub fn start_agent(s: &Services, state_dir: &Path, args: &[&str], work: &Path) -> Process {
    start_agent_limited(s, state_dir, args, work, None)
}

/// Starts `hb-agent` as a device that logs in with a client certificate (given
/// in `args`): no user name and no password, so the broker's
/// `use_identity_as_username` names it. Readings leave the spool on PUBACK.
pub fn start_agent_with_certificate(state_dir: &Path, args: &[&str], work: &Path) -> Process {
    let agent = env!("CARGO_BIN_EXE_hb-agent");
    let mut all: Vec<String> = vec![
        "--confirm".into(),
        "puback".into(),
        "--state-dir".into(),
        state_dir.to_str().expect("UTF-8 path").into(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    Process::start("agent", Path::new(agent), &all, &[], work)
}

/// [`start_agent`] with more environment variables (fault injection).
pub fn start_agent_with_env(
    s: &Services,
    state_dir: &Path,
    args: &[&str],
    work: &Path,
    env: &[(&str, &str)],
) -> Process {
    start_agent_full(s, state_dir, args, work, None, env)
}

/// [`start_agent`], with the open-file limit (soft and hard) lowered to
/// `open_files` by the shell that starts it.
pub fn start_agent_limited(
    s: &Services,
    state_dir: &Path,
    args: &[&str],
    work: &Path,
    open_files: Option<u32>,
) -> Process {
    start_agent_full(s, state_dir, args, work, open_files, &[])
}

fn start_agent_full(
    s: &Services,
    state_dir: &Path,
    args: &[&str],
    work: &Path,
    open_files: Option<u32>,
    env: &[(&str, &str)],
) -> Process {
    let agent = env!("CARGO_BIN_EXE_hb-agent");
    let mut all: Vec<String> = match open_files {
        None => Vec::new(),
        Some(n) => vec![
            "-c".into(),
            format!("ulimit -n {n} && exec \"$0\" \"$@\""),
            agent.into(),
        ],
    };
    all.extend([
        "--confirm".into(),
        "puback".into(),
        "--mqtt-username".into(),
        "hb-sim".into(),
        "--state-dir".into(),
        state_dir.to_str().expect("UTF-8 path").into(),
    ]);
    all.extend(args.iter().map(|a| a.to_string()));
    let program = match open_files {
        None => agent,
        Some(_) => "/bin/sh",
    };
    let mut vars = vec![("HB_MQTT_PASSWORD", s.mqtt_sim_password.as_str())];
    vars.extend_from_slice(env);
    Process::start("agent", Path::new(program), &all, &vars, work)
}
