//! The WebSocket frame decoder and the close seeker on any bytes a client
//! could send: no panic, no read past the input, progress on every frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::wire::frame::{CloseSeeker, Decoded, Decoder};

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new(1 << 16);
    let mut at = 0;
    while at < data.len() {
        match decoder.decode(&data[at..]) {
            Ok(Decoded::Frame(_, used)) => {
                assert!(used > 0 && at + used <= data.len());
                at += used;
            }
            Ok(Decoded::Incomplete) | Err(_) => break,
        }
    }
    let (used, _) = CloseSeeker::default().seek(data);
    assert!(used <= data.len());
});
