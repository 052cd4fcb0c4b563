//! WebSocket frames (RFC 6455): decoding what clients send, encoding what the
//! server sends. Server frames are never masked and never fragmented, so one
//! encoded frame is a header and the payload, ready to be written to any
//! number of sockets.

use bytes::Bytes;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A complete message from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    /// Binary messages are refused by the chat protocol (the echo server
    /// sends them back).
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    /// A close frame, with its code if it carried one.
    Close(Option<u16>),
}

/// Why a client's bytes are not a valid WebSocket stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame larger than allowed")]
    TooBig,
    #[error("WebSocket protocol violation: {0}")]
    Protocol(&'static str),
    #[error("text frame is not valid UTF-8")]
    InvalidUtf8,
}

/// Decodes client frames one at a time, joining fragmented messages.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// A fragmented message being received (see [`Fragments`]).
    fragments: Option<Fragments>,
}

/// A fragmented message so far.
#[derive(Debug)]
struct Fragments {
    text: bool,
    data: Vec<u8>,
    /// Bytes of a text message's data known to be valid UTF-8: each
    /// fragment is checked as it arrives (but for a character it cuts in
    /// two), so a bad one fails at once, not at the end of the message.
    checked: usize,
}

impl Fragments {
    fn new(text: bool, data: Vec<u8>) -> Result<Fragments, FrameError> {
        let mut fragments = Fragments {
            text,
            data,
            checked: 0,
        };
        fragments.check()?;
        Ok(fragments)
    }

    fn extend(&mut self, payload: &[u8]) -> Result<(), FrameError> {
        self.data.extend_from_slice(payload);
        self.check()
    }

    fn check(&mut self) -> Result<(), FrameError> {
        if !self.text {
            return Ok(());
        }
        match std::str::from_utf8(&self.data[self.checked..]) {
            Ok(_) => self.checked = self.data.len(),
            // Only a character cut at the end may be completed later.
            Err(err) if err.error_len().is_none() => self.checked += err.valid_up_to(),
            Err(_) => return Err(FrameError::InvalidUtf8),
        }
        Ok(())
    }
}

/// Whether a close frame may carry `code` (RFC 6455 §7.4: the codes
/// defined for use in close frames, and the ranges for libraries,
/// frameworks and applications).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// After a framing error: walks the client's frames by their headers,
/// without decoding them, to the client's close frame (RFC 6455 §7.1.7:
/// nothing more is processed, but the close handshake is finished).
#[derive(Debug, Default)]
pub struct CloseSeeker {
    /// Bytes of a frame still to come, to be thrown away.
    skipping: u64,
}

impl CloseSeeker {
    /// Consumes what it can of `buf`: the bytes used, and whether they
    /// ended with a whole close frame.
    pub fn seek(&mut self, buf: &[u8]) -> (usize, bool) {
        let mut used = 0usize;
        loop {
            let rest = &buf[used..];
            if self.skipping > 0 {
                let skipped = usize::try_from(self.skipping)
                    .unwrap_or(usize::MAX)
                    .min(rest.len());
                used += skipped;
                self.skipping -= skipped as u64;
                if self.skipping > 0 {
                    return (used, false);
                }
                continue;
            }
            let Some((length, header)) = payload_length(rest) else {
                return (used, false);
            };
            let masked = rest[1] & 0x80 != 0;
            let whole = length.saturating_add(header as u64 + if masked { 4 } else { 0 });
            if rest[0] & 0x0F == OP_CLOSE {
                return match usize::try_from(whole) {
                    Ok(whole) if whole <= rest.len() => (used + whole, true),
                    _ => (used, false),
                };
            }
            self.skipping = whole;
        }
    }
}

/// What one call to [`Decoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Not a whole frame yet: read more.
    Incomplete,
    /// A frame was consumed; it completed a message if `Some`.
    Frame(Option<Incoming>, usize),
}

