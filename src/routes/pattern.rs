//! Regular expressions written in routes (RegularExpression paths, header and query
//! matches), compiled once when the table is built, with bounds so that one tenant cannot
//! submit a pattern that costs the proxy memory or time on every request.
//!
//! Every pattern matches the whole value (it is anchored as `^(?:PATTERN)$`), as Envoy's
//! `safe_regex` does; write `/api/.*` rather than `/api/` to match below a path. The
//! `regex` crate runs in time linear in the input, so no pattern backtracks.

use std::fmt;
use std::hash::{Hash, Hasher};

use regex::{Regex, RegexBuilder};

/// Longest pattern accepted, in bytes (Gateway API bounds path values to 1024 too).
pub const MAX_PATTERN_LEN: usize = 1024;
/// Largest compiled program one pattern may make (the crate's default is 10 MiB): a
/// pattern like `a{1000}{1000}` is refused here instead of taking memory per table.
pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// Largest lazy-DFA cache per pattern and thread.
const DFA_SIZE_LIMIT: usize = 512 * 1024;

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("regular expression {pattern:?} is {len} bytes; at most {MAX_PATTERN_LEN} are allowed")]
    TooLong { pattern: String, len: usize },
    #[error("regular expression {pattern:?} is not valid: {reason}")]
    Invalid { pattern: String, reason: String },
}

/// A compiled, anchored pattern. Equal, hashed and ordered by its source text, so rules
/// holding one can be compared when a table is built.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    regex: Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Self, PatternError> {
        if source.len() > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong { pattern: source.chars().take(64).collect(), len: source.len() });
        }
        let regex = RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(DFA_SIZE_LIMIT)
            .build()
            .map_err(|e| PatternError::Invalid { pattern: source.to_string(), reason: one_line(&e.to_string()) })?;
        Ok(Self { source: source.to_string(), regex })
    }

    /// Whether the whole of `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// The regex crate's messages span lines (the pattern, a caret, the reason).
fn one_line(message: &str) -> String {
    message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}
impl Eq for Pattern {}

impl Hash for Pattern {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.source.hash(state);
    }
}

impl PartialOrd for Pattern {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pattern {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.source.cmp(&other.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_the_whole_value() {
        let p = Pattern::new("/v[0-9]+/.*").unwrap();
        assert!(p.is_match("/v2/users"));
        assert!(!p.is_match("/x/v2/users"), "anchored at the start");
        assert!(!Pattern::new("/v[0-9]+").unwrap().is_match("/v2/users"), "anchored at the end");
        assert!(Pattern::new("a|b").unwrap().is_match("b"), "alternation stays inside the anchors");
        assert!(!Pattern::new("a|b").unwrap().is_match("ab"));
    }

    #[test]
    fn bad_or_huge_patterns_are_typed_errors_naming_them() {
        let err = Pattern::new("/(unclosed").unwrap_err();
        assert!(matches!(&err, PatternError::Invalid { pattern, .. } if pattern == "/(unclosed"), "{err}");
        assert!(!err.to_string().contains('\n'));
        // Short to write, but megabytes compiled: refused by the size limit.
        assert!(matches!(Pattern::new("(a{100}){100}[a-z]{100}"), Err(PatternError::Invalid { .. })));
        let long = "a".repeat(MAX_PATTERN_LEN + 1);
        assert!(matches!(Pattern::new(&long), Err(PatternError::TooLong { len, .. }) if len == MAX_PATTERN_LEN + 1));
    }

    #[test]
    fn equality_is_by_source() {
        assert_eq!(Pattern::new("a+").unwrap(), Pattern::new("a+").unwrap());
        assert_ne!(Pattern::new("a+").unwrap(), Pattern::new("a*").unwrap());
    }
}
