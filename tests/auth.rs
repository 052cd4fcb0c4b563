//! Logging in (protocol sections 4 and 9.6–9.7): `authentication` by
//! message, failed attempts, guests naming themselves with `user_join`, and
//! `user_leave`.

mod support;

use roomcast::auth::Tokens;
use serde_json::json;
use support::{TestServer, args, join};

#[tokio::test]
async fn authenticating_by_message_announces_the_user() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    support::subscribe(&mut alice, None).await;
    let mut guest = server.guest().await;
    let token = server.token_with("bob", Some("Bob"), None);
    let success = guest
        .request(json!({"type": "authentication", "token": token, "ref": "a"}))
        .await;
    assert_eq!(success["type"], "auth_success", "{success}");
    assert_eq!(success["ref"], "a");
    assert_eq!(
        success["user"],
        json!({"id": "bob", "username": "Bob", "kind": "user"})
    );
    assert_eq!(success["connection_id"], guest.welcome["connection_id"]);
    let announced = alice.recv().await;
    assert_eq!(announced["type"], "user_join", "{announced}");
    assert_eq!(announced["user"]["id"], "bob");
    guest.expect_silence().await;

    // Now authenticated, it may chat.
    guest
        .send(json!({"type": "chat_message", "content": "hello"}))
        .await;
    assert_eq!(guest.recv().await["type"], "message_ack");

    // A second connection of bob is not announced again.
    let _bob2 = server.user("bob").await;
    alice.recv_type("chat_message").await;
    alice.expect_silence().await;
}

#[tokio::test]
async fn an_assistant_token_gives_kind_assistant() {
    let server = TestServer::start().await;
    let mut guest = server.guest().await;
    let token = server.token_with("helper", None, Some("assistant"));
    let success = guest
        .request(json!({"type": "authentication", "token": token}))
        .await;
    assert_eq!(success["user"]["kind"], "assistant", "{success}");
}

#[tokio::test]
async fn five_failed_authentications_in_a_row_close_with_1008() {
    let server = TestServer::start().await;
    let mut witness = server.user("witness").await;
    let mut guest = server.guest().await;
    let wrong_key = Tokens::new("some-other-secret").mint("alice", None, None, 60);
    let attempts = [
        json!({"type": "authentication", "token": "garbage"}),
        json!({"type": "authentication", "token": wrong_key}),
        json!({"type": "authentication", "username": "alice", "password": "nope"}),
        json!({"type": "ping"}), // other frames do not reset the count
        json!({"type": "authentication", "token": "garbage"}),
    ];
    for attempt in attempts {
        let reply = guest.request(attempt.clone()).await;
        if attempt["type"] == "ping" {
            assert_eq!(reply["type"], "pong");
        } else {
            assert_eq!(reply["error_code"], "auth_failed", "{reply}");
        }
    }
    guest
        .send(json!({"type": "authentication", "token": "garbage", "ref": "fifth"}))
        .await;
    let fifth = guest.recv().await;
    assert_eq!(fifth["error_code"], "auth_failed");
    assert_eq!(fifth["ref"], "fifth");
    assert_eq!(
        guest.closed_with_reason().await,
        Some((1008, "too many failed authentications".to_owned()))
    );
    witness.assert_alive().await;
}

#[tokio::test]
async fn a_success_resets_the_failure_count() {
    let server = TestServer::start().await;
    let mut guest = server.guest().await;
    for _ in 0..4 {
        let reply = guest
            .request(json!({"type": "authentication", "token": "garbage"}))
            .await;
        assert_eq!(reply["error_code"], "auth_failed");
    }
    let ok = guest
        .request(json!({"type": "authentication", "token": server.token("alice")}))
        .await;
    assert_eq!(ok["type"], "auth_success");
    for _ in 0..4 {
        let reply = guest
            .request(json!({"type": "authentication", "token": "garbage"}))
            .await;
        assert_eq!(reply["error_code"], "auth_failed");
    }
    guest.assert_alive().await;
}

