//! Several nodes (`--broker redis://...`): real roomcast processes on the
//! machine's Redis and PostgreSQL. Chat, global chat, typing, room members
//! and presence, online announcements and per-user connection limits cross
//! nodes; a node subscribes to a room's channel only while it has members
//! there; a dead node is counted off; a Redis restart and a rolling restart
//! of the nodes lose nothing; SQLite with Redis is refused.

mod support;

use serde_json::json;
use std::time::Duration;
use support::nodes::{redis_url, two_nodes_with};
use support::process::Process;
use support::{ADMIN_KEY, PgSchema, SECRET, http_request, join, subscribe};

/// Two nodes on one PostgreSQL schema and one Redis.
async fn two_nodes(test: &str) -> Option<(Process, Process, PgSchema, String, String)> {
    two_nodes_with(test, &[], &[]).await
}

#[tokio::test]
async fn chat_presence_and_announcements_cross_nodes() {
    let Some((node_a, node_b, _schema, _, _)) = two_nodes("cross_nodes").await else {
        return;
    };
    let mut alice = node_a.user("alice").await;
    subscribe(&mut alice, None).await;
    // The subscription is made before bob arrives on the other node.
    let mut bob = node_b.user("bob").await;
    let arrived = alice.recv_type("user_join").await;
    assert_eq!(arrived["user"]["id"], "bob", "{arrived}");

    join(&mut alice, "dev").await;
    join(&mut bob, "dev").await;
    let presence = alice.recv_type("presence").await;
    assert_eq!(presence["event"], "join");
    assert_eq!(presence["user"]["id"], "bob");

    // A room message from node B reaches node A's member, once.
    let ack = bob
        .request(json!({"type": "chat_message", "room": "dev", "content": "from b"}))
        .await;
    assert_eq!(ack["type"], "message_ack", "{ack}");
    let said = alice.recv_type("chat_message").await;
    assert_eq!(said["message"]["id"], ack["message_id"]);
    assert_eq!(said["message"]["content"], "from b");

    // Typing, and global chat the other way.
    bob.send(json!({"type": "user_typing", "room": "dev"}))
        .await;
    let typing = alice.recv_type("user_typing").await;
    assert_eq!(typing["user"]["id"], "bob");
    let ack = alice
        .request(json!({"type": "chat_message", "content": "to everyone"}))
        .await;
    assert_eq!(ack["type"], "message_ack", "{ack}");
    // (Bob's own room message comes first.)
    let global = loop {
        let frame = bob.recv_type("chat_message").await;
        if frame["message"]["room"] == "global" {
            break frame;
        }
    };
    assert_eq!(global["message"]["id"], ack["message_id"]);
    assert_eq!(global["message"]["room"], "global");
    let own = alice.recv_type("chat_message").await;
    assert_eq!(own["message"]["id"], ack["message_id"]);

    // Leaving crosses too, and nothing arrives twice.
    bob.send(json!({"type": "room_leave", "room": "dev"})).await;
    let left = loop {
        let frame = alice.recv().await;
        if frame["type"] == "presence" {
            break frame;
        }
        assert_ne!(
            frame["type"], "chat_message",
            "a message came twice: {frame}"
        );
    };
    assert_eq!(left["event"], "leave");
    drop(bob);
    let gone = alice.recv_type("user_leave").await;
    assert_eq!(gone["user"]["id"], "bob");
    alice.expect_silence().await;
}

#[tokio::test]
async fn messages_sent_right_after_a_join_on_another_node_arrive() {
    let Some((node_a, node_b, _schema, _, _)) = two_nodes("right_after_join").await else {
        return;
    };
    // Many rounds of: a member joins a fresh room on node B (the node's
    // first), and at once a message is sent to the room from node A.
    let mut sender = node_a.user("sender").await;
    for round in 0..20 {
        let room = format!("fresh-{round}");
        join(&mut sender, &room).await;
        let mut member = node_b.user(&format!("member-{round}")).await;
        join(&mut member, &room).await;
        sender
            .send(json!({"type": "chat_message", "room": room, "content": "hi"}))
            .await;
        let ack = sender.recv_type("message_ack").await;
        let said = member.recv_type("chat_message").await;
        assert_eq!(said["message"]["id"], ack["message_id"], "round {round}");
    }
}

