//! `chat_message` (protocol section 4): acknowledgement after storage,
//! delivery to the room and nobody else, global chat, retries with
//! `client_msg_id`, replies, and identity taken from the session.

mod support;

use serde_json::{Value, json};
use support::{TestServer, alice_and_bob_in, join};

#[tokio::test]
async fn a_room_message_reaches_every_member_and_nobody_else() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut alice_phone = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    join(&mut alice, "dev").await;
    join(&mut alice_phone, "dev").await;
    join(&mut bob, "dev").await;
    join(&mut carol, "ops").await;
    // Drain announcements so that only chat traffic is left.
    for client in [&mut alice, &mut alice_phone, &mut bob, &mut carol] {
        client.assert_alive().await;
    }

    alice
        .send(json!({"type": "chat_message", "room": "dev", "content": "hello dev", "ref": "m1"}))
        .await;
    let ack = alice.recv().await;
    assert_eq!(ack["type"], "message_ack", "{ack}");
    assert_eq!(ack["ref"], "m1");
    assert_eq!(ack["room"], "dev");
    assert!(ack["client_msg_id"].is_null());
    let id = ack["message_id"].as_i64().expect("integer id");

    for client in [&mut alice, &mut alice_phone, &mut bob] {
        let frame = client.recv().await;
        assert_eq!(frame["type"], "chat_message", "{frame}");
        let message = &frame["message"];
        assert_eq!(message["id"], id);
        assert_eq!(message["room"], "dev");
        assert_eq!(message["content"], "hello dev");
        assert_eq!(
            message["user"],
            json!({"id": "alice", "username": "alice", "kind": "user"})
        );
        assert_eq!(message["created_at"].as_str().map(str::len), Some(24));
        assert!(
            frame.get("ref").is_none(),
            "broadcasts carry no ref: {frame}"
        );
    }
    carol.expect_silence().await;
}

#[tokio::test]
async fn sending_to_a_room_not_joined_is_forbidden() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    support::subscribe(&mut alice, None).await;
    let mut bob = server.user("bob").await;
    join(&mut bob, "dev").await;
    alice.recv_type("user_join").await;
    let error = alice
        .request(json!({"type": "chat_message", "room": "dev", "content": "sneaky", "ref": "x"}))
        .await;
    assert_eq!(error["error_code"], "forbidden", "{error}");
    assert_eq!(error["ref"], "x");
    bob.expect_silence().await;
    alice.assert_alive().await;
}

#[tokio::test]
async fn global_chat_reaches_every_authenticated_connection_and_named_guest() {
    let mut settings = support::args();
    settings.guest_chat = Some(true);
    let server = TestServer::with(settings).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut named = server.guest().await;
    let mut anonymous = server.guest().await;
    let joined = named
        .request(json!({"type": "user_join", "username": "visitor"}))
        .await;
    assert_eq!(joined["type"], "user_join", "{joined}");
    for client in [&mut alice, &mut bob] {
        client.assert_alive().await;
    }

    for (n, frame) in [
        json!({"type": "chat_message", "content": "to everyone"}),
        json!({"type": "chat_message", "room": "global", "content": "to everyone again"}),
    ]
    .into_iter()
    .enumerate()
    {
        alice.send(frame).await;
        let ack = alice.recv().await;
        assert_eq!(ack["type"], "message_ack", "{ack}");
        assert_eq!(ack["room"], "global");
        for client in [&mut alice, &mut bob, &mut named] {
            let frame = client.recv().await;
            assert_eq!(frame["type"], "chat_message", "message {n}: {frame}");
            assert_eq!(frame["message"]["room"], "global");
            assert_eq!(frame["message"]["id"], ack["message_id"]);
        }
    }
    anonymous.expect_silence().await;

    named
        .send(json!({"type": "chat_message", "content": "hi from a guest"}))
        .await;
    named.recv_type("message_ack").await;
    let frame = alice.recv().await;
    assert_eq!(frame["message"]["user"]["kind"], "guest", "{frame}");
    assert_eq!(frame["message"]["user"]["username"], "visitor");
}

#[tokio::test]
async fn forged_identity_fields_are_ignored() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    support::subscribe(&mut alice, None).await;
    let mut bob = server.user("bob").await;
    alice.recv_type("user_join").await;
    bob.send(json!({
        "type": "chat_message",
        "content": "I am totally alice",
        "username": "alice",
        "user": {"id": "alice", "username": "alice", "kind": "system"},
        "user_id": "alice",
    }))
    .await;
    let frame = alice.recv().await;
    assert_eq!(frame["type"], "chat_message", "{frame}");
    assert_eq!(
        frame["message"]["user"],
        json!({"id": "bob", "username": "bob", "kind": "user"})
    );
}

