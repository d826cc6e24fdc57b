//! Alert episodes: per-reading classifications turned into alerts people can
//! trust. One pure state machine per device, fed readings (with their device time
//! and receive time) and the passing of receive time; it does no I/O and reads no
//! clock, so the collector (the authoritative alerts) and the agent (its events
//! lane) run the same code, and its state can be stored and resumed.
//!
//! # The model
//! - **Onset.** A physiological alert (`bradycardia`, `tachycardia`) opens when
//!   its condition has held for [`AlertRules::onset_delay_ms`] of device time over
//!   consecutive readings. Readings further apart than [`AlertRules::max_gap_ms`]
//!   break the run: a gap does not count as holding.
//! - **Clear, with hysteresis.** It closes when the value has stayed inside the
//!   clear band (bradycardia: ≥ threshold + [`AlertRules::bradycardia_clear_margin_bpm`];
//!   tachycardia: ≤ threshold − [`AlertRules::tachycardia_clear_margin_bpm`]) for
//!   [`AlertRules::clear_delay_ms`]. Values between the threshold and the clear band
//!   keep the alert open and restart the clear run.
//! - **Severity** follows the NEWS2 pulse bands ([`Severity::of_pulse`], at least
//!   medium while the condition holds). Inside one open alert it escalates once a
//!   higher band has held for the onset delay and de-escalates once a lower band has
//!   held for the clear delay. Peak value, last value and reading count are kept.
//! - **Signal loss** (`signal_loss`, technical) opens when readings without a usable
//!   signal hold for the onset delay and clears after usable readings for the clear
//!   delay. A reading without signal is never bradycardia: it marks an open
//!   physiological alert as `signal_lost` (without closing it or advancing its clear
//!   run) and opens nothing new.
//! - **Device offline** (`device_offline`, technical) opens when nothing was received
//!   for [`AlertRules::offline_after_ms`] of receive time ([`DeviceAlerts::silence`])
//!   or when the device's Last Will says offline ([`DeviceAlerts::went_offline`]),
//!   and closes with the next reading received.
//! - **Retrospective.** Backfilled readings run through a lane of their own, whose
//!   alerts are marked retrospective; they never open, escalate or close a live
//!   alert, and the live lane never goes backwards in device time (older readings
//!   are stored but not evaluated live).
//!
//! An alert's identity is its device, its kind, its lane and the `(epoch, seq)` of
//! the reading that began it ([`Origin`]); each transition carries its ordinal
//! within the alert, so `(alert, ordinal)` identifies a transition end to end.

mod tracker;

use serde::{Deserialize, Serialize};

use crate::{Severity, Status, Thresholds};
use tracker::{Tracker, TrackerKind};

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Heart rate below the bradycardia threshold (physiological).
    Bradycardia,
    /// Heart rate above the tachycardia threshold (physiological).
    Tachycardia,
    /// No usable signal from the strap (technical).
    SignalLoss,
    /// Nothing received from the device (technical).
    DeviceOffline,
}

impl AlertKind {
    /// Stable lowercase name, as stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Bradycardia => "bradycardia",
            AlertKind::Tachycardia => "tachycardia",
            AlertKind::SignalLoss => "signal_loss",
            AlertKind::DeviceOffline => "device_offline",
        }
    }

    /// A technical alarm (about the equipment), not a physiological one.
    pub fn is_technical(self) -> bool {
        matches!(self, AlertKind::SignalLoss | AlertKind::DeviceOffline)
    }
}

/// What happened to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionKind {
    /// The alert opened.
    Open,
    /// Its severity rose.
    Escalate,
    /// Its severity fell, the alert still open.
    Deescalate,
    /// The alert closed.
    Close,
}

impl TransitionKind {
    /// Stable lowercase name, as stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionKind::Open => "open",
            TransitionKind::Escalate => "escalate",
            TransitionKind::Deescalate => "deescalate",
            TransitionKind::Close => "close",
        }
    }
}

/// The rules of one device's alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRules {
    /// The per-reading thresholds.
    pub thresholds: Thresholds,
    /// Bradycardia clears at or above the threshold plus this.
    pub bradycardia_clear_margin_bpm: u16,
    /// Tachycardia clears at or below the threshold minus this.
    pub tachycardia_clear_margin_bpm: u16,
    /// How long (device time) a condition must hold before its alert opens.
    pub onset_delay_ms: u32,
    /// How long (device time) the clear band must hold before an alert closes.
    pub clear_delay_ms: u32,
    /// Readings further apart than this (device time) do not hold a condition
    /// across the gap.
    pub max_gap_ms: u32,
    /// Nothing received for this long (receive time) opens `device_offline`.
    pub offline_after_ms: u32,
}

impl Default for AlertRules {
    /// Thresholds 50/110, clear at 55/100, onset 10 s, clear 30 s, gaps over 5 s
    /// break a run, offline after 30 s.
    fn default() -> Self {
        Self {
            thresholds: Thresholds::default(),
            bradycardia_clear_margin_bpm: 5,
            tachycardia_clear_margin_bpm: 10,
            onset_delay_ms: 10_000,
            clear_delay_ms: 30_000,
            max_gap_ms: 5_000,
            offline_after_ms: 30_000,
        }
    }
}