impl Decoder {
    /// Messages (and frames) over `max_message` bytes are [`FrameError::TooBig`].
    pub fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            fragments: None,
        }
    }

    /// Decodes the first frame at the start of `buf`.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Decoded, FrameError> {
        let [first, second, ..] = *buf else {
            return Ok(Decoded::Incomplete);
        };
        if first & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        let fin = first & 0x80 != 0;
        let opcode = first & 0x0F;
        if second & 0x80 == 0 {
            return Err(FrameError::Protocol("client frames must be masked"));
        }
        let Some((length, mut header)) = payload_length(buf) else {
            return Ok(Decoded::Incomplete);
        };
        if length > i64::MAX as u64 {
            return Err(FrameError::Protocol(
                "a 64-bit payload length must have its top bit clear",
            ));
        }
        let control = opcode & 0x08 != 0;
        if control && (!fin || length > 125) {
            return Err(FrameError::Protocol(
                "control frames must be whole and at most 125 bytes",
            ));
        }
        let so_far = self
            .fragments
            .as_ref()
            .map_or(0, |fragments| fragments.data.len());
        let length = match usize::try_from(length) {
            Ok(length) if !control && so_far.saturating_add(length) > self.max_message => {
                return Err(FrameError::TooBig);
            }
            Ok(length) => length,
            Err(_) => return Err(FrameError::TooBig),
        };
        let Some(mask) = buf.get(header..header + 4) else {
            return Ok(Decoded::Incomplete);
        };
        let mask = [mask[0], mask[1], mask[2], mask[3]];
        header += 4;
        let Some(masked) = buf.get(header..header + length) else {
            return Ok(Decoded::Incomplete);
        };
        let consumed = header + length;
        let payload = unmask(masked, mask);
        let complete = match opcode {
            OP_TEXT | OP_BINARY => {
                if self.fragments.is_some() {
                    return Err(FrameError::Protocol(
                        "a new message inside a fragmented one",
                    ));
                }
                if fin {
                    Some(finish(opcode == OP_TEXT, payload)?)
                } else {
                    self.fragments = Some(Fragments::new(opcode == OP_TEXT, payload)?);
                    None
                }
            }
            OP_CONTINUATION => {
                let Some(fragments) = self.fragments.as_mut() else {
                    return Err(FrameError::Protocol("continuation without a first frame"));
                };
                fragments.extend(&payload)?;
                match self.fragments.take() {
                    Some(fragments) if fin => Some(finish(fragments.text, fragments.data)?),
                    pending => {
                        self.fragments = pending;
                        None
                    }
                }
            }
            OP_CLOSE => Some(Incoming::Close(match payload.len() {
                0 => None,
                1 => return Err(FrameError::Protocol("close frame with a one-byte body")),
                _ => {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    if !valid_close_code(code) {
                        return Err(FrameError::Protocol("invalid close code"));
                    }
                    if std::str::from_utf8(&payload[2..]).is_err() {
                        return Err(FrameError::InvalidUtf8);
                    }
                    Some(code)
                }
            })),
            OP_PING => Some(Incoming::Ping(payload)),
            OP_PONG => Some(Incoming::Pong),
            _ => return Err(FrameError::Protocol("unknown opcode")),
        };
        Ok(Decoded::Frame(complete, consumed))
    }
}

/// The payload length a frame at the start of `buf` declares, and the size
/// of its header up to the mask (if any); `None` until those bytes are there.
pub fn payload_length(buf: &[u8]) -> Option<(u64, usize)> {
    match buf.get(1)? & 0x7F {
        126 => {
            let bytes = buf.get(2..4)?;
            Some((u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4))
        }
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            Some((u64::from_be_bytes(bytes), 10))
        }
        short => Some((u64::from(short), 2)),
    }
}

