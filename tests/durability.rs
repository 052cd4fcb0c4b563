//! Durability and ordering under failure, with the real binary:
//! - every acknowledged message survives `kill -9` of the server, exactly once
//!   and in order (SQLite, and PostgreSQL where available);
//! - two server processes writing to one PostgreSQL database never make a
//!   message visible after a higher id of the same room, so a client that
//!   recovers with `after_id` in a loop misses nothing.

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use support::process::Process;
use support::{Client, PgSchema, SECRET, join};
use tokio_tungstenite::tungstenite::Message;

/// Messages a client keeps in flight at once.
const WINDOW: usize = 32;

/// Sends `content` numbers from `start` with a window of unacknowledged
/// messages, until the connection breaks or `kill_after` acks arrived (then
/// it kills the server and keeps going until the socket fails). Returns the
/// acknowledged number → message id.
async fn stream_until_killed(
    server: &mut Process,
    room: &str,
    start: u64,
    kill_after: usize,
) -> BTreeMap<u64, i64> {
    let (mut socket, _) = tokio_tungstenite::connect_async(server.url("writer"))
        .await
        .expect("connect");
    let mut acked = BTreeMap::new();
    let send = |n: u64| {
        Message::Text(
            json!({"type": "chat_message", "room": room, "content": n.to_string(),
                   "client_msg_id": n.to_string(), "ref": n.to_string()})
            .to_string()
            .into(),
        )
    };
    socket
        .send(Message::Text(
            json!({"type": "room_join", "room": room})
                .to_string()
                .into(),
        ))
        .await
        .expect("join");
    let mut next = start;
    let mut in_flight = 0;
    let mut killed = false;
    loop {
        while in_flight < WINDOW {
            if socket.send(send(next)).await.is_err() {
                return acked;
            }
            next += 1;
            in_flight += 1;
        }
        let frame = match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                serde_json::from_str::<Value>(&text).expect("JSON")
            }
            Ok(Some(Ok(_))) => continue,
            _ => return acked,
        };
        if frame["type"] == "message_ack" {
            let n: u64 = frame["ref"]
                .as_str()
                .and_then(|r| r.parse().ok())
                .expect("ref");
            acked.insert(n, frame["message_id"].as_i64().expect("id"));
            in_flight -= 1;
            if acked.len() == kill_after && !killed {
                server.kill_hard();
                killed = true;
            }
        }
    }
}

/// Every message of a room, paging with `after_id`.
async fn read_room(client: &mut Client, room: &str) -> Vec<(i64, String)> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        client
            .send(json!({"type": "history", "room": room, "after_id": after, "limit": 200}))
            .await;
        let page = client.recv_type("history").await;
        for message in page["messages"].as_array().expect("messages") {
            let id = message["id"].as_i64().expect("id");
            all.push((id, message["content"].as_str().unwrap_or("").to_owned()));
            after = id;
        }
        if page["has_more"] == false {
            return all;
        }
    }
}

