//! The opening-handshake parser on any bytes a connection could start with.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::wire::handshake::{self, Opening};

fuzz_target!(|data: &[u8]| {
    if let Opening::WebSocket(upgrade, used) = handshake::classify(data) {
        assert!(used <= data.len());
        assert_eq!(upgrade.key.len(), 24);
    }
});
