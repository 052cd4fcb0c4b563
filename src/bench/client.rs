//! The load generator's WebSocket client: plain TCP, a fixed upgrade request,
//! and just enough RFC 6455 to read server frames and send masked text. It is
//! deliberately lean — the load generator shares the machine with the server
//! it measures, so every cycle it spends is a cycle the server does not get.

use super::Target;
use crate::auth::Tokens;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Mutex;

/// Largest server frame the client accepts (a welcome with history is the
/// biggest thing a server sends).
const MAX_FRAME: usize = 16 << 20;
/// Largest upgrade response.
const MAX_HEAD: usize = 8 << 10;

/// Where to connect: the server's address and the request path.
#[derive(Debug, Clone)]
pub struct Endpoint {
    addr: SocketAddr,
    host: String,
    path: String,
}

impl Endpoint {
    /// Parses a `ws://ip:port/path` URL.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("only ws:// URLs are supported, not `{url}`"))?;
        let (authority, path) = rest.find('/').map_or((rest, "/"), |at| rest.split_at(at));
        let addr = authority
            .parse()
            .map_err(|_| format!("`{authority}` is not ip:port"))?;
        Ok(Endpoint {
            addr,
            host: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// Tokens minted before a run, so that connecting measures the server and
/// not the token issuer (real clients arrive with their token in hand).
pub struct TokenBook(Vec<String>);

impl TokenBook {
    /// One token per user `{prefix}{n}` for n in `0..users`.
    pub fn mint(target: &Target, prefix: &str, users: usize) -> TokenBook {
        let tokens = Tokens::new(&target.jwt_secret);
        TokenBook(
            (0..users.max(1))
                .map(|n| tokens.mint(&format!("{prefix}{n}"), None, None, 3600))
                .collect(),
        )
    }

    /// The token of connection `index` (users are reused round-robin).
    pub fn get(&self, index: usize) -> &str {
        &self.0[index % self.0.len()]
    }
}

/// The header fields of a server message the load generator looks at; the
/// rest of the JSON is skipped without being built.
#[derive(Debug, Default, Deserialize)]
pub struct Head<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: &'a str,
    #[serde(borrow, default)]
    pub error_code: Option<&'a str>,
}

impl<'a> Head<'a> {
    /// Reads a text frame's header fields; a frame that is not a JSON object
    /// with a plain `type` has the empty kind.
    pub fn of(text: &'a [u8]) -> Head<'a> {
        serde_json::from_slice(text).unwrap_or_default()
    }
}

/// The send timestamp the fan-out senders put in a message's content
/// (`"content":"t:<micros>"`), found without parsing the JSON.
pub fn sent_micros(text: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"content\":\"t:";
    let at = text.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut value = 0u64;
    let mut any = false;
    for digit in digits {
        value = value
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

/// The sending half of a connection; clones share it (the reader answers
/// pings through it).
#[derive(Clone)]
pub struct Writer {
    half: Arc<Mutex<OwnedWriteHalf>>,
}

impl Writer {
    /// Sends `text` as one masked text frame.
    pub async fn send_text(&self, text: &str) -> Result<(), String> {
        self.send(0x1, text.as_bytes()).await
    }

    async fn send(&self, opcode: u8, payload: &[u8]) -> Result<(), String> {
        let frame = encode_masked(opcode, payload);
        self.half
            .lock()
            .await
            .write_all(&frame)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The receiving half of a connection.
pub struct Reader {
    half: OwnedReadHalf,
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    start: usize,
    writer: Writer,
}

impl Reader {
    /// The payload of the next text frame; `None` when the connection ends.
    /// Pings are answered, other control frames skipped.
    pub async fn next_text(&mut self) -> Option<&[u8]> {
        let range = loop {
            match parse_frame(&self.buf[self.start..]) {
                Parsed::Frame {
                    opcode,
                    payload,
                    len,
                } => {
                    let payload = self.start + payload.start..self.start + payload.end;
                    self.start += len;
                    match opcode {
                        0x1 => break payload,
                        0x8 => return None,
                        0x9 => {
                            let body = self.buf[payload].to_vec();
                            self.writer.send(0xA, &body).await.ok()?;
                        }
                        _ => {}
                    }
                }
                Parsed::Incomplete => {
                    if self.start > 0 {
                        self.buf.drain(..self.start);
                        self.start = 0;
                    }
                    if self.buf.capacity() - self.buf.len() < 4096 {
                        self.buf.reserve(4096);
                    }
                    match self.half.read_buf(&mut self.buf).await {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    }
                }
                Parsed::Invalid => return None,
            }
        };
        self.buf.get(range)
    }

    /// The next text frame's header fields.
    pub async fn next_head(&mut self) -> Option<Head<'_>> {
        self.next_text().await.map(Head::of)
    }
}

/// A connected, upgraded client whose welcome has been read.
pub struct Socket {
    pub reader: Reader,
    pub writer: Writer,
}

impl Socket {
    /// Opens connection number `index` with `token`, reads the welcome.
    pub async fn connect(
        endpoint: &Endpoint,
        target: &Target,
        index: usize,
        token: &str,
    ) -> Result<Socket, String> {
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        if let Some(range) = &target.source_ips {
            let ip = range.0[index % range.0.len()];
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let mut stream = socket
            .connect(endpoint.addr)
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let separator = if endpoint.path.contains('?') {
            '&'
        } else {
            '?'
        };
        let request = format!(
            "GET {}{separator}token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            endpoint.path, endpoint.host
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::with_capacity(4096);
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if buf.len() > MAX_HEAD {
                return Err("upgrade response too long".into());
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) => return Err("closed during the upgrade".into()),
                Ok(_) => {}
                Err(err) => return Err(err.to_string()),
            }
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            let status = String::from_utf8_lossy(&buf[..head_end]);
            let line = status.lines().next().unwrap_or_default().to_owned();
            return Err(format!("upgrade refused: {line}"));
        }
        let (read, write) = stream.into_split();
        let writer = Writer {
            half: Arc::new(Mutex::new(write)),
        };
        let mut reader = Reader {
            half: read,
            buf,
            start: head_end,
            writer: writer.clone(),
        };
        match reader.next_head().await {
            Some(head) if head.kind == "welcome" => Ok(Socket { reader, writer }),
            Some(head) => Err(format!("expected a welcome, got `{}`", head.kind)),
            None => Err("closed before the welcome".into()),
        }
    }

    /// Sends a frame and waits for the reply of type `until` (or an error).
    pub async fn request(&mut self, text: &str, until: &str) -> Result<(), String> {
        self.writer.send_text(text).await?;
        loop {
            let head = self.reader.next_head().await.ok_or("connection closed")?;
            if head.kind == until {
                return Ok(());
            }
            if head.kind == "error" {
                return Err(format!("error {}", head.error_code.unwrap_or("?")));
            }
        }
    }
}

enum Parsed {
    Incomplete,
    Invalid,
    Frame {
        opcode: u8,
        payload: std::ops::Range<usize>,
        len: usize,
    },
}

/// Parses one unmasked server frame at the start of `buf`.
fn parse_frame(buf: &[u8]) -> Parsed {
    let Some((len, header)) = crate::wire::frame::payload_length(buf) else {
        return Parsed::Incomplete;
    };
    if buf[1] & 0x80 != 0 {
        return Parsed::Invalid;
    }
    let len = match usize::try_from(len) {
        Ok(len) if len <= MAX_FRAME => len,
        _ => return Parsed::Invalid,
    };
    if buf.len() < header + len {
        return Parsed::Incomplete;
    }
    Parsed::Frame {
        opcode: buf[0] & 0x0F,
        payload: header..header + len,
        len: header + len,
    }
}

/// Encodes a final client frame, masked as RFC 6455 requires.
fn encode_masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT_MASK: AtomicU32 = AtomicU32::new(0x9E37_79B9);
    let mask = NEXT_MASK
        .fetch_add(0x9E37_79B9, Ordering::Relaxed)
        .to_be_bytes();
    crate::wire::frame::encode_frame(0x80 | opcode, payload, Some(mask))
}

/// Microseconds since the Unix epoch (the load generator and the receivers
/// share one clock: they run on the same machine).
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// TCP sockets of this machine in TIME_WAIT (from `/proc/net/sockstat`).
pub fn sockets_in_time_wait() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let tcp = stat.lines().find_map(|line| line.strip_prefix("TCP:"))?;
    let fields: Vec<&str> = tcp.split_whitespace().collect();
    fields
        .windows(2)
        .find(|pair| pair[0] == "tw")
        .and_then(|pair| pair[1].parse().ok())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_wait_sockets_are_read_from_the_kernel() {
        // Present on every Linux; the count itself depends on the machine.
        assert!(sockets_in_time_wait().is_some());
    }

    #[test]
    fn masked_frames_decode_with_the_server_decoder() {
        let mut decoder = crate::wire::frame::Decoder::new(1 << 20);
        for len in [0, 5, 125, 126, 70_000] {
            let text = "x".repeat(len);
            let frame = encode_masked(0x1, text.as_bytes());
            match decoder.decode(&frame) {
                Ok(crate::wire::frame::Decoded::Frame(
                    Some(crate::wire::frame::Incoming::Text(got)),
                    used,
                )) => {
                    assert_eq!(got, text);
                    assert_eq!(used, frame.len());
                }
                other => panic!("len {len}: {other:?}"),
            }
        }
    }

    #[test]
    fn server_frames_parse_whole_or_incomplete() {
        let frame = crate::wire::frame::text(&"y".repeat(300));
        for cut in 0..frame.len() {
            assert!(matches!(parse_frame(&frame[..cut]), Parsed::Incomplete));
        }
        match parse_frame(&frame) {
            Parsed::Frame {
                opcode,
                payload,
                len,
            } => {
                assert_eq!(opcode, 1);
                assert_eq!(&frame[payload], "y".repeat(300).as_bytes());
                assert_eq!(len, frame.len());
            }
            _ => panic!("a whole frame did not parse"),
        }
    }

    #[test]
    fn heads_read_type_error_and_timestamp() {
        let chat =
            br#"{"type":"chat_message","message":{"id":"1","content":"t:42","x":[1,{"y":2}]}}"#;
        assert_eq!(Head::of(chat).kind, "chat_message");
        assert_eq!(sent_micros(chat), Some(42));
        let error = Head::of(br#"{"type":"error","error_code":"rate_limited","message":"slow"}"#);
        assert_eq!(
            (error.kind, error.error_code),
            ("error", Some("rate_limited"))
        );
        assert_eq!(Head::of(b"not json").kind, "");
        assert_eq!(sent_micros(br#"{"content":"t:x"}"#), None);
    }
}