async fn survive_kill_9(flags: &[&str]) {
    let mut all_acked: BTreeMap<u64, i64> = BTreeMap::new();
    let mut next = 0;
    for kill_after in [150, 400, 57] {
        let mut server = Process::start(flags, &[]);
        server.ready().await;
        let acked = stream_until_killed(&mut server, "durable", next, kill_after).await;
        assert!(
            acked.len() >= kill_after,
            "the server acknowledged messages before dying"
        );
        next = acked.keys().max().copied().unwrap_or(next) + WINDOW as u64 + 1;
        all_acked.extend(acked);
    }

    let server = Process::start(flags, &[]);
    server.ready().await;
    let mut reader = server.user("reader").await;
    join(&mut reader, "durable").await;
    let stored = read_room(&mut reader, "durable").await;
    assert!(
        stored.windows(2).all(|w| w[0].0 < w[1].0),
        "ids strictly increase"
    );
    let mut by_content: HashMap<&str, i64> = HashMap::new();
    for (id, content) in &stored {
        assert!(
            by_content.insert(content, *id).is_none(),
            "`{content}` stored twice"
        );
    }
    for (n, id) in &all_acked {
        assert_eq!(
            by_content.get(n.to_string().as_str()),
            Some(id),
            "acknowledged message {n} (id {id}) is missing after kill -9"
        );
    }
    // Acknowledged messages are in the order they were sent.
    let acked_ids: Vec<i64> = all_acked.values().copied().collect();
    assert!(acked_ids.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn acknowledged_messages_survive_kill_9_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().to_str().expect("utf-8 path").to_owned();
    survive_kill_9(&[
        "--data-dir",
        &data_dir,
        "--jwt-secret",
        SECRET,
        "--rate-limit-messages",
        "0",
    ])
    .await;
}

#[tokio::test]
async fn acknowledged_messages_survive_kill_9_on_postgres() {
    let Some(schema) = PgSchema::create("kill_9").await else {
        return;
    };
    survive_kill_9(&[
        "--database",
        &schema.url,
        "--jwt-secret",
        SECRET,
        "--rate-limit-messages",
        "0",
    ])
    .await;
}

#[tokio::test]
async fn two_nodes_on_one_postgres_never_show_ids_out_of_order() {
    let Some(schema) = PgSchema::create("two_nodes").await else {
        return;
    };
    let flags = [
        "--database",
        schema.url.as_str(),
        "--jwt-secret",
        SECRET,
        "--rate-limit-messages",
        "0",
    ];
    let node_a = Process::start(&flags, &[]);
    let node_b = Process::start(&flags, &[]);
    node_a.ready().await;
    node_b.ready().await;

    const PER_WRITER: u64 = 300;
    let (node_a_url_1, node_a_url_2) = (node_a.url("writer-a1"), node_a.url("writer-a2"));
    let (node_b_url_1, node_b_url_2) = (node_b.url("writer-b1"), node_b.url("writer-b2"));
    let (node_a_url_3, node_b_url_3) = (node_a.url("writer-a3"), node_b.url("writer-b3"));
    let writer = |url: String, name: &'static str| async move {
        let mut client = Client::connect(&url).await;
        join(&mut client, "shared").await;
        let mut acked = Vec::new();
        let mut sent = 0;
        while (acked.len() as u64) < PER_WRITER {
            while sent < PER_WRITER && sent - (acked.len() as u64) < 4 {
                client
                    .send(json!({"type": "chat_message", "room": "shared", "content": format!("{name}-{sent}")}))
                    .await;
                sent += 1;
            }
            acked.push(
                client.recv_type("message_ack").await["message_id"]
                    .as_i64()
                    .expect("id"),
            );
        }
        acked
    };
    let writers = tokio::spawn(async move {
        let (a1, b1, a2, b2, a3, b3) = tokio::join!(
            writer(node_a_url_1, "a1"),
            writer(node_b_url_1, "b1"),
            writer(node_a_url_2, "a2"),
            writer(node_b_url_2, "b2"),
            writer(node_a_url_3, "a3"),
            writer(node_b_url_3, "b3"),
        );
        let a: Vec<i64> = a1.into_iter().chain(a2).chain(a3).collect();
        let b: Vec<i64> = b1.into_iter().chain(b2).chain(b3).collect();
        (a, b)
    });

    // The reader recovers in a loop, as a reconnecting client would.
    let mut reader = node_a.user("reader").await;
    join(&mut reader, "shared").await;
    let mut seen: Vec<i64> = Vec::new();
    let mut writers = Some(writers);
    let mut acked_total = Vec::new();
    loop {
        // Once the writers are done, one more pass picks up the tail.
        let done = writers.as_ref().is_some_and(|w| w.is_finished());
        if done {
            let (a, b) = writers
                .take()
                .expect("writers")
                .await
                .expect("writer tasks");
            acked_total = a.into_iter().chain(b).collect();
        }
        loop {
            let after = seen.last().copied().unwrap_or(0);
            reader
                .send(json!({"type": "history", "room": "shared", "after_id": after, "limit": 50}))
                .await;
            let page = reader.recv_type("history").await;
            for message in page["messages"].as_array().expect("messages") {
                seen.push(message["id"].as_i64().expect("id"));
            }
            if page["has_more"] == false {
                break;
            }
        }
        if done {
            break;
        }
    }
    let everything: Vec<i64> = read_room(&mut reader, "shared")
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(everything.len() as u64, 6 * PER_WRITER);
    let skipped: Vec<&i64> = everything.iter().filter(|id| !seen.contains(id)).collect();
    assert!(
        skipped.is_empty(),
        "the recovering reader skipped {skipped:?}"
    );
    assert_eq!(
        seen.len(),
        everything.len(),
        "the recovering reader saw a message twice"
    );
    acked_total.sort_unstable();
    assert_eq!(acked_total, everything);
}
