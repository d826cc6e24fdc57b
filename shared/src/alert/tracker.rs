//! One kind of alert within one lane: a run of readings building up to its onset,
//! or the open alert with its clear run and severity band.

use serde::{Deserialize, Serialize};

use super::{AlertKind, AlertRules, Observation, Origin, Transition, TransitionKind};
use crate::{Severity, Status};

/// The kinds a lane tracks from readings (`device_offline` comes from silence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TrackerKind {
    Bradycardia,
    Tachycardia,
    SignalLoss,
}

impl TrackerKind {
    fn alert(self) -> AlertKind {
        match self {
            TrackerKind::Bradycardia => AlertKind::Bradycardia,
            TrackerKind::Tachycardia => AlertKind::Tachycardia,
            TrackerKind::SignalLoss => AlertKind::SignalLoss,
        }
    }

    fn physiological(self) -> bool {
        self != TrackerKind::SignalLoss
    }

    /// The reading is in this kind's condition.
    fn holds(self, o: &Observation) -> bool {
        match self {
            TrackerKind::Bradycardia => o.status == Status::Bradycardia,
            TrackerKind::Tachycardia => o.status == Status::Tachycardia,
            TrackerKind::SignalLoss => o.status == Status::NoSignal,
        }
    }

    /// The reading is inside the clear band (past the hysteresis margin).
    fn clears(self, rules: &AlertRules, o: &Observation) -> bool {
        if o.status == Status::NoSignal {
            return false;
        }
        let t = rules.thresholds;
        match self {
            TrackerKind::Bradycardia => {
                o.bpm
                    >= t.bradycardia_below_bpm
                        .saturating_add(rules.bradycardia_clear_margin_bpm)
            }
            TrackerKind::Tachycardia => {
                o.bpm
                    <= t.tachycardia_above_bpm
                        .saturating_sub(rules.tachycardia_clear_margin_bpm)
            }
            TrackerKind::SignalLoss => true,
        }
    }

    /// Severity of a reading in the condition: NEWS2, at least medium; technical
    /// alerts have none.
    fn severity(self, bpm: u16) -> Severity {
        if self.physiological() {
            Severity::of_pulse(bpm).max(Severity::Medium)
        } else {
            Severity::None
        }
    }

    /// The more extreme of two values for this kind.
    fn peak(self, peak: Option<u16>, bpm: u16) -> Option<u16> {
        match self {
            TrackerKind::Bradycardia => Some(peak.map_or(bpm, |p| p.min(bpm))),
            TrackerKind::Tachycardia => Some(peak.map_or(bpm, |p| p.max(bpm))),
            TrackerKind::SignalLoss => None,
        }
    }
}

/// Readings held without a gap: from the first one's device time to the last's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Span {
    first_ts_ms: i64,
    last_ts_ms: i64,
}

impl Span {
    fn at(ts_ms: i64) -> Self {
        Self {
            first_ts_ms: ts_ms,
            last_ts_ms: ts_ms,
        }
    }

    /// Extends `span` to `ts_ms`, or starts it there after a gap.
    fn extend(span: &mut Option<Span>, ts_ms: i64, continuous: bool) -> Span {
        match span {
            Some(s) if continuous => s.last_ts_ms = ts_ms,
            _ => *span = Some(Span::at(ts_ms)),
        }
        span.expect("just set")
    }

    fn held_ms(&self) -> i64 {
        self.last_ts_ms - self.first_ts_ms
    }
}

/// Readings in the condition before the alert opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Candidate {
    origin: Origin,
    last_ts_ms: i64,
    readings: u32,
    peak_bpm: Option<u16>,
    /// The lowest severity band over the run: what held for the whole onset.
    #[serde(default = "lowest_severity")]
    severity: Severity,
}

fn lowest_severity() -> Severity {
    Severity::Medium
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct OpenAlert {
    origin: Origin,
    /// Ordinal of the last transition emitted.
    ordinal: u32,
    severity: Severity,
    peak_bpm: Option<u16>,
    readings: u32,
    signal_lost: bool,
    clearing: Option<Span>,
    /// A severity band other than the current one, and how long it has held.
    band: Option<(Severity, Span)>,
}

/// One kind's state in one lane.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct Tracker {
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate: Option<Candidate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    open: Option<OpenAlert>,
}

impl Tracker {
    pub(super) fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Nothing building up, nothing open.
    pub(super) fn is_idle(&self) -> bool {
        self.candidate.is_none() && self.open.is_none()
    }

