//! Request-path normalisation before routing, so that the path a route matches is the path
//! the backend resolves: `/public/../admin` must not pass a `/public` rule and then reach
//! `/admin` at the backend.
//!
//! The policy (Envoy's `normalize_path: true`, `merge_slashes: true` and
//! `path_with_escaped_slashes_action: REJECT_REQUEST`):
//! - percent-encoded unreserved characters (`ALPHA DIGIT - . _ ~`) are decoded, and the hex
//!   digits of every other escape are upper-cased (RFC 3986 6.2.2.1, 6.2.2.2);
//! - runs of `/` are merged into one;
//! - dot-segments are removed (RFC 3986 5.2.4); `..` above the root stays at the root;
//! - rejected (the caller answers 400): an encoded `/` or `\` (`%2F`, `%5C`), since backends
//!   disagree on whether they separate segments; a raw `\`, which some servers treat as
//!   `/`; a malformed escape (`%zz`, `%4`); a path not starting with `/`.
//!
//! The query is not part of the path and is left alone. The result is idempotent:
//! normalising a normalised path changes nothing.

use std::borrow::Cow;

/// Why a path cannot be normalised safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with '/'")]
    NotAbsolute,
    #[error("malformed percent-escape in the path")]
    BadEscape,
    #[error("an encoded '/' or '\\' (%2F, %5C) in the path")]
    EncodedSlash,
    #[error("a backslash in the path")]
    Backslash,
}

/// Normalises a request path (without its query); borrows when it is already normal.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    Ok(Cow::Owned(remove_dot_segments(&merge_slashes(&decoded))))
}

/// Normalises the path of a `path?query` string and puts the query back unchanged.
pub fn normalize_path_and_query(path_and_query: &str) -> Result<Cow<'_, str>, PathError> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    Ok(match (normalize_path(path)?, query) {
        (Cow::Borrowed(_), _) => Cow::Borrowed(path_and_query),
        (Cow::Owned(p), None) => Cow::Owned(p),
        (Cow::Owned(p), Some(q)) => Cow::Owned(format!("{p}?{q}")),
    })
}

/// The fast path: no escapes, no empty segments, no dot-segments.
fn is_normal(path: &str) -> bool {
    !path.contains('%') && !path.contains("//") && path.split('/').all(|seg| seg != "." && seg != "..")
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes escapes of unreserved characters, upper-cases the rest, refuses `%2F`/`%5C`.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            // Copy up to the next escape as text: '%' is ASCII, so this splits on a char
            // boundary even in a non-ASCII path.
            let end = path[i..].find('%').map_or(path.len(), |n| i + n);
            out.push_str(&path[i..end]);
            i = end;
            continue;
        }
        let (Some(&hi), Some(&lo)) = (bytes.get(i + 1), bytes.get(i + 2)) else { return Err(PathError::BadEscape) };
        let (Some(h), Some(l)) = (hex(hi), hex(lo)) else { return Err(PathError::BadEscape) };
        let decoded = h << 4 | l;
        match decoded {
            b'/' | b'\\' => return Err(PathError::EncodedSlash),
            d if is_unreserved(d) => out.push(char::from(d)),
            _ => {
                out.push('%');
                out.push(char::from(hi.to_ascii_uppercase()));
                out.push(char::from(lo.to_ascii_uppercase()));
            }
        }
        i += 3;
    }
    Ok(out)
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// RFC 3986 5.2.4 over an absolute path, segment by segment.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    // Segments after the leading '/'; a last "." or ".." leaves a trailing '/'.
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                kept.pop();
                trailing_slash = i == last;
            }
            s => {
                kept.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for seg in &kept {
        out.push('/');
        out.push_str(seg);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize_path(p).map(Cow::into_owned)
    }

    #[test]
    fn the_traversal_corpus_cannot_leave_its_prefix_unseen() {
        assert_eq!(norm("/public/../admin"), Ok("/admin".into()));
        assert_eq!(norm("/public/%2e%2e/admin"), Ok("/admin".into()));
        assert_eq!(norm("/public/%2E%2E/admin"), Ok("/admin".into()));
        assert_eq!(norm("/public/.%2e/admin"), Ok("/admin".into()));
        assert_eq!(norm("/public/..%2fadmin"), Err(PathError::EncodedSlash));
        assert_eq!(norm("/public/..%5cadmin"), Err(PathError::EncodedSlash));
        assert_eq!(norm("/public/..\\admin"), Err(PathError::Backslash));
        assert_eq!(norm("//admin"), Ok("/admin".into()));
        assert_eq!(norm("/public//..//admin"), Ok("/admin".into()));
    }

    #[test]
    fn dot_segments_follow_rfc_3986() {
        for (input, want) in [
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/a/.", "/a/"),
            ("/a/..", "/"),
            ("/a/./b/", "/a/b/"),
            ("/.", "/"),
            ("/a/b/..", "/a/"),
            ("/a/...", "/a/..."),
            ("/a/.b/..c", "/a/.b/..c"),
        ] {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(norm("/%7Euser/%41%62c-%5f"), Ok("/~user/Abc-_".into()));
        assert_eq!(norm("/a%20b/%c3%a9"), Ok("/a%20b/%C3%A9".into()));
        assert_eq!(norm("/q%3fx"), Ok("/q%3Fx".into()), "an encoded '?' stays in the path");
        assert_eq!(norm("/%00"), Ok("/%00".into()));
    }

    #[test]
    fn malformed_paths_are_refused() {
        for bad in ["/%", "/%4", "/%zz", "/a%g0", "/%%41"] {
            assert_eq!(norm(bad), Err(PathError::BadEscape), "{bad}");
        }
        assert_eq!(norm("admin"), Err(PathError::NotAbsolute));
        assert_eq!(norm(""), Err(PathError::NotAbsolute));
        assert_eq!(norm("*"), Err(PathError::NotAbsolute));
        assert_eq!(norm("/a%2Fb"), Err(PathError::EncodedSlash), "GitLab-style ids are refused, not guessed");
    }

    #[test]
    fn normal_paths_are_borrowed_and_merged_slashes_collapse() {
        for p in ["/", "/api/v1/users", "/a/b/", "/a.b/c..d/.e"] {
            assert!(matches!(normalize_path(p), Ok(Cow::Borrowed(_))), "{p}");
        }
        assert_eq!(norm("///a////b//"), Ok("/a/b/".into()));
    }

    #[test]
    fn the_query_is_kept_as_sent() {
        assert_eq!(normalize_path_and_query("/a/../b?x=/../%2F&y").as_deref(), Ok("/b?x=/../%2F&y"));
        assert_eq!(normalize_path_and_query("/b?x=1").as_deref(), Ok("/b?x=1"));
        assert_eq!(normalize_path_and_query("/a/./b").as_deref(), Ok("/a/b"));
        assert_eq!(normalize_path_and_query("//a?"), Ok(Cow::Owned("/a?".into())));
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for p in ["/a/%2e%2e/%2E/b//c/..", "/%7e/./x/../y/", "//../a%20/%61", "/x/.../..../"] {
            let once = norm(p).unwrap();
            assert_eq!(norm(&once).as_deref(), Ok(once.as_str()), "{p}");
            assert!(!once.split('/').any(|s| s == "." || s == ".."), "{p} -> {once}");
        }
    }
}
