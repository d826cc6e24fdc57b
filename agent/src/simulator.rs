//! A simulated heart-rate strap that behaves like a person wearing one, with the
//! anomalies the pipeline must detect injected at known times.
//!
//! # Model
//! The heart rate is composed of layers, each a pure function of simulated time and
//! a seeded random stream:
//! - **Resting baseline**, drawn per device in 55–85 BPM, plus a slow
//!   Ornstein–Uhlenbeck **drift** (σ 3 BPM, time constant 30 min, kept within
//!   ±8 BPM and never below 53 BPM).
//! - **Activity bursts** (about one an hour, 3–15 min): the rate climbs by 10–35 BPM
//!   with a 45 s time constant and recovers with a 2 min one. Activity never takes
//!   the underlying rate above 100 BPM, so it never looks like tachycardia.
//! - **Anomaly episodes** (`episodes_per_hour`, half bradycardia, half
//!   tachycardia): the rate ramps (20–60 s) to a level of 38–46 BPM or 115–160 BPM,
//!   holds it for `episode_duration_s`, and ramps back.
//! - **Contact-loss dropouts** (`dropouts_per_hour`, `dropout_duration_s`): the
//!   strap reports no contact, no RR intervals, and a BPM of 0 or the last value.
//!
//! From that rate, actual **beats** are generated: each RR interval is 60/HR with
//! respiratory sinus arrhythmia (3.5–5.5 s breaths, about ±3 % at 60 BPM, less when
//! the heart is fast), a 0.1 Hz Mayer wave, and Gaussian beat and timing noise.
//! Rarely a beat is an artifact: an ectopic beat (a short interval and its
//! compensatory pause) or a missed beat (two intervals merged). Every interval
//! stays within the plausible 200 ms–3 s the classifier accepts. The reported BPM
//! is the strap's own estimate: an exponential average over recent clean beats, so
//! it matches the RR intervals it ships with.
//!
//! # Time and determinism
//! The model advances exactly `period_ms` per [`SimulatedStrap::next_sample`]; the
//! `ts_ms` passed in only timestamps the ground-truth [`Episode`]s. The series thus
//! depends on `(config, device index)` alone, not on tick jitter. Episodes,
//! dropouts and activity draw from random streams of their own, apart from the
//! beats, so the schedule does not depend on how many beats were drawn.
//!
//! # Ground truth
//! Episodes never overlap (one waits for the previous one plus a minute), and an
//! episode's interval is read off the samples it produced: from the first to the
//! last sample (inclusive) that the configured thresholds classify as the injected
//! condition, or that report no contact for a dropout. An episode whose samples
//! never showed the condition is not reported.

use std::f64::consts::TAU;

use hb_shared::classify::{RR_MAX_1024, RR_MIN_1024};
use hb_shared::{Contact, HeartRateMeasurement, RrIntervals, Status, Thresholds};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;

const MS_PER_HOUR: f64 = 3_600_000.0;

const BASELINE_BPM: (f64, f64) = (55.0, 85.0);
const DRIFT_SD_BPM: f64 = 3.0;
const DRIFT_LIMIT_BPM: f64 = 8.0;
const DRIFT_TAU_MS: f64 = 30.0 * 60_000.0;
const RESTING_MIN_BPM: f64 = 53.0;

const ACTIVITY_PER_HOUR: f64 = 1.0;
const ACTIVITY_DURATION_S: (f64, f64) = (180.0, 900.0);
const ACTIVITY_LIFT_BPM: (f64, f64) = (10.0, 35.0);
const ACTIVITY_MAX_BPM: f64 = 100.0;
const ACTIVITY_RISE_TAU_MS: f64 = 45_000.0;
const ACTIVITY_FALL_TAU_MS: f64 = 120_000.0;

const BRADYCARDIA_BPM: (f64, f64) = (38.0, 46.0);
const TACHYCARDIA_BPM: (f64, f64) = (115.0, 160.0);
const RAMP_S: (f64, f64) = (20.0, 60.0);
/// Quiet time after one episode before the next may start.
const EPISODE_GAP_MS: f64 = 60_000.0;
/// Arrivals that may wait while another episode runs; more are dropped.
const MAX_PENDING: u32 = 2;

