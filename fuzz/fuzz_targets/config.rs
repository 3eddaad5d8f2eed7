//! The standalone YAML config: parsing and validating any text never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = quic_ingress::config::parse("fuzz.yaml", text) {
        let _ = config.validate();
    }
});
