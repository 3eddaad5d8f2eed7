//! The ClientHello parser that looks for the early_data extension: never panics on any
//! bytes, and a longer prefix of a complete message gives the same answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quic_ingress::proxy::fuzz_hooks::offers_early_data;

fuzz_target!(|data: &[u8]| {
    if let Some(answer) = offers_early_data(data) {
        let mut longer = data.to_vec();
        longer.extend_from_slice(&[0; 16]);
        assert_eq!(offers_early_data(&longer), Some(answer), "trailing bytes changed the answer");
    }
});