const BREATH_PERIOD_S: (f64, f64) = (3.5, 5.5);
const RSA_AT_60_BPM: f64 = 0.03;
const RSA_MAX: f64 = 0.05;
const MAYER_PERIOD_MS: f64 = 10_000.0;
const MAYER_AMPLITUDE: f64 = 0.015;
const BEAT_NOISE: f64 = 0.01;
const TIMING_JITTER_MS: f64 = 3.0;
/// Chance that a beat is an artifact: half ectopic, half missed.
const ARTIFACT_PER_BEAT: f64 = 0.003;
/// Random walk of the breathing phase, radians per √s.
const BREATH_WANDER: f64 = 0.05;
const RR_MIN_MS: f64 = RR_MIN_1024 as f64 / 1.024;
const RR_MAX_MS: f64 = RR_MAX_1024 as f64 / 1.024;
/// Longest merged interval a missed beat may produce, ms.
const MISSED_MAX_MS: f64 = 2_800.0;
/// Weight of a new clean beat in the strap's BPM estimate.
const STRAP_SMOOTHING: f64 = 0.25;

/// Parameters of the simulation, shared by all devices of one agent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    /// Seed: the same seed and device index give the same series.
    pub seed: u64,
    /// Simulated time between two samples, ms; the model advances this much per
    /// sample (0 is treated as 1).
    pub period_ms: u64,
    /// Mean rate of bradycardia and tachycardia episodes (half each), per hour.
    /// Zero, negative or non-finite disables them.
    pub episodes_per_hour: f64,
    /// How long an episode holds its heart rate, s; the ramps in and out come on top.
    pub episode_duration_s: u64,
    /// Mean rate of contact-loss dropouts, per hour. Zero, negative or non-finite
    /// disables them.
    pub dropouts_per_hour: f64,
    /// How long a dropout lasts, s.
    pub dropout_duration_s: u64,
    /// The classification thresholds the ground truth is read with: an episode
    /// lasts from the first to the last sample they classify as its condition. The
    /// agent passes its configured ones, so that the ground truth agrees with what
    /// it flags.
    pub thresholds: Thresholds,
}

impl Default for SimConfig {
    /// Seed 1, one sample a second, one 120 s episode an hour, a 10 s dropout every
    /// two hours, the default thresholds.
    fn default() -> Self {
        Self {
            seed: 1,
            period_ms: 1000,
            episodes_per_hour: 1.0,
            episode_duration_s: 120,
            dropouts_per_hour: 0.5,
            dropout_duration_s: 10,
            thresholds: Thresholds::default(),
        }
    }
}

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
/// [`SimulatedStrap::next_sample`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Episode {
    /// What was injected.
    pub kind: EpisodeKind,
    /// Timestamp of the first sample showing the condition.
    pub start_ms: i64,
    /// Timestamp of the last sample showing the condition.
    pub end_ms: i64,
}

/// The simulated strap of one device.
pub struct SimulatedStrap {
    period_ms: f64,
    /// Simulated time of the latest sample, ms since the strap started.
    now_ms: f64,
    thresholds: Thresholds,

    physio: Noise,
    baseline_bpm: f64,
    drift_bpm: f64,
    drift_decay: f64,
    drift_step_sd: f64,

    activities: Arrivals,
    activity: Option<Activity>,
    lift_bpm: f64,
    rise: f64,
    fall: f64,

    episodes: Arrivals,
    dropouts: Arrivals,
    episode_ms: f64,
    dropout_ms: f64,
    active: Option<Active>,
    /// Simulated time from which the next episode may start.
    idle_from_ms: f64,
    finished: Vec<Episode>,

    breath_ms: f64,
    breath_phase: f64,
    breath_wander: f64,
    mayer_phase: f64,
    last_beat_ms: f64,
    next_beat: Option<Beat>,
    /// Clean beats before the next artifact.
    beats_to_artifact: u64,
    /// Compensatory pause owed after an ectopic beat.
    owed_beat: Option<Beat>,
    smoothed_rr_ms: f64,
    last_bpm: u16,
}

