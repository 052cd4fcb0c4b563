//! Connection lifecycle (protocol sections 1 and 3): upgrade with and without
//! a token, the welcome package, heartbeats, idle clean-up, and what others
//! hear when a connection closes.

mod support;

use serde_json::json;
use support::{Client, TestServer, args};

#[tokio::test]
async fn welcome_for_a_token_at_upgrade_by_query_or_header() {
    let server = TestServer::start().await;
    let by_query = server.user("alice").await;
    let welcome = &by_query.welcome;
    assert_eq!(welcome["authenticated"], true);
    assert_eq!(welcome["user"]["id"], "alice");
    assert_eq!(welcome["user"]["username"], "alice");
    assert_eq!(welcome["user"]["kind"], "user");
    assert_eq!(welcome["server"]["name"], "roomcast");
    assert!(welcome["server"]["version"].is_string());
    assert_eq!(welcome["heartbeat_interval_ms"], 30000);
    assert_eq!(welcome["limits"]["max_frame_bytes"], 65536);
    assert_eq!(welcome["limits"]["max_message_chars"], 4000);
    assert!(welcome["connection_id"].is_string());
    assert!(welcome["recent_messages"].as_array().is_some());
    let timestamp = welcome["timestamp"].as_str().expect("timestamp");
    assert_eq!(timestamp.len(), 24, "{timestamp}");
    assert!(timestamp.ends_with('Z'));

    let token = server.token_with("bob", Some("Bobby"), None);
    let by_header = Client::try_connect(&server.url(""), Some(&token))
        .await
        .expect("upgrade with header");
    assert_eq!(by_header.welcome["authenticated"], true);
    assert_eq!(by_header.welcome["user"]["username"], "Bobby");
    assert_ne!(by_header.connection_id(), by_query.connection_id());
}

#[tokio::test]
async fn a_guest_gets_an_unauthenticated_welcome_without_history() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    alice
        .send(json!({"type": "chat_message", "content": "before the guest"}))
        .await;
    alice.recv_type("chat_message").await;
    let guest = server.guest().await;
    assert_eq!(guest.welcome["authenticated"], false);
    assert!(guest.welcome["user"].is_null());
    assert_eq!(guest.welcome["recent_messages"], json!([]));
}

#[tokio::test]
async fn an_invalid_token_at_upgrade_is_refused_with_401() {
    let server = TestServer::start().await;
    let forged = roomcast::auth::Tokens::new("another-secret").mint("alice", None, None, 60);
    let status = Client::try_connect(&server.url(&format!("?token={forged}")), None)
        .await
        .err();
    assert_eq!(status, Some(401));
    let status = Client::try_connect(&server.url(""), Some("not-a-jwt"))
        .await
        .err();
    assert_eq!(status, Some(401));
    let mut alice = server.user("alice").await;
    alice.assert_alive().await;
}

#[tokio::test]
async fn welcome_holds_the_newest_global_messages_oldest_first() {
    let mut settings = args();
    settings.welcome_history = Some(3);
    let server = TestServer::with(settings).await;
    let mut alice = server.user("alice").await;
    for n in 1..=5 {
        alice
            .send(json!({"type": "chat_message", "content": format!("m{n}")}))
            .await;
        alice.recv_type("chat_message").await;
    }
    let bob = server.user("bob").await;
    let contents: Vec<&str> = bob.welcome["recent_messages"]
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m["content"].as_str().expect("content"))
        .collect();
    assert_eq!(contents, ["m3", "m4", "m5"]);
    let message = &bob.welcome["recent_messages"][0];
    assert_eq!(message["room"], "global");
    assert_eq!(message["user"]["username"], "alice");
    assert!(message["client_msg_id"].is_null());
    assert!(message["reply_to"].is_null());
    assert!(message["attachment"].is_null());
}

