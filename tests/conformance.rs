//! RFC 6455 conformance of roomcast's own WebSocket layer, case family by
//! case family as Autobahn|Testsuite's fuzzing client plays them (sections
//! 1–7 and 9, the last with a 1 MiB cap), against the echo server built on
//! `src/wire` (`examples/echo.rs` runs the same one for the real suite).
//! Each case sends raw frames over TCP and checks what the suite checks:
//! the echo, the close code, and that the server closes the TCP connection
//! once the close handshake is done. The chat server's own handling of the
//! same faults is in tests/wire.rs.

mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::raw::{Raw, frame, upgrade_request};

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const FIN: u8 = 0x80;

/// The largest message the echo server takes here (section 9's cap).
const CAP: usize = 1 << 20;

async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(roomcast::wire::echo::serve(listener, CAP));
    addr
}

async fn open(addr: SocketAddr) -> Raw {
    let (raw, head) = Raw::open(addr, &upgrade_request("", "")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    raw
}

/// A client frame: `first` is FIN, RSV and opcode.
fn client(first: u8, payload: &[u8]) -> Vec<u8> {
    frame(first, payload, true)
}

impl Raw {
    async fn expect(&mut self, opcode: u8, payload: &[u8], case: &str) {
        let (got, data) = self
            .next()
            .await
            .unwrap_or_else(|| panic!("{case}: closed"));
        assert_eq!(got, opcode, "{case}: opcode");
        assert!(
            data == payload,
            "{case}: payload of {} bytes differs",
            data.len()
        );
    }

    /// The server fails the connection with `code`; we answer its close,
    /// and it ends the TCP connection.
    async fn expect_failure(&mut self, code: u16, case: &str) {
        assert_eq!(self.close_code().await, Some(code), "{case}");
        let _ = tokio::io::AsyncWriteExt::write_all(
            &mut self.stream,
            &client(FIN | CLOSE, &code.to_be_bytes()),
        )
        .await;
        assert!(
            self.server_hangs_up().await < Duration::from_millis(700),
            "{case}: hang-up"
        );
    }

    /// We close with `code`; the server answers and ends the connection.
    async fn close_cleanly(&mut self, code: Option<u16>, case: &str) {
        let body = code.map(u16::to_be_bytes);
        self.send(&client(
            FIN | CLOSE,
            body.as_ref().map_or(&[][..], |b| &b[..]),
        ))
        .await;
        let (opcode, payload) = self
            .next()
            .await
            .unwrap_or_else(|| panic!("{case}: no close"));
        assert_eq!(opcode, CLOSE, "{case}");
        let echoed = payload.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
        assert_eq!(echoed, code, "{case}: close code");
        self.server_hangs_up().await;
    }
}

/// Sends `bytes` in pieces of `chop` bytes, one write each.
async fn send_chopped(raw: &mut Raw, bytes: &[u8], chop: usize) {
    for piece in bytes.chunks(chop) {
        raw.send(piece).await;
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn section_1_framing_text_and_binary_of_every_length_form() {
    let addr = echo_server().await;
    for length in [0usize, 125, 126, 127, 128, 65535, 65536] {
        for (opcode, byte) in [(TEXT, b'*'), (BINARY, 0xFE)] {
            let case = format!("1.x opcode {opcode} length {length}");
            let payload = vec![byte; length];
            let mut raw = open(addr).await;
            raw.send(&client(FIN | opcode, &payload)).await;
            raw.expect(opcode, &payload, &case).await;
            // The same frame in pieces of 997 bytes (1.1.8, 1.2.8).
            send_chopped(&mut raw, &client(FIN | opcode, &payload), 997).await;
            raw.expect(opcode, &payload, &case).await;
            raw.close_cleanly(Some(1000), &case).await;
        }
    }
}

#[tokio::test]
async fn section_2_pings_and_pongs() {
    let addr = echo_server().await;
    let payloads: [&[u8]; 4] = [
        b"",
        b"Hello, world!",
        &[0, 255, 254, 253, 252, 251, 0, 255],
        &[0xFE; 125],
    ];
    for payload in payloads {
        let mut raw = open(addr).await;
        raw.send(&client(FIN | PING, payload)).await;
        raw.expect(PONG, payload, "2.1-2.4").await;
        raw.close_cleanly(Some(1000), "2.1-2.4").await;
    }
    // 2.5: a ping of 126 bytes.
    let mut raw = open(addr).await;
    raw.send(&client(FIN | PING, &[0xFE; 126])).await;
    raw.expect_failure(1002, "2.5").await;
    // 2.6: a ping of 125 bytes, one byte per write.
    let mut raw = open(addr).await;
    send_chopped(&mut raw, &client(FIN | PING, &[0xFE; 125]), 1).await;
    raw.expect(PONG, &[0xFE; 125], "2.6").await;
    raw.close_cleanly(Some(1000), "2.6").await;
    // 2.7–2.9: unsolicited pongs are ignored; a ping after one is answered.
    let mut raw = open(addr).await;
    raw.send(&client(FIN | PONG, b"")).await;
    raw.send(&client(FIN | PONG, b"unsolicited")).await;
    raw.send(&client(FIN | PING, b"ping")).await;
    raw.expect(PONG, b"ping", "2.9").await;
    raw.close_cleanly(Some(1000), "2.7-2.9").await;
    // 2.10, 2.11: ten pings, answered in order, sent whole or in pieces.
    for chop in [usize::MAX, 1] {
        let mut raw = open(addr).await;
        let mut pings = Vec::new();
        for n in 0..10u8 {
            pings.extend_from_slice(&client(FIN | PING, &[b'p', n]));
        }
        send_chopped(&mut raw, &pings, chop.min(pings.len())).await;
        for n in 0..10u8 {
            raw.expect(PONG, &[b'p', n], "2.10").await;
        }
        raw.close_cleanly(Some(1000), "2.10-2.11").await;
    }
}

#[tokio::test]
async fn section_3_reserved_bits() {
    let addr = echo_server().await;
    for rsv in [0x40u8, 0x20, 0x10, 0x60, 0x50, 0x30, 0x70] {
        for opcode in [TEXT, BINARY, PING, CLOSE] {
            let case = format!("3.x rsv {rsv:#x} opcode {opcode}");
            let mut raw = open(addr).await;
            // A valid message first, echoed (3.2 and after).
            raw.send(&client(FIN | TEXT, b"Hello")).await;
            raw.expect(TEXT, b"Hello", &case).await;
            raw.send(&client(FIN | rsv | opcode, b"")).await;
            raw.expect_failure(1002, &case).await;
        }
    }
}

#[tokio::test]
async fn section_4_reserved_opcodes() {
    let addr = echo_server().await;
    for opcode in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        for payload in [&b""[..], b"reserved"] {
            let case = format!("4.x opcode {opcode:#x}");
            let mut raw = open(addr).await;
            raw.send(&client(FIN | TEXT, b"Hello")).await;
            raw.expect(TEXT, b"Hello", &case).await;
            raw.send(&client(FIN | opcode, payload)).await;
            raw.expect_failure(1002, &case).await;
        }
    }
}

#[tokio::test]
async fn section_5_fragmentation() {
    let addr = echo_server().await;
    // 5.1, 5.2: control frames may not be fragmented.
    for opcode in [PING, PONG] {
        let mut raw = open(addr).await;
        raw.send(&client(opcode, b"frag")).await;
        raw.expect_failure(1002, "5.1-5.2").await;
    }
    // 5.3–5.8: a text message in two fragments, whole or chopped, with a
    // ping between the fragments.
    for (chop, ping) in [
        (usize::MAX, false),
        (1, false),
        (usize::MAX, true),
        (1, true),
    ] {
        let mut bytes = client(TEXT, b"fragment1");
        if ping {
            bytes.extend_from_slice(&client(FIN | PING, b"between"));
        }
        bytes.extend_from_slice(&client(FIN, b"fragment2"));
        let mut raw = open(addr).await;
        send_chopped(&mut raw, &bytes, chop.min(bytes.len())).await;
        if ping {
            raw.expect(PONG, b"between", "5.6").await;
        }
        raw.expect(TEXT, b"fragment1fragment2", "5.3-5.8").await;
        raw.close_cleanly(Some(1000), "5.3-5.8").await;
    }
    // 5.9–5.14: continuations with nothing to continue.
    for fin in [0u8, FIN] {
        let mut raw = open(addr).await;
        raw.send(&client(fin, b"orphan")).await;
        raw.expect_failure(1002, "5.9-5.14").await;
    }
    // 5.15–5.18: a new message inside a fragmented one.
    for second in [TEXT, FIN | TEXT, BINARY] {
        let mut raw = open(addr).await;
        raw.send(&client(TEXT, b"first")).await;
        raw.send(&client(second, b"second")).await;
        raw.expect_failure(1002, "5.15-5.18").await;
    }
    // 5.19, 5.20: five fragments with pings between, answered as they come.
    let mut raw = open(addr).await;
    for n in 1..=5u8 {
        let first = match n {
            1 => TEXT,
            5 => FIN,
            _ => 0,
        };
        raw.send(&client(first, &[b'f', b'0' + n])).await;
        if n == 5 {
            raw.expect(TEXT, b"f1f2f3f4f5", "5.19").await;
        }
        raw.send(&client(FIN | PING, &[b'p', n])).await;
        raw.expect(PONG, &[b'p', n], "5.19").await;
    }
    raw.close_cleanly(Some(1000), "5.19").await;
}

#[tokio::test]
async fn section_6_utf8() {
    let addr = echo_server().await;
    let valid: [&str; 5] = [
        "Hello-µ@ßöäüàá-UTF-8!!",
        "κόσμε",
        "\u{7f}\u{80}\u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff}",
        "\u{feff}BOM",
        "",
    ];
    for text in valid {
        // Whole, then split into fragments at every byte (6.2, 6.4 in reverse).
        let mut raw = open(addr).await;
        raw.send(&client(FIN | TEXT, text.as_bytes())).await;
        raw.expect(TEXT, text.as_bytes(), "6.x valid").await;
        let bytes = text.as_bytes();
        if bytes.len() > 1 {
            for (n, byte) in bytes.iter().enumerate() {
                let first = match (n, n + 1 == bytes.len()) {
                    (0, _) => TEXT,
                    (_, true) => FIN,
                    _ => 0,
                };
                raw.send(&client(first, &[*byte])).await;
            }
            raw.expect(TEXT, bytes, "6.x valid, byte by byte").await;
        }
        raw.close_cleanly(Some(1000), "6.x valid").await;
    }
    let invalid: [&[u8]; 9] = [
        &[
            0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCF, 0x83, 0xCE, 0xBC, 0xCE, 0xB5, 0xED, 0xA0, 0x80,
            0x65,
        ],
        &[0xFF],
        &[0xC0, 0xAF],
        &[0xE0, 0x80, 0xAF],
        &[0xF4, 0x90, 0x80, 0x80],
        &[0xED, 0xA0, 0x80],
        &[0xED, 0xBF, 0xBF],
        &[0xC2],
        &[0x80],
    ];
    for bytes in invalid {
        let case = format!("6.x invalid {bytes:02x?}");
        let mut raw = open(addr).await;
        raw.send(&client(FIN | TEXT, bytes)).await;
        raw.expect_failure(1007, &case).await;
    }
    // 6.4.1–6.4.4: the fragment that breaks UTF-8 fails at once, before
    // the message ends (it never does here).
    for bytes in [invalid[0], invalid[4]] {
        let mut raw = open(addr).await;
        raw.send(&client(TEXT, bytes)).await;
        raw.expect_failure(1007, "6.4.x").await;
    }
    let mut raw = open(addr).await;
    raw.send(&client(TEXT, "κόσμε".as_bytes())).await;
    raw.send(&client(0, &[0xF4, 0x90, 0x80, 0x80])).await;
    raw.expect_failure(1007, "6.4.2").await;
}

#[tokio::test]
async fn section_7_close_handling() {
    let addr = echo_server().await;
    // 7.1.1: a message, then a close: both answered.
    let mut raw = open(addr).await;
    raw.send(&client(FIN | TEXT, b"Hello")).await;
    raw.expect(TEXT, b"Hello", "7.1.1").await;
    raw.close_cleanly(Some(1000), "7.1.1").await;
    // 7.1.2–7.1.4: after the close, nothing more is answered.
    let mut raw = open(addr).await;
    let mut bytes = client(FIN | CLOSE, &1000u16.to_be_bytes());
    bytes.extend_from_slice(&client(FIN | CLOSE, &1000u16.to_be_bytes()));
    bytes.extend_from_slice(&client(FIN | PING, b"after"));
    bytes.extend_from_slice(&client(FIN | TEXT, b"after"));
    raw.send(&bytes).await;
    raw.expect(CLOSE, &1000u16.to_be_bytes(), "7.1.2").await;
    assert_eq!(
        raw.next().await,
        None,
        "7.1.2-7.1.4: nothing after the close"
    );
    // 7.1.5: a close in the middle of a fragmented message.
    let mut raw = open(addr).await;
    raw.send(&client(TEXT, b"fragment")).await;
    raw.close_cleanly(Some(1000), "7.1.5").await;
    // 7.3.1: a close without a body is answered without one.
    let mut raw = open(addr).await;
    raw.close_cleanly(None, "7.3.1").await;
    // 7.3.2: a one-byte body.
    let mut raw = open(addr).await;
    raw.send(&client(FIN | CLOSE, &[0x03])).await;
    raw.expect_failure(1002, "7.3.2").await;
    // 7.3.4, 7.3.5: a reason, up to 123 bytes.
    for reason in [&b"Hello World!"[..], &[b'*'; 123]] {
        let mut raw = open(addr).await;
        let mut body = 1000u16.to_be_bytes().to_vec();
        body.extend_from_slice(reason);
        raw.send(&client(FIN | CLOSE, &body)).await;
        raw.expect(CLOSE, &1000u16.to_be_bytes(), "7.3.4-7.3.5")
            .await;
        raw.server_hangs_up().await;
    }
    // 7.3.6: a reason of 124 bytes makes the close frame too long.
    let mut raw = open(addr).await;
    let mut body = 1000u16.to_be_bytes().to_vec();
    body.extend_from_slice(&[b'*'; 124]);
    raw.send(&client(FIN | CLOSE, &body)).await;
    raw.expect_failure(1002, "7.3.6").await;
    // 7.5.1: a reason that is not UTF-8.
    let mut raw = open(addr).await;
    let mut body = 1000u16.to_be_bytes().to_vec();
    body.extend_from_slice(&[0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xED, 0xA0, 0x80]);
    raw.send(&client(FIN | CLOSE, &body)).await;
    raw.expect_failure(1007, "7.5.1").await;
    // 7.7.x: codes a close may carry are echoed.
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let mut raw = open(addr).await;
        raw.close_cleanly(Some(code), &format!("7.7.x code {code}"))
            .await;
    }
    // 7.9.x, 7.13.x: codes it may not carry.
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let mut raw = open(addr).await;
        raw.send(&client(FIN | CLOSE, &code.to_be_bytes())).await;
        raw.expect_failure(1002, &format!("7.9.x code {code}"))
            .await;
    }
}

