//! The HTTP API (protocol sections 6 and 7): statistics behind the admin key,
//! room statistics, Prometheus metrics, and room history over HTTP.

mod support;

use serde_json::json;
use support::{ADMIN_KEY, TestServer, args, join};

#[tokio::test]
async fn stats_need_the_admin_key() {
    let server = TestServer::start().await;
    for bearer in [None, Some("wrong-key"), Some("")] {
        let (status, body) = server.get_json("/api/stats", bearer).await;
        assert_eq!(status, 401, "{bearer:?}");
        assert!(body.get("connections").is_none(), "no data without the key");
        assert_eq!(body["error_code"], "auth_failed");
    }
    let user_token = server.token("alice");
    let (status, _) = server.get_json("/api/stats", Some(&user_token)).await;
    assert_eq!(status, 401, "a user token is not an admin key");
    let admin_token = server.token_with("root", None, Some("admin"));
    let (status, _) = server.get_json("/api/stats", Some(&admin_token)).await;
    assert_eq!(status, 200, "an admin-role token is accepted");
}

#[tokio::test]
async fn stats_describe_every_open_connection() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut guest = server.guest().await;
    join(&mut alice, "dev").await;
    join(&mut alice, "ops").await;
    alice
        .send(json!({"type": "chat_message", "room": "dev", "content": "x"}))
        .await;
    alice.recv_type("chat_message").await;
    guest.send_text("not json").await;
    guest.recv().await;

    let stats = server.stats().await;
    assert_eq!(stats["active_connections"], 2);
    assert_eq!(stats["peak_connections"], 2);
    assert_eq!(stats["total_connections"], 2);
    assert_eq!(stats["authenticated_users"], 1);
    assert_eq!(stats["rooms"], 2);
    assert_eq!(stats["messages_by_type"]["room_join"], 2);
    assert_eq!(stats["messages_by_type"]["chat_message"], 1);
    assert_eq!(stats["errors"]["invalid_json"], 1);
    assert_eq!(stats["slow_consumer_disconnects"], 0);
    let connections = stats["connections"].as_array().expect("connections");
    assert_eq!(connections.len(), 2);
    let entry = connections
        .iter()
        .find(|c| c["connection_id"] == alice.welcome["connection_id"])
        .expect("alice listed");
    assert_eq!(entry["state"], "AUTHENTICATED");
    assert_eq!(entry["kind"], "user");
    assert_eq!(entry["username"], "alice");
    assert_eq!(entry["user_id"], "alice");
    assert_eq!(entry["rooms"], 2);
    assert_eq!(entry["message_count"], 3);
    assert!(
        entry["client_addr"]
            .as_str()
            .unwrap_or("")
            .starts_with("127.0.0.1:")
    );
    assert_eq!(entry["connected_at"].as_str().map(str::len), Some(24));
    assert_eq!(entry["last_activity"].as_str().map(str::len), Some(24));
    assert!(entry.get("user_agent").is_some());
    let guest_entry = connections
        .iter()
        .find(|c| c["connection_id"] == guest.welcome["connection_id"])
        .expect("guest listed");
    assert_eq!(guest_entry["state"], "CONNECTED");
    assert_eq!(guest_entry["kind"], "guest");
    assert!(guest_entry["username"].is_null());

    guest.close().await;
    let stats = server
        .stats_when(|stats| stats["active_connections"] == 1)
        .await;
    assert_eq!(stats["connections"].as_array().map(Vec::len), Some(1));
    assert_eq!(stats["total_connections"], 2);
}

