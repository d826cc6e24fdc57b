//! The alert state machine, with time as data: readings are `(seconds, bpm)`,
//! a bpm of 0 meaning no signal.

use super::*;
use crate::Contact;

const T0: i64 = 1_764_000_000_000;

/// Feeds readings `(second, bpm)` at 1 Hz-like times to `alerts`, live unless
/// `backfill`; returns every transition as `(second, kind, transition, severity)`.
struct Feed {
    rules: AlertRules,
    alerts: DeviceAlerts,
    seq: u32,
    out: Vec<Transition>,
}

impl Feed {
    fn new() -> Self {
        Self::with(AlertRules::default())
    }

    fn with(rules: AlertRules) -> Self {
        Self {
            rules,
            alerts: DeviceAlerts::default(),
            seq: 0,
            out: Vec::new(),
        }
    }

    fn reading(&mut self, second: i64, bpm: u16, backfill: bool) {
        let status = self.rules.thresholds.classify(bpm, Contact::Detected, &[]);
        let o = Observation {
            epoch: 1,
            seq: self.seq,
            ts_ms: T0 + second * 1000,
            received_ms: T0 + second * 1000 + 200,
            bpm,
            status,
            backfill,
        };
        self.seq += 1;
        let t = self.alerts.observe(&self.rules, &o);
        self.out.extend(t);
    }

    /// One reading a second over `[from, to)`, all at `bpm`.
    fn hold(&mut self, from: i64, to: i64, bpm: u16) -> &mut Self {
        for s in from..to {
            self.reading(s, bpm, false);
        }
        self
    }

    fn summary(&self) -> Vec<(i64, AlertKind, TransitionKind, Severity)> {
        self.out
            .iter()
            .map(|t| ((t.at_ms - T0) / 1000, t.kind, t.transition, t.severity))
            .collect()
    }
}

use AlertKind::*;
use Severity::{High, Medium};
use TransitionKind::*;

#[test]
fn a_condition_opens_only_after_holding_for_the_onset_delay() {
    let mut f = Feed::new();
    f.hold(0, 10, 70).hold(10, 20, 45); // 45 from 10 s to 19 s: 9 s held
    assert!(f.summary().is_empty());
    f.hold(20, 21, 45); // 10 s held
    assert_eq!(f.summary(), [(20, Bradycardia, Open, Medium)]);
    let open = f.out[0];
    assert_eq!(
        (open.origin.epoch, open.origin.seq),
        (1, 10),
        "identity: the first reading"
    );
    assert_eq!(
        (open.readings, open.peak_bpm, open.ordinal),
        (11, Some(45), 0)
    );
}

#[test]
fn a_gap_in_readings_does_not_count_as_holding() {
    let mut f = Feed::new();
    f.hold(0, 6, 45); // 0..5 s
    f.hold(12, 21, 45); // after a 7 s gap (> 5 s): 12..20 s, 8 s held
    assert!(f.summary().is_empty());
    f.hold(21, 23, 45);
    assert_eq!(f.summary(), [(22, Bradycardia, Open, Medium)]);
}

#[test]
fn severity_at_onset_follows_news2_and_is_at_least_medium() {
    let mut f = Feed::new();
    f.hold(0, 11, 38);
    assert_eq!(f.summary(), [(10, Bradycardia, Open, High)]);
    let mut rules = AlertRules::default();
    rules.thresholds.bradycardia_below_bpm = 60; // 55 is None in NEWS2
    let mut f = Feed::with(rules);
    f.hold(0, 11, 55);
    assert_eq!(f.summary(), [(10, Bradycardia, Open, Medium)]);
}

#[test]
fn an_alert_clears_only_inside_the_clear_band_for_the_clear_delay() {
    let mut f = Feed::new();
    f.hold(0, 11, 45); // opens at 10 s
    f.hold(11, 100, 52); // above the threshold, below 55: stays open
    assert_eq!(f.summary(), [(10, Bradycardia, Open, Medium)]);
    f.hold(100, 130, 60); // 100..129 s: 29 s in the clear band
    assert_eq!(f.summary().len(), 1);
    f.hold(130, 131, 60);
    assert_eq!(f.summary()[1], (130, Bradycardia, Close, Medium));
    let close = f.out[1];
    assert_eq!(
        (close.ordinal, close.peak_bpm, close.readings),
        (1, Some(45), 131)
    );
}

