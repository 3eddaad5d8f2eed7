//! Human durations in config files: `500ms`, `10s`, `1m30s`, `2h`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// A duration written as text in YAML (or in a CRD field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) { write!(f, "{}s", ms / 1000) } else { write!(f, "{ms}ms") }
    }
}

/// The longest duration any setting takes: about ten years.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 86_400);

/// Parses `<number><unit>` groups, units `ms`, `s`, `m`, `h` (e.g. `1m30s`, `0.5s`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad =
        || format!("invalid duration {text:?}: expected a number and a unit (ms, s, m, h), like \"10s\" or \"500ms\"");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_len);
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let seconds = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return Err(bad()),
        };
        // An absurd value (`99999999999999h`) is an error, never an overflow.
        let part = Duration::try_from_secs_f64(seconds).map_err(|_| bad())?;
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = tail;
    }
    // Every duration ends up added to a clock reading (`Instant + d` panics on overflow),
    // so an absurd one is refused here rather than crashing a request later.
    if total > MAX_DURATION {
        return Err(format!("duration {text:?} is longer than {} days", MAX_DURATION.as_secs() / 86_400));
    }
    Ok(total)
}

impl<'de> de::Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\" or \"500ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                parse_duration(v).map(HumanDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

impl serde::Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_past_ten_years_are_refused() {
        for text in ["18446744073709551615s18446744073709551615s", "99999999999999999999h", "87840h1ms", "1e300s"] {
            assert!(super::parse_duration(text).is_err(), "{text}");
        }
        assert_eq!(super::parse_duration("87840h"), Ok(super::MAX_DURATION));
    }

    use super::*;

    #[test]
    fn absurd_durations_are_errors_not_panics() {
        assert!(parse_duration("99999999999999d").is_err(), "no such unit");
        assert!(parse_duration("1e400s").is_err());
        assert!(parse_duration("18446744073709551615s18446744073709551615s").is_err(), "the sum overflows");
    }

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in ["", "10", "s", "10x", "ten seconds", "1.2.3s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn displays_round_trip() {
        assert_eq!(HumanDuration(Duration::from_secs(10)).to_string(), "10s");
        assert_eq!(HumanDuration(Duration::from_millis(250)).to_string(), "250ms");
    }
}
