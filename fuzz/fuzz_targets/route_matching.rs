//! Route matching: a table built from arbitrary host/path rules, looked up with arbitrary
//! hosts and paths, never panics; a lookup only finds a rule whose path matches.
//!
//! Input: lines. `R <type> <host|-> <path>` adds a rule (type `E`xact, `P`refix or
//! `X` RegularExpression; a host written `~*.a.com` is a Gateway API wildcard of any
//! depth), any other line is a lookup `<host|-> <path>`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quic_ingress::routes::{HostIndex, HostRule, PathRule, PathType};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut index: HostIndex<PathRule> = HostIndex::default();
    for line in text.lines().take(200) {
        let mut words = line.splitn(4, ' ');
        match words.next() {
            Some("R") => {
                let (Some(ty), Some(host), Some(path)) = (words.next(), words.next(), words.next()) else { continue };
                let ty = match ty {
                    "E" => PathType::Exact,
                    "X" => PathType::RegularExpression,
                    _ => PathType::Prefix,
                };
                let parsed = match host.strip_prefix('~') {
                    Some(h) => HostRule::parse_gateway(h),
                    None => HostRule::parse(host),
                };
                let host = match host {
                    "-" => None,
                    _ => match parsed {
                        Ok(h) => Some(h),
                        Err(_) => continue,
                    },
                };
                let Ok(rule) = PathRule::new(path, ty) else { continue };
                let _ = index.insert(host.as_ref(), rule.clone(), rule);
            }
            Some(host) => {
                let path = words.collect::<Vec<_>>().join(" ");
                let host = (host != "-").then_some(host);
                if let Some(rule) = index.lookup(host, &path) {
                    let bare = path.split('?').next().unwrap_or("");
                    assert!(rule.matches(bare), "{rule:?} returned for {path:?}");
                }
            }
            None => {}
        }
    }
});