/// Protocol rule 4 with a reply: a retried reply is acknowledged again with
/// the stored id, and not broadcast again.
#[tokio::test]
async fn a_retried_reply_is_acknowledged_again_and_not_broadcast() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob_in(&server, "dev").await;
    alice
        .send(json!({"type": "chat_message", "room": "dev", "content": "question"}))
        .await;
    let question = alice.recv_type("message_ack").await["message_id"].clone();
    alice.recv_type("chat_message").await;
    bob.recv_type("chat_message").await;

    let reply = json!({"type": "chat_message", "room": "dev", "content": "answer",
        "reply_to": question, "client_msg_id": "r-1"});
    alice.send(reply.clone()).await;
    let first = alice.recv().await;
    assert_eq!(first["type"], "message_ack", "{first}");
    alice.recv_type("chat_message").await;
    assert_eq!(
        bob.recv_type("chat_message").await["message"]["reply_to"],
        question
    );
    alice.send(reply).await;
    let again = alice.recv().await;
    assert_eq!(again["type"], "message_ack", "{again}");
    assert_eq!(again["message_id"], first["message_id"]);
    alice.expect_silence().await;
    bob.expect_silence().await;
}

#[tokio::test]
async fn a_retried_client_msg_id_is_stored_once_and_acknowledged_again() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob_in(&server, "dev").await;

    let send =
        json!({"type": "chat_message", "room": "dev", "content": "once", "client_msg_id": "abc-1"});
    alice.send(send.clone()).await;
    let first = alice.recv().await;
    assert_eq!(first["type"], "message_ack");
    assert_eq!(first["client_msg_id"], "abc-1");
    assert_eq!(bob.recv().await["message"]["client_msg_id"], "abc-1");

    // The retry from another connection of the same user, after a reconnect.
    alice.close().await;
    let mut alice = server.user("alice").await;
    join(&mut alice, "dev").await;
    bob.assert_alive().await; // skips the presence leave and join
    alice.send(send).await;
    let again = alice.recv().await;
    assert_eq!(again["type"], "message_ack", "{again}");
    assert_eq!(again["message_id"], first["message_id"]);
    assert_eq!(again["client_msg_id"], "abc-1");
    alice.expect_silence().await;
    bob.expect_silence().await;

    // The same id from another user is another message.
    bob.send(
        json!({"type": "chat_message", "room": "dev", "content": "mine", "client_msg_id": "abc-1"}),
    )
    .await;
    let other = bob.recv().await;
    assert_ne!(other["message_id"], first["message_id"]);
    alice.send(json!({"type": "history", "room": "dev"})).await;
    let history = alice.recv_type("history").await;
    assert_eq!(
        history["messages"].as_array().map(Vec::len),
        Some(2),
        "{history}"
    );
}

#[tokio::test]
async fn reply_to_must_name_a_message_of_the_same_room() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    join(&mut alice, "dev").await;
    join(&mut alice, "ops").await;
    alice
        .send(json!({"type": "chat_message", "room": "ops", "content": "in ops"}))
        .await;
    let ops_id = alice.recv().await["message_id"].clone();
    alice.recv_type("chat_message").await;
    alice
        .send(json!({"type": "chat_message", "room": "dev", "content": "in dev"}))
        .await;
    let dev_id = alice.recv().await["message_id"].clone();
    alice.recv_type("chat_message").await;

    let error = alice
        .request(json!({"type": "chat_message", "room": "dev", "content": "re", "reply_to": ops_id, "ref": "r"}))
        .await;
    assert_eq!(error["error_code"], "not_found", "{error}");
    assert_eq!(error["ref"], "r");
    assert_eq!(
        error["message"], "reply_to names no message in this room",
        "{error}"
    );
    let error = alice
        .request(
            json!({"type": "chat_message", "room": "dev", "content": "re", "reply_to": 999_999}),
        )
        .await;
    assert_eq!(error["error_code"], "not_found", "{error}");

    let ack = alice
        .request(
            json!({"type": "chat_message", "room": "dev", "content": "re", "reply_to": dev_id}),
        )
        .await;
    assert_eq!(ack["type"], "message_ack", "{ack}");
    let frame = alice.recv().await;
    assert_eq!(frame["message"]["reply_to"], dev_id);
}

