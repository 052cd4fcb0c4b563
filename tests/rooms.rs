//! Rooms (protocol section 4): `room_join`, `room_leave`, `presence`,
//! `user_typing`, and the member lists and presence events around them.

mod support;

use serde_json::json;
use support::{TestServer, args, join};

#[tokio::test]
async fn joining_lists_members_and_tells_the_room_once_per_user() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut outsider = server.user("outsider").await;
    let joined = join(&mut alice, "dev").await;
    assert_eq!(joined["room"], "dev");
    assert_eq!(joined["member_count"], 1);
    assert_eq!(
        joined["members"],
        json!([{"id": "alice", "username": "alice", "kind": "user"}])
    );
    assert_eq!(joined["missed"], false);
    assert_eq!(joined["recent_messages"], json!([]));
    outsider.assert_alive().await;

    let joined = join(&mut bob, "dev").await;
    assert_eq!(joined["member_count"], 2);
    let names: Vec<&str> = joined["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["username"].as_str())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    let presence = alice.recv_type("presence").await;
    assert_eq!(presence["event"], "join");
    assert_eq!(presence["room"], "dev");
    assert_eq!(presence["user"]["id"], "bob");
    bob.expect_silence().await;

    // bob's second connection: no new member, no presence event.
    let mut bob2 = server.user("bob").await;
    let joined = join(&mut bob2, "dev").await;
    assert_eq!(joined["member_count"], 2);
    alice.expect_silence().await;
    outsider.expect_silence().await;
}

#[tokio::test]
async fn room_joined_carries_recent_messages_oldest_first() {
    let mut settings = args();
    settings.room_history = Some(2);
    let server = TestServer::with(settings).await;
    let mut alice = server.user("alice").await;
    join(&mut alice, "dev").await;
    for n in 1..=3 {
        alice
            .send(json!({"type": "chat_message", "room": "dev", "content": format!("m{n}")}))
            .await;
        alice.recv_type("chat_message").await;
    }
    let mut bob = server.user("bob").await;
    let joined = join(&mut bob, "dev").await;
    let contents: Vec<&str> = joined["recent_messages"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(contents, ["m2", "m3"]);
}

#[tokio::test]
async fn members_are_capped_but_counted_in_full() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for n in 0..105 {
        let mut client = server.user(&format!("user{n:03}")).await;
        join(&mut client, "big").await;
        clients.push(client);
    }
    let mut last = server.user("zzz").await;
    let joined = join(&mut last, "big").await;
    assert_eq!(joined["member_count"], 106);
    let members = joined["members"].as_array().expect("members");
    assert_eq!(members.len(), 100);
    assert_eq!(members[0]["username"], "user000");
    assert_eq!(members[99]["username"], "user099");

    let page = last
        .request(json!({"type": "presence", "room": "big", "offset": 100, "limit": 10, "ref": "p"}))
        .await;
    assert_eq!(page["type"], "presence_state", "{page}");
    assert_eq!(page["ref"], "p");
    assert_eq!(page["member_count"], 106);
    let names: Vec<&str> = page["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["username"].as_str())
        .collect();
    assert_eq!(
        names,
        ["user100", "user101", "user102", "user103", "user104", "zzz"]
    );
}

#[tokio::test]
async fn presence_pages_are_ordered_by_username_bytes() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for name in ["bob", "Zed", "alice", "Ann"] {
        let token = server.token_with(&format!("id-{name}"), Some(name), None);
        let mut client = support::Client::connect(&server.url(&format!("?token={token}"))).await;
        join(&mut client, "r").await;
        clients.push(client);
    }
    let me = &mut clients[0];
    me.send(json!({"type": "presence", "room": "r"})).await;
    let state = me.recv_type("presence_state").await;
    let names: Vec<&str> = state["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["username"].as_str())
        .collect();
    assert_eq!(names, ["Ann", "Zed", "alice", "bob"]);
}

#[tokio::test]
async fn presence_and_history_need_the_room_joined() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    support::subscribe(&mut alice, None).await;
    let mut bob = server.user("bob").await;
    join(&mut bob, "secret").await;
    alice.recv_type("user_join").await;
    for frame in [
        json!({"type": "presence", "room": "secret"}),
        json!({"type": "history", "room": "secret"}),
        json!({"type": "user_typing", "room": "secret"}),
    ] {
        let error = alice.request(frame.clone()).await;
        assert_eq!(error["error_code"], "forbidden", "{frame}: {error}");
    }
    bob.expect_silence().await;
}

