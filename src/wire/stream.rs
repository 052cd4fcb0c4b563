//! The byte stream under a WebSocket: a TCP socket, or one end of a local
//! socket pair bridged to a TLS or HTTP-upgraded connection. Every operation
//! takes `&self`, so that broadcasters can write to a socket directly while
//! its session task reads from it.

use rustix::net::{SendAncillaryBuffer, SendFlags, send, sendmsg};
use std::io::{self, IoSlice};
use std::task::{Context, Poll, ready};
use tokio::net::{TcpStream, UnixStream};

#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    // Readiness is polled rather than awaited: a poll keeps no future
    // (of some 170 bytes) in every idle connection's task. Only the task
    // polling last is woken, which is the session task, the one reader.

    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(stream) => stream.poll_read_ready(cx),
            Stream::Unix(stream) => stream.poll_read_ready(cx),
        }
    }

    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(stream) => stream.poll_write_ready(cx),
            Stream::Unix(stream) => stream.poll_write_ready(cx),
        }
    }

    /// Waits for the socket to be readable, then reads what is there into
    /// `buf`, reserving `chunk` bytes first (only then: an idle connection
    /// holds no buffer). `Ok(0)`: the peer closed its end.
    pub fn poll_read_buf(
        &self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
        chunk: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            if let Err(err) = ready!(self.poll_read_ready(cx)) {
                return Poll::Ready(Err(err));
            }
            buf.reserve(chunk);
            match self.try_read_buf(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if buf.is_empty() {
                        *buf = Vec::new();
                    }
                }
                done => return Poll::Ready(done),
            }
        }
    }

    /// Reads what is there into the spare capacity of `buf`.
    pub fn try_read_buf(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.try_read_buf(buf),
            Stream::Unix(stream) => stream.try_read_buf(buf),
        }
    }

    /// Writes `buf` straight into the socket, without asking tokio whether
    /// it is writable: that question reads a word of tokio's per-socket
    /// state, which a broadcast to many sockets finds cold in each (the
    /// largest of roomcast's own costs per delivery). A `WouldBlock` here
    /// leaves tokio still believing the socket writable, so whoever waits
    /// for it next must write through [`Stream::try_write`] (which corrects
    /// tokio) before waiting again; until then it only wakes once too
    /// early, never too late.
    pub fn send_now(&self, buf: &[u8]) -> io::Result<usize> {
        let sent = match self {
            Stream::Tcp(stream) => send(stream, buf, SendFlags::NOSIGNAL),
            Stream::Unix(stream) => send(stream, buf, SendFlags::NOSIGNAL),
        };
        sent.map_err(io::Error::from)
    }

    /// [`Stream::send_now`] for several buffers in one system call.
    pub fn send_vectored_now(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut control = SendAncillaryBuffer::default();
        let sent = match self {
            Stream::Tcp(stream) => sendmsg(stream, bufs, &mut control, SendFlags::NOSIGNAL),
            Stream::Unix(stream) => sendmsg(stream, bufs, &mut control, SendFlags::NOSIGNAL),
        };
        sent.map_err(io::Error::from)
    }

    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.try_write(buf),
            Stream::Unix(stream) => stream.try_write(buf),
        }
    }

    pub fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.try_write_vectored(bufs),
            Stream::Unix(stream) => stream.try_write_vectored(bufs),
        }
    }
}
