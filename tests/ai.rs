//! The AI assistant against a real HTTP server, started in the test, that
//! speaks the OpenAI-compatible streaming format (SSE `data:` lines,
//! `[DONE]`, usage): normal answers, a broken stream, 500, 429, malformed
//! chunks, a server that never answers, a non-streaming server, and a wrong
//! URL. Each gives the documented result and leaves the session usable.

mod support;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use roomcast::config::ServeArgs;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Client, TestServer, alice_and_bob_in, args, join, user_with_recv_buffer};

/// What the fake provider saw.
#[derive(Default)]
struct Seen {
    bodies: Vec<Value>,
    authorization: Vec<String>,
    /// The `flood` model has written its whole stream.
    flood_sent: bool,
}

fn sse(events: Vec<String>, delay: Duration) -> Response {
    let stream = futures_util::stream::iter(events).then(move |event| async move {
        tokio::time::sleep(delay).await;
        Ok::<_, std::convert::Infallible>(Bytes::from(event))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .expect("response")
}

fn delta(text: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"model": "fake-1", "choices": [{"index": 0, "delta": {"content": text}}]})
    )
}

/// Deltas the `flood` model streams, as fast as it can: 8 MB in all, more
/// than the kernel's socket buffers hold for a client that does not read.
const FLOOD_DELTAS: usize = 8_000;

fn flood_delta(n: usize) -> String {
    format!("{n:08} {}", "x".repeat(991))
}

/// The model name picks the behaviour.
async fn completions(
    State(seen): State<Arc<Mutex<Seen>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    {
        let mut seen = seen.lock().expect("lock");
        seen.bodies.push(body.clone());
        if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
            seen.authorization.push(auth.to_owned());
        }
    }
    let usage = format!(
        "data: {}\n\n",
        json!({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3}})
    );
    match body["model"].as_str().unwrap_or("") {
        "normal" => sse(
            vec![
                delta("Hel"),
                delta("lo "),
                delta("world"),
                usage,
                "data: [DONE]\n\n".into(),
            ],
            Duration::from_millis(5),
        ),
        "broken" => sse(vec![delta("Hel")], Duration::from_millis(5)),
        "slow" => sse(
            (0..40)
                .map(|n| delta(&format!("{n} ")))
                .chain(["data: [DONE]\n\n".into()])
                .collect(),
            Duration::from_millis(200),
        ),
        "trickle" => sse(
            ["one ", "two ", "three ", "four ", "five"]
                .into_iter()
                .map(delta)
                .chain([usage, "data: [DONE]\n\n".into()])
                .collect(),
            Duration::from_millis(150),
        ),
        "flood" => {
            let events = (0..FLOOD_DELTAS)
                .map(|n| delta(&flood_delta(n)))
                .chain([usage, "data: [DONE]\n\n".into()])
                .map(|event| Ok::<_, std::convert::Infallible>(Bytes::from(event)));
            let end = futures_util::stream::once(async move {
                seen.lock().expect("lock").flood_sent = true;
                Ok(Bytes::new())
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(
                    futures_util::stream::iter(events).chain(end),
                ))
                .expect("response")
        }
        "malformed" => sse(
            vec![
                delta("Hel"),
                "data: {not json\n\n".into(),
                "data: [DONE]\n\n".into(),
            ],
            Duration::from_millis(5),
        ),
        "error500" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "error429" => (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response(),
        "hang" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            (StatusCode::OK, "too late").into_response()
        }
        "plain" => axum::Json(json!({
            "model": "fake-plain",
            "choices": [{"message": {"role": "assistant", "content": "Plain answer"}}],
        }))
        .into_response(),
        _ => (StatusCode::NOT_FOUND, "unknown model").into_response(),
    }
}

async fn fake_provider() -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1"), seen)
}

