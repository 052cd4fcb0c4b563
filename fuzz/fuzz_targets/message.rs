//! The client-message decoder on any text frame: parsed and validated or
//! refused with an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::protocol::{Envelope, Limits};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(envelope) = Envelope::parse(text)
    {
        let _ = envelope.into_message(Limits {
            max_message_chars: 4000,
        });
    }
});