#[tokio::test]
async fn room_stats_list_users_and_connections() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut alice2 = server.user("alice").await;
    let mut bob = server.user("bob").await;
    join(&mut alice, "dev").await;
    join(&mut alice2, "dev").await;
    join(&mut bob, "dev").await;
    let (status, stats) = server
        .get_json("/api/rooms/dev/stats", Some(ADMIN_KEY))
        .await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["room"], "dev");
    assert_eq!(stats["connection_count"], 3);
    assert_eq!(
        stats["users"],
        json!([
            {"id": "alice", "username": "alice", "kind": "user"},
            {"id": "bob", "username": "bob", "kind": "user"},
        ])
    );
    assert_eq!(stats["created_at"].as_str().map(str::len), Some(24));

    let (status, _) = server.get_json("/api/rooms/dev/stats", None).await;
    assert_eq!(status, 401);
    let (status, body) = server
        .get_json("/api/rooms/nosuchroom/stats", Some(ADMIN_KEY))
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error_code"], "not_found");
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    alice
        .send(json!({"type": "chat_message", "content": "x"}))
        .await;
    alice.recv_type("chat_message").await;
    alice.send_text("nope").await;
    alice.recv().await;
    let (status, text) = server.get("/metrics", None).await;
    assert_eq!(status, 200);
    for line in [
        "roomcast_connections_active 1",
        "roomcast_connections_total 1",
        "roomcast_messages_in_total{type=\"chat_message\"} 1",
        "roomcast_messages_out_total{type=\"chat_message\"} 1",
        "roomcast_messages_out_total{type=\"message_ack\"} 1",
        "roomcast_errors_total{code=\"invalid_json\"} 1",
        "# TYPE roomcast_broadcast_duration_seconds histogram",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
    // The chat message; the login announcement had no subscriber to go to.
    assert!(
        text.contains("roomcast_broadcast_duration_seconds_count 1"),
        "{text}"
    );
    assert!(
        text.contains("roomcast_broadcast_duration_seconds_bucket{le=\"+Inf\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn room_history_over_http() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    join(&mut alice, "dev").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        alice
            .send(json!({"type": "chat_message", "room": "dev", "content": format!("m{n}")}))
            .await;
        ids.push(alice.recv().await["message_id"].as_i64().expect("id"));
        alice.recv_type("chat_message").await;
    }
    let token = server.token("bob");
    let (status, page) = server
        .get_json("/api/rooms/dev/messages?limit=2", Some(&token))
        .await;
    assert_eq!(status, 200, "{page}");
    let contents: Vec<&str> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(contents, ["m3", "m4"]);
    assert_eq!(page["has_more"], true);

    let path = format!("/api/rooms/dev/messages?after_id={}&limit=10", ids[2]);
    let (_, page) = server.get_json(&path, Some(&token)).await;
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["has_more"], false);

    let (status, _) = server.get_json("/api/rooms/dev/messages", None).await;
    assert_eq!(status, 401);
    let (status, _) = server
        .get_json("/api/rooms/nowhere/messages", Some(&token))
        .await;
    assert_eq!(status, 404);
    for query in [
        "limit=0",
        "limit=abc",
        "before_id=-1",
        "before_id=3&after_id=1",
    ] {
        let (status, body) = server
            .get_json(&format!("/api/rooms/dev/messages?{query}"), Some(&token))
            .await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["error_code"], "validation_error");
    }
}

