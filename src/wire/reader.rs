//! Reading client frames off a socket, with no buffer of its own between
//! messages: one is allocated when bytes arrive and freed once they are all
//! consumed.

use super::frame::{CloseSeeker, Decoded, Decoder, FrameError, Incoming};
use super::stream::Stream;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

/// What holds the socket a [`Reader`] reads (the connection's outbox, which
/// broadcasters write to).
pub trait HoldsStream: Send + Sync {
    /// The socket; `None` when there is none (a connection in a test).
    fn stream(&self) -> Option<&Stream>;
}

/// Reads client frames with no buffer of its own between messages: one is
/// allocated when bytes arrive and freed once they are all consumed.
pub struct Reader<S> {
    /// Holds the socket (broadcasters write to it through the outbox).
    socket: Arc<S>,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already decoded.
    consumed: usize,
    decoder: Decoder,
}

/// Why reading stopped.
pub enum ReadError {
    /// The client broke the framing rules, or sent too much.
    Frame(FrameError),
    /// The socket failed.
    Io,
}

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 4096;

impl<S: HoldsStream> Reader<S> {
    /// `early`: bytes already read from the stream.
    pub fn new(socket: Arc<S>, early: Vec<u8>, max_message: usize) -> Reader<S> {
        Reader {
            socket,
            buffer: early,
            consumed: 0,
            decoder: Decoder::new(max_message),
        }
    }

    /// The next complete message, or `None` when the client has closed the
    /// TCP stream. Cancel-safe: bytes read are kept in `self`.
    pub fn next_message(
        &mut self,
    ) -> impl Future<Output = Result<Option<Incoming>, ReadError>> + '_ {
        std::future::poll_fn(move |cx| self.poll_next(cx))
    }

    /// After a framing error: skips frames by their headers, without
    /// decoding them, until a close frame has been read (or the client
    /// closes the TCP connection, or the socket fails).
    pub async fn skip_to_close(&mut self) {
        let Some(stream) = self.socket.stream() else {
            return;
        };
        let mut seeker = CloseSeeker::default();
        std::future::poll_fn(|cx| {
            loop {
                let (used, found) = seeker.seek(&self.buffer[self.consumed..]);
                if found {
                    return Poll::Ready(());
                }
                self.buffer.drain(..self.consumed + used);
                self.consumed = 0;
                match ready!(stream.poll_read_buf(cx, &mut self.buffer, READ_CHUNK)) {
                    Ok(0) | Err(_) => return Poll::Ready(()),
                    Ok(_) => {}
                }
            }
        })
        .await;
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Incoming>, ReadError>> {
        loop {
            while self.consumed < self.buffer.len() {
                match self.decoder.decode(&self.buffer[self.consumed..]) {
                    Ok(Decoded::Incomplete) => break,
                    Ok(Decoded::Frame(message, used)) => {
                        self.consumed += used;
                        if self.consumed == self.buffer.len() {
                            self.buffer = Vec::new();
                            self.consumed = 0;
                        }
                        if let Some(message) = message {
                            return Poll::Ready(Ok(Some(message)));
                        }
                    }
                    Err(err) => return Poll::Ready(Err(ReadError::Frame(err))),
                }
            }
            let Some(stream) = self.socket.stream() else {
                return Poll::Ready(Err(ReadError::Io));
            };
            if self.consumed > 0 {
                self.buffer.drain(..self.consumed);
                self.consumed = 0;
            }
            match ready!(stream.poll_read_buf(cx, &mut self.buffer, READ_CHUNK)) {
                Ok(0) => return Poll::Ready(Ok(None)),
                Ok(_) => {}
                Err(_) => return Poll::Ready(Err(ReadError::Io)),
            }
        }
    }
}
