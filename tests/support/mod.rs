//! Shared helpers for the integration tests: a real roomcast server on
//! `127.0.0.1:0`, real WebSocket clients, and a minimal HTTP client.
#![allow(dead_code)]

pub mod nodes;
pub mod process;
pub mod raw;

use futures_util::{SinkExt, StreamExt};
use roomcast::auth::Tokens;
use roomcast::config::{Config, ServeArgs};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "integration-test-secret";
pub const ADMIN_KEY: &str = "integration-admin-key";

/// How long a test waits for a frame it expects.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a test listens to conclude that no frame is coming.
pub const SILENCE: Duration = Duration::from_millis(300);

pub fn args() -> ServeArgs {
    ServeArgs {
        database: Some("sqlite::memory:".into()),
        jwt_secret: Some(SECRET.into()),
        admin_key: Some(ADMIN_KEY.into()),
        ..ServeArgs::default()
    }
}

/// A server running in this process on a real loopback socket.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), roomcast::ServeError>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::with(args()).await
    }

    pub async fn with(args: ServeArgs) -> TestServer {
        let config = Config::resolve(args).expect("valid test config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(roomcast::serve(config, listener, async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/ws{query}", self.addr)
    }

    pub fn token(&self, sub: &str) -> String {
        Tokens::new(SECRET).mint(sub, None, None, 3600)
    }

    pub fn token_with(&self, sub: &str, name: Option<&str>, role: Option<&str>) -> String {
        Tokens::new(SECRET).mint(sub, name, role, 3600)
    }

    /// Connects as user `sub` (token in the query) and reads the welcome.
    pub async fn user(&self, sub: &str) -> Client {
        Client::connect(&self.url(&format!("?token={}", self.token(sub)))).await
    }

    /// Connects without a token and reads the welcome.
    pub async fn guest(&self) -> Client {
        Client::connect(&self.url("")).await
    }

    /// Stops the server as SIGTERM would and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = (&mut self.task).await.expect("server task");
        result.expect("server stopped cleanly");
    }

    pub async fn get(&self, path: &str, bearer: Option<&str>) -> (u16, String) {
        http_get(self.addr, path, bearer).await
    }

    pub async fn get_json(&self, path: &str, bearer: Option<&str>) -> (u16, Value) {
        let (status, body) = self.get(path, bearer).await;
        let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
        (status, value)
    }

    pub async fn stats(&self) -> Value {
        let (status, body) = self.get_json("/api/stats", Some(ADMIN_KEY)).await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl TestServer {
    /// Polls `/api/stats` until `ready` holds (the server finishes closing a
    /// connection a moment after the client sees the close).
    pub async fn stats_when(&self, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + RECEIVE_TIMEOUT;
        loop {
            let stats = self.stats().await;
            if ready(&stats) {
                return stats;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stats never got there: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A minimal HTTP/1.1 GET; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (u16, String) {
    raw_request(addr, "GET", path, bearer, None, None, &[]).await
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client that speaks JSON.
pub struct Client {
    socket: Socket,
    pub welcome: Value,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket upgrade");
        let mut client = Client {
            socket,
            welcome: Value::Null,
        };
        client.welcome = client.recv().await;
        assert_eq!(client.welcome["type"], "welcome", "{}", client.welcome);
        client
    }

    /// Tries to upgrade; returns the HTTP status on refusal.
    pub async fn try_connect(url: &str, bearer: Option<&str>) -> Result<Client, u16> {
        let mut request = url.into_client_request().expect("request");
        if let Some(token) = bearer {
            request.headers_mut().insert(
                "Authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => {
                let mut client = Client {
                    socket,
                    welcome: Value::Null,
                };
                client.welcome = client.recv().await;
                Ok(client)
            }
            Err(WsError::Http(response)) => Err(response.status().as_u16()),
            Err(err) => panic!("upgrade failed: {err}"),
        }
    }

    pub fn connection_id(&self) -> String {
        self.welcome["connection_id"]
            .as_str()
            .expect("connection_id")
            .to_owned()
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.socket
            .send(Message::Binary(bytes.to_vec().into()))
            .await
            .expect("send");
    }

    /// The next text frame, as JSON. Fails the test after five seconds.
    pub async fn recv(&mut self) -> Value {
        match tokio::time::timeout(RECEIVE_TIMEOUT, self.next_text()).await {
            Ok(Some(value)) => value,
            Ok(None) => panic!("connection closed while a frame was expected"),
            Err(_) => panic!("no frame within {RECEIVE_TIMEOUT:?}"),
        }
    }

    /// The next frame of type `kind`, skipping others.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Sends a frame and returns the next frame received.
    /// Sends `frame` (which carries a `ref`) and returns the frame that
    /// answers it, passing over anything else that arrives meanwhile.
    pub async fn reply_to(&mut self, frame: Value) -> Value {
        let reference = frame["ref"].clone();
        self.send(frame).await;
        loop {
            let reply = self.recv().await;
            if reply["ref"] == reference {
                return reply;
            }
        }
    }

    pub async fn request(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        self.recv().await
    }

    /// Asserts that no frame of type `kind` arrives for a short while
    /// (frames of other types may).
    pub async fn expect_none_of(&mut self, kind: &str) {
        let deadline = tokio::time::Instant::now() + SILENCE;
        while let Ok(Some(frame)) = tokio::time::timeout_at(deadline, self.next_text()).await {
            assert_ne!(frame["type"], kind, "expected no {kind}, got {frame}");
        }
    }

    /// Asserts that no text frame arrives for a short while.
    pub async fn expect_silence(&mut self) {
        if let Ok(Some(frame)) = tokio::time::timeout(SILENCE, self.next_text()).await {
            panic!("expected no frame, got {frame}");
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        self.closed_with_reason().await.map(|(code, _)| code)
    }

    /// The frames that arrive before the server's close, and its code.
    pub async fn frames_until_close(&mut self) -> (Vec<Value>, Option<u16>) {
        let mut frames = Vec::new();
        let wait = async {
            loop {
                match self.socket.next().await {
                    Some(Ok(Message::Text(text))) => {
                        frames.push(serde_json::from_str(&text).expect("JSON frame"));
                    }
                    Some(Ok(Message::Close(frame))) => {
                        while let Some(Ok(_)) = self.socket.next().await {}
                        return frame.map(|CloseFrame { code, .. }| u16::from(code));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return None,
                }
            }
        };
        let code = tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("server did not close the connection");
        (frames, code)
    }

    /// Like [`Client::closed`], with the close frame's reason.
    pub async fn closed_with_reason(&mut self) -> Option<(u16, String)> {
        let wait = async {
            loop {
                match self.socket.next().await {
                    Some(Ok(Message::Close(frame))) => {
                        // Keep reading so the library sends its answer to
                        // the close, as a real client does.
                        while let Some(Ok(_)) = self.socket.next().await {}
                        return frame.map(|CloseFrame { code, reason }| {
                            (u16::from(code), reason.to_string())
                        });
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return None,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("server did not close the connection")
    }

    /// Counts the WebSocket pings that arrive within `window`.
    pub async fn pings_within(&mut self, window: Duration) -> usize {
        let mut pings = 0;
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout_at(deadline, self.socket.next()).await
        {
            if matches!(message, Message::Ping(_)) {
                pings += 1;
            }
        }
        pings
    }

    /// Checks that the connection is alive: a ping is answered (other
    /// frames before the pong are skipped).
    pub async fn assert_alive(&mut self) {
        self.send(serde_json::json!({"type": "ping", "ref": "alive?"}))
            .await;
        let pong = self.recv_type("pong").await;
        assert_eq!(pong["ref"], "alive?");
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
        // Drain until the server's answer so the close is complete.
        while let Some(Ok(_)) = self.socket.next().await {}
    }

    async fn next_text(&mut self) -> Option<Value> {
        loop {
            match self.socket.next().await? {
                Ok(Message::Text(text)) => {
                    return Some(serde_json::from_str(&text).expect("server sent JSON"));
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }
}

/// Joins `room` and returns the `room_joined` frame (frames that were
/// already on their way, such as `user_join`, are skipped).
pub async fn join(client: &mut Client, room: &str) -> Value {
    client
        .send(serde_json::json!({"type": "room_join", "room": room}))
        .await;
    let joined = client.recv_type("room_joined").await;
    assert_eq!(joined["type"], "room_joined", "{joined}");
    joined
}

/// Subscribes to the online announcements of every user (`None`) or of
/// those listed, and returns the `presence_state` reply.
pub async fn subscribe(client: &mut Client, user_ids: Option<&[&str]>) -> Value {
    let mut frame = serde_json::json!({"type": "presence_subscribe", "ref": "subscribe"});
    if let Some(ids) = user_ids {
        frame["user_ids"] = serde_json::json!(ids);
    }
    client.send(frame).await;
    let state = client.recv_type("presence_state").await;
    assert_eq!(state["ref"], "subscribe", "{state}");
    assert_eq!(state["room"], Value::Null, "{state}");
    state
}

/// `alice` and `bob`, both in `room`, with the announcements of their
/// arrival already read.
pub async fn alice_and_bob_in(server: &TestServer, room: &str) -> (Client, Client) {
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    join(&mut alice, room).await;
    join(&mut bob, room).await;
    alice.assert_alive().await;
    (alice, bob)
}

/// Connects as `sub` with a tiny socket receive buffer and reads only the
/// welcome: a client that will fall behind as soon as traffic flows.
pub async fn slow_user(server: &TestServer, sub: &str) -> Client {
    user_with_recv_buffer(server, sub, 4096).await
}

/// A user whose socket has a fixed receive buffer of `bytes`.
pub async fn user_with_recv_buffer(server: &TestServer, sub: &str, bytes: u32) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
    let stream = socket.connect(server.addr).await.expect("connect");
    let url = server.url(&format!("?token={}", server.token(sub)));
    let (socket, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
        .await
        .expect("upgrade");
    let mut client = Client {
        socket,
        welcome: Value::Null,
    };
    client.welcome = client.recv().await;
    client
}

/// A throw-away PostgreSQL schema for one test, dropped when it goes away.
pub struct PgSchema {
    pub url: String,
    base: String,
    name: String,
}

impl PgSchema {
    /// Creates a fresh schema on `ROOMCAST_TEST_POSTGRES_URL`, or returns
    /// `None` (and says so in the test output) when the variable is not
    /// set. Under CI (`CI` set) a missing database fails the test instead.
    pub async fn create(test: &str) -> Option<PgSchema> {
        let Ok(base) = std::env::var("ROOMCAST_TEST_POSTGRES_URL") else {
            skipped(test, "PostgreSQL", "ROOMCAST_TEST_POSTGRES_URL");
            return None;
        };
        let name = format!(
            "rc_test_{}_{}",
            std::process::id(),
            NEXT_SCHEMA.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
            .await
            .expect("connect to ROOMCAST_TEST_POSTGRES_URL");
        tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
            ))
            .await
            .expect("create schema");
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-csearch_path%3D{name}");
        Some(PgSchema { url, base, name })
    }
}

static NEXT_SCHEMA: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Drops the schemas of test processes that are no longer running (a test
/// that failed or was killed leaves its schema behind).
async fn drop_abandoned_schemas(client: &tokio_postgres::Client) {
    let Ok(rows) = client
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'rc_test_%'",
            &[],
        )
        .await
    else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let pid = name.split('_').nth(2).unwrap_or("");
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = client
                .batch_execute(&format!(
                    "SET lock_timeout = '2s'; DROP SCHEMA IF EXISTS {name} CASCADE"
                ))
                .await;
        }
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        // Best effort, on a thread of its own: Drop cannot await, and must not
        // wait either — the test's runtime may still hold connections to the
        // schema that only close once it runs again. Schemas whose cleanup
        // does not finish are dropped by a later run.
        let base = self.base.clone();
        let name = self.name.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async move {
                    if let Ok((client, connection)) =
                        tokio_postgres::connect(&base, tokio_postgres::NoTls).await
                    {
                        tokio::spawn(connection);
                        let _ = client
                            .batch_execute(&format!(
                                "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {name} CASCADE"
                            ))
                            .await;
                    }
                });
            }
        });
    }
}

/// An HTTP/1.1 request with an optional bearer token and JSON body, from an
/// optional local source address (to act as another client IP); the answer's
/// body as JSON (or as a string when it is not JSON).
/// [`http_request`] with more headers.
pub async fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let (status, body) = raw_request(addr, method, path, bearer, body, None, headers).await;
    (status, json_or_text(body))
}

/// A response body as JSON, or as a JSON string when it is not JSON.
fn json_or_text(body: String) -> Value {
    serde_json::from_str(&body).unwrap_or(Value::String(body))
}

pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
    source: Option<std::net::IpAddr>,
) -> (u16, Value) {
    let (status, body) = raw_request(addr, method, path, bearer, body, source, &[]).await;
    (status, json_or_text(body))
}

async fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
    source: Option<std::net::IpAddr>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut stream = match source {
        Some(ip) => {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .bind(SocketAddr::new(ip, 0))
                .expect("bind source address");
            socket.connect(addr).await.expect("connect")
        }
        None => TcpStream::connect(addr).await.expect("connect"),
    };
    let mut auth = bearer
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    for (name, value) in headers {
        auth.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

impl TestServer {
    pub async fn post(&self, path: &str, bearer: Option<&str>, body: &Value) -> (u16, Value) {
        http_request(self.addr, "POST", path, bearer, Some(body), None).await
    }

    /// Creates an account through `POST /api/users` (the server must run
    /// with open registration) and logs in; returns the token.
    pub async fn register(&self, username: &str, password: &str) -> String {
        let (status, body) = self
            .post(
                "/api/users",
                None,
                &serde_json::json!({"username": username, "password": password}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = self
            .post(
                "/api/login",
                None,
                &serde_json::json!({"username": username, "password": password}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().expect("token").to_owned()
    }
}

/// Opens a WebSocket that the server is expected to close before any frame
/// (no welcome); returns the close code.
pub async fn refused(url: &str) -> Option<u16> {
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    match tokio::time::timeout(RECEIVE_TIMEOUT, socket.next()).await {
        Ok(Some(Ok(Message::Close(frame)))) => frame.map(|CloseFrame { code, .. }| u16::from(code)),
        other => panic!("expected a close before any frame, got {other:?}"),
    }
}

/// Says that `test` did not run on `service` because `variable` is not set,
/// where `cargo test` shows it without `--nocapture`: straight to the
/// process's stderr, which the test harness does not capture (it captures
/// `eprintln!`). Under CI (`CI` set to anything but `false` or `0`) a
/// missing service is a failure, not a skip.
pub fn skipped(test: &str, service: &str, variable: &str) {
    use std::io::Write;
    let ci = std::env::var("CI").is_ok_and(|value| !matches!(value.as_str(), "" | "0" | "false"));
    assert!(
        !ci,
        "{test} needs {service}: set {variable} (CI is set, so a missing service fails the run)"
    );
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED {test} on {service}: {variable} is not set"
    );
}
