//! `-X key=value`: raw librdkafka options for the bridge and the collector (SASL,
//! TLS and the like), which may hold passwords.

/// The `-X` flag, flattened into the bridge's and the collector's command lines.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KafkaOptionArgs {
    /// Raw librdkafka client option `key=value` (repeatable), e.g. for SASL/TLS.
    /// From the environment: `;`-separated.
    // Plain strings, parsed in `options`: clap's errors repeat a refused value.
    #[arg(
        short = 'X',
        long = "kafka-option",
        env = "HB_KAFKA_OPTIONS",
        value_delimiter = ';',
        hide_env_values = true
    )]
    pub kafka_options: Vec<String>,
    /// A file of librdkafka options, one `key=value` per line (`#` starts a
    /// comment), added to `-X`: e.g. `sasl.password` from a Docker secret.
    #[arg(long, env = "HB_KAFKA_OPTIONS_FILE")]
    pub kafka_options_file: Option<std::path::PathBuf>,
}

impl KafkaOptionArgs {
    /// The pairs, refusing any of `managed` (options `program` sets itself). An
    /// error names the key at most, never a value.
    pub fn options(
        &self,
        managed: &[&str],
        program: &str,
    ) -> Result<Vec<(String, String)>, String> {
        let mut pairs = parse_key_values(&self.kafka_options)?;
        if let Some(path) = &self.kafka_options_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read --kafka-options-file {}: {e}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                pairs.extend(parse_key_values(&[line.to_owned()]).map_err(|e| {
                    format!(
                        "--kafka-options-file {} line {}: {e}",
                        path.display(),
                        n + 1
                    )
                })?);
            }
        }
        match pairs.iter().find(|(k, _)| managed.contains(&k.as_str())) {
            Some((k, _)) => Err(format!("-X {k} is set by {program} itself")),
            None => Ok(pairs),
        }
    }
}

/// `e` without the option value it may repeat: librdkafka's refusal of a `-X
/// key=value` names the key and the value (and its description may quote the
/// value), which may be a password or a key.
#[cfg(feature = "kafka")]
pub fn without_values(e: rdkafka::error::KafkaError) -> rdkafka::error::KafkaError {
    use rdkafka::error::KafkaError;
    match e {
        KafkaError::ClientConfig(code, description, key, value) => {
            let description = if value.is_empty() {
                description
            } else {
                description.replace(&value, "…")
            };
            KafkaError::ClientConfig(code, description, key, "(value not shown)".into())
        }
        other => other,
    }
}

fn parse_key_values(raw: &[String]) -> Result<Vec<(String, String)>, String> {
    raw.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            Some(_) => Err("-X key=value: a key is empty".to_owned()),
            None => Err(
                "-X takes key=value: an argument has no '=' (not shown: it may be a secret)"
                    .to_owned(),
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(raw: &[&str]) -> KafkaOptionArgs {
        KafkaOptionArgs {
            kafka_options: raw.iter().map(|s| s.to_string()).collect(),
            kafka_options_file: None,
        }
    }

    #[test]
    fn options_from_a_file_are_added_and_a_bad_line_is_named_but_not_shown() {
        let dir = std::env::temp_dir().join(format!("hb-kafka-opts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("options");
        std::fs::write(&file, "# SASL\nsasl.username=hb\n\n  sasl.password=p=w  \n").unwrap();
        let mut a = args(&["security.protocol=SASL_SSL"]);
        a.kafka_options_file = Some(file.clone());
        assert_eq!(
            a.options(&[], "hb-x").unwrap(),
            [
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.username".into(), "hb".into()),
                ("sasl.password".into(), "p=w".into()),
            ]
        );
        std::fs::write(&file, "sasl.username=hb\nSup3rS3cret\n").unwrap();
        let e = a.options(&[], "hb-x").unwrap_err();
        assert!(e.contains("line 2") && !e.contains("Sup3rS3cret"), "{e}");
        std::fs::write(&file, "acks=0\n").unwrap();
        assert!(a.options(&["acks"], "hb-x").is_err());
    }

    #[test]
    fn key_value_pairs_split_at_the_first_equals_sign() {
        assert_eq!(
            args(&["sasl.password=a=b"]).options(&[], "hb-x").unwrap(),
            [("sasl.password".into(), "a=b".into())]
        );
        assert!(args(&["=x"]).options(&[], "hb-x").is_err());
    }

    #[test]
    fn a_malformed_pair_is_refused_without_repeating_it() {
        let e = args(&["ok=1", "Sup3rS3cret"])
            .options(&[], "hb-x")
            .unwrap_err();
        assert!(!e.contains("Sup3rS3cret"), "{e}");
        let e = args(&["=Sup3rS3cret"]).options(&[], "hb-x").unwrap_err();
        assert!(!e.contains("Sup3rS3cret"), "{e}");
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn a_refused_option_is_named_without_its_value() {
        let e = rdkafka::ClientConfig::new()
            .set("security.protocol", "Sup3rS3cret")
            .create::<rdkafka::producer::BaseProducer>()
            .err()
            .expect("an invalid value is refused");
        assert!(
            e.to_string().contains("Sup3rS3cret"),
            "librdkafka repeats it: {e}"
        );
        let e = without_values(e).to_string();
        assert!(
            e.contains("security.protocol") && !e.contains("Sup3rS3cret"),
            "{e}"
        );
    }

    #[test]
    fn options_the_program_sets_itself_are_refused() {
        let e = args(&["acks=0"]).options(&["acks"], "hb-x").unwrap_err();
        assert_eq!(e, "-X acks is set by hb-x itself");
    }
}