impl SimulatedStrap {
    /// The strap of device number `index` under `config`.
    pub fn new(config: &SimConfig, index: u64) -> Self {
        let period_ms = config.period_ms.max(1) as f64;
        let mut physio = Noise::new(config.seed, index, 0);
        let baseline_bpm = physio.uniform(BASELINE_BPM);
        let breath_ms = physio.uniform(BREATH_PERIOD_S) * 1000.0;
        let breath_phase = physio.uniform((0.0, TAU));
        let mayer_phase = physio.uniform((0.0, TAU));
        let first_rr_ms = 60_000.0 / baseline_bpm;
        let last_beat_ms = -physio.uniform((0.0, first_rr_ms));
        let beats_to_artifact = physio.geometric(ARTIFACT_PER_BEAT);
        let drift_decay = (-period_ms / DRIFT_TAU_MS).exp();
        Self {
            period_ms,
            now_ms: 0.0,
            thresholds: config.thresholds,
            physio,
            baseline_bpm,
            drift_bpm: 0.0,
            drift_decay,
            drift_step_sd: DRIFT_SD_BPM * (1.0 - drift_decay * drift_decay).sqrt(),
            activities: Arrivals::new(Noise::new(config.seed, index, 1), ACTIVITY_PER_HOUR),
            activity: None,
            lift_bpm: 0.0,
            rise: 1.0 - (-period_ms / ACTIVITY_RISE_TAU_MS).exp(),
            fall: 1.0 - (-period_ms / ACTIVITY_FALL_TAU_MS).exp(),
            episodes: Arrivals::new(Noise::new(config.seed, index, 2), config.episodes_per_hour),
            dropouts: Arrivals::new(Noise::new(config.seed, index, 3), config.dropouts_per_hour),
            episode_ms: config.episode_duration_s as f64 * 1000.0,
            dropout_ms: config.dropout_duration_s as f64 * 1000.0,
            active: None,
            idle_from_ms: 0.0,
            finished: Vec::new(),
            breath_ms,
            breath_phase,
            breath_wander: BREATH_WANDER * (period_ms / 1000.0).sqrt(),
            mayer_phase,
            last_beat_ms,
            next_beat: None,
            beats_to_artifact,
            owed_beat: None,
            smoothed_rr_ms: first_rr_ms,
            last_bpm: bpm_of(first_rr_ms),
        }
    }

    /// The measurement taken at `ts_ms` (Unix ms); called once per period with
    /// increasing `ts_ms`. The model advances one period per call; `ts_ms` only
    /// timestamps the episodes.
    pub fn next_sample(&mut self, ts_ms: i64) -> HeartRateMeasurement {
        let now = self.now_ms + self.period_ms;
        self.now_ms = now;
        self.schedule(now);
        self.advance_background(now);
        let rr_1024 = self.beats_until(now);
        let dropout = match &self.active {
            Some(a) => a.injection.drops_contact_at(now),
            None => None,
        };
        let m = match dropout {
            Some(hold) => HeartRateMeasurement {
                bpm: if hold { self.last_bpm } else { 0 },
                contact: Contact::NotDetected,
                energy_kj: None,
                rr_1024: RrIntervals::new(),
            },
            None => {
                self.last_bpm = bpm_of(self.smoothed_rr_ms);
                HeartRateMeasurement {
                    bpm: self.last_bpm,
                    contact: Contact::Detected,
                    energy_kj: None,
                    rr_1024,
                }
            }
        };
        self.record(ts_ms, &m, now);
        m
    }

    /// Episodes that ended since the last call (ground truth for `--episodes-out`),
    /// in order.
    pub fn take_finished_episodes(&mut self) -> Vec<Episode> {
        std::mem::take(&mut self.finished)
    }

