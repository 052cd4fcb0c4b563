//! Accounts stored by the server (issue: accounts and access control):
//! registration, login over HTTP and over the WebSocket, password guessing
//! limits, and guests that try to take a registered name.

mod support;

use serde_json::json;
use support::{Client, TestServer, args, http_request};

async fn open_server() -> TestServer {
    let mut settings = args();
    settings.open_registration = Some(true);
    settings.guest_chat = Some(true);
    TestServer::with(settings).await
}

#[tokio::test]
async fn registration_login_and_a_token_that_works() {
    let server = open_server().await;
    let (status, body) = server
        .post(
            "/api/users",
            None,
            &json!({"username": "Alice", "password": "wonderland"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["user"]["username"], "Alice");
    assert_eq!(body["user"]["kind"], "user");
    assert!(body.get("password_hash").is_none() && body["user"].get("password_hash").is_none());

    for taken in ["Alice", "alice", "ALICE", "AL1CE", "aIice"] {
        let (status, body) = server
            .post(
                "/api/users",
                None,
                &json!({"username": taken, "password": "something1"}),
            )
            .await;
        assert_eq!(status, 409, "{taken}: {body}");
        assert_eq!(body["error_code"], "username_taken");
    }

    let (status, login) = server
        .post(
            "/api/login",
            None,
            &json!({"username": "alice", "password": "wonderland"}),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    assert_eq!(login["user"]["username"], "Alice");
    assert_eq!(login["expires_at"].as_str().map(str::len), Some(24));
    let token = login["token"].as_str().expect("token");
    let client = Client::connect(&server.url(&format!("?token={token}"))).await;
    assert_eq!(client.welcome["user"]["username"], "Alice");

    let (status, body) = server
        .post(
            "/api/login",
            None,
            &json!({"username": "alice", "password": "wrong-password"}),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error_code"], "auth_failed");
    let (status, _) = server
        .post(
            "/api/login",
            None,
            &json!({"username": "nobody", "password": "wonderland"}),
        )
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn registration_is_closed_by_default() {
    let server = TestServer::start().await;
    let (status, body) = server
        .post(
            "/api/users",
            None,
            &json!({"username": "alice", "password": "wonderland"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test]
async fn hostile_usernames_and_bodies_are_refused() {
    let server = open_server().await;
    for name in [
        "'; DROP TABLE users;--",
        "../../etc/passwd",
        "a",
        "has space",
        "system",
        "<script>",
        &"x".repeat(33),
    ] {
        let (status, body) = server
            .post(
                "/api/users",
                None,
                &json!({"username": name, "password": "longenough"}),
            )
            .await;
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(body["error_code"], "validation_error");
    }
    let (status, _) = server
        .post(
            "/api/users",
            None,
            &json!({"username": "bob", "password": "short"}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, body) = server
        .post("/api/users", None, &json!({"username": 5, "password": []}))
        .await;
    assert_eq!(status, 400, "{body}");
    let huge = json!({"username": "bob", "password": "x".repeat(100_000)});
    let (status, _) = server.post("/api/users", None, &huge).await;
    assert_eq!(status, 413);
    // The users table is intact and registration still works.
    server.register("survivor", "still-here-1").await;
}

#[tokio::test]
async fn password_login_over_the_websocket() {
    let server = open_server().await;
    server.register("carol", "carol-password").await;
    let mut guest = server.guest().await;
    let ok = guest
        .request(json!({"type": "authentication", "username": "CAROL", "password": "carol-password", "ref": "p"}))
        .await;
    assert_eq!(ok["type"], "auth_success", "{ok}");
    assert_eq!(ok["user"]["username"], "carol");
    assert_eq!(ok["ref"], "p");

    let mut other = server.guest().await;
    let failed = other
        .request(json!({"type": "authentication", "username": "carol", "password": "nope-nope"}))
        .await;
    assert_eq!(failed["error_code"], "auth_failed", "{failed}");
}

#[tokio::test]
async fn a_guest_cannot_take_a_registered_name_even_offline() {
    let server = open_server().await;
    server.register("dora", "explorer-1").await;
    let mut guest = server.guest().await;
    for name in ["dora", "Dora", "DORA"] {
        let error = guest
            .request(json!({"type": "user_join", "username": name}))
            .await;
        assert_eq!(error["error_code"], "username_taken", "{name}: {error}");
    }
    let named = guest
        .request(json!({"type": "user_join", "username": "dora-fan"}))
        .await;
    assert_eq!(named["type"], "user_join", "{named}");
}

#[tokio::test]
async fn ten_thousand_failed_logins_from_one_address_are_throttled() {
    let server = open_server().await;
    server.register("victim", "correct-horse").await;
    let mut bystander = server.user("bystander").await;
    let attacker = Some("127.0.0.1".parse().expect("ip"));
    let mut unauthorized = 0;
    let mut throttled = 0;
    for n in 0..10_000 {
        let (status, body) = http_request(
            server.addr,
            "POST",
            "/api/login",
            None,
            Some(&json!({"username": "victim", "password": format!("guess-{n}")})),
            attacker,
        )
        .await;
        match status {
            401 => unauthorized += 1,
            429 => {
                throttled += 1;
                assert_eq!(body["error_code"], "rate_limited");
                assert!(
                    body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
                    "{body}"
                );
            }
            other => panic!("unexpected status {other}: {body}"),
        }
        if n % 2000 == 0 {
            bystander.assert_alive().await;
        }
    }
    // Ten wrong passwords are checked; everything after waits.
    assert!(unauthorized <= 12, "{unauthorized} guesses were checked");
    assert_eq!(unauthorized + throttled, 10_000);
    // Even the right password waits, from that address...
    let (status, _) = http_request(
        server.addr,
        "POST",
        "/api/login",
        None,
        Some(&json!({"username": "victim", "password": "correct-horse"})),
        attacker,
    )
    .await;
    assert_eq!(status, 429);
    // ...but not from another one, and everyone else is served.
    let (status, body) = http_request(
        server.addr,
        "POST",
        "/api/login",
        None,
        Some(&json!({"username": "victim", "password": "correct-horse"})),
        Some("127.0.0.2".parse().expect("ip")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    bystander.assert_alive().await;
}
