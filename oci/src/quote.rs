//! Quoting untrusted text in messages.
//!
//! Error messages quote what they refuse: a tag, a repository, a file name. That text
//! may come from a forged imageset or a careless config, and may be megabytes long
//! (one 50 MB image name once made 150 MB of stderr): every quote goes through
//! [`clip`], which keeps a recognisable head and says how long the whole was.

use std::fmt;

/// Longest quoted text kept whole, in characters.
pub const QUOTE_CHARS: usize = 120;

/// `text`, debug-quoted (control characters escaped), cut after [`QUOTE_CHARS`]
/// characters with the full length appended: `"aaaa…" (52428800 bytes)`.
pub fn clip(text: &str) -> Clipped<'_> {
    Clipped(text)
}

/// A quote of untrusted text that is never longer than a few hundred bytes when
/// displayed; see [`clip`].
#[derive(Clone, Copy)]
pub struct Clipped<'a>(&'a str);

impl fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(QUOTE_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
}

impl fmt::Debug for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An owned [`clip`] of `text`, for error values that outlive their input.
pub fn clipped(text: &str) -> String {
    clip(text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_quoted_whole() {
        assert_eq!(clipped("a\"b\n"), r#""a\"b\n""#);
    }

    #[test]
    fn long_text_is_cut_and_its_length_given() {
        let long = "é".repeat(50 << 20);
        let q = clipped(&long);
        assert!(q.len() < 400, "{} bytes", q.len());
        assert!(q.ends_with(&format!("… ({} bytes)", long.len())), "{q}");
        assert!(
            q.starts_with(&format!("\"{}", "é".repeat(QUOTE_CHARS))),
            "{q}"
        );
    }
}
