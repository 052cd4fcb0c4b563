//! Connecting load-generator clients: a token per connection, optional
//! source addresses, and small helpers to read JSON frames.

use super::Target;
use crate::auth::Tokens;
use serde_json::Value;
use std::net::SocketAddr;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

pub type Socket = WebSocketStream<TcpStream>;

/// The `host:port` of a `ws://` URL.
fn server_addr(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("only ws:// URLs are supported, not `{url}`"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .parse()
        .map_err(|_| format!("`{authority}` is not ip:port"))
}

/// Opens connection number `index` as user `sub` and reads its welcome.
pub async fn connect(
    target: &Target,
    tokens: &Tokens,
    index: usize,
    sub: &str,
) -> Result<Socket, String> {
    let addr = server_addr(&target.url)?;
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if let Some(range) = &target.source_ips {
        let ip = range.0[index % range.0.len()];
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let token = tokens.mint(sub, None, None, 3600);
    let separator = if target.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{separator}token={token}", target.url);
    let (mut socket, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(|e| e.to_string())?;
    match next_json(&mut socket).await {
        Some(welcome) if welcome["type"] == "welcome" => Ok(socket),
        Some(other) => Err(format!("expected a welcome, got {other}")),
        None => Err("closed before the welcome".into()),
    }
}

/// The next text frame as JSON; `None` when the connection ends.
pub async fn next_json(socket: &mut Socket) -> Option<Value> {
    use futures_util::StreamExt;
    loop {
        match socket.next().await? {
            Ok(Message::Text(text)) => return serde_json::from_str(&text).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Sends a JSON frame.
pub async fn send_json(socket: &mut Socket, frame: &Value) -> Result<(), String> {
    use futures_util::SinkExt;
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .map_err(|e| e.to_string())
}

/// Microseconds since the Unix epoch (the load generator and the receivers
/// share one clock: they run on the same machine).
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system) a process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
