//! Server → client frames.
//!
//! Every frame is one [`ServerMessage`] plus `timestamp` and, on a direct reply,
//! the `ref` of the client frame it answers. [`ServerMessage::encode`] produces
//! the text once; a broadcast shares that one text among all recipients.

use super::{ErrorCode, Message, Timestamp, User};
use serde::Serialize;
use serde_json::{Map, Value};

/// `server` object of the welcome frame.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    pub name: &'static str,
    pub version: &'static str,
}

impl ServerInfo {
    /// This server.
    pub const THIS: ServerInfo = ServerInfo {
        name: "roomcast",
        version: env!("CARGO_PKG_VERSION"),
    };
}

/// `limits` object of the welcome frame.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WelcomeLimits {
    pub max_frame_bytes: usize,
    pub max_message_chars: usize,
}

/// The payload of one server frame; `type` comes from the variant name.
/// [`ServerType`], the `type` of a server frame (for counting frames out by
/// type), is derived from the variants.
#[derive(Debug, Serialize, strum::EnumDiscriminants)]
#[serde(tag = "type", rename_all = "snake_case")]
#[strum_discriminants(
    name(ServerType),
    derive(strum::EnumCount, strum::EnumIter, strum::IntoStaticStr),
    strum(serialize_all = "snake_case")
)]
pub enum ServerMessage<'a> {
    Welcome {
        connection_id: &'a str,
        server: ServerInfo,
        heartbeat_interval_ms: u64,
        authenticated: bool,
        user: Option<&'a User>,
        recent_messages: &'a [Message],
        limits: WelcomeLimits,
    },
    AuthSuccess {
        user: &'a User,
        connection_id: &'a str,
    },
    ChatMessage {
        message: &'a Message,
    },
    MessageAck {
        message_id: i64,
        room: &'a str,
        client_msg_id: Option<&'a str>,
    },
    UserTyping {
        room: &'a str,
        user: &'a User,
        is_typing: bool,
    },
    UserJoin {
        user: &'a User,
    },
    UserLeave {
        user: &'a User,
    },
    RoomJoined {
        room: &'a str,
        members: &'a [User],
        member_count: usize,
        recent_messages: &'a [Message],
        missed: bool,
    },
    RoomLeft {
        room: &'a str,
    },
    Presence {
        room: &'a str,
        event: PresenceEvent,
        user: &'a User,
    },
    /// The reply to `presence` (a room's page) and to `presence_subscribe`
    /// (`room: null`: the watched users online now).
    PresenceState {
        room: Option<&'a str>,
        members: &'a [User],
        member_count: usize,
    },
    PresenceUnsubscribed {},
    /// A large room's member count (protocol rule 13).
    PresenceCount {
        room: &'a str,
        member_count: usize,
    },
    History {
        room: &'a str,
        messages: &'a [Message],
        has_more: bool,
    },
    ProjectUpdated {
        project_id: &'a str,
        event_id: i64,
    },
    ProjectUpdate {
        project_id: &'a str,
        changes: &'a Map<String, Value>,
        user: &'a User,
        event_id: i64,
    },
    TicketUpdated {
        ticket_id: &'a str,
        event_id: i64,
    },
    TicketUpdate {
        ticket_id: &'a str,
        project_id: &'a str,
        changes: &'a Map<String, Value>,
        user: &'a User,
        event_id: i64,
    },
    Pong {
        server_time: Timestamp,
    },
    AiResponseChunk {
        request_id: &'a str,
        delta: &'a str,
    },
    AiResponse {
        request_id: &'a str,
        content: &'a str,
        model: &'a str,
        message: Option<&'a Message>,
    },
    AiCancelled {
        request_id: &'a str,
    },
    FileUploadAuthorized {
        upload_id: &'a str,
        upload_url: &'a str,
        method: &'static str,
        upload_token: &'a str,
        expires_at: Timestamp,
        max_size: u64,
    },
    /// A file shared in a room; `message` is the stored chat message that
    /// carries it as `attachment`.
    FileShared {
        file: &'a super::FileInfo,
        room: &'a str,
        user: &'a User,
        message: &'a Message,
    },
    Error {
        error_code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// `event` of a `presence` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceEvent {
    Join,
    Leave,
}

impl ServerType {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Every value, in declaration order (which [`Self::index`] follows).
    pub fn all() -> impl Iterator<Item = Self> {
        <Self as strum::IntoEnumIterator>::iter()
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One encoded server frame: its text and its type.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: ServerType,
    pub text: String,
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(flatten)]
    message: &'a ServerMessage<'a>,
    timestamp: Timestamp,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
}

impl<'a> ServerMessage<'a> {
    pub fn kind(&self) -> ServerType {
        ServerType::from(self)
    }

    /// What a room is told of a newly stored message: `chat_message`, or
    /// `file_shared` when it carries a file.
    pub fn stored(message: &'a Message) -> ServerMessage<'a> {
        match &message.attachment {
            Some(file) => ServerMessage::FileShared {
                file,
                room: &message.room,
                user: &message.user,
                message,
            },
            None => ServerMessage::ChatMessage { message },
        }
    }

    /// Encodes the frame with the current time and the optional `ref`.
    pub fn encode(&self, reference: Option<&str>) -> Frame {
        let envelope = Envelope {
            message: self,
            timestamp: Timestamp::now(),
            reference,
        };
        // Serializing these plain structs cannot fail: every map key is a
        // string and no Serialize impl here returns an error.
        let text = serde_json::to_string(&envelope)
            .unwrap_or_else(|_| String::from(r#"{"type":"error","error_code":"internal_error"}"#));
        Frame {
            kind: self.kind(),
            text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_tables_are_complete_and_named_as_the_protocol_says() {
        use crate::protocol::{ErrorCode, MessageType};
        for (n, kind) in MessageType::all().enumerate() {
            assert_eq!(kind.index(), n);
            assert_eq!(MessageType::parse(kind.as_str()), Some(kind));
        }
        for (n, kind) in ServerType::all().enumerate() {
            assert_eq!(kind.index(), n);
        }
        assert_eq!(ServerType::AiResponseChunk.as_str(), "ai_response_chunk");
        for (n, code) in ErrorCode::all().enumerate() {
            assert_eq!(code.index(), n);
            // The name counted in metrics is the one sent on the wire.
            assert_eq!(
                serde_json::to_value(code).ok(),
                Some(serde_json::Value::from(code.as_str()))
            );
        }
    }
    use crate::protocol::UserKind;

    #[test]
    fn frames_carry_type_timestamp_and_ref() {
        let user = User {
            id: "u1".into(),
            username: "alice".into(),
            kind: UserKind::User,
        };
        let frame = ServerMessage::AuthSuccess {
            user: &user,
            connection_id: "c1",
        }
        .encode(Some("r7"));
        let value: Value = serde_json::from_str(&frame.text).expect("valid JSON");
        assert_eq!(value["type"], "auth_success");
        assert_eq!(value["ref"], "r7");
        assert_eq!(value["user"]["username"], "alice");
        assert_eq!(value["user"]["kind"], "user");
        assert_eq!(value["timestamp"].as_str().map(str::len), Some(24));
        assert_eq!(frame.kind, ServerType::AuthSuccess);

        let pong = ServerMessage::Pong {
            server_time: Timestamp(0),
        }
        .encode(None);
        let value: Value = serde_json::from_str(&pong.text).expect("valid JSON");
        assert_eq!(value["server_time"], "1970-01-01T00:00:00.000Z");
        assert!(value.get("ref").is_none());
    }
}
