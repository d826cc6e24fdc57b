//! The injected anomaly episodes and contact-loss dropouts: when they start (one
//! at a time, a quiet minute apart), and the ground truth read off the samples
//! they produced.

use hb_shared::{Contact, HeartRateMeasurement, Status, Thresholds};
use serde::Serialize;

use super::arrivals::Arrivals;
use super::injection::Injection;
use super::noise::Noise;
use super::SimConfig;

const BRADYCARDIA_BPM: (f64, f64) = (38.0, 46.0);
const TACHYCARDIA_BPM: (f64, f64) = (115.0, 160.0);
const RAMP_S: (f64, f64) = (20.0, 60.0);
/// Quiet time after one episode before the next may start.
const EPISODE_GAP_MS: f64 = 60_000.0;

/// What was injected during a ground-truth [`Episode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EpisodeKind {
    /// The heart rate was held below the bradycardia threshold.
    Bradycardia,
    /// The heart rate was held above the tachycardia threshold.
    Tachycardia,
    /// The strap lost skin contact.
    ContactLoss,
}

/// One injected episode as the samples showed it: the timestamps of its first and
/// last affected sample (both inclusive), Unix ms, as passed to
/// [`SimulatedStrap::next_sample`](super::SimulatedStrap::next_sample).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Episode {
    /// What was injected.
    pub kind: EpisodeKind,
    /// Timestamp of the first sample showing the condition.
    pub start_ms: i64,
    /// Timestamp of the last sample showing the condition.
    pub end_ms: i64,
}

/// The episodes and dropouts of one strap: their arrivals, the one running, and
/// the ground truth of those that finished.
pub(super) struct Injections {
    /// What the ground truth calls bradycardia and tachycardia.
    thresholds: Thresholds,
    episodes: Arrivals,
    dropouts: Arrivals,
    /// How long an episode holds its level, ms.
    episode_ms: f64,
    /// How long a dropout lasts, ms.
    dropout_ms: f64,
    active: Option<Active>,
    /// Simulated time from which the next injection may start.
    idle_from_ms: f64,
    finished: Vec<Episode>,
}

/// An injection in progress and the samples that showed it so far.
struct Active {
    injection: Injection,
    first_ts: Option<i64>,
    last_ts: i64,
}

impl Injections {
    /// Episodes arriving on `episodes`, dropouts on `dropouts`, at the rates and
    /// of the lengths of `config`.
    pub(super) fn new(config: &SimConfig, episodes: Noise, dropouts: Noise) -> Self {
        Self {
            thresholds: config.thresholds,
            episodes: Arrivals::new(episodes, config.episodes_per_hour),
            dropouts: Arrivals::new(dropouts, config.dropouts_per_hour),
            episode_ms: config.episode_duration_s as f64 * 1000.0,
            dropout_ms: config.dropout_duration_s as f64 * 1000.0,
            active: None,
            idle_from_ms: 0.0,
            finished: Vec::new(),
        }
    }

    /// Counts arrivals up to `now` and starts an episode or a dropout when one is
    /// due and nothing stands in its way (episodes first).
    pub(super) fn schedule(&mut self, now: f64) {
        self.episodes.poll(now);
        self.dropouts.poll(now);
        if self.active.is_some() || now < self.idle_from_ms {
            return;
        }
        let injection = if self.episodes.take() {
            Some(self.draw_anomaly(now))
        } else if self.dropouts.take() {
            let hold_last_bpm = self.dropouts.noise.chance(0.5);
            Some(Injection::Dropout {
                start_ms: now,
                end_ms: now + self.dropout_ms,
                hold_last_bpm,
            })
        } else {
            None
        };
        self.active = injection.map(|injection| Active {
            injection,
            first_ts: None,
            last_ts: 0,
        });
    }

    fn draw_anomaly(&mut self, now: f64) -> Injection {
        let n = &mut self.episodes.noise;
        let (kind, range) = if n.chance(0.5) {
            (EpisodeKind::Bradycardia, BRADYCARDIA_BPM)
        } else {
            (EpisodeKind::Tachycardia, TACHYCARDIA_BPM)
        };
        Injection::Anomaly {
            kind,
            level_bpm: n.uniform(range),
            start_ms: now,
            ramp_in_ms: n.uniform(RAMP_S) * 1000.0,
            hold_ms: self.episode_ms,
            ramp_out_ms: n.uniform(RAMP_S) * 1000.0,
        }
    }

    /// Whether an anomaly episode (not a dropout) is running.
    pub(super) fn anomaly_running(&self) -> bool {
        matches!(
            self.active,
            Some(Active {
                injection: Injection::Anomaly { .. },
                ..
            })
        )
    }

