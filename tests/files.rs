//! File sharing through real clients: `file_upload_request` over a
//! WebSocket, the bytes PUT over HTTP, `file_shared` to the room, and the
//! download with its headers and ranges; every bad input the upload and
//! download paths get.

mod support;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;
use support::{ADMIN_KEY, Client, TestServer, args, join};

/// A PNG signature and header: enough for its type to be recognized.
const PNG: &[u8] =
    b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";

fn png(size: usize) -> Vec<u8> {
    let mut bytes = PNG.to_vec();
    bytes.extend((0..size - PNG.len()).map(|i| (i % 251) as u8));
    bytes
}

async fn server_with(
    extra: impl FnOnce(&mut roomcast::config::ServeArgs),
) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = args();
    args.data_dir = Some(dir.path().to_owned());
    extra(&mut args);
    (TestServer::with(args).await, dir)
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Asks for an upload and returns `file_upload_authorized`.
async fn authorize(
    client: &mut Client,
    name: &str,
    size: usize,
    content_type: &str,
    room: &str,
) -> Value {
    let reply = client
        .reply_to(json!({
            "type": "file_upload_request", "ref": "up",
            "filename": name, "size": size, "content_type": content_type, "room": room,
        }))
        .await;
    assert_eq!(reply["type"], "file_upload_authorized", "{reply}");
    assert_eq!(reply["ref"], "up");
    reply
}

