//! A `roomcast serve` child process, for tests of the binary itself.

use super::{Client, SECRET};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_roomcast");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("free port")
}

/// A `roomcast serve` child process, killed if the test fails.
pub struct Process {
    pub child: Child,
    pub port: u16,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    pub fn start(extra: &[&str], env: &[(&str, &str)]) -> Process {
        Process::start_in(std::path::Path::new("."), extra, env)
    }

    /// Starts the server in the working directory `dir`.
    pub fn start_in(dir: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Process {
        let port = free_port();
        let bind = format!("127.0.0.1:{port}");
        let mut command = Command::new(BINARY);
        command
            .current_dir(dir)
            .args(["serve", "--bind", &bind])
            .args(extra)
            .env_remove("ROOMCAST_JWT_SECRET")
            // stderr is a pipe nobody drains while the test runs: keep it quiet.
            .env("RUST_LOG", "roomcast=warn")
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

    /// Everything the server wrote to stderr; call it once it has exited.
    pub fn stderr(&mut self) -> String {
        use std::io::Read;
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("read stderr");
        stderr
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Waits until `GET /healthz` answers 200.
    pub async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(self.addr()).await.is_ok() {
                let (status, _) = super::http_get(self.addr(), "/healthz", None).await;
                if status == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "server did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn user(&self, sub: &str) -> Client {
        let token = roomcast::auth::Tokens::new(SECRET).mint(sub, None, None, 600);
        Client::connect(&format!("ws://{}/ws?token={token}", self.addr())).await
    }

    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn exit_code(&mut self, within: Duration) -> i32 {
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

impl Process {
    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Connects with a token for `sub` in the query.
    pub fn url(&self, sub: &str) -> String {
        let token = roomcast::auth::Tokens::new(SECRET).mint(sub, None, None, 600);
        format!("ws://{}/ws?token={token}", self.addr())
    }
}