/// Settings for a server whose assistant is `model` at `base_url`.
fn ai_args(model: &str, base_url: &str) -> ServeArgs {
    let mut settings = args();
    settings.ai_base_url = Some(base_url.into());
    settings.ai_model = Some(model.into());
    settings
}

async fn server_with(model: &str, base_url: &str) -> TestServer {
    let mut settings = ai_args(model, base_url);
    settings.ai_timeout_ms = Some(500);
    TestServer::with(settings).await
}

#[tokio::test]
async fn an_answer_streams_to_the_requester_and_lands_in_the_room() {
    let (url, seen) = fake_provider().await;
    let server = server_with("normal", &url).await;
    let (mut alice, mut bob) = alice_and_bob_in(&server, "dev").await;
    alice
        .send(json!({"type": "chat_message", "room": "dev", "content": "we ship on friday"}))
        .await;
    alice.recv_type("chat_message").await;
    bob.recv_type("chat_message").await;

    alice
        .send(
            json!({"type": "ai_request", "prompt": "when do we ship?", "room": "dev", "ref": "q1"}),
        )
        .await;
    let mut streamed = String::new();
    let response = loop {
        let frame = alice.recv().await;
        match frame["type"].as_str() {
            Some("ai_response_chunk") => {
                assert_eq!(frame["ref"], "q1");
                streamed.push_str(frame["delta"].as_str().expect("delta"));
            }
            Some("ai_response") => break frame,
            _ => {}
        }
    };
    assert_eq!(streamed, "Hello world");
    assert_eq!(response["content"], "Hello world");
    assert_eq!(response["model"], "fake-1");
    assert_eq!(response["ref"], "q1");
    assert!(response["request_id"].is_string());
    let message = &response["message"];
    assert_eq!(message["room"], "dev");
    assert_eq!(message["content"], "Hello world");
    assert_eq!(message["user"]["kind"], "assistant");

    // The room saw the assistant typing, then stop, then its message.
    let typing = bob.recv().await;
    assert_eq!(typing["type"], "user_typing", "{typing}");
    assert_eq!(typing["user"]["kind"], "assistant");
    assert_eq!(typing["is_typing"], true);
    let stopped = bob.recv().await;
    assert_eq!(stopped["type"], "user_typing", "{stopped}");
    assert_eq!(stopped["is_typing"], false);
    let said = bob.recv().await;
    assert_eq!(said["type"], "chat_message", "{said}");
    assert_eq!(said["message"]["id"], message["id"]);

    // The model got the room as context, the assistant's own turns apart.
    let body = seen.lock().expect("lock").bodies[0].clone();
    let messages = body["messages"].as_array().expect("messages");
    assert_eq!(messages[0]["role"], "system");
    assert!(
        messages
            .iter()
            .any(|m| m["role"] == "user" && m["content"] == "alice: we ship on friday")
    );
    assert_eq!(
        messages.last().expect("last")["content"],
        "alice: when do we ship?"
    );
    assert_eq!(body["stream"], true);

    // Stored: it is in the room's history.
    bob.send(json!({"type": "history", "room": "dev"})).await;
    let history = bob.recv_type("history").await;
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(2));
    alice.assert_alive().await;
}

#[tokio::test]
async fn without_a_room_the_answer_is_private() {
    let (url, _) = fake_provider().await;
    let server = server_with("normal", &url).await;
    let mut alice = server.user("alice").await;
    support::subscribe(&mut alice, None).await;
    let mut bob = server.user("bob").await;
    alice.recv_type("user_join").await;
    alice
        .send(json!({"type": "ai_request", "prompt": "hi", "context": false}))
        .await;
    let response = alice.recv_type("ai_response").await;
    assert_eq!(response["content"], "Hello world");
    assert!(response["message"].is_null());
    bob.expect_silence().await;
}