#[test]
fn tachycardia_clears_at_the_threshold_minus_its_margin() {
    let mut f = Feed::new();
    f.hold(0, 11, 120).hold(11, 60, 105); // 105 > 100: stays open
    assert_eq!(f.summary(), [(10, Tachycardia, Open, Medium)]);
    f.hold(60, 91, 100);
    assert_eq!(f.summary()[1], (90, Tachycardia, Close, Medium));
}

#[test]
fn values_flapping_around_the_threshold_neither_open_nor_close_an_alert() {
    // Alternating 49/51 for 10 minutes: never 10 s in the condition.
    let mut f = Feed::new();
    for s in 0..600 {
        f.reading(s, if s % 2 == 0 { 49 } else { 51 }, false);
    }
    assert!(f.summary().is_empty());
    // Once open, alternating 49/56 never holds the clear band: one alert, no close,
    // no re-open.
    let mut f = Feed::new();
    f.hold(0, 11, 45);
    for s in 11..600 {
        f.reading(s, if s % 2 == 0 { 49 } else { 56 }, false);
    }
    assert_eq!(f.summary(), [(10, Bradycardia, Open, Medium)]);
}

#[test]
fn severity_escalates_after_the_onset_delay_and_deescalates_after_the_clear_delay() {
    let mut f = Feed::new();
    f.hold(0, 15, 45); // open medium at 10 s
    f.hold(15, 20, 38); // 5 s of high: too short
    f.hold(20, 25, 45);
    f.hold(25, 36, 38); // high from 25 s, held 10 s at 35 s
    f.hold(36, 67, 45); // medium from 36 s, held 30 s at 66 s
    f.hold(67, 98, 70); // clear from 67 s, held 30 s at 97 s
    assert_eq!(
        f.summary(),
        [
            (10, Bradycardia, Open, Medium),
            (35, Bradycardia, Escalate, High),
            (66, Bradycardia, Deescalate, Medium),
            (97, Bradycardia, Close, Medium),
        ]
    );
    let ordinals: Vec<u32> = f.out.iter().map(|t| t.ordinal).collect();
    assert_eq!(ordinals, [0, 1, 2, 3]);
    assert_eq!(f.out[3].peak_bpm, Some(38));
}

#[test]
fn lost_signal_is_never_bradycardia_and_is_its_own_technical_alert() {
    let mut f = Feed::new();
    f.hold(0, 5, 70).hold(5, 65, 0); // no signal from 5 s
    f.hold(65, 96, 70); // signal back from 65 s, clear held 30 s at 95 s
    assert_eq!(
        f.summary(),
        [
            (15, SignalLoss, Open, Severity::None),
            (95, SignalLoss, Close, Severity::None)
        ]
    );
    assert!(f.out.iter().all(|t| t.kind.is_technical()));
    assert_eq!(f.out[0].value_bpm, None);
}

#[test]
fn an_open_alert_stays_open_through_signal_loss_and_nothing_new_opens_meanwhile() {
    let mut f = Feed::new();
    f.hold(0, 11, 45); // bradycardia open at 10 s
    f.hold(11, 31, 0); // 20 s without signal
    assert_eq!(
        f.summary(),
        [
            (10, Bradycardia, Open, Medium),
            (21, SignalLoss, Open, Severity::None)
        ]
    );
    // Clear values interrupted by signal loss restart both clear runs.
    f.hold(31, 51, 70).hold(51, 53, 0).hold(53, 82, 70); // 53..81: 28 s
    assert_eq!(f.summary().len(), 2, "nothing may close yet");
    f.hold(82, 84, 70);
    assert_eq!(
        f.summary()[2..],
        [
            (83, Bradycardia, Close, Medium),
            (83, SignalLoss, Close, Severity::None)
        ]
    );
    // Signal loss while a tachycardia builds up resets its onset.
    let mut f = Feed::new();
    f.hold(0, 8, 120).hold(8, 9, 0).hold(9, 18, 120);
    assert!(f.summary().is_empty());
}

#[test]
fn severity_at_onset_is_the_band_that_held_for_the_whole_onset() {
    let mut f = Feed::new();
    f.hold(0, 10, 45).hold(10, 11, 38); // one high reading at the end
    assert_eq!(f.summary(), [(10, Bradycardia, Open, Medium)]);
    let mut f = Feed::new();
    f.hold(0, 10, 35).hold(10, 11, 45); // high until the last reading
    assert_eq!(f.summary(), [(10, Bradycardia, Open, Medium)]);
    let mut f = Feed::new();
    f.hold(0, 11, 35);
    assert_eq!(f.summary(), [(10, Bradycardia, Open, High)]);
}

