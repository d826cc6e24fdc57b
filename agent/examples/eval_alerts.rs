//! How good are the alerts? Runs simulated straps (noise, beat artifacts and
//! contact-loss dropouts on, ground truth known) through the alert state machine
//! of `hb-shared`, faster than real time, and prints:
//! - sensitivity for bradycardia/tachycardia episodes of at least 30 s;
//! - onset latency (alert opened − first sample in the condition), median and p95;
//! - false physiological alerts per device-day (matching no injected episode);
//! - signal loss reported as bradycardia;
//! - re-opens: an episode split into more than one alert.
//!
//! `cargo run --release -p hb-agent --example eval_alerts -- --devices 200 --hours 6`

use std::time::Instant;

use clap::Parser;
use hb_agent::simulator::{Episode, EpisodeKind, SimConfig, SimulatedStrap};
use hb_shared::{AlertKind, AlertRules, DeviceAlerts, Observation, TransitionKind};
use rand::{Rng, SeedableRng};

#[derive(Debug, Parser)]
struct Args {
    /// Simulated devices.
    #[arg(long, default_value_t = 200)]
    devices: u64,
    /// Simulated hours per device.
    #[arg(long, default_value_t = 6.0)]
    hours: f64,
    /// Readings per second per device (the simulator's period), as `hb-agent
    /// --rate-hz`.
    #[arg(long, default_value_t = 1.0)]
    rate_hz: f64,
    /// Readings per device; overrides `--hours` (as `hb-agent --count`).
    #[arg(long)]
    readings: Option<u64>,
    /// Writes every live transition as a JSON line (device index, kind,
    /// transition, ordinal, origin seq, seq of the reading that caused it), to
    /// compare with what the collector stored for the same simulated fleet.
    #[arg(long)]
    transitions_out: Option<std::path::PathBuf>,
    /// Anomaly episodes per device and hour (half bradycardia, half tachycardia).
    #[arg(long, default_value_t = 1.0)]
    episodes_per_hour: f64,
    /// How long an episode holds its rate, s (ramps come on top).
    #[arg(long, default_value_t = 60)]
    episode_duration_s: u64,
    /// Contact-loss dropouts per device and hour.
    #[arg(long, default_value_t = 2.0)]
    dropouts_per_hour: f64,
    /// How long a dropout lasts, s.
    #[arg(long, default_value_t = 20)]
    dropout_duration_s: u64,
    /// Random seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Gaussian noise added to every reported BPM (standard deviation), to try the
    /// rules on a noisier strap than the simulator's.
    #[arg(long, default_value_t = 0.0)]
    extra_noise_bpm: f64,
    /// Also print every missed episode and every false alert.
    #[arg(long)]
    verbose: bool,
}

/// A live alert as the state machine reported it.
#[derive(Debug, Clone, Copy)]
struct Alert {
    kind: AlertKind,
    onset_ms: i64,
    opened_ms: i64,
    closed_ms: Option<i64>,
}

impl Alert {
    fn open_at(&self, kind: AlertKind, t: i64) -> bool {
        self.kind == kind && self.opened_ms <= t && self.closed_ms.is_none_or(|c| c >= t)
    }
}

/// Extra simulated time after the window, so that episodes running at its end
/// finish and are reported; only what began inside the window is counted.
const TAIL_S: i64 = 900;

/// An alert matches an injected episode of its kind when the run that opened it
/// began within the episode (5 s of slack for the strap's smoothing).
const SLACK_MS: i64 = 5_000;

fn matches(a: &Alert, e: &Episode) -> bool {
    let kind = match e.kind {
        EpisodeKind::Bradycardia => AlertKind::Bradycardia,
        EpisodeKind::Tachycardia => AlertKind::Tachycardia,
        EpisodeKind::ContactLoss => AlertKind::SignalLoss,
    };
    a.kind == kind && a.onset_ms >= e.start_ms - SLACK_MS && a.onset_ms <= e.end_ms + SLACK_MS
}