#[tokio::test]
async fn leaving_tells_the_room_when_the_user_is_gone() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut bob2 = server.user("bob").await;
    join(&mut alice, "dev").await;
    join(&mut bob, "dev").await;
    join(&mut bob2, "dev").await;
    alice.recv_type("presence").await;

    let left = bob2
        .request(json!({"type": "room_leave", "room": "dev", "ref": "l"}))
        .await;
    assert_eq!(left["type"], "room_left", "{left}");
    assert_eq!(left["room"], "dev");
    assert_eq!(left["ref"], "l");
    alice.expect_silence().await;

    bob.send(json!({"type": "room_leave", "room": "dev"})).await;
    assert_eq!(bob.recv_type("room_left").await["room"], "dev");
    let presence = alice.recv().await;
    assert_eq!(presence["type"], "presence", "{presence}");
    assert_eq!(presence["event"], "leave");
    assert_eq!(presence["user"]["id"], "bob");

    // bob no longer gets the room's messages.
    alice
        .send(json!({"type": "chat_message", "room": "dev", "content": "still here?"}))
        .await;
    alice.recv_type("chat_message").await;
    bob.expect_silence().await;
}

#[tokio::test]
async fn leaving_a_room_not_joined_is_not_found() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let error = alice
        .request(json!({"type": "room_leave", "room": "nowhere"}))
        .await;
    assert_eq!(error["error_code"], "not_found", "{error}");
    alice.assert_alive().await;
}

#[tokio::test]
async fn the_global_room_cannot_be_joined() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let error = alice
        .request(json!({"type": "room_join", "room": "global"}))
        .await;
    assert_eq!(error["error_code"], "validation_error", "{error}");
    assert!(error["message"].as_str().unwrap_or("").contains("room"));
}

#[tokio::test]
async fn joining_twice_is_harmless() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    join(&mut bob, "dev").await;
    join(&mut alice, "dev").await;
    bob.recv_type("presence").await;
    let again = join(&mut alice, "dev").await;
    assert_eq!(again["member_count"], 2);
    bob.expect_silence().await;
}

#[tokio::test]
async fn typing_reaches_the_rooms_other_connections() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut alice2 = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    join(&mut alice, "dev").await;
    join(&mut alice2, "dev").await;
    join(&mut bob, "dev").await;
    for client in [&mut alice, &mut alice2, &mut bob, &mut carol] {
        client.assert_alive().await;
    }
    alice
        .send(json!({"type": "user_typing", "room": "dev"}))
        .await;
    for client in [&mut alice2, &mut bob] {
        let typing = client.recv().await;
        assert_eq!(typing["type"], "user_typing", "{typing}");
        assert_eq!(typing["room"], "dev");
        assert_eq!(typing["is_typing"], true);
        assert_eq!(typing["user"]["id"], "alice");
    }
    alice.expect_silence().await;
    carol.expect_silence().await;

    alice
        .send(json!({"type": "user_typing", "room": "dev", "is_typing": false}))
        .await;
    assert_eq!(bob.recv().await["is_typing"], false);
}

#[tokio::test]
async fn closing_the_last_connection_in_a_room_tells_the_room() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    join(&mut alice, "dev").await;
    join(&mut bob, "dev").await;
    alice.recv_type("presence").await;
    bob.close().await;
    let presence = alice.recv_type("presence").await;
    assert_eq!(presence["event"], "leave");
    let joined = join(&mut alice, "dev").await;
    assert_eq!(joined["member_count"], 1);
}

#[tokio::test]
async fn rooms_a_join_created_and_nobody_used_go_and_creating_them_is_capped() {
    let mut settings = support::args();
    settings.max_rooms_created_per_hour = Some(3);
    let server = support::TestServer::with(settings).await;
    let mut alice = server.user("alice").await;
    let stats = |room: &'static str| {
        let server = &server;
        async move {
            server
                .get_json(
                    &format!("/api/rooms/{room}/stats"),
                    Some(support::ADMIN_KEY),
                )
                .await
                .0
        }
    };
    // Joined and left without a word: the room's row goes.
    support::join(&mut alice, "passing").await;
    assert_eq!(stats("passing").await, 200);
    alice
        .request(json!({"type": "room_leave", "room": "passing"}))
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while stats("passing").await != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "the unused room stayed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A room with a message stays.
    support::join(&mut alice, "used").await;
    alice
        .request(json!({"type": "chat_message", "room": "used", "content": "hi"}))
        .await;
    alice
        .request(json!({"type": "room_leave", "room": "used"}))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(stats("used").await, 200);

    // Three new rooms an hour for alice ("passing" and "used" were two):
    // the next new one is refused, joining an existing one is not.
    support::join(&mut alice, "third").await;
    let refused = alice
        .request(json!({"type": "room_join", "room": "fourth"}))
        .await;
    assert_eq!(refused["error_code"], "rate_limited", "{refused}");
    assert!(refused["retry_after_ms"].as_u64().is_some(), "{refused}");
    support::join(&mut alice, "used").await;
    // Another user has an allowance of their own.
    let mut bob = server.user("bob").await;
    support::join(&mut bob, "fourth").await;
}