fn finish(text: bool, payload: Vec<u8>) -> Result<Incoming, FrameError> {
    if text {
        String::from_utf8(payload)
            .map(Incoming::Text)
            .map_err(|_| FrameError::InvalidUtf8)
    } else {
        Ok(Incoming::Binary(payload))
    }
}

fn unmask(masked: &[u8], mask: [u8; 4]) -> Vec<u8> {
    masked
        .iter()
        .enumerate()
        .map(|(i, byte)| byte ^ mask[i & 3])
        .collect()
}

/// Encodes a server frame (final, unmasked).
fn encode(opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(0x80 | opcode, payload, None)
}

/// Encodes a frame whose first byte (FIN, reserved bits, opcode) is
/// `first`: unmasked as a server sends it, or masked with `mask` as a client
/// must (the load generator and tests speak as clients).
pub fn encode_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let masked = if mask.is_some() { 0x80 } else { 0 };
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(first);
    match payload.len() {
        short @ 0..=125 => frame.push(masked | short as u8),
        medium @ 126..=0xFFFF => {
            frame.push(masked | 126);
            frame.extend_from_slice(&(medium as u16).to_be_bytes());
        }
        long => {
            frame.push(masked | 127);
            frame.extend_from_slice(&(long as u64).to_be_bytes());
        }
    }
    match mask {
        None => frame.extend_from_slice(payload),
        Some(mask) => {
            frame.extend_from_slice(&mask);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        }
    }
    frame
}

/// A text frame carrying `payload`.
pub fn text(payload: &str) -> Bytes {
    Bytes::from(encode(OP_TEXT, payload.as_bytes()))
}

/// A close frame with a code and a reason.
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    Bytes::from(encode(OP_CLOSE, &body))
}

/// A ping with no payload.
pub fn ping() -> Bytes {
    Bytes::from_static(&[0x80 | OP_PING, 0])
}

/// The answer to a ping: a pong with the same payload.
pub fn pong(payload: &[u8]) -> Bytes {
    Bytes::from(encode(OP_PONG, payload))
}

