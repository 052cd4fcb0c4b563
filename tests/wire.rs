//! The WebSocket layer itself, spoken byte by byte over raw TCP: the
//! handshake and its refusals, frames a library client would never send, and
//! the connection limit.

mod support;

use serde_json::json;
use std::time::Duration;
use support::raw::{KEY, Raw, frame, upgrade_request};
use support::{TestServer, args};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn the_handshake_answers_with_the_rfc_accept_key() {
    let server = TestServer::start().await;
    let (mut raw, head) = Raw::open(server.addr, &upgrade_request("", "")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    let welcome = raw.json().await;
    assert_eq!(welcome["type"], "welcome");
}

#[tokio::test]
async fn frames_sent_with_the_handshake_are_not_lost() {
    let server = TestServer::start().await;
    let token = server.token("alice");
    let mut request = upgrade_request(&format!("?token={token}"), "").into_bytes();
    let ping = json!({"type": "ping", "ref": "early"}).to_string();
    request.extend(frame(0x81, ping.as_bytes(), true));
    let (mut raw, head) = Raw::open_bytes(server.addr, &request).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(raw.json().await["type"], "welcome");
    let pong = raw.json().await;
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["ref"], "early");
}

#[tokio::test]
async fn bad_handshakes_are_refused_before_the_upgrade() {
    let server = TestServer::start().await;
    // A version other than 13, or none: 426 saying which one (RFC 6455 §4.4).
    let old = upgrade_request("", "").replace("Version: 13", "Version: 8");
    let versionless = upgrade_request("", "").replace("Sec-WebSocket-Version: 13\r\n", "");
    for request in [old, versionless] {
        let (_, head) = Raw::open(server.addr, &request).await;
        assert!(head.starts_with("HTTP/1.1 426"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("\r\nsec-websocket-version: 13"),
            "{head}"
        );
    }
    // A key of 24 characters that is not base64.
    let odd_key = upgrade_request("", "").replace(KEY, "!!!!!!!!!!!!!!!!!!!!!!!!");
    let (_, head) = Raw::open(server.addr, &odd_key).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let (_, head) = Raw::open(
        server.addr,
        &upgrade_request("?token=forged.token.here", ""),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let (_, head) = Raw::open(server.addr, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    // The HTTP API still answers on the same port.
    let (_, head) = Raw::open(server.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn fragments_are_joined_and_pings_answered() {
    let server = TestServer::start().await;
    let token = server.token("alice");
    let (mut raw, _) = Raw::open(
        server.addr,
        &upgrade_request(&format!("?token={token}"), ""),
    )
    .await;
    raw.json().await;
    let text = json!({"type": "ping", "ref": "in-pieces"}).to_string();
    let (first, rest) = text.as_bytes().split_at(10);
    raw.send(&frame(0x01, first, true)).await;
    raw.send(&frame(0x89, b"hb", true)).await;
    raw.send(&frame(0x80, rest, true)).await;
    let (opcode, payload) = raw.next().await.expect("pong frame");
    assert_eq!((opcode, payload.as_slice()), (0x0A, &b"hb"[..]));
    let pong = raw.json().await;
    assert_eq!(pong["ref"], "in-pieces");
}

#[tokio::test]
async fn framing_violations_close_with_the_rfc_codes_and_spare_others() {
    let server = TestServer::start().await;
    let mut bystander = server.user("bob").await;
    let token = server.token("alice");
    let request = upgrade_request(&format!("?token={token}"), "");
    let cases: [(Vec<u8>, u16); 4] = [
        (frame(0x81, b"{}", false), 1002),        // unmasked
        (frame(0xC1, b"{}", true), 1002),         // a reserved bit
        (frame(0x83, b"{}", true), 1002),         // an unknown opcode
        (frame(0x81, &[0xC3, 0x28], true), 1007), // not UTF-8
    ];
    for (bytes, code) in cases {
        let (mut raw, _) = Raw::open(server.addr, &request).await;
        raw.json().await;
        raw.send(&bytes).await;
        assert_eq!(raw.close_code().await, Some(code));
    }
    // Over `max_frame_bytes` (64 KiB): 1009, known from the header alone.
    let (mut raw, _) = Raw::open(server.addr, &request).await;
    raw.json().await;
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    raw.send(&header).await;
    assert_eq!(raw.close_code().await, Some(1009));
    bystander.assert_alive().await;
}

#[tokio::test]
async fn an_oversize_frame_followed_by_more_bytes_still_gets_its_1009() {
    let server = TestServer::start().await;
    let token = server.token("alice");
    let request = upgrade_request(&format!("?token={token}"), "");
    let (mut raw, _) = Raw::open(server.addr, &request).await;
    raw.json().await;
    // The whole oversize frame and more frames behind it, in one write: the
    // server stops reading at the header, and must not reset the socket
    // under the unread bytes (the client would lose the close frame).
    let mut bytes = frame(0x81, &vec![b'x'; 100_000], true);
    for _ in 0..10 {
        bytes.extend_from_slice(&frame(0x81, br#"{"type":"ping"}"#, true));
    }
    raw.send(&bytes).await;
    // Keep sending for a while, as a client that has not read the close
    // frame yet would.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let ping = frame(0x81, br#"{"type":"ping"}"#, true);
        if raw.stream.write_all(&ping).await.is_err() {
            break;
        }
    }
    assert_eq!(raw.close_code().await, Some(1009));
    // The server read what it could not decode instead of resetting the
    // connection under it: our close frame and our end of the stream are
    // answered by its end of the stream, not by a reset.
    raw.send(&frame(0x88, &1009u16.to_be_bytes(), true)).await;
    raw.stream.shutdown().await.expect("shutdown");
    raw.server_hangs_up().await;
}

#[tokio::test]
async fn past_max_connections_new_connections_get_503() {
    let mut settings = args();
    settings.max_connections = Some(2);
    let server = TestServer::with(settings).await;
    let _a = server.user("a").await;
    let mut b = server.user("b").await;
    let (_, head) = Raw::open(server.addr, &upgrade_request("", "")).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    b.assert_alive().await;
}

#[tokio::test]
async fn pongs_or_pings_alone_keep_a_connection_alive() {
    let mut settings = args();
    settings.heartbeat_interval_ms = Some(100);
    settings.idle_timeout_ms = Some(400);
    let server = TestServer::with(settings).await;
    let request = upgrade_request(&format!("?token={}", server.token("alice")), "");
    let (mut ponger, _) = Raw::open(server.addr, &request).await;
    ponger.json().await;
    let (mut pinger, _) = Raw::open(server.addr, &request).await;
    pinger.json().await;
    // For three idle timeouts, one answers every server ping with a pong
    // and the other sends pings of its own; neither sends a data frame.
    let until = tokio::time::Instant::now() + Duration::from_millis(1200);
    let mut pongs_sent = 0;
    while tokio::time::Instant::now() < until {
        let (opcode, payload) = ponger.next().await.expect("open");
        assert_eq!(opcode, 0x9, "only pings arrive");
        ponger.send(&frame(0x8A, &payload, true)).await;
        pongs_sent += 1;
        pinger.send(&frame(0x89, b"hi", true)).await;
    }
    assert!(pongs_sent >= 6, "{pongs_sent} pings in 1.2 s");
    for raw in [&mut ponger, &mut pinger] {
        raw.send(&frame(0x81, br#"{"type":"ping","ref":"still"}"#, true))
            .await;
        assert_eq!(raw.json().await["ref"], "still");
    }
}

#[tokio::test]
async fn a_client_close_frame_is_answered_and_others_see_the_user_leave() {
    let server = TestServer::start().await;
    let mut bob = server.user("bob").await;
    support::subscribe(&mut bob, Some(&["alice"])).await;
    let request = upgrade_request(&format!("?token={}", server.token("alice")), "");
    let (mut alice, _) = Raw::open(server.addr, &request).await;
    alice.json().await;
    assert_eq!(bob.recv_type("user_join").await["user"]["id"], "alice");
    alice.send(&frame(0x88, &1000u16.to_be_bytes(), true)).await;
    assert_eq!(alice.close_code().await, Some(1000));
    assert_eq!(alice.next().await, None, "the server ends the stream");
    assert_eq!(bob.recv_type("user_leave").await["user"]["id"], "alice");
}

#[tokio::test]
async fn the_welcome_comes_first_while_broadcasts_race_it() {
    let server = TestServer::start().await;
    let mut talker = server.user("talker").await;
    let flood = tokio::spawn(async move {
        for n in 0..400 {
            talker
                .send(json!({"type": "chat_message", "content": format!("m{n}")}))
                .await;
        }
        talker
    });
    // Every newcomer is announced to everyone and gets global chat while it
    // connects; its first frame must still be its welcome (asserted by
    // `user`).
    let mut newcomers = Vec::new();
    for n in 0..40 {
        newcomers.push(server.user(&format!("newcomer{n}")).await);
    }
    let mut talker = flood.await.expect("flood");
    talker.assert_alive().await;
}

/// Opens a logged-in raw connection and reads its welcome.
async fn logged_in(server: &TestServer) -> Raw {
    let token = server.token("alice");
    let (mut raw, _) = Raw::open(
        server.addr,
        &upgrade_request(&format!("?token={token}"), ""),
    )
    .await;
    raw.json().await;
    raw
}

/// Below the 1 s the server waits for a client's close at most: the server
/// did not wait for that timeout.
const PROMPTLY: Duration = Duration::from_millis(700);

#[tokio::test]
async fn close_frames_with_a_bad_code_or_reason_are_refused_and_the_socket_closed() {
    let server = TestServer::start().await;
    // Autobahn 7.9.1–7.9.9 and a few more: codes no close frame may carry.
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000,
    ] {
        let mut raw = logged_in(&server).await;
        raw.send(&frame(0x88, &code.to_be_bytes(), true)).await;
        assert_eq!(raw.close_code().await, Some(1002), "code {code}");
        // The bad frame was the client's close: nothing more to wait for.
        assert!(raw.server_hangs_up().await < PROMPTLY, "code {code}");
    }
    // Autobahn 7.5.1: a reason that is not UTF-8.
    let mut raw = logged_in(&server).await;
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(&[0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xED, 0xA0, 0x80]);
    raw.send(&frame(0x88, &payload, true)).await;
    assert_eq!(raw.close_code().await, Some(1007));
    // Codes that are allowed are answered with a normal close.
    for code in [1000u16, 1001, 1003, 1011, 3000, 4999] {
        let mut raw = logged_in(&server).await;
        raw.send(&frame(0x88, &code.to_be_bytes(), true)).await;
        assert_eq!(raw.close_code().await, Some(1000), "code {code}");
    }
}

#[tokio::test]
async fn after_a_protocol_error_the_socket_closes_once_the_client_answers() {
    let server = TestServer::start().await;
    let mut raw = logged_in(&server).await;
    // An unmasked frame, then more frames the server will not decode.
    raw.send(&frame(0x81, b"{}", false)).await;
    raw.send(&frame(0x81, br#"{"type":"ping"}"#, true)).await;
    assert_eq!(raw.close_code().await, Some(1002));
    raw.send(&frame(0x89, b"late", true)).await;
    raw.send(&frame(0x88, &1002u16.to_be_bytes(), true)).await;
    assert!(raw.server_hangs_up().await < PROMPTLY);
}

#[tokio::test]
async fn invalid_utf8_fails_at_the_fragment_that_has_it() {
    let server = TestServer::start().await;
    // Autobahn 6.4.x: the first fragment is already not UTF-8; the message
    // never ends, and the server need not wait for it.
    let mut raw = logged_in(&server).await;
    raw.send(&frame(
        0x01,
        &[b'{', 0xCE, 0xBA, 0xF4, 0x90, 0x80, 0x80],
        true,
    ))
    .await;
    assert_eq!(raw.close_code().await, Some(1007));
    // A character cut in two by a fragment boundary is fine.
    let mut raw = logged_in(&server).await;
    let text = json!({"type": "ping", "ref": "κόσμε"}).to_string();
    let cut = text.find('κ').expect("kappa") + 1;
    raw.send(&frame(0x01, &text.as_bytes()[..cut], true)).await;
    raw.send(&frame(0x80, &text.as_bytes()[cut..], true)).await;
    let pong = raw.json().await;
    assert_eq!(pong["ref"], "κόσμε", "{pong}");
}

#[tokio::test]
async fn a_64_bit_length_with_its_top_bit_set_is_a_protocol_error() {
    let server = TestServer::start().await;
    let mut raw = logged_in(&server).await;
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 63).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    raw.send(&header).await;
    assert_eq!(raw.close_code().await, Some(1002));
}
