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

/// Every `--flag` and `HB_…` variable of one binary's `--help`.
fn flags_and_variables(help: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("-X, ").or(Some(t)) {
            if let Some(flag) = rest.strip_prefix("--") {
                let name: String = flag
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                if !name.is_empty() && name != "help" && name != "version" {
                    out.push(format!("--{name}"));
                }
            }
        }
        if let Some((_, var)) = t.split_once("[env: ") {
            out.push(var.split(['=', ']']).next().unwrap_or_default().to_owned());
        }
    }
    out
}

#[test]
fn the_readme_documents_every_flag_and_variable() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for b in ["hb-agent", "hb-bridge", "hb-collector"] {
        let (_, help, _) = run(b, &["--help"]);
        let names = flags_and_variables(&help);
        assert!(names.len() > 10, "{b}: parsed {names:?}");
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| !readme.contains(&format!("`{n}`")) && !readme.contains(&format!(", {n}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "{b}: README misses {missing:?} (regenerate with scripts/config-table.py)"
        );
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
