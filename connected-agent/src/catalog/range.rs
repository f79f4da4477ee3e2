//! Version ranges as OLM writes them (`skipRange`, `olm.package.required`):
//! blang/semver's syntax, not Cargo's. Comparators separated by spaces must all
//! hold; alternatives are separated by `||`: `>=4.1.0 <4.2.0 || 5.0.0`.

use semver::Version;

/// One comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

/// A parsed range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range(Vec<Vec<(Op, Version)>>);

/// Reads a version as blang does, but tolerating a missing minor or patch
/// (`4.1` is `4.1.0`) and a leading `v`.
fn version(text: &str) -> Result<Version, String> {
    let t = text.trim_start_matches('v');
    let core_end = t.find(['-', '+']).unwrap_or(t.len());
    let dots = t[..core_end].matches('.').count();
    let padded = match dots {
        0 => format!("{}.0.0{}", &t[..core_end], &t[core_end..]),
        1 => format!("{}.0{}", &t[..core_end], &t[core_end..]),
        _ => t.to_string(),
    };
    Version::parse(&padded).map_err(|e| format!("{text:?}: {e}"))
}

impl Range {
    /// Parses `text`; the error names the part that is not a comparator.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut alternatives = Vec::new();
        for alt in text.split("||") {
            let mut all = Vec::new();
            for part in alt.split_whitespace() {
                let (op, rest) = [
                    (">=", Op::Ge),
                    ("<=", Op::Le),
                    ("!=", Op::Ne),
                    ("==", Op::Eq),
                    (">", Op::Gt),
                    ("<", Op::Lt),
                    ("=", Op::Eq),
                ]
                .into_iter()
                .find_map(|(p, op)| part.strip_prefix(p).map(|r| (op, r)))
                .unwrap_or((Op::Eq, part));
                all.push((op, version(rest)?));
            }
            if all.is_empty() {
                return Err(format!("{text:?}: an empty alternative"));
            }
            alternatives.push(all);
        }
        Ok(Range(alternatives))
    }

    /// Whether `v` is in the range.
    pub fn contains(&self, v: &Version) -> bool {
        self.0.iter().any(|all| {
            all.iter().all(|(op, bound)| match op {
                Op::Eq => v == bound,
                Op::Ne => v != bound,
                Op::Gt => v > bound,
                Op::Ge => v >= bound,
                Op::Lt => v < bound,
                Op::Le => v <= bound,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn blang_ranges_as_catalogs_write_them() {
        let r = Range::parse(">=4.1.0 <4.2.0").unwrap();
        assert!(r.contains(&v("4.1.0")) && r.contains(&v("4.1.9")));
        assert!(!r.contains(&v("4.2.0")) && !r.contains(&v("4.0.9")));
        let r = Range::parse("<0.2.0").unwrap();
        assert!(r.contains(&v("0.1.0")) && !r.contains(&v("0.2.0")));
        let r = Range::parse(">=1.0.0 <1.1.4 || 2.0.0").unwrap();
        assert!(r.contains(&v("2.0.0")) && r.contains(&v("1.1.3")));
        assert!(!r.contains(&v("1.5.0")));
        let r = Range::parse(">=4.6 !=4.7.1").unwrap();
        assert!(r.contains(&v("4.7.0")) && !r.contains(&v("4.7.1")));
        assert!(Range::parse(">=one").unwrap_err().contains("\"one\""));
        assert!(Range::parse(">=1.0.0 ||").is_err());
    }
}
