//! A raw WebSocket client over TCP, byte by byte: the handshake, frames a
//! library client would never send, and the server's frames as they come.

use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

pub fn upgrade_request(query: &str, extra: &str) -> String {
    format!(
        "GET /ws{query} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A client frame, masked unless told otherwise.
pub fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    roomcast::wire::frame::encode_frame(first, payload, masked.then_some([7, 1, 9, 3]))
}

/// A raw client: reads the handshake answer, then server frames.
pub struct Raw {
    pub stream: TcpStream,
    pub buffer: Vec<u8>,
}

impl Raw {
    pub async fn open(addr: SocketAddr, request: &str) -> (Raw, String) {
        Raw::open_bytes(addr, request.as_bytes()).await
    }

    pub async fn open_bytes(addr: SocketAddr, request: &[u8]) -> (Raw, String) {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request).await.expect("write");
        let mut raw = Raw {
            stream,
            buffer: Vec::new(),
        };
        let head = loop {
            if let Some(end) = raw.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw.buffer[..end]).into_owned();
                raw.buffer.drain(..end + 4);
                break head;
            }
            assert!(
                raw.fill().await > 0,
                "connection closed during the handshake"
            );
        };
        (raw, head)
    }

    pub async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk))
            .await
            .expect("no data within 5s")
            .unwrap_or(0);
        self.buffer.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next server frame: opcode and payload; `None` at end of stream.
    pub async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buffer.len() >= 2 {
                let (len, header) = match self.buffer[1] & 0x7F {
                    126 if self.buffer.len() >= 4 => (
                        u16::from_be_bytes([self.buffer[2], self.buffer[3]]) as usize,
                        4,
                    ),
                    127 if self.buffer.len() >= 10 => {
                        let mut n = [0; 8];
                        n.copy_from_slice(&self.buffer[2..10]);
                        (u64::from_be_bytes(n) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buffer.len() >= header + len {
                    let opcode = self.buffer[0] & 0x0F;
                    let payload = self.buffer[header..header + len].to_vec();
                    self.buffer.drain(..header + len);
                    return Some((opcode, payload));
                }
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    pub async fn json(&mut self) -> Value {
        loop {
            let (opcode, payload) = self.next().await.expect("a frame");
            if opcode == 1 {
                return serde_json::from_slice(&payload).expect("JSON");
            }
        }
    }

    /// Reads until the server's close frame and returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        while let Some((opcode, payload)) = self.next().await {
            if opcode == 8 {
                return payload
                    .get(..2)
                    .map(|code| u16::from_be_bytes([code[0], code[1]]));
            }
        }
        None
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }
    /// Waits for the server to end the TCP stream; how long it took.
    pub async fn server_hangs_up(&mut self) -> Duration {
        let started = std::time::Instant::now();
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(5), self.stream.read_to_end(&mut rest))
            .await
            .expect("the server ends the connection");
        assert!(end.is_ok(), "the connection was reset: {end:?}");
        started.elapsed()
    }
}