/// One reading, as the state machine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// The agent's boot counter.
    pub epoch: u32,
    /// Position within the epoch.
    pub seq: u32,
    /// Measurement time (device clock, corrected), Unix milliseconds.
    pub ts_ms: i64,
    /// When it was received, Unix milliseconds.
    pub received_ms: i64,
    /// Beats per minute.
    pub bpm: u16,
    /// Its classification under the device's thresholds.
    pub status: Status,
    /// Sent from a backlog or late: evaluated in the retrospective lane.
    pub backfill: bool,
}

/// The reading an alert began with: with the device, kind and lane, its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Origin {
    /// Epoch of that reading.
    pub epoch: u32,
    /// Seq of that reading.
    pub seq: u32,
    /// Its time: device time, or for `device_offline` the last receive time.
    pub ts_ms: i64,
}

/// One change of one alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// What happened.
    pub transition: TransitionKind,
    /// The alert's kind.
    pub kind: AlertKind,
    /// The reading the alert began with.
    pub origin: Origin,
    /// From the retrospective lane.
    pub retrospective: bool,
    /// 0 for the opening, then one more per transition of the same alert.
    pub ordinal: u32,
    /// Severity after this transition (`None` for technical alerts).
    pub severity: Severity,
    /// When: the device time of the reading that caused it, or a receive time
    /// for `device_offline`.
    pub at_ms: i64,
    /// The value of that reading, if it had one.
    pub value_bpm: Option<u16>,
    /// Lowest (bradycardia) or highest (tachycardia) value so far.
    pub peak_bpm: Option<u16>,
    /// Readings in the episode so far.
    pub readings: u32,
    /// The signal was lost when this happened (physiological alerts).
    pub signal_lost: bool,
}

/// The readings evaluated in one order of device time: live, or retrospective.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Lane {
    #[serde(skip_serializing_if = "Option::is_none")]
    last_ts_ms: Option<i64>,
    #[serde(skip_serializing_if = "Tracker::is_idle")]
    bradycardia: Tracker,
    #[serde(skip_serializing_if = "Tracker::is_idle")]
    tachycardia: Tracker,
    #[serde(skip_serializing_if = "Tracker::is_idle")]
    signal_loss: Tracker,
}

impl Lane {
    fn observe(
        &mut self,
        rules: &AlertRules,
        o: &Observation,
        retrospective: bool,
        out: &mut Vec<Transition>,
    ) {
        let gap = i64::from(rules.max_gap_ms);
        if self
            .last_ts_ms
            .is_some_and(|last| o.ts_ms < last && last - o.ts_ms <= gap)
        {
            return; // out of order by a little: never backwards in device time
        }
        // Forward within the gap: the runs go on. Further forward, or a step back
        // beyond the gap (the device's clock was set back, or an older backlog):
        // the runs start over from this reading.
        let continuous = self
            .last_ts_ms
            .is_none_or(|last| o.ts_ms >= last && o.ts_ms - last <= gap);
        self.last_ts_ms = Some(o.ts_ms);
        let trackers = [
            (&mut self.bradycardia, TrackerKind::Bradycardia),
            (&mut self.tachycardia, TrackerKind::Tachycardia),
            (&mut self.signal_loss, TrackerKind::SignalLoss),
        ];
        for (tracker, kind) in trackers {
            if let Some(t) = tracker.observe(kind, rules, o, continuous, retrospective) {
                out.push(t);
            }
        }
    }

    /// Closes whatever is open, at the lane's last reading: its data ended there
    /// (a backlog drained) and no clear run will ever come.
    fn close_all(&mut self, out: &mut Vec<Transition>) {
        let Some(at_ms) = self.last_ts_ms else {
            return;
        };
        for (tracker, kind) in [
            (&mut self.bradycardia, TrackerKind::Bradycardia),
            (&mut self.tachycardia, TrackerKind::Tachycardia),
            (&mut self.signal_loss, TrackerKind::SignalLoss),
        ] {
            out.extend(tracker.close(kind, at_ms, true));
        }
    }

    fn is_unused(&self) -> bool {
        *self == Lane::default()
    }

    fn any_open(&self) -> bool {
        self.bradycardia.is_open() || self.tachycardia.is_open() || self.signal_loss.is_open()
    }
}

/// An open `device_offline` alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Offline {
    origin: Origin,
    /// When it opened (receive time): it cannot close before.
    #[serde(default)]
    opened_ms: i64,
    /// Opened by a Last Will: its epoch and time. Readings of that epoch taken
    /// before it (still on their way when the will overtook them) do not close it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    will: Option<(u32, i64)>,
}