#[tokio::test]
async fn a_failed_reauthentication_keeps_the_login() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    join(&mut alice, "dev").await;
    let expired = {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let claims = roomcast::auth::Claims {
            sub: "mallory".into(),
            name: None,
            exp: 1_000,
            role: None,
            nbf: None,
            iat: None,
        };
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(support::SECRET.as_bytes()),
        )
        .expect("encode")
    };
    let error = alice
        .request(json!({"type": "authentication", "token": expired}))
        .await;
    assert_eq!(error["error_code"], "auth_failed", "{error}");
    alice
        .send(json!({"type": "chat_message", "room": "dev", "content": "still me"}))
        .await;
    assert_eq!(alice.recv().await["type"], "message_ack");
    let frame = alice.recv().await;
    assert_eq!(frame["message"]["user"]["id"], "alice");
}

#[tokio::test]
async fn tokens_without_sub_or_with_alg_none_are_refused() {
    let server = TestServer::start().await;
    let mut guest = server.guest().await;
    // {"alg":"none"} . {"sub":"alice","exp":9999999999} . (no signature)
    let unsigned =
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
    let no_sub = {
        use jsonwebtoken::{EncodingKey, Header, encode};
        encode(
            &Header::default(),
            &json!({"exp": 9_999_999_999u64, "name": "alice"}),
            &EncodingKey::from_secret(support::SECRET.as_bytes()),
        )
        .expect("encode")
    };
    for token in [unsigned.to_owned(), no_sub] {
        let reply = guest
            .request(json!({"type": "authentication", "token": token}))
            .await;
        assert_eq!(reply["error_code"], "auth_failed", "{reply}");
    }
}

#[tokio::test]
async fn guests_name_themselves_where_guest_chat_is_enabled() {
    let mut settings = args();
    settings.guest_chat = Some(true);
    let server = TestServer::with(settings).await;
    let mut alice = server.user("alice").await;
    support::subscribe(&mut alice, None).await;
    let mut guest = server.guest().await;
    let mut other_guest = server.guest().await;

    let named = guest
        .request(json!({"type": "user_join", "username": "Visitor", "ref": "j"}))
        .await;
    assert_eq!(named["type"], "user_join", "{named}");
    assert_eq!(named["ref"], "j");
    assert_eq!(named["user"]["username"], "Visitor");
    assert_eq!(named["user"]["kind"], "guest");
    let announced = alice.recv().await;
    assert_eq!(announced["type"], "user_join");
    assert_eq!(announced["user"]["username"], "Visitor");

    for taken in ["visitor", "alice", "ALICE", "system"] {
        let error = other_guest
            .request(json!({"type": "user_join", "username": taken}))
            .await;
        assert_eq!(error["error_code"], "username_taken", "{taken}: {error}");
    }

    // A named guest can join rooms and chat.
    join(&mut guest, "lobby").await;
    guest
        .send(json!({"type": "chat_message", "room": "lobby", "content": "hi"}))
        .await;
    assert_eq!(guest.recv().await["type"], "message_ack");

    // An authenticated connection may not use user_join.
    let error = alice
        .request(json!({"type": "user_join", "username": "someone"}))
        .await;
    let error = if error["type"] == "user_join" {
        alice.recv().await
    } else {
        error
    };
    assert_eq!(error["error_code"], "forbidden", "{error}");
}

#[tokio::test]
async fn without_guest_chat_user_join_needs_authentication() {
    let server = TestServer::start().await;
    let mut guest = server.guest().await;
    let error = guest
        .request(json!({"type": "user_join", "username": "Visitor"}))
        .await;
    assert_eq!(error["error_code"], "not_authenticated", "{error}");
    let mut alice = server.user("alice").await;
    let error = alice
        .request(json!({"type": "user_join", "username": "Visitor"}))
        .await;
    assert_eq!(error["error_code"], "forbidden", "{error}");
}