    /// The heart rate at `t` of a heart that would beat at `normal_bpm`, with
    /// the running injection applied.
    pub(super) fn heart_rate_at(&self, normal_bpm: f64, t: f64) -> f64 {
        match &self.active {
            Some(a) => a.injection.heart_rate_at(normal_bpm, t),
            None => normal_bpm,
        }
    }

    /// `Some(hold_last_bpm)` while a dropout covers `now`.
    pub(super) fn drops_contact_at(&self, now: f64) -> Option<bool> {
        self.active
            .as_ref()
            .and_then(|a| a.injection.drops_contact_at(now))
    }

    /// Notes whether the sample `m` taken at `ts_ms` (simulated time `now`)
    /// showed the running injection, and finishes the injection once no further
    /// sample, `period_ms` apart, falls inside it.
    pub(super) fn record(
        &mut self,
        ts_ms: i64,
        m: &HeartRateMeasurement,
        now: f64,
        period_ms: f64,
    ) {
        let Some(active) = &mut self.active else {
            return;
        };
        let status = self.thresholds.classify(m.bpm, m.contact, &m.rr_1024);
        let shows = match active.injection.kind() {
            EpisodeKind::Bradycardia => status == Status::Bradycardia,
            EpisodeKind::Tachycardia => status == Status::Tachycardia,
            EpisodeKind::ContactLoss => m.contact == Contact::NotDetected,
        };
        if shows {
            active.first_ts.get_or_insert(ts_ms);
            active.last_ts = ts_ms;
        }
        let end_ms = active.injection.end_ms();
        if now + period_ms >= end_ms {
            if let Some(start_ms) = active.first_ts {
                self.finished.push(Episode {
                    kind: active.injection.kind(),
                    start_ms,
                    end_ms: active.last_ts,
                });
            }
            self.active = None;
            self.idle_from_ms = end_ms + EPISODE_GAP_MS;
        }
    }

