//! The `roomcast` binary as operators run it (protocol section 8): flags,
//! environment variables, the config file, a file database that outlives a
//! restart, and SIGTERM.

mod support;

use serde_json::json;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{ADMIN_KEY, Client, SECRET};

const BINARY: &str = env!("CARGO_BIN_EXE_roomcast");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("free port")
}

/// A `roomcast serve` child process, killed if the test fails.
struct Process {
    child: Child,
    port: u16,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    fn start(extra: &[&str], env: &[(&str, &str)]) -> Process {
        let port = free_port();
        let bind = format!("127.0.0.1:{port}");
        let mut command = Command::new(BINARY);
        command
            .args(["serve", "--bind", &bind])
            .args(extra)
            .env_remove("ROOMCAST_JWT_SECRET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        Process {
            child: command.spawn().expect("spawn roomcast"),
            port,
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Waits until `GET /healthz` answers 200.
    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(self.addr()).await.is_ok() {
                let (status, _) = support::http_get(self.addr(), "/healthz", None).await;
                if status == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "server did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn user(&self, sub: &str) -> Client {
        let token = roomcast::auth::Tokens::new(SECRET).mint(sub, None, None, 600);
        Client::connect(&format!("ws://{}/ws?token={token}", self.addr())).await
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    async fn exit_code(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit in {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

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
        &[],
    );
    server.ready().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    alice.recv_type("user_join").await;
    let started = Instant::now();
    server.terminate();
    assert_eq!(alice.closed().await, Some(1001));
    assert_eq!(bob.closed().await, Some(1001));
    assert_eq!(server.exit_code(Duration::from_secs(10)).await, 0);
    assert!(started.elapsed() < Duration::from_secs(10));
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
        ],
    );
    server.ready().await;
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
    let mut stderr = String::new();
    use std::io::Read;
    server
        .child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(stderr.contains("max_frame_byte"), "{stderr}");

    let mut server = Process::start(&["--idle-timeout-ms", "0"], &[]);
    assert_eq!(server.exit_code(Duration::from_secs(10)).await, 2);
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