#[tokio::test]
async fn user_leave_leaves_every_room_but_keeps_the_connection() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    support::subscribe(&mut alice, Some(&["bob"])).await;
    let mut bob = server.user("bob").await;
    join(&mut alice, "a").await;
    join(&mut alice, "b").await;
    join(&mut bob, "a").await;
    join(&mut bob, "b").await;
    alice.assert_alive().await;

    let left = bob
        .request(json!({"type": "user_leave", "ref": "bye"}))
        .await;
    assert_eq!(left["type"], "user_leave", "{left}");
    assert_eq!(left["ref"], "bye");
    assert_eq!(left["user"]["id"], "bob");
    let mut rooms = Vec::new();
    for _ in 0..2 {
        let presence = alice.recv().await;
        assert_eq!(presence["type"], "presence", "{presence}");
        assert_eq!(presence["event"], "leave");
        rooms.push(presence["room"].as_str().unwrap_or("").to_owned());
    }
    rooms.sort();
    assert_eq!(rooms, ["a", "b"]);
    let gone = alice.recv().await;
    assert_eq!(gone["type"], "user_leave", "{gone}");
    assert_eq!(gone["user"]["id"], "bob");

    // Still open and authenticated.
    bob.assert_alive().await;
    bob.send(json!({"type": "chat_message", "content": "back"}))
        .await;
    assert_eq!(bob.recv().await["type"], "message_ack");
}

/// A token with these claims, signed with the test secret.
fn signed(claims: serde_json::Value) -> String {
    use jsonwebtoken::{EncodingKey, Header, encode};
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(support::SECRET.as_bytes()),
    )
    .expect("encode")
}

#[tokio::test]
async fn tokens_from_the_future_or_with_oversized_or_hidden_names_are_refused() {
    let server = TestServer::start().await;
    let now = std::time::UNIX_EPOCH.elapsed().expect("clock").as_secs();
    let exp = now + 3600;
    let refused = [
        json!({"sub": "alice", "exp": exp, "nbf": now + 3000}),
        json!({"sub": "alice", "exp": exp, "iat": now + 3000}),
        json!({"sub": "alice", "exp": exp, "name": "x".repeat(30_000)}),
        json!({"sub": "alice", "exp": exp, "name": "alice\u{202e}"}),
        json!({"sub": "alice", "exp": exp, "name": "sys\u{200b}tem"}),
        json!({"sub": "a".repeat(200), "exp": exp}),
        json!({"sub": "ali ce", "exp": exp}),
    ];
    for claims in refused {
        // A connection each: five failures in a row close one.
        let mut guest = server.guest().await;
        let reply = guest
            .request(json!({"type": "authentication", "token": signed(claims.clone())}))
            .await;
        assert_eq!(reply["error_code"], "auth_failed", "{claims}: {reply}");
    }
    // Within the minute of clock skew allowed, and in the past: fine.
    for claims in [
        json!({"sub": "alice", "exp": exp, "nbf": now + 30, "iat": now + 30}),
        json!({"sub": "alice", "exp": exp, "nbf": now - 60, "iat": now - 60, "name": "Alice Smith"}),
    ] {
        let mut fresh = server.guest().await;
        let reply = fresh
            .request(json!({"type": "authentication", "token": signed(claims.clone())}))
            .await;
        assert_eq!(reply["type"], "auth_success", "{claims}: {reply}");
    }
}

#[tokio::test]
async fn guest_names_follow_the_account_name_rules_and_refuse_look_alikes() {
    let mut settings = args();
    settings.guest_chat = Some(true);
    settings.open_registration = Some(true);
    let server = TestServer::with(settings).await;
    // Registered and offline.
    server.register("carol", "correct horse battery").await;
    // Online (a token user).
    let _alice = server.user("alice").await;
    let mut guest = server.guest().await;
    let cases = [
        ("\u{430}lice", "validation_error"), // a Cyrillic а
        ("sys\u{200b}tem", "validation_error"),
        ("alice\u{202e}", "validation_error"),
        ("José", "validation_error"),
        ("x", "validation_error"),
        ("admin", "username_taken"),
        ("Guest", "username_taken"),
        ("aIice", "username_taken"),
        ("AL1CE", "username_taken"),
        ("caro1", "username_taken"),
        ("CAROL", "username_taken"),
    ];
    for (name, code) in cases {
        let reply = guest
            .request(json!({"type": "user_join", "username": name}))
            .await;
        assert_eq!(reply["error_code"], code, "{name}: {reply}");
    }
    let named = guest
        .request(json!({"type": "user_join", "username": "dave_2"}))
        .await;
    assert_eq!(named["type"], "user_join", "{named}");
}