#[tokio::test]
async fn section_9_large_messages_up_to_the_cap() {
    let addr = echo_server().await;
    for length in [64 << 10, 256 << 10, CAP] {
        for (opcode, byte) in [(TEXT, b'*'), (BINARY, 0xFE)] {
            let case = format!("9.1/9.2 opcode {opcode} length {length}");
            let payload = vec![byte; length];
            let mut raw = open(addr).await;
            raw.send(&client(FIN | opcode, &payload)).await;
            raw.expect(opcode, &payload, &case).await;
            // 9.3/9.4: the same message in fragments of 4 KiB.
            let pieces: Vec<&[u8]> = payload.chunks(4096).collect();
            let mut bytes = Vec::new();
            for (n, piece) in pieces.iter().enumerate() {
                let first = match (n, n + 1 == pieces.len()) {
                    (0, true) => FIN | opcode,
                    (0, false) => opcode,
                    (_, true) => FIN,
                    _ => 0,
                };
                bytes.extend_from_slice(&client(first, piece));
            }
            raw.send(&bytes).await;
            raw.expect(opcode, &payload, &case).await;
            raw.close_cleanly(Some(1000), &case).await;
        }
    }
    // Over the cap, whole or in fragments: 1009.
    let mut raw = open(addr).await;
    raw.send(&client(FIN | TEXT, &vec![b'*'; CAP + 1])).await;
    raw.expect_failure(1009, "over the cap").await;
    let mut raw = open(addr).await;
    raw.send(&client(TEXT, &vec![b'*'; CAP])).await;
    raw.send(&client(FIN, b"*")).await;
    raw.expect_failure(1009, "over the cap, fragmented").await;
}
