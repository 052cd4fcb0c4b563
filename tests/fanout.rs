//! Fan-out under pressure: a consumer that cannot keep up is closed with 4002
//! and counted, and nobody else loses a message or slows down for it.

mod support;

use serde_json::json;
use support::{TestServer, args, join, slow_user, user_with_recv_buffer};

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

/// A reader that stops reading fills its socket: the frame the socket takes
/// only in part is finished later, and everything after it waits in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_reader_gets_every_frame_whole_and_in_order() {
    let mut settings = args();
    settings.rate_limit_messages = Some(0);
    let server = TestServer::with(settings).await;
    let mut sender = server.user("sender").await;
    let mut paused = user_with_recv_buffer(&server, "paused", 4096).await;
    join(&mut sender, "pile").await;
    join(&mut paused, "pile").await;
    // More than the socket's buffers hold (the kernel's send buffer grows
    // to 4 MiB here), in odd sizes, so that it fills in the middle of one.
    const MESSAGES: usize = 1500;
    let mut sent = Vec::with_capacity(MESSAGES);
    let mut acked = Vec::with_capacity(MESSAGES);
    for n in 0..MESSAGES {
        let content = format!("{n}:{}", "y".repeat(3000 + n * 7 % 900));
        sender
            .send(json!({"type": "chat_message", "room": "pile", "content": content}))
            .await;
        sent.push(content);
        loop {
            let frame = sender.recv().await;
            if frame["type"] == "message_ack" {
                acked.push(frame["message_id"].as_i64().expect("id"));
                break;
            }
        }
    }
    // Everything is stored and acknowledged; far more than the paused
    // socket's buffers hold is waiting for it.
    let mut received = Vec::with_capacity(MESSAGES);
    let mut ids = Vec::with_capacity(MESSAGES);
    while received.len() < MESSAGES {
        let frame = paused.recv().await;
        if frame["type"] == "chat_message" {
            ids.push(frame["message"]["id"].as_i64().expect("id"));
            received.push(
                frame["message"]["content"]
                    .as_str()
                    .expect("content")
                    .to_owned(),
            );
        }
    }
    assert_eq!(ids, acked, "every message, in order");
    assert_eq!(received, sent, "every frame whole");
    paused.assert_alive().await;
}