/// The alert state of one device; serialisable, so that it is stored with the
/// readings that changed it and resumed by whichever process goes on. Fields
/// added later read as their defaults from an older state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceAlerts {
    // Stored with every batch for every device: what is idle is left out.
    #[serde(skip_serializing_if = "Lane::is_unused")]
    live: Lane,
    #[serde(skip_serializing_if = "Lane::is_unused")]
    retro: Lane,
    /// Latest receive time of any reading.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_received_ms: Option<i64>,
    /// The reading received last (either lane): a `device_offline` alert begins
    /// with it, so each offline episode has an origin of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_reading: Option<Origin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offline: Option<Offline>,
}

impl DeviceAlerts {
    /// Applies one reading; returns the transitions it caused, in order.
    pub fn observe(&mut self, rules: &AlertRules, o: &Observation) -> Vec<Transition> {
        let mut out = Vec::new();
        // A reading received shows the device is reachable again, unless it was
        // taken before the Last Will that opened the alert.
        let before_will = self
            .offline
            .and_then(|off| off.will)
            .is_some_and(|(epoch, at_ms)| o.epoch == epoch && o.ts_ms < at_ms);
        if !before_will {
            if let Some(off) = self.offline.take() {
                out.push(offline_transition(
                    TransitionKind::Close,
                    off.origin,
                    1,
                    o.received_ms.max(off.opened_ms),
                    Some(o.bpm),
                ));
            }
        }
        self.last_received_ms = Some(
            self.last_received_ms
                .map_or(o.received_ms, |r| r.max(o.received_ms)),
        );
        self.last_reading = Some(Origin {
            epoch: o.epoch,
            seq: o.seq,
            ts_ms: o.ts_ms,
        });
        if o.backfill {
            self.retro.observe(rules, o, true, &mut out);
        } else {
            // Live data has gone past the end of a backlog: a retrospective alert
            // still open there will see no more readings.
            let backlog_over = self
                .retro
                .last_ts_ms
                .is_some_and(|last| o.ts_ms - last > i64::from(rules.max_gap_ms));
            if backlog_over && self.retro.any_open() {
                self.retro.close_all(&mut out);
            }
            self.live.observe(rules, o, false, &mut out);
        }
        out
    }

    /// Receive time has reached `now_ms`: opens `device_offline` if nothing was
    /// received for the rules' offline delay. Only a device heard from can go
    /// offline.
    pub fn silence(&mut self, rules: &AlertRules, now_ms: i64) -> Option<Transition> {
        let last = self.last_received_ms?;
        if now_ms - last < i64::from(rules.offline_after_ms) {
            return None;
        }
        self.open_offline(last + i64::from(rules.offline_after_ms), None)
    }

    /// The device said it went offline (its Last Will, of the agent's `epoch`),
    /// received by the bridge at `at_ms` (wall clock, as device times are).
    pub fn went_offline(&mut self, epoch: u32, at_ms: i64) -> Option<Transition> {
        // Stale: a will of an earlier run of the agent, or one older than a reading
        // the device took (it was back by then). Readings taken before the will may
        // still arrive after it: the collector sees them late, not the device.
        let newest_ts = self.live.last_ts_ms.max(self.retro.last_ts_ms);
        if self.last_reading.is_some_and(|r| epoch < r.epoch)
            || newest_ts.is_some_and(|ts| ts > at_ms)
        {
            return None;
        }
        self.open_offline(at_ms, Some((epoch, at_ms)))
    }

    fn open_offline(&mut self, at_ms: i64, will: Option<(u32, i64)>) -> Option<Transition> {
        if self.offline.is_some() {
            return None;
        }
        let last = self.last_reading?;
        let origin = Origin {
            ts_ms: self.last_received_ms.unwrap_or(at_ms),
            ..last
        };
        self.offline = Some(Offline {
            origin,
            opened_ms: at_ms,
            will,
        });
        Some(offline_transition(
            TransitionKind::Open,
            origin,
            0,
            at_ms,
            None,
        ))
    }

    /// Whether a `device_offline` alert is open.
    pub fn is_offline(&self) -> bool {
        self.offline.is_some()
    }

    /// The kinds of the live alerts open now.
    pub fn open_live(&self) -> Vec<AlertKind> {
        let mut v = Vec::new();
        for (t, k) in [
            (&self.live.bradycardia, AlertKind::Bradycardia),
            (&self.live.tachycardia, AlertKind::Tachycardia),
            (&self.live.signal_loss, AlertKind::SignalLoss),
        ] {
            if t.is_open() {
                v.push(k);
            }
        }
        if self.offline.is_some() {
            v.push(AlertKind::DeviceOffline);
        }
        v
    }

    /// Latest receive time of any reading.
    pub fn last_received_ms(&self) -> Option<i64> {
        self.last_received_ms
    }
}

fn offline_transition(
    transition: TransitionKind,
    origin: Origin,
    ordinal: u32,
    at_ms: i64,
    value_bpm: Option<u16>,
) -> Transition {
    Transition {
        transition,
        kind: AlertKind::DeviceOffline,
        origin,
        retrospective: false,
        ordinal,
        severity: Severity::None,
        at_ms,
        value_bpm,
        peak_bpm: None,
        readings: 0,
        signal_lost: false,
    }
}

#[cfg(test)]
mod tests;