#[test]
fn a_high_alert_back_between_threshold_and_clear_band_deescalates_and_stays_open() {
    let mut f = Feed::new();
    f.hold(0, 11, 35).hold(11, 42, 52); // 52 from 11 s, held 30 s at 41 s
    assert_eq!(
        f.summary(),
        [
            (10, Bradycardia, Open, High),
            (41, Bradycardia, Deescalate, Medium)
        ]
    );
}

#[test]
fn a_silent_device_goes_offline_after_the_delay_and_its_next_reading_clears_it() {
    let mut f = Feed::new();
    f.hold(0, 10, 70);
    let last = f.alerts.last_received_ms().unwrap();
    assert_eq!(f.alerts.silence(&f.rules, last + 29_999), None);
    let open = f.alerts.silence(&f.rules, last + 45_000).unwrap();
    assert_eq!((open.kind, open.transition), (DeviceOffline, Open));
    assert_eq!(open.at_ms, last + 30_000, "opened when the delay ran out");
    assert_eq!((open.origin.epoch, open.origin.seq), (1, 9));
    assert_eq!(f.alerts.silence(&f.rules, last + 90_000), None, "once");
    assert_eq!(f.alerts.open_live(), [DeviceOffline]);
    f.hold(100, 101, 70);
    assert_eq!(f.summary(), [(100, DeviceOffline, Close, Severity::None)]);
    assert_eq!(f.out[0].origin, open.origin);
    assert!(f.alerts.open_live().is_empty());
}

#[test]
fn a_last_will_opens_offline_at_once_unless_a_newer_reading_came() {
    let mut f = Feed::new();
    f.hold(0, 10, 70);
    let last = f.alerts.last_received_ms().unwrap();
    // Older than the newest reading's device time (second 9): stale.
    assert_eq!(f.alerts.went_offline(1, T0 + 8_999), None, "stale will");
    assert_eq!(
        f.alerts.went_offline(0, last + 500),
        None,
        "an earlier run's will"
    );
    let open = f.alerts.went_offline(1, last + 500).unwrap();
    assert_eq!((open.kind, open.at_ms), (DeviceOffline, last + 500));
    assert_eq!(f.alerts.went_offline(1, last + 900), None);
    // A device never heard from cannot go offline.
    assert_eq!(DeviceAlerts::default().went_offline(1, last), None);
    assert_eq!(DeviceAlerts::default().silence(&f.rules, last), None);
}

#[test]
fn backfilled_readings_make_retrospective_alerts_and_never_touch_live_ones() {
    let mut f = Feed::new();
    f.hold(100, 111, 120); // live tachycardia open at 110 s
    for s in 0..40 {
        f.reading(s, 45, true); // an older bradycardia from a backlog
    }
    for s in 40..71 {
        f.reading(s, 70, true);
    }
    let s = f.summary();
    assert_eq!(
        s,
        [
            (110, Tachycardia, Open, Medium),
            (10, Bradycardia, Open, Medium),
            (70, Bradycardia, Close, Medium)
        ]
    );
    assert!(!f.out[0].retrospective);
    assert!(f.out[1].retrospective && f.out[2].retrospective);
    assert_eq!(f.alerts.open_live(), [Tachycardia]);
}

#[test]
fn live_evaluation_never_goes_backwards_in_device_time() {
    let mut f = Feed::new();
    f.hold(100, 105, 45);
    f.hold(101, 104, 70); // a little out of order: stored, not evaluated
    f.hold(105, 111, 45);
    assert_eq!(f.summary(), [(110, Bradycardia, Open, Medium)]);
}

#[test]
fn a_clock_set_back_restarts_the_runs_instead_of_stopping_evaluation() {
    let mut f = Feed::new();
    f.hold(1000, 1005, 45);
    f.hold(100, 110, 45); // the device's clock went back 900 s: 9 s held anew
    assert!(f.summary().is_empty());
    f.hold(110, 111, 45);
    assert_eq!(f.summary(), [(110, Bradycardia, Open, Medium)]);
}