#[tokio::test]
async fn a_burst_is_acknowledged_in_order_with_increasing_ids() {
    let mut settings = support::args();
    settings.rate_limit_messages = Some(0); // a burst far past the default limit
    let server = TestServer::with(settings).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    join(&mut alice, "burst").await;
    join(&mut bob, "burst").await;
    alice.assert_alive().await;
    const COUNT: usize = 300;
    for n in 0..COUNT {
        alice
            .send(json!({"type": "chat_message", "room": "burst", "content": format!("{n}"), "ref": format!("{n}")}))
            .await;
    }
    // A frame after the burst is answered after every acknowledgement.
    alice.send(json!({"type": "ping", "ref": "after"})).await;
    let mut acks = Vec::new();
    loop {
        let frame = alice.recv().await;
        match frame["type"].as_str() {
            Some("message_ack") => acks.push(frame),
            Some("chat_message") => {}
            Some("pong") => break,
            _ => panic!("unexpected {frame}"),
        }
    }
    assert_eq!(acks.len(), COUNT);
    let refs: Vec<String> = acks
        .iter()
        .map(|a| a["ref"].as_str().unwrap_or("").to_owned())
        .collect();
    let expected: Vec<String> = (0..COUNT).map(|n| n.to_string()).collect();
    assert_eq!(refs, expected);
    let ids: Vec<i64> = acks
        .iter()
        .filter_map(|a| a["message_id"].as_i64())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not increasing");

    let received: Vec<Value> = {
        let mut frames = Vec::new();
        while frames.len() < COUNT {
            frames.push(bob.recv_type("chat_message").await);
        }
        frames
    };
    let delivered: Vec<i64> = received
        .iter()
        .filter_map(|f| f["message"]["id"].as_i64())
        .collect();
    assert_eq!(delivered, ids, "members receive the messages in id order");
}

#[tokio::test]
async fn an_unauthenticated_connection_cannot_chat() {
    let server = TestServer::start().await;
    let mut guest = server.guest().await;
    let mut alice = server.user("alice").await;
    let error = guest
        .request(json!({"type": "chat_message", "content": "hi", "ref": "g"}))
        .await;
    assert_eq!(error["error_code"], "not_authenticated", "{error}");
    assert_eq!(error["ref"], "g");
    alice.expect_silence().await;
    guest.assert_alive().await;
}

/// Two senders bursting into `global` at once: every connection gets every
/// acknowledged message once, in id order (the order they were stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_global_bursts_arrive_everywhere_in_id_order() {
    let mut settings = support::args();
    settings.rate_limit_messages = Some(0);
    let server = TestServer::with(settings).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    for client in [&mut alice, &mut bob, &mut carol] {
        client.assert_alive().await;
    }
    const EACH: usize = 150;
    let burst = |mut client: support::Client, name: &'static str| {
        tokio::spawn(async move {
            for n in 0..EACH {
                client
                    .send(json!({"type": "chat_message", "content": format!("{name} {n}")}))
                    .await;
            }
            let (mut acked, mut seen) = (Vec::new(), Vec::new());
            while acked.len() < EACH || seen.len() < 2 * EACH {
                let frame = client.recv().await;
                match frame["type"].as_str() {
                    Some("message_ack") => acked.push(frame["message_id"].as_i64().expect("id")),
                    Some("chat_message") => seen.push(frame["message"]["id"].as_i64().expect("id")),
                    _ => {}
                }
            }
            (client, acked, seen)
        })
    };
    let alice = burst(alice, "alice");
    let bob = burst(bob, "bob");
    let mut received = Vec::with_capacity(2 * EACH);
    while received.len() < 2 * EACH {
        let frame = carol.recv_type("chat_message").await;
        received.push(frame["message"]["id"].as_i64().expect("id"));
    }
    let (_alice, alice_acked, alice_seen) = alice.await.expect("alice");
    let (_bob, bob_acked, bob_seen) = bob.await.expect("bob");
    let mut all: Vec<i64> = alice_acked.into_iter().chain(bob_acked).collect();
    all.sort_unstable();
    assert_eq!(received, all, "carol got every message once, in id order");
    assert_eq!(alice_seen, all, "so did alice");
    assert_eq!(bob_seen, all, "so did bob");
    carol.expect_silence().await;
}

#[tokio::test]
async fn a_guest_retrying_after_a_reconnect_is_deduplicated() {
    let mut settings = support::args();
    settings.guest_chat = Some(true);
    let server = TestServer::with(settings).await;
    let mut alice = server.user("alice").await;
    let mut guest = server.guest().await;
    assert_eq!(name_visitor(&mut guest).await["type"], "user_join");
    let message = json!({"type": "chat_message", "content": "once", "client_msg_id": "m-1"});
    let first = guest.request(message.clone()).await;
    assert_eq!(first["type"], "message_ack", "{first}");
    assert_eq!(
        alice.recv_type("chat_message").await["message"]["id"],
        first["message_id"]
    );

    // The guest's connection drops before it saw the ack; it comes back
    // under the same name (once the old connection is gone) and retries.
    guest.close().await;
    let mut again = server.guest().await;
    let mut named = name_visitor(&mut again).await;
    for _ in 0..50 {
        if named["type"] == "user_join" {
            break;
        }
        assert_eq!(named["error_code"], "username_taken", "{named}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        named = name_visitor(&mut again).await;
    }
    assert_eq!(named["type"], "user_join", "{named}");
    let retried = again.request(message).await;
    assert_eq!(retried["type"], "message_ack", "{retried}");
    assert_eq!(retried["message_id"], first["message_id"]);
    // Stored once, and not broadcast again.
    alice.expect_silence().await;
}

async fn name_visitor(guest: &mut support::Client) -> Value {
    guest
        .request(json!({"type": "user_join", "username": "Visitor"}))
        .await
}
