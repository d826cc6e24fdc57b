//! The classification thresholds and the alert-rule flags, shared by `hb-agent`
//! (its local flags and events lane) and `hb-collector` (the authoritative
//! classification and alerts), so that both read the same rules from the same
//! flags.

use clap::Args;
use hb_shared::{AlertRules, Thresholds};

/// Where bradycardia and tachycardia begin.
#[derive(Debug, Clone, Args)]
pub struct ThresholdArgs {
    /// A heart rate below this is bradycardia.
    #[arg(long, env = "HB_BRADYCARDIA_BELOW_BPM", default_value_t = 50)]
    pub bradycardia_below_bpm: u16,
    /// A heart rate above this is tachycardia.
    #[arg(long, env = "HB_TACHYCARDIA_ABOVE_BPM", default_value_t = 110)]
    pub tachycardia_above_bpm: u16,
}

impl ThresholdArgs {
    /// The thresholds these flags give, or what is wrong with them.
    pub fn thresholds(&self) -> Result<Thresholds, String> {
        if self.bradycardia_below_bpm > self.tachycardia_above_bpm {
            return Err("--bradycardia-below-bpm must not exceed --tachycardia-above-bpm".into());
        }
        Ok(Thresholds {
            bradycardia_below_bpm: self.bradycardia_below_bpm,
            tachycardia_above_bpm: self.tachycardia_above_bpm,
        })
    }
}

/// How alert episodes open and close (see `hb_shared::alert`).
#[derive(Debug, Clone, Args)]
pub struct AlertArgs {
    /// A condition (bradycardia, tachycardia, signal loss) must hold this long, in
    /// device time over readings without gaps, before its alert opens, in seconds.
    #[arg(long, env = "HB_ALERT_ONSET_DELAY_S", default_value_t = 10)]
    pub alert_onset_delay_s: u32,
    /// An alert closes once its value has stayed inside the clear band this long,
    /// in seconds.
    #[arg(long, env = "HB_ALERT_CLEAR_DELAY_S", default_value_t = 30)]
    pub alert_clear_delay_s: u32,
    /// Readings further apart than this (device time) do not hold a condition
    /// across the gap, in seconds.
    #[arg(long, env = "HB_ALERT_MAX_GAP_S", default_value_t = 5)]
    pub alert_max_gap_s: u32,
    /// Bradycardia clears at the threshold plus this many BPM (hysteresis).
    #[arg(long, env = "HB_BRADYCARDIA_CLEAR_MARGIN_BPM", default_value_t = 5)]
    pub bradycardia_clear_margin_bpm: u16,
    /// Tachycardia clears at the threshold minus this many BPM (hysteresis).
    #[arg(long, env = "HB_TACHYCARDIA_CLEAR_MARGIN_BPM", default_value_t = 10)]
    pub tachycardia_clear_margin_bpm: u16,
}

impl AlertArgs {
    /// The rules these flags give with `thresholds`, or what is wrong with them.
    /// `offline_after_ms` belongs to whoever can tell a device is silent.
    pub fn rules(
        &self,
        thresholds: Thresholds,
        offline_after_ms: u32,
    ) -> Result<AlertRules, String> {
        for (flag, s) in [
            ("--alert-onset-delay-s", self.alert_onset_delay_s),
            ("--alert-clear-delay-s", self.alert_clear_delay_s),
        ] {
            if s > 3600 {
                return Err(format!("{flag} must be at most 3600"));
            }
        }
        if self.alert_max_gap_s == 0 || self.alert_max_gap_s > 3600 {
            return Err("--alert-max-gap-s must be between 1 and 3600".into());
        }
        // A clear band that no heart rate can reach would keep alerts open for good.
        if self.tachycardia_clear_margin_bpm >= thresholds.tachycardia_above_bpm {
            return Err(
                "--tachycardia-clear-margin-bpm must be below the tachycardia threshold".into(),
            );
        }
        if u32::from(thresholds.bradycardia_below_bpm)
            + u32::from(self.bradycardia_clear_margin_bpm)
            > 300
        {
            return Err("--bradycardia-clear-margin-bpm puts the clear band above 300 BPM".into());
        }
        Ok(AlertRules {
            thresholds,
            bradycardia_clear_margin_bpm: self.bradycardia_clear_margin_bpm,
            tachycardia_clear_margin_bpm: self.tachycardia_clear_margin_bpm,
            onset_delay_ms: self.alert_onset_delay_s * 1000,
            clear_delay_ms: self.alert_clear_delay_s * 1000,
            max_gap_ms: self.alert_max_gap_s * 1000,
            offline_after_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        thresholds: ThresholdArgs,
        #[command(flatten)]
        alerts: AlertArgs,
    }

    #[test]
    fn the_default_thresholds_are_the_shared_defaults_and_crossed_ones_are_refused() {
        let cli = Cli::parse_from(["t"]);
        assert_eq!(cli.thresholds.thresholds().unwrap(), Thresholds::default());
        let cli = Cli::parse_from(["t", "--bradycardia-below-bpm", "120"]);
        assert!(cli.thresholds.thresholds().is_err());
    }

    #[test]
    fn the_defaults_are_the_shared_defaults() {
        let cli = Cli::parse_from(["t"]);
        let rules = cli.alerts.rules(Thresholds::default(), 30_000).unwrap();
        assert_eq!(rules, AlertRules::default());
    }

    #[test]
    fn delays_out_of_range_are_refused() {
        let cli = Cli::parse_from(["t", "--alert-onset-delay-s", "4000"]);
        assert!(cli.alerts.rules(Thresholds::default(), 30_000).is_err());
        let cli = Cli::parse_from(["t", "--alert-max-gap-s", "0"]);
        assert!(cli.alerts.rules(Thresholds::default(), 30_000).is_err());
        let cli = Cli::parse_from(["t", "--tachycardia-clear-margin-bpm", "110"]);
        assert!(cli.alerts.rules(Thresholds::default(), 30_000).is_err());
    }
}