#[tokio::test]
async fn a_node_hears_a_room_only_while_it_has_members_there() {
    let Some((node_a, _node_b, _schema, redis, namespace)) = two_nodes("interest").await else {
        return;
    };
    let client = redis::Client::open(redis).expect("redis url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let channel = format!("{namespace}:room:quiet");
    let mut listeners = async || -> i64 {
        let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async(&mut connection)
            .await
            .expect("PUBSUB NUMSUB");
        counts.first().map_or(0, |(_, count)| *count)
    };
    assert_eq!(listeners().await, 0);
    let mut alice = node_a.user("alice").await;
    join(&mut alice, "quiet").await;
    assert_eq!(listeners().await, 1, "node A listens once it has a member");
    let mut alice_again = node_a.user("alice").await;
    join(&mut alice_again, "quiet").await;
    assert_eq!(
        listeners().await,
        1,
        "one subscription per node, not per member"
    );
    for client in [&mut alice, &mut alice_again] {
        client
            .send(json!({"type": "room_leave", "room": "quiet"}))
            .await;
        client.recv_type("room_left").await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while listeners().await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node A still listens to a room it has no member in"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn redis_with_sqlite_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = format!("sqlite://{}", dir.path().join("chat.db").display());
    let mut node = Process::start(
        &[
            "--database",
            &database,
            "--broker",
            "redis://127.0.0.1:6379",
            "--jwt-secret",
            SECRET,
        ],
        &[],
    );
    assert_eq!(node.exit_code(Duration::from_secs(10)).await, 2);
    let stderr = node.stderr();
    assert!(
        stderr.contains("a Redis broker runs several nodes, which need one shared PostgreSQL"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[tokio::test]
async fn concurrent_senders_on_two_nodes_are_seen_in_one_id_order_everywhere() {
    let Some((node_a, node_b, _schema, _, _)) = two_nodes("one_order").await else {
        return;
    };
    let mut readers = Vec::new();
    for (node, name) in [(&node_a, "reader-a"), (&node_b, "reader-b")] {
        let mut reader = node.user(name).await;
        join(&mut reader, "shared").await;
        readers.push(reader);
    }
    const PER_WRITER: usize = 150;
    let writer = |url: String, name: &'static str| async move {
        let mut client = support::Client::connect(&url).await;
        join(&mut client, "shared").await;
        let mut acked = Vec::new();
        let mut sent = 0;
        while acked.len() < PER_WRITER {
            while sent < PER_WRITER && sent - acked.len() < 8 {
                client
                    .send(json!({"type": "chat_message", "room": "shared", "content": format!("{name}-{sent}")}))
                    .await;
                sent += 1;
            }
            let ack = client.recv_type("message_ack").await;
            acked.push(ack["message_id"].as_i64().expect("id"));
        }
        acked
    };
    let writers = [
        tokio::spawn(writer(node_a.url("writer-a1"), "a1")),
        tokio::spawn(writer(node_a.url("writer-a2"), "a2")),
        tokio::spawn(writer(node_b.url("writer-b1"), "b1")),
        tokio::spawn(writer(node_b.url("writer-b2"), "b2")),
    ];
    let mut all = Vec::new();
    for writer in writers {
        all.extend(writer.await.expect("writer"));
    }
    all.sort_unstable();
    for (n, reader) in readers.iter_mut().enumerate() {
        let mut seen = Vec::new();
        while seen.len() < all.len() {
            let frame = reader.recv_type("chat_message").await;
            seen.push(frame["message"]["id"].as_i64().expect("id"));
        }
        assert_eq!(
            seen, all,
            "reader {n} saw the room's messages out of order or not once each"
        );
    }
}

fn token(sub: &str) -> String {
    roomcast::auth::Tokens::new(SECRET).mint(sub, None, None, 600)
}

#[tokio::test]
async fn a_kick_and_a_removal_reach_the_node_that_holds_the_connection() {
    let Some((node_a, node_b, _schema, _, _)) = two_nodes("admin").await else {
        return;
    };
    // Kicked through node A, held by node B.
    let mut victim = node_b.user("victim").await;
    let mut witness = node_b.user("witness").await;
    let path = format!("/api/connections/{}/kick", victim.connection_id());
    let (status, body) =
        http_request(node_a.addr(), "POST", &path, Some(ADMIN_KEY), None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(victim.closed().await, Some(4003));
    witness.assert_alive().await;
    // Gone, or never there: 404 from either node.
    let (status, _) = http_request(node_a.addr(), "POST", &path, Some(ADMIN_KEY), None, None).await;
    assert_eq!(status, 404);
    let (status, _) = http_request(
        node_a.addr(),
        "POST",
        "/api/connections/nope/kick",
        Some(ADMIN_KEY),
        None,
        None,
    )
    .await;
    assert_eq!(status, 404);

    // A private room: bob, on node B, is removed through node A.
    let owner = token("owner");
    let (status, body) = http_request(
        node_a.addr(),
        "POST",
        "/api/rooms",
        Some(&owner),
        Some(&json!({"name": "secret", "private": true})),
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = http_request(
        node_a.addr(),
        "POST",
        "/api/rooms/secret/members",
        Some(&owner),
        Some(&json!({"user_id": "bob"})),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut bob = node_b.user("bob").await;
    join(&mut bob, "secret").await;
    let (status, body) = http_request(
        node_a.addr(),
        "DELETE",
        "/api/rooms/secret/members/bob",
        Some(&owner),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let left = bob.recv_type("room_left").await;
    assert_eq!(left["room"], "secret");
    let error = bob
        .request(json!({"type": "room_join", "room": "secret"}))
        .await;
    assert_eq!(error["error_code"], "forbidden", "{error}");
}

#[tokio::test]
async fn stats_give_this_node_and_the_cluster_totals() {
    let Some((node_a, node_b, _schema, _, _)) = two_nodes("stats").await else {
        return;
    };
    let _alice = node_a.user("alice").await;
    let _bob = node_b.user("bob").await;
    let _carol = node_b.user("carol").await;
    // Nodes report every 5 seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
    loop {
        let (status, body) = http_request(
            node_a.addr(),
            "GET",
            "/api/stats",
            Some(ADMIN_KEY),
            None,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["active_connections"], 1, "this node's own: {body}");
        let cluster = &body["cluster"];
        if cluster["nodes"] == 2 && cluster["active_connections"] == 3 {
            assert_eq!(cluster["online_users"], 3, "{body}");
            assert!(body["node"].is_string());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no cluster totals of both nodes: {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until something listens on `port` (a server the test started).
async fn listening(port: u16, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Redis server of the test's own, which it may stop and start again.
struct PrivateRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// `None` (and a visible skip, or a failure under CI) without a
    /// `redis-server` binary.
    fn start(test: &str) -> Option<PrivateRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("free port");
        let mut redis = PrivateRedis { port, child: None };
        if !redis.resume() {
            support::skipped(test, "a redis-server binary", "PATH");
            return None;
        }
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again); `false` if there is no binary.
    fn resume(&mut self) -> bool {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        match child {
            Ok(child) => {
                self.child = Some(child);
                true
            }
            Err(_) => false,
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn ready(&self) {
        listening(self.port, "redis-server").await;
    }

    /// Subscribers of `channel` (connections, one per node).
    async fn listeners(&self, channel: &str) -> i64 {
        let Ok(client) = redis::Client::open(self.url()) else {
            return 0;
        };
        let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
            return 0;
        };
        let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut connection)
            .await
            .unwrap_or_default();
        counts.first().map_or(0, |(_, count)| *count)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn a_redis_restart_loses_nothing_and_keeps_the_order() {
    let Some(mut redis) = PrivateRedis::start("redis_restart") else {
        return;
    };
    let Some(schema) = PgSchema::create("redis_restart").await else {
        return;
    };
    redis.ready().await;
    let url = redis.url();
    let flags = [
        "--database",
        schema.url.as_str(),
        "--broker",
        url.as_str(),
        "--jwt-secret",
        SECRET,
    ];
    let (node_a, node_b) = (Process::start(&flags, &[]), Process::start(&flags, &[]));
    node_a.ready().await;
    node_b.ready().await;
    let mut alice = node_a.user("alice").await;
    subscribe(&mut alice, None).await;
    let mut bob = node_b.user("bob").await;
    join(&mut alice, "dev").await;
    join(&mut bob, "dev").await;
    let mut said = Vec::new();
    let mut say = async |bob: &mut support::Client, text: &str| {
        bob.send(json!({"type": "chat_message", "room": "dev", "content": text}))
            .await;
        let ack = bob.recv_type("message_ack").await;
        said.push(ack["message_id"].as_i64().expect("id"));
    };
    say(&mut bob, "before").await;

    // Redis goes away; bob goes on talking (stored, acknowledged).
    redis.kill();
    say(&mut bob, "during 1").await;
    say(&mut bob, "during 2").await;
    // Redis comes back: both nodes subscribe to the room again.
    assert!(redis.resume());
    redis.ready().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while redis.listeners("roomcast:room:dev").await < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the nodes did not subscribe again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say(&mut bob, "after").await;

    // Alice, on the other node, has every message once, in order.
    let mut seen = Vec::new();
    while seen.len() < said.len() {
        let frame = alice.recv_type("chat_message").await;
        seen.push(frame["message"]["id"].as_i64().expect("id"));
    }
    assert_eq!(seen, said);

    // The restarted Redis had lost who is online and who is in which room;
    // the nodes recorded theirs again, so bob's departure is still told.
    bob.close().await;
    let left = alice.recv_type("presence").await;
    assert_eq!(
        (left["event"].as_str(), left["user"]["id"].as_str()),
        (Some("leave"), Some("bob"))
    );
    let gone = alice.recv_type("user_leave").await;
    assert_eq!(gone["user"]["id"], "bob");
}

#[tokio::test]
async fn a_user_is_online_once_however_many_nodes_hold_them_and_a_dead_node_is_counted_off() {
    let Some((node_a, mut node_b, _schema, _, _)) = two_nodes("online_once").await else {
        return;
    };
    let mut alice = node_a.user("alice").await;
    subscribe(&mut alice, None).await;
    let bob_on_b = node_b.user("bob").await;
    let joined = alice.recv_type("user_join").await;
    assert_eq!(joined["user"]["id"], "bob");
    // A subscriber who comes later is told bob is online, though on the
    // other node; a list watches only its users.
    let mut erin = node_a.user("erin").await;
    let state = subscribe(&mut erin, None).await;
    assert_eq!(member_ids(&state), ["alice", "bob", "erin"], "{state}");
    assert_eq!(state["member_count"], 3, "{state}");
    let state = subscribe(&mut erin, Some(&["bob", "nobody"])).await;
    assert_eq!(member_ids(&state), ["bob"], "{state}");
    assert_eq!(state["member_count"], 1, "{state}");
    erin.close().await;
    let left = alice.recv_type("user_leave").await;
    assert_eq!(left["user"]["id"], "erin");
    // A second connection of bob's, on the other node: bob was online already.
    let bob_on_a = node_a.user("bob").await;
    alice.expect_silence().await;
    // Node B's connection goes: bob is still online on node A.
    bob_on_b.close().await;
    alice.expect_silence().await;
    bob_on_a.close().await;
    let left = alice.recv_type("user_leave").await;
    assert_eq!(left["user"]["id"], "bob");

    // Carol's node dies without a word: carol is announced gone once the
    // node has been silent for 15 s (nodes report every 5 s).
    let _carol = node_b.user("carol").await;
    let joined = alice.recv_type("user_join").await;
    assert_eq!(joined["user"]["id"], "carol");
    node_b.kill_hard();
    let gone = recv_type_within(&mut alice, "user_leave", 30, "carol was not counted off").await;
    assert_eq!(gone["user"]["id"], "carol");
}

/// The next frame of type `kind`, waiting up to `seconds` (a dead node is
/// counted off within 25 s); fails with `why` after that.
async fn recv_type_within(
    client: &mut support::Client,
    kind: &str,
    seconds: u64,
    why: &str,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        match tokio::time::timeout(Duration::from_secs(1), client.recv()).await {
            Ok(frame) if frame["type"] == kind => return frame,
            _ => assert!(tokio::time::Instant::now() < deadline, "{why}"),
        }
    }
}

fn member_ids(frame: &serde_json::Value) -> Vec<String> {
    frame["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .filter_map(|member| member["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn room_members_counts_and_large_rooms_span_nodes() {
    let Some((node_a, mut node_b, _schema, _, _)) =
        two_nodes_with("room_members", &["--presence-max-members", "2"], &[]).await
    else {
        return;
    };
    let mut alice = node_a.user("alice").await;
    let joined = join(&mut alice, "dev").await;
    assert_eq!(member_ids(&joined), ["alice"], "{joined}");

    // Bob joins on the other node: his list has alice, alice hears of him.
    let mut bob_on_b = node_b.user("bob").await;
    let joined = join(&mut bob_on_b, "dev").await;
    assert_eq!(member_ids(&joined), ["alice", "bob"], "{joined}");
    assert_eq!(joined["member_count"], 2, "{joined}");
    let presence = alice.recv_type("presence").await;
    assert_eq!(
        (presence["event"].as_str(), presence["user"]["id"].as_str()),
        (Some("join"), Some("bob"))
    );

    // A second connection of bob's, on node A: bob is one member.
    let mut bob_on_a = node_a.user("bob").await;
    let joined = join(&mut bob_on_a, "dev").await;
    assert_eq!(joined["member_count"], 2, "{joined}");
    alice.expect_silence().await;
    let state = alice
        .request(json!({"type": "presence", "room": "dev"}))
        .await;
    assert_eq!(state["member_count"], 2, "{state}");
    assert_eq!(member_ids(&state), ["alice", "bob"], "{state}");
    bob_on_b.close().await;
    alice.expect_silence().await;

    // Carol makes three of limit 2 on node B: large everywhere, so alice
    // gets a count, not an event.
    let mut carol = node_b.user("carol").await;
    let joined = join(&mut carol, "dev").await;
    assert_eq!(joined["member_count"], 3, "{joined}");
    let count = alice.recv_type("presence_count").await;
    assert_eq!(count["member_count"], 3, "{count}");
    // Back to two: small again, the leave is an event.
    carol
        .request(json!({"type": "room_leave", "room": "dev"}))
        .await;
    let left = alice.recv_type("presence").await;
    assert_eq!(
        (left["event"].as_str(), left["user"]["id"].as_str()),
        (Some("leave"), Some("carol"))
    );

    bob_on_a.close().await;
    let left = alice.recv_type("presence").await;
    assert_eq!(
        (left["event"].as_str(), left["user"]["id"].as_str()),
        (Some("leave"), Some("bob"))
    );

    // Dave's node dies without a word: node A tells alice dave left once
    // the node has been silent for 15 s.
    let mut dave = node_b.user("dave").await;
    join(&mut dave, "dev").await;
    let presence = alice.recv_type("presence").await;
    assert_eq!(presence["user"]["id"], "dave", "{presence}");
    node_b.kill_hard();
    let gone = recv_type_within(
        &mut alice,
        "presence",
        30,
        "dave was not taken out of the room",
    )
    .await;
    assert_eq!(
        (gone["event"].as_str(), gone["user"]["id"].as_str()),
        (Some("leave"), Some("dave"))
    );
    let state = alice
        .request(json!({"type": "presence", "room": "dev"}))
        .await;
    assert_eq!(member_ids(&state), ["alice"], "{state}");
}

#[tokio::test]
async fn the_per_user_connection_limit_counts_every_node() {
    let Some((node_a, mut node_b, _schema, _, _)) =
        two_nodes_with("user_limit", &["--max-connections-per-user", "2"], &[]).await
    else {
        return;
    };
    let _on_a = node_a.user("bob").await;
    let on_b = node_b.user("bob").await;
    // Each node counts its own in Redis, a moment after the login.
    eventually_refused(&node_a.url("bob")).await;
    eventually_refused(&node_b.url("bob")).await;
    // Another user is not affected.
    let _alice = node_a.user("alice").await;

    // One closes on node B: there is room for one more on node A.
    on_b.close().await;
    let _again = eventually_admitted(&node_a.url("bob")).await;
    eventually_refused(&node_b.url("bob")).await;

    // Node B's connections are counted off when it dies: carol's two there
    // hold her limit until the sweep frees it.
    let _carol_1 = node_b.user("carol").await;
    let _carol_2 = node_b.user("carol").await;
    eventually_refused(&node_a.url("carol")).await;
    node_b.kill_hard();
    let _carol = tokio::time::timeout(
        Duration::from_secs(30),
        eventually_admitted(&node_a.url("carol")),
    )
    .await
    .expect("carol's connections on the dead node were not counted off");
}

/// Connects to `url`: the socket if the server let it in (its first frame
/// is the welcome), else the close code it was given.
async fn try_connect(url: &str) -> Result<Socket, Option<u16>> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
        Ok(Some(Ok(Message::Text(text)))) if text.contains("\"welcome\"") => Ok(socket),
        Ok(Some(Ok(Message::Close(frame)))) => Err(frame.map(|frame| u16::from(frame.code))),
        other => panic!("neither a welcome nor a close: {other:?}"),
    }
}

/// Tries until the server refuses `url` with 4004 (counts cross nodes a
/// moment after the logins); a connection let in meanwhile is closed again.
async fn eventually_refused(url: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match try_connect(url).await {
            Err(Some(4004)) => return,
            Err(code) => panic!("closed with {code:?}, not 4004"),
            Ok(mut socket) => {
                let _ = socket.close(None).await;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Tries until the server lets `url` in; returns the open socket.
async fn eventually_admitted(url: &str) -> Socket {
    loop {
        match try_connect(url).await {
            Ok(socket) => return socket,
            Err(Some(4004)) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(code) => panic!("closed with {code:?}"),
        }
    }
}

/// Where clients of the rolling restart connect: the nodes up now.
type Live = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

fn pick(live: &Live, turn: usize) -> Option<String> {
    let live = live.lock().expect("live list");
    (!live.is_empty()).then(|| live[turn % live.len()].clone())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects as `sub` to a live node and joins `dev` from `since_id`;
/// returns the socket and the `room_joined` frame.
async fn enter(
    live: &Live,
    turn: usize,
    sub: &str,
    since_id: i64,
) -> Option<(Socket, serde_json::Value)> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let base = pick(live, turn)?;
    let token = roomcast::auth::Tokens::new(SECRET).mint(sub, None, None, 600);
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("{base}?token={token}"))
        .await
        .ok()?;
    let mut join = json!({"type": "room_join", "room": "dev", "ref": "j"});
    if since_id > 0 {
        join["since_id"] = json!(since_id);
    }
    socket.send(Message::text(join.to_string())).await.ok()?;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), socket.next()).await;
        let Ok(Some(Ok(Message::Text(text)))) = frame else {
            return None;
        };
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        if value["type"] == "room_joined" {
            return Some((socket, value));
        }
    }
}

/// A member that follows `dev` through node restarts until `until` (a
/// message id) has arrived: the ids it got, each once, and the close codes
/// it was given.
async fn follow_through_restarts(
    live: Live,
    first_turn: usize,
    sub: String,
    until: tokio::sync::watch::Receiver<i64>,
) -> (Vec<i64>, Vec<u16>) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let (mut got, mut closes, mut last, mut turn) = (Vec::new(), Vec::new(), 0i64, first_turn);
    let take = |id: i64, got: &mut Vec<i64>, last: &mut i64| {
        if id > *last {
            got.push(id);
            *last = id;
        }
    };
    loop {
        turn += 1;
        let Some((mut socket, joined)) = enter(&live, turn, &sub, last).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        for message in joined["recent_messages"].as_array().into_iter().flatten() {
            if let Some(id) = message["id"].as_i64() {
                take(id, &mut got, &mut last);
            }
        }
        loop {
            let target = *until.borrow();
            if target > 0 && last >= target {
                return (got, closes);
            }
            match tokio::time::timeout(Duration::from_millis(200), socket.next()).await {
                Err(_) => continue,
                Ok(Some(Ok(Message::Text(text)))) => {
                    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    if value["type"] == "chat_message"
                        && let Some(id) = value["message"]["id"].as_i64()
                    {
                        take(id, &mut got, &mut last);
                    }
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    closes.push(frame.map_or(1005, |frame| u16::from(frame.code)));
                    break;
                }
                Ok(Some(Ok(_))) => {}
                Ok(_) => break,
            }
        }
    }
}

/// Sends `count` messages, each retried with its `client_msg_id` until
/// acknowledged, through node restarts; the acknowledged ids.
async fn send_through_restarts(live: Live, count: usize) -> Vec<i64> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut acked = Vec::new();
    let mut socket: Option<Socket> = None;
    let mut turn = 0;
    for n in 0..count {
        loop {
            if socket.is_none() {
                turn += 1;
                socket = enter(&live, turn, "sender", 0)
                    .await
                    .map(|(socket, _)| socket);
                if socket.is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            let Some(open) = socket.as_mut() else {
                continue;
            };
            let message = json!({"type": "chat_message", "room": "dev", "content": format!("m{n}"),
                "client_msg_id": format!("m{n}")});
            if open.send(Message::text(message.to_string())).await.is_err() {
                socket = None;
                continue;
            }
            let ack = loop {
                match tokio::time::timeout(Duration::from_secs(3), open.next()).await {
                    Ok(Some(Ok(Message::Text(text)))) => {
                        let value: serde_json::Value =
                            serde_json::from_str(&text).unwrap_or_default();
                        if value["type"] == "message_ack" {
                            break value["message_id"].as_i64();
                        }
                    }
                    Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => {
                        break None;
                    }
                    Ok(Some(Ok(_))) => {}
                }
            };
            match ack {
                Some(id) => {
                    acked.push(id);
                    break;
                }
                None => socket = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    acked
}

#[tokio::test]
async fn a_rolling_restart_under_load_loses_no_acknowledged_message() {
    let test = "rolling_restart";
    let Some(redis) = redis_url(test) else {
        return;
    };
    let Some(schema) = PgSchema::create(test).await else {
        return;
    };
    let namespace = support::nodes::namespace(test);
    let flags = support::nodes::node_flags(&schema, &redis, &namespace);
    let url = |node: &Process| format!("ws://{}/ws", node.addr());
    let mut node_a = Process::start(&flags, &[]);
    let mut node_b = Process::start(&flags, &[]);
    node_a.ready().await;
    node_b.ready().await;
    let live: Live = std::sync::Arc::new(std::sync::Mutex::new(vec![url(&node_a), url(&node_b)]));
    let (done, until) = tokio::sync::watch::channel(0i64);
    let members: Vec<_> = (0..4)
        .map(|n| {
            tokio::spawn(follow_through_restarts(
                live.clone(),
                n,
                format!("member{n}"),
                until.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sender = tokio::spawn(send_through_restarts(live.clone(), 300));

    // Node A goes (SIGTERM: its clients are closed with 1001 and come to
    // B), comes back; then node B does the same.
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (going, staying) = if round == 0 {
            (&mut node_a, &node_b)
        } else {
            (&mut node_b, &node_a)
        };
        *live.lock().expect("live list") = vec![url(staying)];
        going.terminate();
        assert_eq!(going.exit_code(Duration::from_secs(15)).await, 0);
        let back = Process::start(&flags, &[]);
        back.ready().await;
        live.lock().expect("live list").push(url(&back));
        *going = back;
    }
    let acked = sender.await.expect("sender");
    assert_eq!(acked.len(), 300);
    let newest = *acked.iter().max().expect("acked");
    done.send(newest).expect("members listen");
    for member in members {
        let (got, closes) = tokio::time::timeout(Duration::from_secs(30), member)
            .await
            .expect("a member did not catch up")
            .expect("member");
        let mut expected = acked.clone();
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(got, expected, "every acknowledged message once, in order");
        assert!(
            !closes.is_empty() && closes.iter().all(|code| *code == 1001),
            "{closes:?}"
        );
    }
}

/// A Redis Cluster of three shards (no replicas) of the test's own.
struct Cluster {
    ports: Vec<u16>,
    children: Vec<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Cluster {
    /// `None` (and a visible skip, or a failure under CI) without
    /// `redis-server` and `redis-cli`.
    async fn start(test: &str) -> Option<Cluster> {
        let dir = tempfile::tempdir().expect("temp dir");
        // Ports whose cluster bus port (+10000) is free too.
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .map(|addr| addr.port())
                .expect("free port");
            if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
                ports.push(port);
            }
        }
        let mut children = Vec::new();
        for port in &ports {
            let config = dir.path().join(format!("nodes-{port}.conf"));
            let child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(&config)
                .args(["--save", "", "--appendonly", "no"])
                .current_dir(dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            match child {
                Ok(child) => children.push(child),
                Err(_) => {
                    support::skipped(test, "a redis-server binary", "PATH");
                    return None;
                }
            }
        }
        let cluster = Cluster {
            ports,
            children,
            _dir: dir,
        };
        for port in &cluster.ports {
            listening(*port, "redis-server").await;
        }

        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        match created {
            Ok(status) => assert!(status.success(), "redis-cli --cluster create failed"),
            Err(_) => {
                support::skipped(test, "a redis-cli binary", "PATH");
                return None;
            }
        }
        // Every shard agrees the cluster is up.
        for port in &cluster.ports {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut cluster.shard(*port).await)
                    .await
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the cluster did not come up"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Some(cluster)
    }

    fn url(&self) -> String {
        let seeds: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis-cluster://{}", seeds.join(","))
    }

    async fn shard(&self, port: u16) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("shard connection")
    }

    /// Subscriptions to `channel` over all shards: shard (`SSUBSCRIBE`)
    /// and classic (`SUBSCRIBE`) ones.
    async fn listeners(&self, channel: &str) -> (i64, i64) {
        let (mut sharded, mut classic) = (0, 0);
        for port in &self.ports {
            let mut shard = self.shard(*port).await;
            let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("SHARDNUMSUB")
                .arg(channel)
                .query_async(&mut shard)
                .await
                .expect("PUBSUB SHARDNUMSUB");
            sharded += counts.first().map_or(0, |(_, n)| *n);
            let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(channel)
                .query_async(&mut shard)
                .await
                .expect("PUBSUB NUMSUB");
            classic += counts.first().map_or(0, |(_, n)| *n);
        }
        (sharded, classic)
    }
}

#[tokio::test]
async fn two_nodes_on_a_redis_cluster_use_shard_channels_for_rooms() {
    let test = "redis_cluster";
    let Some(cluster) = Cluster::start(test).await else {
        return;
    };
    let Some(schema) = PgSchema::create(test).await else {
        return;
    };
    let namespace = support::nodes::namespace(test);
    let url = cluster.url();
    let flags = support::nodes::node_flags(&schema, &url, &namespace);
    let (a, b) = support::nodes::start_two(&flags, &[]).await;
    let control = format!("{namespace}:control");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cluster.listeners(&control).await.1 < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes did not subscribe"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    join(&mut alice, "dev").await;
    let joined = join(&mut bob, "dev").await;
    assert_eq!(joined["member_count"], 2, "{joined}");
    let room = format!("{namespace}:room:dev");
    assert_eq!(
        cluster.listeners(&room).await,
        (2, 0),
        "a shard channel per node, no classic one"
    );

    for n in 0..20 {
        let (sender, text) = if n % 2 == 0 {
            (&mut alice, "a")
        } else {
            (&mut bob, "b")
        };
        sender
            .send(json!({"type": "chat_message", "room": "dev", "content": format!("{text}{n}")}))
            .await;
    }
    let mut seen = [Vec::new(), Vec::new()];
    for (reader, seen) in [&mut alice, &mut bob].into_iter().zip(seen.iter_mut()) {
        while seen.len() < 20 {
            let frame = reader.recv_type("chat_message").await;
            seen.push(frame["message"]["id"].as_i64().expect("id"));
        }
    }
    assert_eq!(seen[0], seen[1], "both nodes deliver one order");
    assert!(
        seen[0].windows(2).all(|pair| pair[0] < pair[1]),
        "in id order"
    );

    // Global chat crosses on a classic channel.
    bob.send(json!({"type": "chat_message", "content": "to everyone"}))
        .await;
    let global = alice.recv_type("chat_message").await;
    assert_eq!(global["message"]["room"], "global");

    // Leaving a room leaves its shard channel.
    alice
        .send(json!({"type": "room_leave", "room": "dev", "ref": "l"}))
        .await;
    bob.send(json!({"type": "room_leave", "room": "dev", "ref": "l"}))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cluster.listeners(&room).await != (0, 0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the nodes kept the room's channel"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
