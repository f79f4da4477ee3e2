//! Durations as people write them in a configuration file (`30s`, `5m`, `1h30m`,
//! `1d`), the same in both agents' files.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration written with units (humantime's grammar: `30s`, `5m`, `6h`,
/// `1d`, `1h 30m`). A bare whole number is seconds, so that the fields that
/// were once named `...Seconds` keep their meaning under their old names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

/// Why a duration did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{input:?}: {reason}; expected a duration such as 30s, 5m, 6h or 1d")]
pub struct SpanError {
    /// What was written.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for Span {
    type Err = SpanError;

    fn from_str(input: &str) -> Result<Self, SpanError> {
        let s = input.trim();
        if let Ok(seconds) = s.parse::<u64>() {
            return Ok(Span(Duration::from_secs(seconds)));
        }
        humantime::parse_duration(s).map(Span).map_err(|e| {
            use humantime::DurationError as E;
            let reason = match e {
                E::UnknownUnit { unit, .. } => format!("unknown unit {unit:?}"),
                E::NumberOverflow => "too large".to_string(),
                E::Empty => "empty".to_string(),
                E::InvalidCharacter(_) | E::NumberExpected(_) => "not a duration".to_string(),
            };
            SpanError {
                input: input.to_string(),
                reason,
            }
        })
    }
}

impl Span {
    /// `n` seconds.
    pub const fn secs(n: u64) -> Self {
        Span(Duration::from_secs(n))
    }

    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

impl<'de> serde::Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::text_or_number(
            d,
            "a duration such as 30s, 5m, 6h or 1d, or a number of seconds",
            Span::secs,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_units_and_bare_seconds() {
        let cases = [
            ("30s", 30),
            ("5m", 300),
            ("1h30m", 5400),
            ("1h 30m", 5400),
            ("1d", 86_400),
            ("90", 90),
            (" 7 ", 7),
        ];
        for (text, secs) in cases {
            assert_eq!(text.parse::<Span>(), Ok(Span::secs(secs)), "{text}");
        }
        assert_eq!(
            "250ms".parse::<Span>().unwrap().get(),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn a_mistake_names_what_was_written_and_what_is_expected() {
        for (text, reason) in [
            ("soon", "not a duration"),
            ("5 fortnights", "unknown unit \"fortnights\""),
            ("-5s", "not a duration"),
            ("", "empty"),
            ("99999999999999999999999s", "too large"),
        ] {
            let e = text.parse::<Span>().unwrap_err().to_string();
            assert_eq!(
                e,
                format!("{text:?}: {reason}; expected a duration such as 30s, 5m, 6h or 1d")
            );
        }
    }

    #[test]
    fn reads_from_yaml_as_text_or_a_number_and_prints_back() {
        let s: Span = serde_yaml_ng::from_str("5m").unwrap();
        assert_eq!(s, Span::secs(300));
        let s: Span = serde_yaml_ng::from_str("45").unwrap();
        assert_eq!(s, Span::secs(45));
        assert!(serde_yaml_ng::from_str::<Span>("[1]").is_err());
        assert_eq!(Span::secs(5400).to_string(), "1h 30m");
    }
}
