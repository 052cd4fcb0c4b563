//! An echo server on this WebSocket layer, for conformance suites such as
//! Autobahn|Testsuite's fuzzing client (`examples/echo.rs`) and the
//! project's own conformance tests: every text and binary message is sent
//! back as it came, pings are answered, and closes and framing errors are
//! handled as the chat server handles them.

use super::frame::{self, CloseSeeker, Decoded, Decoder, FrameError, Incoming};
use super::handshake::{self, MAX_HEAD_BYTES, Opening, Refusal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves WebSocket echo on `GET /ws` for every connection `listener`
/// accepts; messages over `max_message` bytes close with 1009.
pub async fn serve(listener: TcpListener, max_message: usize) {
    while let Ok((socket, _)) = listener.accept().await {
        tokio::spawn(async move {
            // A connection that fails is simply over.
            let _ = echo(socket, max_message).await;
        });
    }
}

async fn echo(mut socket: TcpStream, max_message: usize) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let head_len = loop {
        match handshake::classify(&buf) {
            Opening::Incomplete if buf.len() <= MAX_HEAD_BYTES => {
                if socket.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
            }
            Opening::WebSocket(upgrade, head_len) => {
                socket
                    .write_all(&handshake::accept_response(&upgrade.key))
                    .await?;
                break head_len;
            }
            Opening::Invalid(Refusal::Version) => {
                let answer = "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n\
                              Content-Length: 0\r\nConnection: close\r\n\r\n";
                return socket.write_all(answer.as_bytes()).await;
            }
            _ => {
                let answer =
                    "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                return socket.write_all(answer.as_bytes()).await;
            }
        }
    };
    buf.drain(..head_len);
    let mut decoder = Decoder::new(max_message);
    loop {
        loop {
            let (message, used) = match decoder.decode(&buf) {
                Ok(Decoded::Incomplete) => break,
                Ok(Decoded::Frame(message, used)) => (message, used),
                Err(err) => {
                    let code = match err {
                        FrameError::TooBig => 1009,
                        FrameError::InvalidUtf8 => 1007,
                        FrameError::Protocol(_) => 1002,
                    };
                    socket.write_all(&frame::close(code, "")).await?;
                    return finish_close(socket, buf).await;
                }
            };
            buf.drain(..used);
            match message {
                Some(Incoming::Text(text)) => socket.write_all(&frame::text(&text)).await?,
                Some(Incoming::Binary(data)) => {
                    socket
                        .write_all(&frame::encode_frame(0x82, &data, None))
                        .await?;
                }
                Some(Incoming::Ping(payload)) => socket.write_all(&frame::pong(&payload)).await?,
                Some(Incoming::Close(code)) => {
                    // The client's code is sent back; none for none.
                    let answer = match code {
                        Some(code) => frame::close(code, ""),
                        None => frame::encode_frame(0x88, b"", None).into(),
                    };
                    socket.write_all(&answer).await?;
                    return socket.shutdown().await;
                }
                Some(Incoming::Pong) | None => {}
            }
        }
        if socket.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// After a framing error and our close frame: reads on to the client's
/// close frame (or the end of the stream), then closes the connection.
async fn finish_close(mut socket: TcpStream, mut buf: Vec<u8>) -> std::io::Result<()> {
    let mut seeker = CloseSeeker::default();
    loop {
        let (used, found) = seeker.seek(&buf);
        if found {
            return socket.shutdown().await;
        }
        buf.drain(..used);
        if socket.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}