#[tokio::test]
async fn provider_failures_answer_ai_unavailable_or_ai_timeout() {
    let (url, _) = fake_provider().await;
    for (model, code) in [
        ("error500", "ai_unavailable"),
        ("error429", "ai_unavailable"),
        ("broken", "ai_unavailable"),
        ("malformed", "ai_unavailable"),
        ("hang", "ai_timeout"),
    ] {
        let server = server_with(model, &url).await;
        let mut alice = server.user("alice").await;
        alice
            .send(json!({"type": "ai_request", "prompt": "hi", "ref": model}))
            .await;
        let error = alice.recv_type("error").await;
        assert_eq!(error["error_code"], code, "{model}: {error}");
        assert_eq!(error["ref"], model);
        alice.assert_alive().await;
    }
}

#[tokio::test]
async fn a_server_that_does_not_stream_still_answers() {
    let (url, _) = fake_provider().await;
    let server = server_with("plain", &url).await;
    let mut alice = server.user("alice").await;
    alice
        .send(json!({"type": "ai_request", "prompt": "hi"}))
        .await;
    let response = alice.recv_type("ai_response").await;
    assert_eq!(response["content"], "Plain answer");
}

#[tokio::test]
async fn a_wrong_url_is_unavailable_and_the_key_never_leaks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "sk-very-secret-key\n").expect("key");
    let (url, seen) = fake_provider().await;

    let mut settings = ai_args("normal", &url);
    settings.ai_api_key_file = Some(key_file.clone());
    let server = TestServer::with(settings).await;
    let mut alice = server.user("alice").await;
    alice
        .send(json!({"type": "ai_request", "prompt": "hi"}))
        .await;
    alice.recv_type("ai_response").await;
    assert_eq!(
        seen.lock().expect("lock").authorization,
        ["Bearer sk-very-secret-key"]
    );

    let mut settings = args();
    settings.ai_base_url = Some("http://127.0.0.1:9/v1".into());
    settings.ai_api_key_file = Some(key_file);
    let server = TestServer::with(settings).await;
    let mut alice = server.user("alice").await;
    alice
        .send(json!({"type": "ai_request", "prompt": "hi"}))
        .await;
    let error = alice.recv_type("error").await;
    assert_eq!(error["error_code"], "ai_unavailable", "{error}");
    assert!(!error.to_string().contains("sk-very-secret"));
    alice.assert_alive().await;
}

#[tokio::test]
async fn bad_ai_requests_are_refused_before_the_provider() {
    let (url, seen) = fake_provider().await;
    let server = server_with("normal", &url).await;
    let mut alice = server.user("alice").await;
    for (frame, code) in [
        (
            json!({"type": "ai_request", "prompt": ""}),
            "validation_error",
        ),
        (
            json!({"type": "ai_request", "prompt": "x".repeat(4001)}),
            "validation_error",
        ),
        (
            json!({"type": "ai_request", "prompt": "hi", "room": "not-joined"}),
            "forbidden",
        ),
    ] {
        let error = alice.request(frame).await;
        assert_eq!(error["error_code"], code, "{error}");
    }
    let mut guest = Client::connect(&server.url("")).await;
    let error = guest
        .request(json!({"type": "ai_request", "prompt": "hi"}))
        .await;
    assert_eq!(error["error_code"], "not_authenticated");
    assert!(seen.lock().expect("lock").bodies.is_empty());
}

