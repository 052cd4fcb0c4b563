//! Access control and abuse limits: private rooms by every route, kicking,
//! rate limits, connection and room limits, origins, token expiry, tokens
//! from another backend's key, and TLS.

mod support;

use serde_json::json;
use std::time::Duration;
use support::{ADMIN_KEY, Client, TestServer, args, http_request, join};

#[tokio::test]
async fn a_private_room_is_closed_to_non_members_by_every_route() {
    let mut settings = args();
    settings.open_registration = Some(true);
    let server = TestServer::with(settings).await;
    let owner_token = server.token("owner");
    let (status, created) = server
        .post(
            "/api/rooms",
            Some(&owner_token),
            &json!({"name": "secret", "private": true}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["room"]["private"], true);
    assert_eq!(created["room"]["owner_id"], "owner");
    let (status, body) = server
        .post("/api/rooms", Some(&owner_token), &json!({"name": "secret"}))
        .await;
    assert_eq!(status, 409);
    assert_eq!(body["error_code"], "conflict", "{body}");
    let (status, _) = server
        .post("/api/rooms", None, &json!({"name": "anon"}))
        .await;
    assert_eq!(status, 401);
    for bad in ["global", "../etc", "a b"] {
        let (status, _) = server
            .post("/api/rooms", Some(&owner_token), &json!({"name": bad}))
            .await;
        assert_eq!(status, 400, "{bad}");
    }

    let mut owner = server.user("owner").await;
    join(&mut owner, "secret").await;
    owner
        .send(json!({"type": "chat_message", "room": "secret", "content": "classified"}))
        .await;
    owner.recv_type("chat_message").await;

    let mut mallory = server.user("mallory").await;
    let mallory_token = server.token("mallory");
    // WebSocket: joining, then every room-scoped frame.
    for frame in [
        json!({"type": "room_join", "room": "secret"}),
        json!({"type": "room_join", "room": "secret", "since_id": 0}),
        json!({"type": "history", "room": "secret"}),
        json!({"type": "presence", "room": "secret"}),
        json!({"type": "user_typing", "room": "secret"}),
        json!({"type": "chat_message", "room": "secret", "content": "let me in"}),
    ] {
        let error = mallory.request(frame.clone()).await;
        assert_eq!(error["error_code"], "forbidden", "{frame}: {error}");
        assert!(!error.to_string().contains("classified"));
    }
    // HTTP history and room statistics.
    let (status, body) = http_request(
        server.addr,
        "GET",
        "/api/rooms/secret/messages",
        Some(&mallory_token),
        None,
        None,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(!body.to_string().contains("classified"));
    let (status, _) = server
        .get_json("/api/rooms/secret/stats", Some(&mallory_token))
        .await;
    assert_eq!(status, 401);
    // Managing members is for the owner.
    let (status, _) = server
        .post(
            "/api/rooms/secret/members",
            Some(&mallory_token),
            &json!({"user_id": "mallory"}),
        )
        .await;
    assert_eq!(status, 403);

    // The owner adds bob: bob may join and read.
    let (status, body) = server
        .post(
            "/api/rooms/secret/members",
            Some(&owner_token),
            &json!({"user_id": "bob"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut bob = server.user("bob").await;
    let joined = join(&mut bob, "secret").await;
    assert_eq!(joined["recent_messages"][0]["content"], "classified");
    let (status, page) = http_request(
        server.addr,
        "GET",
        "/api/rooms/secret/messages",
        Some(&server.token("bob")),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");

    // Removed, bob is taken out at once and cannot come back.
    let (status, body) = http_request(
        server.addr,
        "DELETE",
        "/api/rooms/secret/members/bob",
        Some(&owner_token),
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
    owner.recv_type("presence").await;
    // An administrator may enter any room.
    let mut admin = Client::connect(&server.url(&format!(
        "?token={}",
        server.token_with("root", None, Some("admin"))
    )))
    .await;
    join(&mut admin, "secret").await;
}

#[tokio::test]
async fn without_auto_creation_rooms_must_be_created_first() {
    let mut settings = args();
    settings.no_room_auto_create = Some(true);
    let server = TestServer::with(settings).await;
    let mut alice = server.user("alice").await;
    let error = alice
        .request(json!({"type": "room_join", "room": "nowhere"}))
        .await;
    assert_eq!(error["error_code"], "not_found", "{error}");
    let (status, _) = server
        .post(
            "/api/rooms",
            Some(&server.token("alice")),
            &json!({"name": "somewhere"}),
        )
        .await;
    assert_eq!(status, 201);
    join(&mut alice, "somewhere").await;
}

#[tokio::test]
async fn an_administrator_kicks_a_connection_with_4003() {
    let server = TestServer::start().await;
    let mut victim = server.user("victim").await;
    let mut witness = server.user("witness").await;
    let id = victim.connection_id();
    let path = format!("/api/connections/{id}/kick");
    let (status, _) = http_request(server.addr, "POST", &path, None, None, None).await;
    assert_eq!(status, 401);
    let (status, _) = http_request(
        server.addr,
        "POST",
        &path,
        Some(&server.token("witness")),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401, "a user token is not enough");
    let (status, body) =
        http_request(server.addr, "POST", &path, Some(ADMIN_KEY), None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(victim.closed().await, Some(4003));
    witness.assert_alive().await;
    let (status, _) = http_request(
        server.addr,
        "POST",
        "/api/connections/nope/kick",
        Some(ADMIN_KEY),
        None,
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_flooder_is_rate_limited_and_nobody_else_is_refused() {
    let mut settings = args();
    settings.rate_limit_messages = Some(20);
    settings.rate_limit_burst = Some(10);
    let server = TestServer::with(settings).await;
    let mut flooder = server.user("flooder").await;
    let mut calm = server.user("calm").await;
    let mut listener = server.user("listener").await;
    join(&mut flooder, "lobby").await;
    join(&mut calm, "lobby").await;
    join(&mut listener, "lobby").await;
    for client in [&mut flooder, &mut calm, &mut listener] {
        client.assert_alive().await;
    }

    const FLOOD: usize = 500;
    for n in 0..FLOOD {
        flooder
            .send(json!({"type": "chat_message", "room": "lobby", "content": format!("spam {n}"), "ref": n.to_string()}))
            .await;
    }
    // While the flood is handled, calm talks at a human pace: the limit is
    // per user, so none of calm's messages is refused.
    for n in 0..5 {
        calm.send(json!({"type": "chat_message", "room": "lobby", "content": format!("hi {n}"), "ref": "calm"}))
            .await;
        let ack = loop {
            let frame = calm.recv().await;
            if frame["ref"] == "calm" {
                break frame;
            }
        };
        assert_eq!(ack["type"], "message_ack", "calm was refused: {ack}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut accepted = 0;
    let mut limited = 0;
    while accepted + limited < FLOOD {
        let frame = flooder.recv().await;
        match (frame["type"].as_str(), frame["error_code"].as_str()) {
            (Some("message_ack"), _) => accepted += 1,
            (Some("error"), Some("rate_limited")) => {
                limited += 1;
                assert!(
                    frame["retry_after_ms"].as_u64().is_some_and(|ms| ms >= 1),
                    "{frame}"
                );
                assert!(frame["ref"].is_string());
            }
            _ => {}
        }
    }
    assert!(
        limited >= FLOOD - 100,
        "only {limited} of {FLOOD} were limited"
    );
    // The burst (ten, less the room_join) goes through; the rest waits.
    assert!(accepted >= 5, "the burst goes through: {accepted}");
    // The listener got exactly the accepted spam and all of calm's messages.
    let mut spam = 0;
    let mut calm_messages = 0;
    while spam < accepted || calm_messages < 5 {
        let frame = listener.recv_type("chat_message").await;
        if frame["message"]["user"]["id"] == "calm" {
            calm_messages += 1;
        } else {
            spam += 1;
        }
    }
    listener.expect_silence().await;
    // A ping is never rate limited, so the flooder's connection stays usable.
    flooder.assert_alive().await;
}

#[tokio::test]
async fn connection_and_room_limits() {
    let mut settings = args();
    settings.max_connections_per_user = Some(2);
    settings.max_connections_per_ip = Some(4);
    settings.max_rooms_per_connection = Some(2);
    let server = TestServer::with(settings).await;
    let mut first = server.user("alice").await;
    let _second = server.user("alice").await;
    let third = server.url(&format!("?token={}", server.token("alice")));
    assert_eq!(support::refused(&third).await, Some(4004));
    // The same limit applies when logging in by message.
    let mut guest = server.guest().await;
    guest
        .send(json!({"type": "authentication", "token": server.token("alice")}))
        .await;
    assert_eq!(guest.closed().await, Some(4004));

    // Per IP: alice's two, and two more, and the fifth is refused.
    let _bob = server.user("bob").await;
    let _carol = server.user("carol").await;
    let fifth = server.url(&format!("?token={}", server.token("dave")));
    assert_eq!(support::refused(&fifth).await, Some(4004));

    join(&mut first, "one").await;
    join(&mut first, "two").await;
    let error = first
        .request(json!({"type": "room_join", "room": "three"}))
        .await;
    assert_eq!(error["error_code"], "forbidden", "{error}");
    first
        .send(json!({"type": "room_leave", "room": "one"}))
        .await;
    first.recv_type("room_left").await;
    join(&mut first, "three").await;
}

#[tokio::test]
async fn origins_outside_the_allow_list_are_closed_with_1008() {
    let mut settings = args();
    settings.allowed_origins = Some(vec!["https://chat.example.com".into()]);
    let server = TestServer::with(settings).await;
    let connect = |origin: Option<&'static str>| {
        let url = server.url(&format!("?token={}", server.token("alice")));
        async move {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut request = url.into_client_request().expect("request");
            if let Some(origin) = origin {
                request
                    .headers_mut()
                    .insert("Origin", origin.parse().expect("header"));
            }
            let (socket, _) = tokio_tungstenite::connect_async(request)
                .await
                .expect("upgrade");
            socket
        }
    };
    use futures_util::StreamExt;
    let mut refused = connect(Some("https://evil.example.net")).await;
    match refused.next().await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1008);
            // The reason says which policy, not another one's.
            assert_eq!(frame.reason.as_str(), "origin not allowed");
        }
        other => panic!("expected a 1008 close and nothing else, got {other:?}"),
    }
    for origin in [Some("https://chat.example.com"), None] {
        let mut accepted = connect(origin).await;
        match accepted.next().await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                assert!(text.contains("\"welcome\""), "{text}");
            }
            other => panic!("expected a welcome for {origin:?}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_expired_token_must_be_renewed_within_the_grace_period() {
    let mut settings = args();
    settings.token_grace_ms = Some(400);
    let server = TestServer::with(settings).await;
    let short = roomcast::auth::Tokens::new(support::SECRET).mint("alice", None, None, 1);
    let mut renews = Client::connect(&server.url(&format!("?token={short}"))).await;
    let mut lapses = Client::connect(&server.url(&format!("?token={short}"))).await;
    let expired = renews.recv_type("error").await;
    assert_eq!(expired["error_code"], "token_expired", "{expired}");
    let ok = renews
        .request(json!({"type": "authentication", "token": server.token("alice")}))
        .await;
    assert_eq!(ok["type"], "auth_success", "{ok}");
    let expired = lapses.recv_type("error").await;
    assert_eq!(expired["error_code"], "token_expired");
    assert_eq!(
        lapses.closed_with_reason().await,
        Some((1008, "token expired".to_owned()))
    );
    renews.assert_alive().await;
}

#[tokio::test]
async fn tokens_from_another_backends_rsa_or_ec_key_are_accepted() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let claims = |sub: &str| json!({"sub": sub, "exp": 9_999_999_999u64, "name": sub});
    for (algorithm, public, private) in [
        (
            Algorithm::RS256,
            "jwt-rs256-public.pem",
            "jwt-rs256-private.pem",
        ),
        (
            Algorithm::ES256,
            "jwt-es256-public.pem",
            "jwt-es256-private.pem",
        ),
    ] {
        let mut settings = args();
        settings.jwt_public_key = Some(fixtures.join(public));
        let server = TestServer::with(settings).await;
        let pem = std::fs::read(fixtures.join(private)).expect("private key");
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            _ => EncodingKey::from_ec_pem(&pem),
        }
        .expect("signing key");
        let token = encode(&Header::new(algorithm), &claims("backend-user"), &key).expect("sign");
        let client = Client::connect(&server.url(&format!("?token={token}"))).await;
        assert_eq!(
            client.welcome["user"]["id"], "backend-user",
            "{algorithm:?}"
        );
        // The server's own HS256 tokens still work.
        server.user("local").await;
        // A token signed with the public key as an HMAC secret is refused
        // (the classic algorithm-confusion attack).
        let public_pem = std::fs::read(fixtures.join(public)).expect("public key");
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims("attacker"),
            &EncodingKey::from_secret(&public_pem),
        )
        .expect("sign");
        assert_eq!(
            Client::try_connect(&server.url(&format!("?token={confused}")), None)
                .await
                .err(),
            Some(401)
        );
    }
}

#[tokio::test]
async fn tls_serves_https_and_wss() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut settings = args();
    settings.tls_cert = Some(fixtures.join("tls-cert.pem"));
    settings.tls_key = Some(fixtures.join("tls-key.pem"));
    let server = TestServer::with(settings).await;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(fixtures.join("ca-cert.pem")).expect("cert") {
        roots.add(cert.expect("cert")).expect("root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = ServerName::try_from("localhost").expect("name");

    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let tls = connector
        .connect(name.clone(), tcp)
        .await
        .expect("handshake");
    let url = format!(
        "wss://localhost:{}/ws?token={}",
        server.addr.port(),
        server.token("alice")
    );
    let (mut socket, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("upgrade");
    use futures_util::StreamExt;
    match socket.next().await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
            assert!(text.contains("\"welcome\""), "{text}");
        }
        other => panic!("expected a welcome over TLS, got {other:?}"),
    }

    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut response = String::new();
    tls.read_to_string(&mut response).await.ok();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[tokio::test]
async fn the_admin_key_manages_room_members_and_every_error_is_json() {
    let server = TestServer::start().await;
    let (status, created) = server
        .post(
            "/api/rooms",
            Some(&server.token("owner")),
            &json!({"name": "vault", "private": true}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    // The admin key, like an admin token, may add and remove members.
    let (status, body) = server
        .post(
            "/api/rooms/vault/members",
            Some(ADMIN_KEY),
            &json!({"user_id": "bob"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["added"], true, "{body}");
    let (status, body) = http_request(
        server.addr,
        "DELETE",
        "/api/rooms/vault/members/bob",
        Some(ADMIN_KEY),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["removed"], true, "{body}");
    // A wrong key is not an admin, nor a user.
    let (status, _) = server
        .post(
            "/api/rooms/vault/members",
            Some("not-the-key"),
            &json!({"user_id": "bob"}),
        )
        .await;
    assert_eq!(status, 401);

    // Unknown paths and methods answer with the JSON error body too.
    let (status, body) = http_request(server.addr, "GET", "/nowhere", None, None, None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error_code"], "not_found", "{body}");
    let (status, body) = http_request(server.addr, "DELETE", "/api/login", None, None, None).await;
    assert_eq!(status, 405);
    assert_eq!(body["error_code"], "method_not_allowed", "{body}");
}