/// The payload of an encoded server text frame (for tests and tools).
pub fn payload_of(frame: &[u8]) -> &[u8] {
    let header = payload_length(frame).map_or(2, |(_, header)| header);
    frame.get(header..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame, masked as clients must.
    fn client(first: u8, payload: &[u8]) -> Vec<u8> {
        encode_frame(first, payload, Some([1, 2, 3, 4]))
    }

    #[test]
    fn decodes_text_of_every_length_form() {
        for size in [0, 5, 125, 126, 300, 65_535, 65_536, 70_000] {
            let text = "x".repeat(size);
            let frame = client(0x81, text.as_bytes());
            let mut decoder = Decoder::new(100_000);
            for cut in [0, 1, 2, frame.len() - 1] {
                assert_eq!(decoder.decode(&frame[..cut]), Ok(Decoded::Incomplete));
            }
            assert_eq!(
                decoder.decode(&frame),
                Ok(Decoded::Frame(Some(Incoming::Text(text)), frame.len()))
            );
        }
    }

    #[test]
    fn joins_fragments_with_control_frames_between() {
        let mut decoder = Decoder::new(1000);
        let mut stream = client(0x01, b"hel");
        stream.extend(client(0x89, b"p"));
        stream.extend(client(0x80, b"lo"));
        let mut at = 0;
        let mut seen = Vec::new();
        while let Ok(Decoded::Frame(message, used)) = decoder.decode(&stream[at..]) {
            at += used;
            seen.extend(message);
        }
        assert_eq!(at, stream.len());
        assert_eq!(
            seen,
            [
                Incoming::Ping(b"p".to_vec()),
                Incoming::Text("hello".into())
            ]
        );
    }

    #[test]
    fn refuses_what_the_rfc_forbids() {
        let mut unmasked = client(0x81, b"hi");
        unmasked[1] &= 0x7F;
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (
                unmasked,
                FrameError::Protocol("client frames must be masked"),
            ),
            (
                client(0xC1, b"hi"),
                FrameError::Protocol("reserved bits set"),
            ),
            (client(0x83, b"hi"), FrameError::Protocol("unknown opcode")),
            (
                client(0x80, b"hi"),
                FrameError::Protocol("continuation without a first frame"),
            ),
            (client(0x81, &[0xFF, 0xFE]), FrameError::InvalidUtf8),
            (
                client(0x09, b"p"),
                FrameError::Protocol("control frames must be whole and at most 125 bytes"),
            ),
            (client(0x81, &[b'x'; 2000]), FrameError::TooBig),
        ];
        for (frame, error) in cases {
            assert_eq!(Decoder::new(1000).decode(&frame), Err(error));
        }
        // Too big is known from the header alone.
        let header = &client(0x81, &[b'x'; 2000])[..4];
        assert_eq!(Decoder::new(1000).decode(header), Err(FrameError::TooBig));
        // Fragments add up.
        let mut decoder = Decoder::new(1000);
        assert!(decoder.decode(&client(0x01, &[b'x'; 600])).is_ok());
        assert_eq!(
            decoder.decode(&client(0x80, &[b'x'; 600])),
            Err(FrameError::TooBig)
        );
    }

    #[test]
    fn decodes_close_codes() {
        let mut decoder = Decoder::new(100);
        let frame = client(0x88, &1000u16.to_be_bytes());
        assert_eq!(
            decoder.decode(&frame),
            Ok(Decoded::Frame(
                Some(Incoming::Close(Some(1000))),
                frame.len()
            ))
        );
        let empty = client(0x88, b"");
        assert_eq!(
            decoder.decode(&empty),
            Ok(Decoded::Frame(Some(Incoming::Close(None)), empty.len()))
        );
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert_eq!(
                Decoder::new(100).decode(&client(0x88, &code.to_be_bytes())),
                Err(FrameError::Protocol("invalid close code")),
                "{code}"
            );
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.push(0xFF);
        assert_eq!(
            Decoder::new(100).decode(&client(0x88, &bad_reason)),
            Err(FrameError::InvalidUtf8)
        );
    }

    #[test]
    fn checks_utf8_fragment_by_fragment() {
        let mut decoder = Decoder::new(100);
        // A character cut in two is waited for.
        let first = client(0x01, &[b'a', 0xCE]);
        assert_eq!(
            decoder.decode(&first),
            Ok(Decoded::Frame(None, first.len()))
        );
        let last = client(0x80, &[0xBA]);
        assert_eq!(
            decoder.decode(&last),
            Ok(Decoded::Frame(
                Some(Incoming::Text("aκ".into())),
                last.len()
            ))
        );
        // A byte no character starts with fails at its fragment.
        let mut decoder = Decoder::new(100);
        assert_eq!(
            decoder.decode(&client(0x01, &[b'a', 0xFF])),
            Err(FrameError::InvalidUtf8)
        );
        let mut decoder = Decoder::new(100);
        let first = client(0x01, b"ok");
        assert!(decoder.decode(&first).is_ok());
        assert_eq!(
            decoder.decode(&client(0x00, &[0xED, 0xA0, 0x80])),
            Err(FrameError::InvalidUtf8)
        );
    }

    #[test]
    fn encodes_server_frames() {
        for size in [0, 125, 126, 65_535, 65_536] {
            let text_payload = "y".repeat(size);
            let frame = text(&text_payload);
            assert_eq!(frame[0], 0x81);
            assert_eq!(payload_of(&frame), text_payload.as_bytes());
        }
        assert_eq!(
            &close(4002, "slow")[..],
            &[0x88, 6, 0x0F, 0xA2, b's', b'l', b'o', b'w']
        );
        assert_eq!(&ping()[..], &[0x89, 0]);
        assert_eq!(&pong(b"ab")[..], &[0x8A, 2, b'a', b'b']);
    }
}
