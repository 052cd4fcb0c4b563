//! The accept loop. Each new TCP connection's first bytes decide where it
//! goes: a WebSocket upgrade of `/ws` is completed here, straight off the
//! socket; anything else goes to the HTTP server with those bytes replayed.
//! Over TLS every connection goes to the HTTP server.

use super::{ClientAddr, ws};
use crate::app::App;
use crate::wire::handshake::{self, MAX_HEAD_BYTES, Opening};
use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A client has this long to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts plain TCP connections until `shutdown` resolves.
pub async fn serve_plain(
    app: Arc<App>,
    listener: TcpListener,
    router: Router,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let handshaking = Arc::new(AtomicUsize::new(0));
    loop {
        let (mut stream, addr) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off a little.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        super::no_delay(&mut stream);
        if at_capacity(&app, &handshaking, max_connections) {
            tokio::spawn(refuse(stream));
            continue;
        }
        let (app, router, handshaking) = (app.clone(), router.clone(), handshaking.clone());
        tokio::spawn(async move {
            handshaking.fetch_add(1, Ordering::Relaxed);
            let opening = tokio::time::timeout(HEAD_TIMEOUT, read_opening(&stream)).await;
            handshaking.fetch_sub(1, Ordering::Relaxed);
            match opening {
                Ok(Ok((Opening::WebSocket(upgrade, head_len), head))) => {
                    // Only what followed the head is kept; the head's buffer
                    // is freed before the connection settles in (in a task
                    // of its own: this one ends with the handshake).
                    let early = head[head_len..].to_vec();
                    drop(head);
                    ws::accept_raw(app, stream, addr, upgrade, early).await;
                }
                Ok(Ok((Opening::Invalid(refusal), _))) => {
                    let answer = super::ws::refusal(refusal).to_http_bytes();
                    let _ = stream.write_all(&answer).await;
                }
                Ok(Ok((_, head))) => {
                    Box::pin(serve_http(router, Replay::new(head, stream), addr)).await;
                }
                Ok(Err(_)) | Err(_) => {}
            }
        });
    }
}

/// Whether the connections open and in handshake use up what the server
/// may hold (`--max-connections`, lowered to the file-descriptor limit).
fn at_capacity(app: &App, handshaking: &AtomicUsize, max_connections: usize) -> bool {
    let open = app.hub.stats().active() as usize + handshaking.load(Ordering::Relaxed);
    open >= max_connections
}

/// File descriptors kept for everything but client sockets: the database,
/// log files, HTTP clients, refusing connections politely.
const RESERVED_FDS: u64 = 64;

/// Raises the soft file-descriptor limit to the hard one and returns how
/// many client connections fit in it.
pub fn connection_capacity() -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    match limit.current {
        Some(fds) => usize::try_from(fds.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX),
        None => usize::MAX,
    }
}

/// Answers a connection beyond capacity with 503 and closes it.
async fn refuse(mut stream: TcpStream) {
    let body = r#"{"error_code":"connection_limit","message":"the server is at its connection limit; try again later"}"#;
    let response = super::raw_http_response(StatusCode::SERVICE_UNAVAILABLE, body);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&response)).await;
}

/// Reads until the request head is complete (or clearly not a WebSocket
/// upgrade), returning what it is and every byte read.
async fn read_opening(stream: &TcpStream) -> io::Result<(Opening, Vec<u8>)> {
    let mut head = Vec::new();
    loop {
        stream.readable().await?;
        head.reserve(1024);
        match stream.try_read_buf(&mut head) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
        match handshake::classify(&head) {
            // Too long a head: the HTTP server answers it.
            Opening::Incomplete if head.len() >= MAX_HEAD_BYTES => {
                return Ok((Opening::Http, head));
            }
            Opening::Incomplete => {}
            opening => return Ok((opening, head)),
        }
    }
}

/// Serves HTTP/1.1 requests on one connection with the router.
pub async fn serve_http<I>(router: Router, io: I, addr: SocketAddr)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let router = router.layer(axum::Extension(ConnectInfo(ClientAddr(addr))));
    let service = TowerToHyperService::new(router);
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
    if let Err(err) = served {
        tracing::debug!(%addr, error = %err, "HTTP connection ended with an error");
    }
}

/// A stream that first replays bytes already read from it.
pub struct Replay<T> {
    head: Vec<u8>,
    at: usize,
    inner: T,
}

impl<T> Replay<T> {
    pub fn new(head: Vec<u8>, inner: T) -> Self {
        Replay { head, at: 0, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Replay<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.head.len() {
            let n = buf.remaining().min(self.head.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.head[at..at + n]);
            self.at += n;
            if self.at == self.head.len() {
                self.head = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Replay<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
