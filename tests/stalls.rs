//! A database that stops answering: PostgreSQL held by a lock, as a
//! migration or a runaway query would hold it. The connection stays alive
//! and read (pings answered, activity counted), frames that wait too long
//! for storage get `unavailable`, and the chat message in flight gets its
//! ack once storage answers.

mod support;

use serde_json::json;
use std::time::Duration;
use support::{PgSchema, TestServer, args, join};

#[tokio::test]
async fn a_stalled_database_keeps_the_connection_and_sends_the_late_ack() {
    let Some(schema) = PgSchema::create("stalled_database").await else {
        return;
    };
    let mut settings = args();
    settings.database = Some(schema.url.clone());
    settings.store_timeout_ms = Some(800);
    settings.heartbeat_interval_ms = Some(200);
    settings.idle_timeout_ms = Some(1_500);
    let server = TestServer::with(settings).await;
    let mut alice = server.user("alice").await;
    join(&mut alice, "dev").await;

    // Another session holds the messages table.
    let (locker, connection) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    locker
        .batch_execute("BEGIN; LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");

    alice
        .send(json!({"type": "chat_message", "room": "dev", "content": "stuck", "ref": "m"}))
        .await;
    alice
        .send(json!({"type": "user_typing", "room": "dev", "ref": "t"}))
        .await;
    // The typing frame waited behind the message longer than the store
    // timeout: it is refused, to be tried again, and the connection stays.
    let refused = alice.recv_type("error").await;
    assert_eq!(refused["error_code"], "unavailable", "{refused}");
    assert_eq!(refused["ref"], "t", "{refused}");
    assert!(refused["retry_after_ms"].as_u64().is_some(), "{refused}");

    // Past the idle timeout, the connection lives: it is read, and the
    // client's answers to the server's pings count as activity.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(2_000) {
        let frame = tokio::time::timeout(Duration::from_millis(100), alice.recv()).await;
        if let Ok(frame) = frame {
            assert_ne!(
                frame["type"], "message_ack",
                "acknowledged before it was stored"
            );
        }
    }

    // Storage answers again: the message is stored and its ack comes late.
    locker.batch_execute("COMMIT").await.expect("unlock");
    let ack = alice.recv_type("message_ack").await;
    assert_eq!(ack["ref"], "m", "{ack}");
    alice.send(json!({"type": "ping", "ref": "p"})).await;
    let pong = alice.recv_type("pong").await;
    assert_eq!(pong["ref"], "p", "{pong}");
}
