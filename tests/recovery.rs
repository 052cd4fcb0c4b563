//! History and reconnect recovery over the WebSocket (`history`, `room_join`
//! with `since_id`), on SQLite and, where `ROOMCAST_TEST_POSTGRES_URL` is set,
//! on PostgreSQL.

mod support;

use serde_json::{Value, json};
use support::{PgSchema, TestServer, args, join};

/// Starts a server on each available backend and runs `check` against it.
macro_rules! on_every_backend {
    ($name:ident, $check:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                let mut settings = super::args();
                settings.max_recovery = Some(5);
                super::$check(super::TestServer::with(settings).await).await;
            }

            #[tokio::test]
            async fn postgres() {
                let Some(schema) = super::PgSchema::create(stringify!($name)).await else {
                    return;
                };
                let mut settings = super::args();
                settings.max_recovery = Some(5);
                settings.database = Some(schema.url.clone());
                super::$check(super::TestServer::with(settings).await).await;
            }
        }
    };
}

fn ids(messages: &Value) -> Vec<i64> {
    messages
        .as_array()
        .expect("array of messages")
        .iter()
        .filter_map(|m| m["id"].as_i64())
        .collect()
}

async fn send_all(client: &mut support::Client, room: &str, count: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for n in 0..count {
        client
            .send(json!({"type": "chat_message", "room": room, "content": format!("m{n}")}))
            .await;
        ids.push(
            client.recv_type("message_ack").await["message_id"]
                .as_i64()
                .expect("id"),
        );
    }
    ids
}

on_every_backend!(a_reconnecting_client_recovers_everything, check_recovery);
async fn check_recovery(server: TestServer) {
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    join(&mut alice, "dev").await;
    join(&mut bob, "dev").await;
    let first = send_all(&mut alice, "dev", 2).await;
    // bob saw these, then drops.
    let mut last_seen = 0;
    while last_seen < first[1] {
        last_seen = bob.recv_type("chat_message").await["message"]["id"]
            .as_i64()
            .expect("id");
    }
    bob.close().await;
    let missed = send_all(&mut alice, "dev", 12).await;

    // bob comes back: rejoin with the last id, then page until done.
    let mut bob = server.user("bob").await;
    bob.send(json!({"type": "room_join", "room": "dev", "since_id": last_seen}))
        .await;
    let joined = bob.recv_type("room_joined").await;
    let mut recovered = ids(&joined["recent_messages"]);
    assert_eq!(recovered, missed[..5], "the first max_recovery messages");
    assert_eq!(joined["missed"], true);
    loop {
        let after = *recovered.last().expect("some");
        bob.send(json!({"type": "history", "room": "dev", "after_id": after, "limit": 4}))
            .await;
        let page = bob.recv_type("history").await;
        recovered.extend(ids(&page["messages"]));
        if page["has_more"] == false {
            break;
        }
    }
    assert_eq!(recovered, missed, "nothing lost, nothing twice, in order");

    // Caught up: since_id at the newest id replays nothing.
    let mut carol = server.user("carol").await;
    carol
        .send(json!({"type": "room_join", "room": "dev", "since_id": missed[11]}))
        .await;
    let joined = carol.recv_type("room_joined").await;
    assert_eq!(joined["recent_messages"], json!([]));
    assert_eq!(joined["missed"], false);
}

on_every_backend!(history_pages_over_the_websocket, check_history);
async fn check_history(server: TestServer) {
    let mut alice = server.user("alice").await;
    join(&mut alice, "dev").await;
    let sent = send_all(&mut alice, "dev", 6).await;
    let page = alice
        .request(json!({"type": "history", "room": "dev", "limit": 4, "ref": "h"}))
        .await;
    let page = if page["type"] == "history" {
        page
    } else {
        alice.recv_type("history").await
    };
    assert_eq!(page["ref"], "h");
    assert_eq!(page["room"], "dev");
    assert_eq!(ids(&page["messages"]), sent[2..]);
    assert_eq!(page["has_more"], true);
    alice
        .send(json!({"type": "history", "room": "dev", "before_id": sent[2], "limit": 4}))
        .await;
    let page = alice.recv_type("history").await;
    assert_eq!(ids(&page["messages"]), sent[..2]);
    assert_eq!(page["has_more"], false);
    alice
        .send(json!({"type": "history", "room": "dev", "before_id": i64::MAX}))
        .await;
    assert_eq!(ids(&alice.recv_type("history").await["messages"]), sent);
    alice
        .send(json!({"type": "history", "room": "dev", "after_id": 0, "limit": 200}))
        .await;
    assert_eq!(ids(&alice.recv_type("history").await["messages"]), sent);

    for bad in [
        json!({"type": "history", "room": "dev", "after_id": -1}),
        json!({"type": "history", "room": "dev", "after_id": 9_223_372_036_854_775_808u64}),
        json!({"type": "history", "room": "dev", "limit": 1_000_000}),
        json!({"type": "history", "room": "dev", "before_id": 1, "after_id": 1}),
        json!({"type": "room_join", "room": "dev", "since_id": -3}),
        json!({"type": "chat_message", "room": "dev", "content": "x", "client_msg_id": "y".repeat(65)}),
    ] {
        alice.send(bad.clone()).await;
        let error = alice.recv_type("error").await;
        assert_eq!(error["error_code"], "validation_error", "{bad}: {error}");
    }

    // Someone who has not joined reads nothing, by any route.
    let mut mallory = server.user("mallory").await;
    let error = mallory
        .request(json!({"type": "history", "room": "dev"}))
        .await;
    assert_eq!(error["error_code"], "forbidden", "{error}");
    let (status, body) = server
        .get_json(
            "/api/rooms/nonexistent/messages",
            Some(&server.token("mallory")),
        )
        .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn retention_runs_in_the_background() {
    let mut settings = args();
    settings.retention_max_messages = Some(3);
    settings.retention_interval_ms = Some(50);
    let server = TestServer::with(settings).await;
    let mut alice = server.user("alice").await;
    join(&mut alice, "dev").await;
    let sent = send_all(&mut alice, "dev", 8).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        alice
            .send(json!({"type": "history", "room": "dev", "limit": 200}))
            .await;
        let page = alice.recv_type("history").await;
        if ids(&page["messages"]) == sent[5..] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never ran: {page}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

on_every_backend!(
    global_history_pages_over_the_websocket,
    check_global_history
);
/// Protocol rule 3 (paging) on `global`, whose newest page the embedded store
/// answers from memory: the newest `limit` messages with an exact `has_more`,
/// the same page in a new connection's welcome, and paging on from there.
async fn check_global_history(server: TestServer) {
    let mut alice = server.user("alice").await;
    let sent = send_all(&mut alice, "global", 6).await;
    alice
        .send(json!({"type": "history", "room": "global", "limit": 4}))
        .await;
    let page = alice.recv_type("history").await;
    assert_eq!(page["room"], "global");
    assert_eq!(ids(&page["messages"]), sent[2..]);
    assert_eq!(page["has_more"], true);
    alice
        .send(json!({"type": "history", "room": "global", "limit": 200}))
        .await;
    let page = alice.recv_type("history").await;
    assert_eq!(ids(&page["messages"]), sent);
    assert_eq!(page["has_more"], false);
    alice
        .send(json!({"type": "history", "room": "global", "before_id": sent[2], "limit": 4}))
        .await;
    let page = alice.recv_type("history").await;
    assert_eq!(ids(&page["messages"]), sent[..2]);
    assert_eq!(page["has_more"], false);
    let bob = server.user("bob").await;
    assert_eq!(ids(&bob.welcome["recent_messages"]), sent);
}
