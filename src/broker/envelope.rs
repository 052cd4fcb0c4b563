//! The bytes a broadcast travels in between nodes: who sent it, who it is
//! for, and the WebSocket frame itself, unchanged, so that the receiving
//! node writes the same bytes into its sockets without encoding again.
//!
//! Layout: a version byte, the frame's type (its index in
//! declaration order, [`ServerType::index`]), the audience's tag (`R` room, `E` everyone, `W` a
//! user's watchers), then length-prefixed strings (2 bytes, big-endian):
//! the sending node, the excepted connection (empty for none), the room or
//! the watched user's id; a byte saying whether a stored message's id and
//! its predecessor's follow (`1`, then two big-endian `i64`, `-1` for no
//! predecessor) or not (`0`); then the frame.

use crate::hub::{Audience, OutFrame};
use crate::protocol::{ServerType, User, UserKind};
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::Arc;

const VERSION: u8 = 1;

/// A broadcast as another node receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The node that published it (and delivered it to its own connections).
    pub origin: String,
    pub audience: Audience,
    pub except: Option<String>,
    /// A stored message's id and the id of the room's message before it.
    pub sequence: Option<(i64, Option<i64>)>,
    pub frame: OutFrame,
}

/// Encodes a broadcast; `None` for an audience that does not cross nodes
/// or a name too long to frame (neither happens for valid rooms and ids).
pub fn encode(
    origin: &str,
    audience: &Audience,
    except: Option<&str>,
    sequence: Option<(i64, Option<i64>)>,
    frame: &OutFrame,
) -> Option<Bytes> {
    let (tag, name): (u8, &str) = match audience {
        Audience::Room(room) => (b'R', room),
        Audience::Everyone => (b'E', ""),
        Audience::Watchers { user, .. } => (b'W', &user.id),
    };
    let kind = frame.kind.index();
    let except = except.unwrap_or("");
    let mut out =
        BytesMut::with_capacity(26 + origin.len() + except.len() + name.len() + frame.bytes.len());
    out.put_u8(VERSION);
    out.put_u8(u8::try_from(kind).ok()?);
    out.put_u8(tag);
    for text in [origin, except, name] {
        out.put_u16(u16::try_from(text.len()).ok()?);
        out.put_slice(text.as_bytes());
    }
    match sequence {
        Some((id, previous)) => {
            out.put_u8(1);
            out.put_i64(id);
            out.put_i64(previous.unwrap_or(-1));
        }
        None => out.put_u8(0),
    }
    out.put_slice(&frame.bytes);
    Some(out.freeze())
}

/// Decodes what [`encode`] made; `None` for anything else.
pub fn decode(bytes: &Bytes) -> Option<Envelope> {
    let mut at = 0usize;
    let byte = |at: &mut usize| -> Option<u8> {
        let value = *bytes.get(*at)?;
        *at += 1;
        Some(value)
    };
    if byte(&mut at)? != VERSION {
        return None;
    }
    let kind = ServerType::all().nth(usize::from(byte(&mut at)?))?;
    let tag = byte(&mut at)?;
    let text = |at: &mut usize| -> Option<String> {
        let length = usize::from(u16::from_be_bytes([byte(at)?, byte(at)?]));
        let end = at.checked_add(length)?;
        let value = std::str::from_utf8(bytes.get(*at..end)?).ok()?.to_owned();
        *at = end;
        Some(value)
    };
    let origin = text(&mut at)?;
    let except = Some(text(&mut at)?).filter(|except| !except.is_empty());
    let name = text(&mut at)?;
    let number = |at: &mut usize| -> Option<i64> {
        let end = at.checked_add(8)?;
        let value = i64::from_be_bytes(bytes.get(*at..end)?.try_into().ok()?);
        *at = end;
        Some(value)
    };
    let sequence = match byte(&mut at)? {
        0 => None,
        1 => {
            let id = number(&mut at)?;
            let previous = number(&mut at)?;
            Some((id, (previous >= 0).then_some(previous)))
        }
        _ => return None,
    };
    let audience = match tag {
        b'R' if !name.is_empty() => Audience::Room(name.into()),
        b'E' => Audience::Everyone,
        b'W' if !name.is_empty() => {
            let id: Arc<str> = name.into();
            // Only the id finds the watchers; the frame carries the user.
            Audience::Watchers {
                user: User {
                    id: id.clone(),
                    username: id,
                    kind: UserKind::User,
                },
                if_online: None,
            }
        }
        _ => return None,
    };
    Some(Envelope {
        origin,
        audience,
        except,
        sequence,
        frame: OutFrame {
            kind,
            bytes: bytes.slice(at..),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> OutFrame {
        OutFrame {
            kind: ServerType::ChatMessage,
            bytes: Bytes::from_static(b"\x81\x02{}"),
        }
    }

    #[test]
    fn every_audience_survives_the_trip() {
        let user = User {
            id: "u1".into(),
            username: "u1".into(),
            kind: UserKind::User,
        };
        for (audience, except, sequence) in [
            (Audience::Room("dev".into()), Some("n-1"), None),
            (Audience::Room("dev".into()), None, Some((12, Some(7)))),
            (Audience::Everyone, None, Some((1, None))),
            (
                Audience::Watchers {
                    user,
                    if_online: None,
                },
                None,
                None,
            ),
        ] {
            let bytes = encode("node-a", &audience, except, sequence, &frame()).expect("encoded");
            let envelope = decode(&bytes).expect("decoded");
            assert_eq!(envelope.origin, "node-a");
            assert_eq!(envelope.audience, audience);
            assert_eq!(envelope.except.as_deref(), except);
            assert_eq!(envelope.sequence, sequence);
            assert_eq!(envelope.frame, frame());
        }
    }

    #[test]
    fn anything_else_is_refused_without_panicking() {
        let good = encode(
            "n",
            &Audience::Room("r".into()),
            None,
            Some((2, Some(1))),
            &frame(),
        )
        .expect("encoded");
        for cut in 0..good.len() - frame().bytes.len() {
            assert_eq!(decode(&good.slice(..cut)), None, "cut at {cut}");
        }
        for bad in [
            &b""[..],
            b"\x02\x02R",
            b"\x01\xffR\x00\x00\x00\x00\x00\x00",
            b"\x01\x02X\x00\x00\x00\x00\x00\x00",
            b"\x01\x02R\x00\x00\x00\x00\x00\x00",
            b"\x01\x02R\xff\xff",
            b"\x01\x02R\x00\x00\x00\x00\x00\x01r\x07",
            b"\x01\x02R\x00\x00\x00\x00\x00\x01r\x01\x00",
        ] {
            assert_eq!(decode(&Bytes::from_static(bad)), None, "{bad:?}");
        }
    }
}