#[tokio::test]
async fn a_mention_gets_an_answer_in_the_room_and_assistants_never_answer_themselves() {
    let (url, seen) = fake_provider().await;
    let mut settings = ai_args("normal", &url);
    settings.ai_name = Some("helper".into());
    settings.ai_answer_all_rooms = Some(vec!["support".into()]);
    let server = TestServer::with(settings).await;
    let mut alice = server.user("alice").await;
    let bot_token = server.token_with("external-bot", None, Some("assistant"));
    let mut bot = Client::connect(&server.url(&format!("?token={bot_token}"))).await;
    join(&mut alice, "dev").await;
    join(&mut bot, "dev").await;
    alice.assert_alive().await;

    // No mention: no answer. A mention (any case): an answer from the assistant.
    alice
        .send(json!({"type": "chat_message", "room": "dev", "content": "helper is a nice word"}))
        .await;
    alice
        .send(json!({"type": "chat_message", "room": "dev", "content": "hey @Helper, status?"}))
        .await;
    let answer = loop {
        let frame = alice.recv_type("chat_message").await;
        if frame["message"]["user"]["kind"] == "assistant" {
            break frame;
        }
    };
    assert_eq!(answer["message"]["content"], "Hello world");
    assert_eq!(answer["message"]["user"]["username"], "helper");
    assert_eq!(seen.lock().expect("lock").bodies.len(), 1);

    // An assistant mentioning the assistant gets no answer: no loops.
    bot.send(json!({"type": "chat_message", "room": "dev", "content": "@helper over to you"}))
        .await;
    bot.recv_type("message_ack").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.lock().expect("lock").bodies.len(), 1);

    // A room that answers everything.
    join(&mut alice, "support").await;
    alice
        .send(json!({"type": "chat_message", "room": "support", "content": "my order is late"}))
        .await;
    loop {
        let frame = alice.recv_type("chat_message").await;
        if frame["message"]["user"]["kind"] == "assistant" && frame["message"]["room"] == "support"
        {
            break;
        }
    }

    // Statistics count the assistant connection apart, and the AI requests.
    let stats = server.stats().await;
    assert_eq!(stats["assistant_connections"], 1, "{stats}");
    assert_eq!(stats["ai"]["answered"], 2, "{stats}");
    assert_eq!(stats["ai"]["prompt_tokens"], 24);
    let (_, metrics) = server.get("/metrics", None).await;
    assert!(
        metrics.contains("roomcast_ai_requests_total{outcome=\"answered\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("roomcast_ai_tokens_total{kind=\"completion\"} 6"));
    assert!(metrics.contains("roomcast_ai_first_token_seconds_count 2"));
    assert!(metrics.contains("roomcast_connections_by_kind{kind=\"assistant\"} 1"));
    assert!(metrics.contains("roomcast_connections_by_kind{kind=\"user\"} 1"));
}

