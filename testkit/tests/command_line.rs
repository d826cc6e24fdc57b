//! Every binary explains itself (`--help` names every environment variable) and
//! refuses bad configuration with one line on stderr and a non-zero exit.

use std::process::Command;

use hb_testkit::bin;

fn run(binary: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin(binary))
        .args(args)
        .env_remove("HB_DATABASE_URL")
        .output()
        .expect("run binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_environment_variables() {
    for b in ["hb-agent", "hb-bridge", "hb-collector"] {
        let (code, stdout, _) = run(b, &["--help"]);
        assert_eq!(code, 0, "{b} --help");
        assert!(stdout.contains("[env: HB_LOG="), "{b}: {stdout}");
        assert!(stdout.contains("[env: HB_"), "{b}");
    }
}

#[test]
fn bad_configuration_is_one_line_on_stderr_and_exit_code_one() {
    let cases: [(&str, &[&str], &str); 4] = [
        ("hb-agent", &["--devices", "0"], "--devices"),
        ("hb-agent", &["--mqtt-url", "localhost:1883"], "mqtt://"),
        ("hb-bridge", &["-X", "acks=0"], "acks"),
        (
            "hb-collector",
            &[
                "--database-url",
                "postgres://x",
                "--batch-max-readings",
                "0",
            ],
            "--batch-max-readings",
        ),
    ];
    for (binary, args, needle) in cases {
        let (code, _, stderr) = run(binary, args);
        assert_eq!(code, 1, "{binary} {args:?}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{binary} {args:?} printed:\n{stderr}"
        );
        assert!(stderr.contains(needle), "{binary} {args:?}: {stderr}");
        assert!(stderr.starts_with(&format!("{binary}: ")), "{stderr}");
    }
}
