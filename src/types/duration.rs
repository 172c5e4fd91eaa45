//! Go duration strings (`"10s"`, `"1m30s"`, `"250ms"`), the form Consul uses for every
//! duration in config files, query parameters and JSON bodies.

use std::time::Duration;

/// Why a Go duration did not parse; the message names the text, as Go's does. Callers only
/// ever report it (each wraps it in the field it was reading), so it is one kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DurationError(String);

/// Parses a Go duration. A bare number is rejected, as Go's `time.ParseDuration` does, except
/// `"0"`. Negative durations are rejected: nothing in concord accepts them.
pub fn parse_go_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(DurationError("empty duration".into()));
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return Err(DurationError(format!("invalid duration {text:?}")));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| DurationError(format!("invalid duration {text:?}")))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(DurationError(format!("missing unit in duration {text:?}"))),
            unit => {
                return Err(DurationError(format!(
                    "unknown unit {unit:?} in duration {text:?}"
                )))
            }
        };
        rest = &rest[unit_len..];
        total += number * unit_seconds;
    }
    Duration::try_from_secs_f64(total)
        .map_err(|_| DurationError(format!("duration {text:?} is out of range")))
}

/// Formats a duration exactly as Go's `time.Duration.String` does, because Consul's JSON and
/// messages carry Go's text: `0s`; below a second, one unit chosen by size with a decimal
/// fraction (`1ns`, `1.1µs` with U+00B5 as Go writes it, `2.2ms`); from a second up,
/// `[<h>h][<m>m]<s>[.<fraction>]s` with minutes shown whenever hours are (`1h0m0s`).
/// Fractions print without trailing zeros. Go's durations end at about 292 years; longer
/// ones print the same way with more hours.
pub fn format_go_duration(duration: Duration) -> String {
    const MICROSECOND: u128 = 1_000;
    const MILLISECOND: u128 = 1_000_000;
    const SECOND: u128 = 1_000_000_000;
    const MINUTE: u128 = 60 * SECOND;
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < MICROSECOND {
        return format!("{nanos}ns");
    }
    if nanos < MILLISECOND {
        return format!("{}µs", decimal(nanos, MICROSECOND));
    }
    if nanos < SECOND {
        return format!("{}ms", decimal(nanos, MILLISECOND));
    }
    let minutes = nanos / MINUTE;
    let (hours, minutes) = (minutes / 60, minutes % 60);
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&format!("{}s", decimal(nanos % MINUTE, SECOND)));
    out
}

/// `value / unit` in decimal without trailing zeros; `unit` is a power of ten.
fn decimal(value: u128, unit: u128) -> String {
    let (whole, fraction) = (value / unit, value % unit);
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = unit.ilog10() as usize;
    let fraction = format!("{fraction:0digits$}");
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_forms() {
        assert_eq!(parse_go_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_malformed_durations() {
        for bad in ["", "10", "s", "10x", "-5s", "1e9s", "abc"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    const NANOSECOND: Duration = Duration::from_nanos(1);
    const MICROSECOND: Duration = Duration::from_micros(1);
    const MILLISECOND: Duration = Duration::from_millis(1);
    const SECOND: Duration = Duration::from_secs(1);
    const MINUTE: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);

    /// Go's own cases: `durationTests` in `time/time_test.go` (the non-negative ones) and
    /// `ExampleDuration_String`.
    #[test]
    fn formats_gos_documented_examples() {
        let cases = [
            ("0s", Duration::ZERO),
            ("1ns", NANOSECOND),
            ("1.1µs", 1100 * NANOSECOND),
            ("2.2ms", 2200 * MICROSECOND),
            ("3.3s", 3300 * MILLISECOND),
            ("4m5s", 4 * MINUTE + 5 * SECOND),
            ("4m5.001s", 4 * MINUTE + 5001 * MILLISECOND),
            ("5h6m7.001s", 5 * HOUR + 6 * MINUTE + 7001 * MILLISECOND),
            ("8m0.000000001s", 8 * MINUTE + NANOSECOND),
            (
                "2562047h47m16.854775807s",
                Duration::from_nanos(i64::MAX as u64),
            ),
            ("1h2m0.3s", HOUR + 2 * MINUTE + 300 * MILLISECOND),
            ("300ms", 300 * MILLISECOND),
        ];
        for (expected, duration) in cases {
            assert_eq!(format_go_duration(duration), expected, "{duration:?}");
        }
    }

    #[test]
    fn below_a_second_the_unit_goes_by_size_with_a_fraction() {
        assert_eq!(format_go_duration(999 * NANOSECOND), "999ns");
        assert_eq!(format_go_duration(5 * MICROSECOND), "5µs");
        assert_eq!(format_go_duration(1500 * MICROSECOND), "1.5ms");
        assert_eq!(format_go_duration(1_500_001 * NANOSECOND), "1.500001ms");
        assert_eq!(format_go_duration(250 * MILLISECOND), "250ms");
        assert_eq!(format_go_duration(999_999_999 * NANOSECOND), "999.999999ms");
    }

    #[test]
    fn from_a_second_up_hours_and_minutes_lead_and_minutes_show_with_hours() {
        assert_eq!(format_go_duration(SECOND), "1s");
        assert_eq!(format_go_duration(1500 * MILLISECOND), "1.5s");
        assert_eq!(format_go_duration(MINUTE), "1m0s");
        assert_eq!(format_go_duration(90 * SECOND), "1m30s");
        assert_eq!(format_go_duration(HOUR), "1h0m0s");
        assert_eq!(format_go_duration(HOUR + 3 * SECOND), "1h0m3s");
        assert_eq!(
            format_go_duration(HOUR + 2 * MINUTE + 3500 * MILLISECOND),
            "1h2m3.5s"
        );
        assert_eq!(format_go_duration(8760 * HOUR), "8760h0m0s");
    }

    #[test]
    fn formats_what_parses_back_to_the_same_duration() {
        for duration in [
            1100 * NANOSECOND,
            1_500_001 * NANOSECOND,
            5 * HOUR + 6 * MINUTE + 7001 * MILLISECOND,
        ] {
            assert_eq!(
                parse_go_duration(&format_go_duration(duration)),
                Ok(duration)
            );
        }
    }

    #[test]
    fn durations_longer_than_gos_still_format() {
        assert!(format_go_duration(Duration::MAX).ends_with('s'));
    }
}

/// Formats seconds since the Unix epoch as RFC 3339 in UTC (`2018-05-21T16:33:28Z`), the form
/// Consul prints times in. Days-to-civil conversion after Howard Hinnant's published algorithm.
pub fn format_rfc3339(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let seconds = unix_secs.rem_euclid(86_400);
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// Seconds since the Unix epoch (0 for an earlier time).
pub fn unix_secs(time: std::time::SystemTime) -> i64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// Now, in seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    unix_secs(std::time::SystemTime::now())
}

#[cfg(test)]
mod rfc3339_tests {
    use super::format_rfc3339;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_526_920_408), "2018-05-21T16:33:28Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
