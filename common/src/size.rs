//! Byte sizes as people write them on a command line (`700MiB`, `4GiB`, `650MB`).

use std::fmt;
use std::str::FromStr;

/// A size in bytes, parsed from a number with an optional unit.
///
/// Binary units (`KiB`, `MiB`, `GiB`, `TiB`) are powers of 1024 and decimal units
/// (`KB`, `MB`, `GB`, `TB`) powers of 1000, as printed on removable media, so a
/// "700MB" CD limit and a "700MiB" limit differ by 34 MB, as they do in reality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// Why a size did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    /// Empty input.
    #[error("empty size: expected a number with an optional unit such as 700MiB")]
    Empty,
    /// The number part is missing or malformed.
    #[error(
        "invalid size {0:?}: expected a whole number with an optional unit (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
    )]
    Number(String),
    /// The unit is not one of the known units.
    #[error(
        "invalid size {input:?}: unknown unit {unit:?}, expected one of B, KiB, MiB, GiB, TiB, KB, MB, GB, TB"
    )]
    Unit {
        /// The whole input.
        input: String,
        /// The unit as written.
        unit: String,
    },
    /// The value does not fit in 64 bits.
    #[error("invalid size {0:?}: too large")]
    Overflow(String),
}

const UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
];

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(input: &str) -> Result<Self, SizeError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(SizeError::Empty);
        }
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        if number.is_empty() {
            return Err(SizeError::Number(input.to_string()));
        }
        let number: u64 = number
            .parse()
            .map_err(|_| SizeError::Overflow(input.to_string()))?;
        let unit = unit.trim();
        let factor = if unit.is_empty() {
            1
        } else {
            UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, factor)| *factor)
                .ok_or_else(|| SizeError::Unit {
                    input: input.to_string(),
                    unit: unit.to_string(),
                })?
        };
        number
            .checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| SizeError::Overflow(input.to_string()))
    }
}

impl ByteSize {
    /// `n` GiB, as oc-mirror's `archiveSize` counts.
    pub fn gib(n: u64) -> Option<Self> {
        n.checked_mul(1 << 30).map(ByteSize)
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::text_or_number(d, "a size such as 700MiB, or a number of bytes", ByteSize)
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that keeps at least one whole unit, with one decimal,
    /// so logs read "1.4 GiB" rather than a twelve-digit number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        let units = [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, factor) in units {
            if b >= factor {
                return write!(f, "{:.1} {name}", b as f64 / factor as f64);
            }
        }
        write!(f, "{b} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_unit() {
        let cases = [
            ("123", 123),
            ("123B", 123),
            ("2KiB", 2048),
            ("700MiB", 700 * 1024 * 1024),
            ("4GiB", 4 << 30),
            ("1TiB", 1 << 40),
            ("2KB", 2000),
            ("650MB", 650_000_000),
            ("4GB", 4_000_000_000),
            ("1TB", 1_000_000_000_000),
            (" 10 MiB ", 10 << 20),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<ByteSize>(), Ok(ByteSize(want)), "{input}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_size() {
        assert_eq!("".parse::<ByteSize>(), Err(SizeError::Empty));
        assert!(matches!(
            "MiB".parse::<ByteSize>(),
            Err(SizeError::Number(_))
        ));
        assert!(matches!(
            "1.5GiB".parse::<ByteSize>(),
            Err(SizeError::Unit { .. })
        ));
        assert!(matches!(
            "10mb".parse::<ByteSize>(),
            Err(SizeError::Unit { .. })
        ));
        assert!(matches!(
            "99999999999999TiB".parse::<ByteSize>(),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn reads_from_yaml_as_text_or_bytes() {
        let s: ByteSize = serde_yaml_ng::from_str("700MiB").unwrap();
        assert_eq!(s, ByteSize(700 << 20));
        let s: ByteSize = serde_yaml_ng::from_str("4096").unwrap();
        assert_eq!(s, ByteSize(4096));
        let e = serde_yaml_ng::from_str::<ByteSize>("700XB").unwrap_err();
        assert!(e.to_string().contains("unknown unit \"XB\""), "{e}");
    }

    #[test]
    fn displays_in_binary_units() {
        assert_eq!(ByteSize(512).to_string(), "512 B");
        assert_eq!(ByteSize(1536).to_string(), "1.5 KiB");
        assert_eq!(ByteSize(700 << 20).to_string(), "700.0 MiB");
    }
}
