//! What a client or the network can hand the parsers, generated at random:
//! the frame decoder, the handshake parser and the client-message decoder
//! never panic, never read past their input, and take back what a valid
//! sender sends. (The same three are cargo-fuzz targets under `fuzz/`, for
//! a longer run with a nightly toolchain.)

use proptest::prelude::*;
use roomcast::protocol::{Envelope, Limits};
use roomcast::wire::frame::{CloseSeeker, Decoded, Decoder, Incoming, encode_frame};
use roomcast::wire::handshake::{self, Opening};

/// Decodes `bytes` to the end as the session does; every step consumes
/// something and stays inside the input.
fn decode_all(bytes: &[u8], max: usize) -> Result<Vec<Incoming>, TestCaseError> {
    let mut decoder = Decoder::new(max);
    let mut at = 0;
    let mut messages = Vec::new();
    while at < bytes.len() {
        match decoder.decode(&bytes[at..]) {
            Ok(Decoded::Incomplete) | Err(_) => break,
            Ok(Decoded::Frame(message, used)) => {
                prop_assert!(used > 0 && at + used <= bytes.len());
                at += used;
                messages.extend(message);
            }
        }
    }
    Ok(messages)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_frame_decoder_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        decode_all(&bytes, 256)?;
        // The close seeker too, used after a framing error.
        let (used, _) = CloseSeeker::default().seek(&bytes);
        prop_assert!(used <= bytes.len());
    }

    #[test]
    fn fragmented_messages_come_back_whole(
        text in "\\PC{0,200}",
        cuts in proptest::collection::vec(0usize..200, 0..6),
        mask in any::<[u8; 4]>(),
    ) {
        let data = text.as_bytes();
        let mut bounds: Vec<usize> = cuts.into_iter().map(|cut| cut.min(data.len())).collect();
        bounds.push(0);
        bounds.push(data.len());
        bounds.sort_unstable();
        bounds.dedup();
        let pieces: Vec<&[u8]> = if bounds.len() < 2 {
            vec![data]
        } else {
            bounds.windows(2).map(|w| &data[w[0]..w[1]]).collect()
        };
        let mut bytes = Vec::new();
        for (n, piece) in pieces.iter().enumerate() {
            let opcode = if n == 0 { 0x1 } else { 0x0 };
            let fin = if n + 1 == pieces.len() { 0x80 } else { 0 };
            bytes.extend_from_slice(&encode_frame(fin | opcode, piece, Some(mask)));
        }
        let messages = decode_all(&bytes, 4096)?;
        prop_assert_eq!(messages, vec![Incoming::Text(text)]);
    }

    #[test]
    fn the_handshake_parser_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = handshake::classify(&bytes);
    }

    #[test]
    fn upgrade_requests_with_any_header_values_are_judged(
        key in "[ -~]{0,30}",
        version in "[ -~]{0,4}",
        token in "[ -~]{0,40}",
    ) {
        let request = format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n"
        );
        match handshake::classify(request.as_bytes()) {
            Opening::WebSocket(upgrade, used) => {
                prop_assert!(used <= request.len());
                prop_assert_eq!(upgrade.key.len(), 24);
                prop_assert_eq!(version.trim(), "13");
            }
            Opening::Invalid(_) | Opening::Http | Opening::Incomplete => {}
        }
    }

    #[test]
    fn the_client_message_decoder_takes_any_text(text in "\\PC{0,300}") {
        if let Ok(envelope) = Envelope::parse(&text) {
            let _ = envelope.into_message(Limits { max_message_chars: 4000 });
        }
    }

    #[test]
    fn json_objects_of_any_shape_are_answered(
        kind in prop_oneof![
            Just("chat_message"), Just("room_join"), Just("presence_subscribe"),
            Just("authentication"), Just("user_join"), Just("history"), Just("ai_request"),
            Just("nonsense"),
        ],
        field in "[a-z_]{1,12}",
        value in prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(serde_json::Value::from),
            "\\PC{0,40}".prop_map(serde_json::Value::from),
            proptest::collection::vec(any::<u32>(), 0..4).prop_map(serde_json::Value::from),
        ],
    ) {
        let frame = serde_json::json!({"type": kind, field: value, "ref": "r"});
        if let Ok(envelope) = Envelope::parse(&frame.to_string()) {
            let _ = envelope.into_message(Limits { max_message_chars: 4000 });
        }
    }
}