fn overlaps(a: &Alert, e: &Episode) -> bool {
    a.onset_ms <= e.end_ms && a.opened_ms >= e.start_ms
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let args = Args::parse();
    let rules = AlertRules::default();
    let period_ms = (1000.0 / args.rate_hz).round().max(1.0) as i64;
    let sim = SimConfig {
        seed: args.seed,
        period_ms: period_ms as u64,
        episodes_per_hour: args.episodes_per_hour,
        episode_duration_s: args.episode_duration_s,
        dropouts_per_hour: args.dropouts_per_hour,
        dropout_duration_s: args.dropout_duration_s,
        thresholds: rules.thresholds,
    };
    let samples = match args.readings {
        Some(n) => n as i64,
        None => (args.hours * 3_600_000.0 / period_ms as f64) as i64,
    };
    let hours = samples as f64 * period_ms as f64 / 3_600_000.0;
    let mut transitions_out = args.transitions_out.as_ref().map(|p| {
        std::io::BufWriter::new(
            std::fs::File::create(p).expect("the transitions file can be created"),
        )
    });
    let window_end = 1_764_000_000_000 + samples * period_ms;
    let t0: i64 = 1_764_000_000_000;
    let started = Instant::now();
    let (mut episodes_30s, mut detected, mut latencies) = (0u64, 0u64, Vec::new());
    let (mut physiological, mut false_alerts, mut signal_as_brady, mut reopens) =
        (0u64, 0u64, 0u64, 0u64);
    let (mut signal_alerts, mut dropouts, mut short_episodes) = (0u64, 0u64, 0u64);
    let mut covered = 0u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed ^ 0x5eed);
    for device in 0..args.devices {
        let mut strap = SimulatedStrap::new(&sim, device);
        let mut machine = DeviceAlerts::default();
        let mut alerts = Vec::new();
        let mut truth = Vec::new();
        // With a fixed count (`--readings`), exactly the readings the agent takes.
        let tail = if args.readings.is_some() {
            0
        } else {
            TAIL_S * 1000 / period_ms
        };
        for i in 0..samples + tail {
            let ts_ms = t0 + i * period_ms;
            let mut m = strap.next_sample(ts_ms);
            if args.extra_noise_bpm > 0.0 && m.bpm > 0 {
                // Box–Muller: one standard normal draw.
                let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                let n = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                m.bpm = (f64::from(m.bpm) + n * args.extra_noise_bpm)
                    .round()
                    .clamp(1.0, 300.0) as u16;
            }
            let o = Observation {
                epoch: 1,
                seq: i as u32,
                ts_ms,
                received_ms: ts_ms,
                bpm: m.bpm,
                status: rules.thresholds.classify(m.bpm, m.contact, &m.rr_1024),
                backfill: false,
            };
            for t in machine.observe(&rules, &o) {
                if let Some(out) = transitions_out.as_mut() {
                    use std::io::Write;
                    let line = serde_json::json!({
                        "device": device,
                        "kind": t.kind.as_str(),
                        "transition": t.transition.as_str(),
                        "ordinal": t.ordinal,
                        "origin_seq": t.origin.seq,
                        "seq": i,
                    });
                    writeln!(out, "{line}").expect("the transitions file can be written");
                }
                match t.transition {
                    TransitionKind::Open => alerts.push(Alert {
                        kind: t.kind,
                        onset_ms: t.origin.ts_ms,
                        opened_ms: t.at_ms,
                        closed_ms: None,
                    }),
                    TransitionKind::Close => {
                        if let Some(a) = alerts
                            .iter_mut()
                            .rev()
                            .find(|a| a.kind == t.kind && a.onset_ms == t.origin.ts_ms)
                        {
                            a.closed_ms = Some(t.at_ms);
                        }
                    }
                    _ => {}
                }
            }
            truth.extend(strap.take_finished_episodes());
        }
        truth.retain(|e| e.start_ms < window_end);
        alerts.retain(|a| a.onset_ms < window_end);
        for e in &truth {
            if e.kind == EpisodeKind::ContactLoss {
                dropouts += 1;
                continue;
            }
            let matching: Vec<&Alert> = alerts.iter().filter(|a| matches(a, e)).collect();
            reopens += matching.len().saturating_sub(1) as u64;
            if e.end_ms - e.start_ms < 30_000 {
                short_episodes += 1;
                continue;
            }
            episodes_30s += 1;
            let kind = if e.kind == EpisodeKind::Bradycardia {
                AlertKind::Bradycardia
            } else {
                AlertKind::Tachycardia
            };
            if let Some(first) = matching.first() {
                detected += 1;
                latencies.push(first.opened_ms - e.start_ms);
            } else if alerts.iter().any(|a| a.open_at(kind, e.start_ms)) {
                // An alert of this kind opened earlier and had not cleared (the
                // rate stayed between the threshold and the clear band).
                covered += 1;
            } else if args.verbose {
                let near: Vec<_> = alerts
                    .iter()
                    .filter(|a| (a.onset_ms - e.start_ms).abs() < 600_000)
                    .map(|a| (a.kind, (a.onset_ms - e.start_ms) / 1000))
                    .collect();
                println!("missed: device {device} {e:?} ({} s); alerts nearby (kind, onset − start s): {near:?}",
                    (e.end_ms - e.start_ms) / 1000);
            }
        }
        for a in &alerts {
            match a.kind {
                AlertKind::Bradycardia | AlertKind::Tachycardia => {
                    physiological += 1;
                    if !truth.iter().any(|e| matches(a, e)) {
                        false_alerts += 1;
                        if args.verbose {
                            let near: Vec<_> = truth
                                .iter()
                                .filter(|e| (a.onset_ms - e.start_ms).abs() < 600_000)
                                .map(|e| {
                                    (
                                        e.kind,
                                        (a.onset_ms - e.start_ms) / 1000,
                                        (e.end_ms - e.start_ms) / 1000,
                                    )
                                })
                                .collect();
                            println!("false: device {device} {a:?}; episodes nearby (kind, onset − start s, length s): {near:?}");
                        }
                        let in_dropout = truth
                            .iter()
                            .any(|e| e.kind == EpisodeKind::ContactLoss && overlaps(a, e));
                        if a.kind == AlertKind::Bradycardia && in_dropout {
                            signal_as_brady += 1;
                        }
                    }
                }
                AlertKind::SignalLoss => signal_alerts += 1,
                AlertKind::DeviceOffline => {}
            }
        }
    }
    latencies.sort_unstable();
    let device_days = args.devices as f64 * hours / 24.0;
    let elapsed = started.elapsed().as_secs_f64();
    println!("Alert evaluation: {} devices × {} h = {:.0} device-hours of simulated time in {elapsed:.1} s ({:.0}× real time)",
        args.devices, hours, args.devices as f64 * hours, args.devices as f64 * hours * 3600.0 / elapsed);
    println!(
        "Rules: onset {} s, clear {} s, bradycardia < {} (clears ≥ {}), tachycardia > {} (clears ≤ {}), gaps over {} s break a run",
        rules.onset_delay_ms / 1000,
        rules.clear_delay_ms / 1000,
        rules.thresholds.bradycardia_below_bpm,
        rules.thresholds.bradycardia_below_bpm + rules.bradycardia_clear_margin_bpm,
        rules.thresholds.tachycardia_above_bpm,
        rules.thresholds.tachycardia_above_bpm - rules.tachycardia_clear_margin_bpm,
        rules.max_gap_ms / 1000
    );
    println!(
        "Simulation: {} episodes/h of {} s, {} dropouts/h of {} s, extra BPM noise σ {}, seed {}",
        args.episodes_per_hour,
        args.episode_duration_s,
        args.dropouts_per_hour,
        args.dropout_duration_s,
        args.extra_noise_bpm,
        args.seed
    );
    println!();
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| sensitivity, episodes ≥ 30 s | {:.2} % ({} of {episodes_30s}: {detected} opened an alert, {covered} began while an earlier alert of the same kind was still open) | ≥ 99 % |",
        100.0 * (detected + covered) as f64 / episodes_30s.max(1) as f64,
        detected + covered
    );
    println!(
        "| onset latency median / p95 | {:.1} / {:.1} s | median ≤ {} s |",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        rules.onset_delay_ms / 1000 + 2
    );
    println!(
        "| false physiological alerts per device-day | {:.3} ({false_alerts} of {physiological} alerts) | ≤ 1 |",
        false_alerts as f64 / device_days
    );
    println!("| signal loss reported as bradycardia | {signal_as_brady} | 0 |");
    println!("| re-opens (an episode split into several alerts) | {reopens} | 0 |");
    println!("| signal-loss alerts (technical) / dropouts | {signal_alerts} / {dropouts} | |");
    println!("| episodes shorter than 30 s (not counted above) | {short_episodes} | |");
}
