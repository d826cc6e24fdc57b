//! The fields of a recorded row, shared by both formats: timestamps (Unix
//! milliseconds or RFC 3339), RR intervals in milliseconds, strap contact; and the
//! short excerpts of untrusted text that errors quote.

use hb_shared::{Contact, RrIntervals, MAX_RR_INTERVALS};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Longest excerpt of file content quoted in an error, in characters.
const EXCERPT_CHARS: usize = 40;

/// Unix milliseconds (an optionally signed integer) or an RFC 3339 date-time.
pub(super) fn parse_timestamp(s: &str) -> Result<i64, String> {
    let unsigned = s.strip_prefix('-').unwrap_or(s);
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<i64>()
            .map_err(|_| format!("timestamp `{}` is out of range", excerpt(s)));
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!(
            "timestamp `{}` is neither Unix milliseconds nor RFC 3339",
            excerpt(s)
        )
    })
}

/// RFC 3339 `date-time` → Unix milliseconds: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`,
/// `T` also as `t` or a space, `Z` also as `z`; fractions beyond milliseconds are
/// truncated and a leap second `:60` counts as the next minute's `:00`.
fn parse_rfc3339(s: &str) -> Option<i64> {
    // `time` takes any byte between date and time; RFC 3339 names these three.
    if !matches!(s.as_bytes().get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    // `time` takes a leap second only at the end of a UTC month, as 59.999999999 s;
    // a recording's `:60` is read as `:59` plus one second instead, wherever it is.
    // The seconds are always bytes 17..19: every field before them is fixed-width.
    let leap = s.get(17..19) == Some("60");
    let parsed = if leap {
        let mut text = s.to_owned();
        text.replace_range(17..19, "59");
        OffsetDateTime::parse(&text, &Rfc3339)
    } else {
        OffsetDateTime::parse(s, &Rfc3339)
    }
    .ok()?;
    let seconds = parsed.unix_timestamp() + i64::from(leap);
    Some(seconds * 1000 + i64::from(parsed.millisecond()))
}

/// A contact status by name (`detected`, `not_detected`, `not_supported`, any case)
/// or as `1`/`0`; empty means not supported.
pub(super) fn parse_contact(s: &str) -> Result<Contact, String> {
    let is = |name: &str| s.eq_ignore_ascii_case(name);
    if is("detected") || s == "1" {
        Ok(Contact::Detected)
    } else if is("not_detected") || s == "0" {
        Ok(Contact::NotDetected)
    } else if is("not_supported") || s.is_empty() {
        Ok(Contact::NotSupported)
    } else {
        Err(format!("unknown contact `{}`", excerpt(s)))
    }
}

/// Milliseconds written as plain decimal digits with an optional fraction; no
/// sign, exponent, `inf` or `NaN`, which `f64::from_str` would accept.
pub(super) fn parse_decimal_ms(token: &str) -> Result<f64, String> {
    let bad = || {
        format!(
            "RR interval `{}` is not a number of milliseconds",
            excerpt(token)
        )
    };
    let (int, frac) = token.split_once('.').unwrap_or((token, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || token.ends_with('.') {
        return Err(bad());
    }
    token.parse::<f64>().map_err(|_| bad())
}

/// Converts RR milliseconds to 1/1024 s (rounded) and appends them.
pub(super) fn push_rr(rr_1024: &mut RrIntervals, ms: f64) -> Result<(), String> {
    if !ms.is_finite() || ms < 0.0 {
        return Err(format!("RR interval {ms} ms is not a duration"));
    }
    let units = (ms * 1024.0 / 1000.0).round();
    if units > f64::from(u16::MAX) {
        return Err(format!("RR interval {ms} ms is longer than 64 s"));
    }
    rr_1024
        .push(units as u16)
        .map_err(|_| format!("more than {MAX_RR_INTERVALS} RR intervals"))
}

/// At most [`EXCERPT_CHARS`] of untrusted text, so errors stay small.
pub(super) fn excerpt(s: &str) -> String {
    match s.char_indices().nth(EXCERPT_CHARS) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::test_support::rr;
    use proptest::prelude::*;

    /// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
    /// algorithm): an oracle independent of the `time` crate.
    fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    #[test]
    fn rr_milliseconds_become_rounded_1024ths_of_a_second() {
        let mut v = RrIntervals::new();
        for ms in [1000.0, 500.0, 812.0, 830.0, 0.0, 63_999.0] {
            push_rr(&mut v, ms).unwrap();
        }
        // 812 ms × 1.024 = 831.488 → 831; 830 × 1.024 = 849.92 → 850.
        assert_eq!(v, rr(&[1024, 512, 831, 850, 0, 65_535]));
        assert!(push_rr(&mut v, 64_000.0).is_err());
        assert!(push_rr(&mut v, -1.0).is_err());
        assert!(push_rr(&mut v, f64::NAN).is_err());
        for bad in [
            "", ".5", "5.", "1e3", "-5", "+5", "inf", "NaN", "1.2.3", "٣",
        ] {
            assert!(parse_decimal_ms(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_decimal_ms("812.25"), Ok(812.25));
    }

    #[test]
    fn rfc3339_timestamps_agree_with_unix_milliseconds() {
        for (text, ms) in [
            ("2026-01-02T03:04:05.123Z", 1_767_323_045_123),
            ("2026-01-02t03:04:05.123456789z", 1_767_323_045_123),
            ("2026-01-02 04:04:05.1+01:00", 1_767_323_045_100),
            ("2026-01-01T22:34:05-04:30", 1_767_323_045_000),
            ("1970-01-01T00:00:00Z", 0),
            ("1969-12-31T23:59:59.999Z", -1),
            ("2024-02-29T00:00:00Z", 1_709_164_800_000),
            ("2016-12-31T23:59:60Z", 1_483_228_800_000),
            ("1767323045123", 1_767_323_045_123),
            ("-1", -1),
        ] {
            assert_eq!(parse_timestamp(text), Ok(ms), "{text}");
        }
    }

    #[test]
    fn invalid_timestamps_are_rejected() {
        for text in [
            "",
            "-",
            "2025-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:60:00Z",
            "2026-01-01T00:00:61Z",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00+1:00",
            "2026-01-01T00:00:00+24:00",
            "2026-01-01T00:00:00Zjunk",
            "2026-1-01T00:00:00Z",
            "1764000000000.5",
            "99999999999999999999",
            "yesterday",
        ] {
            assert!(parse_timestamp(text).is_err(), "{text}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_timestamps_never_panic(s in "\\PC{0,40}") {
            let _ = parse_timestamp(&s);
        }

        #[test]
        fn rfc3339_rows_of_well_formed_dates_parse(
            y in 0u32..10_000, mo in 1u32..=12, d in 1u32..=28, h in 0u32..24, mi in 0u32..60,
            s in 0u32..60, ms in 0u32..1000,
        ) {
            let text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z");
            let parsed = parse_timestamp(&text).unwrap();
            let day_ms = i64::from(((h * 60 + mi) * 60 + s) * 1000 + ms);
            prop_assert_eq!(parsed - day_ms, days_from_civil(i64::from(y), mo, d) * 86_400_000);
        }
    }
}