#[tokio::test]
async fn the_server_pings_and_closes_idle_connections_with_4001() {
    let mut settings = args();
    settings.heartbeat_interval_ms = Some(50);
    settings.idle_timeout_ms = Some(400);
    let server = TestServer::with(settings).await;
    let mut lively = server.user("lively").await;
    let mut idle = server.user("idle").await;
    // `idle` reads nothing (so it does not even answer pings) while `lively`
    // keeps talking; both for longer than the idle timeout.
    for _ in 0..8 {
        lively.assert_alive().await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(idle.closed().await, Some(4001));
    lively.assert_alive().await;
    let stats = server
        .stats_when(|stats| stats["active_connections"] == 1)
        .await;
    assert_eq!(stats["connections"][0]["user_id"], "lively");
}

#[tokio::test]
async fn heartbeat_pings_arrive_at_the_configured_interval() {
    let mut settings = args();
    settings.heartbeat_interval_ms = Some(50);
    let server = TestServer::with(settings).await;
    let mut client = server.user("alice").await;
    assert_eq!(client.welcome["heartbeat_interval_ms"], 50);
    assert!(
        client
            .pings_within(std::time::Duration::from_millis(500))
            .await
            >= 3
    );
}

#[tokio::test]
async fn closing_announces_presence_leave_and_user_leave() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    support::subscribe(&mut alice, None).await;
    let mut bob = server.user("bob").await;
    alice.recv_type("user_join").await;
    support::join(&mut alice, "lobby").await;
    support::join(&mut bob, "lobby").await;
    assert_eq!(alice.recv().await["type"], "presence");

    // A second connection of bob: closing it is not bob leaving.
    let mut bob2 = server.user("bob").await;
    support::join(&mut bob2, "lobby").await;
    bob2.close().await;
    alice.expect_silence().await;

    bob.close().await;
    let leave = alice.recv().await;
    assert_eq!(leave["type"], "presence", "{leave}");
    assert_eq!(leave["event"], "leave");
    assert_eq!(leave["room"], "lobby");
    assert_eq!(leave["user"]["id"], "bob");
    let gone = alice.recv().await;
    assert_eq!(gone["type"], "user_leave", "{gone}");
    assert_eq!(gone["user"]["id"], "bob");
}

#[tokio::test]
async fn shutdown_closes_every_socket_with_1001_without_announcements() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    support::subscribe(&mut alice, None).await;
    let mut bob = server.user("bob").await;
    alice.recv_type("user_join").await;
    support::join(&mut alice, "lobby").await;
    support::join(&mut bob, "lobby").await;
    alice.recv_type("presence").await;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(alice.closed().await, Some(1001));
    assert_eq!(bob.closed().await, Some(1001));
    stopping.await.expect("server stopped");
}

#[tokio::test]
async fn healthz_answers_200() {
    let server = TestServer::start().await;
    let (status, body) = server.get("/healthz", None).await;
    assert_eq!(status, 200);
    assert_eq!(body.trim(), "ok");
}

/// While another user keeps sending to `global`, every new connection's
/// welcome holds the newest messages without a gap, including every one
/// acknowledged before the connection was opened. (The embedded store
/// answers this page from memory when no write is pending.)
#[tokio::test]
async fn welcomes_miss_no_acknowledged_message_while_chat_goes_on() {
    let mut settings = args();
    settings.rate_limit_messages = Some(0);
    let server = TestServer::with(settings).await;
    let mut carol = server.user("carol").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for n in 0..8 {
                    carol
                        .send(json!({"type": "chat_message", "content": format!("c{sent}-{n}")}))
                        .await;
                }
                for _ in 0..8 {
                    carol.recv_type("message_ack").await;
                }
                sent += 1;
            }
            sent
        }
    });
    let mut alice = server.user("alice").await;
    for round in 0..40 {
        alice
            .send(json!({"type": "chat_message", "content": format!("a{round}")}))
            .await;
        let acked = alice.recv_type("message_ack").await["message_id"]
            .as_i64()
            .expect("message_id");
        let reader = server.user(&format!("reader{round}")).await;
        let ids: Vec<i64> = reader.welcome["recent_messages"]
            .as_array()
            .expect("recent_messages")
            .iter()
            .map(|m| m["id"].as_i64().expect("id"))
            .collect();
        assert!(!ids.is_empty());
        assert!(
            ids.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "a gap in round {round}: {ids:?}"
        );
        assert!(
            *ids.last().expect("newest") >= acked,
            "round {round}: acked {acked}, welcome ends at {ids:?}"
        );
        assert!(ids.len() == 50 || ids[0] == 1, "round {round}: {ids:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = background.await.expect("carol");
    assert!(rounds > 0, "carol sent nothing meanwhile");
}