#[test]
fn a_retrospective_alert_still_open_when_its_backlog_ends_closes_there() {
    let mut f = Feed::new();
    for s in 0..40 {
        f.reading(s, 45, true); // a backlog that ends inside a bradycardia
    }
    f.hold(100, 101, 70); // live data, past the backlog's end
    let s = f.summary();
    assert_eq!(
        s,
        [
            (10, Bradycardia, Open, Medium),
            (39, Bradycardia, Close, Medium)
        ]
    );
    assert!(f.out.iter().all(|t| t.retrospective));
    assert_eq!(f.out[1].ordinal, 1);
}

#[test]
fn a_stored_state_resumes_an_episode_exactly_where_it_was() {
    let mut whole = Feed::new();
    whole.hold(0, 5, 45).hold(5, 60, 45).hold(60, 95, 70);
    let mut first = Feed::new();
    first.hold(0, 5, 45);
    let json = serde_json::to_string(&first.alerts).unwrap();
    let mut second = Feed::new();
    second.alerts = serde_json::from_str(&json).unwrap();
    second.seq = first.seq;
    second.hold(5, 60, 45).hold(60, 95, 70);
    assert_eq!(second.out, whole.out);
    assert_eq!(whole.summary().len(), 2);
}

#[test]
fn the_readme_timeline_is_what_the_machine_does() {
    let mut f = Feed::new();
    f.hold(0, 30, 70)
        .hold(30, 50, 45)
        .hold(50, 61, 38)
        .hold(61, 100, 45)
        .hold(100, 130, 52)
        .hold(130, 161, 60);
    assert_eq!(
        f.summary(),
        [
            (40, Bradycardia, Open, Medium),
            (60, Bradycardia, Escalate, High),
            (91, Bradycardia, Deescalate, Medium),
            (160, Bradycardia, Close, Medium),
        ]
    );
    assert_eq!(f.out[0].origin.ts_ms, T0 + 30_000);
}

#[test]
fn each_offline_episode_has_an_origin_of_its_own() {
    let mut f = Feed::new();
    f.hold(0, 10, 70);
    let last = f.alerts.last_received_ms().unwrap();
    let first = f.alerts.silence(&f.rules, last + 30_000).unwrap();
    f.reading(40, 70, true); // a backfilled reading also shows the device is back
    assert_eq!(f.out.last().unwrap().transition, Close);
    let last = f.alerts.last_received_ms().unwrap();
    let second = f.alerts.silence(&f.rules, last + 30_000).unwrap();
    assert_ne!(first.origin, second.origin);
}

#[test]
fn a_quiet_devices_state_is_small_and_reads_back_the_same() {
    let mut f = Feed::new();
    f.hold(0, 20, 70);
    let json = serde_json::to_string(&f.alerts).unwrap();
    assert!(json.len() < 160, "{} bytes: {json}", json.len());
    let back: DeviceAlerts = serde_json::from_str(&json).unwrap();
    assert_eq!(back, f.alerts);
    // Mid-episode, everything needed to go on is there.
    f.hold(20, 25, 45);
    let json = serde_json::to_string(&f.alerts).unwrap();
    assert_eq!(
        serde_json::from_str::<DeviceAlerts>(&json).unwrap(),
        f.alerts
    );
}

#[test]
fn readings_taken_before_a_last_will_do_not_close_it_but_later_ones_do() {
    let mut f = Feed::new();
    f.hold(0, 10, 70);
    // Readings up to second 14 were sent; the will (bridge time 15 s) overtakes
    // the last five on their way to the collector.
    let open = f.alerts.went_offline(1, T0 + 15_000).unwrap();
    assert_eq!(open.transition, Open);
    f.hold(10, 15, 70);
    assert!(
        f.out.is_empty(),
        "taken before the will: the device is still gone"
    );
    assert!(f.alerts.is_offline());
    f.hold(20, 21, 70); // taken after the will: back
    assert_eq!(f.summary(), [(20, DeviceOffline, Close, Severity::None)]);
    // After a restart (a new epoch), any reading closes a will's alert.
    let mut f = Feed::new();
    f.hold(0, 10, 70);
    f.alerts.went_offline(1, T0 + 15_000).unwrap();
    let o = Observation {
        epoch: 2,
        seq: 0,
        ts_ms: T0 + 12_000, // a clock behind: the epoch tells
        received_ms: T0 + 30_000,
        bpm: 70,
        status: Status::Normal,
        backfill: false,
    };
    let t = f.alerts.observe(&f.rules, &o);
    assert_eq!((t[0].kind, t[0].transition), (DeviceOffline, Close));
}
