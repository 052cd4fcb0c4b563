//! Fan-out under pressure: a consumer that cannot keep up is closed with 4002
//! and counted, and nobody else loses a message or slows down for it.

mod support;

use serde_json::json;
use support::{TestServer, args, join, slow_user};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_with_4002_and_others_lose_nothing() {
    let mut settings = args();
    settings.outbox_capacity = Some(64);
    settings.max_pending_writes = Some(16);
    settings.rate_limit_messages = Some(0);
    let server = TestServer::with(settings).await;
    let mut sender = server.user("sender").await;
    let mut reader = server.user("reader").await;
    let mut slow = slow_user(&server, "slow").await;
    join(&mut sender, "firehose").await;
    join(&mut reader, "firehose").await;
    join(&mut slow, "firehose").await;
    sender.assert_alive().await;
    reader.assert_alive().await;

    const MESSAGES: usize = 3000;
    let content = "x".repeat(4000);
    let reading = tokio::spawn(async move {
        let mut ids = Vec::with_capacity(MESSAGES);
        while ids.len() < MESSAGES {
            let frame = reader.recv().await;
            if frame["type"] == "chat_message" {
                ids.push(frame["message"]["id"].as_i64().expect("id"));
            }
        }
        (reader, ids)
    });
    let mut acked = Vec::with_capacity(MESSAGES);
    for chunk in 0..MESSAGES / 10 {
        for n in 0..10 {
            sender
                .send(json!({"type": "chat_message", "room": "firehose", "content": content, "ref": format!("{}", chunk * 10 + n)}))
                .await;
        }
        let mut seen = 0;
        while seen < 20 {
            let frame = sender.recv().await;
            match frame["type"].as_str() {
                Some("message_ack") => {
                    acked.push(frame["message_id"].as_i64().expect("id"));
                    seen += 1;
                }
                Some("chat_message") => seen += 1,
                _ => {}
            }
        }
    }
    let (mut reader, delivered) = reading.await.expect("reader task");
    assert_eq!(delivered, acked, "the reader got every message, in order");
    assert_eq!(slow.closed().await, Some(4002));
    let stats = server
        .stats_when(|stats| stats["active_connections"] == 2)
        .await;
    assert_eq!(stats["slow_consumer_disconnects"], 1);
    reader.assert_alive().await;
}
