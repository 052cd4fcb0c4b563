//! The `roomcast` binary as operators run it (protocol section 8): flags,
//! environment variables, the config file, a file database that outlives a
//! restart, and SIGTERM.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::process::Process;
use support::{ADMIN_KEY, SECRET};

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_0() {
    let mut server = Process::start(
        &[
            "--database",
            "sqlite::memory:",
            "--jwt-secret",
            SECRET,
            "--admin-key",
            ADMIN_KEY,
        ],
        &[("RUST_LOG", "roomcast=info")],
    );
    server.ready().await;
    let mut alice = server.user("alice").await;
    support::subscribe(&mut alice, None).await;
    let mut bob = server.user("bob").await;
    alice.recv_type("user_join").await;
    support::join(&mut alice, "dev").await;
    support::join(&mut bob, "dev").await;
    alice.recv_type("presence").await;
    let started = Instant::now();
    server.terminate();
    // Protocol rule 12: shutdown announces nobody's departure, it closes.
    let (frames, code) = alice.frames_until_close().await;
    assert_eq!(code, Some(1001));
    assert!(
        frames
            .iter()
            .all(|frame| frame["type"] != "user_leave" && frame["type"] != "presence"),
        "{frames:?}"
    );
    assert_eq!(bob.closed().await, Some(1001));
    assert_eq!(server.exit_code(Duration::from_secs(10)).await, 0);
    assert!(started.elapsed() < Duration::from_secs(10));
    // Text logs into a pipe carry no colour codes.
    let stderr = server.stderr();
    assert!(stderr.contains("listening on"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

#[tokio::test]
async fn settings_come_from_environment_variables() {
    let server = Process::start(
        &[],
        &[
            ("ROOMCAST_DATABASE", "sqlite::memory:"),
            ("ROOMCAST_JWT_SECRET", SECRET),
            ("ROOMCAST_ADMIN_KEY", ADMIN_KEY),
            ("ROOMCAST_MAX_MESSAGE_CHARS", "7"),
            ("ROOMCAST_HEARTBEAT_INTERVAL_MS", "1234"),
            ("ROOMCAST_GUEST_CHAT", "1"),
            ("ROOMCAST_THREADS", "1"),
        ],
    );
    server.ready().await;
    let mut guest = support::Client::connect(&format!("ws://{}/ws", server.addr())).await;
    let named = guest
        .request(json!({"type": "user_join", "username": "visitor"}))
        .await;
    assert_eq!(
        named["type"], "user_join",
        "boolean variables accept 1: {named}"
    );
    let client = server.user("alice").await;
    assert_eq!(client.welcome["limits"]["max_message_chars"], 7);
    assert_eq!(client.welcome["heartbeat_interval_ms"], 1234);
    let (status, _) = support::http_get(server.addr(), "/api/stats", Some(ADMIN_KEY)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn settings_come_from_a_config_file_under_the_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("roomcast.toml");
    std::fs::write(
        &file,
        format!(
            "database = \"sqlite::memory:\"\njwt_secret = \"{SECRET}\"\nmax_frame_bytes = 2048\nmax_message_chars = 9\n"
        ),
    )
    .expect("write config");
    let server = Process::start(
        &[
            "--config",
            file.to_str().expect("utf-8 path"),
            "--max-message-chars",
            "11",
        ],
        &[],
    );
    server.ready().await;
    let client = server.user("alice").await;
    assert_eq!(client.welcome["limits"]["max_frame_bytes"], 2048);
    assert_eq!(client.welcome["limits"]["max_message_chars"], 11);
}

#[tokio::test]
async fn a_broken_config_stops_start_up_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("roomcast.toml");
    std::fs::write(&file, "max_frame_byte = 2048\n").expect("write config");
    let mut server = Process::start(&["--config", file.to_str().expect("utf-8 path")], &[]);
    assert_eq!(server.exit_code(Duration::from_secs(10)).await, 2);
    let stderr = server.stderr();
    assert!(stderr.contains("max_frame_byte"), "{stderr}");

    for bad in [["--idle-timeout-ms", "0"], ["--threads", "0"]] {
        let mut server = Process::start(&bad, &[]);
        assert_eq!(
            server.exit_code(Duration::from_secs(10)).await,
            2,
            "{bad:?}"
        );
    }

    // A database scheme roomcast does not know is refused, not taken for a
    // file path (whose directories would be created).
    let cwd = tempfile::tempdir().expect("tempdir");
    let mut server = Process::start_in(cwd.path(), &["--database", "mysql://root@db/chat"], &[]);
    assert_eq!(server.exit_code(Duration::from_secs(10)).await, 2);
    let stderr = server.stderr();
    assert!(
        stderr.contains("unknown database scheme `mysql`"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(cwd.path()).expect("read dir").count(),
        0,
        "nothing created"
    );
}

#[tokio::test]
async fn a_database_it_cannot_open_stops_start_up_before_it_says_listening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-database.db");
    std::fs::write(
        &file,
        "this is not SQLite, and long enough to be read as a header\n",
    )
    .expect("write file");
    let mut server = Process::start(
        &["--database", file.to_str().expect("utf-8 path")],
        &[("RUST_LOG", "roomcast=info")],
    );
    assert_eq!(server.exit_code(Duration::from_secs(10)).await, 1);
    let stderr = server.stderr();
    assert!(stderr.contains("cannot open the message store"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
}

#[tokio::test]
async fn a_file_database_keeps_messages_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().to_str().expect("utf-8 path").to_owned();
    let flags = ["--data-dir", data_dir.as_str(), "--jwt-secret", SECRET];
    let mut server = Process::start(&flags, &[]);
    server.ready().await;
    let mut alice = server.user("alice").await;
    alice
        .send(json!({"type": "chat_message", "content": "remember me", "client_msg_id": "k1"}))
        .await;
    let ack = alice.recv_type("message_ack").await;
    server.terminate();
    assert_eq!(server.exit_code(Duration::from_secs(10)).await, 0);
    assert!(dir.path().join("roomcast.db").exists());

    let server = Process::start(&flags, &[]);
    server.ready().await;
    let mut alice = server.user("alice").await;
    let recent = &alice.welcome["recent_messages"];
    assert_eq!(recent[0]["content"], "remember me", "{recent}");
    assert_eq!(recent[0]["id"], ack["message_id"]);
    // The retry after the restart is recognised.
    alice
        .send(json!({"type": "chat_message", "content": "remember me", "client_msg_id": "k1"}))
        .await;
    let again = alice.recv().await;
    assert_eq!(again["type"], "message_ack", "{again}");
    assert_eq!(again["message_id"], ack["message_id"]);
}

#[tokio::test]
async fn debug_logs_tell_connections_and_failures_in_json_without_secrets() {
    let mut server = Process::start(
        &[
            "--database",
            "sqlite::memory:",
            "--jwt-secret",
            SECRET,
            "--allowed-origins",
            "https://chat.example.com",
            "--log-format",
            "json",
        ],
        &[("RUST_LOG", "roomcast=debug")],
    );
    server.ready().await;
    let alice = server.user("alice").await;
    alice.close().await;
    // A failed authentication by message, with a token that must not be logged.
    let forged = "forged.token.value";
    let mut guest = support::Client::connect(&format!("ws://{}/ws", server.addr())).await;
    let reply = guest
        .request(json!({"type": "authentication", "token": forged}))
        .await;
    assert_eq!(reply["error_code"], "auth_failed");
    // A refused origin.
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = server.url("bob").into_client_request().expect("request");
        request.headers_mut().insert(
            "Origin",
            "https://evil.example.net".parse().expect("header"),
        );
        let _ = tokio_tungstenite::connect_async(request).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.terminate();
    assert_eq!(server.exit_code(Duration::from_secs(10)).await, 0);
    let stderr = server.stderr();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let said = |message: &str| {
        lines
            .iter()
            .any(|line| line["fields"]["message"].as_str() == Some(message))
    };
    assert!(said("connection opened"), "{stderr}");
    assert!(said("connection closed"), "{stderr}");
    assert!(said("failed authentication"), "{stderr}");
    assert!(said("origin not allowed: closing with 1008"), "{stderr}");
    assert!(
        !stderr.contains(forged) && !stderr.contains(SECRET),
        "{stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "no colour codes in a pipe");
}

/// Sends chat messages into `room` as fast as the socket takes them until
/// the server closes; returns the acknowledged ids and the close code.
async fn send_until_closed(url: String, room: &'static str) -> (Vec<i64>, Option<u16>) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let (mut sink, mut stream) = socket.split();
    let join = json!({"type": "room_join", "room": room}).to_string();
    sink.send(Message::text(join)).await.expect("join");
    let writer = tokio::spawn(async move {
        for n in 0u64.. {
            let message = json!({"type": "chat_message", "room": room, "content": format!("m{n}")});
            if sink.send(Message::text(message.to_string())).await.is_err() {
                break;
            }
            if n % 16 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let mut acked = Vec::new();
    let mut code = None;
    while let Some(Ok(frame)) = stream.next().await {
        match frame {
            Message::Text(text) => {
                let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                if value["type"] == "message_ack" {
                    acked.push(value["message_id"].as_i64().expect("id"));
                }
            }
            Message::Close(frame) => {
                code = frame.map(|frame| u16::from(frame.code));
                break;
            }
            _ => {}
        }
    }
    writer.abort();
    (acked, code)
}

#[tokio::test]
async fn sigterm_under_load_acknowledges_every_stored_message_before_1001() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().to_str().expect("utf-8 path").to_owned();
    let flags = [
        "--data-dir",
        data_dir.as_str(),
        "--jwt-secret",
        SECRET,
        "--rate-limit-messages",
        "0",
    ];
    let mut server = Process::start(&flags, &[]);
    server.ready().await;
    let rooms = ["load-1", "load-2", "load-3", "load-4"];
    let senders: Vec<_> = rooms
        .iter()
        .enumerate()
        .map(|(n, room)| tokio::spawn(send_until_closed(server.url(&format!("sender{n}")), room)))
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.terminate();
    let mut acked = Vec::new();
    for sender in senders {
        let (ids, code) = sender.await.expect("sender");
        assert_eq!(code, Some(1001));
        acked.push(ids);
    }
    assert_eq!(server.exit_code(Duration::from_secs(10)).await, 0);

    // Every message the store kept was acknowledged to its sender.
    let server = Process::start(&flags, &[]);
    server.ready().await;
    for (room, acked) in rooms.iter().zip(&acked) {
        assert!(!acked.is_empty(), "{room}: nothing was sent");
        let (status, page) = support::http_request(
            server.addr(),
            "GET",
            &format!("/api/rooms/{room}/messages?limit=1&before_id=9223372036854775807"),
            Some(&roomcast::auth::Tokens::new(SECRET).mint("reader", None, None, 60)),
            None,
            None,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let newest = page["messages"][0]["id"]
            .as_i64()
            .expect("a stored message");
        let last_acked = *acked.iter().max().expect("acked");
        assert_eq!(
            newest,
            last_acked,
            "{room}: the newest stored message was not acknowledged ({} acks)",
            acked.len()
        );
    }
}

#[tokio::test]
async fn a_variable_or_a_flag_turns_off_what_the_file_turns_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("roomcast.toml");
    std::fs::write(&file, "guest_chat = true\n").expect("write config");
    let config = file.to_str().expect("utf-8 path");
    // Whether a guest may name itself on a server started so.
    async fn guests_may_chat(flags: &[&str], env: &[(&str, &str)]) -> bool {
        let mut all = vec!["--database", "sqlite::memory:", "--jwt-secret", SECRET];
        all.extend_from_slice(flags);
        let server = Process::start(&all, env);
        server.ready().await;
        let mut guest = support::Client::connect(&format!("ws://{}/ws", server.addr())).await;
        let reply = guest
            .request(json!({"type": "user_join", "username": "visitor"}))
            .await;
        reply["type"] == "user_join"
    }
    assert!(
        guests_may_chat(&["--config", config], &[]).await,
        "the file's true"
    );
    assert!(
        !guests_may_chat(&["--config", config], &[("ROOMCAST_GUEST_CHAT", "false")]).await,
        "a variable beats the file"
    );
    assert!(
        !guests_may_chat(&["--config", config, "--guest-chat=false"], &[]).await,
        "a flag beats the file"
    );
    assert!(
        guests_may_chat(&["--guest-chat"], &[("ROOMCAST_GUEST_CHAT", "false")]).await,
        "a flag beats a variable"
    );
}