    /// Episodes that ended since the last call, in order.
    pub(super) fn take_finished(&mut self) -> Vec<Episode> {
        std::mem::take(&mut self.finished)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{in_episode, quiet, run, T0};
    use super::*;

    #[test]
    fn during_an_episode_the_bpm_is_beyond_its_threshold_and_rarely_outside() {
        let c = SimConfig {
            episodes_per_hour: 8.0,
            dropouts_per_hour: 2.0,
            ..SimConfig::default()
        };
        let r = run(&c, 21, 10.0);
        let last_end = r.episodes.last().map_or(T0, |e| e.end_ms);
        for kind in [EpisodeKind::Bradycardia, EpisodeKind::Tachycardia] {
            assert!(
                r.episodes.iter().filter(|e| e.kind == kind).count() >= 10,
                "{kind:?}"
            );
        }
        let (mut outside, mut outside_beyond) = (0, 0);
        for e in &r.episodes {
            let during: Vec<&HeartRateMeasurement> = r
                .samples
                .iter()
                .filter(|(ts, _)| (e.start_ms..=e.end_ms).contains(ts))
                .map(|(_, m)| m)
                .collect();
            let beyond = during
                .iter()
                .filter(|m| match e.kind {
                    EpisodeKind::Bradycardia => m.bpm < 50,
                    EpisodeKind::Tachycardia => m.bpm > 110,
                    EpisodeKind::ContactLoss => m.contact == Contact::NotDetected,
                })
                .count();
            let share = beyond as f64 / during.len() as f64;
            assert!(share >= 0.8, "{e:?}: {share}");
            let shallow = match e.kind {
                EpisodeKind::Bradycardia => during.iter().all(|m| m.bpm > 47),
                EpisodeKind::Tachycardia => during.iter().all(|m| m.bpm < 114),
                EpisodeKind::ContactLoss => false,
            };
            assert!(!shallow, "{e:?} never reached its level");
            if e.kind != EpisodeKind::ContactLoss {
                assert!(during.len() as u64 >= c.episode_duration_s, "{e:?}");
            }
        }
        for (ts, m) in r.samples.iter().filter(|(ts, _)| *ts <= last_end) {
            if in_episode(&r.episodes, *ts).is_none() {
                outside += 1;
                if m.bpm < 50 || m.bpm > 110 {
                    outside_beyond += 1;
                }
            }
        }
        assert!(outside > 10_000);
        assert!(
            outside_beyond * 100 < outside,
            "{outside_beyond} of {outside}"
        );
    }

    #[test]
    fn dropouts_report_no_contact_and_no_rr_for_their_duration() {
        let c = SimConfig {
            episodes_per_hour: 2.0,
            dropouts_per_hour: 6.0,
            dropout_duration_s: 15,
            ..SimConfig::default()
        };
        let r = run(&c, 4, 5.0);
        let dropouts: Vec<&Episode> = r
            .episodes
            .iter()
            .filter(|e| e.kind == EpisodeKind::ContactLoss)
            .collect();
        assert!(dropouts.len() >= 15, "{} dropouts", dropouts.len());
        for e in &dropouts {
            assert_eq!(e.end_ms - e.start_ms, 14_000, "{e:?}");
        }
        let last_end = r.episodes.last().map_or(T0, |e| e.end_ms);
        for (ts, m) in r.samples.iter().filter(|(ts, _)| *ts <= last_end) {
            let dropped =
                in_episode(&r.episodes, *ts).is_some_and(|e| e.kind == EpisodeKind::ContactLoss);
            assert_eq!(m.contact == Contact::NotDetected, dropped, "at {ts}");
            if dropped {
                assert!(m.rr_1024.is_empty());
            }
        }
    }

    #[test]
    fn episode_counts_over_200_hours_match_the_configured_rates() {
        let c = SimConfig {
            period_ms: 10_000,
            episodes_per_hour: 2.0,
            episode_duration_s: 120,
            dropouts_per_hour: 1.0,
            dropout_duration_s: 30,
            ..SimConfig::default()
        };
        let r = run(&c, 8, 200.0);
        let count = |k| r.episodes.iter().filter(|e| e.kind == k).count() as f64;
        let anomalies = count(EpisodeKind::Bradycardia) + count(EpisodeKind::Tachycardia);
        assert!(
            (340.0..=460.0).contains(&anomalies),
            "{anomalies} anomalies, 400 expected"
        );
        let brady_share = count(EpisodeKind::Bradycardia) / anomalies;
        assert!(
            (0.4..=0.6).contains(&brady_share),
            "bradycardia share {brady_share}"
        );
        let dropouts = count(EpisodeKind::ContactLoss);
        assert!(
            (160.0..=240.0).contains(&dropouts),
            "{dropouts} dropouts, 200 expected"
        );
    }

    #[test]
    fn ground_truth_episodes_are_ordered_and_do_not_overlap() {
        let c = SimConfig {
            episodes_per_hour: 30.0,
            episode_duration_s: 60,
            dropouts_per_hour: 30.0,
            ..SimConfig::default()
        };
        let r = run(&c, 1, 5.0);
        assert!(r.episodes.len() > 50, "{}", r.episodes.len());
        for e in &r.episodes {
            assert!(e.start_ms <= e.end_ms, "{e:?}");
        }
        for w in r.episodes.windows(2) {
            assert!(w[0].end_ms < w[1].start_ms, "{:?} then {:?}", w[0], w[1]);
        }
    }

    #[test]
    fn the_ground_truth_follows_the_configured_thresholds() {
        let thresholds = Thresholds {
            bradycardia_below_bpm: 44,
            tachycardia_above_bpm: 125,
        };
        let c = SimConfig {
            episodes_per_hour: 8.0,
            dropouts_per_hour: 0.0,
            thresholds,
            ..SimConfig::default()
        };
        let r = run(&c, 21, 10.0);
        let status_at = |ts: i64| {
            let (_, m) = r.samples.iter().find(|(t, _)| *t == ts).expect("a sample");
            thresholds.classify(m.bpm, m.contact, &m.rr_1024)
        };
        for kind in [EpisodeKind::Bradycardia, EpisodeKind::Tachycardia] {
            assert!(
                r.episodes.iter().filter(|e| e.kind == kind).count() >= 5,
                "{kind:?}"
            );
        }
        for e in &r.episodes {
            let expected = match e.kind {
                EpisodeKind::Bradycardia => Status::Bradycardia,
                EpisodeKind::Tachycardia => Status::Tachycardia,
                EpisodeKind::ContactLoss => unreachable!("no dropouts configured"),
            };
            assert_eq!(status_at(e.start_ms), expected, "first sample of {e:?}");
            assert_eq!(status_at(e.end_ms), expected, "last sample of {e:?}");
        }
    }

    #[test]
    fn zero_rates_inject_nothing() {
        let r = run(&quiet(), 6, 5.0);
        assert!(r.episodes.is_empty());
        assert!(r
            .samples
            .iter()
            .all(|(_, m)| m.contact == Contact::Detected && (50..=110).contains(&m.bpm)));
    }

    #[test]
    fn episodes_serialise_with_snake_case_kinds() {
        let e = Episode {
            kind: EpisodeKind::ContactLoss,
            start_ms: 1,
            end_ms: 2,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"kind":"contact_loss","start_ms":1,"end_ms":2}"#
        );
    }
}