    /// Closes the open alert, if any, at `at_ms` (its lane's data ended).
    pub(super) fn close(
        &mut self,
        kind: TrackerKind,
        at_ms: i64,
        retrospective: bool,
    ) -> Option<Transition> {
        self.candidate = None;
        let mut a = self.open.take()?;
        a.ordinal += 1;
        Some(Transition {
            transition: TransitionKind::Close,
            kind: kind.alert(),
            origin: a.origin,
            retrospective,
            ordinal: a.ordinal,
            severity: a.severity,
            at_ms,
            value_bpm: None,
            peak_bpm: a.peak_bpm,
            readings: a.readings,
            signal_lost: a.signal_lost,
        })
    }

    /// Applies a reading; `continuous` is false after a gap in the lane.
    pub(super) fn observe(
        &mut self,
        kind: TrackerKind,
        rules: &AlertRules,
        o: &Observation,
        continuous: bool,
        retrospective: bool,
    ) -> Option<Transition> {
        let transition = |t: TransitionKind, a: &OpenAlert| Transition {
            transition: t,
            kind: kind.alert(),
            origin: a.origin,
            retrospective,
            ordinal: a.ordinal,
            severity: a.severity,
            at_ms: o.ts_ms,
            value_bpm: (o.status != Status::NoSignal).then_some(o.bpm),
            peak_bpm: a.peak_bpm,
            readings: a.readings,
            signal_lost: a.signal_lost,
        };
        if let Some(a) = &mut self.open {
            if kind.physiological() && o.status == Status::NoSignal {
                // Unknown value: the alert stays open, its clear run starts over.
                a.signal_lost = true;
                a.clearing = None;
                a.band = None;
                return None;
            }
            a.signal_lost = false;
            if kind.physiological() || kind.holds(o) {
                a.readings += 1;
            }
            if kind.physiological() {
                a.peak_bpm = kind.peak(a.peak_bpm, o.bpm);
            }
            if kind.clears(rules, o) {
                a.band = None;
                let run = Span::extend(&mut a.clearing, o.ts_ms, continuous);
                if run.held_ms() >= i64::from(rules.clear_delay_ms) {
                    a.ordinal += 1;
                    let t = transition(TransitionKind::Close, a);
                    self.open = None;
                    self.candidate = None;
                    return Some(t);
                }
                return None;
            }
            a.clearing = None;
            if !kind.physiological() {
                return None;
            }
            // Between the threshold and the clear band the alert stays open, at
            // the lowest band a physiological alert has.
            let severity = if kind.holds(o) {
                kind.severity(o.bpm)
            } else {
                Severity::Medium
            };
            if severity == a.severity {
                a.band = None;
                return None;
            }
            let held = match &mut a.band {
                Some((s, span)) if *s == severity && continuous => {
                    span.last_ts_ms = o.ts_ms;
                    span.held_ms()
                }
                band => {
                    *band = Some((severity, Span::at(o.ts_ms)));
                    0
                }
            };
            let (needed, t) = if severity > a.severity {
                (rules.onset_delay_ms, TransitionKind::Escalate)
            } else {
                (rules.clear_delay_ms, TransitionKind::Deescalate)
            };
            if held >= i64::from(needed) {
                a.severity = severity;
                a.band = None;
                a.ordinal += 1;
                return Some(transition(t, a));
            }
            return None;
        }
        if !kind.holds(o) {
            self.candidate = None;
            return None;
        }
        let c = match &mut self.candidate {
            Some(c) if continuous => {
                c.last_ts_ms = o.ts_ms;
                c.readings += 1;
                c.peak_bpm = if kind.physiological() {
                    kind.peak(c.peak_bpm, o.bpm)
                } else {
                    None
                };
                c.severity = c.severity.min(kind.severity(o.bpm));
                *c
            }
            slot => {
                let c = Candidate {
                    origin: Origin {
                        epoch: o.epoch,
                        seq: o.seq,
                        ts_ms: o.ts_ms,
                    },
                    last_ts_ms: o.ts_ms,
                    readings: 1,
                    peak_bpm: kind.physiological().then_some(o.bpm),
                    severity: kind.severity(o.bpm),
                };
                *slot = Some(c);
                c
            }
        };
        if c.last_ts_ms - c.origin.ts_ms < i64::from(rules.onset_delay_ms) {
            return None;
        }
        self.candidate = None;
        let a = OpenAlert {
            origin: c.origin,
            ordinal: 0,
            severity: c.severity,
            peak_bpm: c.peak_bpm,
            readings: c.readings,
            signal_lost: false,
            clearing: None,
            band: None,
        };
        let t = transition(TransitionKind::Open, &a);
        self.open = Some(a);
        Some(t)
    }
}