#[tokio::test]
async fn requests_past_the_limits_are_rate_limited() {
    let (url, _) = fake_provider().await;
    let mut settings = ai_args("normal", &url);
    settings.ai_requests_per_user_per_minute = Some(2);
    let server = TestServer::with(settings).await;
    let mut alice = server.user("alice").await;
    for n in 0..2 {
        alice
            .send(json!({"type": "ai_request", "prompt": format!("q{n}")}))
            .await;
        alice.recv_type("ai_response").await;
    }
    alice
        .send(json!({"type": "ai_request", "prompt": "one more", "ref": "x"}))
        .await;
    let error = alice.recv_type("error").await;
    assert_eq!(error["error_code"], "rate_limited", "{error}");
    assert!(error["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0));
    assert_eq!(error["ref"], "x");
    // Someone else is not affected.
    let mut bob = server.user("bob").await;
    bob.send(json!({"type": "ai_request", "prompt": "hi"}))
        .await;
    bob.recv_type("ai_response").await;
}

/// A server on the slow provider, and alice with the first chunk of an
/// answer that takes seconds.
async fn slow_answer_under_way() -> (TestServer, Client, Value) {
    let (url, _) = fake_provider().await;
    let server = TestServer::with(ai_args("slow", &url)).await;
    let mut alice = server.user("alice").await;
    alice
        .send(json!({"type": "ai_request", "prompt": "take your time"}))
        .await;
    let first = alice.recv_type("ai_response_chunk").await;
    (server, alice, first)
}

#[tokio::test]
async fn a_request_can_be_cancelled() {
    let (server, mut alice, first) = slow_answer_under_way().await;
    let request_id = first["request_id"].as_str().expect("request_id").to_owned();

    let mut bob = server.user("bob").await;
    let error = bob
        .request(json!({"type": "ai_cancel", "request_id": request_id}))
        .await;
    assert_eq!(
        error["error_code"], "not_found",
        "only the requester may cancel: {error}"
    );

    alice
        .send(json!({"type": "ai_cancel", "request_id": request_id, "ref": "stop"}))
        .await;
    let cancelled = alice.recv_type("ai_cancelled").await;
    assert_eq!(cancelled["request_id"], request_id.as_str());
    assert_eq!(cancelled["ref"], "stop");
    // Nothing more of that answer arrives.
    alice.expect_silence().await;
    let error = alice
        .request(json!({"type": "ai_cancel", "request_id": request_id}))
        .await;
    assert_eq!(error["error_code"], "not_found");
    let stats = server.stats().await;
    assert_eq!(stats["ai"]["cancelled"], 1, "{stats}");
}

#[tokio::test]
async fn a_kick_during_an_answer_closes_with_4003() {
    // The answer's job and the session both wait for the close; the kick
    // must reach the session, not only the job.
    let (server, mut alice, _) = slow_answer_under_way().await;
    let path = format!("/api/connections/{}/kick", alice.connection_id());
    let (status, body) = support::http_request(
        server.addr,
        "POST",
        &path,
        Some(support::ADMIN_KEY),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(alice.closed().await, Some(4003));
}

#[tokio::test]
async fn a_slow_client_gets_merged_chunks_and_never_loses_the_answer() {
    let (url, seen) = fake_provider().await;
    let mut settings = ai_args("flood", &url);
    // A small outbox, which 20,000 chunks would overflow many times over.
    settings.outbox_capacity = Some(32);
    settings.max_pending_writes = Some(8);
    let server = TestServer::with(settings).await;
    // Big enough to read the flood quickly once Alice starts reading.
    let mut alice = user_with_recv_buffer(&server, "alice", 1 << 20).await;
    let mut bob = server.user("bob").await;
    alice
        .send(json!({"type": "ai_request", "prompt": "count", "ref": "n"}))
        .await;
    // Alice reads nothing until the whole answer has been queued for her.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while server.stats().await["ai"]["answered"] != 1 {
        assert!(tokio::time::Instant::now() < deadline, "no answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen.lock().expect("lock").flood_sent);
    bob.assert_alive().await;

    let expected: String = (0..FLOOD_DELTAS).map(flood_delta).collect();
    let mut streamed = String::new();
    let mut chunks = 0;
    let response = loop {
        let frame = alice.recv().await;
        match frame["type"].as_str() {
            Some("ai_response_chunk") => {
                assert_eq!(frame["ref"], "n");
                streamed.push_str(frame["delta"].as_str().expect("delta"));
                chunks += 1;
            }
            Some("ai_response") => break frame,
            _ => panic!("unexpected frame {frame}"),
        }
    };
    assert!(response["content"] == expected.as_str(), "the whole answer");
    assert_eq!(response["ref"], "n");
    assert!(streamed == expected, "the chunks add up to the answer");
    assert!(
        chunks < FLOOD_DELTAS,
        "{chunks} chunks: deltas should have been merged"
    );
    alice.assert_alive().await;
    let stats = server.stats().await;
    assert_eq!(stats["slow_consumer_disconnects"], 0, "{stats}");
    assert_eq!(stats["ai"]["answered"], 1, "{stats}");
}

#[tokio::test]
async fn the_room_context_keeps_the_newest_messages_within_the_budget() {
    let (url, seen) = fake_provider().await;
    let mut settings = ai_args("normal", &url);
    settings.ai_context_chars = Some(40);
    let server = TestServer::with(settings).await;
    let mut alice = server.user("alice").await;
    join(&mut alice, "dev").await;
    for content in ["the oldest message, which does not fit", "second", "third"] {
        alice
            .send(json!({"type": "chat_message", "room": "dev", "content": content}))
            .await;
        alice.recv_type("message_ack").await;
    }
    alice
        .send(json!({"type": "ai_request", "prompt": "recap", "room": "dev"}))
        .await;
    alice.recv_type("ai_response").await;
    let body = seen.lock().expect("lock").bodies[0].clone();
    let contents: Vec<&str> = body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .skip(1)
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(
        contents,
        ["alice: second", "alice: third", "alice: recap"],
        "newest kept, in order, within 40 characters"
    );
}

#[tokio::test]
async fn a_slow_stream_arrives_piece_by_piece_while_the_session_goes_on() {
    let (url, _) = fake_provider().await;
    let mut settings = ai_args("trickle", &url);
    settings.ai_timeout_ms = Some(10_000);
    let server = TestServer::with(settings).await;
    let (mut alice, mut bob) = alice_and_bob_in(&server, "dev").await;
    bob.assert_alive().await;
    alice
        .send(json!({"type": "ai_request", "prompt": "count slowly", "ref": "slow"}))
        .await;
    let first = alice.recv_type("ai_response_chunk").await;
    assert_eq!(first["delta"], "one ");
    // While the answer trickles in, Alice chats and pings as usual.
    alice
        .send(json!({"type": "chat_message", "room": "dev", "content": "meanwhile", "ref": "m"}))
        .await;
    alice.send(json!({"type": "ping", "ref": "p"})).await;
    let mut deltas = vec![first["delta"].as_str().expect("delta").to_owned()];
    let (mut acked, mut ponged) = (false, false);
    let response = loop {
        let frame = alice.recv().await;
        match frame["type"].as_str() {
            Some("ai_response_chunk") => {
                deltas.push(frame["delta"].as_str().expect("delta").to_owned())
            }
            Some("message_ack") => acked = true,
            Some("pong") => ponged = true,
            Some("ai_response") => break frame,
            _ => {}
        }
    };
    assert!(
        acked && ponged,
        "the session kept answering during the stream"
    );
    assert_eq!(deltas, ["one ", "two ", "three ", "four ", "five"]);
    assert_eq!(response["content"], "one two three four five");
    assert!(response["message"].is_null());
    assert_eq!(
        bob.recv_type("chat_message").await["message"]["content"],
        "meanwhile"
    );
}

#[tokio::test]
async fn requests_in_flight_are_limited_per_user_and_per_room() {
    let (url, _) = fake_provider().await;
    let mut settings = ai_args("slow", &url);
    settings.ai_max_concurrent = Some(10);
    let server = TestServer::with(settings).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    for client in [&mut alice, &mut bob, &mut carol] {
        join(client, "dev").await;
    }

    // A user has at most two requests running.
    for n in 0..2 {
        alice
            .send(json!({"type": "ai_request", "prompt": format!("a{n}"), "ref": format!("a{n}")}))
            .await;
    }
    alice.recv_type("ai_response_chunk").await;
    alice
        .send(json!({"type": "ai_request", "prompt": "a third", "ref": "a2"}))
        .await;
    let error = alice.recv_type("error").await;
    assert_eq!(error["error_code"], "rate_limited", "{error}");
    assert_eq!(error["ref"], "a2");

    // A room has at most three running: Bob's two fill it with Carol's one.
    for n in 0..2 {
        bob.send(json!({"type": "ai_request", "prompt": format!("b{n}"), "room": "dev"}))
            .await;
    }
    bob.recv_type("ai_response_chunk").await;
    carol
        .send(json!({"type": "ai_request", "prompt": "c0", "room": "dev"}))
        .await;
    carol.recv_type("ai_response_chunk").await;
    carol
        .send(json!({"type": "ai_request", "prompt": "c1", "room": "dev", "ref": "c1"}))
        .await;
    let error = carol.recv_type("error").await;
    assert_eq!(error["error_code"], "rate_limited", "{error}");
    assert_eq!(error["ref"], "c1");
    // Outside the room Carol may still ask.
    carol
        .send(json!({"type": "ai_request", "prompt": "c2", "ref": "c2"}))
        .await;
    loop {
        let chunk = carol.recv_type("ai_response_chunk").await;
        if chunk["ref"] == "c2" {
            break;
        }
    }
}

#[tokio::test]
async fn past_the_global_cap_requests_wait_their_turn_in_order() {
    let (url, seen) = fake_provider().await;
    let mut settings = ai_args("slow", &url);
    settings.ai_max_concurrent = Some(1);
    let server = TestServer::with(settings).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    alice
        .send(json!({"type": "ai_request", "prompt": "first"}))
        .await;
    let running = alice.recv_type("ai_response_chunk").await;
    bob.send(json!({"type": "ai_request", "prompt": "second"}))
        .await;
    bob.assert_alive().await;
    carol
        .send(json!({"type": "ai_request", "prompt": "third"}))
        .await;
    carol.assert_alive().await;
    // One provider call at a time: Bob and Carol wait, unanswered.
    assert_eq!(seen.lock().expect("lock").bodies.len(), 1);

    // Alice stops; Bob, who asked first, is served next, then Carol.
    alice
        .send(json!({"type": "ai_cancel", "request_id": running["request_id"]}))
        .await;
    alice.recv_type("ai_cancelled").await;
    let bobs = bob.recv_type("ai_response_chunk").await;
    assert_eq!(seen.lock().expect("lock").bodies.len(), 2);
    bob.send(json!({"type": "ai_cancel", "request_id": bobs["request_id"]}))
        .await;
    bob.recv_type("ai_cancelled").await;
    carol.recv_type("ai_response_chunk").await;
    let prompts: Vec<String> = seen
        .lock()
        .expect("lock")
        .bodies
        .iter()
        .filter_map(|body| {
            body["messages"].as_array()?.last()?["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(prompts, ["alice: first", "bob: second", "carol: third"]);
}

#[tokio::test]
async fn an_answer_stored_among_other_messages_reaches_the_room_in_id_order() {
    let (url, _) = fake_provider().await;
    let mut settings = ai_args("normal", &url);
    settings.rate_limit_messages = Some(0);
    // A file: commits are group commits on the writer thread, their
    // callbacks run together.
    let dir = tempfile::tempdir().expect("tempdir");
    settings.database = Some(format!("sqlite://{}", dir.path().join("chat.db").display()));
    let server = TestServer::with(settings).await;
    let (mut alice, mut bob) = alice_and_bob_in(&server, "dev").await;
    let mut carol = server.user("carol").await;
    join(&mut carol, "dev").await;

    // Bob keeps the room's store busy for as long as the answer streams,
    // so that the answer's commit shares a batch with his messages.
    alice
        .send(json!({"type": "ai_request", "prompt": "hi", "room": "dev"}))
        .await;
    let flood = tokio::spawn(async move {
        let start = std::time::Instant::now();
        let mut sent = 0;
        while start.elapsed() < Duration::from_millis(300) {
            for _ in 0..20 {
                bob.send(json!({"type": "chat_message", "room": "dev", "content": "busy"}))
                    .await;
                sent += 1;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        (sent, bob)
    });
    // Carol's frames wait in her socket and outbox meanwhile.
    let (sent, _bob) = flood.await.expect("flood");
    let mut ids = Vec::new();
    let mut answered = false;
    while ids.len() < sent + 1 {
        let frame = carol.recv().await;
        if frame["type"] == "chat_message" {
            answered |= frame["message"]["user"]["kind"] == "assistant";
            ids.push(frame["message"]["id"].as_i64().expect("id"));
        }
    }
    assert!(answered, "the answer reached the room");
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "the room saw its messages out of id order: {ids:?}"
    );
}
