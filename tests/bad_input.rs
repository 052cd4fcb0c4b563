//! Hostile and careless input (protocol sections 5 and 9): each bad frame gets
//! its documented error, the connection stays open, and a bystander in the
//! same room notices nothing.

mod support;

use serde_json::{Value, json};
use support::{Client, TestServer, args, join};

/// A sender and a bystander, both in room `dev`, with announcements drained.
async fn pair(server: &TestServer) -> (Client, Client) {
    let mut sender = server.user("sender").await;
    let mut bystander = server.user("bystander").await;
    join(&mut sender, "dev").await;
    join(&mut bystander, "dev").await;
    sender.assert_alive().await;
    bystander.assert_alive().await;
    (sender, bystander)
}

/// Sends `text`, expects an error with `code`, and checks that the sender can
/// still chat and the bystander saw only that chat message.
async fn assert_rejected(
    sender: &mut Client,
    bystander: &mut Client,
    text: &str,
    code: &str,
) -> Value {
    sender.send_text(text).await;
    let error = sender.recv().await;
    assert_eq!(error["type"], "error", "{text}: {error}");
    assert_eq!(error["error_code"], code, "{text}: {error}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(error["timestamp"].is_string());
    sender
        .send(json!({"type": "chat_message", "room": "dev", "content": "fine"}))
        .await;
    assert_eq!(sender.recv().await["type"], "message_ack", "after {text}");
    let seen = bystander.recv().await;
    assert_eq!(seen["type"], "chat_message", "after {text}: {seen}");
    assert_eq!(seen["message"]["content"], "fine");
    sender.recv_type("chat_message").await;
    error
}

#[tokio::test]
async fn frames_that_are_not_json_objects() {
    let server = TestServer::start().await;
    let (mut sender, mut bystander) = pair(&server).await;
    for text in [
        "hello",
        "{\"type\":",
        "[1,2,3]",
        "\"chat_message\"",
        "42",
        "null",
        "",
    ] {
        assert_rejected(&mut sender, &mut bystander, text, "invalid_json").await;
    }
}

#[tokio::test]
async fn missing_or_unknown_types() {
    let server = TestServer::start().await;
    let (mut sender, mut bystander) = pair(&server).await;
    for text in [
        r#"{}"#,
        r#"{"content":"hi"}"#,
        r#"{"type":"shout","content":"hi"}"#,
        r#"{"type":7}"#,
        r#"{"type":null}"#,
        r#"{"type":"CHAT_MESSAGE"}"#,
    ] {
        assert_rejected(&mut sender, &mut bystander, text, "unknown_type").await;
    }
    let error = assert_rejected(
        &mut sender,
        &mut bystander,
        r#"{"type":"shout","ref":"r9"}"#,
        "unknown_type",
    )
    .await;
    assert_eq!(error["ref"], "r9");
}

#[tokio::test]
async fn wrong_field_types_and_ranges_name_the_field() {
    let server = TestServer::start().await;
    let (mut sender, mut bystander) = pair(&server).await;
    let long = "x".repeat(4001);
    let cases = [
        (json!({"type": "chat_message"}), "content"),
        (json!({"type": "chat_message", "content": 5}), "content"),
        (json!({"type": "chat_message", "content": ""}), "content"),
        (json!({"type": "chat_message", "content": long}), "content"),
        (
            json!({"type": "chat_message", "content": "x", "room": "no spaces"}),
            "room",
        ),
        (
            json!({"type": "chat_message", "content": "x", "room": 12}),
            "room",
        ),
        (
            json!({"type": "chat_message", "content": "x", "client_msg_id": "c".repeat(65)}),
            "client_msg_id",
        ),
        (
            json!({"type": "chat_message", "content": "x", "reply_to": "one"}),
            "reply_to",
        ),
        (
            json!({"type": "chat_message", "content": "x", "reply_to": -1}),
            "reply_to",
        ),
        (
            json!({"type": "user_typing", "room": "dev", "is_typing": "yes"}),
            "is_typing",
        ),
        (json!({"type": "room_join"}), "room"),
        (json!({"type": "room_join", "room": "a/../../etc"}), "room"),
        (json!({"type": "room_join", "room": "x".repeat(65)}), "room"),
        (
            json!({"type": "room_join", "room": "dev", "since_id": -5}),
            "since_id",
        ),
        (json!({"type": "room_leave", "room": ["dev"]}), "room"),
        (
            json!({"type": "history", "room": "dev", "limit": 0}),
            "limit",
        ),
        (
            json!({"type": "history", "room": "dev", "limit": 201}),
            "limit",
        ),
        (
            json!({"type": "history", "room": "dev", "before_id": 5, "after_id": 1}),
            "after_id",
        ),
        (
            json!({"type": "presence", "room": "dev", "limit": 1001}),
            "limit",
        ),
        (
            json!({"type": "presence", "room": "dev", "offset": -1}),
            "offset",
        ),
        (json!({"type": "authentication"}), "token"),
        (json!({"type": "ping", "ref": "r".repeat(65)}), "ref"),
        (json!({"type": "ping", "ref": 5}), "ref"),
    ];
    for (frame, field) in cases {
        let error = assert_rejected(
            &mut sender,
            &mut bystander,
            &frame.to_string(),
            "validation_error",
        )
        .await;
        let message = error["message"].as_str().unwrap_or("");
        assert!(
            message.contains(field),
            "{frame}: message `{message}` does not name `{field}`"
        );
    }
}

#[tokio::test]
async fn content_length_is_counted_in_characters() {
    let mut settings = args();
    settings.max_message_chars = Some(5);
    let server = TestServer::with(settings).await;
    let (mut sender, mut bystander) = pair(&server).await;
    sender
        .send(json!({"type": "chat_message", "room": "dev", "content": "héllo"}))
        .await;
    assert_eq!(sender.recv().await["type"], "message_ack");
    bystander.recv_type("chat_message").await;
    sender.recv_type("chat_message").await;
    sender
        .send(json!({"type": "chat_message", "room": "dev", "content": "🎉🎉🎉🎉🎉"}))
        .await;
    assert_eq!(sender.recv().await["type"], "message_ack");
    bystander.recv_type("chat_message").await;
    sender.recv_type("chat_message").await;
    assert_rejected(
        &mut sender,
        &mut bystander,
        &json!({"type": "chat_message", "room": "dev", "content": "toolong"}).to_string(),
        "validation_error",
    )
    .await;
}

#[tokio::test]
async fn hostile_json_is_an_error_not_a_crash() {
    let server = TestServer::start().await;
    let (mut sender, mut bystander) = pair(&server).await;
    let deep = format!(
        r#"{{"type":"chat_message","room":"dev","content":"x","extra":{}{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let cases = [
        deep.as_str(),
        r#"{"type":"chat_message","room":"dev","content":"x","reply_to":123456789012345678901234567890}"#,
        r#"{"type":"chat_message","room":"dev","content":"\ud800"}"#,
        r#"{"type":"chat_message","room":"dev","content":"x","reply_to":1e400}"#,
        r#"{"type":"history","room":"dev","limit":18446744073709551616}"#,
    ];
    for text in cases {
        sender.send_text(text).await;
        let error = sender.recv().await;
        let code = error["error_code"].as_str().unwrap_or("");
        assert!(
            code == "invalid_json" || code == "validation_error",
            "{}: {error}",
            &text[..text.len().min(80)]
        );
    }
    sender.assert_alive().await;
    bystander.expect_silence().await;
}

#[tokio::test]
async fn binary_frames_are_unsupported() {
    let server = TestServer::start().await;
    let (mut sender, mut bystander) = pair(&server).await;
    sender.send_binary(b"{\"type\":\"ping\"}").await;
    let error = sender.recv().await;
    assert_eq!(error["error_code"], "unsupported_frame", "{error}");
    sender.assert_alive().await;
    bystander.expect_silence().await;
}

#[tokio::test]
async fn an_oversize_frame_closes_only_that_connection_with_1009() {
    let mut settings = args();
    settings.max_frame_bytes = Some(1024);
    let server = TestServer::with(settings).await;
    let (mut sender, mut bystander) = pair(&server).await;
    assert_eq!(sender.welcome["limits"]["max_frame_bytes"], 1024);
    let big = json!({"type": "chat_message", "room": "dev", "content": "x".repeat(2000)});
    sender.send(big).await;
    assert_eq!(sender.closed().await, Some(1009));
    let presence = bystander.recv().await;
    assert_eq!(presence["type"], "presence", "{presence}");
    assert_eq!(presence["event"], "leave");
    bystander.assert_alive().await;
    // Nothing of the oversize frame was stored.
    bystander
        .send(json!({"type": "history", "room": "dev"}))
        .await;
    let history = bystander.recv_type("history").await;
    assert_eq!(history["messages"], json!([]));
}

#[tokio::test]
async fn a_large_frame_within_the_limit_is_fine() {
    let server = TestServer::start().await;
    let (mut sender, mut bystander) = pair(&server).await;
    let content = "é".repeat(4000); // 8000 bytes, 4000 characters
    sender
        .send(json!({"type": "chat_message", "room": "dev", "content": content}))
        .await;
    assert_eq!(sender.recv().await["type"], "message_ack");
    let seen = bystander.recv().await;
    assert_eq!(
        seen["message"]["content"]
            .as_str()
            .map(|c| c.chars().count()),
        Some(4000)
    );
}

#[tokio::test]
async fn types_of_later_features_are_checked_in_order() {
    let server = TestServer::start().await;
    let (mut sender, mut bystander) = pair(&server).await;
    // Not joined: forbidden comes before the feature answers.
    assert_rejected(
        &mut sender,
        &mut bystander,
        &json!({"type": "ai_request", "prompt": "hi", "room": "elsewhere"}).to_string(),
        "forbidden",
    )
    .await;
    assert_rejected(
        &mut sender,
        &mut bystander,
        &json!({"type": "ai_request", "prompt": ""}).to_string(),
        "validation_error",
    )
    .await;
    // No provider configured: the request is valid but nobody can answer.
    assert_rejected(
        &mut sender,
        &mut bystander,
        &json!({"type": "ai_request", "prompt": "hello", "room": "dev"}).to_string(),
        "ai_unavailable",
    )
    .await;
    assert_rejected(
        &mut sender,
        &mut bystander,
        &json!({"type": "project_update", "project_id": "p1", "changes": {}}).to_string(),
        "forbidden",
    )
    .await;
    assert_rejected(
        &mut sender,
        &mut bystander,
        &json!({"type": "ticket_update", "ticket_id": "t1", "project_id": "p1", "changes": []})
            .to_string(),
        "validation_error",
    )
    .await;
    let mut guest = server.guest().await;
    let error = guest
        .request(json!({"type": "history", "room": "dev", "limit": 0}))
        .await;
    assert_eq!(
        error["error_code"], "not_authenticated",
        "auth is checked before fields"
    );
}