#[tokio::test]
async fn a_backend_publishes_messages_and_events_into_a_room() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    join(&mut alice, "dev").await;
    let publish = |body: serde_json::Value,
                   key: Option<&'static str>,
                   bearer: Option<&'static str>| {
        let addr = server.addr;
        async move {
            let headers: Vec<(&str, &str)> =
                key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
            support::http_request_with(addr, "POST", "/api/publish", bearer, Some(&body), &headers)
                .await
        }
    };
    // A chat message as the system user: stored, broadcast, in history.
    let (status, body) = publish(
        json!({"room": "dev", "content": "deploy finished"}),
        Some("deploy-42"),
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let message = &body["message"];
    assert_eq!(message["user"]["kind"], "system", "{body}");
    assert_eq!(message["user"]["id"], "system", "{body}");
    let said = alice.recv_type("chat_message").await;
    assert_eq!(said["message"]["id"], message["id"]);
    assert_eq!(said["message"]["content"], "deploy finished");
    // A retry with the same key: the same message, not broadcast again.
    let (status, again) = publish(
        json!({"room": "dev", "content": "deploy finished"}),
        Some("deploy-42"),
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["message"]["id"], message["id"]);

    // An event, with a key too.
    let event = json!({"room": "dev", "event": {"type": "ticket_update", "ticket_id": "T-1",
        "project_id": "P", "changes": {"status": "done"}}});
    let (status, body) = publish(event.clone(), Some("t1-done"), Some(ADMIN_KEY)).await;
    assert_eq!(status, 200, "{body}");
    let event_id = body["event_id"].as_i64().expect("event_id");
    let told = alice.recv_type("ticket_update").await;
    assert_eq!(told["event_id"], event_id, "{told}");
    assert_eq!(told["changes"]["status"], "done");
    assert_eq!(told["user"]["kind"], "system");
    let (_, again) = publish(event, Some("t1-done"), Some(ADMIN_KEY)).await;
    assert_eq!(again["event_id"], event_id);
    alice.expect_silence().await;

    // Refusals.
    let (status, _) = publish(json!({"room": "dev", "content": "x"}), None, None).await;
    assert_eq!(status, 401);
    let (status, _) = publish(
        json!({"room": "dev", "content": "x"}),
        None,
        Some("wrong-key"),
    )
    .await;
    assert_eq!(status, 401);
    for bad in [
        json!({"room": "dev"}),
        json!({"room": "dev", "content": "x", "event": {"type": "project_update", "project_id": "P", "changes": {}}}),
        json!({"room": "a b", "content": "x"}),
        json!({"room": "dev", "content": ""}),
        json!({"room": "dev", "event": {"type": "party"}}),
        json!({"room": "dev", "event": {"type": "project_update", "project_id": "a b", "changes": {}}}),
        json!({"room": "dev", "content": "x", "extra": 1}),
    ] {
        let (status, body) = publish(bad.clone(), None, Some(ADMIN_KEY)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error_code"], "validation_error", "{bad}: {body}");
    }
    let (status, _) = publish(
        json!({"room": "dev", "content": "x"}),
        Some("bad key"),
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!(status, 400);
    // Nothing refused reached the room.
    alice.expect_silence().await;
}

#[tokio::test]
async fn publishing_into_an_unknown_room_is_404_where_rooms_are_not_auto_created() {
    let mut settings = support::args();
    settings.no_room_auto_create = Some(true);
    let server = TestServer::with(settings).await;
    let (status, body) = support::http_request(
        server.addr,
        "POST",
        "/api/publish",
        Some(ADMIN_KEY),
        Some(&json!({"room": "nowhere", "content": "hello"})),
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error_code"], "not_found");
}

/// A preflight and a request from `origin`; the `Access-Control-Allow-Origin`
/// each got.
async fn cors_answers(server: &TestServer, origin: &str) -> (u16, Option<String>, Option<String>) {
    let client = reqwest::Client::new();
    let preflight = client
        .request(
            reqwest::Method::OPTIONS,
            format!("http://{}/api/rooms/dev/messages", server.addr),
        )
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .expect("preflight");
    let allowed = |response: &reqwest::Response| {
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|value| value.to_str().expect("ascii").to_owned())
    };
    let status = preflight.status().as_u16();
    let preflight_origin = allowed(&preflight);
    let actual = client
        .get(format!("http://{}/api/rooms/dev/messages", server.addr))
        .header("Origin", origin)
        .bearer_auth(server.token("alice"))
        .send()
        .await
        .expect("GET");
    (status, preflight_origin, allowed(&actual))
}

#[tokio::test]
async fn cors_follows_the_allowed_origins() {
    let server = TestServer::start().await;
    let (status, preflight, actual) = cors_answers(&server, "https://app.example").await;
    assert_eq!(status, 200);
    assert_eq!(
        preflight.as_deref(),
        Some("*"),
        "any origin when none are set"
    );
    assert_eq!(actual.as_deref(), Some("*"));
    server.stop().await;

    let mut settings = args();
    settings.allowed_origins = Some(vec!["https://app.example".into()]);
    let server = TestServer::with(settings).await;
    let (_, preflight, actual) = cors_answers(&server, "https://app.example").await;
    assert_eq!(preflight.as_deref(), Some("https://app.example"));
    assert_eq!(actual.as_deref(), Some("https://app.example"));
    let (_, preflight, actual) = cors_answers(&server, "https://evil.example").await;
    assert_eq!(
        (preflight, actual),
        (None, None),
        "another origin gets no CORS headers"
    );
    server.stop().await;
}

#[tokio::test]
async fn info_says_what_the_server_offers() {
    let server = TestServer::start().await;
    let (status, info) = server.get_json("/api/info", None).await;
    assert_eq!(status, 200);
    assert_eq!(info["server"]["name"], "roomcast");
    assert_eq!(
        info["features"],
        json!({"registration": false, "guest_chat": false, "ai": false, "files": true})
    );
    assert_eq!(info["limits"]["max_upload_bytes"], 25 * 1024 * 1024);
    assert!(
        info["limits"]["upload_types"]
            .as_array()
            .is_some_and(|types| types.contains(&json!("image/png")))
    );
    server.stop().await;

    let mut settings = args();
    settings.open_registration = Some(true);
    settings.guest_chat = Some(true);
    settings.upload_types = Some(vec!["none".into()]);
    let server = TestServer::with(settings).await;
    let (_, info) = server.get_json("/api/info", None).await;
    assert_eq!(
        info["features"],
        json!({"registration": true, "guest_chat": true, "ai": false, "files": false})
    );
    assert_eq!(info["limits"]["max_upload_bytes"], serde_json::Value::Null);
    server.stop().await;
}

#[tokio::test]
async fn admins_list_the_rooms_in_use() {
    let server = TestServer::start().await;
    let (status, _) = server.get_json("/api/rooms", None).await;
    assert_eq!(status, 401);
    let (status, _) = server
        .get_json("/api/rooms", Some(&server.token("alice")))
        .await;
    assert_eq!(status, 401, "a user token is not an admin key");
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut bob_again = server.user("bob").await;
    join(&mut alice, "ops").await;
    join(&mut bob, "ops").await;
    join(&mut bob_again, "ops").await;
    join(&mut bob, "dev").await;
    let (status, body) = server.get_json("/api/rooms", Some(ADMIN_KEY)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["rooms"],
        json!([
            {"name": "dev", "member_count": 1, "connection_count": 1},
            {"name": "ops", "member_count": 2, "connection_count": 3},
        ])
    );
    server.stop().await;
}

#[tokio::test]
async fn the_pages_are_served_unless_turned_off() {
    let server = TestServer::start().await;
    let response = reqwest::get(format!("http://{}/", server.addr))
        .await
        .expect("GET /");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    assert!(
        response.headers()["content-security-policy"]
            .to_str()
            .expect("ascii")
            .contains("script-src 'self'")
    );
    let page = response.text().await.expect("body");
    assert!(page.contains("/assets/app.js"), "{page}");
    let admin = reqwest::get(format!("http://{}/admin", server.addr))
        .await
        .expect("GET /admin");
    assert_eq!(admin.status(), 200);
    let script = reqwest::get(format!("http://{}/assets/app.js", server.addr))
        .await
        .expect("GET");
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    for path in [
        "/assets/nope.js",
        "/assets/..%2Fbuild.rs",
        "/assets/%2e%2e%2fCargo.toml",
    ] {
        let missing = reqwest::get(format!("http://{}{path}", server.addr))
            .await
            .expect("GET");
        assert_eq!(missing.status(), 404, "{path}");
    }
    server.stop().await;

    let mut settings = args();
    settings.web_ui = Some(false);
    let server = TestServer::with(settings).await;
    for path in ["/", "/admin", "/assets/app.js"] {
        let response = reqwest::get(format!("http://{}{path}", server.addr))
            .await
            .expect("GET");
        assert_eq!(response.status(), 404, "{path}");
    }
    server.stop().await;
}
