//! The PROXY protocol header parser: never panics, and read the way the listener reads
//! (exactly as far as it asks), it never asks past the input it was given once the input
//! holds a whole header, never asks for less than it has, and stays within its size bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quic_ingress::net::proxy_protocol::{Parsed, V2_MAX, parse};

fuzz_target!(|data: &[u8]| {
    // The whole input at once: a complete header is never longer than what was given.
    if let Ok(Parsed::Complete(h)) = parse(data) {
        assert!(h.len <= data.len() && h.len <= V2_MAX, "{h:?} from {} bytes", data.len());
    }
    // As the listener reads: start empty, grow to what is asked for.
    let mut have = 0;
    for _ in 0..=V2_MAX {
        match parse(&data[..have]) {
            Err(_) => return,
            Ok(Parsed::Complete(h)) => {
                assert_eq!(h.len, have, "a header read exactly ends where the reads did");
                // The same bytes with anything after them parse to the same header.
                assert_eq!(parse(data), Ok(Parsed::Complete(h)));
                return;
            }
            Ok(Parsed::Incomplete { at_least }) => {
                assert!(at_least > have && at_least <= V2_MAX, "asked for {at_least} having {have}");
                if at_least > data.len() {
                    return;
                }
                have = at_least;
            }
        }
    }
    panic!("no progress");
});
