//! The vocabulary every Airlock crate shares, and nothing else: the process
//! [`exit_codes`] scripts branch on, the one error for a file that could not
//! be used ([`io::FileError`]), and the units configuration files and
//! flags are written in: [`size`]s (`700MiB`) and [`duration`]s (`30s`, `5m`).
//!
//! Invariants: no I/O, no knowledge of registries, imagesets or either agent;
//! a value's meaning, once published, does not change (scripts depend on it).

pub mod duration;
pub mod exit_codes;
pub mod io;
pub mod size;

/// Reads a value written as text (`700MiB`, `5m`: its `FromStr`) or as a bare
/// whole number (`from_number`), as YAML lets people write either.
fn text_or_number<'de, D, T>(
    d: D,
    expecting: &'static str,
    from_number: fn(u64) -> T,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr<Err: std::fmt::Display>,
{
    struct Visitor<T> {
        expecting: &'static str,
        from_number: fn(u64) -> T,
    }
    impl<T: std::str::FromStr<Err: std::fmt::Display>> serde::de::Visitor<'_> for Visitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
            Ok((self.from_number)(v))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            v.parse().map_err(E::custom)
        }
    }
    d.deserialize_any(Visitor {
        expecting,
        from_number,
    })
}