    /// Counts arrivals up to `now` and starts an episode, a dropout or an activity
    /// burst when one is due and nothing stands in its way.
    fn schedule(&mut self, now: f64) {
        self.episodes.poll(now);
        self.dropouts.poll(now);
        self.activities.poll(now);
        if self.active.is_none() && now >= self.idle_from_ms {
            let injection = if self.episodes.take() {
                Some(self.draw_anomaly(now))
            } else if self.dropouts.take() {
                let hold_last_bpm = self.dropouts.noise.rng.random_bool(0.5);
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
        let anomaly = matches!(
            self.active,
            Some(Active {
                injection: Injection::Anomaly { .. },
                ..
            })
        );
        if self.activity.is_some_and(|a| now >= a.end_ms) {
            self.activity = None;
        }
        if self.activities.take() && self.activity.is_none() && !anomaly {
            let room = (ACTIVITY_MAX_BPM - self.resting_bpm()).max(0.0);
            let n = &mut self.activities.noise;
            let end_ms = now + n.uniform(ACTIVITY_DURATION_S) * 1000.0;
            let lift_bpm = n.uniform(ACTIVITY_LIFT_BPM).min(room);
            self.activity = Some(Activity { end_ms, lift_bpm });
        }
    }

    fn draw_anomaly(&mut self, now: f64) -> Injection {
        let n = &mut self.episodes.noise;
        let (kind, range) = if n.rng.random_bool(0.5) {
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

    /// Steps the drift and the activity lift by one period.
    fn advance_background(&mut self, now: f64) {
        let shock = self.physio.normal();
        self.drift_bpm = (self.drift_bpm * self.drift_decay + self.drift_step_sd * shock)
            .clamp(-DRIFT_LIMIT_BPM, DRIFT_LIMIT_BPM);
        let target = match self.activity {
            Some(a) if now < a.end_ms => a.lift_bpm,
            _ => 0.0,
        };
        // Breathing is not a metronome.
        self.breath_phase += self.breath_wander * self.physio.normal();
        let k = if target > self.lift_bpm {
            self.rise
        } else {
            self.fall
        };
        self.lift_bpm += (target - self.lift_bpm) * k;
    }

    fn resting_bpm(&self) -> f64 {
        (self.baseline_bpm + self.drift_bpm).max(RESTING_MIN_BPM)
    }

    /// The heart's underlying rate at simulated time `t`, before beat variability.
    fn heart_rate_at(&self, t: f64) -> f64 {
        let normal = (self.resting_bpm() + self.lift_bpm).clamp(RESTING_MIN_BPM, ACTIVITY_MAX_BPM);
        match &self.active {
            Some(Active {
                injection: i @ Injection::Anomaly { level_bpm, .. },
                ..
            }) => {
                let w = i.weight_at(t);
                normal + w * (level_bpm - normal)
            }
            _ => normal,
        }
    }

    /// The RR intervals of the beats up to `now` since the previous sample (the
    /// latest ones if more than a reading holds), updating the strap's estimate.
    fn beats_until(&mut self, now: f64) -> RrIntervals {
        let mut out = RrIntervals::new();
        loop {
            let beat = match self.next_beat {
                Some(b) => b,
                None => {
                    let b = self.draw_beat();
                    self.next_beat = Some(b);
                    b
                }
            };
            if self.last_beat_ms + beat.rr_ms > now {
                return out;
            }
            self.next_beat = None;
            self.last_beat_ms += beat.rr_ms;
            if !beat.artifact {
                self.smoothed_rr_ms += (beat.rr_ms - self.smoothed_rr_ms) * STRAP_SMOOTHING;
            }
            if out.is_full() {
                out.remove(0);
            }
            // Cannot fail: a slot was freed above if needed.
            let _ = out.push((beat.rr_ms * 1.024).round() as u16);
        }
    }

    /// The interval to the next beat after the last one.
    fn draw_beat(&mut self) -> Beat {
        if let Some(b) = self.owed_beat.take() {
            return b;
        }
        let t = self.last_beat_ms;
        let hr = self.heart_rate_at(t);
        let mean_ms = 60_000.0 / hr;
        let rsa = (RSA_AT_60_BPM * (60.0 / hr).powf(1.5)).min(RSA_MAX)
            * (TAU * t / self.breath_ms + self.breath_phase).sin();
        let mayer = MAYER_AMPLITUDE * (TAU * t / MAYER_PERIOD_MS + self.mayer_phase).sin();
        let sd = (mean_ms * BEAT_NOISE).hypot(TIMING_JITTER_MS);
        let rr_ms =
            (mean_ms * (1.0 + rsa + mayer) + sd * self.physio.normal()).clamp(RR_MIN_MS, RR_MAX_MS);
        if self.beats_to_artifact > 0 {
            self.beats_to_artifact -= 1;
            return Beat {
                rr_ms,
                artifact: false,
            };
        }
        self.beats_to_artifact = self.physio.geometric(ARTIFACT_PER_BEAT);
        if self.physio.rng.random_bool(0.5) {
            let early = self.physio.uniform((0.6, 0.75));
            let (short, pause) = (rr_ms * early, rr_ms * (2.0 - early));
            if short >= RR_MIN_MS && pause <= RR_MAX_MS {
                self.owed_beat = Some(Beat {
                    rr_ms: pause,
                    artifact: true,
                });
                return Beat {
                    rr_ms: short,
                    artifact: true,
                };
            }
        } else if 2.0 * rr_ms <= MISSED_MAX_MS {
            return Beat {
                rr_ms: 2.0 * rr_ms,
                artifact: true,
            };
        }
        Beat {
            rr_ms,
            artifact: false,
        }
    }

    /// Notes whether the sample showed the active injection, and finishes the
    /// injection once no further sample falls inside it.
    fn record(&mut self, ts_ms: i64, m: &HeartRateMeasurement, now: f64) {
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
        if now + self.period_ms >= end_ms {
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
}

/// One generated beat: the interval since the previous one.
#[derive(Debug, Clone, Copy)]
struct Beat {
    rr_ms: f64,
    /// An ectopic or missed beat, which the strap's estimate ignores.
    artifact: bool,
}

#[derive(Debug, Clone, Copy)]
struct Activity {
    end_ms: f64,
    lift_bpm: f64,
}

/// An injection in progress and the samples that showed it so far.
struct Active {
    injection: Injection,
    first_ts: Option<i64>,
    last_ts: i64,
}

/// An injected condition, in simulated time.
enum Injection {
    /// The rate ramps to `level_bpm`, holds, and ramps back.
    Anomaly {
        kind: EpisodeKind,
        level_bpm: f64,
        start_ms: f64,
        ramp_in_ms: f64,
        hold_ms: f64,
        ramp_out_ms: f64,
    },
    /// No contact from `start_ms` (inclusive) to `end_ms` (exclusive).
    Dropout {
        start_ms: f64,
        end_ms: f64,
        hold_last_bpm: bool,
    },
}

impl Injection {
    fn kind(&self) -> EpisodeKind {
        match self {
            Injection::Anomaly { kind, .. } => *kind,
            Injection::Dropout { .. } => EpisodeKind::ContactLoss,
        }
    }

    fn end_ms(&self) -> f64 {
        match self {
            Injection::Anomaly {
                start_ms,
                ramp_in_ms,
                hold_ms,
                ramp_out_ms,
                ..
            } => start_ms + ramp_in_ms + hold_ms + ramp_out_ms,
            Injection::Dropout { end_ms, .. } => *end_ms,
        }
    }

    /// How far the rate has been pulled to the anomaly's level at `t`, 0 to 1.
    fn weight_at(&self, t: f64) -> f64 {
        let Injection::Anomaly {
            start_ms,
            ramp_in_ms,
            hold_ms,
            ramp_out_ms,
            ..
        } = self
        else {
            return 0.0;
        };
        let x = t - start_ms;
        if x <= 0.0 {
            0.0
        } else if x < *ramp_in_ms {
            smoothstep(x / ramp_in_ms)
        } else if x < ramp_in_ms + hold_ms {
            1.0
        } else {
            smoothstep(1.0 - (x - ramp_in_ms - hold_ms) / ramp_out_ms)
        }
    }

    /// `Some(hold_last_bpm)` when this is a dropout covering `t`.
    fn drops_contact_at(&self, t: f64) -> Option<bool> {
        match self {
            Injection::Dropout {
                start_ms,
                end_ms,
                hold_last_bpm,
            } if (*start_ms..*end_ms).contains(&t) => Some(*hold_last_bpm),
            _ => None,
        }
    }
}

/// Arrivals of a Poisson process, counted until something takes them.
struct Arrivals {
    noise: Noise,
    rate_per_ms: f64,
    next_ms: f64,
    pending: u32,
}

impl Arrivals {
    fn new(mut noise: Noise, per_hour: f64) -> Self {
        let rate_per_ms = if per_hour.is_finite() && per_hour > 0.0 {
            per_hour / MS_PER_HOUR
        } else {
            0.0
        };
        let next_ms = noise.exponential(rate_per_ms);
        Self {
            noise,
            rate_per_ms,
            next_ms,
            pending: 0,
        }
    }

    fn poll(&mut self, now: f64) {
        while self.next_ms <= now {
            if self.pending < MAX_PENDING {
                self.pending += 1;
                self.next_ms += self.noise.exponential(self.rate_per_ms);
            } else {
                // Further arrivals would be dropped; memorylessness lets us skip them.
                self.next_ms = now + self.noise.exponential(self.rate_per_ms);
            }
        }
    }

    fn take(&mut self) -> bool {
        let due = self.pending > 0;
        self.pending = self.pending.saturating_sub(1);
        due
    }
}

/// A seeded random stream with the few distributions the model needs.
struct Noise {
    rng: StdRng,
    spare_normal: Option<f64>,
}

impl Noise {
    /// Stream number `stream` of device `index` under `seed`.
    fn new(seed: u64, index: u64, stream: u64) -> Self {
        let mixed = splitmix64(splitmix64(seed) ^ splitmix64(index.wrapping_add(0x5EED)) ^ stream);
        Self {
            rng: StdRng::seed_from_u64(mixed),
            spare_normal: None,
        }
    }

    fn uniform(&mut self, (lo, hi): (f64, f64)) -> f64 {
        lo + (hi - lo) * self.rng.random::<f64>()
    }

    /// A standard normal deviate (Box–Muller on the two halves of one draw, both
    /// outputs used: the generator dominates the cost of a simulated hour).
    fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        let bits = self.rng.next_u64();
        let unit = |x: u64| (x & 0xFFFF_FFFF) as f64 / 4_294_967_296.0; // [0, 1)
        let u = 1.0 - unit(bits); // (0, 1]
        let v = unit(bits >> 32);
        let r = (-2.0 * u.ln()).sqrt();
        self.spare_normal = Some(r * (TAU * v).sin());
        r * (TAU * v).cos()
    }

    /// Failures before the first success of trials with chance `p` each.
    fn geometric(&mut self, p: f64) -> u64 {
        let u = 1.0 - self.rng.random::<f64>(); // (0, 1]
        (u.ln() / (1.0 - p).ln()).floor() as u64
    }

    /// Waiting time of a Poisson process of `rate_per_ms`; infinite at rate 0.
    fn exponential(&mut self, rate_per_ms: f64) -> f64 {
        if rate_per_ms > 0.0 {
            -(1.0 - self.rng.random::<f64>()).ln() / rate_per_ms
        } else {
            f64::INFINITY
        }
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn smoothstep(x: f64) -> f64 {
    let x = x.clamp(0.0, 1.0);
    x * x * (3.0 - 2.0 * x)
}

fn bpm_of(rr_ms: f64) -> u16 {
    (60_000.0 / rr_ms).round().clamp(1.0, 300.0) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix ms of the first sample in the tests.
    const T0: i64 = 1_700_000_000_000;

    struct Run {
        samples: Vec<(i64, HeartRateMeasurement)>,
        episodes: Vec<Episode>,
    }

    fn run(config: &SimConfig, index: u64, hours: f64) -> Run {
        let mut strap = SimulatedStrap::new(config, index);
        let n = (hours * MS_PER_HOUR / config.period_ms as f64) as i64;
        let mut samples = Vec::with_capacity(n as usize);
        let mut episodes = Vec::new();
        for i in 0..n {
            let ts = T0 + i * config.period_ms as i64;
            samples.push((ts, strap.next_sample(ts)));
            episodes.extend(strap.take_finished_episodes());
        }
        Run { samples, episodes }
    }

    fn quiet() -> SimConfig {
        SimConfig {
            episodes_per_hour: 0.0,
            dropouts_per_hour: 0.0,
            ..SimConfig::default()
        }
    }

    fn in_episode(episodes: &[Episode], ts: i64) -> Option<&Episode> {
        episodes
            .iter()
            .find(|e| (e.start_ms..=e.end_ms).contains(&ts))
    }

    #[test]
    fn the_same_seed_and_index_give_the_same_series_and_episodes() {
        let c = SimConfig {
            seed: 7,
            episodes_per_hour: 6.0,
            dropouts_per_hour: 6.0,
            ..SimConfig::default()
        };
        let (a, b) = (run(&c, 3, 2.0), run(&c, 3, 2.0));
        assert_eq!(a.samples, b.samples);
        assert_eq!(a.episodes, b.episodes);
        assert!(!a.episodes.is_empty());
        let other = run(&c, 4, 2.0);
        assert_ne!(a.samples, other.samples);
        let reseeded = run(&SimConfig { seed: 8, ..c }, 3, 2.0);
        assert_ne!(a.samples, reseeded.samples);
    }

    #[test]
    fn resting_baselines_lie_between_55_and_85_bpm_across_devices() {
        let c = SimConfig::default();
        let baselines: Vec<f64> = (0..500)
            .map(|i| SimulatedStrap::new(&c, i).baseline_bpm)
            .collect();
        assert!(baselines.iter().all(|b| (55.0..=85.0).contains(b)));
        let below_60 = baselines.iter().filter(|&&b| b < 60.0).count();
        let above_80 = baselines.iter().filter(|&&b| b > 80.0).count();
        assert!(below_60 > 50 && above_80 > 50, "{below_60} {above_80}");
    }

    #[test]
    fn the_mean_heart_rate_implied_by_the_rr_intervals_matches_the_reported_bpm() {
        let c = SimConfig {
            period_ms: 5000,
            episodes_per_hour: 4.0,
            ..quiet()
        };
        let r = run(&c, 11, 6.0);
        let errors: Vec<f64> = r
            .samples
            .iter()
            .filter(|(_, m)| !m.rr_1024.is_empty())
            .map(|(_, m)| {
                let mean_rr =
                    m.rr_1024.iter().map(|&rr| f64::from(rr)).sum::<f64>() / m.rr_1024.len() as f64;
                let implied = 60.0 * 1024.0 / mean_rr;
                (implied - f64::from(m.bpm)).abs() / f64::from(m.bpm)
            })
            .collect();
        let mean_error = errors.iter().sum::<f64>() / errors.len() as f64;
        let within_10 = errors.iter().filter(|&&e| e < 0.10).count() as f64 / errors.len() as f64;
        assert!(mean_error < 0.03, "mean relative error {mean_error}");
        assert!(within_10 > 0.97, "{within_10} within 10 %");
    }

    #[test]
    fn beats_vary_like_a_resting_heart_with_occasional_artifacts() {
        let r = run(&quiet(), 5, 2.0);
        let rr: Vec<f64> = r
            .samples
            .iter()
            .flat_map(|(_, m)| m.rr_1024.iter().map(|&x| f64::from(x) / 1.024))
            .collect();
        let diffs: Vec<f64> = rr.windows(2).map(|w| w[1] - w[0]).collect();
        let rmssd = (diffs.iter().map(|d| d * d).sum::<f64>() / diffs.len() as f64).sqrt();
        assert!((15.0..120.0).contains(&rmssd), "RMSSD {rmssd} ms");
        let outliers = rr
            .windows(3)
            .filter(|w| (w[1] - (w[0] + w[2]) / 2.0).abs() > 0.25 * w[1])
            .count();
        assert!((3..200).contains(&outliers), "{outliers} outliers");
    }

    #[test]
    fn samples_hold_at_most_the_reading_capacity_of_plausible_rr_intervals() {
        let c = SimConfig {
            period_ms: 30_000,
            episodes_per_hour: 20.0,
            episode_duration_s: 600,
            ..quiet()
        };
        let r = run(&c, 2, 3.0);
        assert!(r.samples.iter().any(|(_, m)| m.rr_1024.is_full()));
        for (_, m) in &r.samples {
            assert!(m
                .rr_1024
                .iter()
                .all(|rr| (RR_MIN_1024..=RR_MAX_1024).contains(rr)));
        }
        // A fast sampler sees no beat in some periods but always a heart rate.
        let fast = run(
            &SimConfig {
                period_ms: 250,
                ..quiet()
            },
            2,
            0.05,
        );
        assert!(fast.samples.iter().any(|(_, m)| m.rr_1024.is_empty()));
        assert!(fast.samples.iter().all(|(_, m)| m.bpm > 0));
    }

    #[test]
    fn activity_bursts_raise_the_heart_rate_for_minutes_then_recover() {
        let mut strap = SimulatedStrap::new(&quiet(), 9);
        let (mut active, mut peak_lift) = (0, 0.0_f64);
        for i in 0..(10 * 3600) {
            let m = strap.next_sample(T0 + i * 1000);
            assert!(m.bpm <= 110, "activity looked like tachycardia: {}", m.bpm);
            peak_lift = peak_lift.max(strap.lift_bpm);
            if strap.lift_bpm > 5.0 {
                active += 1;
            }
        }
        assert!(peak_lift > 10.0, "peak lift {peak_lift}");
        assert!((600..20_000).contains(&active), "{active} s of activity");
    }

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