async fn put(
    server: &TestServer,
    grant: &Value,
    token: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let url = format!(
        "http://{}{}",
        server.addr,
        grant["upload_url"].as_str().expect("url")
    );
    let mut request = http().put(url).body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("PUT");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn token(grant: &Value) -> &str {
    grant["upload_token"].as_str().expect("token")
}

async fn download(
    server: &TestServer,
    url: &str,
    bearer: Option<&str>,
    range: Option<&str>,
) -> reqwest::Response {
    let mut request = http().get(format!("http://{}{url}", server.addr));
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    if let Some(range) = range {
        request = request.header("Range", range);
    }
    request.send().await.expect("GET")
}

#[tokio::test]
async fn a_shared_file_reaches_the_room_its_history_and_its_readers() {
    let (server, dir) = server_with(|_| {}).await;
    let (mut alice, mut bob) = support::alice_and_bob_in(&server, "team").await;
    let bytes = png(70_000);
    let grant = authorize(
        &mut alice,
        "../../etc/hol\u{202E}iday\r\n.png",
        bytes.len(),
        "image/png",
        "team",
    )
    .await;
    assert_eq!(grant["method"], "PUT");
    assert_eq!(grant["max_size"], bytes.len());
    assert!(
        grant["expires_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    let (status, body) = put(&server, &grant, Some(token(&grant)), bytes.clone()).await;
    assert_eq!(status, 201, "{body}");
    let file = &body["file"];
    assert_eq!(file["name"], "holiday.png", "no path, no controls");
    assert_eq!(file["size"], bytes.len());
    assert_eq!(file["content_type"], "image/png");
    assert_eq!(file["sha256"], hex::encode(Sha256::digest(&bytes)));
    let url = file["url"].as_str().expect("url");
    assert_eq!(
        url,
        format!("/api/files/{}", file["id"].as_str().expect("id"))
    );

    let shared = bob.recv_type("file_shared").await;
    assert_eq!(shared["file"], *file);
    assert_eq!(shared["room"], "team");
    assert_eq!(shared["user"]["id"], "alice");
    assert_eq!(shared["message"]["attachment"], *file);
    assert_eq!(shared["message"]["user"]["id"], "alice");
    let message_id = shared["message"]["id"].as_i64().expect("id");
    assert_eq!(
        alice.recv_type("file_shared").await["message"]["id"],
        message_id
    );

    // In history and in recovery, like any message.
    let mut carol = server.user("carol").await;
    carol
        .send(json!({"type": "room_join", "room": "team", "since_id": message_id - 1}))
        .await;
    let joined = carol.recv_type("room_joined").await;
    assert_eq!(joined["recent_messages"][0]["attachment"], *file);

    // Bob downloads it, whole and in part.
    let bob_token = server.token("bob");
    let response = download(&server, url, Some(&bob_token), None).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(
        headers["etag"],
        format!("\"{}\"", file["sha256"].as_str().expect("sha"))
    );
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"holiday.png\"; filename*=UTF-8''holiday.png"
    );
    assert_eq!(
        response.bytes().await.expect("body").as_ref(),
        bytes.as_slice()
    );

    let part = download(&server, url, Some(&bob_token), Some("bytes=1-4")).await;
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 1-4/{}", bytes.len())
    );
    assert_eq!(part.bytes().await.expect("body").as_ref(), &bytes[1..5]);
    let tail = download(&server, url, Some(&bob_token), Some("bytes=-3")).await;
    assert_eq!(
        tail.bytes().await.expect("body").as_ref(),
        &bytes[bytes.len() - 3..]
    );
    let beyond = download(&server, url, Some(&bob_token), Some("bytes=99999999-")).await;
    assert_eq!(beyond.status(), 416);
    assert_eq!(
        beyond.headers()["content-range"],
        format!("bytes */{}", bytes.len())
    );
    let cached = http()
        .get(format!("http://{}{url}", server.addr))
        .bearer_auth(&bob_token)
        .header("If-None-Match", headers["etag"].clone())
        .send()
        .await
        .expect("GET");
    assert_eq!(cached.status(), 304);

    // The token was spent.
    let (status, body) = put(&server, &grant, Some(token(&grant)), bytes.clone()).await;
    assert_eq!(status, 401, "{body}");
    // The name of the blob is the server's, inside the data directory.
    let stored = dir
        .path()
        .join("files")
        .join(file["id"].as_str().expect("id"));
    assert_eq!(std::fs::read(stored).expect("blob"), bytes);
    server.stop().await;
}

#[tokio::test]
async fn requests_outside_the_rules_are_refused_over_the_websocket() {
    let (server, _dir) = server_with(|args| {
        args.max_upload_bytes = Some(1000);
    })
    .await;
    let mut alice = server.user("alice").await;
    join(&mut alice, "team").await;
    let request = |size: u64, content_type: &str, room: &str| {
        json!({"type": "file_upload_request", "ref": "r", "filename": "a.png",
               "size": size, "content_type": content_type, "room": room})
    };
    let cases = [
        (request(1001, "image/png", "team"), "file_too_large"),
        (
            request(10, "application/x-msdownload", "team"),
            "file_type_not_allowed",
        ),
        (
            request(10, "image/svg+xml", "team"),
            "file_type_not_allowed",
        ),
        (request(0, "image/png", "team"), "validation_error"),
        (request(10, "image/png", "elsewhere"), "forbidden"),
        // Protocol rule 1: an invalid field before the room check.
        (request(0, "image/png", "elsewhere"), "validation_error"),
        (
            json!({"type": "file_upload_request", "ref": "r", "size": 10, "content_type": "image/png"}),
            "validation_error",
        ),
    ];
    for (frame, code) in cases {
        let reply = alice.reply_to(frame.clone()).await;
        assert_eq!(reply["type"], "error", "{frame}: {reply}");
        assert_eq!(reply["error_code"], code, "{frame}: {reply}");
        assert_eq!(reply["ref"], "r");
    }
    // Parameters and case of the type do not matter.
    let reply = alice
        .reply_to(request(10, "Text/Plain; charset=utf-8", "team"))
        .await;
    assert_eq!(reply["type"], "file_upload_authorized", "{reply}");
    // An unnamed guest may not upload.
    let mut guest = server.guest().await;
    let reply = guest.reply_to(request(10, "image/png", "team")).await;
    assert_eq!(reply["error_code"], "not_authenticated", "{reply}");
    alice.assert_alive().await;
    server.stop().await;
}

#[tokio::test]
async fn bad_puts_are_refused_and_leave_the_upload_usable() {
    let (server, _dir) = server_with(|_| {}).await;
    let (mut alice, mut bob) = support::alice_and_bob_in(&server, "team").await;
    let bytes = png(4000);
    let grant = authorize(&mut alice, "a.png", bytes.len(), "image/png", "team").await;

    let (status, body) = put(&server, &grant, None, bytes.clone()).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (401, Some("auth_failed")),
        "{body}"
    );
    let (status, body) = put(&server, &grant, Some("not-the-token"), bytes.clone()).await;
    assert_eq!(status, 401, "{body}");
    // Another user's valid login token is no upload token.
    let (status, _) = put(&server, &grant, Some(&server.token("alice")), bytes.clone()).await;
    assert_eq!(status, 401);
    // Too long: 413 (announced by Content-Length, and streamed without one).
    let mut longer = bytes.clone();
    longer.push(0);
    let (status, body) = put(&server, &grant, Some(token(&grant)), longer.clone()).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (413, Some("file_too_large")),
        "{body}"
    );
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        longer.chunks(1000).map(|c| Ok(c.to_vec())).collect();
    let response = http()
        .put(format!(
            "http://{}{}",
            server.addr,
            grant["upload_url"].as_str().expect("url")
        ))
        .bearer_auth(token(&grant))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("PUT");
    assert_eq!(response.status(), 413);
    // Too short: 400.
    let (status, body) = put(&server, &grant, Some(token(&grant)), bytes[..100].to_vec()).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (400, Some("validation_error")),
        "{body}"
    );
    // Content that is not what was declared: 415.
    let mut text = b"just text, not a picture ".repeat(160);
    text.truncate(bytes.len());
    let (status, body) = put(&server, &grant, Some(token(&grant)), text).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (415, Some("file_type_not_allowed")),
        "{body}"
    );
    // Nothing of the failures was shared; the right body still goes through.
    bob.expect_none_of("file_shared").await;
    let (status, body) = put(&server, &grant, Some(token(&grant)), bytes).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(bob.recv_type("file_shared").await["file"], body["file"]);

    // Unknown and malformed upload ids.
    for path in [
        "/api/uploads/00000000000000000000000000000000",
        "/api/uploads/..%2F..%2Fetc",
        "/api/uploads/x",
    ] {
        let response = http()
            .put(format!("http://{}{path}", server.addr))
            .bearer_auth(token(&grant))
            .body("x")
            .send()
            .await
            .expect("PUT");
        assert_eq!(response.status(), 404, "{path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let (server, _dir) = server_with(|args| args.upload_ttl = Some("1s".into())).await;
    let mut alice = server.user("alice").await;
    join(&mut alice, "team").await;
    let grant = authorize(&mut alice, "a.txt", 5, "text/plain", "team").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, body) = put(&server, &grant, Some(token(&grant)), b"hello".to_vec()).await;
    assert_eq!(status, 401, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn two_puts_racing_for_one_upload_store_it_once() {
    let (server, _dir) = server_with(|_| {}).await;
    let (mut alice, mut bob) = support::alice_and_bob_in(&server, "team").await;
    let bytes = png(3 * 1024 * 1024);
    let grant = authorize(&mut alice, "big.png", bytes.len(), "image/png", "team").await;
    let (first, second) = tokio::join!(
        put(&server, &grant, Some(token(&grant)), bytes.clone()),
        put(&server, &grant, Some(token(&grant)), bytes.clone()),
    );
    let mut statuses = [first.0, second.0];
    statuses.sort_unstable();
    assert_eq!(statuses[0], 201, "{first:?} {second:?}");
    assert!(statuses[1] == 409 || statuses[1] == 401, "{statuses:?}");
    bob.recv_type("file_shared").await;
    bob.expect_none_of("file_shared").await;
    server.stop().await;
}

#[tokio::test]
async fn only_those_who_may_read_the_room_download() {
    let (server, _dir) = server_with(|_| {}).await;
    let owner = server.token("alice");
    let (status, body) = server
        .post(
            "/api/rooms",
            Some(&owner),
            &json!({"name": "secret", "private": true}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut alice = server.user("alice").await;
    join(&mut alice, "secret").await;
    let grant = authorize(&mut alice, "plan.txt", 11, "text/plain", "secret").await;
    let (status, body) = put(
        &server,
        &grant,
        Some(token(&grant)),
        b"hello there".to_vec(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let url = body["file"]["url"].as_str().expect("url").to_owned();

    assert_eq!(
        download(&server, &url, Some(&owner), None).await.status(),
        200
    );
    let stranger = download(&server, &url, Some(&server.token("mallory")), None).await;
    assert_eq!(stranger.status(), 403);
    assert_eq!(download(&server, &url, None, None).await.status(), 401);
    assert_eq!(
        download(&server, &url, Some("garbage"), None)
            .await
            .status(),
        401
    );
    assert_eq!(
        download(&server, &url, Some(ADMIN_KEY), None)
            .await
            .status(),
        401,
        "the admin key is no user"
    );
    for path in [
        "/api/files/ffffffffffffffffffffffffffffffff",
        "/api/files/..%2F..%2Froomcast.db",
        "/api/files/%2e%2e",
    ] {
        let response = download(&server, path, Some(&owner), None).await;
        assert_eq!(response.status(), 404, "{path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn files_whose_message_retention_deleted_are_deleted() {
    let (server, dir) = server_with(|args| {
        args.retention_max_messages = Some(1);
        args.retention_interval_ms = Some(200);
    })
    .await;
    let mut alice = server.user("alice").await;
    join(&mut alice, "team").await;
    let grant = authorize(&mut alice, "a.txt", 5, "text/plain", "team").await;
    let (status, body) = put(&server, &grant, Some(token(&grant)), b"hello".to_vec()).await;
    assert_eq!(status, 201, "{body}");
    let id = body["file"]["id"].as_str().expect("id").to_owned();
    let blob = dir.path().join("files").join(&id);
    assert!(blob.exists());
    // A newer message pushes the file's message out of the room.
    alice
        .reply_to(json!({"type": "chat_message", "ref": "m", "room": "team", "content": "later"}))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while blob.exists() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!blob.exists(), "the blob outlived its message");
    let response = download(
        &server,
        &format!("/api/files/{id}"),
        Some(&server.token("alice")),
        None,
    )
    .await;
    assert_eq!(response.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn file_sharing_can_be_turned_off() {
    let (server, _dir) = server_with(|args| args.upload_types = Some(vec!["none".into()])).await;
    let mut alice = server.user("alice").await;
    join(&mut alice, "team").await;
    let reply = alice
        .reply_to(
            json!({"type": "file_upload_request", "ref": "r", "filename": "a.png",
               "size": 10, "content_type": "image/png", "room": "team"}),
        )
        .await;
    assert_eq!(reply["error_code"], "file_type_not_allowed", "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn a_user_cannot_pile_up_upload_authorizations() {
    let (server, _dir) = server_with(|_| {}).await;
    let mut alice = server.user("alice").await;
    join(&mut alice, "team").await;
    let request = json!({"type": "file_upload_request", "ref": "r", "filename": "a.txt",
                         "size": 5, "content_type": "text/plain", "room": "team"});
    for _ in 0..roomcast::files::UPLOADS_PER_USER_PER_MINUTE {
        assert_eq!(
            alice.reply_to(request.clone()).await["type"],
            "file_upload_authorized"
        );
    }
    let refused = alice.reply_to(request).await;
    assert_eq!(refused["error_code"], "rate_limited", "{refused}");
    assert!(refused["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0));
    server.stop().await;
}
