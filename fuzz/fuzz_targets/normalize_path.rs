//! Path normalisation: never panics, and what it returns is absolute, has no dot-segments
//! or empty segments, and normalises to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quic_ingress::routes::normalize_path;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let Ok(once) = normalize_path(path) else { return };
    assert!(once.starts_with('/'), "{path:?} -> {once:?}");
    assert!(!once.split('/').any(|s| s == "." || s == ".."), "{path:?} -> {once:?}");
    assert!(!once.contains("//"), "{path:?} -> {once:?}");
    let twice = normalize_path(&once).unwrap_or_else(|e| panic!("{path:?} -> {once:?} -> {e}"));
    assert_eq!(once, twice, "not idempotent for {path:?}");
});
